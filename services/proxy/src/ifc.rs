//! Initial filter criteria: which of a subscriber's initial requests go
//! through which application server (3GPP TS 29.228 trigger points, in the
//! subset the provisioning schema holds).
//!
//! A criterion applies to a session case (originating, terminating with or
//! without bindings) and holds conditions on the method, the Request-URI
//! (a regular expression) and headers (a regular expression some value
//! matches, or mere presence, either possibly negated), combined with
//! "all" or "any". Criteria are tried in ascending priority; the first
//! that matches after the last one served sends the request to its
//! application server, which returns it to the farm through a sealed Route
//! naming where evaluation resumes (`proxy/services.rs`).

use std::net::SocketAddr;

use ringmesh_sip::{HeaderName, Message, Uri};

use crate::binding::Transport;

/// The side of a session a request is on, for its served user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// The served user sent it.
    Originating,
    /// It is addressed to the served user, who has bindings.
    TerminatingRegistered,
    /// It is addressed to the served user, who has none.
    TerminatingUnregistered,
}

impl Case {
    pub fn is_terminating(self) -> bool {
        self != Case::Originating
    }
}

/// The session cases a criterion applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCase {
    Any,
    Originating,
    Terminating,
    TerminatingRegistered,
    TerminatingUnregistered,
}

impl SessionCase {
    fn covers(self, case: Case) -> bool {
        match self {
            SessionCase::Any => true,
            SessionCase::Originating => case == Case::Originating,
            SessionCase::Terminating => case.is_terminating(),
            SessionCase::TerminatingRegistered => case == Case::TerminatingRegistered,
            SessionCase::TerminatingUnregistered => case == Case::TerminatingUnregistered,
        }
    }
}

/// A header condition.
#[derive(Debug, Clone)]
pub struct HeaderCondition {
    name: String,
    known: HeaderName,
    /// None: the header must be present.
    regex: Option<regex::bytes::Regex>,
    negated: bool,
}

/// Where an application server is and how a Route names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppServer {
    /// The Route value the request carries to it (`<uri;lr>`).
    pub route: String,
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// One initial filter criterion.
#[derive(Debug, Clone)]
pub struct Criterion {
    pub priority: i32,
    pub session_case: SessionCase,
    method: Option<String>,
    request_uri: Option<regex::bytes::Regex>,
    headers: Vec<HeaderCondition>,
    /// Conditions combine with "any" (else "all").
    any: bool,
    pub server: AppServer,
    /// What happens when the server does not answer: fail the request
    /// (else skip the server and continue).
    pub terminate: bool,
}

/// A criterion as provisioning stores it, to be compiled.
#[derive(Debug, Clone, Default)]
pub struct CriterionSpec<'a> {
    pub priority: i32,
    pub session_case: Option<SessionCase>,
    pub method: &'a str,
    pub request_uri: &'a str,
    /// (header name, regular expression or empty, negated)
    pub headers: Vec<(&'a str, &'a str, bool)>,
    pub any: bool,
    pub application_server: &'a str,
    pub terminate: bool,
}

/// Regular expressions are bounded as provisioning bounds them.
fn compile(pattern: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(1 << 16)
        .build()
        .map_err(|e| format!("'{pattern}' is not a regular expression: {e}"))
}

impl Criterion {
    /// Compiles a stored criterion; `Err` says why it cannot be used (the
    /// supernode then leaves it out and logs it).
    pub fn new(spec: &CriterionSpec<'_>) -> Result<Criterion, String> {
        let optional = |p: &str| (!p.is_empty()).then(|| compile(p)).transpose();
        let headers = spec
            .headers
            .iter()
            .map(|&(name, re, negated)| {
                Ok(HeaderCondition {
                    name: name.to_string(),
                    known: HeaderName::from_bytes(name.as_bytes()),
                    regex: optional(re)?,
                    negated,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Criterion {
            priority: spec.priority,
            session_case: spec.session_case.unwrap_or(SessionCase::Any),
            method: (!spec.method.is_empty()).then(|| spec.method.to_string()),
            request_uri: optional(spec.request_uri)?,
            headers,
            any: spec.any,
            server: app_server(spec.application_server)?,
            terminate: spec.terminate,
        })
    }

    /// Whether `msg`, on side `case` of its served user, triggers this
    /// criterion.
    pub fn matches(&self, msg: &Message, case: Case) -> bool {
        if !self.session_case.covers(case) {
            return false;
        }
        let method = self
            .method
            .as_ref()
            .map(|m| msg.method().as_bytes() == m.as_bytes());
        let ruri = self
            .request_uri
            .as_ref()
            .map(|re| re.is_match(msg.request_uri_bytes()));
        let mut conditions = method
            .into_iter()
            .chain(ruri)
            .chain(self.headers.iter().map(|h| h.holds(msg)));
        if self.any {
            // No condition at all: the session case alone decides.
            let mut none = true;
            let hit = conditions.any(|c| {
                none = false;
                c
            });
            hit || none
        } else {
            conditions.all(|c| c)
        }
    }
}

impl HeaderCondition {
    fn holds(&self, msg: &Message) -> bool {
        let mut values = msg.headers().filter_map(|(name, written, value)| {
            let same = if self.known == HeaderName::Other {
                name == HeaderName::Other && written.eq_ignore_ascii_case(self.name.as_bytes())
            } else {
                name == self.known
            };
            same.then_some(value)
        });
        let hit = match &self.regex {
            Some(re) => values.any(|v| re.is_match(v)),
            None => values.next().is_some(),
        };
        hit != self.negated
    }
}

/// The first criterion after priority `after` (all when `None`) that
/// `msg` triggers on side `case`. `criteria` is in ascending priority.
pub fn next<'a>(
    criteria: &'a [Criterion],
    msg: &Message,
    case: Case,
    after: Option<i32>,
) -> Option<&'a Criterion> {
    criteria
        .iter()
        .filter(|c| after.is_none_or(|a| c.priority > a))
        .find(|c| c.matches(msg, case))
}

/// An application server's URI: its host an IP address (no names are
/// resolved on the call path), its transport from `transport=` or the
/// scheme.
fn app_server(uri: &str) -> Result<AppServer, String> {
    let u = Uri::parse(uri.as_bytes()).map_err(|_| format!("'{uri}' is not a URI"))?;
    if !u.is_sip_or_sips() {
        return Err(format!("'{uri}' is not a sip: or sips: URI"));
    }
    let ip = u
        .host()
        .and_then(|h| h.ip())
        .ok_or_else(|| format!("'{uri}' does not name its host by IP address"))?;
    let sips = u.scheme() == ringmesh_sip::Scheme::Sips;
    let transport = match (u.transport().and_then(Transport::from_token), sips) {
        (_, true) => Transport::Tls,
        (Some(t @ (Transport::Udp | Transport::Tcp | Transport::Tls)), false) => t,
        (None, false) => Transport::Udp,
        (Some(t), false) => {
            return Err(format!(
                "'{uri}': transport {} cannot reach an application server",
                t.as_str()
            ));
        }
    };
    let port = u.port().unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    let bare = uri.trim();
    let route = if u.param("lr").is_some() {
        format!("<{bare}>")
    } else {
        format!("<{bare};lr>")
    };
    Ok(AppServer {
        route,
        transport,
        addr: SocketAddr::new(ip, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(method: &str, ruri: &str, extra: &str) -> Message {
        Message::parse(Bytes::from(format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:alice@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\
             Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        )))
        .unwrap()
    }

    fn spec<'a>(priority: i32) -> CriterionSpec<'a> {
        CriterionSpec {
            priority,
            application_server: "sip:10.0.0.9:5070",
            ..Default::default()
        }
    }

    #[test]
    fn conditions_combine_all_or_any() {
        let c = Criterion::new(&CriterionSpec {
            method: "INVITE",
            request_uri: "^sip:bob@",
            headers: vec![("Accept-Contact", "(?i)icsi-ref", false)],
            ..spec(1)
        })
        .unwrap();
        let hit = msg(
            "INVITE",
            "sip:bob@x",
            "Accept-Contact: *;+G.3GPP.ICSI-REF=x\r\n",
        );
        assert!(c.matches(&hit, Case::Originating));
        assert!(!c.matches(&msg("INVITE", "sip:bob@x", ""), Case::Originating));
        assert!(!c.matches(
            &msg("MESSAGE", "sip:bob@x", "Accept-Contact: icsi-ref\r\n"),
            Case::Originating
        ));
        let any = Criterion::new(&CriterionSpec {
            any: true,
            ..CriterionSpec {
                method: "INVITE",
                request_uri: "^sip:bob@",
                ..spec(1)
            }
        })
        .unwrap();
        assert!(any.matches(&msg("MESSAGE", "sip:bob@x", ""), Case::Originating));
        assert!(!any.matches(&msg("MESSAGE", "sip:carol@x", ""), Case::Originating));
        // Nothing but the session case.
        let bare = Criterion::new(&CriterionSpec {
            any: true,
            session_case: Some(SessionCase::TerminatingUnregistered),
            ..spec(1)
        })
        .unwrap();
        let m = msg("MESSAGE", "sip:bob@x", "");
        assert!(bare.matches(&m, Case::TerminatingUnregistered));
        assert!(!bare.matches(&m, Case::TerminatingRegistered));
        assert!(!bare.matches(&m, Case::Originating));
    }

    #[test]
    fn headers_match_by_presence_value_or_absence_under_any_name_form() {
        let present = Criterion::new(&CriterionSpec {
            headers: vec![("subject", "", false)],
            ..spec(1)
        })
        .unwrap();
        // The compact form of Subject is s.
        assert!(present.matches(&msg("INVITE", "sip:b@x", "s: hi\r\n"), Case::Originating));
        assert!(!present.matches(&msg("INVITE", "sip:b@x", ""), Case::Originating));
        let absent = Criterion::new(&CriterionSpec {
            headers: vec![("X-Screened", "", true)],
            ..spec(1)
        })
        .unwrap();
        assert!(absent.matches(&msg("INVITE", "sip:b@x", ""), Case::Originating));
        assert!(!absent.matches(
            &msg("INVITE", "sip:b@x", "x-screened: yes\r\n"),
            Case::Originating
        ));
        let not_video = Criterion::new(&CriterionSpec {
            headers: vec![("Content-Type", "video", true)],
            ..spec(1)
        })
        .unwrap();
        assert!(not_video.matches(
            &msg("INVITE", "sip:b@x", "Content-Type: application/sdp\r\n"),
            Case::Originating
        ));
    }

    #[test]
    fn evaluation_resumes_after_the_last_priority_served() {
        let criteria: Vec<Criterion> = [1, 5, 9]
            .into_iter()
            .map(|p| Criterion::new(&spec(p)).unwrap())
            .collect();
        let m = msg("INVITE", "sip:b@x", "");
        let order: Vec<i32> =
            std::iter::successors(next(&criteria, &m, Case::Originating, None), |c| {
                next(&criteria, &m, Case::Originating, Some(c.priority))
            })
            .map(|c| c.priority)
            .collect();
        assert_eq!(order, [1, 5, 9]);
    }

    #[test]
    fn application_servers_are_addresses() {
        let s = app_server("sip:10.0.0.9:5070;transport=tcp").unwrap();
        assert_eq!(
            (s.route.as_str(), s.transport, s.addr),
            (
                "<sip:10.0.0.9:5070;transport=tcp;lr>",
                Transport::Tcp,
                "10.0.0.9:5070".parse().unwrap()
            )
        );
        let s = app_server("sips:[::1];lr").unwrap();
        assert_eq!((s.transport, s.addr.port()), (Transport::Tls, 5061));
        assert_eq!(s.route, "<sips:[::1];lr>");
        assert!(
            app_server("sip:as.example.net")
                .unwrap_err()
                .contains("IP address")
        );
        assert!(app_server("sip:10.0.0.9;transport=ws").is_err());
        assert!(
            Criterion::new(&CriterionSpec {
                request_uri: "(",
                ..spec(1)
            })
            .is_err()
        );
    }
}
