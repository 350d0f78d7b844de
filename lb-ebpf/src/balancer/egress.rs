//! Rule 7 of the model: the next hop from the kernel's routing table, and
//! out of which interface the packet leaves.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{balancer::LbCounter, isolator::FAMILY_V4};

use super::scratch::Scratch;
use crate::{maps::LB_EGRESS, packet::Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
const FIB_FRAG_NEEDED: i64 = 8;

/// Where a packet goes next.
#[derive(Default)]
pub struct Hop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Looks up the route to the placed backend for the parsed packet grown
/// by `extra` bytes of headers (the kernel checks the length against the
/// route's MTU) and fills `s.hop`.
#[inline(never)]
pub fn route(ctx: &XdpContext, s: &mut Scratch, extra: usize) -> Result<(), LbCounter> {
    let (p, dst, params) = (&s.parsed, &s.placed.addr, &mut s.fib);
    // SAFETY: plain data; all-zero is a valid request.
    *params = unsafe { core::mem::zeroed() };
    params.ifindex = p.ifindex;
    params.__bindgen_anon_1.tot_len = (p.ip_len + extra) as u16;
    if p.family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_4.ipv6_dst = [
            u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]),
            u32::from_ne_bytes([dst[4], dst[5], dst[6], dst[7]]),
            u32::from_ne_bytes([dst[8], dst[9], dst[10], dst[11]]),
            u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]),
        ];
    }
    // SAFETY: `params` is a valid, writable request of the size given.
    let rc = unsafe {
        fib_lookup(ctx.as_ptr(), params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    match rc {
        FIB_SUCCESS => {
            s.hop = Hop { ifindex: params.ifindex, smac: params.smac, dmac: params.dmac };
            Ok(())
        }
        FIB_NO_NEIGH => Err(LbCounter::NoNeighbour),
        FIB_FRAG_NEEDED => Err(LbCounter::TooBig),
        _ => Err(LbCounter::NoRoute),
    }
}

/// Writes the hop's MACs and sends the packet: back out of the ingress
/// interface (`XDP_TX`) or redirected to an egress interface.
#[inline(always)]
pub fn send(pkt: &Packet, hop: &Hop, ifindex: u32) -> Result<u32, LbCounter> {
    if pkt.write(0, hop.dmac).is_none() || pkt.write(6, hop.smac).is_none() {
        return Err(LbCounter::Malformed);
    }
    if hop.ifindex == ifindex {
        return Ok(xdp_action::XDP_TX);
    }
    // An interface missing from the device map makes the helper return
    // the low bits of the flags: XDP_DROP, counted by the caller.
    LB_EGRESS.redirect(hop.ifindex, u64::from(xdp_action::XDP_DROP)).map_err(|_| LbCounter::NoEgress)
}
