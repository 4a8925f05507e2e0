//! SIP transports (RFC 3261 §18): UDP sockets and TCP connections.
//!
//! Reader tasks parse what arrives and hand whole messages to the SIP core
//! over one bounded channel. They answer what needs no state themselves:
//! a 400 (or the status the parse error names) for a malformed request,
//! silence for a malformed response, a CRLF pong for an RFC 5626 ping, and
//! 503 with Retry-After for new requests while the node is over capacity.
//! Each TCP connection has a writer task fed by a bounded channel; the core
//! sends UDP itself (`try_send_to` never blocks).
//!
//! ## Overload control
//!
//! A node past its capacity must keep serving what it admits at full speed
//! and turn the rest away cheaply, before latency grows and before the
//! kernel drops datagrams (a drop is retransmitted, so it adds load). The
//! readers decide, per message, with three signals ([`Overload`]):
//!
//! - how long requests have already waited (`overload-queue-delay-ms`):
//!   for UDP, the age of each datagram since the kernel queued it (its
//!   `SO_TIMESTAMPNS` receive timestamp; smoothed over the last hundred or
//!   so, so that a pause of a few tens of milliseconds sheds nothing), which
//!   is where a backlog builds first; plus, on every transport, the
//!   smoothed time messages waited
//!   between a reader and the core, measured by the core as it takes them
//!   (applied only while a few messages are queued, so a stale estimate
//!   cannot shed an idle node);
//! - the depth of the queue to the core (`overload-queue-depth`);
//! - the transactions the core holds (`overload-max-transactions`), which
//!   bounds its memory;
//! - the requests waiting for the location service or the subscriber
//!   directory (`overload-max-pending`): in a farm the ring is a queue of
//!   its own, invisible in the core's, which would otherwise fill until
//!   operations time out (late 503s, retransmissions, collapse).
//!
//! While the datagrams read are older than the delay limit, new requests
//! are shed, so admitted requests never wait much longer than the limit,
//! the backlog cannot grow without bound, and under a steady overload the
//! node settles into serving its capacity and answering the excess.
//! Readers take at most [`READ_BATCH`] datagrams per turn and the core
//! yields after as many messages, so neither starves the other.
//!
//! Only new work is shed: out-of-dialog requests other than ACK and CANCEL.
//! Responses, ACKs, CANCELs and in-dialog requests (a To tag) always go
//! through, so calls in progress finish and no transaction is left
//! half-done. A shed request gets a stateless 503 with `Retry-After`
//! (`overload-retry-after`), which ends the client's transaction (no
//! retransmissions) and asks it to back off; it costs the reader a parse and
//! one send, a fraction of what the core would spend on it.

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

use crate::config::{OverloadConfig, Transport};
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
    pub overload: Overload,
}

/// The overload signals the SIP core publishes and the readers read, and
/// the limits they are held to (see the [module docs](self)).
#[derive(Debug)]
pub struct Overload {
    pub limits: OverloadConfig,
    /// Smoothed queueing delay, microseconds (written by the core).
    pub delay_us: AtomicU64,
    /// Transactions the core holds, Timer J lingerers not counted.
    pub transactions: AtomicUsize,
    /// Requests waiting for the location service or the directory.
    pub pending: AtomicUsize,
    /// The `Retry-After` value, pre-formatted.
    retry_after: Box<[u8]>,
}

/// Below this many queued messages the core's delay estimate is not
/// applied: the queue is nearly empty, whatever an older estimate says.
const DELAY_MIN_DEPTH: usize = 16;

/// Datagrams a UDP reader takes per turn before it lets other tasks run.
pub const READ_BATCH: usize = 256;

impl Overload {
    pub fn new(limits: OverloadConfig) -> Overload {
        Overload {
            limits,
            delay_us: AtomicU64::new(0),
            transactions: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            retry_after: limits.retry_after.to_string().into_bytes().into(),
        }
    }

    /// Whether a new request arriving with `depth` messages queued, which
    /// waited `waited` before a reader took it (the kernel's queue; zero
    /// when unknown), must be shed, and why (an index into
    /// `metrics::SHED_REASONS`).
    pub fn shed_reason(&self, depth: usize, waited: Duration) -> Option<usize> {
        if depth >= self.limits.queue_depth {
            return Some(0);
        }
        let limit = self.limits.queue_delay;
        if waited > limit
            || depth >= DELAY_MIN_DEPTH
                && self.delay_us.load(Ordering::Relaxed) > limit.as_micros() as u64
        {
            return Some(1);
        }
        if self.transactions.load(Ordering::Relaxed) >= self.limits.max_transactions {
            return Some(2);
        }
        if self.pending.load(Ordering::Relaxed) >= self.limits.max_pending {
            return Some(3);
        }
        None
    }

    /// Whether any signal is over its limit now (the `ringmesh_overload_active` gauge).
    pub fn is_active(&self, depth: usize) -> bool {
        self.shed_reason(depth.max(DELAY_MIN_DEPTH), Duration::ZERO)
            .is_some()
    }
}

/// Work the node may turn away: a request that starts something new.
/// Responses, ACK, CANCEL and in-dialog requests finish what is admitted.
pub fn is_new_work(msg: &Message) -> bool {
    msg.is_request()
        && !matches!(msg.method(), Method::Ack | Method::Cancel)
        && msg.to_tag().is_none()
}

/// The stateless 503 of overload control.
pub fn overload_response(msg: &Message, retry_after: &[u8]) -> Bytes {
    let mut w = msg.response_writer(503, Some(b"rm-shed"));
    w.header(HeaderName::RetryAfter, retry_after);
    w.finish(b"")
}

impl Shared {
    fn queue_len(&self) -> usize {
        self.inbound.max_capacity() - self.inbound.capacity()
    }

    /// Delivers a parsed message to the core, or sheds it (new work only)
    /// with a 503 when the node is over capacity. What is not shed waits
    /// for room when the queue is full: dropping a response or an ACK only
    /// causes retransmissions.
    async fn deliver(
        &self,
        msg: Message,
        flow: FlowRef,
        transport: Transport,
        waited: Duration,
        reply: impl FnOnce(Bytes),
    ) {
        let depth = self.queue_len();
        if is_new_work(&msg)
            && let Some(reason) = self.overload.shed_reason(depth, waited)
        {
            self.metrics.hot.shed(reason, transport.as_str());
            reply(overload_response(&msg, &self.overload.retry_after));
            return;
        }
        let ev = Inbound::Sip {
            msg,
            flow,
            transport,
            at: Instant::now(),
        };
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.inbound.try_send(ev) {
            let _ = self.inbound.send(ev).await;
        }
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

/// One datagram: its length, source, and how long it waited in the
/// kernel's receive queue (zero without a timestamp).
fn recv_timestamped(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Duration)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd as _;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let received = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => Some(Duration::from(ts)),
            _ => None,
        })
    });
    let waited = received
        .and_then(|t| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .checked_sub(t)
        })
        .unwrap_or_default();
    let peer = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::V4((*v4).into()))
            .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
    });
    let peer = peer.ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, peer, waited))
}

/// Reads datagrams until the socket fails: up to [`READ_BATCH`] per turn,
/// each with its kernel receive timestamp (overload control).
pub async fn udp_reader(index: u16, sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    if let Err(e) =
        nix::sys::socket::setsockopt(&*sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
    {
        tracing::warn!(error = %e, "no receive timestamps: overload control sees only the core's queue");
    }
    let mut buf = vec![0u8; 65_536];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut batch = 0;
    // How long datagrams waited in the kernel's queue, smoothed over about
    // 64 of them, in microseconds.
    let mut waited_us = 0.0f64;
    loop {
        let got = sock.try_io(tokio::io::Interest::READABLE, || {
            recv_timestamped(&sock, &mut buf, &mut cmsg)
        });
        let (n, peer, waited) = match got {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                batch = 0;
                if let Err(e) = sock.readable().await {
                    tracing::error!(error = %e, "UDP socket failed");
                    return;
                }
                continue;
            }
            // ICMP errors surface here on some systems; they concern an
            // earlier send, not this socket.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "UDP socket failed");
                return;
            }
        };
        waited_us += (waited.as_micros() as f64 - waited_us) / 64.0;
        let waited = Duration::from_micros(waited_us as u64);
        batch += 1;
        if batch >= READ_BATCH {
            batch = 0;
            tokio::task::yield_now().await;
        }
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
            Ok(msg) => {
                shared
                    .deliver(msg, flow, Transport::Udp, waited, reply)
                    .await
            }
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
                            shared
                                .deliver(msg, flow, Transport::Tcp, Duration::ZERO, reply)
                                .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OverloadConfig {
        OverloadConfig {
            queue_depth: 100,
            queue_delay: Duration::from_millis(20),
            max_transactions: 1000,
            max_pending: 50,
            retry_after: 7,
        }
    }

    fn parse(text: &str) -> Message {
        Message::parse(Bytes::from(text.replace('\n', "\r\n"))).unwrap()
    }

    const REGISTER: &str = "REGISTER sip:ringmesh.test SIP/2.0\n\
Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1\n\
From: <sip:a@ringmesh.test>;tag=f\n\
To: <sip:a@ringmesh.test>\n\
Call-ID: c1\n\
CSeq: 1 REGISTER\n\
Content-Length: 0\n\n";

    #[test]
    fn each_signal_sheds_at_its_limit() {
        let o = Overload::new(limits());
        let none = Duration::ZERO;
        assert_eq!(o.shed_reason(0, none), None);
        assert_eq!(o.shed_reason(99, none), None);
        assert_eq!(o.shed_reason(100, none), Some(0), "queue depth");
        assert_eq!(
            o.shed_reason(0, Duration::from_millis(21)),
            Some(1),
            "waited too long in the kernel's queue"
        );
        assert_eq!(o.shed_reason(0, Duration::from_millis(19)), None);
        o.delay_us.store(25_000, Ordering::Relaxed);
        assert_eq!(o.shed_reason(50, none), Some(1), "the core's queue delay");
        assert_eq!(
            o.shed_reason(DELAY_MIN_DEPTH - 1, none),
            None,
            "a stale delay estimate does not shed a near-empty queue"
        );
        o.delay_us.store(19_000, Ordering::Relaxed);
        assert_eq!(o.shed_reason(50, none), None);
        o.transactions.store(1000, Ordering::Relaxed);
        assert_eq!(o.shed_reason(0, none), Some(2), "transactions");
        assert!(o.is_active(0));
        o.transactions.store(10, Ordering::Relaxed);
        assert!(!o.is_active(0));
        o.pending.store(50, Ordering::Relaxed);
        assert_eq!(o.shed_reason(0, none), Some(3), "waiting for the ring");
        o.pending.store(49, Ordering::Relaxed);
        assert!(!o.is_active(0));
    }

    #[test]
    fn only_new_work_is_shed() {
        assert!(is_new_work(&parse(REGISTER)));
        let invite = REGISTER
            .replace("REGISTER sip:ringmesh.test", "INVITE sip:b@ringmesh.test")
            .replace("1 REGISTER", "1 INVITE");
        assert!(is_new_work(&parse(&invite)));
        let bye = invite
            .replace("INVITE sip:b", "BYE sip:b")
            .replace("1 INVITE", "2 BYE")
            .replace(
                "To: <sip:a@ringmesh.test>",
                "To: <sip:a@ringmesh.test>;tag=t",
            );
        assert!(!is_new_work(&parse(&bye)), "in-dialog");
        let ack = invite
            .replace("INVITE sip:b", "ACK sip:b")
            .replace("1 INVITE", "1 ACK");
        assert!(!is_new_work(&parse(&ack)));
        let cancel = invite
            .replace("INVITE sip:b", "CANCEL sip:b")
            .replace("1 INVITE", "1 CANCEL");
        assert!(!is_new_work(&parse(&cancel)));
        let resp = "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1\n\
From: <sip:a@ringmesh.test>;tag=f\nTo: <sip:a@ringmesh.test>;tag=t\nCall-ID: c1\n\
CSeq: 1 INVITE\nContent-Length: 0\n\n";
        assert!(!is_new_work(&parse(resp)));
    }

    #[test]
    fn the_503_asks_to_retry_later() {
        let o = Overload::new(limits());
        let r = Message::parse(overload_response(&parse(REGISTER), &o.retry_after)).unwrap();
        assert_eq!(r.status(), Some(503));
        assert_eq!(r.header(HeaderName::RetryAfter), Some(&b"7"[..]));
        assert!(r.to_tag().is_some());
        assert_eq!(r.call_id(), b"c1");
    }
}
