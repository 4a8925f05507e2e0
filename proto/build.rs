//! Compiles the control-plane APIs with a pure-Rust protobuf compiler
//! (protox): no system `protoc` is needed. The overlay's wire messages
//! (`ringmesh/overlay/`) are compiled by the overlay crate itself, prost-only.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "ringmesh/provisioning/v1/provisioning.proto",
    "ringmesh/enrollment/v1/enrollment.proto",
    "ringmesh/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let files: Vec<PathBuf> = FILES.iter().map(|f| root.join(f)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
