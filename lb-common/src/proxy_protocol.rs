//! PROXY protocol v2 in the `nat` data path: the rules the XDP program and
//! the model share (`proxy_protocol = "v2"` on a VIP).
//!
//! The backend learns the client's address from a PROXY protocol header
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>, section
//! 2.2) in front of the client's first byte. The balancer does not proxy:
//! it puts the header into the client's first data segment and from then
//! on shifts the client's sequence numbers by the header's length toward
//! the backend, and the backend's acknowledgements (and SACK blocks) back.
//! Neither end sees anything but a normal TCP stream.
//!
//! # State, in the NAT entry (no layout change)
//!
//! [`NatEntry::proxy_len`] is the header's length (0: no header), written
//! when a SYN creates the entry, from the service's option then: a config
//! change does not change a running flow's shift, and an entry adopted
//! across an agent restart keeps it. [`NAT_PROXY_ACKED`] is set once the
//! backend acknowledged the header.
//!
//! # Rules
//!
//! The entry's sequence state is the backend's (`nat_state`): a client
//! segment is judged after its translation. Until the header is
//! acknowledged, the client's next byte as the backend expects it is the
//! entry's `backend_ack` (`r`, the client's ISN + 1: the backend cannot
//! acknowledge past it without the header):
//!
//! - a client segment with data at `r` (the first one, or a retransmission
//!   of it) gets the header between the TCP header and the payload
//!   ([`PREPEND`]);
//! - a client segment after `r` moves by the header's length ([`SHIFT`]);
//!   one at `r` without data (the handshake's ACK, a FIN of a connection
//!   that sent nothing) or before it is unchanged;
//! - once [`NAT_PROXY_ACKED`]: every client segment moves ([`SHIFT`]);
//! - a backend acknowledgement at or past `r` + length sets
//!   [`NAT_PROXY_ACKED`]; from then on each acknowledgement moves back by
//!   the length ([`ACK_SHIFT`]), the ones before stay as they are;
//! - SACK block edges of a flow with a header always move back
//!   ([`SACK_SHIFT`]): they only ever cover shifted data;
//! - the backend's SYN-ACK's MSS option is lowered by the length
//!   ([`MSS_LOWER`]): the client sizes its segments by it, so a full-size
//!   first segment still fits the path with the header in it;
//! - while the header is not acknowledged, a client FIN does not mark the
//!   entry closing (`nat_state::client_fin`): `backend_ack` must stay `r`.
//!
//! Timestamps, window scale and windows are not touched. An option field
//! is rewritten only at an even offset (the checksum is updated a 16-bit
//! word at a time); Linux aligns MSS and SACK so.

use crate::{
    balancer::{NatEntry, NAT_PROXY_ACKED},
    nat_state::{after, replied, Segment},
    wire::{FAMILY_V4, TCP_ACK, TCP_SYN},
};

/// [`crate::balancer::Service::proxy`]: no header.
pub const PROXY_NONE: u8 = 0;
/// [`crate::balancer::Service::proxy`]: a PROXY protocol v2 header.
pub const PROXY_V2: u8 = 2;

/// The v2 header of a TCP over IPv4 connection: 16 + 12 bytes.
pub const V2_LEN_V4: u8 = 28;
/// The v2 header of a TCP over IPv6 connection: 16 + 36 bytes.
pub const V2_LEN_V6: u8 = 52;
/// The longest header, in 4-byte words.
pub const MAX_WORDS: usize = V2_LEN_V6 as usize / 4;

/// The v2 signature (`\r\n\r\n\0\r\nQUIT\n`).
pub const SIGNATURE: [u8; 12] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
/// Address family and protocol: TCP over IPv4, TCP over IPv6.
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;

/// The header's length for a new flow of a service with option `proxy`
/// (0: none).
#[inline(always)]
pub const fn header_len(proxy: u8, family: u8) -> u8 {
    match proxy {
        PROXY_V2 if family == FAMILY_V4 => V2_LEN_V4,
        PROXY_V2 => V2_LEN_V6,
        _ => 0,
    }
}

/// The v2 header of a TCP connection from `src`:`sport` to `dst`:`dport`
/// (ports host order), as 4-byte words in memory order (`from_ne_bytes`):
/// the first `header_len / 4` are the header. IPv4 addresses are the
/// first four bytes of the 16.
#[inline(always)]
pub fn v2_words(family: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> [u32; MAX_WORDS] {
    let w = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let s = &SIGNATURE;
    let [s0, s1] = sport.to_be_bytes();
    let [d0, d1] = dport.to_be_bytes();
    let ports = u32::from_ne_bytes([s0, s1, d0, d1]);
    let mut out = [0u32; MAX_WORDS];
    out[0] = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
    out[1] = u32::from_ne_bytes([s[4], s[5], s[6], s[7]]);
    out[2] = u32::from_ne_bytes([s[8], s[9], s[10], s[11]]);
    if family == FAMILY_V4 {
        out[3] = u32::from_ne_bytes([VERSION_PROXY, TCP4, 0, V2_LEN_V4 - 16]);
        out[4] = w(src, 0);
        out[5] = w(dst, 0);
        out[6] = ports;
    } else {
        out[3] = u32::from_ne_bytes([VERSION_PROXY, TCP6, 0, V2_LEN_V6 - 16]);
        let mut i = 0;
        while i < 4 {
            out[4 + i] = w(src, 4 * i);
            out[8 + i] = w(dst, 4 * i);
            i += 1;
        }
        out[12] = ports;
    }
    out
}

/// [`client_action`]: the client's segment goes as it is.
pub const UNCHANGED: u8 = 0;
/// [`client_action`]: the segment's sequence number moves by the length.
pub const SHIFT: u8 = 1;
/// [`client_action`]: the header goes in front of the segment's payload.
pub const PREPEND: u8 = 2;

/// What a client's TCP segment of the flow of `e` becomes (see the
/// module's rules).
#[inline(always)]
pub fn client_action(e: &NatEntry, s: &Segment) -> u8 {
    if e.proxy_len == 0 || !replied(e) || s.flags & TCP_SYN != 0 {
        return UNCHANGED;
    }
    if e.state & NAT_PROXY_ACKED != 0 || after(s.seq, e.backend_ack) {
        return SHIFT;
    }
    if s.seq == e.backend_ack && s.payload > 0 {
        return PREPEND;
    }
    UNCHANGED
}

/// The segment as the backend receives it after [`client_action`]
/// `action`: what the NAT state judges.
#[inline(always)]
pub fn translated(s: &mut Segment, action: u8, len: u8) {
    if action == SHIFT {
        s.seq = s.seq.wrapping_add(u32::from(len));
    } else if action == PREPEND {
        s.payload += u32::from(len);
    }
}

/// [`reply_action`]: the acknowledgement moves back by the length.
pub const ACK_SHIFT: u8 = 1;
/// [`reply_action`]: SACK block edges move back by the length.
pub const SACK_SHIFT: u8 = 2;
/// [`reply_action`]: the SYN-ACK's MSS is lowered by the length.
pub const MSS_LOWER: u8 = 4;

/// What a backend's TCP segment of the flow of `e` needs (bits), judged
/// before `nat_state::tcp_reply` takes it into the entry. [`ACK_SHIFT`]
/// means the header is acknowledged: once the segment passed the window
/// check, the caller marks the entry [`NAT_PROXY_ACKED`].
#[inline(always)]
pub fn reply_action(e: &NatEntry, s: &Segment) -> u8 {
    if e.proxy_len == 0 || s.flags & TCP_ACK == 0 {
        return 0;
    }
    if s.flags & TCP_SYN != 0 {
        return MSS_LOWER;
    }
    if !replied(e) {
        return 0;
    }
    if e.state & NAT_PROXY_ACKED == 0 && !after(s.ack, e.backend_ack.wrapping_add(u32::from(e.proxy_len)).wrapping_sub(1)) {
        return SACK_SHIFT;
    }
    ACK_SHIFT | SACK_SHIFT
}

/// Where [`reply_options`] found what it rewrites: offsets in the packet
/// (0: not there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyOptions {
    /// The MSS option's value.
    pub mss: usize,
    /// The first SACK block.
    pub sack: usize,
    /// SACK blocks (8 bytes each, at most [`MAX_SACK_BLOCKS`]).
    pub sack_blocks: usize,
}

/// SACK blocks an option can hold (RFC 2018: 4 in 40 bytes of options).
pub const MAX_SACK_BLOCKS: usize = 4;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_SACK: u8 = 5;

/// The MSS option (a SYN's) or the SACK option (any other segment's)
/// among the TCP options in `[start, end)`, at an even offset, within
/// `nat_state::MAX_OPTION_STEPS` options (Linux puts SACK sixth at the
/// latest: two no-ops, timestamps, two no-ops). `read16` as for
/// `nat_state::window_scale`.
#[inline(always)]
pub fn reply_options(read16: impl Fn(usize) -> Option<u16>, start: usize, end: usize, syn: bool) -> ReplyOptions {
    let mut found = ReplyOptions::default();
    let mut off = start;
    for _ in 0..crate::nat_state::MAX_OPTION_STEPS {
        if off + 2 > end {
            break;
        }
        let Some(kind_len) = read16(off) else { break };
        let (kind, len) = ((kind_len >> 8) as u8, usize::from(kind_len as u8));
        match kind {
            OPT_END => break,
            OPT_NOP => off += 1,
            _ if len < 2 || off + len > end => break,
            OPT_MSS if syn && len == 4 && off % 2 == 0 => {
                found.mss = off + 2;
                break;
            }
            OPT_SACK if !syn && (len - 2) % 8 == 0 && off % 2 == 0 => {
                found.sack = off + 2;
                found.sack_blocks = if (len - 2) / 8 > MAX_SACK_BLOCKS { MAX_SACK_BLOCKS } else { (len - 2) / 8 };
                break;
            }
            _ => off += len,
        }
    }
    found
}

/// The MSS the client gets: `mss` lowered by the header's length (kept
/// when it is not longer than that).
#[inline(always)]
pub const fn lower_mss(mss: u16, len: u8) -> u16 {
    if mss > len as u16 {
        mss - len as u16
    } else {
        mss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        balancer::{NAT_OPENED_BY_SYN, NAT_REPLIED},
        wire::{FAMILY_V6, TCP_FIN},
    };

    fn bytes(words: &[u32]) -> [u8; 52] {
        let mut out = [0u8; 52];
        for (i, w) in words.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    #[test]
    fn the_v2_header_is_the_specifications() {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[203, 0, 113, 7]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[198, 51, 100, 1]);
        let h = bytes(&v2_words(FAMILY_V4, &src, &dst, 40000, 443));
        let want: [u8; 28] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 7, 198, 51, 100, 1, 0x9c, 0x40, 0x01, 0xbb,
        ];
        assert_eq!(&h[..28], &want);
        let src6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let h = bytes(&v2_words(FAMILY_V6, &src6, &dst6, 1, 80));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(&h[16..32], &src6);
        assert_eq!(&h[32..48], &dst6);
        assert_eq!(&h[48..52], &[0, 1, 0, 80]);
        assert_eq!((header_len(PROXY_V2, FAMILY_V4), header_len(PROXY_V2, FAMILY_V6), header_len(PROXY_NONE, FAMILY_V4)), (28, 52, 0));
    }

    fn seg(seq: u32, ack: u32, flags: u8, payload: u32) -> Segment {
        Segment { seq, ack, flags, wscale: 0, window: 100, payload }
    }

    #[test]
    fn the_first_data_gets_the_header_until_the_backend_acknowledges_it() {
        // The backend's SYN-ACK acknowledged the client's ISN 5000.
        let mut e = NatEntry { state: NAT_OPENED_BY_SYN | NAT_REPLIED, proxy_len: 28, backend_ack: 5001, backend_next: 1001, ..NatEntry::default() };
        assert_eq!(client_action(&e, &seg(5001, 1001, TCP_ACK, 0)), UNCHANGED, "the handshake's ACK");
        assert_eq!(client_action(&e, &seg(5001, 1001, TCP_ACK, 100)), PREPEND);
        assert_eq!(client_action(&e, &seg(5101, 1001, TCP_ACK, 100)), SHIFT);
        assert_eq!(client_action(&e, &seg(5000, 1001, TCP_ACK, 1)), UNCHANGED, "before the first byte");
        assert_eq!(client_action(&e, &seg(5001, 1001, TCP_FIN | TCP_ACK, 0)), UNCHANGED, "a FIN without data");
        // The backend's acknowledgements: a partial one changes nothing,
        // the header's moves back and marks the entry.
        assert_eq!(reply_action(&e, &seg(1001, 5001, TCP_ACK, 0)), SACK_SHIFT);
        assert_eq!(reply_action(&e, &seg(1001, 5028, TCP_ACK, 0)), SACK_SHIFT);
        assert_eq!(reply_action(&e, &seg(1001, 5029, TCP_ACK, 0)), ACK_SHIFT | SACK_SHIFT);
        e.state |= NAT_PROXY_ACKED;
        e.backend_ack = 5129;
        assert_eq!(client_action(&e, &seg(5001, 1001, TCP_ACK, 100)), SHIFT, "a late retransmission");
        assert_eq!(reply_action(&e, &seg(1001, 5129, TCP_ACK, 0)), ACK_SHIFT | SACK_SHIFT);
        assert_eq!(reply_action(&e, &seg(1001, 5001, TCP_SYN | TCP_ACK, 0)), MSS_LOWER);
        let none = NatEntry { proxy_len: 0, ..e };
        assert_eq!(client_action(&none, &seg(5001, 1001, TCP_ACK, 100)), UNCHANGED);
    }

    #[test]
    fn a_client_fin_marks_the_entry_only_once_the_header_is_acknowledged() {
        let mut e = NatEntry { state: NAT_OPENED_BY_SYN | NAT_REPLIED, proxy_len: 28, backend_ack: 5001, backend_win: 1000, ..NatEntry::default() };
        let fin = seg(5001, 1001, TCP_FIN | TCP_ACK, 1);
        assert!(!crate::nat_state::client_fin(&mut e, &fin));
        assert_eq!((e.closing, e.backend_ack), (0, 5001), "r stays where the client's data starts");
        e.state |= NAT_PROXY_ACKED;
        let mut shifted = fin;
        translated(&mut shifted, SHIFT, 28);
        assert!(crate::nat_state::client_fin(&mut e, &shifted));
        assert_eq!((e.closing, e.backend_ack), (crate::balancer::NAT_CLOSED, 5031));
    }

    #[test]
    fn mss_and_sack_are_found_at_even_offsets_only() {
        let read = |opts: &'static [u8]| move |off: usize| Some(u16::from_be_bytes([*opts.get(off)?, *opts.get(off + 1)?]));
        let synack: &[u8] = &[2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        assert_eq!(reply_options(read(synack), 0, 20, true), ReplyOptions { mss: 2, sack: 0, sack_blocks: 0 });
        let odd: &[u8] = &[1, 2, 4, 5, 180, 0, 0, 0];
        assert_eq!(reply_options(read(odd), 0, 8, true), ReplyOptions::default());
        let ack: &[u8] = &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 18, 0, 0, 0, 9, 0, 0, 0, 10, 0, 0, 0, 11, 0, 0, 0, 12];
        assert_eq!(reply_options(read(ack), 0, 32, false), ReplyOptions { mss: 0, sack: 16, sack_blocks: 2 });
        assert_eq!(reply_options(read(ack), 0, 32, true), ReplyOptions::default());
        assert_eq!(lower_mss(1460, 28), 1432);
        assert_eq!(lower_mss(20, 28), 20);
    }
}
