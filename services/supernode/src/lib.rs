//! # ringmesh-supernode: the I/O around the SIP core
//!
//! A supernode is the tokio process that turns the sans-IO cores into a
//! network service. Start from [`run`], which binds everything a
//! [`config::Config`] names and runs until SIGTERM or Ctrl-C.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | flags, environment and config file, validated once |
//! | [`transport`] | UDP and TCP readers and writers, load shedding |
//! | [`core`] | the SIP core task: transactions, registrar and proxy glue |
//! | [`registrar`] | REGISTER decisions as plain functions |
//! | [`location`] | the location-service trait and the node-local store |
//! | [`auth`] | digest authentication against the subscriber list |
//! | [`token`] | signed flow tokens in Record-Route |
//! | [`metrics`], [`http`] | Prometheus metrics, `/metrics` `/healthz` `/readyz` |

pub mod auth;
pub mod config;
pub mod core;
pub mod farm;
pub mod http;
pub mod link;
pub mod location;
pub mod metrics;
pub mod pki;
pub mod registrar;
pub mod token;
pub mod transport;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use ringmesh_sip::Limits;
use tokio::sync::mpsc;

use crate::config::{AuthMode, Config, Transport};
use crate::core::{Me, SipCore};
use crate::location::LocalStore;
use crate::metrics::Metrics;

/// Reads a secret file, or creates it with 32 random bytes.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return hex::decode(text.trim()).with_context(|| format!("{} is not hex", path.display()));
    }
    let secret: [u8; 32] = rand::random();
    write_private(path, hex::encode(secret).as_bytes())?;
    Ok(secret.to_vec())
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// Runs a supernode until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("cannot create data directory {}", cfg.data.display()))?;
    // Every node of a farm must hold the same secret (nonces and flow
    // tokens are verified farm-wide): a farm node never invents one.
    let secret = if cfg.overlay.is_some() {
        let text = std::fs::read_to_string(&cfg.farm_secret).with_context(|| {
            format!("config key `farm-secret`: cannot read {} (every farm node needs the shared secret)", cfg.farm_secret.display())
        })?;
        hex::decode(text.trim())
            .with_context(|| format!("{} is not hex", cfg.farm_secret.display()))?
    } else {
        load_or_create_secret(&cfg.farm_secret)?
    };
    let metrics = Metrics::new(&cfg.name);
    let health = Arc::new(http::Health::default());
    if let Some(addr) = cfg.metrics {
        http::serve(addr, metrics.clone(), health.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let auth = match cfg.auth {
        AuthMode::Digest => {
            let path = cfg
                .subscribers
                .as_ref()
                .expect("validated: digest needs subscribers");
            let digest =
                ringmesh_sip::digest::DigestAuth::new(&secret, cfg.nonce_lifetime.as_secs())
                    .with_algorithms(&cfg.digest_algorithms);
            let a = auth::Auth::load(path, &cfg.domain, digest)?;
            tracing::info!(subscribers = a.len(), realm = %cfg.domain, "digest authentication on");
            Some(a)
        }
        AuthMode::None => None,
    };

    let (tx, rx) = mpsc::channel(8192);
    let shared = Arc::new(transport::Shared {
        inbound: tx.clone(),
        metrics: metrics.clone(),
        limits: Limits::default(),
        idle_timeout: cfg.tcp_idle_timeout,
        message_timeout: cfg.tcp_message_timeout,
        max_connections: cfg.max_connections,
        connections: AtomicUsize::new(0),
        next_conn: AtomicU64::new(1),
        retry_after: 5,
    });
    let mut udp = Vec::new();
    for l in &cfg.listen {
        match l.transport {
            Transport::Udp => {
                let s = Arc::new(
                    transport::bind_udp(l.addr).with_context(|| format!("cannot bind {l}"))?,
                );
                tokio::spawn(transport::udp_reader(
                    udp.len() as u16,
                    s.clone(),
                    shared.clone(),
                ));
                udp.push(s);
            }
            Transport::Tcp => {
                let lst =
                    transport::bind_tcp(l.addr).with_context(|| format!("cannot bind {l}"))?;
                tokio::spawn(transport::tcp_acceptor(lst, shared.clone()));
            }
        }
        tracing::info!(listen = %l, "SIP listening");
    }
    let cfg = Arc::new(cfg);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let Some(ov) = cfg.overlay.clone() else {
        let node_id: [u8; 16] = {
            let id = load_or_create_secret(&cfg.data.join("node.id"))?;
            let mut n = [0u8; 16];
            n.copy_from_slice(&id[..16]);
            n
        };
        let me = Me::new(&cfg, node_id);
        let core = SipCore::new(
            cfg.clone(),
            me,
            LocalStore::new(),
            auth,
            metrics.clone(),
            &secret,
            shared,
            udp,
            None,
        );
        let core_task = tokio::spawn(core.run(rx));
        health.ready.store(true, Ordering::Relaxed);
        tracing::info!(name = %cfg.name, domain = %cfg.domain, "supernode ready (a farm of one)");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            r = core_task => anyhow::bail!("SIP core stopped: {r:?}"),
        }
        tracing::info!("shutting down");
        return Ok(());
    };

    // A farm member: identity from the farm CA, links, the overlay task.
    let identity = pki::Identity::load(&ov.cert, &ov.key, &ov.ca, Some(&ov.crl))
        .context("node identity (config keys cert, key, ca)")?;
    let me = Me::new(&cfg, identity.node_id);
    let (link_tx, link_rx) = mpsc::channel(16_384);
    let links = link::Links::bind(
        ov.listen,
        &identity,
        ringmesh_overlay::ALPN.as_bytes(),
        ringmesh_overlay::ProtocolVersion::CURRENT,
        link_tx,
        metrics.clone(),
    )
    .with_context(|| format!("cannot bind the overlay endpoint {}", ov.listen))?;
    let host = me.advertise.clone();
    let mut node = ringmesh_overlay::Config::new(farm::nid(identity.node_id));
    node.overlay_addr = format!("{host}:{}", ov.listen.port());
    node.sip_addr = format!("{host}:{}", me.udp_port.or(me.tcp_port).unwrap_or(5060));
    node.name = cfg.name.clone();
    node.replicas = ov.replicas;
    node.persist = true;
    node.rng_seed = rand::random();
    let (farm, replies, _overlay_task) = farm::start(farm::FarmSetup {
        node,
        links,
        link_events: link_rx,
        seeds: ov.seeds.clone(),
        bootstrap_after: ov.bootstrap_after,
        data: cfg.data.clone(),
        sip_inbound: tx,
        metrics: metrics.clone(),
        health: health.clone(),
    })?;
    let store = farm::OverlayStore::new(farm.clone(), replies, cfg.max_expires);
    let core = SipCore::new(
        cfg.clone(),
        me,
        store,
        auth,
        metrics.clone(),
        &secret,
        shared,
        udp,
        Some(farm.clone()),
    );
    let core_task = tokio::spawn(core.run(rx));
    tracing::info!(name = %cfg.name, node_id = %hex::encode(identity.node_id), overlay = %ov.listen, "supernode started; joining the farm");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = core_task => anyhow::bail!("SIP core stopped: {r:?}"),
    }
    tracing::info!("leaving the ring: handing off keys");
    let handed_off = farm.leave(Duration::from_secs(15)).await;
    tracing::info!(handed_off, "shutting down");
    Ok(())
}
