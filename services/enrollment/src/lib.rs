//! # ringmesh-enrollment: the farm's certificate authority
//!
//! The gRPC service `ringmesh.enrollment.v1.Enrollment` (see `proto/`):
//! a supernode sends a CSR with a bootstrap token and gets back a
//! certificate carrying the Node-ID the CA chose (URI SAN
//! `urn:ringmesh:node:<32 hex>`, DNS SAN `node.ringmesh.internal`), the CA
//! bundle, the CRL and the farm secret. Operators revoke nodes; the CRL
//! lists them.
//!
//! Start from [`run`] (the `ringmesh enrollment` process), [`serve`] (the
//! gRPC server on a listener) or [`enroll`] (the node side).
//!
//! | module | what it holds |
//! |---|---|
//! | [`ca`] | the CA: Node-ID certificates from CSRs, CRLs, certificate checks |
//! | [`kv`] | the [`Kv`] trait, [`FileKv`] (default) and [`EtcdKv`] |
//! | [`seal`] | the CA key and farm secret sealed at rest under a store key |
//! | [`authority`] | CA + farm secret from the store, issued-certificate records, revocation |
//! | [`bootstrap`] | bootstrap tokens with their use counts and expiry |
//! | [`service`] | the tonic service, bootstrap and admin tokens, [`serve`] |
//! | [`status`] | errors to gRPC status codes, in one place |
//! | [`config`] | `ringmesh enrollment` flags, environment, file |
//! | [`metrics`] | Prometheus metrics (served on `/metrics`, beside `/healthz` and `/readyz`, by `ringmesh-probes`) |
//!
//! The node side lives in `ringmesh-enrollment-client` and is re-exported
//! here: [`client`] ([`enroll`] / [`renew`]: key and CSR made locally,
//! identity files).

pub mod authority;
pub mod bootstrap;
pub mod ca;
pub mod config;
pub mod kv;
pub mod metrics;
pub mod seal;
pub mod service;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
pub use authority::{Authority, AuthorityOptions};
pub use bootstrap::{BootstrapToken, BootstrapTokens};
pub use config::{EnrollmentArgs, EnrollmentConfig, StoreConfig};
pub use kv::{EtcdKv, FileKv, Kv};
pub use ringmesh_enrollment_client::{
    Bootstrap, EnrollError, EnrolledIdentity, channel, client, enroll, renew,
};
pub use service::{EnrollmentService, Tokens, serve};
use tokio::net::TcpListener;

/// Runs the enrollment service until `shutdown` completes.
pub async fn run(
    cfg: EnrollmentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(cfg, shutdown, |_| {}).await
}

/// [`run`], calling `serving` with the bound addresses once it serves (a
/// port 0 in the config is the port the kernel chose).
pub async fn run_with(
    cfg: EnrollmentConfig,
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
    cfg: EnrollmentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_on_with(listener, cfg, shutdown, |_| {}).await
}

/// [`run_with`] on an already bound listener.
pub async fn run_on_with(
    listener: TcpListener,
    cfg: EnrollmentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: impl FnOnce(&Listening) + Send,
) -> anyhow::Result<()> {
    match &cfg.store {
        StoreConfig::Embedded(dir) => {
            let kv = FileKv::open(dir)
                .with_context(|| format!("cannot open {} (--data)", dir.display()))?;
            run_kv(listener, kv, &cfg, shutdown, serving).await
        }
        StoreConfig::Etcd {
            etcd,
            prefix,
            timeout,
        } => {
            let kv = EtcdKv::connect(etcd, prefix, *timeout)
                .await
                .context("cannot set up the etcd client (--etcd)")?;
            run_kv(listener, kv, &cfg, shutdown, serving).await
        }
    }
}

async fn run_kv<K: Kv>(
    listener: TcpListener,
    kv: K,
    cfg: &EnrollmentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: impl FnOnce(&Listening) + Send,
) -> anyhow::Result<()> {
    let opts = AuthorityOptions {
        ca_pem: cfg.ca_pem.clone(),
        farm_secret: cfg.farm_secret.clone(),
        cert_days: cfg.cert_days,
        store_key: cfg.store_key.clone(),
        ..AuthorityOptions::default()
    };
    let authority = Authority::open(kv, opts)
        .await
        .context("cannot load or create the farm CA")?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry);
    let ready = Arc::new(AtomicBool::new(true));
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
    let bootstrap = BootstrapTokens::new(cfg.bootstrap_tokens.clone());
    if bootstrap.unlimited() > 0 {
        tracing::warn!(
            tokens = bootstrap.unlimited(),
            "bootstrap tokens without uses= or expires= work until removed from the configuration"
        );
    }
    if cfg.admin_tokens.is_empty() {
        tracing::info!("no --admin-token: Revoke and ListCertificates need an admin certificate");
    }
    let authority = Arc::new(authority);
    let service =
        EnrollmentService::new(authority.clone(), bootstrap, Tokens::new(&cfg.admin_tokens))
            .with_metrics(metrics);
    let api = listener.local_addr()?;
    let tls = if cfg.plaintext {
        tracing::warn!("--plaintext: the bootstrap tokens nodes send cross the network in clear");
        None
    } else {
        Some(service::server_tls(&authority).context("cannot issue enrollment's own certificate")?)
    };
    tracing::info!(listen = %api, tls = tls.is_some(), "enrollment API serving");
    serving(&Listening {
        api,
        metrics: metrics_at,
    });
    let r = serve(listener, service, tls, shutdown).await;
    ready.store(false, Ordering::Relaxed);
    r.context("enrollment gRPC server failed")
}
