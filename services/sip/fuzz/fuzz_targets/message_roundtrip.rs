//! Decode, encode, decode again and compare (a parser is fuzzed with round
//! trips: what it accepts must survive re-encoding); exercise every
//! accessor and writer the supernode uses on what parsed; run the stream
//! framer on the raw input. Nothing may panic.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringmesh_sip::framing::{Frame, next_frame};
use ringmesh_sip::{Contact, Forward, HeaderName, Limits, Message};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = next_frame(data, &limits);
    // What overload control reads of a request it refuses: it accepts
    // whatever the full parse accepts, and the 503 it writes parses.
    let shallow = Message::parse_shallow(Bytes::copy_from_slice(data), &limits);
    if let Ok(s) = &shallow {
        let answer = s.response_writer(503, Some(b"shed")).finish(b"");
        if let Err(e) = Message::parse(answer.clone()) {
            panic!(
                "the 503 to a shallow parse does not parse ({e}):\n{}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    let m = match Message::parse(Bytes::copy_from_slice(data)) {
        Ok(m) => m,
        Err(e) => {
            // The 400 written for a request that did not parse.
            let _ = ringmesh_sip::salvage::error_response(data, &e);
            return;
        }
    };
    match shallow {
        Ok(s) => assert!(
            s == m && s.to_tag() == m.to_tag() && s.top_via_bytes() == m.top_via_bytes(),
            "a shallow parse differs from the full one"
        ),
        Err(e) => panic!("parsed in full, not shallow: {e}"),
    }

    let encoded = m.encode();
    let again = match Message::parse(encoded.clone()) {
        Ok(a) => a,
        Err(e) => panic!(
            "encode() output does not parse ({e}):\n{}",
            String::from_utf8_lossy(&encoded)
        ),
    };
    assert!(
        m == again,
        "round trip changed the message:\n{}",
        String::from_utf8_lossy(&encoded)
    );
    // A stream peer finds exactly one message in what we write.
    match next_frame(&encoded, &limits) {
        Ok(Frame::Message(n)) => assert_eq!(n, encoded.len(), "framing disagrees with encode()"),
        other => panic!("framing of an encoded message: {other:?}"),
    }

    // Typed views validated at parse time must not fail now.
    let _ = m.top_via();
    let _ = (
        m.from_hdr(),
        m.to_hdr(),
        m.call_id(),
        m.cseq(),
        m.branch(),
        m.expires(),
    );
    for c in m.contacts() {
        if let Contact::Addr(a) = c {
            let _ = (a.expires(), a.q(), a.instance(), a.reg_id(), a.uri().host());
        }
    }
    let _ = m.routes().count() + m.record_routes().count() + m.vias().count();
    if let Some(uri) = m.request_uri() {
        let _ = ringmesh_sip::aor::Aor::from_uri(&uri);
    }
    let _ = ringmesh_sip::aor::Aor::from_uri(m.to_hdr().uri());

    if m.is_request() {
        let resp = m.response_writer(486, Some(b"fz")).finish(b"");
        let resp = Message::parse(resp).expect("response_writer output parses");
        let fw = m
            .forward_writer(&Forward {
                request_uri: None,
                via: b"SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKfuzz",
                record_route: Some(b"<sip:192.0.2.7;lr>"),
                top_via: None,
                pop_routes: 1,
                max_forwards: 69,
                strip: &[HeaderName::ProxyAuthorization],
                push_route: Some(b"<sip:next.ringmesh.test;lr>"),
                ..Forward::default()
            })
            .finish(m.body());
        Message::parse(fw).expect("forward_writer output parses");
        Message::parse(m.cancel_for()).expect("cancel_for output parses");
        Message::parse(m.ack_for(&resp)).expect("ack_for output parses");
    } else {
        let _ = Message::parse(m.forward_response(&[]).finish(m.body()));
    }
});
