//! Digest authentication of leaves (RFC 3261 §22, RFC 7616), against a
//! subscriber [`Directory`].
//!
//! The realm is the farm's domain. Nonces are bound to the node that
//! issued them, and each (nonce, nc) is accepted once (see
//! [`ringmesh_sip::digest`]): a nonce of another member or of this node's
//! earlier run, an expired one, or a replayed request gets a new challenge
//! with `stale=true`. Credentials are kept only as HA1 values.
//!
//! The directory never blocks: it answers from what it holds, or says
//! [`Found::Pending`] and its driver reports the answer later
//! ([`crate::Proxy::handle_subscriber`]), when the request runs again.

use std::sync::Arc;

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::digest::{self, DigestAuth, Ha1};
use ringmesh_sip::{Message, Uri};

use crate::observe::AuthFailure;

/// What the supernode knows of one subscriber.
#[derive(Debug, Clone)]
pub struct SubscriberInfo {
    /// The digest username.
    pub private_id: String,
    pub ha1: Option<Ha1>,
    /// The AORs it may register and assert, canonical; the first is its
    /// default identity.
    pub public_ids: Vec<Aor>,
    /// Implicit registration sets (3GPP TS 23.228): members of one set
    /// register and de-register together. Each member is a public id.
    pub implicit_sets: Vec<Vec<Aor>>,
    pub barred: bool,
    /// Initial filter criteria, in ascending priority.
    pub services: Vec<crate::ifc::Criterion>,
    /// Where the subscriber is, for the services nearest to it (empty:
    /// the region of the supernode it talks to).
    pub region: String,
}

impl SubscriberInfo {
    pub fn owns(&self, aor: &Aor) -> bool {
        self.public_ids.contains(aor)
    }

    /// The implicit registration set `aor` belongs to, in provisioning
    /// order, if it is in one.
    pub fn implicit_set(&self, aor: &Aor) -> Option<&[Aor]> {
        self.implicit_sets
            .iter()
            .find(|set| set.contains(aor))
            .map(Vec::as_slice)
    }
}

/// The AOR an implicit registration set's bindings are kept under: its
/// first `sip:` member (a set's `tel:` numbers are reached through it), or
/// its first member. Every supernode picks the same one from the same set.
pub fn set_key(set: &[Aor]) -> Option<&Aor> {
    set.iter()
        .find(|a| a.as_bytes().starts_with(b"sip:"))
        .or_else(|| set.first())
}

/// A directory answer: now, or later through
/// [`crate::Proxy::handle_subscriber`].
#[derive(Debug)]
pub enum Found {
    Ready(Option<Arc<SubscriberInfo>>),
    /// The directory's source is unreachable and the subscriber is not
    /// held here.
    Unavailable,
    Pending,
}

/// A lookup that completed later: the subscriber, if any (`Err` when the
/// directory's source could not answer).
pub type Fetched = Result<Option<Arc<SubscriberInfo>>, String>;

/// Where subscribers come from. Lookups are synchronous: an answer not at
/// hand is [`Found::Pending`], filed under `token`.
pub trait Directory: Send + 'static {
    /// By digest username (private identity).
    fn by_private_id(&mut self, id: &str, token: u64) -> Found;
    /// By public identity (AOR).
    fn by_public_id(&mut self, aor: &Aor, token: u64) -> Found;
    /// The answer to the pending lookup `token` arrived: keep it for the
    /// request that runs again now.
    fn answered(&mut self, _token: u64, _answer: &Fetched) {}
}

// ---- digest -----------------------------------------------------------------

/// The outcome for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Valid credentials of this subscriber.
    Authenticated(Arc<SubscriberInfo>),
    /// Challenge (again); `failure` says why credentials that were sent
    /// were refused (none: there were none).
    Challenge {
        stale: bool,
        failure: Option<AuthFailure>,
    },
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

    /// The realm: the farm's domain.
    pub fn realm(&self) -> &str {
        &self.realm
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
                failure: None,
            };
        };
        let user = String::from_utf8_lossy(&creds.username()).into_owned();
        let sub = match self.directory.by_private_id(&user, token) {
            Found::Ready(Some(s)) => s,
            Found::Ready(None) => {
                return Verdict::Challenge {
                    stale: false,
                    failure: Some(AuthFailure::UnknownUser),
                };
            }
            Found::Pending => return Verdict::Pending,
            Found::Unavailable => return Verdict::Unavailable,
        };
        let Some(ha1) = &sub.ha1 else {
            return Verdict::Challenge {
                stale: false,
                failure: Some(AuthFailure::UnknownUser),
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
                failure: Some(AuthFailure::StaleNonce),
            },
            digest::Verdict::Foreign => Verdict::Challenge {
                stale: true,
                failure: Some(AuthFailure::ForeignNonce),
            },
            digest::Verdict::Replay => Verdict::Challenge {
                stale: true,
                failure: Some(AuthFailure::Replay),
            },
            digest::Verdict::Invalid(_) => Verdict::Challenge {
                stale: false,
                failure: Some(AuthFailure::BadCredentials),
            },
        }
    }

    /// A 401 (or, with `proxy`, 407) carrying fresh challenges.
    pub fn challenge(
        &mut self,
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
