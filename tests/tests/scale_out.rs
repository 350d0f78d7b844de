//! Scale-out (issue 13, docs/scale-out.md): several active edges behind a
//! router that spreads the VIPs' flows over them by ECMP, each edge's BIRD
//! announcing the VIPs its swarmlb can serve.
//!
//! - Two edges fed the same backends in other orders, with other ids and
//!   other table slots, send every Maglev slot of every service to the
//!   same backend address: the same choice on every edge.
//! - The lab (router BIRD with `merge paths`, three edges each with BIRD
//!   running deploy/bird.conf and swarmlb, three nginx workers, `dsr`):
//!   new connections spread over the edges, IPv4 and IPv6; on a hub each
//!   edge balances only the frames to its own MAC; a VIP whose backends are all
//!   down is withdrawn by every edge and comes back; 150 long-lived (100
//!   IPv4, 50 IPv6)
//!   streams survive the crash of one edge (kill -9 of swarmlb and BIRD,
//!   its links down) and its return; a hitless restart keeps announcing;
//!   `swarmlb down` withdraws. The same lab in `dsr-l2` (the workers on
//!   the edges' segment) and in `nat` (only the streams that change edge
//!   break).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use common::daemon::{scrape_metrics, stop_cleanly, wait_until, BackendSetups, Instance};
use harness::{
    bird::{edge_config, router_config, Bird},
    config::{EdgeConfig, Vip},
    ecmp_lab::{edge_addrs, edge_addrs_v6, outside_worker_addrs, EcmpLab, EDGE_AS, ROUTER, ROUTER_AS},
    edge_lab::worker_addrs,
    ha_lab::HaLab,
    nginx::Nginx,
    stream::{Stream, Streaming},
    tls::TestCa,
    ChildGuard,
};
use lb_user::datapath::maps::{key_addr, BalancerMaps};

/// What one edge's balancer maps say about new flows, and the history
/// that does not matter to them.
struct Resolved {
    /// Every service, resolved: its key's bytes → its target port, mode
    /// and table size, then each Maglev slot's backend as family and
    /// address bytes. What the kernel decides for a new flow.
    services: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Backend address → the id this edge gave it.
    ids: BTreeMap<IpAddr, u32>,
    /// The services' table bases (where this edge put the tables), sorted.
    bases: Vec<u32>,
}

/// [`Resolved`] of the balancer pinned at `pins`.
fn resolved_services(pins: &Path) -> Resolved {
    let maps = BalancerMaps::open(pins).expect("the balancer's pinned maps");
    let mut out = BTreeMap::new();
    let mut bases = Vec::new();
    for item in maps.services.iter() {
        let (k, s) = item.expect("a service");
        let mut key = k.addr.to_vec();
        key.extend(k.port.to_be_bytes());
        key.extend([k.proto, k.family]);
        let mut value = Vec::new();
        value.extend(s.target_port.to_be_bytes());
        value.extend([s.mode]);
        value.extend(s.table_size.to_be_bytes());
        for slot in 0..s.table_size {
            let id = maps.maglev.get(&(s.table_base + slot), 0).expect("a Maglev slot");
            let b = maps.backends.get(&id, 0).expect("the slot's backend");
            value.push(b.family);
            value.extend(b.addr);
        }
        out.insert(key, value);
        bases.push(s.table_base);
    }
    let ids = (0..).map_while(|id| maps.backends.get(&id, 0).ok().map(|b| (id, b))).filter(|(_, b)| !b.is_vacant()).map(|(id, b)| (key_addr(&b.addr, b.family), id)).collect();
    bases.sort_unstable();
    Resolved { services: out, ids, bases }
}

#[test]
fn edges_fed_the_same_backends_in_any_order_build_byte_identical_tables() {
    harness::require_root().unwrap();
    let lab = HaLab::new("det", 0);
    let w = |i: usize| IpAddr::V4(worker_addrs(i).0);
    let extra = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 99));
    let web = |order: &[IpAddr]| Vip::new("web", IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), &["tcp/80", "tcp/443"]).backends(order.iter().copied());
    let api = |order: &[(IpAddr, u32)]| {
        order.iter().fold(Vip::new("api", IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)), &["tcp/443"]).mode("dsr"), |v, (a, weight)| v.weighted(*a, *weight))
    };
    // Edge a: the VIPs and their backends in one order.
    let a_cfg = EdgeConfig::balancer().vip(web(&[w(1), w(2), w(3)])).vip(api(&[(w(1), 2), (w(2), 1), (w(3), 1)])).to_toml();
    let a = Instance::new("deta", &a_cfg);
    let mut a_run = a.start(&lab.edges[0], &[]);
    a.wait_ready(&mut a_run);
    // Edge b: another history. First other VIPs in another order with a
    // backend since gone, then (a restart that adopts the pinned maps)
    // the same backends as a, listed backwards, the VIPs the other way round.
    let b_first = EdgeConfig::balancer().vip(api(&[(extra, 1), (w(3), 1)])).vip(web(&[extra, w(3), w(2)])).to_toml();
    let b = Instance::new("detb", &b_first);
    let mut b_run = b.start(&lab.edges[1], &[]);
    b.wait_ready(&mut b_run);
    stop_cleanly(&mut b_run, libc::SIGTERM);
    b.write_config(&EdgeConfig::balancer().vip(api(&[(w(3), 1), (w(2), 1), (w(1), 2)])).vip(web(&[w(3), w(2), w(1)])).to_toml());
    let mut b_run = b.start(&lab.edges[1], &[]);
    b.wait_ready(&mut b_run);

    let (a_maps, b_maps) = (resolved_services(&a.pin_path), resolved_services(&b.pin_path));
    let (on_a, on_b) = (&a_maps.services, &b_maps.services);
    // The histories differ where the kernel's maps are concerned …
    assert_ne!(a_maps.ids, b_maps.ids, "the edges gave the backends other ids");
    assert_ne!(a_maps.bases, b_maps.bases, "the edges put the VIPs' tables in other slots");
    // … and every service sends every slot to the same backend.
    assert_eq!(on_a.len(), 3, "three services");
    assert_eq!(on_a.keys().collect::<Vec<_>>(), on_b.keys().collect::<Vec<_>>());
    for (k, v) in on_a {
        assert!(on_b[k] == *v, "service {k:?}: the edges' resolved tables differ");
    }
    stop_cleanly(&mut a_run, libc::SIGTERM);
    stop_cleanly(&mut b_run, libc::SIGTERM);
    for i in [&a, &b] {
        i.down();
    }
}

const EDGES: usize = 3;
const WORKERS: usize = 3;
/// The VIP the streams and new connections go to.
const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// Its IPv6 twin (VIP `web6`, the same workers' IPv6 addresses).
const WEB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);
/// A VIP whose one backend is healthy only while the test listens on its
/// health-check port.
const SPARE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const SPARE_CHECK_PORT: u16 = 8081;
/// swarmlb's routing table for BIRD (`[bgp] table`).
const TABLE: u32 = 100;

/// One edge: BIRD, then swarmlb (dropped in this order).
struct Edge {
    bird: Bird,
    daemon: Option<ChildGuard>,
    inst: Instance,
}

/// The lab with everything running; teardown in field order.
struct Lab {
    edges: Vec<Edge>,
    _router_bird: Bird,
    _setups: Option<BackendSetups>,
    _nginx: Vec<Nginx>,
    lab: EcmpLab,
}

/// Worker `i`'s addresses in `mode`'s lab: on the outside segment for
/// `dsr-l2`, else on the inside one.
fn workers_of(mode: &str, i: usize) -> (Ipv4Addr, Ipv6Addr) {
    if mode == "dsr-l2" {
        outside_worker_addrs(i)
    } else {
        worker_addrs(i)
    }
}

/// The config every edge runs in `mode` (same interface names, same backends).
fn swarmlb_config(mode: &str, bird_socket: &Path) -> String {
    let workers = (1..=WORKERS).map(|i| IpAddr::V4(workers_of(mode, i).0));
    let web = Vip::new("web", IpAddr::V4(WEB), &["tcp/80"]).mode(mode).backends(workers);
    let web6 = Vip::new("web6", IpAddr::V6(WEB6), &["tcp/80"]).mode(mode).backends((1..=WORKERS).map(|i| IpAddr::V6(workers_of(mode, i).1)));
    let check = format!("{{ protocol = \"tcp\", port = {SPARE_CHECK_PORT}, interval_s = 3, timeout_s = 1, rise = 1, fall = 1 }}");
    let spare = Vip::new("spare", IpAddr::V4(SPARE), &["tcp/80"]).mode("dsr").health_check(&check).backends([IpAddr::V4(workers_of(mode, 1).0)]);
    let body = EdgeConfig::balancer().vip(web).vip(web6).vip(spare).to_toml();
    format!("{body}\n[bgp]\ntable = {TABLE}\nbirdc_socket = \"{}\"\n", bird_socket.display())
}

/// deploy/bird.conf's defines for edge `i`.
fn edge_defines(i: usize) -> [(&'static str, String); 6] {
    [
        ("EDGE_ID", edge_addrs(i).0.to_string()),
        ("EDGE_V6", edge_addrs_v6(i).0.to_string()),
        ("EDGE_AS", EDGE_AS.to_string()),
        ("ROUTER", ROUTER.to_string()),
        ("ROUTER_AS", ROUTER_AS.to_string()),
        ("VIP_TABLE", TABLE.to_string()),
    ]
}

/// The lab with web in `mode` (spare is always `dsr`, it carries no traffic).
fn start(tag: &str, mode: &str) -> Lab {
    harness::require_root().unwrap();
    let lab = EcmpLab::new(tag, EDGES, WORKERS, mode == "dsr-l2");
    let ca = TestCa::new();
    let any: [IpAddr; 2] = ["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
    let nginx = (1..=WORKERS).map(|i| Nginx::start(&lab.workers[i - 1], &format!("w{i}"), &any, &ca, &["a.com"]).expect("nginx starts")).collect();
    let tunnel_sources: Vec<IpAddr> = (0..EDGES).flat_map(|i| [IpAddr::V4(edge_addrs(i).1), IpAddr::V6(edge_addrs_v6(i).1)]).collect();
    let setups = (mode != "nat").then(|| BackendSetups::apply(&lab.workers, tag, mode, &[IpAddr::V4(WEB), IpAddr::V6(WEB6), IpAddr::V4(SPARE)], &tunnel_sources));
    let peers: Vec<(String, u32)> = (0..EDGES).map(|i| (edge_addrs(i).0.to_string(), EDGE_AS)).collect();
    let router_bird = Bird::start(&lab.router, &format!("{tag}r"), &router_config(&ROUTER.to_string(), ROUTER_AS, &peers));
    let edges = (0..EDGES)
        .map(|i| {
            let ns = &lab.edges[i];
            let bird = Bird::start(ns, &format!("{tag}e{i}"), &edge_config(&edge_defines(i)));
            let inst = Instance::new(&format!("{tag}e{i}"), &swarmlb_config(mode, &bird.socket()));
            let mut daemon = inst.start(ns, &[]);
            inst.wait_ready(&mut daemon);
            Edge { bird, daemon: Some(daemon), inst }
        })
        .collect();
    let l = Lab { edges, _router_bird: router_bird, _setups: setups, _nginx: nginx, lab };
    let all: Vec<IpAddr> = (0..EDGES).map(|i| IpAddr::V4(edge_addrs(i).0)).collect();
    wait_until(Duration::from_secs(30), || sorted(l.lab.next_hops(IpAddr::V4(WEB))) == all, || l.explain("the router's ECMP route to web over every edge"));
    let all6: Vec<IpAddr> = (0..EDGES).map(|i| IpAddr::V6(edge_addrs_v6(i).0)).collect();
    wait_until(Duration::from_secs(10), || sorted(l.lab.next_hops(IpAddr::V6(WEB6))) == all6, || l.explain("the router's ECMP route to web6 over every edge"));
    l
}

fn sorted(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    v.sort();
    v
}

impl Lab {
    /// What the router and the edges say, for a failed wait.
    fn explain(&self, what: &str) -> String {
        let route = self.lab.router.exec(&["ip", "route"]).unwrap_or_default() + &self.lab.router.exec(&["ip", "-6", "route"]).unwrap_or_default();
        let edges: Vec<String> = self.edges.iter().map(|e| format!("{}\n{}", e.bird.birdc(&["show", "protocols"]), e.bird.birdc(&["show", "route"]))).collect();
        format!("{what}\nrouter routes:\n{route}\nedges:\n{}\nrouter BIRD:\n{}", edges.join("\n"), self._router_bird.birdc(&["show", "protocols"]))
    }

    /// Edge `i` dies: its links go down first (the host is gone: no FIN,
    /// no BGP notification gets out), then kill -9 of swarmlb and BIRD.
    /// Returns the time until the router's route to web has lost it.
    fn kill_edge(&mut self, i: usize) -> Duration {
        let gone = IpAddr::V4(edge_addrs(i).0);
        let t0 = Instant::now();
        self.lab.cut(i);
        self.edges[i].daemon.as_mut().unwrap().signal(libc::SIGKILL);
        self.edges[i].bird.kill9();
        while self.lab.next_hops(IpAddr::V4(WEB)).contains(&gone) {
            assert!(t0.elapsed() < Duration::from_secs(10), "{}", self.explain("the dead edge leaves the ECMP set"));
            std::thread::sleep(Duration::from_millis(5));
        }
        let converged = t0.elapsed();
        let gone6 = IpAddr::V6(edge_addrs_v6(i).0);
        wait_until(Duration::from_secs(10), || !self.lab.next_hops(IpAddr::V6(WEB6)).contains(&gone6), || self.explain("the dead edge leaves web6's ECMP set"));
        println!("edge {} out of web6's ECMP route after {:.3} s", i + 1, t0.elapsed().as_secs_f64());
        converged
    }

    /// The client ports of edge `i`'s NAT entries.
    fn nat_ports(&self, i: usize) -> BTreeSet<u16> {
        let maps = BalancerMaps::open(&self.edges[i].inst.pin_path).expect("the balancer's pinned maps");
        maps.nat.iter().map(|r| r.expect("a NAT entry").1.client_port).collect()
    }

    /// Balancer counter `name` of edge `i`.
    fn counter(&self, i: usize, name: &str) -> u64 {
        self.edges[i].inst.status()["balancer"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// New connections edge `i` sent on (web's new flows).
    fn new_flows(&self, i: usize) -> u64 {
        self.new_flows_of(i, "web")
    }

    /// New connections edge `i` sent on to VIP `name`.
    fn new_flows_of(&self, i: usize, name: &str) -> u64 {
        self.edges[i].inst.status()["vips"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()["rules"][0]["new_flows"].as_u64().unwrap()
    }
}

/// One HTTP request on a new connection through web; the worker's name.
fn one_request(l: &Lab) -> String {
    Stream::open(&l.lab.client, IpAddr::V4(WEB)).worker
}

#[test]
fn ecmp_edges_spread_flows_withdraw_dead_vips_and_survive_an_edge_crash_in_dsr() {
    let mut l = start("bgpdsr", "dsr");
    // Status: what swarmlb announces and BIRD's session.
    let s = l.edges[0].inst.status();
    println!("edge 1 status bgp: {}", s["bgp"]);
    assert_eq!(s["bgp"]["table"], TABLE);
    assert!(s["bgp"]["bird"].as_array().unwrap().iter().any(|p| p["name"] == "upstream" && p["state"] == "up" && p["info"] == "Established"), "{}", s["bgp"]);

    // 1. New connections spread over the edges (the router's L4 hash).
    let before: Vec<u64> = (0..EDGES).map(|i| l.new_flows(i)).collect();
    for _ in 0..300 {
        one_request(&l);
    }
    let got: Vec<u64> = (0..EDGES).map(|i| l.new_flows(i) - before[i]).collect();
    println!("300 new connections over the edges: {got:?}");
    assert_eq!(got.iter().sum::<u64>(), 300, "every connection counted once, by one edge");
    for n in &got {
        assert!((60..=135).contains(n), "each edge carries 20–45% of new connections: {got:?}");
    }

    // 1a. The same over IPv6 (web6): the edges' BIRD announce it on the
    //     session's IPv6 channel, the router spreads it by its IPv6 ECMP.
    let before: Vec<u64> = (0..EDGES).map(|i| l.new_flows_of(i, "web6")).collect();
    for _ in 0..150 {
        Stream::open(&l.lab.client, IpAddr::V6(WEB6));
    }
    let got: Vec<u64> = (0..EDGES).map(|i| l.new_flows_of(i, "web6") - before[i]).collect();
    println!("150 new IPv6 connections over the edges: {got:?}");
    assert_eq!(got.iter().sum::<u64>(), 150, "every IPv6 connection counted once, by one edge");
    for n in &got {
        assert!((30..=68).contains(n), "each edge carries 20–45% of new IPv6 connections: {got:?}");
    }

    // 1b. The outside segment becomes a hub: every edge's port gets the
    //     frames the router sends to the other edges' MACs too, as on a
    //     promiscuous port. Each edge balances only its own (rule 2a):
    //     every connection is still placed once, by one edge, and each
    //     edge passed what was for the others.
    l.lab.hub(true);
    let before: Vec<u64> = (0..EDGES).map(|i| l.new_flows(i)).collect();
    let passed_before: Vec<u64> = (0..EDGES).map(|i| l.counter(i, "pass_other_host")).collect();
    for _ in 0..60 {
        one_request(&l);
    }
    let got: Vec<u64> = (0..EDGES).map(|i| l.new_flows(i) - before[i]).collect();
    let passed: Vec<u64> = (0..EDGES).map(|i| l.counter(i, "pass_other_host") - passed_before[i]).collect();
    l.lab.hub(false);
    println!("hub: 60 new connections placed {got:?}; frames for the other edges passed {passed:?}");
    assert_eq!(got.iter().sum::<u64>(), 60, "on a hub every connection is still placed by one edge: {got:?}");
    for i in 0..EDGES {
        assert!(passed[i] >= 60 - got[i], "edge {} passed the SYNs for the other edges: {passed:?}, placed {got:?}", i + 1);
    }

    // 1c. An interface's MAC changes: the agent follows it (netlink), and
    //     the data path checks frames against the new one.
    let ns = &l.lab.edges[1];
    let ifindex = harness::topology::ifindex(ns, "e-in").unwrap();
    let old = harness::topology::mac(ns, "e-in").unwrap();
    let written = |l: &Lab| BalancerMaps::open(&l.edges[1].inst.pin_path).unwrap().if_macs.get(&ifindex, 0).unwrap();
    assert_eq!((written(&l).mac, written(&l).known), (old, 1), "the agent wrote e-in's MAC");
    let new = [2, 0, 0, 0, 0x13, 2];
    ns.exec(&["ip", "link", "set", "dev", "e-in", "address", "02:00:00:00:13:02"]).unwrap();
    wait_until(Duration::from_secs(5), || written(&l).mac == new, || format!("the new MAC of e-in written: {:?}", written(&l)));
    let old_text = old.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ns.exec(&["ip", "link", "set", "dev", "e-in", "address", &old_text]).unwrap();
    wait_until(Duration::from_secs(5), || written(&l).mac == old, || format!("e-in's MAC written back: {:?}", written(&l)));

    // 2. A VIP without a healthy backend is withdrawn by every edge, and
    //    announced again when its backend recovers.
    let spare = IpAddr::V4(SPARE);
    wait_until(Duration::from_secs(15), || l.lab.next_hops(spare).is_empty(), || l.explain("spare (nothing listens on its check port) withdrawn"));
    for e in &l.edges {
        assert!(!e.inst.status()["bgp"]["announced"].as_array().unwrap().iter().any(|a| a == &SPARE.to_string()));
    }
    let metrics = scrape_metrics(&l.lab.edges[0]).unwrap();
    let announced = |vip: &str| metrics.lines().find(|m| m.starts_with("swarmlb_bgp_vip_announced{") && m.contains(&format!("vip=\"{vip}\""))).map(|m| m.rsplit(' ').next().unwrap().to_owned());
    assert_eq!((announced("web").as_deref(), announced("spare").as_deref()), (Some("1"), Some("0")), "{metrics}");
    let listener = l.lab.workers[0].run(|| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], SPARE_CHECK_PORT)))).unwrap();
    let t = Instant::now();
    wait_until(Duration::from_secs(15), || l.lab.next_hops(spare).len() == EDGES, || l.explain("spare announced by every edge once its backend is up"));
    println!("spare: announced by all edges {:.2} s after its backend's check port opened", t.elapsed().as_secs_f64());
    drop(listener);
    wait_until(Duration::from_secs(15), || l.lab.next_hops(spare).is_empty(), || l.explain("spare withdrawn again"));

    // 3. A hitless restart (SIGTERM, start again) keeps edge 3 announcing:
    //    the router never loses its next hop.
    let e3 = IpAddr::V4(edge_addrs(2).0);
    let mut d = l.edges[2].daemon.take().unwrap();
    stop_cleanly(&mut d, libc::SIGTERM);
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        assert!(l.lab.next_hops(IpAddr::V4(WEB)).contains(&e3), "{}", l.explain("edge 3 still announced while its agent is stopped"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut d = l.edges[2].inst.start(&l.lab.edges[2], &[]);
    l.edges[2].inst.wait_ready(&mut d);
    l.edges[2].daemon = Some(d);
    assert!(l.lab.next_hops(IpAddr::V4(WEB)).contains(&e3));

    // 4. 100 long-lived streams over IPv4 and 50 over IPv6; edge 1 dies: its links go down (the host
    //    is gone: no FIN, no BGP notification gets out), then kill -9 of
    //    swarmlb and BIRD. BFD takes it out of the router's ECMP set; its
    //    streams move to the other edges, which send them to the same
    //    workers: none breaks.
    let open = |i| Stream::open(&l.lab.client, if i < 100 { IpAddr::V4(WEB) } else { IpAddr::V6(WEB6) }).with_read_timeout(Duration::from_secs(20));
    let streams = Streaming::start((0..150).map(open).collect(), Duration::from_millis(100));
    streams.progress_at_least("before the crash", Duration::from_secs(1), 50);
    let e1 = IpAddr::V4(edge_addrs(0).0);
    let converged = l.kill_edge(0);
    println!("dsr: edge 1 died: out of the router's ECMP route after {:.3} s (BFD 3 × 100 ms)", converged.as_secs_f64());
    assert!(converged < Duration::from_secs(1), "BFD: the router drops a dead edge within 1 s, took {converged:?}");
    std::thread::sleep(Duration::from_secs(3));
    streams.progress_at_least("after the crash", Duration::from_secs(1), 50);

    // 5. Edge 1 comes back (links, BIRD, swarmlb adopting its pinned data
    //    path) with the backend set unchanged: the router spreads flows
    //    over it again, and the streams it gets find the same workers.
    l.lab.reconnect(0);
    let bird = Bird::start(&l.lab.edges[0], "bgpdsre0again", &edge_config(&edge_defines(0)));
    l.edges[0].inst.write_config(&swarmlb_config("dsr", &bird.socket()));
    l.edges[0].bird = bird;
    let t1 = Instant::now();
    let mut d = l.edges[0].inst.start(&l.lab.edges[0], &[]);
    l.edges[0].inst.wait_ready(&mut d);
    l.edges[0].daemon = Some(d);
    wait_until(Duration::from_secs(30), || l.lab.next_hops(IpAddr::V4(WEB)).contains(&e1), || l.explain("edge 1 back in the ECMP set"));
    let e1_v6 = IpAddr::V6(edge_addrs_v6(0).0);
    wait_until(Duration::from_secs(10), || l.lab.next_hops(IpAddr::V6(WEB6)).contains(&e1_v6), || l.explain("edge 1 back in web6's ECMP set"));
    println!("edge 1 back in the router's ECMP route {:.2} s after its agent started", t1.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(2));
    streams.progress_at_least("after the return", Duration::from_secs(1), 50);
    let ended = streams.stop();
    let broken: Vec<String> = ended.iter().filter_map(|e| e.failure()).collect();
    let longest = ended.iter().map(|e| e.longest).max().unwrap_or_default();
    println!("dsr: {} of 150 streams (100 IPv4, 50 IPv6) broken by the death and the return of edge 1; the longest wait for an answer {:.2} s", broken.len(), longest.as_secs_f64());
    assert!(broken.is_empty(), "dsr streams broke: {broken:?}");
    let returned = l.edges[0].inst.status()["flows"].as_u64().unwrap();
    println!("edge 1 after its return carries {returned} flows");

    // 6. `swarmlb down` on edge 2 (its agent stopped first) withdraws it.
    let mut d = l.edges[1].daemon.take().unwrap();
    stop_cleanly(&mut d, libc::SIGTERM);
    let out = down_in(&l.lab.edges[1], &l.edges[1].inst);
    assert!(out.contains("withdrew 2 VIP routes"), "web and web6: {out}");
    let e2 = IpAddr::V4(edge_addrs(1).0);
    wait_until(Duration::from_secs(5), || !l.lab.next_hops(IpAddr::V4(WEB)).contains(&e2), || l.explain("edge 2 withdrawn by `swarmlb down`"));
    assert!(!one_request(&l).is_empty(), "edge 3 serves on");
}

/// `swarmlb down` for `inst` inside `ns` (its routes are in that
/// namespace); its output.
fn down_in(ns: &harness::Netns, inst: &Instance) -> String {
    let mut cmd = std::process::Command::new(harness::daemon::swarmlb_bin());
    cmd.arg("down").arg("--pin-path").arg(&inst.pin_path).arg("--runtime-dir").arg(&inst.runtime_dir);
    let mut child = ns.spawn(&mut cmd);
    let status = child.wait_timeout(Duration::from_secs(20)).expect("swarmlb down finishes");
    let out = child.output_so_far();
    assert!(status.success(), "swarmlb down failed:\n{out}");
    out
}

/// `dsr-l2` behind ECMP, the workers on the edges' (the router's) segment:
/// the edges only rewrite the MACs and send each packet back out of the
/// interface it came in on; the workers answer the client through the
/// router. 40 IPv4 and 20 IPv6 streams survive the crash of edge 1.
#[test]
fn ecmp_edges_in_dsr_l2_survive_an_edge_crash() {
    let mut l = start("bgpl2", "dsr-l2");
    let open = |i| Stream::open(&l.lab.client, if i < 40 { IpAddr::V4(WEB) } else { IpAddr::V6(WEB6) }).with_read_timeout(Duration::from_secs(20));
    let streams = Streaming::start((0..60).map(open).collect(), Duration::from_millis(100));
    streams.progress_at_least("dsr-l2: before the crash", Duration::from_secs(1), 30);
    let placed: Vec<u64> = (0..EDGES).map(|i| l.new_flows(i) + l.new_flows_of(i, "web6")).collect();
    let converged = l.kill_edge(0);
    println!("dsr-l2: edge 1 died: out of the router's ECMP route after {:.3} s", converged.as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));
    streams.progress_at_least("dsr-l2: after the crash", Duration::from_secs(1), 30);
    let ended = streams.stop();
    let broken: Vec<String> = ended.iter().filter_map(|e| e.failure()).collect();
    println!("dsr-l2: the edges placed {placed:?} of 60 streams; {} broken by the death of edge 1", broken.len());
    assert!(placed[0] > 0, "edge 1 carried some streams: {placed:?}");
    assert!(broken.is_empty(), "dsr-l2 streams broke: {broken:?}");
}

/// `nat` behind ECMP: each edge has its own SNAT address, so a flow that
/// the router moves to another edge reaches its backend from an address
/// the backend has no socket for, and is reset. When edge 1 dies, its
/// flows move and break; and the router's hash-threshold ECMP, going from
/// three next hops to two, also moves some flows between the survivors,
/// which break too. The test holds the design to exactly that: every flow
/// that changed edge broke, and none that stayed on its edge.
#[test]
fn ecmp_edges_in_nat_break_only_the_flows_that_change_edge() {
    let mut l = start("bgpnat", "nat");
    let open = |_| Stream::open(&l.lab.client, IpAddr::V4(WEB)).with_read_timeout(Duration::from_secs(20));
    let streams = Streaming::start((0..100).map(open).collect(), Duration::from_millis(100));
    streams.progress_at_least("nat: before the crash", Duration::from_secs(1), 50);
    let before: Vec<BTreeSet<u16>> = (0..EDGES).map(|i| l.nat_ports(i)).collect();
    let converged = l.kill_edge(0);
    println!("nat: edge 1 died: out of the router's ECMP route after {:.3} s", converged.as_secs_f64());
    std::thread::sleep(Duration::from_secs(4));
    let after: Vec<BTreeSet<u16>> = (1..EDGES).map(|i| l.nat_ports(i)).collect();
    let ended = streams.stop();
    let ports: BTreeSet<u16> = ended.iter().map(|e| e.port).collect();
    let on_dead: BTreeSet<u16> = before[0].intersection(&ports).copied().collect();
    // A stream changed edge: it was on edge 1, or a survivor that did not
    // carry it before holds a NAT entry for it now.
    let moved: BTreeSet<u16> = ports
        .iter()
        .copied()
        .filter(|p| on_dead.contains(p) || (1..EDGES).any(|k| !before[k].contains(p) && after[k - 1].contains(p)))
        .collect();
    let broken: BTreeSet<u16> = ended.iter().filter(|e| e.failure().is_some()).map(|e| e.port).collect();
    println!(
        "nat: {} of 100 streams were on the dead edge, {} changed edge in all, {} broke",
        on_dead.len(),
        moved.len(),
        broken.len()
    );
    assert!(!on_dead.is_empty(), "edge 1 carried some streams");
    assert_eq!(broken, moved, "exactly the streams that changed edge break");
}
