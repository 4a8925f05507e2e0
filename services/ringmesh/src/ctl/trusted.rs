//! `ringmesh ctl trusted add|list|get|remove`: the trusted elements
//! (front ends, application servers, peer farms, gateways, load
//! generators), kept by provisioning and followed by every supernode.

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

/// Runs one `ctl trusted` command against provisioning `p`.
pub async fn run(p: &Provisioning, json: bool, cmd: TrustedCommand, io: &mut Io<'_>) -> Exit {
    let outcome = execute(p, json, cmd, io).await;
    conclude(&p.addr, json, outcome, io)
}

/// The API message of `add`, checked before anything is sent.
fn element(
    name: &str,
    matcher: &str,
    kind: &str,
    description: &str,
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
        description: description.to_string(),
        ..Default::default()
    };
    let checked = validate::trusted_element("", &e)?;
    Ok(validate::trusted_element_to_pb(&checked, description))
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
                e.description.clone(),
            ]
        })
        .collect()
}

const HEADER: [&str; 4] = ["NAME", "KIND", "MATCHES", "DESCRIPTION"];

async fn execute(
    p: &Provisioning,
    json: bool,
    cmd: TrustedCommand,
    io: &mut Io<'_>,
) -> Result<(), Failure> {
    let name_ok = |n: &str| validate::trusted_name("name", n).map(|_| ());
    let add = match &cmd {
        TrustedCommand::Add {
            name,
            matcher,
            kind,
            description,
        } => Some(element(name, matcher, kind, description)?),
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
            let r = client
                .list_trusted_elements(request(pb::ListTrustedElementsRequest {}))
                .await?
                .into_inner();
            if json {
                let list: Vec<Value> = r.elements.iter().map(element_json).collect();
                let _ = writeln!(
                    io.out,
                    "{}",
                    json!({"elements": list, "revision": r.revision})
                );
            } else if r.elements.is_empty() {
                let _ = writeln!(io.out, "no trusted elements");
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
        let ok = element("gw", "192.0.2.0/24:5080", "gateway", "PSTN").unwrap_or_else(|_| panic!());
        assert_eq!(
            ok.matcher,
            Some(Matcher::Address("192.0.2.0/24:5080".into()))
        );
        let tls =
            element("pcscf", "tls:PCSCF.example.net", "front-end", "").unwrap_or_else(|_| panic!());
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
            match element(name, m, kind, why) {
                Err(Failure::Usage(msg)) => eprintln!("{why}: {msg}"),
                _ => panic!("{name} {m} {kind} must be refused"),
            }
        }
    }
}
