//! The SIP core task: the tokio driver of the sans-IO [`Proxy`].
//!
//! It feeds the proxy what the transports, the location service, the
//! subscriber directory and the clock deliver, carries out the proxy's
//! [`Action`]s (bytes to a UDP socket, a connection or another supernode;
//! location operations), and sleeps until the next input or deadline. It
//! decides nothing about SIP. It serves its queue of finishing work
//! (responses, ACKs, what other supernodes send) before its queue of new
//! work. It also measures what overload control needs (each new message's
//! sojourn, the proxy's load) and publishes it, and feeds the live SIP
//! trace while someone listens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use ringmesh_proxy::auth::Fetched;
use ringmesh_proxy::{Action, Dest, FlowRef, Proxy, Transport};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::{now, wall_ms};
use crate::farm::FarmHandle;
use crate::location::LocationService;
use crate::metrics::{Metrics, Wire};
use crate::trace::TraceRecord;
use crate::transport::{self, Control, Inbound, Shared};

/// Which of the core's two queues a message came from
/// ([`Shared::inbound`] or [`Shared::finishing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    New,
    Finishing,
}

/// Messages the core takes from its queues after the first of a turn.
const TURN: usize = 63;

/// Takes up to [`TURN`] messages from the two queues, finishing work
/// first but new work at least one slot in eight: a flood of responses
/// (forged ones cost an attacker little) cannot starve new requests,
/// connection events and control. Returns how many it took.
fn take_turn<T>(
    mut finishing: impl FnMut() -> Option<T>,
    mut new: impl FnMut() -> Option<T>,
    mut take: impl FnMut(T, Queue),
) -> usize {
    for n in 0..TURN {
        let mut from_finishing = || finishing().map(|ev| (ev, Queue::Finishing));
        let mut from_new = || new().map(|ev| (ev, Queue::New));
        let next = if n % 8 == 7 {
            from_new().or_else(from_finishing)
        } else {
            from_finishing().or_else(from_new)
        };
        let Some((ev, queue)) = next else { return n };
        take(ev, queue);
    }
    TURN
}

/// The SIP core task's state: the proxy, and the I/O it drives.
pub struct SipCore {
    proxy: Proxy,
    location: Box<dyn LocationService>,
    /// Late answers of the subscriber directory (provisioning lookups).
    fetched: Option<mpsc::Receiver<(u64, Fetched)>>,
    metrics: Metrics,
    shared: Arc<Shared>,
    udp: Vec<Arc<UdpSocket>>,
    /// Whether each UDP socket is IPv4 (read once: no syscall per send).
    udp_v4: Vec<bool>,
    conns: HashMap<u64, mpsc::Sender<Bytes>>,
    conn_by_peer: HashMap<SocketAddr, u64>,
    farm: Option<FarmHandle>,
    /// The live SIP trace of the admin API; filled only while listened to.
    trace: Option<broadcast::Sender<TraceRecord>>,
    /// Smoothed sojourn of inbound messages, microseconds (a gauge).
    queue_delay_us: f64,
    /// How long the last message taken had waited in the inbound queue.
    core_wait: Duration,
    /// Messages taken since the last sweep tick.
    taken: usize,
    /// Where call records go; `None`: dropped.
    cdr: Option<crate::cdr::CdrWriter>,
    /// The DNS the proxy asks (ENUM), and its answers coming back.
    dns: Option<crate::dns::Dns>,
    resolved: (
        mpsc::UnboundedSender<Answer>,
        mpsc::UnboundedReceiver<Answer>,
    ),
}

/// A DNS answer for the proxy, under its token.
type Answer = (u64, ringmesh_proxy::dns::Resolved);

impl std::fmt::Debug for SipCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipCore")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl SipCore {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        proxy: Proxy,
        location: Box<dyn LocationService>,
        fetched: Option<mpsc::Receiver<(u64, Fetched)>>,
        metrics: Metrics,
        shared: Arc<Shared>,
        udp: Vec<Arc<UdpSocket>>,
        farm: Option<FarmHandle>,
        trace: Option<broadcast::Sender<TraceRecord>>,
    ) -> SipCore {
        let udp_v4 = udp
            .iter()
            .map(|s| s.local_addr().is_ok_and(|a| a.is_ipv4()))
            .collect();
        SipCore {
            proxy,
            location,
            fetched,
            metrics,
            shared,
            udp,
            udp_v4,
            conns: HashMap::new(),
            conn_by_peer: HashMap::new(),
            farm,
            trace,
            queue_delay_us: 0.0,
            core_wait: Duration::ZERO,
            taken: 0,
            cdr: None,
            dns: None,
            resolved: mpsc::unbounded_channel(),
        }
    }

    /// The proxy's DNS questions go to `dns` (none: each is answered as
    /// failed at once).
    pub fn with_dns(self, dns: Option<crate::dns::Dns>) -> SipCore {
        SipCore { dns, ..self }
    }

    /// Call records of the calls this node is the originating edge of go
    /// to `cdr`.
    pub fn with_cdr(self, cdr: Option<crate::cdr::CdrWriter>) -> SipCore {
        SipCore { cdr, ..self }
    }

    /// Someone listens to the live SIP trace (checked before formatting
    /// anything for it).
    fn tracing(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.receiver_count() > 0)
    }

    fn traced(&self, inbound: bool, transport: &'static str, remote: String, raw: &Bytes) {
        if let Some(t) = self.trace.as_ref().filter(|t| t.receiver_count() > 0) {
            let _ = t.send(TraceRecord {
                at_ms: wall_ms(),
                inbound,
                transport,
                remote,
                raw: raw.clone(),
            });
        }
    }

    /// Runs until every transport is gone, `stop` is cancelled, or the
    /// task is stopped. Once `drain` is cancelled (the readers refuse new
    /// work), `idle` tells whether every request it took has been
    /// answered; it goes on serving meanwhile, since what the other
    /// supernodes sent before they heard that this one leaves still comes
    /// in until its links are closed.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut finishing: mpsc::Receiver<Inbound>,
        drain: CancellationToken,
        stop: CancellationToken,
        idle: watch::Sender<bool>,
    ) {
        // Each tick sweeps one shard of the node-local store (16 in all).
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        // Messages handled since the core last let other tasks run: after a
        // reader's batch, so the readers keep draining their sockets (and
        // timestamping what waits there) while the core is busy.
        let mut since_yield = 0;
        loop {
            if stop.is_cancelled() {
                return;
            }
            if drain.is_cancelled() {
                let answered = self.proxy.unanswered() == 0;
                idle.send_if_modified(|was| {
                    let changed = *was != answered;
                    *was = answered;
                    changed
                });
            }
            if since_yield >= transport::READ_BATCH {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            let deadline = self.proxy.poll_timeout().map(Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let fetched = async {
                match self.fetched.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            // Whatever finishes work already taken on comes first; new
            // requests last, so that under load they (and not the answers
            // from the ring, the timers or the responses) wait.
            tokio::select! {
                biased;
                Some(ev) = finishing.recv() => {
                    let at = Instant::now();
                    self.on_inbound(ev, at, Queue::Finishing);
                    since_yield += 1 + self.take_queued(&mut finishing, &mut inbound, at);
                }
                c = std::future::poll_fn(|cx| self.location.poll_complete(cx)) => {
                    self.located(c);
                    let mut cx = Context::from_waker(Waker::noop());
                    for _ in 1..transport::READ_BATCH {
                        let Poll::Ready(c) = self.location.poll_complete(&mut cx) else { break };
                        self.located(c);
                    }
                }
                Some((token, answer)) = fetched => {
                    self.proxy.handle_subscriber(token, answer, now());
                }
                Some((token, answer)) = self.resolved.1.recv() => {
                    self.proxy.handle_resolved(token, answer, now());
                }
                () = sleep => self.proxy.handle_timeout(now()),
                // Wakes the loop to check whether it has drained already.
                () = drain.cancelled(), if !drain.is_cancelled() => {}
                () = stop.cancelled() => {}
                _ = sweep.tick() => {
                    if self.taken == 0 && inbound.is_empty() {
                        // Idle for a whole tick: a message now would not
                        // wait, whatever the last one did (the signal and
                        // its gauge must not stay up after a storm).
                        self.shared.overload.observe_sojourn(Duration::ZERO, std::time::Instant::now());
                    }
                    self.taken = 0;
                    self.location.expire(wall_ms());
                    let held = self.location.counts();
                    self.metrics.aors.set(held.aors as i64);
                    self.metrics.bindings.with_label_values(&["primary"]).set(held.primary as i64);
                    self.metrics.bindings.with_label_values(&["replica"]).set(held.replica as i64);
                }
                ev = inbound.recv() => {
                    let Some(ev) = ev else { return };
                    let at = Instant::now();
                    self.on_inbound(ev, at, Queue::New);
                    since_yield += 1 + self.take_queued(&mut finishing, &mut inbound, at);
                }
            }
            self.flush();
            // After every turn: a completion may have lowered what the
            // readers shed on.
            self.publish_load(inbound.len(), finishing.len());
        }
    }

    /// Takes what else is queued before flushing (one wake-up serves a
    /// burst), in the order of [`take_turn`]; returns how many.
    fn take_queued(
        &mut self,
        finishing: &mut mpsc::Receiver<Inbound>,
        inbound: &mut mpsc::Receiver<Inbound>,
        at: Instant,
    ) -> usize {
        take_turn(
            || finishing.try_recv().ok(),
            || inbound.try_recv().ok(),
            |ev, queue| self.on_inbound(ev, at, queue),
        )
    }

    /// Carries out the proxy's actions until it has none; location
    /// operations that finish at once (the node-local store) go straight
    /// back to it.
    fn flush(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(action) = self.proxy.poll_action() {
            match action {
                Action::Transmit { dest, bytes } => self.send(dest, bytes),
                Action::Location { token, op } => {
                    self.location.submit(op, token);
                    while let Poll::Ready(c) = self.location.poll_complete(&mut cx) {
                        self.located(c);
                    }
                }
                Action::CallRecord(r) => {
                    if let Some(w) = &self.cdr {
                        w.record(r);
                    }
                }
                Action::Resolve { token, query } => match &self.dns {
                    // Answered on the loop: no task per question holds the core.
                    Some(dns) => {
                        let (dns, tx) = (dns.clone(), self.resolved.0.clone());
                        tokio::spawn(async move {
                            let _ = tx.send((token, dns.resolve(query).await));
                        });
                    }
                    None => {
                        let no = ringmesh_proxy::dns::Resolved::Failed("no resolver".into());
                        let _ = self.resolved.0.send((token, no));
                    }
                },
                Action::CloseFlow { id } => {
                    if let Some(tx) = self.conns.get(&id) {
                        // The writer flushes what is queued, then closes.
                        let _ = tx.try_send(transport::CLOSE.clone());
                    }
                }
            }
        }
    }

    /// A location operation finished: its wait on the ring is an overload
    /// signal, its result goes to the proxy.
    fn located(&mut self, c: ringmesh_proxy::location::Completion) {
        if let Some(wait) = self.location.waited() {
            self.shared
                .overload
                .observe_pending_wait(wait, std::time::Instant::now());
        }
        self.proxy.handle_location(c, now());
    }

    /// Publishes the overload signals the transport readers act on (from
    /// `depth`, the queue of new work), and the matching gauges.
    fn publish_load(&self, depth: usize, finishing: usize) {
        let o = &self.shared.overload;
        let load = self.proxy.load();
        o.set_core_wait(if depth == 0 {
            Duration::ZERO
        } else {
            self.core_wait
        });
        o.transactions
            .store(load.transactions, std::sync::atomic::Ordering::Relaxed);
        let at = std::time::Instant::now();
        o.observe_pending(load.pending, at);
        if load.pending == 0 {
            // Nothing waits for the ring: its queue is empty, whatever the
            // last answer's wait (two slow answers a second apart are not
            // a standing queue).
            o.observe_pending_wait(Duration::ZERO, at);
        }
        self.metrics
            .transactions
            .set(load.transactions_total as i64);
        self.metrics
            .transactions_lingering
            .set(load.lingering as i64);
        self.metrics.inbound_queue.set(depth as i64);
        self.metrics.finishing_queue.set(finishing as i64);
        self.metrics.calls_up.set(load.calls_up as i64);
        self.publish_gateways();
        self.metrics.outbound_flows.set(load.outbound_flows as i64);
        self.metrics.queue_delay.set(self.queue_delay_us as i64);
        self.metrics
            .overload_active
            .set(i64::from(o.shed_reason(depth).is_some()));
    }

    /// Each gateway's state as gauges (a removed gateway's series go).
    fn publish_gateways(&self) {
        let (up, active) = (&self.metrics.gateway_up, &self.metrics.gateway_active);
        up.reset();
        active.reset();
        for g in self.proxy.gateway_states() {
            up.with_label_values(&[&g.rec.name]).set(i64::from(g.up));
            active
                .with_label_values(&[&g.rec.name])
                .set(i64::from(g.active));
        }
    }

    fn on_inbound(&mut self, ev: Inbound, at: Instant, queue: Queue) {
        match ev {
            Inbound::Sip {
                msg,
                flow,
                transport,
                queued,
                kernel_wait,
            } => {
                self.taken += 1;
                // The delay that overload control acts on is the new
                // work's: finishing work overtakes it and is never shed.
                if queue == Queue::New {
                    self.core_wait = at.saturating_duration_since(queued);
                    let sojourn = self.core_wait + kernel_wait;
                    self.shared.overload.observe_sojourn(sojourn, at.into_std());
                    // The gauge: smoothed over about 16 messages.
                    self.queue_delay_us +=
                        (sojourn.as_micros() as f64 - self.queue_delay_us) / 16.0;
                }
                if self.tracing() {
                    self.traced(true, transport.as_str(), flow.peer().to_string(), msg.raw());
                }
                match msg.status() {
                    Some(s) => self.metrics.hot.response_received(s, transport.into()),
                    None => self.metrics.hot.request(msg.method(), transport.into()),
                }
                self.proxy.handle_message(msg, Dest::Flow(flow), now());
            }
            Inbound::ConnOpened {
                id,
                peer,
                tx,
                names,
            } => {
                self.conns.insert(id, tx);
                self.conn_by_peer.insert(peer, id);
                self.proxy.connection_opened(id);
                if !names.is_empty() {
                    self.proxy.connection_named(id, names);
                }
            }
            Inbound::ConnClosed { id } => {
                self.conns.remove(&id);
                self.conn_by_peer.retain(|_, c| *c != id);
                self.proxy.connection_closed(id, now());
            }
            Inbound::ConnFailed {
                id,
                peer,
                transport,
            } => {
                self.conns.remove(&id);
                self.conn_by_peer.retain(|_, c| *c != id);
                let dest = Dest::Addr {
                    transport,
                    addr: peer,
                };
                self.proxy.connection_refused(dest, now());
                self.proxy.connection_closed(id, now());
            }
            Inbound::ConnNamed { id, names } => self.proxy.connection_named(id, names),
            Inbound::KeepAlive { flow } => self.proxy.flow_alive(flow, now()),
            Inbound::PeerSip { msg, peer } => {
                if self.tracing() {
                    self.traced(true, "overlay", hex::encode(peer), msg.raw());
                }
                match msg.status() {
                    Some(s) => self.metrics.hot.response_received(s, Wire::Overlay),
                    None => self.metrics.hot.request(msg.method(), Wire::Overlay),
                }
                self.proxy.handle_message(msg, Dest::Peer(peer), now());
            }
            Inbound::PeerGone { peer } => self.proxy.peer_gone(peer, now()),
            Inbound::Control(c) => self.control(c),
        }
        self.flush();
    }

    fn control(&mut self, c: Control) {
        let now = now();
        match c {
            Control::Bans(tx) => {
                let _ = tx.send(self.proxy.bans(now));
            }
            Control::Lift { source, done } => {
                let had = self
                    .proxy
                    .bans(now)
                    .iter()
                    .filter(|b| b.source == source)
                    .count();
                self.proxy.lift(source, now);
                let _ = done.send(had);
            }
            Control::Trusted(table) => self.proxy.set_trusted(table),
            Control::Subscriber(change) => self.proxy.subscriber_changed(change, now),
            Control::Changed(aor) => self.proxy.record_changed(aor, now),
            Control::Gateways(tx) => {
                let _ = tx.send(self.proxy.gateway_states());
            }
            Control::GatewaysChanged => self.proxy.gateways_changed(now),
        }
    }

    // ---- sending ------------------------------------------------------------

    fn send(&mut self, dest: Dest, bytes: Bytes) {
        if self.tracing() {
            let (t, remote) = match dest {
                Dest::Peer(p) => ("overlay", hex::encode(p)),
                d => (
                    d.transport().as_str(),
                    d.peer().map(|a| a.to_string()).unwrap_or_default(),
                ),
            };
            self.traced(false, t, remote, &bytes);
        }
        match dest {
            Dest::Peer(node) => {
                if let Some(f) = &self.farm {
                    f.send_sip(node, bytes);
                }
            }
            Dest::Flow(FlowRef::Udp { socket, peer }) => {
                if let Some(s) = self.udp.get(socket as usize) {
                    let _ = s.try_send_to(&bytes, peer);
                }
            }
            Dest::Flow(FlowRef::Conn {
                id,
                peer,
                transport,
            }) => match self.conns.get(&id) {
                Some(tx) => {
                    let _ = tx.try_send(bytes);
                }
                // The connection is gone: reach the peer on a new one.
                None => self.send(
                    Dest::Addr {
                        transport,
                        addr: peer,
                    },
                    bytes,
                ),
            },
            Dest::Addr {
                transport: Transport::Udp,
                addr,
            } => {
                if let Some(s) = self.udp_socket_for(addr) {
                    let _ = s.try_send_to(&bytes, addr);
                }
            }
            Dest::Addr { transport, addr } => {
                if let Some(tx) = self
                    .conn_by_peer
                    .get(&addr)
                    .and_then(|id| self.conns.get(id))
                {
                    let _ = tx.try_send(bytes);
                    return;
                }
                // Connections are opened over TCP, and over TLS to other
                // domains' servers (the proxy names the domain the server
                // must prove). TLS and WebSocket phones are reached down the
                // connections they opened (a phone listens for neither), so
                // without one the message is dropped and its transaction
                // times out.
                let tls = match transport {
                    Transport::Tcp => None,
                    Transport::Tls if self.shared.tls_client.is_some() => {
                        match self.proxy.tls_server_name(addr).and_then(|n| {
                            rustls::pki_types::ServerName::try_from(n.to_string()).ok()
                        }) {
                            Some(name) => Some(name),
                            None => {
                                tracing::debug!(%addr, "no name to check a TLS server against");
                                return;
                            }
                        }
                    }
                    _ => {
                        tracing::debug!(%addr, transport = transport.as_str(), "no connection to send on");
                        return;
                    }
                };
                // A connection the node opens holds a slot like one it
                // accepts: with the quota full, the message is dropped, as
                // a datagram the kernel could not send would be.
                let Some(slot) = self
                    .shared
                    .reserve_connection(addr, crate::admission::Direction::Outbound)
                else {
                    return;
                };
                let id = self
                    .shared
                    .next_conn
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(256);
                let _ = tx.try_send(bytes);
                self.conns.insert(id, tx.clone());
                self.conn_by_peer.insert(addr, id);
                self.proxy.connection_opened(id);
                transport::connect(id, addr, tls, slot, tx, rx, self.shared.clone());
            }
        }
    }

    /// A UDP socket of the address family of `addr` (the first socket when
    /// none matches).
    fn udp_socket_for(&self, addr: SocketAddr) -> Option<&Arc<UdpSocket>> {
        let i = self
            .udp_v4
            .iter()
            .position(|&v4| v4 == addr.is_ipv4())
            .unwrap_or(0);
        self.udp.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// One turn over `finishing` and `new` queued messages: which queue
    /// each message taken came from, in order.
    fn turn(finishing: usize, new: usize) -> Vec<Queue> {
        let mut f: VecDeque<()> = std::iter::repeat_n((), finishing).collect();
        let mut n: VecDeque<()> = std::iter::repeat_n((), new).collect();
        let mut taken = Vec::new();
        let count = take_turn(|| f.pop_front(), || n.pop_front(), |(), q| taken.push(q));
        assert_eq!(count, taken.len());
        taken
    }

    #[test]
    fn finishing_work_goes_first_and_new_work_is_never_starved() {
        // Both queues backlogged (a flood of responses): every eighth
        // slot is new work's, the rest finishing work's.
        let t = turn(1000, 1000);
        assert_eq!(t.len(), TURN);
        let new: Vec<usize> = (0..TURN).filter(|&i| t[i] == Queue::New).collect();
        assert_eq!(new, vec![7, 15, 23, 31, 39, 47, 55]);
        // Finishing work drained: new work fills the rest of the turn.
        let t = turn(3, 1000);
        assert_eq!(t.len(), TURN);
        assert!(t[..3].iter().all(|q| *q == Queue::Finishing));
        assert!(t[3..].iter().all(|q| *q == Queue::New));
        // No new work: a slot of its own is not wasted.
        assert_eq!(turn(1000, 0), vec![Queue::Finishing; TURN]);
        // Less than a turn queued: all of it, finishing work first.
        let t = turn(2, 3);
        assert_eq!(
            t,
            vec![
                Queue::Finishing,
                Queue::Finishing,
                Queue::New,
                Queue::New,
                Queue::New
            ]
        );
        assert!(turn(0, 0).is_empty());
    }
}
