//! IPv6 packets with extension header chains, and IPv6 fragmentation.

use std::{net::Ipv6Addr, ops::Range};

use anyhow::{ensure, Result};

use super::{ipv4::bounds, proto, sum16, L4};

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
