//! What a node knows of certificates: the Node-ID in a node certificate's
//! URI SAN, the DNS name every node certificate carries, and parsing and
//! checking certificates from PEM (the farm CA issues them; nodes and the
//! CA both read them).

/// A certificate that does not parse or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad certificate: {0}")]
pub struct CertError(pub String);

/// The DNS name every node certificate carries and every link verifies.
pub const NODE_DNS_NAME: &str = "node.ringmesh.internal";
/// The prefix of the Node-ID URI SAN.
pub const NODE_URI_PREFIX: &str = "urn:ringmesh:node:";

/// The URI SAN naming a Node-ID.
pub fn node_uri(id: &[u8; 16]) -> String {
    format!("{NODE_URI_PREFIX}{}", hex::encode(id))
}

/// Parses a Node-ID written as 32 hex digits.
pub fn parse_node_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// The DER blocks of the `CERTIFICATE`s in a PEM text.
pub fn pem_certs(pem_text: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CertError(format!("PEM: {e}")))?;
    Ok(blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect())
}

/// The Node-ID in a certificate (DER), from its URI SAN.
pub fn node_id_of(der: &[u8]) -> Option<[u8; 16]> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            parse_node_id(u.strip_prefix(NODE_URI_PREFIX)?)
        }
        _ => None,
    })
}

/// Facts about a certificate this CA cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub node_id: Option<[u8; 16]>,
    /// Serial number, lower-case hex.
    pub serial: String,
    pub not_after_unix: i64,
    /// The subject public key (raw bits of SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
    /// The DNS names of its subject alternative names, lower-cased.
    pub dns_names: Vec<String>,
}

/// Parses a certificate (DER).
pub fn cert_info(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError(e.to_string()))?;
    Ok(CertInfo {
        node_id: node_id_of(der),
        serial: hex::encode(x509.raw_serial()),
        not_after_unix: x509.validity().not_after.timestamp(),
        public_key: x509.public_key().subject_public_key.data.to_vec(),
        dns_names: match x509.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
    })
}

/// Whether `cert` (DER) carries a valid signature by `issuer` (DER).
pub fn signed_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(issuer),
    ) else {
        return false;
    };
    c.issuer() == i.subject() && c.verify_signature(Some(i.public_key())).is_ok()
}

/// A CRL whose signature has been checked against the farm CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// The CRL number (0 when it carries none).
    pub number: u64,
    /// Serial numbers of the revoked certificates, lower-case hex.
    pub revoked_serials: Vec<String>,
    /// When the CA promises the next one, seconds since the UNIX epoch.
    pub next_update_unix: Option<i64>,
}

impl VerifiedCrl {
    /// Whether the CA's next CRL was due before `now_unix`.
    pub fn stale(&self, now_unix: i64) -> bool {
        self.next_update_unix.is_some_and(|t| t < now_unix)
    }
}

/// Checks a CRL (PEM) before anything uses it: it must be issued and
/// signed by one of the CAs of `ca_pem`.
pub fn verify_crl(crl_pem: &str, ca_pem: &str) -> Result<VerifiedCrl, CertError> {
    let block = pem::parse(crl_pem).map_err(|e| CertError(format!("CRL PEM: {e}")))?;
    if block.tag() != "X509 CRL" {
        return Err(CertError(format!(
            "a {} block, not an X509 CRL",
            block.tag()
        )));
    }
    let (_, crl) = x509_parser::parse_x509_crl(block.contents())
        .map_err(|e| CertError(format!("CRL: {e}")))?;
    let cas = pem_certs(ca_pem)?;
    let signed = cas.iter().any(|der| {
        x509_parser::parse_x509_certificate(der).is_ok_and(|(_, ca)| {
            crl.issuer() == ca.subject() && crl.verify_signature(ca.public_key()).is_ok()
        })
    });
    if !signed {
        return Err(CertError("the CRL is not signed by the farm CA".into()));
    }
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    Ok(VerifiedCrl {
        number,
        revoked_serials: crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect(),
        next_update_unix: crl.next_update().map(|t| t.timestamp()),
    })
}
