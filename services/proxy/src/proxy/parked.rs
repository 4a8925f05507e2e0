//! Requests that wait for their callee's supernode.
//!
//! A callee registered through another supernode that is not in this
//! node's view of the farm right now (it is restarting, as in a rolling
//! upgrade, or its return has not reached this node yet) is tried again
//! every [`RETRY_EVERY`], for up to [`PARK_FOR`], before the request gets
//! 480 with Retry-After. A supernode's restart then costs its phones'
//! callers a short post-dial delay instead of a failed call. A CANCEL
//! answers a waiting INVITE 487 at once; at most [`MAX_PARKED`] requests
//! wait (past that, 480 at once), so a flood towards a gone supernode
//! holds bounded memory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ringmesh_sip::Message;
use ringmesh_sip::transaction::ServerKey;

use super::services::Onward;
use super::{Now, Origin, Proxy};
use crate::binding::Binding;

/// How long a request waits for one of its callee's supernodes.
pub(super) const PARK_FOR: Duration = Duration::from_secs(3);
/// How often a waiting request looks at the farm's view again.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(200);
/// Most requests waiting at once.
pub(super) const MAX_PARKED: usize = 1024;

#[derive(Debug)]
struct Waiting {
    server: ServerKey,
    msg: Message,
    origin: Origin,
    bindings: Vec<Binding>,
    onward: Onward,
    next: Instant,
    until: Instant,
}

/// The waiting requests, in the order their next look is due.
#[derive(Debug, Default)]
pub(super) struct Parked(VecDeque<Waiting>);

impl Parked {
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.0.front().map(|w| w.next)
    }
}

impl Proxy {
    /// Whether a request for a callee with these `bindings` may wait: only
    /// in a farm, when one of them is held by another supernode (a binding
    /// this node holds and cannot reach will not become reachable by
    /// waiting), and while fewer than [`MAX_PARKED`] wait.
    pub(super) fn can_park(&self, bindings: &[Binding]) -> bool {
        self.farm.is_some()
            && bindings.iter().any(|b| b.edge != self.me.node_id)
            && self.parked.0.len() < MAX_PARKED
    }

    /// Makes `msg` wait for one of its callee's `bindings` (best first) to
    /// become reachable.
    pub(super) fn park(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        bindings: Vec<Binding>,
        onward: Onward,
        now: Now,
    ) {
        self.parked.0.push_back(Waiting {
            server,
            msg,
            origin,
            bindings,
            onward,
            next: now.mono + RETRY_EVERY,
            until: now.mono + PARK_FOR,
        });
    }

    /// A CANCEL for `invite`: if it waits, it is answered 487 now; whether
    /// it did.
    pub(super) fn cancel_parked(&mut self, invite: ServerKey, now: Now) -> bool {
        let Some(i) = self.parked.0.iter().position(|w| w.server == invite) else {
            return false;
        };
        if let Some(w) = self.parked.0.remove(i) {
            self.reply(invite, &w.msg, 487, &[], now);
        }
        true
    }

    /// Waiting requests whose look is due: proxied if a binding is
    /// reachable now, answered 480 if their time is up, else they wait on.
    pub(super) fn parked_timers(&mut self, now: Now) {
        while self.parked.next_due().is_some_and(|at| at <= now.mono) {
            let Some(mut w) = self.parked.0.pop_front() else {
                break;
            };
            let targets = self.callee_targets(&w.msg, &w.bindings, now);
            if !targets.is_empty() {
                self.proxy_to_callee(w.server, w.msg, w.origin, targets, &w.onward, now);
            } else if now.mono >= w.until {
                self.callee_unreachable(w.server, &w.msg, now);
            } else {
                // Every entry waits the same step: the queue stays in order.
                w.next = now.mono + RETRY_EVERY;
                self.parked.0.push_back(w);
            }
        }
    }
}
