//! Validation of untrusted API input, once, at the edge.
//!
//! Every function returns the value in the form the store keeps (public
//! identities canonicalised with [`ringmesh_sip::aor::Aor`]) or a
//! [`FieldError`] naming the field at fault, which the service turns into
//! `INVALID_ARGUMENT` (`ringmesh_provisioning::status`). The CLI uses the same functions
//! to refuse bad input before it reaches the network.

use std::net::IpAddr;

use ringmesh_proto::provisioning::{
    Barring, ConditionType, DefaultHandling, ImplicitSet, ServiceProfile, SessionCase, Subscriber,
    TrustedElement, TrustedElementKind, trusted_element,
};
use ringmesh_proxy::trust::{Element, Kind, Matcher};
use ringmesh_sip::aor::Aor;

/// Longest private identity, password, reason or header value, in bytes.
pub const MAX_FIELD: usize = 256;
/// Longest public identity, in bytes.
pub const MAX_PUBLIC_ID: usize = 512;
/// Most public identities of one subscriber.
pub const MAX_PUBLIC_IDS: usize = 100;
/// Most filter criteria in one service profile.
pub const MAX_FILTER_CRITERIA: usize = 64;
/// Largest page of ListSubscribers.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The page size when none is given.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most trusted elements in the table: every supernode holds all of them
/// and looks a request's source up in them.
pub const MAX_TRUSTED_ELEMENTS: usize = 1000;
/// Shortest prefix of a trusted IPv4 network: a /8 is already 16 million
/// addresses; anything wider is a typo, never a real front end.
pub const MIN_TRUSTED_PREFIX_V4: u8 = 8;
/// Shortest prefix of a trusted IPv6 network (a /32 is a whole provider's
/// allocation).
pub const MIN_TRUSTED_PREFIX_V6: u8 = 32;

/// A bad field: its name (as in the .proto, with an index for repeated
/// fields) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A private identity: 1 to 256 bytes, printable, no spaces, no '/'.
pub fn private_id(field: &str, id: &str) -> Result<String, FieldError> {
    if id.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if id.len() > MAX_FIELD {
        return Err(bad(
            field,
            format!("is {} bytes long; the limit is {MAX_FIELD}", id.len()),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
    {
        return Err(bad(
            field,
            format!("'{id}' contains {c:?}; spaces, control characters and '/' are not allowed"),
        ));
    }
    Ok(id.to_string())
}

/// A public identity (sip:, sips: or tel: URI) in canonical form.
pub fn public_id(field: &str, id: &str) -> Result<String, FieldError> {
    if id.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if id.len() > MAX_PUBLIC_ID {
        return Err(bad(
            field,
            format!("is {} bytes long; the limit is {MAX_PUBLIC_ID}", id.len()),
        ));
    }
    let aor = Aor::parse(id.as_bytes())
        .map_err(|e| bad(field, format!("'{id}' is not a valid public identity: {e}")))?;
    if aor.as_bytes().starts_with(b"sip:") && aor.user().is_none() {
        return Err(bad(
            field,
            format!("'{id}' has no user part (expected sip:user@domain)"),
        ));
    }
    String::from_utf8(aor.as_bytes().to_vec())
        .map_err(|_| bad(field, format!("'{id}' is not UTF-8 once unescaped")))
}

/// The public identities of a subscriber: at least one, no duplicates.
pub fn public_ids(ids: &[String]) -> Result<Vec<String>, FieldError> {
    if ids.is_empty() {
        return Err(bad(
            "public_ids",
            "needs at least one public identity (e.g. sip:alice@example.com)",
        ));
    }
    if ids.len() > MAX_PUBLIC_IDS {
        return Err(bad(
            "public_ids",
            format!("{} identities; the limit is {MAX_PUBLIC_IDS}", ids.len()),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let canon = public_id(&format!("public_ids[{i}]"), id)?;
        if out.contains(&canon) {
            return Err(bad(
                format!("public_ids[{i}]"),
                format!("'{id}' is listed twice (as {canon})"),
            ));
        }
        out.push(canon);
    }
    Ok(out)
}

/// Implicit registration sets over already validated `public_ids`.
pub fn implicit_sets(
    sets: &[ImplicitSet],
    public_ids: &[String],
) -> Result<Vec<ImplicitSet>, FieldError> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        if set.public_ids.is_empty() {
            return Err(bad(format!("implicit_sets[{i}]"), "is empty"));
        }
        let mut members = Vec::with_capacity(set.public_ids.len());
        for (j, id) in set.public_ids.iter().enumerate() {
            let field = format!("implicit_sets[{i}].public_ids[{j}]");
            let canon = public_id(&field, id)?;
            if !public_ids.contains(&canon) {
                return Err(bad(
                    field,
                    format!("'{id}' is not one of the subscriber's public_ids"),
                ));
            }
            if seen.contains(&canon) {
                return Err(bad(field, format!("'{id}' is already in an implicit set")));
            }
            seen.push(canon.clone());
            members.push(canon);
        }
        out.push(ImplicitSet {
            public_ids: members,
        });
    }
    Ok(out)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Compiles a filter criterion's regular expression: bounded in length and
/// in the automaton it builds (a supernode compiles every profile it
/// caches).
pub fn criterion_regex(field: &str, pattern: &str) -> Result<regex::Regex, FieldError> {
    if pattern.len() > MAX_FIELD || pattern.chars().any(char::is_control) {
        return Err(bad(field, "is too long or has control characters"));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 16)
        .build()
        .map_err(|e| bad(field, format!("is not a regular expression: {e}")))
}

/// Rewrites the deprecated `contains` of header conditions as the
/// equivalent `regex` (escaped, case-insensitive). The store applies it to
/// what it reads, the API to what it is given.
pub fn migrate_profile(p: &mut ServiceProfile) {
    for h in p.filter_criteria.iter_mut().flat_map(|fc| &mut fc.headers) {
        if !h.contains.is_empty() {
            if h.regex.is_empty() {
                h.regex = format!("(?i){}", regex::escape(&h.contains));
            }
            h.contains.clear();
        }
    }
}

/// A service profile: bounded, unique priorities, valid triggers and
/// application-server URIs whose host is an IP address. Header conditions
/// given with the deprecated `contains` come back as `regex`.
pub fn service_profile(p: Option<&ServiceProfile>) -> Result<Option<ServiceProfile>, FieldError> {
    let Some(p) = p else { return Ok(None) };
    if p.filter_criteria.len() > MAX_FILTER_CRITERIA {
        return Err(bad(
            "service_profile.filter_criteria",
            format!(
                "{} criteria; the limit is {MAX_FILTER_CRITERIA}",
                p.filter_criteria.len()
            ),
        ));
    }
    let mut p = p.clone();
    migrate_profile(&mut p);
    let mut priorities = Vec::new();
    for (i, fc) in p.filter_criteria.iter().enumerate() {
        let f = |name: &str| format!("service_profile.filter_criteria[{i}].{name}");
        if priorities.contains(&fc.priority) {
            return Err(bad(
                f("priority"),
                format!("{} is used by another criterion", fc.priority),
            ));
        }
        priorities.push(fc.priority);
        if !fc.method.is_empty()
            && (!is_token(&fc.method) || fc.method != fc.method.to_ascii_uppercase())
        {
            return Err(bad(
                f("method"),
                format!("'{}' is not an upper-case SIP method token", fc.method),
            ));
        }
        if !fc.request_uri.is_empty() {
            criterion_regex(&f("request_uri"), &fc.request_uri)?;
        }
        for (j, h) in fc.headers.iter().enumerate() {
            if !is_token(&h.header) {
                return Err(bad(
                    f(&format!("headers[{j}].header")),
                    format!("'{}' is not a header name", h.header),
                ));
            }
            criterion_regex(&f(&format!("headers[{j}].regex")), &h.regex)?;
        }
        let uri = ringmesh_sip::Uri::parse(fc.application_server.as_bytes())
            .ok()
            .filter(|u| u.is_sip_or_sips());
        match uri.as_ref().map(|u| u.host().and_then(|h| h.ip())) {
            None => {
                return Err(bad(
                    f("application_server"),
                    format!("'{}' is not a sip: or sips: URI", fc.application_server),
                ));
            }
            Some(None) => {
                return Err(bad(
                    f("application_server"),
                    format!(
                        "'{}' does not name its host by IP address",
                        fc.application_server
                    ),
                ));
            }
            Some(Some(_)) => {}
        }
        if DefaultHandling::try_from(fc.default_handling).is_err() {
            return Err(bad(
                f("default_handling"),
                format!("{} is not a known value", fc.default_handling),
            ));
        }
        if SessionCase::try_from(fc.session_case).is_err() {
            return Err(bad(
                f("session_case"),
                format!("{} is not a known value", fc.session_case),
            ));
        }
        if ConditionType::try_from(fc.condition_type).is_err() {
            return Err(bad(
                f("condition_type"),
                format!("{} is not a known value", fc.condition_type),
            ));
        }
    }
    p.filter_criteria.sort_by_key(|fc| fc.priority);
    Ok(Some(p))
}

/// A clear-text password: 1 to 256 bytes.
pub fn password(pw: &str) -> Result<&str, FieldError> {
    if pw.is_empty() {
        return Err(bad("password", "must not be empty"));
    }
    if pw.len() > MAX_FIELD {
        return Err(bad(
            "password",
            format!("is {} bytes long; the limit is {MAX_FIELD}", pw.len()),
        ));
    }
    Ok(pw)
}

/// A barring state.
pub fn barring(barred: bool, reason: &str) -> Result<Barring, FieldError> {
    if reason.len() > MAX_FIELD || reason.chars().any(char::is_control) {
        return Err(bad(
            "reason",
            format!("must be at most {MAX_FIELD} bytes without control characters"),
        ));
    }
    Ok(Barring {
        barred,
        reason: if barred {
            reason.to_string()
        } else {
            String::new()
        },
    })
}

/// A page size: 0 means the default; 1 to 1000.
pub fn page_size(n: u32) -> Result<usize, FieldError> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        1..=MAX_PAGE_SIZE => Ok(n as usize),
        _ => Err(bad(
            "page_size",
            format!("{n} is out of range (1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE})"),
        )),
    }
}

/// A subscriber's region: 0 to 63 of a-z, 0-9 and '-'.
pub fn region(field: &str, r: &str) -> Result<String, FieldError> {
    let ok = r.len() <= 63
        && r.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(r.to_string())
    } else {
        Err(bad(
            field,
            format!("{r:?} is not a region (0 to 63 of a-z, 0-9 and '-')"),
        ))
    }
}

/// A new subscriber from CreateSubscriber, without credentials yet.
pub fn new_subscriber(s: Option<&Subscriber>) -> Result<Subscriber, FieldError> {
    let s = s.ok_or_else(|| bad("subscriber", "is required"))?;
    let private_id = private_id("subscriber.private_id", &s.private_id)?;
    let public_ids = public_ids(&s.public_ids).map_err(|e| prefixed("subscriber", e))?;
    let implicit_sets =
        implicit_sets(&s.implicit_sets, &public_ids).map_err(|e| prefixed("subscriber", e))?;
    let service_profile =
        service_profile(s.service_profile.as_ref()).map_err(|e| prefixed("subscriber", e))?;
    let barring = match &s.barring {
        Some(b) => {
            Some(barring(b.barred, &b.reason).map_err(|e| prefixed("subscriber.barring", e))?)
        }
        None => Some(Barring::default()),
    };
    Ok(Subscriber {
        private_id,
        public_ids,
        implicit_sets,
        service_profile,
        barring,
        region: region("subscriber.region", &s.region)?,
        ..Default::default()
    })
}

fn prefixed(prefix: &str, e: FieldError) -> FieldError {
    bad(format!("{prefix}.{}", e.field), e.message)
}

/// Encodes the position after `last` as an opaque page token.
pub fn page_token(last: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("p1\0{last}"))
}

/// Decodes a page token into the private identity to continue after.
pub fn parse_page_token(token: &str) -> Result<Option<String>, FieldError> {
    use base64::Engine as _;
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("p1\0").map(str::to_string))
        .map(Some)
        .ok_or_else(|| {
            bad(
                "page_token",
                "is not a token this service issued (pass next_page_token back unchanged)",
            )
        })
}

/// The name of a trusted element: 1 to 64 letters, digits, `-`, `_`, `.`
/// ([`ringmesh_proxy::trust::check_name`]).
pub fn trusted_name(field: &str, name: &str) -> Result<String, FieldError> {
    ringmesh_proxy::trust::check_name(name).map_err(|m| bad(field, m))?;
    Ok(name.to_string())
}

/// The kind of a trusted element, from its wire value; UNSPECIFIED and
/// unknown values are refused.
pub fn trusted_kind(field: &str, kind: i32) -> Result<Kind, FieldError> {
    match TrustedElementKind::try_from(kind) {
        Ok(TrustedElementKind::FrontEnd) => Ok(Kind::FrontEnd),
        Ok(TrustedElementKind::AppServer) => Ok(Kind::AppServer),
        Ok(TrustedElementKind::PeerFarm) => Ok(Kind::PeerFarm),
        Ok(TrustedElementKind::Gateway) => Ok(Kind::Gateway),
        Ok(TrustedElementKind::LoadGenerator) => Ok(Kind::LoadGenerator),
        Ok(TrustedElementKind::Unspecified) => Err(bad(
            field,
            "is required (front-end, app-server, peer-farm, gateway or load-generator)",
        )),
        Err(_) => Err(bad(field, format!("{kind} is not a known value"))),
    }
}

/// The wire value of a kind.
pub fn trusted_kind_to_pb(kind: Kind) -> TrustedElementKind {
    match kind {
        Kind::FrontEnd => TrustedElementKind::FrontEnd,
        Kind::AppServer => TrustedElementKind::AppServer,
        Kind::PeerFarm => TrustedElementKind::PeerFarm,
        Kind::Gateway => TrustedElementKind::Gateway,
        Kind::LoadGenerator => TrustedElementKind::LoadGenerator,
    }
}

/// A trusted source address: `ADDRESS[/PREFIX][:PORT]` (the
/// [`Matcher`] syntax, without `tls:`). A network is at least a
/// [`MIN_TRUSTED_PREFIX_V4`] or [`MIN_TRUSTED_PREFIX_V6`] and has no host
/// bits set: `0.0.0.0/0`, `10.0.0.0/4` or `192.0.2.7/24` are typos that
/// would trust far more than meant.
pub fn trusted_address(field: &str, addr: &str) -> Result<Matcher, FieldError> {
    if addr.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if addr.len() > 64 {
        return Err(bad(
            field,
            format!("is {} bytes long; the limit is 64", addr.len()),
        ));
    }
    if addr.starts_with("tls:") {
        return Err(bad(
            field,
            format!("'{addr}' is a TLS name: give it as tls_name"),
        ));
    }
    let m: Matcher = addr.parse().map_err(|e: String| bad(field, e))?;
    let Matcher::Addr { net, prefix, .. } = &m else {
        return Err(bad(
            field,
            format!("'{addr}' is not ADDRESS[/PREFIX][:PORT]"),
        ));
    };
    let (min, bits) = match net {
        IpAddr::V4(_) => (MIN_TRUSTED_PREFIX_V4, 32),
        IpAddr::V6(_) => (MIN_TRUSTED_PREFIX_V6, 128),
    };
    if *prefix < min {
        return Err(bad(
            field,
            format!(
                "'{addr}': a /{prefix} trusts too much of the internet; the shortest prefix is /{min}"
            ),
        ));
    }
    let host = match net {
        IpAddr::V4(a) => u128::from(u32::from(*a)) & (u128::from(u32::MAX) >> prefix),
        IpAddr::V6(a) => u128::from(*a) & u128::MAX.checked_shr(u32::from(*prefix)).unwrap_or(0),
    };
    if host != 0 {
        return Err(bad(
            field,
            format!(
                "'{addr}' has host bits set beyond /{prefix}: give the network, or the host as a /{bits}"
            ),
        ));
    }
    Ok(m)
}

/// A TLS client-certificate name: a DNS name, `*` only as a whole first
/// label followed by at least two labels.
pub fn trusted_tls_name(field: &str, name: &str) -> Result<Matcher, FieldError> {
    if name.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    let m: Matcher = format!("tls:{name}")
        .parse()
        .map_err(|e: String| bad(field, e))?;
    let labels: Vec<&str> = name.split('.').collect();
    if let Some(l) = labels.iter().find(|l| l.is_empty() || l.len() > 63) {
        return Err(bad(
            field,
            format!("'{name}' has a label of {} characters (1 to 63)", l.len()),
        ));
    }
    let wildcard = labels.iter().position(|l| l.contains('*'));
    if let Some(i) = wildcard
        && (i != 0 || labels[0] != "*" || labels.len() < 3)
    {
        return Err(bad(
            field,
            format!("'{name}': '*' may only be the whole first label of a name with two more"),
        ));
    }
    Ok(m)
}

/// The description of a trusted element: at most 256 bytes of text.
pub fn description(field: &str, text: &str) -> Result<String, FieldError> {
    if text.len() > MAX_FIELD {
        return Err(bad(
            field,
            format!("is {} bytes long; the limit is {MAX_FIELD}", text.len()),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(text.to_string())
}

/// How an element is matched, as the API carries it.
pub fn matcher_to_pb(m: &Matcher) -> trusted_element::Matcher {
    match m {
        Matcher::TlsName(n) => trusted_element::Matcher::TlsName(n.clone()),
        addr @ Matcher::Addr { .. } => trusted_element::Matcher::Address(addr.to_string()),
    }
}

/// An element as the proxy core uses it, from the API message; every
/// field is checked (fields named as under `prefix`, e.g. `element.kind`).
pub fn trusted_element(prefix: &str, e: &TrustedElement) -> Result<Element, FieldError> {
    let f = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let name = trusted_name(&f("name"), &e.name)?;
    let kind = trusted_kind(&f("kind"), e.kind)?;
    let matcher = match &e.matcher {
        Some(trusted_element::Matcher::Address(a)) => trusted_address(&f("address"), a)?,
        Some(trusted_element::Matcher::TlsName(n)) => trusted_tls_name(&f("tls_name"), n)?,
        None => return Err(bad(f("matcher"), "give address or tls_name")),
    };
    description(&f("description"), &e.description)?;
    let domains = ringmesh_proxy::trust::check_domains(kind, &matcher, &e.domains)
        .map_err(|m| bad(f("domains"), m))?;
    ringmesh_proxy::trust::check_peer_policy(kind, e.rate_limit, e.strip_identity)
        .map_err(|m| bad(f("rate_limit"), m))?;
    Ok(Element {
        name,
        kind,
        matcher,
        domains,
        rate: e.rate_limit,
        strip_identity: e.strip_identity,
    })
}

/// A new trusted element from CreateTrustedElement, in the form the store
/// keeps (canonical matcher; no revision or time yet).
pub fn new_trusted_element(e: Option<&TrustedElement>) -> Result<TrustedElement, FieldError> {
    let e = e.ok_or_else(|| bad("element", "is required"))?;
    let el = trusted_element("element", e)?;
    Ok(trusted_element_to_pb(&el, &e.description))
}

/// The API message of an element (no revision or time).
pub fn trusted_element_to_pb(e: &Element, description: &str) -> TrustedElement {
    TrustedElement {
        name: e.name.clone(),
        kind: trusted_kind_to_pb(e.kind) as i32,
        matcher: Some(matcher_to_pb(&e.matcher)),
        description: description.to_string(),
        revision: 0,
        created_unix_ms: 0,
        domains: e.domains.clone(),
        rate_limit: e.rate,
        strip_identity: e.strip_identity,
    }
}

/// A field error is the caller's fault: `INVALID_ARGUMENT`, naming it.
impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_proto::provisioning::FilterCriteria;

    #[test]
    fn public_ids_are_canonical_and_unique() {
        let ids = public_ids(&[
            "sips:Alice@Example.COM:5061;transport=tls".into(),
            "tel:+1-555-0100".into(),
        ])
        .unwrap();
        assert_eq!(ids, ["sip:Alice@example.com", "tel:+15550100"]);
        let e = public_ids(&["sip:a@x".into(), "sip:a@X".into()]).unwrap_err();
        assert_eq!(e.field, "public_ids[1]");
        let e = public_ids(&["sip:a@x".into(), "mailto:a@x".into()]).unwrap_err();
        assert_eq!(e.field, "public_ids[1]");
        assert!(
            public_ids(&[])
                .unwrap_err()
                .to_string()
                .starts_with("public_ids:")
        );
        assert_eq!(
            public_ids(&["sip:example.com".into()]).unwrap_err().field,
            "public_ids[0]"
        );
    }

    #[test]
    fn private_ids() {
        assert!(private_id("private_id", "alice@ringmesh.test").is_ok());
        assert_eq!(
            private_id("private_id", "").unwrap_err().field,
            "private_id"
        );
        assert!(private_id("private_id", "a b").is_err());
        assert!(private_id("private_id", "a/b").is_err());
        assert!(private_id("private_id", &"x".repeat(257)).is_err());
    }

    #[test]
    fn implicit_sets_must_be_subsets() {
        let ids = public_ids(&["sip:a@x".into(), "tel:+1555".into()]).unwrap();
        let ok = implicit_sets(
            &[ImplicitSet {
                public_ids: vec!["sip:a@X".into(), "tel:+1-555".into()],
            }],
            &ids,
        )
        .unwrap();
        assert_eq!(ok[0].public_ids, ids);
        let e = implicit_sets(
            &[ImplicitSet {
                public_ids: vec!["sip:b@x".into()],
            }],
            &ids,
        )
        .unwrap_err();
        assert_eq!(e.field, "implicit_sets[0].public_ids[0]");
    }

    #[test]
    fn profiles() {
        let fc = |prio, method: &str, as_uri: &str| FilterCriteria {
            priority: prio,
            method: method.into(),
            application_server: as_uri.into(),
            ..Default::default()
        };
        let p = ServiceProfile {
            filter_criteria: vec![
                fc(2, "MESSAGE", "sip:as2@10.0.0.2"),
                fc(1, "", "sips:as1@[::1]"),
            ],
        };
        let v = service_profile(Some(&p)).unwrap().unwrap();
        assert_eq!(v.filter_criteria[0].priority, 1, "sorted by priority");
        let p = ServiceProfile {
            filter_criteria: vec![fc(1, "invite", "sip:as@10.0.0.1")],
        };
        assert_eq!(
            service_profile(Some(&p)).unwrap_err().field,
            "service_profile.filter_criteria[0].method"
        );
        let p = ServiceProfile {
            filter_criteria: vec![fc(1, "", "http://as")],
        };
        assert!(
            service_profile(Some(&p))
                .unwrap_err()
                .field
                .ends_with("application_server")
        );
        let p = ServiceProfile {
            filter_criteria: vec![fc(1, "", "sip:a@10.0.0.1"), fc(1, "", "sip:b@10.0.0.1")],
        };
        assert!(
            service_profile(Some(&p))
                .unwrap_err()
                .field
                .ends_with("[1].priority")
        );
        // The call path resolves no names.
        let p = ServiceProfile {
            filter_criteria: vec![fc(1, "", "sip:as.example.net")],
        };
        let e = service_profile(Some(&p)).unwrap_err();
        assert!(e.message.contains("IP address"), "{e}");
        // Regular expressions compile, and a blown-up one is refused.
        let mut bad_re = fc(1, "", "sip:10.0.0.1");
        bad_re.request_uri = "sip:(".into();
        let e = service_profile(Some(&ServiceProfile {
            filter_criteria: vec![bad_re],
        }))
        .unwrap_err();
        assert!(e.field.ends_with("request_uri"), "{e}");
        let mut huge = fc(1, "", "sip:10.0.0.1");
        huge.request_uri = "(a{1,100}){1,100}".into();
        let e = service_profile(Some(&ServiceProfile {
            filter_criteria: vec![huge],
        }))
        .unwrap_err();
        assert!(e.message.contains("regular expression"), "{e}");
    }

    #[test]
    fn the_deprecated_substring_becomes_an_escaped_case_insensitive_regex() {
        let mut fc = FilterCriteria {
            priority: 1,
            application_server: "sip:10.0.0.1".into(),
            headers: vec![ringmesh_proto::provisioning::HeaderMatch {
                header: "Accept-Contact".into(),
                contains: "+g.3gpp.icsi-ref=\"urn".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = service_profile(Some(&ServiceProfile {
            filter_criteria: vec![fc.clone()],
        }))
        .unwrap()
        .unwrap();
        let h = &v.filter_criteria[0].headers[0];
        assert!(h.contains.is_empty());
        let re = regex::Regex::new(&h.regex).unwrap();
        assert!(re.is_match("*;+G.3GPP.ICSI-REF=\"URN:x\""));
        assert!(!re.is_match("+gX3gpp.icsi-ref=\"urn"), "the dot is literal");
        // A stored criterion that has both keeps its regex.
        fc.headers[0].regex = "^x$".into();
        let mut p = ServiceProfile {
            filter_criteria: vec![fc],
        };
        migrate_profile(&mut p);
        assert_eq!(p.filter_criteria[0].headers[0].regex, "^x$");
        assert!(p.filter_criteria[0].headers[0].contains.is_empty());
    }

    #[test]
    fn trusted_addresses_refuse_what_trusts_too_much() {
        for ok in [
            "192.0.2.10",
            "192.0.2.0/24",
            "10.0.0.0/8",
            "192.0.2.10:5080",
            "2001:db8::/32",
            "[2001:db8::1]:5060",
            "::ffff:192.0.2.1",
        ] {
            assert!(trusted_address("a", ok).is_ok(), "{ok}");
        }
        assert_eq!(
            trusted_address("a", "::ffff:192.0.2.1")
                .unwrap()
                .to_string(),
            "192.0.2.1",
            "canonical"
        );
        for (bad_addr, why) in [
            ("0.0.0.0/0", "too much"),
            ("10.0.0.0/7", "too much"),
            ("::/0", "too much"),
            ("2001:db8::/31", "too much"),
            ("192.0.2.7/24", "host bits"),
            ("2001:db8::1/64", "host bits"),
            ("tls:gw.example.net", "tls_name"),
            ("gw.example.net", "ADDRESS"),
            ("192.0.2.1:0", "port 0"),
            ("", "empty"),
        ] {
            let e = trusted_address("element.address", bad_addr).unwrap_err();
            assert_eq!(e.field, "element.address");
            assert!(e.message.contains(why), "{bad_addr}: {e}");
        }
    }

    #[test]
    fn trusted_tls_names() {
        assert_eq!(
            trusted_tls_name("t", "PCSCF.Example.NET")
                .unwrap()
                .to_string(),
            "tls:pcscf.example.net"
        );
        assert!(trusted_tls_name("t", "*.example.net").is_ok());
        for bad_name in [
            "",
            "*",
            "*.net",
            "a.*.net",
            "x*.example.net",
            "a..b",
            "bad name",
            "a.b.",
        ] {
            assert!(trusted_tls_name("t", bad_name).is_err(), "{bad_name}");
        }
    }

    #[test]
    fn trusted_elements_convert_and_name_the_field() {
        let e = TrustedElement {
            name: "gw-1".into(),
            kind: TrustedElementKind::Gateway as i32,
            matcher: Some(trusted_element::Matcher::Address(
                "192.0.2.0/24:5080".into(),
            )),
            description: "PSTN gateway".into(),
            ..Default::default()
        };
        let el = trusted_element("", &e).unwrap();
        assert_eq!(
            (el.name.as_str(), el.kind, el.matcher.to_string()),
            ("gw-1", Kind::Gateway, "192.0.2.0/24:5080".to_string())
        );
        assert_eq!(
            new_trusted_element(Some(&e)).unwrap(),
            e,
            "already canonical"
        );
        let field = |e: TrustedElement| new_trusted_element(Some(&e)).unwrap_err().field;
        assert_eq!(
            field(TrustedElement {
                name: "a b".into(),
                ..e.clone()
            }),
            "element.name"
        );
        assert_eq!(
            field(TrustedElement {
                kind: 0,
                ..e.clone()
            }),
            "element.kind"
        );
        assert_eq!(
            field(TrustedElement {
                kind: 99,
                ..e.clone()
            }),
            "element.kind"
        );
        assert_eq!(
            field(TrustedElement {
                matcher: None,
                ..e.clone()
            }),
            "element.matcher"
        );
        assert_eq!(
            field(TrustedElement {
                description: "x".repeat(257),
                ..e.clone()
            }),
            "element.description"
        );
        assert_eq!(
            field(TrustedElement {
                description: "a\nb".into(),
                ..e.clone()
            }),
            "element.description"
        );
        assert_eq!(
            new_trusted_element(None).unwrap_err().field,
            "element",
            "missing"
        );
    }

    #[test]
    fn only_a_peer_farm_known_by_its_certificate_serves_domains() {
        let peer = TrustedElement {
            name: "b".into(),
            kind: TrustedElementKind::PeerFarm as i32,
            matcher: Some(trusted_element::Matcher::TlsName("sbc.b.test".into())),
            domains: vec!["B.test".into(), "b2.test".into()],
            ..Default::default()
        };
        let stored = new_trusted_element(Some(&peer)).unwrap();
        assert_eq!(stored.domains, ["b.test", "b2.test"], "lower case");
        let refused = |e: TrustedElement| new_trusted_element(Some(&e)).unwrap_err();
        let by_address = refused(TrustedElement {
            matcher: Some(trusted_element::Matcher::Address("192.0.2.1".into())),
            ..peer.clone()
        });
        assert_eq!(by_address.field, "element.domains");
        assert!(by_address.to_string().contains("tls:NAME"), "{by_address}");
        let gateway = refused(TrustedElement {
            kind: TrustedElementKind::Gateway as i32,
            ..peer.clone()
        });
        assert!(
            gateway.to_string().contains("only a peer-farm"),
            "{gateway}"
        );
        for bad in ["", "b..test", "b test", "b_test"] {
            let e = refused(TrustedElement {
                domains: vec![bad.into()],
                ..peer.clone()
            });
            assert_eq!(e.field, "element.domains", "{bad}");
        }
        let many = refused(TrustedElement {
            domains: (0..17).map(|i| format!("d{i}.test")).collect(),
            ..peer.clone()
        });
        assert!(many.to_string().contains("limit is 16"), "{many}");
        let limited = TrustedElement {
            rate_limit: 50,
            strip_identity: true,
            ..peer.clone()
        };
        let el = trusted_element("", &limited).unwrap();
        assert_eq!((el.rate, el.strip_identity), (50, true));
        assert_eq!(new_trusted_element(Some(&limited)).unwrap().rate_limit, 50);
        let too_fast = refused(TrustedElement {
            rate_limit: 100_001,
            ..peer.clone()
        });
        assert_eq!(too_fast.field, "element.rate_limit");
        let gateway = refused(TrustedElement {
            kind: TrustedElementKind::Gateway as i32,
            domains: Vec::new(),
            strip_identity: true,
            ..peer
        });
        assert!(gateway.to_string().contains("peer-farm's"), "{gateway}");
    }

    #[test]
    fn pages() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert_eq!(page_size(1001).unwrap_err().field, "page_size");
        let t = page_token("bob");
        assert_eq!(parse_page_token(&t).unwrap().as_deref(), Some("bob"));
        assert_eq!(parse_page_token("").unwrap(), None);
        assert_eq!(parse_page_token("!!").unwrap_err().field, "page_token");
    }
}
