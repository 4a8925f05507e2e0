//! Numbers no subscriber owns: ENUM first (when an ENUM domain is
//! configured), then the PSTN gateways (`gateways.rs`).
//!
//! Only a subscriber's call (an authenticated phone, or a front end or
//! application server in the trust domain) is routed onward: a peer farm
//! or a gateway sending the farm a number it does not own is refused
//! (403), so the farm carries no transit traffic.
//!
//! The URI an ENUM record names is routed where it points: a URI of this
//! farm's domain is routed like a request for it (a number ported in); any
//! other goes to the servers RFC 3263 finds for it, one after another
//! (`located.rs`), and to the gateways when none takes it. No record, or a
//! DNS failure, leaves the call to the gateways.

use bytes::Bytes;
use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{Message, Method, Uri};

use super::services::Onward;
use super::{Action, Now, Origin, Pending, Proxy};
use crate::dns::{self, Query, Resolved};
use crate::gateways::number_of;
use crate::observe::{EnumResult, Metric, Refusal};
use crate::trust::Kind;

impl Proxy {
    /// The number a request for `callee` (which no subscriber owns) is
    /// routed onward with: `None` when that does not apply (not an INVITE,
    /// not a global number, neither ENUM nor gateways configured): the
    /// request is answered as for any unknown callee.
    pub(super) fn onward_number(
        &self,
        msg: &Message,
        callee: &ringmesh_sip::aor::Aor,
    ) -> Option<String> {
        let configured = !self.gateways.is_empty() || self.policy.enum_domain.is_some();
        (*msg.method() == Method::Invite && configured)
            .then(|| number_of(callee).map(str::to_string))
            .flatten()
    }

    /// Whether `origin` may send a call to a number beyond the farm: a
    /// subscriber (authenticated, so its identity is asserted) or a front
    /// end or application server acting for one.
    fn may_route_numbers(&self, origin: Origin, onward: &Onward) -> bool {
        match origin {
            Origin::Phone(_) => onward.asserted.is_some(),
            Origin::Trusted(flow) => self
                .trusted_element(flow)
                .is_some_and(|e| matches!(e.kind, Kind::FrontEnd | Kind::AppServer)),
            Origin::Peer => false,
        }
    }

    /// An INVITE for `number` (see [`Proxy::onward_number`]).
    pub(super) fn route_number(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: Onward,
        number: String,
        now: Now,
    ) {
        if !self.may_route_numbers(origin, &onward) {
            self.refused(Refusal::GatewayTransit);
            return self.forbid(
                server,
                &msg,
                b"399 ringmesh \"calls to numbers beyond the farm are for subscribers only\"",
                now,
            );
        }
        match &self.policy.enum_domain {
            Some(domain) if !onward.enum_done => {
                let name = dns::enum_name(&number, domain);
                let token = self.token();
                self.actions.push_back(Action::Resolve {
                    token,
                    query: Query::Naptr { name },
                });
                self.pending.insert(
                    token,
                    Pending::Enum {
                        server,
                        msg,
                        origin,
                        onward,
                        number,
                    },
                );
            }
            _ => self.route_to_gateway(server, msg, origin, onward, number, now),
        }
    }

    /// The ENUM answer for a call to `number`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enum_answered(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        mut onward: Onward,
        number: String,
        answer: Resolved,
        now: Now,
    ) {
        onward.enum_done = true;
        let uri = match answer {
            Resolved::Naptr(records) => dns::sip_uri(&number, &records),
            // (An answer of another type is no record either.)
            Resolved::NotFound | Resolved::Srv(_) | Resolved::Addrs(_) => None,
            Resolved::Failed(why) => {
                tracing::warn!(%number, %why, "ENUM lookup failed: the call goes to the gateways");
                self.observer.observe(Metric::Enum(EnumResult::Failed));
                return self.route_to_gateway(server, msg, origin, onward, number, now);
            }
        };
        let Some(uri) = uri else {
            self.observer.observe(Metric::Enum(EnumResult::None));
            return self.route_to_gateway(server, msg, origin, onward, number, now);
        };
        let Ok(parsed) = Uri::parse(uri.as_bytes()) else {
            self.observer.observe(Metric::Enum(EnumResult::None));
            return self.route_to_gateway(server, msg, origin, onward, number, now);
        };
        if self.me.serves(&parsed) {
            self.observer.observe(Metric::Enum(EnumResult::Local));
            return match retarget(&msg, &uri) {
                Some(msg) => self.terminating(server, msg, origin, onward, now),
                None => self.reply(server, &msg, 500, &[], now),
            };
        }
        let direct = parsed.host().is_some_and(|h| h.ip().is_some());
        self.observer.observe(Metric::Enum(if direct {
            EnumResult::Direct
        } else {
            EnumResult::Foreign
        }));
        self.route_located(server, msg, origin, onward, number, uri, now);
    }
}

/// `msg` with `uri` as its Request-URI (RFC 3261 §16.5: the proxy
/// retargets it).
fn retarget(msg: &Message, uri: &str) -> Option<Message> {
    let raw = msg.raw();
    let eol = raw.iter().position(|&c| c == b'\n')?;
    let mut out = Vec::with_capacity(raw.len() + uri.len());
    out.extend_from_slice(msg.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\n");
    out.extend_from_slice(&raw[eol + 1..]);
    Message::parse(Bytes::from(out)).ok()
}
