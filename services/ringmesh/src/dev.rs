//! `ringmesh dev`: a whole farm on one machine for a new user.
//!
//! Every service runs as a child process with its own data directory and
//! log file, so killing one behaves like losing a machine: `ringmesh
//! provisioning` (subscribers, on its embedded store or `--etcd`),
//! `ringmesh enrollment` (the farm CA), and N `ringmesh supernode`s. Each
//! supernode is enrolled with the CA before it starts (its key is made in
//! its own directory and never leaves it; the CA places its Node-ID), so
//! its certificate stays there and its `argv` restarts it with the same
//! identity. Demo subscribers are created through the provisioning API.
//! Nodes find each other through seeds (and etcd when given); node 0
//! founds the ring when no seed answers.
//!
//! Ports follow the contract of docs/dev.md: from `--sip-port P`, node i
//! listens for SIP on P+i (UDP and TCP), P+400+i (TLS), P+500+i
//! (WebSocket) and P+700+i (secure WebSocket), for overlay links (QUIC) on
//! P+100+i, serves its admin API on P+200+i and metrics on P+300+i;
//! provisioning listens on P+600 (metrics P+602), enrollment on P+601
//! (metrics P+603); the softphone page (`--softphone`) is served on P+800.
//! The farm CA issues the SIP certificate of every node (`DNS:<domain>`,
//! DNS:localhost, IP:127.0.0.1), so phones verify it against
//! DATA/ca/ca.crt. With `--sip-port 0` every listener gets a free port
//! from the kernel: each process announces what it bound (see
//! [`crate::listening`]), nodes start one after the other, and each node's
//! `argv` names the actual ports, so it restarts on them.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringmesh_enrollment::ca::TlsFiles;
use ringmesh_supernode::config::AuthMode;
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
    /// Base port P (docs/dev.md): node i takes SIP P+i, overlay P+100+i,
    /// admin P+200+i, metrics P+300+i; the control plane P+600..P+603.
    /// 0: every listener gets a free port from the kernel.
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
    /// Where the farm keeps its state (default ./.dev/p5060 for
    /// --sip-port 5060).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// One JSON object per line on stdout, nothing else.
    #[arg(long)]
    pub json: bool,
    /// Log filter passed to every supernode.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Serve the browser softphone built in DIR (services/softphone, after
    /// `npm ci && npm run build`) over HTTPS on P+800 (`make dev` does).
    #[arg(long, value_name = "DIR")]
    pub softphone: Option<PathBuf>,
    /// Keep subscribers, the CA and membership in etcd (URL, repeatable)
    /// instead of the embedded stores.
    #[arg(long)]
    pub etcd: Vec<String>,
    /// TLS to etcd (https:// endpoints): a directory holding `ca.crt` (the
    /// CA of etcd's server certificate) and each component's client
    /// certificate, `ringmesh-supernode.crt`/`.key`,
    /// `ringmesh-provisioning.*` and `ringmesh-enrollment.*` (their common
    /// names are their etcd users; see `ringmesh etcd-auth`).
    #[arg(long)]
    pub etcd_certs: Option<PathBuf>,
    /// A trusted element given to every supernode (its `--trusted`,
    /// NAME=ADDRESS or KIND:NAME=ADDRESS, repeatable): a load generator
    /// sending far above any phone's rate lists its source here. None by
    /// default: the farm applies the production per-source limits.
    #[arg(long)]
    pub trusted: Vec<String>,
    /// The DNS server (ADDRESS:PORT) the supernodes ask (ENUM), instead of
    /// the system's.
    #[arg(long)]
    pub dns_server: Option<std::net::SocketAddr>,
    /// The ENUM domain numbers no subscriber owns are looked up under.
    #[arg(long)]
    pub enum_domain: Option<String>,
    /// The CA certificates (PEM) of peer farms, given to every supernode
    /// (its `--peer-ca`): the supernodes open TLS to the servers of the
    /// domains peers serve (`ringmesh ctl peer add`), and accept the peers'
    /// supernodes on their tls listeners.
    #[arg(long)]
    pub peer_ca: Option<PathBuf>,
    /// The supernodes' --presize-transactions (room their SIP tables make
    /// at start); their default when not given. The chaos soak passes 0,
    /// so that what it measures is growth with the traffic.
    #[arg(long)]
    pub presize_transactions: Option<usize>,
    /// Run every process (provisioning, enrollment, supernodes) as a
    /// container of this image, as the chart runs it: podman with host
    /// networking, a read-only root, user 10001, every capability
    /// dropped, no privilege escalation; the data directory mounted at its
    /// own path. Needs root (rootful podman). `make image` builds
    /// localhost/ringmesh:VERSION.
    #[arg(long, value_name = "IMAGE")]
    pub container: Option<String>,
}

/// The image every process runs in, under `--container`.
static CONTAINER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The user the chart runs the image as.
const CONTAINER_USER: u32 = 10001;

struct Node {
    name: String,
    addrs: NodeAddrs,
    node_id: [u8; 16],
    child: Child,
    done: bool,
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 99 {
        bail!("--nodes must be between 1 and 99, got {}", args.nodes);
    }
    if args.sip_port != 0 && (u32::from(args.sip_port) + 899 > 65_535 || args.sip_port < 1024) {
        bail!(
            "--sip-port must be 0 (ports from the kernel) or between 1024 and {} so that every \
             derived port (up to P+899) fits",
            65_535 - 899
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
    for t in &args.trusted {
        if let Err(e) = ringmesh_proxy::trust::Element::parse_flag(t) {
            bail!("--trusted {t}: {e}");
        }
    }
    if let Some(image) = &args.container {
        if !nix::unistd::Uid::effective().is_root() {
            bail!(
                "--container needs root (rootful podman runs the containers as user {CONTAINER_USER})"
            );
        }
        if args.softphone.is_some() || args.etcd_certs.is_some() || args.peer_ca.is_some() {
            bail!(
                "--container mounts only the data directory: drop --softphone, --etcd-certs and --peer-ca"
            );
        }
        let _ = CONTAINER.set(image.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run_farm(args));
    if CONTAINER.get().is_some() {
        remove_containers();
    }
    result
}

/// The farm's ports from the base P (docs/dev.md); all 0 when P is 0.
#[derive(Debug, Clone, Copy)]
struct Ports(u16);

impl Ports {
    fn at(self, offset: u16) -> SocketAddr {
        let port = if self.0 == 0 { 0 } else { self.0 + offset };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
    fn sip(self, i: u16) -> SocketAddr {
        self.at(i)
    }
    fn tls(self, i: u16) -> SocketAddr {
        self.at(400 + i)
    }
    fn ws(self, i: u16) -> SocketAddr {
        self.at(500 + i)
    }
    fn wss(self, i: u16) -> SocketAddr {
        self.at(700 + i)
    }
    fn overlay(self, i: u16) -> SocketAddr {
        self.at(100 + i)
    }
    fn admin(self, i: u16) -> SocketAddr {
        self.at(200 + i)
    }
    fn metrics(self, i: u16) -> SocketAddr {
        self.at(300 + i)
    }
}

/// Where a node listens, as it announced.
#[derive(Debug, Clone)]
struct NodeAddrs {
    sip: SocketAddr,
    tls: SocketAddr,
    ws: SocketAddr,
    wss: SocketAddr,
    overlay: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
}

/// What every supernode of the farm is started with.
struct NodeTemplate<'a> {
    exe: String,
    args: &'a DevArgs,
    data: &'a Path,
    enrollment: SocketAddr,
    provisioning: SocketAddr,
    token_file: &'a Path,
    etcd_args: &'a [String],
    /// The nodes' SIP certificate (tls.crt, tls.key).
    sip_cert: &'a Path,
    /// The farm CA: TLS client certificates it issued identify trusted
    /// elements (`--trusted KIND:NAME=tls:DNS-NAME`).
    ca: &'a Path,
}

impl NodeTemplate<'_> {
    /// The command line of node `i` listening at `at`, seeded with `seeds`.
    fn argv(&self, i: u16, at: &NodeAddrs, seeds: &[SocketAddr]) -> Vec<String> {
        let name = format!("sn{i}");
        let mut argv: Vec<String> = vec![
            self.exe.clone(),
            "supernode".into(),
            "--name".into(),
            name.clone(),
            "--domain".into(),
            self.args.domain.clone(),
            "--sip".into(),
            format!("udp:{}", at.sip),
            "--sip".into(),
            format!("tcp:{}", at.sip),
            "--sip".into(),
            format!("tls:{}", at.tls),
            "--sip".into(),
            format!("ws:{}", at.ws),
            "--sip".into(),
            format!("wss:{}", at.wss),
            "--tls-cert".into(),
            self.sip_cert.display().to_string(),
            "--tls-client-ca".into(),
            self.ca.display().to_string(),
            "--data".into(),
            self.data.join(&name).display().to_string(),
            "--metrics".into(),
            at.metrics.to_string(),
            "--overlay".into(),
            at.overlay.to_string(),
            "--replicas".into(),
            self.args.replicas.to_string(),
            "--admin".into(),
            at.admin.to_string(),
            "--enrollment".into(),
            self.enrollment.to_string(),
            "--bootstrap-token-file".into(),
            self.token_file.display().to_string(),
            "--log".into(),
            self.args.log.clone(),
            // Every phone of a farm on one machine is on 127.0.0.1.
            "--allow-loopback-contacts".into(),
            "true".into(),
        ];
        argv.extend(self.etcd_args.iter().cloned());
        for t in &self.args.trusted {
            argv.extend(["--trusted".into(), t.clone()]);
        }
        if let Some(dns) = self.args.dns_server {
            argv.extend(["--dns-server".into(), dns.to_string()]);
        }
        if let Some(domain) = &self.args.enum_domain {
            argv.extend(["--enum-domain".into(), domain.clone()]);
        }
        if let Some(ca) = &self.args.peer_ca {
            argv.extend(["--peer-ca".into(), ca.display().to_string()]);
        }
        if let Some(n) = self.args.presize_transactions {
            argv.extend(["--presize-transactions".into(), n.to_string()]);
        }
        for s in seeds {
            argv.extend(["--seed".into(), s.to_string()]);
        }
        if i == 0 {
            // Node 0 founds the ring when no seed is a member yet (a fresh
            // farm, or every node restarting at once).
            argv.extend(["--bootstrap-after".into(), "2".into()]);
        }
        match self.args.auth {
            AuthMode::Digest => argv.extend([
                "--auth".into(),
                "digest".into(),
                "--provisioning".into(),
                self.provisioning.to_string(),
            ]),
            AuthMode::None => argv.extend(["--auth".into(), "none".into()]),
        }
        argv
    }
}

/// Waits (at most `within`) for the listening file a child announces its
/// addresses in; fails if the child exits first.
async fn announced(
    path: &Path,
    child: &mut Child,
    what: &str,
    within: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = crate::listening::read(path) {
            return Ok(v);
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited during start-up ({status}); see {what}.log");
        }
        if Instant::now() > deadline {
            bail!("{what} did not start serving within {within:?}; see {what}.log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An address from an announced listening file.
fn addr_in(v: &serde_json::Value, key: &str, what: &str) -> anyhow::Result<SocketAddr> {
    v[key]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{what} announced no {key} address"))
}

/// Starts a control-plane service and returns it with its API and metrics
/// addresses, once it is ready.
async fn start_service(
    name: &'static str,
    argv: Vec<String>,
    data: &Path,
) -> anyhow::Result<(Child, SocketAddr, SocketAddr)> {
    let announce = data.join(format!("{name}.listening.json"));
    let _ = std::fs::remove_file(&announce);
    let mut child = spawn_logged(&argv, &data.join(format!("{name}.log")), &announce)?;
    let v = announced(&announce, &mut child, name, Duration::from_secs(30)).await?;
    let (api, metrics) = (addr_in(&v, "api", name)?, addr_in(&v, "metrics", name)?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(metrics, "/readyz").0 != 200 {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited during start-up ({status}); see {name}.log");
        }
        if Instant::now() > deadline {
            bail!("{name} was not ready within 30 s; see {name}.log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, api, metrics))
}

/// The farm CA (files, as a Kubernetes Secret would hold it) and the
/// control plane's certificates, made on the first start under DATA/ca
/// and DATA/control and kept.
struct ControlCerts {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    /// The nodes' SIP certificate: DATA/sip-tls/tls.crt and tls.key.
    sip_tls: PathBuf,
    provisioning: TlsFiles,
    operator: TlsFiles,
    admin: TlsFiles,
}

impl ControlCerts {
    fn make(data: &Path, domain: &str) -> anyhow::Result<ControlCerts> {
        use ringmesh_enrollment::ca::{Ca, Role, control_files};
        let dir = data.join("ca");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = if ca_cert.exists() {
            Ca::from_pem(
                &std::fs::read_to_string(&ca_cert)?,
                &std::fs::read_to_string(&ca_key)?,
            )
            .with_context(|| format!("the dev farm CA in {}", dir.display()))?
        } else {
            let ca = Ca::generate("Ringmesh dev farm CA")?;
            ringmesh_supernode::write_private(&ca_key, ca.key_pem().as_bytes())?;
            std::fs::write(&ca_cert, ca.cert_pem())?;
            ca
        };
        // Issued afresh each run, so it names the domain of this run.
        let sip_tls = data.join("sip-tls");
        std::fs::create_dir_all(&sip_tls)?;
        let (cert, key) = ca
            .issue_sip(
                "Ringmesh dev SIP",
                &[domain, "localhost"],
                &[std::net::Ipv4Addr::LOCALHOST.into()],
                825,
            )
            .context("issuing the SIP TLS certificate")?;
        ringmesh_supernode::write_private(&sip_tls.join("tls.key"), key.as_bytes())?;
        std::fs::write(sip_tls.join("tls.crt"), cert)?;
        let control = data.join("control");
        let issue = |name: &str, role| {
            control_files(&control, name, &ca, role, 825)
                .with_context(|| format!("issuing the {name} certificate"))
        };
        Ok(ControlCerts {
            provisioning: issue("provisioning", None)?,
            operator: issue("operator", Some(Role::Operator))?,
            admin: issue("admin", Some(Role::Admin))?,
            ca_cert,
            ca_key,
            sip_tls,
        })
    }
}

async fn run_farm(args: DevArgs) -> anyhow::Result<()> {
    let ports = Ports(args.sip_port);
    let data = match &args.data {
        Some(d) => d.clone(),
        None => PathBuf::from(".dev").join(format!("p{}", args.sip_port)),
    };
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let data = data.canonicalize()?;
    if args.sip_port != 0 {
        ports_free(&args).await?;
    }
    let exe = std::env::current_exe().context("cannot find the ringmesh executable")?;
    let exe = exe.display().to_string();
    let certs = ControlCerts::make(&data, &args.domain)?;
    let site = args.softphone.as_ref().map(|dir| crate::softphone::Site {
        dir: dir.clone(),
        ca: certs.ca_cert.clone(),
        config: String::new(),
    });
    if let Some(s) = &site {
        s.check()?;
    }
    // The bootstrap file: a fresh token for this run, shared by the nodes
    // (with spares for nodes started by hand), expiring in a day, and the
    // CA every node must get back.
    let token_file = data.join("bootstrap.token");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let token_line = format!(
        "{} uses={} expires={}",
        hex::encode(rand_bytes::<24>()),
        u32::from(args.nodes) + DEV_SPARE_ENROLLMENTS,
        now.as_secs() + 24 * 3600
    );
    let ca_der = ringmesh_enrollment::ca::pem_certs(&std::fs::read_to_string(&certs.ca_cert)?)?
        .into_iter()
        .next()
        .context("the dev farm CA file holds no certificate")?;
    let pin = ringmesh_enrollment::Bootstrap::pin_line(&ca_der);
    let text = format!("{token_line}\n{pin}\n");
    ringmesh_supernode::write_private(&token_file, text.as_bytes())?;
    let bootstrap = ringmesh_enrollment::Bootstrap::parse(&text).map_err(anyhow::Error::msg)?;
    // Seals the farm secret enrollment keeps in DATA/enrollment.
    let store_key = data.join("store.key");
    if !store_key.exists() {
        let k: [u8; 32] = rand_bytes();
        ringmesh_supernode::write_private(&store_key, hex::encode(k).as_bytes())?;
    }
    let admin_token = data.join("admin.token");
    if !admin_token.exists() {
        let t: [u8; 24] = rand_bytes();
        ringmesh_supernode::write_private(&admin_token, hex::encode(t).as_bytes())?;
    }
    let etcd_args = |user: &str| -> Vec<String> {
        let mut a: Vec<String> = args
            .etcd
            .iter()
            .flat_map(|e| ["--etcd".to_string(), e.clone()])
            .collect();
        if let Some(dir) = &args.etcd_certs {
            let f = |name: String| dir.join(name).display().to_string();
            a.extend([
                "--etcd-ca".into(),
                f("ca.crt".into()),
                "--etcd-cert".into(),
                f(format!("{user}.crt")),
                "--etcd-key".into(),
                f(format!("{user}.key")),
            ]);
        }
        a
    };
    if let Some(dir) = &args.etcd_certs
        && (args.etcd.is_empty() || !dir.join("ca.crt").is_file())
    {
        anyhow::bail!(
            "--etcd-certs {}: needs --etcd https://… endpoints and a ca.crt in that directory",
            dir.display()
        );
    }
    use ringmesh_config::etcd::{ENROLLMENT_USER, PROVISIONING_USER, SUPERNODE_USER};
    let supernode_etcd_args = etcd_args(SUPERNODE_USER);
    let mut services = Vec::new();
    let mut enr_argv = vec![
        exe.clone(),
        "enrollment".into(),
        "--listen".into(),
        ports.at(601).to_string(),
        "--data".into(),
        data.join("enrollment").display().to_string(),
        "--bootstrap-token-file".into(),
        token_file.display().to_string(),
        "--metrics".into(),
        ports.at(603).to_string(),
        "--admin-token-file".into(),
        admin_token.display().to_string(),
        "--ca-cert".into(),
        certs.ca_cert.display().to_string(),
        "--ca-key".into(),
        certs.ca_key.display().to_string(),
        "--store-key-file".into(),
        store_key.display().to_string(),
    ];
    enr_argv.extend(etcd_args(ENROLLMENT_USER));
    let (svc, enrollment, enrollment_metrics) =
        start_service("enrollment", enr_argv, &data).await?;
    services.push(svc);
    // Provisioning follows enrollment's revocations: a revoked node stops
    // reading subscribers at once.
    let mut prov_argv = vec![
        exe.clone(),
        "provisioning".into(),
        "--listen".into(),
        ports.at(600).to_string(),
        "--data".into(),
        data.join("provisioning").display().to_string(),
        "--domain".into(),
        args.domain.clone(),
        "--metrics".into(),
        ports.at(602).to_string(),
        "--tls-ca".into(),
        certs.provisioning.ca.display().to_string(),
        "--tls-cert".into(),
        certs.provisioning.cert.display().to_string(),
        "--tls-key".into(),
        certs.provisioning.key.display().to_string(),
        "--enrollment".into(),
        enrollment.to_string(),
    ];
    prov_argv.extend(etcd_args(PROVISIONING_USER));
    let started = start_service("provisioning", prov_argv, &data).await;
    let (svc, provisioning, provisioning_metrics) = match started {
        Ok(x) => x,
        Err(e) => {
            terminate(services.iter_mut().collect()).await;
            return Err(e);
        }
    };
    services.push(svc);
    if args.auth == AuthMode::Digest
        && let Err(e) = create_subscribers(provisioning, &certs.operator, &args).await
    {
        stop_all(&mut [], &mut services).await;
        return Err(e);
    }
    let template = NodeTemplate {
        exe,
        args: &args,
        data: &data,
        enrollment,
        provisioning,
        token_file: &token_file,
        etcd_args: &supernode_etcd_args,
        sip_cert: &certs.sip_tls,
        ca: &certs.ca_cert,
    };
    let mut nodes = Vec::new();
    if let Err(e) = start_nodes(&template, ports, &bootstrap, &mut nodes).await {
        stop_all(&mut nodes, &mut services).await;
        return Err(e);
    }
    // Each node's restart command: the ports it has, every other node as a seed.
    let argvs: Vec<Vec<String>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let seeds: Vec<SocketAddr> = nodes
                .iter()
                .filter(|m| m.name != n.name)
                .map(|m| m.addrs.overlay)
                .collect();
            template.argv(i as u16, &n.addrs, &seeds)
        })
        .collect();
    for (n, argv) in nodes.iter().zip(&argvs) {
        let a = &n.addrs;
        if args.json {
            println!(
                "{}",
                json!({"event": "node", "name": n.name, "pid": n.child.id().unwrap_or(0),
                       "sip": a.sip.to_string(), "tls": a.tls.to_string(),
                       "ws": a.ws.to_string(), "wss": a.wss.to_string(),
                       "overlay": a.overlay.to_string(),
                       "admin": a.admin.to_string(), "metrics": a.metrics.to_string(),
                       "node_id": hex::encode(n.node_id), "argv": argv})
            );
        } else {
            println!(
                "  {}  SIP udp+tcp {}  tls {}  ws {}  wss {}  overlay {}  admin {}  metrics http://{}/metrics  pid {}  log {}",
                n.name,
                a.sip,
                a.tls,
                a.ws,
                a.wss,
                a.overlay,
                a.admin,
                a.metrics,
                n.child.id().unwrap_or(0),
                data.join(format!("{}.log", n.name)).display()
            );
        }
    }
    if args.json {
        println!(
            "{}",
            json!({"event": "control", "provisioning": provisioning.to_string(),
                   "enrollment": enrollment.to_string(),
                   "provisioning_metrics": provisioning_metrics.to_string(),
                   "enrollment_metrics": enrollment_metrics.to_string(),
                   "ca": certs.ca_cert.display().to_string(),
                   "operator_cert": certs.operator.cert.display().to_string(),
                   "operator_key": certs.operator.key.display().to_string(),
                   "admin_cert": certs.admin.cert.display().to_string(),
                   "admin_key": certs.admin.key.display().to_string(),
                   "admin_token": admin_token.display().to_string()})
        );
    } else {
        println!("  provisioning {provisioning}  enrollment {enrollment}");
        println!(
            "  operator certificate {} (ringmesh ctl --provisioning {provisioning} --ca {} --cert {} --key {})",
            certs.operator.cert.display(),
            certs.operator.ca.display(),
            certs.operator.cert.display(),
            certs.operator.key.display()
        );
    }
    if let Err(e) = wait_ready(&mut nodes).await {
        stop_all(&mut nodes, &mut services).await;
        return Err(e);
    }
    let softphone = match site {
        Some(mut site) => {
            site.config = json!({
                "domain": args.domain,
                "password": args.password,
                "wss": nodes.iter().map(|n| format!("wss://{}", n.addrs.wss)).collect::<Vec<_>>(),
            })
            .to_string();
            let at = crate::softphone::serve(ports.at(800), &certs.sip_tls, site).await;
            match at {
                Ok(at) => Some(format!("https://{at}/")),
                Err(e) => {
                    stop_all(&mut nodes, &mut services).await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    if args.json {
        if let Some(url) = &softphone {
            println!("{}", json!({"event": "softphone", "url": url}));
        }
        println!("{}", json!({"event": "ready"}));
    } else {
        print_welcome(&args, &nodes, &certs.ca_cert, softphone.as_deref());
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
    stop_all(&mut nodes, &mut services).await;
    Ok(())
}

/// Enrolls and starts the supernodes one after the other, each seeded
/// with those before it (all the others when the ports are fixed).
async fn start_nodes(
    t: &NodeTemplate<'_>,
    ports: Ports,
    bootstrap: &ringmesh_enrollment::Bootstrap,
    nodes: &mut Vec<Node>,
) -> anyhow::Result<()> {
    let count = t.args.nodes;
    for i in 0..count {
        let name = format!("sn{i}");
        let node_dir = t.data.join(&name);
        let node_id = match ringmesh_enrollment::EnrolledIdentity::load(&node_dir)? {
            Some(id) => id.node_id,
            None => {
                ringmesh_enrollment::enroll(&t.enrollment.to_string(), bootstrap, &name, &node_dir)
                    .await
                    .map_err(|e| anyhow::anyhow!("enrolling {name}: {e}"))?
                    .node_id
            }
        };
        let asked = NodeAddrs {
            sip: ports.sip(i),
            tls: ports.tls(i),
            ws: ports.ws(i),
            wss: ports.wss(i),
            overlay: ports.overlay(i),
            admin: ports.admin(i),
            metrics: ports.metrics(i),
        };
        let seeds: Vec<SocketAddr> = if ports.0 == 0 {
            nodes.iter().map(|n| n.addrs.overlay).collect()
        } else {
            (0..count)
                .filter(|&j| j != i)
                .map(|j| ports.overlay(j))
                .collect()
        };
        let argv = t.argv(i, &asked, &seeds);
        std::fs::create_dir_all(&node_dir)?;
        let announce = node_dir.join("listening.json");
        let _ = std::fs::remove_file(&announce);
        let mut child = spawn_logged(&argv, &t.data.join(format!("{name}.log")), &announce)?;
        let v = match announced(&announce, &mut child, &name, Duration::from_secs(60)).await {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        };
        let sip = |transport: &str| -> anyhow::Result<SocketAddr> {
            v["sip"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let (t, a) = s.as_str()?.split_once(':')?;
                    (t == transport).then(|| a.parse().ok())?
                })
                .next()
                .with_context(|| format!("{name} announced no {transport} SIP address"))
        };
        let addrs = NodeAddrs {
            sip: sip("udp")?,
            tls: sip("tls")?,
            ws: sip("ws")?,
            wss: sip("wss")?,
            overlay: addr_in(&v, "overlay", &name)?,
            admin: addr_in(&v, "admin", &name)?,
            metrics: addr_in(&v, "metrics", &name)?,
        };
        nodes.push(Node {
            name,
            addrs,
            node_id,
            child,
            done: false,
        });
    }
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
                sip = n.addrs.sip,
                pid = std::process::id()
            );
            let _ = sock.send_to(req.as_bytes(), n.addrs.sip);
            let mut buf = [0u8; 2048];
            let sip_ok = matches!(sock.recv_from(&mut buf), Ok((len, _)) if buf[..len].starts_with(b"SIP/2.0 200"));
            if sip_ok
                && http_get(n.addrs.metrics, "/readyz").0 == 200
                && ring_size(n.addrs.metrics) == Some(want)
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

/// Stops the supernodes (SIGTERM: they hand their keys off), then the
/// control plane.
async fn stop_all(nodes: &mut [Node], services: &mut [Child]) {
    let nodes = nodes.iter_mut().filter(|n| !n.done).map(|n| &mut n.child);
    terminate(nodes.collect()).await;
    terminate(services.iter_mut().collect()).await;
}

/// SIGTERM to each child (our own, unreaped: its PID cannot have been
/// reused), then SIGKILL to those still running after 15 s.
async fn terminate(children: Vec<&mut Child>) {
    for c in &children {
        if let Some(pid) = c.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for c in children {
        if tokio::time::timeout_at(deadline, c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
}

/// Enrollments the dev bootstrap token allows beyond the farm's nodes:
/// for supernodes started by hand against the dev farm.
const DEV_SPARE_ENROLLMENTS: u32 = 4;

/// Set by `ringmesh dev` on the processes it starts: each asks the kernel
/// for SIGKILL when its parent dies ([`die_with_parent`]).
pub const DIE_WITH_PARENT: &str = "RINGMESH_DIE_WITH_PARENT";

/// Called first by every `ringmesh` process: under `ringmesh dev`
/// (`RINGMESH_DIE_WITH_PARENT=1`) the process gets SIGKILL when dev exits
/// (Linux `PR_SET_PDEATHSIG`), and exits at once if dev is already gone.
pub fn die_with_parent() {
    if std::env::var_os(DIE_WITH_PARENT).is_some_and(|v| v == "1") {
        let parent = nix::unistd::getppid();
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
        if nix::unistd::getppid() != parent {
            std::process::exit(1);
        }
    }
}

/// Checks that every port the farm will listen on is free, waiting a few
/// seconds for a farm that is still shutting down, so that a second farm on
/// the same ports fails with a clear message instead of talking to the
/// first one's services.
async fn ports_free(args: &DevArgs) -> anyhow::Result<()> {
    let base = args.sip_port;
    let mut tcp: Vec<u16> = (600..604).map(|o| base + o).collect();
    let mut udp = Vec::new();
    for i in 0..args.nodes {
        tcp.extend([base + i, base + 200 + i, base + 300 + i]);
        tcp.extend([base + 400 + i, base + 500 + i, base + 700 + i]);
        udp.extend([base + i, base + 100 + i]);
    }
    if args.softphone.is_some() {
        tcp.push(base + 800);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let busy = tcp
            .iter()
            .find(|&&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err())
            .map(|p| format!("tcp {p}"))
            .or_else(|| {
                udp.iter()
                    .find(|&&p| UdpSocket::bind(("127.0.0.1", p)).is_err())
                    .map(|p| format!("udp {p}"))
            });
        match busy {
            None => return Ok(()),
            Some(port) if Instant::now() > deadline => bail!(
                "port {port} on 127.0.0.1 is in use (another farm on --sip-port {base}?); \
                 stop it or pick another --sip-port"
            ),
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Starts `argv` with stdout and stderr appended to `log`, asking it to
/// announce its addresses in `announce`. It dies with `ringmesh dev`
/// even when dev is killed without stopping it (see [`DIE_WITH_PARENT`]),
/// so no orphan keeps holding the farm's ports.
fn spawn_logged(argv: &[String], log: &Path, announce: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = match CONTAINER.get() {
        Some(image) => container(image, argv, log, announce)?,
        None => {
            let mut cmd = Command::new(&argv[0]);
            cmd.env(DIE_WITH_PARENT, "1")
                .env(crate::listening::ENV, announce)
                .args(&argv[1..]);
            cmd
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", argv[1]))
}

/// podman with the options these machines need (runc, cgroupfs, no
/// default ulimits, the vfs storage driver where overlayfs cannot be
/// mounted; `RINGMESH_PODMAN_STORAGE` picks another), as
/// helm/image/podman runs it.
fn podman() -> std::io::Result<Command> {
    let conf = std::env::temp_dir().join("ringmesh-dev-containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n")?;
    let storage = std::env::var("RINGMESH_PODMAN_STORAGE").unwrap_or_else(|_| "vfs".into());
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", conf).args([
        "--runtime",
        "runc",
        "--cgroup-manager=cgroupfs",
        "--storage-driver",
        &storage,
    ]);
    Ok(cmd)
}

/// `argv` (a `ringmesh` command line) as a container of `image`, the way
/// the chart runs it, its data directory (where `log` is) mounted at its
/// own path and owned by the container's user. Stopping the podman client
/// with SIGTERM stops the container (podman passes the signal on); the
/// containers of this dev are removed when it ends.
fn container(image: &str, argv: &[String], log: &Path, announce: &Path) -> anyhow::Result<Command> {
    let data = log.parent().context("a log has a directory")?;
    let uid = Some(nix::unistd::Uid::from_raw(CONTAINER_USER));
    let gid = Some(nix::unistd::Gid::from_raw(CONTAINER_USER));
    for entry in walk(data)? {
        nix::unistd::chown(&entry, uid, gid)
            .with_context(|| format!("cannot give {} to the container's user", entry.display()))?;
    }
    let name = Path::new(log)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("process");
    let dir = data.display().to_string();
    let mut cmd = podman()?;
    cmd.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
    ])
    .args(["--user", &format!("{CONTAINER_USER}:{CONTAINER_USER}")])
    .args(["--cap-drop", "all", "--security-opt", "no-new-privileges"])
    .args([
        "--name",
        &format!("ringmesh-dev-{}-{name}", std::process::id()),
    ])
    .args(["--label", &format!("ringmesh-dev={}", std::process::id())])
    .args(["-v", &format!("{dir}:{dir}")])
    .args([
        "-e",
        &format!("{}={}", crate::listening::ENV, announce.display()),
    ])
    .arg(image)
    .args(&argv[1..]);
    Ok(cmd)
}

/// `dir` and everything below it.
fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() && !out[i].is_symlink() {
            for e in std::fs::read_dir(&out[i])? {
                out.push(e?.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Removes the containers this dev started that are still there (one
/// whose podman client was killed outlives it).
fn remove_containers() {
    let label = format!("label=ringmesh-dev={}", std::process::id());
    let Ok(mut ps) = podman().map(|c| c.into_std()) else {
        return;
    };
    let Ok(out) = ps.args(["ps", "-aq", "--filter", &label]).output() else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty()
        && let Ok(mut rm) = podman().map(|c| c.into_std())
    {
        let _ = rm.args(["rm", "-f"]).args(&ids).output();
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom(&mut b);
    b
}

/// Random bytes from the kernel.
fn getrandom(buf: &mut [u8]) {
    use std::io::Read as _;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}

/// The number a demo subscriber owns beside its SIP identity.
fn demo_number(user: &str) -> Option<&'static str> {
    match user {
        "alice" => Some("tel:+15550100"),
        "bob" => Some("tel:+15550101"),
        _ => None,
    }
}

/// Creates the demo subscribers through the provisioning API (an existing
/// one gets the password again).
async fn create_subscribers(
    addr: SocketAddr,
    operator: &TlsFiles,
    args: &DevArgs,
) -> anyhow::Result<()> {
    use ringmesh_proto::provisioning as pb;
    use ringmesh_proto::provisioning::provisioning_client::ProvisioningClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(operator.client()?)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach provisioning at {addr}"))?;
    let users: Vec<String> = ["alice".to_string(), "bob".to_string()]
        .into_iter()
        .chain((0..args.users).map(|i| format!("user{i}")))
        .collect();
    for chunk in users.chunks(64) {
        let calls = chunk.iter().map(|user| {
            let mut c = ProvisioningClient::new(channel.clone());
            let password = args.password.clone();
            let domain = args.domain.clone();
            async move {
                // alice and bob also own a number, in one implicit
                // registration set with their SIP identity (IMS style).
                let mut public_ids = vec![format!("sip:{user}@{domain}")];
                let mut implicit_sets = Vec::new();
                if let Some(number) = demo_number(user) {
                    public_ids.push(number.to_string());
                    implicit_sets.push(pb::ImplicitSet {
                        public_ids: public_ids.clone(),
                    });
                }
                let sub = pb::Subscriber {
                    private_id: user.clone(),
                    public_ids,
                    implicit_sets,
                    ..Default::default()
                };
                match c
                    .create_subscriber(pb::CreateSubscriberRequest {
                        subscriber: Some(sub),
                        password: password.clone(),
                    })
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => c
                        .set_password(pb::SetPasswordRequest {
                            private_id: user.clone(),
                            password,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                        .map_err(|e| anyhow::anyhow!("set-password {user}: {}", e.message())),
                    Err(s) => Err(anyhow::anyhow!("create {user}: {}", s.message())),
                }
            }
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
    }
    Ok(())
}

fn print_welcome(args: &DevArgs, nodes: &[Node], ca: &Path, softphone: Option<&str>) {
    let sip = nodes[0].addrs.sip;
    let (tls, wss) = (nodes[0].addrs.tls, nodes[0].addrs.wss);
    println!();
    println!(
        "Ringmesh dev farm ready: domain {} , {} supernode(s), auth {:?}",
        args.domain,
        nodes.len(),
        args.auth
    );
    println!("Point a softphone at it:");
    println!("  registrar / outbound proxy : {sip} (UDP or TCP), {tls} (TLS)");
    println!(
        "  WebSocket (browsers)       : wss://{wss} (ws://{})",
        nodes[0].addrs.ws
    );
    println!("  CA to trust for TLS        : {}", ca.display());
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
        println!(
            "  numbers                    : tel:+15550100 rings alice, tel:+15550101 bob (implicit sets)"
        );
    }
    println!(
        "  baresip account line       : <sip:alice@{}>;auth_pass={};outbound=\"sip:{sip}\"",
        args.domain, args.password
    );
    if let Some(url) = softphone {
        println!(
            "Browser softphone (trust {} in the browser first): {url}?user=alice&node=0",
            ca.display()
        );
    }
    println!("Ctrl-C stops the farm.");
}
