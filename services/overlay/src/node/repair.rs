//! Moving and reconciling stored data: hand-off and anti-entropy.
//!
//! * **Join hand-off** (pull): the joiner pages through its successor's
//!   records in the joiner's future replica range.
//! * **Push hand-off**: a leaving node pushes each record to the key's new
//!   replica set, and the periodic *sweep* pushes records this node no longer
//!   replicates (after a join moved its range, a restart, or a stale
//!   coordinator's write) to the key's primary, dropping its copy only once
//!   the primary acknowledged and the record did not change meanwhile.
//! * **Anti-entropy**: every `anti_entropy_interval`, and soon after the
//!   neighbourhood changed, a node compares its primary range with each other
//!   member of that range's replica set by range digests (see
//!   [`crate::antientropy`]). A new successor that holds nothing there is
//!   filled by a push: that is re-replication back to min(k, N) after a
//!   failure. A successor found in sync is counted; the others make up the
//!   `replicas_below_k` gauge.

use std::collections::BTreeMap;

use super::{Node, Now, Phase};
use crate::antientropy::{self, Step};
use crate::id::{Key, NodeId, RingRange};
use crate::message::{MAX_KEYS, MAX_RANGES, Message};
use crate::ring::Ring;
use crate::store::{Record, Summary};
use crate::timer::{Deadline, Timer};

/// Bytes per repair message beyond which a batch is cut.
const BATCH_BYTES: usize = 1 << 20;
/// Records one sweep hands off at most, so a large ownership change is
/// spread over several rounds instead of one burst.
const SWEEP_BATCHES: usize = 4;
/// Records whose expired entries one sweep collects: the store is swept a
/// step at a time (a million records in 20 sweeps), so that no sweep holds
/// the node, and the SIP core sharing its core, for a whole pass.
const GC_STEP: usize = 50_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PushPurpose {
    Leave,
    Sweep,
}

#[derive(Clone, Debug)]
pub(super) struct Push {
    to: NodeId,
    records: Vec<(Key, Record)>,
    purpose: PushPurpose,
    deadline: std::time::Instant,
}

impl Node {
    // -------------------------------------------------------------- hand-off

    pub(super) fn on_handoff_request(
        &mut self,
        from: NodeId,
        tag: u64,
        range: RingRange,
        after: Option<Key>,
    ) {
        let batch = self.cfg.handoff_batch;
        let mut records = Vec::new();
        let mut bytes = 0;
        for (k, r) in self.store.range_after(range, after) {
            if records.len() >= batch || bytes >= BATCH_BYTES {
                break;
            }
            bytes += r.size_hint();
            records.push((*k, r.clone()));
        }
        let full = records.len() >= batch || bytes >= BATCH_BYTES;
        let next_after = if full {
            records.last().map(|(k, _)| *k)
        } else {
            None
        };
        self.send(
            from,
            Message::HandoffBatch {
                tag,
                records,
                next_after,
                push: false,
            },
        );
    }

    pub(super) fn on_handoff_batch(
        &mut self,
        from: NodeId,
        tag: u64,
        records: Vec<(Key, Record)>,
        next_after: Option<Key>,
        push: bool,
        c: Now,
    ) {
        let all_taken = self.merge_repair(from, &records, c);
        if !push {
            self.on_join_handoff_page(from, tag, next_after, c);
        } else if all_taken {
            // A push with a refused record is not acknowledged: its sender
            // keeps the records rather than drop them as delivered.
            self.send(from, Message::HandoffAck { tag });
        }
    }

    pub(super) fn on_handoff_ack(&mut self, from: NodeId, tag: u64, c: Now) {
        if self.pushes.get(&tag).is_none_or(|p| p.to != from) {
            return;
        }
        let push = self.pushes.remove(&tag).expect("present");
        match push.purpose {
            PushPurpose::Leave => {
                let pending = self
                    .pushes
                    .values()
                    .any(|p| p.purpose == PushPurpose::Leave);
                if !pending && self.phase == Phase::Leaving {
                    self.finish_leave(true, c);
                }
            }
            PushPurpose::Sweep => {
                let mine = Ring::new(&self.view).replica_range(self.cfg.id, self.cfg.replicas);
                for (k, r) in &push.records {
                    self.sweeping.remove(k);
                    // Drop only what is still not ours and unchanged since it
                    // was sent: the primary holds exactly this version.
                    if self.phase == Phase::Alive
                        && !mine.contains(k.position())
                        && self.store.get(k) == Some(r)
                    {
                        self.store.remove(k);
                        self.stats.handed_off_records += 1;
                    }
                }
            }
        }
    }

    pub(super) fn push_deadline(&mut self, tag: u64, c: Now) {
        let Some(p) = self.pushes.get(&tag) else {
            return;
        };
        if c.mono < p.deadline {
            return;
        }
        match p.purpose {
            PushPurpose::Leave if self.phase == Phase::Leaving => {
                // Resend until the leave timeout gives up.
                let (to, records) = (p.to, p.records.clone());
                let deadline = c.mono + self.cfg.handoff_timeout;
                if let Some(p) = self.pushes.get_mut(&tag) {
                    p.deadline = deadline;
                }
                self.deadlines.push(deadline, Deadline::Push(tag));
                self.send(
                    to,
                    Message::HandoffBatch {
                        tag,
                        records,
                        next_after: None,
                        push: true,
                    },
                );
            }
            _ => {
                // A sweep retries in a later round.
                if let Some(p) = self.pushes.remove(&tag) {
                    for (k, _) in &p.records {
                        self.sweeping.remove(k);
                    }
                }
            }
        }
    }

    fn push(&mut self, to: NodeId, records: Vec<(Key, Record)>, purpose: PushPurpose, c: Now) {
        let tag = self.next_id();
        let deadline = c.mono + self.cfg.handoff_timeout;
        self.send(
            to,
            Message::HandoffBatch {
                tag,
                records: records.clone(),
                next_after: None,
                push: true,
            },
        );
        self.pushes.insert(
            tag,
            Push {
                to,
                records,
                purpose,
                deadline,
            },
        );
        self.deadlines.push(deadline, Deadline::Push(tag));
    }

    /// Pushes every record to the members of its replica set without us.
    /// Returns the number of pushes started.
    pub(super) fn push_all_for_leave(&mut self, c: Now) -> usize {
        let ring = Ring::new(&self.view); // we are Leaving: not on the ring
        let mut by_target: BTreeMap<NodeId, Vec<(Key, Record)>> = BTreeMap::new();
        for (k, r) in self.store.iter() {
            for t in ring.replicas(k.position(), self.cfg.replicas) {
                by_target.entry(t).or_default().push((*k, r.clone()));
            }
        }
        let mut started = 0;
        for (t, records) in by_target {
            for batch in self.batches(records) {
                self.push(t, batch, PushPurpose::Leave, c);
                started += 1;
            }
        }
        started
    }

    /// Expires data and hands off records outside our replica range.
    pub(super) fn sweep(&mut self, c: Now) {
        if self.phase != Phase::Alive {
            return;
        }
        self.store.collect_garbage_step(c.wall, GC_STEP);
        let ring = Ring::new(&self.view);
        let Some(outside) = ring
            .replica_range(self.cfg.id, self.cfg.replicas)
            .complement()
        else {
            return;
        };
        let limit = self.cfg.handoff_batch * SWEEP_BATCHES;
        let mut by_primary: BTreeMap<NodeId, Vec<(Key, Record)>> = BTreeMap::new();
        let mut taken = 0;
        for (k, r) in self.store.range(outside) {
            if taken >= limit {
                break;
            }
            if self.sweeping.contains(k) {
                continue;
            }
            if let Some(p) = ring.successor(k.position())
                && p != self.cfg.id
            {
                by_primary.entry(p).or_default().push((*k, r.clone()));
                taken += 1;
            }
        }
        for (p, records) in by_primary {
            for (k, _) in &records {
                self.sweeping.insert(*k);
            }
            for batch in self.batches(records) {
                self.push(p, batch, PushPurpose::Sweep, c);
            }
        }
    }

    fn batches(&self, records: Vec<(Key, Record)>) -> Vec<Vec<(Key, Record)>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        let mut bytes = 0;
        for (k, r) in records {
            let size = r.size_hint();
            if !cur.is_empty()
                && (cur.len() >= self.cfg.handoff_batch || bytes + size > BATCH_BYTES)
            {
                out.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            bytes += size;
            cur.push((k, r));
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Merges hand-off or anti-entropy records from `from`, each only if
    /// `from` may replicate its key; false when any was refused.
    fn merge_repair(&mut self, from: NodeId, records: &[(Key, Record)], c: Now) -> bool {
        let mut all_taken = true;
        for (k, r) in records {
            if !self.may_replicate(from, k, c) {
                self.stats.refused_not_replica += 1;
                all_taken = false;
            } else if self.merge_entries(*k, r.entries(), c) {
                self.stats.repaired_records += 1;
            }
        }
        all_taken
    }

    // ---------------------------------------------------------- anti-entropy

    pub(super) fn anti_entropy_tick(&mut self, c: Now) {
        if self.phase != Phase::Alive {
            return;
        }
        let horizon = 2 * self.cfg.anti_entropy_interval;
        self.ae_sessions
            .retain(|_, (_, _, at)| c.mono.saturating_duration_since(*at) < horizon);
        let ring = Ring::new(&self.view);
        let me = self.cfg.id;
        let range = ring.primary_range(me);
        let copies = crate::replica::replica_count(self.cfg.replicas, ring.len());
        let partners = ring.successors_of(me, copies.saturating_sub(1));
        self.synced
            .retain(|peer, r| partners.contains(peer) && *r == range);
        self.ae_partners = partners.clone();
        self.update_replica_gauge();
        if partners.is_empty() {
            return;
        }
        let summary = self.store.summary(range);
        for p in partners {
            // Random, not a counter: replies echo the session, and both ends
            // of a pair may run rounds of their own.
            let session: u64 = rand::Rng::random(&mut self.rng);
            self.ae_sessions.insert(session, (p, range, c.mono));
            self.stats.anti_entropy_rounds += 1;
            self.send(
                p,
                Message::AeSync {
                    session,
                    depth: 0,
                    ranges: vec![(range, summary)],
                },
            );
        }
    }

    fn update_replica_gauge(&mut self) {
        self.stats.replicas_below_k = self
            .ae_partners
            .iter()
            .filter(|p| !self.synced.contains_key(p))
            .count() as u64;
    }

    /// A reply in one of our own rounds that is not "in sync": repair is
    /// under way, so confirm it with another round soon rather than a whole
    /// interval later.
    fn note_round_differs(&mut self, from: NodeId, session: u64, c: Now) {
        if self
            .ae_sessions
            .get(&session)
            .is_some_and(|(p, _, _)| *p == from)
        {
            self.ae_sessions.remove(&session);
            self.timers
                .set_earlier(Timer::AntiEntropy, c.mono + 4 * self.cfg.repair_delay);
        }
    }

    pub(super) fn on_ae_sync(
        &mut self,
        from: NodeId,
        session: u64,
        depth: u32,
        ranges: Vec<(RingRange, Summary)>,
        c: Now,
    ) {
        self.note_round_differs(from, session, c);
        let mut parts: Vec<(RingRange, Summary)> = Vec::new();
        let mut all_in_sync = true;
        for (range, theirs) in &ranges {
            match antientropy::compare(&self.store, *range, *theirs, depth) {
                Step::InSync => continue,
                Step::SendAll => self.send(
                    from,
                    Message::AeKeys {
                        session,
                        range: *range,
                        keys: Vec::new(),
                    },
                ),
                Step::PushAll => {
                    let records: Vec<(Key, Record)> = self
                        .store
                        .range(*range)
                        .map(|(k, r)| (*k, r.clone()))
                        .collect();
                    self.send_records(from, session, records, Vec::new());
                }
                Step::Keys(keys) => {
                    for chunk in keys.chunks(MAX_KEYS) {
                        self.send(
                            from,
                            Message::AeKeys {
                                session,
                                range: *range,
                                keys: chunk.to_vec(),
                            },
                        );
                    }
                }
                Step::Split(p) => parts.extend(p),
            }
            all_in_sync = false;
        }
        if all_in_sync && depth == 0 {
            for (range, _) in ranges {
                self.send(from, Message::AeInSync { session, range });
            }
        }
        for chunk in parts.chunks(MAX_RANGES) {
            self.send(
                from,
                Message::AeSync {
                    session,
                    depth: depth + 1,
                    ranges: chunk.to_vec(),
                },
            );
        }
    }

    pub(super) fn on_ae_keys(
        &mut self,
        from: NodeId,
        session: u64,
        range: RingRange,
        keys: Vec<(Key, u64)>,
        c: Now,
    ) {
        self.note_round_differs(from, session, c);
        let (push, want) = antientropy::diff_keys(&self.store, range, &keys);
        let records: Vec<(Key, Record)> = push
            .iter()
            .filter_map(|k| self.store.get(k).map(|r| (*k, r.clone())))
            .collect();
        if records.is_empty() && want.is_empty() {
            return;
        }
        self.send_records(from, session, records, want);
    }

    pub(super) fn on_ae_records(
        &mut self,
        from: NodeId,
        session: u64,
        records: Vec<(Key, Record)>,
        want: Vec<Key>,
        c: Now,
    ) {
        self.note_round_differs(from, session, c);
        self.merge_repair(from, &records, c);
        if want.is_empty() {
            return;
        }
        let back: Vec<(Key, Record)> = want
            .iter()
            .filter_map(|k| self.store.get(k).map(|r| (*k, r.clone())))
            .collect();
        if !back.is_empty() {
            self.send_records(from, session, back, Vec::new());
        }
    }

    pub(super) fn on_ae_in_sync(&mut self, from: NodeId, session: u64, range: RingRange) {
        if self
            .ae_sessions
            .get(&session)
            .is_some_and(|(p, r, _)| *p == from && *r == range)
        {
            self.ae_sessions.remove(&session);
            self.synced.insert(from, range);
            self.stats.anti_entropy_in_sync += 1;
            self.update_replica_gauge();
        }
    }

    /// Sends records in bounded batches; `want` rides on the first.
    fn send_records(
        &mut self,
        to: NodeId,
        session: u64,
        records: Vec<(Key, Record)>,
        want: Vec<Key>,
    ) {
        let mut want = Some(want);
        let batches = self.batches(records);
        if batches.is_empty() {
            let want = want.take().unwrap_or_default();
            for w in want.chunks(MAX_KEYS) {
                self.send(
                    to,
                    Message::AeRecords {
                        session,
                        records: Vec::new(),
                        want: w.to_vec(),
                    },
                );
            }
            return;
        }
        for batch in batches {
            let w = want.take().unwrap_or_default();
            let (first, rest) = w.split_at(w.len().min(MAX_KEYS));
            self.send(
                to,
                Message::AeRecords {
                    session,
                    records: batch,
                    want: first.to_vec(),
                },
            );
            for r in rest.chunks(MAX_KEYS) {
                self.send(
                    to,
                    Message::AeRecords {
                        session,
                        records: Vec::new(),
                        want: r.to_vec(),
                    },
                );
            }
        }
    }
}
