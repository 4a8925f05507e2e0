//! The proxy core is sans-IO. It must never pull in an async
//! runtime or a network stack, not even through another crate.

use std::process::Command;

#[test]
fn no_runtime_or_network_stack_in_the_dependency_tree() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "ringmesh-proxy",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("ringmesh-proxy ")),
        "unexpected output:\n{stdout}"
    );
    let forbidden: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            ["tokio ", "quinn ", "tonic "]
                .iter()
                .any(|f| l.starts_with(f))
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "ringmesh-proxy must stay sans-IO, found: {forbidden:?}"
    );
}
