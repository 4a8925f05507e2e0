//! The farm CA: issues node certificates that bind a Node-ID chosen here,
//! signs CRLs. Adapted from the supernode's development CA (`pki.rs`);
//! the Node-ID URI SAN and the DNS SAN are identical, so certificates from
//! either verify on the same overlay links.
//!
//! A Node-ID is 128 bits chosen by the CA, never by the node: it is the
//! URI SAN `urn:ringmesh:node:<32 hex digits>`. Every node certificate
//! also carries the DNS SAN [`NODE_DNS_NAME`], the server name links
//! verify. Whatever names or extensions a CSR asks for are ignored; only
//! its public key (whose possession the CSR's signature proves) is used.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
};

pub use ringmesh_enrollment_client::cert::{
    CertError, CertInfo, NODE_DNS_NAME, NODE_URI_PREFIX, cert_info, node_id_of, node_uri,
    parse_node_id, pem_certs, signed_by,
};
pub use ringmesh_enrollment_client::tls::{CONTROL_DNS_NAME, Role, TlsFiles, role_of};

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR does not parse or its signature does not verify.
    #[error("bad CSR: {0}")]
    Csr(String),
    /// A certificate does not parse or was not issued by this CA.
    #[error("bad certificate: {0}")]
    Certificate(String),
    /// The CA's own material is unusable.
    #[error("CA: {0}")]
    Ca(String),
}

fn ca_err(e: impl std::fmt::Display) -> CaError {
    CaError::Ca(e.to_string())
}

impl From<CertError> for CaError {
    fn from(e: CertError) -> CaError {
        CaError::Certificate(e.0)
    }
}

/// Chooses a Node-ID: random for the first node, then the midpoint of the
/// widest arc between those already issued (the same rule as the
/// supernode's development CA). Random IDs leave Chord rings badly
/// unbalanced at small N; a CA that assigns positions does better, and a
/// node still cannot pick its own place.
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

/// A node certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub node_id: [u8; 16],
    /// Lower-case hex.
    pub serial: String,
    pub not_after_unix: i64,
}

/// A revoked certificate, for the CRL.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Lower-case hex.
    pub serial: String,
    pub revoked_unix: i64,
    pub reason: Option<rcgen::RevocationReason>,
}

/// A certificate authority: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A positive serial without a leading zero byte, so its DER form (and the
/// hex recorded) is exactly these bytes.
fn new_serial() -> [u8; 16] {
    let mut s: [u8; 16] = rand::random();
    s[0] = (s[0] & 0x7f) | 0x01;
    s
}

impl Ca {
    /// A new CA (ECDSA P-256) valid for ten years.
    pub fn generate(name: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(ca_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(ca_err)?;
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
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&new_serial()));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(ca_err)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Ca(format!("CA key: {e}")))?;
        let der = pem_certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Ca("no CA certificate in the PEM".into()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::Ca(format!("CA certificate: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CaError::Ca(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem).map_err(ca_err)?)
                .map_err(|e| CaError::Ca(format!("CA certificate: {e}")))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            key,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA key, PEM (keep it secret).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a node certificate for the CSR's public key with the Node-ID
    /// `node_id` (see [`place`]); whatever the CSR asks for is ignored.
    pub fn sign_csr(
        &self,
        name: &str,
        csr_pem: &str,
        node_id: [u8; 16],
        days: i64,
    ) -> Result<Issued, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        self.issue(name, &csr.public_key, node_id, days)
    }

    /// Issues a node certificate for `public_key` with a given Node-ID
    /// (renewal keeps the node where it is on the ring).
    pub fn issue(
        &self,
        name: &str,
        public_key: &impl rcgen::PublicKeyData,
        node_id: [u8; 16],
        days: i64,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::new(vec![NODE_DNS_NAME.to_string()]).map_err(ca_err)?;
        params
            .subject_alt_names
            .push(SanType::URI(node_uri(&node_id).try_into().map_err(ca_err)?));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial = new_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        let not_after = now + time::Duration::days(days);
        params.not_after = not_after;
        let cert = params.signed_by(public_key, &self.issuer).map_err(ca_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            node_id,
            serial: hex::encode(serial),
            not_after_unix: not_after.unix_timestamp(),
        })
    }

    /// Issues a control-plane certificate with a fresh key (see
    /// [`ringmesh_enrollment_client::tls`]): a server's (DNS SAN
    /// `CONTROL_DNS_NAME`) when `role` is None, else a client's carrying
    /// the role's URI SAN. Returns (certificate, private key), PEM.
    pub fn issue_control(
        &self,
        name: &str,
        role: Option<Role>,
        days: i64,
    ) -> Result<(String, String), CaError> {
        match role {
            None => self.issue_leaf(
                name,
                vec![SanType::DnsName(
                    CONTROL_DNS_NAME.try_into().map_err(ca_err)?,
                )],
                vec![ExtendedKeyUsagePurpose::ServerAuth],
                days,
            ),
            Some(r) => self.issue_leaf(
                name,
                vec![SanType::URI(r.uri().try_into().map_err(ca_err)?)],
                vec![ExtendedKeyUsagePurpose::ClientAuth],
                days,
            ),
        }
    }

    /// Issues a SIP TLS certificate with a fresh key (a lab's; a carrier's
    /// comes from its own PKI), naming `dns` and `ips`, for serving SIP over
    /// TLS and secure WebSocket and for connecting as a TLS client (SIP
    /// proxies and front ends do both, RFC 5922). Returns (certificate,
    /// private key), PEM.
    pub fn issue_sip(
        &self,
        name: &str,
        dns: &[&str],
        ips: &[std::net::IpAddr],
        days: i64,
    ) -> Result<(String, String), CaError> {
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for d in dns {
            sans.push(SanType::DnsName((*d).try_into().map_err(ca_err)?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let eku = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue_leaf(name, sans, eku, days)
    }

    fn issue_leaf(
        &self,
        name: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
        days: i64,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(ca_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(ca_err)?;
        params.subject_alt_names = sans;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = eku;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&new_serial()));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&key, &self.issuer).map_err(ca_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CRL listing `revoked`, valid for `days`.
    pub fn crl(&self, revoked: &[Revoked], number: u64, days: i64) -> Result<String, CaError> {
        let now = time::OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let serial = hex::decode(&r.serial)
                .map_err(|e| CaError::Ca(format!("serial {}: {e}", r.serial)))?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(r.revoked_unix)
                    .unwrap_or(now),
                reason_code: r.reason,
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(days),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map_err(ca_err)?
            .pem()
            .map_err(ca_err)
    }
}

/// Writes a node's key and a certificate issued by `ca` into `dir`
/// (`node.key`, `node.crt`, `ca.crt`) unless a certificate is there
/// already, as enrollment would (tests and labs without the service).
/// Returns the node's Node-ID; `taken` are those already issued.
pub fn provision_node(
    dir: &std::path::Path,
    name: &str,
    ca: &Ca,
    taken: &[[u8; 16]],
) -> Result<[u8; 16], CaError> {
    let io = |e: std::io::Error| CaError::Ca(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let crt = dir.join("node.crt");
    if crt.exists() {
        let pem = std::fs::read_to_string(&crt).map_err(io)?;
        let first = pem_certs(&pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Certificate(format!("empty {}", crt.display())))?;
        return node_id_of(&first)
            .ok_or_else(|| CaError::Certificate(format!("{} carries no Node-ID", crt.display())));
    }
    let key = KeyPair::generate().map_err(ca_err)?;
    let issued = ca.issue(name, &key, place(taken), 825)?;
    write_private(&dir.join("node.key"), key.serialize_pem().as_bytes()).map_err(io)?;
    std::fs::write(&crt, &issued.cert_pem).map_err(io)?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).map_err(io)?;
    Ok(issued.node_id)
}

/// Issues a control-plane certificate (see [`Ca::issue_control`]) into
/// `dir` as `NAME.crt`, `NAME.key` (mode 0600) and the CA's `ca.crt`,
/// unless `NAME.crt` is there already. Returns the files.
pub fn control_files(
    dir: &std::path::Path,
    name: &str,
    ca: &Ca,
    role: Option<Role>,
    days: i64,
) -> Result<TlsFiles, CaError> {
    let io = |e: std::io::Error| CaError::Ca(format!("{}: {e}", dir.display()));
    let files = TlsFiles::in_dir(dir, name);
    std::fs::create_dir_all(dir).map_err(io)?;
    if !files.cert.exists() {
        let (cert, key) = ca.issue_control(name, role, days)?;
        write_private(&files.key, key.as_bytes()).map_err(io)?;
        std::fs::write(&files.cert, cert).map_err(io)?;
    }
    std::fs::write(&files.ca, ca.cert_pem()).map_err(io)?;
    Ok(files)
}

/// Writes a file only its owner can read (created 0600, never wider).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_certificates_carry_their_role_and_nothing_else() {
        use ringmesh_enrollment_client::tls::role_of;
        let ca = Ca::generate("test").unwrap();
        let der = |pem: &str| pem_certs(pem).unwrap().remove(0);
        for role in Role::ALL {
            let (cert, key) = ca.issue_control("c", Some(role), 1).unwrap();
            assert!(key.contains("PRIVATE KEY"));
            assert_eq!(role_of(&der(&cert)), Some(role));
            assert!(signed_by(&der(&cert), ca.cert_der()));
        }
        let (server, _) = ca.issue_control("provisioning", None, 1).unwrap();
        assert_eq!(
            role_of(&der(&server)),
            None,
            "a server certificate is no client"
        );
        let key = KeyPair::generate().unwrap();
        let node = ca.issue("sn0", &key, [7; 16], 1).unwrap();
        assert_eq!(role_of(&der(&node.cert_pem)), Some(Role::Supernode));
        // Files: the key is private to its owner, and kept on a second call.
        let dir = tempfile::tempdir().unwrap();
        let f = control_files(dir.path(), "operator", &ca, Some(Role::Operator), 1).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&f.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read_to_string(&f.cert).unwrap();
        control_files(dir.path(), "operator", &ca, Some(Role::Operator), 1).unwrap();
        assert_eq!(std::fs::read_to_string(&f.cert).unwrap(), before);
    }

    #[test]
    fn csr_names_are_ignored_and_the_chain_verifies() {
        let ca = Ca::generate("t").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(node_uri(&[0xff; 16]).try_into().unwrap()));
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca.sign_csr("n", &csr, place(&[]), 30).unwrap();
        assert_ne!(issued.node_id, [0xff; 16]);
        let der = pem_certs(&issued.cert_pem).unwrap().remove(0);
        let info = cert_info(&der).unwrap();
        assert_eq!(
            info.node_id,
            Some(issued.node_id),
            "the CA's Node-ID, not the one asked for"
        );
        assert_eq!(info.serial, issued.serial);
        assert_eq!(info.public_key, key.der_bytes());
        assert!(signed_by(&der, ca.cert_der()));
        assert!(!signed_by(&der, Ca::generate("other").unwrap().cert_der()));
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let names = format!(
            "{:?}",
            x509.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            names.contains(NODE_DNS_NAME) && !names.contains("evil"),
            "{names}"
        );
    }

    #[test]
    fn placement_splits_the_widest_arc() {
        let a = place(&[]);
        let b = place(&[a]);
        assert_eq!(
            u128::from_be_bytes(b).wrapping_sub(u128::from_be_bytes(a)),
            1 << 127
        );
        let mut ids = vec![a, b];
        for _ in 0..2 {
            ids.push(place(&ids));
        }
        let mut v: Vec<u128> = ids.iter().map(|i| u128::from_be_bytes(*i)).collect();
        v.sort_unstable();
        for i in 0..4 {
            assert_eq!(
                v[(i + 1) % 4].wrapping_sub(v[i]),
                1 << 126,
                "four nodes, four equal arcs"
            );
        }
    }

    #[test]
    fn reloads_and_rejects_a_foreign_key() {
        let ca = Ca::generate("t").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        let other = Ca::generate("o").unwrap();
        assert!(Ca::from_pem(ca.cert_pem(), &other.key_pem()).is_err());
    }

    #[test]
    fn crls_parse() {
        let ca = Ca::generate("t").unwrap();
        let pem = ca
            .crl(
                &[Revoked {
                    serial: "0123ab".into(),
                    revoked_unix: 1_700_000_000,
                    reason: Some(rcgen::RevocationReason::KeyCompromise),
                }],
                3,
                7,
            )
            .unwrap();
        let der = pem::parse(&pem).unwrap().into_contents();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 1);
        assert_eq!(
            hex::encode(crl.iter_revoked_certificates().next().unwrap().raw_serial()),
            "0123ab"
        );
        // Checked against the CA before use: its own passes, with its
        // number and serials; one from another CA and garbage do not.
        let v = ringmesh_enrollment_client::cert::verify_crl(&pem, ca.cert_pem()).unwrap();
        assert_eq!(v.number, 3);
        assert_eq!(v.revoked_serials, ["0123ab"]);
        assert!(!v.stale(1_700_000_000) && v.stale(i64::MAX));
        let other = Ca::generate("t").unwrap();
        let forged = other.crl(&[], 9, 7).unwrap();
        let e = ringmesh_enrollment_client::cert::verify_crl(&forged, ca.cert_pem()).unwrap_err();
        assert!(e.to_string().contains("not signed by the farm CA"), "{e}");
        assert!(ringmesh_enrollment_client::cert::verify_crl("junk", ca.cert_pem()).is_err());
        assert!(
            ringmesh_enrollment_client::cert::verify_crl(ca.cert_pem(), ca.cert_pem()).is_err()
        );
    }
}
