//! The supernode side: [`SubscriberCache`], a bounded cache of subscribers
//! fetched from provisioning on first use and kept coherent by the Watch
//! stream.
//!
//! - A miss asks provisioning (GetSubscriber, with a deadline) and caches
//!   the answer; an unknown identity is remembered for a short while
//!   (negative caching), so a flood of bogus usernames costs one request
//!   per name per `negative_ttl`, not one per packet.
//! - The cache holds at most `capacity` subscribers and evicts the least
//!   recently used: no supernode ever holds the whole subscriber base.
//! - A background task follows Watch. A PUT replaces a cached subscriber
//!   (a password change or a barring is pushed, not polled), a DELETE drops
//!   it, a RESET drops everything. After a disconnection it reconnects with
//!   exponential backoff from the last revision it saw, so nothing that
//!   changed meanwhile is missed, and names the store that revision
//!   belongs to: a store replaced meanwhile (etcd restored from a backup
//!   reuses revision numbers for other changes) answers with a RESET.
//! - While provisioning (or etcd behind it) is down, cached subscribers
//!   keep being served; only misses fail, with [`CacheError::Unavailable`].
//! - A fetch that raced a change to the same subscriber is answered but not
//!   cached, so a stale answer can never outlive the event that replaced it.
//!
//! Metrics are plain atomics in [`CacheMetrics`]; the supernode exports
//! them to Prometheus.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;
use ringmesh_proto::provisioning::get_subscriber_request::Id;
use ringmesh_proto::provisioning::provisioning_client::ProvisioningClient;
use ringmesh_proto::provisioning::{
    EventType, GetSubscriberRequest, Subscriber, WatchEvent, WatchRequest,
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::validate;

/// How a [`SubscriberCache`] behaves.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Most subscribers held.
    pub capacity: usize,
    /// Deadline of one GetSubscriber.
    pub request_timeout: Duration,
    /// How long "no such subscriber" is remembered (0: not at all).
    pub negative_ttl: Duration,
    /// First delay before reconnecting the Watch stream.
    pub backoff_min: Duration,
    /// Longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// Mutual TLS to provisioning (a supernode presents its node
    /// certificate); None: plaintext.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 10_000,
            request_timeout: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// Counters for the supernode to export (e.g. as
/// `ringmesh_subscriber_cache_{hits,misses,errors}_total`).
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Lookups answered from the cache (including remembered misses).
    pub hits: AtomicU64,
    /// Lookups that asked provisioning.
    pub misses: AtomicU64,
    /// Lookups that failed (provisioning unreachable, timeout, error).
    pub errors: AtomicU64,
    /// Cached subscribers replaced or dropped by Watch events.
    pub invalidations: AtomicU64,
    /// Subscribers evicted to stay within capacity.
    pub evictions: AtomicU64,
    /// Watch streams (re)opened after the first.
    pub watch_reconnects: AtomicU64,
    /// Whether the Watch stream is up now.
    pub watch_connected: AtomicBool,
    /// The last store revision the Watch stream confirmed.
    pub watch_revision: AtomicU64,
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Provisioning cannot be reached (or did not answer in time) and the
    /// subscriber is not cached.
    #[error("provisioning unavailable: {0}")]
    Unavailable(String),
    /// The identity is malformed (never sent to provisioning).
    #[error("invalid identity: {0}")]
    Invalid(String),
    /// Provisioning answered with another error.
    #[error("provisioning error: {0}")]
    Server(String),
}

/// Keeps the public-identity index and the negative entries consistent
/// with the cached subscribers.
#[derive(Debug)]
struct State {
    /// Cached subscribers by private identity, in least-recently-used
    /// order. Unbounded here: [`State::insert`] evicts down to the
    /// capacity it is given, so the public index follows every eviction.
    entries: LruCache<String, Arc<Subscriber>>,
    /// Public identity -> private identity of a cached subscriber.
    public: HashMap<String, String>,
    negative: HashMap<String, Instant>,
    /// Bumped by every watch event.
    generation: u64,
    /// Recent events: (generation, private id, public ids); private id
    /// empty for a RESET.
    recent: VecDeque<(u64, String, Vec<String>)>,
}

impl Default for State {
    fn default() -> Self {
        State {
            entries: LruCache::unbounded(),
            public: HashMap::new(),
            negative: HashMap::new(),
            generation: 0,
            recent: VecDeque::new(),
        }
    }
}

const RECENT: usize = 1024;

fn neg_private(id: &str) -> String {
    format!("p\0{id}")
}

fn neg_public(aor: &str) -> String {
    format!("u\0{aor}")
}

impl State {
    /// The cached subscriber, now the most recently used.
    fn touch(&mut self, id: &str) -> Option<Arc<Subscriber>> {
        self.entries.get(id).cloned()
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(sub) = self.entries.pop(id) else {
            return false;
        };
        self.unindex(id, &sub);
        true
    }

    /// Drops the public identities that still point at `id`.
    fn unindex(&mut self, id: &str, sub: &Subscriber) {
        for p in &sub.public_ids {
            if self.public.get(p).is_some_and(|owner| owner == id) {
                self.public.remove(p);
            }
        }
    }

    fn insert(&mut self, sub: Arc<Subscriber>, capacity: usize, metrics: &CacheMetrics) {
        let id = sub.private_id.clone();
        self.remove(&id);
        self.negative.remove(&neg_private(&id));
        for p in &sub.public_ids {
            self.negative.remove(&neg_public(p));
            self.public.insert(p.clone(), id.clone());
        }
        self.entries.put(id, sub);
        while self.entries.len() > capacity.max(1) {
            let Some((oldest, sub)) = self.entries.pop_lru() else {
                break;
            };
            self.unindex(&oldest, &sub);
            metrics.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn negative_hit(&mut self, key: &str, now: Instant) -> bool {
        match self.negative.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.negative.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember_missing(&mut self, key: String, ttl: Duration, capacity: usize) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        if self.negative.len() >= capacity.max(1) {
            self.negative.retain(|_, until| *until > now);
            if self.negative.len() >= capacity.max(1) {
                self.negative.clear();
            }
        }
        self.negative.insert(key, now + ttl);
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.public.clear();
        self.negative.clear();
    }

    fn note(&mut self, id: String, public: Vec<String>) {
        self.generation += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.generation, id, public));
    }

    /// Whether anything since generation `since` may concern `sub` (or the
    /// public identity `asked`): then a fetched answer is not cached.
    fn raced(&self, since: u64, sub: Option<&Subscriber>, asked: Option<&str>) -> bool {
        if self.generation == since {
            return false;
        }
        if self.recent.front().is_none_or(|(g, _, _)| *g > since + 1) {
            return true; // the events since `since` are no longer all known
        }
        self.recent
            .iter()
            .filter(|(g, _, _)| *g > since)
            .any(|(_, id, public)| {
                id.is_empty()
                    || sub.is_some_and(|s| {
                        &s.private_id == id || s.public_ids.iter().any(|p| public.contains(p))
                    })
                    || asked.is_some_and(|a| public.iter().any(|p| p == a))
            })
    }

    /// Applies one Watch event; returns whether a cached entry changed.
    fn apply(&mut self, ev: &WatchEvent, capacity: usize, metrics: &CacheMetrics) -> bool {
        match EventType::try_from(ev.r#type) {
            Ok(EventType::Put) | Ok(EventType::Delete) => {
                let Some(sub) = &ev.subscriber else {
                    return false;
                };
                self.note(sub.private_id.clone(), sub.public_ids.clone());
                self.negative.remove(&neg_private(&sub.private_id));
                for p in &sub.public_ids {
                    self.negative.remove(&neg_public(p));
                }
                let cached = self.entries.contains(&sub.private_id);
                if ev.r#type == EventType::Put as i32 {
                    // A public identity moving in from another subscriber
                    // makes that one's cached copy stale.
                    let previous: Vec<String> = sub
                        .public_ids
                        .iter()
                        .filter_map(|p| self.public.get(p))
                        .filter(|o| **o != sub.private_id)
                        .cloned()
                        .collect();
                    for o in previous {
                        self.remove(&o);
                    }
                    if cached {
                        self.insert(Arc::new(sub.clone()), capacity, metrics);
                    }
                } else {
                    self.remove(&sub.private_id);
                }
                cached
            }
            Ok(EventType::Reset) => {
                self.note(String::new(), Vec::new());
                let had = !self.entries.is_empty();
                self.clear();
                had
            }
            _ => false,
        }
    }
}

/// A change to a subscriber the supernode acts on ([`SubscriberCache::changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Barred (it was not, as far as this cache knows) or deleted.
    Removed {
        private_id: String,
        public_ids: Vec<String>,
    },
    /// Its credentials changed (seen when it was cached here).
    Credentials { private_id: String },
}

/// What a watch event means for the farm, given the cached copy before it.
fn change_of(before: Option<&Subscriber>, ev: &WatchEvent) -> Option<Change> {
    let sub = ev.subscriber.as_ref()?;
    let barred = |s: &Subscriber| s.barring.as_ref().is_some_and(|b| b.barred);
    let removed = || Change::Removed {
        private_id: sub.private_id.clone(),
        public_ids: sub.public_ids.clone(),
    };
    match EventType::try_from(ev.r#type) {
        Ok(EventType::Delete) => Some(removed()),
        Ok(EventType::Put) if barred(sub) => (!before.is_some_and(barred)).then(removed),
        Ok(EventType::Put) => before
            .filter(|b| b.credentials != sub.credentials)
            .map(|_| Change::Credentials {
                private_id: sub.private_id.clone(),
            }),
        _ => None,
    }
}

struct Shared {
    state: Mutex<State>,
    client: ProvisioningClient<Channel>,
    config: CacheConfig,
    metrics: CacheMetrics,
    connected: tokio::sync::watch::Sender<bool>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// A bounded, Watch-invalidated cache of subscribers (see the module docs).
pub struct SubscriberCache {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SubscriberCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberCache")
            .field("capacity", &self.shared.config.capacity)
            .field("len", &self.len())
            .field("watching", &self.is_watching())
            .finish()
    }
}

impl Drop for SubscriberCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `HOST:PORT` or a URL, as a URL for tonic: `https` with TLS.
fn endpoint_url(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// A lazily connecting channel with keep-alives, so a dead peer is noticed
/// on an idle Watch stream too; over TLS when `tls` is given.
pub fn channel(
    addr: &str,
    timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, CacheError> {
    let mut ep = Endpoint::from_shared(endpoint_url(addr, tls.is_some()))
        .map_err(|e| CacheError::Invalid(format!("{addr}: {e}")))?;
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.clone())
            .map_err(|e| CacheError::Invalid(format!("{addr}: TLS: {e}")))?;
    }
    Ok(ep
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl SubscriberCache {
    /// A cache over the provisioning service at `addr` (`HOST:PORT` or a
    /// URL). It connects lazily: provisioning need not be up yet. Must be
    /// called inside a tokio runtime (it spawns the Watch task).
    pub fn connect(addr: &str, config: CacheConfig) -> Result<SubscriberCache, CacheError> {
        Ok(SubscriberCache::new(
            channel(addr, config.request_timeout, config.tls.as_ref())?,
            config,
        ))
    }

    /// A cache over an existing channel.
    pub fn new(channel: Channel, config: CacheConfig) -> SubscriberCache {
        let (connected, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            client: ProvisioningClient::new(channel),
            config,
            metrics: CacheMetrics::default(),
            connected,
            changes: tokio::sync::broadcast::channel(1024).0,
        });
        let task = tokio::spawn(watch_loop(shared.clone()));
        SubscriberCache { shared, task }
    }

    /// The changes to subscribers the farm acts on (barring, deletion, a
    /// new password), as the Watch stream delivers them.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// The subscriber with this private identity (digest username), or
    /// `None` if provisioning has none.
    pub async fn by_private_id(
        &self,
        private_id: &str,
    ) -> Result<Option<Arc<Subscriber>>, CacheError> {
        let id = validate::private_id("private_id", private_id)
            .map_err(|e| CacheError::Invalid(e.to_string()))?;
        let key = neg_private(&id);
        {
            let mut st = self.shared.state.lock();
            if let Some(s) = st.touch(&id) {
                self.shared.metrics.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(s));
            }
            if st.negative_hit(&key, Instant::now()) {
                self.shared.metrics.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
        }
        self.fetch(Id::PrivateId(id), key, None).await
    }

    /// The subscriber owning this public identity (any form of the AOR), or
    /// `None` if provisioning has none.
    pub async fn by_public_id(
        &self,
        public_id: &str,
    ) -> Result<Option<Arc<Subscriber>>, CacheError> {
        let aor = validate::public_id("public_id", public_id)
            .map_err(|e| CacheError::Invalid(e.to_string()))?;
        let key = neg_public(&aor);
        {
            let mut st = self.shared.state.lock();
            if let Some(id) = st.public.get(&aor).cloned()
                && let Some(s) = st.touch(&id)
            {
                self.shared.metrics.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(s));
            }
            if st.negative_hit(&key, Instant::now()) {
                self.shared.metrics.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
        }
        self.fetch(Id::PublicId(aor.clone()), key, Some(aor)).await
    }

    async fn fetch(
        &self,
        id: Id,
        neg_key: String,
        asked: Option<String>,
    ) -> Result<Option<Arc<Subscriber>>, CacheError> {
        let m = &self.shared.metrics;
        m.misses.fetch_add(1, Ordering::Relaxed);
        let since = self.shared.state.lock().generation;
        let timeout = self.shared.config.request_timeout;
        let mut req = tonic::Request::new(GetSubscriberRequest { id: Some(id) });
        req.set_timeout(timeout);
        let mut client = self.shared.client.clone();
        let answer = match tokio::time::timeout(timeout, client.get_subscriber(req)).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer in time")),
        };
        let capacity = self.shared.config.capacity;
        match answer {
            Ok(resp) => {
                let sub = Arc::new(resp.into_inner());
                let mut st = self.shared.state.lock();
                if !st.raced(since, Some(&sub), asked.as_deref()) {
                    st.insert(sub.clone(), capacity, m);
                }
                Ok(Some(sub))
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                let mut st = self.shared.state.lock();
                if !st.raced(since, None, asked.as_deref()) {
                    st.remember_missing(neg_key, self.shared.config.negative_ttl, capacity);
                }
                Ok(None)
            }
            Err(s) => {
                m.errors.fetch_add(1, Ordering::Relaxed);
                Err(match s.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => CacheError::Unavailable(s.message().to_string()),
                    tonic::Code::InvalidArgument => CacheError::Invalid(s.message().to_string()),
                    _ => CacheError::Server(format!("{:?}: {}", s.code(), s.message())),
                })
            }
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.shared.metrics
    }

    /// Subscribers cached now.
    pub fn len(&self) -> usize {
        self.shared.state.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the Watch stream is up (changes are being pushed).
    pub fn is_watching(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Waits until the Watch stream is up, at most `timeout`; returns
    /// whether it is.
    pub async fn wait_watching(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn watch_loop(shared: Arc<Shared>) {
    let cfg = &shared.config;
    let m = &shared.metrics;
    let mut backoff = cfg.backoff_min;
    let mut next_start = 0u64;
    // The store `next_start` belongs to (0 until the first marker).
    let mut store_id = 0u64;
    let mut first = true;
    loop {
        let mut client = shared.client.clone();
        match client
            .watch(WatchRequest {
                start_revision: next_start,
                store_id,
            })
            .await
        {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                if !first {
                    m.watch_reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                if next_start == 0 {
                    // Following from "now": whatever was fetched before may
                    // have missed a change.
                    let mut st = shared.state.lock();
                    st.note(String::new(), Vec::new());
                    st.clear();
                }
                m.watch_connected.store(true, Ordering::Relaxed);
                shared.connected.send_replace(true);
                backoff = cfg.backoff_min;
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            let kind =
                                EventType::try_from(ev.r#type).unwrap_or(EventType::Unspecified);
                            if kind == EventType::Reset {
                                next_start = ev.revision + 1;
                            } else {
                                next_start = next_start.max(ev.revision + 1);
                            }
                            if ev.store_id != 0 {
                                store_id = ev.store_id;
                            }
                            m.watch_revision.store(ev.revision, Ordering::Relaxed);
                            let change = {
                                let mut st = shared.state.lock();
                                let before = ev
                                    .subscriber
                                    .as_ref()
                                    .and_then(|s| st.entries.peek(&s.private_id).cloned());
                                if st.apply(&ev, cfg.capacity, m) {
                                    m.invalidations.fetch_add(1, Ordering::Relaxed);
                                }
                                change_of(before.as_deref(), &ev)
                            };
                            if let Some(c) = change {
                                let _ = shared.changes.send(c);
                            }
                            if kind != EventType::Synced {
                                tracing::debug!(kind = ?kind, revision = ev.revision, "subscriber change");
                            }
                        }
                        Ok(None) => {
                            tracing::info!("provisioning ended the subscriber watch; reconnecting");
                            break;
                        }
                        Err(s) => {
                            tracing::warn!(code = ?s.code(), message = s.message(), "subscriber watch failed; reconnecting");
                            break;
                        }
                    }
                }
                m.watch_connected.store(false, Ordering::Relaxed);
                shared.connected.send_replace(false);
            }
            Err(s) => {
                tracing::debug!(code = ?s.code(), message = s.message(), "cannot open the subscriber watch");
            }
        }
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, revision: u64, subscriber: Option<Subscriber>) -> WatchEvent {
        WatchEvent {
            r#type: kind as i32,
            revision,
            subscriber,
            store_id: 0,
        }
    }

    fn sub(id: &str, public: &[&str], rev: u64) -> Subscriber {
        Subscriber {
            private_id: id.into(),
            public_ids: public.iter().map(|s| s.to_string()).collect(),
            revision: rev,
            ..Default::default()
        }
    }

    #[test]
    fn changes_the_farm_acts_on() {
        let mut alice = sub("alice", &["sip:alice@d"], 5);
        let put = |s: &Subscriber| event(EventType::Put, s.revision, Some(s.clone()));
        let removed = Some(Change::Removed {
            private_id: "alice".into(),
            public_ids: vec!["sip:alice@d".into()],
        });
        assert_eq!(change_of(None, &put(&alice)), None, "a new subscriber");
        let before = alice.clone();
        alice.credentials = Some(ringmesh_proto::provisioning::Credentials {
            realm: "d".into(),
            ha1_md5: "0".repeat(32),
            ha1_sha256: String::new(),
        });
        assert_eq!(
            change_of(Some(&before), &put(&alice)),
            Some(Change::Credentials {
                private_id: "alice".into()
            })
        );
        assert_eq!(change_of(None, &put(&alice)), None, "not cached: unknown");
        let unbarred = alice.clone();
        alice.barring = Some(ringmesh_proto::provisioning::Barring {
            barred: true,
            reason: "fraud".into(),
        });
        assert_eq!(change_of(Some(&unbarred), &put(&alice)), removed);
        assert_eq!(
            change_of(None, &put(&alice)),
            removed,
            "barred, cached or not"
        );
        assert_eq!(
            change_of(Some(&alice), &put(&alice)),
            None,
            "already barred"
        );
        let del = event(EventType::Delete, 9, Some(unbarred));
        assert_eq!(change_of(None, &del), removed);
        assert_eq!(change_of(None, &event(EventType::Reset, 10, None)), None);
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let m = CacheMetrics::default();
        let mut st = State::default();
        st.insert(Arc::new(sub("a", &["sip:a@x"], 1)), 2, &m);
        st.insert(Arc::new(sub("b", &["sip:b@x"], 2)), 2, &m);
        assert!(st.touch("a").is_some());
        st.insert(Arc::new(sub("c", &["sip:c@x"], 3)), 2, &m);
        assert!(st.entries.contains("a") && st.entries.contains("c"));
        assert!(!st.entries.contains("b"), "b was least recently used");
        assert!(
            !st.public.contains_key("sip:b@x"),
            "its public index went with it"
        );
        assert_eq!(m.evictions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn events_replace_drop_and_reset() {
        let m = CacheMetrics::default();
        let mut st = State::default();
        st.insert(Arc::new(sub("a", &["sip:a@x"], 1)), 10, &m);
        assert!(st.apply(
            &event(EventType::Put, 5, Some(sub("a", &["sip:a2@x"], 5))),
            10,
            &m
        ));
        assert_eq!(st.touch("a").unwrap().revision, 5);
        assert_eq!(st.public.get("sip:a2@x").map(String::as_str), Some("a"));
        assert!(!st.public.contains_key("sip:a@x"));
        assert!(
            !st.apply(
                &event(EventType::Put, 6, Some(sub("z", &["sip:z@x"], 6))),
                10,
                &m
            ),
            "not cached: ignored"
        );
        assert!(!st.entries.contains("z"));
        assert!(st.apply(
            &event(EventType::Delete, 7, Some(sub("a", &["sip:a2@x"], 7))),
            10,
            &m
        ));
        assert!(st.entries.is_empty() && st.public.is_empty());
        st.insert(Arc::new(sub("b", &["sip:b@x"], 8)), 10, &m);
        assert!(st.apply(&event(EventType::Reset, 9, None), 10, &m));
        assert!(st.entries.is_empty());
    }

    #[test]
    fn a_fetch_that_raced_a_change_is_not_cached() {
        let m = CacheMetrics::default();
        let mut st = State::default();
        let since = st.generation;
        st.apply(
            &event(EventType::Put, 2, Some(sub("other", &["sip:o@x"], 2))),
            10,
            &m,
        );
        assert!(
            !st.raced(since, Some(&sub("a", &["sip:a@x"], 1)), None),
            "an unrelated change"
        );
        st.apply(
            &event(EventType::Put, 3, Some(sub("a", &["sip:a@x"], 3))),
            10,
            &m,
        );
        assert!(st.raced(since, Some(&sub("a", &["sip:a@x"], 1)), None));
        assert!(
            st.raced(since, None, Some("sip:a@x")),
            "a miss by public id raced its creation"
        );
    }

    #[test]
    fn negative_entries_expire_and_events_clear_them() {
        let m = CacheMetrics::default();
        let mut st = State::default();
        st.remember_missing(neg_private("ghost"), Duration::from_secs(60), 10);
        assert!(st.negative_hit(&neg_private("ghost"), Instant::now()));
        assert!(!st.negative_hit(
            &neg_private("ghost"),
            Instant::now() + Duration::from_secs(61)
        ));
        st.remember_missing(neg_private("ghost"), Duration::from_secs(60), 10);
        st.apply(
            &event(EventType::Put, 1, Some(sub("ghost", &["sip:g@x"], 1))),
            10,
            &m,
        );
        assert!(
            !st.negative_hit(&neg_private("ghost"), Instant::now()),
            "created: no longer missing"
        );
    }
}
