//! The farm's seeds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tasks::Tasks;

/// The configured seeds and their current addresses. IP literals are used
/// as they are; host names (a StatefulSet's pods behind a headless Service)
/// are resolved by a task every 5 s, since a peer that starts at the same
/// time may not be in DNS yet and a rescheduled one comes back at a new
/// address. This node's own addresses are left out.
#[derive(Debug)]
pub(super) struct Seeds {
    configured: Vec<String>,
    resolved: Arc<parking_lot::Mutex<Vec<SocketAddr>>>,
}

impl Seeds {
    pub(super) fn start(configured: Vec<String>, own: Vec<SocketAddr>, tasks: &Tasks) -> Seeds {
        let literal: Vec<SocketAddr> = configured
            .iter()
            .filter_map(|s| s.parse().ok())
            .filter(|a| !own.contains(a))
            .collect();
        let names: Vec<String> = configured
            .iter()
            .filter(|s| s.parse::<SocketAddr>().is_err())
            .cloned()
            .collect();
        let resolved = Arc::new(parking_lot::Mutex::new(literal.clone()));
        if !names.is_empty() {
            let out = resolved.clone();
            tasks.spawn(async move {
                loop {
                    let mut addrs = literal.clone();
                    for name in &names {
                        let found = tokio::time::timeout(
                            Duration::from_secs(3),
                            tokio::net::lookup_host(name.as_str()),
                        )
                        .await;
                        match found {
                            Ok(Ok(found)) => addrs.extend(found),
                            Ok(Err(e)) => {
                                tracing::debug!(seed = %name, error = %e, "seed not resolved (yet)")
                            }
                            Err(_) => tracing::debug!(seed = %name, "seed resolution timed out"),
                        }
                    }
                    addrs.retain(|a| !own.contains(a));
                    addrs.sort_unstable();
                    addrs.dedup();
                    *out.lock() = addrs;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
        Seeds {
            configured,
            resolved,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.configured.is_empty()
    }

    /// The seeds' addresses as last resolved.
    pub(super) fn addrs(&self) -> Vec<SocketAddr> {
        self.resolved.lock().clone()
    }
}
