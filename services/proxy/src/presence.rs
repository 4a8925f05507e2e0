//! Presence (RFC 3856) as records: each device's published document (RFC
//! 3903) and the presentity's authorisation rules, kept in the record of
//! its AOR beside its bindings and subscriptions, and the composed PIDF
//! document (RFC 3863) watchers are told.
//!
//! - A [`Publication`] is one entry, id `p` + its entity tag: the PIDF
//!   document a device published, until it expires. Each PUBLISH that
//!   changes it replaces the entry under a new tag.
//! - A [`Rule`] is one entry, id `r` + the watcher's canonical AOR: allow
//!   or block. A watcher with no rule is pending (it gets no state until
//!   the presentity decides); the presentity's own identities need none.
//! - [`compose`] joins the `<tuple>` elements of every live publication,
//!   newest first, into one `<presence>` document for the presentity.

use bytes::{Buf, Bytes};

use crate::binding::{get_array, get_text, get_varint, put_text, put_varint};

const PUBLICATION_PREFIX: u8 = b'p';
const RULE_PREFIX: u8 = b'r';
const FORMAT: u8 = 1;
/// The largest document a device may publish.
pub const MAX_DOCUMENT: usize = 16 << 10;
/// Live publications one presentity may have (its devices).
pub const MAX_PUBLICATIONS: usize = 16;
/// Authorisation rules one presentity may have (its record holds at most
/// 1,024 entries of every kind).
pub const MAX_RULES: usize = 256;
/// How long a rule is kept (the ring keeps no entry for more than 30
/// days), and how close to its end the notifier of a watched presentity
/// writes it again: a rule lasts as long as someone watches.
pub const RULE_LIFETIME_MS: u64 = 29 * 24 * 3600 * 1000;
pub const RULE_REFRESH_MS: u64 = 15 * 24 * 3600 * 1000;

/// One device's published presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub etag: [u8; 8],
    /// When it was published (wall clock, ms): newest first in the
    /// composed document.
    pub published_ms: u64,
    pub expires_at_ms: u64,
    /// The PIDF document.
    pub document: Bytes,
}

impl Publication {
    pub fn entry_id(&self) -> Bytes {
        publication_id(&self.etag)
    }

    pub fn etag_text(&self) -> String {
        etag_text(&self.etag)
    }

    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(32 + self.document.len());
        b.push(FORMAT);
        b.extend_from_slice(&self.etag);
        put_varint(&mut b, self.published_ms);
        put_varint(&mut b, self.expires_at_ms);
        put_text(&mut b, &self.document);
        Bytes::from(b)
    }

    pub fn decode(value: &[u8]) -> Option<Publication> {
        let mut r = value;
        if r.try_get_u8().ok()? != FORMAT {
            return None;
        }
        let etag = get_array::<8>(&mut r)?;
        let published_ms = get_varint(&mut r)?;
        let expires_at_ms = get_varint(&mut r)?;
        let document = Bytes::copy_from_slice(get_text(&mut r)?);
        r.is_empty().then_some(Publication {
            etag,
            published_ms,
            expires_at_ms,
            document,
        })
    }
}

/// The entry id of the publication with entity tag `etag`.
pub fn publication_id(etag: &[u8; 8]) -> Bytes {
    let mut v = Vec::with_capacity(9);
    v.push(PUBLICATION_PREFIX);
    v.extend_from_slice(etag);
    Bytes::from(v)
}

pub fn is_publication_id(id: &[u8]) -> bool {
    id.first() == Some(&PUBLICATION_PREFIX) && id.len() == 9
}

/// An entity tag as `SIP-ETag` carries it: 16 hex digits.
pub fn etag_text(etag: &[u8; 8]) -> String {
    etag.iter().map(|b| format!("{b:02x}")).collect()
}

/// The entity tag a `SIP-If-Match` names; `None` for anything else.
pub fn parse_etag(text: &[u8]) -> Option<[u8; 8]> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if text.len() != 16 {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What the presentity decided about a watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Block,
    /// No decision yet: no state until there is one.
    Pending,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Block => "block",
            Decision::Pending => "pending",
        }
    }
}

/// One authorisation rule: what the presentity decided about `watcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The watcher's canonical AOR.
    pub watcher: Bytes,
    pub decision: Decision,
    /// When its entry expires (read from the entry, not encoded).
    pub expires_at_ms: u64,
}

impl Rule {
    pub fn entry_id(&self) -> Bytes {
        rule_id(&self.watcher)
    }

    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(4 + self.watcher.len());
        b.push(FORMAT);
        b.push(match self.decision {
            Decision::Allow => 1,
            Decision::Block => 2,
            Decision::Pending => 3,
        });
        put_text(&mut b, &self.watcher);
        Bytes::from(b)
    }

    pub fn decode(value: &[u8]) -> Option<Rule> {
        let mut r = value;
        if r.try_get_u8().ok()? != FORMAT {
            return None;
        }
        let decision = match r.try_get_u8().ok()? {
            1 => Decision::Allow,
            2 => Decision::Block,
            3 => Decision::Pending,
            _ => return None,
        };
        let watcher = Bytes::copy_from_slice(get_text(&mut r)?);
        r.is_empty().then_some(Rule {
            watcher,
            decision,
            expires_at_ms: 0,
        })
    }
}

/// The entry id of the rule about `watcher`.
pub fn rule_id(watcher: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(1 + watcher.len());
    v.push(RULE_PREFIX);
    v.extend_from_slice(watcher);
    Bytes::from(v)
}

pub fn is_rule_id(id: &[u8]) -> bool {
    id.first() == Some(&RULE_PREFIX) && id.len() > 1
}

/// What `watcher` may see of the presentity whose rules are `rules`.
pub fn decision(rules: &[Rule], watcher: &[u8]) -> Decision {
    rules
        .iter()
        .find(|r| &r.watcher[..] == watcher)
        .map_or(Decision::Pending, |r| r.decision)
}

/// The `<name>…</name>` elements of a document (with or without a
/// namespace prefix; an empty `<name …/>` element too), in order. Enough
/// for the flat documents phones send; not a general XML parser.
fn elements<'a>(doc: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = find_element(rest, name) {
        let from = &rest[start..];
        let Some(open_end) = from.find('>') else {
            break;
        };
        if from[..open_end].ends_with('/') {
            out.push(&from[..=open_end]);
            rest = &from[open_end + 1..];
            continue;
        }
        let prefix = from[1..].split_once(name).map_or("", |(p, _)| p);
        let close = format!("</{prefix}{name}>");
        let Some(end) = from.find(&close) else { break };
        out.push(&from[..end + close.len()]);
        rest = &from[end + close.len()..];
    }
    out
}

/// The value of attribute `name` in the start tag `element` begins with.
fn attribute<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let tag = &element[..element.find('>')?];
    let at = tag.find(&format!(" {name}="))? + name.len() + 2;
    let quote = tag[at..].chars().next()?;
    let value = &tag[at + 1..];
    Some(&value[..value.find(quote)?])
}

/// The text inside `element` (between its start and end tags).
fn text(element: &str) -> &str {
    let start = element.find('>').map_or(element.len(), |i| i + 1);
    let end = element.rfind("</").unwrap_or(element.len()).max(start);
    element[start..end].trim()
}

/// The rules of an RFC 5025 presence authorisation document (RFC 4745
/// common policy): for each rule, every `<one id="…">` identity gets its
/// `<sub-handling>` (allow; block and polite-block: block; confirm:
/// pending). Identities are returned as written (the caller makes them
/// canonical); rules without a known sub-handling are skipped.
pub fn pres_rules(doc: &str) -> Vec<(String, Decision)> {
    let mut out = Vec::new();
    for rule in elements(doc, "rule") {
        let handling = elements(rule, "sub-handling")
            .first()
            .map(|h| text(h).to_string());
        let decision = match handling.as_deref() {
            Some("allow") => Decision::Allow,
            Some("block" | "polite-block") => Decision::Block,
            Some("confirm") => Decision::Pending,
            _ => continue,
        };
        for one in elements(rule, "one") {
            if let Some(id) = attribute(one, "id") {
                out.push((id.to_string(), decision));
            }
        }
    }
    out
}

/// Where the next `<name` or `<x:name` start tag begins.
fn find_element(doc: &str, name: &str) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = doc[at..].find('<') {
        let start = at + i;
        let tag = &doc[start + 1..];
        let local = tag
            .split(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .next()
            .unwrap_or_default();
        if local == name || local.rsplit_once(':').is_some_and(|(_, l)| l == name) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// The composed presence document of `entity`: the tuples of every live
/// publication, newest first (no publication: no tuple, which RFC 3863
/// reads as no information).
pub fn compose(entity: &str, publications: &[Publication], now_ms: u64) -> String {
    let mut live: Vec<&Publication> = publications
        .iter()
        .filter(|p| p.expires_at_ms > now_ms)
        .collect();
    live.sort_by_key(|p| std::cmp::Reverse((p.published_ms, p.etag)));
    let mut doc = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    doc.push_str("<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"");
    for c in entity.chars() {
        match c {
            '"' => doc.push_str("&quot;"),
            '&' => doc.push_str("&amp;"),
            '<' => doc.push_str("&lt;"),
            c => doc.push(c),
        }
    }
    doc.push_str("\">\n");
    for p in live {
        for t in elements(&String::from_utf8_lossy(&p.document), "tuple") {
            doc.push_str(t);
            doc.push('\n');
        }
    }
    doc.push_str("</presence>\n");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(tag: u8, ms: u64, doc: &str) -> Publication {
        Publication {
            etag: [tag; 8],
            published_ms: ms,
            expires_at_ms: 10_000,
            document: Bytes::copy_from_slice(doc.as_bytes()),
        }
    }

    const PHONE: &str = r#"<?xml version="1.0"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com">
  <tuple id="phone"><status><basic>open</basic></status><note>at my desk</note></tuple>
</presence>"#;
    const LAPTOP: &str = r#"<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com">
  <p:tuple id="laptop"><p:status><p:basic>closed</p:basic></p:status></p:tuple>
</p:presence>"#;

    #[test]
    fn records_round_trip_and_cut_ones_do_not_decode() {
        let p = publication(3, 5, PHONE);
        let enc = p.encode();
        assert_eq!(Publication::decode(&enc), Some(p.clone()));
        for n in 0..enc.len() {
            assert_eq!(Publication::decode(&enc[..n]), None);
        }
        assert!(is_publication_id(&p.entry_id()));
        let r = Rule {
            watcher: Bytes::from_static(b"sip:alice@example.com"),
            decision: Decision::Block,
            expires_at_ms: 0,
        };
        assert_eq!(Rule::decode(&r.encode()), Some(r.clone()));
        assert!(is_rule_id(&r.entry_id()));
        assert_eq!(parse_etag(p.etag_text().as_bytes()), Some(p.etag));
        assert_eq!(parse_etag(b"zz"), None);
    }

    #[test]
    fn the_composed_document_has_every_live_tuple_newest_first() {
        let pubs = [
            publication(1, 100, PHONE),
            publication(2, 200, LAPTOP),
            Publication {
                expires_at_ms: 50,
                ..publication(3, 300, PHONE)
            },
        ];
        let doc = compose("sip:bob@example.com", &pubs, 60);
        let laptop = doc.find("id=\"laptop\"").unwrap();
        let phone = doc.find("id=\"phone\"").unwrap();
        assert!(laptop < phone, "newest first: {doc}");
        assert_eq!(
            doc.matches("<tuple").count() + doc.matches("<p:tuple").count(),
            2
        );
        assert!(doc.contains("<note>at my desk</note>"));
        assert!(doc.contains("entity=\"sip:bob@example.com\""));
        let empty = compose("sip:bob@example.com", &[], 0);
        assert!(!empty.contains("tuple"));
    }

    #[test]
    fn pres_rules_give_each_identity_its_handling() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<cr:ruleset xmlns="urn:ietf:params:xml:ns:pres-rules" xmlns:cr="urn:ietf:params:xml:ns:common-policy">
  <cr:rule id="friends">
    <cr:conditions><cr:identity><cr:one id="sip:alice@example.com"/><cr:one id='sip:carol@example.com'/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>allow</sub-handling></cr:actions>
  </cr:rule>
  <cr:rule id="no"><cr:conditions><cr:identity><cr:one id="sip:mallory@example.com"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>polite-block</sub-handling></cr:actions></cr:rule>
  <cr:rule id="ask"><cr:conditions><cr:identity><cr:one id="sip:dave@example.com"></cr:one></cr:identity></cr:conditions>
    <cr:actions><sub-handling>confirm</sub-handling></cr:actions></cr:rule>
  <cr:rule id="odd"><cr:conditions><cr:identity><cr:one id="sip:x@example.com"/></cr:identity></cr:conditions>
    <cr:actions><sub-handling>whatever</sub-handling></cr:actions></cr:rule>
</cr:ruleset>"#;
        assert_eq!(
            pres_rules(doc),
            [
                ("sip:alice@example.com".to_string(), Decision::Allow),
                ("sip:carol@example.com".to_string(), Decision::Allow),
                ("sip:mallory@example.com".to_string(), Decision::Block),
                ("sip:dave@example.com".to_string(), Decision::Pending),
            ]
        );
        assert!(pres_rules("not xml").is_empty());
    }

    #[test]
    fn a_watcher_without_a_rule_is_pending() {
        let rules = [Rule {
            watcher: Bytes::from_static(b"sip:alice@x"),
            decision: Decision::Allow,
            expires_at_ms: 0,
        }];
        assert_eq!(decision(&rules, b"sip:alice@x"), Decision::Allow);
        assert_eq!(decision(&rules, b"sip:mallory@x"), Decision::Pending);
    }
}
