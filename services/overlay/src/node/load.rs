//! Load marks: each member tells the others whether it is overloaded, so
//! that they refuse new work meant for it (a call to a phone attached
//! there) at once, instead of sending it on to be refused or to time out.
//!
//! A node's level goes to every routable member when it changes, and again
//! every ping interval while it is above zero; a mark not renewed within
//! [`MARK_LIFETIME`] ping intervals has expired, so a node that died
//! overloaded (or whose zero was lost) is not shunned for long.

use std::time::Instant;

use super::Node;
use crate::id::NodeId;
use crate::message::Message;

/// Ping intervals a load mark lasts without being renewed.
pub const MARK_LIFETIME: u32 = 3;

impl Node {
    /// Sets this node's load: 0 serving, 1 (or more) overloaded, refusing
    /// new requests. A change is told to every member at once.
    pub fn set_load(&mut self, level: u32) {
        let level = level.min(1);
        if level != self.load {
            self.load = level;
            self.tell_load();
        }
    }

    /// Tells every routable member this node's load.
    fn tell_load(&mut self) {
        let me = self.cfg.id;
        let to: Vec<NodeId> = self
            .view
            .iter()
            .filter(|m| m.state.is_routable() && m.id != me)
            .map(|m| m.id)
            .collect();
        for id in to {
            self.send(id, Message::Load { level: self.load });
        }
    }

    /// The stabilize tick: an overloaded node renews its mark.
    pub(super) fn renew_load(&mut self) {
        if self.load > 0 {
            self.tell_load();
        }
    }

    pub(super) fn on_load(&mut self, from: NodeId, level: u32, now: Instant) {
        if level == 0 {
            self.loads.remove(&from);
        } else {
            self.loads.insert(from, now);
        }
    }

    /// The members whose last word, within its lifetime, is that they are
    /// overloaded.
    pub fn overloaded(&self, now: Instant) -> impl Iterator<Item = NodeId> + '_ {
        let lifetime = self.cfg.ping_interval * MARK_LIFETIME;
        self.loads
            .iter()
            .filter(move |(_, at)| now.saturating_duration_since(**at) < lifetime)
            .map(|(id, _)| *id)
    }
}
