//! PSTN gateways shared through the ring, and the dial plan.
//!
//! The farm's gateways (the Free World Dialup model: gateways any member
//! can use, found in the overlay) are the entries of one record, the hash
//! of `ringmesh gateways\0`: each entry (`g` + name) holds the gateway's
//! address, the number prefixes it takes, its priority, weight, region and
//! the concurrent calls one supernode may send it. Every supernode reads
//! the record every few seconds and keeps its own state of each gateway:
//! whether it answers OPTIONS, the calls it has up there, and its place in
//! the weighted round-robin.
//!
//! A number no subscriber owns goes to the gateways whose longest
//! matching prefix is the longest (`+4420` before `+44` before `+`), then
//! by priority (lower first), then those of this supernode's region
//! first; among the gateways tied on all three, smooth weighted
//! round-robin (as nginx does it) picks the first, and the others of the
//! group and of the following groups are where the call fails over to.
//! A gateway that does not answer, or is at its cap, is skipped.
//!
//! Numbers are E.164 (`tel:+…`): a dialled number is normalised by the
//! [`DialPlan`] first.

use std::net::SocketAddr;
use std::str::FromStr;

use bytes::{Buf, Bytes};
use ringmesh_sip::aor::Aor;

use crate::binding::{Transport, get_text, get_varint, put_text, put_varint};
use crate::discovery::check_label;

/// The first byte of a gateway's value.
const FORMAT: u8 = 1;
/// The first byte of its entry id (then its name).
const ENTRY_PREFIX: u8 = b'g';
/// The most prefixes one gateway takes.
pub const MAX_PREFIXES: usize = 64;
/// The most gateways a farm has (what one record holds comfortably, and
/// what a metric label may take).
pub const MAX_GATEWAYS: usize = 256;
/// The weight of a gateway at most.
pub const MAX_WEIGHT: u32 = 1000;
/// How long a gateway's entry lives: the ring keeps nothing past 30 days,
/// so entries are written for 29 and written again by any supernode that
/// reads one with less than [`REWRITE_BEFORE_MS`] left.
pub const LIFETIME_MS: u64 = 29 * 24 * 3600 * 1000;
pub const REWRITE_BEFORE_MS: u64 = 15 * 24 * 3600 * 1000;

/// The key material of the record holding the farm's gateways.
pub const KEY_MATERIAL: &[u8] = b"ringmesh gateways\0";

/// A PSTN gateway, as the operator configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    pub name: String,
    /// Where it takes SIP: an address, since edges resolve no names.
    pub addr: SocketAddr,
    pub transport: Transport,
    /// E.164 prefixes (`+44`; `+` takes every number).
    pub prefixes: Vec<String>,
    /// Lower is tried first.
    pub priority: u32,
    /// The share of calls among gateways tied on prefix, priority and
    /// region (1 to [`MAX_WEIGHT`]).
    pub weight: u32,
    /// Concurrent calls one supernode sends it at most; 0: no cap.
    pub capacity: u32,
    /// Where it is (a label; empty: anywhere).
    pub region: String,
    pub expires_at_ms: u64,
}

impl GatewayRecord {
    /// Its SIP URI, as the operator writes it.
    pub fn uri(&self) -> String {
        format!("sip:{};transport={}", self.addr, self.transport.as_str())
    }

    pub fn entry_id(&self) -> Bytes {
        entry_id(&self.name)
    }

    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(64);
        b.push(FORMAT);
        put_text(&mut b, self.name.as_bytes());
        put_text(&mut b, self.addr.to_string().as_bytes());
        put_text(&mut b, self.transport.as_str().as_bytes());
        put_varint(&mut b, self.prefixes.len() as u64);
        for p in &self.prefixes {
            put_text(&mut b, p.as_bytes());
        }
        for v in [self.priority, self.weight, self.capacity] {
            put_varint(&mut b, u64::from(v));
        }
        put_text(&mut b, self.region.as_bytes());
        put_varint(&mut b, self.expires_at_ms);
        Bytes::from(b)
    }

    /// `None` for anything that is not a whole, valid encoding.
    pub fn decode(value: &[u8]) -> Option<GatewayRecord> {
        let mut r = value;
        if r.try_get_u8().ok()? != FORMAT {
            return None;
        }
        let text = |r: &mut &[u8]| {
            get_text(r).and_then(|t| std::str::from_utf8(t).ok().map(str::to_string))
        };
        let name = text(&mut r)?;
        let addr = text(&mut r)?.parse().ok()?;
        let transport = Transport::from_token(text(&mut r)?.as_bytes())?;
        let n = usize::try_from(get_varint(&mut r)?).ok()?;
        if n > MAX_PREFIXES {
            return None;
        }
        let prefixes = (0..n).map(|_| text(&mut r)).collect::<Option<Vec<_>>>()?;
        let mut num = || u32::try_from(get_varint(&mut r)?).ok();
        let (priority, weight, capacity) = (num()?, num()?, num()?);
        let region = text(&mut r)?;
        let expires_at_ms = get_varint(&mut r)?;
        let rec = GatewayRecord {
            name,
            addr,
            transport,
            prefixes,
            priority,
            weight,
            capacity,
            region,
            expires_at_ms,
        };
        (r.is_empty() && rec.check().is_ok()).then_some(rec)
    }

    /// Why the record is refused, naming the field.
    pub fn check(&self) -> Result<(), String> {
        check_label("name", &self.name, false)?;
        check_label("region", &self.region, true)?;
        if self.prefixes.is_empty() || self.prefixes.len() > MAX_PREFIXES {
            return Err(format!(
                "prefixes: 1 to {MAX_PREFIXES} are needed, got {}",
                self.prefixes.len()
            ));
        }
        for p in &self.prefixes {
            check_prefix(p)?;
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(format!(
                "weight: must be 1 to {MAX_WEIGHT}, got {}",
                self.weight
            ));
        }
        if matches!(self.transport, Transport::Ws | Transport::Wss) {
            return Err("transport: must be udp, tcp or tls".into());
        }
        Ok(())
    }

    /// The length of its longest prefix that `number` (E.164, `+…`)
    /// starts with.
    fn matches(&self, number: &str) -> Option<usize> {
        self.prefixes
            .iter()
            .filter(|p| number.starts_with(p.as_str()))
            .map(String::len)
            .max()
    }
}

/// The entry id of gateway `name`.
pub fn entry_id(name: &str) -> Bytes {
    let mut v = Vec::with_capacity(1 + name.len());
    v.push(ENTRY_PREFIX);
    v.extend_from_slice(name.as_bytes());
    Bytes::from(v)
}

/// Whether an overlay entry id is a gateway's.
pub fn is_gateway_id(id: &[u8]) -> bool {
    id.first() == Some(&ENTRY_PREFIX)
}

/// Why a prefix is refused: `+` and up to 15 digits.
pub fn check_prefix(p: &str) -> Result<(), String> {
    let digits = p.strip_prefix('+').unwrap_or("x");
    if digits.len() <= 15 && digits.bytes().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "prefix {p:?}: must be '+' and up to 15 digits (E.164; '+' alone takes every number)"
        ))
    }
}

/// Parses a gateway's URI: `sip:ADDRESS:PORT` with an optional
/// `;transport=udp|tcp|tls` (port 5060 by default, 5061 for TLS). The host
/// must be an address: supernodes resolve no names.
pub fn parse_uri(uri: &str) -> Result<(SocketAddr, Transport), String> {
    let bad = |why: &str| format!("uri {uri:?}: {why} (e.g. sip:192.0.2.10:5060;transport=udp)");
    let parsed = ringmesh_sip::Uri::parse(uri.as_bytes()).map_err(|_| bad("not a SIP URI"))?;
    if parsed.scheme() != ringmesh_sip::Scheme::Sip || parsed.user().is_some() {
        return Err(bad("must be sip: with no user part"));
    }
    let transport = match parsed.param("transport") {
        None => Transport::Udp,
        Some(Some(t)) => match Transport::from_token(t) {
            Some(t @ (Transport::Udp | Transport::Tcp | Transport::Tls)) => t,
            _ => return Err(bad("transport must be udp, tcp or tls")),
        },
        Some(None) => return Err(bad("transport needs a value")),
    };
    let ip = parsed
        .host()
        .and_then(|h| h.ip())
        .ok_or_else(|| bad("the host must be an IP address"))?;
    let port = parsed.port().unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    Ok((SocketAddr::new(ip, port), transport))
}

/// How dialled numbers become E.164: a number that starts with the
/// international prefix is `+` and the rest; one that starts with the
/// national prefix is `+`, the country code and the rest. Anything else
/// (a short code, a number already global) is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialPlan {
    pub country_code: String,
    pub national_prefix: String,
    pub international_prefix: String,
}

impl FromStr for DialPlan {
    type Err = String;

    /// `cc=44,national=0,international=00` (each part optional; empty:
    /// numbers are taken as dialled).
    fn from_str(s: &str) -> Result<DialPlan, String> {
        let mut plan = DialPlan::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!(
                    "dial plan part {part:?}: expected key=digits (cc, national, international)"
                )
            })?;
            if v.is_empty() || v.len() > 6 || !v.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!("dial plan {k}: {v:?} is not 1 to 6 digits"));
            }
            let slot = match k {
                "cc" => &mut plan.country_code,
                "national" => &mut plan.national_prefix,
                "international" => &mut plan.international_prefix,
                _ => {
                    return Err(format!(
                        "dial plan: unknown key {k:?} (cc, national, international)"
                    ));
                }
            };
            *slot = v.to_string();
        }
        if !plan.national_prefix.is_empty() && plan.country_code.is_empty() {
            return Err("dial plan: a national prefix needs cc".into());
        }
        Ok(plan)
    }
}

impl DialPlan {
    /// `aor` normalised: a local `tel:` number (digits, no context) in
    /// its E.164 form; any other AOR as it is.
    pub fn normalize(&self, aor: Aor) -> Aor {
        let Some(digits) = aor.as_bytes().strip_prefix(b"tel:") else {
            return aor;
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return aor;
        }
        let digits = std::str::from_utf8(digits).expect("digits");
        let global = match (
            digits.strip_prefix(self.international_prefix.as_str()),
            digits.strip_prefix(self.national_prefix.as_str()),
        ) {
            (Some(rest), _) if !self.international_prefix.is_empty() => format!("tel:+{rest}"),
            (_, Some(rest)) if !self.national_prefix.is_empty() => {
                format!("tel:+{}{rest}", self.country_code)
            }
            _ => return aor,
        };
        Aor::parse(global.as_bytes()).unwrap_or(aor)
    }
}

/// The E.164 number of a global `tel:` AOR (`+…`).
pub fn number_of(aor: &Aor) -> Option<&str> {
    let n = aor.as_bytes().strip_prefix(b"tel:")?;
    (n.len() > 1 && n[0] == b'+' && n[1..].iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(n).expect("digits"))
}

/// One gateway as this supernode sees it.
#[derive(Debug, Clone)]
pub struct GatewayState {
    pub rec: GatewayRecord,
    /// It answered its last OPTIONS in time (a new gateway is up until a
    /// probe says otherwise).
    pub up: bool,
    /// Calls this supernode has sent it that are not over.
    pub active: u32,
    /// Smooth weighted round-robin: its current weight.
    current: i64,
}

impl GatewayState {
    /// Up, and under its cap.
    pub fn usable(&self) -> bool {
        self.up && (self.rec.capacity == 0 || self.active < self.rec.capacity)
    }
}

/// The farm's gateways with this supernode's state of each, by name.
#[derive(Debug, Default)]
pub struct Gateways {
    list: Vec<GatewayState>,
}

impl Gateways {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &GatewayState> {
        self.list.iter()
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut GatewayState> {
        self.list.iter_mut().find(|g| g.rec.name == name)
    }

    /// Replaces the table with what the ring holds now; a gateway whose
    /// address and weight did not change keeps its state.
    pub fn set(&mut self, mut records: Vec<GatewayRecord>) {
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records.dedup_by(|a, b| a.name == b.name);
        records.truncate(MAX_GATEWAYS);
        let old = std::mem::take(&mut self.list);
        self.list = records
            .into_iter()
            .map(|rec| match old.iter().find(|g| g.rec.name == rec.name) {
                Some(g) => GatewayState {
                    up: g.up || g.rec.addr != rec.addr,
                    active: g.active,
                    current: if g.rec.weight == rec.weight {
                        g.current
                    } else {
                        0
                    },
                    rec,
                },
                None => GatewayState {
                    rec,
                    up: true,
                    active: 0,
                    current: 0,
                },
            })
            .collect();
    }

    /// The gateways a call to `number` tries, in order; the first is
    /// chosen by smooth weighted round-robin among the best group (which
    /// advances its weights). Gateways that are down or full are left
    /// out. `region` is this supernode's.
    pub fn route(&mut self, number: &str, region: &str) -> Vec<String> {
        // (prefix length, priority, other region) of every usable match.
        let rank = |g: &GatewayState| {
            g.rec.matches(number).map(|len| {
                (
                    std::cmp::Reverse(len),
                    g.rec.priority,
                    region.is_empty() || g.rec.region != region,
                )
            })
        };
        let mut ranked: Vec<(_, usize)> = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, g)| g.usable())
            .filter_map(|(i, g)| rank(g).map(|r| (r, i)))
            .collect();
        // Within a group, the heavier first (then by name: list order).
        ranked.sort_by_key(|&(r, i)| (r, std::cmp::Reverse(self.list[i].rec.weight), i));
        let Some(&(best, _)) = ranked.first() else {
            return Vec::new();
        };
        let group: Vec<usize> = ranked
            .iter()
            .take_while(|(r, _)| *r == best)
            .map(|&(_, i)| i)
            .collect();
        let total: i64 = group
            .iter()
            .map(|&i| i64::from(self.list[i].rec.weight))
            .sum();
        for &i in &group {
            self.list[i].current += i64::from(self.list[i].rec.weight);
        }
        // The highest current weight; the first in list order on a tie.
        let pick = *group
            .iter()
            .rev()
            .max_by_key(|&&i| self.list[i].current)
            .expect("a group is never empty");
        self.list[pick].current -= total;
        std::iter::once(pick)
            .chain(ranked.iter().map(|&(_, i)| i).filter(|&i| i != pick))
            .map(|i| self.list[i].rec.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(name: &str, prefixes: &[&str], priority: u32, weight: u32) -> GatewayRecord {
        GatewayRecord {
            name: name.into(),
            addr: "127.0.0.1:5070".parse().unwrap(),
            transport: Transport::Udp,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            priority,
            weight,
            capacity: 0,
            region: String::new(),
            expires_at_ms: 10_000,
        }
    }

    #[test]
    fn a_record_round_trips_and_a_cut_or_invalid_one_does_not_decode() {
        let r = GatewayRecord {
            capacity: 30,
            region: "eu-west".into(),
            transport: Transport::Tls,
            ..gw("lon-1", &["+44", "+4420"], 10, 3)
        };
        let enc = r.encode();
        assert_eq!(GatewayRecord::decode(&enc), Some(r.clone()));
        for n in 0..enc.len() {
            assert_eq!(GatewayRecord::decode(&enc[..n]), None, "cut at {n}");
        }
        assert!(is_gateway_id(&r.entry_id()));
        let bad = gw("x", &["44"], 0, 1);
        assert_eq!(
            GatewayRecord::decode(&bad.encode()),
            None,
            "prefix without +"
        );
    }

    #[test]
    fn records_are_checked_field_by_field() {
        assert!(gw("a", &["+"], 0, 1).check().is_ok());
        assert!(gw("a", &[], 0, 1).check().unwrap_err().contains("prefixes"));
        assert!(
            gw("a", &["+1x"], 0, 1)
                .check()
                .unwrap_err()
                .contains("prefix")
        );
        assert!(gw("a", &["+1234567890123456"], 0, 1).check().is_err());
        assert!(
            gw("a", &["+1"], 0, 0)
                .check()
                .unwrap_err()
                .contains("weight")
        );
        assert!(gw("a", &["+1"], 0, 1001).check().is_err());
        assert!(gw("A", &["+1"], 0, 1).check().unwrap_err().contains("name"));
    }

    #[test]
    fn uris_name_an_address_and_a_transport() {
        assert_eq!(
            parse_uri("sip:127.0.0.1:5070").unwrap(),
            ("127.0.0.1:5070".parse().unwrap(), Transport::Udp)
        );
        assert_eq!(
            parse_uri("sip:[::1];transport=tls").unwrap(),
            ("[::1]:5061".parse().unwrap(), Transport::Tls)
        );
        for bad in [
            "sip:gw.example.net",
            "sip:user@127.0.0.1",
            "sips:127.0.0.1",
            "sip:127.0.0.1;transport=ws",
            "127.0.0.1:5060",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_dial_plan_makes_numbers_global() {
        let plan: DialPlan = "cc=44,national=0,international=00".parse().unwrap();
        let n = |s: &str| plan.normalize(Aor::parse(s.as_bytes()).unwrap());
        assert_eq!(n("tel:02071234567").as_bytes(), b"tel:+442071234567");
        assert_eq!(n("tel:0033123456789").as_bytes(), b"tel:+33123456789");
        assert_eq!(n("tel:+15551234").as_bytes(), b"tel:+15551234");
        assert_eq!(n("tel:112").as_bytes(), b"tel:112", "short codes stay");
        assert_eq!(
            n("tel:0207;phone-context=example.com").as_bytes(),
            b"tel:0207;phone-context=example.com"
        );
        assert_eq!(
            n("sip:0207@example.com").as_bytes(),
            b"sip:0207@example.com"
        );
        assert_eq!(
            DialPlan::default()
                .normalize(Aor::parse(b"tel:0207").unwrap())
                .as_bytes(),
            b"tel:0207"
        );
        for bad in ["cc=4x", "national=0", "cc", "area=1", "cc=1234567"] {
            assert!(bad.parse::<DialPlan>().is_err(), "{bad}");
        }
        assert_eq!("".parse::<DialPlan>(), Ok(DialPlan::default()));
        assert_eq!(number_of(&Aor::parse(b"tel:+4420").unwrap()), Some("+4420"));
        assert_eq!(number_of(&Aor::parse(b"tel:0207").unwrap()), None);
    }

    #[test]
    fn the_longest_prefix_wins_then_priority_then_region() {
        let mut t = Gateways::default();
        t.set(vec![
            gw("any", &["+"], 0, 1),
            gw("uk", &["+44"], 5, 1),
            gw("london", &["+4420"], 9, 1),
            gw("uk-backup", &["+44"], 6, 1),
            GatewayRecord {
                region: "north".into(),
                ..gw("uk-north", &["+44"], 5, 1)
            },
        ]);
        assert_eq!(
            t.route("+442071234567", "north"),
            ["london", "uk-north", "uk", "uk-backup", "any"]
        );
        assert_eq!(t.route("+441611234567", "north")[..2], ["uk-north", "uk"]);
        assert_eq!(t.route("+15551234", ""), ["any"]);
        t.get_mut("any").unwrap().up = false;
        assert!(
            t.route("+15551234", "").is_empty(),
            "a gateway that is down"
        );
    }

    #[test]
    fn weights_share_calls_as_smooth_round_robin_does() {
        let mut t = Gateways::default();
        t.set(vec![gw("a", &["+1"], 0, 1), gw("b", &["+1"], 0, 3)]);
        let picks: Vec<String> = (0..8).map(|_| t.route("+1555", "")[0].clone()).collect();
        // nginx's sequence for weights 3 and 1: b b a b, repeating.
        assert_eq!(picks, ["b", "b", "a", "b", "b", "b", "a", "b"]);
        assert_eq!(t.route("+1555", "").len(), 2, "the other is the failover");
        // Over 1,000 calls exactly 1:3.
        let mut t = Gateways::default();
        t.set(vec![gw("a", &["+1"], 0, 1), gw("b", &["+1"], 0, 3)]);
        let a = (0..1000).filter(|_| t.route("+1555", "")[0] == "a").count();
        assert_eq!(a, 250);
    }

    #[test]
    fn a_full_gateway_is_skipped_and_state_survives_a_refresh() {
        let mut t = Gateways::default();
        let capped = GatewayRecord {
            capacity: 1,
            ..gw("a", &["+1"], 0, 1)
        };
        t.set(vec![capped.clone(), gw("b", &["+1"], 1, 1)]);
        t.get_mut("a").unwrap().active = 1;
        assert_eq!(t.route("+1555", ""), ["b"]);
        t.get_mut("b").unwrap().up = false;
        t.set(vec![capped, gw("b", &["+1"], 1, 1)]);
        assert_eq!(t.get_mut("a").unwrap().active, 1);
        assert!(!t.get_mut("b").unwrap().up);
        t.set(vec![GatewayRecord {
            addr: "127.0.0.1:5080".parse().unwrap(),
            ..gw("b", &["+1"], 1, 1)
        }]);
        assert!(t.get_mut("b").unwrap().up, "a new address is tried afresh");
        assert!(t.get_mut("a").is_none(), "removed");
    }
}
