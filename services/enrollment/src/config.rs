//! Typed configuration of `ringmesh enrollment`, with the conventions of
//! the supernode's config (STYLE.md §9): a flag `--cert-days`, a TOML key
//! `cert-days` in the `--config` file, an environment variable
//! `RINGMESH_CERT_DAYS`; flag over environment over file; unknown file
//! keys rejected; errors name the key. Secrets (tokens, keys) are never
//! printed by `Debug`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The default API address: `ringmesh dev`'s base port 5060 + 601.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5661";

/// The `ringmesh enrollment` flags; each also reads `RINGMESH_<KEY>`.
#[derive(Clone, Default, clap::Args)]
pub struct EnrollmentArgs {
    /// TOML file with the same keys as the flags (unknown keys are errors).
    #[arg(long, env = "RINGMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where to serve the gRPC API (HOST:PORT).
    #[arg(long, env = "RINGMESH_LISTEN")]
    pub listen: Option<String>,
    /// Data directory of the embedded store (CA, farm secret, issued
    /// certificates) when no --etcd is given.
    #[arg(long, env = "RINGMESH_DATA")]
    pub data: Option<PathBuf>,
    /// etcd endpoint URL (repeatable); given, the CA state lives in etcd.
    #[arg(long, env = "RINGMESH_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Prefix of every etcd key (the CA uses `<prefix>enrollment/`).
    #[arg(long, env = "RINGMESH_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Deadline of every etcd call, milliseconds.
    #[arg(long, env = "RINGMESH_ETCD_TIMEOUT_MS")]
    pub etcd_timeout_ms: Option<u64>,
    /// A bootstrap token nodes present to Enroll (repeatable).
    #[arg(
        long,
        env = "RINGMESH_BOOTSTRAP_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub bootstrap_token: Vec<String>,
    /// A file of bootstrap tokens, one per line ('#' starts a comment).
    #[arg(long, env = "RINGMESH_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// A token guarding Revoke and ListCertificates (repeatable); none:
    /// those RPCs are open to anyone who reaches the port.
    #[arg(
        long,
        env = "RINGMESH_ADMIN_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_token: Vec<String>,
    /// CA certificate (PEM) to use instead of the stored one, e.g. from a
    /// Kubernetes Secret; needs --ca-key.
    #[arg(long, env = "RINGMESH_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// CA private key (PEM) matching --ca-cert.
    #[arg(long, env = "RINGMESH_CA_KEY")]
    pub ca_key: Option<PathBuf>,
    /// File with the farm secret (hex, at least 32 digits) to use instead of
    /// the stored one.
    #[arg(long, env = "RINGMESH_FARM_SECRET_FILE")]
    pub farm_secret_file: Option<PathBuf>,
    /// Validity of node certificates, days.
    #[arg(long, env = "RINGMESH_CERT_DAYS")]
    pub cert_days: Option<i64>,
    /// Where to serve /metrics, /healthz and /readyz (HOST:PORT).
    #[arg(long, env = "RINGMESH_METRICS")]
    pub metrics: Option<String>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RINGMESH_LOG")]
    pub log: Option<String>,
}

impl std::fmt::Debug for EnrollmentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentArgs")
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("etcd", &self.etcd)
            .field(
                "bootstrap_token",
                &format_args!("<{} hidden>", self.bootstrap_token.len()),
            )
            .field(
                "admin_token",
                &format_args!("<{} hidden>", self.admin_token.len()),
            )
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    etcd: Option<Vec<String>>,
    etcd_prefix: Option<String>,
    etcd_timeout_ms: Option<u64>,
    bootstrap_token: Option<Vec<String>>,
    bootstrap_token_file: Option<PathBuf>,
    admin_token: Option<Vec<String>>,
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    farm_secret_file: Option<PathBuf>,
    cert_days: Option<i64>,
    metrics: Option<String>,
    log: Option<String>,
}

/// Where the CA keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Files under this directory.
    Embedded(PathBuf),
    /// etcd.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        timeout: Duration,
    },
}

/// The validated configuration.
#[derive(Clone)]
pub struct EnrollmentConfig {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub bootstrap_tokens: Vec<String>,
    pub admin_tokens: Vec<String>,
    /// CA certificate and key PEM given as files.
    pub ca_pem: Option<(String, String)>,
    pub farm_secret: Option<Vec<u8>>,
    pub cert_days: i64,
    pub metrics: Option<SocketAddr>,
    pub log: String,
}

impl std::fmt::Debug for EnrollmentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentConfig")
            .field("listen", &self.listen)
            .field("store", &self.store)
            .field("bootstrap_tokens", &self.bootstrap_tokens.len())
            .field("admin_tokens", &self.admin_tokens.len())
            .field("ca_from_files", &self.ca_pem.is_some())
            .field("cert_days", &self.cert_days)
            .finish_non_exhaustive()
    }
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

fn etcd_endpoint(s: &str) -> Result<String, String> {
    if s.starts_with("https://") {
        return Err(format!("'{s}': TLS to etcd is not supported yet"));
    }
    let rest = s.strip_prefix("http://").unwrap_or(s);
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(format!("http://{rest}")),
        _ => Err(format!("'{s}' is not http://HOST:PORT")),
    }
}

impl EnrollmentArgs {
    /// Merges flags/environment over the file, reads the files it names and
    /// validates everything.
    pub fn resolve(self) -> Result<EnrollmentConfig, ConfigError> {
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
                    .unwrap_or_else(|| PathBuf::from("./ringmesh-data/enrollment")),
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
                prefix: format!("{prefix}enrollment/"),
                timeout: Duration::from_millis(ms),
            }
        };
        let mut bootstrap_tokens = if self.bootstrap_token.is_empty() {
            file.bootstrap_token.unwrap_or_default()
        } else {
            self.bootstrap_token
        };
        if let Some(path) = self.bootstrap_token_file.or(file.bootstrap_token_file) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "bootstrap-token-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            bootstrap_tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        bootstrap_tokens.retain(|t| !t.is_empty());
        if bootstrap_tokens.is_empty() {
            return Err(err(
                "bootstrap-token",
                "no bootstrap token configured: no node could ever enroll",
            ));
        }
        if let Some(short) = bootstrap_tokens.iter().find(|t| t.len() < 16) {
            return Err(err(
                "bootstrap-token",
                format!(
                    "a token of {} characters is too easy to guess (16 at least)",
                    short.len()
                ),
            ));
        }
        let admin_tokens = if self.admin_token.is_empty() {
            file.admin_token.unwrap_or_default()
        } else {
            self.admin_token
        };
        let ca_pem = match (self.ca_cert.or(file.ca_cert), self.ca_key.or(file.ca_key)) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let cert = std::fs::read_to_string(&c)
                    .map_err(|e| err("ca-cert", format!("cannot read {}: {e}", c.display())))?;
                let key = std::fs::read_to_string(&k)
                    .map_err(|e| err("ca-key", format!("cannot read {}: {e}", k.display())))?;
                crate::ca::Ca::from_pem(&cert, &key).map_err(|e| err("ca-cert", e.to_string()))?;
                Some((cert, key))
            }
            (Some(_), None) => return Err(err("ca-key", "--ca-cert needs --ca-key")),
            (None, Some(_)) => return Err(err("ca-cert", "--ca-key needs --ca-cert")),
        };
        let farm_secret = match self.farm_secret_file.or(file.farm_secret_file) {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    err(
                        "farm-secret-file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                let s = hex::decode(text.trim())
                    .map_err(|_| err("farm-secret-file", format!("{} is not hex", p.display())))?;
                if s.len() < 16 {
                    return Err(err(
                        "farm-secret-file",
                        "the secret must be at least 16 bytes (32 hex digits)",
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let cert_days = self.cert_days.or(file.cert_days).unwrap_or(90);
        if !(1..=3650).contains(&cert_days) {
            return Err(err("cert-days", format!("{cert_days} is outside 1..3650")));
        }
        Ok(EnrollmentConfig {
            listen,
            store,
            bootstrap_tokens,
            admin_tokens,
            ca_pem,
            farm_secret,
            cert_days,
            metrics,
            log: self.log.or(file.log).unwrap_or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> EnrollmentArgs {
        EnrollmentArgs {
            bootstrap_token: vec!["a-long-enough-token".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_secrets_stay_hidden() {
        let c = args().resolve().unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.cert_days, 90);
        assert!(!format!("{c:?}").contains("a-long-enough-token"));
        assert!(!format!("{:?}", args()).contains("a-long-enough-token"));
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            EnrollmentArgs::default().resolve().unwrap_err().key,
            "bootstrap-token"
        );
        let e = EnrollmentArgs {
            bootstrap_token: vec!["short".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "bootstrap-token");
        let e = EnrollmentArgs {
            ca_cert: Some("/x".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "ca-key");
        let e = EnrollmentArgs {
            cert_days: Some(0),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("RINGMESH_CERT_DAYS"));
    }

    #[test]
    fn token_file_and_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(
            &f,
            "# nodes of rack 1\nthe-first-bootstrap-token\n\nthe-other-bootstrap-token\n",
        )
        .unwrap();
        let c = EnrollmentArgs {
            bootstrap_token_file: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.bootstrap_tokens.len(), 2);
        let ca = crate::ca::Ca::generate("t").unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("ca.key"), ca.key_pem()).unwrap();
        let c = EnrollmentArgs {
            ca_cert: Some(dir.path().join("ca.crt")),
            ca_key: Some(dir.path().join("ca.key")),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(c.ca_pem.is_some());
        let e = EnrollmentArgs {
            ca_cert: Some(dir.path().join("ca.crt")),
            ca_key: Some(dir.path().join("tokens")),
            ..args()
        }
        .resolve();
        assert!(e.is_err(), "a key that is not the CA's");
    }
}
