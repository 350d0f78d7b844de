//! Reading what went over the wire: frames captured behind the isolator (an
//! AF_PACKET socket on the host sees only what XDP passed) and the host's
//! answers captured on the DMZ side.
//!
//! Captured datagrams are read the way a receiver could read them: fragments
//! are reassembled under both overlap policies a stack may follow (the first
//! copy of a byte wins, or the last), and each policy's L4 header counts. So
//! an overlapping fragment that rewrites a port counts as reaching that port
//! even though Linux itself discards overlapping datagrams (RFC 5722).

use std::collections::HashMap;

use crate::rawframe::proto;

/// IPv6 headers a receiver walks over to find the L4 header: those the
/// isolator walks and those Linux knows (routing, destination options).
fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, proto::HOPOPT | proto::ROUTING | proto::DSTOPTS | 135 | 139 | 140)
}

/// The IP packet inside an Ethernet frame (any VLAN tags skipped), cut to
/// the IP header's length; `None` for non-IP frames and bad lengths.
pub fn ip_packet(frame: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let ip = frame.get(at + 2..)?;
    let len = match ethertype {
        0x0800 if ip.len() >= 20 && ip[0] >> 4 == 4 => usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        0x86dd if ip.len() >= 40 && ip[0] >> 4 == 6 => 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        _ => return None,
    };
    ip.get(..len)
}

/// L4 protocol, source port and destination port of a datagram.
pub type Ports = (u8, u16, u16);

/// Walks IPv6 extension headers (when `v6`) from `next` at the start of
/// `bytes` (unknown bytes are `None`) to TCP/UDP, and reads its ports.
fn walk(v6: bool, mut next: u8, bytes: &[Option<u8>]) -> Option<Ports> {
    let byte = |i: usize| bytes.get(i).copied().flatten();
    let mut at = 0;
    let mut hops = 0;
    while v6 && is_ipv6_ext(next) && hops < 64 {
        let len = (usize::from(byte(at + 1)?) + 1) * 8;
        next = byte(at)?;
        at += len;
        hops += 1;
    }
    if next != proto::TCP && next != proto::UDP {
        return None;
    }
    let b: Vec<u8> = (at..at + 4).map(byte).collect::<Option<_>>()?;
    Some((next, u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]])))
}

/// A fragment: which datagram, where, and its bytes.
struct Piece {
    key: (Vec<u8>, u32, u8),
    v6: bool,
    /// IPv4: the protocol; IPv6: the fragment header's next header.
    next: u8,
    offset: usize,
    bytes: Vec<u8>,
}

enum Parsed {
    Whole { v6: bool, next: u8, l4: Vec<u8> },
    Fragment(Piece),
}

fn parse(ip: &[u8]) -> Option<Parsed> {
    let version = ip.first()? >> 4;
    if !((version == 4 && ip.len() >= 20) || (version == 6 && ip.len() >= 40)) {
        return None;
    }
    if version == 4 {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let payload = ip.get(ihl..)?.to_vec();
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        let (offset, more) = (usize::from(frag & 0x1fff) * 8, frag & 0x2000 != 0);
        if offset == 0 && !more {
            return Some(Parsed::Whole { v6: false, next: ip[9], l4: payload });
        }
        let key = (ip[12..20].to_vec(), u32::from(u16::from_be_bytes([ip[4], ip[5]])), ip[9]);
        return Some(Parsed::Fragment(Piece { key, v6: false, next: ip[9], offset, bytes: payload }));
    }
    let (mut next, mut at) = (ip[6], 40);
    loop {
        if next == proto::FRAGMENT {
            let h = ip.get(at..at + 8)?;
            let field = u16::from_be_bytes([h[2], h[3]]);
            let (offset, more) = (usize::from(field & 0xfff8), field & 1 != 0);
            if offset == 0 && !more {
                next = h[0];
                at += 8;
                continue; // atomic fragment: a whole datagram (RFC 6946)
            }
            let key = (ip[8..40].to_vec(), u32::from_be_bytes([h[4], h[5], h[6], h[7]]), 0);
            return Some(Parsed::Fragment(Piece { key, v6: true, next: h[0], offset, bytes: ip[at + 8..].to_vec() }));
        }
        if !is_ipv6_ext(next) {
            return Some(Parsed::Whole { v6: true, next, l4: ip.get(at..)?.to_vec() });
        }
        let h = ip.get(at..at + 2)?;
        next = h[0];
        at += (usize::from(h[1]) + 1) * 8;
    }
}

/// The ports of every datagram among `frames` (Ethernet frames, in arrival
/// order), reassembled: whole datagrams once, fragmented ones under the
/// first-wins and the last-wins overlap policy (a reading each). Fragments need not be complete: what the bytes at the L4 header
/// say counts.
pub fn readings(frames: &[Vec<u8>]) -> Vec<Ports> {
    let mut out = Vec::new();
    let mut datagrams: HashMap<(Vec<u8>, u32, u8), Vec<Piece>> = HashMap::new();
    for f in frames {
        match ip_packet(f).and_then(parse) {
            Some(Parsed::Whole { v6, next, l4 }) => {
                let bytes: Vec<Option<u8>> = l4.into_iter().map(Some).collect();
                out.extend(walk(v6, next, &bytes));
            }
            Some(Parsed::Fragment(p)) => datagrams.entry(p.key.clone()).or_default().push(p),
            None => {}
        }
    }
    for pieces in datagrams.values() {
        let len = pieces.iter().map(|p| p.offset + p.bytes.len()).max().unwrap_or(0);
        for last_wins in [false, true] {
            let mut buf: Vec<Option<u8>> = vec![None; len];
            for p in pieces {
                for (i, b) in p.bytes.iter().enumerate() {
                    let slot = &mut buf[p.offset + i];
                    if last_wins || slot.is_none() {
                        *slot = Some(*b);
                    }
                }
            }
            // The first fragment's next header names the datagram's first
            // fragmentable header; the same policy picks among several.
            let mut firsts = pieces.iter().filter(|p| p.offset == 0);
            let first = if last_wins { firsts.next_back() } else { firsts.next() };
            if let Some(first) = first {
                out.extend(walk(first.v6, first.next, &buf));
            }
        }
    }
    out
}

/// An answer from the host to a probe: the probe's destination port (the
/// answer's source, or the port an ICMP error quotes) and the probe's source
/// port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// TCP or UDP.
    pub proto: u8,
    /// The port the probe reached.
    pub port: u16,
    /// The probe's source port (the answer's destination).
    pub probe_sport: u16,
}

/// Reads a frame the host sent as an answer: a TCP segment (SYN-ACK, RST)
/// or UDP datagram (an echo), or an ICMP/ICMPv6 port-unreachable quoting a
/// probe.
pub fn answer(frame: &[u8]) -> Option<Answer> {
    let ip = ip_packet(frame)?;
    let (v6, next, l4) = match parse(ip)? {
        Parsed::Whole { v6, next, l4 } => (v6, next, l4),
        Parsed::Fragment(_) => return None,
    };
    let bytes: Vec<Option<u8>> = l4.iter().copied().map(Some).collect();
    if let Some((proto, sport, dport)) = walk(v6, next, &bytes) {
        return Some(Answer { proto, port: sport, probe_sport: dport });
    }
    // ICMP destination unreachable / port unreachable, quoting the probe.
    let unreachable = match (v6, next) {
        (false, proto::ICMP) => l4.first() == Some(&3) && l4.get(1) == Some(&3),
        (true, proto::ICMPV6) => l4.first() == Some(&1) && l4.get(1) == Some(&4),
        _ => false,
    };
    if !unreachable {
        return None;
    }
    let quoted = l4.get(8..)?;
    let (v6, next, inner) = match parse(quoted)? {
        Parsed::Whole { v6, next, l4 } => (v6, next, l4),
        Parsed::Fragment(p) if p.offset == 0 => (p.v6, p.next, p.bytes),
        Parsed::Fragment(_) => return None,
    };
    let bytes: Vec<Option<u8>> = inner.into_iter().map(Some).collect();
    let (proto, sport, dport) = walk(v6, next, &bytes)?;
    Some(Answer { proto, port: dport, probe_sport: sport })
}
