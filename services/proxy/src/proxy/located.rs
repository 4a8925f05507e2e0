//! Requests for another domain's servers, found by RFC 3263
//! ([`crate::locate`]) and tried one after another as a [`SerialHop`]
//! (`gateways.rs`). A 408 or 503, a transport failure, or no answer at all
//! within `gateway_timeout` moves the request to the next server, and DNS
//! is asked only when the next server is needed.
//!
//! - A call to the URI an ENUM record names, when it is not of this farm:
//!   over UDP, TCP or (with a client certificate) TLS. When no server is
//!   left (or DNS knows none), the call goes to the PSTN gateways, as when
//!   ENUM has no record.
//! - A subscriber's request for the domain of a peer farm
//!   ([`crate::trust::TrustTable::peer_for`]): over TLS only, the server's
//!   certificate checked against that domain (RFC 5922) by the driver,
//!   which asks [`Proxy::tls_server_name`] for it. When no server is left,
//!   503 with a Retry-After.

use bytes::Bytes;
use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{HeaderName, Message, Uri};

use super::gateways::{SerialHop, Way};
use super::routing::Target;
use super::services::Onward;
use super::{Action, Now, Origin, Pending, Proxy};
use crate::binding::Transport;
use crate::dns::Resolved;
use crate::locate::{Locator, Server, Step};
use crate::observe::{LocatedEvent, Metric};
use crate::token::Dest;

/// The transports this node opens toward an ENUM URI's servers: UDP and
/// TCP, and TLS when it has a client certificate.
const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

/// The TLS server names remembered at most (one per server address this
/// node sent to over TLS lately).
const MAX_TLS_NAMES: usize = 4096;

/// Where a located call is, and how its next server is found.
#[derive(Debug)]
pub(super) struct Located {
    /// The Request-URI every server gets.
    uri: String,
    locator: Locator,
    /// The server it is at.
    current: Option<Server>,
    /// The peer farm whose domain it is for (none: an ENUM URI's).
    peer: Option<String>,
}

impl Located {
    /// The peer farm it is for (None: an ENUM URI's).
    pub(super) fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }
}

impl Proxy {
    /// The name the TLS server at `addr` must prove (its certificate must
    /// cover it; sent as SNI): the domain a request sent there is for.
    pub fn tls_server_name(&self, addr: std::net::SocketAddr) -> Option<&str> {
        self.tls_names.get(&addr).map(String::as_str)
    }

    /// A subscriber's request for `peer`'s domain (`request.rs` checked it
    /// may go): to that domain's servers over TLS.
    pub(super) fn route_foreign(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: Onward,
        peer: String,
        now: Now,
    ) {
        let uri = String::from_utf8_lossy(msg.request_uri_bytes()).into_owned();
        if !self.policy.tls_client {
            return self.reply(
                server,
                &msg,
                503,
                &[(
                    HeaderName::Warning,
                    b"399 ringmesh \"this node has no TLS client certificate for peer farms\"",
                )],
                now,
            );
        }
        let locator = match msg
            .request_uri()
            .map(|u| Locator::new(&u, &[Transport::Tls], self.seed()))
        {
            Some(Ok(l)) => l,
            // A transport a peer is not reached over.
            Some(Err(why)) => {
                let warning = format!("399 ringmesh \"{why}\"");
                return self.reply(
                    server,
                    &msg,
                    403,
                    &[(HeaderName::Warning, warning.as_bytes())],
                    now,
                );
            }
            None => return,
        };
        let pop_routes = self.our_routes(&msg);
        let way = Way::Located(Box::new(Located {
            uri: uri.clone(),
            locator,
            current: None,
            peer: Some(peer),
        }));
        let hop = SerialHop::new(origin, onward, uri, pop_routes, way, now);
        self.next_located(server, msg, hop, None, now);
    }

    /// The seed of a locator's SRV weight choices.
    fn seed(&mut self) -> u64 {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.me.node_id[..8]);
        self.token() ^ u64::from_le_bytes(id)
    }

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
        let seed = self.seed();
        let transports = if self.policy.tls_client {
            &TRANSPORTS[..]
        } else {
            &TRANSPORTS[..2]
        };
        let locator = Uri::parse(uri.as_bytes())
            .map_err(str::to_string)
            .and_then(|u| Locator::new(&u, transports, seed));
        let locator = match locator {
            Ok(l) => l,
            Err(why) => {
                tracing::info!(%number, %uri, %why, "the URI ENUM names cannot be reached from here: the call goes to the gateways");
                self.observer.observe(Metric::Located {
                    peer: None,
                    event: LocatedEvent::Exhausted,
                });
                return self.route_to_gateway(server, msg, origin, onward, number, now);
            }
        };
        let pop_routes = self.our_routes(&msg);
        let way = Way::Located(Box::new(Located {
            uri,
            locator,
            current: None,
            peer: None,
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
                self.observer.observe(Metric::Located {
                    peer: l.peer.as_deref(),
                    event: LocatedEvent::Exhausted,
                });
                if let Some(peer) = &l.peer {
                    tracing::info!(uri = %l.uri, %peer, %why, "no server of a peer farm took the request");
                    let retry_after = self.retry_after.clone();
                    let warning = format!("399 ringmesh \"no server of the peer took it: {why}\"");
                    return self.reply(
                        server,
                        &msg,
                        503,
                        &[
                            (HeaderName::RetryAfter, &retry_after),
                            (HeaderName::Warning, warning.as_bytes()),
                        ],
                        now,
                    );
                }
                tracing::info!(uri = %l.uri, %why, "no server of the URI ENUM names took the call: the call goes to the gateways");
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

    /// Where a located call goes now (over TLS, the name its server must
    /// prove is remembered for the driver).
    pub(super) fn located_target(&mut self, l: &Located) -> Target {
        let s = l
            .current
            .expect("a located call is sent once it has a server");
        if s.transport == Transport::Tls {
            if self.tls_names.len() >= MAX_TLS_NAMES && !self.tls_names.contains_key(&s.addr) {
                self.tls_names.clear();
            }
            self.tls_names.insert(s.addr, l.locator.host().to_string());
        }
        self.observer.observe(Metric::Located {
            peer: l.peer.as_deref(),
            event: LocatedEvent::Sent,
        });
        Target {
            uri: Some(Bytes::from(l.uri.clone())),
            ..Target::hop(Dest::Addr {
                transport: s.transport,
                addr: s.addr,
            })
        }
    }
}
