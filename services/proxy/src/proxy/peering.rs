//! What a peer farm's requests are held to beyond the trusted-element
//! rules: its rate limit per supernode (503 with Retry-After beyond it),
//! its identities removed when it is outside the trust domain, and which
//! of its connections speak for it in a dialog.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Now, Origin, Proxy};
use crate::binding::FlowRef;
use crate::trust::{Element, Kind};

/// Each rate-limited peer's token bucket: tokens left, and when counted.
#[derive(Debug, Default)]
pub(super) struct PeerBuckets(HashMap<String, (f64, Instant)>);

impl Proxy {
    /// The peer farm `origin` is, if it is one (a phone is none: no
    /// lookup on the phones' path).
    pub(super) fn peer_of(&self, origin: Origin) -> Option<&Element> {
        match origin {
            Origin::Trusted(f) => self.trusted_element(f).filter(|e| e.kind == Kind::PeerFarm),
            Origin::Phone(_) | Origin::Peer => None,
        }
    }

    /// Whether a request from `origin` is over its peer farm's rate (one
    /// second's worth of requests may come at once): it is counted when
    /// it is not.
    pub(super) fn peer_over_rate(&mut self, origin: Origin, now: Now) -> bool {
        let Some((name, rate)) = self
            .peer_of(origin)
            .filter(|e| e.rate > 0)
            .map(|e| (e.name.clone(), f64::from(e.rate)))
        else {
            return false;
        };
        let (tokens, at) = self.peer_buckets.0.entry(name).or_insert((rate, now.mono));
        *tokens = (*tokens + now.mono.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now.mono;
        if *tokens < 1.0 {
            return true;
        }
        *tokens -= 1.0;
        false
    }

    /// The table changed: buckets of peers no longer limited go.
    pub(super) fn prune_peer_buckets(&mut self) {
        let trusted = &self.policy.trusted;
        self.peer_buckets.0.retain(|name, _| {
            trusted
                .elements()
                .iter()
                .any(|e| &e.name == name && e.rate > 0)
        });
    }

    /// Whether `origin` is a peer farm outside the trust domain, whose
    /// asserted identities go.
    pub(super) fn distrusted_peer(&self, origin: Origin) -> bool {
        self.peer_of(origin).is_some_and(|e| e.strip_identity)
    }

    /// Whether `flow` comes from the peer farm whose server at `addr` this
    /// node sent a request to: a peer answers and sends the dialog's
    /// requests on connections of its own (other ports, other nodes),
    /// each proving it serves the domain that server was asked for.
    pub(super) fn same_peer(&self, addr: SocketAddr, flow: FlowRef) -> bool {
        self.tls_server_name(addr)
            .is_some_and(|domain| self.trusted_element(flow).is_some_and(|e| e.serves(domain)))
    }
}
