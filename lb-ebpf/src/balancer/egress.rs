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
use crate::{
    bytes::copy6,
    maps::{LB_EGRESS, LB_HOPS, LB_NET_GENERATION},
    packet::{Macs, Packet},
};

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

/// The route to the placed backend for the parsed packet grown by `extra`
/// bytes of headers, into `s.hop`: the backend's kept hop while it is
/// valid (rule 7: the routing generation and the backend's are the ones
/// it was filled under, the same ingress interface), else a FIB lookup
/// (the kernel checks the length against the route's MTU), whose route is
/// kept with its MTU. A packet too big leaves the MTU in `s.fib`
/// (`mtu_result`) for the ICMP answer.
#[inline(always)]
pub fn route(ctx: &XdpContext, s: &mut Scratch, extra: usize) -> Result<(), LbCounter> {
    let tot_len = (s.parsed.ip_len + extra) as u16;
    let generation = LB_NET_GENERATION.get(0).map_or(0, |g| *g);
    let Some(kept) = LB_HOPS.get_ptr_mut(s.placed.id) else { return lookup(ctx, s, tot_len) };
    // SAFETY: points into a live array element; a fill racing on another
    // CPU writes the same lookup's answer.
    let kept = unsafe { &mut *kept };
    if generation != 0 && kept.net_generation == generation && kept.backend_generation == s.placed.generation && kept.in_ifindex == s.parsed.ifindex {
        if tot_len > kept.mtu {
            s.fib.__bindgen_anon_1.mtu_result = kept.mtu;
            return Err(LbCounter::TooBig);
        }
        set_hop(&mut s.hop, kept.out_ifindex, &kept.smac, &kept.dmac);
        return Ok(());
    }
    lookup(ctx, s, tot_len)?;
    if generation == 0 {
        return Ok(());
    }
    // The route's MTU: the answer for the longest packet (too big, with
    // the MTU; or a route, at least 65 535).
    let mtu = match fib(ctx, s, u16::MAX) {
        // SAFETY: the helper wrote the MTU into the union on this answer.
        FIB_FRAG_NEEDED => unsafe { s.fib.__bindgen_anon_1.mtu_result },
        FIB_SUCCESS => u16::MAX,
        _ => return Ok(()),
    };
    kept.backend_generation = s.placed.generation;
    kept.in_ifindex = s.parsed.ifindex;
    kept.out_ifindex = s.hop.ifindex;
    kept.mtu = mtu;
    copy6(&mut kept.smac, &s.hop.smac);
    copy6(&mut kept.dmac, &s.hop.dmac);
    kept.net_generation = generation;
    Ok(())
}

/// Fills `hop` with the MACs a word at a time (a struct assignment between
/// two map values is a `memmove`, a byte loop: see `bytes`).
#[inline(always)]
fn set_hop(hop: &mut Hop, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) {
    hop.ifindex = ifindex;
    copy6(&mut hop.smac, smac);
    copy6(&mut hop.dmac, dmac);
}

/// A FIB lookup for a packet of `tot_len` bytes, into `s.hop`.
#[inline(always)]
fn lookup(ctx: &XdpContext, s: &mut Scratch, tot_len: u16) -> Result<(), LbCounter> {
    match fib(ctx, s, tot_len) {
        FIB_SUCCESS => {
            set_hop(&mut s.hop, s.fib.ifindex, &s.fib.smac, &s.fib.dmac);
            Ok(())
        }
        FIB_NO_NEIGH => Err(LbCounter::NoNeighbour),
        FIB_FRAG_NEEDED => Err(LbCounter::TooBig),
        _ => Err(LbCounter::NoRoute),
    }
}

/// `bpf_fib_lookup` to the placed backend from the parsed packet's
/// ingress interface, with `s.fib` as request and answer.
#[inline(never)]
fn fib(ctx: &XdpContext, s: &mut Scratch, tot_len: u16) -> i64 {
    let (p, dst, params) = (&s.parsed, &s.placed.addr, &mut s.fib);
    // SAFETY: plain data; all-zero is a valid request.
    *params = unsafe { core::mem::zeroed() };
    params.ifindex = p.ifindex;
    params.__bindgen_anon_1.tot_len = tot_len;
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
    unsafe { fib_lookup(ctx.as_ptr(), params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) }
}

/// Writes the hop's MACs and sends the packet: back out of the ingress
/// interface (`XDP_TX`) or redirected to an egress interface.
#[inline(always)]
pub fn send(pkt: &Packet, hop: &Hop, ifindex: u32) -> Result<u32, LbCounter> {
    let macs: &mut Macs = pkt.header_mut(0).ok_or(LbCounter::Malformed)?;
    copy6(&mut macs.dst, &hop.dmac);
    copy6(&mut macs.src, &hop.smac);
    if hop.ifindex == ifindex {
        return Ok(xdp_action::XDP_TX);
    }
    // An interface missing from the device map makes the helper return
    // the low bits of the flags: XDP_DROP, counted by the caller.
    LB_EGRESS.redirect(hop.ifindex, u64::from(xdp_action::XDP_DROP)).map_err(|_| LbCounter::NoEgress)
}
