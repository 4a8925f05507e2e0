//! A deterministic simulator of many overlay nodes.
//!
//! Everything a real farm has that the core does not — clocks, a network,
//! disks, crashes — is simulated here around unchanged [`Node`]s: a virtual
//! clock (a fixed base `Instant` plus simulated elapsed time, and a wall clock
//! with a small per-node skew), an event queue, an in-memory network with
//! per-link latency, jitter, loss and partitions ([`NetParams`]), and an
//! in-memory "data directory" per node holding the frames it persisted. A
//! seeded RNG makes every run reproducible: same parameters, same report.
//!
//! [`Sim`] is the engine, driven step by step by scenario tests; [`run`]
//! plays the standard scenario (farm start, load, churn, settle, verify) and
//! returns a [`Report`]. `examples/sim.rs` wraps `run` in a command line.
//!
//! Memory: messages travel as Rust values, so the member-view chunks gossip
//! carries are shared by reference count between all nodes that hold the
//! same version (see [`crate::membership`]) and stored values are `Bytes`
//! shared between replicas; 10 000 nodes hold one view's worth of member
//! records, not 10 000.

mod network;
mod report;
mod scenario;

pub use network::NetParams;
pub use report::Report;
pub use scenario::{Bootstrap, Churn, Params, run};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::id::{Key, NodeId};
use crate::membership::{MemberRecord, MemberState, MemberView};
use crate::message::{self, Message};
use crate::node::{Config, Event, Node, OpId, Phase};
use crate::persist;
use crate::stats::Stats;
use crate::store::Entry;
use crate::version::ProtocolVersion;

/// Wall clock at the start of every simulation (2023-11-14T22:13:20Z).
pub const WALL_EPOCH_MS: u64 = 1_700_000_000_000;

/// A finished operation, with the caller's tag.
#[derive(Clone, Debug)]
pub struct Done {
    pub tag: u64,
    pub node: NodeId,
    pub event: Event,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: NodeId,
        to: usize,
        epoch: u32,
        msg: Message,
    },
    Timer {
        slot: usize,
        epoch: u32,
    },
    LinkDown {
        slot: usize,
        epoch: u32,
        peer: NodeId,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Debug)]
struct SimNode {
    node: Option<Node>,
    /// Bumped when the node crashes or restarts: messages and timers of the
    /// previous life are dropped.
    epoch: u32,
    timer_at: Option<Instant>,
    group: u32,
    /// The node's data directory: the frames it persisted.
    disk: Vec<u8>,
    skew_ms: i64,
    version: ProtocolVersion,
    cfg: Config,
}

/// Counters of the simulated network.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub delivered: u64,
    pub lost: u64,
    pub partitioned: u64,
    pub to_dead: u64,
    /// Frames a node refused (must stay 0: nodes only send valid messages).
    pub refused: u64,
}

/// The simulation engine.
#[derive(Debug)]
pub struct Sim {
    base: Instant,
    now: Instant,
    rng: SmallRng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    nodes: Vec<SimNode>,
    index: HashMap<NodeId, usize>,
    net: NetParams,
    template: Config,
    persist: bool,
    max_skew_ms: i64,
    pending: HashMap<(usize, OpId), u64>,
    done: Vec<Done>,
    link_down_sent: HashMap<(usize, NodeId), Instant>,
    /// Messages of these kinds to these nodes are dropped (scenario tests).
    blocked: Vec<(NodeId, &'static str)>,
    retired: Stats,
    pub net_stats: NetStats,
}

impl Sim {
    /// A simulation with no nodes yet. `template` gives every node's timing
    /// and replication settings (its id and addresses are replaced);
    /// `persist` keeps every node's log so crashed nodes can restart from it.
    pub fn new(seed: u64, net: NetParams, template: Config, persist: bool) -> Self {
        let base = Instant::now();
        Sim {
            base,
            now: base,
            rng: SmallRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            nodes: Vec::new(),
            index: HashMap::new(),
            net,
            template,
            persist,
            max_skew_ms: 50,
            pending: HashMap::new(),
            done: Vec::new(),
            link_down_sent: HashMap::new(),
            blocked: Vec::new(),
            retired: Stats::default(),
            net_stats: NetStats::default(),
        }
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    fn wall_of(&self, slot: usize) -> u64 {
        let ms =
            WALL_EPOCH_MS as i64 + self.elapsed().as_millis() as i64 + self.nodes[slot].skew_ms;
        ms as u64
    }

    /// The wall clock of node `id` (with its skew).
    pub fn wall_ms(&self, id: NodeId) -> u64 {
        self.index
            .get(&id)
            .map(|s| self.wall_of(*s))
            .unwrap_or(WALL_EPOCH_MS + self.elapsed().as_millis() as u64)
    }

    /// A fresh random node id.
    pub fn fresh_id(&mut self) -> NodeId {
        loop {
            let id = NodeId::from_u128(self.rng.random());
            if !self.index.contains_key(&id) {
                return id;
            }
        }
    }

    fn config_for(&self, id: NodeId) -> Config {
        let mut cfg = self.template.clone();
        cfg.id = id;
        cfg.overlay_addr = format!("sim-{}:7000", &id.to_string()[..8]);
        cfg.sip_addr = format!("sim-{}:5060", &id.to_string()[..8]);
        cfg.name = format!("sn-{}", &id.to_string()[..6]);
        cfg.persist = self.persist;
        cfg
    }

    /// Adds an idle node with the template config (and `version`, for
    /// version-skew scenarios). Returns its id.
    pub fn add_node_with(&mut self, id: NodeId, version: ProtocolVersion) -> NodeId {
        let mut cfg = self.config_for(id);
        cfg.version = version;
        let skew = if self.max_skew_ms > 0 {
            self.rng.random_range(-self.max_skew_ms..=self.max_skew_ms)
        } else {
            0
        };
        let node = Node::new(cfg.clone()).expect("template config is valid");
        let slot = self.nodes.len();
        self.nodes.push(SimNode {
            node: Some(node),
            epoch: 0,
            timer_at: None,
            group: 0,
            disk: Vec::new(),
            skew_ms: skew,
            version,
            cfg,
        });
        self.index.insert(id, slot);
        id
    }

    pub fn add_node(&mut self) -> NodeId {
        let id = self.fresh_id();
        self.add_node_with(id, ProtocolVersion::CURRENT)
    }

    /// Starts `n` nodes at once sharing one member view (as if fed by etcd):
    /// the fast way to a large farm. Returns their ids.
    pub fn start_farm(&mut self, n: usize) -> Vec<NodeId> {
        let ids: Vec<NodeId> = (0..n).map(|_| self.add_node()).collect();
        let view = MemberView::from_records(ids.iter().filter_map(|id| self.record_of(*id)));
        for id in &ids {
            let slot = self.index[id];
            let (now, wall) = (self.now, self.wall_of(slot));
            if let Some(node) = self.nodes[slot].node.as_mut() {
                node.start_with_view(view.clone(), now, wall);
            }
            self.drain(slot);
        }
        ids
    }

    /// Starts `id` with a given (possibly stale) member view.
    pub fn start_with_view(&mut self, id: NodeId, view: MemberView) {
        self.with_node(id, |n, now, wall| n.start_with_view(view, now, wall));
    }

    /// The member record `id` would announce (for building views).
    pub fn record_of(&self, id: NodeId) -> Option<MemberRecord> {
        let cfg = &self.nodes[*self.index.get(&id)?].cfg;
        Some(MemberRecord {
            id,
            incarnation: 0,
            state: MemberState::Alive,
            since_ms: WALL_EPOCH_MS,
            overlay_addr: cfg.overlay_addr.clone(),
            sip_addr: cfg.sip_addr.clone(),
            name: cfg.name.clone(),
            version: cfg.version,
        })
    }

    /// Makes `id` the first member of a new ring.
    pub fn bootstrap(&mut self, id: NodeId) {
        self.with_node(id, |n, now, wall| n.bootstrap(now, wall));
    }

    /// Makes `id` join through `seed`.
    pub fn join(&mut self, id: NodeId, seed: NodeId) {
        self.join_via(id, &[seed]);
    }

    /// Makes `id` join through any of `seeds` (tried in turn).
    pub fn join_via(&mut self, id: NodeId, seeds: &[NodeId]) {
        self.with_node(id, |n, now, wall| n.join(seeds, now, wall));
    }

    /// Starts a graceful leave of `id`; the node disappears once it reports
    /// [`Event::Left`].
    pub fn leave(&mut self, id: NodeId) {
        self.with_node(id, |n, now, wall| n.leave(now, wall));
    }

    /// Crashes `id` (kill -9): its memory is gone, its disk stays.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(slot) = self.index.get(&id).copied() {
            self.retire(slot);
        }
    }

    fn retire(&mut self, slot: usize) {
        let sn = &mut self.nodes[slot];
        if let Some(node) = sn.node.take() {
            self.retired.accumulate(node.stats());
        }
        sn.epoch += 1;
        sn.timer_at = None;
        self.pending.retain(|(s, _), _| *s != slot);
    }

    /// Restarts a crashed node from its disk with the same identity and has
    /// it join through `seed` (or start a ring when `None`).
    pub fn restart(&mut self, id: NodeId, seed: Option<NodeId>) {
        self.restart_via(id, seed.as_slice());
    }

    /// Restarts a crashed node from its disk with the same identity and has
    /// it join through any of `seeds`, tried in turn as the driver does (they
    /// may be restarting too); with no seeds it starts a ring.
    pub fn restart_via(&mut self, id: NodeId, seeds: &[NodeId]) {
        let Some(slot) = self.index.get(&id).copied() else {
            return;
        };
        if self.nodes[slot].node.is_some() {
            return;
        }
        let replay = persist::decode_log(&self.nodes[slot].disk);
        let mut node = Node::new(self.nodes[slot].cfg.clone()).expect("valid config");
        let wall = self.wall_of(slot);
        node.restore(replay.records, wall);
        self.nodes[slot].disk.truncate(replay.valid_len);
        self.nodes[slot].node = Some(node);
        if seeds.is_empty() {
            self.bootstrap(id);
        } else {
            self.join_via(id, seeds);
        }
    }

    /// Appends garbage to a node's log, as a crash in mid-write would.
    pub fn tear_disk(&mut self, id: NodeId, garbage: &[u8]) {
        if let Some(slot) = self.index.get(&id) {
            self.nodes[*slot].disk.extend_from_slice(garbage);
        }
    }

    /// Splits the network: `side` on one side, everyone else on the other.
    pub fn partition(&mut self, side: &[NodeId]) {
        for sn in &mut self.nodes {
            sn.group = 0;
        }
        for id in side {
            if let Some(s) = self.index.get(id) {
                self.nodes[*s].group = 1;
            }
        }
    }

    /// Drops every message of the given kinds ([`Message::kind`]) sent to
    /// `id`, e.g. membership gossip to make its view go stale.
    pub fn block_kinds_to(&mut self, id: NodeId, kinds: &[&'static str]) {
        self.blocked.extend(kinds.iter().map(|k| (id, *k)));
    }

    pub fn unblock_all(&mut self) {
        self.blocked.clear();
    }

    /// Sends `msg` to `to` as member `from`, past `from`'s own node: what a
    /// hostile supernode with a valid certificate can put on its links.
    pub fn inject(&mut self, from: NodeId, to: NodeId, msg: Message) {
        if let Some(slot) = self.index.get(&from).copied() {
            self.transmit(slot, from, to, msg);
        }
    }

    pub fn heal(&mut self) {
        for sn in &mut self.nodes {
            sn.group = 0;
        }
    }

    /// Starts a put at node `at`; its result comes back from
    /// [`take_done`](Self::take_done) with `tag`.
    pub fn put(&mut self, at: NodeId, key: Key, entries: Vec<Entry>, tag: u64) -> Option<OpId> {
        self.start_op(at, tag, |n, now, wall| n.put(key, entries, now, wall))
    }

    pub fn get(&mut self, at: NodeId, key: Key, tag: u64) -> Option<OpId> {
        self.start_op(at, tag, |n, now, wall| n.get(key, now, wall))
    }

    pub fn lookup(&mut self, at: NodeId, key: Key, tag: u64) -> Option<OpId> {
        self.start_op(at, tag, |n, now, wall| n.lookup(key, now, wall))
    }

    /// Sets node `id`'s load (see [`Node::set_load`]).
    pub fn set_load(&mut self, id: NodeId, level: u32) {
        self.with_node(id, |n, _, _| n.set_load(level));
    }

    /// A live entry stamped by node `at` (value, expiry in `ttl_ms`).
    pub fn entry(&mut self, at: NodeId, id: &[u8], value: Bytes, ttl_ms: u64) -> Option<Entry> {
        let slot = *self.index.get(&at)?;
        let wall = self.wall_of(slot);
        let node = self.nodes[slot].node.as_mut()?;
        let hlc = node.stamp(wall);
        Some(Entry::new(
            Bytes::copy_from_slice(id),
            value,
            hlc,
            at,
            wall + ttl_ms,
        ))
    }

    fn start_op(
        &mut self,
        at: NodeId,
        tag: u64,
        f: impl FnOnce(&mut Node, Instant, u64) -> OpId,
    ) -> Option<OpId> {
        let slot = *self.index.get(&at)?;
        let wall = self.wall_of(slot);
        let now = self.now;
        let op = f(self.nodes[slot].node.as_mut()?, now, wall);
        self.pending.insert((slot, op), tag);
        self.drain(slot);
        Some(op)
    }

    fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut Node, Instant, u64)) {
        let Some(slot) = self.index.get(&id).copied() else {
            return;
        };
        let wall = self.wall_of(slot);
        let now = self.now;
        if let Some(n) = self.nodes[slot].node.as_mut() {
            f(n, now, wall);
            self.drain(slot);
        }
    }

    /// Finished operations since the last call.
    pub fn take_done(&mut self) -> Vec<Done> {
        std::mem::take(&mut self.done)
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.index
            .get(&id)
            .and_then(|s| self.nodes[*s].node.as_ref())
    }

    /// Ids of running nodes (any phase but left).
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter_map(|sn| sn.node.as_ref())
            .filter(|n| n.phase() != Phase::Left)
            .map(|n| n.id())
            .collect()
    }

    /// Ids of running nodes that own keys.
    pub fn alive(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter_map(|sn| sn.node.as_ref())
            .filter(|n| n.phase() == Phase::Alive)
            .map(|n| n.id())
            .collect()
    }

    /// Whether every running node is alive and all views are identical and
    /// name exactly the running nodes as alive.
    pub fn converged(&self) -> bool {
        let nodes: Vec<&Node> = self
            .nodes
            .iter()
            .filter_map(|sn| sn.node.as_ref())
            .collect();
        let Some(first) = nodes.first() else {
            return true;
        };
        let root = first.view().root();
        nodes
            .iter()
            .all(|n| n.phase() == Phase::Alive && n.view().root() == root)
            && first.view().routable_len() == nodes.len()
    }

    /// Counters summed over every node that ever ran.
    pub fn total_stats(&self) -> Stats {
        let mut s = self.retired.clone();
        for n in self.nodes.iter().filter_map(|sn| sn.node.as_ref()) {
            s.accumulate(n.stats());
        }
        s
    }

    /// Nodes ever created.
    pub fn nodes_created(&self) -> usize {
        self.nodes.len()
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// Runs the simulation for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(Reverse(top)) = self.queue.peek() {
            if top.at > until {
                break;
            }
            let Reverse(s) = self.queue.pop().expect("peeked");
            self.now = s.at;
            self.dispatch(s.ev);
        }
        self.now = until;
    }

    /// Runs in `step`s until `done(self)` or `limit` of virtual time passed;
    /// returns whether `done` became true.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.run_for(step);
        }
        done(self)
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                epoch,
                msg,
            } => {
                if self.nodes[to].epoch != epoch || self.nodes[to].node.is_none() {
                    self.net_stats.to_dead += 1;
                    return;
                }
                self.net_stats.delivered += 1;
                let wall = self.wall_of(to);
                let now = self.now;
                let sender_version = self
                    .index
                    .get(&from)
                    .map(|s| self.nodes[*s].version)
                    .unwrap_or(ProtocolVersion::CURRENT);
                let wire = self.net.wire;
                let node = self.nodes[to].node.as_mut().expect("checked");
                let r = if wire {
                    let frame = Bytes::from(message::encode(&msg, sender_version));
                    node.handle_frame(from, frame, now, wall)
                } else {
                    node.handle_message(from, msg, now, wall)
                };
                if r.is_err() {
                    self.net_stats.refused += 1;
                }
                self.drain(to);
            }
            Ev::Timer { slot, epoch } => {
                let sn = &mut self.nodes[slot];
                if sn.epoch != epoch || sn.timer_at != Some(self.now) {
                    return;
                }
                sn.timer_at = None;
                let wall = self.wall_of(slot);
                let now = self.now;
                if let Some(n) = self.nodes[slot].node.as_mut() {
                    n.handle_timeout(now, wall);
                }
                self.drain(slot);
            }
            Ev::LinkDown { slot, epoch, peer } => {
                if self.nodes[slot].epoch != epoch {
                    return;
                }
                let now = self.now;
                if let Some(n) = self.nodes[slot].node.as_mut() {
                    n.handle_link_down(peer, now);
                }
                self.drain(slot);
            }
        }
    }

    /// Collects a node's outputs after an input.
    fn drain(&mut self, slot: usize) {
        let Some(mut node) = self.nodes[slot].node.take() else {
            return;
        };
        let from = node.id();
        while let Some(t) = node.poll_transmit() {
            self.transmit(slot, from, t.to, t.message);
        }
        let mut left = false;
        while let Some(e) = node.poll_event() {
            let op = match &e {
                Event::PutDone { op, .. }
                | Event::GetDone { op, .. }
                | Event::LookupDone { op, .. } => Some(*op),
                Event::Left { .. } => {
                    left = true;
                    None
                }
                _ => None,
            };
            if let Some(op) = op
                && let Some(tag) = self.pending.remove(&(slot, op))
            {
                self.done.push(Done {
                    tag,
                    node: from,
                    event: e,
                });
            }
        }
        while let Some(p) = node.poll_persist() {
            self.nodes[slot].disk.extend_from_slice(&p.frame);
        }
        let next = node.poll_timeout();
        self.nodes[slot].node = Some(node);
        if left {
            // Its last messages are on their way; the process exits.
            self.retire(slot);
            return;
        }
        if let Some(at) = next {
            let at = at.max(self.now);
            let sn = &mut self.nodes[slot];
            if sn.timer_at.is_none_or(|t| at < t) {
                sn.timer_at = Some(at);
                let epoch = sn.epoch;
                self.schedule(at, Ev::Timer { slot, epoch });
            }
        }
    }

    fn transmit(&mut self, from_slot: usize, from: NodeId, to: NodeId, msg: Message) {
        let Some(to_slot) = self.index.get(&to).copied() else {
            return;
        };
        let reachable = self.nodes[to_slot].node.is_some()
            && self.nodes[to_slot].group == self.nodes[from_slot].group;
        if !reachable {
            if self.nodes[to_slot].node.is_some() {
                self.net_stats.partitioned += 1;
            } else {
                self.net_stats.to_dead += 1;
            }
            // The driver's dial fails after a while: report the link down,
            // once per peer per dial timeout.
            let key = (from_slot, to);
            let now = self.now;
            let dial = self.net.dial_timeout;
            if self
                .link_down_sent
                .get(&key)
                .is_none_or(|t| now.saturating_duration_since(*t) >= dial)
            {
                self.link_down_sent.insert(key, now);
                let epoch = self.nodes[from_slot].epoch;
                self.schedule(
                    now + dial,
                    Ev::LinkDown {
                        slot: from_slot,
                        epoch,
                        peer: to,
                    },
                );
            }
            return;
        }
        if self.net.lost(&mut self.rng) || self.blocked.contains(&(to, msg.kind())) {
            self.net_stats.lost += 1;
            return;
        }
        let delay = self.net.delay(from, to, &mut self.rng);
        let epoch = self.nodes[to_slot].epoch;
        let at = self.now + delay;
        self.schedule(
            at,
            Ev::Deliver {
                from,
                to: to_slot,
                epoch,
                msg,
            },
        );
    }

    /// The nodes that should hold `key` by the true ring (alive nodes only).
    pub fn true_replicas(&self, key: &Key, ring: &[NodeId]) -> Vec<NodeId> {
        true_replicas(ring, key, self.template.replicas)
    }
}

/// The replica set of `key` on a sorted list of ring members.
pub fn true_replicas(sorted_ring: &[NodeId], key: &Key, k: usize) -> Vec<NodeId> {
    if sorted_ring.is_empty() {
        return Vec::new();
    }
    let start = sorted_ring.partition_point(|id| id.position() < key.position());
    (0..k.min(sorted_ring.len()))
        .map(|i| sorted_ring[(start + i) % sorted_ring.len()])
        .collect()
}
