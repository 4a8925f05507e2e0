//! The wire boundary: version skew, and no panic on any input.

use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;
use ringmesh_overlay::message::{self, DecodeError, pb};
use ringmesh_overlay::node::HandleError;
use ringmesh_overlay::{Config, Key, Message, Node, NodeId, ProtocolVersion};

const WALL: u64 = 1_700_000_000_000;

fn alive_node(id: u128) -> (Node, Instant) {
    let now = Instant::now();
    let mut n = Node::new(Config::new(NodeId::from_u128(id))).unwrap();
    n.bootstrap(now, WALL);
    while n.poll_event().is_some() {}
    while n.poll_transmit().is_some() {}
    (n, now)
}

/// What a node of the next minor version might send: `Ping` with a field
/// this version does not know, in an envelope with the same layout.
#[derive(Clone, PartialEq, prost::Message)]
struct FuturePing {
    #[prost(uint64, tag = "1")]
    nonce: u64,
    #[prost(fixed64, tag = "2")]
    view_root: u64,
    #[prost(string, tag = "3")]
    new_field: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FutureEnvelope {
    #[prost(message, optional, tag = "1")]
    version: Option<pb::Version>,
    #[prost(message, optional, tag = "10")]
    ping: Option<FuturePing>,
    /// A message kind this version does not know at all.
    #[prost(bytes = "vec", optional, tag = "99")]
    brand_new_kind: Option<Vec<u8>>,
}

#[test]
fn next_minor_with_an_extra_field_is_decoded_and_answered() {
    let (mut node, now) = alive_node(1);
    let ours = ProtocolVersion::CURRENT;
    let frame = FutureEnvelope {
        version: Some(pb::Version {
            major: ours.major.into(),
            minor: (ours.minor + 1).into(),
        }),
        ping: Some(FuturePing {
            nonce: 4242,
            view_root: 0,
            new_field: "only minor+1 knows me".into(),
        }),
        brand_new_kind: None,
    }
    .encode_to_vec();
    let peer = NodeId::from_u128(2);
    node.handle_frame(peer, Bytes::from(frame), now, WALL)
        .unwrap();
    let pong = std::iter::from_fn(|| node.poll_transmit())
        .find(|t| matches!(t.message, Message::Pong { .. }))
        .expect("the ping was handled");
    assert_eq!(pong.to, peer);
    assert!(matches!(pong.message, Message::Pong { nonce: 4242, .. }));
}

#[test]
fn unknown_kind_from_next_minor_is_ignored_and_counted() {
    let (mut node, now) = alive_node(1);
    let ours = ProtocolVersion::CURRENT;
    let frame = FutureEnvelope {
        version: Some(pb::Version {
            major: ours.major.into(),
            minor: (ours.minor + 1).into(),
        }),
        ping: None,
        brand_new_kind: Some(vec![1, 2, 3]),
    }
    .encode_to_vec();
    node.handle_frame(NodeId::from_u128(2), Bytes::from(frame), now, WALL)
        .unwrap();
    assert_eq!(node.stats().unknown_messages, 1);
    assert!(node.poll_transmit().is_none());
}

#[test]
fn other_major_is_refused_and_counted() {
    let (mut node, now) = alive_node(1);
    let frame = message::encode(
        &Message::Ping {
            nonce: 1,
            view_root: 0,
        },
        ProtocolVersion::new(2, 0),
    );
    let err = node
        .handle_frame(NodeId::from_u128(2), Bytes::from(frame), now, WALL)
        .unwrap_err();
    assert!(matches!(
        err,
        HandleError::Decode(DecodeError::Incompatible { .. })
    ));
    assert_eq!(node.stats().malformed_messages, 1);
}

#[test]
fn spoofed_join_request_is_refused() {
    let (mut node, now) = alive_node(1);
    let mut cfg = Config::new(NodeId::from_u128(3));
    cfg.overlay_addr = "x:1".into();
    let mut other = Node::new(cfg).unwrap();
    other.join(&[NodeId::from_u128(1)], now, WALL);
    let req = other.poll_transmit().unwrap().message;
    // Delivered over the link of node 2, but claims to be node 3.
    let err = node
        .handle_message(NodeId::from_u128(2), req, now, WALL)
        .unwrap_err();
    assert_eq!(
        err,
        HandleError::Spoofed {
            claimed: NodeId::from_u128(3),
            link: NodeId::from_u128(2)
        }
    );
    assert!(
        node.member(NodeId::from_u128(3)).is_none(),
        "nothing was learnt"
    );
}

#[test]
fn message_claiming_to_be_from_ourselves_is_refused() {
    let (mut node, now) = alive_node(1);
    let r = node.handle_message(
        NodeId::from_u128(1),
        Message::Ping {
            nonce: 1,
            view_root: 0,
        },
        now,
        WALL,
    );
    assert_eq!(r, Err(HandleError::FromSelf));
}

/// Valid frames of many kinds, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let (mut a, now) = alive_node(10);
    let (mut b, _) = alive_node(u128::MAX / 3);
    let k = Key::hash(b"sip:bob@example.com");
    let hlc = a.stamp(WALL);
    let e = ringmesh_overlay::Entry::new(
        Bytes::from_static(b"c"),
        Bytes::from_static(b"v"),
        hlc,
        a.id(),
        WALL + 1000,
    );
    a.put(k, vec![e], now, WALL);
    a.get(k, now, WALL);
    b.join(&[a.id()], now, WALL);
    let mut frames = Vec::new();
    for n in [&mut a, &mut b] {
        while let Some(t) = n.poll_transmit() {
            frames.push(message::encode(&t.message, ProtocolVersion::CURRENT));
        }
    }
    frames.push(message::encode(
        &Message::ViewDigest {
            digests: a.view().digests(),
        },
        ProtocolVersion::CURRENT,
    ));
    frames
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (mut node, now) = alive_node(1);
        let _ = node.handle_frame(NodeId::from_u128(2), Bytes::from(data), now, WALL);
        node.handle_timeout(now, WALL);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..64,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let frames = seeds();
        let mut f = frames[which % frames.len()].clone();
        for (i, b) in flips {
            let at = i.index(f.len());
            f[at] ^= b;
        }
        let keep = cut.index(f.len() + 1);
        f.truncate(keep.max(f.len() * 3 / 4));
        let (mut node, now) = alive_node(1);
        let from = NodeId::from_u128(2);
        match node.handle_frame(from, Bytes::from(f.clone()), now, WALL) {
            Ok(()) => {
                // Whatever was accepted re-encodes and decodes again.
                if let Ok(d) = message::decode(Bytes::from(f), ProtocolVersion::CURRENT)
                    && let Some(m) = d.message
                {
                    let again = message::encode(&m, ProtocolVersion::CURRENT);
                    let back = message::decode(Bytes::from(again.clone()), ProtocolVersion::CURRENT)
                        .expect("re-encoded frame decodes");
                    let m2 = back.message.expect("known kind");
                    prop_assert_eq!(message::encode(&m2, ProtocolVersion::CURRENT), again);
                }
            }
            Err(_) => prop_assert!(node.stats().malformed_messages >= 1),
        }
        // The node keeps working after whatever it was fed: time passes,
        // and a ping is still answered.
        node.handle_timeout(now + std::time::Duration::from_secs(60), WALL + 60_000);
        while node.poll_transmit().is_some() {}
        node.handle_message(from, Message::Ping { nonce: 77, view_root: 0 }, now, WALL).unwrap();
        let answered = std::iter::from_fn(|| node.poll_transmit())
            .any(|t| t.to == from && matches!(t.message, Message::Pong { nonce: 77, .. }));
        prop_assert!(answered);
    }
}
