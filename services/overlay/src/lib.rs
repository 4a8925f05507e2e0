//! Ringmesh's overlay, sans I/O.
//!
//! Supernodes form a ring (Chord-style, RELOAD-like) that acts as one
//! distributed registrar: every binding of an AOR is stored under the
//! SHA-256 of the canonical AOR on `min(k, N)` supernodes, written with a
//! majority quorum, merged per contact by a hybrid logical clock, handed over
//! on joins and leaves, re-replicated after failures and reconciled by
//! anti-entropy. This crate is the protocol and nothing else: it takes
//! messages, link events and the two clocks and returns messages to send,
//! events and the time to be woken. It never touches a socket, a file or a
//! clock, so the same code runs under the supernode's tokio driver and in the
//! deterministic simulator of thousands of nodes ([`sim`]).
//!
//! Start from [`Node`]: its docs describe the driver contract and the
//! application API (`put`, `get`, `lookup`, `route`, `leave`).
//!
//! # Modules
//!
//! | module | concept |
//! |---|---|
//! | [`id`] | [`NodeId`], [`Key`], ring positions and intervals |
//! | [`hlc`] | hybrid logical clock stamps ([`Hlc`]) |
//! | [`store`] | the stored-data model ([`Record`], [`Entry`]) and its merge |
//! | [`membership`] | member records and the shared, chunked member view |
//! | [`ring`] | successors, predecessors, fingers, owned ranges |
//! | [`routing`] | next-hop choice (full view, or greedy fingers) |
//! | [`replica`] | replica placement and quorum arithmetic |
//! | [`antientropy`] | range digests and the repair exchange |
//! | [`message`] | wire messages, validation, protobuf codec |
//! | [`version`] | protocol versions and the ALPN name |
//! | [`persist`] | log/snapshot frames for the data directory |
//! | [`timer`] | timers as data |
//! | [`stats`] | counters for metrics |
//! | [`node`] | the state machine tying it together |
//! | [`sim`] | the deterministic simulator |
//!
//! `DESIGN.md` beside this crate describes the protocol as built.

pub mod antientropy;
pub mod hlc;
pub mod id;
pub mod membership;
pub mod message;
pub mod node;
pub mod persist;
pub mod replica;
pub mod ring;
pub mod routing;
pub mod sim;
pub mod stats;
pub mod store;
pub mod timer;
pub mod version;

pub use hlc::{Hlc, HlcClock};
pub use id::{Key, NodeId, RingRange};
pub use membership::{MemberRecord, MemberState, MemberView};
pub use message::{Message, decode, encode};
pub use node::{Config, Event, Node, OpError, OpId, Phase, Transmit};
pub use routing::{NextHop, Route, RoutingMode};
pub use stats::Stats;
pub use store::{Entry, Record};
pub use version::{ALPN, ProtocolVersion, compatible};
