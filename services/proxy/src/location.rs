//! The location service's operations, and the node-local store.
//!
//! The proxy asks for bindings with [`LocationOp`]s (actions its driver
//! carries out) and gets a [`Completion`] back. A farm of one keeps them
//! in a [`LocalStore`]; a farm keeps them on the ring, wherever the AOR's
//! replicas are (the driver's overlay store), and the proxy cannot tell.
//!
//! An implicit registration set keeps its bindings under one AOR (its
//! [`crate::auth::set_key`]); every other member holds an *alias* naming
//! that AOR, written after the bindings by the REGISTER that stores them.
//! A lookup of a member follows its alias (one hop, never a chain). When
//! an alias write fails the REGISTER is answered 503 although its bindings
//! are stored: the phone retries, which rewrites both; meanwhile the
//! members whose alias is missing are not reachable, the others are. An
//! alias lives as long as the set's longest binding did when it was
//! written, and one whose set has no binding left leads to none.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use ringmesh_sip::aor::Aor;

use crate::binding::{Binding, FORMAT_FULL, get_varint, put_varint, take};
use crate::discovery::ServiceRecord;
use crate::gateways::GatewayRecord;
use crate::mailbox::StoredMessage;
use crate::presence::{MAX_PUBLICATIONS, Publication, Rule};
use crate::registrar::{self, RegisterPlan, RegistrarError};
use crate::subscription::Subscription;

/// What a location operation asks for.
#[derive(Debug, Clone)]
pub enum LocationOp {
    /// Apply a REGISTER; completes with every current binding.
    Register {
        aor: Aor,
        plan: RegisterPlan,
        now_ms: u64,
        /// The other members of `aor`'s implicit registration set: each
        /// gets an alias naming `aor` when the set has bindings after the
        /// write.
        aliases: Vec<Aor>,
    },
    /// Read the live bindings of an AOR (through its alias, if it has one).
    Lookup { aor: Aor, now_ms: u64 },
    /// Read what a watched AOR holds: its own bindings and its
    /// subscriptions.
    Watch { aor: Aor, now_ms: u64 },
    /// Store a subscription of `aor`; with `remove`, end it.
    Subscription {
        aor: Aor,
        sub: Box<Subscription>,
        remove: bool,
    },
    /// Keep a message for `aor`, unless it already keeps `max` live ones
    /// ([`LocationError::Full`]).
    StoreMessage {
        aor: Aor,
        message: Box<StoredMessage>,
        max: usize,
        now_ms: u64,
    },
    /// Read the messages kept for `aor`, oldest first.
    Mailbox { aor: Aor, now_ms: u64 },
    /// Publish a device's presence under `aor` (RFC 3903): `if_match` names
    /// the publication it replaces (which must be live:
    /// [`LocationError::Precondition`] otherwise), `publication` the new
    /// one (`None`: the old one is removed).
    Publish {
        aor: Aor,
        if_match: Option<[u8; 8]>,
        publication: Option<Box<Publication>>,
        now_ms: u64,
    },
    /// Write a presentity's authorisation rules, each until its
    /// `expires_at_ms` (a pending decision removes the rule).
    Rules { aor: Aor, rules: Vec<Rule> },
    /// Read the live instances of service `name`.
    Services { name: String, now_ms: u64 },
    /// Read the farm's PSTN gateways.
    Gateways { now_ms: u64 },
    /// Write a gateway's entry again (its expiry renewed).
    KeepGateway { record: Box<GatewayRecord> },
    /// Drop a kept message (delivered, or refused by the device); its
    /// tombstone lives until `expires_at_ms`, the message's own expiry.
    RemoveMessage {
        aor: Aor,
        id: [u8; 16],
        expires_at_ms: u64,
    },
}

/// What a location operation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// The AOR's live bindings, best first; after a `Register`, `watched`
    /// says whether the AOR has subscriptions to tell of the change, and
    /// `mail` whether messages are kept for it.
    Bindings {
        bindings: Vec<Binding>,
        watched: bool,
        mail: bool,
    },
    /// A `Watch`: the AOR's live bindings, its subscriptions, and its
    /// presence (publications and authorisation rules).
    Watched {
        bindings: Vec<Binding>,
        subscriptions: Vec<Subscription>,
        publications: Vec<Publication>,
        rules: Vec<Rule>,
    },
    /// A subscription or message was stored (or removed).
    Stored,
    /// The messages kept for an AOR, oldest first.
    Mailbox(Vec<StoredMessage>),
    /// The live instances of a service.
    Services(Vec<ServiceRecord>),
    /// The farm's PSTN gateways.
    Gateways(Vec<GatewayRecord>),
}

impl Located {
    /// The bindings found (none for a stored subscription).
    pub fn into_bindings(self) -> Vec<Binding> {
        match self {
            Located::Bindings { bindings, .. } | Located::Watched { bindings, .. } => bindings,
            Located::Stored | Located::Mailbox(_) | Located::Services(_) | Located::Gateways(_) => {
                Vec::new()
            }
        }
    }

    /// Bindings that tell no watcher.
    pub fn bindings(bindings: Vec<Binding>) -> Located {
        Located::Bindings {
            bindings,
            watched: false,
            mail: false,
        }
    }
}

/// The overlay entry id of an AOR's alias (bindings' ids start with `i`
/// or `c`).
pub const ALIAS_ENTRY_ID: &[u8] = b"a";
/// The overlay entry id of an AOR's cleared mark, written by a
/// `Contact: *` removal: every binding whose entry is not later (by HLC)
/// than the mark is gone, those the removing node could not see included
/// (a copy on the far side of a partition, merged back later).
pub const CLEARED_ENTRY_ID: &[u8] = b"x";
/// The value of a cleared mark (what it means is in its HLC).
pub const CLEARED_VALUE: &[u8] = b"*";
/// The first byte of an alias value: no binding format starts with it.
const ALIAS_FORMAT: u8 = 1;

/// The value of an alias entry naming `target`.
pub fn encode_alias(target: &Aor) -> Bytes {
    let mut v = Vec::with_capacity(1 + target.as_bytes().len());
    v.push(ALIAS_FORMAT);
    v.extend_from_slice(target.as_bytes());
    Bytes::from(v)
}

/// The AOR an alias value names; `None` for anything else.
pub fn decode_alias(value: &[u8]) -> Option<Aor> {
    match value.split_first() {
        Some((&ALIAS_FORMAT, text)) => Aor::parse(text).ok(),
        _ => None,
    }
}

/// How long a subscription's record outlives its expiry: long enough for
/// the notifier to send the NOTIFY that ends it.
pub const WATCH_GRACE_MS: u64 = 60_000;

/// When an alias written for `bindings` expires: with the longest of them.
pub fn alias_expiry(bindings: &[Binding]) -> Option<u64> {
    bindings.iter().map(|b| b.expires_at_ms).max()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error(transparent)]
    Registrar(#[from] RegistrarError),
    /// The write could not reach a quorum of replicas (answer 503).
    #[error("location store unavailable: {0}")]
    Unavailable(String),
    /// The AOR already keeps as many messages (or publications) as it
    /// may.
    #[error("the mailbox is full")]
    Full,
    /// A publication to replace is not there (RFC 3903: 412).
    #[error("no such entity tag")]
    Precondition,
}

/// A finished operation: the token it was submitted with and its outcome.
pub type Completion = (u64, Result<Located, LocationError>);

/// Counts of what a node holds: AORs, and bindings for which it is the
/// primary replica or a secondary one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub aors: usize,
    pub primary: usize,
    pub replica: usize,
}

/// Each [`LocalStore::expire`] call sweeps this share of the
/// node-local table, from where the last one stopped, so no sweep stalls
/// the SIP core for long.
const SWEEP_PARTS: usize = 16;

/// What the node-local table keeps per AOR (about 200 bytes per binding at
/// 1,000,000, against a target of ≤ 300): one exact-size allocation holding every binding
/// of the AOR in the standalone encoding, each prefixed with its length,
/// and the earliest expiry (seconds) so a sweep reads no blob it need not.
#[derive(Debug)]
struct Stored {
    blob: Box<[u8]>,
    first_expiry_s: u32,
}

impl Stored {
    fn encode(list: &[Binding]) -> Option<Stored> {
        if list.is_empty() {
            return None;
        }
        let mut blob = Vec::with_capacity(list.len() * 160);
        for b in list {
            let enc = b.encode_vec(FORMAT_FULL, None);
            put_varint(&mut blob, enc.len() as u64);
            blob.extend_from_slice(&enc);
        }
        let first = list
            .iter()
            .map(|b| b.expires_at_ms / 1000)
            .min()
            .unwrap_or(0);
        Some(Stored {
            blob: blob.into_boxed_slice(),
            first_expiry_s: u32::try_from(first).unwrap_or(u32::MAX),
        })
    }

    /// Every binding held, whichever AOR (a record may hold two AORs whose
    /// 64-bit keyed hashes collide).
    fn decode(&self) -> Vec<Binding> {
        let mut out = Vec::with_capacity(1);
        let mut r: &[u8] = &self.blob;
        while !r.is_empty() {
            let Some(enc) = get_varint(&mut r).and_then(|n| take(&mut r, n as usize)) else {
                break;
            };
            if let Some(b) = Binding::decode(enc) {
                out.push(b);
            }
        }
        out
    }
}

/// Node-local bindings: the whole location service of a one-node farm.
///
/// AORs are found by a 64-bit keyed hash (SipHash with a random key: no
/// peer can aim for collisions); each stored binding carries its AOR, so a
/// collision only puts two AORs in one record, told apart on every read.
/// The table is a B-tree: it grows node by node, so a million bindings
/// never cost one long rehash pause (a hash table doubles all at once), and
/// its key order lets the expiry sweep resume where it stopped.
#[derive(Debug)]
pub struct LocalStore {
    records: BTreeMap<u64, Stored>,
    /// Aliases of implicit-set members: the AOR named, and until when.
    aliases: HashMap<Aor, (Aor, u64)>,
    /// Subscriptions, by the AOR they watch.
    subscriptions: HashMap<Aor, Vec<Subscription>>,
    /// Messages kept, by AOR, in id order.
    mail: HashMap<Aor, BTreeMap<[u8; 16], StoredMessage>>,
    /// Service instances, by service name ([`LocalStore::advertise`]).
    services: HashMap<String, Vec<ServiceRecord>>,
    /// PSTN gateways, by name.
    gateways: BTreeMap<String, GatewayRecord>,
    /// Publications and authorisation rules, by presentity.
    publications: HashMap<Aor, Vec<Publication>>,
    rules: HashMap<Aor, Vec<Rule>>,
    hasher: std::hash::RandomState,
    aors: usize,
    bindings: usize,
    /// Where the next expiry sweep starts.
    sweep_from: u64,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            records: BTreeMap::new(),
            aliases: HashMap::new(),
            subscriptions: HashMap::new(),
            mail: HashMap::new(),
            services: HashMap::new(),
            gateways: BTreeMap::new(),
            publications: HashMap::new(),
            rules: HashMap::new(),
            hasher: std::hash::RandomState::new(),
            aors: 0,
            bindings: 0,
            sweep_from: 0,
        }
    }
}

impl LocalStore {
    pub fn new() -> LocalStore {
        LocalStore::default()
    }

    /// Sets (or, with `None`, removes) what `presentity` decided about
    /// `rule.watcher`.
    pub fn set_rule(&mut self, presentity: Aor, rule: Rule, remove: bool) {
        let list = self.rules.entry(presentity).or_default();
        list.retain(|r| r.watcher != rule.watcher);
        if !remove {
            list.push(rule);
        }
    }

    /// Adds (or replaces, by URI) an instance of a service.
    pub fn advertise(&mut self, record: ServiceRecord) {
        let list = self.services.entry(record.name.clone()).or_default();
        list.retain(|r| r.uri != record.uri);
        list.push(record);
    }

    fn slot(&self, aor: &Aor) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(aor.as_bytes())
    }

    fn live(list: &[Binding], now_ms: u64) -> Vec<Binding> {
        let mut v: Vec<Binding> = list
            .iter()
            .filter(|b| b.expires_at_ms > now_ms)
            .cloned()
            .collect();
        registrar::sort_by_preference(&mut v);
        v
    }

    fn register(
        &mut self,
        aor: &Aor,
        plan: &RegisterPlan,
        now_ms: u64,
    ) -> Result<Vec<Binding>, LocationError> {
        let h = self.slot(aor);
        let (mut mine, others): (Vec<Binding>, Vec<Binding>) = self
            .records
            .get(&h)
            .map(Stored::decode)
            .unwrap_or_default()
            .into_iter()
            .partition(|b| b.aor[..] == *aor.as_bytes());
        let before = mine.len();
        registrar::apply(&mut mine, plan, now_ms)?;
        let out = Self::live(&mine, now_ms);
        self.bindings = self.bindings + mine.len() - before;
        match (before, mine.len()) {
            (0, n) if n > 0 => self.aors += 1,
            (n, 0) if n > 0 => self.aors -= 1,
            _ => {}
        }
        let mut all = others;
        all.append(&mut mine);
        match Stored::encode(&all) {
            Some(stored) => {
                self.records.insert(h, stored);
            }
            None => {
                self.records.remove(&h);
            }
        }
        Ok(out)
    }

    /// The bindings of `aor` and of the AOR its alias names.
    fn lookup(&self, aor: &Aor, now_ms: u64) -> Vec<Binding> {
        let mut list = self.lookup_own(aor, now_ms);
        if let Some((target, until)) = self.aliases.get(aor)
            && *until > now_ms
            && target != aor
        {
            list.extend(self.lookup_own(target, now_ms));
            registrar::sort_by_preference(&mut list);
        }
        list
    }

    fn lookup_own(&self, aor: &Aor, now_ms: u64) -> Vec<Binding> {
        let h = self.slot(aor);
        let Some(stored) = self.records.get(&h) else {
            return Vec::new();
        };
        let mut list = stored.decode();
        list.retain(|b| b.aor[..] == *aor.as_bytes() && b.expires_at_ms > now_ms);
        registrar::sort_by_preference(&mut list);
        list
    }
}

impl LocalStore {
    /// Carries out one operation.
    pub fn execute(&mut self, op: LocationOp) -> Result<Located, LocationError> {
        match op {
            LocationOp::Register {
                aor,
                plan,
                now_ms,
                aliases,
            } => {
                let live = self.register(&aor, &plan, now_ms)?;
                if let Some(until) = alias_expiry(&live) {
                    for alias in aliases {
                        self.aliases.insert(alias, (aor.clone(), until));
                    }
                }
                Ok(Located::Bindings {
                    bindings: live,
                    watched: self.subscriptions.contains_key(&aor),
                    mail: self.mail.contains_key(&aor),
                })
            }
            LocationOp::Lookup { aor, now_ms } => Ok(Located::bindings(self.lookup(&aor, now_ms))),
            LocationOp::Watch { aor, now_ms } => Ok(Located::Watched {
                publications: self
                    .publications
                    .get(&aor)
                    .map(|l| {
                        l.iter()
                            .filter(|p| p.expires_at_ms > now_ms)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
                rules: self.rules.get(&aor).cloned().unwrap_or_default(),
                bindings: self.lookup_own(&aor, now_ms),
                subscriptions: self
                    .subscriptions
                    .get(&aor)
                    .map(|l| {
                        l.iter()
                            .filter(|s| s.expires_at_ms + WATCH_GRACE_MS > now_ms)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            LocationOp::Subscription { aor, sub, remove } => {
                let list = self.subscriptions.entry(aor.clone()).or_default();
                list.retain(|s| s.id != sub.id);
                if !remove {
                    list.push(*sub);
                }
                if list.is_empty() {
                    self.subscriptions.remove(&aor);
                }
                Ok(Located::Stored)
            }
            LocationOp::StoreMessage {
                aor,
                message,
                max,
                now_ms,
            } => {
                let kept = self.mail.entry(aor).or_default();
                kept.retain(|_, m| m.expires_at_ms > now_ms);
                if kept.len() >= max {
                    return Err(LocationError::Full);
                }
                kept.insert(message.id, *message);
                Ok(Located::Stored)
            }
            LocationOp::Mailbox { aor, now_ms } => Ok(Located::Mailbox(
                self.mail
                    .get(&aor)
                    .map(|kept| {
                        kept.values()
                            .filter(|m| m.expires_at_ms > now_ms)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            )),
            LocationOp::Publish {
                aor,
                if_match,
                publication,
                now_ms,
            } => {
                let list = self.publications.entry(aor).or_default();
                list.retain(|p| p.expires_at_ms > now_ms);
                if let Some(tag) = if_match {
                    let before = list.len();
                    list.retain(|p| p.etag != tag);
                    if list.len() == before {
                        return Err(LocationError::Precondition);
                    }
                }
                if let Some(p) = publication {
                    if list.len() >= MAX_PUBLICATIONS {
                        return Err(LocationError::Full);
                    }
                    list.push(*p);
                }
                Ok(Located::Stored)
            }
            LocationOp::Rules { aor, rules } => {
                for rule in rules {
                    let remove = rule.decision == crate::presence::Decision::Pending;
                    self.set_rule(aor.clone(), rule, remove);
                }
                Ok(Located::Stored)
            }
            LocationOp::Services { name, now_ms } => Ok(Located::Services(
                self.services
                    .get(&name)
                    .map(|l| {
                        l.iter()
                            .filter(|r| r.expires_at_ms > now_ms)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            )),
            LocationOp::Gateways { now_ms } => Ok(Located::Gateways(
                self.gateways
                    .values()
                    .filter(|g| g.expires_at_ms > now_ms)
                    .cloned()
                    .collect(),
            )),
            LocationOp::KeepGateway { record } => {
                self.gateways.insert(record.name.clone(), *record);
                Ok(Located::Stored)
            }
            LocationOp::RemoveMessage { aor, id, .. } => {
                if let Some(kept) = self.mail.get_mut(&aor) {
                    kept.remove(&id);
                    if kept.is_empty() {
                        self.mail.remove(&aor);
                    }
                }
                Ok(Located::Stored)
            }
        }
    }

    /// Drops the expired bindings of the next share of the table (a
    /// range of keys; the whole table every `SWEEP_PARTS` calls).
    pub fn expire(&mut self, now_ms: u64) {
        self.aliases.retain(|_, (_, until)| *until > now_ms);
        self.subscriptions.retain(|_, list| {
            list.retain(|s| s.expires_at_ms + WATCH_GRACE_MS > now_ms);
            !list.is_empty()
        });
        self.mail.retain(|_, kept| {
            kept.retain(|_, m| m.expires_at_ms > now_ms);
            !kept.is_empty()
        });
        let now_s = now_ms / 1000;
        let (mut bindings, mut aors) = (0usize, 0usize);
        let share = u64::MAX / SWEEP_PARTS as u64;
        let from = self.sweep_from;
        let to = from.saturating_add(share);
        self.sweep_from = if to == u64::MAX { 0 } else { to + 1 };
        let mut gone = Vec::new();
        for (k, stored) in self.records.range_mut(from..=to) {
            if u64::from(stored.first_expiry_s) > now_s {
                continue;
            }
            let list = stored.decode();
            let distinct = |l: &[Binding]| {
                let mut a: Vec<&[u8]> = l.iter().map(|b| &b.aor[..]).collect();
                a.sort_unstable();
                a.dedup();
                a.len()
            };
            let live: Vec<Binding> = list
                .iter()
                .filter(|b| b.expires_at_ms > now_ms)
                .cloned()
                .collect();
            bindings += list.len() - live.len();
            aors += distinct(&list) - distinct(&live);
            match Stored::encode(&live) {
                Some(s) => *stored = s,
                None => gone.push(*k),
            }
        }
        for k in gone {
            self.records.remove(&k);
        }
        self.bindings -= bindings;
        self.aors -= aors;
    }

    /// What the store holds, for metrics.
    pub fn counts(&self) -> Held {
        Held {
            aors: self.aors,
            primary: self.bindings,
            replica: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::sample;
    use bytes::Bytes;

    fn plan_for(b: &Binding, expires: u32) -> RegisterPlan {
        RegisterPlan {
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            wildcard: false,
            contacts: vec![registrar::ContactUpdate {
                binding: b.clone(),
                expires,
            }],
            hlc: b.hlc,
            max_contacts: 10,
        }
    }

    fn run(store: &mut LocalStore, op: LocationOp) -> Result<Vec<Binding>, LocationError> {
        store.execute(op).map(Located::into_bindings)
    }

    #[test]
    fn local_store_registers_looks_up_and_expires() {
        let mut store = LocalStore::new();
        let now = 1_800_000_000_000;
        for i in 0..1000 {
            let b = sample(i, now + 60_000 + u64::from(i) * 1000);
            let aor = Aor::parse(&b.aor).unwrap();
            let out = run(
                &mut store,
                LocationOp::Register {
                    aor,
                    plan: plan_for(&b, 60),
                    now_ms: now,
                    aliases: Vec::new(),
                },
            )
            .unwrap();
            assert_eq!(out, vec![b]);
        }
        assert_eq!(store.counts().primary, 1000);
        assert_eq!(store.counts().aors, 1000);
        let aor = Aor::parse(b"sip:user7@ringmesh.test").unwrap();
        let found = run(&mut store, LocationOp::Lookup { aor, now_ms: now }).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            &found[0].contact[..],
            b"sip:user7@127.0.0.1:5070;transport=udp"
        );
        // A whole sweep after half of them expired.
        for _ in 0..SWEEP_PARTS {
            store.expire(now + 60_000 + 500 * 1000);
        }
        assert_eq!(store.counts().primary, 499);
        assert_eq!(store.counts().aors, 499);
        let aor = Aor::parse(b"sip:user7@ringmesh.test").unwrap();
        assert!(
            run(
                &mut store,
                LocationOp::Lookup {
                    aor,
                    now_ms: now + 200_000
                }
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn colliding_aors_share_a_record_but_not_their_bindings() {
        // Force a collision: two AORs stored under the same hash.
        let mut store = LocalStore::new();
        let now = 1_800_000_000_000;
        let a = sample(1, now + 60_000);
        let b = sample(2, now + 60_000);
        let h = store.slot(&Aor::parse(&a.aor).unwrap());
        store
            .records
            .insert(h, Stored::encode(&[a.clone(), b.clone()]).unwrap());
        let found = store.lookup(&Aor::parse(&a.aor).unwrap(), now);
        assert_eq!(found, vec![a.clone()]);
        // Registering for `a` keeps `b` in the record.
        let a2 = Binding {
            contact: Bytes::from_static(b"sip:user1@127.0.0.1:6000"),
            ..a.clone()
        };
        store
            .register(&Aor::parse(&a.aor).unwrap(), &plan_for(&a2, 60), now)
            .unwrap();
        let all = store.records.get(&h).unwrap().decode();
        assert_eq!(all.len(), 3);
        assert!(all.contains(&b));
    }

    /// The counts follow a refresh (no change), a second contact, a
    /// removal and the AOR's last removal; a binding expiring at the lookup's
    /// instant is not returned.
    #[test]
    fn counts_follow_every_change_and_expiry_is_exclusive() {
        let mut store = LocalStore::new();
        let now = 1_800_000_000_000;
        let a = sample(1, now + 60_000);
        let aor = Aor::parse(&a.aor).unwrap();
        // Registers `b` (with `cseq`) at `at`: the bindings the answer lists.
        let mut register = |b: &Binding, cseq: u32, expires: u32, at: u64| {
            let b = Binding { cseq, ..b.clone() };
            let live = store.register(&aor, &plan_for(&b, expires), at).unwrap();
            let held = store.counts();
            (live.len(), held.aors, held.primary)
        };
        let second = Binding {
            contact: Bytes::from_static(b"sip:user1@127.0.0.1:6000"),
            ..a.clone()
        };
        assert_eq!(register(&a, 1, 0, now), (0, 0, 0), "removing nothing");
        assert_eq!(register(&a, 2, 60, now), (1, 1, 1));
        assert_eq!(register(&a, 3, 60, now), (1, 1, 1), "a refresh");
        assert_eq!(register(&second, 4, 60, now), (2, 1, 2));
        assert_eq!(register(&a, 5, 0, now), (1, 1, 1));
        assert_eq!(register(&second, 6, 0, now), (0, 0, 0));
        // At its expiry instant a binding is not live, nor listed.
        assert_eq!(register(&a, 7, 60, now + 60_000).0, 0);
        register(&a, 8, 60, now);
        // A sweep that expires one of an AOR's two bindings.
        let longer = Binding {
            expires_at_ms: now + 120_000,
            ..second
        };
        assert_eq!(register(&longer, 9, 120, now), (2, 1, 2));
        assert_eq!(store.lookup(&aor, now + 59_999).len(), 2);
        assert_eq!(store.lookup(&aor, now + 60_000).len(), 1);
        for _ in 0..SWEEP_PARTS {
            store.expire(now + 60_000);
        }
        assert_eq!((store.counts().aors, store.counts().primary), (1, 1));
    }
}
