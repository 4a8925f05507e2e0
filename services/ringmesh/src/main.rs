//! `ringmesh`: one binary, one image. Each service is a subcommand.
//!
//! - `ringmesh supernode`: one supernode (SIP registrar and proxy).
//! - `ringmesh dev`: a local farm for a new user, with demo subscribers.

mod dev;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Run a local farm (supernodes as child processes) for development.
    Dev(dev::DevArgs),
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
    let cli = Cli::parse();
    match cli.command {
        Command::Supernode(args) => {
            let cfg = match (*args).resolve() {
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
            match rt.block_on(ringmesh_supernode::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringmesh supernode: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev(args) => match dev::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh dev: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
