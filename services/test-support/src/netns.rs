//! Two racks on one machine: two network namespaces made with iproute2,
//! joined by one veth pair (the cable between them), removed when dropped.
//! [`Racks::cut`] takes the cable down and [`Racks::heal`] brings it back;
//! processes run in a rack through `ip netns exec`, and a test's own
//! sockets are made in a rack by a thread that entered its namespace
//! ([`Racks::within`]): a socket stays in the namespace it was made in.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), as `make test` runs.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Two namespaces, `A` and `B`, and the veth pair between them.
#[derive(Debug)]
pub struct Racks {
    names: [String; 2],
    links: [String; 2],
}

/// Runs `ip ARGS`, panicking with its error output on failure.
fn ip(args: &[&str]) {
    let ip = crate::require("ip", "iproute2");
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Racks {
    /// Rack A holds [`Racks::ADDRS`]`[0]`, rack B `[1]`, on the two ends of
    /// one veth pair (a /24 of their own); each rack's loopback is up.
    pub const ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)];

    /// Makes the namespaces and the cable; names carry this process's PID
    /// so that concurrent test runs never meet.
    pub fn create() -> Racks {
        let pid = std::process::id();
        let racks = Racks {
            names: [format!("rm{pid}a"), format!("rm{pid}b")],
            // Interface names are at most 15 bytes.
            links: [format!("rmv{pid}a"), format!("rmv{pid}b")],
        };
        for n in &racks.names {
            ip(&["netns", "add", n]);
        }
        let [a, b] = &racks.links;
        ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        for (i, (ns, link)) in racks.names.iter().zip(&racks.links).enumerate() {
            ip(&["link", "set", link, "netns", ns]);
            let addr = format!("{}/24", Self::ADDRS[i]);
            ip(&["-n", ns, "addr", "add", &addr, "dev", link]);
            ip(&["-n", ns, "link", "set", link, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        racks
    }

    /// The namespace's name of rack `i` (0: A, 1: B).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// A command that runs `program` inside rack `i` (`ip netns exec`
    /// replaces itself with the program: the child's PID is the program's).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new(crate::require("ip", "iproute2"));
        c.args(["netns", "exec", &self.names[i]]).arg(program);
        c
    }

    /// Runs `f` on a thread inside rack `i`'s namespace: sockets it makes
    /// live there, wherever they are used afterwards.
    pub fn within<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.names[i]);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the rack's network namespace");
                f()
            })
            .join()
            .expect("the thread in the rack")
        })
    }

    /// Cuts the cable: both ends of the veth pair go down, and nothing
    /// crosses between the racks until [`Racks::heal`].
    pub fn cut(&self) {
        for (ns, link) in self.names.iter().zip(&self.links) {
            ip(&["-n", ns, "link", "set", link, "down"]);
        }
    }

    /// Mends the cable.
    pub fn heal(&self) {
        for (ns, link) in self.names.iter().zip(&self.links) {
            ip(&["-n", ns, "link", "set", link, "up"]);
        }
    }
}

impl Drop for Racks {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it
        // the pair.
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "delete", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}
