//! The transaction machines on a virtual clock: one layer driven by hand,
//! and a client and a server layer joined by a lossy in-memory link.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::header::HeaderName;
use crate::writer::Writer;

fn request(method: &str, branch: &str, cseq: u32) -> Message {
    request_with_via(
        method,
        &format!("SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
        cseq,
        branch,
    )
}

fn request_with_via(method: &str, via: &str, cseq: u32, call: &str) -> Message {
    let m = Method::from_token(method.as_bytes());
    let mut w = Writer::request(&m, b"sip:bob@ringmesh.test");
    w.header(HeaderName::Via, via.as_bytes());
    w.header(HeaderName::MaxForwards, b"70");
    w.header(HeaderName::Route, b"<sip:sn1.ringmesh.test;lr>");
    w.header(HeaderName::From, b"<sip:alice@ringmesh.test>;tag=a1");
    w.header(HeaderName::To, b"<sip:bob@ringmesh.test>");
    w.header(HeaderName::CallId, format!("call-{call}").as_bytes());
    w.header_fmt(HeaderName::CSeq, format_args!("{cseq} {method}"));
    Message::parse(w.finish(b"")).unwrap()
}

fn response(req: &Message, status: u16, tag: &str) -> Message {
    Message::parse(
        req.response_writer(status, Some(tag.as_bytes()))
            .finish(b""),
    )
    .unwrap()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// One layer on a virtual clock; everything it sends and reports is
/// recorded with the time (ms since start).
struct Harness {
    l: TransactionLayer<u32>,
    t0: Instant,
    sent: Vec<(u64, u32, Message)>,
    events: Vec<(u64, Event<u32>)>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            l: TransactionLayer::new(Timers::default()),
            t0: Instant::now(),
            sent: vec![],
            events: vec![],
        }
    }
    fn at(&self, t: u64) -> Instant {
        self.t0 + Duration::from_millis(t)
    }
    fn flush(&mut self, t: u64) {
        while let Some((d, b)) = self.l.poll_transmit() {
            self.sent.push((
                t,
                d,
                Message::parse(b).expect("the layer sends valid messages"),
            ));
        }
        while let Some(e) = self.l.poll_event() {
            self.events.push((t, e));
        }
    }
    /// Runs the timers up to and including `end`.
    fn run_to(&mut self, end: u64) {
        while let Some(at) = self.l.poll_timeout() {
            if at > self.at(end) {
                break;
            }
            self.l.handle_timeout(at);
            self.flush(ms(at - self.t0));
        }
    }
    fn run_all(&mut self) {
        self.run_to(u64::MAX / 4);
        assert!(self.l.poll_timeout().is_none());
    }
    fn recv(&mut self, t: u64, msg: Message, reliable: bool) {
        self.l.handle_message(msg, 7, reliable, self.at(t));
        self.flush(t);
    }
    fn send(&mut self, t: u64, msg: Message, reliable: bool) -> ClientKey {
        let k = self.l.send_request(msg, 9, reliable, self.at(t)).unwrap();
        self.flush(t);
        k
    }
    fn respond(&mut self, t: u64, server: ServerKey, req: &Message, status: u16) {
        let bytes = req.response_writer(status, Some(b"srv")).finish(b"");
        self.l.respond(server, status, bytes, self.at(t)).unwrap();
        self.flush(t);
    }
    fn sent_times(&self, method: Method, status: Option<u16>) -> Vec<u64> {
        self.sent
            .iter()
            .filter(|(_, _, m)| *m.method() == method && m.status() == status)
            .map(|(t, _, _)| *t)
            .collect()
    }
    fn take_events(&mut self) -> Vec<(u64, Event<u32>)> {
        std::mem::take(&mut self.events)
    }
    fn server_key(&self) -> ServerKey {
        self.events
            .iter()
            .find_map(|(_, e)| match e {
                Event::Request { server, .. } | Event::Cancel { server, .. } => Some(*server),
                _ => None,
            })
            .expect("a request event")
    }
}

fn gaps(times: &[u64]) -> Vec<u64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn is_terminated<D>(e: &Event<D>) -> bool {
    matches!(e, Event::Terminated(_))
}

// ---- retransmission schedules ------------------------------------------------

#[test]
fn timer_a_doubles_until_timer_b() {
    let mut h = Harness::new();
    let k = h.send(0, request("INVITE", "z9hG4bKa", 1), false);
    h.run_all();
    let times = h.sent_times(Method::Invite, None);
    assert_eq!(times, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(
        gaps(&times),
        vec![500, 1000, 2000, 4000, 8000, 16000],
        "Timer A is not capped by T2"
    );
    assert!(h.sent.iter().all(|(_, d, _)| *d == 9));
    let ev = h.take_events();
    assert!(
        matches!(ev[0], (32000, Event::Timeout { client }) if client == k),
        "Timer B at 64*T1: {ev:?}"
    );
    assert!(matches!(ev[1], (32000, Event::Terminated(TransactionKey::Client(c))) if c == k));
    assert_eq!(ev.len(), 2);
    assert!(h.l.is_empty());
}

#[test]
fn timer_e_doubles_to_t2_until_timer_f() {
    let mut h = Harness::new();
    let k = h.send(0, request("OPTIONS", "z9hG4bKe", 1), false);
    h.run_all();
    let times = h.sent_times(Method::Options, None);
    assert_eq!(
        gaps(&times),
        vec![500, 1000, 2000, 4000, 4000, 4000, 4000, 4000, 4000, 4000]
    );
    assert_eq!(times.last(), Some(&31500));
    let ev = h.take_events();
    assert!(matches!(ev[0], (32000, Event::Timeout { client }) if client == k));
    assert!(is_terminated(&ev[1].1));
    assert!(h.l.is_empty());
}

#[test]
fn timer_e_is_t2_once_proceeding() {
    let mut h = Harness::new();
    let req = request("REGISTER", "z9hG4bKp", 1);
    let k = h.send(0, req.clone(), false);
    h.recv(200, response(&req, 100, "x"), false);
    h.run_to(10_000);
    assert_eq!(
        h.sent_times(Method::Register, None),
        vec![0, 500, 4500, 8500]
    );
    h.recv(9000, response(&req, 200, "x"), false);
    let ev = h.take_events();
    let statuses: Vec<_> = ev
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Response { client, msg } if *client == k => msg.status(),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, vec![100, 200]);
    // Completed: no more retransmissions, Timer K (T4) then gone.
    h.run_all();
    assert_eq!(h.sent_times(Method::Register, None).len(), 4);
    assert!(matches!(h.events[..], [(14000, Event::Terminated(_))]));
}

#[test]
fn timer_g_doubles_to_t2_until_timer_h() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKg", 1);
    h.recv(0, req.clone(), false);
    let server = h.server_key();
    h.respond(100, server, &req, 486);
    h.run_all();
    let times = h.sent_times(Method::Invite, Some(486));
    assert_eq!(times[0], 100);
    assert_eq!(
        gaps(&times),
        vec![500, 1000, 2000, 4000, 4000, 4000, 4000, 4000, 4000, 4000]
    );
    assert_eq!(times.last(), Some(&31600));
    let tail: Vec<_> = h.events.iter().skip(1).collect();
    assert!(
        matches!(tail[0], (32100, Event::ServerTimeout { server: s }) if *s == server),
        "Timer H: {tail:?}"
    );
    assert!(
        matches!(tail[1], (32100, Event::Terminated(TransactionKey::Server(s))) if *s == server)
    );
    assert!(h.l.is_empty());
}

// ---- server machines ---------------------------------------------------------

#[test]
fn server_invite_ack_confirms_and_timer_i_absorbs() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKsi", 1);
    h.recv(0, req.clone(), false);
    let server = h.server_key();
    // A retransmission before any response gets nothing back.
    h.recv(400, req.clone(), false);
    assert!(h.sent.is_empty());
    h.respond(450, server, &req, 180);
    h.recv(500, req.clone(), false);
    assert_eq!(
        h.sent_times(Method::Invite, Some(180)),
        vec![450, 500],
        "re-sends the last provisional"
    );
    h.respond(600, server, &req, 603);
    h.run_to(1200);
    let resp = response(&req, 603, "srv");
    let ack = Message::parse(req.ack_for(&resp)).unwrap();
    h.recv(1200, ack.clone(), false);
    h.recv(1300, ack.clone(), false);
    h.recv(1400, req.clone(), false);
    h.run_all();
    // 600 sent, Timer G at 1100, nothing after the ACK.
    assert_eq!(h.sent_times(Method::Invite, Some(603)), vec![600, 1100]);
    let ev = h.take_events();
    assert_eq!(
        ev.len(),
        2,
        "the request, then the end: ACKs are absorbed: {ev:?}"
    );
    assert!(
        matches!(ev[1], (6200, Event::Terminated(_))),
        "Timer I = T4 after the ACK: {ev:?}"
    );
}

#[test]
fn server_non_invite_answers_retransmissions_until_timer_j() {
    let mut h = Harness::new();
    let req = request("OPTIONS", "z9hG4bKsn", 1);
    h.recv(0, req.clone(), false);
    let server = h.server_key();
    h.recv(500, req.clone(), false);
    assert!(h.sent.is_empty(), "Trying absorbs retransmissions");
    h.respond(600, server, &req, 100);
    h.recv(1000, req.clone(), false);
    h.respond(1200, server, &req, 200);
    h.recv(2000, req.clone(), false);
    h.recv(9000, req.clone(), false);
    assert_eq!(h.sent_times(Method::Options, Some(100)), vec![600, 1000]);
    assert_eq!(
        h.sent_times(Method::Options, Some(200)),
        vec![1200, 2000, 9000]
    );
    // Timer J runs in the linger table: the TU is done with it (Terminated
    // at the final response) and can no longer answer.
    assert_eq!(
        h.l.respond(server, 500, Bytes::new(), h.at(9100)),
        Err(TransactionError::UnknownTransaction)
    );
    assert_eq!((h.l.active(), h.l.lingering(), h.l.len()), (0, 1, 1));
    let ev = h.take_events();
    assert_eq!(ev.len(), 2);
    assert!(matches!(ev[1], (1200, Event::Terminated(_))), "{ev:?}");
    // Still answered a full Timer J (64*T1) after the final response.
    h.run_to(1200 + 32_000);
    h.recv(1200 + 32_000, req.clone(), false);
    assert_eq!(h.sent_times(Method::Options, Some(200)).len(), 4);
    h.run_all();
    assert!(h.l.is_empty());
    // Then the same request is a new one.
    h.recv(60_000, req.clone(), false);
    assert!(matches!(
        h.take_events()[..],
        [(60_000, Event::Request { .. })]
    ));
}

#[test]
fn lingering_responses_answer_the_latest_source() {
    let mut h = Harness::new();
    let mut reqs = vec![];
    for i in 0..500 {
        let req = request("REGISTER", &format!("z9hG4bKl{i}"), 1);
        h.recv(i, req.clone(), false);
        reqs.push(req);
    }
    let keys: Vec<ServerKey> = h
        .take_events()
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Request { server, .. } => Some(*server),
            _ => None,
        })
        .collect();
    for (k, req) in keys.iter().zip(&reqs) {
        h.respond(600, *k, req, 200);
    }
    assert_eq!(h.l.lingering(), 500);
    h.sent.clear();
    h.l.handle_message(reqs[321].clone(), 99, false, h.at(5000));
    let (d, b) = h.l.poll_transmit().expect("the lingering 200");
    assert_eq!(d, 99, "answered where the retransmission came from");
    let resp = Message::parse(b).unwrap();
    assert_eq!(resp.status(), Some(200));
    assert_eq!(resp.branch(), reqs[321].branch());
    h.run_all();
    assert!(h.l.is_empty());
    let ended = h.events.iter().filter(|(_, e)| is_terminated(e)).count();
    assert_eq!(ended, 500);
}

#[test]
fn rfc6026_server_accepted() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKacc", 1);
    h.recv(0, req.clone(), false);
    let server = h.server_key();
    h.respond(10, server, &req, 200);
    // INVITE retransmissions are absorbed: the TU (UAS core) owns 2xx
    // retransmission, and it passes through.
    h.recv(500, req.clone(), false);
    h.respond(510, server, &req, 200);
    h.respond(1510, server, &req, 200);
    assert_eq!(h.sent_times(Method::Invite, Some(200)), vec![10, 510, 1510]);
    assert_eq!(
        h.l.respond(server, 486, Bytes::new(), h.at(1600)),
        Err(TransactionError::AlreadyFinal)
    );
    // An ACK matching the transaction in Accepted goes to the TU.
    let ack = request("ACK", "z9hG4bKacc", 1);
    h.recv(1700, ack, false);
    // The usual 2xx ACK has its own branch: no transaction.
    h.recv(1800, request("ACK", "z9hG4bKother", 1), false);
    h.run_all();
    let ev = h.take_events();
    assert!(matches!(ev[1], (1700, Event::Ack { .. })));
    assert!(matches!(ev[2], (1800, Event::Ack { .. })));
    assert!(
        matches!(ev[3], (32010, Event::Terminated(_))),
        "Timer L = 64*T1: {ev:?}"
    );
    assert_eq!(ev.len(), 4);
}

// ---- client machines ---------------------------------------------------------

#[test]
fn client_invite_acks_failure_and_absorbs_retransmissions() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKack", 7);
    let k = h.send(0, req.clone(), false);
    h.recv(100, response(&req, 100, "x"), false);
    h.recv(300, response(&req, 180, "callee"), false);
    h.run_to(2000);
    assert_eq!(
        h.sent_times(Method::Invite, None),
        vec![0],
        "no Timer A once Proceeding"
    );
    let busy = response(&req, 486, "callee");
    h.recv(2000, busy.clone(), false);
    h.recv(2500, busy.clone(), false);
    h.recv(3500, busy, false);
    let acks: Vec<_> = h
        .sent
        .iter()
        .filter(|(_, _, m)| *m.method() == Method::Ack)
        .collect();
    assert_eq!(
        acks.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![2000, 2500, 3500]
    );
    let ack = &acks[0].2;
    assert_eq!(acks[0].1, 9, "to the INVITE's destination");
    assert_eq!(ack.request_uri_bytes(), req.request_uri_bytes());
    assert_eq!(ack.branch(), req.branch());
    assert_eq!(ack.vias().count(), 1);
    assert_eq!(ack.to_tag(), Some(&b"callee"[..]));
    assert_eq!(ack.from_bytes(), req.from_bytes());
    assert_eq!(ack.call_id(), req.call_id());
    assert_eq!((ack.cseq(), ack.cseq_method()), (7, &Method::Ack));
    assert_eq!(ack.routes().count(), 1);
    h.run_all();
    let ev = h.take_events();
    let statuses: Vec<_> = ev
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Response { msg, .. } => msg.status(),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![100, 180, 486],
        "retransmitted finals are absorbed"
    );
    assert!(
        matches!(ev.last(), Some((34000, Event::Terminated(TransactionKey::Client(c))))  if *c == k),
        "Timer D 32 s: {ev:?}"
    );
}

#[test]
fn rfc6026_client_accepted_passes_every_2xx() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKok", 1);
    h.send(0, req.clone(), false);
    h.recv(100, response(&req, 200, "fork1"), false);
    h.recv(600, response(&req, 200, "fork1"), false);
    h.recv(700, response(&req, 200, "fork2"), false);
    h.recv(800, response(&req, 486, "fork3"), false);
    h.recv(900, response(&req, 180, "fork4"), false);
    h.run_to(20_000);
    assert_eq!(h.sent.len(), 1, "no retransmission and no ACK for a 2xx");
    h.run_all();
    let ev = h.take_events();
    let tags: Vec<_> = ev
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Response { msg, .. } => {
                Some((msg.status().unwrap(), msg.to_tag().unwrap().to_vec()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        tags,
        vec![
            (200, b"fork1".to_vec()),
            (200, b"fork1".to_vec()),
            (200, b"fork2".to_vec())
        ]
    );
    assert!(
        matches!(ev.last(), Some((32100, Event::Terminated(_)))),
        "Timer M = 64*T1: {ev:?}"
    );
}

#[test]
fn client_non_invite_completed_absorbs() {
    let mut h = Harness::new();
    let req = request("BYE", "z9hG4bKbye", 2);
    h.send(0, req.clone(), false);
    h.recv(50, response(&req, 200, "x"), false);
    h.recv(600, response(&req, 200, "x"), false);
    h.run_all();
    let ev = h.take_events();
    assert_eq!(ev.len(), 2);
    assert!(matches!(&ev[0], (50, Event::Response { msg, .. }) if msg.status() == Some(200)));
    assert!(
        matches!(ev[1], (5050, Event::Terminated(_))),
        "Timer K = T4: {ev:?}"
    );
    assert_eq!(h.sent.len(), 1);
}

// ---- reliable transports -------------------------------------------------------

#[test]
fn reliable_transports_never_retransmit_and_linger_zero() {
    // Client non-INVITE: no Timer E; K is zero.
    let mut h = Harness::new();
    let req = request("OPTIONS", "z9hG4bKr1", 1);
    h.send(0, req.clone(), true);
    h.run_to(10_000);
    assert_eq!(h.sent.len(), 1);
    h.recv(10_000, response(&req, 200, "x"), true);
    assert!(h.l.is_empty(), "Timer K is zero on a reliable transport");
    assert!(h.l.poll_timeout().is_none());

    // Client non-INVITE that never gets an answer: Timer F still applies.
    let mut h = Harness::new();
    h.send(0, request("OPTIONS", "z9hG4bKr2", 1), true);
    h.run_all();
    assert_eq!(h.sent.len(), 1);
    assert!(matches!(h.events[0], (32000, Event::Timeout { .. })));

    // Client INVITE: no Timer A; the ACK goes out and D is zero.
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKr3", 1);
    h.send(0, req.clone(), true);
    h.run_to(20_000);
    h.recv(20_000, response(&req, 404, "x"), true);
    assert_eq!(h.sent_times(Method::Invite, None), vec![0]);
    assert_eq!(h.sent_times(Method::Ack, None), vec![20_000]);
    assert!(h.l.is_empty(), "Timer D is zero on a reliable transport");

    // Server non-INVITE: J is zero.
    let mut h = Harness::new();
    let req = request("REGISTER", "z9hG4bKr4", 1);
    h.recv(0, req.clone(), true);
    let s = h.server_key();
    h.respond(5, s, &req, 200);
    assert!(h.l.is_empty(), "Timer J is zero on a reliable transport");

    // Server INVITE: no Timer G; I is zero.
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKr5", 1);
    h.recv(0, req.clone(), true);
    let s = h.server_key();
    h.respond(5, s, &req, 480);
    h.run_to(10_000);
    assert_eq!(h.sent_times(Method::Invite, Some(480)), vec![5]);
    let ack = Message::parse(req.ack_for(&response(&req, 480, "srv"))).unwrap();
    h.recv(10_000, ack, true);
    assert!(h.l.is_empty(), "Timer I is zero on a reliable transport");
    assert!(
        h.events
            .iter()
            .all(|(_, e)| !matches!(e, Event::ServerTimeout { .. }))
    );
}

// ---- matching ----------------------------------------------------------------

#[test]
fn rfc2543_matching_without_the_cookie() {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/rfc4475/badbranch.dat"
    ))
    .unwrap();
    let opt = Message::parse(Bytes::from(raw)).unwrap();
    let mut h = Harness::new();
    h.recv(0, opt.clone(), false);
    let s = h.server_key();
    h.respond(10, s, &opt, 200);
    h.recv(500, opt.clone(), false);
    assert_eq!(
        h.sent.len(),
        2,
        "the retransmission matched by the RFC 2543 rule and got the 200 again"
    );
    // Same branch but another CSeq: a new transaction.
    let text = String::from_utf8(opt.raw().to_vec())
        .unwrap()
        .replace("CSeq: 8 OPTIONS", "CSeq: 9 OPTIONS");
    h.recv(600, Message::parse(Bytes::from(text)).unwrap(), false);
    assert_eq!(
        h.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Request { .. }))
            .count(),
        2
    );
    assert_eq!(h.l.len(), 2);

    // An RFC 2543 INVITE (no branch at all): the ACK for our 4xx must carry
    // our To tag; an ACK with another tag is a 2xx ACK for the TU.
    let mut h = Harness::new();
    let via = "SIP/2.0/UDP iftgw.example.com";
    let inv = request_with_via("INVITE", via, 56, "2543");
    h.recv(0, inv.clone(), false);
    let s = h.server_key();
    h.recv(100, inv.clone(), false);
    assert_eq!(h.l.len(), 1, "INVITE retransmission matched");
    h.respond(200, s, &inv, 486);
    let mut ack = request_with_via("ACK", via, 56, "2543");
    let other_tag = String::from_utf8(ack.raw().to_vec()).unwrap().replace(
        "To: <sip:bob@ringmesh.test>",
        "To: <sip:bob@ringmesh.test>;tag=zzz",
    );
    h.recv(300, Message::parse(Bytes::from(other_tag)).unwrap(), false);
    assert!(matches!(h.events.last(), Some((300, Event::Ack { .. }))));
    let ours = String::from_utf8(ack.raw().to_vec()).unwrap().replace(
        "To: <sip:bob@ringmesh.test>",
        "To: <sip:bob@ringmesh.test>;tag=srv",
    );
    ack = Message::parse(Bytes::from(ours)).unwrap();
    h.recv(400, ack, false);
    h.run_all();
    assert_eq!(
        h.sent_times(Method::Invite, Some(486)),
        vec![200],
        "the ACK at 400 ms came before Timer G (700 ms)"
    );
    assert!(
        h.events
            .iter()
            .all(|(_, e)| !matches!(e, Event::ServerTimeout { .. }))
    );
    assert!(matches!(
        h.events.last(),
        Some((5400, Event::Terminated(_)))
    ));
}

#[test]
fn rfc3261_matching_uses_sent_by_and_method() {
    let mut h = Harness::new();
    let a = request("OPTIONS", "z9hG4bKsame", 1);
    h.recv(0, a.clone(), false);
    // Same branch from another sent-by: another transaction.
    h.recv(
        1,
        request_with_via(
            "OPTIONS",
            "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKsame",
            1,
            "z9hG4bKsame",
        ),
        false,
    );
    // Same branch and sent-by (host case differs), another method: another one.
    h.recv(
        2,
        request_with_via(
            "INFO",
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKsame",
            1,
            "z9hG4bKsame",
        ),
        false,
    );
    // A retransmission spelled with a different Via host case matches.
    let cased = request_with_via(
        "OPTIONS",
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKsame",
        1,
        "z9hG4bKsame",
    );
    h.recv(3, cased, false);
    assert_eq!(h.l.len(), 3);
    assert_eq!(h.events.len(), 3);
}

#[test]
fn cancel_finds_its_invite() {
    let mut h = Harness::new();
    let inv = request("INVITE", "z9hG4bKinv", 1);
    h.recv(0, inv.clone(), false);
    let invite = h.server_key();
    h.respond(1, invite, &inv, 180);
    let cancel = Message::parse(inv.cancel_for()).unwrap();
    h.recv(100, cancel.clone(), false);
    let ev = h.take_events();
    let (cancel_key, found) = match &ev[1] {
        (
            100,
            Event::Cancel {
                server,
                invite,
                msg,
                from,
            },
        ) => {
            assert_eq!(*msg.method(), Method::Cancel);
            assert_eq!(*from, 7);
            (*server, *invite)
        }
        other => panic!("expected a CANCEL: {other:?}"),
    };
    assert_eq!(found, Some(invite));
    assert_ne!(cancel_key, invite);
    h.respond(101, cancel_key, &cancel, 200);
    h.respond(102, invite, &inv, 487);
    assert_eq!(h.sent_times(Method::Cancel, Some(200)), vec![101]);
    assert_eq!(h.sent_times(Method::Invite, Some(487)), vec![102]);

    // A CANCEL for nothing we know.
    h.recv(200, request("CANCEL", "z9hG4bKnothing", 1), false);
    assert!(matches!(
        h.events.last(),
        Some((200, Event::Cancel { invite: None, .. }))
    ));

    // The same for an RFC 2543 INVITE.
    let mut h = Harness::new();
    let via = "SIP/2.0/UDP 192.0.2.5";
    let inv = request_with_via("INVITE", via, 3, "old");
    h.recv(0, inv.clone(), false);
    let invite = h.server_key();
    h.recv(10, request_with_via("CANCEL", via, 3, "old"), false);
    assert!(
        matches!(h.events.last(), Some((10, Event::Cancel { invite: Some(i), .. })) if *i == invite)
    );
}

#[test]
fn stray_responses_and_acks_pass_up() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKunknown", 1);
    h.recv(0, response(&req, 200, "x"), false);
    h.recv(1, request("ACK", "z9hG4bKunknown", 1), false);
    // A response to our request but for another method is not ours.
    let mine = request("OPTIONS", "z9hG4bKmine", 1);
    h.send(2, mine.clone(), false);
    let text = String::from_utf8(response(&mine, 200, "x").raw().to_vec())
        .unwrap()
        .replace("1 OPTIONS", "1 INFO");
    h.recv(3, Message::parse(Bytes::from(text)).unwrap(), false);
    let ev = h.take_events();
    assert!(matches!(ev[0], (0, Event::StrayResponse { .. })));
    assert!(matches!(ev[1], (1, Event::Ack { .. })));
    assert!(matches!(ev[2], (3, Event::StrayResponse { .. })));
    assert_eq!(h.l.len(), 1);
}

// ---- CANCEL and Timer C --------------------------------------------------------

#[test]
fn cancel_waits_for_a_provisional_then_guards_the_invite() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKcxl", 4);
    let k = h.send(0, req.clone(), false);
    h.l.cancel(k, h.at(100)).unwrap();
    h.flush(100);
    assert!(
        h.sent_times(Method::Cancel, None).is_empty(),
        "no CANCEL before a provisional (§9.1)"
    );
    h.recv(700, response(&req, 180, "callee"), false);
    let cancels: Vec<_> = h
        .sent
        .iter()
        .filter(|(_, _, m)| *m.method() == Method::Cancel)
        .collect();
    assert_eq!(cancels.len(), 1);
    let (t, d, c) = cancels[0];
    assert_eq!((*t, *d), (700, 9));
    assert_eq!(c.branch(), req.branch());
    assert_eq!((c.cseq(), c.cseq_method()), (4, &Method::Cancel));
    let cancel = c.clone();
    // The CANCEL's own 200 is absorbed by its silent transaction.
    h.recv(800, response(&cancel, 200, "callee"), false);
    h.recv(900, response(&req, 487, "callee"), false);
    h.run_all();
    let ev = h.take_events();
    let kinds: Vec<String> = ev
        .iter()
        .map(|(t, e)| match e {
            Event::Response { msg, .. } => format!("{t} {}", msg.status().unwrap()),
            Event::Terminated(_) => format!("{t} end"),
            other => format!("{t} {other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec!["700 180", "900 487", "32900 end"]);
    assert_eq!(h.sent_times(Method::Ack, None), vec![900]);
    assert!(h.l.is_empty());
}

#[test]
fn cancelled_invite_without_final_times_out_after_64_t1() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKnofinal", 1);
    let k = h.send(0, req.clone(), false);
    h.recv(100, response(&req, 183, "x"), false);
    h.l.cancel(k, h.at(1000)).unwrap();
    h.flush(1000);
    // Cancelling twice sends one CANCEL.
    h.l.cancel(k, h.at(1001)).unwrap();
    h.flush(1001);
    h.run_all();
    let cancel_times = h.sent_times(Method::Cancel, None);
    assert_eq!(
        cancel_times[..4],
        [1000, 1500, 2500, 4500],
        "the CANCEL is retransmitted (Timer E)"
    );
    let ev = h.take_events();
    let timeout = ev
        .iter()
        .find(|(_, e)| matches!(e, Event::Timeout { .. }))
        .unwrap();
    assert_eq!(timeout.0, 33000);
    assert!(matches!(timeout.1, Event::Timeout { client } if client == k));
    assert_eq!(
        ev.iter().filter(|(_, e)| is_terminated(e)).count(),
        1,
        "the silent CANCEL reports nothing"
    );
    assert!(h.l.is_empty());
}

#[test]
fn timer_c_fires_in_proceeding_and_resets_on_provisionals() {
    let mut h = Harness::new();
    let req = request("INVITE", "z9hG4bKc", 1);
    let k = h.send(0, req.clone(), false);
    h.recv(1000, response(&req, 100, "x"), false);
    h.run_to(100_000);
    h.recv(100_000, response(&req, 180, "x"), false);
    h.run_to(400_000);
    let ev = h.take_events();
    let c = ev
        .iter()
        .find(|(_, e)| matches!(e, Event::TimerC { .. }))
        .expect("Timer C");
    assert_eq!(c.0, 281_000, "181 s after the last non-100 provisional");
    assert!(matches!(c.1, Event::TimerC { client } if client == k));
    // The TU ignored it: 64*T1 later the INVITE gives up.
    let t = ev
        .iter()
        .find(|(_, e)| matches!(e, Event::Timeout { .. }))
        .expect("guard");
    assert_eq!(t.0, 313_000);
    assert!(h.l.is_empty());
}

// ---- TU errors -----------------------------------------------------------------

#[test]
fn tu_mistakes_are_errors_not_panics() {
    let mut h = Harness::new();
    let req = request("OPTIONS", "z9hG4bKdup", 1);
    let k = h.send(0, req.clone(), false);
    assert_eq!(
        h.l.send_request(req.clone(), 1, false, h.at(0)),
        Err(TransactionError::Duplicate)
    );
    assert_eq!(
        h.l.send_request(request("ACK", "z9hG4bKx", 1), 1, false, h.at(0)),
        Err(TransactionError::Ack)
    );
    assert_eq!(
        h.l.send_request(response(&req, 200, "x"), 1, false, h.at(0)),
        Err(TransactionError::NotARequest)
    );
    let nobranch = request_with_via("OPTIONS", "SIP/2.0/UDP 192.0.2.1", 1, "nb");
    assert_eq!(
        h.l.send_request(nobranch, 1, false, h.at(0)),
        Err(TransactionError::NoBranch)
    );
    assert_eq!(h.l.cancel(k, h.at(0)), Err(TransactionError::NotInvite));
    assert_eq!(
        h.l.respond(ServerKey(k.0), 200, Bytes::new(), h.at(0)),
        Err(TransactionError::UnknownTransaction)
    );
    let inv = request("INVITE", "z9hG4bKsrv", 1);
    h.recv(1, inv.clone(), false);
    let s = h.server_key();
    assert_eq!(
        h.l.respond(s, 99, Bytes::new(), h.at(1)),
        Err(TransactionError::BadStatus)
    );
    assert_eq!(
        h.l.respond(s, 700, Bytes::new(), h.at(1)),
        Err(TransactionError::BadStatus)
    );
    h.run_all();
    assert_eq!(
        h.l.len(),
        1,
        "an unanswered server transaction waits for its TU"
    );
    assert_eq!(
        h.l.respond(
            s,
            500,
            inv.response_writer(500, None).finish(b""),
            h.at(40_000)
        ),
        Ok(())
    );
}

#[test]
fn transport_error_ends_a_client_transaction() {
    let mut h = Harness::new();
    let k = h.send(0, request("MESSAGE", "z9hG4bKte", 1), true);
    h.l.transport_error(TransactionKey::Client(k), h.at(5));
    h.flush(5);
    let ev = h.take_events();
    assert!(matches!(ev[0], (5, Event::TransportError { client }) if client == k));
    assert!(matches!(ev[1], (5, Event::Terminated(TransactionKey::Client(c))) if c == k));
    assert!(h.l.is_empty());
    // A stale key does nothing.
    h.l.transport_error(TransactionKey::Client(k), h.at(6));
    assert!(h.l.poll_event().is_none());
}

// ---- two layers over a lossy link ----------------------------------------------

/// A client layer (endpoint 0) and a server layer (endpoint 1) joined by a
/// link with 20 ms latency that drops the packets `drop` chooses. The
/// server TU answers an INVITE with 100 then `invite_status`, anything
/// else with 200.
struct Pair {
    layers: [TransactionLayer<u8>; 2],
    t0: Instant,
    now: Instant,
    wire: VecDeque<(Instant, u8, Bytes)>,
    sent: usize,
    invite_status: u16,
    client_events: Vec<Event<u8>>,
    server_events: Vec<Event<u8>>,
}

impl Pair {
    fn new(invite_status: u16) -> Pair {
        let t0 = Instant::now();
        Pair {
            layers: [
                TransactionLayer::new(Timers::default()),
                TransactionLayer::new(Timers::default()),
            ],
            t0,
            now: t0,
            wire: VecDeque::new(),
            sent: 0,
            invite_status,
            client_events: vec![],
            server_events: vec![],
        }
    }

    fn pump(&mut self, drop: &mut dyn FnMut(usize, &Message) -> bool) {
        loop {
            let mut busy = false;
            for side in 0..2 {
                while let Some((to, bytes)) = self.layers[side].poll_transmit() {
                    busy = true;
                    let n = self.sent;
                    self.sent += 1;
                    let msg = Message::parse(bytes.clone()).unwrap();
                    if !drop(n, &msg) {
                        self.wire
                            .push_back((self.now + Duration::from_millis(20), to, bytes));
                    }
                }
                while let Some(e) = self.layers[side].poll_event() {
                    busy = true;
                    if side == 1 {
                        if let Event::Request { server, msg, .. } = &e {
                            let now = self.now;
                            if *msg.method() == Method::Invite {
                                let trying = msg.response_writer(100, None).finish(b"");
                                self.layers[1].respond(*server, 100, trying, now).unwrap();
                                let s = self.invite_status;
                                let fin = msg.response_writer(s, Some(b"srv")).finish(b"");
                                self.layers[1].respond(*server, s, fin, now).unwrap();
                            } else {
                                let ok = msg.response_writer(200, Some(b"srv")).finish(b"");
                                self.layers[1].respond(*server, 200, ok, now).unwrap();
                            }
                        }
                        self.server_events.push(e);
                    } else {
                        self.client_events.push(e);
                    }
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// Runs until both layers are empty and the wire is idle.
    fn run(&mut self, drop: &mut dyn FnMut(usize, &Message) -> bool) {
        self.pump(drop);
        loop {
            let next = [
                self.layers[0].poll_timeout(),
                self.layers[1].poll_timeout(),
                self.wire.front().map(|w| w.0),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { break };
            assert!(
                next - self.t0 < Duration::from_secs(600),
                "the simulation must end"
            );
            self.now = next;
            while self.wire.front().is_some_and(|w| w.0 <= next) {
                let (_, to, bytes) = self.wire.pop_front().unwrap();
                let msg = Message::parse(bytes).unwrap();
                self.layers[to as usize].handle_message(msg, 1 - to, false, next);
            }
            for l in &mut self.layers {
                l.handle_timeout(next);
            }
            self.pump(drop);
        }
        assert!(self.layers[0].is_empty() && self.layers[1].is_empty());
    }

    fn client_finals(&self) -> Vec<u16> {
        self.client_events
            .iter()
            .filter_map(|e| match e {
                Event::Response { msg, .. } => msg.status().filter(|&s| s >= 200),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn non_invite_survives_loss_of_the_first_transmissions() {
    for lost in 0..6 {
        let mut p = Pair::new(486);
        let req = request("REGISTER", "z9hG4bKloss", 1);
        p.layers[0].send_request(req, 1, false, p.now).unwrap();
        p.run(&mut |n, _| n < lost);
        assert_eq!(p.client_finals(), vec![200], "lost {lost}");
        assert!(
            p.client_events
                .iter()
                .all(|e| !matches!(e, Event::Timeout { .. }))
        );
        let requests = p
            .server_events
            .iter()
            .filter(|e| matches!(e, Event::Request { .. }))
            .count();
        assert_eq!(requests, 1, "retransmissions are absorbed (lost {lost})");
    }
}

#[test]
fn invite_failure_survives_loss_of_requests_responses_and_acks() {
    // Drop the first INVITEs, the first finals and the first ACKs.
    for lost in 0..4 {
        let mut p = Pair::new(486);
        let req = request("INVITE", "z9hG4bKloss", 1);
        p.layers[0].send_request(req, 1, false, p.now).unwrap();
        let (mut inv, mut fin, mut ack) = (0, 0, 0);
        p.run(&mut |_, m| {
            let counter = match (m.method(), m.status()) {
                (Method::Invite, None) => &mut inv,
                (Method::Invite, Some(486)) => &mut fin,
                (Method::Ack, None) => &mut ack,
                _ => return false,
            };
            *counter += 1;
            *counter <= lost
        });
        assert_eq!(p.client_finals(), vec![486], "lost {lost} of each");
        assert!(
            p.server_events
                .iter()
                .all(|e| !matches!(e, Event::ServerTimeout { .. })),
            "the ACK got through (lost {lost})"
        );
        assert_eq!(
            p.server_events
                .iter()
                .filter(|e| matches!(e, Event::Request { .. }))
                .count(),
            1
        );
        assert!(inv > lost && fin > lost && ack > lost);
    }
}

#[test]
fn invite_success_survives_loss_of_invites() {
    // A lost 2xx is the UAS core's to retransmit, not the transaction's:
    // only the INVITEs are dropped here.
    for lost in 0..5 {
        let mut p = Pair::new(200);
        let req = request("INVITE", "z9hG4bKok", 1);
        p.layers[0].send_request(req, 1, false, p.now).unwrap();
        let mut invites = 0;
        p.run(&mut |_, m| {
            if *m.method() == Method::Invite && m.status().is_none() {
                invites += 1;
                invites <= lost
            } else {
                false
            }
        });
        assert_eq!(p.client_finals(), vec![200], "lost {lost}");
        assert_eq!(invites, lost + 1);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// Whatever the link loses, each side ends every transaction, the
    /// client sees exactly one outcome (a final response or a timeout) and
    /// the server TU sees the request at most once.
    #[test]
    fn any_loss_pattern_ends_cleanly(
        drops in proptest::collection::vec(proptest::prelude::any::<bool>(), 0..24),
        invite in proptest::prelude::any::<bool>(),
        status in proptest::sample::select(vec![200u16, 486]),
    ) {
        let mut p = Pair::new(status);
        let method = if invite { "INVITE" } else { "MESSAGE" };
        let client = p.layers[0].send_request(request(method, "z9hG4bKprop", 1), 1, false, p.now).unwrap();
        p.run(&mut |n, _| drops.get(n).copied().unwrap_or(false));
        let finals = p.client_finals();
        let timeouts = p.client_events.iter().filter(|e| matches!(e, Event::Timeout { .. })).count();
        proptest::prop_assert_eq!(finals.len() + timeouts, 1, "client events: {:?}", p.client_events);
        let expected = if invite { status } else { 200 };
        proptest::prop_assert!(finals.iter().all(|&s| s == expected));
        let ended: Vec<_> = p.client_events.iter().filter_map(|e| match e {
            Event::Terminated(k) => Some(*k),
            _ => None,
        }).collect();
        proptest::prop_assert_eq!(ended, vec![TransactionKey::Client(client)]);
        let requests = p.server_events.iter().filter(|e| matches!(e, Event::Request { .. })).count();
        proptest::prop_assert!(requests <= 1);
        let server_ended = p.server_events.iter().filter(|e| is_terminated(e)).count();
        proptest::prop_assert_eq!(server_ended, requests);
    }
}

// ---- many transactions -------------------------------------------------------

#[test]
fn bulk_table_empties_after_timers() {
    let mut h = Harness::new();
    let n = 20_000;
    let mut servers = vec![];
    for i in 0..n {
        let t = (i % 1000) as u64;
        match i % 4 {
            0 => {
                let req = request("OPTIONS", &format!("z9hG4bKc{i}"), 1);
                h.send(t, req.clone(), i % 8 == 0);
                h.recv(t + 30, response(&req, 200, "x"), i % 8 == 0);
            }
            1 => {
                let req = request("REGISTER", &format!("z9hG4bKs{i}"), 1);
                h.recv(t, req.clone(), false);
                servers.push((i, req));
            }
            2 => {
                let req = request("INVITE", &format!("z9hG4bKi{i}"), 1);
                h.recv(t, req.clone(), false);
                servers.push((i, req));
            }
            _ => {
                h.send(t, request("INVITE", &format!("z9hG4bKt{i}"), 1), false);
            }
        }
    }
    let keys: Vec<_> = h
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Request { server, .. } => Some(*server),
            _ => None,
        })
        .collect();
    assert_eq!(keys.len(), servers.len());
    for (k, (i, req)) in keys.iter().zip(&servers) {
        let status = if i % 4 == 1 { 200 } else { 486 };
        h.respond(1000, *k, req, status);
        if status == 486 && i % 3 == 0 {
            let ack = Message::parse(req.ack_for(&response(req, 486, "srv"))).unwrap();
            h.recv(1100, ack, false);
        }
    }
    assert_eq!(
        h.l.len(),
        n - n / 8,
        "reliable OPTIONS ended on their 200 (Timer K = 0)"
    );
    let mut peak = 0;
    while let Some(at) = h.l.poll_timeout() {
        h.l.handle_timeout(at);
        h.flush(ms(at - h.t0));
        peak = peak.max(h.l.table.entries());
        assert!(
            h.l.table.entries() <= 2 * h.l.table.armed() + 1024 + 3,
            "stale timers stay bounded"
        );
    }
    assert!(h.l.is_empty());
    assert_eq!(h.l.table.entries(), 0);
    assert_eq!(h.l.table.armed(), 0);
    assert!(h.l.clients.is_empty() && h.l.servers.is_empty());
    let ended = h.events.iter().filter(|(_, e)| is_terminated(e)).count();
    assert_eq!(ended, n, "one Terminated per transaction");
    assert!(peak > 0);
}
