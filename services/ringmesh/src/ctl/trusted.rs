//! `ringmesh ctl trusted add|list|get|remove`: the trusted elements
//! (front ends, application servers, peer farms, gateways, load
//! generators), kept by provisioning and followed by every supernode;
//! `ringmesh ctl peer add|list|remove`: the peer farms among them, with the
//! domains they serve.

use ringmesh_proto::provisioning as pb;
use ringmesh_proto::provisioning::provisioning_client::ProvisioningClient;
use ringmesh_proto::provisioning::trusted_element::Matcher;
use ringmesh_provisioning::validate;
use ringmesh_proxy::trust::Kind;
use serde_json::{Value, json};

use super::subscriber::{Exit, Failure, Io, TIMEOUT, conclude, request};
use super::{Provisioning, render_table};

/// `ringmesh ctl trusted` commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TrustedCommand {
    /// Trust an element: its requests skip the phone rules (digest, identity
    /// checks, per-source limits, brute-force bans) on every supernode.
    Add {
        /// Unique name (letters, digits, '-', '_', '.').
        name: String,
        /// What identifies it: an address, a network (at least a /8, or a
        /// /32 for IPv6), either with a port (`192.0.2.10:5080`,
        /// `[2001:db8::/32]:5080`), or `tls:NAME` for the name in its TLS
        /// client certificate.
        matcher: String,
        /// front-end, app-server, peer-farm, gateway or load-generator.
        #[arg(long)]
        kind: String,
        /// Who runs it and why it is trusted.
        #[arg(long, default_value = "")]
        description: String,
        /// A domain a peer farm serves (repeat for more): this farm's
        /// subscribers may call it.
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// A peer farm's requests per second each supernode takes (0: no
        /// limit); beyond it, 503 with Retry-After.
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// A peer farm outside the trust domain: the identities it asserts
        /// are removed.
        #[arg(long)]
        strip_identity: bool,
    },
    /// List every trusted element.
    List,
    /// Show one trusted element.
    Get {
        /// The element's name.
        name: String,
    },
    /// Stop trusting an element: its peers are phones again.
    Remove {
        /// The element's name.
        name: String,
    },
}

/// `ringmesh ctl peer` commands: the peer farms among the trusted
/// elements.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PeerCommand {
    /// Peer with another farm: requests on TLS connections whose client
    /// certificate names TLS_NAME come from it (and its asserted identities
    /// are kept); this farm's subscribers may call the domains it serves.
    Add {
        /// Unique name (letters, digits, '-', '_', '.').
        name: String,
        /// The DNS name its TLS certificate carries.
        #[arg(long)]
        tls_name: String,
        /// A domain it serves (repeat for more).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Its requests per second each supernode takes (0: no limit);
        /// beyond it, 503 with Retry-After.
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// It is outside this farm's trust domain: the identities it
        /// asserts (P-Asserted-Identity…) are removed, not kept.
        #[arg(long)]
        strip_identity: bool,
        /// Who runs it.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the peer farms.
    List,
    /// Stop peering: its domains are refused, its requests are a phone's.
    Remove {
        /// The peer's name.
        name: String,
    },
}

impl From<PeerCommand> for TrustedCommand {
    fn from(c: PeerCommand) -> TrustedCommand {
        match c {
            PeerCommand::Add {
                name,
                tls_name,
                domains,
                rate,
                strip_identity,
                description,
            } => TrustedCommand::Add {
                name,
                matcher: format!("tls:{tls_name}"),
                kind: Kind::PeerFarm.as_str().into(),
                description,
                domains,
                rate,
                strip_identity,
            },
            PeerCommand::List => TrustedCommand::List,
            PeerCommand::Remove { name } => TrustedCommand::Remove { name },
        }
    }
}

/// Runs one `ctl trusted` command against provisioning `p`.
pub async fn run(p: &Provisioning, json: bool, cmd: TrustedCommand, io: &mut Io<'_>) -> Exit {
    let outcome = execute(p, json, cmd, None, io).await;
    conclude(&p.addr, json, outcome, io)
}

/// Runs one `ctl peer` command against provisioning `p`.
pub async fn run_peer(p: &Provisioning, json: bool, cmd: PeerCommand, io: &mut Io<'_>) -> Exit {
    let outcome = execute(p, json, cmd.into(), Some(Kind::PeerFarm), io).await;
    conclude(&p.addr, json, outcome, io)
}

/// What `add` says beyond the name, matcher and kind.
#[derive(Debug, Default)]
struct Extra<'a> {
    description: &'a str,
    domains: &'a [String],
    rate: u32,
    strip_identity: bool,
}

/// The API message of `add`, checked before anything is sent.
fn element(
    name: &str,
    matcher: &str,
    kind: &str,
    extra: &Extra<'_>,
) -> Result<pb::TrustedElement, Failure> {
    let kind: Kind = kind
        .parse()
        .map_err(|m: String| Failure::Usage(format!("--kind: {m}")))?;
    let matcher = match matcher.strip_prefix("tls:") {
        Some(n) => Matcher::TlsName(n.to_string()),
        None => Matcher::Address(matcher.to_string()),
    };
    let e = pb::TrustedElement {
        name: name.to_string(),
        kind: validate::trusted_kind_to_pb(kind) as i32,
        matcher: Some(matcher),
        description: extra.description.to_string(),
        domains: extra.domains.to_vec(),
        rate_limit: extra.rate,
        strip_identity: extra.strip_identity,
        ..Default::default()
    };
    let checked = validate::trusted_element("", &e)?;
    Ok(validate::trusted_element_to_pb(&checked, extra.description))
}

fn matcher_text(e: &pb::TrustedElement) -> String {
    match &e.matcher {
        Some(Matcher::Address(a)) => a.clone(),
        Some(Matcher::TlsName(n)) => format!("tls:{n}"),
        None => String::new(),
    }
}

fn kind_text(e: &pb::TrustedElement) -> &'static str {
    validate::trusted_kind("kind", e.kind)
        .map(Kind::as_str)
        .unwrap_or("unknown")
}

fn element_json(e: &pb::TrustedElement) -> Value {
    json!({
        "name": e.name,
        "kind": kind_text(e),
        "matcher": matcher_text(e),
        "description": e.description,
        "domains": e.domains,
        "rate_limit": e.rate_limit,
        "strip_identity": e.strip_identity,
        "revision": e.revision,
        "created_unix_ms": e.created_unix_ms,
    })
}

fn rows(es: &[pb::TrustedElement]) -> Vec<Vec<String>> {
    es.iter()
        .map(|e| {
            vec![
                e.name.clone(),
                kind_text(e).to_string(),
                matcher_text(e),
                e.domains.join(","),
                e.description.clone(),
            ]
        })
        .collect()
}

const HEADER: [&str; 5] = ["NAME", "KIND", "MATCHES", "DOMAINS", "DESCRIPTION"];

async fn execute(
    p: &Provisioning,
    json: bool,
    cmd: TrustedCommand,
    only: Option<Kind>,
    io: &mut Io<'_>,
) -> Result<(), Failure> {
    let name_ok = |n: &str| validate::trusted_name("name", n).map(|_| ());
    let add = match &cmd {
        TrustedCommand::Add {
            name,
            matcher,
            kind,
            description,
            domains,
            rate,
            strip_identity,
        } => Some(element(
            name,
            matcher,
            kind,
            &Extra {
                description,
                domains,
                rate: *rate,
                strip_identity: *strip_identity,
            },
        )?),
        TrustedCommand::Get { name } | TrustedCommand::Remove { name } => {
            name_ok(name)?;
            None
        }
        TrustedCommand::List => None,
    };
    let channel = ringmesh_provisioning::cache::channel(&p.addr, TIMEOUT, p.tls.as_ref())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let mut client = ProvisioningClient::new(channel);
    let shown: Vec<pb::TrustedElement> = match cmd {
        TrustedCommand::Add { .. } => {
            let e = client
                .create_trusted_element(request(pb::CreateTrustedElementRequest { element: add }))
                .await?
                .into_inner();
            vec![e]
        }
        TrustedCommand::Get { name } => {
            vec![
                client
                    .get_trusted_element(request(pb::GetTrustedElementRequest { name }))
                    .await?
                    .into_inner(),
            ]
        }
        TrustedCommand::List => {
            let mut r = client
                .list_trusted_elements(request(pb::ListTrustedElementsRequest {}))
                .await?
                .into_inner();
            if let Some(kind) = only {
                let wanted = validate::trusted_kind_to_pb(kind) as i32;
                r.elements.retain(|e| e.kind == wanted);
            }
            if json {
                let list: Vec<Value> = r.elements.iter().map(element_json).collect();
                let _ = writeln!(
                    io.out,
                    "{}",
                    json!({"elements": list, "revision": r.revision})
                );
            } else if r.elements.is_empty() {
                let what = if only.is_some() {
                    "peers"
                } else {
                    "trusted elements"
                };
                let _ = writeln!(io.out, "no {what}");
            } else {
                let _ = write!(io.out, "{}", render_table(&HEADER, &rows(&r.elements)));
            }
            return Ok(());
        }
        TrustedCommand::Remove { name } => {
            let r = client
                .delete_trusted_element(request(pb::DeleteTrustedElementRequest {
                    name: name.clone(),
                    expected_revision: 0,
                }))
                .await?
                .into_inner();
            if json {
                let _ = writeln!(
                    io.out,
                    "{}",
                    json!({"name": name, "removed": true, "revision": r.revision})
                );
            } else {
                let _ = writeln!(io.out, "removed {name} (revision {})", r.revision);
            }
            return Ok(());
        }
    };
    if json {
        let _ = writeln!(io.out, "{}", element_json(&shown[0]));
    } else {
        let _ = write!(io.out, "{}", render_table(&HEADER, &rows(&shown)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_is_checked_before_anything_is_sent() {
        let pstn = Extra {
            description: "PSTN",
            ..Extra::default()
        };
        let ok = element("gw", "192.0.2.0/24:5080", "gateway", &pstn).unwrap_or_else(|_| panic!());
        assert_eq!(
            ok.matcher,
            Some(Matcher::Address("192.0.2.0/24:5080".into()))
        );
        let tls = element(
            "pcscf",
            "tls:PCSCF.example.net",
            "front-end",
            &Extra::default(),
        )
        .unwrap_or_else(|_| panic!());
        assert_eq!(
            tls.matcher,
            Some(Matcher::TlsName("pcscf.example.net".into()))
        );
        for (name, m, kind, why) in [
            ("gw", "192.0.2.1", "robot", "--kind"),
            ("gw", "0.0.0.0/0", "gateway", "address"),
            ("", "192.0.2.1", "gateway", "name"),
            ("gw", "192.0.2.1", "gateway", "\u{7}"),
        ] {
            let extra = Extra {
                description: why,
                ..Extra::default()
            };
            match element(name, m, kind, &extra) {
                Err(Failure::Usage(msg)) => eprintln!("{why}: {msg}"),
                _ => panic!("{name} {m} {kind} must be refused"),
            }
        }
    }

    #[test]
    fn a_peer_is_a_peer_farm_known_by_its_certificate_with_its_domains() {
        let TrustedCommand::Add {
            name,
            matcher,
            kind,
            description,
            domains,
            rate,
            strip_identity,
        } = TrustedCommand::from(PeerCommand::Add {
            name: "b".into(),
            tls_name: "B.test".into(),
            domains: vec!["B.test".into()],
            rate: 40,
            strip_identity: true,
            description: String::new(),
        })
        else {
            panic!("add stays add");
        };
        let extra = Extra {
            description: &description,
            domains: &domains,
            rate,
            strip_identity,
        };
        let e = element(&name, &matcher, &kind, &extra).unwrap_or_else(|_| panic!());
        assert_eq!(e.matcher, Some(Matcher::TlsName("b.test".into())));
        assert_eq!(e.kind, pb::TrustedElementKind::PeerFarm as i32);
        assert_eq!(e.domains, ["b.test"]);
        assert_eq!((e.rate_limit, e.strip_identity), (40, true));
        let bad_domain = Extra {
            domains: &["not a domain".into()],
            ..Extra::default()
        };
        match element("b", "tls:b.test", "peer-farm", &bad_domain) {
            Err(Failure::Usage(msg)) => assert!(msg.contains("domains"), "{msg}"),
            _ => panic!("a bad domain must be refused"),
        }
        let gateway_rate = Extra {
            rate: 5,
            ..Extra::default()
        };
        match element("g", "192.0.2.1", "gateway", &gateway_rate) {
            Err(Failure::Usage(msg)) => assert!(msg.contains("rate_limit"), "{msg}"),
            _ => panic!("only a peer farm has a rate limit"),
        }
    }
}
