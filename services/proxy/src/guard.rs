//! Brute-force protection: failed digest responses are counted farm-wide,
//! and a source that fails too often is refused, then ignored, for a while.
//!
//! A **failure** is a wrong answer to a challenge: a bad response, or the
//! name of no subscriber (the two look alike to the phone). A first
//! request without credentials, a stale nonce, a nonce from another
//! supernode and a replayed one are not failures: a real phone produces
//! them all.
//!
//! Failures are counted per (source, identity) — the digest username the
//! guesser tries — and per source; IPv6 sources by their /64, which one
//! customer holds. Every supernode reports the failures it sees to the
//! **owner** of the source: the live member whose Node-ID follows the
//! source's hash on the ring, so a guesser spreading its attempts over
//! every supernode is counted in one place. Past `pair_failures` within
//! `window`, the owner bans the pair; past `source_failures`, the source;
//! and it tells every member. A banned request gets 403 the first
//! [`ANSWERS_BEFORE_SILENCE`] times, then no answer at all until the ban
//! ends (`ban`). Bans are keyed by the source, so the real user, from
//! another address, is never locked out; a NAT shared with a guesser is
//! (for `ban`, or until an operator lifts it).
//!
//! Supernodes exchange [`GuardMsg`]s as SIP MESSAGE requests over their
//! (mutually authenticated) overlay links, with the content type
//! [`CONTENT_TYPE`], the way Kamailio's DMQ replicates state: an older
//! supernode answers them 403 and nothing breaks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// The content type of a guard message between supernodes.
pub const CONTENT_TYPE: &str = "application/vnd.ringmesh.guard";

/// How many 403s a ban answers before it goes silent.
pub const ANSWERS_BEFORE_SILENCE: u32 = 3;

/// How many sources and pairs one node counts at most. Past this, counts
/// older than the window go, then sources with a single failure (the bulk
/// of a flood; a guesser on its way to a ban has more), then everything:
/// memory stays bounded whatever a flood of sources does, and each such
/// sweep frees enough that it stays rare.
const MAX_COUNTED: usize = 100_000;

/// The thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// Failures of one (source, identity) before the pair is banned; 0:
    /// no pair bans.
    pub pair_failures: u32,
    /// Failures of one source, whatever the identity, before it is banned;
    /// 0: no source bans. Both 0 turn the guard off.
    pub source_failures: u32,
    /// How long a failure counts.
    pub window: Duration,
    /// How long a ban lasts.
    pub ban: Duration,
}

impl Default for GuardConfig {
    fn default() -> GuardConfig {
        GuardConfig {
            pair_failures: 5,
            source_failures: 20,
            window: Duration::from_secs(600),
            ban: Duration::from_secs(900),
        }
    }
}

/// A source as the guard keys it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            v4 => Source(v4),
        }
    }

    /// Where the source sits on the ring: its owner counts it. A stable
    /// hash, so every supernode, whatever its version, agrees.
    pub fn ring_key(&self) -> u128 {
        let mut h = Sha256::new();
        h.update(b"ringmesh guard source\0");
        match self.0 {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        let d = h.finalize();
        u128::from_be_bytes(d[..16].try_into().expect("16 bytes"))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Source, String> {
        let ip = s.strip_suffix("/64").unwrap_or(s);
        ip.parse::<IpAddr>()
            .map(Source::of)
            .map_err(|_| format!("'{s}' is not an IP address"))
    }
}

/// What supernodes tell each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardMsg {
    /// To the owner of `source`: one failure for `identity` from it.
    Failure { source: Source, identity: String },
    /// To everyone: refuse `source` (for `identity` only, or for every
    /// identity) until `until_ms` (wall clock).
    Ban {
        source: Source,
        identity: Option<String>,
        until_ms: u64,
    },
    /// To everyone: forget bans and counts of `source`.
    Lift { source: Source },
}

/// Identities travel percent-encoded, so any digest username fits a line.
fn encode_identity(id: &str, out: &mut String) {
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~+@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn decode_identity(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl GuardMsg {
    /// One line of text: `failure SOURCE IDENTITY`, `ban SOURCE IDENTITY|*
    /// UNTIL_MS`, `lift SOURCE`.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(64);
        match self {
            GuardMsg::Failure { source, identity } => {
                let _ = write!(s, "failure {source} ");
                encode_identity(identity, &mut s);
            }
            GuardMsg::Ban {
                source,
                identity,
                until_ms,
            } => {
                let _ = write!(s, "ban {source} ");
                match identity {
                    Some(id) => encode_identity(id, &mut s),
                    None => s.push('*'),
                }
                let _ = write!(s, " {until_ms}");
            }
            GuardMsg::Lift { source } => {
                let _ = write!(s, "lift {source}");
            }
        }
        s
    }

    pub fn decode(text: &[u8]) -> Option<GuardMsg> {
        let text = std::str::from_utf8(text).ok()?.trim();
        let words: Vec<&str> = text.split(' ').collect();
        match words.as_slice() {
            ["failure", src, id] => Some(GuardMsg::Failure {
                source: src.parse().ok()?,
                identity: decode_identity(id)?,
            }),
            ["ban", src, id, until] => Some(GuardMsg::Ban {
                source: src.parse().ok()?,
                identity: match *id {
                    "*" => None,
                    id => Some(decode_identity(id)?),
                },
                until_ms: until.parse().ok()?,
            }),
            ["lift", src] => Some(GuardMsg::Lift {
                source: src.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub source: Source,
    /// `None`: every identity from the source.
    pub identity: Option<String>,
    pub until_ms: u64,
    /// 403s sent so far.
    pub answered: u32,
}

/// What to do with a request from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Allow,
    /// Answer 403.
    Refuse,
    /// Answer nothing.
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    since_ms: u64,
}

/// The guard of one supernode: the counts of the sources it owns and every
/// ban in force in the farm.
#[derive(Debug, Default)]
pub struct Guard {
    cfg: GuardConfig,
    pairs: HashMap<(Source, String), Count>,
    sources: HashMap<Source, Count>,
    bans: HashMap<(Source, Option<String>), Ban>,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            ..Guard::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.pair_failures > 0 || self.cfg.source_failures > 0
    }

    /// Whether any ban is in force (the common case, none, costs nothing).
    pub fn has_bans(&self) -> bool {
        !self.bans.is_empty()
    }

    /// Whether any pair ban is in force (only then does a request's digest
    /// username need reading).
    pub fn has_pair_bans(&self) -> bool {
        self.bans.keys().any(|(_, id)| id.is_some())
    }

    /// What to do with a request from `source` with credentials for
    /// `identity` (when it carries any).
    pub fn check(&mut self, source: Source, identity: Option<&str>, now_ms: u64) -> Check {
        let whole = (source, None);
        let key = match self.bans.get(&whole) {
            Some(_) => whole,
            None => match identity {
                Some(id) => (source, Some(id.to_string())),
                None => return Check::Allow,
            },
        };
        let Some(ban) = self.bans.get_mut(&key) else {
            return Check::Allow;
        };
        if ban.until_ms <= now_ms {
            self.bans.remove(&key);
            return Check::Allow;
        }
        if ban.answered < ANSWERS_BEFORE_SILENCE {
            ban.answered += 1;
            Check::Refuse
        } else {
            Check::Drop
        }
    }

    /// Counts a failure at the owner of `source`; returns the bans it
    /// decides, to apply and to tell every member.
    pub fn count_failure(&mut self, source: Source, identity: &str, now_ms: u64) -> Vec<GuardMsg> {
        if !self.enabled() {
            return Vec::new();
        }
        let window = self.cfg.window.as_millis() as u64;
        let until_ms = now_ms + self.cfg.ban.as_millis() as u64;
        let bump = |c: &mut Count| {
            if now_ms.saturating_sub(c.since_ms) > window {
                *c = Count {
                    n: 0,
                    since_ms: now_ms,
                };
            }
            c.n += 1;
            c.n
        };
        if self.pairs.len() >= MAX_COUNTED || self.sources.len() >= MAX_COUNTED {
            self.make_room(now_ms.saturating_sub(window));
        }
        let fresh = Count {
            n: 0,
            since_ms: now_ms,
        };
        let pair = bump(
            self.pairs
                .entry((source, identity.to_string()))
                .or_insert(fresh),
        );
        let total = bump(self.sources.entry(source).or_insert(fresh));
        // Past a threshold, a ban unless one is in force (once a ban ends, a
        // guesser that goes on is banned again at its next failure).
        let in_force = |g: &Guard, id: Option<String>| {
            g.bans
                .get(&(source, id))
                .is_some_and(|b| b.until_ms > now_ms)
        };
        let mut out = Vec::new();
        if self.cfg.source_failures > 0
            && total >= self.cfg.source_failures
            && !in_force(self, None)
        {
            out.push(GuardMsg::Ban {
                source,
                identity: None,
                until_ms,
            });
        } else if self.cfg.pair_failures > 0
            && pair >= self.cfg.pair_failures
            && !in_force(self, Some(identity.to_string()))
        {
            out.push(GuardMsg::Ban {
                source,
                identity: Some(identity.to_string()),
                until_ms,
            });
        }
        out
    }

    /// Applies a ban or a lift (from this node or another).
    pub fn apply(&mut self, msg: &GuardMsg, now_ms: u64) {
        match msg {
            GuardMsg::Ban {
                source,
                identity,
                until_ms,
            } if *until_ms > now_ms => {
                let ban = self.bans.entry((*source, identity.clone())).or_insert(Ban {
                    source: *source,
                    identity: identity.clone(),
                    until_ms: *until_ms,
                    answered: 0,
                });
                ban.until_ms = ban.until_ms.max(*until_ms);
            }
            GuardMsg::Lift { source } => {
                self.bans.retain(|(s, _), _| s != source);
                self.pairs.retain(|(s, _), _| s != source);
                self.sources.remove(source);
            }
            _ => {}
        }
    }

    /// Drops ended bans and old counts.
    pub fn expire(&mut self, now_ms: u64) {
        self.bans.retain(|_, b| b.until_ms > now_ms);
        self.forget_before(now_ms.saturating_sub(self.cfg.window.as_millis() as u64));
    }

    fn forget_before(&mut self, ms: u64) {
        self.pairs.retain(|_, c| c.since_ms >= ms);
        self.sources.retain(|_, c| c.since_ms >= ms);
    }

    fn make_room(&mut self, window_start_ms: u64) {
        let full =
            |g: &Guard| g.pairs.len() >= MAX_COUNTED / 2 || g.sources.len() >= MAX_COUNTED / 2;
        self.forget_before(window_start_ms);
        if full(self) {
            self.pairs.retain(|_, c| c.n >= 2);
            self.sources.retain(|_, c| c.n >= 2);
        }
        if full(self) {
            self.pairs.clear();
            self.sources.clear();
        }
    }

    /// Every ban in force, the longest first.
    pub fn bans(&self, now_ms: u64) -> Vec<Ban> {
        let mut v: Vec<Ban> = self
            .bans
            .values()
            .filter(|b| b.until_ms > now_ms)
            .cloned()
            .collect();
        v.sort_by(|a, b| b.until_ms.cmp(&a.until_ms).then(a.source.cmp(&b.source)));
        v
    }
}

/// The member that counts `source`: the first of `members` (Node-IDs) at
/// or after its ring key, wrapping around.
pub fn owner(source: Source, members: &[[u8; 16]]) -> Option<[u8; 16]> {
    owner_of(source.ring_key(), members)
}

/// The first of `members` (Node-IDs) at or after `key`, wrapping around:
/// the one member that acts for `key` while they all see the same members.
pub fn owner_of(key: u128, members: &[[u8; 16]]) -> Option<[u8; 16]> {
    let id = |m: &[u8; 16]| u128::from_be_bytes(*m);
    members
        .iter()
        .filter(|m| id(m) >= key)
        .min_by_key(|m| id(m))
        .or_else(|| members.iter().min_by_key(|m| id(m)))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn messages_round_trip_any_identity() {
        for m in [
            GuardMsg::Failure {
                source: src("203.0.113.7"),
                identity: "alice".into(),
            },
            GuardMsg::Failure {
                source: src("2001:db8::1"),
                identity: "a b%c\"d é".into(),
            },
            GuardMsg::Ban {
                source: src("203.0.113.7"),
                identity: None,
                until_ms: T0,
            },
            GuardMsg::Ban {
                source: src("203.0.113.7"),
                identity: Some("*".into()),
                until_ms: T0,
            },
            GuardMsg::Lift {
                source: src("203.0.113.7"),
            },
        ] {
            let text = m.encode();
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(GuardMsg::decode(text.as_bytes()), Some(m), "{text}");
        }
        let plain = GuardMsg::Failure {
            source: src("203.0.113.7"),
            identity: "alice".into(),
        };
        assert!(
            plain.encode().contains("alice"),
            "a plain name travels as is"
        );
        for bad in [
            "",
            "ban",
            "failure x alice",
            "ban 1.2.3.4 * soon",
            "lift",
            "what 1.2.3.4",
        ] {
            assert_eq!(GuardMsg::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        assert_eq!(src("2001:db8:1:2:aaaa::1"), src("2001:db8:1:2:bbbb::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.1"), src("192.0.2.1"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_pair_then_a_source_is_banned_refused_then_ignored() {
        let mut g = Guard::new(GuardConfig::default());
        let s = src("203.0.113.7");
        for i in 1..5 {
            assert!(g.count_failure(s, "alice", T0 + i).is_empty(), "{i}");
        }
        let bans = g.count_failure(s, "alice", T0 + 5);
        assert_eq!(
            bans,
            [GuardMsg::Ban {
                source: s,
                identity: Some("alice".into()),
                until_ms: T0 + 5 + 900_000
            }]
        );
        for b in &bans {
            g.apply(b, T0 + 5);
        }
        assert_eq!(g.check(s, None, T0 + 6), Check::Allow, "a first request");
        assert_eq!(
            g.check(s, Some("bob"), T0 + 6),
            Check::Allow,
            "another user"
        );
        assert_eq!(
            g.check(src("198.51.100.1"), Some("alice"), T0 + 6),
            Check::Allow
        );
        for _ in 0..ANSWERS_BEFORE_SILENCE {
            assert_eq!(g.check(s, Some("alice"), T0 + 7), Check::Refuse);
        }
        assert_eq!(g.check(s, Some("alice"), T0 + 8), Check::Drop);
        // Spread over other identities, the source itself is banned.
        let mut source_ban = Vec::new();
        for i in 0..15 {
            source_ban.extend(g.count_failure(s, &format!("user{i}"), T0 + 10));
        }
        assert!(matches!(
            source_ban.as_slice(),
            [GuardMsg::Ban { identity: None, .. }]
        ));
        g.apply(&source_ban[0], T0 + 10);
        assert_eq!(g.check(s, None, T0 + 11), Check::Refuse);
        assert_eq!(g.bans(T0 + 11).len(), 2);
        // While a ban is in force, more failures decide nothing new.
        assert!(g.count_failure(s, "alice", T0 + 12).is_empty());
        // Bans end.
        assert_eq!(g.check(s, Some("alice"), T0 + 10 + 900_001), Check::Allow);
        g.expire(T0 + 10 + 900_001);
        assert!(g.bans(T0 + 10 + 900_001).is_empty());
        assert!(!g.has_bans());
    }

    #[test]
    fn a_guesser_that_goes_on_after_its_ban_is_banned_again_at_once() {
        let mut g = Guard::new(GuardConfig {
            window: Duration::from_secs(3600),
            ban: Duration::from_secs(60),
            ..GuardConfig::default()
        });
        let s = src("203.0.113.7");
        let mut bans = Vec::new();
        for i in 0..5 {
            bans.extend(g.count_failure(s, "alice", T0 + i));
        }
        g.apply(&bans[0], T0 + 5);
        let later = T0 + 61_000;
        assert_eq!(
            g.check(s, Some("alice"), later),
            Check::Allow,
            "the ban ended"
        );
        let again = g.count_failure(s, "alice", later);
        assert!(
            matches!(again.as_slice(), [GuardMsg::Ban { .. }]),
            "{again:?}"
        );
    }

    #[test]
    fn failures_older_than_the_window_do_not_count_and_a_lift_forgets() {
        let mut g = Guard::new(GuardConfig::default());
        let s = src("203.0.113.7");
        for i in 0..4 {
            assert!(g.count_failure(s, "alice", T0 + i * 200_000).is_empty());
        }
        // The fifth comes 800 s after the first: the window restarted.
        assert!(g.count_failure(s, "alice", T0 + 800_000).is_empty());
        for _ in 0..3 {
            g.count_failure(s, "alice", T0 + 800_001);
        }
        let ban = g.count_failure(s, "alice", T0 + 800_002);
        assert_eq!(ban.len(), 1);
        g.apply(&ban[0], T0 + 800_002);
        g.apply(&GuardMsg::Lift { source: s }, T0 + 800_003);
        assert_eq!(g.check(s, Some("alice"), T0 + 800_004), Check::Allow);
        assert!(
            g.count_failure(s, "alice", T0 + 800_005).is_empty(),
            "counts forgotten"
        );
    }

    #[test]
    fn a_guard_with_zero_thresholds_is_off() {
        let mut g = Guard::new(GuardConfig {
            pair_failures: 0,
            source_failures: 0,
            ..GuardConfig::default()
        });
        for i in 0..100 {
            assert!(
                g.count_failure(src("203.0.113.7"), "alice", T0 + i)
                    .is_empty()
            );
        }
    }

    #[test]
    fn counting_memory_is_bounded_under_a_flood_of_sources() {
        let mut g = Guard::new(GuardConfig::default());
        let guesser = src("203.0.113.7");
        for i in 0..3 {
            g.count_failure(guesser, "alice", T0 + i);
        }
        for i in 0..(3 * MAX_COUNTED as u32) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            g.count_failure(Source::of(ip.into()), "alice", T0 + 10);
            assert!(g.sources.len() <= MAX_COUNTED && g.pairs.len() <= MAX_COUNTED);
        }
        // The flood's single failures went first: the guesser's count held.
        assert_eq!(g.sources.get(&guesser).map(|c| c.n), Some(3));
        // One source trying ever new identities fills the pairs alone.
        let mut g = Guard::new(GuardConfig::default());
        for i in 0..(MAX_COUNTED + 10) {
            g.count_failure(guesser, &format!("user{i}"), T0 + 10);
            assert!(g.pairs.len() <= MAX_COUNTED, "at {i}");
        }
    }

    #[test]
    fn every_member_agrees_on_the_owner() {
        let members = [[1u8; 16], [0x80; 16], [0xf0; 16]];
        let s = src("203.0.113.7");
        let o = owner(s, &members).unwrap();
        let mut shuffled = members;
        shuffled.reverse();
        assert_eq!(owner(s, &shuffled), Some(o));
        assert_eq!(owner(s, &[[7; 16]]), Some([7; 16]));
        assert_eq!(owner(s, &[]), None);
        // Sources spread over the members.
        let owners: std::collections::HashSet<[u8; 16]> = (0..64u32)
            .map(|i| owner(Source::of(std::net::Ipv4Addr::from(i).into()), &members).unwrap())
            .collect();
        assert_eq!(owners.len(), 3);
    }

    fn cfg(pair_failures: u32, source_failures: u32) -> GuardConfig {
        GuardConfig {
            pair_failures,
            source_failures,
            ..GuardConfig::default()
        }
    }

    #[test]
    fn each_threshold_is_its_own_switch_and_both_off_count_nothing() {
        let s = src("203.0.113.7");
        let mut pairs_only = Guard::new(cfg(2, 0));
        assert!(pairs_only.count_failure(s, "alice", T0).is_empty());
        assert!(matches!(
            pairs_only.count_failure(s, "alice", T0)[..],
            [GuardMsg::Ban {
                identity: Some(_),
                ..
            }]
        ));
        let mut sources_only = Guard::new(cfg(0, 3));
        for id in ["a", "a", "b"] {
            let bans = sources_only.count_failure(s, id, T0);
            if id == "b" {
                assert!(matches!(bans[..], [GuardMsg::Ban { identity: None, .. }]));
            } else {
                assert!(bans.is_empty());
            }
        }
        let mut off = Guard::new(cfg(0, 0));
        assert!(!off.enabled());
        for i in 0..50 {
            assert!(off.count_failure(s, "alice", T0 + i).is_empty());
        }
        assert!(
            off.pairs.is_empty() && off.sources.is_empty(),
            "nothing counted"
        );
    }

    #[test]
    fn a_failure_counts_for_the_whole_window_and_not_a_moment_longer() {
        let s = src("203.0.113.7");
        let window = GuardConfig::default().window.as_millis() as u64;
        // A second failure `gap` after the first: a ban, or a new window.
        for (gap, banned) in [(window, true), (window + 1, false)] {
            let mut g = Guard::new(cfg(2, 0));
            g.count_failure(s, "alice", T0);
            let bans = g.count_failure(s, "alice", T0 + gap);
            assert_eq!(!bans.is_empty(), banned, "{gap} ms later");
        }
    }

    /// A ban is in force strictly before its end: at `until_ms` it is over
    /// wherever the guard looks (a late copy from another member, the list
    /// an operator sees, expiry, and the next failure's decision).
    #[test]
    fn a_ban_ends_at_its_end_instant() {
        let s = src("203.0.113.7");
        let end = T0 + 1000;
        let ban = GuardMsg::Ban {
            source: s,
            identity: None,
            until_ms: end,
        };
        let mut g = Guard::new(cfg(5, 1));
        g.apply(&ban, end);
        assert!(g.bans(T0).is_empty(), "a copy that arrives over is ignored");
        g.apply(&ban, end - 1);
        assert_eq!(g.bans(end - 1).len(), 1);
        assert!(g.bans(end).is_empty());
        g.expire(end - 1);
        assert_eq!(g.bans.len(), 1);
        // At the end instant the next failure bans again.
        assert!(!g.count_failure(s, "alice", end).is_empty());
        g.expire(end);
        assert!(g.bans.is_empty());
    }

    #[test]
    fn counts_older_than_the_window_are_forgotten() {
        let s = src("203.0.113.7");
        let window = GuardConfig::default().window.as_millis() as u64;
        let mut g = Guard::new(cfg(5, 20));
        g.count_failure(s, "alice", T0);
        g.expire(T0 + window);
        assert_eq!(
            (g.pairs.len(), g.sources.len()),
            (1, 1),
            "on the edge: kept"
        );
        g.expire(T0 + window + 1);
        assert!(g.pairs.is_empty() && g.sources.is_empty());
    }
}
