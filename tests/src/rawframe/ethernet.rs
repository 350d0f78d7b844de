//! Ethernet framing with any number of VLAN tags.

use std::net::IpAddr;

use super::{ethertype, Ipv4, Ipv6, L4};

/// Ethernet framing: addresses and any number of VLAN tags, outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameBuilder {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Tags as (TPID, TCI), outermost first.
    pub tags: Vec<(u16, u16)>,
}

impl FrameBuilder {
    /// Untagged framing from `src_mac` to `dst_mac`.
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self { src_mac, dst_mac, tags: Vec::new() }
    }

    /// Adds a tag with `tpid` (0x8100, 0x88a8, ...) and VLAN ID `vid`
    /// (priority 0), inside the tags added before.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.tags.push((tpid, vid & 0x0fff));
        self
    }

    /// Adds a tag with a full TCI (PCP, DEI and VID).
    pub fn vlan_tci(mut self, tpid: u16, tci: u16) -> Self {
        self.tags.push((tpid, tci));
        self
    }

    /// A frame carrying `payload` as `ethertype` (no padding to 60 bytes:
    /// the kernel pads short frames itself, and the receiver trims by the
    /// IP length).
    pub fn frame(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + 4 * self.tags.len() + payload.len());
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        for (tpid, tci) in &self.tags {
            f.extend(tpid.to_be_bytes());
            f.extend(tci.to_be_bytes());
        }
        f.extend(ethertype.to_be_bytes());
        f.extend(payload);
        f
    }

    /// A frame carrying an IPv4 packet (see [`super::Ipv4::packet`]).
    pub fn ipv4(&self, packet: &[u8]) -> Vec<u8> {
        self.frame(ethertype::IPV4, packet)
    }

    /// A frame carrying an IPv6 packet (see [`super::Ipv6::packet`]).
    pub fn ipv6(&self, packet: &[u8]) -> Vec<u8> {
        self.frame(ethertype::IPV6, packet)
    }

    /// A frame carrying `l4` from `src` to `dst` (one family) in a plain
    /// IPv4 or IPv6 header that `v4` or `v6` may adjust first.
    pub fn ip_l4(&self, src: IpAddr, dst: IpAddr, l4: &L4, v4: impl Fn(&mut Ipv4), v6: impl Fn(&mut Ipv6)) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4::new(s, d);
                v4(&mut h);
                self.ipv4(&h.packet(l4))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut h = Ipv6::new(s, d);
                v6(&mut h);
                self.ipv6(&h.packet(l4))
            }
            _ => panic!("mixed families: {src} to {dst}"),
        }
    }

    /// A frame carrying an IP packet, its EtherType taken from the version.
    pub fn ip(&self, packet: &[u8]) -> Vec<u8> {
        let et = if packet.first().map(|b| b >> 4) == Some(6) { ethertype::IPV6 } else { ethertype::IPV4 };
        self.frame(et, packet)
    }
}
