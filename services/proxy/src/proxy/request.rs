//! A new request: the checks of RFC 3261 §16.3, routing by Route, the
//! domain check, authentication, then the registrar or a location lookup.

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{HeaderName, Message, Method, Scheme};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ringmesh_sip::{Contact, NameAddr, Uri};

use super::notifier;
use super::routing::{self, Routing, Target};
use super::services::Onward;
use super::{ALLOW, Now, Origin, Pending, Proxy, SUPPORTED, transport_of};
use crate::auth::{Fetched, Found, SubscriberInfo, Verdict};
use crate::binding::Binding;
use crate::location::{LocationError, LocationOp};
use crate::observe::{AppServerEvent, AuthFailure, Metric, Refusal, Registration};
use crate::registrar::{self, RegisterPlan, RegistrarError};
use crate::token::{Dest, Dialog, Purpose};

/// The user part of a Service-Route of this farm begins with this, then
/// the sealed AOR (never a flow token: it opens for no dialog).
const SERVICE_ROUTE_PREFIX: &str = "sr.";
/// The user part of a temporary GRUU begins with this (RFC 5627 §3.2).
const TEMP_GRUU_PREFIX: &str = "tgruu.";
/// Retry-After (seconds) of the 480 to a callee registered through a
/// supernode that cannot be reached now: about what a supernode's restart
/// takes, or a phone's re-registration through another one.
const EDGE_RETRY_AFTER: &[u8] = b"2";

/// Whether `msg` says it supports the option `tag`.
fn supports(msg: &Message, tag: &str) -> bool {
    msg.header_values(HeaderName::Supported)
        .any(|t| t.eq_ignore_ascii_case(tag.as_bytes()))
}

/// The option tags of `values` this node does not support, joined for an
/// `Unsupported` header; `None` when it supports them all.
fn unsupported<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let list: Vec<&[u8]> = values
        .filter(|t| {
            !SUPPORTED
                .iter()
                .any(|s| s.as_bytes().eq_ignore_ascii_case(t))
        })
        .collect();
    (!list.is_empty()).then(|| list.join(&b", "[..]))
}

impl Proxy {
    /// A new request from a phone, a trusted element or another supernode.
    pub(super) fn on_request(&mut self, server: ServerKey, msg: Message, origin: Origin, now: Now) {
        if origin == Origin::Peer
            && (self.on_guard_message(&msg, now) || self.on_watch_message(&msg, now))
        {
            return self.reply(server, &msg, 200, &[], now);
        }
        if !matches!(msg.method(), Method::Ack | Method::Cancel) && self.peer_over_rate(origin, now)
        {
            self.refused(Refusal::PeerRate);
            let retry_after = self.retry_after.clone();
            return self.reply(
                server,
                &msg,
                503,
                &[
                    (HeaderName::RetryAfter, &retry_after),
                    (
                        HeaderName::Warning,
                        b"399 ringmesh \"over the peer's rate limit\"",
                    ),
                ],
                now,
            );
        }
        // 1. Checks that depend on nothing but the message (§16.3).
        let Some(ruri) = msg.request_uri() else {
            return;
        };
        let emergency = is_emergency(&msg, &self.policy.emergency_numbers);
        if !matches!(ruri.scheme(), Scheme::Sip | Scheme::Sips | Scheme::Tel) && !emergency {
            return self.reply(server, &msg, 416, &[], now);
        }
        let to_self = ruri.user().is_none() && self.me.serves(&ruri);
        if msg.max_forwards() == Some(0) {
            if *msg.method() == Method::Options && to_self {
                return self.answer_options(server, &msg, now);
            }
            return self.reply(server, &msg, 483, &[], now);
        }
        if self.is_loop(&msg) {
            return self.reply(server, &msg, 482, &[], now);
        }
        if let Some(list) = unsupported(msg.header_values(HeaderName::ProxyRequire)) {
            return self.reply(server, &msg, 420, &[(HeaderName::Unsupported, &list)], now);
        }
        if *msg.method() == Method::Register
            && !matches!(msg.to_hdr().uri().scheme(), Scheme::Sip | Scheme::Sips)
        {
            return self.reply(
                server,
                &msg,
                400,
                &[(HeaderName::Warning, b"399 ringmesh \"To is not a SIP AOR\"")],
                now,
            );
        }

        // 2. Routes that name this node, or another member of the farm. A
        // flow token routes a request that belongs to a dialog: a phone
        // does not use one to start something new.
        let in_dialog = msg.to_tag().is_some();
        let routing = self.consume_routes(&msg, origin.flow(), now.secs());
        if in_dialog && *msg.method() == Method::Bye && !matches!(routing, Routing::Here { .. }) {
            if self.calls.up() > 0 {
                self.call_bye(&msg, now);
            }
            self.gateway_bye(&msg);
        }
        let popped = match routing {
            Routing::Toward { popped, dest } if in_dialog || !origin.is_phone() => {
                return self.forward_hop(server, msg, origin, dest, popped, now);
            }
            Routing::Member { popped, node } if in_dialog || !origin.is_phone() => {
                return self.forward_hop(server, msg, origin, Dest::Peer(node), popped, now);
            }
            Routing::Toward { .. } | Routing::Member { .. } => {
                self.refused(Refusal::NotInDialog);
                return self.forbid(
                    server,
                    &msg,
                    b"399 ringmesh \"a flow token routes only in-dialog requests\"",
                    now,
                );
            }
            Routing::Here { popped } => popped,
        };
        if popped < msg.routes().count() {
            // A further hop named by Route that is not a farm member: the
            // farm relays for no one.
            return self.forbid(server, &msg, b"399 ringmesh \"will not relay\"", now);
        }
        if origin == Origin::Peer {
            // Supernodes send each other requests with a flow token only.
            return self.forbid(server, &msg, b"399 ringmesh \"no route\"", now);
        }

        // 3. No open relay; emergency requests go where they must.
        if emergency {
            return self.route_emergency(server, msg, origin, popped, now);
        }
        // A new request for a peer farm's domain goes there once its
        // sender is authenticated (a peer farm's goes nowhere: the farm
        // carries no transit).
        let mut foreign = None;
        if ruri.scheme() != Scheme::Tel && !self.me.serves(&ruri) {
            let from_peer = self.peer_of(origin).is_some();
            let peer = ruri
                .host()
                .and_then(|h| {
                    self.policy
                        .trusted
                        .peer_for(&String::from_utf8_lossy(h.text))
                })
                .filter(|_| !from_peer && !in_dialog && *msg.method() != Method::Register);
            match peer {
                Some(p) => foreign = Some(p.name.clone()),
                None => {
                    if from_peer {
                        self.refused(Refusal::PeerTransit);
                    }
                    return self.forbid(
                        server,
                        &msg,
                        b"399 ringmesh \"domain not served here\"",
                        now,
                    );
                }
            }
        }

        // 4. A dialog this farm holds has a flow token of ours, or is a
        // subscription of the farm's (its sealed Contact names it; a user
        // whose name only looks like one is a user); anything else that
        // claims one is not ours to route.
        if let Some(target) = self.subscription_of(&msg) {
            return self.in_subscription(server, msg, target, now);
        }
        if in_dialog {
            self.refused(Refusal::NotInDialog);
            return self.reply(server, &msg, 481, &[], now);
        }
        if *msg.method() == Method::Register {
            return self.on_register(server, msg, origin, now);
        }
        if to_self {
            // OPTIONS to the farm itself is a keep-alive and capability
            // query that names no user: answered without a challenge.
            return match msg.method() {
                Method::Options => self.answer_options(server, &msg, now),
                _ => self.reply(server, &msg, 404, &[], now),
            };
        }

        if *msg.method() == Method::Subscribe && notifier::is_reg_event(&msg) {
            return self.on_reg_subscribe(server, msg, origin, now);
        }

        // 5. Every out-of-dialog request from a phone is authenticated, and
        // asserts only identities its subscriber owns. Only trusted
        // elements (application servers) send requests back on a return
        // Route of the farm's.
        let mut asserted = None;
        let mut caller = None;
        let service_route = self.service_route(&msg, popped);
        if service_route == Some(None) {
            self.refused(Refusal::ServiceRoute);
            return self.forbid(server, &msg, b"399 ringmesh \"forged Service-Route\"", now);
        }
        let returned = self.service_return(&msg, popped, now);
        if returned
            .as_ref()
            .is_some_and(|r| r.is_none() || origin.is_phone())
        {
            self.refused(Refusal::ServiceReturn);
            return self.forbid(
                server,
                &msg,
                b"399 ringmesh \"not an application server's return\"",
                now,
            );
        }
        if origin.is_phone() && self.auth.is_some() {
            match self.authenticate(server, &msg, origin, true, now) {
                // A Service-Route names the registration it was issued to:
                // only that subscriber's requests may follow it.
                Authn::User(sub)
                    if service_route
                        .as_ref()
                        .and_then(Option::as_ref)
                        .is_some_and(|aor| !sub.owns(aor)) =>
                {
                    self.refused(Refusal::ServiceRoute);
                    return self.forbid(
                        server,
                        &msg,
                        b"399 ringmesh \"the Service-Route was issued to another subscriber\"",
                        now,
                    );
                }
                Authn::User(sub) => match self.asserted_identity(&msg, &sub) {
                    Ok(a) => {
                        asserted = Some(a);
                        caller = Some(sub);
                    }
                    Err(warning) => {
                        self.auth_failed(AuthFailure::ForbiddenIdentity);
                        return self.forbid(server, &msg, warning, now);
                    }
                },
                Authn::Answered => return,
                Authn::Wait(token) => return self.wait_for_directory(token, server, msg, origin),
            }
        }
        if let Some(sub) = caller.clone().filter(|_| foreign.is_none()) {
            if super::relays::asks_for_relays(&msg) {
                return self.relays_for(server, msg, &sub, now);
            }
            use super::presence::is_event;
            match msg.method() {
                Method::Publish if is_event(&msg, b"presence.winfo") => {
                    return self.on_decisions(server, msg, &sub, now);
                }
                Method::Publish => return self.on_publish(server, msg, &sub, now),
                Method::Subscribe if is_event(&msg, b"presence") => {
                    return self.on_presence_subscribe(server, msg, origin, now);
                }
                Method::Subscribe if is_event(&msg, b"presence.winfo") => {
                    return self.on_winfo_subscribe(server, msg, origin, &sub, now);
                }
                _ => {}
            }
        }
        let mut charging = None;
        if *msg.method() == Method::Invite {
            self.leaf_invites.insert(server);
            let tag = self.to_tag(&msg);
            let trying = msg.response_writer(100, Some(&tag)).finish(b"");
            self.respond(server, 100, trying, transport_of(&msg), now);
            // A call enters the farm here (an application server's return
            // is the same call): this edge keeps its record.
            if returned.is_none() {
                charging = Some(self.call_started(server, &msg, asserted.as_ref(), now));
            }
        }

        if let Some(peer) = foreign {
            let onward = Onward {
                asserted,
                charging,
                ..Onward::default()
            };
            return self.route_foreign(server, msg, origin, onward, peer, now);
        }

        // 6. Application servers (`services`): the caller's originating
        // criteria (for a phone, or a front end's request on the
        // Service-Route of a registration), then the callee's terminating
        // ones; a request an application server returns resumes where it
        // left.
        if let Some(Some(at)) = returned {
            self.observer
                .observe(Metric::AppServer(AppServerEvent::Returned));
            if at.case.is_terminating() {
                let onward = Onward {
                    after: Some((at.served, at.priority)),
                    ..Onward::default()
                };
                return self.terminating(server, msg, origin, onward, now);
            }
            return self.originating_for(
                server,
                msg,
                origin,
                Onward::default(),
                &at.served,
                Some(at.priority),
                now,
            );
        }
        let onward = Onward {
            asserted,
            charging,
            ..Onward::default()
        };
        match (caller, service_route.flatten()) {
            (Some(sub), _) => self.originating(server, msg, origin, onward, &sub, None, now),
            (None, Some(aor)) if !origin.is_phone() => {
                self.originating_for(server, msg, origin, onward, &aor, None, now)
            }
            _ => self.terminating(server, msg, origin, onward, now),
        }
    }

    /// Digest authentication of a request (`proxy`: 407, else 401). The
    /// challenge, a refusal or a 503 is sent here; a barred subscriber is
    /// refused (403).
    fn authenticate(
        &mut self,
        server: ServerKey,
        msg: &Message,
        origin: Origin,
        proxy: bool,
        now: Now,
    ) -> Authn {
        let token = self.token();
        let me = &self.me;
        let auth = self.auth.as_mut().expect("checked");
        match auth.verify(msg, proxy, now.secs(), token, |u| me.serves(u)) {
            Verdict::Authenticated(sub) if sub.barred => {
                self.auth_failed(AuthFailure::Barred);
                if !proxy {
                    self.registration(Registration::Rejected);
                }
                self.forbid(server, msg, b"399 ringmesh \"barred\"", now);
                Authn::Answered
            }
            Verdict::Authenticated(sub) => Authn::User(sub),
            Verdict::Challenge { stale, failure } => {
                if !proxy {
                    self.registration(Registration::Challenged);
                }
                // A wrong answer to a challenge counts towards a ban; what
                // a real phone also sends (no credentials, a stale nonce)
                // does not.
                if let (Some(AuthFailure::BadCredentials | AuthFailure::UnknownUser), Some(flow)) =
                    (failure, origin.flow())
                {
                    self.guard_failed(msg, flow, now);
                }
                self.challenge(server, msg, proxy, stale, failure, now);
                Authn::Answered
            }
            Verdict::Pending => Authn::Wait(token),
            Verdict::Unavailable => {
                if !proxy {
                    self.registration(Registration::Failed);
                }
                self.reply_unavailable(server, msg, now);
                Authn::Answered
            }
        }
    }

    /// The identity the farm asserts for an authenticated request (RFC
    /// 3325): its `P-Preferred-Identity` when the subscriber owns it, else
    /// its From, which the subscriber must own unless it is anonymous (RFC
    /// 3323; then the subscriber's default identity is asserted, and
    /// withheld from the callee when it asks for privacy). `Err` carries
    /// the Warning of the 403.
    fn asserted_identity(
        &self,
        msg: &Message,
        sub: &SubscriberInfo,
    ) -> Result<Bytes, &'static [u8]> {
        if let Some(ppi) = msg.header_values(HeaderName::PPreferredIdentity).next() {
            return match NameAddr::parse(ppi).map(|na| Aor::from_uri(na.uri())) {
                Ok(Ok(aor)) if sub.owns(&aor) => Ok(Bytes::from(format!("<{aor}>"))),
                _ => Err(b"399 ringmesh \"P-Preferred-Identity is not an identity of the authenticated user\""),
            };
        }
        let from = msg.from_hdr();
        if is_anonymous(from.uri()) {
            return sub
                .public_ids
                .first()
                .map(|aor| Bytes::from(format!("<{aor}>")))
                .ok_or(b"399 ringmesh \"the authenticated user has no identity\"");
        }
        match Aor::from_uri(from.uri()) {
            Ok(aor) if sub.owns(&aor) => Ok(Bytes::from(format!("<{aor}>"))),
            _ => Err(b"399 ringmesh \"From is not an identity of the authenticated user\""),
        }
    }

    /// An emergency request: never challenged, barred or refused for its
    /// identity; sent to the emergency route (503 when there is none).
    fn route_emergency(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        popped: usize,
        now: Now,
    ) {
        self.observer.observe(Metric::Emergency);
        let Some((transport, addr)) = self.policy.emergency_route else {
            self.refused(Refusal::NoEmergencyRoute);
            return self.reply(
                server,
                &msg,
                503,
                &[(
                    HeaderName::Warning,
                    b"399 ringmesh \"no emergency route is configured\"",
                )],
                now,
            );
        };
        if *msg.method() == Method::Invite {
            self.leaf_invites.insert(server);
            let tag = self.to_tag(&msg);
            let trying = msg.response_writer(100, Some(&tag)).finish(b"");
            self.respond(server, 100, trying, transport_of(&msg), now);
        }
        self.forward_hop(
            server,
            msg,
            origin,
            Dest::Addr { transport, addr },
            popped,
            now,
        );
    }

    /// Forwards `msg` as it is to `dest`, the one hop its Routes (or the
    /// emergency route) name.
    fn forward_hop(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        dest: Dest,
        popped: usize,
        now: Now,
    ) {
        let t = Target::hop(dest);
        self.proxy_to(
            server,
            msg,
            origin,
            vec![t],
            popped,
            &Onward::default(),
            now,
        );
    }

    fn answer_options(&mut self, server: ServerKey, msg: &Message, now: Now) {
        self.reply(
            server,
            msg,
            200,
            &[
                (HeaderName::Allow, ALLOW),
                (HeaderName::Accept, b"application/sdp"),
                (HeaderName::Supported, super::SUPPORTED_HEADER),
            ],
            now,
        );
    }

    fn registration(&self, r: Registration) {
        self.observer.observe(Metric::Registration(r));
    }

    fn on_register(&mut self, server: ServerKey, msg: Message, origin: Origin, now: Now) {
        let Some(flow) = origin.flow() else { return };
        self.register_started.insert(server, now.mono);
        if let Some(list) = unsupported(msg.header_values(HeaderName::Require)) {
            self.registration(Registration::Rejected);
            return self.reply(server, &msg, 420, &[(HeaderName::Unsupported, &list)], now);
        }
        let Ok(aor) = Aor::from_uri(msg.to_hdr().uri()) else {
            return self.reply(server, &msg, 400, &[], now);
        };
        // Path is what proxies on the way add (RFC 3327): a phone may not
        // put a hop of its choosing in front of its own contacts.
        if origin.is_phone() && msg.has_header(HeaderName::Path) {
            self.refused(Refusal::PathFromPhone);
            self.registration(Registration::Rejected);
            return self.forbid(
                server,
                &msg,
                b"399 ringmesh \"Path is accepted from trusted front ends only\"",
                now,
            );
        }
        let mut subscriber = None;
        if self.auth.is_some() {
            let who = if origin.is_phone() {
                self.authenticate(server, &msg, origin, false, now)
            } else {
                // A front end registers for users it authenticated: who
                // they are comes from the directory.
                self.subscriber_for(server, &msg, &aor, now)
            };
            match who {
                // The authenticated user registers only its own AORs.
                Authn::User(sub) if !sub.owns(&aor) => {
                    self.auth_failed(AuthFailure::ForbiddenIdentity);
                    self.registration(Registration::Rejected);
                    return self.forbid(
                        server,
                        &msg,
                        b"399 ringmesh \"not your address-of-record\"",
                        now,
                    );
                }
                Authn::User(sub) => {
                    if origin.is_phone() {
                        self.note_user_flow(&sub.private_id, flow);
                    }
                    subscriber = Some(sub);
                }
                Authn::Answered => return,
                Authn::Wait(token) => return self.wait_for_directory(token, server, msg, origin),
            }
        }
        if let Some(warning) = self.refused_contact(&msg) {
            self.refused(Refusal::ContactAddress);
            self.registration(Registration::Rejected);
            return self.forbid(server, &msg, warning, now);
        }
        // An implicit registration set registers as one: its bindings under
        // its key, an alias from every other member.
        let set = subscriber.as_ref().and_then(|s| s.implicit_set(&aor));
        let (key, aliases) = match set.and_then(|set| Some((crate::auth::set_key(set)?, set))) {
            Some((key, set)) => (
                key.clone(),
                set.iter().filter(|a| *a != key).cloned().collect(),
            ),
            None => (aor, Vec::new()),
        };
        let transport = transport_of(&msg);
        let plan = match registrar::plan(
            &msg,
            &key,
            &self.registrar,
            registrar::Arrival {
                flow,
                transport,
                edge: self.me.node_id,
            },
            now.wall_ms,
            now.hlc(),
        ) {
            Ok(p) => p,
            Err(rej) => {
                self.registration(Registration::Rejected);
                let resp = registrar::reject_response(&msg, &rej, &self.to_tag(&msg));
                return self.respond(server, rej.status, resp, transport, now);
            }
        };
        self.locate(
            LocationOp::Register {
                aor: key.clone(),
                plan: plan.clone(),
                now_ms: now.wall_ms,
                aliases,
            },
            Pending::Register {
                server,
                msg,
                key,
                plan,
                subscriber,
            },
        );
    }

    /// The subscriber a trusted element registers (or watches) `aor` for:
    /// 403 when none owns it or it is barred, 503 when the directory cannot
    /// say.
    fn subscriber_for(&mut self, server: ServerKey, msg: &Message, aor: &Aor, now: Now) -> Authn {
        let registering = *msg.method() == Method::Register;
        let token = self.token();
        let found = self
            .auth
            .as_mut()
            .expect("checked")
            .directory
            .by_public_id(aor, token);
        let refuse = |p: &mut Self, warning: &'static [u8]| {
            if registering {
                p.registration(Registration::Rejected);
            }
            p.forbid(server, msg, warning, now);
            Authn::Answered
        };
        match found {
            Found::Ready(Some(sub)) if sub.barred => {
                self.auth_failed(AuthFailure::Barred);
                refuse(self, b"399 ringmesh \"barred\"")
            }
            Found::Ready(Some(sub)) => Authn::User(sub),
            Found::Ready(None) => refuse(self, b"399 ringmesh \"not a subscriber\""),
            Found::Pending => Authn::Wait(token),
            Found::Unavailable => {
                if registering {
                    self.registration(Registration::Failed);
                }
                self.reply_unavailable(server, msg, now);
                Authn::Answered
            }
        }
    }

    /// An out-of-dialog SUBSCRIBE to the reg event of the AOR its
    /// Request-URI names. A phone may watch only its own identities; a
    /// trusted element (a front end, an application server) any
    /// subscriber's. The subscription watches the AOR the bindings are
    /// stored under (its implicit set's key).
    fn on_reg_subscribe(&mut self, server: ServerKey, msg: Message, origin: Origin, now: Now) {
        let Some((aor, None)) = msg.request_uri().and_then(|u| self.callee_of(&u)) else {
            return self.reply(server, &msg, 404, &[], now);
        };
        let mut resource = aor.clone();
        if self.auth.is_some() {
            let who = if origin.is_phone() {
                self.authenticate(server, &msg, origin, true, now)
            } else {
                self.subscriber_for(server, &msg, &aor, now)
            };
            match who {
                Authn::User(sub) if origin.is_phone() && !sub.owns(&aor) => {
                    self.auth_failed(AuthFailure::ForbiddenIdentity);
                    return self.forbid(
                        server,
                        &msg,
                        b"399 ringmesh \"a phone may watch only its own registrations\"",
                        now,
                    );
                }
                Authn::User(sub) => {
                    if let Some(key) = sub.implicit_set(&aor).and_then(crate::auth::set_key) {
                        resource = key.clone();
                    }
                }
                Authn::Answered => return,
                Authn::Wait(token) => return self.wait_for_directory(token, server, msg, origin),
            }
        }
        self.subscribe(server, msg, origin, resource, b"reg", now);
    }

    /// A REGISTER's write finished: 200 listing every binding, or why not.
    pub(super) fn registered(
        &mut self,
        server: ServerKey,
        msg: Message,
        plan: RegisterPlan,
        subscriber: Option<Arc<SubscriberInfo>>,
        result: Result<Vec<Binding>, LocationError>,
        now: Now,
    ) {
        let transport = transport_of(&msg);
        match result {
            Ok(bindings) => {
                self.registration(Registration::Ok);
                self.track_outbound(&plan, now);
                let headers = self.register_headers(&msg, &bindings, subscriber.as_deref(), now);
                let gruus = |b: &Binding| self.gruus(&msg, b, now);
                let resp = registrar::ok_response(
                    &msg,
                    &bindings,
                    &plan,
                    now.wall_ms,
                    &self.to_tag(&msg),
                    self.registrar.flow_timer,
                    &registrar::OkExtras {
                        headers,
                        contact_params: &gruus,
                    },
                );
                self.respond(server, 200, resp, transport, now);
            }
            Err(LocationError::Registrar(e)) => {
                self.registration(Registration::Rejected);
                if e == RegistrarError::TooManyContacts {
                    self.refused(Refusal::TooManyContacts);
                }
                let warn = format!("399 ringmesh \"{e}\"");
                self.reply(
                    server,
                    &msg,
                    e.status(),
                    &[(HeaderName::Warning, warn.as_bytes())],
                    now,
                );
            }
            Err(
                e @ (LocationError::Unavailable(_)
                | LocationError::Full
                | LocationError::Precondition),
            ) => {
                let why = e.to_string();
                self.registration(Registration::Failed);
                tracing::warn!(%why, "registration not stored");
                self.reply_unavailable(server, &msg, now);
            }
        }
    }

    /// The headers of a 200 OK to a REGISTER beyond its contacts: the Path
    /// it carried, when the phone supports it (RFC 3327 §5.3); for a
    /// registration through a front end (it has a Path) that leaves
    /// bindings, a Service-Route through the node that took it (RFC 3608),
    /// sealed for the registered set (a phone registering directly already
    /// sends to the farm, and a seal per REGISTER is not free); and the
    /// subscriber's public identities, its default one first (RFC 3455
    /// `P-Associated-URI`).
    fn register_headers(
        &self,
        msg: &Message,
        bindings: &[Binding],
        subscriber: Option<&SubscriberInfo>,
        now: Now,
    ) -> Vec<(HeaderName, Vec<u8>)> {
        let mut headers = Vec::new();
        if supports(msg, "path") {
            for p in msg.header_values(HeaderName::Path) {
                headers.push((HeaderName::Path, p.to_vec()));
            }
        }
        if let (Some(b), true) = (bindings.first(), msg.has_header(HeaderName::Path)) {
            let sealed = self
                .tokens
                .seal_for(Purpose::ServiceRoute, &b.aor, now.secs());
            let route = self.own_route(
                &format!("{SERVICE_ROUTE_PREFIX}{sealed}"),
                transport_of(msg),
            );
            headers.push((HeaderName::ServiceRoute, route.into_bytes()));
        }
        if let Some(sub) = subscriber.filter(|s| !s.public_ids.is_empty()) {
            let list: Vec<String> = sub.public_ids.iter().map(|a| format!("<{a}>")).collect();
            headers.push((HeaderName::PAssociatedUri, list.join(", ").into_bytes()));
        }
        headers
    }

    /// The GRUUs (RFC 5627) of a binding listed in the 200 OK to `msg`,
    /// as Contact parameters: for a contact with an instance, when the
    /// phone supports GRUU. The public one is the registered AOR with the
    /// instance as `gr`; the temporary one seals both.
    fn gruus(&self, msg: &Message, b: &Binding, now: Now) -> Option<String> {
        let instance = b.instance.as_ref()?;
        if !supports(msg, "gruu") {
            return None;
        }
        let aor = Aor::from_uri(msg.to_hdr().uri()).ok()?;
        let urn = instance
            .strip_prefix(b"<")
            .and_then(|i| i.strip_suffix(b">"))
            .unwrap_or(instance);
        let mut plain = aor.as_bytes().to_vec();
        plain.push(0);
        plain.extend_from_slice(instance);
        let temp = self.tokens.seal_for(Purpose::TempGruu, &plain, now.secs());
        Some(format!(
            ";pub-gruu=\"{aor};gr={}\";temp-gruu=\"sip:{TEMP_GRUU_PREFIX}{temp}@{};gr\"",
            String::from_utf8_lossy(urn),
            self.me.domain
        ))
    }

    /// The AOR a request for `ruri` is routed to, and the instance it must
    /// reach when `ruri` is a GRUU. A `tel:` URI, or a SIP URI with
    /// `user=phone` or a global number (`+` and digits) as its user, is
    /// the number (E.164 by the dial plan); `None` for a URI that names no
    /// AOR (or a temporary GRUU this farm did not issue).
    pub(super) fn callee_of(&self, ruri: &Uri<'_>) -> Option<(Aor, Option<Bytes>)> {
        let global = ruri
            .user()
            .is_some_and(|u| u.len() > 1 && u[0] == b'+' && u[1..].iter().all(u8::is_ascii_digit));
        if global || ruri.param("user") == Some(Some(b"phone")) {
            let mut tel = b"tel:".to_vec();
            tel.extend_from_slice(ruri.user()?);
            let number = self.policy.dial_plan.normalize(Aor::parse(&tel).ok()?);
            return Some((number, None));
        }
        match ruri.param("gr") {
            Some(Some(urn)) => {
                let mut instance = Vec::with_capacity(urn.len() + 2);
                instance.push(b'<');
                instance.extend_from_slice(urn);
                instance.push(b'>');
                Some((Aor::from_uri(ruri).ok()?, Some(Bytes::from(instance))))
            }
            Some(None) => {
                let sealed = ruri.user()?.strip_prefix(TEMP_GRUU_PREFIX.as_bytes())?;
                let plain = self.tokens.open_for(Purpose::TempGruu, sealed)?;
                let at = plain.iter().position(|&c| c == 0)?;
                let aor = Aor::parse(&plain[..at]).ok()?;
                Some((aor, Some(Bytes::copy_from_slice(&plain[at + 1..]))))
            }
            None => Some((
                self.policy.dial_plan.normalize(Aor::from_uri(ruri).ok()?),
                None,
            )),
        }
    }

    /// Whether a Route naming this node carries a Service-Route of this
    /// farm: `None` when none does; `Some(None)` when one is forged;
    /// `Some(Some(aor))`, the AOR it was issued to.
    fn service_route(&self, msg: &Message, popped: usize) -> Option<Option<Aor>> {
        msg.routes().take(popped).find_map(|r| {
            let sealed = r
                .uri()
                .user()?
                .strip_prefix(SERVICE_ROUTE_PREFIX.as_bytes())?;
            Some(
                self.tokens
                    .open_for(Purpose::ServiceRoute, sealed)
                    .and_then(|aor| Aor::parse(&aor).ok()),
            )
        })
    }

    /// The callee's bindings are known (for a GRUU, those of its instance
    /// only: RFC 5627 §5.1). The callee is looked up in the directory for
    /// its barring and its terminating criteria (with none: 480 when it
    /// has no bindings, whether or not it exists: nothing tells a
    /// subscriber from a stranger).
    pub(super) fn route_to_bindings(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        mut bindings: Vec<Binding>,
        onward: Onward,
        now: Now,
    ) {
        let callee = msg.request_uri().and_then(|u| self.callee_of(&u));
        if let Some((_, Some(instance))) = &callee {
            bindings.retain(|b| b.instance.as_ref() == Some(instance));
        }
        let (Some((aor, _)), true) = (callee, self.auth.is_some() || !bindings.is_empty()) else {
            return self.reply(server, &msg, 480, &[], now);
        };
        let token = self.token();
        let found = match self.auth.as_mut() {
            Some(a) => a.directory.by_public_id(&aor, token),
            None => Found::Unavailable,
        };
        let callee = match found {
            Found::Ready(sub) => Ok(sub),
            Found::Unavailable => Err(String::new()),
            Found::Pending => {
                self.pending.insert(
                    token,
                    Pending::Callee {
                        server,
                        msg,
                        origin,
                        bindings,
                        onward,
                    },
                );
                return;
            }
        };
        self.forward_to_callee(server, msg, origin, bindings, onward, callee, now);
    }

    /// Forwards to the callee's preferred `max_branches` reachable
    /// bindings, unless it is barred (403) or no longer a subscriber (480),
    /// or one of its terminating criteria sends the request to an
    /// application server first. When the directory cannot answer the call
    /// goes through: routing stays up while provisioning is down. A
    /// MESSAGE for a subscriber with no reachable binding is kept for it
    /// (`messages.rs`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_to_callee(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        mut bindings: Vec<Binding>,
        onward: Onward,
        callee: Fetched,
        now: Now,
    ) {
        let mut mailbox = None;
        let msg = match callee {
            Ok(Some(sub)) if sub.barred => {
                if bindings.is_empty() {
                    return self.unreachable(server, msg, now);
                }
                self.refused(Refusal::BarredCallee);
                return self.forbid(server, &msg, b"399 ringmesh \"the callee is barred\"", now);
            }
            Ok(None) => {
                // A number no subscriber owns: ENUM's, or a PSTN gateway's.
                let number = match msg.request_uri().and_then(|u| self.callee_of(&u)) {
                    Some((aor, None)) => self.onward_number(&msg, &aor),
                    _ => None,
                };
                if let Some(number) = number {
                    return self.route_number(server, msg, origin, onward, number, now);
                }
                return self.unreachable(server, msg, now);
            }
            Ok(Some(sub)) => {
                let registered = !bindings.is_empty();
                mailbox = self.mailbox_of(&msg, &sub);
                match self.terminating_service(server, msg, origin, &onward, &sub, registered, now)
                {
                    Some(msg) => msg,
                    None => return,
                }
            }
            Err(_) => msg,
        };
        if bindings.is_empty() {
            return match mailbox {
                Some(key) => {
                    let asserted = self.sender_identity(&msg, origin, &onward);
                    self.keep_message(server, msg, key, asserted, now)
                }
                None => self.reply(server, &msg, 480, &[], now),
            };
        }
        // Highest q first, then the most recent registration.
        bindings.sort_by_key(|b| std::cmp::Reverse((b.q.unwrap_or(1000), b.hlc)));
        let mut targets = self.callee_targets(&msg, &bindings, now);
        // A supernode that said it is overloaded takes nothing new: with
        // every branch there, the call is refused at once rather than sent
        // on to be refused or to time out.
        if !targets.is_empty() && targets.iter().all(|t| self.overloaded_peer(t.dest)) {
            self.observer.observe(Metric::PeerOverloaded);
            return self.reply_unavailable(server, &msg, now);
        }
        targets.retain(|t| !self.overloaded_peer(t.dest));
        if targets.is_empty() {
            return match mailbox {
                Some(key) => {
                    let asserted = self.sender_identity(&msg, origin, &onward);
                    self.keep_message(server, msg, key, asserted, now)
                }
                // Registered, but no binding reachable now: its supernode
                // may be restarting (`parked`).
                None if self.can_park(&bindings) => {
                    self.park(server, msg, origin, bindings, onward, now)
                }
                None => self.callee_unreachable(server, &msg, now),
            };
        }
        self.proxy_to_callee(server, msg, origin, targets, &onward, now);
    }

    /// The branches to the callee's preferred `max_branches` reachable
    /// `bindings` (sorted best first).
    pub(super) fn callee_targets(
        &self,
        msg: &Message,
        bindings: &[Binding],
        now: Now,
    ) -> Vec<Target> {
        let dialog = Dialog {
            call_id: msg.call_id(),
            caller_tag: msg.from_tag().unwrap_or_default(),
        };
        // The callee learns which of its identities was called (3GPP
        // `P-Called-Party-ID`, RFC 3455).
        let called = Bytes::from([&b"<"[..], msg.request_uri_bytes(), &b">"[..]].concat());
        bindings
            .iter()
            .filter_map(|b| self.binding_target(b, dialog, now.secs()))
            .map(|t| Target {
                called: Some(called.clone()),
                ..t
            })
            .take(self.policy.max_branches)
            .collect()
    }

    /// Proxies to the callee's `targets`.
    pub(super) fn proxy_to_callee(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        targets: Vec<Target>,
        onward: &Onward,
        now: Now,
    ) {
        // The Routes that brought it here (a preloaded outbound proxy, a
        // Service-Route, an application server's return) name this node:
        // they go.
        let ours = msg.routes().take_while(|r| self.me.is_me(r.uri())).count();
        self.proxy_to(server, msg, origin, targets, ours, onward, now);
    }

    /// `dest` is a member that said it is overloaded.
    fn overloaded_peer(&self, dest: Dest) -> bool {
        match (dest, &self.farm) {
            (Dest::Peer(node), Some(farm)) => farm.is_overloaded(&node),
            _ => false,
        }
    }

    /// 480 with Retry-After to a request for a callee that is registered
    /// but none of whose bindings can be reached: the supernode holding
    /// its flows is restarting or gone, and the phone is back, or
    /// registered through another, within seconds.
    pub(super) fn callee_unreachable(&mut self, server: ServerKey, msg: &Message, now: Now) {
        self.reply(
            server,
            msg,
            480,
            &[(HeaderName::RetryAfter, EDGE_RETRY_AFTER)],
            now,
        );
    }

    /// Why a REGISTER's contacts are refused: an address that would send
    /// the farm's traffic to itself or nowhere (loopback unless allowed,
    /// link-local, multicast, unspecified, a supernode's own SIP address).
    fn refused_contact(&self, msg: &Message) -> Option<&'static [u8]> {
        for c in msg.contacts() {
            let Contact::Addr(na) = c else { continue };
            let uri = na.uri();
            let Some(ip) = uri.host().and_then(|h| h.ip()) else {
                continue;
            };
            let port = uri.port().unwrap_or(5060);
            if let Some(why) = self.contact_address_refused(ip, port) {
                return Some(why);
            }
        }
        None
    }

    fn contact_address_refused(&self, ip: IpAddr, port: u16) -> Option<&'static [u8]> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        };
        if ip.is_loopback() && !self.registrar.allow_loopback_contacts {
            return Some(b"399 ringmesh \"a loopback contact address is not allowed\"");
        }
        if link_local || ip.is_multicast() || ip.is_unspecified() || routing::is_broadcast(ip) {
            return Some(b"399 ringmesh \"the contact address is not reachable\"");
        }
        let at = SocketAddr::new(ip, port);
        let own = self.me.is_own_addr(at)
            || self
                .farm
                .as_ref()
                .is_some_and(|f| f.member_at(&at.to_string()).is_some());
        if own {
            return Some(b"399 ringmesh \"the contact address is a supernode's\"");
        }
        None
    }
}

/// Whether a request is an emergency request: `urn:service:sos` (and its
/// sub-services, RFC 5031), or a SIP or tel Request-URI whose user part is
/// one of `numbers`. Overload control asks too: these are never shed.
pub fn is_emergency(msg: &Message, numbers: &[String]) -> bool {
    let raw = msg.request_uri_bytes();
    const SOS: &[u8] = b"urn:service:sos";
    if raw.len() >= SOS.len()
        && raw[..SOS.len()].eq_ignore_ascii_case(SOS)
        && matches!(raw.get(SOS.len()), None | Some(b'.'))
    {
        return true;
    }
    let Some(ruri) = msg.request_uri() else {
        return false;
    };
    let Some(user) = ruri.user() else {
        return false;
    };
    let number = user.split(|&c| c == b';').next().unwrap_or_default();
    numbers.iter().any(|n| n.as_bytes() == number)
}

/// What authenticating a request came to.
enum Authn {
    User(Arc<SubscriberInfo>),
    /// A challenge, refusal or 503 was sent.
    Answered,
    /// The directory answers later, under this token.
    Wait(u64),
}

/// The anonymous URI of RFC 3323 §4.1.1.3 (`sip:anonymous@anonymous.invalid`).
fn is_anonymous(uri: &Uri<'_>) -> bool {
    uri.host()
        .is_some_and(|h| h.text.eq_ignore_ascii_case(b"anonymous.invalid"))
}
