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
    balancer::LbCounter,
    csum, ip_header,
    isolator::FAMILY_V4,
    wire::{bits, offset, *},
};

use super::{count, drop, parse::L3, scratch::Scratch};
use crate::packet::{Ipv4Hdr, Macs, Packet};

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
    let malformed = LbCounter::Malformed;
    let pkt = Packet::new(ctx);
    let macs: &Macs = pkt.header(0).ok_or(malformed)?;
    // Back where the packet came from.
    let (dst, src) = (macs.src, macs.dst);
    let eth = |pkt: &Packet, ethertype: u16| -> Option<()> {
        let macs: &mut Macs = pkt.header_mut(0)?;
        macs.dst = dst;
        macs.src = src;
        pkt.write(offset::ETH_TYPE, ethertype.to_be_bytes())
    };
    if p.family == FAMILY_V4 {
        let ip: &Ipv4Hdr = pkt.header(L3).ok_or(malformed)?;
        if u16::from_be_bytes(ip.frags) & bits::IPV4_DF == 0 {
            return Err(LbCounter::TooBig);
        }
        let quote = p.l4 - L3 + ICMP_QUOTE_L4;
        if quote > MAX_QUOTE_V4 {
            return Err(malformed);
        }
        let icmp = L3 + IPV4_MIN_HLEN;
        let len = icmp + ICMP_HLEN + quote;
        let pkt = adjust(ctx, -((IPV4_MIN_HLEN + ICMP_HLEN) as i32), len)?;
        let mut h = [0u8; IPV4_MIN_HLEN];
        ip_header::ipv4(&mut h, IPPROTO_ICMP, &p.dst, &p.src, (len - icmp) as u16);
        let m = mtu.to_be_bytes();
        (|| {
            eth(&pkt, ETH_P_IPV4)?;
            pkt.write(L3, h)?;
            pkt.write(icmp, ip_header::icmp(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, [0, 0, m[0], m[1]]))?;
            let sum = sum_packet::<{ (ICMP_HLEN + MAX_QUOTE_V4) / 2 }>(&pkt, icmp, ICMP_HLEN + quote, 0)?;
            pkt.write(icmp + offset::ICMP_CHECK, (!csum::fold(sum)).to_be_bytes())
        })()
        .ok_or(malformed)
    } else {
        let icmp = L3 + IPV6_HLEN;
        let len = icmp + ICMP_HLEN + TOO_BIG_QUOTE_V6;
        let pkt = adjust(ctx, -((IPV6_HLEN + ICMP_HLEN) as i32), len)?;
        let payload = (ICMP_HLEN + TOO_BIG_QUOTE_V6) as u16;
        let mut h = [0u8; IPV6_HLEN];
        ip_header::ipv6(&mut h, IPPROTO_ICMPV6, &p.dst, &p.src, payload);
        (|| {
            eth(&pkt, ETH_P_IPV6)?;
            pkt.write(L3, h)?;
            pkt.write(icmp, ip_header::icmp(ICMPV6_PACKET_TOO_BIG, 0, u32::from(mtu).to_be_bytes()))?;
            let sum = ip_header::icmpv6_pseudo_sum(&p.dst, &p.src, u32::from(payload));
            let sum = sum_packet::<{ (ICMP_HLEN + TOO_BIG_QUOTE_V6) / 2 }>(&pkt, icmp, ICMP_HLEN + TOO_BIG_QUOTE_V6, sum)?;
            pkt.write(icmp + offset::ICMP_CHECK, (!csum::fold(sum)).to_be_bytes())
        })()
        .ok_or(malformed)
    }
}
