//! `ringmesh dev`: a whole farm on one machine for a new user.
//!
//! Every supernode runs as a child process (`ringmesh supernode …`) with
//! its own data directory and log file, so killing one behaves like losing
//! a machine. A development CA (kept in the farm's data directory) assigns
//! each node its Node-ID in its certificate, as the enrollment service
//! does in production; the certificate stays in the node's directory, so a
//! node's `argv` restarts it with the same identity. Nodes find each other
//! through seeds; node 0 founds the ring when no seed answers.
//!
//! Ports derive from `--sip-port P` so farms on different P never collide:
//! node i listens for SIP (UDP and TCP) on P+i, overlay links (QUIC) on
//! P+100+i, serves metrics on P+300+i; P+200+i (admin), P+400+i (TLS),
//! P+500+i (WebSocket), P+600 and P+601 (control plane) are reserved for
//! the services that use them.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringmesh_supernode::config::AuthMode;
use ringmesh_supernode::pki;
use serde_json::json;
use tokio::process::{Child, Command};

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of supernodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Replicas per binding (k).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Base port: node i takes SIP P+i, metrics P+300+i.
    #[arg(long, default_value_t = 5060)]
    pub sip_port: u16,
    /// The SIP domain of the farm.
    #[arg(long, default_value = "ringmesh.test")]
    pub domain: String,
    /// Demo subscribers user0 … user{N-1} (alice and bob always exist).
    #[arg(long, default_value_t = 0)]
    pub users: u32,
    /// Password of every demo subscriber.
    #[arg(long, default_value = "secret")]
    pub password: String,
    /// digest, or none for an open registrar and proxy (benchmarks).
    #[arg(long, value_enum, default_value = "digest")]
    pub auth: AuthMode,
    /// Where the farm keeps its state (default ./.dev/p<PORT>).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// One JSON object per line on stdout, nothing else.
    #[arg(long)]
    pub json: bool,
    /// Log filter passed to every supernode.
    #[arg(long, default_value = "info")]
    pub log: String,
}

struct Node {
    name: String,
    sip: SocketAddr,
    metrics: SocketAddr,
    child: Child,
    done: bool,
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 99 {
        bail!("--nodes must be between 1 and 99, got {}", args.nodes);
    }
    if u32::from(args.sip_port) + 601 > 65_535 || args.sip_port < 1024 {
        bail!(
            "--sip-port must be between 1024 and {} so that every derived port fits",
            65_535 - 601
        );
    }
    if !(1..=7).contains(&args.replicas) {
        bail!("--replicas must be between 1 and 7, got {}", args.replicas);
    }
    if args.users > 1_000_000 {
        bail!("--users must be at most 1000000");
    }
    if args.password.is_empty() {
        bail!("--password must not be empty");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_farm(args))
}

fn write_subscribers(path: &Path, args: &DevArgs) -> anyhow::Result<()> {
    let mut s = String::with_capacity(64 * (args.users as usize + 2));
    let pw = args.password.replace('\\', "\\\\").replace('"', "\\\"");
    for user in ["alice".to_string(), "bob".to_string()]
        .into_iter()
        .chain((0..args.users).map(|i| format!("user{i}")))
    {
        s.push_str(&format!(
            "[[subscriber]]\nuser = \"{user}\"\npassword = \"{pw}\"\n\n"
        ));
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

async fn run_farm(args: DevArgs) -> anyhow::Result<()> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => PathBuf::from(".dev").join(format!("p{}", args.sip_port)),
    };
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let data = data.canonicalize()?;
    let exe = std::env::current_exe().context("cannot find the ringmesh executable")?;
    let subscribers = data.join("subscribers.toml");
    if args.auth == AuthMode::Digest {
        write_subscribers(&subscribers, &args)?;
    }
    let ca = pki::Ca::load_or_create(&data.join("ca"), "ringmesh dev farm")?;
    let farm_secret = data.join("farm.secret");
    ringmesh_supernode::load_or_create_secret(&farm_secret)?;
    let overlay_of = |i: u16| SocketAddr::from(([127, 0, 0, 1], args.sip_port + 100 + i));

    let mut nodes = Vec::new();
    let mut taken = Vec::new();
    for i in 0..args.nodes {
        let name = format!("sn{i}");
        let sip = SocketAddr::from(([127, 0, 0, 1], args.sip_port + i));
        let metrics = SocketAddr::from(([127, 0, 0, 1], args.sip_port + 300 + i));
        let overlay = overlay_of(i);
        let node_dir = data.join(&name);
        let node_id = pki::provision_node(&node_dir, &name, &ca, &taken)?;
        taken.push(node_id);
        let mut argv: Vec<String> = vec![
            exe.display().to_string(),
            "supernode".into(),
            "--name".into(),
            name.clone(),
            "--domain".into(),
            args.domain.clone(),
            "--sip".into(),
            format!("udp:{sip}"),
            "--sip".into(),
            format!("tcp:{sip}"),
            "--data".into(),
            node_dir.display().to_string(),
            "--metrics".into(),
            metrics.to_string(),
            "--overlay".into(),
            overlay.to_string(),
            "--replicas".into(),
            args.replicas.to_string(),
            "--farm-secret".into(),
            farm_secret.display().to_string(),
            "--log".into(),
            args.log.clone(),
        ];
        for j in (0..args.nodes).filter(|&j| j != i) {
            argv.extend(["--seed".into(), overlay_of(j).to_string()]);
        }
        if i == 0 {
            // Node 0 founds the ring when no seed is a member yet (a fresh
            // farm, or every node restarting at once).
            argv.extend(["--bootstrap-after".into(), "2".into()]);
        }
        match args.auth {
            AuthMode::Digest => argv.extend([
                "--auth".into(),
                "digest".into(),
                "--subscribers".into(),
                subscribers.display().to_string(),
            ]),
            AuthMode::None => argv.extend(["--auth".into(), "none".into()]),
        }
        let log_path = data.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().unwrap_or(0);
        if args.json {
            println!(
                "{}",
                json!({"event": "node", "name": name, "pid": pid, "sip": sip.to_string(), "metrics": metrics.to_string(),
                       "overlay": overlay.to_string(), "node_id": hex::encode(node_id), "argv": argv})
            );
        } else {
            println!(
                "  {name}  SIP udp+tcp {sip}  overlay {overlay}  metrics http://{metrics}/metrics  pid {pid}  log {}",
                log_path.display()
            );
        }
        nodes.push(Node {
            name,
            sip,
            metrics,
            child,
            done: false,
        });
    }

    wait_ready(&mut nodes).await?;
    if args.json {
        println!("{}", json!({"event": "ready"}));
    } else {
        print_welcome(&args, &nodes);
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                for n in nodes.iter_mut().filter(|n| !n.done) {
                    if let Ok(Some(status)) = n.child.try_wait() {
                        n.done = true;
                        if args.json {
                            println!("{}", json!({"event": "exit", "name": n.name, "status": status.code()}));
                        } else {
                            eprintln!("{} exited ({status}); the farm keeps running without it", n.name);
                        }
                    }
                }
            }
        }
    }
    stop_all(&mut nodes).await;
    Ok(())
}

/// Waits until every node answers OPTIONS with 200, sees every member
/// alive on the ring, and reports its replicas in place (`/readyz`).
async fn wait_ready(nodes: &mut [Node]) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(90);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let local = sock.local_addr()?;
    let want = nodes.len();
    for n in nodes.iter_mut() {
        let mut seq = 0u32;
        loop {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!("{} exited during start-up ({status}); see its log", n.name);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within 90 s (OPTIONS, ring of {want}, /readyz); see its log",
                    n.name
                );
            }
            seq += 1;
            let req = format!(
                "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKdev{seq}x{pid}\r\nMax-Forwards: 70\r\n\
                 From: <sip:dev@{local}>;tag=dev{seq}\r\nTo: <sip:{sip}>\r\nCall-ID: dev-ready-{seq}-{pid}@{local}\r\n\
                 CSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n",
                sip = n.sip,
                pid = std::process::id()
            );
            let _ = sock.send_to(req.as_bytes(), n.sip);
            let mut buf = [0u8; 2048];
            let sip_ok = matches!(sock.recv_from(&mut buf), Ok((len, _)) if buf[..len].starts_with(b"SIP/2.0 200"));
            if sip_ok
                && http_get(n.metrics, "/readyz").0 == 200
                && ring_size(n.metrics) == Some(want)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// `ringmesh_overlay_ring_size` from a node's metrics.
fn ring_size(metrics: SocketAddr) -> Option<usize> {
    let (_, body) = http_get(metrics, "/metrics");
    body.lines()
        .find(|l| l.starts_with("ringmesh_overlay_ring_size"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as usize)
}

/// A minimal HTTP GET for the metrics endpoint (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter().filter(|n| !n.done) {
        if let Some(pid) = n.child.id() {
            // SIGTERM lets the node leave cleanly (hand off its keys). The
            // PID is our own unreaped child, so it cannot have been reused.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut().filter(|n| !n.done) {
        if tokio::time::timeout_at(deadline, n.child.wait())
            .await
            .is_err()
        {
            let _ = n.child.kill().await;
        }
    }
}

fn print_welcome(args: &DevArgs, nodes: &[Node]) {
    let sip = nodes[0].sip;
    println!();
    println!(
        "Ringmesh dev farm ready: domain {} , {} supernode(s), auth {:?}",
        args.domain,
        nodes.len(),
        args.auth
    );
    println!("Point a softphone at it:");
    println!("  registrar / outbound proxy : {sip} (UDP or TCP)");
    println!(
        "  SIP address                : sip:alice@{} (or bob, user0 … user{})",
        args.domain,
        args.users.max(1) - 1
    );
    if args.auth == AuthMode::Digest {
        println!(
            "  user / password            : alice / {}  (realm {})",
            args.password, args.domain
        );
    }
    println!(
        "  baresip account line       : <sip:alice@{}>;auth_pass={};outbound=\"sip:{sip}\"",
        args.domain, args.password
    );
    println!("Ctrl-C stops the farm.");
}
