//! Digest authentication of leaves, against a subscriber directory.
//!
//! The realm is the farm's domain. Nonces are stateless (see
//! [`ringmesh_sip::digest`]): any supernode with the farm secret verifies
//! any other's. Credentials are kept only as HA1 values.
//!
//! Subscribers come from a [`Directory`]: a TOML file
//! ([`FileDirectory`], a farm of one or a lab), or the provisioning
//! service through a bounded cache invalidated by its Watch stream
//! ([`CacheDirectory`]; never the whole subscriber base). A lookup may have
//! to wait for provisioning: it then completes later through
//! [`Directory::poll_fetched`], and the SIP core runs the request again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use ringmesh_provisioning::cache::SubscriberCache;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::digest::{self, DigestAuth, Ha1};
use ringmesh_sip::{Message, Uri};
use serde::Deserialize;
use tokio::sync::mpsc;

/// What the supernode knows of one subscriber.
#[derive(Debug)]
pub struct SubscriberInfo {
    /// The digest username.
    pub private_id: String,
    pub ha1: Option<Ha1>,
    /// The AORs it may register and assert, canonical; the first is its
    /// default identity.
    pub public_ids: Vec<Aor>,
    pub barred: bool,
}

impl SubscriberInfo {
    pub fn owns(&self, aor: &Aor) -> bool {
        self.public_ids.contains(aor)
    }
}

/// A directory answer: now, or later through `poll_fetched`.
#[derive(Debug)]
pub enum Found {
    Ready(Option<Arc<SubscriberInfo>>),
    /// Provisioning is unreachable and the subscriber is not cached.
    Unavailable,
    Pending,
}

/// A lookup that completed later: its token and the subscriber, if any
/// (`Err` when provisioning could not answer).
pub type Fetched = (u64, Result<Option<Arc<SubscriberInfo>>, String>);

/// Where subscribers come from.
pub trait Directory: Send + 'static {
    /// By digest username (private identity).
    fn by_private_id(&mut self, id: &str, token: u64) -> Found;
    /// By public identity (AOR).
    fn by_public_id(&mut self, aor: &Aor, token: u64) -> Found;
    fn poll_fetched(&mut self, cx: &mut Context<'_>) -> Poll<Fetched>;
    /// How many subscribers are held here.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---- a subscriber file ------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriberFile {
    #[serde(default)]
    subscriber: Vec<SubscriberEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SubscriberEntry {
    user: String,
    password: Option<String>,
    ha1_md5: Option<String>,
    ha1_sha256: Option<String>,
    #[serde(default)]
    barred: bool,
}

/// Subscribers from a TOML file, each with the AOR `sip:user@domain`:
///
/// ```toml
/// [[subscriber]]
/// user = "alice"
/// password = "secret"          # or ha1-md5 = "…" and ha1-sha256 = "…"
/// barred = false
/// ```
#[derive(Debug, Default)]
pub struct FileDirectory {
    by_user: HashMap<String, Arc<SubscriberInfo>>,
    by_aor: HashMap<Aor, Arc<SubscriberInfo>>,
}

impl FileDirectory {
    pub fn load(path: &Path, realm: &str) -> anyhow::Result<FileDirectory> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("subscribers {}: {e}", path.display()))?;
        let file: SubscriberFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("subscribers {}: {}", path.display(), e.message()))?;
        let mut dir = FileDirectory::default();
        for s in file.subscriber {
            if s.user.is_empty() {
                anyhow::bail!("subscribers {}: an entry has an empty user", path.display());
            }
            let ha1 = match (&s.password, &s.ha1_md5, &s.ha1_sha256) {
                (Some(p), None, None) => {
                    Ha1::compute(s.user.as_bytes(), realm.as_bytes(), p.as_bytes())
                }
                (None, Some(m), Some(h)) => Ha1::from_hex(m, h).ok_or_else(|| {
                    anyhow::anyhow!("subscribers {}: bad HA1 hex for {}", path.display(), s.user)
                })?,
                _ => anyhow::bail!(
                    "subscribers {}: {} needs either password or both ha1-md5 and ha1-sha256",
                    path.display(),
                    s.user
                ),
            };
            let aor = Aor::parse(format!("sip:{}@{realm}", s.user).as_bytes())
                .map_err(|e| anyhow::anyhow!("subscribers {}: {}: {e}", path.display(), s.user))?;
            let info = Arc::new(SubscriberInfo {
                private_id: s.user.clone(),
                ha1: Some(ha1),
                public_ids: vec![aor.clone()],
                barred: s.barred,
            });
            dir.by_aor.insert(aor, info.clone());
            dir.by_user.insert(s.user, info);
        }
        Ok(dir)
    }
}

impl Directory for FileDirectory {
    fn by_private_id(&mut self, id: &str, _token: u64) -> Found {
        Found::Ready(self.by_user.get(id).cloned())
    }
    fn by_public_id(&mut self, aor: &Aor, _token: u64) -> Found {
        Found::Ready(self.by_aor.get(aor).cloned())
    }
    fn poll_fetched(&mut self, _cx: &mut Context<'_>) -> Poll<Fetched> {
        Poll::Pending
    }
    fn len(&self) -> usize {
        self.by_user.len()
    }
}

// ---- provisioning, through its cache ----------------------------------------

/// Subscribers from the provisioning service. A cached subscriber answers
/// at once; a miss is fetched in the background, and its answer is kept
/// (for one use, two seconds at most) so the request that waited finds it
/// when it runs again.
pub struct CacheDirectory {
    cache: Arc<SubscriberCache>,
    realm: String,
    tx: mpsc::Sender<Answer>,
    rx: mpsc::Receiver<Answer>,
    recent: HashMap<String, (Instant, Option<Arc<SubscriberInfo>>)>,
}

impl std::fmt::Debug for CacheDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheDirectory")
            .field("cached", &self.cache.len())
            .finish()
    }
}

const RECENT: Duration = Duration::from_secs(2);

/// A background lookup's answer: token, the `recent` key, the subscriber.
type Answer = (u64, String, Result<Option<Arc<SubscriberInfo>>, String>);

impl CacheDirectory {
    pub fn new(cache: Arc<SubscriberCache>, realm: &str) -> CacheDirectory {
        let (tx, rx) = mpsc::channel(4096);
        CacheDirectory {
            cache,
            realm: realm.to_string(),
            tx,
            rx,
            recent: HashMap::new(),
        }
    }

    pub fn cache(&self) -> &Arc<SubscriberCache> {
        &self.cache
    }

    fn convert(realm: &str, s: &ringmesh_proto::provisioning::Subscriber) -> Arc<SubscriberInfo> {
        let ha1 = s.credentials.as_ref().and_then(|c| {
            if c.realm != realm {
                tracing::warn!(user = %s.private_id, stored = %c.realm, realm, "HA1 computed for another realm; ignored");
                return None;
            }
            Ha1::from_hex(&c.ha1_md5, &c.ha1_sha256)
        });
        Arc::new(SubscriberInfo {
            private_id: s.private_id.clone(),
            ha1,
            public_ids: s
                .public_ids
                .iter()
                .filter_map(|p| Aor::parse(p.as_bytes()).ok())
                .collect(),
            barred: s.barring.as_ref().is_some_and(|b| b.barred),
        })
    }

    fn find(&mut self, recent_key: String, token: u64, by_public: bool) -> Found {
        // The answer a waiting request came back for is used once: after
        // that the cache (kept coherent by the Watch stream) is the truth.
        if let Some((at, v)) = self.recent.remove(&recent_key)
            && at.elapsed() < RECENT
        {
            return Found::Ready(v);
        }
        let id = recent_key[2..].to_string();
        let lookup = {
            let cache = self.cache.clone();
            let id = id.clone();
            async move {
                if by_public {
                    cache.by_public_id(&id).await
                } else {
                    cache.by_private_id(&id).await
                }
            }
        };
        let realm = self.realm.clone();
        // A cached subscriber answers without waiting.
        let mut fut = Box::pin(lookup);
        match (&mut fut).now_or_never() {
            Some(Ok(s)) => return Found::Ready(s.map(|s| Self::convert(&realm, &s))),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "provisioning lookup failed");
                return Found::Unavailable;
            }
            None => {}
        }
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = fut
                .await
                .map(|s| s.map(|s| Self::convert(&realm, &s)))
                .map_err(|e| e.to_string());
            let _ = tx.send((token, recent_key, r)).await;
        });
        Found::Pending
    }
}

impl Directory for CacheDirectory {
    fn by_private_id(&mut self, id: &str, token: u64) -> Found {
        self.find(format!("u:{id}"), token, false)
    }
    fn by_public_id(&mut self, aor: &Aor, token: u64) -> Found {
        self.find(format!("a:{aor}"), token, true)
    }
    fn poll_fetched(&mut self, cx: &mut Context<'_>) -> Poll<Fetched> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((token, key, result))) => {
                if let Ok(v) = &result {
                    self.recent.retain(|_, (at, _)| at.elapsed() < RECENT);
                    self.recent.insert(key, (Instant::now(), v.clone()));
                }
                Poll::Ready((token, result))
            }
            _ => Poll::Pending,
        }
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
}

// ---- digest -----------------------------------------------------------------

/// The outcome for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Valid credentials of this subscriber.
    Authenticated(Arc<SubscriberInfo>),
    /// Challenge (again); `reason` is a metrics label.
    Challenge { stale: bool, reason: &'static str },
    /// The subscriber is being fetched; the request runs again when the
    /// directory reports the token.
    Pending,
    /// Provisioning cannot answer for this uncached subscriber (503).
    Unavailable,
}

/// Digest authentication for one realm.
pub struct Auth {
    realm: String,
    digest: DigestAuth,
    pub directory: Box<dyn Directory>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(realm: &str, digest: DigestAuth, directory: Box<dyn Directory>) -> Auth {
        Auth {
            realm: realm.to_string(),
            digest,
            directory,
        }
    }

    /// Checks `Authorization` (`proxy == false`) or `Proxy-Authorization`.
    /// A lookup that must wait is filed under `token`.
    ///
    /// The digest `uri` must name the Request-URI (RFC 3261 §22.4). Some
    /// UAs (sipp among them) put the server's address there instead of the
    /// domain; `names_us` lets the caller accept a URI that addresses this
    /// farm with the same user part, which authorises nothing more.
    pub fn verify(
        &mut self,
        msg: &Message,
        proxy: bool,
        now_unix_secs: u64,
        token: u64,
        names_us: impl Fn(&Uri<'_>) -> bool,
    ) -> Verdict {
        let Some(creds) = digest::find_credentials(msg, proxy, self.realm.as_bytes()) else {
            return Verdict::Challenge {
                stale: false,
                reason: "no_credentials",
            };
        };
        let user = String::from_utf8_lossy(&creds.username()).into_owned();
        let sub = match self.directory.by_private_id(&user, token) {
            Found::Ready(Some(s)) => s,
            Found::Ready(None) => {
                return Verdict::Challenge {
                    stale: false,
                    reason: "unknown_user",
                };
            }
            Found::Pending => return Verdict::Pending,
            Found::Unavailable => return Verdict::Unavailable,
        };
        let Some(ha1) = &sub.ha1 else {
            return Verdict::Challenge {
                stale: false,
                reason: "unknown_user",
            };
        };
        let ruri = msg.request_uri_bytes();
        let digest_uri = creds.uri();
        let target: &[u8] = match (Uri::parse(&digest_uri), msg.request_uri()) {
            (Ok(d), Some(r))
                if !digest::uri_matches(&digest_uri, ruri)
                    && names_us(&d)
                    && d.user() == r.user() =>
            {
                &digest_uri
            }
            _ => ruri,
        };
        match self.digest.verify(
            &creds,
            self.realm.as_bytes(),
            msg.method(),
            target,
            ha1,
            now_unix_secs,
        ) {
            digest::Verdict::Valid => Verdict::Authenticated(sub),
            digest::Verdict::Stale => Verdict::Challenge {
                stale: true,
                reason: "stale_nonce",
            },
            digest::Verdict::Invalid(_) => Verdict::Challenge {
                stale: false,
                reason: "bad_credentials",
            },
        }
    }

    /// A 401 (or, with `proxy`, 407) carrying fresh challenges.
    pub fn challenge(
        &self,
        req: &Message,
        proxy: bool,
        stale: bool,
        now_unix_secs: u64,
        to_tag: &[u8],
    ) -> Bytes {
        let mut w = req.response_writer(if proxy { 407 } else { 401 }, Some(to_tag));
        self.digest
            .write_challenges(&mut w, proxy, self.realm.as_bytes(), stale, now_unix_secs);
        w.finish(b"")
    }
}
