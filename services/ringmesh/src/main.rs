//! `ringmesh`: one binary, one image. Each service is a subcommand.
//!
//! - `ringmesh supernode`: one supernode (SIP registrar and proxy).
//! - `ringmesh provisioning`: the subscriber service (HSS-like).
//! - `ringmesh enrollment`: the farm CA (Node-IDs, certificates, revocation).
//! - `ringmesh enroll`: a node's first enrollment, on its own.
//! - `ringmesh etcd-auth`: etcd users and roles for each component.
//! - `ringmesh ctl`: the operator CLI over these APIs.
//! - `ringmesh certs issue`: control-plane certificates from the CA's files.
//! - `ringmesh dev`: a local farm for a new user, with demo subscribers.
//!
//! | module | what it holds |
//! |---|---|
//! | [`certs`] | `ringmesh certs issue`: provisioning's, operators' and admins' certificates |
//! | [`control`] | `ringmesh provisioning` and `ringmesh enrollment`, and the shutdown signal (SIGTERM, Ctrl-C) every service stops on |
//! | [`ctl`] | `ringmesh ctl`: the operator CLI over the gRPC APIs |
//! | [`dev`] | `ringmesh dev`: the local farm, every service a child process |
//! | [`etcd_auth`] | `ringmesh etcd-auth`: each component's etcd user, limited to its prefixes |
//! | [`enroll`] | `ringmesh enroll`: a node's identity from enrollment before it starts |
//! | [`listening`] | how a service started by `ringmesh dev` announces the addresses it bound |
//!
//! `ringmesh supernode` needs no module here: its arguments and its
//! service are in `ringmesh-supernode`.

/// The allocator of every Ringmesh process: jemalloc gives the pages of a
/// storm's freed transactions back to the system, where glibc's malloc
/// keeps them (0.65x the memory per binding on one supernode, and no less
/// goodput when overloaded, which mimalloc lost: docs/benchmarks.md, "The
/// process allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod certs;
mod control;
mod ctl;
mod dev;
mod enroll;
mod etcd_auth;
mod listening;
mod softphone;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ringmesh_supernode::config::SupernodeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "ringmesh",
    version,
    about = "Carrier-grade P2P SIP supernode farm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one supernode.
    Supernode(Box<SupernodeArgs>),
    /// Run the provisioning service (subscribers, gRPC).
    Provisioning(Box<control::ProvisioningArgs>),
    /// Run the enrollment service (the farm CA, gRPC).
    Enrollment(Box<control::EnrollmentArgs>),
    /// Enroll a node with the farm CA (its identity into --data), then exit.
    Enroll(enroll::EnrollArgs),
    /// Give each component an etcd user limited to its keys, and turn
    /// etcd's authentication on (run as etcd's root).
    EtcdAuth(etcd_auth::EtcdAuthArgs),
    /// Operate the farm: subscribers, status, ring, lookups, traces.
    Ctl(ctl::CtlArgs),
    /// Run a local farm (supernodes as child processes) for development.
    Dev(dev::DevArgs),
    /// Issue control-plane certificates from the farm CA's files.
    Certs(certs::CertsArgs),
}

/// Runs a control-plane service; a configuration error exits 2.
fn run_service(name: &str, f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh {name}: {e:#}");
            let config = e.downcast_ref::<ringmesh_config::ConfigError>().is_some();
            if config {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    dev::die_with_parent();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Each service merges its flags and environment over its config file:
    // it needs to know which values were given, not defaulted.
    let sub = |name: &str| {
        matches
            .subcommand_matches(name)
            .cloned()
            .unwrap_or_default()
    };
    match cli.command {
        Command::Supernode(args) => {
            let cfg = match (*args).resolve(&sub("supernode")) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringmesh supernode: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let serving = |b: &ringmesh_supernode::Bound| {
                let opt = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
                listening::announce(&serde_json::json!({
                    "sip": b.sip.iter().map(|(t, a)| format!("{}:{a}", t.as_str())).collect::<Vec<_>>(),
                    "overlay": opt(b.overlay),
                    "admin": opt(b.admin),
                    "metrics": opt(b.metrics),
                    "node_id": hex::encode(b.node_id),
                }));
            };
            match rt.block_on(ringmesh_supernode::run_with(
                cfg,
                control::shutdown_signal(),
                serving,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringmesh supernode: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Provisioning(args) => run_service(
            "provisioning",
            control::run_provisioning(*args, sub("provisioning")),
        ),
        Command::Enrollment(args) => run_service(
            "enrollment",
            control::run_enrollment(*args, sub("enrollment")),
        ),
        Command::Enroll(args) => enroll::run(&args),
        Command::EtcdAuth(args) => etcd_auth::run(&args),
        Command::Ctl(args) => ctl::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Dev(args) => match dev::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh dev: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
