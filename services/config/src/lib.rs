//! # ringmesh-config: configuration declared once
//!
//! Every Ringmesh service (`ringmesh supernode`, `provisioning`,
//! `enrollment`) declares its settings in one struct that derives both
//! `clap::Args` and serde: a setting `min-expires` is the flag
//! `--min-expires`, the environment variable `RINGMESH_MIN_EXPIRES`, and the
//! key `min-expires` in the TOML file given by `--config`, with one default,
//! shown by `--help`. [`merge`] is the one place where they meet: a flag
//! beats the environment (clap), which beats the file, which beats the
//! default. Unknown file keys are errors naming the key. The service then
//! validates the merged struct into its typed config; every error is a
//! [`ConfigError`] that names the key to fix, and the binary exits 2 on it.
//!
//! [`ServiceArgs`] holds what the three services share (metrics, etcd,
//! log); each flattens it into its own struct. [`etcd`] is how every one
//! of them reaches etcd (TLS, client certificates, the roles of each).

pub mod etcd;

pub use etcd::Etcd;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use clap::parser::ValueSource;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A configuration error that names the key to fix.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message} (set by --{key}, {env} or `{key}` in the config file)")]
pub struct ConfigError {
    pub key: String,
    pub env: String,
    pub message: String,
}

/// The error for `key`.
pub fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        env: env_name(key),
        message: message.into(),
    }
}

/// Mutual TLS of a control-plane gRPC server: its certificate and key
/// from the farm CA, and the CA that issues its clients' certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerTlsArgs {
    /// This server's certificate (PEM, from the farm CA, with the DNS name
    /// control.ringmesh.internal).
    #[arg(long, env = "RINGMESH_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "RINGMESH_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The farm CA (PEM): clients must present a certificate it issued.
    #[arg(long, env = "RINGMESH_TLS_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Serve without TLS: anyone who reaches the API may read every HA1
    /// and change everything. For labs only.
    #[arg(long, env = "RINGMESH_PLAINTEXT", default_value_t = false, action = clap::ArgAction::Set)]
    #[serde(default)]
    pub plaintext: bool,
}

/// The PEM files of one end of a mutual TLS connection: the CA the other
/// end's certificate must come from, this end's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl ServerTlsArgs {
    /// The files to serve TLS with, or None with --plaintext; an error
    /// naming what is missing otherwise.
    pub fn paths(&self) -> Result<Option<TlsPaths>, ConfigError> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key, self.plaintext) {
            (None, None, None, true) => Ok(None),
            (_, _, _, true) => Err(err(
                "plaintext",
                "--plaintext and --tls-* exclude each other",
            )),
            (Some(ca), Some(cert), Some(key), false) => Ok(Some(TlsPaths {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, _, _, false) => Err(err(
                "tls-ca",
                "give --tls-ca, --tls-cert and --tls-key (the API serves mutual TLS), or --plaintext for a lab",
            )),
            (_, None, _, false) => Err(err("tls-cert", "--tls-ca and --tls-key need --tls-cert")),
            (_, _, None, false) => Err(err("tls-key", "--tls-cert needs --tls-key")),
        }
    }
}

/// `RINGMESH_<KEY>` for a key.
pub fn env_name(key: &str) -> String {
    format!("RINGMESH_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// What every service shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceArgs {
    /// Where to serve /metrics, /healthz and /readyz (HOST:PORT; none when
    /// unset).
    #[arg(long, env = "RINGMESH_METRICS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// etcd endpoints, http://HOST:PORT or https://HOST:PORT (repeatable,
    /// or comma-separated).
    #[arg(long, env = "RINGMESH_ETCD", value_delimiter = ',')]
    #[serde(default)]
    pub etcd: Vec<String>,
    /// The CA of etcd's server certificate (PEM), for https:// endpoints.
    #[arg(long, env = "RINGMESH_ETCD_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// This component's etcd client certificate (PEM); its common name is
    /// the etcd user (ringmesh-supernode, -provisioning, -enrollment).
    #[arg(long, env = "RINGMESH_ETCD_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, env = "RINGMESH_ETCD_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or ringmesh=debug.
    #[arg(long, env = "RINGMESH_LOG", default_value = "info")]
    pub log: String,
}

impl ServiceArgs {
    /// The metrics address, validated.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        socket_addr("metrics", self.metrics.as_deref())
    }

    /// The etcd endpoints and TLS, validated (no endpoint: no etcd).
    pub fn etcd(&self) -> Result<Etcd, ConfigError> {
        Etcd::new(
            &self.etcd,
            self.etcd_ca.clone(),
            self.etcd_cert.clone(),
            self.etcd_key.clone(),
        )
    }
}

/// `HOST:PORT` with an IP address, for the setting `key`.
pub fn socket_addr(key: &str, v: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    v.map(|a| {
        a.parse()
            .map_err(|_| err(key, format!("'{a}' is not HOST:PORT with an IP address")))
    })
    .transpose()
}

/// The default data directory of a process named `name`:
/// `$XDG_DATA_HOME/ringmesh/NAME`, else `$HOME/.local/share/ringmesh/NAME`,
/// never the working directory.
pub fn default_data_dir(name: &str) -> Result<std::path::PathBuf, ConfigError> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })
        .ok_or_else(|| {
            err(
                "data",
                "no --data, and neither XDG_DATA_HOME nor HOME to put it under",
            )
        })?;
    Ok(base.join("ringmesh").join(name))
}

/// The value of `v` if it lies in `range`, else an error for `key`.
pub fn in_range<T, R>(key: &str, v: T, range: R) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display,
    R: std::ops::RangeBounds<T> + std::fmt::Debug,
{
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(err(key, format!("{v} is outside {range:?}")))
    }
}

/// Merges the settings: what `cli` holds for arguments given on the
/// command line or in the environment (as `matches` records), over the
/// TOML file at `file`, over `cli`'s defaults. Keys of the file that no
/// argument of `T` declares are errors.
pub fn merge<T>(cli: &T, matches: &clap::ArgMatches, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: clap::Args + Serialize + DeserializeOwned,
{
    let known: BTreeSet<String> = T::augment_args(clap::Command::new("config"))
        .get_arguments()
        .map(|a| a.get_id().as_str().replace('_', "-"))
        .collect();
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| err("config", format!("{}: {}", path.display(), e.message())))?;
            if let Some(k) = table.keys().find(|k| !known.contains(*k) || *k == "config") {
                return Err(err(
                    "config",
                    format!("{}: unknown key `{k}`", path.display()),
                ));
            }
            table
        }
        None => toml::Table::new(),
    };
    let given = |key: &str| {
        matches!(
            matches.value_source(&key.replace('-', "_")),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let cli_table = toml::Table::try_from(cli).map_err(|e| err("config", e.to_string()))?;
    for (k, v) in cli_table {
        if given(&k) || !table.contains_key(&k) {
            table.insert(k, v);
        }
    }
    let where_ = file.map_or(String::new(), |p| format!("{}: ", p.display()));
    table
        .try_into()
        .map_err(|e: toml::de::Error| err("config", format!("{where_}{}", e.message())))
}

/// Parses `args` (without the program name) as `T` would be on a command
/// line, environment included: what the binary does, for tests and tools.
/// A flag clap refuses is an error on the key `args`.
pub fn parse<T: clap::Args + clap::FromArgMatches>(
    args: &[&str],
) -> Result<(T, clap::ArgMatches), ConfigError> {
    let cmd = T::augment_args(clap::Command::new("ringmesh"));
    let matches = cmd
        .try_get_matches_from(std::iter::once("ringmesh").chain(args.iter().copied()))
        .and_then(|m| Ok((T::from_arg_matches(&m)?, m)))
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            err("args", first.trim_start_matches("error: "))
        })?;
    Ok(matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args, Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct Example {
        #[arg(long)]
        #[serde(skip)]
        config: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 60)]
        min_expires: u32,
        #[arg(long, default_value = "ringmesh.test")]
        domain: String,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        advertise: Option<String>,
        #[command(flatten)]
        #[serde(flatten)]
        service: ServiceArgs,
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "min-expires = 90\nadvertise = \"sip.example\"\nlog = \"debug\"\netcd = [\"127.0.0.1:2379\"]\n",
        )
        .unwrap();
        let (cli, m) =
            parse::<Example>(&["--domain", "farm.example", "--advertise", "lb.example"]).unwrap();
        let c = merge(&cli, &m, Some(&path)).unwrap();
        assert_eq!(c.min_expires, 90, "the file beats the default");
        assert_eq!(c.domain, "farm.example", "a flag");
        assert_eq!(
            c.advertise.as_deref(),
            Some("lb.example"),
            "a flag beats the file"
        );
        assert_eq!(c.service.log, "debug", "a shared key from the file");
        assert_eq!(
            c.service.etcd().unwrap().endpoints,
            ["http://127.0.0.1:2379"]
        );
        let (cli, m) = parse::<Example>(&[]).unwrap();
        let c = merge(&cli, &m, None).unwrap();
        assert_eq!((c.min_expires, c.service.log.as_str()), (60, "info"));
        assert_eq!(c.advertise, None);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "min-expire = 90\n").unwrap();
        let (cli, m) = parse::<Example>(&[]).unwrap();
        let e = merge(&cli, &m, Some(&path)).unwrap_err();
        assert!(e.to_string().contains("unknown key `min-expire`"), "{e}");
        std::fs::write(&path, "min-expires = \"soon\"\n").unwrap();
        let e = merge(&cli, &m, Some(&path)).unwrap_err();
        assert!(
            e.to_string().contains("min-expires") || e.to_string().contains("invalid"),
            "{e}"
        );
        assert_eq!(etcd::etcd_endpoint("https://x:1").unwrap(), "https://x:1");
        assert!(etcd::etcd_endpoint("x").is_err() && etcd::etcd_endpoint("ftp://x:1").is_err());
        assert_eq!(in_range("k", 5, 1..=3).unwrap_err().key, "k");
        assert_eq!(err("max-expires", "x").env, "RINGMESH_MAX_EXPIRES");
        let e = parse::<Example>(&["--min-expires", "soon"]).unwrap_err();
        assert_eq!(e.key, "args");
        assert!(e.message.contains("soon"), "{e}");
    }
}
