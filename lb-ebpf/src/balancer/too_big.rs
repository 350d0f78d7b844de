//! Rule 7's answer to a packet too big for the path to its backend: the
//! packet is turned, in place, into an ICMP error from the VIP back to the
//! client ("fragmentation needed" / "packet too big", with the MTU the
//! client may use) and sent back out with `XDP_TX`. Path MTU discovery then
//! works through the balancer, also across the DSR tunnel's overhead.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    balancer::{LbCounter, TUNNEL_TTL},
    balancer_model::TOO_BIG_QUOTE_V6,
    csum,
    isolator::FAMILY_V4,
    wire::*,
};

use super::{count, drop, parse::L3, scratch::Scratch};
use crate::packet::Packet;

/// The longest IPv4 quote: a 60-byte header and 8 bytes.
const MAX_QUOTE_V4: usize = 68;

/// Answers the parsed packet with an ICMP error carrying the route's MTU
/// (from the failed FIB lookup in `s.fib`) minus `extra` header bytes.
#[inline(never)]
pub fn answer(ctx: &XdpContext, s: &mut Scratch, extra: usize) -> u32 {
    // SAFETY: the FIB lookup that failed with FRAG_NEEDED set this member.
    let mtu = unsafe { s.fib.__bindgen_anon_1.mtu_result }.saturating_sub(extra as u16);
    match build(ctx, s, mtu) {
        Ok(()) => {
            count(LbCounter::IcmpTooBigSent);
            xdp_action::XDP_TX
        }
        Err(c) => drop(c),
    }
}

fn adjust(ctx: &XdpContext, head: i32, len: usize) -> Result<Packet, LbCounter> {
    // SAFETY: the context is the program's own; on failure nothing moved.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, head) } != 0 {
        return Err(LbCounter::NoHeadroom);
    }
    // Kept opaque: LLVM would fold `len - (end - start)` into pointer
    // arithmetic on an unbounded scalar, which the verifier refuses.
    let now = crate::packet::opaque(Packet::new(ctx).len());
    // SAFETY: as above; the packet only shrinks.
    if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, len as i32 - now as i32) } != 0 {
        return Err(LbCounter::NoHeadroom);
    }
    Ok(Packet::new(ctx))
}

/// Sums the 16-bit words of `[from, from + len)` (`len` even, at most
/// `max`).
#[inline(always)]
fn sum_packet<const MAX_WORDS: usize>(pkt: &Packet, from: usize, len: usize, mut sum: u32) -> Option<u32> {
    for i in 0..MAX_WORDS {
        if 2 * i >= len {
            break;
        }
        sum += u32::from(pkt.be16_at(from + 2 * i)?);
    }
    Some(sum)
}

#[inline(always)]
fn build(ctx: &XdpContext, s: &Scratch, mtu: u16) -> Result<(), LbCounter> {
    let p = &s.parsed;
    let pkt = Packet::new(ctx);
    let macs: [u8; 12] = pkt.bytes_at(0).ok_or(LbCounter::Malformed)?;
    let eth = |pkt: &Packet, ethertype: u16| -> Option<()> {
        pkt.write(0, [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]])?;
        pkt.write(6, [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]])?;
        pkt.write(12, ethertype.to_be_bytes())
    };
    let malformed = LbCounter::Malformed;
    if p.family == FAMILY_V4 {
        if pkt.be16_at(L3 + 6).ok_or(malformed)? & 0x4000 == 0 {
            return Err(LbCounter::TooBig);
        }
        let quote = p.l4 - L3 + 8;
        if quote > MAX_QUOTE_V4 {
            return Err(malformed);
        }
        let icmp = L3 + IPV4_MIN_HLEN;
        let len = icmp + ICMP_HLEN + quote;
        let pkt = adjust(ctx, -((IPV4_MIN_HLEN + ICMP_HLEN) as i32), len)?;
        let total = ((len - L3) as u16).to_be_bytes();
        let mut h = [0x45, 0, total[0], total[1], 0, 0, 0, 0, TUNNEL_TTL, IPPROTO_ICMP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h[12..16].copy_from_slice(&p.dst[..4]);
        h[16..20].copy_from_slice(&p.src[..4]);
        let c = csum::ipv4_header(&h).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        let m = mtu.to_be_bytes();
        (|| {
            eth(&pkt, ETH_P_IPV4)?;
            pkt.write(L3, h)?;
            pkt.write(icmp, [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m[0], m[1]])?;
            let sum = sum_packet::<{ (ICMP_HLEN + MAX_QUOTE_V4) / 2 }>(&pkt, icmp, ICMP_HLEN + quote, 0)?;
            pkt.write(icmp + 2, (!csum::fold(sum)).to_be_bytes())
        })()
        .ok_or(malformed)
    } else {
        let icmp = L3 + IPV6_HLEN;
        let len = icmp + ICMP_HLEN + TOO_BIG_QUOTE_V6;
        let pkt = adjust(ctx, -((IPV6_HLEN + ICMP_HLEN) as i32), len)?;
        let m = u32::from(mtu).to_be_bytes();
        (|| {
            eth(&pkt, ETH_P_IPV6)?;
            pkt.write(L3, [0x60, 0, 0, 0, 0, (ICMP_HLEN + TOO_BIG_QUOTE_V6) as u8, IPPROTO_ICMPV6, TUNNEL_TTL])?;
            pkt.write(L3 + 8, p.dst)?;
            pkt.write(L3 + 24, p.src)?;
            pkt.write(icmp, [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m[0], m[1], m[2], m[3]])?;
            let mut sum = csum::sum_words(&p.dst, csum::sum_words(&p.src, 0));
            sum += (ICMP_HLEN + TOO_BIG_QUOTE_V6) as u32 + u32::from(IPPROTO_ICMPV6);
            let sum = sum_packet::<{ (ICMP_HLEN + TOO_BIG_QUOTE_V6) / 2 }>(&pkt, icmp, ICMP_HLEN + TOO_BIG_QUOTE_V6, sum)?;
            pkt.write(icmp + 2, (!csum::fold(sum)).to_be_bytes())
        })()
        .ok_or(malformed)
    }
}
