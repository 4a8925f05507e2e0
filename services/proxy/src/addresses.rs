//! This node's addresses, as the proxy decides "is this URI me?", "is this
//! Via mine?" and what to put in its own Via and Record-Route.

use std::net::{IpAddr, SocketAddr};

use ringmesh_sip::{Uri, Via};

use crate::binding::Transport;

/// The domain the farm serves, the address this node advertises, and
/// every address and port it listens on.
#[derive(Debug, Clone)]
pub struct Me {
    pub domain: String,
    pub advertise: String,
    /// The first port of each transport it listens on.
    transport_ports: Vec<(Transport, u16)>,
    hosts: Vec<String>,
    ports: Vec<u16>,
    /// Every address a SIP listener is bound to.
    listen: Vec<SocketAddr>,
    pub node_id: [u8; 16],
}

fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

impl Me {
    /// `listen` must not be empty; `advertise` defaults to the first
    /// listener's address.
    pub fn new(
        domain: &str,
        advertise: Option<&str>,
        listen: &[(Transport, SocketAddr)],
        node_id: [u8; 16],
    ) -> Me {
        let advertise = advertise
            .map(str::to_string)
            .unwrap_or_else(|| host_text(listen[0].1.ip()));
        let mut hosts = vec![domain.to_ascii_lowercase(), advertise.to_ascii_lowercase()];
        for (_, addr) in listen {
            let h = host_text(addr.ip());
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let mut transport_ports: Vec<(Transport, u16)> = Vec::new();
        for (t, addr) in listen {
            if !transport_ports.iter().any(|(have, _)| have == t) {
                transport_ports.push((*t, addr.port()));
            }
        }
        Me {
            domain: domain.to_string(),
            transport_ports,
            ports: listen.iter().map(|l| l.1.port()).collect(),
            listen: listen.iter().map(|l| l.1).collect(),
            advertise,
            hosts,
            node_id,
        }
    }

    fn is_own_host(&self, host: &[u8]) -> bool {
        self.hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(host))
    }

    /// The domain served, or one of this node's own addresses.
    pub fn serves(&self, uri: &Uri<'_>) -> bool {
        let Some(host) = uri.host() else { return false };
        if host.text.eq_ignore_ascii_case(self.domain.as_bytes()) {
            return true;
        }
        self.is_own_host(host.text) && uri.port().is_none_or(|p| self.ports.contains(&p))
    }

    /// A URI naming this node itself (a Route or Record-Route of ours).
    pub fn is_me(&self, uri: &Uri<'_>) -> bool {
        let Some(host) = uri.host() else { return false };
        let port = uri.port().unwrap_or(5060);
        !host.text.eq_ignore_ascii_case(self.domain.as_bytes())
            && self.is_own_host(host.text)
            && self.ports.contains(&port)
            || host.text.eq_ignore_ascii_case(self.domain.as_bytes())
                && uri.user().is_none()
                && uri.is_loose_route()
    }

    /// The port this node listens on for `t`, if it does.
    pub fn port_of(&self, t: Transport) -> Option<u16> {
        self.transport_ports
            .iter()
            .find(|(have, _)| *have == t)
            .map(|(_, p)| *p)
    }

    /// The port this node advertises for `t` (UDP's and TCP's, which share
    /// a port, stand in for each other; any listener's is the last resort).
    pub fn port(&self, t: Transport) -> u16 {
        let twin = match t {
            Transport::Udp => Transport::Tcp,
            Transport::Tcp => Transport::Udp,
            t => t,
        };
        self.port_of(t)
            .or(self.port_of(twin))
            .or(self.transport_ports.first().map(|(_, p)| *p))
            .unwrap_or(5060)
    }

    /// Whether `addr` reaches one of this node's SIP listeners (an
    /// unspecified listener address stands for every address).
    pub fn is_own_addr(&self, addr: SocketAddr) -> bool {
        self.listen
            .iter()
            .any(|l| l.port() == addr.port() && (l.ip() == addr.ip() || l.ip().is_unspecified()))
            || self.ports.contains(&addr.port())
                && self.is_own_host(host_text(addr.ip()).as_bytes())
    }

    /// Whether a Via names this node (sent-by host and port).
    pub fn is_my_via(&self, v: &Via<'_>) -> bool {
        self.is_own_host(v.host().text) && self.ports.contains(&v.port().unwrap_or(5060))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(listen: &str, advertise: Option<&str>) -> Me {
        Me::new(
            "ringmesh.test",
            advertise,
            &[(Transport::Udp, listen.parse().unwrap())],
            [1; 16],
        )
    }

    #[test]
    fn own_addresses_are_the_listeners_and_the_advertised_host() {
        // A listener on every address owns each of them, on its port.
        let any = me("0.0.0.0:5060", Some("203.0.113.7"));
        assert!(any.is_own_addr("192.0.2.99:5060".parse().unwrap()));
        assert!(!any.is_own_addr("192.0.2.99:5061".parse().unwrap()));
        // Behind NAT: the advertised public address is ours too.
        let natted = me("10.0.0.1:5060", Some("203.0.113.7"));
        assert!(natted.is_own_addr("10.0.0.1:5060".parse().unwrap()));
        assert!(natted.is_own_addr("203.0.113.7:5060".parse().unwrap()));
        assert!(!natted.is_own_addr("10.0.0.2:5060".parse().unwrap()));
        assert!(!natted.is_own_addr("203.0.113.7:5070".parse().unwrap()));
    }
}
