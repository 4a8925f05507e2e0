//! The browser softphone of `ringmesh dev`: its page (services/softphone,
//! built with `npm run build`) served over HTTPS with the nodes' SIP
//! certificate, and `config.json` telling the page the farm's domain and
//! secure WebSocket URLs. A lab convenience: a carrier serves its own page
//! from its own web servers.
//!
//! Files are read at each request, so a rebuilt page is served without a
//! restart; only `/`, `/index.html`, `/softphone.js`, `/config.json` and
//! `/ca.crt` exist.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the page is served from.
#[derive(Debug, Clone)]
pub struct Site {
    /// services/softphone: index.html, and dist/softphone.js once built.
    pub dir: PathBuf,
    /// The farm CA, offered at /ca.crt.
    pub ca: PathBuf,
    /// The body of /config.json.
    pub config: String,
}

impl Site {
    /// Checks that the page is there and built; what to run otherwise.
    pub fn check(&self) -> anyhow::Result<()> {
        for f in ["index.html", "dist/softphone.js"] {
            let p = self.dir.join(f);
            anyhow::ensure!(
                p.exists(),
                "{} is missing: run `npm ci && npm run build` in {} (make dev does)",
                p.display(),
                self.dir.display()
            );
        }
        Ok(())
    }

    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let file = |rel: &str, ctype: &'static str| match std::fs::read(self.dir.join(rel)) {
            Ok(body) => (StatusCode::OK, ctype, body),
            Err(_) => (StatusCode::NOT_FOUND, "text/plain", b"not built\n".to_vec()),
        };
        let (status, ctype, body) = match path {
            "/" | "/index.html" => file("index.html", "text/html; charset=utf-8"),
            "/softphone.js" => file("dist/softphone.js", "text/javascript; charset=utf-8"),
            "/config.json" => (
                StatusCode::OK,
                "application/json",
                self.config.clone().into_bytes(),
            ),
            "/ca.crt" => match std::fs::read(&self.ca) {
                Ok(body) => (StatusCode::OK, "application/x-pem-file", body),
                Err(_) => (StatusCode::NOT_FOUND, "text/plain", b"no CA\n".to_vec()),
            },
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    }
}

/// Serves `site` over HTTPS on `addr` with the certificate in `cert_dir`
/// (tls.crt, tls.key) until the process ends; the bound address.
pub async fn serve(addr: SocketAddr, cert_dir: &Path, site: Site) -> anyhow::Result<SocketAddr> {
    use ringmesh_supernode::sip_tls;
    let certs = sip_tls::Certificates::load(&[cert_dir.to_path_buf()])?;
    let tls = tokio_rustls::TlsAcceptor::from(sip_tls::server_config(&certs, &[], &[b"http/1.1"])?);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve the softphone on {addr}"))?;
    let local = listener.local_addr()?;
    let site = Arc::new(site);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (tls, site) = (tls.clone(), site.clone());
            tokio::spawn(async move {
                let Ok(Ok(stream)) =
                    tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await
                else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = site.answer(req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
