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
    wire::*,
};

use crate::{
    maps::{LB_DECAP, LB_DECAP_COUNTERS},
    packet::Packet,
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

/// `None`: not a tunnel packet; `Some(false)`: a tunnel nobody configured;
/// `Some(true)`: opened.
#[inline(always)]
fn open(ctx: &XdpContext) -> Option<bool> {
    let pkt = Packet::new(ctx);
    let l3 = ETH_HLEN;
    let (key, outer, ethertype) = match pkt.be16_at(12)? {
        ETH_P_IPV4 => {
            let vihl = pkt.be16_at(l3)? >> 8;
            let proto = pkt.be16_at(l3 + 8)? as u8;
            let frag = pkt.be16_at(l3 + 6)?;
            // Outer options or fragments: not what an edge sends.
            if vihl != 0x45 || proto != IPPROTO_IPIP || frag & 0x3fff != 0 {
                return None;
            }
            let inner = l3 + IPV4_MIN_HLEN;
            if pkt.be16_at(inner)? >> 12 != 4 {
                return Some(false);
            }
            let key = DecapKey {
                outer_src: v4_key(pkt.bytes_at::<4>(l3 + 12)?),
                inner_dst: v4_key(pkt.bytes_at::<4>(inner + 16)?),
                family: FAMILY_V4,
                _pad: [0; 3],
            };
            (key, IPV4_MIN_HLEN, ETH_P_IPV4)
        }
        ETH_P_IPV6 => {
            let next = (pkt.be16_at(l3 + 6)? >> 8) as u8;
            if pkt.be16_at(l3)? >> 12 != 6 || next != IPPROTO_IPV6 {
                return None;
            }
            let inner = l3 + IPV6_HLEN;
            if pkt.be16_at(inner)? >> 12 != 6 {
                return Some(false);
            }
            let key = DecapKey {
                outer_src: pkt.bytes_at::<16>(l3 + 8)?,
                inner_dst: pkt.bytes_at::<16>(inner + 24)?,
                family: FAMILY_V6,
                _pad: [0; 3],
            };
            (key, IPV6_HLEN, ETH_P_IPV6)
        }
        _ => return None,
    };
    // SAFETY: read-only lookup.
    if unsafe { LB_DECAP.get(&key) }.is_none() {
        return Some(false);
    }
    let macs: [u8; 12] = pkt.bytes_at(0)?;
    // SAFETY: the context is the program's own; shrinking the head by
    // less than the packet's length always succeeds or changes nothing.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, outer as i32) } != 0 {
        return Some(false);
    }
    let pkt = Packet::new(ctx);
    pkt.write(0, macs)?;
    pkt.write(12, ethertype.to_be_bytes())?;
    Some(true)
}
