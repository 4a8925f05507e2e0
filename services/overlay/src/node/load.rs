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

    /// The stabilize tick: an overloaded node renews its mark, and marks
    /// past their lifetime are forgotten (a member that died overloaded
    /// never speaks again to lift its own).
    pub(super) fn renew_load(&mut self, now: Instant) {
        if self.load > 0 {
            self.tell_load();
        }
        let lifetime = self.mark_lifetime();
        self.loads
            .retain(|_, at| now.saturating_duration_since(*at) < lifetime);
    }

    fn mark_lifetime(&self) -> std::time::Duration {
        self.cfg.ping_interval * MARK_LIFETIME
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
        let lifetime = self.mark_lifetime();
        self.loads
            .iter()
            .filter(move |(_, at)| now.saturating_duration_since(**at) < lifetime)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::id::NodeId;
    use crate::node::Config;
    use crate::sim::{NetParams, Sim};

    #[test]
    fn the_mark_of_a_member_that_died_overloaded_is_forgotten() {
        let mut sim = Sim::new(
            7,
            NetParams::default(),
            Config::new(NodeId::from_u128(0)),
            false,
        );
        let first = sim.add_node();
        sim.bootstrap(first);
        let hot = sim.add_node();
        sim.join(hot, first);
        assert!(sim.run_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            Sim::converged
        ));
        sim.set_load(hot, 1);
        sim.run_for(Duration::from_millis(100));
        assert_eq!(sim.node(first).unwrap().loads.len(), 1, "marked");
        sim.kill(hot);
        sim.run_for(Duration::from_secs(6));
        assert!(
            sim.node(first).unwrap().loads.is_empty(),
            "an expired mark is not kept"
        );
    }
}
