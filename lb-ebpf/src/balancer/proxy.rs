//! Rules 6c and 8c of the model: the PROXY protocol header in a `nat`
//! flow's first data segment, and the sequence shift that follows it
//! (`lb_common::proxy_protocol` decides; this writes the packet). Off the
//! hot path: only flows with the option come here.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use lb_common::{
    csum::Delta,
    isolator::FAMILY_V4,
    proxy_protocol::{self, ACK_SHIFT, MAX_SACK_BLOCKS, MAX_WORDS, MSS_LOWER, SACK_SHIFT},
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

/// Puts the parsed packet's PROXY protocol header (`s.proxy_len` bytes;
/// the addresses and ports it arrived with) between its TCP header and
/// its payload: the frame grows at the front and the headers move there.
/// Updates the IP length and the checksums; the NAT rewrite comes after.
/// The packet as it is now, or `None` (no headroom, or the headers were
/// not there: the packet must be dropped).
#[inline(never)]
pub fn prepend(ctx: &XdpContext, s: &Scratch) -> Option<Packet> {
    let p = &s.parsed;
    let len = usize::from(s.proxy_len);
    let hl = p.l4 + tcp_header_len(Packet::new(ctx).header::<TcpHdr>(p.l4)?);
    let words = proxy_protocol::v2_words(p.family, &p.src, &p.dst, p.sport, p.dport);
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
    let mut tcp = Delta::default();
    let mut i = 0;
    while i < MAX_WORDS && 4 * i < len {
        set_word(word_at(&pkt, hl + 4 * i)?, words[i]);
        tcp.word32(0, words[i]);
        i += 1;
    }
    let v4 = p.family == FAMILY_V4;
    let field = half_at(&pkt, L3 + if v4 { offset::IPV4_TOT_LEN } else { offset::IPV6_PAYLOAD_LEN })?;
    let old = u16::from_be_bytes(*field);
    let new = old.wrapping_add(len as u16);
    // The pseudo-header's TCP length: the IPv4 total length less the IP
    // header, the IPv6 payload length.
    let l3_len = if v4 { (p.l4 - L3) as u16 } else { 0 };
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
