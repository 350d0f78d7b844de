//! Several active edges behind one router that spreads the VIPs' flows
//! over them by ECMP (docs/scale-out.md): the router learns the VIPs from
//! every edge's BIRD over BGP; the client is behind the router.
//!
//! ```text
//!  client  c-r   203.0.113.2      ── r-c 203.0.113.1   router (ECMP, L4 hash)
//!                2001:db8:c::2          2001:db8:c::1
//!  router  r-out 198.51.100.254    ──┐ outside bridge (namespace `o`)
//!                2001:db8:64::fe     │
//!  edge i  e-out 198.51.100.i      ──┘   (i = 1, 2, 3; default via the router)
//!                2001:db8:64::i
//!  router  r-in  10.1.0.254, fd00:1::fe ──┐ inside bridge (namespace `s`)
//!  edge i  e-in  10.1.0.i, fd00:1::i     ──┤
//!  workers eth0  10.1.0.11, fd00:1::11, … ──┘ default via the router
//! ```
//!
//! With the workers on the outside segment ([`EcmpLab::new`]'s
//! `workers_outside`, for `dsr-l2`, whose backends are on the segment the
//! VIPs' packets arrive on) they have [`outside_worker_addrs`] and their
//! default route via the router's outside address.
//!
//! The VIPs are on no interface: the router sends their packets to an
//! edge's MAC because BGP says so. The edges have the same interface
//! names, so they run swarmlb with the same config. DSR replies go from
//! the workers through the router to the client, past every edge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    edge_lab::{full_checksums, worker_addrs, PassThrough},
    Netns, Topology,
};

/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The router's address on the edges' segment (their BGP neighbour).
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The router's IPv6 address on the edges' segment (their IPv6 routes'
/// next hop is theirs on it).
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 0xfe);
/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The edges' AS (the same on every edge).
pub const EDGE_AS: u32 = 65001;

/// Edge `i`'s (0-based) outside and inside addresses; the inside one is
/// its SNAT and tunnel source.
pub fn edge_addrs(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let n = i as u8 + 1;
    (Ipv4Addr::new(198, 51, 100, n), Ipv4Addr::new(10, 1, 0, n))
}

/// Edge `i`'s (0-based) outside and inside IPv6 addresses.
pub fn edge_addrs_v6(i: usize) -> (Ipv6Addr, Ipv6Addr) {
    let n = i as u16 + 1;
    (Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, n), Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, n))
}

/// Worker `i`'s (1-based) addresses on the outside segment.
pub fn outside_worker_addrs(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    (Ipv4Addr::new(198, 51, 100, 10 + i as u8), Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 0x10 + i as u16))
}

/// The namespaces and links; everything is removed on drop.
pub struct EcmpLab {
    // Field order: the pass-through programs go before the namespaces.
    _pass: PassThrough,
    /// The outside segment's switch.
    outside: Netns,
    /// The client namespace, behind the router.
    pub client: Netns,
    /// The router: BGP neighbour of every edge, ECMP over them.
    pub router: Netns,
    /// Edges `e1`, `e2`, … with `e-out` and `e-in`.
    pub edges: Vec<Netns>,
    /// Worker namespaces `w1`, `w2`, … (addresses from [`worker_addrs`]).
    pub workers: Vec<Netns>,
    /// Owns the namespaces.
    _topology: Topology,
}

impl EcmpLab {
    /// Builds the network with `edges` edges and `workers` workers, on
    /// the inside segment or (`workers_outside`) on the outside one.
    pub fn new(tag: &str, edges: usize, workers: usize, workers_outside: bool) -> Self {
        let mut t = Topology::new();
        let switch = |t: &mut Topology, name: &str| {
            let ns = t.netns(&format!("{tag}{name}"));
            t.bridge(&ns);
            ns
        };
        let outside = switch(&mut t, "o");
        let inside = switch(&mut t, "s");
        let client = t.netns(&format!("{tag}c"));
        let router = t.netns(&format!("{tag}r"));
        t.veth(&client, "c-r", &router, "r-c");
        t.addr(&client, "c-r", &format!("{CLIENT}/24"));
        t.addr(&router, "r-c", "203.0.113.1/24");
        t.route(&client, "default", "203.0.113.1");
        t.addr(&client, "c-r", "2001:db8:c::2/64");
        t.addr(&router, "r-c", "2001:db8:c::1/64");
        t.route(&client, "default", "2001:db8:c::1");
        t.plug(&router, "r-out", &outside, "o-r");
        t.plug(&router, "r-in", &inside, "s-r");
        t.addr(&router, "r-out", &format!("{ROUTER}/24"));
        t.addr(&router, "r-in", "10.1.0.254/24");
        t.addr(&router, "r-out", &format!("{ROUTER_V6}/64"));
        t.addr(&router, "r-in", "fd00:1::fe/64");
        t.forwarding(&router);
        // A flow's edge is a hash of its 5-tuple, not only of its addresses.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1").unwrap();
        router.sysctl("net.ipv6.fib_multipath_hash_policy", "1").unwrap();
        let edges: Vec<Netns> = (0..edges)
            .map(|i| {
                let e = t.netns(&format!("{tag}e{}", i + 1));
                let (out, ins) = edge_addrs(i);
                t.plug(&e, "e-out", &outside, &format!("o-e{}", i + 1));
                t.plug(&e, "e-in", &inside, &format!("s-e{}", i + 1));
                t.addr(&e, "e-out", &format!("{out}/24"));
                t.addr(&e, "e-in", &format!("{ins}/24"));
                t.route(&e, "default", &ROUTER.to_string());
                // The IPv6 addresses stay while a link is down (an edge
                // that died and comes back).
                for ifname in ["e-out", "e-in"] {
                    e.sysctl(&format!("net.ipv6.conf.{ifname}.keep_addr_on_down"), "1").unwrap();
                }
                let (out6, ins6) = edge_addrs_v6(i);
                t.addr(&e, "e-out", &format!("{out6}/64"));
                t.addr(&e, "e-in", &format!("{ins6}/64"));
                t.route(&e, "default", &ROUTER_V6.to_string());
                t.forwarding(&e);
                e
            })
            .collect();
        let ws: Vec<Netns> = (1..=workers)
            .map(|i| {
                let w = t.netns(&format!("{tag}w{i}"));
                if workers_outside {
                    let (v4, v6) = outside_worker_addrs(i);
                    t.plug(&w, "eth0", &outside, &format!("o-w{i}"));
                    t.addr(&w, "eth0", &format!("{v4}/24"));
                    t.route(&w, "default", &ROUTER.to_string());
                    t.addr(&w, "eth0", &format!("{v6}/64"));
                    t.route(&w, "default", &ROUTER_V6.to_string());
                } else {
                    t.plug(&w, "eth0", &inside, &format!("s-w{i}"));
                    t.addr(&w, "eth0", &format!("{}/24", worker_addrs(i).0));
                    t.route(&w, "default", "10.1.0.254");
                    t.addr(&w, "eth0", &format!("{}/64", worker_addrs(i).1));
                    t.route(&w, "default", "fd00:1::fe");
                }
                w
            })
            .collect();
        full_checksums(std::iter::once((&client, "c-r")).chain(ws.iter().map(|w| (w, "eth0"))));
        // Frames the edges' programs redirect into a veth are delivered
        // only if its peer runs XDP; and a NIC drops unicast frames for
        // other MACs before XDP sees them, which a veth does not: without
        // flooding off, frames the bridge floods once an edge is gone
        // would reach the other edges' programs (see ha_lab).
        let mut pass = PassThrough::load(tag);
        for i in 1..=edges.len() {
            for (ns, port) in [(&outside, format!("o-e{i}")), (&inside, format!("s-e{i}"))] {
                pass.attach(ns, &port);
                ns.exec(&["bridge", "link", "set", "dev", &port, "flood", "off"]).unwrap();
            }
        }
        Self { _pass: pass, outside, client, router, edges, workers: ws, _topology: t }
    }

    /// Turns the outside segment into a hub (`on`) or back into a switch:
    /// with learning off on every port and flooding on, each edge's port
    /// gets every frame, as a promiscuous port on a shared segment does.
    pub fn hub(&self, on: bool) {
        let ports = std::iter::once("o-r".to_string()).chain((1..=self.edges.len()).map(|i| format!("o-e{i}")));
        for port in ports {
            let flood = if on || port == "o-r" { "on" } else { "off" };
            self.outside.exec(&["bridge", "link", "set", "dev", &port, "learning", if on { "off" } else { "on" }, "flood", flood]).unwrap();
        }
        if on {
            self.outside.exec(&["bridge", "fdb", "flush", "dev", crate::topology::BRIDGE, "dynamic"]).unwrap();
        }
    }

    /// Takes every link of edge `i` down: the host is gone from both segments.
    pub fn cut(&self, i: usize) {
        for ifname in ["e-out", "e-in"] {
            crate::rtnl::down(&self.edges[i], ifname).unwrap();
        }
    }

    /// Brings edge `i`'s links up again, with its default route (which
    /// went with the link).
    pub fn reconnect(&self, i: usize) {
        for ifname in ["e-out", "e-in"] {
            crate::rtnl::up(&self.edges[i], ifname).unwrap();
        }
        crate::rtnl::replace_route(&self.edges[i], "default", IpAddr::V4(ROUTER).into()).unwrap();
        crate::rtnl::replace_route(&self.edges[i], "default", IpAddr::V6(ROUTER_V6).into()).unwrap();
    }

    /// The next hops of the router's route to `vip` (empty: no route).
    pub fn next_hops(&self, vip: IpAddr) -> Vec<IpAddr> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = self.router.exec(&["ip", family, "-o", "route", "show", &vip.to_string()]).unwrap_or_default();
        out.split_whitespace().collect::<Vec<_>>().windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect()
    }
}
