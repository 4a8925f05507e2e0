//! Tiny SIP servers on 127.0.0.1 for the generator's end-to-end tests.
//!
//! - [`Mode::Answer`]: answers REGISTER 200, INVITE 100/180/200 (itself the
//!   callee), BYE 200, everything else 200; ACK is absorbed.
//! - [`Mode::Proxy`]: a stateless record-routing proxy with a location
//!   table: REGISTER stores the Contact, an INVITE goes to the callee's
//!   Contact, in-dialog requests follow their Route, responses their Via.
//!   Several proxies can share one location table (a "farm").
//!
//! Optionally digest auth (401 for REGISTER, 407 for INVITE, with
//! ringmesh-sip's `DigestAuth`, password `secret`), and loss: the first
//! transmission of every Nth new request is dropped.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ringmesh_sip::digest::{Credentials, Ha1, Verdict, find_credentials};
use ringmesh_sip::framing::{Frame, next_frame};
use ringmesh_sip::name_addr::Contact;
use ringmesh_sip::{DigestAuth, Forward, HeaderName, Limits, Message, Method};

pub const REALM: &[u8] = b"ringmesh.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Answer,
    Proxy,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub registers: AtomicU64,
    pub invites: AtomicU64,
    pub byes: AtomicU64,
    pub acks: AtomicU64,
    pub dropped: AtomicU64,
}

pub type Location = Arc<Mutex<HashMap<Vec<u8>, (Vec<u8>, SocketAddr)>>>;

pub struct Server {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Clone)]
pub struct Opts {
    pub mode: Mode,
    pub auth: bool,
    /// Drop the first transmission of every Nth new request.
    pub drop_every: Option<u64>,
    pub location: Location,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mode: Mode::Answer,
            auth: false,
            drop_every: None,
            location: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Core {
    me: SocketAddr,
    opts: Opts,
    auth: DigestAuth,
    seen: HashSet<Vec<u8>>,
    /// Call-ID and branch of the requests whose credentials were accepted.
    authenticated: HashSet<Vec<u8>>,
    counts: Arc<Counts>,
}

impl Core {
    /// Handles one message; returns what to send where.
    fn handle(&mut self, data: Bytes, from: SocketAddr) -> Vec<(Bytes, SocketAddr)> {
        let Ok(msg) = Message::parse(data) else {
            return vec![];
        };
        if msg.is_response() {
            return self.response(msg);
        }
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.opts.drop_every {
            let key = [msg.call_id(), msg.branch().unwrap_or_default()].concat();
            let first = self.seen.insert(key);
            let c = self.counts.requests.load(Ordering::Relaxed);
            if first && c.is_multiple_of(n) && *msg.method() != Method::Ack {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                return vec![];
            }
        }
        let reply =
            |status: u16| vec![(msg.response_writer(status, Some(b"srv")).finish(b""), from)];
        match msg.method() {
            Method::Register => {
                self.counts.registers.fetch_add(1, Ordering::Relaxed);
                if self.opts.auth && !self.verify(&msg, false) {
                    let mut w = msg.response_writer(401, Some(b"srv"));
                    self.auth
                        .write_challenges(&mut w, false, REALM, false, now_secs());
                    return vec![(w.finish(b""), from)];
                }
                let user = msg.to_hdr().uri().user().unwrap_or_default().to_vec();
                if let Some(Contact::Addr(c)) = msg.contacts().next() {
                    let uri = c.uri();
                    let addr = SocketAddr::new(
                        uri.host().unwrap().ip().unwrap(),
                        uri.port().unwrap_or(5060),
                    );
                    self.opts
                        .location
                        .lock()
                        .unwrap()
                        .insert(user, (uri.as_bytes().to_vec(), addr));
                }
                let mut w = msg.response_writer(200, Some(b"srv"));
                if let Some(c) = msg.header(HeaderName::Contact) {
                    w.header(HeaderName::Contact, c);
                }
                w.header(HeaderName::Expires, b"3600");
                vec![(w.finish(b""), from)]
            }
            Method::Invite if msg.to_tag().is_none() => {
                self.counts.invites.fetch_add(1, Ordering::Relaxed);
                if self.opts.auth && !self.verify(&msg, true) {
                    let mut w = msg.response_writer(407, Some(b"srv"));
                    self.auth
                        .write_challenges(&mut w, true, REALM, false, now_secs());
                    return vec![(w.finish(b""), from)];
                }
                match self.opts.mode {
                    Mode::Answer => {
                        let tag = format!("uas{}", self.counts.invites.load(Ordering::Relaxed));
                        let contact = format!("<sip:uas@{}>", self.me);
                        let mut out = vec![(msg.response_writer(100, None).finish(b""), from)];
                        for status in [180, 200] {
                            let mut w = msg.response_writer(status, Some(tag.as_bytes()));
                            w.header(HeaderName::Contact, contact.as_bytes());
                            out.push((w.finish(b""), from));
                        }
                        out
                    }
                    Mode::Proxy => {
                        let user = msg
                            .request_uri()
                            .and_then(|u| u.user().map(<[u8]>::to_vec))
                            .unwrap_or_default();
                        let Some((uri, addr)) =
                            self.opts.location.lock().unwrap().get(&user).cloned()
                        else {
                            return reply(404);
                        };
                        let mut out = vec![(msg.response_writer(100, None).finish(b""), from)];
                        out.push((self.forward(&msg, Some(&uri), 0, true), addr));
                        out
                    }
                }
            }
            Method::Ack => {
                self.counts.acks.fetch_add(1, Ordering::Relaxed);
                self.in_dialog(&msg).unwrap_or_default()
            }
            Method::Bye => {
                self.counts.byes.fetch_add(1, Ordering::Relaxed);
                self.in_dialog(&msg).unwrap_or_else(|| reply(200))
            }
            _ => reply(200),
        }
    }

    /// Proxy mode: a request whose first Route names us goes on to its
    /// Request-URI.
    fn in_dialog(&mut self, msg: &Message) -> Option<Vec<(Bytes, SocketAddr)>> {
        if self.opts.mode != Mode::Proxy {
            return None;
        }
        let first = msg.routes().next()?;
        let host = first.uri().host()?.ip()?;
        if SocketAddr::new(host, first.uri().port().unwrap_or(5060)) != self.me {
            return None;
        }
        let ruri = msg.request_uri()?;
        let to = SocketAddr::new(ruri.host()?.ip()?, ruri.port().unwrap_or(5060));
        Some(vec![(self.forward(msg, None, 1, false), to)])
    }

    fn forward(&self, msg: &Message, ruri: Option<&[u8]>, pop: usize, rr: bool) -> Bytes {
        let via = format!(
            "SIP/2.0/UDP {};branch=z9hG4bKpx{}",
            self.me,
            String::from_utf8_lossy(msg.branch().unwrap_or(b"none"))
        );
        let rr_value = format!("<sip:{};lr>", self.me);
        let fw = Forward {
            request_uri: ruri,
            via: via.as_bytes(),
            record_route: rr.then_some(rr_value.as_bytes()),
            pop_routes: pop,
            max_forwards: 69,
            ..Forward::default()
        };
        msg.forward_writer(&fw).finish(msg.body())
    }

    fn response(&mut self, msg: Message) -> Vec<(Bytes, SocketAddr)> {
        // ours on top: strip it and send to the next Via
        let mut vias = msg.vias();
        let Some(top) = vias.next() else {
            return vec![];
        };
        let ours = top
            .host()
            .ip()
            .map(|ip| SocketAddr::new(ip, top.port().unwrap_or(5060)))
            == Some(self.me);
        if !ours {
            return vec![];
        }
        let Some(next) = vias.next() else {
            return vec![];
        };
        let Some(ip) = next.host().ip() else {
            return vec![];
        };
        let to = SocketAddr::new(ip, next.port().unwrap_or(5060));
        vec![(msg.forward_response(&[]).finish(msg.body()), to)]
    }

    fn verify(&mut self, msg: &Message, proxy: bool) -> bool {
        let Some(creds): Option<Credentials<'_>> = find_credentials(msg, proxy, REALM) else {
            return false;
        };
        let user = creds.username();
        let ha1 = Ha1::compute(&user, REALM, b"secret");
        let key = [msg.call_id(), msg.branch().unwrap_or_default()].concat();
        match self.auth.verify(
            &creds,
            REALM,
            msg.method(),
            msg.request_uri_bytes(),
            &ha1,
            now_secs(),
        ) {
            Verdict::Valid => {
                self.authenticated.insert(key);
                true
            }
            // A retransmission of a request accepted before (this server
            // has no transaction layer to absorb it): the same (nonce, nc)
            // again, which only a new request must not carry.
            Verdict::Replay => self.authenticated.contains(&key),
            _ => false,
        }
    }
}

/// A digest issuer id no other server of this test process has, as each
/// supernode draws its own.
fn next_issuer() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn core(me: SocketAddr, opts: Opts, counts: Arc<Counts>) -> Core {
    Core {
        me,
        opts,
        auth: DigestAuth::new(b"test farm secret", 300, next_issuer()),
        seen: HashSet::new(),
        authenticated: HashSet::new(),
        counts,
    }
}

/// A UDP server on 127.0.0.1 (random port).
pub fn udp_server(opts: Opts) -> Server {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let (s, c) = (stop.clone(), counts.clone());
    let handle = std::thread::spawn(move || {
        let mut core = core(addr, opts, c);
        let mut buf = vec![0u8; 65_535];
        while !s.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            for (bytes, to) in core.handle(Bytes::copy_from_slice(&buf[..n]), from) {
                let _ = sock.send_to(&bytes, to);
            }
        }
    });
    Server {
        addr,
        counts,
        stop,
        handle: Some(handle),
    }
}

/// A TCP server in answer mode on 127.0.0.1 (random port): one thread per
/// connection, responses on the connection they answer.
pub fn tcp_server(opts: Opts) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let (s, c) = (stop.clone(), counts.clone());
    let handle = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let (s2, opts2, c2) = (s.clone(), opts.clone(), c.clone());
                    conns.push(std::thread::spawn(move || {
                        serve_tcp(stream, peer, addr, opts2, c2, s2)
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    Server {
        addr,
        counts,
        stop,
        handle: Some(handle),
    }
}

fn serve_tcp(
    mut stream: TcpStream,
    peer: SocketAddr,
    me: SocketAddr,
    opts: Opts,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut core = core(me, opts, counts);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        loop {
            match next_frame(&buf, &Limits::default()) {
                Ok(Frame::Message(n)) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    buf.drain(..n);
                    for (bytes, _) in core.handle(data, peer) {
                        let _ = stream.write_all(&bytes);
                    }
                }
                Ok(Frame::Ping(n)) | Ok(Frame::Pong(n)) => {
                    buf.drain(..n);
                }
                Ok(Frame::Incomplete) => break,
                Err(_) => return,
            }
        }
    }
}

/// A bound UDP port that never answers.
pub fn black_hole() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Runs the generator; returns (exit code, stdout, stderr, parsed JSON report).
pub fn run_load(args: &[&str]) -> (i32, String, String, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!(
        "rl-test-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmesh-load"))
        .args(args)
        .arg("--json-out")
        .arg(&json)
        .arg("--no-progress")
        .output()
        .expect("run ringmesh-load");
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    )
}

pub fn u(v: &serde_json::Value, path: &str) -> u64 {
    let mut x = v;
    for p in path.split('.') {
        x = &x[p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}
