//! A real etcd (Debian `etcd-server`) on free 127.0.0.1 ports, killed by
//! its PID when dropped; plain, or with TLS and client-certificate
//! authentication ([`Etcd::start_secure`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{PortBlock, require, wait_until};

/// One etcd member on its own data directory.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    binary: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    pub data: tempfile::TempDir,
    /// With TLS: the certificates (the server's, and clients' named by user).
    pub certs: Option<EtcdCerts>,
    /// Its ports, outside the ephemeral range: a restart finds them free.
    _ports: PortBlock,
}

impl Etcd {
    /// Starts etcd and waits until its health endpoint answers.
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// Starts etcd serving TLS only, with `--client-cert-auth`: a client
    /// needs a certificate from its CA, whose common name is its etcd user
    /// once authentication is on. Certificates are made for `root` and
    /// each of `users` (and none for anyone else).
    pub fn start_secure(users: &[&str]) -> Etcd {
        let mut all = vec!["root"];
        all.extend_from_slice(users);
        Etcd::start_with(&all)
    }

    fn start_with(users: &[&str]) -> Etcd {
        let ports = PortBlock::reserve();
        let data = tempfile::tempdir().expect("a temporary directory");
        let certs = (!users.is_empty()).then(|| EtcdCerts::make(data.path().join("certs"), users));
        let mut e = Etcd {
            child: None,
            binary: require("etcd", "etcd-server"),
            client_port: ports.base,
            peer_port: ports.base + 1,
            data,
            certs,
            _ports: ports,
        };
        e.spawn();
        e
    }

    pub fn url(&self) -> String {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The flags a Ringmesh process reaches this etcd with as `user`:
    /// `--etcd URL`, and with TLS `--etcd-ca`, `--etcd-cert`, `--etcd-key`.
    pub fn client_args(&self, user: &str) -> Vec<String> {
        let mut a = vec!["--etcd".to_string(), self.url()];
        if let Some(c) = &self.certs {
            let [ca, cert, key] = c.client(user);
            for (flag, p) in [
                ("--etcd-ca", ca),
                ("--etcd-cert", cert),
                ("--etcd-key", key),
            ] {
                a.extend([flag.to_string(), p.display().to_string()]);
            }
        }
        a
    }

    /// Where /health is served over plain HTTP (with TLS, a port of its own).
    fn health_port(&self) -> u16 {
        if self.certs.is_some() {
            self.client_port + 2
        } else {
            self.client_port
        }
    }

    fn log(&self) -> PathBuf {
        self.data.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("the etcd log");
        let child = Command::new(&self.binary)
            .args(["--name", "t", "--data-dir"])
            .arg(self.data.path().join("member"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(self.tls_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the etcd log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let port = self.health_port();
        let log = self.log();
        let child = self.child.as_mut().expect("just started");
        wait_until("etcd ready", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "etcd exited ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            healthy(port)
        });
    }

    fn tls_args(&self) -> Vec<String> {
        let Some(c) = &self.certs else {
            return Vec::new();
        };
        let f = |n: &str| c.dir.join(n).display().to_string();
        vec![
            "--cert-file".into(),
            f("server.crt"),
            "--key-file".into(),
            f("server.key"),
            "--trusted-ca-file".into(),
            f("ca.crt"),
            "--client-cert-auth".into(),
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{}", self.health_port()),
        ]
    }

    /// The keys under `prefix`, through etcdctl (Debian `etcd-client`).
    /// (As `root` when etcd speaks TLS.)
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let tls: Vec<String> = match &self.certs {
            Some(c) => {
                let [ca, cert, key] = c.client("root");
                vec![
                    format!("--cacert={}", ca.display()),
                    format!("--cert={}", cert.display()),
                    format!("--key={}", key.display()),
                ]
            }
            None => Vec::new(),
        };
        let out = Command::new(require("etcdctl", "etcd-client"))
            .env("ETCDCTL_API", "3")
            .args(tls)
            .args([
                "--endpoints",
                &self.url(),
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ])
            .output()
            .expect("etcdctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Kills etcd (by its PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// Whether the etcd whose `/health` is on `port` (plain HTTP) says it is
/// healthy: it has a leader and a quorum.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.contains("\"health\":\"true\"")
}

/// Certificates of a TLS etcd: its CA, its server certificate (127.0.0.1)
/// and client certificates whose common names are etcd users.
#[derive(Debug)]
pub struct EtcdCerts {
    pub dir: PathBuf,
}

impl EtcdCerts {
    /// A fresh CA, a server certificate for 127.0.0.1 and a client
    /// certificate per user, in `dir`.
    pub fn make(dir: PathBuf, users: &[&str]) -> EtcdCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        std::fs::create_dir_all(&dir).expect("the certificates' directory");
        let write = |name: &str, cert: &rcgen::Certificate, key: &KeyPair| {
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
        };
        let ca_key = KeyPair::generate().expect("a key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.distinguished_name
            .push(DnType::CommonName, "etcd test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("a CA");
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("write");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = |cn: &str, names: Vec<String>, eku: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("a key");
            let mut p = CertificateParams::new(names).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = eku;
            (p.signed_by(&key, &issuer).expect("signed"), key)
        };
        let (server, key) = leaf(
            "etcd",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        write("server", &server, &key);
        for user in users {
            let (c, k) = leaf(user, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth]);
            write(user, &c, &k);
        }
        EtcdCerts { dir }
    }

    /// (CA, certificate, key) of `user`'s client certificate.
    pub fn client(&self, user: &str) -> [PathBuf; 3] {
        [
            self.dir.join("ca.crt"),
            self.dir.join(format!("{user}.crt")),
            self.dir.join(format!("{user}.key")),
        ]
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plaintext etcd cluster of `n` members on 127.0.0.1 (the test's
/// ports), for availability tests: members are killed, restarted, and
/// the whole cluster restored from a snapshot, as an operator would.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Option<Child>>,
    pub data: tempfile::TempDir,
    ports: PortBlock,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let mut c = EtcdCluster {
            binary: require("etcd", "etcd-server"),
            members: (0..n).map(|_| None).collect(),
            data: tempfile::tempdir().expect("a temporary directory"),
            ports: PortBlock::reserve(),
        };
        c.start_all();
        c
    }

    fn client_port(&self, i: usize) -> u16 {
        self.ports.base + 10 * i as u16
    }

    fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_port(i) + 1)
    }

    /// Member `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_port(i))
    }

    /// `--etcd URL` for every member: how a Ringmesh process reaches it.
    pub fn client_args(&self) -> Vec<String> {
        (0..self.members.len())
            .flat_map(|i| ["--etcd".to_string(), self.url(i)])
            .collect()
    }

    /// `m0=PEER0,m1=PEER1,…`.
    pub fn initial_cluster(&self) -> String {
        (0..self.members.len())
            .map(|i| format!("m{i}={}", self.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s data directory.
    pub fn member_dir(&self, i: usize) -> PathBuf {
        self.data.path().join(format!("m{i}"))
    }

    fn spawn(&mut self, i: usize) {
        let client = self.url(i);
        let peer = self.peer_url(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join(format!("m{i}.log")))
            .expect("the etcd log");
        let child = Command::new(&self.binary)
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(self.member_dir(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-token", "ringmesh-test"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the etcd log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i] = Some(child);
    }

    /// Whether member `i` says the cluster is healthy (it has a leader and
    /// a quorum).
    pub fn healthy(&self, i: usize) -> bool {
        healthy(self.client_port(i))
    }

    /// Starts every member that is not running, and waits until each
    /// running member reports a healthy cluster.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].is_none() {
                self.spawn(i);
            }
        }
        wait_until(
            "the etcd cluster is healthy",
            Duration::from_secs(30),
            || (0..self.members.len()).all(|i| self.healthy(i)),
        );
    }

    /// Kills member `i` (by its PID, SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Loses the cluster and restores it from `snapshot` (made with
    /// `etcdctl snapshot save`), as docs/operations.md says: every member
    /// stopped, its data directory replaced by `etcdctl snapshot restore`
    /// with the same names and peer URLs, then started.
    pub fn restore(&mut self, snapshot: &std::path::Path) {
        self.kill_all();
        for i in 0..self.members.len() {
            let dir = self.member_dir(i);
            let _ = std::fs::remove_dir_all(&dir);
            let out = Command::new(require("etcdctl", "etcd-client"))
                .env("ETCDCTL_API", "3")
                .arg("snapshot")
                .arg("restore")
                .arg(snapshot)
                .args(["--name", &format!("m{i}")])
                .args(["--initial-cluster", &self.initial_cluster()])
                .args(["--initial-cluster-token", "ringmesh-test-restored"])
                .args(["--initial-advertise-peer-urls", &self.peer_url(i)])
                .arg("--data-dir")
                .arg(&dir)
                .output()
                .expect("etcdctl runs");
            assert!(out.status.success(), "snapshot restore: {out:?}");
        }
        self.start_all();
    }

    /// The keys under `prefix`, read through any live member.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let endpoints: Vec<String> = (0..self.members.len()).map(|i| self.url(i)).collect();
        let out = Command::new(require("etcdctl", "etcd-client"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(","), "--command-timeout=5s"])
            .args(["get", "--prefix", "--keys-only", prefix])
            .output()
            .expect("etcdctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The operator's backup: `etcdctl snapshot save` from member
    /// `member` (a snapshot is taken from one member) to `path`.
    pub fn snapshot_save(&self, member: usize, path: &std::path::Path) {
        let out = Command::new(require("etcdctl", "etcd-client"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(member), "--command-timeout=10s"])
            .args(["snapshot", "save"])
            .arg(path)
            .output()
            .expect("etcdctl runs");
        assert!(out.status.success(), "snapshot save: {out:?}");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
