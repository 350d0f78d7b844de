//! Protocol numbers and header sizes the data path and the model both use.

/// The address family tag of swarmlb's map keys and events (fragment
/// keys, drop events, services, backends, flows, NAT entries): IPv4.
pub const FAMILY_V4: u8 = 4;
/// The address family tag for IPv6 (see [`FAMILY_V4`]).
pub const FAMILY_V6: u8 = 6;

/// Ethernet header length (destination, source, EtherType).
pub const ETH_HLEN: usize = 14;
/// One 802.1Q / 802.1ad tag (TCI + inner EtherType).
pub const VLAN_HLEN: usize = 4;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
/// 802.1Q customer tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ tag some switches still emit.
pub const ETH_P_QINQ_LEGACY: u16 = 0x9100;

/// Minimum IPv4 header (IHL = 5).
pub const IPV4_MIN_HLEN: usize = 20;
/// Fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// IPv6 fragment extension header.
pub const IPV6_FRAG_HLEN: usize = 8;
/// What every other IPv6 extension header has at least: its next header
/// and its length.
pub const IPV6_EXT_MIN_HLEN: usize = 2;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// ICMPv4 destination unreachable; with code [`ICMP_FRAG_NEEDED`] the
/// path-MTU signal (RFC 1191).
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMPv4 code: fragmentation needed and DF set.
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 packet too big (RFC 8201).
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// ICMP header before the quoted packet.
pub const ICMP_HLEN: usize = 8;
/// Bytes after the IP header an ICMP error quotes (RFC 792: 64 bits).
pub const ICMP_QUOTE_L4: usize = 8;
/// Bytes of the offending packet the balancer's IPv6 "packet too big"
/// quotes: its header and the first 8 bytes after it.
pub const TOO_BIG_QUOTE_V6: usize = IPV6_HLEN + ICMP_QUOTE_L4;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
/// TCP flags (the byte at [`offset::TCP_FLAGS`]) that end a connection.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
/// TCP flags that open one (SYN without ACK).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_ETHERIP: u8 = 97;
pub const IPPROTO_L2TP: u8 = 115;
pub const IPPROTO_MOBILITY: u8 = 135;
pub const IPPROTO_MPLS_IN_IP: u8 = 137;
pub const IPPROTO_HIP: u8 = 139;
pub const IPPROTO_SHIM6: u8 = 140;

/// The IANA keyword of an IP protocol number swarmlb names in its logs
/// (lower case, as nftables writes them), `None` for the others.
pub const fn proto_name(proto: u8) -> Option<&'static str> {
    Some(match proto {
        IPPROTO_HOPOPTS => "hopopt",
        IPPROTO_ICMP => "icmp",
        IPPROTO_IPIP => "ipip",
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_IPV6 => "ipv6",
        IPPROTO_ROUTING => "ipv6-route",
        IPPROTO_FRAGMENT => "ipv6-frag",
        IPPROTO_GRE => "gre",
        IPPROTO_ESP => "esp",
        IPPROTO_AH => "ah",
        IPPROTO_ICMPV6 => "icmpv6",
        IPPROTO_NONE => "ipv6-nonxt",
        IPPROTO_DSTOPTS => "ipv6-opts",
        IPPROTO_ETHERIP => "etherip",
        IPPROTO_L2TP => "l2tp",
        132 => "sctp",
        _ => return None,
    })
}

/// TCP header without options: a first fragment must carry at least this much.
pub const TCP_MIN_HLEN: usize = 20;
/// UDP header.
pub const UDP_HLEN: usize = 8;

/// The shortest L4 header a first fragment must hold: TCP 20 bytes, UDP 8;
/// 0 for protocols whose ports the isolator does not read.
pub const fn l4_min_len(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => TCP_MIN_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        _ => 0,
    }
}

/// IP protocols that carry another packet (or IPsec payload) which the kernel
/// behind a zone interface could unwrap and deliver past the port check.
pub const fn is_encapsulation(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_IPIP
            | IPPROTO_IPV6
            | IPPROTO_GRE
            | IPPROTO_ESP
            | IPPROTO_AH
            | IPPROTO_ETHERIP
            | IPPROTO_L2TP
            | IPPROTO_MPLS_IN_IP
    )
}

/// IPv6 extension headers that use the generic `(hdr_ext_len + 1) * 8`
/// length encoding and are skipped on the way to the upper-layer header.
/// (Routing and Fragment headers are judged on their own; AH and ESP are
/// encapsulation.)
pub const fn is_skippable_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_MOBILITY | IPPROTO_HIP | IPPROTO_SHIM6
    )
}

/// Is this EtherType a VLAN tag the isolator looks through?
pub const fn is_vlan_ethertype(ethertype: u16) -> bool {
    matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_LEGACY)
}

/// Docker Swarm's own ports: cluster management (2377/tcp), gossip
/// (7946/tcp+udp) and the overlay network's VXLAN (4789/udp).
pub const SWARM_PORTS: [(u8, u16); 4] = [
    (IPPROTO_TCP, 2377),
    (IPPROTO_TCP, 7946),
    (IPPROTO_UDP, 7946),
    (IPPROTO_UDP, 4789),
];

/// Where each field the programs and the models read or write sits in
/// its header: taken from `network-types`' header structs, which the XDP
/// programs read through by field name. The models read the same bytes by
/// these offsets with their own code, so a disagreement between the two
/// shows up in the differential tests rather than hiding in a shared
/// parser.
pub mod offset {
    use core::mem::offset_of;
    use network_types::{
        eth::EthHdr,
        icmp::Icmpv4Hdr,
        ip::{Ipv4Hdr, Ipv6Hdr},
        tcp::TcpHdr,
        udp::UdpHdr,
        vlan::VlanHdr,
    };

    /// Ethernet: destination and source MAC, EtherType.
    pub const ETH_DST: usize = offset_of!(EthHdr, dst_addr);
    pub const ETH_SRC: usize = offset_of!(EthHdr, src_addr);
    pub const ETH_TYPE: usize = offset_of!(EthHdr, ether_type);
    /// A VLAN tag's inner EtherType (after its TCI).
    pub const VLAN_TYPE: usize = offset_of!(VlanHdr, ether_type);

    /// IPv4: version and header length, total length, identification,
    /// flags and fragment offset, TTL, protocol, checksum, addresses.
    pub const IPV4_VIHL: usize = offset_of!(Ipv4Hdr, vihl);
    pub const IPV4_TOT_LEN: usize = offset_of!(Ipv4Hdr, tot_len);
    pub const IPV4_ID: usize = offset_of!(Ipv4Hdr, id);
    pub const IPV4_FRAGS: usize = offset_of!(Ipv4Hdr, frags);
    pub const IPV4_TTL: usize = offset_of!(Ipv4Hdr, ttl);
    pub const IPV4_PROTO: usize = offset_of!(Ipv4Hdr, proto);
    pub const IPV4_CHECK: usize = offset_of!(Ipv4Hdr, check);
    pub const IPV4_SRC: usize = offset_of!(Ipv4Hdr, src_addr);
    pub const IPV4_DST: usize = offset_of!(Ipv4Hdr, dst_addr);

    /// IPv6: version, traffic class and flow label, payload length, next
    /// header, hop limit, addresses.
    pub const IPV6_VCF: usize = offset_of!(Ipv6Hdr, vcf);
    pub const IPV6_PAYLOAD_LEN: usize = offset_of!(Ipv6Hdr, payload_len);
    pub const IPV6_NEXT_HDR: usize = offset_of!(Ipv6Hdr, next_hdr);
    pub const IPV6_HOP_LIMIT: usize = offset_of!(Ipv6Hdr, hop_limit);
    pub const IPV6_SRC: usize = offset_of!(Ipv6Hdr, src_addr);
    pub const IPV6_DST: usize = offset_of!(Ipv6Hdr, dst_addr);

    /// TCP and UDP both start with the source and destination port.
    pub const L4_SPORT: usize = offset_of!(TcpHdr, source);
    pub const L4_DPORT: usize = offset_of!(TcpHdr, dest);
    /// TCP: sequence and acknowledgement numbers, data offset (high
    /// nibble) then flags, window, checksum.
    pub const TCP_SEQ: usize = offset_of!(TcpHdr, seq);
    pub const TCP_ACK: usize = offset_of!(TcpHdr, ack_seq);
    pub const TCP_DOFF: usize = offset_of!(TcpHdr, _bitfield_1);
    pub const TCP_FLAGS: usize = TCP_DOFF + 1;
    pub const TCP_WINDOW: usize = offset_of!(TcpHdr, window);
    pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);
    /// UDP: checksum.
    pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);

    /// ICMP (v4 and v6 share the layout): type, code, checksum, and the
    /// rest of the header (the next-hop MTU of "fragmentation needed" in
    /// its last two bytes; ICMPv6 "packet too big" uses all four).
    pub const ICMP_TYPE: usize = offset_of!(Icmpv4Hdr, type_);
    pub const ICMP_CODE: usize = offset_of!(Icmpv4Hdr, code);
    pub const ICMP_CHECK: usize = offset_of!(Icmpv4Hdr, check);
    pub const ICMP_DATA: usize = offset_of!(Icmpv4Hdr, data);

    /// IPv6 fragment header: next header, offset and flags, identification.
    pub const FRAG6_NEXT: usize = 0;
    pub const FRAG6_OFFSET: usize = 2;
    pub const FRAG6_ID: usize = 4;
    /// A generic IPv6 extension header: next header, length in 8-byte
    /// units after the first eight.
    pub const EXT_NEXT: usize = 0;
    pub const EXT_LEN: usize = 1;
}

/// Bit fields of the headers above.
pub mod bits {
    /// IPv4 flags and fragment offset: don't fragment, more fragments,
    /// the offset (in 8-byte units), and "a fragment" (MF or an offset).
    pub const IPV4_DF: u16 = 0x4000;
    pub const IPV4_MF: u16 = 0x2000;
    pub const IPV4_FRAG_OFFSET: u16 = 0x1fff;
    pub const IPV4_FRAGMENT: u16 = IPV4_MF | IPV4_FRAG_OFFSET;
    /// The header length (in 4-byte words) in the version/IHL byte.
    pub const IPV4_IHL: u8 = 0x0f;
    /// IPv6 fragment header: the offset (already in bytes) and M.
    pub const FRAG6_OFFSET: u16 = 0xfff8;
    pub const FRAG6_MORE: u16 = 0x0001;
    /// The IPv4 version/IHL byte of a header without options.
    pub const IPV4_VIHL_PLAIN: u8 = 0x45;
    /// The first byte of an IPv6 header with traffic class 0.
    pub const IPV6_VERSION_BYTE: u8 = 0x60;
}

#[cfg(test)]
mod tests {
    use super::offset::*;

    /// The offsets taken from `network-types` are the wire format's
    /// (RFC 791, 8200, 793, 768, 792): a change of that crate's layout
    /// fails here, not in a packet.
    #[test]
    fn offsets_are_the_rfcs() {
        assert_eq!((ETH_DST, ETH_SRC, ETH_TYPE, VLAN_TYPE), (0, 6, 12, 2));
        assert_eq!((IPV4_VIHL, IPV4_TOT_LEN, IPV4_ID, IPV4_FRAGS, IPV4_TTL, IPV4_PROTO, IPV4_CHECK, IPV4_SRC, IPV4_DST), (0, 2, 4, 6, 8, 9, 10, 12, 16));
        assert_eq!((IPV6_VCF, IPV6_PAYLOAD_LEN, IPV6_NEXT_HDR, IPV6_HOP_LIMIT, IPV6_SRC, IPV6_DST), (0, 4, 6, 7, 8, 24));
        assert_eq!((L4_SPORT, L4_DPORT, TCP_SEQ, TCP_ACK, TCP_DOFF, TCP_FLAGS, TCP_WINDOW, TCP_CHECK, UDP_CHECK), (0, 2, 4, 8, 12, 13, 14, 16, 6));
        assert_eq!((ICMP_TYPE, ICMP_CODE, ICMP_CHECK, ICMP_DATA), (0, 1, 2, 4));
    }
}
