//! The load balancer's decision and rewrite in plain Rust: the reference
//! the XDP program (`lb-ebpf/src/balancer`) must match byte for byte.
//!
//! # Rules
//!
//! 1. Only untagged Ethernet frames carrying IPv4 or IPv6 with TCP or UDP
//!    directly after the IP header can be the balancer's; everything else
//!    goes to the next stage (the isolator, or the kernel).
//! 2. A packet whose (destination, protocol, destination port) is a
//!    service is forwarded; one that comes to a SNAT address (the edge's
//!    inside address or another of [`SnatPool`]) and matches a NAT entry
//!    is a reply and goes back to its client.
//!    Anything else goes to the next stage.
//!    2a. Such a packet (and an ICMP error of rule 9) is the balancer's
//!    only in a frame addressed to the MAC of the interface it arrived on
//!    ([`Tables::interface_mac`]). In a frame to another destination —
//!    another host's MAC, seen on a bridged or promiscuous port, or a
//!    broadcast or multicast MAC, which every host on the segment receives
//!    — it goes to the kernel unchanged ([`LbCounter::OtherHost`]), before
//!    anything else is read or written: an edge never answers for a
//!    neighbour. An interface whose MAC the agent has not written is not
//!    checked.
//! 3. A service's packet that is a fragment, or whose headers do not fit
//!    the frame, is dropped and counted; no backend can be chosen for it.
//!    3b. A packet of a VIP with firewall rules ([`Service::firewall`] not
//!    0) whose source the rules refuse ([`Tables::firewall_rules`],
//!    `crate::firewall::verdict`: deny wins, then the allow list) is
//!    dropped and counted at the rule's slot ([`Outcome::firewall`]) —
//!    every packet, not only a new flow's, so a deny added to a running
//!    config ends the flows it covers at once.
//! 4. In `nat` mode a packet whose TTL / hop limit would expire goes to
//!    the kernel unchanged (it sends the ICMP time-exceeded).
//! 5. A known flow whose backend is still the same and up keeps it;
//!    otherwise the VIP's Maglev table picks one for
//!    `flow_hash(5-tuple) % table_size`. A TCP SYN without ACK opens a new
//!    connection: what the flow table holds for its 5-tuple is an earlier
//!    connection's and is forgotten, as is a moved flow's stale entry. The
//!    flow table remembers only flows that proved their peer real (a SYN
//!    proves nothing, so a flood of them cannot evict established flows):
//!    in the DSR modes a flow's first packet that is not a SYN, in `nat` a
//!    flow whose NAT entry is proven (`nat_state`). The route (rule 7) is
//!    looked up before any state is written: nothing is allocated for a
//!    packet that cannot leave.
//!    5b. A packet the table would place (a new flow) from a source that
//!    cannot be real on its interface ([`Tables::impossible_source`]: a
//!    VIP, the inside address, a backend's network, the host's own
//!    addresses, loopback, …) is dropped
//!    ([`LbCounter::ImpossibleSource`]) before it takes anything.
//! 6. `nat`: the flow gets a SNAT slot (a port of one of the family's
//!    SNAT addresses, [`SnatPool`]: the slots are the addresses' port
//!    ranges one after another) — its own NAT entry if one of
//!    [`SNAT_PROBES`] consecutive slots from a hash of the 5-tuple holds
//!    it (a SYN writes it afresh: a new connection), else the first free
//!    one, else (none free, or the NAT table full) the first probed
//!    unproven entry older than [`NAT_RECLAIM_AFTER_NS`], taken over
//!    ([`LbCounter::HalfOpenReclaimed`]). None: dropped
//!    ([`LbCounter::SnatExhausted`], or [`LbCounter::NatTableFull`] when
//!    the table was full). A new entry records the interface the backend
//!    is reached through. A flow (not a SYN) that finds its own entry is a
//!    hit; it proves the entry by acknowledging the backend's SYN-ACK
//!    ([`LbCounter::FlowProven`]) and a proven entry's flow is remembered
//!    ([`LbCounter::FlowRefound`] when the table had remembered it before).
//!    6b. A TCP RST or FIN changes its NAT entry only in the window the
//!    entry has seen (`nat_state`): outside it, dropped
//!    ([`LbCounter::OutOfWindow`]); a RST in the window but not exact
//!    passes unchanged ([`LbCounter::RstInexact`]); an exact RST ends
//!    the connection; else the first FIN marks the entry closing:
//!    [`NAT_TIME_WAIT`] for the backend's (it holds TIME_WAIT), else
//!    [`NAT_CLOSED`], and a remembered flow whose entry is closing is
//!    marked [`FLOW_CLOSING`], so that each of its client's packets reads
//!    the entry. A connection over for the backend (an exact RST from
//!    either side; the client's acknowledgement of the backend's FIN
//!    after a client-first close) has its NAT entry and flow removed at
//!    once: its SNAT port is free for the next flow
//!    ([`LbCounter::NatPortFreed`]). The agent's sweep frees other closing
//!    ports sooner than open ones, and unproven entries within seconds.
//!    6c. A TCP SYN of a service with `proxy_protocol` records the
//!    header's length in its new NAT entry; that flow's client segments
//!    are judged and sent as the backend gets them
//!    (`proxy_protocol::client_action`): the first data segment (and its
//!    retransmissions) with the header (v1's text line or v2's binary
//!    one) between TCP header and payload,
//!    later ones with the sequence number moved by the length.
//!    Destination becomes backend:target port, source the slot's SNAT
//!    address:port, TTL − 1, checksums updated incrementally.
//!    `dsr`: an outer IPv4 (IPIP) or IPv6 (IPv6-in-IPv6) header from the
//!    inside address to the backend is put in front; the inner packet is
//!    not touched. `dsr-l2`: only the Ethernet addresses change.
//! 7. The next hop comes from the route to the backend: its MACs go into
//!    the Ethernet header. A route found is kept per backend with its MTU
//!    ([`HopEntry`]) and used, without a routing lookup, while the routing
//!    generation ([`Tables::net_generation`], bumped by the agent at every
//!    netlink change; 0: nothing is kept) and the backend's are the ones
//!    it was found under, for packets from the same ingress interface; out of the ingress interface is `XDP_TX`,
//!    another interface a redirect (it must be an egress interface).
//!    A packet that would not fit the route's MTU (after the tunnel header
//!    in `dsr`) is answered, from the VIP, with an ICMP "fragmentation
//!    needed" (IPv6: "packet too big") carrying the MTU the client may use,
//!    quoting the IP header and 8 bytes — unless it is IPv4 without DF,
//!    which is dropped (XDP cannot fragment).
//! 8. A reply is accepted only on the interface its NAT entry recorded
//!    for the backend (else [`LbCounter::ForgedReply`]); it updates the
//!    entry's window (a UDP reply proves the entry), is rewritten back
//!    (source VIP:entry port, destination client:port, TTL − 1) and sent
//!    to the MAC the flow came from, out of the interface it came in on.
//!    8b. Any other packet to a SNAT address on a SNAT port is dropped
//!    ([`LbCounter::ForgedReply`]): only replies may come there.
//!    8c. A TCP reply of a flow with a PROXY protocol header
//!    (`proxy_protocol`): its acknowledgement moves back by the header's
//!    length once the header is acknowledged, its SACK edges always, and
//!    its SYN-ACK's MSS is lowered by the length.
//! 9. A path-MTU ICMP error (IPv4 fragmentation needed, IPv6 packet too
//!    big) sent to a VIP about a packet the VIP sent to a client goes to
//!    the flow's backend, so path MTU discovery works through the
//!    balancer: in `nat` mode translated like the flow (outer and quoted
//!    headers, all checksums), in the DSR modes forwarded like the flow's
//!    packets. An error whose flow is unknown goes to the next stage. An
//!    ICMP error never places a flow.
//!    9b. An error from a sender inside one of the VIP's `deny` prefixes
//!    is dropped and counted at that deny, before its flow is looked up:
//!    a denied network sends the VIP no errors either. The allow list is
//!    not asked: it names clients, and the routers on their paths must
//!    still reach them with path-MTU errors.

use crate::{
    balancer::*,
    ip_header::{self, outer_ipv4, outer_ipv6},
    csum,
    maglev::flow_hash,
    nat_state::{self, Segment},
    proxy_protocol,
    wire::*,
};

/// What the routing table says about a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Out of `ifindex`, from `smac` to `dmac`.
    Via { ifindex: u32, smac: [u8; 6], dmac: [u8; 6] },
    /// No route.
    Unreachable,
    /// A route, but the next hop's MAC is unknown.
    NoNeighbour,
    /// A packet of the given IP length does not fit the route's MTU.
    TooBig { mtu: u16 },
}

/// The state the decision reads and writes: the kernel's maps, or plain
/// collections in a test.
pub trait Tables {
    fn service(&self, key: &ServiceKey) -> Option<Service>;
    fn backend(&self, id: u32) -> Option<BackendInfo>;
    /// The backend id in slot `index` of [`MAP_MAGLEV`].
    fn maglev_slot(&self, index: u32) -> Option<u32>;
    fn globals(&self) -> Option<Globals>;
    /// The SNAT addresses ([`MAP_SNAT_POOL`]); `None`: only the inside
    /// address.
    fn snat_pool(&self) -> Option<SnatPool>;
    /// The index of a SNAT address after the first of its family
    /// ([`MAP_SNAT_INDEX`]).
    fn snat_index(&self, family: u8, addr: &[u8; 16]) -> Option<u8>;
    fn flow(&self, key: &FlowKey) -> Option<FlowEntry>;
    fn set_flow(&mut self, key: &FlowKey, entry: &FlowEntry);
    /// Forgets the flow at `key`, if it is remembered.
    fn forget_flow(&mut self, key: &FlowKey);
    fn nat(&self, key: &NatKey) -> Option<NatEntry>;
    /// Inserts only if `key` is free.
    fn insert_nat(&mut self, key: &NatKey, entry: &NatEntry) -> NatInsert;
    /// Writes the entry at `key` whole (an entry's state changed, a new
    /// connection on the port of an earlier one with the same 5-tuple, or
    /// a reclaimed port).
    fn put_nat(&mut self, key: &NatKey, entry: &NatEntry);
    /// Removes the entry at `key` (its connection is over: the port is
    /// free).
    fn remove_nat(&mut self, key: &NatKey);
    /// The clock of [`NatEntry::last_seen_ns`] (`bpf_ktime_get_ns`).
    fn now_ns(&self) -> u64;
    /// The route to `dst` for a packet of `ip_len` bytes (the IP packet as
    /// it will be sent) that arrived on `ifindex`.
    fn route(&self, family: u8, dst: &[u8; 16], ifindex: u32, ip_len: u16) -> Route;
    /// The routing generation ([`MAP_NET_GENERATION`]).
    fn net_generation(&self) -> u32;
    /// Backend `id`'s kept next hop ([`MAP_HOPS`]).
    fn hop(&self, id: u32) -> Option<HopEntry>;
    fn set_hop(&mut self, id: u32, hop: &HopEntry);
    /// May the balancer redirect out of `ifindex`?
    fn is_egress(&self, ifindex: u32) -> bool;
    /// Can `src` not be a real source on `ifindex` (the impossible-source
    /// tries, as the isolator reads them)?
    fn impossible_source(&self, family: u8, ifindex: u32, src: &[u8; 16]) -> bool;
    /// The firewall rules of the VIP with index `vip` (the config's, with
    /// their counter slots; empty without rules).
    fn firewall_rules(&self, vip: u32) -> &[crate::firewall::Rule];
    /// The MAC of interface `ifindex` ([`MAP_IF_MACS`]; all zero past its
    /// end or never written).
    fn interface_mac(&self, ifindex: u32) -> IfMac;
}

/// What [`Tables::insert_nat`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatInsert {
    Inserted,
    /// Another flow holds the key.
    Taken,
    /// The table has no room for another entry.
    Full,
}

/// The XDP action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Not the balancer's: on to the next stage, unchanged.
    NextStage,
    /// Handed to the kernel unchanged.
    Pass,
    Drop,
    /// Out of the ingress interface.
    Tx,
    /// Out of another interface.
    Redirect(u32),
}

/// What happened to a packet; `len` bytes of `out` are the packet sent
/// (for `Tx` and `Redirect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    /// The counter bumped (none for `NextStage`).
    pub counter: Option<LbCounter>,
    /// The flow's previous backend was gone or down.
    pub moved: bool,
    /// A second counter the packet bumps when it is forwarded
    /// ([`LbCounter::FlowRefound`], [`LbCounter::FlowProven`],
    /// [`LbCounter::HalfOpenReclaimed`], [`LbCounter::RstInexact`],
    /// [`LbCounter::NatPortFreed`]).
    pub extra: Option<LbCounter>,
    /// `(service stats index, backend id)` charged with the packet.
    pub charged: Option<(u32, u32)>,
    /// The firewall's counter slot of a packet it dropped (rule 3b;
    /// `counter` is `None` then).
    pub firewall: Option<u32>,
    pub len: usize,
}

impl Outcome {
    const fn next_stage() -> Self {
        Outcome { action: Action::NextStage, counter: None, moved: false, extra: None, charged: None, firewall: None, len: 0 }
    }
    const fn with(action: Action, counter: LbCounter) -> Self {
        Outcome { action, counter: Some(counter), moved: false, extra: None, charged: None, firewall: None, len: 0 }
    }
}

/// The parsed headers of a TCP/UDP packet.
#[derive(Clone, Copy, Debug)]
struct Parsed {
    family: u8,
    proto: u8,
    l3: usize,
    l4: usize,
    /// Length of the IP packet (header included) per its header.
    ip_len: usize,
    ttl: u8,
    fragment: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

fn addr<const N: usize>(f: &[u8], off: usize) -> Option<[u8; 16]> {
    let mut a = [0u8; 16];
    a[..N].copy_from_slice(f.get(off..off + N)?);
    Some(a)
}

/// Rule 1: the headers, if this can be a balanced packet at all.
fn parse(f: &[u8]) -> Option<Parsed> {
    let l3 = ETH_HLEN;
    match be16(f, offset::ETH_TYPE)? {
        ETH_P_IPV4 => {
            let vihl = *f.get(l3)?;
            let ihl = usize::from(vihl & bits::IPV4_IHL) * 4;
            let proto = *f.get(l3 + offset::IPV4_PROTO)?;
            if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
                return None;
            }
            let frag = be16(f, l3 + offset::IPV4_FRAGS)?;
            let l4 = l3 + ihl;
            Some(Parsed {
                family: FAMILY_V4,
                proto,
                l3,
                l4,
                ip_len: usize::from(be16(f, l3 + offset::IPV4_TOT_LEN)?),
                ttl: *f.get(l3 + offset::IPV4_TTL)?,
                fragment: frag & bits::IPV4_FRAGMENT != 0,
                src: addr::<4>(f, l3 + offset::IPV4_SRC)?,
                dst: addr::<4>(f, l3 + offset::IPV4_DST)?,
                sport: be16(f, l4)?,
                dport: be16(f, l4 + offset::L4_DPORT)?,
            })
        }
        ETH_P_IPV6 => {
            let proto = *f.get(l3 + offset::IPV6_NEXT_HDR)?;
            if *f.get(l3)? >> 4 != 6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
                return None;
            }
            let l4 = l3 + IPV6_HLEN;
            Some(Parsed {
                family: FAMILY_V6,
                proto,
                l3,
                l4,
                ip_len: IPV6_HLEN + usize::from(be16(f, l3 + offset::IPV6_PAYLOAD_LEN)?),
                ttl: *f.get(l3 + offset::IPV6_HOP_LIMIT)?,
                fragment: false,
                src: addr::<16>(f, l3 + offset::IPV6_SRC)?,
                dst: addr::<16>(f, l3 + offset::IPV6_DST)?,
                sport: be16(f, l4)?,
                dport: be16(f, l4 + offset::L4_DPORT)?,
            })
        }
        _ => None,
    }
}

/// Offset of the L4 checksum within the L4 header, and the header's
/// minimum length.
const fn l4_check(proto: u8) -> (usize, usize) {
    if proto == IPPROTO_TCP {
        (16, TCP_MIN_HLEN)
    } else {
        (6, UDP_HLEN)
    }
}

/// Rule 3: `None` when the packet is fine, else the drop counter.
fn unfit(p: &Parsed, frame_len: usize) -> Option<LbCounter> {
    if p.fragment {
        return Some(LbCounter::Unbalanceable);
    }
    let (_, min) = l4_check(p.proto);
    if p.ip_len < p.l4 - p.l3 + min || p.l3 + p.ip_len > frame_len {
        return Some(LbCounter::Malformed);
    }
    None
}

/// Rule 2a: whether `frame` is addressed to another destination than
/// the MAC of `ifindex` (when that is known).
fn other_host<T: Tables>(frame: &[u8], ifindex: u32, t: &T) -> bool {
    let m = t.interface_mac(ifindex);
    m.known != 0 && frame.get(..6) != Some(&m.mac[..])
}

/// The most a frame grows: a PROXY protocol v1 line over IPv6 (an IPv6
/// outer header in `dsr` adds 40).
pub const MAX_GROWTH: usize = proxy_protocol::V1_MAX_LEN as usize;

/// Decides what happens to `frame`, arrived on `ifindex`, and writes the
/// packet to send into `out` (which needs `frame.len() +` [`MAX_GROWTH`]
/// bytes).
pub fn process<T: Tables>(frame: &[u8], out: &mut [u8], ifindex: u32, t: &mut T) -> Outcome {
    let Some(p) = parse(frame) else {
        return match parse_icmp(frame) {
            Some(e) => icmp_error(frame, out, ifindex, t, &e),
            None => Outcome::next_stage(),
        };
    };
    let skey = ServiceKey { addr: p.dst, port: p.dport, proto: p.proto, family: p.family };
    if let Some(svc) = t.service(&skey) {
        if other_host(frame, ifindex, t) {
            return Outcome::with(Action::Pass, LbCounter::OtherHost);
        }
        return forward(frame, out, ifindex, t, &p, &svc);
    }
    let Some(g) = t.globals() else { return Outcome::next_stage() };
    let snat = if p.dst == g.inside(p.family) { Some(0) } else { t.snat_index(p.family, &p.dst) };
    let Some(snat) = snat else { return Outcome::next_stage() };
    let nkey = NatKey { backend: p.src, backend_port: p.sport, nat_port: p.dport, proto: p.proto, family: p.family, snat, _pad: 0 };
    let entry = t.nat(&nkey);
    if (entry.is_some() || on_snat_port(&g, p.dport)) && other_host(frame, ifindex, t) {
        return Outcome::with(Action::Pass, LbCounter::OtherHost);
    }
    match entry {
        Some(entry) => reply(frame, out, ifindex, t, &p, &nkey, &entry),
        // Rule 8b: only a backend's reply may come to a SNAT port.
        None if on_snat_port(&g, p.dport) => Outcome::with(Action::Drop, LbCounter::ForgedReply),
        None => Outcome::next_stage(),
    }
}

fn forward<T: Tables>(frame: &[u8], out: &mut [u8], ifindex: u32, t: &mut T, p: &Parsed, svc: &Service) -> Outcome {
    if let Some(c) = unfit(p, frame.len()) {
        return Outcome::with(Action::Drop, c);
    }
    if svc.firewall != 0 {
        let vip = u32::from(svc.firewall & crate::firewall::FW_VIP_MASK);
        if let Some(slot) = crate::firewall::verdict(vip, t.firewall_rules(vip), &p.src) {
            return Outcome { action: Action::Drop, firewall: Some(slot), ..Outcome::next_stage() };
        }
    }
    let mode = Mode::from_raw(svc.mode).unwrap_or(Mode::Nat);
    if mode == Mode::Nat && p.ttl <= 1 {
        return Outcome::with(Action::Pass, LbCounter::TtlExpired);
    }
    let Some(g) = t.globals() else { return Outcome::with(Action::Drop, LbCounter::NoBackend) };
    let fkey = FlowKey { src: p.src, dst: p.dst, src_port: p.sport, dst_port: p.dport, proto: p.proto, family: p.family, _pad: [0; 2] };
    let seg = tcp_segment(frame, p);
    let opens = seg.is_some_and(|s| opens_connection(s.flags));
    let known = if opens { None } else { t.flow(&fkey) };
    let mut outcome = Outcome::with(Action::Drop, LbCounter::FlowHit);
    let remembered = known.and_then(|e| t.backend(e.backend).filter(|b| b.generation == e.generation && b.up == 1).map(|b| (e, b)));
    let (id, backend) = match remembered {
        Some((e, b)) => (e.backend, b),
        None => {
            outcome.moved = known.is_some();
            let h = flow_hash(&p.src, &p.dst, p.sport, p.dport, p.proto, BACKEND_HASH_SEED);
            let slot = svc.table_base.wrapping_add(h % svc.table_size.max(1));
            let pick = t.maglev_slot(slot).filter(|&id| id != NO_BACKEND);
            let Some((id, b)) = pick.and_then(|id| t.backend(id).filter(|b| b.up == 1).map(|b| (id, b))) else {
                return Outcome { moved: outcome.moved, ..Outcome::with(Action::Drop, LbCounter::NoBackend) };
            };
            if t.impossible_source(p.family, ifindex, &p.src) {
                return Outcome { moved: outcome.moved, ..Outcome::with(Action::Drop, LbCounter::ImpossibleSource) };
            }
            (id, b)
        }
    };

    // Rule 7 first: nothing is allocated for a packet that cannot leave.
    let outer = if mode == Mode::Dsr { if p.family == FAMILY_V4 { IPV4_MIN_HLEN } else { IPV6_HLEN } } else { 0 };
    let route = next_hop(t, (id, &backend), p.family, ifindex, (p.ip_len + outer) as u16);
    let hop_ifindex = match route {
        Route::Via { ifindex, .. } => ifindex,
        Route::TooBig { mtu } => {
            return match icmp_too_big(frame, out, p, mtu.saturating_sub(outer as u16)) {
                Some(len) => Outcome { action: Action::Tx, counter: Some(LbCounter::IcmpTooBigSent), moved: outcome.moved, extra: None, charged: None, firewall: None, len },
                None => Outcome { action: Action::Drop, counter: Some(LbCounter::TooBig), moved: outcome.moved, extra: None, charged: None, firewall: None, len: 0 },
            };
        }
        _ => {
            let (action, counter) = send(out, ifindex, t, route);
            return Outcome { action, counter: Some(counter), moved: outcome.moved, extra: None, charged: None, firewall: None, len: 0 };
        }
    };

    // Rules 5 and 6: the flow's state. What the flow table holds for a
    // SYN's 5-tuple is an earlier connection's, and a moved flow's entry
    // is stale: both go.
    if opens || outcome.moved {
        t.forget_flow(&fkey);
    }
    let mut proxy = Proxy::default();
    let slot = if mode == Mode::Nat {
        let found = match remembered {
            Some((e, _)) => NatFound::Remembered(Slot { port: e.nat_port, snat: e.snat }, e.flags),
            None => match allocate_snat_port(frame, ifindex, t, (&g, opens), p, svc, &backend, hop_ifindex) {
                Ok(f) => f,
                Err(c) => return Outcome { moved: outcome.moved, ..Outcome::with(Action::Drop, c) },
            },
        };
        match nat_state_of_flow(t, &fkey, p, svc, (id, &backend), seg, found) {
            Ok((slot, counter, extra, pp)) => {
                outcome.counter = Some(counter);
                outcome.extra = extra;
                proxy = pp;
                slot
            }
            Err(c) => return Outcome { moved: outcome.moved, ..Outcome::with(Action::Drop, c) },
        }
    } else {
        if remembered.is_none() {
            // A SYN is placed, not remembered: a flood of them must not
            // evict established flows. The connection's next packet is
            // placed the same way (the table is deterministic) and stays.
            if !opens {
                t.set_flow(&fkey, &FlowEntry { backend: id, generation: backend.generation, ..FlowEntry::default() });
            }
            if opens || p.proto != IPPROTO_TCP {
                outcome.counter = Some(LbCounter::NewFlow);
            }
        }
        Slot::default()
    };
    outcome.charged = Some((u32::from(svc.stats_index), id));

    let out_len;
    match mode {
        Mode::Nat => {
            if proxy.action == proxy_protocol::PREPEND {
                out_len = frame.len() + usize::from(proxy.len);
                prepend_header(frame, out, p, proxy.len);
            } else {
                out_len = frame.len();
                out[..out_len].copy_from_slice(frame);
            }
            rewrite(out, p, snat_address(t, &g, p.family, slot.snat), slot.port, backend.addr, svc.target_port);
            if proxy.action == proxy_protocol::SHIFT {
                shift_seq(out, p, proxy.len);
            }
        }
        Mode::Dsr => {
            out_len = frame.len() + outer;
            out[ETH_HLEN + outer..out_len].copy_from_slice(&frame[ETH_HLEN..]);
            if p.family == FAMILY_V4 {
                let mut h = [0u8; 20];
                outer_ipv4(&mut h, g.inside_v4, &backend.addr, p.ip_len as u16);
                out[ETH_HLEN..ETH_HLEN + 20].copy_from_slice(&h);
            } else {
                let mut h = [0u8; 40];
                outer_ipv6(&mut h, &g.inside_v6, &backend.addr, p.ip_len as u16);
                out[ETH_HLEN..ETH_HLEN + 40].copy_from_slice(&h);
            }
            let ethertype = if p.family == FAMILY_V4 { ETH_P_IPV4 } else { ETH_P_IPV6 };
            out[offset::ETH_TYPE..ETH_HLEN].copy_from_slice(&ethertype.to_be_bytes());
        }
        Mode::DsrL2 => {
            out_len = frame.len();
            out[..out_len].copy_from_slice(frame);
        }
    }
    let (action, counter) = send(out, ifindex, t, route);
    if action == Action::Drop {
        return Outcome { action, counter: Some(counter), moved: outcome.moved, extra: None, charged: None, firewall: None, len: 0 };
    }
    Outcome { action, len: out_len, ..outcome }
}

/// A `nat` flow's SNAT source: port and address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    port: u16,
    /// Index in [`SnatPool`].
    snat: u8,
}

/// What a client's `nat` segment becomes for the PROXY protocol
/// (`proxy_protocol::client_action`), and the header's length.
#[derive(Clone, Copy, Debug, Default)]
struct Proxy {
    action: u8,
    len: u8,
}

/// How a `nat` packet's SNAT slot was found.
#[derive(Clone, Copy, Debug)]
enum NatFound {
    /// The flow table remembers the flow (a proven one) with this slot,
    /// and its [`FlowEntry::flags`].
    Remembered(Slot, u8),
    /// Its own NAT entry, at this slot, found by probing.
    Own(Slot, NatEntry),
    /// A free slot, its new entry written.
    Fresh(Slot),
    /// The slot of an unproven entry, taken over and written.
    Reclaimed(Slot),
}

/// SNAT address `index` of `family`.
fn snat_address<T: Tables>(t: &T, g: &Globals, family: u8, index: u8) -> [u8; 16] {
    match (index, t.snat_pool()) {
        (0, _) | (_, None) => g.inside(family),
        (i, Some(pool)) => pool.address(family, i),
    }
}

/// Rule 6b and the proof: what the client's packet does to its NAT entry
/// (judged as the backend gets it: rule 6c); the SNAT port, the counter,
/// the extra counter and the PROXY protocol action, or the drop counter.
fn nat_state_of_flow<T: Tables>(t: &mut T, fkey: &FlowKey, p: &Parsed, svc: &Service, (id, b): (u32, &BackendInfo), seg: Option<Segment>, found: NatFound) -> Result<(Slot, LbCounter, Option<LbCounter>, Proxy), LbCounter> {
    let key = |slot: Slot| NatKey { backend: b.addr, backend_port: svc.target_port, nat_port: slot.port, proto: p.proto, family: p.family, snat: slot.snat, _pad: 0 };
    let remember = |t: &mut T, slot: Slot, flags| t.set_flow(fkey, &FlowEntry { backend: id, generation: b.generation, nat_port: slot.port, flags, snat: slot.snat });
    match found {
        NatFound::Fresh(slot) => Ok((slot, LbCounter::NewFlow, None, Proxy::default())),
        NatFound::Reclaimed(slot) => Ok((slot, LbCounter::NewFlow, Some(LbCounter::HalfOpenReclaimed), Proxy::default())),
        NatFound::Remembered(slot, flags) => {
            // Only a RST or FIN, or any packet of a closing flow or one
            // with a PROXY header, needs the entry on the established path.
            let closing = flags & FLOW_CLOSING != 0;
            let reads = closing || flags & FLOW_PROXY != 0;
            let Some(s) = seg.filter(|s| reads || s.flags & (TCP_RST | TCP_FIN) != 0) else { return Ok((slot, LbCounter::FlowHit, None, Proxy::default())) };
            let k = key(slot);
            let Some(mut e) = t.nat(&k) else { return Ok((slot, LbCounter::FlowHit, None, Proxy::default())) };
            let (s, pp) = as_backend_gets_it(&e, s);
            let (check, _) = nat_state::tcp_client(&e, &s);
            let extra = apply_client_check(t, (fkey, &k), &mut e, Some(s), check)?;
            if !closing && e.closing != 0 && check != nat_state::Check::Finish {
                remember(t, slot, e.flow_flags());
            }
            Ok((slot, LbCounter::FlowHit, extra, pp))
        }
        NatFound::Own(slot, mut e) => {
            let k = key(slot);
            let (seg, pp) = match seg {
                Some(s) => {
                    let (s, pp) = as_backend_gets_it(&e, s);
                    (Some(s), pp)
                }
                None => (None, Proxy::default()),
            };
            let (check, proves) = match seg {
                Some(s) => nat_state::tcp_client(&e, &s),
                None => (nat_state::Check::Pass, false),
            };
            if proves {
                e.state |= NAT_PROVEN;
            }
            let mut extra = apply_client_check(t, (fkey, &k), &mut e, seg, check)?;
            if check == nat_state::Check::Finish {
                // Its entry is gone, and with it the flow.
            } else if nat_state::proven(&e) {
                extra = Some(if e.state & NAT_REMEMBERED != 0 { LbCounter::FlowRefound } else { LbCounter::FlowProven });
                e.state |= NAT_REMEMBERED;
                t.put_nat(&k, &e);
                remember(t, slot, e.flow_flags());
            } else if proves {
                t.put_nat(&k, &e);
            }
            Ok((slot, LbCounter::FlowHit, extra, pp))
        }
    }
}

/// Rule 6c: a client segment as the backend gets it (its PROXY protocol
/// action, its sequence shifted or its payload grown by the header), and
/// the action.
fn as_backend_gets_it(e: &NatEntry, mut s: Segment) -> (Segment, Proxy) {
    let action = proxy_protocol::client_action(e, &s);
    proxy_protocol::translated(&mut s, action, e.proxy_len);
    (s, Proxy { action, len: e.proxy_len })
}

/// Rule 6c: `frame` into `out` with the PROXY protocol header of its
/// connection (the addresses and ports it arrived with) between the TCP
/// header and the payload, the IP length and the checksums updated (a
/// word at a time in memory order, as the kernel does).
fn prepend_header(frame: &[u8], out: &mut [u8], p: &Parsed, len: u8) {
    let n = usize::from(len);
    let hl = p.l4 + usize::from(frame[p.l4 + offset::TCP_DOFF] >> 4) * 4;
    out[..hl].copy_from_slice(&frame[..hl]);
    out[hl + n..frame.len() + n].copy_from_slice(&frame[hl..]);
    let ne16 = |f: &[u8], at: usize| u16::from_ne_bytes([f[at], f[at + 1]]);
    let len_at = if p.family == FAMILY_V4 { p.l3 + offset::IPV4_TOT_LEN } else { p.l3 + offset::IPV6_PAYLOAD_LEN };
    let old_len = be16(out, len_at).unwrap_or(0);
    let new_len = old_len.wrapping_add(u16::from(len));
    // The pseudo-header's TCP length: the IPv4 total length less the
    // header, the IPv6 payload length.
    let l4_len = if p.family == FAMILY_V4 { (p.l4 - p.l3) as u16 } else { 0 };
    let mut tcp = csum::Delta::default();
    if proxy_protocol::is_text(p.family, len) {
        let mut text = [0u8; proxy_protocol::V1_BUF];
        proxy_protocol::v1_text(p.family, &p.src, &p.dst, p.sport, p.dport, &mut text);
        out[hl..hl + n].copy_from_slice(&text[..n]);
        // Whole words, the last one with the zeros after the line.
        for w in text[..n.div_ceil(4) * 4].chunks(4) {
            tcp.word32(0, u32::from_ne_bytes(w.try_into().unwrap()));
        }
        if n % 2 == 1 {
            let mut covered = proxy_protocol::pseudo_sum(p.family, &p.src, &p.dst, old_len.wrapping_sub(l4_len));
            for w in frame[p.l4..hl].chunks(2) {
                covered += u64::from(u16::from_ne_bytes([w[0], w[1]]));
            }
            proxy_protocol::realign(&mut tcp, proxy_protocol::payload_sum(covered));
        }
    } else {
        let words = proxy_protocol::v2_words(p.family, &p.src, &p.dst, p.sport, p.dport);
        for (i, w) in words.iter().take(n / 4).enumerate() {
            out[hl + 4 * i..hl + 4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            tcp.word32(0, *w);
        }
    }
    tcp.word16(u16::from_ne_bytes(old_len.wrapping_sub(l4_len).to_be_bytes()), u16::from_ne_bytes(new_len.wrapping_sub(l4_len).to_be_bytes()));
    if p.family == FAMILY_V4 {
        let mut ip = csum::Delta::default();
        ip.word16(u16::from_ne_bytes(old_len.to_be_bytes()), u16::from_ne_bytes(new_len.to_be_bytes()));
        let at = p.l3 + offset::IPV4_CHECK;
        let c = ip.apply(ne16(out, at));
        out[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    }
    out[len_at..len_at + 2].copy_from_slice(&new_len.to_be_bytes());
    let at = p.l4 + offset::TCP_CHECK;
    let c = tcp.apply(ne16(out, at));
    out[at..at + 2].copy_from_slice(&c.to_ne_bytes());
}

/// Adds `by` to the 32-bit big-endian field at `at` of the TCP segment
/// at `l4`, and its change to `d`.
fn add_be32(f: &mut [u8], at: usize, by: u32, d: &mut csum::Delta) {
    let old: [u8; 4] = f[at..at + 4].try_into().unwrap();
    let new = u32::from_be_bytes(old).wrapping_add(by).to_be_bytes();
    d.word32(u32::from_ne_bytes(old), u32::from_ne_bytes(new));
    f[at..at + 4].copy_from_slice(&new);
}

/// Applies `d` to the TCP checksum of the segment at `l4`.
fn apply_tcp(f: &mut [u8], l4: usize, d: csum::Delta) {
    let at = l4 + offset::TCP_CHECK;
    let c = d.apply(u16::from_ne_bytes([f[at], f[at + 1]]));
    f[at..at + 2].copy_from_slice(&c.to_ne_bytes());
}

/// Rule 6c: the client's sequence number moved by the header's length.
fn shift_seq(f: &mut [u8], p: &Parsed, len: u8) {
    let mut d = csum::Delta::default();
    add_be32(f, p.l4 + offset::TCP_SEQ, u32::from(len), &mut d);
    apply_tcp(f, p.l4, d);
}

/// Rule 8c: a backend segment of a flow with a PROXY protocol header:
/// `proxy_protocol::reply_action`'s `action` applied.
fn proxy_reply(f: &mut [u8], p: &Parsed, action: u8, len: u8) {
    let l4 = p.l4;
    let doff = usize::from(f[l4 + offset::TCP_DOFF] >> 4) * 4;
    let syn = f[l4 + offset::TCP_FLAGS] & TCP_SYN != 0;
    let back = u32::from(len).wrapping_neg();
    let mut d = csum::Delta::default();
    if action & proxy_protocol::ACK_SHIFT != 0 {
        add_be32(f, l4 + offset::TCP_ACK, back, &mut d);
    }
    let opts = proxy_protocol::reply_options(|off| be16(f, off), l4 + TCP_MIN_HLEN, l4 + doff, syn);
    if action & proxy_protocol::MSS_LOWER != 0 && opts.mss != 0 {
        let old = [f[opts.mss], f[opts.mss + 1]];
        let new = proxy_protocol::lower_mss(u16::from_be_bytes(old), len).to_be_bytes();
        d.word16(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        f[opts.mss..opts.mss + 2].copy_from_slice(&new);
    }
    if action & proxy_protocol::SACK_SHIFT != 0 {
        for i in 0..opts.sack_blocks {
            add_be32(f, opts.sack + 8 * i, back, &mut d);
            add_be32(f, opts.sack + 8 * i + 4, back, &mut d);
        }
    }
    apply_tcp(f, l4, d);
}

/// Applies a client segment's [`nat_state::Check`] to its entry (a
/// finished connection's entry and flow are removed): the drop counter,
/// or the extra counter of a forwarded packet.
fn apply_client_check<T: Tables>(t: &mut T, (fkey, k): (&FlowKey, &NatKey), e: &mut NatEntry, seg: Option<Segment>, check: nat_state::Check) -> Result<Option<LbCounter>, LbCounter> {
    match check {
        nat_state::Check::OutOfWindow => Err(LbCounter::OutOfWindow),
        nat_state::Check::Inexact => Ok(Some(LbCounter::RstInexact)),
        nat_state::Check::Finish => {
            t.remove_nat(k);
            t.forget_flow(fkey);
            Ok(Some(LbCounter::NatPortFreed))
        }
        nat_state::Check::Close => {
            if seg.is_some_and(|s| nat_state::client_fin(e, &s)) {
                t.put_nat(k, e);
            }
            Ok(None)
        }
        nat_state::Check::Pass => Ok(None),
    }
}

/// Rule 7's answer to a packet too big for the path: an ICMP error from
/// the VIP back to the client, written into `out`; its length, or `None`
/// for IPv4 without DF.
fn icmp_too_big(frame: &[u8], out: &mut [u8], p: &Parsed, mtu: u16) -> Option<usize> {
    out[offset::ETH_DST..offset::ETH_DST + 6].copy_from_slice(&frame[offset::ETH_SRC..offset::ETH_SRC + 6]);
    out[offset::ETH_SRC..offset::ETH_SRC + 6].copy_from_slice(&frame[offset::ETH_DST..offset::ETH_DST + 6]);
    let l3 = ETH_HLEN;
    if p.family == FAMILY_V4 {
        if be16(frame, l3 + offset::IPV4_FRAGS)? & bits::IPV4_DF == 0 {
            return None;
        }
        let quote = p.l4 - p.l3 + ICMP_QUOTE_L4;
        let icmp = l3 + IPV4_MIN_HLEN;
        let len = icmp + ICMP_HLEN + quote;
        out[offset::ETH_TYPE..ETH_HLEN].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let mut h = [0u8; IPV4_MIN_HLEN];
        ip_header::ipv4(&mut h, IPPROTO_ICMP, &p.dst, &p.src, (len - icmp) as u16);
        out[l3..icmp].copy_from_slice(&h);
        let m = mtu.to_be_bytes();
        out[icmp..icmp + ICMP_HLEN].copy_from_slice(&ip_header::icmp(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, [0, 0, m[0], m[1]]));
        out[icmp + ICMP_HLEN..len].copy_from_slice(&frame[l3..l3 + quote]);
        let c = !csum::fold(csum::sum_words(&out[icmp..len], 0));
        out[icmp + offset::ICMP_CHECK..icmp + offset::ICMP_CHECK + 2].copy_from_slice(&c.to_be_bytes());
        Some(len)
    } else {
        let icmp = l3 + IPV6_HLEN;
        let len = icmp + ICMP_HLEN + TOO_BIG_QUOTE_V6;
        out[offset::ETH_TYPE..ETH_HLEN].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let mut h = [0u8; IPV6_HLEN];
        ip_header::ipv6(&mut h, IPPROTO_ICMPV6, &p.dst, &p.src, (ICMP_HLEN + TOO_BIG_QUOTE_V6) as u16);
        out[l3..icmp].copy_from_slice(&h);
        out[icmp..icmp + ICMP_HLEN].copy_from_slice(&ip_header::icmp(ICMPV6_PACKET_TOO_BIG, 0, u32::from(mtu).to_be_bytes()));
        out[icmp + ICMP_HLEN..len].copy_from_slice(&frame[l3..l3 + TOO_BIG_QUOTE_V6]);
        let c = !csum::fold(csum::sum_words(&out[icmp..len], ip_header::icmpv6_pseudo_sum(&p.dst, &p.src, (ICMP_HLEN + TOO_BIG_QUOTE_V6) as u32)));
        out[icmp + offset::ICMP_CHECK..icmp + offset::ICMP_CHECK + 2].copy_from_slice(&c.to_be_bytes());
        Some(len)
    }
}

/// Rule 6's SNAT port for a flow the flow table does not remember: its own
/// entry, else the first free port of the probe sequence, else (no port
/// free, or the table full) the first unproven entry old enough to be
/// reclaimed ([`nat_state::reclaimable`]); the drop counter when every
/// probed port is held, or a free port's entry finds the table full. A packet that
/// `opens` a connection writes its own entry afresh.
#[allow(clippy::too_many_arguments)]
fn allocate_snat_port<T: Tables>(frame: &[u8], ifindex: u32, t: &mut T, (g, opens): (&Globals, bool), p: &Parsed, svc: &Service, b: &BackendInfo, backend_ifindex: u32) -> Result<NatFound, LbCounter> {
    let span = u32::from(g.snat_port_max.checked_sub(g.snat_port_min).ok_or(LbCounter::SnatExhausted)?) + 1;
    let slots = span * t.snat_pool().map_or(1, |pool| pool.count(p.family));
    let h = flow_hash(&p.src, &p.dst, p.sport, p.dport, p.proto, SNAT_HASH_SEED);
    let mut entry = NatEntry {
        client: p.src,
        vip: p.dst,
        client_port: p.sport,
        vip_port: p.dport,
        ifindex,
        backend_ifindex,
        state: if opens { NAT_OPENED_BY_SYN } else { 0 },
        proxy_len: if opens && p.proto == IPPROTO_TCP { proxy_protocol::header_len(svc.proxy, p.family, &p.src, &p.dst, p.sport, p.dport) } else { 0 },
        last_seen_ns: t.now_ns(),
        ..NatEntry::default()
    };
    entry.client_mac.copy_from_slice(&frame[6..12]);
    entry.edge_mac.copy_from_slice(&frame[0..6]);
    let mut reclaim = None;
    let mut full = false;
    for i in 0..SNAT_PROBES {
        let x = h.wrapping_add(i) % slots;
        let slot = Slot { port: g.snat_port_min + (x % span) as u16, snat: (x / span) as u8 };
        let key = NatKey { backend: b.addr, backend_port: svc.target_port, nat_port: slot.port, proto: p.proto, family: p.family, snat: slot.snat, _pad: 0 };
        match t.nat(&key) {
            Some(e) if e.same_flow(&entry) => {
                if opens {
                    t.put_nat(&key, &entry);
                    return Ok(NatFound::Fresh(slot));
                }
                return Ok(NatFound::Own(slot, e));
            }
            Some(e) => {
                if reclaim.is_none() && nat_state::reclaimable(&e, entry.last_seen_ns) {
                    reclaim = Some(key);
                }
            }
            None if full => {}
            None => match t.insert_nat(&key, &entry) {
                NatInsert::Inserted => return Ok(NatFound::Fresh(slot)),
                NatInsert::Taken => continue,
                // An unproven entry further on may still be taken over.
                NatInsert::Full => full = true,
            },
        }
    }
    match reclaim {
        Some(key) => {
            t.put_nat(&key, &entry);
            Ok(NatFound::Reclaimed(Slot { port: key.nat_port, snat: key.snat }))
        }
        None if full => Err(LbCounter::NatTableFull),
        None => Err(LbCounter::SnatExhausted),
    }
}

/// The TCP header fields the NAT state reads (its fixed part is whole:
/// after [`unfit`]); `None` for UDP.
fn tcp_segment(frame: &[u8], p: &Parsed) -> Option<Segment> {
    if p.proto != IPPROTO_TCP {
        return None;
    }
    let l4 = p.l4;
    let be32 = |off: usize| u32::from_be_bytes([frame[off], frame[off + 1], frame[off + 2], frame[off + 3]]);
    let doff = usize::from(frame[l4 + offset::TCP_DOFF] >> 4) * 4;
    let flags = frame[l4 + offset::TCP_FLAGS];
    let wscale = if flags & TCP_SYN != 0 { nat_state::window_scale(|off| be16(frame, off), l4 + TCP_MIN_HLEN, l4 + doff) } else { 0 };
    Some(Segment {
        seq: be32(l4 + offset::TCP_SEQ),
        ack: be32(l4 + offset::TCP_ACK),
        flags,
        wscale,
        window: u16::from_be_bytes([frame[l4 + offset::TCP_WINDOW], frame[l4 + offset::TCP_WINDOW + 1]]),
        payload: (p.ip_len as u32).saturating_sub((l4 - p.l3 + doff) as u32),
    })
}

/// Whether a packet to the inside address is on a SNAT port (where only
/// the backends' replies may arrive).
fn on_snat_port(g: &Globals, port: u16) -> bool {
    g.snat_port_min <= port && port <= g.snat_port_max
}

fn reply<T: Tables>(frame: &[u8], out: &mut [u8], ifindex: u32, t: &mut T, p: &Parsed, key: &NatKey, e: &NatEntry) -> Outcome {
    if e.backend_ifindex != 0 && e.backend_ifindex != ifindex {
        return Outcome::with(Action::Drop, LbCounter::ForgedReply);
    }
    if let Some(c) = unfit(p, frame.len()) {
        return Outcome::with(Action::Drop, c);
    }
    if p.ttl <= 1 {
        return Outcome::with(Action::Pass, LbCounter::TtlExpired);
    }
    let mut entry = *e;
    let mut extra = None;
    let mut proxy = 0;
    match tcp_segment(frame, p) {
        Some(s) => {
            proxy = proxy_protocol::reply_action(&entry, &s);
            match nat_state::tcp_reply(&mut entry, &s) {
                nat_state::Check::OutOfWindow => return Outcome::with(Action::Drop, LbCounter::OutOfWindow),
                nat_state::Check::Inexact => extra = Some(LbCounter::RstInexact),
                nat_state::Check::Finish => extra = Some(LbCounter::NatPortFreed),
                _ => {}
            }
            if proxy & proxy_protocol::ACK_SHIFT != 0 {
                entry.state |= NAT_PROXY_ACKED;
            }
        }
        None => nat_state::udp_reply(&mut entry),
    }
    if extra == Some(LbCounter::NatPortFreed) {
        t.remove_nat(key);
        t.forget_flow(&FlowKey { src: e.client, dst: e.vip, src_port: e.client_port, dst_port: e.vip_port, proto: p.proto, family: p.family, _pad: [0; 2] });
    } else if entry != *e {
        t.put_nat(key, &entry);
    }
    out[..frame.len()].copy_from_slice(frame);
    rewrite(out, p, e.vip, e.vip_port, e.client, e.client_port);
    if proxy != 0 {
        proxy_reply(out, p, proxy, e.proxy_len);
    }
    let route = Route::Via { ifindex: e.ifindex, smac: e.edge_mac, dmac: e.client_mac };
    let (action, counter) = send(out, ifindex, t, route);
    if action == Action::Drop {
        return Outcome::with(Action::Drop, counter);
    }
    Outcome { action, counter: Some(LbCounter::NatReply), moved: false, extra, charged: None, firewall: None, len: frame.len() }
}

/// Rule 7's route to backend `id` for a packet of `ip_len` bytes that
/// arrived on `ifindex`: from its kept hop while that is valid (the
/// routing generation and the backend's are the ones it was filled under,
/// and it was filled for this ingress interface), else from the routing
/// table, and a route found is kept with its MTU (the route to a packet of
/// the largest length: too big, with the MTU, or a route, at least that
/// MTU).
fn next_hop<T: Tables>(t: &mut T, (id, b): (u32, &BackendInfo), family: u8, ifindex: u32, ip_len: u16) -> Route {
    let generation = t.net_generation();
    if generation == 0 {
        return t.route(family, &b.addr, ifindex, ip_len);
    }
    if let Some(h) = t.hop(id).filter(|h| h.net_generation == generation && h.backend_generation == b.generation && h.in_ifindex == ifindex) {
        return if ip_len > h.mtu { Route::TooBig { mtu: h.mtu } } else { Route::Via { ifindex: h.out_ifindex, smac: h.smac, dmac: h.dmac } };
    }
    let route = t.route(family, &b.addr, ifindex, ip_len);
    if let Route::Via { ifindex: out_ifindex, smac, dmac } = route {
        let mtu = match t.route(family, &b.addr, ifindex, u16::MAX) {
            Route::TooBig { mtu } => Some(mtu),
            Route::Via { .. } => Some(u16::MAX),
            _ => None,
        };
        if let Some(mtu) = mtu {
            t.set_hop(id, &HopEntry { net_generation: generation, backend_generation: b.generation, in_ifindex: ifindex, out_ifindex, mtu, smac, dmac, _pad: [0; 2] });
        }
    }
    route
}

/// Rule 7: Ethernet addresses from the route, and the action.
fn send<T: Tables>(out: &mut [u8], ifindex: u32, t: &T, route: Route) -> (Action, LbCounter) {
    match route {
        Route::Via { ifindex: oif, smac, dmac } => {
            if oif != ifindex && !t.is_egress(oif) {
                return (Action::Drop, LbCounter::NoEgress);
            }
            out[0..6].copy_from_slice(&dmac);
            out[6..12].copy_from_slice(&smac);
            (if oif == ifindex { Action::Tx } else { Action::Redirect(oif) }, LbCounter::FlowHit)
        }
        Route::Unreachable => (Action::Drop, LbCounter::NoRoute),
        Route::NoNeighbour => (Action::Drop, LbCounter::NoNeighbour),
        Route::TooBig { .. } => (Action::Drop, LbCounter::TooBig),
    }
}

/// Rewrites addresses and ports (NAT both ways), decrements the TTL and
/// updates the checksums incrementally.
fn rewrite(f: &mut [u8], p: &Parsed, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) {
    let (ip_check, l4_check_at) = (p.l3 + offset::IPV4_CHECK, p.l4 + l4_check(p.proto).0);
    let mut l4c = u16::from_be_bytes([f[l4_check_at], f[l4_check_at + 1]]);
    let udp_without_checksum = p.proto == IPPROTO_UDP && l4c == 0 && p.family == FAMILY_V4;
    let src_at = if p.family == FAMILY_V4 { p.l3 + offset::IPV4_SRC } else { p.l3 + offset::IPV6_SRC };
    if p.family == FAMILY_V4 {
        let mut ipc = u16::from_be_bytes([f[ip_check], f[ip_check + 1]]);
        let old: [u8; 8] = f[src_at..src_at + 8].try_into().unwrap();
        let mut new = [0u8; 8];
        new[..4].copy_from_slice(&src[..4]);
        new[4..].copy_from_slice(&dst[..4]);
        ipc = csum::update_bytes(ipc, &old, &new);
        l4c = csum::update_bytes(l4c, &old, &new);
        let old_ttl = u16::from_be_bytes([f[p.l3 + offset::IPV4_TTL], f[p.l3 + offset::IPV4_PROTO]]);
        f[p.l3 + offset::IPV4_TTL] -= 1;
        ipc = csum::update16(ipc, old_ttl, u16::from_be_bytes([f[p.l3 + offset::IPV4_TTL], f[p.l3 + offset::IPV4_PROTO]]));
        f[ip_check..ip_check + 2].copy_from_slice(&ipc.to_be_bytes());
        f[src_at..src_at + 8].copy_from_slice(&new);
    } else {
        let old: [u8; 32] = f[src_at..src_at + 32].try_into().unwrap();
        let mut new = [0u8; 32];
        new[..16].copy_from_slice(&src);
        new[16..].copy_from_slice(&dst);
        l4c = csum::update_bytes(l4c, &old, &new);
        f[p.l3 + offset::IPV6_HOP_LIMIT] -= 1;
        f[src_at..src_at + 32].copy_from_slice(&new);
    }
    let old_ports: [u8; 4] = f[p.l4..p.l4 + 4].try_into().unwrap();
    let mut new_ports = [0u8; 4];
    new_ports[..2].copy_from_slice(&sport.to_be_bytes());
    new_ports[2..].copy_from_slice(&dport.to_be_bytes());
    l4c = csum::update_bytes(l4c, &old_ports, &new_ports);
    f[p.l4..p.l4 + 4].copy_from_slice(&new_ports);
    if udp_without_checksum {
        return;
    }
    if p.proto == IPPROTO_UDP {
        l4c = csum::udp_nonzero(l4c);
    }
    f[l4_check_at..l4_check_at + 2].copy_from_slice(&l4c.to_be_bytes());
}

/// A path-MTU ICMP error and the headers of the packet it quotes.
#[derive(Clone, Copy, Debug)]
struct IcmpError {
    family: u8,
    l3: usize,
    /// Offset of the ICMP header.
    icmp: usize,
    ip_len: usize,
    ttl: u8,
    outer_src: [u8; 16],
    outer_dst: [u8; 16],
    /// Offset of the quoted IP header and its L4 header.
    inner_l3: usize,
    inner_l4: usize,
    inner_proto: u8,
    inner_src: [u8; 16],
    inner_dst: [u8; 16],
    inner_sport: u16,
    inner_dport: u16,
}

/// Rule 9: an ICMP path-MTU error quoting a TCP/UDP packet, whole inside
/// the frame; `None` for anything else.
fn parse_icmp(f: &[u8]) -> Option<IcmpError> {
    let l3 = ETH_HLEN;
    let e = match be16(f, offset::ETH_TYPE)? {
        ETH_P_IPV4 => {
            let vihl = *f.get(l3)?;
            let ihl = usize::from(vihl & bits::IPV4_IHL) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || *f.get(l3 + offset::IPV4_PROTO)? != IPPROTO_ICMP || be16(f, l3 + offset::IPV4_FRAGS)? & bits::IPV4_FRAGMENT != 0 {
                return None;
            }
            let icmp = l3 + ihl;
            if be16(f, icmp)? != u16::from_be_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED]) {
                return None;
            }
            let inner = icmp + ICMP_HLEN;
            let ivihl = *f.get(inner)?;
            let iihl = usize::from(ivihl & bits::IPV4_IHL) * 4;
            let iproto = *f.get(inner + offset::IPV4_PROTO)?;
            if ivihl >> 4 != 4 || iihl < IPV4_MIN_HLEN || (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP) {
                return None;
            }
            let inner_l4 = inner + iihl;
            IcmpError {
                family: FAMILY_V4,
                l3,
                icmp,
                ip_len: usize::from(be16(f, l3 + offset::IPV4_TOT_LEN)?),
                ttl: *f.get(l3 + offset::IPV4_TTL)?,
                outer_src: addr::<4>(f, l3 + offset::IPV4_SRC)?,
                outer_dst: addr::<4>(f, l3 + offset::IPV4_DST)?,
                inner_l3: inner,
                inner_l4,
                inner_proto: iproto,
                inner_src: addr::<4>(f, inner + offset::IPV4_SRC)?,
                inner_dst: addr::<4>(f, inner + offset::IPV4_DST)?,
                inner_sport: be16(f, inner_l4)?,
                inner_dport: be16(f, inner_l4 + offset::L4_DPORT)?,
            }
        }
        ETH_P_IPV6 => {
            if *f.get(l3)? >> 4 != 6 || *f.get(l3 + offset::IPV6_NEXT_HDR)? != IPPROTO_ICMPV6 {
                return None;
            }
            let icmp = l3 + IPV6_HLEN;
            if *f.get(icmp)? != ICMPV6_PACKET_TOO_BIG {
                return None;
            }
            let inner = icmp + ICMP_HLEN;
            let iproto = *f.get(inner + offset::IPV6_NEXT_HDR)?;
            if *f.get(inner)? >> 4 != 6 || (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP) {
                return None;
            }
            let inner_l4 = inner + IPV6_HLEN;
            IcmpError {
                family: FAMILY_V6,
                l3,
                icmp,
                ip_len: IPV6_HLEN + usize::from(be16(f, l3 + offset::IPV6_PAYLOAD_LEN)?),
                ttl: *f.get(l3 + offset::IPV6_HOP_LIMIT)?,
                outer_src: addr::<16>(f, l3 + offset::IPV6_SRC)?,
                outer_dst: addr::<16>(f, l3 + offset::IPV6_DST)?,
                inner_l3: inner,
                inner_l4,
                inner_proto: iproto,
                inner_src: addr::<16>(f, inner + offset::IPV6_SRC)?,
                inner_dst: addr::<16>(f, inner + offset::IPV6_DST)?,
                inner_sport: be16(f, inner_l4)?,
                inner_dport: be16(f, inner_l4 + offset::L4_DPORT)?,
            }
        }
        _ => return None,
    };
    // The quoted ports must lie inside the IP packet, and the packet
    // inside the frame.
    if e.l3 + e.ip_len > f.len() || e.inner_l4 + 4 > e.l3 + e.ip_len {
        return None;
    }
    Some(e)
}

fn icmp_error<T: Tables>(frame: &[u8], out: &mut [u8], ifindex: u32, t: &mut T, e: &IcmpError) -> Outcome {
    if e.outer_dst != e.inner_src {
        return Outcome::next_stage();
    }
    let skey = ServiceKey { addr: e.inner_src, port: e.inner_sport, proto: e.inner_proto, family: e.family };
    let Some(svc) = t.service(&skey) else { return Outcome::next_stage() };
    if other_host(frame, ifindex, t) {
        return Outcome::with(Action::Pass, LbCounter::OtherHost);
    }
    if svc.firewall != 0 {
        let vip = u32::from(svc.firewall & crate::firewall::FW_VIP_MASK);
        if let Some(slot) = crate::firewall::denied(t.firewall_rules(vip), &e.outer_src) {
            return Outcome { action: Action::Drop, firewall: Some(slot), ..Outcome::next_stage() };
        }
    }
    let fkey = FlowKey {
        src: e.inner_dst,
        dst: e.inner_src,
        src_port: e.inner_dport,
        dst_port: e.inner_sport,
        proto: e.inner_proto,
        family: e.family,
        _pad: [0; 2],
    };
    let placed = t.flow(&fkey).and_then(|f| t.backend(f.backend).filter(|b| b.generation == f.generation && b.up == 1).map(|b| (f, b)));
    let (Some((flow, backend)), Some(g)) = (placed, t.globals()) else {
        return Outcome { counter: Some(LbCounter::IcmpUnmatched), ..Outcome::next_stage() };
    };
    let mode = Mode::from_raw(svc.mode).unwrap_or(Mode::Nat);
    if mode == Mode::Nat && e.ttl <= 1 {
        return Outcome::with(Action::Pass, LbCounter::TtlExpired);
    }
    let (route, out_len) = match mode {
        Mode::Nat => {
            let route = next_hop(t, (flow.backend, &backend), e.family, ifindex, e.ip_len as u16);
            out[..frame.len()].copy_from_slice(frame);
            rewrite_icmp(out, e, &snat_address(t, &g, e.family, flow.snat), &backend.addr, svc.target_port, flow.nat_port);
            (route, frame.len())
        }
        Mode::Dsr => {
            let outer = if e.family == FAMILY_V4 { IPV4_MIN_HLEN } else { IPV6_HLEN };
            let route = next_hop(t, (flow.backend, &backend), e.family, ifindex, (e.ip_len + outer) as u16);
            out[ETH_HLEN + outer..frame.len() + outer].copy_from_slice(&frame[ETH_HLEN..]);
            if e.family == FAMILY_V4 {
                let mut h = [0u8; 20];
                outer_ipv4(&mut h, g.inside_v4, &backend.addr, e.ip_len as u16);
                out[ETH_HLEN..ETH_HLEN + 20].copy_from_slice(&h);
                out[offset::ETH_TYPE..ETH_HLEN].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
            } else {
                let mut h = [0u8; 40];
                outer_ipv6(&mut h, &g.inside_v6, &backend.addr, e.ip_len as u16);
                out[ETH_HLEN..ETH_HLEN + 40].copy_from_slice(&h);
                out[offset::ETH_TYPE..ETH_HLEN].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
            }
            (route, frame.len() + outer)
        }
        Mode::DsrL2 => {
            out[..frame.len()].copy_from_slice(frame);
            (next_hop(t, (flow.backend, &backend), e.family, ifindex, e.ip_len as u16), frame.len())
        }
    };
    let (action, counter) = send(out, ifindex, t, route);
    if action == Action::Drop {
        return Outcome::with(Action::Drop, counter);
    }
    Outcome { action, counter: Some(LbCounter::IcmpForwarded), moved: false, extra: None, charged: None, firewall: None, len: out_len }
}

/// Rule 9 in `nat` mode: the error as the backend must see it — from the
/// edge's inside address to the backend, quoting the packet the backend
/// sent (backend:target port → inside address:SNAT port). Every checksum
/// follows: outer IPv4 header, quoted IPv4 header, quoted L4 header when
/// quoted whole enough to hold its checksum, and the ICMP checksum (with
/// the IPv6 pseudo-header).
fn rewrite_icmp(f: &mut [u8], e: &IcmpError, inside: &[u8; 16], backend: &[u8; 16], target_port: u16, nat_port: u16) {
    let n = if e.family == FAMILY_V4 { 4 } else { 16 };
    let (outer_src_at, ttl_at) = if e.family == FAMILY_V4 { (e.l3 + offset::IPV4_SRC, e.l3 + offset::IPV4_TTL) } else { (e.l3 + offset::IPV6_SRC, e.l3 + offset::IPV6_HOP_LIMIT) };
    let inner_src_at = if e.family == FAMILY_V4 { e.inner_l3 + offset::IPV4_SRC } else { e.inner_l3 + offset::IPV6_SRC };
    let icmp_check_at = e.icmp + offset::ICMP_CHECK;
    let mut icmp_check = u16::from_be_bytes([f[icmp_check_at], f[icmp_check_at + 1]]);
    let put = |f: &mut [u8], at: usize, bytes: &[u8], icmp_check: &mut u16| {
        // Changes inside the ICMP message feed its checksum.
        let mut old = [0u8; 32];
        let mut new = [0u8; 32];
        old[..bytes.len()].copy_from_slice(&f[at..at + bytes.len()]);
        new[..bytes.len()].copy_from_slice(bytes);
        *icmp_check = csum::update_bytes(*icmp_check, &old, &new);
        f[at..at + bytes.len()].copy_from_slice(bytes);
    };

    // Outer header: addresses and TTL (IPv6: they are in the ICMPv6
    // pseudo-header too).
    let mut outer_new = [0u8; 32];
    outer_new[..n].copy_from_slice(&inside[..n]);
    outer_new[n..2 * n].copy_from_slice(&backend[..n]);
    let mut outer_old = [0u8; 32];
    outer_old[..2 * n].copy_from_slice(&f[outer_src_at..outer_src_at + 2 * n]);
    if e.family == FAMILY_V4 {
        let mut ipc = u16::from_be_bytes([f[e.l3 + offset::IPV4_CHECK], f[e.l3 + offset::IPV4_CHECK + 1]]);
        ipc = csum::update_bytes(ipc, &outer_old, &outer_new);
        let ttl = u16::from_be_bytes([f[ttl_at], f[ttl_at + 1]]);
        f[ttl_at] -= 1;
        ipc = csum::update16(ipc, ttl, u16::from_be_bytes([f[ttl_at], f[ttl_at + 1]]));
        f[e.l3 + offset::IPV4_CHECK..e.l3 + offset::IPV4_CHECK + 2].copy_from_slice(&ipc.to_be_bytes());
    } else {
        icmp_check = csum::update_bytes(icmp_check, &outer_old, &outer_new);
        f[ttl_at] -= 1;
    }
    f[outer_src_at..outer_src_at + 2 * n].copy_from_slice(&outer_new[..2 * n]);

    // Quoted packet: backend:target → inside:nat port.
    let mut inner_new = [0u8; 32];
    inner_new[..n].copy_from_slice(&backend[..n]);
    inner_new[n..2 * n].copy_from_slice(&inside[..n]);
    let mut inner_old = [0u8; 32];
    inner_old[..2 * n].copy_from_slice(&f[inner_src_at..inner_src_at + 2 * n]);
    let mut ports_new = [0u8; 4];
    ports_new[..2].copy_from_slice(&target_port.to_be_bytes());
    ports_new[2..].copy_from_slice(&nat_port.to_be_bytes());
    let ports_old: [u8; 4] = f[e.inner_l4..e.inner_l4 + 4].try_into().unwrap();
    let (l4_off, _) = l4_check(e.inner_proto);
    let l4c_at = e.inner_l4 + l4_off;
    if l4c_at + 2 <= e.l3 + e.ip_len {
        let old = u16::from_be_bytes([f[l4c_at], f[l4c_at + 1]]);
        let zero_udp = e.inner_proto == IPPROTO_UDP && old == 0 && e.family == FAMILY_V4;
        if !zero_udp {
            let mut c = csum::update_bytes(old, &inner_old, &inner_new);
            c = csum::update_bytes(c, &ports_old, &ports_new);
            if e.inner_proto == IPPROTO_UDP {
                c = csum::udp_nonzero(c);
            }
            put(f, l4c_at, &c.to_be_bytes(), &mut icmp_check);
        }
    }
    if e.family == FAMILY_V4 {
        let at = e.inner_l3 + offset::IPV4_CHECK;
        let c = csum::update_bytes(u16::from_be_bytes([f[at], f[at + 1]]), &inner_old, &inner_new);
        put(f, at, &c.to_be_bytes(), &mut icmp_check);
    }
    put(f, inner_src_at, &inner_new[..2 * n], &mut icmp_check);
    put(f, e.inner_l4, &ports_new, &mut icmp_check);
    f[icmp_check_at..icmp_check_at + 2].copy_from_slice(&icmp_check.to_be_bytes());
}

/// What the DSR backend's `decap` program does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decap {
    /// Not an edge's tunnel packet (or malformed): untouched, not counted.
    NotTunnel,
    /// A tunnel packet no (edge, VIP) pair allows: untouched, counted.
    Unknown,
    /// Opened: `len` bytes of `out` are the frame the kernel receives.
    Opened { len: usize },
}

/// The `decap` program's decision: an IPv4 (no options, not a fragment)
/// IPIP packet or an IPv6-in-IPv6 packet whose (outer source, inner
/// destination) is allowed loses its outer header; the Ethernet addresses
/// stay, the EtherType becomes the inner packet's.
pub fn decapsulate(frame: &[u8], out: &mut [u8], allowed: impl Fn(&DecapKey) -> bool) -> Decap {
    let l3 = ETH_HLEN;
    let parsed = (|| -> Option<(DecapKey, usize, u16)> {
        match be16(frame, offset::ETH_TYPE)? {
            ETH_P_IPV4 => {
                let h = frame.get(l3..l3 + IPV4_MIN_HLEN)?;
                let fragment = u16::from_be_bytes([h[offset::IPV4_FRAGS], h[offset::IPV4_FRAGS + 1]]) & bits::IPV4_FRAGMENT != 0;
                if h[offset::IPV4_VIHL] != bits::IPV4_VIHL_PLAIN || h[offset::IPV4_PROTO] != IPPROTO_IPIP || fragment {
                    return None;
                }
                let key = DecapKey { outer_src: addr::<4>(frame, l3 + offset::IPV4_SRC)?, inner_dst: [0; 16], family: FAMILY_V4, _pad: [0; 3] };
                Some((key, l3 + IPV4_MIN_HLEN, ETH_P_IPV4))
            }
            ETH_P_IPV6 => {
                let h = frame.get(l3..l3 + IPV6_HLEN)?;
                if h[offset::IPV6_VCF] >> 4 != 6 || h[offset::IPV6_NEXT_HDR] != IPPROTO_IPV6 {
                    return None;
                }
                let key = DecapKey { outer_src: addr::<16>(frame, l3 + offset::IPV6_SRC)?, inner_dst: [0; 16], family: FAMILY_V6, _pad: [0; 3] };
                Some((key, l3 + IPV6_HLEN, ETH_P_IPV6))
            }
            _ => None,
        }
    })();
    let Some((mut key, inner, ethertype)) = parsed else { return Decap::NotTunnel };
    // The inner header must be whole and of the outer's version.
    let (version, hlen, dst) = if key.family == FAMILY_V4 { (4, IPV4_MIN_HLEN, offset::IPV4_DST) } else { (6, IPV6_HLEN, offset::IPV6_DST) };
    let Some(h) = frame.get(inner..inner + hlen) else { return Decap::NotTunnel };
    if h[0] >> 4 != version {
        return Decap::Unknown;
    }
    let inner_dst = if key.family == FAMILY_V4 { addr::<4>(h, dst) } else { addr::<16>(h, dst) };
    let Some(inner_dst) = inner_dst else { return Decap::NotTunnel };
    key.inner_dst = inner_dst;
    if !allowed(&key) {
        return Decap::Unknown;
    }
    let outer = inner - l3;
    let len = frame.len() - outer;
    out[..12].copy_from_slice(&frame[..12]);
    out[offset::ETH_TYPE..ETH_HLEN].copy_from_slice(&ethertype.to_be_bytes());
    out[14..len].copy_from_slice(&frame[inner..]);
    Decap::Opened { len }
}
