//! Typed configuration, resolved once at the edge, before any socket is
//! bound.
//!
//! [`SupernodeArgs`] declares every setting once: a flag `--min-expires`,
//! the environment variable `RINGMESH_MIN_EXPIRES` and the key
//! `min-expires` of the `--config` file, with one default (shown by
//! `--help`). [`ringmesh_config::merge`] puts them together (a flag beats the
//! environment, which beats the file, which beats the default; unknown file
//! keys are errors); [`SupernodeArgs::resolve`] validates the result into a
//! [`Config`] and names the key at fault.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use ringmesh_config::ConfigError;
use ringmesh_config::{ServiceArgs, err, in_range};
use serde::{Deserialize, Serialize};

/// How leaves authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Digest authentication against the subscriber list (realm = domain).
    Digest,
    /// An open registrar and proxy for any user of the domain (benchmarks).
    None,
}

pub use ringmesh_proxy::Transport;
use ringmesh_proxy::TrustTable;
use ringmesh_proxy::trust::Element;

/// `TRANSPORT:HOST:PORT`, the transport one of udp, tcp, tls, ws, wss
/// (IPv6 as `[::1]:5060`).
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
            .ok_or_else(|| format!("'{s}' is not TRANSPORT:HOST:PORT (udp:0.0.0.0:5060)"))?;
        let transport = Transport::from_token(t.as_bytes()).ok_or_else(|| {
            format!("unknown transport '{t}' in '{s}' (use udp, tcp, tls, ws or wss)")
        })?;
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

/// The longest registration a supernode grants (`--max-expires`), seconds.
pub const MAX_REGISTRATION_S: u32 = 7 * 86_400;

/// Transactions the SIP core makes room for at start by default: a few
/// seconds of a busy node's traffic, so its tables do not grow, all at
/// once, in the middle of it.
pub const PRESIZED_TRANSACTIONS: usize = 1 << 18;

/// The `ringmesh supernode` settings: each is a flag, `RINGMESH_<KEY>` in
/// the environment, and a key of the `--config` file (see
/// [`ringmesh_config`]).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SupernodeArgs {
    /// TOML file with the same keys as the flags (unknown keys are errors).
    #[arg(long, env = "RINGMESH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This supernode's name (logs, metrics, admin).
    #[arg(long, env = "RINGMESH_NAME", default_value = "sn0")]
    pub name: String,
    /// The SIP domain the farm serves (the digest realm).
    #[arg(long, env = "RINGMESH_DOMAIN", default_value = "ringmesh.test")]
    pub domain: String,
    /// Where to listen for SIP: TRANSPORT:HOST:PORT with udp, tcp, tls
    /// (RFC 3261 §26), ws or wss (RFC 7118) (repeatable; port 0: one the
    /// kernel picks, the same for TCP as for UDP). tls and wss need
    /// --tls-cert.
    #[arg(long, env = "RINGMESH_SIP", value_delimiter = ',',
          default_values_t = ["udp:127.0.0.1:5060".to_string(), "tcp:127.0.0.1:5060".to_string()])]
    pub sip: Vec<String>,
    /// Address to put in Via, Record-Route and Contact when it differs from
    /// the bound one (e.g. the load balancer's).
    #[arg(long, env = "RINGMESH_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Where to listen for overlay links (QUIC, HOST:PORT). With it the
    /// node joins a farm and stores bindings on the ring; without it the
    /// node is a farm of one with node-local bindings.
    #[arg(long, env = "RINGMESH_OVERLAY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
    /// Overlay address (HOST:PORT) of another supernode to join through
    /// (repeatable). A host name is resolved again every 5 s, so a peer not
    /// yet in DNS is found once it is and a rescheduled one at its new
    /// address; addresses that are this node's own are skipped (a
    /// StatefulSet can give every pod the same list).
    #[arg(long, env = "RINGMESH_SEED", value_delimiter = ',')]
    #[serde(default)]
    pub seed: Vec<String>,
    /// Host (name or IP address) the other supernodes reach this node's
    /// overlay port at, when it differs from --advertise (which is what
    /// SIP peers see, e.g. a load balancer's address). Default: the
    /// --advertise host, else the --overlay one.
    #[arg(long, env = "RINGMESH_OVERLAY_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_advertise: Option<String>,
    /// Found a new ring if no seed accepts within this many seconds (one
    /// node of a farm may do this; without it a node only ever joins). A
    /// node that restored bindings from its data directory (it was in a
    /// ring) waits at least 30 s.
    #[arg(long, env = "RINGMESH_BOOTSTRAP_AFTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_after: Option<u64>,
    /// With --bootstrap-after: only the node whose --name ends in
    /// `-ORDINAL` (a StatefulSet pod's ordinal, e.g. 0) may found a ring;
    /// on every other node --bootstrap-after is ignored and it only ever
    /// joins. One pod template then serves every replica.
    #[arg(long, env = "RINGMESH_BOOTSTRAP_ORDINAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_ordinal: Option<u32>,
    /// Replicas per binding (k); a write needs a majority of min(k, N).
    #[arg(long, env = "RINGMESH_REPLICAS", default_value_t = 3)]
    pub replicas: usize,
    /// This node's certificate (PEM, from the farm CA; default DATA/node.crt).
    #[arg(long, env = "RINGMESH_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM; default DATA/node.key).
    #[arg(long, env = "RINGMESH_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The farm CA bundle (PEM; default DATA/ca.crt).
    #[arg(long, env = "RINGMESH_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Revocation list of the farm CA (PEM; default DATA/crl.pem if present).
    #[arg(long, env = "RINGMESH_CRL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
    /// The farm secret keying digest nonces and Record-Route tokens, the
    /// same on every node (hex file; default DATA/farm.secret, created if
    /// missing for a farm of one).
    #[arg(long, env = "RINGMESH_FARM_SECRET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub farm_secret: Option<PathBuf>,
    /// Data directory (state, keys). Default: $XDG_DATA_HOME/ringmesh/NAME,
    /// else $HOME/.local/share/ringmesh/NAME (never the working directory).
    #[arg(long, env = "RINGMESH_DATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// digest, or none for an open registrar and proxy (benchmarks).
    #[arg(long, env = "RINGMESH_AUTH", value_enum, default_value = "digest")]
    pub auth: AuthMode,
    /// Subscriber list (TOML) used by digest auth (a lab or a farm of one;
    /// a farm uses --provisioning).
    #[arg(long, env = "RINGMESH_SUBSCRIBERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<PathBuf>,
    /// The provisioning service (HOST:PORT): subscribers are fetched on
    /// first use and cached, invalidated by its Watch stream. Reached over
    /// mutual TLS with this node's certificate (--cert, --key, --ca);
    /// http://HOST:PORT for a provisioning service run with --plaintext.
    #[arg(long, env = "RINGMESH_PROVISIONING")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<String>,
    /// Most subscribers cached from provisioning.
    #[arg(long, env = "RINGMESH_SUBSCRIBER_CACHE", default_value_t = 100_000)]
    pub subscriber_cache: usize,
    /// The enrollment service (HOST:PORT): a node without an identity in
    /// its data directory enrolls there (with --bootstrap-token-file), and
    /// the farm's revocations are fetched from it.
    #[arg(long, env = "RINGMESH_ENROLLMENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<String>,
    /// File holding the bootstrap token for enrollment.
    #[arg(long, env = "RINGMESH_BOOTSTRAP_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Where to serve the admin gRPC API (HOST:PORT). A loopback address
    /// may serve plaintext; any other needs --admin-tls true.
    #[arg(long, env = "RINGMESH_ADMIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Serve the admin API over mutual TLS with this node's certificate
    /// (--cert, --key, --ca): clients need an operator certificate (reads)
    /// or an admin one (drain, bans, SIP traces) from the farm CA.
    #[arg(long, env = "RINGMESH_ADMIN_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub admin_tls: bool,
    /// Shortest registration accepted, seconds (shorter gets 423).
    #[arg(long, env = "RINGMESH_MIN_EXPIRES", default_value_t = 60)]
    pub min_expires: u32,
    /// Longest registration granted, seconds (longer is clamped).
    #[arg(long, env = "RINGMESH_MAX_EXPIRES", default_value_t = 7200)]
    pub max_expires: u32,
    /// Registration lifetime when the REGISTER names none, seconds.
    #[arg(long, env = "RINGMESH_DEFAULT_EXPIRES", default_value_t = 3600)]
    pub default_expires: u32,
    /// Most bindings one address-of-record may have (a REGISTER that would
    /// exceed it gets 403): every call to it forks to at most these.
    #[arg(long, env = "RINGMESH_MAX_CONTACTS", default_value_t = 10)]
    pub max_contacts: usize,
    /// Seconds between the keep-alives a phone using RFC 5626 outbound
    /// should send on its flows: the Flow-Timer of its registration's
    /// 200 OK (0: none sent).
    #[arg(long, env = "RINGMESH_FLOW_TIMER", default_value_t = 120)]
    pub flow_timer: u32,
    /// A certificate of the tls and wss listeners: a directory holding
    /// tls.crt (the chain, leaf first) and tls.key, as a Kubernetes TLS
    /// Secret is mounted (repeatable: chosen by the name a phone asks for,
    /// SNI; the first for phones that ask none). Changed files are loaded
    /// within 5 s, without a restart.
    #[arg(long, env = "RINGMESH_TLS_CERT", value_delimiter = ',')]
    #[serde(default)]
    pub tls_cert: Vec<PathBuf>,
    /// CA certificates (PEM) that client certificates of TLS phones and
    /// peers must chain to. Client certificates are asked for on tls
    /// listeners (never on wss: browsers would prompt for one), never
    /// required; one that does not chain fails the handshake.
    #[arg(long, env = "RINGMESH_TLS_CLIENT_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// CA certificates (PEM) of peer farms: the TLS certificates of their
    /// servers (this node connects to them for the domains they serve)
    /// and of their supernodes (when they connect to this one's tls
    /// listener) must chain to these or to --tls-client-ca. With either,
    /// the node opens TLS to other domains' servers, presenting its first
    /// --tls-cert. Needs a tls listener: peers answer and call back there.
    #[arg(long, env = "RINGMESH_PEER_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ca: Option<PathBuf>,
    /// An Origin allowed to open a SIP WebSocket, e.g.
    /// `https://phone.example.com` (repeatable). None listed: any origin.
    #[arg(long, env = "RINGMESH_WS_ORIGIN", value_delimiter = ',')]
    #[serde(default)]
    pub ws_origin: Vec<String>,
    /// Accept loopback contact addresses (a lab farm on one machine, as
    /// `ringmesh dev` runs; never on a real network). Link-local,
    /// multicast, unspecified and the farm's own SIP addresses are always
    /// refused.
    #[arg(long, env = "RINGMESH_ALLOW_LOOPBACK_CONTACTS", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub allow_loopback_contacts: bool,
    /// Most branches one request forks to (the callee's preferred
    /// bindings: highest q, then the most recent).
    #[arg(long, env = "RINGMESH_MAX_BRANCHES", default_value_t = 10)]
    pub max_branches: usize,
    /// Where emergency requests go (urn:service:sos…, or an
    /// --emergency-numbers dial string): udp:IP:PORT or tcp:IP:PORT of the
    /// emergency services' gateway. They are never challenged, barred or
    /// shed; without a route they get 503 at once.
    #[arg(long, env = "RINGMESH_EMERGENCY_ROUTE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emergency_route: Option<String>,
    /// Brute-force protection: wrong digest answers from one source for one
    /// identity before the pair is banned (0: no pair bans; with
    /// --guard-source-failures 0 too, the guard is off).
    #[arg(long, env = "RINGMESH_GUARD_PAIR_FAILURES", default_value_t = 5)]
    pub guard_pair_failures: u32,
    /// Brute-force protection: wrong digest answers from one source, for
    /// any identity, before the source is banned (0: no source bans).
    #[arg(long, env = "RINGMESH_GUARD_SOURCE_FAILURES", default_value_t = 20)]
    pub guard_source_failures: u32,
    /// Brute-force protection: how long a failure counts, seconds.
    #[arg(long, env = "RINGMESH_GUARD_WINDOW", default_value_t = 600)]
    pub guard_window: u64,
    /// Brute-force protection: how long a ban lasts, seconds.
    #[arg(long, env = "RINGMESH_GUARD_BAN", default_value_t = 900)]
    pub guard_ban: u64,
    /// Dial strings that are emergency calls (the user part of a sip: or
    /// tel: Request-URI).
    #[arg(long, env = "RINGMESH_EMERGENCY_NUMBERS", value_delimiter = ',',
          default_values_t = ["112".to_string(), "911".to_string()])]
    pub emergency_numbers: Vec<String>,
    /// How long an application server (initial filter criteria) has to
    /// answer a request at all, even with 100 Trying, before its
    /// criterion's default handling applies, milliseconds.
    #[arg(long, env = "RINGMESH_SERVICE_TIMEOUT_MS", default_value_t = 2000)]
    pub service_timeout_ms: u64,
    /// Topology hiding: phones see only the address of the supernode they
    /// talk to (no other Via; other supernodes' Record-Routes rewritten to
    /// name it). Per request, a caller's `Privacy: header` asks the same.
    #[arg(long, env = "RINGMESH_TOPOLOGY_HIDING", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub topology_hiding: bool,
    /// Messages (RFC 3428) kept for a subscriber with no reachable device,
    /// delivered when one registers; 0 keeps none (such a MESSAGE gets
    /// 480).
    #[arg(long, env = "RINGMESH_OFFLINE_MESSAGES", default_value_t = 100)]
    pub offline_messages: usize,
    /// How long a kept message waits for a device at most, hours.
    #[arg(
        long,
        env = "RINGMESH_OFFLINE_MESSAGE_TTL_HOURS",
        default_value_t = 168
    )]
    pub offline_message_ttl_hours: u64,
    /// This supernode's region (a label: a-z, 0-9, '-'): subscribers with
    /// no region of their own get the services of this one first.
    #[arg(long, env = "RINGMESH_REGION", default_value = "")]
    pub region: String,
    /// The secret shared with the TURN relays (coturn
    /// `static-auth-secret`), in a file; set, phones get relays and
    /// credentials from `OPTIONS sip:turn@DOMAIN`.
    #[arg(long, env = "RINGMESH_TURN_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_secret_file: Option<PathBuf>,
    /// How long TURN credentials stay valid, seconds.
    #[arg(long, env = "RINGMESH_TURN_TTL", default_value_t = 3600)]
    pub turn_ttl: u64,
    /// How many relays an answer names at most.
    #[arg(long, env = "RINGMESH_TURN_SERVERS", default_value_t = 3)]
    pub turn_servers: usize,
    /// How dialled numbers become E.164 before they are looked up or sent
    /// to a PSTN gateway: `cc=44,national=0,international=00` (empty:
    /// numbers are taken as dialled).
    #[arg(long, env = "RINGMESH_DIAL_PLAN", default_value = "")]
    pub dial_plan: String,
    /// The DNS server (HOST:PORT, an address) that ENUM asks; empty: the
    /// system's (`/etc/resolv.conf`).
    #[arg(long, env = "RINGMESH_DNS_SERVER", default_value = "")]
    pub dns_server: String,
    /// The ENUM domain numbers no subscriber owns are looked up under
    /// (`e164.arpa`, or a carrier's private tree) before the PSTN
    /// gateways; empty: no ENUM.
    #[arg(long, env = "RINGMESH_ENUM_DOMAIN", default_value = "")]
    pub enum_domain: String,
    /// How long a PSTN gateway has to answer a call at all (even 100
    /// Trying) before the call moves to the next gateway, milliseconds.
    #[arg(long, env = "RINGMESH_GATEWAY_TIMEOUT_MS", default_value_t = 2000)]
    pub gateway_timeout_ms: u64,
    /// Write call records (as the originating edge of each call) to
    /// `--cdr-dir`, by default `cdr/` in the data directory.
    #[arg(long, env = "RINGMESH_CDR", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub cdr: bool,
    /// Where call records are written (`calls.jsonl` and its rotations).
    #[arg(long, env = "RINGMESH_CDR_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdr_dir: Option<PathBuf>,
    /// The group-commit window of call records, milliseconds: a record is
    /// written and synced at most this long after its event (the loss
    /// window of a crash).
    #[arg(long, env = "RINGMESH_CDR_COMMIT_MS", default_value_t = 100)]
    pub cdr_commit_ms: u64,
    /// Rotate the call-record file past this size, MiB.
    #[arg(long, env = "RINGMESH_CDR_ROTATE_MB", default_value_t = 64)]
    pub cdr_rotate_mb: u64,
    /// Rotated call-record files kept.
    #[arg(long, env = "RINGMESH_CDR_KEEP", default_value_t = 48)]
    pub cdr_keep: usize,
    /// Digest algorithms offered, in order: md5, sha-256 (repeatable).
    /// md5 only by default: deployed UAs break on more (sipp answers only
    /// the first challenge; baresip 1.0/libre fails the whole registration
    /// when one challenge names an algorithm it lacks). Offer sha-256
    /// (first) once every UA of the farm supports RFC 8760.
    #[arg(long, env = "RINGMESH_DIGEST_ALGORITHMS", value_delimiter = ',',
          default_values_t = ["md5".to_string()])]
    pub digest_algorithms: Vec<String>,
    /// The longest dialog (call or subscription) the farm carries,
    /// seconds: the flow tokens in its Record-Route stop routing after it.
    #[arg(long, env = "RINGMESH_MAX_DIALOG_DURATION", default_value_t = 86_400)]
    pub max_dialog_duration: u64,
    /// How long a digest nonce stays fresh, seconds.
    #[arg(long, env = "RINGMESH_NONCE_LIFETIME", default_value_t = 300)]
    pub nonce_lifetime: u64,
    /// Most digest nonces whose uses this node tracks (each (nonce, nc) is
    /// accepted once): 2 bits each, plus about 40 bytes for each nonce a
    /// phone reuses (at most one in 64). Older ones get a stale challenge.
    /// The default, 8 MiB of state at most, covers 111,000 challenges a
    /// second over a 300 s nonce lifetime.
    #[arg(
        long,
        env = "RINGMESH_NONCE_TRACKING_CAP",
        default_value_t = ringmesh_sip::digest::DEFAULT_NONCE_TRACKING_CAP
    )]
    pub nonce_tracking_cap: usize,
    /// RFC 3261 timer T1 in milliseconds.
    #[arg(long, env = "RINGMESH_T1_MS", default_value_t = 500)]
    pub t1_ms: u64,
    /// RFC 3261 timer T2 in milliseconds.
    #[arg(long, env = "RINGMESH_T2_MS", default_value_t = 4000)]
    pub t2_ms: u64,
    /// RFC 3261 timer T4 in milliseconds.
    #[arg(long, env = "RINGMESH_T4_MS", default_value_t = 5000)]
    pub t4_ms: u64,
    /// A TCP peer that sends nothing for this many seconds is disconnected
    /// (connections carry registrations: about a registration's lifetime).
    #[arg(long, env = "RINGMESH_TCP_IDLE_TIMEOUT", default_value_t = 900)]
    pub tcp_idle_timeout: u64,
    /// A TCP peer that starts a message and does not finish it within this
    /// many seconds is disconnected.
    #[arg(long, env = "RINGMESH_TCP_MESSAGE_TIMEOUT", default_value_t = 10)]
    pub tcp_message_timeout: u64,
    /// A TCP peer that has not completed its first request this many
    /// seconds after it connected is disconnected (a connection that only
    /// holds a slot: slowloris); once it has sent one, the idle and message
    /// timeouts apply.
    #[arg(long, env = "RINGMESH_TCP_FIRST_MESSAGE_TIMEOUT", default_value_t = 5)]
    pub tcp_first_message_timeout: u64,
    /// Most simultaneous TCP connections, accepted and opened by the node.
    #[arg(long, env = "RINGMESH_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Most simultaneous TCP connections with one address (an IPv6 /64),
    /// both ways, so one host cannot take every slot. Trusted elements are
    /// exempt. 1000 lets a site of a thousand TCP phones behind one NAT
    /// address in; a bigger site is behind an SBC, listed as trusted.
    #[arg(long, env = "RINGMESH_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,
    /// Per-source rate limit: SIP messages a second one address (an IPv6
    /// /64) may send, sustained; the readers drop the excess unread and
    /// unanswered (0: no limit). Trusted elements are exempt. 500 is
    /// several times what a NAT of a thousand phones sends in its busy
    /// hour.
    #[arg(long, env = "RINGMESH_SOURCE_RATE_LIMIT", default_value_t = 500)]
    pub source_rate_limit: u32,
    /// Per-source rate limit: messages one address may send at once above
    /// its rate (the depth of its token bucket). 5000 lets a NAT of a
    /// thousand phones all register again at once (after an outage or a
    /// reboot), challenges and retransmissions included.
    #[arg(long, env = "RINGMESH_SOURCE_RATE_BURST", default_value_t = 5000)]
    pub source_rate_burst: u32,
    /// A trusted element, NAME=ADDRESS or KIND:NAME=ADDRESS (repeatable):
    /// a front end, application server, peer farm, gateway or load
    /// generator (the default kind), by address (ADDR, ADDR/PREFIX,
    /// ADDR:PORT) or TLS name (tls:NAME). Per-source limits do not apply to
    /// it.
    #[arg(long, env = "RINGMESH_TRUSTED", value_delimiter = ',')]
    #[serde(default)]
    pub trusted: Vec<String>,
    /// Overload control: new requests are answered 503 with Retry-After by
    /// the transport readers once this many new requests and connection
    /// events wait for the SIP core (a hard bound on their memory; at most
    /// 8192, the whole queue). Responses, ACKs and what other supernodes
    /// send wait in a queue of their own, served first and never shed.
    #[arg(long, env = "RINGMESH_OVERLOAD_QUEUE_DEPTH", default_value_t = INBOUND_QUEUE)]
    pub overload_queue_depth: usize,
    /// Overload control: the target queueing delay, milliseconds. New
    /// requests are shed once every message for a whole
    /// `overload-delay-interval-ms` waited longer than this (CoDel's rule).
    #[arg(long, env = "RINGMESH_OVERLOAD_QUEUE_DELAY_MS", default_value_t = 20)]
    pub overload_queue_delay_ms: u64,
    /// Overload control: how long the queueing delay (or the pending
    /// requests) must stay over its limit before new requests are shed,
    /// milliseconds. A burst drained within it is never shed.
    #[arg(
        long,
        env = "RINGMESH_OVERLOAD_DELAY_INTERVAL_MS",
        default_value_t = 100
    )]
    pub overload_delay_interval_ms: u64,
    /// Overload control: new requests are shed while the SIP core holds
    /// this many transactions (those only absorbing retransmissions in
    /// Timer J not counted).
    #[arg(
        long,
        env = "RINGMESH_OVERLOAD_MAX_TRANSACTIONS",
        default_value_t = 1_000_000
    )]
    pub overload_max_transactions: usize,
    /// Transactions the SIP core's tables make room for at start (at most
    /// --overload-max-transactions), so that a busy node never pauses to
    /// grow a table of hundreds of thousands of entries under load. The
    /// room becomes resident as traffic touches it: with the default the
    /// process settles about 177 MiB higher, over hours at low rates. 0:
    /// tables grow with the traffic instead.
    #[arg(
        long,
        env = "RINGMESH_PRESIZE_TRANSACTIONS",
        default_value_t = PRESIZED_TRANSACTIONS
    )]
    pub presize_transactions: usize,
    /// Overload control: new requests are shed while this many requests
    /// wait for the location service (the ring, in a farm) or the
    /// subscriber directory, for a whole delay interval.
    #[arg(long, env = "RINGMESH_OVERLOAD_MAX_PENDING", default_value_t = 500)]
    pub overload_max_pending: usize,
    /// Overload control: the target wait of a location operation on the
    /// ring, milliseconds. New requests are shed once every operation
    /// that finished for a whole `overload-delay-interval-ms` took longer
    /// than this (CoDel's rule, as for the queueing delay): the ring is a
    /// queue of its own, invisible in the core's. Admitted calls wait about
    /// this long while a farm sheds, so it is kept well under SIP's 500 ms
    /// retransmission timer, and well over the few milliseconds an answer
    /// takes from another member when nothing queues.
    #[arg(long, env = "RINGMESH_OVERLOAD_PENDING_DELAY_MS", default_value_t = 30)]
    pub overload_pending_delay_ms: u64,
    /// Overload control, in a farm: how long this node must shed new
    /// requests without a break, for its queueing delay or its waits for
    /// the ring, before it tells the other members to refuse new calls
    /// for its phones, milliseconds. Shedding what enters here drains a
    /// backlog within a few intervals when this node's own traffic is the
    /// cause; shedding that goes on unbroken means calls sent on by the
    /// others (which it never sheds) keep it over. A hard limit
    /// (--overload-max-transactions) is told at once.
    #[arg(long, env = "RINGMESH_OVERLOAD_MARK_AFTER_MS", default_value_t = 1000)]
    pub overload_mark_after_ms: u64,
    /// Seconds a client turned away by overload control (or an
    /// unavailable store) is asked to wait: the Retry-After of the 503.
    #[arg(long, env = "RINGMESH_OVERLOAD_RETRY_AFTER", default_value_t = 5)]
    pub overload_retry_after: u32,
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs,
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
    /// The files this node presents to provisioning (its node identity);
    /// None when provisioning is reached in plaintext (`http://`).
    pub provisioning_tls: Option<ringmesh_config::TlsPaths>,
    /// The admin API's mutual TLS (this node's identity); None: plaintext
    /// on a loopback address.
    pub admin_tls: Option<ringmesh_config::TlsPaths>,
    pub subscriber_cache: usize,
    pub enrollment: Option<String>,
    pub bootstrap_token_file: Option<PathBuf>,
    pub etcd: ringmesh_config::Etcd,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
    pub flow_timer: u32,
    pub allow_loopback_contacts: bool,
    /// The certificate directories of the tls and wss listeners.
    pub tls_certs: Vec<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    /// The origins allowed to open a WebSocket; empty: any.
    pub ws_origins: Vec<String>,
    /// The phone rules and the emergency route.
    pub policy: ringmesh_proxy::Policy,
    /// The DNS server ENUM asks; None: the system's.
    pub dns_server: Option<SocketAddr>,
    pub digest_algorithms: Vec<ringmesh_sip::digest::Algorithm>,
    pub nonce_lifetime: Duration,
    pub max_dialog: Duration,
    /// Call records; `None`: not written.
    pub cdr: Option<crate::cdr::CdrConfig>,
    pub nonce_tracking_cap: usize,
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub tcp_idle_timeout: Duration,
    pub tcp_message_timeout: Duration,
    pub tcp_first_message_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The per-source rate limit; `None`: none.
    pub source_rate: Option<SourceRate>,
    pub overload: OverloadConfig,
    /// Transactions the SIP core's tables make room for at start.
    pub presize_transactions: usize,
    pub log: String,
}

/// The per-source rate limit: a token bucket per source address (see
/// [`crate::admission::SourceLimiter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRate {
    /// Messages a second, sustained.
    pub limit: u32,
    /// Messages at once: the depth of the bucket.
    pub burst: u32,
}

/// When transport readers shed new requests (503 + Retry-After) instead
/// of queueing them for the SIP core: see [`crate::overload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Messages waiting for the core.
    pub queue_depth: usize,
    /// Target sojourn of a message, from the kernel's queue to the core.
    pub queue_delay: Duration,
    /// How long a signal judged over time must stay over its limit.
    pub delay_interval: Duration,
    /// Transactions the core holds (Timer J lingerers not counted).
    pub max_transactions: usize,
    /// Requests waiting for the location service or the directory.
    pub max_pending: usize,
    /// Target wait of a location operation on the ring.
    pub pending_delay: Duration,
    /// Unbroken shedding, for a signal judged over time, before the other
    /// members are told.
    pub mark_after: Duration,
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

impl SupernodeArgs {
    /// What phones asking for TURN relays get: none without a secret.
    fn turn(&self) -> Result<Option<ringmesh_proxy::TurnPolicy>, ConfigError> {
        let Some(path) = &self.turn_secret_file else {
            return Ok(None);
        };
        let key = "turn-secret-file";
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(err(key, format!("{} is empty", path.display())));
        }
        Ok(Some(ringmesh_proxy::TurnPolicy {
            secret: secret.as_bytes().to_vec(),
            ttl: Duration::from_secs(in_range("turn-ttl", self.turn_ttl, 10..=7 * 86_400)?),
            servers: in_range("turn-servers", self.turn_servers, 1..=10)?,
        }))
    }

    /// Parses `args` (flags only, no program name) as the binary would,
    /// environment included, and resolves them: for tests and tools.
    pub fn resolve_from(args: &[&str]) -> Result<Config, ConfigError> {
        let (cli, matches) = ringmesh_config::parse::<SupernodeArgs>(args)?;
        cli.resolve(&matches)
    }

    /// Merges flags and environment (as `matches` records) over the file
    /// over the defaults, and validates the result.
    pub fn resolve(self, matches: &clap::ArgMatches) -> Result<Config, ConfigError> {
        let file = self.config.clone();
        ringmesh_config::merge(&self, matches, file.as_deref())?.validate()
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let turn = self.turn()?;
        let domain = self.domain;
        if domain.is_empty() || ringmesh_sip::Host::parse(domain.as_bytes()).is_err() {
            return Err(err(
                "domain",
                format!("'{domain}' is not a valid host name"),
            ));
        }
        if self.sip.is_empty() {
            return Err(err("sip", "at least one listener is needed"));
        }
        let listen = self
            .sip
            .iter()
            .map(|s| s.parse::<Listen>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err("sip", m))?;
        if let Some(l) = listen.iter().find(|l| l.transport.is_secure())
            && self.tls_cert.is_empty()
        {
            return Err(err(
                "tls-cert",
                format!(
                    "the {l} listener needs a certificate: give --tls-cert DIR (tls.crt and tls.key)"
                ),
            ));
        }
        if self.peer_ca.is_some() && !listen.iter().any(|l| l.transport == Transport::Tls) {
            return Err(err(
                "peer-ca",
                "peer farms reach this node over TLS: add a tls:HOST:PORT listener to --sip",
            ));
        }
        for o in &self.ws_origin {
            if !(o.starts_with("https://") || o.starts_with("http://")) {
                return Err(err(
                    "ws-origin",
                    format!("'{o}' is not an origin (https://HOST[:PORT])"),
                ));
            }
        }
        for (key, a) in [
            ("advertise", &self.advertise),
            ("overlay-advertise", &self.overlay_advertise),
        ] {
            if let Some(a) = a
                && !is_host(a)
            {
                return Err(err(key, format!("'{a}' is not a host name or IP address")));
            }
        }
        let name = self.name;
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
        if self.auth == AuthMode::Digest
            && self.subscribers.is_none()
            && self.provisioning.is_none()
        {
            return Err(err(
                "subscribers",
                "digest auth needs a subscriber list or --provisioning (or use --auth none)",
            ));
        }
        for (key, v) in [
            ("provisioning", &self.provisioning),
            ("enrollment", &self.enrollment),
        ] {
            if let Some(p) = v {
                host_port(p).ok_or_else(|| err(key, format!("'{p}' is not HOST:PORT")))?;
            }
        }
        let subscriber_cache = in_range("subscriber-cache", self.subscriber_cache, 1..)?;
        let etcd = self.service.etcd()?;
        let admin = ringmesh_config::socket_addr("admin", self.admin.as_deref())?;
        if let Some(a) = admin
            && !self.admin_tls
            && !a.ip().is_loopback()
        {
            return Err(err(
                "admin",
                format!(
                    "{a} is not a loopback address: serve the admin API there with --admin-tls true \
                     (clients then need a certificate from the farm CA), or bind it to 127.0.0.1"
                ),
            ));
        }
        let metrics = self.service.metrics_addr()?;
        let (min_expires, max_expires, default_expires) =
            (self.min_expires, self.max_expires, self.default_expires);
        if min_expires == 0 {
            return Err(err("min-expires", "must be at least 1 second"));
        }
        if max_expires < min_expires {
            return Err(err(
                "max-expires",
                format!("{max_expires} is below min-expires {min_expires}"),
            ));
        }
        // The overlay refuses entries living longer than 30 days; a week
        // leaves room for clocks and tombstones.
        if max_expires > MAX_REGISTRATION_S {
            return Err(err(
                "max-expires",
                format!("{max_expires} is over {MAX_REGISTRATION_S} seconds (7 days)"),
            ));
        }
        if !(min_expires..=max_expires).contains(&default_expires) {
            return Err(err(
                "default-expires",
                format!("{default_expires} is outside min-expires..max-expires"),
            ));
        }
        let max_contacts = in_range("max-contacts", self.max_contacts, 1..=1000)?;
        // A keep-alive more often than every 10 s would be a load on the
        // farm; one rarer than an hour would not keep a NAT binding.
        if self.flow_timer != 0 {
            in_range("flow-timer", self.flow_timer, 10..=3600)?;
        }
        let max_branches = in_range("max-branches", self.max_branches, 1..=100)?;
        let emergency_route = match &self.emergency_route {
            Some(r) => {
                let l: Listen = r.parse().map_err(|e| err("emergency-route", e))?;
                if l.addr.port() == 0 || l.addr.ip().is_unspecified() {
                    return Err(err(
                        "emergency-route",
                        format!("'{r}' names no address to send to"),
                    ));
                }
                Some((l.transport, l.addr))
            }
            None => None,
        };
        for n in &self.emergency_numbers {
            let ok = (1..=16).contains(&n.len())
                && n.bytes()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'*' | b'#' | b'+'));
            if !ok {
                return Err(err(
                    "emergency-numbers",
                    format!("'{n}' is not a dial string (1-16 of 0-9 * # +)"),
                ));
            }
        }
        let guard = ringmesh_proxy::guard::GuardConfig {
            pair_failures: in_range("guard-pair-failures", self.guard_pair_failures, 0..=1000)?,
            source_failures: in_range(
                "guard-source-failures",
                self.guard_source_failures,
                0..=100_000,
            )?,
            window: Duration::from_secs(in_range("guard-window", self.guard_window, 1..=86_400)?),
            ban: Duration::from_secs(in_range("guard-ban", self.guard_ban, 1..=30 * 86_400)?),
        };
        let mut elements: Vec<Element> = Vec::new();
        for t in &self.trusted {
            let e = Element::parse_flag(t).map_err(|m| err("trusted", m))?;
            if elements.iter().any(|x| x.name == e.name) {
                return Err(err(
                    "trusted",
                    format!("the name '{}' is given twice", e.name),
                ));
            }
            elements.push(e);
        }
        let policy = ringmesh_proxy::Policy {
            emergency_route,
            emergency_numbers: self.emergency_numbers.clone(),
            max_branches,
            guard,
            service_timeout: Duration::from_millis(in_range(
                "service-timeout-ms",
                self.service_timeout_ms,
                100..=32_000,
            )?),
            topology_hiding: self.topology_hiding,
            offline_messages: in_range("offline-messages", self.offline_messages, 0..=1000)?,
            offline_message_ttl: Duration::from_secs(
                3600 * in_range(
                    "offline-message-ttl-hours",
                    self.offline_message_ttl_hours,
                    1..=24 * 29,
                )?,
            ),
            region: ringmesh_proxy::discovery::check_label("region", &self.region, true)
                .map(|()| self.region.clone())
                .map_err(|m| err("region", m))?,
            turn,
            trusted: TrustTable::new(elements),
            dial_plan: self.dial_plan.parse().map_err(|m| err("dial-plan", m))?,
            gateway_timeout: Duration::from_millis(in_range(
                "gateway-timeout-ms",
                self.gateway_timeout_ms,
                100..=32_000,
            )?),
            gateway_refresh: Some(Duration::from_secs(2)),
            // Set once the certificates are loaded (`serve`).
            tls_client: false,
            enum_domain: match self.enum_domain.trim_end_matches('.') {
                "" => None,
                d if d.contains('.') && ringmesh_sip::Host::parse(d.as_bytes()).is_ok() => {
                    Some(d.to_ascii_lowercase())
                }
                d => {
                    return Err(err(
                        "enum-domain",
                        format!("{d:?} is not a domain name (e.g. e164.arpa)"),
                    ));
                }
            },
        };
        let ms = |key: &str, v: u64| -> Result<Duration, ConfigError> {
            in_range(key, v, 1..=600_000).map(Duration::from_millis)
        };
        let (t1, t2, t4) = (
            ms("t1-ms", self.t1_ms)?,
            ms("t2-ms", self.t2_ms)?,
            ms("t4-ms", self.t4_ms)?,
        );
        if t2 < t1 {
            return Err(err("t2-ms", "must not be below t1-ms"));
        }
        let secs = |key: &str, v: u64| in_range(key, v, 1..).map(Duration::from_secs);
        let mut digest_algorithms = Vec::new();
        for a in &self.digest_algorithms {
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
        let nonce_lifetime = secs("nonce-lifetime", self.nonce_lifetime)?;
        let max_dialog = in_range(
            "max-dialog-duration",
            self.max_dialog_duration,
            60..=30 * 86_400,
        )
        .map(Duration::from_secs)?;
        let nonce_tracking_cap = in_range(
            "nonce-tracking-cap",
            self.nonce_tracking_cap,
            1024..=1 << 32,
        )?;
        let tcp_idle_timeout = secs("tcp-idle-timeout", self.tcp_idle_timeout)?;
        let tcp_message_timeout = secs("tcp-message-timeout", self.tcp_message_timeout)?;
        let tcp_first_message_timeout =
            secs("tcp-first-message-timeout", self.tcp_first_message_timeout)?;
        let max_connections = in_range("max-connections", self.max_connections, 1..)?;
        let max_connections_per_ip =
            in_range("max-connections-per-ip", self.max_connections_per_ip, 1..)?;
        let source_rate =
            match in_range("source-rate-limit", self.source_rate_limit, 0..=1_000_000)? {
                0 => None,
                limit => Some(SourceRate {
                    limit,
                    burst: in_range("source-rate-burst", self.source_rate_burst, 1..=10_000_000)?,
                }),
            };
        let overload = OverloadConfig {
            queue_depth: in_range(
                "overload-queue-depth",
                self.overload_queue_depth,
                16..=INBOUND_QUEUE,
            )?,
            queue_delay: Duration::from_millis(in_range(
                "overload-queue-delay-ms",
                self.overload_queue_delay_ms,
                1..=10_000,
            )?),
            delay_interval: Duration::from_millis(in_range(
                "overload-delay-interval-ms",
                self.overload_delay_interval_ms,
                10..=10_000,
            )?),
            max_transactions: in_range(
                "overload-max-transactions",
                self.overload_max_transactions,
                100..,
            )?,
            max_pending: in_range("overload-max-pending", self.overload_max_pending, 10..)?,
            pending_delay: Duration::from_millis(in_range(
                "overload-pending-delay-ms",
                self.overload_pending_delay_ms,
                1..=10_000,
            )?),
            mark_after: Duration::from_millis(in_range(
                "overload-mark-after-ms",
                self.overload_mark_after_ms,
                0..=60_000,
            )?),
            retry_after: in_range("overload-retry-after", self.overload_retry_after, 1..=3600)?,
        };
        let data = match self.data {
            Some(d) => d,
            None => ringmesh_config::default_data_dir(&name)?,
        };
        let seeds = self.seed;
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
        let replicas = in_range("replicas", self.replicas, 1..=7)?;
        if self.bootstrap_ordinal.is_some() && self.bootstrap_after.is_none() {
            return Err(err(
                "bootstrap-ordinal",
                "it needs --bootstrap-after (how long the node with that ordinal waits before founding a ring)",
            ));
        }
        let identity = ringmesh_config::TlsPaths {
            ca: self.ca.clone().unwrap_or_else(|| data.join("ca.crt")),
            cert: self.cert.clone().unwrap_or_else(|| data.join("node.crt")),
            key: self.key.clone().unwrap_or_else(|| data.join("node.key")),
        };
        let provisioning_tls = self
            .provisioning
            .as_ref()
            .filter(|p| !p.starts_with("http://"))
            .map(|_| identity.clone());
        let admin_tls = (self.admin_tls && self.admin.is_some()).then(|| identity.clone());
        let overlay = match self.overlay {
            Some(o) => Some(OverlayConfig {
                listen: o.parse().map_err(|_| {
                    err(
                        "overlay",
                        format!("'{o}' is not HOST:PORT with an IP address"),
                    )
                })?,
                seeds,
                advertise: self.overlay_advertise,
                bootstrap_after: self
                    .bootstrap_after
                    .filter(|_| {
                        self.bootstrap_ordinal
                            .is_none_or(|o| ordinal_of(&name) == Some(o))
                    })
                    .map(Duration::from_secs),
                replicas,
                cert: self.cert.unwrap_or_else(|| data.join("node.crt")),
                key: self.key.unwrap_or_else(|| data.join("node.key")),
                ca: self.ca.unwrap_or_else(|| data.join("ca.crt")),
                crl: self.crl.unwrap_or_else(|| data.join("crl.pem")),
            }),
            None if !seeds.is_empty() => {
                return Err(err(
                    "seed",
                    "seeds need --overlay (the address to join from)",
                ));
            }
            None if self.overlay_advertise.is_some() => {
                return Err(err(
                    "overlay-advertise",
                    "it needs --overlay (the address it stands for)",
                ));
            }
            None => None,
        };
        let farm_secret = self.farm_secret.unwrap_or_else(|| data.join("farm.secret"));
        let cdr = if self.cdr {
            Some(crate::cdr::CdrConfig {
                dir: self.cdr_dir.unwrap_or_else(|| data.join("cdr")),
                commit: Duration::from_millis(in_range(
                    "cdr-commit-ms",
                    self.cdr_commit_ms,
                    1..=10_000,
                )?),
                rotate_bytes: in_range("cdr-rotate-mb", self.cdr_rotate_mb, 1..=65_536)? << 20,
                keep: in_range("cdr-keep", self.cdr_keep, 1..=100_000)?,
            })
        } else {
            None
        };
        let dns_server = match self.dns_server.as_str() {
            "" => None,
            a => Some(a.parse().map_err(|_| {
                err(
                    "dns-server",
                    format!("{a:?} is not ADDRESS:PORT (e.g. 127.0.0.1:53)"),
                )
            })?),
        };
        Ok(Config {
            dns_server,
            name,
            domain: domain.to_ascii_lowercase(),
            listen,
            advertise: self.advertise,
            overlay,
            farm_secret,
            data,
            auth: self.auth,
            subscribers: self.subscribers,
            provisioning: self.provisioning,
            provisioning_tls,
            admin_tls,
            subscriber_cache,
            enrollment: self.enrollment,
            bootstrap_token_file: self.bootstrap_token_file,
            etcd,
            admin,
            metrics,
            min_expires,
            max_expires,
            default_expires,
            max_contacts,
            flow_timer: self.flow_timer,
            allow_loopback_contacts: self.allow_loopback_contacts,
            tls_certs: self.tls_cert,
            tls_client_ca: self.tls_client_ca,
            peer_ca: self.peer_ca,
            ws_origins: self.ws_origin,
            policy,
            digest_algorithms,
            nonce_lifetime,
            max_dialog,
            cdr,
            nonce_tracking_cap,
            t1,
            t2,
            t4,
            tcp_idle_timeout,
            tcp_message_timeout,
            tcp_first_message_timeout,
            max_connections,
            max_connections_per_ip,
            source_rate,
            presize_transactions: self.presize_transactions.min(overload.max_transactions),
            overload,
            log: self.service.log,
        })
    }
}

/// The ordinal of a StatefulSet pod name (`ringmesh-supernode-2` → 2).
fn ordinal_of(name: &str) -> Option<u32> {
    name.rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves flags after `--auth none` (no subscriber list needed).
    fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["--auth", "none", "--data", "/tmp/ringmesh-config-test"];
        all.extend_from_slice(args);
        SupernodeArgs::resolve_from(&all)
    }

    fn key_of(args: &[&str]) -> String {
        resolve(args).unwrap_err().key
    }

    #[test]
    fn dns_server_enum_domain_and_dial_plan_are_checked() {
        let c = resolve(&[
            "--dns-server",
            "127.0.0.1:5353",
            "--enum-domain",
            "E164.Arpa.",
            "--dial-plan",
            "cc=44,national=0",
        ])
        .unwrap();
        assert_eq!(c.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(c.policy.enum_domain.as_deref(), Some("e164.arpa"));
        assert_eq!(c.policy.dial_plan.country_code, "44");
        let none = resolve(&[]).unwrap();
        assert_eq!((none.dns_server, none.policy.enum_domain), (None, None));
        assert_eq!(key_of(&["--dns-server", "dns.example:53"]), "dns-server");
        assert_eq!(key_of(&["--dns-server", "127.0.0.1"]), "dns-server");
        assert_eq!(key_of(&["--enum-domain", "e164"]), "enum-domain");
        assert_eq!(key_of(&["--enum-domain", "bad domain.arpa"]), "enum-domain");
        assert_eq!(key_of(&["--dial-plan", "national=0"]), "dial-plan");
        assert_eq!(
            key_of(&["--gateway-timeout-ms", "50"]),
            "gateway-timeout-ms"
        );
    }

    #[test]
    fn defaults_resolve() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.domain, "ringmesh.test");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.t1, Duration::from_millis(500));
        assert_eq!(c.log, "info");
    }

    #[test]
    fn the_default_data_directory_is_under_the_users_data_dir() {
        let c = SupernodeArgs::resolve_from(&["--auth", "none", "--name", "sn7"]).unwrap();
        assert!(
            c.data.ends_with("ringmesh/sn7") && c.data.is_absolute(),
            "{}",
            c.data.display()
        );
    }

    #[test]
    fn only_the_pod_with_the_bootstrap_ordinal_may_found_a_ring() {
        let founds = |name: &str| {
            resolve(&[
                "--name",
                name,
                "--overlay",
                "127.0.0.1:5300",
                "--bootstrap-after",
                "20",
                "--bootstrap-ordinal",
                "0",
            ])
            .unwrap()
            .overlay
            .unwrap()
            .bootstrap_after
        };
        assert_eq!(
            founds("ringmesh-supernode-0"),
            Some(Duration::from_secs(20))
        );
        assert_eq!(founds("ringmesh-supernode-1"), None);
        assert_eq!(founds("ringmesh-supernode-10"), None);
        assert_eq!(founds("lab"), None, "a name without an ordinal");
        assert_eq!(
            key_of(&["--overlay", "127.0.0.1:5300", "--bootstrap-ordinal", "0"]),
            "bootstrap-ordinal"
        );
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
            "domain = \"file.example\"\nmin-expires = 30\nname = \"fromfile\"\n\
             etcd = [\"127.0.0.1:2379\"]\nlog = \"debug\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = resolve(&["--config", p, "--name", "flag"]).unwrap();
        assert_eq!(c.domain, "file.example");
        assert_eq!(c.min_expires, 30);
        assert_eq!(c.name, "flag", "a flag beats the file");
        assert_eq!(
            c.etcd.endpoints,
            ["http://127.0.0.1:2379"],
            "a shared key, normalised"
        );
        assert_eq!(c.log, "debug");

        std::fs::write(&path, "domian = \"typo.example\"\n").unwrap();
        let e = resolve(&["--config", p]).unwrap_err();
        assert!(e.to_string().contains("domian"), "{e}");
    }

    #[test]
    fn secure_listeners_need_a_certificate_and_origins_are_origins() {
        for l in ["tls:127.0.0.1:5061", "wss:127.0.0.1:8443"] {
            let e = resolve(&["--sip", l]).unwrap_err();
            assert_eq!(e.key, "tls-cert");
            assert!(e.to_string().contains(l), "{e}");
        }
        let c = resolve(&[
            "--sip",
            "ws:127.0.0.1:8080",
            "--ws-origin",
            "https://phone.example.com",
        ])
        .unwrap();
        assert_eq!(c.listen[0].transport, Transport::Ws);
        assert_eq!(c.ws_origins, ["https://phone.example.com"]);
        assert_eq!(key_of(&["--ws-origin", "phone.example.com"]), "ws-origin");
    }

    #[test]
    fn peer_farms_need_a_tls_listener_to_answer_on() {
        let e = resolve(&["--peer-ca", "/etc/peers.pem"]).unwrap_err();
        assert_eq!(e.key, "peer-ca");
        assert!(e.to_string().contains("tls:HOST:PORT"), "{e}");
        let c = resolve(&[
            "--sip",
            "tls:127.0.0.1:5061",
            "--tls-cert",
            "/etc/cert",
            "--peer-ca",
            "/etc/peers.pem",
        ])
        .unwrap();
        assert_eq!(
            c.peer_ca.as_deref(),
            Some(std::path::Path::new("/etc/peers.pem"))
        );
        assert!(!c.policy.tls_client, "decided once the files are read");
    }

    #[test]
    fn bad_values_name_the_key() {
        assert_eq!(key_of(&["--sip", "tcp:nowhere"]), "sip");
        let e = resolve(&["--min-expires", "100", "--max-expires", "50"]).unwrap_err();
        assert_eq!(e.key, "max-expires");
        let e = resolve(&["--max-expires", "604801"]).unwrap_err();
        assert_eq!(
            e.key, "max-expires",
            "the overlay would refuse such bindings"
        );
        assert!(resolve(&["--max-expires", "604800"]).is_ok());
        assert!(e.to_string().contains("RINGMESH_MAX_EXPIRES"));
        let e = SupernodeArgs::resolve_from(&["--data", "/tmp/x"]).unwrap_err();
        assert_eq!(e.key, "subscribers");
        assert_eq!(
            key_of(&["--etcd", "https://etcd:2379"]),
            "etcd-ca",
            "TLS to etcd needs its CA"
        );
        assert_eq!(key_of(&["--etcd", "ftp://etcd:2379"]), "etcd");
        assert_eq!(key_of(&["--metrics", "nowhere"]), "metrics");
        assert_eq!(key_of(&["--flow-timer", "5"]), "flow-timer");
        assert!(resolve(&["--flow-timer", "0"]).is_ok(), "0 turns it off");
        assert_eq!(key_of(&["--replicas", "9"]), "replicas");
        assert_eq!(key_of(&["--t1-ms", "0"]), "t1-ms");
        assert_eq!(
            key_of(&["--digest-algorithms", "sha-1"]),
            "digest-algorithms"
        );
        for bad in ["0", "1023", "8589934592"] {
            assert_eq!(key_of(&["--nonce-tracking-cap", bad]), "nonce-tracking-cap");
        }
        assert_eq!(
            resolve(&[]).unwrap().nonce_tracking_cap,
            ringmesh_sip::digest::DEFAULT_NONCE_TRACKING_CAP
        );
        assert_eq!(
            resolve(&["--nonce-tracking-cap", "4096"])
                .unwrap()
                .nonce_tracking_cap,
            4096
        );
    }

    #[test]
    fn seeds_by_name_and_the_overlay_advertise_host() {
        let c = resolve(&[
            "--overlay",
            "0.0.0.0:5090",
            "--seed",
            "ringmesh-supernode-0.ringmesh-overlay.sip.svc.cluster.local:5090",
            "--seed",
            "10.0.0.7:5090",
            "--seed",
            "[fd00::7]:5090",
            "--overlay-advertise",
            "10.0.0.5",
        ])
        .unwrap();
        let ov = c.overlay.unwrap();
        assert_eq!(ov.seeds.len(), 3);
        assert_eq!(ov.advertise.as_deref(), Some("10.0.0.5"));
        for (args, key) in [
            (
                &["--overlay", "0.0.0.0:5090", "--seed", "peer.example"][..],
                "seed",
            ),
            (
                &["--overlay", "0.0.0.0:5090", "--seed", "bad host:5090"],
                "seed",
            ),
            (
                &[
                    "--overlay",
                    "0.0.0.0:5090",
                    "--overlay-advertise",
                    "no spaces",
                ],
                "overlay-advertise",
            ),
            (&["--overlay-advertise", "10.0.0.5"], "overlay-advertise"),
        ] {
            assert_eq!(key_of(args), key, "{args:?}");
        }
    }

    #[test]
    fn overload_keys() {
        let c = resolve(&[]).unwrap();
        assert_eq!(
            c.overload,
            OverloadConfig {
                queue_depth: INBOUND_QUEUE,
                queue_delay: Duration::from_millis(20),
                delay_interval: Duration::from_millis(100),
                max_transactions: 1_000_000,
                max_pending: 500,
                pending_delay: Duration::from_millis(30),
                mark_after: Duration::from_millis(1000),
                retry_after: 5,
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "overload-queue-depth = 512\noverload-queue-delay-ms = 5\n\
             overload-max-transactions = 20000\noverload-retry-after = 30\n\
             overload-max-pending = 300\noverload-delay-interval-ms = 250\n\
             overload-pending-delay-ms = 40\noverload-mark-after-ms = 300\n",
        )
        .unwrap();
        let c = resolve(&[
            "--config",
            path.to_str().unwrap(),
            "--overload-retry-after",
            "7",
        ])
        .unwrap();
        assert_eq!(c.overload.queue_depth, 512);
        assert_eq!(c.overload.queue_delay, Duration::from_millis(5));
        assert_eq!(c.overload.delay_interval, Duration::from_millis(250));
        assert_eq!(c.overload.max_transactions, 20_000);
        assert_eq!(c.overload.max_pending, 300);
        assert_eq!(c.overload.pending_delay, Duration::from_millis(40));
        assert_eq!(c.overload.mark_after, Duration::from_millis(300));
        assert_eq!(c.overload.retry_after, 7, "a flag beats the file");
        assert_eq!(
            c.presize_transactions, 20_000,
            "room for no more transactions than the node admits"
        );
        let c = resolve(&["--presize-transactions", "0"]).unwrap();
        assert_eq!(c.presize_transactions, 0);
        assert_eq!(
            resolve(&[]).unwrap().presize_transactions,
            PRESIZED_TRANSACTIONS
        );
        let too_deep = (INBOUND_QUEUE + 1).to_string();
        for (flag, value) in [
            ("--overload-queue-depth", "8"),
            ("--overload-queue-depth", too_deep.as_str()),
            ("--overload-queue-delay-ms", "0"),
            ("--overload-delay-interval-ms", "5"),
            ("--overload-max-transactions", "10"),
            ("--overload-retry-after", "0"),
            ("--overload-max-pending", "1"),
            ("--overload-pending-delay-ms", "0"),
            ("--overload-mark-after-ms", "60001"),
        ] {
            let e = resolve(&[flag, value]).unwrap_err();
            assert_eq!(e.key, flag.trim_start_matches("--"));
            assert!(e.to_string().contains("RINGMESH_OVERLOAD_"), "{e}");
        }
    }

    #[test]
    fn trusted_elements() {
        assert!(
            resolve(&[]).unwrap().policy.trusted.is_empty(),
            "no element is trusted by default"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "trusted = [\"load=127.0.0.1\", \"gateway:gw=192.0.2.0/24:5080\"]\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = resolve(&["--config", p]).unwrap();
        let names: Vec<&str> = c
            .policy
            .trusted
            .elements()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["load", "gw"]);
        assert!(
            c.policy
                .trusted
                .is_trusted("192.0.2.9:5080".parse().unwrap(), None)
        );
        let c = resolve(&["--config", p, "--trusted", "front-end:pcscf=10.1.0.0/16"]).unwrap();
        assert_eq!(
            c.policy.trusted.len(),
            1,
            "the flag replaces the file's list"
        );
        assert_eq!(
            c.policy.trusted.elements()[0].kind,
            ringmesh_proxy::trust::Kind::FrontEnd
        );
        for value in ["nameless", "x=localhost", "robot:x=127.0.0.1"] {
            assert_eq!(key_of(&["--trusted", value]), "trusted", "{value}");
        }
        let e = resolve(&["--trusted", "a=127.0.0.1", "--trusted", "a=127.0.0.2"]).unwrap_err();
        assert_eq!(e.key, "trusted");
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(e.to_string().contains("RINGMESH_TRUSTED"), "{e}");
    }

    #[test]
    fn transport_limit_keys() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.max_connections_per_ip, 1000);
        assert_eq!(c.tcp_first_message_timeout, Duration::from_secs(5));
        assert_eq!(
            c.source_rate,
            Some(SourceRate {
                limit: 500,
                burst: 5000
            })
        );
        assert_eq!(
            resolve(&["--source-rate-limit", "0"]).unwrap().source_rate,
            None
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max-connections-per-ip = 50\ntcp-first-message-timeout = 2\nsource-rate-limit = 20\nsource-rate-burst = 100\n").unwrap();
        let c = resolve(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.max_connections_per_ip, 50);
        assert_eq!(c.tcp_first_message_timeout, Duration::from_secs(2));
        assert_eq!(
            c.source_rate,
            Some(SourceRate {
                limit: 20,
                burst: 100
            })
        );
        for (flag, value) in [
            ("--max-connections", "0"),
            ("--max-connections-per-ip", "0"),
            ("--tcp-first-message-timeout", "0"),
            ("--source-rate-limit", "2000000"),
            ("--source-rate-burst", "0"),
        ] {
            let e = resolve(&[flag, value]).unwrap_err();
            assert_eq!(e.key, flag.trim_start_matches("--"), "{flag} {value}");
        }
    }
}
