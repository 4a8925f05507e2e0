//! The one task per shard that moves bytes between sockets and an
//! [`Engine`].
//!
//! Each turn: let the engine start what is due and fire its timers, send
//! what it produced, then drain every socket (`try_recv` until
//! `WouldBlock`, a bounded batch per socket) feeding each message in with
//! its own receive time. Only when no socket had anything for `--spin-us`
//! does the task sleep, until the engine's next deadline or a socket
//! becomes readable: under load a wake-up costs more than polling again.
//! No channel, lock or allocation per message on the way.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmesh_sip::Limits;
use ringmesh_sip::framing::{Frame, next_frame};
use tokio::net::{TcpStream, UdpSocket};

use crate::engine::{Engine, Phase};
use crate::stats::Stats;

/// Datagrams (or stream reads) taken from one socket per turn.
const RECV_BATCH: usize = 256;
/// Largest datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Output a TCP connection may buffer before sends count as errors.
const MAX_TCP_BACKLOG: usize = 64 << 20;

/// What the shards share: a start barrier, a stop flag, progress.
#[derive(Debug)]
pub struct Shared {
    pub shards: usize,
    /// Keep polling this long after the last received message before
    /// sleeping (`--spin-us`).
    pub spin: Duration,
    /// Shards done with setup.
    pub ready: AtomicUsize,
    /// Set on Ctrl-C: stop starting operations.
    pub stop: AtomicBool,
    pub progress: Vec<Progress>,
}

impl Shared {
    pub fn new(shards: usize, spin: Duration) -> Shared {
        Shared {
            shards,
            spin,
            ready: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            progress: (0..shards).map(|_| Progress::default()).collect(),
        }
    }
}

/// A shard's counters, published every 100 ms for the progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub setup_done: AtomicU64,
    pub live: AtomicU64,
    pub measuring: AtomicBool,
    pub done: AtomicBool,
}

/// A stream connection with its buffers (plaintext), and its TLS state
/// machine over TLS.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: BytesMut,
    closed: bool,
    tls: Option<Box<rustls::ClientConnection>>,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<Box<rustls::ClientConnection>>,
    ) -> Conn {
        Conn {
            stream,
            peer,
            rbuf: BytesMut::with_capacity(1 << 16),
            wbuf: BytesMut::new(),
            closed: false,
            tls,
        }
    }

    /// Whether it has bytes to put on the wire.
    fn wants_write(&self) -> bool {
        !self.wbuf.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Reads what the socket has: plaintext into `rbuf`. Ok(0) when the
    /// peer closed.
    fn read(&mut self) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            self.rbuf.reserve(1 << 16);
            return self.stream.try_read_buf(&mut self.rbuf);
        };
        let mut cipher = [0u8; 1 << 14];
        let n = self.stream.try_read(&mut cipher)?;
        if n == 0 {
            return Ok(0);
        }
        let mut rest = &cipher[..n];
        while !rest.is_empty() {
            if tls.read_tls(&mut rest)? == 0 {
                break;
            }
            let state = tls.process_new_packets().map_err(io::Error::other)?;
            let mut left = state.plaintext_bytes_to_read();
            while left > 0 {
                self.rbuf.reserve(left);
                let mut plain = vec![0u8; left];
                let got = io::Read::read(&mut tls.reader(), &mut plain)?;
                self.rbuf.extend_from_slice(&plain[..got]);
                left -= got;
            }
        }
        Ok(n)
    }

    /// Writes what it can without blocking: plaintext through TLS when
    /// there is TLS.
    fn write(&mut self) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            while !self.wbuf.is_empty() {
                let n = self.stream.try_write(&self.wbuf)?;
                let _ = self.wbuf.split_to(n);
            }
            return Ok(());
        };
        loop {
            if !self.wbuf.is_empty() {
                let n = io::Write::write(&mut tls.writer(), &self.wbuf)?;
                let _ = self.wbuf.split_to(n);
            }
            if !tls.wants_write() {
                return Ok(());
            }
            tls.write_tls(&mut TryWrite(&self.stream))?;
        }
    }
}

/// `io::Write` over a non-blocking socket (WouldBlock when full).
struct TryWrite<'a>(&'a TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `--trace-msg`: the first messages of a shard, as sent and received.
#[derive(Debug)]
pub struct Trace {
    out: std::io::BufWriter<std::fs::File>,
    left: u64,
    t0: Instant,
}

impl Trace {
    pub fn new(file: std::fs::File, limit: u64) -> Trace {
        Trace {
            out: std::io::BufWriter::new(file),
            left: limit,
            t0: Instant::now(),
        }
    }

    fn record(&mut self, dir: &str, sock: u32, peer: SocketAddr, data: &[u8]) {
        use std::io::Write as _;
        if self.left == 0 {
            return;
        }
        self.left -= 1;
        let _ = writeln!(
            self.out,
            "{dir} {:.6}s socket {sock} {} {peer}",
            self.t0.elapsed().as_secs_f64(),
            if dir == "send" { "to" } else { "from" }
        );
        let _ = self.out.write_all(data);
        let _ = self.out.write_all(b"\n----\n");
        if self.left == 0 {
            let _ = self.out.flush();
        }
    }
}

/// A shard's sockets.
#[derive(Debug)]
pub enum Io {
    Udp(Vec<UdpSocket>),
    /// Connection `local · targets + target`.
    Tcp(Vec<Conn>),
}

/// Runs one shard to the end and returns its measurements.
pub async fn drive(
    mut engine: Engine,
    mut io: Io,
    shared: Arc<Shared>,
    shard: usize,
    mut trace: Option<Trace>,
) -> Stats {
    let mut rbuf = BytesMut::with_capacity(1 << 20);
    let limits = Limits::default();
    let mut joined = false;
    let mut stopped = false;
    let mut last_pub = Instant::now();
    let mut sleep = pin!(tokio::time::sleep(Duration::from_millis(1)));
    let progress = &shared.progress[shard];
    let spin = shared.spin;
    let mut last_rx = Instant::now();
    loop {
        let now = Instant::now();
        if !stopped && shared.stop.load(Ordering::Relaxed) {
            engine.stop(now);
            stopped = true;
        }
        if engine.phase() == Phase::Ready {
            if !joined {
                shared.ready.fetch_add(1, Ordering::AcqRel);
                joined = true;
            }
            if shared.ready.load(Ordering::Acquire) >= shared.shards {
                engine.start_measure(now);
                progress.measuring.store(true, Ordering::Relaxed);
            }
        }
        engine.handle_timeout(now);
        flush(&mut engine, &mut io, &mut trace).await;
        if engine.phase() == Phase::Done {
            break;
        }
        let got = match &mut io {
            Io::Udp(socks) => recv_udp(&mut engine, socks, &mut rbuf, &mut trace),
            Io::Tcp(conns) => recv_tcp(&mut engine, conns, &limits, &mut trace),
        };
        flush(&mut engine, &mut io, &mut trace).await;
        if now.duration_since(last_pub) >= Duration::from_millis(100) {
            publish(&engine, progress);
            last_pub = now;
        }
        if got > 0 {
            last_rx = Instant::now();
        } else if last_rx.elapsed() < spin {
            // traffic is flowing: polling the sockets again costs less
            // than sleeping and being woken for the next datagram
            std::hint::spin_loop();
        } else {
            let now = Instant::now();
            let cap = now
                + Duration::from_millis(if engine.phase() == Phase::Ready {
                    1
                } else {
                    100
                });
            let wake = engine.next_deadline(now).map_or(cap, |d| d.min(cap));
            if wake > now {
                sleep.as_mut().reset(tokio::time::Instant::from_std(wake));
                poll_fn(|cx| {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    let mut ready = false;
                    match &io {
                        Io::Udp(socks) => {
                            for s in socks {
                                ready |= s.poll_recv_ready(cx).is_ready();
                            }
                        }
                        Io::Tcp(conns) => {
                            for c in conns.iter().filter(|c| !c.closed) {
                                ready |= c.stream.poll_read_ready(cx).is_ready();
                                if c.wants_write() {
                                    ready |= c.stream.poll_write_ready(cx).is_ready();
                                }
                            }
                        }
                    }
                    if ready {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
        }
    }
    publish(&engine, progress);
    progress.done.store(true, Ordering::Relaxed);
    if let Some(t) = &mut trace {
        use std::io::Write as _;
        let _ = t.out.flush();
    }
    engine.stats
}

fn publish(engine: &Engine, p: &Progress) {
    let t = engine.stats.total();
    p.started.store(t.started, Ordering::Relaxed);
    p.succeeded.store(t.succeeded, Ordering::Relaxed);
    p.failed.store(t.failed, Ordering::Relaxed);
    p.setup_done.store(
        engine.stats.setup.succeeded + engine.stats.setup.failed,
        Ordering::Relaxed,
    );
    p.live.store(engine.live() as u64, Ordering::Relaxed);
}

fn recv_udp(
    engine: &mut Engine,
    socks: &[UdpSocket],
    rbuf: &mut BytesMut,
    trace: &mut Option<Trace>,
) -> usize {
    let mut got = 0;
    for (i, s) in socks.iter().enumerate() {
        for _ in 0..RECV_BATCH {
            if rbuf.capacity() < MAX_DATAGRAM {
                // one allocation serves many datagrams: each is split off
                // and frozen, and parsed messages borrow from it
                rbuf.reserve(1 << 20);
            }
            match s.try_recv_buf_from(rbuf) {
                Ok((_, from)) => {
                    let data = rbuf.split().freeze();
                    if let Some(t) = trace {
                        t.record("recv", i as u32, from, &data);
                    }
                    engine.handle_message(i as u32, from, data, Instant::now());
                    got += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // e.g. ECONNREFUSED reported for an earlier send
                    rbuf.clear();
                    break;
                }
            }
        }
    }
    got
}

fn recv_tcp(
    engine: &mut Engine,
    conns: &mut [Conn],
    limits: &Limits,
    trace: &mut Option<Trace>,
) -> usize {
    let mut got = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        if c.closed {
            continue;
        }
        for _ in 0..RECV_BATCH {
            match c.read() {
                Ok(0) => {
                    c.closed = true;
                    engine.stats.msgs.send_errors += 1;
                    break;
                }
                Ok(_) => loop {
                    match next_frame(&c.rbuf, limits) {
                        Ok(Frame::Message(n)) => {
                            let data = c.rbuf.split_to(n).freeze();
                            if let Some(t) = trace {
                                t.record("recv", i as u32, c.peer, &data);
                            }
                            engine.handle_message(i as u32, c.peer, data, Instant::now());
                            got += 1;
                        }
                        Ok(Frame::Ping(n)) => {
                            let _ = c.rbuf.split_to(n);
                            c.wbuf.extend_from_slice(b"\r\n");
                        }
                        Ok(Frame::Pong(n)) => {
                            let _ = c.rbuf.split_to(n);
                        }
                        Ok(Frame::Incomplete) => break,
                        Err(_) => {
                            // cannot resynchronise a stream
                            engine.stats.msgs.parse_errors += 1;
                            c.rbuf.clear();
                            break;
                        }
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.closed = true;
                    break;
                }
            }
        }
    }
    got
}

/// Sends everything the engine produced.
async fn flush(engine: &mut Engine, io: &mut Io, trace: &mut Option<Trace>) {
    let mut errors = 0u64;
    {
        let (buf, txs) = engine.output();
        if let Some(tr) = trace {
            for t in txs {
                tr.record("send", t.sock, t.to, &buf[t.start as usize..t.end as usize]);
            }
        }
        match io {
            Io::Udp(socks) => {
                for t in txs {
                    let data = &buf[t.start as usize..t.end as usize];
                    let s = &socks[t.sock as usize];
                    loop {
                        match s.try_send_to(data, t.to) {
                            Ok(_) => break,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                if s.writable().await.is_err() {
                                    errors += 1;
                                    break;
                                }
                            }
                            Err(_) => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                }
            }
            Io::Tcp(conns) => {
                for t in txs {
                    let c = &mut conns[t.sock as usize];
                    let data = &buf[t.start as usize..t.end as usize];
                    if c.closed || c.wbuf.len() + data.len() > MAX_TCP_BACKLOG {
                        errors += 1;
                        continue;
                    }
                    c.wbuf.extend_from_slice(data);
                }
            }
        }
    }
    if let Io::Tcp(conns) = io {
        for c in conns.iter_mut().filter(|c| c.wants_write() && !c.closed) {
            match c.write() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    c.closed = true;
                    errors += 1;
                }
            }
        }
    }
    engine.stats.msgs.send_errors += errors;
    engine.clear_output();
}
