//! What the farm does when provisioning changes a subscriber: a barred or
//! deleted subscriber's bindings are removed farm-wide, and the flows its
//! phones registered over here are closed, as they are on a password
//! change (the phones connect again and register with the new password).

use ringmesh_sip::aor::Aor;
use sha2::{Digest, Sha256};

use super::{Action, Now, Pending, Proxy};
use crate::binding::FlowRef;
use crate::location::LocationOp;
use crate::registrar::RegisterPlan;

/// A change to a subscriber that the farm acts on (every supernode learns
/// it from provisioning's watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberChange {
    /// Barred or deleted: its bindings go, and its flows here close.
    Removed {
        private_id: String,
        public_ids: Vec<Aor>,
    },
    /// Its credentials changed: its flows here close.
    Credentials { private_id: String },
}

/// The Call-ID of the removal a purge writes: no phone's, so the write is
/// never out of order with a binding's own Call-ID and CSeq.
const PURGE_CALL_ID: &[u8] = b"ringmesh-purge";

fn purge_key(aor: &Aor) -> u128 {
    let mut h = Sha256::new();
    h.update(b"ringmesh purge\0");
    h.update(aor.as_bytes());
    u128::from_be_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

impl Proxy {
    /// Acts on a change to a subscriber. Every member is told; the member
    /// that owns an AOR's purge writes it (once for the farm, replicated
    /// like any registration), and each member closes the flows it holds.
    pub fn subscriber_changed(&mut self, change: SubscriberChange, now: Now) {
        let private_id = match &change {
            SubscriberChange::Removed {
                private_id,
                public_ids,
            } => {
                for aor in public_ids {
                    if self.owner_of(purge_key(aor)) == self.me.node_id {
                        self.purge(aor.clone(), now);
                    }
                }
                private_id
            }
            SubscriberChange::Credentials { private_id } => private_id,
        };
        if let Some(conns) = self.flows_of_user.remove(private_id) {
            for id in conns {
                self.user_of_conn.remove(&id);
                tracing::info!(conn = id, user = %private_id, "closing a flow: its subscriber changed");
                self.actions.push_back(Action::CloseFlow { id });
            }
        }
    }

    /// Removes every binding of `aor` (as `Contact: *` would).
    fn purge(&mut self, aor: Aor, now: Now) {
        let plan = RegisterPlan {
            call_id: bytes::Bytes::from_static(PURGE_CALL_ID),
            cseq: u32::MAX,
            wildcard: true,
            contacts: Vec::new(),
            hlc: now.hlc(),
            max_contacts: self.registrar.max_contacts,
        };
        self.locate(
            LocationOp::Register {
                aor: aor.clone(),
                plan,
                now_ms: now.wall_ms,
                aliases: Vec::new(),
            },
            Pending::Purge { aor },
        );
    }

    /// Remembers that `private_id` registered over `flow`, to close it
    /// when the subscriber changes (datagram flows need no closing).
    pub(super) fn note_user_flow(&mut self, private_id: &str, flow: FlowRef) {
        let FlowRef::Conn { id, .. } = flow else {
            return;
        };
        if !self.conns.contains(&id) || self.user_of_conn.contains_key(&id) {
            return;
        }
        self.user_of_conn.insert(id, private_id.to_string());
        self.flows_of_user
            .entry(private_id.to_string())
            .or_default()
            .insert(id);
    }

    /// A connection closed: it is no longer a subscriber's flow.
    pub(super) fn forget_user_flow(&mut self, id: u64) {
        if let Some(user) = self.user_of_conn.remove(&id)
            && let Some(set) = self.flows_of_user.get_mut(&user)
        {
            set.remove(&id);
            if set.is_empty() {
                self.flows_of_user.remove(&user);
            }
        }
    }
}
