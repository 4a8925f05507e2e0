//! Validation of untrusted API input, once, at the edge (STYLE.md §6).
//!
//! Every function returns the value in the form the store keeps (public
//! identities canonicalised with [`ringmesh_sip::aor::Aor`]) or a
//! [`FieldError`] naming the field at fault, which the service turns into
//! `INVALID_ARGUMENT` ([`crate::status`]). The CLI uses the same functions
//! to refuse bad input before it reaches the network.

use ringmesh_proto::provisioning::{
    Barring, DefaultHandling, FilterCriteria, ImplicitSet, ServiceProfile, SessionCase, Subscriber,
};
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

/// A service profile: bounded, unique priorities, valid triggers and
/// application-server URIs.
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
    let mut out = Vec::with_capacity(p.filter_criteria.len());
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
        for (j, h) in fc.headers.iter().enumerate() {
            if !is_token(&h.header) {
                return Err(bad(
                    f(&format!("headers[{j}].header")),
                    format!("'{}' is not a header name", h.header),
                ));
            }
            if h.contains.len() > MAX_FIELD || h.contains.chars().any(char::is_control) {
                return Err(bad(
                    f(&format!("headers[{j}].contains")),
                    "is too long or has control characters",
                ));
            }
        }
        let uri = ringmesh_sip::Uri::parse(fc.application_server.as_bytes())
            .ok()
            .filter(|u| u.is_sip_or_sips() && u.host().is_some());
        if uri.is_none() {
            return Err(bad(
                f("application_server"),
                format!("'{}' is not a sip: or sips: URI", fc.application_server),
            ));
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
        out.push(FilterCriteria {
            method: fc.method.clone(),
            ..fc.clone()
        });
    }
    out.sort_by_key(|fc| fc.priority);
    Ok(Some(ServiceProfile {
        filter_criteria: out,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

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
            filter_criteria: vec![fc(2, "MESSAGE", "sip:as2@x"), fc(1, "", "sips:as1@x")],
        };
        let v = service_profile(Some(&p)).unwrap().unwrap();
        assert_eq!(v.filter_criteria[0].priority, 1, "sorted by priority");
        let p = ServiceProfile {
            filter_criteria: vec![fc(1, "invite", "sip:as@x")],
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
            filter_criteria: vec![fc(1, "", "sip:a@x"), fc(1, "", "sip:b@x")],
        };
        assert!(
            service_profile(Some(&p))
                .unwrap_err()
                .field
                .ends_with("[1].priority")
        );
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
