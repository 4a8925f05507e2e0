//! The node side: [`enroll`] generates a key pair and a CSR locally (the
//! private key never leaves the node), asks the enrollment service for a
//! certificate, checks the answer, and writes the identity into a
//! directory the supernode loads:
//!
//! ```text
//! node.key     the private key, PEM, mode 0600
//! node.crt     the node certificate, PEM (Node-ID in its URI SAN)
//! ca.crt       the farm CA bundle, PEM
//! crl.pem      the CRL at enrollment time, PEM
//! farm.secret  the farm secret, hex, mode 0600
//! ```
//!
//! Files are written atomically (temporary file, then rename), the key
//! first, so a crash never leaves a certificate without its key.

use std::path::Path;
use std::time::Duration;

use crate::cert as ca;
use crate::channel::{Trust, channel};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData as _};
use ringmesh_proto::enrollment as pb;
use ringmesh_proto::enrollment::enrollment_client::EnrollmentClient;

/// Deadline of one enrollment RPC.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What a node enrolls with: the bootstrap token and, pinned, the SHA-256
/// of the farm CA certificate (DER) it must get back. A bootstrap file
/// holds the token on its first line that is neither empty nor a comment
/// (`#`) (its first word: the limits enrollment reads may follow it), and
/// may hold a line `ca-sha256:HEX`: enrollment then cannot hand
/// the node another CA, even over a network an attacker controls.
#[derive(Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub token: String,
    pub ca_sha256: Option<[u8; 32]>,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("ca_sha256", &self.ca_sha256.map(hex::encode))
            .finish_non_exhaustive()
    }
}

/// The prefix of a bootstrap file's CA pin line.
pub const CA_PIN_PREFIX: &str = "ca-sha256:";

impl Bootstrap {
    /// A token without a pinned CA (the CA returned is trusted as is).
    pub fn unpinned(token: &str) -> Bootstrap {
        Bootstrap {
            token: token.to_string(),
            ca_sha256: None,
        }
    }

    /// Parses a bootstrap file (see [`Bootstrap`]).
    pub fn parse(text: &str) -> Result<Bootstrap, String> {
        let mut token = None;
        let mut ca_sha256 = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(h) = line.strip_prefix(CA_PIN_PREFIX) {
                let pin: [u8; 32] = hex::decode(h.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| format!("{CA_PIN_PREFIX} needs 64 hex digits"))?;
                ca_sha256 = Some(pin);
            } else if token.is_none() {
                // The service's limits (`uses=`, `expires=`) may follow.
                token = line.split_whitespace().next().map(str::to_string);
            }
        }
        Ok(Bootstrap {
            token: token.ok_or("no bootstrap token in the file")?,
            ca_sha256,
        })
    }

    /// The pin line for a CA certificate (DER).
    pub fn pin_line(ca_der: &[u8]) -> String {
        format!("{CA_PIN_PREFIX}{}", hex::encode(ca_sha256(ca_der)))
    }
}

/// The SHA-256 of a certificate (DER), as a bootstrap file pins it.
pub fn ca_sha256(der: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(der).into()
}

/// A node's enrolled identity, as written to its directory.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolledIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub crl_pem: String,
    pub node_id: [u8; 16],
    pub farm_secret: Vec<u8>,
    /// Certificate expiry, seconds since the UNIX epoch.
    pub not_after_unix: i64,
}

impl std::fmt::Debug for EnrolledIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolledIdentity")
            .field("node_id", &hex::encode(self.node_id))
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The bootstrap token (or, on renew, the certificate) was refused.
    #[error("enrollment refused: {0}")]
    Denied(String),
    /// The enrollment service cannot be reached; retry later.
    #[error("enrollment service unavailable: {0}")]
    Unavailable(String),
    /// The service answered with another error.
    #[error("enrollment failed: {0}")]
    Rejected(String),
    /// The answer does not hold together (wrong key, Node-ID mismatch, a
    /// certificate the CA did not sign).
    #[error("bad answer from the enrollment service: {0}")]
    BadAnswer(String),
    /// Local key generation or files.
    #[error("{0}")]
    Local(String),
}

fn from_status(s: tonic::Status) -> EnrollError {
    match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            EnrollError::Denied(s.message().into())
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            EnrollError::Unavailable(s.message().into())
        }
        _ => EnrollError::Rejected(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn local(what: &str, e: impl std::fmt::Display) -> EnrollError {
    EnrollError::Local(format!("{what}: {e}"))
}

fn csr_for(key: &KeyPair, node_name: &str) -> Result<String, EnrollError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| local("CSR", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(|e| local("CSR", e))
}

/// Checks an answer against the key we hold, then writes the identity.
fn accept(
    resp: pb::EnrollResponse,
    key: &KeyPair,
    pin: Option<&[u8; 32]>,
    dir: &Path,
) -> Result<EnrolledIdentity, EnrollError> {
    let bad = |m: String| EnrollError::BadAnswer(m);
    let der = ca::pem_certs(&resp.certificate_pem)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .next();
    let der = der.ok_or_else(|| bad("no certificate".into()))?;
    let info = ca::cert_info(&der).map_err(|e| bad(e.to_string()))?;
    let node_id = ca::parse_node_id(&resp.node_id)
        .ok_or_else(|| bad(format!("node_id '{}'", resp.node_id)))?;
    if info.node_id != Some(node_id) {
        return Err(bad(
            "the certificate's Node-ID is not the node_id returned".into()
        ));
    }
    if info.public_key != key.der_bytes() {
        return Err(bad("the certificate is not for our key".into()));
    }
    let cas = ca::pem_certs(&resp.ca_bundle_pem).map_err(|e| bad(e.to_string()))?;
    if !cas.iter().any(|c| ca::signed_by(&der, c)) {
        return Err(bad("the certificate does not chain to the CA bundle".into()));
    }
    // A pinned CA must be in the bundle and must have signed us: a forged
    // bundle, or a certificate from another CA, is refused.
    if let Some(pin) = pin
        && !cas
            .iter()
            .any(|c| ca_sha256(c) == *pin && ca::signed_by(&der, c))
    {
        return Err(bad(format!(
            "the CA is not the one the bootstrap file pins ({CA_PIN_PREFIX}{})",
            hex::encode(pin)
        )));
    }
    if resp.farm_secret.len() < 16 {
        return Err(bad("farm secret shorter than 16 bytes".into()));
    }
    let id = EnrolledIdentity {
        cert_pem: resp.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_pem: resp.ca_bundle_pem,
        crl_pem: resp.crl_pem,
        node_id,
        farm_secret: resp.farm_secret,
        not_after_unix: info.not_after_unix,
    };
    id.write(dir)?;
    Ok(id)
}

/// Enrolls this node: a fresh key pair and CSR made here, a certificate
/// with the Node-ID the CA assigns (from the pinned CA, when the bootstrap
/// pins one), files written into `key_dir`.
pub async fn enroll(
    endpoint: &str,
    bootstrap: &Bootstrap,
    node_name: &str,
    key_dir: &Path,
) -> Result<EnrolledIdentity, EnrollError> {
    let key = KeyPair::generate().map_err(|e| local("key generation", e))?;
    let csr_pem = csr_for(&key, node_name)?;
    let trust = bootstrap
        .ca_sha256
        .map_or(Trust::FirstUse, |pin| Trust::Pinned(vec![pin]));
    let mut c = EnrollmentClient::new(channel(endpoint, trust).await?);
    let req = pb::EnrollRequest {
        csr_pem,
        bootstrap_token: bootstrap.token.clone(),
        node_name: node_name.to_string(),
    };
    let resp = c.enroll(req).await.map_err(from_status)?.into_inner();
    accept(resp, &key, bootstrap.ca_sha256.as_ref(), key_dir)
}

/// Renews the identity in `key_dir` (same key, same Node-ID, new expiry)
/// and rewrites its files.
pub async fn renew(endpoint: &str, key_dir: &Path) -> Result<EnrolledIdentity, EnrollError> {
    let current = EnrolledIdentity::load(key_dir)?
        .ok_or_else(|| EnrollError::Local(format!("no identity in {}", key_dir.display())))?;
    let key = KeyPair::from_pem(&current.key_pem).map_err(|e| local("node.key", e))?;
    let csr_pem = csr_for(&key, "renew")?;
    // Only the CA this node already trusts may renew it.
    let trust = Trust::of_bundle(&current.ca_pem)?;
    let mut c = EnrollmentClient::new(channel(endpoint, trust).await?);
    let resp = c
        .renew(pb::RenewRequest {
            certificate_pem: current.cert_pem.clone(),
            csr_pem,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    accept(resp, &key, None, key_dir)
}

fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), EnrollError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| local(&tmp.display().to_string(), e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| local(&tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| local(&path.display().to_string(), e))
}

impl EnrolledIdentity {
    /// Writes `node.key` (0600), `node.crt`, `ca.crt`, `crl.pem` and
    /// `farm.secret` (hex, 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), EnrollError> {
        std::fs::create_dir_all(dir).map_err(|e| local(&dir.display().to_string(), e))?;
        write_atomic(&dir.join("node.key"), self.key_pem.as_bytes(), true)?;
        write_atomic(
            &dir.join("farm.secret"),
            hex::encode(&self.farm_secret).as_bytes(),
            true,
        )?;
        write_atomic(&dir.join("ca.crt"), self.ca_pem.as_bytes(), false)?;
        write_atomic(&dir.join("crl.pem"), self.crl_pem.as_bytes(), false)?;
        write_atomic(&dir.join("node.crt"), self.cert_pem.as_bytes(), false)
    }

    /// Loads an identity written by [`EnrolledIdentity::write`]; `None` if
    /// `dir` holds none yet.
    pub fn load(dir: &Path) -> Result<Option<EnrolledIdentity>, EnrollError> {
        let crt = dir.join("node.crt");
        if !crt.exists() {
            return Ok(None);
        }
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| local(name, e));
        let cert_pem = read("node.crt")?;
        let der = ca::pem_certs(&cert_pem)
            .map_err(|e| local("node.crt", e))?
            .into_iter()
            .next();
        let info = ca::cert_info(
            &der.ok_or_else(|| EnrollError::Local("node.crt holds no certificate".into()))?,
        )
        .map_err(|e| local("node.crt", e))?;
        let node_id = info
            .node_id
            .ok_or_else(|| EnrollError::Local("node.crt carries no Node-ID".into()))?;
        let farm_secret =
            hex::decode(read("farm.secret")?.trim()).map_err(|e| local("farm.secret", e))?;
        Ok(Some(EnrolledIdentity {
            cert_pem,
            key_pem: read("node.key")?,
            ca_pem: read("ca.crt")?,
            crl_pem: read("crl.pem").unwrap_or_default(),
            node_id,
            farm_secret,
            not_after_unix: info.not_after_unix,
        }))
    }

    /// The Node-ID as 32 hex digits.
    pub fn node_id_hex(&self) -> String {
        hex::encode(self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_file_holds_a_token_and_may_pin_the_ca() {
        let pin = Bootstrap::pin_line(b"a certificate");
        let b = Bootstrap::parse(&format!(
            "# comment\n\n  tok-en-0123456789abcdef  \n{pin}\n"
        ))
        .unwrap();
        assert_eq!(b.token, "tok-en-0123456789abcdef");
        assert_eq!(b.ca_sha256, Some(ca_sha256(b"a certificate")));
        // The pin may come first; a second token line is ignored.
        let b = Bootstrap::parse(&format!("{pin}\nfirst\nsecond\n")).unwrap();
        assert_eq!(b.token, "first");
        assert_eq!(Bootstrap::parse("just-a-token\n").unwrap().ca_sha256, None);
        let limited = Bootstrap::parse("the-token uses=3 expires=2026-12-31T00:00:00Z").unwrap();
        assert_eq!(limited.token, "the-token", "the limits are enrollment's");
        assert!(
            Bootstrap::parse("ca-sha256:abcd\ntoken")
                .unwrap_err()
                .contains("64 hex")
        );
        assert!(Bootstrap::parse("# nothing\n").is_err());
        assert!(
            !format!("{b:?}").contains("first"),
            "the token stays out of logs"
        );
    }
}
