//! The route back to a packet's source, from the kernel's FIB: the lookup
//! a reply would make (destination = the packet's source, source = its
//! destination), as if it arrived on the ingress interface, so `ip rule`s
//! that match the incoming interface or the source apply as they would.
//! Asked only for sources the allow-list trusts.

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::generated::bpf_fib_lookup as fib_lookup, macros::map, maps::PerCpuArray,
};
use lb_common::isolator::{fib, RouteBack, FAMILY_V4};

use crate::packet::{Ipv4Hdr, Ipv6Hdr, Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The lookup's request: 64 bytes the isolator's stack has no room for
/// (the verifier adds up a call chain's frames, at most 512 bytes). Not
/// pinned: it holds nothing across packets.
#[map]
static ISO_FIB: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// What the FIB says of the route back to the source of the IP packet at
/// `l3` (of `family`) that arrived on `ifindex`; `ctx` is the program's
/// context. Returns the helper's return code in the high half, the egress
/// ifindex in the low half ([`decode`]): an integer crosses a BPF call in
/// a register. A failure to read is an unverifiable answer.
///
/// Written for the verifier, which walks this body once for every state
/// the caller reaches it in: one bounds check per family, the addresses
/// copied from the packet into the request without a stop on the stack.
#[inline(always)]
pub fn lookup(ctx: *mut core::ffi::c_void, pkt: &Packet, family: u8, l3: usize, ifindex: u32) -> u64 {
    const FAILED: u64 = u64::MAX;
    let Some(p) = ISO_FIB.get_ptr_mut(0) else { return FAILED };
    // SAFETY: per-CPU slot; XDP does not nest on a CPU.
    let p = unsafe { &mut *p };
    // SAFETY: plain data; all-zero is a valid request (tot_len 0: no MTU
    // check can fail).
    *p = unsafe { core::mem::zeroed() };
    p.ifindex = ifindex;
    // The request wants the packet's addresses in network order, as
    // 32-bit words; the reply's source is the packet's destination.
    let words = |a: &[u8; 16]| -> [u32; 4] {
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ]
    };
    if family == FAMILY_V4 {
        let Some(ip) = pkt.header::<Ipv4Hdr>(l3) else { return FAILED };
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.dst_addr);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.src_addr);
    } else {
        let Some(ip) = pkt.header::<Ipv6Hdr>(l3) else { return FAILED };
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst = words(&ip.src_addr);
        // The kernel refuses (NOT_FWDED) a lookup from a multicast,
        // link-local or loopback source; a reply to a packet sent to such
        // an address of ours would leave from another one anyway.
        let ours = core::net::Ipv6Addr::from(ip.dst_addr);
        if !ours.is_multicast() && !ours.is_unicast_link_local() && !ours.is_loopback() {
            p.__bindgen_anon_3.ipv6_src = words(&ip.dst_addr);
        }
    }
    // SAFETY: `p` is a valid, writable request of the size given.
    let rc = unsafe { fib_lookup(ctx, p, core::mem::size_of::<bpf_fib_lookup>() as i32, fib::LOOKUP_SKIP_NEIGH) };
    (u64::from(rc as i32 as u32) << 32) | u64::from(p.ifindex)
}

/// Reads what [`lookup`] returned.
#[inline(always)]
pub fn decode(packed: u64) -> RouteBack {
    RouteBack::from_fib(i64::from((packed >> 32) as u32 as i32), packed as u32)
}
