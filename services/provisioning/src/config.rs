//! Typed configuration of `ringmesh provisioning`, resolved once at the
//! edge, with the conventions of the supernode's config (STYLE.md §9):
//! every setting is a flag `--etcd-timeout-ms`, a TOML key
//! `etcd-timeout-ms` in the `--config` file and an environment variable
//! `RINGMESH_ETCD_TIMEOUT_MS`. A flag beats the environment, which beats
//! the file; unknown file keys are rejected; errors name the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The default API address: `ringmesh dev`'s base port 5060 + 600.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5660";

/// The `ringmesh provisioning` flags; each also reads `RINGMESH_<KEY>`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProvisioningArgs {
    /// TOML file with the same keys as the flags (unknown keys are errors).
    #[arg(long, env = "RINGMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where to serve the gRPC API (HOST:PORT).
    #[arg(long, env = "RINGMESH_LISTEN")]
    pub listen: Option<String>,
    /// Data directory of the embedded store (used when no --etcd is given).
    #[arg(long, env = "RINGMESH_DATA")]
    pub data: Option<PathBuf>,
    /// etcd endpoint URL, e.g. http://127.0.0.1:2379 (repeatable); given,
    /// subscribers live in etcd instead of the embedded store.
    #[arg(long, env = "RINGMESH_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Prefix of every etcd key.
    #[arg(long, env = "RINGMESH_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Deadline of every etcd call, milliseconds.
    #[arg(long, env = "RINGMESH_ETCD_TIMEOUT_MS")]
    pub etcd_timeout_ms: Option<u64>,
    /// The farm's SIP domain: the realm of the stored HA1 credentials.
    #[arg(long, env = "RINGMESH_DOMAIN")]
    pub domain: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz (HOST:PORT).
    #[arg(long, env = "RINGMESH_METRICS")]
    pub metrics: Option<String>,
    /// Seconds between SYNCED keep-alives on idle Watch streams.
    #[arg(long, env = "RINGMESH_WATCH_KEEPALIVE")]
    pub watch_keepalive: Option<u64>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or ringmesh=debug.
    #[arg(long, env = "RINGMESH_LOG")]
    pub log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    etcd: Option<Vec<String>>,
    etcd_prefix: Option<String>,
    etcd_timeout_ms: Option<u64>,
    domain: Option<String>,
    metrics: Option<String>,
    watch_keepalive: Option<u64>,
    log: Option<String>,
}

/// Where subscribers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// etcd.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        timeout: Duration,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ProvisioningConfig {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    /// The realm of HA1 values (lower-case).
    pub domain: String,
    pub metrics: Option<SocketAddr>,
    pub watch_keepalive: Duration,
    pub log: String,
}

/// A configuration error that names the key to fix.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message} (set by --{key}, {env} or `{key}` in the config file)")]
pub struct ConfigError {
    pub key: &'static str,
    pub env: String,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        env: format!("RINGMESH_{}", key.to_ascii_uppercase().replace('-', "_")),
        message: message.into(),
    }
}

/// Checks an etcd endpoint: `http://HOST:PORT` or `HOST:PORT`.
pub fn etcd_endpoint(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").unwrap_or(s);
    if s.starts_with("https://") {
        return Err(format!(
            "'{s}': TLS to etcd is not supported yet; use http:// inside the cluster network"
        ));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not http://HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("'{s}' is not http://HOST:PORT"));
    }
    Ok(format!("http://{rest}"))
}

impl ProvisioningArgs {
    /// Merges flags/environment over the file and validates the result.
    pub fn resolve(self) -> Result<ProvisioningConfig, ConfigError> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| err("config", format!("{}: {}", path.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            err(
                "listen",
                format!("'{listen}' is not HOST:PORT with an IP address"),
            )
        })?;
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
        let metrics = match self.metrics.or(file.metrics) {
            Some(m) => Some(m.parse().map_err(|_| {
                err(
                    "metrics",
                    format!("'{m}' is not HOST:PORT with an IP address"),
                )
            })?),
            None => None,
        };
        let etcd = if self.etcd.is_empty() {
            file.etcd.unwrap_or_default()
        } else {
            self.etcd
        };
        let store = if etcd.is_empty() {
            StoreConfig::Embedded(
                self.data
                    .or(file.data)
                    .unwrap_or_else(|| PathBuf::from("./ringmesh-data/provisioning")),
            )
        } else {
            let endpoints = etcd
                .iter()
                .map(|e| etcd_endpoint(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| err("etcd", m))?;
            let prefix = self
                .etcd_prefix
                .or(file.etcd_prefix)
                .unwrap_or_else(|| "/ringmesh/".into());
            if !prefix.starts_with('/') || !prefix.ends_with('/') {
                return Err(err(
                    "etcd-prefix",
                    format!("'{prefix}' must start and end with '/'"),
                ));
            }
            let ms = self
                .etcd_timeout_ms
                .or(file.etcd_timeout_ms)
                .unwrap_or(2000);
            if !(50..=60_000).contains(&ms) {
                return Err(err("etcd-timeout-ms", format!("{ms} is outside 50..60000")));
            }
            StoreConfig::Etcd {
                endpoints,
                prefix,
                timeout: Duration::from_millis(ms),
            }
        };
        let keepalive = self.watch_keepalive.or(file.watch_keepalive).unwrap_or(30);
        if !(1..=3600).contains(&keepalive) {
            return Err(err(
                "watch-keepalive",
                format!("{keepalive} is outside 1..3600 seconds"),
            ));
        }
        Ok(ProvisioningConfig {
            listen,
            store,
            domain: domain.to_ascii_lowercase(),
            metrics,
            watch_keepalive: Duration::from_secs(keepalive),
            log: self.log.or(file.log).unwrap_or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = ProvisioningArgs::default().resolve().unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(matches!(c.store, StoreConfig::Embedded(_)));
        assert_eq!(c.domain, "ringmesh.test");
    }

    #[test]
    fn etcd_and_errors_name_the_key() {
        let c = ProvisioningArgs {
            etcd: vec!["127.0.0.1:2379".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(
            matches!(&c.store, StoreConfig::Etcd { endpoints, .. } if endpoints == &["http://127.0.0.1:2379"])
        );
        let e = ProvisioningArgs {
            etcd: vec!["nowhere".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "etcd");
        let e = ProvisioningArgs {
            listen: Some("localhost".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "listen");
        assert!(e.to_string().contains("RINGMESH_LISTEN"));
    }

    #[test]
    fn file_keys_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "domain = \"file.example\"\nlisten = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        let c = ProvisioningArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:7001".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.domain, "file.example");
        assert_eq!(c.listen.port(), 7001, "a flag beats the file");
        std::fs::write(&path, "domian = \"x\"\n").unwrap();
        let e = ProvisioningArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("domian"));
    }
}
