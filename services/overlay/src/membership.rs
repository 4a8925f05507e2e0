//! The member view: every supernode's record, gossiped until all views agree.
//!
//! ## Records and their order
//!
//! A [`MemberRecord`] says who a node is (addresses, name, version) and what
//! state it is in. Versions of one node's record merge by a total order:
//! `incarnation`, then state rank (`Joining < Alive < Leaving < Left <
//! Dead`), then `since_ms`, then the remaining fields. Only the node itself
//! raises its incarnation — to rejoin, or to refute a death it hears about —
//! while a neighbour that detects a failure re-issues the record at the same
//! incarnation as `Dead`, which outranks `Alive`. Like the data merge, this is
//! a join-semilattice, so gossip converges in any order.
//!
//! ## Incarnations an attacker cannot exhaust
//!
//! Records are gossiped unsigned, so a member can forward a forged record of
//! another node. A forged `Dead` at incarnation `u64::MAX` would evict its
//! victim for good: no refutation outranks it. A view therefore refuses a
//! record whose incarnation is more than [`MAX_INCARNATION_JUMP`] above the
//! one it holds for that node, or above [`INCARNATION_CEILING`] for a node it
//! does not know. A node raises its own incarnation by one per restart or
//! refutation, so honest records never come near either bound; a forger
//! must push its victim up 65 536 at a time, and each push is refuted at
//! once. The order stays a semilattice on every record a view accepts; a
//! view that misses a whole jump of an attacked node keeps its older record
//! until a smaller step reaches it.
//!
//! ## Sharing (why the view is chunked)
//!
//! Each node holds the full view so a lookup is one hop. Copied naively into
//! each of 10 000 simulated nodes that is O(N²) memory and, worse, O(N) work
//! per node per membership change. The view is therefore 256 immutable,
//! reference-counted [`Chunk`]s split by the top 8 bits of the node id, and
//! gossip ships whole chunks. A node that receives a chunk which already
//! includes everything its own chunk knows simply *adopts* the sender's
//! `Arc`: in steady state all nodes point at the same 256 chunks, and a change
//! costs one chunk copy that then spreads by pointer. On the wire a chunk is a
//! list of members; in the simulator messages are Rust values, so the sharing
//! is real. The chunk partition is therefore part of protocol major 1.

use std::cmp::Ordering;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::id::{NodeId, Position};
use crate::version::ProtocolVersion;

/// The most a received record may raise a known node's incarnation.
pub const MAX_INCARNATION_JUMP: u64 = 1 << 16;

/// The highest incarnation accepted for a node the view does not know.
pub const INCARNATION_CEILING: u64 = 1 << 48;

/// Number of chunks and the id bits that select one.
pub const CHUNK_BITS: u32 = 8;
pub const CHUNKS: usize = 1 << CHUNK_BITS;

/// Where a member stands.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum MemberState {
    /// Receiving its hand-off; owns no keys yet.
    Joining = 1,
    /// Owns its range, routes, stores.
    Alive = 2,
    /// Handing its keys off; owns no keys any more.
    Leaving = 3,
    /// Gone after a graceful leave.
    Left = 4,
    /// Declared failed by a ring neighbour.
    Dead = 5,
}

impl MemberState {
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => MemberState::Joining,
            2 => MemberState::Alive,
            3 => MemberState::Leaving,
            4 => MemberState::Left,
            5 => MemberState::Dead,
            _ => return None,
        })
    }

    /// Owns keys and takes part in routing.
    pub fn is_routable(self) -> bool {
        self == MemberState::Alive
    }

    /// No longer running (as far as the view knows).
    pub fn is_gone(self) -> bool {
        matches!(self, MemberState::Left | MemberState::Dead)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Alive => "alive",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
            MemberState::Dead => "dead",
        }
    }
}

/// One member of the farm as the view knows it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MemberRecord {
    pub id: NodeId,
    pub incarnation: u64,
    pub state: MemberState,
    /// Wall-clock ms at which `state` was asserted.
    pub since_ms: u64,
    /// Where overlay links reach it (host:port).
    pub overlay_addr: String,
    /// Its advertised SIP address (host:port).
    pub sip_addr: String,
    pub name: String,
    pub version: ProtocolVersion,
}

impl MemberRecord {
    /// The gossip merge order (see the module docs).
    pub fn merge_cmp(&self, other: &MemberRecord) -> Ordering {
        (self.incarnation, self.state, self.since_ms)
            .cmp(&(other.incarnation, other.state, other.since_ms))
            .then_with(|| self.overlay_addr.cmp(&other.overlay_addr))
            .then_with(|| self.sip_addr.cmp(&other.sip_addr))
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.version.cmp(&other.version))
    }

    pub fn supersedes(&self, other: &MemberRecord) -> bool {
        self.merge_cmp(other) == Ordering::Greater
    }

    /// Whether a view holding `known` for this node (None: unknown) may take
    /// this record: its incarnation is within [`MAX_INCARNATION_JUMP`] of
    /// the known one, or below [`INCARNATION_CEILING`] for a new node.
    pub fn plausible_after(&self, known: Option<&MemberRecord>) -> bool {
        match known {
            Some(k) => self.incarnation <= k.incarnation.saturating_add(MAX_INCARNATION_JUMP),
            None => self.incarnation <= INCARNATION_CEILING,
        }
    }

    /// The incarnation that outranks `known` (checked: it never wraps; the
    /// bounds above keep it far from `u64::MAX`).
    pub fn next_incarnation(known: u64) -> u64 {
        known.saturating_add(1)
    }

    fn digest_into(&self, h: &mut Sha256) {
        h.update(self.id.to_bytes());
        h.update(self.incarnation.to_le_bytes());
        h.update([self.state as u8]);
        h.update(self.since_ms.to_le_bytes());
        for s in [&self.overlay_addr, &self.sip_addr, &self.name] {
            h.update((s.len() as u32).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(self.version.major.to_le_bytes());
        h.update(self.version.minor.to_le_bytes());
    }
}

/// Index of the chunk a node id falls in.
pub fn chunk_of(id: NodeId) -> usize {
    (id.as_u128() >> (128 - CHUNK_BITS)) as usize
}

/// Why a received chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk index {0} out of range")]
    Index(u32),
    #[error("member {0} does not belong in chunk {1}")]
    Misplaced(NodeId, usize),
    #[error("chunk members are not sorted and unique")]
    Unsorted,
}

#[derive(Debug)]
struct ChunkInner {
    index: u8,
    digest: u64,
    routable: u32,
    members: Box<[MemberRecord]>,
}

/// An immutable, shared slice of the view: the members whose ids start with
/// one 8-bit prefix, sorted by id. Cloning is a reference-count increment.
#[derive(Clone, Debug)]
pub struct Chunk(Arc<ChunkInner>);

impl Chunk {
    /// Validates and builds a chunk (members must be sorted by id, unique and
    /// carry the chunk's prefix).
    pub fn new(index: u32, members: Vec<MemberRecord>) -> Result<Chunk, ChunkError> {
        if index as usize >= CHUNKS {
            return Err(ChunkError::Index(index));
        }
        for m in &members {
            if chunk_of(m.id) != index as usize {
                return Err(ChunkError::Misplaced(m.id, index as usize));
            }
        }
        if members.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(ChunkError::Unsorted);
        }
        Ok(Chunk::build(index as u8, members))
    }

    fn build(index: u8, members: Vec<MemberRecord>) -> Chunk {
        let digest = if members.is_empty() {
            0
        } else {
            let mut h = Sha256::new();
            for m in &members {
                m.digest_into(&mut h);
            }
            let out = h.finalize();
            u64::from_le_bytes(out[..8].try_into().expect("sha256 is 32 bytes"))
        };
        let routable = members.iter().filter(|m| m.state.is_routable()).count() as u32;
        Chunk(Arc::new(ChunkInner {
            index,
            digest,
            routable,
            members: members.into_boxed_slice(),
        }))
    }

    fn empty(index: u8) -> Chunk {
        Chunk::build(index, Vec::new())
    }

    pub fn index(&self) -> usize {
        self.0.index as usize
    }

    /// Content digest; 0 for an empty chunk.
    pub fn digest(&self) -> u64 {
        self.0.digest
    }

    pub fn members(&self) -> &[MemberRecord] {
        &self.0.members
    }

    pub fn routable(&self) -> u32 {
        self.0.routable
    }

    pub fn ptr_eq(&self, other: &Chunk) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn find(&self, id: NodeId) -> Result<usize, usize> {
        self.0.members.binary_search_by(|m| m.id.cmp(&id))
    }
}

/// How merging a received chunk went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChunkMerge {
    /// Ours already included everything in it.
    Unchanged,
    /// Theirs included ours: we now share their chunk.
    Adopted,
    /// Neither included the other: we hold the union (a new chunk).
    Merged,
}

/// A node's full member view.
#[derive(Clone, Debug)]
pub struct MemberView {
    chunks: Vec<Chunk>,
    /// Bumped on every change, so cached ring computations know when to redo.
    generation: u64,
    /// Order-independent combination of the chunk digests, kept up to date in
    /// O(1) per chunk change: equal roots mean (all but certainly) equal views.
    root: u64,
    routable: usize,
    /// Received records refused by [`MemberRecord::plausible_after`].
    refused: u64,
}

impl Default for MemberView {
    fn default() -> Self {
        MemberView::new()
    }
}

fn mix(index: usize, digest: u64) -> u64 {
    if digest == 0 {
        return 0;
    }
    // splitmix64 finaliser over digest and index.
    let mut z = digest ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MemberView {
    pub fn new() -> Self {
        MemberView {
            chunks: (0..CHUNKS).map(|i| Chunk::empty(i as u8)).collect(),
            generation: 0,
            root: 0,
            routable: 0,
            refused: 0,
        }
    }

    /// A view holding the given records (the greatest version of each id).
    pub fn from_records(records: impl IntoIterator<Item = MemberRecord>) -> Self {
        let mut buckets: Vec<Vec<MemberRecord>> = vec![Vec::new(); CHUNKS];
        for r in records {
            buckets[chunk_of(r.id)].push(r);
        }
        let mut v = MemberView::new();
        for (i, mut b) in buckets.into_iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            b.sort_by(|x, y| x.id.cmp(&y.id).then_with(|| y.merge_cmp(x)));
            b.dedup_by(|later, earlier| later.id == earlier.id);
            v.set_chunk(Chunk::build(i as u8, b));
        }
        v
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    /// Members that own keys (state `Alive`).
    pub fn routable_len(&self) -> usize {
        self.routable
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.members().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(|c| c.members().is_empty())
    }

    pub fn chunk(&self, index: usize) -> &Chunk {
        &self.chunks[index]
    }

    pub fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter()
    }

    pub fn digests(&self) -> Vec<u64> {
        self.chunks.iter().map(Chunk::digest).collect()
    }

    pub fn get(&self, id: NodeId) -> Option<&MemberRecord> {
        let c = &self.chunks[chunk_of(id)];
        c.find(id).ok().map(|i| &c.members()[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &MemberRecord> {
        self.chunks.iter().flat_map(|c| c.members().iter())
    }

    fn set_chunk(&mut self, c: Chunk) {
        let i = c.index();
        let old = &self.chunks[i];
        self.root = self
            .root
            .wrapping_sub(mix(i, old.digest()))
            .wrapping_add(mix(i, c.digest()));
        self.routable = self.routable - old.routable() as usize + c.routable() as usize;
        self.chunks[i] = c;
        self.generation += 1;
    }

    /// Received member records refused so far (implausible incarnations).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Merges one record; true when the view changed.
    pub fn upsert(&mut self, rec: MemberRecord) -> bool {
        let c = &self.chunks[chunk_of(rec.id)];
        let found = c.find(rec.id);
        if !rec.plausible_after(found.ok().map(|i| &c.members()[i])) {
            self.refused += 1;
            return false;
        }
        let mut members = c.members().to_vec();
        match found {
            Ok(i) => {
                if !rec.supersedes(&members[i]) {
                    return false;
                }
                members[i] = rec;
            }
            Err(i) => members.insert(i, rec),
        }
        let index = c.index() as u8;
        self.set_chunk(Chunk::build(index, members));
        true
    }

    /// Removes a record outright (garbage collection of long-gone members).
    pub fn remove(&mut self, id: NodeId) -> bool {
        let c = &self.chunks[chunk_of(id)];
        let Ok(i) = c.find(id) else { return false };
        let mut members = c.members().to_vec();
        members.remove(i);
        let index = c.index() as u8;
        self.set_chunk(Chunk::build(index, members));
        true
    }

    /// Merges a received chunk (see [`ChunkMerge`]).
    pub fn merge_chunk(&mut self, theirs: &Chunk) -> ChunkMerge {
        let i = theirs.index();
        let ours = &self.chunks[i];
        if ours.ptr_eq(theirs) {
            return ChunkMerge::Unchanged;
        }
        if ours.digest() == theirs.digest() && ours.members() == theirs.members() {
            // Same content in another allocation: share theirs so copies made
            // independently on different nodes collapse back into one.
            self.chunks[i] = theirs.clone();
            return ChunkMerge::Unchanged;
        }
        let (a, b) = (ours.members(), theirs.members());
        let mut out = Vec::with_capacity(a.len().max(b.len()));
        let (mut ours_wins_somewhere, mut theirs_wins_somewhere) = (false, false);
        let mut refused = 0;
        let (mut x, mut y) = (0, 0);
        while x < a.len() || y < b.len() {
            let (p, q) = match (a.get(x), b.get(y)) {
                (Some(p), Some(q)) => match p.id.cmp(&q.id) {
                    Ordering::Less => (Some(p), None),
                    Ordering::Greater => (None, Some(q)),
                    Ordering::Equal => (Some(p), Some(q)),
                },
                (p, q) => (p, q),
            };
            x += usize::from(p.is_some());
            y += usize::from(q.is_some());
            // A record of theirs this view refuses counts as ours winning:
            // the result differs from their chunk.
            let q = q.filter(|q| {
                let ok = q.plausible_after(p);
                refused += u64::from(!ok);
                ok
            });
            let pick = match (p, q) {
                (Some(p), Some(q)) => match p.merge_cmp(q) {
                    Ordering::Greater => {
                        ours_wins_somewhere = true;
                        p
                    }
                    Ordering::Less => {
                        theirs_wins_somewhere = true;
                        q
                    }
                    Ordering::Equal => p,
                },
                (Some(p), None) => {
                    ours_wins_somewhere = true;
                    p
                }
                (None, Some(q)) => {
                    theirs_wins_somewhere = true;
                    q
                }
                (None, None) => {
                    ours_wins_somewhere = true;
                    continue;
                }
            };
            out.push(pick.clone());
        }
        self.refused += refused;
        match (ours_wins_somewhere, theirs_wins_somewhere) {
            (_, false) => ChunkMerge::Unchanged,
            (false, true) => {
                self.set_chunk(theirs.clone());
                ChunkMerge::Adopted
            }
            (true, true) => {
                self.set_chunk(Chunk::build(i as u8, out));
                ChunkMerge::Merged
            }
        }
    }

    /// Members in ring order starting at the first id `>= pos`, wrapping
    /// once around the ring.
    pub fn iter_from(&self, pos: Position) -> impl Iterator<Item = &MemberRecord> {
        let start_chunk = chunk_of(NodeId::from_u128(pos));
        let c = &self.chunks[start_chunk];
        let split = match c.find(NodeId::from_u128(pos)) {
            Ok(i) | Err(i) => i,
        };
        let head = c.members()[split..].iter();
        let middle = (1..CHUNKS)
            .map(move |d| &self.chunks[(start_chunk + d) % CHUNKS])
            .flat_map(|c| c.members().iter());
        let tail = c.members()[..split].iter();
        head.chain(middle).chain(tail)
    }

    /// Members in reverse ring order starting at the last id `< pos`,
    /// wrapping once around the ring.
    pub fn iter_before(&self, pos: Position) -> impl Iterator<Item = &MemberRecord> {
        let start_chunk = chunk_of(NodeId::from_u128(pos));
        let c = &self.chunks[start_chunk];
        let split = match c.find(NodeId::from_u128(pos)) {
            Ok(i) | Err(i) => i,
        };
        let head = c.members()[..split].iter().rev();
        let middle = (1..CHUNKS)
            .map(move |d| &self.chunks[(start_chunk + CHUNKS - d) % CHUNKS])
            .flat_map(|c| c.members().iter().rev());
        let tail = c.members()[split..].iter().rev();
        head.chain(middle).chain(tail)
    }

    /// A pseudo-random member picked by ring position `pos` (the first one at
    /// or after it matching `pred`), for gossip targets.
    pub fn sample(
        &self,
        pos: Position,
        pred: impl Fn(&MemberRecord) -> bool,
    ) -> Option<&MemberRecord> {
        self.iter_from(pos).find(|m| pred(m))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn member(id: u128, inc: u64, state: MemberState) -> MemberRecord {
        MemberRecord {
            id: NodeId::from_u128(id),
            incarnation: inc,
            state,
            since_ms: 0,
            overlay_addr: format!("10.0.0.{}:7000", id % 250),
            sip_addr: String::new(),
            name: String::new(),
            version: ProtocolVersion::CURRENT,
        }
    }

    fn id_in_chunk(chunk: u128, low: u128) -> u128 {
        (chunk << 120) | low
    }

    #[test]
    fn dead_outranks_alive_until_refuted() {
        let alive = member(1, 3, MemberState::Alive);
        let dead = member(1, 3, MemberState::Dead);
        let refuted = member(1, 4, MemberState::Alive);
        assert!(dead.supersedes(&alive));
        assert!(refuted.supersedes(&dead));
        let mut v = MemberView::new();
        assert!(v.upsert(alive.clone()));
        assert!(v.upsert(dead));
        assert!(!v.upsert(alive));
        assert!(v.upsert(refuted));
        assert_eq!(
            v.get(NodeId::from_u128(1)).unwrap().state,
            MemberState::Alive
        );
    }

    #[test]
    fn implausible_incarnations_are_refused_and_counted() {
        let (x, y) = (id_in_chunk(5, 1), id_in_chunk(5, 2));
        let mut v = MemberView::new();
        assert!(v.upsert(member(x, 3, MemberState::Alive)));
        // A forged death at u64::MAX, or any jump past the bound, is refused.
        assert!(!v.upsert(member(x, u64::MAX, MemberState::Dead)));
        let past = 3 + MAX_INCARNATION_JUMP + 1;
        assert!(!v.upsert(member(x, past, MemberState::Dead)));
        assert_eq!(v.get(NodeId::from_u128(x)).unwrap().incarnation, 3);
        // A node the view does not know: up to the ceiling.
        assert!(!v.upsert(member(y, INCARNATION_CEILING + 1, MemberState::Alive)));
        assert_eq!(v.refused(), 3);
        // The largest jump allowed is taken.
        assert!(v.upsert(member(x, 3 + MAX_INCARNATION_JUMP, MemberState::Dead)));
        assert!(v.upsert(member(y, INCARNATION_CEILING, MemberState::Alive)));
        assert_eq!(v.refused(), 3);
    }

    #[test]
    fn a_gossiped_chunk_loses_only_its_forged_records() {
        let (x, y, z) = (id_in_chunk(5, 1), id_in_chunk(5, 2), id_in_chunk(5, 3));
        let mut v = MemberView::new();
        v.upsert(member(x, 3, MemberState::Alive));
        v.upsert(member(y, 7, MemberState::Alive));
        let before = v.chunk(5).clone();
        // Only forgeries: nothing changes.
        let forged = Chunk::new(
            5,
            vec![
                member(x, u64::MAX, MemberState::Dead),
                member(z, u64::MAX, MemberState::Alive),
            ],
        )
        .unwrap();
        assert_eq!(v.merge_chunk(&forged), ChunkMerge::Unchanged);
        assert!(v.chunk(5).ptr_eq(&before));
        assert_eq!(v.refused(), 2);
        // A forgery beside an honest change: the change is taken.
        let mixed = Chunk::new(
            5,
            vec![
                member(x, u64::MAX, MemberState::Dead),
                member(y, 7, MemberState::Dead),
            ],
        )
        .unwrap();
        assert_eq!(v.merge_chunk(&mixed), ChunkMerge::Merged);
        assert_eq!(v.get(NodeId::from_u128(x)).unwrap().incarnation, 3);
        assert_eq!(
            v.get(NodeId::from_u128(y)).unwrap().state,
            MemberState::Dead
        );
        assert_eq!(v.refused(), 3);
        assert_eq!(MemberRecord::next_incarnation(u64::MAX), u64::MAX);
    }

    #[test]
    fn dominating_chunk_is_adopted_by_pointer() {
        let a = member(id_in_chunk(7, 1), 0, MemberState::Alive);
        let b = member(id_in_chunk(7, 2), 0, MemberState::Alive);
        let mut sender = MemberView::new();
        sender.upsert(a.clone());
        sender.upsert(b);
        let mut receiver = MemberView::new();
        receiver.upsert(a);
        assert_eq!(receiver.merge_chunk(sender.chunk(7)), ChunkMerge::Adopted);
        assert!(receiver.chunk(7).ptr_eq(sender.chunk(7)));
        assert_eq!(receiver.root(), sender.root());
        // Again: nothing to do.
        assert_eq!(receiver.merge_chunk(sender.chunk(7)), ChunkMerge::Unchanged);
    }

    #[test]
    fn concurrent_changes_merge_to_the_union() {
        let base = [
            member(id_in_chunk(3, 1), 0, MemberState::Alive),
            member(id_in_chunk(3, 2), 0, MemberState::Alive),
        ];
        let mut x = MemberView::from_records(base.clone());
        let mut y = MemberView::from_records(base);
        x.upsert(member(id_in_chunk(3, 1), 0, MemberState::Dead));
        y.upsert(member(id_in_chunk(3, 9), 0, MemberState::Joining));
        let mut x2 = x.clone();
        assert_eq!(x2.merge_chunk(y.chunk(3)), ChunkMerge::Merged);
        assert_eq!(y.merge_chunk(x.chunk(3)), ChunkMerge::Merged);
        assert_eq!(x2.chunk(3).members(), y.chunk(3).members());
        assert_eq!(x2.root(), y.root());
        assert_eq!(x2.routable_len(), 1);
        // Equal content, different allocation: the receiver shares.
        assert_eq!(x2.merge_chunk(y.chunk(3)), ChunkMerge::Unchanged);
        assert!(x2.chunk(3).ptr_eq(y.chunk(3)));
    }

    #[test]
    fn ring_iteration_wraps_once_in_order() {
        let ids = [
            5u128,
            id_in_chunk(3, 1),
            id_in_chunk(3, 8),
            id_in_chunk(200, 0),
            u128::MAX,
        ];
        let v = MemberView::from_records(ids.iter().map(|i| member(*i, 0, MemberState::Alive)));
        let from: Vec<u128> = v
            .iter_from(id_in_chunk(3, 2))
            .map(|m| m.id.as_u128())
            .collect();
        assert_eq!(
            from,
            vec![
                id_in_chunk(3, 8),
                id_in_chunk(200, 0),
                u128::MAX,
                5,
                id_in_chunk(3, 1)
            ]
        );
        let back: Vec<u128> = v
            .iter_before(id_in_chunk(3, 8))
            .map(|m| m.id.as_u128())
            .collect();
        assert_eq!(
            back,
            vec![
                id_in_chunk(3, 1),
                5,
                u128::MAX,
                id_in_chunk(200, 0),
                id_in_chunk(3, 8)
            ]
        );
        let at: Vec<u128> = v.iter_from(5).take(1).map(|m| m.id.as_u128()).collect();
        assert_eq!(at, vec![5], "iteration starts at an id equal to pos");
    }

    #[test]
    fn chunk_validation_refuses_misplaced_and_unsorted() {
        let a = member(id_in_chunk(4, 2), 0, MemberState::Alive);
        let b = member(id_in_chunk(4, 1), 0, MemberState::Alive);
        assert_eq!(
            Chunk::new(4, vec![a.clone(), b.clone()]).unwrap_err(),
            ChunkError::Unsorted
        );
        assert!(matches!(
            Chunk::new(5, vec![a.clone()]),
            Err(ChunkError::Misplaced(..))
        ));
        assert_eq!(Chunk::new(256, vec![]).unwrap_err(), ChunkError::Index(256));
        assert!(Chunk::new(4, vec![b, a]).is_ok());
    }
}
