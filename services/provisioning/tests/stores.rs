//! Both stores against the same conformance suites (subscribers, trusted
//! elements), plus what is particular to each: restart persistence of the
//! embedded store, and a real etcd stopped mid-test.

mod common;

use std::time::{Duration, Instant};

use common::{
    Etcd, conformance, element, next_change, next_trust_change, store_id, sub, trust_conformance,
};
use futures::StreamExt as _;
use ringmesh_proto::provisioning::{Barring, EventType};
use ringmesh_provisioning::store::{
    Change, EmbeddedStore, EtcdOptions, EtcdStore, StoreError, SubscriberStore, TrustStore,
};

fn etcd_opts(e: &Etcd, prefix: &str) -> EtcdOptions {
    EtcdOptions {
        etcd: ringmesh_config::Etcd::plain(vec![e.url()]),
        prefix: prefix.into(),
        timeout: Duration::from_millis(1500),
        keepalive: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn embedded_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance(&store).await;
}

#[tokio::test]
async fn embedded_store_trust_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    trust_conformance(&store).await;
    let (all, rev) = store.list_trusted().await.unwrap();
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        store.list_trusted().await.unwrap(),
        (all, rev),
        "a full table survives a restart"
    );
}

#[tokio::test]
async fn embedded_store_keeps_trusted_elements_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, rev) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let gw = store
            .create_trusted(element("gw", "192.0.2.0/24"))
            .await
            .unwrap();
        store
            .create_trusted(element("old", "198.51.100.7"))
            .await
            .unwrap();
        store.create(sub("alice", &["sip:alice@x"])).await.unwrap();
        let rev = store.delete_trusted("old", None).await.unwrap();
        (gw, rev)
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.list_trusted().await.unwrap(), (vec![gw.clone()], rev));
    assert_eq!(store.len(), 1, "subscribers beside them");
    // A watcher from before the restart is told to list again; the next
    // change gets the next revision.
    let mut w = store.watch_trusted(gw.revision).await.unwrap();
    let first = w.next().await.unwrap().unwrap();
    assert_eq!(
        (first.r#type, first.revision),
        (EventType::Reset as i32, rev)
    );
    let next = store
        .create_trusted(element("next", "203.0.113.0/24"))
        .await
        .unwrap();
    assert_eq!(next.revision, rev + 1);
    let ev = next_trust_change(&mut w).await;
    assert_eq!((ev.r#type, ev.revision), (EventType::Put as i32, rev + 1));
}

#[tokio::test]
async fn embedded_store_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (rev, a, id) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create(sub("alice", &["sip:alice@x"])).await.unwrap();
        store.create(sub("bob", &["sip:bob@x"])).await.unwrap();
        let a = store
            .update(
                "alice",
                None,
                Change::Barring(Barring {
                    barred: true,
                    reason: "r".into(),
                }),
            )
            .await
            .unwrap();
        let rev = store.delete("bob", None).await.unwrap();
        (rev, a, store_id(&store).await)
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store_id(&store).await, id, "the same store after a restart");
    assert_eq!(
        store.get("alice").await.unwrap(),
        a,
        "same subscriber, same revision"
    );
    assert!(matches!(
        store.get("bob").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_by_public("sip:bob@x").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.current_revision().await.unwrap(),
        rev,
        "revisions survive"
    );

    // History is not kept across restarts: a watcher resuming from before
    // the restart is told to start over, then follows live changes.
    let mut w = store.watch(2, 0).await.unwrap();
    let first = w.next().await.unwrap().unwrap();
    assert_eq!(first.r#type, EventType::Reset as i32);
    assert_eq!(first.revision, rev);
    store.create(sub("carol", &["sip:carol@x"])).await.unwrap();
    let ev = next_change(&mut w).await;
    assert_eq!((ev.r#type, ev.revision), (EventType::Put as i32, rev + 1));

    // A torn record at the end (a crash mid-write) is cut off.
    drop(w);
    drop(store);
    let log = dir.path().join("subscribers.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(&[0, 0, 0, 50, 1, 2]);
    std::fs::write(&log, bytes).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.len(), 2);
    store.create(sub("dave", &["sip:dave@x"])).await.unwrap();
    drop(store);
    assert_eq!(EmbeddedStore::open(dir.path()).unwrap().len(), 3);

    // A wiped directory is another store, and an id file that is not one
    // is refused with what to do.
    let wiped = tempfile::tempdir().unwrap();
    assert_ne!(
        store_id(&EmbeddedStore::open(wiped.path()).unwrap()).await,
        id
    );
    std::fs::write(dir.path().join("store-id"), "zz\n").unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("store-id") && err.contains("remove it"),
        "{err}"
    );
}

#[tokio::test]
async fn embedded_store_compacts_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.create(sub("alice", &["sip:alice@x"])).await.unwrap();
    let gw = store
        .create_trusted(element("gw", "192.0.2.0/24"))
        .await
        .unwrap();
    for i in 0..1100 {
        store
            .update(
                "alice",
                None,
                Change::Barring(Barring {
                    barred: i % 2 == 0,
                    reason: String::new(),
                }),
            )
            .await
            .unwrap();
    }
    let rev = store.current_revision().await.unwrap();
    let size = std::fs::metadata(dir.path().join("subscribers.log"))
        .unwrap()
        .len();
    assert!(size < 40_000, "the log was compacted ({size} bytes)");
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), rev);
    assert_eq!(store.get("alice").await.unwrap().revision, rev);
    assert_eq!(
        store.list_trusted().await.unwrap().0,
        [gw],
        "compaction keeps the trusted elements"
    );
}

#[tokio::test]
#[ignore = "slow: needs etcd"]
async fn etcd_store_conformance() {
    let etcd = Etcd::start();
    let store = EtcdStore::connect(etcd_opts(&etcd, "/conformance/"))
        .await
        .unwrap();
    conformance(&store).await;
}

#[tokio::test]
#[ignore = "slow: needs etcd"]
async fn etcd_store_trust_conformance() {
    let etcd = Etcd::start();
    let store = EtcdStore::connect(etcd_opts(&etcd, "/trust-conformance/"))
        .await
        .unwrap();
    trust_conformance(&store).await;
}

#[tokio::test]
#[ignore = "slow: needs etcd"]
async fn etcd_trust_watch_after_compaction_says_reset() {
    let etcd = Etcd::start();
    let store = EtcdStore::connect(etcd_opts(&etcd, "/trust-compact/"))
        .await
        .unwrap();
    let gw = store
        .create_trusted(element("gw", "192.0.2.0/24"))
        .await
        .unwrap();
    let del = store.delete_trusted("gw", None).await.unwrap();
    store.create(sub("alice", &["sip:alice@x"])).await.unwrap();
    let now = store.current_revision().await.unwrap();
    let mut c = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    c.compact(now as i64, None).await.unwrap();
    let mut w = store.watch_trusted(gw.revision).await.unwrap();
    let ev = next_trust_change(&mut w).await;
    assert_eq!(ev.r#type, EventType::Reset as i32, "{ev:?}");
    assert!(ev.revision >= del);
    let pcscf = store
        .create_trusted(element("pcscf", "tls:pcscf.example.net"))
        .await
        .unwrap();
    let ev = next_trust_change(&mut w).await;
    assert_eq!(
        (ev.r#type, ev.revision),
        (EventType::Put as i32, pcscf.revision)
    );
}

#[tokio::test]
#[ignore = "slow: needs etcd"]
async fn etcd_stopped_mid_test_means_unavailable_then_recovery() {
    let mut etcd = Etcd::start();
    let opts = etcd_opts(&etcd, "/outage/");
    let deadline = opts.timeout;
    let store = EtcdStore::connect(opts).await.unwrap();
    let a = store.create(sub("alice", &["sip:alice@x"])).await.unwrap();
    let mut watch = store.watch(a.revision + 1, 0).await.unwrap();

    etcd.stop();
    // Every kind of call fails with Unavailable within the deadline (plus
    // scheduling slack), never hangs.
    let t = Instant::now();
    assert!(matches!(
        store.get("alice").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.create(sub("bob", &["sip:bob@x"])).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.list(None, 10).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.delete("alice", None).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.watch(0, 0).await,
        Err(StoreError::Unavailable(_))
    ));
    let took = t.elapsed();
    eprintln!("5 calls with etcd down failed in {took:?} (deadline {deadline:?} each)");
    assert!(took < deadline * 5 + Duration::from_secs(2), "{took:?}");
    // The open watch ends with an error.
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match watch.next().await {
                Some(Err(e)) => return Some(e),
                None => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the watch notices within 15 s");
    assert!(
        matches!(end, Some(StoreError::Unavailable(_)) | None),
        "{end:?}"
    );

    etcd.restart();
    let t = Instant::now();
    let back = loop {
        match store.get("alice").await {
            Ok(s) => break s,
            Err(StoreError::Unavailable(_)) if t.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    };
    eprintln!("store recovered {:?} after etcd came back", t.elapsed());
    assert_eq!(back, a, "nothing lost");
    // Resuming the watch from the last revision seen replays what follows.
    let b = store.create(sub("bob", &["sip:bob@x"])).await.unwrap();
    let mut watch = store.watch(a.revision + 1, 0).await.unwrap();
    let ev = next_change(&mut watch).await;
    assert_eq!(
        (ev.r#type, ev.revision),
        (EventType::Put as i32, b.revision)
    );
}

#[tokio::test]
#[ignore = "slow: needs etcd"]
async fn etcd_watch_after_compaction_says_reset() {
    let etcd = Etcd::start();
    let store = EtcdStore::connect(etcd_opts(&etcd, "/compact/"))
        .await
        .unwrap();
    let a = store.create(sub("alice", &["sip:alice@x"])).await.unwrap();
    for _ in 0..5 {
        store
            .update(
                "alice",
                None,
                Change::Barring(Barring {
                    barred: true,
                    reason: String::new(),
                }),
            )
            .await
            .unwrap();
    }
    let now = store.current_revision().await.unwrap();
    let mut c = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    c.compact(now as i64, None).await.unwrap();
    let mut w = store.watch(a.revision, 0).await.unwrap();
    let ev = next_change(&mut w).await;
    assert_eq!(ev.r#type, EventType::Reset as i32, "{ev:?}");
    assert!(ev.revision < now, "changes after {} follow", ev.revision);
    let del = store.delete("alice", None).await.unwrap();
    // What etcd still has after the RESET is replayed, then live changes.
    let mut ev = next_change(&mut w).await;
    if ev.r#type == EventType::Put as i32 {
        assert_eq!(ev.revision, now, "the one change the compaction kept");
        ev = next_change(&mut w).await;
    }
    assert_eq!((ev.r#type, ev.revision), (EventType::Delete as i32, del));
}
