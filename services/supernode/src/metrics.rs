//! Every metric the supernode exports, defined in one place (STYLE.md §10).
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

pub const METHODS: [&str; 15] = [
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
pub const TRANSPORTS: [&str; 3] = ["udp", "tcp", "overlay"];
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];
/// Outcomes of a call setup at the caller's edge
/// (`ringmesh_call_setups_total`): see [`call_result`].
pub const CALL_RESULTS: [&str; 5] = ["answered", "busy", "cancelled", "rejected", "failed"];

/// The outcome (an index into [`CALL_RESULTS`]) of an INVITE answered
/// finally with `status`: answered (2xx); busy (486, 600); cancelled by the
/// caller (487); rejected by the callee or for what was asked (other
/// 3xx–6xx: not found, unavailable, declined, …); failed: the network's
/// fault (408 and 5xx), what a call-setup SLO counts against the farm.
pub fn call_result(status: u16) -> usize {
    match status {
        200..=299 => 0,
        486 | 600 => 1,
        487 => 2,
        408 | 500..=599 => 4,
        _ => 3,
    }
}

/// Why a new request was shed (`ringmesh_overload_shed_total`).
pub const SHED_REASONS: [&str; 4] = ["queue_depth", "queue_delay", "transactions", "pending"];

/// Index of a method's label in [`METHODS`].
pub fn method_index(m: &Method) -> usize {
    match m {
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
    }
}

/// Index of a transport label in [`TRANSPORTS`].
pub fn transport_index(t: &str) -> usize {
    match t {
        "udp" => 0,
        "tcp" => 1,
        _ => 2,
    }
}

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 6) - 1
}

/// The labelled counters the SIP path bumps for every message, resolved
/// once at start-up: `with_label_values` hashes its labels and takes a
/// lock on each call, which a register storm felt.
#[derive(Debug, Clone, Default)]
pub struct Hot {
    requests: Vec<[IntCounter; 3]>,
    responses_sent: Vec<[IntCounter; 3]>,
    responses_received: Vec<[IntCounter; 3]>,
    forwarded: Vec<IntCounter>,
    /// ok, challenged, rejected, failed.
    registrations: Vec<IntCounter>,
    call_setups: Vec<IntCounter>,
    overload_rejections: Vec<IntCounter>,
    shed: Vec<IntCounter>,
}

impl Hot {
    pub fn request(&self, m: &Method, transport: &str) {
        self.requests[method_index(m)][transport_index(transport)].inc();
    }
    pub fn response_sent(&self, status: u16, transport: &str) {
        self.responses_sent[class_index(status)][transport_index(transport)].inc();
    }
    pub fn response_received(&self, status: u16, transport: &str) {
        self.responses_received[class_index(status)][transport_index(transport)].inc();
    }
    pub fn forwarded(&self, m: &Method) {
        self.forwarded[method_index(m)].inc();
    }
    /// `result`: ok, challenged, rejected or failed.
    pub fn registration(&self, result: &str) {
        let i = match result {
            "ok" => 0,
            "challenged" => 1,
            "rejected" => 2,
            _ => 3,
        };
        self.registrations[i].inc();
    }
    /// A leaf's INVITE got its final response `status`.
    pub fn call_setup(&self, status: u16) {
        self.call_setups[call_result(status)].inc();
    }
    /// A new request answered 503 by the reader: `reason` indexes
    /// [`SHED_REASONS`].
    pub fn shed(&self, reason: usize, transport: &str) {
        self.overload_rejections[transport_index(transport)].inc();
        self.shed[reason.min(SHED_REASONS.len() - 1)].inc();
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
    pub overload_rejections: IntCounterVec,
    pub overload_shed: IntCounterVec,
    pub overload_active: IntGauge,
    pub queue_delay: IntGauge,
    pub transactions_lingering: IntGauge,
    pub connections: IntGauge,
    pub inbound_queue: IntGauge,
    pub forwarded: IntCounterVec,
    pub links: IntGauge,
    pub overlay_members: IntGaugeVec,
    pub ring_size: IntGauge,
    pub lookup_hops: Histogram,
    pub overlay_op_seconds: HistogramVec,
    pub overlay_writes: IntCounterVec,
    pub quorum_failures: IntCounter,
    pub replicas_below_k: IntGauge,
    pub repairs: IntCounter,
    pub anti_entropy_rounds: IntCounter,
    pub failures_detected: IntCounter,
    pub overlay_forwarded: IntCounter,
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
                "Smoothed time messages wait between a transport reader and the SIP core",
            ),
            transactions_lingering: gauge(
                r,
                "ringmesh_sip_transactions_lingering",
                "Completed server transactions kept only to answer retransmissions (Timer J); included in ringmesh_sip_transactions",
            ),
            connections: gauge(r, "ringmesh_sip_connections", "Open SIP connections (TCP)"),
            inbound_queue: gauge(
                r,
                "ringmesh_sip_inbound_queue",
                "Messages waiting for the SIP core",
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
        let by_transport = |v: &IntCounterVec, first: &str| -> [IntCounter; 3] {
            std::array::from_fn(|t| v.with_label_values(&[first, TRANSPORTS[t]]))
        };
        m.hot = Hot {
            requests: METHODS
                .iter()
                .map(|x| by_transport(&m.requests, x))
                .collect(),
            responses_sent: CLASSES
                .iter()
                .map(|c| by_transport(&m.responses_sent, c))
                .collect(),
            responses_received: CLASSES
                .iter()
                .map(|c| by_transport(&m.responses_received, c))
                .collect(),
            forwarded: METHODS
                .iter()
                .map(|x| m.forwarded.with_label_values(&[x]))
                .collect(),
            registrations: ["ok", "challenged", "rejected", "failed"]
                .iter()
                .map(|r| m.registrations.with_label_values(&[r]))
                .collect(),
            call_setups: CALL_RESULTS
                .iter()
                .map(|r| m.call_setups.with_label_values(&[r]))
                .collect(),
            overload_rejections: TRANSPORTS
                .iter()
                .map(|t| m.overload_rejections.with_label_values(&[t]))
                .collect(),
            shed: SHED_REASONS
                .iter()
                .map(|r| m.overload_shed.with_label_values(&[r]))
                .collect(),
        };
        for t in TRANSPORTS {
            for meth in METHODS {
                m.requests.with_label_values(&[meth, t]);
            }
            for c in CLASSES {
                m.responses_sent.with_label_values(&[c, t]);
                m.responses_received.with_label_values(&[c, t]);
            }
            for k in ["request", "response", "stream"] {
                m.parse_errors.with_label_values(&[k, t]);
            }
            m.overload_rejections.with_label_values(&[t]);
        }
        for res in ["ok", "challenged", "rejected", "failed"] {
            m.registrations.with_label_values(&[res]);
        }
        for reason in [
            "bad_credentials",
            "stale_nonce",
            "unknown_user",
            "forbidden_identity",
        ] {
            m.auth_failures.with_label_values(&[reason]);
        }
        for role in ["primary", "replica"] {
            m.bindings.with_label_values(&[role]);
        }
        for meth in METHODS {
            m.forwarded.with_label_values(&[meth]);
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
        m
    }

    pub fn class(status: u16) -> &'static str {
        CLASSES
            .get(usize::from(status / 100).saturating_sub(1))
            .copied()
            .unwrap_or("6xx")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_outcomes() {
        let label = |s| CALL_RESULTS[call_result(s)];
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
