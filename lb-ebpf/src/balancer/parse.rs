//! Rule 1 and 3 of the model: the headers of a packet that may be the
//! balancer's, and whether a service's packet can be balanced at all.

use lb_common::{
    balancer::{self, v4_key, LbCounter},
    isolator::{FAMILY_V4, FAMILY_V6},
    nat_state::{self, Segment},
    wire::*,
};

use crate::packet::Packet;

/// The headers of a TCP/UDP packet right after an untagged Ethernet header.
#[derive(Default)]
pub struct Parsed {
    /// The interface the packet arrived on.
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// The IP packet's length per its header.
    pub ip_len: usize,
    pub ttl: u8,
    pub fragment: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
}

/// Offset of the IP header: the balancer only sees untagged frames.
pub const L3: usize = ETH_HLEN;

/// Fills `out`; `None` if the packet cannot be the balancer's. Fields
/// are written in place: a `Parsed` is too big to move around.
#[inline(always)]
pub fn parse(pkt: &Packet, ifindex: u32, out: &mut Parsed) -> Option<()> {
    out.ifindex = ifindex;
    out.fragment = false;
    match pkt.be16_at(12)? {
        ETH_P_IPV4 => {
            let vihl = (pkt.be16_at(L3)? >> 8) as u8;
            let ttl_proto = pkt.be16_at(L3 + 8)?;
            let proto = ttl_proto as u8;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
                return None;
            }
            out.family = FAMILY_V4;
            out.proto = proto;
            out.ttl = (ttl_proto >> 8) as u8;
            out.fragment = pkt.be16_at(L3 + 6)? & 0x3fff != 0;
            out.ip_len = usize::from(pkt.be16_at(L3 + 2)?);
            out.src = v4_key(pkt.bytes_at::<4>(L3 + 12)?);
            out.dst = v4_key(pkt.bytes_at::<4>(L3 + 16)?);
            out.l4 = L3 + ihl;
        }
        ETH_P_IPV6 => {
            let version = pkt.be16_at(L3)? >> 12;
            let next_hop = pkt.be16_at(L3 + 6)?;
            let proto = (next_hop >> 8) as u8;
            if version != 6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
                return None;
            }
            out.family = FAMILY_V6;
            out.proto = proto;
            out.ttl = next_hop as u8;
            out.ip_len = IPV6_HLEN + usize::from(pkt.be16_at(L3 + 4)?);
            out.src = pkt.bytes_at::<16>(L3 + 8)?;
            out.dst = pkt.bytes_at::<16>(L3 + 24)?;
            out.l4 = L3 + IPV6_HLEN;
        }
        _ => return None,
    }
    out.sport = pkt.be16_at(out.l4)?;
    out.dport = pkt.be16_at(out.l4 + 2)?;
    Some(())
}

/// Offset of the L4 checksum in the L4 header, and the header's minimum
/// length.
#[inline(always)]
pub const fn l4_check(proto: u8) -> (usize, usize) {
    if proto == IPPROTO_TCP {
        (16, TCP_MIN_HLEN)
    } else {
        (6, UDP_HLEN)
    }
}

/// `Some(counter)` when a service's packet cannot be balanced.
#[inline(always)]
pub fn unfit(p: &Parsed, frame_len: usize) -> Option<LbCounter> {
    if p.fragment {
        return Some(LbCounter::Unbalanceable);
    }
    let (_, min) = l4_check(p.proto);
    if p.ip_len < p.l4 - L3 + min || L3 + p.ip_len > frame_len {
        return Some(LbCounter::Malformed);
    }
    None
}

/// Fills `out` with a TCP packet's header fields for the NAT state
/// (its fixed header is whole once [`unfit`] passed); `false` if they are
/// not in the frame. Not inlined: the verifier walks the option loop's
/// paths once here, not once for every path of the caller.
#[inline(never)]
pub fn segment(pkt: &Packet, p: &Parsed, out: &mut Segment) -> bool {
    read_segment(pkt, p, out).is_some()
}

#[inline(always)]
fn read_segment(pkt: &Packet, p: &Parsed, out: &mut Segment) -> Option<()> {
    let l4 = p.l4;
    out.seq = pkt.be32_at(l4 + 4)?;
    out.ack = pkt.be32_at(l4 + 8)?;
    let offset_flags = pkt.be16_at(l4 + 12)?;
    out.flags = offset_flags as u8;
    out.window = pkt.be16_at(l4 + 14)?;
    let doff = usize::from(offset_flags >> 12) * 4;
    out.payload = (p.ip_len as u32).saturating_sub((l4 - L3 + doff) as u32);
    out.wscale = if out.flags & TCP_SYN != 0 { nat_state::window_scale(|off| pkt.be16_at(off), l4 + TCP_MIN_HLEN, l4 + doff) } else { 0 };
    Some(())
}

/// Whether a TCP packet opens a connection (SYN without ACK; rule 5).
#[inline(always)]
pub fn opens_connection(pkt: &Packet, p: &Parsed) -> bool {
    p.proto == IPPROTO_TCP && balancer::opens_connection(tcp_flags(pkt, p))
}

/// A TCP packet's flags (0 if the header is not there).
#[inline(always)]
pub fn tcp_flags(pkt: &Packet, p: &Parsed) -> u8 {
    // Bytes 12–13 (data offset, flags) as one read: LLVM turns the bounds
    // check of a one-byte read into `ptr >= end`, which this kernel's
    // verifier does not take as room for the byte.
    pkt.be16_at(p.l4 + TCP_FLAGS_OFFSET - 1).map_or(0, |w| w as u8)
}
