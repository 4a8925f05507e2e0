//! Calls to the URI an ENUM record names, when it is not of this farm: to
//! the servers RFC 3263 finds for it ([`crate::locate`]), one after
//! another as a [`SerialHop`] (`gateways.rs`). A 408 or 503, a transport
//! failure, or no answer at all within `gateway_timeout` moves the call to
//! the next server, and DNS is asked only when the next server is needed.
//! When no server is left (or DNS knows none), the call goes to the PSTN
//! gateways, as when ENUM has no record.
//!
//! Toward another domain's servers this node opens UDP and TCP.

use bytes::Bytes;
use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{Message, Uri};

use super::gateways::{SerialHop, Way};
use super::routing::Target;
use super::services::Onward;
use super::{Action, Now, Origin, Pending, Proxy};
use crate::binding::Transport;
use crate::dns::Resolved;
use crate::locate::{Locator, Server, Step};
use crate::observe::{LocatedEvent, Metric};
use crate::token::Dest;

/// The transports this node opens toward another domain's servers.
const TRANSPORTS: [Transport; 2] = [Transport::Udp, Transport::Tcp];

/// Where a located call is, and how its next server is found.
#[derive(Debug)]
pub(super) struct Located {
    /// The Request-URI every server gets.
    uri: String,
    locator: Locator,
    /// The server it is at.
    current: Option<Server>,
}

impl Proxy {
    /// A subscriber's call for `number`, which ENUM maps to `uri` (not of
    /// this farm).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_located(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: Onward,
        number: String,
        uri: String,
        now: Now,
    ) {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.me.node_id[..8]);
        let seed = self.token() ^ u64::from_le_bytes(id);
        let locator = Uri::parse(uri.as_bytes())
            .map_err(str::to_string)
            .and_then(|u| Locator::new(&u, &TRANSPORTS, seed));
        let locator = match locator {
            Ok(l) => l,
            Err(why) => {
                tracing::info!(%number, %uri, %why, "the URI ENUM names cannot be reached from here: the call goes to the gateways");
                self.observer
                    .observe(Metric::Located(LocatedEvent::Exhausted));
                return self.route_to_gateway(server, msg, origin, onward, number, now);
            }
        };
        let pop_routes = self.our_routes(&msg);
        let way = Way::Located(Box::new(Located {
            uri,
            locator,
            current: None,
        }));
        let hop = SerialHop::new(origin, onward, number, pop_routes, way, now);
        self.next_located(server, msg, hop, None, now);
    }

    /// Moves a located call to its next server, with DNS's `answer` to
    /// the question asked for it if there was one.
    pub(super) fn next_located(
        &mut self,
        server: ServerKey,
        msg: Message,
        mut hop: SerialHop,
        answer: Option<Resolved>,
        now: Now,
    ) {
        let Way::Located(l) = &mut hop.way else {
            return;
        };
        let step = match answer {
            Some(a) => l.locator.answer(a),
            None => l.locator.step(),
        };
        match step {
            Step::Ask(query) => {
                let token = self.token();
                self.actions.push_back(Action::Resolve { token, query });
                self.pending.insert(
                    token,
                    Pending::Locate {
                        server,
                        msg,
                        hop: Box::new(hop),
                    },
                );
            }
            Step::Server(s) => {
                l.current = Some(s);
                self.send_serial(server, msg, hop, now);
            }
            Step::Exhausted(why) => {
                tracing::info!(uri = %l.uri, %why, "no server of the URI ENUM names took the call: the call goes to the gateways");
                self.observer
                    .observe(Metric::Located(LocatedEvent::Exhausted));
                let SerialHop {
                    origin,
                    onward,
                    number,
                    ..
                } = hop;
                self.route_to_gateway(server, msg, origin, onward, number, now);
            }
        }
    }

    /// Where a located call goes now.
    pub(super) fn located_target(&self, l: &Located) -> Target {
        let s = l
            .current
            .expect("a located call is sent once it has a server");
        self.observer.observe(Metric::Located(LocatedEvent::Sent));
        Target {
            uri: Some(Bytes::from(l.uri.clone())),
            ..Target::hop(Dest::Addr {
                transport: s.transport,
                addr: s.addr,
            })
        }
    }
}
