//! Mutual TLS for the control plane's gRPC APIs, and the roles a client
//! certificate carries.
//!
//! Every control-plane server presents a certificate from the farm CA with
//! the DNS name [`CONTROL_DNS_NAME`] (clients verify that name whatever
//! address they dial) and asks each client for a certificate from the same
//! CA. The client's role comes from that certificate:
//!
//! | role | certificate | may |
//! |---|---|---|
//! | `supernode` | a node certificate (its Node-ID URI SAN) | read subscribers with their HA1, read trusted elements |
//! | `operator` | URI SAN `urn:ringmesh:role:operator` | write subscribers and trusted elements; reads never carry HA1 |
//! | `admin` | URI SAN `urn:ringmesh:role:admin` | what operators may, plus revoke, drain and bans |
//!
//! A certificate that carries no role is refused; so is one from another
//! CA (the handshake fails).

use std::path::{Path, PathBuf};

use tonic::Status;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::cert::{NODE_URI_PREFIX, parse_node_id};
use crate::revocations::Revocations;

/// The DNS name every control-plane server certificate carries.
pub const CONTROL_DNS_NAME: &str = "control.ringmesh.internal";
/// The prefix of a role's URI SAN.
pub const ROLE_URI_PREFIX: &str = "urn:ringmesh:role:";

/// Who a client is, by its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Supernode,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Supernode, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Supernode => "supernode",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The URI SAN of an operator or admin certificate.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    /// Whether this role may change subscribers and trusted elements.
    pub fn writes(self) -> bool {
        matches!(self, Role::Operator | Role::Admin)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role of a certificate (DER): a node certificate is a supernode's;
/// otherwise the role of its role URI SAN, if any.
pub fn role_of(der: &[u8]) -> Option<Role> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            if let Some(id) = u.strip_prefix(NODE_URI_PREFIX) {
                parse_node_id(id).map(|_| Role::Supernode)
            } else {
                Role::parse(u.strip_prefix(ROLE_URI_PREFIX)?)
            }
        }
        _ => None,
    })
}

/// The role of the client that sent `req`, from the certificate it
/// presented (the server's TLS already checked it against the farm CA):
/// `Unauthenticated` without one, `PermissionDenied` when it has no role
/// or is in `revoked`.
pub fn caller<T>(req: &tonic::Request<T>, revoked: &Revocations) -> Result<Role, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate from the farm CA is needed")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("a client certificate from the farm CA is needed")
    })?;
    if revoked.is_revoked(leaf) {
        return Err(Status::permission_denied(
            "the client certificate is revoked by the farm CA",
        ));
    }
    role_of(leaf)
        .ok_or_else(|| Status::permission_denied("the client certificate carries no Ringmesh role"))
}

/// A TLS setup that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The PEM files of one end of a control-plane connection: the farm CA
/// and this end's certificate and private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read(what: &str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path)
        .map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))
}

impl TlsFiles {
    /// The files `ca.crt`, `NAME.crt` and `NAME.key` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn load(&self) -> Result<(Certificate, Identity), TlsError> {
        let ca = read("CA certificate", &self.ca)?;
        let cert = read("certificate", &self.cert)?;
        let key = read("private key", &self.key)?;
        for (what, text, path) in [
            ("CA certificate", &ca, &self.ca),
            ("certificate", &cert, &self.cert),
        ] {
            if crate::cert::pem_certs(text).map_or(true, |c| c.is_empty()) {
                return Err(TlsError(format!(
                    "the {what} {} holds no PEM certificate",
                    path.display()
                )));
            }
        }
        if !key.contains("PRIVATE KEY") {
            return Err(TlsError(format!(
                "the private key {} holds no PEM private key",
                self.key.display()
            )));
        }
        Ok((Certificate::from_pem(ca), Identity::from_pem(cert, key)))
    }

    /// A client's TLS to the control plane: trusts only the farm CA,
    /// checks the server's name is [`CONTROL_DNS_NAME`], and presents this
    /// certificate.
    pub fn client(&self) -> Result<ClientTlsConfig, TlsError> {
        self.client_for(CONTROL_DNS_NAME)
    }

    /// [`TlsFiles::client`] to a server named `name` (a supernode's admin
    /// API presents its node certificate: `NODE_DNS_NAME`).
    pub fn client_for(&self, name: &str) -> Result<ClientTlsConfig, TlsError> {
        let (ca, identity) = self.load()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(identity)
            .domain_name(name))
    }

    /// A server's TLS: presents this certificate and requires a client
    /// certificate from the farm CA.
    pub fn server(&self) -> Result<ServerTlsConfig, TlsError> {
        let (ca, identity) = self.load()?;
        Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
    }
}
