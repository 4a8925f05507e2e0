//! Calls to numbers no subscriber owns: to the farm's PSTN gateways
//! ([`crate::gateways`]).
//!
//! Only a subscriber's call reaches a gateway (`numbers.rs` checks).
//!
//! A call goes to the first gateway of its route; a 408 or 5xx, a
//! transport failure, or no answer at all within `gateway_timeout` moves
//! it to the next, and when none is left the caller gets 503 with a
//! Retry-After. Each gateway is probed with OPTIONS every
//! [`PROBE_EVERY`]: one that leaves a probe unanswered for [`DOWN_AFTER`]
//! is down (no call is sent to it) until it answers one again. A
//! gateway's calls from this supernode are counted from the INVITE until
//! its final response, or for an answered call until its BYE passes this
//! edge (or the longest dialog runs out), against its cap.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmesh_sip::transaction::{ClientKey, ServerKey};
use ringmesh_sip::{HeaderName, Message, Method};

use super::routing::Target;
use super::services::Onward;
use super::{IdMap, Now, Origin, Pending, Proxy};
use crate::gateways::{self, GatewayRecord};
use crate::location::{Located, LocationError, LocationOp};
use crate::observe::{GatewayEvent, LocatedEvent, Metric};
use crate::token::Dest;

/// How often each gateway is sent an OPTIONS.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe may go unanswered before its gateway is down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1500);

/// This supernode's bookkeeping of gateway calls and probes.
#[derive(Debug, Default)]
pub(super) struct GatewayRuntime {
    /// When a call's current gateway must have answered something, oldest
    /// first (a fixed timeout: pushed in order).
    deadlines: VecDeque<(Instant, ServerKey)>,
    /// Outstanding probes: the gateway each is for.
    probes: IdMap<ClientKey, String>,
    /// When each gateway's outstanding probe was sent.
    probing: HashMap<String, Instant>,
    next_probe: Option<Instant>,
    /// Answered calls through a gateway, by (Call-ID, caller's tag): the
    /// gateway and when the call is given up as over.
    up: HashMap<(Bytes, Bytes), (String, Instant)>,
    /// When the table is read from the ring next, and whether a read is
    /// under way.
    next_refresh: Option<Instant>,
    refreshing: bool,
}

/// A call sent to one server after another (a gateway, or a server RFC
/// 3263 found for an ENUM URI): what moving it to the next needs.
#[derive(Debug)]
pub(super) struct SerialHop {
    pub origin: Origin,
    pub onward: Onward,
    /// The E.164 number (for a peer farm's domain, the Request-URI), and
    /// the Routes of ours the request came with.
    pub number: String,
    pub pop_routes: usize,
    /// Where it is, and where it goes next.
    pub way: Way,
    /// Where it was sent last.
    sent_to: Option<Dest>,
    /// The server answered something (no timeout applies then), and
    /// when it must have.
    heard: bool,
    deadline: Instant,
}

/// Which servers a [`SerialHop`] goes through.
#[derive(Debug)]
pub(super) enum Way {
    /// The gateway it is at, and those left to try.
    Gateways { current: String, left: Vec<String> },
    /// The servers of an ENUM URI's domain (`located.rs`).
    Located(Box<super::located::Located>),
}

impl SerialHop {
    pub fn new(
        origin: Origin,
        onward: Onward,
        number: String,
        pop_routes: usize,
        way: Way,
        now: Now,
    ) -> Self {
        SerialHop {
            origin,
            onward,
            number,
            pop_routes,
            way,
            sent_to: None,
            heard: false,
            deadline: now.mono,
        }
    }

    /// Whether a final `status` (or, `None`, a transport failure or
    /// silence) moves the call on: a gateway's 408 or 5xx; a located
    /// server's 408 or 503 (RFC 3263 §4.3: the others are answers).
    fn fails_over(&self, status: Option<u16>) -> bool {
        match (status, &self.way) {
            (None, _) | (Some(408), _) => true,
            (Some(s), Way::Gateways { .. }) => (500..600).contains(&s),
            (Some(s), Way::Located(_)) => s == 503,
        }
    }

    /// The gateway it is at, if it is at one.
    fn gateway(&self) -> Option<&str> {
        match &self.way {
            Way::Gateways { current, .. } => Some(current),
            Way::Located(_) => None,
        }
    }
}

impl GatewayRuntime {
    pub fn next_due(&self) -> Option<Instant> {
        [
            self.deadlines.front().map(|(at, _)| *at),
            self.next_probe,
            self.next_refresh,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Proxy {
    /// Replaces the gateway table (what the ring holds); probing starts
    /// or stops with it.
    pub fn set_gateways(&mut self, records: Vec<GatewayRecord>, now: Now) {
        self.gateways.set(records);
        let names: Vec<&str> = self.gateways.iter().map(|g| g.rec.name.as_str()).collect();
        self.gw.probing.retain(|n, _| names.contains(&n.as_str()));
        self.gw.up.retain(|_, (n, _)| names.contains(&n.as_str()));
        self.gw.next_probe = match (self.gateways.is_empty(), self.gw.next_probe) {
            (true, _) => None,
            (false, None) => Some(now.mono),
            (false, next) => next,
        };
    }

    /// The table changed in the ring: it is read again now.
    pub fn gateways_changed(&mut self, now: Now) {
        if self.policy.gateway_refresh.is_some() {
            self.refresh_gateways(now);
            self.drive(now);
        }
    }

    /// Each gateway as this supernode sees it.
    pub fn gateway_states(&self) -> Vec<gateways::GatewayState> {
        self.gateways.iter().cloned().collect()
    }

    /// A subscriber's INVITE for `number` (`numbers.rs`): to a gateway;
    /// 480 when the farm has none.
    pub(super) fn route_to_gateway(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: Onward,
        number: String,
        now: Now,
    ) {
        if self.gateways.is_empty() {
            return self.reply(server, &msg, 480, &[], now);
        }
        let mut route = self.gateways.route(&number, &self.policy.region);
        if route.is_empty() {
            return self.no_gateway(server, &msg, now);
        }
        let first = route.remove(0);
        let pop_routes = self.our_routes(&msg);
        let way = Way::Gateways {
            current: first,
            left: route,
        };
        let hop = SerialHop::new(origin, onward, number, pop_routes, way, now);
        self.send_serial(server, msg, hop, now);
    }

    /// How many of `msg`'s first Routes name this node (they go).
    pub(super) fn our_routes(&self, msg: &Message) -> usize {
        msg.routes().take_while(|r| self.me.is_me(r.uri())).count()
    }

    /// Sends the call where `hop` is, or on to the next gateway when it
    /// cannot be sent there.
    pub(super) fn send_serial(
        &mut self,
        server: ServerKey,
        msg: Message,
        mut hop: SerialHop,
        now: Now,
    ) {
        let target = match &hop.way {
            Way::Gateways { current, .. } => {
                let Some(g) = self.gateways.get_mut(current) else {
                    return self.next_gateway(server, msg, hop, None, now);
                };
                g.active += 1;
                let (addr, transport) = (g.rec.addr, g.rec.transport);
                self.observer.observe(Metric::Gateway {
                    name: current,
                    event: GatewayEvent::Sent,
                });
                let uri = format!("sip:{}@{addr};user=phone", hop.number);
                Target {
                    uri: Some(Bytes::from(uri)),
                    ..Target::hop(Dest::Addr { transport, addr })
                }
            }
            Way::Located(l) => self.located_target(l),
        };
        hop.sent_to = Some(target.dest);
        let pop_routes = hop.pop_routes;
        let onward = std::mem::take(&mut hop.onward);
        self.proxy_to(
            server,
            msg,
            hop.origin,
            vec![target],
            pop_routes,
            &onward,
            now,
        );
        hop.onward = onward;
        match self.proxies.get_mut(&server) {
            Some(ctx) => {
                hop.heard = false;
                hop.deadline = now.mono + self.policy.gateway_timeout;
                self.gw.deadlines.push_back((hop.deadline, server));
                ctx.serial = Some(Box::new(hop));
            }
            // Nothing could be sent (and 500 went up): the count goes back.
            None => {
                if let Some(name) = hop.gateway() {
                    self.release_gateway(name);
                }
            }
        }
    }

    /// No gateway (left) can take the call.
    fn no_gateway(&mut self, server: ServerKey, msg: &Message, now: Now) {
        let retry_after = self.retry_after.clone();
        self.reply(
            server,
            msg,
            503,
            &[
                (HeaderName::RetryAfter, &retry_after),
                (
                    HeaderName::Warning,
                    b"399 ringmesh \"no PSTN gateway can take the call\"",
                ),
            ],
            now,
        );
    }

    fn release_gateway(&mut self, name: &str) {
        if let Some(g) = self.gateways.get_mut(name) {
            g.active = g.active.saturating_sub(1);
        }
    }

    /// A response (or, `None`, a failure) on a call sent serially. `true`
    /// when it was taken here: the call moved on to the next server.
    pub(super) fn serial_heard(
        &mut self,
        server: ServerKey,
        status: Option<u16>,
        now: Now,
    ) -> bool {
        let Some(ctx) = self.proxies.get_mut(&server) else {
            return false;
        };
        let Some(hop) = ctx.serial.as_deref_mut() else {
            return false;
        };
        if status.is_some_and(|s| s < 200) {
            hop.heard = true;
            return false;
        }
        if hop.fails_over(status) {
            self.serial_failed(server, status, now);
            return true;
        }
        // A final answer: the call stays where it is.
        let hop = ctx.serial.take().expect("found above");
        let answered = status.is_some_and(|s| s < 300);
        // An answered call holds its gateway until its BYE passes.
        let call = ctx.request().filter(|_| answered).map(|req| {
            (
                req.share(req.call_id()),
                req.share(req.from_tag().unwrap_or_default()),
            )
        });
        match hop.way {
            Way::Gateways { current: name, .. } => {
                let event = if answered {
                    GatewayEvent::Answered
                } else {
                    GatewayEvent::Refused
                };
                self.observer
                    .observe(Metric::Gateway { name: &name, event });
                match call {
                    Some(key) => {
                        self.gw.up.insert(key, (name, now.mono + self.max_call));
                    }
                    None => self.release_gateway(&name),
                }
            }
            Way::Located(l) => self.observer.observe(Metric::Located {
                peer: l.peer(),
                event: if answered {
                    LocatedEvent::Answered
                } else {
                    LocatedEvent::Refused
                },
            }),
        }
        false
    }

    /// The server failed the call: it is given up there (a CANCEL follows
    /// anything it answers late) and tried at the next.
    fn serial_failed(&mut self, server: ServerKey, status: Option<u16>, now: Now) {
        let Some(mut ctx) = self.proxies.remove(&server) else {
            return;
        };
        for (c, done) in &ctx.branches {
            if !done {
                let _ = self.txl.cancel(*c, now.mono);
            }
            self.client_to_server.remove(c);
        }
        if ctx.is_call() {
            self.observer.observe(Metric::CallEnded);
        }
        let (Some(hop), Some(msg)) = (ctx.serial.take(), ctx.take_request()) else {
            return;
        };
        if let Some(name) = hop.gateway() {
            self.observer.observe(Metric::Gateway {
                name,
                event: GatewayEvent::FailedOver,
            });
            tracing::info!(gateway = %name, ?status, number = %hop.number, "a gateway failed a call");
            self.release_gateway(name);
        } else if let Way::Located(l) = &hop.way {
            self.observer.observe(Metric::Located {
                peer: l.peer(),
                event: LocatedEvent::FailedOver,
            });
        }
        if ctx.cancelled() {
            return self.reply(server, &msg, 487, &[], now);
        }
        if hop.gateway().is_some() {
            self.next_gateway(server, *msg, *hop, status, now);
        } else {
            self.next_located(server, *msg, *hop, None, now);
        }
    }

    fn next_gateway(
        &mut self,
        server: ServerKey,
        msg: Message,
        mut hop: SerialHop,
        status: Option<u16>,
        now: Now,
    ) {
        if let Way::Gateways { current, left } = &mut hop.way {
            // Skip those that went down or filled up meanwhile.
            while !left.is_empty() {
                let next = left.remove(0);
                if self
                    .gateways
                    .iter()
                    .any(|g| g.rec.name == next && g.usable())
                {
                    *current = next;
                    return self.send_serial(server, msg, hop, now);
                }
            }
        }
        tracing::info!(number = %hop.number, ?status, "no gateway left for a call");
        self.no_gateway(server, &msg, now);
    }

    /// A BYE passes: a call through a gateway is over.
    pub(super) fn gateway_bye(&mut self, msg: &Message) {
        if self.gw.up.is_empty() {
            return;
        }
        let call_id = Bytes::copy_from_slice(msg.call_id());
        for tag in [msg.from_tag(), msg.to_tag()] {
            let key = (
                call_id.clone(),
                Bytes::copy_from_slice(tag.unwrap_or_default()),
            );
            if let Some((name, _)) = self.gw.up.remove(&key) {
                return self.release_gateway(&name);
            }
        }
    }

    /// Nothing can be sent to `dest` (a connection to it was refused):
    /// the calls sent there that heard nothing yet move on at once.
    pub fn connection_refused(&mut self, dest: Dest, now: Now) {
        // (The calls waiting on a server are those with a deadline.)
        let waiting: Vec<ServerKey> = self.gw.deadlines.iter().map(|(_, s)| *s).collect();
        for server in waiting {
            let sent_there = self
                .proxies
                .get(&server)
                .and_then(|c| c.serial.as_deref())
                .is_some_and(|h| !h.heard && h.sent_to == Some(dest));
            if sent_there {
                self.serial_failed(server, None, now);
            }
        }
        self.drive(now);
    }

    /// Gateway timers: calls that heard nothing in time move on, the
    /// table's refresh, probes (and answered calls that ran out).
    pub(super) fn gateway_timers(&mut self, now: Now) {
        while let Some(&(at, server)) = self.gw.deadlines.front() {
            if at > now.mono {
                break;
            }
            self.gw.deadlines.pop_front();
            // (A call that moved on has a later deadline of its own.)
            let silent = self
                .proxies
                .get(&server)
                .and_then(|c| c.serial.as_deref())
                .is_some_and(|h| !h.heard && h.deadline <= now.mono);
            if silent {
                self.serial_failed(server, None, now);
            }
        }
        if self.gw.next_refresh.is_some_and(|at| at <= now.mono) {
            self.refresh_gateways(now);
        }
        if self.gw.next_probe.is_some_and(|at| at <= now.mono) {
            self.gw.next_probe = Some(now.mono + PROBE_EVERY);
            self.probe_gateways(now);
            // Answered calls whose BYE never passed: over at the longest
            // dialog (swept with the probes, not at every timer).
            let over: Vec<_> = self
                .gw
                .up
                .iter()
                .filter(|(_, (_, until))| *until <= now.mono)
                .map(|(k, _)| k.clone())
                .collect();
            for k in over {
                if let Some((name, _)) = self.gw.up.remove(&k) {
                    self.release_gateway(&name);
                }
            }
        }
    }

    /// Starts reading the table from the ring every `every`.
    pub(super) fn start_gateway_refresh(&mut self, now: Now) {
        if self.policy.gateway_refresh.is_some() && self.gw.next_refresh.is_none() {
            self.gw.next_refresh = Some(now.mono);
        }
    }

    fn refresh_gateways(&mut self, now: Now) {
        let every = self
            .policy
            .gateway_refresh
            .unwrap_or(Duration::from_secs(2));
        self.gw.next_refresh = Some(now.mono + every);
        if std::mem::replace(&mut self.gw.refreshing, true) {
            return;
        }
        self.locate(
            LocationOp::Gateways {
                now_ms: now.wall_ms,
            },
            Pending::GatewayTable,
        );
    }

    pub(super) fn gateways_read(&mut self, result: Result<Located, LocationError>, now: Now) {
        self.gw.refreshing = false;
        let records = match result {
            Ok(Located::Gateways(records)) => records,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "gateways not read; the table stays as it was");
                return;
            }
        };
        // The ring keeps nothing for more than 30 days: entries near their
        // end are written again.
        for r in records
            .iter()
            .filter(|r| r.expires_at_ms < now.wall_ms + gateways::REWRITE_BEFORE_MS)
        {
            let record = GatewayRecord {
                expires_at_ms: now.wall_ms + gateways::LIFETIME_MS,
                ..r.clone()
            };
            self.locate(
                LocationOp::KeepGateway {
                    record: Box::new(record),
                },
                Pending::GatewayKept,
            );
        }
        self.set_gateways(records, now);
    }

    /// Sends an OPTIONS to every gateway with no probe outstanding, and
    /// marks down those whose probe went unanswered too long.
    fn probe_gateways(&mut self, now: Now) {
        let due: Vec<(String, std::net::SocketAddr, crate::binding::Transport)> = self
            .gateways
            .iter()
            .map(|g| (g.rec.name.clone(), g.rec.addr, g.rec.transport))
            .collect();
        for (name, addr, transport) in due {
            if let Some(&sent) = self.gw.probing.get(&name) {
                if now.mono.saturating_duration_since(sent) >= DOWN_AFTER {
                    self.gateway_down(&name);
                }
                continue;
            }
            let t = Target::hop(Dest::Addr { transport, addr });
            let ruri = format!("sip:{addr}");
            let (mut w, branch) = self.own_request(&Method::Options, "gw", ruri.as_bytes(), &t);
            let domain = &self.me.domain;
            let n = self.branch_counter;
            w.header_fmt(
                HeaderName::From,
                format_args!("<sip:ringmesh@{domain}>;tag=gw{n:x}"),
            );
            w.header_fmt(HeaderName::To, format_args!("<{ruri}>"));
            w.header_fmt(
                HeaderName::CallId,
                format_args!("gw-{n:x}-{}", super::guarding::hex_id(&self.me.node_id)),
            );
            w.header(HeaderName::CSeq, b"1 OPTIONS");
            match self.txl.send_request_raw(
                w.finish(b""),
                &Method::Options,
                branch.as_bytes(),
                t.dest,
                t.dest.reliable(),
                now.mono,
            ) {
                Ok(client) => {
                    self.gw.probes.insert(client, name.clone());
                    self.gw.probing.insert(name, now.mono);
                }
                Err(e) => tracing::warn!(gateway = %name, error = %e, "could not probe a gateway"),
            }
        }
    }

    fn gateway_down(&mut self, name: &str) {
        if let Some(g) = self.gateways.get_mut(name).filter(|g| g.up) {
            g.up = false;
            tracing::warn!(gateway = %name, addr = %g.rec.addr, "a PSTN gateway stopped answering: no calls go to it");
            self.observer.observe(Metric::Gateway {
                name,
                event: GatewayEvent::Down,
            });
        }
    }

    /// An answer (any: the gateway is alive) or a failure of a probe;
    /// `false` when `client` is not one.
    pub(super) fn probe_answered(&mut self, client: ClientKey, status: Option<u16>) -> bool {
        let Some(name) = self.gw.probes.get(&client).cloned() else {
            return false;
        };
        match status {
            Some(_) => {
                if let Some(g) = self.gateways.get_mut(&name).filter(|g| !g.up) {
                    g.up = true;
                    tracing::info!(gateway = %name, "a PSTN gateway answers again");
                    self.observer.observe(Metric::Gateway {
                        name: &name,
                        event: GatewayEvent::Up,
                    });
                }
            }
            None => self.gateway_down(&name),
        }
        if status.is_none_or(|s| s >= 200) {
            self.gw.probes.remove(&client);
            self.gw.probing.remove(&name);
        }
        true
    }

    /// A probe's transaction ended.
    pub(super) fn probe_forget(&mut self, client: &ClientKey) {
        if let Some(name) = self.gw.probes.remove(client) {
            self.gw.probing.remove(&name);
        }
    }
}
