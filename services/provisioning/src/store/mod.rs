//! The store of subscribers and trusted elements: two traits
//! ([`SubscriberStore`], [`TrustStore`], together [`Store`]), two
//! implementations.
//!
//! - [`EtcdStore`]: production, on etcd 3.4+ (keys under a prefix,
//!   transactions keep the public-identity index consistent, etcd's
//!   revisions drive Watch).
//! - [`EmbeddedStore`]: the default, in a data directory (an append-only
//!   log, compacted atomically; its own revision counter; Watch from an
//!   in-memory history and a broadcast channel).
//!
//! Both keep the same invariants, which the service relies on:
//! - a private identity names at most one subscriber, and a public identity
//!   belongs to at most one subscriber ([`StoreError::AlreadyExists`]); a
//!   name, at most one trusted element ([`StoreError::ElementExists`]), and
//!   there are at most [`MAX_TRUSTED_ELEMENTS`] of them;
//! - every change gets a revision greater than all earlier ones (one
//!   sequence for subscribers and trusted elements), and a record's
//!   `revision` field is the revision of its last change;
//! - [`SubscriberStore::watch`] and [`TrustStore::watch_trusted`] deliver
//!   changes (each of its own records) in revision order, and say `RESET`
//!   when they cannot replay from the revision asked for.
//!
//! Stores take values that the service has validated
//! ([`crate::validate`]); they check consistency, not syntax.

mod embedded;
mod etcd;

use std::future::Future;
use std::pin::Pin;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdOptions, EtcdStore};
use futures::Stream;
use ringmesh_proto::provisioning::{
    Barring, Credentials, EventType, ImplicitSet, ServiceProfile, Subscriber, TrustedElement,
    TrustedElementEvent, WatchEvent,
};
pub use ringmesh_provisioning_client::validate::MAX_TRUSTED_ELEMENTS;

/// A stream of events, ending with an error when the store fails.
pub type Events<E> = Pin<Box<dyn Stream<Item = Result<E, StoreError>> + Send + 'static>>;
/// A stream of subscriber watch events.
pub type EventStream = Events<WatchEvent>;
/// A stream of trusted-element watch events.
pub type TrustEventStream = Events<TrustedElementEvent>;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such subscriber.
    #[error("no subscriber with {field} '{value}'")]
    NotFound {
        /// `private_id` or `public_id`.
        field: &'static str,
        value: String,
    },
    /// The identity is taken.
    #[error("{field} '{value}' already belongs to subscriber '{owner}'")]
    AlreadyExists {
        /// `private_id` or `public_ids`.
        field: &'static str,
        value: String,
        owner: String,
    },
    /// A conditional change found another revision.
    #[error("subscriber '{private_id}' is at revision {actual}, not the expected {expected}")]
    RevisionMismatch {
        private_id: String,
        expected: u64,
        actual: u64,
    },
    /// The backing store cannot be reached or did not answer in time.
    #[error("subscriber store unavailable: {0}")]
    Unavailable(String),
    /// A stored record does not decode.
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// No trusted element with that name.
    #[error("no trusted element named '{name}'")]
    ElementNotFound { name: String },
    /// The name is taken.
    #[error("a trusted element named '{name}' already exists")]
    ElementExists { name: String },
    /// A conditional delete found another revision.
    #[error("trusted element '{name}' is at revision {actual}, not the expected {expected}")]
    ElementRevisionMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    /// The table of trusted elements is full.
    #[error("the table already holds {limit} trusted elements, the most it may; remove one first")]
    TooManyElements { limit: usize },
}

/// A change to an existing subscriber.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Replaces the public identities, implicit sets, service profile and
    /// region.
    Profile {
        public_ids: Vec<String>,
        implicit_sets: Vec<ImplicitSet>,
        service_profile: Option<ServiceProfile>,
        region: String,
    },
    /// Replaces the credentials.
    Credentials(Credentials),
    /// Replaces the barring state.
    Barring(Barring),
}

impl Change {
    /// Applies the change to a copy of the stored subscriber.
    pub fn apply(&self, sub: &mut Subscriber) {
        match self {
            Change::Profile {
                public_ids,
                implicit_sets,
                service_profile,
                region,
            } => {
                sub.public_ids = public_ids.clone();
                sub.implicit_sets = implicit_sets.clone();
                sub.service_profile = service_profile.clone();
                sub.region = region.clone();
            }
            Change::Credentials(c) => sub.credentials = Some(c.clone()),
            Change::Barring(b) => sub.barring = Some(b.clone()),
        }
    }
}

/// One page of [`SubscriberStore::list`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// Subscribers in ascending private-identity order.
    pub subscribers: Vec<Subscriber>,
    /// Whether more follow the last one.
    pub more: bool,
}

/// Where subscribers live. Implementations are cheap to share (`Arc`) and
/// put a deadline on every call to a backing service: a store that cannot
/// answer returns [`StoreError::Unavailable`], it never hangs.
pub trait SubscriberStore: Send + Sync + 'static {
    /// Creates a subscriber; its `private_id` and `public_ids` must be free.
    /// Sets `revision` and the times.
    fn create(
        &self,
        sub: Subscriber,
    ) -> impl Future<Output = Result<Subscriber, StoreError>> + Send;

    /// Reads a subscriber by private identity.
    fn get(&self, private_id: &str) -> impl Future<Output = Result<Subscriber, StoreError>> + Send;

    /// Reads the subscriber owning a public identity (canonical form).
    fn get_by_public(
        &self,
        public_id: &str,
    ) -> impl Future<Output = Result<Subscriber, StoreError>> + Send;

    /// Up to `limit` subscribers whose private identity sorts after `after`.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Applies `change`, if the subscriber is still at `expected_revision`
    /// when one is given. New public identities must be free.
    fn update(
        &self,
        private_id: &str,
        expected_revision: Option<u64>,
        change: Change,
    ) -> impl Future<Output = Result<Subscriber, StoreError>> + Send;

    /// Deletes a subscriber and its public identities; returns the
    /// revision of the deletion.
    fn delete(
        &self,
        private_id: &str,
        expected_revision: Option<u64>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Changes from `start_revision` on (0: from now): the replayed changes
    /// (or a `RESET` when they are gone, or when `store_id`, if not 0, names
    /// another store than this one), then live changes, with `SYNCED`
    /// keep-alives carrying the current revision in between. Markers carry
    /// this store's id.
    fn watch(
        &self,
        start_revision: u64,
        store_id: u64,
    ) -> impl Future<Output = Result<EventStream, StoreError>> + Send;

    /// The current revision; fails when the store is unreachable (readiness).
    fn current_revision(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Where trusted elements live: a small table, read whole, changed by
/// creating and deleting elements. Same deadlines as [`SubscriberStore`].
pub trait TrustStore: Send + Sync + 'static {
    /// Creates an element; its name must be free and the table not full
    /// ([`MAX_TRUSTED_ELEMENTS`]). Sets `revision` and the time.
    fn create_trusted(
        &self,
        element: TrustedElement,
    ) -> impl Future<Output = Result<TrustedElement, StoreError>> + Send;

    /// Reads an element by name.
    fn get_trusted(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<TrustedElement, StoreError>> + Send;

    /// Every element in ascending name order, and the store revision the
    /// list reflects (a consistent snapshot: following
    /// [`TrustStore::watch_trusted`] from the next revision misses nothing).
    fn list_trusted(
        &self,
    ) -> impl Future<Output = Result<(Vec<TrustedElement>, u64), StoreError>> + Send;

    /// Deletes an element, if it is still at `expected_revision` when one
    /// is given; returns the revision of the deletion.
    fn delete_trusted(
        &self,
        name: &str,
        expected_revision: Option<u64>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Changes to the elements from `start_revision` on (0: from now), as
    /// [`SubscriberStore::watch`] delivers subscriber changes.
    fn watch_trusted(
        &self,
        start_revision: u64,
    ) -> impl Future<Output = Result<TrustEventStream, StoreError>> + Send;
}

/// Everything the service needs of a store.
pub trait Store: SubscriberStore + TrustStore {}

impl<S: SubscriberStore + TrustStore> Store for S {}

/// What a watch stream carries (a subscriber event or a trusted-element
/// event), so both streams share one implementation per store.
pub(crate) trait StoreEvent: Clone + Send + Sync + 'static {
    /// A RESET or SYNCED marker of the store `store` (subscriber events
    /// carry it; trusted-element watchers list the table again after every
    /// reconnection and need none).
    fn marker(kind: EventType, revision: u64, store: u64) -> Self;
    /// The event's type (wire value).
    fn kind(&self) -> i32;
    /// The event's revision.
    fn revision(&self) -> u64;
}

impl StoreEvent for WatchEvent {
    fn marker(kind: EventType, revision: u64, store: u64) -> Self {
        WatchEvent {
            store_id: store,
            ..event(kind, revision, None)
        }
    }
    fn kind(&self) -> i32 {
        self.r#type
    }
    fn revision(&self) -> u64 {
        self.revision
    }
}

impl StoreEvent for TrustedElementEvent {
    fn marker(kind: EventType, revision: u64, _store: u64) -> Self {
        trust_event(kind, revision, None)
    }
    fn kind(&self) -> i32 {
        self.r#type
    }
    fn revision(&self) -> u64 {
        self.revision
    }
}

/// Builds a trusted-element watch event.
pub fn trust_event(
    kind: EventType,
    revision: u64,
    element: Option<TrustedElement>,
) -> TrustedElementEvent {
    TrustedElementEvent {
        r#type: kind as i32,
        revision,
        element,
    }
}

/// Builds a watch event.
pub fn event(kind: EventType, revision: u64, subscriber: Option<Subscriber>) -> WatchEvent {
    WatchEvent {
        r#type: kind as i32,
        revision,
        subscriber,
        store_id: 0,
    }
}

/// Milliseconds since the UNIX epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Public identities in `new` that are not in `old`, and the reverse.
pub(crate) fn diff_public(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let added = new.iter().filter(|p| !old.contains(p)).cloned().collect();
    let removed = old.iter().filter(|p| !new.contains(p)).cloned().collect();
    (added, removed)
}
