//! Rule 6 of the model: what a forwarded packet becomes — translated
//! addresses and ports with incrementally updated checksums (`nat`, both
//! ways), or an outer tunnel header in front (`dsr`).

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use lb_common::{
    balancer::{Globals, TUNNEL_TTL},
    csum::{self, Delta},
    isolator::FAMILY_V4,
    wire::{bits, offset, *},
};

use super::parse::{l4_check, Parsed, L3};
use crate::{
    bytes::{copy16, ne16, set_ne16, set_word, store_words, word, words16},
    packet::{Ipv4Hdr, Ipv6Hdr, Packet, Ports},
};

/// The addresses and ports a translated packet gets.
pub struct Translation {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// Applies `t` (TTL − 1); `None` if the headers were not all there.
#[inline(always)]
pub fn nat(pkt: &Packet, p: &Parsed, t: &Translation) -> Option<()> {
    // Checksums are updated a word at a time, in memory order
    // (`csum::Delta`): no byte of an address is handled on its own.
    let check_at = p.l4 + l4_check(p.proto).0;
    let l4c = pkt.at::<2>(check_at)? as *mut [u8; 2];
    // SAFETY: `at` checked both bytes are inside the packet.
    let l4c = unsafe { &mut *l4c };
    let udp_without_checksum = p.proto == IPPROTO_UDP && ne16(l4c) == 0 && p.family == FAMILY_V4;
    let mut l4 = Delta::default();
    if p.family == FAMILY_V4 {
        let ip: &mut Ipv4Hdr = pkt.header_mut(L3)?;
        let (src, dst) = (word(&t.src), word(&t.dst));
        l4.word32(word(&ip.src_addr), src);
        l4.word32(word(&ip.dst_addr), dst);
        let mut ipd = l4;
        let ttl_proto = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.ttl = ip.ttl.wrapping_sub(1);
        ipd.word16(ttl_proto, u16::from_ne_bytes([ip.ttl, ip.proto]));
        let check = ipd.apply(ne16(&ip.check));
        set_ne16(&mut ip.check, check);
        set_word(&mut ip.src_addr, src);
        set_word(&mut ip.dst_addr, dst);
    } else {
        let ip: &mut Ipv6Hdr = pkt.header_mut(L3)?;
        sum16(&mut l4, &ip.src_addr, &t.src);
        sum16(&mut l4, &ip.dst_addr, &t.dst);
        ip.hop_limit = ip.hop_limit.wrapping_sub(1);
        copy16(&mut ip.src_addr, &t.src);
        copy16(&mut ip.dst_addr, &t.dst);
    }
    let ports: &mut Ports = pkt.header_mut(p.l4)?;
    let [s0, s1] = t.sport.to_be_bytes();
    let [d0, d1] = t.dport.to_be_bytes();
    let new_ports = u32::from_ne_bytes([s0, s1, d0, d1]);
    l4.word32(ports.word(), new_ports);
    ports.set_word(new_ports);
    if !udp_without_checksum {
        let mut c = l4.apply(ne16(l4c));
        if p.proto == IPPROTO_UDP {
            c = csum::udp_nonzero(c);
        }
        set_ne16(l4c, c);
    }
    Some(())
}

/// Adds the change of a 16-byte address to `d`.
#[inline(always)]
fn sum16(d: &mut Delta, old: &[u8; 16], new: &[u8; 16]) {
    let (old, new) = (words16(old), words16(new));
    let mut i = 0;
    while i < 4 {
        d.word32(old[i], new[i]);
        i += 1;
    }
}

/// Puts an outer header from the edge's inside address to `backend` in
/// front of the IP packet; `None` without headroom. The MACs are not set
/// yet, and the caller must re-read the packet's bounds.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, p: &Parsed, g: &Globals, backend: &[u8; 16]) -> Option<()> {
    let v4 = p.family == FAMILY_V4;
    let outer: i32 = if v4 { IPV4_MIN_HLEN as i32 } else { IPV6_HLEN as i32 };
    // SAFETY: the context is the program's own; on failure nothing moved.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -outer) } != 0 {
        return None;
    }
    let pkt = Packet::new(ctx);
    // The outer header is written in place, a word at a time; the model
    // builds the same bytes with `lb_common::ip_header`.
    if v4 {
        pkt.write(offset::ETH_TYPE, ETH_P_IPV4.to_be_bytes())?;
        let ip: &mut Ipv4Hdr = pkt.header_mut(L3)?;
        let [l0, l1] = (p.ip_len as u16 + IPV4_MIN_HLEN as u16).to_be_bytes();
        let (src, dst) = (word(&g.inside_v4), word(backend));
        let (vihl_len, ttl_proto) = ([bits::IPV4_VIHL_PLAIN, 0, l0, l1], [TUNNEL_TTL, IPPROTO_IPIP]);
        // The one's-complement sum is the same in either byte order
        // (RFC 1071 2(B)): summed in memory order, the checksum comes out
        // in memory order too.
        let ne = |b: [u8; 2]| u32::from(u16::from_ne_bytes(b));
        let sum = ne([vihl_len[0], vihl_len[1]]) + ne([l0, l1]) + ne(ttl_proto) + (src & 0xffff) + (src >> 16) + (dst & 0xffff) + (dst >> 16);
        let [c0, c1] = (!csum::fold(sum)).to_ne_bytes();
        let words = [u32::from_ne_bytes(vihl_len), 0, u32::from_ne_bytes([ttl_proto[0], ttl_proto[1], c0, c1]), src, dst];
        // SAFETY: the whole header is in the packet (`header_mut`).
        unsafe { store_words(ip as *mut Ipv4Hdr as *mut u8, words) };
    } else {
        pkt.write(offset::ETH_TYPE, ETH_P_IPV6.to_be_bytes())?;
        let ip: &mut Ipv6Hdr = pkt.header_mut(L3)?;
        let [l0, l1] = (p.ip_len as u16).to_be_bytes();
        let words = [u32::from_ne_bytes([bits::IPV6_VERSION_BYTE, 0, 0, 0]), u32::from_ne_bytes([l0, l1, IPPROTO_IPV6, TUNNEL_TTL])];
        // SAFETY: as above.
        unsafe { store_words(ip as *mut Ipv6Hdr as *mut u8, words) };
        copy16(&mut ip.src_addr, &g.inside_v6);
        copy16(&mut ip.dst_addr, backend);
    }
    Some(())
}
