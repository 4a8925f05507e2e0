//! The proxy's side of brute-force protection ([`crate::guard`]): a banned
//! source is refused (403) or ignored before a transaction is made for it;
//! a failed digest response is reported to the member that counts its
//! source; bans and lifts reach every member as SIP MESSAGE requests over
//! the overlay links.

use ringmesh_sip::transaction::ClientKey;
use ringmesh_sip::{HeaderName, Message, Method, digest};

use super::{BRANCH_PREFIX, Now, Proxy};
use crate::binding::FlowRef;
use crate::guard::{self, Ban, CONTENT_TYPE, Check, GuardMsg, Source};
use crate::observe::{GuardEvent, Metric};
use crate::token::Dest;

impl Proxy {
    /// Whether a message from `flow` is stopped here: a request (not ACK or
    /// CANCEL, not an emergency, not from a trusted element) from a banned
    /// source, or with credentials of a banned (source, identity) pair. It
    /// is answered 403 without a transaction, or, past the first few,
    /// dropped.
    pub(super) fn banned(&mut self, msg: &Message, flow: FlowRef, now: Now) -> bool {
        if !msg.is_request()
            || matches!(msg.method(), Method::Ack | Method::Cancel)
            || super::is_emergency(msg, &self.policy.emergency_numbers)
            || self.trusted_element(flow).is_some()
        {
            return false;
        }
        let identity = if self.guard.has_pair_bans() {
            self.digest_username(msg)
        } else {
            None
        };
        let source = Source::of(flow.peer().ip());
        match self.guard.check(source, identity.as_deref(), now.wall_ms) {
            Check::Allow => false,
            Check::Refuse => {
                self.observer.observe(Metric::Guard(GuardEvent::Refused));
                let tag = self.to_tag(msg);
                let mut w = msg.response_writer(403, Some(&tag));
                w.header(
                    HeaderName::Warning,
                    b"399 ringmesh \"too many failed authentication attempts\"",
                );
                let bytes = w.finish(b"");
                self.send(Dest::Flow(flow), bytes);
                true
            }
            Check::Drop => {
                self.observer.observe(Metric::Guard(GuardEvent::Dropped));
                true
            }
        }
    }

    /// The digest username of a request's credentials for our realm.
    fn digest_username(&self, msg: &Message) -> Option<String> {
        let realm = self.auth.as_ref()?.realm().as_bytes();
        [false, true]
            .into_iter()
            .find_map(|proxy| digest::find_credentials(msg, proxy, realm))
            .map(|c| String::from_utf8_lossy(&c.username()).into_owned())
    }

    /// A phone on `flow` answered a challenge wrongly: the failure goes to
    /// the member that counts its source (this node, in a farm of one).
    pub(super) fn guard_failed(&mut self, msg: &Message, flow: FlowRef, now: Now) {
        let Some(identity) = self.digest_username(msg) else {
            return;
        };
        let source = Source::of(flow.peer().ip());
        let owner = self.guard_owner(source);
        if owner == self.me.node_id {
            self.count_failure(source, &identity, now);
        } else {
            self.send_guard(owner, &GuardMsg::Failure { source, identity }, now);
        }
    }

    fn guard_owner(&self, source: Source) -> [u8; 16] {
        self.owner_of(source.ring_key())
    }

    /// The live member (this one included) that acts for `key`.
    pub(super) fn owner_of(&self, key: u128) -> [u8; 16] {
        let mut members = self
            .farm
            .as_ref()
            .map(|f| f.alive_ids())
            .unwrap_or_default();
        if !members.contains(&self.me.node_id) {
            members.push(self.me.node_id);
        }
        guard::owner_of(key, &members).unwrap_or(self.me.node_id)
    }

    /// Counts a failure this node owns; a ban it decides applies here and
    /// goes to every member.
    fn count_failure(&mut self, source: Source, identity: &str, now: Now) {
        for ban in self.guard.count_failure(source, identity, now.wall_ms) {
            if let GuardMsg::Ban {
                identity, until_ms, ..
            } = &ban
            {
                tracing::warn!(
                    %source,
                    identity = identity.as_deref().unwrap_or("*"),
                    seconds = until_ms.saturating_sub(now.wall_ms) / 1000,
                    "banned after repeated authentication failures"
                );
            }
            self.apply_guard(&ban, now);
            self.broadcast_guard(&ban, now);
        }
    }

    fn apply_guard(&mut self, msg: &GuardMsg, now: Now) {
        let event = match msg {
            GuardMsg::Ban { identity: None, .. } => GuardEvent::SourceBanned,
            GuardMsg::Ban { .. } => GuardEvent::PairBanned,
            GuardMsg::Lift { .. } => GuardEvent::Lifted,
            GuardMsg::Failure { .. } => return,
        };
        self.observer.observe(Metric::Guard(event));
        self.guard.apply(msg, now.wall_ms);
    }

    fn broadcast_guard(&mut self, msg: &GuardMsg, now: Now) {
        let others: Vec<[u8; 16]> = self
            .farm
            .as_ref()
            .map(|f| f.alive_ids())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n != self.me.node_id)
            .collect();
        for node in others {
            self.send_guard(node, msg, now);
        }
    }

    /// A guard message to another supernode.
    fn send_guard(&mut self, node: [u8; 16], msg: &GuardMsg, now: Now) {
        self.message_member(node, "guard", CONTENT_TYPE, msg.encode().as_bytes(), now);
    }

    /// A MESSAGE to `sip:USER@` another supernode carrying `body` of
    /// `content_type`, in its own client transaction over the overlay link
    /// (how members tell each other of bans, and of changes to watched
    /// records); `None` when the member is not alive or the transaction
    /// cannot start.
    pub(super) fn message_member(
        &mut self,
        node: [u8; 16],
        user: &str,
        content_type: &str,
        body: &[u8],
        now: Now,
    ) -> Option<ClientKey> {
        let addr = self.farm.as_ref().and_then(|f| f.sip_addr(&node))?;
        self.branch_counter = self.branch_counter.wrapping_add(1);
        let n = self.branch_counter;
        let branch = format!("{BRANCH_PREFIX}{user}.{n:x}");
        let me = hex_id(&self.me.node_id);
        let mut w = ringmesh_sip::Writer::request(
            &Method::Message,
            format!("sip:{user}@{addr}").as_bytes(),
        );
        w.header_fmt(
            HeaderName::Via,
            format_args!(
                "SIP/2.0/TCP {}:{};branch={branch}",
                self.me.advertise,
                self.me.port(crate::binding::Transport::Tcp)
            ),
        );
        w.header(HeaderName::MaxForwards, b"1");
        let domain = &self.me.domain;
        w.header_fmt(
            HeaderName::From,
            format_args!("<sip:{user}@{domain}>;tag={n:x}"),
        );
        w.header_fmt(HeaderName::To, format_args!("<sip:{user}@{domain}>"));
        w.header_fmt(HeaderName::CallId, format_args!("{user}-{n:x}-{me}"));
        w.header(HeaderName::CSeq, b"1 MESSAGE");
        w.header(HeaderName::ContentType, content_type.as_bytes());
        match self.txl.send_request_raw(
            w.finish(body),
            &Method::Message,
            branch.as_bytes(),
            Dest::Peer(node),
            true,
            now.mono,
        ) {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(error = %e, user, "could not send a message to a member");
                None
            }
        }
    }

    /// Whether a request from another supernode is a guard message; if so
    /// it is handled (and answered by the caller).
    pub(super) fn on_guard_message(&mut self, msg: &Message, now: Now) -> bool {
        if !is_member_message(msg, "guard", CONTENT_TYPE) {
            return false;
        }
        match GuardMsg::decode(msg.body()) {
            Some(GuardMsg::Failure { source, identity }) => {
                self.count_failure(source, &identity, now)
            }
            Some(other) => self.apply_guard(&other, now),
            None => tracing::warn!("a guard message that does not parse"),
        }
        true
    }

    /// Every ban in force in the farm, as this node knows it.
    pub fn bans(&self, now: Now) -> Vec<Ban> {
        self.guard.bans(now.wall_ms)
    }

    /// Lifts every ban and count of `source`, here and on every member.
    pub fn lift(&mut self, source: Source, now: Now) {
        let msg = GuardMsg::Lift { source };
        self.apply_guard(&msg, now);
        self.broadcast_guard(&msg, now);
        self.drive(now);
    }
}

/// Whether `msg` is what [`Proxy::message_member`] sends to `user` with
/// `content_type`.
pub(super) fn is_member_message(msg: &Message, user: &str, content_type: &str) -> bool {
    *msg.method() == Method::Message
        && msg
            .header(HeaderName::ContentType)
            .is_some_and(|t| t.eq_ignore_ascii_case(content_type.as_bytes()))
        && msg
            .request_uri()
            .is_some_and(|u| u.user() == Some(user.as_bytes()))
}

pub(super) fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
