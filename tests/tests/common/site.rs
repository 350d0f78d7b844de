//! The Swarm end-to-end site: three `dockerd` nodes in their own
//! namespaces (the harness's [`SwarmLab`]), an edge namespace for
//! `swarmlb run` with a `[swarm]` section, a DMZ client and an intra client.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use harness::{
    config::{EdgeConfig, Vip},
    scan::{tcp_scan, TcpOutcome},
    swarm::SwarmLab,
    Netns, Topology,
};

use super::{
    daemon::{wait_until, Instance},
    http::who,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// The swarm, the edge and its clients.
pub struct Site {
    // Field order: the daemon's namespaces go before the swarm's.
    pub client: Netns,
    pub intra: Netns,
    pub edge: Netns,
    // Kept for its drop: the clients' links and namespaces.
    _topo: Topology,
    pub lab: SwarmLab,
}

pub fn node_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 2, 0, 11 + i as u8))
}

pub fn site(tag: &str) -> Site {
    harness::require_root().unwrap();
    let t0 = Instant::now();
    let mut lab = SwarmLab::new(tag, 3).expect("a three-node swarm comes up");
    println!("swarm of 3 nodes up in {:.1} s", t0.elapsed().as_secs_f64());
    let mut topo = Topology::new();
    let client = topo.netns(&format!("{tag}c"));
    let intra = topo.netns(&format!("{tag}i"));
    let edge = topo.netns(&format!("{tag}e"));
    topo.veth(&client, "c-out", &edge, "e-out");
    topo.veth(&intra, "i-out", &edge, "e-intra");
    topo.addr(&client, "c-out", "198.51.100.2/24");
    topo.addr(&edge, "e-out", "198.51.100.1/24");
    topo.addr(&intra, "i-out", "192.0.2.2/24");
    topo.addr(&edge, "e-intra", "192.0.2.1/24");
    topo.route(&client, "203.0.113.0/24", "198.51.100.1");
    topo.route(&client, "10.2.0.0/24", "198.51.100.1");
    topo.route(&intra, "10.2.0.0/24", "192.0.2.1");
    topo.forwarding(&edge);
    let edge_port = lab.attach(&edge, "e-in", "10.2.0.1/24");
    for n in lab.nodes() {
        n.ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
        for net in ["198.51.100.0/24", "192.0.2.0/24"] {
            topo.route(&n.ns, net, "10.2.0.1");
        }
    }
    // The balancer rewrites packets: they must carry full checksums (veth
    // leaves them to "offload"); its redirects into a veth need GRO on the
    // peer.
    client.exec(&["ethtool", "-K", "c-out", "tx", "off", "gro", "on"]).unwrap();
    lab.switch.exec(&["ethtool", "-K", &edge_port, "gro", "on"]).unwrap();
    intra.exec(&["ethtool", "-K", "i-out", "tx", "off"]).unwrap();
    Site { client, intra, edge, _topo: topo, lab }
}

impl Site {
    /// `body` with the site's `[swarm]` (the manager's socket) and zones
    /// (`e-out` the DMZ, `e-intra` intra).
    pub fn config(&self, body: EdgeConfig) -> String {
        body.swarm(&format!("unix://{}", self.lab.manager_socket().display()))
            .zone_interface("e-out", "dmz")
            .zone_interface("e-intra", "intra")
            .to_toml()
    }
}

/// The site's VIP `web` (tcp/80), its backends the nodes labelled
/// `lb=proxy`.
pub fn swarm_vip() -> Vip {
    Vip::new("web", IpAddr::V4(VIP), &["tcp/80"]).backends_from("node.labels.lb==proxy")
}

/// The backends of the first VIP: (address, weight, up).
pub fn backends(inst: &Instance) -> Vec<(String, u64, bool)> {
    let s = inst.status();
    s["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["address"].as_str().unwrap().to_owned(), b["weight"].as_u64().unwrap(), b["up"].as_bool().unwrap()))
        .collect()
}

pub fn weight_of(inst: &Instance, addr: IpAddr) -> Option<u64> {
    backends(inst).into_iter().find(|b| b.0 == addr.to_string()).map(|b| b.1)
}

/// Waits until `cond`, returning how long it took.
pub fn timed(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    wait_until(limit, &mut cond, || what.to_owned());
    t.elapsed()
}

/// Who answers `n` new connections through the VIP.
pub fn answers(ns: &Netns, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| who(ns, IpAddr::V4(VIP))).collect()
}

/// One TCP probe of `addr:port` from `ns`.
pub fn probe(ns: &Netns, addr: IpAddr, port: u16) -> TcpOutcome {
    ns.run(|| tcp_scan(addr, [port], None, 1, Duration::from_millis(700))).unwrap().remove(0).1
}

