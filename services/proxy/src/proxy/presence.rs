//! Presence (RFC 3856) on farm-wide subscriptions: PUBLISH (RFC 3903)
//! stores each device's document in the presentity's record
//! ([`crate::presence`]); SUBSCRIBE `Event: presence` is a farm-wide
//! subscription like the reg event's (`notifier.rs`), and the key's
//! notifier composes the document each watcher may see.
//!
//! - **PUBLISH.** A subscriber publishes only for its own identities
//!   (403), `Event: presence` only (489), `application/pidf+xml` only
//!   (415), at most [`crate::presence::MAX_DOCUMENT`] bytes (413).
//!   Without `SIP-If-Match` it creates a publication; with one it
//!   refreshes (no body) or modifies it (a body), or removes it
//!   (`Expires: 0`); an unknown tag gets 412. Each success gets a new
//!   `SIP-ETag`. Expires: 3600 by default, at least 60 (423), at most
//!   7200. A presentity has at most 16 live publications (503 beyond:
//!   its devices' old ones expire).
//! - **Watchers.** Any authenticated subscriber may SUBSCRIBE to any
//!   presentity of the farm, as itself. What it is told follows the
//!   presentity's rules: allowed, the composed document (then one NOTIFY
//!   per change); pending (no rule), `Subscription-State: pending` and no
//!   body until a rule says; blocked, `terminated;reason=rejected` and the
//!   subscription ends. The presentity's own identities see themselves.
//!   Rules are set by the operator (`ringmesh ctl presence`).

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{HeaderName, Message};
use sha2::{Digest, Sha256};

use super::{Now, Origin, Pending, Proxy};
use crate::auth::SubscriberInfo;
use crate::location::{Located, LocationError, LocationOp};
use crate::presence::{self, Decision, MAX_DOCUMENT, Publication, Rule};
use crate::subscription::Subscription;

const PIDF: &str = "application/pidf+xml";
/// RFC 5025 presence authorisation documents.
const AUTH_POLICY: &str = "application/auth-policy+xml";
const DEFAULT_EXPIRES: u32 = 3600;
const MIN_EXPIRES: u32 = 60;
const MAX_EXPIRES: u32 = 7200;

/// Whether `msg` is for event package `package` (`presence`,
/// `presence.winfo`).
pub(super) fn is_event(msg: &Message, package: &[u8]) -> bool {
    msg.header(HeaderName::Event).is_some_and(|e| {
        let name = e.split(|&c| c == b';').next().unwrap_or_default();
        ringmesh_sip::scan::trim(name).eq_ignore_ascii_case(package)
    })
}

/// A PUBLISH on its way: the presentity, the publication it replaces and
/// the new one (`None`: a removal).
#[derive(Debug)]
pub(super) struct Publishing {
    aor: Aor,
    if_match: Option<[u8; 8]>,
    publication: Option<Box<Publication>>,
}

/// What a presence (or watcher information) watcher is told next.
pub(super) struct Told {
    pub digest: u64,
    /// The document's version (watcher information only).
    pub version: Option<u32>,
    /// The document, when the watcher may see one.
    pub content: Option<(&'static str, Vec<u8>)>,
    /// The presentity blocked the watcher: the subscription ends.
    pub rejected: bool,
}

/// What `sub`'s watcher is told now; `None` when that is what it was
/// last told (and the subscription is not ending).
pub(super) fn document(
    sub: &Subscription,
    publications: &[Publication],
    rules: &[Rule],
    now: Now,
) -> Option<Told> {
    let decision = decision_for(sub, rules);
    let (tag, content) = match decision {
        Decision::Allow => {
            let entity = String::from_utf8_lossy(&sub.resource);
            let doc = presence::compose(&entity, publications, now.wall_ms);
            (b'a', Some((PIDF, doc.into_bytes())))
        }
        Decision::Pending => (b'p', None),
        Decision::Block => (b'b', None),
    };
    let mut h = Sha256::new();
    h.update([tag]);
    if let Some((_, body)) = &content {
        h.update(body);
    }
    let digest = told_digest(h);
    if digest == sub.digest && sub.expires_at_ms > now.wall_ms {
        return None;
    }
    Some(Told {
        digest,
        version: None,
        content,
        rejected: decision == Decision::Block,
    })
}

/// What the presentity decided about the watcher of `sub`; its own
/// identities see themselves.
fn decision_for(sub: &Subscription, rules: &[Rule]) -> Decision {
    match Aor::parse(&sub.remote_uri) {
        Ok(w) if w.as_bytes() == &sub.resource[..] => Decision::Allow,
        Ok(w) => presence::decision(rules, w.as_bytes()),
        Err(_) => Decision::Block,
    }
}

/// A digest of what was told; never 0 (0: nothing told yet).
fn told_digest(h: Sha256) -> u64 {
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes")).max(1)
}

/// What the presentity watching its own watchers (RFC 3857, `sub`) is
/// told: the full watcher list (RFC 3858) with each watcher's status by
/// the rules (allow: active; none: pending; block: terminated, rejected);
/// `None` when the list is what it was last told.
pub(super) fn watcherinfo(
    sub: &Subscription,
    watchers: &[Subscription],
    rules: &[Rule],
    now: Now,
) -> Option<Told> {
    let mut live: Vec<&Subscription> = watchers
        .iter()
        .filter(|w| w.expires_at_ms > now.wall_ms)
        .collect();
    live.sort_by_key(|w| w.id);
    let mut list = String::new();
    for w in live {
        let (status, event) = match decision_for(w, rules) {
            Decision::Allow => ("active", "approved"),
            Decision::Pending => ("pending", "subscribe"),
            Decision::Block => ("terminated", "rejected"),
        };
        let id: String = w.id[..8].iter().map(|b| format!("{b:02x}")).collect();
        list.push_str(&format!(
            "    <watcher id=\"{id}\" event=\"{event}\" status=\"{status}\">{}</watcher>\n",
            xml_text(&String::from_utf8_lossy(&w.remote_uri))
        ));
    }
    let mut h = Sha256::new();
    h.update(list.as_bytes());
    let digest = told_digest(h);
    if digest == sub.digest && sub.expires_at_ms > now.wall_ms {
        return None;
    }
    let version = sub.version.map_or(0, |v| v.wrapping_add(1));
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <watcherinfo xmlns=\"urn:ietf:params:xml:ns:watcherinfo\" version=\"{version}\" state=\"full\">\n\
         \x20 <watcher-list resource=\"{}\" package=\"presence\">\n{list}  </watcher-list>\n</watcherinfo>\n",
        xml_text(&String::from_utf8_lossy(&sub.resource))
    );
    Some(Told {
        digest,
        version: Some(version),
        content: Some(("application/watcherinfo+xml", body.into_bytes())),
        rejected: false,
    })
}

fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Proxy {
    /// The AOR `msg`'s Request-URI names when it is one of `sub`'s own;
    /// else answered here (404 for no AOR, 403 with `warning` for
    /// another's) and `None`.
    fn own_aor(
        &mut self,
        server: ServerKey,
        msg: &Message,
        sub: &SubscriberInfo,
        warning: &[u8],
        now: Now,
    ) -> Option<Aor> {
        let Some((aor, None)) = msg.request_uri().and_then(|u| self.callee_of(&u)) else {
            self.reply(server, msg, 404, &[], now);
            return None;
        };
        if !sub.owns(&aor) {
            self.forbid(server, msg, warning, now);
            return None;
        }
        Some(aor)
    }

    /// A PUBLISH from `sub` (authenticated, asserting its own identity).
    pub(super) fn on_publish(
        &mut self,
        server: ServerKey,
        msg: Message,
        sub: &SubscriberInfo,
        now: Now,
    ) {
        if !is_event(&msg, b"presence") {
            return self.reply(
                server,
                &msg,
                489,
                &[(HeaderName::AllowEvents, b"presence")],
                now,
            );
        }
        let warning = b"399 ringmesh \"a subscriber publishes only its own presence\"";
        let Some(aor) = self.own_aor(server, &msg, sub, warning, now) else {
            return;
        };
        let Some(expires) = self.granted_expires(
            server,
            &msg,
            [DEFAULT_EXPIRES, MIN_EXPIRES, MAX_EXPIRES],
            now,
        ) else {
            return;
        };
        let if_match = match msg.header(HeaderName::SipIfMatch) {
            None => None,
            Some(t) => match presence::parse_etag(t) {
                Some(tag) => Some(tag),
                None => return self.reply(server, &msg, 412, &[], now),
            },
        };
        let body = msg.body();
        if !body.is_empty() {
            let pidf = msg.header(HeaderName::ContentType).is_some_and(|t| {
                let t = t.split(|&c| c == b';').next().unwrap_or_default();
                ringmesh_sip::scan::trim(t).eq_ignore_ascii_case(PIDF.as_bytes())
            });
            if !pidf {
                return self.reply(
                    server,
                    &msg,
                    415,
                    &[(HeaderName::Accept, PIDF.as_bytes())],
                    now,
                );
            }
            if body.len() > MAX_DOCUMENT {
                return self.reply(server, &msg, 413, &[], now);
            }
        }
        // RFC 3903 §6: a new publication needs a body; a refresh or a
        // removal names the one it is about.
        if if_match.is_none() && (body.is_empty() || expires == 0) {
            return self.reply(server, &msg, 400, &[], now);
        }
        let publication = (expires > 0).then(|| {
            self.branch_counter = self.branch_counter.wrapping_add(1);
            let mut h = Sha256::new();
            h.update(self.me.node_id);
            h.update(self.branch_counter.to_be_bytes());
            h.update(msg.call_id());
            Box::new(Publication {
                etag: h.finalize()[..8].try_into().expect("8 bytes"),
                published_ms: now.wall_ms,
                expires_at_ms: now.wall_ms + u64::from(expires) * 1000,
                document: Bytes::new(),
            })
        });
        self.locate(
            LocationOp::Watch {
                aor: aor.clone(),
                now_ms: now.wall_ms,
            },
            Pending::PublishRead {
                server,
                msg,
                publishing: Publishing {
                    aor,
                    if_match,
                    publication,
                },
            },
        );
    }

    /// The presentity's record was read for a PUBLISH: a refresh keeps
    /// the document it refreshes; then the publication is written.
    pub(super) fn publish_read(
        &mut self,
        server: ServerKey,
        msg: Message,
        publishing: Publishing,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        let Publishing {
            aor,
            if_match,
            mut publication,
        } = publishing;
        let old = match result {
            Ok(Located::Watched { publications, .. }) => {
                if_match.and_then(|tag| publications.into_iter().find(|p| p.etag == tag))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "presence not read");
                return self.reply_unavailable(server, &msg, now);
            }
        };
        if if_match.is_some() && old.is_none() {
            return self.reply(server, &msg, 412, &[], now);
        }
        if let Some(p) = publication.as_mut() {
            p.document = if msg.body().is_empty() {
                old.map(|o| o.document).unwrap_or_default()
            } else {
                msg.body_bytes()
            };
        }
        self.locate(
            LocationOp::Publish {
                aor: aor.clone(),
                if_match,
                publication: publication.clone(),
                now_ms: now.wall_ms,
            },
            Pending::Published {
                server,
                msg,
                aor,
                publication,
            },
        );
    }

    /// A publication was written (200 with its new tag), or not.
    pub(super) fn published(
        &mut self,
        server: ServerKey,
        msg: Message,
        aor: Aor,
        publication: Option<Box<Publication>>,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        match result {
            Ok(_) => {
                let expires = publication.as_ref().map_or(0, |p| {
                    p.expires_at_ms.saturating_sub(now.wall_ms).div_ceil(1000)
                });
                let tag = publication.as_ref().map(|p| p.etag_text());
                let expires = expires.to_string();
                let mut headers = vec![(HeaderName::Expires, expires.as_bytes())];
                if let Some(t) = &tag {
                    headers.push((HeaderName::SipETag, t.as_bytes()));
                }
                self.reply(server, &msg, 200, &headers, now);
                self.changed(aor, now);
            }
            Err(LocationError::Precondition) => self.reply(server, &msg, 412, &[], now),
            Err(e) => {
                tracing::warn!(error = %e, "presence not published");
                self.reply_unavailable(server, &msg, now);
            }
        }
    }

    /// Writes again the rules of `aor` that are within
    /// [`crate::presence::RULE_REFRESH_MS`] of their end.
    pub(super) fn keep_rules(&mut self, aor: &Aor, rules: &[Rule], now: Now) {
        let until = now.wall_ms + presence::RULE_LIFETIME_MS;
        let old: Vec<Rule> = rules
            .iter()
            .filter(|r| {
                r.decision != Decision::Pending
                    && r.expires_at_ms < now.wall_ms + presence::RULE_REFRESH_MS
            })
            .map(|r| Rule {
                expires_at_ms: until,
                ..r.clone()
            })
            .collect();
        if !old.is_empty() {
            self.locate(
                LocationOp::Rules {
                    aor: aor.clone(),
                    rules: old,
                },
                Pending::RuleKept { aor: aor.clone() },
            );
        }
    }

    /// The presentity's own decisions about its watchers: a PUBLISH to its
    /// own AOR with `Event: presence.winfo` and an RFC 5025 presence
    /// authorisation document (`application/auth-policy+xml`); each
    /// identity it names gets the rule's handling.
    pub(super) fn on_decisions(
        &mut self,
        server: ServerKey,
        msg: Message,
        sub: &SubscriberInfo,
        now: Now,
    ) {
        let warning = b"399 ringmesh \"a subscriber decides only about its own watchers\"";
        let Some(aor) = self.own_aor(server, &msg, sub, warning, now) else {
            return;
        };
        let policy = msg.header(HeaderName::ContentType).is_some_and(|t| {
            let t = t.split(|&c| c == b';').next().unwrap_or_default();
            ringmesh_sip::scan::trim(t).eq_ignore_ascii_case(AUTH_POLICY.as_bytes())
        });
        if !policy {
            return self.reply(
                server,
                &msg,
                415,
                &[(HeaderName::Accept, AUTH_POLICY.as_bytes())],
                now,
            );
        }
        if msg.body().len() > MAX_DOCUMENT {
            return self.reply(server, &msg, 413, &[], now);
        }
        let until = now.wall_ms + presence::RULE_LIFETIME_MS;
        let rules: Vec<Rule> = presence::pres_rules(&String::from_utf8_lossy(msg.body()))
            .into_iter()
            .filter_map(|(id, decision)| {
                Some(Rule {
                    watcher: Bytes::copy_from_slice(Aor::parse(id.as_bytes()).ok()?.as_bytes()),
                    decision,
                    expires_at_ms: until,
                })
            })
            .collect();
        if rules.is_empty() || rules.len() > presence::MAX_RULES {
            let warning = format!(
                "399 ringmesh \"the document must give 1 to {} watchers a sub-handling\"",
                presence::MAX_RULES
            );
            return self.reply(
                server,
                &msg,
                400,
                &[(HeaderName::Warning, warning.as_bytes())],
                now,
            );
        }
        self.locate(
            LocationOp::Watch {
                aor: aor.clone(),
                now_ms: now.wall_ms,
            },
            Pending::Deciding {
                server,
                msg,
                aor,
                rules,
            },
        );
    }

    /// The presentity's record was read: its rules, with the new ones, may
    /// not exceed [`presence::MAX_RULES`] (403); then they are written.
    pub(super) fn deciding(
        &mut self,
        server: ServerKey,
        msg: Message,
        aor: Aor,
        rules: Vec<Rule>,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        let existing = match result {
            Ok(Located::Watched { rules, .. }) => rules,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "presence rules not read");
                return self.reply_unavailable(server, &msg, now);
            }
        };
        let mut watchers: Vec<&Bytes> = existing
            .iter()
            .chain(rules.iter().filter(|r| r.decision != Decision::Pending))
            .map(|r| &r.watcher)
            .collect();
        watchers.sort();
        watchers.dedup();
        if watchers.len() > presence::MAX_RULES {
            let warning = format!(
                "399 ringmesh \"at most {} presence rules\"",
                presence::MAX_RULES
            );
            return self.forbid(server, &msg, warning.as_bytes(), now);
        }
        self.locate(
            LocationOp::Rules {
                aor: aor.clone(),
                rules,
            },
            Pending::Decided { server, msg, aor },
        );
    }

    /// The presentity's decisions are stored: 200, and its watchers told.
    pub(super) fn decided(
        &mut self,
        server: ServerKey,
        msg: Message,
        aor: Aor,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        match result {
            Ok(_) => {
                self.reply(server, &msg, 200, &[], now);
                self.changed(aor, now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence decisions not stored");
                self.reply_unavailable(server, &msg, now);
            }
        }
    }

    /// A SUBSCRIBE to the presentity's own watcher information (RFC
    /// 3857): only for its own identities.
    pub(super) fn on_winfo_subscribe(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        sub: &SubscriberInfo,
        now: Now,
    ) {
        let warning = b"399 ringmesh \"a subscriber watches only its own watchers\"";
        let Some(aor) = self.own_aor(server, &msg, sub, warning, now) else {
            return;
        };
        self.subscribe(server, msg, origin, aor, b"presence.winfo", now);
    }

    /// A SUBSCRIBE to a presentity's presence from `sub` (authenticated,
    /// as itself).
    pub(super) fn on_presence_subscribe(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        now: Now,
    ) {
        let Some((presentity, None)) = msg.request_uri().and_then(|u| self.callee_of(&u)) else {
            return self.reply(server, &msg, 404, &[], now);
        };
        self.subscribe(server, msg, origin, presentity, b"presence", now);
    }
}
