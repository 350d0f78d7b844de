//! A small builder for test networks: namespaces joined by veth pairs, with
//! addresses and routes. Everything is torn down when the [`Topology`] and
//! the [`Netns`] handles the test holds are dropped (deleting a namespace
//! deletes its veth ends, and with them their peers).
//!
//! Links, addresses and routes are made through netlink ([`crate::rtnl`]),
//! not by running `ip`.
//!
//! The builder methods panic on failure: a topology that cannot be built is
//! a broken test, and `topo.addr(...)` reads better without `.unwrap()`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

use crate::{netns::Netns, rtnl};

/// The name of the bridge in a switch namespace ([`Topology::bridge`]).
pub const BRIDGE: &str = "br0";

/// Namespaces and links of one test. Holds a handle on every namespace it
/// created, so they live at least as long as the topology.
#[derive(Debug, Default)]
pub struct Topology {
    namespaces: Vec<Netns>,
}

/// The value of a builder step, or a panic that says which step failed.
fn built<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a namespace (see [`Netns::new`]) owned by this topology and
    /// returns a handle on it.
    pub fn netns(&mut self, tag: &str) -> Netns {
        let ns = Netns::new(tag).unwrap_or_else(|e| panic!("netns {tag}: {e:#}"));
        self.namespaces.push(ns.clone());
        ns
    }

    /// The namespaces this topology created, in creation order.
    pub fn namespaces(&self) -> &[Netns] {
        &self.namespaces
    }

    /// A veth pair: `a_if` in `a`, `b_if` in `b`, both up.
    ///
    /// The pair is created from inside `a` with the peer placed straight into
    /// `b` under its final name, so the names only have to be unique within
    /// their own namespace and parallel tests never race on names in the
    /// root namespace.
    pub fn veth(&mut self, a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
        built(rtnl::veth(a, a_if, b, b_if));
    }

    /// Adds an address (`"10.1.0.1/24"` or `"fd00::1/64"`). IPv6 addresses
    /// get `nodad` so they are usable at once instead of after DAD.
    pub fn addr(&mut self, ns: &Netns, ifname: &str, cidr: &str) {
        built(rtnl::addr(ns, ifname, cidr));
    }

    /// Adds a route to `dst` (a prefix or `default`) via gateway `via`.
    pub fn route(&mut self, ns: &Netns, dst: &str, via: &str) {
        let gateway: IpAddr = via.parse().unwrap_or_else(|e| panic!("gateway {via}: {e}"));
        built(rtnl::route(ns, dst, gateway.into()));
    }

    /// Adds a route to `dst` (a prefix, or `default` through a gateway)
    /// that leads to `next`: out of a device, on-link, nowhere.
    pub fn route_to(&mut self, ns: &Netns, dst: &str, next: rtnl::Next<'_>) {
        built(rtnl::route(ns, dst, next));
    }

    /// Makes `ns` a switch: a bridge [`BRIDGE`], up, that [`Topology::plug`]
    /// attaches links to.
    pub fn bridge(&mut self, ns: &Netns) {
        built(rtnl::bridge(ns, BRIDGE));
    }

    /// A veth from `ns`'s `ifname` to port `port` of the bridge in `switch`
    /// (see [`Topology::bridge`]).
    pub fn plug(&mut self, ns: &Netns, ifname: &str, switch: &Netns, port: &str) {
        self.veth(ns, ifname, switch, port);
        built(rtnl::enslave(switch, port, BRIDGE));
    }


    /// Sets a link's MTU.
    pub fn mtu(&mut self, ns: &Netns, ifname: &str, mtu: u32) {
        built(rtnl::mtu(ns, ifname, mtu));
    }

    /// Turns IPv4 and IPv6 forwarding on in `ns` (for router namespaces).
    pub fn forwarding(&mut self, ns: &Netns) {
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            ns.sysctl(key, "1").unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    /// The interface index of `ifname` inside `ns`.
    pub fn ifindex(&self, ns: &Netns, ifname: &str) -> u32 {
        ifindex(ns, ifname).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The MAC address of `ifname` inside `ns`.
    pub fn mac(&self, ns: &Netns, ifname: &str) -> [u8; 6] {
        mac(ns, ifname).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The common test network: a client and a server namespace joined by
    /// one veth, with IPv4 and IPv6 addresses (see [`TwoHosts`]). Identical
    /// addresses in other tests' topologies do not collide: each lives in
    /// its own namespaces.
    pub fn two_hosts(tag: &str) -> TwoHosts {
        let mut topo = Topology::new();
        let client = topo.netns(&format!("{tag}c"));
        let server = topo.netns(&format!("{tag}s"));
        topo.veth(&client, TwoHosts::CLIENT_IF, &server, TwoHosts::SERVER_IF);
        topo.addr(&client, TwoHosts::CLIENT_IF, &format!("{}/24", TwoHosts::CLIENT4));
        topo.addr(&server, TwoHosts::SERVER_IF, &format!("{}/24", TwoHosts::SERVER4));
        topo.addr(&client, TwoHosts::CLIENT_IF, &format!("{}/64", TwoHosts::CLIENT6));
        topo.addr(&server, TwoHosts::SERVER_IF, &format!("{}/64", TwoHosts::SERVER6));
        TwoHosts { topo, client, server }
    }
}

/// `ifindex` without a topology: the index of `ifname` in `ns`.
pub fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)?;
    // if_nametoindex resolves in the calling thread's namespace.
    let idx = ns.run(move || unsafe { libc::if_nametoindex(name.as_ptr()) });
    if idx == 0 {
        bail!("no interface {ifname} in {}", ns.name());
    }
    Ok(idx)
}

/// `mac` without a topology: the hardware address of `ifname` in `ns`.
pub fn mac(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    rtnl::mac(ns, ifname)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC address: {text}");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC address: {text}"))?;
    }
    Ok(mac)
}

/// Two hosts on one link, from [`Topology::two_hosts`].
///
/// ```text
///  client  c0 10.0.0.1/24 fd00::1/64  ── veth ──  s0 10.0.0.2/24 fd00::2/64  server
/// ```
#[derive(Debug)]
pub struct TwoHosts {
    /// Owns both namespaces.
    pub topo: Topology,
    /// The client side (scanners, raw-frame injection).
    pub client: Netns,
    /// The server side (listeners, the system under test).
    pub server: Netns,
}

impl TwoHosts {
    /// Client interface name.
    pub const CLIENT_IF: &'static str = "c0";
    /// Server interface name.
    pub const SERVER_IF: &'static str = "s0";
    /// Client IPv4 address.
    pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    /// Server IPv4 address.
    pub const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    /// Client IPv6 address.
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    /// Server IPv6 address.
    pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    /// The server's addresses, IPv4 first.
    pub fn server_addrs(&self) -> [IpAddr; 2] {
        [IpAddr::V4(Self::SERVER4), IpAddr::V6(Self::SERVER6)]
    }

    /// The client's addresses, IPv4 first.
    pub fn client_addrs(&self) -> [IpAddr; 2] {
        [IpAddr::V4(Self::CLIENT4), IpAddr::V6(Self::CLIENT6)]
    }

    /// MAC of the client's interface.
    pub fn client_mac(&self) -> [u8; 6] {
        self.topo.mac(&self.client, Self::CLIENT_IF)
    }

    /// MAC of the server's interface.
    pub fn server_mac(&self) -> [u8; 6] {
        self.topo.mac(&self.server, Self::SERVER_IF)
    }
}
