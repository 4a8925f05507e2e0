//! Runs the overlay simulator from the command line.
//!
//! ```text
//! cargo run --release -p ringmesh-overlay --example sim -- \
//!     --nodes 10000 --keys 1000000 --seed 1 --churn kills=100,joins=100,leaves=50,every=3
//! ```
//!
//! Options (all optional):
//!
//! | flag | meaning | default |
//! |---|---|---|
//! | `--nodes N` | initial farm size | 200 |
//! | `--keys N` | keys loaded before churn | 10000 |
//! | `--seed N` | RNG seed | 1 |
//! | `--replicas K` | replication factor | 3 |
//! | `--churn kills=A,joins=B,leaves=C,every=SECS` | membership changes | none |
//! | `--bootstrap shared\|join` | farm start: shared view, or joins | shared |
//! | `--join-interval MS` | with `--bootstrap join`, time between joins | 100 |
//! | `--loss P` | message loss probability | 0 |
//! | `--latency MIN-MAX` | one-way link latency in ms | 1-20 |
//! | `--write-rate N` | puts per virtual second during load | 20000 |
//! | `--routing full\|fingers` | next-hop rule | full |
//! | `--wire` | encode every message through protobuf | off |
//! | `--json` | print JSON instead of a table | off |

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ringmesh_overlay::RoutingMode;
use ringmesh_overlay::sim::{self, Bootstrap, Params};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let params = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}\nsee the doc comment of examples/sim.rs for the options");
            return ExitCode::from(2);
        }
    };
    let json = args.iter().any(|a| a == "--json");
    let started = *STARTED.get_or_init(Instant::now);
    let report = sim::run(&params);
    let wall = started.elapsed();
    if json {
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

fn parse(args: &[String]) -> Result<Params, String> {
    let mut p = Params::new(200, 10_000);
    p.progress = Some(progress);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => p.nodes = num(value()?)?,
            "--keys" => p.keys = num(value()?)?,
            "--seed" => p.seed = num(value()?)?,
            "--replicas" => p.node.replicas = num(value()?)?,
            "--write-rate" => p.write_rate = num(value()?)?,
            "--loss" => p.net.loss = value()?.parse().map_err(|_| "--loss takes a probability")?,
            "--latency" => {
                let v = value()?;
                let (a, b) = v.split_once('-').ok_or("--latency takes MIN-MAX")?;
                p.net.latency_min = Duration::from_millis(num(a)?);
                p.net.latency_max = Duration::from_millis(num(b)?);
            }
            "--bootstrap" => {
                p.bootstrap = match value()?.as_str() {
                    "shared" => Bootstrap::SharedView,
                    "join" => Bootstrap::Join {
                        interval: Duration::from_millis(100),
                    },
                    other => return Err(format!("unknown bootstrap {other}")),
                }
            }
            "--join-interval" => {
                p.bootstrap = Bootstrap::Join {
                    interval: Duration::from_millis(num(value()?)?),
                }
            }
            "--routing" => {
                p.node.routing = match value()?.as_str() {
                    "full" => RoutingMode::FullView,
                    "fingers" => RoutingMode::Fingers,
                    other => return Err(format!("unknown routing {other}")),
                }
            }
            "--churn" => {
                for part in value()?.split(',') {
                    let (k, v) = part
                        .split_once('=')
                        .ok_or("--churn takes name=value pairs")?;
                    match k {
                        "kills" => p.churn.kills = num(v)?,
                        "joins" => p.churn.joins = num(v)?,
                        "leaves" => p.churn.leaves = num(v)?,
                        "every" => p.churn.every = Duration::from_secs_f64(num::<f64>(v)?),
                        other => return Err(format!("unknown churn field {other}")),
                    }
                }
            }
            "--wire" => p.net.wire = true,
            "--json" => {}
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(p)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}
