//! Locating the servers of a SIP URI (RFC 3263 §4), sans-IO: the
//! [`Locator`] says which DNS question to ask ([`Step::Ask`]) and, fed the
//! answers, names one server after another ([`Step::Server`]) until none
//! is left. A caller fails over by asking for the next: servers are found
//! lazily, so a call that the first server takes costs only its queries.
//!
//! - A numeric host is the server (its port, or the transport's default).
//! - A host name with a port: its addresses (A/AAAA), at that port.
//! - A `transport` parameter without a port: the SRV records of that
//!   transport, else the host's addresses at the default port.
//! - Neither: the host's NAPTR records (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`,
//!   flag `s`, in order then preference) name SRV records; with no usable
//!   NAPTR, the SRV records of each supported transport are asked in turn;
//!   with no SRV record at all, the host's addresses over UDP (TLS for
//!   `sips:`) at the default port.
//! - SRV records are tried by priority, and within one priority in the
//!   random order their weights give (RFC 2782); each target's addresses
//!   in the order DNS gave them. A server is named once.
//!
//! A `sips:` URI is reached over TLS only. Which transports this node can
//! open toward a server is the caller's (`supported`).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use ringmesh_sip::{Scheme, Uri};

use crate::binding::Transport;
use crate::dns::{Naptr, Query, Resolved, Srv};

/// One server to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Server {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask DNS this and give the answer to [`Locator::answer`].
    Ask(Query),
    /// Try this server.
    Server(Server),
    /// No server (left); why, for logs and the Warning the caller sends.
    Exhausted(String),
}

/// Which answer the locator waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Naptr,
    Srv(Transport),
    Addrs(Transport, u16),
}

/// The servers of one URI, found as they are needed (see the module docs).
#[derive(Debug, Clone)]
pub struct Locator {
    /// The host name, without a trailing dot.
    host: String,
    /// The transports that may be used, in this node's preference.
    allowed: Vec<Transport>,
    rng: u64,
    asked: Option<Asked>,
    /// The NAPTR question is still to be asked.
    naptr: bool,
    /// SRV names still to ask, each with its transport.
    srv: VecDeque<(Transport, String)>,
    /// An SRV record was found (no address fallback then).
    found_srv: bool,
    /// When no SRV record is found: the host's addresses, with this
    /// transport, at its default port.
    fallback: Option<Transport>,
    /// Names (or numeric hosts) to resolve: transport, name, port.
    targets: VecDeque<(Transport, String, u16)>,
    /// Servers ready to try.
    servers: VecDeque<Server>,
    tried: Vec<Server>,
    /// Why the last question gave nothing (for [`Step::Exhausted`]).
    why: String,
}

/// The port a transport uses when none is given (RFC 3261 §19.1.2).
pub fn default_port(t: Transport) -> u16 {
    if t.is_secure() { 5061 } else { 5060 }
}

/// The SRV service of a transport (RFC 3263 §4.1), `None` for one DNS
/// does not name.
fn srv_service(t: Transport) -> Option<&'static str> {
    match t {
        Transport::Udp => Some("_sip._udp"),
        Transport::Tcp => Some("_sip._tcp"),
        Transport::Tls => Some("_sips._tcp"),
        Transport::Ws | Transport::Wss => None,
    }
}

/// The transport a NAPTR service field names (RFC 3263 §4.1).
fn naptr_transport(services: &str) -> Option<Transport> {
    match services.to_ascii_uppercase().as_str() {
        "SIP+D2U" => Some(Transport::Udp),
        "SIP+D2T" => Some(Transport::Tcp),
        "SIPS+D2T" => Some(Transport::Tls),
        _ => None,
    }
}

/// A fully qualified name (a trailing dot: no search domain applies).
fn fqdn(name: &str) -> String {
    let mut n = name.trim_end_matches('.').to_ascii_lowercase();
    n.push('.');
    n
}

impl Locator {
    /// The locator of `uri` (a `sip:` or `sips:` URI with a host), trying
    /// only `supported` transports; `seed` makes the SRV weight choices.
    pub fn new(uri: &Uri<'_>, supported: &[Transport], seed: u64) -> Result<Locator, String> {
        let sips = match uri.scheme() {
            Scheme::Sip => false,
            Scheme::Sips => true,
            _ => return Err("not a SIP URI".into()),
        };
        let host = uri.host().ok_or("the URI has no host")?;
        let allowed: Vec<Transport> = supported
            .iter()
            .copied()
            .filter(|t| srv_service(*t).is_some() && (!sips || t.is_secure()))
            .collect();
        let named = match uri.param("transport") {
            None => None,
            Some(v) => {
                let t = v
                    .and_then(Transport::from_token)
                    .filter(|t| allowed.contains(t))
                    .ok_or_else(|| {
                        format!(
                            "transport={} cannot be used toward it",
                            String::from_utf8_lossy(v.unwrap_or_default())
                        )
                    })?;
                Some(t)
            }
        };
        let default = named
            .or_else(|| {
                let first = if sips { Transport::Tls } else { Transport::Udp };
                allowed
                    .contains(&first)
                    .then_some(first)
                    .or(allowed.first().copied())
            })
            .ok_or("no transport this node can open reaches it")?;
        let name = String::from_utf8_lossy(host.text)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let mut l = Locator {
            host: name.clone(),
            allowed,
            rng: seed,
            asked: None,
            naptr: false,
            srv: VecDeque::new(),
            found_srv: false,
            fallback: None,
            targets: VecDeque::new(),
            servers: VecDeque::new(),
            tried: Vec::new(),
            why: String::new(),
        };
        match (host.ip(), uri.port(), named) {
            (Some(ip), port, _) => l.servers.push_back(Server {
                transport: default,
                addr: SocketAddr::new(ip, port.unwrap_or(default_port(default))),
            }),
            (None, Some(port), _) => l.targets.push_back((default, name, port)),
            (None, None, Some(t)) => {
                let srv = l.srv_name(t);
                l.srv.push_back((t, srv));
                l.fallback = Some(t);
            }
            (None, None, None) => {
                l.naptr = true;
                l.fallback = Some(default);
            }
        }
        Ok(l)
    }

    /// The host name the URI names (lower case, no trailing dot).
    pub fn host(&self) -> &str {
        &self.host
    }

    fn srv_name(&self, t: Transport) -> String {
        fqdn(&format!(
            "{}.{}",
            srv_service(t).expect("an SRV transport"),
            self.host
        ))
    }

    /// The next server, or the question to ask first.
    pub fn step(&mut self) -> Step {
        if self.asked.is_some() {
            // (A caller that asks again before answering gets the same
            // question.)
            return Step::Ask(self.question());
        }
        loop {
            if let Some(s) = self.servers.pop_front() {
                if !self.tried.contains(&s) {
                    self.tried.push(s);
                    return Step::Server(s);
                }
                continue;
            }
            if let Some((t, name, port)) = self.targets.pop_front() {
                if let Ok(ip) = name.parse::<IpAddr>() {
                    self.servers.push_back(Server {
                        transport: t,
                        addr: SocketAddr::new(ip, port),
                    });
                    continue;
                }
                self.targets.push_front((t, name, port));
                self.asked = Some(Asked::Addrs(t, port));
                return Step::Ask(self.question());
            }
            if std::mem::take(&mut self.naptr) {
                self.asked = Some(Asked::Naptr);
                return Step::Ask(self.question());
            }
            if let Some((t, _)) = self.srv.front() {
                self.asked = Some(Asked::Srv(*t));
                return Step::Ask(self.question());
            }
            if let Some(t) = self.fallback.take().filter(|_| !self.found_srv) {
                self.targets
                    .push_back((t, self.host.clone(), default_port(t)));
                continue;
            }
            let why = if self.why.is_empty() {
                format!("no server of {} is left", self.host)
            } else {
                std::mem::take(&mut self.why)
            };
            return Step::Exhausted(why);
        }
    }

    /// The question the locator waits on.
    fn question(&self) -> Query {
        match self.asked.as_ref().expect("a question") {
            Asked::Naptr => Query::Naptr {
                name: fqdn(&self.host),
            },
            Asked::Srv(_) => Query::Srv {
                name: self.srv.front().expect("an SRV name").1.clone(),
            },
            Asked::Addrs(..) => Query::Addrs {
                name: fqdn(&self.targets.front().expect("a target").1),
            },
        }
    }

    /// The answer to the last [`Step::Ask`]; then the next step.
    pub fn answer(&mut self, answer: Resolved) -> Step {
        let Some(asked) = self.asked.take() else {
            return self.step();
        };
        let asked_name = match &asked {
            Asked::Naptr => fqdn(&self.host),
            Asked::Srv(_) => self.srv.pop_front().map(|(_, n)| n).unwrap_or_default(),
            Asked::Addrs(..) => self
                .targets
                .pop_front()
                .map(|(_, n, _)| n)
                .unwrap_or_default(),
        };
        match (asked, answer) {
            (Asked::Naptr, Resolved::Naptr(records)) => self.naptrs(&records),
            (Asked::Naptr, other) => {
                self.failed(&asked_name, other);
                self.naptrs(&[]);
            }
            (Asked::Srv(t), Resolved::Srv(records)) => {
                let ordered = order_srv(records, &mut self.rng);
                self.found_srv |= !ordered.is_empty();
                for r in ordered {
                    self.targets.push_back((t, r.target, r.port));
                }
            }
            (Asked::Addrs(t, port), Resolved::Addrs(ips)) => {
                for ip in ips {
                    self.servers.push_back(Server {
                        transport: t,
                        addr: SocketAddr::new(ip, port),
                    });
                }
            }
            (_, other) => self.failed(&asked_name, other),
        }
        self.step()
    }

    /// Notes why a question gave nothing.
    fn failed(&mut self, name: &str, answer: Resolved) {
        self.why = match answer {
            Resolved::NotFound => format!("{name} has no such record"),
            Resolved::Failed(why) => format!("{name}: {why}"),
            other => format!("{name}: an answer of another type ({other:?})"),
        };
    }

    /// NAPTR records: the SRV names of usable ones, in order; none usable
    /// means every supported transport's SRV name.
    fn naptrs(&mut self, records: &[Naptr]) {
        let mut usable: Vec<(&Naptr, Transport)> = records
            .iter()
            .filter(|r| r.flags.eq_ignore_ascii_case("s"))
            .filter_map(|r| naptr_transport(&r.services).map(|t| (r, t)))
            .filter(|(_, t)| self.allowed.contains(t))
            .collect();
        usable.sort_by_key(|(r, _)| (r.order, r.preference));
        for (r, t) in usable {
            let name = fqdn(&r.replacement);
            if name != "." && !self.srv.iter().any(|(_, n)| *n == name) {
                self.srv.push_back((t, name));
            }
        }
        if self.srv.is_empty() {
            for t in self.allowed.clone() {
                let name = self.srv_name(t);
                self.srv.push_back((t, name));
            }
        }
    }
}

/// splitmix64: the next pseudo-random number of `state`.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SRV records in the order to try them (RFC 2782): by priority; within
/// one, repeatedly the record whose running weight sum first reaches a
/// random number from 0 to the sum of those left (weight 0 first in the
/// running sum, so it is chosen only by a 0 draw or when alone). A lone
/// target "." (the service is not offered) gives none.
pub fn order_srv(mut records: Vec<Srv>, rng: &mut u64) -> Vec<Srv> {
    records.retain(|r| !r.target.trim_end_matches('.').is_empty());
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records;
    while !rest.is_empty() {
        let p = rest[0].priority;
        let n = rest.iter().take_while(|r| r.priority == p).count();
        let mut group: Vec<Srv> = rest.drain(..n).collect();
        while !group.is_empty() {
            let sum: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
            let draw = next_random(rng) % (sum + 1);
            let mut running = 0;
            let at = group
                .iter()
                .position(|r| {
                    running += u64::from(r.weight);
                    running >= draw
                })
                .unwrap_or(0);
            out.push(group.remove(at));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    fn locator(uri: &str) -> Locator {
        Locator::new(&Uri::parse(uri.as_bytes()).unwrap(), &ALL, 7).unwrap()
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn naptr(order: u16, preference: u16, services: &str, replacement: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: "s".into(),
            services: services.into(),
            regexp: String::new(),
            replacement: replacement.into(),
        }
    }

    fn server(t: Transport, addr: &str) -> Step {
        Step::Server(Server {
            transport: t,
            addr: addr.parse().unwrap(),
        })
    }

    fn ask_srv(name: &str) -> Step {
        Step::Ask(Query::Srv { name: name.into() })
    }

    fn ask_addrs(name: &str) -> Step {
        Step::Ask(Query::Addrs { name: name.into() })
    }

    fn ips(list: &[&str]) -> Resolved {
        Resolved::Addrs(list.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn a_numeric_host_is_the_server() {
        let mut l = locator("sip:bob@192.0.2.7");
        assert_eq!(l.step(), server(Transport::Udp, "192.0.2.7:5060"));
        assert!(matches!(l.step(), Step::Exhausted(_)));
        let mut l = locator("sips:bob@[2001:db8::1]:7000");
        assert_eq!(l.step(), server(Transport::Tls, "[2001:db8::1]:7000"));
        let mut l = locator("sip:bob@192.0.2.7;transport=tcp");
        assert_eq!(l.step(), server(Transport::Tcp, "192.0.2.7:5060"));
    }

    #[test]
    fn a_name_with_a_port_is_its_addresses() {
        let mut l = locator("sip:bob@b.test:5080;transport=TCP");
        assert_eq!(l.step(), ask_addrs("b.test."));
        assert_eq!(
            l.answer(ips(&["192.0.2.1", "192.0.2.2"])),
            server(Transport::Tcp, "192.0.2.1:5080")
        );
        assert_eq!(l.step(), server(Transport::Tcp, "192.0.2.2:5080"));
        assert!(matches!(l.step(), Step::Exhausted(_)));
    }

    #[test]
    fn naptr_then_srv_then_addresses_with_failover_down_the_list() {
        let mut l = locator("sip:bob@B.test");
        assert_eq!(
            l.step(),
            Step::Ask(Query::Naptr {
                name: "b.test.".into()
            })
        );
        let step = l.answer(Resolved::Naptr(vec![
            naptr(20, 10, "SIP+D2U", "_sip._udp.b.test"),
            naptr(10, 10, "SIP+D2T", "_sip._tcp.b.test."),
            naptr(10, 5, "E2U+sip", "ignored.b.test"),
            naptr(5, 5, "SIP+D2S", "_sip._sctp.b.test"),
        ]));
        assert_eq!(step, ask_srv("_sip._tcp.b.test."), "order first");
        let step = l.answer(Resolved::Srv(vec![
            srv(20, 0, 5062, "backup.b.test."),
            srv(10, 0, 5061, "main.b.test."),
        ]));
        assert_eq!(step, ask_addrs("main.b.test."), "priority first");
        assert_eq!(
            l.answer(ips(&["192.0.2.10"])),
            server(Transport::Tcp, "192.0.2.10:5061")
        );
        // That server failed: the next is found only now.
        assert_eq!(l.step(), ask_addrs("backup.b.test."));
        assert_eq!(
            l.answer(Resolved::Failed("timeout".into())),
            ask_srv("_sip._udp.b.test."),
            "then the next NAPTR's records"
        );
        assert_eq!(
            l.answer(Resolved::Srv(vec![srv(1, 1, 5060, "192.0.2.20")])),
            server(Transport::Udp, "192.0.2.20:5060")
        );
        match l.step() {
            Step::Exhausted(why) => assert!(why.contains("timeout"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_naptr_asks_each_transports_srv_then_the_host() {
        let mut l = locator("sip:bob@b.test");
        l.step();
        assert_eq!(l.answer(Resolved::NotFound), ask_srv("_sip._udp.b.test."));
        assert_eq!(l.answer(Resolved::NotFound), ask_srv("_sip._tcp.b.test."));
        assert_eq!(l.answer(Resolved::NotFound), ask_srv("_sips._tcp.b.test."));
        assert_eq!(l.answer(Resolved::NotFound), ask_addrs("b.test."));
        assert_eq!(
            l.answer(ips(&["192.0.2.5"])),
            server(Transport::Udp, "192.0.2.5:5060")
        );
        match l.step() {
            Step::Exhausted(why) => assert!(why.contains("b.test"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sips_is_tls_only_and_a_named_transport_must_be_usable() {
        let mut l = locator("sips:bob@b.test");
        l.step();
        let step = l.answer(Resolved::Naptr(vec![
            naptr(1, 1, "SIP+D2U", "_sip._udp.b.test"),
            naptr(2, 1, "SIPS+D2T", "_sips._tcp.b.test"),
        ]));
        assert_eq!(step, ask_srv("_sips._tcp.b.test."));
        assert_eq!(l.answer(Resolved::NotFound), ask_addrs("b.test."));
        assert_eq!(
            l.answer(ips(&["192.0.2.5"])),
            server(Transport::Tls, "192.0.2.5:5061")
        );
        let udp_only = [Transport::Udp];
        let uri = Uri::parse(b"sips:bob@b.test").unwrap();
        assert!(Locator::new(&uri, &udp_only, 1).is_err());
        let uri = Uri::parse(b"sip:bob@b.test;transport=sctp").unwrap();
        let err = Locator::new(&uri, &ALL, 1).unwrap_err();
        assert!(err.contains("sctp"), "{err}");
        let uri = Uri::parse(b"sip:bob@b.test;transport=tcp").unwrap();
        let mut l = Locator::new(&uri, &ALL, 1).unwrap();
        assert_eq!(l.step(), ask_srv("_sip._tcp.b.test."));
    }

    #[test]
    fn a_server_is_named_once() {
        let mut l = locator("sip:bob@b.test;transport=udp");
        l.step();
        l.answer(Resolved::Srv(vec![
            srv(1, 0, 5060, "192.0.2.1"),
            srv(2, 0, 5060, "192.0.2.1"),
        ]));
        assert!(matches!(l.step(), Step::Exhausted(_)));
    }

    #[test]
    fn srv_weights_share_the_first_choice_as_rfc_2782_says() {
        let mut rng = 1;
        let records = vec![
            srv(10, 1, 1, "a."),
            srv(10, 3, 2, "b."),
            srv(10, 0, 3, "zero."),
            srv(5, 0, 4, "first."),
            srv(20, 5, 5, "last."),
        ];
        // How often each of the priority-10 records comes first among them:
        // a, b, zero.
        let mut firsts = [0u32; 3];
        for _ in 0..4000 {
            let order = order_srv(records.clone(), &mut rng);
            let names: Vec<&str> = order.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(names[0], "first.");
            assert_eq!(names[4], "last.");
            let second = match names[1] {
                "a." => 0,
                "b." => 1,
                _ => 2,
            };
            firsts[second] += 1;
        }
        // Draws 0..=4 over [zero 0, a 1, b 3]: zero takes 1 in 5, a 1 in
        // 5, b 3 in 5.
        let share = |n: u32| f64::from(n) / 4000.0;
        assert!((share(firsts[0]) - 0.2).abs() < 0.03, "{firsts:?}");
        assert!((share(firsts[1]) - 0.6).abs() < 0.03, "{firsts:?}");
        assert!((share(firsts[2]) - 0.2).abs() < 0.03, "{firsts:?}");
        assert!(order_srv(vec![srv(0, 0, 0, ".")], &mut rng).is_empty());
    }
}
