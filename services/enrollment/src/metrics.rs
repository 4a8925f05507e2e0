//! Metric definitions of the enrollment service, in one place.
//! Labels stay low-cardinality: the RPC name and the status code, never an
//! identity.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The enrollment service's metrics, registered in the process registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

/// The service's RPCs, as the `rpc` label spells them.
const RPCS: [&str; 6] = [
    "Enroll",
    "Renew",
    "GetCaBundle",
    "GetRevocations",
    "Revoke",
    "ListCertificates",
];
/// The `code` label values ([`crate::status::code_label`]).
const CODES: [&str; 8] = [
    "ok",
    "invalid_argument",
    "not_found",
    "permission_denied",
    "unauthenticated",
    "unavailable",
    "internal",
    "other",
];

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Metrics {
        let requests = IntCounterVec::new(
            Opts::new(
                "ringmesh_enrollment_requests_total",
                "Enrollment RPCs by method and status code",
            ),
            &["rpc", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ringmesh_enrollment_request_duration_seconds",
                "Enrollment RPC latency",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["rpc"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
        ] {
            // A second registration (two services in one registry) keeps the first.
            let _ = registry.register(c);
        }
        // Every series a dashboard or alert reads exists from start-up.
        for rpc in RPCS {
            duration.with_label_values(&[rpc]);
            for code in CODES {
                requests.with_label_values(&[rpc, code]);
            }
        }
        Metrics { requests, duration }
    }

    /// Records one finished RPC.
    pub fn observe(&self, rpc: &str, started: Instant, code: tonic::Code) {
        self.requests
            .with_label_values(&[rpc, crate::status::code_label(code)])
            .inc();
        self.duration
            .with_label_values(&[rpc])
            .observe(started.elapsed().as_secs_f64());
    }
}
