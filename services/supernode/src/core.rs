//! The SIP core: one task that owns the transaction layer, the registrar
//! and the proxy, and talks to transports and the location service.
//!
//! It follows STYLE.md §3: the task feeds the sans-IO
//! [`TransactionLayer`], acts on its events (the decisions themselves live
//! in [`crate::registrar`], [`crate::proxy`] and plain methods here), flushes
//! what it must send, and sleeps until the next timer or input. Nothing
//! else touches its state: other tasks reach it over bounded channels.
//!
//! Request handling order (RFC 3261 §16.3, then policy):
//! 1. URI scheme (416), Max-Forwards (483; OPTIONS to us is answered),
//!    loop detection (482), Proxy-Require (420); a REGISTER whose To is not
//!    a SIP AOR (400). These come before anything that depends on who asks
//!    or which domain is addressed.
//! 2. Route headers that name this node are consumed; a signed flow token
//!    in one sends the request down that leaf's flow (in-dialog routing).
//! 3. Requests for a domain the farm does not serve are refused (403): no
//!    open relay.
//! 4. Authentication (401 for REGISTER, 407 for out-of-dialog INVITE,
//!    MESSAGE, SUBSCRIBE), then registrar or proxy.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::transaction::{ClientKey, Event, ServerKey, TransactionKey, TransactionLayer};
use ringmesh_sip::{Forward, HeaderName, Message, Method, Scheme, Uri, Via};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::admin::TraceRecord;
use crate::auth::{Auth, Fetched, Found, Verdict};
use crate::config::{Config, Transport};
use crate::farm::FarmHandle;
use crate::location::{Binding, Completion, FlowRef, LocationError, LocationOp, LocationService};
use crate::metrics::Metrics;
use crate::registrar::{self, RegisterPlan, RegistrarConfig};
use crate::token::{Dest, FlowToken, TokenKey};
use crate::transport::{self, Inbound, Shared};

/// Transactions the SIP core makes room for at start (see
/// `TransactionLayer::with_capacity`): a few seconds of a busy node's
/// traffic, so its tables do not grow, all at once, in the middle of it.
const PRESIZED_TRANSACTIONS: usize = 1 << 18;

/// Branch prefix of this implementation: cookie, "rm", then the loop hash.
const BRANCH_PREFIX: &str = "z9hG4bKrm";
/// Option tags this node supports in Require / Proxy-Require.
const SUPPORTED: &[&str] = &["outbound", "path"];
const ALLOW: &[u8] = b"INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK";

/// Hasher for maps keyed by identifiers this node made itself
/// (transaction keys, operation tokens): nobody else chooses them, so a
/// multiply-rotate mix is enough, and much cheaper than SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

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

/// Wall-clock milliseconds since the UNIX epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This node's addresses, as it decides "is this URI me?".
#[derive(Debug, Clone)]
pub struct Me {
    pub domain: String,
    pub advertise: String,
    pub udp_port: Option<u16>,
    pub tcp_port: Option<u16>,
    hosts: Vec<String>,
    ports: Vec<u16>,
    pub node_id: [u8; 16],
}

impl Me {
    pub fn new(cfg: &Config, node_id: [u8; 16]) -> Me {
        let first = cfg.listen[0].addr;
        let advertise = cfg.advertise.clone().unwrap_or_else(|| match first.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        let mut hosts = vec![
            cfg.domain.to_ascii_lowercase(),
            advertise.to_ascii_lowercase(),
        ];
        for l in &cfg.listen {
            let h = match l.addr.ip() {
                IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let port_of = |t: Transport| {
            cfg.listen
                .iter()
                .find(|l| l.transport == t)
                .map(|l| l.addr.port())
        };
        Me {
            domain: cfg.domain.clone(),
            udp_port: port_of(Transport::Udp),
            tcp_port: port_of(Transport::Tcp),
            ports: cfg.listen.iter().map(|l| l.addr.port()).collect(),
            advertise,
            hosts,
            node_id,
        }
    }

    fn is_own_host(&self, host: &[u8]) -> bool {
        self.hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(host))
    }

    /// The domain served, or one of this node's own addresses.
    pub fn serves(&self, uri: &Uri<'_>) -> bool {
        let Some(host) = uri.host() else { return false };
        if host.text.eq_ignore_ascii_case(self.domain.as_bytes()) {
            return true;
        }
        self.is_own_host(host.text) && uri.port().is_none_or(|p| self.ports.contains(&p))
    }

    /// A URI naming this node itself (a Route or Record-Route of ours).
    pub fn is_me(&self, uri: &Uri<'_>) -> bool {
        let Some(host) = uri.host() else { return false };
        let port = uri.port().unwrap_or(5060);
        !host.text.eq_ignore_ascii_case(self.domain.as_bytes())
            && self.is_own_host(host.text)
            && self.ports.contains(&port)
            || host.text.eq_ignore_ascii_case(self.domain.as_bytes())
                && uri.user().is_none()
                && uri.is_loose_route()
    }

    fn port(&self, t: Transport) -> u16 {
        match t {
            Transport::Udp => self.udp_port.or(self.tcp_port),
            Transport::Tcp => self.tcp_port.or(self.udp_port),
        }
        .unwrap_or(5060)
    }

    /// Whether a Via names this node (sent-by host and port).
    fn is_my_via(&self, v: &Via<'_>) -> bool {
        self.is_own_host(v.host().text) && self.ports.contains(&v.port().unwrap_or(5060))
    }
}

/// What the proxy keeps per forwarded request (RFC 3261 §16.7 response
/// context). The request itself is needed only until the final response
/// went upstream (to answer locally); an INVITE's context lives on for
/// Timer L without it.
#[derive(Debug)]
struct ProxyCtx {
    request: Option<Box<Message>>,
    transport: Transport,
    is_invite: bool,
    branches: Vec<(ClientKey, bool)>,
    best: Option<Box<Message>>,
    final_sent: bool,
    cancelled: bool,
    started: Instant,
}

/// A request waiting for the location service.
#[derive(Debug)]
enum Pending {
    Register {
        server: ServerKey,
        msg: Message,
        plan: RegisterPlan,
    },
    Route {
        server: ServerKey,
        msg: Message,
        from: FlowRef,
        asserted: Option<Bytes>,
    },
    /// Waiting for the subscriber directory: the request runs again.
    Auth {
        server: ServerKey,
        msg: Message,
        from: Option<FlowRef>,
    },
    /// No binding: is the AOR a subscriber (480) or not (404)?
    Unreachable { server: ServerKey, msg: Message },
}

/// Where a request goes: a new Request-URI, the next hop, and a Route to
/// push for that hop (the edge supernode's flow token).
#[derive(Debug, Clone)]
struct Target {
    uri: Option<Bytes>,
    dest: Dest,
    push_route: Option<String>,
}

/// What the Route header says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routing {
    /// `popped` Route values named this node; nothing says where next.
    Here { popped: usize },
    /// A signed token of ours: send down that leaf's flow.
    Toward { popped: usize, dest: Dest },
    /// The next Route is another supernode's token: send over its link.
    Member { popped: usize, node: [u8; 16] },
}

pub struct SipCore<L: LocationService> {
    cfg: Arc<Config>,
    me: Me,
    txl: TransactionLayer<Dest>,
    location: L,
    auth: Option<Auth>,
    metrics: Metrics,
    tokens: TokenKey,
    shared: Arc<Shared>,
    udp: Vec<Arc<UdpSocket>>,
    conns: HashMap<u64, mpsc::Sender<Bytes>>,
    conn_by_peer: HashMap<SocketAddr, u64>,
    proxies: IdMap<ServerKey, ProxyCtx>,
    client_to_server: IdMap<ClientKey, ServerKey>,
    pending: IdMap<u64, Pending>,
    cancelled_pending: IdSet<ServerKey>,
    register_started: IdMap<ServerKey, Instant>,
    /// Out-of-dialog INVITEs from leaves awaiting their final response
    /// (`ringmesh_call_setups_total`).
    leaf_invites: IdSet<ServerKey>,
    /// Smoothed queueing delay of inbound messages, microseconds.
    queue_delay_us: f64,
    /// The `Retry-After` value of the 503s this node writes.
    retry_after: Vec<u8>,
    next_token: u64,
    branch_counter: u64,
    registrar: RegistrarConfig,
    farm: Option<FarmHandle>,
    /// The live SIP trace of the admin API; filled only while listened to.
    trace: Option<tokio::sync::broadcast::Sender<TraceRecord>>,
}

impl<L: LocationService> std::fmt::Debug for SipCore<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipCore")
            .field("me", &self.me)
            .field("transactions", &self.txl.len())
            .finish()
    }
}

impl<L: LocationService> SipCore<L> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        me: Me,
        location: L,
        auth: Option<Auth>,
        metrics: Metrics,
        secret: &[u8],
        shared: Arc<Shared>,
        udp: Vec<Arc<UdpSocket>>,
        farm: Option<FarmHandle>,
    ) -> SipCore<L> {
        let timers = ringmesh_sip::transaction::Timers {
            t1: cfg.t1,
            t2: cfg.t2,
            t4: cfg.t4,
            ..Default::default()
        };
        let retry_after = cfg.overload.retry_after.to_string().into_bytes();
        let presized = cfg.overload.max_transactions.min(PRESIZED_TRANSACTIONS);
        SipCore {
            registrar: RegistrarConfig {
                min_expires: cfg.min_expires,
                max_expires: cfg.max_expires,
                default_expires: cfg.default_expires,
            },
            cfg,
            me,
            txl: TransactionLayer::with_capacity(timers, presized),
            location,
            auth,
            metrics,
            tokens: TokenKey::new(secret),
            shared,
            udp,
            conns: HashMap::new(),
            conn_by_peer: HashMap::new(),
            proxies: IdMap::with_capacity_and_hasher(PRESIZED_TRANSACTIONS / 4, Default::default()),
            client_to_server: IdMap::with_capacity_and_hasher(
                PRESIZED_TRANSACTIONS / 4,
                Default::default(),
            ),
            pending: IdMap::default(),
            cancelled_pending: IdSet::default(),
            register_started: IdMap::with_capacity_and_hasher(
                PRESIZED_TRANSACTIONS / 4,
                Default::default(),
            ),
            leaf_invites: IdSet::default(),
            queue_delay_us: 0.0,
            retry_after,
            next_token: 1,
            branch_counter: rand::random(),
            farm,
            trace: None,
        }
    }

    /// Publishes every message in and out to `trace` while it has listeners.
    pub fn with_trace(mut self, trace: tokio::sync::broadcast::Sender<TraceRecord>) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Someone listens to the live SIP trace (checked before formatting
    /// anything for it).
    fn tracing(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.receiver_count() > 0)
    }

    fn traced(&self, inbound: bool, transport: &'static str, remote: String, raw: &Bytes) {
        if let Some(t) = self.trace.as_ref().filter(|t| t.receiver_count() > 0) {
            let _ = t.send(TraceRecord {
                at_ms: wall_ms(),
                inbound,
                transport,
                remote,
                raw: raw.clone(),
            });
        }
    }

    /// Runs until every transport is gone.
    pub async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>) {
        // Each tick sweeps one shard of the node-local store (16 in all).
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        // Messages handled since the core last let other tasks run: after a
        // reader's batch, so the readers keep draining their sockets (and
        // timestamping what waits there) while the core is busy.
        let mut since_yield = 0;
        loop {
            if since_yield >= transport::READ_BATCH {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            let deadline = self.txl.poll_timeout().map(Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                ev = inbound.recv() => {
                    let Some(ev) = ev else { return };
                    let now = Instant::now();
                    self.on_inbound(ev, now);
                    // Take what else is queued before flushing: one wake-up
                    // serves a burst.
                    let mut n = 1;
                    while n < 64 {
                        match inbound.try_recv() {
                            Ok(ev) => self.on_inbound(ev, now),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    since_yield += n;
                }
                c = std::future::poll_fn(|cx| self.location.poll_complete(cx)) => {
                    self.on_completion(c, Instant::now());
                }
                f = std::future::poll_fn(|cx| match self.auth.as_mut() {
                    Some(a) => a.directory.poll_fetched(cx),
                    None => Poll::Pending,
                }) => {
                    self.on_fetched(f, Instant::now());
                }
                () = sleep => {
                    self.txl.handle_timeout(Instant::now().into_std());
                }
                _ = sweep.tick() => {
                    self.location.expire(wall_ms());
                    let held = self.location.counts();
                    self.metrics.aors.set(held.aors as i64);
                    self.metrics.bindings.with_label_values(&["primary"]).set(held.primary as i64);
                    self.metrics.bindings.with_label_values(&["replica"]).set(held.replica as i64);
                }
            }
            self.drive(Instant::now());
            // After every turn: a completion may have lowered what the
            // readers shed on.
            self.publish_load(inbound.len());
        }
    }

    /// Handles every event and completion until quiet, then sends.
    fn drive(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.txl.poll_event() {
                progressed = true;
                self.on_event(ev, now);
            }
            let mut cx = Context::from_waker(Waker::noop());
            while let Poll::Ready(c) = self.location.poll_complete(&mut cx) {
                progressed = true;
                self.on_completion(c, now);
            }
            while let Some(Poll::Ready(f)) = self
                .auth
                .as_mut()
                .map(|a| a.directory.poll_fetched(&mut cx))
            {
                progressed = true;
                self.on_fetched(f, now);
            }
            if !progressed {
                break;
            }
        }
        while let Some((dest, bytes)) = self.txl.poll_transmit() {
            self.send(dest, bytes);
        }
    }

    /// Publishes the overload signals the transport readers act on, and
    /// the matching gauges.
    fn publish_load(&self, depth: usize) {
        let o = &self.shared.overload;
        o.delay_us.store(
            self.queue_delay_us as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        o.transactions
            .store(self.txl.active(), std::sync::atomic::Ordering::Relaxed);
        o.pending
            .store(self.pending.len(), std::sync::atomic::Ordering::Relaxed);
        self.metrics.transactions.set(self.txl.len() as i64);
        self.metrics
            .transactions_lingering
            .set(self.txl.lingering() as i64);
        self.metrics.inbound_queue.set(depth as i64);
        self.metrics.queue_delay.set(self.queue_delay_us as i64);
        self.metrics
            .overload_active
            .set(i64::from(o.is_active(depth)));
    }

    fn on_inbound(&mut self, ev: Inbound, now: Instant) {
        match ev {
            Inbound::Sip {
                msg,
                flow,
                transport,
                at,
            } => {
                // Smoothed over about 16 messages.
                let waited = now.saturating_duration_since(at).as_micros() as f64;
                self.queue_delay_us += (waited - self.queue_delay_us) / 16.0;
                let t = transport.as_str();
                if self.tracing() {
                    self.traced(true, t, flow.peer().to_string(), msg.raw());
                }
                match msg.status() {
                    Some(s) => self.metrics.hot.response_received(s, t),
                    None => self.metrics.hot.request(msg.method(), t),
                }
                self.txl.handle_message(
                    msg,
                    Dest::Flow(flow),
                    transport == Transport::Tcp,
                    now.into_std(),
                );
            }
            Inbound::ConnOpened { id, peer, tx } => {
                self.conns.insert(id, tx);
                self.conn_by_peer.insert(peer, id);
            }
            Inbound::ConnClosed { id } => {
                self.conns.remove(&id);
                self.conn_by_peer.retain(|_, c| *c != id);
            }
            Inbound::PeerSip { msg, peer } => {
                if self.tracing() {
                    self.traced(true, "overlay", hex::encode(peer), msg.raw());
                }
                match msg.status() {
                    Some(s) => self.metrics.hot.response_received(s, "overlay"),
                    None => self.metrics.hot.request(msg.method(), "overlay"),
                }
                self.txl
                    .handle_message(msg, Dest::Peer(peer), true, now.into_std());
            }
        }
        self.drive(now);
    }

    // ---- sending ------------------------------------------------------------

    fn send(&mut self, dest: Dest, bytes: Bytes) {
        if self.tracing() {
            let (t, remote) = match dest {
                Dest::Peer(p) => ("overlay", hex::encode(p)),
                d => (
                    d.transport().as_str(),
                    d.peer().map(|a| a.to_string()).unwrap_or_default(),
                ),
            };
            self.traced(false, t, remote, &bytes);
        }
        match dest {
            Dest::Peer(node) => {
                if let Some(f) = &self.farm {
                    f.send_sip(node, bytes);
                }
            }
            Dest::Flow(FlowRef::Udp { socket, peer }) => {
                if let Some(s) = self.udp.get(socket as usize) {
                    let _ = s.try_send_to(&bytes, peer);
                }
            }
            Dest::Flow(FlowRef::Conn { id, peer }) => match self.conns.get(&id) {
                Some(tx) => {
                    let _ = tx.try_send(bytes);
                }
                // The connection is gone: reach the peer on a new one.
                None => self.send(
                    Dest::Addr {
                        transport: Transport::Tcp,
                        addr: peer,
                    },
                    bytes,
                ),
            },
            Dest::Addr {
                transport: Transport::Udp,
                addr,
            } => {
                if let Some(s) = self.udp_socket_for(addr).and_then(|i| self.udp.get(i)) {
                    let _ = s.try_send_to(&bytes, addr);
                }
            }
            Dest::Addr {
                transport: Transport::Tcp,
                addr,
            } => {
                if let Some(tx) = self
                    .conn_by_peer
                    .get(&addr)
                    .and_then(|id| self.conns.get(id))
                {
                    let _ = tx.try_send(bytes);
                    return;
                }
                let id = self
                    .shared
                    .next_conn
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(256);
                let _ = tx.try_send(bytes);
                self.conns.insert(id, tx.clone());
                self.conn_by_peer.insert(addr, id);
                transport::connect(id, addr, tx, rx, self.shared.clone());
            }
        }
    }

    fn udp_socket_for(&self, addr: SocketAddr) -> Option<usize> {
        self.cfg
            .listen
            .iter()
            .filter(|l| l.transport == Transport::Udp)
            .position(|l| l.addr.is_ipv4() == addr.is_ipv4())
            .or(if self.udp.is_empty() { None } else { Some(0) })
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

    /// A digest challenge: 407 to a proxied request (`proxy`), 401 to a
    /// REGISTER; a failed attempt (not a first request without
    /// credentials) is counted by `reason`.
    fn challenge(
        &mut self,
        server: ServerKey,
        msg: &Message,
        proxy: bool,
        stale: bool,
        reason: &'static str,
        now: Instant,
    ) {
        if reason != "no_credentials" {
            self.metrics
                .auth_failures
                .with_label_values(&[reason])
                .inc();
        }
        let auth = self.auth.as_ref().expect("checked");
        let resp = auth.challenge(msg, proxy, stale, now_secs(), &self.to_tag(msg));
        let status = if proxy { 407 } else { 401 };
        self.respond(server, status, resp, transport_of(msg), now);
    }

    /// 503 with this node's Retry-After.
    fn reply_unavailable(&mut self, server: ServerKey, req: &Message, now: Instant) {
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
        now: Instant,
    ) {
        self.metrics.hot.response_sent(status, transport.as_str());
        if status >= 200 {
            if let Some(t0) = self.register_started.remove(&server) {
                self.metrics
                    .register_latency
                    .observe(now.duration_since(t0).as_secs_f64());
            }
            if self.leaf_invites.remove(&server) {
                self.metrics.hot.call_setup(status);
            }
        }
        let _ = self.txl.respond(server, status, bytes, now.into_std());
    }

    /// Answers locally with `status` and optional extra headers.
    fn reply(
        &mut self,
        server: ServerKey,
        req: &Message,
        status: u16,
        extra: &[(HeaderName, &[u8])],
        now: Instant,
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

    // ---- transaction events ---------------------------------------------------

    fn on_event(&mut self, ev: Event<Dest>, now: Instant) {
        match ev {
            Event::Request { server, msg, from } => match from {
                Dest::Flow(flow) => self.on_request(server, msg, Some(flow), now),
                Dest::Peer(_) => self.on_request(server, msg, None, now),
                Dest::Addr { .. } => {}
            },
            Event::Ack { msg, from } => match from {
                Dest::Flow(flow) => self.forward_ack(msg, Some(flow)),
                Dest::Peer(_) => self.forward_ack(msg, None),
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
                let _ = self.txl.cancel(client, now.into_std());
            }
            Event::ServerTimeout { .. } => {}
            Event::Terminated(TransactionKey::Client(c)) => {
                self.client_to_server.remove(&c);
            }
            Event::Terminated(TransactionKey::Server(s)) => {
                if let Some(ctx) = self.proxies.remove(&s) {
                    for (c, _) in ctx.branches {
                        self.client_to_server.remove(&c);
                    }
                    if ctx.is_invite {
                        self.metrics.calls_active.dec();
                    }
                }
                self.cancelled_pending.remove(&s);
                self.register_started.remove(&s);
                self.leaf_invites.remove(&s);
            }
        }
    }

    /// A new request, from a leaf (`from` is its flow) or from another
    /// supernode (`from` is None: trusted, already authenticated).
    fn on_request(&mut self, server: ServerKey, msg: Message, from: Option<FlowRef>, now: Instant) {
        // 1. Checks that depend on nothing but the message (§16.3).
        let Some(ruri) = msg.request_uri() else {
            return;
        };
        if !matches!(ruri.scheme(), Scheme::Sip | Scheme::Sips | Scheme::Tel) {
            return self.reply(server, &msg, 416, &[], now);
        }
        let to_self = ruri.user().is_none() && self.me.serves(&ruri);
        if msg.max_forwards() == Some(0) {
            if *msg.method() == Method::Options && to_self {
                return self.answer_options(server, &msg, now);
            }
            return self.reply(server, &msg, 483, &[], now);
        }
        if self.is_loop(&msg) {
            return self.reply(server, &msg, 482, &[], now);
        }
        let unsupported: Vec<&[u8]> = msg
            .header_values(HeaderName::ProxyRequire)
            .filter(|t| {
                !SUPPORTED
                    .iter()
                    .any(|s| s.as_bytes().eq_ignore_ascii_case(t))
            })
            .collect();
        if !unsupported.is_empty() {
            let list = unsupported.join(&b", "[..]);
            return self.reply(server, &msg, 420, &[(HeaderName::Unsupported, &list)], now);
        }
        if *msg.method() == Method::Register
            && !matches!(msg.to_hdr().uri().scheme(), Scheme::Sip | Scheme::Sips)
        {
            return self.reply(
                server,
                &msg,
                400,
                &[(HeaderName::Warning, b"399 ringmesh \"To is not a SIP AOR\"")],
                now,
            );
        }

        // 2. Routes that name this node, or another member of the farm.
        let popped = match self.consume_routes(&msg, from) {
            Routing::Toward { popped, dest } => {
                let t = Target {
                    uri: None,
                    dest,
                    push_route: None,
                };
                return self.proxy_to(server, msg, from, vec![t], popped, None, now);
            }
            Routing::Member { popped, node } => {
                let t = Target {
                    uri: None,
                    dest: Dest::Peer(node),
                    push_route: None,
                };
                return self.proxy_to(server, msg, from, vec![t], popped, None, now);
            }
            Routing::Here { popped } => popped,
        };
        if popped < msg.routes().count() {
            // A further hop named by Route that is not a farm member: the
            // farm relays for no one.
            return self.reply(
                server,
                &msg,
                403,
                &[(HeaderName::Warning, b"399 ringmesh \"will not relay\"")],
                now,
            );
        }
        let Some(flow) = from else {
            // Supernodes send each other requests with a flow token only.
            return self.reply(
                server,
                &msg,
                403,
                &[(HeaderName::Warning, b"399 ringmesh \"no route\"")],
                now,
            );
        };

        // 3. No open relay.
        let in_dialog = msg.to_tag().is_some();
        if !self.me.serves(&ruri) {
            return self.reply(
                server,
                &msg,
                403,
                &[(
                    HeaderName::Warning,
                    b"399 ringmesh \"domain not served here\"",
                )],
                now,
            );
        }
        if *msg.method() == Method::Register {
            return self.on_register(server, msg, flow, now);
        }
        if to_self {
            return match msg.method() {
                Method::Options => self.answer_options(server, &msg, now),
                _ => self.reply(server, &msg, 404, &[], now),
            };
        }
        if in_dialog && popped == 0 {
            // An in-dialog request that does not come through our
            // Record-Route: we hold no dialog it could belong to.
            return self.reply(server, &msg, 481, &[], now);
        }

        // 4. Authentication of out-of-dialog requests from leaves.
        let mut asserted = None;
        if self.auth.is_some()
            && matches!(
                msg.method(),
                Method::Invite | Method::Message | Method::Subscribe
            )
            && !in_dialog
        {
            let token = self.token();
            let me = &self.me;
            let auth = self.auth.as_mut().expect("checked");
            match auth.verify(&msg, true, now_secs(), token, |u| me.serves(u)) {
                Verdict::Authenticated(sub) => {
                    if sub.barred {
                        self.metrics
                            .auth_failures
                            .with_label_values(&["barred"])
                            .inc();
                        return self.reply(
                            server,
                            &msg,
                            403,
                            &[(HeaderName::Warning, b"399 ringmesh \"barred\"")],
                            now,
                        );
                    }
                    // The leaf asserts only identities it owns; the farm
                    // asserts the one it authenticated (RFC 3325).
                    match Aor::from_uri(msg.from_hdr().uri()) {
                        Ok(from_aor) if sub.owns(&from_aor) => {
                            asserted = Some(Bytes::from(format!("<{from_aor}>")));
                        }
                        _ => {
                            self.metrics
                                .auth_failures
                                .with_label_values(&["forbidden_identity"])
                                .inc();
                            return self.reply(
                                server,
                                &msg,
                                403,
                                &[(HeaderName::Warning, b"399 ringmesh \"From is not an identity of the authenticated user\"")],
                                now,
                            );
                        }
                    }
                }
                Verdict::Challenge { stale, reason } => {
                    return self.challenge(server, &msg, true, stale, reason, now);
                }
                Verdict::Pending => {
                    self.pending.insert(
                        token,
                        Pending::Auth {
                            server,
                            msg,
                            from: Some(flow),
                        },
                    );
                    return;
                }
                Verdict::Unavailable => {
                    return self.reply_unavailable(server, &msg, now);
                }
            }
        }
        if *msg.method() == Method::Invite {
            if from.is_some() && msg.to_tag().is_none() {
                self.leaf_invites.insert(server);
            }
            let tag = self.to_tag(&msg);
            let trying = msg.response_writer(100, Some(&tag)).finish(b"");
            self.respond(server, 100, trying, transport_of(&msg), now);
        }
        let Ok(aor) = Aor::from_uri(&ruri) else {
            return self.reply(server, &msg, 404, &[], now);
        };
        let token = self.token();
        self.pending.insert(
            token,
            Pending::Route {
                server,
                msg,
                from: flow,
                asserted,
            },
        );
        self.location.submit(
            LocationOp::Lookup {
                aor,
                now_ms: wall_ms(),
            },
            token,
        );
    }

    fn answer_options(&mut self, server: ServerKey, msg: &Message, now: Instant) {
        self.reply(
            server,
            msg,
            200,
            &[
                (HeaderName::Allow, ALLOW),
                (HeaderName::Accept, b"application/sdp"),
                (HeaderName::Supported, b"outbound, path"),
            ],
            now,
        );
    }

    fn on_register(&mut self, server: ServerKey, msg: Message, flow: FlowRef, now: Instant) {
        self.register_started.insert(server, now);
        let unsupported: Vec<&[u8]> = msg
            .header_values(HeaderName::Require)
            .filter(|t| {
                !SUPPORTED
                    .iter()
                    .any(|s| s.as_bytes().eq_ignore_ascii_case(t))
            })
            .collect();
        if !unsupported.is_empty() {
            let list = unsupported.join(&b", "[..]);
            self.metrics.hot.registration("rejected");
            return self.reply(server, &msg, 420, &[(HeaderName::Unsupported, &list)], now);
        }
        let Ok(aor) = Aor::from_uri(msg.to_hdr().uri()) else {
            return self.reply(server, &msg, 400, &[], now);
        };
        if self.auth.is_some() {
            let token = self.token();
            let me = &self.me;
            let auth = self.auth.as_mut().expect("checked");
            match auth.verify(&msg, false, now_secs(), token, |u| me.serves(u)) {
                Verdict::Authenticated(sub) => {
                    let why: Option<&[u8]> = if sub.barred {
                        Some(b"399 ringmesh \"barred\"")
                    } else if !sub.owns(&aor) {
                        // The authenticated user registers only its own AORs.
                        Some(b"399 ringmesh \"not your address-of-record\"")
                    } else {
                        None
                    };
                    if let Some(warning) = why {
                        let reason = if sub.barred {
                            "barred"
                        } else {
                            "forbidden_identity"
                        };
                        self.metrics
                            .auth_failures
                            .with_label_values(&[reason])
                            .inc();
                        self.metrics.hot.registration("rejected");
                        return self.reply(
                            server,
                            &msg,
                            403,
                            &[(HeaderName::Warning, warning)],
                            now,
                        );
                    }
                }
                Verdict::Challenge { stale, reason } => {
                    self.metrics.hot.registration("challenged");
                    return self.challenge(server, &msg, false, stale, reason, now);
                }
                Verdict::Pending => {
                    self.pending.insert(
                        token,
                        Pending::Auth {
                            server,
                            msg,
                            from: Some(flow),
                        },
                    );
                    return;
                }
                Verdict::Unavailable => {
                    self.metrics.hot.registration("failed");
                    return self.reply_unavailable(server, &msg, now);
                }
            }
        }
        let transport = transport_of(&msg);
        let now_ms = wall_ms();
        let plan = match registrar::plan(
            &msg,
            &aor,
            &self.registrar,
            registrar::Arrival {
                flow,
                transport,
                edge: self.me.node_id,
            },
            now_ms,
            now_ms << 16,
        ) {
            Ok(p) => p,
            Err(rej) => {
                self.metrics.hot.registration("rejected");
                let resp = registrar::reject_response(&msg, &rej, &self.to_tag(&msg));
                return self.respond(server, rej.status, resp, transport, now);
            }
        };
        let token = self.token();
        self.location.submit(
            LocationOp::Register {
                aor,
                plan: plan.clone(),
                now_ms,
            },
            token,
        );
        self.pending
            .insert(token, Pending::Register { server, msg, plan });
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// A subscriber lookup finished: run the waiting request again (the
    /// directory now answers at once), or settle 404 against 480.
    fn on_fetched(&mut self, (token, result): Fetched, now: Instant) {
        match self.pending.remove(&token) {
            Some(Pending::Auth { server, msg, from }) => self.on_request(server, msg, from, now),
            Some(Pending::Unreachable { server, msg }) => {
                let status = if matches!(result, Ok(None)) { 404 } else { 480 };
                self.reply(server, &msg, status, &[], now);
            }
            Some(other) => {
                self.pending.insert(token, other);
            }
            None => {}
        }
    }

    fn on_completion(&mut self, (token, result): Completion, now: Instant) {
        match self.pending.remove(&token) {
            Some(Pending::Register { server, msg, plan }) => {
                let transport = transport_of(&msg);
                match result {
                    Ok(bindings) => {
                        self.metrics.hot.registration("ok");
                        let resp = registrar::ok_response(
                            &msg,
                            &bindings,
                            &plan,
                            wall_ms(),
                            &self.to_tag(&msg),
                        );
                        self.respond(server, 200, resp, transport, now);
                    }
                    Err(LocationError::Registrar(e)) => {
                        self.metrics.hot.registration("rejected");
                        let warn = format!("399 ringmesh \"{e}\"");
                        self.reply(
                            server,
                            &msg,
                            e.status(),
                            &[(HeaderName::Warning, warn.as_bytes())],
                            now,
                        );
                    }
                    Err(LocationError::Unavailable(why)) => {
                        self.metrics.hot.registration("failed");
                        tracing::warn!(%why, "registration not stored");
                        self.reply_unavailable(server, &msg, now);
                    }
                }
            }
            Some(Pending::Route {
                server,
                msg,
                from,
                asserted,
            }) => {
                if self.cancelled_pending.remove(&server) {
                    return self.reply(server, &msg, 487, &[], now);
                }
                match result {
                    Ok(bindings) => {
                        self.route_to_bindings(server, msg, from, bindings, asserted, now)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "location lookup failed");
                        self.reply_unavailable(server, &msg, now);
                    }
                }
            }
            Some(other) => {
                self.pending.insert(token, other);
            }
            None => {}
        }
    }

    fn route_to_bindings(
        &mut self,
        server: ServerKey,
        msg: Message,
        from: FlowRef,
        bindings: Vec<Binding>,
        asserted: Option<Bytes>,
        now: Instant,
    ) {
        let targets: Vec<Target> = bindings
            .iter()
            .filter_map(|b| self.binding_target(b))
            .collect();
        if targets.is_empty() {
            // Known but not reachable now (480), or unknown (404). Without a
            // subscriber directory (auth none) we cannot tell who exists.
            if !bindings.is_empty() {
                return self.reply(server, &msg, 480, &[], now);
            }
            let Some(aor) = msg.request_uri().and_then(|u| Aor::from_uri(&u).ok()) else {
                return self.reply(server, &msg, 404, &[], now);
            };
            let token = self.token();
            let found = match self.auth.as_mut() {
                Some(a) => a.directory.by_public_id(&aor, token),
                None => Found::Ready(None),
            };
            return match found {
                Found::Ready(Some(_)) | Found::Unavailable => {
                    self.reply(server, &msg, 480, &[], now)
                }
                Found::Ready(None) => self.reply(server, &msg, 404, &[], now),
                Found::Pending => {
                    self.pending
                        .insert(token, Pending::Unreachable { server, msg });
                }
            };
        }
        self.proxy_to(server, msg, Some(from), targets, 0, asserted, now);
    }

    /// Where a request for a binding goes: straight to the leaf when this
    /// node is its edge, else to the edge supernode over the overlay with a
    /// Route carrying the edge's flow token (any supernode can mint it: the
    /// farm shares the token key). Bindings whose edge is down are skipped.
    fn binding_target(&self, b: &Binding) -> Option<Target> {
        let uri = Some(b.contact.clone());
        match &self.farm {
            Some(farm) if b.edge != self.me.node_id => {
                let sip_addr = farm.members.read().alive.get(&b.edge)?.sip_addr.clone();
                let at_edge = edge_dest(b)?;
                let token = self.tokens.encode(&FlowToken {
                    node: b.edge,
                    dest: at_edge,
                });
                let push_route = Some(format!("<sip:{token}@{sip_addr};lr>"));
                Some(Target {
                    uri,
                    dest: Dest::Peer(b.edge),
                    push_route,
                })
            }
            _ => self.binding_dest(b).map(|dest| Target {
                uri,
                dest,
                push_route: None,
            }),
        }
    }

    /// How this edge reaches a binding (issue: the SIP core's routing rule):
    /// down its flow when it registered over a connection or with RFC 5626
    /// outbound; else to its Contact, or to the packet source when the
    /// Contact names a private address other than that source (NAT).
    fn binding_dest(&self, b: &Binding) -> Option<Dest> {
        if b.use_flow() {
            match b.flow {
                FlowRef::Conn { id, .. } if self.conns.contains_key(&id) => {
                    return Some(Dest::Flow(b.flow));
                }
                FlowRef::Udp { .. } if b.reg_id.is_some() => return Some(Dest::Flow(b.flow)),
                // An outbound flow that failed is not replaced by the
                // Contact (RFC 5626 §5.3): the UA will re-register.
                _ if b.reg_id.is_some() => return None,
                _ => {}
            }
        }
        let (transport, addr) = contact_addr(b)?;
        if transport == Transport::Tcp
            && let FlowRef::Conn { id, peer } = b.flow
            && self.conns.contains_key(&id)
            && peer == addr
        {
            return Some(Dest::Flow(b.flow));
        }
        Some(Dest::Addr { transport, addr })
    }

    /// Reads the Route values: consumes those naming this node (a signed
    /// token of ours that does not name the flow the request came on sends
    /// it down that flow), and stops at another farm member's token.
    fn consume_routes(&self, msg: &Message, from: Option<FlowRef>) -> Routing {
        let mut popped = 0;
        let mut own_flow = None;
        let mut tokens_for_sender = 0;
        for r in msg.routes() {
            let token = r.uri().user().and_then(|u| self.tokens.decode(u));
            if !self.me.is_me(r.uri()) {
                if let (Some(farm), Some(tok)) = (&self.farm, token)
                    && tok.node != self.me.node_id
                    && farm.is_alive(&tok.node)
                {
                    return Routing::Member {
                        popped,
                        node: tok.node,
                    };
                }
                break;
            }
            popped += 1;
            let Some(tok) = token.filter(|t| t.node == self.me.node_id) else {
                continue;
            };
            let from_that_leaf = from.is_some_and(|f| match tok.dest {
                Dest::Flow(d) => d == f || d.peer() == f.peer(),
                Dest::Addr { addr, .. } => addr == f.peer(),
                Dest::Peer(_) => false,
            });
            if !from_that_leaf {
                return Routing::Toward {
                    popped,
                    dest: tok.dest,
                };
            }
            own_flow = Some(tok.dest);
            tokens_for_sender += 1;
        }
        // Both ends of the dialog are behind the very flow the request came
        // on (one UA calling itself, or caller and callee sharing a NAT
        // binding): each of our tokens names it, and it is where to go.
        match own_flow {
            Some(dest) if tokens_for_sender >= 2 && popped == msg.routes().count() => {
                Routing::Toward { popped, dest }
            }
            _ => Routing::Here { popped },
        }
    }

    /// Forwards `msg` to every target in parallel (§16.6, §16.7). `from`
    /// is the leaf flow it came on, None when another supernode sent it.
    #[allow(clippy::too_many_arguments)]
    fn proxy_to(
        &mut self,
        server: ServerKey,
        msg: Message,
        from: Option<FlowRef>,
        targets: Vec<Target>,
        pop_routes: usize,
        asserted: Option<Bytes>,
        now: Instant,
    ) {
        let in_transport = transport_of(&msg);
        let loop_hash = loop_hash(&msg);
        let record_route = matches!(
            msg.method(),
            Method::Invite | Method::Subscribe | Method::Refer
        ) && msg.to_tag().is_none();
        let top_via = from.and_then(|f| rewrite_top_via(&msg.top_via(), f));
        let privacy_id = msg.header(HeaderName::Privacy).is_some_and(|p| {
            p.split(|&c| c == b';')
                .any(|t| ringmesh_sip::scan::trim(t).eq_ignore_ascii_case(b"id"))
        });
        let max_forwards = msg.max_forwards().map_or(70, |m| m.saturating_sub(1));
        let mut branches = Vec::with_capacity(targets.len());
        for target in targets {
            let dest = target.dest;
            self.branch_counter = self.branch_counter.wrapping_add(1);
            let t = dest.transport();
            let branch = format!("{BRANCH_PREFIX}{loop_hash:08x}.{:x}", self.branch_counter);
            let via = format!(
                "SIP/2.0/{} {}:{};branch={branch}",
                t.via_token(),
                self.me.advertise,
                self.me.port(t)
            );
            // This node record-routes once for each leaf it serves on the
            // path: the callee's flow when it sends to a leaf, the caller's
            // when a leaf sent the request (RFC 5626 §5.3 flow tokens).
            let rr = record_route
                .then(|| {
                    let mut rr = Vec::new();
                    if dest.is_leaf() {
                        rr.push(self.rr_uri(dest, t));
                    }
                    if let Some(f) = from {
                        rr.push(self.rr_uri(Dest::Flow(f), in_transport));
                    }
                    rr.join(", ")
                })
                .filter(|rr| !rr.is_empty());
            // The identity a leaf claims is never trusted; the one this farm
            // asserts is withheld from a leaf that asked for privacy.
            let mut strip = Vec::with_capacity(2);
            if from.is_some() || (dest.is_leaf() && privacy_id) {
                strip.push(HeaderName::PAssertedIdentity);
            }
            if self.auth.is_some() && from.is_some() {
                strip.push(HeaderName::ProxyAuthorization);
            }
            let mut w = msg.forward_writer(&Forward {
                request_uri: target.uri.as_deref(),
                via: via.as_bytes(),
                top_via: top_via.as_deref(),
                record_route: rr.as_deref().map(str::as_bytes),
                push_route: target.push_route.as_deref().map(str::as_bytes),
                pop_routes,
                max_forwards,
                strip: &strip,
            });
            if let Some(a) = asserted
                .as_deref()
                .filter(|_| !(dest.is_leaf() && privacy_id))
            {
                w.header(HeaderName::PAssertedIdentity, a);
            }
            let out = w.finish(msg.body());
            // Our own writer's output: handed over as bytes, not parsed again.
            match self.txl.send_request_raw(
                out,
                msg.method(),
                branch.as_bytes(),
                dest,
                dest.reliable(),
                now.into_std(),
            ) {
                Ok(client) => {
                    self.client_to_server.insert(client, server);
                    branches.push((client, false));
                }
                Err(e) => tracing::warn!(error = %e, "could not start a client transaction"),
            }
        }
        if branches.is_empty() {
            return self.reply(server, &msg, 500, &[], now);
        }
        self.metrics.hot.forwarded(msg.method());
        if *msg.method() == Method::Invite {
            self.metrics.calls_active.inc();
        }
        self.proxies.insert(
            server,
            ProxyCtx {
                transport: transport_of(&msg),
                is_invite: *msg.method() == Method::Invite,
                request: Some(Box::new(msg)),
                branches,
                best: None,
                final_sent: false,
                cancelled: false,
                started: now,
            },
        );
    }

    /// A Record-Route URI of this node carrying a flow token for `dest`.
    fn rr_uri(&self, dest: Dest, t: Transport) -> String {
        let token = self.tokens.encode(&FlowToken {
            node: self.me.node_id,
            dest,
        });
        let tp = if t == Transport::Tcp {
            ";transport=tcp"
        } else {
            ""
        };
        format!(
            "<sip:{token}@{}:{}{tp};lr>",
            self.me.advertise,
            self.me.port(t)
        )
    }

    fn is_loop(&self, msg: &Message) -> bool {
        let mut ours = msg.vias().filter(|v| self.me.is_my_via(v)).peekable();
        if ours.peek().is_none() {
            return false;
        }
        let want = format!("{BRANCH_PREFIX}{:08x}.", loop_hash(msg));
        ours.any(|v| v.branch().is_some_and(|b| b.starts_with(want.as_bytes())))
    }

    // ---- responses and cancellation ------------------------------------------

    fn on_response(&mut self, client: ClientKey, msg: Message, now: Instant) {
        let Some(&server) = self.client_to_server.get(&client) else {
            return;
        };
        let Some(status) = msg.status() else { return };
        if status == 100 {
            return;
        }
        let Some(ctx) = self.proxies.get_mut(&server) else {
            return;
        };
        let transport = ctx.transport;
        if status < 200 {
            if !ctx.final_sent {
                let out = msg.forward_response(&[]).finish(msg.body());
                self.respond(server, status, out, transport, now);
            }
            return;
        }
        if let Some(b) = ctx.branches.iter_mut().find(|(c, _)| *c == client) {
            b.1 = true;
        }
        if status < 300 {
            let first = !ctx.final_sent;
            ctx.final_sent = true;
            ctx.request = None;
            let is_invite = ctx.is_invite;
            let started = ctx.started;
            let others: Vec<ClientKey> = ctx
                .branches
                .iter()
                .filter(|(c, done)| *c != client && !done)
                .map(|(c, _)| *c)
                .collect();
            let out = msg.forward_response(&[]).finish(msg.body());
            self.respond(server, status, out, transport, now);
            if first && is_invite {
                self.metrics
                    .call_setup
                    .observe(now.duration_since(started).as_secs_f64());
                for c in others {
                    let _ = self.txl.cancel(c, now.into_std());
                }
            }
            return;
        }
        // 3xx–6xx: keep the best, answer when every branch is done.
        let better = ctx
            .best
            .as_ref()
            .is_none_or(|b| rank(status) < rank(b.status().unwrap_or(500)));
        if better {
            ctx.best = Some(Box::new(msg));
        }
        if (600..700).contains(&status) && ctx.is_invite {
            let others: Vec<ClientKey> = ctx
                .branches
                .iter()
                .filter(|(_, done)| !done)
                .map(|(c, _)| *c)
                .collect();
            for c in others {
                let _ = self.txl.cancel(c, now.into_std());
            }
        }
        self.maybe_finish(server, now);
    }

    fn on_branch_failed(&mut self, client: ClientKey, now: Instant) {
        let Some(&server) = self.client_to_server.get(&client) else {
            return;
        };
        if let Some(ctx) = self.proxies.get_mut(&server)
            && let Some(b) = ctx.branches.iter_mut().find(|(c, _)| *c == client)
        {
            b.1 = true;
        }
        self.maybe_finish(server, now);
    }

    /// Sends the best final response once no branch is pending (§16.7 step 6).
    fn maybe_finish(&mut self, server: ServerKey, now: Instant) {
        let Some(ctx) = self.proxies.get_mut(&server) else {
            return;
        };
        if ctx.final_sent || ctx.branches.iter().any(|(_, done)| !done) {
            return;
        }
        ctx.final_sent = true;
        let transport = ctx.transport;
        let started = ctx.started;
        let is_invite = ctx.is_invite;
        let Some(req) = ctx.request.take() else {
            return;
        };
        match ctx.best.take() {
            Some(best) => {
                let status = best.status().unwrap_or(500);
                // A 503 from downstream means "that hop is overloaded", not
                // "this proxy is": pass on 500 instead (§16.7 step 6).
                let status = if status == 503 { 500 } else { status };
                let out = if status == best.status().unwrap_or(500) {
                    best.forward_response(&[]).finish(best.body())
                } else {
                    let tag = self.to_tag(&req);
                    req.response_writer(status, Some(&tag)).finish(b"")
                };
                self.respond(server, status, out, transport, now);
            }
            None => {
                let status = if ctx.cancelled { 487 } else { 408 };
                self.reply(server, &req, status, &[], now);
            }
        }
        if is_invite {
            self.metrics
                .call_setup
                .observe(now.duration_since(started).as_secs_f64());
        }
    }

    fn on_cancel(
        &mut self,
        server: ServerKey,
        invite: Option<ServerKey>,
        msg: &Message,
        now: Instant,
    ) {
        let Some(invite) = invite else {
            return self.reply(server, msg, 481, &[], now);
        };
        self.reply(server, msg, 200, &[], now);
        match self.proxies.get_mut(&invite) {
            Some(ctx) if !ctx.final_sent => {
                ctx.cancelled = true;
                let pending: Vec<ClientKey> = ctx
                    .branches
                    .iter()
                    .filter(|(_, d)| !d)
                    .map(|(c, _)| *c)
                    .collect();
                for c in pending {
                    let _ = self.txl.cancel(c, now.into_std());
                }
            }
            Some(_) => {}
            // Still looking the callee up: answer 487 when the lookup ends.
            // Otherwise the INVITE was already answered.
            None => {
                if self
                    .pending
                    .values()
                    .any(|p| matches!(p, Pending::Route { server, .. } if *server == invite))
                {
                    self.cancelled_pending.insert(invite);
                }
            }
        }
    }

    // ---- stateless forwarding -----------------------------------------------

    /// ACK for a 2xx: its own transaction, forwarded statelessly along the
    /// route set (Record-Route flow tokens).
    fn forward_ack(&mut self, msg: Message, from: Option<FlowRef>) {
        let (popped, dest) = match self.consume_routes(&msg, from) {
            Routing::Toward { popped, dest } => (popped, dest),
            Routing::Member { popped, node } => (popped, Dest::Peer(node)),
            Routing::Here { .. } => return,
        };
        let t = dest.transport();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.branch().hash(&mut h);
        let via = format!(
            "SIP/2.0/{} {}:{};branch={BRANCH_PREFIX}{:08x}.s{:x}",
            t.via_token(),
            self.me.advertise,
            self.me.port(t),
            loop_hash(&msg),
            h.finish()
        );
        let top_via = from.and_then(|f| rewrite_top_via(&msg.top_via(), f));
        let out = msg
            .forward_writer(&Forward {
                request_uri: None,
                via: via.as_bytes(),
                top_via: top_via.as_deref(),
                record_route: None,
                push_route: None,
                pop_routes: popped,
                max_forwards: msg.max_forwards().map_or(70, |m| m.saturating_sub(1)),
                strip: &[HeaderName::ProxyAuthorization],
            })
            .finish(msg.body());
        self.send(dest, out);
    }

    /// A response with no client transaction (e.g. a 2xx retransmission
    /// after ours ended): pop our Via and send it on per the next one.
    fn forward_stray_response(&mut self, msg: Message) {
        if !self.me.is_my_via(&msg.top_via()) {
            return;
        }
        let Some(next) = msg.vias().nth(1) else {
            return;
        };
        let host_ip = next
            .received()
            .and_then(|r| std::str::from_utf8(r).ok()?.parse::<IpAddr>().ok())
            .or(next.host().ip());
        let Some(ip) = host_ip else { return };
        let port = next.rport().flatten().or(next.port()).unwrap_or(5060);
        let addr = SocketAddr::new(ip, port);
        if is_broadcast(ip) {
            return; // RFC 4475 bcast: never send to a broadcast address
        }
        let out = msg.forward_response(&[]).finish(msg.body());
        if let Some(node) = self
            .farm
            .as_ref()
            .and_then(|f| f.member_at(&addr.to_string()))
        {
            return self.send(Dest::Peer(node), out);
        }
        let transport = if next.transport().eq_ignore_ascii_case(b"TCP") {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        self.send(Dest::Addr { transport, addr }, out);
    }
}

/// Where a binding's Contact points: its transport and address, or the
/// registration's source when the Contact names a private address other
/// than that source (NAT) or a host name (edges do not resolve leaf names).
fn contact_addr(b: &Binding) -> Option<(Transport, SocketAddr)> {
    let uri = Uri::parse(&b.contact).ok()?;
    if !uri.is_sip_or_sips() {
        return None;
    }
    let transport = match uri.transport() {
        Some(t) if t.eq_ignore_ascii_case(b"tcp") || t.eq_ignore_ascii_case(b"tls") => {
            Transport::Tcp
        }
        _ => b.transport,
    };
    let source = b.flow.peer();
    let addr = match uri.host().and_then(|h| h.ip()) {
        Some(ip) if is_private(ip) && ip != source.ip() => source,
        Some(ip) => SocketAddr::new(ip, uri.port().unwrap_or(5060)),
        None => source,
    };
    Some((transport, addr))
}

/// How a binding's edge reaches it, decided from the binding alone (the
/// edge checks at send time that the flow still exists).
fn edge_dest(b: &Binding) -> Option<Dest> {
    if b.use_flow() {
        return Some(Dest::Flow(b.flow));
    }
    contact_addr(b).map(|(transport, addr)| Dest::Addr { transport, addr })
}

fn now_secs() -> u64 {
    wall_ms() / 1000
}

/// The transport a message arrived on, from its top Via.
fn transport_of(msg: &Message) -> Transport {
    if msg.top_via().transport().eq_ignore_ascii_case(b"TCP") {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

/// Rank of a final response for §16.7 step 6: lower is better.
fn rank(status: u16) -> u16 {
    match status {
        600..=699 => 0,
        300..=399 => 1,
        401 | 407 => 2,
        400..=499 => 3,
        _ => 4,
    }
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

/// The received top Via with `received` and `rport` filled in
/// (RFC 3261 §18.2.1, RFC 3581 §4), or `None` when nothing changes.
fn rewrite_top_via(via: &Via<'_>, from: FlowRef) -> Option<Vec<u8>> {
    let src = from.peer();
    let needs_received = via.host().ip() != Some(src.ip());
    let wants_rport = via.rport() == Some(None);
    if !needs_received && !wants_rport {
        return None;
    }
    let raw = via.as_bytes();
    let params = via.params_raw();
    let head = &raw[..raw.len() - params.len()];
    let mut out = Vec::with_capacity(raw.len() + 40);
    out.extend_from_slice(head);
    for p in via.params() {
        if p.name.eq_ignore_ascii_case(b"received") {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(p.name);
        if p.name.eq_ignore_ascii_case(b"rport") {
            out.extend_from_slice(format!("={}", src.port()).as_bytes());
        } else if let Some(v) = p.value {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(format!(";received={}", src.ip()).as_bytes());
    Some(out)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}
