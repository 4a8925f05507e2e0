//! `ringmesh ctl`: the operator CLI over the control-plane APIs.
//!
//! - `ringmesh ctl subscriber add|get|list|set-password|bar|unbar|delete`
//!   talks to provisioning (`--provisioning`, `RINGMESH_PROVISIONING`,
//!   default `127.0.0.1:5660`: `ringmesh dev`'s base port + 600), in
//!   [`subscriber`]; `ringmesh ctl trusted add|list|get|remove` too, in
//!   [`trusted`]. It speaks mutual TLS with an operator certificate
//!   (`--ca`, `--cert`, `--key`); without them, the one a `ringmesh dev`
//!   farm on that port made (`.dev/pP/control/`) when it is there; an
//!   `http://` address means a provisioning run with `--plaintext`.
//! - `status`, `ring`, `lookup`, `bindings`, `drain`, `ping`, `trace`,
//!   `bans list|lift`, `sip-trace`, `service list|advertise|withdraw`
//!   ([`service`]), `presence allow|block|pending|show` ([`presence`])
//!   talk to one supernode's admin API (`--admin`,
//!   `RINGMESH_ADMIN`, default `127.0.0.1:5260`: the first node of a
//!   default `ringmesh dev`), through [`admin_command`]; an `https://`
//!   address is reached over mutual TLS with `--ca`, `--cert`, `--key`.
//!
//! Output is a readable table, or one JSON document with `--json`. Exit
//! codes: 0 done, 1 the server refused (its message is printed), 2 usage
//! error, 3 not found, 4 unavailable.

use std::process::ExitCode;

mod cdr;
mod gateway;
mod presence;
mod service;
mod subscriber;
mod trusted;

use subscriber::{Exit, Io, SubscriberCommand};
use trusted::{PeerCommand, TrustedCommand};

/// The `ringmesh ctl` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// The provisioning API (HOST:PORT).
    #[arg(
        long,
        env = "RINGMESH_PROVISIONING",
        default_value = "127.0.0.1:5660",
        global = true
    )]
    pub provisioning: String,
    /// A supernode's admin API (HOST:PORT).
    #[arg(
        long,
        env = "RINGMESH_ADMIN",
        default_value = "127.0.0.1:5260",
        global = true
    )]
    pub admin: String,
    /// The farm CA (PEM) that issued provisioning's certificate (and the
    /// supernodes', for an https:// admin API).
    #[arg(long, env = "RINGMESH_CTL_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// This operator's (or admin's) certificate (PEM, from the farm CA).
    #[arg(long, env = "RINGMESH_CTL_CERT", global = true)]
    pub cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "RINGMESH_CTL_KEY", global = true)]
    pub key: Option<std::path::PathBuf>,
    /// Print JSON (one document on stdout; errors as JSON on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ringmesh ctl` commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Manage subscribers (provisioning API).
    Subscriber {
        #[command(subcommand)]
        command: SubscriberCommand,
    },
    /// Manage trusted elements: the SIP peers that are not phones
    /// (provisioning API).
    Trusted {
        #[command(subcommand)]
        command: TrustedCommand,
    },
    /// Manage peer farms: the other domains this farm exchanges calls
    /// with (trusted elements of kind peer-farm, provisioning API).
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Call records a supernode wrote (read from its data directory).
    Cdr {
        #[command(subcommand)]
        command: cdr::CdrCommand,
    },
    #[command(flatten)]
    Admin(AdminCommand),
}

/// The commands served by a supernode's admin API.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// The node's identity, state and load.
    Status,
    /// The node's view of the ring.
    Ring,
    /// Where an AOR lives: its key, replicas and bindings.
    Lookup {
        /// The AOR (sip:, sips: or tel: URI).
        aor: String,
    },
    /// The bindings the node stores.
    Bindings {
        /// Only this AOR.
        #[arg(long)]
        aor: Option<String>,
        /// Only flows that end at this node.
        #[arg(long)]
        edge_only: bool,
        /// Bindings per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue from this token.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Read every page.
        #[arg(long)]
        all: bool,
    },
    /// Graceful leave: hand keys off, then leave the ring.
    Drain {
        /// The Node-ID to drain (default: the node --admin names).
        node: Option<String>,
        /// Seconds to wait for the hand-off before leaving anyway.
        #[arg(long, default_value_t = 0)]
        grace_seconds: u32,
    },
    /// Overlay ping of another node.
    Ping {
        /// The Node-ID to ping.
        node: String,
        /// How many pings.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Per-ping timeout, milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u32,
    },
    /// The overlay path to a node, a key or an AOR, hop by hop.
    Trace {
        /// A Node-ID (32 hex), a key (64 hex) or an AOR.
        target: String,
        /// Most hops.
        #[arg(long, default_value_t = 32)]
        max_hops: u32,
    },
    /// Brute-force bans: `list`, or `lift SOURCE` (on every member).
    Bans {
        #[command(subcommand)]
        command: BansCommand,
    },
    /// Service discovery: instances of a service (TURN relays) in the
    /// ring.
    Service {
        #[command(subcommand)]
        command: service::ServiceCommand,
    },
    /// PSTN gateways: the farm's table in the ring, and each gateway's
    /// state as this node sees it.
    Gateway {
        #[command(subcommand)]
        command: gateway::GatewayCommand,
    },
    /// Presence: a presentity's authorisation rules and what its watchers
    /// see.
    Presence {
        #[command(subcommand)]
        command: presence::PresenceCommand,
    },
    /// Live SIP messages through the node, filtered.
    SipTrace {
        /// Only messages of this AOR.
        #[arg(long)]
        aor: Option<String>,
        /// Only this Call-ID.
        #[arg(long)]
        call_id: Option<String>,
        /// Only this method (and its responses).
        #[arg(long)]
        method: Option<String>,
        /// Stop after this many messages (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        max_messages: u32,
        /// Include message bodies.
        #[arg(long)]
        bodies: bool,
    },
}

/// `ringmesh ctl bans …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BansCommand {
    /// The bans in force (every member of a farm holds the same list).
    List,
    /// Lifts the bans and failure counts of a source on every member.
    Lift {
        /// The source: an IP address (IPv6: its /64).
        source: String,
    },
}

/// Runs one admin command against the admin API at `addr` (over mutual
/// TLS with `tls`).
pub async fn admin_command(
    addr: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    json: bool,
    cmd: AdminCommand,
    io: &mut Io<'_>,
) -> Exit {
    match admin_execute(addr, tls, json, cmd, io).await {
        Ok(()) => Exit::Ok,
        Err(AdminFailure::Usage(m)) => {
            report(io, json, "INVALID_ARGUMENT", &m);
            Exit::Usage
        }
        Err(AdminFailure::Status(s)) => {
            report(
                io,
                json,
                &format!("{:?}", s.code()).to_uppercase(),
                s.message(),
            );
            Exit::of(s.code())
        }
    }
}

enum AdminFailure {
    Usage(String),
    Status(tonic::Status),
}

impl From<tonic::Status> for AdminFailure {
    fn from(s: tonic::Status) -> Self {
        AdminFailure::Status(s)
    }
}

fn report(io: &mut Io<'_>, json: bool, code: &str, message: &str) {
    if json {
        let _ = writeln!(
            io.err,
            "{}",
            serde_json::json!({"error": {"code": code, "message": message}})
        );
    } else {
        let _ = writeln!(io.err, "error: {message}");
    }
}

/// A readable table: a header row and aligned columns.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn state_name(s: i32) -> &'static str {
    use ringmesh_proto::admin::NodeState;
    match NodeState::try_from(s).unwrap_or(NodeState::Unspecified) {
        NodeState::Joining => "joining",
        NodeState::Alive => "alive",
        NodeState::Leaving => "leaving",
        NodeState::Left => "left",
        NodeState::Dead => "dead",
        NodeState::Unspecified => "unknown",
    }
}

fn binding_json(b: &ringmesh_proto::admin::Binding) -> serde_json::Value {
    serde_json::json!({
        "aor": b.aor, "contact": b.contact, "instance_id": b.instance_id, "reg_id": b.reg_id,
        "expires_unix_ms": b.expires_unix_ms, "call_id": b.call_id, "cseq": b.cseq,
        "edge_node_id": b.edge_node_id, "edge_flow": b.edge_flow, "q": b.q, "hlc": b.hlc,
    })
}

fn binding_rows(bs: &[ringmesh_proto::admin::Binding]) -> Vec<Vec<String>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    bs.iter()
        .map(|b| {
            vec![
                b.aor.clone(),
                b.contact.clone(),
                format!("{}s", b.expires_unix_ms.saturating_sub(now) / 1000),
                b.edge_node_id.get(..8).unwrap_or_default().to_string(),
                b.edge_flow.clone(),
            ]
        })
        .collect()
}

async fn admin_execute(
    addr: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    json: bool,
    cmd: AdminCommand,
    io: &mut Io<'_>,
) -> Result<(), AdminFailure> {
    use ringmesh_proto::admin as pb;
    use ringmesh_proto::admin::admin_client::AdminClient;
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| AdminFailure::Usage(format!("--admin: '{addr}' is not HOST:PORT ({e})")))?
        .connect_timeout(std::time::Duration::from_secs(3));
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| AdminFailure::Usage(format!("--admin: TLS: {e}")))?;
    }
    let timeout = std::time::Duration::from_secs(
        if matches!(
            cmd,
            AdminCommand::Drain { .. } | AdminCommand::SipTrace { .. }
        ) {
            3600
        } else {
            15
        },
    );
    let channel = endpoint.timeout(timeout).connect().await.map_err(|e| {
        tonic::Status::unavailable(format!("cannot reach the admin API at {addr}: {e}"))
    })?;
    let mut c = AdminClient::new(channel);
    let out = &mut *io.out;
    match cmd {
        AdminCommand::Presence { command } => presence::execute(&mut c, json, command, out).await?,
        AdminCommand::Gateway { command } => gateway::execute(&mut c, json, command, out).await?,
        AdminCommand::Service { command } => {
            service::execute(&mut c, json, command, out, &mut *io.err).await?
        }
        AdminCommand::Status => {
            let s = c.status(pb::StatusRequest {}).await?.into_inner();
            if json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "node_id": s.node_id, "name": s.name, "version": s.version, "protocol_version": s.protocol_version,
                        "state": state_name(s.state), "uptime_seconds": s.uptime_seconds, "sip_listeners": s.sip_listeners,
                        "overlay_addr": s.overlay_addr, "admin_addr": s.admin_addr, "alive_members": s.alive_members,
                        "stored_bindings": s.stored_bindings, "edge_flows": s.edge_flows,
                        "active_transactions": s.active_transactions, "etcd_connected": s.etcd_connected,
                        "provisioning_connected": s.provisioning_connected,
                        "certificate_expires_in_seconds": s.certificate_expires_in_seconds,
                    })
                );
            } else {
                let rows = vec![
                    vec!["node".into(), format!("{} ({})", s.name, s.node_id)],
                    vec!["state".into(), state_name(s.state).into()],
                    vec![
                        "version".into(),
                        format!("{} (overlay protocol {})", s.version, s.protocol_version),
                    ],
                    vec!["uptime".into(), format!("{}s", s.uptime_seconds)],
                    vec!["sip".into(), s.sip_listeners.join(", ")],
                    vec!["overlay".into(), s.overlay_addr.clone()],
                    vec!["members alive".into(), s.alive_members.to_string()],
                    vec!["records held".into(), s.stored_bindings.to_string()],
                    vec!["edge flows".into(), s.edge_flows.to_string()],
                    vec!["transactions".into(), s.active_transactions.to_string()],
                    vec![
                        "etcd".into(),
                        if s.etcd_connected {
                            "connected"
                        } else {
                            "not connected"
                        }
                        .into(),
                    ],
                    vec![
                        "provisioning".into(),
                        if s.provisioning_connected {
                            "watching"
                        } else {
                            "not watching"
                        }
                        .into(),
                    ],
                    vec![
                        "certificate".into(),
                        format!(
                            "expires in {} days",
                            s.certificate_expires_in_seconds / 86400
                        ),
                    ],
                ];
                let _ = write!(out, "{}", render_table(&["FIELD", "VALUE"], &rows));
            }
        }
        AdminCommand::Ring => {
            let r = c.ring(pb::RingRequest {}).await?.into_inner();
            if json {
                let members: Vec<serde_json::Value> = r.members.iter().map(|m| serde_json::json!({
                    "node_id": m.node_id, "name": m.name, "state": state_name(m.state), "overlay_addr": m.overlay_addr,
                    "sip_addr": m.sip_addr, "protocol_version": m.protocol_version, "incarnation": m.incarnation,
                    "since_unix_ms": m.since_unix_ms, "is_self": m.is_self,
                })).collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "self_node_id": r.self_node_id, "members": members, "successors": r.successors,
                        "predecessors": r.predecessors, "replication_factor": r.replication_factor,
                    })
                );
            } else {
                let rows: Vec<Vec<String>> = r
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            format!("{}{}", m.node_id, if m.is_self { " *" } else { "" }),
                            m.name.clone(),
                            state_name(m.state).into(),
                            m.overlay_addr.clone(),
                            m.sip_addr.clone(),
                            m.protocol_version.clone(),
                        ]
                    })
                    .collect();
                let _ = write!(
                    out,
                    "{}",
                    render_table(
                        &["NODE-ID", "NAME", "STATE", "OVERLAY", "SIP", "VERSION"],
                        &rows
                    )
                );
                let _ = writeln!(
                    out,
                    "k = {}; successors: {}",
                    r.replication_factor,
                    r.successors.join(" ")
                );
            }
        }
        AdminCommand::Lookup { aor } => {
            let r = c.lookup(pb::LookupRequest { aor }).await?.into_inner();
            if json {
                let replicas: Vec<serde_json::Value> = r.replicas.iter().map(|p| serde_json::json!({
                    "node_id": p.node_id, "name": p.name, "overlay_addr": p.overlay_addr, "primary": p.primary,
                    "reachable": p.reachable, "bindings": p.bindings, "error": p.error,
                })).collect();
                let bindings: Vec<serde_json::Value> =
                    r.bindings.iter().map(binding_json).collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "canonical_aor": r.canonical_aor, "key": r.key, "hops": r.hops, "replicas": replicas, "bindings": bindings,
                    })
                );
            } else {
                let _ = writeln!(
                    out,
                    "{}  key {}  ({} hop{})",
                    r.canonical_aor,
                    r.key,
                    r.hops,
                    if r.hops == 1 { "" } else { "s" }
                );
                let rows: Vec<Vec<String>> = r
                    .replicas
                    .iter()
                    .map(|p| {
                        vec![
                            p.node_id.clone(),
                            p.name.clone(),
                            if p.primary { "primary" } else { "replica" }.into(),
                            if p.reachable { "up" } else { "down" }.into(),
                        ]
                    })
                    .collect();
                let _ = write!(
                    out,
                    "{}",
                    render_table(&["REPLICA", "NAME", "ROLE", "STATE"], &rows)
                );
                let _ = write!(
                    out,
                    "{}",
                    render_table(
                        &["AOR", "CONTACT", "EXPIRES", "EDGE", "FLOW"],
                        &binding_rows(&r.bindings)
                    )
                );
            }
        }
        AdminCommand::Bindings {
            aor,
            edge_only,
            page_size,
            page_token,
            all,
        } => {
            if !(1..=1000).contains(&page_size) {
                return Err(AdminFailure::Usage(format!(
                    "--page-size: {page_size} is outside 1..=1000"
                )));
            }
            let mut token = page_token;
            let mut bindings = Vec::new();
            let next = loop {
                let r = c
                    .list_bindings(pb::ListBindingsRequest {
                        page_size,
                        page_token: token.clone(),
                        aor: aor.clone().unwrap_or_default(),
                        edge_only,
                    })
                    .await?
                    .into_inner();
                bindings.extend(r.bindings);
                if !all || r.next_page_token.is_empty() {
                    break r.next_page_token;
                }
                token = r.next_page_token;
            };
            if json {
                let list: Vec<serde_json::Value> = bindings.iter().map(binding_json).collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"bindings": list, "next_page_token": next})
                );
            } else {
                let _ = write!(
                    out,
                    "{}",
                    render_table(
                        &["AOR", "CONTACT", "EXPIRES", "EDGE", "FLOW"],
                        &binding_rows(&bindings)
                    )
                );
                if !next.is_empty() {
                    let _ = writeln!(out, "more: --page-token {next}");
                }
            }
        }
        AdminCommand::Bans {
            command: BansCommand::List,
        } => {
            let r = c.list_bans(pb::ListBansRequest {}).await?.into_inner();
            if json {
                let bans: Vec<serde_json::Value> = r
                    .bans
                    .iter()
                    .map(|b| serde_json::json!({"source": b.source, "identity": b.identity, "until_unix_ms": b.until_unix_ms, "refused": b.refused}))
                    .collect();
                let _ = writeln!(out, "{}", serde_json::json!({ "bans": bans }));
            } else {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let rows: Vec<Vec<String>> = r
                    .bans
                    .iter()
                    .map(|b| {
                        vec![
                            b.source.clone(),
                            if b.identity.is_empty() {
                                "(every identity)".into()
                            } else {
                                b.identity.clone()
                            },
                            format!("{}s", (b.until_unix_ms - now_ms).max(0) / 1000),
                            b.refused.to_string(),
                        ]
                    })
                    .collect();
                let _ = write!(
                    out,
                    "{}",
                    render_table(&["source", "identity", "ends in", "refused"], &rows)
                );
            }
        }
        AdminCommand::Bans {
            command: BansCommand::Lift { source },
        } => {
            let r = c
                .lift_ban(pb::LiftBanRequest {
                    source: source.clone(),
                })
                .await?
                .into_inner();
            if json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"source": source, "lifted": r.lifted})
                );
            } else {
                let _ = writeln!(
                    out,
                    "lifted {} ban(s) of {source} here, and on every member",
                    r.lifted
                );
            }
        }
        AdminCommand::Drain {
            node,
            grace_seconds,
        } => {
            let r = c
                .drain(pb::DrainRequest {
                    node_id: node.unwrap_or_default(),
                    grace_seconds,
                })
                .await?
                .into_inner();
            if json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"node_id": r.node_id, "state": state_name(r.state), "keys_to_hand_off": r.keys_to_hand_off})
                );
            } else {
                let _ = writeln!(
                    out,
                    "{} is {} ({} records handed off)",
                    r.node_id,
                    state_name(r.state),
                    r.keys_to_hand_off
                );
            }
        }
        AdminCommand::Ping {
            node,
            count,
            timeout_ms,
        } => {
            let r = c
                .ping(pb::PingRequest {
                    node_id: node,
                    count,
                    timeout_ms,
                })
                .await?
                .into_inner();
            let lost = r.results.iter().filter(|p| p.lost).count();
            if json {
                let results: Vec<serde_json::Value> = r
                    .results
                    .iter()
                    .map(|p| serde_json::json!({"seq": p.seq, "rtt_us": p.rtt_us, "lost": p.lost}))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"node_id": r.node_id, "overlay_addr": r.overlay_addr, "results": results})
                );
            } else {
                for p in &r.results {
                    if p.lost {
                        let _ = writeln!(out, "seq {}: lost", p.seq);
                    } else {
                        let _ = writeln!(out, "seq {}: {:.3} ms", p.seq, p.rtt_us as f64 / 1000.0);
                    }
                }
                let _ = writeln!(
                    out,
                    "{} ({}): {} sent, {} lost",
                    r.node_id,
                    r.overlay_addr,
                    r.results.len(),
                    lost
                );
            }
            if lost == r.results.len() {
                return Err(AdminFailure::Status(tonic::Status::unavailable(
                    "every ping was lost",
                )));
            }
        }
        AdminCommand::Trace { target, max_hops } => {
            use pb::trace_request::Target;
            let t = if target.len() == 32 && target.chars().all(|c| c.is_ascii_hexdigit()) {
                Target::NodeId(target)
            } else if target.len() == 64 && target.chars().all(|c| c.is_ascii_hexdigit()) {
                Target::Key(target)
            } else {
                Target::Aor(target)
            };
            let r = c
                .trace(pb::TraceRequest {
                    target: Some(t),
                    max_hops,
                })
                .await?
                .into_inner();
            if json {
                let hops: Vec<serde_json::Value> = r.hops.iter().map(|h| serde_json::json!({
                    "index": h.index, "node_id": h.node_id, "name": h.name, "overlay_addr": h.overlay_addr,
                    "rtt_us": h.rtt_us, "responsible": h.responsible, "error": h.error,
                })).collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"key": r.key, "hops": hops, "complete": r.complete})
                );
            } else {
                let _ = writeln!(out, "key {}", r.key);
                let rows: Vec<Vec<String>> = r
                    .hops
                    .iter()
                    .map(|h| {
                        vec![
                            h.index.to_string(),
                            h.node_id.clone(),
                            h.name.clone(),
                            format!("{:.3} ms", h.rtt_us as f64 / 1000.0),
                            if h.responsible { "yes" } else { "" }.into(),
                            h.error.clone(),
                        ]
                    })
                    .collect();
                let _ = write!(
                    out,
                    "{}",
                    render_table(
                        &["HOP", "NODE-ID", "NAME", "RTT", "RESPONSIBLE", "NOTE"],
                        &rows
                    )
                );
            }
        }
        AdminCommand::SipTrace {
            aor,
            call_id,
            method,
            max_messages,
            bodies,
        } => {
            let mut stream = c
                .sip_trace(pb::SipTraceRequest {
                    aor: aor.unwrap_or_default(),
                    call_id: call_id.unwrap_or_default(),
                    method: method.unwrap_or_default(),
                    max_messages,
                    include_bodies: bodies,
                })
                .await?
                .into_inner();
            while let Some(ev) = stream.message().await? {
                let dir = if ev.direction == pb::Direction::In as i32 {
                    "<-"
                } else {
                    "->"
                };
                if json {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "time_unix_ms": ev.time_unix_ms, "direction": if dir == "<-" { "in" } else { "out" },
                            "transport": ev.transport, "remote_addr": ev.remote_addr, "method": ev.method,
                            "status": ev.status, "call_id": ev.call_id, "dropped": ev.dropped,
                            "message": String::from_utf8_lossy(&ev.message),
                        })
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{} {dir} {} {}\n{}",
                        ev.time_unix_ms,
                        ev.transport,
                        ev.remote_addr,
                        String::from_utf8_lossy(&ev.message).trim_end()
                    );
                }
                let _ = out.flush();
            }
        }
    }
    Ok(())
}

/// Where provisioning is and how to reach it.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// `HOST:PORT` or a URL.
    pub addr: String,
    /// Mutual TLS with an operator certificate; None for `http://`.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Provisioning {
    /// From the flags: `http://` is plaintext; otherwise `--ca`, `--cert`
    /// and `--key`, or the operator certificate of a `ringmesh dev` farm
    /// whose provisioning listens on this port (its base port + 600), in
    /// `.dev/pBASE/control/` under the working directory.
    pub fn from_args(args: &CtlArgs) -> Result<Provisioning, String> {
        use ringmesh_enrollment::ca::TlsFiles;
        let addr = args.provisioning.clone();
        if addr.starts_with("http://") {
            return Ok(Provisioning { addr, tls: None });
        }
        let files = match (&args.ca, &args.cert, &args.key) {
            (Some(ca), Some(cert), Some(key)) => TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, None) => {
                let dev = dev_control_dir(&addr)
                    .map(|d| TlsFiles::in_dir(&d, "operator"))
                    .filter(|f| f.cert.exists());
                dev.ok_or_else(|| {
                    "provisioning speaks mutual TLS: give --ca, --cert and --key (an operator \
                     certificate from the farm CA), or http://HOST:PORT for one run with --plaintext"
                        .to_string()
                })?
            }
            _ => return Err("--ca, --cert and --key go together".into()),
        };
        let tls = files.client().map_err(|e| e.to_string())?;
        Ok(Provisioning {
            addr,
            tls: Some(tls),
        })
    }
}

/// The TLS to a supernode's admin API: mutual TLS with `--ca`, `--cert`
/// and `--key` when the address is `https://`; none otherwise (a
/// loopback admin API serves plaintext).
fn admin_tls(args: &CtlArgs) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    use ringmesh_enrollment::ca::{NODE_DNS_NAME, TlsFiles};
    if !args.admin.starts_with("https://") {
        return Ok(None);
    }
    let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
        return Err(
            "an https:// admin API speaks mutual TLS: give --ca, --cert and --key (an operator or \
             admin certificate from the farm CA)"
                .into(),
        );
    };
    let files = TlsFiles {
        ca: ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    files
        .client_for(NODE_DNS_NAME)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Where `ringmesh dev` with its default data directory keeps the control
/// plane's certificates, for the provisioning address `addr`.
fn dev_control_dir(addr: &str) -> Option<std::path::PathBuf> {
    let port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
    let base = port.checked_sub(600)?;
    Some(
        std::path::Path::new(".dev")
            .join(format!("p{base}"))
            .join("control"),
    )
}

/// Runs a parsed `ctl` command with the given streams; returns the exit code.
pub async fn run_with(args: CtlArgs, io: &mut Io<'_>) -> Exit {
    let provisioning = Provisioning::from_args(&args);
    match (args.command.clone(), provisioning) {
        (CtlCommand::Cdr { command }, _) => cdr::run(args.json, command, io),
        (CtlCommand::Admin(cmd), _) => match admin_tls(&args) {
            Ok(tls) => admin_command(&args.admin, tls, args.json, cmd, io).await,
            Err(m) => {
                subscriber::report(io, args.json, "USAGE", &m);
                Exit::Usage
            }
        },
        (_, Err(m)) => {
            subscriber::report(io, args.json, "USAGE", &m);
            Exit::Usage
        }
        (CtlCommand::Subscriber { command }, Ok(p)) => {
            subscriber::run(&p, args.json, command, io).await
        }
        (CtlCommand::Trusted { command }, Ok(p)) => trusted::run(&p, args.json, command, io).await,
        (CtlCommand::Peer { command }, Ok(p)) => {
            trusted::run_peer(&p, args.json, command, io).await
        }
    }
}

/// `ringmesh ctl`: runs the command on the process's stdin/stdout/stderr.
pub fn run(args: CtlArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringmesh ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdin = std::io::stdin();
    let (mut lock, mut out, mut err) = (stdin.lock(), std::io::stdout(), std::io::stderr());
    let code = rt.block_on(run_with(
        args,
        &mut Io {
            stdin: &mut lock,
            out: &mut out,
            err: &mut err,
        },
    ));
    ExitCode::from(code as u8)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn parse(args: &[&str]) -> CtlArgs {
        Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
            .unwrap()
            .ctl
    }

    #[test]
    fn tls_comes_from_the_address_and_the_flags() {
        // Plain addresses: a loopback admin API, a plaintext provisioning.
        assert!(admin_tls(&parse(&["status"])).unwrap().is_none());
        let p = Provisioning::from_args(&parse(&[
            "--provisioning",
            "http://h:1",
            "subscriber",
            "list",
        ]));
        assert!(p.unwrap().tls.is_none());
        // TLS without the files says what to give.
        let e = admin_tls(&parse(&["--admin", "https://10.0.0.1:5260", "status"])).unwrap_err();
        assert!(e.contains("--ca, --cert and --key"), "{e}");
        let e = Provisioning::from_args(&parse(&[
            "--provisioning",
            "10.9.9.9:7",
            "subscriber",
            "list",
        ]))
        .unwrap_err();
        assert!(e.contains("--ca, --cert and --key"), "{e}");
        let e =
            Provisioning::from_args(&parse(&["--cert", "x", "subscriber", "list"])).unwrap_err();
        assert!(e.contains("go together"), "{e}");
        // Files that are not there are named.
        let e = admin_tls(&parse(&[
            "--admin",
            "https://h:1",
            "--ca",
            "/nonexistent/ca",
            "--cert",
            "c",
            "--key",
            "k",
            "status",
        ]))
        .unwrap_err();
        assert!(e.contains("/nonexistent/ca"), "{e}");
    }

    #[test]
    fn defaults_and_global_flags() {
        let a = parse(&["subscriber", "get", "alice", "--json"]);
        assert_eq!(a.provisioning, "127.0.0.1:5660");
        assert_eq!(a.admin, "127.0.0.1:5260");
        assert!(a.json);
        let a = parse(&[
            "--provisioning",
            "10.0.0.1:7000",
            "subscriber",
            "list",
            "--all",
        ]);
        assert_eq!(a.provisioning, "10.0.0.1:7000");
        assert!(matches!(
            a.command,
            CtlCommand::Subscriber {
                command: SubscriberCommand::List { all: true, .. }
            }
        ));
        assert!(matches!(
            parse(&["sip-trace", "--method", "INVITE"]).command,
            CtlCommand::Admin(AdminCommand::SipTrace { .. })
        ));
        let e = Cli::try_parse_from(["ctl", "subscriber", "add", "alice"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "usage errors exit 2");
    }

    #[tokio::test]
    async fn admin_commands_report_an_unreachable_node() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut input: &[u8] = b"";
        let code = run_with(
            parse(&["--admin", "127.0.0.1:9", "status"]),
            &mut Io {
                stdin: &mut input,
                out: &mut out,
                err: &mut err,
            },
        )
        .await;
        assert_eq!(code, Exit::Unavailable);
        assert!(
            String::from_utf8(err)
                .unwrap()
                .contains("cannot reach the admin API")
        );
    }
}
