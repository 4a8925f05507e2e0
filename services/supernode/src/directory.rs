//! The subscriber directories a supernode authenticates against: a TOML
//! file ([`FileDirectory`], a farm of one or a lab), or the provisioning
//! service through a bounded cache invalidated by its Watch stream
//! ([`CacheDirectory`]; never the whole subscriber base). Both implement
//! the proxy's synchronous [`Directory`]: a provisioning lookup that must
//! wait runs in the background and its answer reaches the SIP core task,
//! which hands it to the proxy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use ringmesh_provisioning_client::cache::SubscriberCache;
use ringmesh_proxy::auth::{Directory, Fetched, Found, SubscriberInfo};
use ringmesh_sip::aor::Aor;
use ringmesh_sip::digest::Ha1;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::tasks::Tasks;

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
    /// How many subscribers the file holds.
    pub fn subscribers(&self) -> usize {
        self.by_user.len()
    }

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
                implicit_sets: Vec::new(),
                barred: s.barred,
                services: Vec::new(),
                region: String::new(),
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
}

/// A service profile's criteria, compiled, in ascending priority. One the
/// proxy cannot use (provisioning validated it, so only a record written
/// by an older version) is left out and logged.
fn services(
    user: &str,
    p: &ringmesh_proto::provisioning::ServiceProfile,
) -> Vec<ringmesh_proxy::ifc::Criterion> {
    use ringmesh_proto::provisioning::{ConditionType, DefaultHandling, SessionCase};
    use ringmesh_proxy::ifc::{self, Criterion, CriterionSpec};
    let mut p = p.clone();
    ringmesh_provisioning_client::validate::migrate_profile(&mut p);
    let mut out: Vec<Criterion> = p
        .filter_criteria
        .iter()
        .filter_map(|fc| {
            let spec = CriterionSpec {
                priority: fc.priority,
                session_case: Some(match fc.session_case() {
                    SessionCase::Unspecified => ifc::SessionCase::Any,
                    SessionCase::Originating => ifc::SessionCase::Originating,
                    SessionCase::Terminating => ifc::SessionCase::Terminating,
                    SessionCase::TerminatingRegistered => ifc::SessionCase::TerminatingRegistered,
                    SessionCase::TerminatingUnregistered => {
                        ifc::SessionCase::TerminatingUnregistered
                    }
                }),
                method: &fc.method,
                request_uri: &fc.request_uri,
                headers: fc
                    .headers
                    .iter()
                    .map(|h| (h.header.as_str(), h.regex.as_str(), h.negated))
                    .collect(),
                any: fc.condition_type() == ConditionType::Any,
                application_server: &fc.application_server,
                terminate: fc.default_handling() == DefaultHandling::SessionTerminated,
            };
            Criterion::new(&spec)
                .inspect_err(|e| {
                    tracing::warn!(user, priority = fc.priority, error = %e, "a filter criterion cannot be used; left out")
                })
                .ok()
        })
        .collect();
    out.sort_by_key(|c| c.priority);
    out
}

// ---- provisioning, through its cache ----------------------------------------

/// Subscribers from the provisioning service. A cached subscriber answers
/// at once; a miss is fetched in the background, its answer goes to the SIP
/// core task (the receiver [`CacheDirectory::new`] returns), and is kept here
/// (for one use, two seconds at most) so the request that waited finds it
/// when it runs again.
pub struct CacheDirectory {
    cache: Arc<SubscriberCache>,
    realm: String,
    tasks: Tasks,
    tx: mpsc::Sender<(u64, Fetched)>,
    /// The `recent` key of each lookup still running.
    waiting: HashMap<u64, String>,
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

impl CacheDirectory {
    /// The directory, and where the answers of background lookups arrive.
    pub fn new(
        cache: Arc<SubscriberCache>,
        realm: &str,
        tasks: Tasks,
    ) -> (CacheDirectory, mpsc::Receiver<(u64, Fetched)>) {
        let (tx, rx) = mpsc::channel(4096);
        let dir = CacheDirectory {
            cache,
            realm: realm.to_string(),
            tasks,
            tx,
            waiting: HashMap::new(),
            recent: HashMap::new(),
        };
        (dir, rx)
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
            implicit_sets: s
                .implicit_sets
                .iter()
                .map(|set| {
                    set.public_ids
                        .iter()
                        .filter_map(|p| Aor::parse(p.as_bytes()).ok())
                        .collect()
                })
                .collect(),
            barred: s.barring.as_ref().is_some_and(|b| b.barred),
            services: s
                .service_profile
                .as_ref()
                .map(|p| services(&s.private_id, p))
                .unwrap_or_default(),
            region: s.region.clone(),
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
        self.waiting.insert(token, recent_key);
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            let r = fut
                .await
                .map(|s| s.map(|s| Self::convert(&realm, &s)))
                .map_err(|e| e.to_string());
            let _ = tx.send((token, r)).await;
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
    fn answered(&mut self, token: u64, answer: &Fetched) {
        let Some(key) = self.waiting.remove(&token) else {
            return;
        };
        if let Ok(v) = answer {
            self.recent.retain(|_, (at, _)| at.elapsed() < RECENT);
            self.recent.insert(key, (Instant::now(), v.clone()));
        }
    }
}
