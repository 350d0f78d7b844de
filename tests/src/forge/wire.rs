//! Reading captured frames: TCP and UDP headers, a connection's sequence
//! numbers as the wire shows them, and frames that carry a forged payload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{evasion::observe::ip_packet, rawframe::proto};

/// A TCP or UDP segment of a captured frame (plain IP headers only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// TCP or UDP.
    pub proto: u8,
    /// Source.
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// TCP acknowledgement number (0 for UDP).
    pub ack: u32,
    /// TCP flags (0 for UDP).
    pub flags: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The segment in `frame`, if it is TCP or UDP in IPv4 without fragments
/// or IPv6 without extension headers.
pub fn segment(frame: &[u8]) -> Option<Segment> {
    let ip = ip_packet(frame)?;
    let (src, dst, next, l4) = match ip[0] >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            let a = |at: usize| IpAddr::V4(Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]));
            (a(12), a(16), ip[9], ip.get(ihl..)?)
        }
        6 => {
            let a = |at: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap()));
            (a(8), a(24), ip[6], &ip[40..])
        }
        _ => return None,
    };
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let (sport, dport) = (port(0)?, port(2)?);
    let u32_at = |at: usize| Some(u32::from_be_bytes(l4.get(at..at + 4)?.try_into().ok()?));
    match next {
        proto::TCP => {
            let off = usize::from(*l4.get(12)? >> 4) * 4;
            Some(Segment {
                proto: next,
                src: SocketAddr::new(src, sport),
                dst: SocketAddr::new(dst, dport),
                seq: u32_at(4)?,
                ack: u32_at(8)?,
                flags: *l4.get(13)?,
                payload: l4.get(off..)?.to_vec(),
            })
        }
        proto::UDP => Some(Segment {
            proto: next,
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
            seq: 0,
            ack: 0,
            flags: 0,
            payload: l4.get(8..)?.to_vec(),
        }),
        _ => None,
    }
}

/// A TCP connection's next sequence numbers, each way, as last seen on
/// the wire (the client's side of it: client ↔ VIP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seqs {
    /// The client's next sequence number (what the backend acknowledges).
    pub client_next: u32,
    /// The backend's next sequence number (what the client acknowledges).
    pub server_next: u32,
}

/// [`Seqs`] of the connection `client` ↔ `vip` from captured `frames`
/// (both directions, in capture order); `None` without a segment each way.
pub fn seqs(frames: &[Vec<u8>], client: SocketAddr, vip: SocketAddr) -> Option<Seqs> {
    let (mut c, mut s) = (None, None);
    for seg in frames.iter().filter_map(|f| segment(f)).filter(|s| s.proto == proto::TCP) {
        let len = seg.payload.len() as u32 + u32::from(seg.flags & 0x03 != 0);
        let next = seg.seq.wrapping_add(len);
        if seg.src == client && seg.dst == vip {
            c = Some(next);
        } else if seg.src == vip && seg.dst == client {
            s = Some(next);
        }
    }
    Some(Seqs { client_next: c?, server_next: s? })
}

/// The frames among `frames` whose bytes contain `marker` anywhere.
pub fn carrying<'a>(frames: &'a [Vec<u8>], marker: &[u8]) -> Vec<&'a Vec<u8>> {
    frames.iter().filter(|f| f.windows(marker.len()).any(|w| w == marker)).collect()
}
