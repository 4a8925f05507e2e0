//! Overlay links over real QUIC on 127.0.0.1: mutual TLS with the farm CA,
//! Node-IDs from certificates, refusals counted.

use std::time::Duration;

use bytes::Bytes;
use ringmesh_enrollment::ca::{Ca, provision_node};
use ringmesh_supernode::link::{Frame, LinkEvent, LinkVersion, Links};
use ringmesh_supernode::metrics::Metrics;
use ringmesh_supernode::pki::Identity;
use tokio::sync::mpsc;

const V: LinkVersion = LinkVersion { major: 1, minor: 0 };

fn identity(dir: &std::path::Path, name: &str, ca: &Ca) -> Identity {
    let d = dir.join(name);
    provision_node(&d, name, ca, &[]).unwrap();
    Identity::load(
        &d.join("node.crt"),
        &d.join("node.key"),
        &d.join("ca.crt"),
        None,
    )
    .unwrap()
}

fn start(id: &Identity, v: LinkVersion) -> (Links, mpsc::Receiver<LinkEvent>, Metrics) {
    let (tx, rx) = mpsc::channel(64);
    let m = Metrics::new("t");
    let l = Links::bind(
        "127.0.0.1:0".parse().unwrap(),
        id,
        b"ringmesh-test/1",
        v,
        tx,
        m.clone(),
        ringmesh_supernode::tasks::Tasks::new(),
    )
    .unwrap();
    (l, rx, m)
}

/// Two node identities from one farm CA (kept in the directory returned).
fn two_of_one_farm() -> (tempfile::TempDir, Identity, Identity) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("farm").unwrap();
    let (a, b) = (
        identity(dir.path(), "a", &ca),
        identity(dir.path(), "b", &ca),
    );
    (dir, a, b)
}

async fn next(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .unwrap()
}

#[tokio::test]
async fn same_farm_links_and_exchanges_frames() {
    let (_dir, a_id, b_id) = two_of_one_farm();
    let (a, mut a_rx, _) = start(&a_id, V);
    let (b, mut b_rx, _) = start(&b_id, LinkVersion { major: 1, minor: 1 });
    a.connect(b.local_addr().unwrap(), Some(b_id.node_id));
    match next(&mut a_rx).await {
        LinkEvent::Up { peer, .. } => assert_eq!(peer, b_id.node_id),
        e => panic!("{e:?}"),
    }
    match next(&mut b_rx).await {
        LinkEvent::Up { peer, .. } => assert_eq!(
            peer, a_id.node_id,
            "b learns a's Node-ID from its certificate"
        ),
        e => panic!("{e:?}"),
    }
    assert!(a.send(
        &b_id.node_id,
        Frame::Sip(Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    ));
    assert!(a.send(
        &b_id.node_id,
        Frame::Overlay(Bytes::from_static(b"\x0a\x00"))
    ));
    match next(&mut b_rx).await {
        LinkEvent::Frame {
            peer,
            frame: Frame::Sip(b),
        } => {
            assert_eq!(peer, a_id.node_id);
            assert!(b.starts_with(b"OPTIONS"));
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        next(&mut b_rx).await,
        LinkEvent::Frame {
            frame: Frame::Overlay(_),
            ..
        }
    ));
    // Dialling again keeps one link per pair.
    b.connect(a.local_addr().unwrap(), Some(a_id.node_id));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.peers(), vec![b_id.node_id]);
    a.close(&b_id.node_id, "test");
    assert!(matches!(next(&mut b_rx).await, LinkEvent::Down { .. }));
}

#[tokio::test]
async fn foreign_ca_and_false_claims_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("farm").unwrap();
    let other = Ca::generate("intruder").unwrap();
    let good = identity(dir.path(), "good", &ca);
    let (g, mut g_rx, gm) = start(&good, V);

    // A node whose certificate comes from another CA.
    let evil = identity(dir.path(), "evil", &other);
    let (e, mut e_rx, em) = start(&evil, V);
    e.connect(g.local_addr().unwrap(), None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(g.peers().is_empty() && e.peers().is_empty());
    assert!(
        g_rx.try_recv().is_err() && e_rx.try_recv().is_err(),
        "no link came up"
    );
    let refusals = |m: &Metrics| {
        m.link_refusals.with_label_values(&["tls"]).get()
            + m.link_refusals.with_label_values(&["identity"]).get()
    };
    assert!(refusals(&gm) + refusals(&em) >= 1, "the refusal is counted");

    // A farm node whose hello claims someone else's Node-ID.
    let mut liar = identity(dir.path(), "liar", &ca);
    liar.node_id = [0x42; 16];
    let (l, _l_rx, _) = start(&liar, V);
    l.connect(g.local_addr().unwrap(), None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(g.peers().is_empty(), "a false claim never links");
    assert!(gm.link_refusals.with_label_values(&["identity"]).get() >= 1);

    // An incompatible major version.
    let old = identity(dir.path(), "old", &ca);
    let (o, _o_rx, _) = start(&old, LinkVersion { major: 2, minor: 0 });
    o.connect(g.local_addr().unwrap(), None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(g.peers().is_empty());
    assert!(gm.link_refusals.with_label_values(&["version"]).get() >= 1);
}

#[test]
fn issued_identities_load_with_their_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test farm").unwrap();
    let id = provision_node(&dir.path().join("n1"), "n1", &ca, &[]).unwrap();
    assert_eq!(
        provision_node(&dir.path().join("n1"), "n1", &ca, &[]).unwrap(),
        id,
        "stable across restarts"
    );
    let ident = Identity::load(
        &dir.path().join("n1/node.crt"),
        &dir.path().join("n1/node.key"),
        &dir.path().join("n1/ca.crt"),
        None,
    )
    .unwrap();
    assert_eq!(ident.node_id, id);
    assert!(ident.expires_in().unwrap() > 800 * 86400);
    ident.server_config(b"x").unwrap();
    ident.client_config(b"x").unwrap();
    let second = provision_node(&dir.path().join("n2"), "n2", &ca, &[id]).unwrap();
    assert_eq!(
        u128::from_be_bytes(second).wrapping_sub(u128::from_be_bytes(id)),
        1 << 127,
        "placed opposite"
    );
}

#[tokio::test]
async fn a_restarted_peer_replaces_the_link_to_its_previous_process_at_once() {
    let (_dir, one, two) = two_of_one_farm();
    // The seed has the lower Node-ID: between the same two processes, the
    // seed's own dial would win and the other's be closed as a duplicate.
    let (seed_id, node_id) = if one.node_id < two.node_id {
        (one, two)
    } else {
        (two, one)
    };
    let (seed, mut seed_rx, _) = start(&seed_id, V);
    let (before, mut before_rx, _) = start(&node_id, V);
    before.connect(seed.local_addr().unwrap(), Some(seed_id.node_id));
    assert!(matches!(next(&mut seed_rx).await, LinkEvent::Up { .. }));
    assert!(matches!(next(&mut before_rx).await, LinkEvent::Up { .. }));

    // The node's new process (same identity, another boot id) dials while
    // the seed still holds the link to the previous one, as after a kill.
    let (after, mut after_rx, _) = start(&node_id, V);
    after.connect(seed.local_addr().unwrap(), Some(seed_id.node_id));
    match next(&mut after_rx).await {
        LinkEvent::Up { peer, .. } => assert_eq!(peer, seed_id.node_id),
        e => panic!("{e:?}"),
    }
    assert!(
        matches!(next(&mut before_rx).await, LinkEvent::Down { .. }),
        "the previous process's link is closed"
    );
    assert!(seed.send(
        &node_id.node_id,
        Frame::Sip(Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    ));
    assert!(
        matches!(
            next(&mut after_rx).await,
            LinkEvent::Frame {
                frame: Frame::Sip(_),
                ..
            }
        ),
        "the seed's frames reach the new process"
    );
    assert_eq!(seed.peers(), vec![node_id.node_id]);
}

#[tokio::test]
async fn dials_repeated_while_a_link_comes_up_make_no_second_link() {
    let (_dir, a_id, b_id) = two_of_one_farm();
    let (a, mut a_rx, _) = start(&a_id, V);
    let (b, mut b_rx, _) = start(&b_id, V);
    // As a joining node does: the seed's address dialled, then the same
    // node asked for by its Node-ID (a message to send) again and again
    // while the first dial's hello exchange is under way.
    let at = b.local_addr().unwrap();
    a.connect(at, None);
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < until {
        a.connect(at, Some(b_id.node_id));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut events = Vec::new();
    while let Ok(e) = a_rx.try_recv() {
        events.push(e);
    }
    while let Ok(e) = b_rx.try_recv() {
        events.push(e);
    }
    assert_eq!(
        events.len(),
        2,
        "one link up on each side, nothing replaced: {events:?}"
    );
    assert!(events.iter().all(|e| matches!(e, LinkEvent::Up { .. })));
}
