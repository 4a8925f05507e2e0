//! Every metric the supernode exports, defined in one place; label sets are
//! enums ([`Wire`], [`MethodLabel`], [`Class`], [`CallResult`], and the
//! proxy's, overload control's, admission's and the transports') with
//! `as_label()`.
//!
//! Names start with `ringmesh_`, carry units, and labels stay
//! low-cardinality: method (extension methods collapse to "other"),
//! transport, response class, result. Never an AOR or a Call-ID. Every
//! labelled series a dashboard or alert uses is created at start-up, so an
//! idle node answers every query with zeros rather than "no data".

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use ringmesh_sip::Method;

use ringmesh_proxy::Transport;
use ringmesh_proxy::observe::{AuthFailure, GuardEvent, Metric, Observer, Refusal, Registration};

use crate::admission::{ConnRefusal, Direction, LimitReason};
use crate::overload::ShedReason;
use crate::transport::ConnTimeout;

/// The `transport` label of SIP metrics: a leaf's transport, or a link
/// from another supernode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
    Overlay,
}

/// How many [`Wire`]s there are.
const WIRES: usize = 6;

impl Wire {
    pub const ALL: [Wire; WIRES] = [
        Wire::Udp,
        Wire::Tcp,
        Wire::Tls,
        Wire::Ws,
        Wire::Wss,
        Wire::Overlay,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Wire::Udp => "udp",
            Wire::Tcp => "tcp",
            Wire::Tls => "tls",
            Wire::Ws => "ws",
            Wire::Wss => "wss",
            Wire::Overlay => "overlay",
        }
    }
}

impl From<Transport> for Wire {
    fn from(t: Transport) -> Wire {
        match t {
            Transport::Udp => Wire::Udp,
            Transport::Tcp => Wire::Tcp,
            Transport::Tls => Wire::Tls,
            Transport::Ws => Wire::Ws,
            Transport::Wss => Wire::Wss,
        }
    }
}

/// The stream transports, in the order of the per-connection series.
const STREAMS: [Transport; 4] = [
    Transport::Tcp,
    Transport::Tls,
    Transport::Ws,
    Transport::Wss,
];

/// The handshakes each stream transport makes
/// (`ringmesh_sip_handshake_failures_total{transport,stage}`).
const HANDSHAKES: [(Transport, &str); 4] = [
    (Transport::Tls, "tls"),
    (Transport::Ws, "websocket"),
    (Transport::Wss, "tls"),
    (Transport::Wss, "websocket"),
];

/// How an INVITE from a leaf ended, at the caller's edge
/// (`ringmesh_call_setups_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// 2xx.
    Answered,
    /// 486, 600.
    Busy,
    /// 487: the caller cancelled.
    Cancelled,
    /// Other 3xx–6xx: not found, unavailable, declined, …
    Rejected,
    /// 408 and 5xx: the network's fault, what a call-setup SLO counts
    /// against the farm.
    Failed,
}

impl CallResult {
    pub const ALL: [CallResult; 5] = [
        CallResult::Answered,
        CallResult::Busy,
        CallResult::Cancelled,
        CallResult::Rejected,
        CallResult::Failed,
    ];

    pub fn of(status: u16) -> CallResult {
        match status {
            200..=299 => CallResult::Answered,
            486 | 600 => CallResult::Busy,
            487 => CallResult::Cancelled,
            408 | 500..=599 => CallResult::Failed,
            _ => CallResult::Rejected,
        }
    }

    pub fn as_label(self) -> &'static str {
        match self {
            CallResult::Answered => "answered",
            CallResult::Busy => "busy",
            CallResult::Cancelled => "cancelled",
            CallResult::Rejected => "rejected",
            CallResult::Failed => "failed",
        }
    }
}

/// The `method` label: the methods counted by name; extension methods are
/// "other" (the label set stays small whatever a peer sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodLabel(usize);

impl MethodLabel {
    const NAMES: [&'static str; 15] = [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "REGISTER",
        "OPTIONS",
        "MESSAGE",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "PRACK",
        "UPDATE",
        "REFER",
        "other",
    ];

    pub fn all() -> impl Iterator<Item = MethodLabel> {
        (0..Self::NAMES.len()).map(MethodLabel)
    }

    pub fn of(m: &Method) -> MethodLabel {
        MethodLabel(match m {
            Method::Invite => 0,
            Method::Ack => 1,
            Method::Bye => 2,
            Method::Cancel => 3,
            Method::Register => 4,
            Method::Options => 5,
            Method::Message => 6,
            Method::Subscribe => 7,
            Method::Notify => 8,
            Method::Publish => 9,
            Method::Info => 10,
            Method::Prack => 11,
            Method::Update => 12,
            Method::Refer => 13,
            Method::Other(_) => 14,
        })
    }

    pub fn as_label(self) -> &'static str {
        Self::NAMES[self.0]
    }
}

/// The `class` label of responses: 1xx … 6xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class(usize);

impl Class {
    const NAMES: [&'static str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

    pub fn all() -> impl Iterator<Item = Class> {
        (0..Self::NAMES.len()).map(Class)
    }

    pub fn of(status: u16) -> Class {
        Class(usize::from(status / 100).clamp(1, 6) - 1)
    }

    pub fn as_label(self) -> &'static str {
        Self::NAMES[self.0]
    }
}

/// The labelled counters the SIP path bumps for every message, resolved
/// once at start-up: `with_label_values` hashes its labels and takes a
/// lock on each call, which a register storm felt.
#[derive(Debug, Clone, Default)]
pub struct Hot {
    requests: Vec<[IntCounter; WIRES]>,
    responses_sent: Vec<[IntCounter; WIRES]>,
    responses_received: Vec<[IntCounter; WIRES]>,
    forwarded: Vec<IntCounter>,
    /// ok, challenged, rejected, failed.
    registrations: Vec<IntCounter>,
    call_setups: Vec<IntCounter>,
    overload_rejections: Vec<IntCounter>,
    shed: Vec<IntCounter>,
    /// By direction, then reason.
    refused: Vec<[IntCounter; 2]>,
    timeouts: Vec<IntCounter>,
    /// By reason, then transport (in [`Transport::ALL`] order).
    rate_limited: Vec<[IntCounter; 5]>,
    /// In [`HANDSHAKES`] order.
    handshake_failures: Vec<IntCounter>,
    /// Connections open, in [`STREAMS`] order.
    open_connections: Vec<IntGauge>,
}

fn transport_index(t: Transport) -> usize {
    Transport::ALL.iter().position(|&x| x == t).unwrap_or(0)
}

impl Hot {
    pub fn request(&self, m: &Method, wire: Wire) {
        self.requests[MethodLabel::of(m).0][wire as usize].inc();
    }
    pub fn response_sent(&self, status: u16, wire: Wire) {
        self.responses_sent[Class::of(status).0][wire as usize].inc();
    }
    pub fn response_received(&self, status: u16, wire: Wire) {
        self.responses_received[Class::of(status).0][wire as usize].inc();
    }
    pub fn forwarded(&self, m: &Method) {
        self.forwarded[MethodLabel::of(m).0].inc();
    }
    pub fn registration(&self, result: Registration) {
        self.registrations[result as usize].inc();
    }
    /// A leaf's INVITE got its final response `status`.
    pub fn call_setup(&self, status: u16) {
        self.call_setups[CallResult::of(status) as usize].inc();
    }
    /// A new request answered 503 by a reader.
    pub fn shed(&self, reason: ShedReason, wire: Wire) {
        self.overload_rejections[wire as usize].inc();
        self.shed[reason as usize].inc();
    }
    /// A TCP connection refused (accepted and closed, or not opened).
    pub fn connection_refused(&self, direction: Direction, reason: ConnRefusal) {
        self.refused[direction as usize][reason as usize].inc();
    }
    /// A TCP connection closed by one of its timeouts.
    pub fn connection_timed_out(&self, why: ConnTimeout) {
        self.timeouts[why as usize].inc();
    }
    /// A message a reader dropped unread: its source is over its rate.
    pub fn rate_limited(&self, reason: LimitReason, transport: Transport) {
        self.rate_limited[reason as usize][transport_index(transport)].inc();
    }
    /// A TLS or WebSocket handshake (`stage`) that failed or timed out.
    pub fn handshake_failed(&self, transport: Transport, stage: &str) {
        if let Some(i) = HANDSHAKES.iter().position(|h| *h == (transport, stage)) {
            self.handshake_failures[i].inc();
        }
    }
    /// The gauge of connections open over `transport` (a stream).
    pub fn open_connections(&self, transport: Transport) -> IntGauge {
        let i = STREAMS.iter().position(|&t| t == transport).unwrap_or(0);
        self.open_connections[i].clone()
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub responses_sent: IntCounterVec,
    pub responses_received: IntCounterVec,
    pub parse_errors: IntCounterVec,
    pub transactions: IntGauge,
    pub registrations: IntCounterVec,
    pub call_setups: IntCounterVec,
    pub aors: IntGauge,
    pub bindings: IntGaugeVec,
    pub call_setup: Histogram,
    pub register_latency: Histogram,
    pub calls_active: IntGauge,
    pub auth_failures: IntCounterVec,
    pub refused: IntCounterVec,
    pub guard: IntCounterVec,
    pub emergency: IntCounter,
    pub overload_peer_refusals: IntCounter,
    pub peers_overloaded: IntGauge,
    pub overload_rejections: IntCounterVec,
    pub overload_shed: IntCounterVec,
    pub overload_active: IntGauge,
    pub connections_refused: IntCounterVec,
    pub connection_timeouts: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub outbound_flows: IntGauge,
    pub flows_failed: IntCounterVec,
    pub subscription_events: IntCounterVec,
    pub app_server_events: IntCounterVec,
    pub offline_messages: IntCounterVec,
    pub gateway_events: IntCounterVec,
    pub enum_lookups: IntCounterVec,
    pub located_calls: IntCounterVec,
    pub gateway_up: IntGaugeVec,
    pub gateway_active: IntGaugeVec,
    /// Call records written (`cdr`), and the calls this edge keeps one of.
    pub cdr: crate::cdr::CdrMetrics,
    pub calls_up: IntGauge,
    pub handshake_failures: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub tls_cert_expiry: IntGauge,
    pub rate_limited: IntCounterVec,
    pub queue_delay: IntGauge,
    pub transactions_lingering: IntGauge,
    pub connections: IntGauge,
    pub inbound_queue: IntGauge,
    pub finishing_queue: IntGauge,
    pub forwarded: IntCounterVec,
    pub links: IntGauge,
    pub overlay_members: IntGaugeVec,
    pub ring_size: IntGauge,
    pub lookup_hops: Histogram,
    pub overlay_op_seconds: HistogramVec,
    pub overlay_writes: IntCounterVec,
    pub quorum_failures: IntCounter,
    pub replicas_below_k: IntGauge,
    pub records: IntGauge,
    pub repairs: IntCounter,
    pub anti_entropy_rounds: IntCounter,
    pub failures_detected: IntCounter,
    pub overlay_forwarded: IntCounter,
    /// By reason: member_record, not_replica, entry.
    pub overlay_refused: IntCounterVec,
    pub link_rtt: Histogram,
    pub cert_expiry: IntGauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_errors: IntCounter,
    pub cache_watch_connected: IntGauge,
    pub etcd_connected: IntGauge,
    pub link_refusals: IntCounterVec,
    pub link_malformed: IntCounter,
    pub up: IntGauge,
    /// Pre-resolved labelled counters of the SIP path.
    pub hot: Hot,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// Latency buckets from 250 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0,
    ]
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let registry =
            Registry::new_custom(None, Some([("node".to_string(), node.to_string())].into()))
                .expect("valid registry");
        let r = &registry;
        let mut m = Metrics {
            requests: counter_vec(
                r,
                "ringmesh_sip_requests_total",
                "SIP requests received, by method and transport",
                &["method", "transport"],
            ),
            responses_sent: counter_vec(
                r,
                "ringmesh_sip_responses_sent_total",
                "SIP responses sent, by status class and transport",
                &["class", "transport"],
            ),
            responses_received: counter_vec(
                r,
                "ringmesh_sip_responses_received_total",
                "SIP responses received, by status class and transport",
                &["class", "transport"],
            ),
            parse_errors: counter_vec(
                r,
                "ringmesh_sip_parse_errors_total",
                "Malformed SIP messages, by kind (request answered, response dropped, stream closed)",
                &["kind", "transport"],
            ),
            transactions: gauge(
                r,
                "ringmesh_sip_transactions",
                "Live SIP transactions (client and server)",
            ),
            registrations: counter_vec(
                r,
                "ringmesh_registrations_total",
                "REGISTER requests by outcome",
                &["result"],
            ),
            call_setups: counter_vec(
                r,
                "ringmesh_call_setups_total",
                "Out-of-dialog INVITEs from leaves by final outcome at their edge (answered, busy, cancelled, rejected, failed = 408 or 5xx)",
                &["result"],
            ),
            aors: gauge(
                r,
                "ringmesh_location_aors",
                "Addresses-of-record with at least one binding held here",
            ),
            bindings: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "ringmesh_location_bindings",
                        "Bindings held here, by replica role",
                    ),
                    &["role"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            call_setup: histogram(
                r,
                "ringmesh_call_setup_seconds",
                "INVITE received to first final response sent upstream",
                latency_buckets(),
            ),
            register_latency: histogram(
                r,
                "ringmesh_register_seconds",
                "REGISTER received to final response sent",
                latency_buckets(),
            ),
            calls_active: gauge(
                r,
                "ringmesh_sip_calls_active",
                "INVITE transactions in progress through this node",
            ),
            auth_failures: counter_vec(
                r,
                "ringmesh_auth_failures_total",
                "Digest authentication failures, by reason",
                &["reason"],
            ),
            refused: counter_vec(
                r,
                "ringmesh_sip_refused_total",
                "Requests refused by a rule of the farm (not in a dialog, contact address, too many contacts, barred callee, no emergency route, forged response, Path from a phone, Service-Route, too many subscriptions, application server return, transit to the PSTN or to another domain, a peer farm over its rate)",
                &["reason"],
            ),
            guard: counter_vec(
                r,
                "ringmesh_guard_events_total",
                "Brute-force protection: bans applied (pair_banned, source_banned), banned requests refused or dropped, bans lifted",
                &["event"],
            ),
            emergency: counter(
                r,
                "ringmesh_sip_emergency_requests_total",
                "Emergency requests (urn:service:sos, emergency numbers) received",
            ),
            overload_peer_refusals: counter(
                r,
                "ringmesh_overload_peer_refusals_total",
                "New requests answered 503 with Retry-After here because the supernode of every reachable binding of the callee said it is overloaded",
            ),
            peers_overloaded: gauge(
                r,
                "ringmesh_overlay_peers_overloaded",
                "Other members that said they are overloaded (new requests for their phones are refused here)",
            ),
            overload_rejections: counter_vec(
                r,
                "ringmesh_overload_rejections_total",
                "Requests answered 503 because the node is over capacity",
                &["transport"],
            ),
            overload_shed: counter_vec(
                r,
                "ringmesh_overload_shed_total",
                "New requests answered 503 with Retry-After by a transport reader, by the signal that tripped (queue_depth, queue_delay, transactions, pending)",
                &["reason"],
            ),
            overload_active: gauge(
                r,
                "ringmesh_overload_active",
                "1 while any overload signal (queueing delay, queue depth, transactions, pending lookups) is over its limit: new requests are being shed",
            ),
            queue_delay: gauge(
                r,
                "ringmesh_sip_inbound_queue_delay_microseconds",
                "Smoothed sojourn of inbound SIP messages, from the kernel's queue (UDP receive timestamp) to the SIP core: what overload control judges",
            ),
            transactions_lingering: gauge(
                r,
                "ringmesh_sip_transactions_lingering",
                "Completed server transactions kept only to answer retransmissions (Timer J); included in ringmesh_sip_transactions",
            ),
            connections: gauge(
                r,
                "ringmesh_sip_connections",
                "Open SIP connections (TCP): accepted, and opened by this node (from the start of the connect)",
            ),
            connections_refused: counter_vec(
                r,
                "ringmesh_sip_connections_refused_total",
                "TCP connections refused, by direction (inbound: accepted and reset at once; outbound: not opened, the message dropped) and reason (max_connections: the node's cap; per_ip: the peer address's cap)",
                &["direction", "reason"],
            ),
            connections_open: gauge_vec(
                r,
                "ringmesh_sip_connections_open",
                "SIP connections open (accepted and opened), by transport",
                &["transport"],
            ),
            outbound_flows: gauge(
                r,
                "ringmesh_sip_outbound_flows",
                "Flows this edge holds RFC 5626 outbound registrations on",
            ),
            flows_failed: counter_vec(
                r,
                "ringmesh_sip_outbound_flows_failed_total",
                "Outbound flows that failed, their bindings removed at once, by reason (closed: the connection closed; silent: nothing heard for the Flow-Timer plus a margin)",
                &["reason"],
            ),
            subscription_events: counter_vec(
                r,
                "ringmesh_sip_subscription_events_total",
                "Farm-wide subscriptions (reg event) by event: accepted and refreshed SUBSCRIBEs taken here, NOTIFYs sent by this node as a notifier, subscriptions ended (ran out or un-SUBSCRIBEd) and dropped because the watcher answered 481 or nothing",
                &["event"],
            ),
            app_server_events: counter_vec(
                r,
                "ringmesh_sip_app_server_events_total",
                "Initial requests on their way through application servers (initial filter criteria) by event: sent to a server, returned by it to continue, and failed (no answer, or 408/5xx before a provisional response) with the request continued without the server or failed",
                &["event"],
            ),
            offline_messages: counter_vec(
                r,
                "ringmesh_sip_offline_messages_total",
                "Messages for subscribers with no reachable device by event: kept (202), refused because the mailbox was full (480), answered 202 and dropped because they were for no subscriber or a barred one, delivered to a device that registered (2xx), deferred (the device did not take it now) and refused by the device for good (dropped)",
                &["event"],
            ),
            gateway_events: counter_vec(
                r,
                "ringmesh_sip_gateway_events_total",
                "PSTN gateways by gateway and event: calls sent to it, answered (2xx), refused for good (4xx other than 408, 6xx: the caller gets that answer), failed over to the next gateway (408, 5xx, no answer in time, transport error); and the gateway going down (a probe unanswered) and up again",
                &["gateway", "event"],
            ),
            enum_lookups: counter_vec(
                r,
                "ringmesh_sip_enum_lookups_total",
                "ENUM lookups for calls to numbers no subscriber owns, by result: local (a URI of this farm, routed here), direct (a URI naming an address, sent there), foreign (another domain: to its servers, found by RFC 3263), none (no SIP record: the gateways), failed (DNS did not answer: the gateways)",
                &["result"],
            ),
            located_calls: counter_vec(
                r,
                "ringmesh_sip_located_calls_total",
                "Requests to other domains' servers, found by RFC 3263, by peer farm (peer: its name; other: the URI an ENUM record names) and event: sent to a server, answered (2xx), refused for good (a final answer other than 408 and 503), failed over to the next server (408, 503, no answer in time, transport error, failed TLS handshake), exhausted (no server left or reachable: an ENUM call goes to the gateways, a peer's request gets 503)",
                &["peer", "event"],
            ),
            gateway_up: gauge_vec(
                r,
                "ringmesh_sip_gateway_up",
                "Whether each PSTN gateway answers this node's OPTIONS probes (1) or not (0: no call is sent to it)",
                &["gateway"],
            ),
            gateway_active: gauge_vec(
                r,
                "ringmesh_sip_gateway_active_calls",
                "Calls this node has up or being set up at each PSTN gateway (its cap is per node)",
                &["gateway"],
            ),
            cdr: crate::cdr::CdrMetrics {
                records: counter_vec(
                    r,
                    "ringmesh_cdr_records_total",
                    "Call records made durable (written and synced) by this node as an originating edge, by record: interim (a call answered) and final (an attempt ended)",
                    &["record"],
                ),
                write_errors: counter(
                    r,
                    "ringmesh_cdr_write_errors_total",
                    "Group commits of call records that failed (the records of that commit are lost; the log says why)",
                ),
                commit_seconds: histogram(
                    r,
                    "ringmesh_cdr_commit_seconds",
                    "Time to write and fdatasync one group commit of call records",
                    latency_buckets(),
                ),
            },
            calls_up: gauge(
                r,
                "ringmesh_cdr_calls_up",
                "Answered calls this node is the originating edge of and keeps the record of",
            ),
            handshake_failures: counter_vec(
                r,
                "ringmesh_sip_handshake_failures_total",
                "Connections closed because their TLS or WebSocket handshake failed or did not finish within tcp-first-message-timeout, by transport and stage (tls, websocket)",
                &["transport", "stage"],
            ),
            tls_reloads: counter_vec(
                r,
                "ringmesh_sip_tls_reloads_total",
                "Changed SIP TLS certificate files: reloaded, or failed to load (the old certificate stays)",
                &["result"],
            ),
            tls_cert_expiry: gauge(
                r,
                "ringmesh_sip_tls_certificate_expiry_timestamp_seconds",
                "When the first of the SIP TLS certificates in use expires (UNIX seconds; 0 without TLS)",
            ),
            connection_timeouts: counter_vec(
                r,
                "ringmesh_sip_connection_timeouts_total",
                "TCP connections closed by a timeout, by reason (first_message: no complete request within tcp-first-message-timeout of the accept; message: a message not finished within tcp-message-timeout; idle: nothing for tcp-idle-timeout)",
                &["reason"],
            ),
            rate_limited: counter_vec(
                r,
                "ringmesh_sip_rate_limited_total",
                "SIP messages a transport reader dropped unread and unanswered, by reason (source_rate: the source spent its source-rate-limit bucket; sources_full: the table of sources was full and the untracked sources' share was spent) and transport",
                &["reason", "transport"],
            ),
            inbound_queue: gauge(
                r,
                "ringmesh_sip_inbound_queue",
                "New work waiting for the SIP core: requests and connection events (what overload control bounds and sheds)",
            ),
            finishing_queue: gauge(
                r,
                "ringmesh_sip_finishing_queue",
                "Finishing work waiting for the SIP core: responses, ACKs and what other supernodes send (served first, never shed)",
            ),
            forwarded: counter_vec(
                r,
                "ringmesh_proxy_forwarded_total",
                "Requests forwarded by the proxy, by method",
                &["method"],
            ),
            links: gauge(
                r,
                "ringmesh_overlay_links",
                "Open overlay links (QUIC connections to other supernodes)",
            ),
            overlay_members: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "ringmesh_overlay_members",
                        "Farm members in this node's view, by state",
                    ),
                    &["state"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            ring_size: gauge(
                r,
                "ringmesh_overlay_ring_size",
                "Members alive on the ring, as this node sees it",
            ),
            lookup_hops: histogram(
                r,
                "ringmesh_overlay_lookup_hops",
                "Overlay hops of reads and writes started here",
                vec![0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0],
            ),
            overlay_op_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "ringmesh_overlay_operation_seconds",
                        "Latency of overlay reads (get) and quorum writes (put) started here",
                    )
                    .buckets(latency_buckets()),
                    &["op"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            overlay_writes: counter_vec(
                r,
                "ringmesh_overlay_writes_total",
                "Replicated writes started here, by result (failed: no quorum before the deadline)",
                &["result"],
            ),
            quorum_failures: counter(
                r,
                "ringmesh_overlay_quorum_failures_total",
                "Writes that did not reach a quorum of replicas",
            ),
            replicas_below_k: gauge(
                r,
                "ringmesh_overlay_replicas_below_k",
                "Replicas of this node's range not confirmed in sync at the last anti-entropy round",
            ),
            records: gauge(
                r,
                "ringmesh_overlay_records",
                "Records (one per address of record or other key) this node's overlay store holds",
            ),
            repairs: counter(
                r,
                "ringmesh_overlay_repaired_records_total",
                "Records changed here by hand-off or anti-entropy repair",
            ),
            anti_entropy_rounds: counter(
                r,
                "ringmesh_overlay_anti_entropy_rounds_total",
                "Anti-entropy rounds run by this node",
            ),
            failures_detected: counter(
                r,
                "ringmesh_overlay_failures_detected_total",
                "Neighbours this node declared dead",
            ),
            overlay_forwarded: counter(
                r,
                "ringmesh_overlay_forwarded_total",
                "Operations forwarded on because a sender's view was stale",
            ),
            overlay_refused: counter_vec(
                r,
                "ringmesh_overlay_refused_total",
                "Overlay writes refused, by reason (member_record: an implausible incarnation; \
                 not_replica: a record from a node outside its replica set; entry: stamped too \
                 far ahead or expiring too late)",
                &["reason"],
            ),
            cert_expiry: gauge(
                r,
                "ringmesh_node_certificate_expiry_seconds",
                "Seconds until this node's certificate expires (negative: expired)",
            ),
            cache_hits: counter(
                r,
                "ringmesh_subscriber_cache_hits_total",
                "Subscriber lookups answered from the cache",
            ),
            cache_misses: counter(
                r,
                "ringmesh_subscriber_cache_misses_total",
                "Subscriber lookups that asked provisioning",
            ),
            cache_errors: counter(
                r,
                "ringmesh_subscriber_cache_errors_total",
                "Subscriber lookups that failed: provisioning unreachable and not in the cache",
            ),
            cache_watch_connected: gauge(
                r,
                "ringmesh_subscriber_cache_watch_connected",
                "1 while the subscriber cache's Watch stream to provisioning is up",
            ),
            etcd_connected: gauge(
                r,
                "ringmesh_etcd_connected",
                "1 while this node's membership lease in etcd is kept alive",
            ),
            link_rtt: histogram(
                r,
                "ringmesh_overlay_link_rtt_seconds",
                "QUIC round-trip time of overlay links, sampled each second",
                latency_buckets(),
            ),
            link_refusals: counter_vec(
                r,
                "ringmesh_overlay_link_refusals_total",
                "Overlay links refused, by reason (tls, identity, version, other)",
                &["reason"],
            ),
            link_malformed: counter(
                r,
                "ringmesh_overlay_malformed_messages_total",
                "Overlay messages that failed to decode (the link is closed)",
            ),
            up: gauge(r, "ringmesh_up", "1 while the process serves"),
            hot: Hot::default(),
            registry,
        };
        // Resolve (and so create) every labelled series of the SIP path.
        let by_wire = |v: &IntCounterVec, first: &str| -> [IntCounter; WIRES] {
            Wire::ALL.map(|w| v.with_label_values(&[first, w.as_label()]))
        };
        m.hot = Hot {
            requests: MethodLabel::all()
                .map(|x| by_wire(&m.requests, x.as_label()))
                .collect(),
            responses_sent: Class::all()
                .map(|c| by_wire(&m.responses_sent, c.as_label()))
                .collect(),
            responses_received: Class::all()
                .map(|c| by_wire(&m.responses_received, c.as_label()))
                .collect(),
            forwarded: MethodLabel::all()
                .map(|x| m.forwarded.with_label_values(&[x.as_label()]))
                .collect(),
            registrations: Registration::ALL
                .iter()
                .map(|r| m.registrations.with_label_values(&[r.as_label()]))
                .collect(),
            call_setups: CallResult::ALL
                .iter()
                .map(|r| m.call_setups.with_label_values(&[r.as_label()]))
                .collect(),
            overload_rejections: Wire::ALL
                .iter()
                .map(|w| m.overload_rejections.with_label_values(&[w.as_label()]))
                .collect(),
            shed: ShedReason::ALL
                .iter()
                .map(|r| m.overload_shed.with_label_values(&[r.as_label()]))
                .collect(),
            refused: Direction::ALL
                .iter()
                .map(|d| {
                    ConnRefusal::ALL.map(|r| {
                        m.connections_refused
                            .with_label_values(&[d.as_label(), r.as_label()])
                    })
                })
                .collect(),
            timeouts: ConnTimeout::ALL
                .iter()
                .map(|t| m.connection_timeouts.with_label_values(&[t.as_label()]))
                .collect(),
            rate_limited: LimitReason::ALL
                .iter()
                .map(|r| {
                    Transport::ALL.map(|t| {
                        m.rate_limited
                            .with_label_values(&[r.as_label(), t.as_str()])
                    })
                })
                .collect(),
            handshake_failures: HANDSHAKES
                .iter()
                .map(|(t, stage)| m.handshake_failures.with_label_values(&[t.as_str(), stage]))
                .collect(),
            open_connections: STREAMS
                .iter()
                .map(|t| m.connections_open.with_label_values(&[t.as_str()]))
                .collect(),
        };
        for why in ringmesh_proxy::observe::FlowFailure::ALL {
            m.flows_failed.with_label_values(&[why.as_label()]);
        }
        for e in ringmesh_proxy::observe::SubscriptionEvent::ALL {
            m.subscription_events.with_label_values(&[e.as_label()]);
        }
        for e in ringmesh_proxy::observe::AppServerEvent::ALL {
            m.app_server_events.with_label_values(&[e.as_label()]);
        }
        for e in ringmesh_proxy::observe::MailEvent::ALL {
            m.offline_messages.with_label_values(&[e.as_label()]);
        }
        for r in ringmesh_proxy::observe::EnumResult::ALL {
            m.enum_lookups.with_label_values(&[r.as_label()]);
        }
        for e in ringmesh_proxy::observe::LocatedEvent::ALL {
            m.located_calls.with_label_values(&["other", e.as_label()]);
        }
        for record in ["interim", "final"] {
            m.cdr.records.with_label_values(&[record]);
        }
        for result in ["reloaded", "failed"] {
            m.tls_reloads.with_label_values(&[result]);
        }
        for w in Wire::ALL {
            for k in ["request", "response", "stream"] {
                m.parse_errors.with_label_values(&[k, w.as_label()]);
            }
        }
        for reason in AuthFailure::ALL {
            m.auth_failures.with_label_values(&[reason.as_label()]);
        }
        for reason in Refusal::ALL {
            m.refused.with_label_values(&[reason.as_label()]);
        }
        for e in GuardEvent::ALL {
            m.guard.with_label_values(&[e.as_label()]);
        }
        for role in ["primary", "replica"] {
            m.bindings.with_label_values(&[role]);
        }
        for s in ["joining", "alive", "leaving", "left", "dead"] {
            m.overlay_members.with_label_values(&[s]);
        }
        for op in ["get", "put"] {
            m.overlay_op_seconds.with_label_values(&[op]);
        }
        for res in ["ok", "failed"] {
            m.overlay_writes.with_label_values(&[res]);
        }
        for reason in ["tls", "identity", "revoked", "version", "other"] {
            m.link_refusals.with_label_values(&[reason]);
        }
        m.up.set(1);
        let build = IntGaugeVec::new(
            Opts::new(
                "ringmesh_build_info",
                "1, labelled with the release and the overlay protocol version this node runs \
                 (two protocol versions in a farm: an upgrade in progress)",
            ),
            &["version", "protocol"],
        )
        .expect("valid metric");
        m.registry
            .register(Box::new(build.clone()))
            .expect("unique metric");
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &ringmesh_overlay::ProtocolVersion::CURRENT.to_string(),
            ])
            .set(1);
        m
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let enc = prometheus::TextEncoder::new();
        let _ = enc.encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// A counter that is not labelled, for callers that just count.
pub fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// The proxy's metric events, counted.
impl Observer for Metrics {
    fn observe(&self, m: Metric<'_>) {
        match m {
            Metric::ResponseSent { status, transport } => {
                self.hot.response_sent(status, transport.into())
            }
            Metric::Forwarded { method } => self.hot.forwarded(method),
            Metric::Registration(r) => self.hot.registration(r),
            Metric::AuthFailure(why) => self
                .auth_failures
                .with_label_values(&[why.as_label()])
                .inc(),
            Metric::Refused(why) => self.refused.with_label_values(&[why.as_label()]).inc(),
            Metric::Emergency => self.emergency.inc(),
            Metric::PeerOverloaded => self.overload_peer_refusals.inc(),
            Metric::Guard(e) => self.guard.with_label_values(&[e.as_label()]).inc(),
            Metric::RegisterLatency(d) => self.register_latency.observe(d.as_secs_f64()),
            Metric::CallSetup { status } => self.hot.call_setup(status),
            Metric::CallSetupLatency(d) => self.call_setup.observe(d.as_secs_f64()),
            Metric::CallStarted => self.calls_active.inc(),
            Metric::CallEnded => self.calls_active.dec(),
            Metric::FlowFailed(why) => self.flows_failed.with_label_values(&[why.as_label()]).inc(),
            Metric::Subscription(e) => self
                .subscription_events
                .with_label_values(&[e.as_label()])
                .inc(),
            Metric::AppServer(e) => self
                .app_server_events
                .with_label_values(&[e.as_label()])
                .inc(),
            Metric::Mail(e) => self
                .offline_messages
                .with_label_values(&[e.as_label()])
                .inc(),
            Metric::Enum(r) => self.enum_lookups.with_label_values(&[r.as_label()]).inc(),
            Metric::Located { peer, event } => self
                .located_calls
                .with_label_values(&[peer.unwrap_or("other"), event.as_label()])
                .inc(),
            Metric::Gateway { name, event } => self
                .gateway_events
                .with_label_values(&[name, event.as_label()])
                .inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle node answers with a zero for every reason a leaf's
    /// credentials are refused, and each event lands under its own label.
    #[test]
    fn every_auth_failure_reason_is_exported_from_the_start() {
        let m = Metrics::new("sn-test");
        let series = |text: &str, reason: &str| {
            let label = format!("reason=\"{reason}\"");
            text.lines()
                .find(|l| l.starts_with("ringmesh_auth_failures_total{") && l.contains(&label))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        let text = m.render();
        for reason in AuthFailure::ALL {
            // Written with every variant, so that a new one must be placed.
            let listed = match reason {
                AuthFailure::UnknownUser
                | AuthFailure::BadCredentials
                | AuthFailure::StaleNonce
                | AuthFailure::ForeignNonce
                | AuthFailure::Replay
                | AuthFailure::Barred
                | AuthFailure::ForbiddenIdentity => reason.as_label(),
            };
            assert_eq!(series(&text, listed).as_deref(), Some("0"), "{listed}");
        }
        assert_eq!(AuthFailure::ALL.len(), 7, "ALL lists every variant");
        m.observe(Metric::AuthFailure(AuthFailure::Replay));
        m.observe(Metric::AuthFailure(AuthFailure::ForeignNonce));
        m.observe(Metric::AuthFailure(AuthFailure::ForeignNonce));
        let text = m.render();
        assert_eq!(series(&text, "replay").as_deref(), Some("1"));
        assert_eq!(series(&text, "foreign_nonce").as_deref(), Some("2"));
    }

    #[test]
    fn call_outcomes() {
        let label = |s| CallResult::of(s).as_label();
        for (status, want) in [
            (200, "answered"),
            (202, "answered"),
            (486, "busy"),
            (600, "busy"),
            (487, "cancelled"),
            (404, "rejected"),
            (480, "rejected"),
            (603, "rejected"),
            (302, "rejected"),
            (408, "failed"),
            (500, "failed"),
            (503, "failed"),
        ] {
            assert_eq!(label(status), want, "{status}");
        }
    }
}
