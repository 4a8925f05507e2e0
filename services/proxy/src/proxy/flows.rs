//! Outbound flows (RFC 5626): the flows this edge holds registrations of
//! `reg-id` contacts on, when each was last heard from, and what happens
//! when one fails.
//!
//! A flow fails when its connection closes, or when it stays silent (no
//! message and no keep-alive: a CRLF ping or a STUN Binding request) for
//! longer than the Flow-Timer the farm gave its phone plus a margin
//! ([`silence_limit_ms`]). Its bindings are then removed at once, on every
//! replica, rather than left to expire: the next request for the phone
//! goes down its other flows, and no member keeps forking to a flow that
//! is gone. A silent connection is closed as well.
//!
//! The removal is a REGISTER of the same binding with `Expires: 0`, the
//! Call-ID of the registration that wrote it and its CSeq plus one, so it
//! loses to a newer registration of the same binding (the registrar's
//! ordering rules), and each binding is tracked on the last flow it was
//! registered over only: a phone that moved to a new flow keeps the binding
//! it made there.

use std::collections::HashMap;

use ringmesh_sip::aor::Aor;

use super::{Now, Pending, Proxy};
use crate::binding::{Binding, BindingKey, FlowRef};
use crate::location::LocationOp;
use crate::observe::{FlowFailure, Metric};
use crate::registrar::{ContactUpdate, RegisterPlan};

/// A flow as the tracker knows it: a UDP socket and peer, or a
/// connection by its id (all a close tells).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FlowId {
    Udp(u16, std::net::SocketAddr),
    Conn(u64),
}

impl From<FlowRef> for FlowId {
    fn from(f: FlowRef) -> FlowId {
        match f {
            FlowRef::Udp { socket, peer } => FlowId::Udp(socket, peer),
            FlowRef::Conn { id, .. } => FlowId::Conn(id),
        }
    }
}

#[derive(Debug)]
struct Tracked {
    last_heard_ms: u64,
    /// The outbound bindings registered over this flow, as written.
    bindings: Vec<Binding>,
}

/// The outbound flows of one edge.
#[derive(Debug, Default)]
pub(super) struct OutboundFlows {
    flows: HashMap<FlowId, Tracked>,
    /// Which flow each binding was last registered over.
    flow_of: HashMap<(bytes::Bytes, BindingKey), FlowId>,
    swept_ms: u64,
}

/// How long a flow may stay silent: its Flow-Timer, plus a tenth of it
/// (at least 2 s) for the keep-alive's trip and the phone's scheduling.
pub(super) fn silence_limit_ms(flow_timer_s: u32) -> u64 {
    let t = u64::from(flow_timer_s) * 1000;
    t + (t / 10).max(2000)
}

impl OutboundFlows {
    /// How many flows are tracked.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// A message or keep-alive came over `flow`.
    pub fn heard(&mut self, flow: FlowRef, now_ms: u64) {
        // Every message from a leaf comes here: no hashing when no flow
        // is tracked.
        if self.flows.is_empty() {
            return;
        }
        if let Some(t) = self.flows.get_mut(&flow.into()) {
            t.last_heard_ms = now_ms;
        }
    }

    /// Bindings a REGISTER wrote: those with a `reg-id` are tracked on
    /// the flow the REGISTER came over (replacing what they were), those
    /// removed are not any more.
    fn registered(&mut self, written: &[ContactUpdate], now_ms: u64) {
        for c in written {
            let b = &c.binding;
            let key = (b.aor.clone(), b.key());
            if let Some(old) = self.flow_of.remove(&key) {
                self.untrack(old, &key);
            }
            if b.reg_id.is_none() || c.expires == 0 {
                continue;
            }
            let id = FlowId::from(b.flow);
            self.flow_of.insert(key, id);
            let t = self.flows.entry(id).or_insert(Tracked {
                last_heard_ms: now_ms,
                bindings: Vec::new(),
            });
            t.last_heard_ms = now_ms;
            t.bindings.push(b.clone());
        }
    }

    fn untrack(&mut self, flow: FlowId, key: &(bytes::Bytes, BindingKey)) {
        if let Some(t) = self.flows.get_mut(&flow) {
            t.bindings.retain(|b| !(b.aor == key.0 && b.key() == key.1));
            if t.bindings.is_empty() {
                self.flows.remove(&flow);
            }
        }
    }

    /// Stops tracking `flow`; the bindings it carried.
    fn forget(&mut self, flow: FlowId) -> Vec<Binding> {
        let Some(t) = self.flows.remove(&flow) else {
            return Vec::new();
        };
        for b in &t.bindings {
            self.flow_of.remove(&(b.aor.clone(), b.key()));
        }
        t.bindings
    }

    /// The flows silent past `limit_ms` (checked once a second).
    fn silent(&mut self, now_ms: u64, limit_ms: u64) -> Vec<FlowId> {
        if now_ms < self.swept_ms + 1000 {
            return Vec::new();
        }
        self.swept_ms = now_ms;
        self.flows
            .iter()
            .filter(|(_, t)| now_ms.saturating_sub(t.last_heard_ms) > limit_ms)
            .map(|(id, _)| *id)
            .collect()
    }
}

impl Proxy {
    /// A REGISTER was stored with `plan`.
    pub(super) fn track_outbound(&mut self, plan: &RegisterPlan, now: Now) {
        self.outbound.registered(&plan.contacts, now.wall_ms);
    }

    /// A keep-alive (CRLF ping, STUN Binding request) came over `flow`.
    pub fn flow_alive(&mut self, flow: FlowRef, now: Now) {
        self.outbound.heard(flow, now.wall_ms);
    }

    /// A connection closed: the bindings registered over it go.
    pub(super) fn outbound_conn_closed(&mut self, id: u64, now: Now) {
        let gone = self.outbound.forget(FlowId::Conn(id));
        if !gone.is_empty() {
            self.observer
                .observe(Metric::FlowFailed(FlowFailure::Closed));
        }
        self.remove_bindings(gone, now);
    }

    /// Flows silent past their Flow-Timer: connections are closed (their
    /// bindings go when they have), UDP flows' bindings go now.
    pub(super) fn sweep_silent_flows(&mut self, now: Now) {
        if self.registrar.flow_timer == 0 {
            return;
        }
        let limit = silence_limit_ms(self.registrar.flow_timer);
        for id in self.outbound.silent(now.wall_ms, limit) {
            self.observer
                .observe(Metric::FlowFailed(FlowFailure::Silent));
            match id {
                FlowId::Conn(conn) => {
                    tracing::info!(conn, "closing an outbound flow silent past its Flow-Timer");
                    let gone = self.outbound.forget(id);
                    self.actions
                        .push_back(super::Action::CloseFlow { id: conn });
                    self.remove_bindings(gone, now);
                }
                FlowId::Udp(_, peer) => {
                    tracing::info!(%peer, "an outbound UDP flow is silent past its Flow-Timer");
                    let gone = self.outbound.forget(id);
                    self.remove_bindings(gone, now);
                }
            }
        }
    }

    /// Removes bindings from the location service, each as a REGISTER of
    /// it with `Expires: 0` would.
    fn remove_bindings(&mut self, bindings: Vec<Binding>, now: Now) {
        for b in bindings {
            let Ok(aor) = Aor::parse(&b.aor) else {
                continue;
            };
            let plan = RegisterPlan {
                call_id: b.call_id.clone(),
                cseq: b.cseq.saturating_add(1),
                wildcard: false,
                contacts: vec![ContactUpdate {
                    binding: b,
                    expires: 0,
                }],
                hlc: now.hlc(),
                max_contacts: self.registrar.max_contacts,
            };
            self.locate(
                LocationOp::Register {
                    aor: aor.clone(),
                    plan,
                    now_ms: now.wall_ms,
                    aliases: Vec::new(),
                },
                Pending::FlowGone { aor },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silence_limit_leaves_a_margin() {
        assert_eq!(silence_limit_ms(120), 132_000);
        assert_eq!(silence_limit_ms(10), 12_000);
    }
}
