//! The overlay core must stay free of I/O runtimes: it is driven by the
//! supernode's tokio task and by the simulator alike. This test fails the
//! build the day someone adds tokio, quinn or tonic to its normal
//! dependencies, directly or through another crate.

use std::process::Command;

#[test]
fn no_io_runtime_in_the_dependency_tree() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "ringmesh-overlay",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        tree.lines().any(|l| l.starts_with("ringmesh-overlay ")),
        "unexpected cargo tree output:\n{tree}"
    );
    let forbidden: Vec<&str> = tree
        .lines()
        .filter(|l| {
            ["tokio ", "quinn ", "tonic "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "the sans-IO overlay depends on an I/O runtime: {forbidden:?}"
    );
}
