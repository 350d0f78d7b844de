//! Rule 9 of the model: path-MTU ICMP errors about a balanced flow go to
//! the flow's backend, so path MTU discovery works through the balancer.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    balancer::{v4_key, FlowKey, LbCounter, Mode, ServiceKey},
    csum,
    isolator::{FAMILY_V4, FAMILY_V6},
    wire::{bits, offset, *},
};

use super::{
    count, drop, egress, flow,
    parse::{is_l4, l4_check, L3},
    rewrite,
    scratch::Scratch,
};
use crate::{
    maps::{LB_GLOBALS, LB_SERVICES},
    packet::{concat, Icmpv4Hdr, Icmpv6Hdr, Ipv4Hdr, Ipv6Hdr, Packet, Ports},
};

/// A path-MTU ICMP error and the headers of the packet it quotes.
#[derive(Default)]
pub struct IcmpError {
    pub icmp: usize,
    pub ttl: u8,
    /// The error's sender, which the VIP's firewall judges.
    pub outer_src: [u8; 16],
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
    match pkt.ethertype()? {
        ETH_P_IPV4 => {
            let ip: &Ipv4Hdr = pkt.header(L3)?;
            let ihl = usize::from(ip.ihl());
            let fragment = u16::from_be_bytes(ip.frags) & bits::IPV4_FRAGMENT != 0;
            if ip.version() != 4 || ihl < IPV4_MIN_HLEN || ip.proto != IPPROTO_ICMP || fragment {
                return None;
            }
            e.icmp = L3 + ihl;
            let icmp: &Icmpv4Hdr = pkt.header(e.icmp)?;
            if icmp.type_ != ICMP_DEST_UNREACH || icmp.code != ICMP_FRAG_NEEDED {
                return None;
            }
            let inner_at = e.icmp + ICMP_HLEN;
            let inner: &Ipv4Hdr = pkt.header(inner_at)?;
            let iihl = usize::from(inner.ihl());
            if inner.version() != 4 || iihl < IPV4_MIN_HLEN || !is_l4(inner.proto) {
                return None;
            }
            p.family = FAMILY_V4;
            p.ip_len = usize::from(ip.tot_len());
            e.ttl = ip.ttl;
            e.outer_src = v4_key(ip.src_addr);
            e.outer_dst = v4_key(ip.dst_addr);
            e.inner_l3 = inner_at;
            e.inner_l4 = inner_at + iihl;
            e.inner_proto = inner.proto;
            e.inner_src = v4_key(inner.src_addr);
            e.inner_dst = v4_key(inner.dst_addr);
        }
        ETH_P_IPV6 => {
            let ip: &Ipv6Hdr = pkt.header(L3)?;
            if ip.version() != 6 || ip.next_hdr != IPPROTO_ICMPV6 {
                return None;
            }
            e.icmp = L3 + IPV6_HLEN;
            let icmp: &Icmpv6Hdr = pkt.header(e.icmp)?;
            if icmp.type_ != ICMPV6_PACKET_TOO_BIG {
                return None;
            }
            let inner_at = e.icmp + ICMP_HLEN;
            let inner: &Ipv6Hdr = pkt.header(inner_at)?;
            if inner.version() != 6 || !is_l4(inner.next_hdr) {
                return None;
            }
            p.family = FAMILY_V6;
            p.ip_len = IPV6_HLEN + usize::from(ip.payload_len());
            e.ttl = ip.hop_limit;
            e.outer_src = ip.src_addr;
            e.outer_dst = ip.dst_addr;
            e.inner_l3 = inner_at;
            e.inner_l4 = inner_at + IPV6_HLEN;
            e.inner_proto = inner.next_hdr;
            e.inner_src = inner.src_addr;
            e.inner_dst = inner.dst_addr;
        }
        _ => return None,
    }
    let ports: &Ports = pkt.header(e.inner_l4)?;
    e.inner_sport = ports.source();
    e.inner_dport = ports.dest();
    if L3 + p.ip_len > pkt.len() || e.inner_l4 + size_of::<Ports>() > L3 + p.ip_len {
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
    if super::dest_mac::other_host(pkt, s.parsed.ifindex) {
        return Some(super::dest_mac::pass());
    }
    // Rule 9b: a denied network sends the VIP no errors either (the allow
    // list names clients, not the routers on their paths).
    if svc.firewall != 0 {
        if let Some(action) = super::firewall::check(lb_common::firewall::deny_only(svc.firewall), s.parsed.family, &s.icmp.outer_src) {
            return Some(action);
        }
    }
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
            if rewrite::encapsulate(ctx, &s.parsed, g, &s.placed.addr).is_none() {
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
    s.icmp.check = pkt.be16_at(s.icmp.icmp + offset::ICMP_CHECK)?;
    if s.parsed.family == FAMILY_V4 {
        let ip: &mut Ipv4Hdr = pkt.header_mut(L3)?;
        let outer_old = concat::<4, 8>(&ip.src_addr, &ip.dst_addr);
        let outer_new = concat::<4, 8>(&[inside[0], inside[1], inside[2], inside[3]], &[b[0], b[1], b[2], b[3]]);
        let mut ipc = csum::update_bytes(ip.checksum(), &outer_old, &outer_new);
        let ttl_proto = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.ttl = ip.ttl.wrapping_sub(1);
        ipc = csum::update16(ipc, ttl_proto, u16::from_be_bytes([ip.ttl, ip.proto]));
        ip.set_checksum(ipc);
        ip.src_addr = [inside[0], inside[1], inside[2], inside[3]];
        ip.dst_addr = [b[0], b[1], b[2], b[3]];
        let quoted: &Ipv4Hdr = pkt.header(s.icmp.inner_l3)?;
        s.quoted_old = [0; 32];
        s.quoted_new = [0; 32];
        s.quoted_old[..4].copy_from_slice(&quoted.src_addr);
        s.quoted_old[4..8].copy_from_slice(&quoted.dst_addr);
        s.quoted_new[..4].copy_from_slice(&b[..4]);
        s.quoted_new[4..8].copy_from_slice(&inside[..4]);
    } else {
        let ip: &mut Ipv6Hdr = pkt.header_mut(L3)?;
        s.quoted_old[..16].copy_from_slice(&ip.src_addr);
        s.quoted_old[16..].copy_from_slice(&ip.dst_addr);
        s.icmp.check = csum::update_bytes(s.icmp.check, &s.quoted_old, &concat::<16, 32>(inside, b));
        ip.hop_limit = ip.hop_limit.wrapping_sub(1);
        ip.src_addr = *inside;
        ip.dst_addr = *b;
        let quoted: &Ipv6Hdr = pkt.header(s.icmp.inner_l3)?;
        s.quoted_old[..16].copy_from_slice(&quoted.src_addr);
        s.quoted_old[16..].copy_from_slice(&quoted.dst_addr);
        s.quoted_new[..16].copy_from_slice(b);
        s.quoted_new[16..].copy_from_slice(inside);
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
        let iipc = csum::update_bytes(pkt.be16_at(inner + offset::IPV4_CHECK)?, &old, &new);
        put(pkt, inner + offset::IPV4_CHECK, iipc.to_be_bytes(), &mut check)?;
        put(pkt, inner + offset::IPV4_SRC, new, &mut check)?;
    } else {
        put(pkt, inner + offset::IPV6_SRC, s.quoted_new, &mut check)?;
    }
    pkt.write(s.icmp.icmp + offset::ICMP_CHECK, check.to_be_bytes())
}
