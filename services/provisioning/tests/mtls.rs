//! The provisioning API under mutual TLS, played as an attacker would:
//! without a certificate, with one from another CA, in plaintext, and with
//! each role's certificate doing what the role may not; beside them, the
//! legitimate callers of the same server are served.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{REALM, Server};
use futures::StreamExt as _;
use ringmesh_enrollment::ca::{Ca, Role, TlsFiles, control_files, provision_node};
use ringmesh_proto::provisioning::provisioning_client::ProvisioningClient;
use ringmesh_proto::provisioning::{
    CreateSubscriberRequest, CreateTrustedElementRequest, GetSubscriberRequest,
    ListSubscribersRequest, SetPasswordRequest, Subscriber, TrustedElement, TrustedElementKind,
    WatchRequest, get_subscriber_request, trusted_element,
};
use ringmesh_provisioning::EmbeddedStore;
use ringmesh_provisioning::cache::{CacheConfig, SubscriberCache, channel};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const NAME: &str = ringmesh_enrollment::ca::CONTROL_DNS_NAME;

struct Farm {
    _dir: tempfile::TempDir,
    server: Server,
    ca: Ca,
    operator: TlsFiles,
    admin: TlsFiles,
    node: TlsFiles,
}

async fn farm() -> Farm {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("farm CA").unwrap();
    let certs = dir.path().join("certs");
    let server_tls = control_files(&certs, "provisioning", &ca, None, 1).unwrap();
    let operator = control_files(&certs, "operator", &ca, Some(Role::Operator), 1).unwrap();
    let admin = control_files(&certs, "admin", &ca, Some(Role::Admin), 1).unwrap();
    // A supernode's certificate, as enrollment issues it.
    let node_dir = dir.path().join("sn0");
    provision_node(&node_dir, "sn0", &ca, &[]).unwrap();
    let node = TlsFiles {
        ca: node_dir.join("ca.crt"),
        cert: node_dir.join("node.crt"),
        key: node_dir.join("node.key"),
    };
    let store = EmbeddedStore::open(&dir.path().join("store")).unwrap();
    let server = Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        store,
        Some(server_tls.server().unwrap()),
    )
    .await;
    Farm {
        _dir: dir,
        server,
        ca,
        operator,
        admin,
        node,
    }
}

async fn client(f: &Farm, tls: ClientTlsConfig) -> ProvisioningClient<Channel> {
    let ch = channel(
        &f.server.addr.to_string(),
        std::time::Duration::from_secs(3),
        Some(&tls),
    )
    .unwrap();
    ProvisioningClient::new(ch)
}

fn subscriber(id: &str) -> CreateSubscriberRequest {
    CreateSubscriberRequest {
        subscriber: Some(Subscriber {
            private_id: id.into(),
            public_ids: vec![format!("sip:{id}@{REALM}")],
            ..Default::default()
        }),
        password: "secret".into(),
    }
}

fn get(id: &str) -> GetSubscriberRequest {
    GetSubscriberRequest {
        id: Some(get_subscriber_request::Id::PrivateId(id.into())),
    }
}

fn ha1(s: &Subscriber) -> (String, String) {
    let c = s.credentials.clone().unwrap_or_default();
    (c.ha1_md5, c.ha1_sha256)
}

#[tokio::test]
async fn each_role_does_what_it_may_and_nothing_more() {
    let f = farm().await;
    let mut operator = client(&f, f.operator.client().unwrap()).await;
    let mut admin = client(&f, f.admin.client().unwrap()).await;
    let mut node = client(&f, f.node.client().unwrap()).await;

    // An operator writes, and what comes back carries no HA1.
    let created = operator
        .create_subscriber(subscriber("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ha1(&created), (String::new(), String::new()));
    let seen = operator
        .get_subscriber(get("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.private_id, "alice");
    assert_eq!(
        ha1(&seen),
        (String::new(), String::new()),
        "an operator never reads HA1"
    );
    let listed = operator
        .list_subscribers(ListSubscribersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .subscribers
            .iter()
            .all(|s| ha1(s) == (String::new(), String::new()))
    );
    let mut watch = operator
        .watch(WatchRequest {
            start_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let event = watch.next().await.unwrap().unwrap();
    let sub = event.subscriber.expect("the creation, replayed");
    assert_eq!(
        ha1(&sub),
        (String::new(), String::new()),
        "nor through Watch"
    );

    // An admin writes too, and reads no HA1 either.
    admin.create_subscriber(subscriber("bob")).await.unwrap();
    let seen = admin.get_subscriber(get("bob")).await.unwrap().into_inner();
    assert_eq!(ha1(&seen), (String::new(), String::new()));

    // A supernode reads HA1 (it checks digest responses with them)...
    let seen = node
        .get_subscriber(get("alice"))
        .await
        .unwrap()
        .into_inner();
    let (md5, sha256) = ha1(&seen);
    assert_eq!((md5.len(), sha256.len()), (32, 64), "a supernode reads HA1");
    // ...and cannot write anything.
    let refused = node
        .create_subscriber(subscriber("mallory"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = node
        .set_password(SetPasswordRequest {
            private_id: "alice".into(),
            password: "owned".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = node
        .create_trusted_element(CreateTrustedElementRequest {
            element: Some(TrustedElement {
                name: "evil".into(),
                kind: TrustedElementKind::Gateway as i32,
                matcher: Some(trusted_element::Matcher::Address("10.6.6.6".into())),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        operator
            .get_subscriber(get("mallory"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "nothing the supernode tried was written"
    );

    // The supernode's cache, as a supernode runs it, is served.
    let cache = SubscriberCache::connect(
        &f.server.addr.to_string(),
        CacheConfig {
            tls: Some(f.node.client().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    let cached = cache
        .by_private_id("alice")
        .await
        .unwrap()
        .expect("alice exists");
    assert!(
        cache.wait_watching(std::time::Duration::from_secs(5)).await,
        "its Watch stream runs"
    );
    assert_eq!(ha1(&cached).0, md5);
    f.server.stop().await;
}

/// A client that trusts the farm CA but presents no certificate.
fn anonymous(ca: &Path) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(NAME)
}

#[tokio::test]
async fn no_certificate_a_foreign_ca_or_plaintext_is_refused() {
    let f = farm().await;
    let addr = f.server.addr.to_string();
    // No client certificate: the handshake fails, nothing is read.
    let mut c = client(&f, anonymous(&f.operator.ca)).await;
    let e = c.get_subscriber(get("alice")).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert_ne!(
        e.code(),
        Code::NotFound,
        "the request never reached the store: {e:?}"
    );
    // An operator certificate from another CA (a self-made farm).
    let dir = tempfile::tempdir().unwrap();
    let rogue = Ca::generate("rogue CA").unwrap();
    let forged = control_files(dir.path(), "operator", &rogue, Some(Role::Admin), 1).unwrap();
    // It trusts the real CA for the server, presents the rogue certificate.
    let forged = TlsFiles {
        ca: f.operator.ca.clone(),
        ..forged
    };
    let mut c = client(&f, forged.client().unwrap()).await;
    let e = c
        .create_subscriber(subscriber("mallory"))
        .await
        .unwrap_err();
    assert_ne!(
        e.code(),
        Code::PermissionDenied,
        "refused at the handshake: {e:?}"
    );
    assert_ne!(e.code(), Code::Ok);
    // Plaintext to the TLS port.
    let mut c = ProvisioningClient::new(
        channel(
            &format!("http://{addr}"),
            std::time::Duration::from_secs(3),
            None,
        )
        .unwrap(),
    );
    assert!(c.get_subscriber(get("alice")).await.is_err());
    // Meanwhile the operator is served, and nothing was written.
    let mut operator = client(&f, f.operator.client().unwrap()).await;
    assert_eq!(
        operator
            .get_subscriber(get("mallory"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let _ = &f.ca;
    f.server.stop().await;
}

/// A node whose certificate the farm CA revokes loses provisioning at once
/// (not when its certificate expires): provisioning, run as the binary
/// runs it with `--enrollment`, follows enrollment's revocations, checked
/// against the farm CA. The operator and the other node keep being served.
#[tokio::test]
async fn a_revoked_node_is_refused_as_soon_as_enrollment_revokes_it() {
    use ringmesh_enrollment::{
        Authority, AuthorityOptions, Bootstrap, BootstrapToken, BootstrapTokens, EnrollmentService,
        FileKv, Tokens,
    };
    const TOKEN: &str = "a-bootstrap-token-for-this-test";
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("farm CA").unwrap();
    // Enrollment, serving TLS with the farm CA.
    let authority = Arc::new(
        Authority::open(
            FileKv::open(&dir.path().join("enrollment")).unwrap(),
            AuthorityOptions {
                ca_pem: Some((ca.cert_pem().to_string(), ca.key_pem())),
                ..AuthorityOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let tls = ringmesh_enrollment::service::server_tls(&authority).unwrap();
    let service = EnrollmentService::new(
        authority.clone(),
        BootstrapTokens::new(vec![BootstrapToken::unlimited(TOKEN)]),
        Tokens::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let enrollment = listener.local_addr().unwrap().to_string();
    tokio::spawn(ringmesh_enrollment::serve(
        listener,
        service,
        Some(tls),
        std::future::pending(),
    ));
    let pinned =
        Bootstrap::parse(&format!("{TOKEN}\n{}", Bootstrap::pin_line(ca.cert_der()))).unwrap();
    let victim = ringmesh_enrollment::enroll(&enrollment, &pinned, "sn0", &dir.path().join("sn0"))
        .await
        .unwrap();
    ringmesh_enrollment::enroll(&enrollment, &pinned, "sn1", &dir.path().join("sn1"))
        .await
        .unwrap();
    let node = |n: &str| TlsFiles {
        ca: dir.path().join(n).join("ca.crt"),
        cert: dir.path().join(n).join("node.crt"),
        key: dir.path().join(n).join("node.key"),
    };

    // Provisioning, with --enrollment, as `ringmesh provisioning` runs.
    let certs = dir.path().join("certs");
    let server_tls = control_files(&certs, "provisioning", &ca, None, 1).unwrap();
    let operator = control_files(&certs, "operator", &ca, Some(Role::Operator), 1).unwrap();
    let store = dir.path().join("store");
    let cfg = ringmesh_provisioning::ProvisioningArgs::resolve_from(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        store.to_str().unwrap(),
        "--domain",
        REALM,
        "--tls-ca",
        server_tls.ca.to_str().unwrap(),
        "--tls-cert",
        server_tls.cert.to_str().unwrap(),
        "--tls-key",
        server_tls.key.to_str().unwrap(),
        "--enrollment",
        &enrollment,
        "--watch-keepalive",
        "1",
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(ringmesh_provisioning::run_on(
        listener,
        cfg,
        std::future::pending(),
    ));
    let connect = |files: TlsFiles| {
        let addr = addr.clone();
        async move {
            let tls = files.client().unwrap();
            ProvisioningClient::new(
                channel(&addr, std::time::Duration::from_secs(3), Some(&tls)).unwrap(),
            )
        }
    };
    let mut ops = connect(operator.clone()).await;
    ops.create_subscriber(subscriber("alice")).await.unwrap();
    let mut sn0 = connect(node("sn0")).await;
    let mut sn1 = connect(node("sn1")).await;
    sn0.get_subscriber(get("alice")).await.unwrap();
    // A Watch stream opened before the revocation.
    let mut stream = sn0
        .watch(WatchRequest::default())
        .await
        .unwrap()
        .into_inner();

    authority
        .revoke(&victim.node_id_hex(), 1, "key stolen")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        match sn0.get_subscriber(get("alice")).await {
            Err(e) if e.code() == Code::PermissionDenied => break e,
            _ if std::time::Instant::now() > deadline => {
                panic!("the revoked node still reads subscribers after 20 s")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    assert!(refused.message().contains("revoked"), "{refused:?}");
    // The open stream ends too (at the next event or keep-alive), and
    // carries nothing after the refusal.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
                    assert!(stream.next().await.is_none(), "nothing after the refusal");
                    return;
                }
                None => panic!("the stream ended without saying why"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked node's Watch stream is cut");
    // The others are served.
    let alice = sn1.get_subscriber(get("alice")).await.unwrap().into_inner();
    assert!(!ha1(&alice).0.is_empty(), "the other node still reads HA1");
    ops.list_subscribers(ListSubscribersRequest::default())
        .await
        .unwrap();
}
