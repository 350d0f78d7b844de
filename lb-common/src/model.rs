//! The isolator's decision as plain Rust: the reference the XDP program
//! (`lb-ebpf/src/isolator.rs`) must match packet for packet.
//!
//! The rules, in the order they apply to a frame arriving on an interface:
//!
//! 1. No zone bound to the interface → pass.
//! 2. Ethernet: frames shorter than a header, or whose EtherType (after VLAN
//!    tags) is neither IPv4 nor IPv6, pass. Up to [`MAX_VLAN_DEPTH`]
//!    802.1Q/802.1ad tags are looked through *whatever their VLAN ID*: a
//!    priority-tagged (VID 0) frame is delivered even by kernels without
//!    802.1Q support, and a VLAN sub-interface would deliver the others.
//!    A deeper stack or a truncated tag is dropped.
//! 3. IP headers must be consistent (version, IHL, total/payload length
//!    within the frame) or the packet is dropped as malformed. Only the bytes
//!    inside the IP length count: Ethernet padding cannot supply an L4 header.
//!    A source that cannot be real on the interface ([`Host::impossible_source`]:
//!    the host's own addresses, loopback, multicast, broadcast, …) is then
//!    dropped whatever follows (`impossible_source`), fragments included.
//! 4. IPv6 extension headers are walked (at most [`MAX_IPV6_EXT_HEADERS`]);
//!    a routing header is judged by the zone's routing-header access mask.
//! 5. Fragments. A first fragment must hold the whole minimal L4 header
//!    (TCP 20 bytes, UDP 8) or it is dropped; its verdict is remembered under
//!    the kernel's reassembly key. A later fragment gets the remembered
//!    verdict; with none remembered (first fragment dropped, lost, or not yet
//!    arrived) it is dropped. A TCP fragment at an offset inside the TCP
//!    header (RFC 1858) is dropped, and so is any later fragment that starts
//!    inside its first fragment's headers (the IPv6 extension headers after
//!    the fragment header and the minimal L4 header): it could only be
//!    there to rewrite them.
//! 6. TCP/UDP: a protected destination port passes only from a source whose
//!    sets intersect the port's access mask. Encapsulation protocols
//!    ([`is_encapsulation`]) are judged by the zone's tunnel access mask.
//!    Everything else (ICMP, …) passes.
//! 7. Trust is not given on the source address alone: a packet that rule 6
//!    (or rule 4's routing header) let through a non-zero access mask on
//!    its source's sets (a protected port, a tunnel, a routing header) and
//!    that would pass is dropped unless the route back to that source
//!    ([`Host::route_back`]) leaves through the ingress interface (zone
//!    `reverse_path = "strict"`) or exists at all (`"loose"`):
//!    `reverse_path`, or `reverse_path_unverified` when the kernel would not
//!    answer. A first fragment's remembered verdict is the final one. The
//!    check is made once, when the packet's upper-layer header has been
//!    judged; a later fragment follows its first fragment (whose
//!    unfragmentable part, routing header included, is the one reassembly
//!    keeps). Nothing else asks the FIB.

use crate::isolator::{
    is_allowed, reverse_path_drop, DropReason, FragEntry, FragKey, FragVerdict, Impossible, PassReason, PortStatsKey,
    ReversePath, RouteBack, Verdict, ZoneBinding, MAX_IPV6_EXT_HEADERS, MAX_VLAN_DEPTH,
};
use crate::wire::*;

/// Read access to the policy maps, as the kernel sees them.
pub trait Policy {
    /// The zone bound to an interface, if any.
    fn binding(&self, ifindex: u32) -> Option<ZoneBinding>;
    /// Access mask of (slot, protocol, port); 0 when the port is unprotected.
    fn port_access(&self, slot: u32, proto: u8, port: u16) -> u32;
    /// Source sets of an IPv4 address in a slot (longest-prefix match).
    fn source_sets_v4(&self, slot: u32, addr: [u8; 4]) -> u32;
    /// Source sets of an IPv6 address in a slot (longest-prefix match).
    fn source_sets_v6(&self, slot: u32, addr: [u8; 16]) -> u32;
}

/// What the host's network stack answers the program: the impossible-source
/// tries the agent fills, and the kernel's FIB. Addresses are 16 bytes;
/// IPv4 uses the first four.
pub trait Host {
    /// Why `src` cannot be a real source on `ifindex`, if it cannot.
    fn impossible_source(&self, ifindex: u32, family: u8, src: &[u8; 16]) -> Option<Impossible>;
    /// The route back to a packet's source `src`, looked up from its
    /// destination `dst` as if arriving on `ifindex`.
    fn route_back(&self, ifindex: u32, family: u8, src: &[u8; 16], dst: &[u8; 16]) -> RouteBack;
}

/// The first-fragment verdicts remembered between packets.
pub trait FragmentTable {
    fn get(&mut self, key: &FragKey) -> Option<FragEntry>;
    fn record(&mut self, key: FragKey, entry: FragEntry);
}

/// The decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Set when the packet was TCP/UDP to a protected port (per-port counters).
    pub protected_port: Option<PortStatsKey>,
}

impl Decision {
    const fn of(verdict: Verdict) -> Self {
        Self { verdict, protected_port: None }
    }
}

const fn pass(r: PassReason) -> Decision {
    Decision::of(Verdict::Pass(r))
}
const fn drop(r: DropReason) -> Decision {
    Decision::of(Verdict::Drop(r))
}

/// Source and destination of an IP packet, as the kernel program keeps them.
#[derive(Clone, Copy)]
enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

impl Addrs {
    fn frag_key(&self, id: u32, proto: u8) -> FragKey {
        let mut key = FragKey::default();
        match self {
            Addrs::V4 { src, dst } => {
                key.src[..4].copy_from_slice(src);
                key.dst[..4].copy_from_slice(dst);
                key.family = FAMILY_V4;
                key.proto = proto;
            }
            Addrs::V6 { src, dst } => {
                key.src = *src;
                key.dst = *dst;
                key.family = FAMILY_V6;
            }
        }
        key.id = id;
        key
    }

    /// (family, source, destination), 16 bytes each.
    fn wide(&self) -> (u8, [u8; 16], [u8; 16]) {
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        match self {
            Addrs::V4 { src, dst } => {
                s[..4].copy_from_slice(src);
                d[..4].copy_from_slice(dst);
                (FAMILY_V4, s, d)
            }
            Addrs::V6 { src, dst } => (FAMILY_V6, *src, *dst),
        }
    }

    fn source_sets(&self, policy: &impl Policy, slot: u32) -> u32 {
        match self {
            Addrs::V4 { src, .. } => policy.source_sets_v4(slot, *src),
            Addrs::V6 { src, .. } => policy.source_sets_v6(slot, *src),
        }
    }
}

/// The interface, its zone and what the decision may consult.
struct Judge<'a, P, H> {
    ifindex: u32,
    zone: ZoneBinding,
    policy: &'a P,
    host: &'a H,
    /// Something passed on the source's trust (rule 7 applies).
    trusted: core::cell::Cell<bool>,
}

impl<P: Policy, H: Host> Judge<'_, P, H> {
    /// Rule 6: may the packet's source pass something guarded by `access`?
    /// `None` passes; `denied` is the reason when its sets do not match. A
    /// pass on trust marks the packet for rule 7.
    fn admits(&self, access: u32, addrs: &Addrs, denied: DropReason) -> Option<DropReason> {
        if access == 0 {
            return None;
        }
        if !is_allowed(access, addrs.source_sets(self.policy, self.zone.slot)) {
            return Some(denied);
        }
        self.trusted.set(true);
        None
    }

    /// Rule 7, for a packet about to pass.
    fn reverse_path(&self, addrs: &Addrs) -> Option<DropReason> {
        let mode = ReversePath::from_u8(self.zone.reverse_path);
        if !self.trusted.get() || mode == ReversePath::Off {
            return None;
        }
        let (family, src, dst) = addrs.wide();
        reverse_path_drop(mode, self.ifindex, self.host.route_back(self.ifindex, family, &src, &dst))
    }

    /// Rule 3's last step: a source that cannot be real here.
    fn impossible(&self, addrs: &Addrs) -> bool {
        let (family, src, _) = addrs.wide();
        self.host.impossible_source(self.ifindex, family, &src).is_some()
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// Decides one frame received on `ifindex`, updating `frags`.
pub fn decide(
    frame: &[u8],
    ifindex: u32,
    policy: &impl Policy,
    host: &impl Host,
    frags: &mut impl FragmentTable,
) -> Decision {
    let Some(zone) = policy.binding(ifindex) else {
        return pass(PassReason::NoZone);
    };
    let j = Judge { ifindex, zone, policy, host, trusted: core::cell::Cell::new(false) };
    if frame.len() < ETH_HLEN {
        return pass(PassReason::NotIp);
    }
    let mut ethertype = be16(frame, offset::ETH_TYPE);
    let mut off = ETH_HLEN;
    let mut depth = 0;
    while is_vlan_ethertype(ethertype) {
        if depth == MAX_VLAN_DEPTH {
            return drop(DropReason::VlanTooDeep);
        }
        if off + VLAN_HLEN > frame.len() {
            return drop(DropReason::Malformed);
        }
        ethertype = be16(frame, off + offset::VLAN_TYPE);
        off += VLAN_HLEN;
        depth += 1;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(frame, off, &j, frags),
        ETH_P_IPV6 => ipv6(frame, off, &j, frags),
        _ => pass(PassReason::NotIp),
    }
}

fn ipv4(f: &[u8], off: usize, j: &Judge<impl Policy, impl Host>, frags: &mut impl FragmentTable) -> Decision {
    if off + IPV4_MIN_HLEN > f.len() || f[off] >> 4 != 4 {
        return drop(DropReason::Malformed);
    }
    let ihl = usize::from(f[off + offset::IPV4_VIHL] & bits::IPV4_IHL) * 4;
    let total = usize::from(be16(f, off + offset::IPV4_TOT_LEN));
    if ihl < IPV4_MIN_HLEN || total < ihl || off + total > f.len() {
        return drop(DropReason::Malformed);
    }
    let frag = be16(f, off + offset::IPV4_FRAGS);
    let more_fragments = frag & bits::IPV4_MF != 0;
    let frag_offset = usize::from(frag & bits::IPV4_FRAG_OFFSET) * 8;
    let proto = f[off + offset::IPV4_PROTO];
    let addrs = Addrs::V4 {
        src: f[off + offset::IPV4_SRC..][..4].try_into().unwrap(),
        dst: f[off + offset::IPV4_DST..][..4].try_into().unwrap(),
    };
    if j.impossible(&addrs) {
        return drop(DropReason::ImpossibleSource);
    }
    let key = addrs.frag_key(u32::from(be16(f, off + offset::IPV4_ID)), proto);
    if frag_offset != 0 {
        return later_fragment(&key, proto, frag_offset, frags);
    }
    let first = more_fragments.then_some((key, off + ihl));
    transport(f, proto, off + ihl, off + total, &addrs, first, j, frags)
}

fn ipv6(f: &[u8], off: usize, j: &Judge<impl Policy, impl Host>, frags: &mut impl FragmentTable) -> Decision {
    if off + IPV6_HLEN > f.len() || f[off] >> 4 != 6 {
        return drop(DropReason::Malformed);
    }
    let end = off + IPV6_HLEN + usize::from(be16(f, off + offset::IPV6_PAYLOAD_LEN));
    if end > f.len() {
        return drop(DropReason::Malformed);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&f[off + offset::IPV6_SRC..][..16]);
    dst.copy_from_slice(&f[off + offset::IPV6_DST..][..16]);
    let addrs = Addrs::V6 { src, dst };
    if j.impossible(&addrs) {
        return drop(DropReason::ImpossibleSource);
    }

    let mut next = f[off + offset::IPV6_NEXT_HDR];
    let mut cur = off + IPV6_HLEN;
    let mut first: Option<(FragKey, usize)> = None;
    let mut seen_fragment_header = false;
    let truncated = |first: &Option<(FragKey, usize)>| {
        drop(if first.is_some() { DropReason::TinyFragment } else { DropReason::Malformed })
    };
    let mut headers = 0;
    loop {
        let is_ext = is_skippable_ipv6_ext(next) || next == IPPROTO_ROUTING || next == IPPROTO_FRAGMENT;
        if !is_ext {
            break;
        }
        if headers == MAX_IPV6_EXT_HEADERS {
            return drop(DropReason::ExtensionChainTooLong);
        }
        headers += 1;
        if next == IPPROTO_FRAGMENT {
            if seen_fragment_header || cur + IPV6_FRAG_HLEN > end {
                return drop(DropReason::Malformed);
            }
            seen_fragment_header = true;
            let offset_field = be16(f, cur + offset::FRAG6_OFFSET);
            let frag_offset = usize::from(offset_field & bits::FRAG6_OFFSET);
            let key = addrs.frag_key(be32(f, cur + offset::FRAG6_ID), 0);
            let inner = f[cur + offset::FRAG6_NEXT];
            if frag_offset != 0 {
                return later_fragment(&key, inner, frag_offset, frags);
            }
            // Offset 0 without M is an "atomic fragment": a whole datagram.
            if offset_field & bits::FRAG6_MORE != 0 {
                first = Some((key, cur + IPV6_FRAG_HLEN));
            }
            next = inner;
            cur += IPV6_FRAG_HLEN;
            continue;
        }
        if next == IPPROTO_ROUTING {
            if let Some(r) = j.admits(j.zone.routing_header_access, &addrs, DropReason::RoutingHeader) {
                return drop(r);
            }
        }
        if cur + IPV6_EXT_MIN_HLEN > end {
            return truncated(&first);
        }
        let len = (usize::from(f[cur + offset::EXT_LEN]) + 1) * 8;
        if cur + len > end {
            return truncated(&first);
        }
        next = f[cur];
        cur += len;
    }
    transport(f, next, cur, end, &addrs, first, j, frags)
}

fn later_fragment(
    key: &FragKey,
    proto: u8,
    byte_offset: usize,
    frags: &mut impl FragmentTable,
) -> Decision {
    if proto == IPPROTO_TCP && byte_offset < TCP_MIN_HLEN {
        return drop(DropReason::FragmentOverlap);
    }
    match frags.get(key) {
        Some(FragEntry { verdict: FragVerdict::Drop, .. }) => drop(DropReason::FragmentOfDropped),
        Some(e) if byte_offset < usize::from(e.headers_end) => drop(DropReason::FragmentOverlap),
        Some(_) => pass(PassReason::FragmentFollows),
        None => drop(DropReason::FragmentUnknown),
    }
}

/// Judges the upper-layer header at `l4` (the IP payload ends at `end`).
/// `first_fragment` carries the reassembly key and where the fragmentable
/// part starts when this is a first fragment.
#[allow(clippy::too_many_arguments)]
fn transport(
    f: &[u8],
    proto: u8,
    l4: usize,
    end: usize,
    addrs: &Addrs,
    first_fragment: Option<(FragKey, usize)>,
    j: &Judge<impl Policy, impl Host>,
    frags: &mut impl FragmentTable,
) -> Decision {
    let mut decision = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let min = l4_min_len(proto);
            if l4 + min > end {
                return drop(if first_fragment.is_some() {
                    DropReason::TinyFragment
                } else {
                    DropReason::Malformed
                });
            }
            let port = be16(f, l4 + offset::L4_DPORT);
            let access = j.policy.port_access(j.zone.slot, proto, port);
            if access == 0 {
                pass(PassReason::Unprotected)
            } else {
                let verdict = match j.admits(access, addrs, DropReason::ProtectedPort) {
                    None => Verdict::Pass(PassReason::Allowed),
                    Some(r) => Verdict::Drop(r),
                };
                Decision {
                    verdict,
                    protected_port: Some(PortStatsKey { port, proto, _pad: 0 }),
                }
            }
        }
        p if is_encapsulation(p) => match j.admits(j.zone.tunnel_access, addrs, DropReason::Tunnel) {
            None => pass(PassReason::OtherProtocol),
            Some(r) => drop(r),
        },
        _ => pass(PassReason::OtherProtocol),
    };
    if !decision.verdict.is_drop() {
        if let Some(r) = j.reverse_path(addrs) {
            decision.verdict = Verdict::Drop(r);
        }
    }
    if let Some((key, start)) = first_fragment {
        let verdict = if decision.verdict.is_drop() { FragVerdict::Drop } else { FragVerdict::Pass };
        let headers_end = (l4 + l4_min_len(proto)).saturating_sub(start) as u16;
        frags.record(key, FragEntry { verdict, headers_end });
    }
    decision
}
