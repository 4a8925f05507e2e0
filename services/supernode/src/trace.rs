//! The live SIP trace: every message in and out of the SIP core, published
//! on a broadcast channel only while someone listens (the admin API's
//! `SipTrace`).

use bytes::Bytes;

/// One SIP message through the node.
#[derive(Debug, Clone)]
pub struct TraceRecord {
    pub at_ms: u64,
    pub inbound: bool,
    pub transport: &'static str,
    pub remote: String,
    pub raw: Bytes,
}
