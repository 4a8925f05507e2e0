//! The etcd store.
//!
//! ```text
//! <prefix>subscribers/by-private/<private id>          -> Subscriber (protobuf)
//! <prefix>subscribers/by-public/<escaped public id>    -> private id
//! <prefix>trusted-elements/<name>                      -> TrustedElement (protobuf)
//! ```
//!
//! Every change is one etcd transaction that compares the subscriber key's
//! `mod_revision` (or its absence) and the absence of each new public
//! identity, then writes the subscriber and its index entries together; the
//! index can never point at the wrong subscriber or miss one. A
//! subscriber's `revision` is the `mod_revision` of its key, so Watch is
//! etcd's watch on the `by-private/` range (with the previous value, so a
//! DELETE carries the last state).
//!
//! A trusted element's name needs no escaping (letters, digits, `-`, `_`,
//! `.`). Its `revision` is its key's `mod_revision` too, and
//! WatchTrustedElements is etcd's watch on the `trusted-elements/` range.
//! A create compares, besides the absence of its key, that no key of the
//! range changed since the table was counted, so concurrent creates cannot
//! overfill it; listing the range is one read, a snapshot at the revision
//! of its header.
//!
//! Every call has a deadline ([`EtcdOptions::timeout`]); etcd down means
//! [`StoreError::Unavailable`] within it, never a hang. The client
//! reconnects by itself when etcd comes back.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType as EtcdEventType, GetOptions, KeyValue,
    Txn, TxnOp, WatchOptions,
};
use prost::Message as _;
use ringmesh_proto::provisioning::{EventType, Subscriber, TrustedElement, WatchEvent};

use super::embedded::async_stream;
use super::{
    Change, EventStream, Events, MAX_TRUSTED_ELEMENTS, Page, StoreError, StoreEvent,
    SubscriberStore, TrustEventStream, TrustStore, diff_public, event, now_ms, trust_event,
};

/// How the etcd store connects.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// etcd endpoints (e.g. `http://127.0.0.1:2379`) and TLS.
    pub etcd: ringmesh_config::Etcd,
    /// Key prefix, e.g. `/ringmesh/`.
    pub prefix: String,
    /// Deadline of every etcd call.
    pub timeout: Duration,
    /// How often an idle Watch sends a SYNCED keep-alive.
    pub keepalive: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            etcd: ringmesh_config::Etcd::plain(vec!["http://127.0.0.1:2379".into()]),
            prefix: "/ringmesh/".into(),
            timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(30),
        }
    }
}

/// The etcd subscriber store (see the module docs). Cloning shares the
/// connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    opts: EtcdOptions,
    private_prefix: String,
    public_prefix: String,
    trusted_prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.opts.etcd.endpoints)
            .field("prefix", &self.opts.prefix)
            .finish()
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

/// Escapes a public identity for use in a key: `%`, `/` and bytes outside
/// printable ASCII become `%XX`.
pub(crate) fn escape_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'%' || b == b'/' || !(0x21..0x7f).contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

impl EtcdStore {
    /// Prepares a client for `opts.etcd`. It connects lazily: etcd need
    /// not be up yet, calls fail with `Unavailable` until it is.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.etcd.is_empty() {
            return Err(StoreError::Unavailable(
                "no etcd endpoint configured".into(),
            ));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(opts.timeout)
            .with_keep_alive(Duration::from_secs(5), opts.timeout)
            .with_keep_alive_while_idle(true);
        let client = tokio::time::timeout(opts.timeout, opts.etcd.connect(connect))
            .await
            .map_err(|_| StoreError::Unavailable("etcd connect timed out".into()))?
            .map_err(StoreError::Unavailable)?;
        let private_prefix = format!("{}subscribers/by-private/", opts.prefix);
        let public_prefix = format!("{}subscribers/by-public/", opts.prefix);
        let trusted_prefix = format!("{}trusted-elements/", opts.prefix);
        Ok(EtcdStore {
            client,
            opts,
            private_prefix,
            public_prefix,
            trusted_prefix,
        })
    }

    fn trusted_key(&self, name: &str) -> String {
        format!("{}{name}", self.trusted_prefix)
    }

    fn decode_trusted(kv: &KeyValue) -> Result<TrustedElement, StoreError> {
        let mut e = TrustedElement::decode(kv.value()).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })?;
        e.revision = kv.mod_revision() as u64;
        Ok(e)
    }

    fn private_key(&self, id: &str) -> String {
        format!("{}{id}", self.private_prefix)
    }

    fn public_key(&self, aor: &str) -> String {
        format!("{}{}", self.public_prefix, escape_key(aor))
    }

    /// Runs one etcd call under the deadline.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.opts.timeout, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd did not answer {what} within {} ms",
                self.opts.timeout.as_millis()
            ))),
        }
    }

    fn decode(&self, kv: &KeyValue) -> Result<Subscriber, StoreError> {
        let mut s = Subscriber::decode(kv.value()).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })?;
        s.revision = kv.mod_revision() as u64;
        if let Some(p) = s.service_profile.as_mut() {
            crate::validate::migrate_profile(p);
        }
        Ok(s)
    }

    fn encode(sub: &Subscriber) -> Vec<u8> {
        let mut s = sub.clone();
        s.revision = 0;
        s.encode_to_vec()
    }

    async fn get_kv(&self, key: String) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let mut resp = self.call("a read", kv.get(key, None)).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// The owner of a public identity, from the index.
    async fn owner_of(&self, public: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .get_kv(self.public_key(public))
            .await?
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// After a failed transaction: which new public identity is taken.
    async fn taken(
        &self,
        candidates: &[String],
        me: &str,
    ) -> Result<Option<StoreError>, StoreError> {
        for p in candidates {
            if let Some(owner) = self.owner_of(p).await?
                && owner != me
            {
                return Ok(Some(StoreError::AlreadyExists {
                    field: "public_ids",
                    value: p.clone(),
                    owner,
                }));
            }
        }
        Ok(None)
    }

    fn header_revision(resp: &etcd_client::TxnResponse) -> u64 {
        resp.header().map_or(0, |h| h.revision() as u64)
    }
}

impl SubscriberStore for EtcdStore {
    async fn create(&self, mut sub: Subscriber) -> Result<Subscriber, StoreError> {
        let now = now_ms();
        sub.created_unix_ms = now;
        sub.updated_unix_ms = now;
        let pkey = self.private_key(&sub.private_id);
        let mut when = vec![Compare::version(pkey.clone(), CompareOp::Equal, 0)];
        let mut then = vec![TxnOp::put(pkey.clone(), Self::encode(&sub), None)];
        for p in &sub.public_ids {
            when.push(Compare::version(self.public_key(p), CompareOp::Equal, 0));
            then.push(TxnOp::put(self.public_key(p), sub.private_id.clone(), None));
        }
        let mut kv = self.client.kv_client();
        let resp = self
            .call("a create", kv.txn(Txn::new().when(when).and_then(then)))
            .await?;
        if resp.succeeded() {
            sub.revision = Self::header_revision(&resp);
            return Ok(sub);
        }
        if self.get_kv(pkey).await?.is_some() {
            return Err(StoreError::AlreadyExists {
                field: "private_id",
                value: sub.private_id.clone(),
                owner: sub.private_id,
            });
        }
        Err(self.taken(&sub.public_ids, "").await?.unwrap_or_else(|| {
            StoreError::Unavailable("a concurrent change raced this create; retry".into())
        }))
    }

    async fn get(&self, private_id: &str) -> Result<Subscriber, StoreError> {
        match self.get_kv(self.private_key(private_id)).await? {
            Some(kv) => self.decode(&kv),
            None => Err(StoreError::NotFound {
                field: "private_id",
                value: private_id.to_string(),
            }),
        }
    }

    async fn get_by_public(&self, public_id: &str) -> Result<Subscriber, StoreError> {
        let not_found = || StoreError::NotFound {
            field: "public_id",
            value: public_id.to_string(),
        };
        let owner = self.owner_of(public_id).await?.ok_or_else(not_found)?;
        match self.get(&owner).await {
            // The index and the record change in one transaction; a record
            // that does not list the identity means a delete raced us.
            Ok(s) if s.public_ids.iter().any(|p| p == public_id) => Ok(s),
            Ok(_) | Err(StoreError::NotFound { .. }) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let start = match after {
            Some(a) => format!("{}{a}\0", self.private_prefix),
            None => self.private_prefix.clone(),
        };
        let mut end = self.private_prefix.clone().into_bytes();
        *end.last_mut().expect("non-empty prefix") += 1;
        let opts = GetOptions::new()
            .with_range(end)
            .with_limit(limit as i64 + 1);
        let mut kv = self.client.kv_client();
        let mut resp = self.call("a list", kv.get(start, Some(opts))).await?;
        let kvs = resp.take_kvs();
        let more = kvs.len() > limit;
        let subscribers = kvs
            .iter()
            .take(limit)
            .map(|kv| self.decode(kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { subscribers, more })
    }

    async fn update(
        &self,
        private_id: &str,
        expected_revision: Option<u64>,
        change: Change,
    ) -> Result<Subscriber, StoreError> {
        let pkey = self.private_key(private_id);
        // Optimistic concurrency: retry when another writer got in between,
        // unless the caller pinned a revision.
        for _ in 0..8 {
            let old = self.get(private_id).await?;
            if let Some(e) = expected_revision
                && e != old.revision
            {
                return Err(StoreError::RevisionMismatch {
                    private_id: private_id.into(),
                    expected: e,
                    actual: old.revision,
                });
            }
            let mut sub = old.clone();
            change.apply(&mut sub);
            sub.updated_unix_ms = now_ms();
            let (added, removed) = diff_public(&old.public_ids, &sub.public_ids);
            let mut when = vec![Compare::mod_revision(
                pkey.clone(),
                CompareOp::Equal,
                old.revision as i64,
            )];
            let mut then = vec![TxnOp::put(pkey.clone(), Self::encode(&sub), None)];
            for p in &added {
                when.push(Compare::version(self.public_key(p), CompareOp::Equal, 0));
                then.push(TxnOp::put(self.public_key(p), private_id, None));
            }
            for p in &removed {
                then.push(TxnOp::delete(self.public_key(p), None));
            }
            let mut kv = self.client.kv_client();
            let resp = self
                .call("an update", kv.txn(Txn::new().when(when).and_then(then)))
                .await?;
            if resp.succeeded() {
                sub.revision = Self::header_revision(&resp);
                return Ok(sub);
            }
            if let Some(e) = self.taken(&added, private_id).await? {
                return Err(e);
            }
        }
        Err(StoreError::Unavailable(format!(
            "subscriber '{private_id}' keeps changing under this update; retry"
        )))
    }

    async fn delete(
        &self,
        private_id: &str,
        expected_revision: Option<u64>,
    ) -> Result<u64, StoreError> {
        let pkey = self.private_key(private_id);
        for _ in 0..8 {
            let old = self.get(private_id).await?;
            if let Some(e) = expected_revision
                && e != old.revision
            {
                return Err(StoreError::RevisionMismatch {
                    private_id: private_id.into(),
                    expected: e,
                    actual: old.revision,
                });
            }
            let when = vec![Compare::mod_revision(
                pkey.clone(),
                CompareOp::Equal,
                old.revision as i64,
            )];
            let mut then = vec![TxnOp::delete(pkey.clone(), None)];
            for p in &old.public_ids {
                then.push(TxnOp::delete(self.public_key(p), None));
            }
            let mut kv = self.client.kv_client();
            let resp = self
                .call("a delete", kv.txn(Txn::new().when(when).and_then(then)))
                .await?;
            if resp.succeeded() {
                return Ok(Self::header_revision(&resp));
            }
        }
        Err(StoreError::Unavailable(format!(
            "subscriber '{private_id}' keeps changing under this delete; retry"
        )))
    }

    async fn watch(&self, start_revision: u64, store_id: u64) -> Result<EventStream, StoreError> {
        self.watch_range(
            self.private_prefix.clone(),
            start_revision,
            store_id,
            EtcdStore::convert,
        )
        .await
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        let mut kv = self.client.kv_client();
        let opts = GetOptions::new().with_count_only();
        let resp = self
            .call(
                "a status read",
                kv.get(self.private_prefix.clone(), Some(opts)),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision() as u64))
    }
}

/// An open etcd watch and the events to deliver before its first message.
struct OpenWatch<E> {
    watch: etcd_client::WatchStream,
    initial: Vec<E>,
    /// The cluster's id: the store id markers carry.
    cluster: u64,
}

impl EtcdStore {
    /// Changes to the keys under `prefix` from `start_revision` on, as
    /// events made by `convert`, with RESET and SYNCED markers (a RESET
    /// first when `store_id` is another cluster's id).
    async fn watch_range<E: StoreEvent>(
        &self,
        prefix: String,
        start_revision: u64,
        store_id: u64,
        convert: fn(&EtcdStore, &etcd_client::Event) -> Result<E, StoreError>,
    ) -> Result<Events<E>, StoreError> {
        let me = self.clone();
        // Establish the first watch here so that an unreachable etcd fails
        // the call instead of an empty stream.
        let first = me.open_watch(&prefix, start_revision, store_id).await?;
        Ok(async_stream(move |tx| async move {
            let (mut stream, synced_at) = first;
            let cluster = stream.cluster;
            let mut pending: Vec<E> = stream.initial;
            // The last revision delivered (or known to have nothing for us).
            let mut last = if start_revision > 0 {
                start_revision - 1
            } else {
                synced_at
            };
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + me.opts.keepalive,
                me.opts.keepalive,
            );
            loop {
                for e in pending.drain(..) {
                    if e.kind() != EventType::Synced as i32 {
                        last = last.max(e.revision());
                    }
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                let msg = tokio::select! {
                    m = stream.watch.message() => m,
                    _ = tick.tick() => {
                        // Ask etcd to confirm it has sent everything so far;
                        // its progress answer becomes a SYNCED keep-alive.
                        if let Err(e) = stream.watch.request_progress().await {
                            let _ = tx.send(Err(unavailable(e))).await;
                            return;
                        }
                        continue;
                    }
                    () = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(StoreError::Unavailable("etcd ended the watch".into())))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    // The revision we need is compacted away: say RESET and
                    // watch again from the oldest revision etcd still has.
                    let from = (resp.compact_revision() as u64).max(last + 1);
                    match me.open_watch(&prefix, from, cluster).await {
                        Ok((s, _)) => {
                            stream = s;
                            pending.push(E::marker(EventType::Reset, from - 1, cluster));
                            pending.append(&mut stream.initial);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    continue;
                }
                let header_rev = resp.header().map_or(0, |h| h.revision() as u64);
                if resp.events().is_empty() {
                    if !resp.created() && header_rev > 0 {
                        pending.push(E::marker(EventType::Synced, header_rev.max(last), cluster));
                    }
                    continue;
                }
                for ev in resp.events() {
                    match convert(&me, ev) {
                        Ok(e) => pending.push(e),
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        }))
    }

    /// Opens a watch on the range under `prefix` from `start` (0: now) and
    /// waits for etcd to confirm it. Returns it with the store revision at
    /// that moment; `initial` holds a RESET when `start` is ahead of etcd
    /// or `store` (if not 0) is not this cluster's id (etcd was replaced:
    /// restored from a backup, or wiped) and otherwise nothing. A SYNCED
    /// marker follows once etcd has delivered the replay (a progress
    /// request).
    async fn open_watch<E: StoreEvent>(
        &self,
        prefix: &str,
        start: u64,
        store: u64,
    ) -> Result<(OpenWatch<E>, u64), StoreError> {
        let mut opts = WatchOptions::new().with_prefix().with_prev_key();
        if start > 0 {
            opts = opts.with_start_revision(start as i64);
        }
        let mut wc = self.client.watch_client();
        let mut watch = self.call("a watch", wc.watch(prefix, Some(opts))).await?;
        let created = self
            .call("a watch", watch.message())
            .await?
            .ok_or_else(|| StoreError::Unavailable("etcd closed the watch at once".into()))?;
        let rev = created.header().map_or(0, |h| h.revision() as u64);
        let cluster = created.header().map_or(0, |h| h.cluster_id());
        let mut initial = Vec::new();
        if start > 0 && (start > rev + 1 || store != 0 && store != cluster) {
            // Revisions from another (or a wiped) etcd: caches must start over.
            initial.push(E::marker(EventType::Reset, rev, cluster));
            let opts = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(rev as i64 + 1);
            let mut wc = self.client.watch_client();
            watch = self.call("a watch", wc.watch(prefix, Some(opts))).await?;
            self.call("a watch", watch.message()).await?;
        }
        // etcd answers a progress request once the replay is out: that
        // answer is the first SYNCED.
        self.call("a watch", watch.request_progress()).await?;
        Ok((
            OpenWatch {
                watch,
                initial,
                cluster,
            },
            rev,
        ))
    }

    fn convert(&self, ev: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
        let kv = ev
            .kv()
            .ok_or_else(|| StoreError::Unavailable("etcd sent an event without a key".into()))?;
        let rev = kv.mod_revision() as u64;
        match ev.event_type() {
            EtcdEventType::Put => {
                let s = self.decode(kv)?;
                Ok(event(EventType::Put, rev, Some(s)))
            }
            EtcdEventType::Delete => {
                let mut last = match ev.prev_kv() {
                    Some(prev) => self.decode(prev)?,
                    // The previous value was compacted: the key still names it.
                    None => Subscriber {
                        private_id: String::from_utf8_lossy(&kv.key()[self.private_prefix.len()..])
                            .into_owned(),
                        ..Default::default()
                    },
                };
                last.revision = rev;
                Ok(event(EventType::Delete, rev, Some(last)))
            }
        }
    }

    fn convert_trusted(
        &self,
        ev: &etcd_client::Event,
    ) -> Result<ringmesh_proto::provisioning::TrustedElementEvent, StoreError> {
        let kv = ev
            .kv()
            .ok_or_else(|| StoreError::Unavailable("etcd sent an event without a key".into()))?;
        let rev = kv.mod_revision() as u64;
        match ev.event_type() {
            EtcdEventType::Put => Ok(trust_event(
                EventType::Put,
                rev,
                Some(Self::decode_trusted(kv)?),
            )),
            EtcdEventType::Delete => {
                let mut last = match ev.prev_kv() {
                    Some(prev) => Self::decode_trusted(prev)?,
                    // The previous value was compacted: the key still names it.
                    None => TrustedElement {
                        name: String::from_utf8_lossy(&kv.key()[self.trusted_prefix.len()..])
                            .into_owned(),
                        ..Default::default()
                    },
                };
                last.revision = rev;
                Ok(trust_event(EventType::Delete, rev, Some(last)))
            }
        }
    }
}

impl TrustStore for EtcdStore {
    async fn create_trusted(
        &self,
        mut element: TrustedElement,
    ) -> Result<TrustedElement, StoreError> {
        element.created_unix_ms = now_ms();
        let key = self.trusted_key(&element.name);
        let value = {
            let mut e = element.clone();
            e.revision = 0;
            e.encode_to_vec()
        };
        for _ in 0..8 {
            let mut kv = self.client.kv_client();
            let count = self
                .call(
                    "a count",
                    kv.get(
                        self.trusted_prefix.clone(),
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    ),
                )
                .await?;
            let counted_at = count.header().map_or(0, |h| h.revision());
            if count.count() as usize >= MAX_TRUSTED_ELEMENTS {
                if self.get_kv(key.clone()).await?.is_some() {
                    return Err(StoreError::ElementExists { name: element.name });
                }
                return Err(StoreError::TooManyElements {
                    limit: MAX_TRUSTED_ELEMENTS,
                });
            }
            let when = vec![
                Compare::version(key.clone(), CompareOp::Equal, 0),
                // Nothing in the table changed since it was counted.
                Compare::mod_revision(self.trusted_prefix.clone(), CompareOp::Less, counted_at + 1)
                    .with_prefix(),
            ];
            let then = vec![TxnOp::put(key.clone(), value.clone(), None)];
            let resp = self
                .call("a create", kv.txn(Txn::new().when(when).and_then(then)))
                .await?;
            if resp.succeeded() {
                element.revision = Self::header_revision(&resp);
                return Ok(element);
            }
            if self.get_kv(key.clone()).await?.is_some() {
                return Err(StoreError::ElementExists { name: element.name });
            }
        }
        Err(StoreError::Unavailable(
            "the trusted elements keep changing under this create; retry".into(),
        ))
    }

    async fn get_trusted(&self, name: &str) -> Result<TrustedElement, StoreError> {
        match self.get_kv(self.trusted_key(name)).await? {
            Some(kv) => Self::decode_trusted(&kv),
            None => Err(StoreError::ElementNotFound { name: name.into() }),
        }
    }

    async fn list_trusted(&self) -> Result<(Vec<TrustedElement>, u64), StoreError> {
        let mut kv = self.client.kv_client();
        let mut resp = self
            .call(
                "a list",
                kv.get(
                    self.trusted_prefix.clone(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision() as u64);
        let elements = resp
            .take_kvs()
            .iter()
            .map(Self::decode_trusted)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((elements, revision))
    }

    async fn delete_trusted(
        &self,
        name: &str,
        expected_revision: Option<u64>,
    ) -> Result<u64, StoreError> {
        let key = self.trusted_key(name);
        for _ in 0..8 {
            let old = self.get_trusted(name).await?;
            if let Some(e) = expected_revision
                && e != old.revision
            {
                return Err(StoreError::ElementRevisionMismatch {
                    name: name.into(),
                    expected: e,
                    actual: old.revision,
                });
            }
            let when = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                old.revision as i64,
            )];
            let then = vec![TxnOp::delete(key.clone(), None)];
            let mut kv = self.client.kv_client();
            let resp = self
                .call("a delete", kv.txn(Txn::new().when(when).and_then(then)))
                .await?;
            if resp.succeeded() {
                return Ok(Self::header_revision(&resp));
            }
        }
        Err(StoreError::Unavailable(format!(
            "trusted element '{name}' keeps changing under this delete; retry"
        )))
    }

    async fn watch_trusted(&self, start_revision: u64) -> Result<TrustEventStream, StoreError> {
        self.watch_range(
            self.trusted_prefix.clone(),
            start_revision,
            0,
            EtcdStore::convert_trusted,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_slashes_and_percent() {
        assert_eq!(escape_key("sip:alice@x"), "sip:alice@x");
        assert_eq!(escape_key("sip:a/b%c@x"), "sip:a%2Fb%25c@x");
        assert_eq!(escape_key("tel:+1 2"), "tel:+1%202");
    }

    #[test]
    fn option_defaults_have_deadlines() {
        let o = EtcdOptions::default();
        assert!(o.timeout <= Duration::from_secs(5));
    }
}
