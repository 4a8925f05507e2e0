//! Typed configuration of `ringmesh enrollment`, with the conventions of
//! every Ringmesh service (`ringmesh-config`): a flag `--cert-days`, a TOML
//! key `cert-days` in the `--config` file, an environment variable
//! `RINGMESH_CERT_DAYS`, declared once with its default; flag over
//! environment over file; unknown file keys rejected; errors name the key.
//! Secrets (tokens, keys) are never printed by `Debug`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use ringmesh_config::ConfigError;
use ringmesh_config::{ServiceArgs, err, in_range};
use serde::{Deserialize, Serialize};

/// The default API address: `ringmesh dev`'s base port 5060 + 601.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5661";

/// The `ringmesh enrollment` settings: each is a flag, `RINGMESH_<KEY>`
/// in the environment, and a key of the `--config` file.
#[derive(Clone, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EnrollmentArgs {
    /// TOML file with the same keys as the flags (unknown keys are errors).
    #[arg(long, env = "RINGMESH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where to serve the gRPC API (HOST:PORT; port 0: one the kernel picks).
    #[arg(long, env = "RINGMESH_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Data directory of the embedded store (CA, farm secret, issued
    /// certificates) when no --etcd is given. Default:
    /// $XDG_DATA_HOME/ringmesh/enrollment, else
    /// $HOME/.local/share/ringmesh/enrollment.
    #[arg(long, env = "RINGMESH_DATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Prefix of every etcd key (the CA uses `<prefix>enrollment/`).
    #[arg(long, env = "RINGMESH_ETCD_PREFIX", default_value = "/ringmesh/")]
    pub etcd_prefix: String,
    /// Deadline of every etcd call, milliseconds.
    #[arg(long, env = "RINGMESH_ETCD_TIMEOUT_MS", default_value_t = 2000)]
    pub etcd_timeout_ms: u64,
    /// A bootstrap token nodes present to Enroll (repeatable), optionally
    /// followed by its limits: "TOKEN uses=N expires=RFC3339-TIME".
    #[arg(
        long,
        env = "RINGMESH_BOOTSTRAP_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(default)]
    pub bootstrap_token: Vec<String>,
    /// A file of bootstrap tokens, one per line with its limits as for
    /// --bootstrap-token ('#' starts a comment; a `ca-sha256:` pin line,
    /// for the nodes reading the same file, is skipped).
    #[arg(long, env = "RINGMESH_BOOTSTRAP_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// A token that opens Revoke and ListCertificates (repeatable), besides
    /// an admin certificate from the farm CA; none: only the certificate.
    #[arg(
        long,
        env = "RINGMESH_ADMIN_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(default)]
    pub admin_token: Vec<String>,
    /// A file of admin tokens, one per line ('#' starts a comment).
    #[arg(long, env = "RINGMESH_ADMIN_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// CA certificate (PEM) to use instead of the stored one, e.g. from a
    /// Kubernetes Secret; needs --ca-key.
    #[arg(long, env = "RINGMESH_CA_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// CA private key (PEM) matching --ca-cert.
    #[arg(long, env = "RINGMESH_CA_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<PathBuf>,
    /// File with the farm secret (hex, at least 32 digits) to use instead of
    /// the stored one.
    #[arg(long, env = "RINGMESH_FARM_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub farm_secret_file: Option<PathBuf>,
    /// File with the store key (64 hex digits) sealing the CA key and the
    /// farm secret when they are kept in the store (etcd or --data): a copy
    /// of the store then does not yield them. Keep it in a Secret.
    #[arg(long, env = "RINGMESH_STORE_KEY_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_key_file: Option<PathBuf>,
    /// Serve without TLS: bootstrap tokens then cross the network in clear
    /// and nodes cannot pin the CA. For labs only (nodes then name the
    /// service http://HOST:PORT).
    #[arg(long, env = "RINGMESH_PLAINTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub plaintext: bool,
    /// Validity of node certificates, days.
    #[arg(long, env = "RINGMESH_CERT_DAYS", default_value_t = 90)]
    pub cert_days: i64,
    /// Shared with every Ringmesh service; given --etcd, the CA state
    /// lives in etcd.
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs,
}

impl std::fmt::Debug for EnrollmentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentArgs")
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("etcd", &self.service.etcd)
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

/// Where the CA keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Files under this directory.
    Embedded(PathBuf),
    /// etcd.
    Etcd {
        etcd: ringmesh_config::Etcd,
        prefix: String,
        timeout: Duration,
    },
}

/// The validated configuration.
#[derive(Clone)]
pub struct EnrollmentConfig {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub bootstrap_tokens: Vec<crate::bootstrap::BootstrapToken>,
    pub admin_tokens: Vec<String>,
    /// CA certificate and key PEM given as files.
    pub ca_pem: Option<(String, String)>,
    pub farm_secret: Option<Vec<u8>>,
    pub cert_days: i64,
    /// Serve without TLS.
    pub plaintext: bool,
    /// Seals key material in the store.
    pub store_key: Option<crate::seal::StoreKey>,
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
            .field("plaintext", &self.plaintext)
            .finish_non_exhaustive()
    }
}

impl EnrollmentArgs {
    /// Parses `args` (flags only) as the binary would, environment
    /// included, and resolves them: for tests and tools.
    pub fn resolve_from(args: &[&str]) -> Result<EnrollmentConfig, ConfigError> {
        let (cli, matches) = ringmesh_config::parse::<EnrollmentArgs>(args)?;
        cli.resolve(&matches)
    }

    /// Merges flags and environment (as `matches` records) over the file
    /// over the defaults, reads the files it names and validates
    /// everything.
    pub fn resolve(self, matches: &clap::ArgMatches) -> Result<EnrollmentConfig, ConfigError> {
        let file = self.config.clone();
        let a = ringmesh_config::merge(&self, matches, file.as_deref())?;
        let listen = ringmesh_config::socket_addr("listen", Some(&a.listen))?.expect("given");
        let metrics = a.service.metrics_addr()?;
        let etcd = a.service.etcd()?;
        let store = if etcd.is_empty() {
            StoreConfig::Embedded(match a.data {
                Some(d) => d,
                None => ringmesh_config::default_data_dir("enrollment")?,
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
                prefix: format!("{prefix}enrollment/"),
                timeout: Duration::from_millis(ms),
            }
        };
        let bootstrap_tokens = tokens(
            "bootstrap-token-file",
            a.bootstrap_token,
            a.bootstrap_token_file.as_deref(),
        )?;
        if bootstrap_tokens.is_empty() {
            return Err(err(
                "bootstrap-token",
                "no bootstrap token configured: no node could ever enroll",
            ));
        }
        let bootstrap_tokens = bootstrap_tokens
            .iter()
            .map(|line| crate::bootstrap::BootstrapToken::parse(line))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("bootstrap-token", e))?;
        let ca_pem = match (a.ca_cert, a.ca_key) {
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
        let farm_secret = match a.farm_secret_file {
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
        let admin_tokens = tokens(
            "admin-token-file",
            a.admin_token,
            a.admin_token_file.as_deref(),
        )?;
        if let Some(short) = admin_tokens.iter().find(|t| t.len() < 16) {
            return Err(err(
                "admin-token",
                format!(
                    "a token of {} characters is too easy to guess (16 at least)",
                    short.len()
                ),
            ));
        }
        let cert_days = in_range("cert-days", a.cert_days, 1..=3650)?;
        let store_key = match &a.store_key_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    err(
                        "store-key-file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                Some(
                    crate::seal::StoreKey::parse(&text)
                        .map_err(|e| err("store-key-file", format!("{}: {e}", p.display())))?,
                )
            }
            None => None,
        };
        Ok(EnrollmentConfig {
            listen,
            store,
            bootstrap_tokens,
            admin_tokens,
            ca_pem,
            farm_secret,
            cert_days,
            plaintext: a.plaintext,
            store_key,
            metrics,
            log: a.service.log,
        })
    }
}

/// Tokens given inline and in a file (`file_key`), one per line, '#'
/// starting a comment; empty ones dropped.
fn tokens(
    file_key: &str,
    mut inline: Vec<String>,
    file: Option<&std::path::Path>,
) -> Result<Vec<String>, ConfigError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(file_key, format!("cannot read {}: {e}", path.display())))?;
        // A bootstrap file may also pin the CA for the nodes reading it.
        let pin = ringmesh_enrollment_client::client::CA_PIN_PREFIX;
        inline.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(pin))
                .map(str::to_string),
        );
    }
    inline.retain(|t| !t.is_empty());
    Ok(inline)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [&str; 2] = ["--bootstrap-token", "a-long-enough-token"];

    fn with_token(more: &[&str]) -> Result<EnrollmentConfig, ConfigError> {
        let mut all = TOKEN.to_vec();
        all.extend_from_slice(more);
        EnrollmentArgs::resolve_from(&all)
    }

    #[test]
    fn admin_tokens_from_a_file_and_too_short_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(
            &path,
            "# the admin token\nan-admin-token-of-enough-length\n\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = with_token(&["--admin-token-file", p]).unwrap();
        assert_eq!(c.admin_tokens, ["an-admin-token-of-enough-length"]);
        let e = with_token(&["--admin-token", "short"]).unwrap_err();
        assert_eq!(e.key, "admin-token");
        let e = with_token(&["--admin-token-file", "/nonexistent/token"]).unwrap_err();
        assert_eq!(e.key, "admin-token-file");
        assert!(
            with_token(&[]).unwrap().admin_tokens.is_empty(),
            "optional: Revoke is then closed"
        );
    }

    #[test]
    fn defaults_and_secrets_stay_hidden() {
        let c = with_token(&[]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.cert_days, 90);
        assert!(!format!("{c:?}").contains("a-long-enough-token"));
        let (args, _) = ringmesh_config::parse::<EnrollmentArgs>(&TOKEN).unwrap();
        assert!(!format!("{args:?}").contains("a-long-enough-token"));
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            EnrollmentArgs::resolve_from(&[]).unwrap_err().key,
            "bootstrap-token"
        );
        let e = EnrollmentArgs::resolve_from(&["--bootstrap-token", "short"]).unwrap_err();
        assert_eq!(e.key, "bootstrap-token");
        assert_eq!(with_token(&["--ca-cert", "/x"]).unwrap_err().key, "ca-key");
        let e = with_token(&["--cert-days", "0"]).unwrap_err();
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
        let c =
            EnrollmentArgs::resolve_from(&["--bootstrap-token-file", f.to_str().unwrap()]).unwrap();
        assert_eq!(c.bootstrap_tokens.len(), 2);
        let ca = crate::ca::Ca::generate("t").unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("ca.key"), ca.key_pem()).unwrap();
        let crt = dir.path().join("ca.crt");
        let key = dir.path().join("ca.key");
        let c = with_token(&[
            "--ca-cert",
            crt.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ])
        .unwrap();
        assert!(c.ca_pem.is_some());
        let e = with_token(&[
            "--ca-cert",
            crt.to_str().unwrap(),
            "--ca-key",
            f.to_str().unwrap(),
        ]);
        assert!(e.is_err(), "a key that is not the CA's");
    }
}
