//! The trusted elements over gRPC on 127.0.0.1: the API (every refusal
//! with its status code and the field it names).

mod common;

use common::Server;
use ringmesh_proto::provisioning as pb;
use ringmesh_proto::provisioning::trusted_element::Matcher as PbMatcher;
use ringmesh_provisioning::EmbeddedStore;
use tonic::Code;

fn element(name: &str, kind: pb::TrustedElementKind, m: PbMatcher) -> pb::TrustedElement {
    pb::TrustedElement {
        name: name.into(),
        kind: kind as i32,
        matcher: Some(m),
        ..Default::default()
    }
}

fn addr(a: &str) -> PbMatcher {
    PbMatcher::Address(a.into())
}

fn create(e: pb::TrustedElement) -> pb::CreateTrustedElementRequest {
    pb::CreateTrustedElementRequest { element: Some(e) }
}

fn gateway(name: &str, a: &str) -> pb::CreateTrustedElementRequest {
    create(element(name, pb::TrustedElementKind::Gateway, addr(a)))
}

#[tokio::test]
async fn trusted_elements_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EmbeddedStore::open(dir.path()).unwrap()).await;
    let mut c = server.client().await;

    let mut gw = element(
        "pstn-gw-1",
        pb::TrustedElementKind::Gateway,
        addr("192.0.2.0/24:5080"),
    );
    gw.description = "PSTN gateway, carrier A".into();
    let gw = c
        .create_trusted_element(create(gw))
        .await
        .unwrap()
        .into_inner();
    assert!(gw.revision > 0 && gw.created_unix_ms > 0);
    assert_eq!(gw.description, "PSTN gateway, carrier A");
    // Stored canonical: a mapped IPv6 address is IPv4, a TLS name lower-case.
    let lg = c
        .create_trusted_element(create(element(
            "bench",
            pb::TrustedElementKind::LoadGenerator,
            addr("::ffff:127.0.0.1"),
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lg.matcher, Some(addr("127.0.0.1")));
    let fe = c
        .create_trusted_element(create(element(
            "pcscf",
            pb::TrustedElementKind::FrontEnd,
            PbMatcher::TlsName("PCSCF.Example.NET".into()),
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fe.matcher,
        Some(PbMatcher::TlsName("pcscf.example.net".into()))
    );

    let got = c
        .get_trusted_element(pb::GetTrustedElementRequest {
            name: "pstn-gw-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, gw);
    let list = c
        .list_trusted_elements(pb::ListTrustedElementsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.elements.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["bench", "pcscf", "pstn-gw-1"]);
    assert_eq!(list.revision, fe.revision);

    // Bad input: INVALID_ARGUMENT naming the field; nothing stored.
    let invalid = [
        (gateway("a b", "192.0.2.1"), "element.name"),
        (gateway(&"x".repeat(65), "192.0.2.1"), "element.name"),
        (gateway("wide", "0.0.0.0/0"), "element.address"),
        (gateway("wide", "10.0.0.0/7"), "element.address"),
        (gateway("wide", "::/0"), "element.address"),
        (gateway("wide", "2001:db8::/16"), "element.address"),
        (gateway("typo", "192.0.2.7/24"), "element.address"),
        (gateway("typo", "gw.example.net"), "element.address"),
        (gateway("typo", "tls:gw.example.net"), "element.address"),
        (gateway("typo", "192.0.2.1:0"), "element.address"),
        (gateway("typo", "192.0.2.1:70000"), "element.address"),
        (
            create(element(
                "t",
                pb::TrustedElementKind::FrontEnd,
                PbMatcher::TlsName("*".into()),
            )),
            "element.tls_name",
        ),
        (
            create(element(
                "t",
                pb::TrustedElementKind::FrontEnd,
                PbMatcher::TlsName("bad name".into()),
            )),
            "element.tls_name",
        ),
        (
            create(element(
                "k",
                pb::TrustedElementKind::Unspecified,
                addr("192.0.2.1"),
            )),
            "element.kind",
        ),
        (
            create(pb::TrustedElement {
                kind: 42,
                ..element("k", pb::TrustedElementKind::Gateway, addr("192.0.2.1"))
            }),
            "element.kind",
        ),
        (
            create(pb::TrustedElement {
                matcher: None,
                ..element("m", pb::TrustedElementKind::Gateway, addr("192.0.2.1"))
            }),
            "element.matcher",
        ),
        (
            create(pb::TrustedElement {
                description: "d".repeat(257),
                ..element("d", pb::TrustedElementKind::Gateway, addr("192.0.2.1"))
            }),
            "element.description",
        ),
        (
            create(pb::TrustedElement {
                description: "line\nbreak".into(),
                ..element("d", pb::TrustedElementKind::Gateway, addr("192.0.2.1"))
            }),
            "element.description",
        ),
        (pb::CreateTrustedElementRequest { element: None }, "element"),
    ];
    for (req, field) in invalid {
        let e = c.create_trusted_element(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "{req:?}: the message names {field}: {}",
            e.message()
        );
    }
    let e = c
        .get_trusted_element(pb::GetTrustedElementRequest {
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("name:"), "{}", e.message());
    let e = c
        .delete_trusted_element(pb::DeleteTrustedElementRequest {
            name: "../x".into(),
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let after = c
        .list_trusted_elements(pb::ListTrustedElementsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.elements.len(), 3, "nothing stored");

    // Duplicate, unknown, stale revision.
    let e = c
        .create_trusted_element(gateway("pstn-gw-1", "198.51.100.1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("pstn-gw-1"), "{}", e.message());
    let e = c
        .get_trusted_element(pb::GetTrustedElementRequest {
            name: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_trusted_element(pb::DeleteTrustedElementRequest {
            name: "nobody".into(),
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_trusted_element(pb::DeleteTrustedElementRequest {
            name: "pstn-gw-1".into(),
            expected_revision: gw.revision + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);

    let d = c
        .delete_trusted_element(pb::DeleteTrustedElementRequest {
            name: "pstn-gw-1".into(),
            expected_revision: gw.revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.revision > fe.revision);
    let e = c
        .get_trusted_element(pb::GetTrustedElementRequest {
            name: "pstn-gw-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The watch stream: from the list's revision on, then live.
    let mut w = c
        .watch_trusted_elements(pb::WatchTrustedElementsRequest {
            start_revision: list.revision + 1,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut seen, mut created) = (Vec::new(), false);
    while seen.len() < 2 {
        let ev = w.message().await.unwrap().unwrap();
        if ev.r#type == pb::EventType::Synced as i32 {
            // The replay is out: now a live change.
            if !created {
                c.create_trusted_element(gateway("as", "203.0.113.10"))
                    .await
                    .unwrap();
                created = true;
            }
            continue;
        }
        seen.push((
            pb::EventType::try_from(ev.r#type).unwrap(),
            ev.element.unwrap().name,
        ));
    }
    assert_eq!(
        seen,
        [
            (pb::EventType::Delete, "pstn-gw-1".to_string()),
            (pb::EventType::Put, "as".to_string())
        ]
    );
    server.stop().await;
}
