//! A new request: the checks of RFC 3261 §16.3, routing by Route, the
//! domain check, authentication, then the registrar or a location lookup.

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{HeaderName, Message, Method, Scheme};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ringmesh_sip::{Contact, NameAddr, Uri};

use super::routing::{self, Routing, Target};
use super::{ALLOW, Now, Origin, Pending, Proxy, SUPPORTED, transport_of};
use crate::auth::{Fetched, Found, SubscriberInfo, Verdict};
use crate::binding::Binding;
use crate::location::{LocationError, LocationOp};
use crate::observe::{AuthFailure, Metric, Refusal, Registration};
use crate::registrar::{self, RegisterPlan, RegistrarError};
use crate::token::{Dest, Dialog};

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
        if origin == Origin::Peer && self.on_guard_message(&msg, now) {
            return self.reply(server, &msg, 200, &[], now);
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
        let popped = match self.consume_routes(&msg, origin.flow(), now.secs()) {
            Routing::Toward { popped, dest } if in_dialog || !origin.is_phone() => {
                let t = Target {
                    uri: None,
                    dest,
                    push_route: None,
                };
                return self.proxy_to(server, msg, origin, vec![t], popped, None, now);
            }
            Routing::Member { popped, node } if in_dialog || !origin.is_phone() => {
                let t = Target {
                    uri: None,
                    dest: Dest::Peer(node),
                    push_route: None,
                };
                return self.proxy_to(server, msg, origin, vec![t], popped, None, now);
            }
            Routing::Toward { .. } | Routing::Member { .. } => {
                self.refused(Refusal::NotInDialog);
                return self.reply(
                    server,
                    &msg,
                    403,
                    &[(
                        HeaderName::Warning,
                        b"399 ringmesh \"a flow token routes only in-dialog requests\"",
                    )],
                    now,
                );
            }
            Routing::Here { popped } => popped,
        };
        if popped < msg.routes().count() {
            // A further hop named by Route that is not a farm member: the
            // farm relays for no one.
            return self.reply(
                server,
                &msg,
                403,
                &[(HeaderName::Warning, b"399 ringmesh \"will not relay\"")],
                now,
            );
        }
        if origin == Origin::Peer {
            // Supernodes send each other requests with a flow token only.
            return self.reply(
                server,
                &msg,
                403,
                &[(HeaderName::Warning, b"399 ringmesh \"no route\"")],
                now,
            );
        }

        // 3. No open relay; emergency requests go where they must.
        if emergency {
            return self.route_emergency(server, msg, origin, popped, now);
        }
        if !self.me.serves(&ruri) {
            return self.reply(
                server,
                &msg,
                403,
                &[(
                    HeaderName::Warning,
                    b"399 ringmesh \"domain not served here\"",
                )],
                now,
            );
        }

        // 4. A dialog this farm holds has a flow token of ours; anything
        // else that claims one is not ours to route.
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

        // 5. Every out-of-dialog request from a phone is authenticated, and
        // asserts only identities its subscriber owns.
        let mut asserted = None;
        if origin.is_phone() && self.auth.is_some() {
            match self.authenticate(server, &msg, origin, true, now) {
                Authn::User(sub) => match self.asserted_identity(&msg, &sub) {
                    Ok(a) => asserted = Some(a),
                    Err(warning) => {
                        self.auth_failed(AuthFailure::ForbiddenIdentity);
                        return self.reply(
                            server,
                            &msg,
                            403,
                            &[(HeaderName::Warning, warning)],
                            now,
                        );
                    }
                },
                Authn::Answered => return,
                Authn::Wait(token) => {
                    self.pending.insert(
                        token,
                        Pending::Auth {
                            server,
                            msg,
                            origin,
                        },
                    );
                    return;
                }
            }
        }
        if *msg.method() == Method::Invite {
            self.leaf_invites.insert(server);
            let tag = self.to_tag(&msg);
            let trying = msg.response_writer(100, Some(&tag)).finish(b"");
            self.respond(server, 100, trying, transport_of(&msg), now);
        }
        let Ok(aor) = Aor::from_uri(&ruri) else {
            return self.reply(server, &msg, 480, &[], now);
        };
        let token = self.token();
        self.pending.insert(
            token,
            Pending::Route {
                server,
                msg,
                origin,
                asserted,
            },
        );
        self.actions.push_back(super::Action::Location {
            token,
            op: LocationOp::Lookup {
                aor,
                now_ms: now.wall_ms,
            },
        });
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
                self.reply(
                    server,
                    msg,
                    403,
                    &[(HeaderName::Warning, b"399 ringmesh \"barred\"")],
                    now,
                );
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
        let t = Target {
            uri: None,
            dest: Dest::Addr { transport, addr },
            push_route: None,
        };
        self.proxy_to(server, msg, origin, vec![t], popped, None, now);
    }

    fn answer_options(&mut self, server: ServerKey, msg: &Message, now: Now) {
        self.reply(
            server,
            msg,
            200,
            &[
                (HeaderName::Allow, ALLOW),
                (HeaderName::Accept, b"application/sdp"),
                (HeaderName::Supported, b"outbound, path"),
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
        if origin.is_phone() && self.auth.is_some() {
            match self.authenticate(server, &msg, origin, false, now) {
                // The authenticated user registers only its own AORs.
                Authn::User(sub) if !sub.owns(&aor) => {
                    self.auth_failed(AuthFailure::ForbiddenIdentity);
                    self.registration(Registration::Rejected);
                    return self.reply(
                        server,
                        &msg,
                        403,
                        &[(
                            HeaderName::Warning,
                            b"399 ringmesh \"not your address-of-record\"",
                        )],
                        now,
                    );
                }
                Authn::User(sub) => self.note_user_flow(&sub.private_id, flow),
                Authn::Answered => return,
                Authn::Wait(token) => {
                    self.pending.insert(
                        token,
                        Pending::Auth {
                            server,
                            msg,
                            origin,
                        },
                    );
                    return;
                }
            }
        }
        if let Some(warning) = self.refused_contact(&msg) {
            self.refused(Refusal::ContactAddress);
            self.registration(Registration::Rejected);
            return self.reply(server, &msg, 403, &[(HeaderName::Warning, warning)], now);
        }
        let transport = transport_of(&msg);
        let plan = match registrar::plan(
            &msg,
            &aor,
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
        let token = self.token();
        self.actions.push_back(super::Action::Location {
            token,
            op: LocationOp::Register {
                aor,
                plan: plan.clone(),
                now_ms: now.wall_ms,
            },
        });
        self.pending
            .insert(token, Pending::Register { server, msg, plan });
    }

    /// A REGISTER's write finished: 200 listing every binding, or why not.
    pub(super) fn registered(
        &mut self,
        server: ServerKey,
        msg: Message,
        plan: RegisterPlan,
        result: Result<Vec<Binding>, LocationError>,
        now: Now,
    ) {
        let transport = transport_of(&msg);
        match result {
            Ok(bindings) => {
                self.registration(Registration::Ok);
                self.track_outbound(&plan, now);
                let resp = registrar::ok_response(
                    &msg,
                    &bindings,
                    &plan,
                    now.wall_ms,
                    &self.to_tag(&msg),
                    self.registrar.flow_timer,
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
            Err(LocationError::Unavailable(why)) => {
                self.registration(Registration::Failed);
                tracing::warn!(%why, "registration not stored");
                self.reply_unavailable(server, &msg, now);
            }
        }
    }

    /// The callee's bindings are known. None: 480, whether or not the
    /// callee exists (nothing tells a subscriber from a stranger). Else
    /// the callee is checked (barred: 403), and the request forwarded.
    pub(super) fn route_to_bindings(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        bindings: Vec<Binding>,
        asserted: Option<Bytes>,
        now: Now,
    ) {
        let aor = msg.request_uri().and_then(|u| Aor::from_uri(&u).ok());
        let (Some(aor), false) = (aor, bindings.is_empty()) else {
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
                        asserted,
                    },
                );
                return;
            }
        };
        self.forward_to_callee(server, msg, origin, bindings, asserted, callee, now);
    }

    /// Forwards to the callee's preferred `max_branches` reachable
    /// bindings, unless it is barred (403) or no longer a subscriber (480).
    /// When the directory cannot answer the call goes through: routing
    /// stays up while provisioning is down.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_to_callee(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        mut bindings: Vec<Binding>,
        asserted: Option<Bytes>,
        callee: Fetched,
        now: Now,
    ) {
        match callee {
            Ok(Some(sub)) if sub.barred => {
                self.refused(Refusal::BarredCallee);
                return self.reply(
                    server,
                    &msg,
                    403,
                    &[(
                        HeaderName::Warning,
                        b"399 ringmesh \"the callee is barred\"",
                    )],
                    now,
                );
            }
            Ok(None) => return self.reply(server, &msg, 480, &[], now),
            Ok(Some(_)) | Err(_) => {}
        }
        // Highest q first, then the most recent registration.
        bindings.sort_by_key(|b| std::cmp::Reverse((b.q.unwrap_or(1000), b.hlc)));
        let dialog = Dialog {
            call_id: msg.call_id(),
            caller_tag: msg.from_tag().unwrap_or_default(),
        };
        let targets: Vec<Target> = bindings
            .iter()
            .filter_map(|b| self.binding_target(b, dialog, now.secs()))
            .take(self.policy.max_branches)
            .collect();
        if targets.is_empty() {
            return self.reply(server, &msg, 480, &[], now);
        }
        self.proxy_to(server, msg, origin, targets, 0, asserted, now);
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
