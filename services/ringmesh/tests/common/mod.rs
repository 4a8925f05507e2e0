//! Shared harness for the integration tests: a real `ringmesh dev` farm as
//! a child process, real sipp runs, and raw SIP over UDP and TCP.
//!
//! Every farm listens on 127.0.0.1 only, on a port base each test picks
//! so tests can run in parallel; every wait has a generous deadline and
//! logs how long it took; the farm is stopped by PID when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn sipp_dir() -> PathBuf {
    repo_root().join("loadtest/sipp")
}

/// A node line printed by `ringmesh dev --json`.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub pid: u32,
    pub sip: SocketAddr,
    pub metrics: SocketAddr,
    pub argv: Vec<String>,
}

pub struct Farm {
    child: Child,
    pub nodes: Vec<NodeInfo>,
    pub dir: tempfile::TempDir,
    pub base: u16,
}

impl Farm {
    /// Starts `ringmesh dev --json --sip-port BASE` with extra arguments
    /// and environment, and waits for `{"event":"ready"}`.
    pub fn start(base: u16, args: &[&str], env: &[(&str, &str)]) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmesh"));
        cmd.arg("dev")
            .arg("--json")
            .arg("--sip-port")
            .arg(base.to_string())
            .arg("--data")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ringmesh dev");
        let stdout = child.stdout.take().unwrap();
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut nodes = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("ringmesh dev printed nothing for 120 s");
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            match v["event"].as_str() {
                Some("node") => nodes.push(NodeInfo {
                    name: v["name"].as_str().unwrap().to_string(),
                    pid: v["pid"].as_u64().unwrap() as u32,
                    sip: v["sip"].as_str().unwrap().parse().unwrap(),
                    metrics: v["metrics"].as_str().unwrap().parse().unwrap(),
                    argv: v["argv"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect(),
                }),
                Some("ready") => break,
                _ => {}
            }
        }
        eprintln!("farm on {base} ready after {:?}", started.elapsed());
        // Keep draining stdout so the farm never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Farm {
            child,
            nodes,
            dir,
            base,
        }
    }

    pub fn sip(&self) -> SocketAddr {
        self.nodes[0].sip
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{node}.log"))).unwrap_or_default()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs sipp with a bounded time; returns its exit status.
pub fn sipp(args: &[&str], secs: u64, work: &Path) -> ExitStatus {
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
        .expect("sipp is installed (make test installs sip-tester)")
}

/// Sends one datagram and returns the first answer, if any, within `wait`.
pub fn udp_exchange(to: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(msg, to).unwrap();
    let mut buf = vec![0u8; 65536];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

/// Sends bytes on a new TCP connection and collects what comes back: until
/// a whole SIP message arrived, the server closed, or `wait` passed without
/// data. Returns (bytes, closed).
pub fn tcp_exchange(to: SocketAddr, msg: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(msg).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let limits = ringmesh_sip::Limits::default();
                if matches!(
                    ringmesh_sip::framing::next_frame(&out, &limits),
                    Ok(ringmesh_sip::framing::Frame::Message(_))
                ) {
                    return (out, false);
                }
            }
            Err(_) => return (out, false),
        }
    }
}

/// The status code of the first SIP response in `bytes`.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(bytes.get(..12)?).ok()?;
    s.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// An OPTIONS to the node itself; true when it answers 200 over UDP.
pub fn options_ok(to: SocketAddr) -> bool {
    let branch: u64 = rand_u64();
    let msg = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{branch:x};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag={branch:x}\r\nTo: <sip:{to}>\r\nCall-ID: probe{branch:x}\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    udp_exchange(to, msg.as_bytes(), Duration::from_secs(5)).and_then(|r| status_of(&r))
        == Some(200)
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    h.finish()
}

/// Polls `f` until it returns true or `limit` passes; logs the delay.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            let took = start.elapsed();
            eprintln!("{what}: after {took:?}");
            return took;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

/// GET on the metrics port; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
