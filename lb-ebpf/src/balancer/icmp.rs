//! Rule 9 of the model: path-MTU ICMP errors about a balanced flow go to
//! the flow's backend, so path MTU discovery works through the balancer.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    balancer::{v4_key, FlowKey, LbCounter, Mode, ServiceKey},
    csum,
    isolator::{FAMILY_V4, FAMILY_V6},
    wire::*,
};

use super::{count, drop, egress, flow, parse::{l4_check, L3}, rewrite, scratch::Scratch};
use crate::{
    maps::{LB_GLOBALS, LB_SERVICES},
    packet::Packet,
};

/// A path-MTU ICMP error and the headers of the packet it quotes.
#[derive(Default)]
pub struct IcmpError {
    pub icmp: usize,
    pub ttl: u8,
    pub outer_dst: [u8; 16],
    pub inner_l3: usize,
    pub inner_l4: usize,
    pub inner_proto: u8,
    pub inner_src: [u8; 16],
    pub inner_dst: [u8; 16],
    pub inner_sport: u16,
    pub inner_dport: u16,
    /// The ICMP checksum while a translation updates it.
    pub check: u16,
}

/// Fills `s.icmp` (and family, length, ifindex in `s.parsed`); `None` if
/// the packet is not an ICMP path-MTU error quoting TCP/UDP, whole.
#[inline(always)]
fn parse(pkt: &Packet, s: &mut Scratch) -> Option<()> {
    let e = &mut s.icmp;
    let p = &mut s.parsed;
    match pkt.be16_at(12)? {
        ETH_P_IPV4 => {
            let vihl = (pkt.be16_at(L3)? >> 8) as u8;
            let ihl = usize::from(vihl & 0x0f) * 4;
            let ttl_proto = pkt.be16_at(L3 + 8)?;
            if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || ttl_proto as u8 != IPPROTO_ICMP || pkt.be16_at(L3 + 6)? & 0x3fff != 0 {
                return None;
            }
            e.icmp = L3 + ihl;
            if pkt.be16_at(e.icmp)? != u16::from_be_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED]) {
                return None;
            }
            let inner = e.icmp + ICMP_HLEN;
            let ivihl = (pkt.be16_at(inner)? >> 8) as u8;
            let iihl = usize::from(ivihl & 0x0f) * 4;
            let iproto = pkt.be16_at(inner + 8)? as u8;
            if ivihl >> 4 != 4 || iihl < IPV4_MIN_HLEN || (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP) {
                return None;
            }
            p.family = FAMILY_V4;
            p.ip_len = usize::from(pkt.be16_at(L3 + 2)?);
            e.ttl = (ttl_proto >> 8) as u8;
            e.outer_dst = v4_key(pkt.bytes_at::<4>(L3 + 16)?);
            e.inner_l3 = inner;
            e.inner_l4 = inner + iihl;
            e.inner_proto = iproto;
            e.inner_src = v4_key(pkt.bytes_at::<4>(inner + 12)?);
            e.inner_dst = v4_key(pkt.bytes_at::<4>(inner + 16)?);
        }
        ETH_P_IPV6 => {
            let next_hop = pkt.be16_at(L3 + 6)?;
            if pkt.be16_at(L3)? >> 12 != 6 || (next_hop >> 8) as u8 != IPPROTO_ICMPV6 {
                return None;
            }
            e.icmp = L3 + IPV6_HLEN;
            if (pkt.be16_at(e.icmp)? >> 8) as u8 != ICMPV6_PACKET_TOO_BIG {
                return None;
            }
            let inner = e.icmp + ICMP_HLEN;
            let iproto = (pkt.be16_at(inner + 6)? >> 8) as u8;
            if pkt.be16_at(inner)? >> 12 != 6 || (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP) {
                return None;
            }
            p.family = FAMILY_V6;
            p.ip_len = IPV6_HLEN + usize::from(pkt.be16_at(L3 + 4)?);
            e.ttl = next_hop as u8;
            e.outer_dst = pkt.bytes_at::<16>(L3 + 24)?;
            e.inner_l3 = inner;
            e.inner_l4 = inner + IPV6_HLEN;
            e.inner_proto = iproto;
            e.inner_src = pkt.bytes_at::<16>(inner + 8)?;
            e.inner_dst = pkt.bytes_at::<16>(inner + 24)?;
        }
        _ => return None,
    }
    e.inner_sport = pkt.be16_at(e.inner_l4)?;
    e.inner_dport = pkt.be16_at(e.inner_l4 + 2)?;
    if L3 + p.ip_len > pkt.len() || e.inner_l4 + 4 > L3 + p.ip_len {
        return None;
    }
    Some(())
}

/// `None`: not a path-MTU error for a balanced flow (next stage).
#[inline(never)]
pub fn handle(ctx: &XdpContext, pkt: &Packet, s: &mut Scratch) -> Option<u32> {
    parse(pkt, s)?;
    let e = &s.icmp;
    if e.outer_dst != e.inner_src {
        return None;
    }
    s.service = ServiceKey { addr: e.inner_src, port: e.inner_sport, proto: e.inner_proto, family: s.parsed.family };
    // SAFETY: services are replaced whole by user space.
    let svc = unsafe { LB_SERVICES.get(&s.service) }?;
    s.flow = FlowKey {
        src: e.inner_dst,
        dst: e.inner_src,
        src_port: e.inner_dport,
        dst_port: e.inner_sport,
        proto: e.inner_proto,
        family: s.parsed.family,
        _pad: [0; 2],
    };
    let g = LB_GLOBALS.get(0);
    let (true, Some(g)) = (flow::known(&s.flow, &mut s.placed), g) else {
        count(LbCounter::IcmpUnmatched);
        return None;
    };
    let mode = Mode::from_raw(svc.mode).unwrap_or(Mode::Nat);
    if mode == Mode::Nat && s.icmp.ttl <= 1 {
        count(LbCounter::TtlExpired);
        return Some(xdp_action::XDP_PASS);
    }
    let extra = match mode {
        Mode::Dsr if s.parsed.family == FAMILY_V4 => IPV4_MIN_HLEN,
        Mode::Dsr => IPV6_HLEN,
        _ => 0,
    };
    if let Err(c) = egress::route(ctx, s, extra) {
        return Some(drop(c));
    }
    let sent = match mode {
        Mode::Nat => {
            // The quoted source port becomes the backend's target port.
            s.translation.dport = svc.target_port;
            s.translation.src = flow::snat_address(g, s.parsed.family, s.placed.snat);
            let translated = translate_outer(pkt, s) && quoted_ports_and_l4(pkt, s) && translate_quoted(pkt, s);
            if !translated {
                return Some(drop(LbCounter::Malformed));
            }
            egress::send(pkt, &s.hop, s.parsed.ifindex)
        }
        Mode::Dsr => {
            if !rewrite::encapsulate(ctx, &s.parsed, g, &s.placed.addr) {
                return Some(drop(LbCounter::NoHeadroom));
            }
            egress::send(&Packet::new(ctx), &s.hop, s.parsed.ifindex)
        }
        Mode::DsrL2 => egress::send(pkt, &s.hop, s.parsed.ifindex),
    };
    Some(match sent {
        Ok(action) => {
            count(LbCounter::IcmpForwarded);
            action
        }
        Err(c) => drop(c),
    })
}

/// Writes `new` at `at`, feeding the change into the ICMP checksum.
#[inline(always)]
fn put<const N: usize>(pkt: &Packet, at: usize, new: [u8; N], icmp_check: &mut u16) -> Option<()> {
    let old: [u8; N] = pkt.bytes_at(at)?;
    *icmp_check = csum::update_bytes(*icmp_check, &old, &new);
    pkt.write(at, new)
}

/// The quoted ports (backend's target port → SNAT port) and, when quoted,
/// the L4 checksum. Not inlined: keeps the callers' frames small.
#[inline(never)]
fn quoted_ports_and_l4(pkt: &Packet, s: &mut Scratch) -> bool {
    let mut check = s.icmp.check;
    let ok = quoted_ports(pkt, s, &mut check).is_some();
    s.icmp.check = check;
    ok
}

#[inline(always)]
fn quoted_ports(pkt: &Packet, s: &Scratch, icmp_check: &mut u16) -> Option<()> {
    let (e, old_addrs, new_addrs) = (&s.icmp, &s.quoted_old, &s.quoted_new);
    let t = s.translation.dport.to_be_bytes();
    let n = s.placed.nat_port.to_be_bytes();
    let ports_new = [t[0], t[1], n[0], n[1]];
    let ports_old: [u8; 4] = pkt.bytes_at(e.inner_l4)?;
    let l4c_at = e.inner_l4 + l4_check(e.inner_proto).0;
    if l4c_at + 2 <= L3 + s.parsed.ip_len {
        let old = pkt.be16_at(l4c_at)?;
        let zero_udp = e.inner_proto == IPPROTO_UDP && old == 0 && s.parsed.family == FAMILY_V4;
        if !zero_udp {
            let mut c = csum::update_bytes(old, old_addrs, new_addrs);
            c = csum::update_bytes(c, &ports_old, &ports_new);
            if e.inner_proto == IPPROTO_UDP {
                c = csum::udp_nonzero(c);
            }
            put(pkt, l4c_at, c.to_be_bytes(), icmp_check)?;
        }
    }
    put(pkt, e.inner_l4, ports_new, icmp_check)
}

/// `nat` mode: the outer header (inside address → backend, TTL − 1;
/// for IPv6 also in the ICMPv6 pseudo-header), and the quoted addresses
/// prepared in `s.quoted_old`/`s.quoted_new`. Starts `s.icmp.check`.
#[inline(never)]
fn translate_outer(pkt: &Packet, s: &mut Scratch) -> bool {
    outer(pkt, s).is_some()
}

#[inline(always)]
fn outer(pkt: &Packet, s: &mut Scratch) -> Option<()> {
    let (inside, b) = (&s.translation.src, &s.placed.addr);
    s.icmp.check = pkt.be16_at(s.icmp.icmp + 2)?;
    if s.parsed.family == FAMILY_V4 {
        let outer_new = [inside[0], inside[1], inside[2], inside[3], b[0], b[1], b[2], b[3]];
        let outer_old: [u8; 8] = pkt.bytes_at(L3 + 12)?;
        let mut ipc = csum::update_bytes(pkt.be16_at(L3 + 10)?, &outer_old, &outer_new);
        let ttl = pkt.be16_at(L3 + 8)?;
        let ttl_after = ttl.wrapping_sub(0x100);
        ipc = csum::update16(ipc, ttl, ttl_after);
        pkt.write(L3 + 8, ttl_after.to_be_bytes())?;
        pkt.write(L3 + 10, ipc.to_be_bytes())?;
        pkt.write(L3 + 12, outer_new)?;
        s.quoted_old = [0; 32];
        s.quoted_new = [0; 32];
        s.quoted_old[..8].copy_from_slice(&pkt.bytes_at::<8>(s.icmp.inner_l3 + 12)?);
        s.quoted_new[..8].copy_from_slice(&[b[0], b[1], b[2], b[3], inside[0], inside[1], inside[2], inside[3]]);
    } else {
        s.quoted_new[..16].copy_from_slice(inside);
        s.quoted_new[16..].copy_from_slice(b);
        s.quoted_old = pkt.bytes_at(L3 + 8)?;
        s.icmp.check = csum::update_bytes(s.icmp.check, &s.quoted_old, &s.quoted_new);
        let hop = pkt.be16_at(L3 + 6)?;
        pkt.write(L3 + 6, hop.wrapping_sub(1).to_be_bytes())?;
        pkt.write(L3 + 8, s.quoted_new)?;
        s.quoted_new[..16].copy_from_slice(&s.placed.addr);
        s.quoted_new[16..].copy_from_slice(&s.translation.src);
        s.quoted_old = pkt.bytes_at(s.icmp.inner_l3 + 8)?;
    }
    Some(())
}

/// `nat` mode: the quoted addresses (and IPv4 header checksum), then the
/// finished ICMP checksum.
#[inline(never)]
fn translate_quoted(pkt: &Packet, s: &mut Scratch) -> bool {
    quoted(pkt, s).is_some()
}

#[inline(always)]
fn quoted(pkt: &Packet, s: &mut Scratch) -> Option<()> {
    let mut check = s.icmp.check;
    let inner = s.icmp.inner_l3;
    if s.parsed.family == FAMILY_V4 {
        let old: [u8; 8] = [s.quoted_old[0], s.quoted_old[1], s.quoted_old[2], s.quoted_old[3], s.quoted_old[4], s.quoted_old[5], s.quoted_old[6], s.quoted_old[7]];
        let new: [u8; 8] = [s.quoted_new[0], s.quoted_new[1], s.quoted_new[2], s.quoted_new[3], s.quoted_new[4], s.quoted_new[5], s.quoted_new[6], s.quoted_new[7]];
        let iipc = csum::update_bytes(pkt.be16_at(inner + 10)?, &old, &new);
        put(pkt, inner + 10, iipc.to_be_bytes(), &mut check)?;
        put(pkt, inner + 12, new, &mut check)?;
    } else {
        put(pkt, inner + 8, s.quoted_new, &mut check)?;
    }
    pkt.write(s.icmp.icmp + 2, check.to_be_bytes())
}
