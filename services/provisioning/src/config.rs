//! Typed configuration of `ringmesh provisioning`, resolved once at the
//! edge, with the conventions of every Ringmesh service (`ringmesh-config`):
//! every setting is a flag `--etcd-timeout-ms`, a TOML key
//! `etcd-timeout-ms` in the `--config` file and an environment variable
//! `RINGMESH_ETCD_TIMEOUT_MS`, declared once with its default. A flag beats
//! the environment, which beats the file; unknown file keys are rejected;
//! errors name the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use ringmesh_config::ConfigError;
pub use ringmesh_config::TlsPaths;
use ringmesh_config::{ServerTlsArgs, ServiceArgs, err, in_range};
use serde::{Deserialize, Serialize};

/// The default API address: `ringmesh dev`'s base port 5060 + 600.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5660";

/// The `ringmesh provisioning` settings: each is a flag, `RINGMESH_<KEY>`
/// in the environment, and a key of the `--config` file.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProvisioningArgs {
    /// TOML file with the same keys as the flags (unknown keys are errors).
    #[arg(long, env = "RINGMESH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where to serve the gRPC API (HOST:PORT; port 0: one the kernel picks).
    #[arg(long, env = "RINGMESH_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Data directory of the embedded store (used when no --etcd is given).
    /// Default: $XDG_DATA_HOME/ringmesh/provisioning, else
    /// $HOME/.local/share/ringmesh/provisioning.
    #[arg(long, env = "RINGMESH_DATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Prefix of every etcd key.
    #[arg(long, env = "RINGMESH_ETCD_PREFIX", default_value = "/ringmesh/")]
    pub etcd_prefix: String,
    /// Deadline of every etcd call, milliseconds.
    #[arg(long, env = "RINGMESH_ETCD_TIMEOUT_MS", default_value_t = 2000)]
    pub etcd_timeout_ms: u64,
    /// The farm's SIP domain: the realm of the stored HA1 credentials.
    #[arg(long, env = "RINGMESH_DOMAIN", default_value = "ringmesh.test")]
    pub domain: String,
    /// Seconds between SYNCED keep-alives on idle Watch streams.
    #[arg(long, env = "RINGMESH_WATCH_KEEPALIVE", default_value_t = 30)]
    pub watch_keepalive: u64,
    /// The enrollment service (HOST:PORT), followed for the farm's
    /// revocations: a revoked node's certificate is refused at once rather
    /// than when it expires. Needs mutual TLS (its CRL is checked against
    /// --tls-ca).
    #[arg(long, env = "RINGMESH_ENROLLMENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<String>,
    /// Shared with every Ringmesh service; given --etcd, subscribers live
    /// in etcd instead of the embedded store.
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs,
    /// The API's mutual TLS (required unless --plaintext).
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: ServerTlsArgs,
}

/// Where subscribers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// etcd.
    Etcd {
        etcd: ringmesh_config::Etcd,
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
    /// Mutual TLS; None serves plaintext (`--plaintext`).
    pub tls: Option<TlsPaths>,
    /// Where to follow revocations from.
    pub enrollment: Option<String>,
}

impl ProvisioningArgs {
    /// Parses `args` (flags only) as the binary would, environment
    /// included, and resolves them: for tests and tools.
    pub fn resolve_from(args: &[&str]) -> Result<ProvisioningConfig, ConfigError> {
        let (cli, matches) = ringmesh_config::parse::<ProvisioningArgs>(args)?;
        cli.resolve(&matches)
    }

    /// Merges flags and environment (as `matches` records) over the file
    /// over the defaults, and validates the result.
    pub fn resolve(self, matches: &clap::ArgMatches) -> Result<ProvisioningConfig, ConfigError> {
        let file = self.config.clone();
        let a = ringmesh_config::merge(&self, matches, file.as_deref())?;
        let listen = ringmesh_config::socket_addr("listen", Some(&a.listen))?.expect("given");
        let domain = a.domain;
        if domain.is_empty() || ringmesh_sip::Host::parse(domain.as_bytes()).is_err() {
            return Err(err(
                "domain",
                format!("'{domain}' is not a valid host name"),
            ));
        }
        let metrics = a.service.metrics_addr()?;
        let etcd = a.service.etcd()?;
        let store = if etcd.is_empty() {
            StoreConfig::Embedded(match a.data {
                Some(d) => d,
                None => ringmesh_config::default_data_dir("provisioning")?,
            })
        } else {
            let prefix = a.etcd_prefix;
            if !prefix.starts_with('/') || !prefix.ends_with('/') {
                return Err(err(
                    "etcd-prefix",
                    format!("'{prefix}' must start and end with '/'"),
                ));
            }
            let ms = in_range("etcd-timeout-ms", a.etcd_timeout_ms, 50..=60_000)?;
            StoreConfig::Etcd {
                etcd,
                prefix,
                timeout: Duration::from_millis(ms),
            }
        };
        let keepalive = in_range("watch-keepalive", a.watch_keepalive, 1..=3600)?;
        let tls = a.tls.paths()?;
        if a.enrollment.is_some() && tls.is_none() {
            return Err(err(
                "enrollment",
                "revocations refuse client certificates: they need mutual TLS, not --plaintext",
            ));
        }
        Ok(ProvisioningConfig {
            listen,
            store,
            domain: domain.to_ascii_lowercase(),
            metrics,
            watch_keepalive: Duration::from_secs(keepalive),
            log: a.service.log,
            tls,
            enrollment: a.enrollment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let e = ProvisioningArgs::resolve_from(&[]).unwrap_err();
        assert_eq!(e.key, "tls-ca", "mutual TLS unless --plaintext");
        let c = ProvisioningArgs::resolve_from(&["--plaintext", "true"]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.tls, None);
        assert!(
            matches!(&c.store, StoreConfig::Embedded(d) if d.ends_with("ringmesh/provisioning"))
        );
        assert_eq!(c.domain, "ringmesh.test");
    }

    #[test]
    fn etcd_and_errors_name_the_key() {
        let c =
            ProvisioningArgs::resolve_from(&["--plaintext", "true", "--etcd", "127.0.0.1:2379"])
                .unwrap();
        assert!(
            matches!(&c.store, StoreConfig::Etcd { etcd, .. } if etcd.endpoints == ["http://127.0.0.1:2379"])
        );
        let e = ProvisioningArgs::resolve_from(&["--etcd", "nowhere"]).unwrap_err();
        assert_eq!(e.key, "etcd");
        let e = ProvisioningArgs::resolve_from(&["--listen", "localhost"]).unwrap_err();
        assert_eq!(e.key, "listen");
        assert!(e.to_string().contains("RINGMESH_LISTEN"));
        let e = ProvisioningArgs::resolve_from(&["--etcd", "h:1", "--etcd-timeout-ms", "5"])
            .unwrap_err();
        assert_eq!(e.key, "etcd-timeout-ms");
    }

    #[test]
    fn file_keys_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "domain = \"file.example\"\nlisten = \"127.0.0.1:7000\"\nplaintext = true\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c =
            ProvisioningArgs::resolve_from(&["--config", p, "--listen", "127.0.0.1:7001"]).unwrap();
        assert_eq!(c.domain, "file.example");
        assert_eq!(c.tls, None, "plaintext from the file");
        assert_eq!(c.listen.port(), 7001, "a flag beats the file");
        std::fs::write(&path, "domian = \"x\"\n").unwrap();
        let e = ProvisioningArgs::resolve_from(&["--config", p]).unwrap_err();
        assert!(e.to_string().contains("domian"));
    }
}
