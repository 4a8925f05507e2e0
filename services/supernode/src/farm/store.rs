//! [`OverlayStore`]: the location service of a farm, on the ring. A
//! REGISTER reads the AOR's record, applies the registrar's plan to it,
//! and writes back only the bindings that changed, stamped by this node's
//! hybrid logical clock strictly after the entries they replace (so CSeq
//! order within a Call-ID holds and replicas converge). It answers after a
//! write quorum, and after the aliases of the AOR's implicit set were
//! written (see `ringmesh_proxy::location`). A lookup follows an alias.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ringmesh_overlay::{Entry, Key};
use ringmesh_proxy::binding::{Binding, BindingKey, EntryFacts, is_binding_id};
use ringmesh_proxy::discovery::{self, ServiceRecord};
use ringmesh_proxy::gateways::{self, GatewayRecord};
use ringmesh_proxy::location::{
    ALIAS_ENTRY_ID, CLEARED_ENTRY_ID, CLEARED_VALUE, Completion, Held, Located, LocationError,
    LocationOp, WATCH_GRACE_MS, alias_expiry, decode_alias, encode_alias,
};
use ringmesh_proxy::mailbox::{self, StoredMessage, is_message_id};
use ringmesh_proxy::presence::{self, Publication, Rule};
use ringmesh_proxy::registrar::{self, RegisterPlan};
use ringmesh_proxy::subscription::{Subscription, is_watch_id};
use ringmesh_sip::aor::Aor;
use tokio::sync::mpsc;

use super::{Command, EntrySpec, FarmHandle, Reply};
use crate::clock::wall_ms;
use crate::location::LocationService;

enum Stage {
    Lookup,
    /// The alias was followed: the bindings found under the member's own
    /// key, with those of the AOR it names to come.
    LookupAlias {
        own: Vec<Binding>,
    },
    RegisterRead {
        plan: RegisterPlan,
        now_ms: u64,
        aliases: Vec<Aor>,
    },
    RegisterWrite {
        result: Vec<Binding>,
        aliases: Vec<Aor>,
        found: Found,
    },
    /// The aliases being written: how many are left, and the first failure.
    AliasWrites {
        result: Vec<Binding>,
        left: usize,
        failed: Option<String>,
        found: Found,
    },
    /// A watched record being read.
    Watch,
    /// A record being read for the messages it keeps.
    Mailbox,
    /// A service's record being read for its instances.
    Services,
    /// The gateways' record being read.
    Gateways,
    /// A presentity's record being read before a publication is written.
    PublishRead {
        if_match: Option<[u8; 8]>,
        publication: Option<Box<Publication>>,
    },
    /// A record being read to count its messages before one is added.
    MessageRead {
        message: Box<StoredMessage>,
        max: usize,
    },
    /// A subscription or a message being written or removed.
    EntryWrite,
    /// One alias write of the REGISTER `parent`.
    Alias {
        parent: u64,
    },
}

/// What a REGISTER's read found besides bindings: subscriptions to tell
/// of the change, and kept messages.
#[derive(Clone, Copy)]
struct Found {
    watched: bool,
    mail: bool,
}

/// Tokens of the store's own overlay operations (alias writes) have this
/// bit set; the proxy's tokens never do.
const OWN_TOKEN: u64 = 1 << 63;

/// The farm's [`LocationService`]: bindings live on the ring.
pub struct OverlayStore {
    farm: FarmHandle,
    replies: mpsc::Receiver<Reply>,
    pending: HashMap<u64, (Key, Stage)>,
    /// When each operation of the proxy was submitted, by its token.
    submitted: HashMap<u64, Instant>,
    /// How long the last completed operation waited.
    waited: Option<Duration>,
    done: VecDeque<Completion>,
    /// Tombstones outlive any binding they remove.
    tombstone_ms: u64,
    next_own_token: u64,
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
            submitted: HashMap::new(),
            waited: None,
            done: VecDeque::new(),
            tombstone_ms: u64::from(max_expires_secs) * 1000 + 60_000,
            next_own_token: OWN_TOKEN,
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
                let current = live_bindings(&entries, now_ms);
                match stage {
                    Stage::Lookup => {
                        let mut list: Vec<Binding> = current.into_iter().map(|(b, _)| b).collect();
                        match alias_of(&entries, now_ms).map(|a| Self::key_of(&a)) {
                            Some(target) if target != key => {
                                self.get(token, target, Stage::LookupAlias { own: list })
                            }
                            _ => {
                                registrar::sort_by_preference(&mut list);
                                self.done.push_back((token, Ok(Located::bindings(list))));
                            }
                        }
                    }
                    Stage::LookupAlias { mut own } => {
                        own.extend(current.into_iter().map(|(b, _)| b));
                        registrar::sort_by_preference(&mut own);
                        self.done.push_back((token, Ok(Located::bindings(own))));
                    }
                    Stage::RegisterRead {
                        plan,
                        now_ms,
                        aliases,
                    } => {
                        let found = Found {
                            watched: !subscriptions_of(&entries, now_ms).is_empty(),
                            // Ids only: a REGISTER decodes no kept message.
                            mail: entries
                                .iter()
                                .any(|e| e.is_live(now_ms) && is_message_id(&e.id)),
                        };
                        self.register_write(token, key, plan, current, now_ms, aliases, found)
                    }
                    Stage::Watch => {
                        let mut bindings: Vec<Binding> =
                            current.into_iter().map(|(b, _)| b).collect();
                        registrar::sort_by_preference(&mut bindings);
                        let subscriptions = subscriptions_of(&entries, now_ms);
                        let (publications, rules) = presence_of(&entries, now_ms);
                        self.done.push_back((
                            token,
                            Ok(Located::Watched {
                                bindings,
                                subscriptions,
                                publications,
                                rules,
                            }),
                        ));
                    }
                    Stage::PublishRead {
                        if_match,
                        publication,
                    } => {
                        let (live, _) = presence_of(&entries, now_ms);
                        if if_match.is_some_and(|t| !live.iter().any(|p| p.etag == t)) {
                            return self
                                .done
                                .push_back((token, Err(LocationError::Precondition)));
                        }
                        let others = live.iter().filter(|p| Some(p.etag) != if_match).count();
                        if publication.is_some() && others >= presence::MAX_PUBLICATIONS {
                            return self.done.push_back((token, Err(LocationError::Full)));
                        }
                        let mut specs = Vec::new();
                        if let Some(old) = if_match.and_then(|t| live.iter().find(|p| p.etag == t))
                        {
                            // The tombstone outlives the publication it removes.
                            specs.push(EntrySpec {
                                id: old.entry_id(),
                                value: None,
                                expires_at_ms: old.expires_at_ms.max(now_ms + 1),
                                floor: None,
                            });
                        }
                        if let Some(p) = publication {
                            specs.push(EntrySpec {
                                id: p.entry_id(),
                                value: Some(p.encode()),
                                expires_at_ms: p.expires_at_ms,
                                floor: None,
                            });
                        }
                        self.put_all(token, key, specs);
                    }
                    Stage::Services => self
                        .done
                        .push_back((token, Ok(Located::Services(services_of(&entries, now_ms))))),
                    Stage::Gateways => self
                        .done
                        .push_back((token, Ok(Located::Gateways(gateways_of(&entries, now_ms))))),
                    Stage::Mailbox => self
                        .done
                        .push_back((token, Ok(Located::Mailbox(messages_of(&entries, now_ms))))),
                    Stage::MessageRead { message, max } => {
                        if messages_of(&entries, now_ms).len() >= max {
                            self.done.push_back((token, Err(LocationError::Full)));
                        } else {
                            let spec = EntrySpec {
                                id: message.entry_id(),
                                value: Some(message.encode()),
                                expires_at_ms: message.expires_at_ms,
                                floor: None,
                            };
                            self.put(token, key, spec);
                        }
                    }
                    _ => {}
                }
            }
            Reply::Put { token, result } => {
                let Some((_, stage)) = self.pending.remove(&token) else {
                    return;
                };
                let result = result.map_err(|e| e.to_string());
                match stage {
                    Stage::RegisterWrite {
                        result: list,
                        aliases,
                        found,
                    } => match result {
                        Ok(()) => self.write_aliases(token, list, aliases, found),
                        Err(e) => self
                            .done
                            .push_back((token, Err(LocationError::Unavailable(e)))),
                    },
                    Stage::Alias { parent } => self.alias_written(parent, result.err()),
                    Stage::EntryWrite => self.done.push_back((
                        token,
                        result
                            .map(|()| Located::Stored)
                            .map_err(LocationError::Unavailable),
                    )),
                    _ => {}
                }
            }
        }
    }

    /// Stores (or, with `remove`, ends) a subscription under `key`.
    fn write_subscription(&mut self, token: u64, key: Key, sub: &Subscription, remove: bool) {
        let spec = EntrySpec {
            id: sub.entry_id(),
            value: (!remove).then(|| sub.encode()),
            expires_at_ms: if remove {
                wall_ms() + self.tombstone_ms
            } else {
                sub.expires_at_ms + WATCH_GRACE_MS
            },
            floor: None,
        };
        self.put(token, key, spec);
    }

    /// Writes one subscription or message entry for the operation `token`.
    fn put(&mut self, token: u64, key: Key, spec: EntrySpec) {
        self.put_all(token, key, vec![spec]);
    }

    /// Writes entries for the operation `token`, answered `Stored`.
    fn put_all(&mut self, token: u64, key: Key, entries: Vec<EntrySpec>) {
        let put = Command::Put {
            key,
            entries,
            token,
        };
        if self.farm.cmd.try_send(put).is_err() {
            return self.fail(token, "overlay queue full".into());
        }
        self.pending.insert(token, (key, Stage::EntryWrite));
    }

    /// Reads `key` for the operation `token`, at `stage`.
    fn get(&mut self, token: u64, key: Key, stage: Stage) {
        if self.farm.cmd.try_send(Command::Get { key, token }).is_err() {
            return self.fail(token, "overlay queue full".into());
        }
        self.pending.insert(token, (key, stage));
    }

    /// The set's bindings are stored: each other member of the set gets an
    /// alias naming the AOR they are stored under (none when the set has
    /// no binding left). The REGISTER is answered once all are written.
    fn write_aliases(&mut self, token: u64, result: Vec<Binding>, aliases: Vec<Aor>, found: Found) {
        let (Some(expires_at_ms), false, Some(target)) = (
            alias_expiry(&result),
            aliases.is_empty(),
            result.first().and_then(|b| Aor::parse(&b.aor).ok()),
        ) else {
            return self.done.push_back((token, Ok(found.located(result))));
        };
        let value = encode_alias(&target);
        let mut left = 0;
        let mut failed = None;
        for alias in &aliases {
            let own = self.next_own_token;
            self.next_own_token += 1;
            let put = Command::Put {
                key: Self::key_of(alias),
                entries: vec![EntrySpec {
                    id: bytes::Bytes::from_static(ALIAS_ENTRY_ID),
                    value: Some(value.clone()),
                    expires_at_ms,
                    floor: None,
                }],
                token: own,
            };
            if self.farm.cmd.try_send(put).is_err() {
                failed = Some("overlay queue full".to_string());
                break;
            }
            self.pending
                .insert(own, (Self::key_of(alias), Stage::Alias { parent: token }));
            left += 1;
        }
        self.pending.insert(
            token,
            (
                Self::key_of(&target),
                Stage::AliasWrites {
                    result,
                    left,
                    failed,
                    found,
                },
            ),
        );
        self.finish_aliases(token);
    }

    /// One alias write of `parent` finished.
    fn alias_written(&mut self, parent: u64, error: Option<String>) {
        if let Some((_, Stage::AliasWrites { left, failed, .. })) = self.pending.get_mut(&parent) {
            *left -= 1;
            if let Some(e) = error {
                failed.get_or_insert(format!("an alias of the implicit set was not written: {e}"));
            }
        }
        self.finish_aliases(parent);
    }

    /// Answers the REGISTER `parent` once none of its alias writes is
    /// outstanding: with its bindings, or 503 if one failed.
    fn finish_aliases(&mut self, parent: u64) {
        if !matches!(
            self.pending.get(&parent),
            Some((_, Stage::AliasWrites { left: 0, .. }))
        ) {
            return;
        }
        let Some((
            _,
            Stage::AliasWrites {
                result,
                failed,
                found,
                ..
            },
        )) = self.pending.remove(&parent)
        else {
            return;
        };
        self.done.push_back((
            parent,
            match failed {
                None => Ok(found.located(result)),
                Some(why) => Err(LocationError::Unavailable(why)),
            },
        ));
    }

    /// Applies the plan to what the ring holds and writes the difference.
    ///
    /// A removal writes its tombstone even when the read found no such
    /// binding: during a partition the side that takes the removal may not
    /// hold the record at all, and only a tombstone, later by its clock than
    /// the copy the other side kept, stops that copy coming back when the
    /// two merge. For the same reason `Contact: *` writes the record's
    /// cleared mark, which ends the bindings it could not see as well.
    #[allow(clippy::too_many_arguments)]
    fn register_write(
        &mut self,
        token: u64,
        key: Key,
        plan: RegisterPlan,
        current: Vec<(Binding, u64)>,
        now_ms: u64,
        aliases: Vec<Aor>,
        found: Found,
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
                None => specs.push(EntrySpec {
                    id: k.to_entry_id(),
                    value: None,
                    expires_at_ms: now_ms + self.tombstone_ms,
                    floor,
                }),
            }
        }
        if plan.wildcard {
            specs.push(EntrySpec {
                id: bytes::Bytes::from_static(CLEARED_ENTRY_ID),
                value: Some(bytes::Bytes::from_static(CLEARED_VALUE)),
                expires_at_ms: now_ms + self.tombstone_ms,
                floor: before.values().map(|(_, h)| *h).max(),
            });
        }
        registrar::sort_by_preference(&mut after);
        if specs.is_empty() {
            return self.write_aliases(token, after, aliases, found);
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
        self.pending.insert(
            token,
            (
                key,
                Stage::RegisterWrite {
                    result: after,
                    aliases,
                    found,
                },
            ),
        );
    }
}

/// The binding an overlay entry holds (its value read with what the entry
/// carries: id, origin, expiry, HLC).
fn binding_of(e: &Entry) -> Option<Binding> {
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

/// The subscriptions a record holds (until a grace period after they
/// expire, so the notifier can end them).
fn subscriptions_of(entries: &[Entry], now_ms: u64) -> Vec<Subscription> {
    entries
        .iter()
        .filter(|e| e.is_live(now_ms) && is_watch_id(&e.id))
        .filter_map(|e| Subscription::decode(&e.value))
        .collect()
}

/// The messages a record keeps, oldest first (entries are in id order).
fn messages_of(entries: &[Entry], now_ms: u64) -> Vec<StoredMessage> {
    let mut kept: Vec<StoredMessage> = entries
        .iter()
        .filter(|e| e.is_live(now_ms) && is_message_id(&e.id))
        .filter_map(|e| StoredMessage::decode(&e.value))
        .collect();
    kept.sort_by_key(|m| m.id);
    kept
}

/// The live publications and the authorisation rules a record holds.
pub fn presence_of(entries: &[Entry], now_ms: u64) -> (Vec<Publication>, Vec<Rule>) {
    let live = || entries.iter().filter(|e| e.is_live(now_ms));
    (
        live()
            .filter(|e| presence::is_publication_id(&e.id))
            .filter_map(|e| Publication::decode(&e.value))
            .collect(),
        live()
            .filter(|e| presence::is_rule_id(&e.id))
            .filter_map(|e| {
                Rule::decode(&e.value).map(|r| Rule {
                    expires_at_ms: e.expires_at_ms,
                    ..r
                })
            })
            .collect(),
    )
}

/// The live service instances a record holds.
pub fn services_of(entries: &[Entry], now_ms: u64) -> Vec<ServiceRecord> {
    entries
        .iter()
        .filter(|e| e.is_live(now_ms) && discovery::is_service_id(&e.id))
        .filter_map(|e| ServiceRecord::decode(&e.value))
        .collect()
}

/// The live gateways in the gateways' record.
pub fn gateways_of(entries: &[Entry], now_ms: u64) -> Vec<GatewayRecord> {
    entries
        .iter()
        .filter(|e| e.is_live(now_ms) && gateways::is_gateway_id(&e.id))
        .filter_map(|e| GatewayRecord::decode(&e.value))
        .collect()
}

/// The AOR a record's live alias names, if it has one.
fn alias_of(entries: &[Entry], now_ms: u64) -> Option<Aor> {
    entries
        .iter()
        .find(|e| e.is_live(now_ms) && &e.id[..] == ALIAS_ENTRY_ID)
        .and_then(|e| decode_alias(&e.value))
}

/// The HLC of a record's live cleared mark ([`CLEARED_ENTRY_ID`]; 0 when
/// it has none): no binding entry up to it is live.
pub fn cleared_mark(entries: &[Entry], now_ms: u64) -> u64 {
    entries
        .iter()
        .find(|e| &e.id[..] == CLEARED_ENTRY_ID && e.is_live(now_ms))
        .map_or(0, |e| e.hlc.as_u64())
}

/// Whether `e` is a live binding entry of a record whose cleared mark is
/// `mark`.
pub fn is_live_binding(e: &Entry, mark: u64, now_ms: u64) -> bool {
    e.is_live(now_ms) && is_binding_id(&e.id) && e.hlc.as_u64() > mark
}

/// The live bindings among a record's entries, each with its entry's HLC.
pub fn live_bindings(entries: &[Entry], now_ms: u64) -> Vec<(Binding, u64)> {
    let mark = cleared_mark(entries, now_ms);
    entries
        .iter()
        .filter(|e| is_live_binding(e, mark, now_ms))
        .filter_map(|e| Some((binding_of(e)?, e.hlc.as_u64())))
        .collect()
}

impl Found {
    fn located(self, bindings: Vec<Binding>) -> Located {
        Located::Bindings {
            bindings,
            watched: self.watched,
            mail: self.mail,
        }
    }
}

impl LocationService for OverlayStore {
    fn submit(&mut self, op: LocationOp, token: u64) {
        self.submitted.insert(token, Instant::now());
        let (key, stage) = match op {
            LocationOp::Register {
                aor,
                plan,
                now_ms,
                aliases,
            } => (
                Self::key_of(&aor),
                Stage::RegisterRead {
                    plan,
                    now_ms,
                    aliases,
                },
            ),
            LocationOp::Lookup { aor, .. } => (Self::key_of(&aor), Stage::Lookup),
            LocationOp::Watch { aor, .. } => (Self::key_of(&aor), Stage::Watch),
            LocationOp::Subscription { aor, sub, remove } => {
                return self.write_subscription(token, Self::key_of(&aor), &sub, remove);
            }
            LocationOp::StoreMessage {
                aor, message, max, ..
            } => (Self::key_of(&aor), Stage::MessageRead { message, max }),
            LocationOp::Mailbox { aor, .. } => (Self::key_of(&aor), Stage::Mailbox),
            LocationOp::Publish {
                aor,
                if_match,
                publication,
                ..
            } => (
                Self::key_of(&aor),
                Stage::PublishRead {
                    if_match,
                    publication,
                },
            ),
            LocationOp::Rules { aor, rules } => {
                let specs = rules
                    .iter()
                    .map(|rule| EntrySpec {
                        id: rule.entry_id(),
                        value: (rule.decision != presence::Decision::Pending)
                            .then(|| rule.encode()),
                        expires_at_ms: rule.expires_at_ms,
                        floor: None,
                    })
                    .collect();
                return self.put_all(token, Self::key_of(&aor), specs);
            }
            LocationOp::Services { name, .. } => {
                (Key::hash(&discovery::key_material(&name)), Stage::Services)
            }
            LocationOp::Gateways { .. } => (Key::hash(gateways::KEY_MATERIAL), Stage::Gateways),
            LocationOp::KeepGateway { record } => {
                let spec = EntrySpec {
                    id: record.entry_id(),
                    value: Some(record.encode()),
                    expires_at_ms: record.expires_at_ms,
                    floor: None,
                };
                return self.put(token, Key::hash(gateways::KEY_MATERIAL), spec);
            }
            LocationOp::RemoveMessage {
                aor,
                id,
                expires_at_ms,
            } => {
                let spec = EntrySpec {
                    id: mailbox::entry_id(&id),
                    value: None,
                    expires_at_ms,
                    floor: None,
                };
                return self.put(token, Self::key_of(&aor), spec);
            }
        };
        self.get(token, key, stage);
    }

    fn poll_complete(&mut self, cx: &mut Context<'_>) -> Poll<Completion> {
        loop {
            if let Some(c) = self.done.pop_front() {
                self.waited = self.submitted.remove(&c.0).map(|t| t.elapsed());
                return Poll::Ready(c);
            }
            match self.replies.poll_recv(cx) {
                Poll::Ready(Some(r)) => self.on_reply(r),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn waited(&self) -> Option<Duration> {
        self.waited
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
