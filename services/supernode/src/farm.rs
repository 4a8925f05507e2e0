//! The farm: the tokio driver of the sans-IO overlay [`Node`], and the
//! location service that stores bindings on the ring.
//!
//! One **overlay task** owns the `Node`, the QUIC [`Links`] and the node's
//! append log. It feeds the node link events, frames and timers, sends what
//! it asks, appends what it persists, keeps links to the neighbours it
//! wants, carries SIP between supernodes, and answers the SIP core's
//! operations. The SIP core reaches it only through [`FarmHandle`] (a
//! bounded command channel and a shared snapshot of the live members).
//!
//! [`OverlayStore`] is the [`LocationService`] of a farm: a REGISTER reads
//! the AOR's record, applies the registrar's plan to it, and writes back
//! only the bindings that changed, stamped by this node's hybrid logical
//! clock strictly after the entries they replace (so CSeq order within a
//! Call-ID holds and replicas converge). It answers after a write quorum.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use ringmesh_overlay::node::Phase;
use ringmesh_overlay::{
    Config as NodeConfig, Entry, Event, Hlc, Key, Node, NodeId, OpError, OpId, RingRange, persist,
};
use ringmesh_sip::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::core::wall_ms;
use crate::link::{Frame, LinkEvent, Links};
use crate::location::{
    Binding, BindingKey, Completion, EntryFacts, Held, LocationError, LocationOp, LocationService,
};
use crate::metrics::Metrics;
use crate::registrar::{self, RegisterPlan};
use crate::transport::Inbound;

/// A Node-ID from its 16-byte form (as links and tokens carry it).
pub fn nid(b: [u8; 16]) -> NodeId {
    NodeId::from_u128(u128::from_be_bytes(b))
}

/// A live farm member, as the SIP core needs it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub name: String,
    pub sip_addr: String,
    pub overlay_addr: String,
}

/// The members the overlay currently sees alive.
#[derive(Debug, Default)]
pub struct Members {
    pub alive: HashMap<[u8; 16], MemberInfo>,
    /// This node owns its range.
    pub joined: bool,
}

pub type SharedMembers = Arc<RwLock<Members>>;

/// An entry to write: `value` None writes a tombstone.
#[derive(Debug, Clone)]
pub struct EntrySpec {
    pub id: Bytes,
    pub value: Option<Bytes>,
    pub expires_at_ms: u64,
    /// Stamp strictly after this HLC (the entry being replaced).
    pub floor: Option<u64>,
}

/// What the SIP core asks of the overlay task.
#[derive(Debug)]
pub enum Command {
    Get {
        key: Key,
        token: u64,
    },
    Put {
        key: Key,
        entries: Vec<EntrySpec>,
        token: u64,
    },
    Sip {
        peer: [u8; 16],
        bytes: Bytes,
    },
    Leave {
        done: oneshot::Sender<bool>,
    },
    Admin(AdminQuery),
}

/// What the admin API asks the overlay task.
#[derive(Debug)]
pub enum AdminQuery {
    /// The node's status and ring view.
    View(oneshot::Sender<View>),
    /// Read a key from the ring: its replicas, entries and hops.
    Lookup {
        key: Key,
        reply: oneshot::Sender<(Vec<NodeId>, Result<ringmesh_overlay::node::GetOk, OpError>)>,
    },
    /// Records held here after `after`, at most `limit`.
    Held {
        after: Option<Key>,
        limit: usize,
        reply: oneshot::Sender<Vec<(Key, Vec<Entry>)>>,
    },
    /// An overlay lookup routed to `key` (ping and trace).
    Probe {
        key: Key,
        reply: oneshot::Sender<(
            ringmesh_overlay::Route,
            Result<ringmesh_overlay::node::LookupOk, OpError>,
        )>,
    },
}

/// A snapshot of the overlay for the admin API.
#[derive(Debug, Clone)]
pub struct View {
    pub status: ringmesh_overlay::node::Status,
    pub members: Vec<ringmesh_overlay::MemberRecord>,
    pub replicas: usize,
    pub held: usize,
    pub edge_flows: usize,
}

/// The overlay task's answers.
#[derive(Debug)]
pub enum Reply {
    Got {
        token: u64,
        result: Result<Vec<Entry>, OpError>,
    },
    Put {
        token: u64,
        result: Result<(), OpError>,
    },
}

/// Counts of what this node holds, refreshed by the overlay task.
#[derive(Debug, Default)]
pub struct HeldCounts {
    pub aors: AtomicUsize,
    pub primary: AtomicUsize,
    pub replica: AtomicUsize,
}

/// The SIP core's handle on the farm.
#[derive(Debug, Clone)]
pub struct FarmHandle {
    pub me: [u8; 16],
    pub cmd: mpsc::Sender<Command>,
    pub members: SharedMembers,
    pub held: Arc<HeldCounts>,
}

impl FarmHandle {
    /// Sends SIP to another supernode over its link (queued until the link
    /// is up).
    pub fn send_sip(&self, peer: [u8; 16], bytes: Bytes) -> bool {
        self.cmd.try_send(Command::Sip { peer, bytes }).is_ok()
    }

    pub fn is_alive(&self, node: &[u8; 16]) -> bool {
        self.members.read().alive.contains_key(node)
    }

    /// The member whose advertised SIP address is `addr`.
    pub fn member_at(&self, addr: &str) -> Option<[u8; 16]> {
        self.members
            .read()
            .alive
            .iter()
            .find(|(_, m)| m.sip_addr == addr)
            .map(|(id, _)| *id)
    }

    /// Asks the overlay task to leave the ring gracefully (hand-off first).
    pub async fn leave(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Leave { done: tx }).await.is_err() {
            return false;
        }
        tokio::time::timeout(within, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
    }
}

// ---- the overlay task -------------------------------------------------------

/// Everything the overlay task needs to start.
pub struct FarmSetup {
    pub node: NodeConfig,
    pub links: Links,
    pub link_events: mpsc::Receiver<LinkEvent>,
    /// HOST:PORT, host names or IP addresses.
    pub seeds: Vec<String>,
    /// This node's own overlay addresses: seeds that resolve to one are
    /// skipped.
    pub own: Vec<SocketAddr>,
    pub bootstrap_after: Option<Duration>,
    pub data: PathBuf,
    pub sip_inbound: mpsc::Sender<Inbound>,
    pub metrics: Metrics,
    pub ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for FarmSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarmSetup")
            .field("seeds", &self.seeds)
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

/// Starts the overlay task; returns the SIP core's handle and the reply
/// channel for its [`OverlayStore`].
pub fn start(
    setup: FarmSetup,
) -> anyhow::Result<(
    FarmHandle,
    mpsc::Receiver<Reply>,
    tokio::task::JoinHandle<()>,
)> {
    let me = setup.node.id;
    let mut node = Node::new(setup.node).map_err(|e| anyhow::anyhow!("overlay config: {e}"))?;
    let (log, replay) = Log::open(&setup.data.join("overlay.log"))?;
    let wall = wall_ms();
    if !replay.records.is_empty() {
        tracing::info!(records = replay.records.len(), frames = replay.frames, torn = ?replay.torn, "restored bindings from disk");
    }
    node.restore(replay.records, wall);
    let (cmd_tx, cmd_rx) = mpsc::channel(16_384);
    let (reply_tx, reply_rx) = mpsc::channel(16_384);
    let members: SharedMembers = Arc::new(RwLock::new(Members::default()));
    let held = Arc::new(HeldCounts::default());
    let handle = FarmHandle {
        me: me.to_bytes(),
        cmd: cmd_tx,
        members: members.clone(),
        held: held.clone(),
    };
    let driver = Driver {
        node,
        links: setup.links,
        seeds: Seeds::start(setup.seeds, setup.own),
        bootstrap_after: setup.bootstrap_after,
        started: Instant::now(),
        replies: reply_tx,
        sip_inbound: setup.sip_inbound,
        ops: HashMap::new(),
        members,
        held,
        pending_sip: HashMap::new(),
        log,
        metrics: setup.metrics,
        ready: setup.ready,
        leave_waiters: Vec::new(),
        stats_seen: StatsSeen::default(),
        census: Census::default(),
    };
    let task = tokio::spawn(driver.run(cmd_rx, setup.link_events));
    Ok((handle, reply_rx, task))
}

#[derive(Debug)]
enum OpKind {
    Get(u64, Instant),
    Put(u64, Instant),
    AdminGet(
        Vec<NodeId>,
        oneshot::Sender<(Vec<NodeId>, Result<ringmesh_overlay::node::GetOk, OpError>)>,
    ),
    AdminProbe(
        ringmesh_overlay::Route,
        oneshot::Sender<(
            ringmesh_overlay::Route,
            Result<ringmesh_overlay::node::LookupOk, OpError>,
        )>,
    ),
}

/// The configured seeds and their current addresses. IP literals are used
/// as they are; host names (a StatefulSet's pods behind a headless Service)
/// are resolved by a task every 5 s, since a peer that starts at the same
/// time may not be in DNS yet and a rescheduled one comes back at a new
/// address. This node's own addresses are left out.
#[derive(Debug)]
struct Seeds {
    configured: Vec<String>,
    resolved: Arc<parking_lot::Mutex<Vec<SocketAddr>>>,
}

impl Seeds {
    fn start(configured: Vec<String>, own: Vec<SocketAddr>) -> Seeds {
        let literal: Vec<SocketAddr> = configured
            .iter()
            .filter_map(|s| s.parse().ok())
            .filter(|a| !own.contains(a))
            .collect();
        let names: Vec<String> = configured
            .iter()
            .filter(|s| s.parse::<SocketAddr>().is_err())
            .cloned()
            .collect();
        let resolved = Arc::new(parking_lot::Mutex::new(literal.clone()));
        if !names.is_empty() {
            let out = resolved.clone();
            tokio::spawn(async move {
                loop {
                    let mut addrs = literal.clone();
                    for name in &names {
                        let found = tokio::time::timeout(
                            Duration::from_secs(3),
                            tokio::net::lookup_host(name.as_str()),
                        )
                        .await;
                        match found {
                            Ok(Ok(found)) => addrs.extend(found),
                            Ok(Err(e)) => {
                                tracing::debug!(seed = %name, error = %e, "seed not resolved (yet)")
                            }
                            Err(_) => tracing::debug!(seed = %name, "seed resolution timed out"),
                        }
                    }
                    addrs.retain(|a| !own.contains(a));
                    addrs.sort_unstable();
                    addrs.dedup();
                    *out.lock() = addrs;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
        Seeds {
            configured,
            resolved,
        }
    }

    fn is_empty(&self) -> bool {
        self.configured.is_empty()
    }

    /// The seeds' addresses as last resolved.
    fn addrs(&self) -> Vec<SocketAddr> {
        self.resolved.lock().clone()
    }
}

/// Records the census reads per call.
const CENSUS_STEP: usize = 20_000;

/// A census pass in progress: where it stopped and what it counted.
#[derive(Debug, Default)]
struct Census {
    cursor: Option<Key>,
    counts: (usize, usize, usize),
}

#[derive(Debug, Default)]
struct StatsSeen {
    repaired: u64,
    rounds: u64,
    failures: u64,
    quorum_failures: u64,
    forwarded: u64,
}

struct Driver {
    node: Node,
    links: Links,
    seeds: Seeds,
    bootstrap_after: Option<Duration>,
    started: Instant,
    replies: mpsc::Sender<Reply>,
    sip_inbound: mpsc::Sender<Inbound>,
    ops: HashMap<OpId, OpKind>,
    members: SharedMembers,
    held: Arc<HeldCounts>,
    pending_sip: HashMap<[u8; 16], Vec<(Instant, Bytes)>>,
    log: Log,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    leave_waiters: Vec<oneshot::Sender<bool>>,
    stats_seen: StatsSeen,
    census: Census,
}

impl Driver {
    async fn run(
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
        let mut census = tokio::time::interval(Duration::from_secs(1));
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
                _ = census.tick() => self.census(),
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
                if let Some(queued) = self.pending_sip.remove(&peer) {
                    for (_, b) in queued {
                        self.links.send(&peer, Frame::Sip(b));
                    }
                }
                tracing::debug!(peer = %id, %addr, "link up");
            }
            LinkEvent::Down { peer } => self.node.handle_link_down(nid(peer), now),
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
                let origin = self.node.id();
                let entries = entries
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
                    .collect();
                let op = self.node.put(key, entries, now.into_std(), wall);
                self.ops.insert(op, OpKind::Put(token, now));
            }
            Command::Sip { peer, bytes } => {
                if !self.links.send(&peer, Frame::Sip(bytes.clone())) {
                    let q = self.pending_sip.entry(peer).or_default();
                    if q.len() < 1024 {
                        q.push((now, bytes));
                    }
                    if let Some(addr) = self.node.address_of(nid(peer)).and_then(|a| a.parse().ok())
                    {
                        self.links.connect(addr, Some(peer));
                    }
                }
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
                    .flat_map(|(_, r)| r.live(wall).filter_map(binding_of).collect::<Vec<_>>())
                    .filter(|b| b.edge == me)
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

    /// Sends, reports and persists what the node produced.
    fn flush(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            let to = t.to.to_bytes();
            let frame = Bytes::from(ringmesh_overlay::message::encode(
                &t.message,
                self.node.config().version,
            ));
            if !self.links.send(&to, Frame::Overlay(frame)) {
                // Best effort: the node retries; make sure a link comes.
                if let Some(addr) = self.node.address_of(t.to).and_then(|a| a.parse().ok()) {
                    self.links.connect(addr, Some(to));
                }
            }
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
                Event::PutDone { op, result } => {
                    if let Some(OpKind::Put(token, t0)) = self.ops.remove(&op) {
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
                }
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
            self.log.append(&p.frame);
        }
        self.log.write_buffered();
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
                    tracing::warn!("no seed accepted the join: founding a new ring");
                    self.node.bootstrap(now.into_std(), wall_ms());
                }
            }
            _ => self.connect_wanted(),
        }
        self.pending_sip.retain(|_, q| {
            q.retain(|(t, _)| now.duration_since(*t) < Duration::from_secs(5));
            !q.is_empty()
        });
        let status = self.node.status();
        let ready = status.phase == Phase::Alive && status.replicas_below_k == 0;
        self.ready.store(ready, Ordering::Relaxed);
        self.metrics
            .replicas_below_k
            .set(status.replicas_below_k as i64);
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
        *seen = StatsSeen {
            repaired: st.repaired_records,
            rounds: st.anti_entropy_rounds,
            failures: st.failures_detected,
            quorum_failures: st.write_quorum_failures,
            forwarded: st.forwarded,
        };
        for (_, rtt) in self.links.rtts() {
            self.metrics.link_rtt.observe(rtt.as_secs_f64());
        }
        if self.node.phase() == Phase::Alive && !self.members.read().joined {
            self.refresh_members();
        }
        self.log.sync_if_due();
        if self.log.needs_compaction(self.node.store().len()) {
            let snapshot = self.node.snapshot();
            if let Err(e) = self.log.compact(&snapshot) {
                tracing::error!(error = %e, "log compaction failed");
            }
        }
    }

    /// Counts held bindings by role, [`CENSUS_STEP`] records per call (once
    /// a second), publishing when a pass over the store ends: a pass over a
    /// million records at once (a ring lookup each) would stall the overlay
    /// task, and with it every REGISTER, for a good part of a second.
    fn census(&mut self) {
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
            let live = record.live(wall).count();
            if live == 0 {
                continue;
            }
            aors += 1;
            if self.node.route(key).replicas.first() == Some(&me) {
                primary += live;
            } else {
                replica += live;
            }
        }
        if seen == CENSUS_STEP {
            self.census = Census {
                cursor: last,
                counts: (aors, primary, replica),
            };
            return;
        }
        self.census = Census::default();
        self.held.aors.store(aors, Ordering::Relaxed);
        self.held.primary.store(primary, Ordering::Relaxed);
        self.held.replica.store(replica, Ordering::Relaxed);
        self.metrics.aors.set(aors as i64);
        self.metrics
            .bindings
            .with_label_values(&["primary"])
            .set(primary as i64);
        self.metrics
            .bindings
            .with_label_values(&["replica"])
            .set(replica as i64);
    }
}

// ---- the append log ---------------------------------------------------------

/// The node's records on disk: an append log of frames, compacted into a
/// snapshot when it grows. Appends reach the page cache at once (a killed
/// process loses nothing); `fsync` runs once a second (a power cut loses at
/// most that second).
struct Log {
    path: PathBuf,
    file: std::fs::File,
    buf: Vec<u8>,
    bytes: u64,
    last_sync: Instant,
    dirty: bool,
}

impl Log {
    fn open(path: &Path) -> anyhow::Result<(Log, persist::Replay)> {
        let data = std::fs::read(path).unwrap_or_default();
        let replay = persist::decode_log(&data);
        // Rewrite as a snapshot: drops the torn tail and the history.
        let snapshot = persist::encode_snapshot(replay.records.iter());
        let tmp = path.with_extension("log.tmp");
        std::fs::write(&tmp, &snapshot)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        let log = Log {
            path: path.to_path_buf(),
            file,
            buf: Vec::new(),
            bytes: snapshot.len() as u64,
            last_sync: Instant::now(),
            dirty: false,
        };
        Ok((log, replay))
    }

    fn append(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
    }

    fn write_buffered(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.bytes += self.buf.len() as u64;
                self.dirty = true;
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot append to the overlay log")
            }
        }
        self.buf.clear();
    }

    fn sync_if_due(&mut self) {
        if self.dirty && self.last_sync.elapsed() >= Duration::from_secs(1) {
            if let Ok(f) = self.file.try_clone() {
                tokio::task::spawn_blocking(move || f.sync_data());
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
    }

    fn needs_compaction(&self, records: usize) -> bool {
        self.bytes > (64 << 20).max(records as u64 * 2048)
    }

    fn compact(&mut self, snapshot: &[u8]) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        std::fs::write(&tmp, snapshot)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        self.bytes = snapshot.len() as u64;
        Ok(())
    }
}

// ---- the location service on the ring -----------------------------------

enum Stage {
    Lookup,
    RegisterRead { plan: RegisterPlan, now_ms: u64 },
    RegisterWrite { result: Vec<Binding> },
}

/// The farm's [`LocationService`]: bindings live on the ring.
pub struct OverlayStore {
    farm: FarmHandle,
    replies: mpsc::Receiver<Reply>,
    pending: HashMap<u64, (Key, Stage)>,
    done: VecDeque<Completion>,
    /// Tombstones outlive any binding they remove.
    tombstone_ms: u64,
}

impl std::fmt::Debug for OverlayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayStore")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl OverlayStore {
    pub fn new(
        farm: FarmHandle,
        replies: mpsc::Receiver<Reply>,
        max_expires_secs: u32,
    ) -> OverlayStore {
        OverlayStore {
            farm,
            replies,
            pending: HashMap::new(),
            done: VecDeque::new(),
            tombstone_ms: u64::from(max_expires_secs) * 1000 + 60_000,
        }
    }

    fn key_of(aor: &ringmesh_sip::aor::Aor) -> Key {
        Key::hash(&aor.key_material())
    }

    fn fail(&mut self, token: u64, why: String) {
        self.pending.remove(&token);
        self.done
            .push_back((token, Err(LocationError::Unavailable(why))));
    }

    fn on_reply(&mut self, reply: Reply) {
        let now_ms = wall_ms();
        match reply {
            Reply::Got { token, result } => {
                let Some((key, stage)) = self.pending.remove(&token) else {
                    return;
                };
                let entries = match result {
                    Ok(e) => e,
                    Err(e) => {
                        return self
                            .done
                            .push_back((token, Err(LocationError::Unavailable(e.to_string()))));
                    }
                };
                let current = decode_live(&entries, now_ms);
                match stage {
                    Stage::Lookup => {
                        let mut list: Vec<Binding> = current.into_iter().map(|(b, _)| b).collect();
                        registrar::sort_by_preference(&mut list);
                        self.done.push_back((token, Ok(list)));
                    }
                    Stage::RegisterRead { plan, now_ms } => {
                        self.register_write(token, key, plan, current, now_ms)
                    }
                    Stage::RegisterWrite { .. } => {}
                }
            }
            Reply::Put { token, result } => {
                let Some((_, stage)) = self.pending.remove(&token) else {
                    return;
                };
                if let Stage::RegisterWrite { result: list } = stage {
                    match result {
                        Ok(()) => self.done.push_back((token, Ok(list))),
                        Err(e) => self
                            .done
                            .push_back((token, Err(LocationError::Unavailable(e.to_string())))),
                    }
                }
            }
        }
    }

    /// Applies the plan to what the ring holds and writes the difference.
    fn register_write(
        &mut self,
        token: u64,
        key: Key,
        plan: RegisterPlan,
        current: Vec<(Binding, u64)>,
        now_ms: u64,
    ) {
        let before: HashMap<BindingKey, (Binding, u64)> = current
            .iter()
            .map(|(b, h)| (b.key(), (b.clone(), *h)))
            .collect();
        let mut after: Vec<Binding> = current.into_iter().map(|(b, _)| b).collect();
        if let Err(e) = registrar::apply(&mut after, &plan, now_ms) {
            return self.done.push_back((token, Err(e.into())));
        }
        let mut touched: Vec<BindingKey> = plan.contacts.iter().map(|c| c.binding.key()).collect();
        if plan.wildcard {
            touched.extend(before.keys().cloned());
        }
        touched.sort();
        touched.dedup();
        let mut specs = Vec::new();
        for k in touched {
            let floor = before.get(&k).map(|(_, h)| *h);
            match after.iter().find(|b| b.key() == k) {
                Some(b) => {
                    let id = k.to_entry_id();
                    let value = b.encode_entry(&id, self.farm.me);
                    specs.push(EntrySpec {
                        id,
                        value: Some(value),
                        expires_at_ms: b.expires_at_ms,
                        floor,
                    })
                }
                None if floor.is_some() => specs.push(EntrySpec {
                    id: k.to_entry_id(),
                    value: None,
                    expires_at_ms: now_ms + self.tombstone_ms,
                    floor,
                }),
                None => {}
            }
        }
        registrar::sort_by_preference(&mut after);
        if specs.is_empty() {
            return self.done.push_back((token, Ok(after)));
        }
        if self
            .farm
            .cmd
            .try_send(Command::Put {
                key,
                entries: specs,
                token,
            })
            .is_err()
        {
            return self.fail(token, "overlay queue full".into());
        }
        self.pending
            .insert(token, (key, Stage::RegisterWrite { result: after }));
    }
}

/// The binding an overlay entry holds (its value read with what the entry
/// carries: id, origin, expiry, HLC).
pub fn binding_of(e: &Entry) -> Option<Binding> {
    Binding::decode_entry(
        &e.value,
        EntryFacts {
            id: &e.id,
            origin: e.origin.to_bytes(),
            expires_at_ms: e.expires_at_ms,
            hlc: e.hlc.as_u64(),
        },
    )
}

/// The live bindings in a record's entries, each with its entry's HLC.
fn decode_live(entries: &[Entry], now_ms: u64) -> Vec<(Binding, u64)> {
    entries
        .iter()
        .filter(|e| e.is_live(now_ms))
        .filter_map(|e| Some((binding_of(e)?, e.hlc.as_u64())))
        .collect()
}

impl LocationService for OverlayStore {
    fn submit(&mut self, op: LocationOp, token: u64) {
        let (key, stage) = match op {
            LocationOp::Register { aor, plan, now_ms } => {
                (Self::key_of(&aor), Stage::RegisterRead { plan, now_ms })
            }
            LocationOp::Lookup { aor, .. } => (Self::key_of(&aor), Stage::Lookup),
        };
        if self.farm.cmd.try_send(Command::Get { key, token }).is_err() {
            return self.done.push_back((
                token,
                Err(LocationError::Unavailable("overlay queue full".into())),
            ));
        }
        self.pending.insert(token, (key, stage));
    }

    fn poll_complete(&mut self, cx: &mut Context<'_>) -> Poll<Completion> {
        loop {
            if let Some(c) = self.done.pop_front() {
                return Poll::Ready(c);
            }
            match self.replies.poll_recv(cx) {
                Poll::Ready(Some(r)) => self.on_reply(r),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn expire(&mut self, _now_ms: u64) {
        // The overlay collects expired entries itself.
    }

    fn counts(&self) -> Held {
        let h = &self.farm.held;
        Held {
            aors: h.aors.load(Ordering::Relaxed),
            primary: h.primary.load(Ordering::Relaxed),
            replica: h.replica.load(Ordering::Relaxed),
        }
    }
}
