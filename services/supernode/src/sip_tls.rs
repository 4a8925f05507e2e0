//! The certificates of SIP over TLS and secure WebSocket (RFC 3261 §26,
//! RFC 7118): a set of certificates chosen by the name a phone asks for
//! (SNI), reloaded when their files change, so a rotation (cert-manager
//! renewing a Secret) needs no restart.
//!
//! Each certificate is a directory holding `tls.crt` (the chain, leaf
//! first) and `tls.key`, as a Kubernetes TLS Secret is mounted. A phone
//! that names a host one certificate covers (a DNS SAN, `*.` wildcards
//! included) gets that one; any other phone, and one that sends no name
//! (a phone configured with an IP address), gets the first.
//!
//! Both TLS 1.2 and 1.3 are offered (many deployed phones speak only 1.2),
//! with rustls' ring provider. Client certificates are asked for, never
//! required, when a client CA is configured: a certificate that does not
//! chain to it fails the handshake; a phone that sends none is served.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use parking_lot::RwLock;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::pki::provider;

/// How often the certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// One loaded certificate: the names it covers and the key to sign with.
#[derive(Debug)]
struct Loaded {
    dir: PathBuf,
    /// The files' contents when loaded (a change is told by comparing).
    source: (Vec<u8>, Vec<u8>),
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    not_after_unix: i64,
}

/// The certificates of a node's TLS listeners, chosen by SNI.
#[derive(Debug)]
pub struct Certificates {
    loaded: RwLock<Vec<Arc<Loaded>>>,
}

fn read_dir_files(dir: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let (cert_pem, key_pem) = read_dir_files(dir)?;
    let at = |what: &str| format!("{}/{what}", dir.display());
    let mut chain = Vec::new();
    let mut key = None;
    for (pem_bytes, file) in [(&cert_pem, "tls.crt"), (&key_pem, "tls.key")] {
        for block in pem::parse_many(pem_bytes).map_err(|e| anyhow!("{}: PEM: {e}", at(file)))? {
            match block.tag() {
                "CERTIFICATE" => chain.push(CertificateDer::from(block.into_contents())),
                "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" => {
                    let der = PrivateKeyDer::try_from(block.into_contents())
                        .map_err(|e| anyhow!("{}: {e}", at(file)))?;
                    key = Some(der);
                }
                _ => {}
            }
        }
    }
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("{} holds no certificate", at("tls.crt")))?;
    let key = key.ok_or_else(|| anyhow!("{} holds no private key", at("tls.key")))?;
    let info = ringmesh_enrollment_client::cert::cert_info(leaf)
        .map_err(|e| anyhow!("{}: {e}", at("tls.crt")))?;
    let names = info.dns_names;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        anyhow!(
            "{}: the key does not match the certificate: {e}",
            dir.display()
        )
    })?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        source: (cert_pem, key_pem),
        names,
        key: Arc::new(certified),
        not_after_unix: info.not_after_unix,
    })
}

/// Whether a certificate name (`*.` wildcard allowed, one label) covers
/// `host`.
fn covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name == host,
    }
}

impl Certificates {
    /// Loads every directory; any failure names the directory and what is
    /// wrong with it.
    pub fn load(dirs: &[PathBuf]) -> anyhow::Result<Arc<Certificates>> {
        if dirs.is_empty() {
            bail!("no TLS certificate given (--tls-cert DIR)");
        }
        let loaded = dirs
            .iter()
            .map(|d| load(d).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(Certificates {
            loaded: RwLock::new(loaded),
        }))
    }

    /// Reads every directory again and swaps in what changed and loads;
    /// a directory that fails keeps its certificate (the error is logged
    /// and counted). Returns (reloaded, failed).
    pub fn reload(&self) -> (usize, usize) {
        let current = self.loaded.read().clone();
        let (mut reloaded, mut failed) = (0, 0);
        let mut next = Vec::with_capacity(current.len());
        for old in current {
            if read_dir_files(&old.dir).is_ok_and(|files| files == old.source) {
                next.push(old);
                continue;
            }
            match load(&old.dir) {
                Ok(new) => {
                    tracing::info!(dir = %old.dir.display(), names = ?new.names, "TLS certificate reloaded");
                    reloaded += 1;
                    next.push(Arc::new(new));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "TLS certificate not reloaded: the old one stays");
                    failed += 1;
                    next.push(old);
                }
            }
        }
        *self.loaded.write() = next;
        (reloaded, failed)
    }

    /// The earliest expiry of the certificates in use (UNIX seconds).
    pub fn first_expiry(&self) -> Option<i64> {
        self.loaded.read().iter().map(|l| l.not_after_unix).min()
    }

    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.read();
        let host = server_name.map(str::to_ascii_lowercase);
        host.and_then(|h| {
            loaded
                .iter()
                .find(|l| l.names.iter().any(|n| covers(n, &h)))
        })
        .or(loaded.first())
        .map(|l| l.key.clone())
    }
}

/// The resolver rustls asks for each handshake.
#[derive(Debug)]
struct BySni(Arc<Certificates>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.choose(hello.server_name())
    }
}

/// The CA certificates (PEM) of `paths`, in one root store.
fn roots(paths: &[PathBuf]) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for path in paths {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let before = roots.len();
        for block in pem::parse_many(&pem).map_err(|e| anyhow!("{}: {e}", path.display()))? {
            if block.tag() == "CERTIFICATE" {
                roots
                    .add(CertificateDer::from(block.into_contents()))
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            }
        }
        if roots.len() == before {
            bail!("{} holds no CA certificate", path.display());
        }
    }
    Ok(roots)
}

/// The server configuration of a TLS or WSS listener: TLS 1.2 and 1.3,
/// certificates by SNI, client certificates verified against `client_cas`
/// when any is given (asked for, not required).
pub fn server_config(
    certs: &Arc<Certificates>,
    client_cas: &[PathBuf],
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(client_cas)?.into(),
            provider(),
        )
        .allow_unauthenticated()
        .build()?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(BySni(certs.clone())));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The certificate this node presents as a TLS client: the first (the
/// one phones that ask no name get), reloaded like the others.
#[derive(Debug)]
struct FirstCert(Arc<Certificates>);

impl rustls::client::ResolvesClientCert for FirstCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.choose(None)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client configuration of connections to other domains' servers
/// (peer farms, RFC 5922): TLS 1.2 and 1.3, the server's certificate
/// chaining to `cas` and naming the domain the connection is for (the
/// name sent as SNI), this node's first certificate as its client
/// certificate (a peer recognises the farm by it).
pub fn client_config(
    certs: &Arc<Certificates>,
    cas: &[PathBuf],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots(cas)?)
        .with_client_cert_resolver(Arc::new(FirstCert(certs.clone())));
    Ok(Arc::new(cfg))
}

/// Checks the certificate files every [`RELOAD_EVERY`] until cancelled.
pub async fn follow(certs: Arc<Certificates>, metrics: crate::metrics::Metrics) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.tick().await;
    loop {
        if let Some(t) = certs.first_expiry() {
            metrics.tls_cert_expiry.set(t);
        }
        tick.tick().await;
        let (reloaded, failed) = certs.reload();
        metrics
            .tls_reloads
            .with_label_values(&["reloaded"])
            .inc_by(reloaded as u64);
        metrics
            .tls_reloads
            .with_label_values(&["failed"])
            .inc_by(failed as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_enrollment::ca::Ca;

    fn write(dir: &Path, ca: &Ca, names: &[&str]) {
        let (cert, key) = ca.issue_sip("t", names, &[], 1).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    /// The leaf certificate a handshake naming `sni` gets.
    fn served(certs: &Certificates, sni: Option<&str>) -> Vec<u8> {
        certs.choose(sni).unwrap().cert[0].to_vec()
    }

    #[test]
    fn chosen_by_name_and_reloaded_when_changed_but_never_for_a_broken_file() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test").unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write(&a, &ca, &["sip.example.com"]);
        write(&b, &ca, &["*.edge.example.com"]);
        let certs = Certificates::load(&[a.clone(), b.clone()]).unwrap();
        let first = served(&certs, Some("sip.example.com"));
        let edge = served(&certs, Some("n1.edge.example.com"));
        assert_ne!(first, edge, "SNI picks the certificate naming it");
        assert_eq!(served(&certs, None), first, "no SNI: the first");
        assert_eq!(served(&certs, Some("other.example")), first);
        assert_eq!(certs.reload(), (0, 0), "nothing changed");

        // cert-manager renews b: the next handshake gets the new one.
        write(&b, &ca, &["*.edge.example.com"]);
        assert_eq!(certs.reload(), (1, 0));
        let renewed = served(&certs, Some("n1.edge.example.com"));
        assert_ne!(renewed, edge);

        // A half-written or broken file keeps the certificate in use.
        std::fs::write(b.join("tls.key"), "not a key").unwrap();
        assert_eq!(certs.reload(), (0, 1));
        assert_eq!(served(&certs, Some("n1.edge.example.com")), renewed);
        // A key that is not the certificate's is refused at start.
        let (_, other_key) = ca.issue_sip("t", &["x.example"], &[], 1).unwrap();
        std::fs::write(b.join("tls.key"), other_key).unwrap();
        let err = Certificates::load(std::slice::from_ref(&b)).unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
        let err = Certificates::load(&[tmp.path().join("missing")]).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    }

    #[test]
    fn names_and_wildcards() {
        assert!(covers("sip.example.com", "sip.example.com"));
        assert!(covers("*.example.com", "edge1.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("sip.example.com", "sip.example.org"));
    }
}
