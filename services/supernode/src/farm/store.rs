//! [`OverlayStore`]: the location service of a farm, on the ring. A
//! REGISTER reads the AOR's record, applies the registrar's plan to it,
//! and writes back only the bindings that changed, stamped by this node's
//! hybrid logical clock strictly after the entries they replace (so CSeq
//! order within a Call-ID holds and replicas converge). It answers after a
//! write quorum.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use ringmesh_overlay::{Entry, Key};
use ringmesh_proxy::binding::{Binding, BindingKey, EntryFacts};
use ringmesh_proxy::location::{Completion, Held, LocationError, LocationOp};
use ringmesh_proxy::registrar::{self, RegisterPlan};
use tokio::sync::mpsc;

use super::{Command, EntrySpec, FarmHandle, Reply};
use crate::clock::wall_ms;
use crate::location::LocationService;

enum Stage {
    Lookup,
    RegisterRead { plan: RegisterPlan, now_ms: u64 },
    RegisterWrite { result: Vec<Binding> },
}

/// The farm's [`LocationService`]: bindings live on the ring.
pub struct OverlayStore {
    farm: FarmHandle,
    replies: mpsc::Receiver<Reply>,
    pending: HashMap<u64, (Key, Stage)>,
    done: VecDeque<Completion>,
    /// Tombstones outlive any binding they remove.
    tombstone_ms: u64,
}

impl std::fmt::Debug for OverlayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayStore")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl OverlayStore {
    pub fn new(
        farm: FarmHandle,
        replies: mpsc::Receiver<Reply>,
        max_expires_secs: u32,
    ) -> OverlayStore {
        OverlayStore {
            farm,
            replies,
            pending: HashMap::new(),
            done: VecDeque::new(),
            tombstone_ms: u64::from(max_expires_secs) * 1000 + 60_000,
        }
    }

    fn key_of(aor: &ringmesh_sip::aor::Aor) -> Key {
        Key::hash(&aor.key_material())
    }

    fn fail(&mut self, token: u64, why: String) {
        self.pending.remove(&token);
        self.done
            .push_back((token, Err(LocationError::Unavailable(why))));
    }

    fn on_reply(&mut self, reply: Reply) {
        let now_ms = wall_ms();
        match reply {
            Reply::Got { token, result } => {
                let Some((key, stage)) = self.pending.remove(&token) else {
                    return;
                };
                let entries = match result {
                    Ok(e) => e,
                    Err(e) => {
                        return self
                            .done
                            .push_back((token, Err(LocationError::Unavailable(e.to_string()))));
                    }
                };
                let current = decode_live(&entries, now_ms);
                match stage {
                    Stage::Lookup => {
                        let mut list: Vec<Binding> = current.into_iter().map(|(b, _)| b).collect();
                        registrar::sort_by_preference(&mut list);
                        self.done.push_back((token, Ok(list)));
                    }
                    Stage::RegisterRead { plan, now_ms } => {
                        self.register_write(token, key, plan, current, now_ms)
                    }
                    Stage::RegisterWrite { .. } => {}
                }
            }
            Reply::Put { token, result } => {
                let Some((_, stage)) = self.pending.remove(&token) else {
                    return;
                };
                if let Stage::RegisterWrite { result: list } = stage {
                    match result {
                        Ok(()) => self.done.push_back((token, Ok(list))),
                        Err(e) => self
                            .done
                            .push_back((token, Err(LocationError::Unavailable(e.to_string())))),
                    }
                }
            }
        }
    }

    /// Applies the plan to what the ring holds and writes the difference.
    fn register_write(
        &mut self,
        token: u64,
        key: Key,
        plan: RegisterPlan,
        current: Vec<(Binding, u64)>,
        now_ms: u64,
    ) {
        let before: HashMap<BindingKey, (Binding, u64)> = current
            .iter()
            .map(|(b, h)| (b.key(), (b.clone(), *h)))
            .collect();
        let mut after: Vec<Binding> = current.into_iter().map(|(b, _)| b).collect();
        if let Err(e) = registrar::apply(&mut after, &plan, now_ms) {
            return self.done.push_back((token, Err(e.into())));
        }
        let mut touched: Vec<BindingKey> = plan.contacts.iter().map(|c| c.binding.key()).collect();
        if plan.wildcard {
            touched.extend(before.keys().cloned());
        }
        touched.sort();
        touched.dedup();
        let mut specs = Vec::new();
        for k in touched {
            let floor = before.get(&k).map(|(_, h)| *h);
            match after.iter().find(|b| b.key() == k) {
                Some(b) => {
                    let id = k.to_entry_id();
                    let value = b.encode_entry(&id, self.farm.me);
                    specs.push(EntrySpec {
                        id,
                        value: Some(value),
                        expires_at_ms: b.expires_at_ms,
                        floor,
                    })
                }
                None if floor.is_some() => specs.push(EntrySpec {
                    id: k.to_entry_id(),
                    value: None,
                    expires_at_ms: now_ms + self.tombstone_ms,
                    floor,
                }),
                None => {}
            }
        }
        registrar::sort_by_preference(&mut after);
        if specs.is_empty() {
            return self.done.push_back((token, Ok(after)));
        }
        if self
            .farm
            .cmd
            .try_send(Command::Put {
                key,
                entries: specs,
                token,
            })
            .is_err()
        {
            return self.fail(token, "overlay queue full".into());
        }
        self.pending
            .insert(token, (key, Stage::RegisterWrite { result: after }));
    }
}

/// The binding an overlay entry holds (its value read with what the entry
/// carries: id, origin, expiry, HLC).
pub fn binding_of(e: &Entry) -> Option<Binding> {
    Binding::decode_entry(
        &e.value,
        EntryFacts {
            id: &e.id,
            origin: e.origin.to_bytes(),
            expires_at_ms: e.expires_at_ms,
            hlc: e.hlc.as_u64(),
        },
    )
}

/// The live bindings in a record's entries, each with its entry's HLC.
fn decode_live(entries: &[Entry], now_ms: u64) -> Vec<(Binding, u64)> {
    entries
        .iter()
        .filter(|e| e.is_live(now_ms))
        .filter_map(|e| Some((binding_of(e)?, e.hlc.as_u64())))
        .collect()
}

impl LocationService for OverlayStore {
    fn submit(&mut self, op: LocationOp, token: u64) {
        let (key, stage) = match op {
            LocationOp::Register { aor, plan, now_ms } => {
                (Self::key_of(&aor), Stage::RegisterRead { plan, now_ms })
            }
            LocationOp::Lookup { aor, .. } => (Self::key_of(&aor), Stage::Lookup),
        };
        if self.farm.cmd.try_send(Command::Get { key, token }).is_err() {
            return self.done.push_back((
                token,
                Err(LocationError::Unavailable("overlay queue full".into())),
            ));
        }
        self.pending.insert(token, (key, stage));
    }

    fn poll_complete(&mut self, cx: &mut Context<'_>) -> Poll<Completion> {
        loop {
            if let Some(c) = self.done.pop_front() {
                return Poll::Ready(c);
            }
            match self.replies.poll_recv(cx) {
                Poll::Ready(Some(r)) => self.on_reply(r),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn expire(&mut self, _now_ms: u64) {
        // The overlay collects expired entries itself.
    }

    fn counts(&self) -> Held {
        let h = &self.farm.held;
        Held {
            aors: h.aors.load(Ordering::Relaxed),
            primary: h.primary.load(Ordering::Relaxed),
            replica: h.replica.load(Ordering::Relaxed),
        }
    }
}
