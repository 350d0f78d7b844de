//! The load balancer's end-to-end network: a client, an edge host and
//! worker nodes behind a switch, each in its own namespace.
//!
//! ```text
//!  client ── c-out ═══ e-out ── edge ── e-in ═══ s-e ─┐ switch (bridge br0)
//!  198.51.100.2        198.51.100.1    10.1.0.1       ├─ s-w1 ═══ eth0  w1 10.1.0.11
//!  2001:db8:1::2       2001:db8:1::1   fd00:1::1      ├─ s-w2 ═══ eth0  w2 10.1.0.12
//!                                                     └─ s-w3 ═══ eth0  w3 10.1.0.13
//! ```
//!
//! The client reaches the VIPs ([`VIP_V4`], [`VIP_V6`]) through the edge;
//! workers route everything else through the edge too (so DSR replies go
//! straight from the worker to the client, past the balancer's state).
//!
//! A frame an XDP program redirects into a veth is only delivered if the
//! veth's peer runs XDP itself; the peers of the edge's interfaces get a
//! pass-through program (the isolator without a zone), loaded here.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use lb_user::datapath::loader::{remove_pins, Datapath, MapSizes, Program};

use crate::{Netns, Topology};

/// The IPv4 VIP.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The IPv6 VIP.
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x10);
/// The client's address.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The client's IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The edge's inside addresses (the SNAT source in `nat` mode).
pub const EDGE_INSIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The edge's inside IPv6 address.
pub const EDGE_INSIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);

/// The pass-through programs a lab puts on the veths that XDP redirects
/// into (a veth delivers redirected frames only if its peer runs XDP),
/// pinned in a private directory; unpinned on drop.
pub struct PassThrough {
    datapath: Option<Datapath>,
    pins: PathBuf,
}

impl PassThrough {
    /// Loads them for `tag`. They never balance: their flow and NAT tables
    /// are as small as they can be.
    pub fn load(tag: &str) -> Self {
        let pins = crate::pins::private_pin_dir("lab", tag);
        let _ = remove_pins(&pins);
        let datapath = Datapath::load(&pins, MapSizes { table_size: 251, flows: 1, nat: 1 }).unwrap_or_else(|e| {
            let _ = remove_pins(&pins);
            panic!("pass-through program loads: {e:#}")
        });
        Self { datapath: Some(datapath), pins }
    }

    /// Attaches the pass-through program to `ifname` in `ns`.
    pub fn attach(&mut self, ns: &Netns, ifname: &str) {
        let dp = self.datapath.as_mut().expect("loaded until drop");
        ns.run(|| dp.attach(ifname, Program::Isolator)).expect("pass-through XDP attaches");
    }
}

impl Drop for PassThrough {
    fn drop(&mut self) {
        self.datapath.take();
        let _ = remove_pins(&self.pins);
    }
}

/// Turns off tx checksum offload on each `(namespace, interface)`: veth
/// hands packets on with the checksum left to "offload", and an XDP
/// program that rewrites or forwards them would pass that partial checksum
/// on as if it were complete (real NICs deliver full ones).
pub fn full_checksums<'a>(ifaces: impl IntoIterator<Item = (&'a Netns, &'a str)>) {
    for (ns, ifname) in ifaces {
        ns.exec(&["ethtool", "-K", ifname, "tx", "off"]).expect("ethtool -K tx off (cargo xtask setup installs ethtool)");
    }
}

/// Worker `i`'s (1-based) addresses.
pub fn worker_addrs(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    (Ipv4Addr::new(10, 1, 0, 10 + i as u8), Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10 + i as u16))
}

/// The namespaces and links; everything is removed on drop.
pub struct EdgeLab {
    // Field order: the pass-through programs go before the namespaces.
    _pass: PassThrough,
    /// The client namespace.
    pub client: Netns,
    /// The edge host, where swarmlb runs.
    pub edge: Netns,
    /// The switch between the edge and the workers.
    pub switch: Netns,
    /// Worker namespaces `w1`, `w2`, … (index 0 is `w1`).
    pub workers: Vec<Netns>,
    topology: Topology,
}

impl EdgeLab {
    /// Builds the network with `workers` worker namespaces.
    pub fn new(tag: &str, workers: usize) -> Self {
        let mut t = Topology::new();
        let client = t.netns(&format!("{tag}c"));
        let edge = t.netns(&format!("{tag}e"));
        let switch = t.netns(&format!("{tag}s"));
        t.veth(&client, "c-out", &edge, "e-out");
        t.bridge(&switch);
        t.plug(&edge, "e-in", &switch, "s-e");
        t.addr(&client, "c-out", "198.51.100.2/24");
        t.addr(&client, "c-out", "2001:db8:1::2/64");
        t.addr(&edge, "e-out", "198.51.100.1/24");
        t.addr(&edge, "e-out", "2001:db8:1::1/64");
        t.addr(&edge, "e-in", "10.1.0.1/24");
        t.addr(&edge, "e-in", "fd00:1::1/64");
        t.route(&client, "203.0.113.0/24", "198.51.100.1");
        t.route(&client, "2001:db8:10::/64", "2001:db8:1::1");
        t.forwarding(&edge);
        let mut ws = Vec::new();
        for i in 1..=workers {
            let w = t.netns(&format!("{tag}w{i}"));
            t.plug(&w, "eth0", &switch, &format!("s-w{i}"));
            let (v4, v6) = worker_addrs(i);
            t.addr(&w, "eth0", &format!("{v4}/24"));
            t.addr(&w, "eth0", &format!("{v6}/64"));
            t.route(&w, "default", "10.1.0.1");
            // `onlink`: the prefix route may not be in place yet.
            t.route_to(&w, "default", crate::rtnl::Next::OnLink(IpAddr::V6(EDGE_INSIDE_V6), "eth0"));
            ws.push(w);
        }
        full_checksums(std::iter::once((&client, "c-out")).chain(ws.iter().map(|w| (w, "eth0"))));
        let mut pass = PassThrough::load(tag);
        pass.attach(&switch, "s-e");
        pass.attach(&client, "c-out");
        Self { _pass: pass, client, edge, switch, workers: ws, topology: t }
    }

    /// Worker `i`'s (1-based) addresses as `IpAddr`s.
    pub fn worker_ips(&self, i: usize) -> [IpAddr; 2] {
        let (v4, v6) = worker_addrs(i);
        [IpAddr::V4(v4), IpAddr::V6(v6)]
    }

    /// The topology (for more links in a test).
    pub fn topology(&mut self) -> &mut Topology {
        &mut self.topology
    }
}
