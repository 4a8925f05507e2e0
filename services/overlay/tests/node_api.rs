//! The driver contract and application API of a single node, without a
//! simulator: what a supernode driver sees.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmesh_overlay::node::{LinkRole, Phase};
use ringmesh_overlay::persist;
use ringmesh_overlay::{Config, Entry, Event, Key, Message, NextHop, Node, NodeId, OpError};

const WALL: u64 = 1_700_000_000_000;

fn cfg(id: u128) -> Config {
    let mut c = Config::new(NodeId::from_u128(id));
    c.overlay_addr = format!("10.0.0.{id}:7000");
    c
}

fn entry(n: &mut Node, id: &str, value: &str) -> Entry {
    let hlc = n.stamp(WALL);
    Entry::new(
        Bytes::from(id.to_string()),
        Bytes::from(value.to_string()),
        hlc,
        n.id(),
        WALL + 60_000,
    )
}

#[test]
fn an_idle_node_refuses_operations_and_sleeps() {
    let now = Instant::now();
    let mut n = Node::new(cfg(1)).unwrap();
    assert_eq!(n.poll_timeout(), None);
    let op = n.get(Key::hash(b"a"), now, WALL);
    match n.poll_event() {
        Some(Event::GetDone { op: o, result }) => {
            assert_eq!(o, op);
            assert_eq!(result, Err(OpError::NotReady));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_config_is_refused_with_a_reason() {
    let mut c = cfg(1);
    c.replicas = 0;
    assert!(Node::new(c).unwrap_err().to_string().contains("replicas"));
    let mut c = cfg(1);
    c.replicate_timeout = c.op_attempt_timeout;
    assert!(Node::new(c).is_err());
}

#[test]
fn writes_are_persisted_and_a_restored_node_serves_them() {
    let now = Instant::now();
    let mut n = Node::new(cfg(1)).unwrap();
    n.bootstrap(now, WALL);
    let e = entry(&mut n, "c1", "flow");
    let k = Key::hash(b"sip:alice@example.com");
    n.put(k, vec![e.clone()], now, WALL);
    let mut log = Vec::new();
    while let Some(p) = n.poll_persist() {
        assert_eq!(p.key, k);
        log.extend_from_slice(&p.frame);
    }
    assert!(!log.is_empty());
    let first_frames = log.len();
    // A removal is persisted as such.
    let t = Entry::tombstone(
        Bytes::from_static(b"c1"),
        n.stamp(WALL),
        n.id(),
        WALL + 60_000,
    );
    n.put(k, vec![t], now, WALL);
    while let Some(p) = n.poll_persist() {
        log.extend_from_slice(&p.frame);
    }
    let replay = persist::decode_log(&log);
    assert!(replay.records[&k].get(b"c1").unwrap().tombstone);
    // A node restored from the log as it was before the removal serves the
    // live entry.
    let first = persist::decode_log(&log[..first_frames]);
    assert_eq!(first.torn, None);
    let mut m = Node::new(cfg(1)).unwrap();
    m.restore(first.records, WALL);
    m.bootstrap(now, WALL);
    m.get(k, now, WALL);
    let got = std::iter::from_fn(|| m.poll_event()).find_map(|ev| match ev {
        Event::GetDone { result, .. } => Some(result.unwrap().entries),
        _ => None,
    });
    assert_eq!(got, Some(vec![e.clone()]));
    assert!(
        m.poll_persist().is_none(),
        "restored records are not re-persisted"
    );
    // The clock moved past every restored stamp, even with the wall clock
    // behind it.
    assert!(m.stamp(WALL - 10_000) > e.hlc);
}

#[test]
fn reads_never_return_expired_entries() {
    let now = Instant::now();
    let mut n = Node::new(cfg(1)).unwrap();
    n.bootstrap(now, WALL);
    let k = Key::hash(b"k");
    let hlc = n.stamp(WALL);
    let short = Entry::new(
        Bytes::from_static(b"a"),
        Bytes::new(),
        hlc,
        n.id(),
        WALL + 1000,
    );
    n.put(k, vec![short], now, WALL);
    n.get(k, now, WALL + 999);
    n.get(k, now, WALL + 1000);
    let sizes: Vec<usize> = std::iter::from_fn(|| n.poll_event())
        .filter_map(|e| match e {
            Event::GetDone { result, .. } => Some(result.unwrap().entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![1, 0]);
}

#[test]
fn join_protocol_between_two_nodes_by_hand() {
    let t0 = Instant::now();
    let mut a = Node::new(cfg(1 << 100)).unwrap();
    let mut b = Node::new(cfg(3 << 100)).unwrap();
    a.bootstrap(t0, WALL);
    b.join(&[a.id()], t0, WALL);
    assert_eq!(b.phase(), Phase::Joining);
    // Shuttle messages until both are quiet.
    for _ in 0..20 {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            assert_eq!(t.to, b.id());
            b.handle_message(a.id(), t.message, t0, WALL).unwrap();
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            assert_eq!(t.to, a.id());
            a.handle_message(b.id(), t.message, t0, WALL).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(b.phase(), Phase::Alive);
    assert!(std::iter::from_fn(|| b.poll_event()).any(|e| matches!(e, Event::Joined)));
    assert_eq!(a.view().root(), b.view().root(), "views agree");
    assert_eq!(a.view().routable_len(), 2);
    // Each is the other's successor, predecessor and finger; addresses known.
    let links = a.wanted_links();
    assert!(
        links
            .iter()
            .any(|l| l.id == b.id() && l.role == LinkRole::Successor)
    );
    assert_eq!(a.address_of(b.id()), Some(b.config().overlay_addr.as_str()));
    assert_eq!(links[0].overlay_addr, b.config().overlay_addr);
    // Routing: keys at or below b's id (and above a's) belong to b.
    let key_near_b = Key::from_array({
        let mut k = [0u8; 32];
        k[..16].copy_from_slice(&((2u128 << 100) + 5).to_be_bytes());
        k
    });
    let route = a.route(&key_near_b);
    assert_eq!(route.replicas, vec![b.id(), a.id()]);
    assert_eq!(a.primary(&key_near_b), Some(b.id()), "the first replica");
    assert_eq!(route.next_hop, NextHop::Forward(b.id()));
    assert_eq!(b.route(&key_near_b).next_hop, NextHop::Local);
}

#[test]
fn a_silent_neighbour_is_pinged_then_declared_dead() {
    let t0 = Instant::now();
    let mut a = Node::new(cfg(1 << 100)).unwrap();
    let b_id = NodeId::from_u128(3 << 100);
    let view = ringmesh_overlay::MemberView::from_records([
        ringmesh_overlay::MemberRecord {
            id: a.id(),
            incarnation: 0,
            state: ringmesh_overlay::MemberState::Alive,
            since_ms: WALL,
            overlay_addr: "a".into(),
            sip_addr: String::new(),
            name: String::new(),
            version: Default::default(),
        },
        ringmesh_overlay::MemberRecord {
            id: b_id,
            incarnation: 0,
            state: ringmesh_overlay::MemberState::Alive,
            since_ms: WALL,
            overlay_addr: "b".into(),
            sip_addr: String::new(),
            name: String::new(),
            version: Default::default(),
        },
    ]);
    a.start_with_view(view, t0, WALL);
    let mut now = t0;
    let mut pings = 0;
    let mut failed = false;
    while now < t0 + Duration::from_secs(10) {
        now = a.poll_timeout().unwrap().max(now);
        a.handle_timeout(now, WALL);
        while let Some(t) = a.poll_transmit() {
            if matches!(t.message, Message::Ping { .. }) && t.to == b_id {
                pings += 1;
            }
        }
        while let Some(e) = a.poll_event() {
            if let Event::PeerFailed { peer } = e {
                assert_eq!(peer, b_id);
                failed = true;
            }
        }
        if failed {
            break;
        }
    }
    assert!(failed, "declared dead");
    assert!(pings >= 2, "pinged before being declared dead ({pings})");
    let waited = now - t0;
    assert!(
        waited >= a.config().failure_timeout
            && waited < a.config().failure_timeout + Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(a.view().routable_len(), 1);
}

#[test]
fn a_link_down_report_speeds_up_detection() {
    let t0 = Instant::now();
    let mut a = Node::new(cfg(1 << 100)).unwrap();
    let b = NodeId::from_u128(3 << 100);
    let mut recs = Vec::new();
    for id in [a.id(), b] {
        recs.push(ringmesh_overlay::MemberRecord {
            id,
            incarnation: 0,
            state: ringmesh_overlay::MemberState::Alive,
            since_ms: WALL,
            overlay_addr: String::new(),
            sip_addr: String::new(),
            name: String::new(),
            version: Default::default(),
        });
    }
    a.start_with_view(ringmesh_overlay::MemberView::from_records(recs), t0, WALL);
    // Let the first stabilisation round start watching b.
    let first = a.poll_timeout().unwrap();
    a.handle_timeout(first + Duration::from_millis(1100), WALL);
    let t1 = first + Duration::from_millis(1200);
    a.handle_link_down(b, t1);
    let mut now = t1;
    while a.view().routable_len() == 2 {
        now = a.poll_timeout().unwrap().max(now);
        a.handle_timeout(now, WALL);
        assert!(
            now - t1 < Duration::from_secs(3),
            "probe timeout, not the full failure timeout"
        );
    }
    assert!(now - t1 >= a.config().probe_timeout);
}

#[test]
fn a_read_retried_after_link_down_falls_back_and_honours_expiry() {
    let t0 = Instant::now();
    let mut a = Node::new(cfg(1 << 100)).unwrap();
    let b = NodeId::from_u128(3 << 100);
    let recs = [a.id(), b].map(|id| ringmesh_overlay::MemberRecord {
        id,
        incarnation: 0,
        state: ringmesh_overlay::MemberState::Alive,
        since_ms: WALL,
        overlay_addr: String::new(),
        sip_addr: String::new(),
        name: String::new(),
        version: Default::default(),
    });
    // A key owned by b, which a also replicates; a's copy expires at +1 s.
    let k = Key::from_array({
        let mut x = [0u8; 32];
        x[..16].copy_from_slice(&((2u128 << 100) + 9).to_be_bytes());
        x
    });
    let hlc = a.stamp(WALL);
    let e = Entry::new(
        Bytes::from_static(b"c"),
        Bytes::from_static(b"v"),
        hlc,
        b,
        WALL + 1000,
    );
    a.restore([(k, ringmesh_overlay::Record::from_entries([e]))], WALL);
    a.start_with_view(ringmesh_overlay::MemberView::from_records(recs), t0, WALL);
    while a.poll_event().is_some() {}
    let op = a.get(k, t0, WALL);
    let sent = std::iter::from_fn(|| a.poll_transmit())
        .any(|t| t.to == b && matches!(t.message, Message::Get { .. }));
    assert!(sent, "the read went to the owner");
    // The owner's link drops: nothing is answered inside the link event...
    let t1 = t0 + Duration::from_millis(50);
    a.handle_link_down(b, t1);
    assert!(!std::iter::from_fn(|| a.poll_event()).any(|e| matches!(e, Event::GetDone { .. })));
    assert!(
        a.poll_timeout().unwrap() <= t1,
        "...but the retry is due at once"
    );
    // ...and the retry, with the wall clock past the entry's expiry, is
    // answered by the local replica without the expired entry. Being a
    // stand-in's empty answer it is provisional: the owner is asked again,
    // and the answer stands at the deadline.
    a.handle_timeout(t1, WALL + 5000);
    assert!(a.poll_event().is_none());
    let asked_owner = std::iter::from_fn(|| a.poll_transmit())
        .any(|t| t.to == b && matches!(t.message, Message::Get { .. }));
    assert!(asked_owner);
    a.handle_timeout(t0 + a.config().op_timeout, WALL + 5000);
    let result = std::iter::from_fn(|| a.poll_event()).find_map(|ev| match ev {
        Event::GetDone { op: o, result } if o == op => Some(result),
        _ => None,
    });
    let got = result.expect("answered").expect("ok");
    assert_eq!(got.responder, a.id());
    assert!(got.entries.is_empty());
}

/// A node with a shared view of the given ids (all alive).
fn node_in_view(me: u128, ids: &[u128], t0: Instant) -> Node {
    let mut n = Node::new(cfg(me)).unwrap();
    let recs = ids.iter().map(|id| ringmesh_overlay::MemberRecord {
        id: NodeId::from_u128(*id),
        incarnation: 0,
        state: ringmesh_overlay::MemberState::Alive,
        since_ms: WALL,
        overlay_addr: String::new(),
        sip_addr: String::new(),
        name: String::new(),
        version: Default::default(),
    });
    n.start_with_view(ringmesh_overlay::MemberView::from_records(recs), t0, WALL);
    while n.poll_event().is_some() {}
    n
}

fn key_at(pos: u128) -> Key {
    let mut x = [0u8; 32];
    x[..16].copy_from_slice(&pos.to_be_bytes());
    Key::from_array(x)
}

#[test]
fn a_replica_that_never_acked_gets_the_write_again() {
    let t0 = Instant::now();
    let (a, b, c) = (1u128 << 100, 2u128 << 100, 3u128 << 100);
    let mut node = node_in_view(a, &[a, b, c], t0);
    let k = key_at(a - 5); // owned by a, replicated on b and c
    let e = entry(&mut node, "c1", "v");
    let op = node.put(k, vec![e], t0, WALL);
    let tags: Vec<(NodeId, u64)> = std::iter::from_fn(|| node.poll_transmit())
        .filter_map(|t| match t.message {
            Message::Replicate { tag, .. } => Some((t.to, tag)),
            _ => None,
        })
        .collect();
    assert_eq!(tags.len(), 2);
    let (_, tag) = tags[0];
    // b acks: the quorum (2 of 3) is reached and the origin is answered.
    node.handle_message(
        NodeId::from_u128(b),
        Message::ReplicateAck { tag, stored: true },
        t0,
        WALL,
    )
    .unwrap();
    let done = std::iter::from_fn(|| node.poll_event())
        .any(|ev| matches!(ev, Event::PutDone { op: o, result: Ok(_) } if o == op));
    assert!(done);
    // c stays silent: at the replicate deadline it is sent the write again,
    // and b is not.
    let later = t0 + node.config().replicate_timeout + Duration::from_millis(1);
    node.handle_timeout(later, WALL);
    let resent: Vec<NodeId> = std::iter::from_fn(|| node.poll_transmit())
        .filter(|t| matches!(t.message, Message::Replicate { .. }))
        .map(|t| t.to)
        .collect();
    assert_eq!(resent, vec![NodeId::from_u128(c)]);
}

#[test]
fn an_empty_answer_from_a_stand_in_replica_is_not_the_last_word() {
    let t0 = Instant::now();
    let (a, b, c, d) = (1u128 << 100, 2u128 << 100, 3u128 << 100, 4u128 << 100);
    let mut node = node_in_view(a, &[a, b, c, d], t0);
    let k = key_at(b - 5); // replicas b (owner), c, d
    let op = node.get(k, t0, WALL);
    let first = node.poll_transmit().unwrap();
    assert_eq!(first.to, NodeId::from_u128(b));
    while node.poll_transmit().is_some() {}
    // The owner is silent: the next attempt goes to c, standing in.
    let t1 = t0 + node.config().op_attempt_timeout;
    node.handle_timeout(t1, WALL);
    let (to, op_ref) = std::iter::from_fn(|| node.poll_transmit())
        .find_map(|t| match t.message {
            Message::Get {
                op,
                accept_replica: true,
                ..
            } => Some((t.to, op)),
            _ => None,
        })
        .unwrap();
    assert_eq!(to, NodeId::from_u128(c));
    // c has nothing (it missed the write): not conclusive, d is asked.
    let replicas = vec![
        NodeId::from_u128(b),
        NodeId::from_u128(c),
        NodeId::from_u128(d),
    ];
    let empty = Message::GetResult {
        op: op_ref,
        failure: None,
        hops: 1,
        responder: NodeId::from_u128(c),
        replicas: replicas.clone(),
        entries: vec![],
    };
    node.handle_message(NodeId::from_u128(c), empty, t1, WALL)
        .unwrap();
    assert!(
        node.poll_event().is_none(),
        "an empty stand-in answer is not final"
    );
    let next = std::iter::from_fn(|| node.poll_transmit())
        .find(|t| matches!(t.message, Message::Get { .. }))
        .unwrap();
    assert_eq!(next.to, NodeId::from_u128(d));
    let hlc = node.stamp(WALL);
    let e = Entry::new(
        Bytes::from_static(b"c1"),
        Bytes::from_static(b"v"),
        hlc,
        NodeId::from_u128(b),
        WALL + 1000,
    );
    let full = Message::GetResult {
        op: op_ref,
        failure: None,
        hops: 1,
        responder: NodeId::from_u128(d),
        replicas,
        entries: vec![e.clone()],
    };
    node.handle_message(NodeId::from_u128(d), full, t1, WALL)
        .unwrap();
    match node.poll_event() {
        Some(Event::GetDone {
            op: o,
            result: Ok(g),
        }) => {
            assert_eq!(o, op);
            assert_eq!(g.entries, vec![e]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_founding_node_bootstraps_when_no_seed_accepts_but_not_after_an_accept() {
    let now = Instant::now();
    let mut n = Node::new(cfg(1)).unwrap();
    n.join(&[NodeId::from_u128(2)], now, WALL);
    assert_eq!(n.phase(), Phase::Joining);
    // Nobody answered: the whole farm restarts at once; node 1 founds it.
    n.bootstrap(now + Duration::from_secs(3), WALL + 3000);
    assert_eq!(n.phase(), Phase::Alive);
    let mut joined = false;
    while let Some(e) = n.poll_event() {
        joined |= matches!(e, Event::Joined);
    }
    assert!(joined);
    // A live node ignores a later bootstrap.
    n.bootstrap(now + Duration::from_secs(4), WALL + 4000);
    assert_eq!(n.phase(), Phase::Alive);
}
