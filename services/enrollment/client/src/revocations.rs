//! The farm's revocations as a server or a node holds them: followed from
//! the enrollment service over TLS pinned to the farm CA, each CRL checked
//! against that CA before use, never replaced by an older one.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ringmesh_proto::enrollment::GetRevocationsRequest;
use ringmesh_proto::enrollment::enrollment_client::EnrollmentClient;

use crate::cert::verify_crl;
use crate::channel::{Trust, channel};

#[derive(Debug, Default)]
struct State {
    number: u64,
    crl_pem: String,
    serials: HashSet<String>,
    node_ids: Vec<[u8; 16]>,
}

/// The revoked certificates and Node-IDs, shared between the task that
/// follows enrollment and whoever checks certificates.
#[derive(Clone, Debug, Default)]
pub struct Revocations(Arc<RwLock<State>>);

impl Revocations {
    /// Whether the certificate `der` is revoked.
    pub fn is_revoked(&self, der: &[u8]) -> bool {
        let Ok(info) = crate::cert::cert_info(der) else {
            return false;
        };
        self.0
            .read()
            .expect("never poisoned")
            .serials
            .contains(&info.serial)
    }

    /// The revoked Node-IDs.
    pub fn node_ids(&self) -> Vec<[u8; 16]> {
        self.0.read().expect("never poisoned").node_ids.clone()
    }

    /// The current CRL, PEM (empty before the first).
    pub fn crl_pem(&self) -> String {
        self.0.read().expect("never poisoned").crl_pem.clone()
    }

    /// Takes a CRL and the Node-IDs it revokes when the CA in `ca_pem`
    /// signed it, it is not past its next update, and its number is not
    /// below the current one. Returns whether it was taken.
    pub fn update(
        &self,
        crl_pem: &str,
        node_ids: &[String],
        ca_pem: &str,
        now_unix: i64,
    ) -> Result<bool, String> {
        let crl = verify_crl(crl_pem, ca_pem).map_err(|e| e.to_string())?;
        if crl.stale(now_unix) {
            return Err("the CRL is past its next update".into());
        }
        let mut s = self.0.write().expect("never poisoned");
        if crl.number < s.number {
            return Ok(false);
        }
        *s = State {
            number: crl.number,
            crl_pem: crl_pem.to_string(),
            serials: crl.revoked_serials.into_iter().collect(),
            node_ids: node_ids
                .iter()
                .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
                .collect(),
        };
        Ok(true)
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Follows the enrollment service at `endpoint` forever, every `every`:
/// each answer is checked against the CA of `ca_pem` (which the channel is
/// pinned to as well) and `changed` runs after each CRL taken.
pub async fn follow(
    endpoint: String,
    ca_pem: String,
    revocations: Revocations,
    every: Duration,
    mut changed: impl FnMut(&Revocations) + Send,
) {
    let trust = match Trust::of_bundle(&ca_pem) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow revocations");
            return;
        }
    };
    loop {
        let fetched = async {
            let ch = channel(&endpoint, trust.clone()).await.ok()?;
            let r = EnrollmentClient::new(ch)
                .get_revocations(GetRevocationsRequest {})
                .await
                .ok()?;
            Some(r.into_inner())
        };
        if let Some(r) = fetched.await {
            match revocations.update(&r.crl_pem, &r.revoked_node_ids, &ca_pem, now_unix()) {
                Ok(true) => changed(&revocations),
                Ok(false) => {
                    tracing::warn!("enrollment sent an older CRL than the one held; ignored");
                }
                Err(e) => tracing::warn!(error = %e, "CRL from enrollment refused"),
            }
        }
        tokio::time::sleep(every).await;
    }
}
