//! The config parser (`Config::parse`, what `swarmlb check` and `run`
//! load) on arbitrary text, and what the daemon derives from a valid config
//! without the kernel: the compiled policy (map contents), the reference
//! policy the differential tests judge the kernel by, and every VIP's
//! Maglev table.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    balancer::{Mode, MAX_BACKENDS_PER_VIP, MAX_VIPS, NO_BACKEND},
    isolator::{MAX_INTERFACES, MAX_PORT_ENTRIES, MAX_SLOTS, MAX_SOURCE_PREFIXES, PROTECTED},
    maglev::{is_prime, MAX_TABLE_SIZE},
    model::Policy,
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};
use crate::reference_policy::ReferencePolicy;
use lb_user::{
    datapath::balancer_writer::build_table,
    source::config::{BalancerConfig, CompiledPolicy, Config, ConfigError},
};

/// Source prefixes per zone whose longest-prefix-match answer is compared
/// with the reference (the comparison is quadratic).
const LPM_SAMPLE: usize = 64;

/// The property: `data` as a config file is either a valid config whose
/// derived state holds (see the module doc) or an error naming a position
/// inside the text.
pub fn check(data: &[u8]) {
    // `Config::load` reads the file as UTF-8: other bytes are an I/O error
    // before the parser sees them.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, "fuzz.toml") {
        Ok(cfg) => check_valid(&cfg),
        Err(e) => check_error(text, &e),
    }
}

fn check_error(text: &str, e: &ConfigError) {
    let ConfigError::Invalid { origin, line, col, message } = e else {
        panic!("parsing text gave a non-parse error: {e}");
    };
    assert_eq!(origin, "fuzz.toml");
    assert!(!message.trim().is_empty(), "an error without a message: {e:?}");
    let lines = text.split('\n').count();
    assert!(*line >= 1 && *line <= lines, "error line {line} outside the text's {lines} lines: {e}");
    assert!(*col >= 1, "error column {col}: {e}");
    assert!(!e.to_string().is_empty());
}

fn check_valid(cfg: &Config) {
    let compiled = cfg.compile();
    check_compiled(cfg, &compiled);
    check_reference(cfg, &compiled);
    let _ = cfg.warnings();
    // No Swarm additions: the same config, the same maps.
    assert_eq!(cfg.with_swarm(&Default::default()).compile(), compiled, "with_swarm(nothing) changed the policy");
    if let Some(b) = cfg.balancer() {
        check_balancer(b);
    }
}

fn check_compiled(cfg: &Config, c: &CompiledPolicy) {
    assert!(cfg.interfaces().len() <= MAX_INTERFACES as usize);
    assert!(c.zones.len() <= (MAX_SLOTS / 2) as usize, "{} zones in use", c.zones.len());
    assert_eq!(c.interfaces.len(), cfg.interfaces().len(), "every interface is bound");
    for (name, z) in &c.interfaces {
        let zone = &c.zones[*z];
        let configured = cfg.interfaces().iter().find(|i| &i.name == name).expect("a configured interface");
        assert_eq!(zone.name, configured.zone, "interface {name} bound to the wrong zone");
    }
    let (mut ports, mut v4, mut v6) = (0, 0, 0);
    for (i, z) in c.zones.iter().enumerate() {
        assert_eq!(z.zone_id as usize, i, "zone ids are positions");
        assert!(cfg.zones().contains_key(&z.name));
        for (&(proto, port), &access) in &z.ports {
            assert!(proto == IPPROTO_TCP || proto == IPPROTO_UDP, "protocol {proto}");
            assert!(port != 0, "port 0 protected in zone {}", z.name);
            assert!(access & PROTECTED != 0, "a port in the map without PROTECTED: {access:#x}");
        }
        for &(_, len) in z.sources_v4.keys() {
            assert!(len <= 32);
        }
        for &(_, len) in z.sources_v6.keys() {
            assert!(len <= 128);
        }
        ports += z.ports.len();
        v4 += z.sources_v4.len();
        v6 += z.sources_v6.len();
    }
    assert!(ports <= (MAX_PORT_ENTRIES / 2) as usize, "{ports} port entries");
    assert!(v4.max(v6) <= (MAX_SOURCE_PREFIXES / 2) as usize, "{v4}/{v6} source prefixes");
}

/// The longest prefix of `trie` holding `addr` (as the kernel's LPM trie
/// answers), 0 when none does.
fn lpm<const N: usize>(trie: &std::collections::BTreeMap<([u8; N], u8), u32>, addr: [u8; N]) -> u32 {
    let contains = |p: &[u8; N], len: u8| {
        (0..usize::from(len)).all(|bit| (p[bit / 8] >> (7 - bit % 8)) & 1 == (addr[bit / 8] >> (7 - bit % 8)) & 1)
    };
    trie.iter().filter(|((p, len), _)| contains(p, *len)).max_by_key(|((_, len), _)| *len).map_or(0, |(_, sets)| *sets)
}

/// The last address of a prefix.
fn last<const N: usize>(mut a: [u8; N], len: u8) -> [u8; N] {
    for bit in usize::from(len)..N * 8 {
        a[bit / 8] |= 1 << (7 - bit % 8);
    }
    a
}

/// The compiled maps and the reference policy (straight from the config)
/// answer alike: port access, and source sets at both ends of every
/// prefix.
fn check_reference(cfg: &Config, c: &CompiledPolicy) {
    let ifindexes: HashMap<String, u32> = cfg.interfaces().iter().zip(1..).map(|(i, n)| (i.name.clone(), n)).collect();
    let slots: HashMap<String, u32> = c.zones.iter().map(|z| (z.name.clone(), z.zone_id)).collect();
    let reference = ReferencePolicy::new(cfg, &ifindexes, &slots);
    for (name, z) in &c.interfaces {
        let b = reference.binding(ifindexes[name]).expect("a bound interface");
        let zone = &c.zones[*z];
        assert_eq!((b.slot, u32::from(b.zone_id), b.tunnel_access, b.routing_header_access, b.reverse_path), (zone.zone_id, zone.zone_id, zone.tunnel_access, zone.routing_header_access, zone.reverse_path as u8));
    }
    for z in &c.zones {
        for (&(proto, port), &access) in &z.ports {
            assert_eq!(reference.port_access(z.zone_id, proto, port), access, "zone {} {proto}/{port}", z.name);
        }
        for &(a, len) in z.sources_v4.keys().take(LPM_SAMPLE) {
            for probe in [a, last(a, len)] {
                assert_eq!(lpm(&z.sources_v4, probe), reference.source_sets_v4(z.zone_id, probe), "zone {} source {}", z.name, IpAddr::from(probe));
            }
        }
        for &(a, len) in z.sources_v6.keys().take(LPM_SAMPLE) {
            for probe in [a, last(a, len)] {
                assert_eq!(lpm(&z.sources_v6, probe), reference.source_sets_v6(z.zone_id, probe), "zone {} source {}", z.name, IpAddr::from(probe));
            }
        }
    }
}

fn check_balancer(b: &BalancerConfig) {
    assert!(!b.outside_interfaces.is_empty() && b.outside_interfaces.len() <= 16);
    assert!(is_prime(b.table_size) && b.table_size <= MAX_TABLE_SIZE, "table size {}", b.table_size);
    let (lo, hi) = b.snat_ports;
    // Any non-empty range (a warning below 1024 ports, not an error).
    assert!(lo >= 1 && hi >= lo, "SNAT ports {lo}-{hi}");
    assert!(b.vips.len() <= MAX_VIPS as usize);
    let mut names = std::collections::BTreeSet::new();
    let mut services = std::collections::BTreeSet::new();
    for v in &b.vips {
        assert!(names.insert(&v.name), "vip name {} twice", v.name);
        assert!(!v.address.is_unspecified() && !v.address.is_multicast() && !v.address.is_loopback());
        assert!(!v.rules.is_empty() && v.rules.len() <= 16);
        for r in &v.rules {
            assert!(r.port != 0 && r.target_port != 0);
            assert!(r.proto == IPPROTO_TCP || r.proto == IPPROTO_UDP);
            assert!(v.mode == Mode::Nat || r.port == r.target_port, "{} mode rewrites a port", v.mode.name());
            assert!(services.insert((v.address, r.proto, r.port)), "service {} {}/{} twice", v.address, r.proto, r.port);
            assert!(r.proxy_protocol == 0 || (r.proto == IPPROTO_TCP && v.mode == Mode::Nat), "a PROXY protocol header on {} {}/{} ({} mode)", v.address, r.proto, r.port, v.mode.name());
        }
        assert!(v.backends.len() <= MAX_BACKENDS_PER_VIP && v.backends.len() < b.table_size as usize);
        let mut seen = std::collections::BTreeSet::new();
        for be in &v.backends {
            assert!(seen.insert(be.address), "backend {} twice", be.address);
            assert_eq!(be.address.is_ipv4(), v.address.is_ipv4(), "backend family");
            assert!(be.address != v.address && !be.address.is_unspecified() && !be.address.is_multicast());
            assert!(be.weight <= 65_535);
        }
        let h = &v.health;
        assert!(h.port != 0 && h.timeout <= h.interval && (1..=10).contains(&h.rise) && (1..=10).contains(&h.fall));
        check_table(&v.backends.iter().map(|be| (be.address, be.weight)).collect::<Vec<_>>(), b.table_size);
    }
}

/// What the balancer writer builds for a VIP (all backends up, ids in
/// listing order): every slot a live backend, the same table whatever the
/// listing order.
pub fn check_table(backends: &[(IpAddr, u32)], table_size: u32) {
    let members: Vec<(IpAddr, u32, bool, u32)> = backends.iter().zip(0..).map(|((a, w), id)| (*a, *w, true, id)).collect();
    let table = build_table(&members, table_size).expect("a valid config builds its Maglev tables");
    assert_eq!(table.len(), table_size as usize);
    let live: Vec<u32> = members.iter().filter(|m| m.1 > 0).map(|m| m.3).collect();
    if live.is_empty() {
        assert!(table.iter().all(|&id| id == NO_BACKEND), "a table without live backends holds one");
        return;
    }
    assert!(table.iter().all(|id| live.contains(id)), "a slot names no live backend");
    let heaviest = members.iter().max_by_key(|m| m.1).unwrap().3;
    assert!(table.contains(&heaviest), "the heaviest backend got no slot");
    let reversed: Vec<(IpAddr, u32, bool, u32)> = members.iter().rev().copied().collect();
    assert_eq!(build_table(&reversed, table_size).unwrap(), table, "the table depends on the listing order");
}
