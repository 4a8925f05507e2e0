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
//!
//! With `--chaos` (a soak), each step picks a node other than the first
//! and an action with a generator seeded by `--seed`, so a run can be
//! replayed: SIGKILL and restart, SIGSTOP for 20 s, or SIGTERM (drain and
//! hand-off) and restart; every node's RSS is sampled every 10 s.
//!
//! With `--upgrade-to PROGRAM` (a rolling upgrade), each step takes the
//! next node, the first (the ring's founder) last: SIGTERM (drain and
//! hand-off), then the same argv with PROGRAM as the program; the steps
//! end when every node runs it.

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

/// A node's resident memory at one moment (chaos runs sample every node
/// every [`RSS_EVERY`]).
#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    pub t_s: f64,
    pub node: String,
    pub pid: u32,
    pub rss_kib: u64,
}

/// How often a chaos run samples each node's RSS.
pub const RSS_EVERY: Duration = Duration::from_secs(10);
/// How long a chaos run keeps a node frozen (SIGSTOP).
pub const FREEZE: Duration = Duration::from_secs(20);

/// What one chaos step does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chaos {
    /// SIGKILL, then start it again.
    Kill,
    /// SIGSTOP for [`FREEZE`], then SIGCONT.
    Freeze,
    /// SIGTERM (it drains and hands off), then start it again.
    Restart,
}

/// What the steps of a [`Churner`] do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// SIGKILL and restart each node but the first, in turn.
    InTurn,
    /// A node and an action chosen by a generator of this seed.
    Chaos(u64),
    /// Restart every node gracefully with this program, the first last.
    Upgrade(PathBuf),
}

/// Kills and restarts farm nodes, one at a time, as its [`Plan`] says.
#[derive(Debug)]
pub struct Churner {
    nodes: Vec<Node>,
    next: usize,
    children: HashMap<usize, Child>,
    t0: Instant,
    /// Chaos: the generator's state (splitmix64), and the frozen nodes
    /// with when they thaw.
    chaos: Option<u64>,
    frozen: Vec<(usize, Instant)>,
    /// Upgrade: the program every node is restarted with.
    upgrade: Option<PathBuf>,
    pub events: Vec<ChurnEvent>,
    pub rss: Vec<RssSample>,
}

impl Churner {
    /// A churner of `nodes` from `t0`.
    pub fn new(nodes: Vec<Node>, t0: Instant, plan: Plan) -> Result<Churner, String> {
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
            chaos: match plan {
                Plan::Chaos(seed) => Some(seed),
                _ => None,
            },
            frozen: Vec::new(),
            upgrade: match plan {
                Plan::Upgrade(program) => Some(program),
                _ => None,
            },
            events: Vec::new(),
            rss: Vec::new(),
        })
    }

    fn t_s(&self) -> f64 {
        (self.t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    fn log(&mut self, event: &'static str, i: usize, pid: u32, detail: String) {
        let e = ChurnEvent {
            t_s: self.t_s(),
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

    /// The next number of the chaos generator (splitmix64).
    fn roll(&mut self) -> u64 {
        let s = self.chaos.get_or_insert(0);
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// One step: the next node (never the first) killed and restarted; in
    /// a chaos run, a node that is not frozen, chosen at random, killed,
    /// frozen or restarted gracefully; in an upgrade, the next node not
    /// upgraded yet (the first last) restarted gracefully with the new
    /// program.
    pub async fn churn_one(&mut self) {
        if let Some(program) = self.upgrade.clone() {
            let n = self.nodes.len();
            if self.next >= n {
                return;
            }
            let i = (self.next + 1) % n;
            self.next += 1;
            self.log(
                "upgrade",
                i,
                self.nodes[i].pid,
                program.display().to_string(),
            );
            return self.kill_and_start(i, Chaos::Restart, Some(program)).await;
        }
        if self.chaos.is_none() {
            let i = 1 + self.next % (self.nodes.len() - 1);
            self.next += 1;
            return self.kill_and_start(i, Chaos::Kill, None).await;
        }
        let candidates: Vec<usize> = (1..self.nodes.len())
            .filter(|i| !self.frozen.iter().any(|(f, _)| f == i))
            .collect();
        let i = candidates[(self.roll() % candidates.len() as u64) as usize];
        let action = [Chaos::Kill, Chaos::Freeze, Chaos::Restart][(self.roll() % 3) as usize];
        if action == Chaos::Freeze {
            let pid = self.nodes[i].pid;
            match kill(Pid::from_raw(pid as i32), Signal::SIGSTOP) {
                Ok(()) => {
                    self.frozen.push((i, Instant::now() + FREEZE));
                    self.log(
                        "freeze",
                        i,
                        pid,
                        format!("SIGSTOP for {}s", FREEZE.as_secs()),
                    );
                }
                Err(e) => self.log("skip", i, pid, format!("SIGSTOP failed: {e}")),
            }
            return;
        }
        self.kill_and_start(i, action, None).await;
    }

    /// Thaws the frozen nodes whose time is up (all of them with `all`).
    pub fn thaw(&mut self, all: bool) {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.frozen)
            .into_iter()
            .partition(|(_, until)| all || *until <= now);
        self.frozen = keep;
        for (i, _) in due {
            let pid = self.nodes[i].pid;
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            self.log("thaw", i, pid, "SIGCONT".into());
        }
    }

    /// Every running node's resident memory, from /proc.
    pub fn sample_rss(&mut self) {
        let t_s = self.t_s();
        for n in &self.nodes {
            let rss = std::fs::read_to_string(format!("/proc/{}/status", n.pid))
                .ok()
                .and_then(|st| {
                    st.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                });
            if let Some(rss_kib) = rss {
                self.rss.push(RssSample {
                    t_s,
                    node: n.name.clone(),
                    pid: n.pid,
                    rss_kib,
                });
            }
        }
    }

    /// Stops node `i` (SIGKILL, or for [`Chaos::Restart`] SIGTERM and up
    /// to 20 s to drain) and starts it again from its argv, with `program`
    /// as its program when given.
    async fn kill_and_start(&mut self, i: usize, how: Chaos, program: Option<PathBuf>) {
        let pid = self.nodes[i].pid;
        let (signal, name, grace) = match how {
            Chaos::Restart => (Signal::SIGTERM, "SIGTERM", Duration::from_secs(20)),
            _ => (Signal::SIGKILL, "SIGKILL", Duration::from_secs(5)),
        };
        let event = if how == Chaos::Restart {
            "stop"
        } else {
            "kill"
        };
        if let Some(mut child) = self.children.remove(&i) {
            let _ = kill(Pid::from_raw(pid as i32), signal);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            self.log(event, i, pid, format!("{name} (restarted earlier by us)"));
        } else {
            match proc_matches(pid, &self.nodes[i].argv) {
                ProcState::Runs => {
                    match kill(Pid::from_raw(pid as i32), signal) {
                        Ok(()) => self.log(event, i, pid, name.into()),
                        Err(e) => {
                            self.log("skip", i, pid, format!("{name} failed: {e}"));
                            return;
                        }
                    }
                    // it is `ringmesh dev`'s child: wait until it is gone
                    // or a zombie (its sockets are then closed); its
                    // cmdline empties earlier, while it is still exiting
                    let deadline = Instant::now() + grace;
                    while proc_alive(pid) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if proc_alive(pid) {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                        self.log(
                            "kill",
                            i,
                            pid,
                            format!("still running {grace:?} after {name}"),
                        );
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while proc_alive(pid) && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                ProcState::Gone => self.log(event, i, pid, "already gone".into()),
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
        if let Some(p) = program {
            self.nodes[i].argv[0] = p.display().to_string();
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

    /// Thaws frozen nodes, and stops the nodes this run restarted (they
    /// are its children).
    pub async fn shutdown(&mut self) {
        self.thaw(true);
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
    fn chaos_choices_replay_from_their_seed_and_cover_every_action() {
        let node = |i: u32| Node {
            name: format!("sn{i}"),
            pid: 100 + i,
            sip: "127.0.0.1:5060".parse().unwrap(),
            argv: vec!["/bin/true".into()],
        };
        let nodes: Vec<Node> = (0..5).map(node).collect();
        let rolls = |seed| {
            let mut c = Churner::new(nodes.clone(), Instant::now(), Plan::Chaos(seed)).unwrap();
            (0..60).map(|_| c.roll()).collect::<Vec<u64>>()
        };
        assert_eq!(rolls(7), rolls(7), "a seed replays");
        assert_ne!(rolls(7), rolls(8));
        let actions: std::collections::HashSet<u64> = rolls(7).iter().map(|r| r % 3).collect();
        assert_eq!(actions.len(), 3, "kill, freeze and restart all come up");
        // Thawing with nothing frozen does nothing.
        let mut c = Churner::new(nodes, Instant::now(), Plan::Chaos(1)).unwrap();
        c.thaw(true);
        assert!(c.events.is_empty());
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
