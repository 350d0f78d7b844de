//! Writes the balancer's desired state into its maps: backend ids,
//! Maglev tables (double-buffered, flipped per service), services, the
//! edge's inside addresses and egress interfaces.
//!
//! The order of writes keeps every packet's view consistent: backends a new
//! table needs exist before the table is written; a table is complete in
//! the idle half before a service points at it; backends nothing points at
//! any more are removed last (their flows then move, counted).
//!
//! A restarted daemon adopts what it finds pinned ([`BalancerWriter::adopt`]):
//! backend ids and generations stay, so established flows keep their
//! backends, and tables are rebuilt identically (Maglev is deterministic).
//!
//! Nothing else writes these maps, so the writer compares each apply with
//! its own record of what it wrote and writes only the difference: one
//! backend's health flip rewrites that backend's entry and, in the idle half
//! of its VIPs' tables, the slots that differ from what that half holds
//! (the table before the last flip: nothing at all when a backend flaps),
//! then flips their services; other VIPs' tables are not even rebuilt.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::Key;
use lb_common::{
    balancer::*,
    firewall::{self, key_bits, key_v4, key_v6, FIREWALL_COUNTERS, MAX_FIREWALL_RULES},
    maglev, wire,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::datapath::maps::{addr_key, key_addr, service_key, BalancerMaps};

/// A backend as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    pub address: IpAddr,
    /// Share of new flows; 0 = draining (flows stay, no new ones).
    pub weight: u32,
    /// `false`: down; its flows move to other backends.
    pub up: bool,
}

/// A forwarding rule (one [`Service`]) as the control plane wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredRule {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// The VIP's port.
    pub port: u16,
    /// The backends' port.
    pub target_port: u16,
    /// The PROXY protocol header its new TCP flows get
    /// ([`Service::proxy`], a `lb_common::proxy_protocol::PROXY_*`; the
    /// kernel adds none to UDP).
    pub proxy: u8,
}

/// A VIP as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredVip {
    pub name: String,
    pub address: IpAddr,
    pub mode: Mode,
    pub rules: Vec<DesiredRule>,
    pub backends: Vec<DesiredBackend>,
    /// Firewall: client prefixes (address with host bits clear, length)
    /// of the VIP's family. Empty lists: everyone may connect.
    pub allow: Vec<(IpAddr, u8)>,
    /// Client prefixes refused, whatever `allow` says.
    pub deny: Vec<(IpAddr, u8)>,
}

/// Everything the balancer's maps should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The edge's inside addresses: SNAT and tunnel source.
    pub inside_v4: Option<Ipv4Addr>,
    pub inside_v6: Option<Ipv6Addr>,
    /// SNAT ports, inclusive.
    pub snat_ports: (u16, u16),
    /// More SNAT addresses after the inside ones (`snat_addresses`).
    pub snat_pool: Vec<IpAddr>,
    /// Interfaces packets may be redirected to.
    pub egress: Vec<u32>,
    /// The MACs of the balancer's interfaces, by ifindex: only frames to
    /// them are balanced (rule 2a of the model).
    pub macs: Vec<(u32, [u8; 6])>,
    pub vips: Vec<DesiredVip>,
}

/// One backend as applied (for `swarmlb status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedBackend {
    pub address: IpAddr,
    pub id: u32,
    pub weight: u32,
    pub up: bool,
    /// Slots of the VIP's Maglev table it holds.
    pub slots: u32,
}

/// One forwarding rule as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRule {
    pub proto: u8,
    pub port: u16,
    pub target_port: u16,
    pub stats_index: u32,
    /// Its [`Service::proxy`] (0 in state files of older versions).
    #[serde(default)]
    pub proxy: u8,
}

/// One firewall rule as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFirewallRule {
    /// `allow` or `deny`.
    pub action: String,
    pub prefix: String,
    /// A `deny` rule's counter slot in [`MAP_FIREWALL_DROPS`].
    pub slot: Option<u32>,
}

/// One VIP as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedVip {
    pub name: String,
    pub address: IpAddr,
    pub mode: String,
    /// Its Maglev tables' index, also its firewall index (the counter
    /// slot of its sources outside an `allow` list).
    pub table: u32,
    pub rules: Vec<AppliedRule>,
    pub backends: Vec<AppliedBackend>,
    /// Its firewall rules, `allow` first (state files of older versions
    /// have none).
    #[serde(default)]
    pub firewall: Vec<AppliedFirewallRule>,
}

/// A backend's Maglev identity: the same on every edge host (FNV-1a over
/// family and address), so two edges build the same table.
pub fn backend_key(a: IpAddr) -> u64 {
    let (bytes, family) = addr_key(a);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(family).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Builds a VIP's table of backend ids; every slot is [`NO_BACKEND`] when
/// no backend is up with a weight above zero.
pub fn build_table(backends: &[(IpAddr, u32, bool, u32)], table_size: u32) -> Result<Vec<u32>> {
    // Sorted by key: the table must not depend on the order backends were
    // listed in.
    let mut live: Vec<(u64, u32, u32)> = backends
        .iter()
        .filter(|(_, w, up, _)| *up && *w > 0)
        .map(|(a, w, _, id)| (backend_key(*a), *w, *id))
        .collect();
    live.sort_unstable();
    let mut table = vec![NO_BACKEND; table_size as usize];
    if live.is_empty() {
        return Ok(table);
    }
    let input: Vec<maglev::Backend> = live.iter().map(|(k, w, _)| maglev::Backend { key: *k, weight: *w }).collect();
    let (mut next, mut credit) = (vec![0; input.len()], vec![0; input.len()]);
    maglev::build(&input, &mut table, &mut next, &mut credit).map_err(|e| anyhow::anyhow!("building a Maglev table: {e:?}"))?;
    for slot in &mut table {
        *slot = live[*slot as usize].2;
    }
    Ok(table)
}

/// What the writer knows about one VIP's table.
#[derive(Clone, Debug)]
struct VipSlot {
    index: u32,
    /// The half services point at.
    half: u32,
    /// Its contents, when known (not after adoption).
    table: Option<Vec<u32>>,
    /// The other half's contents, when known: the table before the last
    /// flip. The kernel does not read it, so the next table is written
    /// over it slot by slot where the two differ.
    idle: Option<Vec<u32>>,
    /// The members it was built from: the same members build the same
    /// table, so it is not built again.
    members: Vec<Member>,
}

/// A table member: address, weight, up, backend id.
type Member = (IpAddr, u32, bool, u32);

/// A firewall prefix of a VIP: (VIP index, family, prefix, length).
type FwKey = (u32, u8, [u8; 16], u8);

/// Keeps the maps in line with [`Desired`] states, one apply at a time.
pub struct BalancerWriter {
    table_size: u32,
    /// address → (id, generation).
    ids: BTreeMap<IpAddr, (u32, u32)>,
    next_generation: u32,
    vips: BTreeMap<String, VipSlot>,
    /// The services in the maps.
    services: BTreeMap<ServiceKeyOrd, Service>,
    /// The backend entries in the maps, by id.
    backends: BTreeMap<u32, BackendInfo>,
    /// The globals last written.
    globals: Option<Globals>,
    egress: BTreeSet<u32>,
    /// The firewall tries' entries, with their values.
    fw_entries: BTreeMap<FwKey, u32>,
    /// The counter slots of `deny` rules.
    fw_slots: BTreeMap<FwKey, u32>,
    /// The interface MACs written ([`MAP_IF_MACS`]). Empty after an
    /// adoption: the first apply writes them all again (reading back an
    /// array of [`IF_MACS_LEN`] would cost a syscall each). An entry left
    /// by an earlier process for an interface that has gone since is read
    /// by no program.
    if_macs: BTreeMap<u32, [u8; 6]>,
    /// Map updates and deletes so far.
    writes: u64,
}

/// [`ServiceKey`] with an order, for the writer's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ServiceKeyOrd([u8; 16], u16, u8, u8);

impl From<&ServiceKey> for ServiceKeyOrd {
    fn from(k: &ServiceKey) -> Self {
        ServiceKeyOrd(k.addr, k.port, k.proto, k.family)
    }
}

impl ServiceKeyOrd {
    fn key(&self) -> ServiceKey {
        ServiceKey { addr: self.0, port: self.1, proto: self.2, family: self.3 }
    }
}

impl BalancerWriter {
    /// Starts from what the maps hold (empty after a fresh load; a previous
    /// daemon's state after a restart).
    pub fn adopt(maps: &BalancerMaps, table_size: u32) -> Result<Self> {
        if !maglev::is_prime(table_size) {
            bail!("table size {table_size} is not a prime");
        }
        let capacity = maps.maglev.len();
        if capacity != crate::datapath::loader::maglev_map_len(table_size) {
            bail!(
                "the pinned Maglev map holds {capacity} slots, not {} for table_size {table_size}: \
                 a changed table_size needs the old maps removed (stop swarmlb, then `swarmlb down`, then start it)",
                crate::datapath::loader::maglev_map_len(table_size)
            );
        }
        let mut w = Self {
            table_size,
            ids: BTreeMap::new(),
            next_generation: 1,
            vips: BTreeMap::new(),
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            globals: None,
            egress: BTreeSet::new(),
            fw_entries: BTreeMap::new(),
            fw_slots: BTreeMap::new(),
            if_macs: BTreeMap::new(),
            writes: 0,
        };
        for (id, item) in (0..).zip(maps.backends.iter()) {
            let b = item?;
            w.next_generation = w.next_generation.max(b.generation.wrapping_add(1));
            if !b.is_vacant() {
                w.ids.insert(key_addr(&b.addr, b.family), (id, b.generation));
            }
            w.backends.insert(id, b);
        }
        for item in maps.services.iter() {
            let (k, s) = item?;
            w.services.insert(ServiceKeyOrd::from(&k), s);
        }
        for item in maps.egress.iter() {
            let (ifindex, _) = item?;
            w.egress.insert(ifindex);
        }
        // A `deny` rule keeps its counter slot across a restart.
        let v4 = maps.firewall_v4.iter().map(|r| r.map(|(k, v)| ((k.data().slot, wire::FAMILY_V4, v4_key(k.data().addr), k.prefix_len()), v)));
        let v6 = maps.firewall_v6.iter().map(|r| r.map(|(k, v)| ((k.data().slot, wire::FAMILY_V6, k.data().addr, k.prefix_len()), v)));
        for item in v4.chain(v6) {
            let ((vip, family, addr, bits), value) = item?;
            let key = (u32::from_be_bytes(vip), family, addr, bits.saturating_sub(key_bits(0)) as u8);
            w.fw_entries.insert(key, value);
            if value & firewall::FW_DENY_RULE != 0 {
                w.fw_slots.insert(key, value & firewall::FW_SLOT_MASK);
            }
        }
        Ok(w)
    }

    /// The table size the writer builds.
    pub fn table_size(&self) -> u32 {
        self.table_size
    }

    /// Map updates and deletes this writer has made (the reconciler's
    /// measure of what a change cost).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Whether `d` fits the maps (what [`BalancerWriter::apply`] checks
    /// before it writes anything): the daemon asks before it touches the
    /// isolator, so a balancer that does not fit changes nothing at all.
    pub fn check(d: &Desired) -> Result<()> {
        let addresses: BTreeSet<IpAddr> = d.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect();
        if addresses.len() > MAX_BACKENDS as usize {
            bail!("{} backends, at most {MAX_BACKENDS}", addresses.len());
        }
        if d.vips.len() > MAX_VIPS as usize {
            bail!("{} VIPs, at most {MAX_VIPS}", d.vips.len());
        }
        let rules: usize = d.vips.iter().map(|v| v.rules.len()).sum();
        if rules > MAX_SERVICES as usize {
            bail!("{rules} forwarding rules, at most {MAX_SERVICES}");
        }
        // Half the tries and slots: a reload writes the new rules before
        // it removes the old ones.
        let prefixes: usize = d.vips.iter().map(|v| v.allow.len() + v.deny.len()).sum();
        if prefixes > MAX_FIREWALL_RULES as usize / 2 {
            bail!("{prefixes} firewall prefixes, at most {}", MAX_FIREWALL_RULES / 2);
        }
        for v in &d.vips {
            if let Some((a, len)) = v.allow.iter().chain(&v.deny).find(|(a, len)| a.is_ipv4() != v.address.is_ipv4() || *len > if a.is_ipv4() { 32 } else { 128 }) {
                bail!("vip {}: firewall prefix {a}/{len} is not one of the VIP's family", v.name);
            }
        }
        for (family, inside) in [(true, d.inside_v4.is_some()), (false, d.inside_v6.is_some())] {
            let more = d.snat_pool.iter().filter(|a| a.is_ipv4() == family).count();
            if more > 0 && !inside {
                bail!("more IPv{} SNAT addresses without a first one (the inside address)", if family { 4 } else { 6 });
            }
            if more >= MAX_SNAT_ADDRESSES {
                bail!("{} SNAT addresses of a family, at most {MAX_SNAT_ADDRESSES}", more + 1);
            }
        }
        Ok(())
    }

    /// Makes the maps say `d`. Limits are checked before anything is
    /// written, so a state that does not fit changes nothing.
    pub fn apply(&mut self, maps: &mut BalancerMaps, d: &Desired) -> Result<Vec<AppliedVip>> {
        Self::check(d)?;
        let addresses: BTreeSet<IpAddr> = d.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect();

        // 1. Backends: ids for new addresses; write new and changed ones.
        let up: BTreeMap<IpAddr, bool> = addresses
            .iter()
            .map(|a| (*a, d.vips.iter().flat_map(|v| &v.backends).any(|b| b.address == *a && b.up)))
            .collect();
        let used_ids: BTreeSet<u32> = self.ids.values().map(|(id, _)| *id).collect();
        let mut free_ids = (0..MAX_BACKENDS).filter(|i| !used_ids.contains(i));
        for a in &addresses {
            if !self.ids.contains_key(a) {
                let id = free_ids.next().context("no free backend id")?;
                self.ids.insert(*a, (id, self.next_generation));
                self.next_generation = self.next_generation.wrapping_add(1).max(1);
                maps.backend_stats.set(id, aya::maps::PerCpuValues::try_from(vec![TrafficStats::default(); nr_cpus()?])?, 0)?;
                self.writes += 1;
            }
            let (id, generation) = self.ids[a];
            let (addr, family) = addr_key(*a);
            let info = BackendInfo { addr, generation, family, up: u8::from(up[a]), _pad: [0; 2] };
            if self.backends.get(&id) != Some(&info) {
                maps.backends.set(id, info, 0).with_context(|| format!("writing backend {a}"))?;
                self.backends.insert(id, info);
                self.writes += 1;
            }
        }

        // 2. Globals and egress interfaces.
        let g = Globals {
            inside_v4: d.inside_v4.map_or([0; 4], |a| a.octets()),
            inside_v6: d.inside_v6.map_or([0; 16], |a| a.octets()),
            snat_port_min: d.snat_ports.0,
            snat_port_max: d.snat_ports.1,
        };
        if self.globals != Some(g) {
            maps.globals.set(0, g, 0).context("writing the balancer's globals")?;
            self.globals = Some(g);
            self.writes += 1;
        }
        self.writes += write_snat_pool(maps, d)?;
        self.write_macs(maps, d)?;
        for ifindex in &d.egress {
            if !self.egress.contains(ifindex) {
                maps.egress.insert(*ifindex, *ifindex, None, 0).with_context(|| format!("adding interface {ifindex} to the egress map"))?;
                self.egress.insert(*ifindex);
                self.writes += 1;
            }
        }

        // 3. Tables: the idle half, then the services flip to it.
        let mut applied = Vec::new();
        let mut wanted_services = BTreeSet::new();
        let mut wanted_fw = BTreeSet::new();
        let mut slots: BTreeMap<&str, VipSlot> = BTreeMap::new();
        for v in &d.vips {
            let known = self.vips.get(&v.name).cloned().or_else(|| {
                // After a restart, a VIP's services still point at its table.
                v.rules.iter().find_map(|r| {
                    let base = maps.services.get(&service_key(v.address, r.proto, r.port), 0).ok()?.table_base;
                    Some(VipSlot { index: base / (2 * self.table_size), half: (base / self.table_size) % 2, table: None, idle: None, members: Vec::new() })
                })
            });
            if let Some(s) = known {
                if slots.values().all(|o| o.index != s.index) {
                    slots.insert(&v.name, s);
                }
            }
        }
        let taken: BTreeSet<u32> = slots.values().map(|s| s.index).collect();
        let mut free_tables = (0..MAX_VIPS).filter(|i| !taken.contains(i));
        for v in &d.vips {
            if !slots.contains_key(v.name.as_str()) {
                let index = free_tables.next().context("no free Maglev table")?;
                // A new VIP's "not allowed" count starts at 0.
                maps.firewall_drops.set(firewall::not_allowed_slot(index), aya::maps::PerCpuValues::try_from(vec![0u64; nr_cpus()?])?, 0)?;
                self.writes += 1;
                slots.insert(&v.name, VipSlot { index, half: 1, table: None, idle: None, members: Vec::new() });
            }
        }
        for v in &d.vips {
            let members: Vec<Member> = v.backends.iter().map(|b| (b.address, b.weight, b.up, self.ids[&b.address].0)).collect();
            let mut slot = slots.remove(v.name.as_str()).expect("every VIP has a slot");
            if slot.table.is_none() || slot.members != members {
                let table = build_table(&members, self.table_size)?;
                if slot.table.as_ref() != Some(&table) {
                    let half = 1 - slot.half;
                    let base = (slot.index * 2 + half) * self.table_size;
                    // Until the half is written, the record must not claim
                    // to know what it holds (an error stops half way).
                    if let Some(known) = self.vips.get_mut(&v.name) {
                        known.idle = None;
                    }
                    for (i, id) in table.iter().enumerate() {
                        if slot.idle.as_ref().is_none_or(|idle| idle[i] != *id) {
                            maps.maglev.set(base + i as u32, *id, 0).context("writing a Maglev table")?;
                            self.writes += 1;
                        }
                    }
                    slot.half = half;
                    slot.idle = slot.table.replace(table);
                }
                slot.members = members;
            }
            let base = (slot.index * 2 + slot.half) * self.table_size;
            // The rules are in the tries before a service's flags say so.
            let (fw_flags, fw_applied) = self.write_firewall(maps, slot.index, v, &mut wanted_fw)?;
            let mut rules = Vec::new();
            for &DesiredRule { proto, port, target_port, proxy } in &v.rules {
                let key = service_key(v.address, proto, port);
                let ord = ServiceKeyOrd::from(&key);
                let stats_index = match self.services.get(&ord) {
                    Some(s) => s.stats_index,
                    None => {
                        let used: BTreeSet<u16> = self.services.values().map(|s| s.stats_index).collect();
                        let i = (0..MAX_SERVICES as u16).find(|i| !used.contains(i)).context("no free service slot")?;
                        maps.service_stats.set(u32::from(i), aya::maps::PerCpuValues::try_from(vec![TrafficStats::default(); nr_cpus()?])?, 0)?;
                        self.writes += 1;
                        i
                    }
                };
                let svc = Service { table_base: base, table_size: self.table_size, stats_index, proxy, _pad: 0, target_port, mode: v.mode as u8, firewall: fw_flags };
                if self.services.get(&ord) != Some(&svc) {
                    maps.services.insert(key, svc, 0).with_context(|| format!("writing service {} {proto}/{port}", v.address))?;
                    self.services.insert(ord, svc);
                    self.writes += 1;
                }
                wanted_services.insert(ord);
                rules.push(AppliedRule { proto, port, target_port, stats_index: u32::from(stats_index), proxy });
            }
            let counts = table_counts(slot.table.as_deref().unwrap_or(&[]));
            applied.push(AppliedVip {
                name: v.name.clone(),
                address: v.address,
                mode: v.mode.name().to_string(),
                table: slot.index,
                rules,
                backends: v
                    .backends
                    .iter()
                    .map(|b| {
                        let id = self.ids[&b.address].0;
                        AppliedBackend { address: b.address, id, weight: b.weight, up: b.up, slots: counts.get(&id).copied().unwrap_or(0) }
                    })
                    .collect(),
                firewall: fw_applied,
            });
            self.vips.insert(v.name.clone(), slot);
        }

        // 4. What is no longer wanted: services, then VIP tables, backends
        //    and egress interfaces.
        let stale: Vec<ServiceKeyOrd> = self.services.keys().filter(|k| !wanted_services.contains(k)).copied().collect();
        for k in stale {
            let _ = maps.services.remove(&k.key());
            self.services.remove(&k);
            self.writes += 1;
        }
        self.vips.retain(|name, _| d.vips.iter().any(|v| &v.name == name));
        // Firewall prefixes no service's flags lead to any more.
        let stale: Vec<FwKey> = self.fw_entries.keys().filter(|k| !wanted_fw.contains(*k)).copied().collect();
        for k in stale {
            let _ = remove_fw_entry(maps, &k);
            self.fw_entries.remove(&k);
            self.writes += 1;
        }
        // A slot stays with a prefix that is still a `deny` of its own.
        self.fw_slots.retain(|k, _| self.fw_entries.get(k).is_some_and(|v| v & firewall::FW_DENY_RULE != 0));
        let gone: Vec<IpAddr> = self.ids.keys().filter(|a| !addresses.contains(a)).copied().collect();
        for a in gone {
            let (id, generation) = self.ids.remove(&a).unwrap();
            let _ = maps.backends.set(id, BackendInfo::vacant(generation), 0);
            self.backends.insert(id, BackendInfo::vacant(generation));
            self.writes += 1;
        }
        let keep: BTreeSet<u32> = d.egress.iter().copied().collect();
        let extra: Vec<u32> = self.egress.iter().filter(|i| !keep.contains(i)).copied().collect();
        for ifindex in extra {
            let _ = maps.egress.remove(ifindex);
            self.egress.remove(&ifindex);
            self.writes += 1;
        }
        Ok(applied)
    }
}

impl BalancerWriter {
    /// Writes VIP `vip`'s firewall prefixes whose value changed (a `deny`
    /// new to the VIP gets a free counter slot, from 0); returns its
    /// services' flag byte and the rules as applied. Stale prefixes are
    /// left for the caller to remove once the services are written.
    fn write_firewall(&mut self, maps: &mut BalancerMaps, vip: u32, v: &DesiredVip, wanted: &mut BTreeSet<FwKey>) -> Result<(u8, Vec<AppliedFirewallRule>)> {
        let family = addr_key(v.address).1;
        let mut rules = Vec::new();
        let mut applied = Vec::new();
        for (deny, list) in [(false, &v.allow), (true, &v.deny)] {
            for &(a, len) in list {
                let key = (vip, family, addr_key(a).0, len);
                let slot = match (deny, self.fw_slots.get(&key)) {
                    (false, _) => 0,
                    (true, Some(&slot)) => slot,
                    (true, None) => {
                        let used: BTreeSet<u32> = self.fw_slots.values().copied().collect();
                        let slot = (MAX_VIPS..FIREWALL_COUNTERS).find(|i| !used.contains(i)).context("no free firewall counter")?;
                        maps.firewall_drops.set(slot, aya::maps::PerCpuValues::try_from(vec![0u64; nr_cpus()?])?, 0)?;
                        self.fw_slots.insert(key, slot);
                        self.writes += 1;
                        slot
                    }
                };
                rules.push(firewall::Rule { deny, addr: key.2, len, slot });
                applied.push(AppliedFirewallRule { action: if deny { "deny" } else { "allow" }.into(), prefix: format!("{a}/{len}"), slot: deny.then_some(slot) });
            }
        }
        // Longest first: every packet meanwhile is judged by the old rules
        // or the new ones (`firewall::write_order`).
        let mut order: Vec<&firewall::Rule> = rules.iter().collect();
        order.sort_by(|a, b| firewall::write_order(a, b));
        for r in order {
            let key = (vip, family, r.addr, r.len);
            let value = firewall::trie_value(&rules, &r.addr, r.len);
            wanted.insert(key);
            if self.fw_entries.get(&key) != Some(&value) {
                write_fw_entry(maps, &key, value).with_context(|| format!("writing vip {}'s firewall prefix {}/{}", v.name, key_addr(&r.addr, family), r.len))?;
                self.fw_entries.insert(key, value);
                self.writes += 1;
            }
        }
        Ok((firewall::service_flags(vip, &rules), applied))
    }

    /// Writes each balancer interface's MAC where it changed, and forgets
    /// those of interfaces the balancer left (0: not checked).
    fn write_macs(&mut self, maps: &mut BalancerMaps, d: &Desired) -> Result<()> {
        for &(ifindex, mac) in &d.macs {
            if self.if_macs.get(&ifindex) == Some(&mac) {
                continue;
            }
            if ifindex >= IF_MACS_LEN {
                warn!(ifindex, "the interface's index is past the MAC table's end: its frames are balanced without checking their destination MAC");
                continue;
            }
            maps.if_macs.set(ifindex, IfMac { mac, known: 1, _pad: 0 }, 0).with_context(|| format!("writing the MAC of interface {ifindex}"))?;
            self.if_macs.insert(ifindex, mac);
            self.writes += 1;
        }
        let gone: Vec<u32> = self.if_macs.keys().filter(|i| !d.macs.iter().any(|(j, _)| j == *i)).copied().collect();
        for ifindex in gone {
            let _ = maps.if_macs.set(ifindex, IfMac::default(), 0);
            self.if_macs.remove(&ifindex);
            self.writes += 1;
        }
        Ok(())
    }
}

/// Writes one firewall trie entry.
fn write_fw_entry(maps: &mut BalancerMaps, &(vip, family, addr, len): &FwKey, value: u32) -> Result<()> {
    if family == wire::FAMILY_V4 {
        maps.firewall_v4.insert(&Key::new(key_bits(len), key_v4(vip, [addr[0], addr[1], addr[2], addr[3]])), value, 0)?;
    } else {
        maps.firewall_v6.insert(&Key::new(key_bits(len), key_v6(vip, addr)), value, 0)?;
    }
    Ok(())
}

/// Removes one firewall trie entry.
fn remove_fw_entry(maps: &mut BalancerMaps, &(vip, family, addr, len): &FwKey) -> Result<()> {
    if family == wire::FAMILY_V4 {
        maps.firewall_v4.remove(&Key::new(key_bits(len), key_v4(vip, [addr[0], addr[1], addr[2], addr[3]])))?;
    } else {
        maps.firewall_v6.remove(&Key::new(key_bits(len), key_v6(vip, addr)))?;
    }
    Ok(())
}

/// Writes the SNAT addresses: the pool (the inside address first), then
/// the index of each further address (new ones before the pool that names
/// them, stale ones after it, so a reply always finds its address).
/// Returns the map writes it made (none when nothing changed).
fn write_snat_pool(maps: &mut BalancerMaps, d: &Desired) -> Result<u64> {
    let mut writes = 0;
    let mut pool = SnatPool::default();
    let mut index = std::collections::HashMap::new();
    let families = [(wire::FAMILY_V4, d.inside_v4.map(IpAddr::V4)), (wire::FAMILY_V6, d.inside_v6.map(IpAddr::V6))];
    for (family, inside) in families {
        let Some(inside) = inside else { continue };
        let addresses: Vec<IpAddr> = [inside].into_iter().chain(d.snat_pool.iter().copied().filter(|a| a.is_ipv4() == inside.is_ipv4())).collect();
        let (slots, count) = if family == wire::FAMILY_V4 { (&mut pool.v4, &mut pool.v4_count) } else { (&mut pool.v6, &mut pool.v6_count) };
        for (i, a) in addresses.iter().enumerate() {
            let (key, _) = addr_key(*a);
            slots[i] = key;
            if i > 0 {
                index.insert(SnatAddrKey { addr: key, family, _pad: [0; 3] }, i as u32);
            }
        }
        *count = addresses.len() as u32;
    }
    for (k, i) in &index {
        if maps.snat_index.get(k, 0).ok() != Some(*i) {
            maps.snat_index.insert(k, i, 0).context("writing a SNAT address's index")?;
            writes += 1;
        }
    }
    if maps.snat_pool.get(&0, 0).ok() != Some(pool) {
        maps.snat_pool.set(0, pool, 0).context("writing the SNAT addresses")?;
        writes += 1;
    }
    let stale: Vec<SnatAddrKey> = maps.snat_index.keys().filter_map(Result::ok).filter(|k| !index.contains_key(k)).collect();
    for k in stale {
        maps.snat_index.remove(&k).context("removing a SNAT address")?;
        writes += 1;
    }
    Ok(writes)
}

fn table_counts(table: &[u32]) -> BTreeMap<u32, u32> {
    let mut c = BTreeMap::new();
    for id in table {
        if *id != NO_BACKEND {
            *c.entry(*id).or_insert(0) += 1;
        }
    }
    c
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("counting possible CPUs: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(a: &str, w: u32, id: u32) -> (IpAddr, u32, bool, u32) {
        (a.parse().unwrap(), w, true, id)
    }

    #[test]
    fn tables_ignore_listing_order_and_skip_drained_and_down_backends() {
        let one = build_table(&[b("10.0.0.1", 1, 5), b("10.0.0.2", 1, 6), b("10.0.0.3", 0, 7)], 251).unwrap();
        let two = build_table(&[b("10.0.0.3", 0, 7), b("10.0.0.2", 1, 6), b("10.0.0.1", 1, 5)], 251).unwrap();
        assert_eq!(one, two);
        assert!(one.iter().all(|id| *id == 5 || *id == 6));
        let mut down = b("10.0.0.2", 1, 6);
        down.2 = false;
        let three = build_table(&[b("10.0.0.1", 1, 5), down], 251).unwrap();
        assert!(three.iter().all(|id| *id == 5));
        assert!(build_table(&[], 251).unwrap().iter().all(|id| *id == NO_BACKEND));
    }

    /// Two edges with the same backends (addresses, weights) send every
    /// slot to the same address, whatever ids each edge's history gave the
    /// backends and in whatever order it lists them: a failover between
    /// them keeps flows on their backends (docs/ha.md).
    #[test]
    fn two_edges_with_the_same_backends_build_the_same_table_whatever_the_ids() {
        let set = [("10.0.0.1", 1), ("10.0.0.2", 3), ("10.0.0.3", 2), ("10.0.0.4", 1), ("10.0.0.5", 0)];
        let by_address = |list: &[(IpAddr, u32, bool, u32)]| -> Vec<IpAddr> {
            let table = build_table(list, maglev::DEFAULT_TABLE_SIZE).unwrap();
            table.iter().map(|id| list.iter().find(|b| b.3 == *id).unwrap().0).collect()
        };
        let edge_a: Vec<_> = set.iter().enumerate().map(|(i, (a, w))| b(a, *w, i as u32)).collect();
        // Edge b: other ids (backends added and removed over time) and the
        // reverse order.
        let edge_b: Vec<_> = set.iter().enumerate().rev().map(|(i, (a, w))| b(a, *w, 1000 - 7 * i as u32)).collect();
        assert_eq!(by_address(&edge_a), by_address(&edge_b));
    }

    /// A state file of the build before per-rule PROXY protocol (the
    /// setting on the VIP, none on its rules) still reads: `swarmlb
    /// status` of the new build beside an agent of the old one.
    #[test]
    fn older_state_files_read() {
        let old = r#"{"name":"web","address":"203.0.113.10","mode":"nat","proxy_protocol":"v2","table":0,
            "rules":[{"proto":6,"port":443,"target_port":443,"stats_index":0}],"backends":[],"firewall":[]}"#;
        let v: AppliedVip = serde_json::from_str(old).unwrap();
        assert_eq!(v.rules[0], AppliedRule { proto: 6, port: 443, target_port: 443, stats_index: 0, proxy: 0 });
    }

    #[test]
    fn backend_keys_differ_by_family_and_address() {
        let v4 = backend_key("10.0.0.1".parse().unwrap());
        assert_ne!(v4, backend_key("10.0.0.2".parse().unwrap()));
        assert_ne!(v4, backend_key("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!(v4, backend_key("10.0.0.1".parse().unwrap()));
    }
}
