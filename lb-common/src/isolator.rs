//! The isolator's map layout, verdict reasons and events.
//!
//! # How a policy is laid out in the maps
//!
//! A zone's policy lives in a numbered *slot*. [`ZoneBinding`] (map
//! [`MAP_ZONE_BINDINGS`], keyed by ifindex) points an interface at a slot; the
//! port map and the source tries are keyed by slot. User space writes a new
//! policy into a free slot and then flips the interface's binding with one map
//! update, so a packet sees either the old policy or the new one, never a mix.
//!
//! Access is expressed with *source sets*: the source tries map a source
//! address to the bitmask of sets it belongs to ([`SET_NODES`],
//! [`SET_TRUSTED`]); everything protected (a port, tunnels, routing headers)
//! carries an *access mask*: `0` means unprotected, otherwise the packet passes
//! only if `source_sets & mask != 0` (see [`is_allowed`]). [`PROTECTED`] is
//! never a source set, so `PROTECTED` alone means "nobody".

/// ifindex (`u32`) → [`ZoneBinding`].
pub const MAP_ZONE_BINDINGS: &str = "ZONE_BINDINGS";
/// [`PortKey`] → access mask (`u32`).
pub const MAP_PROTECTED_PORTS: &str = "PROTECTED_PORTS";
/// LPM trie, key data [`SourceV4`] → source sets (`u32`).
pub const MAP_SOURCES_V4: &str = "SOURCES_V4";
/// LPM trie, key data [`SourceV6`] → source sets (`u32`).
pub const MAP_SOURCES_V6: &str = "SOURCES_V6";
/// LRU hash [`FragKey`] → [`FragEntry`] as `u32` ([`FragEntry::to_u32`]).
pub const MAP_FRAGMENTS: &str = "FRAGMENTS";
/// Per-CPU array of `u64`, indexed by [`counter_index`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Per-CPU hash [`PortStatsKey`] → [`PortStats`], for protected ports only.
pub const MAP_PORT_STATS: &str = "PORT_STATS";
/// Ring buffer of [`DropEvent`].
pub const MAP_DROP_EVENTS: &str = "DROP_EVENTS";
/// Array of `u64` runtime settings, indexed by `SETTING_*`.
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Per-CPU array (one `u64`): when this CPU last emitted a drop event.
pub const MAP_EVENT_CLOCK: &str = "EVENT_CLOCK";
/// LPM trie, key data [`IfAddrV4`] → [`Impossible`] as `u32`: IPv4 sources
/// that cannot be real on an interface (filled by `lb_user::martian`).
pub const MAP_IMPOSSIBLE_V4: &str = "IMPOSSIBLE_V4";
/// LPM trie, key data [`IfAddrV6`] → [`Impossible`] as `u32`.
pub const MAP_IMPOSSIBLE_V6: &str = "IMPOSSIBLE_V6";

/// Name of the XDP program in the object file.
pub const PROGRAM_ISOLATOR: &str = "isolator";
/// The isolator's second stage, reached by tail call for a packet that
/// would pass on its source's trust: the reverse-path check, then the
/// counters. A stage of its own so the verifier walks the rest of the
/// isolator once instead of once per FIB answer.
pub const PROGRAM_ISOLATOR_REVERSE_PATH: &str = "isolator_reverse_path";
/// Program array: slot [`STAGE_REVERSE_PATH`] holds
/// [`PROGRAM_ISOLATOR_REVERSE_PATH`].
pub const MAP_ISOLATOR_STAGES: &str = "ISO_STAGES";
/// Slot of the reverse-path stage in [`MAP_ISOLATOR_STAGES`].
pub const STAGE_REVERSE_PATH: u32 = 0;

/// Policy slots. Two per zone in use are enough for a flip; 16 leaves room.
pub const MAX_SLOTS: u32 = 16;
/// Zone interfaces one host can have.
pub const MAX_INTERFACES: u32 = 256;
/// Expanded (slot, protocol, port) entries the port map holds. Config
/// validation keeps one policy under half of this so a flip always fits.
pub const MAX_PORT_ENTRIES: u32 = 262_144;
/// Prefixes per source trie (all slots together).
pub const MAX_SOURCE_PREFIXES: u32 = 65_536;
/// Prefixes per impossible-source trie (all interfaces together).
pub const MAX_IMPOSSIBLE_PREFIXES: u32 = 16_384;
/// First fragments remembered while their followers arrive.
pub const MAX_TRACKED_FRAGMENTS: u32 = 65_536;
/// Protected (protocol, port) pairs with their own counters.
pub const MAX_PORT_STATS: u32 = 16_384;
/// Ring buffer size for drop events (a power of two, page aligned).
pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;

/// Deepest stack of VLAN tags looked through; deeper stacks are dropped.
pub const MAX_VLAN_DEPTH: usize = 8;
/// Longest IPv6 extension-header chain looked through; longer are dropped.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Source set: the Swarm cluster's node addresses.
pub const SET_NODES: u32 = 1 << 0;
/// Source set: the zone's allow-list.
pub const SET_TRUSTED: u32 = 1 << 1;
/// Marks an access mask as protected; never set in a source's sets.
pub const PROTECTED: u32 = 1 << 31;

/// Does a source with `source_sets` pass something guarded by `access_mask`?
#[inline(always)]
pub const fn is_allowed(access_mask: u32, source_sets: u32) -> bool {
    access_mask == 0 || source_sets & access_mask != 0
}

/// Setting: minimum nanoseconds between two drop events from one CPU
/// (0 = every drop; `u64::MAX` = none).
pub const SETTING_EVENT_INTERVAL_NS: u32 = 0;
/// Number of entries in the settings array.
pub const SETTINGS_LEN: u32 = 4;

/// Where an interface's zone policy lives (value of [`MAP_ZONE_BINDINGS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneBinding {
    /// Policy slot (`< MAX_SLOTS`).
    pub slot: u32,
    /// Access mask for encapsulated packets (IPIP, IPv6-in-IP, GRE, ESP, AH,
    /// EtherIP, L2TP, MPLS-in-IP).
    pub tunnel_access: u32,
    /// Access mask for IPv6 packets with a routing header.
    pub routing_header_access: u32,
    /// Zone number, for display only (the kernel does not read it).
    pub zone_id: u16,
    /// How a trusted source's route back is checked: [`ReversePath`] as
    /// `u8`. It shares the word that was once all `zone_id` (zone ids are
    /// small), so bindings pinned by an older version read as
    /// [`ReversePath::Off`], the old behaviour, until the agent rewrites
    /// them.
    pub reverse_path: u8,
    pub _pad: u8,
}

/// How the isolator checks the route back to a source it trusts
/// (`reverse_path` in a zone's config).
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// No check: the allow-list alone decides (the behaviour before it).
    Off = 0,
    /// The source must be routable, through any interface.
    Loose = 1,
    /// The route back to the source must leave through the interface the
    /// packet arrived on.
    #[default]
    Strict = 2,
}

impl ReversePath {
    /// Unknown values read as `Strict`: fail closed.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Off,
            1 => Self::Loose,
            _ => Self::Strict,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Loose => "loose",
            Self::Strict => "strict",
        }
    }
}

/// What the kernel's FIB says of the route back to a source (the lookup
/// of the packet's source as a destination, from its destination, as if
/// it arrived on the ingress interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteBack {
    /// A unicast route out of this interface.
    Via(u32),
    /// No route that could carry a reply: unreachable, blackhole,
    /// prohibit, or a local, broadcast or multicast answer (an address
    /// that cannot be a remote host's).
    NoRoute,
    /// The FIB would not answer; `u8` is its return code (forwarding off on
    /// the ingress interface, a lightweight tunnel route, an error).
    Unverifiable(u8),
}

/// `bpf_fib_lookup` return codes (`BPF_FIB_LKUP_RET_*`).
pub mod fib {
    pub const SUCCESS: i64 = 0;
    pub const BLACKHOLE: i64 = 1;
    pub const UNREACHABLE: i64 = 2;
    pub const PROHIBIT: i64 = 3;
    pub const NOT_FWDED: i64 = 4;
    pub const FWD_DISABLED: i64 = 5;
    pub const UNSUPP_LWT: i64 = 6;
    pub const NO_NEIGH: i64 = 7;
    pub const FRAG_NEEDED: i64 = 8;
    /// `BPF_FIB_LOOKUP_SKIP_NEIGH` (Linux 6.5): the neighbour does not
    /// matter for a reverse-path check.
    pub const LOOKUP_SKIP_NEIGH: u32 = 1 << 2;
}

impl RouteBack {
    /// Reads `bpf_fib_lookup`'s return code `rc` and the egress ifindex it
    /// wrote. A route whose neighbour is unresolved is still a route.
    pub const fn from_fib(rc: i64, ifindex: u32) -> Self {
        match rc {
            fib::SUCCESS | fib::NO_NEIGH => Self::Via(ifindex),
            fib::BLACKHOLE | fib::UNREACHABLE | fib::PROHIBIT | fib::NOT_FWDED => Self::NoRoute,
            // FWD_DISABLED, UNSUPP_LWT, FRAG_NEEDED (cannot happen: the
            // lookup asks for no length), negative errors.
            _ => Self::Unverifiable(if rc < 0 { 255 } else { rc as u8 }),
        }
    }
}

/// The reverse-path verdict for a source the allow-list trusts, arriving
/// on `ingress`: `None` passes.
pub const fn reverse_path_drop(mode: ReversePath, ingress: u32, route: RouteBack) -> Option<DropReason> {
    match (mode, route) {
        (ReversePath::Off, _) => None,
        (_, RouteBack::Unverifiable(_)) => Some(DropReason::ReversePathUnverified),
        (_, RouteBack::NoRoute) => Some(DropReason::ReversePath),
        (ReversePath::Loose, RouteBack::Via(_)) => None,
        (ReversePath::Strict, RouteBack::Via(out)) => {
            if out == ingress {
                None
            } else {
                Some(DropReason::ReversePath)
            }
        }
    }
}

/// LPM key data for impossible IPv4 sources: the ifindex (big endian,
/// always matched in full) followed by the address. Prefix length = 32 +
/// CIDR prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfAddrV4 {
    pub ifindex: [u8; 4],
    pub addr: [u8; 4],
}

/// LPM key data for impossible IPv6 sources; see [`IfAddrV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfAddrV6 {
    pub ifindex: [u8; 4],
    pub addr: [u8; 16],
}

/// Prefix bits taken by the ifindex in an impossible-source key.
pub const IFINDEX_BITS: u32 = 32;

/// Why a source cannot be real on an interface: the value of the
/// impossible-source tries, and the `detail` of an
/// [`DropReason::ImpossibleSource`] event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Impossible {
    /// One of this host's own addresses.
    OwnAddress = 1,
    /// 127.0.0.0/8, ::1.
    Loopback = 2,
    /// 224.0.0.0/4, ff00::/8.
    Multicast = 3,
    /// 255.255.255.255 and the broadcast address of a local subnet.
    Broadcast = 4,
    /// 0.0.0.0/8 except 0.0.0.0 itself (DHCP clients send from it).
    ThisNetwork = 5,
    /// 169.254.0.0/16 or fe80::/10 on an interface that has no link-local
    /// address of that family: no host on that link can be talking
    /// link-local with us.
    LinkLocalOffLink = 6,
    /// ::ffff:0:0/96 (IPv4-mapped): never on the wire (RFC 4291 2.5.5.2).
    Mapped = 7,
    /// A VIP, on a balancer's outside interface.
    Vip = 8,
    /// The edge's inside (SNAT) address, on a balancer's outside interface.
    InsideAddress = 9,
    /// A backend's network, on a balancer's outside interface.
    BackendNetwork = 10,
}

impl Impossible {
    pub const ALL: [Impossible; 10] = [
        Self::OwnAddress,
        Self::Loopback,
        Self::Multicast,
        Self::Broadcast,
        Self::ThisNetwork,
        Self::LinkLocalOffLink,
        Self::Mapped,
        Self::Vip,
        Self::InsideAddress,
        Self::BackendNetwork,
    ];

    pub const fn from_u32(v: u32) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == v {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Stable snake_case name, for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::OwnAddress => "own_address",
            Self::Loopback => "loopback",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::ThisNetwork => "this_network",
            Self::LinkLocalOffLink => "link_local_off_link",
            Self::Mapped => "ipv4_mapped",
            Self::Vip => "vip",
            Self::InsideAddress => "inside_address",
            Self::BackendNetwork => "backend_network",
        }
    }
}

/// Key of [`MAP_PROTECTED_PORTS`]. The port is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub slot: u16,
    pub port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl PortKey {
    pub const fn new(slot: u16, proto: u8, port: u16) -> Self {
        Self { slot, port, proto, _pad: [0; 3] }
    }
}

/// LPM key data for IPv4 sources: the slot (big endian, always matched in
/// full) followed by the address. Prefix length = 32 + CIDR prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceV4 {
    pub slot: [u8; 4],
    pub addr: [u8; 4],
}

/// LPM key data for IPv6 sources; see [`SourceV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceV6 {
    pub slot: [u8; 4],
    pub addr: [u8; 16],
}

/// Prefix bits taken by the slot in a source key.
pub const SOURCE_SLOT_BITS: u32 = 32;

// The family tags of [`FragKey`] and [`DropEvent`] are shared with the
// balancer: they live in `wire`, re-exported here for the programs.
pub use crate::wire::{FAMILY_V4, FAMILY_V6};

/// Identifies one datagram's fragments, as the kernel's reassembly does:
/// IPv4 by (src, dst, id, protocol); IPv6 by (src, dst, id) — `proto` is 0.
/// IPv4 addresses use the first four bytes of `src`/`dst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// What was decided for a datagram's first fragment.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragVerdict {
    Pass = 1,
    Drop = 2,
}

impl FragVerdict {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Pass),
            2 => Some(Self::Drop),
            _ => None,
        }
    }
}

/// What is remembered of a datagram's first fragment: its verdict and where
/// its headers end, so that a later fragment rewriting them (an overlap,
/// RFC 1858 / RFC 5722) is caught whatever headers precede the L4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragEntry {
    pub verdict: FragVerdict,
    /// Bytes of the fragmentable part (IPv4: the payload; IPv6: what follows
    /// the fragment header) up to the end of the minimal L4 header (TCP 20,
    /// UDP 8, others 0). A later fragment starting before this overlaps them.
    pub headers_end: u16,
}

impl FragEntry {
    /// The map value: the verdict in the low half, `headers_end` in the high.
    pub const fn to_u32(self) -> u32 {
        self.verdict as u32 | (self.headers_end as u32) << 16
    }

    pub const fn from_u32(v: u32) -> Option<Self> {
        match FragVerdict::from_u32(v & 0xffff) {
            Some(verdict) => Some(Self { verdict, headers_end: (v >> 16) as u16 }),
            None => None,
        }
    }
}

/// Why a packet passed. The discriminant is its counter index.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassReason {
    /// The interface has no zone.
    NoZone = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP, …).
    NotIp = 1,
    /// TCP/UDP to a port that is not protected.
    Unprotected = 2,
    /// TCP/UDP to a protected port from an allowed source.
    Allowed = 3,
    /// A non-first fragment whose first fragment passed.
    FragmentFollows = 4,
    /// Another IP protocol (ICMP, …) or an allowed tunnel / routing header.
    OtherProtocol = 5,
}

/// Why a packet was dropped. The discriminant is its counter index.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// TCP/UDP to a protected port from a source that may not reach it.
    ProtectedPort = 16,
    /// An encapsulation protocol from a source that may not send it.
    Tunnel = 17,
    /// An IPv6 routing header from a source that may not send it.
    RoutingHeader = 18,
    /// A non-first fragment whose first fragment was never seen.
    FragmentUnknown = 19,
    /// A non-first fragment whose first fragment was dropped.
    FragmentOfDropped = 20,
    /// A first fragment too short to hold the whole L4 header.
    TinyFragment = 21,
    /// A non-first fragment that would overlap the TCP header, or the
    /// headers of its first fragment.
    FragmentOverlap = 22,
    /// A truncated or inconsistent header (lengths, versions).
    Malformed = 23,
    /// More than [`MAX_VLAN_DEPTH`] VLAN tags.
    VlanTooDeep = 24,
    /// More than [`MAX_IPV6_EXT_HEADERS`] IPv6 extension headers.
    ExtensionChainTooLong = 25,
    /// A source the allow-list trusts whose route back does not leave
    /// through the interface it came in on (`strict`), or that has no
    /// route back at all: a forged source.
    ReversePath = 26,
    /// A source the allow-list trusts whose route back the kernel would
    /// not look up (forwarding off on the interface, …): failed closed.
    ReversePathUnverified = 27,
    /// A source that cannot be real on this interface (own address,
    /// loopback, multicast, …; see [`Impossible`]), whatever the port.
    ImpossibleSource = 28,
}

/// Number of counters in [`MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = 32;

impl PassReason {
    pub const ALL: [PassReason; 6] = [
        Self::NoZone,
        Self::NotIp,
        Self::Unprotected,
        Self::Allowed,
        Self::FragmentFollows,
        Self::OtherProtocol,
    ];

    /// Stable snake_case name, used in status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoZone => "no_zone",
            Self::NotIp => "not_ip",
            Self::Unprotected => "unprotected",
            Self::Allowed => "allowed",
            Self::FragmentFollows => "fragment_follows",
            Self::OtherProtocol => "other_protocol",
        }
    }
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        Self::ProtectedPort,
        Self::Tunnel,
        Self::RoutingHeader,
        Self::FragmentUnknown,
        Self::FragmentOfDropped,
        Self::TinyFragment,
        Self::FragmentOverlap,
        Self::Malformed,
        Self::VlanTooDeep,
        Self::ExtensionChainTooLong,
        Self::ReversePath,
        Self::ReversePathUnverified,
        Self::ImpossibleSource,
    ];

    /// Stable snake_case name, used in status output, logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ProtectedPort => "protected_port",
            Self::Tunnel => "tunnel",
            Self::RoutingHeader => "routing_header",
            Self::FragmentUnknown => "fragment_unknown",
            Self::FragmentOfDropped => "fragment_of_dropped",
            Self::TinyFragment => "tiny_fragment",
            Self::FragmentOverlap => "fragment_overlap",
            Self::Malformed => "malformed",
            Self::VlanTooDeep => "vlan_too_deep",
            Self::ExtensionChainTooLong => "extension_chain_too_long",
            Self::ReversePath => "reverse_path",
            Self::ReversePathUnverified => "reverse_path_unverified",
            Self::ImpossibleSource => "impossible_source",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u8 == v {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

/// The isolator's decision for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass(PassReason),
    Drop(DropReason),
}

impl Verdict {
    pub const fn is_drop(self) -> bool {
        matches!(self, Verdict::Drop(_))
    }
}

/// Index of a verdict's counter in [`MAP_COUNTERS`].
pub const fn counter_index(v: Verdict) -> u32 {
    match v {
        Verdict::Pass(r) => r as u32,
        Verdict::Drop(r) => r as u32,
    }
}

/// Key of [`MAP_PORT_STATS`] (port in host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortStatsKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Per-CPU traffic to one protected port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub passed: u64,
    pub dropped: u64,
}

/// A sampled drop, sent to user space through [`MAP_DROP_EVENTS`].
/// Ports are in host byte order and 0 when the packet has none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub ifindex: u32,
    pub reason: u8,
    pub family: u8,
    pub proto: u8,
    /// For [`DropReason::ImpossibleSource`] the [`Impossible`] kind, for
    /// [`DropReason::ReversePathUnverified`] the FIB's return code; else 0.
    pub detail: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and
    // byte arrays, with padding spelled out as fields.
    unsafe impl aya::Pod for ZoneBinding {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for SourceV4 {}
    unsafe impl aya::Pod for SourceV6 {}
    unsafe impl aya::Pod for IfAddrV4 {}
    unsafe impl aya::Pod for IfAddrV6 {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for PortStatsKey {}
    unsafe impl aya::Pod for PortStats {}
    unsafe impl aya::Pod for DropEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_masks() {
        assert!(is_allowed(0, 0), "unprotected: everyone");
        assert!(!is_allowed(PROTECTED, SET_NODES | SET_TRUSTED), "PROTECTED alone: nobody");
        assert!(is_allowed(PROTECTED | SET_NODES, SET_NODES));
        assert!(!is_allowed(PROTECTED | SET_NODES, SET_TRUSTED));
        assert!(is_allowed(PROTECTED | SET_NODES | SET_TRUSTED, SET_TRUSTED));
    }

    #[test]
    fn reasons_have_distinct_counters_and_round_trip() {
        let mut seen = [false; COUNTERS_LEN as usize];
        let verdicts = PassReason::ALL
            .iter()
            .map(|&r| Verdict::Pass(r))
            .chain(DropReason::ALL.iter().map(|&r| Verdict::Drop(r)));
        for v in verdicts {
            let i = counter_index(v) as usize;
            assert!(i < seen.len() && !seen[i], "{v:?}");
            seen[i] = true;
        }
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_u8(r as u8), Some(r));
        }
        assert_eq!(DropReason::from_u8(0), None);
    }

    #[test]
    fn fragment_entries_round_trip() {
        for verdict in [FragVerdict::Pass, FragVerdict::Drop] {
            for headers_end in [0, 8, 20, 28, 4096] {
                let e = FragEntry { verdict, headers_end };
                assert_eq!(FragEntry::from_u32(e.to_u32()), Some(e));
            }
        }
        assert_eq!(FragEntry::from_u32(0), None);
        assert_eq!(FragEntry::from_u32(3 | 20 << 16), None);
    }

    #[test]
    fn map_types_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<ZoneBinding>(), 16);
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(size_of::<SourceV4>(), 8);
        assert_eq!(size_of::<SourceV6>(), 20);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<PortStatsKey>(), 4);
        assert_eq!(size_of::<DropEvent>(), 44);
        assert_eq!(size_of::<IfAddrV4>(), 8);
        assert_eq!(size_of::<IfAddrV6>(), 20);
    }

    #[test]
    fn reverse_path_verdicts() {
        use ReversePath::{Loose, Off, Strict};
        let (forged, unverified) = (Some(DropReason::ReversePath), Some(DropReason::ReversePathUnverified));
        let cases = [
            (Strict, RouteBack::Via(3), None),
            (Strict, RouteBack::Via(4), forged),
            (Loose, RouteBack::Via(4), None),
            (Strict, RouteBack::NoRoute, forged),
            (Loose, RouteBack::NoRoute, forged),
            (Loose, RouteBack::Unverifiable(5), unverified),
            (Strict, RouteBack::Unverifiable(5), unverified),
            (Off, RouteBack::NoRoute, None),
            (Off, RouteBack::Unverifiable(5), None),
        ];
        for (mode, route, want) in cases {
            assert_eq!(reverse_path_drop(mode, 3, route), want, "{mode:?} {route:?}");
        }
        assert_eq!(RouteBack::from_fib(fib::SUCCESS, 7), RouteBack::Via(7));
        assert_eq!(RouteBack::from_fib(fib::NO_NEIGH, 7), RouteBack::Via(7));
        assert_eq!(RouteBack::from_fib(fib::NOT_FWDED, 7), RouteBack::NoRoute);
        assert_eq!(RouteBack::from_fib(fib::FWD_DISABLED, 7), RouteBack::Unverifiable(5));
        assert_eq!(RouteBack::from_fib(-19, 7), RouteBack::Unverifiable(255));
        assert_eq!(ReversePath::from_u8(0), Off);
        assert_eq!(ReversePath::from_u8(9), Strict, "unknown values fail closed");
        for k in Impossible::ALL {
            assert_eq!(Impossible::from_u32(k as u32), Some(k));
        }
        assert_eq!(Impossible::from_u32(0), None);
    }
}
