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
    pub admin: String,
    pub node_id: String,
    pub argv: Vec<String>,
}

pub struct Farm {
    child: Child,
    pub nodes: Vec<NodeInfo>,
    /// The provisioning and enrollment gRPC addresses.
    pub provisioning: String,
    pub enrollment: String,
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
        let (mut provisioning, mut enrollment) = (String::new(), String::new());
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
                    admin: v["admin"].as_str().unwrap_or_default().to_string(),
                    node_id: v["node_id"].as_str().unwrap_or_default().to_string(),
                    argv: v["argv"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect(),
                }),
                Some("control") => {
                    provisioning = v["provisioning"].as_str().unwrap_or_default().to_string();
                    enrollment = v["enrollment"].as_str().unwrap_or_default().to_string();
                }
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
            provisioning,
            enrollment,
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
        // dev stops its nodes (graceful leave) and then its control plane,
        // each within 15 s.
        let deadline = Instant::now() + Duration::from_secs(40);
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

/// A REGISTER for `user` from a new UDP socket, answering the digest
/// challenge with `password` (MD5, qop=auth). Returns the final status.
pub fn register_with_password(node: SocketAddr, user: &str, password: &str) -> u16 {
    use ringmesh_sip::digest::{Algorithm, Ha1, ResponseParams, response_hex};
    let domain = "ringmesh.test";
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = s.local_addr().unwrap();
    let call = format!("reg-{user}-{:x}", rand_u64());
    let send = |cseq: u32, auth: &str| -> String {
        let m = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKp{cseq}{call};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag=t{cseq}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: {call}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{me}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        s.send_to(m.as_bytes(), node).unwrap();
        let mut buf = [0u8; 8192];
        loop {
            let (n, _) = s.recv_from(&mut buf).expect("an answer to REGISTER");
            let t = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !t.starts_with("SIP/2.0 100") {
                return t;
            }
        }
    };
    let first = send(1, "");
    if status_of(first.as_bytes()) != Some(401) {
        return status_of(first.as_bytes()).unwrap_or(0);
    }
    let nonce = first
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let uri = format!("sip:{domain}");
    let ha1 = Ha1::compute(user.as_bytes(), domain.as_bytes(), password.as_bytes());
    let resp = response_hex(
        &ha1,
        &ResponseParams {
            algorithm: Algorithm::Md5,
            nonce: nonce.as_bytes(),
            cnonce: b"abc123",
            nc: b"00000001",
            qop: Some(b"auth"),
            method: b"REGISTER",
            uri: uri.as_bytes(),
        },
    );
    let auth = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{domain}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc123\"\r\n"
    );
    status_of(send(2, &auth).as_bytes()).unwrap_or(0)
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

/// A real etcd (Debian etcd-server) on free 127.0.0.1 ports, killed by
/// its PID on drop.
pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    pub data: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data: tempfile::tempdir().unwrap(),
        };
        e.spawn();
        e
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.data.path().join("member"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (make test installs etcd-server)");
        self.child = Some(child);
        let port = self.client_port;
        wait_until("etcd ready", Duration::from_secs(20), || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            buf.contains("\"health\":\"true\"")
        });
    }

    /// The keys under `prefix`, through etcdctl (Debian etcd-client).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url(),
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ])
            .output()
            .expect("etcdctl is installed (make test installs etcd-client)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
