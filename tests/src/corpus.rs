//! A systematic corpus of frames for the kernel-vs-model differential
//! tests: header combinations *enumerated*, not sampled, each frame named
//! by the combination it is, and every one of them cut at every byte.
//!
//! For each [`Flow`] (source, destination, ports) the corpus holds:
//!
//! - **L2**: 0 to 10 VLAN tags (0x8100, 0x88a8, 0x9100 and mixes, VID 0
//!   and others: inside and past the parsers' limit of 8), and EtherTypes
//!   that are not IP;
//! - **IPv4**: options of several kinds and lengths (NOP, EOL, record
//!   route, LSRR, SSRR, timestamp, router alert, 40 bytes of options) and
//!   bogus ones (length 0, 1, past the header), IHL 0–4, IHL past the
//!   packet, total length short of the header, of the L4 header, past the
//!   frame, 0; TTL 0, 1, 2, 255; a wrong version, the reserved flag, a bad
//!   header checksum; Ethernet padding after the packet;
//! - **IPv6**: extension headers (hop-by-hop, destination options,
//!   routing types 0, 2 and 4 (SRH) with and without segments left,
//!   fragment, AH, ESP, mobility, HIP, shim6, no-next-header, unknown),
//!   chains of 1 to 10 headers (the parsers look through 8), a hop-by-hop
//!   header after another, two fragment headers, a hdr-ext-len past the
//!   payload, payload lengths short of the chain or past the frame, hop
//!   limits 0, 1, 255, a wrong version;
//! - **fragments**, IPv4 and IPv6: first (whole L4 header, tiny: cut
//!   inside it), middle and last, atomic, overlapping the TCP header,
//!   followers of a first fragment in the corpus and of one never sent;
//! - **L4**: TCP SYN/ACK/FIN/RST with and without options and payload,
//!   data offsets 0, 4 and past the segment; UDP with payload, without,
//!   with length fields 0, 7, short and past the packet, checksum 0;
//!   ICMP/ICMPv6 echo, and errors (fragmentation needed / packet too big,
//!   port unreachable, time exceeded) quoting the flow's reverse packet
//!   whole, cut at every interesting length, with IPv4 options, a bogus
//!   quoted IHL or version, a non-TCP/UDP quoted protocol; other
//!   protocols (GRE, IPIP, 6in4, ESP, AH, SCTP, 253, 255).
//!
//! Dimensions are crossed where their parsers interact: every IP variant
//! carries every core L4 (TCP SYN, UDP, ICMP echo, a path-MTU error),
//! every L4 variant rides in every core IP header (plain, with options,
//! first fragment, IPv6 with a destination-options header), every VLAN
//! stack carries the core packets. [`truncations`] then cuts each frame at
//! every length from the Ethernet header (the least `BPF_PROG_TEST_RUN`
//! accepts) up to its full length.
//!
//! Frames come in a meaningful order (a first fragment before its
//! followers; a flow's packets before errors about it) and are
//! deterministic: a mismatch names its frame, and the same frame comes
//! back on the next run.

use std::net::IpAddr;

use crate::rawframe::{checksum, fold, sum16, ExtHeader, FrameBuilder, Ipv4, Ipv6};

/// One frame of the corpus and the combination of headers it is.
#[derive(Clone, Debug)]
pub struct Case {
    /// What it is, as "L2 / L3 / L4" and the cut, if any.
    pub what: String,
    /// The Ethernet frame.
    pub frame: Vec<u8>,
}

/// The endpoints packets are built for: `src`:`sport` → `dst`:`dport`
/// (both addresses of one family). TCP and UDP use these ports; ICMP
/// errors quote the reverse packet (`dst` → `src`), as a router on the way
/// back to `src` would.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// An ICMP message's type, code and the four bytes after the checksum.
type IcmpKind = (u8, u8, [u8; 4]);

/// An L4 payload: a name, its IP protocol, its bytes.
type Payload = (String, u8, Vec<u8>);

/// The whole corpus for `flows`, framed from `src_mac` to `dst_mac`.
pub fn build(flows: &[Flow], src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<Case> {
    let eth = FrameBuilder::new(src_mac, dst_mac);
    let mut out = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let flow_name = format!("{}:{} > {}:{}", f.src, f.sport, f.dst, f.dport);
        let mut push = |l2: &str, frame: Vec<u8>, rest: &str| {
            out.push(Case { what: format!("[{flow_name}] {l2} / {rest}"), frame });
        };
        // Fragment ids are per flow, so one flow's followers never meet
        // another's first fragment.
        let id = 0x100 * (i as u32 + 1);
        let core = l4_core(f);
        // Every IP variant with every core payload.
        for (l4name, proto, l4) in &core {
            for (l3name, packet) in ip_variants(f, *proto, l4) {
                push("untagged", eth.ip(&packet), &format!("{l3name} / {l4name}"));
            }
        }
        // Every L4 variant in every core IP header.
        for (l4name, proto, l4) in l4_all(f) {
            for (l3name, packet) in ip_core(f, proto, &l4, id) {
                push("untagged", eth.ip(&packet), &format!("{l3name} / {l4name}"));
            }
        }
        // Fragment sequences, in order.
        for (name, packet) in fragments(f, id + 0x10) {
            push("untagged", eth.ip(&packet), &name);
        }
        // Every VLAN stack with the core packets.
        for (l2name, tags) in vlan_stacks() {
            let tagged = tags.iter().fold(eth.clone(), |b, &(tpid, tci)| b.vlan_tci(tpid, tci));
            for (l4name, proto, l4) in &core {
                let packet = plain(f, *proto, l4);
                push(&l2name, tagged.ip(&packet), &format!("plain / {l4name}"));
            }
            push(&l2name, tagged.frame(0x0806, &[0; 28]), "ARP");
        }
        for et in [0x0806u16, 0x88cc, 0x8847, 0x9000, 0x0000, 0xffff] {
            push(&format!("ethertype {et:#06x}"), eth.frame(et, &plain(f, core[0].1, &core[0].2)), "TCP SYN inside");
        }
    }
    out
}

/// Every prefix of every case from [`ETH_HLEN`](lb_common::wire::ETH_HLEN)
/// bytes up to (not including) its full length, named by its cut.
pub fn truncations(cases: &[Case]) -> impl Iterator<Item = Case> + '_ {
    cases.iter().flat_map(|c| {
        (lb_common::wire::ETH_HLEN..c.frame.len())
            .map(move |len| Case { what: format!("{} / cut at {len} of {}", c.what, c.frame.len()), frame: c.frame[..len].to_vec() })
    })
}

/// Every cut of every case that falls inside its IP packet, with the IP
/// length fixed up to match (IPv4 total length and header checksum, IPv6
/// payload length): the frame is consistent, only shorter, so the cut
/// reaches the parsers of the headers inside (extension headers, L4, the
/// packet an ICMP error quotes) instead of failing the IP length check.
/// Cuts before the length field's end are left to [`truncations`].
pub fn consistent_truncations(cases: &[Case]) -> impl Iterator<Item = Case> + '_ {
    cases.iter().flat_map(|c| {
        let l3 = ip_offset(&c.frame);
        let cuts = match l3 {
            Some((l3, 4)) => l3 + 20..c.frame.len(),
            Some((l3, 6)) => l3 + 40..c.frame.len(),
            _ => 0..0,
        };
        cuts.map(move |len| {
            let (l3, version) = l3.unwrap();
            let mut frame = c.frame[..len].to_vec();
            if version == 4 {
                frame[l3 + 2..l3 + 4].copy_from_slice(&((len - l3) as u16).to_be_bytes());
                fix_v4_checksum(&mut frame[l3..]);
            } else {
                frame[l3 + 4..l3 + 6].copy_from_slice(&((len - l3 - 40) as u16).to_be_bytes());
            }
            Case { what: format!("{} / IP packet cut at {len} of {}, length fixed", c.what, c.frame.len()), frame }
        })
    })
}

/// Where the IP header of a frame starts (after any VLAN tags) and its
/// EtherType's IP version.
fn ip_offset(frame: &[u8]) -> Option<(usize, u8)> {
    let mut off = 12;
    loop {
        let et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
        match et {
            0x8100 | 0x88a8 | 0x9100 => off += 4,
            0x0800 => return Some((off + 2, 4)),
            0x86dd => return Some((off + 2, 6)),
            _ => return None,
        }
    }
}

/// The raw frames in `dir` (one Ethernet frame per file, as the fuzz
/// targets store them), sorted by name; empty when there is no such
/// directory.
pub fn replay_dir(dir: &std::path::Path) -> Vec<Case> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| Some(Case { what: format!("fuzz corpus {}", p.display()), frame: std::fs::read(&p).ok()? }))
        .collect()
}

/// A hex dump, 16 bytes a line with offsets, for mismatch reports.
pub fn hexdump(frame: &[u8]) -> String {
    frame
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let bytes: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("  {:04x}  {}", i * 16, bytes.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- L2 ----

/// VLAN stacks by depth: each TPID alone, mixes, depths 0 to 10.
fn vlan_stacks() -> Vec<(String, Vec<(u16, u16)>)> {
    let tpids = [0x8100u16, 0x88a8, 0x9100];
    let mut stacks = vec![
        ("0x8100 VID 0".to_string(), vec![(0x8100, 0)]),
        ("0x8100 VID 10 PCP 5".to_string(), vec![(0x8100, 0xa00a)]),
        ("0x88a8 VID 100".to_string(), vec![(0x88a8, 100)]),
        ("0x9100 VID 4095".to_string(), vec![(0x9100, 0x0fff)]),
        ("QinQ 0x88a8+0x8100".to_string(), vec![(0x88a8, 100), (0x8100, 0)]),
        ("QinQ 0x9100+0x8100".to_string(), vec![(0x9100, 5), (0x8100, 7)]),
        ("0x8100+0x88a8 (reversed)".to_string(), vec![(0x8100, 1), (0x88a8, 2)]),
    ];
    for depth in 2..=10usize {
        let tags = (0..depth).map(|i| (tpids[i % 3], i as u16)).collect();
        stacks.push((format!("{depth} tags, mixed TPIDs"), tags));
        stacks.push((format!("{depth} x 0x8100 VID 0"), vec![(0x8100, 0); depth]));
    }
    stacks
}

// ---- L4 ----

fn v6(f: &Flow) -> bool {
    f.src.is_ipv6()
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The pseudo-header sum of `src` → `dst` for `len` bytes of `proto`.
fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let acc = sum16(&octets(dst), sum16(&octets(src), 0));
    if src.is_ipv4() {
        sum16(&[0, proto], acc) + len as u32
    } else {
        sum16(&[0, 0, 0, proto], sum16(&(len as u32).to_be_bytes(), acc))
    }
}

/// Fills in the checksum of an L4 segment from `src` to `dst` at `at`.
fn finish(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, at: usize) -> Vec<u8> {
    if l4.len() < at + 2 {
        return l4;
    }
    l4[at] = 0;
    l4[at + 1] = 0;
    let ps = if proto == 1 { 0 } else { pseudo(src, dst, proto, l4.len()) };
    let mut c = fold(sum16(&l4, ps));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    l4
}

/// A TCP segment with `flags`, `options` (data offset from their length
/// unless `doff` overrides it) and `payload`.
fn tcp(e: &Flow, flags: u8, options: &[u8], doff: Option<u8>, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(e.sport.to_be_bytes());
    h.extend(e.dport.to_be_bytes());
    h.extend(0x1000_0000u32.to_be_bytes());
    h.extend(if flags & 0x10 != 0 { 0x2000_0000u32 } else { 0 }.to_be_bytes());
    let doff = doff.unwrap_or(5 + (options.len() / 4) as u8);
    h.push(doff << 4);
    h.push(flags);
    h.extend(64240u16.to_be_bytes());
    h.extend([0, 0, 0, 0]);
    h.extend(options);
    h.extend(payload);
    finish(e.src, e.dst, 6, h, 16)
}

/// A UDP datagram; `len` overrides its length field, `zero_checksum`
/// sends it without a checksum.
fn udp(e: &Flow, payload: &[u8], len: Option<u16>, zero_checksum: bool) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(e.sport.to_be_bytes());
    h.extend(e.dport.to_be_bytes());
    h.extend(len.unwrap_or(8 + payload.len() as u16).to_be_bytes());
    h.extend([0, 0]);
    h.extend(payload);
    if zero_checksum {
        return h;
    }
    finish(e.src, e.dst, 17, h, 6)
}

/// An ICMP (IPv4) or ICMPv6 message from `src` to `dst`.
fn icmp(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> (u8, Vec<u8>) {
    let mut m = vec![kind, code, 0, 0];
    m.extend(rest);
    m.extend(body);
    if src.is_ipv4() {
        (1, finish(src, dst, 1, m, 2))
    } else {
        (58, finish(src, dst, 58, m, 2))
    }
}

/// The path-MTU error type: IPv4 fragmentation needed, IPv6 packet too big.
fn too_big(f: &Flow) -> IcmpKind {
    if v6(f) { (2, 0, 1280u32.to_be_bytes()) } else { (3, 4, [0, 0, 0x05, 0x78]) }
}

/// The flow's reverse packet (what `dst` sent to `src`), as an error
/// quotes it: TCP with data, or UDP.
fn reverse_packet(f: &Flow, udp_inner: bool, options: bool) -> Vec<u8> {
    let (s, d) = (f.dst, f.src);
    let back = Flow { src: s, dst: d, sport: f.dport, dport: f.sport };
    let l4 = if udp_inner { udp(&back, &[3; 64], None, false) } else { tcp(&back, 0x18, &[], None, &[7; 64]) };
    let proto = if udp_inner { 17 } else { 6 };
    match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4::new(s, d);
            h.dont_fragment = true;
            if options {
                h.options = vec![1, 1, 1, 0];
            }
            h.with_payload(proto, &l4)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6::new(s, d).with_payload(proto, &l4),
        _ => unreachable!("one family per flow"),
    }
}

/// An ICMP error from a router (the flow's source side) to `f.dst`
/// quoting `quoted`.
fn error_about(f: &Flow, kind: IcmpKind, quoted: &[u8]) -> (u8, Vec<u8>) {
    icmp(f.src, f.dst, kind.0, kind.1, kind.2, quoted)
}

/// The core payloads every IP variant carries.
fn l4_core(f: &Flow) -> Vec<Payload> {
    let (s, d) = (f.src, f.dst);
    let echo = if v6(f) { 128 } else { 8 };
    let (ep, e) = icmp(s, d, echo, 0, [0, 1, 0, 1], &[0x61; 16]);
    let (tp, t) = error_about(f, too_big(f), &reverse_packet(f, false, false)[..if v6(f) { 48 + 20 } else { 28 + 20 }]);
    vec![
        ("TCP SYN".into(), 6, tcp(f, 0x02, &[], None, &[])),
        ("UDP 16 bytes".into(), 17, udp(f, &[0x55; 16], None, false)),
        ("ICMP echo".into(), ep, e),
        ("path-MTU error quoting TCP".into(), tp, t),
    ]
}

/// Every L4 variant.
fn l4_all(f: &Flow) -> Vec<Payload> {
    let mut v: Vec<Payload> = l4_core(f);
    let opts = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
    v.extend([
        ("TCP ACK + 100 bytes".into(), 6, tcp(f, 0x10, &[], None, &[0x41; 100])),
        ("TCP FIN/ACK".into(), 6, tcp(f, 0x11, &[], None, &[])),
        ("TCP RST".into(), 6, tcp(f, 0x04, &[], None, &[])),
        ("TCP SYN, 20 bytes of options".into(), 6, tcp(f, 0x02, &opts, None, &[])),
        ("TCP data offset 0".into(), 6, tcp(f, 0x18, &[], Some(0), &[1; 8])),
        ("TCP data offset 4".into(), 6, tcp(f, 0x18, &[], Some(4), &[1; 8])),
        ("TCP data offset 15, segment of 24".into(), 6, tcp(f, 0x18, &[], Some(15), &[1; 4])),
        ("TCP all flags".into(), 6, tcp(f, 0xff, &[], None, &[])),
        ("UDP empty".into(), 17, udp(f, &[], None, false)),
        ("UDP checksum 0".into(), 17, udp(f, &[0x55; 16], None, true)),
        ("UDP length 0".into(), 17, udp(f, &[0x55; 16], Some(0), false)),
        ("UDP length 7".into(), 17, udp(f, &[0x55; 16], Some(7), false)),
        ("UDP length 8 of 24".into(), 17, udp(f, &[0x55; 16], Some(8), false)),
        ("UDP length past the packet".into(), 17, udp(f, &[0x55; 16], Some(1000), false)),
        ("UDP 1400 bytes".into(), 17, udp(f, &[0x55; 1400], None, false)),
        ("TCP 1460 bytes".into(), 6, tcp(f, 0x18, &[], None, &[0x41; 1460])),
    ]);
    // ICMP errors quoting the reverse packet in every shape.
    let ip_hlen = if v6(f) { 40 } else { 20 };
    let kinds: Vec<(&str, IcmpKind)> = if v6(f) {
        vec![("dest unreachable", (1, 4, [0; 4])), ("time exceeded", (3, 0, [0; 4])), ("packet too big code 1", (2, 1, 1280u32.to_be_bytes()))]
    } else {
        vec![("port unreachable", (3, 3, [0; 4])), ("time exceeded", (11, 0, [0; 4])), ("frag needed MTU 0", (3, 4, [0; 4]))]
    };
    for (kname, kind) in &kinds {
        for udp_inner in [false, true] {
            let inner = reverse_packet(f, udp_inner, false);
            let iname = if udp_inner { "UDP" } else { "TCP" };
            for quote in [0, 8, ip_hlen - 1, ip_hlen, ip_hlen + 2, ip_hlen + 4, ip_hlen + 8, ip_hlen + 18, ip_hlen + 20, inner.len()] {
                let (p, m) = error_about(f, *kind, &inner[..quote.min(inner.len())]);
                v.push((format!("ICMP {kname} quoting {quote} bytes of {iname}"), p, m));
            }
        }
    }
    let kind = too_big(f);
    let inner = reverse_packet(f, false, false);
    // The path-MTU error the balancer translates, quoting every length of
    // the packet up to its L4 checksum and a bit (longer quotes differ only
    // in payload).
    for udp_inner in [false, true] {
        let inner = reverse_packet(f, udp_inner, false);
        for quote in (0..=(ip_hlen + 24).min(inner.len())).chain([inner.len()]) {
            let (p, m) = error_about(f, kind, &inner[..quote]);
            v.push((format!("ICMP path-MTU error quoting {quote} bytes of {}", if udp_inner { "UDP" } else { "TCP" }), p, m));
        }
    }
    let mut bogus: Vec<(String, Vec<u8>)> = Vec::new();
    if v6(f) {
        bogus.push(("quoted version 4".into(), edit(&inner, 0, &[0x45])));
        bogus.push(("quoted hop-by-hop header".into(), {
            let IpAddr::V6(a) = f.dst else { unreachable!() };
            let IpAddr::V6(b) = f.src else { unreachable!() };
            Ipv6::new(a, b).with(ExtHeader::HopByHop(vec![])).with_payload(6, &inner[40..])
        }));
        bogus.push(("quoted payload length 0".into(), edit(&inner, 4, &[0, 0])));
        bogus.push(("quoted ICMPv6".into(), edit(&inner, 6, &[58])));
    } else {
        let with_opts = reverse_packet(f, false, true);
        bogus.push(("quoted IPv4 options".into(), with_opts.clone()));
        bogus.push(("quoted IPv4 options, 28 bytes".into(), with_opts[..28].to_vec()));
        bogus.push(("quoted IHL 4".into(), edit(&inner, 0, &[0x44])));
        bogus.push(("quoted IHL 15".into(), edit(&inner, 0, &[0x4f])));
        bogus.push(("quoted version 6".into(), edit(&inner, 0, &[0x65])));
        bogus.push(("quoted total length 0".into(), edit(&inner, 2, &[0, 0])));
        bogus.push(("quoted ICMP".into(), edit(&inner, 9, &[1])));
        bogus.push(("quoted fragment".into(), edit(&inner, 6, &[0x20, 0x10])));
        bogus.push(("quoted UDP checksum 0".into(), {
            let mut u = reverse_packet(f, true, false);
            u[26] = 0;
            u[27] = 0;
            u
        }));
    }
    for (bname, quoted) in bogus {
        let (p, m) = error_about(f, kind, &quoted);
        v.push((format!("ICMP path-MTU error, {bname}"), p, m));
    }
    // An error about some other flow: the ports swapped.
    let (p, m) = error_about(f, kind, &edit(&inner, ip_hlen, &[inner[ip_hlen + 2], inner[ip_hlen + 3], inner[ip_hlen], inner[ip_hlen + 1]]));
    v.push(("ICMP path-MTU error about another flow".into(), p, m));
    for (name, proto) in [("GRE", 47u8), ("IPIP", 4), ("6in4", 41), ("ESP", 50), ("AH", 51), ("SCTP", 132), ("no next header", 59), ("253", 253), ("255", 255)] {
        v.push((name.into(), proto, vec![0; 24]));
    }
    v
}

fn edit(b: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    b[at..at + with.len()].copy_from_slice(with);
    b
}

// ---- L3 ----

fn v4_header(f: &Flow) -> Ipv4 {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (f.src, f.dst) else { unreachable!("an IPv4 flow") };
    Ipv4::new(s, d)
}

fn v6_header(f: &Flow) -> Ipv6 {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (f.src, f.dst) else { unreachable!("an IPv6 flow") };
    Ipv6::new(s, d)
}

/// The plain packet.
fn plain(f: &Flow, proto: u8, l4: &[u8]) -> Vec<u8> {
    if v6(f) { v6_header(f).with_payload(proto, l4) } else { v4_header(f).with_payload(proto, l4) }
}

/// Recomputes an IPv4 header checksum after an edit.
fn fix_v4_checksum(p: &mut [u8]) {
    let ihl = (usize::from(p[0] & 0x0f) * 4).clamp(20, p.len());
    p[10] = 0;
    p[11] = 0;
    let c = checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The core IP headers every L4 variant rides in (and bytes after it).
fn ip_core(f: &Flow, proto: u8, l4: &[u8], id: u32) -> Vec<(String, Vec<u8>)> {
    if v6(f) {
        let h = v6_header(f);
        vec![
            ("IPv6".into(), h.with_payload(proto, l4)),
            ("IPv6 + dest opts".into(), h.clone().with(ExtHeader::DestOpts(vec![])).with_payload(proto, l4)),
            ("IPv6 atomic fragment".into(), h.clone().with(ExtHeader::atomic_fragment(id)).with_payload(proto, l4)),
            ("IPv6 first fragment".into(), h.clone().with(ExtHeader::Fragment { offset: 0, more: true, id: id + 1 }).with_payload(proto, l4)),
            ("IPv6, Ethernet trailer".into(), padded(h.with_payload(proto, l4))),
        ]
    } else {
        let h = v4_header(f);
        vec![
            ("IPv4".into(), h.with_payload(proto, l4)),
            ("IPv4 DF".into(), Ipv4 { dont_fragment: true, ..h.clone() }.with_payload(proto, l4)),
            ("IPv4 + 8 bytes of options".into(), Ipv4 { options: vec![1, 1, 1, 1, 148, 4, 0, 0], ..h.clone() }.with_payload(proto, l4)),
            ("IPv4 first fragment".into(), Ipv4 { more_fragments: true, id: id as u16, ..h.clone() }.with_payload(proto, l4)),
            ("IPv4, Ethernet padding and trailer".into(), padded(h.with_payload(proto, l4))),
        ]
    }
}

/// Every IP variant carrying `l4`.
fn ip_variants(f: &Flow, proto: u8, l4: &[u8]) -> Vec<(String, Vec<u8>)> {
    if v6(f) { ipv6_variants(f, proto, l4) } else { ipv4_variants(f, proto, l4) }
}

fn ipv4_variants(f: &Flow, proto: u8, l4: &[u8]) -> Vec<(String, Vec<u8>)> {
    let h = v4_header(f);
    let mut v: Vec<(String, Vec<u8>)> = vec![("IPv4".into(), h.with_payload(proto, l4))];
    let options: Vec<(&str, Vec<u8>)> = vec![
        ("NOP x4", vec![1, 1, 1, 1]),
        ("EOL", vec![0, 0, 0, 0]),
        ("NOP, EOL, garbage", vec![1, 0, 0xff, 0xff]),
        ("record route 7", vec![7, 7, 4, 0, 0, 0, 0, 1]),
        ("record route 39", [vec![7, 39, 4], vec![0; 36], vec![0]].concat()),
        ("LSRR", [vec![131, 11, 4], vec![10, 0, 0, 9, 10, 0, 0, 10], vec![0]].concat()),
        ("SSRR", [vec![137, 7, 4], vec![10, 0, 0, 9], vec![0]].concat()),
        ("timestamp 12", [vec![68, 12, 5, 0], vec![0; 8]].concat()),
        ("timestamp 40", [vec![68, 40, 5, 0], vec![0; 36]].concat()),
        ("router alert", vec![148, 4, 0, 0]),
        ("40 bytes of NOP", vec![1; 40]),
        ("option length 0", vec![7, 0, 0, 0]),
        ("option length 1", vec![131, 1, 0, 0]),
        ("option length past the header", vec![7, 40, 4, 0]),
        ("option kind without length", vec![1, 1, 1, 68]),
    ];
    for (name, o) in options {
        v.push((format!("IPv4 options: {name}"), Ipv4 { options: o, ..h.clone() }.with_payload(proto, l4)));
    }
    let base = h.with_payload(proto, l4);
    let total = base.len() as u16;
    let mut edited = |name: &str, at: usize, with: &[u8], fix: bool| {
        let mut p = edit(&base, at, with);
        if fix {
            fix_v4_checksum(&mut p);
        }
        v.push((format!("IPv4 {name}"), p));
    };
    for ihl in 0..5u8 {
        edited(&format!("IHL {ihl}"), 0, &[0x40 | ihl], true);
    }
    edited("IHL 6 with no options", 0, &[0x46], true);
    edited("IHL 15 with no options", 0, &[0x4f], true);
    edited("version 0", 0, &[0x05], true);
    edited("version 6", 0, &[0x65], true);
    edited("version 15", 0, &[0xf5], true);
    for (name, len) in [("total length 0", 0u16), ("total length 19", 19), ("total length 20", 20), ("total length 24", 24), ("total length 27", 27), ("total length - 1", total - 1), ("total length + 1", total + 1), ("total length 1500", 1500), ("total length 65535", 65535)] {
        edited(name, 2, &len.to_be_bytes(), true);
    }
    for ttl in [0u8, 1, 2, 255] {
        edited(&format!("TTL {ttl}"), 8, &[ttl], true);
    }
    edited("reserved flag", 6, &[0x80, 0], true);
    edited("DF + reserved flag", 6, &[0xc0, 0], true);
    edited("bad header checksum", 10, &[0xde, 0xad], false);
    edited("protocol 0", 9, &[0], true);
    v
}

/// `packet` padded to Ethernet's minimum (46 bytes of payload) and
/// followed by 8 bytes of trailer: bytes in the frame past the IP length.
fn padded(mut packet: Vec<u8>) -> Vec<u8> {
    packet.resize(packet.len().max(46), 0);
    packet.extend([0xaa; 8]);
    packet
}

fn ipv6_variants(f: &Flow, proto: u8, l4: &[u8]) -> Vec<(String, Vec<u8>)> {
    let h = v6_header(f);
    let dst = match f.dst {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!(),
    };
    let d = || ExtHeader::DestOpts(vec![]);
    let raw = |protocol: u8, units: usize| ExtHeader::Raw { protocol, bytes: vec![0; units * 8 + 6] };
    let chains: Vec<(String, Vec<ExtHeader>)> = {
        let mut c: Vec<(String, Vec<ExtHeader>)> = vec![
            ("hop-by-hop".into(), vec![ExtHeader::HopByHop(vec![])]),
            ("hop-by-hop, router alert".into(), vec![ExtHeader::HopByHop(vec![5, 2, 0, 0])]),
            ("dest opts with PadN".into(), vec![ExtHeader::DestOpts(vec![1, 22].into_iter().chain([0; 22]).collect())]),
            ("routing type 0, segments left 0".into(), vec![ExtHeader::routing_type0(0, &[dst])]),
            ("routing type 0, segments left 1".into(), vec![ExtHeader::routing_type0(1, &[dst])]),
            ("routing type 2".into(), vec![ExtHeader::Routing { routing_type: 2, segments_left: 1, data: [vec![0; 4], dst.octets().to_vec()].concat() }]),
            ("SRH, segments left 1".into(), vec![ExtHeader::srh(1, &[dst, dst])]),
            ("SRH, segments left 0".into(), vec![ExtHeader::srh(0, &[dst])]),
            ("atomic fragment".into(), vec![ExtHeader::atomic_fragment(7)]),
            ("mobility".into(), vec![raw(135, 0)]),
            ("HIP".into(), vec![raw(139, 1)]),
            ("shim6".into(), vec![raw(140, 0)]),
            ("AH".into(), vec![raw(51, 1)]),
            ("hop-by-hop after dest opts".into(), vec![d(), ExtHeader::HopByHop(vec![])]),
            ("hop-by-hop, dest opts, routing, fragment, dest opts".into(), vec![ExtHeader::HopByHop(vec![]), d(), ExtHeader::srh(0, &[dst]), ExtHeader::atomic_fragment(8), d()]),
            ("two atomic fragment headers".into(), vec![ExtHeader::atomic_fragment(9), ExtHeader::atomic_fragment(10)]),
            ("dest opts, 255 units (past the payload)".into(), vec![d()]),
        ];
        for n in 1..=10 {
            c.push((format!("{n} dest opts"), vec![d(); n]));
        }
        c.push(("7 dest opts + atomic fragment".into(), [vec![d(); 7], vec![ExtHeader::atomic_fragment(11)]].concat()));
        c.push(("8 dest opts + atomic fragment".into(), [vec![d(); 8], vec![ExtHeader::atomic_fragment(12)]].concat()));
        c.push(("hop-by-hop + 8 mixed".into(), [vec![ExtHeader::HopByHop(vec![])], vec![raw(135, 0), d(), raw(139, 0), raw(140, 0), raw(135, 0), d(), raw(139, 0), raw(140, 0)]].concat()));
        c
    };
    let mut v: Vec<(String, Vec<u8>)> = vec![("IPv6".into(), h.with_payload(proto, l4))];
    for (name, chain) in chains {
        let mut p = Ipv6 { ext: chain, ..h.clone() }.with_payload(proto, l4);
        if name.contains("255 units") {
            p[41] = 255;
        }
        v.push((format!("IPv6 {name}"), p));
    }
    let base = h.with_payload(proto, l4);
    let plen = (base.len() - 40) as u16;
    let mut edited = |name: &str, at: usize, with: &[u8]| v.push((format!("IPv6 {name}"), edit(&base, at, with)));
    for (name, len) in [("payload length 0", 0u16), ("payload length 4", 4), ("payload length - 1", plen.saturating_sub(1)), ("payload length + 1", plen + 1), ("payload length 65535", 65535)] {
        edited(name, 4, &len.to_be_bytes());
    }
    for hl in [0u8, 1, 255] {
        edited(&format!("hop limit {hl}"), 7, &[hl]);
    }
    edited("version 4", 0, &[0x40]);
    edited("version 0", 0, &[0x00]);
    edited("traffic class and flow label", 0, &[0x6f, 0xff, 0xff, 0xff]);
    let chain = Ipv6 { ext: vec![d(), d()], ..h.clone() }.with_payload(proto, l4);
    v.push(("IPv6 2 dest opts, payload length inside the second".into(), edit(&chain, 4, &12u16.to_be_bytes())));
    v
}

/// Fragment sequences: a datagram cut in three, in order and not, with
/// a tiny first fragment, an overlap, and followers nobody announced.
fn fragments(f: &Flow, id: u32) -> Vec<(String, Vec<u8>)> {
    let (s, d) = (f.src, f.dst);
    let mut v = Vec::new();
    for (pname, proto, l4) in [
        ("TCP", 6u8, tcp(f, 0x18, &[], None, &[0x41; 48])),
        ("UDP", 17, udp(f, &[0x55; 48], None, false)),
        ("ICMP", if v6(f) { 58 } else { 1 }, icmp(s, d, if v6(f) { 128 } else { 8 }, 0, [0; 4], &[0x61; 48]).1),
    ] {
        let id = id + u32::from(proto);
        // (name, byte offset, end, more): first, middle, last, then the
        // shapes that must not pass on their own.
        let pieces: [(&str, usize, usize, bool); 7] = [
            ("first", 0, 24, true),
            ("middle", 24, 40, true),
            ("last", 40, l4.len(), false),
            ("overlapping at 8", 8, 32, true),
            ("tiny first (8 bytes)", 0, 8, true),
            ("zero-length first", 0, 0, true),
            ("follower of the tiny first", 16, l4.len(), false),
        ];
        for (i, (name, start, end, more)) in pieces.into_iter().enumerate() {
            // The tiny first fragment starts a datagram of its own.
            let id = if i >= 4 { id + 0x8 } else { id };
            let piece = &l4[start..end];
            let p = if v6(f) {
                v6_header(f).with(ExtHeader::Fragment { offset: (start / 8) as u16, more, id }).with_payload(proto, piece)
            } else {
                Ipv4 { id: id as u16, more_fragments: more, frag_offset: (start / 8) as u16, ..v4_header(f) }.with_payload(proto, piece)
            };
            v.push((format!("{pname} fragment {name}"), p));
        }
        let unknown = if v6(f) {
            v6_header(f).with(ExtHeader::Fragment { offset: 3, more: false, id: id + 0x4 }).with_payload(proto, &l4[24..])
        } else {
            Ipv4 { id: (id + 0x4) as u16, frag_offset: 3, ..v4_header(f) }.with_payload(proto, &l4[24..])
        };
        v.push((format!("{pname} fragment, first never sent"), unknown));
        if !v6(f) {
            let df_mf = Ipv4 { id: (id + 0x5) as u16, more_fragments: true, dont_fragment: true, ..v4_header(f) }.with_payload(proto, &l4[..24]);
            v.push((format!("{pname} first fragment with DF"), df_mf));
            let max = Ipv4 { id: (id + 0x6) as u16, frag_offset: 0x1fff, ..v4_header(f) }.with_payload(proto, &l4[..8]);
            v.push((format!("{pname} fragment at the largest offset"), max));
        } else {
            let later_dest = v6_header(f)
                .with(ExtHeader::Fragment { offset: 0, more: true, id: id + 0x6 })
                .with(ExtHeader::DestOpts(vec![]))
                .with_payload(proto, &l4[..16]);
            v.push((format!("{pname} first fragment, dest opts after the fragment header"), later_dest));
        }
    }
    v
}
