//! SIP over WebSocket (RFC 7118), in clear (`ws`) or over TLS (`wss`).
//!
//! The HTTP upgrade must ask for the `sip` subprotocol
//! (`Sec-WebSocket-Protocol: sip`, which the answer repeats); where the
//! operator lists the origins allowed (`--ws-origin`), a browser page from
//! any other origin is refused with 403, so a page elsewhere cannot make a
//! visitor's browser talk to the farm. Each WebSocket message carries one
//! SIP message (§5); a double-CRLF message is a keep-alive ping and gets a
//! CRLF pong, like on TCP. Framing, masking and ping frames are
//! tungstenite's; messages are bounded by the SIP message limit.
//!
//! Once upgraded, a WebSocket is a connection like any other: it holds its
//! slot, its source's rate applies, and the idle and first-message
//! timeouts close it. Browser phones (JsSIP among them) register with
//! RFC 5626 outbound but send no keep-alives, and a page cannot send
//! WebSocket pings: the node pings every WebSocket within the Flow-Timer,
//! and each pong keeps the flow alive, so a closed tab is found out
//! within a Flow-Timer and an open one is never dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::transport::{Conn, ConnTimeout, Shared, finish_connection, open_inbound};

/// Who may open a SIP WebSocket.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The `Origin` values allowed (`https://host[:port]`, compared without
    /// case); empty: any origin, and clients that send none.
    pub origins: Vec<String>,
}

impl Policy {
    /// Why an upgrade request is refused, if it is.
    fn refusal(&self, req: &Request) -> Option<(StatusCode, &'static str)> {
        let asks_sip = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("sip"));
        if !asks_sip {
            return Some((
                StatusCode::BAD_REQUEST,
                "the sip WebSocket subprotocol is required (RFC 7118)",
            ));
        }
        if !self.origins.is_empty() {
            let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
            let allowed = origin.is_some_and(|o| {
                self.origins
                    .iter()
                    .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
            });
            if !allowed {
                return Some((StatusCode::FORBIDDEN, "origin not allowed"));
            }
        }
        None
    }
}

/// Upgrades an accepted connection (before `deadline`) and runs SIP over
/// it until it closes.
pub(crate) async fn serve<S>(
    conn: Conn,
    stream: S,
    policy: &Policy,
    deadline: Instant,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = shared.limits.max_message;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if let Some((status, why)) = policy.refusal(req) {
            let mut refusal = ErrorResponse::new(Some(why.to_string()));
            *refusal.status_mut() = status;
            return Err(refusal);
        }
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("sip"));
        Ok(resp)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let ws = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => ws,
        failed => {
            shared
                .metrics
                .hot
                .handshake_failed(conn.transport, "websocket");
            if let Ok(Err(e)) = failed {
                tracing::debug!(peer = %conn.peer, error = %e, "WebSocket upgrade refused");
            }
            return;
        }
    };
    let Some((tx, rx)) = open_inbound(&conn, &shared).await else {
        return;
    };
    let (sink, source) = ws.split();
    let mut writer = shared
        .tasks
        .spawn(write_loop(sink, rx, shared.ws_ping_every));
    let reader = read_loop(&conn, source, tx, deadline, &shared);
    finish_connection(conn.id, reader, &mut writer, &shared).await;
}

async fn write_loop<K>(mut sink: K, mut rx: mpsc::Receiver<Bytes>, ping_every: Duration)
where
    K: futures::Sink<WsMessage> + Unpin,
{
    let mut batch = Vec::with_capacity(32);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, 32) => n,
            _ = ping.tick() => {
                if sink.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if got == 0 {
            break;
        }
        for b in batch.drain(..) {
            if b.is_empty() {
                let _ = sink.close().await;
                return;
            }
            // SIP is text (RFC 7118 §5.1); a message that is not UTF-8
            // goes as binary.
            let m = match Utf8Bytes::try_from(b.clone()) {
                Ok(text) => WsMessage::Text(text),
                Err(_) => WsMessage::Binary(b),
            };
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

async fn read_loop<R, E>(
    conn: &Conn,
    mut source: R,
    tx: mpsc::Sender<Bytes>,
    first_deadline: Instant,
    shared: &Shared,
) where
    R: futures::Stream<Item = Result<WsMessage, E>> + Unpin,
{
    let flow = conn.flow();
    let mut requested = false;
    loop {
        let (deadline, why) = if requested {
            (Instant::now() + shared.idle_timeout, ConnTimeout::Idle)
        } else {
            (first_deadline, ConnTimeout::FirstMessage)
        };
        let data = match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => Bytes::from(t),
            Ok(Some(Ok(WsMessage::Binary(b)))) => b,
            // The answer to our ping: the flow is alive.
            Ok(Some(Ok(WsMessage::Pong(_)))) => {
                shared.keep_alive(flow);
                continue;
            }
            // Pings are answered by tungstenite; nothing else carries SIP.
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return,
            Ok(Some(Ok(_))) => continue,
            Err(_) => {
                shared.metrics.hot.connection_timed_out(why);
                tracing::debug!(peer = %conn.peer, reason = why.as_label(), "closing a WebSocket: timeout");
                return;
            }
        };
        match &data[..] {
            b"\r\n\r\n" => shared.ping(conn, &tx),
            b"\r\n" => {}
            _ => match shared.stream_message(data, conn, &tx).await {
                Some(request) => requested |= request,
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(protocol: Option<&str>, origin: Option<&str>) -> Request {
        let mut b = Request::builder()
            .uri("/")
            .header("host", "sip.example.com");
        if let Some(p) = protocol {
            b = b.header("sec-websocket-protocol", p);
        }
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_sip_subprotocol_is_required_and_origins_are_checked_when_listed() {
        let any = Policy::default();
        assert_eq!(any.refusal(&upgrade(Some("sip"), None)), None);
        assert_eq!(
            any.refusal(&upgrade(Some("chat, SIP"), Some("https://x"))),
            None
        );
        assert_eq!(
            any.refusal(&upgrade(None, None)).map(|r| r.0),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            any.refusal(&upgrade(Some("xmpp"), None)).map(|r| r.0),
            Some(StatusCode::BAD_REQUEST)
        );
        let listed = Policy {
            origins: vec!["https://phone.example.com:8443/".into()],
        };
        assert_eq!(
            listed.refusal(&upgrade(
                Some("sip"),
                Some("https://phone.example.com:8443")
            )),
            None
        );
        for origin in [Some("https://evil.example"), None] {
            assert_eq!(
                listed.refusal(&upgrade(Some("sip"), origin)).map(|r| r.0),
                Some(StatusCode::FORBIDDEN),
                "{origin:?}"
            );
        }
    }
}
