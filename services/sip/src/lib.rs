//! # ringmesh-sip: the sans-IO SIP core
//!
//! Everything a supernode needs to speak SIP, with no I/O and no runtime:
//! it takes bytes, events and the current time, and returns bytes to send
//! and when to wake it up. The tokio drivers live in `ringmesh-supernode`.
//!
//! | module | what it holds |
//! |---|---|
//! | [`message`] | [`Message`]: the zero-copy parser and typed header access |
//! | [`writer`] | [`Writer`]: new messages, responses, a proxy's forwarded copies |
//! | [`framing`] | message boundaries and CRLF keep-alives on streams, found incrementally |
//! | [`stun`] | STUN Binding keep-alives on UDP flows (RFC 5626 §4.4.2): told from SIP, answered |
//! | [`error`] | [`ParseError`]: why a message was refused, and the status to answer |
//! | [`salvage`] | the headers a 400 must echo, copied from a message that failed to parse |
//! | [`scan`] | byte-level lexing shared by every grammar, offsets into the buffer |
//! | [`uri`], [`name_addr`], [`via`] | borrowed views of URIs, addresses, Via |
//! | [`header`], [`method`] | header names (compact forms), methods |
//! | [`aor`] | the canonical address-of-record: the overlay key |
//! | [`transaction`] | [`TransactionLayer`]: RFC 3261 §17 / RFC 6026 client and server transactions, timers as data |
//! | [`digest`] | [`DigestAuth`]: digest credentials, challenges, node-bound nonces, each (nonce, nc) accepted once |
//!
//! Start from [`Message::parse`]: every validation a registrar or proxy
//! relies on happens there, once, and a failure carries the status to
//! answer with ([`ParseError::status`]). Then feed messages to a
//! [`TransactionLayer`] and act on its events.

pub mod aor;
pub mod digest;
pub mod error;
pub mod framing;
pub mod header;
pub mod message;
pub mod method;
pub mod name_addr;
pub mod salvage;
pub mod scan;
pub mod stun;
pub mod transaction;
pub mod uri;
pub mod via;
pub mod writer;

pub use digest::DigestAuth;
pub use error::{ParseError, reason_phrase};
pub use header::HeaderName;
pub use message::{Limits, Message};
pub use method::Method;
pub use name_addr::{Contact, NameAddr};
pub use transaction::TransactionLayer;
pub use uri::{Host, HostKind, Scheme, Uri};
pub use via::Via;
pub use writer::{Forward, Writer};
