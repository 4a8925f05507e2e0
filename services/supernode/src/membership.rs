//! Membership in etcd: bootstrap and operations, never the data path.
//!
//! Each supernode keeps `/ringmesh/members/<node-id>` (its name and
//! addresses, JSON) under a lease it keeps alive; a node that dies leaves
//! its key to expire with the lease. A new node reads the prefix to find
//! seeds. When etcd is down the farm keeps working: the overlay carries its
//! own membership; only this bootstrap aid waits for etcd to return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{ConnectOptions, GetOptions, PutOptions};
use ringmesh_config::Etcd;

use crate::metrics::Metrics;

pub const PREFIX: &str = "/ringmesh/members/";
const TTL_SECS: i64 = 10;

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
}

/// What a member publishes about itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberEntry {
    pub node_id: String,
    pub name: String,
    pub overlay: String,
    pub sip: String,
}

/// The overlay addresses of the members etcd knows (seeds), within 3 s.
pub async fn discover_seeds(etcd: &Etcd, me: &str) -> Vec<SocketAddr> {
    let fetch = async {
        let mut c = etcd.connect(options()).await.ok()?;
        let r = c
            .get(PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .ok()?;
        Some(
            r.kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<MemberEntry>(kv.value()).ok())
                .filter(|m| m.node_id != me)
                .filter_map(|m| m.overlay.parse().ok())
                .collect::<Vec<SocketAddr>>(),
        )
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps this node's membership key alive until the process ends.
pub async fn keep_registered(
    etcd: Etcd,
    me: MemberEntry,
    connected: Arc<AtomicBool>,
    metrics: Metrics,
) {
    let key = format!("{PREFIX}{}", me.node_id);
    let value = serde_json::to_vec(&me).expect("serialisable");
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = async {
            let mut c = etcd
                .connect(options())
                .await
                .map_err(etcd_client::Error::InvalidArgs)?;
            let lease = c.lease_grant(TTL_SECS, None).await?.id();
            c.put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            connected.store(true, Ordering::Relaxed);
            metrics.etcd_connected.set(1);
            tracing::info!(%key, "membership registered in etcd");
            loop {
                keeper.keep_alive().await?;
                match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    _ => return Err(etcd_client::Error::LeaseKeepAliveError("lease lost".into())),
                }
                tokio::time::sleep(Duration::from_secs((TTL_SECS / 3) as u64)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), etcd_client::Error>(())
        };
        if let Err(e) = attempt.await {
            if connected.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = %e, "etcd unreachable; the farm keeps working without it");
            }
            metrics.etcd_connected.set(0);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
