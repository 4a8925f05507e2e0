//! Application operations: put, get, lookup.
//!
//! The node that starts an operation (the *origin*) sends it toward the key's
//! responsible node, one hop with a current view. A node that is not
//! responsible forwards it (hop count + 1, bounded by `max_hops`). The
//! responsible node answers a get from its store; for a put it becomes the
//! *coordinator*: it merges the entries, sends them to the other replicas and
//! answers the origin once a majority of the replica set holds them (itself
//! included). Results go straight back to the origin.
//!
//! Each attempt has a timeout; a retry goes directly to the next replica in
//! the origin's view with `accept_replica` set, which lets a replica other
//! than the primary coordinate or answer — the "falls back to the next live
//! replica" of reads, and the way writes get through while a failed primary
//! has not yet been declared dead. At the overall deadline the operation
//! fails; for a put that is the registrar's cue for 503 + Retry-After. Merges
//! are idempotent, so a write that did reach some replicas before failing is
//! not undone, and a retry of it is harmless.

use std::collections::BTreeSet;
use std::fmt;

use super::{Event, Node, Now, Phase};
use crate::id::{Key, NodeId};
use crate::message::{Failure, Message, OpRef};
use crate::replica::write_quorum;
use crate::ring::Ring;
use crate::routing::NextHop;
use crate::store::Entry;
use crate::timer::Deadline;

/// Identifies an operation started on this node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op#{}", self.0)
    }
}

/// A write that reached its quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOk {
    pub acks: u32,
    pub needed: u32,
    /// Overlay hops from this node to the coordinator.
    pub hops: u32,
}

/// A read's answer: the live entries of the record (empty when none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetOk {
    pub entries: Vec<Entry>,
    pub hops: u32,
    pub responder: NodeId,
    /// The replica set as the responder sees it.
    pub replicas: Vec<NodeId>,
}

/// A lookup's answer: where the key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupOk {
    pub replicas: Vec<NodeId>,
    pub hops: u32,
    pub responder: NodeId,
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("write quorum not reached: {acks} of {needed} replicas acknowledged")]
    Quorum { acks: u32, needed: u32 },
    #[error("no answer before the operation deadline")]
    Timeout,
    #[error("hop limit exceeded: member views disagree")]
    TtlExceeded,
    #[error("the node is not joined to a ring")]
    NotReady,
}

#[derive(Clone, Debug)]
pub(super) enum OpKind {
    Put(Vec<Entry>),
    Get,
    Lookup,
}

#[derive(Clone, Debug)]
pub(super) struct PendingOp {
    kind: OpKind,
    key: Key,
    deadline: std::time::Instant,
    next_attempt: std::time::Instant,
    attempts: u32,
    target: Option<NodeId>,
    tried: Vec<NodeId>,
    /// The current attempt's target answered (with a failure).
    answered: bool,
    /// Reported if the deadline passes.
    last_failure: Option<OpError>,
    /// An empty read answer from a replica standing in for the owner: the
    /// result if nothing better arrives before the deadline.
    provisional: Option<GetOk>,
}

/// A write this node coordinates.
#[derive(Clone, Debug)]
pub(super) struct Replication {
    op: OpRef,
    key: Key,
    entries: Vec<Entry>,
    acks: u32,
    needed: u32,
    waiting: BTreeSet<NodeId>,
    hops: u32,
    deadline: std::time::Instant,
    /// The origin has its answer; the entry stays until the last replica
    /// acked or the deadline, so laggards get the write resent.
    replied: bool,
}

impl Node {
    /// Writes `entries` under `key` (merged with what is there). Completes
    /// with [`Event::PutDone`]: `Ok` once a write quorum holds the entries,
    /// or an error at the deadline (answer 503 + Retry-After).
    pub fn put(
        &mut self,
        key: Key,
        entries: Vec<Entry>,
        now: std::time::Instant,
        wall_ms: u64,
    ) -> OpId {
        self.stats.writes += 1;
        self.start_op(
            OpKind::Put(entries),
            key,
            Now {
                mono: now,
                wall: wall_ms,
            },
        )
    }

    /// Reads the live entries under `key`. Completes with
    /// [`Event::GetDone`].
    pub fn get(&mut self, key: Key, now: std::time::Instant, wall_ms: u64) -> OpId {
        self.stats.lookups += 1;
        self.start_op(
            OpKind::Get,
            key,
            Now {
                mono: now,
                wall: wall_ms,
            },
        )
    }

    /// Asks the responsible node for the key's replica set (admin lookup,
    /// path measurement). Completes with [`Event::LookupDone`].
    pub fn lookup(&mut self, key: Key, now: std::time::Instant, wall_ms: u64) -> OpId {
        self.stats.lookups += 1;
        self.start_op(
            OpKind::Lookup,
            key,
            Now {
                mono: now,
                wall: wall_ms,
            },
        )
    }

    fn start_op(&mut self, kind: OpKind, key: Key, c: Now) -> OpId {
        let id = self.next_id();
        let op = PendingOp {
            kind,
            key,
            deadline: c.mono + self.cfg.op_timeout,
            next_attempt: c.mono,
            attempts: 0,
            target: None,
            tried: Vec::new(),
            answered: false,
            last_failure: None,
            provisional: None,
        };
        self.ops.insert(id, op);
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            self.complete_err(id, OpError::NotReady);
        } else {
            self.attempt(id, c);
        }
        OpId(id)
    }

    /// Sends (or runs locally) the next attempt of an operation.
    fn attempt(&mut self, id: u64, c: Now) {
        let Some(op) = self.ops.get(&id) else { return };
        let key = op.key;
        let first = op.attempts == 0;
        let tried = op.tried.clone();
        let me = self.cfg.id;
        let replicas = Ring::new(&self.view).replicas(key.position(), self.cfg.replicas);
        let reachable: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|r| *r == me || !self.is_unreachable(*r, c.mono))
            .collect();
        let (target, accept_replica) = if first && reachable.first() == replicas.first() {
            match self.next_hop(&key) {
                NextHop::Local => (Some(me), false),
                NextHop::Forward(n) => (Some(n), false),
                NextHop::NoRoute => (None, false),
            }
        } else {
            // Fall back along the replica set: untried reachable replicas
            // first, then untried ones we merely suspect (being unreachable
            // is a guess from one silence), then round again.
            let pick = reachable
                .iter()
                .find(|r| !tried.contains(r))
                .or(replicas.iter().find(|r| !tried.contains(r)))
                .or(reachable.first())
                .or(replicas.get(tried.len() % replicas.len().max(1)));
            (pick.copied(), true)
        };
        let attempt_timeout = self.cfg.op_attempt_timeout;
        let op = self.ops.get_mut(&id).expect("checked above");
        if !first {
            self.stats.retries += 1;
        }
        op.attempts += 1;
        op.answered = false;
        op.target = target;
        if let Some(t) = target {
            if op.tried.len() >= replicas.len().max(1) {
                op.tried.clear();
            }
            op.tried.push(t);
        }
        op.next_attempt = c.mono + attempt_timeout;
        let wake = op.next_attempt.min(op.deadline);
        let kind = op.kind.clone();
        self.deadlines.push(wake, Deadline::Op(id));
        let op_ref = OpRef { origin: me, id };
        match target {
            None => {} // No ring member known yet: the next attempt may find one.
            Some(t) if t == me => match kind {
                OpKind::Put(entries) => self.coordinate_put(op_ref, key, &entries, 0, c),
                OpKind::Get => self.answer_get(op_ref, key, 0, false, c),
                OpKind::Lookup => self.answer_get(op_ref, key, 0, true, c),
            },
            Some(t) => {
                let msg = match kind {
                    OpKind::Put(entries) => Message::Put {
                        op: op_ref,
                        key,
                        entries,
                        hops: 1,
                        accept_replica,
                    },
                    OpKind::Get | OpKind::Lookup => Message::Get {
                        op: op_ref,
                        key,
                        hops: 1,
                        accept_replica,
                        route_only: matches!(kind, OpKind::Lookup),
                    },
                };
                self.send(t, msg);
            }
        }
    }

    pub(super) fn op_deadline(&mut self, id: u64, c: Now) {
        let Some(op) = self.ops.get(&id) else { return };
        if c.mono >= op.deadline {
            if let Some(g) = op.provisional.clone() {
                self.ops.remove(&id);
                self.stats.lookups_ok += 1;
                self.stats.record_hops(g.hops);
                self.emit(Event::GetDone {
                    op: OpId(id),
                    result: Ok(g),
                });
                return;
            }
            let err = op.last_failure.clone().unwrap_or(OpError::Timeout);
            self.complete_err(id, err);
        } else if c.mono >= op.next_attempt {
            // Silence from a remote target: route around it for a while and
            // probe it, so a live but slow node is cleared by its answer.
            if let Some(t) = op.target
                && t != self.cfg.id
                && !op.answered
            {
                self.mark_unreachable(t, c);
                let nonce = self.next_id();
                let view_root = self.view.root();
                self.send(t, Message::Ping { nonce, view_root });
            }
            self.attempt(id, c);
        }
    }

    /// Operations whose current attempt went to `peer` retry at once — on
    /// the next [`Node::handle_timeout`], which brings the wall clock a
    /// local answer needs (link events carry only the monotonic one).
    pub(super) fn retry_ops_waiting_on(&mut self, peer: NodeId, now: std::time::Instant) {
        for (id, op) in self.ops.iter_mut() {
            if op.target == Some(peer) && op.next_attempt > now {
                op.next_attempt = now;
                self.deadlines.push(now, Deadline::Op(*id));
            }
        }
    }

    /// A failed attempt: try again shortly, or give up at the deadline.
    fn attempt_failed(&mut self, id: u64, err: OpError, c: Now) {
        let backoff = self.cfg.retry_backoff;
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        op.answered = true;
        op.last_failure = Some(err);
        op.next_attempt = (c.mono + backoff).min(op.deadline);
        let wake = op.next_attempt;
        self.deadlines.push(wake, Deadline::Op(id));
    }

    fn complete_err(&mut self, id: u64, err: OpError) {
        let Some(op) = self.ops.remove(&id) else {
            return;
        };
        let op_id = OpId(id);
        match op.kind {
            OpKind::Put(_) => {
                self.stats.write_quorum_failures += 1;
                self.emit(Event::PutDone {
                    op: op_id,
                    result: Err(err),
                });
            }
            OpKind::Get => {
                self.stats.lookups_failed += 1;
                self.emit(Event::GetDone {
                    op: op_id,
                    result: Err(err),
                });
            }
            OpKind::Lookup => {
                self.stats.lookups_failed += 1;
                self.emit(Event::LookupDone {
                    op: op_id,
                    result: Err(err),
                });
            }
        }
    }

    /// Fails every pending operation (the node is leaving for good).
    pub(super) fn abandon_ops(&mut self) {
        let ids: Vec<u64> = self.ops.keys().copied().collect();
        for id in ids {
            self.complete_err(id, OpError::NotReady);
        }
    }

    // ------------------------------------------------------ remote requests

    /// What this node does with an operation on `key`.
    fn placement(&mut self, key: &Key, accept_replica: bool, now: std::time::Instant) -> Place {
        if !matches!(self.phase, Phase::Alive | Phase::Joining | Phase::Leaving) {
            return Place::NotReady;
        }
        let me = self.cfg.id;
        let replicas = Ring::new(&self.view).replicas(key.position(), self.cfg.replicas);
        if self.phase == Phase::Alive
            && (replicas.first() == Some(&me) || (accept_replica && replicas.contains(&me)))
        {
            return Place::Here;
        }
        // The owner in our view is unreachable from here: hand the operation
        // to the next replica, allowing it to act for the owner.
        if let Some(owner) = replicas.first()
            && self.is_unreachable(*owner, now)
            && let Some(next) = replicas
                .iter()
                .find(|r| **r != me && !self.is_unreachable(**r, now))
        {
            return Place::Forward(*next, true);
        }
        match self.next_hop(key) {
            NextHop::Forward(n) if n != me => Place::Forward(n, accept_replica),
            _ => Place::NotReady,
        }
    }

    pub(super) fn on_put(
        &mut self,
        op: OpRef,
        key: Key,
        entries: Vec<Entry>,
        hops: u32,
        accept_replica: bool,
        c: Now,
    ) {
        match self.placement(&key, accept_replica, c.mono) {
            Place::Here => self.coordinate_put(op, key, &entries, hops, c),
            Place::NotReady => self.reply_put(op, Some(Failure::NotReady), 0, 0, hops, c),
            Place::Forward(..) if hops >= self.cfg.max_hops => {
                self.stats.ttl_exceeded += 1;
                self.reply_put(op, Some(Failure::Ttl), 0, 0, hops, c);
            }
            Place::Forward(n, accept_replica) => {
                self.stats.forwarded += 1;
                self.send(
                    n,
                    Message::Put {
                        op,
                        key,
                        entries,
                        hops: hops + 1,
                        accept_replica,
                    },
                );
            }
        }
    }

    pub(super) fn on_get(
        &mut self,
        op: OpRef,
        key: Key,
        hops: u32,
        accept_replica: bool,
        route_only: bool,
        c: Now,
    ) {
        match self.placement(&key, accept_replica, c.mono) {
            Place::Here => self.answer_get(op, key, hops, route_only, c),
            Place::NotReady => self.reply_get_failure(op, Failure::NotReady, hops, c),
            Place::Forward(..) if hops >= self.cfg.max_hops => {
                self.stats.ttl_exceeded += 1;
                self.reply_get_failure(op, Failure::Ttl, hops, c);
            }
            Place::Forward(n, accept_replica) => {
                self.stats.forwarded += 1;
                self.send(
                    n,
                    Message::Get {
                        op,
                        key,
                        hops: hops + 1,
                        accept_replica,
                        route_only,
                    },
                );
            }
        }
    }

    /// Stores the entries here and replicates them to the rest of the set.
    pub(super) fn coordinate_put(
        &mut self,
        op: OpRef,
        key: Key,
        entries: &[Entry],
        hops: u32,
        c: Now,
    ) {
        self.stats.writes_coordinated += 1;
        self.merge_entries(key, entries, c);
        let me = self.cfg.id;
        let replicas = Ring::new(&self.view).replicas(key.position(), self.cfg.replicas);
        let needed = write_quorum(replicas.len().max(1)) as u32;
        let acks = 1;
        if acks >= needed {
            self.reply_put(op, None, acks, needed, hops, c);
            return;
        }
        let tag = self.next_id();
        let waiting: BTreeSet<NodeId> = replicas.iter().copied().filter(|r| *r != me).collect();
        for r in &waiting {
            self.send(
                *r,
                Message::Replicate {
                    tag,
                    key,
                    entries: entries.to_vec(),
                },
            );
        }
        let deadline = c.mono + self.cfg.replicate_timeout;
        self.replications.insert(
            tag,
            Replication {
                op,
                key,
                entries: entries.to_vec(),
                acks,
                needed,
                waiting,
                hops,
                deadline,
                replied: false,
            },
        );
        self.deadlines.push(deadline, Deadline::Replication(tag));
    }

    pub(super) fn on_replicate(
        &mut self,
        from: NodeId,
        tag: u64,
        key: Key,
        entries: Vec<Entry>,
        c: Now,
    ) {
        if !self.may_replicate(from, &key, c) {
            self.stats.refused_not_replica += 1;
            self.send(from, Message::ReplicateAck { tag, stored: false });
            return;
        }
        // A leaving node has already handed its keys off: a write it took now
        // could leave with it, so it must not count toward a quorum.
        let stored = matches!(self.phase, Phase::Alive | Phase::Joining);
        if stored {
            self.merge_entries(key, &entries, c);
        }
        self.send(from, Message::ReplicateAck { tag, stored });
    }

    pub(super) fn on_replicate_ack(&mut self, from: NodeId, tag: u64, stored: bool, c: Now) {
        let Some(r) = self.replications.get_mut(&tag) else {
            return;
        };
        if !r.waiting.remove(&from) {
            return;
        }
        if stored {
            r.acks += 1;
        }
        let (acks, needed, pending) = (r.acks, r.needed, r.waiting.len() as u32);
        let decided = acks >= needed || acks + pending < needed;
        if decided && !r.replied {
            r.replied = true;
            let (op, hops) = (r.op, r.hops);
            let failure = (acks < needed).then_some(Failure::Quorum);
            self.reply_put(op, failure, acks, needed, hops, c);
        }
        if pending == 0 {
            self.replications.remove(&tag);
        }
    }

    pub(super) fn replication_deadline(&mut self, tag: u64, c: Now) {
        let Some(r) = self.replications.get(&tag) else {
            return;
        };
        if c.mono < r.deadline {
            return;
        }
        let r = self.replications.remove(&tag).expect("present");
        if !r.replied {
            self.reply_put(r.op, Some(Failure::Quorum), r.acks, r.needed, r.hops, c);
        }
        // One last copy to replicas that never acknowledged (a lost message
        // or a slow node): a replica that missed a write is what a read may
        // land on when the others fail, before anti-entropy catches up.
        for peer in r.waiting {
            self.send(
                peer,
                Message::Replicate {
                    tag,
                    key: r.key,
                    entries: r.entries.clone(),
                },
            );
        }
    }

    fn answer_get(&mut self, op: OpRef, key: Key, hops: u32, route_only: bool, c: Now) {
        let replicas = Ring::new(&self.view).replicas(key.position(), self.cfg.replicas);
        let entries: Vec<Entry> = if route_only {
            Vec::new()
        } else {
            self.store
                .get(&key)
                .map(|r| r.live(c.wall).cloned().collect())
                .unwrap_or_default()
        };
        let responder = self.cfg.id;
        if op.origin == responder {
            self.finish_get(op.id, None, hops, responder, replicas, entries, c);
        } else {
            self.send(
                op.origin,
                Message::GetResult {
                    op,
                    failure: None,
                    hops,
                    responder,
                    replicas,
                    entries,
                },
            );
        }
    }

    fn reply_get_failure(&mut self, op: OpRef, failure: Failure, hops: u32, c: Now) {
        let responder = self.cfg.id;
        if op.origin == responder {
            self.finish_get(
                op.id,
                Some(failure),
                hops,
                responder,
                Vec::new(),
                Vec::new(),
                c,
            );
        } else {
            self.send(
                op.origin,
                Message::GetResult {
                    op,
                    failure: Some(failure),
                    hops,
                    responder,
                    replicas: Vec::new(),
                    entries: Vec::new(),
                },
            );
        }
    }

    fn reply_put(
        &mut self,
        op: OpRef,
        failure: Option<Failure>,
        acks: u32,
        needed: u32,
        hops: u32,
        c: Now,
    ) {
        if op.origin == self.cfg.id {
            self.finish_put(op.id, failure, acks, needed, hops, c);
        } else {
            self.send(
                op.origin,
                Message::PutResult {
                    op,
                    failure,
                    acks,
                    needed,
                    hops,
                },
            );
        }
    }

    // ------------------------------------------------------ results at origin

    pub(super) fn on_put_result(
        &mut self,
        op: OpRef,
        failure: Option<Failure>,
        acks: u32,
        needed: u32,
        hops: u32,
        c: Now,
    ) {
        if op.origin == self.cfg.id {
            self.finish_put(op.id, failure, acks, needed, hops, c);
        }
    }

    fn finish_put(
        &mut self,
        id: u64,
        failure: Option<Failure>,
        acks: u32,
        needed: u32,
        hops: u32,
        c: Now,
    ) {
        if !self
            .ops
            .get(&id)
            .is_some_and(|o| matches!(o.kind, OpKind::Put(_)))
        {
            return; // Late answer to an operation already finished.
        }
        match failure {
            None => {
                self.ops.remove(&id);
                self.stats.writes_ok += 1;
                self.emit(Event::PutDone {
                    op: OpId(id),
                    result: Ok(PutOk { acks, needed, hops }),
                });
            }
            Some(f) => self.attempt_failed(id, failure_to_error(f, acks, needed), c),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_get_result(
        &mut self,
        op: OpRef,
        failure: Option<Failure>,
        hops: u32,
        responder: NodeId,
        replicas: Vec<NodeId>,
        entries: Vec<Entry>,
        c: Now,
    ) {
        if op.origin == self.cfg.id {
            self.finish_get(op.id, failure, hops, responder, replicas, entries, c);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_get(
        &mut self,
        id: u64,
        failure: Option<Failure>,
        hops: u32,
        responder: NodeId,
        replicas: Vec<NodeId>,
        entries: Vec<Entry>,
        c: Now,
    ) {
        let Some(op) = self.ops.get(&id) else { return };
        let lookup = match op.kind {
            OpKind::Get => false,
            OpKind::Lookup => true,
            OpKind::Put(_) => return,
        };
        if let Some(f) = failure {
            self.attempt_failed(id, failure_to_error(f, 0, 0), c);
            return;
        }
        // An empty answer from a replica standing in for the owner may just
        // be a replica that missed the write or joined the set a moment ago
        // (writes need a majority, reads ask one): keep it as the answer of
        // last resort and go on asking the set, owner first, until the
        // deadline leaves no room for another attempt.
        if !lookup && entries.is_empty() && replicas.first() != Some(&responder) {
            let room = c.mono + self.cfg.op_attempt_timeout < op.deadline;
            let ours = Ring::new(&self.view).replicas(op.key.position(), self.cfg.replicas);
            let untried = ours.iter().any(|r| !op.tried.contains(r));
            if room || untried {
                let op = self.ops.get_mut(&id).expect("checked above");
                op.provisional = Some(GetOk {
                    entries,
                    hops,
                    responder,
                    replicas,
                });
                if !untried {
                    op.tried.clear();
                }
                self.attempt(id, c);
                return;
            }
        }
        self.ops.remove(&id);
        self.stats.lookups_ok += 1;
        self.stats.record_hops(hops);
        let op = OpId(id);
        self.emit(if lookup {
            Event::LookupDone {
                op,
                result: Ok(LookupOk {
                    replicas,
                    hops,
                    responder,
                }),
            }
        } else {
            Event::GetDone {
                op,
                result: Ok(GetOk {
                    entries,
                    hops,
                    responder,
                    replicas,
                }),
            }
        });
    }
}

enum Place {
    Here,
    Forward(NodeId, bool),
    NotReady,
}

fn failure_to_error(f: Failure, acks: u32, needed: u32) -> OpError {
    match f {
        Failure::Quorum => OpError::Quorum { acks, needed },
        Failure::Ttl => OpError::TtlExceeded,
        Failure::NotReady => OpError::NotReady,
    }
}
