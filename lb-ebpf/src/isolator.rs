//! The isolator's decision in the kernel. It follows `lb_common::model`
//! rule for rule (the module docs there state the rules); the differential
//! tests hold the two to the same verdict on every packet.

use aya_ebpf::{
    bindings::BPF_ANY,
    macros::map,
    maps::{lpm_trie::Key, PerCpuArray},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    isolator::{
        is_allowed, reverse_path_drop, DropReason, FragEntry, FragKey, FragVerdict, PassReason, PortStatsKey,
        ReversePath, SourceV4, SourceV6, Verdict, ZoneBinding, FAMILY_V4, FAMILY_V6,
        MAX_IPV6_EXT_HEADERS, MAX_VLAN_DEPTH, SOURCE_SLOT_BITS, STAGE_REVERSE_PATH,
    },
    wire::{bits, offset, *},
};

use crate::{
    maps::{FRAGMENTS, ISO_STAGES, PROTECTED_PORTS, SOURCES_V4, SOURCES_V6, ZONE_BINDINGS},
    martian,
    packet::{ExtHdr, Frag6Hdr, Ipv4Hdr, Packet, Ports},
    reverse_path,
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
    /// The program's context (the ingress ifindex, the FIB helper).
    xdp: *mut core::ffi::c_void,
    /// A trusted source let something through: its route back is checked
    /// before the packet passes (rule 7).
    trusted: bool,
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
    let mut c = Ctx { pkt, zone, headers: Headers::default(), xdp: ctx.as_ptr(), trusted: false };
    let Some(mut ethertype) = c.pkt.ethertype() else {
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
        match c.pkt.be16_at(off + offset::VLAN_TYPE) {
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

#[inline(always)]
fn ipv4(c: &mut Ctx, off: usize) -> Decision {
    c.headers.family = FAMILY_V4;
    // The addresses are read only when needed (allow-list, fragments).
    let Some(ip) = c.pkt.header::<Ipv4Hdr>(off) else {
        return c.drop(DropReason::Malformed);
    };
    let (proto, ihl, total) = (ip.proto, usize::from(ip.ihl()), usize::from(ip.tot_len()));
    let (id, frag) = (u16::from_be_bytes(ip.id), u16::from_be_bytes(ip.frags));
    if ip.version() != 4 || ihl < IPV4_MIN_HLEN || total < ihl || off + total > c.pkt.len() {
        return c.drop(DropReason::Malformed);
    }
    c.headers.proto = proto;
    if let Some(d) = impossible(c) {
        return d;
    }
    let frag_offset = usize::from(frag & bits::IPV4_FRAG_OFFSET) * 8;
    if frag_offset != 0 {
        return match frag_key(c, u32::from(id), proto) {
            Some(key) => later_fragment(c, &key, proto, frag_offset),
            None => c.drop(DropReason::Malformed),
        };
    }
    let first = if frag & bits::IPV4_MF != 0 {
        match frag_key(c, u32::from(id), proto) {
            Some(key) => Some((key, off + ihl)),
            None => return c.drop(DropReason::Malformed),
        }
    } else {
        None
    };
    transport(c, proto, off + ihl, off + total, first)
}

#[inline(always)]
fn ipv6(c: &mut Ctx, off: usize) -> Decision {
    c.headers.family = FAMILY_V6;
    // As for IPv4, the addresses are read on demand; `end` covers them.
    // The fixed header's fields are read one by one, not through
    // `Ipv6Hdr`: with a whole-header check here the verifier's walk of
    // the extension-header loop behind it exceeds its 1M instructions
    // (tests/tests/verifier.rs).
    let (Some(vtc), Some(plen), Some(next_hop)) = (
        c.pkt.be16_at(off + offset::IPV6_VCF),
        c.pkt.be16_at(off + offset::IPV6_PAYLOAD_LEN),
        c.pkt.be16_at(off + offset::IPV6_NEXT_HDR),
    ) else {
        return c.drop(DropReason::Malformed);
    };
    let end = off + IPV6_HLEN + usize::from(plen);
    if vtc >> 12 != 6 || end > c.pkt.len() {
        return c.drop(DropReason::Malformed);
    }
    if let Some(d) = impossible(c) {
        return d;
    }
    let mut next = (next_hop >> 8) as u8;
    let mut cur = off + IPV6_HLEN;
    let mut first: Option<(FragKey, usize)> = None;
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
            let Some(fh) = c.pkt.header::<Frag6Hdr>(cur) else {
                return c.drop(DropReason::Malformed);
            };
            let (inner, offset_flags, id) = (fh.next_hdr, u16::from_be_bytes(fh.offset_flags), u32::from_be_bytes(fh.id));
            let frag_offset = usize::from(offset_flags & bits::FRAG6_OFFSET);
            // Offset 0 without M is an "atomic fragment": a whole datagram.
            if frag_offset != 0 || offset_flags & bits::FRAG6_MORE != 0 {
                let Some(key) = frag_key(c, id, 0) else {
                    return c.drop(DropReason::Malformed);
                };
                if frag_offset != 0 {
                    c.headers.proto = inner;
                    return later_fragment(c, &key, inner, frag_offset);
                }
                first = Some((key, cur + IPV6_FRAG_HLEN));
            }
            next = inner;
            cur += IPV6_FRAG_HLEN;
            continue;
        }
        if next == IPPROTO_ROUTING {
            let access = c.zone.routing_header_access;
            if let Some(r) = admits(c, access, DropReason::RoutingHeader) {
                c.headers.proto = next;
                return c.drop(r);
            }
        }
        let truncated = if first.is_some() { DropReason::TinyFragment } else { DropReason::Malformed };
        if cur + 2 > end {
            return c.drop(truncated);
        }
        let Some(ext) = c.pkt.header::<ExtHdr>(cur) else {
            return c.drop(truncated);
        };
        let inner = ext.next_hdr;
        let len = (usize::from(ext.len) + 1) * 8;
        if cur + len > end {
            return c.drop(truncated);
        }
        next = inner;
        cur += len;
    }
    c.headers.proto = next;
    transport(c, next, cur, end, first)
}

/// Rule 3's last step: the drop of a source that cannot be real on the
/// interface, if it cannot. Called once the IP header is known to be whole.
#[inline(always)]
fn impossible(c: &Ctx) -> Option<Decision> {
    if impossible_kind(c.xdp, &c.pkt, &c.headers) == 0 {
        return None;
    }
    Some(c.drop(DropReason::ImpossibleSource))
}

/// The ifindex the packet arrived on.
#[inline(always)]
fn ingress_ifindex(xdp: *mut core::ffi::c_void) -> u32 {
    // SAFETY: the program's own context.
    unsafe { (*(xdp as *const aya_ebpf::bindings::xdp_md)).ingress_ifindex }
}

/// The impossible-source lookup in a frame of its own (its key takes up
/// to 24 bytes of stack): the `Impossible` kind of the packet's source, or
/// 0. Also the drop event's detail.
#[inline(never)]
pub fn impossible_kind(xdp: *mut core::ffi::c_void, pkt: &Packet, h: &Headers) -> u32 {
    let ifindex = ingress_ifindex(xdp);
    let kind = if h.family == FAMILY_V4 {
        // In bounds (total >= ihl >= 20); were it not, a malformed header
        // is dropped later anyway.
        let Some(src) = pkt.bytes_at::<4>(h.l3 + offset::IPV4_SRC) else { return 0 };
        martian::impossible_v4(ifindex, src)
    } else {
        let Some(src) = pkt.bytes_at::<16>(h.l3 + offset::IPV6_SRC) else { return 0 };
        martian::impossible_v6(ifindex, src)
    };
    kind.map_or(0, u32::from)
}

/// The reassembly key of the packet's datagram (IPv4 addresses in the
/// first four bytes). `None` only if the addresses are out of bounds, which
/// the callers' length checks rule out.
#[inline(always)]
fn frag_key(c: &Ctx, id: u32, proto: u8) -> Option<FragKey> {
    let l3 = c.headers.l3;
    let mut key = FragKey { id, proto, family: c.headers.family, ..FragKey::default() };
    if c.headers.family == FAMILY_V4 {
        key.src[..4].copy_from_slice(&c.pkt.bytes_at::<4>(l3 + offset::IPV4_SRC)?);
        key.dst[..4].copy_from_slice(&c.pkt.bytes_at::<4>(l3 + offset::IPV4_DST)?);
    } else {
        key.src = c.pkt.bytes_at::<16>(l3 + offset::IPV6_SRC)?;
        key.dst = c.pkt.bytes_at::<16>(l3 + offset::IPV6_DST)?;
    }
    Some(key)
}

#[inline(always)]
fn later_fragment(c: &Ctx, key: &FragKey, proto: u8, byte_offset: usize) -> Decision {
    if proto == IPPROTO_TCP && byte_offset < TCP_MIN_HLEN {
        return c.drop(DropReason::FragmentOverlap);
    }
    // SAFETY: values are plain u32s written whole.
    match unsafe { FRAGMENTS.get(key) }.copied().and_then(FragEntry::from_u32) {
        Some(FragEntry { verdict: FragVerdict::Drop, .. }) => c.drop(DropReason::FragmentOfDropped),
        Some(e) if byte_offset < usize::from(e.headers_end) => c.drop(DropReason::FragmentOverlap),
        Some(_) => c.pass(PassReason::FragmentFollows),
        None => c.drop(DropReason::FragmentUnknown),
    }
}

/// The source sets of the packet's source address in the zone's slot
/// (0 if the address were out of bounds, which the length checks rule out).
#[inline(always)]
fn source_sets(c: &Ctx) -> u32 {
    let slot = c.zone.slot.to_be_bytes();
    let l3 = c.headers.l3;
    let sets = if c.headers.family == FAMILY_V4 {
        let Some(addr) = c.pkt.bytes_at::<4>(l3 + offset::IPV4_SRC) else { return 0 };
        SOURCES_V4.get(Key::new(SOURCE_SLOT_BITS + 32, SourceV4 { slot, addr }))
    } else {
        let Some(addr) = c.pkt.bytes_at::<16>(l3 + offset::IPV6_SRC) else { return 0 };
        SOURCES_V6.get(Key::new(SOURCE_SLOT_BITS + 128, SourceV6 { slot, addr }))
    };
    sets.copied().unwrap_or(0)
}

/// Rule 6 of the model: may the packet's source pass something guarded by
/// `access`? `None` passes; `denied` is the reason when its sets do not
/// match. A pass on trust marks the packet for rule 7.
#[inline(always)]
fn admits(c: &mut Ctx, access: u32, denied: DropReason) -> Option<DropReason> {
    if access == 0 {
        return None;
    }
    if !is_allowed(access, source_sets(c)) {
        return Some(denied);
    }
    c.trusted = true;
    None
}

/// What the reverse-path stage needs to finish a packet's decision: the
/// decision so far (a pass) and, for a first fragment, what to remember.
/// Integers only: an `Option`'s unset payload would be copied as
/// uninitialised registers, which the verifier refuses, and LLVM takes a
/// `bool` or an enum read from memory to hold only its valid values, which
/// the verifier cannot know of map memory.
pub struct Pending {
    /// The `PassReason` as `u8` (only passes are handed over).
    pub reason: u8,
    pub headers: Headers,
    pub port: PortStatsKey,
    pub has_port: u8,
    pub mode: u8,
    pub first_fragment: u8,
    pub frag_headers_end: u16,
    pub frag_key: FragKey,
}

/// Pinned, though it holds nothing across packets: a restarted agent puts
/// its new stage into the pinned `ISO_STAGES` a moment before its new
/// isolator replaces the old one on the links, and in that moment the old
/// isolator's hand-over must reach the new stage through the same slot.
#[map]
static ISO_PENDING: PerCpuArray<Pending> = PerCpuArray::pinned(1, 0);

/// Rule 7 of the model for a packet about to pass on its source's trust:
/// hands it to the reverse-path stage (`isolator_reverse_path`), which
/// looks the route back up and finishes the packet. Returns only if that
/// stage cannot run: the packet is then dropped as unverifiable (fail
/// closed).
#[inline(always)]
fn reverse_path_stage(c: &Ctx, decision: &Decision, first_fragment: &Option<(FragKey, usize)>, headers_end: u16) {
    let Some(p) = ISO_PENDING.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slot; XDP does not nest on a CPU.
    let p = unsafe { &mut *p };
    p.reason = match decision.verdict {
        Verdict::Pass(r) => r as u8,
        Verdict::Drop(_) => 0,
    };
    p.headers = c.headers;
    p.has_port = u8::from(decision.protected_port.is_some());
    if let Some(k) = decision.protected_port {
        p.port = k;
    }
    p.mode = c.zone.reverse_path;
    p.first_fragment = u8::from(first_fragment.is_some());
    p.frag_headers_end = headers_end;
    if let Some((key, _)) = first_fragment {
        p.frag_key = *key;
    }
    let ctx = XdpContext::new(c.xdp as *mut aya_ebpf::bindings::xdp_md);
    // SAFETY: a tail call either does not return or fails harmlessly.
    let _ = unsafe { ISO_STAGES.tail_call(&ctx, STAGE_REVERSE_PATH) };
}

/// The reverse-path stage: the FIB's answer for a packet the isolator would
/// pass on its source's trust, then what the isolator would have done
/// after its decision (remember a first fragment's verdict, count).
#[inline(always)]
/// Returns the decision and its drop event's detail (the FIB's return code
/// when it would not answer).
pub fn finish_reverse_path(ctx: &XdpContext) -> Option<(Decision, u8)> {
    let p = ISO_PENDING.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, written by the isolator on this CPU for this
    // very packet just before the tail call.
    let p = unsafe { &mut *p };
    let pkt = Packet::new_opaque(ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    let h = p.headers;
    let route = reverse_path::decode(reverse_path::lookup(ctx.as_ptr(), &pkt, h.family, h.l3, ifindex));
    let reason = match p.reason {
        r if r == PassReason::Allowed as u8 => PassReason::Allowed,
        r if r == PassReason::Unprotected as u8 => PassReason::Unprotected,
        _ => PassReason::OtherProtocol,
    };
    let protected_port = if p.has_port != 0 { Some(p.port) } else { None };
    let mut d = Decision { verdict: Verdict::Pass(reason), protected_port, headers: h };
    if let Some(r) = reverse_path_drop(ReversePath::from_u8(p.mode), ifindex, route) {
        d.verdict = Verdict::Drop(r);
    }
    let detail = if let lb_common::isolator::RouteBack::Unverifiable(rc) = route { rc } else { 0 };
    if p.first_fragment != 0 {
        let verdict = if d.verdict.is_drop() { FragVerdict::Drop } else { FragVerdict::Pass };
        let entry = FragEntry { verdict, headers_end: p.frag_headers_end };
        let _ = FRAGMENTS.insert(&p.frag_key, &entry.to_u32(), u64::from(BPF_ANY));
    }
    Some((d, detail))
}

/// Judges the upper-layer header at `l4`; the IP payload ends at `end`.
/// `first_fragment` carries the reassembly key of a first fragment and where
/// its fragmentable part starts.
#[inline(always)]
fn transport(c: &mut Ctx, proto: u8, l4: usize, end: usize, first_fragment: Option<(FragKey, usize)>) -> Decision {
    let mut decision = if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        let min = l4_min_len(proto);
        if l4 + min > end {
            return c.drop(if first_fragment.is_some() { DropReason::TinyFragment } else { DropReason::Malformed });
        }
        let Some(port) = c.pkt.header::<Ports>(l4).map(Ports::dest) else {
            return c.drop(DropReason::Malformed);
        };
        c.headers.l4 = l4;
        let port_key = lb_common::isolator::PortKey::new(c.zone.slot as u16, proto, port);
        // SAFETY: values are plain u32s written whole.
        let access = unsafe { PROTECTED_PORTS.get(&port_key) }.copied().unwrap_or(0);
        if access == 0 {
            c.pass(PassReason::Unprotected)
        } else {
            let verdict = match admits(c, access, DropReason::ProtectedPort) {
                None => Verdict::Pass(PassReason::Allowed),
                Some(r) => Verdict::Drop(r),
            };
            Decision {
                verdict,
                protected_port: Some(PortStatsKey { port, proto, _pad: 0 }),
                headers: c.headers,
            }
        }
    } else if is_encapsulation(proto) {
        let access = c.zone.tunnel_access;
        match admits(c, access, DropReason::Tunnel) {
            None => c.pass(PassReason::OtherProtocol),
            Some(r) => c.drop(r),
        }
    } else {
        c.pass(PassReason::OtherProtocol)
    };
    // Both offsets are bounded by the frame (MAX_OFFSET), and the L4
    // header starts at or after the fragmentable part.
    let headers_end = first_fragment.as_ref().map_or(0, |(_, start)| (l4 + l4_min_len(proto)).saturating_sub(*start) as u16);
    // Every trusted pass goes to the stage, `reverse_path = "off"` too: a
    // test of the mode here would split every path behind it in two for
    // the verifier.
    if c.trusted && !decision.verdict.is_drop() {
        reverse_path_stage(c, &decision, &first_fragment, headers_end);
        decision.verdict = Verdict::Drop(DropReason::ReversePathUnverified);
    }
    if let Some((key, _)) = first_fragment {
        let verdict = if decision.verdict.is_drop() { FragVerdict::Drop } else { FragVerdict::Pass };
        let entry = FragEntry { verdict, headers_end };
        // A full table evicts the oldest entry (LRU); a failed insert leaves
        // the followers unknown, which drops them: the safe side.
        let _ = FRAGMENTS.insert(&key, &entry.to_u32(), u64::from(BPF_ANY));
    }
    decision
}
