//! The channel to the enrollment service: TLS whose server certificate
//! must chain to the farm CA the node trusts, before the node holds that CA.
//!
//! Enrollment presents a certificate for [`CONTROL_DNS_NAME`] issued by the
//! farm CA, followed by the CA certificate itself. A node that has the
//! CA's SHA-256 (the `ca-sha256:` line of its bootstrap file, or the
//! `ca.crt` it enrolled with) accepts the connection only when one
//! certificate of that chain has that hash and the server certificate
//! verifies against it: a machine in the middle, or a look-alike service,
//! never sees the bootstrap token. Without a pin the node trusts the first
//! CA it meets (and warns). `http://HOST:PORT` speaks plaintext to a
//! service run with `--plaintext` (a lab).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::client::{EnrollError, TIMEOUT, ca_sha256};
use crate::tls::CONTROL_DNS_NAME;

/// Which enrollment service a node trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The one whose certificate chains to a CA with one of these SHA-256
    /// hashes (DER).
    Pinned(Vec<[u8; 32]>),
    /// Any (trust on first use): only for bootstrap files without a pin.
    FirstUse,
}

impl Trust {
    /// The CAs of a bundle the node holds (its `ca.crt`).
    pub fn of_bundle(ca_pem: &str) -> Result<Trust, EnrollError> {
        let cas = crate::cert::pem_certs(ca_pem)
            .map_err(|e| EnrollError::Local(format!("ca.crt: {e}")))?;
        if cas.is_empty() {
            return Err(EnrollError::Local("ca.crt holds no certificate".into()));
        }
        Ok(Trust::Pinned(cas.iter().map(|c| ca_sha256(c)).collect()))
    }
}

#[derive(Debug)]
struct PinnedCa {
    pins: Option<Vec<[u8; 32]>>,
    algorithms: WebPkiSupportedAlgorithms,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(pins) = &self.pins else {
            return Ok(ServerCertVerified::assertion());
        };
        let ca = intermediates
            .iter()
            .find(|c| pins.contains(&ca_sha256(c)))
            .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| Error::General(e.to_string()))?
        .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn tls_config(trust: Trust) -> Result<rustls::ClientConfig, EnrollError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedCa {
        pins: match trust {
            Trust::Pinned(p) => Some(p),
            Trust::FirstUse => None,
        },
        algorithms: provider.signature_verification_algorithms,
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EnrollError::Local(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A channel to the enrollment service at `endpoint` (`HOST:PORT` over
/// TLS, `http://HOST:PORT` plaintext), trusting it as `trust` says.
pub async fn channel(endpoint: &str, trust: Trust) -> Result<Channel, EnrollError> {
    let bad = |e: String| EnrollError::Local(format!("endpoint '{endpoint}': {e}"));
    let unavailable = |e: &dyn std::fmt::Display| {
        EnrollError::Unavailable(format!("cannot connect to {endpoint}: {e}"))
    };
    if endpoint.starts_with("http://") {
        return Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .connect()
            .await
            .map_err(|e| unavailable(&e));
    }
    let hostport = endpoint.strip_prefix("https://").unwrap_or(endpoint);
    if hostport.contains("://") {
        return Err(bad(
            "use HOST:PORT (TLS) or http://HOST:PORT (plaintext)".into()
        ));
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(trust)?));
    let target = hostport.to_string();
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, target) = (connector.clone(), target.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(CONTROL_DNS_NAME).expect("a valid DNS name");
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect_with_connector(connect)
        .await
        .map_err(|e| match tls_error(&e) {
            Some(t) => EnrollError::BadAnswer(format!(
                "{endpoint} is not the enrollment service of the farm CA this node trusts: {t}"
            )),
            None => unavailable(&e),
        })
}

/// The TLS error under a connection error, if that is what failed.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<Error>());
        if inner.is_some() {
            return inner;
        }
        next = e.source();
    }
    None
}
