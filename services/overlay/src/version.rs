//! Protocol versions and the link handshake name.
//!
//! Two numbers, like the wire itself: the *major* changes only when old and
//! new nodes can no longer understand each other (it is also part of the ALPN
//! name, so such peers do not even finish the QUIC handshake); the *minor*
//! grows for additive changes (new fields, new message kinds) that protobuf
//! lets older nodes skip. Peers one minor apart must interoperate so a farm
//! can be upgraded one node at a time.

use std::fmt;

/// ALPN protocol name of overlay links (the driver offers exactly this).
pub const ALPN: &str = "ringmesh-overlay/1";

/// A protocol version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version this build speaks.
    ///
    /// - 1.0: the first.
    /// - 1.1: a record may hold a cleared mark (written by the registrar
    ///   for `Contact: *`), which hides the binding entries it is later
    ///   than; a 1.0 node stores and merges it as an opaque entry but shows
    ///   the bindings it hides until they expire.
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 1, minor: 1 };

    pub const fn new(major: u16, minor: u16) -> Self {
        ProtocolVersion { major, minor }
    }

    /// Whether a node speaking `self` may exchange messages with `peer`:
    /// same major, minors at most one apart. Symmetric, so both ends of a link
    /// reach the same verdict without a negotiation round.
    pub fn compatible_with(self, peer: ProtocolVersion) -> bool {
        self.major == peer.major && self.minor.abs_diff(peer.minor) <= 1
    }
}

impl Default for ProtocolVersion {
    fn default() -> Self {
        Self::CURRENT
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Free-function form of [`ProtocolVersion::compatible_with`], for drivers
/// that check a peer's advertised version before creating a link.
pub fn compatible(ours: ProtocolVersion, theirs: ProtocolVersion) -> bool {
    ours.compatible_with(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_minor_apart_interoperates_two_do_not() {
        let v = ProtocolVersion::new(1, 4);
        assert!(v.compatible_with(ProtocolVersion::new(1, 4)));
        assert!(v.compatible_with(ProtocolVersion::new(1, 5)));
        assert!(v.compatible_with(ProtocolVersion::new(1, 3)));
        assert!(!v.compatible_with(ProtocolVersion::new(1, 6)));
        assert!(!v.compatible_with(ProtocolVersion::new(1, 2)));
        assert!(!v.compatible_with(ProtocolVersion::new(2, 4)));
    }

    #[test]
    fn compatibility_is_symmetric() {
        for a in 0..4u16 {
            for b in 0..4u16 {
                let x = ProtocolVersion::new(1, a);
                let y = ProtocolVersion::new(1, b);
                assert_eq!(compatible(x, y), compatible(y, x));
            }
        }
    }

    #[test]
    fn alpn_names_the_major() {
        assert!(ALPN.ends_with(&format!("/{}", ProtocolVersion::CURRENT.major)));
    }
}
