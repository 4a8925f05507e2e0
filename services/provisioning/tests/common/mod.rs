//! Test support: a real etcd (from `ringmesh-test-support`), a
//! provisioning server on 127.0.0.1, and the store conformance suites
//! (subscribers, trusted elements) both stores pass.

// Each test crate uses a part of this module.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ringmesh_proto::provisioning::provisioning_client::ProvisioningClient;
use ringmesh_proto::provisioning::{
    Barring, Credentials, EventType, ImplicitSet, Subscriber, TrustedElement, TrustedElementEvent,
    TrustedElementKind, WatchEvent, trusted_element,
};
use ringmesh_provisioning::store::{
    Change, EventStream, MAX_TRUSTED_ELEMENTS, StoreError, SubscriberStore, TrustEventStream,
};
use ringmesh_provisioning::{ProvisioningService, Store, serve};
pub use ringmesh_test_support::Etcd;
use tonic::transport::Channel;

pub const REALM: &str = "ringmesh.test";

/// A provisioning server on a free port, stopped gracefully on request.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start<S: Store>(store: S) -> Server {
        Server::start_on("127.0.0.1:0".parse().unwrap(), store).await
    }

    pub async fn start_on<S: Store>(addr: SocketAddr, store: S) -> Server {
        Server::start_with(addr, store, None).await
    }

    /// A server speaking mutual TLS with `tls` (None: plaintext).
    pub async fn start_with<S: Store>(
        addr: SocketAddr,
        store: S,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = ProvisioningService::new(Arc::new(store), REALM);
        let task = tokio::spawn(async move {
            serve(listener, service, tls, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub async fn client(&self) -> ProvisioningClient<Channel> {
        ProvisioningClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Stops the server; returns how long the graceful shutdown took.
    pub async fn stop(mut self) -> Duration {
        let t = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("graceful stop")
            .unwrap();
        t.elapsed()
    }
}

pub fn sub(id: &str, public: &[&str]) -> Subscriber {
    Subscriber {
        private_id: id.into(),
        public_ids: public.iter().map(|s| s.to_string()).collect(),
        credentials: Some(Credentials {
            realm: "r".into(),
            ha1_md5: "00".into(),
            ha1_sha256: "11".into(),
        }),
        barring: Some(Barring::default()),
        ..Default::default()
    }
}

/// Next event that is not a SYNCED marker, within 10 s.
pub async fn next_change(stream: &mut EventStream) -> WatchEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("no error");
        if ev.r#type != EventType::Synced as i32 {
            return ev;
        }
    }
}

/// The store's id, as the first marker of a watch from now carries it.
pub async fn store_id<S: SubscriberStore>(store: &S) -> u64 {
    let mut w = store.watch(0, 0).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a marker within 10 s")
        .expect("stream open")
        .expect("no error");
    assert_eq!(ev.r#type, EventType::Synced as i32, "{ev:?}");
    assert_ne!(ev.store_id, 0, "markers name the store");
    ev.store_id
}

/// What every store must do.
pub async fn conformance<S: SubscriberStore>(store: &S) {
    let t = Instant::now();
    let mut watch = store.watch(0, 0).await.unwrap();

    // Create, and the identity index.
    let a = store
        .create(sub("alice", &["sip:alice@x", "tel:+1555"]))
        .await
        .unwrap();
    assert!(a.revision > 0);
    assert!(a.created_unix_ms > 0);
    assert_eq!(store.get("alice").await.unwrap(), a);
    assert_eq!(
        store.get_by_public("tel:+1555").await.unwrap().private_id,
        "alice"
    );
    assert!(matches!(
        store.create(sub("alice", &["sip:other@x"])).await,
        Err(StoreError::AlreadyExists {
            field: "private_id",
            ..
        })
    ));
    match store
        .create(sub("bob", &["sip:bob@x", "sip:alice@x"]))
        .await
    {
        Err(StoreError::AlreadyExists {
            field: "public_ids",
            value,
            owner,
        }) => {
            assert_eq!((value.as_str(), owner.as_str()), ("sip:alice@x", "alice"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(
            store.get_by_public("sip:bob@x").await,
            Err(StoreError::NotFound { .. })
        ),
        "nothing half-created"
    );
    assert!(matches!(
        store.get("nobody").await,
        Err(StoreError::NotFound {
            field: "private_id",
            ..
        })
    ));

    // Update: identities move, the index follows.
    let change = Change::Profile {
        public_ids: vec!["sip:alice@x".into(), "sip:al@x".into()],
        implicit_sets: vec![ImplicitSet {
            public_ids: vec!["sip:alice@x".into(), "sip:al@x".into()],
        }],
        service_profile: None,
        region: "eu-west".into(),
    };
    let a2 = store
        .update("alice", Some(a.revision), change.clone())
        .await
        .unwrap();
    assert!(a2.revision > a.revision);
    assert_eq!(a2.created_unix_ms, a.created_unix_ms);
    assert_eq!(store.get("alice").await.unwrap().region, "eu-west");
    assert!(matches!(
        store.get_by_public("tel:+1555").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.get_by_public("sip:al@x").await.unwrap().revision,
        a2.revision
    );
    assert!(matches!(
        store.update("alice", Some(a.revision), change).await,
        Err(StoreError::RevisionMismatch { .. })
    ));
    let b = store
        .create(sub("bob", &["sip:bob@x", "tel:+1555"]))
        .await
        .unwrap();
    assert!(b.revision > a2.revision, "the freed identity is reusable");
    let steal = Change::Profile {
        public_ids: vec!["sip:al@x".into()],
        implicit_sets: vec![],
        service_profile: None,
        region: String::new(),
    };
    assert!(matches!(
        store.update("bob", None, steal).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let barred = store
        .update(
            "bob",
            None,
            Change::Barring(Barring {
                barred: true,
                reason: "fraud".into(),
            }),
        )
        .await
        .unwrap();
    assert!(barred.barring.as_ref().unwrap().barred);

    // Paging.
    for i in 0..25 {
        store
            .create(sub(&format!("user{i:02}"), &[&format!("sip:user{i:02}@x")]))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), 10).await.unwrap();
        assert!(page.subscribers.len() <= 10);
        seen.extend(page.subscribers.iter().map(|s| s.private_id.clone()));
        after = page.subscribers.last().map(|s| s.private_id.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(seen.len(), 27);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ascending private-identity order");

    // Delete.
    let del = store.delete("bob", Some(999_999)).await;
    assert!(matches!(del, Err(StoreError::RevisionMismatch { .. })));
    let rev = store.delete("bob", None).await.unwrap();
    assert!(rev > barred.revision);
    assert!(matches!(
        store.get_by_public("tel:+1555").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("bob", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.current_revision().await.unwrap() >= rev);

    // Watch saw every change, in revision order, with the right kinds.
    let mut kinds = Vec::new();
    let mut last = 0;
    for _ in 0..(2 + 1 + 1 + 25 + 1) {
        let ev = next_change(&mut watch).await;
        assert!(
            ev.revision > last,
            "revisions grow: {} after {last}",
            ev.revision
        );
        last = ev.revision;
        kinds.push((
            EventType::try_from(ev.r#type).unwrap(),
            ev.subscriber.unwrap().private_id,
        ));
    }
    assert_eq!(kinds[0], (EventType::Put, "alice".into()));
    assert_eq!(kinds[1], (EventType::Put, "alice".into()));
    assert_eq!(kinds[2], (EventType::Put, "bob".into()));
    assert_eq!(kinds[3], (EventType::Put, "bob".into()));
    assert_eq!(kinds.last().unwrap(), &(EventType::Delete, "bob".into()));
    assert_eq!(last, rev);

    // Replay from a revision.
    let mut replay = store.watch(a2.revision, 0).await.unwrap();
    let ev = next_change(&mut replay).await;
    assert_eq!(ev.revision, a2.revision);
    assert_eq!(
        ev.subscriber.unwrap().public_ids,
        ["sip:alice@x", "sip:al@x"]
    );
    // A watcher naming this store resumes; one naming another store (this
    // one replaced it: a backup restored) starts over, however plausible its
    // revision.
    let id = store_id(store).await;
    let mut same = store.watch(a2.revision, id).await.unwrap();
    assert_eq!(next_change(&mut same).await.revision, a2.revision);
    let mut other = store.watch(a2.revision, id ^ 1).await.unwrap();
    let ev = next_change(&mut other).await;
    assert_eq!(ev.r#type, EventType::Reset as i32, "{ev:?}");
    assert_eq!(ev.store_id, id, "the RESET names the store to follow");
    eprintln!("store conformance: {:?}", t.elapsed());
}

/// A trusted element as the service stores it (validated, canonical).
pub fn element(name: &str, matcher: &str) -> TrustedElement {
    TrustedElement {
        name: name.into(),
        kind: TrustedElementKind::Gateway as i32,
        matcher: Some(match matcher.strip_prefix("tls:") {
            Some(n) => trusted_element::Matcher::TlsName(n.into()),
            None => trusted_element::Matcher::Address(matcher.into()),
        }),
        description: format!("{name} for the tests"),
        ..Default::default()
    }
}

/// Next trusted-element event that is not a SYNCED marker, within 10 s.
pub async fn next_trust_change(stream: &mut TrustEventStream) -> TrustedElementEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("no error");
        if ev.r#type != EventType::Synced as i32 {
            return ev;
        }
    }
}

/// What every store must do with trusted elements.
pub async fn trust_conformance<S: Store>(store: &S) {
    let t = Instant::now();
    let mut trust = store.watch_trusted(0).await.unwrap();
    let mut subs = store.watch(0, 0).await.unwrap();

    let gw = store
        .create_trusted(element("gw", "192.0.2.0/24:5080"))
        .await
        .unwrap();
    assert!(gw.revision > 0 && gw.created_unix_ms > 0);
    assert_eq!(store.get_trusted("gw").await.unwrap(), gw);
    // Subscribers and elements share the revision sequence, each watch
    // sees only its own records.
    let alice = store.create(sub("alice", &["sip:alice@x"])).await.unwrap();
    assert!(alice.revision > gw.revision);
    let pcscf = store
        .create_trusted(element("pcscf", "tls:pcscf.example.net"))
        .await
        .unwrap();
    assert!(pcscf.revision > alice.revision);
    assert_eq!(
        store.create_trusted(element("gw", "198.51.100.1")).await,
        Err(StoreError::ElementExists { name: "gw".into() })
    );
    assert_eq!(
        store.get_trusted("nobody").await,
        Err(StoreError::ElementNotFound {
            name: "nobody".into()
        })
    );

    let (all, at) = store.list_trusted().await.unwrap();
    assert_eq!(all, [gw.clone(), pcscf.clone()], "in name order");
    assert!(at >= pcscf.revision);

    assert!(matches!(
        store.delete_trusted("gw", Some(gw.revision + 1000)).await,
        Err(StoreError::ElementRevisionMismatch { .. })
    ));
    let del = store.delete_trusted("gw", Some(gw.revision)).await.unwrap();
    assert!(del > pcscf.revision);
    assert_eq!(
        store.delete_trusted("gw", None).await,
        Err(StoreError::ElementNotFound { name: "gw".into() })
    );
    assert_eq!(
        store.list_trusted().await.unwrap().0,
        std::slice::from_ref(&pcscf)
    );

    // The trust watch: PUT gw, PUT pcscf, DELETE gw (with its last state).
    let ev = next_trust_change(&mut trust).await;
    assert_eq!(
        (ev.r#type, ev.revision),
        (EventType::Put as i32, gw.revision)
    );
    assert_eq!(ev.element.unwrap(), gw);
    let ev = next_trust_change(&mut trust).await;
    assert_eq!(
        (ev.r#type, ev.revision),
        (EventType::Put as i32, pcscf.revision)
    );
    let ev = next_trust_change(&mut trust).await;
    assert_eq!((ev.r#type, ev.revision), (EventType::Delete as i32, del));
    let last = ev.element.unwrap();
    assert_eq!(
        (last.name.as_str(), last.matcher),
        ("gw", gw.matcher.clone())
    );
    // The subscriber watch saw only alice.
    let ev = next_change(&mut subs).await;
    assert_eq!(
        (ev.r#type, ev.revision),
        (EventType::Put as i32, alice.revision)
    );
    store.delete("alice", None).await.unwrap();
    let ev = next_change(&mut subs).await;
    assert_eq!(ev.r#type, EventType::Delete as i32);

    // Replay from a revision; a list then a watch from the next revision
    // miss nothing.
    let mut replay = store.watch_trusted(pcscf.revision).await.unwrap();
    let ev = next_trust_change(&mut replay).await;
    assert_eq!(ev.revision, pcscf.revision);
    let (_, at) = store.list_trusted().await.unwrap();
    let mut follow = store.watch_trusted(at + 1).await.unwrap();
    let lb = store
        .create_trusted(element("lb", "2001:db8::/48"))
        .await
        .unwrap();
    let ev = next_trust_change(&mut follow).await;
    assert_eq!(
        (ev.r#type, ev.revision),
        (EventType::Put as i32, lb.revision)
    );
    eprintln!("trust conformance: {:?}", t.elapsed());

    // The table is bounded.
    let t = Instant::now();
    let have = store.list_trusted().await.unwrap().0.len();
    for i in have..MAX_TRUSTED_ELEMENTS {
        store
            .create_trusted(element(
                &format!("e{i:04}"),
                &format!("10.{}.{}.0/24", i / 256, i % 256),
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .create_trusted(element("one-more", "192.0.2.99"))
            .await,
        Err(StoreError::TooManyElements {
            limit: MAX_TRUSTED_ELEMENTS
        })
    );
    assert_eq!(
        store.create_trusted(element("gw", "192.0.2.99")).await,
        Err(StoreError::TooManyElements {
            limit: MAX_TRUSTED_ELEMENTS
        }),
        "a full table refuses any name"
    );
    assert_eq!(
        store.create_trusted(element("lb", "192.0.2.99")).await,
        Err(StoreError::ElementExists { name: "lb".into() }),
        "a taken name is still reported as taken"
    );
    store.delete_trusted("lb", None).await.unwrap();
    store
        .create_trusted(element("lb", "192.0.2.99"))
        .await
        .unwrap();
    eprintln!("filled the trusted table in {:?}", t.elapsed());
}
