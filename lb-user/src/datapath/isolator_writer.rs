//! Writes a compiled policy into the maps without a moment of half-applied
//! state: each zone's ports and sources go into a fresh slot, then every
//! interface's binding is flipped with one map update, then the slots no
//! binding points at any more are cleared.

use std::collections::{BTreeSet, HashMap as StdHashMap};

use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::Key;
use lb_common::isolator::*;

use crate::{source::config::CompiledPolicy, datapath::maps::IsolatorMaps};

/// Where each zone of an applied policy was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// zone name → slot.
    pub slots: StdHashMap<String, u32>,
    /// Map updates and deletes the apply made.
    pub writes: u64,
}

/// Applies `policy`, binding interface names through `ifindexes`. On error
/// the maps keep the policy they had: new slots are cleared again and no
/// binding was flipped.
pub fn apply(
    maps: &mut IsolatorMaps,
    policy: &CompiledPolicy,
    ifindexes: &StdHashMap<String, u32>,
) -> Result<Applied> {
    let in_use: BTreeSet<u32> = maps
        .bindings
        .iter()
        .map(|r| r.map(|(_, b)| b.slot))
        .collect::<Result<_, _>>()?;
    let mut free = (0..MAX_SLOTS).filter(|s| !in_use.contains(s));
    let mut applied = Applied::default();
    for zone in &policy.zones {
        let Some(slot) = free.next() else {
            bail!("no free policy slot for zone {} ({} slots in use)", zone.name, in_use.len());
        };
        applied.slots.insert(zone.name.clone(), slot);
    }
    let new_slots: BTreeSet<u32> = applied.slots.values().copied().collect();
    // Leftovers of an interrupted earlier apply may sit in the free slots.
    applied.writes += clear_slots(maps, |s| new_slots.contains(&s))?;
    match write_slots(maps, policy, &applied) {
        Ok(n) => applied.writes += n,
        Err(e) => {
            clear_slots(maps, |s| new_slots.contains(&s)).ok();
            return Err(e);
        }
    }

    let mut wanted: StdHashMap<u32, ZoneBinding> = StdHashMap::new();
    for (ifname, zone_idx) in &policy.interfaces {
        let zone = &policy.zones[*zone_idx];
        let ifindex = *ifindexes
            .get(ifname)
            .with_context(|| format!("interface {ifname} has no ifindex"))?;
        wanted.insert(
            ifindex,
            ZoneBinding {
                slot: applied.slots[&zone.name],
                tunnel_access: zone.tunnel_access,
                routing_header_access: zone.routing_header_access,
                zone_id: zone.zone_id as u16,
                reverse_path: zone.reverse_path as u8,
                _pad: 0,
            },
        );
    }
    for (ifindex, binding) in &wanted {
        maps.bindings.insert(ifindex, binding, 0).context("binding an interface to its zone")?;
        applied.writes += 1;
    }
    let stale: Vec<u32> = maps
        .bindings
        .keys()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|i| !wanted.contains_key(i))
        .collect();
    for ifindex in stale {
        maps.bindings.remove(&ifindex)?;
        applied.writes += 1;
    }
    applied.writes += clear_slots(maps, |s| !new_slots.contains(&s))?;
    Ok(applied)
}

/// Writes every zone's ports and sources into its slot; returns the writes.
fn write_slots(maps: &mut IsolatorMaps, policy: &CompiledPolicy, applied: &Applied) -> Result<u64> {
    let mut writes = 0;
    for zone in &policy.zones {
        let slot = applied.slots[&zone.name];
        let slot_be = slot.to_be_bytes();
        for (&(proto, port), &access) in &zone.ports {
            maps.ports
                .insert(PortKey::new(slot as u16, proto, port), access, 0)
                .with_context(|| format!("writing protected port {proto}/{port} of zone {}", zone.name))?;
        }
        for (&(addr, len), &sets) in &zone.sources_v4 {
            let key = Key::new(SOURCE_SLOT_BITS + u32::from(len), SourceV4 { slot: slot_be, addr });
            maps.sources_v4.insert(&key, sets, 0).context("writing an IPv4 source prefix")?;
        }
        for (&(addr, len), &sets) in &zone.sources_v6 {
            let key = Key::new(SOURCE_SLOT_BITS + u32::from(len), SourceV6 { slot: slot_be, addr });
            maps.sources_v6.insert(&key, sets, 0).context("writing an IPv6 source prefix")?;
        }
        writes += (zone.ports.len() + zone.sources_v4.len() + zone.sources_v6.len()) as u64;
    }
    Ok(writes)
}

/// Removes every port and source entry of the slots `doomed` selects;
/// returns how many.
fn clear_slots(maps: &mut IsolatorMaps, doomed: impl Fn(u32) -> bool) -> Result<u64> {
    let mut removed = 0;
    let ports: Vec<PortKey> = maps.ports.keys().collect::<Result<_, _>>()?;
    for key in ports.into_iter().filter(|k| doomed(u32::from(k.slot))) {
        maps.ports.remove(&key)?;
        removed += 1;
    }
    let v4: Vec<Key<SourceV4>> = maps.sources_v4.keys().collect::<Result<_, _>>()?;
    for key in v4.into_iter().filter(|k| doomed(u32::from_be_bytes(k.data().slot))) {
        maps.sources_v4.remove(&key)?;
        removed += 1;
    }
    let v6: Vec<Key<SourceV6>> = maps.sources_v6.keys().collect::<Result<_, _>>()?;
    for key in v6.into_iter().filter(|k| doomed(u32::from_be_bytes(k.data().slot))) {
        maps.sources_v6.remove(&key)?;
        removed += 1;
    }
    Ok(removed)
}

/// Writes the runtime settings (drop event interval).
pub fn apply_settings(maps: &mut IsolatorMaps, event_interval_ns: u64) -> Result<()> {
    maps.settings
        .set(SETTING_EVENT_INTERVAL_NS, event_interval_ns, 0)
        .context("writing the drop event interval")
}
