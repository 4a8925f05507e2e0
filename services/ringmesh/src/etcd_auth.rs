//! `ringmesh etcd-auth`: locks etcd down for the farm. Run as etcd's
//! `root` (a client certificate with common name `root`), it gives each
//! component a user and a role holding only its key prefixes and turns
//! authentication on; run again, it resets the roles to exactly those
//! prefixes. With etcd's `--client-cert-auth`, each component's client
//! certificate names its user.

use std::process::ExitCode;

/// `ringmesh etcd-auth` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdAuthArgs {
    /// etcd endpoints, https://HOST:PORT (repeatable, or comma-separated).
    #[arg(long, env = "RINGMESH_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The CA of etcd's server certificate (PEM).
    #[arg(long, env = "RINGMESH_ETCD_CA")]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// etcd root's client certificate (PEM, common name `root`).
    #[arg(long, env = "RINGMESH_ETCD_CERT")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, env = "RINGMESH_ETCD_KEY")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// Prefix of the farm's keys (the services' --etcd-prefix).
    #[arg(long, env = "RINGMESH_ETCD_PREFIX", default_value = "/ringmesh/")]
    pub etcd_prefix: String,
}

async fn apply(a: &EtcdAuthArgs) -> Result<(), String> {
    let etcd = ringmesh_config::Etcd::new(
        &a.etcd,
        a.etcd_ca.clone(),
        a.etcd_cert.clone(),
        a.etcd_key.clone(),
    )
    .map_err(|e| e.to_string())?;
    if !a.etcd_prefix.starts_with('/') || !a.etcd_prefix.ends_with('/') {
        return Err(format!(
            "--etcd-prefix: '{}' must start and end with '/'",
            a.etcd_prefix
        ));
    }
    let opts = ringmesh_config::Etcd::default_options(std::time::Duration::from_secs(5));
    let mut client = etcd.connect(opts).await?;
    ringmesh_config::etcd::apply_roles(&mut client, &a.etcd_prefix)
        .await
        .map_err(|e| format!("etcd refused the set-up (is this root's certificate?): {e}"))?;
    for (user, prefixes) in ringmesh_config::etcd::roles(&a.etcd_prefix) {
        println!("{user}: read-write {}", prefixes.join(", "));
    }
    println!("authentication enabled");
    Ok(())
}

/// Runs `ringmesh etcd-auth`: 0 when set up, 1 when etcd refused, 2 on a
/// bad argument.
pub fn run(a: &EtcdAuthArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(apply(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh etcd-auth: {e}");
            if e.starts_with("--") || e.starts_with("config key") {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
