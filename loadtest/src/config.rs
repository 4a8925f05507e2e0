//! The command line, validated once.
//!
//! Every number is checked against a range when it is parsed (clap then
//! names the flag in its error); checks that involve several flags happen
//! in [`Args::validate`]. Both exit with status 2 before any socket is
//! bound. Every run is bounded: `--count` and `--duration` always have a
//! value, and the drain after sending is bounded too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

pub const MAX_RATE: f64 = 1_000_000.0;
pub const MAX_DURATION_SECS: f64 = 3600.0;
pub const MAX_COUNT: u64 = 100_000_000;
pub const MAX_SOCKETS: usize = 1024;
pub const MAX_THREADS: usize = 64;
pub const MAX_USERS: u32 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// A register storm of --users handsets (with --refresh: then refreshes).
    Register,
    /// Calls from --callers to --users registered callee handsets.
    Call,
    /// Weighted refresh REGISTERs and calls (--mix).
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26): needs --tls-ca.
    Tls,
}

impl Transport {
    pub fn via_token(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
    /// Whether it runs over connections (one per local socket and target).
    pub fn is_stream(&self) -> bool {
        *self != Transport::Udp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallRouting {
    /// Caller attached to another target than its callee (crosses supernodes).
    Cross,
    /// Caller attached to the callee's target.
    Same,
}

/// `ringmesh-load`: a SIP load generator (register storms, calls, mixes,
/// churn) that simulates many handsets over UDP or TCP.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringmesh-load", version, about, long_about = None, allow_negative_numbers = true)]
pub struct Args {
    /// What the handsets do.
    #[arg(long, short = 's', value_enum, default_value = "register")]
    pub scenario: Scenario,
    /// A server address IP:PORT (repeat for several; handsets are spread
    /// round-robin). Loopback only unless --allow-remote. Default
    /// 127.0.0.1:5060, or the nodes of --farm-json.
    #[arg(long = "target", short = 't', value_parser = parse_target)]
    pub targets: Vec<SocketAddr>,
    /// The `{"event":"node",...}` lines of `ringmesh dev --json`: targets
    /// (when no --target is given) and the nodes --churn-every restarts.
    #[arg(long)]
    pub farm_json: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: Transport,
    /// --transport tls: the CA certificates (PEM) the server's certificate
    /// must chain to.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// --transport tls: the name to verify the server's certificate for,
    /// sent as SNI [default: the target's IP address, no SNI].
    #[arg(long)]
    pub tls_name: Option<String>,
    /// The SIP domain (Request-URI of REGISTER, host of every AOR).
    #[arg(long, default_value = "ringmesh.test", value_parser = parse_domain)]
    pub domain: String,
    /// Users are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "user", value_parser = parse_prefix)]
    pub user_prefix: String,
    /// Number of the first user.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000_000))]
    pub user_start: u32,
    /// Registered handsets: the register storm's users, or the callees.
    #[arg(long, default_value_t = 1000, value_parser = parse_users)]
    pub users: u32,
    /// Caller identities (call, mixed), numbered after the --users ones
    /// [default: --users].
    #[arg(long, value_parser = parse_users)]
    pub callers: Option<u32>,
    /// Password of every user: answer 401/407 challenges with digest
    /// (SHA-256 preferred, MD5).
    #[arg(long, value_parser = parse_password)]
    pub password: Option<String>,
    /// register: after the first REGISTER of each user, keep refreshing
    /// (same Call-ID, CSeq+1) until --count or --duration.
    #[arg(long)]
    pub refresh: bool,
    /// Expires of every REGISTER, seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub expires: u32,
    /// Operations (registrations or calls) started per second, open loop.
    #[arg(long, short = 'r', default_value = "1000", value_parser = parse_rate)]
    pub rate: f64,
    /// Operations to start at most [default: --users for a register storm
    /// without --refresh, else rate × duration].
    #[arg(long, short = 'm', value_parser = parse_count)]
    pub count: Option<u64>,
    /// Seconds during which operations are started, at most.
    #[arg(long, short = 'd', default_value = "60", value_parser = parse_duration)]
    pub duration: f64,
    /// Callee registrations per second before a call or mixed run.
    #[arg(long, default_value = "5000", value_parser = parse_rate)]
    pub setup_rate: f64,
    /// mixed: relative weights, e.g. register=70,call=30.
    #[arg(long, default_value = "register=70,call=30", value_parser = parse_mix)]
    pub mix: Mix,
    /// Milliseconds between the ACK and the BYE.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub hold_ms: u64,
    /// Milliseconds the callee rings (after its 180) before its 200.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub answer_ms: u64,
    /// With several targets: cross = caller and callee on different ones.
    #[arg(long, value_enum, default_value = "cross")]
    pub call_routing: CallRouting,
    /// Local sockets (UDP), or connections per target (TCP).
    #[arg(long, default_value_t = 4, value_parser = parse_sockets)]
    pub sockets: usize,
    /// Shards, each a thread with its own current-thread runtime, sockets
    /// and handsets.
    #[arg(long, default_value_t = 1, value_parser = parse_threads)]
    pub threads: usize,
    /// Local address to bind. Loopback only unless --allow-remote.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Allow non-loopback targets and bind addresses.
    #[arg(long)]
    pub allow_remote: bool,
    /// RFC 3261 T1 in ms (first retransmission on UDP).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub t1_ms: u64,
    /// RFC 3261 T2 in ms (longest non-INVITE retransmission interval).
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub t2_ms: u64,
    /// A transaction without a final response after this many ms fails.
    #[arg(long, default_value_t = 32_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub timeout_ms: u64,
    /// Seconds to wait for open operations after the last start
    /// [default: 2 × timeout + hold + answer + 1].
    #[arg(long, value_parser = parse_drain)]
    pub drain_secs: Option<f64>,
    /// After a message arrives, keep polling the sockets this many µs
    /// before sleeping (cheaper than a wake-up per datagram under load;
    /// 0 = always sleep).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub spin_us: u64,
    /// SO_RCVBUF / SO_SNDBUF asked for every socket, bytes.
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(65_536..=1_073_741_824))]
    pub sock_buf: u64,
    /// Write the full results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write SVG plots (rate.svg, latency.svg) into this directory.
    #[arg(long)]
    pub svg_out: Option<PathBuf>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Seed of the mixed scenario's choices [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// With --farm-json: every SECS, SIGKILL one supernode other than the
    /// first (by its pid) and restart it from its argv.
    #[arg(long, value_parser = parse_churn)]
    pub churn_every: Option<f64>,
    /// With --churn-every: each step picks a node other than the first and
    /// an action at random (seeded by --seed): SIGKILL and restart, SIGSTOP
    /// for 20 s, or SIGTERM and restart; and every node's RSS is sampled
    /// every 10 s (a chaos soak).
    #[arg(long)]
    pub chaos: bool,
    /// With --churn-every: a rolling upgrade. Each step restarts the next
    /// supernode (the first last) gracefully, SIGTERM (drain and
    /// hand-off), with PROGRAM (an absolute path) in place of its own;
    /// every node's RSS is sampled every 10 s.
    #[arg(long, value_name = "PROGRAM")]
    pub upgrade_to: Option<PathBuf>,
    /// Write the first 10,000 messages each thread sends and receives to
    /// FILE (FILE.N for thread N > 0), for debugging.
    #[arg(long)]
    pub trace_msg: Option<PathBuf>,
    /// Exit with status 1 when more than this % of operations failed.
    #[arg(long, value_parser = parse_pct)]
    pub max_fail_pct: Option<f64>,
}

/// Weights of the mixed scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub register: u32,
    pub call: u32,
}

/// The validated run configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub scenario: Scenario,
    pub targets: Vec<SocketAddr>,
    pub farm_json: Option<PathBuf>,
    pub transport: Transport,
    /// --transport tls: the client configuration and the name to verify.
    #[serde(skip)]
    pub tls: Option<TlsClient>,
    pub domain: String,
    pub user_prefix: String,
    pub user_start: u32,
    pub users: u32,
    pub callers: u32,
    #[serde(skip)]
    pub password: Option<String>,
    pub auth: bool,
    pub refresh: bool,
    pub expires: u32,
    pub rate: f64,
    pub count: u64,
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    pub setup_rate: f64,
    pub mix: Mix,
    #[serde(serialize_with = "as_secs")]
    pub hold: Duration,
    #[serde(serialize_with = "as_secs")]
    pub answer: Duration,
    pub call_routing: CallRouting,
    pub sockets: usize,
    pub threads: usize,
    pub bind: IpAddr,
    pub allow_remote: bool,
    #[serde(serialize_with = "as_secs")]
    pub t1: Duration,
    #[serde(serialize_with = "as_secs")]
    pub t2: Duration,
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    #[serde(serialize_with = "as_secs")]
    pub drain: Duration,
    #[serde(serialize_with = "as_secs")]
    pub spin: Duration,
    pub sock_buf: usize,
    pub json_out: Option<PathBuf>,
    pub svg_out: Option<PathBuf>,
    pub progress: bool,
    pub seed: u64,
    #[serde(serialize_with = "as_secs_opt")]
    pub churn_every: Option<Duration>,
    pub chaos: bool,
    pub upgrade_to: Option<PathBuf>,
    pub trace_msg: Option<PathBuf>,
    pub max_fail_pct: Option<f64>,
}

/// Durations in the report are seconds.
fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn as_secs_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// A usage error: the message names the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn bad(msg: impl Into<String>) -> Result<Config, UsageError> {
    Err(UsageError(msg.into()))
}

impl Args {
    /// Checks that involve several flags, and resolves defaults. Targets
    /// read from --farm-json are passed in (already parsed).
    pub fn validate(self, farm_targets: &[SocketAddr]) -> Result<Config, UsageError> {
        if !self.allow_remote && !self.bind.is_loopback() {
            return bad(format!(
                "--bind {}: not a loopback address (add --allow-remote to bind elsewhere)",
                self.bind
            ));
        }
        let targets = if !self.targets.is_empty() {
            self.targets.clone()
        } else if !farm_targets.is_empty() {
            farm_targets.to_vec()
        } else {
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 5060))]
        };
        if targets.len() > 64 {
            return bad("--target: at most 64 targets");
        }
        for t in &targets {
            if !self.allow_remote && !t.ip().is_loopback() {
                return bad(format!(
                    "--target {t}: not a loopback address (add --allow-remote to load a remote server)"
                ));
            }
            if t.port() == 0 || t.ip().is_unspecified() {
                return bad(format!("--target {t}: needs a real address and a port"));
            }
        }
        if self.bind.is_ipv4() != targets[0].is_ipv4() {
            return bad(format!(
                "--bind {} and --target {}: address families differ",
                self.bind, targets[0]
            ));
        }
        if self.threads > self.sockets {
            return bad(format!(
                "--threads {} exceeds --sockets {}: every thread needs a socket",
                self.threads, self.sockets
            ));
        }
        if self.transport.is_stream() && self.sockets * targets.len() > MAX_SOCKETS {
            return bad(format!(
                "--sockets {} × {} targets: at most {MAX_SOCKETS} connections",
                self.sockets,
                targets.len()
            ));
        }
        if self.t2_ms < self.t1_ms {
            return bad(format!(
                "--t2-ms {} is below --t1-ms {}",
                self.t2_ms, self.t1_ms
            ));
        }
        let callers = self.callers.unwrap_or(self.users);
        if u64::from(self.user_start) + u64::from(self.users) + u64::from(callers)
            > u64::from(u32::MAX)
        {
            return bad("--user-start + --users + --callers: user numbers overflow");
        }
        if (self.users as usize) < self.threads {
            return bad(format!(
                "--users {} is below --threads {}: every thread needs a handset",
                self.users, self.threads
            ));
        }
        if self.scenario != Scenario::Register && (callers as usize) < self.threads {
            return bad(format!(
                "--callers {callers} is below --threads {}",
                self.threads
            ));
        }
        if self.scenario == Scenario::Mixed && self.mix.register + self.mix.call == 0 {
            return bad("--mix: the weights must not all be 0");
        }
        if self.churn_every.is_some() && self.farm_json.is_none() {
            return bad("--churn-every needs --farm-json (the nodes to restart)");
        }
        if self.chaos && self.churn_every.is_none() {
            return bad("--chaos needs --churn-every (how often a node is hit)");
        }
        if let Some(p) = &self.upgrade_to {
            if self.churn_every.is_none() || self.chaos {
                return bad(
                    "--upgrade-to needs --churn-every (the time between two nodes) and no --chaos",
                );
            }
            if !p.is_absolute() || !p.is_file() {
                return bad(format!(
                    "--upgrade-to {}: not an absolute path to a program",
                    p.display()
                ));
            }
        }
        if self.refresh && self.scenario != Scenario::Register {
            return bad("--refresh applies to --scenario register (mixed always refreshes)");
        }
        let rate_x_duration = (self.rate * self.duration)
            .ceil()
            .clamp(1.0, MAX_COUNT as f64) as u64;
        let count = match self.count {
            Some(c) => c,
            None if self.scenario == Scenario::Register && !self.refresh => u64::from(self.users),
            None => rate_x_duration,
        };
        let tls = match (self.transport, &self.tls_ca) {
            (Transport::Tls, Some(ca)) => match TlsClient::new(ca, self.tls_name.clone()) {
                Ok(t) => Some(t),
                Err(e) => return bad(e),
            },
            (Transport::Tls, None) => {
                return bad(
                    "--transport tls needs --tls-ca FILE (the CA the server's certificate chains to)",
                );
            }
            (_, Some(_)) => return bad("--tls-ca is for --transport tls"),
            (_, None) => None,
        };
        let timeout = Duration::from_millis(self.timeout_ms);
        let hold = Duration::from_millis(self.hold_ms);
        let answer = Duration::from_millis(self.answer_ms);
        let drain = match self.drain_secs {
            Some(s) => Duration::from_secs_f64(s),
            None => 2 * timeout + hold + answer + Duration::from_secs(1),
        };
        Ok(Config {
            scenario: self.scenario,
            targets,
            farm_json: self.farm_json,
            transport: self.transport,
            tls,
            domain: self.domain,
            user_prefix: self.user_prefix,
            user_start: self.user_start,
            users: self.users,
            callers,
            auth: self.password.is_some(),
            password: self.password,
            refresh: self.refresh,
            expires: self.expires,
            rate: self.rate,
            count,
            duration: Duration::from_secs_f64(self.duration),
            setup_rate: self.setup_rate,
            mix: self.mix,
            hold,
            answer,
            call_routing: self.call_routing,
            sockets: self.sockets,
            threads: self.threads,
            bind: self.bind,
            allow_remote: self.allow_remote,
            t1: Duration::from_millis(self.t1_ms),
            t2: Duration::from_millis(self.t2_ms),
            timeout,
            drain,
            spin: Duration::from_micros(self.spin_us),
            sock_buf: self.sock_buf as usize,
            json_out: self.json_out,
            svg_out: self.svg_out,
            progress: !self.no_progress,
            seed: self.seed.unwrap_or_else(entropy),
            churn_every: self.churn_every.map(Duration::from_secs_f64),
            chaos: self.chaos,
            upgrade_to: self.upgrade_to,
            trace_msg: self.trace_msg,
            max_fail_pct: self.max_fail_pct,
        })
    }
}

/// A seed from the clock and the pid (no OS RNG feature needed).
pub fn entropy() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    // splitmix64 finaliser
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn parse_target(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 5060));
    }
    Err("expected IP:PORT (or an IP for port 5060), e.g. 127.0.0.1:5060".into())
}

fn parse_f64_in(s: &str, min_exclusive: f64, max: f64, what: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if !v.is_finite() || v <= min_exclusive || v > max {
        return Err(format!("{what} must be > {min_exclusive} and ≤ {max}"));
    }
    Ok(v)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    parse_f64_in(s, 0.0, MAX_RATE, "the rate (per second)")
}

fn parse_duration(s: &str) -> Result<f64, String> {
    parse_f64_in(s, 0.0, MAX_DURATION_SECS, "the duration (seconds)")
}

fn parse_drain(s: &str) -> Result<f64, String> {
    parse_f64_in(s, 0.0, 1200.0, "the drain (seconds)")
}

fn parse_churn(s: &str) -> Result<f64, String> {
    let v = parse_f64_in(s, 0.0, MAX_DURATION_SECS, "the churn period (seconds)")?;
    if v < 1.0 {
        return Err("the churn period must be at least 1 second".into());
    }
    Ok(v)
}

fn parse_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err("a percentage must be between 0 and 100".into());
    }
    Ok(v)
}

fn parse_count(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("not a whole number: {s:?}"))?;
    if v == 0 || v > MAX_COUNT {
        return Err(format!("the count must be between 1 and {MAX_COUNT}"));
    }
    Ok(v)
}

fn parse_users(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("not a whole number: {s:?}"))?;
    if v == 0 || v > MAX_USERS {
        return Err(format!("must be between 1 and {MAX_USERS}"));
    }
    Ok(v)
}

fn parse_sockets(s: &str) -> Result<usize, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("not a whole number: {s:?}"))?;
    if v == 0 || v > MAX_SOCKETS {
        return Err(format!("must be between 1 and {MAX_SOCKETS}"));
    }
    Ok(v)
}

fn parse_threads(s: &str) -> Result<usize, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("not a whole number: {s:?}"))?;
    if v == 0 || v > MAX_THREADS {
        return Err(format!("must be between 1 and {MAX_THREADS}"));
    }
    Ok(v)
}

fn parse_domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'));
    if !ok {
        return Err("a host name or IP address (letters, digits, '.', '-')".into());
    }
    Ok(s.to_string())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    if !ok {
        return Err("1 to 64 letters, digits, '.', '-' or '_'".into());
    }
    Ok(s.to_string())
}

fn parse_password(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 256 || s.bytes().any(|c| c.is_ascii_control()) {
        return Err("1 to 256 characters, no control characters".into());
    }
    Ok(s.to_string())
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut mix = Mix {
        register: 0,
        call: 0,
    };
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected register=N,call=N, got {part:?}"))?;
        let v: u32 = v
            .trim()
            .parse()
            .ok()
            .filter(|v| *v <= 1_000_000)
            .ok_or_else(|| format!("weight of {k} must be a whole number ≤ 1000000"))?;
        match k.trim() {
            "register" => mix.register = v,
            "call" => mix.call = v,
            other => return Err(format!("unknown operation {other:?} (register, call)")),
        }
    }
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let a = Args::try_parse_from(std::iter::once("ringmesh-load").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        a.validate(&[]).map_err(|e| e.0)
    }

    #[test]
    fn defaults_are_bounded() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.count, 1000);
        assert_eq!(c.duration, Duration::from_secs(60));
        assert_eq!(c.targets, vec!["127.0.0.1:5060".parse().unwrap()]);
        let c = parse(&["-s", "call", "--rate", "100", "--duration", "2"]).unwrap();
        assert_eq!(c.count, 200);
        assert_eq!(c.drain, Duration::from_secs(65));
    }

    #[test]
    fn errors_name_the_flag() {
        for (args, flag) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "2000000"][..], "--rate"),
            (&["--count", "0"][..], "--count"),
            (&["--count", "100000001"][..], "--count"),
            (&["--duration", "-1"][..], "--duration"),
            (&["--duration", "3601"][..], "--duration"),
            (&["--sockets", "0"][..], "--sockets"),
            (&["--target", "10.0.0.1:5060"][..], "--target"),
            (&["--target", "nonsense"][..], "--target"),
            (&["--bind", "0.0.0.0"][..], "--bind"),
            (&["--threads", "8", "--sockets", "2"][..], "--threads"),
            (&["--churn-every", "5"][..], "--churn-every"),
            (&["--chaos"][..], "--chaos"),
            (&["--upgrade-to", "/bin/true"][..], "--upgrade-to"),
            (
                &[
                    "--upgrade-to",
                    "ringmesh",
                    "--churn-every",
                    "5",
                    "--farm-json",
                    "f.json",
                ][..],
                "--upgrade-to",
            ),
            (&["--mix", "register=0,call=0", "-s", "mixed"][..], "--mix"),
            (&["--domain", "a b"][..], "--domain"),
            (&["--t1-ms", "600", "--t2-ms", "500"][..], "--t2-ms"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        assert!(parse(&["--target", "10.0.0.1:5060", "--allow-remote"]).is_ok());
    }
}

/// What a TLS handset connects with: a rustls client configuration
/// trusting the given CA, and the name it verifies (`None`: the target's
/// address).
#[derive(Clone)]
pub struct TlsClient {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub name: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish()
    }
}

impl TlsClient {
    fn new(ca: &std::path::Path, name: Option<String>) -> Result<TlsClient, String> {
        let text = std::fs::read(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for block in pem::parse_many(text).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))? {
            if block.tag() == "CERTIFICATE" {
                roots
                    .add(rustls::pki_types::CertificateDer::from(
                        block.into_contents(),
                    ))
                    .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "--tls-ca {}: no CA certificate in it",
                ca.display()
            ));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if let Some(n) = &name {
            rustls::pki_types::ServerName::try_from(n.clone())
                .map_err(|e| format!("--tls-name {n}: {e}"))?;
        }
        Ok(TlsClient {
            config: std::sync::Arc::new(config),
            name,
        })
    }

    /// A new client connection to `target`.
    pub fn connect(&self, target: SocketAddr) -> rustls::ClientConnection {
        let name = match &self.name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.clone()).expect("checked"),
            None => rustls::pki_types::ServerName::IpAddress(target.ip().into()),
        };
        rustls::ClientConnection::new(self.config.clone(), name).expect("a client connection")
    }
}
