//! Frames for the kernel tests: hand-written evasion fixtures with the
//! verdict each must get, and a generator of random (and deliberately
//! broken) frames covering every header combination the isolator parses.
//! Checksums are not computed: BPF_PROG_TEST_RUN does not check them and
//! the isolator does not read them.

use lb_common::isolator::{DropReason as D, PassReason as P, Verdict};
use rand::{seq::SliceRandom, Rng};

pub const OUT4: [u8; 4] = [10, 1, 2, 3];
pub const TRUST4: [u8; 4] = [10, 9, 5, 5];
pub const NODE4: [u8; 4] = [10, 7, 0, 1];
pub const DST4: [u8; 4] = [10, 0, 0, 1];
pub const OUT6: [u8; 16] = v6(0xfd01, 3);
pub const TRUST6: [u8; 16] = v6(0xfd09, 5);
pub const NODE6: [u8; 16] = v6(0xfd07, 1);
pub const DST6: [u8; 16] = v6(0xfd00, 1);

const fn v6(prefix: u16, host: u8) -> [u8; 16] {
    let p = prefix.to_be_bytes();
    [p[0], p[1], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host]
}

/// One VLAN tag: (TPID, TCI).
pub type Tag = (u16, u16);

pub fn eth(tags: &[Tag], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (tpid, tci) in tags {
        f.extend(tpid.to_be_bytes());
        f.extend(tci.to_be_bytes());
    }
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02; // SYN
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend(payload);
    h
}

/// IPv4 fields the fixtures vary.
#[derive(Clone, Copy)]
pub struct V4 {
    pub src: [u8; 4],
    pub proto: u8,
    pub option_words: u8,
    pub id: u16,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
}

impl V4 {
    pub fn new(src: [u8; 4], proto: u8) -> Self {
        Self { src, proto, option_words: 0, id: 1, more_fragments: false, frag_offset: 0 }
    }
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let ihl = 5 + self.option_words as usize;
        let mut h = vec![0u8; ihl * 4];
        h[0] = 0x40 | ihl as u8;
        let total = (h.len() + payload.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        let frag = (u16::from(self.more_fragments) << 13) | (self.frag_offset & 0x1fff);
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src);
        h[16..20].copy_from_slice(&DST4);
        for b in &mut h[20..] {
            *b = 1; // NOP options
        }
        h.extend(payload);
        h
    }
}

/// An IPv6 extension header in a chain.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop(u8),
    DestOpts(u8),
    Routing,
    /// offset in 8-byte units, M flag, identification
    Fragment(u16, bool, u32),
    Other(u8, u8),
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::DestOpts(_) => 60,
            Ext::Routing => 43,
            Ext::Fragment(..) => 44,
            Ext::Other(n, _) => n,
        }
    }
    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(len) | Ext::DestOpts(len) | Ext::Other(_, len) => {
                let mut b = vec![0u8; (usize::from(len) + 1) * 8];
                b[0] = next;
                b[1] = len;
                b[2] = 1; // PadN
                b[3] = b.len() as u8 - 4;
                b
            }
            Ext::Routing => {
                // Segment routing header (type 4) with one segment.
                let mut b = vec![0u8; 24];
                b[0] = next;
                b[1] = 2;
                b[2] = 4;
                b[3] = 1;
                b[8..24].copy_from_slice(&DST6);
                b
            }
            Ext::Fragment(offset, m, id) => {
                let mut b = vec![0u8; 8];
                b[0] = next;
                b[2..4].copy_from_slice(&((offset << 3) | u16::from(m)).to_be_bytes());
                b[4..8].copy_from_slice(&id.to_be_bytes());
                b
            }
        }
    }
}

pub fn ipv6(src: [u8; 16], chain: &[Ext], upper: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, ext) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(upper, |e| e.number());
        body.extend(ext.bytes(next));
    }
    body.extend(payload);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    h[6] = chain.first().map_or(upper, |e| e.number());
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&DST6);
    h.extend(body);
    h
}

pub fn tcp4(src: [u8; 4], dport: u16) -> Vec<u8> {
    eth(&[], 0x0800, &V4::new(src, 6).build(&tcp(40000, dport)))
}
pub fn udp4(src: [u8; 4], dport: u16) -> Vec<u8> {
    eth(&[], 0x0800, &V4::new(src, 17).build(&udp(40000, dport, b"probe")))
}
pub fn tcp6(src: [u8; 16], chain: &[Ext], dport: u16) -> Vec<u8> {
    eth(&[], 0x86dd, &ipv6(src, chain, 6, &tcp(40000, dport)))
}

/// A frame and the verdict it must get (in order: fragment fixtures rely on
/// the ones before them).
pub struct Fixture {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub expect: Verdict,
}

fn fx(name: &'static str, frame: Vec<u8>, expect: Verdict) -> Fixture {
    Fixture { name, frame, expect }
}

const fn pass(r: P) -> Verdict {
    Verdict::Pass(r)
}
const fn drop(r: D) -> Verdict {
    Verdict::Drop(r)
}

/// The evasion suite, under `kernel::FIXTURE_CONFIG`.
pub fn fixtures() -> Vec<Fixture> {
    let q = |vid: u16| (0x8100u16, vid);
    let ad = |vid: u16| (0x88a8u16, vid);
    let tcp_v4 = |src, dport| V4::new(src, 6).build(&tcp(40000, dport));
    let frag4 = |src, id, mf, off: u16, payload: &[u8]| {
        let mut h = V4::new(src, 6);
        h.id = id;
        h.more_fragments = mf;
        h.frag_offset = off;
        eth(&[], 0x0800, &h.build(payload))
    };
    let mut padded = tcp_v4(OUT4, 22);
    padded[2..4].copy_from_slice(&24u16.to_be_bytes()); // IP length cuts the TCP header
    let mut bad_ihl = tcp_v4(OUT4, 22);
    bad_ihl[0] = 0x44;
    let mut long_total = tcp_v4(OUT4, 22);
    long_total[2..4].copy_from_slice(&1500u16.to_be_bytes());
    let mut v6_long = ipv6(OUT6, &[], 6, &tcp(40000, 22));
    v6_long[4..6].copy_from_slice(&1000u16.to_be_bytes());
    let deep: Vec<Tag> = (0..9).map(|_| q(0)).collect();
    let eight: Vec<Tag> = (0..8).map(|_| q(0)).collect();
    let mut with_options = V4::new(OUT4, 6);
    with_options.option_words = 10;
    let mut udp_tiny = V4::new(OUT4, 17);
    udp_tiny.more_fragments = true;
    udp_tiny.id = 9;
    let tunnel = |src, proto| eth(&[], 0x0800, &V4::new(src, proto).build(&tcp_v4(OUT4, 22)));
    let big = vec![0u8; 64];
    let mut tcp22_payload = tcp(40000, 22);
    tcp22_payload.extend(&big);
    let mut tcp80_payload = tcp(40000, 80);
    tcp80_payload.extend(&big);

    vec![
        fx("tcp/80 from outside", tcp4(OUT4, 80), pass(P::Unprotected)),
        fx("tcp/22 from outside", tcp4(OUT4, 22), drop(D::ProtectedPort)),
        fx("tcp/22 from the allow-list", tcp4(TRUST4, 22), pass(P::Allowed)),
        fx("udp/22 is not protected", udp4(OUT4, 22), pass(P::Unprotected)),
        fx("udp/161 from outside", udp4(OUT4, 161), drop(D::ProtectedPort)),
        fx("tcp/9050 in a range", tcp4(OUT4, 9050), drop(D::ProtectedPort)),
        fx("udp/9100 range end", udp4(OUT4, 9100), drop(D::ProtectedPort)),
        fx("tcp/9101 past the range", tcp4(OUT4, 9101), pass(P::Unprotected)),
        fx("swarm 2377 from a node", tcp4(NODE4, 2377), pass(P::Allowed)),
        fx("swarm 2377 from the allow-list", tcp4(TRUST4, 2377), drop(D::ProtectedPort)),
        fx("swarm 7946/udp from a node", udp4(NODE4, 7946), pass(P::Allowed)),
        fx("VXLAN 4789 from outside", udp4(OUT4, 4789), drop(D::ProtectedPort)),
        fx("node prefix inside the allow-list reaches both", tcp4([10, 9, 1, 200], 2377), pass(P::Allowed)),
        fx("ARP", eth(&[], 0x0806, &[0u8; 28]), pass(P::NotIp)),
        fx("runt frame", vec![0u8; 10], pass(P::NotIp)),
        fx("ICMP", eth(&[], 0x0800, &V4::new(OUT4, 1).build(&[8, 0, 0, 0, 0, 0, 0, 0])), pass(P::OtherProtocol)),
        fx("IPv4 options, tcp/22", eth(&[], 0x0800, &with_options.build(&tcp(1, 22))), drop(D::ProtectedPort)),
        fx("IPv4 options, tcp/80", eth(&[], 0x0800, &with_options.build(&tcp(1, 80))), pass(P::Unprotected)),
        fx("VID 0 priority tag, tcp/22", eth(&[q(0)], 0x0800, &tcp_v4(OUT4, 22)), drop(D::ProtectedPort)),
        fx("VLAN 10, tcp/22", eth(&[q(10)], 0x0800, &tcp_v4(OUT4, 22)), drop(D::ProtectedPort)),
        fx("QinQ, tcp/22", eth(&[ad(100), q(0)], 0x0800, &tcp_v4(OUT4, 22)), drop(D::ProtectedPort)),
        fx("legacy QinQ 0x9100, tcp/22", eth(&[(0x9100, 5), q(0)], 0x0800, &tcp_v4(OUT4, 22)), drop(D::ProtectedPort)),
        fx("eight VID 0 tags, tcp/80", eth(&eight, 0x0800, &tcp_v4(OUT4, 80)), pass(P::Unprotected)),
        fx("nine tags", eth(&deep, 0x0800, &tcp_v4(OUT4, 80)), drop(D::VlanTooDeep)),
        fx("truncated tag", eth(&[], 0x8100, &[0, 0]), drop(D::Malformed)),
        fx("IPv6 tcp/22 from outside", tcp6(OUT6, &[], 22), drop(D::ProtectedPort)),
        fx("IPv6 tcp/22 from the allow-list", tcp6(TRUST6, &[], 22), pass(P::Allowed)),
        fx("IPv6 VID 0, tcp/22", eth(&[q(0)], 0x86dd, &ipv6(OUT6, &[], 6, &tcp(1, 22))), drop(D::ProtectedPort)),
        fx("IPv6 hop-by-hop + dest opts, tcp/22", tcp6(OUT6, &[Ext::HopByHop(0), Ext::DestOpts(2)], 22), drop(D::ProtectedPort)),
        fx("IPv6 eight extension headers, tcp/80", tcp6(OUT6, &[Ext::DestOpts(0); 8], 80), pass(P::Unprotected)),
        fx("IPv6 nine extension headers", tcp6(OUT6, &[Ext::DestOpts(0); 9], 80), drop(D::ExtensionChainTooLong)),
        fx("IPv6 routing header from outside", tcp6(OUT6, &[Ext::Routing], 80), drop(D::RoutingHeader)),
        fx("IPv6 routing header from a node", tcp6(NODE6, &[Ext::Routing], 80), pass(P::Unprotected)),
        fx("IPv6 extension header past the payload", eth(&[], 0x86dd, &ipv6(OUT6, &[], 60, &[6, 4, 0, 0])), drop(D::Malformed)),
        // IPv4 fragments: verdict of the first fragment carries over.
        fx("v4 first fragment tcp/22", frag4(OUT4, 100, true, 0, &tcp22_payload), drop(D::ProtectedPort)),
        fx("v4 follower of a dropped first", frag4(OUT4, 100, false, 11, &big), drop(D::FragmentOfDropped)),
        fx("v4 first fragment tcp/80", frag4(OUT4, 101, true, 0, &tcp80_payload), pass(P::Unprotected)),
        fx("v4 follower of a passed first", frag4(OUT4, 101, false, 11, &big), pass(P::FragmentFollows)),
        fx("v4 follower, first never seen", frag4(OUT4, 102, false, 11, &big), drop(D::FragmentUnknown)),
        fx("v4 follower, other source", frag4(TRUST4, 101, false, 11, &big), drop(D::FragmentUnknown)),
        fx("v4 tiny first fragment", frag4(OUT4, 103, true, 0, &tcp(40000, 80)[..8]), drop(D::TinyFragment)),
        fx("v4 fragment overlapping the TCP header", frag4(OUT4, 101, false, 1, &big), drop(D::FragmentOverlap)),
        fx("v4 udp first fragment, 4 bytes", eth(&[], 0x0800, &udp_tiny.build(&[0, 1, 0, 161])), drop(D::TinyFragment)),
        // IPv6 fragments.
        fx("v6 first fragment tcp/22", tcp6(OUT6, &[Ext::Fragment(0, true, 7)], 22), drop(D::ProtectedPort)),
        fx("v6 follower of a dropped first", eth(&[], 0x86dd, &ipv6(OUT6, &[Ext::Fragment(3, false, 7)], 6, &big)), drop(D::FragmentOfDropped)),
        fx("v6 first fragment tcp/80", tcp6(OUT6, &[Ext::Fragment(0, true, 8)], 80), pass(P::Unprotected)),
        fx("v6 follower of a passed first", eth(&[], 0x86dd, &ipv6(OUT6, &[Ext::Fragment(3, false, 8)], 6, &big)), pass(P::FragmentFollows)),
        fx("v6 follower, first never seen", eth(&[], 0x86dd, &ipv6(OUT6, &[Ext::Fragment(3, false, 99)], 6, &big)), drop(D::FragmentUnknown)),
        fx("v6 first fragment hiding TCP behind dest opts", eth(&[], 0x86dd, &ipv6(OUT6, &[Ext::Fragment(0, true, 9), Ext::DestOpts(1)], 6, &tcp(1, 22)[..4])), drop(D::TinyFragment)),
        fx("v6 atomic fragment tcp/22", tcp6(OUT6, &[Ext::Fragment(0, false, 10)], 22), drop(D::ProtectedPort)),
        fx("v6 two fragment headers", tcp6(OUT6, &[Ext::Fragment(0, true, 11), Ext::Fragment(0, true, 12)], 80), drop(D::Malformed)),
        // Tunnels.
        fx("IPIP from outside", tunnel(OUT4, 4), drop(D::Tunnel)),
        fx("IPIP from a node", tunnel(NODE4, 4), pass(P::OtherProtocol)),
        fx("GRE from outside", tunnel(OUT4, 47), drop(D::Tunnel)),
        fx("6in4 from outside", tunnel(OUT4, 41), drop(D::Tunnel)),
        fx("ESP from outside", tunnel(OUT4, 50), drop(D::Tunnel)),
        fx("IPv6-in-IPv6 from outside", eth(&[], 0x86dd, &ipv6(OUT6, &[], 41, &ipv6(OUT6, &[], 6, &tcp(1, 22)))), drop(D::Tunnel)),
        fx("IPv6 GRE after dest opts", eth(&[], 0x86dd, &ipv6(OUT6, &[Ext::DestOpts(0)], 47, &[0u8; 8])), drop(D::Tunnel)),
        // Malformed.
        fx("IP length cuts the TCP header (padding trick)", eth(&[], 0x0800, &padded), drop(D::Malformed)),
        fx("IHL below 5", eth(&[], 0x0800, &bad_ihl), drop(D::Malformed)),
        fx("IP total length past the frame", eth(&[], 0x0800, &long_total), drop(D::Malformed)),
        fx("version 6 in an IPv4 frame", eth(&[], 0x0800, &ipv6(OUT6, &[], 6, &tcp(1, 22))), drop(D::Malformed)),
        fx("IPv6 payload length past the frame", eth(&[], 0x86dd, &v6_long), drop(D::Malformed)),
        fx("truncated TCP header", eth(&[], 0x0800, &V4::new(OUT4, 6).build(&tcp(1, 80)[..12])), drop(D::Malformed)),
    ]
}

/// A random frame: a well-formed structure from random choices, then, for
/// a third of them, random damage.
pub fn packet(rng: &mut impl Rng) -> Vec<u8> {
    let ports = [22u16, 80, 161, 443, 2377, 4789, 5432, 7946, 9000, 9050, 9100, 9101, 65535];
    let dport = if rng.gen_bool(0.8) { *ports.choose(rng).unwrap() } else { rng.gen() };
    let protos = [6u8, 6, 6, 17, 17, 17, 1, 58, 4, 41, 47, 50, 51, 97, 115, 137, 132];
    let proto = if rng.gen_bool(0.9) { *protos.choose(rng).unwrap() } else { rng.gen() };
    let mut l4 = match proto {
        6 => tcp(rng.gen(), dport),
        17 => udp(rng.gen(), dport, b""),
        _ => vec![0u8; 8],
    };
    let extra = rng.gen_range(0..48);
    l4.extend((0..extra).map(|_| rng.gen::<u8>()));
    if rng.gen_bool(0.05) {
        l4.truncate(rng.gen_range(0..l4.len()));
    }
    let ethertype_choice = rng.gen_range(0..100);
    let (ethertype, ip) = if ethertype_choice < 47 {
        let src = *[OUT4, TRUST4, NODE4, [10, 9, 1, 200], [10, 7, 0, 2]].choose(rng).unwrap();
        let mut h = V4::new(src, proto);
        h.option_words = if rng.gen_bool(0.2) { rng.gen_range(1..=10) } else { 0 };
        h.id = rng.gen_range(0..6);
        match rng.gen_range(0..10) {
            0..=1 => h.more_fragments = true,
            2 => {
                h.frag_offset = *[1u16, 2, 3, 185].choose(rng).unwrap();
                h.more_fragments = rng.gen();
            }
            _ => {}
        }
        (0x0800, h.build(&l4))
    } else if ethertype_choice < 94 {
        let src = *[OUT6, TRUST6, NODE6].choose(rng).unwrap();
        let n = if rng.gen_bool(0.6) { 0 } else { rng.gen_range(1..=10) };
        let mut chain = Vec::new();
        for _ in 0..n {
            chain.push(match rng.gen_range(0..10) {
                0..=2 => Ext::HopByHop(rng.gen_range(0..3)),
                3..=5 => Ext::DestOpts(rng.gen_range(0..3)),
                6 => Ext::Routing,
                7..=8 => Ext::Fragment(*[0u16, 0, 1, 2, 3, 100].choose(rng).unwrap(), rng.gen(), rng.gen_range(0..6)),
                _ => Ext::Other(*[135u8, 139, 140].choose(rng).unwrap(), rng.gen_range(0..2)),
            });
        }
        (0x86dd, ipv6(src, &chain, proto, &l4))
    } else {
        (*[0x0806u16, 0x88cc, 0x8847, 0x9000].choose(rng).unwrap(), l4)
    };
    let depth = match rng.gen_range(0..20) {
        0..=12 => 0,
        13..=17 => rng.gen_range(1..=3),
        _ => rng.gen_range(7..=10),
    };
    let tags: Vec<Tag> = (0..depth)
        .map(|_| (*[0x8100u16, 0x88a8, 0x9100].choose(rng).unwrap(), if rng.gen() { 0 } else { rng.gen() }))
        .collect();
    let mut frame = eth(&tags, ethertype, &ip);
    if rng.gen_bool(0.33) {
        mutate(rng, &mut frame);
    }
    frame
}

/// Flips bytes (favouring the headers), truncates, or pads.
fn mutate(rng: &mut impl Rng, frame: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..=3) {
        match rng.gen_range(0..4) {
            0 | 1 if !frame.is_empty() => {
                let hot = frame.len().min(80);
                let at = if rng.gen_bool(0.8) { rng.gen_range(0..hot) } else { rng.gen_range(0..frame.len()) };
                frame[at] = rng.gen();
            }
            2 if !frame.is_empty() => frame.truncate(rng.gen_range(0..frame.len())),
            _ => frame.extend((0..rng.gen_range(1..32)).map(|_| rng.gen::<u8>())),
        }
    }
}
