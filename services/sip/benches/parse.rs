//! Parser, writer, digest and transaction costs on typical messages.
//! Figures and the command that made them: docs/benchmarks.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringmesh_sip::digest::{Credentials, DigestAuth, Ha1};
use ringmesh_sip::transaction::{Event, Timers, TransactionLayer};
use ringmesh_sip::{Forward, HeaderName, Message, Method};

mod common;

use common::{INVITE, REGISTER, ok_with_many_hops};

fn parse_and_encode(c: &mut Criterion) {
    let ok = ok_with_many_hops();
    let cases: [(&str, Bytes); 3] = [
        ("register", Bytes::from_static(REGISTER)),
        ("invite_sdp", Bytes::from_static(INVITE)),
        ("ok_10_via_10_rr", ok),
    ];
    let mut g = c.benchmark_group("parse");
    for (name, bytes) in &cases {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(*name, |b| {
            b.iter(|| Message::parse(black_box(bytes.clone())).unwrap())
        });
    }
    // What overload control reads of a new request it refuses.
    let limits = ringmesh_sip::Limits::default();
    for (name, bytes) in &cases[..2] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("{name}_shallow"), |b| {
            b.iter(|| Message::parse_shallow(black_box(bytes.clone()), &limits).unwrap())
        });
    }
    g.finish();
    let mut g = c.benchmark_group("encode");
    for (name, bytes) in &cases {
        let m = Message::parse(bytes.clone()).unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(*name, |b| b.iter(|| black_box(&m).encode()));
    }
    g.finish();
}

fn writers(c: &mut Criterion) {
    let register = Message::parse(Bytes::from_static(REGISTER)).unwrap();
    let invite = Message::parse(Bytes::from_static(INVITE)).unwrap();
    let ok = Message::parse(ok_with_many_hops()).unwrap();
    let mut g = c.benchmark_group("write");
    g.bench_function("response_writer_register_200", |b| {
        b.iter(|| {
            let m = black_box(&register);
            let mut w = m.response_writer(200, Some(b"3f5c9a"));
            w.header(
                HeaderName::Contact,
                b"<sip:alice@192.0.2.1:5060;ob>;expires=3600",
            );
            w.header_fmt(HeaderName::Expires, format_args!("{}", 3600));
            w.finish(b"")
        })
    });
    g.bench_function("forward_writer_invite", |b| {
        b.iter(|| {
            let m = black_box(&invite);
            m.forward_writer(&Forward {
                request_uri: Some(b"sip:bob@192.0.2.4:5062"),
                via: b"SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKsn0a1b2c3d4",
                top_via: Some(b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8;rport=5060;received=192.0.2.1"),
                record_route: Some(b"<sip:203.0.113.1:5060;lr>"),
                pop_routes: 1,
                max_forwards: 69,
                strip: &[HeaderName::ProxyAuthorization],
                ..Forward::default()
            })
            .finish(m.body())
        })
    });
    g.bench_function("forward_response_ok_10_via", |b| {
        b.iter(|| black_box(&ok).forward_response(&[]).finish(b""))
    });
    g.bench_function("ack_for_486", |b| {
        let busy = Message::parse(invite.response_writer(486, Some(b"x")).finish(b"")).unwrap();
        b.iter(|| black_box(&invite).ack_for(&busy))
    });
    g.finish();
}

fn digest(c: &mut Criterion) {
    let mut auth = DigestAuth::new(b"0123456789abcdef0123456789abcdef", 300, 1);
    let now = 1_800_000_000;
    let ha1 = Ha1::compute(b"alice", b"ringmesh.test", b"secret");
    let mut g = c.benchmark_group("digest");
    g.bench_function("challenges", |b| {
        b.iter(|| auth.challenges(black_box(b"ringmesh.test"), false, now))
    });
    for (name, alg) in [
        ("verify_sha256", ringmesh_sip::digest::Algorithm::Sha256),
        ("verify_md5", ringmesh_sip::digest::Algorithm::Md5),
    ] {
        let nonce = auth.nonce(b"ringmesh.test", now);
        let p = ringmesh_sip::digest::ResponseParams {
            algorithm: alg,
            nonce: nonce.as_bytes(),
            cnonce: b"0a4f113b",
            nc: b"00000001",
            qop: Some(b"auth"),
            method: b"REGISTER",
            uri: b"sip:ringmesh.test",
        };
        let value = format!(
            r#"Digest username="alice", realm="ringmesh.test", nonce="{nonce}", uri="sip:ringmesh.test", response="{}", algorithm={}, qop=auth, nc=00000001, cnonce="0a4f113b""#,
            ringmesh_sip::digest::response_hex(&ha1, &p),
            alg.as_str()
        );
        // From the second iteration on the verdict is Replay: every check
        // of a valid request runs, the use is just not recorded again.
        g.bench_function(name, |b| {
            b.iter(|| {
                let c = Credentials::parse(black_box(value.as_bytes())).unwrap();
                auth.verify(
                    &c,
                    b"ringmesh.test",
                    &Method::Register,
                    b"sip:ringmesh.test",
                    &ha1,
                    now,
                )
            })
        });
    }
    g.finish();
}

/// Whole server transactions: request in, TU answer, response out.
fn transactions(c: &mut Criterion) {
    let mut g = c.benchmark_group("transaction");
    let register = Message::parse(Bytes::from_static(REGISTER)).unwrap();
    let ok = register.response_writer(200, Some(b"t")).finish(b"");
    g.bench_function("server_non_invite_reliable", |b| {
        let mut layer: TransactionLayer<u32> = TransactionLayer::new(Timers::default());
        let now = Instant::now();
        b.iter(|| {
            layer.handle_message(register.clone(), 1, true, now);
            let Some(Event::Request { server, .. }) = layer.poll_event() else {
                unreachable!()
            };
            layer.respond(server, 200, ok.clone(), now).unwrap();
            while layer.poll_transmit().is_some() {}
            while layer.poll_event().is_some() {}
        })
    });
    // Over UDP each transaction lingers 32 s (Timer J): one new
    // transaction per virtual millisecond keeps about 32,000 live.
    let pool: Vec<Message> = (0..65_536)
        .map(|i| {
            let text = String::from_utf8(REGISTER.to_vec())
                .unwrap()
                .replace("z9hG4bK776asdhds", &format!("z9hG4bK{i:016x}"));
            Message::parse(Bytes::from(text)).unwrap()
        })
        .collect();
    g.bench_function("server_non_invite_udp_32k_live", |b| {
        let mut layer: TransactionLayer<u32> = TransactionLayer::new(Timers::default());
        let mut now = Instant::now();
        let mut i = 0usize;
        b.iter(|| {
            now += Duration::from_millis(1);
            layer.handle_timeout(now);
            while layer.poll_event().is_some() {}
            layer.handle_message(pool[i % pool.len()].clone(), 1, false, now);
            i += 1;
            let Some(Event::Request { server, .. }) = layer.poll_event() else {
                unreachable!()
            };
            layer.respond(server, 200, ok.clone(), now).unwrap();
            while layer.poll_transmit().is_some() {}
            while layer.poll_event().is_some() {}
        })
    });
    g.finish();
}

criterion_group!(benches, parse_and_encode, writers, digest, transactions);
criterion_main!(benches);
