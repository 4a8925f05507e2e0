//! Overlay links: one QUIC connection per neighbour, mutual TLS with the
//! farm CA, Node-IDs proven by certificates.
//!
//! Each side of a link opens one unidirectional stream and writes
//! length-prefixed frames on it: first a hello (protocol version and the
//! Node-ID it claims), then overlay messages (protobuf `Envelope`s) and SIP
//! messages between supernodes. A peer whose certificate does not chain to
//! the farm CA fails the TLS handshake; a peer whose hello claims another
//! Node-ID than its certificate's, or speaks an incompatible version, is
//! refused. Every refusal is logged and counted.
//!
//! When two nodes dial each other at once, the connection opened by the
//! lower Node-ID survives, so each pair keeps exactly one. The hello also
//! names the sender's process (a random boot id, appended: older nodes
//! ignore it): a link from a new process of a peer replaces the one to its
//! previous process at once, which after a kill would otherwise stay until
//! the idle timeout and turn the restarted node's dials away as
//! duplicates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::pki::Identity;
use crate::tasks::Tasks;

/// Largest frame a link accepts (a hand-off batch, a SIP message).
pub const MAX_FRAME: usize = 8 << 20;

const KIND_HELLO: u8 = 0;
const KIND_OVERLAY: u8 = 1;
const KIND_SIP: u8 = 2;

pub type NodeId = [u8; 16];

/// What a link carries after its hello.
#[derive(Debug, Clone)]
pub enum Frame {
    /// An encoded overlay `Envelope`.
    Overlay(Bytes),
    /// A SIP message between supernodes.
    Sip(Bytes),
}

/// What the link layer reports.
#[derive(Debug)]
pub enum LinkEvent {
    Up { peer: NodeId, addr: SocketAddr },
    Down { peer: NodeId },
    Frame { peer: NodeId, frame: Frame },
}

/// An address being dialled, no longer once dropped.
struct Dial<'a> {
    dialing: &'a Mutex<std::collections::HashSet<SocketAddr>>,
    addr: SocketAddr,
}

impl Drop for Dial<'_> {
    fn drop(&mut self) {
        self.dialing.lock().remove(&self.addr);
    }
}

/// The protocol version spoken on links, checked in the hello: the
/// overlay's (same major, at most one minor apart: rolling upgrades work).
pub use ringmesh_overlay::ProtocolVersion as LinkVersion;

#[derive(Debug)]
struct Peer {
    conn: quinn::Connection,
    tx: mpsc::Sender<Frame>,
    serial: u64,
    addr: SocketAddr,
    /// The peer process's boot id (None: a node too old to send one).
    boot: Option<u64>,
}

/// The link manager of one supernode.
#[derive(Clone)]
pub struct Links {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    /// This process's boot id, sent in every hello.
    boot: u64,
    version: LinkVersion,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    peers: Mutex<HashMap<NodeId, Peer>>,
    /// Node-IDs the farm CA revoked: never linked again.
    revoked: Mutex<std::collections::HashSet<NodeId>>,
    /// Dials in progress, so repeated asks do not pile up handshakes.
    dialing: Mutex<std::collections::HashSet<SocketAddr>>,
    events: mpsc::Sender<LinkEvent>,
    metrics: Metrics,
    serial: AtomicU64,
    tasks: Tasks,
    /// Each link's frame writer, so that a shutdown can wait until what
    /// they were given is sent.
    writers: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("me", &hex::encode(self.inner.me))
            .finish_non_exhaustive()
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        Duration::from_secs(5)
            .try_into()
            .expect("valid idle timeout"),
    ));
    Arc::new(t)
}

impl Links {
    /// Binds the QUIC endpoint and starts accepting links.
    pub fn bind(
        addr: SocketAddr,
        identity: &Identity,
        alpn: &[u8],
        version: LinkVersion,
        events: mpsc::Sender<LinkEvent>,
        metrics: Metrics,
        tasks: Tasks,
    ) -> anyhow::Result<Links> {
        let server_tls = identity.server_config(alpn)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
        server.transport_config(transport_config());
        let client_tls = identity.client_config(alpn)?;
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
        client.transport_config(transport_config());
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let links = Links {
            inner: Arc::new(Inner {
                me: identity.node_id,
                boot: rand::random(),
                version,
                endpoint,
                client,
                peers: Mutex::new(HashMap::new()),
                dialing: Mutex::new(std::collections::HashSet::new()),
                revoked: Mutex::new(std::collections::HashSet::new()),
                events,
                metrics,
                serial: AtomicU64::new(1),
                tasks,
                writers: tokio_util::task::TaskTracker::new(),
            }),
        };
        let acceptor = links.clone();
        links.inner.tasks.spawn(async move {
            while let Some(incoming) = acceptor.inner.endpoint.accept().await {
                let l = acceptor.clone();
                acceptor.inner.tasks.spawn(async move {
                    let remote = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => l.established(conn, None, None).await,
                        Err(e) => l.refused(remote, &format!("handshake failed: {e}")),
                    }
                });
            }
        });
        Ok(links)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Dials `addr` unless a link to `expect` exists; `expect` is the
    /// Node-ID the peer must prove (None when dialling a seed).
    pub fn connect(&self, addr: SocketAddr, expect: Option<NodeId>) {
        {
            let peers = self.inner.peers.lock();
            let linked = match expect {
                Some(id) => id == self.inner.me || peers.contains_key(&id),
                None => peers.values().any(|p| p.addr == addr),
            };
            if linked || !self.inner.dialing.lock().insert(addr) {
                return;
            }
        }
        let l = self.clone();
        self.inner.tasks.spawn(async move {
            match l.inner.endpoint.connect_with(
                l.inner.client.clone(),
                addr,
                crate::pki::NODE_DNS_NAME,
            ) {
                Ok(connecting) => {
                    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                        Ok(Ok(conn)) => return l.established(conn, expect, Some(addr)).await,
                        // Nobody there yet (a node starting): not a refusal.
                        Ok(Err(quinn::ConnectionError::TimedOut)) | Err(_) => {
                            tracing::debug!(%addr, "overlay peer not answering")
                        }
                        Ok(Err(e)) => l.refused(addr, &format!("handshake failed: {e}")),
                    }
                }
                Err(e) => l.refused(addr, &format!("cannot dial: {e}")),
            }
            l.inner.dialing.lock().remove(&addr);
        });
    }

    /// Queues a frame to a linked peer; false when there is no link or its
    /// queue is full (the caller treats the peer as unreachable for now).
    pub fn send(&self, peer: &NodeId, frame: Frame) -> bool {
        match self.inner.peers.lock().get(peer) {
            Some(p) => p.tx.try_send(frame).is_ok(),
            None => false,
        }
    }

    /// Closes every link, for a process about to exit: first each link
    /// sends what it was given (the last responses of a drain) and ends its
    /// stream, and the peers read it to the end; then the endpoint closes.
    /// Closing the endpoint at once would throw away what is still queued.
    /// Each wait is at most a second.
    pub async fn shutdown(&self) {
        // Dropping the peers' senders lets each writer finish its queue.
        drop(std::mem::take(&mut *self.inner.peers.lock()));
        self.inner.writers.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.writers.wait()).await;
        self.inner
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    /// Revokes Node-IDs: their links close now and are refused from now on.
    /// Returns the ones newly revoked.
    pub fn revoke(&self, ids: &[NodeId]) -> Vec<NodeId> {
        let fresh: Vec<NodeId> = {
            let mut r = self.inner.revoked.lock();
            ids.iter().copied().filter(|id| r.insert(*id)).collect()
        };
        for id in &fresh {
            self.close(id, "certificate revoked");
            tracing::warn!(peer = %hex::encode(id), "node revoked by the farm CA; link closed");
        }
        fresh
    }

    /// Closes the link to `peer` (e.g. its certificate was revoked).
    pub fn close(&self, peer: &NodeId, reason: &str) {
        if let Some(p) = self.inner.peers.lock().remove(peer) {
            p.conn.close(quinn::VarInt::from_u32(1), reason.as_bytes());
        }
    }

    pub fn peers(&self) -> Vec<NodeId> {
        self.inner.peers.lock().keys().copied().collect()
    }

    /// Smoothed round-trip time of each link.
    pub fn rtts(&self) -> Vec<(NodeId, Duration)> {
        self.inner
            .peers
            .lock()
            .iter()
            .map(|(id, p)| (*id, p.conn.rtt()))
            .collect()
    }

    fn refused(&self, addr: SocketAddr, why: &str) {
        tracing::warn!(%addr, reason = why, "overlay link refused");
        self.inner
            .metrics
            .link_refusals
            .with_label_values(&[refusal_kind(why)])
            .inc();
    }

    /// Runs a link from its handshake to its end; `dialled` is the address
    /// this node dialled (None: the peer dialled), which stays marked as
    /// being dialled until the link is in the table or refused, so that no
    /// second dial races the hello exchange (the duplicate would replace
    /// this link, and the frames already sent on it would be lost).
    async fn established(
        &self,
        conn: quinn::Connection,
        expect: Option<NodeId>,
        dialled: Option<SocketAddr>,
    ) {
        let dial = dialled.map(|addr| Dial {
            dialing: &self.inner.dialing,
            addr,
        });
        let dialled = dialled.is_some();
        let addr = conn.remote_address();
        let Some(cert_id) = peer_node_id(&conn) else {
            conn.close(quinn::VarInt::from_u32(2), b"no Node-ID in certificate");
            return self.refused(addr, "certificate carries no Node-ID");
        };
        if self.inner.revoked.lock().contains(&cert_id) {
            conn.close(quinn::VarInt::from_u32(9), b"revoked");
            return self.refused(addr, "certificate revoked");
        }
        if expect.is_some_and(|e| e != cert_id) {
            conn.close(quinn::VarInt::from_u32(2), b"unexpected Node-ID");
            return self.refused(addr, "peer is not the node expected at this address");
        }
        // Our hello first, then theirs.
        let mut send = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => return self.refused(addr, &format!("no stream: {e}")),
        };
        let hello = encode_hello(&self.inner.me, self.inner.version, self.inner.boot);
        if send.write_all(&hello).await.is_err() {
            return self.refused(addr, "closed during hello");
        }
        let mut recv = match tokio::time::timeout(Duration::from_secs(5), conn.accept_uni()).await {
            Ok(Ok(r)) => r,
            // The peer kept the link the other side dialled.
            Ok(Err(quinn::ConnectionError::ApplicationClosed(c)))
                if c.error_code == quinn::VarInt::from_u32(7) =>
            {
                return;
            }
            _ => return self.refused(addr, "no hello"),
        };
        let (claimed, version, boot) = match read_frame(&mut recv).await {
            Ok((KIND_HELLO, body)) => match decode_hello(&body) {
                Some(h) => h,
                None => {
                    conn.close(quinn::VarInt::from_u32(3), b"malformed hello");
                    return self.refused(addr, "malformed hello");
                }
            },
            _ => {
                conn.close(quinn::VarInt::from_u32(3), b"expected hello");
                return self.refused(addr, "malformed hello");
            }
        };
        if claimed != cert_id {
            conn.close(
                quinn::VarInt::from_u32(4),
                b"claimed Node-ID differs from certificate",
            );
            return self.refused(addr, "claimed Node-ID does not match the certificate");
        }
        if !ringmesh_overlay::compatible(self.inner.version, version) {
            conn.close(quinn::VarInt::from_u32(5), b"incompatible version");
            return self.refused(addr, "incompatible protocol version");
        }
        if cert_id == self.inner.me {
            conn.close(quinn::VarInt::from_u32(6), b"self");
            return;
        }
        let (tx, rx) = mpsc::channel::<Frame>(4096);
        let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        {
            let mut peers = self.inner.peers.lock();
            if let Some(existing) = peers.get(&cert_id) {
                // A new process of the peer replaces its previous one's
                // link; between the same two processes (simultaneous
                // dials) the lower Node-ID's dial wins.
                let restarted = boot.is_some() && existing.boot.is_some() && boot != existing.boot;
                let mine_wins = (self.inner.me < cert_id) == dialled;
                if !restarted && !mine_wins {
                    drop(peers);
                    conn.close(quinn::VarInt::from_u32(7), b"duplicate link");
                    return;
                }
                existing
                    .conn
                    .close(quinn::VarInt::from_u32(7), b"duplicate link");
            }
            peers.insert(
                cert_id,
                Peer {
                    conn: conn.clone(),
                    tx,
                    serial,
                    addr,
                    boot,
                },
            );
        }
        drop(dial);
        self.inner
            .metrics
            .links
            .set(self.inner.peers.lock().len() as i64);
        let _ = self
            .inner
            .events
            .send(LinkEvent::Up {
                peer: cert_id,
                addr,
            })
            .await;
        tracing::info!(peer = %hex::encode(cert_id), %addr, "overlay link up");

        let writer = self
            .inner
            .tasks
            .spawn(self.inner.writers.track_future(write_frames(send, rx)));
        loop {
            match read_frame(&mut recv).await {
                Ok((KIND_OVERLAY, body)) => {
                    let _ = self
                        .inner
                        .events
                        .send(LinkEvent::Frame {
                            peer: cert_id,
                            frame: Frame::Overlay(body),
                        })
                        .await;
                }
                Ok((KIND_SIP, body)) => {
                    let _ = self
                        .inner
                        .events
                        .send(LinkEvent::Frame {
                            peer: cert_id,
                            frame: Frame::Sip(body),
                        })
                        .await;
                }
                Ok((kind, _)) => {
                    tracing::warn!(peer = %hex::encode(cert_id), kind, "unknown frame kind; closing link");
                    self.inner.metrics.link_malformed.inc();
                    conn.close(quinn::VarInt::from_u32(8), b"unknown frame");
                    break;
                }
                Err(_) => break,
            }
        }
        writer.abort();
        let removed = {
            let mut peers = self.inner.peers.lock();
            if peers.get(&cert_id).is_some_and(|p| p.serial == serial) {
                peers.remove(&cert_id);
                true
            } else {
                false
            }
        };
        self.inner
            .metrics
            .links
            .set(self.inner.peers.lock().len() as i64);
        if removed {
            tracing::info!(peer = %hex::encode(cert_id), "overlay link down");
            let _ = self
                .inner
                .events
                .send(LinkEvent::Down { peer: cert_id })
                .await;
        }
    }

    /// Counts a frame the overlay core could not decode, and drops the link.
    pub fn malformed(&self, peer: &NodeId) {
        self.inner.metrics.link_malformed.inc();
        self.close(peer, "malformed overlay message");
    }
}

fn refusal_kind(why: &str) -> &'static str {
    if why.contains("revoked") {
        "revoked"
    } else if why.contains("Node-ID") || why.contains("expected") {
        "identity"
    } else if why.contains("handshake") {
        "tls"
    } else if why.contains("version") {
        "version"
    } else {
        "other"
    }
}

fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    crate::pki::node_id_of(certs.first()?)
}

fn encode_hello(me: &NodeId, v: LinkVersion, boot: u64) -> Bytes {
    let mut body = BytesMut::with_capacity(28);
    body.put_slice(me);
    body.put_u16(v.major);
    body.put_u16(v.minor);
    body.put_u64(boot);
    frame_bytes(KIND_HELLO, &body)
}

/// The Node-ID, version and (when sent: nodes of protocol 1.1 and later)
/// boot id of a hello; bytes past them are ignored, for later additions.
fn decode_hello(body: &[u8]) -> Option<(NodeId, LinkVersion, Option<u64>)> {
    if body.len() < 20 {
        return None;
    }
    let id: NodeId = body[..16].try_into().ok()?;
    let major = u16::from_be_bytes([body[16], body[17]]);
    let minor = u16::from_be_bytes([body[18], body[19]]);
    let boot = body
        .get(20..28)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
    Some((id, LinkVersion { major, minor }, boot))
}

fn frame_bytes(kind: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u32(body.len() as u32 + 1);
    b.put_u8(kind);
    b.put_slice(body);
    b.freeze()
}

async fn read_frame(recv: &mut quinn::RecvStream) -> anyhow::Result<(u8, Bytes)> {
    let len = recv.read_u32().await? as usize;
    if len == 0 || len > MAX_FRAME {
        anyhow::bail!("bad frame length {len}");
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await?;
    let kind = buf[0];
    Ok((kind, Bytes::from(buf).slice(1..)))
}

async fn write_frames(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Frame>) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        let mut out = BytesMut::new();
        for f in batch.drain(..) {
            let (kind, body) = match f {
                Frame::Overlay(b) => (KIND_OVERLAY, b),
                Frame::Sip(b) => (KIND_SIP, b),
            };
            out.put_u32(body.len() as u32 + 1);
            out.put_u8(kind);
            out.put_slice(&body);
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
    // The link is being shut down: end the stream, and wait until the peer
    // has read it all (or stopped reading).
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_versions() {
        let f = encode_hello(&[9; 16], LinkVersion { major: 1, minor: 3 }, 77);
        assert_eq!(f[4], KIND_HELLO);
        let (id, v, boot) = decode_hello(&f[5..]).unwrap();
        assert_eq!(id, [9; 16]);
        assert_eq!(v, LinkVersion { major: 1, minor: 3 });
        assert_eq!(boot, Some(77));
        // A hello of a node that sends no boot id (the previous release).
        let (_, _, boot) = decode_hello(&f[5..25]).unwrap();
        assert_eq!(boot, None);
        assert!(decode_hello(&[0; 5]).is_none());
    }
}
