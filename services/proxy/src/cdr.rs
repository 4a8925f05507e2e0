//! Call records: what the originating edge of a call attempt says about it
//! ([`crate::Action::CallRecord`]); the supernode writes them as JSON lines
//! (docs/operations.md, "Call records").
//!
//! An attempt that fails gets one final record. An answered call gets an
//! interim record at the answer (so a crash of the edge mid-call still
//! leaves a trace of it) and a final one when it ends: a BYE through the
//! edge, or the longest dialog the farm carries running out.

/// How a call attempt ended, or stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// Answered and still up (interim records only).
    Answered,
    /// Answered, then ended by a BYE.
    Completed,
    /// A final response other than 2xx (busy, not found, no answer...).
    Failed,
    /// The caller cancelled it before an answer (487).
    Cancelled,
    /// Answered and still open when the longest dialog ran out: closed as
    /// such (`end_ms` is that moment).
    MaxDuration,
    /// Answered and open when the edge that kept the record died; written
    /// by that edge when it starts again (`end_ms` is then).
    EdgeLost,
}

impl CallResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Answered => "answered",
            CallResult::Completed => "completed",
            CallResult::Failed => "failed",
            CallResult::Cancelled => "cancelled",
            CallResult::MaxDuration => "max_duration",
            CallResult::EdgeLost => "edge_lost",
        }
    }
}

/// Who ended an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Caller,
    Callee,
    /// The farm: the longest dialog ran out, or the edge was lost.
    Farm,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Callee => "callee",
            EndedBy::Farm => "farm",
        }
    }
}

/// One record of one call attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// An interim record (the call is up); its final one follows.
    pub interim: bool,
    /// The IMS charging id (`icid-value` of the P-Charging-Vector this
    /// edge put on the INVITE): the key that joins a call's records.
    pub icid: String,
    pub call_id: String,
    /// The identity the farm asserted for the caller (a front end's or an
    /// application server's own when they sent it), or the From.
    pub caller: String,
    /// The Request-URI the caller sent.
    pub callee: String,
    /// When the INVITE arrived, was answered, ended: ms since the epoch.
    pub invite_ms: u64,
    pub answer_ms: Option<u64>,
    pub end_ms: Option<u64>,
    /// The final status the caller got (0: none yet).
    pub status: u16,
    pub result: CallResult,
    pub ended_by: Option<EndedBy>,
    /// The supernodes on the path: this edge first, then those whose
    /// Record-Route the answer carried.
    pub nodes: Vec<[u8; 16]>,
}
