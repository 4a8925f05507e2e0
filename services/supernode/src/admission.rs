//! What one source may cost the node: per-address limits at the transport
//! edge, applied before a message costs the SIP core anything.
//!
//! [`crate::overload`] protects the node as a whole (503 once it is past
//! its capacity); this module keeps one address from taking more than its
//! share, which a node-wide rule cannot see:
//!
//! - [`Connections`]: every TCP connection, accepted or opened by the node
//!   (from the moment its connect starts), holds a [`ConnSlot`]. The node
//!   holds at most `max-connections`, and at most `max-connections-per-ip`
//!   with any one address, so one host cannot take every slot.
//! - [`SourceLimiter`]: a token bucket per source address, refilled at
//!   `source-rate-limit` messages a second up to `source-rate-burst`. A
//!   reader drops a message whose source has no token left, unread and
//!   unanswered (an answer would be work, and a reflection). The table of
//!   buckets is bounded (see [`SourceLimiter`] for what happens when full).
//! - [`Trusted`]: the elements that are not phones (front ends, gateways,
//!   peer farms, load generators: [`TrustTable`]) are exempt from both
//!   per-address limits, though not from the node's own connection cap.
//!
//! A source is an IPv4 address, or the /64 of an IPv6 one (a host is given
//! a whole /64 and may send from any address in it): [`source_key`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prometheus::IntGauge;
use ringmesh_proxy::TrustTable;

/// The address a per-source limit counts against: an IPv4 address (an
/// IPv4-mapped IPv6 one as the IPv4 address it maps), or an IPv6 /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// The trusted elements, shared by every reader and replaceable while the
/// node runs (provisioning's table, refreshed): clones share one table.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Arc<RwLock<TrustTable>>);

impl Trusted {
    pub fn new(table: TrustTable) -> Trusted {
        Trusted(Arc::new(RwLock::new(table)))
    }

    /// Whether `peer` is a trusted element (by address: TLS names need a
    /// TLS transport).
    pub fn is_trusted(&self, peer: SocketAddr) -> bool {
        let t = self.0.read();
        !t.is_empty() && t.is_trusted(peer, None)
    }

    /// Whether a connection from `peer` whose TLS client certificate
    /// carries `names` is a trusted element, by address or by name.
    pub fn is_trusted_by_name(&self, peer: SocketAddr, names: &[String]) -> bool {
        let t = self.0.read();
        !t.is_empty() && t.lookup_any(peer, names).is_some()
    }

    /// Replaces the table; every reader sees the new one from its next
    /// message on.
    pub fn replace(&self, table: TrustTable) {
        *self.0.write() = table;
    }

    /// A copy of the current table.
    pub fn table(&self) -> TrustTable {
        self.0.read().clone()
    }
}

/// Which way a TCP connection was made
/// (`ringmesh_sip_connections_refused_total{direction}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Accepted from a peer.
    Inbound,
    /// Opened by this node, to reach a leaf at its TCP contact.
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn as_label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why a connection was refused
/// (`ringmesh_sip_connections_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// The node holds `max-connections`.
    MaxConnections,
    /// The node holds `max-connections-per-ip` with this address.
    PerIp,
}

impl ConnRefusal {
    pub const ALL: [ConnRefusal; 2] = [ConnRefusal::MaxConnections, ConnRefusal::PerIp];

    pub fn as_label(self) -> &'static str {
        match self {
            ConnRefusal::MaxConnections => "max_connections",
            ConnRefusal::PerIp => "per_ip",
        }
    }
}

/// The TCP connections the node holds, in all and per address.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    per_ip: usize,
    counts: Mutex<Counts>,
    /// `ringmesh_sip_connections`.
    gauge: IntGauge,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Connections per source (trusted elements not counted); a source
    /// with none has no entry, so this holds at most `total` entries.
    by_source: HashMap<IpAddr, usize>,
}

impl Connections {
    /// At most `max` connections, and `per_ip` with one address.
    pub fn new(max: usize, per_ip: usize, gauge: IntGauge) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            per_ip,
            counts: Mutex::new(Counts::default()),
            gauge,
        })
    }

    /// Takes a slot for a connection with `peer` (`exempt`: a trusted
    /// element, not held to the per-address cap), or says why not.
    pub fn reserve(
        self: &Arc<Self>,
        peer: SocketAddr,
        exempt: bool,
    ) -> Result<ConnSlot, ConnRefusal> {
        let key = (!exempt).then(|| source_key(peer.ip()));
        let mut c = self.counts.lock();
        if c.total >= self.max {
            return Err(ConnRefusal::MaxConnections);
        }
        if let Some(k) = key {
            let n = c.by_source.entry(k).or_insert(0);
            if *n >= self.per_ip {
                if *n == 0 {
                    c.by_source.remove(&k);
                }
                return Err(ConnRefusal::PerIp);
            }
            *n += 1;
        }
        c.total += 1;
        self.gauge.inc();
        Ok(ConnSlot {
            conns: self.clone(),
            key,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

/// One connection's place in [`Connections`], given back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    conns: Arc<Connections>,
    key: Option<IpAddr>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.conns.counts.lock();
        c.total -= 1;
        if let Some(k) = self.key
            && let Some(n) = c.by_source.get_mut(&k)
        {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&k);
            }
        }
        self.conns.gauge.dec();
    }
}

/// Why a reader dropped a message (`ringmesh_sip_rate_limited_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// Its source had spent its bucket.
    SourceRate,
    /// The table of sources was full and the share of the sources it
    /// cannot track was spent.
    SourcesFull,
}

impl LimitReason {
    pub const ALL: [LimitReason; 2] = [LimitReason::SourceRate, LimitReason::SourcesFull];

    pub fn as_label(self) -> &'static str {
        match self {
            LimitReason::SourceRate => "source_rate",
            LimitReason::SourcesFull => "sources_full",
        }
    }
}

/// Sources tracked at most, in all shards: about 4 MB of buckets. A
/// source is tracked only while its bucket is not full again (see
/// [`SourceLimiter`]), so only a flood from more sources than this within
/// a refill time fills the table.
pub const SOURCE_TABLE: usize = 65_536;

/// Shards of the table: readers on several threads rarely wait for each
/// other.
const SHARDS: usize = 16;

/// How often, at most, a full shard is swept for sources it can forget.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A token bucket: `tokens` at `at_us` (microseconds since the limiter's
/// epoch).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_us: u64,
}

impl Bucket {
    fn tokens_at(&self, now_us: u64, rate_per_us: f64, burst: f64) -> f64 {
        (self.tokens + now_us.saturating_sub(self.at_us) as f64 * rate_per_us).min(burst)
    }

    fn take(&mut self, now_us: u64, rate_per_us: f64, burst: f64) -> bool {
        self.tokens = self.tokens_at(now_us, rate_per_us, burst);
        self.at_us = self.at_us.max(now_us);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    /// No sweep before this (microseconds since the epoch).
    next_sweep_us: u64,
    /// The one bucket the sources this shard cannot track share.
    untracked: Bucket,
}

/// The per-source rate limit: a token bucket per source address.
///
/// A source's first message creates its bucket, full (`burst`), less that
/// message's token; each message takes a token; tokens come back at `rate`
/// a second. A bucket that has filled up again says nothing a new one
/// would not, so it may be forgotten: the table holds only the sources
/// that sent within their refill time (a phone that sent two messages is
/// forgotten 4 ms later at the default rate).
///
/// The table is bounded ([`SOURCE_TABLE`] sources, in shards). When a
/// shard is full it is swept (at most every 100 ms) for buckets that have
/// filled up again. If it is still full — more sources than it holds, all
/// sending within their refill time: a flood from spoofed addresses —
/// the sources it does not track share one bucket of the same rate and
/// depth, so together they cost the core no more than one source would.
/// Sources already tracked keep their own buckets; a new phone arriving
/// during such a flood may be dropped until a sweep makes room (it
/// retransmits).
#[derive(Debug)]
pub struct SourceLimiter {
    rate_per_us: f64,
    burst: f64,
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
}

impl SourceLimiter {
    /// `rate` messages a second (at least 1), `burst` at once (at least 1),
    /// tracking at most `sources` sources.
    pub fn new(rate: u32, burst: u32, sources: usize) -> SourceLimiter {
        let burst = f64::from(burst.max(1));
        let full = Bucket {
            tokens: burst,
            at_us: 0,
        };
        SourceLimiter {
            rate_per_us: f64::from(rate.max(1)) / 1e6,
            burst,
            per_shard: sources.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        next_sweep_us: 0,
                        untracked: full,
                    })
                })
                .collect(),
            hasher: Default::default(),
            epoch: Instant::now(),
        }
    }

    /// Takes a token for a message from `ip` at `now`: `None` when it may
    /// go on, or why it must be dropped.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Option<LimitReason> {
        let key = source_key(ip);
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let (rate, burst) = (self.rate_per_us, self.burst);
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut s = shard.lock();
        if let Some(b) = s.buckets.get_mut(&key) {
            return (!b.take(now_us, rate, burst)).then_some(LimitReason::SourceRate);
        }
        if s.buckets.len() >= self.per_shard && now_us >= s.next_sweep_us {
            s.buckets
                .retain(|_, b| b.tokens_at(now_us, rate, burst) < burst);
            s.next_sweep_us = now_us + SWEEP_EVERY.as_micros() as u64;
        }
        if s.buckets.len() < self.per_shard {
            s.buckets.insert(
                key,
                Bucket {
                    tokens: burst - 1.0,
                    at_us: now_us,
                },
            );
            return None;
        }
        (!s.untracked.take(now_us, rate, burst)).then_some(LimitReason::SourcesFull)
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().buckets.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_proxy::trust::Element;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_trusted_table_is_shared_and_replaced_whole() {
        let t = Trusted::new(TrustTable::new(vec![
            Element::parse_flag("load=192.0.2.1").unwrap(),
        ]));
        let reader = t.clone();
        assert!(reader.is_trusted(sa("192.0.2.1:5060")));
        assert!(!reader.is_trusted(sa("192.0.2.2:5060")));
        t.replace(TrustTable::new(vec![
            Element::parse_flag("gateway:gw=192.0.2.0/24").unwrap(),
        ]));
        assert!(
            reader.is_trusted(sa("192.0.2.2:5060")),
            "every clone sees it"
        );
        t.replace(TrustTable::default());
        assert!(!reader.is_trusted(sa("192.0.2.1:5060")));
        assert!(reader.table().is_empty());
    }

    #[test]
    fn sources_are_v4_addresses_and_v6_slash_64s() {
        assert_eq!(source_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            source_key(ip("2001:db8:1:2::1")),
            source_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let c = Connections::new(5, 2, gauge.clone());
        let a1 = c.reserve(sa("192.0.2.1:1000"), false).unwrap();
        let a2 = c.reserve(sa("192.0.2.1:1001"), false).unwrap();
        assert_eq!(
            c.reserve(sa("192.0.2.1:1002"), false).unwrap_err(),
            ConnRefusal::PerIp
        );
        // Another address, and a trusted element at the same one.
        let b = c.reserve(sa("192.0.2.2:1000"), false).unwrap();
        let t1 = c.reserve(sa("192.0.2.1:5060"), true).unwrap();
        let t2 = c.reserve(sa("192.0.2.1:5061"), true).unwrap();
        assert_eq!(c.open(), 5);
        assert_eq!(gauge.get(), 5);
        assert_eq!(
            c.reserve(sa("192.0.2.3:1000"), true).unwrap_err(),
            ConnRefusal::MaxConnections,
            "trusted elements are held to the node's cap"
        );
        drop((a1, t1));
        assert_eq!(c.open(), 3);
        let a3 = c.reserve(sa("192.0.2.1:1003"), false).unwrap();
        drop((a2, a3, b, t2));
        assert_eq!(c.open(), 0);
        assert_eq!(gauge.get(), 0);
        assert!(c.counts.lock().by_source.is_empty(), "nothing left behind");
        // One IPv6 host is one source, whichever address of its /64 it uses.
        let v6a = c.reserve(sa("[2001:db8::1]:1"), false).unwrap();
        let v6b = c.reserve(sa("[2001:db8::2]:1"), false).unwrap();
        assert_eq!(
            c.reserve(sa("[2001:db8::3]:1"), false).unwrap_err(),
            ConnRefusal::PerIp
        );
        drop((v6a, v6b));
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let l = SourceLimiter::new(10, 20, 1000);
        let t0 = l.epoch;
        let a = ip("192.0.2.1");
        let passed = (0..100).filter(|_| l.check(a, t0).is_none()).count();
        assert_eq!(passed, 20, "the burst");
        assert_eq!(l.check(a, t0), Some(LimitReason::SourceRate));
        // A second later, ten more tokens.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..100).filter(|_| l.check(a, t1).is_none()).count();
        assert_eq!(passed, 10, "the rate");
        // Another source is not affected.
        assert_eq!(l.check(ip("192.0.2.2"), t1), None);
        // Time going backwards (two readers' clocks) gives nothing away.
        assert_eq!(l.check(a, t0), Some(LimitReason::SourceRate));
    }

    #[test]
    fn the_table_stays_bounded_under_a_spoofed_flood() {
        let sources = 64;
        let l = SourceLimiter::new(10, 5, sources);
        let t0 = l.epoch;
        // A phone, tracked before the flood, spends part of its burst.
        let phone = ip("198.51.100.7");
        for _ in 0..3 {
            assert_eq!(l.check(phone, t0), None);
        }
        // A flood from 100,000 spoofed addresses, one message each, all
        // within one instant: the table never holds more than its bound.
        let mut limited = 0;
        for i in 0..100_000u32 {
            let spoofed = IpAddr::V4((0x0a00_0000 + i).into());
            if l.check(spoofed, t0).is_some() {
                limited += 1;
            }
            assert!(l.tracked() <= sources + SHARDS);
        }
        assert!(limited > 99_000, "the untracked share is spent: {limited}");
        // The phone kept its own bucket: two tokens left, then limited.
        assert_eq!(l.check(phone, t0), None);
        assert_eq!(l.check(phone, t0), None);
        assert_eq!(l.check(phone, t0), Some(LimitReason::SourceRate));
        // Once the flood's buckets have filled up again, a sweep forgets
        // them and new sources are tracked.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(l.check(ip("203.0.113.1"), later), None);
        assert!(l.tracked() < sources, "swept: {}", l.tracked());
    }
}
