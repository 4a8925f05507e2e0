//! A SIP phone over WebSocket (RFC 7118), in clear or over TLS, as a test
//! drives it: the upgrade with the headers a browser sends (or leaves out),
//! then one SIP message per WebSocket message.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// A byte stream under the WebSocket.
pub trait Io: Read + Write + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Io for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Io for StreamOwned<ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A SIP WebSocket.
pub struct WsPhone {
    ws: WebSocket<Box<dyn Io>>,
    local: SocketAddr,
}

impl std::fmt::Debug for WsPhone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsPhone")
            .field("local", &self.local)
            .finish()
    }
}

/// Why an upgrade failed: the HTTP status the server answered, or what
/// else went wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Status(u16),
    Other(String),
}

impl WsPhone {
    /// Opens `ws://to/` (or `wss://` when `tls` gives the client
    /// configuration and the name to verify), asking for `protocol` (`sip`
    /// for RFC 7118; `None` asks for none) from `origin`.
    pub fn connect(
        to: SocketAddr,
        tls: Option<(Arc<ClientConfig>, &str)>,
        protocol: Option<&str>,
        origin: Option<&str>,
    ) -> Result<WsPhone, Refused> {
        let other = |e: &dyn std::fmt::Display| Refused::Other(e.to_string());
        let tcp = TcpStream::connect(to).map_err(|e| other(&e))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| other(&e))?;
        let local = tcp.local_addr().map_err(|e| other(&e))?;
        let (scheme, io): (&str, Box<dyn Io>) = match tls {
            None => ("ws", Box::new(tcp)),
            Some((config, name)) => {
                let server = ServerName::try_from(name.to_string()).map_err(|e| other(&e))?;
                let conn = ClientConnection::new(config, server).map_err(|e| other(&e))?;
                let mut s = StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).map_err(|e| other(&e))?;
                }
                ("wss", Box::new(s))
            }
        };
        let mut req = format!("{scheme}://{to}/")
            .into_client_request()
            .map_err(|e| other(&e))?;
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tungstenite::client(req, io) {
            Ok((ws, resp)) => {
                let agreed = resp
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok());
                if protocol.is_some() && agreed != Some("sip") {
                    return Err(Refused::Other(format!("subprotocol {agreed:?}")));
                }
                Ok(WsPhone { ws, local })
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                Err(Refused::Status(resp.status().as_u16()))
            }
            Err(e) => Err(other(&e)),
        }
    }

    /// The phone's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one text message.
    pub fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .expect("WebSocket send");
    }

    /// The next text or binary message within `wait`; `None` on timeout
    /// or when the server closed.
    pub fn recv(&mut self, wait: Duration) -> Option<String> {
        self.ws.get_ref().tcp().set_read_timeout(Some(wait)).ok()?;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(t.as_str().to_string()),
                Ok(Message::Binary(b)) => return Some(String::from_utf8_lossy(&b).into_owned()),
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}
