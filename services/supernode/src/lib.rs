//! # ringmesh-supernode: the I/O around the sans-IO cores
//!
//! A supernode is the tokio process that turns the sans-IO cores
//! (`ringmesh-sip`, `ringmesh-overlay`, `ringmesh-proxy`) into a network
//! service. Start from [`run`], which binds everything a [`config::Config`]
//! names and runs until its shutdown signal, then drains.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | flags, environment and config file, validated once |
//! | [`transport`] | UDP and TCP readers and writers |
//! | [`overload`] | which new requests are shed (503), and when |
//! | [`admission`] | what one source may cost: connection quotas, rate limit, trusted elements |
//! | [`core`] | the SIP core task: the driver of the [`ringmesh_proxy::Proxy`] |
//! | [`location`] | where the core carries out location operations |
//! | [`directory`] | subscriber directories: a file, or provisioning's cache |
//! | [`farm`] | the overlay task, its seeds, and bindings on the ring |
//! | [`journal`] | the overlay's records on disk, written by a thread |
//! | [`link`] | overlay links over QUIC with mutual TLS |
//! | [`membership`] | this node's entry in etcd, and seeds found there |
//! | [`pki`] | the node's identity: key, certificate, CA bundle, CRL |
//! | [`admin`] | the admin gRPC API |
//! | [`trace`] | the live SIP trace records |
//! | [`metrics`] | Prometheus metrics (served by `ringmesh-probes`) |
//! | [`tasks`] | every spawned task, and the signal that stops them |
//! | [`clock`] | wall-clock time and the cores' `now` |
//!
//! ## Shutdown
//!
//! When the shutdown future completes, the node drains: `/readyz` turns
//! 503, the readers answer new requests 503 with Retry-After, a farm
//! member hands its records to their new replicas, and the transactions in
//! progress finish (at most [`DRAIN_LIMIT`]). A farm member goes on
//! answering what its peers sent before they heard that it leaves, then
//! closes its links once they carried its last answers. Then every task is
//! stopped and awaited, and the journal is flushed.

pub mod admin;
pub mod admission;
pub mod cdr;
pub mod clock;
pub mod config;
pub mod core;
pub mod directory;
pub mod dns;
pub mod farm;
pub mod journal;
pub mod link;
pub mod location;
pub mod membership;
pub mod metrics;
pub mod overload;
pub mod pki;
pub mod sip_tls;
pub mod tasks;
pub mod trace;
pub mod transport;
pub mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use ringmesh_proxy::auth::{Auth, Fetched};
use ringmesh_proxy::{Me, Proxy, RegistrarConfig, Transport};
use ringmesh_sip::Limits;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, Config};
use crate::core::SipCore;
use crate::location::{Local, LocationService};
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// How long a draining node waits for its transactions in progress, and
/// for the hand-off of its records (both at once).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// How long a leaving farm member goes on taking requests once drained
/// and handed off: what the others sent before they heard that it leaves
/// (a round trip on a farm's network) arrives meanwhile, and is answered.
const LINGER: Duration = Duration::from_millis(300);

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
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "config key `bootstrap-token-file`: cannot read {}",
            path.display()
        )
    })?;
    let bootstrap = ringmesh_enrollment_client::Bootstrap::parse(&text).map_err(|e| {
        anyhow::anyhow!("config key `bootstrap-token-file`: {}: {e}", path.display())
    })?;
    if bootstrap.ca_sha256.is_none() {
        tracing::warn!(file = %path.display(), "the bootstrap file pins no CA (ca-sha256:): the CA enrollment returns is trusted as is");
    }
    let id = ringmesh_enrollment_client::enroll(endpoint, &bootstrap, &cfg.name, &cfg.data)
        .await
        .map_err(|e| anyhow::anyhow!("enrollment at {endpoint} failed: {e}"))?;
    tracing::info!(node_id = %hex::encode(id.node_id), "enrolled with the farm CA");
    Ok(())
}

/// The addresses a running supernode bound (a port 0 in the config is the
/// port the kernel chose here).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub sip: Vec<(Transport, SocketAddr)>,
    pub overlay: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub node_id: [u8; 16],
    /// The trusted elements the transport readers exempt from the
    /// per-source limits: replace the table through it while the node runs.
    pub trusted: admission::Trusted,
}

/// Runs a supernode until `shutdown` completes, then drains and stops
/// every task it started.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(cfg, shutdown, |_| {}).await
}

/// [`run`], calling `serving` with the bound addresses once the node
/// serves SIP.
pub async fn run_with(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    serving: impl FnOnce(&Bound),
) -> anyhow::Result<()> {
    let tasks = Tasks::new();
    let result = serve(cfg, &tasks, shutdown, serving).await;
    if !tasks.stop(Duration::from_secs(5)).await {
        tracing::warn!(running = tasks.len(), "tasks still running at exit");
    }
    result
}

/// The subscriber directory and digest authentication of `cfg`, the
/// receiver of late directory answers, and the provisioning cache if any.
#[allow(clippy::type_complexity)]
fn subscriber_auth(
    cfg: &Config,
    secret: &[u8],
    tasks: &Tasks,
) -> anyhow::Result<(
    Option<Auth>,
    Option<mpsc::Receiver<(u64, Fetched)>>,
    Option<Arc<ringmesh_provisioning_client::cache::SubscriberCache>>,
)> {
    if cfg.auth == AuthMode::None {
        return Ok((None, None, None));
    }
    // A new issuer id each run, from the OS's randomness: nonces bind to
    // this process's replay state, and those of an earlier run (or of
    // another node) are answered with a fresh challenge, never accepted.
    let issuer: u64 = rand::random();
    let digest =
        ringmesh_sip::digest::DigestAuth::new(secret, cfg.nonce_lifetime.as_secs(), issuer)
            .with_algorithms(&cfg.digest_algorithms)
            .with_tracking_cap(cfg.nonce_tracking_cap);
    let (directory, fetched, cache): (Box<dyn ringmesh_proxy::Directory>, _, _) = match (
        &cfg.provisioning,
        &cfg.subscribers,
    ) {
        (Some(addr), _) => {
            let c = Arc::new(
                ringmesh_provisioning_client::cache::SubscriberCache::connect(
                    addr,
                    ringmesh_provisioning_client::cache::CacheConfig {
                        capacity: cfg.subscriber_cache,
                        tls: provisioning_tls(cfg)?,
                        ..Default::default()
                    },
                )
                .map_err(|e| anyhow::anyhow!("config key `provisioning`: {e}"))?,
            );
            tracing::info!(provisioning = %addr, capacity = cfg.subscriber_cache, realm = %cfg.domain, "digest authentication against provisioning");
            let (dir, rx) = directory::CacheDirectory::new(c.clone(), &cfg.domain, tasks.clone());
            (Box::new(dir), Some(rx), Some(c))
        }
        (None, Some(path)) => {
            let d = directory::FileDirectory::load(path, &cfg.domain)?;
            tracing::info!(subscribers = d.subscribers(), realm = %cfg.domain, "digest authentication against a subscriber file");
            (Box::new(d), None, None)
        }
        (None, None) => anyhow::bail!("digest auth needs --subscribers or --provisioning"),
    };
    Ok((
        Some(Auth::new(&cfg.domain, digest, directory)),
        fetched,
        cache,
    ))
}

/// Copies the provisioning cache's counters into the metrics every 5 s.
async fn follow_cache(c: Arc<ringmesh_provisioning_client::cache::SubscriberCache>, m: Metrics) {
    loop {
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
}

/// Hands the SIP core each change to a subscriber it acts on (the
/// bindings of a barred or deleted one are purged, the flows of one whose
/// password changed are closed).
async fn follow_subscriber_changes(
    mut changes: tokio::sync::broadcast::Receiver<ringmesh_provisioning_client::Change>,
    core: mpsc::Sender<transport::Inbound>,
) {
    use ringmesh_provisioning_client::Change;
    use ringmesh_proxy::SubscriberChange;
    loop {
        let change = match changes.recv().await {
            Ok(Change::Removed {
                private_id,
                public_ids,
            }) => SubscriberChange::Removed {
                private_id,
                public_ids: public_ids
                    .iter()
                    .filter_map(|p| ringmesh_sip::aor::Aor::parse(p.as_bytes()).ok())
                    .collect(),
            },
            Ok(Change::Credentials { private_id }) => SubscriberChange::Credentials { private_id },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "subscriber changes came faster than the core took them; bindings of the missed ones expire on their own"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let msg = transport::Inbound::Control(transport::Control::Subscriber(change));
        if core.send(msg).await.is_err() {
            return;
        }
    }
}

fn tls_files(p: &ringmesh_config::TlsPaths) -> ringmesh_enrollment_client::tls::TlsFiles {
    ringmesh_enrollment_client::tls::TlsFiles {
        ca: p.ca.clone(),
        cert: p.cert.clone(),
        key: p.key.clone(),
    }
}

/// The TLS this node speaks to provisioning: its node identity, read now
/// (so a node enrolled at start-up has its files by then).
fn provisioning_tls(cfg: &Config) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    let Some(p) = &cfg.provisioning_tls else {
        return Ok(None);
    };
    Ok(Some(tls_files(p).client().context(
        "mutual TLS to provisioning (this node's --cert, --key and --ca; http://HOST:PORT for a plaintext one)",
    )?))
}

/// Keeps the trusted elements of provisioning in force beside the
/// configured ones: the transport readers' table and the proxy's are
/// replaced together on every change (an element named in both is the
/// configured one).
fn follow_trusted(
    addr: &str,
    cfg: &Config,
    readers: admission::Trusted,
    core: mpsc::Sender<transport::Inbound>,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    use ringmesh_provisioning_client::{cache, trusted};
    let channel = cache::channel(
        addr,
        Duration::from_secs(5),
        provisioning_tls(cfg)?.as_ref(),
    )
    .with_context(|| format!("config key `provisioning`: {addr}"))?;
    let client =
        ringmesh_proto::provisioning::provisioning_client::ProvisioningClient::new(channel);
    let (publish, mut changes) = tokio::sync::watch::channel(Vec::new());
    let defaults = cache::CacheConfig::default();
    tasks.spawn(trusted::follow(
        client,
        publish,
        defaults.backoff_min,
        defaults.backoff_max,
    ));
    let configured = cfg.policy.trusted.elements().to_vec();
    tasks.spawn(async move {
        while changes.changed().await.is_ok() {
            let mut elements = configured.clone();
            elements.extend(
                changes
                    .borrow_and_update()
                    .iter()
                    .filter(|e| !configured.iter().any(|c| c.name == e.name))
                    .cloned(),
            );
            let table = ringmesh_proxy::TrustTable::new(elements);
            readers.replace(table.clone());
            let msg = transport::Inbound::Control(transport::Control::Trusted(table));
            if core.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Reads the farm's secrets: every node of a farm must hold the same ones
/// (flow tokens are verified farm-wide, and a digest nonce of another
/// member is told from a forged one), so a farm node never invents one; a
/// node alone makes its own. See [`parse_secrets`].
fn farm_secrets(cfg: &Config) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    if cfg.overlay.is_none() && !cfg.farm_secret.exists() {
        return Ok(vec![(0, load_or_create_secret(&cfg.farm_secret)?)]);
    }
    let text = std::fs::read_to_string(&cfg.farm_secret).with_context(|| {
        format!(
            "config key `farm-secret`: cannot read {} (every farm node needs the shared secret)",
            cfg.farm_secret.display()
        )
    })?;
    parse_secrets(&text)
        .with_context(|| format!("config key `farm-secret`: {}", cfg.farm_secret.display()))
}

/// The farm secret file: one secret per line, in hex, optionally
/// `VERSION:HEX` (0–255; a bare secret is version 0). The first line is
/// the current secret (it seals flow tokens and keys digest nonces); the
/// others are still accepted, so the secret rotates without breaking a
/// dialog (docs/operations.md). Blank lines and `#` comments are skipped.
pub fn parse_secrets(text: &str) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (version, hex_text) = match line.split_once(':') {
            Some((v, h)) => (
                v.trim()
                    .parse::<u8>()
                    .with_context(|| format!("line {}: '{v}' is not a version 0-255", i + 1))?,
                h.trim(),
            ),
            None => (0, line),
        };
        let secret = hex::decode(hex_text)
            .with_context(|| format!("line {}: the secret is not hex", i + 1))?;
        if secret.len() < 16 {
            anyhow::bail!("line {}: a secret needs at least 16 bytes", i + 1);
        }
        if out.iter().any(|(v, _)| *v == version) {
            anyhow::bail!("line {}: version {version} appears twice", i + 1);
        }
        out.push((version, secret));
    }
    if out.is_empty() {
        anyhow::bail!("no secret in the file");
    }
    Ok(out)
}

async fn serve(
    cfg: Config,
    tasks: &Tasks,
    shutdown: impl Future<Output = ()>,
    serving: impl FnOnce(&Bound),
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("cannot create data directory {}", cfg.data.display()))?;
    enroll_if_needed(&cfg).await?;
    let secrets = farm_secrets(&cfg)?;
    let secret = secrets[0].1.clone();
    let metrics = Metrics::new(&cfg.name);
    let mut bound = Bound::default();
    // `/readyz`: serving, joined the ring, replicas in place.
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = cfg.metrics {
        let m = metrics.clone();
        let (local, server) = ringmesh_probes::bind(
            addr,
            Arc::new(move || m.render().into_bytes()),
            ready.clone(),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tasks.spawn(server);
        bound.metrics = Some(local);
    }
    let (auth, fetched, cache) = subscriber_auth(&cfg, &secret, tasks)?;
    if let Some(c) = cache.clone() {
        tasks.spawn(follow_cache(c, metrics.clone()));
    }

    // Certificates are loaded before anything binds: a bad one stops the
    // node at start with what is wrong, never at the first handshake.
    let tls = if cfg.listen.iter().any(|l| l.transport.is_secure()) {
        let certs = sip_tls::Certificates::load(&cfg.tls_certs)?;
        tasks.spawn(sip_tls::follow(certs.clone(), metrics.clone()));
        Some(certs)
    } else {
        None
    };
    // The CAs peers' and TLS phones' certificates chain to.
    let client_cas: Vec<std::path::PathBuf> = [&cfg.tls_client_ca, &cfg.peer_ca]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    // With a certificate and a CA to check servers against, this node
    // opens TLS to other domains' servers (peer farms, ENUM URIs).
    let tls_client = match (&tls, client_cas.is_empty()) {
        (Some(certs), false) => Some(sip_tls::client_config(certs, &client_cas)?),
        _ => None,
    };
    let mut cfg = cfg;
    cfg.policy.tls_client = tls_client.is_some();

    let (tx, rx) = mpsc::channel(config::INBOUND_QUEUE);
    let (finishing_tx, finishing_rx) = mpsc::channel(config::INBOUND_QUEUE);
    let shared = Arc::new(transport::Shared {
        inbound: tx.clone(),
        finishing: finishing_tx.clone(),
        metrics: metrics.clone(),
        limits: Limits::default(),
        idle_timeout: cfg.tcp_idle_timeout,
        message_timeout: cfg.tcp_message_timeout,
        first_message_timeout: cfg.tcp_first_message_timeout,
        ws_ping_every: if cfg.flow_timer > 0 {
            Duration::from_millis(u64::from(cfg.flow_timer) * 800)
        } else {
            Duration::from_secs(25)
        },
        connections: admission::Connections::new(
            cfg.max_connections,
            cfg.max_connections_per_ip,
            metrics.connections.clone(),
        ),
        next_conn: AtomicU64::new(1),
        overload: Arc::new(overload::Overload::new(cfg.overload)),
        classifier: overload::Classifier {
            tokens: ringmesh_proxy::TokenKeys::new(&secrets, cfg.max_dialog.as_secs()),
            emergency_numbers: cfg.policy.emergency_numbers.clone(),
        },
        rate: cfg
            .source_rate
            .map(|r| admission::SourceLimiter::new(r.limit, r.burst, admission::SOURCE_TABLE)),
        trusted: admission::Trusted::new(cfg.policy.trusted.clone()),
        tasks: tasks.clone(),
        tls_client,
    });
    bound.trusted = shared.trusted.clone();
    if let Some(c) = &cache {
        tasks.spawn(follow_subscriber_changes(c.changes(), tx.clone()));
    }
    if let Some(addr) = &cfg.provisioning {
        follow_trusted(addr, &cfg, shared.trusted.clone(), tx.clone(), tasks)?;
    }
    let ws_policy = Arc::new(websocket::Policy {
        origins: cfg.ws_origins.clone(),
    });
    let mut udp = Vec::new();
    for (l, socket) in transport::bind_sip(&cfg.listen)? {
        let local = match socket {
            transport::SipSocket::Udp(s) => {
                let s = Arc::new(s);
                let local = s.local_addr()?;
                tasks.spawn(transport::udp_reader(
                    udp.len() as u16,
                    s.clone(),
                    shared.clone(),
                ));
                udp.push(s);
                local
            }
            transport::SipSocket::Tcp(lst) => {
                let local = lst.local_addr()?;
                let t = l.transport;
                let tls = match (&tls, t) {
                    // Browsers are never asked for a client certificate:
                    // they would prompt the user for one, or, headless,
                    // cancel the WebSocket.
                    (Some(certs), Transport::Tls) => Some(tokio_rustls::TlsAcceptor::from(
                        sip_tls::server_config(certs, &client_cas, &[])?,
                    )),
                    (Some(certs), Transport::Wss) => Some(tokio_rustls::TlsAcceptor::from(
                        sip_tls::server_config(certs, &[], &[b"http/1.1"])?,
                    )),
                    _ => None,
                };
                let kind = transport::StreamKind {
                    transport: t,
                    tls,
                    ws: matches!(t, Transport::Ws | Transport::Wss).then(|| ws_policy.clone()),
                };
                tasks.spawn(transport::stream_acceptor(lst, kind, shared.clone()));
                local
            }
        };
        tracing::info!(listen = %l, %local, "SIP listening");
        bound.sip.push((l.transport, local));
    }
    let (trace, _) = tokio::sync::broadcast::channel(1024);
    let etcd_connected = Arc::new(AtomicBool::new(false));
    let provisioning_connected: Arc<dyn Fn() -> bool + Send + Sync> = match cache.clone() {
        Some(c) => Arc::new(move || c.is_watching()),
        None => Arc::new(|| false),
    };
    let mut facts = admin::NodeFacts {
        name: cfg.name.clone(),
        node_id: [0; 16],
        sip_listeners: bound
            .sip
            .iter()
            .map(|(t, a)| format!("{}:{a}", t.as_str()))
            .collect(),
        overlay_addr: String::new(),
        admin_addr: String::new(),
        cert_expires_at: None,
        started,
    };

    let (node_id, farm, location): (_, _, Box<dyn LocationService>) = match cfg.overlay.clone() {
        None => {
            let id = load_or_create_secret(&cfg.data.join("node.id"))?;
            let mut node_id = [0u8; 16];
            node_id.copy_from_slice(&id[..16]);
            (node_id, None, Box::new(Local::default()))
        }
        Some(ov) => {
            let (farm, store, overlay, expires) = join_farm(
                &cfg,
                &ov,
                &bound,
                tasks,
                finishing_tx,
                &metrics,
                ready.clone(),
                etcd_connected.clone(),
                shared.overload.clone(),
            )
            .await?;
            facts.overlay_addr = overlay.0.clone();
            facts.cert_expires_at = expires;
            bound.overlay = Some(overlay.1);
            (farm.me, Some(farm), Box::new(store))
        }
    };
    facts.node_id = node_id;
    bound.node_id = node_id;
    let listen: Vec<(Transport, SocketAddr)> = bound.sip.clone();
    let me = Me::new(&cfg.domain, cfg.advertise.as_deref(), &listen, node_id);
    let proxy = Proxy::new(
        ringmesh_proxy::Config {
            me,
            registrar: RegistrarConfig {
                min_expires: cfg.min_expires,
                max_expires: cfg.max_expires,
                default_expires: cfg.default_expires,
                max_contacts: cfg.max_contacts,
                flow_timer: cfg.flow_timer,
                allow_loopback_contacts: cfg.allow_loopback_contacts,
            },
            t1: cfg.t1,
            t2: cfg.t2,
            t4: cfg.t4,
            retry_after: cfg.overload.retry_after,
            presized_transactions: cfg.presize_transactions,
            secrets: secrets.clone(),
            max_dialog: cfg.max_dialog,
            branch_seed: rand::random(),
            policy: cfg.policy.clone(),
        },
        auth,
        farm.clone()
            .map(|f| Box::new(f) as Box<dyn ringmesh_proxy::Members>),
        Box::new(metrics.clone()),
    );
    let cdr = match &cfg.cdr {
        Some(c) => Some(
            cdr::CdrWriter::open(c.clone(), node_id, metrics.cdr.clone())
                .context("call records (--cdr-dir, or --cdr false)")?,
        ),
        None => None,
    };
    // ENUM asks DNS, and so do requests for peer farms' domains.
    let dns = if cfg.policy.enum_domain.is_some() || cfg.policy.tls_client {
        Some(dns::Dns::new(cfg.dns_server)?)
    } else {
        None
    };
    let core = SipCore::new(
        proxy,
        location,
        fetched,
        metrics.clone(),
        shared.clone(),
        udp,
        farm.clone(),
        Some(trace.clone()),
    )
    .with_cdr(cdr)
    .with_dns(dns);
    if let Some(addr) = cfg.admin {
        let svc = admin::AdminService {
            facts: admin::NodeFacts {
                admin_addr: addr.to_string(),
                ..facts
            },
            farm: farm.clone(),
            trace,
            transactions: metrics.transactions.clone(),
            etcd_connected,
            provisioning_connected,
            core: tx.clone(),
            tasks: tasks.clone(),
            mtls: cfg.admin_tls.is_some(),
        };
        let tls = match &cfg.admin_tls {
            Some(p) => Some(
                tls_files(p)
                    .server()
                    .context("the admin API's mutual TLS (this node's --cert, --key, --ca)")?,
            ),
            None => None,
        };
        let (local, server) = admin::bind(addr, svc, tls)
            .await
            .with_context(|| format!("cannot serve the admin API on {addr}"))?;
        tasks.spawn(server);
        bound.admin = Some(local);
    }
    let drain = CancellationToken::new();
    let stop_core = CancellationToken::new();
    let (idle_tx, mut idle) = tokio::sync::watch::channel(false);
    let mut core_task =
        tasks.spawn(core.run(rx, finishing_rx, drain.clone(), stop_core.clone(), idle_tx));
    if farm.is_none() {
        ready.store(true, Ordering::Relaxed);
        tracing::info!(name = %cfg.name, domain = %cfg.domain, "supernode ready (a farm of one)");
    } else {
        tracing::info!(name = %cfg.name, node_id = %hex::encode(node_id), "supernode started; joining the farm");
    }
    serving(&bound);
    tokio::select! {
        () = shutdown => {}
        r = &mut core_task => anyhow::bail!("SIP core stopped: {r:?}"),
    }

    // Drain: no new work, records handed off, transactions finished.
    tracing::info!("draining: refusing new requests, handing off, finishing transactions");
    ready.store(false, Ordering::Relaxed);
    shared.overload.start_draining();
    drain.cancel();
    let leave = async {
        match &farm {
            Some(f) => f.leave(DRAIN_LIMIT).await,
            None => true,
        }
    };
    let until = tokio::time::Instant::now() + DRAIN_LIMIT;
    let (handed_off, mut finished) = tokio::join!(leave, all_answered(&mut idle, until));
    if let Some(f) = &farm {
        // The others route nothing new here once they hear that this node
        // leaves; what they sent before is still on its way. Take it and
        // answer it too, then close the links once they carried the last
        // answers.
        tokio::time::sleep(LINGER).await;
        let until = until.max(tokio::time::Instant::now() + LINGER);
        finished = all_answered(&mut idle, until).await;
        f.close_links().await;
    }
    tracing::info!(
        handed_off,
        transactions_finished = finished,
        "drained; stopping"
    );
    stop_core.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), core_task).await;
    Ok(())
}

/// Waits until the SIP core has answered every request it took; false if
/// it had not by `until`.
async fn all_answered(
    idle: &mut tokio::sync::watch::Receiver<bool>,
    until: tokio::time::Instant,
) -> bool {
    tokio::time::timeout_at(until, idle.wait_for(|answered| *answered))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Starts the overlay side of a farm member: identity, links, membership
/// in etcd, revocations, the overlay task. Returns the farm's handle, the
/// location service on the ring, the advertised overlay address and the
/// certificate's expiry.
#[allow(clippy::too_many_arguments)]
async fn join_farm(
    cfg: &Config,
    ov: &config::OverlayConfig,
    bound: &Bound,
    tasks: &Tasks,
    sip_inbound: mpsc::Sender<transport::Inbound>,
    metrics: &Metrics,
    ready: Arc<AtomicBool>,
    etcd_connected: Arc<AtomicBool>,
    overload: Arc<overload::Overload>,
) -> anyhow::Result<(
    farm::FarmHandle,
    farm::OverlayStore,
    (String, SocketAddr),
    Option<i64>,
)> {
    let identity = pki::Identity::load(&ov.cert, &ov.key, &ov.ca, Some(&ov.crl))
        .context("node identity (config keys cert, key, ca)")?;
    let node_hex = hex::encode(identity.node_id);
    let expires = identity.chain.first().and_then(pki::not_after);
    let (link_tx, link_rx) = mpsc::channel(16_384);
    let links = link::Links::bind(
        ov.listen,
        &identity,
        ringmesh_overlay::ALPN.as_bytes(),
        ringmesh_overlay::ProtocolVersion::CURRENT,
        link_tx,
        metrics.clone(),
        tasks.clone(),
    )
    .with_context(|| format!("cannot bind the overlay endpoint {}", ov.listen))?;
    let host = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| match bound.sip[0].1.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    let sip_port = bound
        .sip
        .iter()
        .find(|(t, _)| *t == Transport::Udp)
        .or(bound.sip.first())
        .map_or(5060, |(_, a)| a.port());
    let overlay_local = links.local_addr()?;
    let mut node = ringmesh_overlay::Config::new(farm::nid(identity.node_id));
    let overlay_host = ov.advertise.clone().unwrap_or_else(|| host.clone());
    node.overlay_addr = format!("{overlay_host}:{}", overlay_local.port());
    node.sip_addr = format!("{host}:{sip_port}");
    node.name = cfg.name.clone();
    node.replicas = ov.replicas;
    node.persist = true;
    node.rng_seed = rand::random();
    let overlay_addr = node.overlay_addr.clone();
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
        tasks.spawn(membership::keep_registered(
            cfg.etcd.clone(),
            membership::MemberEntry {
                node_id: node_hex.clone(),
                name: cfg.name.clone(),
                overlay: node.overlay_addr.clone(),
                sip: node.sip_addr.clone(),
            },
            etcd_connected,
            metrics.clone(),
        ));
    }
    if let Some(ep) = cfg.enrollment.clone() {
        // The farm's revocations, over TLS pinned to our CA, each CRL
        // checked against it: links to revoked nodes close and are refused
        // from then on; the CRL is kept on disk for the next start.
        let ca_pem = std::fs::read_to_string(&ov.ca)
            .with_context(|| format!("cannot read {}", ov.ca.display()))?;
        let (links, crl_path, me) = (links.clone(), ov.crl.clone(), identity.node_id);
        tasks.spawn(ringmesh_enrollment_client::revocations::follow(
            ep,
            ca_pem,
            Default::default(),
            Duration::from_secs(3),
            move |r| {
                let ids = r.node_ids();
                if ids.contains(&me) {
                    tracing::error!(
                        "this node's certificate is revoked: the farm will not link with it"
                    );
                }
                links.revoke(&ids);
                let _ = std::fs::write(&crl_path, r.crl_pem());
            },
        ));
    }
    if let Some(t) = expires {
        let m = metrics.clone();
        tasks.spawn(async move {
            loop {
                m.cert_expiry.set(t - clock::wall_ms() as i64 / 1000);
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
    }
    let own = [Some(overlay_local), node.overlay_addr.parse().ok()]
        .into_iter()
        .flatten()
        .collect();
    let (farm, replies) = farm::start(farm::FarmSetup {
        node,
        links,
        link_events: link_rx,
        seeds,
        own,
        bootstrap_after: ov.bootstrap_after,
        data: cfg.data.clone(),
        sip_inbound,
        metrics: metrics.clone(),
        ready,
        tasks: tasks.clone(),
        overload,
    })?;
    let store = farm::OverlayStore::new(farm.clone(), replies, cfg.max_expires);
    Ok((farm, store, (overlay_addr, overlay_local), expires))
}

#[cfg(test)]
mod tests {
    use super::parse_secrets;

    #[test]
    fn secret_files_list_versions_the_first_current() {
        let a = "00112233445566778899aabbccddeeff";
        let b = "ffeeddccbbaa99887766554433221100";
        assert_eq!(parse_secrets(a).unwrap(), [(0, hex::decode(a).unwrap())]);
        let two = parse_secrets(&format!("# rotation\n2:{b}\n\n1:{a}\n")).unwrap();
        assert_eq!(two[0], (2, hex::decode(b).unwrap()), "the first seals");
        assert_eq!(two[1].0, 1);
        for (bad, why) in [
            ("", "no secret"),
            ("xyz", "not hex"),
            ("0011", "16 bytes"),
            (&*format!("300:{a}"), "version 0-255"),
            (&*format!("1:{a}\n1:{b}"), "twice"),
        ] {
            let e = format!("{:#}", parse_secrets(bad).unwrap_err());
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
