//! Forwarding a request to one or more targets in parallel and choosing
//! the response (RFC 3261 §16.6, §16.7), CANCEL of the losing branches and
//! of a cancelled INVITE (§16.10).

use std::time::Instant;

use ringmesh_sip::transaction::{ClientKey, ServerKey, TransactionKey};
use ringmesh_sip::{Forward, HeaderName, Message, Method, Via};

use super::privacy::{Privacy, Rewritten, USER_HEADERS, anonymous_from, upstream_response};
use super::routing::{Target, rewrite_top_via};
use super::services::Onward;
use super::{Now, Origin, Pending, Proxy, loop_hash, transport_of};
use crate::binding::Transport;
use crate::observe::Metric;
use crate::token::{Dest, Dialog};

/// What the proxy keeps per forwarded request (§16.7 response context).
/// The request itself is needed only until the final response went
/// upstream (to answer locally); an INVITE's context lives on for Timer L
/// without it.
#[derive(Debug)]
pub(super) struct ProxyCtx {
    request: Option<Box<Message>>,
    transport: Transport,
    pub is_invite: bool,
    /// Each branch's client transaction, and whether it has ended.
    pub branches: Vec<(ClientKey, bool)>,
    /// The best final response so far, and the branch it came on.
    best: Option<(Box<Message>, ClientKey)>,
    final_sent: bool,
    cancelled: bool,
    /// A branch ended because the supernode it went to is gone.
    edge_gone: bool,
    started: Instant,
    /// An INVITE toward a callee (not to an application server: a call
    /// through servers is counted once, on its way to the callee).
    call: bool,
    /// The application server this request went to, if it did.
    pub service: Option<Box<super::services::ServiceHop>>,
    /// The PSTN gateway (or the server of another domain) this call is
    /// at, if it is (`gateways.rs`, `located.rs`).
    pub serial: Option<Box<super::gateways::SerialHop>>,
    /// What its responses need from a request rewritten for privacy or
    /// topology hiding (`privacy.rs`).
    rewritten: Option<Box<Rewritten>>,
}

impl ProxyCtx {
    /// A final response went upstream.
    pub fn answered(&self) -> bool {
        self.final_sent
    }

    pub fn is_call(&self) -> bool {
        self.call
    }

    /// The request, once the context is given up before any final
    /// response (an application server failed).
    pub fn take_request(&mut self) -> Option<Box<Message>> {
        self.request.take()
    }

    /// The request, until its final response went upstream.
    pub fn request(&self) -> Option<&Message> {
        self.request.as_deref()
    }

    /// The caller cancelled it.
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }
}

/// Rank of a final response for §16.7 step 6: lower is better.
fn rank(status: u16) -> u16 {
    match status {
        600..=699 => 0,
        300..=399 => 1,
        401 | 407 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl Proxy {
    /// Forwards `msg` to every target in parallel (§16.6, §16.7), for the
    /// leaf, trusted element or supernode it came from.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proxy_to(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        targets: Vec<Target>,
        pop_routes: usize,
        onward: &Onward,
        now: Now,
    ) {
        let from = origin.flow();
        let loop_hash = loop_hash(&msg);
        let record_route = matches!(
            msg.method(),
            Method::Invite | Method::Subscribe | Method::Refer
        ) && msg.to_tag().is_none();
        let top_via = from.and_then(|f| rewrite_top_via(&msg.top_via(), f));
        let privacy = Privacy::of(&msg);
        let hiding = privacy.header || self.policy.topology_hiding;
        let mut rewritten = Rewritten {
            hide_upstream: self.policy.topology_hiding && origin.is_phone(),
            ..Rewritten::default()
        };
        let max_forwards = msg.max_forwards().map_or(70, |m| m.saturating_sub(1));
        let sips = msg
            .request_uri()
            .is_some_and(|u| u.scheme() == ringmesh_sip::Scheme::Sips);
        // Record-Route starts a dialog: its tokens name it.
        let dialog = Dialog {
            call_id: msg.call_id(),
            caller_tag: msg.from_tag().unwrap_or_default(),
        };
        let to_service = targets.iter().any(|t| t.service);
        let mut branches = Vec::with_capacity(targets.len());
        for target in targets {
            let dest = target.dest;
            let t = dest.transport();
            let below = match top_via.as_deref().map(Via::parse) {
                Some(Ok(v)) => v,
                _ => msg.top_via(),
            };
            let branch = self.new_branch(loop_hash, &below);
            let via = format!(
                "SIP/2.0/{} {}:{};branch={branch}",
                t.via_token(),
                self.me.advertise,
                self.me.port(t)
            );
            // This node record-routes once for each leaf it serves on the
            // path: the callee's flow when it sends to a leaf, the caller's
            // when a leaf sent the request (RFC 5626 §5.3 flow tokens).
            let rr = record_route
                .then(|| {
                    let mut rr = Vec::new();
                    if dest.is_leaf() {
                        rr.push(self.rr_uri(dest, t, dialog, sips, now.secs()));
                    }
                    if let Some(f) = from {
                        rr.push(self.rr_uri(
                            Dest::Flow(f),
                            f.transport(),
                            dialog,
                            sips,
                            now.secs(),
                        ));
                    }
                    rr.join(", ")
                })
                .filter(|rr| !rr.is_empty());
            // The identity a phone claims is never trusted (RFC 3325 §5:
            // PAI, PPI and Remote-Party-ID go); the one this farm asserts is
            // withheld from a phone when the caller asked for privacy
            // (`privacy.rs`; application servers and trusted elements are
            // in the trust domain).
            let to_phone = (privacy != Privacy::default()
                || hiding
                || onward.charging.is_some()
                || msg.has_header(HeaderName::PChargingVector))
                && self.untrusted_leaf(dest, target.service);
            let withheld = to_phone && privacy.id;
            let anonymous = to_phone && privacy.anonymous_from();
            let hide = to_phone && hiding;
            let mut strip = Vec::with_capacity(5);
            if origin.is_phone() || target.called.is_some() {
                // The farm says which identity was called, no one else.
                strip.push(HeaderName::PCalledPartyId);
            }
            // A peer farm outside the trust domain is held to the same.
            if origin.is_phone() || self.distrusted_peer(origin) {
                strip.extend([
                    HeaderName::PAssertedIdentity,
                    HeaderName::PPreferredIdentity,
                    HeaderName::RemotePartyId,
                    HeaderName::PChargingVector,
                ]);
                if origin.is_phone() && self.auth.is_some() {
                    strip.push(HeaderName::ProxyAuthorization);
                }
            } else if withheld {
                strip.push(HeaderName::PAssertedIdentity);
            }
            // The charging vector stays inside the farm and its trusted
            // elements (it names the edge that made it).
            if to_phone {
                strip.push(HeaderName::PChargingVector);
            }
            if anonymous {
                strip.push(HeaderName::From);
                rewritten.from = Some(msg.share(msg.from_bytes()));
            }
            if to_phone && privacy.user {
                strip.extend(USER_HEADERS);
            }
            // Topology hiding: our Via alone, and farm Record-Routes naming
            // this node.
            let rr = if hide {
                strip.extend([HeaderName::Via, HeaderName::RecordRoute]);
                rewritten.vias = Some(
                    msg.header_lines(HeaderName::Via)
                        .map(|v| msg.share(v))
                        .collect(),
                );
                self.record_routes_hidden(rr, &msg, now.secs())
            } else {
                rr
            };
            let mut w = msg.forward_writer(&Forward {
                request_uri: target.uri.as_deref(),
                via: via.as_bytes(),
                top_via: top_via.as_deref(),
                record_route: rr.as_deref().map(str::as_bytes),
                push_route: target.push_route.as_deref().map(str::as_bytes),
                pop_routes,
                max_forwards,
                strip: &strip,
            });
            if let Some(a) = onward.asserted.as_deref().filter(|_| !withheld) {
                w.header(HeaderName::PAssertedIdentity, a);
            }
            if let Some(called) = &target.called {
                w.header(HeaderName::PCalledPartyId, called);
            }
            if anonymous {
                w.header(HeaderName::From, &anonymous_from(&msg));
            }
            if let Some(pcv) = onward.charging.as_ref().filter(|_| !to_phone) {
                w.header(HeaderName::PChargingVector, pcv);
            }
            let out = w.finish(msg.body());
            // Our own writer's output: handed over as bytes, not parsed again.
            match self.txl.send_request_raw(
                out,
                msg.method(),
                branch.as_bytes(),
                dest,
                dest.reliable(),
                now.mono,
            ) {
                Ok(client) => {
                    self.client_to_server.insert(client, server);
                    branches.push((client, false));
                    if anonymous || hide {
                        rewritten.branches.push(client);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not start a client transaction"),
            }
        }
        if branches.is_empty() {
            return self.reply(server, &msg, 500, &[], now);
        }
        self.observer.observe(Metric::Forwarded {
            method: msg.method(),
        });
        let is_invite = *msg.method() == Method::Invite;
        let call = is_invite && !to_service;
        if call {
            self.observer.observe(Metric::CallStarted);
        }
        self.proxies.insert(
            server,
            ProxyCtx {
                transport: transport_of(&msg),
                is_invite,
                request: Some(Box::new(msg)),
                branches,
                best: None,
                final_sent: false,
                cancelled: false,
                edge_gone: false,
                started: now.mono,
                call,
                service: None,
                serial: None,
                rewritten: (rewritten.hide_upstream || !rewritten.branches.is_empty())
                    .then(|| Box::new(rewritten)),
            },
        );
    }

    pub(super) fn on_response(&mut self, client: ClientKey, msg: Message, now: Now) {
        if self.notifier_answered(client, msg.status(), now)
            || self.delivery_answered(client, msg.status(), now)
            || self.probe_answered(client, msg.status())
        {
            return;
        }
        let Some(&server) = self.client_to_server.get(&client) else {
            return;
        };
        let Some(status) = msg.status() else { return };
        if self.serial_heard(server, Some(status), now)
            || self.service_heard(server, Some(status), now)
            || status == 100
        {
            return;
        }
        let Some(ctx) = self.proxies.get_mut(&server) else {
            return;
        };
        let transport = ctx.transport;
        let up = |ctx: &ProxyCtx, tokens, me| {
            upstream_response(
                tokens,
                me,
                ctx.rewritten.as_deref(),
                client,
                &msg,
                now.secs(),
            )
        };
        if status < 200 {
            if !ctx.final_sent {
                let out = up(ctx, &self.tokens, &self.me);
                self.respond(server, status, out, transport, now);
            }
            return;
        }
        if let Some(b) = ctx.branches.iter_mut().find(|(c, _)| *c == client) {
            b.1 = true;
        }
        if status < 300 {
            let first = !ctx.final_sent;
            ctx.final_sent = true;
            ctx.request = None;
            let is_invite = ctx.is_invite;
            let call = ctx.call;
            let started = ctx.started;
            // This branch is done (above): the others still pending.
            let others: Vec<ClientKey> = ctx
                .branches
                .iter()
                .filter(|(_, done)| !done)
                .map(|(c, _)| *c)
                .collect();
            let out = up(ctx, &self.tokens, &self.me);
            if first {
                self.call_path(server, &msg, now.secs());
            }
            self.respond(server, status, out, transport, now);
            if first && call {
                self.observer.observe(Metric::CallSetupLatency(
                    now.mono.saturating_duration_since(started),
                ));
            }
            if first && is_invite {
                for c in others {
                    let _ = self.txl.cancel(c, now.mono);
                }
            }
            return;
        }
        // 3xx–6xx: keep the best, answer when every branch is done.
        let better = ctx
            .best
            .as_ref()
            .is_none_or(|(b, _)| rank(status) < rank(b.status().unwrap_or(500)));
        if better {
            ctx.best = Some((Box::new(msg), client));
        }
        if (600..700).contains(&status) && ctx.is_invite {
            let others: Vec<ClientKey> = ctx
                .branches
                .iter()
                .filter(|(_, done)| !done)
                .map(|(c, _)| *c)
                .collect();
            for c in others {
                let _ = self.txl.cancel(c, now.mono);
            }
        }
        self.maybe_finish(server, now);
    }

    pub(super) fn on_branch_failed(&mut self, client: ClientKey, now: Now) {
        if self.notifier_answered(client, None, now)
            || self.delivery_answered(client, None, now)
            || self.probe_answered(client, None)
        {
            return;
        }
        let Some(&server) = self.client_to_server.get(&client) else {
            return;
        };
        if self.serial_heard(server, None, now) || self.service_heard(server, None, now) {
            return;
        }
        if let Some(ctx) = self.proxies.get_mut(&server)
            && let Some(b) = ctx.branches.iter_mut().find(|(c, _)| *c == client)
        {
            b.1 = true;
        }
        self.maybe_finish(server, now);
    }

    /// The link to supernode `node` is gone: its process stopped or died,
    /// and the branches sent there that have no final answer will never
    /// get one. They end now, and a request left with no answer at all
    /// gets 480 with Retry-After, as when the callee's supernode cannot be
    /// reached, instead of waiting for its transaction to time out.
    pub fn peer_gone(&mut self, node: [u8; 16], now: Now) {
        let dest = Dest::Peer(node);
        let stranded: Vec<(ClientKey, ServerKey)> = self
            .client_to_server
            .iter()
            .filter(|(c, _)| self.txl.client_dest(**c) == Some(&dest))
            .map(|(c, s)| (*c, *s))
            .collect();
        for (client, server) in stranded {
            if let Some(ctx) = self.proxies.get_mut(&server) {
                ctx.edge_gone = true;
            }
            self.txl
                .transport_error(TransactionKey::Client(client), now.mono);
        }
        self.drive(now);
    }

    /// Sends the best final response once no branch is pending (§16.7 step 6).
    fn maybe_finish(&mut self, server: ServerKey, now: Now) {
        let Some(ctx) = self.proxies.get_mut(&server) else {
            return;
        };
        if ctx.final_sent || ctx.branches.iter().any(|(_, done)| !done) {
            return;
        }
        ctx.final_sent = true;
        let transport = ctx.transport;
        let started = ctx.started;
        let call = ctx.call;
        let Some(req) = ctx.request.take() else {
            return;
        };
        match ctx.best.take() {
            Some((best, client)) => {
                let status = best.status().unwrap_or(500);
                // A 503 from downstream means "that hop is overloaded", not
                // "this proxy is": pass on 500 instead (§16.7 step 6).
                let status = if status == 503 { 500 } else { status };
                let out = if status == best.status().unwrap_or(500) {
                    let rw = ctx.rewritten.as_deref();
                    upstream_response(&self.tokens, &self.me, rw, client, &best, now.secs())
                } else {
                    let tag = self.to_tag(&req);
                    req.response_writer(status, Some(&tag)).finish(b"")
                };
                self.respond(server, status, out, transport, now);
            }
            None if ctx.cancelled => self.reply(server, &req, 487, &[], now),
            None if ctx.edge_gone => self.callee_unreachable(server, &req, now),
            None => self.reply(server, &req, 408, &[], now),
        }
        if call {
            self.observer.observe(Metric::CallSetupLatency(
                now.mono.saturating_duration_since(started),
            ));
        }
    }

    pub(super) fn on_cancel(
        &mut self,
        server: ServerKey,
        invite: Option<ServerKey>,
        msg: &Message,
        now: Now,
    ) {
        let Some(invite) = invite else {
            return self.reply(server, msg, 481, &[], now);
        };
        self.reply(server, msg, 200, &[], now);
        match self.proxies.get_mut(&invite) {
            // Every pending branch is cancelled (§16.10). Once a final
            // response went up none is left to cancel: a 2xx cancelled the
            // others already, any other final waited for every branch.
            Some(ctx) => {
                ctx.cancelled = true;
                let pending: Vec<ClientKey> = ctx
                    .branches
                    .iter()
                    .filter(|(_, d)| !d)
                    .map(|(c, _)| *c)
                    .collect();
                for c in pending {
                    let _ = self.txl.cancel(c, now.mono);
                }
            }
            // Waiting for the callee's supernode: 487 now. Still looking
            // the callee up: 487 when the lookup ends. Otherwise the INVITE
            // was already answered.
            None => {
                if self.cancel_parked(invite, now) {
                    return;
                }
                if self.pending.values().any(|p| {
                    matches!(p, Pending::Route { server, .. } | Pending::Callee { server, .. }
                        | Pending::Enum { server, .. } | Pending::Locate { server, .. }
                        if *server == invite)
                }) {
                    self.cancelled_pending.insert(invite);
                }
            }
        }
    }
}
