//! Typed handles on the pinned maps of the isolator and the balancer, and
//! the key forms of addresses and services. The daemon, `swarmlb status`
//! and the tests all open the maps from their pins, so there is one way in.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{
    Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf,
};
use lb_common::{
    balancer::*,
    isolator::*,
    wire::{FAMILY_V4, FAMILY_V6},
};

/// Every map of the isolator except the ring buffer (see [`open_drop_events`]).
pub struct IsolatorMaps {
    pub bindings: HashMap<MapData, u32, ZoneBinding>,
    pub ports: HashMap<MapData, PortKey, u32>,
    pub sources_v4: LpmTrie<MapData, SourceV4, u32>,
    pub sources_v6: LpmTrie<MapData, SourceV6, u32>,
    pub fragments: HashMap<MapData, FragKey, u32>,
    pub counters: PerCpuArray<MapData, u64>,
    pub port_stats: PerCpuHashMap<MapData, PortStatsKey, PortStats>,
    pub settings: Array<MapData, u64>,
    pub impossible_v4: LpmTrie<MapData, IfAddrV4, u32>,
    pub impossible_v6: LpmTrie<MapData, IfAddrV6, u32>,
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path: PathBuf = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open_map($dir, $name)?
            .try_into()
            .with_context(|| format!("map {} has an unexpected type or layout", $name))?
    };
}

impl IsolatorMaps {
    /// Opens the maps pinned in `dir` by a loaded isolator.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            bindings: typed!(dir, MAP_ZONE_BINDINGS),
            ports: typed!(dir, MAP_PROTECTED_PORTS),
            sources_v4: typed!(dir, MAP_SOURCES_V4),
            sources_v6: typed!(dir, MAP_SOURCES_V6),
            fragments: typed!(dir, MAP_FRAGMENTS),
            counters: typed!(dir, MAP_COUNTERS),
            port_stats: typed!(dir, MAP_PORT_STATS),
            settings: typed!(dir, MAP_SETTINGS),
            impossible_v4: typed!(dir, MAP_IMPOSSIBLE_V4),
            impossible_v6: typed!(dir, MAP_IMPOSSIBLE_V6),
        })
    }

    /// Verdict counters summed over CPUs, indexed like [`MAP_COUNTERS`].
    pub fn counters(&self) -> Result<Vec<u64>> {
        (0..COUNTERS_LEN)
            .map(|i| Ok(self.counters.get(&i, 0)?.iter().sum()))
            .collect()
    }

    /// Per protected port traffic summed over CPUs, sorted by (proto, port).
    pub fn port_stats(&self) -> Result<Vec<(PortStatsKey, PortStats)>> {
        let mut out = Vec::new();
        for item in self.port_stats.iter() {
            let (key, per_cpu) = item?;
            let mut total = PortStats::default();
            for s in per_cpu.iter() {
                total.passed += s.passed;
                total.dropped += s.dropped;
            }
            out.push((key, total));
        }
        out.sort_by_key(|(k, _)| (k.proto, k.port));
        Ok(out)
    }
}

/// Opens the pinned ring buffer of sampled drops.
pub fn open_drop_events(dir: &Path) -> Result<RingBuf<MapData>> {
    Ok(typed!(dir, MAP_DROP_EVENTS))
}

/// The 16-byte key form of an address, and its family.
pub fn addr_key(a: IpAddr) -> ([u8; 16], u8) {
    match a {
        IpAddr::V4(v4) => (v4_key(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address a 16-byte key holds.
pub fn key_addr(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// The map key of a VIP's rule.
pub fn service_key(address: IpAddr, proto: u8, port: u16) -> ServiceKey {
    let (addr, family) = addr_key(address);
    ServiceKey { addr, port, proto, family }
}

/// The balancer's maps.
pub struct BalancerMaps {
    pub services: HashMap<MapData, ServiceKey, Service>,
    pub backends: Array<MapData, BackendInfo>,
    pub maglev: Array<MapData, u32>,
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    pub nat: HashMap<MapData, NatKey, NatEntry>,
    pub globals: Array<MapData, Globals>,
    pub snat_pool: Array<MapData, SnatPool>,
    pub hops: Array<MapData, HopEntry>,
    pub net_generation: Array<MapData, u32>,
    pub snat_index: HashMap<MapData, SnatAddrKey, u32>,
    pub counters: PerCpuArray<MapData, u64>,
    pub service_stats: PerCpuArray<MapData, TrafficStats>,
    pub backend_stats: PerCpuArray<MapData, TrafficStats>,
    pub egress: DevMapHash<MapData>,
    /// The VIPs' firewall rules (`lb_common::firewall`).
    pub firewall_v4: LpmTrie<MapData, lb_common::firewall::SourceV4, u32>,
    pub firewall_v6: LpmTrie<MapData, lb_common::firewall::SourceV6, u32>,
    /// Firewall drops by counter slot.
    pub firewall_drops: PerCpuArray<MapData, u64>,
    pub if_macs: Array<MapData, IfMac>,
    /// Entries the flow table holds at most.
    pub flow_capacity: u32,
    /// Entries the NAT table holds at most.
    pub nat_capacity: u32,
}

/// The `max_entries` of the map pinned at `dir/name`.
fn capacity(dir: &Path, name: &str) -> Result<u32> {
    let path = dir.join(name);
    Ok(aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?.max_entries())
}

impl BalancerMaps {
    /// Opens the balancer's maps pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            flow_capacity: capacity(dir, MAP_FLOWS)?,
            nat_capacity: capacity(dir, MAP_NAT)?,
            services: typed!(dir, MAP_SERVICES),
            backends: typed!(dir, MAP_BACKENDS),
            maglev: typed!(dir, MAP_MAGLEV),
            flows: typed!(dir, MAP_FLOWS),
            nat: typed!(dir, MAP_NAT),
            globals: typed!(dir, MAP_GLOBALS),
            snat_pool: typed!(dir, MAP_SNAT_POOL),
            hops: typed!(dir, MAP_HOPS),
            net_generation: typed!(dir, MAP_NET_GENERATION),
            snat_index: typed!(dir, MAP_SNAT_INDEX),
            counters: typed!(dir, MAP_LB_COUNTERS),
            service_stats: typed!(dir, MAP_SERVICE_STATS),
            backend_stats: typed!(dir, MAP_BACKEND_STATS),
            egress: typed!(dir, MAP_EGRESS),
            firewall_v4: typed!(dir, MAP_FIREWALL_V4),
            firewall_v6: typed!(dir, MAP_FIREWALL_V6),
            firewall_drops: typed!(dir, MAP_FIREWALL_DROPS),
            if_macs: typed!(dir, MAP_IF_MACS),
        })
    }

    /// Makes every kept next hop stale ([`MAP_NET_GENERATION`]): the next
    /// packet to each backend looks its route up again. Called at every
    /// netlink route, neighbour, address or link change; never 0 (which
    /// turns keeping off, see [`BalancerMaps::stop_keeping_hops`]).
    pub fn bump_net_generation(&mut self) -> Result<u32> {
        let next = self.net_generation.get(&0, 0).unwrap_or(0).wrapping_add(1).max(1);
        self.net_generation.set(0, next, 0).context("bumping the routing generation")?;
        Ok(next)
    }

    /// Turns kept next hops off: every packet looks its route up, as it
    /// must while no agent watches netlink (after a stop, the data path
    /// runs on without one).
    pub fn stop_keeping_hops(&mut self) -> Result<()> {
        self.net_generation.set(0, 0, 0).context("clearing the routing generation")
    }

    /// [`LbCounter`]s summed over CPUs, in index order. Counters a map
    /// pinned by an older version lacks read 0.
    ///
    /// `new_flow` and `flow_hit` come from the services' stats: every
    /// forwarded packet is one of the two, and the kernel counts it once,
    /// in its service's stats, rather than twice.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let pinned = self.counters.len();
        let mut out: Vec<u64> = (0..LB_COUNTERS_LEN).map(|i| if i < pinned { Ok(self.counters.get(&i, 0)?.iter().sum()) } else { Ok(0) }).collect::<Result<_>>()?;
        let (mut packets, mut new_flows) = (0u64, 0u64);
        for per_cpu in self.service_stats.iter() {
            let s = Self::sum(&per_cpu?);
            packets += s.packets;
            new_flows += s.new_flows;
        }
        out[LbCounter::NewFlow as usize] = new_flows;
        out[LbCounter::FlowHit as usize] = packets.saturating_sub(new_flows);
        Ok(out)
    }

    /// NAT entries per (backend, backend port): the SNAT ports each holds,
    /// sorted by address and port. Reads the keys only.
    pub fn nat_usage(&self) -> std::collections::BTreeMap<(std::net::IpAddr, u16), u32> {
        let mut out = std::collections::BTreeMap::new();
        for k in self.nat.keys().filter_map(Result::ok) {
            *out.entry((key_addr(&k.backend, k.family), k.backend_port)).or_default() += 1;
        }
        out
    }

    fn sum(per_cpu: &aya::maps::PerCpuValues<TrafficStats>) -> TrafficStats {
        per_cpu.iter().fold(TrafficStats::default(), |mut t, s| {
            t.packets += s.packets;
            t.bytes += s.bytes;
            t.new_flows += s.new_flows;
            t
        })
    }

    /// A service's traffic summed over CPUs.
    pub fn service_stats(&self, index: u32) -> Result<TrafficStats> {
        Ok(Self::sum(&self.service_stats.get(&index, 0)?))
    }

    /// Packets the firewall dropped at counter `slot`, summed over CPUs.
    pub fn firewall_drops(&self, slot: u32) -> Result<u64> {
        Ok(self.firewall_drops.get(&slot, 0)?.iter().sum())
    }

    /// A backend's traffic summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<TrafficStats> {
        Ok(Self::sum(&self.backend_stats.get(&id, 0)?))
    }
}
