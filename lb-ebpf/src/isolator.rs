//! The isolator's decision in the kernel. It follows `lb_common::model`
//! rule for rule (the module docs there state the rules); the differential
//! tests hold the two to the same verdict on every packet.

use aya_ebpf::{bindings::BPF_ANY, maps::lpm_trie::Key, programs::XdpContext};
use lb_common::{
    isolator::{
        is_allowed, DropReason, FragKey, FragVerdict, PassReason, PortStatsKey, SourceV4,
        SourceV6, Verdict, ZoneBinding, FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS,
        MAX_VLAN_DEPTH, SOURCE_SLOT_BITS,
    },
    wire::*,
};

use crate::{
    maps::{FRAGMENTS, PROTECTED_PORTS, SOURCES_V4, SOURCES_V6, ZONE_BINDINGS},
    packet::Packet,
};

/// Where the packet's headers are, for counters and drop events.
#[derive(Clone, Copy, Default)]
pub struct Headers {
    /// `FAMILY_V4`, `FAMILY_V6`, or 0 before the IP header was found.
    pub family: u8,
    /// Upper-layer protocol, once known.
    pub proto: u8,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP/UDP header, 0 when there is none.
    pub l4: usize,
}

/// A verdict and what the counters need to know about it.
pub struct Decision {
    pub verdict: Verdict,
    pub protected_port: Option<PortStatsKey>,
    pub headers: Headers,
}

/// Decision-in-progress: the parsed headers travel with every verdict.
struct Ctx {
    pkt: Packet,
    zone: ZoneBinding,
    headers: Headers,
}

impl Ctx {
    #[inline(always)]
    fn finish(&self, verdict: Verdict) -> Decision {
        Decision { verdict, protected_port: None, headers: self.headers }
    }
    #[inline(always)]
    fn pass(&self, r: PassReason) -> Decision {
        self.finish(Verdict::Pass(r))
    }
    #[inline(always)]
    fn drop(&self, r: DropReason) -> Decision {
        self.finish(Verdict::Drop(r))
    }
}

#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Decision {
    let pkt = Packet::new(ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: bindings are written whole by user space (no partial reads).
    let Some(zone) = (unsafe { ZONE_BINDINGS.get(&ifindex) }).copied() else {
        return Decision {
            verdict: Verdict::Pass(PassReason::NoZone),
            protected_port: None,
            headers: Headers::default(),
        };
    };
    let mut c = Ctx { pkt, zone, headers: Headers::default() };
    let Some(mut ethertype) = c.pkt.be16_at(12) else {
        return c.pass(PassReason::NotIp);
    };
    let mut off = ETH_HLEN;
    for depth in 0..=MAX_VLAN_DEPTH {
        if !is_vlan_ethertype(ethertype) {
            break;
        }
        if depth == MAX_VLAN_DEPTH {
            return c.drop(DropReason::VlanTooDeep);
        }
        match c.pkt.be16_at(off + 2) {
            Some(t) => ethertype = t,
            None => return c.drop(DropReason::Malformed),
        }
        off += VLAN_HLEN;
    }
    c.headers.l3 = off;
    match ethertype {
        ETH_P_IPV4 => ipv4(&mut c, off),
        ETH_P_IPV6 => ipv6(&mut c, off),
        _ => c.pass(PassReason::NotIp),
    }
}

/// Source and destination addresses (IPv4 in the first four bytes).
struct Addrs {
    src: [u8; 16],
    dst: [u8; 16],
}

#[inline(always)]
fn ipv4(c: &mut Ctx, off: usize) -> Decision {
    c.headers.family = FAMILY_V4;
    let (Some(vihl_tos), Some(total), Some(id), Some(frag), Some(ttl_proto), Some(src), Some(dst)) = (
        c.pkt.be16_at(off),
        c.pkt.be16_at(off + 2),
        c.pkt.be16_at(off + 4),
        c.pkt.be16_at(off + 6),
        c.pkt.be16_at(off + 8),
        c.pkt.bytes_at::<4>(off + 12),
        c.pkt.bytes_at::<4>(off + 16),
    ) else {
        return c.drop(DropReason::Malformed);
    };
    let vihl = (vihl_tos >> 8) as u8;
    let proto = ttl_proto as u8;
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total = usize::from(total);
    if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || total < ihl || off + total > c.pkt.len() {
        return c.drop(DropReason::Malformed);
    }
    c.headers.proto = proto;
    let mut addrs = Addrs { src: [0; 16], dst: [0; 16] };
    addrs.src[..4].copy_from_slice(&src);
    addrs.dst[..4].copy_from_slice(&dst);
    let key = frag_key(&addrs, u32::from(id), proto, FAMILY_V4);
    let frag_offset = usize::from(frag & 0x1fff) * 8;
    if frag_offset != 0 {
        return later_fragment(c, &key, proto, frag_offset);
    }
    let first = frag & 0x2000 != 0;
    transport(c, proto, off + ihl, off + total, &addrs, first, &key)
}

#[inline(always)]
fn ipv6(c: &mut Ctx, off: usize) -> Decision {
    c.headers.family = FAMILY_V6;
    let (Some(vtc), Some(plen), Some(next_hop), Some(src), Some(dst)) = (
        c.pkt.be16_at(off),
        c.pkt.be16_at(off + 4),
        c.pkt.be16_at(off + 6),
        c.pkt.bytes_at::<16>(off + 8),
        c.pkt.bytes_at::<16>(off + 24),
    ) else {
        return c.drop(DropReason::Malformed);
    };
    let end = off + IPV6_HLEN + usize::from(plen);
    if vtc >> 12 != 6 || end > c.pkt.len() {
        return c.drop(DropReason::Malformed);
    }
    let addrs = Addrs { src, dst };
    let mut next = (next_hop >> 8) as u8;
    let mut cur = off + IPV6_HLEN;
    let mut first = false;
    let mut key = FragKey::default();
    let mut seen_fragment_header = false;
    for headers in 0..=MAX_IPV6_EXT_HEADERS {
        let is_ext = is_skippable_ipv6_ext(next) || next == IPPROTO_ROUTING || next == IPPROTO_FRAGMENT;
        if !is_ext {
            break;
        }
        if headers == MAX_IPV6_EXT_HEADERS {
            return c.drop(DropReason::ExtensionChainTooLong);
        }
        if next == IPPROTO_FRAGMENT {
            if seen_fragment_header || cur + IPV6_FRAG_HLEN > end {
                return c.drop(DropReason::Malformed);
            }
            seen_fragment_header = true;
            let (Some(next_res), Some(offset_field), Some(id)) =
                (c.pkt.be16_at(cur), c.pkt.be16_at(cur + 2), c.pkt.be32_at(cur + 4))
            else {
                return c.drop(DropReason::Malformed);
            };
            let inner = (next_res >> 8) as u8;
            key = frag_key(&addrs, id, 0, FAMILY_V6);
            let frag_offset = usize::from(offset_field & 0xfff8);
            if frag_offset != 0 {
                c.headers.proto = inner;
                return later_fragment(c, &key, inner, frag_offset);
            }
            first = offset_field & 1 != 0;
            next = inner;
            cur += IPV6_FRAG_HLEN;
            continue;
        }
        if next == IPPROTO_ROUTING {
            let access = c.zone.routing_header_access;
            if access != 0 && !is_allowed(access, source_sets(c.zone.slot, FAMILY_V6, &addrs)) {
                c.headers.proto = next;
                return c.drop(DropReason::RoutingHeader);
            }
        }
        let truncated = if first { DropReason::TinyFragment } else { DropReason::Malformed };
        if cur + 2 > end {
            return c.drop(truncated);
        }
        let Some(next_len) = c.pkt.be16_at(cur) else {
            return c.drop(truncated);
        };
        let inner = (next_len >> 8) as u8;
        let len = (usize::from(next_len & 0xff) + 1) * 8;
        if cur + len > end {
            return c.drop(truncated);
        }
        next = inner;
        cur += len;
    }
    c.headers.proto = next;
    transport(c, next, cur, end, &addrs, first, &key)
}

#[inline(always)]
fn frag_key(addrs: &Addrs, id: u32, proto: u8, family: u8) -> FragKey {
    FragKey { src: addrs.src, dst: addrs.dst, id, proto, family, _pad: [0; 2] }
}

#[inline(always)]
fn later_fragment(c: &Ctx, key: &FragKey, proto: u8, byte_offset: usize) -> Decision {
    if proto == IPPROTO_TCP && byte_offset < TCP_MIN_HLEN {
        return c.drop(DropReason::FragmentOverlap);
    }
    // SAFETY: values are plain u32s written whole.
    match unsafe { FRAGMENTS.get(key) }.copied().and_then(FragVerdict::from_u32) {
        Some(FragVerdict::Pass) => c.pass(PassReason::FragmentFollows),
        Some(FragVerdict::Drop) => c.drop(DropReason::FragmentOfDropped),
        None => c.drop(DropReason::FragmentUnknown),
    }
}

/// The source sets of the packet's source address in the zone's slot.
#[inline(always)]
fn source_sets(slot: u32, family: u8, addrs: &Addrs) -> u32 {
    let slot = slot.to_be_bytes();
    let sets = if family == FAMILY_V4 {
        let mut addr = [0u8; 4];
        addr.copy_from_slice(&addrs.src[..4]);
        SOURCES_V4.get(Key::new(SOURCE_SLOT_BITS + 32, SourceV4 { slot, addr }))
    } else {
        SOURCES_V6.get(Key::new(SOURCE_SLOT_BITS + 128, SourceV6 { slot, addr: addrs.src }))
    };
    sets.copied().unwrap_or(0)
}

/// Judges the upper-layer header at `l4`; the IP payload ends at `end`.
#[inline(always)]
fn transport(
    c: &mut Ctx,
    proto: u8,
    l4: usize,
    end: usize,
    addrs: &Addrs,
    first_fragment: bool,
    key: &FragKey,
) -> Decision {
    let family = c.headers.family;
    let decision = if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        let min = if proto == IPPROTO_TCP { TCP_MIN_HLEN } else { UDP_HLEN };
        if l4 + min > end {
            return c.drop(if first_fragment { DropReason::TinyFragment } else { DropReason::Malformed });
        }
        let Some(port) = c.pkt.be16_at(l4 + 2) else {
            return c.drop(DropReason::Malformed);
        };
        c.headers.l4 = l4;
        let port_key = lb_common::isolator::PortKey::new(c.zone.slot as u16, proto, port);
        // SAFETY: values are plain u32s written whole.
        let access = unsafe { PROTECTED_PORTS.get(&port_key) }.copied().unwrap_or(0);
        if access == 0 {
            c.pass(PassReason::Unprotected)
        } else {
            let verdict = if is_allowed(access, source_sets(c.zone.slot, family, addrs)) {
                Verdict::Pass(PassReason::Allowed)
            } else {
                Verdict::Drop(DropReason::ProtectedPort)
            };
            Decision {
                verdict,
                protected_port: Some(PortStatsKey { port, proto, _pad: 0 }),
                headers: c.headers,
            }
        }
    } else if is_encapsulation(proto) {
        let access = c.zone.tunnel_access;
        if access == 0 || is_allowed(access, source_sets(c.zone.slot, family, addrs)) {
            c.pass(PassReason::OtherProtocol)
        } else {
            c.drop(DropReason::Tunnel)
        }
    } else {
        c.pass(PassReason::OtherProtocol)
    };
    if first_fragment {
        let remembered = if decision.verdict.is_drop() { FragVerdict::Drop } else { FragVerdict::Pass };
        // A full table evicts the oldest entry (LRU); a failed insert leaves
        // the followers unknown, which drops them: the safe side.
        let _ = FRAGMENTS.insert(key, &(remembered as u32), u64::from(BPF_ANY));
    }
    decision
}
