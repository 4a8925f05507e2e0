//! The location service as the SIP core task drives it: the proxy's
//! location operations go to the node-local store ([`Local`], a farm of
//! one: they finish at once) or to the ring ([`crate::farm::OverlayStore`]:
//! after a quorum of replicas answered).

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use ringmesh_proxy::location::{Completion, Held, LocalStore, LocationOp};

/// Where the SIP core task carries out location operations.
pub trait LocationService: Send + 'static {
    fn submit(&mut self, op: LocationOp, token: u64);
    /// The next finished operation. The local store finishes during
    /// `submit`; the ring wakes the task when an answer arrives.
    fn poll_complete(&mut self, cx: &mut Context<'_>) -> Poll<Completion>;
    /// How long the operation last returned by `poll_complete` waited,
    /// from its `submit`, when it could wait at all (the ring: overload
    /// control judges it); `None` for a store that answers at once.
    fn waited(&self) -> Option<Duration> {
        None
    }
    /// Drops expired bindings; called once a second.
    fn expire(&mut self, now_ms: u64);
    /// What this node holds, for metrics.
    fn counts(&self) -> Held;
}

/// The node-local store of a farm of one.
#[derive(Debug, Default)]
pub struct Local {
    store: LocalStore,
    done: VecDeque<Completion>,
}

impl LocationService for Local {
    fn submit(&mut self, op: LocationOp, token: u64) {
        let result = self.store.execute(op);
        self.done.push_back((token, result));
    }
    fn poll_complete(&mut self, _cx: &mut Context<'_>) -> Poll<Completion> {
        match self.done.pop_front() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        }
    }
    fn expire(&mut self, now_ms: u64) {
        self.store.expire(now_ms);
    }
    fn counts(&self) -> Held {
        self.store.counts()
    }
}
