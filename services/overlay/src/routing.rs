//! Where an operation on a key goes next.
//!
//! With a current member view the destination is the key's responsible node,
//! one hop away: that is [`RoutingMode::FullView`], the default. A node that
//! receives an operation it is not responsible for (its sender's view was
//! stale) forwards it again by its own view, so a stale view costs hops, never
//! a wrong answer; a hop limit bounds loops between views that disagree.
//!
//! [`RoutingMode::Fingers`] is classic Chord greedy routing over the finger
//! table — forward to the finger that most closely precedes the key — for
//! comparison in the simulator and as the behaviour a node falls back to if it
//! only keeps links to its fingers; it takes O(log N) hops.

use crate::id::{NodeId, Position, distance};
use crate::ring::Ring;

/// How a node picks the next hop.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum RoutingMode {
    /// Straight to the responsible node from the full member view.
    #[default]
    FullView,
    /// Greedy Chord routing through fingers and the successor list.
    Fingers,
}

/// The next step for an operation on a key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NextHop {
    /// This node is responsible.
    Local,
    /// Send to this node.
    Forward(NodeId),
    /// No ring member is known at all.
    NoRoute,
}

/// A key's route as this node sees it (for admin lookups and the driver).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Route {
    /// Responsible node first, then its successors.
    pub replicas: Vec<NodeId>,
    pub next_hop: NextHop,
}

/// Decides the next hop for position `pos` from node `me`.
///
/// `fingers` is only read in [`RoutingMode::Fingers`] and must be `me`'s
/// finger table in ring order. The ring may exclude unreachable peers.
pub fn next_hop<F: Fn(NodeId) -> bool>(
    ring: &Ring<'_, F>,
    me: NodeId,
    pos: Position,
    mode: RoutingMode,
    fingers: &[NodeId],
) -> NextHop {
    let Some(responsible) = ring.successor(pos) else {
        return NextHop::NoRoute;
    };
    if responsible == me {
        return NextHop::Local;
    }
    match mode {
        RoutingMode::FullView => NextHop::Forward(responsible),
        RoutingMode::Fingers => {
            // The responsible node is our successor: deliver.
            if ring.successors_of(me, 1).first() == Some(&responsible) {
                return NextHop::Forward(responsible);
            }
            // Otherwise the finger closest to the key without passing it.
            let to_key = distance(me.position(), pos);
            let best = fingers
                .iter()
                .filter(|f| {
                    let d = distance(me.position(), f.position());
                    d > 0 && d < to_key
                })
                .max_by_key(|f| distance(me.position(), f.position()));
            NextHop::Forward(best.copied().unwrap_or(responsible))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::tests::member;
    use crate::membership::{MemberState, MemberView};

    #[test]
    fn full_view_goes_straight_to_the_owner() {
        let v = MemberView::from_records(
            [10u128, 20, 30, 40]
                .iter()
                .map(|i| member(*i, 0, MemberState::Alive)),
        );
        let r = Ring::new(&v);
        let me = NodeId::from_u128(10);
        assert_eq!(
            next_hop(&r, me, 35, RoutingMode::FullView, &[]),
            NextHop::Forward(NodeId::from_u128(40))
        );
        assert_eq!(
            next_hop(&r, me, 5, RoutingMode::FullView, &[]),
            NextHop::Local
        );
        assert_eq!(
            next_hop(&r, me, 45, RoutingMode::FullView, &[]),
            NextHop::Local,
            "wraps to 10"
        );
    }

    #[test]
    fn greedy_fingers_reach_the_owner_in_log_hops() {
        let n = 256u128;
        let ids: Vec<u128> = (0..n).map(|i| i << 100).collect();
        let v = MemberView::from_records(ids.iter().map(|i| member(*i, 0, MemberState::Alive)));
        let r = Ring::new(&v);
        let mut worst = 0;
        for target in [1u128 << 100, 77 << 100, (200 << 100) + 5, 255 << 100] {
            let mut at = NodeId::from_u128(0);
            let mut hops = 0;
            loop {
                let fingers = r.fingers(at);
                match next_hop(&r, at, target, RoutingMode::Fingers, &fingers) {
                    NextHop::Local => break,
                    NextHop::Forward(n) => {
                        at = n;
                        hops += 1;
                    }
                    NextHop::NoRoute => panic!("ring has members"),
                }
                assert!(hops <= 16, "loop");
            }
            assert_eq!(Some(at), r.successor(target));
            worst = worst.max(hops);
        }
        assert!(worst <= 9, "log2(256)+1 hops at most, took {worst}");
    }
}
