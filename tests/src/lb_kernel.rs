//! The balancer loaded for `BPF_PROG_TEST_RUN` inside a namespace whose
//! routes and neighbours are known exactly, so the kernel's next-hop
//! lookups have answers the model can be given too ([`FixtureNet::route`]).
//!
//! ```text
//!  clients 198.51.100.0/24, 2001:db8:1::/64          backends 10.1.0.0/24, fd00:1::/64
//!        ── lbout (outside) ──[ balancer ]── lbin (inside, 10.1.0.1, fd00:1::1) ──
//! ```
//!
//! Neighbours are permanent entries: backends `.11 .12 .13` (and `::11 …`)
//! and client `.2`; `.20` has no neighbour entry; `192.0.2.0/24` has no route.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
};

use lb_common::{
    balancer::*,
    balancer_model::{Action, NatInsert, Route, Tables},
    firewall,
    isolator::{Impossible, RouteBack},
    model::Host,
    wire::{FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP},
};
use crate::test_run::TestRun as _;
use crate::reference_policy::ReferencePolicy;
use lb_user::{
    datapath::balancer_writer::{AppliedVip, BalancerWriter, Desired, DesiredBackend, DesiredRule, DesiredVip},
    datapath::maps::addr_key,
    source::config::{Cidr, Config},
    source::netif::HostAddr,
    datapath::loader::{remove_pins, Datapath, MapSizes, Program},
    datapath::maps::{BalancerMaps, IsolatorMaps},
    datapath::martian, datapath::isolator_writer,
};

use crate::{topology, Netns, Topology};

/// Outside interface (clients).
pub const OUT_IF: &str = "lbout";
/// Inside interface (backends).
pub const IN_IF: &str = "lbin";
/// Maglev table size of the fixtures: small, so the model can hold a copy.
pub const FIXTURE_TABLE_SIZE: u32 = 251;
/// MTU of both interfaces.
pub const FIXTURE_MTU: u16 = 1500;

/// Backends with a neighbour entry, and their MACs.
pub const BACKENDS_V4: [&str; 3] = ["10.1.0.11", "10.1.0.12", "10.1.0.13"];
/// IPv6 backends with a neighbour entry.
pub const BACKENDS_V6: [&str; 3] = ["fd00:1::11", "fd00:1::12", "fd00:1::13"];
/// A client with a neighbour entry on the outside.
pub const CLIENT_V4: &str = "198.51.100.2";
/// An IPv6 client with a neighbour entry.
pub const CLIENT_V6: &str = "2001:db8:1::2";
/// An inside address without a neighbour entry.
pub const NO_NEIGHBOUR_V4: &str = "10.1.0.20";
/// An address without a route.
pub const NO_ROUTE_V4: &str = "192.0.2.99";

/// A `nat` VIP of [`fixture_desired`]: tcp/443, tcp/80 → 8080, udp/53.
pub const NAT4: &str = "203.0.113.10";
/// A `dsr` VIP: tcp/443, udp/443.
pub const DSR4: &str = "203.0.113.11";
/// A `dsr-l2` VIP: tcp/443.
pub const L2_4: &str = "203.0.113.12";
/// The IPv6 `nat` VIP (the rules of [`NAT4`]).
pub const NAT6: &str = "2001:db8:10::10";
/// The IPv6 `dsr` VIP (the rules of [`DSR4`]).
pub const DSR6: &str = "2001:db8:10::11";
/// The IPv6 `dsr-l2` VIP.
pub const L2_6: &str = "2001:db8:10::12";
/// A VIP whose only backend has no neighbour entry.
pub const NO_NEIGH_VIP: &str = "203.0.113.20";
/// A VIP whose only backend has no route.
pub const NO_ROUTE_VIP: &str = "203.0.113.21";
/// A VIP without backends.
pub const EMPTY_VIP: &str = "203.0.113.22";
/// A `nat` VIP with `proxy_protocol = "v2"` (the rules of [`NAT4`]).
pub const PROXY4: &str = "203.0.113.13";
/// The IPv6 one.
pub const PROXY6: &str = "2001:db8:10::13";
/// A `nat` VIP with `proxy_protocol = "v1"` (the rules of [`NAT4`]).
pub const PROXY4_V1: &str = "203.0.113.14";
/// The IPv6 one.
pub const PROXY6_V1: &str = "2001:db8:10::14";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Forwarding rules (protocol, port, target port) without a PROXY
/// protocol header.
pub fn desired_rules(list: &[(u8, u16, u16)]) -> Vec<DesiredRule> {
    list.iter().map(|&(proto, port, target_port)| DesiredRule { proto, port, target_port, proxy: 0 }).collect()
}

/// `v` with the PROXY protocol header `proxy` (a
/// `lb_common::proxy_protocol::PROXY_*`) on its TCP rules, as a VIP's
/// `proxy_protocol` sets it.
pub fn with_proxy(mut v: DesiredVip, proxy: u8) -> DesiredVip {
    for r in v.rules.iter_mut().filter(|r| r.proto == IPPROTO_TCP) {
        r.proxy = proxy;
    }
    v
}

/// The balancer state the differential tests run under: one VIP of each
/// mode and family over the fixture backends, and VIPs whose backend
/// cannot be reached.
pub fn fixture_desired() -> Desired {
    let backends = |addrs: &[&str], weights: &[u32]| -> Vec<DesiredBackend> {
        addrs.iter().zip(weights).map(|(a, w)| DesiredBackend { address: ip(a), weight: *w, up: true }).collect()
    };
    let vip = |name: &str, address: &str, mode: Mode, rules: &[(u8, u16, u16)], b: Vec<DesiredBackend>| DesiredVip {
        name: name.into(),
        address: ip(address),
        mode,
        rules: desired_rules(rules),
        backends: b,
        allow: Vec::new(),
        deny: Vec::new(),
    };
    let proxy = |version: u8, v: DesiredVip| with_proxy(v, version);
    let (v1, v2) = (lb_common::proxy_protocol::PROXY_V1, lb_common::proxy_protocol::PROXY_V2);
    let nat_rules = [(IPPROTO_TCP, 443, 443), (IPPROTO_TCP, 80, 8080), (IPPROTO_UDP, 53, 53)];
    let dsr_rules = [(IPPROTO_TCP, 443, 443), (IPPROTO_UDP, 443, 443)];
    Desired {
        inside_v4: Some("10.1.0.1".parse().unwrap()),
        inside_v6: Some("fd00:1::1".parse().unwrap()),
        snat_ports: (1024, 65535),
        snat_pool: Vec::new(),
        egress: Vec::new(),
        macs: Vec::new(),
        vips: vec![
            vip("nat4", NAT4, Mode::Nat, &nat_rules, backends(&BACKENDS_V4, &[1, 1, 2])),
            vip("dsr4", DSR4, Mode::Dsr, &dsr_rules, backends(&BACKENDS_V4[..2], &[1, 2])),
            vip("l2-4", L2_4, Mode::DsrL2, &[(IPPROTO_TCP, 443, 443)], backends(&BACKENDS_V4[2..], &[1])),
            vip("nat6", NAT6, Mode::Nat, &nat_rules, backends(&BACKENDS_V6, &[1, 1, 1])),
            vip("dsr6", DSR6, Mode::Dsr, &dsr_rules, backends(&BACKENDS_V6, &[3, 1, 1])),
            vip("l2-6", L2_6, Mode::DsrL2, &[(IPPROTO_TCP, 443, 443)], backends(&BACKENDS_V6[..1], &[1])),
            vip("no-neigh", NO_NEIGH_VIP, Mode::Nat, &[(IPPROTO_TCP, 443, 443)], backends(&[NO_NEIGHBOUR_V4], &[1])),
            vip("no-route", NO_ROUTE_VIP, Mode::Dsr, &[(IPPROTO_TCP, 443, 443)], backends(&[NO_ROUTE_V4], &[1])),
            vip("empty", EMPTY_VIP, Mode::Nat, &[(IPPROTO_TCP, 443, 443)], Vec::new()),
            proxy(v2, vip("pp4", PROXY4, Mode::Nat, &nat_rules, backends(&BACKENDS_V4, &[1, 1, 1]))),
            proxy(v2, vip("pp6", PROXY6, Mode::Nat, &nat_rules, backends(&BACKENDS_V6, &[1, 1, 1]))),
            proxy(v1, vip("pp4v1", PROXY4_V1, Mode::Nat, &nat_rules, backends(&BACKENDS_V4, &[1, 1, 1]))),
            proxy(v1, vip("pp6v1", PROXY6_V1, Mode::Nat, &nat_rules, backends(&BACKENDS_V6, &[1, 1, 1]))),
        ],
    }
}

/// The zone [`KernelBalancer::bind_zone`] puts the outside interface in:
/// the clients' network is outside except `198.51.100.64/26` and
/// `2001:db8:1::40/122`.
pub const EDGE_ZONE_CONFIG: &str = r#"
[[interface]]
name = "lbout"
zone = "edge"

[zone.edge]
protected = ["tcp/22", "tcp/8443", "udp/161", "9000-9100"]
allow = ["198.51.100.64/26", "2001:db8:1::40/122"]

[cluster]
nodes = ["10.1.0.11"]
"#;

/// The MAC a fixture neighbour has: `02:00:00:00:<family>:<last byte>`.
pub fn neighbour_mac(a: IpAddr) -> [u8; 6] {
    let (bytes, family) = addr_key(a);
    let last = if family == FAMILY_V4 { bytes[3] } else { bytes[15] };
    [2, 0, 0, 0, family, last]
}

/// The namespace and its two interfaces.
pub struct FixtureNet {
    /// Owns the namespace (removed on drop).
    _topology: Topology,
    /// The namespace.
    pub ns: Netns,
    /// ifindex of [`OUT_IF`].
    pub out_ifindex: u32,
    /// ifindex of [`IN_IF`].
    pub in_ifindex: u32,
    /// MAC of [`OUT_IF`].
    pub out_mac: [u8; 6],
    /// MAC of [`IN_IF`].
    pub in_mac: [u8; 6],
    /// What its routing table answers.
    pub fib: FixtureFib,
}

/// The fixture namespace's routes and neighbours, as the model sees them.
#[derive(Clone, Debug)]
pub struct FixtureFib {
    out_ifindex: u32,
    in_ifindex: u32,
    out_mac: [u8; 6],
    in_mac: [u8; 6],
    neighbours: HashSet<IpAddr>,
}

impl FixtureNet {
    /// Builds the namespace (each veth's peer stays in it, down-stream of
    /// nothing: no packet ever leaves, test runs only consult the tables).
    pub fn new(tag: &str) -> Self {
        let mut t = Topology::new();
        let ns = t.netns(tag);
        t.veth(&ns, OUT_IF, &ns, "lbout-p");
        t.veth(&ns, IN_IF, &ns, "lbin-p");
        t.addr(&ns, OUT_IF, "198.51.100.1/24");
        t.addr(&ns, OUT_IF, "2001:db8:1::1/64");
        t.addr(&ns, IN_IF, "10.1.0.1/24");
        t.addr(&ns, IN_IF, "fd00:1::1/64");
        t.forwarding(&ns);
        for (ifname, a) in NEIGHBOURS {
            let a: IpAddr = a.parse().unwrap();
            crate::rtnl::neighbour(&ns, ifname, a, neighbour_mac(a), true).unwrap();
        }
        let out_ifindex = t.ifindex(&ns, OUT_IF);
        let in_ifindex = t.ifindex(&ns, IN_IF);
        let out_mac = topology::mac(&ns, OUT_IF).unwrap();
        let in_mac = topology::mac(&ns, IN_IF).unwrap();
        let fib = FixtureFib::new(out_ifindex, in_ifindex, out_mac, in_mac);
        Self { _topology: t, ns, out_ifindex, in_ifindex, out_mac, in_mac, fib }
    }
}

/// The fixture's permanent neighbour entries: (interface, address).
const NEIGHBOURS: [(&str, &str); 8] = [
    (IN_IF, BACKENDS_V4[0]),
    (IN_IF, BACKENDS_V4[1]),
    (IN_IF, BACKENDS_V4[2]),
    (IN_IF, BACKENDS_V6[0]),
    (IN_IF, BACKENDS_V6[1]),
    (IN_IF, BACKENDS_V6[2]),
    (OUT_IF, CLIENT_V4),
    (OUT_IF, CLIENT_V6),
];

impl FixtureFib {
    /// The fixture's routes and neighbours for interfaces with these
    /// ifindexes and MACs (a real [`FixtureNet`]'s, or made-up ones for a
    /// model-only run such as the fuzzer's).
    pub fn new(out_ifindex: u32, in_ifindex: u32, out_mac: [u8; 6], in_mac: [u8; 6]) -> Self {
        let neighbours = NEIGHBOURS.iter().map(|(_, a)| a.parse().unwrap()).collect();
        Self { out_ifindex, in_ifindex, out_mac, in_mac, neighbours }
    }

    /// The route back to a source `src`, as a reverse-path lookup (no
    /// neighbour needed) sees it.
    pub fn route_back(&self, family: u8, src: &[u8; 16]) -> RouteBack {
        let a = lb_user::datapath::maps::key_addr(src, family);
        let own: [IpAddr; 4] =
            ["10.1.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap(), "198.51.100.1".parse().unwrap(), "2001:db8:1::1".parse().unwrap()];
        if own.contains(&a) {
            return RouteBack::NoRoute;
        }
        let on = |p: &str| Cidr::parse(p).unwrap().contains(&Cidr::host(a));
        if on("10.1.0.0/24") || on("fd00:1::/64") {
            RouteBack::Via(self.in_ifindex)
        } else if on("198.51.100.0/24") || on("2001:db8:1::/64") {
            RouteBack::Via(self.out_ifindex)
        } else {
            RouteBack::NoRoute
        }
    }

    /// The impossible-source rules of the edge: those of a zone interface
    /// and of a balancer outside interface on [`OUT_IF`].
    pub fn impossible(&self) -> martian::Rules {
        let a = |ifindex, s: &str, prefix| HostAddr { ifindex, addr: s.parse().unwrap(), prefix };
        let host = [
            a(1, "127.0.0.1", 8),
            a(1, "::1", 128),
            a(self.out_ifindex, "198.51.100.1", 24),
            a(self.out_ifindex, "2001:db8:1::1", 64),
            a(self.in_ifindex, "10.1.0.1", 24),
            a(self.in_ifindex, "fd00:1::1", 64),
        ];
        let desired = fixture_desired();
        let outside = martian::Outside {
            ifindexes: vec![self.out_ifindex],
            vips: desired.vips.iter().map(|v| v.address).collect(),
            inside: vec![ip("10.1.0.1"), ip("fd00:1::1")],
            backend_networks: vec![Cidr::parse("10.1.0.0/24").unwrap(), Cidr::parse("fd00:1::/64").unwrap()],
        };
        martian::compile(&host, &[self.out_ifindex], Some(&outside))
    }

    /// What the kernel's FIB answers for `dst` (the model's view of it).
    pub fn route(&self, family: u8, dst: &[u8; 16], ip_len: u16) -> Route {
        let a = lb_user::datapath::maps::key_addr(dst, family);
        let on = |prefix: &str, len: u32| -> bool {
            let p: IpAddr = prefix.parse().unwrap();
            match (a, p) {
                (IpAddr::V4(a), IpAddr::V4(p)) => (u32::from(a) ^ u32::from(p)) >> (32 - len) == 0,
                (IpAddr::V6(a), IpAddr::V6(p)) => (u128::from(a) ^ u128::from(p)) >> (128 - len) == 0,
                _ => false,
            }
        };
        let (ifindex, smac) = if on("10.1.0.0", 24) || on("fd00:1::", 64) {
            (self.in_ifindex, self.in_mac)
        } else if on("198.51.100.0", 24) || on("2001:db8:1::", 64) {
            (self.out_ifindex, self.out_mac)
        } else {
            return Route::Unreachable;
        };
        let own: [IpAddr; 4] =
            ["10.1.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap(), "198.51.100.1".parse().unwrap(), "2001:db8:1::1".parse().unwrap()];
        if own.contains(&a) {
            return Route::Unreachable;
        }
        if ip_len > FIXTURE_MTU {
            return Route::TooBig { mtu: FIXTURE_MTU };
        }
        if !self.neighbours.contains(&a) {
            return Route::NoNeighbour;
        }
        Route::Via { ifindex, smac, dmac: neighbour_mac(a) }
    }
}

/// The XDP action code of a model action, as BPF_PROG_TEST_RUN reports
/// it (the next stage, the isolator, passes what the fixtures send it:
/// their interfaces have no zone).
pub fn action_code(a: Action) -> u32 {
    use crate::xdp_action::*;
    match a {
        Action::NextStage | Action::Pass => XDP_PASS,
        Action::Drop => XDP_DROP,
        Action::Tx => XDP_TX,
        Action::Redirect(_) => XDP_REDIRECT,
    }
}

/// A loaded balancer with its maps pinned in a directory of its own
/// (removed on drop, also on panic).
pub struct KernelBalancer {
    // Field order: the program and maps close before the pins go.
    dp: Option<Datapath>,
    /// The pinned maps (taken on drop).
    pub maps: Option<BalancerMaps>,
    writer: BalancerWriter,
    pin_dir: PathBuf,
    /// The fixture namespace.
    pub net: FixtureNet,
    /// What the maps were sized to.
    sizes: MapSizes,
    /// The impossible-source rules in the tries (none until [`KernelBalancer::bind_zone`]).
    pub impossible: martian::Rules,
    /// The VIPs as last applied.
    pub applied: Vec<AppliedVip>,
}

/// What the edge answers the isolator behind the balancer, as the model
/// sees it.
#[derive(Clone, Debug)]
pub struct EdgeHost {
    fib: FixtureFib,
    rules: martian::Rules,
}

impl Host for EdgeHost {
    fn impossible_source(&self, ifindex: u32, family: u8, src: &[u8; 16]) -> Option<Impossible> {
        self.rules.lookup(ifindex, family, src)
    }
    fn route_back(&self, _ifindex: u32, family: u8, src: &[u8; 16], _dst: &[u8; 16]) -> RouteBack {
        self.fib.route_back(family, src)
    }
}

impl KernelBalancer {
    /// Loads the programs and builds the fixture namespace.
    pub fn new(tag: &str) -> Self {
        Self::with_sizes(tag, MapSizes::with_table(FIXTURE_TABLE_SIZE))
    }

    /// [`KernelBalancer::new`] with the flow and NAT tables of `sizes`
    /// (its Maglev tables must be [`FIXTURE_TABLE_SIZE`]).
    pub fn with_sizes(tag: &str, sizes: MapSizes) -> Self {
        assert_eq!(sizes.table_size, FIXTURE_TABLE_SIZE, "the fixtures' Maglev tables");
        let net = FixtureNet::new(tag);
        let pin_dir = crate::pins::private_pin_dir("lbtest", tag);
        let _ = remove_pins(&pin_dir);
        let dp = Datapath::load(&pin_dir, sizes).unwrap_or_else(|e| {
            let _ = remove_pins(&pin_dir);
            panic!("programs load (run as root): {e:#}")
        });
        let mut maps = BalancerMaps::open(&pin_dir).expect("maps open");
        // Kept next hops on, as the daemon's netlink watch turns them on.
        maps.bump_net_generation().expect("a routing generation");
        let writer = BalancerWriter::adopt(&maps, FIXTURE_TABLE_SIZE).expect("writer");
        Self { dp: Some(dp), maps: Some(maps), writer, pin_dir, net, sizes, impossible: martian::Rules::default(), applied: Vec::new() }
    }

    /// Applies a desired state (egress interfaces and their MACs filled
    /// in).
    pub fn apply(&mut self, desired: &Desired) {
        let mut d = desired.clone();
        d.egress = vec![self.net.out_ifindex, self.net.in_ifindex];
        d.macs = vec![(self.net.out_ifindex, self.net.out_mac), (self.net.in_ifindex, self.net.in_mac)];
        // The device map resolves ifindexes in the writer's namespace.
        let (writer, maps) = (&mut self.writer, self.maps.as_mut().unwrap());
        self.applied = self.net.ns.run(|| writer.apply(maps, &d)).expect("desired state applies");
    }

    /// The firewall rules of the VIPs as last applied, by VIP index, with
    /// their counter slots: the model's input (rule 3b).
    pub fn firewall_rules(&self) -> HashMap<u32, Vec<firewall::Rule>> {
        self.applied
            .iter()
            .map(|v| {
                let rules = v
                    .firewall
                    .iter()
                    .map(|f| {
                        let (a, len) = Cidr::parse(&f.prefix).expect("an applied prefix").prefix();
                        firewall::Rule { deny: f.action == "deny", addr: addr_key(a).0, len, slot: f.slot.unwrap_or(0) }
                    })
                    .collect();
                (v.table, rules)
            })
            .collect()
    }

    /// Packets the firewall dropped at counter `slot`.
    pub fn firewall_drops(&self, slot: u32) -> u64 {
        self.maps().firewall_drops(slot).expect("firewall counters read")
    }

    /// Puts the outside interface ([`OUT_IF`]) in a zone of
    /// [`EDGE_ZONE_CONFIG`], as the daemon does on an edge: what is not the
    /// balancer's goes on to the isolator (the inside interface stays
    /// without a zone). Returns the isolator's maps and the model's view
    /// of the policy.
    pub fn bind_zone(&mut self) -> (IsolatorMaps, ReferencePolicy) {
        let config = Config::parse(EDGE_ZONE_CONFIG, "edge-zone.toml").expect("the edge zone config parses");
        let mut maps = IsolatorMaps::open(&self.pin_dir).expect("isolator maps open");
        isolator_writer::apply_settings(&mut maps, u64::MAX).unwrap();
        let ifindexes = HashMap::from([(OUT_IF.to_string(), self.net.out_ifindex)]);
        self.impossible = self.net.fib.impossible();
        self.impossible.apply(&mut maps).expect("impossible sources apply");
        let applied = isolator_writer::apply(&mut maps, &config.compile(), &ifindexes).expect("policy applies");
        let reference = ReferencePolicy::new(&config, &ifindexes, &applied.slots);
        (maps, reference)
    }

    /// Runs the balancer over `frame` arriving on `ifindex`: (XDP action,
    /// the packet as the program left it).
    pub fn run(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let dp = self.dp.as_mut().unwrap();
        self.net.ns.run(|| dp.test_run_on(Program::Balancer, frame, ifindex)).expect("test run")
    }

    /// Runs the balancer over each `(frame, ifindex)` in turn, in one visit
    /// to the namespace (a visit is a thread; one per frame would cost more
    /// than the runs): the (XDP action, output packet) of each.
    pub fn run_batch(&mut self, frames: &[(Vec<u8>, u32)]) -> Vec<(u32, Vec<u8>)> {
        let dp = self.dp.as_mut().unwrap();
        self.net.ns.run(|| {
            frames.iter().map(|(f, ifindex)| dp.test_run_on(Program::Balancer, f, *ifindex).expect("test run")).collect()
        })
    }

    /// Runs `f` in the fixture's namespace (one visit) with the loaded
    /// balancer program, for BPF_PROG_TEST_RUN calls of the caller's own
    /// making (the benchmark's timed single runs).
    pub fn with_program<T: Send>(&mut self, f: impl FnOnce(&mut aya::programs::Xdp) -> T + Send) -> anyhow::Result<T> {
        let prog = self.dp.as_mut().unwrap().program_mut(Program::Balancer)?;
        Ok(self.net.ns.run(|| f(prog)))
    }

    /// A descriptor of the loaded balancer program, for tail calls into it
    /// from another object (the benchmark's input-restoring wrapper). It is
    /// the kernel's `balancer` program that uses this fixture's flow map.
    pub fn balancer_fd(&self) -> anyhow::Result<aya::programs::ProgramFd> {
        let flows = aya::maps::MapInfo::from_pin(self.pin_dir.join(MAP_FLOWS))?.id();
        let uses_flows = |p: &aya::programs::ProgramInfo| p.map_ids().ok().flatten().is_some_and(|ids| ids.contains(&flows));
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.name_as_str() == Some(PROGRAM_BALANCER) && uses_flows(p))
            .ok_or_else(|| anyhow::anyhow!("the fixture's balancer program is not among the loaded programs"))?;
        Ok(info.fd()?)
    }

    /// The isolator model's view of the edge's routes and impossible sources.
    pub fn edge_host(&self) -> EdgeHost {
        EdgeHost { fib: self.net.fib.clone(), rules: self.impossible.clone() }
    }

    /// Runs `f` with the balancer's next stage (the isolator) taken out
    /// of `LB_NEXT_STAGE`, so a packet that is not the balancer's ends in
    /// `XDP_PASS` at the failed tail call; puts the isolator back after.
    pub fn without_next_stage<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> anyhow::Result<T> {
        use anyhow::Context as _;
        let pin = self.pin_dir.join(MAP_NEXT_STAGE);
        let mut next = aya::maps::ProgramArray::try_from(aya::maps::Map::ProgramArray(aya::maps::MapData::from_pin(&pin).context("opening LB_NEXT_STAGE")?))?;
        next.clear_index(&NEXT_STAGE_ISOLATOR).context("taking the isolator out")?;
        let out = f(self);
        let isolator = self.dp.as_mut().unwrap().program_mut(Program::Isolator)?.fd()?.try_clone()?;
        next.set(NEXT_STAGE_ISOLATOR, &isolator, 0).context("putting the isolator back")?;
        Ok(out)
    }

    /// The maps.
    pub fn maps(&self) -> &BalancerMaps {
        self.maps.as_ref().unwrap()
    }

    /// The pinned maps, for writers such as the NAT sweep.
    pub fn maps_mut(&mut self) -> &mut BalancerMaps {
        self.maps.as_mut().unwrap()
    }

    /// Forgets every flow and NAT entry.
    pub fn clear_flows(&mut self) {
        let maps = self.maps.as_mut().unwrap();
        let keys: Vec<FlowKey> = maps.flows.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = maps.flows.remove(&k);
        }
        let keys: Vec<NatKey> = maps.nat.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = maps.nat.remove(&k);
        }
    }

    /// The model's tables, with the kernel's services, backends, tables
    /// and globals copied in and empty flow and NAT tables.
    pub fn model(&self) -> ModelTables {
        let mut m = ModelTables::new(self.net.fib.clone());
        m.nat_capacity = self.sizes.nat as usize;
        m.impossible = self.impossible.clone();
        m.firewall = self.firewall_rules();
        m.reload(self.maps());
        m
    }
}

impl Drop for KernelBalancer {
    fn drop(&mut self) {
        self.maps.take();
        self.dp.take();
        let _ = remove_pins(&self.pin_dir);
    }
}

/// The model's state: plain collections.
#[derive(Clone)]
pub struct ModelTables {
    fib: FixtureFib,
    /// Copy of the kernel's services.
    pub services: HashMap<ServiceKey, Service>,
    /// Copy of the kernel's backends.
    pub backends: HashMap<u32, BackendInfo>,
    /// Copy of the kernel's Maglev map.
    pub maglev: Vec<u32>,
    /// Copy of the kernel's globals.
    pub globals: Option<Globals>,
    /// Copy of the kernel's SNAT addresses.
    pub snat_pool: Option<SnatPool>,
    /// Copy of the kernel's SNAT address index.
    pub snat_index: HashMap<SnatAddrKey, u32>,
    /// Copy of the kernel's routing generation.
    pub net_generation: u32,
    /// The model's own kept next hops.
    pub hops: HashMap<u32, HopEntry>,
    /// The model's own flow table.
    pub flows: HashMap<FlowKey, FlowEntry>,
    /// The model's own NAT table.
    pub nat: HashMap<NatKey, NatEntry>,
    /// NAT entries the model accepts.
    pub nat_capacity: usize,
    /// Interfaces it may redirect to.
    pub egress: HashSet<u32>,
    /// The interfaces' MACs (rule 2a).
    pub if_macs: HashMap<u32, IfMac>,
    /// The impossible-source rules the kernel's tries hold.
    pub impossible: martian::Rules,
    /// The VIPs' firewall rules by VIP index (as configured, not read
    /// from the kernel's tries).
    pub firewall: HashMap<u32, Vec<firewall::Rule>>,
}

impl ModelTables {
    /// Empty tables routing by `fib`, with both fixture interfaces as
    /// egress interfaces.
    pub fn new(fib: FixtureFib) -> Self {
        let mac = |mac| IfMac { mac, known: 1, _pad: 0 };
        ModelTables {
            egress: [fib.out_ifindex, fib.in_ifindex].into_iter().collect(),
            if_macs: HashMap::from([(fib.out_ifindex, mac(fib.out_mac)), (fib.in_ifindex, mac(fib.in_mac))]),
            fib,
            services: HashMap::new(),
            backends: HashMap::new(),
            maglev: Vec::new(),
            globals: None,
            snat_pool: None,
            snat_index: HashMap::new(),
            net_generation: 0,
            hops: HashMap::new(),
            flows: HashMap::new(),
            nat: HashMap::new(),
            nat_capacity: MAX_NAT_ENTRIES as usize,
            impossible: martian::Rules::default(),
            firewall: HashMap::new(),
        }
    }

    /// Copies services, backends, tables and globals from the kernel's maps
    /// (after an apply); flows and NAT entries stay.
    pub fn reload(&mut self, maps: &BalancerMaps) {
        self.services = maps.services.iter().map(|r| r.unwrap()).collect();
        self.backends = (0..).zip(maps.backends.iter()).map(|(id, b)| (id, b.unwrap())).filter(|(_, b)| !b.is_vacant()).collect();
        self.maglev = (0..maps.maglev.len()).map(|i| maps.maglev.get(&i, 0).unwrap()).collect();
        self.globals = maps.globals.get(&0, 0).ok();
        self.snat_pool = maps.snat_pool.get(&0, 0).ok();
        self.snat_index = maps.snat_index.iter().map(|r| r.unwrap()).collect();
        self.net_generation = maps.net_generation.get(&0, 0).unwrap();
        for i in [self.fib.out_ifindex, self.fib.in_ifindex] {
            self.if_macs.insert(i, maps.if_macs.get(&i, 0).unwrap());
        }
    }
}

impl Tables for ModelTables {
    fn service(&self, key: &ServiceKey) -> Option<Service> {
        self.services.get(key).copied()
    }
    fn backend(&self, id: u32) -> Option<BackendInfo> {
        self.backends.get(&id).copied()
    }
    fn maglev_slot(&self, index: u32) -> Option<u32> {
        self.maglev.get(index as usize).copied()
    }
    fn globals(&self) -> Option<Globals> {
        self.globals
    }
    fn net_generation(&self) -> u32 {
        self.net_generation
    }
    fn hop(&self, id: u32) -> Option<HopEntry> {
        self.hops.get(&id).copied()
    }
    fn set_hop(&mut self, id: u32, hop: &HopEntry) {
        self.hops.insert(id, *hop);
    }
    fn snat_pool(&self) -> Option<SnatPool> {
        self.snat_pool
    }
    fn snat_index(&self, family: u8, addr: &[u8; 16]) -> Option<u8> {
        self.snat_index.get(&SnatAddrKey { addr: *addr, family, _pad: [0; 3] }).map(|&i| i as u8)
    }
    fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flows.get(key).copied()
    }
    fn set_flow(&mut self, key: &FlowKey, entry: &FlowEntry) {
        self.flows.insert(*key, *entry);
    }
    fn forget_flow(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }
    fn nat(&self, key: &NatKey) -> Option<NatEntry> {
        self.nat.get(key).copied()
    }
    fn insert_nat(&mut self, key: &NatKey, entry: &NatEntry) -> NatInsert {
        if self.nat.contains_key(key) {
            return NatInsert::Taken;
        }
        if self.nat.len() >= self.nat_capacity {
            return NatInsert::Full;
        }
        self.nat.insert(*key, *entry);
        NatInsert::Inserted
    }
    fn put_nat(&mut self, key: &NatKey, entry: &NatEntry) {
        self.nat.insert(*key, *entry);
    }
    fn remove_nat(&mut self, key: &NatKey) {
        self.nat.remove(key);
    }
    fn now_ns(&self) -> u64 {
        lb_user::datapath::sweep::monotonic_ns()
    }
    fn route(&self, family: u8, dst: &[u8; 16], _ifindex: u32, ip_len: u16) -> Route {
        self.fib.route(family, dst, ip_len)
    }
    fn interface_mac(&self, ifindex: u32) -> IfMac {
        self.if_macs.get(&ifindex).copied().unwrap_or_default()
    }
    fn is_egress(&self, ifindex: u32) -> bool {
        self.egress.contains(&ifindex)
    }
    fn impossible_source(&self, family: u8, ifindex: u32, src: &[u8; 16]) -> bool {
        self.impossible.lookup(ifindex, family, src).is_some()
    }
    fn firewall_rules(&self, vip: u32) -> &[firewall::Rule] {
        self.firewall.get(&vip).map_or(&[], Vec::as_slice)
    }
}

/// The DSR backend's `decap` program loaded for `BPF_PROG_TEST_RUN`, its
/// maps pinned in a directory of its own (removed on drop).
pub struct KernelDecap {
    ebpf: Option<aya::Ebpf>,
    pin_dir: PathBuf,
}

impl KernelDecap {
    /// Loads only the decap program, as `swarmlb backend-setup` does.
    pub fn new(tag: &str) -> Self {
        let pin_dir = crate::pins::private_pin_dir("dctest", tag);
        let _ = remove_pins(&pin_dir);
        lb_user::datapath::loader::ensure_bpffs(&pin_dir).unwrap();
        std::fs::create_dir_all(&pin_dir).unwrap();
        let ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(MAP_MAGLEV, 1)
            .map_max_entries(MAP_FLOWS, 1)
            .load(lb_user::ebpf_object().expect("the eBPF object"));
        // Constructed before anything can fail, so Drop removes the pins.
        let mut me = Self { ebpf: None, pin_dir };
        let mut ebpf = ebpf.expect("object loads");
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(PROGRAM_DECAP).unwrap().try_into().unwrap();
        prog.load().expect("decap verifies");
        me.ebpf = Some(ebpf);
        me
    }

    /// Lets tunnel packets from `edge` to `vip` in.
    pub fn allow(&mut self, key: DecapKey) {
        let map = self.ebpf.as_mut().unwrap().map_mut(MAP_DECAP).unwrap();
        let mut map: aya::maps::HashMap<_, DecapKey, u32> = aya::maps::HashMap::try_from(map).unwrap();
        map.insert(key, 1, 0).unwrap();
    }

    /// (XDP action, the frame as the program left it).
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut aya::programs::Xdp = self.ebpf.as_mut().unwrap().program_mut(PROGRAM_DECAP).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = aya::programs::TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = aya::programs::TestRun::test_run(prog, opts).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// The decap counters summed over CPUs, by [`DecapCounter`] index.
    pub fn counters(&self) -> Vec<u64> {
        let map = self.ebpf.as_ref().unwrap().map(MAP_DECAP_COUNTERS).unwrap();
        let map: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map).unwrap();
        (0..DECAP_COUNTERS_LEN).map(|i| map.get(&i, 0).unwrap().iter().sum()).collect()
    }
}

impl Drop for KernelDecap {
    fn drop(&mut self) {
        self.ebpf.take();
        let _ = remove_pins(&self.pin_dir);
    }
}
