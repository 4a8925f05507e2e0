//! Digest authentication of leaves against the subscriber list.
//!
//! The realm is the farm's domain. Nonces are stateless (see
//! [`ringmesh_sip::digest`]): any supernode with the farm secret verifies
//! any other's. Credentials are kept only as HA1 values.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use ringmesh_sip::digest::{self, DigestAuth, Ha1};
use ringmesh_sip::{Message, Uri};
use serde::Deserialize;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid credentials for this user name.
    Authenticated(String),
    /// Challenge (again); `reason` is a metrics label.
    Challenge { stale: bool, reason: &'static str },
}

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
}

/// Digest authentication for one realm.
#[derive(Debug)]
pub struct Auth {
    realm: String,
    digest: DigestAuth,
    users: HashMap<Vec<u8>, Ha1>,
}

impl Auth {
    /// Loads a subscriber list:
    ///
    /// ```toml
    /// [[subscriber]]
    /// user = "alice"
    /// password = "secret"          # or ha1-md5 = "…" and ha1-sha256 = "…"
    /// ```
    pub fn load(path: &Path, realm: &str, digest: DigestAuth) -> anyhow::Result<Auth> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("subscribers {}: {e}", path.display()))?;
        let file: SubscriberFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("subscribers {}: {}", path.display(), e.message()))?;
        let mut users = HashMap::with_capacity(file.subscriber.len());
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
            users.insert(s.user.into_bytes(), ha1);
        }
        Ok(Auth::new(realm, digest, users))
    }

    pub fn new(realm: &str, digest: DigestAuth, users: HashMap<Vec<u8>, Ha1>) -> Auth {
        Auth {
            realm: realm.to_string(),
            digest,
            users,
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether a subscriber with this (unescaped) user name exists.
    pub fn knows(&self, user: &[u8]) -> bool {
        self.users.contains_key(user)
    }

    /// Checks `Authorization` (`proxy == false`) or `Proxy-Authorization`.
    ///
    /// The digest `uri` must name the Request-URI (RFC 3261 §22.4). Some
    /// UAs (sipp among them) put the server's address there instead of the
    /// domain; `names_us` lets the caller accept a URI that addresses this
    /// farm with the same user part, which authorises nothing more.
    pub fn verify(
        &self,
        msg: &Message,
        proxy: bool,
        now_unix_secs: u64,
        names_us: impl Fn(&Uri<'_>) -> bool,
    ) -> Verdict {
        let Some(creds) = digest::find_credentials(msg, proxy, self.realm.as_bytes()) else {
            return Verdict::Challenge {
                stale: false,
                reason: "no_credentials",
            };
        };
        let user = creds.username();
        let Some(ha1) = self.users.get(user.as_ref()) else {
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
            digest::Verdict::Valid => {
                Verdict::Authenticated(String::from_utf8_lossy(&user).into_owned())
            }
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
