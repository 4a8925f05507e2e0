//! Timer J without a timer per transaction: the linger table.
//!
//! A server non-INVITE transaction that sent its final response over an
//! unreliable transport must answer retransmissions of its request with
//! that response for 64*T1 (RFC 3261 §17.2.2, Timer J). During a register
//! storm that is nearly every transaction the node holds: 32 s of them.
//! All they still need is their match fingerprint, where to answer, and
//! the response, so they leave the transaction table for this one.
//!
//! Every entry waits the same time, so entries are kept in *generations*:
//! one table per period of a third of Timer J, the newest taking inserts.
//! When a period ends the oldest generation, whose youngest entry has then
//! lingered a full Timer J, is cleared at once, and its table (with its
//! capacity) is reused as the newest: no per-entry timer, no removal one by
//! one, and once the node has warmed up no table grows again. Each
//! generation is split into [`PARTS`] hash maps by fingerprint, so while
//! it does grow, each rehash moves a small map (and the maps fill at
//! slightly different paces, so their rehashes spread out): no rehash of
//! half a million entries ever pauses the SIP core. An entry lives between
//! Timer J and 4/3 of it. A lookup probes one map in each generation.
//!
//! Responses are copied into 64 KiB arena chunks (one allocation per few
//! hundred responses, freed when the generations referring to them are
//! cleared) rather than kept in the writer's larger buffer.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::key::{Fingerprint, FingerprintMap};

/// Generations kept: the newest (taking inserts) and three older ones.
const GENERATIONS: usize = 4;
/// Hash maps per generation.
const PARTS: usize = 64;
/// Bytes of response copies per arena chunk.
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct Lingering<D> {
    dest: D,
    response: Bytes,
}

/// The lingering server non-INVITE transactions (see the module docs).
#[derive(Debug)]
pub(crate) struct LingerTable<D> {
    /// `gens[newest]` takes inserts; the others are older, in ring order.
    gens: Vec<Vec<FingerprintMap<Lingering<D>>>>,
    newest: usize,
    /// When the newest generation stops taking inserts.
    rotate_at: Option<Instant>,
    period: Duration,
    arena: BytesMut,
    len: usize,
}

impl<D: Clone> LingerTable<D> {
    /// A table for Timer J = `linger`, with room for `capacity` entries.
    pub(crate) fn new(linger: Duration, capacity: usize) -> Self {
        let per_part = capacity / (GENERATIONS - 1) / PARTS;
        LingerTable {
            gens: (0..GENERATIONS)
                .map(|_| {
                    (0..PARTS)
                        .map(|_| {
                            let mut m = FingerprintMap::default();
                            m.reserve(per_part);
                            m
                        })
                        .collect()
                })
                .collect(),
            newest: 0,
            rotate_at: None,
            period: (linger / (GENERATIONS as u32 - 1)).max(Duration::from_millis(1)),
            arena: BytesMut::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keeps `response` to answer retransmissions matching `key` at `dest`.
    pub(crate) fn insert(&mut self, key: Fingerprint, dest: D, last: &[u8], now: Instant) {
        self.rotate(now);
        if self.rotate_at.is_none() {
            self.rotate_at = Some(now + self.period);
        }
        if self.arena.capacity() - self.arena.len() < last.len() {
            self.arena = BytesMut::with_capacity(CHUNK.max(last.len()));
        }
        self.arena.extend_from_slice(last);
        let response = self.arena.split().freeze();
        if self.gens[self.newest][part(&key)]
            .insert(key, Lingering { dest, response })
            .is_none()
        {
            self.len += 1;
        }
    }

    /// A retransmission from `from`: the response to send there, if `key`
    /// lingers (and `from` is where it answers from now on).
    pub(crate) fn answer(&mut self, key: &Fingerprint, from: D) -> Option<(D, Bytes)> {
        let p = part(key);
        let l = self.gens.iter_mut().find_map(|g| g[p].get_mut(key))?;
        l.dest = from;
        Some((l.dest.clone(), l.response.clone()))
    }

    /// When [`LingerTable::expire`] next has work.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.rotate_at.filter(|_| self.len > 0)
    }

    /// Ends the periods due at `now`, dropping the generations that have
    /// lingered a full Timer J.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.rotate(now);
    }

    fn rotate(&mut self, now: Instant) {
        while let Some(at) = self.rotate_at.filter(|&at| at <= now) {
            self.newest = (self.newest + 1) % GENERATIONS;
            // The generation after the old newest, in ring order, is the
            // oldest: reused as the new newest.
            for m in &mut self.gens[self.newest] {
                self.len -= m.len();
                m.clear();
            }
            self.rotate_at = if self.len == 0 {
                None
            } else {
                Some(at + self.period)
            };
        }
        if self.len == 0 {
            self.rotate_at = None;
        }
    }
}

/// Which map of a generation holds `key` (bits the maps' own hashing,
/// which takes the low 64, does not use).
fn part(key: &Fingerprint) -> usize {
    (key >> 64) as usize % PARTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_linger_between_j_and_four_thirds_of_j() {
        let j = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut l: LingerTable<u32> = LingerTable::new(j, 16);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for i in 0..100u128 {
            l.insert(i, 1, b"SIP/2.0 200 OK\r\n\r\n", at(i as u64 * 100));
        }
        assert_eq!(l.len(), 100);
        assert_eq!(
            l.answer(&5, 9),
            Some((9, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n")))
        );
        assert_eq!(l.answer(&500, 9), None);
        // Entry 99 went in at 9.9 s: it must still answer at 9.9 + 30 s.
        l.expire(at(39_900));
        assert!(l.answer(&99, 2).is_some());
        // Entry 0 went in at 0 s: gone by 0 + 40 s.
        l.expire(at(40_000));
        assert!(l.answer(&0, 2).is_none());
        // All gone 4/3 J after the last insert.
        l.expire(at(9_900 + 40_000));
        assert_eq!(l.len(), 0);
        assert_eq!(l.next_deadline(), None);
    }
}
