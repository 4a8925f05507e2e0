//! A real etcd (Debian `etcd-server`) on free 127.0.0.1 ports, killed by
//! its PID when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{PortBlock, require, wait_until};

/// One etcd member on its own data directory.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    binary: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    pub data: tempfile::TempDir,
    /// Its ports, outside the ephemeral range: a restart finds them free.
    _ports: PortBlock,
}

impl Etcd {
    /// Starts etcd and waits until its health endpoint answers.
    pub fn start() -> Etcd {
        let ports = PortBlock::reserve();
        let mut e = Etcd {
            child: None,
            binary: require("etcd", "etcd-server"),
            client_port: ports.base,
            peer_port: ports.base + 1,
            data: tempfile::tempdir().expect("a temporary directory"),
            _ports: ports,
        };
        e.spawn();
        e
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log(&self) -> PathBuf {
        self.data.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("the etcd log");
        let child = Command::new(&self.binary)
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
            .stdout(log.try_clone().expect("the etcd log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let port = self.client_port;
        let log = self.log();
        let child = self.child.as_mut().expect("just started");
        wait_until("etcd ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "etcd exited ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
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

    /// The keys under `prefix`, through etcdctl (Debian `etcd-client`).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = Command::new(require("etcdctl", "etcd-client"))
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
            .expect("etcdctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Kills etcd (by its PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
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
