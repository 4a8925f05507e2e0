//! SIP transports (RFC 3261 §18): UDP sockets and TCP connections.
//!
//! Reader tasks parse what arrives and hand whole messages to the SIP core
//! over one bounded channel. They answer what needs no state themselves:
//! a 400 (or the status the parse error names) for a malformed request,
//! silence for a malformed response, a CRLF pong for an RFC 5626 ping, and
//! 503 with Retry-After when the core's queue is full (load shedding before
//! the kernel starts dropping). Each TCP connection has a writer task fed
//! by a bounded channel; the core sends UDP itself (`try_send_to` never
//! blocks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ringmesh_sip::framing::{self, Frame};
use ringmesh_sip::{HeaderName, Limits, Message, Method, ParseError, salvage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Transport;
use crate::location::FlowRef;
use crate::metrics::Metrics;

/// What the transports hand the SIP core.
#[derive(Debug)]
pub enum Inbound {
    Sip {
        msg: Message,
        flow: FlowRef,
        transport: Transport,
        at: Instant,
    },
    ConnOpened {
        id: u64,
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
    ConnClosed {
        id: u64,
    },
    /// A SIP message from another supernode, over its overlay link.
    PeerSip {
        msg: Message,
        peer: [u8; 16],
    },
}

/// State the reader tasks share.
#[derive(Debug)]
pub struct Shared {
    pub inbound: mpsc::Sender<Inbound>,
    pub metrics: Metrics,
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub message_timeout: Duration,
    pub max_connections: usize,
    pub connections: AtomicUsize,
    pub next_conn: AtomicU64,
    /// Seconds a shed client is asked to wait.
    pub retry_after: u32,
}

impl Shared {
    fn queue_len(&self) -> usize {
        self.inbound.max_capacity() - self.inbound.capacity()
    }

    /// Delivers a parsed message to the core. New requests are shed with a
    /// 503 when the queue is full; responses and ACKs wait for room, since
    /// dropping them only causes retransmissions.
    async fn deliver(
        &self,
        msg: Message,
        flow: FlowRef,
        transport: Transport,
        reply: impl FnOnce(Bytes),
    ) {
        let shed = msg.is_request() && *msg.method() != Method::Ack;
        let ev = Inbound::Sip {
            msg,
            flow,
            transport,
            at: Instant::now(),
        };
        let ev = if shed {
            match self.inbound.try_send(ev) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(Inbound::Sip { msg, .. })) => {
                    self.metrics
                        .overload_rejections
                        .with_label_values(&[transport.as_str()])
                        .inc();
                    let mut w = msg.response_writer(503, Some(b"rm-shed"));
                    w.header_fmt(HeaderName::RetryAfter, format_args!("{}", self.retry_after));
                    reply(w.finish(b""));
                    return;
                }
                Err(
                    mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev),
                ) => ev,
            }
        } else {
            ev
        };
        let _ = self.inbound.send(ev).await;
        self.metrics.inbound_queue.set(self.queue_len() as i64);
    }

    fn parse_failed(&self, raw: &[u8], err: &ParseError, transport: Transport) -> Option<Bytes> {
        let resp = salvage::error_response(raw, err);
        let kind = if resp.is_some() {
            "request"
        } else {
            "response"
        };
        self.metrics
            .parse_errors
            .with_label_values(&[kind, transport.as_str()])
            .inc();
        tracing::debug!(%err, transport = transport.as_str(), "malformed SIP message");
        resp
    }
}

/// Binds a UDP socket with room for bursts.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Reads datagrams until the socket fails.
pub async fn udp_reader(index: u16, sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors surface here on some systems; they concern an
            // earlier send, not this socket.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                tracing::error!(error = %e, "UDP socket failed");
                return;
            }
        };
        let data = &buf[..n];
        // Keep-alives (CRLF, RFC 5626 §4.4.1) and STUN need no answer here.
        if data.iter().all(|&c| c == b'\r' || c == b'\n') || data.first().is_some_and(|&c| c < 0x20)
        {
            continue;
        }
        let flow = FlowRef::Udp {
            socket: index,
            peer,
        };
        let reply = |b: Bytes| {
            let _ = sock.try_send_to(&b, peer);
        };
        match Message::parse_with(Bytes::copy_from_slice(data), &shared.limits) {
            Ok(msg) => shared.deliver(msg, flow, Transport::Udp, reply).await,
            Err(e) => {
                if let Some(resp) = shared.parse_failed(data, &e, Transport::Udp) {
                    reply(resp);
                }
            }
        }
    }
}

/// Binds a TCP listener.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Accepts connections, bounded by `max_connections`.
pub async fn tcp_acceptor(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.connections.load(Ordering::Relaxed) >= shared.max_connections {
            tracing::warn!(%peer, "connection limit reached; refusing");
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(256);
        if shared
            .inbound
            .send(Inbound::ConnOpened {
                id,
                peer,
                tx: tx.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::spawn(run_connection(id, stream, peer, tx, rx, shared.clone()));
    }
}

/// Opens an outbound connection for the core, which already holds `tx`.
pub fn connect(
    id: u64,
    peer: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(peer)).await {
            Ok(Ok(stream)) => run_connection(id, stream, peer, tx, rx, shared).await,
            _ => {
                tracing::debug!(%peer, "outbound connection failed");
                let _ = shared.inbound.send(Inbound::ConnClosed { id }).await;
            }
        }
    });
}

async fn run_connection(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    shared.connections.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections.inc();
    let (r, w) = stream.into_split();
    let mut writer = tokio::spawn(write_loop(w, rx));
    read_loop(id, r, peer, tx, &shared).await;
    // Let the core drop its sender; the writer then flushes what is queued
    // (answers to the last requests, a 400 before closing) and ends.
    let _ = shared.inbound.send(Inbound::ConnClosed { id }).await;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.connections.dec();
}

async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(32);
    while rx.recv_many(&mut batch, 32).await > 0 {
        for b in batch.drain(..) {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop(
    id: u64,
    mut r: OwnedReadHalf,
    peer: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    shared: &Shared,
) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut partial_since: Option<Instant> = None;
    let flow = FlowRef::Conn { id, peer };
    loop {
        // Take every complete frame before reading more.
        loop {
            match framing::next_frame(&buf, &shared.limits) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Ping(n)) => {
                    buf.advance(n);
                    let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                }
                Ok(Frame::Pong(n)) => buf.advance(n),
                Ok(Frame::Message(n)) => {
                    let raw = buf.split_to(n).freeze();
                    match Message::parse_with(raw.clone(), &shared.limits) {
                        Ok(msg) => {
                            let reply = |b: Bytes| {
                                let _ = tx.try_send(b);
                            };
                            shared.deliver(msg, flow, Transport::Tcp, reply).await;
                        }
                        Err(e) => match shared.parse_failed(&raw, &e, Transport::Tcp) {
                            Some(resp) => {
                                let _ = tx.try_send(resp);
                            }
                            // Not SIP we can answer: the stream cannot be
                            // trusted to resynchronise.
                            None if !raw.starts_with(b"SIP/") => return,
                            None => {}
                        },
                    }
                }
                Err(e) => {
                    shared
                        .metrics
                        .parse_errors
                        .with_label_values(&["stream", "tcp"])
                        .inc();
                    if let Some(resp) = salvage::error_response(&buf, &e) {
                        let _ = tx.try_send(resp);
                    }
                    tracing::debug!(%peer, err = %e, "closing stream after framing error");
                    return;
                }
            }
        }
        let deadline = if buf.is_empty() {
            partial_since = None;
            Instant::now() + shared.idle_timeout
        } else {
            *partial_since.get_or_insert_with(Instant::now) + shared.message_timeout
        };
        match tokio::time::timeout_at(deadline, r.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!(%peer, partial = !buf.is_empty(), "closing idle or stalled connection");
                return;
            }
        }
    }
}
