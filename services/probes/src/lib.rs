//! `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1, served by every
//! Ringmesh process on its own address and task, so a slow scraper never
//! delays SIP or the gRPC APIs.
//!
//! The crate has no modules: [`serve`] (or [`bind`], to own the server
//! future) with a [`Render`] such as [`registry_render`] is all of it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Produces the Prometheus text exposition of a process's metrics.
pub type Render = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The exposition of everything in `registry`.
pub fn registry_render(registry: Registry) -> Render {
    Arc::new(move || {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
        buf
    })
}

/// Binds `addr` and serves until the process ends; returns the bound
/// address. `/readyz` answers 200 while `ready` is set, 503 otherwise;
/// `/healthz` answers 200 while the process serves at all.
pub async fn serve(
    addr: SocketAddr,
    render: Render,
    ready: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let (local, server) = bind(addr, render, ready).await?;
    tokio::spawn(server);
    Ok(local)
}

/// Binds `addr`; returns the bound address and the server, which serves
/// (each connection on a task it owns) until it is dropped.
pub async fn bind(
    addr: SocketAddr,
    render: Render,
    ready: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let server = async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning on the error.
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (render, ready) = (render.clone(), ready.clone());
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = route(req.uri().path(), &render, &ready);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    Ok((local, server))
}

fn route(path: &str, render: &Render, ready: &AtomicBool) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", render()),
        "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" if ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", b"ready\n".to_vec())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            b"not ready\n".to_vec(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_probes() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("probe_test_total", "a test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(7);
        let ready = Arc::new(AtomicBool::new(false));
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            registry_render(registry),
            ready.clone(),
        )
        .await
        .unwrap();
        assert!(get(addr, "/metrics").await.contains("probe_test_total 7"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
