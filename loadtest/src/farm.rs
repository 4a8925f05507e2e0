//! A `ringmesh dev` farm as a target, and churn.
//!
//! `ringmesh dev --json` prints one `{"event":"node","name":..,"pid":..,
//! "sip":..,"argv":[..]}` line per supernode. [`read_farm`] takes the SIP
//! addresses as targets. [`Churner`] kills one node other than the first
//! with SIGKILL, by the pid from that file (after checking that the pid
//! still runs that node's program), restarts it from its argv (absolute
//! paths, an empty environment), waits until it answers OPTIONS, and logs
//! each step with its time. Nodes it restarted are its own children: it
//! kills those through their handles, and stops them (SIGTERM, then
//! SIGKILL after 10 s) when the run ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// One supernode of the farm.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Node {
    pub name: String,
    pub pid: u32,
    pub sip: SocketAddr,
    pub argv: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Line {
    event: String,
    #[serde(flatten)]
    rest: serde_json::Value,
}

/// The nodes listed in a `ringmesh dev --json` output file.
pub fn read_farm(path: &Path) -> Result<Vec<Node>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--farm-json {}: {e}", path.display()))?;
    let mut nodes = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let Ok(line) = serde_json::from_str::<Line>(l) else {
            continue;
        };
        if line.event != "node" {
            continue;
        }
        let n: Node = serde_json::from_value(line.rest).map_err(|e| {
            format!(
                "--farm-json {} line {}: a node line without name, pid, sip or argv: {e}",
                path.display(),
                i + 1
            )
        })?;
        if n.argv.is_empty() || !Path::new(&n.argv[0]).is_absolute() {
            return Err(format!(
                "--farm-json {} line {}: argv must start with an absolute path",
                path.display(),
                i + 1
            ));
        }
        if n.pid <= 1 {
            return Err(format!(
                "--farm-json {} line {}: bad pid {}",
                path.display(),
                i + 1,
                n.pid
            ));
        }
        nodes.push(n);
    }
    if nodes.is_empty() {
        return Err(format!(
            "--farm-json {}: no {{\"event\":\"node\",...}} lines (the output of `ringmesh dev --json`)",
            path.display()
        ));
    }
    Ok(nodes)
}

/// One logged churn step.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnEvent {
    /// Seconds since the measured phase started.
    pub t_s: f64,
    pub event: &'static str,
    pub node: String,
    pub pid: u32,
    pub detail: String,
}

/// Kills and restarts farm nodes, one at a time.
#[derive(Debug)]
pub struct Churner {
    nodes: Vec<Node>,
    next: usize,
    children: HashMap<usize, Child>,
    t0: Instant,
    pub events: Vec<ChurnEvent>,
}

impl Churner {
    pub fn new(nodes: Vec<Node>, t0: Instant) -> Result<Churner, String> {
        if nodes.len() < 2 {
            return Err(
                "--churn-every needs a farm of at least 2 nodes (the first is never killed)".into(),
            );
        }
        Ok(Churner {
            nodes,
            next: 0,
            children: HashMap::new(),
            t0,
            events: Vec::new(),
        })
    }

    fn log(&mut self, event: &'static str, i: usize, pid: u32, detail: String) {
        let e = ChurnEvent {
            t_s: (self.t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            event,
            node: self.nodes[i].name.clone(),
            pid,
            detail,
        };
        eprintln!(
            "churn t={:.3}s {} {} pid {} {}",
            e.t_s, e.event, e.node, e.pid, e.detail
        );
        self.events.push(e);
    }

    /// Kills the next node (never the first) and restarts it.
    pub async fn churn_one(&mut self) {
        let i = 1 + self.next % (self.nodes.len() - 1);
        self.next += 1;
        let pid = self.nodes[i].pid;
        if let Some(mut child) = self.children.remove(&i) {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            self.log("kill", i, pid, "SIGKILL (restarted earlier by us)".into());
        } else {
            match proc_matches(pid, &self.nodes[i].argv) {
                ProcState::Runs => {
                    match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
                        Ok(()) => self.log("kill", i, pid, "SIGKILL".into()),
                        Err(e) => {
                            self.log("skip", i, pid, format!("kill failed: {e}"));
                            return;
                        }
                    }
                    // it is `ringmesh dev`'s child: wait until it is gone
                    // or a zombie (its sockets are then closed); its
                    // cmdline empties earlier, while it is still exiting
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while proc_alive(pid) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                ProcState::Gone => self.log("kill", i, pid, "already gone".into()),
                ProcState::Other => {
                    self.log(
                        "skip",
                        i,
                        pid,
                        "that pid now runs another program: not killed".into(),
                    );
                    return;
                }
            }
        }
        let node = self.nodes[i].clone();
        let mut spawned = spawn(&node);
        // a port of the old process may linger a moment: retry once if the
        // new one exits at once
        if let Ok(c) = &mut spawned {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Ok(Some(status)) = c.try_wait() {
                self.log(
                    "restart_failed",
                    i,
                    c.id().unwrap_or(0),
                    format!("exited at once ({status}); retrying in 1 s"),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                spawned = spawn(&node);
            }
        }
        match spawned {
            Ok(child) => {
                let new_pid = child.id().unwrap_or(0);
                self.nodes[i].pid = new_pid;
                self.children.insert(i, child);
                self.log("restart", i, new_pid, node.argv.join(" "));
                let t = Instant::now();
                if wait_ready(node.sip, Duration::from_secs(15)).await {
                    self.log(
                        "ready",
                        i,
                        new_pid,
                        format!("answered OPTIONS after {:.3}s", t.elapsed().as_secs_f64()),
                    );
                } else {
                    self.log(
                        "not_ready",
                        i,
                        new_pid,
                        "no 200 to OPTIONS within 15 s".into(),
                    );
                }
            }
            Err(e) => self.log("restart_failed", i, 0, e),
        }
    }

    /// Stops the nodes this run restarted (they are its children).
    pub async fn shutdown(&mut self) {
        let mut children: Vec<(usize, Child)> = self.children.drain().collect();
        for (i, c) in &mut children {
            if let Some(pid) = c.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                let stopped = tokio::time::timeout(Duration::from_secs(10), c.wait())
                    .await
                    .is_ok();
                if !stopped {
                    let _ = c.kill().await;
                }
                self.log(
                    "stop",
                    *i,
                    pid,
                    "restarted node stopped at the end of the run".into(),
                );
            }
        }
    }
}

/// Whether `pid` exists and is not a zombie.
fn proc_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !matches!(
        stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next()),
        Some('Z' | 'X') | None
    )
}

#[derive(Debug, PartialEq, Eq)]
enum ProcState {
    Runs,
    Gone,
    Other,
}

/// Whether `pid` still runs the program `argv[0]` (a zombie counts as gone).
fn proc_matches(pid: u32, argv: &[String]) -> ProcState {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return ProcState::Gone;
    };
    if let Some(state) = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next())
        && (state == 'Z' || state == 'X')
    {
        return ProcState::Gone;
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return ProcState::Gone;
    };
    let args: Vec<&[u8]> = cmd.split(|c| *c == 0).filter(|a| !a.is_empty()).collect();
    let same = args.len() == argv.len() && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes());
    if same {
        ProcState::Runs
    } else {
        ProcState::Other
    }
}

fn spawn(node: &Node) -> Result<Child, String> {
    // the node's log: what `ringmesh dev` uses, DATA.log beside --data DATA
    let log = node
        .argv
        .iter()
        .position(|a| a == "--data")
        .and_then(|p| node.argv.get(p + 1))
        .map(|d| PathBuf::from(format!("{d}.log")));
    let (out, err) = match log.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    }) {
        Some(f) => match f.try_clone() {
            Ok(g) => (Stdio::from(f), Stdio::from(g)),
            Err(_) => (Stdio::null(), Stdio::null()),
        },
        None => (Stdio::null(), Stdio::null()),
    };
    Command::new(&node.argv[0])
        .args(&node.argv[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", node.argv[0]))
}

/// Sends OPTIONS until a 200 comes back or `limit` passes.
pub async fn wait_ready(sip: SocketAddr, limit: Duration) -> bool {
    let bind: SocketAddr = if sip.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .expect("literal");
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return false;
    };
    let Ok(local) = sock.local_addr() else {
        return false;
    };
    let deadline = Instant::now() + limit;
    let mut seq = 0u32;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        seq += 1;
        let req = format!(
            "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKrlchurn{seq}\r\nMax-Forwards: 70\r\n\
             From: <sip:churn@{local}>;tag=c{seq}\r\nTo: <sip:{sip}>\r\nCall-ID: rl-churn-{seq}-{}@{local}\r\n\
             CSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n",
            std::process::id()
        );
        let _ = sock.send_to(req.as_bytes(), sip).await;
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
            && buf[..n].starts_with(b"SIP/2.0 200")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_node_lines_only() {
        let dir = std::env::temp_dir().join(format!("rl-farm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("farm.json");
        std::fs::write(
            &p,
            r#"{"event":"node","name":"sn0","pid":100,"sip":"127.0.0.1:5060","metrics":"127.0.0.1:5360","argv":["/usr/bin/ringmesh","supernode"]}
{"event":"node","name":"sn1","pid":101,"sip":"127.0.0.1:5061","metrics":"127.0.0.1:5361","argv":["/usr/bin/ringmesh","supernode"]}
{"event":"ready"}
not json
"#,
        )
        .unwrap();
        let nodes = read_farm(&p).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].sip, "127.0.0.1:5061".parse().unwrap());
        std::fs::write(&p, "{\"event\":\"ready\"}\n").unwrap();
        assert!(read_farm(&p).unwrap_err().contains("--farm-json"));
        std::fs::write(
            &p,
            r#"{"event":"node","name":"sn0","pid":100,"sip":"127.0.0.1:5060","argv":["ringmesh"]}"#,
        )
        .unwrap();
        assert!(read_farm(&p).unwrap_err().contains("absolute"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_process_is_recognised() {
        let me = std::process::id();
        let cmd = std::fs::read(format!("/proc/{me}/cmdline")).unwrap();
        let argv: Vec<String> = cmd
            .split(|c| *c == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(proc_matches(me, &argv), ProcState::Runs);
        assert_eq!(
            proc_matches(me, &["/nonexistent".to_string()]),
            ProcState::Other
        );
    }
}
