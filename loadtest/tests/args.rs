//! Bad arguments: the binary exits non-zero before doing anything and its
//! message names the flag to fix.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh-load"))
        .args(args)
        .arg("--no-progress")
        .output()
        .expect("run ringmesh-load");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--rate", "0"], "--rate"),
        (&["--rate", "-5"], "--rate"),
        (&["--rate", "1000001"], "--rate"),
        (&["--rate", "fast"], "--rate"),
        (&["--count", "0"], "--count"),
        (&["--count", "100000001"], "--count"),
        (&["--duration", "0"], "--duration"),
        (&["--duration", "3601"], "--duration"),
        (&["--sockets", "0"], "--sockets"),
        (&["--sockets", "5000"], "--sockets"),
        (&["--threads", "0"], "--threads"),
        (&["--threads", "4", "--sockets", "2"], "--threads"),
        (&["--users", "0"], "--users"),
        (&["--target", "192.0.2.1:5060"], "--target"),
        (&["--target", "not-an-address"], "--target"),
        (&["--bind", "0.0.0.0"], "--bind"),
        (&["--timeout-ms", "0"], "--timeout-ms"),
        (&["--t1-ms", "1000", "--t2-ms", "500"], "--t2-ms"),
        (&["--churn-every", "5"], "--churn-every"),
        (&["--farm-json", "/nonexistent/farm.json"], "--farm-json"),
        (
            &["--scenario", "mixed", "--mix", "register=0,call=0"],
            "--mix",
        ),
        (&["--scenario", "storm"], "--scenario"),
        (&["--domain", "bad domain"], "--domain"),
        (&["--password", ""], "--password"),
        (&["--hold-ms", "3600001"], "--hold-ms"),
        (&["--transport", "tls"], "--tls-ca"),
        (&["--tls-ca", "/etc/hostname"], "--tls-ca"),
        (
            &["--transport", "tls", "--tls-ca", "/nonexistent/ca.crt"],
            "--tls-ca",
        ),
        (
            &["--transport", "tls", "--tls-ca", "/etc/hostname"],
            "--tls-ca",
        ),
    ];
    for (args, flag) in cases {
        let (code, err) = run(args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(
            err.contains(flag),
            "{args:?}: stderr does not name {flag}: {err}"
        );
    }
}

#[test]
fn remote_targets_need_allow_remote() {
    let (code, err) = run(&["--target", "192.0.2.1:5060"]);
    assert_eq!(code, 2);
    assert!(err.contains("--allow-remote"), "{err}");
}

#[test]
fn help_lists_every_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh-load"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for s in [
        "register",
        "call",
        "mixed",
        "--rate",
        "--count",
        "--duration",
        "--farm-json",
        "--churn-every",
    ] {
        assert!(text.contains(s), "--help lacks {s}");
    }
}
