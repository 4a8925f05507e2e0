//! # ringmesh-test-support: what the slow tests share
//!
//! The tests that start real processes (a `ringmesh dev` farm, etcd, sipp,
//! baresip) get them from here, so that every suite does it the same way:
//! on 127.0.0.1, on ports the kernel chose, stopped by PID when dropped,
//! waiting on conditions rather than fixed sleeps, and failing loudly when
//! a tool is missing (`make test` installs them; a silent skip would hide a
//! broken CI image).
//!
//! | module | what it holds |
//! |---|---|
//! | [`farm`] | [`Farm`]: `ringmesh dev --json` on kernel-chosen ports, its nodes and logs |
//! | [`etcd`] | [`Etcd`]: a real etcd on a [`PortBlock`] |
//! | [`sip`] | raw SIP over UDP and TCP, and a digest REGISTER |
//! | [`netns`] | [`netns::Racks`]: two network namespaces joined by a veth pair, cut and healed |
//! | [`phone`] | [`phone::UdpPhone`]: a raw SIP phone that answers digest challenges |
//!
//! The crate root: [`require`] a tool, [`free_port`], a [`PortBlock`] for a
//! farm whose nodes restart, [`wait_until`], [`http_get`] and [`metric`].

pub mod etcd;
pub mod farm;
pub mod netns;
pub mod phone;
pub mod sip;
pub mod tls;
pub mod ws;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use etcd::{Etcd, EtcdCerts, EtcdCluster};
pub use farm::{Farm, NodeInfo};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// The path of the program `tool`, which the Debian package `package`
/// installs; panics, naming both, when it is missing (a slow test never
/// skips silently).
pub fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{tool} is not installed: this slow test needs it. `make test` installs it \
                 (Debian package {package}); `make test-fast` runs the tests that need nothing"
            )
        })
}

/// A free TCP port on 127.0.0.1 (bound, then released): only for programs
/// that cannot be told to bind port 0 themselves (baresip).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Ports `base .. base + 900` (one `ringmesh dev --sip-port base` farm, see
/// docs/dev.md; or an etcd) below the kernel's ephemeral range, held by this
/// process until dropped.
///
/// A farm on kernel-chosen ports cannot restart its nodes reliably: while a
/// node is down, any socket the kernel hands an ephemeral port to — a probe's
/// connection, a sipp, another test's farm — may take the node's port, and
/// the node then fails to bind it on restart. Production ports are fixed and
/// outside that range; a test that restarts nodes uses a block like them.
/// Blocks are shared between test processes through an advisory lock on a
/// file per block in the temporary directory.
#[derive(Debug)]
pub struct PortBlock {
    pub base: u16,
    _lock: std::fs::File,
}

impl PortBlock {
    /// Takes the first block (from a random one) that no other test process
    /// holds and whose ports are all free now.
    pub fn reserve() -> PortBlock {
        const FIRST: u16 = 11_000;
        const BLOCKS: u16 = 21; // up to 31,899: below 32,768
        let start = (rand_u64() % u64::from(BLOCKS)) as u16;
        for i in 0..BLOCKS {
            let base = FIRST + ((start + i) % BLOCKS) * 1000;
            let path = std::env::temp_dir().join(format!("ringmesh-test-ports-{base}.lock"));
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            if file.try_lock().is_ok() && (base..base + 900).all(port_free) {
                return PortBlock { base, _lock: file };
            }
        }
        panic!(
            "no block of 900 free ports between {FIRST} and {}",
            FIRST + BLOCKS * 1000
        )
    }

    /// The `--sip-port` argument of the farm on this block.
    pub fn sip_port(&self) -> String {
        self.base.to_string()
    }
}

fn port_free(port: u16) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port free on 127.0.0.1 for both UDP and TCP now (SIP listens on
/// both), for a program that must be told its port (sipp callees, baresip).
pub fn free_sip_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
        let port = udp.local_addr().expect("its address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` until it returns true or `limit` passes (then panics naming
/// `what`); returns how long it took, and logs it.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            let took = start.elapsed();
            eprintln!("{what}: after {took:?}");
            return took;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A GET over HTTP/1.1; (status, body), or (0, "") when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The sum of every series of the metric `name` (any labels) that
/// `addr`'s `/metrics` exports; `None` when it exports none.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics");
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A number for unique Call-IDs and branches.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    h.finish()
}

/// The value of series `name` of `addr`'s `/metrics` with these labels
/// (among others: the node's, in whatever order they are written).
pub fn metric_labelled(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The value of the first line of `addr`'s `/metrics` that starts with
/// `prefix` (a name, or a name with the start of its labels).
pub fn metric_line(addr: SocketAddr, prefix: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
