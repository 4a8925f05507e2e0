//! The admin API over mutual TLS, played as an attacker would: without a
//! certificate, with one from another CA, in plaintext, with another
//! supernode's certificate, and with an operator's certificate reaching for
//! what only an admin may do; beside them the operator's reads and the
//! admin's writes are served.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ringmesh_enrollment::ca::{Ca, NODE_DNS_NAME, Role, TlsFiles, control_files, provision_node};
use ringmesh_proto::admin as pb;
use ringmesh_proto::admin::admin_client::AdminClient;
use ringmesh_supernode::config::SupernodeArgs;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

async fn client(
    admin: SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<AdminClient<Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{admin}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).unwrap();
    }
    ep.connect()
        .await
        .map(AdminClient::new)
        .map_err(|e| format!("{e:?}"))
}

fn advert() -> pb::AdvertiseServiceRequest {
    pb::AdvertiseServiceRequest {
        instance: Some(pb::ServiceInstance {
            name: "turn".into(),
            uri: "turn:198.51.100.66:3478".into(),
            region: String::new(),
            capacity: 10,
            load: 0,
            expires_unix_ms: 0,
        }),
        ttl_seconds: 30,
    }
}

fn gateway(uri: &str, prefix: &str) -> pb::AddGatewayRequest {
    pb::AddGatewayRequest {
        gateway: Some(pb::Gateway {
            name: "pstn".into(),
            uri: uri.into(),
            prefixes: vec![prefix.into()],
            weight: 1,
            ..Default::default()
        }),
    }
}

fn lift(source: &str) -> pb::LiftBanRequest {
    pb::LiftBanRequest {
        source: source.into(),
    }
}

fn anonymous(ca: &Path) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(NODE_DNS_NAME)
}

#[test]
fn only_the_roles_of_the_farm_ca_reach_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("farm CA").unwrap();
    let node_dir = dir.path().join("sn0");
    provision_node(&node_dir, "sn0", &ca, &[]).unwrap();
    let certs = dir.path().join("certs");
    let operator = control_files(&certs, "operator", &ca, Some(Role::Operator), 1).unwrap();
    let admin = control_files(&certs, "admin", &ca, Some(Role::Admin), 1).unwrap();
    // Another supernode's certificate: a member, but no operator.
    let other_dir = dir.path().join("sn1");
    provision_node(&other_dir, "sn1", &ca, &[[0; 16]]).unwrap();
    let other = TlsFiles {
        ca: other_dir.join("ca.crt"),
        cert: other_dir.join("node.crt"),
        key: other_dir.join("node.key"),
    };
    let rogue = Ca::generate("rogue CA").unwrap();
    let forged = TlsFiles {
        ca: operator.ca.clone(),
        ..control_files(
            &dir.path().join("rogue"),
            "admin",
            &rogue,
            Some(Role::Admin),
            1,
        )
        .unwrap()
    };

    let data = node_dir.display().to_string();
    let cfg = SupernodeArgs::resolve_from(&[
        "--auth",
        "none",
        "--sip",
        "udp:127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--admin-tls",
        "true",
        "--data",
        &data,
    ])
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let node = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(ringmesh_supernode::run_with(
            cfg,
            async {
                let _ = stop_rx.await;
            },
            move |b| bound_tx.send(b.clone()).unwrap(),
        ))
    });
    let bound = bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the node serves");
    let addr = bound.admin.expect("an admin API");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // No certificate, another CA's admin certificate, plaintext: no
        // call gets through.
        for (what, tls) in [
            ("no certificate", Some(anonymous(&operator.ca))),
            (
                "a foreign CA",
                Some(forged.client_for(NODE_DNS_NAME).unwrap()),
            ),
            ("plaintext", None),
        ] {
            let refused = match client(addr, tls).await {
                Err(_) => true,
                Ok(mut c) => c.lift_ban(lift("192.0.2.1")).await.is_err(),
            };
            assert!(refused, "{what} reached the admin API");
        }
        // Another supernode's certificate: authenticated, but no operator.
        let mut c = client(addr, Some(other.client_for(NODE_DNS_NAME).unwrap()))
            .await
            .unwrap();
        let e = c.status(pb::StatusRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        // An operator reads, and may not write or trace SIP.
        let mut c = client(addr, Some(operator.client_for(NODE_DNS_NAME).unwrap()))
            .await
            .unwrap();
        let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(st.name, "sn0");
        c.list_bans(pb::ListBansRequest {}).await.unwrap();
        let e = c.lift_ban(lift("192.0.2.1")).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = c
            .sip_trace(pb::SipTraceRequest::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // Nor point phones at a relay of its choosing, nor decide who sees
        // a subscriber's presence.
        let e = c.advertise_service(advert()).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = c
            .set_presence_rule(pb::SetPresenceRuleRequest {
                presentity: "sip:bob@ringmesh.test".into(),
                watcher: "sip:mallory@ringmesh.test".into(),
                decision: pb::PresenceDecision::Allow as i32,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // Nor send the farm's calls to a gateway of its choosing, or take
        // one away.
        let e = c
            .add_gateway(gateway("sip:198.51.100.66", "+"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = c
            .remove_gateway(pb::RemoveGatewayRequest {
                name: "pstn".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        // An admin does both (this node has no ring to write to: refused
        // as unavailable, not as forbidden).
        let mut c = client(addr, Some(admin.client_for(NODE_DNS_NAME).unwrap()))
            .await
            .unwrap();
        let e = c.advertise_service(advert()).await.unwrap_err();
        assert_ne!(e.code(), Code::PermissionDenied, "{e:?}");
        // A gateway that is not valid is refused with the field at fault.
        for (req, field) in [
            (gateway("sip:pstn.example.net", "+"), "gateway.uri"),
            (gateway("sip:198.51.100.66", "44"), "gateway.prefix"),
            (pb::AddGatewayRequest { gateway: None }, "gateway"),
        ] {
            let e = c.add_gateway(req).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().starts_with(field), "{e:?}");
        }
        let e = c
            .add_gateway(gateway("sip:198.51.100.66", "+"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "no ring here: {e:?}");
        c.status(pb::StatusRequest {}).await.unwrap();
        assert_eq!(
            c.lift_ban(lift("192.0.2.1"))
                .await
                .unwrap()
                .into_inner()
                .lifted,
            0
        );
    });
    let _ = stop_tx.send(());
    node.join().unwrap().unwrap();
}

#[test]
fn an_admin_api_off_loopback_needs_tls() {
    let e =
        SupernodeArgs::resolve_from(&["--auth", "none", "--admin", "0.0.0.0:5260"]).unwrap_err();
    assert_eq!(e.key, "admin");
    assert!(e.to_string().contains("--admin-tls true"), "{e}");
    let c = SupernodeArgs::resolve_from(&[
        "--auth",
        "none",
        "--admin",
        "0.0.0.0:5260",
        "--admin-tls",
        "true",
    ])
    .unwrap();
    assert!(c.admin_tls.is_some());
    let c = SupernodeArgs::resolve_from(&["--auth", "none", "--admin", "127.0.0.1:5260"]).unwrap();
    assert!(c.admin_tls.is_none(), "loopback may stay plaintext");
}
