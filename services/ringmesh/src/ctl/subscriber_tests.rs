//! `ringmesh ctl subscriber …` end to end, in-process: the command
//! functions against a provisioning service started by `run_on` (what
//! `ringmesh provisioning` runs), with the real gRPC client and mutual TLS
//! (an operator certificate from a farm CA made here) in between.

use std::time::Duration;

use super::{AddArgs, Exit, Io, PasswordArgs, Provisioning, SubscriberCommand};
use ringmesh_enrollment::ca::{Ca, Role, control_files};
use ringmesh_provisioning::config::ProvisioningArgs;

struct Out {
    code: Exit,
    out: String,
    err: String,
}

async fn ctl(p: &Provisioning, json: bool, cmd: SubscriberCommand, stdin: &str) -> Out {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut input = stdin.as_bytes();
    let code = super::run(
        p,
        json,
        cmd,
        &mut Io {
            stdin: &mut input,
            out: &mut out,
            err: &mut err,
        },
    )
    .await;
    Out {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn add(id: &str, public: &[&str], pw: Option<&str>) -> SubscriberCommand {
    SubscriberCommand::Add(AddArgs {
        private_id: id.into(),
        public: public.iter().map(|s| s.to_string()).collect(),
        implicit_set: vec![],
        password: PasswordArgs {
            password: pw.map(str::to_string),
            password_stdin: pw.is_none(),
        },
    })
}

#[tokio::test]
async fn every_subscriber_command() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca = Ca::generate("test CA").unwrap();
    let certs = dir.path().join("certs");
    let server = control_files(&certs, "provisioning", &ca, None, 1).unwrap();
    let operator = control_files(&certs, "operator", &ca, Some(Role::Operator), 1).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cfg = ProvisioningArgs::resolve_from(&[
        "--data",
        dir.path().to_str().unwrap(),
        "--domain",
        "ringmesh.test",
        "--tls-ca",
        &path(&server.ca),
        "--tls-cert",
        &path(&server.cert),
        "--tls-key",
        &path(&server.key),
    ])
    .unwrap();
    let addr = Provisioning {
        addr: listener.local_addr().unwrap().to_string(),
        tls: Some(operator.client().unwrap()),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ringmesh_provisioning::run_on(listener, cfg, async move {
        let _ = stop_rx.await;
    }));

    // add (password on stdin), with an implicit set.
    let mut cmd = add("alice", &["sip:alice@ringmesh.test", "tel:+15550100"], None);
    if let SubscriberCommand::Add(a) = &mut cmd {
        a.implicit_set = vec!["sip:alice@ringmesh.test,tel:+15550100".into()];
    }
    let o = ctl(&addr, false, cmd, "s3cret\n").await;
    assert_eq!(o.code, Exit::Ok, "{}", o.err);
    assert!(
        o.out.starts_with("created alice (revision 1)\n"),
        "{}",
        o.out
    );
    assert!(
        o.out
            .contains("public ids      sip:alice@ringmesh.test, tel:+15550100"),
        "{}",
        o.out
    );
    assert!(
        o.out
            .contains("implicit sets   [sip:alice@ringmesh.test, tel:+15550100]"),
        "{}",
        o.out
    );
    assert!(!o.out.contains("s3cret"));
    let o = ctl(
        &addr,
        true,
        add("bob", &["sip:bob@ringmesh.test"], Some("pw")),
        "",
    )
    .await;
    assert_eq!(o.code, Exit::Ok);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["private_id"], "bob");
    assert_eq!(v["credentials"]["realm"], "ringmesh.test");

    // get by private and by public identity; JSON for scripts.
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::Get { id: "alice".into() },
        "",
    )
    .await;
    assert_eq!(o.code, Exit::Ok);
    assert!(o.out.contains("barred          no"), "{}", o.out);
    let o = ctl(
        &addr,
        true,
        SubscriberCommand::Get {
            id: "tel:+1-555-0100".into(),
        },
        "",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["private_id"], "alice");
    assert_eq!(v["public_ids"][1], "tel:+15550100");

    // list: a table, pages, JSON.
    for i in 0..3 {
        assert_eq!(
            ctl(
                &addr,
                false,
                add(
                    &format!("u{i}"),
                    &[&format!("sip:u{i}@ringmesh.test")],
                    Some("pw")
                ),
                ""
            )
            .await
            .code,
            Exit::Ok
        );
    }
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::List {
            page_size: 100,
            page_token: String::new(),
            all: false,
        },
        "",
    )
    .await;
    assert_eq!(o.code, Exit::Ok);
    let lines: Vec<&str> = o.out.lines().collect();
    assert_eq!(
        lines[0],
        "PRIVATE ID  PUBLIC IDS                             BARRED  REVISION"
    );
    assert_eq!(lines.len(), 6);
    let o = ctl(
        &addr,
        true,
        SubscriberCommand::List {
            page_size: 2,
            page_token: String::new(),
            all: false,
        },
        "",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["subscribers"].as_array().unwrap().len(), 2);
    let token = v["next_page_token"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    let o = ctl(
        &addr,
        true,
        SubscriberCommand::List {
            page_size: 2,
            page_token: token,
            all: true,
        },
        "",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["subscribers"].as_array().unwrap().len(), 3, "the rest");
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::List {
            page_size: 2,
            page_token: String::new(),
            all: false,
        },
        "",
    )
    .await;
    assert!(
        o.err.contains("--page-token"),
        "hint to continue: {}",
        o.err
    );

    // set-password, bar, unbar.
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::SetPassword {
            id: "alice".into(),
            password: PasswordArgs {
                password: None,
                password_stdin: true,
            },
        },
        "n3w\n",
    )
    .await;
    assert_eq!(
        (o.code, o.out.as_str()),
        (Exit::Ok, "password of alice changed (revision 6)\n")
    );
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::Bar {
            id: "alice".into(),
            reason: "unpaid".into(),
        },
        "",
    )
    .await;
    assert_eq!(o.out, "alice barred (revision 7)\n");
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::Get { id: "alice".into() },
        "",
    )
    .await;
    assert!(o.out.contains("barred          yes (unpaid)"), "{}", o.out);
    let o = ctl(
        &addr,
        true,
        SubscriberCommand::Unbar { id: "alice".into() },
        "",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["barred"], false);

    // delete, then not found (exit 3).
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::Delete { id: "bob".into() },
        "",
    )
    .await;
    assert_eq!(
        (o.code, o.out.as_str()),
        (Exit::Ok, "deleted bob (revision 9)\n")
    );
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::Get { id: "bob".into() },
        "",
    )
    .await;
    assert_eq!(o.code, Exit::NotFound);
    assert_eq!(o.err, "error: no subscriber with private_id 'bob'\n");
    let o = ctl(
        &addr,
        true,
        SubscriberCommand::Delete { id: "bob".into() },
        "",
    )
    .await;
    assert_eq!(o.code as u8, 3);
    let v: serde_json::Value = serde_json::from_str(&o.err).unwrap();
    assert_eq!(v["error"]["code"], "NotFound");

    // Server-side refusal (exit 1) with the server's message.
    let o = ctl(
        &addr,
        false,
        add("carol", &["tel:+15550100"], Some("pw")),
        "",
    )
    .await;
    assert_eq!(o.code as u8, 1);
    assert!(
        o.err.contains("tel:+15550100") && o.err.contains("alice"),
        "{}",
        o.err
    );

    // Usage errors (exit 2), nothing sent.
    let o = ctl(
        &addr,
        false,
        add("carol", &["mailto:carol@x"], Some("pw")),
        "",
    )
    .await;
    assert_eq!(o.code as u8, 2);
    assert!(o.err.starts_with("error: --public:"), "{}", o.err);
    let o = ctl(&addr, false, add("carol", &["sip:carol@x"], None), "").await;
    assert_eq!(o.code as u8, 2, "empty password on stdin: {}", o.err);
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::Bar {
            id: "a b".into(),
            reason: String::new(),
        },
        "",
    )
    .await;
    assert_eq!(o.code as u8, 2);
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::List {
            page_size: 0,
            page_token: String::new(),
            all: false,
        },
        "",
    )
    .await;
    assert_eq!(o.code as u8, 2);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Provisioning gone: exit 4 with a hint.
    let o = ctl(
        &addr,
        false,
        SubscriberCommand::Get { id: "alice".into() },
        "",
    )
    .await;
    assert_eq!(o.code as u8, 4, "{}", o.err);
    assert!(o.err.contains("RINGMESH_PROVISIONING"), "{}", o.err);
}
