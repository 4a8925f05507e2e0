//! # ringmesh-provisioning: the farm's subscriber service
//!
//! An HSS-like gRPC service (`ringmesh.provisioning.v1.Provisioning`,
//! see `proto/`) that keeps subscribers: a private identity (the digest
//! username), public identities (AORs), digest credentials stored only as
//! HA1 values, implicit registration sets, barring and a service profile.
//! Supernodes read subscribers one at a time through a
//! [`SubscriberCache`], which a Watch stream keeps coherent.
//!
//! It also keeps the farm's table of trusted elements (the SIP peers that
//! are not phones), which every supernode holds whole.
//!
//! Start from [`run`] (the `ringmesh provisioning` process), [`serve`]
//! (the gRPC server on a listener) or [`SubscriberCache`] (the supernode
//! side).
//!
//! | module | what it holds |
//! |---|---|
//! | [`store`] | the [`SubscriberStore`] and [`TrustStore`] traits, [`EtcdStore`], [`EmbeddedStore`] |
//! | [`service`] | the tonic service and [`serve`] |
//! | [`status`] | errors to gRPC status codes, in one place |
//! | [`config`] | `ringmesh provisioning` flags, environment, file |
//! | [`metrics`] | Prometheus metrics (served on `/metrics`, beside `/healthz` and `/readyz`, by `ringmesh-probes`) |
//!
//! The supernode's side lives in `ringmesh-provisioning-client` and is
//! re-exported here: [`cache`] ([`SubscriberCache`] for supernodes) and
//! [`validate`] (API input checked once, errors naming the field).

pub mod config;
pub mod metrics;
pub mod service;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
pub use config::{ProvisioningArgs, ProvisioningConfig, StoreConfig};
pub use ringmesh_proto::provisioning as pb;
pub use ringmesh_provisioning_client::{
    CacheConfig, CacheError, CacheMetrics, SubscriberCache, cache, validate,
};
pub use service::{ProvisioningService, serve};
pub use store::{
    EmbeddedStore, EtcdOptions, EtcdStore, Store, StoreError, SubscriberStore, TrustStore,
};
use tokio::net::TcpListener;

/// Runs the provisioning service until `shutdown` completes.
pub async fn run(
    cfg: ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(cfg, shutdown, |_| {}).await
}

/// [`run`], calling `serving` with the bound addresses once it serves (a
/// port 0 in the config is the port the kernel chose).
pub async fn run_with(
    cfg: ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: impl FnOnce(&Listening) + Send,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", cfg.listen))?;
    run_on_with(listener, cfg, shutdown, serving).await
}

/// Where a running service listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub api: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// [`run`] on an already bound listener (tests bind port 0).
pub async fn run_on(
    listener: TcpListener,
    cfg: ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_on_with(listener, cfg, shutdown, |_| {}).await
}

/// [`run_with`] on an already bound listener.
pub async fn run_on_with(
    listener: TcpListener,
    cfg: ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: impl FnOnce(&Listening) + Send,
) -> anyhow::Result<()> {
    match &cfg.store {
        StoreConfig::Embedded(dir) => {
            let store = EmbeddedStore::open_with(dir, cfg.watch_keepalive).with_context(|| {
                format!(
                    "cannot open the subscriber store in {} (--data)",
                    dir.display()
                )
            })?;
            tracing::info!(data = %dir.display(), subscribers = store.len(), trusted_elements = store.trusted_len(), "embedded subscriber store");
            run_store(listener, Arc::new(store), &cfg, shutdown, serving).await
        }
        StoreConfig::Etcd {
            etcd,
            prefix,
            timeout,
        } => {
            let opts = EtcdOptions {
                etcd: etcd.clone(),
                prefix: prefix.clone(),
                timeout: *timeout,
                keepalive: cfg.watch_keepalive,
            };
            let store = EtcdStore::connect(opts)
                .await
                .context("cannot set up the etcd client (--etcd)")?;
            tracing::info!(endpoints = ?etcd.endpoints, tls = etcd.tls.is_some(), prefix, "etcd subscriber store");
            run_store(listener, Arc::new(store), &cfg, shutdown, serving).await
        }
    }
}

fn tls_files(p: &config::TlsPaths) -> ringmesh_enrollment_client::tls::TlsFiles {
    ringmesh_enrollment_client::tls::TlsFiles {
        ca: p.ca.clone(),
        cert: p.cert.clone(),
        key: p.key.clone(),
    }
}

async fn run_store<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    cfg: &ProvisioningConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: impl FnOnce(&Listening) + Send,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry);
    let ready = Arc::new(AtomicBool::new(false));
    let mut metrics_at = None;
    if let Some(addr) = cfg.metrics {
        metrics_at = Some(
            ringmesh_probes::serve(
                addr,
                ringmesh_probes::registry_render(registry),
                ready.clone(),
            )
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?,
        );
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
    serving(&Listening {
        api: local,
        metrics: metrics_at,
    });
    let revoked = ringmesh_enrollment_client::revocations::Revocations::default();
    let follower = match (&cfg.enrollment, &cfg.tls) {
        (Some(ep), Some(tls)) => {
            let ca_pem = std::fs::read_to_string(&tls.ca)
                .with_context(|| format!("cannot read {} (--tls-ca)", tls.ca.display()))?;
            Some(tokio::spawn(
                ringmesh_enrollment_client::revocations::follow(
                    ep.clone(),
                    ca_pem,
                    revoked.clone(),
                    Duration::from_secs(3),
                    |r| tracing::info!(nodes = r.node_ids().len(), "revocations updated"),
                ),
            ))
        }
        (None, Some(_)) => {
            tracing::warn!(
                "no --enrollment: a revoked node's certificate reads subscribers until it expires"
            );
            None
        }
        _ => None,
    };
    let service = ProvisioningService::new(store, &cfg.domain)
        .with_metrics(metrics)
        .with_revocations(revoked);
    let tls = match &cfg.tls {
        Some(p) => Some(
            tls_files(p)
                .server()
                .context("the API's mutual TLS (--tls-*)")?,
        ),
        None => {
            tracing::warn!(
                "serving the provisioning API in plaintext (--plaintext): anyone who reaches it reads every HA1"
            );
            None
        }
    };
    let result = serve(listener, service, tls, shutdown).await;
    probe.abort();
    if let Some(f) = follower {
        f.abort();
    }
    result.context("provisioning gRPC server failed")
}
