//! TURN relays for phones: an authenticated `OPTIONS sip:turn@<domain>`
//! is answered 200 with the best relays for the subscriber's region
//! (service discovery, [`crate::discovery`]) and credentials for them in
//! the TURN REST API scheme, as JSON:
//!
//! ```json
//! {"username": "1733420000:alice", "password": "…", "ttl": 86400,
//!  "uris": ["turn:192.0.2.7:3478?transport=udp"]}
//! ```
//!
//! The subscriber's region is its own (provisioning) or, with none, that
//! of the supernode it asks. No relay advertised: 480 with a Warning. The
//! farm offering no TURN (no secret configured): 404.

use ringmesh_sip::transaction::ServerKey;
use ringmesh_sip::{HeaderName, Message, Method};

use super::{Now, Pending, Proxy, transport_of};
use crate::auth::SubscriberInfo;
use crate::discovery::{best, turn_credentials};
use crate::location::{Located, LocationError, LocationOp};

/// The user part of the URI phones ask for relays at.
pub const TURN_USER: &[u8] = b"turn";
/// The service name relays are advertised under.
pub const TURN_SERVICE: &str = "turn";

/// Whether `msg` asks for TURN relays.
pub(super) fn asks_for_relays(msg: &Message) -> bool {
    *msg.method() == Method::Options
        && msg
            .request_uri()
            .is_some_and(|u| u.user() == Some(TURN_USER))
}

impl Proxy {
    /// `sub` (authenticated) asks for relays: they are read from the ring.
    pub(super) fn relays_for(
        &mut self,
        server: ServerKey,
        msg: Message,
        sub: &SubscriberInfo,
        now: Now,
    ) {
        if self.policy.turn.is_none() {
            let warning = b"399 ringmesh \"this farm offers no TURN relays\"";
            return self.reply(server, &msg, 404, &[(HeaderName::Warning, warning)], now);
        }
        let region = if sub.region.is_empty() {
            self.policy.region.clone()
        } else {
            sub.region.clone()
        };
        self.locate(
            LocationOp::Services {
                name: TURN_SERVICE.to_string(),
                now_ms: now.wall_ms,
            },
            Pending::Relays {
                server,
                msg,
                user: sub.private_id.clone(),
                region,
            },
        );
    }

    pub(super) fn relays_found(
        &mut self,
        server: ServerKey,
        msg: Message,
        user: &str,
        region: &str,
        result: Result<Located, LocationError>,
        now: Now,
    ) {
        let Some(turn) = self.policy.turn.clone() else {
            return self.reply(server, &msg, 404, &[], now);
        };
        let relays = match result {
            Ok(Located::Services(all)) => best(all, region, turn.servers, now.wall_ms),
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "TURN relays not read");
                return self.reply_unavailable(server, &msg, now);
            }
        };
        if relays.is_empty() {
            let warning = b"399 ringmesh \"no TURN relay is advertised\"";
            return self.reply(server, &msg, 480, &[(HeaderName::Warning, warning)], now);
        }
        let ttl = turn.ttl.as_secs();
        let (username, password) = turn_credentials(&turn.secret, user, now.wall_ms / 1000 + ttl);
        let uris: Vec<String> = relays
            .iter()
            .map(|r| format!("\"{}\"", json_escape(&r.uri)))
            .collect();
        let body = format!(
            "{{\"username\":\"{}\",\"password\":\"{password}\",\"ttl\":{ttl},\"uris\":[{}]}}",
            json_escape(&username),
            uris.join(",")
        );
        let tag = self.to_tag(&msg);
        let mut w = msg.response_writer(200, Some(&tag));
        w.header(HeaderName::ContentType, b"application/json");
        self.respond(
            server,
            200,
            w.finish(body.as_bytes()),
            transport_of(&msg),
            now,
        );
    }
}

/// `s` as the inside of a JSON string.
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
