//! Trusted elements: the SIP peers that are not phones.
//!
//! Front ends (P-CSCF-like), application servers, peer farms, PSTN
//! gateways and the load generators of a benchmark send requests on behalf
//! of many users, assert identities themselves and may send at rates no
//! phone does. They are listed here, by source address (a host or a
//! network, optionally one port) or by the name in their TLS client
//! certificate; everything else is a phone, and the phone rules (digest
//! authentication, identity checks, per-source limits, brute-force bans)
//! apply to it.
//!
//! A peer farm may name the SIP domains it serves: this farm's
//! subscribers' requests for those domains go to their servers (RFC 3263,
//! over TLS, the server certificate checked against the domain); requests
//! for any other domain are refused.
//!
//! The table is kept in provisioning and managed with `ringmesh ctl
//! trusted` (or `ringmesh ctl peer` for peer farms); a supernode may also
//! list elements in its own configuration (`--trusted NAME=ADDRESS`, for a
//! lab or a benchmark).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// What a trusted element is; later rules treat kinds differently (a
/// gateway takes PSTN calls, a peer farm federated ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A front end (P-CSCF-like) that has authenticated its users.
    FrontEnd,
    /// An application server.
    AppServer,
    /// Another farm.
    PeerFarm,
    /// A PSTN gateway.
    Gateway,
    /// A load generator of a benchmark. It stands in for phones: held to
    /// the phone rules, but not to the per-source limits and bans.
    LoadGenerator,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::FrontEnd,
        Kind::AppServer,
        Kind::PeerFarm,
        Kind::Gateway,
        Kind::LoadGenerator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FrontEnd => "front-end",
            Kind::AppServer => "app-server",
            Kind::PeerFarm => "peer-farm",
            Kind::Gateway => "gateway",
            Kind::LoadGenerator => "load-generator",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind '{s}' (one of {})", all.join(", "))
            })
    }
}

/// How a trusted element is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Matcher {
    /// Requests from this network (a host is a /32 or /128), from any
    /// port or from one.
    Addr {
        net: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    /// Connections whose TLS client certificate names this host.
    TlsName(String),
}

impl Matcher {
    fn matches(&self, peer: SocketAddr, tls_name: Option<&str>) -> bool {
        match self {
            Matcher::Addr { net, prefix, port } => {
                port.is_none_or(|p| p == peer.port()) && in_net(peer.ip(), *net, *prefix)
            }
            Matcher::TlsName(n) => tls_name.is_some_and(|t| t.eq_ignore_ascii_case(n)),
        }
    }
}

/// An IPv4-mapped IPv6 address is compared as the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(ip), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::TlsName(n) => write!(f, "tls:{n}"),
            Matcher::Addr { net, prefix, port } => {
                let host_bits = if net.is_ipv4() { 32 } else { 128 };
                let net_text = if *prefix == host_bits {
                    net.to_string()
                } else {
                    format!("{net}/{prefix}")
                };
                match (port, net) {
                    (None, _) => f.write_str(&net_text),
                    (Some(p), IpAddr::V6(_)) => write!(f, "[{net_text}]:{p}"),
                    (Some(p), IpAddr::V4(_)) => write!(f, "{net_text}:{p}"),
                }
            }
        }
    }
}

impl FromStr for Matcher {
    type Err = String;

    /// `tls:NAME`, `ADDR`, `ADDR/PREFIX`, `ADDR:PORT`, `[V6]:PORT`,
    /// `ADDR/PREFIX:PORT` or `[V6/PREFIX]:PORT`.
    fn from_str(s: &str) -> Result<Matcher, String> {
        if let Some(name) = s.strip_prefix("tls:") {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'*');
            return if ok {
                Ok(Matcher::TlsName(name.to_ascii_lowercase()))
            } else {
                Err(format!("'{name}' is not a host name"))
            };
        }
        let bad = || format!("'{s}' is not ADDRESS[/PREFIX][:PORT] or tls:NAME");
        let (net_text, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (inner, port)
        } else if s.matches(':').count() == 1 {
            let (a, p) = s.split_once(':').ok_or_else(bad)?;
            (a, Some(p.parse::<u16>().map_err(|_| bad())?))
        } else {
            (s, None)
        };
        if port == Some(0) {
            return Err(format!("'{s}': port 0 names no port"));
        }
        let (addr, prefix) = match net_text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (net_text, None),
        };
        let net = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let host_bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(host_bits);
        if prefix > host_bits {
            return Err(format!("'{s}': a prefix of {prefix} bits is too long"));
        }
        Ok(Matcher::Addr { net, prefix, port })
    }
}

/// One trusted element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// Its name, unique in the table (logs, metrics, `ctl`).
    pub name: String,
    pub kind: Kind,
    pub matcher: Matcher,
    /// A peer farm's SIP domains (lower case), which this farm's
    /// subscribers may call; empty for every other kind.
    pub domains: Vec<String>,
    /// A peer farm's requests per second each supernode takes from it
    /// (0: no limit); beyond it, 503 with Retry-After.
    pub rate: u32,
    /// A peer farm outside this farm's trust domain (RFC 3325): the
    /// identities it asserts are removed, as a phone's are.
    pub strip_identity: bool,
}

impl Element {
    /// Whether it vouches for the users it sends for (see
    /// [`TrustTable::vouches`]).
    pub fn vouches(&self) -> bool {
        self.kind != Kind::LoadGenerator
    }

    /// `NAME=MATCHER` (kind `load-generator` unless `KIND:` prefixes the
    /// name), and for a peer farm `@DOMAIN[,DOMAIN…]`: the form of
    /// `--trusted`.
    pub fn parse_flag(s: &str) -> Result<Element, String> {
        let (name, matcher) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=ADDRESS or KIND:NAME=ADDRESS"))?;
        let (kind, name) = match name.split_once(':') {
            Some((k, n)) => (k.parse()?, n),
            None => (Kind::LoadGenerator, name),
        };
        check_name(name)?;
        let (matcher, domains) = match matcher.split_once('@') {
            Some((m, d)) => (m, d.split(',').map(str::to_string).collect()),
            None => (matcher, Vec::new()),
        };
        let matcher = matcher.parse()?;
        let domains = check_domains(kind, &matcher, &domains)?;
        Ok(Element {
            name: name.to_string(),
            kind,
            matcher,
            domains,
            rate: 0,
            strip_identity: false,
        })
    }

    /// Whether it is a peer farm serving `domain` (lower case).
    pub fn serves(&self, domain: &str) -> bool {
        self.kind == Kind::PeerFarm && self.domains.iter().any(|d| d == domain)
    }
}

/// The most domains one peer farm may name.
pub const MAX_DOMAINS: usize = 16;

/// The highest per-supernode rate a peer farm may be given (requests per
/// second).
pub const MAX_PEER_RATE: u32 = 100_000;

/// A peer farm's rate limit and identity policy, checked: only a peer
/// farm has them.
pub fn check_peer_policy(kind: Kind, rate: u32, strip_identity: bool) -> Result<(), String> {
    if kind != Kind::PeerFarm && (rate != 0 || strip_identity) {
        return Err(format!(
            "a rate limit and identity policy are a peer-farm's, not a {}'s",
            kind.as_str()
        ));
    }
    if rate > MAX_PEER_RATE {
        return Err(format!(
            "{rate} requests per second; the limit is {MAX_PEER_RATE}"
        ));
    }
    Ok(())
}

/// The domains an element names, checked and in lower case: only a peer
/// farm, recognised by its TLS certificate (a source address proves
/// nothing across domains), names any; each is a DNS name, named once.
pub fn check_domains(
    kind: Kind,
    matcher: &Matcher,
    domains: &[String],
) -> Result<Vec<String>, String> {
    if domains.is_empty() {
        return Ok(Vec::new());
    }
    if kind != Kind::PeerFarm {
        return Err(format!(
            "only a peer-farm serves domains, not a {}",
            kind.as_str()
        ));
    }
    if !matches!(matcher, Matcher::TlsName(_)) {
        return Err("a peer farm serving domains is recognised by tls:NAME".into());
    }
    if domains.len() > MAX_DOMAINS {
        return Err(format!(
            "{} domains; the limit is {MAX_DOMAINS}",
            domains.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(domains.len());
    for d in domains {
        let d = d.to_ascii_lowercase();
        let labels_ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                (1..=63).contains(&l.len())
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !labels_ok {
            return Err(format!("'{d}' is not a domain name"));
        }
        if out.contains(&d) {
            return Err(format!("'{d}' is named twice"));
        }
        out.push(d);
    }
    Ok(out)
}

/// A name is 1–64 characters of letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a name (1-64 letters, digits, '-', '_' or '.')"
        ))
    }
}

/// The trusted elements a supernode knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustTable {
    elements: Vec<Element>,
}

impl TrustTable {
    pub fn new(elements: Vec<Element>) -> TrustTable {
        TrustTable { elements }
    }

    /// The element a request from `peer` (over a connection whose client
    /// certificate names `tls_name`) comes from, if it is trusted.
    pub fn lookup(&self, peer: SocketAddr, tls_name: Option<&str>) -> Option<&Element> {
        self.elements
            .iter()
            .find(|e| e.matcher.matches(peer, tls_name))
    }

    /// [`TrustTable::lookup`] for a connection whose client certificate
    /// carries `names` (any of them may be the element's).
    pub fn lookup_any(&self, peer: SocketAddr, names: &[String]) -> Option<&Element> {
        names
            .iter()
            .find_map(|n| self.lookup(peer, Some(n)))
            .or_else(|| self.lookup(peer, None))
    }

    /// The peer farm that serves `domain` (compared case-insensitively).
    pub fn peer_for(&self, domain: &str) -> Option<&Element> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        self.elements.iter().find(|e| e.serves(&d))
    }

    pub fn is_trusted(&self, peer: SocketAddr, tls_name: Option<&str>) -> bool {
        self.lookup(peer, tls_name).is_some()
    }

    /// Whether the element at `peer` vouches for the users it sends for,
    /// so that the phone rules (authentication, identity) do not apply to
    /// its requests: every kind but a load generator, which stands in for
    /// phones and is held to their rules, apart from the per-source limits
    /// and bans (a benchmark measures the path phones take).
    pub fn vouches(&self, peer: SocketAddr, tls_name: Option<&str>) -> bool {
        self.lookup(peer, tls_name).is_some_and(Element::vouches)
    }

    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matchers_parse_and_print_back() {
        for s in [
            "192.0.2.10",
            "192.0.2.0/24",
            "192.0.2.10:5080",
            "192.0.2.0/24:5080",
            "2001:db8::1",
            "2001:db8::/32",
            "[2001:db8::1]:5080",
            "[2001:db8::/32]:5080",
            "tls:gw.example.net",
        ] {
            let m: Matcher = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(m.to_string(), s);
        }
        for bad in [
            "",
            "gw.example.net",
            "192.0.2.1/33",
            "192.0.2.1:0",
            "192.0.2.1:99999",
            "[2001:db8::1",
            "[::1]x",
            "tls:",
            "tls:bad name",
            "2001:db8::1/129",
        ] {
            assert!(bad.parse::<Matcher>().is_err(), "{bad} parsed");
        }
        // Brackets without a port are an address alone.
        let bracketed: Matcher = "[2001:db8::1]".parse().unwrap();
        assert_eq!(bracketed.to_string(), "2001:db8::1");
    }

    #[test]
    fn lookups_match_network_port_and_tls_name() {
        let t = TrustTable::new(vec![
            Element::parse_flag("gateway:gw=192.0.2.0/24:5080").unwrap(),
            Element::parse_flag("load=127.0.0.1").unwrap(),
            Element::parse_flag("front-end:pcscf=tls:pcscf.example.net").unwrap(),
            Element::parse_flag("v6=2001:db8::/48").unwrap(),
        ]);
        assert_eq!((t.len(), t.is_empty()), (4, false));
        assert_eq!(t.elements()[3].name, "v6");
        let none = TrustTable::new(Vec::new());
        assert_eq!((none.len(), none.is_empty()), (0, true));
        assert_eq!(t.lookup(sa("192.0.2.77:5080"), None).unwrap().name, "gw");
        assert_eq!(
            t.lookup(sa("192.0.2.77:5080"), None).unwrap().kind,
            Kind::Gateway
        );
        assert!(!t.is_trusted(sa("192.0.2.77:5060"), None), "another port");
        assert!(!t.is_trusted(sa("192.0.3.1:5080"), None), "another network");
        assert!(t.is_trusted(sa("127.0.0.1:40000"), None));
        assert!(!t.is_trusted(sa("127.0.0.2:40000"), None));
        assert!(t.is_trusted(sa("[::ffff:127.0.0.1]:1"), None), "v4-mapped");
        assert!(t.is_trusted(sa("[2001:db8:0:ffff::1]:1"), None));
        assert!(!t.is_trusted(sa("[2001:db9::1]:1"), None));
        assert!(t.is_trusted(sa("198.51.100.1:5061"), Some("PCSCF.example.net")));
        assert!(!t.is_trusted(sa("198.51.100.1:5061"), Some("evil.example.net")));
        assert!(!t.is_trusted(sa("198.51.100.1:5061"), None));
        assert!(
            TrustTable::default()
                .lookup(sa("127.0.0.1:1"), None)
                .is_none()
        );
    }

    #[test]
    fn flags_name_what_is_wrong() {
        assert!(
            Element::parse_flag("nameless")
                .unwrap_err()
                .contains("NAME=ADDRESS")
        );
        assert!(
            Element::parse_flag("x y=127.0.0.1")
                .unwrap_err()
                .contains("not a name")
        );
        assert!(
            Element::parse_flag("robot:x=127.0.0.1")
                .unwrap_err()
                .contains("unknown kind")
        );
        assert!(
            Element::parse_flag("x=localhost")
                .unwrap_err()
                .contains("ADDRESS")
        );
        assert_eq!(
            "gateway".parse::<Kind>().unwrap(),
            Kind::Gateway,
            "kinds parse from their labels"
        );
        for (bad, why) in [
            ("gateway:g=tls:g.test@g.test", "only a peer-farm"),
            ("peer-farm:b=127.0.0.1@b.test", "tls:NAME"),
            ("peer-farm:b=tls:b.test@b..test", "not a domain name"),
            ("peer-farm:b=tls:b.test@-b.test", "not a domain name"),
            ("peer-farm:b=tls:b.test@b.test,B.test", "named twice"),
        ] {
            let e = Element::parse_flag(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_peer_farm_is_found_by_the_domains_it_serves() {
        let t = TrustTable::new(vec![
            Element::parse_flag("front-end:pcscf=tls:b.test").unwrap(),
            Element::parse_flag("peer-farm:b=tls:sbc.b.test@b.test,B2.test").unwrap(),
        ]);
        assert_eq!(t.elements()[1].domains, ["b.test", "b2.test"]);
        assert_eq!(t.peer_for("B.TEST.").unwrap().name, "b");
        assert_eq!(t.peer_for("b2.test").unwrap().name, "b");
        assert!(t.peer_for("c.test").is_none());
        assert!(t.peer_for("test").is_none(), "no suffix match");
    }
}
