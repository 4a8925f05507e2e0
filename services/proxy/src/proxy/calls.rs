//! Call records at the originating edge ([`crate::cdr`]): an INVITE that
//! enters the farm here (from a phone or a front end, not one an
//! application server returns) starts an attempt and gets a
//! P-Charging-Vector; its final response ends the attempt (a record) or
//! answers the call (an interim record); a BYE through this edge, or the
//! longest dialog running out, ends the call (its final record).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{HeaderName, Message};

use super::{Action, IdMap, Now, Proxy};
use crate::cdr::{CallRecord, CallResult, EndedBy};

/// The calls this edge keeps records of.
#[derive(Debug, Default)]
pub(super) struct Calls {
    /// Attempts waiting for their final response, by server transaction,
    /// with their (Call-ID, caller's tag).
    attempts: IdMap<ServerKey, (Box<CallRecord>, (Bytes, Bytes))>,
    /// Answered calls, by (Call-ID, caller's tag), with their deadline.
    up: HashMap<(Bytes, Bytes), (Box<CallRecord>, Deadline)>,
    /// When each answered call runs out.
    deadlines: BTreeMap<Deadline, (Bytes, Bytes)>,
    /// Charging ids made here.
    made: u64,
}

impl Calls {
    /// Answered calls still up.
    pub fn up(&self) -> usize {
        self.up.len()
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }

    fn remove(&mut self, key: &(Bytes, Bytes)) -> Option<Box<CallRecord>> {
        let (rec, deadline) = self.up.remove(key)?;
        self.deadlines.remove(&deadline);
        Some(rec)
    }
}

/// A call's deadline, made unique by the charging-id counter.
type Deadline = (Instant, u64);

impl Proxy {
    /// An INVITE entering the farm here starts an attempt; returns the
    /// P-Charging-Vector (RFC 7315) it carries on.
    pub(super) fn call_started(
        &mut self,
        server: ServerKey,
        msg: &Message,
        asserted: Option<&Bytes>,
        now: Now,
    ) -> Bytes {
        self.calls.made += 1;
        // Unique in the farm: this node, the time, a counter.
        let n = &self.me.node_id;
        let icid = format!(
            "{:016x}{:x}.{:x}",
            u64::from_be_bytes(n[..8].try_into().expect("8 bytes")),
            now.wall_ms,
            self.calls.made
        );
        let caller = match asserted {
            Some(a) => String::from_utf8_lossy(a).into_owned(),
            None => String::from_utf8_lossy(
                msg.header(HeaderName::PAssertedIdentity)
                    .unwrap_or(msg.from_bytes()),
            )
            .into_owned(),
        };
        let pcv = format!("icid-value={icid};icid-generated-at={}", self.me.advertise);
        let key = (
            msg.share(msg.call_id()),
            msg.share(msg.from_tag().unwrap_or_default()),
        );
        let rec = Box::new(CallRecord {
            interim: false,
            icid,
            call_id: String::from_utf8_lossy(msg.call_id()).into_owned(),
            caller,
            callee: String::from_utf8_lossy(msg.request_uri_bytes()).into_owned(),
            invite_ms: now.wall_ms,
            answer_ms: None,
            end_ms: None,
            status: 0,
            result: CallResult::Failed,
            ended_by: None,
            nodes: vec![self.me.node_id],
        });
        self.calls.attempts.insert(server, (rec, key));
        Bytes::from(pcv)
    }

    /// A 2xx to an attempt: the members on its path, from the flow tokens
    /// of its Record-Route.
    pub(super) fn call_path(&mut self, server: ServerKey, resp: &Message, now_secs: u64) {
        // A farm of one is the whole path.
        let Some((rec, _)) = self
            .calls
            .attempts
            .get_mut(&server)
            .filter(|_| self.farm.is_some())
        else {
            return;
        };
        let tags: Vec<&[u8]> = [resp.from_tag(), resp.to_tag()]
            .into_iter()
            .flatten()
            .collect();
        for rr in resp.record_routes() {
            let node = rr
                .uri()
                .user()
                .and_then(|u| self.tokens.open(u, resp.call_id(), &tags, now_secs))
                .map(|t| t.node);
            if let Some(n) = node.filter(|n| !rec.nodes.contains(n)) {
                rec.nodes.push(n);
            }
        }
    }

    /// The caller got its final response: a failed attempt's record, or an
    /// answered call's interim one (the call is then followed to its end).
    pub(super) fn call_answered(&mut self, server: ServerKey, status: u16, now: Now) {
        let Some((mut rec, key)) = self.calls.attempts.remove(&server) else {
            return;
        };
        rec.status = status;
        if !(200..300).contains(&status) {
            rec.result = if status == 487 {
                CallResult::Cancelled
            } else {
                CallResult::Failed
            };
            rec.end_ms = Some(now.wall_ms);
            return self.actions.push_back(Action::CallRecord(rec));
        }
        rec.answer_ms = Some(now.wall_ms);
        rec.result = CallResult::Answered;
        rec.interim = true;
        self.actions.push_back(Action::CallRecord(rec.clone()));
        let deadline = (now.mono + self.max_call, self.calls.made);
        self.calls.made += 1;
        self.calls.deadlines.insert(deadline, key.clone());
        self.calls.up.insert(key, (rec, deadline));
    }

    /// A BYE of an answered call passes this edge: its final record.
    pub(super) fn call_bye(&mut self, msg: &Message, now: Now) {
        let call_id = msg.call_id();
        let key = |tag: Option<&[u8]>| {
            (
                Bytes::copy_from_slice(call_id),
                Bytes::copy_from_slice(tag.unwrap_or_default()),
            )
        };
        let (rec, by) = match self.calls.remove(&key(msg.from_tag())) {
            Some(rec) => (rec, EndedBy::Caller),
            None => match self.calls.remove(&key(msg.to_tag())) {
                Some(rec) => (rec, EndedBy::Callee),
                None => return,
            },
        };
        self.call_ended(rec, CallResult::Completed, by, now);
    }

    /// Answered calls open for the longest dialog the farm carries are
    /// closed as such.
    pub(super) fn call_timers(&mut self, now: Now) {
        while self.calls.next_due().is_some_and(|at| at <= now.mono) {
            let (_, key) = self.calls.deadlines.pop_first().expect("due");
            if let Some((rec, _)) = self.calls.up.remove(&key) {
                self.call_ended(rec, CallResult::MaxDuration, EndedBy::Farm, now);
            }
        }
    }

    fn call_ended(&mut self, mut rec: Box<CallRecord>, result: CallResult, by: EndedBy, now: Now) {
        rec.interim = false;
        rec.result = result;
        rec.ended_by = Some(by);
        rec.end_ms = Some(now.wall_ms);
        self.actions.push_back(Action::CallRecord(rec));
    }
}
