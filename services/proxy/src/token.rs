//! Sealed flow tokens carried in Record-Route (RFC 5626 §5.3 style).
//!
//! When a supernode record-routes for a leaf it serves, it puts in the user
//! part of its Record-Route URI a token naming the edge supernode (its
//! Node-ID) and how that edge reaches the leaf. Any supernode holding the
//! farm secret opens the token, so an in-dialog request is routed to the
//! right edge and down the right flow without any per-dialog state, and a
//! dialog outlives every supernode that is not a leaf's edge.
//!
//! ```text
//! token     = base64url-nopad( 2 ‖ key-version ‖ AES-256-GCM-SIV(key, plaintext, aad) )
//! plaintext = issued (u32, Unix seconds) ‖ edge Node-ID (16) ‖ kind (1) ‖ flow id
//!             ‖ address family (1) ‖ address (4 or 16) ‖ port (2)
//! aad       = "ringmesh flow token v2" 0 ‖ len(Call-ID) (u16) ‖ Call-ID ‖ caller's tag
//! key       = HMAC-SHA256(farm secret of that version, "ringmesh flow token v2")
//! ```
//!
//! - **Sealed**, so a phone learns nothing of another phone's address from
//!   the Record-Route it receives, and cannot forge or alter a token.
//! - **Bound to its dialog**: the Call-ID and the tag of the party that
//!   started it are the associated data, so a token opens only for a
//!   request of that dialog (the caller's tag is its From tag, or the To
//!   tag of a request from the callee).
//! - **Dated**: a token older than the longest dialog the operator allows
//!   (`max_age`) no longer opens.
//! - **Versioned keys**: tokens are sealed under the first secret and
//!   opened under any listed one, so the farm secret rotates without
//!   breaking a dialog: add the new secret everywhere, then make it first,
//!   then, once `max_age` has passed, drop the old one.
//!
//! The nonce is fixed: AES-GCM-SIV is nonce-misuse resistant, and a fixed
//! nonce only shows that two tokens are the same token (same flow, dialog
//! and second).

use std::net::{IpAddr, SocketAddr};

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Buf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::binding::{FlowRef, Transport, get_array};

const VERSION: u8 = 2;
const LABEL: &[u8] = b"ringmesh flow token v2";
// Kinds of destination in a token. A connection's or stream address's
// transport code ([`Transport::stream_code`], 0 for TCP) is in the high
// half of the kind byte.
const KIND_CONN: u8 = 2;
const KIND_UDP_ADDR: u8 = 3;
const KIND_STREAM_ADDR: u8 = 4;
/// How far a token's issue time may be ahead of this node's clock.
const MAX_SKEW_SECS: u64 = 60;

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
            Dest::Flow(f) => f.transport(),
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
        self.transport().is_stream()
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

/// The dialog a token belongs to: its Call-ID and the tag of the party
/// that started it.
#[derive(Debug, Clone, Copy)]
pub struct Dialog<'a> {
    pub call_id: &'a [u8],
    pub caller_tag: &'a [u8],
}

/// Seals and opens tokens with the farm's secrets.
#[derive(Clone)]
pub struct TokenKeys {
    /// (version, cipher); the first seals.
    keys: Vec<(u8, Aes256GcmSiv)>,
    max_age_secs: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<u8> = self.keys.iter().map(|(v, _)| *v).collect();
        f.debug_struct("TokenKeys")
            .field("versions", &versions)
            .field("max_age_secs", &self.max_age_secs)
            .finish()
    }
}

impl TokenKeys {
    /// `secrets` as (version, secret), the one to seal with first; tokens
    /// older than `max_age_secs` do not open. `secrets` must not be empty.
    pub fn new(secrets: &[(u8, Vec<u8>)], max_age_secs: u64) -> TokenKeys {
        assert!(!secrets.is_empty(), "a farm needs a secret");
        let keys = secrets
            .iter()
            .map(|(v, secret)| {
                // A key for this use only, so the farm secret can key other
                // things (digest nonces) without cross-protocol reuse.
                let mut mac =
                    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
                mac.update(LABEL);
                let key = mac.finalize().into_bytes();
                (*v, Aes256GcmSiv::new(&key))
            })
            .collect();
        TokenKeys { keys, max_age_secs }
    }

    /// The token as a URI user part (base64url, no padding).
    pub fn seal(&self, t: &FlowToken, dialog: Dialog<'_>, now_secs: u64) -> String {
        let mut b = Vec::with_capacity(48);
        b.extend_from_slice(&(now_secs.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        b.extend_from_slice(&t.node);
        let peer = match t.dest {
            Dest::Flow(FlowRef::Udp { socket, peer }) => {
                b.push(1);
                b.extend_from_slice(&socket.to_be_bytes());
                peer
            }
            Dest::Flow(FlowRef::Conn {
                id,
                peer,
                transport,
            }) => {
                b.push(KIND_CONN | transport.stream_code() << 4);
                b.extend_from_slice(&id.to_be_bytes());
                peer
            }
            Dest::Addr {
                transport: Transport::Udp,
                addr,
            } => {
                b.push(KIND_UDP_ADDR);
                addr
            }
            Dest::Addr { transport, addr } => {
                b.push(KIND_STREAM_ADDR | transport.stream_code() << 4);
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
        self.seal_raw(VERSION, &b, &aad(dialog))
    }

    /// `plain` sealed under the current key with `aad`: base64url of
    /// `first ‖ key version ‖ ciphertext`.
    fn seal_raw(&self, first: u8, plain: &[u8], aad: &[u8]) -> String {
        let (version, cipher) = &self.keys[0];
        let sealed = cipher
            .encrypt(&Nonce::default(), Payload { msg: plain, aad })
            .expect("sealing a short buffer cannot fail");
        let mut out = Vec::with_capacity(2 + sealed.len());
        out.extend_from_slice(&[first, *version]);
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// What [`TokenKeys::seal_raw`] wrote with `first`, decoded (its
    /// ciphertext from byte 2 on), and the cipher of its key version;
    /// `None` for a text longer than `max_len`, not base64url, of another
    /// kind or under an unknown key.
    fn unseal_raw(
        &self,
        first: u8,
        text: &[u8],
        max_len: usize,
    ) -> Option<(&Aes256GcmSiv, Vec<u8>)> {
        if text.len() > max_len {
            return None;
        }
        let b = URL_SAFE_NO_PAD.decode(text).ok()?;
        let (&[kind, version], _) = b.split_first_chunk::<2>()?;
        if kind != first {
            return None;
        }
        let (_, cipher) = self.keys.iter().find(|(v, _)| *v == version)?;
        Some((cipher, b))
    }

    /// Opens a token for a request of the dialog with `call_id` whose
    /// caller's tag is one of `tags` (its From tag or To tag); `None` for
    /// anything forged, garbled, expired, sealed under an unknown key or
    /// for another dialog.
    pub fn open(
        &self,
        text: &[u8],
        call_id: &[u8],
        tags: &[&[u8]],
        now_secs: u64,
    ) -> Option<FlowToken> {
        let (cipher, b) = self.unseal_raw(VERSION, text, 256)?;
        let sealed = &b[2..];
        let plain = tags.iter().find_map(|tag| {
            let dialog = Dialog {
                call_id,
                caller_tag: tag,
            };
            cipher
                .decrypt(
                    &Nonce::default(),
                    Payload {
                        msg: sealed,
                        aad: &aad(dialog),
                    },
                )
                .ok()
        })?;
        let mut r = plain.as_slice();
        let issued = u64::from(r.try_get_u32().ok()?);
        if now_secs > issued.saturating_add(self.max_age_secs)
            || issued > now_secs.saturating_add(MAX_SKEW_SECS)
        {
            return None;
        }
        let node = get_array::<16>(&mut r)?;
        let kind = r.try_get_u8().ok()?;
        // A stream transport's code is in the high half of its kind.
        let stream = Transport::from_stream_code(kind >> 4)?;
        let kind = kind & 0x0f;
        if stream != Transport::Tcp && kind != KIND_CONN && kind != KIND_STREAM_ADDR {
            return None;
        }
        let mut peer_node = [0u8; 16];
        let extra = match kind {
            1 => u64::from(r.try_get_u16().ok()?),
            KIND_CONN => r.try_get_u64().ok()?,
            KIND_UDP_ADDR | KIND_STREAM_ADDR => 0,
            5 => {
                peer_node = get_array(&mut r)?;
                0
            }
            _ => return None,
        };
        let ip: IpAddr = match r.try_get_u8().ok()? {
            4 => get_array::<4>(&mut r)?.into(),
            6 => get_array::<16>(&mut r)?.into(),
            _ => return None,
        };
        let port = r.try_get_u16().ok()?;
        if r.has_remaining() {
            return None;
        }
        let peer = SocketAddr::new(ip, port);
        let dest = match kind {
            1 => Dest::Flow(FlowRef::Udp {
                socket: extra as u16,
                peer,
            }),
            KIND_CONN => Dest::Flow(FlowRef::Conn {
                id: extra,
                peer,
                transport: stream,
            }),
            KIND_UDP_ADDR => Dest::Addr {
                transport: Transport::Udp,
                addr: peer,
            },
            KIND_STREAM_ADDR => Dest::Addr {
                transport: stream,
                addr: peer,
            },
            _ => Dest::Peer(peer_node),
        };
        Some(FlowToken { node, dest })
    }
}

impl TokenKeys {
    /// Whether a Route of `msg` carries a token of this farm that opens for
    /// its dialog: the request belongs to a dialog the farm holds. Any
    /// node can tell, from the message alone (overload control asks).
    pub fn routes_dialog(&self, msg: &ringmesh_sip::Message, now_secs: u64) -> bool {
        let tags: Vec<&[u8]> = [msg.from_tag(), msg.to_tag()]
            .into_iter()
            .flatten()
            .collect();
        msg.routes().any(|r| {
            r.uri()
                .user()
                .is_some_and(|u| self.open(u, msg.call_id(), &tags, now_secs).is_some())
        })
    }
}

/// What a sealed name (not a flow token) stands for. Each purpose has its
/// own associated data, so a name sealed for one never opens as another,
/// nor as a flow token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A temporary GRUU (RFC 5627 §3.2): an AOR and an instance.
    TempGruu,
    /// A Service-Route (RFC 3608): the AOR it was issued to.
    ServiceRoute,
    /// The farm's Contact in a subscription dialog: the resource and the
    /// subscription's id.
    Subscription,
    /// The Route an application server sends a request back on: the
    /// served user, the session case and the last criterion served.
    ServiceReturn,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::TempGruu => b"ringmesh temporary gruu v1",
            Purpose::ServiceRoute => b"ringmesh service route v1",
            Purpose::Subscription => b"ringmesh subscription v1",
            Purpose::ServiceReturn => b"ringmesh service return v1",
        }
    }
}

/// The first byte of a sealed name (flow tokens start with [`VERSION`]).
const SEALED_NAME: u8 = 3;

impl TokenKeys {
    /// `plain` sealed for `purpose`, with the time it was sealed, as a URI
    /// user part (base64url). Two seals of the same thing in different
    /// seconds differ.
    pub fn seal_for(&self, purpose: Purpose, plain: &[u8], now_secs: u64) -> String {
        let mut b = Vec::with_capacity(4 + plain.len());
        b.extend_from_slice(&(now_secs.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        b.extend_from_slice(plain);
        self.seal_raw(SEALED_NAME, &b, purpose.label())
    }

    /// What a name sealed for `purpose` holds; `None` for anything forged,
    /// garbled, sealed under an unknown key or for another purpose.
    pub fn open_for(&self, purpose: Purpose, text: &[u8]) -> Option<Vec<u8>> {
        self.open_sealed(purpose, text).map(|(_, plain)| plain)
    }

    /// Like [`open_for`](Self::open_for), for a name sealed at most
    /// `max_age` seconds before `now_secs`.
    pub fn open_within(
        &self,
        purpose: Purpose,
        text: &[u8],
        now_secs: u64,
        max_age: u64,
    ) -> Option<Vec<u8>> {
        let (sealed_at, plain) = self.open_sealed(purpose, text)?;
        (now_secs.saturating_sub(sealed_at) <= max_age).then_some(plain)
    }

    /// The time a name was sealed at, and what it holds.
    fn open_sealed(&self, purpose: Purpose, text: &[u8]) -> Option<(u64, Vec<u8>)> {
        let (cipher, b) = self.unseal_raw(SEALED_NAME, text, 512)?;
        let plain = cipher
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: &b[2..],
                    aad: purpose.label(),
                },
            )
            .ok()?;
        let at = u32::from_be_bytes(plain.get(..4)?.try_into().ok()?);
        Some((u64::from(at), plain[4..].to_vec()))
    }
}

/// The associated data binding a token to its dialog.
fn aad(d: Dialog<'_>) -> Vec<u8> {
    let mut a = Vec::with_capacity(LABEL.len() + 3 + d.call_id.len() + d.caller_tag.len());
    a.extend_from_slice(LABEL);
    a.push(0);
    a.extend_from_slice(&(d.call_id.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    a.extend_from_slice(d.call_id);
    a.extend_from_slice(d.caller_tag);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn keys(secrets: &[(u8, &[u8])]) -> TokenKeys {
        let s: Vec<(u8, Vec<u8>)> = secrets.iter().map(|(v, k)| (*v, k.to_vec())).collect();
        TokenKeys::new(&s, DAY)
    }

    const DIALOG: Dialog<'static> = Dialog {
        call_id: b"call-1@192.0.2.1",
        caller_tag: b"a1",
    };

    fn open(k: &TokenKeys, s: &str, now: u64) -> Option<FlowToken> {
        k.open(
            s.as_bytes(),
            DIALOG.call_id,
            &[b"b7", DIALOG.caller_tag],
            now,
        )
    }

    #[test]
    fn sealed_names_open_only_for_their_purpose() {
        let k = keys(&[(1, b"farm secret")]);
        let gruu = k.seal_for(Purpose::TempGruu, b"sip:alice@x\0<urn:uuid:1>", NOW);
        assert_eq!(
            k.open_for(Purpose::TempGruu, gruu.as_bytes()).as_deref(),
            Some(&b"sip:alice@x\0<urn:uuid:1>"[..])
        );
        assert_ne!(
            gruu,
            k.seal_for(Purpose::TempGruu, b"sip:alice@x\0<urn:uuid:1>", NOW + 1),
            "a new one every second"
        );
        // Not as another purpose, not as a flow token, not under another
        // farm's secret, not altered.
        assert_eq!(k.open_for(Purpose::ServiceRoute, gruu.as_bytes()), None);
        assert_eq!(open(&k, &gruu, NOW), None);
        let other = keys(&[(1, b"another farm")]);
        assert_eq!(other.open_for(Purpose::TempGruu, gruu.as_bytes()), None);
        let mut bent = gruu.into_bytes();
        bent[10] = if bent[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(k.open_for(Purpose::TempGruu, &bent), None);
        // A flow token does not open as a sealed name either.
        let flow = k.seal(
            &FlowToken {
                node: [1; 16],
                dest: Dest::Peer([2; 16]),
            },
            DIALOG,
            NOW,
        );
        assert_eq!(k.open_for(Purpose::ServiceRoute, flow.as_bytes()), None);
    }

    #[test]
    fn round_trip_every_kind() {
        let k = keys(&[(1, b"farm secret")]);
        let node = [7u8; 16];
        for dest in [
            Dest::Flow(FlowRef::Udp {
                socket: 3,
                peer: "192.0.2.1:5060".parse().unwrap(),
            }),
            Dest::Flow(FlowRef::Conn {
                id: u64::MAX - 1,
                peer: "[2001:db8::1]:5070".parse().unwrap(),
                transport: Transport::Tcp,
            }),
            Dest::Flow(FlowRef::Conn {
                id: 12,
                peer: "192.0.2.9:5071".parse().unwrap(),
                transport: Transport::Tls,
            }),
            Dest::Flow(FlowRef::Conn {
                id: 13,
                peer: "192.0.2.9:5072".parse().unwrap(),
                transport: Transport::Wss,
            }),
            Dest::Addr {
                transport: Transport::Udp,
                addr: "10.0.0.1:5062".parse().unwrap(),
            },
            Dest::Addr {
                transport: Transport::Tcp,
                addr: "10.0.0.1:5062".parse().unwrap(),
            },
            Dest::Addr {
                transport: Transport::Tls,
                addr: "10.0.0.1:5061".parse().unwrap(),
            },
            Dest::Peer([5; 16]),
        ] {
            let t = FlowToken { node, dest };
            let s = k.seal(&t, DIALOG, NOW);
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "usable as a URI user part"
            );
            assert!(s.len() <= 96, "{} characters", s.len());
            assert_eq!(open(&k, &s, NOW + 10), Some(t));
        }
    }

    fn sample() -> FlowToken {
        FlowToken {
            node: [1; 16],
            dest: Dest::Flow(FlowRef::Conn {
                id: 9,
                peer: "192.0.2.1:1".parse().unwrap(),
                transport: Transport::Tcp,
            }),
        }
    }

    #[test]
    fn forgeries_alterations_and_other_farms_fail() {
        let k = keys(&[(1, b"farm secret")]);
        let s = k.seal(&sample(), DIALOG, NOW);
        assert_eq!(open(&keys(&[(1, b"other farm")]), &s, NOW), None);
        let raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            assert_eq!(
                open(&k, &URL_SAFE_NO_PAD.encode(&bad), NOW),
                None,
                "byte {i}"
            );
        }
        assert_eq!(open(&k, "alice", NOW), None);
        assert_eq!(open(&k, "", NOW), None);
        assert_eq!(open(&k, &"A".repeat(300), NOW), None);
    }

    #[test]
    fn the_phone_address_is_not_in_clear() {
        let k = keys(&[(1, b"farm secret")]);
        let raw = URL_SAFE_NO_PAD
            .decode(k.seal(&sample(), DIALOG, NOW))
            .unwrap();
        assert!(
            !raw.windows(4).any(|w| w == [192, 0, 2, 1]),
            "the leaf's address is sealed"
        );
        assert!(!raw.windows(16).any(|w| w == [1; 16]), "so is the edge");
    }

    #[test]
    fn a_token_opens_only_for_its_dialog() {
        let k = keys(&[(1, b"farm secret")]);
        let s = k.seal(&sample(), DIALOG, NOW);
        let t = Some(sample());
        // The caller's tag as the From tag, or the To tag of the callee.
        assert_eq!(
            k.open(s.as_bytes(), DIALOG.call_id, &[b"a1", b"b7"], NOW),
            t
        );
        assert_eq!(
            k.open(s.as_bytes(), DIALOG.call_id, &[b"b7", b"a1"], NOW),
            t
        );
        assert_eq!(
            k.open(s.as_bytes(), b"call-2@192.0.2.1", &[b"a1"], NOW),
            None
        );
        assert_eq!(
            k.open(s.as_bytes(), DIALOG.call_id, &[b"a2", b"b7"], NOW),
            None
        );
        assert_eq!(k.open(s.as_bytes(), DIALOG.call_id, &[], NOW), None);
    }

    #[test]
    fn a_token_lives_as_long_as_the_longest_dialog() {
        let k = keys(&[(1, b"farm secret")]);
        let s = k.seal(&sample(), DIALOG, NOW);
        assert!(open(&k, &s, NOW + DAY).is_some());
        assert!(open(&k, &s, NOW + DAY + 1).is_none(), "expired");
        assert!(
            open(&k, &s, NOW - 2 * MAX_SKEW_SECS).is_none(),
            "from the future"
        );
        // A node whose clock is behind by up to the skew still opens it.
        assert!(open(&k, &s, NOW - MAX_SKEW_SECS).is_some());
        assert!(open(&k, &s, NOW - MAX_SKEW_SECS - 1).is_none());
    }

    #[test]
    fn only_a_stream_is_reliable() {
        let at = "192.0.2.1:5060".parse().unwrap();
        let udp = Dest::Addr {
            transport: Transport::Udp,
            addr: at,
        };
        assert!(!udp.reliable());
        for transport in [
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ] {
            let conn = Dest::Flow(FlowRef::Conn {
                id: 1,
                peer: at,
                transport,
            });
            assert!(conn.reliable());
            assert_eq!(conn.transport(), transport);
        }
    }

    /// Overload control asks whether a request belongs to a dialog the farm
    /// holds: only a Route with a token that opens for its dialog says so.
    #[test]
    fn a_request_routes_a_dialog_only_with_a_token_of_its_own() {
        let k = keys(&[(1, b"farm secret")]);
        let token = k.seal(&sample(), DIALOG, NOW);
        let request = |route_user: &str, call_id: &str| {
            let text = format!(
                "BYE sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n\
                 Route: <sip:{route_user}@10.0.0.1;lr>\r\nFrom: <sip:alice@ringmesh.test>;tag=a1\r\n\
                 To: <sip:bob@ringmesh.test>;tag=b7\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            ringmesh_sip::Message::parse(bytes::Bytes::from(text)).unwrap()
        };
        let call_id = std::str::from_utf8(DIALOG.call_id).unwrap();
        assert!(k.routes_dialog(&request(&token, call_id), NOW));
        assert!(!k.routes_dialog(&request(&token, "another-call"), NOW));
        assert!(!k.routes_dialog(&request("forged", call_id), NOW));
    }

    #[test]
    fn the_secret_rotates_without_breaking_a_dialog() {
        let old = keys(&[(1, b"old secret")]);
        let s_old = old.seal(&sample(), DIALOG, NOW);
        // Phase 1: every node learns the new secret, still sealing with the
        // old one; phase 2: the new one seals, the old one still opens.
        let phase1 = keys(&[(1, b"old secret"), (2, b"new secret")]);
        let phase2 = keys(&[(2, b"new secret"), (1, b"old secret")]);
        let s_new = phase2.seal(&sample(), DIALOG, NOW);
        for k in [&phase1, &phase2] {
            assert!(open(k, &s_old, NOW).is_some());
            assert!(open(k, &s_new, NOW).is_some());
        }
        assert!(open(&old, &s_new, NOW).is_none(), "why phase 1 comes first");
        // Phase 3: the old secret is gone, and so are its tokens.
        let phase3 = keys(&[(2, b"new secret")]);
        assert!(open(&phase3, &s_old, NOW).is_none());
        assert!(open(&phase3, &s_new, NOW).is_some());
    }
}
