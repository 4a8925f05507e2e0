//! What is forwarded without a transaction: the ACK for a 2xx (its own
//! transaction end to end, RFC 3261 §17.1.1.3) along the route set, and
//! responses that match no client transaction (a 2xx retransmitted after
//! ours ended), along their Via — only when the branch of our Via carries
//! this node's MAC over where the response goes next, so a forged
//! response cannot make the farm send to an address of its choosing.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use hmac::Mac;
use ringmesh_sip::{Forward, HeaderName, Message, Via};

use super::privacy::{Privacy, anonymous_from};
use super::routing::{Routing, is_broadcast, rewrite_top_via};
use super::{BRANCH_PREFIX, Proxy, loop_hash};
use crate::binding::{FlowRef, Transport};
use crate::observe::Refusal;
use crate::token::Dest;

impl Proxy {
    /// ACK for a 2xx: forwarded statelessly along the route set
    /// (Record-Route flow tokens).
    pub(super) fn forward_ack(&mut self, msg: Message, from: Option<FlowRef>, now_secs: u64) {
        let (popped, dest) = match self.consume_routes(&msg, from, now_secs) {
            Routing::Toward { popped, dest } => (popped, dest),
            Routing::Member { popped, node } => (popped, Dest::Peer(node)),
            Routing::Here { .. } => return,
        };
        let t = dest.transport();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.branch().hash(&mut h);
        let via = format!(
            "SIP/2.0/{} {}:{};branch={BRANCH_PREFIX}{:08x}.s{:x}",
            t.via_token(),
            self.me.advertise,
            self.me.port(t),
            loop_hash(&msg),
            h.finish()
        );
        let top_via = from.and_then(|f| rewrite_top_via(&msg.top_via(), f));
        // Toward a phone, the privacy it asks for and topology hiding
        // (`privacy.rs`); an ACK has no response to give anything back to.
        let privacy = Privacy::of(&msg);
        let untrusted = (privacy != Privacy::default() || self.policy.topology_hiding)
            && self.untrusted_leaf(dest, false);
        let anonymous = untrusted && privacy.anonymous_from();
        let mut strip = vec![HeaderName::ProxyAuthorization];
        if anonymous {
            strip.push(HeaderName::From);
        }
        if untrusted && (privacy.header || self.policy.topology_hiding) {
            strip.push(HeaderName::Via);
        }
        if untrusted && privacy.id {
            strip.push(HeaderName::PAssertedIdentity);
        }
        let mut w = msg.forward_writer(&Forward {
            request_uri: None,
            via: via.as_bytes(),
            top_via: top_via.as_deref(),
            record_route: None,
            push_route: None,
            pop_routes: popped,
            max_forwards: msg.max_forwards().map_or(70, |m| m.saturating_sub(1)),
            strip: &strip,
        });
        if anonymous {
            w.header(HeaderName::From, &anonymous_from(&msg));
        }
        let out = w.finish(msg.body());
        self.send(dest, out);
    }

    /// A response with no client transaction: pop our Via and send it on
    /// per the next one (to the member it names, over the overlay), if our
    /// branch vouches for that next hop.
    pub(super) fn forward_stray_response(&mut self, msg: Message) {
        let top = msg.top_via();
        if !self.me.is_my_via(&top) {
            return;
        }
        let Some(next) = msg.vias().nth(1) else {
            return;
        };
        let Some((transport, addr)) = return_addr(&next) else {
            return;
        };
        if is_broadcast(addr.ip()) {
            return; // RFC 4475 bcast: never send to a broadcast address
        }
        if !top
            .branch()
            .is_some_and(|b| self.branch_vouches(b, transport, addr))
        {
            self.refused(Refusal::ForgedResponse);
            return;
        }
        let out = msg.forward_response(&[]).finish(msg.body());
        if let Some(node) = self
            .farm
            .as_ref()
            .and_then(|f| f.member_at(&addr.to_string()))
        {
            return self.send(Dest::Peer(node), out);
        }
        self.send(Dest::Addr { transport, addr }, out);
    }

    /// Our branch for a request forwarded with `below` as the Via under
    /// ours: the loop hash (RFC 3261 §16.3 step 4), a counter, and a MAC
    /// over both and the address a response goes to after us.
    pub(super) fn new_branch(&mut self, loop_hash: u32, below: &Via<'_>) -> String {
        self.branch_counter = self.branch_counter.wrapping_add(1);
        let counter = self.branch_counter;
        let mac = return_addr(below).map_or(0, |(t, a)| self.branch_mac(loop_hash, counter, t, a));
        format!("{BRANCH_PREFIX}{loop_hash:08x}.{counter:x}.{mac:016x}")
    }

    /// Whether `branch` is one of ours for a response going to `addr`.
    fn branch_vouches(&self, branch: &[u8], transport: Transport, addr: SocketAddr) -> bool {
        let Some(rest) = branch.strip_prefix(BRANCH_PREFIX.as_bytes()) else {
            return false;
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            return false;
        };
        let mut parts = rest.split('.');
        let (Some(lh), Some(counter), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(lh), Ok(counter), Ok(mac)) = (
            u32::from_str_radix(lh, 16),
            u64::from_str_radix(counter, 16),
            u64::from_str_radix(mac, 16),
        ) else {
            return false;
        };
        mac == self.branch_mac(lh, counter, transport, addr)
    }

    fn branch_mac(&self, loop_hash: u32, counter: u64, t: Transport, addr: SocketAddr) -> u64 {
        let mut m = self.branch_key.clone();
        m.update(&loop_hash.to_be_bytes());
        m.update(&counter.to_be_bytes());
        m.update(&[t as u8]);
        match addr.ip() {
            IpAddr::V4(ip) => m.update(&ip.octets()),
            IpAddr::V6(ip) => m.update(&ip.octets()),
        }
        m.update(&addr.port().to_be_bytes());
        let out = m.finalize().into_bytes();
        u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
    }
}

/// Where a response goes after the node whose Via is above `via`
/// (RFC 3261 §18.2.2, RFC 3581): `received` and `rport` when present.
fn return_addr(via: &Via<'_>) -> Option<(Transport, SocketAddr)> {
    let ip = via
        .received()
        .and_then(|r| std::str::from_utf8(r).ok()?.parse::<IpAddr>().ok())
        .or(via.host().ip())?;
    let port = via.rport().flatten().or(via.port()).unwrap_or(5060);
    let transport = Transport::from_token(via.transport()).unwrap_or(Transport::Udp);
    Some((transport, SocketAddr::new(ip, port)))
}
