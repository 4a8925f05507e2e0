//! A node's side of the farm's public-key infrastructure: its identity
//! (certificate carrying its Node-ID, key, the farm CA, CRLs) and the
//! rustls configurations of overlay links (mutual TLS, TLS 1.3 only, the
//! ring provider). The CA itself is the enrollment service's.
//!
//! A Node-ID is 128 bits chosen by the CA, never by the node: it is carried
//! in the certificate as the URI SAN `urn:ringmesh:node:<32 hex digits>`, so
//! a node cannot choose where it sits on the ring (Sybil resistance, as in
//! RELOAD). Every node certificate also carries the DNS SAN
//! [`NODE_DNS_NAME`], which is the server name links verify.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
pub use ringmesh_enrollment_client::cert::{NODE_DNS_NAME, NODE_URI_PREFIX};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

/// The crypto provider of every TLS configuration here (quinn and rcgen use
/// ring; rustls' own default would be aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The Node-ID in a certificate, from its URI SAN.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<[u8; 16]> {
    ringmesh_enrollment_client::cert::node_id_of(cert)
}

/// The expiry (UNIX seconds) of a certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    ringmesh_enrollment_client::cert::cert_info(cert)
        .ok()
        .map(|i| i.not_after_unix)
}

/// A node's identity: its certificate chain, key, the farm CA and CRLs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: [u8; 16],
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pem: String,
    pub ca: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

fn pem_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    for p in pem::parse_many(pem).map_err(|e| anyhow!("PEM: {e}"))? {
        if p.tag() == "CERTIFICATE" {
            out.push(CertificateDer::from(p.into_contents()));
        }
    }
    Ok(out)
}

impl Identity {
    /// Loads `node.crt`, `node.key`, `ca.crt` (and `crl.pem` if present).
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        crl: Option<&Path>,
    ) -> anyhow::Result<Identity> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let chain = pem_certs(&read(cert)?)?;
        let first = chain
            .first()
            .ok_or_else(|| anyhow!("{} holds no certificate", cert.display()))?;
        let node_id = node_id_of(first).ok_or_else(|| {
            anyhow!(
                "{} carries no Node-ID ({NODE_URI_PREFIX}… URI SAN)",
                cert.display()
            )
        })?;
        let ca_path = ca;
        let ca_pem = read(ca_path)?;
        let ca = pem_certs(&ca_pem)?;
        if ca.is_empty() {
            bail!("{} holds no CA certificate", ca_path.display());
        }
        // A CRL is used only when the farm CA signed it.
        let mut crls = Vec::new();
        if let Some(p) = crl.filter(|p| p.exists()) {
            for block in pem::parse_many(read(p)?).map_err(|e| anyhow!("CRL PEM: {e}"))? {
                ringmesh_enrollment_client::cert::verify_crl(&pem::encode(&block), &ca_pem)
                    .map_err(|e| anyhow!("{}: {e}", p.display()))?;
                crls.push(CertificateRevocationListDer::from(block.into_contents()));
            }
        }
        Ok(Identity {
            node_id,
            chain,
            key_pem: read(key)?,
            ca,
            crls,
        })
    }

    fn key(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        let p = pem::parse(&self.key_pem).map_err(|e| anyhow!("key PEM: {e}"))?;
        PrivateKeyDer::try_from(p.into_contents()).map_err(|e| anyhow!("key: {e}"))
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone())?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side of a link: requires a client certificate from the farm CA.
    pub fn server_config(&self, alpn: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .with_crls(self.crls.clone())
                .build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key()?)?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }

    /// Client side of a link: the server must present a farm certificate.
    pub fn client_config(&self, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots()?, provider())
                .with_crls(self.crls.clone())
                .build()?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key()?)?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }

    /// The server name links verify.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(NODE_DNS_NAME).expect("valid DNS name")
    }

    /// Seconds until this node's certificate expires (negative: expired).
    pub fn expires_in(&self) -> Option<i64> {
        Some(not_after(self.chain.first()?)? - UnixTime::now().as_secs() as i64)
    }
}
