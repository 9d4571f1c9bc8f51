//! Compiles `proto/*.proto` with protox (pure Rust; no protoc needed) and generates the
//! prost messages and tonic service stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["kds.proto", "dds.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
