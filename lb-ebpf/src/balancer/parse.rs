//! Rule 1 and 3 of the model: the headers of a packet that may be the
//! balancer's, and whether a service's packet can be balanced at all.

use lb_common::{
    balancer::{self, LbCounter},
    isolator::{FAMILY_V4, FAMILY_V6},
    nat_state::{self, Segment},
    wire::{bits, offset, *},
};

use crate::{
    bytes::{copy16, set_v4},
    packet::{self, tcp_header_len, Ipv4Hdr, Ipv6Hdr, Packet, Ports, TcpHdr},
};

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
    /// A service's TCP packet's flags, read once by [`read_tcp_flags`]
    /// (0 for UDP, and before that).
    pub tcp_flags: u8,
}

/// Offset of the IP header: the balancer only sees untagged frames.
pub const L3: usize = ETH_HLEN;

/// Fills `out`; `None` if the packet cannot be the balancer's. Fields
/// are written in place: a `Parsed` is too big to move around.
#[inline(always)]
pub fn parse(pkt: &Packet, ifindex: u32, out: &mut Parsed) -> Option<()> {
    out.ifindex = ifindex;
    out.fragment = false;
    match pkt.ethertype()? {
        ETH_P_IPV4 => {
            let ip: &Ipv4Hdr = pkt.header(L3)?;
            let ihl = usize::from(ip.ihl());
            if ip.version() != 4 || ihl < IPV4_MIN_HLEN || !is_l4(ip.proto) {
                return None;
            }
            out.family = FAMILY_V4;
            out.proto = ip.proto;
            out.ttl = ip.ttl;
            out.fragment = u16::from_be_bytes(ip.frags) & bits::IPV4_FRAGMENT != 0;
            out.ip_len = usize::from(ip.tot_len());
            set_v4(&mut out.src, &ip.src_addr);
            set_v4(&mut out.dst, &ip.dst_addr);
            out.l4 = L3 + ihl;
        }
        ETH_P_IPV6 => {
            let ip: &Ipv6Hdr = pkt.header(L3)?;
            if ip.version() != 6 || !is_l4(ip.next_hdr) {
                return None;
            }
            out.family = FAMILY_V6;
            out.proto = ip.next_hdr;
            out.ttl = ip.hop_limit;
            out.ip_len = IPV6_HLEN + usize::from(ip.payload_len());
            copy16(&mut out.src, &ip.src_addr);
            copy16(&mut out.dst, &ip.dst_addr);
            out.l4 = L3 + IPV6_HLEN;
        }
        _ => return None,
    }
    let ports: &Ports = pkt.header(out.l4)?;
    out.sport = ports.source();
    out.dport = ports.dest();
    Some(())
}

/// TCP or UDP: the protocols the balancer carries.
#[inline(always)]
pub fn is_l4(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

/// Offset of the L4 checksum in the L4 header, and the header's minimum
/// length.
#[inline(always)]
pub const fn l4_check(proto: u8) -> (usize, usize) {
    if proto == IPPROTO_TCP {
        (offset::TCP_CHECK, TCP_MIN_HLEN)
    } else {
        (offset::UDP_CHECK, UDP_HLEN)
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
    let tcp: &TcpHdr = pkt.header(p.l4)?;
    out.seq = u32::from_be_bytes(tcp.seq);
    out.ack = u32::from_be_bytes(tcp.ack_seq);
    out.flags = packet::tcp_flags(tcp);
    out.window = u16::from_be_bytes(tcp.window);
    let doff = tcp_header_len(tcp);
    out.payload = (p.ip_len as u32).saturating_sub((p.l4 - L3 + doff) as u32);
    let l4 = p.l4;
    out.wscale = if out.flags & TCP_SYN != 0 { nat_state::window_scale(|off| pkt.be16_at(off), l4 + TCP_MIN_HLEN, l4 + doff) } else { 0 };
    Some(())
}

/// Reads a service's TCP packet's flags into `p.tcp_flags` (0 for UDP, or
/// if the header is not there), once for everything behind: whether it
/// opens a connection, whether the `nat` path needs its entry.
#[inline(always)]
pub fn read_tcp_flags(pkt: &Packet, p: &mut Parsed) {
    p.tcp_flags = if p.proto == IPPROTO_TCP { pkt.header::<TcpHdr>(p.l4).map_or(0, packet::tcp_flags) } else { 0 };
}

/// Whether a TCP packet opens a connection (SYN without ACK; rule 5).
#[inline(always)]
pub fn opens_connection(p: &Parsed) -> bool {
    p.proto == IPPROTO_TCP && balancer::opens_connection(p.tcp_flags)
}
