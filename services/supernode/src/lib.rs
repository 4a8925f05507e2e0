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

pub mod admin;
pub mod auth;
pub mod config;
pub mod core;
pub mod farm;
pub mod link;
pub mod location;
pub mod membership;
pub mod metrics;
pub mod pki;
pub mod registrar;
pub mod token;
pub mod transport;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use ringmesh_sip::Limits;
use tokio::sync::mpsc;

use crate::auth::Directory as _;
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

/// Enrolls with the farm CA when the data directory holds no identity yet:
/// the key is made here and never leaves the node; the certificate (with
/// the Node-ID the CA chose), the CA bundle, the CRL and the farm secret
/// are written beside it.
async fn enroll_if_needed(cfg: &Config) -> anyhow::Result<()> {
    let (Some(ov), Some(endpoint)) = (&cfg.overlay, &cfg.enrollment) else {
        return Ok(());
    };
    if ov.cert.exists() {
        return Ok(());
    }
    let path = cfg.bootstrap_token_file.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "config key `bootstrap-token-file`: needed to enroll at {endpoint} (no {} yet)",
            ov.cert.display()
        )
    })?;
    let token = std::fs::read_to_string(path).with_context(|| {
        format!(
            "config key `bootstrap-token-file`: cannot read {}",
            path.display()
        )
    })?;
    let id = ringmesh_enrollment::enroll(endpoint, token.trim(), &cfg.name, &cfg.data)
        .await
        .map_err(|e| anyhow::anyhow!("enrollment at {endpoint} failed: {e}"))?;
    tracing::info!(node_id = %hex::encode(id.node_id), "enrolled with the farm CA");
    Ok(())
}

/// Fetches the farm's revocations every few seconds: links to revoked
/// nodes close and are refused from then on; the CRL is kept on disk.
async fn follow_revocations(
    endpoint: String,
    links: link::Links,
    crl_path: std::path::PathBuf,
    me: [u8; 16],
) {
    use ringmesh_proto::enrollment::enrollment_client::EnrollmentClient;
    let url = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("http://{endpoint}")
    };
    loop {
        let fetched = async {
            let ch = tonic::transport::Endpoint::from_shared(url.clone())
                .ok()?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(3))
                .connect()
                .await
                .ok()?;
            EnrollmentClient::new(ch)
                .get_revocations(ringmesh_proto::enrollment::GetRevocationsRequest {})
                .await
                .ok()
                .map(tonic::Response::into_inner)
        };
        if let Some(r) = fetched.await {
            let ids: Vec<[u8; 16]> = r
                .revoked_node_ids
                .iter()
                .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
                .collect();
            if ids.contains(&me) {
                tracing::error!(
                    "this node's certificate is revoked: the farm will not link with it"
                );
            }
            links.revoke(&ids);
            if !r.crl_pem.is_empty() {
                let _ = std::fs::write(&crl_path, r.crl_pem);
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Runs a supernode until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("cannot create data directory {}", cfg.data.display()))?;
    enroll_if_needed(&cfg).await?;
    // Every node of a farm must hold the same secret (nonces and flow
    // tokens are verified farm-wide): a farm node never invents one.
    let secret = if cfg.overlay.is_some() {
        let text = std::fs::read_to_string(&cfg.farm_secret).with_context(|| {
            format!(
                "config key `farm-secret`: cannot read {} (every farm node needs the shared secret)",
                cfg.farm_secret.display()
            )
        })?;
        hex::decode(text.trim())
            .with_context(|| format!("{} is not hex", cfg.farm_secret.display()))?
    } else {
        load_or_create_secret(&cfg.farm_secret)?
    };
    let metrics = Metrics::new(&cfg.name);
    // `/readyz`: serving, joined the ring, replicas in place.
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = cfg.metrics {
        let m = metrics.clone();
        ringmesh_probes::serve(
            addr,
            Arc::new(move || m.render().into_bytes()),
            ready.clone(),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let mut cache = None;
    let auth = match cfg.auth {
        AuthMode::Digest => {
            let digest =
                ringmesh_sip::digest::DigestAuth::new(&secret, cfg.nonce_lifetime.as_secs())
                    .with_algorithms(&cfg.digest_algorithms);
            let directory: Box<dyn auth::Directory> = match (&cfg.provisioning, &cfg.subscribers) {
                (Some(addr), _) => {
                    let c = Arc::new(
                        ringmesh_provisioning::cache::SubscriberCache::connect(
                            addr,
                            ringmesh_provisioning::cache::CacheConfig {
                                capacity: cfg.subscriber_cache,
                                ..Default::default()
                            },
                        )
                        .map_err(|e| anyhow::anyhow!("config key `provisioning`: {e}"))?,
                    );
                    tracing::info!(provisioning = %addr, capacity = cfg.subscriber_cache, realm = %cfg.domain, "digest authentication against provisioning");
                    cache = Some(c.clone());
                    Box::new(auth::CacheDirectory::new(c, &cfg.domain))
                }
                (None, Some(path)) => {
                    let d = auth::FileDirectory::load(path, &cfg.domain)?;
                    tracing::info!(subscribers = d.len(), realm = %cfg.domain, "digest authentication against a subscriber file");
                    Box::new(d)
                }
                (None, None) => anyhow::bail!("digest auth needs --subscribers or --provisioning"),
            };
            Some(auth::Auth::new(&cfg.domain, digest, directory))
        }
        AuthMode::None => None,
    };
    if let Some(c) = cache.clone() {
        let m = metrics.clone();
        tokio::spawn(async move {
            loop {
                // The cache counts in atomics; the counters follow them.
                let cm = c.metrics();
                for (counter, total) in [
                    (&m.cache_hits, &cm.hits),
                    (&m.cache_misses, &cm.misses),
                    (&m.cache_errors, &cm.errors),
                ] {
                    let total = total.load(Ordering::Relaxed);
                    counter.inc_by(total.saturating_sub(counter.get()));
                }
                m.cache_watch_connected
                    .set(i64::from(cm.watch_connected.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }

    let (tx, rx) = mpsc::channel(config::INBOUND_QUEUE);
    let shared = Arc::new(transport::Shared {
        inbound: tx.clone(),
        metrics: metrics.clone(),
        limits: Limits::default(),
        idle_timeout: cfg.tcp_idle_timeout,
        message_timeout: cfg.tcp_message_timeout,
        max_connections: cfg.max_connections,
        connections: AtomicUsize::new(0),
        next_conn: AtomicU64::new(1),
        overload: transport::Overload::new(cfg.overload),
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
    let (trace, _) = tokio::sync::broadcast::channel(1024);
    let etcd_connected = Arc::new(AtomicBool::new(false));
    let provisioning_connected: Arc<dyn Fn() -> bool + Send + Sync> = match cache.clone() {
        Some(c) => Arc::new(move || c.is_watching()),
        None => Arc::new(|| false),
    };
    let mut facts = admin::NodeFacts {
        name: cfg.name.clone(),
        node_id: [0; 16],
        sip_listeners: cfg.listen.iter().map(ToString::to_string).collect(),
        overlay_addr: String::new(),
        admin_addr: cfg.admin.map(|a| a.to_string()).unwrap_or_default(),
        cert_expires_at: None,
        started,
    };

    let Some(ov) = cfg.overlay.clone() else {
        let node_id: [u8; 16] = {
            let id = load_or_create_secret(&cfg.data.join("node.id"))?;
            let mut n = [0u8; 16];
            n.copy_from_slice(&id[..16]);
            n
        };
        facts.node_id = node_id;
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
        )
        .with_trace(trace.clone());
        if let Some(addr) = cfg.admin {
            let svc = admin::AdminService::new(
                facts,
                None,
                trace,
                metrics.transactions.clone(),
                etcd_connected,
                provisioning_connected,
            );
            admin::serve(addr, svc)
                .await
                .with_context(|| format!("cannot serve the admin API on {addr}"))?;
        }
        let core_task = tokio::spawn(core.run(rx));
        ready.store(true, Ordering::Relaxed);
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
    let node_hex = hex::encode(identity.node_id);
    facts.node_id = identity.node_id;
    facts.cert_expires_at = identity.chain.first().and_then(pki::not_after);
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
    let overlay_host = ov.advertise.clone().unwrap_or_else(|| host.clone());
    node.overlay_addr = format!("{overlay_host}:{}", ov.listen.port());
    node.sip_addr = format!("{host}:{}", me.udp_port.or(me.tcp_port).unwrap_or(5060));
    node.name = cfg.name.clone();
    node.replicas = ov.replicas;
    node.persist = true;
    node.rng_seed = rand::random();
    facts.overlay_addr = node.overlay_addr.clone();
    let mut seeds = ov.seeds.clone();
    if !cfg.etcd.is_empty() {
        let found = membership::discover_seeds(&cfg.etcd, &node_hex).await;
        tracing::info!(seeds = found.len(), "seeds from etcd");
        for s in found {
            let s = s.to_string();
            if !seeds.contains(&s) {
                seeds.push(s);
            }
        }
        tokio::spawn(membership::keep_registered(
            cfg.etcd.clone(),
            membership::MemberEntry {
                node_id: node_hex.clone(),
                name: cfg.name.clone(),
                overlay: node.overlay_addr.clone(),
                sip: node.sip_addr.clone(),
            },
            etcd_connected.clone(),
            metrics.clone(),
        ));
    }
    if let Some(ep) = cfg.enrollment.clone() {
        tokio::spawn(follow_revocations(
            ep,
            links.clone(),
            ov.crl.clone(),
            identity.node_id,
        ));
    }
    {
        let m = metrics.clone();
        let expiry = facts.cert_expires_at;
        tokio::spawn(async move {
            loop {
                if let Some(t) = expiry {
                    m.cert_expiry.set(t - core::wall_ms() as i64 / 1000);
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
    }
    let own = [Some(ov.listen), node.overlay_addr.parse().ok()]
        .into_iter()
        .flatten()
        .collect();
    let (farm, replies, _overlay_task) = farm::start(farm::FarmSetup {
        node,
        links,
        link_events: link_rx,
        seeds,
        own,
        bootstrap_after: ov.bootstrap_after,
        data: cfg.data.clone(),
        sip_inbound: tx,
        metrics: metrics.clone(),
        ready: ready.clone(),
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
    )
    .with_trace(trace.clone());
    if let Some(addr) = cfg.admin {
        let svc = admin::AdminService::new(
            facts,
            Some(farm.clone()),
            trace,
            metrics.transactions.clone(),
            etcd_connected,
            provisioning_connected,
        );
        admin::serve(addr, svc)
            .await
            .with_context(|| format!("cannot serve the admin API on {addr}"))?;
    }
    let core_task = tokio::spawn(core.run(rx));
    tracing::info!(name = %cfg.name, node_id = %node_hex, overlay = %ov.listen, "supernode started; joining the farm");
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
