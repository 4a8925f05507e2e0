//! `ringmesh ctl gateway add|list|remove`: the farm's PSTN gateways (one
//! record in the ring, read by every supernode), through a supernode's
//! admin API. `list` shows each gateway's state as the node asked sees it.

use std::io::Write;

use ringmesh_proto::admin as pb;
use ringmesh_proto::admin::admin_client::AdminClient;
use ringmesh_proxy::gateways;
use tonic::transport::Channel;

use super::{AdminFailure, render_table};

/// `ringmesh ctl gateway …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum GatewayCommand {
    /// Add a gateway, or replace the one of that name (admin role).
    Add {
        /// Its name (a-z, 0-9, '-').
        name: String,
        /// Where it takes SIP: `sip:ADDRESS[:PORT][;transport=udp|tcp|tls]`.
        uri: String,
        /// An E.164 prefix of the numbers it takes ('+44'; '+' takes
        /// every number); repeat for more.
        #[arg(long = "prefix", required = true)]
        prefixes: Vec<String>,
        /// Lower is tried first among equally long prefixes.
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// Its share of calls among gateways tied on prefix, priority and
        /// region (1 to 1000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Concurrent calls one supernode sends it at most (0: no cap).
        #[arg(long, default_value_t = 0)]
        capacity: u32,
        /// Where it is.
        #[arg(long, default_value = "")]
        region: String,
    },
    /// The gateways, with their state as the node asked sees it.
    List,
    /// Remove a gateway (admin role).
    Remove { name: String },
}

fn gateway_json(g: &pb::Gateway) -> serde_json::Value {
    serde_json::json!({
        "name": g.name, "uri": g.uri, "prefixes": g.prefixes, "priority": g.priority,
        "weight": g.weight, "capacity": g.capacity, "region": g.region, "up": g.up,
        "active_calls": g.active_calls,
    })
}

pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    json: bool,
    cmd: GatewayCommand,
    out: &mut dyn Write,
) -> Result<(), AdminFailure> {
    match cmd {
        GatewayCommand::Add {
            name,
            uri,
            prefixes,
            priority,
            weight,
            capacity,
            region,
        } => {
            // Checked here as the node checks it: a typo costs no round trip.
            let (addr, transport) = gateways::parse_uri(&uri).map_err(AdminFailure::Usage)?;
            let record = gateways::GatewayRecord {
                name,
                addr,
                transport,
                prefixes,
                priority,
                weight,
                capacity,
                region,
                expires_at_ms: 0,
            };
            record.check().map_err(AdminFailure::Usage)?;
            let g = c
                .add_gateway(pb::AddGatewayRequest {
                    gateway: Some(pb::Gateway {
                        name: record.name,
                        uri,
                        prefixes: record.prefixes,
                        priority,
                        weight,
                        capacity,
                        region: record.region,
                        up: false,
                        active_calls: 0,
                    }),
                })
                .await?
                .into_inner()
                .gateway
                .unwrap_or_default();
            if json {
                let _ = writeln!(out, "{}", gateway_json(&g));
            } else {
                let _ = writeln!(out, "gateway {} added: {}", g.name, g.uri);
            }
        }
        GatewayCommand::List => {
            let r = c
                .list_gateways(pb::ListGatewaysRequest {})
                .await?
                .into_inner();
            if json {
                let list: Vec<_> = r.gateways.iter().map(gateway_json).collect();
                let _ = writeln!(out, "{}", serde_json::json!({ "gateways": list }));
            } else {
                let rows: Vec<Vec<String>> = r
                    .gateways
                    .iter()
                    .map(|g| {
                        vec![
                            g.name.clone(),
                            g.uri.clone(),
                            g.prefixes.join(" "),
                            g.priority.to_string(),
                            g.weight.to_string(),
                            if g.capacity == 0 {
                                format!("{}/-", g.active_calls)
                            } else {
                                format!("{}/{}", g.active_calls, g.capacity)
                            },
                            g.region.clone(),
                            if g.up { "up" } else { "down" }.to_string(),
                        ]
                    })
                    .collect();
                let _ = write!(
                    out,
                    "{}",
                    render_table(
                        &[
                            "name", "uri", "prefixes", "priority", "weight", "calls", "region",
                            "state"
                        ],
                        &rows
                    )
                );
            }
        }
        GatewayCommand::Remove { name } => {
            let r = c
                .remove_gateway(pb::RemoveGatewayRequest { name: name.clone() })
                .await?
                .into_inner();
            if json {
                let _ = writeln!(out, "{}", serde_json::json!({ "removed": r.removed }));
            } else if r.removed {
                let _ = writeln!(out, "gateway {name} removed");
            } else {
                let _ = writeln!(out, "no gateway {name}");
            }
        }
    }
    Ok(())
}
