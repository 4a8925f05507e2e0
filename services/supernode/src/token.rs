//! Signed flow tokens carried in Record-Route (RFC 5626 §5.3 style).
//!
//! When a supernode record-routes for a leaf it serves, it puts in the user
//! part of its Record-Route URI a token naming the edge supernode (its
//! Node-ID) and how that edge reaches the leaf. Any supernode holding the
//! farm secret can verify the token, so an in-dialog request is routed to
//! the right edge and down the right flow without any per-dialog state, and
//! a dialog outlives every supernode that is not a leaf's edge. The HMAC
//! also means a leaf cannot forge a token to make the farm relay for it.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Transport;
use crate::location::FlowRef;

const VERSION: u8 = 1;
const MAC_LEN: usize = 10;

/// Where the edge sends requests for the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// An existing flow: the UDP peer of a socket, or a connection.
    Flow(FlowRef),
    /// An address to send to (UDP) or connect to (TCP).
    Addr {
        transport: Transport,
        addr: SocketAddr,
    },
    /// Another supernode, over its overlay link.
    Peer([u8; 16]),
}

impl Dest {
    pub fn transport(&self) -> Transport {
        match self {
            Dest::Flow(FlowRef::Udp { .. }) => Transport::Udp,
            Dest::Flow(FlowRef::Conn { .. }) => Transport::Tcp,
            Dest::Addr { transport, .. } => *transport,
            Dest::Peer(_) => Transport::Tcp,
        }
    }
    /// The leaf's address, for flows and addresses.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Dest::Flow(f) => Some(f.peer()),
            Dest::Addr { addr, .. } => Some(*addr),
            Dest::Peer(_) => None,
        }
    }
    /// Whether the transport below is reliable (no retransmissions).
    pub fn reliable(&self) -> bool {
        self.transport() == Transport::Tcp
    }
    pub fn is_leaf(&self) -> bool {
        !matches!(self, Dest::Peer(_))
    }
}

/// The contents of a flow token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowToken {
    /// The edge supernode's Node-ID.
    pub node: [u8; 16],
    pub dest: Dest,
}

/// Signs and verifies tokens with the farm secret.
#[derive(Debug, Clone)]
pub struct TokenKey {
    key: [u8; 32],
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> TokenKey {
        // Derive a key for this use only, so the farm secret can key other
        // things (digest nonces) without cross-protocol reuse.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(b"ringmesh flow token v1");
        TokenKey {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// The token as a URI user part (base64url, no padding).
    pub fn encode(&self, t: &FlowToken) -> String {
        let mut b = Vec::with_capacity(48);
        b.push(VERSION);
        b.extend_from_slice(&t.node);
        let peer = match t.dest {
            Dest::Flow(FlowRef::Udp { socket, peer }) => {
                b.push(1);
                b.extend_from_slice(&socket.to_be_bytes());
                peer
            }
            Dest::Flow(FlowRef::Conn { id, peer }) => {
                b.push(2);
                b.extend_from_slice(&id.to_be_bytes());
                peer
            }
            Dest::Addr { transport, addr } => {
                b.push(if transport == Transport::Udp { 3 } else { 4 });
                addr
            }
            Dest::Peer(node) => {
                b.push(5);
                b.extend_from_slice(&node);
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        match peer.ip() {
            IpAddr::V4(ip) => {
                b.push(4);
                b.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                b.push(6);
                b.extend_from_slice(&ip.octets());
            }
        }
        b.extend_from_slice(&peer.port().to_be_bytes());
        let mac = self.mac(&b);
        b.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(b)
    }

    /// Verifies and decodes a token; `None` for anything forged or garbled.
    pub fn decode(&self, text: &[u8]) -> Option<FlowToken> {
        let b = URL_SAFE_NO_PAD.decode(text).ok()?;
        if b.len() < MAC_LEN + 1 {
            return None;
        }
        let (data, mac) = b.split_at(b.len() - MAC_LEN);
        // Constant-time comparison through the Mac API.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(data);
        m.verify_truncated_left(mac).ok()?;
        let mut r = Reader(data);
        if r.u8()? != VERSION {
            return None;
        }
        let node: [u8; 16] = r.take(16)?.try_into().ok()?;
        let kind = r.u8()?;
        let mut peer_node = [0u8; 16];
        let extra = match kind {
            1 => u64::from(u16::from_be_bytes(r.take(2)?.try_into().ok()?)),
            2 => u64::from_be_bytes(r.take(8)?.try_into().ok()?),
            3 | 4 => 0,
            5 => {
                peer_node = r.take(16)?.try_into().ok()?;
                0
            }
            _ => return None,
        };
        let ip: IpAddr = match r.u8()? {
            4 => <[u8; 4]>::try_from(r.take(4)?).ok()?.into(),
            6 => <[u8; 16]>::try_from(r.take(16)?).ok()?.into(),
            _ => return None,
        };
        let port = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        if !r.0.is_empty() {
            return None;
        }
        let peer = SocketAddr::new(ip, port);
        let dest = match kind {
            1 => Dest::Flow(FlowRef::Udp {
                socket: extra as u16,
                peer,
            }),
            2 => Dest::Flow(FlowRef::Conn { id: extra, peer }),
            3 => Dest::Addr {
                transport: Transport::Udp,
                addr: peer,
            },
            4 => Dest::Addr {
                transport: Transport::Tcp,
                addr: peer,
            },
            _ => Dest::Peer(peer_node),
        };
        Some(FlowToken { node, dest })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind() {
        let k = TokenKey::new(b"farm secret");
        let node = [7u8; 16];
        for dest in [
            Dest::Flow(FlowRef::Udp {
                socket: 3,
                peer: "192.0.2.1:5060".parse().unwrap(),
            }),
            Dest::Flow(FlowRef::Conn {
                id: u64::MAX - 1,
                peer: "[2001:db8::1]:5070".parse().unwrap(),
            }),
            Dest::Addr {
                transport: Transport::Udp,
                addr: "10.0.0.1:5062".parse().unwrap(),
            },
            Dest::Addr {
                transport: Transport::Tcp,
                addr: "10.0.0.1:5062".parse().unwrap(),
            },
            Dest::Peer([5; 16]),
        ] {
            let t = FlowToken { node, dest };
            let s = k.encode(&t);
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "usable as a URI user part"
            );
            assert_eq!(k.decode(s.as_bytes()), Some(t));
        }
    }

    #[test]
    fn forgeries_fail() {
        let k = TokenKey::new(b"farm secret");
        let t = FlowToken {
            node: [1; 16],
            dest: Dest::Flow(FlowRef::Conn {
                id: 9,
                peer: "192.0.2.1:1".parse().unwrap(),
            }),
        };
        let s = k.encode(&t);
        assert_eq!(TokenKey::new(b"other farm").decode(s.as_bytes()), None);
        let mut raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
        raw[20] ^= 1;
        assert_eq!(k.decode(URL_SAFE_NO_PAD.encode(&raw).as_bytes()), None);
        assert_eq!(k.decode(b"alice"), None);
        assert_eq!(k.decode(b""), None);
    }
}
