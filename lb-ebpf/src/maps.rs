//! The maps of the isolator and the balancer. Layout, sizes and meaning: `lb_common::isolator`.
//! All are pinned by name so the agent can restart without losing state and
//! `swarmlb status` can read them.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use lb_common::{balancer::*, isolator::*, maglev::DEFAULT_TABLE_SIZE};

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

// The balancer's maps. Layout and meaning: `lb_common::balancer`.

#[map]
pub static LB_SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

/// Indexed by backend id (vacant ids read as not up): an array's lookup
/// is inlined by the verifier, and every balanced packet reads it.
#[map]
pub static LB_BACKENDS: Array<BackendInfo> = Array::pinned(MAX_BACKENDS, 0);

/// Sized by user space at load time (`MAX_VIPS · 2 · table_size`).
#[map]
pub static LB_MAGLEV: Array<u32> = Array::pinned(MAX_VIPS * 2 * DEFAULT_TABLE_SIZE, 0);

/// Sized by user space at load time (`flow_table_size`).
#[map]
pub static LB_FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(MAX_FLOWS, 0);

/// Preallocated: a new `nat` flow inserts here, and an allocating insert
/// (`BPF_F_NO_PREALLOC`) doubled that path's cost (docs/balancer.md).
/// Sized by user space at load time (`nat_table_size`).
#[map]
pub static LB_NAT: HashMap<NatKey, NatEntry> = HashMap::pinned(MAX_NAT_ENTRIES, 0);

/// An array of one: its lookup is inlined by the verifier (a hash map's is
/// a call), and every VIP packet reads it.
#[map]
pub static LB_GLOBALS: Array<Globals> = Array::pinned(1, 0);

/// Each backend's next hop as the FIB last gave it, indexed by backend id.
#[map]
pub static LB_HOPS: Array<HopEntry> = Array::pinned(MAX_BACKENDS, 0);

/// The routing generation the agent bumps at every netlink change.
#[map]
pub static LB_NET_GENERATION: Array<u32> = Array::pinned(1, 0);

/// The SNAT addresses: read for a new `nat` flow and for packets of flows
/// on an address after the first.
#[map]
pub static LB_SNAT_POOL: Array<SnatPool> = Array::pinned(1, 0);

/// A reply to a SNAT address other than the inside address finds its
/// index here.
#[map]
pub static LB_SNAT_INDEX: HashMap<SnatAddrKey, u32> = HashMap::pinned(2 * MAX_SNAT_ADDRESSES as u32, 0);

/// Indexed by ifindex: an array's lookup is inlined by the verifier, and
/// every balanced packet reads it (rule 2a).
#[map]
pub static LB_IF_MACS: Array<IfMac> = Array::pinned(IF_MACS_LEN, 0);

#[map]
pub static LB_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(LB_COUNTERS_LEN, 0);

#[map]
pub static LB_SERVICE_STATS: PerCpuArray<TrafficStats> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map]
pub static LB_BACKEND_STATS: PerCpuArray<TrafficStats> = PerCpuArray::pinned(MAX_BACKENDS, 0);

#[map]
pub static LB_EGRESS: DevMapHash = DevMapHash::pinned(MAX_EGRESS_INTERFACES, 0);

#[map]
pub static LB_NEXT_STAGE: ProgramArray = ProgramArray::pinned(1, 0);

#[map]
pub static LB_DECAP: HashMap<DecapKey, u32> = HashMap::pinned(MAX_DECAP_ENTRIES, 0);

#[map]
pub static LB_DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(DECAP_COUNTERS_LEN, 0);

// Sources that cannot be real, per interface (`lb_common::isolator::Impossible`).
// Read by the isolator on zone interfaces and by the balancer for new flows.

/// The isolator's later stages (`STAGE_REVERSE_PATH`). Pinned: a program
/// array is emptied when user space lets go of it.
#[map]
pub static ISO_STAGES: ProgramArray = ProgramArray::pinned(1, 0);

#[map]
pub static IMPOSSIBLE_V4: LpmTrie<IfAddrV4, u32> = LpmTrie::pinned(MAX_IMPOSSIBLE_PREFIXES, 0);

#[map]
pub static IMPOSSIBLE_V6: LpmTrie<IfAddrV6, u32> = LpmTrie::pinned(MAX_IMPOSSIBLE_PREFIXES, 0);

// The balancer's firewall (`lb_common::firewall`): read only for the
// packets of VIPs with rules.

#[map]
pub static LB_FIREWALL_V4: LpmTrie<lb_common::firewall::SourceV4, u32> = LpmTrie::pinned(lb_common::firewall::MAX_FIREWALL_RULES, 0);

#[map]
pub static LB_FIREWALL_V6: LpmTrie<lb_common::firewall::SourceV6, u32> = LpmTrie::pinned(lb_common::firewall::MAX_FIREWALL_RULES, 0);

#[map]
pub static LB_FIREWALL_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(lb_common::firewall::FIREWALL_COUNTERS, 0);
