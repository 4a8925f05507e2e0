//! [`Proxy`]: the registrar and proxy of one supernode, as a state machine.
//!
//! Inputs come in with the current time ([`Now`]): SIP messages
//! ([`Proxy::handle_message`]), location results
//! ([`Proxy::handle_location`]), late subscriber answers
//! ([`Proxy::handle_subscriber`]), connection changes, and timer expiries
//! ([`Proxy::handle_timeout`]). Outputs are [`Action`]s
//! ([`Proxy::poll_action`]: bytes to send, location operations to carry
//! out) and the next deadline ([`Proxy::poll_timeout`]); metrics go to an
//! [`Observer`]. The driver moves bytes, runs the location operations and
//! sleeps; it decides nothing.
//!
//! Request handling order (RFC 3261 §16.3, then policy), in
//! `proxy/request.rs`:
//! 1. URI scheme (416), Max-Forwards (483; OPTIONS to us is answered),
//!    loop detection (482), Proxy-Require (420); a REGISTER whose To is not
//!    a SIP AOR (400). These come before anything that depends on who asks
//!    or which domain is addressed.
//! 2. Route headers that name this node are consumed; a signed flow token
//!    in one sends the request down that leaf's flow (in-dialog routing,
//!    `proxy/routing.rs`).
//! 3. Requests for a domain the farm does not serve are refused (403): no
//!    open relay. Emergency requests go to the configured emergency route,
//!    unchallenged.
//! 4. A request that claims a dialog (a To tag) without a flow token of
//!    this farm for that dialog is refused (481): no dialog is taken on
//!    trust.
//! 5. Every out-of-dialog request from a phone is authenticated (401 for
//!    REGISTER, 407 otherwise) and may assert only identities its
//!    subscriber owns; then the registrar, or a location lookup and
//!    forwarding to at most `max_branches` bindings in parallel
//!    (`proxy/forking.rs`). Trusted elements ([`TrustTable`]) and
//!    other supernodes skip the phone rules.
//! 6. On the way, the caller's originating and then the callee's
//!    terminating initial filter criteria send the request through
//!    application servers, which return it on a sealed Route
//!    (`proxy/services.rs`; only trusted elements may).
//!
//! ACKs for 2xx and responses without a transaction are forwarded
//! statelessly (`proxy/stateless.rs`).

mod calls;
mod flows;
mod forking;
mod gateways;
mod guarding;
mod located;
mod messages;
mod notifier;
mod numbers;
mod parked;
mod peering;
mod presence;
mod privacy;
mod relays;
mod request;
mod routing;
mod services;
mod stateless;
mod subscribers;
pub use subscribers::SubscriberChange;
#[cfg(test)]
mod tests;

pub use messages::MESSAGE_ID_HEADER;
pub use request::is_emergency;

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use ringmesh_sip::transaction::{ClientKey, Event, ServerKey, TransactionKey, TransactionLayer};
use ringmesh_sip::{HeaderName, Message};
use sha2::Sha256;

use crate::addresses::Me;
use crate::auth::{Auth, Fetched};
use crate::binding::{FlowRef, Transport};
use crate::guard::{Guard, GuardConfig};
use crate::location::{Completion, Located, LocationOp};
use crate::observe::{AuthFailure, Metric, Observer, Refusal};
use crate::registrar::{RegisterPlan, RegistrarConfig};
use crate::token::{Dest, TokenKeys};
use crate::trust::TrustTable;

/// Branch prefix of this implementation: cookie, "rm", then the loop hash.
const BRANCH_PREFIX: &str = "z9hG4bKrm";
/// Option tags this node supports in Require / Proxy-Require.
const SUPPORTED: &[&str] = &["outbound", "path", "gruu"];
/// The same, as a `Supported` header value.
pub(crate) const SUPPORTED_HEADER: &[u8] = b"outbound, path, gruu";
const ALLOW: &[u8] = b"INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK";

/// The time of an input: monotonic for timers, wall-clock for what is
/// compared across nodes (binding expiry, digest nonces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

impl Now {
    pub fn secs(&self) -> u64 {
        self.wall_ms / 1000
    }

    /// The version of a binding written now: a hybrid logical clock whose
    /// high bits are the wall clock in ms, so replicas order writes from any
    /// member by time (a purge after the bindings it removes).
    pub fn hlc(&self) -> u64 {
        self.wall_ms << 16
    }
}

/// What the proxy is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub me: Me,
    pub registrar: RegistrarConfig,
    /// RFC 3261 T1, T2, T4.
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// The `Retry-After` of this node's 503s, seconds.
    pub retry_after: u32,
    /// Transactions to make room for at start.
    pub presized_transactions: usize,
    /// The farm's secrets as (version, secret), the current one first:
    /// flow tokens are sealed under the first and opened under any, so the
    /// secret rotates without breaking a dialog. Must not be empty.
    pub secrets: Vec<(u8, Vec<u8>)>,
    /// The longest dialog the farm carries: its flow tokens live this long.
    pub max_dialog: Duration,
    /// Where this node's branch counter starts (random in production).
    pub branch_seed: u64,
    pub policy: Policy,
}

/// The rules that protect the farm from phones, and where emergency
/// requests go.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The elements that are not phones; [`Proxy::set_trusted`] replaces
    /// it at run time.
    pub trusted: TrustTable,
    /// Where emergency requests go (`urn:service:sos…`, or a Request-URI
    /// whose user part is one of `emergency_numbers`): an address, since
    /// edges resolve no names. None: they are answered 503.
    pub emergency_route: Option<(Transport, std::net::SocketAddr)>,
    /// Dial strings that are emergency calls (e.g. 112, 911).
    pub emergency_numbers: Vec<String>,
    /// The bindings a request forks to at most (the preferred ones).
    pub max_branches: usize,
    /// Brute-force bans.
    pub guard: GuardConfig,
    /// How long an application server has to answer a request at all
    /// (even 100 Trying) before its criterion's default handling applies.
    pub service_timeout: Duration,
    /// Phones see only their edge supernode's address: no other Via, and
    /// other members' Record-Routes rewritten to name the edge
    /// (`proxy/privacy.rs`).
    pub topology_hiding: bool,
    /// Messages kept for a subscriber with no reachable device (0: none
    /// are kept; such a MESSAGE gets 480), and for how long at most
    /// (`proxy/messages.rs`).
    pub offline_messages: usize,
    pub offline_message_ttl: Duration,
    /// This supernode's region: the services nearest to a subscriber
    /// with none of its own are those of this region.
    pub region: String,
    /// TURN credentials for phones (`proxy/relays.rs`); None: not offered.
    pub turn: Option<TurnPolicy>,
    /// How dialled numbers become E.164.
    pub dial_plan: crate::gateways::DialPlan,
    /// How long a PSTN gateway has to answer a call at all before the
    /// call moves to the next (`proxy/gateways.rs`).
    pub gateway_timeout: Duration,
    /// The ENUM domain numbers are looked up under (`e164.arpa`, or a
    /// carrier's private tree); None: no ENUM.
    pub enum_domain: Option<String>,
    /// How often the gateway table is read from the ring; None: never
    /// (it is set with [`Proxy::set_gateways`]).
    pub gateway_refresh: Option<Duration>,
    /// The driver opens TLS connections to other domains' servers, with a
    /// client certificate: peer farms can be reached, and ENUM URIs over
    /// TLS too (`proxy/located.rs`).
    pub tls_client: bool,
}

/// What phones asking for TURN relays get.
#[derive(Debug, Clone)]
pub struct TurnPolicy {
    /// The secret shared with the relays (coturn `static-auth-secret`).
    pub secret: Vec<u8>,
    /// How long credentials stay valid.
    pub ttl: Duration,
    /// How many relays an answer names at most.
    pub servers: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            trusted: TrustTable::default(),
            emergency_route: None,
            emergency_numbers: vec!["112".into(), "911".into()],
            max_branches: 10,
            guard: GuardConfig::default(),
            service_timeout: Duration::from_secs(2),
            topology_hiding: false,
            offline_messages: 100,
            offline_message_ttl: Duration::from_secs(7 * 24 * 3600),
            region: String::new(),
            turn: None,
            dial_plan: crate::gateways::DialPlan::default(),
            gateway_timeout: Duration::from_secs(2),
            gateway_refresh: None,
            enum_domain: None,
            tls_client: false,
        }
    }
}

/// Who sent a request, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A phone on this flow: every phone rule applies.
    Phone(FlowRef),
    /// A trusted element on this flow.
    Trusted(FlowRef),
    /// Another supernode, over its mutually authenticated overlay link:
    /// its edge applied the rules already.
    Peer,
}

impl Origin {
    pub fn flow(self) -> Option<FlowRef> {
        match self {
            Origin::Phone(f) | Origin::Trusted(f) => Some(f),
            Origin::Peer => None,
        }
    }
    pub fn is_phone(self) -> bool {
        matches!(self, Origin::Phone(_))
    }
}

/// Something the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Send `bytes` to `dest`.
    Transmit { dest: Dest, bytes: Bytes },
    /// Carry out a location operation and report it with
    /// [`Proxy::handle_location`] under `token`.
    Location { token: u64, op: LocationOp },
    /// Close the connection `id` (its subscriber changed).
    CloseFlow { id: u64 },
    /// Write a call record (this node is the call's originating edge).
    CallRecord(Box<crate::cdr::CallRecord>),
    /// Ask DNS and report the answer with [`Proxy::handle_resolved`]
    /// under `token`.
    Resolve {
        token: u64,
        query: crate::dns::Query,
    },
}

/// The live members of the farm, as this node last saw them.
pub trait Members: Send + 'static {
    /// The SIP address (`host:port`) of a live member.
    fn sip_addr(&self, node: &[u8; 16]) -> Option<String>;
    fn is_alive(&self, node: &[u8; 16]) -> bool {
        self.sip_addr(node).is_some()
    }
    /// The live member whose SIP address is `addr` (`host:port`).
    fn member_at(&self, addr: &str) -> Option<[u8; 16]>;
    /// Every live member's Node-ID.
    fn alive_ids(&self) -> Vec<[u8; 16]>;
    /// The member said it is overloaded: new requests for its phones are
    /// refused here (503 with Retry-After) rather than sent on.
    fn is_overloaded(&self, _node: &[u8; 16]) -> bool {
        false
    }
}

/// The proxy's load, for overload control and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Transactions held, Timer J lingerers not counted.
    pub transactions: usize,
    /// Every transaction held.
    pub transactions_total: usize,
    /// Completed server transactions kept only for retransmissions.
    pub lingering: usize,
    /// Requests waiting for the location service or the directory.
    pub pending: usize,
    /// Flows carrying outbound registrations.
    pub outbound_flows: usize,
    /// Answered calls this node keeps the record of, still up.
    pub calls_up: usize,
}

/// Hasher for maps keyed by identifiers this node made itself
/// (transaction keys, operation tokens): nobody else chooses them, so a
/// multiply-rotate mix is enough, and much cheaper than SipHash.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// A request waiting for the location service or the directory.
#[derive(Debug)]
enum Pending {
    Register {
        server: ServerKey,
        msg: Message,
        /// The AOR the bindings are stored under.
        key: ringmesh_sip::aor::Aor,
        plan: RegisterPlan,
        /// Who registers, when the farm authenticates: what the 200 OK
        /// lists as associated identities.
        subscriber: Option<std::sync::Arc<crate::auth::SubscriberInfo>>,
    },
    Route {
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: services::Onward,
    },
    /// Waiting for the subscriber directory: the request runs again.
    Auth {
        server: ServerKey,
        msg: Message,
        origin: Origin,
    },
    /// The callee has bindings: is it barred (403)?
    Callee {
        server: ServerKey,
        msg: Message,
        origin: Origin,
        bindings: Vec<crate::binding::Binding>,
        onward: services::Onward,
    },
    /// A barred or deleted subscriber's AOR being emptied.
    Purge { aor: ringmesh_sip::aor::Aor },
    /// The binding of an outbound flow that failed being removed.
    FlowGone { aor: ringmesh_sip::aor::Aor },
    /// A new subscription waiting for its resource's record (the cap).
    NewSubscription {
        server: ServerKey,
        msg: Message,
        aor: ringmesh_sip::aor::Aor,
        sub: Box<crate::subscription::Subscription>,
    },
    /// A new or refreshed subscription being stored.
    Subscribed {
        server: ServerKey,
        msg: Message,
        aor: ringmesh_sip::aor::Aor,
        sub: crate::subscription::Subscription,
        refresh: bool,
    },
    /// An in-dialog SUBSCRIBE waiting for its subscription's record.
    Resubscribe {
        server: ServerKey,
        msg: Message,
        aor: ringmesh_sip::aor::Aor,
        id: [u8; 16],
    },
    /// A MESSAGE for a subscriber with no reachable device being kept.
    KeepMessage {
        server: ServerKey,
        msg: Message,
        id: [u8; 16],
    },
    /// The messages kept for an AOR being read for delivery.
    Mailbox { aor: ringmesh_sip::aor::Aor },
    /// A delivered message being removed.
    MessageRemoved { aor: ringmesh_sip::aor::Aor },
    /// A call to a number waiting for ENUM.
    Enum {
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: services::Onward,
        number: String,
    },
    /// DNS asked for the next server of a located call (`located.rs`).
    Locate {
        server: ServerKey,
        msg: Message,
        hop: Box<gateways::SerialHop>,
    },
    /// The gateway table being read.
    GatewayTable,
    /// A gateway's entry being written again before it expires.
    GatewayKept,
    /// A presentity's record being read for a PUBLISH.
    PublishRead {
        server: ServerKey,
        msg: Message,
        publishing: presence::Publishing,
    },
    /// A publication being written.
    Published {
        server: ServerKey,
        msg: Message,
        aor: ringmesh_sip::aor::Aor,
        publication: Option<Box<crate::presence::Publication>>,
    },
    /// A subscription moved to this node after its edge went silent: its
    /// state is told again once it is stored.
    Rehomed { aor: ringmesh_sip::aor::Aor },
    /// A presentity's record being read before its decisions are stored.
    Deciding {
        server: ServerKey,
        msg: Message,
        aor: ringmesh_sip::aor::Aor,
        rules: Vec<crate::presence::Rule>,
    },
    /// A presentity's decisions about its watchers being stored.
    Decided {
        server: ServerKey,
        msg: Message,
        aor: ringmesh_sip::aor::Aor,
    },
    /// A presence rule being written again before it expires.
    RuleKept { aor: ringmesh_sip::aor::Aor },
    /// The TURN relays being read for a phone's request.
    Relays {
        server: ServerKey,
        msg: Message,
        user: String,
        region: String,
    },
    /// A watched record being read by its notifier.
    Evaluate { aor: ringmesh_sip::aor::Aor },
    /// A subscription's next state being stored before its NOTIFY goes.
    Notify {
        aor: ringmesh_sip::aor::Aor,
        sub: crate::subscription::Subscription,
        notify: Option<(Bytes, String, Dest)>,
    },
}

/// The registrar and proxy of one supernode.
pub struct Proxy {
    me: Me,
    txl: TransactionLayer<Dest>,
    auth: Option<Auth>,
    observer: Box<dyn Observer>,
    tokens: TokenKeys,
    guard: Guard,
    /// When the guard last dropped ended bans and old counts.
    guard_swept_ms: u64,
    /// Keys the MAC in our branches (see `stateless`).
    branch_key: Hmac<Sha256>,
    farm: Option<Box<dyn Members>>,
    /// Connections (TCP) that exist now.
    conns: IdSet<u64>,
    /// The subscriber that registered over each connection, and the
    /// other way round (`subscribers`).
    user_of_conn: IdMap<u64, String>,
    flows_of_user: HashMap<String, IdSet<u64>>,
    /// Flows carrying outbound registrations (`flows`).
    outbound: flows::OutboundFlows,
    /// The names of the TLS client certificate of each connection that
    /// presented one (trusted elements may be listed by them).
    conn_names: IdMap<u64, Vec<String>>,
    proxies: IdMap<ServerKey, forking::ProxyCtx>,
    client_to_server: IdMap<ClientKey, ServerKey>,
    pending: IdMap<u64, Pending>,
    cancelled_pending: IdSet<ServerKey>,
    /// The name each TLS server this node sent to must prove
    /// ([`Proxy::tls_server_name`]).
    tls_names: HashMap<std::net::SocketAddr, String>,
    /// Rate-limited peer farms' buckets.
    peer_buckets: peering::PeerBuckets,
    register_started: IdMap<ServerKey, Instant>,
    /// Out-of-dialog INVITEs from leaves awaiting their final response.
    leaf_invites: IdSet<ServerKey>,
    /// The notifier's bookkeeping (`notifier`).
    watching: notifier::Watching,
    /// Kept messages being delivered (`messages`).
    mailboxes: messages::Mailboxes,
    /// When each request sent to an application server must have had an
    /// answer (`services`), oldest first.
    service_deadlines: VecDeque<(Instant, ServerKey)>,
    /// The farm's PSTN gateways, and this node's calls and probes to them
    /// (`gateways`).
    gateways: crate::gateways::Gateways,
    gw: gateways::GatewayRuntime,
    /// The calls this node is the originating edge of (`calls`).
    calls: calls::Calls,
    /// Requests waiting for their callee's supernode (`parked`).
    parked: parked::Parked,
    /// The longest call: an answered call's record is closed after it.
    max_call: Duration,
    next_token: u64,
    branch_counter: u64,
    registrar: RegistrarConfig,
    policy: Policy,
    retry_after: Vec<u8>,
    actions: VecDeque<Action>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("me", &self.me)
            .field("transactions", &self.txl.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy; `auth` None is an open registrar and proxy, `farm` None a
    /// farm of one.
    pub fn new(
        cfg: Config,
        auth: Option<Auth>,
        farm: Option<Box<dyn Members>>,
        observer: Box<dyn Observer>,
    ) -> Proxy {
        let timers = ringmesh_sip::transaction::Timers {
            t1: cfg.t1,
            t2: cfg.t2,
            t4: cfg.t4,
            ..Default::default()
        };
        let presized = cfg.presized_transactions;
        let mailboxes = messages::Mailboxes::new(&cfg.me.node_id);
        Proxy {
            me: cfg.me,
            txl: TransactionLayer::with_capacity(timers, presized),
            auth,
            observer,
            tokens: TokenKeys::new(&cfg.secrets, cfg.max_dialog.as_secs()),
            guard: Guard::new(cfg.policy.guard),
            guard_swept_ms: 0,
            branch_key: {
                let mut k = <Hmac<Sha256> as Mac>::new_from_slice(&cfg.secrets[0].1)
                    .expect("any key length");
                k.update(b"ringmesh branch mac");
                let key = k.finalize().into_bytes();
                <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length")
            },
            farm,
            conns: IdSet::default(),
            user_of_conn: IdMap::default(),
            flows_of_user: HashMap::new(),
            outbound: flows::OutboundFlows::default(),
            conn_names: IdMap::default(),
            proxies: IdMap::with_capacity_and_hasher(presized / 4, Default::default()),
            client_to_server: IdMap::with_capacity_and_hasher(presized / 4, Default::default()),
            pending: IdMap::default(),
            cancelled_pending: IdSet::default(),
            tls_names: HashMap::new(),
            peer_buckets: peering::PeerBuckets::default(),
            register_started: IdMap::with_capacity_and_hasher(presized / 4, Default::default()),
            leaf_invites: IdSet::default(),
            watching: notifier::Watching::default(),
            mailboxes,
            service_deadlines: VecDeque::new(),
            gateways: crate::gateways::Gateways::default(),
            gw: gateways::GatewayRuntime::default(),
            calls: calls::Calls::default(),
            parked: parked::Parked::default(),
            max_call: cfg.max_dialog,
            next_token: 1,
            branch_counter: cfg.branch_seed,
            registrar: cfg.registrar,
            policy: cfg.policy,
            retry_after: cfg.retry_after.to_string().into_bytes(),
            actions: VecDeque::new(),
        }
    }

    pub fn me(&self) -> &Me {
        &self.me
    }

    // ---- inputs ---------------------------------------------------------------

    /// A SIP message from a leaf (`from` is its flow) or from another
    /// supernode (`from` is [`Dest::Peer`]).
    pub fn handle_message(&mut self, msg: Message, from: Dest, now: Now) {
        if let Dest::Flow(flow) = from {
            self.outbound.heard(flow, now.wall_ms);
        }
        if let Dest::Flow(flow) = from
            && self.guard.has_bans()
            && self.banned(&msg, flow, now)
        {
            return;
        }
        self.start_gateway_refresh(now);
        self.txl
            .handle_message(msg, from, from.reliable(), now.mono);
        self.drive(now);
    }

    /// A location operation of [`Action::Location`] finished.
    pub fn handle_location(&mut self, (token, result): Completion, now: Now) {
        // A change to a watched record is told to the record's notifier.
        let watched = matches!(result, Ok(Located::Bindings { watched: true, .. }));
        let mail = matches!(result, Ok(Located::Bindings { mail: true, .. }));
        match self.pending.remove(&token) {
            Some(Pending::Register {
                server,
                msg,
                key,
                plan,
                subscriber,
            }) => {
                let result = result.map(Located::into_bindings);
                let device = match (&result, mail) {
                    (Ok(bindings), true) => messages::registered_device(bindings, &plan).cloned(),
                    _ => None,
                };
                self.registered(server, msg, plan, subscriber, result, now);
                if watched {
                    self.changed(key.clone(), now);
                }
                if let Some(device) = device {
                    self.open_mailbox(key, device, now);
                }
            }
            Some(Pending::KeepMessage { server, msg, id }) => {
                self.message_kept(server, msg, id, result, now)
            }
            Some(Pending::Mailbox { aor }) => self.mailbox_read(aor, result, now),
            Some(Pending::PublishRead {
                server,
                msg,
                publishing,
            }) => self.publish_read(server, msg, publishing, result, now),
            Some(Pending::Published {
                server,
                msg,
                aor,
                publication,
            }) => self.published(server, msg, aor, publication, result, now),
            Some(Pending::Relays {
                server,
                msg,
                user,
                region,
            }) => self.relays_found(server, msg, &user, &region, result, now),
            Some(Pending::Rehomed { aor }) => match result {
                Ok(_) => self.changed(aor, now),
                Err(e) => {
                    tracing::warn!(%aor, error = %e, "a subscription not moved; the next change tries again")
                }
            },
            Some(Pending::Deciding {
                server,
                msg,
                aor,
                rules,
            }) => self.deciding(server, msg, aor, rules, result, now),
            Some(Pending::Decided { server, msg, aor }) => {
                self.decided(server, msg, aor, result, now)
            }
            Some(Pending::GatewayTable) => self.gateways_read(result, now),
            Some(Pending::GatewayKept) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a gateway's entry not written again; the next read tries again");
                }
            }
            Some(Pending::RuleKept { aor }) => {
                if let Err(e) = result {
                    tracing::warn!(%aor, error = %e, "a presence rule not written again; the next evaluation tries again");
                }
            }
            Some(Pending::MessageRemoved { aor }) => {
                if let Err(e) = result {
                    tracing::warn!(%aor, error = %e, "a delivered message not removed: it may be delivered again, with its id");
                }
            }
            Some(Pending::Route {
                server,
                msg,
                origin,
                onward,
            }) => {
                if self.cancelled_pending.remove(&server) {
                    self.reply(server, &msg, 487, &[], now);
                } else {
                    match result {
                        Ok(found) => self.route_to_bindings(
                            server,
                            msg,
                            origin,
                            found.into_bindings(),
                            onward,
                            now,
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "location lookup failed");
                            self.reply_unavailable(server, &msg, now);
                        }
                    }
                }
            }
            Some(Pending::FlowGone { aor }) => match result {
                Ok(_) => {
                    tracing::info!(%aor, "the binding of a failed outbound flow removed");
                    if watched {
                        self.changed(aor, now);
                    }
                }
                Err(e) => {
                    tracing::warn!(%aor, error = %e, "cannot remove the binding of a failed outbound flow; it expires on its own")
                }
            },
            Some(Pending::Purge { aor }) => match result {
                Ok(_) => {
                    tracing::info!(%aor, "bindings or a subscription removed");
                    if watched {
                        self.changed(aor, now);
                    }
                }
                Err(e) => {
                    tracing::warn!(%aor, error = %e, "cannot remove bindings or a subscription; they expire on their own")
                }
            },
            Some(Pending::Subscribed {
                server,
                msg,
                aor,
                sub,
                refresh,
            }) => self.subscribed(server, msg, aor, sub, refresh, result, now),
            Some(Pending::NewSubscription {
                server,
                msg,
                aor,
                sub,
            }) => self.new_subscription(server, msg, aor, *sub, result, now),
            Some(Pending::Resubscribe {
                server,
                msg,
                aor,
                id,
            }) => self.resubscribe(server, msg, aor, id, result, now),
            Some(Pending::Evaluate { aor }) => self.evaluated(aor, result, now),
            Some(Pending::Notify { aor, sub, notify }) => {
                self.notify_stored(aor, sub, notify, result, now)
            }
            Some(other) => {
                self.pending.insert(token, other);
            }
            None => {}
        }
        self.drive(now);
    }

    /// The directory's answer to a lookup it left pending under `token`:
    /// the waiting request runs again, or its callee is known.
    pub fn handle_subscriber(&mut self, token: u64, answer: Fetched, now: Now) {
        if let Some(a) = self.auth.as_mut() {
            a.directory.answered(token, &answer);
        }
        match self.pending.remove(&token) {
            Some(Pending::Auth {
                server,
                msg,
                origin,
            }) => self.on_request(server, msg, origin, now),
            Some(Pending::Callee {
                server,
                msg,
                origin,
                bindings,
                onward,
            }) => {
                if self.cancelled_pending.remove(&server) {
                    self.reply(server, &msg, 487, &[], now);
                } else {
                    self.forward_to_callee(server, msg, origin, bindings, onward, answer, now);
                }
            }
            Some(other) => {
                self.pending.insert(token, other);
            }
            None => {}
        }
        self.drive(now);
    }

    /// The driver's answer to an [`Action::Resolve`] under `token`.
    pub fn handle_resolved(&mut self, token: u64, answer: crate::dns::Resolved, now: Now) {
        match self.pending.remove(&token) {
            Some(Pending::Enum {
                server,
                msg,
                origin,
                onward,
                number,
            }) => {
                if self.cancelled_pending.remove(&server) {
                    self.reply(server, &msg, 487, &[], now);
                } else {
                    self.enum_answered(server, msg, origin, onward, number, answer, now);
                }
            }
            Some(Pending::Locate { server, msg, hop }) => {
                if self.cancelled_pending.remove(&server) {
                    self.reply(server, &msg, 487, &[], now);
                } else {
                    self.next_located(server, msg, *hop, Some(answer), now);
                }
            }
            Some(other) => {
                self.pending.insert(token, other);
            }
            None => {}
        }
        self.drive(now);
    }

    /// Replaces the table of trusted elements.
    pub fn set_trusted(&mut self, trusted: TrustTable) {
        self.policy.trusted = trusted;
        self.prune_peer_buckets();
    }

    /// A connection (TCP) was accepted or opened.
    pub fn connection_opened(&mut self, id: u64) {
        self.conns.insert(id);
    }

    /// Connection `id` presented a TLS client certificate for `names`
    /// (verified by the transport).
    pub fn connection_named(&mut self, id: u64, names: Vec<String>) {
        self.conn_names.insert(id, names);
    }

    /// The trusted element `flow` comes from, by address or by the names
    /// of its TLS client certificate.
    fn trusted_element(&self, flow: FlowRef) -> Option<&crate::trust::Element> {
        let names = match flow {
            FlowRef::Conn { id, .. } => self.conn_names.get(&id).map(Vec::as_slice),
            FlowRef::Udp { .. } => None,
        };
        self.policy
            .trusted
            .lookup_any(flow.peer(), names.unwrap_or_default())
    }

    /// A connection closed: flows over it are gone, and the outbound
    /// bindings registered over it with them.
    pub fn connection_closed(&mut self, id: u64, now: Now) {
        self.conns.remove(&id);
        self.conn_names.remove(&id);
        self.forget_user_flow(id);
        self.outbound_conn_closed(id, now);
        self.drive(now);
    }

    /// Timers that are due fire.
    pub fn handle_timeout(&mut self, now: Now) {
        if now.wall_ms >= self.guard_swept_ms + 1000 {
            self.guard_swept_ms = now.wall_ms;
            self.guard.expire(now.wall_ms);
        }
        self.sweep_silent_flows(now);
        self.watch_timers(now);
        self.service_timers(now);
        self.call_timers(now);
        self.start_gateway_refresh(now);
        self.gateway_timers(now);
        self.parked_timers(now);
        self.txl.handle_timeout(now.mono);
        self.drive(now);
    }

    // ---- outputs --------------------------------------------------------------

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.txl.poll_timeout(),
            self.watching.next_due(),
            self.service_deadlines.front().map(|(at, _)| *at),
            self.calls.next_due(),
            self.gw.next_due(),
            self.parked.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn load(&self) -> Load {
        Load {
            transactions: self.txl.active(),
            transactions_total: self.txl.len(),
            lingering: self.txl.lingering(),
            pending: self.pending.len(),
            outbound_flows: self.outbound.len(),
            calls_up: self.calls.up(),
        }
    }

    /// Requests not answered yet: forwarded ones awaiting a final
    /// response, and those waiting for the location service or the
    /// directory. What a draining node waits for (it scans every proxied
    /// request: not for the hot path).
    pub fn unanswered(&self) -> usize {
        self.pending.len() + self.proxies.values().filter(|c| !c.answered()).count()
    }

    // ---- the transaction layer's events ---------------------------------------

    /// Handles every event of the transaction layer until quiet, then
    /// queues what it must send.
    fn drive(&mut self, now: Now) {
        while let Some(ev) = self.txl.poll_event() {
            self.on_event(ev, now);
        }
        while let Some((dest, bytes)) = self.txl.poll_transmit() {
            self.actions.push_back(Action::Transmit { dest, bytes });
        }
    }

    fn on_event(&mut self, ev: Event<Dest>, now: Now) {
        match ev {
            Event::Request { server, msg, from } => match from {
                Dest::Flow(flow) => {
                    let origin = if self
                        .trusted_element(flow)
                        .is_some_and(crate::trust::Element::vouches)
                    {
                        Origin::Trusted(flow)
                    } else {
                        Origin::Phone(flow)
                    };
                    self.on_request(server, msg, origin, now)
                }
                Dest::Peer(_) => self.on_request(server, msg, Origin::Peer, now),
                Dest::Addr { .. } => {}
            },
            Event::Ack { msg, from } => match from {
                Dest::Flow(flow) => self.forward_ack(msg, Some(flow), now.secs()),
                Dest::Peer(_) => self.forward_ack(msg, None, now.secs()),
                Dest::Addr { .. } => {}
            },
            Event::Cancel {
                server,
                invite,
                msg,
                ..
            } => self.on_cancel(server, invite, &msg, now),
            Event::Response { client, msg } => self.on_response(client, msg, now),
            Event::StrayResponse { msg } => self.forward_stray_response(msg),
            Event::Timeout { client } | Event::TransportError { client } => {
                self.on_branch_failed(client, now)
            }
            Event::TimerC { client } => {
                let _ = self.txl.cancel(client, now.mono);
            }
            Event::ServerTimeout { .. } => {}
            Event::Terminated(TransactionKey::Client(c)) => {
                self.client_to_server.remove(&c);
                self.notifier_forget(&c);
                self.delivery_forget(&c);
                self.probe_forget(&c);
            }
            Event::Terminated(TransactionKey::Server(s)) => {
                if let Some(ctx) = self.proxies.remove(&s) {
                    for (c, _) in &ctx.branches {
                        self.client_to_server.remove(c);
                    }
                    if ctx.is_call() {
                        self.observer.observe(Metric::CallEnded);
                    }
                }
                self.cancelled_pending.remove(&s);
                self.register_started.remove(&s);
                if self.leaf_invites.remove(&s) {
                    // Ended without a final response sent (none is left
                    // to send): the attempt failed.
                    self.call_answered(s, 0, now);
                }
            }
        }
    }

    // ---- answering ------------------------------------------------------------

    fn send(&mut self, dest: Dest, bytes: Bytes) {
        self.actions.push_back(Action::Transmit { dest, bytes });
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The To tag of our own answers: "rm" and 12 hex digits of a hash of
    /// the dialog's Call-ID and From tag (the same for every answer in it).
    fn to_tag(&self, msg: &Message) -> [u8; 14] {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.call_id().hash(&mut h);
        msg.from_tag().hash(&mut h);
        self.me.node_id.hash(&mut h);
        let v = h.finish();
        let mut tag = *b"rm000000000000";
        for (i, d) in tag[2..].iter_mut().enumerate() {
            *d = b"0123456789abcdef"[(v >> (44 - 4 * i) & 0xf) as usize];
        }
        tag
    }

    fn auth_failed(&self, why: AuthFailure) {
        self.observer.observe(Metric::AuthFailure(why));
    }

    fn refused(&self, why: Refusal) {
        self.observer.observe(Metric::Refused(why));
    }

    /// A digest challenge: 407 to a proxied request (`proxy`), 401 to a
    /// REGISTER; a failed attempt (not a first request without
    /// credentials) is counted.
    fn challenge(
        &mut self,
        server: ServerKey,
        msg: &Message,
        proxy: bool,
        stale: bool,
        failure: Option<AuthFailure>,
        now: Now,
    ) {
        if let Some(why) = failure {
            self.auth_failed(why);
        }
        let to_tag = self.to_tag(msg);
        let auth = self.auth.as_mut().expect("checked");
        let resp = auth.challenge(msg, proxy, stale, now.secs(), &to_tag);
        let status = if proxy { 407 } else { 401 };
        self.respond(server, status, resp, transport_of(msg), now);
    }

    /// 503 with this node's Retry-After.
    fn reply_unavailable(&mut self, server: ServerKey, req: &Message, now: Now) {
        let retry_after = std::mem::take(&mut self.retry_after);
        self.reply(
            server,
            req,
            503,
            &[(HeaderName::RetryAfter, &retry_after)],
            now,
        );
        self.retry_after = retry_after;
    }

    /// Answers a request in its server transaction.
    fn respond(
        &mut self,
        server: ServerKey,
        status: u16,
        bytes: Bytes,
        transport: Transport,
        now: Now,
    ) {
        self.observer
            .observe(Metric::ResponseSent { status, transport });
        if status >= 200 {
            if let Some(t0) = self.register_started.remove(&server) {
                self.observer.observe(Metric::RegisterLatency(
                    now.mono.saturating_duration_since(t0),
                ));
            }
            if self.leaf_invites.remove(&server) {
                self.observer.observe(Metric::CallSetup { status });
                self.call_answered(server, status, now);
            }
        }
        let _ = self.txl.respond(server, status, bytes, now.mono);
    }

    /// Asks the driver for a location operation; `then` waits for its
    /// result.
    fn locate(&mut self, op: LocationOp, then: Pending) {
        let token = self.token();
        self.actions.push_back(Action::Location { token, op });
        self.pending.insert(token, then);
    }

    /// 403 with a Warning saying why.
    fn forbid(&mut self, server: ServerKey, req: &Message, warning: &[u8], now: Now) {
        self.reply(server, req, 403, &[(HeaderName::Warning, warning)], now);
    }

    /// The request runs again once the directory answers under `token`.
    fn wait_for_directory(&mut self, token: u64, server: ServerKey, msg: Message, origin: Origin) {
        self.pending.insert(
            token,
            Pending::Auth {
                server,
                msg,
                origin,
            },
        );
    }

    /// Answers locally with `status` and optional extra headers.
    fn reply(
        &mut self,
        server: ServerKey,
        req: &Message,
        status: u16,
        extra: &[(HeaderName, &[u8])],
        now: Now,
    ) {
        let tag = self.to_tag(req);
        let mut w = req.response_writer(status, Some(&tag));
        for (n, v) in extra {
            w.header(*n, v);
        }
        if status >= 300 {
            w.header(HeaderName::Server, b"ringmesh");
        }
        let transport = transport_of(req);
        self.respond(server, status, w.finish(b""), transport, now);
    }
}

/// The transport a message arrived on, from its top Via.
fn transport_of(msg: &Message) -> Transport {
    Transport::from_token(msg.top_via().transport()).unwrap_or(Transport::Udp)
}

/// RFC 3261 §16.6 step 8 / §16.3 step 4: a hash of what identifies the
/// request as received, so a copy that comes back unchanged is a loop.
fn loop_hash(msg: &Message) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    msg.request_uri_bytes().hash(&mut h);
    msg.from_tag().hash(&mut h);
    msg.to_tag().hash(&mut h);
    msg.call_id().hash(&mut h);
    msg.cseq().hash(&mut h);
    msg.header(HeaderName::ProxyRequire).hash(&mut h);
    msg.header(HeaderName::ProxyAuthorization).hash(&mut h);
    msg.header(HeaderName::Route).hash(&mut h);
    h.finish() as u32
}
