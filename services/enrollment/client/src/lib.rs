//! # ringmesh-enrollment-client: the node's side of enrollment
//!
//! What a supernode needs of the farm CA, apart from the CA itself: it
//! enrolls (a key made here, a CSR, a certificate binding the Node-ID the
//! CA chose) and reads node certificates.
//!
//! | module | what it holds |
//! |---|---|
//! | [`client`] | [`enroll`] and [`renew`]: the identity written to a node's directory |
//! | [`channel`] | TLS to the enrollment service, its CA pinned before the node holds it |
//! | [`cert`] | Node-IDs in certificates, PEM parsing, signature checks |
//! | [`revocations`] | the farm's CRL followed from enrollment, checked against the CA |
//! | [`tls`] | mutual TLS of the control plane's gRPC APIs and the roles of client certificates |

pub mod cert;
pub mod channel;
pub mod client;
pub mod revocations;
pub mod tls;

pub use client::{Bootstrap, EnrollError, EnrolledIdentity, enroll, renew};
