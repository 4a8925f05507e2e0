//! Compiles the overlay wire messages with a pure-Rust protobuf compiler
//! (protox), so no system `protoc` is needed, and generates prost types only:
//! the sans-IO core must not pull in tonic.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    let file = root.join("ringmesh/overlay/v1/overlay.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    prost_build::Config::new()
        // Bytes fields decode as slices of the received frame (zero-copy).
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}
