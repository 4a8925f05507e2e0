//! SIP transports (RFC 3261 §18): UDP sockets, and connections over TCP,
//! TLS (RFC 3261 §26) and WebSocket in clear or over TLS (RFC 7118).
//!
//! Reader tasks parse what arrives and hand whole messages to the SIP core
//! over one bounded channel. They answer what needs no state themselves:
//! a 400 (or the status the parse error names) for a malformed request,
//! silence for a malformed response, a CRLF pong for an RFC 5626 ping, and
//! 503 with Retry-After for new requests while the node is over capacity.
//! Each TCP connection has a writer task fed by a bounded channel; the core
//! sends UDP itself (`try_send_to` never blocks).
//!
//! New requests are shed (503 with Retry-After) by the readers themselves
//! while the node is overloaded: the rules are in [`crate::overload`]. A
//! request about to be refused is read only as far as its 503 needs
//! ([`Message::parse_shallow`]).
//! Readers take at most [`READ_BATCH`] datagrams per turn and the core
//! yields after as many messages, so neither starves the other.
//!
//! Each TCP or TLS connection frames its stream with one incremental
//! [`Framer`], so a peer dripping a message byte by byte costs linear
//! work. A WebSocket carries one SIP message per WebSocket message
//! (RFC 7118 §5), framed by tungstenite.
//!
//! TLS and WebSocket handshakes happen after the connection holds its slot
//! and must finish within the first-message timeout, like a first request.
//!
//! What one source may cost is bounded here too, with the rules of
//! [`crate::admission`]: a message (or a CRLF ping on a stream) from a
//! source over its rate is dropped before it is parsed; every TCP
//! connection, accepted or opened for the core by [`connect`], holds a
//! slot of the node's and its peer address's quota, and a connection
//! refused one is reset at once (or, outbound, never opened). An accepted
//! connection must complete its first request within the first-message
//! timeout; after that the idle timeout (nothing buffered) and the message
//! timeout (a message begun and not finished) apply.

use ringmesh_sip::stun::Datagram;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ringmesh_sip::framing::{Frame, Framer};
use ringmesh_sip::{Limits, Message, Method, ParseError, salvage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use ringmesh_proxy::{FlowRef, Transport};

use crate::admission::{ConnSlot, Connections, Direction, SourceLimiter, Trusted};
use crate::config::Listen;
use crate::metrics::Metrics;
use crate::overload::{Classifier, Overload, ShedReason, Work, overload_response};
use crate::tasks::Tasks;

/// What the transports hand the SIP core.
#[derive(Debug)]
pub enum Inbound {
    Sip {
        msg: Message,
        flow: FlowRef,
        transport: Transport,
        /// When a reader queued it for the core.
        queued: Instant,
        /// How long it had waited in the kernel before (zero when unknown).
        kernel_wait: Duration,
    },
    ConnOpened {
        id: u64,
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
        /// The DNS names of the TLS client certificate the peer presented
        /// (verified against the client CA), if any.
        names: Vec<String>,
    },
    ConnClosed {
        id: u64,
    },
    /// An outbound connection could not be opened (refused, no answer
    /// within 5 s, or a failed TLS handshake): what was to be sent to
    /// `peer` is lost.
    ConnFailed {
        id: u64,
        peer: SocketAddr,
        transport: Transport,
    },
    /// An outbound TLS connection's server proved these DNS names (its
    /// certificate chained to a peer CA and named the domain asked for).
    ConnNamed {
        id: u64,
        names: Vec<String>,
    },
    /// An RFC 5626 keep-alive (CRLF ping, STUN Binding request) came over
    /// a leaf's flow.
    KeepAlive {
        flow: FlowRef,
    },
    /// A SIP message from another supernode, over its overlay link.
    PeerSip {
        msg: Message,
        peer: [u8; 16],
    },
    /// The overlay link to another supernode went down.
    PeerGone {
        peer: [u8; 16],
    },
    /// The admin API or a watcher asks the SIP core something.
    Control(Control),
}

/// What the rest of the supernode asks of the SIP core (which owns the
/// proxy and its state).
#[derive(Debug)]
pub enum Control {
    /// The brute-force bans in force.
    Bans(tokio::sync::oneshot::Sender<Vec<ringmesh_proxy::guard::Ban>>),
    /// Lift a source's bans on every member; answers how many it had here.
    Lift {
        source: ringmesh_proxy::guard::Source,
        done: tokio::sync::oneshot::Sender<usize>,
    },
    /// The trusted elements changed: the configured ones and
    /// provisioning's, the whole table.
    Trusted(ringmesh_proxy::TrustTable),
    /// Provisioning changed a subscriber (barred, deleted, new password).
    Subscriber(ringmesh_proxy::SubscriberChange),
    /// An AOR's record was changed outside the SIP path (a presence rule):
    /// its watchers are told.
    Changed(ringmesh_sip::aor::Aor),
    /// Each PSTN gateway as this node sees it.
    Gateways(tokio::sync::oneshot::Sender<Vec<ringmesh_proxy::gateways::GatewayState>>),
    /// The gateway table changed in the ring: read it now.
    GatewaysChanged,
}

/// State the reader tasks share.
#[derive(Debug)]
pub struct Shared {
    /// The core's queue of new work: requests, and every connection's
    /// events in order with them. Overload control measures and sheds
    /// this queue.
    pub inbound: mpsc::Sender<Inbound>,
    /// The core's queue of work that finishes what it already took on:
    /// responses, ACKs, and what other supernodes send (they took the
    /// request on). The core serves it first, so an admitted call is not
    /// held up behind the new requests that arrived after it.
    pub finishing: mpsc::Sender<Inbound>,
    pub metrics: Metrics,
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub message_timeout: Duration,
    /// How long an accepted connection has to complete its first request.
    pub first_message_timeout: Duration,
    /// How often the node pings a WebSocket (browsers answer pings but
    /// send no RFC 5626 keep-alives of their own): within the Flow-Timer.
    pub ws_ping_every: Duration,
    /// Every TCP connection's slot, in all and per address.
    pub connections: Arc<Connections>,
    pub next_conn: AtomicU64,
    pub overload: Arc<Overload>,
    /// What overload control may shed.
    pub classifier: Classifier,
    /// The per-source rate limit, if any.
    pub rate: Option<SourceLimiter>,
    /// The elements the per-source limits do not apply to; replace the
    /// table through this handle while the node runs.
    pub trusted: Trusted,
    /// Where connection tasks are spawned.
    pub tasks: Tasks,
    /// How TLS to other domains' servers is opened; None: this node
    /// opens none.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

/// Datagrams a UDP reader takes per turn before it lets other tasks run.
pub const READ_BATCH: usize = 256;

/// Which timeout closed a TCP connection
/// (`ringmesh_sip_connection_timeouts_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnTimeout {
    /// No complete request within the first-message timeout of the accept.
    FirstMessage,
    /// A message begun and not finished within the message timeout.
    Message,
    /// Nothing within the idle timeout.
    Idle,
}

impl ConnTimeout {
    pub const ALL: [ConnTimeout; 3] = [
        ConnTimeout::FirstMessage,
        ConnTimeout::Message,
        ConnTimeout::Idle,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            ConnTimeout::FirstMessage => "first_message",
            ConnTimeout::Message => "message",
            ConnTimeout::Idle => "idle",
        }
    }
}

impl Shared {
    fn queue_len(&self) -> usize {
        self.inbound.max_capacity() - self.inbound.capacity()
    }

    /// Whether a new request that waited `waited` in the kernel must be
    /// shed. While the node sheds, this request's own sojourn (its wait,
    /// plus the core's queue if anything waits there) is one more sample
    /// of the delay: the first one under the target ends the shedding (the
    /// backlog has drained), even if the core saw no message since.
    fn shed_reason(&self, depth: usize, waited: Duration, now: Instant) -> Option<ShedReason> {
        self.overload.shed_reason(depth)?;
        let queued_ahead = if depth > 0 {
            self.overload.core_wait()
        } else {
            Duration::ZERO
        };
        self.overload
            .observe_sojourn(waited + queued_ahead, now.into_std());
        self.overload.shed_reason(depth)
    }

    /// While the node sheds, the 503 for a new request, read only as far
    /// as that answer needs ([`Message::parse_shallow`]): a refused
    /// request costs the node as little as possible, so that what it
    /// admits keeps the core. `None` when the node is not shedding, or
    /// `raw` is a response, an ACK or a CANCEL, or is not a new request it
    /// may shed, or does not read: then it is parsed in full (a malformed
    /// one gets its 4xx) and [delivered](Shared::deliver).
    fn shed(&self, raw: &Bytes, waited: Duration, transport: Transport) -> Option<Bytes> {
        let depth = self.queue_len();
        self.overload.shed_reason(depth)?;
        if raw.starts_with(b"SIP/") || raw.starts_with(b"ACK ") || raw.starts_with(b"CANCEL ") {
            return None;
        }
        let msg = Message::parse_shallow(raw.clone(), &self.limits).ok()?;
        let work = self
            .classifier
            .classify(&msg, crate::clock::wall_ms() / 1000);
        if work == Work::Finishing {
            return None;
        }
        let reason = self.shed_reason(depth, waited, Instant::now())?;
        if !work.may_shed(reason) {
            return None;
        }
        self.metrics.hot.shed(reason, transport.into());
        Some(overload_response(&msg, self.overload.retry_after()))
    }

    /// Hands a parsed message the readers did not [shed](Shared::shed) to
    /// the core (responses and ACKs on its [finishing](Shared::finishing)
    /// queue), waiting for room when the queue is full: dropping a
    /// response or an ACK only causes retransmissions.
    async fn deliver(&self, msg: Message, flow: FlowRef, transport: Transport, waited: Duration) {
        let queue = if msg.is_response() || *msg.method() == Method::Ack {
            &self.finishing
        } else {
            &self.inbound
        };
        let ev = Inbound::Sip {
            msg,
            flow,
            transport,
            queued: Instant::now(),
            kernel_wait: waited,
        };
        if let Err(mpsc::error::TrySendError::Full(ev)) = queue.try_send(ev) {
            let _ = queue.send(ev).await;
        }
    }

    /// Whether a message from `peer` must be dropped unread, its source
    /// being over its rate (counted here). Trusted elements never are.
    fn rate_limited(&self, peer: SocketAddr, transport: Transport) -> bool {
        self.rate_limited_unless(peer, transport, false)
    }

    /// [`Shared::rate_limited`] for a connection: `exempt` when its client
    /// certificate names a trusted element.
    fn rate_limited_unless(&self, peer: SocketAddr, transport: Transport, exempt: bool) -> bool {
        let Some(limiter) = &self.rate else {
            return false;
        };
        if exempt || self.trusted.is_trusted(peer) {
            return false;
        }
        match limiter.check(peer.ip(), std::time::Instant::now()) {
            None => false,
            Some(reason) => {
                self.metrics.hot.rate_limited(reason, transport);
                true
            }
        }
    }

    /// A slot for a connection with `peer`, or `None` (the refusal
    /// counted) when the node's or the address's quota is full.
    pub fn reserve_connection(&self, peer: SocketAddr, direction: Direction) -> Option<ConnSlot> {
        match self
            .connections
            .reserve(peer, self.trusted.is_trusted(peer))
        {
            Ok(slot) => Some(slot),
            Err(reason) => {
                self.metrics.hot.connection_refused(direction, reason);
                tracing::debug!(
                    %peer,
                    direction = direction.as_label(),
                    reason = reason.as_label(),
                    "connection refused"
                );
                None
            }
        }
    }

    /// A double-CRLF ping on a connection (RFC 5626 §4.4.1): the CRLF pong,
    /// within the source's rate, and the flow is alive.
    pub(crate) fn ping(&self, conn: &Conn, tx: &mpsc::Sender<Bytes>) {
        if !self.rate_limited_unless(conn.peer, conn.transport, conn.exempt) {
            let _ = tx.try_send(Bytes::from_static(b"\r\n"));
            self.keep_alive(conn.flow());
        }
    }

    /// Tells the core a keep-alive came over `flow` (dropped when its
    /// queue is full: the next one will do).
    pub(crate) fn keep_alive(&self, flow: FlowRef) {
        let _ = self.inbound.try_send(Inbound::KeepAlive { flow });
    }

    /// One whole message from a connection: dropped when its source is
    /// over its rate, answered with the right 4xx when malformed, else
    /// delivered. `Some(true)` for a request, `None` when the connection
    /// must close (bytes that are not SIP: the stream cannot be trusted
    /// to resynchronise).
    pub(crate) async fn stream_message(
        &self,
        raw: Bytes,
        conn: &Conn,
        tx: &mpsc::Sender<Bytes>,
    ) -> Option<bool> {
        let (flow, transport) = (conn.flow(), conn.transport);
        if self.rate_limited_unless(conn.peer, transport, conn.exempt) {
            return Some(false);
        }
        if let Some(refusal) = self.shed(&raw, Duration::ZERO, transport) {
            let _ = tx.try_send(refusal);
            return Some(true);
        }
        match Message::parse_with(raw.clone(), &self.limits) {
            Ok(msg) => {
                let request = msg.is_request();
                self.deliver(msg, flow, transport, Duration::ZERO).await;
                Some(request)
            }
            Err(e) => match self.parse_failed(&raw, &e, transport) {
                Some(resp) => {
                    let _ = tx.try_send(resp);
                    Some(false)
                }
                None if !raw.starts_with(b"SIP/") => None,
                None => Some(false),
            },
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

/// A bound SIP listener.
#[derive(Debug)]
pub enum SipSocket {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

/// How many kernel ports `bind_sip` tries for a UDP and TCP pair.
const PAIR_ATTEMPTS: usize = 64;

/// Binds the SIP listeners, UDP ones first. A TCP listener on port 0 gets
/// the port number the kernel gave the UDP listener on port 0 of the same
/// address, so that SIP keeps one port for both transports, as phones
/// expect. When another socket already holds that number in TCP, the UDP
/// socket is given back and another port tried; only when `PAIR_ATTEMPTS`
/// tries find no pair does the TCP listener take a port of its own.
pub fn bind_sip(listen: &[Listen]) -> anyhow::Result<Vec<(Listen, SipSocket)>> {
    use anyhow::Context as _;
    let cannot = |l: &Listen| format!("cannot bind {l}");
    let mut out = Vec::new();
    let mut paired = vec![false; listen.len()];
    for l in listen.iter().filter(|l| l.transport == Transport::Udp) {
        let twin = (0..listen.len()).find(|&j| {
            let t = &listen[j];
            l.addr.port() == 0 && t.transport == Transport::Tcp && t.addr == l.addr && !paired[j]
        });
        if let Some(j) = twin {
            if let Some((udp, tcp)) = bind_pair(l.addr) {
                paired[j] = true;
                out.push((*l, SipSocket::Udp(udp)));
                out.push((listen[j], SipSocket::Tcp(tcp)));
                continue;
            }
            tracing::warn!(listen = %l, "no port free for both UDP and TCP: TCP takes its own");
        }
        let udp = bind_udp(l.addr).with_context(|| cannot(l))?;
        out.push((*l, SipSocket::Udp(udp)));
    }
    for (j, l) in listen.iter().enumerate() {
        if l.transport.is_stream() && !paired[j] {
            let tcp = bind_tcp(l.addr).with_context(|| cannot(l))?;
            out.push((*l, SipSocket::Tcp(tcp)));
        }
    }
    Ok(out)
}

/// A UDP socket on a kernel-chosen port of `addr`'s address and a TCP
/// listener on the same port number, if one is found in `PAIR_ATTEMPTS`.
fn bind_pair(addr: SocketAddr) -> Option<(UdpSocket, TcpListener)> {
    (0..PAIR_ATTEMPTS).find_map(|_| {
        let udp = bind_udp(addr).ok()?;
        let port = udp.local_addr().ok()?.port();
        let tcp = bind_tcp(SocketAddr::new(addr.ip(), port)).ok()?;
        Some((udp, tcp))
    })
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
/// each with how long it waited in the kernel (overload control).
pub async fn udp_reader(index: u16, sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    if let Err(e) =
        nix::sys::socket::setsockopt(&*sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
    {
        tracing::warn!(error = %e, "no receive timestamps: overload control sees only the core's queue");
    }
    let mut buf = vec![0u8; 65_536];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut batch = 0;
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
        batch += 1;
        if batch >= READ_BATCH {
            batch = 0;
            tokio::task::yield_now().await;
        }
        let data = &buf[..n];
        // CRLF keep-alives need no answer on UDP; STUN Binding requests
        // (RFC 5626 §4.4.2) get the mapped address, within the source's
        // rate like any message (no reflection beyond it).
        let kind = ringmesh_sip::stun::classify(data);
        if matches!(kind, Datagram::Crlf | Datagram::Junk) {
            continue;
        }
        if shared.rate_limited(peer, Transport::Udp) {
            continue;
        }
        let flow = FlowRef::Udp {
            socket: index,
            peer,
        };
        if kind == Datagram::Stun {
            if let Some(answer) = ringmesh_sip::stun::answer(data, peer) {
                let _ = sock.try_send_to(&answer, peer);
                shared.keep_alive(flow);
            }
            continue;
        }
        let reply = |b: Bytes| {
            let _ = sock.try_send_to(&b, peer);
        };
        let raw = Bytes::copy_from_slice(data);
        if let Some(refusal) = shared.shed(&raw, waited, Transport::Udp) {
            reply(refusal);
            continue;
        }
        match Message::parse_with(raw, &shared.limits) {
            Ok(msg) => shared.deliver(msg, flow, Transport::Udp, waited).await,
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

/// What a stream listener runs over TCP before SIP: TLS, a WebSocket
/// upgrade, or both.
#[derive(Clone)]
pub struct StreamKind {
    pub transport: Transport,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub ws: Option<Arc<crate::websocket::Policy>>,
}

impl std::fmt::Debug for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKind")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Accepts connections, each holding a slot of the node's and its peer
/// address's quota; one that finds no slot is reset at once.
pub async fn stream_acceptor(listener: TcpListener, kind: StreamKind, shared: Arc<Shared>) {
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
        let Some(slot) = shared.reserve_connection(peer, Direction::Inbound) else {
            // A reset, not a FIN: the peer learns at once, and the refused
            // connection leaves no TIME_WAIT behind here.
            let _ = stream.set_zero_linger();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Conn::new(id, peer, Direction::Inbound, kind.transport, slot, &shared);
        shared
            .tasks
            .spawn(accepted(conn, stream, kind.clone(), shared.clone()));
    }
}

/// Runs an accepted connection: its handshakes (within the first-message
/// timeout), then SIP.
async fn accepted(conn: Conn, stream: TcpStream, kind: StreamKind, shared: Arc<Shared>) {
    let deadline = Instant::now() + shared.first_message_timeout;
    let peer = conn.peer;
    let failed = |stage: &'static str, why: String| {
        shared.metrics.hot.handshake_failed(conn.transport, stage);
        tracing::debug!(%peer, stage, why, "handshake failed");
    };
    match (kind.tls, kind.ws) {
        (None, None) => {
            let (r, w) = stream.into_split();
            serve_accepted(conn, r, w, shared).await;
        }
        (Some(tls), ws) => {
            let tls_stream = match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return failed("tls", e.to_string()),
                Err(_) => return failed("tls", "timeout".into()),
            };
            let mut conn = conn;
            conn.identify(client_names(tls_stream.get_ref().1), &shared);
            match ws {
                Some(policy) => {
                    crate::websocket::serve(conn, tls_stream, &policy, deadline, shared).await
                }
                None => {
                    let (r, w) = tokio::io::split(tls_stream);
                    serve_accepted(conn, r, w, shared).await;
                }
            }
        }
        (None, Some(policy)) => {
            crate::websocket::serve(conn, stream, &policy, deadline, shared).await
        }
    }
}

/// Runs SIP over an accepted byte stream, once the core knows of it.
async fn serve_accepted<R, W>(conn: Conn, r: R, w: W, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if let Some((tx, rx)) = open_inbound(&conn, &shared).await {
        run_connection(conn, r, w, tx, rx, shared).await;
    }
}

/// Tells the core of a new inbound connection; its channel, or `None`
/// when the core is gone.
pub(crate) async fn open_inbound(
    conn: &Conn,
    shared: &Shared,
) -> Option<(mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>)> {
    let (tx, rx) = mpsc::channel(256);
    shared
        .inbound
        .send(Inbound::ConnOpened {
            id: conn.id,
            peer: conn.peer,
            tx: tx.clone(),
            names: conn.names.clone(),
        })
        .await
        .ok()?;
    Some((tx, rx))
}

/// Opens an outbound connection for the core, which already holds `tx`,
/// in the slot the core reserved for it ([`Shared::reserve_connection`]):
/// TCP, or with `tls` (the name the server must prove) TLS over it.
pub fn connect(
    id: u64,
    peer: SocketAddr,
    tls: Option<rustls::pki_types::ServerName<'static>>,
    slot: ConnSlot,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let tasks = shared.tasks.clone();
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut conn = Conn::new(id, peer, Direction::Outbound, transport, slot, &shared);
    tasks.spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(peer)).await {
            Ok(Ok(stream)) => stream,
            _ => return connect_failed(conn, "no connection", &shared).await,
        };
        let _ = stream.set_nodelay(true);
        let (Some(name), Some(client)) = (tls, shared.tls_client.clone()) else {
            let (r, w) = stream.into_split();
            return run_connection(conn, r, w, tx, rx, shared).await;
        };
        let connector = tokio_rustls::TlsConnector::from(client);
        match tokio::time::timeout_at(deadline, connector.connect(name, stream)).await {
            Ok(Ok(tls)) => {
                let names = leaf_names(tls.get_ref().1.peer_certificates());
                conn.identify(names.clone(), &shared);
                let _ = shared.inbound.send(Inbound::ConnNamed { id, names }).await;
                let (r, w) = tokio::io::split(tls);
                run_connection(conn, r, w, tx, rx, shared).await
            }
            Ok(Err(e)) => {
                shared.metrics.hot.handshake_failed(Transport::Tls, "tls");
                tracing::info!(%peer, error = %e, "TLS to another domain's server failed");
                connect_failed(conn, "tls", &shared).await
            }
            Err(_) => connect_failed(conn, "tls timeout", &shared).await,
        }
    });
}

/// An outbound connection that could not be opened: the core is told.
async fn connect_failed(conn: Conn, why: &str, shared: &Shared) {
    let (id, peer, transport) = (conn.id, conn.peer, conn.transport);
    tracing::debug!(%peer, why, "outbound connection failed");
    drop(conn);
    let _ = shared
        .inbound
        .send(Inbound::ConnFailed {
            id,
            peer,
            transport,
        })
        .await;
}

/// A connection and the slot it holds (given back when it is dropped),
/// counted in `ringmesh_sip_connections_open{transport}` while it lives.
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    pub direction: Direction,
    pub transport: Transport,
    /// The DNS names of its verified TLS client certificate.
    pub names: Vec<String>,
    /// Its client certificate names a trusted element: the per-source
    /// rate does not apply.
    pub exempt: bool,
    _slot: ConnSlot,
    open: prometheus::IntGauge,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Conn {
    fn new(
        id: u64,
        peer: SocketAddr,
        direction: Direction,
        transport: Transport,
        slot: ConnSlot,
        shared: &Shared,
    ) -> Conn {
        let open = shared.metrics.hot.open_connections(transport);
        open.inc();
        Conn {
            id,
            peer,
            direction,
            transport,
            names: Vec::new(),
            exempt: false,
            _slot: slot,
            open,
        }
    }

    /// The names its TLS client certificate carries.
    fn identify(&mut self, names: Vec<String>, shared: &Shared) {
        self.exempt = shared.trusted.is_trusted_by_name(self.peer, &names);
        self.names = names;
    }

    pub fn flow(&self) -> FlowRef {
        FlowRef::Conn {
            id: self.id,
            peer: self.peer,
            transport: self.transport,
        }
    }
}

async fn run_connection<R, W>(
    conn: Conn,
    r: R,
    w: W,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut writer = shared.tasks.spawn(write_loop(w, rx));
    let reader = read_loop(&conn, r, tx, &shared);
    finish_connection(conn.id, reader, &mut writer, &shared).await;
}

/// Runs a connection's reader until it ends or its writer does (asked to
/// close, or the peer stopped taking what we send), then tells the core and
/// lets the writer flush what is queued (answers to the last requests, a
/// 400 before closing) for up to 2 s.
pub(crate) async fn finish_connection(
    id: u64,
    reader: impl std::future::Future<Output = ()>,
    writer: &mut tokio::task::JoinHandle<()>,
    shared: &Shared,
) {
    let writer_ended = tokio::select! {
        _ = reader => false,
        _ = &mut *writer => true,
    };
    let _ = shared.inbound.send(Inbound::ConnClosed { id }).await;
    if !writer_ended
        && tokio::time::timeout(Duration::from_secs(2), &mut *writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

/// The DNS names of the client certificate a TLS peer presented (the
/// verifier checked it chains to the client CA; none without one).
fn client_names(tls: &rustls::ServerConnection) -> Vec<String> {
    leaf_names(tls.peer_certificates())
}

/// The DNS names of a verified certificate chain's leaf.
fn leaf_names(chain: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Vec<String> {
    chain
        .and_then(|chain| chain.first())
        .and_then(|leaf| ringmesh_enrollment_client::cert::cert_info(leaf).ok())
        .map(|info| info.dns_names)
        .unwrap_or_default()
}

/// Queued on a connection's writer: close it once what is queued before is
/// sent (an empty write, which nothing else queues).
pub static CLOSE: Bytes = Bytes::new();

async fn write_loop(mut w: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(32);
    while rx.recv_many(&mut batch, 32).await > 0 {
        for b in batch.drain(..) {
            if b.is_empty() {
                let _ = w.shutdown().await;
                return;
            }
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop(
    conn: &Conn,
    mut r: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Bytes>,
    shared: &Shared,
) {
    let peer = conn.peer;
    let transport = conn.transport;
    let mut buf = BytesMut::with_capacity(8192);
    let mut framer = Framer::new();
    let mut partial_since: Option<Instant> = None;
    // Until its first request, an accepted connection only holds a slot.
    let first_deadline = (conn.direction == Direction::Inbound)
        .then(|| Instant::now() + shared.first_message_timeout);
    let mut requested = false;
    loop {
        // Take every complete frame before reading more.
        loop {
            match framer.next_frame(&buf, &shared.limits) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Ping(n)) => {
                    buf.advance(n);
                    shared.ping(conn, &tx);
                }
                Ok(Frame::Pong(n)) => buf.advance(n),
                Ok(Frame::Message(n)) => {
                    let raw = buf.split_to(n).freeze();
                    match shared.stream_message(raw, conn, &tx).await {
                        Some(request) => requested |= request,
                        None => return,
                    }
                }
                Err(e) => {
                    shared
                        .metrics
                        .parse_errors
                        .with_label_values(&["stream", transport.as_str()])
                        .inc();
                    if let Some(resp) = salvage::error_response(&buf, &e) {
                        let _ = tx.try_send(resp);
                    }
                    tracing::debug!(%peer, err = %e, "closing stream after framing error");
                    return;
                }
            }
        }
        let (deadline, why) = if buf.is_empty() {
            partial_since = None;
            (Instant::now() + shared.idle_timeout, ConnTimeout::Idle)
        } else {
            let since = *partial_since.get_or_insert_with(Instant::now);
            (since + shared.message_timeout, ConnTimeout::Message)
        };
        let (deadline, why) = match first_deadline {
            Some(first) if !requested && first < deadline => (first, ConnTimeout::FirstMessage),
            _ => (deadline, why),
        };
        match tokio::time::timeout_at(deadline, r.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                shared.metrics.hot.connection_timed_out(why);
                tracing::debug!(%peer, reason = why.as_label(), "closing a connection: timeout");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> Listen {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn udp_and_tcp_on_port_zero_share_one_port() {
        // Many rounds: the kernel's first choice for UDP is often held in
        // TCP on a busy machine, which is what the retry is for.
        for _ in 0..50 {
            let bound = bind_sip(&[listen("tcp:127.0.0.1:0"), listen("udp:127.0.0.1:0")]).unwrap();
            let ports: Vec<_> = bound
                .iter()
                .map(|(l, s)| {
                    let local = match s {
                        SipSocket::Udp(u) => u.local_addr().unwrap(),
                        SipSocket::Tcp(t) => t.local_addr().unwrap(),
                    };
                    (l.transport, local.port())
                })
                .collect();
            assert_eq!(ports.len(), 2);
            assert_eq!(ports[0].0, Transport::Udp, "UDP is bound first");
            assert_eq!(ports[1].0, Transport::Tcp);
            assert_eq!(ports[0].1, ports[1].1, "one port for both transports");
        }
    }

    #[tokio::test]
    async fn a_port_in_use_names_the_listener() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = bind_sip(&[listen(&format!("tcp:{addr}"))]).expect_err("the port is taken");
        assert!(
            err.to_string().contains(&format!("cannot bind tcp:{addr}")),
            "{err:#}"
        );
    }
}
