//! Service discovery on the ring, and TURN credentials.
//!
//! A service (TURN relays, application servers, gateways) is found by its
//! name. ReDiR (RFC 7374) spreads a service's instances over a tree of
//! keys because a lookup in a multi-hop DHT is costly and a record is
//! small; on a one-hop ring a lookup is one round trip, so every instance
//! of a service is one entry of the record of one key, the hash of
//! `ringmesh service\0` and the name, on that key's replicas. An entry
//! holds the instance's URI, region, capacity and current load and
//! expires unless its advertiser refreshes it. A record holds at most
//! the overlay's entries per record (1,024 instances a service).
//!
//! TURN credentials follow the TURN REST API scheme that coturn's
//! `use-auth-secret` implements: the username is the expiry time (UNIX
//! seconds), a colon and the subscriber's name; the password is the
//! base64 HMAC-SHA1 of the username under the secret the farm shares
//! with its relays. A relay refuses them once the time has passed.

use base64::Engine as _;
use bytes::{Buf, Bytes};
use hmac::{Hmac, Mac};

use crate::binding::{get_text, get_varint, put_text, put_varint};

/// The first byte of a service instance's value.
const FORMAT: u8 = 1;
/// The first byte of its entry id (then its URI).
const ENTRY_PREFIX: u8 = b's';
/// What a service name, a region and a URI may be.
pub const MAX_NAME: usize = 63;
pub const MAX_URI: usize = 255;

/// One instance of a service, as advertised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub name: String,
    /// How clients reach it (`turn:192.0.2.7:3478?transport=udp`).
    pub uri: String,
    /// Where it is (a label the operator chooses; empty: anywhere).
    pub region: String,
    /// What it can carry, and carries now, in a unit of its own (TURN:
    /// allocations).
    pub capacity: u32,
    pub load: u32,
    pub expires_at_ms: u64,
}

/// The key material of the record holding service `name`.
pub fn key_material(name: &str) -> Vec<u8> {
    [&b"ringmesh service\0"[..], name.as_bytes()].concat()
}

/// Why a service name, region or URI is refused.
pub fn check_label(what: &str, v: &str, empty_ok: bool) -> Result<(), String> {
    let ok = v.len() <= MAX_NAME
        && (empty_ok || !v.is_empty())
        && v.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} must be 1 to {MAX_NAME} of a-z, 0-9 and '-', got {v:?}"
        ))
    }
}

/// Why an instance's URI is refused: it must be `scheme:rest` with a
/// scheme of letters, printable ASCII without spaces, at most
/// [`MAX_URI`] bytes.
pub fn check_uri(uri: &str) -> Result<(), String> {
    let scheme_ok = uri.split_once(':').is_some_and(|(s, rest)| {
        !s.is_empty() && !rest.is_empty() && s.bytes().all(|c| c.is_ascii_alphabetic())
    });
    if scheme_ok && uri.len() <= MAX_URI && uri.bytes().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "uri must be scheme:address (e.g. turn:192.0.2.7:3478?transport=udp), printable, at most {MAX_URI} bytes, got {uri:?}"
        ))
    }
}

impl ServiceRecord {
    pub fn entry_id(&self) -> Bytes {
        let mut v = Vec::with_capacity(1 + self.uri.len());
        v.push(ENTRY_PREFIX);
        v.extend_from_slice(self.uri.as_bytes());
        Bytes::from(v)
    }

    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(32 + self.uri.len());
        b.push(FORMAT);
        for t in [&self.name, &self.uri, &self.region] {
            put_text(&mut b, t.as_bytes());
        }
        put_varint(&mut b, u64::from(self.capacity));
        put_varint(&mut b, u64::from(self.load));
        put_varint(&mut b, self.expires_at_ms);
        Bytes::from(b)
    }

    /// `None` for anything that is not a whole encoding.
    pub fn decode(value: &[u8]) -> Option<ServiceRecord> {
        let mut r = value;
        if r.try_get_u8().ok()? != FORMAT {
            return None;
        }
        let mut text =
            || get_text(&mut r).and_then(|t| std::str::from_utf8(t).ok().map(str::to_string));
        let (name, uri, region) = (text()?, text()?, text()?);
        let capacity = u32::try_from(get_varint(&mut r)?).ok()?;
        let load = u32::try_from(get_varint(&mut r)?).ok()?;
        let expires_at_ms = get_varint(&mut r)?;
        r.is_empty().then_some(ServiceRecord {
            name,
            uri,
            region,
            capacity,
            load,
            expires_at_ms,
        })
    }

    /// The share of its capacity in use, in per mille (full: 1000 or more).
    fn use_permille(&self) -> u64 {
        u64::from(self.load) * 1000 / u64::from(self.capacity.max(1))
    }
}

/// Whether an overlay entry id is a service instance's.
pub fn is_service_id(id: &[u8]) -> bool {
    id.first() == Some(&ENTRY_PREFIX)
}

/// The best `n` live instances for a client in `region`: those in its
/// region first, then the least used (load over capacity), full ones
/// last; the URI breaks ties so every supernode answers alike.
pub fn best(
    mut records: Vec<ServiceRecord>,
    region: &str,
    n: usize,
    now_ms: u64,
) -> Vec<ServiceRecord> {
    records.retain(|r| r.expires_at_ms > now_ms);
    records.sort_by(|a, b| {
        let rank = |r: &ServiceRecord| {
            (
                r.use_permille() >= 1000,
                region.is_empty() || r.region != region,
                r.use_permille(),
            )
        };
        rank(a).cmp(&rank(b)).then_with(|| a.uri.cmp(&b.uri))
    });
    records.truncate(n);
    records
}

/// TURN REST API credentials for `user`, valid until `expires_s` (UNIX
/// seconds): the username and the password.
pub fn turn_credentials(secret: &[u8], user: &str, expires_s: u64) -> (String, String) {
    let username = format!("{expires_s}:{user}");
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uri: &str, region: &str, capacity: u32, load: u32) -> ServiceRecord {
        ServiceRecord {
            name: "turn".into(),
            uri: uri.into(),
            region: region.into(),
            capacity,
            load,
            expires_at_ms: 10_000,
        }
    }

    #[test]
    fn a_record_round_trips_and_a_cut_one_does_not_decode() {
        let r = rec("turn:192.0.2.7:3478?transport=udp", "eu-west", 1000, 12);
        let enc = r.encode();
        assert_eq!(ServiceRecord::decode(&enc), Some(r.clone()));
        for n in 0..enc.len() {
            assert_eq!(ServiceRecord::decode(&enc[..n]), None, "cut at {n}");
        }
        assert!(is_service_id(&r.entry_id()));
    }

    #[test]
    fn the_region_first_then_the_least_used_and_full_ones_last() {
        let all = vec![
            rec("turn:a", "us", 100, 0),
            rec("turn:b", "eu", 100, 90),
            rec("turn:c", "eu", 100, 10),
            rec("turn:d", "eu", 100, 100),
            ServiceRecord {
                expires_at_ms: 5_000,
                ..rec("turn:e", "eu", 100, 0)
            },
        ];
        let uris = |v: Vec<ServiceRecord>| v.into_iter().map(|r| r.uri).collect::<Vec<_>>();
        assert_eq!(
            uris(best(all.clone(), "eu", 9, 6_000)),
            ["turn:c", "turn:b", "turn:a", "turn:d"],
            "expired ones gone, full ones last"
        );
        assert_eq!(
            uris(best(all.clone(), "us", 2, 6_000)),
            ["turn:a", "turn:c"]
        );
        assert_eq!(uris(best(all, "", 1, 6_000)), ["turn:a"]);
    }

    #[test]
    fn credentials_are_the_turn_rest_api_scheme() {
        // HMAC-SHA1("secret", "1700000000:alice"), as `openssl dgst -sha1
        // -hmac secret -binary | base64` computes it.
        let (user, pass) = turn_credentials(b"secret", "alice", 1_700_000_000);
        assert_eq!(user, "1700000000:alice");
        assert_eq!(pass, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn labels_and_uris_are_checked() {
        assert!(check_label("name", "turn", false).is_ok());
        assert!(check_label("region", "", true).is_ok());
        assert!(check_label("name", "", false).is_err());
        assert!(check_label("name", "Turn", false).is_err());
        assert!(check_label("name", &"a".repeat(64), false).is_err());
        assert!(check_uri("turn:127.0.0.1:3478?transport=udp").is_ok());
        assert!(check_uri("127.0.0.1:3478").is_err());
        assert!(check_uri("turn:").is_err());
        assert!(check_uri("turn:a b").is_err());
    }
}
