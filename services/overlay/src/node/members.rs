//! Membership protocol: start, join, leave, failure detection and gossip.
//!
//! * **Join.** The new node sends its record (`Joining`) to a seed, which
//!   merges it, gossips it and answers with its whole view. The new node then
//!   pulls, page by page, every record in the range it will replicate from
//!   its successor (which holds a superset of it), and only then announces
//!   itself `Alive`, so it never owns a key it has not received.
//! * **Leave.** The node announces `Leaving` (others stop routing to it at
//!   once), pushes each record it holds to the key's new replica set, waits
//!   for the acknowledgements (bounded by `leave_timeout`), announces `Left`
//!   and reports [`Event::Left`].
//! * **Failure detection.** Each node watches its successor list and
//!   predecessors: anything heard from a neighbour counts as a heartbeat, a
//!   silent neighbour is pinged, and one silent for `failure_timeout` (or that
//!   does not answer a probe within `probe_timeout` after the driver reported
//!   its link down) is declared `Dead` at its current incarnation. A node
//!   that hears itself declared dead refutes it with a higher incarnation —
//!   the way partitions heal — so a false suspicion costs a re-replication
//!   round, never data.
//! * **Gossip.** A changed chunk of the view is pushed to `gossip_fanout`
//!   random members, and each member that learns something new pushes it on
//!   (infect-and-die). Periodically, and when a neighbour's ping shows a
//!   different view digest, two nodes compare all 256 chunk digests and swap
//!   the chunks that differ, which repairs whatever the epidemic missed.
//!   Occasionally the peer is a member believed dead, so a healed partition
//!   is noticed even if nobody's links come back by themselves.

use std::time::Instant;

use rand::Rng;

use super::{Event, Monitor, Node, Now, Phase};
use crate::id::NodeId;
use crate::membership::{Chunk, ChunkMerge, MemberRecord, MemberState, MemberView, chunk_of};
use crate::message::Message;
use crate::ring::Ring;
use crate::timer::Timer;

/// How far a dead-member probe scans the view from a random position.
const DEAD_PROBE_SCAN: usize = 64;

#[derive(Clone, Debug)]
pub(super) struct JoinState {
    seeds: Vec<NodeId>,
    next_seed: usize,
    stage: JoinStage,
}

#[derive(Clone, Debug)]
enum JoinStage {
    AwaitAccept,
    Handoff {
        peer: NodeId,
        tag: u64,
        range: crate::id::RingRange,
    },
}

impl Node {
    /// Starts a new ring with this node as its only member. Also ends a
    /// join that no seed has accepted yet: a node allowed to found the farm
    /// tries its seeds first and bootstraps only if none is a ring member
    /// (a whole farm restarting at once). Once a seed accepted, the join
    /// runs to its end.
    pub fn bootstrap(&mut self, now: Instant, wall_ms: u64) {
        let unanswered_join = self.phase == Phase::Joining
            && self
                .join
                .as_ref()
                .is_some_and(|j| matches!(j.stage, JoinStage::AwaitAccept));
        if self.phase != Phase::Idle && !unanswered_join {
            return;
        }
        let c = Now {
            mono: now,
            wall: wall_ms,
        };
        self.become_alive(c);
    }

    /// Starts as a member of a farm whose member list is already known and
    /// shared — fed by etcd at a cold start, or built by the simulator. The
    /// node is `Alive` at once and owns its range without a hand-off, so use
    /// this only when the farm holds no data yet or every node restored its
    /// records from disk; otherwise [`join`](Self::join).
    pub fn start_with_view(&mut self, view: MemberView, now: Instant, wall_ms: u64) {
        if self.phase != Phase::Idle {
            return;
        }
        let c = Now {
            mono: now,
            wall: wall_ms,
        };
        self.view = view;
        if let Some(rec) = self.view.get(self.cfg.id)
            && rec.state == MemberState::Alive
        {
            self.me = rec.clone();
        } else {
            self.me.state = MemberState::Alive;
            self.me.since_ms = wall_ms;
            self.view.upsert(self.me.clone());
        }
        self.phase = Phase::Alive;
        self.refresh_neighbours();
        // Spread the first rounds over a whole interval: a farm started at
        // once must not ping, gossip and repair in lock-step.
        for (t, d) in [
            (Timer::Stabilize, self.cfg.ping_interval),
            (Timer::ViewSync, self.cfg.view_sync_interval),
            (Timer::AntiEntropy, self.cfg.anti_entropy_interval),
            (Timer::Sweep, self.cfg.sweep_interval),
        ] {
            let at = c.mono + d.mul_f64(self.rng.random_range(0.0..1.0));
            self.timers.set(t, at);
        }
        self.emit(Event::Joined);
    }

    /// Joins the ring through any of `seeds` (tried in turn). With no seeds
    /// the node starts a ring of its own.
    pub fn join(&mut self, seeds: &[NodeId], now: Instant, wall_ms: u64) {
        if self.phase != Phase::Idle {
            return;
        }
        let seeds: Vec<NodeId> = seeds
            .iter()
            .copied()
            .filter(|s| *s != self.cfg.id)
            .collect();
        if seeds.is_empty() {
            self.bootstrap(now, wall_ms);
            return;
        }
        let c = Now {
            mono: now,
            wall: wall_ms,
        };
        self.phase = Phase::Joining;
        self.me.state = MemberState::Joining;
        self.me.since_ms = wall_ms;
        self.view.upsert(self.me.clone());
        self.join = Some(JoinState {
            seeds,
            next_seed: 0,
            stage: JoinStage::AwaitAccept,
        });
        self.send_join_request(c);
    }

    /// Adds seeds to try while joining (the driver learnt new addresses,
    /// e.g. from DNS or etcd). Ignored once joined.
    pub fn add_seeds(&mut self, seeds: &[NodeId]) {
        let me = self.cfg.id;
        if let Some(j) = self.join.as_mut() {
            for s in seeds {
                if *s != me && !j.seeds.contains(s) {
                    j.seeds.push(*s);
                }
            }
        }
    }

    fn send_join_request(&mut self, c: Now) {
        let Some(j) = self.join.as_mut() else { return };
        let seed = j.seeds[j.next_seed % j.seeds.len()];
        j.next_seed += 1;
        j.stage = JoinStage::AwaitAccept;
        let member = self.me.clone();
        self.send(seed, Message::JoinRequest { member });
        self.timers.set(Timer::Join, c.mono + self.cfg.join_retry);
    }

    pub(super) fn join_tick(&mut self, c: Now) {
        if self.phase != Phase::Joining {
            return;
        }
        match self.join.as_ref().map(|j| &j.stage) {
            Some(JoinStage::AwaitAccept) => self.send_join_request(c),
            // The hand-off stalled (the successor may have died): start it
            // again from the current view.
            Some(JoinStage::Handoff { .. }) => self.start_handoff(c),
            None => {}
        }
    }

    pub(super) fn on_join_request(&mut self, from: NodeId, member: MemberRecord, c: Now) {
        if self.phase != Phase::Alive {
            return; // The joiner tries another seed.
        }
        self.stats.joins_served += 1;
        if self.view.upsert(member) {
            self.gossip(&[chunk_of(from)], None, true);
            self.after_view_change(c);
        }
        let chunks: Vec<Chunk> = self
            .view
            .chunks()
            .filter(|ch| !ch.members().is_empty())
            .cloned()
            .collect();
        self.send(from, Message::JoinAccept { chunks });
    }

    pub(super) fn on_join_accept(&mut self, _from: NodeId, chunks: Vec<Chunk>, c: Now) {
        if self.phase != Phase::Joining
            || !matches!(
                self.join.as_ref().map(|j| &j.stage),
                Some(JoinStage::AwaitAccept)
            )
        {
            return;
        }
        self.merge_chunks(&chunks, c);
        // Our record as the ring knows it may come from an earlier life of
        // this node (a restart): outrank it.
        if let Some(known) = self.view.get(self.cfg.id)
            && known.supersedes(&self.me)
        {
            self.me.incarnation = MemberRecord::next_incarnation(known.incarnation);
            self.me.since_ms = c.wall;
        }
        self.view.upsert(self.me.clone());
        self.gossip(&[chunk_of(self.cfg.id)], None, true);
        self.schedule_membership_timers(c);
        self.start_handoff(c);
    }

    /// Asks our successor for every record in the range we will replicate.
    fn start_handoff(&mut self, c: Now) {
        let me = self.cfg.id;
        let ring = Ring::excluding(&self.view, |id| self.is_unreachable(id, c.mono));
        let Some(peer) = ring.successors_of(me, 1).first().copied() else {
            // Nobody else owns anything: there is nothing to hand over.
            self.become_alive(c);
            return;
        };
        let range = ring.replica_range(me, self.cfg.replicas);
        let tag = self.next_id();
        if let Some(j) = self.join.as_mut() {
            j.stage = JoinStage::Handoff { peer, tag, range };
        }
        self.send(
            peer,
            Message::HandoffRequest {
                tag,
                range,
                after: None,
            },
        );
        self.timers
            .set(Timer::Join, c.mono + self.cfg.handoff_timeout);
    }

    /// A page of our join hand-off arrived (already merged by the caller).
    pub(super) fn on_join_handoff_page(
        &mut self,
        from: NodeId,
        tag: u64,
        next_after: Option<crate::id::Key>,
        c: Now,
    ) {
        let Some(JoinState {
            stage:
                JoinStage::Handoff {
                    peer,
                    tag: t,
                    range,
                },
            ..
        }) = self.join.as_ref()
        else {
            return;
        };
        if *peer != from || *t != tag || self.phase != Phase::Joining {
            return;
        }
        let range = *range;
        match next_after {
            Some(after) => {
                self.send(
                    from,
                    Message::HandoffRequest {
                        tag,
                        range,
                        after: Some(after),
                    },
                );
                self.timers
                    .set(Timer::Join, c.mono + self.cfg.handoff_timeout);
            }
            None => self.become_alive(c),
        }
    }

    fn become_alive(&mut self, c: Now) {
        self.phase = Phase::Alive;
        self.join = None;
        self.timers.stop(Timer::Join);
        self.me.state = MemberState::Alive;
        self.me.since_ms = c.wall;
        if let Some(known) = self.view.get(self.cfg.id)
            && known.supersedes(&self.me)
        {
            self.me.incarnation = MemberRecord::next_incarnation(known.incarnation);
        }
        self.view.upsert(self.me.clone());
        self.gossip(&[chunk_of(self.cfg.id)], None, true);
        self.after_view_change(c);
        self.schedule_membership_timers(c);
        // Catch up at once with what was written during the hand-off.
        self.timers
            .set(Timer::AntiEntropy, c.mono + self.cfg.repair_delay);
        let sweep = c.mono + self.jitter(self.cfg.sweep_interval);
        self.timers.set(Timer::Sweep, sweep);
        self.emit(Event::Joined);
    }

    fn schedule_membership_timers(&mut self, c: Now) {
        let ping = c.mono + self.jitter(self.cfg.ping_interval);
        self.timers.set_earlier(Timer::Stabilize, ping);
        let sync = c.mono + self.jitter(self.cfg.view_sync_interval);
        self.timers.set_earlier(Timer::ViewSync, sync);
    }

    /// Starts a graceful leave: hand every record off, then exit the ring.
    /// Completes with [`Event::Left`].
    pub fn leave(&mut self, now: Instant, wall_ms: u64) {
        let c = Now {
            mono: now,
            wall: wall_ms,
        };
        match self.phase {
            Phase::Alive => {}
            Phase::Joining => {
                // Nothing of ours is owned yet: just go.
                self.finish_leave(true, c);
                return;
            }
            Phase::Idle => {
                self.phase = Phase::Left;
                self.emit(Event::Left { handed_off: true });
                return;
            }
            Phase::Leaving | Phase::Left => return,
        }
        self.phase = Phase::Leaving;
        self.me.state = MemberState::Leaving;
        self.me.since_ms = wall_ms;
        self.view.upsert(self.me.clone());
        self.gossip(&[chunk_of(self.cfg.id)], None, true);
        self.timers.stop(Timer::AntiEntropy);
        self.timers.stop(Timer::Sweep);
        if self.push_all_for_leave(c) == 0 {
            self.finish_leave(true, c);
        } else {
            self.timers.set(Timer::Leave, now + self.cfg.leave_timeout);
        }
    }

    pub(super) fn finish_leave(&mut self, handed_off: bool, c: Now) {
        if matches!(self.phase, Phase::Left | Phase::Idle) {
            return;
        }
        self.me.state = MemberState::Left;
        self.me.since_ms = c.wall;
        self.view.upsert(self.me.clone());
        self.gossip(&[chunk_of(self.cfg.id)], None, true);
        self.phase = Phase::Left;
        self.timers.clear();
        self.abandon_ops();
        self.emit(Event::Left { handed_off });
    }

    // ---------------------------------------------------- failure detection

    pub(super) fn stabilize(&mut self, c: Now) {
        if self.phase != Phase::Alive {
            return;
        }
        self.unreachable.retain(|_, until| *until > c.mono);
        self.told_gone
            .retain(|_, at| c.mono.saturating_duration_since(*at) < self.cfg.failure_timeout);
        self.refresh_neighbours();
        let watch: Vec<NodeId> = self
            .neighbours
            .successors
            .iter()
            .chain(self.neighbours.predecessors.iter())
            .copied()
            .collect();
        self.monitors.retain(|id, _| watch.contains(id));
        for id in &watch {
            self.monitors.entry(*id).or_insert(Monitor {
                last_heard: c.mono,
                probe_deadline: None,
            });
        }
        let mut dead = Vec::new();
        let mut ping = Vec::new();
        for (id, m) in &self.monitors {
            let silent = c.mono.saturating_duration_since(m.last_heard);
            if silent >= self.cfg.failure_timeout || m.probe_deadline.is_some_and(|d| c.mono >= d) {
                dead.push(*id);
            } else if silent >= self.cfg.ping_interval || m.probe_deadline.is_some() {
                ping.push(*id);
            }
        }
        for id in dead {
            self.declare_dead(id, c);
        }
        let view_root = self.view.root();
        for id in ping {
            if self.monitors.contains_key(&id) {
                let nonce = self.next_id();
                self.send(id, Message::Ping { nonce, view_root });
            }
        }
    }

    fn declare_dead(&mut self, peer: NodeId, c: Now) {
        self.monitors.remove(&peer);
        self.mark_unreachable(peer, c);
        let Some(rec) = self.view.get(peer) else {
            return;
        };
        if rec.state.is_gone() {
            return;
        }
        let mut rec = rec.clone();
        rec.state = MemberState::Dead;
        rec.since_ms = c.wall;
        if self.view.upsert(rec) {
            self.stats.failures_detected += 1;
            self.emit(Event::PeerFailed { peer });
            self.gossip(&[chunk_of(peer)], None, true);
            self.after_view_change(c);
        }
    }

    pub(super) fn on_ping(&mut self, from: NodeId, nonce: u64, view_root: u64, c: Now) {
        let root = self.view.root();
        self.send(
            from,
            Message::Pong {
                nonce,
                view_root: root,
            },
        );
        self.compare_roots(from, view_root, c);
    }

    pub(super) fn on_pong(&mut self, from: NodeId, view_root: u64, c: Now) {
        self.compare_roots(from, view_root, c);
    }

    /// A neighbour's view differs from ours: compare chunk digests with it
    /// (at most once per ping interval, so an epidemic in progress does not
    /// set off a sync per ping).
    fn compare_roots(&mut self, from: NodeId, their_root: u64, c: Now) {
        if their_root == self.view.root() {
            return;
        }
        if self
            .last_triggered_sync
            .is_some_and(|t| c.mono.saturating_duration_since(t) < self.cfg.ping_interval)
        {
            return;
        }
        self.last_triggered_sync = Some(c.mono);
        let digests = self.view.digests();
        self.send(from, Message::ViewDigest { digests });
    }

    /// A member we believe gone talks to us: show it its record so it
    /// refutes (it was wrongly declared dead, e.g. across a partition).
    pub(super) fn tell_if_gone(&mut self, from: NodeId, c: Now) {
        if !self.view.get(from).is_some_and(|m| m.state.is_gone()) {
            return;
        }
        if self.told_gone.contains_key(&from) {
            return;
        }
        self.told_gone.insert(from, c.mono);
        let chunk = self.view.chunk(chunk_of(from)).clone();
        self.send(
            from,
            Message::Gossip {
                chunks: vec![chunk],
            },
        );
    }

    // ---------------------------------------------------------------- gossip

    /// Merges received chunks; returns the indices that changed here.
    fn merge_chunks(&mut self, chunks: &[Chunk], c: Now) -> Vec<usize> {
        let mut changed = Vec::new();
        for ch in chunks {
            if self.view.merge_chunk(ch) != ChunkMerge::Unchanged {
                changed.push(ch.index());
            }
        }
        if !changed.is_empty() {
            self.after_view_change(c);
        }
        changed
    }

    /// Pushes the given chunks to `gossip_fanout` random members (not
    /// `exclude`), plus our nearest neighbours when `neighbours` is set (they
    /// are the ones whose replica sets a change affects first).
    pub(super) fn gossip(&mut self, chunks: &[usize], exclude: Option<NodeId>, neighbours: bool) {
        let me = self.cfg.id;
        let mut targets: Vec<NodeId> = Vec::new();
        if neighbours {
            let ring = Ring::new(&self.view);
            targets.extend(ring.successors_of(me, 1));
            targets.extend(ring.predecessors_of(me, 1));
        }
        let mut tries = 0;
        let want = targets.len() + self.cfg.gossip_fanout;
        while targets.len() < want && tries < 3 * self.cfg.gossip_fanout {
            tries += 1;
            let pos: u128 = self.rng.random();
            let pick = self
                .view
                .sample(pos, |m| {
                    !m.state.is_gone() && m.id != me && Some(m.id) != exclude
                })
                .map(|m| m.id);
            match pick {
                Some(id) if !targets.contains(&id) => targets.push(id),
                Some(_) => {}
                None => break,
            }
        }
        targets.retain(|t| Some(*t) != exclude && *t != me);
        targets.dedup();
        if targets.is_empty() {
            return;
        }
        let payload: Vec<Chunk> = chunks.iter().map(|i| self.view.chunk(*i).clone()).collect();
        for t in targets {
            self.stats.gossip_sent += 1;
            self.send(
                t,
                Message::Gossip {
                    chunks: payload.clone(),
                },
            );
        }
    }

    pub(super) fn on_gossip(&mut self, from: NodeId, chunks: Vec<Chunk>, c: Now) {
        let changed = self.merge_chunks(&chunks, c);
        if !changed.is_empty() {
            self.gossip(&changed, Some(from), false);
        }
    }

    pub(super) fn view_sync_tick(&mut self, c: Now) {
        if !matches!(self.phase, Phase::Alive | Phase::Joining) {
            return;
        }
        let me = self.cfg.id;
        let pos: u128 = self.rng.random();
        // One round in four, look for a member believed dead: if it is in
        // fact up (a healed partition), the exchange shows it its record.
        let dead = if self.rng.random_range(0..4) == 0 {
            self.view
                .iter_from(pos)
                .take(DEAD_PROBE_SCAN)
                .find(|m| m.state == MemberState::Dead && m.id != me)
                .map(|m| m.id)
        } else {
            None
        };
        let target = dead.or_else(|| {
            self.view
                .sample(pos, |m| !m.state.is_gone() && m.id != me)
                .map(|m| m.id)
        });
        if let Some(t) = target {
            let digests = self.view.digests();
            self.send(t, Message::ViewDigest { digests });
        }
        self.collect_members(c);
    }

    pub(super) fn on_view_digest(&mut self, from: NodeId, digests: Vec<u64>) {
        let chunks: Vec<Chunk> = self
            .view
            .chunks()
            .zip(digests.iter())
            .filter(|(ch, d)| ch.digest() != **d)
            .map(|(ch, _)| ch.clone())
            .collect();
        if !chunks.is_empty() {
            self.send(from, Message::ViewChunks { chunks });
        }
    }

    pub(super) fn on_view_chunks(&mut self, from: NodeId, chunks: Vec<Chunk>, c: Now) {
        let changed = self.merge_chunks(&chunks, c);
        // Send back whatever we know better than the sender.
        let back: Vec<Chunk> = chunks
            .iter()
            .filter(|ch| self.view.chunk(ch.index()).digest() != ch.digest())
            .map(|ch| self.view.chunk(ch.index()).clone())
            .collect();
        if !back.is_empty() {
            self.send(from, Message::Gossip { chunks: back });
        }
        if !changed.is_empty() {
            self.gossip(&changed, Some(from), false);
        }
    }

    /// Forgets long-gone members (and joins abandoned long ago), one chunk per round so the cost stays
    /// O(N / 256) per round.
    fn collect_members(&mut self, c: Now) {
        let i = self.member_gc_cursor % crate::membership::CHUNKS;
        self.member_gc_cursor = self.member_gc_cursor.wrapping_add(1);
        let expired: Vec<NodeId> = self
            .view
            .chunk(i)
            .members()
            .iter()
            .filter(|m| {
                // A joiner that never finished (it crashed mid-join) is
                // nobody's neighbour, so nobody declares it dead: it ages out.
                (m.state.is_gone() || m.state == MemberState::Joining)
                    && m.id != self.cfg.id
                    && m.since_ms.saturating_add(self.cfg.member_gc_ms) <= c.wall
            })
            .map(|m| m.id)
            .collect();
        for id in expired {
            self.view.remove(id);
        }
    }

    /// Reacts to any change of the view: refute our own death, track the
    /// new neighbourhood, and start re-replication when it moved.
    pub(super) fn after_view_change(&mut self, c: Now) {
        let me = self.cfg.id;
        if matches!(self.phase, Phase::Joining | Phase::Alive | Phase::Leaving) {
            let refute = match self.view.get(me) {
                Some(known) => known.supersedes(&self.me),
                None => true,
            };
            if refute {
                if let Some(known) = self.view.get(me)
                    && known.incarnation >= self.me.incarnation
                {
                    self.me.incarnation = MemberRecord::next_incarnation(known.incarnation);
                    self.me.since_ms = c.wall;
                    self.stats.refutations += 1;
                }
                self.view.upsert(self.me.clone());
                self.gossip(&[chunk_of(me)], None, true);
            }
        }
        if self.refresh_neighbours() && self.phase == Phase::Alive {
            let successors = self.neighbours.successors.clone();
            let primary = self.neighbours.primary;
            self.synced
                .retain(|peer, range| successors.contains(peer) && Some(*range) == primary);
            self.timers
                .set_earlier(Timer::AntiEntropy, c.mono + self.cfg.repair_delay);
        }
        if !self.membership_event_pending {
            self.membership_event_pending = true;
            self.emit(Event::MembershipChanged);
        }
    }
}
