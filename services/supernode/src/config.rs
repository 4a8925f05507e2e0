//! Typed configuration, resolved once at the edge (STYLE.md §9).
//!
//! Every setting has one name, used three ways: a flag `--min-expires`, a
//! TOML key `min-expires` in the `--config` file, and an environment
//! variable `RINGMESH_MIN_EXPIRES`. A flag beats the environment, which
//! beats the file. Unknown file keys are rejected. [`SupernodeArgs::resolve`]
//! validates everything before any socket is bound and names the key at
//! fault.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How leaves authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Digest authentication against the subscriber list (realm = domain).
    Digest,
    /// An open registrar and proxy for any user of the domain (benchmarks).
    None,
}

/// A SIP transport the supernode listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
    /// The token used in Via and the `transport` URI parameter.
    pub fn via_token(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// `udp:HOST:PORT` or `tcp:HOST:PORT` (IPv6 as `[::1]:5060`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        let (t, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not udp:HOST:PORT or tcp:HOST:PORT"))?;
        let transport = match t.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            other => {
                return Err(format!(
                    "unknown transport '{other}' in '{s}' (use udp or tcp)"
                ));
            }
        };
        let addr: SocketAddr = rest.parse().map_err(|_| {
            format!("'{rest}' in '{s}' is not HOST:PORT with an IP address (IPv6 as [::1]:5060)")
        })?;
        Ok(Listen { transport, addr })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport.as_str(), self.addr)
    }
}

/// The `ringmesh supernode` flags; each also reads `RINGMESH_<KEY>`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SupernodeArgs {
    /// TOML file with the same keys as the flags (unknown keys are errors).
    #[arg(long, env = "RINGMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// This supernode's name (logs, metrics, admin).
    #[arg(long, env = "RINGMESH_NAME")]
    pub name: Option<String>,
    /// The SIP domain the farm serves (the digest realm).
    #[arg(long, env = "RINGMESH_DOMAIN")]
    pub domain: Option<String>,
    /// Where to listen for SIP: udp:HOST:PORT or tcp:HOST:PORT (repeatable).
    #[arg(long, env = "RINGMESH_SIP", value_delimiter = ',')]
    pub sip: Vec<String>,
    /// Address to put in Via, Record-Route and Contact when it differs from
    /// the bound one (e.g. the load balancer's).
    #[arg(long, env = "RINGMESH_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where to listen for overlay links (QUIC, HOST:PORT). With it the
    /// node joins a farm and stores bindings on the ring; without it the
    /// node is a farm of one with node-local bindings.
    #[arg(long, env = "RINGMESH_OVERLAY")]
    pub overlay: Option<String>,
    /// Overlay address (HOST:PORT) of another supernode to join through
    /// (repeatable). A host name is resolved again every 5 s, so a peer not
    /// yet in DNS is found once it is and a rescheduled one at its new
    /// address; addresses that are this node's own are skipped (a
    /// StatefulSet can give every pod the same list).
    #[arg(long, env = "RINGMESH_SEED", value_delimiter = ',')]
    pub seed: Vec<String>,
    /// Host (name or IP address) the other supernodes reach this node's
    /// overlay port at, when it differs from --advertise (which is what
    /// SIP peers see, e.g. a load balancer's address). Default: the
    /// --advertise host, else the --overlay one.
    #[arg(long, env = "RINGMESH_OVERLAY_ADVERTISE")]
    pub overlay_advertise: Option<String>,
    /// Found a new ring if no seed accepts within this many seconds (one
    /// node of a farm may do this; without it a node only ever joins).
    #[arg(long, env = "RINGMESH_BOOTSTRAP_AFTER")]
    pub bootstrap_after: Option<u64>,
    /// Replicas per binding (k); a write needs a majority of min(k, N).
    #[arg(long, env = "RINGMESH_REPLICAS")]
    pub replicas: Option<usize>,
    /// This node's certificate (PEM, from the farm CA; default DATA/node.crt).
    #[arg(long, env = "RINGMESH_CERT")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM; default DATA/node.key).
    #[arg(long, env = "RINGMESH_KEY")]
    pub key: Option<PathBuf>,
    /// The farm CA bundle (PEM; default DATA/ca.crt).
    #[arg(long, env = "RINGMESH_CA")]
    pub ca: Option<PathBuf>,
    /// Revocation list of the farm CA (PEM; default DATA/crl.pem if present).
    #[arg(long, env = "RINGMESH_CRL")]
    pub crl: Option<PathBuf>,
    /// The farm secret keying digest nonces and Record-Route tokens, the
    /// same on every node (hex file; default DATA/farm.secret, created if
    /// missing for a farm of one).
    #[arg(long, env = "RINGMESH_FARM_SECRET")]
    pub farm_secret: Option<PathBuf>,
    /// Data directory (state, keys).
    #[arg(long, env = "RINGMESH_DATA")]
    pub data: Option<PathBuf>,
    /// digest (default) or none.
    #[arg(long, env = "RINGMESH_AUTH")]
    pub auth: Option<AuthMode>,
    /// Subscriber list (TOML) used by digest auth (a lab or a farm of one;
    /// a farm uses --provisioning).
    #[arg(long, env = "RINGMESH_SUBSCRIBERS")]
    pub subscribers: Option<PathBuf>,
    /// The provisioning service (HOST:PORT): subscribers are fetched on
    /// first use and cached, invalidated by its Watch stream.
    #[arg(long, env = "RINGMESH_PROVISIONING")]
    pub provisioning: Option<String>,
    /// Most subscribers cached from provisioning.
    #[arg(long, env = "RINGMESH_SUBSCRIBER_CACHE")]
    pub subscriber_cache: Option<usize>,
    /// The enrollment service (HOST:PORT): a node without an identity in
    /// its data directory enrolls there (with --bootstrap-token-file), and
    /// the farm's revocations are fetched from it.
    #[arg(long, env = "RINGMESH_ENROLLMENT")]
    pub enrollment: Option<String>,
    /// File holding the bootstrap token for enrollment.
    #[arg(long, env = "RINGMESH_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// etcd endpoints (URL, repeatable): the node keeps a membership key
    /// under a lease there and finds seeds in it.
    #[arg(long, env = "RINGMESH_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Where to serve the admin gRPC API (HOST:PORT).
    #[arg(long, env = "RINGMESH_ADMIN")]
    pub admin: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz (HOST:PORT).
    #[arg(long, env = "RINGMESH_METRICS")]
    pub metrics: Option<String>,
    /// Shortest registration accepted, seconds (shorter gets 423).
    #[arg(long, env = "RINGMESH_MIN_EXPIRES")]
    pub min_expires: Option<u32>,
    /// Longest registration granted, seconds (longer is clamped).
    #[arg(long, env = "RINGMESH_MAX_EXPIRES")]
    pub max_expires: Option<u32>,
    /// Registration lifetime when the REGISTER names none, seconds.
    #[arg(long, env = "RINGMESH_DEFAULT_EXPIRES")]
    pub default_expires: Option<u32>,
    /// Digest algorithms offered, in order: md5, sha-256 (repeatable).
    /// Default md5 only: deployed UAs break on more (sipp answers only the
    /// first challenge; baresip 1.0/libre fails the whole registration
    /// when one challenge names an algorithm it lacks). Offer sha-256
    /// (first) once every UA of the farm supports RFC 8760.
    #[arg(long, env = "RINGMESH_DIGEST_ALGORITHMS", value_delimiter = ',')]
    pub digest_algorithms: Vec<String>,
    /// How long a digest nonce stays fresh, seconds.
    #[arg(long, env = "RINGMESH_NONCE_LIFETIME")]
    pub nonce_lifetime: Option<u64>,
    /// RFC 3261 timer T1 in milliseconds.
    #[arg(long, env = "RINGMESH_T1_MS")]
    pub t1_ms: Option<u64>,
    /// RFC 3261 timer T2 in milliseconds.
    #[arg(long, env = "RINGMESH_T2_MS")]
    pub t2_ms: Option<u64>,
    /// RFC 3261 timer T4 in milliseconds.
    #[arg(long, env = "RINGMESH_T4_MS")]
    pub t4_ms: Option<u64>,
    /// A TCP peer that sends nothing for this long, or stalls mid-message,
    /// is disconnected (seconds).
    #[arg(long, env = "RINGMESH_TCP_IDLE_TIMEOUT")]
    pub tcp_idle_timeout: Option<u64>,
    /// A TCP peer that starts a message and does not finish it within this
    /// many seconds is disconnected.
    #[arg(long, env = "RINGMESH_TCP_MESSAGE_TIMEOUT")]
    pub tcp_message_timeout: Option<u64>,
    /// Most simultaneous TCP connections.
    #[arg(long, env = "RINGMESH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Overload control: new requests are answered 503 with Retry-After by
    /// the transport readers once this many messages wait for the SIP core.
    #[arg(long, env = "RINGMESH_OVERLOAD_QUEUE_DEPTH")]
    pub overload_queue_depth: Option<usize>,
    /// Overload control: new requests are shed while messages wait longer
    /// than this for the SIP core (smoothed, milliseconds).
    #[arg(long, env = "RINGMESH_OVERLOAD_QUEUE_DELAY_MS")]
    pub overload_queue_delay_ms: Option<u64>,
    /// Overload control: new requests are shed while the SIP core holds
    /// this many transactions (those only absorbing retransmissions in
    /// Timer J not counted).
    #[arg(long, env = "RINGMESH_OVERLOAD_MAX_TRANSACTIONS")]
    pub overload_max_transactions: Option<usize>,
    /// Overload control: new requests are shed while this many requests
    /// wait for the location service (the ring, in a farm) or the
    /// subscriber directory.
    #[arg(long, env = "RINGMESH_OVERLOAD_MAX_PENDING")]
    pub overload_max_pending: Option<usize>,
    /// Seconds a client turned away by overload control (or an
    /// unavailable store) is asked to wait: the Retry-After of the 503.
    #[arg(long, env = "RINGMESH_OVERLOAD_RETRY_AFTER")]
    pub overload_retry_after: Option<u32>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or ringmesh=debug.
    #[arg(long, env = "RINGMESH_LOG")]
    pub log: Option<String>,
}

/// The same keys in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    name: Option<String>,
    domain: Option<String>,
    sip: Option<Vec<String>>,
    advertise: Option<String>,
    overlay: Option<String>,
    seed: Option<Vec<String>>,
    overlay_advertise: Option<String>,
    bootstrap_after: Option<u64>,
    replicas: Option<usize>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    farm_secret: Option<PathBuf>,
    data: Option<PathBuf>,
    auth: Option<AuthMode>,
    subscribers: Option<PathBuf>,
    provisioning: Option<String>,
    subscriber_cache: Option<usize>,
    enrollment: Option<String>,
    bootstrap_token_file: Option<PathBuf>,
    etcd: Option<Vec<String>>,
    admin: Option<String>,
    metrics: Option<String>,
    min_expires: Option<u32>,
    max_expires: Option<u32>,
    default_expires: Option<u32>,
    digest_algorithms: Option<Vec<String>>,
    nonce_lifetime: Option<u64>,
    t1_ms: Option<u64>,
    t2_ms: Option<u64>,
    t4_ms: Option<u64>,
    tcp_idle_timeout: Option<u64>,
    tcp_message_timeout: Option<u64>,
    max_connections: Option<usize>,
    overload_queue_depth: Option<usize>,
    overload_queue_delay_ms: Option<u64>,
    overload_max_transactions: Option<usize>,
    overload_max_pending: Option<usize>,
    overload_retry_after: Option<u32>,
    log: Option<String>,
}

/// The validated configuration of one supernode.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub domain: String,
    pub listen: Vec<Listen>,
    /// Host put in Via/Record-Route/Contact; `None` = the bound address.
    pub advertise: Option<String>,
    /// Farm mode: the overlay endpoint and how to find the ring.
    pub overlay: Option<OverlayConfig>,
    pub farm_secret: PathBuf,
    pub data: PathBuf,
    pub auth: AuthMode,
    pub subscribers: Option<PathBuf>,
    pub provisioning: Option<String>,
    pub subscriber_cache: usize,
    pub enrollment: Option<String>,
    pub bootstrap_token_file: Option<PathBuf>,
    pub etcd: Vec<String>,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub digest_algorithms: Vec<ringmesh_sip::digest::Algorithm>,
    pub nonce_lifetime: Duration,
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub tcp_idle_timeout: Duration,
    pub tcp_message_timeout: Duration,
    pub max_connections: usize,
    pub overload: OverloadConfig,
    pub log: String,
}

/// When transport readers shed new requests (503 + Retry-After) instead
/// of queueing them for the SIP core: see `transport.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Messages waiting for the core.
    pub queue_depth: usize,
    /// Smoothed wait of a message between a reader and the core.
    pub queue_delay: Duration,
    /// Transactions the core holds (Timer J lingerers not counted).
    pub max_transactions: usize,
    /// Requests waiting for the location service or the directory.
    pub max_pending: usize,
    /// Retry-After of the 503, seconds.
    pub retry_after: u32,
}

/// Capacity of the channel from the transports to the SIP core: the
/// overload queue depth can be set up to it.
pub const INBOUND_QUEUE: usize = 8192;

/// A host name or an IP address (IPv6 with or without brackets).
fn is_host(a: &str) -> bool {
    let ip = a.trim_start_matches('[').trim_end_matches(']');
    !a.is_empty()
        && (ip.parse::<IpAddr>().is_ok() || ringmesh_sip::Host::parse(a.as_bytes()).is_ok())
}

/// `host:port` with a non-empty host and a port.
fn host_port(s: &str) -> Option<()> {
    let (h, p) = s.rsplit_once(':')?;
    (!h.is_empty() && p.parse::<u16>().is_ok()).then_some(())
}

/// Settings of a node that is part of a farm.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    pub listen: SocketAddr,
    /// HOST:PORT, a host name or an IP address.
    pub seeds: Vec<String>,
    /// The host announced to the other supernodes, when set.
    pub advertise: Option<String>,
    pub bootstrap_after: Option<Duration>,
    pub replicas: usize,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crl: PathBuf,
}

/// A configuration error that names the key to fix.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message} (set by --{key}, {env} or `{key}` in the config file)")]
pub struct ConfigError {
    pub key: &'static str,
    pub env: String,
    pub message: String,
}

/// The value given, else `default`, which must lie in `range`.
fn in_range<T, R>(
    key: &'static str,
    value: Option<T>,
    default: T,
    range: R,
) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display,
    R: std::ops::RangeBounds<T> + std::fmt::Debug,
{
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(err(key, format!("{v} is outside {range:?}")))
    }
}

fn err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        env: format!("RINGMESH_{}", key.to_ascii_uppercase().replace('-', "_")),
        message: message.into(),
    }
}

impl SupernodeArgs {
    /// Merges flags/environment over the file and validates the result.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| err("config", format!("{}: {}", path.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        let domain = self
            .domain
            .or(file.domain)
            .unwrap_or_else(|| "ringmesh.test".into());
        if domain.is_empty() || ringmesh_sip::Host::parse(domain.as_bytes()).is_err() {
            return Err(err(
                "domain",
                format!("'{domain}' is not a valid host name"),
            ));
        }
        let sip = if self.sip.is_empty() {
            file.sip.unwrap_or_default()
        } else {
            self.sip
        };
        let sip = if sip.is_empty() {
            vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()]
        } else {
            sip
        };
        let listen = sip
            .iter()
            .map(|s| s.parse::<Listen>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err("sip", m))?;
        let advertise = self.advertise.or(file.advertise);
        let overlay_advertise = self.overlay_advertise.or(file.overlay_advertise);
        for (key, a) in [
            ("advertise", &advertise),
            ("overlay-advertise", &overlay_advertise),
        ] {
            if let Some(a) = a
                && !is_host(a)
            {
                return Err(err(key, format!("'{a}' is not a host name or IP address")));
            }
        }
        let name = self.name.or(file.name).unwrap_or_else(|| "sn0".into());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(err(
                "name",
                format!("'{name}' must be letters, digits, '-', '_' or '.'"),
            ));
        }
        let auth = self.auth.or(file.auth).unwrap_or(AuthMode::Digest);
        let subscribers = self.subscribers.or(file.subscribers);
        let provisioning = self.provisioning.or(file.provisioning);
        if auth == AuthMode::Digest && subscribers.is_none() && provisioning.is_none() {
            return Err(err(
                "subscribers",
                "digest auth needs a subscriber list or --provisioning (or use --auth none)",
            ));
        }
        if let Some(p) = &provisioning {
            host_port(p).ok_or_else(|| err("provisioning", format!("'{p}' is not HOST:PORT")))?;
        }
        let subscriber_cache = self
            .subscriber_cache
            .or(file.subscriber_cache)
            .unwrap_or(100_000);
        if subscriber_cache == 0 {
            return Err(err("subscriber-cache", "must be positive"));
        }
        let enrollment = self.enrollment.or(file.enrollment);
        if let Some(e) = &enrollment {
            host_port(e).ok_or_else(|| err("enrollment", format!("'{e}' is not HOST:PORT")))?;
        }
        let bootstrap_token_file = self.bootstrap_token_file.or(file.bootstrap_token_file);
        let etcd = if self.etcd.is_empty() {
            file.etcd.unwrap_or_default()
        } else {
            self.etcd
        };
        for e in &etcd {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(err(
                    "etcd",
                    format!("'{e}' is not an http:// or https:// URL"),
                ));
            }
        }
        let admin = match self.admin.or(file.admin) {
            Some(a) => Some(a.parse().map_err(|_| {
                err(
                    "admin",
                    format!("'{a}' is not HOST:PORT with an IP address"),
                )
            })?),
            None => None,
        };
        let metrics = match self.metrics.or(file.metrics) {
            Some(m) => Some(m.parse().map_err(|_| {
                err(
                    "metrics",
                    format!("'{m}' is not HOST:PORT with an IP address"),
                )
            })?),
            None => None,
        };
        let min_expires = self.min_expires.or(file.min_expires).unwrap_or(60);
        let max_expires = self.max_expires.or(file.max_expires).unwrap_or(7200);
        let default_expires = self
            .default_expires
            .or(file.default_expires)
            .unwrap_or(3600);
        if min_expires == 0 {
            return Err(err("min-expires", "must be at least 1 second"));
        }
        if max_expires < min_expires {
            return Err(err(
                "max-expires",
                format!("{max_expires} is below min-expires {min_expires}"),
            ));
        }
        if !(min_expires..=max_expires).contains(&default_expires) {
            return Err(err(
                "default-expires",
                format!("{default_expires} is outside min-expires..max-expires"),
            ));
        }
        let ms =
            |key: &'static str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
                match v.unwrap_or(default) {
                    0 => Err(err(key, "must be positive")),
                    n if n > 600_000 => Err(err(key, "is absurdly large (over 10 minutes)")),
                    n => Ok(Duration::from_millis(n)),
                }
            };
        let t1 = ms("t1-ms", self.t1_ms.or(file.t1_ms), 500)?;
        let t2 = ms("t2-ms", self.t2_ms.or(file.t2_ms), 4000)?;
        let t4 = ms("t4-ms", self.t4_ms.or(file.t4_ms), 5000)?;
        if t2 < t1 {
            return Err(err("t2-ms", "must not be below t1-ms"));
        }
        let secs = |key: &'static str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
            0 => Err(err(key, "must be positive")),
            n => Ok(Duration::from_secs(n)),
        };
        let algs = if self.digest_algorithms.is_empty() {
            file.digest_algorithms.unwrap_or_else(|| vec!["md5".into()])
        } else {
            self.digest_algorithms
        };
        let mut digest_algorithms = Vec::new();
        for a in &algs {
            match ringmesh_sip::digest::Algorithm::parse(a.as_bytes()) {
                Some(alg) if !digest_algorithms.contains(&alg) => digest_algorithms.push(alg),
                Some(_) => {}
                None => {
                    return Err(err(
                        "digest-algorithms",
                        format!("unknown algorithm '{a}' (use md5 or sha-256)"),
                    ));
                }
            }
        }
        if digest_algorithms.is_empty() {
            return Err(err("digest-algorithms", "needs at least one algorithm"));
        }
        let nonce_lifetime = secs(
            "nonce-lifetime",
            self.nonce_lifetime.or(file.nonce_lifetime),
            300,
        )?;
        // Connections carry registrations: keep them as long as a typical
        // registration unless the peer goes silent for that long.
        let tcp_idle_timeout = secs(
            "tcp-idle-timeout",
            self.tcp_idle_timeout.or(file.tcp_idle_timeout),
            900,
        )?;
        let tcp_message_timeout = secs(
            "tcp-message-timeout",
            self.tcp_message_timeout.or(file.tcp_message_timeout),
            10,
        )?;
        let max_connections = self
            .max_connections
            .or(file.max_connections)
            .unwrap_or(100_000);
        if max_connections == 0 {
            return Err(err("max-connections", "must be positive"));
        }
        let queue_depth = in_range(
            "overload-queue-depth",
            self.overload_queue_depth.or(file.overload_queue_depth),
            1024,
            16..=INBOUND_QUEUE,
        )?;
        let queue_delay_ms = in_range(
            "overload-queue-delay-ms",
            self.overload_queue_delay_ms
                .or(file.overload_queue_delay_ms),
            20,
            1..=10_000,
        )?;
        let max_transactions = in_range(
            "overload-max-transactions",
            self.overload_max_transactions
                .or(file.overload_max_transactions),
            1_000_000,
            100..,
        )?;
        let max_pending = in_range(
            "overload-max-pending",
            self.overload_max_pending.or(file.overload_max_pending),
            500,
            10..,
        )?;
        let retry_after = in_range(
            "overload-retry-after",
            self.overload_retry_after.or(file.overload_retry_after),
            5,
            1..=3600,
        )?;
        let overload = OverloadConfig {
            queue_depth,
            queue_delay: Duration::from_millis(queue_delay_ms),
            max_transactions,
            max_pending,
            retry_after,
        };
        let data = self
            .data
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from(format!("./ringmesh-data/{name}")));
        let seeds = if self.seed.is_empty() {
            file.seed.unwrap_or_default()
        } else {
            self.seed
        };
        if let Some(s) = seeds.iter().find(|s| {
            s.parse::<SocketAddr>().is_err()
                && !s
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| is_host(h) && p.parse::<u16>().is_ok_and(|p| p > 0))
        }) {
            return Err(err(
                "seed",
                format!("'{s}' is not HOST:PORT (a host name or IP address, and a port)"),
            ));
        }
        let replicas = self.replicas.or(file.replicas).unwrap_or(3);
        if !(1..=7).contains(&replicas) {
            return Err(err("replicas", format!("{replicas} is outside 1..=7")));
        }
        let bootstrap_after = self
            .bootstrap_after
            .or(file.bootstrap_after)
            .map(Duration::from_secs);
        let overlay = match self.overlay.or(file.overlay) {
            Some(o) => Some(OverlayConfig {
                listen: o.parse().map_err(|_| {
                    err(
                        "overlay",
                        format!("'{o}' is not HOST:PORT with an IP address"),
                    )
                })?,
                seeds,
                advertise: overlay_advertise,
                bootstrap_after,
                replicas,
                cert: self
                    .cert
                    .or(file.cert)
                    .unwrap_or_else(|| data.join("node.crt")),
                key: self
                    .key
                    .or(file.key)
                    .unwrap_or_else(|| data.join("node.key")),
                ca: self.ca.or(file.ca).unwrap_or_else(|| data.join("ca.crt")),
                crl: self
                    .crl
                    .or(file.crl)
                    .unwrap_or_else(|| data.join("crl.pem")),
            }),
            None if !seeds.is_empty() => {
                return Err(err(
                    "seed",
                    "seeds need --overlay (the address to join from)",
                ));
            }
            None if overlay_advertise.is_some() => {
                return Err(err(
                    "overlay-advertise",
                    "it needs --overlay (the address it stands for)",
                ));
            }
            None => None,
        };
        let farm_secret = self
            .farm_secret
            .or(file.farm_secret)
            .unwrap_or_else(|| data.join("farm.secret"));
        Ok(Config {
            name,
            domain: domain.to_ascii_lowercase(),
            listen,
            advertise,
            overlay,
            farm_secret,
            data,
            auth,
            subscribers,
            provisioning,
            subscriber_cache,
            enrollment,
            bootstrap_token_file,
            etcd,
            admin,
            metrics,
            min_expires,
            max_expires,
            default_expires,
            digest_algorithms,
            nonce_lifetime,
            t1,
            t2,
            t4,
            tcp_idle_timeout,
            tcp_message_timeout,
            max_connections,
            overload,
            log: self.log.or(file.log).unwrap_or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SupernodeArgs {
        SupernodeArgs {
            auth: Some(AuthMode::None),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_resolve() {
        let c = args().resolve().unwrap();
        assert_eq!(c.domain, "ringmesh.test");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.t1, Duration::from_millis(500));
    }

    #[test]
    fn listen_forms() {
        let l: Listen = "udp:[::1]:5070".parse().unwrap();
        assert_eq!(l.addr, "[::1]:5070".parse().unwrap());
        assert!(
            "sctp:127.0.0.1:5060"
                .parse::<Listen>()
                .unwrap_err()
                .contains("sctp")
        );
        assert!("udp:localhost".parse::<Listen>().is_err());
    }

    #[test]
    fn file_keys_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "domain = \"file.example\"\nmin-expires = 30\nname = \"fromfile\"\n",
        )
        .unwrap();
        let c = SupernodeArgs {
            config: Some(path.clone()),
            name: Some("flag".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.domain, "file.example");
        assert_eq!(c.min_expires, 30);
        assert_eq!(c.name, "flag", "a flag beats the file");

        std::fs::write(&path, "domian = \"typo.example\"\n").unwrap();
        let e = SupernodeArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("domian"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = SupernodeArgs {
            sip: vec!["tcp:nowhere".into()],
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "sip");
        let e = SupernodeArgs {
            min_expires: Some(100),
            max_expires: Some(50),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "max-expires");
        assert!(e.to_string().contains("RINGMESH_MAX_EXPIRES"));
        let e = SupernodeArgs {
            auth: Some(AuthMode::Digest),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "subscribers");
    }

    #[test]
    fn seeds_by_name_and_the_overlay_advertise_host() {
        let c = SupernodeArgs {
            overlay: Some("0.0.0.0:5090".into()),
            seed: vec![
                "ringmesh-supernode-0.ringmesh-overlay.sip.svc.cluster.local:5090".into(),
                "10.0.0.7:5090".into(),
                "[fd00::7]:5090".into(),
            ],
            overlay_advertise: Some("10.0.0.5".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        let ov = c.overlay.unwrap();
        assert_eq!(ov.seeds.len(), 3);
        assert_eq!(ov.advertise.as_deref(), Some("10.0.0.5"));
        for (a, key) in [
            (
                SupernodeArgs {
                    overlay: Some("0.0.0.0:5090".into()),
                    seed: vec!["peer.example".into()],
                    ..args()
                },
                "seed",
            ),
            (
                SupernodeArgs {
                    overlay: Some("0.0.0.0:5090".into()),
                    seed: vec!["bad host:5090".into()],
                    ..args()
                },
                "seed",
            ),
            (
                SupernodeArgs {
                    overlay: Some("0.0.0.0:5090".into()),
                    overlay_advertise: Some("no spaces".into()),
                    ..args()
                },
                "overlay-advertise",
            ),
            (
                SupernodeArgs {
                    overlay_advertise: Some("10.0.0.5".into()),
                    ..args()
                },
                "overlay-advertise",
            ),
        ] {
            assert_eq!(a.resolve().unwrap_err().key, key);
        }
    }

    #[test]
    fn overload_keys() {
        let c = args().resolve().unwrap();
        assert_eq!(
            c.overload,
            OverloadConfig {
                queue_depth: 1024,
                queue_delay: Duration::from_millis(20),
                max_transactions: 1_000_000,
                max_pending: 500,
                retry_after: 5,
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "overload-queue-depth = 512\noverload-queue-delay-ms = 5\n\
             overload-max-transactions = 20000\noverload-retry-after = 30\n\
             overload-max-pending = 300\n",
        )
        .unwrap();
        let c = SupernodeArgs {
            config: Some(path),
            overload_retry_after: Some(7),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.overload.queue_depth, 512);
        assert_eq!(c.overload.queue_delay, Duration::from_millis(5));
        assert_eq!(c.overload.max_transactions, 20_000);
        assert_eq!(c.overload.max_pending, 300);
        assert_eq!(c.overload.retry_after, 7, "a flag beats the file");
        for (a, key) in [
            (
                SupernodeArgs {
                    overload_queue_depth: Some(8),
                    ..args()
                },
                "overload-queue-depth",
            ),
            (
                SupernodeArgs {
                    overload_queue_depth: Some(INBOUND_QUEUE + 1),
                    ..args()
                },
                "overload-queue-depth",
            ),
            (
                SupernodeArgs {
                    overload_queue_delay_ms: Some(0),
                    ..args()
                },
                "overload-queue-delay-ms",
            ),
            (
                SupernodeArgs {
                    overload_max_transactions: Some(10),
                    ..args()
                },
                "overload-max-transactions",
            ),
            (
                SupernodeArgs {
                    overload_retry_after: Some(0),
                    ..args()
                },
                "overload-retry-after",
            ),
            (
                SupernodeArgs {
                    overload_max_pending: Some(1),
                    ..args()
                },
                "overload-max-pending",
            ),
        ] {
            let e = a.resolve().unwrap_err();
            assert_eq!(e.key, key);
            assert!(e.to_string().contains("RINGMESH_OVERLOAD_"), "{e}");
        }
    }
}
