//! The route back to a packet's source, from the kernel's FIB: the lookup
//! a reply would make (destination = the packet's source, source = its
//! destination), as if it arrived on the ingress interface, so `ip rule`s
//! that match the incoming interface or the source apply as they would.
//! Asked only for sources the allow-list trusts.

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::generated::bpf_fib_lookup as fib_lookup, macros::map, maps::PerCpuArray,
};
use lb_common::isolator::{fib, RouteBack, FAMILY_V4};

use crate::packet::Packet;

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
    let word = |h: *const u8, at: usize| -> u32 {
        // SAFETY: the caller checked the whole header is in the packet.
        unsafe { core::ptr::read_unaligned(h.add(at) as *const u32) }
    };
    if family == FAMILY_V4 {
        let Some(h) = pkt.at::<20>(l3) else { return FAILED };
        let h = h as *const u8;
        p.family = AF_INET;
        // Network order in, network order out.
        p.__bindgen_anon_3.ipv4_src = word(h, 16);
        p.__bindgen_anon_4.ipv4_dst = word(h, 12);
    } else {
        let Some(h) = pkt.at::<40>(l3) else { return FAILED };
        let h = h as *const u8;
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst = [word(h, 8), word(h, 12), word(h, 16), word(h, 20)];
        // The kernel refuses (NOT_FWDED) a lookup from a multicast,
        // link-local or loopback source; a reply to a packet sent to such
        // an address of ours would leave from another one anyway.
        let d = [word(h, 24), word(h, 28), word(h, 32), word(h, 36)];
        let first = u32::from_be(d[0]);
        let loopback = d[0] | d[1] | d[2] == 0 && u32::from_be(d[3]) == 1;
        if first >> 24 != 0xff && first >> 22 != 0xfe80 >> 6 && !loopback {
            p.__bindgen_anon_3.ipv6_src = d;
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
