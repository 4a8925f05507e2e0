//! The Provisioning gRPC API end to end over 127.0.0.1 with a tonic client,
//! and the supernode-side SubscriberCache against it (embedded store and
//! a real etcd).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Etcd, REALM, Server};
use futures::StreamExt as _;
use ringmesh_proto::provisioning as pb;
use ringmesh_provisioning::{
    CacheConfig, CacheError, EmbeddedStore, EtcdOptions, EtcdStore, SubscriberCache,
};
use ringmesh_sip::digest::Ha1;
use tonic::Code;

fn new_sub(id: &str, public: &[&str]) -> pb::Subscriber {
    pb::Subscriber {
        private_id: id.into(),
        public_ids: public.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn create(id: &str, public: &[&str], pw: &str) -> pb::CreateSubscriberRequest {
    pb::CreateSubscriberRequest {
        subscriber: Some(new_sub(id, public)),
        password: pw.into(),
    }
}

fn by_private(id: &str) -> pb::GetSubscriberRequest {
    pb::GetSubscriberRequest {
        id: Some(pb::get_subscriber_request::Id::PrivateId(id.into())),
    }
}

fn by_public(id: &str) -> pb::GetSubscriberRequest {
    pb::GetSubscriberRequest {
        id: Some(pb::get_subscriber_request::Id::PublicId(id.into())),
    }
}

fn assert_invalid(r: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>, field: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with(&format!("{field}:")),
        "message names {field}: {}",
        e.message()
    );
}

#[tokio::test]
async fn api_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EmbeddedStore::open(dir.path()).unwrap()).await;
    let mut c = server.client().await;

    let a = c
        .create_subscriber(create(
            "alice",
            &["sips:alice@RingMesh.Test;transport=tls", "tel:+1-555-0100"],
            "s3cret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a.public_ids,
        ["sip:alice@ringmesh.test", "tel:+15550100"],
        "stored canonical"
    );
    let creds = a.credentials.clone().unwrap();
    let ha1 = Ha1::compute(b"alice", REALM.as_bytes(), b"s3cret");
    assert_eq!(
        (creds.realm.as_str(), creds.ha1_md5.as_str()),
        (REALM, ha1.md5_hex().as_str())
    );
    assert_eq!(creds.ha1_sha256, ha1.sha256_hex());
    assert!(
        !format!("{a:?}").contains("s3cret"),
        "the password is not kept"
    );

    assert_eq!(
        c.get_subscriber(by_private("alice"))
            .await
            .unwrap()
            .into_inner(),
        a
    );
    assert_eq!(
        c.get_subscriber(by_public("sip:alice@ringmesh.test:5060"))
            .await
            .unwrap()
            .into_inner(),
        a
    );
    assert_eq!(
        c.get_subscriber(by_public("tel:+15550100"))
            .await
            .unwrap()
            .into_inner(),
        a
    );

    // Bad input: INVALID_ARGUMENT naming the field.
    assert_invalid(
        c.create_subscriber(create("bob", &["mailto:bob@x"], "pw"))
            .await,
        "subscriber.public_ids[0]",
    );
    assert_invalid(
        c.create_subscriber(create("", &["sip:bob@x"], "pw")).await,
        "subscriber.private_id",
    );
    assert_invalid(
        c.create_subscriber(create("bob", &[], "pw")).await,
        "subscriber.public_ids",
    );
    assert_invalid(
        c.create_subscriber(create("bob", &["sip:bob@x"], "")).await,
        "password",
    );
    assert_invalid(
        c.create_subscriber(pb::CreateSubscriberRequest {
            subscriber: None,
            password: "pw".into(),
        })
        .await,
        "subscriber",
    );
    assert_invalid(
        c.get_subscriber(pb::GetSubscriberRequest { id: None })
            .await,
        "id",
    );
    assert_invalid(c.get_subscriber(by_public("sip:")).await, "public_id");
    assert_invalid(
        c.list_subscribers(pb::ListSubscribersRequest {
            page_size: 5000,
            page_token: String::new(),
        })
        .await,
        "page_size",
    );
    assert_invalid(
        c.list_subscribers(pb::ListSubscribersRequest {
            page_size: 10,
            page_token: "garbage!".into(),
        })
        .await,
        "page_token",
    );
    let mut bad_profile = new_sub("alice", &["sip:alice@ringmesh.test"]);
    bad_profile.service_profile = Some(pb::ServiceProfile {
        filter_criteria: vec![pb::FilterCriteria {
            priority: 1,
            application_server: "http://as".into(),
            ..Default::default()
        }],
    });
    assert_invalid(
        c.update_subscriber(pb::UpdateSubscriberRequest {
            subscriber: Some(bad_profile),
            expected_revision: 0,
        })
        .await,
        "subscriber.service_profile.filter_criteria[0].application_server",
    );

    // NOT_FOUND, ALREADY_EXISTS, ABORTED.
    assert_eq!(
        c.get_subscriber(by_private("nobody"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.get_subscriber(by_public("sip:nobody@ringmesh.test"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let e = c
        .set_password(pb::SetPasswordRequest {
            private_id: "nobody".into(),
            password: "x".into(),
            expected_revision: 0,
        })
        .await;
    assert_eq!(e.unwrap_err().code(), Code::NotFound);
    let e = c
        .create_subscriber(create("alice", &["sip:other@x"], "pw"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = c
        .create_subscriber(create("bob", &["tel:+1.555.0100"], "pw"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(
        e.message().contains("tel:+15550100") && e.message().contains("alice"),
        "{}",
        e.message()
    );
    let e = c
        .set_barred(pb::SetBarredRequest {
            private_id: "alice".into(),
            barred: true,
            reason: "x".into(),
            expected_revision: 1 + a.revision,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);

    // Update, password, barring.
    let mut upd = new_sub(
        "alice",
        &["sip:alice@ringmesh.test", "sip:al@ringmesh.test"],
    );
    upd.implicit_sets = vec![pb::ImplicitSet {
        public_ids: upd.public_ids.clone(),
    }];
    upd.service_profile = Some(pb::ServiceProfile {
        filter_criteria: vec![pb::FilterCriteria {
            priority: 10,
            method: "MESSAGE".into(),
            headers: vec![pb::HeaderMatch {
                header: "Content-Type".into(),
                contains: "text/plain".into(),
                ..Default::default()
            }],
            application_server: "sip:192.0.2.7;lr".into(),
            default_handling: pb::DefaultHandling::SessionTerminated as i32,
            session_case: pb::SessionCase::Originating as i32,
            ..Default::default()
        }],
    });
    let a2 = c
        .update_subscriber(pb::UpdateSubscriberRequest {
            subscriber: Some(upd),
            expected_revision: a.revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a2.credentials, a.credentials,
        "update leaves credentials alone"
    );
    let fc = &a2.service_profile.unwrap().filter_criteria[0];
    assert_eq!(fc.priority, 10);
    // The deprecated substring comes back as its regular expression.
    assert_eq!(
        (
            fc.headers[0].contains.as_str(),
            fc.headers[0].regex.as_str()
        ),
        ("", "(?i)text/plain")
    );
    assert_eq!(
        c.get_subscriber(by_public("tel:+15550100"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let a3 = c
        .set_password(pb::SetPasswordRequest {
            private_id: "alice".into(),
            password: "n3w".into(),
            expected_revision: a2.revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a3.credentials.unwrap().ha1_md5,
        Ha1::compute(b"alice", REALM.as_bytes(), b"n3w").md5_hex()
    );
    let a4 = c
        .set_barred(pb::SetBarredRequest {
            private_id: "alice".into(),
            barred: true,
            reason: "unpaid".into(),
            expected_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a4.barring,
        Some(pb::Barring {
            barred: true,
            reason: "unpaid".into()
        })
    );

    // Paging through the API.
    for i in 0..12 {
        c.create_subscriber(create(
            &format!("u{i:02}"),
            &[&format!("sip:u{i:02}@ringmesh.test")],
            "pw",
        ))
        .await
        .unwrap();
    }
    let (mut token, mut all) = (String::new(), Vec::new());
    let mut pages = 0;
    loop {
        let page = c
            .list_subscribers(pb::ListSubscribersRequest {
                page_size: 5,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        all.extend(page.subscribers.into_iter().map(|s| s.private_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!((pages, all.len()), (3, 13));
    assert_eq!(all[0], "alice");

    let d = c
        .delete_subscriber(pb::DeleteSubscriberRequest {
            private_id: "alice".into(),
            expected_revision: 0,
        })
        .await
        .unwrap();
    assert!(d.into_inner().revision > a4.revision);
    assert_eq!(
        c.get_subscriber(by_private("alice"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    server.stop().await;
}

#[tokio::test]
async fn watch_streams_changes_in_order_and_ends_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EmbeddedStore::open(dir.path()).unwrap()).await;
    let mut c = server.client().await;
    let mut w = c
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = w.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, pb::EventType::Synced as i32);
    let a = c
        .create_subscriber(create("alice", &["sip:alice@x"], "pw"))
        .await
        .unwrap()
        .into_inner();
    c.set_password(pb::SetPasswordRequest {
        private_id: "alice".into(),
        password: "2".into(),
        expected_revision: 0,
    })
    .await
    .unwrap();
    c.delete_subscriber(pb::DeleteSubscriberRequest {
        private_id: "alice".into(),
        expected_revision: 0,
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = w.message().await.unwrap().unwrap();
        if ev.r#type != pb::EventType::Synced as i32 {
            got.push((pb::EventType::try_from(ev.r#type).unwrap(), ev.revision));
        }
    }
    assert_eq!(
        got,
        [
            (pb::EventType::Put, a.revision),
            (pb::EventType::Put, a.revision + 1),
            (pb::EventType::Delete, a.revision + 2)
        ]
    );
    // Resume from a revision: replay.
    let mut r = c
        .watch(pb::WatchRequest {
            start_revision: a.revision + 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ev = r.message().await.unwrap().unwrap();
    assert_eq!(
        (ev.r#type, ev.revision),
        (pb::EventType::Put as i32, a.revision + 1)
    );

    // A graceful stop does not wait for the open watches.
    let took = server.stop().await;
    eprintln!("graceful stop with 2 open watches took {took:?}");
    assert!(took < Duration::from_secs(5));
    let end = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

async fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> (T, Duration) {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, t.elapsed());
        }
        assert!(t.elapsed() < deadline, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (at most `deadline`) until the cache holds alice with `password`;
/// returns how long that took.
async fn alice_cached_with(
    cache: &SubscriberCache,
    password: &str,
    what: &str,
    deadline: Duration,
) -> Duration {
    let md5 = Ha1::compute(b"alice", REALM.as_bytes(), password.as_bytes()).md5_hex();
    let (_, took) = wait_for(what, deadline, async || {
        let s = cache.by_private_id("alice").await.unwrap().unwrap();
        (s.credentials.as_ref().unwrap().ha1_md5 == md5).then_some(())
    })
    .await;
    took
}

#[tokio::test]
async fn cache_fetches_hits_follows_watch_and_survives_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EmbeddedStore::open(dir.path()).unwrap()).await;
    let addr = server.addr;
    let mut c = server.client().await;
    c.create_subscriber(create("alice", &["sip:alice@ringmesh.test"], "one"))
        .await
        .unwrap();
    c.create_subscriber(create("bob", &["sip:bob@ringmesh.test"], "bob"))
        .await
        .unwrap();

    let cfg = CacheConfig {
        capacity: 100,
        backoff_min: Duration::from_millis(50),
        ..CacheConfig::default()
    };
    let cache = SubscriberCache::connect(&addr.to_string(), cfg).unwrap();
    assert!(
        cache.wait_watching(Duration::from_secs(10)).await,
        "watch up"
    );
    let m = cache.metrics();

    // First use fetches, second is a hit; by public id shares the entry.
    let a = cache.by_private_id("alice").await.unwrap().unwrap();
    assert_eq!(
        (
            m.misses.load(Ordering::Relaxed),
            m.hits.load(Ordering::Relaxed)
        ),
        (1, 0)
    );
    let again = cache.by_private_id("alice").await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    assert!(
        cache
            .by_public_id("sips:alice@RINGMESH.test")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        (
            m.misses.load(Ordering::Relaxed),
            m.hits.load(Ordering::Relaxed)
        ),
        (1, 2)
    );
    // Unknown: one request, then remembered.
    assert!(cache.by_private_id("ghost").await.unwrap().is_none());
    assert!(cache.by_private_id("ghost").await.unwrap().is_none());
    assert_eq!(m.misses.load(Ordering::Relaxed), 2);
    assert!(matches!(
        cache.by_public_id("http://x").await,
        Err(CacheError::Invalid(_))
    ));

    // A password change is pushed through Watch.
    let t = Instant::now();
    c.set_password(pb::SetPasswordRequest {
        private_id: "alice".into(),
        password: "two".into(),
        expected_revision: 0,
    })
    .await
    .unwrap();
    let acked = t.elapsed();
    let delay = alice_cached_with(
        &cache,
        "two",
        "password change reaches the cache",
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "password change: acknowledged in {acked:?}, in the cache {:?} after the acknowledgement ({:?} after the request)",
        delay,
        t.elapsed()
    );
    assert_eq!(
        m.misses.load(Ordering::Relaxed),
        2,
        "pushed, not re-fetched"
    );
    assert!(m.invalidations.load(Ordering::Relaxed) >= 1);
    // Creating a remembered-missing subscriber clears the negative entry.
    c.create_subscriber(create("ghost", &["sip:ghost@ringmesh.test"], "boo"))
        .await
        .unwrap();
    wait_for(
        "the new subscriber is visible",
        Duration::from_secs(10),
        async || cache.by_private_id("ghost").await.unwrap(),
    )
    .await;
    // Barring is pushed too.
    c.set_barred(pb::SetBarredRequest {
        private_id: "alice".into(),
        barred: true,
        reason: "x".into(),
        expected_revision: 0,
    })
    .await
    .unwrap();
    wait_for(
        "barring reaches the cache",
        Duration::from_secs(10),
        async || {
            cache
                .by_private_id("alice")
                .await
                .unwrap()
                .unwrap()
                .barring
                .as_ref()
                .unwrap()
                .barred
                .then_some(())
        },
    )
    .await;

    // Provisioning stops: cached subscribers are still served, misses fail.
    server.stop().await;
    wait_for("the cache notices", Duration::from_secs(10), async || {
        (!cache.is_watching()).then_some(())
    })
    .await;
    let t = Instant::now();
    let still = cache.by_private_id("alice").await.unwrap().unwrap();
    assert!(still.barring.as_ref().unwrap().barred);
    assert!(
        cache
            .by_public_id("sip:alice@ringmesh.test")
            .await
            .unwrap()
            .is_some()
    );
    assert!(t.elapsed() < Duration::from_millis(100), "from memory");
    let e = cache.by_private_id("bob").await.unwrap_err();
    assert!(matches!(e, CacheError::Unavailable(_)), "{e:?}");
    assert!(m.errors.load(Ordering::Relaxed) >= 1);

    // Provisioning comes back (same data, same port): the watch resumes;
    // the store restarted so it says RESET and the cache starts over.
    let server = Server::start_on(addr, EmbeddedStore::open(dir.path()).unwrap()).await;
    assert!(
        cache.wait_watching(Duration::from_secs(20)).await,
        "watch reconnects"
    );
    assert!(m.watch_reconnects.load(Ordering::Relaxed) >= 1);
    let mut c = server.client().await;
    c.set_password(pb::SetPasswordRequest {
        private_id: "alice".into(),
        password: "three".into(),
        expected_revision: 0,
    })
    .await
    .unwrap();
    alice_cached_with(
        &cache,
        "three",
        "a change after the reconnection",
        Duration::from_secs(10),
    )
    .await;
    server.stop().await;

    // Provisioning comes back on another store (a wiped directory, or etcd
    // restored from a backup) that holds alice with another password and
    // has reached exactly the revision the cache had seen: revision numbers
    // cannot tell the stores apart, the store id does, and the cache starts
    // over instead of keeping the old password.
    wait_for("the cache notices", Duration::from_secs(10), async || {
        (!cache.is_watching()).then_some(())
    })
    .await;
    let seen = m.watch_revision.load(Ordering::Relaxed);
    let other = tempfile::tempdir().unwrap();
    let filling = Server::start(EmbeddedStore::open(other.path()).unwrap()).await;
    let mut c = filling.client().await;
    let mut rev = c
        .create_subscriber(create("alice", &["sip:alice@ringmesh.test"], "four"))
        .await
        .unwrap()
        .into_inner()
        .revision;
    for i in 0.. {
        if rev >= seen {
            break;
        }
        let user = format!("filler{i}");
        rev = c
            .create_subscriber(create(&user, &[&format!("sip:{user}@x.test")], "x"))
            .await
            .unwrap()
            .into_inner()
            .revision;
    }
    assert_eq!(rev, seen, "the other store is where the cache was");
    filling.stop().await;
    let server = Server::start_on(addr, EmbeddedStore::open(other.path()).unwrap()).await;
    assert!(
        cache.wait_watching(Duration::from_secs(20)).await,
        "watch reconnects"
    );
    alice_cached_with(
        &cache,
        "four",
        "the other store's password replaces the cached one",
        Duration::from_secs(10),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn cache_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EmbeddedStore::open(dir.path()).unwrap()).await;
    let mut c = server.client().await;
    for i in 0..20 {
        c.create_subscriber(create(&format!("u{i}"), &[&format!("sip:u{i}@x")], "pw"))
            .await
            .unwrap();
    }
    let cache = SubscriberCache::connect(
        &server.addr.to_string(),
        CacheConfig {
            capacity: 5,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(cache.wait_watching(Duration::from_secs(10)).await);
    for i in 0..20 {
        assert!(
            cache
                .by_private_id(&format!("u{i}"))
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(cache.len(), 5, "never more than the capacity");
    assert_eq!(cache.metrics().evictions.load(Ordering::Relaxed), 15);
    server.stop().await;
}

#[tokio::test]
#[ignore = "slow: needs etcd"]
async fn cache_serves_while_etcd_is_down() {
    let mut etcd = Etcd::start();
    let opts = EtcdOptions {
        etcd: ringmesh_config::Etcd::plain(vec![etcd.url()]),
        prefix: "/cache/".into(),
        timeout: Duration::from_millis(1000),
        keepalive: Duration::from_secs(1),
    };
    let server = Server::start(EtcdStore::connect(opts).await.unwrap()).await;
    let mut c = server.client().await;
    c.create_subscriber(create("alice", &["sip:alice@ringmesh.test"], "one"))
        .await
        .unwrap();
    c.create_subscriber(create("bob", &["sip:bob@ringmesh.test"], "bob"))
        .await
        .unwrap();
    let cfg = CacheConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Default::default()
    };
    let cache = SubscriberCache::connect(&server.addr.to_string(), cfg).unwrap();
    assert!(cache.wait_watching(Duration::from_secs(10)).await);
    assert!(cache.by_private_id("alice").await.unwrap().is_some());

    etcd.stop();
    // The API answers UNAVAILABLE within the deadline...
    let t = Instant::now();
    let e = c.get_subscriber(by_private("bob")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // ...and the cache keeps serving what it holds.
    assert!(cache.by_private_id("alice").await.unwrap().is_some());
    assert!(matches!(
        cache.by_private_id("bob").await,
        Err(CacheError::Unavailable(_))
    ));

    etcd.restart();
    // The watch resumes from the last revision and picks up a change.
    let t = Instant::now();
    wait_for(
        "provisioning works again",
        Duration::from_secs(20),
        async || {
            c.set_password(pb::SetPasswordRequest {
                private_id: "alice".into(),
                password: "two".into(),
                expected_revision: 0,
            })
            .await
            .ok()
        },
    )
    .await;
    let d = alice_cached_with(
        &cache,
        "two",
        "the change after the outage reaches the cache",
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "after etcd came back: change in the cache {:?} after the write ({:?} since restart)",
        d,
        t.elapsed()
    );
    server.stop().await;
}
