//! The supernode side of the trusted elements: [`follow`] keeps a copy of
//! provisioning's table and publishes it on every change.
//!
//! - It lists the table, then follows WatchTrustedElements from the
//!   list's revision on: an element added with `ringmesh ctl trusted add`
//!   is trusted on every supernode within a round trip, one removed is a
//!   phone again.
//! - After a disconnection (or a RESET) it lists again, with exponential
//!   backoff, so nothing that changed meanwhile is missed.
//! - While provisioning is unreachable the last table stays in force: an
//!   outage of the control plane must not turn a gateway into a phone (or
//!   a phone into a gateway).
//! - An element the supernode cannot use (it fails validation: written by
//!   a newer version, or by hand into etcd) is skipped with a warning,
//!   never trusted.

use std::collections::BTreeMap;
use std::time::Duration;

use ringmesh_proto::provisioning::provisioning_client::ProvisioningClient;
use ringmesh_proto::provisioning::{
    EventType, ListTrustedElementsRequest, TrustedElement, WatchTrustedElementsRequest,
};
use ringmesh_proxy::trust::Element;
use tonic::transport::Channel;

use crate::validate;

/// The elements by name, as last read from provisioning.
type Table = BTreeMap<String, Element>;

fn usable(e: &TrustedElement) -> Option<Element> {
    match validate::trusted_element("", e) {
        Ok(el) => Some(el),
        Err(err) => {
            tracing::warn!(name = %e.name, error = %err, "trusted element not usable; ignored");
            None
        }
    }
}

/// Applies one watch event; `None` when the table must be listed again.
fn apply(table: &mut Table, kind: EventType, e: Option<&TrustedElement>) -> Option<bool> {
    match kind {
        EventType::Put => {
            let e = e?;
            let before = table.remove(&e.name);
            let after = usable(e);
            let changed = before != after;
            if let Some(el) = after {
                table.insert(el.name.clone(), el);
            }
            Some(changed)
        }
        EventType::Delete => Some(table.remove(&e?.name).is_some()),
        EventType::Reset => None,
        _ => Some(false),
    }
}

/// Follows provisioning's trusted elements for ever, sending the whole
/// table on `publish` whenever it changes (see the module docs). Returns
/// when every receiver of `publish` is gone.
pub async fn follow(
    client: ProvisioningClient<Channel>,
    publish: tokio::sync::watch::Sender<Vec<Element>>,
    backoff_min: Duration,
    backoff_max: Duration,
) {
    let mut backoff = backoff_min;
    loop {
        if publish.is_closed() {
            return;
        }
        if let Err(s) = list_and_watch(client.clone(), &publish, &mut backoff, backoff_min).await {
            tracing::debug!(code = ?s.code(), message = s.message(), "trusted-element watch interrupted; the last table stays in force");
        }
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(backoff_max);
    }
}

async fn list_and_watch(
    mut client: ProvisioningClient<Channel>,
    publish: &tokio::sync::watch::Sender<Vec<Element>>,
    backoff: &mut Duration,
    backoff_min: Duration,
) -> Result<(), tonic::Status> {
    let list = client
        .list_trusted_elements(ListTrustedElementsRequest {})
        .await?
        .into_inner();
    let mut table: Table = list
        .elements
        .iter()
        .filter_map(usable)
        .map(|e| (e.name.clone(), e))
        .collect();
    let send = |t: &Table| {
        let elements: Vec<Element> = t.values().cloned().collect();
        publish.send_if_modified(|old| {
            let changed = *old != elements;
            if changed {
                tracing::info!(elements = elements.len(), "trusted elements updated");
                *old = elements;
            }
            changed
        });
    };
    send(&table);
    let mut stream = client
        .watch_trusted_elements(WatchTrustedElementsRequest {
            start_revision: list.revision + 1,
        })
        .await?
        .into_inner();
    *backoff = backoff_min;
    while let Some(ev) = stream.message().await? {
        let kind = EventType::try_from(ev.r#type).unwrap_or(EventType::Unspecified);
        match apply(&mut table, kind, ev.element.as_ref()) {
            Some(true) => send(&table),
            Some(false) => {}
            None => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_proto::provisioning::{TrustedElementKind, trusted_element::Matcher};

    fn pb(name: &str, addr: &str) -> TrustedElement {
        TrustedElement {
            name: name.into(),
            kind: TrustedElementKind::Gateway as i32,
            matcher: Some(Matcher::Address(addr.into())),
            ..Default::default()
        }
    }

    #[test]
    fn events_add_replace_remove_and_reset() {
        let mut t = Table::new();
        assert_eq!(
            apply(&mut t, EventType::Put, Some(&pb("gw", "192.0.2.1"))),
            Some(true)
        );
        assert_eq!(
            apply(&mut t, EventType::Put, Some(&pb("gw", "192.0.2.1"))),
            Some(false),
            "the same element again changes nothing"
        );
        assert_eq!(
            apply(&mut t, EventType::Put, Some(&pb("gw", "192.0.2.2"))),
            Some(true)
        );
        let table = ringmesh_proxy::TrustTable::new(t.values().cloned().collect());
        assert!(table.is_trusted("192.0.2.2:5060".parse().unwrap(), None));
        assert!(!table.is_trusted("192.0.2.1:5060".parse().unwrap(), None));
        assert_eq!(apply(&mut t, EventType::Synced, None), Some(false));
        assert_eq!(
            apply(&mut t, EventType::Delete, Some(&pb("gw", ""))),
            Some(true)
        );
        assert!(t.is_empty());
        assert_eq!(
            apply(&mut t, EventType::Reset, None),
            None,
            "a reset lists again"
        );
    }

    #[test]
    fn an_unusable_element_is_never_trusted() {
        let mut t = Table::new();
        apply(&mut t, EventType::Put, Some(&pb("gw", "192.0.2.1")));
        // A put that replaces it with something invalid removes the old one.
        assert_eq!(
            apply(&mut t, EventType::Put, Some(&pb("gw", "0.0.0.0/0"))),
            Some(true)
        );
        assert!(t.is_empty());
    }
}
