//! The DNS the proxy core asks for ([`Query`], answered as [`Resolved`]:
//! NAPTR, SRV, and a name's A and AAAA records together),
//! with hickory-resolver: the servers of `--dns-server`, or the system's
//! (`/etc/resolv.conf`). Every answer comes within [`DEADLINE`]; the
//! resolver caches what it got for the records' TTLs (and NXDOMAIN for its
//! SOA's minimum), so a number called again costs no query.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{RData, RecordType};
use ringmesh_proxy::dns::{Naptr, Query, Resolved, Srv};

/// How long a question may take, every retry included.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// A resolver for the proxy core's questions.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

impl Dns {
    /// A resolver asking `server` (UDP, then TCP for truncated answers), or
    /// the system's servers.
    pub fn new(server: Option<SocketAddr>) -> anyhow::Result<Dns> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    provider,
                )
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| anyhow::anyhow!("cannot read the system's DNS configuration: {e}"))?,
        };
        let opts = builder.options_mut();
        opts.timeout = DEADLINE / 2;
        opts.attempts = 1;
        let resolver = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot make a DNS resolver: {e}"))?;
        Ok(Dns { resolver })
    }

    /// Answers `query`.
    pub async fn resolve(&self, query: Query) -> Resolved {
        let (name, kind) = match &query {
            Query::Naptr { name } => (name, RecordType::NAPTR),
            Query::Srv { name } => (name, RecordType::SRV),
            Query::Addrs { name } => {
                let lookup = self.resolver.lookup_ip(name.as_str());
                return match tokio::time::timeout(DEADLINE, lookup).await {
                    Err(_) => Resolved::Failed(format!("no answer for {name} within {DEADLINE:?}")),
                    Ok(Err(e)) => failure(e),
                    Ok(Ok(found)) => Resolved::Addrs(found.iter().collect()),
                };
            }
        };
        let lookup = self.resolver.lookup(name.as_str(), kind);
        let found = match tokio::time::timeout(DEADLINE, lookup).await {
            Err(_) => return Resolved::Failed(format!("no answer for {name} within {DEADLINE:?}")),
            Ok(Err(e)) => return failure(e),
            Ok(Ok(found)) => found,
        };
        let records = found.answers().iter().map(|r| &r.data);
        match kind {
            RecordType::NAPTR => Resolved::Naptr(
                records
                    .filter_map(|d| match d {
                        RData::NAPTR(n) => Some(Naptr {
                            order: n.order,
                            preference: n.preference,
                            flags: String::from_utf8_lossy(&n.flags).into_owned(),
                            services: String::from_utf8_lossy(&n.services).into_owned(),
                            regexp: String::from_utf8_lossy(&n.regexp).into_owned(),
                            replacement: n.replacement.to_ascii(),
                        }),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => Resolved::Srv(
                records
                    .filter_map(|d| match d {
                        RData::SRV(r) => Some(Srv {
                            priority: r.priority,
                            weight: r.weight,
                            port: r.port,
                            target: r.target.to_ascii(),
                        }),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }
}

/// A failed lookup as the proxy core sees it: no such name or record, or
/// no answer.
fn failure(e: NetError) -> Resolved {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(_)) => Resolved::NotFound,
        e => Resolved::Failed(e.to_string()),
    }
}
