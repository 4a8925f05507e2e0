//! # ringmesh-provisioning-client: provisioning as a supernode uses it
//!
//! The client half of the provisioning service, apart from its stores and
//! server, so that a supernode (internet-facing) links none of them.
//!
//! | module | what it holds |
//! |---|---|
//! | [`cache`] | [`SubscriberCache`]: subscribers fetched on first use, bounded, kept coherent by the Watch stream |
//! | [`trusted`] | [`trusted::follow`]: provisioning's trusted elements, followed by Watch |
//! | [`validate`] | validation of subscriber and trusted-element fields, shared with the service and the CLI |

pub mod cache;
pub mod trusted;
pub mod validate;

pub use cache::{CacheConfig, CacheError, CacheMetrics, Change, SubscriberCache};
