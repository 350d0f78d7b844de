//! The maps of the isolator. Layout, sizes and meaning: `lb_common::isolator`.
//! All are pinned by name so the agent can restart without losing state and
//! `swarmlb status` can read them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use lb_common::isolator::*;

#[map]
pub static ZONE_BINDINGS: HashMap<u32, ZoneBinding> = HashMap::pinned(MAX_INTERFACES, 0);

#[map]
pub static PROTECTED_PORTS: HashMap<PortKey, u32> =
    HashMap::pinned(MAX_PORT_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

#[map]
pub static SOURCES_V4: LpmTrie<SourceV4, u32> = LpmTrie::pinned(MAX_SOURCE_PREFIXES, 0);

#[map]
pub static SOURCES_V6: LpmTrie<SourceV6, u32> = LpmTrie::pinned(MAX_SOURCE_PREFIXES, 0);

#[map]
pub static FRAGMENTS: LruHashMap<FragKey, u32> = LruHashMap::pinned(MAX_TRACKED_FRAGMENTS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

#[map]
pub static PORT_STATS: PerCpuHashMap<PortStatsKey, PortStats> =
    PerCpuHashMap::pinned(MAX_PORT_STATS, 0);

#[map]
pub static DROP_EVENTS: RingBuf = RingBuf::pinned(DROP_EVENTS_BYTES, 0);

#[map]
pub static SETTINGS: Array<u64> = Array::pinned(SETTINGS_LEN, 0);

#[map]
pub static EVENT_CLOCK: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);
