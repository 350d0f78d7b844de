//! Two edge hosts in front of the same workers, for failover: the client
//! and both edges share one L2 segment (a bridge in its own namespace, so
//! VRRP multicast and gratuitous ARP reach everyone), where keepalived
//! puts the VIP on the master's outside interface.
//!
//! ```text
//!  client  c-out 198.51.100.2   ──┐ outside bridge (namespace `o`, br0)
//!  edge a  e-out 198.51.100.1   ──┤   VIP 198.51.100.10 on the VRRP master
//!  edge b  e-out 198.51.100.3   ──┤
//!  router  r-out 198.51.100.254 ──┘
//!  edge a  e-in  10.1.0.1       ──┐ inside bridge (namespace `s`, br0)
//!  edge b  e-in  10.1.0.2       ──┤
//!  router  r-in  10.1.0.254     ──┤
//!  workers eth0  10.1.0.11, …   ──┘ default via the router
//! ```
//!
//! Both edges have the same interface names, so they run swarmlb with the
//! same config. The workers' default route is a router of their own, not
//! an edge: DSR replies go from the worker to the client past both edges,
//! so losing an edge loses nothing on the way back.

use std::net::Ipv4Addr;

use crate::{
    edge_lab::{full_checksums, worker_addrs, PassThrough},
    Netns, Topology,
};

/// The VIP keepalived moves (on the shared segment: the client reaches it
/// by ARP, and a gratuitous ARP moves it).
pub const HA_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The client's address.
pub const HA_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Edge `i`'s (0 or 1) outside and inside addresses; the inside one is
/// its SNAT and tunnel source.
pub fn edge_addrs(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    [(Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(10, 1, 0, 1)), (Ipv4Addr::new(198, 51, 100, 3), Ipv4Addr::new(10, 1, 0, 2))][i]
}

/// The namespaces and links; everything is removed on drop.
pub struct HaLab {
    // Field order: the pass-through programs go before the namespaces.
    _pass: PassThrough,
    /// The client namespace.
    pub client: Netns,
    /// Edges `a` and `b`, each with `e-out` (shared segment) and `e-in`.
    pub edges: [Netns; 2],
    /// The router the workers send everything else (DSR replies) to.
    pub router: Netns,
    /// The bridge of the client's segment.
    pub outside: Netns,
    /// The bridge of the workers' segment.
    pub inside: Netns,
    /// Worker namespaces `w1`, `w2`, … (index 0 is `w1`, addresses from
    /// [`worker_addrs`]).
    pub workers: Vec<Netns>,
    /// Owns the namespaces.
    _topology: Topology,
}

/// A new namespace that is a switch (a bridge, see [`Topology::bridge`]).
fn switch(t: &mut Topology, tag: &str) -> Netns {
    let ns = t.netns(tag);
    t.bridge(&ns);
    ns
}

impl HaLab {
    /// Builds the network with `workers` worker namespaces.
    pub fn new(tag: &str, workers: usize) -> Self {
        let mut t = Topology::new();
        let outside = switch(&mut t, &format!("{tag}o"));
        let inside = switch(&mut t, &format!("{tag}s"));
        let client = t.netns(&format!("{tag}c"));
        t.plug(&client, "c-out", &outside, "o-c");
        t.addr(&client, "c-out", &format!("{HA_CLIENT}/24"));
        let edges = ["a", "b"].map(|e| t.netns(&format!("{tag}{e}")));
        for (i, (e, name)) in edges.iter().zip(["a", "b"]).enumerate() {
            let (out, ins) = edge_addrs(i);
            t.plug(e, "e-out", &outside, &format!("o-{name}"));
            t.plug(e, "e-in", &inside, &format!("s-{name}"));
            t.addr(e, "e-out", &format!("{out}/24"));
            t.addr(e, "e-in", &format!("{ins}/24"));
            t.forwarding(e);
        }
        let router = t.netns(&format!("{tag}r"));
        t.plug(&router, "r-out", &outside, "o-r");
        t.plug(&router, "r-in", &inside, "s-r");
        t.addr(&router, "r-out", "198.51.100.254/24");
        t.addr(&router, "r-in", "10.1.0.254/24");
        t.forwarding(&router);
        let mut ws = Vec::new();
        for i in 1..=workers {
            let w = t.netns(&format!("{tag}w{i}"));
            t.plug(&w, "eth0", &inside, &format!("s-w{i}"));
            t.addr(&w, "eth0", &format!("{}/24", worker_addrs(i).0));
            t.route(&w, "default", "10.1.0.254");
            ws.push(w);
        }
        full_checksums(std::iter::once((&client, "c-out")).chain(ws.iter().map(|w| (w, "eth0"))));
        // Frames the edges' XDP programs redirect into a veth are only
        // delivered if its peer runs XDP: a pass-through program on the
        // bridge ports of both edges.
        let mut pass = PassThrough::load(tag);
        for (ns, ifname) in [(&outside, "o-a"), (&outside, "o-b"), (&inside, "s-a"), (&inside, "s-b")] {
            pass.attach(ns, ifname);
            // A NIC drops unicast frames for other MACs before XDP sees
            // them; a veth hands XDP everything. Without this, the frames
            // the bridge floods once the master's port is down (its MAC
            // unknown) would reach the backup's program, which forwards
            // VIP packets whatever their destination MAC, and the "failover"
            // would take no time at all. Broadcast (ARP) and multicast
            // (VRRP) still reach both edges. (A bridge port flag: `bridge`,
            // not the topology's rtnetlink calls.)
            ns.exec(&["bridge", "link", "set", "dev", ifname, "flood", "off"]).unwrap();
        }
        Self { _pass: pass, client, edges, router, outside, inside, workers: ws, _topology: t }
    }

    /// Takes every link of edge `i` down: the host is gone from both
    /// segments (its namespace stays, for the teardown).
    pub fn cut(&self, i: usize) {
        for ifname in ["e-out", "e-in"] {
            crate::rtnl::down(&self.edges[i], ifname).unwrap();
        }
    }

    /// The MAC address of edge `i`'s outside interface.
    pub fn edge_mac(&self, i: usize) -> [u8; 6] {
        crate::topology::mac(&self.edges[i], "e-out").unwrap()
    }

    /// The MAC the client's neighbour table holds for the VIP, if any.
    pub fn client_vip_mac(&self) -> Option<[u8; 6]> {
        let out = self.client.exec(&["ip", "neigh", "show", &HA_VIP.to_string(), "dev", "c-out"]).ok()?;
        let text = out.split_whitespace().skip_while(|w| *w != "lladdr").nth(1)?;
        crate::topology::parse_mac(text).ok()
    }

    /// Whether edge `i` holds the VIP (is the VRRP master).
    pub fn holds_vip(&self, i: usize) -> bool {
        self.edges[i].exec(&["ip", "-4", "addr", "show", "dev", "e-out"]).is_ok_and(|o| o.contains(&format!("{HA_VIP}/")))
    }
}
