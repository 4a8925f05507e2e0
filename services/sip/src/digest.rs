//! Digest authentication: RFC 3261 §22 with RFC 7616 algorithms and
//! RFC 8760 (SHA-256 for SIP), with node-bound nonces each (nonce, nc) of
//! which is accepted once.
//!
//! A registrar or proxy uses it in three steps:
//!
//! 1. [`find_credentials`] picks the `Authorization` (or
//!    `Proxy-Authorization`) value for its realm. A scheme other than
//!    `Digest`, a value that does not parse, or another realm all mean "no
//!    usable credentials": answer with a challenge (401/407), never 400
//!    (RFC 4475 §3.3.7).
//! 2. The TU looks the [`Credentials::username`] up in its subscriber list,
//!    which stores only [`Ha1`] values, and calls [`DigestAuth::verify`].
//! 3. On anything but [`Verdict::Valid`] it answers with a new challenge
//!    ([`DigestAuth::write_challenges`]): with `stale=true` when the
//!    verdict is [`Verdict::Stale`], [`Verdict::Foreign`] or
//!    [`Verdict::Replay`] (the client retries with the new nonce without
//!    asking its user), without it for [`Verdict::Invalid`].
//!
//! ## What is accepted
//!
//! Only the algorithms configured ([`DigestAuth::with_algorithms`];
//! SHA-256 then MD5 by default), offered in that order to every client: a
//! response computed with another one (MD5 where only SHA-256 is
//! configured, or no `algorithm` at all, which means MD5) is refused, so a
//! client cannot be talked down to a weaker hash. `qop=auth` is required,
//! with an 8-hex-digit `nc` and a non-empty `cnonce`: the RFC 2069 form
//! without qop has no nonce count, so nothing would stop its replay.
//!
//! ## Node-bound nonces
//!
//! ```text
//! nonce = base64url-nopad( version ‖ issued ‖ issuer ‖ seq ‖ mac )   (41 bytes → 55 chars)
//!   version = 0x02                                          (1 byte)
//!   issued  = seconds since the Unix epoch, big-endian      (8 bytes)
//!   issuer  = this process's random issuer id, big-endian   (8 bytes)
//!   seq     = the issuer's nonce counter, big-endian        (8 bytes)
//!   mac     = HMAC-SHA256(farm secret, "ringmesh-digest-nonce" ‖ 0x00 ‖
//!               version ‖ issued ‖ issuer ‖ seq ‖ realm)[..16]
//! ```
//!
//! The issuer is drawn at random by each process ([`DigestAuth::new`]
//! takes it: this crate reads no RNG), so a restarted node has a new one
//! and none of its old nonces can be replayed into its fresh state. Each
//! challenge takes the next `seq`.
//!
//! - A MAC that does not verify: forged, or another realm or farm
//!   ([`Invalid::Nonce`]).
//! - A valid MAC with another issuer: **foreign**, issued by another
//!   member of the farm or by a previous run of this node. Nothing is
//!   known here of its uses, so the response is not even checked:
//!   [`Verdict::Foreign`], a new challenge with `stale=true`, which is no
//!   brute-force failure (the phone moved to this node, or this node
//!   restarted; it simply retries with this node's nonce). A nonce of the
//!   version 1 format (`0x01 ‖ issued ‖ mac[..15]`, stateless, issued
//!   before nodes ran this one) whose MAC verifies is foreign too, so a
//!   phone holding one through a rolling upgrade gets a stale challenge,
//!   not a failure.
//! - Our own nonce, older than the lifetime (default 300 s) or issued more
//!   than [`MAX_CLOCK_SKEW`] in the future, or no longer tracked (below):
//!   stale. When the response is otherwise right the client gets a new
//!   challenge with `stale=true` and retries without asking its user.
//!
//! ## Each (nonce, nc) once
//!
//! RFC 7616 §3.3: the client counts the requests it sends with one nonce
//! in `nc`. This node accepts each (nonce, nc) once: a request captured on
//! the wire and sent again gets [`Verdict::Replay`] (a new challenge with
//! `stale=true`; no brute-force failure, since the sender knew nothing).
//! Values are accepted out of order within a window of [`NC_WINDOW`]
//! below the highest one seen, as parallel UDP transactions with one nonce
//! arrive in any order; an nc already seen, or below the window, is a
//! replay. A use is recorded only
//! when the response is right and the nonce fresh, so an attacker without
//! the password cannot spend a client's nonce counts.
//!
//! The state is kept per nonce this node issued, in a range of seqs
//! trimmed by time (a nonce past its lifetime is stale anyway) and capped
//! at [`DigestAuth::with_tracking_cap`] nonces (default
//! [`DEFAULT_NONCE_TRACKING_CAP`], 2^25 = 33,554,432: 111,000 challenges a
//! second over a 300 s lifetime). Memory per tracked nonce:
//!
//! - **2 bits** for a nonce unused or used once with nc = 1 (nearly every
//!   client): a dense array indexed by `seq - base`, at most 8 MiB at the
//!   default cap. 20,000–70,000 challenges a second over 300 s are 6–21
//!   million nonces: 1.5–5.3 MB of states (allocated in powers of two,
//!   2–8 MiB).
//! - **about 40 bytes more** ([`REUSED_ENTRY_BYTES`]) for a nonce used
//!   with several nc values (a client that reuses its nonce), in a sparse
//!   map of at most cap / 64 entries (524,288, about 20 MiB, at the
//!   default cap). When the map is full, a nonce that needs an entry is
//!   retired: that request, and any later one with this nonce, gets a
//!   stale challenge and the client continues with a fresh nonce.
//!
//! At 70,000 challenges a second with one nonce in 100 reused, the whole
//! state peaks at 16.8 MB.
//!
//! When issuing a nonce would exceed the cap, the oldest ones (by words of
//! 32) stop being tracked and are answered stale from then on, never
//! valid. So is a retired nonce: a request refused once is never accepted
//! later.
//!
//! ## The order of the checks
//!
//! [`DigestAuth::verify`] checks, and answers at the first that fails:
//! realm, algorithm, nonce MAC (forged), issuer (foreign), uri, qop,
//! response (wrong: [`Invalid::Response`]), then for a right response the
//! nonce's age and tracking (stale), then the nc (replay); only then is
//! the use recorded and the verdict [`Verdict::Valid`]. A stale or
//! replayed nonce is told only to a client whose response is right, so
//! these answers say nothing to someone guessing a password.
//!
//! Time is an input (`now_unix_secs`), and so is the issuer's randomness;
//! nothing here reads a clock or an RNG.

use std::borrow::Cow;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::header::HeaderName;
use crate::message::Message;
use crate::method::Method;
use crate::scan;
use crate::uri::{Scheme, Uri};
use crate::writer::Writer;

/// How far in the future a nonce's timestamp may be (clock differences
/// between supernodes) before it is treated as stale.
pub const MAX_CLOCK_SKEW: u64 = 60;

mod replay;

pub use replay::{NC_WINDOW, REUSED_ENTRY_BYTES, Tracking};
use replay::{Recorded, Tracker};

const NONCE_VERSION: u8 = 2;
const NONCE_LABEL: &[u8] = b"ringmesh-digest-nonce\0";
const NONCE_MAC_LEN: usize = 16;
const NONCE_LEN: usize = 1 + 8 + 8 + 8 + NONCE_MAC_LEN;
/// The nonce's length in base64url without padding.
const NONCE_CHARS: usize = (NONCE_LEN * 4).div_ceil(3);

/// Default most nonces whose uses a node tracks (see the module docs).
pub const DEFAULT_NONCE_TRACKING_CAP: usize = 1 << 25;

/// Digest algorithms (RFC 7616 §6.1). `-sess` variants hash the nonce and
/// cnonce into HA1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    /// Recognises an algorithm token, case-insensitively.
    pub fn parse(token: &[u8]) -> Option<Algorithm> {
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.as_str().as_bytes().eq_ignore_ascii_case(token))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sha256(&self) -> bool {
        matches!(self, Algorithm::Sha256 | Algorithm::Sha256Sess)
    }

    fn is_sess(&self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// The lower-case hex digest of the concatenation of `parts`.
    fn hash_hex(&self, parts: &[&[u8]]) -> String {
        if self.is_sha256() {
            let mut h = Sha256::new();
            parts.iter().for_each(|p| h.update(p));
            hex::encode(h.finalize())
        } else {
            let mut h = md5::Md5::new();
            parts.iter().for_each(|p| h.update(p));
            hex::encode(h.finalize())
        }
    }
}

/// The only secret a subscriber list keeps: HA1 = H(username ":" realm ":"
/// password) for MD5 and for SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct Ha1 {
    pub md5: [u8; 16],
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for Ha1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ha1(..)")
    }
}

impl Ha1 {
    /// Computes both HA1 values from a clear-text password (provisioning).
    pub fn compute(username: &[u8], realm: &[u8], password: &[u8]) -> Ha1 {
        let parts: [&[u8]; 5] = [username, b":", realm, b":", password];
        let mut md5 = md5::Md5::new();
        let mut sha = Sha256::new();
        for p in parts {
            md5.update(p);
            sha.update(p);
        }
        Ha1 {
            md5: md5.finalize().into(),
            sha256: sha.finalize().into(),
        }
    }

    /// From the hex forms a subscriber file stores.
    pub fn from_hex(md5_hex: &str, sha256_hex: &str) -> Option<Ha1> {
        let mut h = Ha1 {
            md5: [0; 16],
            sha256: [0; 32],
        };
        hex::decode_to_slice(md5_hex, &mut h.md5).ok()?;
        hex::decode_to_slice(sha256_hex, &mut h.sha256).ok()?;
        Some(h)
    }

    pub fn md5_hex(&self) -> String {
        hex::encode(self.md5)
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    fn hex_for(&self, algorithm: Algorithm) -> String {
        if algorithm.is_sha256() {
            self.sha256_hex()
        } else {
            self.md5_hex()
        }
    }
}

/// What a digest `response` covers (RFC 7616 §3.4.1, RFC 3261 §22.4).
#[derive(Debug, Clone, Copy)]
pub struct ResponseParams<'a> {
    pub algorithm: Algorithm,
    pub nonce: &'a [u8],
    pub cnonce: &'a [u8],
    /// The nonce count, 8 hex digits as sent.
    pub nc: &'a [u8],
    /// `Some(b"auth")`, or `None` for the RFC 2069 form without qop.
    pub qop: Option<&'a [u8]>,
    pub method: &'a [u8],
    /// The `uri` parameter (the digest-uri), as sent.
    pub uri: &'a [u8],
}

/// The expected `response` value, lower-case hex. Clients (tests, load
/// generators) use it to answer a challenge.
pub fn response_hex(ha1: &Ha1, p: &ResponseParams<'_>) -> String {
    let alg = p.algorithm;
    let mut a1 = ha1.hex_for(alg);
    if alg.is_sess() {
        a1 = alg.hash_hex(&[a1.as_bytes(), b":", p.nonce, b":", p.cnonce]);
    }
    let a2 = alg.hash_hex(&[p.method, b":", p.uri]);
    match p.qop {
        Some(qop) => alg.hash_hex(&[
            a1.as_bytes(),
            b":",
            p.nonce,
            b":",
            p.nc,
            b":",
            p.cnonce,
            b":",
            qop,
            b":",
            a2.as_bytes(),
        ]),
        None => alg.hash_hex(&[a1.as_bytes(), b":", p.nonce, b":", a2.as_bytes()]),
    }
}

/// Why an `Authorization` value gives no credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("not the Digest scheme")]
    NotDigest,
    #[error("malformed Digest credentials: {0}")]
    Malformed(&'static str),
}

/// A parsed `Digest` credentials value, borrowing from the message.
/// Values are kept raw (quoted where they were); accessors unquote.
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    username: &'a [u8],
    realm: &'a [u8],
    nonce: &'a [u8],
    uri: &'a [u8],
    response: &'a [u8],
    algorithm: Option<&'a [u8]>,
    cnonce: Option<&'a [u8]>,
    opaque: Option<&'a [u8]>,
    qop: Option<&'a [u8]>,
    nc: Option<&'a [u8]>,
}

impl<'a> Credentials<'a> {
    /// Parses `Digest` LWS digest-response (RFC 3261 §25.1, RFC 7616
    /// §3.4): comma-separated `name=value` pairs, values tokens or quoted
    /// strings. Unknown parameters are ignored; duplicates are refused.
    pub fn parse(value: &'a [u8]) -> Result<Credentials<'a>, CredentialsError> {
        let s = scan::trim(value);
        let scheme_end = scan::scan_token(s, 0);
        if !s[..scheme_end].eq_ignore_ascii_case(b"Digest") {
            return Err(CredentialsError::NotDigest);
        }
        if scheme_end < s.len() && !scan::is_ws(s[scheme_end]) {
            return Err(CredentialsError::NotDigest);
        }
        let mut c = Credentials::default();
        let mut seen = 0u16;
        let mut i = scan::skip_ws(s, scheme_end);
        while i < s.len() {
            if s[i] == b',' {
                i = scan::skip_ws(s, i + 1);
                continue;
            }
            let name_end = scan::scan_token(s, i);
            if name_end == i {
                return Err(CredentialsError::Malformed("invalid parameter name"));
            }
            let name = &s[i..name_end];
            let mut j = scan::skip_ws(s, name_end);
            if j >= s.len() || s[j] != b'=' {
                return Err(CredentialsError::Malformed("parameter without value"));
            }
            j = scan::skip_ws(s, j + 1);
            let vstart = j;
            if j < s.len() && s[j] == b'"' {
                j = scan::scan_quoted(s, j)
                    .ok_or(CredentialsError::Malformed("unterminated quoted string"))?;
            } else {
                while j < s.len() && s[j] != b',' && !scan::is_ws(s[j]) && s[j] != b'"' {
                    j += 1;
                }
            }
            if j == vstart {
                return Err(CredentialsError::Malformed("empty parameter value"));
            }
            let v = &s[vstart..j];
            const NAMES: [&str; 10] = [
                "username",
                "realm",
                "nonce",
                "uri",
                "response",
                "algorithm",
                "cnonce",
                "opaque",
                "qop",
                "nc",
            ];
            if let Some(k) = NAMES
                .iter()
                .position(|n| n.as_bytes().eq_ignore_ascii_case(name))
            {
                if seen & (1 << k) != 0 {
                    return Err(CredentialsError::Malformed("duplicate parameter"));
                }
                seen |= 1 << k;
                match k {
                    0 => c.username = v,
                    1 => c.realm = v,
                    2 => c.nonce = v,
                    3 => c.uri = v,
                    4 => c.response = v,
                    5 => c.algorithm = Some(v),
                    6 => c.cnonce = Some(v),
                    7 => c.opaque = Some(v),
                    8 => c.qop = Some(v),
                    _ => c.nc = Some(v),
                }
            }
            i = scan::skip_ws(s, j);
            if i < s.len() {
                if s[i] != b',' {
                    return Err(CredentialsError::Malformed(
                        "missing comma between parameters",
                    ));
                }
                i = scan::skip_ws(s, i + 1);
            }
        }
        if seen & 0b11111 != 0b11111 {
            return Err(CredentialsError::Malformed(
                "missing username, realm, nonce, uri or response",
            ));
        }
        Ok(c)
    }

    pub fn username(&self) -> Cow<'a, [u8]> {
        scan::unquote(self.username)
    }
    pub fn realm(&self) -> Cow<'a, [u8]> {
        scan::unquote(self.realm)
    }
    pub fn nonce(&self) -> Cow<'a, [u8]> {
        scan::unquote(self.nonce)
    }
    /// The digest-uri parameter.
    pub fn uri(&self) -> Cow<'a, [u8]> {
        scan::unquote(self.uri)
    }
    pub fn response(&self) -> Cow<'a, [u8]> {
        scan::unquote(self.response)
    }
    pub fn cnonce(&self) -> Option<Cow<'a, [u8]>> {
        self.cnonce.map(scan::unquote)
    }
    pub fn opaque(&self) -> Option<Cow<'a, [u8]>> {
        self.opaque.map(scan::unquote)
    }
    pub fn qop(&self) -> Option<Cow<'a, [u8]>> {
        self.qop.map(scan::unquote)
    }
    pub fn nc(&self) -> Option<Cow<'a, [u8]>> {
        self.nc.map(scan::unquote)
    }
    /// The algorithm (MD5 when absent); `None` for one we do not support.
    pub fn algorithm(&self) -> Option<Algorithm> {
        match self.algorithm {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(&scan::unquote(a)),
        }
    }
}

/// The first usable Digest credentials for `realm` in the message's
/// `Authorization` (`proxy == false`) or `Proxy-Authorization` headers.
/// `None` means: challenge.
pub fn find_credentials<'a>(
    msg: &'a Message,
    proxy: bool,
    realm: &[u8],
) -> Option<Credentials<'a>> {
    let name = if proxy {
        HeaderName::ProxyAuthorization
    } else {
        HeaderName::Authorization
    };
    msg.header_lines(name)
        .filter_map(|v| Credentials::parse(v).ok())
        .find(|c| c.realm().as_ref() == realm)
}

/// The outcome of [`DigestAuth::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The user knows the password, the nonce is fresh and this (nonce,
    /// nc) was not used before: now it is.
    Valid,
    /// The response is right but the nonce expired (or is no longer
    /// tracked): challenge again with `stale=true`.
    Stale,
    /// A nonce of another issuer (another node of the farm, or this node
    /// before a restart), with a valid MAC: challenge again with
    /// `stale=true`. The response was not checked; no failure.
    Foreign,
    /// The response is right but this (nonce, nc) was accepted before, or
    /// the nc is below the window: a replayed request. Challenge again
    /// with `stale=true` (the sender knew nothing: no brute-force failure).
    Replay,
    /// Challenge again (or refuse after too many attempts).
    Invalid(Invalid),
}

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The realm is not the one being verified.
    Realm,
    /// The nonce was not issued by this farm for this realm.
    Nonce,
    /// The `uri` parameter does not name the Request-URI.
    Uri,
    /// An algorithm that is not configured (or not supported).
    Algorithm,
    /// qop absent or other than `auth`, or qop without a valid nc or a
    /// cnonce.
    Qop,
    /// Wrong password (or tampered parameters).
    Response,
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Ours, within its lifetime, and still tracked.
    Fresh,
    /// Ours, but expired, from the future, or no longer tracked.
    Stale,
    /// A valid MAC, another issuer.
    Foreign,
    /// Not a nonce of this farm and realm.
    Forged,
}

/// The fields of a nonce whose MAC verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nonce {
    issued: u64,
    issuer: u64,
    seq: u64,
}

/// One node's digest authenticator: the farm secret, this process's
/// issuer id, the nonce lifetime, the algorithms offered, and the uses of
/// the nonces it issued (see the module docs). Not `Clone`: two copies
/// would issue the same nonces and each accept a request the other did.
pub struct DigestAuth {
    mac: Hmac<Sha256>,
    lifetime: u64,
    issuer: u64,
    opaque: Option<Vec<u8>>,
    /// Challenge algorithms, in the order they are offered; the only ones
    /// accepted.
    algorithms: Vec<Algorithm>,
    tracker: Tracker,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth")
            .field("lifetime", &self.lifetime)
            .field("issuer", &format_args!("{:016x}", self.issuer))
            .field("algorithms", &self.algorithms)
            .field("tracking", &self.tracker.tracking())
            .finish_non_exhaustive()
    }
}

/// Default nonce lifetime in seconds.
pub const DEFAULT_NONCE_LIFETIME: u64 = 300;

impl DigestAuth {
    /// `farm_secret` is shared by every supernode (at least 32 random
    /// bytes); nonces live `nonce_lifetime_secs`. `issuer` must be drawn at
    /// random by each process (a node that restarts draws a new one): it
    /// binds the nonces to this process and its replay state.
    pub fn new(farm_secret: &[u8], nonce_lifetime_secs: u64, issuer: u64) -> DigestAuth {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(farm_secret)
            .expect("HMAC takes keys of any length");
        DigestAuth {
            mac,
            lifetime: nonce_lifetime_secs,
            issuer,
            opaque: None,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            tracker: Tracker::new(nonce_lifetime_secs, DEFAULT_NONCE_TRACKING_CAP),
        }
    }

    /// Offers these algorithms, in this order (default SHA-256, MD5), and
    /// accepts only them. Many deployed UAs answer only the first challenge
    /// whatever its algorithm, so a farm with such clients lists MD5 first.
    /// An empty list keeps the default.
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> DigestAuth {
        if !algorithms.is_empty() {
            self.algorithms = algorithms.to_vec();
        }
        self
    }

    /// Adds an `opaque` parameter to challenges (clients echo it; it is
    /// not checked).
    pub fn with_opaque(mut self, opaque: &[u8]) -> DigestAuth {
        self.opaque = Some(opaque.to_vec());
        self
    }

    /// Tracks the uses of at most `cap` nonces (rounded up to a multiple
    /// of 32; default [`DEFAULT_NONCE_TRACKING_CAP`]). Older ones are
    /// answered stale. Call it before issuing nonces: it starts afresh.
    pub fn with_tracking_cap(mut self, cap: usize) -> DigestAuth {
        let next = self.tracker.next_seq();
        self.tracker = Tracker::new(self.lifetime, cap);
        self.tracker.skip_to(next);
        self
    }

    /// This process's issuer id.
    pub fn issuer(&self) -> u64 {
        self.issuer
    }

    /// What the replay state holds now.
    pub fn tracking(&self) -> Tracking {
        self.tracker.tracking()
    }

    fn nonce_mac(&self, version: u8, n: &Nonce, realm: &[u8]) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(NONCE_LABEL);
        m.update(&[version]);
        m.update(&n.issued.to_be_bytes());
        m.update(&n.issuer.to_be_bytes());
        m.update(&n.seq.to_be_bytes());
        m.update(realm);
        m
    }

    /// A new nonce for `realm`, issued now: it takes the next seq.
    pub fn nonce(&mut self, realm: &[u8], now_unix_secs: u64) -> String {
        let n = Nonce {
            issued: now_unix_secs,
            issuer: self.issuer,
            seq: self.tracker.issue(now_unix_secs),
        };
        let mut raw = [0u8; NONCE_LEN];
        raw[0] = NONCE_VERSION;
        raw[1..9].copy_from_slice(&n.issued.to_be_bytes());
        raw[9..17].copy_from_slice(&n.issuer.to_be_bytes());
        raw[17..25].copy_from_slice(&n.seq.to_be_bytes());
        let tag = self
            .nonce_mac(NONCE_VERSION, &n, realm)
            .finalize()
            .into_bytes();
        raw[25..].copy_from_slice(&tag[..NONCE_MAC_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The fields of a nonce of this farm and realm; `None` when forged.
    fn decode_nonce(&self, nonce: &[u8], realm: &[u8]) -> Option<Nonce> {
        if nonce.len() != NONCE_CHARS {
            return None;
        }
        let mut raw = [0u8; NONCE_LEN];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(NONCE_LEN) => {}
            _ => return None,
        }
        if raw[0] != NONCE_VERSION {
            return None;
        }
        let field = |i: usize| u64::from_be_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let n = Nonce {
            issued: field(1),
            issuer: field(9),
            seq: field(17),
        };
        self.nonce_mac(raw[0], &n, realm)
            .verify_truncated_left(&raw[25..])
            .is_ok()
            .then_some(n)
    }

    /// Whether `nonce` is a version-1 nonce of this farm and realm (the
    /// stateless format: version ‖ issued ‖ MAC, 24 bytes), issued by a
    /// node before it ran this version.
    fn is_v1_nonce(&self, nonce: &[u8], realm: &[u8]) -> bool {
        const V1_LEN: usize = 1 + 8 + 15;
        if nonce.len() != (V1_LEN * 4).div_ceil(3) {
            return false;
        }
        let mut raw = [0u8; V1_LEN];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(V1_LEN) if raw[0] == 1 => {}
            _ => return false,
        }
        let mut m = self.mac.clone();
        m.update(NONCE_LABEL);
        m.update(&raw[..9]);
        m.update(realm);
        m.verify_truncated_left(&raw[9..]).is_ok()
    }

    /// Whether our nonce `n` is within its lifetime at `now`.
    fn in_lifetime(&self, n: &Nonce, now_unix_secs: u64) -> bool {
        now_unix_secs <= n.issued.saturating_add(self.lifetime)
            && n.issued <= now_unix_secs.saturating_add(MAX_CLOCK_SKEW)
    }

    /// Checks a nonce's MAC, issuer, age and tracking.
    pub fn check_nonce(&self, nonce: &[u8], realm: &[u8], now_unix_secs: u64) -> NonceState {
        match self.decode_nonce(nonce, realm) {
            None if self.is_v1_nonce(nonce, realm) => NonceState::Foreign,
            None => NonceState::Forged,
            Some(n) if n.issuer != self.issuer => NonceState::Foreign,
            Some(n) if self.in_lifetime(&n, now_unix_secs) && self.tracker.is_live(n.seq) => {
                NonceState::Fresh
            }
            Some(_) => NonceState::Stale,
        }
    }

    /// Verifies credentials for a request with `method` and `request_uri`
    /// against the user's stored `ha1`, in `realm`, and records the use of
    /// the (nonce, nc) when they are valid. The checks run in the order
    /// the module docs give.
    pub fn verify(
        &mut self,
        creds: &Credentials<'_>,
        realm: &[u8],
        method: &Method,
        request_uri: &[u8],
        ha1: &Ha1,
        now_unix_secs: u64,
    ) -> Verdict {
        if creds.realm().as_ref() != realm {
            return Verdict::Invalid(Invalid::Realm);
        }
        let Some(algorithm) = creds.algorithm().filter(|a| self.algorithms.contains(a)) else {
            return Verdict::Invalid(Invalid::Algorithm);
        };
        let nonce = creds.nonce();
        let Some(n) = self.decode_nonce(&nonce, realm) else {
            if self.is_v1_nonce(&nonce, realm) {
                return Verdict::Foreign;
            }
            return Verdict::Invalid(Invalid::Nonce);
        };
        if n.issuer != self.issuer {
            return Verdict::Foreign;
        }
        let uri = creds.uri();
        if !uri_matches(&uri, request_uri) {
            return Verdict::Invalid(Invalid::Uri);
        }
        let (Some(qop), Some(nc), Some(cnonce)) = (creds.qop(), creds.nc(), creds.cnonce()) else {
            return Verdict::Invalid(Invalid::Qop);
        };
        let Some(nc_value) = parse_nc(&nc) else {
            return Verdict::Invalid(Invalid::Qop);
        };
        if !qop.eq_ignore_ascii_case(b"auth") || cnonce.is_empty() {
            return Verdict::Invalid(Invalid::Qop);
        }
        let expected = response_hex(
            ha1,
            &ResponseParams {
                algorithm,
                nonce: &nonce,
                cnonce: &cnonce,
                nc: &nc,
                qop: Some(&qop),
                method: method.as_bytes(),
                uri: &uri,
            },
        );
        if !ct_eq_hex(expected.as_bytes(), &creds.response()) {
            return Verdict::Invalid(Invalid::Response);
        }
        self.tracker.expire(now_unix_secs);
        if !self.in_lifetime(&n, now_unix_secs) {
            return Verdict::Stale;
        }
        match self.tracker.record(n.seq, nc_value) {
            Recorded::New => Verdict::Valid,
            Recorded::Replay => Verdict::Replay,
            Recorded::Untracked => Verdict::Stale,
        }
    }

    /// One challenge value per configured algorithm, in order (RFC 8760
    /// §2.4: in order of preference), all with one new nonce.
    pub fn challenges(&mut self, realm: &[u8], stale: bool, now_unix_secs: u64) -> Vec<Vec<u8>> {
        let nonce = self.nonce(realm, now_unix_secs);
        self.algorithms
            .iter()
            .map(|&alg| {
                let mut v = Vec::with_capacity(160);
                v.extend_from_slice(b"Digest realm=");
                push_quoted(&mut v, realm);
                v.extend_from_slice(b", nonce=\"");
                v.extend_from_slice(nonce.as_bytes());
                v.extend_from_slice(b"\", algorithm=");
                v.extend_from_slice(alg.as_str().as_bytes());
                v.extend_from_slice(b", qop=\"auth\"");
                if let Some(o) = &self.opaque {
                    v.extend_from_slice(b", opaque=");
                    push_quoted(&mut v, o);
                }
                if stale {
                    v.extend_from_slice(b", stale=true");
                }
                v
            })
            .collect()
    }

    /// Adds the challenges to a 401 (`WWW-Authenticate`) or, with
    /// `proxy`, a 407 (`Proxy-Authenticate`) being written.
    pub fn write_challenges(
        &mut self,
        w: &mut Writer,
        proxy: bool,
        realm: &[u8],
        stale: bool,
        now_unix_secs: u64,
    ) {
        let name = if proxy {
            HeaderName::ProxyAuthenticate
        } else {
            HeaderName::WwwAuthenticate
        };
        for c in self.challenges(realm, stale, now_unix_secs) {
            w.header(name, &c);
        }
    }
}

/// An nc value: exactly 8 hex digits (RFC 7616 §3.4).
fn parse_nc(nc: &[u8]) -> Option<u32> {
    if nc.len() != 8 || !nc.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(nc).ok()?, 16).ok()
}

/// A quoted-string, escaping `"` and `\`; control characters are dropped.
fn push_quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            0..=0x1f | 0x7f => {}
            _ => out.push(c),
        }
    }
    out.push(b'"');
}

/// Compares an expected lower-case hex digest with a received one,
/// case-insensitively, in time independent of where they differ.
fn ct_eq_hex(expected: &[u8], got: &[u8]) -> bool {
    if expected.len() != got.len() {
        return false;
    }
    expected
        .iter()
        .zip(got)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
        == 0
}

/// Whether the digest-uri names the Request-URI: byte-equal, or the same
/// scheme, user, host (case-insensitive) and port (defaults applied), so
/// that clients which normalise parameters or case still pass while
/// credentials for another target never do.
pub fn uri_matches(digest_uri: &[u8], request_uri: &[u8]) -> bool {
    if digest_uri == request_uri {
        return true;
    }
    let (Ok(a), Ok(b)) = (Uri::parse(digest_uri), Uri::parse(request_uri)) else {
        return false;
    };
    if a.scheme() != b.scheme() || !a.is_sip_or_sips() {
        return false;
    }
    let default_port = if a.scheme() == Scheme::Sips {
        5061
    } else {
        5060
    };
    fn user<'a>(u: &Uri<'a>) -> Option<Cow<'a, [u8]>> {
        u.user().map(scan::unescape)
    }
    let host_eq = match (a.host(), b.host()) {
        (Some(x), Some(y)) => x.text.eq_ignore_ascii_case(y.text),
        _ => false,
    };
    host_eq
        && user(&a) == user(&b)
        && a.port().unwrap_or(default_port) == b.port().unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    // RFC 7616 §3.9.1.
    const R7616: &str = r#"Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;

    fn params<'a>(ca: &'a [Cow<'a, [u8]>; 5], alg: Algorithm) -> ResponseParams<'a> {
        ResponseParams {
            algorithm: alg,
            nonce: &ca[0],
            cnonce: &ca[1],
            nc: &ca[2],
            qop: Some(&ca[3]),
            method: b"GET",
            uri: &ca[4],
        }
    }

    #[test]
    fn rfc7616_example_sha256_and_md5() {
        let c = Credentials::parse(R7616.as_bytes()).unwrap();
        assert_eq!(c.username().as_ref(), b"Mufasa");
        assert_eq!(c.realm().as_ref(), b"http-auth@example.org");
        assert_eq!(c.algorithm(), Some(Algorithm::Sha256));
        assert_eq!(c.nc().unwrap().as_ref(), b"00000001");
        assert_eq!(
            c.opaque().unwrap().as_ref(),
            b"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
        );
        let ha1 = Ha1::compute(b"Mufasa", b"http-auth@example.org", b"Circle of Life");
        let ca = [
            c.nonce(),
            c.cnonce().unwrap(),
            c.nc().unwrap(),
            c.qop().unwrap(),
            c.uri(),
        ];
        assert_eq!(
            response_hex(&ha1, &params(&ca, Algorithm::Sha256)),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(
            response_hex(&ha1, &params(&ca, Algorithm::Md5)),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn rfc2617_example() {
        let v = br#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = Credentials::parse(v).unwrap();
        assert_eq!(c.algorithm(), Some(Algorithm::Md5), "MD5 when absent");
        let ha1 = Ha1::compute(b"Mufasa", b"testrealm@host.com", b"Circle Of Life");
        let ca = [
            c.nonce(),
            c.cnonce().unwrap(),
            c.nc().unwrap(),
            c.qop().unwrap(),
            c.uri(),
        ];
        assert_eq!(
            response_hex(&ha1, &params(&ca, Algorithm::Md5)),
            "6629fae49393a05397450978507c4ef1"
        );
        assert_eq!(ha1.md5_hex(), "939e7578ed9e3c518a452acee763bce9");
        assert_eq!(Ha1::from_hex(&ha1.md5_hex(), &ha1.sha256_hex()), Some(ha1));
    }

    #[test]
    fn parsing_rules() {
        // Scheme case, LWS and folding, unquoted values, unknown params.
        let c = Credentials::parse(
            b"digest  username=\"a\\\"b\" ,realm=\"r\",\r\n nonce=n1, uri=\"sip:r\", response=\"ab\", foo=bar, username*=x",
        )
        .unwrap();
        assert_eq!(c.username().as_ref(), b"a\"b");
        assert_eq!(c.nonce().as_ref(), b"n1");
        assert_eq!(c.qop(), None);
        for bad in [
            &b"NoOneKnowsThisScheme opaque-data=here"[..],
            b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            b"Digestusername=\"a\"",
            b"",
        ] {
            assert_eq!(
                Credentials::parse(bad).unwrap_err(),
                CredentialsError::NotDigest
            );
        }
        for bad in [
            &b"Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\""[..],
            b"Digest username=\"a\", username=\"b\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"",
            b"Digest username=\"a, realm=\"r\"",
            b"Digest username",
            b"Digest username=",
            b"Digest username=\"a\" realm=\"r\"",
        ] {
            assert!(matches!(Credentials::parse(bad), Err(CredentialsError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn regaut01_has_no_usable_credentials() {
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/rfc4475/regaut01.dat"
        ))
        .unwrap();
        let m = Message::parse(Bytes::from(raw)).unwrap();
        assert!(m.has_header(HeaderName::Authorization));
        assert!(
            find_credentials(&m, false, b"example.com").is_none(),
            "challenge, not 400"
        );
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const REALM: &[u8] = b"ringmesh.test";
    const NOW: u64 = 1_800_000_000;
    const ISSUER: u64 = 0x5eed_0000_0000_0001;
    const URI: &str = "sip:ringmesh.test";

    fn node() -> DigestAuth {
        DigestAuth::new(SECRET, DEFAULT_NONCE_LIFETIME, ISSUER)
    }

    /// A parameter of a challenge value.
    fn param(challenge: &[u8], name: &str) -> String {
        let text = String::from_utf8(challenge.to_vec()).unwrap();
        let at = text.find(&format!(" {name}=")).unwrap() + name.len() + 2;
        let rest = &text[at..];
        let end = rest.find(',').unwrap_or(rest.len());
        rest[..end].trim_matches('"').to_string()
    }

    /// alice's credentials for REGISTER sip:ringmesh.test with `nonce`,
    /// computed with `algorithm` (MD5, and no `algorithm` parameter, when
    /// `None`), `password` and nonce count `nc`; without qop (RFC 2069)
    /// unless `qop`.
    fn credentials(
        nonce: &str,
        algorithm: Option<Algorithm>,
        password: &[u8],
        nc: u32,
        qop: bool,
    ) -> Vec<u8> {
        let alg = algorithm.unwrap_or(Algorithm::Md5);
        let ha1 = Ha1::compute(b"alice", REALM, password);
        let nc_text = format!("{nc:08x}");
        let response = response_hex(
            &ha1,
            &ResponseParams {
                algorithm: alg,
                nonce: nonce.as_bytes(),
                cnonce: b"0a4f113b",
                nc: nc_text.as_bytes(),
                qop: qop.then_some(&b"auth"[..]),
                method: b"REGISTER",
                uri: URI.as_bytes(),
            },
        );
        let mut v = format!(
            r#"Digest username="alice", realm="ringmesh.test", nonce="{nonce}", uri="{URI}", response="{response}""#
        );
        if let Some(a) = algorithm {
            v.push_str(&format!(", algorithm={}", a.as_str()));
        }
        if qop {
            v.push_str(&format!(", qop=auth, nc={nc_text}, cnonce=\"0a4f113b\""));
        }
        v.into_bytes()
    }

    /// The answer to `challenge` (its nonce and algorithm), with nc `nc`.
    fn answer_nc(challenge: &[u8], password: &[u8], nc: u32) -> Vec<u8> {
        let alg = Algorithm::parse(param(challenge, "algorithm").as_bytes()).unwrap();
        credentials(&param(challenge, "nonce"), Some(alg), password, nc, true)
    }

    fn answer(challenge: &[u8], password: &[u8]) -> Vec<u8> {
        answer_nc(challenge, password, 1)
    }

    /// The first challenge of a new 401.
    fn challenge(auth: &mut DigestAuth, now: u64) -> Vec<u8> {
        auth.challenges(REALM, false, now).remove(0)
    }

    fn verify(auth: &mut DigestAuth, value: &[u8], now: u64) -> Verdict {
        let c = Credentials::parse(value).unwrap();
        let ha1 = Ha1::compute(b"alice", REALM, b"secret");
        auth.verify(&c, REALM, &Method::Register, URI.as_bytes(), &ha1, now)
    }

    #[test]
    fn challenge_round_trip_both_algorithms() {
        let mut auth = node();
        let [sha, md5]: [Vec<u8>; 2] = auth.challenges(REALM, false, NOW).try_into().unwrap();
        let sha_text = String::from_utf8(sha.clone()).unwrap();
        assert!(
            sha_text.starts_with("Digest realm=\"ringmesh.test\", nonce=\""),
            "{sha_text}"
        );
        assert!(sha_text.contains("algorithm=SHA-256") && sha_text.contains("qop=\"auth\""));
        assert!(!sha_text.contains("stale"));
        assert!(
            String::from_utf8(md5.clone())
                .unwrap()
                .contains("algorithm=MD5,")
        );
        assert_eq!(param(&sha, "nonce"), param(&md5, "nonce"), "one nonce");
        assert_eq!(param(&sha, "nonce").len(), NONCE_CHARS);
        for alg in [0, 1] {
            let ch = auth.challenges(REALM, false, NOW).remove(alg);
            assert_eq!(
                verify(&mut auth, &answer(&ch, b"Secret"), NOW + 10),
                Verdict::Invalid(Invalid::Response),
                "wrong password"
            );
            assert_eq!(
                verify(&mut auth, &answer(&ch, b"secret"), NOW + 10),
                Verdict::Valid,
                "{alg}: a wrong guess spent nothing"
            );
        }
        let mut w = Writer::response(401);
        node()
            .with_opaque(b"o\"p")
            .write_challenges(&mut w, true, REALM, true, NOW);
        let text = String::from_utf8(w.finish(b"").to_vec()).unwrap();
        assert_eq!(text.matches("Proxy-Authenticate: Digest").count(), 2);
        assert!(
            text.find("SHA-256").unwrap() < text.find("MD5").unwrap(),
            "preferred first"
        );
        assert!(text.contains("opaque=\"o\\\"p\", stale=true"));
    }

    #[test]
    fn each_challenge_takes_the_next_seq() {
        let mut auth = node();
        let a = param(&challenge(&mut auth, NOW), "nonce");
        let b = param(&challenge(&mut auth, NOW), "nonce");
        assert_ne!(a, b, "same second, different nonces");
        let raw = |n: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(n)
                .unwrap()
        };
        let (ra, rb) = (raw(&a), raw(&b));
        assert_eq!(ra[0], 2, "version");
        assert_eq!(ra[1..9], NOW.to_be_bytes());
        assert_eq!(ra[9..17], ISSUER.to_be_bytes());
        assert_eq!(u64::from_be_bytes(rb[17..25].try_into().unwrap()), 1);
        assert_eq!(u64::from_be_bytes(ra[17..25].try_into().unwrap()), 0);
    }

    #[test]
    fn configured_algorithm_order() {
        let mut auth = DigestAuth::new(SECRET, 300, ISSUER)
            .with_algorithms(&[Algorithm::Md5, Algorithm::Sha256]);
        let c = auth.challenges(REALM, false, NOW);
        assert_eq!(c.len(), 2);
        assert!(String::from_utf8_lossy(&c[0]).contains("algorithm=MD5,"));
        assert!(String::from_utf8_lossy(&c[1]).contains("algorithm=SHA-256,"));
        let mut only = DigestAuth::new(SECRET, 300, ISSUER).with_algorithms(&[Algorithm::Sha256]);
        assert_eq!(only.challenges(REALM, false, NOW).len(), 1);
        let mut default = DigestAuth::new(SECRET, 300, ISSUER).with_algorithms(&[]);
        assert!(
            String::from_utf8_lossy(&default.challenges(REALM, false, NOW)[0]).contains("SHA-256")
        );
    }

    #[test]
    fn sess_variants_when_configured() {
        let mut auth = DigestAuth::new(SECRET, 300, ISSUER)
            .with_algorithms(&[Algorithm::Sha256Sess, Algorithm::Md5Sess]);
        let ha1 = Ha1::compute(b"alice", REALM, b"secret");
        for alg in [Algorithm::Md5Sess, Algorithm::Sha256Sess] {
            let nonce = auth.nonce(REALM, NOW);
            let p = ResponseParams {
                algorithm: alg,
                nonce: nonce.as_bytes(),
                cnonce: b"c",
                nc: b"00000002",
                qop: Some(b"auth"),
                method: b"REGISTER",
                uri: b"sip:ringmesh.test",
            };
            let r = response_hex(&ha1, &p);
            let v = format!(
                r#"Digest username="alice", realm="ringmesh.test", nonce="{nonce}", uri="sip:ringmesh.test", response="{}", algorithm={}, qop="auth", nc=00000002, cnonce="c""#,
                r.to_uppercase(),
                alg.as_str()
            );
            assert_eq!(
                verify(&mut auth, v.as_bytes(), NOW),
                Verdict::Valid,
                "{alg:?}, hex case-insensitive"
            );
        }
        // Not configured by default.
        let mut plain = node();
        let nonce = plain.nonce(REALM, NOW);
        let v = credentials(&nonce, Some(Algorithm::Sha256Sess), b"secret", 1, true);
        assert_eq!(
            verify(&mut plain, &v, NOW),
            Verdict::Invalid(Invalid::Algorithm)
        );
    }

    #[test]
    fn realm_uri_qop_and_algorithm_checks() {
        let mut auth = node();
        let ha1 = Ha1::compute(b"alice", REALM, b"secret");
        let sha = challenge(&mut auth, NOW);
        let good = String::from_utf8(answer(&sha, b"secret")).unwrap();
        let c = Credentials::parse(good.as_bytes()).unwrap();
        let check = |auth: &mut DigestAuth, realm: &[u8], method: &Method, ruri: &[u8]| {
            auth.verify(&c, realm, method, ruri, &ha1, NOW)
        };
        assert_eq!(
            check(&mut auth, b"other.test", &Method::Register, URI.as_bytes()),
            Verdict::Invalid(Invalid::Realm)
        );
        assert_eq!(
            check(&mut auth, REALM, &Method::Register, b"sip:evil.test"),
            Verdict::Invalid(Invalid::Uri)
        );
        assert_eq!(
            check(&mut auth, REALM, &Method::Invite, URI.as_bytes()),
            Verdict::Invalid(Invalid::Response),
            "the method is covered"
        );
        // Same target spelled differently is fine; the response covers the uri param.
        assert_eq!(
            check(
                &mut auth,
                REALM,
                &Method::Register,
                b"sip:RingMesh.Test:5060;transport=tcp"
            ),
            Verdict::Valid
        );
        for (from, to) in [
            ("qop=auth", "qop=auth-int"),
            (", nc=00000001", ""),
            ("nc=00000001", "nc=0000001"),
            ("nc=00000001", "nc=0000000g"),
            (", cnonce=\"0a4f113b\"", ""),
            ("cnonce=\"0a4f113b\"", "cnonce=\"\""),
        ] {
            let v = good.replace(from, to);
            assert_eq!(
                verify(&mut auth, v.as_bytes(), NOW),
                Verdict::Invalid(Invalid::Qop),
                "{to}"
            );
        }
        let v = good.replace("algorithm=SHA-256", "algorithm=SHA-512-256");
        assert_eq!(
            verify(&mut auth, v.as_bytes(), NOW),
            Verdict::Invalid(Invalid::Algorithm)
        );
        // Wrong realm in the HA1 (provisioned for another domain).
        let other = Ha1::compute(b"alice", b"other.test", b"secret");
        let sha = challenge(&mut auth, NOW);
        let value = answer(&sha, b"secret");
        let c = Credentials::parse(&value).unwrap();
        assert_eq!(
            auth.verify(&c, REALM, &Method::Register, URI.as_bytes(), &other, NOW),
            Verdict::Invalid(Invalid::Response)
        );
    }

    #[test]
    fn stale_and_forged_nonces() {
        let mut auth = node();
        let ch = challenge(&mut auth, NOW);
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"secret"), NOW + 300),
            Verdict::Valid,
            "fresh to the last second"
        );
        let ch = challenge(&mut auth, NOW);
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"secret"), NOW + 301),
            Verdict::Stale,
            "expired but otherwise valid"
        );
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"nope"), NOW + 301),
            Verdict::Invalid(Invalid::Response),
            "stale only when the rest is right"
        );
        let ch = challenge(&mut auth, NOW);
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"secret"), NOW - MAX_CLOCK_SKEW),
            Verdict::Valid,
            "a clock a little behind"
        );
        let ch = challenge(&mut auth, NOW);
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"secret"), NOW - MAX_CLOCK_SKEW - 1),
            Verdict::Stale
        );

        // Another farm's secret: forged.
        let mut other_farm = DigestAuth::new(b"another farm secret, 32 bytes...", 300, ISSUER);
        let ch = challenge(&mut auth, NOW);
        assert_eq!(
            verify(&mut other_farm, &answer(&ch, b"secret"), NOW),
            Verdict::Invalid(Invalid::Nonce)
        );
        // A nonce for another realm does not verify here.
        let elsewhere = auth.nonce(b"other.test", NOW);
        assert_eq!(
            auth.check_nonce(elsewhere.as_bytes(), REALM, NOW),
            NonceState::Forged
        );
        // Tampered fields (a refreshed timestamp, another seq or issuer),
        // even with a response recomputed by someone who knows the password.
        let nonce = auth.nonce(REALM, NOW - 1000);
        for (at, value) in [(1, NOW), (17, 0), (9, ISSUER ^ 1)] {
            let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&nonce)
                .unwrap();
            raw[at..at + 8].copy_from_slice(&value.to_be_bytes());
            let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
            assert_eq!(
                auth.check_nonce(tampered.as_bytes(), REALM, NOW),
                NonceState::Forged
            );
            let v = credentials(&tampered, Some(Algorithm::Sha256), b"secret", 1, true);
            assert_eq!(verify(&mut auth, &v, NOW), Verdict::Invalid(Invalid::Nonce));
        }
        // A version 1 nonce without a valid MAC is forged.
        let mut v1 = [0u8; 24];
        v1[0] = 1;
        let v1 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v1);
        assert_eq!(
            auth.check_nonce(v1.as_bytes(), REALM, NOW),
            NonceState::Forged
        );
        let mut wrong_version = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&nonce)
            .unwrap();
        wrong_version[0] = 3;
        let wrong_version = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wrong_version);
        assert_eq!(
            auth.check_nonce(wrong_version.as_bytes(), REALM, NOW),
            NonceState::Forged
        );
        for junk in [
            &b""[..],
            b"short",
            &[b'A'; NONCE_CHARS],
            &[0xff; NONCE_CHARS],
            &[b'%'; NONCE_CHARS],
        ] {
            assert_eq!(auth.check_nonce(junk, REALM, NOW), NonceState::Forged);
        }
    }

    /// An attacker who captured a REGISTER on the wire sends it again:
    /// refused as a replay, while alice goes on with the next nc.
    #[test]
    fn a_replayed_authorization_is_refused() {
        let mut auth = node();
        let ch = challenge(&mut auth, NOW);
        let sniffed = answer(&ch, b"secret");
        assert_eq!(verify(&mut auth, &sniffed, NOW), Verdict::Valid);
        assert_eq!(verify(&mut auth, &sniffed, NOW + 1), Verdict::Replay);
        assert_eq!(verify(&mut auth, &sniffed, NOW + 299), Verdict::Replay);
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", 2), NOW + 5),
            Verdict::Valid,
            "alice reuses her nonce with the next nc"
        );
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", 2), NOW + 6),
            Verdict::Replay
        );
        assert_eq!(
            verify(&mut auth, &sniffed, NOW + 301),
            Verdict::Stale,
            "past its lifetime: stale, never valid"
        );
        // The same request dressed up: the response in upper case (hex is
        // compared case-insensitively), or another cnonce (the response no
        // longer matches).
        let text = String::from_utf8(sniffed.clone()).unwrap();
        let at = text.find("response=\"").unwrap() + 10;
        let upper = format!("{}{}", &text[..at], text[at..].to_uppercase())
            .replace("CNONCE=\"0A4F113B\"", "cnonce=\"0a4f113b\"")
            .replace("QOP=AUTH, NC=", "qop=auth, nc=")
            .replace("ALGORITHM=SHA-256", "algorithm=SHA-256");
        assert_ne!(upper.as_bytes(), &sniffed[..]);
        assert_eq!(verify(&mut auth, upper.as_bytes(), NOW), Verdict::Replay);
        let other_cnonce = text.replace("0a4f113b", "deadbeef");
        assert_eq!(
            verify(&mut auth, other_cnonce.as_bytes(), NOW),
            Verdict::Invalid(Invalid::Response)
        );
    }

    /// Parallel UDP transactions with one nonce arrive out of order: each
    /// nc is accepted once, in any order.
    #[test]
    fn out_of_order_nc_values_within_the_window_are_each_accepted_once() {
        let mut auth = node();
        let ch = challenge(&mut auth, NOW);
        for nc in [3, 1, 2, 7, 5] {
            assert_eq!(
                verify(&mut auth, &answer_nc(&ch, b"secret", nc), NOW),
                Verdict::Valid,
                "{nc}"
            );
        }
        for nc in [1, 2, 3, 5, 7] {
            assert_eq!(
                verify(&mut auth, &answer_nc(&ch, b"secret", nc), NOW),
                Verdict::Replay,
                "{nc} again"
            );
        }
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", 4), NOW),
            Verdict::Valid,
            "the gap is still open"
        );
        // An attacker without the password cannot spend alice's counts.
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"guess", 6), NOW),
            Verdict::Invalid(Invalid::Response)
        );
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", 6), NOW),
            Verdict::Valid
        );
    }

    #[test]
    fn an_nc_below_the_window_is_refused() {
        let mut auth = node();
        let ch = challenge(&mut auth, NOW);
        let top = 1000;
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", top), NOW),
            Verdict::Valid
        );
        assert_eq!(
            verify(
                &mut auth,
                &answer_nc(&ch, b"secret", top - NC_WINDOW - 1),
                NOW
            ),
            Verdict::Replay,
            "never seen, but below the window"
        );
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", 1), NOW),
            Verdict::Replay
        );
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", top - NC_WINDOW), NOW),
            Verdict::Valid,
            "the bottom of the window"
        );
        assert_eq!(
            verify(&mut auth, &answer_nc(&ch, b"secret", top + 1), NOW),
            Verdict::Valid
        );
    }

    /// A nonce of another node of the farm: a new challenge with
    /// stale=true, whatever the response (it is not checked); the phone
    /// then authenticates with this node's nonce.
    #[test]
    fn a_nonce_of_another_issuer_is_foreign() {
        let mut a = node();
        let mut b = DigestAuth::new(SECRET, DEFAULT_NONCE_LIFETIME, ISSUER + 1);
        let from_b = challenge(&mut b, NOW);
        assert_eq!(
            a.check_nonce(param(&from_b, "nonce").as_bytes(), REALM, NOW),
            NonceState::Foreign
        );
        assert_eq!(
            verify(&mut a, &answer(&from_b, b"secret"), NOW),
            Verdict::Foreign
        );
        assert_eq!(
            verify(&mut a, &answer(&from_b, b"guess"), NOW),
            Verdict::Foreign,
            "the response is not checked: it tells a guesser nothing"
        );
        assert_eq!(
            verify(&mut b, &answer(&from_b, b"secret"), NOW),
            Verdict::Valid,
            "b still accepts it once"
        );
        let from_a = challenge(&mut a, NOW);
        assert_eq!(
            verify(&mut a, &answer(&from_a, b"secret"), NOW),
            Verdict::Valid
        );
        // Replaying at b what a accepted does not work either.
        assert_eq!(
            verify(&mut b, &answer(&from_a, b"secret"), NOW),
            Verdict::Foreign
        );
    }

    /// A node restarts with a new issuer: a request captured before the
    /// restart is foreign to its fresh state, not valid.
    #[test]
    fn a_nonce_from_a_previous_process_is_foreign() {
        let mut before = node();
        let ch = challenge(&mut before, NOW);
        let sniffed = answer(&ch, b"secret");
        assert_eq!(verify(&mut before, &sniffed, NOW), Verdict::Valid);
        drop(before);
        let mut after = DigestAuth::new(SECRET, DEFAULT_NONCE_LIFETIME, 0x5eed_0000_0000_0002);
        assert_eq!(verify(&mut after, &sniffed, NOW + 5), Verdict::Foreign);
        let ch = challenge(&mut after, NOW + 5);
        assert_eq!(
            verify(&mut after, &answer(&ch, b"secret"), NOW + 5),
            Verdict::Valid
        );
    }

    /// The stateless version 1 nonce a node issued before an upgrade:
    /// foreign (a stale challenge, the response unchecked), never valid;
    /// forged when tampered with or from another farm.
    #[test]
    fn a_version_1_nonce_of_the_farm_is_foreign() {
        fn v1_nonce(secret: &[u8], issued: u64) -> String {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
            m.update(b"ringmesh-digest-nonce\0");
            m.update(&[1]);
            m.update(&issued.to_be_bytes());
            m.update(REALM);
            let mut raw = vec![1];
            raw.extend_from_slice(&issued.to_be_bytes());
            raw.extend_from_slice(&m.finalize().into_bytes()[..15]);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        }
        let mut auth = node();
        let old = v1_nonce(SECRET, NOW - 10);
        assert_eq!(old.len(), 32);
        assert_eq!(
            auth.check_nonce(old.as_bytes(), REALM, NOW),
            NonceState::Foreign
        );
        let v = credentials(&old, Some(Algorithm::Sha256), b"secret", 1, true);
        assert_eq!(verify(&mut auth, &v, NOW), Verdict::Foreign);
        assert_eq!(verify(&mut auth, &v, NOW), Verdict::Foreign, "never valid");
        let elsewhere = v1_nonce(b"another farm secret, 32 bytes...", NOW - 10);
        let v = credentials(&elsewhere, Some(Algorithm::Sha256), b"secret", 1, true);
        assert_eq!(verify(&mut auth, &v, NOW), Verdict::Invalid(Invalid::Nonce));
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&old)
            .unwrap();
        raw[1..9].copy_from_slice(&NOW.to_be_bytes());
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            auth.check_nonce(tampered.as_bytes(), REALM, NOW),
            NonceState::Forged
        );
    }

    /// A man in the middle rewrites the challenge to MD5 (or strips the
    /// algorithm): the node that offered only SHA-256 refuses the answer.
    #[test]
    fn md5_is_refused_when_only_sha256_is_configured() {
        let mut auth = node().with_algorithms(&[Algorithm::Sha256]);
        let ch = challenge(&mut auth, NOW);
        let nonce = param(&ch, "nonce");
        for downgraded in [
            credentials(&nonce, Some(Algorithm::Md5), b"secret", 1, true),
            credentials(&nonce, None, b"secret", 1, true),
            credentials(&nonce, Some(Algorithm::Md5Sess), b"secret", 1, true),
        ] {
            assert_eq!(
                verify(&mut auth, &downgraded, NOW),
                Verdict::Invalid(Invalid::Algorithm)
            );
        }
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"secret"), NOW),
            Verdict::Valid,
            "the refused attempts spent nothing"
        );
        // And the other way round: SHA-256 where only MD5 is offered.
        let mut md5 = node().with_algorithms(&[Algorithm::Md5]);
        let ch = challenge(&mut md5, NOW);
        let v = credentials(
            &param(&ch, "nonce"),
            Some(Algorithm::Sha256),
            b"secret",
            1,
            true,
        );
        assert_eq!(
            verify(&mut md5, &v, NOW),
            Verdict::Invalid(Invalid::Algorithm)
        );
        assert_eq!(
            verify(&mut md5, &answer(&ch, b"secret"), NOW),
            Verdict::Valid
        );
    }

    /// Without qop there is no nc to track (RFC 2069): refused even with
    /// the right password.
    #[test]
    fn absent_qop_is_refused() {
        let mut auth = node();
        let ch = challenge(&mut auth, NOW);
        let nonce = param(&ch, "nonce");
        let rfc2069 = credentials(&nonce, Some(Algorithm::Sha256), b"secret", 1, false);
        assert_eq!(
            verify(&mut auth, &rfc2069, NOW),
            Verdict::Invalid(Invalid::Qop)
        );
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"secret"), NOW),
            Verdict::Valid
        );
    }

    /// More challenges than the cap (an attacker asking for nonces, or a
    /// busy node): the oldest nonces stop being tracked and are stale from
    /// then on, never valid, even a nonce never used.
    #[test]
    fn the_tracking_cap_evicts_the_oldest_nonces_as_stale() {
        let mut auth = node().with_tracking_cap(1024);
        let used = challenge(&mut auth, NOW);
        let sniffed = answer(&used, b"secret");
        assert_eq!(verify(&mut auth, &sniffed, NOW), Verdict::Valid);
        let unused = challenge(&mut auth, NOW);
        for _ in 0..1100 {
            auth.nonce(REALM, NOW + 1);
        }
        assert!(auth.tracking().tracked <= 1024, "{:?}", auth.tracking());
        assert_eq!(
            auth.check_nonce(param(&unused, "nonce").as_bytes(), REALM, NOW + 2),
            NonceState::Stale
        );
        assert_eq!(verify(&mut auth, &sniffed, NOW + 2), Verdict::Stale);
        assert_eq!(
            verify(&mut auth, &answer(&unused, b"secret"), NOW + 2),
            Verdict::Stale
        );
        assert_eq!(
            verify(&mut auth, &answer_nc(&unused, b"secret", 2), NOW + 2),
            Verdict::Stale
        );
        let fresh = challenge(&mut auth, NOW + 2);
        assert_eq!(
            verify(&mut auth, &answer(&fresh, b"secret"), NOW + 2),
            Verdict::Valid
        );
        // Changing the cap starts afresh: nothing issued before is valid.
        let mut auth = node();
        let ch = challenge(&mut auth, NOW);
        let mut auth = auth.with_tracking_cap(4096);
        assert_eq!(
            verify(&mut auth, &answer(&ch, b"secret"), NOW),
            Verdict::Stale
        );
    }

    /// A phone that reuses its nonce for a while, then a lot of phones
    /// that each use theirs once: the state follows what is live.
    #[test]
    fn memory_follows_the_live_nonces() {
        let mut auth = node().with_tracking_cap(1 << 16);
        let mut t = NOW;
        for round in 0..3 {
            // At most cap / 64 = 1024 reused at a time.
            for _ in 0..1000 {
                let ch = challenge(&mut auth, t);
                assert_eq!(
                    verify(&mut auth, &answer(&ch, b"secret"), t),
                    Verdict::Valid
                );
                if round == 0 {
                    let again = answer_nc(&ch, b"secret", 2);
                    assert_eq!(verify(&mut auth, &again, t), Verdict::Valid);
                }
            }
            t += 400;
        }
        let tr = auth.tracking();
        assert_eq!(tr.reused, 0, "the reused nonces expired: {tr:?}");
        assert!(tr.tracked <= 1000 + 32, "{tr:?}");
    }
    #[test]
    fn uri_matching() {
        assert!(uri_matches(b"sip:ringmesh.test", b"sip:ringmesh.test"));
        assert!(uri_matches(
            b"sip:bob@RINGMESH.test",
            b"sip:bob@ringmesh.test:5060;user=phone"
        ));
        assert!(uri_matches(
            b"sip:b%6Fb@ringmesh.test",
            b"sip:bob@ringmesh.test"
        ));
        assert!(!uri_matches(
            b"sip:bob@ringmesh.test",
            b"sip:carol@ringmesh.test"
        ));
        assert!(!uri_matches(b"sip:ringmesh.test", b"sips:ringmesh.test"));
        assert!(!uri_matches(
            b"sip:ringmesh.test:5070",
            b"sip:ringmesh.test"
        ));
        assert!(!uri_matches(b"/dir/index.html", b"sip:ringmesh.test"));
        assert!(!uri_matches(b"tel:+1234", b"tel:+1-234"));
    }
}
