//! Messages for subscribers with no reachable device (RFC 3428 page mode),
//! kept in the record of the callee's AOR on its replicas
//! ([`crate::mailbox`]).
//!
//! - **Keeping.** A `MESSAGE` for a subscriber (not barred) that has no
//!   binding this node can reach is stored, as a phone would get it
//!   (privacy applied), and answered `202 Accepted` with the message's id
//!   in `Ringmesh-Message-Id`. A mailbox holds at most
//!   `Policy::offline_messages` messages (then 480 with a Warning), each
//!   for `Policy::offline_message_ttl` at most and with a body of at most
//!   [`crate::mailbox::MAX_BODY`] bytes (then 480 as before). A MESSAGE
//!   for a stranger or a barred subscriber gets the same 202 and is
//!   dropped: what the farm answers does not tell who is a subscriber
//!   (until a mailbox is full; and a kept message takes a write's time
//!   longer). Two
//!   messages stored at the same moment through two members may both pass
//!   the count: the cap is approximate by that much.
//! - **Delivering.** A REGISTER whose read found kept messages makes its
//!   edge read them and send them to the device that registered, oldest
//!   first, one at a time: the next goes once the previous got a 2xx,
//!   which also removes it from the record. No answer, 408, 480, 486 or a
//!   5xx stops the delivery and keeps the rest (the next REGISTER starts
//!   again); any other final status is the device refusing that message
//!   for good, and it is dropped. Each delivery carries the original
//!   From, To, Call-ID and CSeq number and `Ringmesh-Message-Id`: when a
//!   removal is lost (a supernode died after the 2xx) the message is
//!   delivered again, identical, and the phone can tell.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::transaction::{ClientKey, ServerKey};
use ringmesh_sip::{HeaderName, Message, Method};

use super::privacy::{Privacy, anonymous_from};
use super::services::Onward;
use super::{IdMap, Now, Origin, Pending, Proxy, transport_of};
use crate::auth::SubscriberInfo;
use crate::binding::Binding;
use crate::location::{Located, LocationError, LocationOp};
use crate::mailbox::{MAX_BODY, MessageIds, StoredMessage};
use crate::observe::{MailEvent, Metric};
use crate::registrar::RegisterPlan;
use crate::token::Dialog;

/// The header carrying a kept message's id, in the 202 and every delivery.
pub const MESSAGE_ID_HEADER: &[u8] = b"Ringmesh-Message-Id";

/// This node's deliveries.
#[derive(Debug)]
pub(super) struct Mailboxes {
    /// The ids of the messages this node keeps.
    ids: MessageIds,
    /// Deliveries under way, by AOR.
    delivering: HashMap<Aor, Delivery>,
    /// The delivery awaiting each MESSAGE's answer.
    sent: IdMap<ClientKey, Aor>,
}

#[derive(Debug)]
struct Delivery {
    /// The device that registered.
    to: Binding,
    /// What is left, oldest first; the one in flight is at the front.
    queue: VecDeque<StoredMessage>,
}

impl Mailboxes {
    pub fn new(node_id: &[u8; 16]) -> Mailboxes {
        Mailboxes {
            ids: MessageIds::new(node_id),
            delivering: HashMap::new(),
            sent: IdMap::default(),
        }
    }
}

/// The binding a REGISTER added or refreshed, among the AOR's bindings
/// after it: where kept messages go.
pub(super) fn registered_device<'a>(
    bindings: &'a [Binding],
    plan: &RegisterPlan,
) -> Option<&'a Binding> {
    plan.contacts
        .iter()
        .filter(|c| c.binding.expires_at_ms > 0)
        .find_map(|c| {
            let key = c.binding.key();
            bindings.iter().find(|b| b.key() == key)
        })
}

impl Proxy {
    // ---- keeping --------------------------------------------------------------

    /// The callee of a MESSAGE this node would keep: keeping is on, the
    /// body is small enough and the Request-URI names a subscriber's AOR
    /// (not a GRUU: that names one device).
    fn keepable(&self, msg: &Message) -> Option<Aor> {
        if *msg.method() != Method::Message
            || self.policy.offline_messages == 0
            || msg.body().len() > MAX_BODY
        {
            return None;
        }
        match self.callee_of(&msg.request_uri()?)? {
            (aor, None) => Some(aor),
            _ => None,
        }
    }

    /// Where a MESSAGE for subscriber `sub` is kept when it has no
    /// reachable device: the AOR its bindings live under (an implicit
    /// set's key). `None` when it would not be kept.
    pub(super) fn mailbox_of(&self, msg: &Message, sub: &SubscriberInfo) -> Option<Aor> {
        let aor = self.keepable(msg)?;
        Some(
            sub.implicit_set(&aor)
                .and_then(crate::auth::set_key)
                .cloned()
                .unwrap_or(aor),
        )
    }

    /// The identity the farm asserts for the sender of `msg`: the one it
    /// authenticated, or a trusted element's own assertion.
    pub(super) fn sender_identity(
        &self,
        msg: &Message,
        origin: Origin,
        onward: &Onward,
    ) -> Option<Bytes> {
        onward.asserted.clone().or_else(|| {
            (!origin.is_phone())
                .then(|| msg.header(HeaderName::PAssertedIdentity))
                .flatten()
                .map(Bytes::copy_from_slice)
        })
    }

    /// Keeps `msg`, a MESSAGE for the subscriber whose bindings live under
    /// `key`, which has no reachable device, with the sender's `asserted`
    /// identity; 480 when it cannot be kept.
    pub(super) fn keep_message(
        &mut self,
        server: ServerKey,
        msg: Message,
        key: Aor,
        asserted: Option<Bytes>,
        now: Now,
    ) {
        let privacy = Privacy::of(&msg);
        let from = if privacy.anonymous_from() {
            anonymous_from(&msg)
        } else {
            msg.header(HeaderName::From).unwrap_or_default().to_vec()
        };
        let header = |n| msg.header(n).map(Bytes::copy_from_slice);
        let message = StoredMessage {
            id: self.mailboxes.ids.next(now.wall_ms),
            accepted_ms: now.wall_ms,
            expires_at_ms: now.wall_ms + self.policy.offline_message_ttl.as_millis() as u64,
            from: Bytes::from(from),
            to: header(HeaderName::To).unwrap_or_default(),
            call_id: Bytes::copy_from_slice(msg.call_id()),
            cseq: msg.cseq(),
            asserted: asserted.filter(|_| !privacy.id),
            content_type: header(HeaderName::ContentType)
                .unwrap_or_else(|| Bytes::from_static(b"text/plain")),
            body: msg.body_bytes(),
        };
        let id = message.id;
        self.locate(
            LocationOp::StoreMessage {
                aor: key,
                message: Box::new(message),
                max: self.policy.offline_messages,
                now_ms: now.wall_ms,
            },
            Pending::KeepMessage { server, msg, id },
        );
    }

    /// The message is kept (202), or could not be.
    pub(super) fn message_kept(
        &mut self,
        server: ServerKey,
        msg: Message,
        id: [u8; 16],
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        match result {
            Ok(_) => {
                self.observer.observe(Metric::Mail(MailEvent::Stored));
                self.accepted(server, &msg, &id, now);
            }
            Err(LocationError::Full) => {
                self.observer.observe(Metric::Mail(MailEvent::Full));
                let warning = b"399 ringmesh \"the callee's mailbox is full\"";
                self.reply(server, &msg, 480, &[(HeaderName::Warning, warning)], now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "a message for an offline subscriber not kept");
                self.reply_unavailable(server, &msg, now);
            }
        }
    }

    /// A request for a callee with no binding that is no subscriber, or a
    /// barred one: 480, except for a MESSAGE that a subscriber's would be
    /// kept: it gets the same 202 with an id, and is dropped, so that no
    /// sender can tell who is a subscriber by what it answers.
    pub(super) fn unreachable(&mut self, server: ServerKey, msg: Message, now: Now) {
        if self.keepable(&msg).is_none() {
            return self.reply(server, &msg, 480, &[], now);
        }
        self.observer.observe(Metric::Mail(MailEvent::Discarded));
        let id = self.mailboxes.ids.next(now.wall_ms);
        self.accepted(server, &msg, &id, now);
    }

    /// 202 Accepted, with the message's id.
    fn accepted(&mut self, server: ServerKey, msg: &Message, id: &[u8; 16], now: Now) {
        let tag = self.to_tag(msg);
        let mut w = msg.response_writer(202, Some(&tag));
        w.raw_header(MESSAGE_ID_HEADER, crate::mailbox::id_text(id).as_bytes());
        self.respond(server, 202, w.finish(b""), transport_of(msg), now);
    }

    // ---- delivering -----------------------------------------------------------

    /// A device of `aor` registered here and messages are kept for it:
    /// they are read, then sent to it (unless a delivery to `aor` is
    /// already under way here).
    pub(super) fn open_mailbox(&mut self, aor: Aor, to: Binding, now: Now) {
        if self.mailboxes.delivering.contains_key(&aor) {
            return;
        }
        self.mailboxes.delivering.insert(
            aor.clone(),
            Delivery {
                to,
                queue: VecDeque::new(),
            },
        );
        self.locate(
            LocationOp::Mailbox {
                aor: aor.clone(),
                now_ms: now.wall_ms,
            },
            Pending::Mailbox { aor },
        );
    }

    pub(super) fn mailbox_read(
        &mut self,
        aor: Aor,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        match result {
            Ok(Located::Mailbox(kept)) => {
                if let Some(d) = self.mailboxes.delivering.get_mut(&aor) {
                    d.queue = kept.into();
                }
                self.send_kept(aor, now);
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!(%aor, error = %e, "kept messages not read: the next REGISTER tries again");
                }
                self.mailboxes.delivering.remove(&aor);
            }
        }
    }

    /// Sends the oldest message left for `aor`; the delivery ends when none
    /// is left or the device cannot be reached from here.
    fn send_kept(&mut self, aor: Aor, now: Now) {
        let Some(d) = self.mailboxes.delivering.get(&aor) else {
            return;
        };
        let Some(m) = d.queue.front().cloned() else {
            self.mailboxes.delivering.remove(&aor);
            return;
        };
        let dialog = Dialog {
            call_id: &m.call_id,
            caller_tag: b"",
        };
        let contact = d.to.contact.clone();
        let Some(t) = self.binding_target(&d.to, dialog, now.secs()) else {
            tracing::info!(%aor, "the device that registered cannot be reached: messages stay kept");
            self.mailboxes.delivering.remove(&aor);
            return;
        };
        let (mut w, branch) = self.own_request(&Method::Message, "m", &contact, &t);
        w.header(HeaderName::From, &m.from);
        w.header(HeaderName::To, &m.to);
        w.header(HeaderName::CallId, &m.call_id);
        w.header_fmt(HeaderName::CSeq, format_args!("{} MESSAGE", m.cseq));
        if let Some(a) = &m.asserted {
            w.header(HeaderName::PAssertedIdentity, a);
        }
        w.raw_header(MESSAGE_ID_HEADER, m.id_text().as_bytes());
        w.header(HeaderName::ContentType, &m.content_type);
        let bytes = w.finish(&m.body);
        match self.txl.send_request_raw(
            bytes,
            &Method::Message,
            branch.as_bytes(),
            t.dest,
            t.dest.reliable(),
            now.mono,
        ) {
            Ok(client) => {
                self.mailboxes.sent.insert(client, aor);
            }
            Err(e) => {
                tracing::warn!(%aor, error = %e, "a kept message could not be sent: it stays kept");
                self.mailboxes.delivering.remove(&aor);
            }
        }
    }

    /// A response to a kept message's delivery, or its failure (`None`);
    /// false when `client` is not one.
    pub(super) fn delivery_answered(
        &mut self,
        client: ClientKey,
        status: Option<u16>,
        now: Now,
    ) -> bool {
        if status.is_some_and(|s| s < 200) {
            return self.mailboxes.sent.contains_key(&client);
        }
        let Some(aor) = self.mailboxes.sent.remove(&client) else {
            return false;
        };
        let Some(d) = self.mailboxes.delivering.get_mut(&aor) else {
            return true;
        };
        let event = match status {
            Some(200..=299) => MailEvent::Delivered,
            None | Some(408 | 480 | 486 | 500..=599) => MailEvent::Deferred,
            Some(_) => MailEvent::RefusedByDevice,
        };
        self.observer.observe(Metric::Mail(event));
        if event == MailEvent::Deferred {
            tracing::info!(%aor, ?status, "a device did not take a kept message: the rest stay kept");
            self.mailboxes.delivering.remove(&aor);
            return true;
        }
        let Some(m) = d.queue.pop_front() else {
            return true;
        };
        self.locate(
            LocationOp::RemoveMessage {
                aor: aor.clone(),
                id: m.id,
                expires_at_ms: m.expires_at_ms,
            },
            Pending::MessageRemoved { aor: aor.clone() },
        );
        self.send_kept(aor, now);
        true
    }

    /// A delivery's transaction ended: nothing more will come for it.
    pub(super) fn delivery_forget(&mut self, client: &ClientKey) {
        if let Some(aor) = self.mailboxes.sent.remove(client) {
            self.mailboxes.delivering.remove(&aor);
        }
    }
}
