//! The farm's public-key infrastructure: a CA that assigns Node-IDs, node
//! certificates that carry them, and the rustls configurations of overlay
//! links (mutual TLS, TLS 1.3 only, the ring provider).
//!
//! A Node-ID is 128 bits chosen by the CA, never by the node: it is carried
//! in the certificate as the URI SAN `urn:ringmesh:node:<32 hex digits>`, so
//! a node cannot choose where it sits on the ring (Sybil resistance, as in
//! RELOAD). Every node certificate also carries the DNS SAN
//! [`NODE_DNS_NAME`], which is the server name links verify.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

/// The DNS name every node certificate carries and every link verifies.
pub const NODE_DNS_NAME: &str = "node.ringmesh.internal";
const NODE_URI_PREFIX: &str = "urn:ringmesh:node:";

/// The crypto provider of every TLS configuration here (quinn and rcgen use
/// ring; rustls' own default would be aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The URI SAN naming a Node-ID.
pub fn node_uri(id: &[u8; 16]) -> String {
    format!("{NODE_URI_PREFIX}{}", hex::encode(id))
}

/// The Node-ID in a certificate, from its URI SAN.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<[u8; 16]> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            let hex_id = u.strip_prefix(NODE_URI_PREFIX)?;
            let v = hex::decode(hex_id).ok()?;
            v.try_into().ok()
        }
        _ => None,
    })
}

/// The expiry (UNIX seconds) of a certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(x509.validity().not_after.timestamp())
}

/// A certificate authority: its certificate and signing key.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA valid for ten years.
    pub fn generate(name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Ringmesh farm");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let issuer = Issuer::new(params, KeyPair::from_pem(&key.serialize_pem())?);
        Ok(Ca {
            cert_pem,
            key,
            issuer,
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::from_pem(key_pem).context("CA key")?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem)?)
            .context("CA certificate")?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
            issuer,
        })
    }

    /// Loads `ca.crt`/`ca.key` from `dir`, creating them on first use.
    pub fn load_or_create(dir: &Path, name: &str) -> anyhow::Result<Ca> {
        let (c, k) = (dir.join("ca.crt"), dir.join("ca.key"));
        if c.exists() && k.exists() {
            return Ca::from_pem(&std::fs::read_to_string(&c)?, &std::fs::read_to_string(&k)?);
        }
        std::fs::create_dir_all(dir)?;
        let ca = Ca::generate(name)?;
        std::fs::write(&c, &ca.cert_pem)?;
        crate::write_private(&k, ca.key_pem().as_bytes())?;
        Ok(ca)
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a node certificate for `node_key` with a Node-ID chosen here
    /// (see [`place`]: the midpoint of the widest arc between the Node-IDs
    /// already issued, so the ring stays balanced). Returns the
    /// certificate PEM and the Node-ID.
    pub fn issue_node(
        &self,
        name: &str,
        node_key: &KeyPair,
        days: i64,
        taken: &[[u8; 16]],
    ) -> anyhow::Result<(String, [u8; 16])> {
        let id = place(taken);
        let params = node_params(name, &id, days)?;
        let cert = params.signed_by(node_key, &self.issuer)?;
        Ok((cert.pem(), id))
    }

    /// Signs a CSR (PEM) as a node certificate with a Node-ID chosen here;
    /// whatever names the CSR asks for are ignored.
    pub fn sign_csr(
        &self,
        name: &str,
        csr_pem: &str,
        days: i64,
    ) -> anyhow::Result<(String, [u8; 16])> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).context("CSR")?;
        let id: [u8; 16] = rand::random();
        let params = node_params(name, &id, days)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok((cert.pem(), id))
    }

    /// A CRL revoking the given certificate serial numbers.
    pub fn crl(&self, revoked: &[Vec<u8>], number: u64) -> anyhow::Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(7),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Chooses a Node-ID: random for the first node, then the midpoint of the
/// widest arc between those already issued. Random IDs leave Chord rings
/// badly unbalanced at small N (one of five nodes owning two thirds of the
/// keys is common); a CA that assigns positions can do better, and a node
/// still cannot pick its own place.
pub fn place(taken: &[[u8; 16]]) -> [u8; 16] {
    let mut ids: Vec<u128> = taken.iter().map(|b| u128::from_be_bytes(*b)).collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.len() {
        0 => rand::random(),
        1 => ids[0].wrapping_add(1 << 127).to_be_bytes(),
        n => {
            let (start, width) = (0..n)
                .map(|i| (ids[i], ids[(i + 1) % n].wrapping_sub(ids[i])))
                .max_by_key(|&(_, w)| w)
                .expect("two or more ids");
            start.wrapping_add(width / 2).to_be_bytes()
        }
    }
}

fn node_params(name: &str, id: &[u8; 16], days: i64) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(vec![NODE_DNS_NAME.to_string()])?;
    params
        .subject_alt_names
        .push(SanType::URI(node_uri(id).try_into()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial[..15]));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    Ok(params)
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
        let ca = pem_certs(&read(ca_path)?)?;
        if ca.is_empty() {
            bail!("{} holds no CA certificate", ca_path.display());
        }
        let mut crls = Vec::new();
        if let Some(p) = crl.filter(|p| p.exists()) {
            for block in pem::parse_many(read(p)?).map_err(|e| anyhow!("CRL PEM: {e}"))? {
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

/// Writes a node's key and certificate issued by `ca` into `dir`
/// (`node.key`, `node.crt`, `ca.crt`), unless they exist. Returns its
/// Node-ID; `taken` are the Node-IDs already issued in this farm.
pub fn provision_node(
    dir: &Path,
    name: &str,
    ca: &Ca,
    taken: &[[u8; 16]],
) -> anyhow::Result<[u8; 16]> {
    std::fs::create_dir_all(dir)?;
    let crt = dir.join("node.crt");
    if crt.exists() {
        let pem = std::fs::read_to_string(&crt)?;
        let first = pem_certs(&pem)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("empty {}", crt.display()))?;
        return node_id_of(&first).ok_or_else(|| anyhow!("{} carries no Node-ID", crt.display()));
    }
    let key = KeyPair::generate()?;
    let (cert, id) = ca.issue_node(name, &key, 825, taken)?;
    crate::write_private(&dir.join("node.key"), key.serialize_pem().as_bytes())?;
    std::fs::write(&crt, cert)?;
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("ca"), "test farm").unwrap();
        let id = provision_node(&dir.path().join("n1"), "n1", &ca, &[]).unwrap();
        assert_eq!(
            provision_node(&dir.path().join("n1"), "n1", &ca, &[]).unwrap(),
            id,
            "stable across restarts"
        );
        let ident = Identity::load(
            &dir.path().join("n1/node.crt"),
            &dir.path().join("n1/node.key"),
            &dir.path().join("n1/ca.crt"),
            None,
        )
        .unwrap();
        assert_eq!(ident.node_id, id);
        assert!(ident.expires_in().unwrap() > 800 * 86400);
        ident.server_config(b"x").unwrap();
        ident.client_config(b"x").unwrap();
        let again = Ca::load_or_create(&dir.path().join("ca"), "test farm").unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
    }

    #[test]
    fn placement_splits_the_widest_arc() {
        let mut taken = Vec::new();
        for _ in 0..8 {
            taken.push(place(&taken));
        }
        let mut ids: Vec<u128> = taken.iter().map(|b| u128::from_be_bytes(*b)).collect();
        ids.sort_unstable();
        let arcs: Vec<u128> = (0..8)
            .map(|i| ids[(i + 1) % 8].wrapping_sub(ids[i]))
            .collect();
        let (min, max) = (arcs.iter().min().unwrap(), arcs.iter().max().unwrap());
        assert!(
            max - min <= 8,
            "eight nodes split the ring evenly: {arcs:?}"
        );
        let five = &taken[..5];
        let mut ids: Vec<u128> = five.iter().map(|b| u128::from_be_bytes(*b)).collect();
        ids.sort_unstable();
        let widest = (0..5)
            .map(|i| ids[(i + 1) % 5].wrapping_sub(ids[i]))
            .max()
            .unwrap();
        assert!(
            widest <= (u128::MAX / 4) + 1,
            "no node of five owns more than a quarter"
        );
    }

    #[test]
    fn csr_names_are_ignored() {
        let ca = Ca::generate("t").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(node_uri(&[0xff; 16]).try_into().unwrap()));
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let (pem, id) = ca.sign_csr("n", &csr, 30).unwrap();
        assert_ne!(id, [0xff; 16]);
        let der = pem_certs(&pem).unwrap().remove(0);
        assert_eq!(
            node_id_of(&der),
            Some(id),
            "the CA's Node-ID, not the one asked for"
        );
    }
}
