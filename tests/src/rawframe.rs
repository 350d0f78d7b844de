//! Hand-made Ethernet frames, injected with an AF_PACKET socket.
//!
//! This is how tests send what no socket API produces: VLAN tags (this
//! kernel has no 802.1Q devices, yet its stack accepts VLAN-ID-0 tagged
//! frames), IPv4 options, IPv6 extension header chains, and fragments cut at
//! chosen boundaries (zero-length, overlapping, header-splitting).
//!
//! Packets are built in layers so each can be reused: an [`L4`] segment is
//! placed in an [`Ipv4`] or [`Ipv6`] packet (which computes the IPv4 header
//! checksum and the TCP/UDP checksum over the right pseudo-header), which
//! may be fragmented, and each piece is wrapped in Ethernet (+ tags) by a
//! [`FrameBuilder`]. Checksums are correct, so a receiving kernel accepts
//! the packets exactly as if a real host had sent them; to test a bad
//! checksum, change a byte after building.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    ops::Range,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{sys, Netns};

/// EtherType values used in tests.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (S-tag, "QinQ").
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol / IPv6 next-header numbers used in tests.
pub mod proto {
    /// IPv6 Hop-by-Hop options.
    pub const HOPOPT: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 Routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 No Next Header.
    pub const NONE: u8 = 59;
    /// IPv6 Destination options.
    pub const DSTOPTS: u8 = 60;
}

// ---------------------------------------------------------------- checksums

/// Adds `data` as big-endian 16-bit words to a running ones'-complement sum
/// (an odd trailing byte is padded with zero).
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [b] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*b) << 8);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Folds a running sum and complements it: the Internet checksum (RFC 1071).
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

// ---------------------------------------------------------------- L4

/// A transport segment. TCP and UDP get their checksum filled in when placed
/// in an IP packet; `Raw` bytes are used as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A TCP segment with a 20-byte header.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgement number.
        ack: u32,
        /// Flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
        flags: u8,
        /// Receive window.
        window: u16,
        /// Payload after the header.
        payload: Vec<u8>,
    },
    /// A UDP datagram.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Payload after the header.
        payload: Vec<u8>,
    },
    /// Any other protocol: the protocol number and the bytes, unchanged.
    Raw {
        /// IP protocol / next header.
        protocol: u8,
        /// The bytes after the IP header chain.
        bytes: Vec<u8>,
    },
}

impl L4 {
    /// A TCP SYN, as `connect` would send it (no options).
    pub fn tcp_syn(sport: u16, dport: u16) -> Self {
        L4::Tcp { sport, dport, seq: 0x1000_0000, ack: 0, flags: 0x02, window: 64240, payload: Vec::new() }
    }

    /// A UDP datagram.
    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Self {
        L4::Udp { sport, dport, payload: payload.to_vec() }
    }

    /// The IP protocol number.
    pub fn protocol(&self) -> u8 {
        match self {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Raw { protocol, .. } => *protocol,
        }
    }

    /// Serialises the segment; `pseudo` is the sum of the pseudo-header
    /// (addresses, protocol, length) for the checksum.
    fn encode(&self, pseudo: impl Fn(u32) -> u32) -> Vec<u8> {
        match self {
            L4::Tcp { sport, dport, seq, ack, flags, window, payload } => {
                let mut h = Vec::with_capacity(20 + payload.len());
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(seq.to_be_bytes());
                h.extend(ack.to_be_bytes());
                h.push(5 << 4); // data offset: 5 words, no options
                h.push(*flags);
                h.extend(window.to_be_bytes());
                h.extend([0, 0, 0, 0]); // checksum, urgent pointer
                h.extend(payload);
                let c = fold(sum16(&h, pseudo(h.len() as u32)));
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Udp { sport, dport, payload } => {
                let mut h = Vec::with_capacity(8 + payload.len());
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(((8 + payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                h.extend(payload);
                let mut c = fold(sum16(&h, pseudo(h.len() as u32)));
                // A computed 0 is sent as 0xffff: 0 means "no checksum".
                if c == 0 {
                    c = 0xffff;
                }
                h[6..8].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

// ---------------------------------------------------------------- IPv4

/// An IPv4 header; [`Ipv4::packet`] adds a payload and all checksums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live.
    pub ttl: u8,
    /// Type of service / DSCP+ECN byte.
    pub tos: u8,
    /// Identification (matters for fragments).
    pub id: u16,
    /// The DF flag.
    pub dont_fragment: bool,
    /// The MF flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Raw option bytes; padded with End-of-Options to a multiple of 4.
    pub options: Vec<u8>,
    /// Protocol field, if it should differ from the payload's.
    pub protocol: Option<u8>,
}

impl Ipv4 {
    /// A plain header: TTL 64, DF clear, not a fragment, no options.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 1,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            protocol: None,
        }
    }

    /// The pseudo-header sum for TCP/UDP checksums over `len` bytes.
    fn pseudo(&self, protocol: u8, len: u32) -> u32 {
        let mut acc = sum16(&self.src.octets(), 0);
        acc = sum16(&self.dst.octets(), acc);
        sum16(&[0, protocol], acc) + len
    }

    /// The complete packet: header (with checksum) and `l4` (with its
    /// checksum; for a fragment, build the whole packet and cut it with
    /// [`fragment_ipv4`], so the checksum covers the whole datagram).
    pub fn packet(&self, l4: &L4) -> Vec<u8> {
        let body = l4.encode(|len| self.pseudo(l4.protocol(), len));
        self.with_payload(self.protocol.unwrap_or(l4.protocol()), &body)
    }

    /// Header (+ checksum) and raw `payload`.
    pub fn with_payload(&self, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0); // End of Options list
        }
        let ihl = 5 + opts.len() / 4;
        let mut h = Vec::with_capacity(ihl * 4 + payload.len());
        h.push(0x40 | ihl as u8);
        h.push(self.tos);
        h.extend(((ihl * 4 + payload.len()) as u16).to_be_bytes());
        h.extend(self.id.to_be_bytes());
        let flags = (u16::from(self.dont_fragment) << 14) | (u16::from(self.more_fragments) << 13);
        h.extend((flags | (self.frag_offset & 0x1fff)).to_be_bytes());
        h.push(self.ttl);
        h.push(protocol);
        h.extend([0, 0]);
        h.extend(self.src.octets());
        h.extend(self.dst.octets());
        h.extend(&opts);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend(payload);
        h
    }
}

/// Options a non-first IPv4 fragment carries: those with the "copied" bit
/// (RFC 791), padded to a multiple of 4.
fn copied_options(opts: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,  // End of Options
            1 => i += 1, // No-Op: not copied
            kind => {
                let len = opts.get(i + 1).map_or(opts.len() - i, |l| (*l as usize).max(2));
                let end = (i + len).min(opts.len());
                if kind & 0x80 != 0 {
                    out.extend(&opts[i..end]);
                }
                i = end;
            }
        }
    }
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

/// One fragment of an IPv4 packet: bytes `range` of its payload (after the
/// header), with MF = `more`. The start must be a multiple of 8 (the offset
/// field counts 8-byte units); the range may overlap other fragments or be
/// empty, for evasion tests. Offsets add to the packet's own offset.
pub fn ipv4_fragment(packet: &[u8], range: Range<usize>, more: bool) -> Result<Vec<u8>> {
    ensure!(packet.len() >= 20 && packet[0] >> 4 == 4, "not an IPv4 packet");
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    ensure!(ihl >= 20 && ihl <= total && total <= packet.len(), "bad IPv4 lengths");
    let payload = &packet[ihl..total];
    ensure!(range.start.is_multiple_of(8), "fragment start {} is not a multiple of 8", range.start);
    ensure!(
        range.start <= range.end && range.end <= payload.len(),
        "fragment range {range:?} outside 0..{}",
        payload.len()
    );
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    let offset = (frag & 0x1fff) + (range.start / 8) as u16;
    let opts = if offset == 0 { packet[20..ihl].to_vec() } else { copied_options(&packet[20..ihl]) };
    let mut h = packet[..20].to_vec();
    h[0] = 0x40 | (5 + opts.len() / 4) as u8;
    h.extend(&opts);
    let len = h.len() + range.len();
    h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    let flags = (frag & 0x4000) | (u16::from(more) << 13);
    h[6..8].copy_from_slice(&(flags | offset).to_be_bytes());
    h[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend(&payload[range]);
    Ok(h)
}

/// Cuts an IPv4 packet's payload at byte offsets `cuts` (ascending,
/// multiples of 8; a cut at 0 makes a zero-length first fragment). The last
/// fragment keeps the packet's own MF flag, the others have MF set.
pub fn fragment_ipv4(packet: &[u8], cuts: &[usize]) -> Result<Vec<Vec<u8>>> {
    ensure!(packet.len() >= 20, "not an IPv4 packet");
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let last_more = packet[6] & 0x20 != 0;
    let bounds = bounds(cuts, total.saturating_sub(ihl))?;
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| ipv4_fragment(packet, w[0]..w[1], i + 2 < bounds.len() || last_more))
        .collect()
}

/// `[0, cuts..., len]`, checked to be ascending.
fn bounds(cuts: &[usize], len: usize) -> Result<Vec<usize>> {
    let mut b = vec![0];
    b.extend(cuts);
    b.push(len);
    ensure!(b.windows(2).all(|w| w[0] <= w[1]), "cuts {cuts:?} not ascending within 0..{len}");
    Ok(b)
}

// ---------------------------------------------------------------- IPv6

/// An IPv6 extension header. The next-header and length fields are filled
/// in when the chain is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-Hop options (raw option TLVs; padded with Pad1/PadN).
    HopByHop(Vec<u8>),
    /// Destination options (raw option TLVs; padded with Pad1/PadN).
    DestOpts(Vec<u8>),
    /// A Routing header: type, segments left, and the type-specific data
    /// after the first four bytes (zero-padded to a multiple of 8 in total).
    Routing {
        /// Routing type (0 deprecated, 2 mobility, 4 segment routing).
        routing_type: u8,
        /// Segments left.
        segments_left: u8,
        /// Type-specific data.
        data: Vec<u8>,
    },
    /// A Fragment header.
    Fragment {
        /// Fragment offset in 8-byte units.
        offset: u16,
        /// The M flag.
        more: bool,
        /// Identification.
        id: u32,
    },
    /// Any header with the generic (next header, length in 8-octet units - 1)
    /// layout: the protocol number and the bytes after those two.
    Raw {
        /// Its protocol number.
        protocol: u8,
        /// Its bytes after next-header and length (padded to 8n - 2).
        bytes: Vec<u8>,
    },
}

impl ExtHeader {
    /// A type-0 routing header (deprecated by RFC 5095; kernels drop it when
    /// segments are left) through `addrs`.
    pub fn routing_type0(segments_left: u8, addrs: &[Ipv6Addr]) -> Self {
        let mut data = vec![0; 4];
        addrs.iter().for_each(|a| data.extend(a.octets()));
        ExtHeader::Routing { routing_type: 0, segments_left, data }
    }

    /// A segment routing header (type 4, RFC 8754) with `segments` in
    /// header order (`segments[0]` is the final destination).
    pub fn srh(segments_left: u8, segments: &[Ipv6Addr]) -> Self {
        let mut data = vec![segments.len().saturating_sub(1) as u8, 0, 0, 0];
        segments.iter().for_each(|a| data.extend(a.octets()));
        ExtHeader::Routing { routing_type: 4, segments_left, data }
    }

    /// A fragment header for an atomic fragment (offset 0, no more).
    pub fn atomic_fragment(id: u32) -> Self {
        ExtHeader::Fragment { offset: 0, more: false, id }
    }

    /// Its protocol number (what the previous header's next-header names).
    pub fn protocol(&self) -> u8 {
        match self {
            ExtHeader::HopByHop(_) => proto::HOPOPT,
            ExtHeader::DestOpts(_) => proto::DSTOPTS,
            ExtHeader::Routing { .. } => proto::ROUTING,
            ExtHeader::Fragment { .. } => proto::FRAGMENT,
            ExtHeader::Raw { protocol, .. } => *protocol,
        }
    }

    /// The final destination this header names, if it is a routing header
    /// with segments left (the TCP/UDP pseudo-header uses it, RFC 8200 8.1).
    fn final_destination(&self) -> Option<Ipv6Addr> {
        let ExtHeader::Routing { routing_type, segments_left, data } = self else { return None };
        if *segments_left == 0 {
            return None;
        }
        let addr = |at: usize| data.get(at..at + 16).map(|b| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()));
        match routing_type {
            0 | 2 => addr(4 + 16 * ((data.len().saturating_sub(4) / 16).checked_sub(1)?)),
            4 => addr(4),
            _ => None,
        }
    }

    /// Serialises the header with `next` as its next-header field.
    fn encode(&self, next: u8) -> Vec<u8> {
        let generic = |mut body: Vec<u8>, pad_options: bool| {
            let pad = (8 - (body.len() + 2) % 8) % 8;
            match (pad, pad_options) {
                (0, _) => {}
                (1, true) => body.push(0), // Pad1
                (n, true) => {
                    body.push(1); // PadN
                    body.push((n - 2) as u8);
                    body.extend(std::iter::repeat_n(0, n - 2));
                }
                (n, false) => body.extend(std::iter::repeat_n(0, n)),
            }
            let mut h = vec![next, ((body.len() + 2) / 8 - 1) as u8];
            h.extend(body);
            h
        };
        match self {
            ExtHeader::HopByHop(o) | ExtHeader::DestOpts(o) => generic(o.clone(), true),
            ExtHeader::Routing { routing_type, segments_left, data } => {
                let mut body = vec![*routing_type, *segments_left];
                body.extend(data);
                generic(body, false)
            }
            ExtHeader::Fragment { offset, more, id } => {
                let mut h = vec![next, 0];
                h.extend(((offset << 3) | u16::from(*more)).to_be_bytes());
                h.extend(id.to_be_bytes());
                h
            }
            ExtHeader::Raw { bytes, .. } => generic(bytes.clone(), false),
        }
    }
}

/// An IPv6 header with an extension header chain; [`Ipv6::packet`] adds a
/// payload and the TCP/UDP checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Extension headers, in order, between the fixed header and the payload.
    pub ext: Vec<ExtHeader>,
    /// Destination for the checksum pseudo-header, if it should differ from
    /// the default (the routing header's final destination, else `dst`).
    pub pseudo_dst: Option<Ipv6Addr>,
}

impl Ipv6 {
    /// A plain header: hop limit 64, no extension headers.
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self { src, dst, hop_limit: 64, traffic_class: 0, flow_label: 0, ext: Vec::new(), pseudo_dst: None }
    }

    /// Adds an extension header at the end of the chain (builder style).
    pub fn with(mut self, h: ExtHeader) -> Self {
        self.ext.push(h);
        self
    }

    /// The complete packet: fixed header, extension headers, `l4` with its
    /// checksum over the pseudo-header (RFC 8200 8.1).
    pub fn packet(&self, l4: &L4) -> Vec<u8> {
        let dst = self
            .pseudo_dst
            .or_else(|| self.ext.iter().rev().find_map(ExtHeader::final_destination))
            .unwrap_or(self.dst);
        let protocol = l4.protocol();
        let body = l4.encode(|len| {
            let mut acc = sum16(&self.src.octets(), 0);
            acc = sum16(&dst.octets(), acc);
            acc = sum16(&len.to_be_bytes(), acc);
            sum16(&[0, 0, 0, protocol], acc)
        });
        self.with_payload(protocol, &body)
    }

    /// Fixed header, extension headers, and raw `payload` whose protocol is
    /// `protocol`.
    pub fn with_payload(&self, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, h) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(protocol, ExtHeader::protocol);
            chain.extend(h.encode(next));
        }
        let first = self.ext.first().map_or(protocol, ExtHeader::protocol);
        let mut p = Vec::with_capacity(40 + chain.len() + payload.len());
        let vtf = (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0xfffff);
        p.extend(vtf.to_be_bytes());
        p.extend(((chain.len() + payload.len()) as u16).to_be_bytes());
        p.push(first);
        p.push(self.hop_limit);
        p.extend(self.src.octets());
        p.extend(self.dst.octets());
        p.extend(chain);
        p.extend(payload);
        p
    }
}

/// Splits an IPv6 packet into its per-fragment part and its fragmentable
/// part (RFC 8200 4.5): the fixed header plus Hop-by-Hop, Routing, and
/// Destination options that precede a Routing header. Returns the length of
/// the per-fragment part and the offset of the next-header byte that names
/// the first fragmentable header.
fn ipv6_split(packet: &[u8]) -> Result<(usize, usize)> {
    ensure!(packet.len() >= 40 && packet[0] >> 4 == 6, "not an IPv6 packet");
    // Where the chain's headers start, and their types.
    let mut headers = Vec::new();
    let (mut next, mut at) = (packet[6], 40);
    while matches!(next, proto::HOPOPT | proto::ROUTING | proto::DSTOPTS) && at + 2 <= packet.len() {
        headers.push((next, at));
        let len = (usize::from(packet[at + 1]) + 1) * 8;
        next = packet[at];
        at += len;
    }
    ensure!(at <= packet.len(), "truncated extension header chain");
    let last_routing = headers.iter().rposition(|(t, _)| *t == proto::ROUTING);
    let keep = match last_routing {
        Some(i) => i + 1,
        None => headers.iter().take_while(|(t, _)| *t == proto::HOPOPT).count(),
    };
    let (end, next_byte) = match keep {
        0 => (40, 6),
        k => {
            let (_, start) = headers[k - 1];
            (start + (usize::from(packet[start + 1]) + 1) * 8, start)
        }
    };
    Ok((end, next_byte))
}

/// One fragment of an IPv6 packet: bytes `range` of its fragmentable part,
/// behind a Fragment header with `id` and M = `more`. The start must be a
/// multiple of 8; the range may overlap others or be empty.
pub fn ipv6_fragment(packet: &[u8], range: Range<usize>, more: bool, id: u32) -> Result<Vec<u8>> {
    let (end, next_byte) = ipv6_split(packet)?;
    let total = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    ensure!(total <= packet.len(), "IPv6 payload length beyond the packet");
    let rest = &packet[end..total];
    ensure!(range.start.is_multiple_of(8), "fragment start {} is not a multiple of 8", range.start);
    ensure!(range.start <= range.end && range.end <= rest.len(), "fragment range {range:?} outside 0..{}", rest.len());
    let mut p = packet[..end].to_vec();
    let first_fragmentable = p[next_byte];
    p[next_byte] = proto::FRAGMENT;
    p.extend(ExtHeader::Fragment { offset: (range.start / 8) as u16, more, id }.encode(first_fragmentable));
    p.extend(&rest[range]);
    let payload_len = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&payload_len.to_be_bytes());
    Ok(p)
}

/// Cuts an IPv6 packet's fragmentable part at byte offsets `cuts`
/// (ascending, multiples of 8), all fragments with identification `id`.
pub fn fragment_ipv6(packet: &[u8], cuts: &[usize], id: u32) -> Result<Vec<Vec<u8>>> {
    let (end, _) = ipv6_split(packet)?;
    let total = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let bounds = bounds(cuts, total.saturating_sub(end))?;
    bounds.windows(2).enumerate().map(|(i, w)| ipv6_fragment(packet, w[0]..w[1], i + 2 < bounds.len(), id)).collect()
}

// ---------------------------------------------------------------- Ethernet

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

    /// A frame carrying an IPv4 packet (see [`Ipv4::packet`]).
    pub fn ipv4(&self, packet: &[u8]) -> Vec<u8> {
        self.frame(ethertype::IPV4, packet)
    }

    /// A frame carrying an IPv6 packet (see [`Ipv6::packet`]).
    pub fn ipv6(&self, packet: &[u8]) -> Vec<u8> {
        self.frame(ethertype::IPV6, packet)
    }

    /// A frame carrying an IP packet, its EtherType taken from the version.
    pub fn ip(&self, packet: &[u8]) -> Vec<u8> {
        let et = if packet.first().map(|b| b >> 4) == Some(6) { ethertype::IPV6 } else { ethertype::IPV4 };
        self.frame(et, packet)
    }
}

// ---------------------------------------------------------------- socket

/// An AF_PACKET socket bound to one interface of a namespace. Frames sent
/// go out of that interface as they are (the peer of a veth receives them).
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl RawSocket {
    /// A send-only socket on `ifname` in `ns` (protocol 0: it receives
    /// nothing, so nothing queues up on it).
    pub fn open(ns: &Netns, ifname: &str) -> Result<Self> {
        Self::open_proto(ns, ifname, 0)
    }

    /// A socket that also receives every frame seen on `ifname`, in and out
    /// (for [`RawSocket::recv_timeout`]).
    pub fn open_capture(ns: &Netns, ifname: &str) -> Result<Self> {
        Self::open_proto(ns, ifname, libc::ETH_P_ALL as u16)
    }

    fn open_proto(ns: &Netns, ifname: &str, protocol: u16) -> Result<Self> {
        let ifindex = crate::topology::ifindex(ns, ifname)?;
        let fd = ns
            .run(move || sys::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol.to_be())))
            .context("AF_PACKET socket")?;
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex as i32;
        sys::cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        })
        .with_context(|| format!("bind AF_PACKET to {ifname} in {}", ns.name()))?;
        Ok(Self { fd, ifindex })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let n = sys::cvt_size(unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) })
            .context("send raw frame")?;
        if n != frame.len() {
            bail!("sent {n} of {} bytes", frame.len());
        }
        Ok(())
    }

    /// The next frame received within `timeout` (only for
    /// [`RawSocket::open_capture`] sockets), or `None`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            sys::cvt(r)?;
            if r == 0 {
                return Ok(None);
            }
            let n = sys::cvt_size(unsafe {
                libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            });
            match n {
                Ok(n) => return Ok(Some(buf[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
