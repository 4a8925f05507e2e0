//! The admin gRPC API of a supernode (`ringmesh.admin.v1.Admin`).
//!
//! Read-only views come from the overlay task ([`AdminQuery`]) and never
//! touch the SIP core; the live SIP trace is a broadcast the SIP core fills
//! only while someone listens. Every RPC has a deadline; bad arguments get
//! `InvalidArgument` naming the field.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_overlay::{Key, MemberState, NodeId};
use ringmesh_proto::admin as pb;
use ringmesh_proto::admin::admin_server::{Admin, AdminServer};
use ringmesh_sip::Message;
use ringmesh_sip::aor::Aor;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Request, Response, Status};

use ringmesh_proxy::discovery::{self, ServiceRecord};
use ringmesh_proxy::gateways::{self, GatewayRecord};
use ringmesh_proxy::guard::Source;
use ringmesh_proxy::presence::{Decision, Rule};
use ringmesh_proxy::{Binding, FlowRef};

use crate::farm::{AdminQuery, Command, EntrySpec, FarmHandle, nid};
use crate::tasks::Tasks;
use crate::trace::TraceRecord;
use crate::transport::{Control, Inbound};

/// What the admin service needs to know about its node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub node_id: [u8; 16],
    pub sip_listeners: Vec<String>,
    pub overlay_addr: String,
    pub admin_addr: String,
    pub cert_expires_at: Option<i64>,
    pub started: Instant,
}

/// The admin service of one supernode.
pub struct AdminService {
    pub facts: NodeFacts,
    pub farm: Option<FarmHandle>,
    pub trace: broadcast::Sender<TraceRecord>,
    pub transactions: prometheus::IntGauge,
    pub etcd_connected: Arc<std::sync::atomic::AtomicBool>,
    pub provisioning_connected: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The SIP core's queue, for what only the core knows (bans).
    pub core: mpsc::Sender<Inbound>,
    pub tasks: Tasks,
    /// Clients present certificates from the farm CA (the API serves
    /// mutual TLS): each call is admitted by its caller's role.
    pub mtls: bool,
}

/// What a call needs of its caller under mutual TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Reads: an operator or an admin.
    Read,
    /// Drain, lifting bans, live SIP traces: an admin.
    Admin,
}

impl AdminService {
    fn admit<T>(&self, r: &Request<T>, need: Need) -> Result<(), Status> {
        use ringmesh_enrollment_client::tls::{Role, caller};
        if !self.mtls {
            return Ok(());
        }
        // Only node certificates are ever revoked, and they carry no role
        // here: the CRL has nothing to refuse on this API.
        let none = ringmesh_enrollment_client::revocations::Revocations::default();
        match (caller(r, &none)?, need) {
            (Role::Admin, _) | (Role::Operator, Need::Read) => Ok(()),
            (role, _) => Err(Status::permission_denied(format!(
                "the {role} role may not {}",
                if need == Need::Read {
                    "use the admin API"
                } else {
                    "drain, lift bans, trace SIP or advertise services (admin role only)"
                }
            ))),
        }
    }
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("name", &self.facts.name)
            .finish_non_exhaustive()
    }
}

const DEADLINE: Duration = Duration::from_secs(10);

fn state_of(s: MemberState) -> i32 {
    (match s {
        MemberState::Joining => pb::NodeState::Joining,
        MemberState::Alive => pb::NodeState::Alive,
        MemberState::Leaving => pb::NodeState::Leaving,
        MemberState::Left => pb::NodeState::Left,
        MemberState::Dead => pb::NodeState::Dead,
    }) as i32
}

fn phase_state(p: ringmesh_overlay::node::Phase) -> i32 {
    use ringmesh_overlay::node::Phase;
    (match p {
        Phase::Idle | Phase::Joining => pb::NodeState::Joining,
        Phase::Alive => pb::NodeState::Alive,
        Phase::Leaving => pb::NodeState::Leaving,
        Phase::Left => pb::NodeState::Left,
    }) as i32
}

fn flow_text(b: &Binding) -> String {
    match b.flow {
        FlowRef::Udp { socket, peer } => format!("udp:{peer} (socket {socket})"),
        FlowRef::Conn {
            id,
            peer,
            transport,
        } => format!("{}:{peer} (connection {id})", transport.as_str()),
    }
}

fn binding_pb(b: &Binding) -> pb::Binding {
    pb::Binding {
        aor: String::from_utf8_lossy(&b.aor).into_owned(),
        contact: String::from_utf8_lossy(&b.contact).into_owned(),
        instance_id: b
            .instance
            .as_deref()
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .unwrap_or_default(),
        reg_id: b.reg_id.unwrap_or(0),
        expires_unix_ms: b.expires_at_ms,
        call_id: String::from_utf8_lossy(&b.call_id).into_owned(),
        cseq: b.cseq,
        edge_node_id: hex::encode(b.edge),
        edge_flow: flow_text(b),
        q: u32::from(b.q.unwrap_or(1000)),
        hlc: b.hlc,
    }
}

fn parse_node_id(field: &str, s: &str) -> Result<NodeId, Status> {
    let bytes = hex::decode(s)
        .map_err(|_| Status::invalid_argument(format!("{field}: not 32 hex digits")))?;
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| Status::invalid_argument(format!("{field}: a Node-ID is 32 hex digits")))?;
    Ok(nid(arr))
}

fn aor_key(field: &str, aor: &str) -> Result<(Aor, Key), Status> {
    let a = Aor::parse(aor.as_bytes()).map_err(|e| {
        Status::invalid_argument(format!(
            "{field}: '{aor}' is not a SIP, SIPS or tel AOR ({e})"
        ))
    })?;
    let key = Key::hash(&a.key_material());
    Ok((a, key))
}

/// A key whose ring position is the node's own id (its lookup ends there).
fn key_at(node: NodeId) -> Key {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&node.to_bytes());
    Key::from_array(k)
}

impl AdminService {
    /// Asks the SIP core, within the deadline.
    async fn ask_core<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.core
            .send(Inbound::Control(make(tx)))
            .await
            .map_err(|_| Status::unavailable("the SIP core has stopped"))?;
        tokio::time::timeout(DEADLINE, rx)
            .await
            .map_err(|_| Status::deadline_exceeded("the SIP core did not answer in time"))?
            .map_err(|_| Status::unavailable("the SIP core dropped the query"))
    }

    /// The gateways the ring holds.
    async fn gateway_records(&self) -> Result<Vec<GatewayRecord>, Status> {
        let key = Key::hash(gateways::KEY_MATERIAL);
        let (_, result) = self.ask(|reply| AdminQuery::Lookup { key, reply }).await?;
        let ok = result.map_err(|e| Status::unavailable(format!("lookup failed: {e}")))?;
        Ok(crate::farm::gateways_of(
            &ok.entries,
            crate::clock::wall_ms(),
        ))
    }

    /// Tells this node's SIP core the gateway table changed (the others
    /// read it within seconds).
    async fn core_gateways_changed(&self) {
        let _ = self
            .core
            .send(Inbound::Control(Control::GatewaysChanged))
            .await;
    }

    /// Writes one entry to `key` with a quorum write.
    async fn write(&self, key: Key, spec: EntrySpec) -> Result<(), Status> {
        self.ask(|reply| AdminQuery::Put {
            key,
            entries: vec![spec],
            reply,
        })
        .await?
        .map_err(|e| Status::unavailable(format!("not written to a quorum of replicas: {e}")))
    }

    fn farm(&self) -> Result<&FarmHandle, Status> {
        self.farm.as_ref().ok_or_else(|| {
            Status::failed_precondition("this supernode is a farm of one (no --overlay)")
        })
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> AdminQuery,
    ) -> Result<T, Status> {
        let farm = self.farm()?;
        let (tx, rx) = oneshot::channel();
        farm.cmd
            .send(Command::Admin(make(tx)))
            .await
            .map_err(|_| Status::unavailable("the overlay task has stopped"))?;
        tokio::time::timeout(DEADLINE, rx)
            .await
            .map_err(|_| Status::deadline_exceeded("the overlay did not answer in time"))?
            .map_err(|_| Status::unavailable("the overlay task dropped the query"))
    }

    fn member_name(view: &crate::farm::View, id: NodeId) -> (String, String) {
        view.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| (m.name.clone(), m.overlay_addr.clone()))
            .unwrap_or_default()
    }
}

type TraceStream = Pin<Box<dyn futures::Stream<Item = Result<pb::SipTraceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        r: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let view = match &self.farm {
            Some(_) => Some(self.ask(AdminQuery::View).await?),
            None => None,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ok(Response::new(pb::StatusResponse {
            node_id: hex::encode(self.facts.node_id),
            name: self.facts.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: ringmesh_overlay::ProtocolVersion::CURRENT.to_string(),
            state: view
                .as_ref()
                .map_or(pb::NodeState::Alive as i32, |v| phase_state(v.status.phase)),
            uptime_seconds: self.facts.started.elapsed().as_secs(),
            sip_listeners: self.facts.sip_listeners.clone(),
            overlay_addr: self.facts.overlay_addr.clone(),
            admin_addr: self.facts.admin_addr.clone(),
            alive_members: view.as_ref().map_or(1, |v| v.status.ring_members as u32),
            stored_bindings: view.as_ref().map_or(0, |v| v.held as u64),
            edge_flows: view.as_ref().map_or(0, |v| v.edge_flows as u64),
            active_transactions: self.transactions.get().max(0) as u64,
            etcd_connected: self
                .etcd_connected
                .load(std::sync::atomic::Ordering::Relaxed),
            provisioning_connected: (self.provisioning_connected)(),
            certificate_expires_in_seconds: self.facts.cert_expires_at.map_or(0, |t| t - now),
        }))
    }

    async fn ring(
        &self,
        r: Request<pb::RingRequest>,
    ) -> Result<Response<pb::RingResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let v = self.ask(AdminQuery::View).await?;
        let me = nid(self.facts.node_id);
        let mut members: Vec<pb::RingMember> = v
            .members
            .iter()
            .map(|m| pb::RingMember {
                node_id: m.id.to_string(),
                name: m.name.clone(),
                state: state_of(m.state),
                overlay_addr: m.overlay_addr.clone(),
                sip_addr: m.sip_addr.clone(),
                protocol_version: m.version.to_string(),
                incarnation: m.incarnation,
                since_unix_ms: m.since_ms,
                is_self: m.id == me,
            })
            .collect();
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Response::new(pb::RingResponse {
            self_node_id: me.to_string(),
            members,
            successors: v.status.successors.iter().map(|n| n.to_string()).collect(),
            predecessors: v
                .status
                .predecessors
                .iter()
                .map(|n| n.to_string())
                .collect(),
            replication_factor: v.replicas as u32,
        }))
    }

    async fn lookup(
        &self,
        r: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let (aor, key) = aor_key("aor", &r.get_ref().aor)?;
        let view = self.ask(AdminQuery::View).await?;
        let (replicas, result) = self.ask(|reply| AdminQuery::Lookup { key, reply }).await?;
        let ok = result.map_err(|e| Status::unavailable(format!("lookup failed: {e}")))?;
        let now_ms = crate::clock::wall_ms();
        let bindings: Vec<pb::Binding> = crate::farm::live_bindings(&ok.entries, now_ms)
            .iter()
            .map(|(b, _)| binding_pb(b))
            .collect();
        let alive: Vec<NodeId> = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.id)
            .collect();
        let replicas = replicas
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (name, overlay_addr) = Self::member_name(&view, *id);
                pb::Replica {
                    node_id: id.to_string(),
                    name,
                    overlay_addr,
                    primary: i == 0,
                    reachable: alive.contains(id),
                    bindings: if *id == ok.responder {
                        bindings.len() as u32
                    } else {
                        0
                    },
                    error: if *id == ok.responder {
                        String::new()
                    } else {
                        "not asked (reads ask one replica)".into()
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::LookupResponse {
            canonical_aor: aor.to_string(),
            key: hex::encode(key.as_bytes()),
            replicas,
            bindings,
            hops: ok.hops,
        }))
    }

    async fn list_bindings(
        &self,
        r: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let req = r.into_inner();
        let page_size = match req.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "page_size: {n} is outside 1..=1000"
                )));
            }
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            let raw = hex::decode(&req.page_token)
                .map_err(|_| Status::invalid_argument("page_token: not a token this API issued"))?;
            Some(Key::from_slice(&raw).ok_or_else(|| {
                Status::invalid_argument("page_token: not a token this API issued")
            })?)
        };
        let only = if req.aor.is_empty() {
            None
        } else {
            Some(aor_key("aor", &req.aor)?.0)
        };
        let me = self.facts.node_id;
        let mut out = Vec::new();
        let mut cursor = after;
        let mut next = String::new();
        // Pages of records until enough bindings passed the filters.
        'pages: loop {
            let page = self
                .ask(|reply| AdminQuery::Held {
                    after: cursor,
                    limit: 256,
                    reply,
                })
                .await?;
            if page.is_empty() {
                break;
            }
            let now_ms = crate::clock::wall_ms();
            for (key, entries) in &page {
                cursor = Some(*key);
                for (b, _) in crate::farm::live_bindings(entries, now_ms) {
                    if only.as_ref().is_some_and(|a| a.as_bytes() != &b.aor[..])
                        || (req.edge_only && b.edge != me)
                    {
                        continue;
                    }
                    out.push(binding_pb(&b));
                }
                if out.len() >= page_size {
                    next = hex::encode(key.as_bytes());
                    break 'pages;
                }
            }
        }
        Ok(Response::new(pb::ListBindingsResponse {
            bindings: out,
            next_page_token: next,
        }))
    }

    async fn drain(
        &self,
        r: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.admit(&r, Need::Admin)?;
        let req = r.into_inner();
        let me = nid(self.facts.node_id);
        if !req.node_id.is_empty() && parse_node_id("node_id", &req.node_id)? != me {
            return Err(Status::invalid_argument(
                "node_id: a node drains itself; call the admin API of that node",
            ));
        }
        let farm = self.farm()?;
        let v = self.ask(AdminQuery::View).await?;
        let grace = Duration::from_secs(u64::from(req.grace_seconds.max(15)));
        let handed_off = farm.leave(grace).await;
        tracing::info!(handed_off, "drained through the admin API");
        Ok(Response::new(pb::DrainResponse {
            node_id: me.to_string(),
            state: if handed_off {
                pb::NodeState::Left as i32
            } else {
                pb::NodeState::Leaving as i32
            },
            keys_to_hand_off: v.held as u64,
        }))
    }

    async fn ping(
        &self,
        r: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let req = r.into_inner();
        let target = parse_node_id("node_id", &req.node_id)?;
        let count = match req.count {
            0 => 3,
            n @ 1..=100 => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "count: {n} is outside 1..=100"
                )));
            }
        };
        let timeout = Duration::from_millis(u64::from(if req.timeout_ms == 0 {
            1000
        } else {
            req.timeout_ms.min(30_000)
        }));
        let view = self.ask(AdminQuery::View).await?;
        let (_, overlay_addr) = Self::member_name(&view, target);
        if overlay_addr.is_empty() {
            return Err(Status::not_found(format!(
                "node_id: {target} is not a member of this farm"
            )));
        }
        let mut results = Vec::new();
        for seq in 1..=count {
            let t0 = Instant::now();
            let probe = tokio::time::timeout(
                timeout,
                self.ask(|reply| AdminQuery::Probe {
                    key: key_at(target),
                    reply,
                }),
            )
            .await;
            let ok = matches!(&probe, Ok(Ok((_, Ok(l)))) if l.responder == target);
            results.push(pb::PingResult {
                seq,
                rtt_us: if ok {
                    t0.elapsed().as_micros() as u64
                } else {
                    0
                },
                lost: !ok,
            });
        }
        Ok(Response::new(pb::PingResponse {
            node_id: target.to_string(),
            overlay_addr,
            results,
        }))
    }

    async fn trace(
        &self,
        r: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        self.admit(&r, Need::Read)?;
        use pb::trace_request::Target;
        let req = r.into_inner();
        let key = match req.target {
            Some(Target::NodeId(n)) => key_at(parse_node_id("node_id", &n)?),
            Some(Target::Key(k)) => {
                let raw = hex::decode(&k)
                    .map_err(|_| Status::invalid_argument("key: not 64 hex digits"))?;
                Key::from_slice(&raw)
                    .ok_or_else(|| Status::invalid_argument("key: a key is 64 hex digits"))?
            }
            Some(Target::Aor(a)) => aor_key("aor", &a)?.1,
            None => {
                return Err(Status::invalid_argument(
                    "target: give a node_id, a key or an aor",
                ));
            }
        };
        let view = self.ask(AdminQuery::View).await?;
        let me = nid(self.facts.node_id);
        let t0 = Instant::now();
        let (route, result) = self.ask(|reply| AdminQuery::Probe { key, reply }).await?;
        let rtt = t0.elapsed().as_micros() as u64;
        let hop = |index: u32, id: NodeId, rtt_us: u64, responsible: bool, error: String| {
            let (name, overlay_addr) = Self::member_name(&view, id);
            pb::TraceHop {
                index,
                node_id: id.to_string(),
                name,
                overlay_addr,
                rtt_us,
                responsible,
                error,
            }
        };
        let owner = route.replicas.first().copied();
        let mut hops = vec![hop(0, me, 0, owner == Some(me), String::new())];
        let complete = match result {
            Ok(l) => {
                if l.responder != me {
                    // With a current member view the owner is one hop away;
                    // more hops mean forwarding by stale views on the way.
                    let err = if l.hops > 1 {
                        format!("{} hops: forwarded through stale views", l.hops)
                    } else {
                        String::new()
                    };
                    hops.push(hop(l.hops, l.responder, rtt, true, err));
                }
                true
            }
            Err(e) => {
                if let Some(o) = owner.filter(|o| *o != me) {
                    hops.push(hop(1, o, 0, true, format!("no answer: {e}")));
                }
                false
            }
        };
        let max = req.max_hops.max(1) as usize;
        hops.truncate(max);
        Ok(Response::new(pb::TraceResponse {
            key: hex::encode(key.as_bytes()),
            hops,
            complete,
        }))
    }

    async fn list_bans(
        &self,
        r: Request<pb::ListBansRequest>,
    ) -> Result<Response<pb::ListBansResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let bans = self.ask_core(Control::Bans).await?;
        Ok(Response::new(pb::ListBansResponse {
            bans: bans
                .into_iter()
                .map(|b| pb::Ban {
                    source: b.source.to_string(),
                    identity: b.identity.unwrap_or_default(),
                    until_unix_ms: i64::try_from(b.until_ms).unwrap_or(i64::MAX),
                    refused: b.answered,
                })
                .collect(),
        }))
    }

    async fn lift_ban(
        &self,
        r: Request<pb::LiftBanRequest>,
    ) -> Result<Response<pb::LiftBanResponse>, Status> {
        self.admit(&r, Need::Admin)?;
        let req = r.into_inner();
        let source: Source = req
            .source
            .parse()
            .map_err(|e| Status::invalid_argument(format!("source: {e}")))?;
        let lifted = self.ask_core(|done| Control::Lift { source, done }).await?;
        tracing::info!(%source, lifted, "bans lifted through the admin API");
        Ok(Response::new(pb::LiftBanResponse {
            lifted: u32::try_from(lifted).unwrap_or(u32::MAX),
        }))
    }

    async fn advertise_service(
        &self,
        r: Request<pb::AdvertiseServiceRequest>,
    ) -> Result<Response<pb::AdvertiseServiceResponse>, Status> {
        self.admit(&r, Need::Admin)?;
        let req = r.into_inner();
        let i = req
            .instance
            .ok_or_else(|| Status::invalid_argument("instance: is required"))?;
        let bad =
            |field: &str, m: String| Status::invalid_argument(format!("instance.{field}: {m}"));
        discovery::check_label("name", &i.name, false).map_err(|m| bad("name", m))?;
        discovery::check_uri(&i.uri).map_err(|m| bad("uri", m))?;
        discovery::check_label("region", &i.region, true).map_err(|m| bad("region", m))?;
        if i.capacity == 0 {
            return Err(bad("capacity", "must be at least 1".into()));
        }
        if i.load > 1_000_000_000 {
            return Err(bad("load", format!("{} is over 1,000,000,000", i.load)));
        }
        if req.ttl_seconds > 3600 {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: {} is over 3600",
                req.ttl_seconds
            )));
        }
        let now_ms = crate::clock::wall_ms();
        let record = ServiceRecord {
            name: i.name,
            uri: i.uri,
            region: i.region,
            capacity: i.capacity,
            load: i.load,
            expires_at_ms: now_ms + u64::from(req.ttl_seconds) * 1000,
        };
        // A withdrawal is a tombstone that outlives any advertisement.
        let spec = EntrySpec {
            id: record.entry_id(),
            value: (req.ttl_seconds > 0).then(|| record.encode()),
            expires_at_ms: if req.ttl_seconds > 0 {
                record.expires_at_ms
            } else {
                now_ms + 3_600_000
            },
            floor: None,
        };
        self.write(Key::hash(&discovery::key_material(&record.name)), spec)
            .await?;
        tracing::info!(service = %record.name, uri = %record.uri, region = %record.region, ttl = req.ttl_seconds, "service advertised through the admin API");
        Ok(Response::new(pb::AdvertiseServiceResponse {
            instance: Some(instance_pb(record)),
        }))
    }

    async fn list_services(
        &self,
        r: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let req = r.into_inner();
        discovery::check_label("name", &req.name, false).map_err(Status::invalid_argument)?;
        discovery::check_label("region", &req.region, true).map_err(Status::invalid_argument)?;
        let key = Key::hash(&discovery::key_material(&req.name));
        let (_, result) = self.ask(|reply| AdminQuery::Lookup { key, reply }).await?;
        let ok = result.map_err(|e| Status::unavailable(format!("lookup failed: {e}")))?;
        let now_ms = crate::clock::wall_ms();
        let all = crate::farm::services_of(&ok.entries, now_ms);
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        let instances = discovery::best(all, &req.region, limit, now_ms)
            .into_iter()
            .map(instance_pb)
            .collect();
        Ok(Response::new(pb::ListServicesResponse { instances }))
    }

    async fn set_presence_rule(
        &self,
        r: Request<pb::SetPresenceRuleRequest>,
    ) -> Result<Response<pb::SetPresenceRuleResponse>, Status> {
        self.admit(&r, Need::Admin)?;
        let req = r.into_inner();
        let (presentity, key) = aor_key("presentity", &req.presentity)?;
        let (watcher, _) = aor_key("watcher", &req.watcher)?;
        let decision = match req.decision() {
            pb::PresenceDecision::Allow => Decision::Allow,
            pb::PresenceDecision::Block => Decision::Block,
            pb::PresenceDecision::Pending => Decision::Pending,
            pb::PresenceDecision::Unspecified => {
                return Err(Status::invalid_argument(
                    "decision: give ALLOW, BLOCK or PENDING",
                ));
            }
        };
        let rule = Rule {
            watcher: bytes::Bytes::copy_from_slice(watcher.as_bytes()),
            decision,
            expires_at_ms: 0,
        };
        // Pending is no rule: a tombstone, kept as long as a rule would be.
        let spec = EntrySpec {
            id: rule.entry_id(),
            value: (decision != Decision::Pending).then(|| rule.encode()),
            expires_at_ms: crate::clock::wall_ms() + ringmesh_proxy::presence::RULE_LIFETIME_MS,
            floor: None,
        };
        self.write(key, spec).await?;
        // The presentity's watchers learn the decision now.
        let _ = self
            .core
            .send(Inbound::Control(Control::Changed(presentity.clone())))
            .await;
        tracing::info!(%presentity, %watcher, decision = decision.as_str(), "presence rule set through the admin API");
        Ok(Response::new(pb::SetPresenceRuleResponse {
            presentity: presentity.to_string(),
            watcher: watcher.to_string(),
        }))
    }

    async fn get_presence(
        &self,
        r: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let (presentity, key) = aor_key("presentity", &r.get_ref().presentity)?;
        let (_, result) = self.ask(|reply| AdminQuery::Lookup { key, reply }).await?;
        let ok = result.map_err(|e| Status::unavailable(format!("lookup failed: {e}")))?;
        let now_ms = crate::clock::wall_ms();
        let (publications, rules) = crate::farm::presence_of(&ok.entries, now_ms);
        let composed =
            ringmesh_proxy::presence::compose(&presentity.to_string(), &publications, now_ms);
        Ok(Response::new(pb::GetPresenceResponse {
            presentity: presentity.to_string(),
            rules: rules
                .iter()
                .map(|r| pb::PresenceRule {
                    watcher: String::from_utf8_lossy(&r.watcher).into_owned(),
                    decision: match r.decision {
                        Decision::Allow => pb::PresenceDecision::Allow,
                        Decision::Block => pb::PresenceDecision::Block,
                        Decision::Pending => pb::PresenceDecision::Pending,
                    } as i32,
                })
                .collect(),
            publications: publications
                .iter()
                .map(|p| pb::PresencePublication {
                    etag: p.etag_text(),
                    expires_unix_ms: p.expires_at_ms,
                    document: String::from_utf8_lossy(&p.document).into_owned(),
                })
                .collect(),
            composed,
        }))
    }

    async fn add_gateway(
        &self,
        r: Request<pb::AddGatewayRequest>,
    ) -> Result<Response<pb::AddGatewayResponse>, Status> {
        self.admit(&r, Need::Admin)?;
        let g = r
            .into_inner()
            .gateway
            .ok_or_else(|| Status::invalid_argument("gateway: is required"))?;
        let (addr, transport) = gateways::parse_uri(&g.uri)
            .map_err(|m| Status::invalid_argument(format!("gateway.uri: {m}")))?;
        let record = GatewayRecord {
            name: g.name,
            addr,
            transport,
            prefixes: g.prefixes,
            priority: g.priority,
            weight: g.weight,
            capacity: g.capacity,
            region: g.region,
            expires_at_ms: crate::clock::wall_ms() + gateways::LIFETIME_MS,
        };
        record
            .check()
            .map_err(|m| Status::invalid_argument(format!("gateway.{m}")))?;
        let spec = EntrySpec {
            id: record.entry_id(),
            value: Some(record.encode()),
            expires_at_ms: record.expires_at_ms,
            floor: None,
        };
        self.write(Key::hash(gateways::KEY_MATERIAL), spec).await?;
        self.core_gateways_changed().await;
        tracing::info!(gateway = %record.name, uri = %record.uri(), prefixes = ?record.prefixes, "gateway added through the admin API");
        Ok(Response::new(pb::AddGatewayResponse {
            gateway: Some(gateway_pb(&record, None)),
        }))
    }

    async fn list_gateways(
        &self,
        r: Request<pb::ListGatewaysRequest>,
    ) -> Result<Response<pb::ListGatewaysResponse>, Status> {
        self.admit(&r, Need::Read)?;
        let mut records = self.gateway_records().await?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        let states = self.ask_core(Control::Gateways).await?;
        let gateways = records
            .iter()
            .map(|rec| {
                let state = states.iter().find(|s| s.rec.name == rec.name);
                gateway_pb(rec, state)
            })
            .collect();
        Ok(Response::new(pb::ListGatewaysResponse { gateways }))
    }

    async fn remove_gateway(
        &self,
        r: Request<pb::RemoveGatewayRequest>,
    ) -> Result<Response<pb::RemoveGatewayResponse>, Status> {
        self.admit(&r, Need::Admin)?;
        let name = r.into_inner().name;
        discovery::check_label("name", &name, false).map_err(Status::invalid_argument)?;
        let removed = self.gateway_records().await?.iter().any(|g| g.name == name);
        // A tombstone that outlives any entry of that name.
        let spec = EntrySpec {
            id: gateways::entry_id(&name),
            value: None,
            expires_at_ms: crate::clock::wall_ms() + gateways::LIFETIME_MS,
            floor: None,
        };
        self.write(Key::hash(gateways::KEY_MATERIAL), spec).await?;
        self.core_gateways_changed().await;
        tracing::info!(gateway = %name, removed, "gateway removed through the admin API");
        Ok(Response::new(pb::RemoveGatewayResponse { removed }))
    }

    type SipTraceStream = TraceStream;

    async fn sip_trace(
        &self,
        r: Request<pb::SipTraceRequest>,
    ) -> Result<Response<TraceStream>, Status> {
        self.admit(&r, Need::Admin)?;
        let req = r.into_inner();
        let aor = if req.aor.is_empty() {
            None
        } else {
            Some(aor_key("aor", &req.aor)?.0)
        };
        let node_id = hex::encode(self.facts.node_id);
        let mut rx = self.trace.subscribe();
        let max = req.max_messages;
        let stream = async_stream_like(&self.tasks, move |tx| async move {
            let mut sent = 0u32;
            let mut dropped = 0u32;
            loop {
                let rec = match rx.recv().await {
                    Ok(r) => r,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        dropped = dropped.saturating_add(n as u32);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Ok(msg) = Message::parse(rec.raw.clone()) else {
                    continue;
                };
                if !req.call_id.is_empty() && msg.call_id() != req.call_id.as_bytes() {
                    continue;
                }
                if !req.method.is_empty()
                    && !msg
                        .method()
                        .as_bytes()
                        .eq_ignore_ascii_case(req.method.as_bytes())
                {
                    continue;
                }
                if let Some(a) = &aor {
                    let mine = |u: &ringmesh_sip::Uri<'_>| Aor::from_uri(u).is_ok_and(|x| &x == a);
                    let ruri = msg.request_uri();
                    if !(mine(msg.to_hdr().uri())
                        || mine(msg.from_hdr().uri())
                        || ruri.as_ref().is_some_and(mine))
                    {
                        continue;
                    }
                }
                // Credentials never leave the node, bodies only when asked.
                let head_len = rec.raw.len() - msg.body().len();
                let mut raw = crate::trace::redact_credentials(&rec.raw[..head_len]);
                if req.include_bodies {
                    raw.extend_from_slice(msg.body());
                }
                let ev = pb::SipTraceEvent {
                    time_unix_ms: rec.at_ms,
                    node_id: node_id.clone(),
                    direction: if rec.inbound {
                        pb::Direction::In as i32
                    } else {
                        pb::Direction::Out as i32
                    },
                    transport: rec.transport.to_string(),
                    local_addr: String::new(),
                    remote_addr: rec.remote,
                    method: msg.method().to_string(),
                    status: u32::from(msg.status().unwrap_or(0)),
                    call_id: String::from_utf8_lossy(msg.call_id()).into_owned(),
                    message: raw,
                    dropped: std::mem::take(&mut dropped),
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                sent += 1;
                if max > 0 && sent >= max {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task (one of the node's) through a bounded channel.
fn async_stream_like<F, Fut>(tasks: &Tasks, f: F) -> TraceStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::SipTraceEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tasks.spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Binds the admin API (over mutual TLS when `tls` is given); returns the
/// bound address and the server, which serves until dropped.
pub async fn bind(
    addr: SocketAddr,
    service: AdminService,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = builder
            .timeout(DEADLINE)
            .add_service(AdminServer::new(service))
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "admin API stopped");
        }
    };
    Ok((local, server))
}

fn instance_pb(r: ServiceRecord) -> pb::ServiceInstance {
    pb::ServiceInstance {
        name: r.name,
        uri: r.uri,
        region: r.region,
        capacity: r.capacity,
        load: r.load,
        expires_unix_ms: r.expires_at_ms,
    }
}

fn gateway_pb(rec: &GatewayRecord, state: Option<&gateways::GatewayState>) -> pb::Gateway {
    pb::Gateway {
        name: rec.name.clone(),
        uri: rec.uri(),
        prefixes: rec.prefixes.clone(),
        priority: rec.priority,
        weight: rec.weight,
        capacity: rec.capacity,
        region: rec.region.clone(),
        up: state.is_some_and(|s| s.up),
        active_calls: state.map_or(0, |s| s.active),
    }
}
