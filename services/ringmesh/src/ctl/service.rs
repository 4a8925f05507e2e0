//! `ringmesh ctl service list|advertise|withdraw`: service discovery on
//! the ring, through a supernode's admin API. `advertise --every SECS` is
//! the registration command run beside a relay (coturn): it advertises
//! the relay every SECS seconds with the load it reads, and withdraws it
//! when stopped (SIGINT or SIGTERM).

use std::io::Write;
use std::time::Duration;

use ringmesh_proto::admin as pb;
use ringmesh_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{AdminFailure, render_table};

/// `ringmesh ctl service …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServiceCommand {
    /// The live instances of a service, best first for a region.
    List {
        /// The service (e.g. turn).
        name: String,
        /// The client's region: its instances first.
        #[arg(long, default_value = "")]
        region: String,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Advertise an instance (admin role); with --every, again and again
    /// until stopped, then withdraw it.
    Advertise {
        /// The service (e.g. turn).
        name: String,
        /// How clients reach it (e.g. turn:192.0.2.7:3478?transport=udp).
        uri: String,
        /// Where it is.
        #[arg(long, default_value = "")]
        region: String,
        /// What it can carry (TURN: allocations).
        #[arg(long)]
        capacity: u32,
        /// What it carries now.
        #[arg(long, default_value_t = 0)]
        load: u32,
        /// Read the load from this file (one integer) at each round.
        #[arg(long, conflicts_with = "load")]
        load_file: Option<std::path::PathBuf>,
        /// Seconds it stays without being advertised again (1 to 3600).
        #[arg(long, default_value_t = 30)]
        ttl: u32,
        /// Advertise every SECS seconds until stopped (at most ttl / 2).
        #[arg(long)]
        every: Option<u32>,
    },
    /// Withdraw an instance (admin role).
    Withdraw {
        /// The service.
        name: String,
        /// The instance's URI.
        uri: String,
    },
}

fn instance_json(i: &pb::ServiceInstance) -> serde_json::Value {
    serde_json::json!({
        "name": i.name, "uri": i.uri, "region": i.region, "capacity": i.capacity,
        "load": i.load, "expires_unix_ms": i.expires_unix_ms,
    })
}

/// The load in `file`: one integer.
fn read_load(file: &std::path::Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("--load-file {}: {e}", file.display()))?;
    text.trim().parse().map_err(|_| {
        format!(
            "--load-file {}: {:?} is not a number",
            file.display(),
            text.trim()
        )
    })
}

pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    json: bool,
    cmd: ServiceCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), AdminFailure> {
    match cmd {
        ServiceCommand::List {
            name,
            region,
            limit,
        } => {
            let r = c
                .list_services(pb::ListServicesRequest {
                    name,
                    region,
                    limit,
                })
                .await?
                .into_inner();
            if json {
                let list: Vec<_> = r.instances.iter().map(instance_json).collect();
                let _ = writeln!(out, "{}", serde_json::json!({ "instances": list }));
            } else {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let rows: Vec<Vec<String>> = r
                    .instances
                    .iter()
                    .map(|i| {
                        vec![
                            i.uri.clone(),
                            i.region.clone(),
                            format!("{}/{}", i.load, i.capacity),
                            format!("{}s", i.expires_unix_ms.saturating_sub(now_ms) / 1000),
                        ]
                    })
                    .collect();
                let _ = write!(
                    out,
                    "{}",
                    render_table(&["uri", "region", "load", "expires in"], &rows)
                );
            }
        }
        ServiceCommand::Withdraw { name, uri } => {
            advertise(c, instance(name, uri, String::new(), 1, 0), 0).await?;
            if !json {
                let _ = writeln!(out, "withdrawn");
            } else {
                let _ = writeln!(out, "{}", serde_json::json!({"withdrawn": true}));
            }
        }
        ServiceCommand::Advertise {
            name,
            uri,
            region,
            capacity,
            load,
            load_file,
            ttl,
            every,
        } => {
            if let Some(e) = every
                && (e == 0 || e > ttl / 2)
            {
                return Err(AdminFailure::Usage(format!(
                    "--every {e}: must be 1 to half of --ttl ({ttl}), so that an instance never lapses between two rounds"
                )));
            }
            let mut load = match &load_file {
                Some(f) => read_load(f).map_err(AdminFailure::Usage)?,
                None => load,
            };
            let one = instance(name, uri, region, capacity, load);
            let done = advertise(c, one.clone(), ttl).await?;
            if json {
                let _ = writeln!(out, "{}", instance_json(&done));
            } else {
                let _ = writeln!(
                    out,
                    "{} {} advertised in region {:?} for {ttl}s",
                    done.name, done.uri, done.region
                );
            }
            let Some(every) = every else { return Ok(()) };
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| AdminFailure::Usage(format!("cannot watch SIGTERM: {e}")))?;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(u64::from(every))) => {}
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                }
                if let Some(f) = &load_file {
                    match read_load(f) {
                        Ok(l) => load = l,
                        Err(e) => {
                            let _ = writeln!(err, "{e}; advertising the last load read ({load})");
                        }
                    }
                }
                // A round that fails is told and tried again next time:
                // the instance lapses only after --ttl without one.
                if let Err(e) = advertise(
                    c,
                    pb::ServiceInstance {
                        load,
                        ..one.clone()
                    },
                    ttl,
                )
                .await
                {
                    let _ = writeln!(err, "advertising failed: {}", e.message());
                }
            }
            advertise(c, one, 0).await?;
            let _ = writeln!(err, "withdrawn");
        }
    }
    Ok(())
}

fn instance(
    name: String,
    uri: String,
    region: String,
    capacity: u32,
    load: u32,
) -> pb::ServiceInstance {
    pb::ServiceInstance {
        name,
        uri,
        region,
        capacity,
        load,
        expires_unix_ms: 0,
    }
}

async fn advertise(
    c: &mut AdminClient<Channel>,
    instance: pb::ServiceInstance,
    ttl_seconds: u32,
) -> Result<pb::ServiceInstance, tonic::Status> {
    let r = c
        .advertise_service(pb::AdvertiseServiceRequest {
            instance: Some(instance),
            ttl_seconds,
        })
        .await?
        .into_inner();
    Ok(r.instance.unwrap_or_default())
}
