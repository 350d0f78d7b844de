//! The isolator loaded for `BPF_PROG_TEST_RUN`, with a policy applied the
//! way the daemon applies it, and its maps pinned in a directory of its own
//! that is removed on drop (also on panic). Used by the differential tests
//! and the benchmark.
//!
//! The program runs inside a namespace of its own whose routes are known
//! exactly ([`FixtureHost`]), so the reverse-path lookups have answers the
//! model can be given too:
//!
//! ```text
//!  lo (ifindex 1, the DMZ interface): 10.9.0.0/17, 10.7.0.0/24, fd09::/33, fd07::/64
//!  inside (10.50.0.1/24, fd50::1/64): 10.9.128.0/18, fd09:0:8000::/34
//!  no route: the rest of 10.9.0.0/16 (10.9.200.0/24 unreachable) and of fd09::/32
//! ```

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use lb_common::{
    isolator::{counter_index, DropReason, FragEntry, FragKey, Impossible, PassReason, RouteBack, Verdict},
    wire::FAMILY_V4,
    model::{FragmentTable, Host},
};
use crate::test_run::TestRun as _;
use crate::reference_policy::ReferencePolicy;
use lb_user::{
    source::config::{Cidr, Config},
    source::netif::HostAddr,
    datapath::loader::{remove_pins, Datapath, Program},
    datapath::maps::IsolatorMaps,
    datapath::martian, datapath::isolator_writer,
};

use crate::{rtnl::Next, Netns, Topology};

/// The policy the fixtures and the fuzzer are judged under. `lo` (ifindex 1,
/// where BPF_PROG_TEST_RUN says packets arrive) is the DMZ interface.
pub const FIXTURE_CONFIG: &str = r#"
[[interface]]
name = "lo"
zone = "dmz"

[zone.dmz]
protected = ["tcp/22", "tcp/5432", "udp/161", "9000-9100"]
allow = ["10.9.0.0/16", "10.9.1.0/24", "fd09::/32"]

[cluster]
nodes = ["10.7.0.1", "10.7.0.2", "fd07::1", "10.9.1.128/25"]
"#;

/// [`FIXTURE_CONFIG`], parsed.
pub fn fixture_config() -> Config {
    Config::parse(FIXTURE_CONFIG, "fixture.toml").expect("fixture config parses")
}

/// The fixture namespace's second interface, where part of the trusted
/// prefixes is routed.
pub const INSIDE_IF: &str = "inside";

/// The fixture namespace's routes, longest match first where they overlap:
/// (prefix, interface; `None`: unreachable).
const ROUTES: &[(&str, Option<&str>)] = &[
    ("10.9.200.0/24", None),
    ("10.9.0.0/17", Some("lo")),
    ("10.9.128.0/18", Some(INSIDE_IF)),
    ("10.7.0.0/24", Some("lo")),
    ("fd09::/33", Some("lo")),
    ("fd09:0:8000::/34", Some(INSIDE_IF)),
    ("fd07::/64", Some("lo")),
];

/// The addresses the impossible-source rules are compiled from: those of
/// the fixture namespace (`lo` and [`INSIDE_IF`]; its link-local address
/// is left out, being random).
pub fn fixture_host_addrs(inside_ifindex: u32) -> Vec<HostAddr> {
    let a = |ifindex, s: &str, prefix| HostAddr { ifindex, addr: s.parse().unwrap(), prefix };
    vec![a(1, "127.0.0.1", 8), a(1, "::1", 128), a(inside_ifindex, "10.50.0.1", 24), a(inside_ifindex, "fd50::1", 64)]
}

/// What the fixture namespace's FIB and impossible-source tries answer,
/// as the model sees them.
#[derive(Clone, Debug)]
pub struct FixtureHost {
    /// (prefix, ifindex; `None`: no route that carries a reply).
    routes: Vec<(Cidr, Option<u32>)>,
    /// Addresses the FIB calls local (no route a reply could take).
    local: Vec<IpAddr>,
    /// The impossible-source rules written to the tries.
    pub rules: martian::Rules,
    /// What an interface without forwarding answers: set by a test that
    /// turns forwarding off on `lo`.
    pub forwarding_off: bool,
}

impl FixtureHost {
    /// The fixture's answers for an [`INSIDE_IF`] with this ifindex (a
    /// real namespace's, or a made-up one for a model-only run).
    pub fn new(inside_ifindex: u32) -> Self {
        let routes = ROUTES
            .iter()
            .map(|(p, dev)| (Cidr::parse(p).unwrap(), dev.map(|d| if d == "lo" { 1 } else { inside_ifindex })))
            .collect();
        let host = fixture_host_addrs(inside_ifindex);
        let rules = martian::compile(&host, &[1], None);
        Self { routes, local: host.iter().map(|h| h.addr).collect(), rules, forwarding_off: false }
    }
}

impl Host for FixtureHost {
    fn impossible_source(&self, ifindex: u32, family: u8, src: &[u8; 16]) -> Option<Impossible> {
        self.rules.lookup(ifindex, family, src)
    }

    fn route_back(&self, _ifindex: u32, family: u8, src: &[u8; 16], _dst: &[u8; 16]) -> RouteBack {
        if self.forwarding_off {
            return RouteBack::Unverifiable(lb_common::isolator::fib::FWD_DISABLED as u8);
        }
        let (probe, addr) = if family == FAMILY_V4 {
            let b = [src[0], src[1], src[2], src[3]];
            (Cidr::V4(b, 32), IpAddr::from(b))
        } else {
            (Cidr::V6(*src, 128), IpAddr::from(*src))
        };
        if self.local.contains(&addr) {
            return RouteBack::NoRoute;
        }
        let len = |c: &Cidr| match *c {
            Cidr::V4(_, l) | Cidr::V6(_, l) => l,
        };
        match self.routes.iter().filter(|(c, _)| c.contains(&probe)).max_by_key(|(c, _)| len(c)) {
            Some((_, Some(ifindex))) => RouteBack::Via(*ifindex),
            _ => RouteBack::NoRoute,
        }
    }
}

/// Builds the fixture namespace; returns it (owned by the topology) and
/// the ifindex of [`INSIDE_IF`].
fn fixture_net(tag: &str) -> (Topology, Netns, u32) {
    let mut t = Topology::new();
    let ns = t.netns(&format!("iso{tag}"));
    t.veth(&ns, INSIDE_IF, &ns, "inside-p");
    t.addr(&ns, INSIDE_IF, "10.50.0.1/24");
    t.addr(&ns, INSIDE_IF, "fd50::1/64");
    t.forwarding(&ns);
    for (prefix, dev) in ROUTES {
        t.route_to(&ns, prefix, dev.map_or(Next::Unreachable, Next::Dev));
    }
    let inside = t.ifindex(&ns, INSIDE_IF);
    (t, ns, inside)
}

/// A loaded isolator with `config` applied, bound to `lo` of a namespace
/// of its own.
pub struct KernelIsolator {
    // Field order: the program and maps close before the pins go.
    iso: Option<Datapath>,
    maps: Option<IsolatorMaps>,
    pin_dir: PathBuf,
    config: Config,
    slots: HashMap<String, u32>,
    /// Owns the namespace (removed on drop).
    _topology: Topology,
    /// The namespace the program runs in.
    pub ns: Netns,
    /// What the namespace answers, for the model.
    pub host: FixtureHost,
}

impl KernelIsolator {
    /// Loads the isolator with its maps pinned under a name made of the
    /// process id and `tag`, applies `config` with `lo` as its interface.
    pub fn new(tag: &str, config: Config) -> Self {
        let (topology, ns, inside) = fixture_net(tag);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/swarmlb-test-{}-{tag}", std::process::id()));
        let _ = remove_pins(&pin_dir);
        let iso = Datapath::load(&pin_dir, lb_user::datapath::loader::MapSizes::with_table(lb_common::maglev::DEFAULT_TABLE_SIZE)).expect("programs load (run as root)");
        let mut maps = IsolatorMaps::open(&pin_dir).expect("maps open");
        // No drop events: the fuzzer drops a lot and nobody reads them here.
        isolator_writer::apply_settings(&mut maps, u64::MAX).unwrap();
        let host = FixtureHost::new(inside);
        host.rules.apply(&mut maps).expect("impossible sources apply");
        let ifindexes = HashMap::from([("lo".to_string(), 1u32)]);
        let applied = isolator_writer::apply(&mut maps, &config.compile(), &ifindexes).expect("policy applies");
        Self { iso: Some(iso), maps: Some(maps), pin_dir, config, slots: applied.slots, _topology: topology, ns, host }
    }

    /// Turns IPv4 and IPv6 forwarding on `lo` of the namespace off or on
    /// (the FIB then refuses reverse-path lookups), and tells the model.
    pub fn set_forwarding(&mut self, on: bool) {
        let v = if on { "1" } else { "0" };
        self.ns.sysctl("net.ipv4.conf.lo.forwarding", v).unwrap();
        self.ns.sysctl("net.ipv6.conf.lo.forwarding", v).unwrap();
        self.host.forwarding_off = !on;
    }

    /// The model's view of the same policy (semantic, not the compiled maps).
    pub fn reference(&self) -> ReferencePolicy {
        let ifindexes = HashMap::from([("lo".to_string(), 1u32)]);
        ReferencePolicy::new(&self.config, &ifindexes, &self.slots)
    }

    /// XDP action for one frame; `None` for frames shorter than an
    /// Ethernet header, which BPF_PROG_TEST_RUN refuses (EINVAL) and no
    /// driver hands to XDP.
    pub fn run(&mut self, frame: &[u8]) -> Option<u32> {
        if frame.len() < lb_common::wire::ETH_HLEN {
            return None;
        }
        let iso = self.iso.as_mut().unwrap();
        Some(self.ns.run(|| iso.test_run(Program::Isolator, frame, 1)).expect("test run").0)
    }

    /// Runs each frame of `frames` (none shorter than an Ethernet header)
    /// in one visit to the namespace: the XDP action of each.
    pub fn run_batch(&mut self, frames: &[Vec<u8>]) -> Vec<u32> {
        let iso = self.iso.as_mut().unwrap();
        self.ns.run(|| frames.iter().map(|f| iso.test_run(Program::Isolator, f, 1).expect("test run").0).collect())
    }

    /// Runs one frame once: (XDP action, the packet as the program left it).
    pub fn run_with_output(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let iso = self.iso.as_mut().unwrap();
        self.ns.run(|| iso.test_run_on(Program::Isolator, frame, 1)).expect("test run")
    }

    /// Runs one frame `repeat` times in the kernel: (action, mean time per run).
    pub fn run_repeated(&mut self, frame: &[u8], repeat: u32) -> (u32, std::time::Duration) {
        let iso = self.iso.as_mut().unwrap();
        self.ns.run(|| iso.test_run(Program::Isolator, frame, repeat)).expect("test run")
    }

    /// The binding the maps hold for an ifindex.
    pub fn binding(&self, ifindex: u32) -> Option<lb_common::isolator::ZoneBinding> {
        self.maps.as_ref().unwrap().bindings.get(&ifindex, 0).ok()
    }

    /// The per-reason counters, summed over CPUs.
    pub fn counters(&self) -> Vec<u64> {
        self.maps.as_ref().unwrap().counters().unwrap()
    }

    /// Empties the fragment table.
    pub fn clear_fragments(&mut self) {
        clear_fragments(self.maps.as_mut().unwrap());
    }
}

/// Empties an isolator's fragment table.
pub fn clear_fragments(maps: &mut IsolatorMaps) {
    let keys: Vec<FragKey> = maps.fragments.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = maps.fragments.remove(&k);
    }
}

impl Drop for KernelIsolator {
    fn drop(&mut self) {
        self.maps.take();
        self.iso.take();
        let _ = remove_pins(&self.pin_dir);
    }
}

/// The model's fragment table.
#[derive(Default)]
pub struct ModelFrags(pub HashMap<FragKey, FragEntry>);

impl FragmentTable for ModelFrags {
    fn get(&mut self, key: &FragKey) -> Option<FragEntry> {
        self.0.get(key).copied()
    }
    fn record(&mut self, key: FragKey, entry: FragEntry) {
        self.0.insert(key, entry);
    }
}

/// Per-verdict counts (indexed by [`counter_index`]) as one line,
/// `Pass(Reason)=n … Drop(Reason)=n`, for a test's output.
pub fn verdict_summary(tally: &[u64]) -> String {
    let seen: Vec<String> = PassReason::ALL
        .iter()
        .map(|&r| Verdict::Pass(r))
        .chain(DropReason::ALL.iter().map(|&r| Verdict::Drop(r)))
        .map(|v| format!("{v:?}={}", tally[counter_index(v) as usize]))
        .collect();
    seen.join(" ")
}
