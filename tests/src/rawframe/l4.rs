//! TCP and UDP segments, checksummed when an IP layer places them.

use super::{fold, proto, sum16};

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

    /// A TCP ACK of an established connection carrying `payload`.
    pub fn tcp_ack(sport: u16, dport: u16, payload: &[u8]) -> Self {
        L4::Tcp { sport, dport, seq: 1, ack: 1, flags: 0x10, window: 1000, payload: payload.to_vec() }
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
    pub(super) fn encode(&self, pseudo: impl Fn(u32) -> u32) -> Vec<u8> {
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
