//! The canonical address-of-record: the one form every supernode hashes to
//! find where a registration lives on the ring.
//!
//! Form version 1 (`AOR_FORM_VERSION`):
//! - `sip:` and `sips:` URIs become `sip:` + unescaped user + `@` +
//!   lower-cased host (no user: `sip:` + host); port, parameters and
//!   headers are dropped;
//! - `tel:` URIs become `tel:+` followed by the digits only (visual
//!   separators removed); a local number without `+` keeps its digits and
//!   is qualified by `phone-context` when present.
//!
//! The key material hashed by the overlay is prefixed with the version, so a
//! future form can never collide with this one.

use crate::scan;
use crate::uri::{Scheme, Uri};

pub const AOR_FORM_VERSION: u8 = 1;

/// A canonical AOR.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aor(Vec<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AorError {
    #[error("not a SIP, SIPS or tel URI")]
    Scheme,
    #[error("tel URI without digits")]
    NoDigits,
}

impl Aor {
    pub fn from_uri(uri: &Uri<'_>) -> Result<Aor, AorError> {
        match uri.scheme() {
            Scheme::Sip | Scheme::Sips => {
                let host = uri.host().ok_or(AorError::Scheme)?.text;
                let mut out =
                    Vec::with_capacity(4 + host.len() + uri.user().map_or(0, <[u8]>::len) + 1);
                out.extend_from_slice(b"sip:");
                if let Some(user) = uri.user() {
                    out.extend_from_slice(&scan::unescape(user));
                    out.push(b'@');
                }
                out.extend(host.iter().map(u8::to_ascii_lowercase));
                Ok(Aor(out))
            }
            Scheme::Tel => {
                let number = uri.user().ok_or(AorError::NoDigits)?;
                let global = number.first() == Some(&b'+');
                let digits: Vec<u8> = number
                    .iter()
                    .filter(|c| c.is_ascii_hexdigit() || matches!(c, b'*' | b'#'))
                    .map(u8::to_ascii_lowercase)
                    .collect();
                if digits.is_empty() {
                    return Err(AorError::NoDigits);
                }
                let mut out = b"tel:".to_vec();
                if global {
                    out.push(b'+');
                }
                out.extend_from_slice(&digits);
                if !global && let Some(Some(ctx)) = uri.param("phone-context") {
                    out.extend_from_slice(b";phone-context=");
                    out.extend(ctx.iter().map(u8::to_ascii_lowercase));
                }
                Ok(Aor(out))
            }
            Scheme::Other => Err(AorError::Scheme),
        }
    }

    /// Parses `text` as a URI and canonicalises it.
    pub fn parse(text: &[u8]) -> Result<Aor, AorError> {
        Aor::from_uri(&Uri::parse(text).map_err(|_| AorError::Scheme)?)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The user part of a `sip:` AOR, the number of a `tel:` one.
    pub fn user(&self) -> Option<&[u8]> {
        if let Some(rest) = self.0.strip_prefix(b"sip:") {
            let at = rest.iter().rposition(|&c| c == b'@')?;
            Some(&rest[..at])
        } else {
            self.0.strip_prefix(b"tel:")
        }
    }

    /// The host of a `sip:` AOR.
    pub fn host(&self) -> Option<&[u8]> {
        let rest = self.0.strip_prefix(b"sip:")?;
        Some(
            rest.iter()
                .rposition(|&c| c == b'@')
                .map_or(rest, |at| &rest[at + 1..]),
        )
    }

    /// What the overlay hashes: the form version, then the canonical form.
    pub fn key_material(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.0.len() + 16);
        m.extend_from_slice(b"ringmesh-aor-v");
        m.push(b'0' + AOR_FORM_VERSION);
        m.push(0);
        m.extend_from_slice(&self.0);
        m
    }
}

impl std::fmt::Display for Aor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_forms_converge() {
        let a = Aor::parse(b"sips:%61lice@RingMesh.Test:5061;transport=tls?X=1").unwrap();
        let b = Aor::parse(b"sip:alice@ringmesh.test").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_bytes(), b"sip:alice@ringmesh.test");
        assert_eq!(a.user(), Some(&b"alice"[..]));
        assert_eq!(a.host(), Some(&b"ringmesh.test"[..]));
        assert_ne!(
            Aor::parse(b"sip:Alice@ringmesh.test").unwrap(),
            b,
            "user part is case-sensitive"
        );
    }

    #[test]
    fn tel_forms() {
        let a = Aor::parse(b"tel:+1-201-555-0123").unwrap();
        assert_eq!(a.as_bytes(), b"tel:+12015550123");
        assert_eq!(Aor::parse(b"tel:+1.201.555.0123;foo=bar").unwrap(), a);
        let l = Aor::parse(b"tel:7042;phone-context=Example.COM").unwrap();
        assert_eq!(l.as_bytes(), b"tel:7042;phone-context=example.com");
        assert_eq!(Aor::parse(b"isbn:123"), Err(AorError::Scheme));
    }

    #[test]
    fn key_material_is_versioned() {
        let a = Aor::parse(b"sip:bob@x").unwrap();
        assert!(a.key_material().starts_with(b"ringmesh-aor-v1\0"));
        assert!(a.key_material().ends_with(b"sip:bob@x"));
    }
}
