//! Typical messages shared by the benches and the allocation test.

#![allow(dead_code)]

use bytes::Bytes;

pub const REGISTER: &[u8] = b"REGISTER sip:ringmesh.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: \"Alice\" <sip:alice@ringmesh.test>\r\n\
From: \"Alice\" <sip:alice@ringmesh.test>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:alice@192.0.2.1:5060;ob>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1\r\n\
Supported: outbound, path\r\n\
User-Agent: baresip v1.0.0\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

pub const INVITE: &[u8] = b"INVITE sip:bob@ringmesh.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:sn0.ringmesh.test;lr>\r\n\
To: Bob <sip:bob@ringmesh.test>\r\n\
From: Alice <sip:alice@ringmesh.test>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.1:5060>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE\r\n\
Supported: replaces, timer\r\n\
User-Agent: baresip v1.0.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 233\r\n\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 97 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:97 iLBC/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";

/// A 200 OK that crossed ten proxies: ten Vias, ten Record-Routes.
pub fn ok_with_many_hops() -> Bytes {
    let mut s = String::from("SIP/2.0 200 OK\r\n");
    for i in 0..10 {
        s.push_str(&format!("Via: SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bK{i:08x}a1b2c3;rport=5060;received=10.0.0.{i}\r\n"));
    }
    for i in 0..10 {
        s.push_str(&format!("Record-Route: <sip:sn{i}.ringmesh.test;lr>\r\n"));
    }
    s.push_str(
        "To: Bob <sip:bob@ringmesh.test>;tag=a6c85cf\r\n\
From: Alice <sip:alice@ringmesh.test>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Content-Length: 0\r\n\r\n",
    );
    Bytes::from(s)
}
