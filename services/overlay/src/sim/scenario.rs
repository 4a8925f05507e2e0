//! The standard scenario: start a farm, load keys, churn, settle, verify.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use super::{NetParams, Report, Sim, true_replicas};
use crate::hlc::Hlc;
use crate::id::{Key, NodeId};
use crate::node::{Config, Event};
use crate::stats::MAX_TRACKED_HOPS;

/// How the farm comes up.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// Every node starts at once from one shared member list (etcd-fed
    /// start): the quick way to 10 000 nodes.
    SharedView,
    /// One node starts a ring and the others join through the protocol, one
    /// every `interval` (joins overlap).
    Join { interval: Duration },
}

/// Membership changes after the load, in a shuffled order, one every `every`.
#[derive(Clone, Debug)]
pub struct Churn {
    /// Crashes (kill -9).
    pub kills: usize,
    /// New nodes joining.
    pub joins: usize,
    /// Graceful leaves (SIGTERM).
    pub leaves: usize,
    pub every: Duration,
}

/// Parameters of [`run`].
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub nodes: usize,
    /// Keys written during the load phase (one entry each).
    pub keys: usize,
    pub bootstrap: Bootstrap,
    pub churn: Churn,
    pub net: NetParams,
    /// Puts per virtual second during the load.
    pub write_rate: u32,
    /// Reads of loaded keys per virtual second during churn.
    pub churn_reads_per_sec: u32,
    /// Puts of new keys per virtual second during churn.
    pub churn_writes_per_sec: u32,
    /// Reads per virtual second in the final verification.
    pub verify_rate: u32,
    /// Longest virtual time to wait for views and replicas to settle.
    pub settle_limit: Duration,
    /// Timing and replication settings for every node (id is replaced).
    pub node: Config,
    /// Keep every node's persisted log (memory!).
    pub persist: bool,
    /// Called at each phase boundary with a one-line description (the
    /// command line prints it; the library itself never prints).
    pub progress: Option<fn(&str)>,
}

impl Params {
    /// Defaults for `nodes` nodes and `keys` keys: shared-view start, no
    /// churn, a LAN-like network, anti-entropy every 10 s.
    pub fn new(nodes: usize, keys: usize) -> Self {
        let mut node = Config::new(crate::id::NodeId::from_u128(0));
        node.anti_entropy_interval = Duration::from_secs(10);
        node.sweep_interval = Duration::from_secs(5);
        Params {
            seed: 1,
            nodes,
            keys,
            bootstrap: Bootstrap::SharedView,
            churn: Churn {
                kills: 0,
                joins: 0,
                leaves: 0,
                every: Duration::from_secs(3),
            },
            net: NetParams::default(),
            write_rate: 20_000,
            churn_reads_per_sec: 200,
            churn_writes_per_sec: 50,
            verify_rate: 50_000,
            settle_limit: Duration::from_secs(180),
            node,
            persist: false,
            progress: None,
        }
    }
}

const TAG_LOAD: u64 = 0;
const TAG_CHURN_READ: u64 = 1 << 60;
const TAG_CHURN_WRITE: u64 = 2 << 60;
const TAG_VERIFY: u64 = 3 << 60;
const TAG_KIND: u64 = 0xf << 60;

/// Slice of virtual time in which rate-driven operations are issued.
const SLICE: Duration = Duration::from_millis(10);
const ENTRY_ID: &[u8] = b"c1";
/// Entries outlive any scenario.
const TTL_MS: u64 = 24 * 3600 * 1000;

fn key_of(i: usize) -> Key {
    Key::hash(format!("sip:user{i}@example.com").as_bytes())
}

#[derive(Default)]
struct Truth {
    /// Per key index: the stamp and origin of the entry written, once acked.
    acked: Vec<Option<(Hlc, NodeId)>>,
    issued: HashMap<usize, (Hlc, NodeId)>,
}

impl Truth {
    fn ensure(&mut self, i: usize) {
        if self.acked.len() <= i {
            self.acked.resize(i + 1, None);
        }
    }
}

/// Plays the scenario described by `p` and reports what happened.
pub fn run(p: &Params) -> Report {
    let mut sim = Sim::new(p.seed, p.net.clone(), p.node.clone(), p.persist);
    let mut report = Report {
        seed: p.seed,
        nodes_initial: p.nodes,
        keys: p.keys,
        replicas: p.node.replicas,
        ..Report::default()
    };
    let mut truth = Truth::default();
    let say = |sim: &Sim, what: &str| {
        if let Some(f) = p.progress {
            f(&format!(
                "[virtual {:>7.1}s] {what}",
                sim.elapsed().as_secs_f64()
            ));
        }
    };

    // 1. The farm.
    say(&sim, &format!("starting {} nodes", p.nodes));
    match &p.bootstrap {
        Bootstrap::SharedView => {
            sim.start_farm(p.nodes);
        }
        Bootstrap::Join { interval } => {
            let first = sim.add_node();
            sim.bootstrap(first);
            for _ in 1..p.nodes {
                let id = sim.add_node();
                let alive = sim.alive();
                let seeds = pick_seeds(&mut sim, &alive);
                sim.join_via(id, &seeds);
                sim.run_for(*interval);
            }
        }
    }
    let start = sim.elapsed();
    report.bootstrap_converged = sim.run_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        Sim::converged,
    );
    report.bootstrap_time = sim.elapsed() - start;
    say(
        &sim,
        &format!(
            "farm up (converged: {}); loading {} keys",
            report.bootstrap_converged, p.keys
        ),
    );

    // 2. The load.
    let per_slice = (p.write_rate as usize / 100).max(1);
    let mut alive = sim.alive();
    let mut next = 0;
    while next < p.keys {
        for _ in 0..per_slice.min(p.keys - next) {
            issue_put(&mut sim, &mut truth, &alive, next, TAG_LOAD);
            next += 1;
        }
        sim.run_for(SLICE);
        absorb(&mut sim, &mut truth, &mut report, None);
    }
    let drain = p.node.op_timeout * 2;
    sim.run_for(drain);
    absorb(&mut sim, &mut truth, &mut report, None);

    say(
        &sim,
        &format!(
            "loaded: {} acked, {} failed",
            report.puts_acked, report.puts_failed
        ),
    );

    // 3. Churn.
    let mut plan: Vec<u8> = std::iter::repeat_n(0u8, p.churn.kills)
        .chain(std::iter::repeat_n(1u8, p.churn.joins))
        .chain(std::iter::repeat_n(2u8, p.churn.leaves))
        .collect();
    for i in (1..plan.len()).rev() {
        let j = sim.rng().random_range(0..=i);
        plan.swap(i, j);
    }
    let mut next_new_key = p.keys;
    let mut churn_hops = [0u64; MAX_TRACKED_HOPS + 1];
    for action in plan {
        alive = sim.alive();
        if alive.len() <= 1 && action != 1 {
            continue;
        }
        match action {
            0 => {
                let victim = alive[sim.rng().random_range(0..alive.len())];
                sim.kill(victim);
                report.kills += 1;
            }
            1 => {
                let id = sim.add_node();
                let seeds = pick_seeds(&mut sim, &alive);
                sim.join_via(id, &seeds);
                report.joins += 1;
            }
            _ => {
                let who = alive[sim.rng().random_range(0..alive.len())];
                sim.leave(who);
                report.leaves += 1;
            }
        }
        alive = sim.alive();
        let slices = (p.churn.every.as_millis() / SLICE.as_millis()).max(1) as u32;
        let mut read_credit = 0u32;
        let mut write_credit = 0u32;
        for _ in 0..slices {
            read_credit += p.churn_reads_per_sec;
            write_credit += p.churn_writes_per_sec;
            while read_credit >= 100 && p.keys > 0 {
                read_credit -= 100;
                let i = sim.rng().random_range(0..p.keys);
                if truth.acked.get(i).copied().flatten().is_some() {
                    let at = alive[sim.rng().random_range(0..alive.len())];
                    sim.get(at, key_of(i), TAG_CHURN_READ | i as u64);
                    report.churn_reads += 1;
                }
            }
            while write_credit >= 100 {
                write_credit -= 100;
                issue_put(&mut sim, &mut truth, &alive, next_new_key, TAG_CHURN_WRITE);
                next_new_key += 1;
                report.churn_writes += 1;
            }
            sim.run_for(SLICE);
            absorb(&mut sim, &mut truth, &mut report, Some(&mut churn_hops));
        }
    }
    report.set_churn_hops(&churn_hops);

    say(
        &sim,
        &format!(
            "churn done: {} kills, {} joins, {} leaves; settling",
            report.kills, report.joins, report.leaves
        ),
    );

    // 4. Settle: views converge, every surviving acked key back on its full
    // replica set, every node's own gauge agrees. (Keys whose whole replica
    // set crashed faster than repair are lost, and reported as such.)
    let churn_end = sim.elapsed();
    let total_keys = next_new_key;
    let mut settled = false;
    let deadline = churn_end + p.settle_limit;
    while sim.elapsed() < deadline {
        if sim.converged() {
            let (_lost, below) = check_replicas(&sim, &truth, total_keys, p.node.replicas);
            if below == 0 && reported_below_k(&sim) == 0 {
                settled = true;
                break;
            }
        }
        sim.run_for(Duration::from_millis(500));
        absorb(&mut sim, &mut truth, &mut report, None);
    }
    report.converged = sim.converged();
    report.settled = settled;
    report.settle_time = sim.elapsed() - churn_end;
    // Let operations issued during churn run to their deadline.
    if let Some(rest) = (churn_end + drain).checked_sub(sim.elapsed()) {
        sim.run_for(rest);
    }
    absorb(&mut sim, &mut truth, &mut report, None);

    say(
        &sim,
        &format!(
            "settled: {} after {:.1}s; verifying",
            report.settled,
            report.settle_time.as_secs_f64()
        ),
    );

    // 5. Verify: read every acked key from a random node.
    alive = sim.alive();
    let mut hops = [0u64; MAX_TRACKED_HOPS + 1];
    let per_slice = (p.verify_rate as usize / 100).max(1);
    let acked: Vec<usize> = (0..total_keys)
        .filter(|i| truth.acked.get(*i).copied().flatten().is_some())
        .collect();
    for chunk in acked.chunks(per_slice) {
        for i in chunk {
            let at = alive[sim.rng().random_range(0..alive.len())];
            sim.get(at, key_of(*i), TAG_VERIFY | *i as u64);
            report.lookups += 1;
        }
        sim.run_for(SLICE);
        absorb(&mut sim, &mut truth, &mut report, Some(&mut hops));
    }
    sim.run_for(drain);
    absorb(&mut sim, &mut truth, &mut report, Some(&mut hops));
    report.keys_unreadable = report.lookups - report.lookups_ok;
    report.set_hops(&hops);

    say(&sim, "verified; checking replicas");

    // 6. Ground truth.
    let (lost, below) = check_replicas(&sim, &truth, total_keys, p.node.replicas);
    report.keys_lost = lost;
    report.replicas_below_k = below;
    let stats = sim.total_stats();
    let created = sim.nodes_created() as f64;
    report.nodes_final = sim.alive().len();
    report.nodes_created = sim.nodes_created();
    report.messages_per_node = stats.messages_sent as f64 / created;
    report.messages_per_node_per_s = report.messages_per_node / sim.elapsed().as_secs_f64();
    report.repair_messages_per_node = stats.repair_messages as f64 / created;
    report.repaired_records = stats.repaired_records;
    report.failures_detected = stats.failures_detected;
    report.refutations = stats.refutations;
    report.write_quorum_failures = stats.write_quorum_failures;
    report.reported_replicas_below_k = reported_below_k(&sim);
    report.refused_frames = sim.net_stats.refused;
    report.refused_writes =
        stats.refused_member_records + stats.refused_not_replica + stats.refused_entries;
    report.virtual_time = sim.elapsed();
    report
}

/// Three random alive nodes, as a deployment lists several seeds.
fn pick_seeds(sim: &mut Sim, alive: &[NodeId]) -> Vec<NodeId> {
    (0..3)
        .map(|_| alive[sim.rng().random_range(0..alive.len())])
        .collect()
}

/// Sum of the alive nodes' own replicas-below-k gauges.
fn reported_below_k(sim: &Sim) -> u64 {
    sim.alive()
        .iter()
        .filter_map(|id| sim.node(*id))
        .map(|n| n.stats().replicas_below_k)
        .sum()
}

fn issue_put(sim: &mut Sim, truth: &mut Truth, alive: &[NodeId], i: usize, tag: u64) {
    let at = alive[sim.rng().random_range(0..alive.len())];
    let value = Bytes::from(format!("flow@{}", &at.to_string()[..8]));
    let Some(entry) = sim.entry(at, ENTRY_ID, value, TTL_MS) else {
        return;
    };
    truth.issued.insert(i, (entry.hlc, entry.origin));
    sim.put(at, key_of(i), vec![entry], tag | i as u64);
}

/// Applies finished operations to the truth and the report.
fn absorb(
    sim: &mut Sim,
    truth: &mut Truth,
    report: &mut Report,
    mut hops: Option<&mut [u64; MAX_TRACKED_HOPS + 1]>,
) {
    for d in sim.take_done() {
        let kind = d.tag & TAG_KIND;
        let i = (d.tag & !TAG_KIND) as usize;
        match d.event {
            Event::PutDone { result, .. } => {
                let issued = truth.issued.remove(&i);
                match (result, kind) {
                    (Ok(_), _) => {
                        truth.ensure(i);
                        truth.acked[i] = issued;
                        if kind == TAG_LOAD {
                            report.puts_acked += 1;
                        } else {
                            report.churn_writes_acked += 1;
                        }
                    }
                    (Err(_), TAG_LOAD) => report.puts_failed += 1,
                    (Err(_), _) => report.churn_writes_failed += 1,
                }
            }
            Event::GetDone { result, .. } => {
                let want = truth.acked.get(i).copied().flatten();
                let ok = match (&result, want) {
                    (Ok(g), Some((hlc, origin))) => g.entries.iter().any(|e| {
                        e.id.as_ref() == ENTRY_ID
                            && e.hlc >= hlc
                            && (e.hlc > hlc || e.origin == origin)
                    }),
                    _ => false,
                };
                if let (Ok(g), Some(h)) = (&result, hops.as_deref_mut()) {
                    h[(g.hops as usize).min(MAX_TRACKED_HOPS)] += 1;
                }
                match kind {
                    TAG_CHURN_READ => {
                        report.churn_reads_ok += ok as u64;
                        report.churn_reads_wrong += (!ok && result.is_ok()) as u64;
                        report.churn_reads_failed += result.is_err() as u64;
                    }
                    TAG_VERIFY => report.lookups_ok += ok as u64,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Counts acked keys held by no running node (lost) and surviving keys
/// whose true replica set does not all hold the acked version (below k).
fn check_replicas(sim: &Sim, truth: &Truth, total: usize, k: usize) -> (u64, u64) {
    let mut ring = sim.alive();
    ring.sort();
    let running = sim.running();
    let holds = |id: NodeId, key: &Key, hlc: Hlc| {
        sim.node(id)
            .and_then(|n| n.store().get(key))
            .and_then(|r| r.get(ENTRY_ID))
            .is_some_and(|e| e.hlc >= hlc)
    };
    let (mut lost, mut below) = (0, 0);
    for i in 0..total {
        let Some((hlc, _)) = truth.acked.get(i).copied().flatten() else {
            continue;
        };
        let key = key_of(i);
        let set = true_replicas(&ring, &key, k);
        let held = set.iter().filter(|id| holds(**id, &key, hlc)).count();
        if held < set.len() {
            if held == 0 && !running.iter().any(|id| holds(*id, &key, hlc)) {
                lost += 1;
            } else {
                below += 1;
            }
        }
    }
    (lost, below)
}
