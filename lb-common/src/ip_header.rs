//! The IP headers the balancer writes in front of a packet of its own
//! making: the outer header of `dsr` mode's tunnels and the header of its
//! ICMP "too big" answers. The XDP program and its model both call these.

use crate::{
    balancer::TUNNEL_TTL,
    csum,
    wire::{bits, offset, ICMP_HLEN, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_MIN_HLEN, IPV6_HLEN},
};

/// An IPv4 header without options (TTL [`TUNNEL_TTL`], not fragmented)
/// carrying `payload_len` bytes of `proto`, with its checksum.
pub fn ipv4(h: &mut [u8; IPV4_MIN_HLEN], proto: u8, src: &[u8], dst: &[u8], payload_len: u16) {
    *h = [0; IPV4_MIN_HLEN];
    h[offset::IPV4_VIHL] = bits::IPV4_VIHL_PLAIN;
    h[offset::IPV4_TOT_LEN..offset::IPV4_TOT_LEN + 2].copy_from_slice(&(payload_len + IPV4_MIN_HLEN as u16).to_be_bytes());
    h[offset::IPV4_TTL] = TUNNEL_TTL;
    h[offset::IPV4_PROTO] = proto;
    h[offset::IPV4_SRC..offset::IPV4_SRC + 4].copy_from_slice(&src[..4]);
    h[offset::IPV4_DST..offset::IPV4_DST + 4].copy_from_slice(&dst[..4]);
    let c = csum::ipv4_header(h);
    h[offset::IPV4_CHECK..offset::IPV4_CHECK + 2].copy_from_slice(&c.to_be_bytes());
}

/// An IPv6 header (traffic class and flow label 0, hop limit
/// [`TUNNEL_TTL`]) carrying `payload_len` bytes of `next`.
pub fn ipv6(h: &mut [u8; IPV6_HLEN], next: u8, src: &[u8; 16], dst: &[u8; 16], payload_len: u16) {
    *h = [0; IPV6_HLEN];
    h[offset::IPV6_VCF] = bits::IPV6_VERSION_BYTE;
    h[offset::IPV6_PAYLOAD_LEN..offset::IPV6_PAYLOAD_LEN + 2].copy_from_slice(&payload_len.to_be_bytes());
    h[offset::IPV6_NEXT_HDR] = next;
    h[offset::IPV6_HOP_LIMIT] = TUNNEL_TTL;
    h[offset::IPV6_SRC..offset::IPV6_SRC + 16].copy_from_slice(src);
    h[offset::IPV6_DST..offset::IPV6_DST + 16].copy_from_slice(dst);
}

/// The outer IPv4 header of a DSR packet (IPIP, RFC 2003).
pub fn outer_ipv4(h: &mut [u8; IPV4_MIN_HLEN], src: [u8; 4], dst: &[u8; 16], inner_len: u16) {
    ipv4(h, IPPROTO_IPIP, &src, dst, inner_len);
}

/// The outer IPv6 header of a DSR packet (IPv6-in-IPv6, RFC 2473).
pub fn outer_ipv6(h: &mut [u8; IPV6_HLEN], src: &[u8; 16], dst: &[u8; 16], inner_len: u16) {
    ipv6(h, IPPROTO_IPV6, src, dst, inner_len);
}

/// An ICMP header with its checksum still 0: type, code and the four
/// bytes after the checksum (the MTU of a "too big").
pub fn icmp(kind: u8, code: u8, data: [u8; 4]) -> [u8; ICMP_HLEN] {
    let mut h = [0; ICMP_HLEN];
    h[offset::ICMP_TYPE] = kind;
    h[offset::ICMP_CODE] = code;
    h[offset::ICMP_DATA..].copy_from_slice(&data);
    h
}

/// The ICMPv6 pseudo-header's sum (RFC 8200 8.1): addresses, the
/// upper-layer length and the next header.
pub fn icmpv6_pseudo_sum(src: &[u8; 16], dst: &[u8; 16], len: u32) -> u32 {
    csum::sum_words(dst, csum::sum_words(src, 0)) + len + u32::from(IPPROTO_ICMPV6)
}
