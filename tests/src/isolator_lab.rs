//! The isolator's end-to-end lab: a DMZ namespace (the scanner) and a host
//! namespace (the Swarm node) with real listeners, and the real `swarmlb`
//! daemon attached (native XDP) to the host's DMZ interface.
//!
//! ```text
//!  dmz ns (scanner)                         host ns (the Swarm node)
//!  10.77.0.2 outsider     ── veth ──  dmz0  10.77.0.1 / fd77::1
//!  10.77.0.3 admin (allow-listed)            real TCP listeners and UDP echo
//!  10.77.0.4 a Swarm node                    servers on open and protected ports
//!  fd77::2 / ::3 / ::4 likewise
//! ```
//!
//! Used by `isolator_e2e.rs` (scans, allow-list) and `evasion.rs` (evasion
//! techniques, with a run before the daemon starts as the baseline).

use std::net::IpAddr;

use crate::{daemon::Instance, servers::{TcpListeners, UdpEcho}, ChildGuard, Netns, Topology};

/// The daemon's config: protected ports, the admin's allow-list, the nodes.
pub const CONFIG: &str = r#"
[[interface]]
name = "dmz0"
zone = "dmz"

[zone.dmz]
protected = ["tcp/22", "tcp/5432", "udp/161", "9000-9100"]
allow = ["10.77.0.3/32", "fd77::3/128"]

[cluster]
nodes = ["10.77.0.4", "fd77::4"]
"#;

/// TCP ports with a listener on the host (both families).
pub const TCP_LISTEN: &[u16] = &[22, 80, 443, 2377, 5432, 7946, 8080, 9000, 9050, 9100, 9101, 65535];
/// UDP ports with an echo server on the host (both families).
pub const UDP_LISTEN: &[u16] = &[53, 161, 4789, 5000, 7946, 9050, 9101];

/// The host's DMZ addresses.
pub const HOST4: &str = "10.77.0.1";
/// See [`HOST4`].
pub const HOST6: &str = "fd77::1";
/// A DMZ address with no special rights.
pub const OUT4: &str = "10.77.0.2";
/// The allow-listed admin.
pub const ADMIN4: &str = "10.77.0.3";
/// A Swarm node (`[cluster].nodes`).
pub const NODE4: &str = "10.77.0.4";
/// See [`OUT4`].
pub const OUT6: &str = "fd77::2";
/// See [`ADMIN4`].
pub const ADMIN6: &str = "fd77::3";
/// See [`NODE4`].
pub const NODE6: &str = "fd77::4";

/// Parses one of the address constants.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Is (proto, port) protected by [`CONFIG`], and if so, which sources of
/// the DMZ may reach it?
pub fn protected(tcp: bool, port: u16) -> Option<&'static [&'static str]> {
    let user = (tcp && (port == 22 || port == 5432)) || (!tcp && port == 161) || (9000..=9100).contains(&port);
    let swarm = port == 7946 || (tcp && port == 2377) || (!tcp && port == 4789);
    match (user, swarm) {
        (true, true) => Some(&[ADMIN4, ADMIN6, NODE4, NODE6]),
        (true, false) => Some(&[ADMIN4, ADMIN6]),
        (false, true) => Some(&[NODE4, NODE6]),
        (false, false) => None,
    }
}

/// The lab; everything is removed on drop (daemon first, then the
/// listeners, then the namespaces).
pub struct IsolatorLab {
    daemon: Option<ChildGuard>,
    /// The daemon's config, pins and runtime dir.
    pub inst: Instance,
    /// Listeners on [`TCP_LISTEN`].
    pub tcp: TcpListeners,
    /// Echo servers on [`UDP_LISTEN`].
    pub udp: UdpEcho,
    /// The scanner's namespace (interface `out0`).
    pub dmz: Netns,
    /// The host's namespace (interface `dmz0`).
    pub host: Netns,
    _topo: Topology,
}

impl IsolatorLab {
    /// Namespaces, addresses and servers, without the daemon (see
    /// [`IsolatorLab::start_daemon`]); `tag` keeps names unique.
    pub fn new(tag: &str) -> Self {
        crate::require_root().unwrap();
        let mut topo = Topology::new();
        let host = topo.netns(&format!("{tag}h"));
        let dmz = topo.netns(&format!("{tag}d"));
        topo.veth(&dmz, "out0", &host, "dmz0");
        topo.addr(&host, "dmz0", &format!("{HOST4}/24"));
        topo.addr(&host, "dmz0", &format!("{HOST6}/64"));
        // The reverse-path check needs forwarding on the zone interface (a
        // Swarm node has it for IPv4 anyway: Docker turns it on).
        topo.forwarding(&host);
        for a in [OUT4, ADMIN4, NODE4] {
            topo.addr(&dmz, "out0", &format!("{a}/24"));
        }
        for a in [OUT6, ADMIN6, NODE6] {
            topo.addr(&dmz, "out0", &format!("{a}/64"));
        }
        // Closed UDP ports must answer every probe with an ICMP error.
        for (k, v) in [("net.ipv4.icmp_ratelimit", "0"), ("net.ipv6.icmp.ratelimit", "0")] {
            host.sysctl(k, v).unwrap();
        }
        let addrs = [ip(HOST4), ip(HOST6)];
        let tcp = TcpListeners::start(&host, &addrs, TCP_LISTEN).unwrap();
        let udp = UdpEcho::start(&host, &addrs, UDP_LISTEN).unwrap();
        let inst = Instance::new(tag, CONFIG);
        Self { daemon: None, inst, tcp, udp, dmz, host, _topo: topo }
    }

    /// [`IsolatorLab::new`] with the daemon started and attached.
    pub fn start(tag: &str) -> Self {
        let mut lab = Self::new(tag);
        lab.start_daemon();
        lab
    }

    /// Starts `swarmlb run` in the host namespace and waits until it has
    /// attached.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "the daemon runs already");
        let mut daemon = self.inst.start(&self.host, &[]);
        self.inst.wait_ready(&mut daemon);
        self.daemon = Some(daemon);
    }

    /// The running daemon.
    pub fn daemon(&self) -> &ChildGuard {
        self.daemon.as_ref().expect("the daemon was started")
    }
}

impl Drop for IsolatorLab {
    fn drop(&mut self) {
        // The daemon goes before the listeners and namespaces (field order
        // would drop `inst` and the servers first).
        self.daemon.take();
    }
}
