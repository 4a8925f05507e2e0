//! The functional sipp scenarios of `loadtest/sipp/` (proven first against
//! Kamailio) against the real `ringmesh` binary: digest registrations over
//! UDP (1,000 users) and TCP (100), calls, forking with CANCEL of the
//! losing leg, caller CANCEL (487), 486 Busy, 404, 480, RFC 5626 flows, and
//! OPTIONS before and after. Each test gets its own farm; the scenarios run
//! one at a time so sipp's timing-sensitive flows are not starved of CPU.

mod common;

use std::process::Command;
use std::sync::Mutex;

use common::{Farm, http_get, sipp_dir};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `ringmesh_call_setups_total{result}` summed over the farm's nodes.
fn call_setups(farm: &Farm, result: &str) -> f64 {
    let series = format!("ringmesh_call_setups_total{{result=\"{result}\"");
    farm.nodes
        .iter()
        .filter_map(|n| {
            http_get(n.metrics, "/metrics")
                .1
                .lines()
                .find(|l| l.starts_with(&series))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
        .sum()
}

/// Runs `run_suite.sh --only <tests>` against a fresh farm, and returns the
/// farm for checks afterwards.
fn suite(farm_args: &[&str], suite_args: &[&str], tests: &str) -> Farm {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let farm = common::start_farm(farm_args, &[]);
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(sipp_dir().join("run_suite.sh"))
        .args(suite_args)
        .args([
            "--base-port",
            "0",
            "--work",
            work.path().to_str().unwrap(),
            "--only",
            tests,
        ])
        .arg(farm.sip().to_string())
        .output()
        .expect("run_suite.sh runs (make test installs sip-tester)");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    if !out.status.success() {
        for entry in std::fs::read_dir(work.path()).unwrap().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "err") {
                eprintln!(
                    "--- {}\n{}",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                );
            }
        }
        eprintln!("--- supernode log\n{}", farm.log("sn0"));
        panic!("sipp scenarios failed: {tests}");
    }
    let passed = report.lines().filter(|l| l.starts_with("PASS ")).count();
    assert_eq!(
        passed,
        tests.split(',').count(),
        "every scenario ran and passed: {report}"
    );
    farm
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm"]
fn digest_registrations_1000_udp_and_100_tcp() {
    suite(
        &["--users", "1000"],
        &["--users", "1000", "--tcp-users", "100"],
        "reg_auth_udp,reg_auth_tcp",
    );
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm"]
fn call_between_two_registered_endpoints() {
    let farm = suite(&[], &[], "call_u1,call_t1");
    assert_eq!(call_setups(&farm, "answered"), 2.0, "one call per scenario");
    assert_eq!(call_setups(&farm, "failed"), 0.0);
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm"]
fn forked_call_first_200_wins_and_the_other_leg_is_cancelled() {
    suite(&[], &[], "fork_u1,fork_t1");
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm"]
fn cancel_busy_unknown_and_unavailable() {
    let farm = suite(&[], &[], "cancel,busy,unknown_480,unavailable_480");
    // Counted once, at the caller's edge, after the digest challenge.
    for (result, n) in [
        ("cancelled", 1.0),
        ("busy", 1.0),
        ("rejected", 2.0),
        ("answered", 0.0),
        ("failed", 0.0),
    ] {
        assert_eq!(call_setups(&farm, result), n, "{result}");
    }
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm"]
fn rfc5626_two_flows_and_options() {
    suite(
        &[],
        &[],
        "options_u1,options_t1,outbound,options_after_u1,options_after_t1",
    );
}

#[test]
#[ignore = "slow: needs sipp and a ringmesh dev farm"]
fn open_registrar_and_proxy_without_auth() {
    suite(
        &["--auth", "none"],
        &["--noauth", "--users", "200"],
        "options_u1,reg_noauth,call_noauth",
    );
}
