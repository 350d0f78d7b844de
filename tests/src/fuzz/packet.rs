//! One raw Ethernet frame (the whole input is the frame, so the corpus can
//! be replayed through `BPF_PROG_TEST_RUN` as it is) through the pure-Rust
//! models of every kernel decision, under the fixtures of the differential
//! tests:
//!
//! - the isolator (`lb_common::model::decide`) under
//!   [`crate::kernel::FIXTURE_CONFIG`], arriving on ifindex 1;
//! - the balancer (`lb_common::balancer_model::process`) with
//!   [`fixture_desired`]'s VIPs laid out as the daemon's writer lays them
//!   out, after [`priming_frames`] placed a few flows, arriving from either
//!   side;
//! - the DSR backend's `decap` (`decapsulate`), which must open every
//!   tunnel packet the balancer builds back into the client's packet.
//!
//! A verdict for every frame; every packet the balancer sends is well
//! formed (IP lengths inside the frame; checksums right where it built the
//! header, as right as they came where it rewrote one); its state changes
//! only when it claims a packet; a flow keeps its backend.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::OnceLock,
};

use lb_common::{
    balancer::*,
    balancer_model::{decapsulate, process, Action, Decap, Outcome, Tables},
    isolator::{counter_index, DropReason, FragVerdict, PassReason, Verdict, COUNTERS_LEN, FAMILY_V4},
    model::{self, Policy},
    proxy_protocol::{PROXY_V1, PROXY_V2},
    wire::*,
};
use crate::reference_policy::ReferencePolicy;
use lb_user::{
    datapath::balancer_writer::{build_table, Desired, DesiredBackend, DesiredRule, DesiredVip},
    datapath::maps::addr_key,
};

use crate::{
    kernel::{fixture_config, ModelFrags},
    lb_kernel::{desired_rules, with_proxy, FixtureFib, ModelTables, BACKENDS_V4, BACKENDS_V6, CLIENT_V4, CLIENT_V6, FIXTURE_TABLE_SIZE, NO_NEIGHBOUR_V4, NO_ROUTE_V4},
    rawframe::{fold, sum16, FrameBuilder, Ipv4, Ipv6, L4},
};

/// Where the isolator's frames arrive (`lo` in the fixture).
pub const ISOLATOR_IFINDEX: u32 = 1;
/// The balancer's outside interface in the model-only fixture.
pub const OUT_IFINDEX: u32 = 2;
/// The balancer's inside interface in the model-only fixture.
pub const IN_IFINDEX: u32 = 3;
/// MAC of the outside interface.
pub const OUT_MAC: [u8; 6] = [2, 0, 0, 0, 0xee, 1];
/// MAC of the inside interface.
pub const IN_MAC: [u8; 6] = [2, 0, 0, 0, 0xee, 2];
/// The edge's inside addresses (SNAT and tunnel source).
pub const INSIDE_V4: &str = "10.1.0.1";
/// The edge's inside IPv6 address.
pub const INSIDE_V6: &str = "fd00:1::1";

/// The balancer differential test's VIPs, one per (mode, family), and the
/// ones whose backends cannot be reached, have no route or none at all.
pub const VIPS: [(&str, &str); 13] = [
    ("nat4", "203.0.113.10"),
    ("dsr4", "203.0.113.11"),
    ("l2-4", "203.0.113.12"),
    ("nat6", "2001:db8:10::10"),
    ("dsr6", "2001:db8:10::11"),
    ("l2-6", "2001:db8:10::12"),
    ("no-neigh", "203.0.113.20"),
    ("no-route", "203.0.113.21"),
    ("empty", "203.0.113.22"),
    ("pp4", "203.0.113.13"),
    ("pp6", "2001:db8:10::13"),
    ("pp4v1", "203.0.113.14"),
    ("pp6v1", "2001:db8:10::14"),
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The address of VIP `name` in [`VIPS`].
pub fn vip_address(name: &str) -> IpAddr {
    ip(VIPS.iter().find(|(n, _)| *n == name).expect("a fixture VIP").1)
}

/// The balancer differential test's desired state (same VIPs, modes,
/// rules, backends and weights).
pub fn fixture_desired() -> Desired {
    let backends = |addrs: &[&str], weights: &[u32]| -> Vec<DesiredBackend> {
        addrs.iter().zip(weights).map(|(a, w)| DesiredBackend { address: ip(a), weight: *w, up: true }).collect()
    };
    let nat_rules = vec![(IPPROTO_TCP, 443, 443), (IPPROTO_TCP, 80, 8080), (IPPROTO_UDP, 53, 53)];
    let dsr_rules = vec![(IPPROTO_TCP, 443, 443), (IPPROTO_UDP, 443, 443)];
    let tls = vec![(IPPROTO_TCP, 443, 443)];
    let vip = |name: &str, mode: Mode, rules: &[(u8, u16, u16)], b: Vec<DesiredBackend>| DesiredVip {
        name: name.into(),
        address: vip_address(name),
        mode,
        rules: desired_rules(rules),
        backends: b,
        allow: Vec::new(),
        deny: Vec::new(),
    };
    Desired {
        inside_v4: INSIDE_V4.parse().ok(),
        inside_v6: INSIDE_V6.parse().ok(),
        snat_ports: (1024, 65535),
        snat_pool: Vec::new(),
        egress: vec![OUT_IFINDEX, IN_IFINDEX],
        macs: vec![(OUT_IFINDEX, OUT_MAC), (IN_IFINDEX, IN_MAC)],
        vips: vec![
            vip("nat4", Mode::Nat, &nat_rules, backends(&BACKENDS_V4, &[1, 1, 2])),
            vip("dsr4", Mode::Dsr, &dsr_rules, backends(&BACKENDS_V4[..2], &[1, 2])),
            vip("l2-4", Mode::DsrL2, &tls, backends(&BACKENDS_V4[2..], &[1])),
            vip("nat6", Mode::Nat, &nat_rules, backends(&BACKENDS_V6, &[1, 1, 1])),
            vip("dsr6", Mode::Dsr, &dsr_rules, backends(&BACKENDS_V6, &[3, 1, 1])),
            vip("l2-6", Mode::DsrL2, &tls, backends(&BACKENDS_V6[..1], &[1])),
            vip("no-neigh", Mode::Nat, &tls, backends(&[NO_NEIGHBOUR_V4], &[1])),
            vip("no-route", Mode::Dsr, &tls, backends(&[NO_ROUTE_V4], &[1])),
            vip("empty", Mode::Nat, &tls, Vec::new()),
            with_proxy(vip("pp4", Mode::Nat, &nat_rules, backends(&BACKENDS_V4, &[1, 1, 1])), PROXY_V2),
            with_proxy(vip("pp6", Mode::Nat, &nat_rules, backends(&BACKENDS_V6, &[1, 1, 1])), PROXY_V2),
            with_proxy(vip("pp4v1", Mode::Nat, &nat_rules, backends(&BACKENDS_V4, &[1, 1, 1])), PROXY_V1),
            with_proxy(vip("pp6v1", Mode::Nat, &nat_rules, backends(&BACKENDS_V6, &[1, 1, 1])), PROXY_V1),
        ],
    }
}

/// `d` in model tables, laid out as `BalancerWriter::apply` lays out a
/// fresh load: backend ids and generations in address order, the VIPs'
/// tables in listing order (first half), service stats in rule order.
pub fn offline_tables(d: &Desired, table_size: u32) -> ModelTables {
    let mut t = ModelTables::new(FixtureFib::new(OUT_IFINDEX, IN_IFINDEX, OUT_MAC, IN_MAC));
    let addresses: BTreeSet<IpAddr> = d.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect();
    let ids: HashMap<IpAddr, u32> = addresses.iter().zip(0..).map(|(a, id)| (*a, id)).collect();
    for (a, &id) in &ids {
        let (addr, family) = addr_key(*a);
        let up = d.vips.iter().flat_map(|v| &v.backends).any(|b| b.address == *a && b.up);
        t.backends.insert(id, BackendInfo { addr, generation: id + 1, family, up: u8::from(up), _pad: [0; 2] });
    }
    t.globals = Some(Globals {
        inside_v4: d.inside_v4.map_or([0; 4], |a| a.octets()),
        inside_v6: d.inside_v6.map_or([0; 16], |a| a.octets()),
        snat_port_min: d.snat_ports.0,
        snat_port_max: d.snat_ports.1,
    });
    t.maglev = vec![NO_BACKEND; lb_user::datapath::loader::maglev_map_len(table_size) as usize];
    let mut stats_index = 0;
    for (index, v) in (0..).zip(&d.vips) {
        let members: Vec<(IpAddr, u32, bool, u32)> = v.backends.iter().map(|b| (b.address, b.weight, b.up, ids[&b.address])).collect();
        let table = build_table(&members, table_size).expect("the fixture's tables build");
        let base = index * 2 * table_size;
        t.maglev[base as usize..(base + table_size) as usize].copy_from_slice(&table);
        for &DesiredRule { proto, port, target_port, proxy } in &v.rules {
            let svc = Service { table_base: base, table_size, stats_index, proxy, _pad: 0, target_port, mode: v.mode as u8, firewall: 0 };
            t.services.insert(lb_user::datapath::maps::service_key(v.address, proto, port), svc);
            stats_index += 1;
        }
    }
    t.egress = d.egress.iter().copied().collect();
    t
}

/// A client's frame as it arrives on the outside interface.
fn client_frame(src: &str, dst: IpAddr, l4: &L4) -> Vec<u8> {
    let f = FrameBuilder::new(crate::lb_kernel::neighbour_mac(ip(src)), OUT_MAC);
    match (ip(src), dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => f.ipv4(&Ipv4::new(s, d).packet(l4)),
        (IpAddr::V6(s), IpAddr::V6(d)) => f.ipv6(&Ipv6::new(s, d).packet(l4)),
        _ => panic!("mixed families"),
    }
}

/// The flows placed before each input, so that replies and ICMP errors
/// about known flows are reachable: (frame, ifindex it arrives on). A
/// kernel replay of the corpus runs these first.
pub fn priming_frames() -> Vec<(Vec<u8>, u32)> {
    let mut frames = Vec::new();
    let vips = [("nat4", CLIENT_V4), ("dsr4", CLIENT_V4), ("l2-4", CLIENT_V4), ("nat6", CLIENT_V6), ("dsr6", CLIENT_V6), ("l2-6", CLIENT_V6), ("pp4", CLIENT_V4), ("pp6", CLIENT_V6)];
    for (vip, client) in vips {
        frames.push((client_frame(client, vip_address(vip), &L4::tcp_syn(40000, 443)), OUT_IFINDEX));
    }
    for (vip, client) in [("nat4", CLIENT_V4), ("nat6", CLIENT_V6), ("dsr4", CLIENT_V4)] {
        let port = if vip == "dsr4" { 443 } else { 53 };
        frames.push((client_frame(client, vip_address(vip), &L4::udp(5353, port, b"query")), OUT_IFINDEX));
    }
    // The PROXY protocol flows' handshakes (the backend's SYN-ACK, backend
    // ISN 9; the client's ACK), so that their first data segment, which
    // gets the header, is one input away.
    let mut t = offline_tables(&fixture_desired(), FIXTURE_TABLE_SIZE);
    for (frame, ifindex) in &frames {
        process(frame, &mut vec![0; frame.len() + lb_common::balancer_model::MAX_GROWTH], *ifindex, &mut t);
    }
    let mut proxied: Vec<(NatKey, NatEntry)> = t.nat.iter().filter(|(_, e)| e.proxy_len != 0).map(|(k, e)| (*k, *e)).collect();
    proxied.sort_by_key(|(k, _)| k.family);
    for (k, e) in proxied {
        let backend = lb_user::datapath::maps::key_addr(&k.backend, k.family);
        let inside = ip(if k.family == FAMILY_V4 { INSIDE_V4 } else { INSIDE_V6 });
        let synack = L4::Tcp { sport: k.backend_port, dport: k.nat_port, seq: 9, ack: 0x1000_0001, flags: 0x12, window: 64000, payload: Vec::new() };
        frames.push((FrameBuilder::new(crate::lb_kernel::neighbour_mac(backend), IN_MAC).ip_l4(backend, inside, &synack, |_| {}, |_| {}), IN_IFINDEX));
        let client = lb_user::datapath::maps::key_addr(&e.client, k.family).to_string();
        let ack = L4::Tcp { sport: e.client_port, dport: e.vip_port, seq: 0x1000_0001, ack: 10, flags: 0x10, window: 500, payload: Vec::new() };
        frames.push((client_frame(&client, lb_user::datapath::maps::key_addr(&e.vip, k.family), &ack), OUT_IFINDEX));
    }
    frames
}

/// The tables every input starts from: [`fixture_desired`] with the
/// [`priming_frames`] placed.
pub fn primed_tables() -> &'static ModelTables {
    static TABLES: OnceLock<ModelTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = offline_tables(&fixture_desired(), FIXTURE_TABLE_SIZE);
        for (frame, ifindex) in priming_frames() {
            let mut out = vec![0; frame.len() + lb_common::balancer_model::MAX_GROWTH];
            let o = process(&frame, &mut out, ifindex, &mut t);
            assert!(matches!(o.counter, Some(LbCounter::NewFlow | LbCounter::NatReply | LbCounter::FlowHit)), "a priming frame places or answers a flow: {o:?}");
        }
        t
    })
}

/// The isolator's fixture policy as the model reads it (zone `dmz` in
/// slot 0, bound to ifindex 1).
pub fn isolator_policy() -> &'static ReferencePolicy {
    static POLICY: OnceLock<ReferencePolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let ifindexes = HashMap::from([("lo".to_string(), ISOLATOR_IFINDEX)]);
        let slots = HashMap::from([("dmz".to_string(), 0)]);
        ReferencePolicy::new(&fixture_config(), &ifindexes, &slots)
    })
}

/// The isolator fixture's host answers as the model reads them (routes
/// and impossible sources; an inside interface at a made-up ifindex).
pub fn isolator_host() -> &'static crate::kernel::FixtureHost {
    static HOST: OnceLock<crate::kernel::FixtureHost> = OnceLock::new();
    HOST.get_or_init(|| crate::kernel::FixtureHost::new(2))
}

/// The property (see the module doc).
pub fn check(frame: &[u8]) {
    check_isolator(frame);
    check_decap_any(frame);
    let tables = primed_tables();
    for ifindex in [OUT_IFINDEX, IN_IFINDEX] {
        check_balancer(frame, ifindex, tables);
    }
}

fn check_isolator(frame: &[u8]) {
    let policy = isolator_policy();
    let host = isolator_host();
    let mut frags = ModelFrags::default();
    let d = model::decide(frame, ISOLATOR_IFINDEX, policy, host, &mut frags);
    assert!(counter_index(d.verdict) < COUNTERS_LEN);
    assert_ne!(d.verdict, Verdict::Pass(PassReason::FragmentFollows), "a later fragment passed with no first fragment seen");
    if frame.len() < ETH_HLEN {
        assert_eq!(d.verdict, Verdict::Pass(PassReason::NotIp));
    }
    match d.protected_port {
        Some(k) => {
            assert!(k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP);
            assert_ne!(policy.port_access(0, k.proto, k.port), 0, "{}/{} counted as protected", k.proto, k.port);
            assert!(
                matches!(
                    d.verdict,
                    Verdict::Pass(PassReason::Allowed)
                        | Verdict::Drop(DropReason::ProtectedPort | DropReason::ReversePath | DropReason::ReversePathUnverified)
                ),
                "{d:?}"
            );
        }
        None => assert!(!matches!(d.verdict, Verdict::Pass(PassReason::Allowed) | Verdict::Drop(DropReason::ProtectedPort)), "{d:?}"),
    }
    // An impossible source is dropped as such whatever else the frame
    // holds, and nothing else is: the source decides, not the port.
    let judged_by_source = !matches!(
        d.verdict,
        Verdict::Pass(PassReason::NoZone | PassReason::NotIp) | Verdict::Drop(DropReason::Malformed | DropReason::VlanTooDeep)
    );
    if let Some(src) = ip_source(frame).filter(|_| judged_by_source) {
        let impossible = host.rules.lookup(ISOLATOR_IFINDEX, src.0, &src.1).is_some();
        assert_eq!(d.verdict == Verdict::Drop(DropReason::ImpossibleSource), impossible, "{d:?} for source {src:?}");
    }
    // A source the zone does not trust never reaches the FIB: its packets
    // are judged the same with the routes gone.
    if !matches!(d.verdict, Verdict::Pass(PassReason::Allowed)) {
        let mut no_routes = host.clone();
        no_routes.forwarding_off = true;
        let again = model::decide(frame, ISOLATOR_IFINDEX, policy, &no_routes, &mut ModelFrags::default()).verdict;
        if again != d.verdict {
            assert!(
                matches!(d.verdict, Verdict::Drop(DropReason::ReversePath)) && again == Verdict::Drop(DropReason::ReversePathUnverified)
                    || matches!(d.verdict, Verdict::Pass(PassReason::OtherProtocol | PassReason::Unprotected))
                        && again == Verdict::Drop(DropReason::ReversePathUnverified),
                "{:?} turned into {again:?} without routes",
                d.verdict
            );
        }
    } else {
        let mut no_routes = host.clone();
        no_routes.forwarding_off = true;
        let again = model::decide(frame, ISOLATOR_IFINDEX, policy, &no_routes, &mut ModelFrags::default()).verdict;
        assert_eq!(again, Verdict::Drop(DropReason::ReversePathUnverified), "a trusted source passed without a route back");
    }
    let remembered = if d.verdict.is_drop() { FragVerdict::Drop } else { FragVerdict::Pass };
    assert!(frags.0.len() <= 1 && frags.0.values().all(|v| v.verdict == remembered), "remembered {:?} for {:?}", frags.0, d.verdict);
    // The same frame again (a duplicated first fragment): the same verdict.
    assert_eq!(model::decide(frame, ISOLATOR_IFINDEX, policy, host, &mut frags), d, "a second copy judged differently");
    let unbound = model::decide(frame, 99, policy, host, &mut ModelFrags::default());
    assert_eq!(unbound.verdict, Verdict::Pass(PassReason::NoZone));
}

/// Drops decided before a backend is chosen: no flow is placed, no SNAT
/// port taken, no NAT entry marked.
const REFUSED: [LbCounter; 4] = [LbCounter::Unbalanceable, LbCounter::Malformed, LbCounter::NoBackend, LbCounter::SnatExhausted];

fn check_balancer(frame: &[u8], ifindex: u32, base: &ModelTables) {
    let mut t = base.clone();
    let mut out = vec![0u8; frame.len() + lb_common::balancer_model::MAX_GROWTH];
    let o = process(frame, &mut out, ifindex, &mut t);
    let sent = &out[..o.len];
    match o.action {
        Action::NextStage => {
            assert!(matches!(o.counter, None | Some(LbCounter::IcmpUnmatched)), "{o:?}");
            assert_eq!(o.len, 0);
        }
        Action::Pass => assert!(matches!(o.counter, Some(LbCounter::TtlExpired | LbCounter::OtherHost)), "{o:?}"),
        Action::Drop => assert!(o.counter.is_some_and(LbCounter::is_drop), "{o:?}"),
        Action::Tx | Action::Redirect(_) => {
            if let Action::Redirect(oif) = o.action {
                assert!(oif != ifindex && t.is_egress(oif), "redirected to {oif}");
            }
            // The most a packet grows: a PROXY protocol v2 header over IPv6.
            assert!(o.len >= ETH_HLEN + IPV4_MIN_HLEN && o.len <= frame.len() + lb_common::balancer_model::MAX_GROWTH, "{} bytes sent for {}", o.len, frame.len());
            check_sent(frame, sent, &o, &t);
        }
    }
    if o.charged.is_some() {
        assert!(matches!(o.action, Action::Tx | Action::Redirect(_)), "charged without sending: {o:?}");
    }
    // Rule 2a: a frame to another MAC is never the balancer's to act on.
    let mac = t.interface_mac(ifindex);
    if mac.known != 0 && frame.get(..6) != Some(&mac.mac[..]) {
        assert!(matches!(o.action, Action::NextStage | Action::Pass), "a frame to another MAC acted on: {o:?}");
    } else {
        assert_ne!(o.counter, Some(LbCounter::OtherHost), "a frame to the interface's MAC passed as another host's");
    }
    if matches!(o.action, Action::NextStage | Action::Pass) || o.counter.is_some_and(|c| REFUSED.contains(&c)) {
        // A refused SYN or moved flow may forget its stale entry; nothing
        // is added or changed.
        assert!(t.flows.iter().all(|(k, e)| base.flows.get(k) == Some(e)), "the flow table gained or changed an entry on {o:?}");
        assert!(t.nat == base.nat, "the NAT table changed on {o:?}");
    }
    // The same packet again: a new flow is now a known one (a SYN opens a
    // new connection again), with the same backend and the same bytes;
    // anything else repeats exactly — but for the second counter: the
    // first packet may have proved the flow or taught the entry its
    // window, which the repeat finds done.
    let mut again = vec![0u8; frame.len() + lb_common::balancer_model::MAX_GROWTH];
    let o2 = process(frame, &mut again, ifindex, &mut t);
    let want = if o.counter == Some(LbCounter::NewFlow) && !opens_connection_frame(frame) {
        Outcome { counter: Some(LbCounter::FlowHit), ..o }
    } else {
        o
    };
    assert_eq!(Outcome { extra: None, ..o2 }, Outcome { moved: false, extra: None, ..want }, "a repeated packet");
    assert_eq!(&again[..o2.len], sent, "a repeated packet sent differently");
}

/// Whether `frame` is a TCP SYN without ACK (rule 5's new connection),
/// its TCP header found as the balancer model finds it: after IPv4's IHL or
/// IPv6's fixed header.
fn opens_connection_frame(frame: &[u8]) -> bool {
    let Some(h) = ip_header(frame) else { return false };
    h.proto == IPPROTO_TCP && frame.get(ETH_HLEN + h.hlen + offset::TCP_FLAGS).is_some_and(|&f| opens_connection(f))
}

/// The IP header right after the Ethernet header.
struct IpHeader {
    family: u8,
    /// Header length (IPv4 with options; IPv6's fixed 40).
    hlen: usize,
    /// IP packet length per the header.
    total: usize,
    /// Protocol / next header.
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// `f`'s IP header; `None` when malformed or not IP.
fn ip_header(f: &[u8]) -> Option<IpHeader> {
    let l3 = f.get(ETH_HLEN..)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
        ETH_P_IPV4 => {
            let hlen = usize::from(*l3.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*l3.get(2)?, *l3.get(3)?]));
            if l3[0] >> 4 != 4 || hlen < IPV4_MIN_HLEN || total < hlen || total > l3.len() {
                return None;
            }
            src[..4].copy_from_slice(&l3[12..16]);
            dst[..4].copy_from_slice(&l3[16..20]);
            Some(IpHeader { family: FAMILY_V4, hlen, total, proto: l3[9], src, dst })
        }
        ETH_P_IPV6 => {
            if l3.len() < IPV6_HLEN || l3[0] >> 4 != 6 {
                return None;
            }
            let total = IPV6_HLEN + usize::from(u16::from_be_bytes([l3[4], l3[5]]));
            if total > l3.len() {
                return None;
            }
            src.copy_from_slice(&l3[8..24]);
            dst.copy_from_slice(&l3[24..40]);
            Some(IpHeader { family: lb_common::wire::FAMILY_V6, hlen: IPV6_HLEN, total, proto: l3[6], src, dst })
        }
        _ => None,
    }
}

/// Is the IPv4 header checksum of `f` right?
fn ipv4_header_ok(f: &[u8], ihl: usize) -> bool {
    fold(sum16(&f[ETH_HLEN..ETH_HLEN + ihl], 0)) == 0
}

/// Is the checksum of the upper-layer message (TCP, UDP, ICMP, ICMPv6)
/// right? `None` for a UDP/IPv4 datagram without a checksum.
fn l4_ok(f: &[u8]) -> Option<bool> {
    let IpHeader { family, hlen, total, proto, src, dst } = ip_header(f)?;
    let msg = &f[ETH_HLEN + hlen..ETH_HLEN + total];
    let n = if family == FAMILY_V4 { 4 } else { 16 };
    let pseudo = |acc: u32| sum16(&src[..n], sum16(&dst[..n], acc)) + u32::from(proto) + msg.len() as u32;
    match proto {
        IPPROTO_UDP if family == FAMILY_V4 && msg.get(6..8) == Some(&[0, 0]) => None,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => Some(fold(sum16(msg, pseudo(0))) == 0),
        IPPROTO_ICMP => Some(fold(sum16(msg, 0)) == 0),
        _ => None,
    }
}

/// A sent packet is well formed and what the counter says it is.
fn check_sent(frame: &[u8], sent: &[u8], o: &Outcome, t: &ModelTables) {
    let IpHeader { family, hlen, proto, src, dst, .. } = ip_header(sent).unwrap_or_else(|| panic!("{o:?}: sent a malformed IP packet {sent:02x?}"));
    let IpHeader { family: in_family, hlen: in_hlen, src: in_src, dst: in_dst, .. } =
        ip_header(frame).expect("a packet the balancer sent came in well formed");
    assert_eq!(family, in_family, "{o:?}: the family changed");
    let globals = t.globals.unwrap();
    let inside = if family == FAMILY_V4 { v4_key(globals.inside_v4) } else { globals.inside_v6 };
    let header_ok = family != FAMILY_V4 || ipv4_header_ok(sent, hlen);
    let in_header_ok = in_family != FAMILY_V4 || ipv4_header_ok(frame, in_hlen);
    let hop = |f: &[u8]| if family == FAMILY_V4 { f[ETH_HLEN + 8] } else { f[ETH_HLEN + 7] };
    let service = |key: &ServiceKey| t.services.get(key).copied();
    match o.counter {
        Some(LbCounter::IcmpTooBigSent) => {
            // From the VIP back to the client, built here: every checksum right.
            assert_eq!((src, dst), (in_dst, in_src), "a too-big error not from the VIP to the client");
            assert!(header_ok && l4_ok(sent) == Some(true), "a too-big error with a bad checksum: {sent:02x?}");
            assert_eq!(proto, if family == FAMILY_V4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 });
        }
        Some(LbCounter::NewFlow | LbCounter::FlowHit) => {
            let (charged_stats, id) = o.charged.expect("a forwarded packet is charged");
            let backend = t.backends[&id];
            let key = ServiceKey { addr: in_dst, port: u16::from_be_bytes([frame[ETH_HLEN + in_hlen + 2], frame[ETH_HLEN + in_hlen + 3]]), proto: frame[ETH_HLEN + if family == FAMILY_V4 { 9 } else { 6 }], family };
            let svc = service(&key).expect("forwarded to a service");
            assert_eq!(u32::from(svc.stats_index), charged_stats);
            let table = &t.maglev[svc.table_base as usize..(svc.table_base + svc.table_size) as usize];
            assert!(table.contains(&id), "backend {id} is not in the VIP's table");
            match Mode::from_raw(svc.mode).unwrap() {
                Mode::Nat => {
                    assert_eq!((src, dst), (inside, backend.addr), "NAT addresses");
                    let l4 = ETH_HLEN + hlen;
                    assert_eq!(u16::from_be_bytes([sent[l4 + 2], sent[l4 + 3]]), svc.target_port);
                    assert_eq!(hop(sent), hop(frame) - 1, "TTL");
                    assert_eq!(header_ok, in_header_ok, "the IPv4 header checksum's rightness changed");
                    assert_eq!(l4_ok(sent), l4_ok(frame), "the L4 checksum's rightness changed: {frame:02x?} → {sent:02x?}");
                }
                Mode::Dsr => {
                    let outer = if family == FAMILY_V4 { IPV4_MIN_HLEN } else { IPV6_HLEN };
                    assert_eq!((src, dst), (inside, backend.addr), "tunnel addresses");
                    assert_eq!(proto, if family == FAMILY_V4 { IPPROTO_IPIP } else { IPPROTO_IPV6 });
                    assert!(header_ok, "a tunnel header with a bad checksum");
                    assert_eq!(&sent[ETH_HLEN + outer..], &frame[ETH_HLEN..], "the tunnelled packet changed");
                    check_decap(frame, sent, inside, in_dst, family);
                }
                Mode::DsrL2 => assert_eq!(&sent[12..], &frame[12..], "dsr-l2 changed more than the MACs"),
            }
        }
        Some(LbCounter::NatReply) => {
            // A client may have flows to several VIPs.
            assert!(t.nat.values().any(|e| e.client == dst && e.vip == src), "a reply not from the VIP of one of the client's flows");
            assert_eq!(in_dst, inside);
            assert_eq!(hop(sent), hop(frame) - 1, "TTL");
            assert_eq!(header_ok, in_header_ok, "the IPv4 header checksum's rightness changed");
            assert_eq!(l4_ok(sent), l4_ok(frame), "the L4 checksum's rightness changed: {frame:02x?} → {sent:02x?}");
        }
        Some(LbCounter::IcmpForwarded) => {
            assert!(header_ok || !in_header_ok, "a forwarded ICMP error's IP checksum broke");
            if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
                assert_eq!(l4_ok(sent), l4_ok(frame), "the ICMP checksum's rightness changed: {frame:02x?} → {sent:02x?}");
            }
        }
        other => panic!("sent with counter {other:?}: {o:?}"),
    }
}

/// The DSR backend opens the tunnel packet back into the client's packet.
fn check_decap(frame: &[u8], sent: &[u8], inside: [u8; 16], vip: [u8; 16], family: u8) {
    let mut out = vec![0u8; sent.len()];
    let allowed = |k: &DecapKey| k.family == family && k.outer_src == inside && k.inner_dst == vip;
    match decapsulate(sent, &mut out, allowed) {
        Decap::Opened { len } => {
            assert_eq!(&out[12..len], &frame[12..], "decap did not give back the client's packet");
            assert_eq!(&out[..12], &sent[..12]);
        }
        other => panic!("the backend's decap refused the balancer's tunnel packet: {other:?}"),
    }
    // Nobody else's tunnel is opened.
    assert!(!matches!(decapsulate(sent, &mut out, |_| false), Decap::Opened { .. }));
}

/// Any frame through the backend's `decap`, which accepts the fixture
/// edge's tunnels to its DSR VIPs: what it opens is the frame without the
/// outer header.
fn check_decap_any(frame: &[u8]) {
    let tunnels: Vec<DecapKey> = ["dsr4", "dsr6"]
        .iter()
        .map(|v| {
            let (inner_dst, family) = addr_key(vip_address(v));
            let outer_src = addr_key(ip(if family == FAMILY_V4 { INSIDE_V4 } else { INSIDE_V6 })).0;
            DecapKey { outer_src, inner_dst, family, _pad: [0; 3] }
        })
        .collect();
    let mut out = vec![0u8; frame.len()];
    if let Decap::Opened { len } = decapsulate(frame, &mut out, |k| tunnels.contains(k)) {
        let outer = frame.len() - len;
        assert!(outer == IPV4_MIN_HLEN || outer == IPV6_HLEN, "decap took off {outer} bytes");
        assert_eq!(&out[..12], &frame[..12]);
        assert_eq!(&out[14..len], &frame[ETH_HLEN + outer..]);
    }
}

/// (family, source address) of a frame's IP header after up to
/// `MAX_VLAN_DEPTH` tags, if the frame is long enough to hold one.
fn ip_source(frame: &[u8]) -> Option<(u8, [u8; 16])> {
    let mut off = ETH_HLEN;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    while is_vlan_ethertype(ethertype) {
        ethertype = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
        off += VLAN_HLEN;
    }
    let mut a = [0u8; 16];
    match ethertype {
        ETH_P_IPV4 => {
            a[..4].copy_from_slice(frame.get(off + 12..off + 16)?);
            Some((lb_common::wire::FAMILY_V4, a))
        }
        ETH_P_IPV6 => {
            a.copy_from_slice(frame.get(off + 8..off + 24)?);
            Some((lb_common::wire::FAMILY_V6, a))
        }
        _ => None,
    }
}
