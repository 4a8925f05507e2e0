//! Key material at rest: the CA's key and the farm secret, when enrollment
//! keeps them in its store, are sealed under a key from outside the store
//! (`--store-key-file`, a Kubernetes Secret), so a copy of etcd, a backup
//! or a member's disk does not yield them.
//!
//! A sealed value is `sealed:v1:` and the base64 of a 12-byte random nonce
//! followed by the AES-256-GCM-SIV ciphertext, with the store key name
//! (`ca`, `farm-secret`) as associated data: a sealed value moved to
//! another key does not open.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine as _;

const PREFIX: &str = "sealed:v1:";

/// The key that seals stored key material.
#[derive(Clone)]
pub struct StoreKey(Aes256GcmSiv);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(hidden)")
    }
}

impl StoreKey {
    /// From 32 bytes.
    pub fn new(key: &[u8; 32]) -> StoreKey {
        StoreKey(Aes256GcmSiv::new(key.into()))
    }

    /// From the text of a key file: 64 hex digits.
    pub fn parse(text: &str) -> Result<StoreKey, String> {
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("a store key is 64 hex digits (32 bytes)")?;
        Ok(StoreKey::new(&bytes))
    }

    /// `value` sealed for the store key `name`.
    pub fn seal(&self, name: &str, value: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .expect("AES-GCM-SIV seals any message");
        let mut raw = nonce.to_vec();
        raw.extend(sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
        .into_bytes()
    }

    /// The value sealed under `name`, or why it does not open.
    pub fn open(&self, name: &str, stored: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(stored)
            .ok()
            .and_then(|t| t.strip_prefix(PREFIX))
            .ok_or("not a sealed value")?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "a sealed value that is not base64")?;
        if raw.len() < 12 {
            return Err("a sealed value too short".into());
        }
        let (nonce, ct) = raw.split_at(12);
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| "it does not open with this store key (another key, or tampered)".into())
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_the_wrong_key_or_name() {
        let k = StoreKey::new(&[7; 32]);
        let s = k.seal("farm-secret", b"the secret");
        assert!(is_sealed(&s));
        assert!(!String::from_utf8_lossy(&s).contains("the secret"));
        assert_ne!(
            s,
            k.seal("farm-secret", b"the secret"),
            "a fresh nonce each time"
        );
        assert_eq!(k.open("farm-secret", &s).unwrap(), b"the secret");
        assert!(k.open("ca", &s).is_err(), "moved to another key");
        assert!(StoreKey::new(&[8; 32]).open("farm-secret", &s).is_err());
        let mut t = s.clone();
        let last = t.len() - 2;
        t[last] = if t[last] == b'A' { b'B' } else { b'A' };
        assert!(k.open("farm-secret", &t).is_err(), "tampered");
        assert!(StoreKey::parse("00").is_err());
        assert!(StoreKey::parse(&"ab".repeat(32)).is_ok());
        assert_eq!(format!("{k:?}"), "StoreKey(hidden)");
    }
}
