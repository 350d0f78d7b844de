//! The desired state: what every map and attachment should say, computed
//! from the sources' latest word and nothing else (no syscalls, no maps),
//! so the reconciler can compare it with what it applied last.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::{bail, Result};
use lb_common::balancer::Mode;

use crate::{
    datapath::{
        balancer_writer::{Desired, DesiredBackend, DesiredRule, DesiredVip},
        loader::Program,
        martian,
    },
    source::{
        config::{BalancerConfig, Cidr, CompiledPolicy, Config, SwarmAdditions},
        health::Down,
        netif::HostAddr,
    },
};

/// Everything the data path should say, one field per writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredState {
    /// Interface name → the program it gets.
    pub programs: BTreeMap<String, Program>,
    /// The isolator's zones, ports and sources.
    pub policy: CompiledPolicy,
    /// The impossible-source tries.
    pub impossible: martian::Rules,
    /// The balancer's VIPs, backends and globals.
    pub balancer: Desired,
    /// The sampling interval of drop events.
    pub drop_event_interval_ns: u64,
}

impl DesiredState {
    /// The state the config file `cfg` and the Swarm's additions `swarm`
    /// ask for on a host with the addresses and interface MACs `host` and
    /// the interfaces `ifindexes`, with the backends in `down` taken out.
    pub fn of(cfg: &Config, swarm: &SwarmAdditions, ifindexes: &HashMap<String, u32>, host: (&[HostAddr], &BTreeMap<u32, [u8; 6]>), down: &Down) -> Result<Self> {
        let (host, macs) = host;
        let balancer = match cfg.balancer() {
            Some(b) => balancer(b, swarm, ifindexes, host, down, macs)?,
            None => Desired {
                inside_v4: None,
                inside_v6: None,
                snat_ports: (0, 0),
                snat_pool: Vec::new(),
                egress: Vec::new(),
                macs: Vec::new(),
                vips: Vec::new(),
            },
        };
        Ok(Self {
            programs: programs(cfg),
            policy: cfg.compile_with(swarm),
            impossible: impossible_sources(cfg, ifindexes, host, &balancer),
            balancer,
            drop_event_interval_ns: cfg.drop_event_interval_ns(),
        })
    }
}

/// Which program each interface gets: the balancer (with the isolator as
/// its next stage) where VIP traffic or replies arrive, the isolator alone
/// on other zone interfaces.
fn programs(cfg: &Config) -> BTreeMap<String, Program> {
    let mut out: BTreeMap<String, Program> = cfg.interfaces().iter().map(|i| (i.name.clone(), Program::Isolator)).collect();
    if let Some(b) = cfg.balancer() {
        for name in b.outside_interfaces.iter().chain([&b.inside_interface]) {
            out.insert(name.clone(), Program::Balancer);
        }
    }
    out
}

/// The first address of the family on `ifname`, IPv6 link-local excluded.
fn interface_address(host: &[HostAddr], ifindexes: &HashMap<String, u32>, ifname: &str, v6: bool) -> Option<IpAddr> {
    let ifindex = *ifindexes.get(ifname)?;
    host.iter().filter(|a| a.ifindex == ifindex).map(|a| a.addr).find(|addr| match addr {
        IpAddr::V4(_) => !v6,
        IpAddr::V6(a) => v6 && a.segments()[0] & 0xffc0 != 0xfe80,
    })
}

/// The balancer's desired state from its config, the Swarm's backends, the
/// host's addresses and the health checks' verdicts.
fn balancer(
    b: &BalancerConfig,
    swarm: &SwarmAdditions,
    ifindexes: &HashMap<String, u32>,
    host: &[HostAddr],
    down: &Down,
    macs: &BTreeMap<u32, [u8; 6]>,
) -> Result<Desired> {
    let inside_v4 = b.snat_v4.or_else(|| match interface_address(host, ifindexes, &b.inside_interface, false) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    });
    let inside_v6 = b.snat_v6.or_else(|| match interface_address(host, ifindexes, &b.inside_interface, true) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    });
    let mut vips = Vec::new();
    for v in &b.vips {
        let needs_inside = v.mode != Mode::DsrL2;
        match v.address {
            IpAddr::V4(_) if needs_inside && inside_v4.is_none() => {
                bail!("vip {}: {} has no IPv4 address and balancer.snat_v4 is not set", v.name, b.inside_interface)
            }
            IpAddr::V6(_) if needs_inside && inside_v6.is_none() => {
                bail!("vip {}: {} has no IPv6 address and balancer.snat_v6 is not set", v.name, b.inside_interface)
            }
            _ => {}
        }
        vips.push(DesiredVip {
            name: v.name.clone(),
            address: v.address,
            mode: v.mode,
            rules: v.rules.iter().map(|r| DesiredRule { proto: r.proto, port: r.port, target_port: r.target_port, proxy: r.proxy_protocol }).collect(),
            backends: swarm
                .backends_of(v)
                .iter()
                .map(|be| DesiredBackend { address: be.address, weight: be.weight, up: !down.contains(&v.name, be.address) })
                .collect(),
            allow: v.allow.iter().map(|c| c.prefix()).collect(),
            deny: v.deny.iter().map(|c| c.prefix()).collect(),
        });
    }
    let egress: Vec<u32> = b.outside_interfaces.iter().chain([&b.inside_interface]).filter_map(|n| ifindexes.get(n).copied()).collect();
    // Rule 2a: the balancer takes only frames to its interfaces' MACs.
    let macs = egress.iter().filter_map(|i| Some((*i, *macs.get(i)?))).collect();
    Ok(Desired { inside_v4, inside_v6, snat_ports: b.snat_ports, snat_pool: snat_pool(b, ifindexes, host)?, egress, macs, vips })
}

/// `balancer.snat_addresses`, each checked to be an address of the inside
/// interface: the backends' replies come to it, so this host must answer
/// ARP / neighbour discovery for it.
fn snat_pool(b: &BalancerConfig, ifindexes: &HashMap<String, u32>, host: &[HostAddr]) -> Result<Vec<IpAddr>> {
    let inside = ifindexes.get(&b.inside_interface).copied();
    for a in &b.snat_addresses {
        if !host.iter().any(|h| Some(h.ifindex) == inside && h.addr == *a) {
            let len = if a.is_ipv4() { 32 } else { 128 };
            bail!(
                "balancer.snat_addresses: {a} is not an address of {} (the backends' replies to it would not reach this host); \
                 add it first: ip addr add {a}/{len} dev {}",
                b.inside_interface,
                b.inside_interface
            );
        }
    }
    Ok(b.snat_addresses.clone())
}

/// The impossible-source rules for the host's addresses `host`.
fn impossible_sources(cfg: &Config, ifindexes: &HashMap<String, u32>, host: &[HostAddr], desired: &Desired) -> martian::Rules {
    let zones: Vec<u32> = cfg.interfaces().iter().filter_map(|i| ifindexes.get(&i.name).copied()).collect();
    let outside = cfg.balancer().map(|b| {
        let inside_if = ifindexes.get(&b.inside_interface).copied();
        let inside_nets = host.iter().filter(|a| Some(a.ifindex) == inside_if).map(|a| martian::network(a.addr, a.prefix));
        let backends = desired.vips.iter().flat_map(|v| v.backends.iter().map(|b| Cidr::host(b.address)));
        martian::Outside {
            ifindexes: b.outside_interfaces.iter().filter_map(|n| ifindexes.get(n).copied()).collect(),
            vips: desired.vips.iter().map(|v| v.address).collect(),
            inside: desired.inside_v4.map(IpAddr::V4).into_iter().chain(desired.inside_v6.map(IpAddr::V6)).chain(desired.snat_pool.iter().copied()).collect(),
            backend_networks: inside_nets.chain(backends).collect(),
        }
    });
    martian::compile(host, &zones, outside.as_ref())
}
