//! Katran's side of the contract at the measured commit: the layout of
//! the maps the bench fills and reads (`balancer_structs.h`,
//! `balancer_consts.h`), and the packet it must send (`pckt_encap.h`,
//! `encap_helpers.h`), written from those headers' documented behaviour.
//! A layout that no longer matches shows as failed checks, not as numbers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;

use super::{super::tcp_offset, GATEWAY_MAC};

/// Katran's `RING_SIZE`: slots of one VIP's consistent-hashing ring.
pub(super) const RING_SIZE: u32 = 65_537;
/// Katran's `MAX_VIPS`: its global counters sit after the per-VIP ones in
/// `stats`.
pub(super) const MAX_VIPS: u32 = 512;
/// `stats` indices (`MAX_VIPS +` Katran's `*_CNTR*` constants).
pub(super) const LRU_CNTRS: u32 = MAX_VIPS;
pub(super) const LRU_MISS_CNTR: u32 = MAX_VIPS + 1;
pub(super) const FALLBACK_LRU_CNTR: u32 = MAX_VIPS + 3;
pub(super) const XDP_TX_CNTR: u32 = MAX_VIPS + 17;
pub(super) const XDP_DROP_CNTR: u32 = MAX_VIPS + 18;
pub(super) const XDP_PASS_CNTR: u32 = MAX_VIPS + 19;
/// `real_definition.flags`: an IPv6 real (IP6IP6 / IPIP6 encapsulation).
pub(super) const F_IPV6: u8 = 1;

/// Katran's `flow_key` (40 bytes: addresses as 16 bytes, IPv4 in the first
/// four, then source and destination port, protocol).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct FlowKey {
    pub(super) src: [u8; 16],
    pub(super) dst: [u8; 16],
    pub(super) ports: [u8; 4],
    pub(super) proto: u8,
    pub(super) _pad: [u8; 3],
}

/// `real_pos_lru`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RealPosLru {
    pub(super) pos: u32,
    pub(super) _pad: u32,
    pub(super) atime: u64,
}

/// `vip_definition`: address, port (network order), protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct VipDefinition {
    pub(super) vip: [u8; 16],
    pub(super) port: [u8; 2],
    pub(super) proto: u8,
    pub(super) _pad: u8,
}

/// `vip_meta`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct VipMeta {
    pub(super) flags: u32,
    pub(super) vip_num: u32,
}

/// `real_definition`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RealDefinition {
    pub(super) dst: [u8; 16],
    pub(super) flags: u8,
    pub(super) _pad: [u8; 3],
}

/// `ctl_value`: a MAC in the first six bytes of a u64.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct CtlValue {
    pub(super) mac: [u8; 8],
}

/// `lb_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct LbStats {
    pub(super) v1: u64,
    pub(super) v2: u64,
}

// SAFETY: `repr(C)`, integers and byte arrays, padding spelled out.
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for RealPosLru {}
unsafe impl aya::Pod for VipDefinition {}
unsafe impl aya::Pod for VipMeta {}
unsafe impl aya::Pod for RealDefinition {}
unsafe impl aya::Pod for CtlValue {}
unsafe impl aya::Pod for LbStats {}

/// The LRU key of a TCP frame's flow (untagged, no IPv6 extension headers).
pub(super) fn flow_key(frame: &[u8]) -> Result<FlowKey> {
    let l4 = tcp_offset(frame)?;
    let mut k = FlowKey { proto: 6, ..FlowKey::default() };
    if frame[12..14] == [0x08, 0x00] {
        k.src[..4].copy_from_slice(&frame[26..30]);
        k.dst[..4].copy_from_slice(&frame[30..34]);
    } else {
        k.src.copy_from_slice(&frame[22..38]);
        k.dst.copy_from_slice(&frame[38..54]);
    }
    k.ports.copy_from_slice(&frame[l4..l4 + 4]);
    Ok(k)
}

/// `frame` as Katran must send it to `real`: a new Ethernet header (the
/// gateway's MAC, from the frame's destination MAC), then an outer IPv4
/// (IPIP) or IPv6 (IP6IP6) header, then the frame's IP packet unchanged.
pub(super) fn encapsulated(frame: &[u8], real: IpAddr) -> Vec<u8> {
    let inner = &frame[14..];
    let mut out = GATEWAY_MAC.to_vec();
    out.extend_from_slice(&frame[..6]);
    // The outer source carries the client's port, so the reals' RSS spreads flows.
    let l4 = tcp_offset(frame).unwrap_or(0);
    let (p0, p1) = (frame[l4], frame[l4 + 1]);
    match real {
        IpAddr::V4(real) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[1] = inner[1];
            h[2..4].copy_from_slice(&((inner.len() + 20) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = 4;
            // Katran byte-swaps the (network-order) port before the xor.
            h[12..16].copy_from_slice(&Ipv4Addr::new(172, 16, p1 ^ inner[14], p0 ^ inner[15]).octets());
            h[16..20].copy_from_slice(&real.octets());
            let csum = !fold(h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum());
            h[10..12].copy_from_slice(&csum.to_be_bytes());
            out.extend_from_slice(&h);
        }
        IpAddr::V6(real) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            let mut h = [0u8; 40];
            // Version 6; traffic class copied from the inner packet.
            h[0] = 0x60 | (inner[0] & 0x0f);
            h[1] = inner[1] & 0xf0;
            h[4..6].copy_from_slice(&(inner.len() as u16).to_be_bytes());
            h[6] = 41;
            h[7] = 64;
            let mut src = [0u8; 16];
            src[0] = 1;
            src[12] = inner[8 + 12] ^ p0;
            src[13] = inner[8 + 13] ^ p1;
            src[14..16].copy_from_slice(&inner[8 + 14..8 + 16]);
            h[8..24].copy_from_slice(&Ipv6Addr::from(src).octets());
            h[24..40].copy_from_slice(&real.octets());
            out.extend_from_slice(&h);
        }
    }
    out.extend_from_slice(inner);
    out
}

/// One's-complement fold of a 32-bit sum.
fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

