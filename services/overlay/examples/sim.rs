//! Runs the overlay simulator from the command line.
//!
//! ```text
//! cargo run --release -p ringmesh-overlay --example sim -- \
//!     --nodes 10000 --keys 1000000 --seed 1 --churn kills=100,joins=100,leaves=50,every=3
//! ```
//!
//! Every option is optional; `--help` lists them with their defaults:
//!
//! | flag | meaning | default |
//! |---|---|---|
//! | `--nodes N` | initial farm size | 200 |
//! | `--keys N` | keys loaded before churn | 10000 |
//! | `--seed N` | RNG seed | 1 |
//! | `--replicas K` | replication factor | 3 |
//! | `--churn kills=A,joins=B,leaves=C,every=SECS` | membership changes | none (`kills=0,joins=0,leaves=0,every=3`) |
//! | `--bootstrap shared\|join` | farm start: shared view, or joins | shared |
//! | `--join-interval MS` | time between joins (implies `--bootstrap join`) | 100 |
//! | `--loss P` | message loss probability | 0 |
//! | `--latency MIN-MAX` | one-way link latency in ms | 1-20 |
//! | `--write-rate N` | puts per virtual second during load | 20000 |
//! | `--routing full\|fingers` | next-hop rule | full |
//! | `--wire` | encode every message through protobuf | off |
//! | `--view-lag MS` | membership lag a writer's replica check allows | 60000 |
//! | `--json` | print JSON instead of a table | off |
//!
//! A bad argument exits with status 2 and says which one.

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ringmesh_overlay::RoutingMode;
use ringmesh_overlay::sim::{self, Bootstrap, Churn, Params};

/// Join interval when `--bootstrap join` is given without `--join-interval`.
const JOIN_INTERVAL_MS: u64 = 100;

/// Runs the deterministic overlay simulator: farm start, load, churn,
/// settle, verify. Prints the report (a table, or JSON with --json) on
/// stdout and phase lines on stderr; exits 1 if a key was lost.
#[derive(Debug, Parser)]
#[command(name = "sim", args_override_self = true)]
struct Args {
    /// Initial farm size.
    #[arg(long, value_name = "N", default_value_t = 200)]
    nodes: usize,
    /// Keys loaded before churn.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    keys: usize,
    /// RNG seed: the same seed and options give the same report.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Replication factor.
    #[arg(long, value_name = "K", default_value_t = 3)]
    replicas: usize,
    /// Membership changes: kills=A,joins=B,leaves=C,every=SECS, any subset
    /// (a count left out is 0; every, 3 s).
    #[arg(
        long,
        value_name = "SPEC",
        default_value = "kills=0,joins=0,leaves=0,every=3",
        value_parser = parse_churn
    )]
    churn: Churn,
    /// Farm start: one shared member view, or joins through the protocol.
    #[arg(long, value_enum, default_value_t = BootstrapArg::Shared)]
    bootstrap: BootstrapArg,
    /// Milliseconds between joins; implies --bootstrap join [default: 100].
    #[arg(long, value_name = "MS")]
    join_interval: Option<u64>,
    /// Message loss probability, from 0 to 1.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    loss: f64,
    /// One-way link latency range in milliseconds.
    #[arg(long, value_name = "MIN-MAX", default_value = "1-20", value_parser = parse_latency)]
    latency: (u64, u64),
    /// Puts per virtual second during the load.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    write_rate: u32,
    /// Next-hop rule.
    #[arg(long, value_enum, default_value_t = RoutingArg::Full)]
    routing: RoutingArg,
    /// Encode every message through protobuf (slower; exercises the wire
    /// format).
    #[arg(long)]
    wire: bool,
    /// How long a membership change may stay unknown to a writer before
    /// its replica-set check is strict, in ms [default: the node's].
    #[arg(long, value_name = "MS")]
    view_lag: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BootstrapArg {
    /// Every node starts from one shared member list.
    Shared,
    /// One node founds the ring; the others join one by one.
    Join,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoutingArg {
    /// Straight to the responsible node from the full member view.
    Full,
    /// Greedy Chord routing through fingers.
    Fingers,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let params = params(&args);
    let started = *STARTED.get_or_init(Instant::now);
    let report = sim::run(&params);
    let wall = started.elapsed();
    if args.json {
        let j = report.to_json();
        println!(
            "{}, \"wall_s\": {:.1}}}",
            &j[..j.len() - 1],
            wall.as_secs_f64()
        );
    } else {
        print!("{report}");
        println!("wall_s  {:.1}", wall.as_secs_f64());
    }
    if report.keys_lost > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Phase lines on stderr, so stdout stays the report alone.
fn progress(line: &str) {
    let t = STARTED.get_or_init(Instant::now).elapsed();
    eprintln!("[wall {:>7.1}s] {line}", t.as_secs_f64());
}

fn params(a: &Args) -> Params {
    let mut p = Params::new(a.nodes, a.keys);
    p.progress = Some(progress);
    p.seed = a.seed;
    p.node.replicas = a.replicas;
    p.write_rate = a.write_rate;
    p.net.loss = a.loss;
    p.net.latency_min = Duration::from_millis(a.latency.0);
    p.net.latency_max = Duration::from_millis(a.latency.1);
    p.net.wire = a.wire;
    p.bootstrap = match (a.bootstrap, a.join_interval) {
        (BootstrapArg::Shared, None) => Bootstrap::SharedView,
        (_, ms) => Bootstrap::Join {
            interval: Duration::from_millis(ms.unwrap_or(JOIN_INTERVAL_MS)),
        },
    };
    p.node.routing = match a.routing {
        RoutingArg::Full => RoutingMode::FullView,
        RoutingArg::Fingers => RoutingMode::Fingers,
    };
    p.churn = a.churn.clone();
    if let Some(ms) = a.view_lag {
        p.node.view_lag_ms = ms;
    }
    p
}

/// `kills=A,joins=B,leaves=C,every=SECS`, any subset, starting from the
/// scenario's defaults (no changes, one every 3 s).
fn parse_churn(s: &str) -> Result<Churn, String> {
    let mut churn = Params::new(1, 0).churn;
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected name=value"))?;
        match k {
            "kills" => churn.kills = num(v)?,
            "joins" => churn.joins = num(v)?,
            "leaves" => churn.leaves = num(v)?,
            "every" => {
                churn.every = Duration::try_from_secs_f64(num(v)?)
                    .map_err(|_| format!("every={v}: not a number of seconds"))?
            }
            other => {
                return Err(format!(
                    "unknown field `{other}` (kills, joins, leaves, every)"
                ));
            }
        }
    }
    Ok(churn)
}

fn parse_latency(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').ok_or("expected MIN-MAX, in ms")?;
    let (min, max) = (num(a)?, num(b)?);
    if min > max {
        return Err(format!("{min} is above {max}"));
    }
    Ok((min, max))
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = num(s)?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{p} is not a probability (0 to 1)"));
    }
    Ok(p)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}
