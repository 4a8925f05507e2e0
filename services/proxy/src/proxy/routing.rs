//! Where requests go: Route headers that name this node or another member
//! (signed flow tokens), the target of each binding (this edge's flow, or
//! the edge supernode that holds it), this node's Record-Route, and loop
//! detection.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use ringmesh_sip::{Message, Uri, Via};

use super::{BRANCH_PREFIX, Proxy, loop_hash};
use crate::binding::{Binding, FlowRef, Transport};
use crate::token::{Dest, Dialog, FlowToken};

/// Where a request goes: a new Request-URI, the next hop, Route values to
/// push for that hop (the edge supernode's flow token, a Path), the
/// `P-Called-Party-ID` the callee gets, and whether the hop is an
/// application server (trusted with the asserted identity).
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub uri: Option<Bytes>,
    pub dest: Dest,
    pub push_route: Option<String>,
    pub called: Option<Bytes>,
    pub service: bool,
}

impl Target {
    /// The request as it is, to `dest`.
    pub fn hop(dest: Dest) -> Target {
        Target {
            uri: None,
            dest,
            push_route: None,
            called: None,
            service: false,
        }
    }
}

/// What the Route header says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routing {
    /// `popped` Route values named this node; nothing says where next.
    Here { popped: usize },
    /// A signed token of ours: send down that leaf's flow.
    Toward { popped: usize, dest: Dest },
    /// The next Route is another supernode's token: send over its link.
    Member { popped: usize, node: [u8; 16] },
}

impl Proxy {
    /// Where a request for a binding goes: straight to the leaf when this
    /// node is its edge, else to the edge supernode over the overlay with a
    /// Route carrying the edge's flow token (any supernode can mint it: the
    /// farm shares the token key). Bindings whose edge is down are skipped.
    /// A binding registered through proxies (Path) gets their Routes after
    /// the edge's.
    pub(super) fn binding_target(
        &self,
        b: &Binding,
        dialog: Dialog<'_>,
        now_secs: u64,
    ) -> Option<Target> {
        let uri = Some(b.contact.clone());
        match &self.farm {
            Some(farm) if b.edge != self.me.node_id => {
                let sip_addr = farm.sip_addr(&b.edge)?;
                let at_edge = edge_dest(b)?;
                let token = self.tokens.seal(
                    &FlowToken {
                        node: b.edge,
                        dest: at_edge,
                    },
                    dialog,
                    now_secs,
                );
                let mut route = format!("<sip:{token}@{sip_addr};lr>");
                if let Some(path) = &b.path {
                    route.push_str(", ");
                    route.push_str(&String::from_utf8_lossy(path));
                }
                Some(Target {
                    uri,
                    dest: Dest::Peer(b.edge),
                    push_route: Some(route),
                    called: None,
                    service: false,
                })
            }
            _ => self.binding_dest(b).map(|dest| Target {
                uri,
                dest,
                push_route: b
                    .path
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                called: None,
                service: false,
            }),
        }
    }

    /// How this edge reaches a binding: down its flow when it registered
    /// over a connection or with RFC 5626 outbound; else to its Contact, or
    /// to the packet source when the Contact names a private address other
    /// than that source (NAT).
    pub(super) fn binding_dest(&self, b: &Binding) -> Option<Dest> {
        // Through the proxy that added the Path: down the flow it
        // registered over, or to the first Path hop once that is closed.
        if b.path.is_some() {
            return match b.flow {
                FlowRef::Conn { id, .. } if !self.conns.contains(&id) => first_hop(b),
                _ => Some(Dest::Flow(b.flow)),
            };
        }
        if b.use_flow() {
            match b.flow {
                FlowRef::Conn { id, .. } if self.conns.contains(&id) => {
                    return Some(Dest::Flow(b.flow));
                }
                // Over UDP a binding uses its flow only with outbound.
                FlowRef::Udp { .. } => return Some(Dest::Flow(b.flow)),
                // An outbound flow that failed is not replaced by the
                // Contact (RFC 5626 §5.3): the UA will re-register.
                _ if b.reg_id.is_some() => return None,
                // A connection that closed, without outbound: a new one
                // to the Contact.
                _ => {}
            }
        }
        let (transport, addr) = contact_addr(b)?;
        Some(Dest::Addr { transport, addr })
    }

    /// Reads the Route values: consumes those naming this node (a signed
    /// token of ours that does not name the flow the request came on sends
    /// it down that flow), and stops at another farm member's token.
    pub(super) fn consume_routes(
        &self,
        msg: &Message,
        from: Option<FlowRef>,
        now_secs: u64,
    ) -> Routing {
        let mut popped = 0;
        let mut own_flow = None;
        let mut tokens_for_sender = 0;
        let tags: Vec<&[u8]> = [msg.from_tag(), msg.to_tag()]
            .into_iter()
            .flatten()
            .collect();
        for r in msg.routes() {
            let token = r
                .uri()
                .user()
                .and_then(|u| self.tokens.open(u, msg.call_id(), &tags, now_secs));
            // A member's token routes to it whichever host the Route names:
            // a topology-hiding edge rewrites other members' Record-Routes
            // to name itself (`privacy.rs`), and the member then gets a
            // Route naming that edge with its own token.
            let ours = token.is_some_and(|t| t.node == self.me.node_id);
            if let (Some(farm), Some(tok)) = (&self.farm, token)
                && !ours
                && farm.is_alive(&tok.node)
            {
                return Routing::Member {
                    popped,
                    node: tok.node,
                };
            }
            if !self.me.is_me(r.uri()) && !ours {
                break;
            }
            popped += 1;
            let Some(tok) = token.filter(|t| t.node == self.me.node_id) else {
                continue;
            };
            let from_that_leaf = from.is_some_and(|f| match tok.dest {
                Dest::Flow(d) => d == f || d.peer() == f.peer(),
                Dest::Addr { addr, .. } => addr == f.peer() || self.same_peer(addr, f),
                Dest::Peer(_) => false,
            });
            if !from_that_leaf {
                return Routing::Toward {
                    popped,
                    dest: tok.dest,
                };
            }
            own_flow = Some(tok.dest);
            tokens_for_sender += 1;
        }
        // Both ends of the dialog are behind the very flow the request came
        // on (one UA calling itself, or caller and callee sharing a NAT
        // binding): each of our tokens names it, and it is where to go.
        match own_flow {
            Some(dest) if tokens_for_sender >= 2 && popped == msg.routes().count() => {
                Routing::Toward { popped, dest }
            }
            _ => Routing::Here { popped },
        }
    }

    /// A Record-Route URI of this node carrying a flow token for `dest`,
    /// for the dialog `dialog`, naming this node's port for `t`. A TLS or
    /// WebSocket hop is `sip:` with `transport=tls` or `ws` (what deployed
    /// phones route on; RFC 5630 deprecates the first, but many phones
    /// cannot send to a `sips:` route), and `sips:` only in a `sips:`
    /// dialog, as RFC 3261 §16.6 step 4 requires.
    pub(super) fn rr_uri(
        &self,
        dest: Dest,
        t: Transport,
        dialog: Dialog<'_>,
        sips: bool,
        now_secs: u64,
    ) -> String {
        let token = self.tokens.seal(
            &FlowToken {
                node: self.me.node_id,
                dest,
            },
            dialog,
            now_secs,
        );
        let sips = sips && t.is_secure();
        let (scheme, tp) = match t {
            Transport::Udp => ("sip", ""),
            Transport::Tcp => ("sip", ";transport=tcp"),
            Transport::Tls if sips => ("sips", ""),
            Transport::Tls => ("sip", ";transport=tls"),
            Transport::Ws => ("sip", ";transport=ws"),
            Transport::Wss => (if sips { "sips" } else { "sip" }, ";transport=ws"),
        };
        format!(
            "<{scheme}:{token}@{}:{}{tp};lr>",
            self.me.advertise,
            self.me.port(t)
        )
    }

    /// A request that already went through this node unchanged (§16.3
    /// step 4): one of our Vias carries its loop hash.
    /// A Route naming this node, for requests that come back to it over
    /// transport `t` (`user` names why: a Service-Route, an application
    /// server's return).
    pub(super) fn own_route(&self, user: &str, t: Transport) -> String {
        let tp = match t {
            Transport::Udp => "",
            Transport::Wss | Transport::Ws => ";transport=ws",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        format!(
            "<sip:{user}@{}:{}{tp};lr>",
            self.me.advertise,
            self.me.port(t)
        )
    }

    pub(super) fn is_loop(&self, msg: &Message) -> bool {
        let mut ours = msg.vias().filter(|v| self.me.is_my_via(v)).peekable();
        if ours.peek().is_none() {
            return false;
        }
        let want = format!("{BRANCH_PREFIX}{:08x}.", loop_hash(msg));
        ours.any(|v| v.branch().is_some_and(|b| b.starts_with(want.as_bytes())))
    }
}

/// Where a binding's Contact points: its transport and address, or the
/// registration's source when the Contact names a private address other
/// than that source (NAT) or a host name (edges do not resolve leaf names).
fn contact_addr(b: &Binding) -> Option<(Transport, SocketAddr)> {
    let uri = Uri::parse(&b.contact).ok()?;
    if !uri.is_sip_or_sips() {
        return None;
    }
    let sips = uri.scheme() == ringmesh_sip::Scheme::Sips;
    let transport = match (uri.transport().and_then(Transport::from_token), sips) {
        (Some(Transport::Ws | Transport::Wss), true) => Transport::Wss,
        (Some(t), false) => t,
        (_, true) => Transport::Tls,
        (None, false) => b.transport,
    };
    let source = b.flow.peer();
    let addr = match uri.host().and_then(|h| h.ip()) {
        Some(ip) if is_private(ip) && ip != source.ip() => source,
        Some(ip) => SocketAddr::new(
            ip,
            uri.port()
                .unwrap_or(if transport.is_secure() { 5061 } else { 5060 }),
        ),
        None => source,
    };
    Some((transport, addr))
}

/// How a binding's edge reaches it, decided from the binding alone (the
/// edge checks at send time that the flow still exists).
fn edge_dest(b: &Binding) -> Option<Dest> {
    if b.use_flow() || b.path.is_some() {
        return Some(Dest::Flow(b.flow));
    }
    contact_addr(b).map(|(transport, addr)| Dest::Addr { transport, addr })
}

/// The address of a binding's first Path hop (an IP address: edges
/// resolve no names).
fn first_hop(b: &Binding) -> Option<Dest> {
    let path = b.path.as_ref()?;
    let first = path.split(|&c| c == b',').next()?;
    let hop = ringmesh_sip::NameAddr::parse(ringmesh_sip::scan::trim(first)).ok()?;
    let uri = hop.uri();
    let ip = uri.host()?.ip()?;
    let transport = uri
        .transport()
        .and_then(Transport::from_token)
        .unwrap_or(b.transport);
    let port = uri
        .port()
        .unwrap_or(if transport.is_secure() { 5061 } else { 5060 });
    Some(Dest::Addr {
        transport,
        addr: SocketAddr::new(ip, port),
    })
}

/// The received top Via with `received` and `rport` filled in
/// (RFC 3261 §18.2.1, RFC 3581 §4), or `None` when nothing changes.
pub(super) fn rewrite_top_via(via: &Via<'_>, from: FlowRef) -> Option<Vec<u8>> {
    let src = from.peer();
    let needs_received = via.host().ip() != Some(src.ip());
    let wants_rport = via.rport() == Some(None);
    if !needs_received && !wants_rport {
        return None;
    }
    let raw = via.as_bytes();
    let params = via.params_raw();
    let head = &raw[..raw.len() - params.len()];
    let mut out = Vec::with_capacity(raw.len() + 40);
    out.extend_from_slice(head);
    for p in via.params() {
        if p.name.eq_ignore_ascii_case(b"received") {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(p.name);
        if p.name.eq_ignore_ascii_case(b"rport") {
            out.extend_from_slice(format!("={}", src.port()).as_bytes());
        } else if let Some(v) = p.value {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(format!(";received={}", src.ip()).as_bytes());
    Some(out)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

pub(super) fn is_broadcast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::sample;

    fn binding(contact: &str, source: &str) -> Binding {
        Binding {
            contact: Bytes::copy_from_slice(contact.as_bytes()),
            flow: FlowRef::Udp {
                socket: 0,
                peer: source.parse().unwrap(),
            },
            ..sample(1, 0)
        }
    }

    /// A Contact behind NAT (a private address other than the source)
    /// is reached at the source; a public or the source's own address as
    /// written; `transport=tcp` or `tls` asks for a stream, `sips:` for TLS.
    #[test]
    fn where_a_contact_is_reached() {
        let at = |c: &str, src: &str| contact_addr(&binding(c, src)).unwrap();
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        assert_eq!(
            at("sip:a@10.1.2.3:5060", "198.51.100.7:40000"),
            (Transport::Udp, src)
        );
        assert_eq!(
            at("sip:a@[fd00::1]:5060", "198.51.100.7:40000"),
            (Transport::Udp, src)
        );
        assert_eq!(
            at("sip:a@203.0.113.9:5070", "198.51.100.7:40000"),
            (Transport::Udp, "203.0.113.9:5070".parse().unwrap())
        );
        assert_eq!(
            at("sip:a@[2001:db8::1]", "198.51.100.7:40000").1,
            "[2001:db8::1]:5060".parse().unwrap()
        );
        // A private address that is the source itself: a LAN phone.
        assert_eq!(
            at("sip:a@10.1.2.3:5062", "10.1.2.3:5062").1,
            "10.1.2.3:5062".parse().unwrap()
        );
        for (c, t) in [
            ("sip:a@203.0.113.9;transport=tcp", Transport::Tcp),
            ("sip:a@203.0.113.9;transport=TLS", Transport::Tls),
            ("sips:a@203.0.113.9", Transport::Tls),
            ("sips:a@203.0.113.9;transport=tcp", Transport::Tls),
            ("sips:a@203.0.113.9;transport=ws", Transport::Wss),
        ] {
            assert_eq!(at(c, "198.51.100.7:40000").0, t, "{c}");
        }
        assert_eq!(
            at("sips:a@203.0.113.9", "198.51.100.7:40000").1.port(),
            5061,
            "TLS has its own default port"
        );
        assert_eq!(
            at("sip:a@203.0.113.9;transport=sctp", "198.51.100.7:40000").0,
            Transport::Udp
        );
    }

    #[test]
    fn private_addresses() {
        for (ip, private) in [
            ("10.0.0.1", true),
            ("192.168.1.1", true),
            ("8.8.8.8", false),
            ("fc00::1", true),
            ("fdff::1", true),
            ("fe80::1", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(is_private(ip.parse().unwrap()), private, "{ip}");
        }
    }

    #[test]
    fn the_top_via_gets_received_and_rport_only_when_needed() {
        let from = FlowRef::Udp {
            socket: 0,
            peer: "198.51.100.7:40000".parse().unwrap(),
        };
        let rewrite = |v: &str| {
            let via = ringmesh_sip::Via::parse(v.as_bytes()).unwrap();
            rewrite_top_via(&via, from).map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(
            rewrite("SIP/2.0/UDP 198.51.100.7:40000;branch=z9hG4bK1"),
            None
        );
        assert_eq!(
            rewrite("SIP/2.0/UDP 198.51.100.7:40000;branch=z9hG4bK1;rport").as_deref(),
            Some(
                "SIP/2.0/UDP 198.51.100.7:40000;branch=z9hG4bK1;rport=40000;received=198.51.100.7"
            )
        );
        assert_eq!(
            rewrite("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;received=1.2.3.4").as_deref(),
            Some("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;received=198.51.100.7")
        );
    }
}
