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
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
/// TCP flags (byte 13 of the header) that end a connection.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
/// TCP flags that open one (SYN without ACK).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
pub const TCP_FLAGS_OFFSET: usize = 13;
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
