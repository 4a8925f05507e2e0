//! A SIP phone's TLS connection (RFC 3261 §26), as a test drives it: the
//! server certificate verified against a CA file for a name (or an IP
//! address, which sends no SNI), then whole SIP messages each way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A client configuration trusting only the CA certificates in `ca_pem`,
/// offering TLS 1.3 and 1.2.
pub fn client_config(ca_pem: &Path) -> Arc<ClientConfig> {
    client_config_with(ca_pem, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] presenting the client certificate `cert_pem` (its
/// key `key_pem`).
pub fn client_config_as(ca_pem: &Path, cert_pem: &str, key_pem: &str) -> Arc<ClientConfig> {
    let chain = pem::parse_many(cert_pem)
        .expect("certificate PEM")
        .into_iter()
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::try_from(
        pem::parse(key_pem).expect("key PEM").into_contents(),
    )
    .expect("a private key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .expect("TLS versions")
            .with_root_certificates(roots(ca_pem))
            .with_client_auth_cert(chain, key)
            .expect("a usable client certificate"),
    )
}

fn roots(ca_pem: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let pem_text = std::fs::read(ca_pem).expect("the CA file");
    for block in pem::parse_many(pem_text).expect("CA PEM") {
        if block.tag() == "CERTIFICATE" {
            roots
                .add(CertificateDer::from(block.into_contents()))
                .expect("a CA certificate");
        }
    }
    roots
}

/// [`client_config`] offering only `versions`.
pub fn client_config_with(
    ca_pem: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("TLS versions")
            .with_root_certificates(roots(ca_pem))
            .with_no_client_auth(),
    )
}

/// A TLS connection carrying SIP.
pub struct TlsPhone {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for TlsPhone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPhone").finish_non_exhaustive()
    }
}

impl TlsPhone {
    /// Connects to `to` and completes the handshake, verifying the server
    /// for `name` with `config`; the handshake's error otherwise.
    pub fn connect(
        to: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> Result<TlsPhone, String> {
        let tcp = TcpStream::connect(to).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let server = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let conn = ClientConnection::new(config, server).map_err(|e| e.to_string())?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(TlsPhone {
            stream,
            buf: Vec::new(),
        })
    }

    /// The phone's end of the connection (what the farm sees as its
    /// source).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.sock.local_addr().expect("a bound socket")
    }

    /// The TLS version agreed.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    pub fn send(&mut self, msg: &[u8]) {
        self.stream.write_all(msg).expect("TLS write");
        self.stream.flush().expect("TLS flush");
    }

    /// The next whole SIP message (or CRLF pong, as `\r\n`), waiting at
    /// most `wait`; `None` on timeout or when the server closed.
    pub fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let limits = ringmesh_sip::Limits::default();
        loop {
            if self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
                return Some(b"\r\n".to_vec());
            }
            if let Ok(ringmesh_sip::framing::Frame::Message(n)) =
                ringmesh_sip::framing::next_frame(&self.buf, &limits)
            {
                return Some(self.buf.drain(..n).collect());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
                Err(_) => return None,
            }
        }
    }
}
