//! Test support: a real etcd on free 127.0.0.1 ports, and a store
//! conformance suite both stores pass.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ringmesh_proto::provisioning::{
    Barring, Credentials, EventType, ImplicitSet, Subscriber, WatchEvent,
};
use ringmesh_provisioning::store::{Change, EventStream, StoreError, SubscriberStore};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd process, stopped (by its PID) on drop.
pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    pub data: tempfile::TempDir,
    log: PathBuf,
}

fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
    {
        let p = dir.join("etcd");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "etcd is not installed: these tests need a real etcd 3.4+. `make test` installs it \
         (Debian package etcd-server; by hand: apt-get install etcd-server)"
    );
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub fn start() -> Etcd {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("etcd.log");
        let mut e = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data,
            log,
        };
        e.spawn();
        e
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(etcd_binary())
            .args(["--name", "t", "--data-dir"])
            .arg(self.data.path().join("member"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "etcd exited ({status}); log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            // Ready = the health endpoint answers over HTTP.
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.contains("\"health\":\"true\"") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd not ready in 20 s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (by its PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
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

/// What every store must do.
pub async fn conformance<S: SubscriberStore>(store: &S) {
    let t = Instant::now();
    let mut watch = store.watch(0).await.unwrap();

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
    };
    let a2 = store
        .update("alice", Some(a.revision), change.clone())
        .await
        .unwrap();
    assert!(a2.revision > a.revision);
    assert_eq!(a2.created_unix_ms, a.created_unix_ms);
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
    let mut replay = store.watch(a2.revision).await.unwrap();
    let ev = next_change(&mut replay).await;
    assert_eq!(ev.revision, a2.revision);
    assert_eq!(
        ev.subscriber.unwrap().public_ids,
        ["sip:alice@x", "sip:al@x"]
    );
    eprintln!("store conformance: {:?}", t.elapsed());
}
