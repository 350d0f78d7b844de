//! IPv4 packets (options, fragment fields) and IPv4 fragmentation.

use std::{net::Ipv4Addr, ops::Range};

use anyhow::{ensure, Result};

use super::{checksum, sum16, L4};

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
pub(super) fn bounds(cuts: &[usize], len: usize) -> Result<Vec<usize>> {
    let mut b = vec![0];
    b.extend(cuts);
    b.push(len);
    ensure!(b.windows(2).all(|w| w[0] <= w[1]), "cuts {cuts:?} not ascending within 0..{len}");
    Ok(b)
}
