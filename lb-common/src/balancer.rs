//! The load balancer's map layout, counters and limits.
//!
//! # How a VIP is laid out in the maps
//!
//! A *service* is one forwarding rule of a VIP: (address, protocol, entry
//! port) → [`Service`] in [`MAP_SERVICES`]. Every `[[vip]]` owns one Maglev
//! table of `table_size` slots in [`MAP_MAGLEV`], double-buffered: halves
//! `2·vip` and `2·vip + 1`. User space fills the idle half and then points
//! the VIP's services at it ([`Service::table_base`]); a hash-map update
//! replaces the value as a whole, so a packet reads either the old table or
//! the new one, never a half-written one.
//!
//! Table slots hold backend ids; [`MAP_BACKENDS`] maps an id to the backend's
//! address. An id's [`BackendInfo::generation`] changes whenever the id is
//! given to another backend, so a flow remembered under an old id is noticed
//! and moved instead of silently following the id.
//!
//! # Flows
//!
//! [`MAP_FLOWS`] (LRU) remembers the backend of every flow by its 5-tuple as
//! the client sent it. In `nat` mode a flow also owns a source port on the
//! edge's inside address: [`MAP_NAT`] maps the reply's (backend, backend
//! port, SNAT port) back to the client. NAT entries are not LRU: an entry is
//! removed only by the agent's idle sweep, so a port is never handed to a
//! second flow while the first one is alive.

use crate::wire::{FAMILY_V4, FAMILY_V6};

/// [`ServiceKey`] → [`Service`].
pub const MAP_SERVICES: &str = "LB_SERVICES";
/// backend id (`u32`) → [`BackendInfo`].
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// Array of backend ids (`u32`): every VIP's two Maglev tables.
pub const MAP_MAGLEV: &str = "LB_MAGLEV";
/// LRU hash [`FlowKey`] → [`FlowEntry`].
pub const MAP_FLOWS: &str = "LB_FLOWS";
/// Hash [`NatKey`] → [`NatEntry`].
pub const MAP_NAT: &str = "LB_NAT";
/// Hash `0u32` → [`Globals`].
pub const MAP_GLOBALS: &str = "LB_GLOBALS";
/// Array indexed by backend id → [`HopEntry`]: each backend's next hop
/// as the kernel's routing table last gave it.
pub const MAP_HOPS: &str = "LB_HOPS";
/// Array, key 0 → `u32`: the routing generation. The agent bumps it at
/// every netlink route, neighbour, address or link change; a hop filled
/// under another generation is looked up again (0: never set, no hop is
/// kept).
pub const MAP_NET_GENERATION: &str = "LB_NET_GENERATION";
/// Array, key 0 → [`SnatPool`]: the SNAT source addresses.
pub const MAP_SNAT_POOL: &str = "LB_SNAT_POOL";
/// Hash [`SnatAddrKey`] → `u32`: a SNAT address's index in [`SnatPool`]
/// (the addresses after the first of each family).
pub const MAP_SNAT_INDEX: &str = "LB_SNAT_INDEX";
/// Per-CPU array of `u64`, indexed by [`LbCounter`].
pub const MAP_LB_COUNTERS: &str = "LB_COUNTERS";
/// Per-CPU array of [`TrafficStats`], indexed by [`Service::stats_index`].
pub const MAP_SERVICE_STATS: &str = "LB_SERVICE_STATS";
/// Per-CPU array of [`TrafficStats`], indexed by backend id.
pub const MAP_BACKEND_STATS: &str = "LB_BACKEND_STATS";
/// LPM trie, key data [`SourceV4`](crate::firewall::SourceV4) (VIP index,
/// client prefix) → firewall verdict (`crate::firewall::trie_value`).
pub const MAP_FIREWALL_V4: &str = "LB_FIREWALL_V4";
/// LPM trie, key data [`SourceV6`](crate::firewall::SourceV6) → verdict.
pub const MAP_FIREWALL_V6: &str = "LB_FIREWALL_V6";
/// Per-CPU array of `u64`: packets the firewall dropped, indexed by
/// counter slot (`crate::firewall`: a VIP's "not allowed", then rules).
pub const MAP_FIREWALL_DROPS: &str = "LB_FIREWALL_DROPS";
/// Device hash map: the interfaces the balancer may redirect to.
pub const MAP_EGRESS: &str = "LB_EGRESS";
/// Program array: slot [`NEXT_STAGE_ISOLATOR`] holds the isolator, which
/// judges traffic that is not the balancer's.
pub const MAP_NEXT_STAGE: &str = "LB_NEXT_STAGE";
/// Array indexed by ifindex → [`IfMac`]: the MAC of each interface the
/// balancer is attached to. Only frames addressed to it are balanced.
pub const MAP_IF_MACS: &str = "LB_IF_MACS";
/// On a DSR backend: [`DecapKey`] → `u32` (1): which tunnels to open.
pub const MAP_DECAP: &str = "LB_DECAP";
/// On a DSR backend: per-CPU array of `u64`, indexed by [`DecapCounter`].
pub const MAP_DECAP_COUNTERS: &str = "LB_DECAP_COUNTERS";

/// The balancer's XDP program.
pub const PROGRAM_BALANCER: &str = "balancer";
/// The DSR backend's decapsulation program.
pub const PROGRAM_DECAP: &str = "decap";

/// Slot of the isolator in [`MAP_NEXT_STAGE`].
pub const NEXT_STAGE_ISOLATOR: u32 = 0;

/// Interfaces with an ifindex below this have a slot in [`MAP_IF_MACS`]
/// (an array: its lookup is inlined, and every balanced packet reads it;
/// 8 bytes each, 512 KiB). A balancer interface with a higher index is
/// balanced without the check (the agent warns).
pub const IF_MACS_LEN: u32 = 65_536;
/// `[[vip]]` sections (each owns two Maglev tables).
pub const MAX_VIPS: u32 = 16;
/// Forwarding rules over all VIPs.
pub const MAX_SERVICES: u32 = 256;
/// Backend ids. Ids of removed backends are reused (with a new generation).
pub const MAX_BACKENDS: u32 = 4096;
/// Backends one VIP may have.
pub const MAX_BACKENDS_PER_VIP: usize = 1024;
/// Flows remembered by default (LRU: the least recently used is forgotten
/// first); `[balancer] flow_table_size` sets it at load time.
pub const MAX_FLOWS: u32 = 262_144;
/// NAT entries by default (one per `nat`-mode flow); `[balancer]
/// nat_table_size` sets it at load time.
pub const MAX_NAT_ENTRIES: u32 = 262_144;
/// The largest flow or NAT table a config may ask for.
pub const MAX_TABLE_ENTRIES: u32 = 1 << 24;
/// Interfaces the balancer may send packets out of.
pub const MAX_EGRESS_INTERFACES: u32 = 64;
/// Tunnel (edge address, VIP) pairs a DSR backend accepts.
pub const MAX_DECAP_ENTRIES: u32 = 1024;
/// SNAT ports tried for a new flow before it is refused as exhausted.
pub const SNAT_PROBES: u32 = 32;
/// SNAT source addresses per family ([`SnatPool`]).
pub const MAX_SNAT_ADDRESSES: usize = 16;

/// [`NatEntry::closing`]: the client closed first: the backend will hold
/// no TIME_WAIT, and its port is freed at the client's last ACK (or, that
/// lost, by the sweep's short `tcp_closed` timeout).
pub const NAT_CLOSED: u8 = 1;
/// [`NatEntry::closing`]: the backend closed first and holds the
/// connection in TIME_WAIT: its port must wait longer.
pub const NAT_TIME_WAIT: u8 = 2;

/// Whether a TCP packet with `flags` opens a connection (SYN without
/// ACK): rule 5's new connection, whatever the flow table remembers of its
/// 5-tuple (an earlier connection's, which the client may reuse at once
/// when it ended without TIME_WAIT on the client's side).
pub const fn opens_connection(flags: u8) -> bool {
    use crate::wire::{TCP_ACK, TCP_SYN};
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}

/// A table slot without a backend (no backend has weight > 0).
pub const NO_BACKEND: u32 = crate::maglev::EMPTY;
/// Seed of the flow hash that picks the backend.
pub const BACKEND_HASH_SEED: u32 = 0x5357_4c42;
/// Seed of the flow hash that picks the first SNAT port to try.
pub const SNAT_HASH_SEED: u32 = 0x6e61_7470;
/// Hop limit of the outer header of a DSR tunnel packet.
pub const TUNNEL_TTL: u8 = 64;
/// The kernel refreshes [`NatEntry::last_seen_ns`] at most this often.
pub const NAT_TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// How a VIP forwards to its backends.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// DNAT to the backend, SNAT to the edge's inside address.
    Nat = 0,
    /// IPIP / IPv6-in-IPv6 to the backend, which answers the client.
    Dsr = 1,
    /// Ethernet rewrite only; the backend is on the edge's segment.
    DsrL2 = 2,
}

impl Mode {
    /// The mode stored as `raw` in [`Service::mode`].
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Mode::Nat),
            1 => Some(Mode::Dsr),
            2 => Some(Mode::DsrL2),
            _ => None,
        }
    }

    /// The mode's name in the config, the status and the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
            Mode::DsrL2 => "dsr-l2",
        }
    }
}

/// A service: where a VIP's packets for one (protocol, port) arrive.
/// Addresses are 16 bytes; IPv4 uses the first four, the rest are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    /// Entry port, host byte order.
    pub port: u16,
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// What the kernel needs to forward a service's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// First slot of the VIP's active Maglev table in [`MAP_MAGLEV`].
    pub table_base: u32,
    /// Slots in the table (a prime).
    pub table_size: u32,
    /// Index into [`MAP_SERVICE_STATS`] (below [`MAX_SERVICES`]). A `u32`
    /// before PROXY protocol came: its two high bytes were always 0, and
    /// are `proxy` and padding now, so older entries read as no PROXY
    /// header.
    pub stats_index: u16,
    /// `nat`: the PROXY protocol header new flows get
    /// ([`crate::proxy_protocol::PROXY_V2`]; 0: none).
    pub proxy: u8,
    pub _pad: u8,
    /// Port on the backend, host byte order (equal to the entry port in
    /// the DSR modes).
    pub target_port: u16,
    /// [`Mode`] as `u8`.
    pub mode: u8,
    /// The VIP's firewall (`crate::firewall`): 0 without rules (nothing
    /// is read; older builds wrote 0 into this byte, padding then), else
    /// [`FW_RULES`](crate::firewall::FW_RULES), maybe
    /// [`FW_ALLOW_LIST`](crate::firewall::FW_ALLOW_LIST), and the VIP's
    /// index (the trie keys' slot).
    pub firewall: u8,
}

/// A backend as the kernel sees it: the value of [`MAP_BACKENDS`], an
/// array indexed by backend id. An id no backend holds is *vacant*
/// (family 0, not up) and keeps the generation it had last, so that
/// generations never repeat, also across restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    pub addr: [u8; 16],
    /// Changes whenever this id is given to another backend.
    pub generation: u32,
    pub family: u8,
    /// 1 while the backend may keep flows; 0 when it is down (its flows
    /// move to other backends). Draining is weight 0 in the Maglev table
    /// with `up` still 1.
    pub up: u8,
    pub _pad: [u8; 2],
}

impl BackendInfo {
    /// The entry of an id that no backend holds, `generation` kept.
    pub const fn vacant(generation: u32) -> Self {
        Self { addr: [0; 16], generation, family: 0, up: 0, _pad: [0; 2] }
    }

    /// No backend holds this id.
    pub const fn is_vacant(&self) -> bool {
        self.family == 0
    }
}

/// A flow as the client sent it: the key of [`MAP_FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Where a flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub backend: u32,
    /// The backend's generation when the flow was placed.
    pub generation: u32,
    /// SNAT source port (host byte order); 0 in the DSR modes.
    pub nat_port: u16,
    /// [`FLOW_CLOSING`], [`FLOW_PROXY`].
    pub flags: u8,
    /// The SNAT source address: its index in [`SnatPool`] (0: the
    /// family's first, [`Globals`]' inside address; older builds wrote 0).
    pub snat: u8,
}

/// [`FlowEntry::flags`]: the `nat` connection is closing, so each of the
/// client's packets reads its NAT entry (its last ACK frees the SNAT
/// port, `nat_state`). Older builds wrote 0 into this byte (padding then).
pub const FLOW_CLOSING: u8 = 1;
/// [`FlowEntry::flags`]: the `nat` flow's backend gets a PROXY protocol
/// header, so each of the client's packets reads its NAT entry (for the
/// shift of its sequence number).
pub const FLOW_PROXY: u8 = 2;

/// A `nat`-mode reply as it arrives from the backend: the key of [`MAP_NAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend: [u8; 16],
    /// Host byte order.
    pub backend_port: u16,
    /// Host byte order.
    pub nat_port: u16,
    pub proto: u8,
    pub family: u8,
    /// The SNAT address the reply came to: its index in [`SnatPool`]
    /// (older builds wrote 0, the first).
    pub snat: u8,
    pub _pad: u8,
}

/// A backend's next hop, kept so that an established packet needs no
/// `bpf_fib_lookup`. Valid while [`MAP_NET_GENERATION`] and the backend's
/// generation are the ones it was filled under, for packets arriving on
/// `in_ifindex` (the lookup's input).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopEntry {
    /// The routing generation it was filled under; 0: empty.
    pub net_generation: u32,
    /// [`BackendInfo::generation`] of the backend it was filled for.
    pub backend_generation: u32,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// The route's MTU: a packet (with its tunnel header) longer than
    /// this is too big.
    pub mtu: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The MAC a balancer interface receives its frames at (rule 2a of the
/// model): a frame to another destination (another host's MAC on a
/// bridged or promiscuous port, broadcast, multicast) is not balanced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfMac {
    pub mac: [u8; 6],
    /// 1: `mac` holds the interface's MAC. 0 (never written, or an
    /// interface the balancer left): not checked.
    pub known: u8,
    pub _pad: u8,
}

/// The SNAT source addresses of `nat` mode: each multiplies the SNAT
/// ports a backend port can take. Index 0 of each family is [`Globals`]'
/// inside address; a count of 0 (a pool never written) means that one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatPool {
    /// IPv4 addresses in the keys' 16-byte form ([`v4_key`]).
    pub v4: [[u8; 16]; MAX_SNAT_ADDRESSES],
    pub v6: [[u8; 16]; MAX_SNAT_ADDRESSES],
    pub v4_count: u32,
    pub v6_count: u32,
}

impl Default for SnatPool {
    fn default() -> Self {
        Self { v4: [[0; 16]; MAX_SNAT_ADDRESSES], v6: [[0; 16]; MAX_SNAT_ADDRESSES], v4_count: 0, v6_count: 0 }
    }
}

impl SnatPool {
    /// How many addresses `family` has (at least the inside address).
    #[inline(always)]
    pub fn count(&self, family: u8) -> u32 {
        let n = if family == FAMILY_V4 { self.v4_count } else { self.v6_count };
        if n == 0 {
            1
        } else if n > MAX_SNAT_ADDRESSES as u32 {
            MAX_SNAT_ADDRESSES as u32
        } else {
            n
        }
    }

    /// Address `index` of `family` (masked into the array).
    #[inline(always)]
    pub fn address(&self, family: u8, index: u8) -> [u8; 16] {
        let i = usize::from(index) & (MAX_SNAT_ADDRESSES - 1);
        if family == FAMILY_V4 {
            self.v4[i]
        } else {
            self.v6[i]
        }
    }
}

/// The key of [`MAP_SNAT_INDEX`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatAddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Where a `nat`-mode reply goes back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub client: [u8; 16],
    pub vip: [u8; 16],
    /// Host byte order.
    pub client_port: u16,
    /// Host byte order.
    pub vip_port: u16,
    /// The client's next hop (source MAC of the flow's first packet).
    pub client_mac: [u8; 6],
    /// The edge's MAC on that interface (its destination MAC).
    pub edge_mac: [u8; 6],
    /// The interface the flow arrived on; replies leave through it.
    pub ifindex: u32,
    /// 0 while open; how a TCP flow is ending, by the first FIN seen in
    /// the window ([`NAT_CLOSED`]: the client's, [`NAT_TIME_WAIT`]: the
    /// backend's): the agent's sweep frees the port sooner than an open
    /// flow's. (An exact RST, or the last ACK of a client-first close,
    /// frees it at once.)
    pub closing: u8,
    /// [`NAT_REPLIED`], [`NAT_PROVEN`], [`NAT_OPENED_BY_SYN`],
    /// [`NAT_REMEMBERED`], [`NAT_BACKEND_FIN`].
    pub state: u8,
    /// The backend's TCP window scale (from its SYN-ACK; 0 without one).
    pub backend_wscale: u8,
    /// TCP: the length of the PROXY protocol header the flow's backend
    /// gets in front of the client's data, by which the client's sequence
    /// numbers are shifted (0: none; `crate::proxy_protocol`). Older
    /// builds wrote 0 into this byte (padding then).
    pub proxy_len: u8,
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most every
    /// [`NAT_TOUCH_INTERVAL_NS`]); the agent's idle sweep reads it. An
    /// unproven entry's is its creation time until it is proven.
    pub last_seen_ns: u64,
    /// The interface the backend is reached through: replies are accepted
    /// only there (0: any, an entry migrated from an older layout until
    /// its first reply).
    pub backend_ifindex: u32,
    /// TCP: the end of the sequence space the backend has sent
    /// (`seq + payload + SYN + FIN` of its furthest segment).
    pub backend_next: u32,
    /// TCP: the backend's latest acknowledgement: the next byte it expects
    /// from the client.
    pub backend_ack: u32,
    /// TCP: the backend's latest receive window, scaled.
    pub backend_win: u32,
}

impl NatEntry {
    /// The [`FlowEntry::flags`] a proven flow with this entry is
    /// remembered with: [`FLOW_CLOSING`] while it closes, [`FLOW_PROXY`]
    /// with a PROXY protocol header.
    #[inline(always)]
    pub const fn flow_flags(&self) -> u8 {
        (if self.closing != 0 { FLOW_CLOSING } else { 0 }) | (if self.proxy_len != 0 { FLOW_PROXY } else { 0 })
    }

    /// Does this entry belong to the flow `want` describes (the same
    /// client and VIP ends)?
    pub fn same_flow(&self, want: &NatEntry) -> bool {
        self.client == want.client && self.client_port == want.client_port && self.vip == want.vip && self.vip_port == want.vip_port
    }
}

/// [`NatEntry::state`]: the backend has answered through this entry.
pub const NAT_REPLIED: u8 = 1;
/// [`NatEntry::state`]: the peer is proven real — a TCP client acknowledged
/// what the backend sent it (its handshake completed), or a UDP backend
/// answered. Only proven entries are safe from reclaiming and enter the
/// flow table.
pub const NAT_PROVEN: u8 = 2;
/// [`NatEntry::state`]: the entry was opened by a SYN (not adopted from
/// the middle of a stream): its proof must acknowledge exactly the
/// backend's SYN-ACK.
pub const NAT_OPENED_BY_SYN: u8 = 4;
/// [`NatEntry::state`]: the proven flow was put into the flow table (a
/// later probe that finds the entry again means the table forgot it).
pub const NAT_REMEMBERED: u8 = 8;
/// [`NatEntry::state`]: the backend's FIN passed (in its window); after
/// the client's FIN, the client's acknowledgement of it ends the
/// connection for the backend (it holds no TIME_WAIT).
pub const NAT_BACKEND_FIN: u8 = 16;
/// [`NatEntry::state`]: the backend acknowledged the PROXY protocol
/// header: every client segment is shifted, every acknowledgement moved
/// back (`crate::proxy_protocol`).
pub const NAT_PROXY_ACKED: u8 = 32;

/// An unproven NAT entry at least this old may be taken over by a new
/// flow that found no free port (a SYN flood's entries must not hold the
/// ports). Long enough for a handshake's round trip or a UDP answer;
/// short enough that a flood of `ports / 0.2 s` new flows a second per
/// backend is needed to keep every port busy.
pub const NAT_RECLAIM_AFTER_NS: u64 = 200_000_000;

/// Settings for all VIPs (key 0 of [`MAP_GLOBALS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// The edge's inside IPv4 address: SNAT source and tunnel source.
    pub inside_v4: [u8; 4],
    /// The edge's inside IPv6 address.
    pub inside_v6: [u8; 16],
    /// SNAT ports `[snat_port_min, snat_port_max]`, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}

impl Globals {
    /// The inside address of `family` in the keys' form: SNAT address 0
    /// and tunnel source.
    #[inline(always)]
    pub fn inside(&self, family: u8) -> [u8; 16] {
        if family == FAMILY_V4 {
            v4_key(self.inside_v4)
        } else {
            self.inside_v6
        }
    }
}

/// Packets, bytes and new flows of a service or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// A tunnel a DSR backend accepts: from the edge's address to the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapKey {
    pub outer_src: [u8; 16],
    pub inner_dst: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// What the balancer did with a packet. Each has a per-CPU counter (the
/// discriminant is its index in [`MAP_LB_COUNTERS`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbCounter {
    /// A packet of a known flow was forwarded. Not counted in its slot:
    /// the agent reads it from the services' [`TrafficStats`] (packets
    /// less new flows), which every forwarded packet updates anyway.
    FlowHit = 0,
    /// A new flow was placed by the Maglev table. Like `FlowHit`, read
    /// from the services' stats.
    NewFlow,
    /// A flow's backend was gone or down: the flow was placed again.
    FlowMoved,
    /// A `nat`-mode reply was translated back to the client.
    NatReply,
    /// Dropped: the VIP's table has no backend.
    NoBackend,
    /// Dropped: no free SNAT port for a new flow (every probed port of the
    /// backend's is held by another flow).
    SnatExhausted,
    /// Dropped: no route to the backend.
    NoRoute,
    /// Dropped: the next hop's MAC is not resolved yet.
    NoNeighbour,
    /// Dropped: the route leads out of an interface not in [`MAP_EGRESS`].
    NoEgress,
    /// Dropped: too big for the path and IPv4 without DF (XDP cannot
    /// fragment), or an ICMP error too big to forward.
    TooBig,
    /// Dropped: a fragment or a packet with IPv6 extension headers for a
    /// VIP (no ports to balance on).
    Unbalanceable,
    /// Dropped: a packet for a VIP with a malformed header.
    Malformed,
    /// Handed to the kernel: the TTL would expire (it sends the ICMP).
    TtlExpired,
    /// Dropped: `bpf_xdp_adjust_head` failed (no headroom).
    NoHeadroom,
    /// A path-MTU ICMP error about a balanced flow went to its backend.
    IcmpForwarded,
    /// A path-MTU ICMP error for a VIP matched no flow: to the next stage.
    IcmpUnmatched,
    /// Too big for the path to the backend: the client was sent the MTU
    /// it may use (ICMP fragmentation needed / packet too big).
    IcmpTooBigSent,
    /// Dropped: a new `nat` flow found a free SNAT port but the NAT table
    /// is full (`nat_table_size` entries). Last, so that the counters of a
    /// map pinned by an older version keep their indexes.
    NatTableFull,
    /// A `nat` flow the flow table had forgotten (LRU: the table is too
    /// small for the flows) was placed again and found its NAT entry,
    /// counted besides [`LbCounter::FlowHit`].
    FlowRefound,
    /// Dropped: a packet to the inside address on a SNAT port that is not
    /// a reply of the backend holding it, arrived through the backend's
    /// interface (a forged reply).
    ForgedReply,
    /// Dropped: a TCP RST or FIN outside the window its connection has
    /// seen (a blind reset); the connection's state is unchanged.
    OutOfWindow,
    /// A RST in the window but not at the exact sequence the receiver
    /// expects: forwarded, state unchanged (the endpoint answers with a
    /// challenge ACK, and a real peer's next RST is exact).
    RstInexact,
    /// A new `nat` flow took the SNAT port of an unproven entry (a
    /// half-open connection or an unanswered UDP flow) because no port
    /// was free: a flood is on.
    HalfOpenReclaimed,
    /// A `nat` flow proved its peer real (handshake completed, or the UDP
    /// backend answered) and entered the flow table.
    FlowProven,
    /// Dropped: a packet that would place a new flow came from a source
    /// that cannot be real on its interface (a VIP, the inside address, a
    /// backend's network, this host's own addresses, loopback, …).
    ImpossibleSource,
    /// A `nat` connection ended for its backend (an exact RST from either
    /// side, or the client's last ACK after FINs both ways, the client's
    /// first): its SNAT port was freed at once.
    NatPortFreed,
    /// Handed to the kernel: a packet the balancer would have taken (for
    /// a VIP, a reply to a SNAT address, an ICMP error about a flow) in a
    /// frame not addressed to its interface's MAC: another host's on a
    /// bridged or promiscuous port, or a broadcast or multicast one.
    OtherHost,
}

/// Number of [`LbCounter`]s.
pub const LB_COUNTERS_LEN: u32 = 27;

impl LbCounter {
    /// Every counter, in index order.
    pub const ALL: [LbCounter; LB_COUNTERS_LEN as usize] = [
        LbCounter::FlowHit,
        LbCounter::NewFlow,
        LbCounter::FlowMoved,
        LbCounter::NatReply,
        LbCounter::NoBackend,
        LbCounter::SnatExhausted,
        LbCounter::NoRoute,
        LbCounter::NoNeighbour,
        LbCounter::NoEgress,
        LbCounter::TooBig,
        LbCounter::Unbalanceable,
        LbCounter::Malformed,
        LbCounter::TtlExpired,
        LbCounter::NoHeadroom,
        LbCounter::IcmpForwarded,
        LbCounter::IcmpUnmatched,
        LbCounter::IcmpTooBigSent,
        LbCounter::NatTableFull,
        LbCounter::FlowRefound,
        LbCounter::ForgedReply,
        LbCounter::OutOfWindow,
        LbCounter::RstInexact,
        LbCounter::HalfOpenReclaimed,
        LbCounter::FlowProven,
        LbCounter::ImpossibleSource,
        LbCounter::NatPortFreed,
        LbCounter::OtherHost,
    ];

    /// Whether the outcome drops the packet (its name starts with `drop_`).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            LbCounter::NoBackend
                | LbCounter::SnatExhausted
                | LbCounter::NoRoute
                | LbCounter::NoNeighbour
                | LbCounter::NoEgress
                | LbCounter::TooBig
                | LbCounter::Unbalanceable
                | LbCounter::Malformed
                | LbCounter::NoHeadroom
                | LbCounter::NatTableFull
                | LbCounter::ForgedReply
                | LbCounter::OutOfWindow
                | LbCounter::ImpossibleSource
        )
    }

    /// The name in `swarmlb status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            LbCounter::FlowHit => "flow_hit",
            LbCounter::NewFlow => "new_flow",
            LbCounter::FlowMoved => "flow_moved",
            LbCounter::NatReply => "nat_reply",
            LbCounter::NoBackend => "drop_no_backend",
            LbCounter::SnatExhausted => "drop_snat_exhausted",
            LbCounter::NoRoute => "drop_no_route",
            LbCounter::NoNeighbour => "drop_no_neighbour",
            LbCounter::NoEgress => "drop_no_egress",
            LbCounter::TooBig => "drop_too_big",
            LbCounter::Unbalanceable => "drop_unbalanceable",
            LbCounter::Malformed => "drop_malformed",
            LbCounter::TtlExpired => "pass_ttl_expired",
            LbCounter::NoHeadroom => "drop_no_headroom",
            LbCounter::IcmpForwarded => "icmp_forwarded",
            LbCounter::IcmpUnmatched => "icmp_unmatched",
            LbCounter::IcmpTooBigSent => "icmp_too_big_sent",
            LbCounter::NatTableFull => "drop_nat_table_full",
            LbCounter::FlowRefound => "flow_refound",
            LbCounter::ForgedReply => "drop_forged_reply",
            LbCounter::OutOfWindow => "drop_out_of_window",
            LbCounter::RstInexact => "rst_inexact",
            LbCounter::HalfOpenReclaimed => "half_open_reclaimed",
            LbCounter::FlowProven => "flow_proven",
            LbCounter::ImpossibleSource => "drop_impossible_source",
            LbCounter::NatPortFreed => "nat_port_freed",
            LbCounter::OtherHost => "pass_other_host",
        }
    }
}

/// What the decapsulation program did. Index in [`MAP_DECAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapCounter {
    /// A tunnel packet from an edge to a VIP was opened.
    Decapsulated = 0,
    /// A tunnel packet nobody configured: left to the kernel (which drops
    /// it: no tunnel device).
    Unknown,
}

/// Number of [`DecapCounter`]s.
pub const DECAP_COUNTERS_LEN: u32 = 2;

/// Reads the `family` field's address: 4 or 16 bytes of `addr`.
#[inline(always)]
pub fn addr_len(family: u8) -> usize {
    if family == FAMILY_V6 {
        16
    } else {
        4
    }
}

/// An address in the 16-byte form the keys use.
#[inline(always)]
pub const fn v4_key(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Is `family` one the balancer knows?
#[inline(always)]
pub const fn known_family(family: u8) -> bool {
    family == FAMILY_V4 || family == FAMILY_V6
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are `repr(C)` plain data with explicit padding fields, so
    // every byte is initialised and any bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for Globals {}
    unsafe impl aya::Pod for SnatPool {}
    unsafe impl aya::Pod for HopEntry {}
    unsafe impl aya::Pod for IfMac {}
    unsafe impl aya::Pod for SnatAddrKey {}
    unsafe impl aya::Pod for TrafficStats {}
    unsafe impl aya::Pod for DecapKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<Service>(), 16);
        assert!(MAX_SERVICES <= u32::from(u16::MAX) + 1, "a service's stats_index is a u16");
        assert_eq!(size_of::<BackendInfo>(), 24);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowEntry>(), 12);
        assert_eq!(size_of::<NatKey>(), 24);
        assert_eq!(size_of::<NatEntry>(), 80);
        assert_eq!(size_of::<Globals>(), 24);
        assert_eq!(size_of::<TrafficStats>(), 24);
        assert_eq!(size_of::<DecapKey>(), 36);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in LbCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn drops_are_the_drop_counters() {
        for c in LbCounter::ALL {
            assert_eq!(c.is_drop(), c.name().starts_with("drop_"), "{c:?}");
        }
    }
}
