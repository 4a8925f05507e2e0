//! The embedded store: subscribers in memory, persisted in one append-only
//! log in the data directory.
//!
//! ```text
//! <data>/subscribers.log   records: len (u32 BE) ‖ check (4 bytes) ‖ payload
//!     payload = LogRecord (protobuf): a put, a delete, or a revision marker
//!     check   = the first 4 bytes of SHA-256(payload)
//! ```
//!
//! Every change is appended and synced to disk before it is acknowledged.
//! A torn last record (a crash mid-write) fails its length or check and is
//! cut off at open. When the log holds many more records than live
//! subscribers it is rewritten (to a temporary file, synced, then renamed
//! over the old one), ending with a marker that keeps the revision counter,
//! so revisions never go back after a restart.
//!
//! Watch replays from an in-memory history of recent events and follows a
//! broadcast channel; a watcher asking for a revision older than the
//! history (e.g. after a restart), or falling behind the channel, gets a
//! `RESET`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message as _;
use ringmesh_proto::provisioning::{EventType, Subscriber, WatchEvent};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use super::{Change, EventStream, Page, StoreError, SubscriberStore, diff_public, event, now_ms};

const LOG_FILE: &str = "subscribers.log";
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
}

#[derive(Debug)]
struct Inner {
    subscribers: BTreeMap<String, Subscriber>,
    /// Canonical public identity -> private identity.
    public: HashMap<String, String>,
    revision: u64,
    /// Events after `replayable_after`, oldest first.
    history: VecDeque<WatchEvent>,
    replayable_after: u64,
    log: File,
    log_records: usize,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    inner: Mutex<Inner>,
    events: broadcast::Sender<WatchEvent>,
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
        let mut revision = 0;
        for r in &records {
            revision = revision.max(r.revision);
            if let Some(s) = &r.put {
                subscribers.insert(s.private_id.clone(), s.clone());
            } else if !r.delete.is_empty() {
                subscribers.remove(&r.delete);
            }
        }
        let mut public = HashMap::new();
        for s in subscribers.values() {
            for p in &s.public_ids {
                public.insert(p.clone(), s.private_id.clone());
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("cannot open", &path, e))?;
        if valid < bytes.len() {
            log.set_len(valid as u64)
                .map_err(|e| io("cannot truncate", &path, e))?;
        }
        let (events, _) = broadcast::channel(1024);
        let inner = Inner {
            log_records: records.len(),
            subscribers,
            public,
            revision,
            history: VecDeque::new(),
            replayable_after: revision,
            log,
        };
        let store = EmbeddedStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                inner: Mutex::new(inner),
                events,
                keepalive,
            }),
        };
        {
            let mut inner = store.shared.inner.lock();
            if inner.log_records > 2 * inner.subscribers.len() + 1000 {
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

    /// Rewrites the log with only the live subscribers and a revision marker.
    fn compact(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let path = self.shared.dir.join(LOG_FILE);
        let tmp = self.shared.dir.join(format!("{LOG_FILE}.tmp"));
        let mut buf = Vec::new();
        for s in inner.subscribers.values() {
            buf.extend(frame(&LogRecord {
                revision: s.revision,
                put: Some(s.clone()),
                delete: String::new(),
            }));
        }
        buf.extend(frame(&LogRecord {
            revision: inner.revision,
            put: None,
            delete: String::new(),
        }));
        let write = || -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.shared.dir)?.sync_all()?;
            OpenOptions::new().append(true).open(&path)
        };
        inner.log = write().map_err(|e| io("cannot compact", &path, e))?;
        inner.log_records = inner.subscribers.len() + 1;
        Ok(())
    }

    /// Appends a record, syncs it, then publishes the event.
    fn commit(&self, inner: &mut Inner, rec: LogRecord, ev: WatchEvent) -> Result<(), StoreError> {
        let path = self.shared.dir.join(LOG_FILE);
        let bytes = frame(&rec);
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
        if inner.history.len() == HISTORY
            && let Some(old) = inner.history.pop_front()
        {
            inner.replayable_after = old.revision;
        }
        inner.history.push_back(ev.clone());
        let _ = self.shared.events.send(ev);
        Ok(())
    }

    /// Compacts the log once it holds many more records than subscribers.
    /// Called after the in-memory maps reflect every appended record.
    fn maybe_compact(&self, inner: &mut Inner) {
        if inner.log_records > 2 * inner.subscribers.len() + 1000
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
            delete: String::new(),
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
            delete: String::new(),
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
            put: None,
            delete: private_id.to_string(),
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

    async fn watch(&self, start_revision: u64) -> Result<EventStream, StoreError> {
        let (first, current, mut rx) = {
            let inner = self.shared.inner.lock();
            let current = inner.revision;
            let rx = self.shared.events.subscribe();
            let first: Vec<WatchEvent> = if start_revision == 0 {
                Vec::new()
            } else if start_revision <= inner.replayable_after || start_revision > current + 1 {
                vec![event(EventType::Reset, current, None)]
            } else {
                inner
                    .history
                    .iter()
                    .filter(|e| e.revision >= start_revision)
                    .cloned()
                    .collect()
            };
            (first, current, rx)
        };
        let keepalive = self.shared.keepalive;
        let weak = Arc::downgrade(&self.shared);
        let stream = async_stream(move |tx| async move {
            for e in first {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            let mut last = current;
            if tx
                .send(Ok(event(EventType::Synced, current, None)))
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
                        Ok(e) => { last = e.revision; e }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Fell behind: start over from the current revision.
                            // Subscribing under the lock (changes publish under
                            // it) leaves no gap after the RESET.
                            let Some(shared) = weak.upgrade() else { return };
                            let inner = shared.inner.lock();
                            rx = shared.events.subscribe();
                            last = inner.revision;
                            event(EventType::Reset, last, None)
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => event(EventType::Synced, last, None),
                    () = tx.closed() => return,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        Ok(self.shared.inner.lock().revision)
    }
}

/// Runs `f` as a task feeding a bounded channel, and returns the channel as
/// a stream. The task ends when the receiver is dropped.
pub(crate) fn async_stream<F, Fut>(f: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<WatchEvent, StoreError>>) -> Fut,
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
            put: None,
            delete: "a".into(),
        });
        let good = log.len();
        log.extend(
            &frame(&LogRecord {
                revision: 2,
                put: None,
                delete: "b".into(),
            })[..5],
        );
        let (recs, valid) = parse_log(&log);
        assert_eq!(recs.len(), 1);
        assert_eq!(valid, good);
        let mut bad = frame(&LogRecord {
            revision: 3,
            put: None,
            delete: "c".into(),
        });
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(parse_log(&bad).0.len(), 0, "a flipped bit fails the check");
    }
}
