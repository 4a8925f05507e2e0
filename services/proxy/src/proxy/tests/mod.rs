//! Every proxy and registrar rule on a virtual clock: one or two proxies
//! (supernodes of a farm), leaves that are only flows and addresses, a
//! shared [`LocalStore`] standing for the ring, and a subscriber directory
//! that can answer at once, later, or not at all.

mod auth;
mod calls;
mod checks;
mod flows;
mod forking;
mod gateways;
mod ims;
mod messages;
mod peers;
mod policy;
mod presence;
mod privacy;
mod regevent;
mod registrar;
mod relays;
mod routing;
mod services;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::digest::{Algorithm, DigestAuth, Ha1, ResponseParams, response_hex};
use ringmesh_sip::{HeaderName, Message};

use super::{Action, Config, Members, Now, Policy, Proxy};
use crate::auth::{Auth, Directory, Fetched, Found, SubscriberInfo};
use crate::binding::{FlowRef, Transport};
use crate::location::{Completion, LocalStore, LocationOp};
use crate::observe::{Metric, Observer};
use crate::registrar::RegistrarConfig;
use crate::token::Dest;
use crate::{Me, addresses};

pub const DOMAIN: &str = "ringmesh.test";
pub const SECRET: &[u8] = b"the farm secret of the tests";
/// Where the tests' emergency route points.
pub const PSAP: &str = "203.0.113.112:5060";
const NONCE_LIFETIME: u64 = 300;

/// The digest issuer id of node `n`'s first run (a restart draws another).
pub fn issuer(n: u8) -> u64 {
    0x1550_0000_0000_0000 | u64::from(n)
}

/// A number no other call in this test process got (branches, Call-IDs).
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Text with `\n` line ends as a SIP message (CRLF).
pub fn msg(text: &str) -> Message {
    let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    Message::parse(Bytes::from(text.clone())).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Leaf `i` over UDP: 192.0.2.i:5060.
pub fn udp_leaf(i: u8) -> FlowRef {
    FlowRef::Udp {
        socket: 0,
        peer: SocketAddr::from(([192, 0, 2, i], 5060)),
    }
}

/// Leaf `i` on TCP connection `id`: 198.51.100.i:40000.
pub fn tcp_leaf(i: u8, id: u64) -> FlowRef {
    stream_leaf(i, id, Transport::Tcp)
}

/// Leaf `i` on connection `id` of `transport`: 198.51.100.i:40000.
pub fn stream_leaf(i: u8, id: u64, transport: Transport) -> FlowRef {
    FlowRef::Conn {
        id,
        peer: SocketAddr::from(([198, 51, 100, i], 40000)),
        transport,
    }
}

/// Node `n` (1, 2, …): Node-ID [n; 16], SIP on 10.0.0.n:5060 (UDP, TCP),
/// 5061 (TLS) and 8443 (secure WebSocket).
pub fn node_id(n: u8) -> [u8; 16] {
    [n; 16]
}

fn node_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 5060))
}

/// Metric events, as the `Debug` text of each.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<String>>>);

impl Observer for Recorder {
    fn observe(&self, m: Metric<'_>) {
        self.0.lock().unwrap().push(format!("{m:?}"));
    }
}

impl Recorder {
    /// Events whose text contains `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.contains(pattern))
            .count()
    }
}

/// How the test directory answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirMode {
    Ready,
    /// Every lookup waits; the test answers with `Harness::answer_lookups`.
    Later,
    Unavailable,
}

/// Subscribers alice, bob, carol (barred), dave (owns dave-alias too) and
/// erin (sip:erin and tel:+15550100 in one implicit registration set, and
/// sip:erin-work on its own), each with password "secret".
#[derive(Debug, Clone)]
pub struct TestDirectory {
    by_user: Arc<Mutex<HashMap<String, Arc<SubscriberInfo>>>>,
    pub mode: Arc<Mutex<DirMode>>,
    /// Lookups waiting: token and the key asked for.
    pub waiting: Arc<Mutex<Vec<(u64, String)>>>,
    recent: Arc<Mutex<HashMap<String, Option<Arc<SubscriberInfo>>>>>,
}

fn aor(user: &str) -> Aor {
    Aor::parse(format!("sip:{user}@{DOMAIN}").as_bytes()).unwrap()
}

impl TestDirectory {
    pub fn new() -> TestDirectory {
        let mut by_user = HashMap::new();
        for (user, barred, extra) in [
            ("alice", false, None),
            ("bob", false, None),
            ("carol", true, None),
            ("dave", false, Some("dave-alias")),
        ] {
            let mut public_ids = vec![aor(user)];
            if let Some(e) = extra {
                public_ids.push(aor(e));
            }
            by_user.insert(
                user.to_string(),
                Arc::new(SubscriberInfo {
                    private_id: user.to_string(),
                    ha1: Some(Ha1::compute(user.as_bytes(), DOMAIN.as_bytes(), b"secret")),
                    public_ids,
                    implicit_sets: Vec::new(),
                    barred,
                    services: Vec::new(),
                    region: String::new(),
                }),
            );
        }
        let erin: Vec<Aor> = [
            "sip:erin@ringmesh.test",
            "tel:+15550100",
            "sip:erin-work@ringmesh.test",
        ]
        .iter()
        .map(|a| Aor::parse(a.as_bytes()).unwrap())
        .collect();
        by_user.insert(
            "erin".to_string(),
            Arc::new(SubscriberInfo {
                private_id: "erin".to_string(),
                ha1: Some(Ha1::compute(b"erin", DOMAIN.as_bytes(), b"secret")),
                implicit_sets: vec![erin[..2].to_vec()],
                public_ids: erin,
                barred: false,
                services: Vec::new(),
                region: String::new(),
            }),
        );
        TestDirectory {
            by_user: Arc::new(Mutex::new(by_user)),
            mode: Arc::new(Mutex::new(DirMode::Ready)),
            waiting: Arc::default(),
            recent: Arc::default(),
        }
    }

    fn find(&mut self, key: String, token: u64) -> Found {
        if let Some(v) = self.recent.lock().unwrap().remove(&key) {
            return Found::Ready(v);
        }
        match *self.mode.lock().unwrap() {
            DirMode::Ready => Found::Ready(self.lookup(&key)),
            DirMode::Later => {
                self.waiting.lock().unwrap().push((token, key));
                Found::Pending
            }
            DirMode::Unavailable => Found::Unavailable,
        }
    }

    /// Bars (or unbars) `user` from now on.
    pub fn set_barred(&self, user: &str, barred: bool) {
        self.change(user, |s| s.barred = barred);
    }

    /// Gives `user` these initial filter criteria from now on.
    pub fn set_services(&self, user: &str, services: Vec<crate::ifc::Criterion>) {
        self.change(user, |s| s.services = services);
    }

    /// Puts `user` in `region` from now on.
    pub fn set_region(&self, user: &str, region: &str) {
        self.change(user, |s| s.region = region.to_string());
    }

    fn change(&self, user: &str, f: impl FnOnce(&mut SubscriberInfo)) {
        let mut by_user = self.by_user.lock().unwrap();
        let mut new = (**by_user.get(user).expect("a test subscriber")).clone();
        f(&mut new);
        by_user.insert(user.to_string(), Arc::new(new));
        // A changed record replaces what was kept of it.
        self.recent.lock().unwrap().clear();
    }

    /// The next lookup of `key` is answered at once, whatever the mode.
    pub fn preload(&self, key: &str) {
        let v = self.lookup(key);
        self.recent.lock().unwrap().insert(key.to_string(), v);
    }

    fn lookup(&self, key: &str) -> Option<Arc<SubscriberInfo>> {
        match key.split_once(':') {
            Some(("u", user)) => self.by_user.lock().unwrap().get(user).cloned(),
            Some(("a", a)) => self
                .by_user
                .lock()
                .unwrap()
                .values()
                .find(|s| s.public_ids.iter().any(|p| p.to_string() == a))
                .cloned(),
            _ => None,
        }
    }
}

impl Directory for TestDirectory {
    fn by_private_id(&mut self, id: &str, token: u64) -> Found {
        self.find(format!("u:{id}"), token)
    }
    fn by_public_id(&mut self, aor: &Aor, token: u64) -> Found {
        self.find(format!("a:{aor}"), token)
    }
    fn answered(&mut self, token: u64, answer: &Fetched) {
        let key = self
            .waiting
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, k)| k.clone());
        if let (Some(key), Ok(v)) = (key, answer) {
            self.recent.lock().unwrap().insert(key, v.clone());
        }
    }
}

/// The farm's live members, shared by every node of a harness, and those
/// that said they are overloaded.
#[derive(Debug, Clone, Default)]
pub struct TestMembers(
    pub Arc<Mutex<HashMap<[u8; 16], String>>>,
    pub Arc<Mutex<std::collections::HashSet<[u8; 16]>>>,
);

impl Members for TestMembers {
    fn sip_addr(&self, node: &[u8; 16]) -> Option<String> {
        self.0.lock().unwrap().get(node).cloned()
    }
    fn alive_ids(&self) -> Vec<[u8; 16]> {
        self.0.lock().unwrap().keys().copied().collect()
    }
    fn member_at(&self, addr: &str) -> Option<[u8; 16]> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, a)| *a == addr)
            .map(|(id, _)| *id)
    }
    fn is_overloaded(&self, node: &[u8; 16]) -> bool {
        self.1.lock().unwrap().contains(node)
    }
}

/// Something a node sent.
#[derive(Debug)]
pub struct Sent {
    /// The node that sent it (1, 2, …).
    pub node: u8,
    pub dest: Dest,
    pub msg: Message,
}

/// One or more proxies on a virtual clock.
pub struct Harness {
    pub nodes: Vec<Proxy>,
    pub metrics: Vec<Recorder>,
    pub directory: TestDirectory,
    pub members: TestMembers,
    /// The ring: every node's location operations land here.
    pub store: LocalStore,
    /// When set, location operations wait in `held` until released.
    pub hold_location: bool,
    pub held: Vec<(u8, u64, LocationOp)>,
    pub now: Now,
    /// Everything sent, in order (messages between nodes included).
    pub sent: Vec<Sent>,
    /// Connections a node asked to close: (node, connection).
    pub closed: Vec<(u8, u64)>,
    /// Call records, with the node that wrote each.
    pub records: Vec<(u8, crate::cdr::CallRecord)>,
    /// DNS questions asked: node, token, query (answered by the test).
    pub resolves: Vec<(u8, u64, crate::dns::Query)>,
}

/// What a harness is built with.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub nodes: u8,
    pub auth: bool,
}

impl Harness {
    /// One node, digest authentication on.
    pub fn new() -> Harness {
        Harness::with(Opts {
            nodes: 1,
            auth: true,
        })
    }

    /// One node, an open registrar and proxy.
    pub fn open() -> Harness {
        Harness::with(Opts {
            nodes: 1,
            auth: false,
        })
    }

    /// Two nodes of one farm, digest authentication on.
    pub fn farm() -> Harness {
        Harness::with(Opts {
            nodes: 2,
            auth: true,
        })
    }

    pub fn with(o: Opts) -> Harness {
        let directory = TestDirectory::new();
        let members = TestMembers::default();
        let now = Now {
            mono: Instant::now(),
            wall_ms: 1_800_000_000_000,
        };
        let mut nodes = Vec::new();
        let mut metrics = Vec::new();
        for n in 1..=o.nodes {
            let addr = node_addr(n);
            let me: Me = addresses::Me::new(
                DOMAIN,
                None,
                &[
                    (Transport::Udp, addr),
                    (Transport::Tcp, addr),
                    (Transport::Tls, SocketAddr::new(addr.ip(), 5061)),
                    (Transport::Wss, SocketAddr::new(addr.ip(), 8443)),
                ],
                node_id(n),
            );
            let cfg = Config {
                me,
                registrar: RegistrarConfig {
                    min_expires: 60,
                    max_expires: 7200,
                    default_expires: 3600,
                    max_contacts: 5,
                    flow_timer: 120,
                    allow_loopback_contacts: false,
                },
                t1: Duration::from_millis(500),
                t2: Duration::from_secs(4),
                t4: Duration::from_secs(5),
                retry_after: 5,
                presized_transactions: 64,
                secrets: vec![(0, SECRET.to_vec())],
                max_dialog: Duration::from_secs(12 * 3600),
                branch_seed: u64::from(n) << 32,
                policy: Policy {
                    emergency_route: Some((Transport::Udp, PSAP.parse().unwrap())),
                    max_branches: 3,
                    ..Policy::default()
                },
            };
            let auth = o.auth.then(|| {
                Auth::new(
                    DOMAIN,
                    DigestAuth::new(SECRET, NONCE_LIFETIME, issuer(n))
                        .with_algorithms(&[Algorithm::Md5]),
                    Box::new(directory.clone()),
                )
            });
            let farm = (o.nodes > 1).then(|| Box::new(members.clone()) as Box<dyn Members>);
            let recorder = Recorder::default();
            nodes.push(Proxy::new(cfg, auth, farm, Box::new(recorder.clone())));
            metrics.push(recorder);
            if o.nodes > 1 {
                members
                    .0
                    .lock()
                    .unwrap()
                    .insert(node_id(n), addr.to_string());
            }
        }
        Harness {
            nodes,
            metrics,
            directory,
            members,
            store: LocalStore::new(),
            hold_location: false,
            held: Vec::new(),
            now,
            sent: Vec::new(),
            closed: Vec::new(),
            records: Vec::new(),
            resolves: Vec::new(),
        }
    }

    pub fn node(&mut self, n: u8) -> &mut Proxy {
        &mut self.nodes[usize::from(n) - 1]
    }

    /// `text` arrives at node `n` from `from`; everything that follows
    /// (location operations, messages between nodes) is carried out.
    pub fn recv(&mut self, n: u8, text: &str, from: Dest) {
        let now = self.now;
        self.node(n).handle_message(msg(text), from, now);
        self.pump();
    }

    /// A leaf's message arriving over its flow at node 1.
    pub fn leaf_sends(&mut self, flow: FlowRef, text: &str) {
        self.recv(1, text, Dest::Flow(flow));
    }

    /// Carries out every node's actions until all are quiet: location
    /// operations against the shared store (unless held), messages to
    /// another node delivered to it, the rest recorded.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                let n = i as u8 + 1;
                while let Some(a) = self.nodes[i].poll_action() {
                    progressed = true;
                    match a {
                        Action::Location { token, op } if self.hold_location => {
                            self.held.push((n, token, op))
                        }
                        Action::Location { token, op } => {
                            let c: Completion = (token, self.store.execute(op));
                            let now = self.now;
                            self.nodes[i].handle_location(c, now);
                        }
                        Action::CloseFlow { id } => self.closed.push((n, id)),
                        Action::CallRecord(r) => self.records.push((n, *r)),
                        Action::Resolve { token, query } => self.resolves.push((n, token, query)),
                        Action::Transmit { dest, bytes } => {
                            let m = Message::parse(bytes).expect("the proxy writes valid SIP");
                            if let Dest::Peer(peer) = dest {
                                let now = self.now;
                                let to = usize::from(peer[0]) - 1;
                                self.nodes[to].handle_message(
                                    m.clone(),
                                    Dest::Peer(node_id(n)),
                                    now,
                                );
                            }
                            self.sent.push(Sent {
                                node: n,
                                dest,
                                msg: m,
                            });
                        }
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Gives node `n` a new digest authenticator (another issuer, as after
    /// a restart, or other settings), over the same directory.
    pub fn set_digest(&mut self, n: u8, digest: DigestAuth) {
        let directory = Box::new(self.directory.clone());
        self.node(n).auth = Some(Auth::new(DOMAIN, digest, directory));
    }

    /// Completes the held location operations.
    pub fn release_location(&mut self) {
        self.hold_location = false;
        for (n, token, op) in std::mem::take(&mut self.held) {
            let c = (token, self.store.execute(op));
            let now = self.now;
            self.node(n).handle_location(c, now);
        }
        self.pump();
    }

    /// Answers every lookup the directory left waiting, from its data.
    pub fn answer_lookups(&mut self) {
        let waiting: Vec<(u64, String)> = self.directory.waiting.lock().unwrap().clone();
        *self.directory.mode.lock().unwrap() = DirMode::Ready;
        for (token, key) in waiting {
            let answer = Ok(self.directory.lookup(&key));
            let now = self.now;
            self.node(1).handle_subscriber(token, answer, now);
        }
        self.pump();
    }

    /// How many bindings `aor` has in the shared store now.
    pub fn bindings_of(&mut self, aor: &str) -> usize {
        let op = LocationOp::Lookup {
            aor: Aor::parse(aor.as_bytes()).unwrap(),
            now_ms: self.now.wall_ms,
        };
        self.store
            .execute(op)
            .map_or(0, |b| b.into_bindings().len())
    }

    /// Moves the clock on by `d`, firing due timers, in steps of 100 ms.
    pub fn advance(&mut self, d: Duration) {
        let step = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            let s = left.min(step);
            left -= s;
            self.now.mono += s;
            self.now.wall_ms += s.as_millis() as u64;
            let now = self.now;
            for p in &mut self.nodes {
                p.handle_timeout(now);
            }
            self.pump();
        }
    }

    /// What was sent since the last call.
    pub fn take(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }

    /// The responses sent to `flow` since the last `take`, removed.
    pub fn responses_to(&mut self, flow: FlowRef) -> Vec<Message> {
        let (mine, rest): (Vec<Sent>, Vec<Sent>) = self
            .take()
            .into_iter()
            .partition(|s| s.dest == Dest::Flow(flow) && s.msg.is_response());
        self.sent = rest;
        mine.into_iter().map(|s| s.msg).collect()
    }

    /// The one final response sent to `flow` since the last `take`.
    pub fn final_to(&mut self, flow: FlowRef) -> Message {
        let finals: Vec<Message> = self
            .responses_to(flow)
            .into_iter()
            .filter(|m| m.status().is_some_and(|s| s >= 200))
            .collect();
        assert_eq!(finals.len(), 1, "one final response: {finals:?}");
        finals.into_iter().next().unwrap()
    }

    /// The requests sent (to leaves or nodes) since the last `take`,
    /// removed.
    pub fn requests(&mut self) -> Vec<Sent> {
        let (mine, rest): (Vec<Sent>, Vec<Sent>) =
            self.take().into_iter().partition(|s| s.msg.is_request());
        self.sent = rest;
        mine
    }

    /// Registers `user` (password "secret") from `flow` with `contact` at
    /// node 1: REGISTER, the 401, REGISTER with credentials; returns the
    /// final response.
    pub fn register(&mut self, flow: FlowRef, user: &str, contact: &str) -> Message {
        self.register_at(1, flow, user, contact)
    }

    /// [`Harness::register`] at node `n`.
    pub fn register_at(&mut self, n: u8, flow: FlowRef, user: &str, contact: &str) -> Message {
        let tag: String = contact
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let call = format!("reg-{user}-{tag}");
        let first = register_text(flow, user, contact, &call, 1, "", 600);
        self.recv(n, &first, Dest::Flow(flow));
        let r = self.final_to(flow);
        if r.status() != Some(401) {
            return r;
        }
        let auth = authorization(&r, user, "secret", "REGISTER", &format!("sip:{DOMAIN}"));
        let second = register_text(flow, user, contact, &call, 2, &auth, 600);
        self.recv(n, &second, Dest::Flow(flow));
        self.final_to(flow)
    }

    /// An authenticated out-of-dialog request from `user` over `flow`:
    /// sent once, challenged (407), sent again with credentials. The
    /// challenge is taken; what follows the second send is left in `sent`.
    pub fn send_authenticated(&mut self, flow: FlowRef, user: &str, text: &str) {
        self.leaf_sends(flow, text);
        let challenge = self
            .responses_to(flow)
            .into_iter()
            .find(|m| m.status() == Some(407))
            .expect("a 407 challenge");
        let m = msg(text);
        let method = String::from_utf8_lossy(m.method().as_bytes()).into_owned();
        let ruri = String::from_utf8_lossy(m.request_uri_bytes()).into_owned();
        let auth = authorization(&challenge, user, "secret", &method, &ruri);
        let again = text
            .replace(&format!("CSeq: 1 {method}"), &format!("CSeq: 2 {method}"))
            .replace("branch=z9hG4bK", "branch=z9hG4bK2");
        let again = again.replacen("Content-Length:", &format!("{auth}Content-Length:"), 1);
        self.leaf_sends(flow, &again);
    }
}

/// A REGISTER from `flow` for `user` with one Contact.
pub fn register_text(
    flow: FlowRef,
    user: &str,
    contact: &str,
    call_id: &str,
    cseq: u32,
    auth: &str,
    expires: u32,
) -> String {
    let via = via_for(flow);
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKr{cseq}{call_id}\nMax-Forwards: 70\n\
         From: <sip:{user}@{DOMAIN}>;tag=r{cseq}\nTo: <sip:{user}@{DOMAIN}>\nCall-ID: {call_id}\n\
         CSeq: {cseq} REGISTER\nContact: {contact}\nExpires: {expires}\n{auth}Content-Length: 0\n\n"
    )
}

/// The Via a leaf on `flow` writes.
pub fn via_for(flow: FlowRef) -> String {
    format!("SIP/2.0/{} {}", flow.transport().via_token(), flow.peer())
}

/// An INVITE from `from` (over `flow`) to `to`, out of dialog.
pub fn invite_text(flow: FlowRef, from: &str, to: &str, call_id: &str) -> String {
    let via = via_for(flow);
    let contact = flow.peer();
    format!(
        "INVITE sip:{to}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKi{call_id}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=f{call_id}\nTo: <sip:{to}@{DOMAIN}>\nCall-ID: {call_id}\n\
         CSeq: 1 INVITE\nContact: <sip:{from}@{contact}>\nContent-Length: 0\n\n"
    )
}

/// An `Authorization` (401) or `Proxy-Authorization` (407) header line
/// answering `challenge` (MD5, qop=auth, nc 1).
pub fn authorization(
    challenge: &Message,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    authorization_with(challenge, user, password, method, uri, Algorithm::Md5, 1)
}

/// [`authorization`] computed with `algorithm` and nonce count `nc`.
pub fn authorization_with(
    challenge: &Message,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    algorithm: Algorithm,
    nc: u32,
) -> String {
    let (hdr, name) = match challenge.status() {
        Some(407) => (HeaderName::ProxyAuthenticate, "Proxy-Authorization"),
        _ => (HeaderName::WwwAuthenticate, "Authorization"),
    };
    let value = String::from_utf8_lossy(challenge.header(hdr).expect("a challenge")).into_owned();
    let nonce = value
        .split("nonce=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("a nonce")
        .to_string();
    let ha1 = Ha1::compute(user.as_bytes(), DOMAIN.as_bytes(), password.as_bytes());
    let nc = format!("{nc:08x}");
    let resp = response_hex(
        &ha1,
        &ResponseParams {
            algorithm,
            nonce: nonce.as_bytes(),
            cnonce: b"c0ffee",
            nc: nc.as_bytes(),
            qop: Some(b"auth"),
            method: method.as_bytes(),
            uri: uri.as_bytes(),
        },
    );
    let alg = algorithm.as_str();
    format!(
        "{name}: Digest username=\"{user}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{resp}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"c0ffee\"\n"
    )
}

/// The value of header `h` as text.
pub fn header(m: &Message, h: HeaderName) -> Option<String> {
    m.header(h).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The Record-Route values of `m`, in order.
pub fn record_route(m: &Message) -> Vec<String> {
    m.header_values(HeaderName::RecordRoute)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// A BYE of the dialog `call`, which alice started: her tag is the one
/// `invite_text` gave her (`f<call>`), whichever side hangs up.
pub fn bye(
    from_flow: FlowRef,
    from: &str,
    to: &str,
    call: &str,
    route: &str,
    ruri: &str,
) -> String {
    let tag = |party: &str| {
        if party == "alice" {
            format!("f{call}")
        } else {
            format!("t{party}")
        }
    };
    format!(
        "BYE {ruri} SIP/2.0\nVia: {};branch=z9hG4bKbye{call}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag={}\nTo: <sip:{to}@{DOMAIN}>;tag={}\nCall-ID: {call}\n\
         CSeq: 2 BYE\nRoute: {route}\nContent-Length: 0\n\n",
        via_for(from_flow),
        tag(from),
        tag(to)
    )
}

/// A farm of two: alice (a phone that has not registered) on node 1, bob
/// registered on node 2.
pub fn alice_and_bob_on_two_nodes() -> (Harness, FlowRef, FlowRef) {
    let mut h = Harness::farm();
    let (alice, bob) = (udp_leaf(1), udp_leaf(2));
    assert_eq!(
        h.register_at(2, bob, "bob", "<sip:bob@192.0.2.2>").status(),
        Some(200)
    );
    h.take();
    (h, alice, bob)
}

/// A MESSAGE from `from` to `to` over `flow`, body "hi".
pub fn message_text(flow: FlowRef, from: &str, to: &str, call: &str) -> String {
    let via = via_for(flow);
    format!(
        "MESSAGE sip:{to}@{DOMAIN} SIP/2.0\nVia: {via};branch=z9hG4bKm{call}\nMax-Forwards: 70\n\
         From: <sip:{from}@{DOMAIN}>;tag=f{call}\nTo: <sip:{to}@{DOMAIN}>\nCall-ID: {call}\n\
         CSeq: 1 MESSAGE\nContent-Type: text/plain\nContent-Length: 2\n\nhi"
    )
}

/// A response with `status` to `req` (its Via, From, To, Call-ID, CSeq).
pub fn ok_to(req: &Message, status: u16) -> String {
    let text = String::from_utf8_lossy(req.raw()).into_owned();
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .collect();
    format!(
        "SIP/2.0 {status} X\n{}\nContent-Length: 0\n\n",
        keep.join("\n")
    )
}

/// The NOTIFYs sent to the watcher on `flow` since the last `take`, each
/// answered 200 (at the node that sent it down the flow); other requests
/// stay.
pub fn notifies(h: &mut Harness, flow: FlowRef) -> Vec<Message> {
    let (mut sent, others): (Vec<Sent>, Vec<Sent>) = h.requests().into_iter().partition(|s| {
        s.msg.method().as_bytes() == b"NOTIFY" && s.dest.peer() == Some(flow.peer())
    });
    h.sent.extend(others);
    // Retransmissions (over UDP, before the answer) are one NOTIFY.
    sent.dedup_by_key(|s| s.msg.cseq());
    for s in &sent {
        let ok = ok_to(&s.msg, 200);
        h.recv(s.node, &ok, Dest::Flow(flow));
    }
    sent.into_iter().map(|s| s.msg).collect()
}
