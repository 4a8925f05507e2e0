//! The overlay task: it owns the sans-IO [`Node`], the QUIC links and the
//! journal, feeds the node link events, frames and timers, sends what it
//! asks, persists what it changes, carries SIP between supernodes, and
//! answers the SIP core's and the admin API's requests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringmesh_overlay::node::Phase;
use ringmesh_overlay::{Entry, Event, Hlc, Key, Node, NodeId, OpError, OpId, RingRange};
use ringmesh_sip::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::seeds::Seeds;
use super::store::{cleared_mark, is_live_binding};
use super::{
    AdminQuery, Command, EntrySpec, HeldCounts, MemberInfo, Reply, SharedMembers, View,
    live_bindings, nid,
};
use crate::clock::wall_ms;
use crate::journal::Journal;
use crate::link::{Frame, LinkEvent, Links};
use crate::metrics::Metrics;
use crate::overload::Overload;
use crate::transport::Inbound;

#[derive(Debug)]
pub(super) enum OpKind {
    Get(u64, Instant),
    Put(u64, Instant),
    AdminGet(
        Vec<NodeId>,
        oneshot::Sender<(Vec<NodeId>, Result<ringmesh_overlay::node::GetOk, OpError>)>,
    ),
    AdminPut(oneshot::Sender<Result<(), OpError>>),
    AdminProbe(
        ringmesh_overlay::Route,
        oneshot::Sender<(
            ringmesh_overlay::Route,
            Result<ringmesh_overlay::node::LookupOk, OpError>,
        )>,
    ),
}

/// Records the census reads per call, and how often it is called: 10,000
/// records a second while a pass runs (a million in 100 s), in steps of
/// about 40 us even with a million records out of cache (about 0.4 us
/// each), so that the SIP core sharing the worker never waits long on one.
const CENSUS_STEP: usize = 100;
const CENSUS_EVERY: Duration = Duration::from_millis(10);
/// A pass starts at most this often: the counts feed gauges, and a store
/// of ten thousand records need not be recounted twice a second.
const CENSUS_PASS_EVERY: Duration = Duration::from_secs(10);
/// How often this node's load is told (when it changed) and the others'
/// marks are read: a call toward an overloaded supernode is refused within
/// about this much of its saying so.
const LOAD_EVERY: Duration = Duration::from_millis(250);

/// A census pass in progress: where it stopped and what it counted.
#[derive(Debug, Default)]
pub(super) struct Census {
    cursor: Option<Key>,
    counts: (usize, usize, usize),
    /// When the pass began.
    started: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct StatsSeen {
    repaired: u64,
    rounds: u64,
    failures: u64,
    quorum_failures: u64,
    forwarded: u64,
    refused: [u64; 3],
}

pub(super) struct Driver {
    pub(super) node: Node,
    pub(super) links: Links,
    pub(super) seeds: Seeds,
    pub(super) bootstrap_after: Option<Duration>,
    pub(super) started: Instant,
    pub(super) replies: mpsc::Sender<Reply>,
    pub(super) sip_inbound: mpsc::Sender<Inbound>,
    pub(super) ops: HashMap<OpId, OpKind>,
    pub(super) members: SharedMembers,
    pub(super) held: Arc<HeldCounts>,
    pub(super) pending: Pending,
    pub(super) journal: Journal,
    pub(super) metrics: Metrics,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) leave_waiters: Vec<oneshot::Sender<bool>>,
    pub(super) stats_seen: StatsSeen,
    pub(super) census: Census,
    /// This node's overload signals, told to the other members.
    pub(super) overload: Arc<Overload>,
}

impl Driver {
    pub(super) async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut links: mpsc::Receiver<LinkEvent>,
    ) {
        let now = Instant::now();
        if self.seeds.is_empty() {
            self.node.bootstrap(now.into_std(), wall_ms());
        } else {
            for s in self.seeds.addrs() {
                self.links.connect(s, None);
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut census = tokio::time::interval(CENSUS_EVERY);
        // A busy turn delays the next step; it never brings two at once.
        census.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut load = tokio::time::interval(LOAD_EVERY);
        loop {
            let deadline = self.node.poll_timeout().map(Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = links.recv() => match ev {
                    Some(ev) => self.on_link(ev),
                    None => return,
                },
                cmd = cmds.recv() => match cmd {
                    Some(c) => {
                        self.on_command(c);
                        while let Ok(c) = cmds.try_recv() {
                            self.on_command(c);
                        }
                    }
                    None => return,
                },
                () = sleep => self.node.handle_timeout(Instant::now().into_std(), wall_ms()),
                _ = tick.tick() => self.maintain(),
                _ = census.tick() => {
                    if let Some(next) = self.census() {
                        census.reset_at(next);
                    }
                }
                _ = load.tick() => self.exchange_load(),
            }
            self.flush();
            if self.node.phase() == Phase::Left && self.leave_waiters.is_empty() {
                // Stay up until the process exits: the SIP core may still
                // be answering.
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let now = Instant::now().into_std();
        match ev {
            LinkEvent::Up { peer, addr } => {
                let id = nid(peer);
                self.node.handle_link_up(id, now);
                match self.node.phase() {
                    Phase::Idle => self.node.join(&[id], now, wall_ms()),
                    Phase::Joining => self.node.add_seeds(&[id]),
                    _ => {}
                }
                for frame in self.pending.take(&peer) {
                    self.links.send(&peer, frame);
                }
                tracing::debug!(peer = %id, %addr, "link up");
            }
            LinkEvent::Down { peer } => {
                self.node.handle_link_down(nid(peer), now);
                // The SIP core ends what it sent there and heard nothing of
                // (with its queue full, their own timers end them).
                let _ = self.sip_inbound.try_send(Inbound::PeerGone { peer });
            }
            LinkEvent::Frame {
                peer,
                frame: Frame::Overlay(b),
            } => {
                if let Err(e) = self.node.handle_frame(nid(peer), b, now, wall_ms()) {
                    tracing::warn!(peer = %hex::encode(peer), error = %e, "malformed overlay message; closing the link");
                    self.links.malformed(&peer);
                }
            }
            LinkEvent::Frame {
                peer,
                frame: Frame::Sip(b),
            } => match Message::parse(b) {
                Ok(msg) => {
                    if self
                        .sip_inbound
                        .try_send(Inbound::PeerSip { msg, peer })
                        .is_err()
                    {
                        tracing::warn!("SIP core queue full; dropped a message from a peer");
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = %hex::encode(peer), error = %e, "malformed SIP from a peer");
                    self.metrics.link_malformed.inc();
                }
            },
        }
    }

    fn on_command(&mut self, c: Command) {
        let now = Instant::now();
        let wall = wall_ms();
        match c {
            Command::Get { key, token } => {
                let op = self.node.get(key, now.into_std(), wall);
                self.ops.insert(op, OpKind::Get(token, now));
            }
            Command::Put {
                key,
                entries,
                token,
            } => {
                let entries = self.stamped(entries, wall);
                let op = self.node.put(key, entries, now.into_std(), wall);
                self.ops.insert(op, OpKind::Put(token, now));
            }
            Command::Sip { peer, bytes } => {
                self.send_or_queue(peer, Frame::Sip(bytes), now);
            }
            Command::Leave { done } => {
                self.ready.store(false, Ordering::Relaxed);
                self.node.leave(now.into_std(), wall);
                self.leave_waiters.push(done);
            }
            Command::Admin(q) => self.on_admin(q, now, wall),
        }
    }

    fn on_admin(&mut self, q: AdminQuery, now: Instant, wall: u64) {
        match q {
            AdminQuery::View(reply) => {
                let me = self.node.id().to_bytes();
                let edge_flows = self
                    .node
                    .store()
                    .iter()
                    .flat_map(|(_, r)| live_bindings(r.entries(), wall))
                    .filter(|(b, _)| b.edge == me)
                    .count();
                let _ = reply.send(View {
                    status: self.node.status(),
                    members: self.node.view().iter().cloned().collect(),
                    replicas: self.node.config().replicas,
                    held: self.node.store().len(),
                    edge_flows,
                });
            }
            AdminQuery::Lookup { key, reply } => {
                let replicas = self.node.route(&key).replicas;
                let op = self.node.get(key, now.into_std(), wall);
                self.ops.insert(op, OpKind::AdminGet(replicas, reply));
            }
            AdminQuery::Put {
                key,
                entries,
                reply,
            } => {
                let entries = self.stamped(entries, wall);
                let op = self.node.put(key, entries, now.into_std(), wall);
                self.ops.insert(op, OpKind::AdminPut(reply));
            }
            AdminQuery::Held {
                after,
                limit,
                reply,
            } => {
                let page = self
                    .node
                    .store()
                    .iter()
                    .filter(|(k, _)| after.is_none_or(|a| **k > a))
                    .take(limit)
                    .map(|(k, r)| (*k, r.live(wall).cloned().collect()))
                    .collect();
                let _ = reply.send(page);
            }
            AdminQuery::Probe { key, reply } => {
                let route = self.node.route(&key);
                let op = self.node.lookup(key, now.into_std(), wall);
                self.ops.insert(op, OpKind::AdminProbe(route, reply));
            }
        }
    }

    /// Entries to write, each stamped by this node's clock (strictly
    /// after the entry it replaces, when that is given).
    fn stamped(&mut self, specs: Vec<EntrySpec>, wall: u64) -> Vec<Entry> {
        let origin = self.node.id();
        specs
            .into_iter()
            .map(|s| {
                let hlc = match s.floor {
                    Some(f) => self.node.stamp_after(wall, Hlc::from_u64(f)),
                    None => self.node.stamp(wall),
                };
                match s.value {
                    Some(v) => Entry::new(s.id, v, hlc, origin, s.expires_at_ms),
                    None => Entry::tombstone(s.id, hlc, origin, s.expires_at_ms),
                }
            })
            .collect()
    }

    /// Sends, reports and persists what the node produced.
    fn flush(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            let to = t.to.to_bytes();
            let frame = Bytes::from(ringmesh_overlay::message::encode(
                &t.message,
                self.node.config().version,
            ));
            self.send_or_queue(to, Frame::Overlay(frame), Instant::now());
        }
        let mut membership_changed = false;
        while let Some(ev) = self.node.poll_event() {
            match ev {
                Event::GetDone { op, result } => match self.ops.remove(&op) {
                    Some(OpKind::AdminGet(replicas, reply)) => {
                        let _ = reply.send((replicas, result));
                    }
                    Some(OpKind::Get(token, t0)) => {
                        self.metrics
                            .overlay_op_seconds
                            .with_label_values(&["get"])
                            .observe(t0.elapsed().as_secs_f64());
                        if let Ok(ok) = &result {
                            self.metrics.lookup_hops.observe(f64::from(ok.hops));
                        }
                        let _ = self.replies.try_send(Reply::Got {
                            token,
                            result: result.map(|ok| ok.entries),
                        });
                    }
                    _ => {}
                },
                Event::PutDone { op, result } => match self.ops.remove(&op) {
                    Some(OpKind::AdminPut(reply)) => {
                        let _ = reply.send(result.map(|_| ()));
                    }
                    Some(OpKind::Put(token, t0)) => {
                        self.metrics
                            .overlay_op_seconds
                            .with_label_values(&["put"])
                            .observe(t0.elapsed().as_secs_f64());
                        let label = if result.is_ok() { "ok" } else { "failed" };
                        self.metrics
                            .overlay_writes
                            .with_label_values(&[label])
                            .inc();
                        if let Ok(ok) = &result {
                            self.metrics.lookup_hops.observe(f64::from(ok.hops));
                        }
                        let _ = self.replies.try_send(Reply::Put {
                            token,
                            result: result.map(|_| ()),
                        });
                    }
                    _ => {}
                },
                Event::LookupDone { op, result } => {
                    if let Some(OpKind::AdminProbe(route, reply)) = self.ops.remove(&op) {
                        let _ = reply.send((route, result));
                    }
                }
                Event::Joined => {
                    tracing::info!(id = %self.node.id(), "joined the ring");
                    membership_changed = true;
                }
                Event::Left { handed_off } => {
                    tracing::info!(handed_off, "left the ring");
                    for w in self.leave_waiters.drain(..) {
                        let _ = w.send(handed_off);
                    }
                }
                Event::MembershipChanged => membership_changed = true,
                Event::PeerFailed { peer } => tracing::warn!(%peer, "declared a neighbour dead"),
            }
        }
        if membership_changed {
            self.refresh_members();
            self.connect_wanted();
        }
        while let Some(p) = self.node.poll_persist() {
            self.journal.append(&p.frame);
        }
        self.journal.flush();
    }

    /// Tells the others whether this node is overloaded, and publishes
    /// which of them said they are, for the SIP core.
    fn exchange_load(&mut self) {
        let now = Instant::now().into_std();
        self.node
            .set_load(u32::from(self.overload.is_overloaded(now)));
        let overloaded: HashSet<[u8; 16]> =
            self.node.overloaded(now).map(|id| id.to_bytes()).collect();
        self.metrics.peers_overloaded.set(overloaded.len() as i64);
        self.members.write().overloaded = overloaded;
    }

    fn refresh_members(&mut self) {
        let view = self.node.view();
        let mut alive = HashMap::new();
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        for m in view.iter() {
            *by_state.entry(m.state.as_str()).or_default() += 1;
            if m.state.is_routable() {
                alive.insert(
                    m.id.to_bytes(),
                    MemberInfo {
                        name: m.name.clone(),
                        sip_addr: m.sip_addr.clone(),
                        overlay_addr: m.overlay_addr.clone(),
                    },
                );
            }
        }
        for s in ["joining", "alive", "leaving", "left", "dead"] {
            self.metrics
                .overlay_members
                .with_label_values(&[s])
                .set(by_state.get(s).copied().unwrap_or(0));
        }
        let joined = self.node.phase() == Phase::Alive;
        self.metrics.ring_size.set(alive.len() as i64);
        let mut m = self.members.write();
        m.alive = alive;
        m.joined = joined;
    }

    /// Sends `frame` to `peer`, or keeps it until the link being dialled
    /// comes up: the first messages to a node just linked (a joining node's
    /// hand-off request to its successor) are not lost to the race.
    fn send_or_queue(&mut self, peer: [u8; 16], frame: Frame, now: Instant) {
        if self.links.send(&peer, frame.clone()) {
            return;
        }
        self.pending.push(peer, frame, now);
        if let Some(addr) = self.node.address_of(nid(peer)).and_then(|a| a.parse().ok()) {
            self.links.connect(addr, Some(peer));
        }
    }

    fn connect_wanted(&self) {
        let have: Vec<[u8; 16]> = self.links.peers();
        for w in self.node.wanted_links() {
            let id = w.id.to_bytes();
            if !have.contains(&id)
                && let Ok(addr) = w.overlay_addr.parse()
            {
                self.links.connect(addr, Some(id));
            }
        }
    }

    /// Once a second: links, joining, readiness, stats, durability.
    fn maintain(&mut self) {
        let now = Instant::now();
        match self.node.phase() {
            Phase::Idle | Phase::Joining => {
                for s in self.seeds.addrs() {
                    self.links.connect(s, None);
                }
                if self
                    .bootstrap_after
                    .is_some_and(|d| now.duration_since(self.started) >= d)
                {
                    // A join a seed accepted runs to its end instead.
                    self.node.bootstrap(now.into_std(), wall_ms());
                    if self.node.phase() == Phase::Alive {
                        tracing::warn!("no seed accepted the join: founded a new ring");
                    }
                }
            }
            _ => self.connect_wanted(),
        }
        self.pending.expire(now);
        let status = self.node.status();
        let ready = status.phase == Phase::Alive && status.replicas_below_k == 0;
        self.ready.store(ready, Ordering::Relaxed);
        self.metrics
            .replicas_below_k
            .set(status.replicas_below_k as i64);
        self.metrics.records.set(status.records as i64);
        let st = self.node.stats();
        let seen = &mut self.stats_seen;
        self.metrics
            .repairs
            .inc_by(st.repaired_records.saturating_sub(seen.repaired));
        self.metrics
            .anti_entropy_rounds
            .inc_by(st.anti_entropy_rounds.saturating_sub(seen.rounds));
        self.metrics
            .failures_detected
            .inc_by(st.failures_detected.saturating_sub(seen.failures));
        self.metrics.quorum_failures.inc_by(
            st.write_quorum_failures
                .saturating_sub(seen.quorum_failures),
        );
        self.metrics
            .overlay_forwarded
            .inc_by(st.forwarded.saturating_sub(seen.forwarded));
        let refused = [
            st.refused_member_records,
            st.refused_not_replica,
            st.refused_entries,
        ];
        for ((reason, now), before) in ["member_record", "not_replica", "entry"]
            .into_iter()
            .zip(refused)
            .zip(seen.refused)
        {
            self.metrics
                .overlay_refused
                .with_label_values(&[reason])
                .inc_by(now.saturating_sub(before));
        }
        *seen = StatsSeen {
            repaired: st.repaired_records,
            rounds: st.anti_entropy_rounds,
            failures: st.failures_detected,
            quorum_failures: st.write_quorum_failures,
            forwarded: st.forwarded,
            refused,
        };
        for (_, rtt) in self.links.rtts() {
            self.metrics.link_rtt.observe(rtt.as_secs_f64());
        }
        if self.node.phase() == Phase::Alive && !self.members.read().joined {
            self.refresh_members();
        }
    }

    /// Counts held bindings by role, [`CENSUS_STEP`] records per call
    /// (every [`CENSUS_EVERY`]), publishing when a pass over the store
    /// ends, and then returns when the next pass may begin
    /// ([`CENSUS_PASS_EVERY`] after this one began): a pass over a million
    /// records at once would stall the overlay task, and with it every
    /// REGISTER, for a good part of a second.
    fn census(&mut self) -> Option<Instant> {
        if self.census.cursor.is_none() {
            self.census = Census {
                started: Some(Instant::now()),
                ..Census::default()
            };
        }
        let me = self.node.id();
        let wall = wall_ms();
        let mut seen = 0;
        let mut last = None;
        let (mut aors, mut primary, mut replica) = self.census.counts;
        for (key, record) in self
            .node
            .store()
            .range_after(RingRange::FULL, self.census.cursor)
            .take(CENSUS_STEP)
        {
            seen += 1;
            last = Some(*key);
            let mark = cleared_mark(record.entries(), wall);
            let live = record
                .entries()
                .iter()
                .filter(|e| is_live_binding(e, mark, wall))
                .count();
            if live == 0 {
                continue;
            }
            aors += 1;
            if self.node.primary(key) == Some(me) {
                primary += live;
            } else {
                replica += live;
            }
        }
        self.census.counts = (aors, primary, replica);
        if seen == CENSUS_STEP {
            self.census.cursor = last;
            return None;
        }
        self.census.cursor = None;
        self.held.aors.store(aors, Ordering::Relaxed);
        self.held.primary.store(primary, Ordering::Relaxed);
        self.held.replica.store(replica, Ordering::Relaxed);
        // The SIP core's sweep publishes them as gauges.
        self.census.started.map(|t| t + CENSUS_PASS_EVERY)
    }
}

/// Frames for peers whose link is being dialled, each kept for
/// [`PENDING_FOR`], at most [`PENDING_FRAMES`] frames and
/// [`PENDING_BYTES`] bytes a peer (past that, dropped: the overlay retries
/// what matters, a SIP transaction retransmits).
#[derive(Debug, Default)]
pub(super) struct Pending(HashMap<[u8; 16], PeerQueue>);

#[derive(Debug, Default)]
struct PeerQueue {
    frames: Vec<(Instant, Frame)>,
    bytes: usize,
}

const PENDING_FOR: Duration = Duration::from_secs(5);
const PENDING_FRAMES: usize = 1024;
const PENDING_BYTES: usize = 4 << 20;

fn frame_len(f: &Frame) -> usize {
    match f {
        Frame::Overlay(b) | Frame::Sip(b) => b.len(),
    }
}

impl Pending {
    fn push(&mut self, peer: [u8; 16], frame: Frame, now: Instant) {
        let q = self.0.entry(peer).or_default();
        let len = frame_len(&frame);
        if q.frames.len() < PENDING_FRAMES && q.bytes + len <= PENDING_BYTES {
            q.bytes += len;
            q.frames.push((now, frame));
        }
    }

    /// The frames kept for `peer`, oldest first (its link is up).
    fn take(&mut self, peer: &[u8; 16]) -> impl Iterator<Item = Frame> + use<> {
        self.0
            .remove(peer)
            .into_iter()
            .flat_map(|q| q.frames)
            .map(|(_, f)| f)
    }

    fn expire(&mut self, now: Instant) {
        self.0.retain(|_, q| {
            q.frames.retain(|(t, f)| {
                let keep = now.duration_since(*t) < PENDING_FOR;
                if !keep {
                    q.bytes -= frame_len(f);
                }
                keep
            });
            !q.frames.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_frames_wait_for_their_link_in_order_within_bounds() {
        let t0 = Instant::now();
        let (a, b) = ([1; 16], [2; 16]);
        let mut p = Pending::default();
        for i in 0..3u8 {
            p.push(a, Frame::Sip(Bytes::from(vec![i; 10])), t0);
        }
        p.push(b, Frame::Overlay(Bytes::from_static(b"x")), t0);
        let sent: Vec<usize> = p.take(&a).map(|f| frame_len(&f)).collect();
        assert_eq!(sent, [10, 10, 10], "oldest first, all of them");
        assert_eq!(p.take(&a).count(), 0, "taken once");

        // Bounded in frames and in bytes.
        for _ in 0..PENDING_FRAMES + 10 {
            p.push(a, Frame::Sip(Bytes::from_static(b"y")), t0);
        }
        assert_eq!(p.0[&a].frames.len(), PENDING_FRAMES);
        p.push(b, Frame::Overlay(Bytes::from(vec![0; PENDING_BYTES])), t0);
        assert_eq!(p.0[&b].frames.len(), 1, "over the byte bound: dropped");

        // Kept for PENDING_FOR only.
        p.push(b, Frame::Sip(Bytes::from_static(b"late")), t0 + PENDING_FOR);
        p.expire(t0 + PENDING_FOR);
        assert!(!p.0.contains_key(&a));
        assert_eq!(p.0[&b].frames.len(), 1);
        assert_eq!(p.0[&b].bytes, 4);
    }
}
