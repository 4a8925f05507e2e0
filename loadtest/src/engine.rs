//! The handset farm of one shard, with no I/O.
//!
//! Inputs are [`Engine::handle_timeout`] (start what the pacer says is
//! due, fire timers) and [`Engine::handle_message`] (a datagram or stream
//! message from a socket), both with `now`; outputs are the transmits in
//! [`Engine::output`] and [`Engine::next_deadline`]. The driver owns the
//! sockets and the one real timer.
//!
//! ## Operations
//!
//! An operation is a registration (REGISTER → [401 → REGISTER with
//! credentials] → 200) or a call (INVITE → [407 → ACK, INVITE with
//! credentials] → 100/180/200 → ACK → hold → BYE → 200). Operations live
//! in a slab; the slot and its generation are written into every branch
//! (and a call's Call-ID), so a response finds its operation with one
//! index and two compares ([`crate::ident`]).
//!
//! The callee side of a call lives in the same slot: the INVITE the server
//! relays to one of our callee handsets carries our Call-ID. The callee
//! answers 180, then 200 after `--answer-ms` (retransmitted on UDP until
//! the ACK, RFC 3261 §13.3.1.4), and 200 to the BYE.
//!
//! ## Transactions
//!
//! On UDP a request is retransmitted after T1, 2·T1, … (INVITE: doubling
//! until a provisional; others: capped at T2, and T2 after a provisional),
//! and any transaction without a final response after `--timeout-ms`
//! fails. Only 2xx responses feed the latency histograms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringmesh_sip::name_addr::Contact;
use ringmesh_sip::{HeaderName, Message, Method, NameAddr, Uri};

use crate::challenge::{self, Answer, Challenge};
use crate::config::{CallRouting, Scenario, Transport};
use crate::ident::{OpRef, Stamp};
use crate::pacer::Pacer;
use crate::stats::{Fail, Kind, Lat, Meth, Stats, micros};
use crate::template::{Field, Shape, Templates, push_dec, push_hex};
use crate::timer::Timers;

/// Whether a final response asks to retry later (RFC 3261 §20.33).
fn asks_retry(msg: &Message) -> bool {
    msg.header(HeaderName::RetryAfter).is_some()
}

/// Most operations started by one call of [`Engine::handle_timeout`], so
/// that receiving keeps up when the generator falls behind.
const MAX_START_BATCH: u64 = 128;

/// What one shard does.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub shard: u16,
    pub run_id: u32,
    pub scenario: Scenario,
    pub transport: Transport,
    pub domain: String,
    pub user_prefix: String,
    pub password: Option<String>,
    pub refresh: bool,
    pub expires: u32,
    /// User numbers of this shard's registered handsets (storm users or
    /// callees).
    pub handsets: Vec<u32>,
    /// User numbers of this shard's callers.
    pub callers: Vec<u32>,
    pub targets: Vec<SocketAddr>,
    /// Local address of every engine socket. UDP: one per local socket;
    /// TCP: `n_local × targets`, connection `local · targets + target`.
    pub locals: Vec<SocketAddr>,
    pub n_local: usize,
    pub rate: f64,
    pub count: u64,
    pub duration: Duration,
    pub setup_rate: f64,
    pub mix_register: u32,
    pub mix_call: u32,
    pub call_routing: CallRouting,
    pub t1: Duration,
    pub t2: Duration,
    pub timeout: Duration,
    pub hold: Duration,
    pub answer: Duration,
    pub drain: Duration,
    pub seed: u64,
}

/// One message to send: `out[start..end]` from engine socket `sock` to `to`
/// (on TCP the connection decides the peer).
#[derive(Debug, Clone, Copy)]
pub struct Transmit {
    pub sock: u32,
    pub to: SocketAddr,
    pub start: u32,
    pub end: u32,
}

/// Where a shard is in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Registering the callees (call, mixed).
    Setup,
    /// Ready: waiting for [`Engine::start_measure`].
    Ready,
    /// Starting operations on schedule.
    Measure,
    /// No more starts; waiting for open operations.
    Drain,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TClass {
    Retrans = 0,
    Timeout = 1,
    Hold = 2,
    Answer = 3,
    UasRetrans = 4,
}

#[derive(Debug, Clone, Copy)]
struct TimerKey {
    slot: u32,
    generation: u32,
    class: TClass,
    seq: u32,
}

#[derive(Debug)]
struct Handset {
    user: u32,
    cseq: u32,
    /// Call-ID generation: a new registration (not a refresh) takes a new
    /// Call-ID.
    epoch: u32,
    busy: bool,
    registered: bool,
    /// The last challenge, answered pre-emptively on refreshes.
    challenge: Option<Box<Challenge>>,
    nc: u32,
}

#[derive(Debug, Clone, Copy)]
struct Tx {
    meth: Meth,
    step: u32,
    cseq: u32,
    first: Instant,
    interval: Duration,
    provisional: bool,
    active: bool,
    sock: u32,
    to: SocketAddr,
    answered_challenge: bool,
    /// The transaction timeout is armed (see `arm_tx_timers`).
    timeout_armed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallPhase {
    Inviting,
    Holding,
    Byeing,
}

#[derive(Debug)]
struct Uas {
    invite: Message,
    sock: u32,
    from: SocketAddr,
    last: Bytes,
    answered: bool,
    acked: bool,
    interval: Duration,
    first_200: Option<Instant>,
}

#[derive(Debug)]
struct CallOp {
    caller: u32,
    callee_h: u32,
    local: usize,
    target: usize,
    phase: CallPhase,
    invite_step: u32,
    invite_cseq: u32,
    got_180: bool,
    remote_tag: Bytes,
    /// The Request-URI of in-dialog requests.
    dlg_uri: Bytes,
    /// Rendered `\r\nRoute: ...` lines.
    dlg_routes: Vec<u8>,
    dlg_sock: u32,
    dlg_to: SocketAddr,
    uas: Option<Uas>,
}

#[derive(Debug)]
enum Body {
    Free,
    Register { h: u32 },
    Call(Box<CallOp>),
}

#[derive(Debug)]
struct Op {
    generation: u32,
    body: Body,
    measured: bool,
    tx: Tx,
    /// Credentials line(s) of the current request.
    extra: Vec<u8>,
    seq: [u32; 5],
}

/// The sans-IO handset farm of one shard.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    stamp: Stamp,
    tpl: Templates,
    local_text: Vec<Vec<u8>>,
    ops: Vec<Op>,
    free: Vec<u32>,
    live: usize,
    handsets: Vec<Handset>,
    timers: Timers<TimerKey>,
    pacer: Option<Pacer>,
    phase: Phase,
    next_setup: usize,
    next_reg: u64,
    next_call: u64,
    setup_deadline: Option<Instant>,
    drain_deadline: Option<Instant>,
    out: Vec<u8>,
    transmits: Vec<Transmit>,
    rng: SmallRng,
    pub stats: Stats,
}

/// Writes one field of a request; everything a template may ask for.
struct Vals<'a> {
    stamp: &'a Stamp,
    local: &'a [u8],
    r: OpRef,
    user: u32,
    peer: u32,
    call_id: CallIdOf,
    cseq: u32,
    ruri: &'a [u8],
    to_tag: &'a [u8],
    extra: &'a [u8],
}

#[derive(Clone, Copy)]
enum CallIdOf {
    Register { user: u32, epoch: u32 },
    Call,
}

impl Vals<'_> {
    #[inline]
    fn write(&self, f: Field, out: &mut Vec<u8>) {
        match f {
            Field::Local => out.extend_from_slice(self.local),
            Field::Branch => self.stamp.push_branch(out, self.r),
            Field::User => push_dec(out, u64::from(self.user)),
            Field::Peer => push_dec(out, u64::from(self.peer)),
            Field::FromTag => match self.call_id {
                CallIdOf::Register { user, epoch } => {
                    out.push(b'u');
                    push_hex(out, u64::from(user));
                    out.push(b'.');
                    push_hex(out, u64::from(epoch));
                }
                CallIdOf::Call => {
                    out.push(b'f');
                    push_hex(out, u64::from(self.r.slot));
                    out.push(b'.');
                    push_hex(out, u64::from(self.r.generation));
                }
            },
            Field::ToTag => out.extend_from_slice(self.to_tag),
            Field::CallId => match self.call_id {
                CallIdOf::Register { user, epoch } => self.stamp.push_reg_call_id(out, user, epoch),
                CallIdOf::Call => self.stamp.push_call_id(out, self.r.slot, self.r.generation),
            },
            Field::CSeq => push_dec(out, u64::from(self.cseq)),
            Field::RequestUri => out.extend_from_slice(self.ruri),
            Field::Extra => out.extend_from_slice(self.extra),
        }
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig, now: Instant) -> Result<Engine, String> {
        if cfg.handsets.is_empty() || cfg.targets.is_empty() || cfg.locals.is_empty() {
            return Err("a shard needs handsets, targets and sockets".into());
        }
        if cfg.scenario != Scenario::Register && cfg.callers.is_empty() {
            return Err("a shard needs callers".into());
        }
        let tpl = Templates::build(&Shape {
            domain: &cfg.domain,
            user_prefix: &cfg.user_prefix,
            transport: cfg.transport.via_token(),
            expires: cfg.expires,
        })?;
        let local_text = cfg
            .locals
            .iter()
            .map(|a| a.to_string().into_bytes())
            .collect();
        let handsets = cfg
            .handsets
            .iter()
            .map(|&user| Handset {
                user,
                cseq: 0,
                epoch: 0,
                busy: false,
                registered: false,
                challenge: None,
                nc: 0,
            })
            .collect();
        let needs_setup = cfg.scenario != Scenario::Register;
        let (pacer, phase, setup_deadline) = if needs_setup {
            let n = cfg.handsets.len() as u64;
            let secs = n as f64 / cfg.setup_rate;
            let send_time = Duration::from_secs_f64(secs + 1.0);
            (
                Some(Pacer::new(now, cfg.setup_rate, n, send_time)),
                Phase::Setup,
                Some(now + send_time + cfg.timeout + Duration::from_secs(1)),
            )
        } else {
            (None, Phase::Ready, None)
        };
        Ok(Engine {
            stamp: Stamp::new(cfg.run_id, cfg.shard),
            rng: SmallRng::seed_from_u64(cfg.seed ^ u64::from(cfg.shard)),
            cfg,
            tpl,
            local_text,
            ops: Vec::with_capacity(1024),
            free: Vec::new(),
            live: 0,
            handsets,
            timers: Timers::default(),
            pacer,
            phase,
            next_setup: 0,
            next_reg: 0,
            next_call: 0,
            setup_deadline,
            drain_deadline: None,
            out: Vec::with_capacity(1 << 16),
            transmits: Vec::with_capacity(256),
            stats: Stats::default(),
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Open operations.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The messages to send, in order; clear them with [`Engine::clear_output`].
    pub fn output(&self) -> (&[u8], &[Transmit]) {
        (&self.out, &self.transmits)
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
        self.transmits.clear();
    }

    /// Starts the measured phase (all shards together, after setup).
    pub fn start_measure(&mut self, now: Instant) {
        self.stats.t0 = Some(now);
        self.pacer = Some(Pacer::new(
            now,
            self.cfg.rate,
            self.cfg.count,
            self.cfg.duration,
        ));
        self.phase = Phase::Measure;
    }

    /// Stops starting operations (an interrupted run); open ones get a
    /// short drain.
    pub fn stop(&mut self, now: Instant) {
        if let Some(p) = &mut self.pacer {
            p.stop();
        }
        if matches!(self.phase, Phase::Setup | Phase::Ready | Phase::Measure) {
            self.phase = Phase::Drain;
            self.drain_deadline = Some(now + self.cfg.drain.min(Duration::from_secs(2)));
        }
    }

    /// When the driver must call [`Engine::handle_timeout`] next.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let pacer = match self.phase {
            Phase::Setup | Phase::Measure => self.pacer.as_ref().and_then(|p| p.next_due(now)),
            _ => None,
        };
        [
            self.timers.next_deadline(),
            pacer,
            self.drain_deadline,
            self.setup_deadline.filter(|_| self.phase == Phase::Setup),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Starts due operations, fires due timers, advances the phase.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Setup => {
                let n = self
                    .pacer
                    .as_mut()
                    .map_or(0, |p| p.take_due(now, MAX_START_BATCH));
                for _ in 0..n {
                    if self.next_setup < self.handsets.len() {
                        let h = self.next_setup as u32;
                        self.next_setup += 1;
                        self.start_register(h, false, now);
                    }
                }
                let sent_all = self.pacer.as_ref().is_none_or(|p| p.finished(now));
                if (sent_all && self.live == 0) || self.setup_deadline.is_some_and(|d| now >= d) {
                    self.phase = Phase::Ready;
                }
            }
            Phase::Measure => {
                let n = self
                    .pacer
                    .as_mut()
                    .map_or(0, |p| p.take_due(now, MAX_START_BATCH));
                for _ in 0..n {
                    self.start_measured(now);
                }
                if self.pacer.as_ref().is_none_or(|p| p.finished(now)) {
                    self.phase = Phase::Drain;
                    self.drain_deadline = Some(now + self.cfg.drain);
                }
            }
            Phase::Ready | Phase::Drain | Phase::Done => {}
        }
        while let Some(e) = self.timers.pop_due(now) {
            self.on_timer(e.key, now);
        }
        if self.phase == Phase::Drain {
            if self.live == 0 {
                self.phase = Phase::Done;
            } else if self.drain_deadline.is_some_and(|d| now >= d) {
                self.abandon_all(now);
                self.phase = Phase::Done;
            }
        }
    }

    /// A message received on engine socket `sock` from `from`.
    pub fn handle_message(&mut self, sock: u32, from: SocketAddr, data: Bytes, now: Instant) {
        self.stats.msgs.received += 1;
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.stats.msgs.parse_errors += 1;
                return;
            }
        };
        if msg.is_response() {
            self.on_response(msg, now);
        } else {
            self.on_request(sock, from, msg, now);
        }
        if self.phase == Phase::Drain && self.live == 0 {
            self.phase = Phase::Done;
        }
    }

    // ---- starting operations ----------------------------------------------

    fn start_measured(&mut self, now: Instant) {
        let call = match self.cfg.scenario {
            Scenario::Register => false,
            Scenario::Call => true,
            Scenario::Mixed => {
                let total = self.cfg.mix_register + self.cfg.mix_call;
                self.rng.random_range(0..total) >= self.cfg.mix_register
            }
        };
        if call {
            self.start_call(now);
        } else {
            let h = (self.next_reg % self.handsets.len() as u64) as u32;
            self.next_reg += 1;
            self.start_register(h, true, now);
        }
    }

    fn alloc(&mut self, body: Body, measured: bool, tx: Tx) -> usize {
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.ops.push(Op {
                    generation: 0,
                    body: Body::Free,
                    measured: false,
                    tx,
                    extra: Vec::new(),
                    seq: [0; 5],
                });
                self.ops.len() - 1
            }
        };
        let op = &mut self.ops[slot];
        op.generation = op.generation.wrapping_add(1).max(1);
        op.body = body;
        op.measured = measured;
        op.tx = tx;
        op.extra.clear();
        self.live += 1;
        slot
    }

    fn release(&mut self, slot: usize) {
        let op = &mut self.ops[slot];
        if matches!(op.body, Body::Free) {
            return;
        }
        if let Body::Register { h } = op.body {
            self.handsets[h as usize].busy = false;
        }
        op.body = Body::Free;
        op.generation = op.generation.wrapping_add(1).max(1);
        op.extra = Vec::new();
        self.free.push(slot as u32);
        self.live -= 1;
    }

    fn target_of_handset(&self, h: u32) -> usize {
        h as usize % self.cfg.targets.len()
    }

    fn local_of_handset(&self, h: u32) -> usize {
        h as usize % self.cfg.n_local
    }

    /// The engine socket for a local socket and a target.
    fn sock(&self, local: usize, target: usize) -> u32 {
        match self.cfg.transport {
            Transport::Udp => local as u32,
            Transport::Tcp | Transport::Tls => (local * self.cfg.targets.len() + target) as u32,
        }
    }

    fn new_tx(
        &self,
        meth: Meth,
        step: u32,
        cseq: u32,
        sock: u32,
        to: SocketAddr,
        now: Instant,
    ) -> Tx {
        Tx {
            meth,
            step,
            cseq,
            first: now,
            interval: self.cfg.t1,
            provisional: false,
            active: true,
            sock,
            to,
            answered_challenge: false,
            timeout_armed: false,
        }
    }

    fn start_register(&mut self, h: u32, measured: bool, now: Instant) {
        let refresh_mode = self.cfg.refresh || self.cfg.scenario != Scenario::Register;
        let hs = &mut self.handsets[h as usize];
        if hs.busy {
            self.stats.skipped_busy += 1;
            return;
        }
        hs.busy = true;
        let refresh = refresh_mode && hs.registered;
        if !refresh && hs.cseq > 0 {
            hs.epoch += 1;
        }
        hs.cseq += 1;
        let cseq = hs.cseq;
        let t = self.target_of_handset(h);
        let sock = self.sock(self.local_of_handset(h), t);
        let tx = self.new_tx(Meth::Register, 0, cseq, sock, self.cfg.targets[t], now);
        let slot = self.alloc(Body::Register { h }, measured, tx);
        // pre-emptive credentials with the last nonce (RFC 3261 §22.4
        // allows reuse; a stale one gets a new challenge)
        if let (Some(pw), Some(ch)) = (&self.cfg.password, &self.handsets[h as usize].challenge) {
            let hs = &self.handsets[h as usize];
            let user = self.user_name(hs.user);
            let mut extra = std::mem::take(&mut self.ops[slot].extra);
            challenge::write_credentials(
                &mut extra,
                ch,
                &Answer {
                    username: user.as_bytes(),
                    password: pw.as_bytes(),
                    method: b"REGISTER",
                    uri: self.register_uri().as_bytes(),
                    nc: hs.nc + 1,
                    cnonce: &cnonce(slot, self.ops[slot].generation),
                },
                false,
            );
            self.ops[slot].extra = extra;
            self.handsets[h as usize].nc += 1;
        }
        if measured {
            self.stats.started(Kind::Register, now);
        } else {
            self.stats.setup.started += 1;
        }
        self.send_request(slot, now, false);
        self.arm_tx_timers(slot, now);
    }

    fn start_call(&mut self, now: Instant) {
        let k = self.next_call;
        self.next_call += 1;
        let callee_h = (k % self.handsets.len() as u64) as u32;
        let ci = (k % self.cfg.callers.len() as u64) as usize;
        let caller = self.cfg.callers[ci];
        let t_callee = self.target_of_handset(callee_h);
        let target = match self.cfg.call_routing {
            CallRouting::Cross => (t_callee + 1) % self.cfg.targets.len(),
            CallRouting::Same => t_callee,
        };
        // the caller on another socket than its callee: two handsets, two
        // transport addresses (a proxy may route by the address a request
        // came from)
        let n = self.cfg.n_local;
        let callee_local = self.local_of_handset(callee_h);
        let local = if n > 1 {
            (callee_local + 1 + ci % (n - 1)) % n
        } else {
            callee_local
        };
        let sock = self.sock(local, target);
        let to = self.cfg.targets[target];
        let tx = self.new_tx(Meth::Invite, 0, 1, sock, to, now);
        let call = CallOp {
            caller,
            callee_h,
            local,
            target,
            phase: CallPhase::Inviting,
            invite_step: 0,
            invite_cseq: 1,
            got_180: false,
            remote_tag: Bytes::new(),
            dlg_uri: Bytes::new(),
            dlg_routes: Vec::new(),
            dlg_sock: sock,
            dlg_to: to,
            uas: None,
        };
        let slot = self.alloc(Body::Call(Box::new(call)), true, tx);
        self.stats.started(Kind::Call, now);
        self.send_request(slot, now, false);
        self.arm_tx_timers(slot, now);
    }

    fn user_name(&self, user: u32) -> String {
        format!("{}{user}", self.cfg.user_prefix)
    }

    fn register_uri(&self) -> String {
        format!("sip:{}", self.cfg.domain)
    }

    fn aor_uri(&self, user: u32) -> String {
        format!("sip:{}{user}@{}", self.cfg.user_prefix, self.cfg.domain)
    }

    // ---- rendering -----------------------------------------------------------

    /// (Re)sends the operation's current request.
    fn send_request(&mut self, slot: usize, now: Instant, retransmission: bool) {
        let Engine {
            ops,
            out,
            transmits,
            stamp,
            tpl,
            local_text,
            handsets,
            stats,
            ..
        } = self;
        let op = &ops[slot];
        let tx = op.tx;
        let r = OpRef {
            slot: slot as u32,
            generation: op.generation,
            step: tx.step,
        };
        let start = out.len();
        let local = &local_text[tx.sock as usize];
        match &op.body {
            Body::Free => return,
            Body::Register { h } => {
                let hs = &handsets[*h as usize];
                let v = Vals {
                    stamp,
                    local,
                    r,
                    user: hs.user,
                    peer: 0,
                    call_id: CallIdOf::Register {
                        user: hs.user,
                        epoch: hs.epoch,
                    },
                    cseq: tx.cseq,
                    ruri: b"",
                    to_tag: b"",
                    extra: &op.extra,
                };
                tpl.register.render(out, |f, o| v.write(f, o));
            }
            Body::Call(c) => {
                let v = Vals {
                    stamp,
                    local,
                    r,
                    user: c.caller,
                    peer: handsets[c.callee_h as usize].user,
                    call_id: CallIdOf::Call,
                    cseq: tx.cseq,
                    ruri: &c.dlg_uri,
                    to_tag: &c.remote_tag,
                    extra: if tx.meth == Meth::Bye {
                        &c.dlg_routes
                    } else {
                        &op.extra
                    },
                };
                let t = if tx.meth == Meth::Bye {
                    &tpl.bye
                } else {
                    &tpl.invite
                };
                t.render(out, |f, o| v.write(f, o));
            }
        }
        transmits.push(Transmit {
            sock: tx.sock,
            to: tx.to,
            start: start as u32,
            end: out.len() as u32,
        });
        stats.msgs.sent += 1;
        if retransmission {
            stats.retransmitted(now);
        }
    }

    /// Sends an ACK: for a 2xx in the dialog (`to_tag` None: the dialog's
    /// route set and remote target), or for a non-2xx final response
    /// (hop-by-hop, the INVITE's branch, the response's To tag).
    fn send_ack(&mut self, slot: usize, non2xx: Option<(u32, u32, &[u8])>) {
        let Engine {
            ops,
            out,
            transmits,
            stamp,
            tpl,
            local_text,
            handsets,
            stats,
            cfg,
            ..
        } = self;
        let op = &ops[slot];
        let Body::Call(c) = &op.body else { return };
        let peer = handsets[c.callee_h as usize].user;
        let start = out.len();
        let (sock, to) = match non2xx {
            Some((step, cseq, to_tag)) => {
                let aor = format!("sip:{}{peer}@{}", cfg.user_prefix, cfg.domain);
                let v = Vals {
                    stamp,
                    local: &local_text[op.tx.sock as usize],
                    r: OpRef {
                        slot: slot as u32,
                        generation: op.generation,
                        step,
                    },
                    user: c.caller,
                    peer,
                    call_id: CallIdOf::Call,
                    cseq,
                    ruri: aor.as_bytes(),
                    to_tag,
                    extra: b"",
                };
                tpl.ack.render(out, |f, o| v.write(f, o));
                (op.tx.sock, op.tx.to)
            }
            None => {
                let v = Vals {
                    stamp,
                    local: &local_text[c.dlg_sock as usize],
                    r: OpRef {
                        slot: slot as u32,
                        generation: op.generation,
                        step: 0x100 | c.invite_step,
                    },
                    user: c.caller,
                    peer,
                    call_id: CallIdOf::Call,
                    cseq: c.invite_cseq,
                    ruri: &c.dlg_uri,
                    to_tag: &c.remote_tag,
                    extra: &c.dlg_routes,
                };
                tpl.ack.render(out, |f, o| v.write(f, o));
                (c.dlg_sock, c.dlg_to)
            }
        };
        transmits.push(Transmit {
            sock,
            to,
            start: start as u32,
            end: out.len() as u32,
        });
        stats.msgs.sent += 1;
    }

    fn push_raw(&mut self, sock: u32, to: SocketAddr, bytes: &[u8]) {
        let start = self.out.len();
        self.out.extend_from_slice(bytes);
        self.transmits.push(Transmit {
            sock,
            to,
            start: start as u32,
            end: self.out.len() as u32,
        });
        self.stats.msgs.sent += 1;
    }

    // ---- timers ------------------------------------------------------------

    fn arm(&mut self, slot: usize, class: TClass, after: Duration, now: Instant) {
        let op = &mut self.ops[slot];
        op.seq[class as usize] = op.seq[class as usize].wrapping_add(1);
        let key = TimerKey {
            slot: slot as u32,
            generation: op.generation,
            class,
            seq: op.seq[class as usize],
        };
        self.timers.arm(now, after, key);
    }

    fn disarm(&mut self, slot: usize, class: TClass) {
        let op = &mut self.ops[slot];
        op.seq[class as usize] = op.seq[class as usize].wrapping_add(1);
    }

    /// Arms a new transaction's first timer. Most transactions end before
    /// T1, so only T1 is armed now (one short FIFO); the long timeout is
    /// armed when T1 fires, for the few still open. The timeout queue thus
    /// holds rate × (timeout - T1) × (share still open at T1) entries
    /// instead of rate × timeout.
    fn arm_tx_timers(&mut self, slot: usize, now: Instant) {
        let (t1, timeout) = (self.cfg.t1, self.cfg.timeout);
        // a previous transaction of this operation may have armed one
        self.disarm(slot, TClass::Timeout);
        if timeout <= t1 {
            self.ops[slot].tx.timeout_armed = true;
            self.arm(slot, TClass::Timeout, timeout, now);
        }
        self.arm(slot, TClass::Retrans, t1, now);
    }

    fn on_timer(&mut self, k: TimerKey, now: Instant) {
        let slot = k.slot as usize;
        let Some(op) = self.ops.get(slot) else { return };
        if op.generation != k.generation
            || op.seq[k.class as usize] != k.seq
            || matches!(op.body, Body::Free)
        {
            return;
        }
        match k.class {
            TClass::Retrans => {
                let tx = op.tx;
                if !tx.active {
                    return;
                }
                if !tx.timeout_armed {
                    // T1 after the first transmission: the rest of the timeout
                    let rest = self.cfg.timeout - self.cfg.t1;
                    self.ops[slot].tx.timeout_armed = true;
                    self.arm(slot, TClass::Timeout, rest, now);
                }
                if self.cfg.transport.is_stream() || (tx.meth == Meth::Invite && tx.provisional) {
                    return;
                }
                self.send_request(slot, now, true);
                let next = if tx.meth == Meth::Invite {
                    tx.interval * 2
                } else if tx.provisional {
                    self.cfg.t2
                } else {
                    (tx.interval * 2).min(self.cfg.t2)
                };
                self.ops[slot].tx.interval = next;
                self.arm(slot, TClass::Retrans, next, now);
            }
            TClass::Timeout => {
                if op.tx.active {
                    let m = op.tx.meth;
                    self.finish(slot, Err(Fail::Timeout(m)), now);
                }
            }
            TClass::Hold => self.send_bye(slot, now),
            TClass::Answer => self.uas_answer(slot, now),
            TClass::UasRetrans => {
                let t2 = self.cfg.t2;
                let limit = 64 * self.cfg.t1;
                let Body::Call(c) = &mut self.ops[slot].body else {
                    return;
                };
                let Some(u) = &mut c.uas else { return };
                if u.acked || !u.answered || u.first_200.is_some_and(|f| now - f >= limit) {
                    return;
                }
                u.interval = (u.interval * 2).min(t2);
                let (sock, to, last, next) = (u.sock, u.from, u.last.clone(), u.interval);
                self.push_raw(sock, to, &last);
                self.stats.retransmitted(now);
                self.arm(slot, TClass::UasRetrans, next, now);
            }
        }
    }

    /// Ends an operation.
    fn finish(&mut self, slot: usize, result: Result<(), Fail>, now: Instant) {
        let op = &mut self.ops[slot];
        let kind = match op.body {
            Body::Free => return,
            Body::Register { h } => {
                self.handsets[h as usize].registered = result.is_ok();
                Kind::Register
            }
            Body::Call(_) => Kind::Call,
        };
        op.tx.active = false;
        if op.measured {
            match result {
                Ok(()) => self.stats.succeeded(kind, now),
                Err(f) => self.stats.failed(kind, f, now),
            }
        } else {
            match result {
                Ok(()) => self.stats.setup.succeeded += 1,
                Err(f) => {
                    self.stats.setup.failed += 1;
                    if matches!(f, Fail::Timeout(_)) {
                        self.stats.setup.timeouts += 1;
                    }
                }
            }
        }
        self.release(slot);
    }

    /// At the end of the drain: whatever is still open fails.
    fn abandon_all(&mut self, now: Instant) {
        for slot in 0..self.ops.len() {
            if !matches!(self.ops[slot].body, Body::Free) {
                self.finish(slot, Err(Fail::Unfinished), now);
            }
        }
    }

    // ---- responses (the UAC side) ------------------------------------------

    fn on_response(&mut self, msg: Message, now: Instant) {
        let Some(r) = msg.branch().and_then(|b| self.stamp.decode_branch(b)) else {
            self.stats.msgs.stray += 1;
            return;
        };
        let slot = r.slot as usize;
        let live = self
            .ops
            .get(slot)
            .is_some_and(|op| op.generation == r.generation && !matches!(op.body, Body::Free));
        if !live {
            self.stats.msgs.stray += 1;
            return;
        }
        let status = msg.status().unwrap_or(0);
        match self.ops[slot].body {
            Body::Register { h } => self.on_register_response(slot, h, r.step, status, &msg, now),
            Body::Call(_) => self.on_call_response(slot, r.step, status, &msg, now),
            Body::Free => {}
        }
    }

    fn on_register_response(
        &mut self,
        slot: usize,
        h: u32,
        step: u32,
        status: u16,
        msg: &Message,
        now: Instant,
    ) {
        let op = &self.ops[slot];
        if step != op.tx.step || !op.tx.active || *msg.cseq_method() != Method::Register {
            self.stats.msgs.stray += 1;
            return;
        }
        let measured = op.measured;
        if measured {
            self.stats.status(Meth::Register, status);
        }
        if status < 200 {
            self.ops[slot].tx.provisional = true;
            return;
        }
        let elapsed = micros(now - op.tx.first);
        if status == 401 || status == 407 {
            if op.tx.answered_challenge {
                return self.finish(
                    slot,
                    Err(Fail::Status(Meth::Register, status, asks_retry(msg))),
                    now,
                );
            }
            let (Some(pw), Some(ch)) = (
                self.cfg.password.clone(),
                challenge::choose(msg, status == 407),
            ) else {
                return self.finish(slot, Err(Fail::Auth(Meth::Register)), now);
            };
            if measured {
                self.stats.latency(Lat::Challenge, elapsed, now);
            }
            let hs = &mut self.handsets[h as usize];
            hs.cseq += 1;
            hs.nc = 1;
            let (cseq, user_no) = (hs.cseq, hs.user);
            let user = self.user_name(user_no);
            let mut extra = std::mem::take(&mut self.ops[slot].extra);
            extra.clear();
            challenge::write_credentials(
                &mut extra,
                &ch,
                &Answer {
                    username: user.as_bytes(),
                    password: pw.as_bytes(),
                    method: b"REGISTER",
                    uri: self.register_uri().as_bytes(),
                    nc: 1,
                    cnonce: &cnonce(slot, self.ops[slot].generation),
                },
                status == 407,
            );
            self.handsets[h as usize].challenge = Some(Box::new(ch));
            let old = self.ops[slot].tx;
            let mut tx = self.new_tx(Meth::Register, old.step + 1, cseq, old.sock, old.to, now);
            tx.answered_challenge = true;
            let op = &mut self.ops[slot];
            op.extra = extra;
            op.tx = tx;
            self.send_request(slot, now, false);
            self.arm_tx_timers(slot, now);
            return;
        }
        if (200..300).contains(&status) {
            if measured {
                self.stats.latency(Lat::Register, elapsed, now);
            }
            self.finish(slot, Ok(()), now);
        } else {
            self.finish(
                slot,
                Err(Fail::Status(Meth::Register, status, asks_retry(msg))),
                now,
            );
        }
    }

    fn on_call_response(
        &mut self,
        slot: usize,
        step: u32,
        status: u16,
        msg: &Message,
        now: Instant,
    ) {
        let op = &self.ops[slot];
        let Body::Call(c) = &op.body else { return };
        let tx = op.tx;
        let (invite_step, phase, got_180, caller, callee_h) =
            (c.invite_step, c.phase, c.got_180, c.caller, c.callee_h);
        let same_dialog = msg.to_tag() == Some(&c.remote_tag[..]);
        match msg.cseq_method() {
            Method::Invite => {
                if step != invite_step {
                    // a retransmitted final answer to an earlier INVITE
                    // (challenged): ACK it again
                    if status >= 300 && step < invite_step {
                        let tag = msg.to_tag().unwrap_or_default().to_vec();
                        self.send_ack(slot, Some((step, msg.cseq(), &tag)));
                    } else {
                        self.stats.msgs.stray += 1;
                    }
                    return;
                }
                if phase != CallPhase::Inviting {
                    // the 2xx again (our ACK was lost): ACK it again
                    if (200..300).contains(&status) && same_dialog {
                        self.send_ack(slot, None);
                    } else if status >= 300 {
                        let tag = msg.to_tag().unwrap_or_default().to_vec();
                        self.send_ack(slot, Some((step, msg.cseq(), &tag)));
                    } else {
                        self.stats.msgs.stray += 1;
                    }
                    return;
                }
                self.stats.status(Meth::Invite, status);
                let elapsed = micros(now - tx.first);
                if status < 200 {
                    self.ops[slot].tx.provisional = true;
                    if (status == 180 || status == 183) && !got_180 {
                        if let Body::Call(c) = &mut self.ops[slot].body {
                            c.got_180 = true;
                        }
                        self.stats.latency(Lat::Invite180, elapsed, now);
                    }
                    return;
                }
                if status < 300 {
                    self.stats.latency(Lat::Invite200, elapsed, now);
                    self.establish(slot, msg);
                    self.ops[slot].tx.active = false;
                    self.disarm(slot, TClass::Retrans);
                    self.disarm(slot, TClass::Timeout);
                    self.send_ack(slot, None);
                    if self.cfg.hold.is_zero() {
                        self.send_bye(slot, now);
                    } else {
                        let hold = self.cfg.hold;
                        self.arm(slot, TClass::Hold, hold, now);
                    }
                    return;
                }
                // a final non-2xx: ACK it (hop-by-hop, same branch)
                let tag = msg.to_tag().unwrap_or_default().to_vec();
                self.send_ack(slot, Some((step, msg.cseq(), &tag)));
                if (status == 401 || status == 407) && !tx.answered_challenge {
                    let Some(pw) = self.cfg.password.clone() else {
                        return self.finish(slot, Err(Fail::Auth(Meth::Invite)), now);
                    };
                    let Some(ch) = challenge::choose(msg, status == 407) else {
                        return self.finish(slot, Err(Fail::Auth(Meth::Invite)), now);
                    };
                    self.stats.latency(Lat::Challenge, elapsed, now);
                    let user = self.user_name(caller);
                    let uri = self.aor_uri(self.handsets[callee_h as usize].user);
                    let mut extra = Vec::with_capacity(256);
                    challenge::write_credentials(
                        &mut extra,
                        &ch,
                        &Answer {
                            username: user.as_bytes(),
                            password: pw.as_bytes(),
                            method: b"INVITE",
                            uri: uri.as_bytes(),
                            nc: 1,
                            cnonce: &cnonce(slot, self.ops[slot].generation),
                        },
                        status == 407,
                    );
                    let mut ntx =
                        self.new_tx(Meth::Invite, tx.step + 1, tx.cseq + 1, tx.sock, tx.to, now);
                    ntx.answered_challenge = true;
                    let op = &mut self.ops[slot];
                    op.extra = extra;
                    op.tx = ntx;
                    if let Body::Call(c) = &mut op.body {
                        c.invite_step = ntx.step;
                        c.invite_cseq = ntx.cseq;
                    }
                    self.send_request(slot, now, false);
                    self.arm_tx_timers(slot, now);
                    return;
                }
                self.finish(
                    slot,
                    Err(Fail::Status(Meth::Invite, status, asks_retry(msg))),
                    now,
                );
            }
            Method::Bye => {
                if phase != CallPhase::Byeing || step != tx.step || !tx.active {
                    self.stats.msgs.stray += 1;
                    return;
                }
                self.stats.status(Meth::Bye, status);
                if status < 200 {
                    self.ops[slot].tx.provisional = true;
                    return;
                }
                if status < 300 {
                    self.stats.latency(Lat::Bye200, micros(now - tx.first), now);
                    self.finish(slot, Ok(()), now);
                } else {
                    self.finish(
                        slot,
                        Err(Fail::Status(Meth::Bye, status, asks_retry(msg))),
                        now,
                    );
                }
            }
            _ => self.stats.msgs.stray += 1,
        }
    }

    /// The dialog from the 2xx: remote tag, remote target (Contact), route
    /// set (Record-Route reversed, RFC 3261 §12.1.2) and where in-dialog
    /// requests go (the first Route if loose, §12.2.1.1; a strict first
    /// route becomes the Request-URI and the remote target the last Route).
    fn establish(&mut self, slot: usize, msg: &Message) {
        let mut routes: Vec<NameAddr<'_>> = msg.record_routes().collect();
        routes.reverse();
        let contact = msg.contacts().find_map(|c| match c {
            Contact::Addr(na) => Some(na),
            Contact::Wildcard => None,
        });
        let op = &self.ops[slot];
        let Body::Call(c) = &op.body else { return };
        let remote_target: Bytes = match &contact {
            Some(na) => msg.share(na.uri().as_bytes()),
            None => Bytes::from(self.aor_uri(self.handsets[c.callee_h as usize].user)),
        };
        let mut lines = Vec::with_capacity(64 * routes.len());
        let (dlg_uri, hop) = match routes.first() {
            Some(first) if !first.uri().is_loose_route() => {
                for r in &routes[1..] {
                    lines.extend_from_slice(b"\r\nRoute: ");
                    lines.extend_from_slice(r.as_bytes());
                }
                lines.extend_from_slice(b"\r\nRoute: <");
                lines.extend_from_slice(&remote_target);
                lines.push(b'>');
                (msg.share(first.uri().as_bytes()), addr_of(first.uri()))
            }
            Some(first) => {
                for r in &routes {
                    lines.extend_from_slice(b"\r\nRoute: ");
                    lines.extend_from_slice(r.as_bytes());
                }
                (remote_target.clone(), addr_of(first.uri()))
            }
            None => {
                let hop = Uri::parse(&remote_target).ok().and_then(|u| addr_of(&u));
                (remote_target.clone(), hop)
            }
        };
        let (local, orig_target) = (c.local, c.target);
        let (sock, to) = match hop {
            Some(a) => match self.cfg.transport {
                Transport::Udp => (self.sock(local, orig_target), a),
                Transport::Tcp | Transport::Tls => {
                    let t = self
                        .cfg
                        .targets
                        .iter()
                        .position(|x| *x == a)
                        .unwrap_or(orig_target);
                    (self.sock(local, t), self.cfg.targets[t])
                }
            },
            None => (op.tx.sock, op.tx.to),
        };
        let remote_tag = msg.to_tag().map(|t| msg.share(t)).unwrap_or_default();
        if let Body::Call(c) = &mut self.ops[slot].body {
            c.remote_tag = remote_tag;
            c.dlg_uri = dlg_uri;
            c.dlg_routes = lines;
            c.dlg_sock = sock;
            c.dlg_to = to;
            c.phase = CallPhase::Holding;
        }
    }

    fn send_bye(&mut self, slot: usize, now: Instant) {
        let op = &self.ops[slot];
        let Body::Call(c) = &op.body else { return };
        if c.phase != CallPhase::Holding {
            return;
        }
        let (sock, to, cseq) = (c.dlg_sock, c.dlg_to, c.invite_cseq + 1);
        let step = op.tx.step + 1;
        let tx = self.new_tx(Meth::Bye, step, cseq, sock, to, now);
        let op = &mut self.ops[slot];
        op.tx = tx;
        if let Body::Call(c) = &mut op.body {
            c.phase = CallPhase::Byeing;
        }
        self.send_request(slot, now, false);
        self.arm_tx_timers(slot, now);
    }

    // ---- requests (the UAS side) -------------------------------------------

    fn on_request(&mut self, sock: u32, from: SocketAddr, msg: Message, now: Instant) {
        let method = msg.method().clone();
        if matches!(method, Method::Options) {
            return self.reply(sock, from, &msg, 200);
        }
        let slot = self
            .stamp
            .decode_call_id(msg.call_id())
            .map(|r| (r.slot as usize, r.generation))
            .filter(|(s, g)| {
                self.ops
                    .get(*s)
                    .is_some_and(|op| op.generation == *g && matches!(op.body, Body::Call(_)))
            })
            .map(|(s, _)| s);
        let Some(slot) = slot else {
            self.stats.msgs.stray += 1;
            return match method {
                Method::Ack => {}
                Method::Invite | Method::Bye | Method::Cancel => self.reply(sock, from, &msg, 481),
                _ => self.reply(sock, from, &msg, 501),
            };
        };
        match method {
            Method::Invite => self.uas_invite(slot, sock, from, msg, now),
            Method::Ack => {
                if let Body::Call(c) = &mut self.ops[slot].body
                    && let Some(u) = &mut c.uas
                {
                    u.acked = true;
                }
            }
            Method::Bye => {
                if let Body::Call(c) = &mut self.ops[slot].body
                    && let Some(u) = &mut c.uas
                {
                    u.acked = true;
                }
                self.reply(sock, from, &msg, 200);
            }
            Method::Cancel => {
                self.reply(sock, from, &msg, 200);
                let mut terminated = None;
                if let Body::Call(c) = &mut self.ops[slot].body
                    && let Some(u) = &mut c.uas
                    && !u.answered
                {
                    u.answered = true;
                    u.acked = true;
                    terminated = Some((u.sock, u.from, uas_tag(slot, self.ops[slot].generation)));
                }
                if let Some((s, f, tag)) = terminated {
                    let resp = {
                        let Body::Call(c) = &self.ops[slot].body else {
                            return;
                        };
                        let Some(u) = &c.uas else { return };
                        u.invite
                            .response_writer(487, Some(tag.as_bytes()))
                            .finish(b"")
                    };
                    self.push_raw(s, f, &resp);
                    self.stats.msgs.uas_responses += 1;
                }
            }
            _ => self.reply(sock, from, &msg, 501),
        }
    }

    fn reply(&mut self, sock: u32, to: SocketAddr, req: &Message, status: u16) {
        let mut w = req.response_writer(status, Some(b"rlx"));
        if status == 200 && *req.method() == Method::Options {
            w.header(HeaderName::Allow, b"INVITE, ACK, BYE, CANCEL, OPTIONS");
        }
        let b = w.finish(b"");
        self.push_raw(sock, to, &b);
        self.stats.msgs.uas_responses += 1;
    }

    /// A response of the callee to its INVITE: Record-Route copied
    /// (§12.1.1), our Contact, SDP in the 200.
    fn uas_response(&self, slot: usize, invite: &Message, sock: u32, status: u16) -> Bytes {
        let tag = uas_tag(slot, self.ops[slot].generation);
        let mut w = invite.response_writer(status, Some(tag.as_bytes()));
        for rr in invite.header_lines(HeaderName::RecordRoute) {
            w.header(HeaderName::RecordRoute, rr);
        }
        let callee = match &self.ops[slot].body {
            Body::Call(c) => self.handsets[c.callee_h as usize].user,
            _ => 0,
        };
        w.header_fmt(
            HeaderName::Contact,
            format_args!(
                "<sip:{}{callee}@{};transport={}>",
                self.cfg.user_prefix,
                self.cfg.locals[sock as usize],
                self.cfg.transport.via_token().to_ascii_lowercase()
            ),
        );
        if status == 200 {
            w.header(HeaderName::ContentType, b"application/sdp");
            w.finish(crate::template::SDP_ANSWER)
        } else {
            w.finish(b"")
        }
    }

    fn uas_invite(&mut self, slot: usize, sock: u32, from: SocketAddr, msg: Message, now: Instant) {
        let Body::Call(c) = &self.ops[slot].body else {
            return;
        };
        if let Some(u) = &c.uas {
            // a retransmitted INVITE: the last response again
            let (s, f, last) = (u.sock, u.from, u.last.clone());
            self.push_raw(s, f, &last);
            self.stats.msgs.uas_responses += 1;
            return;
        }
        let ringing = self.uas_response(slot, &msg, sock, 180);
        self.push_raw(sock, from, &ringing);
        self.stats.msgs.uas_responses += 1;
        if let Body::Call(c) = &mut self.ops[slot].body {
            c.uas = Some(Uas {
                invite: msg,
                sock,
                from,
                last: ringing,
                answered: false,
                acked: false,
                interval: self.cfg.t1,
                first_200: None,
            });
        }
        if self.cfg.answer.is_zero() {
            self.uas_answer(slot, now);
        } else {
            let a = self.cfg.answer;
            self.arm(slot, TClass::Answer, a, now);
        }
    }

    fn uas_answer(&mut self, slot: usize, now: Instant) {
        let Body::Call(c) = &self.ops[slot].body else {
            return;
        };
        let Some(u) = &c.uas else { return };
        if u.answered {
            return;
        }
        let ok = self.uas_response(slot, &u.invite, u.sock, 200);
        let (sock, from) = (u.sock, u.from);
        self.push_raw(sock, from, &ok);
        self.stats.msgs.uas_responses += 1;
        if let Body::Call(c) = &mut self.ops[slot].body
            && let Some(u) = &mut c.uas
        {
            u.answered = true;
            u.last = ok;
            u.first_200 = Some(now);
        }
        if self.cfg.transport == Transport::Udp {
            let t1 = self.cfg.t1;
            self.arm(slot, TClass::UasRetrans, t1, now);
        }
    }
}

fn uas_tag(slot: usize, generation: u32) -> String {
    format!("a{slot:x}.{generation:x}")
}

fn cnonce(slot: usize, generation: u32) -> Vec<u8> {
    format!("{slot:x}{generation:08x}").into_bytes()
}

/// The transport address of a SIP URI with an IP host (default port 5060,
/// 5061 for sips); `None` for a domain name.
fn addr_of(u: &Uri<'_>) -> Option<SocketAddr> {
    let ip = u.host()?.ip()?;
    let port = u
        .port()
        .unwrap_or(if u.scheme() == ringmesh_sip::Scheme::Sips {
            5061
        } else {
            5060
        });
    Some(SocketAddr::new(ip, port))
}
