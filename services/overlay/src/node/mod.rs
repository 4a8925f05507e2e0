//! The overlay node: one supernode's sans-IO state machine.
//!
//! [`Node`] is the type to start from. A driver (the supernode's tokio task,
//! or the simulator) owns one and:
//!
//! * feeds it inputs — [`handle_message`](Node::handle_message) /
//!   [`handle_frame`](Node::handle_frame) for what arrived on an overlay link,
//!   [`handle_link_up`](Node::handle_link_up) /
//!   [`handle_link_down`](Node::handle_link_down) for link events, and
//!   [`handle_timeout`](Node::handle_timeout) when the deadline from
//!   [`poll_timeout`](Node::poll_timeout) has passed;
//! * drains outputs after every input — [`poll_transmit`](Node::poll_transmit)
//!   (messages to send, by destination Node-ID; addresses come from
//!   [`address_of`](Node::address_of)), [`poll_event`](Node::poll_event)
//!   (operation results and membership news) and
//!   [`poll_persist`](Node::poll_persist) (log frames to append);
//! * keeps overlay links to [`wanted_links`](Node::wanted_links) and dials
//!   any other peer on demand when a transmit names it.
//!
//! Every input takes the monotonic `now` (timers) and, where data or
//! membership records are touched, `wall_ms` (milliseconds since the UNIX
//! epoch: entry expiry, HLC stamps). The node never reads a clock.
//!
//! The application API — [`put`](Node::put), [`get`](Node::get),
//! [`lookup`](Node::lookup), [`route`](Node::route), [`leave`](Node::leave) —
//! returns at once; results arrive as [`Event`]s.

mod load;
mod members;
mod ops;
mod repair;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::hlc::{Hlc, HlcClock};
use crate::id::{Key, NodeId, RingRange};
use crate::membership::{MemberRecord, MemberState, MemberView};
use crate::message::{self, DecodeError, Message};
use crate::persist;
use crate::ring::Ring;
use crate::routing::{NextHop, Route, RoutingMode};
use crate::stats::Stats;
use crate::store::{Entry, Record, Store};
use crate::timer::{Deadline, DeadlineQueue, Timer, TimerTable};
use crate::version::ProtocolVersion;

pub use ops::{GetOk, LookupOk, OpError, OpId, PutOk};

/// Tunables of a node. [`Config::new`] gives production defaults; the
/// simulator and tests shorten the intervals.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Where other supernodes reach this node's overlay endpoint (host:port).
    pub overlay_addr: String,
    /// This node's advertised SIP address (host:port).
    pub sip_addr: String,
    /// Human-readable name (pod name) for the admin view.
    pub name: String,
    /// Replication factor k: a key lives on min(k, N) nodes.
    pub replicas: usize,
    pub routing: RoutingMode,
    /// Successors watched and kept linked (at least `replicas - 1` are used).
    pub successor_list: usize,
    /// Predecessors watched and kept linked.
    pub predecessor_list: usize,
    /// Neighbours silent this long are pinged.
    pub ping_interval: Duration,
    /// Neighbours silent this long are declared dead.
    pub failure_timeout: Duration,
    /// After a link-down report, a neighbour has this long to answer a ping.
    pub probe_timeout: Duration,
    /// How long a peer that did not answer is routed around locally.
    pub unreachable_for: Duration,
    /// Random peers each membership change is pushed to.
    pub gossip_fanout: usize,
    pub view_sync_interval: Duration,
    pub anti_entropy_interval: Duration,
    /// Delay before an anti-entropy round after the neighbourhood changed
    /// (the re-replication trigger).
    pub repair_delay: Duration,
    pub sweep_interval: Duration,
    /// One attempt of an operation; then the next replica is tried.
    pub op_attempt_timeout: Duration,
    /// Overall deadline of an operation; a write then fails with a quorum
    /// error (the registrar's 503 + Retry-After).
    pub op_timeout: Duration,
    /// How long a coordinator waits for replica acknowledgements.
    pub replicate_timeout: Duration,
    /// Pause before retrying an attempt that failed fast.
    pub retry_backoff: Duration,
    pub join_retry: Duration,
    pub handoff_timeout: Duration,
    /// Longest a graceful leave waits for its hand-off to be acknowledged.
    pub leave_timeout: Duration,
    /// Hop limit of routed operations.
    pub max_hops: u32,
    /// Records per hand-off or repair message.
    pub handoff_batch: usize,
    /// Expired entries are kept this long before garbage collection.
    pub gc_grace_ms: u64,
    /// Dead and left members are forgotten this long after they went.
    pub member_gc_ms: u64,
    /// Remote HLC stamps further ahead than this do not move our clock;
    /// entries stamped more than twice this ahead are refused.
    pub max_clock_skew_ms: u64,
    /// Entries that would expire more than this after now are refused.
    pub max_entry_lifetime_ms: u64,
    /// How long a membership change may stay unknown to a peer: a write
    /// from a node that is a replica of its key in this node's view without
    /// the members whose records changed this recently is accepted.
    pub view_lag_ms: u64,
    /// Emit persistence frames ([`Node::poll_persist`]).
    pub persist: bool,
    /// Seed of the node's random choices (gossip targets, jitter); mixed with
    /// the node id so nodes differ.
    pub rng_seed: u64,
    pub version: ProtocolVersion,
}

impl Config {
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            overlay_addr: String::new(),
            sip_addr: String::new(),
            name: String::new(),
            replicas: 3,
            routing: RoutingMode::FullView,
            successor_list: 3,
            predecessor_list: 1,
            ping_interval: Duration::from_secs(1),
            failure_timeout: Duration::from_secs(5),
            probe_timeout: Duration::from_millis(1500),
            unreachable_for: Duration::from_secs(5),
            gossip_fanout: 4,
            view_sync_interval: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(30),
            repair_delay: Duration::from_millis(500),
            sweep_interval: Duration::from_secs(10),
            op_attempt_timeout: Duration::from_millis(1000),
            op_timeout: Duration::from_secs(4),
            replicate_timeout: Duration::from_millis(700),
            retry_backoff: Duration::from_millis(100),
            join_retry: Duration::from_secs(2),
            handoff_timeout: Duration::from_secs(3),
            leave_timeout: Duration::from_secs(15),
            max_hops: 16,
            handoff_batch: 256,
            gc_grace_ms: 60_000,
            member_gc_ms: 3_600_000,
            max_clock_skew_ms: 60_000,
            max_entry_lifetime_ms: 30 * 86_400_000,
            view_lag_ms: 60_000,
            persist: true,
            rng_seed: 0,
            version: ProtocolVersion::CURRENT,
        }
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &'static str| Err(ConfigError(what));
        if self.replicas == 0 {
            return bad("replicas must be at least 1");
        }
        if self.max_hops == 0 || self.handoff_batch == 0 {
            return bad("max_hops and handoff_batch must be at least 1");
        }
        if self.replicate_timeout >= self.op_attempt_timeout {
            return bad("replicate_timeout must be shorter than op_attempt_timeout");
        }
        if self.op_attempt_timeout > self.op_timeout {
            return bad("op_attempt_timeout must not exceed op_timeout");
        }
        if self.ping_interval.is_zero()
            || self.failure_timeout <= self.ping_interval
            || self.anti_entropy_interval.is_zero()
            || self.view_sync_interval.is_zero()
            || self.sweep_interval.is_zero()
        {
            return bad("intervals must be non-zero and failure_timeout > ping_interval");
        }
        for s in [&self.overlay_addr, &self.sip_addr, &self.name] {
            if s.len() > message::MAX_STRING {
                return bad("addresses and name are limited to 255 bytes");
            }
        }
        Ok(())
    }
}

/// An invalid [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid overlay configuration: {0}")]
pub struct ConfigError(&'static str);

/// Where the node is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Created, not started.
    Idle,
    /// Contacting a seed, then pulling its hand-off.
    Joining,
    /// A ring member.
    Alive,
    /// Handing its keys off before exit.
    Leaving,
    /// Done; the driver may exit.
    Left,
}

/// Something the application or driver should know.
#[derive(Clone, Debug)]
pub enum Event {
    PutDone {
        op: OpId,
        result: Result<PutOk, OpError>,
    },
    GetDone {
        op: OpId,
        result: Result<GetOk, OpError>,
    },
    LookupDone {
        op: OpId,
        result: Result<LookupOk, OpError>,
    },
    /// The node now owns its range.
    Joined,
    /// The graceful leave finished; `handed_off` is false if some hand-off
    /// was not acknowledged before the leave timeout.
    Left { handed_off: bool },
    /// The member view changed (coalesced: one event until polled). The
    /// driver re-reads [`Node::wanted_links`].
    MembershipChanged,
    /// This node declared a neighbour dead.
    PeerFailed { peer: NodeId },
}

/// A message to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub to: NodeId,
    pub message: Message,
}

/// A frame to append to the node's log (see [`persist`]).
#[derive(Clone, Debug)]
pub struct PersistOp {
    pub key: Key,
    /// The node no longer holds the key.
    pub removed: bool,
    pub frame: Bytes,
}

/// A peer the driver should keep a link to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLink {
    pub id: NodeId,
    pub overlay_addr: String,
    /// Why: successor, predecessor or finger.
    pub role: LinkRole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRole {
    Successor,
    Predecessor,
    Finger,
}

/// A summary for the admin status call.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub phase: Phase,
    pub incarnation: u64,
    pub members: usize,
    pub ring_members: usize,
    pub successors: Vec<NodeId>,
    pub predecessors: Vec<NodeId>,
    pub records: usize,
    pub replicas_below_k: u64,
    pub view_root: u64,
}

/// Why an input was refused. The driver closes the link and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("message claims to be from {claimed} on the link of {link}")]
    Spoofed { claimed: NodeId, link: NodeId },
    #[error("message from this node's own id")]
    FromSelf,
}

/// The two clocks of one input.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub mono: Instant,
    pub wall: u64,
}

#[derive(Clone, Debug)]
struct Monitor {
    last_heard: Instant,
    probe_deadline: Option<Instant>,
}

/// Ring neighbours as of a view generation.
#[derive(Clone, Debug, Default)]
struct Neighbours {
    generation: Option<u64>,
    successors: Vec<NodeId>,
    predecessors: Vec<NodeId>,
    primary: Option<RingRange>,
}

/// One supernode's overlay state machine. See the [module docs](crate::node)
/// for the driver contract.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    phase: Phase,
    /// Our own record as we assert it.
    me: MemberRecord,
    view: MemberView,
    store: Store,
    hlc: HlcClock,
    rng: SmallRng,
    timers: TimerTable,
    deadlines: DeadlineQueue,
    next_id: u64,
    ops: BTreeMap<u64, ops::PendingOp>,
    replications: BTreeMap<u64, ops::Replication>,
    pushes: BTreeMap<u64, repair::Push>,
    /// Keys in flight in ownership-sweep pushes (not pushed twice).
    sweeping: BTreeSet<Key>,
    join: Option<members::JoinState>,
    monitors: BTreeMap<NodeId, Monitor>,
    unreachable: BTreeMap<NodeId, Instant>,
    neighbours: Neighbours,
    fingers: Option<(u64, Vec<NodeId>)>,
    /// Anti-entropy rounds waiting for an in-sync answer: session -> peer, range.
    ae_sessions: BTreeMap<u64, (NodeId, RingRange, Instant)>,
    /// Successors confirmed in sync with our primary range.
    synced: BTreeMap<NodeId, RingRange>,
    /// The other members of our primary range's replica set at the last round.
    ae_partners: Vec<NodeId>,
    last_triggered_sync: Option<Instant>,
    told_gone: BTreeMap<NodeId, Instant>,
    /// This node's load as it tells the others (`load.rs`).
    load: u32,
    /// When each member last said it is overloaded.
    loads: BTreeMap<NodeId, Instant>,
    member_gc_cursor: usize,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    membership_event_pending: bool,
    stats: Stats,
}

impl Node {
    pub fn new(cfg: Config) -> Result<Node, ConfigError> {
        cfg.validate()?;
        let me = MemberRecord {
            id: cfg.id,
            incarnation: 0,
            state: MemberState::Joining,
            since_ms: 0,
            overlay_addr: cfg.overlay_addr.clone(),
            sip_addr: cfg.sip_addr.clone(),
            name: cfg.name.clone(),
            version: cfg.version,
        };
        let seed = cfg.rng_seed ^ (cfg.id.as_u128() as u64) ^ ((cfg.id.as_u128() >> 64) as u64);
        Ok(Node {
            store: Store::new(cfg.gc_grace_ms, cfg.persist),
            hlc: HlcClock::new(cfg.max_clock_skew_ms),
            rng: SmallRng::seed_from_u64(seed),
            phase: Phase::Idle,
            me,
            view: MemberView::new(),
            timers: TimerTable::default(),
            deadlines: DeadlineQueue::default(),
            next_id: 1,
            ops: BTreeMap::new(),
            replications: BTreeMap::new(),
            pushes: BTreeMap::new(),
            sweeping: BTreeSet::new(),
            join: None,
            monitors: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            neighbours: Neighbours::default(),
            fingers: None,
            ae_sessions: BTreeMap::new(),
            synced: BTreeMap::new(),
            ae_partners: Vec::new(),
            last_triggered_sync: None,
            told_gone: BTreeMap::new(),
            load: 0,
            loads: BTreeMap::new(),
            member_gc_cursor: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            membership_event_pending: false,
            stats: Stats::default(),
            cfg,
        })
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The member view (admin "ring view").
    pub fn view(&self) -> &MemberView {
        &self.view
    }

    pub fn member(&self, id: NodeId) -> Option<&MemberRecord> {
        self.view.get(id)
    }

    /// The overlay address to dial for a transmit's destination.
    pub fn address_of(&self, id: NodeId) -> Option<&str> {
        self.view.get(id).map(|m| m.overlay_addr.as_str())
    }

    /// The records this node holds (admin, snapshots).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A snapshot of every record held, in the log format (see [`persist`]).
    pub fn snapshot(&self) -> Vec<u8> {
        persist::encode_snapshot(self.store.iter())
    }

    /// A fresh HLC stamp for an entry this node accepts.
    pub fn stamp(&mut self, wall_ms: u64) -> Hlc {
        self.hlc.tick(wall_ms)
    }

    /// A fresh stamp strictly greater than `floor` (the stamp of the entry
    /// being replaced; see [`crate::hlc`] on CSeq ordering).
    pub fn stamp_after(&mut self, wall_ms: u64, floor: Hlc) -> Hlc {
        self.hlc.tick_after(wall_ms, floor)
    }

    /// Loads records from the data directory before starting. They count as
    /// persisted (no frames are emitted for them).
    pub fn restore(&mut self, records: impl IntoIterator<Item = (Key, Record)>, wall_ms: u64) {
        for (k, r) in records {
            for e in r.entries() {
                self.hlc.observe(e.hlc, wall_ms);
            }
            self.store.restore(k, &r, wall_ms);
        }
    }

    pub fn status(&self) -> Status {
        let ring = Ring::new(&self.view);
        Status {
            id: self.cfg.id,
            phase: self.phase,
            incarnation: self.me.incarnation,
            members: self.view.len(),
            ring_members: self.view.routable_len(),
            successors: ring.successors_of(self.cfg.id, self.successor_len()),
            predecessors: ring.predecessors_of(self.cfg.id, self.cfg.predecessor_list),
            records: self.store.len(),
            replicas_below_k: self.stats.replicas_below_k,
            view_root: self.view.root(),
        }
    }

    /// The first of a key's replicas (its primary) as this node sees it:
    /// [`Node::route`]'s first replica, without building the route.
    pub fn primary(&self, key: &Key) -> Option<NodeId> {
        Ring::new(&self.view).successor(key.position())
    }

    /// A key's replica set and next hop as this node sees it, without
    /// sending anything.
    pub fn route(&self, key: &Key) -> Route {
        let ring = Ring::new(&self.view);
        let pos = key.position();
        let fingers = match self.cfg.routing {
            RoutingMode::Fingers => ring.fingers(self.cfg.id),
            RoutingMode::FullView => Vec::new(),
        };
        Route {
            replicas: ring.replicas(pos, self.cfg.replicas),
            next_hop: crate::routing::next_hop(&ring, self.cfg.id, pos, self.cfg.routing, &fingers),
        }
    }

    /// Peers to keep links to: successors, predecessors and fingers.
    pub fn wanted_links(&self) -> Vec<PeerLink> {
        let ring = Ring::new(&self.view);
        let me = self.cfg.id;
        let mut out: Vec<PeerLink> = Vec::new();
        let mut add = |id: NodeId, role| {
            if id != me && !out.iter().any(|l| l.id == id) {
                out.push(PeerLink {
                    id,
                    overlay_addr: self.address_of(id).unwrap_or_default().to_string(),
                    role,
                });
            }
        };
        for s in ring.successors_of(me, self.successor_len()) {
            add(s, LinkRole::Successor);
        }
        for p in ring.predecessors_of(me, self.cfg.predecessor_list) {
            add(p, LinkRole::Predecessor);
        }
        for f in ring.fingers(me) {
            add(f, LinkRole::Finger);
        }
        out
    }

    // ------------------------------------------------------------ driver I/O

    /// A link to `peer` came up (or a handshake completed).
    pub fn handle_link_up(&mut self, peer: NodeId, now: Instant) {
        self.heard(peer, now);
    }

    /// The link to `peer` broke or could not be dialled. A ring neighbour
    /// gets a short probe before it is declared dead; any other peer is
    /// routed around for a while, and operations waiting on it move on.
    pub fn handle_link_down(&mut self, peer: NodeId, now: Instant) {
        if peer == self.cfg.id || matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        if let Some(m) = self.monitors.get_mut(&peer) {
            let deadline = now + self.cfg.probe_timeout;
            if m.probe_deadline.is_none_or(|d| deadline < d) {
                m.probe_deadline = Some(deadline);
            }
            self.timers.set_earlier(Timer::Stabilize, deadline);
            let nonce = self.next_id();
            let view_root = self.view.root();
            self.send(peer, Message::Ping { nonce, view_root });
        }
        self.unreachable
            .insert(peer, now + self.cfg.unreachable_for);
        self.retry_ops_waiting_on(peer, now);
    }

    /// Decodes a frame from `from` and handles it. Frames from a newer minor
    /// version with an unknown message kind are ignored.
    pub fn handle_frame(
        &mut self,
        from: NodeId,
        frame: Bytes,
        now: Instant,
        wall_ms: u64,
    ) -> Result<(), HandleError> {
        match message::decode(frame, self.cfg.version) {
            Ok(d) => match d.message {
                Some(m) => self.handle_message(from, m, now, wall_ms),
                None => {
                    self.stats.unknown_messages += 1;
                    Ok(())
                }
            },
            Err(e) => {
                self.stats.malformed_messages += 1;
                Err(e.into())
            }
        }
    }

    /// Handles one message from the peer at the other end of a link.
    pub fn handle_message(
        &mut self,
        from: NodeId,
        msg: Message,
        now: Instant,
        wall_ms: u64,
    ) -> Result<(), HandleError> {
        if from == self.cfg.id {
            self.stats.malformed_messages += 1;
            return Err(HandleError::FromSelf);
        }
        if let Message::JoinRequest { member } = &msg
            && member.id != from
        {
            self.stats.malformed_messages += 1;
            return Err(HandleError::Spoofed {
                claimed: member.id,
                link: from,
            });
        }
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return Ok(());
        }
        let c = Now {
            mono: now,
            wall: wall_ms,
        };
        self.stats.messages_received += 1;
        self.heard(from, now);
        self.tell_if_gone(from, c);
        match msg {
            Message::Ping { nonce, view_root } => self.on_ping(from, nonce, view_root, c),
            Message::Pong { view_root, .. } => self.on_pong(from, view_root, c),
            Message::Load { level } => self.on_load(from, level, now),
            Message::JoinRequest { member } => self.on_join_request(from, member, c),
            Message::JoinAccept { chunks } => self.on_join_accept(from, chunks, c),
            Message::Gossip { chunks } => self.on_gossip(from, chunks, c),
            Message::ViewDigest { digests } => self.on_view_digest(from, digests),
            Message::ViewChunks { chunks } => self.on_view_chunks(from, chunks, c),
            Message::Put {
                op,
                key,
                entries,
                hops,
                accept_replica,
            } => self.on_put(op, key, entries, hops, accept_replica, c),
            Message::PutResult {
                op,
                failure,
                acks,
                needed,
                hops,
            } => self.on_put_result(op, failure, acks, needed, hops, c),
            Message::Get {
                op,
                key,
                hops,
                accept_replica,
                route_only,
            } => self.on_get(op, key, hops, accept_replica, route_only, c),
            Message::GetResult {
                op,
                failure,
                hops,
                responder,
                replicas,
                entries,
            } => self.on_get_result(op, failure, hops, responder, replicas, entries, c),
            Message::Replicate { tag, key, entries } => {
                self.on_replicate(from, tag, key, entries, c)
            }
            Message::ReplicateAck { tag, stored } => self.on_replicate_ack(from, tag, stored, c),
            Message::HandoffRequest { tag, range, after } => {
                self.on_handoff_request(from, tag, range, after)
            }
            Message::HandoffBatch {
                tag,
                records,
                next_after,
                push,
            } => self.on_handoff_batch(from, tag, records, next_after, push, c),
            Message::HandoffAck { tag } => self.on_handoff_ack(from, tag, c),
            Message::AeSync {
                session,
                depth,
                ranges,
            } => self.on_ae_sync(from, session, depth, ranges, c),
            Message::AeKeys {
                session,
                range,
                keys,
            } => self.on_ae_keys(from, session, range, keys, c),
            Message::AeRecords {
                session,
                records,
                want,
            } => self.on_ae_records(from, session, records, want, c),
            Message::AeInSync { session, range } => self.on_ae_in_sync(from, session, range),
        }
        self.stats.refused_member_records = self.view.refused();
        Ok(())
    }

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, wall_ms: u64) {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        let c = Now {
            mono: now,
            wall: wall_ms,
        };
        for t in self.timers.take_due(now) {
            match t {
                Timer::Stabilize => {
                    self.stabilize(c);
                    self.renew_load(now);
                    let next = now + self.jitter(self.cfg.ping_interval);
                    self.timers.set_earlier(Timer::Stabilize, next);
                }
                Timer::ViewSync => {
                    self.view_sync_tick(c);
                    let next = now + self.jitter(self.cfg.view_sync_interval);
                    self.timers.set(Timer::ViewSync, next);
                }
                Timer::AntiEntropy => {
                    self.anti_entropy_tick(c);
                    let next = now + self.jitter(self.cfg.anti_entropy_interval);
                    self.timers.set_earlier(Timer::AntiEntropy, next);
                }
                Timer::Sweep => {
                    self.sweep(c);
                    let next = now + self.jitter(self.cfg.sweep_interval);
                    self.timers.set(Timer::Sweep, next);
                }
                Timer::Join => self.join_tick(c),
                Timer::Leave => self.finish_leave(false, c),
            }
            if self.phase == Phase::Left {
                return;
            }
        }
        while let Some(d) = self.deadlines.pop_due(now) {
            match d {
                Deadline::Op(id) => self.op_deadline(id, c),
                Deadline::Replication(tag) => self.replication_deadline(tag, c),
                Deadline::Push(tag) => self.push_deadline(tag, c),
            }
            if self.phase == Phase::Left {
                return;
            }
        }
    }

    /// When the driver should next call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return None;
        }
        match (self.timers.next(), self.deadlines.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if matches!(e, Some(Event::MembershipChanged)) {
            self.membership_event_pending = false;
        }
        e
    }

    /// The next log frame to append: the current content of a record that
    /// changed, or its removal. Changes to one key coalesce until drained.
    pub fn poll_persist(&mut self) -> Option<PersistOp> {
        let key = self.store.pop_dirty()?;
        let record = self.store.get(&key);
        Some(PersistOp {
            key,
            removed: record.is_none(),
            frame: persist::encode_frame(&key, record),
        })
    }

    // ------------------------------------------------------------ internals

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, to: NodeId, message: Message) {
        debug_assert_ne!(to, self.cfg.id, "no message to self");
        self.stats.messages_sent += 1;
        if message.is_repair() {
            self.stats.repair_messages += 1;
        }
        self.transmits.push_back(Transmit { to, message });
    }

    fn emit(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// `d` scaled by a random factor in [0.8, 1.2): spreads periodic work so
    /// nodes started together do not stay in lock-step.
    fn jitter(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.rng.random_range(0.8..1.2))
    }

    fn successor_len(&self) -> usize {
        self.cfg
            .successor_list
            .max(self.cfg.replicas.saturating_sub(1))
            .max(1)
    }

    fn is_unreachable(&self, id: NodeId, now: Instant) -> bool {
        self.unreachable.get(&id).is_some_and(|until| *until > now)
    }

    fn mark_unreachable(&mut self, id: NodeId, c: Now) {
        self.unreachable
            .insert(id, c.mono + self.cfg.unreachable_for);
    }

    /// Any message from a peer proves it is up.
    fn heard(&mut self, peer: NodeId, now: Instant) {
        if let Some(m) = self.monitors.get_mut(&peer) {
            m.last_heard = now;
            m.probe_deadline = None;
        }
        self.unreachable.remove(&peer);
    }

    /// Ring neighbours for the current view, recomputed when it changed.
    /// Returns true when successors, predecessors or our range changed.
    fn refresh_neighbours(&mut self) -> bool {
        if self.neighbours.generation == Some(self.view.generation()) {
            return false;
        }
        let ring = Ring::new(&self.view);
        let me = self.cfg.id;
        let successors = ring.successors_of(me, self.successor_len());
        let predecessors = ring.predecessors_of(me, self.cfg.predecessor_list.max(1));
        let primary = Some(ring.primary_range(me));
        let changed = successors != self.neighbours.successors
            || predecessors != self.neighbours.predecessors
            || primary != self.neighbours.primary;
        self.neighbours = Neighbours {
            generation: Some(self.view.generation()),
            successors,
            predecessors,
            primary,
        };
        changed
    }

    fn fingers(&mut self) -> &[NodeId] {
        let generation = self.view.generation();
        if self.fingers.as_ref().is_none_or(|(g, _)| *g != generation) {
            let f = Ring::new(&self.view).fingers(self.cfg.id);
            self.fingers = Some((generation, f));
        }
        &self.fingers.as_ref().expect("just set").1
    }

    fn next_hop(&mut self, key: &Key) -> NextHop {
        let fingers = match self.cfg.routing {
            RoutingMode::Fingers => self.fingers().to_vec(),
            RoutingMode::FullView => Vec::new(),
        };
        let ring = Ring::new(&self.view);
        crate::routing::next_hop(
            &ring,
            self.cfg.id,
            key.position(),
            self.cfg.routing,
            &fingers,
        )
    }

    /// Merges entries into the store, refusing (and counting) any stamped
    /// too far in the future or expiring too late: either would win or
    /// stay forever. True when the store changed.
    fn merge_entries(&mut self, key: Key, entries: &[Entry], c: Now) -> bool {
        let latest = c
            .wall
            .saturating_add(self.cfg.max_clock_skew_ms.saturating_mul(2));
        let last_expiry = c.wall.saturating_add(self.cfg.max_entry_lifetime_ms);
        let sane = |e: &&Entry| e.hlc.physical_ms() <= latest && e.expires_at_ms <= last_expiry;
        let refused = entries.iter().filter(|e| !sane(e)).count() as u64;
        self.stats.refused_entries += refused;
        for e in entries.iter().filter(sane) {
            self.hlc.observe(e.hlc, c.wall);
        }
        self.store.merge(key, entries.iter().filter(sane), c.wall)
    }

    /// Whether `from` may replicate `key` to this node: it is among the
    /// key's replicas in this node's view, or in that view as `from` may
    /// see it: without the members whose records changed in the last
    /// `view_lag_ms`, and with `from` itself on the ring. Hand-off and
    /// anti-entropy during churn pass; a member writing keys it holds no
    /// replica of does not.
    fn may_replicate(&self, from: NodeId, key: &Key, c: Now) -> bool {
        let start = key.position();
        let distance = from.position().wrapping_sub(start);
        let settled = |m: &MemberRecord| m.since_ms.saturating_add(self.cfg.view_lag_ms) <= c.wall;
        let mut ahead = 0;
        for m in self.view.iter_from(start) {
            if m.id == from || m.id.position().wrapping_sub(start) > distance {
                return true;
            }
            if m.state.is_routable() && settled(m) {
                ahead += 1;
                if ahead >= self.cfg.replicas {
                    return false;
                }
            }
        }
        true
    }
}
