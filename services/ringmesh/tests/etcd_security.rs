//! etcd locked down as the farm runs it: TLS only, client certificates,
//! and `ringmesh etcd-auth` giving each component a user limited to its
//! keys. The components work through it (provisioning stores subscribers,
//! enrollment keeps its CA state, a supernode keeps its membership), and
//! each attacker is refused: no certificate, a certificate of another CA,
//! a certificate of the right CA for an unknown user, plaintext, and every
//! component reaching for another's keys.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use ringmesh_config::etcd::{ENROLLMENT_USER, PROVISIONING_USER, SUPERNODE_USER};
use ringmesh_test_support::{Etcd, EtcdCerts};

const USERS: [&str; 4] = [
    SUPERNODE_USER,
    PROVISIONING_USER,
    ENROLLMENT_USER,
    "intruder",
];

fn etcd_as(etcd: &Etcd, user: &str) -> ringmesh_config::Etcd {
    let [ca, cert, key] = etcd.certs.as_ref().unwrap().client(user);
    ringmesh_config::Etcd::new(&[etcd.url()], Some(ca), Some(cert), Some(key)).unwrap()
}

async fn client(e: &ringmesh_config::Etcd) -> Result<Client, String> {
    e.connect(ringmesh_config::Etcd::default_options(Duration::from_secs(
        3,
    )))
    .await
}

/// Whether `who` may read `key` (a range read of its prefix).
async fn reads(who: &ringmesh_config::Etcd, key: &str) -> bool {
    let Ok(mut c) = client(who).await else {
        return false;
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        c.get(key, Some(GetOptions::new().with_prefix())),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

async fn writes(who: &ringmesh_config::Etcd, key: &str) -> bool {
    let Ok(mut c) = client(who).await else {
        return false;
    };
    tokio::time::timeout(Duration::from_secs(5), c.put(key, "x", None))
        .await
        .is_ok_and(|r| r.is_ok())
}

fn etcd_auth(etcd: &Etcd, user: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .arg("etcd-auth")
        .args(etcd.client_args(user))
        .output()
        .unwrap()
}

fn arg(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: needs etcd"]
async fn each_component_reaches_only_its_keys_and_strangers_nothing() {
    let etcd = Etcd::start_secure(&USERS);
    let out = etcd_auth(&etcd, "root");
    assert!(out.status.success(), "{out:?}");
    // Run again it changes nothing and still succeeds (idempotent).
    let again = etcd_auth(&etcd, "root");
    assert!(again.status.success(), "{again:?}");
    // Only root may set it up.
    let refused = etcd_auth(&etcd, SUPERNODE_USER);
    assert!(!refused.status.success(), "{refused:?}");

    let dir = tempfile::tempdir().unwrap();
    let [ca, _, _] = etcd.certs.as_ref().unwrap().client("root");
    // Provisioning stores subscribers through its own user.
    let mut a = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--plaintext".into(),
        "true".into(),
    ];
    a.extend(etcd.client_args(PROVISIONING_USER));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let cfg = ringmesh_provisioning::ProvisioningArgs::resolve_from(&a).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let prov = listener.local_addr().unwrap();
    tokio::spawn(ringmesh_provisioning::run_on(
        listener,
        cfg,
        std::future::pending(),
    ));
    let mut c = ringmesh_proto::provisioning::provisioning_client::ProvisioningClient::connect(
        format!("http://{prov}"),
    )
    .await
    .unwrap();
    let created = c
        .create_subscriber(ringmesh_proto::provisioning::CreateSubscriberRequest {
            subscriber: Some(ringmesh_proto::provisioning::Subscriber {
                private_id: "alice".into(),
                public_ids: vec!["sip:alice@ringmesh.test".into()],
                ..Default::default()
            }),
            password: "secret".into(),
        })
        .await;
    assert!(created.is_ok(), "{created:?}");

    // Enrollment keeps its CA state through its own user, the farm secret
    // and the CA key sealed under a store key.
    let store_key = dir.path().join("store.key");
    std::fs::write(&store_key, "ab".repeat(32)).unwrap();
    let mut a = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--bootstrap-token".into(),
        "a-bootstrap-token-0123456789".into(),
        "--store-key-file".into(),
        arg(&store_key),
    ];
    a.extend(etcd.client_args(ENROLLMENT_USER));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let cfg = ringmesh_enrollment::EnrollmentArgs::resolve_from(&a).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let enr = listener.local_addr().unwrap().to_string();
    tokio::spawn(ringmesh_enrollment::run_on(
        listener,
        cfg,
        std::future::pending(),
    ));
    let bootstrap = ringmesh_enrollment::Bootstrap::unpinned("a-bootstrap-token-0123456789");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let node = loop {
        match ringmesh_enrollment::enroll(&enr, &bootstrap, "sn0", &dir.path().join("sn0")).await {
            Ok(id) => break id,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("no enrollment on the locked etcd: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    // A supernode keeps its membership through its own user.
    let me = ringmesh_supernode::membership::MemberEntry {
        node_id: hex::encode(node.node_id),
        name: "sn0".into(),
        overlay: "127.0.0.1:1".into(),
        sip: "127.0.0.1:2".into(),
    };
    tokio::spawn(ringmesh_supernode::membership::keep_registered(
        etcd_as(&etcd, SUPERNODE_USER),
        me,
        Arc::new(AtomicBool::new(false)),
        ringmesh_supernode::metrics::Metrics::new("sn0"),
    ));
    let member_key = format!("/ringmesh/members/{}", hex::encode(node.node_id));
    ringmesh_test_support::wait_until("the membership key", Duration::from_secs(20), || {
        etcd.keys("/ringmesh/members/").contains(&member_key)
    });
    let all = etcd.keys("/ringmesh/");
    assert!(all.iter().any(|k| k.starts_with("/ringmesh/subscribers/")));
    assert!(all.iter().any(|k| k == "/ringmesh/enrollment/ca"));

    // Even root, reading etcd (or a backup of it), sees no key material.
    let mut root = client(&etcd_as(&etcd, "root")).await.unwrap();
    for (key, secret) in [
        (
            "/ringmesh/enrollment/farm-secret",
            hex::encode(&node.farm_secret),
        ),
        ("/ringmesh/enrollment/ca", "PRIVATE KEY".to_string()),
    ] {
        let raw = root.get(key, None).await.unwrap();
        let value = String::from_utf8_lossy(raw.kvs()[0].value()).into_owned();
        assert!(
            value.starts_with("sealed:v1:") && !value.contains(&secret),
            "{key}: {value}"
        );
    }

    // Each component reaches for another's keys: refused.
    let supernode = etcd_as(&etcd, SUPERNODE_USER);
    let provisioning = etcd_as(&etcd, PROVISIONING_USER);
    let enrollment = etcd_as(&etcd, ENROLLMENT_USER);
    assert!(reads(&supernode, "/ringmesh/members/").await);
    assert!(
        !reads(&supernode, "/ringmesh/subscribers/").await,
        "a supernode's credentials read no HA1"
    );
    assert!(
        !reads(&supernode, "/ringmesh/enrollment/").await,
        "nor the CA"
    );
    assert!(!writes(&supernode, "/ringmesh/subscribers/by-private/evil").await);
    assert!(!writes(&supernode, "/ringmesh/enrollment/farm-secret").await);
    assert!(!reads(&provisioning, "/ringmesh/enrollment/").await);
    assert!(!writes(&provisioning, "/ringmesh/members/forged").await);
    assert!(!reads(&enrollment, "/ringmesh/subscribers/").await);
    assert!(!reads(&supernode, "/").await, "nor the whole key space");

    // Strangers: a certificate of the right CA for no etcd user, one of
    // another CA, none at all, and plaintext.
    assert!(!reads(&etcd_as(&etcd, "intruder"), "/ringmesh/").await);
    let other = EtcdCerts::make(dir.path().join("other-ca"), &["root"]);
    let [_, cert, key] = other.client("root");
    let forged =
        ringmesh_config::Etcd::new(&[etcd.url()], Some(ca.clone()), Some(cert), Some(key)).unwrap();
    assert!(
        !reads(&forged, "/ringmesh/").await,
        "root's name from another CA"
    );
    let anonymous =
        ringmesh_config::Etcd::new(&[etcd.url()], Some(ca.clone()), None, None).unwrap();
    assert!(!reads(&anonymous, "/ringmesh/").await);
    let plain = ringmesh_config::Etcd::plain(vec![etcd.url().replace("https", "http")]);
    assert!(!reads(&plain, "/ringmesh/").await);

    // The legitimate users are still served.
    assert!(reads(&provisioning, "/ringmesh/subscribers/").await);
    assert!(reads(&enrollment, "/ringmesh/enrollment/").await);
}
