//! The integration tests' harness: `ringmesh-test-support` (a real
//! `ringmesh dev` farm on kernel-chosen ports, etcd, raw SIP, waits on
//! conditions) with this crate's binary, plus sipp and `ringmesh ctl`.
//!
//! Every test here is slow (processes, real peers): each is marked
//! `#[ignore = "slow: needs …"]`, and `make test` runs them with
//! `--include-ignored`.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

pub use ringmesh_test_support::sip::{
    options_ok, register_with_password, status_of, tcp_exchange, udp_exchange,
};
pub use ringmesh_test_support::{
    Etcd, NodeInfo, PortBlock, free_port, free_sip_port, http_get, metric, metric_labelled,
    metric_line, rand_u64, repo_root, require, wait_until,
};

/// A `ringmesh dev` farm of this build.
pub type Farm = ringmesh_test_support::Farm;

/// Starts a farm of this crate's `ringmesh` binary (see
/// [`ringmesh_test_support::Farm::start`]).
pub fn start_farm(args: &[&str], env: &[(&str, &str)]) -> Farm {
    Farm::start(Path::new(env!("CARGO_BIN_EXE_ringmesh")), args, env)
}

pub fn sipp_dir() -> PathBuf {
    repo_root().join("loadtest/sipp")
}

/// A release build of one of the workspace's binaries (`make test` builds
/// them first): the tests that measure behaviour under load run what a
/// carrier runs, not a debug build.
pub fn release_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("release").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (make release, or cargo build --release -p ringmesh -p ringmesh-load)",
        bin.display()
    );
    bin
}

/// Runs sipp with a bounded time; returns its exit status.
pub fn sipp(args: &[&str], secs: u64, work: &Path) -> ExitStatus {
    require("sipp", "sip-tester");
    Command::new("timeout")
        .arg((secs + 10).to_string())
        .arg("sipp")
        .args(args)
        .args([
            "-nostdin",
            "-timeout",
            &format!("{secs}s"),
            "-timeout_error",
        ])
        .current_dir(work)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp runs")
}

/// Runs `ringmesh ctl` against `farm`'s provisioning as its operator.
pub fn ctl_with(farm: &ringmesh_test_support::farm::Farm, args: &[&str]) -> (i32, String, String) {
    let op = farm.operator_args();
    let mut all: Vec<&str> = op.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    ctl(&all)
}

/// Runs `ringmesh ctl` with arguments; returns (exit code, stdout, stderr).
pub fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .arg("ctl")
        .args(args)
        .env_remove("RINGMESH_ADMIN")
        .env_remove("RINGMESH_PROVISIONING")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Kamailio run with `tests/<cfg>` and `args`, in a process group of its
/// own whose id is its PID: dropping it stops the main process and every
/// worker it forked (a SIGKILL of the main process alone leaves the
/// workers). Its log (stderr, with -E) goes to `log`.
pub struct Kamailio {
    child: std::process::Child,
    log: PathBuf,
}

impl Kamailio {
    /// Starts it and waits until each UDP port of `ports` is taken.
    pub fn start(cfg: &str, args: &[String], ports: &[u16], log: PathBuf) -> Kamailio {
        use std::os::unix::process::CommandExt as _;
        let kamailio = require("kamailio", "kamailio");
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(cfg);
        let child = Command::new(kamailio)
            .process_group(0)
            .arg("-f")
            .arg(&cfg)
            .args(args)
            .args(["-m", "64", "-M", "8", "-E", "-DD"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kamailio");
        for p in ports {
            wait_until(
                "kamailio listening",
                std::time::Duration::from_secs(20),
                || std::net::UdpSocket::bind(("127.0.0.1", *p)).is_err(),
            );
        }
        Kamailio { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use std::time::{Duration, Instant};
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = kill(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (workers the main process did not
        // take down) goes now.
        let _ = kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// dnsmasq on 127.0.0.1:`port` answering only from `args` (its records
/// and `--local` domains), its PID file in `dir`; stopped (by PID) when
/// dropped.
pub struct Dnsmasq {
    child: std::process::Child,
    pub port: u16,
}

impl Dnsmasq {
    pub fn start(dir: &Path, port: u16, args: &[String]) -> Dnsmasq {
        let bin = require("dnsmasq", "dnsmasq-base");
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq starts");
        wait_until(
            "dnsmasq listening",
            std::time::Duration::from_secs(5),
            || std::net::UdpSocket::bind(("127.0.0.1", port)).is_err(),
        );
        Dnsmasq { child, port }
    }

    /// Its address, for `--dns-server`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
