//! `causeway-dataplane`: the sidecar as a lean binary of its own (no storage, no control
//! plane code). `causeway dataplane` runs the same library.

fn main() {
    causeway_dataplane::cli::main();
}
