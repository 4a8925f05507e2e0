//! The benchmark's anchor works: three Kamailio nodes started by
//! `kamailio/run-kamailio.sh --dmq` form one cluster, a contact
//! registered at one node is held by all three, and a call whose caller
//! and callee are on different nodes is answered. `make bench` compares the
//! three-supernode farm with this cluster; if the cluster stopped
//! replicating, that comparison would be against a single node in
//! disguise.

mod common;

use common::{run_load, u};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kamailio/run-kamailio.sh");

/// A port free for both UDP and TCP on 127.0.0.1 (Kamailio takes both).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The cluster's nodes, stopped by their PIDs when dropped.
struct Cluster {
    dirs: Vec<PathBuf>,
    pids: Vec<i32>,
    ports: Vec<u16>,
}

impl Cluster {
    fn start(root: &Path) -> Cluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut cluster = Cluster {
            dirs: Vec::new(),
            pids: Vec::new(),
            ports: ports.clone(),
        };
        for (i, port) in ports.iter().enumerate() {
            let seed = if i == 0 { ports[1] } else { ports[0] };
            let dir = root.join(format!("node{i}"));
            let out = Command::new(SCRIPT)
                .args(["--daemon", "--shm", "64", "--run-dir"])
                .arg(&dir)
                .args(["--dmq", &seed.to_string(), &port.to_string()])
                .output()
                .expect("run kamailio/run-kamailio.sh (Debian: kamailio)");
            assert!(
                out.status.success(),
                "node {i} did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let pid = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .expect("the script prints the PID");
            cluster.pids.push(pid);
            cluster.dirs.push(dir);
        }
        cluster
    }

    fn kamcmd(&self, node: usize, args: &[&str]) -> String {
        let sock = format!("unix:{}/ctl.sock", self.dirs[node].display());
        let out = Command::new("kamcmd")
            .args(["-s", &sock])
            .args(args)
            .output()
            .expect("run kamcmd (Debian: kamailio)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The contacts node `node` holds (usrloc's own count).
    fn contacts(&self, node: usize) -> u64 {
        let stats = self.kamcmd(node, &["stats.get_statistics", "usrloc:"]);
        stats
            .lines()
            .find(|l| l.contains("location_contacts"))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    fn target(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.ports[node])
    }

    fn log(&self) -> String {
        self.dirs
            .iter()
            .map(|d| std::fs::read_to_string(d.join("kamailio.log")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

fn wait_for(what: &str, cluster: &Cluster, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} within 30 s\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "slow: three kamailio processes"]
fn a_dmq_cluster_replicates_every_contact_to_every_node() {
    let root = std::env::temp_dir().join(format!("rl-kamdmq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cluster = Cluster::start(&root);
    wait_for("every node knows the three", &cluster, || {
        (0..3).all(|n| {
            cluster
                .kamcmd(n, &["dmq.list_nodes"])
                .matches("status: active")
                .count()
                == 3
        })
    });

    // 300 handsets register at node 0 only; nodes 1 and 2 hear of each
    // contact from node 0.
    let (code, _, stderr, r) = run_load(&[
        "--target",
        &cluster.target(0),
        "--users",
        "300",
        "--user-start",
        "1000",
        "--rate",
        "1000",
        "--duration",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(u(&r, "ops.succeeded"), 300, "{r:#}");
    wait_for("300 contacts on every node", &cluster, || {
        (0..3).all(|n| cluster.contacts(n) == 300)
    });

    // Calls: each callee registered at one node, its caller sent to
    // another; the node the INVITE reaches finds the callee in its copy.
    let targets: Vec<String> = (0..3).map(|n| cluster.target(n)).collect();
    let (code, _, stderr, r) = run_load(&[
        "--scenario",
        "call",
        "--target",
        &targets[0],
        "--target",
        &targets[1],
        "--target",
        &targets[2],
        "--call-routing",
        "cross",
        "--users",
        "30",
        "--user-start",
        "5000",
        "--count",
        "60",
        "--rate",
        "50",
        "--duration",
        "20",
    ]);
    assert_eq!(code, 0, "{stderr}\n{}", cluster.log());
    assert_eq!(u(&r, "ops.succeeded"), 60, "{r:#}");
    assert_eq!(u(&r, "ops.failed"), 0, "{r:#}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}
