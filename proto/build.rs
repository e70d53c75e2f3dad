//! Compiles the .proto files with protox (pure Rust; no protoc on the machine) and feeds the
//! descriptors to tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["orchestrator.proto", "command_server.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
