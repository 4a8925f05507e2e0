//! The farm: the tokio driver of the sans-IO overlay [`Node`], and the
//! location service that stores bindings on the ring.
//!
//! One **overlay task** owns the `Node`, the QUIC [`Links`] and the node's
//! [`Journal`]. It feeds the node link events, frames and timers, sends what
//! it asks, hands what it persists to the journal thread (file I/O never
//! runs on a tokio worker), keeps links to the neighbours it
//! wants, carries SIP between supernodes, and answers the SIP core's
//! operations. The SIP core reaches it only through [`FarmHandle`] (a
//! bounded command channel and a shared snapshot of the live members).
//!
//! [`OverlayStore`] (in `store`) is the location service of a farm: a REGISTER reads
//! the AOR's record, applies the registrar's plan to it, and writes back
//! only the bindings that changed, stamped by this node's hybrid logical
//! clock strictly after the entries they replace (so CSeq order within a
//! Call-ID holds and replicas converge). It answers after a write quorum.
//!
//! | module | what it holds |
//! |---|---|
//! | `driver` | the overlay task: the `Node`, its links, its journal, the census |
//! | `seeds` | the configured seeds, host names resolved again and again |
//! | [`store`] | [`OverlayStore`]: bindings on the ring, for the SIP core |

mod driver;
mod seeds;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use ringmesh_overlay::{Config as NodeConfig, Entry, Key, Node, NodeId, OpError};
use tokio::sync::{mpsc, oneshot};

use crate::clock::wall_ms;
use crate::journal::Journal;
use crate::link::{LinkEvent, Links};
use crate::metrics::Metrics;
use crate::overload::Overload;
use crate::tasks::Tasks;
use crate::transport::Inbound;

use driver::{Census, Driver, StatsSeen};
use seeds::Seeds;
pub use store::{OverlayStore, gateways_of, live_bindings, presence_of, services_of};

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
    /// Members that said they are overloaded (refusing new requests).
    pub overloaded: HashSet<[u8; 16]>,
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
    /// Write entries to a key, stamped by this node (the admin API's
    /// service advertisements).
    Put {
        key: Key,
        entries: Vec<EntrySpec>,
        reply: oneshot::Sender<Result<(), OpError>>,
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
    links: Links,
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

    /// Closes every overlay link, for a process about to exit: its peers
    /// drop the links at once instead of after the idle timeout, so the
    /// node's next start links (and joins) at once.
    pub async fn close_links(&self) {
        self.links.shutdown().await;
    }
}

impl ringmesh_proxy::Members for FarmHandle {
    fn sip_addr(&self, node: &[u8; 16]) -> Option<String> {
        self.members
            .read()
            .alive
            .get(node)
            .map(|m| m.sip_addr.clone())
    }
    fn is_alive(&self, node: &[u8; 16]) -> bool {
        FarmHandle::is_alive(self, node)
    }
    fn member_at(&self, addr: &str) -> Option<[u8; 16]> {
        FarmHandle::member_at(self, addr)
    }
    fn alive_ids(&self) -> Vec<[u8; 16]> {
        self.members.read().alive.keys().copied().collect()
    }
    fn is_overloaded(&self, node: &[u8; 16]) -> bool {
        self.members.read().overloaded.contains(node)
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
    pub tasks: Tasks,
    pub overload: Arc<Overload>,
}

impl std::fmt::Debug for FarmSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarmSetup")
            .field("seeds", &self.seeds)
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

/// How long a node that restored records (it was in a ring) waits for a
/// seed before it may found a ring of its own (`--bootstrap-after`).
pub const REJOIN_BEFORE_FOUNDING: Duration = Duration::from_secs(30);

/// Starts the overlay task; returns the SIP core's handle and the reply
/// channel for its [`OverlayStore`].
pub fn start(setup: FarmSetup) -> anyhow::Result<(FarmHandle, mpsc::Receiver<Reply>)> {
    let me = setup.node.id;
    let mut node = Node::new(setup.node).map_err(|e| anyhow::anyhow!("overlay config: {e}"))?;
    let (journal, replay) = Journal::open(&setup.data.join("overlay.log"))?;
    let wall = wall_ms();
    // A node restarted with the records it held was in a ring: founding
    // another because its seeds took a moment to accept it would split
    // the farm, so it waits much longer for them (a whole farm restarted
    // at once still comes up, later).
    let mut bootstrap_after = setup.bootstrap_after;
    if !replay.records.is_empty() {
        tracing::info!(records = replay.records.len(), frames = replay.frames, torn = ?replay.torn, "restored bindings from disk");
        bootstrap_after = bootstrap_after.map(|d| d.max(REJOIN_BEFORE_FOUNDING));
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
        links: setup.links.clone(),
    };
    let driver = Driver {
        node,
        links: setup.links,
        seeds: Seeds::start(setup.seeds, setup.own, &setup.tasks),
        bootstrap_after,
        started: tokio::time::Instant::now(),
        replies: reply_tx,
        sip_inbound: setup.sip_inbound,
        ops: HashMap::new(),
        members,
        held,
        pending: driver::Pending::default(),
        journal,
        metrics: setup.metrics,
        ready: setup.ready,
        leave_waiters: Vec::new(),
        stats_seen: StatsSeen::default(),
        census: Census::default(),
        overload: setup.overload,
    };
    setup.tasks.spawn(driver.run(cmd_rx, setup.link_events));
    Ok((handle, reply_rx))
}
