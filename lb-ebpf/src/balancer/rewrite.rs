//! Rule 6 of the model: what a forwarded packet becomes — translated
//! addresses and ports with incrementally updated checksums (`nat`, both
//! ways), or an outer tunnel header in front (`dsr`).

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use lb_common::{
    balancer::Globals,
    csum,
    ip_header::{outer_ipv4, outer_ipv6},
    isolator::FAMILY_V4,
    wire::{offset, *},
};

use super::parse::{l4_check, Parsed, L3};
use crate::packet::{concat, Ipv4Hdr, Ipv6Hdr, Packet, Ports};

/// The addresses and ports a translated packet gets.
pub struct Translation {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// Applies `t` (TTL − 1); `false` if the headers were not all there.
#[inline(never)]
pub fn nat(pkt: &Packet, p: &Parsed, t: &Translation) -> bool {
    translate(pkt, p, t).is_some()
}

#[inline(always)]
fn translate(pkt: &Packet, p: &Parsed, t: &Translation) -> Option<()> {
    let (src, dst) = (&t.src, &t.dst);
    let check_at = p.l4 + l4_check(p.proto).0;
    let mut l4c = pkt.be16_at(check_at)?;
    let udp_without_checksum = p.proto == IPPROTO_UDP && l4c == 0 && p.family == FAMILY_V4;
    if p.family == FAMILY_V4 {
        let ip: &mut Ipv4Hdr = pkt.header_mut(L3)?;
        let old = concat::<4, 8>(&ip.src_addr, &ip.dst_addr);
        let new = concat::<4, 8>(&[src[0], src[1], src[2], src[3]], &[dst[0], dst[1], dst[2], dst[3]]);
        let mut ipc = csum::update_bytes(ip.checksum(), &old, &new);
        l4c = csum::update_bytes(l4c, &old, &new);
        let ttl_proto = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.ttl = ip.ttl.wrapping_sub(1);
        ipc = csum::update16(ipc, ttl_proto, u16::from_be_bytes([ip.ttl, ip.proto]));
        ip.set_checksum(ipc);
        ip.src_addr.copy_from_slice(&new[..4]);
        ip.dst_addr.copy_from_slice(&new[4..]);
    } else {
        let ip: &mut Ipv6Hdr = pkt.header_mut(L3)?;
        let old = concat::<16, 32>(&ip.src_addr, &ip.dst_addr);
        let new = concat::<16, 32>(src, dst);
        l4c = csum::update_bytes(l4c, &old, &new);
        ip.hop_limit = ip.hop_limit.wrapping_sub(1);
        ip.src_addr = *src;
        ip.dst_addr = *dst;
    }
    let ports: &mut Ports = pkt.header_mut(p.l4)?;
    let old_ports = concat::<2, 4>(&ports.source, &ports.dest);
    ports.source = t.sport.to_be_bytes();
    ports.dest = t.dport.to_be_bytes();
    l4c = csum::update_bytes(l4c, &old_ports, &concat::<2, 4>(&ports.source, &ports.dest));
    if !udp_without_checksum {
        if p.proto == IPPROTO_UDP {
            l4c = csum::udp_nonzero(l4c);
        }
        pkt.write(check_at, l4c.to_be_bytes())?;
    }
    Some(())
}

/// Puts an outer header from the edge's inside address to `backend` in
/// front of the IP packet; `false` without headroom. The MACs are not set
/// yet, and the caller must re-read the packet's bounds.
#[inline(never)]
pub fn encapsulate(ctx: &XdpContext, p: &Parsed, g: &Globals, backend: &[u8; 16]) -> bool {
    push_header(ctx, p, g, backend).is_some()
}

#[inline(always)]
fn push_header(ctx: &XdpContext, p: &Parsed, g: &Globals, backend: &[u8; 16]) -> Option<()> {
    let v4 = p.family == FAMILY_V4;
    let outer: i32 = if v4 { IPV4_MIN_HLEN as i32 } else { IPV6_HLEN as i32 };
    // SAFETY: the context is the program's own; on failure nothing moved.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -outer) } != 0 {
        return None;
    }
    let pkt = Packet::new(ctx);
    if v4 {
        let mut h = [0u8; 20];
        outer_ipv4(&mut h, g.inside_v4, backend, p.ip_len as u16);
        pkt.write(offset::ETH_TYPE, ETH_P_IPV4.to_be_bytes())?;
        pkt.write(L3, h)?;
    } else {
        let mut h = [0u8; 40];
        outer_ipv6(&mut h, &g.inside_v6, backend, p.ip_len as u16);
        pkt.write(offset::ETH_TYPE, ETH_P_IPV6.to_be_bytes())?;
        pkt.write(L3, h)?;
    }
    Some(())
}
