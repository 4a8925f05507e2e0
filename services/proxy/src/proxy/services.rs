//! Application servers on the path of initial requests (3GPP ISC, as the
//! S-CSCF does it): the served user's initial filter criteria ([`ifc`])
//! are evaluated in priority order, first for the caller (originating),
//! then for the callee (terminating, registered or not). The first that
//! matches sends the request to its server with two Routes: the server's,
//! then one naming this node whose user part seals the served user, the
//! session case and the criterion's priority. The server may proxy the
//! request back along that Route (evaluation resumes after the criterion),
//! answer it, redirect it, or send a new request on it as a B2BUA (the
//! seal is not bound to the Call-ID). A server that answers nothing within
//! the policy's `service_timeout`, fails the transport, or answers 408 or
//! 5xx before any provisional response other than 100 gets its
//! criterion's default handling: the request continues with the next
//! criterion (SESSION_CONTINUED) or is failed (SESSION_TERMINATED: 408
//! when nothing was heard, else the server's status, 503 given as 500).
//!
//! Only trusted elements may use a return Route; a phone that presents
//! one, or a return Route that does not open (forged, another purpose, older
//! than [`RETURN_LIFETIME_SECS`]), gets 403. REGISTER, the farm's own
//! event packages (reg, presence, presence.winfo), PUBLISH and requests
//! for TURN relays are served before any criterion, so criteria never see
//! them.

use std::sync::Arc;

use bytes::Bytes;
use ringmesh_sip::Message;
use ringmesh_sip::aor::Aor;
use ringmesh_sip::transaction::ServerKey;

use super::routing::Target;
use super::{Now, Origin, Pending, Proxy};
use crate::auth::{Found, SubscriberInfo};
use crate::ifc::{self, Case, Criterion};
use crate::location::LocationOp;
use crate::observe::{AppServerEvent, Metric};
use crate::token::{Dest, Purpose};

/// The user part of an application server's return Route begins with
/// this, then the sealed position.
const RETURN_PREFIX: &str = "isc.";
/// How long a return Route is honoured: long enough for a B2BUA to start
/// its outgoing leg after a ring-no-answer timer.
pub(super) const RETURN_LIFETIME_SECS: u64 = 300;

/// Where evaluation resumes: after criterion `priority` of `served`, on
/// side `case`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    pub served: Aor,
    pub case: Case,
    pub priority: i32,
}

impl Position {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(5 + self.served.as_bytes().len());
        b.push(match self.case {
            Case::Originating => 0,
            Case::TerminatingRegistered => 1,
            Case::TerminatingUnregistered => 2,
        });
        b.extend_from_slice(&self.priority.to_be_bytes());
        b.extend_from_slice(self.served.as_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Position> {
        let case = match b.first()? {
            0 => Case::Originating,
            1 => Case::TerminatingRegistered,
            2 => Case::TerminatingUnregistered,
            _ => return None,
        };
        let priority = i32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
        let served = Aor::parse(b.get(5..)?).ok()?;
        Some(Position {
            served,
            case,
            priority,
        })
    }
}

/// What a request carries toward its callee besides itself: the identity
/// the farm asserts for its caller, the charging vector this edge made for
/// it, and where the callee's terminating criteria resume (after an
/// application server of the callee's).
#[derive(Debug, Clone, Default)]
pub(super) struct Onward {
    pub asserted: Option<Bytes>,
    pub charging: Option<Bytes>,
    pub after: Option<(Aor, i32)>,
    /// ENUM was asked for the number already (`numbers.rs`).
    pub enum_done: bool,
}

/// A request at an application server: what resuming without it needs.
#[derive(Debug)]
pub(super) struct ServiceHop {
    origin: Origin,
    /// What the request carries on (its `after` unused).
    onward: Onward,
    served: Arc<SubscriberInfo>,
    position: Position,
    terminate: bool,
    /// Some response came (the timer no longer applies).
    heard: bool,
    /// A provisional response other than 100 came: the server handles
    /// the request, and its failures are its answers.
    alive: bool,
}

impl Proxy {
    /// Whether the Routes that named this node (`popped`) carry an
    /// application server's return: `None` when none does; `Some(None)`
    /// when one does not open; else where evaluation resumes.
    pub(super) fn service_return(
        &self,
        msg: &Message,
        popped: usize,
        now: Now,
    ) -> Option<Option<Position>> {
        msg.routes().take(popped).find_map(|r| {
            let sealed = r.uri().user()?.strip_prefix(RETURN_PREFIX.as_bytes())?;
            Some(
                self.tokens
                    .open_within(
                        Purpose::ServiceReturn,
                        sealed,
                        now.secs(),
                        RETURN_LIFETIME_SECS,
                    )
                    .and_then(|b| Position::decode(&b)),
            )
        })
    }

    /// Originating criteria continue after `after` for `served`, found
    /// in the directory (a request an application server sent back, or a
    /// front end's on a registration's Service-Route).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn originating_for(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: Onward,
        served: &Aor,
        after: Option<i32>,
        now: Now,
    ) {
        let token = self.token();
        let found = match self.auth.as_mut() {
            Some(a) => a.directory.by_public_id(served, token),
            None => Found::Ready(None),
        };
        match found {
            Found::Ready(Some(sub)) => {
                self.originating(server, msg, origin, onward, &sub, after, now)
            }
            // No longer a subscriber: none of its services are left.
            Found::Ready(None) => self.terminating(server, msg, origin, onward, now),
            Found::Pending => self.wait_for_directory(token, server, msg, origin),
            Found::Unavailable => self.reply_unavailable(server, &msg, now),
        }
    }

    /// The caller's next originating criterion after `after` that `msg`
    /// triggers sends it to that server; with none left it goes to its
    /// callee.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn originating(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: Onward,
        served: &Arc<SubscriberInfo>,
        after: Option<i32>,
        now: Now,
    ) {
        let next = ifc::next(&served.services, &msg, Case::Originating, after).cloned();
        match (next, served.public_ids.first()) {
            (Some(c), Some(aor)) => {
                let position = Position {
                    served: aor.clone(),
                    case: Case::Originating,
                    priority: c.priority,
                };
                let hop = ServiceHop {
                    origin,
                    onward,
                    served: served.clone(),
                    position,
                    terminate: c.terminate,
                    heard: false,
                    alive: false,
                };
                self.send_to_service(server, msg, &c, hop, now)
            }
            _ => self.terminating(server, msg, origin, onward, now),
        }
    }

    /// The request goes to its callee: the bindings of the AOR its
    /// Request-URI names are looked up.
    pub(super) fn terminating(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: Onward,
        now: Now,
    ) {
        let Some((aor, _)) = msg.request_uri().and_then(|u| self.callee_of(&u)) else {
            return self.reply(server, &msg, 480, &[], now);
        };
        self.locate(
            LocationOp::Lookup {
                aor,
                now_ms: now.wall_ms,
            },
            Pending::Route {
                server,
                msg,
                origin,
                onward,
            },
        );
    }

    /// The callee's next terminating criterion for `msg` (after the one
    /// `onward` resumes from, when it is this callee's), if any: the
    /// request then goes to that server instead of the bindings.
    /// Returns the request back when no criterion takes it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn terminating_service(
        &mut self,
        server: ServerKey,
        msg: Message,
        origin: Origin,
        onward: &Onward,
        callee: &Arc<SubscriberInfo>,
        registered: bool,
        now: Now,
    ) -> Option<Message> {
        if callee.services.is_empty() {
            return Some(msg);
        }
        let case = if registered {
            Case::TerminatingRegistered
        } else {
            Case::TerminatingUnregistered
        };
        let after = onward
            .after
            .as_ref()
            .filter(|(aor, _)| callee.owns(aor))
            .map(|(_, p)| *p);
        let Some(c) = ifc::next(&callee.services, &msg, case, after).cloned() else {
            return Some(msg);
        };
        let Some((served, _)) = msg.request_uri().and_then(|u| self.callee_of(&u)) else {
            return Some(msg);
        };
        let hop = ServiceHop {
            origin,
            onward: Onward {
                after: None,
                ..onward.clone()
            },
            served: callee.clone(),
            position: Position {
                served,
                case,
                priority: c.priority,
            },
            terminate: c.terminate,
            heard: false,
            alive: false,
        };
        self.send_to_service(server, msg, &c, hop, now);
        None
    }

    /// Sends `msg` to criterion `c`'s server with the Route back here, and
    /// starts the server's answer timer.
    fn send_to_service(
        &mut self,
        server: ServerKey,
        msg: Message,
        c: &Criterion,
        hop: ServiceHop,
        now: Now,
    ) {
        let sealed =
            self.tokens
                .seal_for(Purpose::ServiceReturn, &hop.position.encode(), now.secs());
        let t = c.server.transport;
        let back = self.own_route(&format!("{RETURN_PREFIX}{sealed}"), t);
        let target = Target {
            uri: None,
            dest: Dest::Addr {
                transport: t,
                addr: c.server.addr,
            },
            push_route: Some(format!("{}, {back}", c.server.route)),
            called: None,
            service: true,
        };
        let ours = msg.routes().take_while(|r| self.me.is_me(r.uri())).count();
        self.proxy_to(
            server,
            msg,
            hop.origin,
            vec![target],
            ours,
            &hop.onward,
            now,
        );
        if let Some(ctx) = self.proxies.get_mut(&server) {
            ctx.service = Some(Box::new(hop));
            self.service_deadlines
                .push_back((now.mono + self.policy.service_timeout, server));
            self.observer
                .observe(Metric::AppServer(AppServerEvent::Triggered));
        }
    }

    /// A response (`Some`) or a failure (`None`: timeout, transport
    /// error) of the branch of a request at an application server. True
    /// when the server failed it and its default handling took over.
    pub(super) fn service_heard(
        &mut self,
        server: ServerKey,
        status: Option<u16>,
        now: Now,
    ) -> bool {
        let Some(hop) = self
            .proxies
            .get_mut(&server)
            .and_then(|c| c.service.as_deref_mut())
        else {
            return false;
        };
        match status {
            Some(s) if s < 200 => {
                hop.heard = true;
                hop.alive |= s > 100;
                false
            }
            Some(s) if hop.alive || s < 300 || !(s == 408 || s >= 500) => {
                hop.heard = true;
                false
            }
            _ => {
                self.service_failed(server, status, now);
                true
            }
        }
    }

    /// Application servers that answered nothing in time fail.
    pub(super) fn service_timers(&mut self, now: Now) {
        while let Some(&(at, server)) = self.service_deadlines.front() {
            if at > now.mono {
                break;
            }
            self.service_deadlines.pop_front();
            let silent = self
                .proxies
                .get(&server)
                .is_some_and(|c| !c.answered() && c.service.as_deref().is_some_and(|h| !h.heard));
            if silent {
                self.service_failed(server, None, now);
            }
        }
    }

    /// The server failed the request: it is given up there (late answers
    /// are ignored; nothing was heard that a CANCEL could follow, or the
    /// server answered), then continued without it or failed.
    fn service_failed(&mut self, server: ServerKey, status: Option<u16>, now: Now) {
        let Some(mut ctx) = self.proxies.remove(&server) else {
            return;
        };
        for (c, _) in &ctx.branches {
            self.client_to_server.remove(c);
        }
        let (Some(hop), Some(msg)) = (ctx.service.take(), ctx.take_request()) else {
            return;
        };
        let ServiceHop {
            origin,
            onward,
            served,
            position,
            terminate,
            ..
        } = *hop;
        tracing::info!(served = %position.served, priority = position.priority, ?status, terminate, "an application server failed a request");
        if terminate {
            self.observer
                .observe(Metric::AppServer(AppServerEvent::FailedTerminated));
            let status = match status {
                None => 408,
                Some(503) => 500,
                Some(s) => s,
            };
            return self.reply(server, &msg, status, &[], now);
        }
        self.observer
            .observe(Metric::AppServer(AppServerEvent::FailedContinued));
        if position.case.is_terminating() {
            let onward = Onward {
                after: Some((position.served, position.priority)),
                ..onward
            };
            self.terminating(server, *msg, origin, onward, now);
        } else {
            self.originating(
                server,
                *msg,
                origin,
                onward,
                &served,
                Some(position.priority),
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_garbage_does_not_decode() {
        for case in [
            Case::Originating,
            Case::TerminatingRegistered,
            Case::TerminatingUnregistered,
        ] {
            let p = Position {
                served: Aor::parse(b"sip:alice@ringmesh.test").unwrap(),
                case,
                priority: -7,
            };
            assert_eq!(Position::decode(&p.encode()), Some(p));
        }
        assert_eq!(Position::decode(b""), None);
        assert_eq!(Position::decode(b"\x09\0\0\0\x01sip:a@b"), None);
        assert_eq!(Position::decode(b"\0\0\0"), None);
    }
}
