//! The farm's certificate authority as a service: the CA and farm secret
//! kept in a [`Kv`] (or given as files), the record of every issued
//! certificate, revocation and the CRL.
//!
//! ```text
//! ca               {"cert_pem": …, "key_pem": …}   created once (put-if-absent)
//! farm-secret      32 random bytes, hex             created once
//!                  (both sealed under the store key when one is given: [`crate::seal`])
//! certs/<serial>   CertRecord (JSON)
//! nodes/<node id>  the node name: the Node-ID is taken (claimed before issuing)
//! bootstrap/<sha256 of a token>/uses/<slot>  one enrollment with a limited token
//! bootstrap/<sha256 of a token>/burned       the token of a revoked node
//! ```

use serde::{Deserialize, Serialize};

use crate::bootstrap::BootstrapToken;
use crate::ca::{self, Ca, CaError, Issued, Revoked};
use crate::kv::{Kv, KvError};
use crate::seal::{StoreKey, is_sealed};

/// The CA's record of one issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Lower-case hex.
    pub serial: String,
    /// 32 lower-case hex digits.
    pub node_id: String,
    pub node_name: String,
    pub issued_unix: i64,
    pub not_after_unix: i64,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub revoked_unix: i64,
    /// `ringmesh.enrollment.v1.RevocationReason` value.
    #[serde(default)]
    pub reason: i32,
    #[serde(default)]
    pub comment: String,
    /// The store key of the bootstrap token it enrolled with (empty for a
    /// renewal's record before this field, and for a renewal of one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bootstrap: String,
}

/// Why an authority operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Renew of a revoked, expired or foreign certificate.
    #[error("{0}")]
    Denied(String),
    /// No certificate was ever issued to this Node-ID.
    #[error("{0}")]
    NotFound(String),
    /// A stored record does not decode.
    #[error("stored record {0} is corrupt")]
    Corrupt(String),
    /// Sealed key material without the key that opens it.
    #[error("{0}")]
    Sealed(String),
}

/// How the authority starts.
#[derive(Debug, Clone)]
pub struct AuthorityOptions {
    /// The CA's common name when one is created.
    pub name: String,
    /// A CA given as PEM (certificate, key), e.g. from a Kubernetes
    /// Secret; otherwise the one in the store (created on first start).
    pub ca_pem: Option<(String, String)>,
    /// A farm secret given from outside; otherwise the one in the store.
    pub farm_secret: Option<Vec<u8>>,
    /// Validity of node certificates, days.
    pub cert_days: i64,
    /// Validity of each CRL, days.
    pub crl_days: i64,
    /// Seals the CA and the farm secret kept in the store.
    pub store_key: Option<StoreKey>,
}

impl Default for AuthorityOptions {
    fn default() -> Self {
        AuthorityOptions {
            name: "Ringmesh farm CA".into(),
            ca_pem: None,
            farm_secret: None,
            cert_days: 90,
            crl_days: 7,
            store_key: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// The CA, its farm secret and its records.
pub struct Authority<K> {
    kv: K,
    ca: Ca,
    farm_secret: Vec<u8>,
    opts: AuthorityOptions,
}

impl<K> std::fmt::Debug for Authority<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("cert_days", &self.opts.cert_days)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn unix_rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl<K: Kv> Authority<K> {
    /// Loads the CA and farm secret, creating them in the store on the
    /// first start (every replica agrees on the first one written).
    pub async fn open(kv: K, opts: AuthorityOptions) -> Result<Authority<K>, AuthorityError> {
        let ca = match &opts.ca_pem {
            Some((cert, key)) => Ca::from_pem(cert, key)?,
            None => {
                if kv.get("ca").await?.is_none() {
                    let fresh = Ca::generate(&opts.name)?;
                    let stored = StoredCa {
                        cert_pem: fresh.cert_pem().to_string(),
                        key_pem: fresh.key_pem(),
                    };
                    let json = serde_json::to_vec(&stored).expect("serialisable");
                    let value = seal(opts.store_key.as_ref(), "ca", json);
                    if kv.put_if_absent("ca", value).await? {
                        tracing::info!("created the farm CA");
                    }
                }
                let bytes = load(&kv, opts.store_key.as_ref(), "ca")
                    .await?
                    .ok_or_else(|| AuthorityError::Corrupt("ca".into()))?;
                let stored: StoredCa = serde_json::from_slice(&bytes)
                    .map_err(|_| AuthorityError::Corrupt("ca".into()))?;
                Ca::from_pem(&stored.cert_pem, &stored.key_pem)?
            }
        };
        let farm_secret = match &opts.farm_secret {
            Some(s) => s.clone(),
            None => {
                let fresh = hex::encode(rand::random::<[u8; 32]>()).into_bytes();
                let value = seal(opts.store_key.as_ref(), "farm-secret", fresh);
                kv.put_if_absent("farm-secret", value).await?;
                let text = load(&kv, opts.store_key.as_ref(), "farm-secret")
                    .await?
                    .ok_or_else(|| AuthorityError::Corrupt("farm-secret".into()))?;
                hex::decode(String::from_utf8_lossy(&text).trim())
                    .map_err(|_| AuthorityError::Corrupt("farm-secret".into()))?
            }
        };
        Ok(Authority {
            kv,
            ca,
            farm_secret,
            opts,
        })
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The farm secret.
    pub fn farm_secret(&self) -> &[u8] {
        &self.farm_secret
    }

    async fn record(
        &self,
        issued: &Issued,
        node_name: &str,
        bootstrap: String,
    ) -> Result<(), AuthorityError> {
        let rec = CertRecord {
            serial: issued.serial.clone(),
            node_id: hex::encode(issued.node_id),
            node_name: node_name.to_string(),
            issued_unix: now_unix(),
            not_after_unix: issued.not_after_unix,
            revoked: false,
            revoked_unix: 0,
            reason: 0,
            comment: String::new(),
            bootstrap,
        };
        self.kv
            .put(
                &format!("certs/{}", rec.serial),
                serde_json::to_vec(&rec).expect("serialisable"),
            )
            .await?;
        Ok(())
    }

    /// Issues a certificate for a CSR with a Node-ID placed by the CA
    /// ([`ca::place`]) and records it. Every Node-ID is claimed in the
    /// store first (`nodes/<id>`, put-if-absent), so two enrollments at
    /// once, on one replica or two, never share an ID; a revoked node's ID
    /// is never handed out again. The `token` presented must be unexpired
    /// and unburned, and one of its uses is claimed (see
    /// [`crate::bootstrap`]); a use stays spent if issuing then fails.
    pub async fn enroll(
        &self,
        node_name: &str,
        csr_pem: &str,
        token: &BootstrapToken,
    ) -> Result<Issued, AuthorityError> {
        // Check the CSR before spending anything on it.
        rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let bootstrap = self.spend(token, node_name).await?;
        let mut taken: Vec<[u8; 16]> = self
            .kv
            .list("nodes/")
            .await?
            .iter()
            .filter_map(|(k, _)| ca::parse_node_id(k.trim_start_matches("nodes/")))
            .collect();
        let mut node_id = ca::place(&taken);
        let mut tries = 0;
        while !self
            .kv
            .put_if_absent(
                &format!("nodes/{}", hex::encode(node_id)),
                node_name.as_bytes().to_vec(),
            )
            .await?
        {
            tries += 1;
            if tries > 16 {
                return Err(AuthorityError::Kv(KvError::Unavailable(
                    "could not claim a Node-ID; retry".into(),
                )));
            }
            taken.push(node_id);
            node_id = ca::place(&taken);
        }
        let issued = self
            .ca
            .sign_csr(node_name, csr_pem, node_id, self.opts.cert_days)?;
        self.record(&issued, node_name, bootstrap).await?;
        tracing::info!(node = node_name, node_id = %hex::encode(issued.node_id), serial = issued.serial, "enrolled");
        Ok(issued)
    }

    /// Checks `token`'s expiry and burn mark and claims one of its uses;
    /// returns its store key.
    async fn spend(&self, token: &BootstrapToken, node: &str) -> Result<String, AuthorityError> {
        let key = token.store_key();
        if let Some(at) = token.expires_unix
            && now_unix() > at
        {
            return Err(AuthorityError::Denied(format!(
                "bootstrap_token: expired at {}",
                unix_rfc3339(at)
            )));
        }
        if self
            .kv
            .get(&format!("bootstrap/{key}/burned"))
            .await?
            .is_some()
        {
            return Err(AuthorityError::Denied(
                "bootstrap_token: a node that enrolled with it was revoked, so it is burned; \
                 enroll with a new token"
                    .into(),
            ));
        }
        let Some(uses) = token.uses else {
            return Ok(key);
        };
        let prefix = format!("bootstrap/{key}/uses/");
        let used = self.kv.list(&prefix).await?.len() as u32;
        let claim = serde_json::json!({"node": node, "at": now_unix()}).to_string();
        for slot in used..uses {
            let slot_key = format!("{prefix}{slot:06}");
            if self
                .kv
                .put_if_absent(&slot_key, claim.clone().into_bytes())
                .await?
            {
                return Ok(key);
            }
        }
        Err(AuthorityError::Denied(format!(
            "bootstrap_token: used up ({uses} enrollments allowed)"
        )))
    }

    /// Issues a fresh certificate with the same Node-ID and key as `cert_pem`,
    /// which must be ours, unexpired and unrevoked; the CSR must be for the
    /// same key (its signature proves the node still holds it).
    pub async fn renew(&self, cert_pem: &str, csr_pem: &str) -> Result<Issued, AuthorityError> {
        let der = ca::pem_certs(cert_pem)
            .map_err(ca::CaError::from)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Certificate("no certificate in certificate_pem".into()))?;
        if !ca::signed_by(&der, self.ca.cert_der()) {
            return Err(AuthorityError::Denied(
                "the certificate was not issued by this CA".into(),
            ));
        }
        let info = ca::cert_info(&der).map_err(ca::CaError::from)?;
        if info.not_after_unix < now_unix() {
            return Err(AuthorityError::Denied(
                "the certificate has expired: enroll again with a bootstrap token".into(),
            ));
        }
        let rec = self
            .get_record(&info.serial)
            .await?
            .ok_or_else(|| AuthorityError::Denied("unknown certificate".into()))?;
        if rec.revoked {
            return Err(AuthorityError::Denied(format!(
                "node {} is revoked",
                rec.node_id
            )));
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        if rcgen::PublicKeyData::der_bytes(&csr.public_key) != info.public_key.as_slice() {
            return Err(AuthorityError::Denied(
                "the CSR is not for the certificate's key".into(),
            ));
        }
        let node_id = info
            .node_id
            .ok_or_else(|| CaError::Certificate("no Node-ID in the certificate".into()))?;
        let issued = self.ca.issue(
            &rec.node_name,
            &csr.public_key,
            node_id,
            self.opts.cert_days,
        )?;
        self.record(&issued, &rec.node_name, String::new()).await?;
        tracing::info!(node = rec.node_name, node_id = %hex::encode(node_id), serial = issued.serial, "renewed");
        Ok(issued)
    }

    async fn get_record(&self, serial: &str) -> Result<Option<CertRecord>, AuthorityError> {
        match self.kv.get(&format!("certs/{serial}")).await? {
            Some(b) => {
                Ok(Some(serde_json::from_slice(&b).map_err(|_| {
                    AuthorityError::Corrupt(format!("certs/{serial}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// Every issued certificate, oldest first.
    pub async fn records(&self) -> Result<Vec<CertRecord>, AuthorityError> {
        let mut out = Vec::new();
        for (k, v) in self.kv.list("certs/").await? {
            out.push(
                serde_json::from_slice::<CertRecord>(&v).map_err(|_| AuthorityError::Corrupt(k))?,
            );
        }
        out.sort_by(|a, b| (a.issued_unix, &a.serial).cmp(&(b.issued_unix, &b.serial)));
        Ok(out)
    }

    /// Revokes every certificate of `node_id` (hex); returns the serials
    /// newly revoked (none if all already were).
    pub async fn revoke(
        &self,
        node_id: &str,
        reason: i32,
        comment: &str,
    ) -> Result<Vec<String>, AuthorityError> {
        let recs: Vec<CertRecord> = self
            .records()
            .await?
            .into_iter()
            .filter(|r| r.node_id == node_id)
            .collect();
        if recs.is_empty() {
            return Err(AuthorityError::NotFound(format!(
                "no certificate was issued to node {node_id}"
            )));
        }
        let mut revoked = Vec::new();
        // The tokens these certificates came from were on the revoked node.
        for r in &recs {
            if !r.bootstrap.is_empty() {
                self.kv
                    .put(
                        &format!("bootstrap/{}/burned", r.bootstrap),
                        node_id.as_bytes().to_vec(),
                    )
                    .await?;
            }
        }
        for mut r in recs.into_iter().filter(|r| !r.revoked) {
            r.revoked = true;
            r.revoked_unix = now_unix();
            r.reason = reason;
            r.comment = comment.to_string();
            self.kv
                .put(
                    &format!("certs/{}", r.serial),
                    serde_json::to_vec(&r).expect("serialisable"),
                )
                .await?;
            revoked.push(r.serial);
        }
        tracing::warn!(node_id, serials = ?revoked, "revoked");
        Ok(revoked)
    }

    /// The current CRL (PEM), the revoked Node-IDs and the CRL number.
    pub async fn crl(&self) -> Result<(String, Vec<String>, u64), AuthorityError> {
        let revoked: Vec<CertRecord> = self
            .records()
            .await?
            .into_iter()
            .filter(|r| r.revoked)
            .collect();
        let entries: Vec<Revoked> = revoked
            .iter()
            .map(|r| Revoked {
                serial: r.serial.clone(),
                revoked_unix: r.revoked_unix,
                reason: rcgen_reason(r.reason),
            })
            .collect();
        // Revocations only accumulate, so their count grows with each one.
        let number = revoked.len() as u64;
        let pem = self.ca.crl(&entries, number, self.opts.crl_days)?;
        let mut ids: Vec<String> = revoked.into_iter().map(|r| r.node_id).collect();
        ids.sort();
        ids.dedup();
        Ok((pem, ids, number))
    }
}

/// `plain` as the store keeps it under `name`: sealed when there is a key.
fn seal(key: Option<&StoreKey>, name: &str, plain: Vec<u8>) -> Vec<u8> {
    match key {
        Some(k) => k.seal(name, &plain),
        None => plain,
    }
}

/// The key material stored under `name`, opened. A value stored in the
/// clear before a store key was given is sealed in place.
async fn load<K: Kv>(
    kv: &K,
    key: Option<&StoreKey>,
    name: &str,
) -> Result<Option<Vec<u8>>, AuthorityError> {
    let Some(v) = kv.get(name).await? else {
        return Ok(None);
    };
    match (is_sealed(&v), key) {
        (true, Some(k)) => k
            .open(name, &v)
            .map(Some)
            .map_err(|e| AuthorityError::Sealed(format!("stored {name}: {e}"))),
        (true, None) => Err(AuthorityError::Sealed(format!(
            "stored {name} is sealed: give the store key (--store-key-file)"
        ))),
        (false, Some(k)) => {
            kv.put(name, k.seal(name, &v)).await?;
            tracing::info!(key = name, "sealed key material stored in the clear");
            Ok(Some(v))
        }
        (false, None) => Ok(Some(v)),
    }
}

fn rcgen_reason(r: i32) -> Option<rcgen::RevocationReason> {
    use ringmesh_proto::enrollment::RevocationReason as R;
    match R::try_from(r).unwrap_or(R::Unspecified) {
        R::Unspecified => None,
        R::KeyCompromise => Some(rcgen::RevocationReason::KeyCompromise),
        R::Superseded => Some(rcgen::RevocationReason::Superseded),
        R::CessationOfOperation => Some(rcgen::RevocationReason::CessationOfOperation),
    }
}
