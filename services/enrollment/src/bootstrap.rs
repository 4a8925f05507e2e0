//! Bootstrap tokens and their limits.
//!
//! A token line is the token, then optional limits separated by spaces:
//!
//! ```text
//! 3kQ…40 random characters…  uses=5  expires=2026-12-31T00:00:00Z
//! ```
//!
//! - `uses=N`: at most N enrollments with this token, counted in the
//!   store under `bootstrap/<sha256 of the token>/uses/<slot>` so every
//!   enrollment replica shares the count (a StatefulSet's pods share one
//!   token: N is the replica count plus a few spares for rebuilt volumes).
//! - `expires=`: RFC 3339 time (or seconds since the UNIX epoch) after
//!   which the token is refused.
//!
//! A token without limits works until it is removed from the
//! configuration; the service warns about each at start-up.
//!
//! When a node is revoked, the token it enrolled with is burned
//! (`bootstrap/<sha256>/burned`): it was on a machine the operator no
//! longer trusts, so no one enrolls with it again, whatever its limits.
//! Nodes read only the token (the first word of the line).

use sha2::{Digest as _, Sha256};

/// One configured bootstrap token with its limits.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub secret: String,
    /// Enrollments allowed; `None`: no limit.
    pub uses: Option<u32>,
    /// Refused after this time, seconds since the UNIX epoch.
    pub expires_unix: Option<i64>,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("uses", &self.uses)
            .field("expires_unix", &self.expires_unix)
            .finish_non_exhaustive()
    }
}

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl BootstrapToken {
    /// A token without limits.
    pub fn unlimited(secret: &str) -> BootstrapToken {
        BootstrapToken {
            secret: secret.to_string(),
            uses: None,
            expires_unix: None,
        }
    }

    /// Parses one token line (see the module documentation).
    pub fn parse(line: &str) -> Result<BootstrapToken, String> {
        let mut words = line.split_whitespace();
        let secret = words.next().ok_or("an empty token line")?.to_string();
        if secret.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "a token of {} characters is too easy to guess ({MIN_TOKEN_LEN} at least)",
                secret.len()
            ));
        }
        let mut t = BootstrapToken::unlimited(&secret);
        for w in words {
            match w.split_once('=') {
                Some(("uses", n)) => {
                    t.uses = Some(
                        n.parse()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| format!("uses={n}: needs a whole number above 0"))?,
                    );
                }
                Some(("expires", at)) => t.expires_unix = Some(parse_time(at)?),
                _ => {
                    return Err(format!(
                        "'{w}' after the token: only uses=N and expires=TIME may follow it"
                    ));
                }
            }
        }
        Ok(t)
    }

    /// The key under which the store counts this token's uses: the
    /// SHA-256 of the token, so the store never holds the token.
    pub fn store_key(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp)
        .map_err(|e| format!("expires={s}: not an RFC 3339 time ({e}) nor UNIX seconds"))
}

/// The configured bootstrap tokens, matched in constant time.
#[derive(Clone, Debug, Default)]
pub struct BootstrapTokens {
    tokens: Vec<BootstrapToken>,
    hashes: crate::service::Tokens,
}

impl BootstrapTokens {
    pub fn new(mut tokens: Vec<BootstrapToken>) -> BootstrapTokens {
        tokens.retain(|t| !t.secret.is_empty());
        let secrets: Vec<&str> = tokens.iter().map(|t| t.secret.as_str()).collect();
        BootstrapTokens {
            hashes: crate::service::Tokens::new(&secrets),
            tokens,
        }
    }

    /// The configured token equal to `presented`, if any.
    pub fn find(&self, presented: &str) -> Option<&BootstrapToken> {
        self.hashes.position(presented).map(|i| &self.tokens[i])
    }

    /// The tokens with neither a use count nor an expiry.
    pub fn unlimited(&self) -> usize {
        self.tokens
            .iter()
            .filter(|t| t.uses.is_none() && t.expires_unix.is_none())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines() {
        let t = BootstrapToken::parse("a-long-enough-token  uses=3 expires=2026-12-31T00:00:00Z")
            .unwrap();
        assert_eq!(t.secret, "a-long-enough-token");
        assert_eq!(t.uses, Some(3));
        assert_eq!(t.expires_unix, Some(1_798_675_200));
        assert_eq!(
            BootstrapToken::parse("a-long-enough-token expires=1700000000")
                .unwrap()
                .expires_unix,
            Some(1_700_000_000)
        );
        assert_eq!(
            BootstrapToken::parse("a-long-enough-token").unwrap(),
            BootstrapToken::unlimited("a-long-enough-token")
        );
        for bad in [
            "short uses=1",
            "a-long-enough-token uses=0",
            "a-long-enough-token uses=-1",
            "a-long-enough-token expires=tomorrow",
            "a-long-enough-token colour=blue",
        ] {
            assert!(BootstrapToken::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{t:?}").contains("enough"), "never printed");
    }

    #[test]
    fn matching() {
        let set = BootstrapTokens::new(vec![
            BootstrapToken::parse("first-token-of-length uses=2").unwrap(),
            BootstrapToken::unlimited("second-token-of-length"),
        ]);
        assert_eq!(set.find("first-token-of-length").unwrap().uses, Some(2));
        assert_eq!(set.find("second-token-of-length").unwrap().uses, None);
        assert!(set.find("first-token-of-lengt").is_none());
        assert_eq!(set.unlimited(), 1);
        assert_ne!(
            set.find("first-token-of-length").unwrap().store_key(),
            set.find("second-token-of-length").unwrap().store_key()
        );
    }
}
