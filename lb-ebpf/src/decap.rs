//! The DSR backend's side: opens the tunnel packets an edge sends to a VIP
//! and hands the inner packet to the kernel, as if it had arrived plain.
//! Only (edge address, VIP) pairs in `LB_DECAP` are opened; anything else
//! passes untouched (the kernel has no tunnel device and drops it), and a
//! tunnel packet that is not allowed is counted. Mirrors
//! `lb_common::balancer_model::decapsulate`.

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use lb_common::{
    balancer::{v4_key, DecapCounter, DecapKey},
    isolator::{FAMILY_V4, FAMILY_V6},
    wire::{bits, offset, *},
};

use crate::{
    maps::{LB_DECAP, LB_DECAP_COUNTERS},
    packet::{Ipv4Hdr, Ipv6Hdr, Macs, Packet},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    if let Some(opened) = open(ctx) {
        count(if opened { DecapCounter::Decapsulated } else { DecapCounter::Unknown });
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(c: DecapCounter) {
    if let Some(v) = LB_DECAP_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
}

/// `None`: not a tunnel packet (or one without a whole inner header);
/// `Some(false)`: a tunnel nobody configured, or the wrong inner version;
/// `Some(true)`: opened.
#[inline(always)]
fn open(ctx: &XdpContext) -> Option<bool> {
    let pkt = Packet::new(ctx);
    let l3 = ETH_HLEN;
    let (key, outer, ethertype) = match pkt.ethertype()? {
        ETH_P_IPV4 => {
            let ip: &Ipv4Hdr = pkt.header(l3)?;
            // Outer options or fragments: not what an edge sends.
            if ip.vihl != bits::IPV4_VIHL_PLAIN || ip.proto != IPPROTO_IPIP || u16::from_be_bytes(ip.frags) & bits::IPV4_FRAGMENT != 0 {
                return None;
            }
            let inner: &Ipv4Hdr = pkt.header(l3 + IPV4_MIN_HLEN)?;
            if inner.version() != 4 {
                return Some(false);
            }
            let key = DecapKey { outer_src: v4_key(ip.src_addr), inner_dst: v4_key(inner.dst_addr), family: FAMILY_V4, _pad: [0; 3] };
            (key, IPV4_MIN_HLEN, ETH_P_IPV4)
        }
        ETH_P_IPV6 => {
            let ip: &Ipv6Hdr = pkt.header(l3)?;
            if ip.version() != 6 || ip.next_hdr != IPPROTO_IPV6 {
                return None;
            }
            let inner: &Ipv6Hdr = pkt.header(l3 + IPV6_HLEN)?;
            if inner.version() != 6 {
                return Some(false);
            }
            let key = DecapKey { outer_src: ip.src_addr, inner_dst: inner.dst_addr, family: FAMILY_V6, _pad: [0; 3] };
            (key, IPV6_HLEN, ETH_P_IPV6)
        }
        _ => return None,
    };
    // SAFETY: read-only lookup.
    if unsafe { LB_DECAP.get(&key) }.is_none() {
        return Some(false);
    }
    let macs: &Macs = pkt.header(0)?;
    let (dst, src) = (macs.dst, macs.src);
    // SAFETY: the context is the program's own; shrinking the head by
    // less than the packet's length always succeeds or changes nothing.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, outer as i32) } != 0 {
        return Some(false);
    }
    let pkt = Packet::new(ctx);
    let macs: &mut Macs = pkt.header_mut(0)?;
    macs.dst = dst;
    macs.src = src;
    pkt.write(offset::ETH_TYPE, ethertype.to_be_bytes())?;
    Some(true)
}
