//! # ringmesh-provisioning: the farm's subscriber service
//!
//! An HSS-like gRPC service (`ringmesh.provisioning.v1.Provisioning`,
//! see `proto/`) that keeps subscribers: a private identity (the digest
//! username), public identities (AORs), digest credentials stored only as
//! HA1 values, implicit registration sets, barring and a service profile.
//! Supernodes read subscribers one at a time through a
//! [`SubscriberCache`], which a Watch stream keeps coherent.
//!
//! Start from [`run`] (the `ringmesh provisioning` process), [`serve`]
//! (the gRPC server on a listener) or [`SubscriberCache`] (the supernode
//! side).
//!
//! | module | what it holds |
//! |---|---|
//! | [`store`] | the [`SubscriberStore`] trait, [`EtcdStore`], [`EmbeddedStore`] |
//! | [`validate`] | API input checked once, errors naming the field |
//! | [`service`] | the tonic service and [`serve`] |
//! | [`status`] | errors to gRPC status codes, in one place |
//! | [`cache`] | [`SubscriberCache`] for supernodes |
//! | [`config`] | `ringmesh provisioning` flags, environment, file |
//! | [`cli`] | `ringmesh ctl subscriber …` |
//! | [`metrics`], [`http`] | Prometheus metrics, `/metrics` `/healthz` `/readyz` |

pub mod cache;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod service;
pub mod status;
pub mod store;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
pub use cache::{CacheConfig, CacheError, CacheMetrics, SubscriberCache};
pub use config::{ProvisioningArgs, ProvisioningConfig, StoreConfig};
pub use ringmesh_proto::provisioning as pb;
pub use service::{ProvisioningService, serve};
pub use store::{EmbeddedStore, EtcdOptions, EtcdStore, StoreError, SubscriberStore};
use tokio::net::TcpListener;

/// Runs the provisioning service until `shutdown` completes.
pub async fn run(
    cfg: ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", cfg.listen))?;
    run_on(listener, cfg, shutdown).await
}

/// [`run`] on an already bound listener (tests bind port 0).
pub async fn run_on(
    listener: TcpListener,
    cfg: ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match &cfg.store {
        StoreConfig::Embedded(dir) => {
            let store = EmbeddedStore::open_with(dir, cfg.watch_keepalive).with_context(|| {
                format!(
                    "cannot open the subscriber store in {} (--data)",
                    dir.display()
                )
            })?;
            tracing::info!(data = %dir.display(), subscribers = store.len(), "embedded subscriber store");
            run_store(listener, Arc::new(store), &cfg, shutdown).await
        }
        StoreConfig::Etcd {
            endpoints,
            prefix,
            timeout,
        } => {
            let opts = EtcdOptions {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                timeout: *timeout,
                keepalive: cfg.watch_keepalive,
            };
            let store = EtcdStore::connect(opts)
                .await
                .context("cannot set up the etcd client (--etcd)")?;
            tracing::info!(?endpoints, prefix, "etcd subscriber store");
            run_store(listener, Arc::new(store), &cfg, shutdown).await
        }
    }
}

async fn run_store<S: SubscriberStore>(
    listener: TcpListener,
    store: Arc<S>,
    cfg: &ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry);
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = cfg.metrics {
        ringmesh_probes::serve(
            addr,
            ringmesh_probes::registry_render(registry),
            ready.clone(),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    // Readiness follows the store: not ready while etcd is unreachable.
    let probe = {
        let (store, ready) = (store.clone(), ready.clone());
        tokio::spawn(async move {
            loop {
                let ok = store.current_revision().await.is_ok();
                if ready.swap(ok, Ordering::Relaxed) != ok {
                    tracing::info!(ready = ok, "subscriber store readiness changed");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(listen = %local, realm = cfg.domain, "provisioning API serving");
    let service = ProvisioningService::new(store, &cfg.domain).with_metrics(metrics);
    let result = serve(listener, service, shutdown).await;
    probe.abort();
    result.context("provisioning gRPC server failed")
}
