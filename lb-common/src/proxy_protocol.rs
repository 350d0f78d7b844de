//! PROXY protocol v1 and v2 in the `nat` data path: the rules the XDP
//! program and the model share (`proxy_protocol = "v1"` or `"v2"` on a
//! VIP or a rule).
//!
//! The backend learns the client's address from a PROXY protocol header
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>: v1, the
//! text line, section 2.1; v2, binary, section 2.2) in front of the
//! client's first byte. The balancer does not proxy:
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
//! across an agent restart keeps it. The length also tells the version
//! ([`is_text`]): a v2 header is 28 or 52 bytes, a v1 line of the same
//! family is always longer (32–56 and 96–104). [`NAT_PROXY_ACKED`] is set once the
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
//! A v1 line of odd length puts the client's payload at an odd offset of
//! the segment, which swaps the bytes of the payload's 16-bit words as the
//! checksum sees them: [`realign`] moves the payload's sum (taken from the
//! segment's own checksum, so a corrupt segment stays corrupt) to its
//! swapped form.
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
/// [`crate::balancer::Service::proxy`]: a PROXY protocol v1 (text) line.
pub const PROXY_V1: u8 = 1;
/// [`crate::balancer::Service::proxy`]: a PROXY protocol v2 header.
pub const PROXY_V2: u8 = 2;

/// The option's name in the config (`None`: no header).
pub const fn name(proxy: u8) -> Option<&'static str> {
    match proxy {
        PROXY_V1 => Some("v1"),
        PROXY_V2 => Some("v2"),
        _ => None,
    }
}

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

/// The header's length for a new flow from `src`:`sport` to
/// `dst`:`dport` (ports host order) of a service with option `proxy` (0:
/// none).
#[inline(always)]
pub fn header_len(proxy: u8, family: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> u8 {
    match proxy {
        PROXY_V2 if family == FAMILY_V4 => V2_LEN_V4,
        PROXY_V2 => V2_LEN_V6,
        PROXY_V1 => v1_len(family, src, dst, sport, dport),
        _ => 0,
    }
}

/// Whether a flow's header of `len` bytes (not 0) is a v1 line: every v1
/// line is longer than the v2 header of its family.
#[inline(always)]
pub const fn is_text(family: u8, len: u8) -> bool {
    len > if family == FAMILY_V4 { V2_LEN_V4 } else { V2_LEN_V6 }
}

/// `PROXY TCP4 ` and `PROXY TCP6 `.
const V1_PREFIX_LEN: u8 = 11;
/// An IPv6 address in the v1 line: eight groups of four hex digits (the
/// specification's form without `::`, so every address is as long).
const V1_IPV6_LEN: u8 = 39;
/// The longest v1 line: TCP6, both ports five digits.
pub const V1_MAX_LEN: u8 = V1_PREFIX_LEN + 2 * V1_IPV6_LEN + 2 * 5 + 3 + 2;
/// The buffer [`v1_text`] writes: the longest line, the zero bytes after
/// it, and room for an index mask (`& (V1_BUF - 1)`) the verifier can see.
pub const V1_BUF: usize = 128;

/// The decimal digits of `v` (below 100 000), without branches: each
/// term is 1 exactly when `v` reaches that power of ten.
#[inline(always)]
const fn decimal_len(v: u32) -> u32 {
    1 + ((v + (1 << 17) - 10) >> 17) + ((v + (1 << 17) - 100) >> 17) + ((v + (1 << 17) - 1000) >> 17) + ((v + (1 << 17) - 10000) >> 17)
}

/// The length of the v1 line of a connection.
#[inline(always)]
fn v1_len(family: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> u8 {
    let ports = decimal_len(u32::from(sport)) + decimal_len(u32::from(dport));
    let addrs = if family == FAMILY_V4 {
        let mut n = 2 * 3;
        let mut i = 0;
        while i < 4 {
            n += decimal_len(u32::from(src[i & 3])) + decimal_len(u32::from(dst[i & 3]));
            i += 1;
        }
        n
    } else {
        2 * u32::from(V1_IPV6_LEN)
    };
    // Prefix, three spaces, CRLF.
    (u32::from(V1_PREFIX_LEN) + addrs + ports + 3 + 2) as u8
}

/// Writes `v` (below 100 000) in decimal at `pos`, without leading zeros,
/// and returns the position after it. Always writes five bytes (the ones
/// after the number are zeros for the next field to overwrite), so the
/// path does not branch on the number of digits.
#[inline(always)]
fn put_decimal(out: &mut [u8; V1_BUF], pos: usize, v: u32) -> usize {
    let n = decimal_len(v);
    let mut digits = 0u64;
    let mut d = v;
    let mut i = 0;
    while i < 5 {
        digits |= u64::from(b'0' as u32 + d % 10) << (8 * i);
        d /= 10;
        i += 1;
    }
    // The number's first digit to the top byte of the five.
    let aligned = (digits << (8 * (5 - n))) & 0xff_ffff_ffff;
    let mut i = 0;
    while i < 5 {
        out[(pos + i) & (V1_BUF - 1)] = (aligned >> (8 * (4 - i))) as u8;
        i += 1;
    }
    pos + n as usize
}

/// Writes the four lowercase hex digits of the big-endian group at
/// `b[i..i + 2]` at `pos`.
#[inline(always)]
fn put_hex_group(out: &mut [u8; V1_BUF], pos: usize, b: &[u8; 16], i: usize) {
    // The masks change nothing (i < 15); they keep the kernel's copy free
    // of bounds checks.
    let g = u32::from(b[i & 15]) << 8 | u32::from(b[(i + 1) & 15]);
    let mut k = 0;
    while k < 4 {
        let d = (g >> (12 - 4 * k)) & 0xf;
        // '0'..'9', and from 10 on 39 more: 'a'..'f'.
        out[(pos + k) & (V1_BUF - 1)] = (b'0' as u32 + d + 39 * ((d + 6) >> 4)) as u8;
        k += 1;
    }
}

/// Writes the address at `pos` as the v1 line has it; returns the
/// position after it.
#[inline(always)]
fn put_address(out: &mut [u8; V1_BUF], pos: usize, family: u8, b: &[u8; 16]) -> usize {
    let mut pos = pos;
    if family == FAMILY_V4 {
        let mut i = 0;
        while i < 4 {
            if i > 0 {
                out[pos & (V1_BUF - 1)] = b'.';
                pos += 1;
            }
            pos = put_decimal(out, pos, u32::from(b[i & 3]));
            i += 1;
        }
    } else {
        let mut i = 0;
        while i < 8 {
            if i > 0 {
                out[pos & (V1_BUF - 1)] = b':';
                pos += 1;
            }
            put_hex_group(out, pos, b, 2 * i);
            pos += 4;
            i += 1;
        }
    }
    pos
}

/// The v1 line of a TCP connection from `src`:`sport` to `dst`:`dport`
/// (ports host order; IPv4 addresses are the first four bytes of the 16)
/// into `out`: its first [`header_len`] bytes, then at least three zero
/// bytes, so the line's last word can be read whole.
#[inline(always)]
pub fn v1_text(family: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, out: &mut [u8; V1_BUF]) {
    let prefix: &[u8; 11] = if family == FAMILY_V4 { b"PROXY TCP4 " } else { b"PROXY TCP6 " };
    let mut i = 0;
    while i < prefix.len() {
        out[i] = prefix[i];
        i += 1;
    }
    let mut pos = put_address(out, prefix.len(), family, src);
    out[pos & (V1_BUF - 1)] = b' ';
    pos = put_address(out, pos + 1, family, dst);
    out[pos & (V1_BUF - 1)] = b' ';
    pos = put_decimal(out, pos + 1, u32::from(sport));
    out[pos & (V1_BUF - 1)] = b' ';
    pos = put_decimal(out, pos + 1, u32::from(dport));
    let end: &[u8; 5] = b"\r\n\0\0\0";
    let mut i = 0;
    while i < end.len() {
        out[(pos + i) & (V1_BUF - 1)] = end[i];
        i += 1;
    }
}

/// The checksum change when a payload whose 16-bit sum (memory order) is
/// `payload` moves by an odd number of bytes: each of its bytes changes
/// sides in its word, so its sum becomes the byte-swapped sum (RFC 1071
/// 2(B)). Add it to the segment's [`crate::csum::Delta`].
#[inline(always)]
pub fn realign(d: &mut crate::csum::Delta, payload: u16) {
    d.word16(payload, payload.swap_bytes());
}

/// The payload's 16-bit sum (memory order) of a segment whose
/// pseudo-header, TCP header and checksum add up to `covered` (memory
/// order, unfolded): what the checksum says the rest adds up to.
#[inline(always)]
pub fn payload_sum(covered: u64) -> u16 {
    !crate::csum::fold64(covered)
}

/// The pseudo-header's addresses and protocol (memory order, unfolded):
/// the part of [`payload_sum`]'s `covered` that is not in the segment.
#[inline(always)]
pub fn pseudo_sum(family: u8, src: &[u8; 16], dst: &[u8; 16], tcp_len: u16) -> u64 {
    let n = if family == FAMILY_V4 { 2 } else { 8 };
    let mut sum = u64::from(u16::from_ne_bytes([0, crate::wire::IPPROTO_TCP])) + u64::from(u16::from_ne_bytes(tcp_len.to_be_bytes()));
    let mut i = 0;
    while i < n {
        let j = (2 * i) & 14;
        sum += u64::from(u16::from_ne_bytes([src[j], src[j + 1]])) + u64::from(u16::from_ne_bytes([dst[j], dst[j + 1]]));
        i += 1;
    }
    sum
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
    extern crate std;
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
        assert_eq!((header_len(PROXY_V2, FAMILY_V4, &src, &dst, 1, 2), header_len(PROXY_V2, FAMILY_V6, &src6, &dst6, 1, 2), header_len(PROXY_NONE, FAMILY_V4, &src, &dst, 1, 2)), (28, 52, 0));
    }

    /// The v1 line as the specification writes it (section 2.1), built
    /// with std's formatting: IPv4 dotted decimal, IPv6 as eight groups of
    /// four hex digits, ports decimal.
    fn spec_v1(family: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> std::string::String {
        use std::{format, string::String};
        let addr = |b: &[u8; 16]| -> String {
            if family == FAMILY_V4 {
                format!("{}", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            } else {
                let groups: std::vec::Vec<String> = b.chunks(2).map(|g| format!("{:02x}{:02x}", g[0], g[1])).collect();
                groups.join(":")
            }
        };
        let tcp = if family == FAMILY_V4 { "TCP4" } else { "TCP6" };
        format!("PROXY {tcp} {} {} {sport} {dport}\r\n", addr(src), addr(dst))
    }

    fn v1(family: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> std::vec::Vec<u8> {
        let mut out = [0xeeu8; V1_BUF];
        v1_text(family, src, dst, sport, dport, &mut out);
        let n = usize::from(header_len(PROXY_V1, family, src, dst, sport, dport));
        assert_eq!(&out[n..n + 3], &[0, 0, 0], "zeros after the line");
        out[..n].to_vec()
    }

    #[test]
    fn the_v1_line_is_the_specifications() {
        let v4 = |a: [u8; 4]| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a);
            b
        };
        assert_eq!(v1(FAMILY_V4, &v4([203, 0, 113, 7]), &v4([198, 51, 100, 1]), 40000, 443), b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n");
        assert_eq!(v1(FAMILY_V4, &v4([0, 0, 0, 0]), &v4([1, 2, 3, 4]), 0, 9), b"PROXY TCP4 0.0.0.0 1.2.3.4 0 9\r\n");
        let src6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0xef, 0x01];
        let dst6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let line = v1(FAMILY_V6, &src6, &dst6, 65535, 80);
        assert_eq!(line, b"PROXY TCP6 2001:0db8:0000:0000:0000:0000:abcd:ef01 fd00:0000:0000:0000:0000:0000:0000:0002 65535 80\r\n");
        // The receiver's parse gives the addresses back.
        let text = std::str::from_utf8(&line).unwrap();
        let fields: std::vec::Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(fields[2].parse::<std::net::Ipv6Addr>().unwrap().octets(), src6);
        assert_eq!(fields[3].parse::<std::net::Ipv6Addr>().unwrap().octets(), dst6);
        // Every length, every digit count: against std's formatting.
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(16);
        for i in 0..20_000u32 {
            let family = if i % 2 == 0 { FAMILY_V4 } else { FAMILY_V6 };
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rng, &mut src);
            rand::RngCore::fill_bytes(&mut rng, &mut dst);
            if family == FAMILY_V4 {
                src[4..].fill(0);
                dst[4..].fill(0);
                // Short octets as often as long ones.
                for b in src[..4].iter_mut().chain(dst[..4].iter_mut()) {
                    *b >>= rand::Rng::gen_range(&mut rng, 0..8);
                }
            }
            let port = |r: &mut rand::rngs::SmallRng| (rand::Rng::gen::<u16>(r)) >> rand::Rng::gen_range(r, 0..16);
            let (sport, dport) = (port(&mut rng), port(&mut rng));
            let want = spec_v1(family, &src, &dst, sport, dport);
            assert_eq!(v1(family, &src, &dst, sport, dport), want.as_bytes());
            let len = header_len(PROXY_V1, family, &src, &dst, sport, dport);
            assert!(is_text(family, len) && len <= V1_MAX_LEN, "{len}");
            assert!(!is_text(family, header_len(PROXY_V2, family, &src, &dst, sport, dport)));
        }
    }

    #[test]
    fn an_odd_length_header_keeps_the_checksum_right() {
        use crate::csum::{fold, sum_words, Delta};
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
        for case in 0..2_000usize {
            let (src, dst) = ([10u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [10u8, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            // A TCP header (20 bytes, checksum at 16) and a payload of any length.
            let mut seg = std::vec![0u8; 20 + case % 300];
            rand::RngCore::fill_bytes(&mut rng, &mut seg);
            seg[16..18].fill(0);
            let pseudo = |seg: &[u8]| -> std::vec::Vec<u8> {
                let mut v = std::vec::Vec::new();
                v.extend_from_slice(&src[..4]);
                v.extend_from_slice(&dst[..4]);
                v.extend_from_slice(&[0, 6]);
                v.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                v
            };
            let full = |seg: &[u8]| {
                let mut padded = pseudo(seg);
                padded.extend_from_slice(seg);
                if padded.len() % 2 == 1 {
                    padded.push(0);
                }
                !fold(sum_words(&padded, 0))
            };
            let c = full(&seg);
            seg[16..18].copy_from_slice(&c.to_be_bytes());
            // What the kernel and the model do: the header's words, the
            // payload's sum from the checksum, the length.
            let header_len = 31 + 2 * (case % 10);
            let header: std::vec::Vec<u8> = (0..header_len).map(|i| b'A' + (i % 26) as u8).collect();
            let mut covered = pseudo_sum(FAMILY_V4, &src, &dst, seg.len() as u16);
            for w in seg[..20].chunks(2) {
                covered += u64::from(u16::from_ne_bytes([w[0], w[1]]));
            }
            let mut d = Delta::default();
            let mut padded = header.clone();
            padded.resize(header_len.div_ceil(4) * 4, 0);
            for w in padded.chunks(4) {
                d.word32(0, u32::from_ne_bytes(w.try_into().unwrap()));
            }
            realign(&mut d, payload_sum(covered));
            let new_len = (seg.len() + header_len) as u16;
            d.word16(u16::from_ne_bytes((seg.len() as u16).to_be_bytes()), u16::from_ne_bytes(new_len.to_be_bytes()));
            let incremental = u16::from_be_bytes(d.apply(u16::from_ne_bytes(c.to_be_bytes())).to_ne_bytes());
            let mut grown = seg[..20].to_vec();
            grown.extend_from_slice(&header);
            grown.extend_from_slice(&seg[20..]);
            grown[16..18].fill(0);
            let want = full(&grown);
            // One's complement has two zeros; the receiver takes either.
            assert!(incremental == want || (incremental == 0xffff && want == 0) || (incremental == 0 && want == 0xffff), "case {case}: {incremental:#06x} vs {want:#06x}");
        }
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
