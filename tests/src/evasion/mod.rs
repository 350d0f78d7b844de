//! The isolator's evasion suite: probes that try to reach a port past a
//! port filter with every trick of the trade — fragments (tiny, split,
//! zero-length, overlapping, out of order, duplicated, decoys), IPv6
//! fragment and extension headers in every order, VLAN tag stacks, IPv4
//! options, IPv4-mapped and translated IPv6 addresses, odd TCP flags and
//! bogus UDP lengths.
//!
//! A [`Technique`] turns an [`Aim`] (family, protocol, ports) into the
//! Ethernet frames of one probe; [`probes`] aims every technique at every
//! given port. The frames are complete and checksummed, so a receiver
//! without the isolator delivers whatever its stack accepts (the e2e test
//! measures that as its baseline). [`observe`] reads what came through.
//! The same frames serve as kernel-vs-model fixtures (see
//! `tests/tests/evasion.rs`).

pub mod observe;

use std::net::{Ipv4Addr, Ipv6Addr};

use super::rawframe::{ipv4_fragment, proto, ExtHeader, FrameBuilder, Ipv4, Ipv6, L4};

/// Where probes come from and go to.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Ethernet framing towards the host.
    pub eth: FrameBuilder,
    /// The scanner's IPv4 address.
    pub src4: Ipv4Addr,
    /// The host's IPv4 address.
    pub dst4: Ipv4Addr,
    /// The scanner's IPv6 address.
    pub src6: Ipv6Addr,
    /// The host's IPv6 address.
    pub dst6: Ipv6Addr,
    /// An allow-listed IPv4 source: translated into IPv6 it is someone else.
    pub trusted4: Ipv4Addr,
    /// An open TCP port that decoy fragments claim.
    pub decoy_tcp: u16,
    /// An open UDP port that decoy fragments claim.
    pub decoy_udp: u16,
}

/// What one probe aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aim {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// TCP or UDP.
    pub proto: u8,
    /// Source port, unique per probe so that answers can be told apart.
    pub sport: u16,
    /// The port the probe tries to reach.
    pub port: u16,
    /// IP identification / fragment id, unique per probe.
    pub id: u32,
}

/// One evasion technique.
pub struct Technique {
    /// What it does, e.g. "v4 tiny first fragment (8 bytes)".
    pub name: String,
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The protocols it applies to.
    pub protos: &'static [u8],
    /// Protocols for which the isolator drops it at every port, open ones
    /// too, by design (tiny TCP fragments, out-of-order fragments, ...).
    pub blocked: &'static [u8],
    build: fn(&Endpoints, &Aim) -> Vec<Vec<u8>>,
}

impl Technique {
    /// The frames of one probe, in sending order.
    pub fn frames(&self, e: &Endpoints, aim: &Aim) -> Vec<Vec<u8>> {
        (self.build)(e, aim)
    }
}

/// One probe: a technique aimed at a port.
pub struct Probe {
    /// Index into [`techniques`].
    pub technique: usize,
    /// What it aims at.
    pub aim: Aim,
    /// Its frames, in sending order.
    pub frames: Vec<Vec<u8>>,
}

/// Every technique aimed at every port of `tcp_ports` / `udp_ports` it
/// applies to; source ports and ids count up from `first_sport`.
pub fn probes(e: &Endpoints, techniques: &[Technique], tcp_ports: &[u16], udp_ports: &[u16], first_sport: u16) -> Vec<Probe> {
    let mut out = Vec::new();
    let mut sport = first_sport;
    for (i, t) in techniques.iter().enumerate() {
        for &p in t.protos {
            let ports = if p == proto::TCP { tcp_ports } else { udp_ports };
            for &port in ports {
                let aim = Aim { v6: t.v6, proto: p, sport, port, id: u32::from(sport) };
                out.push(Probe { technique: i, aim, frames: t.frames(e, &aim) });
                sport += 1;
            }
        }
    }
    out
}

const TCP: u8 = proto::TCP;
const UDP: u8 = proto::UDP;
const BOTH: &[u8] = &[TCP, UDP];
const SYN: u8 = 0x02;
/// Ends a fragment range at the end of the payload.
const END: usize = usize::MAX;

/// The L4 segment (a SYN, or a datagram) to `dport` with TCP `flags`; 32
/// bytes of payload, so there is something to cut.
fn seg(a: &Aim, dport: u16, flags: u8) -> L4 {
    let payload = vec![0x5a; 32];
    if a.proto == TCP {
        L4::Tcp { sport: a.sport, dport, seq: 0x1000_0000 + a.id, ack: 0, flags, window: 64240, payload }
    } else {
        L4::udp(a.sport, dport, &payload)
    }
}

fn l4(a: &Aim) -> L4 {
    seg(a, a.port, SYN)
}

fn v4(e: &Endpoints, a: &Aim) -> Ipv4 {
    Ipv4 { id: a.id as u16, ..Ipv4::new(e.src4, e.dst4) }
}

fn v6(e: &Endpoints) -> Ipv6 {
    Ipv6::new(e.src6, e.dst6)
}

/// The plain IP packet of `seg` in the aim's family.
fn packet(e: &Endpoints, a: &Aim, seg: &L4) -> Vec<u8> {
    if a.v6 { v6(e).packet(seg) } else { v4(e, a).packet(seg) }
}

fn framed(eth: &FrameBuilder, packets: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    packets.iter().map(|p| eth.ip(p)).collect()
}

/// IPv6 `seg` behind extension headers `ext`.
fn chain(e: &Endpoints, ext: Vec<ExtHeader>, seg: &L4) -> Vec<Vec<u8>> {
    vec![e.eth.ipv6(&Ipv6 { ext, ..v6(e) }.packet(seg))]
}

/// A fragment range: start, end ([`END`] = the end), more fragments.
type Range = (usize, usize, bool);

/// Fragments of `seg` (in the aim's family, plain headers), each range cut
/// from it in the order given.
fn frags(e: &Endpoints, a: &Aim, seg: &L4, ranges: &[Range]) -> Vec<Vec<u8>> {
    if a.v6 {
        return frags6(e, a, &[], &[], &[(seg, ranges)]);
    }
    let pkt = packet(e, a, seg);
    let len = pkt.len() - 20;
    let pieces = ranges.iter().map(|&(s, end, more)| ipv4_fragment(&pkt, s..end.min(len), more).unwrap()).collect();
    framed(&e.eth, pieces)
}

/// IPv6 fragments with `pre` extension headers before the fragment header
/// and `post` after it; ranges cut from each segment's fragmentable part in
/// the order given (several segments: overlapping rewrites).
fn frags6(e: &Endpoints, a: &Aim, pre: &[ExtHeader], post: &[ExtHeader], parts: &[(&L4, &[Range])]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (seg, ranges) in parts {
        // The checksum does not depend on extension headers (no routing header).
        let l4_bytes = v6(e).packet(seg)[40..].to_vec();
        let whole = Ipv6 { ext: post.to_vec(), ..v6(e) }.with_payload(seg.protocol(), &l4_bytes);
        let (next, part) = (whole[6], &whole[40..]);
        for &(s, end, more) in *ranges {
            let mut ext = pre.to_vec();
            ext.push(ExtHeader::Fragment { offset: (s / 8) as u16, more, id: a.id });
            let p = Ipv6 { ext, ..v6(e) }.with_payload(next, &part[s..end.min(part.len())]);
            out.push(e.eth.ipv6(&p));
        }
    }
    out
}

/// A copy of the aim's segment whose bytes after the first 8 differ (TCP:
/// an ACK instead of a SYN, another sequence number; UDP: the payload).
fn rewritten(a: &Aim) -> L4 {
    match l4(a) {
        L4::Tcp { sport, dport, seq, window, payload, .. } => {
            L4::Tcp { sport, dport, seq: seq ^ 0x00ff_ff00, ack: 0x4242_4242, flags: 0x10, window, payload }
        }
        L4::Udp { sport, dport, .. } => L4::udp(sport, dport, &[0xa5; 32]),
        raw => raw,
    }
}

fn decoy(e: &Endpoints, a: &Aim) -> L4 {
    seg(a, if a.proto == TCP { e.decoy_tcp } else { e.decoy_udp }, SYN)
}

/// A UDP probe whose length field says `len(actual)` instead of the truth;
/// `extra` junk bytes follow the datagram inside the IP payload.
fn udp_length(e: &Endpoints, a: &Aim, payload: usize, extra: usize, len: fn(usize) -> u16) -> Vec<Vec<u8>> {
    let pkt = packet(e, a, &L4::udp(a.sport, a.port, &vec![0x5a; payload]));
    let hl = if a.v6 { 40 } else { 20 };
    let mut body = pkt[hl..].to_vec();
    let real = body.len();
    body[4..6].copy_from_slice(&len(real).to_be_bytes());
    body.extend(std::iter::repeat_n(0xee, extra));
    let p = if a.v6 { v6(e).with_payload(UDP, &body) } else { v4(e, a).with_payload(UDP, &body) };
    vec![e.eth.ip(&p)]
}

fn tagged(eth: FrameBuilder, e: &Endpoints, a: &Aim) -> Vec<Vec<u8>> {
    vec![eth.ip(&packet(e, a, &l4(a)))]
}

fn with_options(e: &Endpoints, a: &Aim, options: Vec<u8>) -> Vec<Vec<u8>> {
    vec![e.eth.ipv4(&Ipv4 { options, ..v4(e, a) }.packet(&l4(a)))]
}

fn from6(e: &Endpoints, src: Ipv6Addr, dst: Ipv6Addr, a: &Aim) -> Vec<Vec<u8>> {
    vec![e.eth.ipv6(&Ipv6::new(src, dst).packet(&l4(a)))]
}

/// `a.b.c.d` as the last 32 bits of an IPv6 address with `prefix`.
fn embed(prefix: [u16; 6], v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    let [a, b, c, d, e, f] = prefix;
    Ipv6Addr::new(a, b, c, d, e, f, u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]]))
}

fn dstopts() -> ExtHeader {
    ExtHeader::DestOpts(vec![])
}

fn t(name: &str, v6: bool, protos: &'static [u8], blocked: &'static [u8], build: fn(&Endpoints, &Aim) -> Vec<Vec<u8>>) -> Technique {
    let family = if v6 { "v6" } else { "v4" };
    Technique { name: format!("{family} {name}"), v6, protos, blocked, build }
}

/// Techniques that exist in both families.
fn common(v6: bool) -> Vec<Technique> {
    vec![
        t("plain", v6, BOTH, &[], |e, a| vec![e.eth.ip(&packet(e, a, &l4(a)))]),
        // Fragments (RFC 1858, RFC 3128, RFC 5722, RFC 8200 4.5).
        t("tiny first fragment (8 bytes)", v6, BOTH, &[TCP], |e, a| frags(e, a, &l4(a), &[(0, 8, true), (8, END, false)])),
        t("L4 header split 16 | 8 | rest", v6, BOTH, &[TCP], |e, a| {
            frags(e, a, &l4(a), &[(0, 16, true), (16, 24, true), (24, END, false)])
        }),
        t("zero-length first fragment", v6, BOTH, &[], |e, a| {
            frags(e, a, &l4(a), &[(0, 0, true), (0, 24, true), (24, END, false)])
        }),
        t("out of order, last first", v6, BOTH, BOTH, |e, a| {
            frags(e, a, &l4(a), &[(32, END, false), (24, 32, true), (0, 24, true)])
        }),
        t("out of order, first in the middle", v6, BOTH, BOTH, |e, a| {
            frags(e, a, &l4(a), &[(24, 32, true), (0, 24, true), (32, END, false)])
        }),
        t("duplicate fragments", v6, BOTH, &[], |e, a| {
            frags(e, a, &l4(a), &[(0, 24, true), (0, 24, true), (24, 32, true), (24, 32, true), (32, END, false)])
        }),
        t("overlap at 8 rewrites flags/payload", v6, BOTH, &[TCP], |e, a| {
            let mut f = frags(e, a, &l4(a), &[(0, 24, true)]);
            f.extend(frags(e, a, &rewritten(a), &[(8, END, false)]));
            f
        }),
        t("overlap at 8 rewrites flags/payload, rewrite first", v6, BOTH, BOTH, |e, a| {
            let mut f = frags(e, a, &rewritten(a), &[(8, END, false)]);
            f.extend(frags(e, a, &l4(a), &[(0, 24, true)]));
            f
        }),
        t("decoy first fragment to an open port, then the target's", v6, BOTH, &[], |e, a| {
            let mut f = frags(e, a, &decoy(e, a), &[(0, 24, true)]);
            f.extend(frags(e, a, &l4(a), &[(0, 24, true), (24, END, false)]));
            f
        }),
        t("target's first fragment, then a decoy to an open port", v6, BOTH, &[], |e, a| {
            let mut f = frags(e, a, &l4(a), &[(0, 24, true)]);
            f.extend(frags(e, a, &decoy(e, a), &[(0, 24, true)]));
            f.extend(frags(e, a, &l4(a), &[(24, END, false)]));
            f
        }),
        // VLAN tags (802.1Q, 802.1ad, the old QinQ 0x9100).
        t("802.1Q VID 0", v6, BOTH, &[], |e, a| tagged(e.eth.clone().vlan(0x8100, 0), e, a)),
        t("802.1Q VID 5", v6, BOTH, &[], |e, a| tagged(e.eth.clone().vlan(0x8100, 5), e, a)),
        t("QinQ 802.1ad + 802.1Q VID 0", v6, BOTH, &[], |e, a| tagged(e.eth.clone().vlan(0x88a8, 0).vlan(0x8100, 0), e, a)),
        t("QinQ 0x9100 + 802.1Q VID 0", v6, BOTH, &[], |e, a| tagged(e.eth.clone().vlan(0x9100, 0).vlan(0x8100, 0), e, a)),
        t("8 stacked VID 0 tags", v6, BOTH, &[], |e, a| {
            let eth = (0..8).fold(e.eth.clone(), |b, i| b.vlan([0x88a8, 0x8100][i % 2], 0));
            tagged(eth, e, a)
        }),
        t("9 stacked VID 0 tags", v6, BOTH, BOTH, |e, a| {
            let eth = (0..9).fold(e.eth.clone(), |b, i| b.vlan([0x88a8, 0x8100][i % 2], 0));
            tagged(eth, e, a)
        }),
        // TCP flags a stateless filter might let through.
        t("TCP ACK without SYN", v6, &[TCP], &[], |e, a| vec![e.eth.ip(&packet(e, a, &seg(a, a.port, 0x10)))]),
        t("TCP SYN+FIN", v6, &[TCP], &[], |e, a| vec![e.eth.ip(&packet(e, a, &seg(a, a.port, 0x03)))]),
        t("TCP NULL", v6, &[TCP], &[], |e, a| vec![e.eth.ip(&packet(e, a, &seg(a, a.port, 0x00)))]),
        t("TCP FIN", v6, &[TCP], &[], |e, a| vec![e.eth.ip(&packet(e, a, &seg(a, a.port, 0x01)))]),
        t("TCP Xmas (FIN PSH URG)", v6, &[TCP], &[], |e, a| vec![e.eth.ip(&packet(e, a, &seg(a, a.port, 0x29)))]),
        // UDP length fields that disagree with the IP length.
        t("UDP length short of the IP payload", v6, &[UDP], &[], |e, a| udp_length(e, a, 4, 28, |n| n as u16)),
        t("UDP length beyond the IP payload", v6, &[UDP], &[], |e, a| udp_length(e, a, 32, 0, |n| n as u16 + 16)),
        t("UDP length 0", v6, &[UDP], &[], |e, a| udp_length(e, a, 32, 0, |_| 0)),
        t("UDP length 7", v6, &[UDP], &[], |e, a| udp_length(e, a, 32, 0, |_| 7)),
    ]
}

fn ipv4_only() -> Vec<Technique> {
    vec![
        t("options: 39 NOPs", false, BOTH, &[], |e, a| with_options(e, a, vec![1; 39])),
        t("options: record route", false, BOTH, &[], |e, a| {
            let mut o = vec![7, 39, 4];
            o.resize(39, 0);
            with_options(e, a, o)
        }),
        t("options: timestamp", false, BOTH, &[], |e, a| {
            let mut o = vec![68, 36, 5, 0];
            o.resize(36, 0);
            with_options(e, a, o)
        }),
        t("options: loose source route via the host", false, BOTH, &[], |e, a| {
            let mut o = vec![131, 7, 4];
            o.extend(e.dst4.octets());
            with_options(e, a, o)
        }),
        t("options: strict source route via the host", false, BOTH, &[], |e, a| {
            let mut o = vec![137, 7, 4];
            o.extend(e.dst4.octets());
            with_options(e, a, o)
        }),
    ]
}

fn ipv6_only() -> Vec<Technique> {
    let v = true;
    vec![
        t("atomic fragment", v, BOTH, &[], |e, a| chain(e, vec![ExtHeader::atomic_fragment(a.id)], &l4(a))),
        t("atomic fragment after dest-opts", v, BOTH, &[], |e, a| {
            chain(e, vec![dstopts(), ExtHeader::atomic_fragment(a.id)], &l4(a))
        }),
        t("fragment header before dest-opts", v, BOTH, &[], |e, a| {
            frags6(e, a, &[], &[dstopts()], &[(&l4(a), &[(0, 40, true), (40, END, false)])])
        }),
        t("fragment header after dest-opts", v, BOTH, &[], |e, a| {
            frags6(e, a, &[dstopts()], &[], &[(&l4(a), &[(0, 24, true), (24, END, false)])])
        }),
        t("dest-opts on both sides of the fragment header", v, BOTH, &[], |e, a| {
            frags6(e, a, &[dstopts()], &[dstopts()], &[(&l4(a), &[(0, 40, true), (40, END, false)])])
        }),
        t("decoy behind dest-opts, overlap at 8 rewrites the ports", v, BOTH, BOTH, |e, a| {
            frags6(e, a, &[], &[dstopts()], &[(&decoy(e, a), &[(0, 32, true)]), (&l4(a), &[(8, END, false)])])
        }),
        t("overlap at 8 rewrites the ports behind dest-opts, rewrite first", v, BOTH, BOTH, |e, a| {
            frags6(e, a, &[], &[dstopts()], &[(&l4(a), &[(8, END, false)]), (&decoy(e, a), &[(0, 32, true)])])
        }),
        t("hop-by-hop after the fragment header", v, BOTH, &[], |e, a| {
            frags6(e, a, &[], &[ExtHeader::HopByHop(vec![])], &[(&l4(a), &[(0, 40, true), (40, END, false)])])
        }),
        t("hop-by-hop + dest-opts", v, BOTH, &[], |e, a| chain(e, vec![ExtHeader::HopByHop(vec![]), dstopts()], &l4(a))),
        t("hop-by-hop after dest-opts", v, BOTH, &[], |e, a| chain(e, vec![dstopts(), ExtHeader::HopByHop(vec![])], &l4(a))),
        t("7 extension headers", v, BOTH, &[], |e, a| {
            let mut ext = vec![ExtHeader::HopByHop(vec![])];
            ext.extend(std::iter::repeat_n(dstopts(), 6));
            chain(e, ext, &l4(a))
        }),
        t("8 extension headers, the last a fragment header", v, BOTH, &[], |e, a| {
            let mut ext = vec![ExtHeader::HopByHop(vec![])];
            ext.extend(std::iter::repeat_n(dstopts(), 6));
            ext.push(ExtHeader::atomic_fragment(a.id));
            chain(e, ext, &l4(a))
        }),
        t("9 extension headers", v, BOTH, BOTH, |e, a| {
            let mut ext = vec![ExtHeader::HopByHop(vec![])];
            ext.extend(std::iter::repeat_n(dstopts(), 8));
            chain(e, ext, &l4(a))
        }),
        t("1 KiB of unknown skippable dest-opts", v, BOTH, &[], |e, a| {
            // Option type 0x1e: top bits 00, "skip if unknown" (RFC 8200 4.2).
            let opts: Vec<u8> = (0..4).flat_map(|_| [0x1eu8, 252].into_iter().chain(std::iter::repeat_n(0, 252))).collect();
            chain(e, vec![ExtHeader::DestOpts(opts)], &l4(a))
        }),
        t("unknown next header (253) before L4", v, BOTH, &[], |e, a| {
            chain(e, vec![dstopts(), ExtHeader::Raw { protocol: 253, bytes: vec![0; 6] }], &l4(a))
        }),
        t("routing header, no segments left", v, BOTH, BOTH, |e, a| chain(e, vec![ExtHeader::srh(0, &[e.dst6])], &l4(a))),
        // An allow-listed IPv4 source dressed as IPv6: not the same source.
        // A mapped address never appears on the wire (RFC 4291 2.5.5.2; a
        // dual-stack socket would answer it over IPv4): an impossible
        // source, dropped whatever the port (Linux itself delivers it).
        t("source ::ffff:<allowed IPv4> (mapped)", v, BOTH, BOTH, |e, a| from6(e, e.trusted4.to_ipv6_mapped(), e.dst6, a)),
        t("source ::<allowed IPv4> (compatible)", v, BOTH, &[], |e, a| from6(e, embed([0; 6], e.trusted4), e.dst6, a)),
        t("source 64:ff9b::<allowed IPv4> (NAT64)", v, BOTH, &[], |e, a| {
            from6(e, embed([0x64, 0xff9b, 0, 0, 0, 0], e.trusted4), e.dst6, a)
        }),
        t("source 2002:<allowed IPv4>::1 (6to4)", v, BOTH, &[], |e, a| {
            let o = e.trusted4.octets();
            let src = Ipv6Addr::new(0x2002, u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]]), 0, 0, 0, 0, 1);
            from6(e, src, e.dst6, a)
        }),
        t("destination ::ffff:<host IPv4> (mapped)", v, BOTH, &[], |e, a| from6(e, e.src6, e.dst4.to_ipv6_mapped(), a)),
    ]
}

/// Every technique: both families' common ones, then IPv4's, then IPv6's.
pub fn techniques() -> Vec<Technique> {
    let mut all = common(false);
    all.extend(ipv4_only());
    all.extend(common(true));
    all.extend(ipv6_only());
    all
}
