//! End to end: the generator against tiny SIP servers on 127.0.0.1
//! (tests/common), checking the counts in its JSON report. Every run is
//! bounded by --count and --duration.

mod common;

use common::{Mode, Opts, black_hole, run_load, tcp_server, u, udp_server};

#[test]
fn udp_register_storm_all_succeed() {
    let srv = udp_server(Opts::default());
    let target = srv.addr.to_string();
    let (code, stdout, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--target",
        &target,
        "--users",
        "200",
        "--rate",
        "2000",
        "--duration",
        "10",
        "--sockets",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "ops.started"), 200, "{r:#}");
    assert_eq!(u(&r, "ops.succeeded"), 200, "{r:#}");
    assert_eq!(u(&r, "ops.failed"), 0);
    assert_eq!(u(&r, "latency_us.register.count"), 200);
    assert!(u(&r, "latency_us.register.p99") > 0);
    assert_eq!(u(&r, "status.REGISTER.200"), 200);
    assert!(!r["series"].as_array().unwrap().is_empty());
    // the stdout summary is one JSON line
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(summary["succeeded"], 200);
    assert_eq!(
        srv.counts
            .registers
            .load(std::sync::atomic::Ordering::Relaxed),
        200
    );
}

#[test]
fn udp_calls_answered_by_the_server() {
    let srv = udp_server(Opts::default());
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "call",
        "--target",
        &target,
        "--users",
        "10",
        "--callers",
        "5",
        "--count",
        "20",
        "--rate",
        "200",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "setup.succeeded"), 10, "{r:#}");
    assert_eq!(u(&r, "by_kind.call.succeeded"), 20, "{r:#}");
    assert_eq!(u(&r, "ops.failed"), 0);
    assert_eq!(u(&r, "latency_us.invite_180.count"), 20);
    assert_eq!(u(&r, "latency_us.invite_200.count"), 20);
    assert_eq!(u(&r, "latency_us.bye_200.count"), 20);
}

/// Through a record-routing proxy to the generator's own callee handsets:
/// the UAS side answers, ACK and BYE follow the route set.
#[test]
fn udp_calls_through_a_proxy_to_our_callees() {
    let srv = udp_server(Opts {
        mode: Mode::Proxy,
        ..Opts::default()
    });
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "call",
        "--target",
        &target,
        "--users",
        "10",
        "--count",
        "20",
        "--rate",
        "100",
        "--hold-ms",
        "20",
        "--answer-ms",
        "5",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "by_kind.call.succeeded"), 20, "{r:#}");
    assert!(u(&r, "messages.uas_responses") >= 60, "{r:#}");
    assert_eq!(
        srv.counts.acks.load(std::sync::atomic::Ordering::Relaxed),
        20
    );
    assert_eq!(
        srv.counts.byes.load(std::sync::atomic::Ordering::Relaxed),
        20
    );
}

/// Two proxies sharing one location table: callees attach to one, callers
/// to the other (--call-routing cross).
#[test]
fn calls_cross_between_two_targets() {
    let loc = common::Location::default();
    let a = udp_server(Opts {
        mode: Mode::Proxy,
        location: loc.clone(),
        ..Opts::default()
    });
    let b = udp_server(Opts {
        mode: Mode::Proxy,
        location: loc,
        ..Opts::default()
    });
    let (ta, tb) = (a.addr.to_string(), b.addr.to_string());
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "call",
        "--target",
        &ta,
        "--target",
        &tb,
        "--users",
        "10",
        "--count",
        "20",
        "--rate",
        "100",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "by_kind.call.succeeded"), 20, "{r:#}");
    let inv = |s: &common::Server| s.counts.invites.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(inv(&a) + inv(&b), 20);
    assert!(inv(&a) > 0 && inv(&b) > 0);
}

#[test]
fn digest_auth_register_and_calls() {
    let srv = udp_server(Opts {
        auth: true,
        ..Opts::default()
    });
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--target",
        &target,
        "--users",
        "50",
        "--rate",
        "1000",
        "--password",
        "secret",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "ops.succeeded"), 50, "{r:#}");
    assert_eq!(u(&r, "latency_us.challenge.count"), 50);
    assert_eq!(u(&r, "status.REGISTER.401"), 50);

    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "call",
        "--target",
        &target,
        "--users",
        "5",
        "--count",
        "10",
        "--rate",
        "100",
        "--password",
        "secret",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "by_kind.call.succeeded"), 10, "{r:#}");
    assert_eq!(u(&r, "status.INVITE.407"), 10);

    // without the password every registration fails on its challenge
    let (code, _, _, r) = run_load(&[
        "--scenario",
        "register",
        "--target",
        &target,
        "--users",
        "5",
        "--rate",
        "100",
        "--duration",
        "5",
        "--max-fail-pct",
        "10",
    ]);
    assert_eq!(code, 1);
    assert_eq!(u(&r, "ops.failed"), 5, "{r:#}");
}

#[test]
fn refreshes_reuse_the_call_id() {
    let srv = udp_server(Opts::default());
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--refresh",
        "--target",
        &target,
        "--users",
        "20",
        "--count",
        "100",
        "--rate",
        "500",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        u(&r, "ops.succeeded") + u(&r, "ops.skipped_busy"),
        100,
        "{r:#}"
    );
    assert!(u(&r, "ops.succeeded") >= 90);
}

/// Refreshes send credentials pre-emptively with the nonce of the last
/// challenge and the next nc: the server (which accepts each (nonce, nc)
/// once) takes them without challenging again.
#[test]
fn digest_refreshes_reuse_the_nonce_with_the_next_nc() {
    let srv = udp_server(Opts {
        auth: true,
        ..Opts::default()
    });
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--refresh",
        "--target",
        &target,
        "--users",
        "20",
        "--count",
        "100",
        "--rate",
        "500",
        "--password",
        "secret",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        u(&r, "ops.succeeded") + u(&r, "ops.skipped_busy"),
        100,
        "{r:#}"
    );
    assert!(u(&r, "ops.succeeded") >= 90, "{r:#}");
    assert_eq!(
        u(&r, "status.REGISTER.401"),
        20,
        "one challenge per user, none for a refresh: {r:#}"
    );
}

#[test]
fn mixed_profile() {
    let srv = udp_server(Opts {
        mode: Mode::Proxy,
        ..Opts::default()
    });
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "mixed",
        "--mix",
        "register=70,call=30",
        "--target",
        &target,
        "--users",
        "50",
        "--count",
        "200",
        "--rate",
        "400",
        "--duration",
        "10",
        "--seed",
        "7",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let reg = u(&r, "by_kind.register.succeeded");
    let call = u(&r, "by_kind.call.succeeded");
    assert_eq!(reg + call + u(&r, "ops.skipped_busy"), 200, "{r:#}");
    assert!(call > 30 && reg > 100, "{r:#}");
    assert_eq!(u(&r, "ops.failed"), 0);
}

/// Lost requests are retransmitted (T1 = 50 ms here) and still succeed.
#[test]
fn udp_loss_is_recovered_by_retransmission() {
    let srv = udp_server(Opts {
        drop_every: Some(4),
        ..Opts::default()
    });
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--target",
        &target,
        "--users",
        "100",
        "--rate",
        "500",
        "--t1-ms",
        "50",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "ops.succeeded"), 100, "{r:#}");
    assert!(u(&r, "messages.retransmissions") >= 10, "{r:#}");
    assert!(
        srv.counts
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 10
    );
}

#[test]
fn silence_times_out() {
    let hole = black_hole();
    let target = hole.local_addr().unwrap().to_string();
    let t = std::time::Instant::now();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--target",
        &target,
        "--users",
        "5",
        "--rate",
        "100",
        "--timeout-ms",
        "400",
        "--t1-ms",
        "100",
        "--duration",
        "5",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "ops.timeouts"), 5, "{r:#}");
    assert_eq!(u(&r, "failures.REGISTER timeout"), 5);
    assert!(u(&r, "messages.retransmissions") >= 10);
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn duration_bounds_the_run() {
    let srv = udp_server(Opts::default());
    let target = srv.addr.to_string();
    let t = std::time::Instant::now();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--refresh",
        "--target",
        &target,
        "--users",
        "100",
        "--count",
        "1000000",
        "--rate",
        "200",
        "--duration",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let started = u(&r, "ops.started") + u(&r, "ops.skipped_busy");
    assert!((190..=201).contains(&started), "{started}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn tcp_register_and_calls() {
    let srv = tcp_server(Opts::default());
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--transport",
        "tcp",
        "--scenario",
        "register",
        "--target",
        &target,
        "--users",
        "100",
        "--rate",
        "1000",
        "--sockets",
        "2",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "ops.succeeded"), 100, "{r:#}");
    let (code, _, stderr, r) = run_load(&[
        "--transport",
        "tcp",
        "--scenario",
        "call",
        "--target",
        &target,
        "--users",
        "10",
        "--count",
        "20",
        "--rate",
        "100",
        "--sockets",
        "2",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "by_kind.call.succeeded"), 20, "{r:#}");
}

#[test]
fn two_threads_split_the_work() {
    let srv = udp_server(Opts::default());
    let target = srv.addr.to_string();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "register",
        "--target",
        &target,
        "--users",
        "300",
        "--rate",
        "3000",
        "--threads",
        "2",
        "--sockets",
        "4",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "ops.succeeded"), 300, "{r:#}");
}

#[test]
fn svg_plots_are_written() {
    let srv = udp_server(Opts::default());
    let target = srv.addr.to_string();
    let dir = std::env::temp_dir().join(format!("rl-svg-{}", std::process::id()));
    let (code, _, stderr, _) = run_load(&[
        "--target",
        &target,
        "--users",
        "50",
        "--rate",
        "100",
        "--svg-out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    for f in ["rate.svg", "latency.svg"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("polyline"), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
