//! A partition between two racks, with real processes and a real cut:
//! six supernodes, three in each of two network namespaces joined by one
//! veth pair ([`Racks`]). Phones in each rack register through their own
//! rack's nodes before, during and after a 30-second cut of the link.
//!
//! What must hold (docs/operations.md, "A partition between racks"):
//! each side re-forms its replica sets from the nodes it still reaches and
//! keeps serving; on heal the views merge and anti-entropy merges the
//! records entry by entry, the later write by hybrid logical clock winning
//! (the writing node's id breaks ties), a removal being a write like any
//! other. So no acknowledged binding is lost, no removed binding comes
//! back, and every replica of every record ends up holding the same
//! entries.
//!
//! The nodes run `--auth none`: the test is about the ring, and digest
//! authentication would only double the round trips.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric, rand_u64, start_farm, status_of, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ringmesh_test_support::netns::Racks;
use ringmesh_test_support::phone::{DOMAIN, UdpPhone};

const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");
/// Nodes per rack.
const PER_RACK: usize = 3;
/// Subscribers, in seven groups by index (see [`Group`]).
const USERS: usize = 140;
const CUT: Duration = Duration::from_secs(30);

/// One supernode in a rack, stopped (SIGTERM, then SIGKILL) when dropped.
struct Node {
    name: String,
    rack: usize,
    sip: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Six node identities from the farm CA: `ringmesh dev` with two nodes
/// enrolls sn0 and sn1, and its bootstrap token enrolls four more by hand.
/// The identity files are copied out before the dev farm stops.
fn identities(dir: &Path) -> Vec<PathBuf> {
    let farm = start_farm(&["--nodes", "2"], &[]);
    let token = farm.dir.path().join("bootstrap.token");
    (0..2 * PER_RACK)
        .map(|i| {
            let name = format!("sn{i}");
            let to = dir.join(&name);
            std::fs::create_dir_all(&to).unwrap();
            if i < 2 {
                for f in ["node.key", "node.crt", "ca.crt", "farm.secret"] {
                    std::fs::copy(farm.dir.path().join(&name).join(f), to.join(f))
                        .unwrap_or_else(|e| panic!("copy {name}/{f}: {e}"));
                }
            } else {
                let out = Command::new(BIN)
                    .args(["enroll", "--enrollment", &farm.enrollment])
                    .arg("--bootstrap-token-file")
                    .arg(&token)
                    .args(["--name", &name, "--data"])
                    .arg(&to)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "enroll {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            to
        })
        .collect()
}

/// Starts node `i`: even ones in rack A, odd ones in rack B, each rack's
/// nodes on its own address (ports of their own: the namespaces are
/// empty). Node 0 may found the ring; every node seeds from the first node
/// of each rack.
fn start_node(racks: &Racks, i: usize, data: &Path, logs: &Path) -> Node {
    let rack = i % 2;
    let j = (i / 2) as u16;
    let ip = Racks::ADDRS[rack];
    let name = format!("sn{i}");
    let sip = SocketAddr::from((ip, 5060 + j));
    let admin = SocketAddr::from(([127, 0, 0, 1], 5260 + j));
    let metrics = SocketAddr::from(([127, 0, 0, 1], 9100 + j));
    let log = logs.join(format!("{name}.log"));
    let mut cmd = racks.command(rack, Path::new(BIN));
    cmd.args(["supernode", "--name", &name, "--domain", DOMAIN])
        .args(["--sip", &format!("udp:{sip}")])
        .args(["--overlay", &format!("{ip}:{}", 7000 + j)])
        .args(["--seed", &format!("{}:7000", Racks::ADDRS[0])])
        .args(["--seed", &format!("{}:7000", Racks::ADDRS[1])])
        .args(["--admin", &admin.to_string()])
        .args(["--metrics", &metrics.to_string()])
        .args(["--replicas", "3", "--auth", "none"])
        .args(["--allow-loopback-contacts", "true", "--log", "info"])
        .arg("--data")
        .arg(data);
    if i == 0 {
        cmd.args(["--bootstrap-after", "2"]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start a supernode in its rack");
    Node {
        name,
        rack,
        sip,
        admin,
        metrics,
        log,
        child,
    }
}

/// A metric of `node`, read from inside its rack.
fn node_metric(racks: &Racks, node: &Node, name: &str) -> Option<f64> {
    racks.within(node.rack, || metric(node.metrics, name))
}

/// The entries of a record: (contact, HLC).
type Entries = BTreeSet<(String, u64)>;

/// What `node` stores: AOR → entries (`ringmesh ctl bindings`).
fn stored(racks: &Racks, node: &Node) -> BTreeMap<String, Entries> {
    let out = racks
        .command(node.rack, Path::new(BIN))
        .args(["ctl", "--json", "--admin", &node.admin.to_string()])
        .args(["bindings", "--all", "--page-size", "1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl bindings on {}: {}",
        node.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from ctl");
    let mut by_aor: BTreeMap<String, Entries> = BTreeMap::new();
    for b in v["bindings"].as_array().expect("a bindings list") {
        by_aor
            .entry(b["aor"].as_str().unwrap().to_string())
            .or_default()
            .insert((
                b["contact"].as_str().unwrap().to_string(),
                b["hlc"].as_u64().unwrap_or_default(),
            ));
    }
    by_aor
}

/// A phone in rack `rack` on its own port (contacts differ by port).
fn phone(racks: &Racks, rack: usize) -> UdpPhone {
    let sock = racks
        .within(rack, || UdpSocket::bind(("127.0.0.1", 40000 + rack as u16)))
        .expect("a phone socket in the rack");
    let me = sock.local_addr().unwrap();
    UdpPhone {
        sock,
        me,
        patience: Duration::from_secs(4),
        domain: ringmesh_test_support::phone::DOMAIN.into(),
    }
}

fn aor(user: &str) -> String {
    format!("sip:{user}@{DOMAIN}")
}

/// The contact phone `rack`'s registrations of `user` carry.
fn contact(user: &str, rack: usize) -> String {
    format!("sip:{user}@127.0.0.1:{}", 40000 + rack)
}

/// The test's account of every REGISTER: what the acknowledged ones left
/// (AOR → contacts), and the users one of whose REGISTERs got no 200
/// (it may or may not have been applied: only consistency is checked).
#[derive(Default)]
struct Model {
    expected: BTreeMap<String, BTreeSet<String>>,
    uncertain: HashSet<String>,
    sent: [u64; 2],
    ok: [u64; 2],
}

impl Model {
    /// `phone` (in `rack`) registers `contact_of`'s contact for `user` at
    /// `node` (expires 0 removes it); the final status, if any.
    fn register(
        &mut self,
        phone: &UdpPhone,
        rack: usize,
        node: SocketAddr,
        user: &str,
        contact_of: usize,
        expires: u32,
    ) -> Option<u16> {
        let c = contact(user, contact_of);
        let status = self.send(phone, rack, node, user, &format!("<{c}>;expires={expires}"));
        if status == Some(200) {
            let contacts = self.expected.entry(aor(user)).or_default();
            if expires == 0 {
                contacts.remove(&c);
            } else {
                contacts.insert(c);
            }
        }
        status
    }

    /// `phone` removes every binding of `user` (`Contact: *`).
    fn clear(&mut self, phone: &UdpPhone, rack: usize, node: SocketAddr, user: &str) {
        if self.send(phone, rack, node, user, "*\r\nExpires: 0") == Some(200) {
            self.expected.entry(aor(user)).or_default().clear();
        }
    }

    /// A REGISTER for `user` with `contact` (the Contact header's value and
    /// any header lines after it), counted; a user whose REGISTER gets no
    /// 200 becomes uncertain.
    fn send(
        &mut self,
        phone: &UdpPhone,
        rack: usize,
        node: SocketAddr,
        user: &str,
        contact: &str,
    ) -> Option<u16> {
        let text = register_text(phone, user, &format!("Contact: {contact}\r\n"));
        self.sent[rack] += 1;
        let status = phone
            .ask(node, &text, phone.patience)
            .and_then(|r| status_of(r.as_bytes()));
        self.expected.entry(aor(user)).or_default();
        if status == Some(200) {
            self.ok[rack] += 1;
        } else {
            self.uncertain.insert(aor(user));
        }
        status
    }
}

/// A REGISTER of `user` from `phone` with a fresh Call-ID, and
/// `contact_lines` (none: a query of the bindings).
fn register_text(phone: &UdpPhone, user: &str, contact_lines: &str) -> String {
    let n = rand_u64();
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKp{n:x};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=p{n:x}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: p{n:x}\r\nCSeq: 1 REGISTER\r\n{contact_lines}Content-Length: 0\r\n\r\n",
        me = phone.me
    )
}

/// The groups of users, by index modulo 7, and what the cut does to each
/// (A and B are the racks; "before" is while the link is up).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Group {
    /// Registered before; A removes it during the cut: B's replicas still
    /// hold it live, and it must not come back.
    RemovedOnA,
    /// Registered before; B removes it during the cut.
    RemovedOnB,
    /// New during the cut: A registers one contact, B another; both stay.
    NewOnBoth,
    /// Registered before; A removes it, then B refreshes it: B wrote last.
    RemovedThenRefreshed,
    /// Registered before; B refreshes it, then A removes it: A wrote last.
    RefreshedThenRemoved,
    /// Registered before and refreshed from both sides throughout.
    Refreshed,
    /// Registered before; B adds a contact, then A removes them all
    /// (`Contact: *`) without seeing B's: A wrote last, none stays.
    ClearedOnA,
}

fn group(i: usize) -> Group {
    [
        Group::RemovedOnA,
        Group::RemovedOnB,
        Group::NewOnBoth,
        Group::RemovedThenRefreshed,
        Group::RefreshedThenRemoved,
        Group::Refreshed,
        Group::ClearedOnA,
    ][i % 7]
}

fn users() -> Vec<(String, Group)> {
    (0..USERS).map(|i| (format!("p{i:03}"), group(i))).collect()
}

/// A record as its replicas agree on it.
struct Record {
    /// The racks its three replicas are in.
    racks: BTreeSet<usize>,
    contacts: BTreeSet<String>,
}

/// Every node sees six live members and, for each record, the nodes that
/// store it agree entry for entry and are exactly k = 3. The records by
/// AOR, when so.
fn converged(racks: &Racks, nodes: &[Node]) -> Result<BTreeMap<String, Record>, String> {
    for n in nodes {
        let size = node_metric(racks, n, "ringmesh_overlay_ring_size");
        if size != Some(6.0) {
            return Err(format!("{} sees a ring of {size:?}", n.name));
        }
    }
    let mut holders: BTreeMap<String, Vec<(&Node, Entries)>> = BTreeMap::new();
    for n in nodes {
        for (a, entries) in stored(racks, n) {
            holders.entry(a).or_default().push((n, entries));
        }
    }
    let mut out = BTreeMap::new();
    for (a, hs) in holders {
        let names: Vec<&str> = hs.iter().map(|h| h.0.name.as_str()).collect();
        if hs.len() != 3 {
            return Err(format!("{a} is stored on {names:?}, not on 3 nodes"));
        }
        if hs.iter().any(|h| h.1 != hs[0].1) {
            let sets: Vec<_> = hs.iter().map(|h| &h.1).collect();
            return Err(format!("the replicas of {a} on {names:?} differ: {sets:?}"));
        }
        let record = Record {
            racks: hs.iter().map(|h| h.0.rack).collect(),
            contacts: hs[0].1.iter().map(|(c, _)| c.clone()).collect(),
        };
        out.insert(a, record);
    }
    Ok(out)
}

#[test]
#[ignore = "slow: root, two network namespaces, six supernodes, a 30-second cut"]
fn a_partition_between_racks_loses_nothing_and_converges() {
    common::require("ip", "iproute2");
    let work = tempfile::tempdir().unwrap();
    let data = identities(work.path());
    let racks = Racks::create();
    let nodes: Vec<Node> = data
        .iter()
        .enumerate()
        .map(|(i, d)| start_node(&racks, i, d, work.path()))
        .collect();
    let logs = || {
        nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- {} (last lines, newest first)\n{}",
                    n.name,
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let took = wait_until("six members on every node", Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| node_metric(&racks, n, "ringmesh_overlay_ring_size") == Some(6.0))
    });
    eprintln!("ring of 6 across the racks after {took:?}");

    let phones = [phone(&racks, 0), phone(&racks, 1)];
    let rack_nodes = |rack: usize| -> Vec<SocketAddr> {
        nodes
            .iter()
            .filter(|n| n.rack == rack)
            .map(|n| n.sip)
            .collect()
    };
    let sips = [rack_nodes(0), rack_nodes(1)];
    let mut m = Model::default();
    let everyone = users();

    // Before: every group but the new one registered from rack A, each
    // through the next node of the rack.
    for (k, (u, g)) in everyone.iter().enumerate() {
        if *g != Group::NewOnBoth {
            let s = m.register(&phones[0], 0, sips[0][k % PER_RACK], u, 0, 600);
            assert_eq!(
                s,
                Some(200),
                "{u} registers while the link is up\n{}",
                logs()
            );
        }
    }
    let mut before = None;
    wait_until(
        "every record on its 3 replicas",
        Duration::from_secs(60),
        || {
            before = converged(&racks, &nodes).ok();
            before.is_some()
        },
    );
    // A record whose replicas are all in one rack is invisible to the
    // other during the cut: a removal there finds nothing to remove (the
    // case that once brought removed bindings back).
    let one_sided = before
        .iter()
        .flat_map(|b| b.values())
        .filter(|r| r.racks.len() == 1)
        .count();
    eprintln!(
        "before the cut: {} users replicated 3 times, {one_sided} of them in one rack only",
        m.ok[0]
    );

    racks.cut();
    let cut_at = Instant::now();
    // Each side serves again once it has declared the other side dead
    // (every node of it sees a ring of three) and re-formed its replica
    // sets: probe with a scratch user per side. Until then a record whose
    // write quorum is on the far side cannot be written (503 at the
    // operation deadline), whatever the probe's own record does.
    let mut serving = [None, None];
    while serving.iter().any(Option::is_none) && cut_at.elapsed() < CUT {
        for rack in 0..2 {
            if serving[rack].is_none()
                && nodes
                    .iter()
                    .filter(|n| n.rack == rack)
                    .all(|n| node_metric(&racks, n, "ringmesh_overlay_ring_size") == Some(3.0))
                && m.register(
                    &phones[rack],
                    rack,
                    sips[rack][0],
                    &format!("probe{rack}"),
                    rack,
                    600,
                ) == Some(200)
            {
                serving[rack] = Some(cut_at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "after the cut, rack A serves again after {:?}, rack B after {:?}",
        serving[0], serving[1]
    );
    assert!(
        serving.iter().all(Option::is_some),
        "each side serves registrations again within the cut\n{}",
        logs()
    );
    let sent_before = m.sent;
    let ok_before = m.ok;

    // The conflicting writes, in two rounds at least 50 ms apart so that
    // the second round's clocks are later.
    let via = |rack: usize, k: usize| sips[rack][k % PER_RACK];
    for (k, (u, g)) in everyone.iter().enumerate() {
        match g {
            Group::RemovedOnA | Group::RemovedThenRefreshed => {
                m.register(&phones[0], 0, via(0, k), u, 0, 0);
            }
            Group::RemovedOnB => {
                m.register(&phones[1], 1, via(1, k), u, 0, 0);
            }
            Group::RefreshedThenRemoved => {
                m.register(&phones[1], 1, via(1, k), u, 0, 600);
            }
            Group::ClearedOnA => {
                m.register(&phones[1], 1, via(1, k), u, 1, 600);
            }
            Group::NewOnBoth => {
                m.register(&phones[0], 0, via(0, k), u, 0, 600);
                m.register(&phones[1], 1, via(1, k), u, 1, 600);
            }
            Group::Refreshed => {}
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    for (k, (u, g)) in everyone.iter().enumerate() {
        match g {
            Group::RemovedThenRefreshed => {
                m.register(&phones[1], 1, via(1, k), u, 0, 600);
            }
            Group::RefreshedThenRemoved => {
                m.register(&phones[0], 0, via(0, k), u, 0, 0);
            }
            Group::ClearedOnA => m.clear(&phones[0], 0, via(0, k), u),
            _ => {}
        }
    }
    // Steady traffic for the rest of the cut: both sides refresh the
    // untouched group and the new one.
    let mut rounds = 0;
    while cut_at.elapsed() < CUT {
        for (k, (u, g)) in everyone.iter().enumerate() {
            match g {
                Group::Refreshed => {
                    m.register(&phones[k % 2], k % 2, via(k % 2, k), u, 0, 600);
                }
                Group::NewOnBoth => {
                    for (rack, p) in phones.iter().enumerate() {
                        m.register(p, rack, via(rack, k), u, rack, 600);
                    }
                }
                _ => {}
            }
        }
        rounds += 1;
    }
    let during = [0, 1].map(|r| (m.ok[r] - ok_before[r], m.sent[r] - sent_before[r]));
    eprintln!(
        "during the cut, once serving: rack A {}/{} REGISTERs answered 200, rack B {}/{} ({rounds} refresh rounds)",
        during[0].0, during[0].1, during[1].0, during[1].1
    );
    for (rack, (ok, sent)) in during.iter().enumerate() {
        assert_eq!(
            ok,
            sent,
            "rack {rack} answers every REGISTER once it serves again\n{}",
            logs()
        );
    }

    racks.heal();
    let healed_at = Instant::now();
    let mut last = String::new();
    let mut records = None;
    while healed_at.elapsed() < Duration::from_secs(180) {
        match converged(&racks, &nodes) {
            Ok(r) => {
                records = Some(r);
                break;
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let records = records
        .unwrap_or_else(|| panic!("no convergence 180 s after the heal: {last}\n{}", logs()));
    eprintln!("converged {:?} after the heal", healed_at.elapsed());

    // Every acknowledged write holds, removals included.
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (a, want) in &m.expected {
        if m.uncertain.contains(a) {
            continue;
        }
        let have = records
            .get(a)
            .map(|r| r.contacts.clone())
            .unwrap_or_default();
        if &have != want {
            let g = everyone.iter().find(|(u, _)| aor(u) == *a).map(|(_, g)| *g);
            wrong.push(format!(
                "{a} ({g:?}): stored {have:?}, acknowledged {want:?}"
            ));
        }
        checked += 1;
    }
    assert!(
        wrong.is_empty(),
        "{} AORs differ from what their acknowledged REGISTERs left:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    eprintln!(
        "{checked} AORs as their acknowledged REGISTERs left them, {} with an unanswered REGISTER (consistent, not checked)",
        m.uncertain.len()
    );
    assert!(checked >= USERS, "the users' own AORs were all checked");

    // And phones reach the merged records from either side: a query at a
    // rack B node returns the contacts both sides registered during the
    // cut.
    let query = |rack: usize, node: SocketAddr, u: &str| -> String {
        let text = register_text(&phones[rack], u, "");
        phones[rack]
            .ask(node, &text, Duration::from_secs(4))
            .expect("an answer to the query")
    };
    let certain = |g: Group| {
        everyone
            .iter()
            .find(|(u, gu)| *gu == g && !m.uncertain.contains(&aor(u)))
            .map(|(u, _)| u.clone())
            .unwrap_or_else(|| panic!("a user of {g:?} with every REGISTER answered"))
    };
    let u = certain(Group::NewOnBoth);
    let answer = query(1, sips[1][2], &u);
    for rack in 0..2 {
        assert!(
            answer.contains(&contact(&u, rack)),
            "rack B's node returns both sides' contacts of {u}: {answer}"
        );
    }
    // A registration after a `Contact: *` is later than its cleared mark,
    // so it is live.
    let u = certain(Group::ClearedOnA);
    let status = m.register(&phones[1], 1, sips[1][0], &u, 1, 600);
    assert_eq!(status, Some(200), "{u} registers again after the clear");
    let answer = query(0, sips[0][1], &u);
    assert!(
        answer.contains(&contact(&u, 1)) && !answer.contains(&contact(&u, 0)),
        "rack A's node returns {u}'s new contact, and only it: {answer}"
    );
}
