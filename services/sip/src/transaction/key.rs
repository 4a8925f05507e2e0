//! Matching messages to transactions (RFC 3261 §17.1.3 and §17.2.3).
//!
//! A match key is a byte string built from the fields the RFC compares,
//! each length-prefixed so that no two field lists share an encoding. The
//! layer builds lookup keys in a reused scratch buffer and allocates only
//! when it stores a new transaction.

use crate::message::Message;
use crate::method::Method;

fn field(out: &mut Vec<u8>, f: &[u8]) {
    out.extend_from_slice(&(f.len() as u32).to_le_bytes());
    out.extend_from_slice(f);
}

/// Client transactions (§17.1.3): the branch of the top Via and the CSeq
/// method. `out` is cleared first.
pub(crate) fn client(out: &mut Vec<u8>, branch: &[u8], method: &Method) {
    out.clear();
    field(out, branch);
    field(out, method.as_bytes());
}

/// Which rule of §17.2.3 a request is matched by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The branch carries the `z9hG4bK` cookie: branch, sent-by, method.
    Rfc3261,
    /// A pre-RFC 3261 branch (or none): Request-URI, tags, Call-ID, CSeq
    /// and the whole top Via.
    Rfc2543,
}

/// Server transactions (§17.2.3): the key of the transaction that `msg`
/// belongs to if that transaction was created by a request with method
/// `as_method` (INVITE for an ACK, or for the INVITE a CANCEL cancels).
///
/// Under the RFC 2543 rule the To tag takes part only for non-INVITE
/// transactions: an INVITE's retransmissions carry the same (usually
/// absent) To tag, while its ACK carries the tag of the response, which
/// the layer checks separately.
pub(crate) fn server(out: &mut Vec<u8>, msg: &Message, as_method: &Method) -> Rule {
    out.clear();
    let via = msg.top_via();
    if via.has_rfc3261_branch() {
        out.push(b'3');
        field(out, via.branch().unwrap_or_default());
        let host = via.host().text;
        out.extend_from_slice(&(host.len() as u32).to_le_bytes());
        out.extend(host.iter().map(u8::to_ascii_lowercase));
        out.extend_from_slice(&via.port().unwrap_or(0).to_le_bytes());
        field(out, as_method.as_bytes());
        Rule::Rfc3261
    } else {
        out.push(b'2');
        field(out, msg.request_uri_bytes());
        field(out, msg.from_tag().unwrap_or_default());
        field(out, msg.call_id());
        out.extend_from_slice(&msg.cseq().to_le_bytes());
        field(out, as_method.as_bytes());
        field(out, msg.top_via_bytes());
        if *as_method != Method::Invite {
            field(out, msg.to_tag().unwrap_or_default());
        }
        Rule::Rfc2543
    }
}
