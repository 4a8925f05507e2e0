//! The Enrollment gRPC API end to end over 127.0.0.1: a node enrolls with
//! `enroll()` (key and CSR made locally), its certificate is verified with
//! rustls' WebPKI verifier against the CA bundle, revocation shows in the
//! CRL (and the same verifier then refuses the node), bad tokens are
//! refused; on the file store and on a real etcd.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_enrollment::ca::{self, NODE_DNS_NAME, Role, TlsFiles, control_files};
use ringmesh_enrollment::channel::{Trust, channel};
use ringmesh_enrollment::kv::{EtcdKv, FileKv, Kv};
use ringmesh_enrollment::service::server_tls;
use ringmesh_enrollment::{
    Authority, AuthorityOptions, Bootstrap, BootstrapToken, BootstrapTokens, EnrollError,
    EnrolledIdentity, EnrollmentService, Tokens, enroll, renew, serve,
};
use ringmesh_proto::enrollment as pb;
use ringmesh_proto::enrollment::enrollment_client::EnrollmentClient;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use tonic::Code;

const TOKEN: &str = "bootstrap-token-for-tests";
/// A second token: [`scenario`] revokes a node of the first, burning it.
const TOKEN2: &str = "second-bootstrap-token-for-tests";
const ADMIN: &str = "admin-token-for-tests";

struct Server {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// Client certificates from the farm CA: an admin's and an operator's.
    admin: TlsFiles,
    operator: TlsFiles,
    _certs: tempfile::TempDir,
}

impl Server {
    async fn start<K: Kv>(kv: K, admin: &[&str]) -> Server {
        let tokens = [TOKEN, TOKEN2].map(BootstrapToken::unlimited).to_vec();
        Server::start_with(kv, tokens, admin).await
    }

    async fn start_with<K: Kv>(kv: K, tokens: Vec<BootstrapToken>, admin: &[&str]) -> Server {
        let authority = Authority::open(kv, AuthorityOptions::default())
            .await
            .unwrap();
        let certs = tempfile::tempdir().unwrap();
        let files = |name, role| control_files(certs.path(), name, authority.ca(), Some(role), 1);
        let (admin_files, operator) = (
            files("admin", Role::Admin).unwrap(),
            files("ops", Role::Operator).unwrap(),
        );
        let tls = server_tls(&authority).unwrap();
        let service = EnrollmentService::new(
            Arc::new(authority),
            BootstrapTokens::new(tokens),
            Tokens::new(admin),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, service, Some(tls), async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            stop: Some(tx),
            task,
            admin: admin_files,
            operator,
            _certs: certs,
        }
    }

    /// A client that presents no certificate (as a node enrolling).
    async fn client(&self) -> EnrollmentClient<tonic::transport::Channel> {
        EnrollmentClient::new(channel(&self.addr, Trust::FirstUse).await.unwrap())
    }

    /// A client presenting `files`' certificate.
    async fn client_as(
        &self,
        files: &TlsFiles,
    ) -> Result<EnrollmentClient<tonic::transport::Channel>, tonic::transport::Error> {
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(files.client().unwrap())?
            .connect()
            .await?;
        Ok(EnrollmentClient::new(ch))
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn der(pem_text: &str) -> CertificateDer<'static> {
    CertificateDer::from(ca::pem_certs(pem_text).unwrap().remove(0))
}

/// Verifies a node certificate as an overlay link would: WebPKI chain to
/// the CA bundle, the node DNS name, and the CRL.
fn verify(id: &EnrolledIdentity, ca_pem: &str, crl_pem: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca::pem_certs(ca_pem).unwrap() {
        roots.add(CertificateDer::from(c)).unwrap();
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = pem::parse_many(crl_pem)
        .unwrap()
        .into_iter()
        .map(|p| CertificateRevocationListDer::from(p.into_contents()))
        .collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls)
            .build()
            .unwrap();
    use rustls::client::danger::ServerCertVerifier as _;
    verifier
        .verify_server_cert(
            &der(&id.cert_pem),
            &[],
            &ServerName::try_from(NODE_DNS_NAME).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn scenario(server: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let id = enroll(
        &server.addr,
        &Bootstrap::unpinned(TOKEN),
        "sn0",
        &dir.path().join("sn0"),
    )
    .await
    .unwrap();
    eprintln!("enrolled {} in {:?}", id.node_id_hex(), t.elapsed());

    // The certificate carries the Node-ID returned, chains to the CA, and
    // names the node DNS SAN; the key stayed here.
    let cert = der(&id.cert_pem);
    assert_eq!(ca::node_id_of(&cert), Some(id.node_id));
    verify(&id, &id.ca_pem, &id.crl_pem).expect("WebPKI accepts the node certificate");
    let mut c = server.client().await;
    let bundle = c
        .get_ca_bundle(pb::GetCaBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .ca_bundle_pem;
    assert_eq!(bundle, id.ca_pem);
    assert_eq!(id.farm_secret.len(), 32);

    // Files, with private ones private; they load back.
    let d = dir.path().join("sn0");
    assert_eq!(mode(&d.join("node.key")), 0o600);
    assert_eq!(mode(&d.join("farm.secret")), 0o600);
    assert_eq!(EnrolledIdentity::load(&d).unwrap().unwrap(), id);
    assert_eq!(
        std::fs::read_to_string(d.join("farm.secret")).unwrap(),
        hex::encode(&id.farm_secret)
    );

    // A second node gets another Node-ID and the same farm secret.
    let id2 = enroll(
        &server.addr,
        &Bootstrap::unpinned(TOKEN),
        "sn1",
        &dir.path().join("sn1"),
    )
    .await
    .unwrap();
    assert_ne!(id2.node_id, id.node_id);
    assert_eq!(id2.farm_secret, id.farm_secret);

    // Bad tokens: PERMISSION_DENIED, and nothing written.
    let e = enroll(
        &server.addr,
        &Bootstrap::unpinned("wrong-token-of-some-length"),
        "sn2",
        &dir.path().join("sn2"),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, EnrollError::Denied(_)), "{e:?}");
    assert!(!dir.path().join("sn2/node.key").exists());
    let e = c
        .enroll(pb::EnrollRequest {
            csr_pem: "x".into(),
            bootstrap_token: String::new(),
            node_name: "n".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Bad arguments name the field.
    let e = c
        .enroll(pb::EnrollRequest {
            csr_pem: "not a csr".into(),
            bootstrap_token: TOKEN.into(),
            node_name: "n".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("csr_pem:"), "{}", e.message());
    let e = c
        .enroll(pb::EnrollRequest {
            csr_pem: "x".into(),
            bootstrap_token: TOKEN.into(),
            node_name: "bad name".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("node_name:"), "{}", e.message());

    // Renew: same key, same Node-ID, a new serial.
    let renewed = renew(&server.addr, &d).await.unwrap();
    assert_eq!(renewed.node_id, id.node_id);
    assert_eq!(renewed.key_pem, id.key_pem);
    assert_ne!(
        ca::cert_info(&der(&renewed.cert_pem)).unwrap().serial,
        ca::cert_info(&cert).unwrap().serial
    );

    // Revoke (admin) -> the Node-ID is listed, the CRL refuses the node.
    let mut req = tonic::Request::new(pb::RevokeRequest {
        node_id: id.node_id_hex(),
        reason: pb::RevocationReason::KeyCompromise as i32,
        comment: "stolen laptop".into(),
    });
    let unauth = c
        .revoke(pb::RevokeRequest {
            node_id: id.node_id_hex(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unauth.code(), Code::Unauthenticated);
    let mut bad = tonic::Request::new(pb::RevokeRequest {
        node_id: id.node_id_hex(),
        ..Default::default()
    });
    bad.metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        c.revoke(bad).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    req.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let r = c.revoke(req).await.unwrap().into_inner();
    assert_eq!(
        r.revoked_serials.len(),
        2,
        "both the first and the renewed certificate"
    );
    let revs = c
        .get_revocations(pb::GetRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revs.revoked_node_ids, [id.node_id_hex()]);
    assert_eq!(revs.crl_number, 2);
    let e = verify(&renewed, &id.ca_pem, &revs.crl_pem).unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        ),
        "{e:?}"
    );
    verify(&id2, &id.ca_pem, &revs.crl_pem).expect("the other node is still fine");
    // A revoked node cannot renew.
    assert!(matches!(
        renew(&server.addr, &d).await.unwrap_err(),
        EnrollError::Denied(_)
    ));
    // Unknown and malformed Node-IDs.
    let mut req = tonic::Request::new(pb::RevokeRequest {
        node_id: "00".repeat(16),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    assert_eq!(c.revoke(req).await.unwrap_err().code(), Code::NotFound);
    let mut req = tonic::Request::new(pb::RevokeRequest {
        node_id: "xyz".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let e = c.revoke(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("node_id:"));
    // The records.
    let mut req = tonic::Request::new(pb::ListCertificatesRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let list = c
        .list_certificates(req)
        .await
        .unwrap()
        .into_inner()
        .certificates;
    assert_eq!(list.len(), 3);
    assert_eq!(list.iter().filter(|c| c.revoked).count(), 2);
    assert!(list.iter().any(|c| c.node_name == "sn1" && !c.revoked));
}

#[tokio::test]
async fn enrollment_on_the_file_store() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(FileKv::open(data.path()).unwrap(), &[ADMIN]).await;
    scenario(&server).await;
    server.stop().await;
    // The CA and farm secret survive a restart.
    let before = std::fs::read(data.path().join("ca")).unwrap();
    let server = Server::start(FileKv::open(data.path()).unwrap(), &[ADMIN]).await;
    let dir = tempfile::tempdir().unwrap();
    let id = enroll(
        &server.addr,
        &Bootstrap::unpinned(TOKEN2),
        "sn9",
        dir.path(),
    )
    .await
    .unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(id.ca_pem, stored["cert_pem"].as_str().unwrap());
    server.stop().await;
}

#[tokio::test]
#[ignore = "slow: needs etcd"]
async fn enrollment_on_etcd() {
    let etcd = ringmesh_test_support::Etcd::start();
    let url = etcd.url();
    let kv = || async {
        EtcdKv::connect(
            &ringmesh_config::Etcd::plain(vec![url.clone()]),
            "/t/enrollment/",
            Duration::from_secs(2),
        )
        .await
        .unwrap()
    };
    // Two replicas starting at once agree on one CA.
    let (a, b) = tokio::join!(
        Authority::open(kv().await, AuthorityOptions::default()),
        Authority::open(kv().await, AuthorityOptions::default())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.farm_secret(), b.farm_secret());
    let server = Server::start(kv().await, &[ADMIN]).await;
    scenario(&server).await;
    // Concurrent enrollments never share a Node-ID (each is claimed first).
    let dir = tempfile::tempdir().unwrap();
    let (d0, d1, d2) = (
        dir.path().join("c0"),
        dir.path().join("c1"),
        dir.path().join("c2"),
    );
    let b = Bootstrap::unpinned(TOKEN2);
    let (x, y, z) = tokio::join!(
        enroll(&server.addr, &b, "c0", &d0),
        enroll(&server.addr, &b, "c1", &d1),
        enroll(&server.addr, &b, "c2", &d2)
    );
    let ids = [x.unwrap().node_id, y.unwrap().node_id, z.unwrap().node_id];
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    server.stop().await;

    // Two replicas share a token's use count: of six nodes racing with a
    // token of three uses, across both, exactly three get in.
    let limited = || vec![BootstrapToken::parse("a-shared-limited-token uses=3").unwrap()];
    let one = Server::start_with(kv().await, limited(), &[ADMIN]).await;
    let two = Server::start_with(kv().await, limited(), &[ADMIN]).await;
    let b = Bootstrap::unpinned("a-shared-limited-token");
    let race = (0..6).map(|i| {
        let addr = if i % 2 == 0 { &one.addr } else { &two.addr };
        let d = dir.path().join(format!("r{i}"));
        let b = b.clone();
        async move { enroll(addr, &b, &format!("r{i}"), &d).await }
    });
    let results = futures::future::join_all(race).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, EnrollError::Denied(m) if m.contains("used up")))
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_node_refuses_a_service_its_bootstrap_file_does_not_pin() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(FileKv::open(data.path()).unwrap(), &[ADMIN]).await;
    let mut c = server.client().await;
    let bundle = c
        .get_ca_bundle(pb::GetCaBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .ca_bundle_pem;
    let real = ca::pem_certs(&bundle).unwrap().remove(0);
    // The node's bootstrap file pins another CA: what it gets back is, to
    // it, a forged bundle, and it keeps nothing.
    let other = ca::Ca::generate("the CA the node expects").unwrap();
    let pinned_elsewhere = Bootstrap::parse(&format!(
        "{TOKEN}\n{}\n",
        Bootstrap::pin_line(other.cert_der())
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = enroll(&server.addr, &pinned_elsewhere, "sn5", dir.path())
        .await
        .unwrap_err();
    // The TLS handshake already fails: the token is never sent.
    assert!(
        matches!(&e, EnrollError::BadAnswer(m) if m.contains("not the enrollment service")),
        "{e:?}"
    );
    assert!(!dir.path().join("node.crt").exists(), "nothing written");
    // Pinned to the real CA, the same node enrolls.
    let pinned = Bootstrap::parse(&format!(
        "# farm\n{TOKEN}\n{}\n",
        Bootstrap::pin_line(&real)
    ))
    .unwrap();
    enroll(&server.addr, &pinned, "sn5", dir.path())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_or_certificate_nobody_revokes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(FileKv::open(data.path()).unwrap(), &[]).await;
    let mut c = server.client().await;
    // An attacker's guess, and no token at all: both refused.
    let mut req = tonic::Request::new(pb::RevokeRequest {
        node_id: "00".repeat(16),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer a-guess-of-forty-characters-000000000"
            .parse()
            .unwrap(),
    );
    let e = c.revoke(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c
        .list_certificates(pb::ListCertificatesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nodes are served meanwhile: the CA bundle, and enrolling.
    c.get_ca_bundle(pb::GetCaBundleRequest {}).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    enroll(&server.addr, &Bootstrap::unpinned(TOKEN), "sn9", dir.path())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unreachable_service_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let e = enroll(
        &format!("127.0.0.1:{port}"),
        &Bootstrap::unpinned(TOKEN),
        "n",
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, EnrollError::Unavailable(_)), "{e:?}");
}

async fn revoke_as_admin(server: &Server, node_id: String) {
    let mut req = tonic::Request::new(pb::RevokeRequest {
        node_id,
        reason: pb::RevocationReason::KeyCompromise as i32,
        comment: "the machine was taken".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    server.client().await.revoke(req).await.unwrap();
}

/// An attacker holding a copied bootstrap token: once its uses are spent,
/// after it expires, or once a node that enrolled with it is revoked, it
/// gets nothing, while nodes with other tokens keep enrolling.
#[tokio::test]
async fn bootstrap_tokens_run_out_expire_and_burn_with_a_revoked_node() {
    const RACK: &str = "rack-one-token-0123456789";
    const OLD: &str = "an-expired-token-0123456789";
    const SPARE: &str = "a-spare-token-0123456789ab";
    let data = tempfile::tempdir().unwrap();
    let tokens = vec![
        BootstrapToken::parse(&format!("{RACK} uses=2")).unwrap(),
        BootstrapToken::parse(&format!("{OLD} expires=2020-01-01T00:00:00Z")).unwrap(),
        BootstrapToken::unlimited(SPARE),
    ];
    let server = Server::start_with(FileKv::open(data.path()).unwrap(), tokens, &[ADMIN]).await;
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let rack = Bootstrap::unpinned(RACK);

    // Two uses: two nodes; the third enrollment is refused and leaves no
    // files behind.
    let sn0 = enroll(&server.addr, &rack, "sn0", &at("sn0"))
        .await
        .unwrap();
    enroll(&server.addr, &rack, "sn1", &at("sn1"))
        .await
        .unwrap();
    let e = enroll(&server.addr, &rack, "intruder", &at("intruder"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EnrollError::Denied(m) if m.contains("used up")),
        "{e:?}"
    );
    assert!(!at("intruder").join("node.crt").exists());

    // Past its expiry a token is refused, with the time in the reason.
    let e = enroll(&server.addr, &Bootstrap::unpinned(OLD), "sn2", &at("sn2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EnrollError::Denied(m) if m.contains("expired at 2020-01-01")),
        "{e:?}"
    );

    // A node enrolled with the spare token, then revoked: the token is
    // burned, so the stolen machine cannot come back with a fresh key and
    // a fresh name, and nor can anyone else with that token.
    let thief = enroll(&server.addr, &Bootstrap::unpinned(SPARE), "sn3", &at("sn3"))
        .await
        .unwrap();
    revoke_as_admin(&server, thief.node_id_hex()).await;
    for name in ["sn3", "sn3-again"] {
        let e = enroll(
            &server.addr,
            &Bootstrap::unpinned(SPARE),
            name,
            &at(&format!("{name}-new")),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, EnrollError::Denied(m) if m.contains("burned")),
            "{name}: {e:?}"
        );
    }
    assert!(matches!(
        renew(&server.addr, &at("sn3")).await.unwrap_err(),
        EnrollError::Denied(_)
    ));
    // The nodes of the other token are served meanwhile.
    let renewed = renew(&server.addr, &at("sn0")).await.unwrap();
    assert_eq!(renewed.node_id, sn0.node_id);
    server.stop().await;

    // The count is kept in the store: a restarted service (or another
    // replica) does not hand out the spent uses again.
    let tokens = vec![BootstrapToken::parse(&format!("{RACK} uses=2")).unwrap()];
    let server = Server::start_with(FileKv::open(data.path()).unwrap(), tokens, &[ADMIN]).await;
    let e = enroll(&server.addr, &rack, "sn4", &at("sn4"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EnrollError::Denied(m) if m.contains("used up")),
        "{e:?}"
    );
    server.stop().await;
}

/// The API speaks TLS only; the admin RPCs take the admin role from a
/// client certificate of the farm CA; an operator's certificate, one from
/// another CA and a plaintext client get nothing, while nodes enroll.
#[tokio::test]
async fn tls_and_the_admin_role() {
    let data = tempfile::tempdir().unwrap();
    // No admin token at all: the certificate is the only way in.
    let server = Server::start(FileKv::open(data.path()).unwrap(), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let node = enroll(&server.addr, &Bootstrap::unpinned(TOKEN), "sn0", dir.path())
        .await
        .unwrap();

    // Plaintext to a TLS port: no answer at all.
    let e = enroll(
        &format!("http://{}", server.addr),
        &Bootstrap::unpinned(TOKEN),
        "sn1",
        &dir.path().join("sn1"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, EnrollError::Unavailable(_) | EnrollError::Rejected(_)),
        "{e:?}"
    );
    assert!(!dir.path().join("sn1/node.crt").exists());

    let revoke = || pb::RevokeRequest {
        node_id: node.node_id_hex(),
        ..Default::default()
    };
    // An operator's certificate does not carry the admin role.
    let mut ops = server.client_as(&server.operator).await.unwrap();
    let e = ops.revoke(revoke()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("operator"), "{}", e.message());
    let e = ops
        .list_certificates(pb::ListCertificatesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Nor does a node's, nor no certificate at all.
    let e = server.client().await.revoke(revoke()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // An admin certificate from another CA: the handshake fails.
    let forged_ca = ca::Ca::generate("an attacker's CA").unwrap();
    let forged_dir = tempfile::tempdir().unwrap();
    let forged =
        control_files(forged_dir.path(), "admin", &forged_ca, Some(Role::Admin), 1).unwrap();
    // Its ca.crt names the attacker's CA; trust the real one to get as far
    // as presenting the forged certificate.
    std::fs::copy(&server.admin.ca, &forged.ca).unwrap();
    let refused = match server.client_as(&forged).await {
        Err(_) => true,
        Ok(mut c) => c.revoke(revoke()).await.is_err(),
    };
    assert!(refused, "a certificate of another CA is refused");

    // The admin's certificate revokes and lists.
    let mut admin = server.client_as(&server.admin).await.unwrap();
    let r = admin.revoke(revoke()).await.unwrap().into_inner();
    assert_eq!(r.revoked_serials.len(), 1);
    let list = admin
        .list_certificates(pb::ListCertificatesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.certificates.iter().all(|c| c.revoked));
    server.stop().await;
}

/// With a store key, what enrollment keeps in its store (the CA key, the
/// farm secret) is sealed: a copy of the store yields neither; without the
/// key, or with another, the service refuses to start rather than make a
/// new CA; key material stored in the clear before is sealed in place.
#[tokio::test]
async fn key_material_is_sealed_at_rest() {
    use ringmesh_enrollment::seal::StoreKey;
    let with = |key: Option<StoreKey>| AuthorityOptions {
        store_key: key,
        ..AuthorityOptions::default()
    };
    let key = StoreKey::new(&[3; 32]);
    let dir = tempfile::tempdir().unwrap();
    let a = Authority::open(FileKv::open(dir.path()).unwrap(), with(Some(key.clone())))
        .await
        .unwrap();
    let secret = hex::encode(a.farm_secret());
    let raw_secret = std::fs::read_to_string(dir.path().join("farm-secret")).unwrap();
    let raw_ca = std::fs::read_to_string(dir.path().join("ca")).unwrap();
    assert!(raw_secret.starts_with("sealed:v1:") && !raw_secret.contains(&secret));
    assert!(raw_ca.starts_with("sealed:v1:") && !raw_ca.contains("PRIVATE KEY"));
    // The same key opens them again: the same CA, the same secret.
    let b = Authority::open(FileKv::open(dir.path()).unwrap(), with(Some(key.clone())))
        .await
        .unwrap();
    assert_eq!((b.ca_pem(), b.farm_secret()), (a.ca_pem(), a.farm_secret()));
    // Without it, or with another, nothing starts (and nothing is replaced).
    let e = Authority::open(FileKv::open(dir.path()).unwrap(), with(None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--store-key-file"), "{e}");
    let e = Authority::open(
        FileKv::open(dir.path()).unwrap(),
        with(Some(StoreKey::new(&[4; 32]))),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("does not open"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("farm-secret")).unwrap(),
        raw_secret
    );

    // A store from before the key: opened in the clear, then sealed.
    let old = tempfile::tempdir().unwrap();
    let plain = Authority::open(FileKv::open(old.path()).unwrap(), with(None))
        .await
        .unwrap();
    let sealed = Authority::open(FileKv::open(old.path()).unwrap(), with(Some(key)))
        .await
        .unwrap();
    assert_eq!(sealed.farm_secret(), plain.farm_secret());
    assert_eq!(sealed.ca_pem(), plain.ca_pem());
    let now = std::fs::read_to_string(old.path().join("farm-secret")).unwrap();
    assert!(now.starts_with("sealed:v1:"), "{now}");
}
