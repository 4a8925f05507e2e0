//! # ringmesh-proxy: the registrar and proxy rules, sans-IO
//!
//! Every SIP decision a supernode makes — what is challenged, loop
//! detection, Max-Forwards, the domain served, where a request goes,
//! forking and the best response, Record-Route and flow tokens, the
//! registrar's rules — lives here, as a state machine with no I/O and no
//! runtime: SIP messages, location results, subscriber answers and timer
//! expiries go in with the current time; bytes to send, location
//! operations and the next deadline come out. The tokio driver in
//! `ringmesh-supernode` moves the bytes and runs the operations.
//!
//! | module | what it holds |
//! |---|---|
//! | [`proxy`] | [`Proxy`]: the state machine; its inputs, [`Action`]s and rules |
//! | [`registrar`] | RFC 3261 §10.3 and RFC 5626 §6 REGISTER rules as plain functions |
//! | [`subscription`] | farm-wide subscriptions as records, and reg event documents |
//! | [`binding`] | [`Binding`], [`FlowRef`], [`Transport`] and their encodings |
//! | [`location`] | location operations, and the node-local [`LocalStore`] |
//! | [`auth`] | digest authentication against a subscriber [`Directory`] |
//! | [`guard`] | brute-force bans, counted farm-wide |
//! | [`token`] | signed flow tokens in Record-Route, and [`Dest`] |
//! | [`trust`] | the [`TrustTable`] of elements that are not phones |
//! | [`addresses`] | [`Me`]: this node's domain and addresses |
//! | [`observe`] | the [`Metric`] events the proxy reports to an [`Observer`] |
//!
//! Start from [`Proxy::handle_message`] and [`Proxy::poll_action`]; the
//! unit tests in `proxy/tests` drive a proxy on a virtual clock.

pub mod addresses;
pub mod auth;
pub mod binding;
pub mod cdr;
pub mod discovery;
pub mod dns;
pub mod gateways;
pub mod guard;
pub mod ifc;
pub mod locate;
pub mod location;
pub mod mailbox;
pub mod observe;
pub mod presence;
pub mod proxy;
pub mod registrar;
pub mod subscription;
pub mod token;
pub mod trust;

pub use addresses::Me;
pub use auth::{Auth, Directory, SubscriberInfo};
pub use binding::{Binding, FlowRef, Transport};
pub use location::{LocalStore, Located, LocationError, LocationOp};
pub use observe::{Metric, Observer};
pub use proxy::{
    Action, Config, Load, Members, Now, Policy, Proxy, SubscriberChange, TurnPolicy, is_emergency,
};
pub use registrar::RegistrarConfig;
pub use token::{Dest, TokenKeys};
pub use trust::TrustTable;
