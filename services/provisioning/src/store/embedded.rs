//! The embedded store: subscribers and trusted elements in memory,
//! persisted in one append-only log in the data directory.
//!
//! ```text
//! <data>/subscribers.log   records: len (u32 BE) ‖ check (4 bytes) ‖ payload
//!     payload = LogRecord (protobuf): a subscriber put or delete, a
//!               trusted-element put or delete, or a revision marker
//!     check   = the first 4 bytes of SHA-256(payload)
//! ```
//!
//! Subscribers and trusted elements share the log and its revision
//! counter; each kind of record has its own fields in `LogRecord`, so a log
//! written before trusted elements existed reads the same.
//!
//! Every change is appended and synced to disk before it is acknowledged.
//! A torn last record (a crash mid-write) fails its length or check and is
//! cut off at open. When the log holds many more records than live
//! subscribers it is rewritten (to a temporary file, synced, then renamed
//! over the old one), ending with a marker that keeps the revision counter,
//! so revisions never go back after a restart.
//!
//! Watch replays from an in-memory history of recent events and follows a
//! broadcast channel (one of each for subscribers, one for trusted
//! elements); a watcher asking for a revision older than the history (e.g.
//! after a restart), or falling behind the channel, gets a `RESET`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message as _;
use ringmesh_proto::provisioning::{
    EventType, Subscriber, TrustedElement, TrustedElementEvent, WatchEvent,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use super::{
    Change, EventStream, Events, MAX_TRUSTED_ELEMENTS, Page, StoreError, StoreEvent,
    SubscriberStore, TrustEventStream, TrustStore, diff_public, event, now_ms, trust_event,
};

const LOG_FILE: &str = "subscribers.log";
/// The store's id (16 hex digits), made with the directory: a watcher that
/// followed the store of a wiped directory starts over.
const ID_FILE: &str = "store-id";
/// Events kept for replay.
const HISTORY: usize = 4096;
/// Largest record accepted when reading the log.
const MAX_RECORD: usize = 16 << 20;

/// One log record.
#[derive(Clone, PartialEq, prost::Message)]
struct LogRecord {
    /// The revision of this change (or, for a marker, the store revision).
    #[prost(uint64, tag = "1")]
    revision: u64,
    /// The subscriber's new state.
    #[prost(message, optional, tag = "2")]
    put: Option<Subscriber>,
    /// The private identity deleted.
    #[prost(string, tag = "3")]
    delete: String,
    /// A trusted element created.
    #[prost(message, optional, tag = "4")]
    trusted_put: Option<TrustedElement>,
    /// The name of a trusted element deleted.
    #[prost(string, tag = "5")]
    trusted_delete: String,
}

/// The recent events of one kind and the channel that publishes them.
#[derive(Debug)]
struct Feed<E> {
    /// Events after `replayable_after`, oldest first.
    history: VecDeque<E>,
    replayable_after: u64,
    tx: broadcast::Sender<E>,
}

impl<E: StoreEvent> Feed<E> {
    fn new(revision: u64) -> Feed<E> {
        Feed {
            history: VecDeque::new(),
            replayable_after: revision,
            tx: broadcast::channel(1024).0,
        }
    }

    /// Keeps the event for replay and sends it to the live watchers.
    fn publish(&mut self, ev: E) {
        if self.history.len() == HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.replayable_after = old.revision();
        }
        self.history.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }
}

fn subscriber_feed(inner: &mut Inner) -> &mut Feed<WatchEvent> {
    &mut inner.subscriber_events
}

fn trust_feed(inner: &mut Inner) -> &mut Feed<TrustedElementEvent> {
    &mut inner.trust_events
}

#[derive(Debug)]
struct Inner {
    subscribers: BTreeMap<String, Subscriber>,
    /// Canonical public identity -> private identity.
    public: HashMap<String, String>,
    trusted: BTreeMap<String, TrustedElement>,
    revision: u64,
    subscriber_events: Feed<WatchEvent>,
    trust_events: Feed<TrustedElementEvent>,
    log: File,
    log_records: usize,
}

impl Inner {
    /// Whether the log holds many more records than live ones.
    fn wants_compaction(&self) -> bool {
        self.log_records > 2 * (self.subscribers.len() + self.trusted.len()) + 1000
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    id: u64,
    inner: Mutex<Inner>,
    keepalive: Duration,
}

/// The embedded subscriber store (see the module docs). Cloning shares it.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
}

fn frame(rec: &LogRecord) -> Vec<u8> {
    let payload = rec.encode_to_vec();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&Sha256::digest(&payload)[..4]);
    out.extend_from_slice(&payload);
    out
}

/// The id in `dir`, made (random, not 0) when there is none yet.
fn store_id(dir: &Path) -> Result<u64, StoreError> {
    let path = dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "{} holds no store id (16 hex digits); remove it to make a new one",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = rand::random::<u64>().max(1);
            let tmp = dir.join(format!("{ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id:016x}\n"))
                .and_then(|()| File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| io("cannot write", &path, e))?;
            Ok(id)
        }
        Err(e) => Err(io("cannot read", &path, e)),
    }
}

/// Decodes the records of a log; returns them and the length of the valid
/// prefix (a torn tail is ignored).
fn parse_log(bytes: &[u8]) -> (Vec<LogRecord>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if Sha256::digest(payload)[..4] != bytes[at + 4..at + 8] {
            break;
        }
        match LogRecord::decode(payload) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (out, at)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, Duration::from_secs(30))
    }

    /// Opens the store with a custom Watch keep-alive interval.
    pub fn open_with(dir: &Path, keepalive: Duration) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io("cannot read", &path, e))?;
        }
        let (records, valid) = parse_log(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), dropped = bytes.len() - valid, "cutting a torn tail off the subscriber log");
        }
        let mut subscribers = BTreeMap::new();
        let mut trusted = BTreeMap::new();
        let mut revision = 0;
        for r in &records {
            revision = revision.max(r.revision);
            if let Some(s) = &r.put {
                let mut s = s.clone();
                if let Some(p) = s.service_profile.as_mut() {
                    crate::validate::migrate_profile(p);
                }
                subscribers.insert(s.private_id.clone(), s);
            } else if !r.delete.is_empty() {
                subscribers.remove(&r.delete);
            }
            if let Some(t) = &r.trusted_put {
                trusted.insert(t.name.clone(), t.clone());
            } else if !r.trusted_delete.is_empty() {
                trusted.remove(&r.trusted_delete);
            }
        }
        let mut public = HashMap::new();
        for s in subscribers.values() {
            for p in &s.public_ids {
                public.insert(p.clone(), s.private_id.clone());
            }
        }
        // The log holds every HA1: its owner alone reads it, also when an
        // older release created it wider.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("cannot open", &path, e))?;
        log.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("cannot restrict", &path, e))?;
        if valid < bytes.len() {
            log.set_len(valid as u64)
                .map_err(|e| io("cannot truncate", &path, e))?;
        }
        let inner = Inner {
            log_records: records.len(),
            subscribers,
            public,
            trusted,
            revision,
            subscriber_events: Feed::new(revision),
            trust_events: Feed::new(revision),
            log,
        };
        let store = EmbeddedStore {
            shared: Arc::new(Shared {
                id: store_id(dir)?,
                dir: dir.to_path_buf(),
                inner: Mutex::new(inner),
                keepalive,
            }),
        };
        {
            let mut inner = store.shared.inner.lock();
            if inner.wants_compaction() {
                store.compact(&mut inner)?;
            }
        }
        Ok(store)
    }

    /// How many subscribers the store holds.
    pub fn len(&self) -> usize {
        self.shared.inner.lock().subscribers.len()
    }

    /// Whether the store holds no subscriber.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many trusted elements the store holds.
    pub fn trusted_len(&self) -> usize {
        self.shared.inner.lock().trusted.len()
    }

    /// Rewrites the log with only the live subscribers and trusted
    /// elements, and a revision marker.
    fn compact(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let path = self.shared.dir.join(LOG_FILE);
        let tmp = self.shared.dir.join(format!("{LOG_FILE}.tmp"));
        let mut buf = Vec::new();
        for s in inner.subscribers.values() {
            buf.extend(frame(&LogRecord {
                revision: s.revision,
                put: Some(s.clone()),
                ..Default::default()
            }));
        }
        for t in inner.trusted.values() {
            buf.extend(frame(&LogRecord {
                revision: t.revision,
                trusted_put: Some(t.clone()),
                ..Default::default()
            }));
        }
        buf.extend(frame(&LogRecord {
            revision: inner.revision,
            ..Default::default()
        }));
        let write = || -> std::io::Result<File> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.shared.dir)?.sync_all()?;
            OpenOptions::new().append(true).open(&path)
        };
        inner.log = write().map_err(|e| io("cannot compact", &path, e))?;
        inner.log_records = inner.subscribers.len() + inner.trusted.len() + 1;
        Ok(())
    }

    /// Appends a subscriber record, syncs it, then publishes the event.
    fn commit(&self, inner: &mut Inner, rec: LogRecord, ev: WatchEvent) -> Result<(), StoreError> {
        self.append(inner, &rec)?;
        inner.subscriber_events.publish(ev);
        Ok(())
    }

    /// Appends a record and syncs it; the revision is the record's.
    fn append(&self, inner: &mut Inner, rec: &LogRecord) -> Result<(), StoreError> {
        let path = self.shared.dir.join(LOG_FILE);
        let bytes = frame(rec);
        let res = inner
            .log
            .write_all(&bytes)
            .and_then(|()| inner.log.sync_data());
        if let Err(e) = res {
            // Cut a partial write so the log stays a clean sequence.
            let _ = inner.log.metadata().and_then(|m| {
                inner
                    .log
                    .set_len(m.len().saturating_sub(bytes.len() as u64))
            });
            return Err(io("cannot append to", &path, e));
        }
        inner.log_records += 1;
        inner.revision = rec.revision;
        Ok(())
    }

    /// Compacts the log once it holds many more records than live ones.
    /// Called after the in-memory maps reflect every appended record.
    fn maybe_compact(&self, inner: &mut Inner) {
        if inner.wants_compaction()
            && let Err(e) = self.compact(inner)
        {
            tracing::warn!(error = %e, "subscriber log compaction failed; the log keeps growing");
        }
    }

    fn create_sync(&self, mut sub: Subscriber) -> Result<Subscriber, StoreError> {
        let mut inner = self.shared.inner.lock();
        if inner.subscribers.contains_key(&sub.private_id) {
            return Err(StoreError::AlreadyExists {
                field: "private_id",
                value: sub.private_id.clone(),
                owner: sub.private_id,
            });
        }
        for p in &sub.public_ids {
            if let Some(owner) = inner.public.get(p) {
                return Err(StoreError::AlreadyExists {
                    field: "public_ids",
                    value: p.clone(),
                    owner: owner.clone(),
                });
            }
        }
        let rev = inner.revision + 1;
        let now = now_ms();
        sub.revision = rev;
        sub.created_unix_ms = now;
        sub.updated_unix_ms = now;
        let rec = LogRecord {
            revision: rev,
            put: Some(sub.clone()),
            ..Default::default()
        };
        self.commit(
            &mut inner,
            rec,
            event(EventType::Put, rev, Some(sub.clone())),
        )?;
        for p in &sub.public_ids {
            inner.public.insert(p.clone(), sub.private_id.clone());
        }
        inner
            .subscribers
            .insert(sub.private_id.clone(), sub.clone());
        self.maybe_compact(&mut inner);
        Ok(sub)
    }

    fn update_sync(
        &self,
        private_id: &str,
        expected: Option<u64>,
        change: Change,
    ) -> Result<Subscriber, StoreError> {
        let mut inner = self.shared.inner.lock();
        let old =
            inner
                .subscribers
                .get(private_id)
                .cloned()
                .ok_or_else(|| StoreError::NotFound {
                    field: "private_id",
                    value: private_id.to_string(),
                })?;
        if let Some(e) = expected
            && e != old.revision
        {
            return Err(StoreError::RevisionMismatch {
                private_id: private_id.to_string(),
                expected: e,
                actual: old.revision,
            });
        }
        let mut sub = old.clone();
        change.apply(&mut sub);
        let (added, removed) = diff_public(&old.public_ids, &sub.public_ids);
        for p in &added {
            if let Some(owner) = inner.public.get(p) {
                return Err(StoreError::AlreadyExists {
                    field: "public_ids",
                    value: p.clone(),
                    owner: owner.clone(),
                });
            }
        }
        let rev = inner.revision + 1;
        sub.revision = rev;
        sub.updated_unix_ms = now_ms();
        let rec = LogRecord {
            revision: rev,
            put: Some(sub.clone()),
            ..Default::default()
        };
        self.commit(
            &mut inner,
            rec,
            event(EventType::Put, rev, Some(sub.clone())),
        )?;
        for p in removed {
            inner.public.remove(&p);
        }
        for p in added {
            inner.public.insert(p, sub.private_id.clone());
        }
        inner
            .subscribers
            .insert(sub.private_id.clone(), sub.clone());
        self.maybe_compact(&mut inner);
        Ok(sub)
    }

    fn delete_sync(&self, private_id: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        let mut inner = self.shared.inner.lock();
        let old =
            inner
                .subscribers
                .get(private_id)
                .cloned()
                .ok_or_else(|| StoreError::NotFound {
                    field: "private_id",
                    value: private_id.to_string(),
                })?;
        if let Some(e) = expected
            && e != old.revision
        {
            return Err(StoreError::RevisionMismatch {
                private_id: private_id.to_string(),
                expected: e,
                actual: old.revision,
            });
        }
        let rev = inner.revision + 1;
        let rec = LogRecord {
            revision: rev,
            delete: private_id.to_string(),
            ..Default::default()
        };
        let mut last = old.clone();
        last.revision = rev;
        inner.subscribers.remove(private_id);
        if let Err(e) = self.commit(&mut inner, rec, event(EventType::Delete, rev, Some(last))) {
            inner.subscribers.insert(private_id.to_string(), old);
            return Err(e);
        }
        for p in &old.public_ids {
            inner.public.remove(p);
        }
        self.maybe_compact(&mut inner);
        Ok(rev)
    }

    fn create_trusted_sync(&self, mut el: TrustedElement) -> Result<TrustedElement, StoreError> {
        let mut inner = self.shared.inner.lock();
        if inner.trusted.contains_key(&el.name) {
            return Err(StoreError::ElementExists { name: el.name });
        }
        if inner.trusted.len() >= MAX_TRUSTED_ELEMENTS {
            return Err(StoreError::TooManyElements {
                limit: MAX_TRUSTED_ELEMENTS,
            });
        }
        let rev = inner.revision + 1;
        el.revision = rev;
        el.created_unix_ms = now_ms();
        let rec = LogRecord {
            revision: rev,
            trusted_put: Some(el.clone()),
            ..Default::default()
        };
        self.append(&mut inner, &rec)?;
        inner.trusted.insert(el.name.clone(), el.clone());
        inner
            .trust_events
            .publish(trust_event(EventType::Put, rev, Some(el.clone())));
        self.maybe_compact(&mut inner);
        Ok(el)
    }

    fn delete_trusted_sync(&self, name: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        let mut inner = self.shared.inner.lock();
        let old = inner
            .trusted
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::ElementNotFound { name: name.into() })?;
        if let Some(e) = expected
            && e != old.revision
        {
            return Err(StoreError::ElementRevisionMismatch {
                name: name.into(),
                expected: e,
                actual: old.revision,
            });
        }
        let rev = inner.revision + 1;
        let rec = LogRecord {
            revision: rev,
            trusted_delete: name.to_string(),
            ..Default::default()
        };
        self.append(&mut inner, &rec)?;
        inner.trusted.remove(name);
        let mut last = old;
        last.revision = rev;
        inner
            .trust_events
            .publish(trust_event(EventType::Delete, rev, Some(last)));
        self.maybe_compact(&mut inner);
        Ok(rev)
    }

    /// Changes of one kind from `start_revision` on: the replay from the
    /// history (or a RESET), a SYNCED, then live changes and keep-alives.
    fn watch_feed<E: StoreEvent>(
        &self,
        start_revision: u64,
        store_id: u64,
        feed: fn(&mut Inner) -> &mut Feed<E>,
    ) -> Events<E> {
        let id = self.shared.id;
        let other_store = store_id != 0 && store_id != id;
        let (first, current, mut rx) = {
            let mut inner = self.shared.inner.lock();
            let current = inner.revision;
            let f = feed(&mut inner);
            let rx = f.tx.subscribe();
            let first: Vec<E> = if start_revision == 0 {
                Vec::new()
            } else if other_store
                || start_revision <= f.replayable_after
                || start_revision > current + 1
            {
                vec![E::marker(EventType::Reset, current, id)]
            } else {
                f.history
                    .iter()
                    .filter(|e| e.revision() >= start_revision)
                    .cloned()
                    .collect()
            };
            (first, current, rx)
        };
        let keepalive = self.shared.keepalive;
        let weak = Arc::downgrade(&self.shared);
        async_stream(move |tx| async move {
            for e in first {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            let mut last = current;
            if tx
                .send(Ok(E::marker(EventType::Synced, current, id)))
                .await
                .is_err()
            {
                return;
            }
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
            loop {
                let item = tokio::select! {
                    r = rx.recv() => match r {
                        Ok(e) => { last = e.revision(); e }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Fell behind: start over from the current revision.
                            // Subscribing under the lock (changes publish under
                            // it) leaves no gap after the RESET.
                            let Some(shared) = weak.upgrade() else { return };
                            let mut inner = shared.inner.lock();
                            last = inner.revision;
                            rx = feed(&mut inner).tx.subscribe();
                            E::marker(EventType::Reset, last, id)
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => E::marker(EventType::Synced, last, id),
                    () = tx.closed() => return,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

impl SubscriberStore for EmbeddedStore {
    async fn create(&self, sub: Subscriber) -> Result<Subscriber, StoreError> {
        self.blocking(move |s| s.create_sync(sub)).await
    }

    async fn get(&self, private_id: &str) -> Result<Subscriber, StoreError> {
        self.shared
            .inner
            .lock()
            .subscribers
            .get(private_id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                field: "private_id",
                value: private_id.to_string(),
            })
    }

    async fn get_by_public(&self, public_id: &str) -> Result<Subscriber, StoreError> {
        let inner = self.shared.inner.lock();
        inner
            .public
            .get(public_id)
            .and_then(|p| inner.subscribers.get(p))
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                field: "public_id",
                value: public_id.to_string(),
            })
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        use std::ops::Bound;
        let inner = self.shared.inner.lock();
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        let mut it = inner
            .subscribers
            .range((lower, Bound::Unbounded))
            .map(|(_, s)| s.clone());
        let subscribers: Vec<Subscriber> = it.by_ref().take(limit).collect();
        let more = it.next().is_some();
        Ok(Page { subscribers, more })
    }

    async fn update(
        &self,
        private_id: &str,
        expected_revision: Option<u64>,
        change: Change,
    ) -> Result<Subscriber, StoreError> {
        let id = private_id.to_string();
        self.blocking(move |s| s.update_sync(&id, expected_revision, change))
            .await
    }

    async fn delete(
        &self,
        private_id: &str,
        expected_revision: Option<u64>,
    ) -> Result<u64, StoreError> {
        let id = private_id.to_string();
        self.blocking(move |s| s.delete_sync(&id, expected_revision))
            .await
    }

    async fn watch(&self, start_revision: u64, store_id: u64) -> Result<EventStream, StoreError> {
        Ok(self.watch_feed(start_revision, store_id, subscriber_feed))
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        Ok(self.shared.inner.lock().revision)
    }
}

impl TrustStore for EmbeddedStore {
    async fn create_trusted(&self, element: TrustedElement) -> Result<TrustedElement, StoreError> {
        self.blocking(move |s| s.create_trusted_sync(element)).await
    }

    async fn get_trusted(&self, name: &str) -> Result<TrustedElement, StoreError> {
        self.shared
            .inner
            .lock()
            .trusted
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::ElementNotFound { name: name.into() })
    }

    async fn list_trusted(&self) -> Result<(Vec<TrustedElement>, u64), StoreError> {
        let inner = self.shared.inner.lock();
        Ok((inner.trusted.values().cloned().collect(), inner.revision))
    }

    async fn delete_trusted(
        &self,
        name: &str,
        expected_revision: Option<u64>,
    ) -> Result<u64, StoreError> {
        let name = name.to_string();
        self.blocking(move |s| s.delete_trusted_sync(&name, expected_revision))
            .await
    }

    async fn watch_trusted(&self, start_revision: u64) -> Result<TrustEventStream, StoreError> {
        Ok(self.watch_feed(start_revision, 0, trust_feed))
    }
}

/// Runs `f` as a task feeding a bounded channel, and returns the channel as
/// a stream. The task ends when the receiver is dropped.
pub(crate) fn async_stream<E, F, Fut>(f: F) -> Events<E>
where
    E: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<E, StoreError>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_ignored() {
        let mut log = frame(&LogRecord {
            revision: 1,
            delete: "a".into(),
            ..Default::default()
        });
        let good = log.len();
        log.extend(
            &frame(&LogRecord {
                revision: 2,
                delete: "b".into(),
                ..Default::default()
            })[..5],
        );
        let (recs, valid) = parse_log(&log);
        assert_eq!(recs.len(), 1);
        assert_eq!(valid, good);
        let mut bad = frame(&LogRecord {
            revision: 3,
            delete: "c".into(),
            ..Default::default()
        });
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(parse_log(&bad).0.len(), 0, "a flipped bit fails the check");
    }

    #[test]
    fn the_log_of_hashes_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(EmbeddedStore::open(dir.path()).unwrap());
        assert_eq!(mode(&path), 0o600, "created 0600");
        // A log an older release left readable by all is restricted.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
        // Compaction writes a new file: 0600 too.
        store.compact(&mut store.shared.inner.lock()).unwrap();
        assert_eq!(mode(&path), 0o600, "after compaction");
    }
}
