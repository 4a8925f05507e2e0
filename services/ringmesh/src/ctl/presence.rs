//! `ringmesh ctl presence allow|block|pending|show`: a presentity's
//! authorisation rules (kept in its record on the ring) and what its
//! watchers see, through a supernode's admin API.

use std::io::Write;

use ringmesh_proto::admin as pb;
use ringmesh_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{AdminFailure, render_table};

/// `ringmesh ctl presence …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PresenceCommand {
    /// Let a watcher see the presentity's presence (admin role).
    Allow {
        /// The presentity's AOR.
        presentity: String,
        /// The watcher's AOR.
        watcher: String,
    },
    /// Reject a watcher's subscriptions (admin role).
    Block { presentity: String, watcher: String },
    /// Take the decision back: the watcher gets no state (admin role).
    Pending { presentity: String, watcher: String },
    /// The presentity's rules, publications and composed document.
    Show { presentity: String },
}

fn decision_name(d: i32) -> &'static str {
    match pb::PresenceDecision::try_from(d) {
        Ok(pb::PresenceDecision::Allow) => "allow",
        Ok(pb::PresenceDecision::Block) => "block",
        Ok(pb::PresenceDecision::Pending) => "pending",
        _ => "unspecified",
    }
}

pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    json: bool,
    cmd: PresenceCommand,
    out: &mut dyn Write,
) -> Result<(), AdminFailure> {
    let (presentity, watcher, decision) = match cmd {
        PresenceCommand::Show { presentity } => {
            let r = c
                .get_presence(pb::GetPresenceRequest { presentity })
                .await?
                .into_inner();
            if json {
                let rules: Vec<_> = r
                    .rules
                    .iter()
                    .map(|x| serde_json::json!({"watcher": x.watcher, "decision": decision_name(x.decision)}))
                    .collect();
                let pubs: Vec<_> = r
                    .publications
                    .iter()
                    .map(|p| serde_json::json!({"etag": p.etag, "expires_unix_ms": p.expires_unix_ms, "document": p.document}))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"presentity": r.presentity, "rules": rules, "publications": pubs, "composed": r.composed})
                );
            } else {
                let rows: Vec<Vec<String>> = r
                    .rules
                    .iter()
                    .map(|x| vec![x.watcher.clone(), decision_name(x.decision).to_string()])
                    .collect();
                let _ = write!(out, "{}", render_table(&["watcher", "decision"], &rows));
                let _ = writeln!(
                    out,
                    "{} publication(s); watchers allowed see:\n{}",
                    r.publications.len(),
                    r.composed
                );
            }
            return Ok(());
        }
        PresenceCommand::Allow {
            presentity,
            watcher,
        } => (presentity, watcher, pb::PresenceDecision::Allow),
        PresenceCommand::Block {
            presentity,
            watcher,
        } => (presentity, watcher, pb::PresenceDecision::Block),
        PresenceCommand::Pending {
            presentity,
            watcher,
        } => (presentity, watcher, pb::PresenceDecision::Pending),
    };
    let r = c
        .set_presence_rule(pb::SetPresenceRuleRequest {
            presentity,
            watcher,
            decision: decision as i32,
        })
        .await?
        .into_inner();
    let name = decision_name(decision as i32);
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({"presentity": r.presentity, "watcher": r.watcher, "decision": name})
        );
    } else {
        let _ = writeln!(out, "{}: {} is {name}", r.presentity, r.watcher);
    }
    Ok(())
}
