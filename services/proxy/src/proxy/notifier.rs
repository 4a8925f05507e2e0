//! The farm as a notifier (RFC 6665): the reg event package (RFC 3680) on
//! farm-wide subscriptions, and the presence packages on the same
//! machinery (`presence.rs` says what their documents are).
//!
//! - **Accepting.** Any supernode accepts a SUBSCRIBE for `Event: reg` of
//!   an AOR its sender may watch (a phone: one of its own identities; a
//!   trusted front end or application server: any subscriber's), stores
//!   the subscription on the replicas of the AOR's key, and answers 200
//!   with a Contact naming the farm (`sip:sub.<sealed>@<domain>`), not
//!   itself: refreshes and the un-SUBSCRIBE may reach any member.
//! - **Watching a key.** A record holding subscriptions is watched. Every
//!   change to it (a REGISTER anywhere, a new or refreshed subscription)
//!   is reported to the key's *notifier*: the live member that
//!   rendezvous hashing picks for the key (`owner_of`), told over the
//!   overlay with a `MESSAGE sip:watch@…` (the guard's mechanism). If that
//!   member does not answer, the node that saw the change notifies itself.
//!   So a subscription survives the loss of the member that accepted it,
//!   and of its notifier: the state is in the record, not in any member.
//! - **Notifying.** The notifier reads the record, and for each
//!   subscription whose document changed it first writes the subscription
//!   with the new version, CSeq and contacts, then sends the NOTIFY: a
//!   notifier that dies between the two makes the watcher see a version
//!   gap (RFC 3680 §5.3: it fetches the full state again), never the same
//!   version twice. One evaluation per key runs at a time on a notifier;
//!   changes meanwhile run it again. The next binding or subscription
//!   expiry is a timer on the notifier (a notifier that dies takes it
//!   along: the expiry is then told at the key's next change or refresh).
//! - **Ending.** A subscription ends when it expires or is refreshed with
//!   `Expires: 0` (a last NOTIFY, `Subscription-State: terminated`), or
//!   when its NOTIFY gets 481 or no answer at all (RFC 6665 §4.2.2). A
//!   NOTIFY sent through the watcher's edge that gets no answer means the
//!   edge is gone, not the watcher: the subscription moves to this node
//!   and its full state goes straight to the watcher's Contact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::transaction::{ClientKey, ServerKey};
use ringmesh_sip::{HeaderName, Message, Method};
use sha2::{Digest, Sha256};

use super::routing::Target;
use super::{BRANCH_PREFIX, IdMap, Now, Origin, Pending, Proxy};
use crate::location::{Located, LocationError, LocationOp};
use crate::observe::{Metric, Refusal, SubscriptionEvent};
use crate::subscription::{self, Subscription};
use crate::token::{Dest, Dialog, Purpose};

/// The user part of the farm's Contact in a subscription dialog begins
/// with this, then the sealed resource and subscription id.
pub(super) const SUBSCRIPTION_PREFIX: &str = "sub.";
/// The Content-Type of the messages that tell a key's notifier.
const WATCH_CONTENT_TYPE: &str = "application/x-ringmesh-watch";
/// How long a reg subscription lasts by default, and at most and least
/// (RFC 3680 §5.1 suggests 3761 s).
const DEFAULT_EXPIRES: u32 = 3761;
const MAX_EXPIRES: u32 = 7200;
const MIN_EXPIRES: u32 = 60;
/// Live subscriptions one AOR may have: a subscriber cannot fill its
/// record (and its notifier's work) with watchers.
pub(super) const MAX_SUBSCRIPTIONS: usize = 16;

/// The notifier's bookkeeping (nothing here is a subscription's state).
#[derive(Debug, Default)]
pub(super) struct Watching {
    /// Keys being evaluated here, and those changed meanwhile.
    in_flight: HashSet<Aor>,
    dirty: HashSet<Aor>,
    /// Subscription writes of an evaluation still outstanding.
    writes_left: HashMap<Aor, usize>,
    /// When to look at a key again (its next expiry), and the earliest
    /// time each key is due (so a key changing often adds no timers).
    due: BTreeMap<Instant, Vec<Aor>>,
    due_at: HashMap<Aor, Instant>,
    /// NOTIFYs awaiting their answer.
    /// NOTIFYs awaiting their answer, with where each went.
    notifies: IdMap<ClientKey, (Aor, Subscription, Dest)>,
    /// Watch messages to another notifier: the key, to notify here if
    /// that member does not answer.
    told: IdMap<ClientKey, Aor>,
}

impl Watching {
    pub fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().copied()
    }
}

/// The key rendezvous hashing places a watched AOR's notifier by.
fn notifier_key(aor: &Aor) -> u128 {
    let mut h = Sha256::new();
    h.update(b"ringmesh notifier\0");
    h.update(aor.as_bytes());
    u128::from_be_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

/// Whether `msg` subscribes to the reg event package.
pub(super) fn is_reg_event(msg: &Message) -> bool {
    msg.header(HeaderName::Event).is_some_and(|e| {
        let package = e.split(|&c| c == b';').next().unwrap_or_default();
        ringmesh_sip::scan::trim(package).eq_ignore_ascii_case(b"reg")
    })
}

impl Proxy {
    // ---- accepting ------------------------------------------------------------

    /// A new subscription to `event` (reg or presence) of `resource`
    /// (authorised): it is stored, then answered 200.
    pub(super) fn subscribe(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        resource: Aor,
        event: &'static [u8],
        now: Now,
    ) {
        let Some(flow) = origin.flow() else { return };
        let Some(expires) = self.granted_expires(
            server,
            &msg,
            [DEFAULT_EXPIRES, MIN_EXPIRES, MAX_EXPIRES],
            now,
        ) else {
            return;
        };
        let Some(contact) = msg.contacts().find_map(|c| match c {
            ringmesh_sip::Contact::Addr(a) => Some(Bytes::copy_from_slice(a.uri().as_bytes())),
            ringmesh_sip::Contact::Wildcard => None,
        }) else {
            return self.reply(
                server,
                &msg,
                400,
                &[(
                    HeaderName::Warning,
                    b"399 ringmesh \"a SUBSCRIBE needs a Contact\"",
                )],
                now,
            );
        };
        let Some(remote_tag) = msg.from_tag() else {
            return self.reply(server, &msg, 400, &[], now);
        };
        let route_set: Vec<&[u8]> = msg.header_values(HeaderName::RecordRoute).collect();
        self.branch_counter = self.branch_counter.wrapping_add(1);
        let id: [u8; 16] = {
            let mut h = Sha256::new();
            h.update(self.me.node_id);
            h.update(self.branch_counter.to_be_bytes());
            h.update(msg.call_id());
            h.update(remote_tag);
            h.finalize()[..16].try_into().expect("16 bytes")
        };
        let sub = Subscription {
            id,
            event: Bytes::from_static(event),
            resource: Bytes::copy_from_slice(resource.as_bytes()),
            call_id: Bytes::copy_from_slice(msg.call_id()),
            local_tag: Bytes::copy_from_slice(&self.to_tag(&msg)),
            remote_tag: Bytes::copy_from_slice(remote_tag),
            remote_uri: Bytes::copy_from_slice(msg.from_hdr().uri().as_bytes()),
            remote_target: contact,
            route_set: (!route_set.is_empty()).then(|| Bytes::from(route_set.join(&b", "[..]))),
            remote_cseq: msg.cseq(),
            local_cseq: 0,
            version: None,
            expires_at_ms: now.wall_ms + u64::from(expires) * 1000,
            flow,
            transport: flow.transport(),
            edge: self.me.node_id,
            notified: Vec::new(),
            digest: 0,
        };
        // The record is read first: the AOR's subscriptions are capped.
        self.locate(
            LocationOp::Watch {
                aor: resource.clone(),
                now_ms: now.wall_ms,
            },
            Pending::NewSubscription {
                server,
                msg,
                aor: resource,
                sub: Box::new(sub),
            },
        );
    }

    /// The subscriptions a read of a record found; `None` when the read
    /// failed (the SUBSCRIBE `msg` is answered 503).
    fn subscriptions_read(
        &mut self,
        server: ServerKey,
        msg: &Message,
        result: Result<Located, LocationError>,
        now: Now,
    ) -> Option<Vec<Subscription>> {
        match result {
            Ok(Located::Watched { subscriptions, .. }) => Some(subscriptions),
            Ok(_) => Some(Vec::new()),
            Err(e) => {
                tracing::warn!(error = %e, "subscriptions not read");
                self.reply_unavailable(server, msg, now);
                None
            }
        }
    }

    /// The record a new subscription goes to was read: a SUBSCRIBE of the
    /// same dialog again replaces its subscription (and gets the full
    /// state again); beyond [`MAX_SUBSCRIPTIONS`] live ones the AOR takes
    /// no more (403).
    pub(super) fn new_subscription(
        &mut self,
        server: ServerKey,
        msg: Message,
        aor: Aor,
        mut sub: Subscription,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        let Some(existing) = self.subscriptions_read(server, &msg, result, now) else {
            return;
        };
        if let Some(old) = existing
            .iter()
            .find(|s| s.call_id == sub.call_id && s.remote_tag == sub.remote_tag)
        {
            sub.id = old.id;
        } else if existing
            .iter()
            .filter(|s| s.expires_at_ms > now.wall_ms)
            .count()
            >= MAX_SUBSCRIPTIONS
        {
            self.refused(Refusal::TooManySubscriptions);
            return self.forbid(
                server,
                &msg,
                b"399 ringmesh \"too many subscriptions to this address-of-record\"",
                now,
            );
        }
        self.store_subscription(server, msg, aor, sub, false);
    }

    /// Writes `sub` (new, or a `refresh`), then answers its SUBSCRIBE.
    fn store_subscription(
        &mut self,
        server: ServerKey,
        msg: Message,
        aor: Aor,
        sub: Subscription,
        refresh: bool,
    ) {
        self.locate(
            LocationOp::Subscription {
                aor: aor.clone(),
                sub: Box::new(sub.clone()),
                remove: false,
            },
            Pending::Subscribed {
                server,
                msg,
                aor,
                sub,
                refresh,
            },
        );
    }

    /// The subscription of a SUBSCRIBE is stored: 200 with its Expires and
    /// the farm's Contact, and the key's notifier is told.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn subscribed(
        &mut self,
        server: ServerKey,
        msg: Message,
        aor: Aor,
        sub: Subscription,
        refresh: bool,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "subscription not stored");
            return self.reply_unavailable(server, &msg, now);
        }
        self.observer.observe(Metric::Subscription(if refresh {
            SubscriptionEvent::Refreshed
        } else {
            SubscriptionEvent::Accepted
        }));
        let expires = sub.expires_at_ms.saturating_sub(now.wall_ms).div_ceil(1000);
        let contact = self.subscription_contact(&sub, now);
        self.reply(
            server,
            &msg,
            200,
            &[
                (HeaderName::Expires, expires.to_string().as_bytes()),
                (HeaderName::Contact, contact.as_bytes()),
            ],
            now,
        );
        self.changed(aor, now);
    }

    /// `<sip:sub.SEALED@DOMAIN>`: the farm, not this member.
    fn subscription_contact(&self, sub: &Subscription, now: Now) -> String {
        let mut plain = sub.resource.to_vec();
        plain.push(0);
        plain.extend_from_slice(&sub.id);
        let sealed = self
            .tokens
            .seal_for(Purpose::Subscription, &plain, now.secs());
        format!("<sip:{SUBSCRIPTION_PREFIX}{sealed}@{}>", self.me.domain)
    }

    /// The resource and subscription a request for the farm's Contact in a
    /// subscription dialog names; `None` when it names none (or a forged
    /// one).
    pub(super) fn subscription_of(&self, msg: &Message) -> Option<(Aor, [u8; 16])> {
        let ruri = msg.request_uri()?;
        let sealed = ruri.user()?.strip_prefix(SUBSCRIPTION_PREFIX.as_bytes())?;
        let plain = self.tokens.open_for(Purpose::Subscription, sealed)?;
        let (aor, id) = plain.split_at_checked(plain.len().checked_sub(17)?)?;
        let id = id.strip_prefix(b"\0")?.try_into().ok()?;
        Some((Aor::parse(aor).ok()?, id))
    }

    /// A request inside a subscription dialog of the farm: a refresh or
    /// an un-SUBSCRIBE is applied (after its record is read); anything
    /// else is not part of a dialog the farm holds.
    pub(super) fn in_subscription(
        &mut self,
        server: ServerKey,
        msg: Message,
        (aor, id): (Aor, [u8; 16]),
        now: Now,
    ) {
        if *msg.method() != Method::Subscribe {
            return self.reply(server, &msg, 481, &[], now);
        }
        self.locate(
            LocationOp::Watch {
                aor: aor.clone(),
                now_ms: now.wall_ms,
            },
            Pending::Resubscribe {
                server,
                msg,
                aor,
                id,
            },
        );
    }

    /// The record of a refreshed subscription was read: the refresh is
    /// checked against the dialog and applied.
    pub(super) fn resubscribe(
        &mut self,
        server: ServerKey,
        msg: Message,
        aor: Aor,
        id: [u8; 16],
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        let Some(subscriptions) = self.subscriptions_read(server, &msg, result, now) else {
            return;
        };
        let same_dialog = |s: &&Subscription| {
            s.id == id
                && s.call_id[..] == *msg.call_id()
                && msg.from_tag() == Some(&s.remote_tag[..])
                && msg.to_tag() == Some(&s.local_tag[..])
        };
        let Some(mut sub) = subscriptions.iter().find(same_dialog).cloned() else {
            return self.reply(server, &msg, 481, &[], now);
        };
        if msg.cseq() <= sub.remote_cseq {
            return self.reply(server, &msg, 500, &[(HeaderName::RetryAfter, b"1")], now);
        }
        let expires = match msg.expires().unwrap_or(DEFAULT_EXPIRES) {
            0 => 0,
            e => e.clamp(MIN_EXPIRES, MAX_EXPIRES),
        };
        sub.remote_cseq = msg.cseq();
        sub.expires_at_ms = now.wall_ms + u64::from(expires) * 1000;
        self.store_subscription(server, msg, aor, sub, true);
    }

    // ---- watching a key -------------------------------------------------------

    /// A record was changed outside the SIP path (an operator's presence
    /// rule): its watchers are told.
    pub fn record_changed(&mut self, aor: Aor, now: Now) {
        self.changed(aor, now);
        self.drive(now);
    }

    /// A watched record changed (or is due): its notifier is told, or is
    /// this node.
    pub(super) fn changed(&mut self, aor: Aor, now: Now) {
        let owner = self.owner_of(notifier_key(&aor));
        if owner == self.me.node_id {
            return self.evaluate(aor, now);
        }
        match self.message_member(owner, "watch", WATCH_CONTENT_TYPE, aor.as_bytes(), now) {
            Some(client) => {
                self.watching.told.insert(client, aor);
            }
            None => self.evaluate(aor, now),
        }
    }

    /// Whether a request from another supernode tells this node, as a
    /// key's notifier, that the key changed; if so it is acted on (and
    /// answered by the caller).
    pub(super) fn on_watch_message(&mut self, msg: &Message, now: Now) -> bool {
        if !super::guarding::is_member_message(msg, "watch", WATCH_CONTENT_TYPE) {
            return false;
        }
        match Aor::parse(msg.body()) {
            Ok(aor) => self.evaluate(aor, now),
            Err(_) => tracing::warn!("a watch message that names no AOR"),
        }
        true
    }

    /// The `Expires` a SUBSCRIBE or PUBLISH gets: its own (or `default`)
    /// capped at `max`; 0 stays 0. Below `min`: answered 423 here, `None`.
    pub(super) fn granted_expires(
        &mut self,
        server: ServerKey,
        msg: &Message,
        [default, min, max]: [u32; 3],
        now: Now,
    ) -> Option<u32> {
        match msg.expires().unwrap_or(default) {
            0 => Some(0),
            e if e < min => {
                let min = min.to_string();
                self.reply(
                    server,
                    msg,
                    423,
                    &[(HeaderName::MinExpires, min.as_bytes())],
                    now,
                );
                None
            }
            e => Some(e.min(max)),
        }
    }

    /// The start of a request this node originates (a NOTIFY, a kept
    /// MESSAGE) toward `t`: request line, Via with a new branch of `kind`,
    /// Max-Forwards and the target's Route; and the branch.
    pub(super) fn own_request(
        &mut self,
        method: &Method,
        kind: &str,
        ruri: &[u8],
        t: &Target,
    ) -> (ringmesh_sip::Writer, String) {
        let transport = t.dest.transport();
        self.branch_counter = self.branch_counter.wrapping_add(1);
        let branch = format!("{BRANCH_PREFIX}{kind}.{:x}", self.branch_counter);
        let mut w = ringmesh_sip::Writer::request(method, t.uri.as_deref().unwrap_or(ruri));
        w.header_fmt(
            HeaderName::Via,
            format_args!(
                "SIP/2.0/{} {}:{};branch={branch}",
                transport.via_token(),
                self.me.advertise,
                self.me.port(transport)
            ),
        );
        w.header(HeaderName::MaxForwards, b"70");
        if let Some(r) = &t.push_route {
            w.header(HeaderName::Route, r.as_bytes());
        }
        (w, branch)
    }

    /// Reads a watched key to notify its subscriptions of what changed.
    fn evaluate(&mut self, aor: Aor, now: Now) {
        if !self.watching.in_flight.insert(aor.clone()) {
            self.watching.dirty.insert(aor);
            return;
        }
        self.locate(
            LocationOp::Watch {
                aor: aor.clone(),
                now_ms: now.wall_ms,
            },
            Pending::Evaluate { aor },
        );
    }

    /// The record was read: each subscription whose document changed is
    /// written with its next version, then notified; the next expiry is
    /// scheduled.
    pub(super) fn evaluated(&mut self, aor: Aor, result: Result<Located, LocationError>, now: Now) {
        let (bindings, subscriptions, publications, rules) = match result {
            Ok(Located::Watched {
                bindings,
                subscriptions,
                publications,
                rules,
            }) => (bindings, subscriptions, publications, rules),
            Ok(_) => Default::default(),
            Err(e) => {
                tracing::warn!(%aor, error = %e, "a watched record could not be read; trying again in a second");
                self.schedule(&aor, now.wall_ms + 1000, now);
                return self.finish_evaluation(aor, now);
            }
        };
        let mut writes = 0;
        let mut due = None::<u64>;
        // The rules of a watched presentity live as long as it is watched.
        if subscriptions.iter().any(|s| &s.event[..] == b"presence") {
            self.keep_rules(&aor, &rules, now);
        }
        // The presence watchers, for the presentity's watcher information.
        let watchers: Vec<Subscription> = subscriptions
            .iter()
            .filter(|s| &s.event[..] == b"presence")
            .cloned()
            .collect();
        // A publication's expiry changes the presence document.
        let published_until = publications
            .iter()
            .map(|p| p.expires_at_ms)
            .filter(|at| *at > now.wall_ms)
            .min();
        for mut sub in subscriptions {
            let mut ending = sub.expires_at_ms <= now.wall_ms;
            let next = |sub: &Subscription| match (&sub.event[..], published_until) {
                (b"presence", Some(p)) => p.min(sub.expires_at_ms),
                (b"presence", None) => sub.expires_at_ms,
                _ => subscription::next_due(sub),
            };
            let content = if sub.event.starts_with(b"presence") {
                let told = if &sub.event[..] == b"presence" {
                    super::presence::document(&sub, &publications, &rules, now)
                } else {
                    super::presence::watcherinfo(&sub, &watchers, &rules, now)
                };
                let Some(told) = told else {
                    due = Some(due.map_or(next(&sub), |d| d.min(next(&sub))));
                    continue;
                };
                sub.digest = told.digest;
                sub.version = told.version.or(sub.version);
                ending |= told.rejected;
                told.content
            } else {
                let Some(doc) = subscription::reginfo(&sub, &bindings, now.wall_ms, ending) else {
                    due = Some(due.map_or(next(&sub), |d| d.min(next(&sub))));
                    continue;
                };
                sub.version = Some(doc.version);
                sub.notified = doc.notified;
                Some(("application/reginfo+xml", doc.body))
            };
            sub.local_cseq += 1;
            if !ending {
                due = Some(due.map_or(next(&sub), |d| d.min(next(&sub))));
            }
            let notify = self.notify_request(&sub, content, ending, now);
            self.locate(
                LocationOp::Subscription {
                    aor: aor.clone(),
                    sub: Box::new(sub.clone()),
                    remove: ending,
                },
                Pending::Notify {
                    aor: aor.clone(),
                    sub,
                    notify,
                },
            );
            writes += 1;
        }
        if let Some(at) = due {
            self.schedule(&aor, at.max(now.wall_ms + 1), now);
        }
        if writes == 0 {
            return self.finish_evaluation(aor, now);
        }
        self.watching.writes_left.insert(aor, writes);
    }

    /// A subscription's new state is stored: its NOTIFY goes.
    pub(super) fn notify_stored(
        &mut self,
        aor: Aor,
        sub: Subscription,
        notify: Option<(Bytes, String, Dest)>,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        match (result, notify) {
            (Ok(_), Some((bytes, branch, dest))) => {
                match self.txl.send_request_raw(
                    bytes,
                    &Method::Notify,
                    branch.as_bytes(),
                    dest,
                    dest.reliable(),
                    now.mono,
                ) {
                    Ok(client) => {
                        self.observer
                            .observe(Metric::Subscription(SubscriptionEvent::Notified));
                        if sub.expires_at_ms <= now.wall_ms {
                            self.observer
                                .observe(Metric::Subscription(SubscriptionEvent::Ended));
                        }
                        self.watching
                            .notifies
                            .insert(client, (aor.clone(), sub, dest));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not send a NOTIFY"),
                }
            }
            (Ok(_), None) => {
                tracing::info!(%aor, "a watcher cannot be reached: its subscription stays until it expires")
            }
            (Err(e), _) => {
                tracing::warn!(%aor, error = %e, "a subscription's state not stored: NOTIFY not sent, trying again");
                self.watching.dirty.insert(aor.clone());
            }
        }
        let left = self.watching.writes_left.entry(aor.clone()).or_insert(1);
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.watching.writes_left.remove(&aor);
            self.finish_evaluation(aor, now);
        }
    }

    fn finish_evaluation(&mut self, aor: Aor, now: Now) {
        self.watching.in_flight.remove(&aor);
        if self.watching.dirty.remove(&aor) {
            self.evaluate(aor, now);
        }
    }

    /// Looks at `aor` again at `at_ms` (wall clock).
    fn schedule(&mut self, aor: &Aor, at_ms: u64, now: Now) {
        let at = now.mono + Duration::from_millis(at_ms.saturating_sub(now.wall_ms));
        // An earlier look is already due: it schedules the next one.
        if self.watching.due_at.get(aor).is_some_and(|t| *t <= at) {
            return;
        }
        self.watching.due_at.insert(aor.clone(), at);
        let list = self.watching.due.entry(at).or_default();
        if !list.contains(aor) {
            list.push(aor.clone());
        }
    }

    /// Keys whose next expiry came are looked at again (by their notifier).
    pub(super) fn watch_timers(&mut self, now: Now) {
        while let Some(entry) = self.watching.due.first_entry() {
            if *entry.key() > now.mono {
                break;
            }
            let at = *entry.key();
            for aor in entry.remove() {
                if self.watching.due_at.get(&aor) == Some(&at) {
                    self.watching.due_at.remove(&aor);
                }
                self.changed(aor, now);
            }
        }
    }

    // ---- notifying ------------------------------------------------------------

    /// The NOTIFY carrying `content` (its type and body; none for a
    /// pending or rejected presence subscription) for `sub` (its state
    /// already advanced), with its branch and where it goes; `None` when
    /// the watcher cannot be reached from here.
    fn notify_request(
        &mut self,
        sub: &Subscription,
        content: Option<(&str, Vec<u8>)>,
        ending: bool,
        now: Now,
    ) -> Option<(Bytes, String, Dest)> {
        let target = sub.target();
        let dialog = Dialog {
            call_id: &sub.call_id,
            caller_tag: &sub.remote_tag,
        };
        let t: Target = self
            .binding_target(&target, dialog, now.secs())
            .or_else(|| {
                // The member that holds the watcher's flow is gone: from
                // here, to the watcher's address or first route hop.
                let mut t = Target::hop(self.binding_dest(&target)?);
                t.push_route = target
                    .path
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                Some(t)
            })?;
        let (mut w, branch) = self.own_request(&Method::Notify, "n", &sub.remote_target, &t);
        w.header_fmt(
            HeaderName::From,
            format_args!(
                "<{}>;tag={}",
                String::from_utf8_lossy(&sub.resource),
                String::from_utf8_lossy(&sub.local_tag)
            ),
        );
        w.header_fmt(
            HeaderName::To,
            format_args!(
                "<{}>;tag={}",
                String::from_utf8_lossy(&sub.remote_uri),
                String::from_utf8_lossy(&sub.remote_tag)
            ),
        );
        w.header(HeaderName::CallId, &sub.call_id);
        w.header_fmt(HeaderName::CSeq, format_args!("{} NOTIFY", sub.local_cseq));
        w.header(
            HeaderName::Contact,
            self.subscription_contact(sub, now).as_bytes(),
        );
        w.header(HeaderName::Event, &sub.event);
        let left = sub.expires_at_ms.saturating_sub(now.wall_ms).div_ceil(1000);
        match (ending, &content) {
            (true, _) if sub.expires_at_ms > now.wall_ms => {
                w.header(HeaderName::SubscriptionState, b"terminated;reason=rejected")
            }
            (true, _) => w.header(HeaderName::SubscriptionState, b"terminated;reason=timeout"),
            (false, None) => w.header_fmt(
                HeaderName::SubscriptionState,
                format_args!("pending;expires={left}"),
            ),
            (false, Some(_)) => w.header_fmt(
                HeaderName::SubscriptionState,
                format_args!("active;expires={left}"),
            ),
        };
        let body = match content {
            Some((content_type, body)) => {
                w.header(HeaderName::ContentType, content_type.as_bytes());
                body
            }
            None => Vec::new(),
        };
        Some((w.finish(&body), branch, t.dest))
    }

    /// A response to a request of the notifier's (a NOTIFY or a watch
    /// message), or its failure (`None`); false when `client` is neither.
    pub(super) fn notifier_answered(
        &mut self,
        client: ClientKey,
        status: Option<u16>,
        now: Now,
    ) -> bool {
        if status.is_some_and(|s| s < 200) {
            return self.watching.told.contains_key(&client)
                || self.watching.notifies.contains_key(&client);
        }
        if let Some(aor) = self.watching.told.remove(&client) {
            if status.is_none() {
                tracing::warn!(%aor, "a key's notifier did not answer: notifying here");
                self.evaluate(aor, now);
            }
            return true;
        }
        let Some((aor, mut sub, dest)) = self.watching.notifies.remove(&client) else {
            return false;
        };
        // A NOTIFY sent through the watcher's edge that got no answer: the
        // edge is gone, not (yet) the watcher. The subscription is moved
        // here (NOTIFYs go from here to the watcher's Contact) and its
        // full state told again.
        if status.is_none() && matches!(dest, Dest::Peer(_)) {
            tracing::info!(%aor, "no answer through the watcher's edge: notifying the watcher from here");
            sub.edge = self.me.node_id;
            sub.digest = 0;
            sub.notified.clear();
            self.locate(
                LocationOp::Subscription {
                    aor: aor.clone(),
                    sub: Box::new(sub),
                    remove: false,
                },
                Pending::Rehomed { aor },
            );
            return true;
        }
        // RFC 6665 §4.2.2: a NOTIFY that fails with 481, or gets no answer
        // at all, ends the subscription.
        if matches!(status, Some(481) | None) {
            tracing::info!(%aor, "a watcher is gone: its subscription ends");
            self.observer
                .observe(Metric::Subscription(SubscriptionEvent::WatcherGone));
            self.locate(
                LocationOp::Subscription {
                    aor: aor.clone(),
                    sub: Box::new(sub),
                    remove: true,
                },
                Pending::Purge { aor },
            );
        }
        true
    }

    /// A notifier's transaction ended: nothing more will come for it.
    pub(super) fn notifier_forget(&mut self, client: &ClientKey) {
        self.watching.notifies.remove(client);
        self.watching.told.remove(client);
    }
}
