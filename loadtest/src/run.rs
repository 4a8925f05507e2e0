//! `main`: validate, bind, start one thread per shard, watch (progress
//! bar, churn, Ctrl-C), merge, report.

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Args, Config, Scenario, Transport};
use crate::driver::{self, Conn, Io, Shared};
use crate::engine::{Engine, EngineConfig};
use crate::farm::{self, ChurnEvent, Churner, Node, Plan, RssSample};
use crate::stats::{self, LAT_NAMES, LatencySummary, MsgCounts, OpCounts, SeriesPoint, Stats};

/// Parses the command line, runs, and returns the exit status: 0, 1 (an
/// error, or --max-fail-pct exceeded), 2 (bad arguments).
pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let nodes = match &args.farm_json {
        Some(p) => match farm::read_farm(p) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        None => Vec::new(),
    };
    let farm_targets: Vec<SocketAddr> = nodes.iter().map(|n| n.sip).collect();
    let cfg = match args.validate(&farm_targets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if !cfg.allow_remote
        && let Some(n) = nodes.iter().find(|n| !n.sip.ip().is_loopback())
    {
        eprintln!(
            "error: --farm-json: node {} at {} is not on loopback (add --allow-remote)",
            n.name, n.sip
        );
        return 2;
    }
    match run(cfg, nodes) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Everything a run reports (`--json-out`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub run_id: String,
    pub started_unix_ms: u64,
    pub machine: Machine,
    pub config: Config,
    /// The measured phase.
    pub measure: Measure,
    pub ops: Totals,
    pub by_kind: ByKind,
    /// Callee registrations before the measured phase (call, mixed).
    pub setup: OpCounts,
    /// Responses received by method and status code (measured phase).
    pub status: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// Failed operations by reason.
    pub failures: std::collections::BTreeMap<String, u64>,
    pub messages: MsgCounts,
    /// Microseconds, successful transactions only.
    pub latency_us: std::collections::BTreeMap<&'static str, LatencySummary>,
    /// The kernel's UDP receive-buffer drops during the run (all sockets
    /// of the machine, /proc/net/snmp).
    pub udp_rcvbuf_errors: u64,
    /// CPU seconds the generator used (user, system).
    pub generator_cpu_s: CpuUse,
    pub churn: Vec<ChurnEvent>,
    /// Chaos runs: every node's RSS every 10 s.
    pub rss: Vec<RssSample>,
    pub series: Vec<SeriesPoint>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs of the machine.
    pub cpus: usize,
    /// CPUs this process may run on (taskset).
    pub allowed_cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Measure {
    pub offered_rate: f64,
    /// Operations started per second over the sending window.
    pub achieved_send_rate: f64,
    /// Operations that succeeded per second, from the start to the last
    /// completion.
    pub completed_rate: f64,
    pub send_elapsed_s: f64,
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timeouts: u64,
    /// Not started: the handset's previous REGISTER was still open.
    pub skipped_busy: u64,
    pub fail_pct: f64,
}

#[derive(Debug, Serialize)]
pub struct ByKind {
    pub register: OpCounts,
    pub call: OpCounts,
}

#[derive(Debug, Serialize)]
pub struct CpuUse {
    pub user: f64,
    pub system: f64,
}

/// The one-line summary printed on stdout.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    scenario: Scenario,
    transport: Transport,
    offered_rate: f64,
    achieved_send_rate: f64,
    completed_rate: f64,
    started: u64,
    succeeded: u64,
    failed: u64,
    timeouts: u64,
    fail_pct: f64,
    p50_us: u64,
    p99_us: u64,
    retransmissions: u64,
    generator_cpu_s: f64,
    elapsed_s: f64,
    json_out: Option<&'a std::path::Path>,
}

struct ShardSockets {
    udp: Vec<UdpSocket>,
    tcp: Vec<(TcpStream, SocketAddr)>,
    locals: Vec<SocketAddr>,
}

fn udp_socket(cfg: &Config) -> anyhow::Result<UdpSocket> {
    let domain = if cfg.bind.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .context("cannot create a UDP socket")?;
    // the kernel may grant less (net.core.rmem_max); that is fine
    let _ = s.set_recv_buffer_size(cfg.sock_buf);
    let _ = s.set_send_buffer_size(cfg.sock_buf);
    s.bind(&SocketAddr::new(cfg.bind, 0).into())
        .with_context(|| format!("cannot bind a UDP socket on {}", cfg.bind))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn tcp_conn(cfg: &Config, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let domain = if cfg.bind.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    let _ = s.set_recv_buffer_size(cfg.sock_buf);
    let _ = s.set_send_buffer_size(cfg.sock_buf);
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::new(cfg.bind, 0).into())?;
    s.connect_timeout(&target.into(), Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {target} over TCP"))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn split(total: u64, parts: usize, i: usize) -> u64 {
    let p = parts as u64;
    total / p + u64::from((i as u64) < total % p)
}

fn run(cfg: Config, nodes: Vec<Node>) -> anyhow::Result<i32> {
    let run_id = (crate::config::entropy() >> 16) as u32;
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let shards = cfg.threads;

    // bind and connect everything before any load
    let mut plans = Vec::with_capacity(shards);
    for s in 0..shards {
        let n_local = split(cfg.sockets as u64, shards, s) as usize;
        let mut ss = ShardSockets {
            udp: Vec::new(),
            tcp: Vec::new(),
            locals: Vec::new(),
        };
        match cfg.transport {
            Transport::Udp => {
                for _ in 0..n_local {
                    let u = udp_socket(&cfg)?;
                    ss.locals.push(u.local_addr()?);
                    ss.udp.push(u);
                }
            }
            Transport::Tcp | Transport::Tls => {
                for _ in 0..n_local {
                    for &t in &cfg.targets {
                        let c = tcp_conn(&cfg, t)?;
                        ss.locals.push(c.local_addr()?);
                        ss.tcp.push((c, t));
                    }
                }
            }
        }
        if n_local < 2 && cfg.scenario != Scenario::Register {
            eprintln!(
                "warning: thread {s} has one socket: its callers share their callees' address \
                 (use --sockets ≥ 2 × --threads to give them their own)"
            );
        }
        let first = cfg.user_start;
        let handsets: Vec<u32> = (0..cfg.users)
            .filter(|i| *i as usize % shards == s)
            .map(|i| first + i)
            .collect();
        let callers: Vec<u32> = if cfg.scenario == Scenario::Register {
            Vec::new()
        } else {
            (0..cfg.callers)
                .filter(|i| *i as usize % shards == s)
                .map(|i| first + cfg.users + i)
                .collect()
        };
        let ec = EngineConfig {
            shard: s as u16,
            run_id,
            scenario: cfg.scenario,
            transport: cfg.transport,
            domain: cfg.domain.clone(),
            user_prefix: cfg.user_prefix.clone(),
            password: cfg.password.clone(),
            refresh: cfg.refresh,
            expires: cfg.expires,
            handsets,
            callers,
            targets: cfg.targets.clone(),
            locals: ss.locals.clone(),
            n_local,
            rate: cfg.rate / shards as f64,
            count: split(cfg.count, shards, s),
            duration: cfg.duration,
            setup_rate: cfg.setup_rate / shards as f64,
            mix_register: cfg.mix.register,
            mix_call: cfg.mix.call,
            call_routing: cfg.call_routing,
            t1: cfg.t1,
            t2: cfg.t2,
            timeout: cfg.timeout,
            hold: cfg.hold,
            answer: cfg.answer,
            drain: cfg.drain,
            seed: cfg.seed,
        };
        // fail on a bad template before starting anything
        Engine::new(ec.clone(), Instant::now()).map_err(anyhow::Error::msg)?;
        let trace = match &cfg.trace_msg {
            Some(p) => {
                let path = if s == 0 {
                    p.clone()
                } else {
                    p.with_extension(format!("{s}"))
                };
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("--trace-msg {}", path.display()))?;
                Some(driver::Trace::new(f, 10_000))
            }
            None => None,
        };
        plans.push((ec, ss, trace));
    }

    let shared = Arc::new(Shared::new(shards, cfg.spin));
    let snmp0 = udp_rcvbuf_errors();
    let t_start = Instant::now();
    let mut handles = Vec::with_capacity(shards);
    for (s, (ec, ss, trace)) in plans.into_iter().enumerate() {
        let shared = shared.clone();
        let tls = cfg.tls.clone();
        let h = std::thread::Builder::new()
            .name(format!("shard-{s}"))
            .spawn(move || -> anyhow::Result<Stats> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let io = match ec.transport {
                        Transport::Udp => Io::Udp(
                            ss.udp
                                .into_iter()
                                .map(tokio::net::UdpSocket::from_std)
                                .collect::<Result<_, _>>()?,
                        ),
                        Transport::Tcp | Transport::Tls => Io::Tcp(
                            ss.tcp
                                .into_iter()
                                .map(|(c, peer)| {
                                    let tls = tls.as_ref().map(|t| Box::new(t.connect(peer)));
                                    tokio::net::TcpStream::from_std(c)
                                        .map(|c| Conn::new(c, peer, tls))
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                    };
                    let engine = Engine::new(ec, Instant::now()).map_err(anyhow::Error::msg)?;
                    Ok(driver::drive(engine, io, shared, s, trace).await)
                })
            })?;
        handles.push(h);
    }

    // watch: progress, churn, Ctrl-C
    let watch_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let show_progress = cfg.progress && std::io::stderr().is_terminal();
    let churn = watch_rt.block_on(watch(&cfg, &shared, &handles, nodes, show_progress))?;

    let mut total = Stats::default();
    for h in handles {
        let st = h
            .join()
            .map_err(|_| anyhow::anyhow!("a shard thread panicked"))??;
        total.merge(&st);
    }
    let elapsed = t_start.elapsed();
    let snmp1 = udp_rcvbuf_errors();
    let report = report(
        &cfg,
        &total,
        run_id,
        started_unix_ms,
        churn,
        snmp1.saturating_sub(snmp0),
        elapsed,
    );

    if let Some(p) = &cfg.json_out {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text).with_context(|| format!("--json-out {}", p.display()))?;
    }
    if let Some(dir) = &cfg.svg_out {
        let title = format!(
            "ringmesh-load {:?} {:?} {}/s",
            cfg.scenario, cfg.transport, cfg.rate
        )
        .to_lowercase();
        crate::plot::write_all(dir, &report.series, &title).map_err(anyhow::Error::msg)?;
    }
    let primary = if cfg.scenario == Scenario::Register {
        "register"
    } else {
        "invite_200"
    };
    let lat = &report.latency_us[primary];
    let summary = Summary {
        scenario: cfg.scenario,
        transport: cfg.transport,
        offered_rate: cfg.rate,
        achieved_send_rate: report.measure.achieved_send_rate,
        completed_rate: report.measure.completed_rate,
        started: report.ops.started,
        succeeded: report.ops.succeeded,
        failed: report.ops.failed,
        timeouts: report.ops.timeouts,
        fail_pct: report.ops.fail_pct,
        p50_us: lat.p50,
        p99_us: lat.p99,
        retransmissions: report.messages.retransmissions,
        generator_cpu_s: ((report.generator_cpu_s.user + report.generator_cpu_s.system) * 1000.0)
            .round()
            / 1000.0,
        elapsed_s: report.measure.elapsed_s,
        json_out: cfg.json_out.as_deref(),
    };
    println!("{}", serde_json::to_string(&summary)?);
    if let Some(max) = cfg.max_fail_pct
        && report.ops.fail_pct > max
    {
        eprintln!(
            "error: {:.3}% of operations failed, more than --max-fail-pct {max}",
            report.ops.fail_pct
        );
        return Ok(1);
    }
    Ok(0)
}

async fn watch(
    cfg: &Config,
    shared: &Arc<Shared>,
    handles: &[std::thread::JoinHandle<anyhow::Result<Stats>>],
    nodes: Vec<Node>,
    show_progress: bool,
) -> anyhow::Result<(Vec<ChurnEvent>, Vec<RssSample>)> {
    let bar = show_progress.then(|| {
        let b = indicatif::ProgressBar::new(cfg.count);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} started  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    });
    let mut churner: Option<Churner> = None;
    let mut next_churn: Option<Instant> = None;
    let mut next_rss: Option<Instant> = None;
    let mut measure_start: Option<Instant> = None;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
                eprintln!("interrupted: no new operations; waiting briefly for open ones");
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let all_done = handles.iter().all(|h| h.is_finished());
        let measuring = shared
            .progress
            .iter()
            .all(|p| p.measuring.load(Ordering::Relaxed));
        if measuring && measure_start.is_none() {
            let now = Instant::now();
            measure_start = Some(now);
            if let Some(every) = cfg.churn_every {
                let plan = match (&cfg.upgrade_to, cfg.chaos) {
                    (Some(program), _) => Plan::Upgrade(program.clone()),
                    (None, true) => Plan::Chaos(cfg.seed),
                    (None, false) => Plan::InTurn,
                };
                churner = Some(Churner::new(nodes.clone(), now, plan).map_err(anyhow::Error::msg)?);
                next_churn = Some(now + every);
                if cfg.chaos || cfg.upgrade_to.is_some() {
                    next_rss = Some(now);
                }
            }
        }
        if let Some(b) = &bar {
            let sum =
                |f: fn(&driver::Progress) -> u64| -> u64 { shared.progress.iter().map(f).sum() };
            let started = sum(|p| p.started.load(Ordering::Relaxed));
            let ok = sum(|p| p.succeeded.load(Ordering::Relaxed));
            let failed = sum(|p| p.failed.load(Ordering::Relaxed));
            let live = sum(|p| p.live.load(Ordering::Relaxed));
            b.set_position(started);
            if measure_start.is_none() {
                let setup = sum(|p| p.setup_done.load(Ordering::Relaxed));
                b.set_message(format!("setup: {setup}/{} callees registered", cfg.users));
            } else {
                b.set_message(format!("ok {ok}  failed {failed}  open {live}"));
            }
        }
        if all_done {
            break;
        }
        if let Some(c) = &mut churner {
            c.thaw(false);
            if next_rss.is_some_and(|at| Instant::now() >= at) {
                c.sample_rss();
                next_rss = next_rss.map(|at| at + farm::RSS_EVERY);
            }
        }
        // churn only while operations are being started
        if let (Some(c), Some(at), Some(t0)) = (&mut churner, next_churn, measure_start)
            && Instant::now() >= at
            && t0.elapsed() < cfg.duration
            && !interrupted
        {
            c.churn_one().await;
            next_churn = Some(at + cfg.churn_every.unwrap_or(Duration::from_secs(1)));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(match churner {
        Some(mut c) => {
            c.shutdown().await;
            (c.events, c.rss)
        }
        None => (Vec::new(), Vec::new()),
    })
}

fn report(
    cfg: &Config,
    s: &Stats,
    run_id: u32,
    started_unix_ms: u64,
    (churn, rss): (Vec<ChurnEvent>, Vec<RssSample>),
    rcvbuf_errors: u64,
    elapsed: Duration,
) -> Report {
    let t = s.total();
    let period = 1.0 / cfg.rate;
    let send_elapsed = match (s.t0, s.last_start) {
        (Some(a), Some(b)) => stats::secs(a, b) + period,
        _ => 0.0,
    };
    let complete_elapsed = match (s.t0, s.last_end) {
        (Some(a), Some(b)) => stats::secs(a, b).max(period),
        _ => 0.0,
    };
    let rate = |n: u64, secs: f64| {
        if secs > 0.0 {
            (n as f64 / secs * 10.0).round() / 10.0
        } else {
            0.0
        }
    };
    let ended = t.succeeded + t.failed;
    let latency_us = LAT_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, stats::summarize(&s.lat[i])))
        .collect();
    let (user, system) = cpu_times();
    Report {
        tool: "ringmesh-load",
        version: env!("CARGO_PKG_VERSION"),
        run_id: format!("{run_id:08x}"),
        started_unix_ms,
        machine: machine(),
        config: cfg.clone(),
        measure: Measure {
            offered_rate: cfg.rate,
            achieved_send_rate: rate(t.started, send_elapsed),
            completed_rate: rate(t.succeeded, complete_elapsed),
            send_elapsed_s: (send_elapsed * 1000.0).round() / 1000.0,
            elapsed_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        },
        ops: Totals {
            started: t.started,
            succeeded: t.succeeded,
            failed: t.failed,
            timeouts: t.timeouts,
            skipped_busy: s.skipped_busy,
            fail_pct: if ended > 0 {
                (t.failed as f64 * 100.0 / ended as f64 * 1000.0).round() / 1000.0
            } else {
                0.0
            },
        },
        by_kind: ByKind {
            register: s.ops[0],
            call: s.ops[1],
        },
        setup: s.setup,
        status: s.status_counts(),
        failures: s.failure_counts(),
        messages: s.msgs,
        latency_us,
        udp_rcvbuf_errors: rcvbuf_errors,
        generator_cpu_s: CpuUse { user, system },
        churn,
        rss,
        series: stats::series(s),
    }
}

fn cpu_times() -> (f64, f64) {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            let r = |x: f64| (x * 1000.0).round() / 1000.0;
            (r(tv(u.user_time())), r(tv(u.system_time())))
        }
        Err(_) => (0.0, 0.0),
    }
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    Machine {
        cpus,
        allowed_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel,
    }
}

/// `Udp: ... RcvbufErrors` from /proc/net/snmp (0 when unavailable).
fn udp_rcvbuf_errors() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    if lines.len() < 2 {
        return 0;
    }
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let vals: Vec<&str> = lines[1].split_whitespace().collect();
    names
        .iter()
        .position(|n| *n == "RcvbufErrors")
        .and_then(|i| vals.get(i))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
