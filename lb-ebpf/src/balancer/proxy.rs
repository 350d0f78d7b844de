//! Rules 6c and 8c of the model: the PROXY protocol header (v1's line or
//! v2's binary one) in a `nat` flow's first data segment, and the sequence shift that follows it
//! (`lb_common::proxy_protocol` decides; this writes the packet). Off the
//! hot path: only flows with the option come here.

use core::{ffi::c_void, ptr::null_mut};

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    csum::Delta,
    isolator::FAMILY_V4,
    proxy_protocol::{self, ACK_SHIFT, MAX_SACK_BLOCKS, MAX_WORDS, MSS_LOWER, SACK_SHIFT, V1_BUF},
    wire::{offset, ETH_HLEN, TCP_MIN_HLEN, TCP_SYN},
};

use super::{
    parse::{Parsed, L3},
    scratch::Scratch,
};
use crate::{
    bytes::{ne16, set_ne16, set_word, word},
    packet::{tcp_flags, tcp_header_len, Packet, TcpHdr},
};

/// The IP and TCP headers at their longest, in words: what moves when the
/// frame grows.
const MAX_HEADER_WORDS: usize = (60 + 60) / 4;
/// The TCP header at its longest.
pub const TCP_MAX_HLEN: usize = 64;

/// The four bytes at `off` for writing, if they are inside the packet.
#[inline(always)]
fn word_at(pkt: &Packet, off: usize) -> Option<&mut [u8; 4]> {
    // SAFETY: `at` checked the bytes are inside the packet, which XDP may
    // write; nothing else refers to them.
    pkt.at::<4>(off).map(|p| unsafe { &mut *(p as *mut [u8; 4]) })
}

/// The two bytes at `off` for writing, if they are inside the packet.
#[inline(always)]
fn half_at(pkt: &Packet, off: usize) -> Option<&mut [u8; 2]> {
    // SAFETY: as for `word_at`.
    pkt.at::<2>(off).map(|p| unsafe { &mut *(p as *mut [u8; 2]) })
}

/// The PROXY protocol header's length for a new flow of the parsed packet
/// to a service with option `proxy`. Not inlined: a v1 line's length
/// takes registers the new-flow path has no stack left to spill for.
#[inline(never)]
pub fn header_len(proxy: u8, p: &Parsed) -> u8 {
    proxy_protocol::header_len(proxy, p.family, &p.src, &p.dst, p.sport, p.dport)
}

/// Puts the parsed packet's PROXY protocol header (`s.proxy_len` bytes;
/// the addresses and ports it arrived with) between its TCP header and
/// its payload: the frame grows at the front and the headers move there.
/// Updates the IP length and the checksums; the NAT rewrite comes after.
/// The packet as it is now, or `None` (no headroom, or the headers were
/// not there: the packet must be dropped).
#[inline(never)]
pub fn prepend(ctx: &XdpContext, s: &mut Scratch) -> Option<Packet> {
    let p = &s.parsed;
    let len = usize::from(s.proxy_len);
    let text = proxy_protocol::is_text(p.family, s.proxy_len);
    let hl = p.l4 + tcp_header_len(Packet::new(ctx).header::<TcpHdr>(p.l4)?);
    if text {
        proxy_protocol::v1_text(p.family, &p.src, &p.dst, p.sport, p.dport, &mut s.proxy_text);
    }
    let p = &s.parsed;
    // SAFETY: the context is the program's own; on failure nothing moved.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(len as i32)) } != 0 {
        return None;
    }
    let pkt = Packet::new(ctx);
    // The headers move forward a word at a time; their source is `len`
    // (at least 28) bytes ahead, so the copy never reads what it wrote.
    // The MACs are written when the packet is sent.
    pkt.write(offset::ETH_TYPE, pkt.bytes_at::<2>(len + offset::ETH_TYPE)?)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_HEADER_WORDS {
        if off >= hl {
            break;
        }
        let w = word(word_at(&pkt, off + len)?);
        set_word(word_at(&pkt, off)?, w);
        off += 4;
    }
    let mut tcp = if text { put_text(ctx, hl, len, s)? } else { put_binary(&pkt, hl, len, p)? };
    let p = &s.parsed;
    let v4 = p.family == FAMILY_V4;
    let field = half_at(&pkt, L3 + if v4 { offset::IPV4_TOT_LEN } else { offset::IPV6_PAYLOAD_LEN })?;
    let old = u16::from_be_bytes(*field);
    let new = old.wrapping_add(len as u16);
    // The pseudo-header's TCP length: the IPv4 total length less the IP
    // header, the IPv6 payload length.
    let l3_len = if v4 { (p.l4 - L3) as u16 } else { 0 };
    if len % 2 == 1 {
        realign_payload(ctx, s, hl, old.wrapping_sub(l3_len), &mut tcp)?;
    }
    let p = &s.parsed;
    tcp.word16(u16::from_ne_bytes(old.wrapping_sub(l3_len).to_be_bytes()), u16::from_ne_bytes(new.wrapping_sub(l3_len).to_be_bytes()));
    if v4 {
        let mut ip = Delta::default();
        ip.word16(u16::from_ne_bytes(old.to_be_bytes()), u16::from_ne_bytes(new.to_be_bytes()));
        let check = half_at(&pkt, L3 + offset::IPV4_CHECK)?;
        set_ne16(check, ip.apply(ne16(check)));
    }
    *field = new.to_be_bytes();
    let check = half_at(&pkt, p.l4 + offset::TCP_CHECK)?;
    set_ne16(check, tcp.apply(ne16(check)));
    Some(pkt)
}

/// Writes the v2 header (`len` bytes, whole words) at `at`; its sum.
#[inline(always)]
fn put_binary(pkt: &Packet, at: usize, len: usize, p: &Parsed) -> Option<Delta> {
    let words = proxy_protocol::v2_words(p.family, &p.src, &p.dst, p.sport, p.dport);
    let mut d = Delta::default();
    let mut i = 0;
    while i < MAX_WORDS && 4 * i < len {
        set_word(word_at(pkt, at + 4 * i)?, words[i]);
        d.word32(0, words[i]);
        i += 1;
    }
    Some(d)
}

/// Writes the v1 line (`len` bytes of `s.proxy_text`) at `at`; its sum.
/// Helpers copy and add up the line whatever its length, so the verifier
/// sees one path instead of one per length.
#[inline(always)]
fn put_text(ctx: &XdpContext, at: usize, len: usize, s: &mut Scratch) -> Option<Delta> {
    let n = len & (V1_BUF - 1);
    if n == 0 {
        return None;
    }
    let text = s.proxy_text.as_mut_ptr() as *mut c_void;
    // SAFETY: `text` has `V1_BUF` bytes, more than `n`; the helper checks
    // the packet's bounds.
    if unsafe { bpf_xdp_store_bytes(ctx.as_ptr() as *mut _, at as u32, text, n as u32) } != 0 {
        return None;
    }
    // Whole words: `v1_text` left zeros after the line.
    let words = (n + 3) & (V1_BUF - 4);
    // SAFETY: as above, `words` < `V1_BUF`.
    let sum = unsafe { bpf_csum_diff(null_mut(), 0, text as *mut u32, words as u32, 0) };
    let mut d = Delta::default();
    d.word32(0, u32::try_from(sum).ok()?);
    Some(d)
}

/// An odd-length header moved the payload to an odd offset: the change to
/// its sum, which the segment's checksum gives (over the pseudo-header
/// with the old `tcp_len`, and the TCP header at `p.l4`..`hl`, before the
/// checksum is updated). The header is copied out and added up by
/// helpers, for one verifier path whatever its length.
#[inline(always)]
fn realign_payload(ctx: &XdpContext, s: &mut Scratch, hl: usize, tcp_len: u16, d: &mut Delta) -> Option<()> {
    let p = &s.parsed;
    let n = (hl - p.l4) & (TCP_MAX_HLEN - 1);
    if n < TCP_MIN_HLEN {
        return None;
    }
    let buf = s.proxy_tcp_header.as_mut_ptr() as *mut c_void;
    // SAFETY: the buffer has `TCP_MAX_HLEN` bytes, `n` is below; the
    // helpers check the packet's bounds and the size.
    if unsafe { bpf_xdp_load_bytes(ctx.as_ptr() as *mut _, p.l4 as u32, buf, n as u32) } != 0 {
        return None;
    }
    let header = unsafe { bpf_csum_diff(null_mut(), 0, buf as *mut u32, n as u32, 0) };
    let covered = proxy_protocol::pseudo_sum(p.family, &p.src, &p.dst, tcp_len) + u64::from(u32::try_from(header).ok()?);
    proxy_protocol::realign(d, proxy_protocol::payload_sum(covered));
    Some(())
}

/// Adds `by` to the big-endian word at `off` and its change to `d`.
#[inline(always)]
fn add_be32(pkt: &Packet, off: usize, by: u32, d: &mut Delta) -> Option<()> {
    let f = word_at(pkt, off)?;
    let old = word(f);
    let new = u32::from_ne_bytes(u32::from_be_bytes(old.to_ne_bytes()).wrapping_add(by).to_be_bytes());
    d.word32(old, new);
    set_word(f, new);
    Some(())
}

/// Applies `d` to the TCP checksum of the segment at `l4`.
#[inline(always)]
fn apply_tcp(pkt: &Packet, l4: usize, d: Delta) -> Option<()> {
    let check = half_at(pkt, l4 + offset::TCP_CHECK)?;
    set_ne16(check, d.apply(ne16(check)));
    Some(())
}

/// The client's sequence number moved by the header's length `len`.
#[inline(always)]
pub fn shift_seq(pkt: &Packet, p: &Parsed, len: u8) -> Option<()> {
    let mut d = Delta::default();
    add_be32(pkt, p.l4 + offset::TCP_SEQ, u32::from(len), &mut d)?;
    apply_tcp(pkt, p.l4, d)
}

/// A backend segment with `proxy_protocol::reply_action` bits `action`:
/// its acknowledgement and SACK edges moved back by `len`, its SYN-ACK's
/// MSS lowered. Not inlined: the option walk's paths are verified once.
#[inline(never)]
pub fn reply(pkt: &Packet, p: &Parsed, action: u8, len: u8) -> Option<()> {
    let l4 = p.l4;
    let tcp: &TcpHdr = pkt.header(l4)?;
    let (doff, syn) = (tcp_header_len(tcp), tcp_flags(tcp) & TCP_SYN != 0);
    let back = u32::from(len).wrapping_neg();
    let mut d = Delta::default();
    if action & ACK_SHIFT != 0 {
        add_be32(pkt, l4 + offset::TCP_ACK, back, &mut d)?;
    }
    let opts = proxy_protocol::reply_options(|off| pkt.be16_at(off), l4 + TCP_MIN_HLEN, l4 + doff, syn);
    if action & MSS_LOWER != 0 && opts.mss != 0 {
        let f = half_at(pkt, opts.mss)?;
        let old = *f;
        let new = proxy_protocol::lower_mss(u16::from_be_bytes(old), len).to_be_bytes();
        d.word16(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        *f = new;
    }
    if action & SACK_SHIFT != 0 {
        for i in 0..MAX_SACK_BLOCKS {
            if i >= opts.sack_blocks {
                break;
            }
            add_be32(pkt, opts.sack + 8 * i, back, &mut d)?;
            add_be32(pkt, opts.sack + 8 * i + 4, back, &mut d)?;
        }
    }
    apply_tcp(pkt, l4, d)
}
