//! Two browser softphones (services/softphone: JsSIP, built with npm) in a
//! real headless Chromium call each other with audio and video through a
//! `ringmesh dev` farm, each registered over secure WebSocket on its own
//! supernode. The farm CA is trusted the way a user would trust it, in the
//! NSS database of the browser's $HOME (made with certutil), never by
//! ignoring certificate errors; a browser without it cannot load the page.
//! The call is driven by services/softphone/test/call.mjs (playwright-core).

mod common;

use std::path::Path;
use std::process::Command;

use common::repo_root;

/// An NSS database under `home` trusting `ca` (if given) for TLS servers.
fn nss_home(home: &Path, ca: Option<&str>) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let ok = |c: &mut Command| assert!(c.status().expect("certutil runs").success());
    ok(Command::new("certutil").args(["-d", &db, "-N", "--empty-password"]));
    if let Some(ca) = ca {
        ok(Command::new("certutil").args([
            "-d",
            &db,
            "-A",
            "-n",
            "ringmesh dev CA",
            "-t",
            "C,,",
            "-i",
            ca,
        ]));
    }
}

#[test]
#[ignore = "slow: needs chromium, certutil, node and a ringmesh dev farm"]
fn two_browsers_make_a_video_call_through_the_farm() {
    common::require("chromium", "chromium");
    common::require("certutil", "libnss3-tools");
    common::require("node", "nodejs");
    let softphone = repo_root().join("services/softphone");
    assert!(
        softphone.join("node_modules/playwright-core").exists(),
        "services/softphone is not installed: make test runs npm ci and npm run build there"
    );
    let farm = common::start_farm(
        &["--nodes", "2", "--softphone", softphone.to_str().unwrap()],
        &[],
    );
    let url = farm.softphone.clone().expect("dev announced the softphone");
    let homes = tempfile::tempdir().unwrap();
    let (trusting, untrusting) = (homes.path().join("user"), homes.path().join("stranger"));
    nss_home(&trusting, Some(&farm.ca));
    nss_home(&untrusting, None);
    let shot = homes.path().join("call.png");
    let out = Command::new("timeout")
        .args(["180", "node", "test/call.mjs"])
        .current_dir(&softphone)
        .env("HOME", &trusting)
        .env("UNTRUSTED_HOME", &untrusting)
        .env("SOFTPHONE_URL", &url)
        .env("SCREENSHOT", &shot)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser call failed:\n{stdout}\n{stderr}"
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert!(
        r["untrusted"]
            .as_str()
            .unwrap_or_default()
            .contains("ERR_CERT_AUTHORITY_INVALID"),
        "{r}"
    );
    for side in ["alice", "bob"] {
        for kind in ["audio", "video"] {
            let got = &r[side]["during"][kind];
            let (rx, tx) = (
                got["received"].as_u64().unwrap(),
                got["sent"].as_u64().unwrap(),
            );
            assert!(
                rx > 100 && tx > 100,
                "{side} {kind}: {rx} RTP packets received, {tx} sent"
            );
        }
        assert_eq!(
            r[side]["end"], "ended",
            "{side}: the dialog ended on both sides"
        );
    }
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("browser call: {r}");
}
