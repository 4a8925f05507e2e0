//! `ringmesh ctl`: the operator CLI over the control-plane APIs.
//!
//! - `ringmesh ctl subscriber add|get|list|set-password|bar|unbar|delete`
//!   talks to provisioning (`--provisioning`, `RINGMESH_PROVISIONING`,
//!   default `127.0.0.1:5660`: `ringmesh dev`'s base port + 600); the work
//!   is in [`ringmesh_provisioning::cli`].
//! - `status`, `ring`, `lookup`, `bindings`, `drain`, `ping`, `trace`,
//!   `sip-trace` talk to one supernode's admin API (`--admin`,
//!   `RINGMESH_ADMIN`, default `127.0.0.1:5260`: the first node of a
//!   default `ringmesh dev`), through [`admin_command`].
//!
//! Output is a readable table, or one JSON document with `--json`. Exit
//! codes: 0 done, 1 the server refused (its message is printed), 2 usage
//! error, 3 not found, 4 unavailable.

use std::process::ExitCode;

use ringmesh_provisioning::cli::{self, Exit, Io, SubscriberCommand};

/// The `ringmesh ctl` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// The provisioning API (HOST:PORT).
    #[arg(
        long,
        env = "RINGMESH_PROVISIONING",
        default_value = "127.0.0.1:5660",
        global = true
    )]
    pub provisioning: String,
    /// A supernode's admin API (HOST:PORT).
    #[arg(
        long,
        env = "RINGMESH_ADMIN",
        default_value = "127.0.0.1:5260",
        global = true
    )]
    pub admin: String,
    /// Print JSON (one document on stdout; errors as JSON on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ringmesh ctl` commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Manage subscribers (provisioning API).
    Subscriber {
        #[command(subcommand)]
        command: SubscriberCommand,
    },
    #[command(flatten)]
    Admin(AdminCommand),
}

/// The commands served by a supernode's admin API.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// The node's identity, state and load.
    Status,
    /// The node's view of the ring.
    Ring,
    /// Where an AOR lives: its key, replicas and bindings.
    Lookup {
        /// The AOR (sip:, sips: or tel: URI).
        aor: String,
    },
    /// The bindings the node stores.
    Bindings {
        /// Only this AOR.
        #[arg(long)]
        aor: Option<String>,
        /// Only flows that end at this node.
        #[arg(long)]
        edge_only: bool,
        /// Bindings per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue from this token.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Read every page.
        #[arg(long)]
        all: bool,
    },
    /// Graceful leave: hand keys off, then leave the ring.
    Drain {
        /// The Node-ID to drain (default: the node --admin names).
        node: Option<String>,
        /// Seconds to wait for the hand-off before leaving anyway.
        #[arg(long, default_value_t = 0)]
        grace_seconds: u32,
    },
    /// Overlay ping of another node.
    Ping {
        /// The Node-ID to ping.
        node: String,
        /// How many pings.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Per-ping timeout, milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u32,
    },
    /// The overlay path to a node, a key or an AOR, hop by hop.
    Trace {
        /// A Node-ID (32 hex), a key (64 hex) or an AOR.
        target: String,
        /// Most hops.
        #[arg(long, default_value_t = 32)]
        max_hops: u32,
    },
    /// Live SIP messages through the node, filtered.
    SipTrace {
        /// Only messages of this AOR.
        #[arg(long)]
        aor: Option<String>,
        /// Only this Call-ID.
        #[arg(long)]
        call_id: Option<String>,
        /// Only this method (and its responses).
        #[arg(long)]
        method: Option<String>,
        /// Stop after this many messages (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        max_messages: u32,
        /// Include message bodies.
        #[arg(long)]
        bodies: bool,
    },
}

impl AdminCommand {
    /// The command's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::Status => "status",
            AdminCommand::Ring => "ring",
            AdminCommand::Lookup { .. } => "lookup",
            AdminCommand::Bindings { .. } => "bindings",
            AdminCommand::Drain { .. } => "drain",
            AdminCommand::Ping { .. } => "ping",
            AdminCommand::Trace { .. } => "trace",
            AdminCommand::SipTrace { .. } => "sip-trace",
        }
    }
}

/// Runs one admin command against the admin API at `addr`.
///
/// Not implemented yet: the supernode's admin service comes with the
/// supernode integration. Until then every admin command fails clearly
/// (exit 1) instead of pretending to work.
pub async fn admin_command(addr: &str, json: bool, cmd: AdminCommand, io: &mut Io<'_>) -> Exit {
    let message = format!(
        "admin API not available yet: `ringmesh ctl {}` (admin at {addr}) is not implemented",
        cmd.name()
    );
    if json {
        let _ = writeln!(
            io.err,
            "{}",
            serde_json::json!({"error": {"code": "UNIMPLEMENTED", "message": message}})
        );
    } else {
        let _ = writeln!(io.err, "error: {message}");
    }
    Exit::Server
}

/// Runs a parsed `ctl` command with the given streams; returns the exit code.
pub async fn run_with(args: CtlArgs, io: &mut Io<'_>) -> Exit {
    match args.command {
        CtlCommand::Subscriber { command } => {
            cli::run(&args.provisioning, args.json, command, io).await
        }
        CtlCommand::Admin(cmd) => admin_command(&args.admin, args.json, cmd, io).await,
    }
}

/// `ringmesh ctl`: runs the command on the process's stdin/stdout/stderr.
pub fn run(args: CtlArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringmesh ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdin = std::io::stdin();
    let (mut lock, mut out, mut err) = (stdin.lock(), std::io::stdout(), std::io::stderr());
    let code = rt.block_on(run_with(
        args,
        &mut Io {
            stdin: &mut lock,
            out: &mut out,
            err: &mut err,
        },
    ));
    ExitCode::from(code as u8)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn parse(args: &[&str]) -> CtlArgs {
        Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
            .unwrap()
            .ctl
    }

    #[test]
    fn defaults_and_global_flags() {
        let a = parse(&["subscriber", "get", "alice", "--json"]);
        assert_eq!(a.provisioning, "127.0.0.1:5660");
        assert_eq!(a.admin, "127.0.0.1:5260");
        assert!(a.json);
        let a = parse(&[
            "--provisioning",
            "10.0.0.1:7000",
            "subscriber",
            "list",
            "--all",
        ]);
        assert_eq!(a.provisioning, "10.0.0.1:7000");
        assert!(matches!(
            a.command,
            CtlCommand::Subscriber {
                command: SubscriberCommand::List { all: true, .. }
            }
        ));
        assert!(matches!(
            parse(&["sip-trace", "--method", "INVITE"]).command,
            CtlCommand::Admin(AdminCommand::SipTrace { .. })
        ));
        let e = Cli::try_parse_from(["ctl", "subscriber", "add", "alice"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "usage errors exit 2");
    }

    #[tokio::test]
    async fn admin_commands_say_they_are_not_available() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut input: &[u8] = b"";
        let code = run_with(
            parse(&["status"]),
            &mut Io {
                stdin: &mut input,
                out: &mut out,
                err: &mut err,
            },
        )
        .await;
        assert_eq!(code, Exit::Server);
        assert!(
            String::from_utf8(err)
                .unwrap()
                .contains("admin API not available yet")
        );
        assert!(out.is_empty());
    }
}
