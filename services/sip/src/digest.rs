//! Digest authentication: RFC 3261 §22 with RFC 7616 algorithms and
//! RFC 8760 (SHA-256 for SIP), with stateless nonces.
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
//!    ([`DigestAuth::write_challenges`]), `stale=true` when the verdict is
//!    [`Verdict::Stale`].
//!
//! ## Stateless nonces
//!
//! Any supernode of the farm must accept a nonce another one issued, and
//! none keeps per-nonce state. A nonce is therefore self-authenticating:
//!
//! ```text
//! nonce = base64url-nopad( version ‖ issued ‖ mac )     (24 bytes → 32 chars)
//!   version = 0x01                                       (1 byte)
//!   issued  = seconds since the Unix epoch, big-endian   (8 bytes)
//!   mac     = HMAC-SHA256(farm secret,
//!               "ringmesh-digest-nonce" ‖ 0x00 ‖ version ‖ issued ‖ realm)[..15]
//! ```
//!
//! A nonce whose MAC does not verify is forged (or from another realm or
//! farm) and rejected. One whose MAC verifies but is older than the
//! lifetime (default 300 s), or issued more than [`MAX_CLOCK_SKEW`] in the
//! future, is stale: when the response is otherwise right the client gets
//! a new challenge with `stale=true` and retries without asking its user.
//!
//! The price of statelessness: the nonce count (`nc`) is not tracked, so a
//! captured request can be replayed while its nonce lives. Transport
//! security (TLS) and the short lifetime bound that window.
//!
//! Time is an input (`now_unix_secs`); nothing here reads a clock.

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

const NONCE_VERSION: u8 = 1;
const NONCE_MAC_LEN: usize = 15;
const NONCE_LEN: usize = 1 + 8 + NONCE_MAC_LEN;

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
    /// The user knows the password and the nonce is fresh.
    Valid,
    /// The response is right but the nonce expired: challenge again with
    /// `stale=true`.
    Stale,
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
    Algorithm,
    /// An unsupported qop, or qop without nc/cnonce.
    Qop,
    /// Wrong password (or tampered parameters).
    Response,
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    Fresh,
    Stale,
    Forged,
}

/// The farm-wide digest authenticator: the shared secret, nonce lifetime
/// and optional opaque value. Cheap to clone.
#[derive(Clone)]
pub struct DigestAuth {
    mac: Hmac<Sha256>,
    lifetime: u64,
    opaque: Option<Vec<u8>>,
    /// Challenge algorithms, in the order they are offered.
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Default nonce lifetime in seconds.
pub const DEFAULT_NONCE_LIFETIME: u64 = 300;

impl DigestAuth {
    /// `farm_secret` is shared by every supernode (at least 32 random
    /// bytes); nonces live `nonce_lifetime_secs`.
    pub fn new(farm_secret: &[u8], nonce_lifetime_secs: u64) -> DigestAuth {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(farm_secret)
            .expect("HMAC takes keys of any length");
        DigestAuth {
            mac,
            lifetime: nonce_lifetime_secs,
            opaque: None,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }

    /// Offers these algorithms, in this order (default SHA-256, MD5).
    /// Many deployed UAs answer only the first challenge whatever its
    /// algorithm, so a farm with such clients lists MD5 first. An empty
    /// list keeps the default.
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> DigestAuth {
        if !algorithms.is_empty() {
            self.algorithms = algorithms.to_vec();
        }
        self
    }

    /// Adds an `opaque` parameter to challenges (clients echo it; it is
    /// not checked, since nothing is kept per challenge).
    pub fn with_opaque(mut self, opaque: &[u8]) -> DigestAuth {
        self.opaque = Some(opaque.to_vec());
        self
    }

    fn nonce_mac(&self, version: u8, issued: u64, realm: &[u8]) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(b"ringmesh-digest-nonce\0");
        m.update(&[version]);
        m.update(&issued.to_be_bytes());
        m.update(realm);
        m
    }

    /// A nonce for `realm`, issued now.
    pub fn nonce(&self, realm: &[u8], now_unix_secs: u64) -> String {
        let mut raw = [0u8; NONCE_LEN];
        raw[0] = NONCE_VERSION;
        raw[1..9].copy_from_slice(&now_unix_secs.to_be_bytes());
        let tag = self
            .nonce_mac(NONCE_VERSION, now_unix_secs, realm)
            .finalize()
            .into_bytes();
        raw[9..].copy_from_slice(&tag[..NONCE_MAC_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a nonce's MAC and age.
    pub fn check_nonce(&self, nonce: &[u8], realm: &[u8], now_unix_secs: u64) -> NonceState {
        if nonce.len() != 32 {
            return NonceState::Forged;
        }
        let mut raw = [0u8; NONCE_LEN];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(NONCE_LEN) => {}
            _ => return NonceState::Forged,
        }
        if raw[0] != NONCE_VERSION {
            return NonceState::Forged;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[1..9]);
        let issued = u64::from_be_bytes(ts);
        if self
            .nonce_mac(raw[0], issued, realm)
            .verify_truncated_left(&raw[9..])
            .is_err()
        {
            return NonceState::Forged;
        }
        if now_unix_secs > issued.saturating_add(self.lifetime)
            || issued > now_unix_secs.saturating_add(MAX_CLOCK_SKEW)
        {
            NonceState::Stale
        } else {
            NonceState::Fresh
        }
    }

    /// Verifies credentials for a request with `method` and `request_uri`
    /// against the user's stored `ha1`, in `realm`.
    pub fn verify(
        &self,
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
        let Some(algorithm) = creds.algorithm() else {
            return Verdict::Invalid(Invalid::Algorithm);
        };
        let nonce = creds.nonce();
        let nonce_state = self.check_nonce(&nonce, realm, now_unix_secs);
        if nonce_state == NonceState::Forged {
            return Verdict::Invalid(Invalid::Nonce);
        }
        let uri = creds.uri();
        if !uri_matches(&uri, request_uri) {
            return Verdict::Invalid(Invalid::Uri);
        }
        let qop = creds.qop();
        let cnonce = creds.cnonce();
        let nc = creds.nc();
        match qop.as_deref() {
            Some(q) if q.eq_ignore_ascii_case(b"auth") => {
                let nc_ok = nc
                    .as_deref()
                    .is_some_and(|n| n.len() == 8 && n.iter().all(u8::is_ascii_hexdigit));
                if !nc_ok || cnonce.as_deref().is_none_or(<[u8]>::is_empty) {
                    return Verdict::Invalid(Invalid::Qop);
                }
            }
            Some(_) => return Verdict::Invalid(Invalid::Qop),
            None if algorithm.is_sess() && cnonce.is_none() => {
                return Verdict::Invalid(Invalid::Qop);
            }
            None => {}
        }
        let expected = response_hex(
            ha1,
            &ResponseParams {
                algorithm,
                nonce: &nonce,
                cnonce: cnonce.as_deref().unwrap_or_default(),
                nc: nc.as_deref().unwrap_or_default(),
                qop: qop.as_deref(),
                method: method.as_bytes(),
                uri: &uri,
            },
        );
        if !ct_eq_hex(expected.as_bytes(), &creds.response()) {
            return Verdict::Invalid(Invalid::Response);
        }
        match nonce_state {
            NonceState::Fresh => Verdict::Valid,
            _ => Verdict::Stale,
        }
    }

    /// One challenge value per configured algorithm, in order (RFC 8760
    /// §2.4: in order of preference).
    pub fn challenges(&self, realm: &[u8], stale: bool, now_unix_secs: u64) -> Vec<Vec<u8>> {
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
        &self,
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

    /// A client's answer to `challenge` for REGISTER sip:ringmesh.test.
    fn answer(challenge: &[u8], password: &[u8], uri: &str, qop: bool) -> Vec<u8> {
        let text = String::from_utf8(challenge.to_vec()).unwrap();
        let field = |name: &str| {
            let at = text.find(&format!("{name}=")).unwrap() + name.len() + 1;
            let rest = &text[at..];
            let end = rest.find(',').unwrap_or(rest.len());
            rest[..end].trim_matches('"').to_string()
        };
        let (realm, nonce, alg) = (field("realm"), field("nonce"), field("algorithm"));
        let algorithm = Algorithm::parse(alg.as_bytes()).unwrap();
        let ha1 = Ha1::compute(b"alice", realm.as_bytes(), password);
        let p = ResponseParams {
            algorithm,
            nonce: nonce.as_bytes(),
            cnonce: b"0a4f113b",
            nc: b"00000001",
            qop: qop.then_some(&b"auth"[..]),
            method: b"REGISTER",
            uri: uri.as_bytes(),
        };
        let response = response_hex(&ha1, &p);
        let mut v = format!(
            r#"Digest username="alice", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}", algorithm={alg}"#
        );
        if qop {
            v.push_str(", qop=auth, nc=00000001, cnonce=\"0a4f113b\"");
        }
        v.into_bytes()
    }

    fn verify(auth: &DigestAuth, value: &[u8], now: u64) -> Verdict {
        let c = Credentials::parse(value).unwrap();
        let ha1 = Ha1::compute(b"alice", REALM, b"secret");
        auth.verify(
            &c,
            REALM,
            &Method::Register,
            b"sip:ringmesh.test",
            &ha1,
            now,
        )
    }

    #[test]
    fn challenge_round_trip_both_algorithms() {
        let auth = DigestAuth::new(SECRET, DEFAULT_NONCE_LIFETIME);
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
        for ch in [&sha, &md5] {
            assert_eq!(
                verify(
                    &auth,
                    &answer(ch, b"secret", "sip:ringmesh.test", true),
                    NOW + 10
                ),
                Verdict::Valid
            );
            assert_eq!(
                verify(
                    &auth,
                    &answer(ch, b"secret", "sip:ringmesh.test", false),
                    NOW + 10
                ),
                Verdict::Valid,
                "RFC 2069 form"
            );
            assert_eq!(
                verify(
                    &auth,
                    &answer(ch, b"Secret", "sip:ringmesh.test", true),
                    NOW + 10
                ),
                Verdict::Invalid(Invalid::Response),
                "wrong password"
            );
            // Another supernode with the same farm secret accepts it.
            let other = DigestAuth::new(SECRET, DEFAULT_NONCE_LIFETIME);
            assert_eq!(
                verify(
                    &other,
                    &answer(ch, b"secret", "sip:ringmesh.test", true),
                    NOW + 10
                ),
                Verdict::Valid
            );
        }
        let mut w = Writer::response(401);
        auth.with_opaque(b"o\"p")
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
    fn configured_algorithm_order() {
        let auth =
            DigestAuth::new(SECRET, 300).with_algorithms(&[Algorithm::Md5, Algorithm::Sha256]);
        let c = auth.challenges(REALM, false, NOW);
        assert_eq!(c.len(), 2);
        assert!(String::from_utf8_lossy(&c[0]).contains("algorithm=MD5,"));
        assert!(String::from_utf8_lossy(&c[1]).contains("algorithm=SHA-256,"));
        let only = DigestAuth::new(SECRET, 300).with_algorithms(&[Algorithm::Sha256]);
        assert_eq!(only.challenges(REALM, false, NOW).len(), 1);
        let default = DigestAuth::new(SECRET, 300).with_algorithms(&[]);
        assert!(
            String::from_utf8_lossy(&default.challenges(REALM, false, NOW)[0]).contains("SHA-256")
        );
    }

    #[test]
    fn sess_variants() {
        let auth = DigestAuth::new(SECRET, 300);
        let nonce = auth.nonce(REALM, NOW);
        let ha1 = Ha1::compute(b"alice", REALM, b"secret");
        for alg in [Algorithm::Md5Sess, Algorithm::Sha256Sess] {
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
                verify(&auth, v.as_bytes(), NOW),
                Verdict::Valid,
                "{alg:?}, hex case-insensitive"
            );
        }
    }

    #[test]
    fn realm_uri_qop_and_algorithm_checks() {
        let auth = DigestAuth::new(SECRET, 300);
        let [sha, _]: [Vec<u8>; 2] = auth.challenges(REALM, false, NOW).try_into().unwrap();
        let good = String::from_utf8(answer(&sha, b"secret", "sip:ringmesh.test", true)).unwrap();
        let c = Credentials::parse(good.as_bytes()).unwrap();
        let ha1 = Ha1::compute(b"alice", REALM, b"secret");
        assert_eq!(
            auth.verify(
                &c,
                b"other.test",
                &Method::Register,
                b"sip:ringmesh.test",
                &ha1,
                NOW
            ),
            Verdict::Invalid(Invalid::Realm)
        );
        assert_eq!(
            auth.verify(&c, REALM, &Method::Register, b"sip:evil.test", &ha1, NOW),
            Verdict::Invalid(Invalid::Uri)
        );
        // Same target spelled differently is fine; the response covers the uri param.
        assert_eq!(
            auth.verify(
                &c,
                REALM,
                &Method::Register,
                b"sip:RingMesh.Test:5060;transport=tcp",
                &ha1,
                NOW
            ),
            Verdict::Valid
        );
        assert_eq!(
            auth.verify(&c, REALM, &Method::Invite, b"sip:ringmesh.test", &ha1, NOW),
            Verdict::Invalid(Invalid::Response),
            "the method is covered"
        );
        let v = good.replace("qop=auth", "qop=auth-int");
        assert_eq!(
            verify(&auth, v.as_bytes(), NOW),
            Verdict::Invalid(Invalid::Qop)
        );
        let v = good.replace(", nc=00000001", "");
        assert_eq!(
            verify(&auth, v.as_bytes(), NOW),
            Verdict::Invalid(Invalid::Qop)
        );
        let v = good.replace("algorithm=SHA-256", "algorithm=SHA-512-256");
        assert_eq!(
            verify(&auth, v.as_bytes(), NOW),
            Verdict::Invalid(Invalid::Algorithm)
        );
        // Wrong realm in the HA1 (provisioned for another domain).
        let other = Ha1::compute(b"alice", b"other.test", b"secret");
        assert_eq!(
            auth.verify(
                &c,
                REALM,
                &Method::Register,
                b"sip:ringmesh.test",
                &other,
                NOW
            ),
            Verdict::Invalid(Invalid::Response)
        );
    }

    #[test]
    fn stale_and_forged_nonces() {
        let auth = DigestAuth::new(SECRET, 300);
        let [sha, _]: [Vec<u8>; 2] = auth.challenges(REALM, false, NOW).try_into().unwrap();
        let good = answer(&sha, b"secret", "sip:ringmesh.test", true);
        assert_eq!(verify(&auth, &good, NOW + 300), Verdict::Valid);
        assert_eq!(
            verify(&auth, &good, NOW + 301),
            Verdict::Stale,
            "expired but otherwise valid"
        );
        assert_eq!(
            verify(&auth, &good, NOW - MAX_CLOCK_SKEW),
            Verdict::Valid,
            "a peer's clock a little behind"
        );
        assert_eq!(
            verify(&auth, &good, NOW - MAX_CLOCK_SKEW - 1),
            Verdict::Stale
        );
        let wrong = answer(&sha, b"nope", "sip:ringmesh.test", true);
        assert_eq!(
            verify(&auth, &wrong, NOW + 301),
            Verdict::Invalid(Invalid::Response),
            "stale only when the rest is right"
        );

        // Another farm's secret: forged.
        let foreign = DigestAuth::new(b"another farm secret, 32 bytes...", 300);
        assert_eq!(
            verify(&foreign, &good, NOW),
            Verdict::Invalid(Invalid::Nonce)
        );
        // A nonce for another realm does not verify here.
        assert_eq!(
            auth.check_nonce(auth.nonce(b"other.test", NOW).as_bytes(), REALM, NOW),
            NonceState::Forged
        );
        // Tampered timestamp (replay with a refreshed nonce), even with a
        // response recomputed by someone who knows the password.
        let nonce = auth.nonce(REALM, NOW - 1000);
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&nonce)
            .unwrap();
        raw[1..9].copy_from_slice(&NOW.to_be_bytes());
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            auth.check_nonce(tampered.as_bytes(), REALM, NOW),
            NonceState::Forged
        );
        let challenge =
            format!("Digest realm=\"ringmesh.test\", nonce=\"{tampered}\", algorithm=SHA-256");
        assert_eq!(
            verify(
                &auth,
                &answer(challenge.as_bytes(), b"secret", "sip:ringmesh.test", true),
                NOW
            ),
            Verdict::Invalid(Invalid::Nonce)
        );
        for junk in [
            &b""[..],
            b"short",
            &[b'A'; 32],
            &[0xff; 32],
            b"%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%",
        ] {
            assert_eq!(auth.check_nonce(junk, REALM, NOW), NonceState::Forged);
        }
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
