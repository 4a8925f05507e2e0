//! # Transactions: RFC 3261 §17 with the RFC 6026 corrections, sans-IO
//!
//! One [`TransactionLayer`] holds every client and server transaction of a
//! node. It is owned by one driver task and driven quinn-proto style:
//!
//! - inputs: [`TransactionLayer::handle_message`] for every parsed message
//!   that arrives, [`TransactionLayer::respond`] and
//!   [`TransactionLayer::send_request`] for what the transaction user (the
//!   registrar or proxy core, "TU") sends, [`TransactionLayer::cancel`],
//!   and [`TransactionLayer::handle_timeout`] when the deadline returned by
//!   [`TransactionLayer::poll_timeout`] has passed;
//! - outputs: [`TransactionLayer::poll_transmit`] (bytes and where to send
//!   them) and [`TransactionLayer::poll_event`] (what the TU must act on).
//!
//! Time is always an input (`now`), so tests run the machines on a virtual
//! clock. The destination type `D` is the driver's handle for a peer or
//! flow (a socket address, a connection id...); the layer only clones it.
//!
//! | machine | states | timers |
//! |---|---|---|
//! | client INVITE (§17.1.1, RFC 6026) | Calling, Proceeding, Accepted, Completed | A, B, C, D, M |
//! | client non-INVITE (§17.1.2) | Trying, Proceeding, Completed | E, F, K |
//! | server INVITE (§17.2.1, RFC 6026) | Proceeding, Accepted, Completed, Confirmed | G, H, I, L |
//! | server non-INVITE (§17.2.2) | Trying, Proceeding, Completed | J |
//!
//! Matching follows §17.1.3 (client: top Via branch and CSeq method) and
//! §17.2.3 (server: branch, sent-by and method, with an ACK matching its
//! INVITE), with the RFC 2543 rule when the branch lacks the `z9hG4bK`
//! cookie (`key.rs`). Timers are data (`timer.rs`): one min-heap of deadlines
//! with lazy deletion, O(log n) per timer, never a scan of the table.
//!
//! What the layer does for the TU on its own:
//! - absorbs request retransmissions and answers them with the last
//!   response sent;
//! - writes and sends the ACK for a 3xx–6xx answer to a client INVITE
//!   ([`Message::ack_for`]);
//! - sends the CANCEL asked for with [`TransactionLayer::cancel`] as soon
//!   as the INVITE has had a provisional response (§9.1) and gives the
//!   INVITE 64*T1 more to end with a final response before reporting
//!   [`Event::Timeout`];
//! - runs the proxy's Timer C (§16.6 step 11): [`Event::TimerC`] asks the
//!   TU to cancel the branch; the same 64*T1 guard then applies.
//!
//! Every transaction ends with exactly one [`Event::Terminated`], so the
//! TU can drop what it keeps per transaction. A transaction the TU never
//! answers stays until it does: a proxy always answers eventually (its
//! client side times out and it sends 408).
//!
//! The layer never limits how many transactions it holds: the driver sheds
//! load before [`TransactionLayer::handle_message`] (503, Retry-After)
//! when [`TransactionLayer::active`] is too high.
//!
//! ## Memory
//!
//! Transactions are indexed by a 128-bit keyed fingerprint of their match
//! key (`key.rs`), so none allocates a key. A client INVITE keeps only the
//! bytes it sent, parsed again in the rare cases that need more (the ACK
//! for a 3xx–6xx, a CANCEL), and drops them once a final response came.
//! A server non-INVITE transaction that answered finally over UDP spends
//! Timer J (64*T1) in the *linger table* (`linger.rs`) instead of the
//! transaction table: its match fingerprint, where to answer, and a copy of
//! the final response packed into a shared arena. That is what a register
//! storm leaves behind for 32 s, so it is kept to little more than the
//! response bytes, and it expires by generations, never one by one. Its
//! [`Event::Terminated`] comes as it moves there: the TU has nothing left
//! to do for it, and retransmissions are answered without the TU.

mod key;
mod linger;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::Message;
use crate::method::Method;
use key::{Fingerprint, FingerprintMap, Fingerprinter, Rule};
use linger::LingerTable;
pub use timer::Timers;
use timer::{Deadlines, Id, Slot, TimerTable};

/// A client transaction, as returned by [`TransactionLayer::send_request`].
/// Keys are never reused for another transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey(Id);

/// A server transaction, as announced by [`Event::Request`] or
/// [`Event::Cancel`]. Keys are never reused for another transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerKey(Id);

/// Either kind of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransactionKey {
    Client(ClientKey),
    Server(ServerKey),
}

/// What the TU must act on, in the order it happened.
#[derive(Debug)]
pub enum Event<D> {
    /// A new request: a server transaction was created for it. Answer it
    /// with [`TransactionLayer::respond`]. Retransmissions are absorbed.
    Request {
        server: ServerKey,
        msg: Message,
        from: D,
    },
    /// An ACK that is not part of a server transaction: the ACK for a 2xx
    /// (its own transaction, §17), or one that matched an INVITE server
    /// transaction in Accepted (RFC 6026). A proxy forwards it
    /// statelessly.
    Ack { msg: Message, from: D },
    /// A CANCEL: `server` is its own (non-INVITE) server transaction,
    /// `invite` the INVITE server transaction it cancels (§9.2), if one
    /// is still live. Answer the CANCEL (200, or 481 without `invite`),
    /// then the INVITE with 487 if it is still unanswered.
    Cancel {
        server: ServerKey,
        invite: Option<ServerKey>,
        msg: Message,
        from: D,
    },
    /// A response for a client transaction, after the machine's filtering:
    /// retransmitted 3xx–6xx are absorbed (and re-ACKed), every 2xx to an
    /// INVITE is passed up (RFC 6026: each one may come from another fork).
    Response { client: ClientKey, msg: Message },
    /// A response that matches no client transaction; a proxy forwards it
    /// statelessly (§16.7).
    StrayResponse { msg: Message },
    /// No final response: Timer B or F fired, or a cancelled (or Timer C)
    /// INVITE had no final response 64*T1 later. The TU acts as if it got
    /// a 408 (§8.1.3.1, §16.7 step 1). The transaction is over.
    Timeout { client: ClientKey },
    /// The driver reported that the request could not be sent
    /// ([`TransactionLayer::transport_error`]): act as if a 503 came
    /// (§8.1.3.1). The transaction is over.
    TransportError { client: ClientKey },
    /// Timer C fired on an INVITE still in Proceeding: the TU should call
    /// [`TransactionLayer::cancel`] and answer upstream when the final
    /// response (or [`Event::Timeout`]) comes.
    TimerC { client: ClientKey },
    /// Timer H fired: the ACK for a 3xx–6xx answer never came.
    ServerTimeout { server: ServerKey },
    /// The transaction is gone; drop any state kept for it.
    Terminated(TransactionKey),
}

/// A TU call the layer cannot carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    #[error("no such transaction (it has terminated)")]
    UnknownTransaction,
    #[error("the transaction already sent its final response")]
    AlreadyFinal,
    #[error("status code outside 100..=699")]
    BadStatus,
    #[error("not a request")]
    NotARequest,
    #[error("an ACK is not sent in a client transaction")]
    Ack,
    #[error("the request has no Via branch")]
    NoBranch,
    #[error("a client transaction with this branch and method is live")]
    Duplicate,
    #[error("only an INVITE client transaction can be cancelled")]
    NotInvite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientInviteState {
    Calling,
    Proceeding,
    Accepted,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelState {
    None,
    /// Asked for before any provisional response: sent on the first one.
    Pending,
    Sent,
}

#[derive(Debug)]
struct ClientInvite {
    state: ClientInviteState,
    /// The INVITE as sent: retransmitted by Timer A, parsed again to write
    /// the ACK for a 3xx–6xx or a CANCEL; dropped at the final response.
    request: Option<Bytes>,
    /// The ACK for the final 3xx–6xx, re-sent on its retransmissions.
    ack: Option<Bytes>,
    /// Timer C counts from here: the send, then each non-100 provisional.
    c_base: Instant,
    cancel: CancelState,
    /// Timer C fired or the CANCEL went out: the give-up slot now holds
    /// the 64*T1 guard.
    guarded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonInviteState {
    Trying,
    Proceeding,
    Completed,
}

#[derive(Debug)]
struct ClientNonInvite {
    state: NonInviteState,
    request: Bytes,
    /// A CANCEL the layer sent on its own: no events.
    silent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerInviteState {
    Proceeding,
    Accepted,
    Completed,
    Confirmed,
}

#[derive(Debug)]
struct ServerInvite {
    state: ServerInviteState,
    /// The last provisional (Proceeding) or the final 3xx–6xx (Completed).
    last: Option<Bytes>,
    /// Matched by the RFC 2543 rule: an ACK must carry the To tag of our
    /// final response (§17.2.3). `Some(None)` until that response is sent.
    legacy_to_tag: Option<Option<Box<[u8]>>>,
}

#[derive(Debug)]
struct ServerNonInvite {
    state: NonInviteState,
    last: Option<Bytes>,
}

/// The four machines of RFC 3261 §17, named as the RFC names them.
#[allow(clippy::enum_variant_names)]
#[derive(Debug)]
enum Machine {
    ClientInvite(ClientInvite),
    ClientNonInvite(ClientNonInvite),
    ServerInvite(ServerInvite),
    ServerNonInvite(ServerNonInvite),
}

#[derive(Debug)]
struct Txn<D> {
    /// The fingerprint of the match key it is indexed under.
    key: Fingerprint,
    /// Where requests (client) or responses (server) go.
    dest: D,
    reliable: bool,
    deadlines: Deadlines,
    /// The current retransmission interval (A, E, G).
    interval: Duration,
    machine: Machine,
}

impl<D> Txn<D> {
    fn is_client(&self) -> bool {
        matches!(
            self.machine,
            Machine::ClientInvite(_) | Machine::ClientNonInvite(_)
        )
    }
    fn is_silent(&self) -> bool {
        matches!(&self.machine, Machine::ClientNonInvite(c) if c.silent)
    }
}

#[derive(Debug)]
struct SlabEntry<D> {
    generation: u32,
    txn: Option<Txn<D>>,
}

/// What a machine wants the layer to do after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Stay,
    Terminate,
    /// A client INVITE with a pending CANCEL got its first provisional.
    SendCancel,
    /// A server non-INVITE answered finally over UDP: Timer J runs in the
    /// linger table.
    Linger,
}

/// The parts of the layer a machine writes to while it is borrowed.
struct Cx<'a, D> {
    timers: &'a Timers,
    table: &'a mut TimerTable,
    transmits: &'a mut VecDeque<(D, Bytes)>,
    events: &'a mut VecDeque<Event<D>>,
}

/// Every transaction of a node; see the [module docs](self).
#[derive(Debug)]
pub struct TransactionLayer<D> {
    timers: Timers,
    slab: Vec<SlabEntry<D>>,
    free: Vec<u32>,
    live: usize,
    clients: FingerprintMap<Id>,
    servers: FingerprintMap<Id>,
    fingerprints: Fingerprinter,
    /// Completed server non-INVITE transactions in Timer J.
    linger: LingerTable<D>,
    table: TimerTable,
    transmits: VecDeque<(D, Bytes)>,
    events: VecDeque<Event<D>>,
    scratch: Vec<u8>,
}

fn txn_mut<D>(slab: &mut [SlabEntry<D>], id: Id) -> Option<&mut Txn<D>> {
    slab.get_mut(id.index as usize)
        .filter(|e| e.generation == id.generation)
        .and_then(|e| e.txn.as_mut())
}

impl<D: Clone> TransactionLayer<D> {
    /// A layer with these timer values, each clamped to 1 ms ..= 1 day
    /// (T2 at least T1).
    pub fn new(timers: Timers) -> Self {
        Self::with_capacity(timers, 0)
    }

    /// A layer with room for about `transactions` live and lingering
    /// transactions before any table grows. Growing a table of hundreds of
    /// thousands of entries rehashes or moves them all at once, a pause of
    /// tens of milliseconds a busy node should take at start, not under
    /// load. Untouched capacity costs address space, not memory.
    pub fn with_capacity(timers: Timers, transactions: usize) -> Self {
        let mut l = Self::empty(timers);
        l.slab.reserve_exact(transactions);
        l.free.reserve_exact(transactions);
        l.clients.reserve(transactions);
        l.servers.reserve(transactions);
        l.table.reserve(transactions * 2);
        l.linger = LingerTable::new(l.timers.timeout(), transactions);
        l
    }

    fn empty(timers: Timers) -> Self {
        let timers = timers.sanitised();
        TransactionLayer {
            timers,
            slab: Vec::new(),
            free: Vec::new(),
            live: 0,
            clients: FingerprintMap::default(),
            servers: FingerprintMap::default(),
            fingerprints: Fingerprinter::new(),
            linger: LingerTable::new(timers.timeout(), 0),
            table: TimerTable::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::with_capacity(256),
        }
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Live transactions, client and server, those lingering in Timer J
    /// included.
    pub fn len(&self) -> usize {
        self.live + self.linger.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Transactions that still take part in a exchange: all but those
    /// that only absorb retransmissions during Timer J. What load shedding
    /// looks at.
    pub fn active(&self) -> usize {
        self.live
    }

    /// Completed server non-INVITE transactions waiting out Timer J.
    pub fn lingering(&self) -> usize {
        self.linger.len()
    }

    /// A message arrived from `from`; `reliable` is true for TCP, TLS,
    /// WebSocket and overlay links (no retransmissions, zero-length
    /// linger timers). For a request, `from` must be where responses go
    /// (§18.2.2: the source address and port when the Via has `rport` or
    /// the transport is a stream); the layer sends every response there.
    pub fn handle_message(&mut self, msg: Message, from: D, reliable: bool, now: Instant) {
        if msg.is_response() {
            self.on_response(msg, now);
        } else if *msg.method() == Method::Ack {
            self.on_ack(msg, from, now);
        } else {
            self.on_request(msg, from, reliable);
        }
        self.tidy();
    }

    /// The TU answers in a server transaction: `response` is the whole
    /// message, already written, with status `status`. Provisional
    /// responses, then one final one; on an INVITE, 2xx retransmissions
    /// (or a 2xx from another fork) may follow in Accepted.
    pub fn respond(
        &mut self,
        server: ServerKey,
        status: u16,
        response: Bytes,
        now: Instant,
    ) -> Result<(), TransactionError> {
        if !(100..=699).contains(&status) {
            return Err(TransactionError::BadStatus);
        }
        let id = server.0;
        let (txn, mut cx) = self.split(id).ok_or(TransactionError::UnknownTransaction)?;
        let next = txn.respond(id, status, response, now, &mut cx)?;
        self.after(id, next, now);
        self.tidy();
        Ok(())
    }

    /// The TU sends `request` (already written, with its own Via branch)
    /// to `dest` in a new client transaction: INVITE or non-INVITE by its
    /// method. Sending a CANCEL this way also starts the 64*T1 guard on
    /// the INVITE it cancels; [`TransactionLayer::cancel`] is simpler.
    pub fn send_request(
        &mut self,
        request: Message,
        dest: D,
        reliable: bool,
        now: Instant,
    ) -> Result<ClientKey, TransactionError> {
        if !request.is_request() {
            return Err(TransactionError::NotARequest);
        }
        let branch = request.branch().ok_or(TransactionError::NoBranch)?;
        self.send_request_raw(
            request.raw().clone(),
            request.method(),
            branch,
            dest,
            reliable,
            now,
        )
    }

    /// [`TransactionLayer::send_request`] for a request the TU has just
    /// written and need not parse: `request` must be a well-formed request
    /// with method `method` and `branch` in its top Via (a proxy's
    /// forwarded copy, from [`Message::forward_writer`]).
    pub fn send_request_raw(
        &mut self,
        request: Bytes,
        method: &Method,
        branch: &[u8],
        dest: D,
        reliable: bool,
        now: Instant,
    ) -> Result<ClientKey, TransactionError> {
        if *method == Method::Ack {
            return Err(TransactionError::Ack);
        }
        if branch.is_empty() {
            return Err(TransactionError::NoBranch);
        }
        key::client(&mut self.scratch, branch, method);
        let fp = self.fingerprints.of(&self.scratch);
        if self.clients.contains_key(&fp) {
            return Err(TransactionError::Duplicate);
        }
        let cancelled_branch = (*method == Method::Cancel).then(|| branch.to_vec());
        let bytes = request;
        let machine = if *method == Method::Invite {
            Machine::ClientInvite(ClientInvite {
                state: ClientInviteState::Calling,
                request: Some(bytes.clone()),
                ack: None,
                c_base: now,
                cancel: CancelState::None,
                guarded: false,
            })
        } else {
            Machine::ClientNonInvite(ClientNonInvite {
                state: NonInviteState::Trying,
                request: bytes.clone(),
                silent: false,
            })
        };
        let id = self.start_client(machine, fp, bytes, dest, reliable, now);
        if let Some(branch) = cancelled_branch {
            key::client(&mut self.scratch, &branch, &Method::Invite);
            let fp = self.fingerprints.of(&self.scratch);
            if let Some(&invite) = self.clients.get(&fp) {
                self.guard_invite(invite, now);
            }
        }
        self.tidy();
        Ok(ClientKey(id))
    }

    /// Cancels an INVITE client transaction (§9.1): the layer writes the
    /// CANCEL ([`Message::cancel_for`]) and sends it in its own, silent
    /// transaction to the same destination, at once if a provisional
    /// response came, else on the first one. The INVITE then has 64*T1 to
    /// end with a final response (normally 487) before [`Event::Timeout`].
    /// Cancelling an INVITE that already has a final response does nothing.
    pub fn cancel(&mut self, client: ClientKey, now: Instant) -> Result<(), TransactionError> {
        let id = client.0;
        let txn = self
            .txn_mut(id)
            .ok_or(TransactionError::UnknownTransaction)?;
        let Machine::ClientInvite(ci) = &mut txn.machine else {
            return Err(TransactionError::NotInvite);
        };
        match (ci.state, ci.cancel) {
            (ClientInviteState::Calling, CancelState::None) => ci.cancel = CancelState::Pending,
            (ClientInviteState::Proceeding, CancelState::None) => self.start_cancel(id, now),
            _ => {}
        }
        self.tidy();
        Ok(())
    }

    /// Where a client transaction sends its request, while it lives.
    pub fn client_dest(&self, client: ClientKey) -> Option<&D> {
        self.txn(client.0)
            .filter(|t| t.is_client())
            .map(|t| &t.dest)
    }

    /// The driver could not send for this transaction (connection refused
    /// or reset, no route): a client transaction reports
    /// [`Event::TransportError`]; either kind ends (§17.1.4, §17.2.4).
    pub fn transport_error(&mut self, key: TransactionKey, now: Instant) {
        let id = match key {
            TransactionKey::Client(c) => c.0,
            TransactionKey::Server(s) => s.0,
        };
        let Some(txn) = self.txn(id) else { return };
        if txn.is_client() != matches!(key, TransactionKey::Client(_)) {
            return;
        }
        if let TransactionKey::Client(client) = key
            && !txn.is_silent()
        {
            self.events.push_back(Event::TransportError { client });
        }
        self.after(id, Next::Terminate, now);
        self.tidy();
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.table.pop_due(now) {
            let Some((txn, mut cx)) = self.split(entry.id) else {
                continue;
            };
            if txn.deadlines.get(entry.slot) != Some(entry.at) {
                continue;
            }
            cx.table.fired(&mut txn.deadlines, entry.slot);
            let next = txn.on_timer(entry.id, entry.slot, now, &mut cx);
            self.after(entry.id, next, now);
        }
        self.linger.expire(now);
        self.tidy();
    }

    /// When [`TransactionLayer::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.table.peek(), self.linger.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next message to send and where.
    pub fn poll_transmit(&mut self) -> Option<(D, Bytes)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event<D>> {
        self.events.pop_front()
    }

    // ---- inputs -----------------------------------------------------------

    fn on_response(&mut self, msg: Message, now: Instant) {
        let id = match msg.branch() {
            Some(branch) => {
                key::client(&mut self.scratch, branch, msg.cseq_method());
                let fp = self.fingerprints.of(&self.scratch);
                self.clients.get(&fp).copied()
            }
            None => None,
        };
        let Some((id, txn, mut cx)) = id.and_then(|id| self.split(id).map(|(t, cx)| (id, t, cx)))
        else {
            self.events.push_back(Event::StrayResponse { msg });
            return;
        };
        let next = txn.on_response(id, msg, now, &mut cx);
        self.after(id, next, now);
    }

    fn on_ack(&mut self, msg: Message, from: D, now: Instant) {
        let rule = key::server(&mut self.scratch, &msg, &Method::Invite);
        let fp = self.fingerprints.of(&self.scratch);
        let found = self.servers.get(&fp).copied();
        let Some((id, txn, cx)) = found.and_then(|id| self.split(id).map(|(t, cx)| (id, t, cx)))
        else {
            self.events.push_back(Event::Ack { msg, from });
            return;
        };
        let reliable = txn.reliable;
        let Machine::ServerInvite(si) = &mut txn.machine else {
            cx.events.push_back(Event::Ack { msg, from });
            return;
        };
        if rule == Rule::Rfc2543 {
            let expected = si.legacy_to_tag.as_ref().and_then(|t| t.as_deref());
            if si.state != ServerInviteState::Completed || expected != msg.to_tag() {
                // Not the ACK for our final response: a 2xx ACK, passed up.
                cx.events.push_back(Event::Ack { msg, from });
                return;
            }
        }
        let next = match si.state {
            ServerInviteState::Completed => {
                si.state = ServerInviteState::Confirmed;
                cx.table.clear(&mut txn.deadlines, Slot::Retransmit);
                cx.table.clear(&mut txn.deadlines, Slot::GiveUp);
                if reliable {
                    Next::Terminate
                } else {
                    // Timer I absorbs ACK retransmissions.
                    cx.table
                        .arm(&mut txn.deadlines, id, Slot::Linger, now + cx.timers.t4);
                    Next::Stay
                }
            }
            ServerInviteState::Confirmed => Next::Stay,
            ServerInviteState::Accepted | ServerInviteState::Proceeding => {
                cx.events.push_back(Event::Ack { msg, from });
                Next::Stay
            }
        };
        self.after(id, next, now);
    }

    fn on_request(&mut self, msg: Message, from: D, reliable: bool) {
        let method = msg.method().clone();
        let rule = key::server(&mut self.scratch, &msg, &method);
        let key = self.fingerprints.of(&self.scratch);
        if let Some(&id) = self.servers.get(&key) {
            if let Some((txn, mut cx)) = self.split(id) {
                // Answer where the retransmission came from: a NAT may have
                // rebound the client's port, and with rport (RFC 3581) the
                // latest source is where the client now listens.
                txn.dest = from;
                txn.on_retransmission(&mut cx);
            }
            return;
        }
        if let Some(answer) = self.linger.answer(&key, from.clone()) {
            self.transmits.push_back(answer);
            return;
        }
        let machine = if method == Method::Invite {
            Machine::ServerInvite(ServerInvite {
                state: ServerInviteState::Proceeding,
                last: None,
                legacy_to_tag: (rule == Rule::Rfc2543).then_some(None),
            })
        } else {
            Machine::ServerNonInvite(ServerNonInvite {
                state: NonInviteState::Trying,
                last: None,
            })
        };
        let txn = Txn {
            key,
            dest: from.clone(),
            reliable,
            deadlines: Deadlines::default(),
            interval: self.timers.t1,
            machine,
        };
        let id = self.insert(txn);
        self.servers.insert(key, id);
        let server = ServerKey(id);
        if method == Method::Cancel {
            key::server(&mut self.scratch, &msg, &Method::Invite);
            let invite_key = self.fingerprints.of(&self.scratch);
            let invite = self
                .servers
                .get(&invite_key)
                .copied()
                .filter(|&i| {
                    matches!(
                        self.txn(i).map(|t| &t.machine),
                        Some(Machine::ServerInvite(_))
                    )
                })
                .map(ServerKey);
            self.events.push_back(Event::Cancel {
                server,
                invite,
                msg,
                from,
            });
        } else {
            self.events.push_back(Event::Request { server, msg, from });
        }
    }

    // ---- the table --------------------------------------------------------

    fn txn(&self, id: Id) -> Option<&Txn<D>> {
        self.slab
            .get(id.index as usize)
            .filter(|e| e.generation == id.generation)
            .and_then(|e| e.txn.as_ref())
    }

    fn txn_mut(&mut self, id: Id) -> Option<&mut Txn<D>> {
        txn_mut(&mut self.slab, id)
    }

    /// The transaction and the rest of the layer, borrowed apart.
    fn split(&mut self, id: Id) -> Option<(&mut Txn<D>, Cx<'_, D>)> {
        let txn = txn_mut(&mut self.slab, id)?;
        Some((
            txn,
            Cx {
                timers: &self.timers,
                table: &mut self.table,
                transmits: &mut self.transmits,
                events: &mut self.events,
            },
        ))
    }

    fn insert(&mut self, txn: Txn<D>) -> Id {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let e = &mut self.slab[index as usize];
            e.txn = Some(txn);
            Id {
                index,
                generation: e.generation,
            }
        } else {
            let index = self.slab.len() as u32;
            self.slab.push(SlabEntry {
                generation: 0,
                txn: Some(txn),
            });
            Id {
                index,
                generation: 0,
            }
        }
    }

    /// Takes a transaction out of the table (its timers and index entry).
    fn take(&mut self, id: Id) -> Option<Txn<D>> {
        let e = self
            .slab
            .get_mut(id.index as usize)
            .filter(|e| e.generation == id.generation)?;
        let txn = e.txn.take()?;
        e.generation = e.generation.wrapping_add(1);
        self.free.push(id.index);
        self.live -= 1;
        self.table.forget(&txn.deadlines);
        let map = if txn.is_client() {
            &mut self.clients
        } else {
            &mut self.servers
        };
        if map.get(&txn.key) == Some(&id) {
            map.remove(&txn.key);
        }
        Some(txn)
    }

    /// Moves a completed server non-INVITE transaction to the linger
    /// table for Timer J; the TU hears it terminated.
    fn linger(&mut self, id: Id, now: Instant) {
        let Some(txn) = self.take(id) else { return };
        let Machine::ServerNonInvite(sn) = txn.machine else {
            return;
        };
        let last = sn.last.unwrap_or_default();
        self.linger.insert(txn.key, txn.dest, &last, now);
        self.events
            .push_back(Event::Terminated(TransactionKey::Server(ServerKey(id))));
    }

    fn remove(&mut self, id: Id) {
        let Some(txn) = self.take(id) else { return };
        let key = if txn.is_client() {
            TransactionKey::Client(ClientKey(id))
        } else {
            TransactionKey::Server(ServerKey(id))
        };
        if !txn.is_silent() {
            self.events.push_back(Event::Terminated(key));
        }
    }

    fn after(&mut self, id: Id, next: Next, now: Instant) {
        match next {
            Next::Stay => {}
            Next::Terminate => self.remove(id),
            Next::SendCancel => self.start_cancel(id, now),
            Next::Linger => self.linger(id, now),
        }
    }

    fn start_client(
        &mut self,
        machine: Machine,
        key: Fingerprint,
        request: Bytes,
        dest: D,
        reliable: bool,
        now: Instant,
    ) -> Id {
        let txn = Txn {
            key,
            dest: dest.clone(),
            reliable,
            deadlines: Deadlines::default(),
            interval: self.timers.t1,
            machine,
        };
        let id = self.insert(txn);
        self.clients.insert(key, id);
        self.transmits.push_back((dest, request));
        if let Some((txn, cx)) = self.split(id) {
            if !reliable {
                // Timer A or E.
                cx.table
                    .arm(&mut txn.deadlines, id, Slot::Retransmit, now + cx.timers.t1);
            }
            // Timer B or F.
            cx.table.arm(
                &mut txn.deadlines,
                id,
                Slot::GiveUp,
                now + cx.timers.timeout(),
            );
        }
        id
    }

    /// Writes and sends the CANCEL for a client INVITE in Proceeding.
    fn start_cancel(&mut self, id: Id, now: Instant) {
        let Some(txn) = self.txn(id) else { return };
        let Machine::ClientInvite(ci) = &txn.machine else {
            return;
        };
        let (dest, reliable) = (txn.dest.clone(), txn.reliable);
        // Our own request parses; should it not, nothing can be cancelled
        // and the 64*T1 guard still ends the INVITE.
        if let Some(invite) = ci.request.clone().and_then(|r| Message::parse(r).ok()) {
            let bytes = invite.cancel_for();
            let branch = invite.branch().unwrap_or_default();
            key::client(&mut self.scratch, branch, &Method::Cancel);
            let fp = self.fingerprints.of(&self.scratch);
            if !self.clients.contains_key(&fp) {
                let machine = Machine::ClientNonInvite(ClientNonInvite {
                    state: NonInviteState::Trying,
                    request: bytes.clone(),
                    silent: true,
                });
                self.start_client(machine, fp, bytes, dest, reliable, now);
            }
        }
        self.guard_invite(id, now);
    }

    /// A CANCEL went out for this INVITE: it has 64*T1 left (§9.1).
    fn guard_invite(&mut self, id: Id, now: Instant) {
        let Some((txn, cx)) = self.split(id) else {
            return;
        };
        let Machine::ClientInvite(ci) = &mut txn.machine else {
            return;
        };
        if matches!(
            ci.state,
            ClientInviteState::Calling | ClientInviteState::Proceeding
        ) {
            ci.cancel = CancelState::Sent;
            if !ci.guarded || txn.deadlines.get(Slot::GiveUp).is_none() {
                ci.guarded = true;
                cx.table.arm(
                    &mut txn.deadlines,
                    id,
                    Slot::GiveUp,
                    now + cx.timers.timeout(),
                );
            }
        }
    }

    /// Drops stale timer entries (see `timer.rs`).
    fn tidy(&mut self) {
        let slab = &self.slab;
        self.table.tidy(|e| {
            slab.get(e.id.index as usize)
                .filter(|s| s.generation == e.id.generation)
                .and_then(|s| s.txn.as_ref())
                .is_some_and(|t| t.deadlines.get(e.slot) == Some(e.at))
        });
    }
}

impl<D: Clone> Txn<D> {
    fn send(&self, cx: &mut Cx<'_, D>, bytes: Bytes) {
        cx.transmits.push_back((self.dest.clone(), bytes));
    }

    fn on_response(&mut self, id: Id, msg: Message, now: Instant, cx: &mut Cx<'_, D>) -> Next {
        let status = msg.status().unwrap_or(0);
        let client = ClientKey(id);
        match &mut self.machine {
            Machine::ClientInvite(ci) => match (ci.state, status) {
                (ClientInviteState::Calling | ClientInviteState::Proceeding, 100..=199) => {
                    let was_calling = ci.state == ClientInviteState::Calling;
                    ci.state = ClientInviteState::Proceeding;
                    cx.table.clear(&mut self.deadlines, Slot::Retransmit);
                    if status != 100 {
                        ci.c_base = now;
                    }
                    if !ci.guarded {
                        // Timer B no longer applies; Timer C does.
                        let at = ci.c_base + cx.timers.c;
                        if self.deadlines.get(Slot::GiveUp) != Some(at) {
                            cx.table.arm(&mut self.deadlines, id, Slot::GiveUp, at);
                        }
                    }
                    let pending = ci.cancel == CancelState::Pending;
                    cx.events.push_back(Event::Response { client, msg });
                    if was_calling && pending {
                        Next::SendCancel
                    } else {
                        Next::Stay
                    }
                }
                (ClientInviteState::Calling | ClientInviteState::Proceeding, 200..=299) => {
                    ci.state = ClientInviteState::Accepted;
                    ci.request = None;
                    cx.table.clear(&mut self.deadlines, Slot::Retransmit);
                    cx.table.clear(&mut self.deadlines, Slot::GiveUp);
                    // Timer M: keep passing 2xx retransmissions up.
                    cx.table.arm(
                        &mut self.deadlines,
                        id,
                        Slot::Linger,
                        now + cx.timers.timeout(),
                    );
                    cx.events.push_back(Event::Response { client, msg });
                    Next::Stay
                }
                (ClientInviteState::Calling | ClientInviteState::Proceeding, _) => {
                    ci.state = ClientInviteState::Completed;
                    cx.table.clear(&mut self.deadlines, Slot::Retransmit);
                    cx.table.clear(&mut self.deadlines, Slot::GiveUp);
                    let ack = ci
                        .request
                        .take()
                        .and_then(|r| Message::parse(r).ok())
                        .map(|invite| invite.ack_for(&msg));
                    if let Some(ack) = ack {
                        cx.transmits.push_back((self.dest.clone(), ack.clone()));
                        ci.ack = Some(ack);
                    }
                    cx.events.push_back(Event::Response { client, msg });
                    if self.reliable {
                        Next::Terminate
                    } else {
                        // Timer D: re-ACK retransmitted finals.
                        cx.table
                            .arm(&mut self.deadlines, id, Slot::Linger, now + cx.timers.d());
                        Next::Stay
                    }
                }
                (ClientInviteState::Accepted, 200..=299) => {
                    cx.events.push_back(Event::Response { client, msg });
                    Next::Stay
                }
                (ClientInviteState::Completed, 300..) => {
                    if let Some(ack) = ci.ack.clone() {
                        cx.transmits.push_back((self.dest.clone(), ack));
                    }
                    Next::Stay
                }
                _ => Next::Stay,
            },
            Machine::ClientNonInvite(cn) => match (cn.state, status) {
                (NonInviteState::Trying | NonInviteState::Proceeding, 100..=199) => {
                    cn.state = NonInviteState::Proceeding;
                    if !cn.silent {
                        cx.events.push_back(Event::Response { client, msg });
                    }
                    Next::Stay
                }
                (NonInviteState::Trying | NonInviteState::Proceeding, _) => {
                    cn.state = NonInviteState::Completed;
                    cn.request = Bytes::new();
                    cx.table.clear(&mut self.deadlines, Slot::Retransmit);
                    cx.table.clear(&mut self.deadlines, Slot::GiveUp);
                    if !cn.silent {
                        cx.events.push_back(Event::Response { client, msg });
                    }
                    if self.reliable {
                        Next::Terminate
                    } else {
                        // Timer K absorbs response retransmissions.
                        cx.table
                            .arm(&mut self.deadlines, id, Slot::Linger, now + cx.timers.t4);
                        Next::Stay
                    }
                }
                (NonInviteState::Completed, _) => Next::Stay,
            },
            Machine::ServerInvite(_) | Machine::ServerNonInvite(_) => Next::Stay,
        }
    }

    /// A retransmission of the request that created this server
    /// transaction: answer with the last response, if any.
    fn on_retransmission(&mut self, cx: &mut Cx<'_, D>) {
        let last = match &self.machine {
            Machine::ServerInvite(si) => match si.state {
                ServerInviteState::Proceeding | ServerInviteState::Completed => si.last.clone(),
                ServerInviteState::Accepted | ServerInviteState::Confirmed => None,
            },
            Machine::ServerNonInvite(sn) => sn.last.clone(),
            Machine::ClientInvite(_) | Machine::ClientNonInvite(_) => None,
        };
        if let Some(last) = last {
            self.send(cx, last);
        }
    }

    fn respond(
        &mut self,
        id: Id,
        status: u16,
        response: Bytes,
        now: Instant,
        cx: &mut Cx<'_, D>,
    ) -> Result<Next, TransactionError> {
        match &mut self.machine {
            Machine::ServerInvite(si) => match (si.state, status) {
                (ServerInviteState::Proceeding, 100..=199) => {
                    si.last = Some(response.clone());
                    cx.transmits.push_back((self.dest.clone(), response));
                    Ok(Next::Stay)
                }
                (ServerInviteState::Proceeding, 200..=299) => {
                    si.state = ServerInviteState::Accepted;
                    si.last = None;
                    cx.transmits.push_back((self.dest.clone(), response));
                    // Timer L: absorb INVITE retransmissions, let the TU's
                    // 2xx retransmissions through.
                    cx.table.arm(
                        &mut self.deadlines,
                        id,
                        Slot::Linger,
                        now + cx.timers.timeout(),
                    );
                    Ok(Next::Stay)
                }
                (ServerInviteState::Proceeding, _) => {
                    si.state = ServerInviteState::Completed;
                    if let Some(tag) = &mut si.legacy_to_tag {
                        *tag = Message::parse(response.clone())
                            .ok()
                            .and_then(|r| r.to_tag().map(Box::from));
                    }
                    si.last = Some(response.clone());
                    cx.transmits.push_back((self.dest.clone(), response));
                    if !self.reliable {
                        // Timer G.
                        self.interval = cx.timers.t1;
                        cx.table.arm(
                            &mut self.deadlines,
                            id,
                            Slot::Retransmit,
                            now + cx.timers.t1,
                        );
                    }
                    // Timer H.
                    cx.table.arm(
                        &mut self.deadlines,
                        id,
                        Slot::GiveUp,
                        now + cx.timers.timeout(),
                    );
                    Ok(Next::Stay)
                }
                (ServerInviteState::Accepted, 200..=299) => {
                    cx.transmits.push_back((self.dest.clone(), response));
                    Ok(Next::Stay)
                }
                _ => Err(TransactionError::AlreadyFinal),
            },
            Machine::ServerNonInvite(sn) => match (sn.state, status) {
                (NonInviteState::Completed, _) => Err(TransactionError::AlreadyFinal),
                (_, 100..=199) => {
                    sn.state = NonInviteState::Proceeding;
                    sn.last = Some(response.clone());
                    cx.transmits.push_back((self.dest.clone(), response));
                    Ok(Next::Stay)
                }
                _ => {
                    sn.state = NonInviteState::Completed;
                    sn.last = Some(response.clone());
                    cx.transmits.push_back((self.dest.clone(), response));
                    if self.reliable {
                        Ok(Next::Terminate)
                    } else {
                        // Timer J, in the linger queue.
                        Ok(Next::Linger)
                    }
                }
            },
            Machine::ClientInvite(_) | Machine::ClientNonInvite(_) => {
                Err(TransactionError::UnknownTransaction)
            }
        }
    }

    fn on_timer(&mut self, id: Id, slot: Slot, now: Instant, cx: &mut Cx<'_, D>) -> Next {
        let t = *cx.timers;
        match (&mut self.machine, slot) {
            (Machine::ClientInvite(ci), Slot::Retransmit) => {
                if ci.state == ClientInviteState::Calling {
                    // Timer A doubles without a cap (§17.1.1.2).
                    if let Some(bytes) = ci.request.clone() {
                        cx.transmits.push_back((self.dest.clone(), bytes));
                    }
                    self.interval = self.interval.saturating_mul(2);
                    cx.table.arm(
                        &mut self.deadlines,
                        id,
                        Slot::Retransmit,
                        now + self.interval,
                    );
                }
                Next::Stay
            }
            (Machine::ClientInvite(ci), Slot::GiveUp) => match ci.state {
                ClientInviteState::Calling => {
                    // Timer B.
                    cx.events.push_back(Event::Timeout {
                        client: ClientKey(id),
                    });
                    Next::Terminate
                }
                ClientInviteState::Proceeding if ci.guarded => {
                    cx.events.push_back(Event::Timeout {
                        client: ClientKey(id),
                    });
                    Next::Terminate
                }
                ClientInviteState::Proceeding => {
                    // Timer C.
                    ci.guarded = true;
                    cx.events.push_back(Event::TimerC {
                        client: ClientKey(id),
                    });
                    cx.table
                        .arm(&mut self.deadlines, id, Slot::GiveUp, now + t.timeout());
                    Next::Stay
                }
                ClientInviteState::Accepted | ClientInviteState::Completed => Next::Stay,
            },
            (Machine::ClientNonInvite(cn), Slot::Retransmit) => {
                let next_interval = match cn.state {
                    NonInviteState::Trying => self.interval.saturating_mul(2).min(t.t2),
                    NonInviteState::Proceeding => t.t2,
                    NonInviteState::Completed => return Next::Stay,
                };
                // Timer E.
                let bytes = cn.request.clone();
                cx.transmits.push_back((self.dest.clone(), bytes));
                self.interval = next_interval;
                cx.table.arm(
                    &mut self.deadlines,
                    id,
                    Slot::Retransmit,
                    now + next_interval,
                );
                Next::Stay
            }
            (Machine::ClientNonInvite(cn), Slot::GiveUp) => {
                // Timer F.
                if !cn.silent {
                    cx.events.push_back(Event::Timeout {
                        client: ClientKey(id),
                    });
                }
                Next::Terminate
            }
            (Machine::ServerInvite(si), Slot::Retransmit) => {
                if si.state == ServerInviteState::Completed {
                    // Timer G.
                    if let Some(last) = si.last.clone() {
                        cx.transmits.push_back((self.dest.clone(), last));
                    }
                    self.interval = self.interval.saturating_mul(2).min(t.t2);
                    cx.table.arm(
                        &mut self.deadlines,
                        id,
                        Slot::Retransmit,
                        now + self.interval,
                    );
                }
                Next::Stay
            }
            (Machine::ServerInvite(si), Slot::GiveUp) => {
                if si.state == ServerInviteState::Completed {
                    // Timer H.
                    cx.events.push_back(Event::ServerTimeout {
                        server: ServerKey(id),
                    });
                    Next::Terminate
                } else {
                    Next::Stay
                }
            }
            // D, K, I, J, L, M: the linger is over.
            (_, Slot::Linger) => Next::Terminate,
            (Machine::ServerNonInvite(_), _) => Next::Stay,
        }
    }
}
