//! A real `ringmesh dev --json` farm as a child process, on ports the
//! kernel chose (`--sip-port 0`, see docs/dev.md) unless the test gives a
//! `--sip-port`, stopped (SIGTERM, then SIGKILL, by its PID) when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node line of `ringmesh dev --json`.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub pid: u32,
    pub sip: SocketAddr,
    /// SIP over TLS, WebSocket and secure WebSocket.
    pub tls: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    pub overlay: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: String,
    pub node_id: String,
    /// The command line that restarts this node as it was.
    pub argv: Vec<String>,
}

/// A running farm.
#[derive(Debug)]
pub struct Farm {
    child: Child,
    pub nodes: Vec<NodeInfo>,
    /// The provisioning and enrollment gRPC addresses, and their metrics.
    pub provisioning: String,
    pub enrollment: String,
    pub provisioning_metrics: String,
    pub enrollment_metrics: String,
    /// The farm CA (PEM file), which issued the nodes' SIP certificates.
    pub ca: String,
    /// The operator's TLS files: CA, certificate, key.
    pub operator: [String; 3],
    /// The admin's TLS files: CA, certificate, key.
    pub admin_cert: [String; 3],
    /// The file holding enrollment's admin token.
    pub admin_token: String,
    /// The browser softphone's URL, when started with `--softphone`.
    pub softphone: Option<String>,
    pub dir: tempfile::TempDir,
}

fn addr(v: &serde_json::Value, key: &str) -> SocketAddr {
    v[key]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {key} address in {v}"))
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

impl Farm {
    /// Runs `BIN dev --json --data TMP ARGS` (with `--sip-port 0` unless
    /// `args` names a port) with extra environment, and waits for
    /// `{"event":"ready"}`.
    pub fn start(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Farm {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Farm::start_in(bin, dir, args, env)
    }

    /// [`Farm::start`] in a data directory the caller prepared (a CA of
    /// its own in `DIR/ca`, say).
    pub fn start_in(
        bin: &Path,
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Farm {
        let mut cmd = Command::new(bin);
        cmd.arg("dev").arg("--json").arg("--data").arg(dir.path());
        if !args.contains(&"--sip-port") {
            cmd.args(["--sip-port", "0"]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ringmesh dev");
        let stdout = child.stdout.take().expect("piped stdout");
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
        let mut farm = Farm {
            child,
            nodes: Vec::new(),
            provisioning: String::new(),
            enrollment: String::new(),
            provisioning_metrics: String::new(),
            enrollment_metrics: String::new(),
            ca: String::new(),
            operator: Default::default(),
            admin_cert: Default::default(),
            admin_token: String::new(),
            softphone: None,
            dir,
        };
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("ringmesh dev printed nothing for 120 s");
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            match v["event"].as_str() {
                Some("node") => farm.nodes.push(NodeInfo {
                    name: text(&v, "name"),
                    pid: v["pid"].as_u64().expect("a pid") as u32,
                    sip: addr(&v, "sip"),
                    tls: addr(&v, "tls"),
                    ws: addr(&v, "ws"),
                    wss: addr(&v, "wss"),
                    overlay: addr(&v, "overlay"),
                    metrics: addr(&v, "metrics"),
                    admin: text(&v, "admin"),
                    node_id: text(&v, "node_id"),
                    argv: v["argv"]
                        .as_array()
                        .expect("an argv")
                        .iter()
                        .map(|a| a.as_str().expect("argv strings").to_string())
                        .collect(),
                }),
                Some("control") => {
                    farm.provisioning = text(&v, "provisioning");
                    farm.enrollment = text(&v, "enrollment");
                    farm.provisioning_metrics = text(&v, "provisioning_metrics");
                    farm.enrollment_metrics = text(&v, "enrollment_metrics");
                    farm.ca = text(&v, "ca");
                    farm.operator = ["ca", "operator_cert", "operator_key"].map(|k| text(&v, k));
                    farm.admin_cert = ["ca", "admin_cert", "admin_key"].map(|k| text(&v, k));
                    farm.admin_token = text(&v, "admin_token");
                }
                Some("softphone") => farm.softphone = Some(text(&v, "url")),
                Some("ready") => break,
                _ => {}
            }
        }
        eprintln!(
            "farm of {} ready after {:?}",
            farm.nodes.len(),
            started.elapsed()
        );
        // Keep draining stdout so the farm never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        farm
    }

    /// `ringmesh ctl` flags reaching provisioning as the operator.
    pub fn operator_args(&self) -> Vec<String> {
        let [ca, cert, key] = self.operator.clone();
        vec![
            "--provisioning".into(),
            self.provisioning.clone(),
            "--ca".into(),
            ca,
            "--cert".into(),
            cert,
            "--key".into(),
            key,
        ]
    }

    /// Node 0's SIP address.
    pub fn sip(&self) -> SocketAddr {
        self.nodes[0].sip
    }

    /// A node's log so far.
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
        // dev stops its nodes (they drain) and then its control plane, each
        // within 15 s.
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
