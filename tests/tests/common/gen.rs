//! Frames for the kernel tests, built with the harness's frame builders:
//! hand-written evasion fixtures with the verdict each must get, and a
//! generator of random (and deliberately broken) frames covering every
//! header combination the isolator parses.

use std::net::{Ipv4Addr, Ipv6Addr};

use harness::rawframe::{ExtHeader, FrameBuilder, Ipv4, Ipv6, L4};
use lb_common::isolator::{DropReason as D, PassReason as P, Verdict};
use rand::{seq::SliceRandom, Rng};

pub const OUT4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
pub const TRUST4: Ipv4Addr = Ipv4Addr::new(10, 9, 5, 5);
pub const NODE4: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 1);
/// In the node prefix 10.9.1.128/25, which lies inside the allow-list.
pub const BOTH4: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 200);
pub const DST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const OUT6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 3);
pub const TRUST6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 5);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd07, 0, 0, 0, 0, 0, 0, 1);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
// Trusted by the allow-list, but the fixture namespace (`kernel.rs`)
// routes them elsewhere or nowhere: forged on the DMZ interface.
/// Routed via the inside interface.
pub const FORGED4: Ipv4Addr = Ipv4Addr::new(10, 9, 130, 5);
/// Unreachable route.
pub const NOROUTE4: Ipv4Addr = Ipv4Addr::new(10, 9, 200, 5);
/// No route at all.
pub const UNROUTED4: Ipv4Addr = Ipv4Addr::new(10, 9, 250, 5);
pub const FORGED6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0x8000, 0, 0, 0, 0, 5);
pub const NOROUTE6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0xc000, 0, 0, 0, 0, 5);
// Sources that cannot be real on the DMZ interface.
pub const LOOP4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The fixture namespace's inside address: the host's own.
pub const OWN4: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 1);
pub const MCAST4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 5);
pub const OWN6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 1);
pub const LOOP6: Ipv6Addr = Ipv6Addr::LOCALHOST;
/// Link-local, and the DMZ interface (`lo`) has no link-local address.
pub const LINKLOCAL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 5);

/// One VLAN tag: (TPID, TCI).
pub type Tag = (u16, u16);

fn eth(tags: &[Tag]) -> FrameBuilder {
    tags.iter().fold(FrameBuilder::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]), |b, &(tpid, tci)| b.vlan_tci(tpid, tci))
}

fn v4(src: Ipv4Addr) -> Ipv4 {
    Ipv4::new(src, DST4)
}

fn v6(src: Ipv6Addr, chain: &[ExtHeader]) -> Ipv6 {
    Ipv6 { ext: chain.to_vec(), ..Ipv6::new(src, DST6) }
}

fn syn(dport: u16) -> L4 {
    L4::tcp_syn(40000, dport)
}

/// The bytes of a TCP/UDP segment (checksum for IPv4 `OUT4` → `DST4`).
fn segment(l4: &L4) -> Vec<u8> {
    v4(OUT4).packet(l4)[20..].to_vec()
}

/// An extension header of `units` × 8 + 8 bytes, of any generic type.
fn generic_ext(protocol: u8, units: u8) -> ExtHeader {
    ExtHeader::Raw { protocol, bytes: vec![0; usize::from(units) * 8 + 6] }
}

fn dest_opts(units: u8) -> ExtHeader {
    generic_ext(60, units)
}

fn fragment(offset: u16, more: bool, id: u32) -> ExtHeader {
    ExtHeader::Fragment { offset, more, id }
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

fn e() -> FrameBuilder {
    eth(&[])
}

/// An 802.1Q tag with VLAN id `vid`.
fn q(vid: u16) -> Tag {
    (0x8100, vid)
}

/// An 802.1ad (QinQ outer) tag.
fn ad(vid: u16) -> Tag {
    (0x88a8, vid)
}

fn tcp4(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    e().ipv4(&v4(src).packet(&syn(dport)))
}

fn udp4(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    e().ipv4(&v4(src).packet(&L4::udp(40000, dport, b"probe")))
}

fn tcp6(src: Ipv6Addr, chain: &[ExtHeader], dport: u16) -> Vec<u8> {
    e().ipv6(&v6(src, chain).packet(&syn(dport)))
}

/// A fragment's filler payload.
fn big() -> Vec<u8> {
    vec![0u8; 64]
}

fn frag4(src: Ipv4Addr, id: u16, more_fragments: bool, frag_offset: u16, payload: &[u8]) -> Vec<u8> {
    e().ipv4(&Ipv4 { id, more_fragments, frag_offset, ..v4(src) }.with_payload(6, payload))
}

/// A SYN to `dport` followed by [`big`]: a first fragment's payload.
fn with_big(dport: u16) -> Vec<u8> {
    [segment(&syn(dport)), big()].concat()
}

fn frag6(chain: &[ExtHeader], upper: u8, payload: &[u8]) -> Vec<u8> {
    e().ipv6(&v6(OUT6, chain).with_payload(upper, payload))
}

/// IPv4 from `src` carrying protocol `proto` around an inner SYN to 22.
fn tunnel(src: Ipv4Addr, proto: u8) -> Vec<u8> {
    e().ipv4(&v4(src).with_payload(proto, &v4(OUT4).packet(&syn(22))))
}

/// A SYN to `dport` behind 40 bytes of IPv4 options.
fn options(dport: u16) -> Vec<u8> {
    e().ipv4(&Ipv4 { options: vec![1; 40], ..v4(OUT4) }.packet(&syn(dport)))
}

/// `f` with `bytes` written at `at`.
fn edit(mut f: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

/// Protected and unprotected ports, the allow-list and the Swarm node prefixes.
fn ports_and_sources() -> Vec<Fixture> {
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
        fx("node prefix inside the allow-list reaches both", tcp4(BOTH4, 2377), pass(P::Allowed)),
        fx("node prefix inside the allow-list, user port", tcp4(BOTH4, 22), pass(P::Allowed)),
    ]
}

/// Frames the isolator has no port for.
fn not_tcp_or_udp() -> Vec<Fixture> {
    vec![
        fx("ARP", e().frame(0x0806, &[0u8; 28]), pass(P::NotIp)),
        fx("runt frame", vec![0u8; 10], pass(P::NotIp)),
        fx("ICMP", e().ipv4(&v4(OUT4).with_payload(1, &[8, 0, 0, 0, 0, 0, 0, 0])), pass(P::OtherProtocol)),
    ]
}

/// IPv4 options and 802.1Q/802.1ad tags in front of a protected port.
fn ipv4_options_and_vlan_tags() -> Vec<Fixture> {
    vec![
        fx("IPv4 options, tcp/22", options(22), drop(D::ProtectedPort)),
        fx("IPv4 options, tcp/80", options(80), pass(P::Unprotected)),
        fx("VID 0 priority tag, tcp/22", eth(&[q(0)]).ipv4(&v4(OUT4).packet(&syn(22))), drop(D::ProtectedPort)),
        fx("VLAN 10, tcp/22", eth(&[q(10)]).ipv4(&v4(OUT4).packet(&syn(22))), drop(D::ProtectedPort)),
        fx("QinQ, tcp/22", eth(&[ad(100), q(0)]).ipv4(&v4(OUT4).packet(&syn(22))), drop(D::ProtectedPort)),
        fx("legacy QinQ 0x9100, tcp/22", eth(&[(0x9100, 5), q(0)]).ipv4(&v4(OUT4).packet(&syn(22))), drop(D::ProtectedPort)),
        fx("eight VID 0 tags, tcp/80", eth(&[q(0); 8]).ipv4(&v4(OUT4).packet(&syn(80))), pass(P::Unprotected)),
        fx("nine tags", eth(&[q(0); 9]).ipv4(&v4(OUT4).packet(&syn(80))), drop(D::VlanTooDeep)),
        fx("truncated tag", e().frame(0x8100, &[0, 0]), drop(D::Malformed)),
    ]
}

/// IPv6 extension header chains.
fn ipv6_extension_headers() -> Vec<Fixture> {
    vec![
        fx("IPv6 tcp/22 from outside", tcp6(OUT6, &[], 22), drop(D::ProtectedPort)),
        fx("IPv6 tcp/22 from the allow-list", tcp6(TRUST6, &[], 22), pass(P::Allowed)),
        fx("IPv6 VID 0, tcp/22", eth(&[q(0)]).ipv6(&v6(OUT6, &[]).packet(&syn(22))), drop(D::ProtectedPort)),
        fx("IPv6 hop-by-hop + dest opts, tcp/22", tcp6(OUT6, &[generic_ext(0, 0), dest_opts(2)], 22), drop(D::ProtectedPort)),
        fx("IPv6 eight extension headers, tcp/80", tcp6(OUT6, &vec![dest_opts(0); 8], 80), pass(P::Unprotected)),
        fx("IPv6 nine extension headers", tcp6(OUT6, &vec![dest_opts(0); 9], 80), drop(D::ExtensionChainTooLong)),
        fx("IPv6 routing header from outside", tcp6(OUT6, &[ExtHeader::srh(1, &[DST6])], 80), drop(D::RoutingHeader)),
        fx("IPv6 routing header from a node", tcp6(NODE6, &[ExtHeader::srh(1, &[DST6])], 80), pass(P::Unprotected)),
        fx("IPv6 extension header past the payload", frag6(&[], 60, &[6, 4, 0, 0]), drop(D::Malformed)),
    ]
}

/// IPv4 fragments: the verdict of the first fragment carries over to its followers.
fn ipv4_fragments() -> Vec<Fixture> {
    vec![
        fx("v4 first fragment tcp/22", frag4(OUT4, 100, true, 0, &with_big(22)), drop(D::ProtectedPort)),
        fx("v4 follower of a dropped first", frag4(OUT4, 100, false, 11, &big()), drop(D::FragmentOfDropped)),
        fx("v4 first fragment tcp/80", frag4(OUT4, 101, true, 0, &with_big(80)), pass(P::Unprotected)),
        fx("v4 follower of a passed first", frag4(OUT4, 101, false, 11, &big()), pass(P::FragmentFollows)),
        fx("v4 follower, first never seen", frag4(OUT4, 102, false, 11, &big()), drop(D::FragmentUnknown)),
        fx("v4 follower, other source", frag4(TRUST4, 101, false, 11, &big()), drop(D::FragmentUnknown)),
        fx("v4 tiny first fragment", frag4(OUT4, 103, true, 0, &segment(&syn(80))[..8]), drop(D::TinyFragment)),
        fx("v4 fragment overlapping the TCP header", frag4(OUT4, 101, false, 1, &big()), drop(D::FragmentOverlap)),
        fx(
            "v4 udp first fragment, 4 bytes",
            e().ipv4(&Ipv4 { id: 9, more_fragments: true, ..v4(OUT4) }.with_payload(17, &[0, 1, 0, 161])),
            drop(D::TinyFragment),
        ),
    ]
}

/// IPv6 fragments.
fn ipv6_fragments() -> Vec<Fixture> {
    vec![
        fx("v6 first fragment tcp/22", tcp6(OUT6, &[fragment(0, true, 7)], 22), drop(D::ProtectedPort)),
        fx("v6 follower of a dropped first", frag6(&[fragment(3, false, 7)], 6, &big()), drop(D::FragmentOfDropped)),
        fx("v6 first fragment tcp/80", tcp6(OUT6, &[fragment(0, true, 8)], 80), pass(P::Unprotected)),
        fx("v6 follower of a passed first", frag6(&[fragment(3, false, 8)], 6, &big()), pass(P::FragmentFollows)),
        fx("v6 follower, first never seen", frag6(&[fragment(3, false, 99)], 6, &big()), drop(D::FragmentUnknown)),
        fx(
            "v6 first fragment hiding TCP behind dest opts",
            frag6(&[fragment(0, true, 9), dest_opts(1)], 6, &segment(&syn(22))[..4]),
            drop(D::TinyFragment),
        ),
        fx("v6 first fragment tcp/80 behind dest opts", frag6(&[fragment(0, true, 13), dest_opts(0)], 6, &with_big(80)), pass(P::Unprotected)),
        fx("v6 follower at 8 rewriting the ports behind dest opts", frag6(&[fragment(1, false, 13)], 60, &big()), drop(D::FragmentOverlap)),
        fx("v6 follower past the headers behind dest opts", frag6(&[fragment(4, false, 13)], 60, &big()), pass(P::FragmentFollows)),
        fx("v6 atomic fragment tcp/22", tcp6(OUT6, &[ExtHeader::atomic_fragment(10)], 22), drop(D::ProtectedPort)),
        fx("v6 two fragment headers", tcp6(OUT6, &[fragment(0, true, 11), fragment(0, true, 12)], 80), drop(D::Malformed)),
    ]
}

/// Tunnels from outside are dropped; from a node they pass.
fn tunnels() -> Vec<Fixture> {
    vec![
        fx("IPIP from outside", tunnel(OUT4, 4), drop(D::Tunnel)),
        fx("IPIP from a node", tunnel(NODE4, 4), pass(P::OtherProtocol)),
        fx("GRE from outside", tunnel(OUT4, 47), drop(D::Tunnel)),
        fx("6in4 from outside", tunnel(OUT4, 41), drop(D::Tunnel)),
        fx("ESP from outside", tunnel(OUT4, 50), drop(D::Tunnel)),
        fx("IPv6-in-IPv6 from outside", frag6(&[], 41, &v6(OUT6, &[]).packet(&syn(22))), drop(D::Tunnel)),
        fx("IPv6 GRE after dest opts", frag6(&[dest_opts(0)], 47, &[0u8; 8]), drop(D::Tunnel)),
    ]
}

/// Malformed headers.
fn malformed() -> Vec<Fixture> {
    vec![
        fx("IP length cuts the TCP header (padding trick)", edit(tcp4(OUT4, 22), 14 + 2, &24u16.to_be_bytes()), drop(D::Malformed)),
        fx("IHL below 5", edit(tcp4(OUT4, 22), 14, &[0x44]), drop(D::Malformed)),
        fx("IP total length past the frame", edit(tcp4(OUT4, 22), 14 + 2, &1500u16.to_be_bytes()), drop(D::Malformed)),
        fx("version 6 in an IPv4 frame", e().frame(0x0800, &v6(OUT6, &[]).packet(&syn(22))), drop(D::Malformed)),
        fx("IPv6 payload length past the frame", edit(tcp6(OUT6, &[], 22), 14 + 4, &1000u16.to_be_bytes()), drop(D::Malformed)),
        fx("truncated TCP header", e().ipv4(&v4(OUT4).with_payload(6, &segment(&syn(80))[..12])), drop(D::Malformed)),
    ]
}

/// Reverse path: trusted by address, but the route back says forged.
fn reverse_path() -> Vec<Fixture> {
    vec![
        fx("tcp/22 from the allow-list, routed via inside", tcp4(FORGED4, 22), drop(D::ReversePath)),
        fx("udp/161 from the allow-list, unreachable route", udp4(NOROUTE4, 161), drop(D::ReversePath)),
        fx("udp/161 from the allow-list, no route", udp4(UNROUTED4, 161), drop(D::ReversePath)),
        fx("tcp/80 from a forged source is unprotected", tcp4(FORGED4, 80), pass(P::Unprotected)),
        fx("tcp/5432 from a forged source is protected", tcp4(FORGED4, 5432), drop(D::ReversePath)),
        fx("IPv6 tcp/22 from the allow-list, routed via inside", tcp6(FORGED6, &[], 22), drop(D::ReversePath)),
        fx("IPv6 tcp/22 from the allow-list, no route", tcp6(NOROUTE6, &[], 22), drop(D::ReversePath)),
        fx("v4 first fragment tcp/22 forged", frag4(FORGED4, 110, true, 0, &with_big(22)), drop(D::ReversePath)),
        fx("v4 follower of a forged first", frag4(FORGED4, 110, false, 11, &big()), drop(D::FragmentOfDropped)),
    ]
}

/// Impossible sources, whatever the port.
fn impossible_sources() -> Vec<Fixture> {
    vec![
        fx("tcp/22 from loopback", tcp4(LOOP4, 22), drop(D::ImpossibleSource)),
        fx("tcp/80 from loopback", tcp4(LOOP4, 80), drop(D::ImpossibleSource)),
        fx("udp/4789 from the host's own address", udp4(OWN4, 4789), drop(D::ImpossibleSource)),
        fx("udp/53 from a multicast source", udp4(MCAST4, 53), drop(D::ImpossibleSource)),
        fx("udp/67 from 0.0.0.0 (DHCP)", udp4(Ipv4Addr::UNSPECIFIED, 67), pass(P::Unprotected)),
        fx("udp/68 from 0.1.2.3", udp4(Ipv4Addr::new(0, 1, 2, 3), 68), drop(D::ImpossibleSource)),
        fx("v4 follower from loopback", frag4(LOOP4, 101, false, 11, &big()), drop(D::ImpossibleSource)),
        fx("IPv6 tcp/22 from ::1", tcp6(LOOP6, &[], 22), drop(D::ImpossibleSource)),
        fx("IPv6 tcp/80 from the host's own address", tcp6(OWN6, &[], 80), drop(D::ImpossibleSource)),
        fx("IPv6 tcp/80 from link-local off-link", tcp6(LINKLOCAL6, &[], 80), drop(D::ImpossibleSource)),
        fx("IPv6 from IPv4-mapped", tcp6("::ffff:10.9.5.5".parse().unwrap(), &[], 22), drop(D::ImpossibleSource)),
        fx("IPIP from own address", tunnel(OWN4, 4), drop(D::ImpossibleSource)),
    ]
}

/// The evasion suite, under `kernel::FIXTURE_CONFIG`: one named case per
/// scenario, grouped by concern. In this order: fragment cases rely on the
/// ones before them.
pub fn fixtures() -> Vec<Fixture> {
    [
        ports_and_sources(),
        not_tcp_or_udp(),
        ipv4_options_and_vlan_tags(),
        ipv6_extension_headers(),
        ipv4_fragments(),
        ipv6_fragments(),
        tunnels(),
        malformed(),
        reverse_path(),
        impossible_sources(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A random frame: a well-formed structure from random choices, then, for
/// a third of them, random damage.
pub fn packet(rng: &mut impl Rng) -> Vec<u8> {
    let ports = [22u16, 80, 161, 443, 2377, 4789, 5432, 7946, 9000, 9050, 9100, 9101, 65535];
    let dport = if rng.gen_bool(0.8) { *ports.choose(rng).unwrap() } else { rng.gen() };
    let protos = [6u8, 6, 6, 17, 17, 17, 1, 58, 4, 41, 47, 50, 51, 97, 115, 137, 132];
    let proto = if rng.gen_bool(0.9) { *protos.choose(rng).unwrap() } else { rng.gen() };
    let mut l4 = match proto {
        6 => segment(&L4::tcp_syn(rng.gen(), dport)),
        17 => segment(&L4::udp(rng.gen(), dport, b"")),
        _ => vec![0u8; 8],
    };
    let extra = rng.gen_range(0..48);
    l4.extend((0..extra).map(|_| rng.gen::<u8>()));
    if rng.gen_bool(0.05) {
        l4.truncate(rng.gen_range(0..l4.len()));
    }
    let ethertype_choice = rng.gen_range(0..100);
    let (ethertype, ip) = if ethertype_choice < 47 {
        let src = if rng.gen_bool(0.8) {
            *[OUT4, TRUST4, NODE4, BOTH4, Ipv4Addr::new(10, 7, 0, 2)].choose(rng).unwrap()
        } else {
            *[FORGED4, NOROUTE4, UNROUTED4, LOOP4, OWN4, MCAST4, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST].choose(rng).unwrap()
        };
        let mut h = v4(src);
        if rng.gen_bool(0.2) {
            h.options = vec![1; 4 * rng.gen_range(1..=10)];
        }
        h.id = rng.gen_range(0..6);
        match rng.gen_range(0..10) {
            0..=1 => h.more_fragments = true,
            2 => {
                h.frag_offset = *[1u16, 2, 3, 185].choose(rng).unwrap();
                h.more_fragments = rng.gen();
            }
            _ => {}
        }
        (0x0800, h.with_payload(proto, &l4))
    } else if ethertype_choice < 94 {
        let src = if rng.gen_bool(0.8) {
            *[OUT6, TRUST6, NODE6].choose(rng).unwrap()
        } else {
            *[FORGED6, NOROUTE6, LOOP6, OWN6, LINKLOCAL6, Ipv6Addr::UNSPECIFIED].choose(rng).unwrap()
        };
        let n = if rng.gen_bool(0.6) { 0 } else { rng.gen_range(1..=10) };
        let chain: Vec<ExtHeader> = (0..n)
            .map(|_| match rng.gen_range(0..10) {
                0..=2 => generic_ext(0, rng.gen_range(0..3)),
                3..=5 => dest_opts(rng.gen_range(0..3)),
                6 => ExtHeader::srh(1, &[DST6]),
                7..=8 => fragment(*[0u16, 0, 1, 2, 3, 100].choose(rng).unwrap(), rng.gen(), rng.gen_range(0..6)),
                _ => generic_ext(*[135u8, 139, 140].choose(rng).unwrap(), rng.gen_range(0..2)),
            })
            .collect();
        (0x86dd, v6(src, &chain).with_payload(proto, &l4))
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
    let mut frame = eth(&tags).frame(ethertype, &ip);
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
