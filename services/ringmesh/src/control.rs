//! `ringmesh provisioning` and `ringmesh enrollment`: the control-plane
//! services as subcommands of the one binary.
//!
//! Both follow the supernode's config conventions (flags, `RINGMESH_*`
//! environment, `--config` TOML, errors naming the key); the settings and
//! the services themselves live in their crates
//! ([`ringmesh_provisioning`], [`ringmesh_enrollment`]). A configuration
//! error comes back as a [`ConfigError`](ringmesh_config::ConfigError)
//! inside the `anyhow::Error` (downcast it to exit 2).
//! Both run until SIGTERM or Ctrl-C, then shut down gracefully.

pub use ringmesh_enrollment::config::EnrollmentArgs;
pub use ringmesh_provisioning::config::ProvisioningArgs;

/// Completes on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// Announces a control-plane service's addresses (see [`crate::listening`]).
fn announce(api: std::net::SocketAddr, metrics: Option<std::net::SocketAddr>) {
    crate::listening::announce(&serde_json::json!({
        "api": api.to_string(),
        "metrics": metrics.map(|m| m.to_string()),
    }));
}

/// Installs a log subscriber for `filter` unless one is installed already.
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the provisioning service (subscribers) until SIGTERM or Ctrl-C.
pub async fn run_provisioning(
    args: ProvisioningArgs,
    matches: clap::ArgMatches,
) -> anyhow::Result<()> {
    let cfg = args.resolve(&matches)?;
    init_logging(&cfg.log);
    ringmesh_provisioning::run_with(cfg, shutdown_signal(), |l| announce(l.api, l.metrics)).await
}

/// Runs the enrollment service (the farm CA) until SIGTERM or Ctrl-C.
pub async fn run_enrollment(args: EnrollmentArgs, matches: clap::ArgMatches) -> anyhow::Result<()> {
    let cfg = args.resolve(&matches)?;
    init_logging(&cfg.log);
    ringmesh_enrollment::run_with(cfg, shutdown_signal(), |l| announce(l.api, l.metrics)).await
}
