//! The transaction layer under arbitrary message sequences and clock
//! steps: never panic, and the table empties once time runs out.

#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringmesh_sip::Message;
use ringmesh_sip::transaction::{Event, Timers, TransactionLayer};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut layer: TransactionLayer<u8> = TransactionLayer::new(Timers::default());
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    // Input: records separated by 0xff; the first byte of a record picks
    // the action, the rest is a message.
    for rec in data.split(|&b| b == 0xff) {
        let Some((&op, rest)) = rec.split_first() else {
            continue;
        };
        now += Duration::from_millis(u64::from(op & 0x0f) * 150);
        let reliable = op & 0x10 != 0;
        match op >> 5 {
            0 | 1 | 2 => {
                if let Ok(m) = Message::parse(Bytes::copy_from_slice(rest)) {
                    layer.handle_message(m, op, reliable, now);
                }
            }
            3 => {
                if let Ok(m) = Message::parse(Bytes::copy_from_slice(rest)) {
                    if let Ok(k) = layer.send_request(m, op, reliable, now) {
                        clients.push(k);
                    }
                }
            }
            4 | 5 => {
                if let Some(&(k, ref req)) = servers.get(usize::from(op) % servers.len().max(1)) {
                    let req: &Message = req;
                    let status = [100u16, 180, 200, 202, 302, 404, 486, 500][usize::from(op) % 8];
                    let bytes = req.response_writer(status, Some(b"t")).finish(b"");
                    let _ = layer.respond(k, status, bytes, now);
                }
            }
            6 => {
                if let Some(&k) = clients.get(usize::from(op) % clients.len().max(1)) {
                    let _ = layer.cancel(k, now);
                }
            }
            _ => layer.handle_timeout(now),
        }
        while layer.poll_transmit().is_some() {}
        while let Some(e) = layer.poll_event() {
            match e {
                Event::Request { server, msg, .. } | Event::Cancel { server, msg, .. } => {
                    servers.push((server, msg))
                }
                _ => {}
            }
        }
    }
    // Answer everything, then let every timer run out.
    for (k, req) in &servers {
        let _ = layer.respond(
            *k,
            500,
            req.response_writer(500, Some(b"t")).finish(b""),
            now,
        );
    }
    let end = now + Duration::from_secs(3600);
    while let Some(at) = layer.poll_timeout() {
        assert!(at <= end, "a timer beyond an hour");
        layer.handle_timeout(at);
        while layer.poll_transmit().is_some() {}
        while layer.poll_event().is_some() {}
    }
    assert!(
        layer.is_empty(),
        "{} transactions left after every timer ran",
        layer.len()
    );
});
