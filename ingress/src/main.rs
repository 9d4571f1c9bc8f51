//! `causeway-ingress`: the zone ingress alone, without the rest of the `causeway` binary.

fn main() {
    causeway_ingress::cli::main()
}
