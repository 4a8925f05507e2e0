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
use crate::observe::{GatewayEvent, Metric};
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

/// A call at a gateway: what moving it to the next one needs.
#[derive(Debug)]
pub(super) struct GatewayHop {
    origin: Origin,
    onward: Onward,
    /// The E.164 number, and the Routes of ours the request came with.
    number: String,
    pop_routes: usize,
    /// The gateway it is at, and those left to try.
    current: String,
    left: Vec<String>,
    /// The gateway answered something (no timeout applies then), and
    /// when it must have.
    heard: bool,
    deadline: Instant,
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
        // The Routes that brought it here name this node: they go.
        let pop_routes = msg.routes().take_while(|r| self.me.is_me(r.uri())).count();
        let hop = GatewayHop {
            origin,
            onward,
            number,
            pop_routes,
            current: first,
            left: route,
            heard: false,
            deadline: now.mono,
        };
        self.send_to_gateway(server, msg, hop, now);
    }

    /// Sends the call to `hop.current`, or on to the next when it cannot
    /// be sent there.
    fn send_to_gateway(&mut self, server: ServerKey, msg: Message, mut hop: GatewayHop, now: Now) {
        let Some(g) = self.gateways.get_mut(&hop.current) else {
            return self.next_gateway(server, msg, hop, None, now);
        };
        g.active += 1;
        let (addr, transport) = (g.rec.addr, g.rec.transport);
        let uri = format!("sip:{}@{addr};user=phone", hop.number);
        let target = Target {
            uri: Some(Bytes::from(uri)),
            ..Target::hop(Dest::Addr { transport, addr })
        };
        self.observer.observe(Metric::Gateway {
            name: &hop.current,
            event: GatewayEvent::Sent,
        });
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
                hop.deadline = now.mono + self.policy.gateway_timeout;
                self.gw.deadlines.push_back((hop.deadline, server));
                ctx.gateway = Some(Box::new(hop));
            }
            // Nothing could be sent (and 500 went up): the count goes back.
            None => self.release_gateway(&hop.current),
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

    /// A response (or, `None`, a failure) on a call at a gateway. `true`
    /// when it was taken here: the call moved on to the next gateway.
    pub(super) fn gateway_heard(
        &mut self,
        server: ServerKey,
        status: Option<u16>,
        now: Now,
    ) -> bool {
        let Some(hop) = self
            .proxies
            .get_mut(&server)
            .and_then(|c| c.gateway.as_deref_mut())
        else {
            return false;
        };
        match status {
            Some(s) if s < 200 => {
                hop.heard = true;
                false
            }
            Some(s) if s < 300 => {
                hop.heard = true;
                let name = hop.current.clone();
                self.observer.observe(Metric::Gateway {
                    name: &name,
                    event: GatewayEvent::Answered,
                });
                let ctx = self.proxies.get_mut(&server).expect("found above");
                ctx.gateway = None;
                if let Some(req) = ctx.request() {
                    let key = (
                        req.share(req.call_id()),
                        req.share(req.from_tag().unwrap_or_default()),
                    );
                    self.gw.up.insert(key, (name, now.mono + self.max_call));
                }
                false
            }
            Some(s) if s != 408 && s < 500 || s >= 600 => {
                let name = std::mem::take(&mut hop.current);
                self.proxies.get_mut(&server).expect("found above").gateway = None;
                self.observer.observe(Metric::Gateway {
                    name: &name,
                    event: GatewayEvent::Refused,
                });
                self.release_gateway(&name);
                false
            }
            _ => {
                self.gateway_failed(server, status, now);
                true
            }
        }
    }

    /// The gateway failed the call: it is given up there (a CANCEL follows
    /// anything it answers late) and tried at the next.
    fn gateway_failed(&mut self, server: ServerKey, status: Option<u16>, now: Now) {
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
        let (Some(hop), Some(msg)) = (ctx.gateway.take(), ctx.take_request()) else {
            return;
        };
        self.observer.observe(Metric::Gateway {
            name: &hop.current,
            event: GatewayEvent::FailedOver,
        });
        tracing::info!(gateway = %hop.current, ?status, number = %hop.number, "a gateway failed a call");
        self.release_gateway(&hop.current);
        if ctx.cancelled() {
            return self.reply(server, &msg, 487, &[], now);
        }
        self.next_gateway(server, *msg, *hop, status, now);
    }

    fn next_gateway(
        &mut self,
        server: ServerKey,
        msg: Message,
        mut hop: GatewayHop,
        status: Option<u16>,
        now: Now,
    ) {
        // Skip those that went down or filled up meanwhile.
        while !hop.left.is_empty() {
            let next = hop.left.remove(0);
            if self
                .gateways
                .iter()
                .any(|g| g.rec.name == next && g.usable())
            {
                hop.current = next;
                hop.heard = false;
                return self.send_to_gateway(server, msg, hop, now);
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
                .and_then(|c| c.gateway.as_deref())
                .is_some_and(|h| !h.heard && h.deadline <= now.mono);
            if silent {
                self.gateway_failed(server, None, now);
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
