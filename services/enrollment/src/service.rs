//! The Enrollment gRPC service.

use std::sync::Arc;
use std::time::Instant;

use ringmesh_proto::enrollment as pb;
use ringmesh_proto::enrollment::enrollment_server::{Enrollment, EnrollmentServer};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::authority::Authority;
use crate::bootstrap::BootstrapTokens;
use crate::ca;
use crate::kv::Kv;
use crate::metrics::Metrics;
use crate::status::invalid;

/// Largest CSR or certificate accepted, bytes.
const MAX_PEM: usize = 16 * 1024;

/// A set of secrets compared in constant time: only their SHA-256 is kept,
/// and a check looks at every one, so timing tells nothing about which
/// bytes matched.
#[derive(Clone, Default)]
pub struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// From the configured secrets (empty ones are dropped).
    pub fn new<S: AsRef<str>>(tokens: &[S]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .filter(|t| !t.as_ref().is_empty())
                .map(|t| Sha256::digest(t.as_ref().as_bytes()).into())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `token` is one of them.
    pub fn check(&self, token: &str) -> bool {
        self.position(token).is_some()
    }

    /// Which of them `token` is (every one is compared in full).
    pub fn position(&self, token: &str) -> Option<usize> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (i, t) in self.0.iter().enumerate() {
            let diff = t
                .iter()
                .zip(h.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(i);
            }
        }
        found
    }
}

/// The Enrollment service over an [`Authority`].
#[derive(Debug)]
pub struct EnrollmentService<K> {
    authority: Arc<Authority<K>>,
    bootstrap: BootstrapTokens,
    admin: Tokens,
    metrics: Option<Metrics>,
}

impl<K> Clone for EnrollmentService<K> {
    fn clone(&self) -> Self {
        EnrollmentService {
            authority: self.authority.clone(),
            bootstrap: self.bootstrap.clone(),
            admin: self.admin.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Checks a node name: 1 to 64 letters, digits, '-', '_' or '.'.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl<K: Kv> EnrollmentService<K> {
    /// A service accepting `bootstrap` tokens for Enroll; Revoke and
    /// ListCertificates take an admin certificate or one of the `admin`
    /// tokens (none: the certificate only).
    pub fn new(
        authority: Arc<Authority<K>>,
        bootstrap: BootstrapTokens,
        admin: Tokens,
    ) -> EnrollmentService<K> {
        EnrollmentService {
            authority,
            bootstrap,
            admin,
            metrics: None,
        }
    }

    /// Records RPC counts and latencies.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn done<T>(
        &self,
        rpc: &str,
        started: Instant,
        r: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        if let Some(m) = &self.metrics {
            m.observe(
                rpc,
                started,
                r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
            );
        }
        if let Err(e) = &r {
            tracing::info!(rpc, code = ?e.code(), message = e.message(), "enrollment request refused");
        }
        r.map(Response::new)
    }

    /// The admin role: a client certificate from the farm CA carrying it,
    /// or an admin token.
    fn authorize_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        use ringmesh_enrollment_client::tls::{Role, caller};
        match caller(req, &Default::default()) {
            Ok(Role::Admin) => return Ok(()),
            Ok(role) if !req.metadata().contains_key("authorization") => {
                return Err(Status::permission_denied(format!(
                    "admin RPC: a {role} certificate does not carry the admin role"
                )));
            }
            _ => {}
        }
        if self.admin.is_empty() {
            return Err(Status::permission_denied(
                "admin RPC: present an admin certificate from the farm CA (this enrollment \
                 service has no admin token)",
            ));
        }
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match header.and_then(|h| h.strip_prefix("Bearer ")) {
            None => Err(Status::unauthenticated(
                "admin RPC: present an admin certificate, or send `authorization: Bearer <admin token>`",
            )),
            Some(t) if self.admin.check(t.trim()) => Ok(()),
            Some(_) => Err(Status::permission_denied("admin RPC: bad admin token")),
        }
    }

    async fn response(&self, issued: ca::Issued) -> Result<pb::EnrollResponse, Status> {
        let (crl_pem, _, _) = self.authority.crl().await?;
        Ok(pb::EnrollResponse {
            certificate_pem: issued.cert_pem,
            ca_bundle_pem: self.authority.ca_pem().to_string(),
            node_id: hex::encode(issued.node_id),
            farm_secret: self.authority.farm_secret().to_vec(),
            serial: issued.serial,
            not_after_unix: issued.not_after_unix,
            crl_pem,
        })
    }

    async fn enroll(&self, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, Status> {
        // The token first: nothing else is looked at without it.
        if req.bootstrap_token.is_empty() {
            return Err(Status::permission_denied("bootstrap_token: missing"));
        }
        let Some(token) = self.bootstrap.find(&req.bootstrap_token) else {
            return Err(Status::permission_denied(
                "bootstrap_token: not a valid bootstrap token",
            ));
        };
        if !valid_node_name(&req.node_name) {
            return Err(invalid(
                "node_name",
                "must be 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if req.csr_pem.is_empty() || req.csr_pem.len() > MAX_PEM {
            return Err(invalid(
                "csr_pem",
                format!("must be a PEM CSR of at most {MAX_PEM} bytes"),
            ));
        }
        let issued = self
            .authority
            .enroll(&req.node_name, &req.csr_pem, token)
            .await?;
        self.response(issued).await
    }

    async fn renew(&self, req: pb::RenewRequest) -> Result<pb::EnrollResponse, Status> {
        if req.certificate_pem.is_empty() || req.certificate_pem.len() > MAX_PEM {
            return Err(invalid(
                "certificate_pem",
                "must be the node's current certificate, PEM",
            ));
        }
        if req.csr_pem.is_empty() || req.csr_pem.len() > MAX_PEM {
            return Err(invalid(
                "csr_pem",
                format!("must be a PEM CSR of at most {MAX_PEM} bytes"),
            ));
        }
        let issued = self
            .authority
            .renew(&req.certificate_pem, &req.csr_pem)
            .await?;
        self.response(issued).await
    }
}

#[tonic::async_trait]
impl<K: Kv> Enrollment for EnrollmentService<K> {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let t = Instant::now();
        let r = EnrollmentService::enroll(self, req.into_inner()).await;
        self.done("Enroll", t, r)
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let t = Instant::now();
        let r = EnrollmentService::renew(self, req.into_inner()).await;
        self.done("Renew", t, r)
    }

    async fn get_ca_bundle(
        &self,
        _req: Request<pb::GetCaBundleRequest>,
    ) -> Result<Response<pb::GetCaBundleResponse>, Status> {
        let t = Instant::now();
        let r = Ok(pb::GetCaBundleResponse {
            ca_bundle_pem: self.authority.ca_pem().to_string(),
        });
        self.done("GetCaBundle", t, r)
    }

    async fn get_revocations(
        &self,
        _req: Request<pb::GetRevocationsRequest>,
    ) -> Result<Response<pb::GetRevocationsResponse>, Status> {
        let t = Instant::now();
        let r = self.authority.crl().await.map_err(Status::from).map(
            |(crl_pem, revoked_node_ids, crl_number)| pb::GetRevocationsResponse {
                crl_pem,
                revoked_node_ids,
                crl_number,
            },
        );
        self.done("GetRevocations", t, r)
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let t = Instant::now();
        let r = async {
            self.authorize_admin(&req)?;
            let req = req.into_inner();
            let id = req.node_id.to_ascii_lowercase();
            if ca::parse_node_id(&id).is_none() {
                return Err(invalid(
                    "node_id",
                    format!("'{}' is not 32 hex digits", req.node_id),
                ));
            }
            if pb::RevocationReason::try_from(req.reason).is_err() {
                return Err(invalid(
                    "reason",
                    format!("{} is not a known reason", req.reason),
                ));
            }
            if req.comment.len() > 256 {
                return Err(invalid("comment", "is longer than 256 bytes"));
            }
            let revoked_serials = self.authority.revoke(&id, req.reason, &req.comment).await?;
            let (_, _, crl_number) = self.authority.crl().await?;
            Ok(pb::RevokeResponse {
                revoked_serials,
                crl_number,
            })
        }
        .await;
        self.done("Revoke", t, r)
    }

    async fn list_certificates(
        &self,
        req: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        let t = Instant::now();
        let r = async {
            self.authorize_admin(&req)?;
            let certificates = self
                .authority
                .records()
                .await?
                .into_iter()
                .map(|r| pb::IssuedCertificate {
                    serial: r.serial,
                    node_id: r.node_id,
                    node_name: r.node_name,
                    issued_unix: r.issued_unix,
                    not_after_unix: r.not_after_unix,
                    revoked: r.revoked,
                    revoked_unix: r.revoked_unix,
                    reason: r.reason,
                    comment: r.comment,
                })
                .collect();
            Ok(pb::ListCertificatesResponse { certificates })
        }
        .await;
        self.done("ListCertificates", t, r)
    }
}

/// The TLS enrollment serves with: a certificate for `CONTROL_DNS_NAME`
/// that the authority issues itself at start-up, sent with the CA
/// certificate (a node pins the CA by its hash before it holds it); client
/// certificates from the farm CA are asked for but optional (nodes
/// enrolling have none; an admin's carries its role).
pub fn server_tls<K: Kv>(
    authority: &Authority<K>,
) -> Result<tonic::transport::ServerTlsConfig, ca::CaError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (cert, key) = authority
        .ca()
        .issue_control("enrollment", None, SERVER_CERT_DAYS)?;
    let chain = format!("{cert}{}", authority.ca_pem());
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(authority.ca_pem()))
        .client_auth_optional(true))
}

/// Validity of the certificate enrollment issues itself at each start.
const SERVER_CERT_DAYS: i64 = 397;

/// Serves the Enrollment API on `listener` until `shutdown` completes;
/// with `tls` (see [`server_tls`]), over TLS.
pub async fn serve<K: Kv>(
    listener: TcpListener,
    service: EnrollmentService<K>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    use futures::StreamExt as _;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(EnrollmentServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = Tokens::new(&["alpha", "", "beta"]);
        assert!(t.check("alpha") && t.check("beta"));
        assert!(!t.check("") && !t.check("alph") && !t.check("alphaa"));
        assert!(Tokens::new::<&str>(&[]).is_empty());
        assert_eq!(format!("{t:?}"), "Tokens(2 configured)", "never printed");
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("sn-0.eu_1"));
        assert!(
            !valid_node_name("") && !valid_node_name("a b") && !valid_node_name(&"x".repeat(65))
        );
    }
}
