//! The balancer in the kernel (BPF_PROG_TEST_RUN) against its pure-Rust
//! model (`lb_common::balancer_model`): hand-written fixtures whose output
//! packets are also built independently with the harness's frame builders,
//! and a differential run over random flows and mutated packets that must
//! agree on the action, every output byte, the flow and NAT tables and
//! every counter — and never return XDP_ABORTED.

use std::{
    collections::HashMap,
    net::IpAddr,
};

use rand::{rngs::StdRng, seq::SliceRandom, Rng as _, SeedableRng};
use harness::{
    xdp_action::*,
    lb_kernel::*,
    rawframe::{checksum, fold, sum16, FrameBuilder, Ipv4, Ipv6, L4},
    root_or_skip,
};
use lb_common::{
    balancer::*,
    balancer_model::{process, Action, Outcome},
    maglev::flow_hash,
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};
use lb_user::datapath::{
    balancer_writer::{Desired, DesiredBackend},
    maps::addr_key,
};


fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn desired() -> Desired {
    fixture_desired()
}

fn client_frame(kb: &KernelBalancer, src: &str, dst: &str, l4: &L4) -> Vec<u8> {
    let f = FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), kb.net.out_mac);
    ip_frame(&f, src, dst, l4, |_| {}, |_| {})
}

/// A packet from `src` (a host on the inside segment) to `dst`, to the
/// inside interface's MAC.
fn inside_frame(kb: &KernelBalancer, src: &str, dst: &str, l4: &L4) -> Vec<u8> {
    let f = FrameBuilder::new(neighbour_mac(ip(src)), kb.net.in_mac);
    ip_frame(&f, src, dst, l4, |_| {}, |_| {})
}

fn ip_frame(f: &FrameBuilder, src: &str, dst: &str, l4: &L4, v4: impl Fn(&mut Ipv4), v6: impl Fn(&mut Ipv6)) -> Vec<u8> {
    f.ip_l4(ip(src), ip(dst), l4, v4, v6)
}

/// Runs `frame` through kernel and model; asserts they agree and returns
/// the model's outcome and the kernel's output packet.
fn both(kb: &mut KernelBalancer, model: &mut ModelTables, frame: &[u8], ifindex: u32) -> (Outcome, Vec<u8>) {
    let (action, out) = kb.run(frame, ifindex);
    let mut buf = vec![0u8; frame.len() + lb_common::balancer_model::MAX_GROWTH];
    let o = process(frame, &mut buf, ifindex, model);
    assert_ne!(action, XDP_ABORTED, "XDP_ABORTED on {frame:02x?}");
    assert_eq!(action, action_code(o.action), "action for {frame:02x?}: model {o:?}");
    if matches!(o.action, Action::Tx | Action::Redirect(_)) {
        assert_eq!(out, buf[..o.len].to_vec(), "output packet for {frame:02x?}");
    }
    (o, out)
}

/// Where the kernel sends a flow: the flow table's entry for a remembered
/// flow; for one it has not remembered (a SYN, an unproven `nat` flow),
/// the backend its VIP's Maglev table picks and the SNAT port of its NAT
/// entry (0 without one).
fn flow_of(kb: &KernelBalancer, src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> FlowEntry {
    let (s, family) = addr_key(ip(src));
    let key = FlowKey { src: s, dst: addr_key(ip(dst)).0, src_port: sport, dst_port: dport, proto, family, _pad: [0; 2] };
    let maps = kb.maps();
    if let Ok(f) = maps.flows.get(&key, 0) {
        return f;
    }
    let svc = maps.services.get(&ServiceKey { addr: key.dst, port: dport, proto, family }, 0).expect("a service");
    let h = flow_hash(&key.src, &key.dst, sport, dport, proto, BACKEND_HASH_SEED);
    let backend = maps.maglev.get(&(svc.table_base + h % svc.table_size), 0).expect("a table slot");
    let b = maps.backends.get(&backend, 0).unwrap();
    let nat_port = maps
        .nat
        .iter()
        .filter_map(Result::ok)
        .find(|(k, e)| k.backend == b.addr && e.client == key.src && e.client_port == sport && e.vip == key.dst && e.vip_port == dport && k.proto == proto)
        .map_or((0, 0), |(k, _)| (k.nat_port, k.snat));
    FlowEntry { backend, generation: b.generation, nat_port: nat_port.0, snat: nat_port.1, ..FlowEntry::default() }
}

/// Completes a `nat` flow's handshake after its SYN: the backend's SYN-ACK
/// (ISN 99) and the client's ACK of it, which proves the flow; through
/// kernel and model, tallied into `m`.
fn prove(kb: &mut KernelBalancer, model: &mut ModelTables, m: &mut [u64], (client, sport): (&str, u16), vip: &str) {
    let flow = flow_of(kb, client, sport, vip, 443, IPPROTO_TCP);
    let backend = backend_addr(kb, flow.backend);
    let inside = if backend.is_ipv4() { "10.1.0.1" } else { "fd00:1::1" };
    let synack = L4::Tcp { sport: 443, dport: flow.nat_port, seq: 99, ack: 0x1000_0001, flags: 0x12, window: 1000, payload: Vec::new() };
    let frame = ip_frame(&FrameBuilder::new(neighbour_mac(backend), kb.net.in_mac), &backend.to_string(), inside, &synack, |_| {}, |_| {});
    let in_if = kb.net.in_ifindex;
    let (o, _) = both(kb, model, &frame, in_if);
    tally(m, &o);
    assert_eq!(o.counter, Some(LbCounter::NatReply));
    let ack = L4::Tcp { sport, dport: 443, seq: 0x1000_0001, ack: 100, flags: 0x10, window: 1000, payload: Vec::new() };
    let frame = client_frame(kb, client, vip, &ack);
    let out_if = kb.net.out_ifindex;
    let (o, _) = both(kb, model, &frame, out_if);
    tally(m, &o);
    assert_eq!((o.counter, o.extra), (Some(LbCounter::FlowHit), Some(LbCounter::FlowProven)), "the ACK of the SYN-ACK proves the flow");
    assert!(remembered(kb, client, sport, vip, 443, IPPROTO_TCP));
}

/// Whether the kernel's flow table remembers the flow.
fn remembered(kb: &KernelBalancer, src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> bool {
    let (s, family) = addr_key(ip(src));
    let key = FlowKey { src: s, dst: addr_key(ip(dst)).0, src_port: sport, dst_port: dport, proto, family, _pad: [0; 2] };
    kb.maps().flows.get(&key, 0).is_ok()
}

fn backend_addr(kb: &KernelBalancer, id: u32) -> IpAddr {
    let b = kb.maps().backends.get(&id, 0).unwrap();
    lb_user::datapath::maps::key_addr(&b.addr, b.family)
}

/// One fixture scenario: a kernel balancer and its model on the same
/// desired state, and the counters the model says the kernel must have
/// moved by; [`Fixture::finish`] holds the kernel to them.
struct Fixture {
    kb: KernelBalancer,
    model: ModelTables,
    /// The model's counter deltas.
    m: Vec<u64>,
    /// The kernel's counters at the start.
    before: Vec<u64>,
    out_if: u32,
    in_if: u32,
}

impl Fixture {
    /// The scenario's lab, `tag` naming its namespaces; `None` when not
    /// root (the test passes, skipped).
    fn new(tag: &str) -> Option<Self> {
        Self::with(tag, &desired())
    }

    /// [`Fixture::new`] on the desired state `d`.
    fn with(tag: &str, d: &Desired) -> Option<Self> {
        if !root_or_skip() {
            return None;
        }
        let mut kb = KernelBalancer::new(tag);
        kb.apply(d);
        let (out_if, in_if) = (kb.net.out_ifindex, kb.net.in_ifindex);
        let model = kb.model();
        let before = kb.maps().counters().unwrap();
        Some(Self { kb, model, m: model_counters(), before, out_if, in_if })
    }

    /// `frame` arriving on `ifindex`, through kernel and model (which must
    /// agree), tallied.
    fn run(&mut self, frame: &[u8], ifindex: u32) -> (Outcome, Vec<u8>) {
        let (o, out) = both(&mut self.kb, &mut self.model, frame, ifindex);
        tally(&mut self.m, &o);
        (o, out)
    }

    /// A client's packet to `vip`, arriving on the outside.
    fn client_sends(&mut self, client: &str, vip: &str, l4: &L4) -> (Outcome, Vec<u8>) {
        let frame = client_frame(&self.kb, client, vip, l4);
        self.run(&frame, self.out_if)
    }

    /// The kernel's counters moved exactly as the model's.
    fn finish(self) {
        let after = self.kb.maps().counters().unwrap();
        let delta: Vec<u64> = after.iter().zip(&self.before).map(|(a, b)| a - b).collect();
        assert_eq!(delta, self.m, "kernel counters vs model");
    }
}

/// NAT, IPv4: client → VIP:443 becomes edge:port → backend:443 (output
/// built independently), the backend's reply goes back from the VIP, and
/// the client's ACK of it proves the flow.
#[test]
fn nat_ipv4_rewrites_a_flow_both_ways() {
    let Some(mut fx) = Fixture::new("lbfxnat4") else { return };
    let syn = L4::tcp_syn(40000, 443);
    let (o, out) = fx.client_sends(CLIENT_V4, NAT4, &syn);
    assert_eq!(o.action, Action::Redirect(fx.in_if));
    let flow = flow_of(&fx.kb, CLIENT_V4, 40000, NAT4, 443, IPPROTO_TCP);
    let backend = backend_addr(&fx.kb, flow.backend);
    assert!(flow.nat_port >= 1024);
    let expected = {
        let f = FrameBuilder::new(fx.kb.net.in_mac, neighbour_mac(backend));
        let mut h = Ipv4::new("10.1.0.1".parse().unwrap(), backend.to_string().parse().unwrap());
        h.ttl = 63;
        f.ipv4(&h.packet(&L4::tcp_syn(flow.nat_port, 443)))
    };
    assert_eq!(out, expected, "NAT rewrite of a SYN, checksums computed independently");

    // The SYN again (a retransmission, or a new connection on the same
    // port): placed by the table again, the same backend and SNAT port.
    let (o, out2) = fx.client_sends(CLIENT_V4, NAT4, &syn);
    assert_eq!(o.counter, Some(LbCounter::NewFlow));
    assert_eq!(out2, expected);
    // The connection's next packet: a hit, no new flow.
    let (o, _) = fx.client_sends(CLIENT_V4, NAT4, &L4::tcp_ack(40000, 443, &[]));
    assert_eq!(o.counter, Some(LbCounter::FlowHit));

    // The backend's reply goes back to the client, from the VIP.
    let reply = L4::Tcp { sport: 443, dport: flow.nat_port, seq: 7, ack: 0x1000_0001, flags: 0x12, window: 1000, payload: Vec::new() };
    let f = FrameBuilder::new(neighbour_mac(backend), fx.kb.net.in_mac);
    let frame = ip_frame(&f, &backend.to_string(), "10.1.0.1", &reply, |_| {}, |_| {});
    let (o, out) = fx.run(&frame, fx.in_if);
    assert_eq!((o.action, o.counter), (Action::Redirect(fx.out_if), Some(LbCounter::NatReply)));
    let expected = {
        let f = FrameBuilder::new(fx.kb.net.out_mac, neighbour_mac(ip(CLIENT_V4)));
        let mut h = Ipv4::new(NAT4.parse().unwrap(), CLIENT_V4.parse().unwrap());
        h.ttl = 63;
        let back = L4::Tcp { sport: 443, dport: 40000, seq: 7, ack: 0x1000_0001, flags: 0x12, window: 1000, payload: Vec::new() };
        f.ipv4(&h.packet(&back))
    };
    assert_eq!(out, expected, "reverse NAT");
    // The client's ACK of the SYN-ACK proves the flow: now remembered.
    assert!(!remembered(&fx.kb, CLIENT_V4, 40000, NAT4, 443, IPPROTO_TCP), "an unproven flow is not remembered");
    let ack = L4::Tcp { sport: 40000, dport: 443, seq: 0x1000_0001, ack: 8, flags: 0x10, window: 1000, payload: Vec::new() };
    let (o, _) = fx.client_sends(CLIENT_V4, NAT4, &ack);
    assert_eq!((o.counter, o.extra), (Some(LbCounter::FlowHit), Some(LbCounter::FlowProven)));
    assert!(remembered(&fx.kb, CLIENT_V4, 40000, NAT4, 443, IPPROTO_TCP));
    fx.finish();
}

/// Port 80 → target 8080; UDP with a checksum and with none (zero stays zero).
#[test]
fn nat_rules_change_the_port_and_keep_a_zero_udp_checksum() {
    let Some(mut fx) = Fixture::new("lbfxport") else { return };
    let (_, out) = fx.client_sends(CLIENT_V4, NAT4, &L4::tcp_syn(40001, 80));
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8080);
    fx.client_sends(CLIENT_V4, NAT4, &L4::udp(5353, 53, b"query"));
    let mut zero = client_frame(&fx.kb, CLIENT_V4, NAT4, &L4::udp(5354, 53, b"query"));
    zero[40] = 0;
    zero[41] = 0;
    let (_, out) = fx.run(&zero, fx.out_if);
    assert_eq!(&out[40..42], &[0, 0], "a zero UDP checksum stays zero");
    fx.finish();
}

/// DSR: the packet is wrapped, untouched, in IPIP (IPv4) or IPv6-in-IPv6
/// to the backend; no SNAT port.
#[test]
fn dsr_wraps_the_packet_in_ipip_and_ipv6_in_ipv6() {
    let Some(mut fx) = Fixture::new("lbfxdsr") else { return };
    let syn = L4::tcp_syn(40000, 443);
    let frame = client_frame(&fx.kb, CLIENT_V4, DSR4, &syn);
    let (o, out) = fx.run(&frame, fx.out_if);
    let flow = flow_of(&fx.kb, CLIENT_V4, 40000, DSR4, 443, IPPROTO_TCP);
    let backend = backend_addr(&fx.kb, flow.backend);
    let expected = {
        let f = FrameBuilder::new(fx.kb.net.in_mac, neighbour_mac(backend));
        let mut outer = Ipv4::new("10.1.0.1".parse().unwrap(), backend.to_string().parse().unwrap());
        outer.id = 0;
        f.ipv4(&outer.with_payload(4, &frame[14..]))
    };
    assert_eq!((o.action, flow.nat_port), (Action::Redirect(fx.in_if), 0));
    assert_eq!(out, expected, "IPIP encapsulation");

    let frame = client_frame(&fx.kb, CLIENT_V6, DSR6, &syn);
    let (_, out) = fx.run(&frame, fx.out_if);
    let flow = flow_of(&fx.kb, CLIENT_V6, 40000, DSR6, 443, IPPROTO_TCP);
    let backend = backend_addr(&fx.kb, flow.backend);
    let expected = {
        let f = FrameBuilder::new(fx.kb.net.in_mac, neighbour_mac(backend));
        let outer = Ipv6::new("fd00:1::1".parse().unwrap(), backend.to_string().parse().unwrap());
        f.ipv6(&outer.with_payload(41, &frame[14..]))
    };
    assert_eq!(out, expected, "IPv6-in-IPv6 encapsulation");
    fx.finish();
}

/// DSR-L2: only the MACs change.
#[test]
fn dsr_l2_changes_only_the_macs() {
    let Some(mut fx) = Fixture::new("lbfxl2") else { return };
    for (client, vip) in [(CLIENT_V4, L2_4), (CLIENT_V6, L2_6)] {
        let frame = client_frame(&fx.kb, client, vip, &L4::tcp_syn(40000, 443));
        let (_, out) = fx.run(&frame, fx.out_if);
        let backend = backend_addr(&fx.kb, flow_of(&fx.kb, client, 40000, vip, 443, IPPROTO_TCP).backend);
        assert_eq!(&out[14..], &frame[14..]);
        assert_eq!(&out[..12], &[neighbour_mac(backend), fx.kb.net.in_mac].concat()[..]);
    }
    fx.finish();
}

/// NAT, IPv6, both ways.
#[test]
fn nat_ipv6_rewrites_a_flow_both_ways() {
    let Some(mut fx) = Fixture::new("lbfxnat6") else { return };
    let (_, out) = fx.client_sends(CLIENT_V6, NAT6, &L4::tcp_syn(40000, 443));
    let flow = flow_of(&fx.kb, CLIENT_V6, 40000, NAT6, 443, IPPROTO_TCP);
    let backend = backend_addr(&fx.kb, flow.backend);
    let expected = {
        let f = FrameBuilder::new(fx.kb.net.in_mac, neighbour_mac(backend));
        let mut h = Ipv6::new("fd00:1::1".parse().unwrap(), backend.to_string().parse().unwrap());
        h.hop_limit = 63;
        f.ipv6(&h.packet(&L4::tcp_syn(flow.nat_port, 443)))
    };
    assert_eq!(out, expected, "IPv6 NAT");
    let f = FrameBuilder::new(neighbour_mac(backend), fx.kb.net.in_mac);
    let frame = ip_frame(&f, &backend.to_string(), "fd00:1::1", &reply_to(flow.nat_port), |_| {}, |_| {});
    let (o, _) = fx.run(&frame, fx.in_if);
    assert_eq!(o.counter, Some(LbCounter::NatReply));
    fx.finish();
}

/// One-armed: a VIP packet arriving on the inside leaves by XDP_TX.
#[test]
fn a_vip_packet_on_the_inside_leaves_by_tx() {
    let Some(mut fx) = Fixture::new("lbfxtx") else { return };
    let frame = inside_frame(&fx.kb, "10.1.0.50", NAT4, &L4::tcp_syn(41000, 443));
    let (o, _) = fx.run(&frame, fx.in_if);
    assert_eq!(o.action, Action::Tx);
    fx.finish();
}

/// Drops and passes, each counted; what passes, passes unchanged.
#[test]
fn drops_and_passes_are_counted() {
    let Some(mut fx) = Fixture::new("lbfxdrop") else { return };
    let kb = &fx.kb;
    let syn = L4::tcp_syn(40000, 443);
    let outside = FrameBuilder::new([2; 6], kb.net.out_mac);
    let full_segment = L4::Tcp { sport: 40002, dport: 443, seq: 1, ack: 1, flags: 0x10, window: 1, payload: vec![0; 1460] };
    // One named case per scenario: (name, frame, action, counter).
    let cases: Vec<(&str, Vec<u8>, Action, Option<LbCounter>)> = vec![
        ("backend without a neighbour entry", client_frame(kb, CLIENT_V4, NO_NEIGH_VIP, &syn), Action::Drop, Some(LbCounter::NoNeighbour)),
        ("backend without a route", client_frame(kb, CLIENT_V4, NO_ROUTE_VIP, &syn), Action::Drop, Some(LbCounter::NoRoute)),
        ("VIP without backends", client_frame(kb, CLIENT_V4, EMPTY_VIP, &syn), Action::Drop, Some(LbCounter::NoBackend)),
        ("VIP address, port without a rule", client_frame(kb, CLIENT_V4, NAT4, &L4::tcp_syn(40000, 8443)), Action::NextStage, None),
        ("to a backend, not a VIP", client_frame(kb, CLIENT_V4, "10.1.0.11", &syn), Action::NextStage, None),
        ("to the edge itself", client_frame(kb, CLIENT_V4, "10.1.0.1", &syn), Action::NextStage, None),
        ("TTL 1", ip_frame(&outside, CLIENT_V4, NAT4, &syn, |h| h.ttl = 1, |_| {}), Action::Pass, Some(LbCounter::TtlExpired)),
        ("first fragment", ip_frame(&outside, CLIENT_V4, NAT4, &syn, |h| h.more_fragments = true, |_| {}), Action::Drop, Some(LbCounter::Unbalanceable)),
        ("truncated TCP header", client_frame(kb, CLIENT_V4, NAT4, &syn)[..50].to_vec(), Action::Drop, Some(LbCounter::Malformed)),
        ("too big for the DSR tunnel, DF clear", client_frame(kb, CLIENT_V4, DSR4, &full_segment), Action::Drop, Some(LbCounter::TooBig)),
    ];
    for (name, frame, action, counter) in &cases {
        let (o, out) = fx.run(frame, fx.out_if);
        assert_eq!((o.action, o.counter), (*action, *counter), "{name}");
        if o.action != Action::Drop {
            assert_eq!(&out, frame, "{name}: passed unchanged");
        }
    }
    fx.finish();
}

/// With DF set, a packet too big for the tunnel is answered with the MTU
/// the client may use, from the VIP (IPv4 fragmentation needed, IPv6
/// packet too big), built here independently; in `nat` mode the MTU
/// itself; DSR at exactly the MTU still fits (1480 + 20 = 1500).
#[test]
fn too_big_packets_are_answered_with_the_mtu_the_client_may_use() {
    let Some(mut fx) = Fixture::new("lbfxbig") else { return };
    let big = L4::Tcp { sport: 40002, dport: 443, seq: 1, ack: 1, flags: 0x10, window: 1, payload: vec![0; 1460] };
    let client_mac = neighbour_mac(ip(CLIENT_V4));
    let out_mac = fx.kb.net.out_mac;
    let frame = ip_frame(&FrameBuilder::new(client_mac, out_mac), CLIENT_V4, DSR4, &big, |h| h.dont_fragment = true, |_| {});
    let (o, out) = fx.run(&frame, fx.out_if);
    assert_eq!((o.action, o.counter), (Action::Tx, Some(LbCounter::IcmpTooBigSent)));
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xc8]; // MTU 1500 − 20
    icmp.extend_from_slice(&frame[14..14 + 28]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut h = Ipv4::new(DSR4.parse().unwrap(), CLIENT_V4.parse().unwrap());
    h.id = 0;
    assert_eq!(out, FrameBuilder::new(out_mac, client_mac).ipv4(&h.with_payload(1, &icmp)), "fragmentation needed, MTU 1480");

    let frame = client_frame(&fx.kb, CLIENT_V6, DSR6, &big);
    let (o, out) = fx.run(&frame, fx.out_if);
    assert_eq!((o.action, o.counter), (Action::Tx, Some(LbCounter::IcmpTooBigSent)));
    let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0xb4]; // MTU 1500 − 40
    icmp.extend_from_slice(&frame[14..14 + 48]);
    let (vip6, client6): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (DSR6.parse().unwrap(), CLIENT_V6.parse().unwrap());
    let c = icmpv6_checksum(&vip6.octets(), &client6.octets(), &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    assert_eq!(out, FrameBuilder::new(out_mac, client_mac).ipv6(&Ipv6::new(vip6, client6).with_payload(58, &icmp)), "packet too big, MTU 1460");

    let nat_big = L4::Tcp { sport: 40004, dport: 443, seq: 1, ack: 1, flags: 0x10, window: 1, payload: vec![0; 1480] };
    let frame = ip_frame(&FrameBuilder::new(client_mac, out_mac), CLIENT_V4, NAT4, &nat_big, |h| h.dont_fragment = true, |_| {});
    let (o, out) = fx.run(&frame, fx.out_if);
    assert_eq!((o.counter, &out[40..42]), (Some(LbCounter::IcmpTooBigSent), &[0x05u8, 0xdc][..]));

    let fits = L4::Tcp { sport: 40003, dport: 443, seq: 1, ack: 1, flags: 0x10, window: 1, payload: vec![0; 1440] };
    let (o, _) = fx.client_sends(CLIENT_V4, DSR4, &fits);
    assert_eq!(o.action, Action::Redirect(fx.in_if));
    fx.finish();
}

/// A backend goes down: its proven flows move to the others, counted.
#[test]
fn a_down_backends_flows_move_to_the_others() {
    let Some(mut fx) = Fixture::new("lbfxdown") else { return };
    fx.client_sends(CLIENT_V4, NAT4, &L4::tcp_syn(40000, 443));
    prove(&mut fx.kb, &mut fx.model, &mut fx.m, (CLIENT_V4, 40000), NAT4);
    let down = backend_addr(&fx.kb, flow_of(&fx.kb, CLIENT_V4, 40000, NAT4, 443, IPPROTO_TCP).backend);
    let mut d = desired();
    // Health is per address: down in every VIP that has it.
    for b in d.vips.iter_mut().flat_map(|v| &mut v.backends) {
        b.up = b.address != down;
    }
    fx.kb.apply(&d);
    fx.model.reload(fx.kb.maps());
    // The connection's next packet (a SYN would be a new connection).
    let (o, _) = fx.client_sends(CLIENT_V4, NAT4, &L4::tcp_ack(40000, 443, &[]));
    assert!(o.moved && o.counter == Some(LbCounter::NewFlow));
    assert_ne!(backend_addr(&fx.kb, flow_of(&fx.kb, CLIENT_V4, 40000, NAT4, 443, IPPROTO_TCP).backend), down);
    fx.finish();
}

/// An ICMP path-MTU error from `router` to `to`, quoting the first
/// `quote` bytes of `packet` (an IP packet).
fn icmp_error(router: &str, to: &str, packet: &[u8], quote: usize, ttl: u8) -> Vec<u8> {
    let quoted = &packet[..quote.min(packet.len())];
    match (ip(router), ip(to)) {
        (IpAddr::V4(r), IpAddr::V4(t)) => {
            let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
            icmp.extend_from_slice(quoted);
            let c = checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut h = Ipv4::new(r, t);
            h.ttl = ttl;
            h.with_payload(1, &icmp)
        }
        (IpAddr::V6(r), IpAddr::V6(t)) => {
            let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
            icmp.extend_from_slice(quoted);
            let c = icmpv6_checksum(&r.octets(), &t.octets(), &icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut h = Ipv6::new(r, t);
            h.hop_limit = ttl;
            h.with_payload(58, &icmp)
        }
        _ => panic!("mixed families"),
    }
}

fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], icmp: &[u8]) -> u16 {
    let mut acc = sum16(src, 0);
    acc = sum16(dst, acc);
    acc = sum16(&(icmp.len() as u32).to_be_bytes(), acc);
    acc = sum16(&[0, 0, 0, 58], acc);
    fold(sum16(icmp, acc))
}

#[test]
fn path_mtu_errors_reach_the_flows_backend() {
    if !root_or_skip() {
        return;
    }
    let mut kb = KernelBalancer::new("lbicmp");
    kb.apply(&desired());
    let (out_if, in_if) = (kb.net.out_ifindex, kb.net.in_ifindex);
    let mut model = kb.model();
    let data = L4::Tcp { sport: 443, dport: 40000, seq: 9, ack: 5, flags: 0x18, window: 500, payload: vec![7; 1400] };
    let router_mac = neighbour_mac(ip(CLIENT_V4));
    for (client, vip, router) in [(CLIENT_V4, NAT4, "198.51.100.9"), (CLIENT_V6, NAT6, "2001:db8:1::9")] {
        // The flow, then an error about the VIP's reply to the client.
        let syn = client_frame(&kb, client, vip, &L4::tcp_syn(40000, 443));
        both(&mut kb, &mut model, &syn, out_if);
        if vip == NAT4 || vip == NAT6 {
            prove(&mut kb, &mut model, &mut model_counters(), (client, 40000), vip);
        } else {
            let frame = client_frame(&kb, client, vip, &L4::tcp_ack(40000, 443, &[]));
            both(&mut kb, &mut model, &frame, out_if);
        }
        let flow = flow_of(&kb, client, 40000, vip, 443, IPPROTO_TCP);
        let backend = backend_addr(&kb, flow.backend);
        let inside = if backend.is_ipv4() { "10.1.0.1" } else { "fd00:1::1" };
        let sent = ip_frame(&FrameBuilder::new([0; 6], [0; 6]), vip, client, &data, |_| {}, |_| {});
        // The least an error quotes: the IP header and 8 bytes of L4.
        let least = if backend.is_ipv4() { 28 } else { 48 };
        for quote in [least, least + 20, 68, 548] {
            let err = icmp_error(router, vip, &sent[14..], quote, 60);
            let frame = FrameBuilder::new(router_mac, kb.net.out_mac).ip(&err);
            let (o, out) = both(&mut kb, &mut model, &frame, out_if);
            assert_eq!((o.action, o.counter), (Action::Redirect(in_if), Some(LbCounter::IcmpForwarded)), "quote {quote}: {frame:02x?}");
            // What the backend must get, built from scratch: an error from
            // the edge quoting the packet the backend itself sent.
            let its = ip_frame(&FrameBuilder::new([0; 6], [0; 6]), &backend.to_string(), inside, &L4::Tcp { sport: 443, dport: flow.nat_port, seq: 9, ack: 5, flags: 0x18, window: 500, payload: vec![7; 1400] }, |_| {}, |_| {});
            let expected = FrameBuilder::new(kb.net.in_mac, neighbour_mac(backend)).ip(&icmp_error(inside, &backend.to_string(), &its[14..], quote, 59));
            assert_eq!(out, expected, "{vip}: translated error quoting {quote} bytes");
        }
        // An error about a flow nobody has goes on, counted.
        let stranger = ip_frame(&FrameBuilder::new([0; 6], [0; 6]), vip, client, &L4::Tcp { sport: 443, dport: 40999, seq: 9, ack: 5, flags: 0x18, window: 500, payload: vec![] }, |_| {}, |_| {});
        let frame = FrameBuilder::new(router_mac, kb.net.out_mac).ip(&icmp_error(router, vip, &stranger[14..], 48, 60));
        let (o, _) = both(&mut kb, &mut model, &frame, out_if);
        assert_eq!((o.action, o.counter), (Action::NextStage, Some(LbCounter::IcmpUnmatched)));
    }
    // DSR: the error travels to the backend like the flow's packets.
    let syn = client_frame(&kb, CLIENT_V4, DSR4, &L4::tcp_syn(40000, 443));
    both(&mut kb, &mut model, &syn, out_if);
    // A SYN is not remembered; the connection's next packet is.
    let frame = client_frame(&kb, CLIENT_V4, DSR4, &L4::tcp_ack(40000, 443, &[]));
    both(&mut kb, &mut model, &frame, out_if);
    let backend = backend_addr(&kb, flow_of(&kb, CLIENT_V4, 40000, DSR4, 443, IPPROTO_TCP).backend);
    let sent = ip_frame(&FrameBuilder::new([0; 6], [0; 6]), DSR4, CLIENT_V4, &data, |_| {}, |_| {});
    let err = icmp_error("198.51.100.9", DSR4, &sent[14..], 548, 60);
    let frame = FrameBuilder::new(router_mac, kb.net.out_mac).ip(&err);
    let (o, out) = both(&mut kb, &mut model, &frame, out_if);
    assert_eq!(o.counter, Some(LbCounter::IcmpForwarded));
    let mut outer = Ipv4::new("10.1.0.1".parse().unwrap(), backend.to_string().parse().unwrap());
    outer.id = 0;
    assert_eq!(out, FrameBuilder::new(kb.net.in_mac, neighbour_mac(backend)).ipv4(&outer.with_payload(4, &err)));
}

fn reply_to(port: u16) -> L4 {
    L4::Tcp { sport: 443, dport: port, seq: 7, ack: 1, flags: 0x12, window: 1000, payload: Vec::new() }
}

fn model_counters() -> Vec<u64> {
    vec![0; LB_COUNTERS_LEN as usize]
}

fn tally(m: &mut [u64], o: &Outcome) {
    if let Some(c) = o.counter {
        m[c as usize] += 1;
    }
    if o.moved {
        m[LbCounter::FlowMoved as usize] += 1;
    }
    if let Some(c) = o.extra.filter(|_| o.action != Action::Drop) {
        m[c as usize] += 1;
    }
}

#[test]
fn snat_exhaustion_refuses_new_flows_cleanly() {
    if !root_or_skip() {
        return;
    }
    let mut kb = KernelBalancer::new("lbsnat");
    let mut d = desired();
    d.snat_ports = (2000, 2001);
    d.vips[0].backends.truncate(1);
    kb.apply(&d);
    let mut model = kb.model();
    let out_if = kb.net.out_ifindex;
    let mut ports = Vec::new();
    let mut refused = 0;
    for sport in 30000..30016u16 {
        let frame = client_frame(&kb, CLIENT_V4, NAT4, &L4::tcp_syn(sport, 443));
        let (o, _) = both(&mut kb, &mut model, &frame, out_if);
        match o.counter {
            Some(LbCounter::NewFlow) => ports.push(flow_of(&kb, CLIENT_V4, sport, NAT4, 443, IPPROTO_TCP).nat_port),
            Some(LbCounter::SnatExhausted) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    ports.sort_unstable();
    assert_eq!(ports, vec![2000, 2001], "each port is given to one flow only");
    assert_eq!(refused, 14);
    assert_eq!(kb.maps().counters().unwrap()[LbCounter::SnatExhausted as usize], 14);
}

/// A pool of SNAT addresses multiplies the ports: each address has the
/// whole port range; replies come back to whichever address their flow
/// left from, and an address outside the pool is not the balancer's.
#[test]
fn a_pool_of_snat_addresses_multiplies_the_ports() {
    if !root_or_skip() {
        return;
    }
    let mut kb = KernelBalancer::new("lbpool");
    let mut d = desired();
    d.snat_ports = (2000, 2001);
    d.snat_pool = vec![ip("10.1.0.2"), ip("10.1.0.3")];
    d.vips[0].backends.truncate(1);
    kb.apply(&d);
    let mut model = kb.model();
    let (out_if, in_if) = (kb.net.out_ifindex, kb.net.in_ifindex);
    let mut refused = 0;
    let mut sources = Vec::new();
    for sport in 30000..30016u16 {
        let frame = client_frame(&kb, CLIENT_V4, NAT4, &L4::tcp_syn(sport, 443));
        let (o, out) = both(&mut kb, &mut model, &frame, out_if);
        match o.counter {
            Some(LbCounter::NewFlow) => {
                let f = flow_of(&kb, CLIENT_V4, sport, NAT4, 443, IPPROTO_TCP);
                let src = std::net::Ipv4Addr::new(out[26], out[27], out[28], out[29]);
                sources.push((f.snat, f.nat_port, src.to_string()));
            }
            Some(LbCounter::SnatExhausted) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    sources.sort();
    let want: Vec<(u8, u16, String)> = [(0, "10.1.0.1"), (1, "10.1.0.2"), (2, "10.1.0.3")]
        .into_iter()
        .flat_map(|(i, a)| [(i, 2000, a.to_owned()), (i, 2001, a.to_owned())])
        .collect();
    assert_eq!(sources, want, "2 ports on each of 3 addresses, each slot one flow, sent from its address");
    assert_eq!(refused, 10);
    // Replies come back to each address; the model agrees byte for byte.
    let backend = ip(BACKENDS_V4[0]);
    let keys: Vec<NatKey> = kb.maps().nat.keys().map(Result::unwrap).collect();
    for k in &keys {
        let to = ["10.1.0.1", "10.1.0.2", "10.1.0.3"][usize::from(k.snat)];
        let synack = L4::Tcp { sport: 443, dport: k.nat_port, seq: 99, ack: 0x1000_0001, flags: 0x12, window: 1000, payload: Vec::new() };
        let frame = ip_frame(&FrameBuilder::new(neighbour_mac(backend), kb.net.in_mac), &backend.to_string(), to, &synack, |_| {}, |_| {});
        assert_eq!(both(&mut kb, &mut model, &frame, in_if).0.counter, Some(LbCounter::NatReply), "a reply to {to}:{}", k.nat_port);
    }
    // On a SNAT port with no entry: a pool address's is forged, another
    // address's is not the balancer's.
    let stray = L4::Tcp { sport: 443, dport: 2000, seq: 1, ack: 1, flags: 0x10, window: 1000, payload: Vec::new() };
    let other_backend = ip(BACKENDS_V4[1]);
    for (to, want) in [("10.1.0.3", Some(LbCounter::ForgedReply)), ("10.1.0.4", None)] {
        let frame = ip_frame(&FrameBuilder::new(neighbour_mac(other_backend), kb.net.in_mac), &other_backend.to_string(), to, &stray, |_| {}, |_| {});
        assert_eq!(both(&mut kb, &mut model, &frame, in_if).0.counter, want, "to {to}");
    }
    // A smaller pool: the dropped address's index goes; the rest stay.
    d.snat_pool.truncate(1);
    kb.apply(&d);
    let index: Vec<u32> = kb.maps().snat_index.iter().map(|r| r.unwrap().1).collect();
    assert_eq!(index, vec![1]);
    assert_eq!(kb.maps().snat_pool.get(&0, 0).unwrap().v4_count, 2);
}

#[test]
fn a_full_nat_table_refuses_new_flows_as_such() {
    if !root_or_skip() {
        return;
    }
    let sizes = lb_user::datapath::loader::MapSizes { nat: 4, ..lb_user::datapath::loader::MapSizes::with_table(FIXTURE_TABLE_SIZE) };
    let mut kb = KernelBalancer::with_sizes("lbnatfull", sizes);
    kb.apply(&desired());
    let mut model = kb.model();
    let out_if = kb.net.out_ifindex;
    let mut outcomes: HashMap<&str, u32> = HashMap::new();
    for sport in 31000..31010u16 {
        let frame = client_frame(&kb, CLIENT_V4, NAT4, &L4::tcp_syn(sport, 443));
        let (o, _) = both(&mut kb, &mut model, &frame, out_if);
        *outcomes.entry(o.counter.map_or("none", LbCounter::name)).or_default() += 1;
    }
    assert_eq!(outcomes, HashMap::from([("new_flow", 4), ("drop_nat_table_full", 6)]), "4 entries fit, every later new flow is refused");
    let counters = kb.maps().counters().unwrap();
    assert_eq!((counters[LbCounter::NatTableFull as usize], counters[LbCounter::SnatExhausted as usize]), (6, 0), "a full table is not SNAT exhaustion");
    // The flows that got in go on, in both directions.
    prove(&mut kb, &mut model, &mut model_counters(), (CLIENT_V4, 31000), NAT4);
    let frame = client_frame(&kb, CLIENT_V4, NAT4, &L4::Tcp { sport: 31000, dport: 443, seq: 0x1000_0001, ack: 100, flags: 0x10, window: 1000, payload: Vec::new() });
    assert_eq!(both(&mut kb, &mut model, &frame, out_if).0.counter, Some(LbCounter::FlowHit));
    // Forgotten by the flow table (as LRU eviction does), the flow is
    // placed again and finds its own NAT entry: no insert, so even a full
    // table keeps it.
    let (src, family) = addr_key(ip(CLIENT_V4));
    let fkey = FlowKey { src, dst: addr_key(ip(NAT4)).0, src_port: 31000, dst_port: 443, proto: IPPROTO_TCP, family, _pad: [0; 2] };
    let port_before = flow_of(&kb, CLIENT_V4, 31000, NAT4, 443, IPPROTO_TCP).nat_port;
    kb.maps_mut().flows.remove(&fkey).unwrap();
    model.flows.remove(&fkey);
    let (o, _) = both(&mut kb, &mut model, &frame, out_if);
    assert_eq!((o.counter, o.extra), (Some(LbCounter::FlowHit), Some(LbCounter::FlowRefound)));
    assert_eq!(flow_of(&kb, CLIENT_V4, 31000, NAT4, 443, IPPROTO_TCP).nat_port, port_before, "its own SNAT port again");
    assert_eq!(kb.maps().counters().unwrap()[LbCounter::FlowRefound as usize], 1);
    let port = flow_of(&kb, CLIENT_V4, 31000, NAT4, 443, IPPROTO_TCP).nat_port;
    let backend = backend_addr(&kb, flow_of(&kb, CLIENT_V4, 31000, NAT4, 443, IPPROTO_TCP).backend);
    let f = FrameBuilder::new(neighbour_mac(backend), kb.net.in_mac);
    let reply = ip_frame(&f, &backend.to_string(), "10.1.0.1", &reply_to(port), |_| {}, |_| {});
    let in_if = kb.net.in_ifindex;
    assert_eq!(both(&mut kb, &mut model, &reply, in_if).0.counter, Some(LbCounter::NatReply));
    // A freed entry (the agent's sweep) makes room for one more.
    let key = *model.nat.keys().next().unwrap();
    kb.maps_mut().nat.remove(&key).unwrap();
    model.nat.remove(&key);
    let frame = client_frame(&kb, CLIENT_V4, NAT4, &L4::tcp_syn(31020, 443));
    assert_eq!(both(&mut kb, &mut model, &frame, out_if).0.counter, Some(LbCounter::NewFlow));
    let frame = client_frame(&kb, CLIENT_V4, NAT4, &L4::tcp_syn(31021, 443));
    assert_eq!(both(&mut kb, &mut model, &frame, out_if).0.counter, Some(LbCounter::NatTableFull));
}

/// A seeded generator, so a failure replays.
struct Rng(StdRng);

impl Rng {
    fn seeded(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.gen()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.gen_range(0..n)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        xs.choose(&mut self.0).expect("a choice")
    }
}

/// A random packet: mostly clients to services (valid or mutated), some
/// replies from backends to NAT ports, some arbitrary traffic.
fn random_packet(rng: &mut Rng, kb: &KernelBalancer, model: &ModelTables) -> (Vec<u8>, u32) {
    let (out_if, in_if) = (kb.net.out_ifindex, kb.net.in_ifindex);
    let kind = rng.below(100);
    let mut frame = if kind < 25 && !model.flows.is_empty() {
        // A packet of a flow seen before (its backend may have changed).
        let keys: Vec<&FlowKey> = model.flows.keys().collect();
        let k = **rng.pick(&keys);
        let src = lb_user::datapath::maps::key_addr(&k.src, k.family).to_string();
        let dst = lb_user::datapath::maps::key_addr(&k.dst, k.family).to_string();
        let l4 = if k.proto == IPPROTO_TCP {
            L4::Tcp { sport: k.src_port, dport: k.dst_port, seq: 1, ack: 1, flags: 0x18, window: 500, payload: vec![1; 64] }
        } else {
            L4::udp(k.src_port, k.dst_port, b"more")
        };
        (client_frame(kb, &src, &dst, &l4), if rng.below(8) == 0 { in_if } else { out_if })
    } else if kind < 31 && !model.flows.is_empty() {
        // A path-MTU error about a packet of a known flow, quoting a
        // random amount of it.
        let keys: Vec<&FlowKey> = model.flows.keys().collect();
        let k = **rng.pick(&keys);
        let client = lb_user::datapath::maps::key_addr(&k.src, k.family).to_string();
        let vip = lb_user::datapath::maps::key_addr(&k.dst, k.family).to_string();
        let l4 = if k.proto == IPPROTO_TCP {
            L4::Tcp { sport: k.dst_port, dport: k.src_port, seq: 3, ack: 4, flags: 0x18, window: 9, payload: vec![2; 600] }
        } else {
            L4::udp(k.dst_port, k.src_port, &[3; 600])
        };
        let sent = ip_frame(&FrameBuilder::new([0; 6], [0; 6]), &vip, &client, &l4, |_| {}, |_| {});
        let router = if k.family == lb_common::wire::FAMILY_V4 { "198.51.100.9" } else { "2001:db8:1::9" };
        let quote = *rng.pick(&[20usize, 28, 40, 48, 60, 300]);
        let ttl = *rng.pick(&[64u8, 64, 1]);
        let err = icmp_error(router, &vip, &sent[14..], quote, ttl);
        (FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), kb.net.out_mac).ip(&err), out_if)
    } else if kind < 40 && !model.nat.is_empty() {
        // A reply to one of the NAT entries, or to a port nobody holds.
        let keys: Vec<&NatKey> = model.nat.keys().collect();
        let k = **rng.pick(&keys);
        let backend = lb_user::datapath::maps::key_addr(&k.backend, k.family).to_string();
        let inside = if k.family == lb_common::wire::FAMILY_V4 { "10.1.0.1" } else { "fd00:1::1" };
        let nat_port = if rng.below(10) == 0 { rng.below(65536) as u16 } else { k.nat_port };
        let l4 = if k.proto == IPPROTO_TCP { reply_to(nat_port) } else { L4::udp(k.backend_port, nat_port, b"answer") };
        // SYN-ACKs, data, and the FINs and RSTs that mark an entry closing.
        let flags = *rng.pick(&[0x12u8, 0x18, 0x18, 0x11, 0x04]);
        let l4 = match l4 {
            L4::Tcp { dport, seq, ack, window, payload, .. } => L4::Tcp { sport: k.backend_port, dport, seq, ack, flags, window, payload },
            other => other,
        };
        let f = FrameBuilder::new(neighbour_mac(ip(&backend)), kb.net.in_mac);
        (ip_frame(&f, &backend, inside, &l4, |_| {}, |_| {}), in_if)
    } else {
        let v6 = rng.below(2) == 0;
        let clients4 = ["198.51.100.2", "198.51.100.3", "198.51.100.4", "198.51.100.9", "198.51.100.77"];
        let clients6 = ["2001:db8:1::2", "2001:db8:1::3", "2001:db8:1::77"];
        let vips4 = [NAT4, NAT4, NAT4, NAT4, DSR4, DSR4, DSR4, L2_4, L2_4, NO_NEIGH_VIP, NO_ROUTE_VIP, EMPTY_VIP, "10.1.0.11", PROXY4, PROXY4, PROXY4_V1, PROXY4_V1];
        let vips6 = [NAT6, NAT6, NAT6, DSR6, DSR6, L2_6, L2_6, "fd00:1::12", PROXY6, PROXY6_V1];
        let (src, dst) = if v6 { (*rng.pick(&clients6), *rng.pick(&vips6)) } else { (*rng.pick(&clients4), *rng.pick(&vips4)) };
        let dport = *rng.pick(&[443u16, 443, 443, 443, 443, 443, 443, 80, 53, 8080]);
        let sport = 1024 + rng.below(60_000) as u16;
        let payload = vec![0x5a; *rng.pick(&[0usize, 10, 100, 1000, 1440, 1460])];
        let l4 = if rng.below(4) == 0 {
            L4::Udp { sport, dport, payload }
        } else {
            L4::Tcp { sport, dport, seq: rng.next() as u32, ack: 0, flags: *rng.pick(&[0x02u8, 0x10, 0x18, 0x11, 0x04]), window: 500, payload }
        };
        let ttl = *rng.pick(&[64u8, 64, 64, 64, 64, 64, 2, 1, 0]);
        let mf = rng.below(30) == 0;
        let df = rng.below(2) == 0;
        let offset = if rng.below(30) == 0 { 8 } else { 0 };
        let options = if rng.below(20) == 0 { vec![1, 1, 1, 1] } else { Vec::new() };
        let f = FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), kb.net.out_mac);
        let frame = ip_frame(
            &f,
            src,
            dst,
            &l4,
            |h| {
                h.ttl = ttl;
                h.dont_fragment = df;
                h.more_fragments = mf;
                h.frag_offset = offset;
                h.options = options.clone();
            },
            |h| h.hop_limit = ttl,
        );
        (frame, if rng.below(6) == 0 { in_if } else { out_if })
    };
    // Addressed to the MAC of the interface it arrives on; now and then to
    // a neighbour's, broadcast or multicast (rule 2a).
    let macs = [kb.net.out_mac, kb.net.in_mac, [2, 0, 0, 0, 0x99, 1], [0xff; 6], [1, 0, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1]];
    let dst = match rng.below(16) {
        0 => *rng.pick(&macs),
        _ if frame.1 == out_if => macs[0],
        _ => macs[1],
    };
    frame.0[..6].copy_from_slice(&dst);
    // Mutations: truncate, flip header bytes, zero the UDP checksum.
    match rng.below(10) {
        0 => {
            let cut = 14 + rng.below(frame.0.len() as u64 - 13) as usize;
            frame.0.truncate(cut);
        }
        1 => {
            let n = 1 + rng.below(3);
            for _ in 0..n {
                let at = rng.below(frame.0.len().min(80) as u64) as usize;
                frame.0[at] ^= 1 << rng.below(8);
            }
        }
        2 if frame.0.len() > 42 && frame.0[23] == IPPROTO_UDP && frame.0[12..14] == [8, 0] => {
            let l4 = 14 + usize::from(frame.0[14] & 0x0f) * 4;
            if frame.0.len() >= l4 + 8 {
                frame.0[l4 + 6] = 0;
                frame.0[l4 + 7] = 0;
            }
        }
        _ => {}
    }
    frame
}

#[test]
fn kernel_matches_model_on_random_flows_and_mutated_packets() {
    if !root_or_skip() {
        return;
    }
    const BATCHES: u64 = 20;
    const PER_BATCH: u64 = 12_000;
    let mut kb = KernelBalancer::new("lbdiff");
    let base = desired();
    kb.apply(&base);
    let mut model = kb.model();
    let mut rng = Rng::seeded(0x5eed_1bc0_ffee);
    let before = kb.maps().counters().unwrap();
    let mut m = model_counters();
    let mut actions: HashMap<u32, u64> = HashMap::new();
    let mut flows_offered = std::collections::HashSet::new();
    let mut fw_total = 0u64;
    for batch in 0..BATCHES {
        // Per batch: an apply may give a removed backend's id (and fresh
        // counters) to a new one.
        let mut stats: HashMap<u32, TrafficStats> = HashMap::new();
        // Backend set changes between batches; flows stay (they must be
        // kept or moved exactly as the model says).
        let mut d = base.clone();
        let everywhere = |d: &mut Desired, f: &dyn Fn(&mut Vec<DesiredBackend>)| d.vips.iter_mut().for_each(|v| f(&mut v.backends));
        match batch % 4 {
            1 => everywhere(&mut d, &|bs| bs.iter_mut().filter(|b| b.address == ip("10.1.0.12")).for_each(|b| b.up = false)),
            2 => {
                everywhere(&mut d, &|bs| bs.retain(|b| b.address != ip("10.1.0.11")));
                d.vips[4].backends[0].weight = 0;
            }
            3 => d.vips[3].backends.push(DesiredBackend { address: ip("fd00:1::20"), weight: 1, up: true }),
            _ => {}
        }
        // Every other batch under firewall rules (rule 3b): the flows of
        // the batches before meet them mid-stream.
        if batch % 2 == 1 {
            for (v, fw) in d.vips.iter_mut().zip(firewall_desired().vips) {
                (v.allow, v.deny) = (fw.allow, fw.deny);
            }
        }
        kb.apply(&d);
        model.firewall = kb.firewall_rules();
        let fw_before = fw_counters(&kb);
        let mut fw_model = vec![0u64; fw_before.len()];
        // The agent bumps the routing generation at netlink changes (kept
        // hops go stale) and clears it when it stops (none are kept).
        match batch % 5 {
            1 | 3 => drop(kb.maps_mut().bump_net_generation().unwrap()),
            4 => kb.maps_mut().stop_keeping_hops().unwrap(),
            _ => {}
        }
        model.reload(kb.maps());
        let stats_before: HashMap<u32, TrafficStats> =
            model.backends.keys().map(|id| (*id, kb.maps().backend_stats(*id).unwrap())).collect();
        if batch % 4 == 0 {
            kb.clear_flows();
            model.flows.clear();
            model.nat.clear();
        }
        for _ in 0..PER_BATCH {
            let (frame, ifindex) = random_packet(&mut rng, &kb, &model);
            if frame.len() < 14 {
                continue;
            }
            let (o, _) = both(&mut kb, &mut model, &frame, ifindex);
            tally(&mut m, &o);
            if let Some(s) = o.firewall {
                fw_model[s as usize] += 1;
            }
            // Distinct 5-tuples offered (TCP/UDP over plain IPv4/IPv6).
            if frame.len() >= 58 {
                let tuple = match &frame[12..14] {
                    [8, 0] => Some((frame[23], frame[26..34].to_vec(), frame[34..38].to_vec())),
                    [0x86, 0xdd] => Some((frame[20], frame[22..54].to_vec(), frame[54..58].to_vec())),
                    _ => None,
                };
                if let Some(t) = tuple.filter(|t| t.0 == IPPROTO_TCP || t.0 == IPPROTO_UDP) {
                    flows_offered.insert(t);
                }
            }
            *actions.entry(action_code(o.action)).or_default() += 1;
            if let Some((_, backend)) = o.charged {
                let s = stats.entry(backend).or_default();
                s.packets += 1;
                s.bytes += frame.len() as u64;
                s.new_flows += u64::from(o.counter == Some(LbCounter::NewFlow));
            }
        }
        let fw_delta: Vec<u64> = fw_counters(&kb).iter().zip(&fw_before).map(|(a, b)| a - b).collect();
        assert_eq!(fw_delta, fw_model, "firewall counters in batch {batch}");
        fw_total += fw_model.iter().sum::<u64>();
        // Flow and NAT tables agree entry for entry.
        let kflows: HashMap<FlowKey, FlowEntry> = kb.maps().flows.iter().map(|r| r.unwrap()).collect();
        assert_eq!(kflows, model.flows, "flow tables after batch {batch}");
        let knat: HashMap<NatKey, NatEntry> =
            kb.maps().nat.iter().map(|r| r.unwrap()).map(|(k, mut e)| {
                e.last_seen_ns = 0;
                (k, e)
            }).collect();
        let mnat: HashMap<NatKey, NatEntry> = model.nat.iter().map(|(k, e)| (*k, NatEntry { last_seen_ns: 0, ..*e })).collect();
        if knat != mnat {
            let differ: Vec<_> = knat.iter().filter(|(k, e)| mnat.get(k) != Some(e)).map(|(k, e)| (k, e, mnat.get(k))).collect();
            let missing: Vec<_> = mnat.keys().filter(|k| !knat.contains_key(k)).collect();
            panic!("NAT tables after batch {batch}: kernel vs model {differ:#?}\nonly in the model: {missing:?}");
        }
        // Kept next hops agree too.
        let khops: HashMap<u32, HopEntry> =
            (0..MAX_BACKENDS).filter_map(|id| kb.maps().hops.get(&id, 0).ok().filter(|h| h.net_generation != 0).map(|h| (id, h))).collect();
        assert_eq!(khops, model.hops, "kept hops after batch {batch}");
        assert!(model.net_generation == 0 || khops.values().any(|h| h.net_generation == model.net_generation), "batch {batch} kept hops");
        for (id, s) in &stats {
            let (k, b) = (kb.maps().backend_stats(*id).unwrap(), stats_before[id]);
            let delta = (k.packets - b.packets, k.bytes - b.bytes, k.new_flows - b.new_flows);
            assert_eq!(delta, (s.packets, s.bytes, s.new_flows), "backend {id} stats in batch {batch}");
        }
    }
    let after = kb.maps().counters().unwrap();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, m, "kernel counters vs model");
    let named: Vec<String> = LbCounter::ALL.iter().map(|c| format!("{}={}", c.name(), m[*c as usize])).collect();
    println!("{} packets, {} distinct flows; actions {actions:?}; counters {} firewall_drops={fw_total}", BATCHES * PER_BATCH, flows_offered.len(), named.join(" "));
    assert!(fw_total > 5_000, "firewall drops {fw_total}");
    assert!(flows_offered.len() >= 100_000, "{} distinct flows", flows_offered.len());
    // The run exercised every path it claims to.
    assert!(m[LbCounter::NewFlow as usize] > 10_000 && m[LbCounter::FlowHit as usize] > 20_000, "{named:?}");
    assert!(m[LbCounter::FlowMoved as usize] > 100 && m[LbCounter::NatReply as usize] > 5_000, "{named:?}");
    assert!(m[LbCounter::IcmpForwarded as usize] > 1_000 && m[LbCounter::IcmpTooBigSent as usize] > 1_000, "{named:?}");
}


#[test]
fn decap_opens_only_the_edges_tunnels_like_the_model() {
    use lb_common::balancer_model::{decapsulate, Decap};
    if !root_or_skip() {
        return;
    }
    let mut kd = KernelDecap::new("dcfix");
    let key = |edge: &str, vip: &str| {
        let (outer_src, family) = addr_key(ip(edge));
        DecapKey { outer_src, inner_dst: addr_key(ip(vip)).0, family, _pad: [0; 3] }
    };
    let allowed = [key("10.1.0.1", DSR4), key("fd00:1::1", DSR6)];
    for k in allowed {
        kd.allow(k);
    }
    let eth = FrameBuilder::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let inner4 = Ipv4::new(CLIENT_V4.parse().unwrap(), DSR4.parse().unwrap()).packet(&L4::tcp_syn(40000, 443));
    let inner6 = Ipv6::new(CLIENT_V6.parse().unwrap(), DSR6.parse().unwrap()).packet(&L4::tcp_syn(40000, 443));
    let tunnel4 = |edge: &str, inner: &[u8]| eth.ipv4(&Ipv4 { id: 0, ..Ipv4::new(edge.parse().unwrap(), "10.1.0.11".parse().unwrap()) }.with_payload(4, inner));
    let tunnel6 = |edge: &str, inner: &[u8]| eth.ipv6(&Ipv6::new(edge.parse().unwrap(), "fd00:1::11".parse().unwrap()).with_payload(41, inner));
    let other4 = Ipv4::new(CLIENT_V4.parse().unwrap(), NAT4.parse().unwrap()).packet(&L4::tcp_syn(40000, 443));
    let cases: Vec<(&str, Vec<u8>, Decap)> = vec![
        ("IPIP from the edge to the VIP", tunnel4("10.1.0.1", &inner4), Decap::Opened { len: 14 + inner4.len() }),
        ("IPv6-in-IPv6 from the edge", tunnel6("fd00:1::1", &inner6), Decap::Opened { len: 14 + inner6.len() }),
        ("IPIP from a stranger", tunnel4("10.1.0.99", &inner4), Decap::Unknown),
        ("IPIP to another address", tunnel4("10.1.0.1", &other4), Decap::Unknown),
        ("IPIP carrying IPv6", tunnel4("10.1.0.1", &inner6), Decap::Unknown),
        ("plain TCP", eth.ipv4(&inner4), Decap::NotTunnel),
    ];
    let before = kd.counters();
    for (name, frame, want) in &cases {
        let (action, out) = kd.run(frame);
        let mut buf = vec![0u8; frame.len()];
        let model = decapsulate(frame, &mut buf, |k| allowed.contains(k));
        assert_eq!((action, &model), (XDP_PASS, want), "{name}");
        match model {
            Decap::Opened { len } => {
                assert_eq!(out, buf[..len].to_vec(), "{name}");
                let inner = if frame[12..14] == [8, 0] { &inner4 } else { &inner6 };
                assert_eq!(out, eth.ip(inner), "{name}: exactly the inner packet, same MACs");
            }
            _ => assert_eq!(&out, frame, "{name}: untouched"),
        }
    }
    let after = kd.counters();
    assert_eq!((after[0] - before[0], after[1] - before[1]), (2, 3), "opened, unknown");

    // Mutations and truncations: the kernel and the model agree, always XDP_PASS.
    let mut rng = Rng::seeded(0xdeca_bad5_eed5);
    let seeds: Vec<Vec<u8>> = cases.iter().map(|(_, f, _)| f.clone()).collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let before = kd.counters();
    for _ in 0..20_000 {
        let mut f = rng.pick(&seeds).clone();
        match rng.below(3) {
            0 => f.truncate(14 + rng.below(f.len() as u64 - 13) as usize),
            1 => {
                let at = rng.below(f.len().min(100) as u64) as usize;
                f[at] ^= 1 << rng.below(8);
            }
            _ => {}
        }
        let (action, out) = kd.run(&f);
        let mut buf = vec![0u8; f.len()];
        let model = decapsulate(&f, &mut buf, |k| allowed.contains(k));
        assert_eq!(action, XDP_PASS, "{f:02x?}");
        match model {
            Decap::Opened { len } => assert_eq!(out, buf[..len].to_vec(), "{f:02x?}"),
            _ => assert_eq!(out, f, "{f:02x?}"),
        }
        *counts.entry(format!("{model:?}").split(' ').next().unwrap().to_string()).or_insert(0) += 1;
    }
    let after = kd.counters();
    let kernel = (after[0] - before[0], after[1] - before[1]);
    assert_eq!(kernel, (counts.get("Opened").copied().unwrap_or(0), counts.get("Unknown").copied().unwrap_or(0)), "counters");
    println!("decap fuzz: {counts:?}");
}

/// The first FIN or RST of a flow, from the client or from the backend,
/// marks its NAT entry closing (kernel and model alike): closed (client
/// first, or a RST) or TIME_WAIT (the backend first). The sweep frees
/// closed ports after `tcp_closed`, TIME_WAIT ones after `tcp_time_wait`,
/// open ones after `tcp`.
/// A client may reuse a port while the edge still remembers the flow (a
/// client that lost its state; one whose RST was lost; found by the soak:
/// a new TLS connection reached a drained backend). The SYN is a new
/// connection: placed by the table as it is now, and a NAT entry it takes
/// again is open again.
#[test]
fn a_syn_on_a_remembered_port_is_a_new_connection() {
    if !root_or_skip() {
        return;
    }
    let mut kb = KernelBalancer::new("lbsyn");
    let mut d = desired();
    kb.apply(&d);
    let out_if = kb.net.out_ifindex;
    let mut model = kb.model();
    let syn = |kb: &KernelBalancer, sport| client_frame(kb, CLIENT_V4, NAT4, &L4::tcp_syn(sport, 443));
    let fin = |kb: &KernelBalancer, sport| {
        client_frame(kb, CLIENT_V4, NAT4, &L4::Tcp { sport, dport: 443, seq: 0x1000_0001, ack: 100, flags: 0x11, window: 0, payload: vec![] })
    };
    // Connections from many ports, each closed by the client (a FIN; the
    // backend's FIN and the last ACK never come).
    let ports: Vec<u16> = (42000..42060).collect();
    for &p in &ports {
        let opening = syn(&kb, p);
        both(&mut kb, &mut model, &opening, out_if);
        prove(&mut kb, &mut model, &mut model_counters(), (CLIENT_V4, p), NAT4);
        let ending = fin(&kb, p);
        both(&mut kb, &mut model, &ending, out_if);
        assert_eq!(flow_of(&kb, CLIENT_V4, p, NAT4, 443, IPPROTO_TCP).flags, FLOW_CLOSING, "a client FIN marks the flow closing");
    }
    let first: Vec<FlowEntry> = ports.iter().map(|p| flow_of(&kb, CLIENT_V4, *p, NAT4, 443, IPPROTO_TCP)).collect();
    // Drain the first backend: the ports it had reach others now.
    d.vips[0].backends[0].weight = 0;
    kb.apply(&d);
    model.reload(kb.maps());
    let drained = first.iter().find(|f| backend_addr(&kb, f.backend) == ip(BACKENDS_V4[0])).expect("a flow on the first backend").backend;
    for (p, before) in ports.iter().zip(&first) {
        let frame = syn(&kb, *p);
        let (o, _) = both(&mut kb, &mut model, &frame, out_if);
        assert_eq!(o.counter, Some(LbCounter::NewFlow), "port {p}: a SYN is a new flow");
        let now = flow_of(&kb, CLIENT_V4, *p, NAT4, 443, IPPROTO_TCP);
        assert_ne!(now.backend, drained, "port {p}: a new connection never reaches the drained backend");
        if now.backend == before.backend {
            assert_eq!(now.nat_port, before.nat_port, "port {p}: the same backend, its NAT entry taken again");
        }
    }
    // A port that went back to its backend has its NAT entry open again.
    let knat: HashMap<NatKey, NatEntry> = kb.maps().nat.iter().map(|r| r.unwrap()).map(|(k, mut e)| {
        e.last_seen_ns = 0;
        (k, e)
    }).collect();
    let mnat: HashMap<NatKey, NatEntry> = model.nat.iter().map(|(k, e)| (*k, NatEntry { last_seen_ns: 0, ..*e })).collect();
    assert_eq!(knat, mnat, "kernel and model hold the same NAT entries");
    let open = knat.values().filter(|e| e.closing == 0).count();
    assert_eq!(open, ports.len(), "every port's current entry is open (taken again, or new on another backend)");
    // The sweep ends the earlier connections' closed entries on the drained
    // backend; the new connections' flows (the same SNAT port number on
    // another backend, as the probe sequence is the 5-tuple's) stay.
    let moved = ports.iter().zip(&first).filter(|(p, f)| flow_of(&kb, CLIENT_V4, **p, NAT4, 443, IPPROTO_TCP).backend != f.backend).count();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let secs = std::time::Duration::from_secs;
    let t = lb_user::datapath::sweep::Timeouts { tcp: secs(900), tcp_closed: std::time::Duration::from_millis(10), tcp_time_wait: secs(120), udp: secs(300), tcp_half_open: secs(5), udp_unreplied: secs(5) };
    assert_eq!(lb_user::datapath::sweep::sweep_nat(kb.maps_mut(), &t).unwrap(), moved, "the earlier, closed entries go");
    for p in &ports {
        flow_of(&kb, CLIENT_V4, *p, NAT4, 443, IPPROTO_TCP);
    }
}

/// How a connection ends decides when its SNAT port is free (kernel and
/// model alike): at once when it is over for the backend (an exact RST
/// from either side; the client's last ACK after FINs both ways, the
/// client's first), after `tcp_closed` when only the client's FIN passed,
/// after `tcp_time_wait` when the backend closed first (it holds
/// TIME_WAIT), never for blind RSTs and FINs.
#[test]
fn a_closed_connection_gives_its_snat_port_back() {
    if !root_or_skip() {
        return;
    }
    let mut kb = KernelBalancer::new("lbclose");
    kb.apply(&desired());
    let (out_if, in_if) = (kb.net.out_ifindex, kb.net.in_ifindex);
    let mut model = kb.model();
    let nat_key = |kb: &KernelBalancer, sport: u16| -> NatKey {
        let flow = flow_of(kb, CLIENT_V4, sport, NAT4, 443, IPPROTO_TCP);
        let backend = addr_key(backend_addr(kb, flow.backend)).0;
        NatKey { backend, backend_port: 443, nat_port: flow.nat_port, proto: IPPROTO_TCP, family: lb_common::wire::FAMILY_V4, snat: flow.snat, _pad: 0 }
    };
    // Seven connections, each with its handshake (client ISN 1, backend
    // ISN 100): one stays open; the client closes one (FIN); the backend
    // resets one; the backend closes one (FIN), then the client; one
    // meets blind RSTs and FINs, which change nothing; the client closes
    // one and the backend follows, then the client's last ACK; the client
    // resets the last.
    let ports = [41000u16, 41001, 41002, 41003, 41004, 41005, 41006];
    let mut keys = HashMap::new();
    let from_client = |kb: &mut KernelBalancer, model: &mut ModelTables, sport, seq, ack, flags| -> Outcome {
        let l4 = L4::Tcp { sport, dport: 443, seq, ack, flags, window: 500, payload: vec![] };
        let frame = client_frame(kb, CLIENT_V4, NAT4, &l4);
        both(kb, model, &frame, out_if).0
    };
    let from_backend = |kb: &mut KernelBalancer, model: &mut ModelTables, key: NatKey, seq, ack, flags| -> Outcome {
        let backend = lb_user::datapath::maps::key_addr(&key.backend, key.family);
        let l4 = L4::Tcp { sport: 443, dport: key.nat_port, seq, ack, flags, window: 1000, payload: vec![] };
        let frame = ip_frame(&FrameBuilder::new(neighbour_mac(backend), kb.net.in_mac), &backend.to_string(), "10.1.0.1", &l4, |_| {}, |_| {});
        both(kb, model, &frame, in_if).0
    };
    for sport in ports {
        let syn = client_frame(&kb, CLIENT_V4, NAT4, &L4::tcp_syn(sport, 443));
        both(&mut kb, &mut model, &syn, out_if);
        let key = nat_key(&kb, sport);
        keys.insert(sport, key);
        assert_eq!(kb.maps().nat.get(&key, 0).unwrap().closing, 0, "a SYN opens");
        assert!(!remembered(&kb, CLIENT_V4, sport, NAT4, 443, IPPROTO_TCP), "a SYN is not remembered");
        assert_eq!(from_backend(&mut kb, &mut model, key, 100, 2, 0x12).counter, Some(LbCounter::NatReply));
        let o = from_client(&mut kb, &mut model, sport, 2, 101, 0x10);
        assert_eq!((o.counter, o.extra), (Some(LbCounter::FlowHit), Some(LbCounter::FlowProven)), "the handshake's ACK proves");
        assert!(remembered(&kb, CLIENT_V4, sport, NAT4, 443, IPPROTO_TCP), "a proven flow is remembered");
    }
    let freed = |o: Outcome| o.extra == Some(LbCounter::NatPortFreed);
    from_client(&mut kb, &mut model, 41000, 2, 101, 0x10);
    assert!(!freed(from_client(&mut kb, &mut model, 41001, 2, 101, 0x11)));
    assert_eq!(flow_of(&kb, CLIENT_V4, 41001, NAT4, 443, IPPROTO_TCP).flags, FLOW_CLOSING, "a client FIN marks the flow closing");
    let o = from_backend(&mut kb, &mut model, keys[&41002], 101, 2, 0x04);
    assert_eq!(o.counter, Some(LbCounter::NatReply));
    assert!(freed(o), "the backend's exact RST frees the port");
    assert!(!freed(from_backend(&mut kb, &mut model, keys[&41003], 101, 2, 0x11)));
    assert!(!freed(from_client(&mut kb, &mut model, 41003, 2, 102, 0x11)));
    assert!(!freed(from_client(&mut kb, &mut model, 41003, 3, 102, 0x10)), "the backend holds TIME_WAIT");
    // Blind: RSTs and FINs far from the windows are dropped; a RST in the
    // window but not exact passes, for the endpoint's challenge ACK.
    for (seq, flags) in [(0x8000_0000u32, 0x04u8), (1, 0x04), (0x4000_0000, 0x11)] {
        assert_eq!(from_client(&mut kb, &mut model, 41004, seq, 101, flags).counter, Some(LbCounter::OutOfWindow), "client {seq:#x} {flags:#x}");
        assert_eq!(from_backend(&mut kb, &mut model, keys[&41004], 101u32.wrapping_add(seq).wrapping_add(0x4000_0000), 2, flags).counter, Some(LbCounter::OutOfWindow));
    }
    let o = from_client(&mut kb, &mut model, 41004, 3, 101, 0x04);
    assert_eq!((o.counter, o.extra), (Some(LbCounter::FlowHit), Some(LbCounter::RstInexact)));
    let o = from_backend(&mut kb, &mut model, keys[&41004], 100, 2, 0x04);
    assert_eq!((o.counter, o.extra), (Some(LbCounter::NatReply), Some(LbCounter::RstInexact)));
    // Client first, both ways: only the acknowledgement of the backend's
    // FIN frees the port.
    assert!(!freed(from_client(&mut kb, &mut model, 41005, 2, 101, 0x11)));
    assert!(!freed(from_backend(&mut kb, &mut model, keys[&41005], 101, 3, 0x11)));
    assert!(!freed(from_client(&mut kb, &mut model, 41005, 3, 101, 0x10)), "not the FIN's acknowledgement");
    let o = from_client(&mut kb, &mut model, 41005, 3, 102, 0x10);
    assert_eq!((o.counter, o.extra), (Some(LbCounter::FlowHit), Some(LbCounter::NatPortFreed)), "the last ACK frees the port");
    let o = from_client(&mut kb, &mut model, 41006, 2, 101, 0x04);
    assert!(freed(o), "the client's exact RST frees the port");

    let entry = |kb: &KernelBalancer, p: u16| kb.maps().nat.get(&keys[&p], 0).ok();
    let closing: Vec<Option<u8>> = ports.iter().map(|p| entry(&kb, *p).map(|e| e.closing)).collect();
    assert_eq!(
        closing,
        [Some(0), Some(NAT_CLOSED), None, Some(NAT_TIME_WAIT), Some(0), None, None],
        "open, client FIN, backend RST (freed), backend FIN first, blind, FINs both ways and the last ACK (freed), client RST (freed)"
    );
    for p in [41002, 41005, 41006] {
        assert!(!remembered(&kb, CLIENT_V4, p, NAT4, 443, IPPROTO_TCP), "port {p}: a freed port's flow goes with it");
    }
    let knat: HashMap<NatKey, NatEntry> = kb.maps().nat.iter().map(|r| r.unwrap()).map(|(k, mut e)| {
        e.last_seen_ns = 0;
        (k, e)
    }).collect();
    let mnat: HashMap<NatKey, NatEntry> = model.nat.iter().map(|(k, e)| (*k, NatEntry { last_seen_ns: 0, ..*e })).collect();
    assert_eq!(knat, mnat, "the model marks and frees the same entries");

    // The sweep: closed entries go after `tcp_closed`, with their flows;
    // the open and the TIME_WAIT ones stay.
    let keep: std::collections::BTreeSet<u16> = [41000, 41003, 41004].iter().map(|p| keys[p].nat_port).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let secs = std::time::Duration::from_secs;
    let t = lb_user::datapath::sweep::Timeouts { tcp: secs(900), tcp_closed: std::time::Duration::from_millis(10), tcp_time_wait: secs(120), udp: secs(300), tcp_half_open: secs(5), udp_unreplied: secs(5) };
    assert_eq!(lb_user::datapath::sweep::sweep_nat(kb.maps_mut(), &t).unwrap(), 1);
    let left: std::collections::BTreeSet<u16> = kb.maps().nat.keys().map(|k| k.unwrap().nat_port).collect();
    assert_eq!(left, keep, "the open and the TIME_WAIT connections keep their ports");
    assert!(!remembered(&kb, CLIENT_V4, 41001, NAT4, 443, IPPROTO_TCP) && remembered(&kb, CLIENT_V4, 41000, NAT4, 443, IPPROTO_TCP), "flows go with their ports");
    // ... and TIME_WAIT after its own timeout.
    let t = lb_user::datapath::sweep::Timeouts { tcp_time_wait: std::time::Duration::from_millis(10), ..t };
    assert_eq!(lb_user::datapath::sweep::sweep_nat(kb.maps_mut(), &t).unwrap(), 1);
}

/// On the outside interface a new flow from a source that cannot be real
/// there (a backend's network, the inside address, a VIP, loopback, the
/// edge's own address) takes nothing: dropped and counted
/// (`drop_impossible_source`), no flow and no NAT entry; a client's flow
/// is placed as before, and the same backend-network source on the inside
/// interface (one-armed) is not refused.
/// Rule 2a: a VIP's packet, a reply to a SNAT port and a path-MTU error
/// in a frame for another MAC (a neighbour's on a bridged or promiscuous
/// port, broadcast, multicast) go to the kernel unchanged and counted,
/// taking nothing; the same frames to the interface's own MAC are
/// balanced as before. An interface whose MAC was never written is not
/// checked.
#[test]
fn frames_to_other_macs_are_passed_not_balanced() {
    let Some(mut fx) = Fixture::new("lbfxmac") else { return };
    let others = [[2, 0, 0, 0, 0x99, 1], [0xff; 6], [1, 0, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1]];
    let other_host = (Action::Pass, Some(LbCounter::OtherHost));
    for (client, vips) in [(CLIENT_V4, [NAT4, DSR4, L2_4]), (CLIENT_V6, [NAT6, DSR6, L2_6])] {
        for vip in vips {
            for (i, dst) in others.iter().enumerate() {
                let syn = L4::tcp_syn(40100 + i as u16, 443);
                let frame = ip_frame(&FrameBuilder::new(neighbour_mac(ip(client)), *dst), client, vip, &syn, |_| {}, |_| {});
                let (o, out) = fx.run(&frame, fx.out_if);
                assert_eq!((o.action, o.counter), other_host, "{vip} to {dst:02x?}");
                assert_eq!(out, frame, "passed unchanged");
                let data = L4::tcp_ack(40100 + i as u16, 443, b"data");
                let frame = ip_frame(&FrameBuilder::new(neighbour_mac(ip(client)), *dst), client, vip, &data, |_| {}, |_| {});
                assert_eq!((|(o, _): (Outcome, _)| (o.action, o.counter))(fx.run(&frame, fx.out_if)), other_host);
            }
        }
    }
    assert_eq!(fx.kb.maps().flows.keys().count(), 0, "no flow remembered");
    assert_eq!(fx.kb.maps().nat.keys().count(), 0, "no NAT entry taken");

    // To the outside interface's MAC: balanced. Its own MAC, arriving on
    // the inside interface: another interface's, passed.
    let syn = L4::tcp_syn(40200, 443);
    let (o, _) = fx.client_sends(CLIENT_V4, NAT4, &syn);
    assert_eq!((o.action, o.counter), (Action::Redirect(fx.in_if), Some(LbCounter::NewFlow)));
    let frame = client_frame(&fx.kb, CLIENT_V4, NAT4, &syn);
    let (o, _) = fx.run(&frame, fx.in_if);
    assert_eq!((o.action, o.counter), other_host);

    // The backend's reply to the flow's SNAT port: balanced to the inside
    // interface's MAC, passed to another.
    let flow = flow_of(&fx.kb, CLIENT_V4, 40200, NAT4, 443, IPPROTO_TCP);
    let backend = backend_addr(&fx.kb, flow.backend).to_string();
    let synack = L4::Tcp { sport: 443, dport: flow.nat_port, seq: 99, ack: 0x1000_0001, flags: 0x12, window: 1000, payload: Vec::new() };
    for dst in others {
        let frame = ip_frame(&FrameBuilder::new(neighbour_mac(ip(&backend)), dst), &backend, "10.1.0.1", &synack, |_| {}, |_| {});
        let (o, _) = fx.run(&frame, fx.in_if);
        assert_eq!((o.action, o.counter), other_host, "a reply to {dst:02x?}");
        // A port nobody holds: not a forged reply of ours either.
        let frame = ip_frame(&FrameBuilder::new(neighbour_mac(ip(&backend)), dst), &backend, "10.1.0.1", &reply_to(1030), |_| {}, |_| {});
        let (o, _) = fx.run(&frame, fx.in_if);
        assert_eq!((o.action, o.counter), other_host, "a stray reply to {dst:02x?}");
    }
    let frame = ip_frame(&FrameBuilder::new(neighbour_mac(ip(&backend)), fx.kb.net.in_mac), &backend, "10.1.0.1", &synack, |_| {}, |_| {});
    let (o, _) = fx.run(&frame, fx.in_if);
    assert_eq!((o.action, o.counter), (Action::Redirect(fx.out_if), Some(LbCounter::NatReply)));

    // A path-MTU error about the flow, to a neighbour's MAC: passed.
    let sent = ip_frame(&FrameBuilder::new([0; 6], [0; 6]), NAT4, CLIENT_V4, &reply_to(40200), |_| {}, |_| {});
    let err = icmp_error("198.51.100.9", NAT4, &sent[14..], 28, 64);
    let (o, _) = fx.run(&FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), others[0]).ip(&err), fx.out_if);
    assert_eq!((o.action, o.counter), other_host);

    // An interface whose MAC is not known is not checked.
    fx.kb.maps_mut().if_macs.set(fx.out_if, IfMac::default(), 0).unwrap();
    fx.model.if_macs.insert(fx.out_if, IfMac::default());
    let frame = ip_frame(&FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), others[0]), CLIENT_V4, DSR4, &L4::tcp_syn(40300, 443), |_| {}, |_| {});
    let (o, _) = fx.run(&frame, fx.out_if);
    assert_eq!((o.action, o.counter), (Action::Redirect(fx.in_if), Some(LbCounter::NewFlow)));
    fx.finish();
}

#[test]
fn impossible_sources_place_no_flow() {
    if !root_or_skip() {
        return;
    }
    let mut kb = KernelBalancer::new("lbmartian");
    kb.apply(&desired());
    let _zone = kb.bind_zone();
    let mut model = kb.model();
    let (out_if, in_if) = (kb.net.out_ifindex, kb.net.in_ifindex);
    let before = kb.maps().counters().unwrap()[LbCounter::ImpossibleSource as usize];
    let forged = [("10.1.0.50", NAT4), ("10.1.0.1", NAT4), (DSR4, NAT4), ("127.0.0.1", NAT4), ("198.51.100.1", DSR4), ("fd00:1::50", NAT6), ("::1", DSR6)];
    for (i, (src, vip)) in forged.iter().enumerate() {
        let frame = client_frame(&kb, src, vip, &L4::tcp_syn(42000 + i as u16, 443));
        let (o, _) = both(&mut kb, &mut model, &frame, out_if);
        assert_eq!((o.action, o.counter), (Action::Drop, Some(LbCounter::ImpossibleSource)), "{src} → {vip}");
        assert!(kb.maps().flows.keys().filter_map(Result::ok).all(|k| k.src != addr_key(ip(src)).0), "a flow from {src}");
    }
    let after = kb.maps().counters().unwrap()[LbCounter::ImpossibleSource as usize];
    assert_eq!(after - before, forged.len() as u64);
    assert!(kb.maps().nat.keys().next().is_none(), "no NAT entry for a refused flow");
    let frame = client_frame(&kb, CLIENT_V4, NAT4, &L4::tcp_syn(43000, 443));
    let (o, _) = both(&mut kb, &mut model, &frame, out_if);
    assert_eq!(o.counter, Some(LbCounter::NewFlow));
    let frame = inside_frame(&kb, "10.1.0.50", NAT4, &L4::tcp_syn(43001, 443));
    let (o, _) = both(&mut kb, &mut model, &frame, in_if);
    assert_eq!(o.counter, Some(LbCounter::NewFlow), "the inside interface has no such rules");
}

/// The fixture with firewall rules: `nat4` allows its clients' /24 but
/// denies a /32, a /26 around it and a /25 (in which a /32 is allowed: deny
/// wins); `dsr4` denies everyone (/0) beside an allowed /32; `l2-4` has no
/// rules; `nat6` allows a /48 and denies a /128 in it; `dsr6` only denies.
fn firewall_desired() -> Desired {
    let mut d = desired();
    let set = |d: &mut Desired, name: &str, allow: &[&str], deny: &[&str]| {
        let prefix = |p: &&str| {
            let (a, l) = p.split_once('/').unwrap();
            (ip(a), l.parse::<u8>().unwrap())
        };
        let v = d.vips.iter_mut().find(|v| v.name == name).unwrap();
        v.allow = allow.iter().map(prefix).collect();
        v.deny = deny.iter().map(prefix).collect();
    };
    set(&mut d, "nat4", &["198.51.100.0/24", "198.51.100.130/32"], &["198.51.100.77/32", "198.51.100.64/26", "198.51.100.128/25"]);
    set(&mut d, "dsr4", &["198.51.100.2/32"], &["0.0.0.0/0"]);
    set(&mut d, "nat6", &["2001:db8:1::/48"], &["2001:db8:1::77/128"]);
    set(&mut d, "dsr6", &[], &["2001:db8:1::3/128"]);
    d
}

/// The counter slot of `vip`'s `deny` prefix, or (`prefix` `*`) of its
/// sources outside the allow list.
fn fw_slot(kb: &KernelBalancer, vip: &str, prefix: &str) -> u32 {
    let v = kb.applied.iter().find(|v| v.name == vip).unwrap();
    if prefix == "*" {
        return lb_common::firewall::not_allowed_slot(v.table);
    }
    v.firewall.iter().find(|f| f.prefix == prefix && f.action == "deny").and_then(|f| f.slot).unwrap()
}

/// Every firewall counter of the kernel, by slot.
fn fw_counters(kb: &KernelBalancer) -> Vec<u64> {
    (0..lb_common::firewall::FIREWALL_COUNTERS).map(|i| kb.firewall_drops(i)).collect()
}

/// Rule 3b: allowed, denied, not in the allow list, deny over allow both
/// ways, the shortest and longest prefixes, both families, IPv4 options,
/// TTL 1, tagged frames and fragments; kernel and model agree on the
/// action, the bytes, and the counter slot of every drop.
#[test]
fn firewall_rules_decide_like_the_model() {
    let Some(mut fx) = Fixture::with("lbfxfw", &firewall_desired()) else { return };
    let before = fw_counters(&fx.kb);
    let mut model_fw = vec![0u64; before.len()];
    let kb = &fx.kb;
    let syn = L4::tcp_syn(41000, 443);
    let outside = FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), kb.net.out_mac);
    let tagged = FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), kb.net.out_mac).vlan(0x8100, 7);
    let slot = |vip: &str, prefix: &str| Some(fw_slot(kb, vip, prefix));
    // (name, frame, action, counter, firewall slot)
    let cases: Vec<(&str, Vec<u8>, Action, Option<LbCounter>, Option<u32>)> = vec![
        ("allowed", client_frame(kb, CLIENT_V4, NAT4, &syn), Action::Redirect(fx.in_if), Some(LbCounter::NewFlow), None),
        ("denied /32", client_frame(kb, "198.51.100.77", NAT4, &syn), Action::Drop, None, slot("nat4", "198.51.100.77/32")),
        ("denied by the /26", client_frame(kb, "198.51.100.70", NAT4, &syn), Action::Drop, None, slot("nat4", "198.51.100.64/26")),
        ("allowed /32 inside a denied /25", client_frame(kb, "198.51.100.130", NAT4, &syn), Action::Drop, None, slot("nat4", "198.51.100.128/25")),
        ("not in the allow list", client_frame(kb, "192.0.2.5", NAT4, &syn), Action::Drop, None, slot("nat4", "*")),
        ("denied UDP", client_frame(kb, "198.51.100.77", NAT4, &L4::udp(5000, 53, b"q")), Action::Drop, None, slot("nat4", "198.51.100.77/32")),
        ("deny /0 over an allowed /32", client_frame(kb, CLIENT_V4, DSR4, &syn), Action::Drop, None, slot("dsr4", "0.0.0.0/0")),
        ("a VIP without rules", client_frame(kb, "198.51.100.77", L2_4, &syn), Action::Redirect(fx.in_if), Some(LbCounter::NewFlow), None),
        ("IPv6 allowed", client_frame(kb, CLIENT_V6, NAT6, &syn), Action::Redirect(fx.in_if), Some(LbCounter::NewFlow), None),
        ("IPv6 denied /128", client_frame(kb, "2001:db8:1::77", NAT6, &syn), Action::Drop, None, slot("nat6", "2001:db8:1::77/128")),
        ("IPv6 not in the allow list", client_frame(kb, "2001:db8:2::1", NAT6, &syn), Action::Drop, None, slot("nat6", "*")),
        ("IPv6 deny only: denied", client_frame(kb, "2001:db8:1::3", DSR6, &syn), Action::Drop, None, slot("dsr6", "2001:db8:1::3/128")),
        ("IPv6 deny only: others pass", client_frame(kb, CLIENT_V6, DSR6, &syn), Action::Redirect(fx.in_if), Some(LbCounter::NewFlow), None),
        ("denied with IPv4 options", ip_frame(&outside, "198.51.100.77", NAT4, &syn, |h| h.options = vec![1, 1, 1, 1], |_| {}), Action::Drop, None, slot("nat4", "198.51.100.77/32")),
        ("allowed with IPv4 options", ip_frame(&outside, CLIENT_V4, NAT4, &L4::tcp_syn(41001, 443), |h| h.options = vec![1, 1, 1, 1], |_| {}), Action::Redirect(fx.in_if), Some(LbCounter::NewFlow), None),
        ("denied with TTL 1: dropped, not handed to the kernel", ip_frame(&outside, "198.51.100.77", NAT4, &syn, |h| h.ttl = 1, |_| {}), Action::Drop, None, slot("nat4", "198.51.100.77/32")),
        ("denied, VLAN-tagged: never the balancer's", ip_frame(&tagged, "198.51.100.77", NAT4, &syn, |_| {}, |_| {}), Action::NextStage, None, None),
        ("denied first fragment", ip_frame(&outside, "198.51.100.77", NAT4, &syn, |h| h.more_fragments = true, |_| {}), Action::Drop, Some(LbCounter::Unbalanceable), None),
        ("denied later fragment", ip_frame(&outside, "198.51.100.77", NAT4, &syn, |h| h.frag_offset = 8, |_| {}), Action::Drop, Some(LbCounter::Unbalanceable), None),
    ];
    for (name, frame, action, counter, fw) in &cases {
        let (o, _) = fx.run(frame, fx.out_if);
        assert_eq!((o.action, o.counter, o.firewall), (*action, *counter, *fw), "{name}");
        if let Some(s) = o.firewall {
            model_fw[s as usize] += 1;
        }
    }
    let after = fw_counters(&fx.kb);
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, model_fw, "kernel firewall counters vs model");
    fx.finish();
}

/// A deny added to the running config ends an established (proven,
/// remembered) `nat` flow at its next packet, and one for a `dsr` flow;
/// taking it out again lets the same flow on, on its backend.
#[test]
fn a_new_deny_applies_to_established_flows_at_once() {
    let Some(mut fx) = Fixture::new("lbfxfwlive") else { return };
    let client = "198.51.100.3";
    fx.client_sends(client, NAT4, &L4::tcp_syn(42000, 443));
    prove(&mut fx.kb, &mut fx.model, &mut fx.m, (client, 42000), NAT4);
    let data = L4::Tcp { sport: 42000, dport: 443, seq: 0x1000_0001, ack: 100, flags: 0x18, window: 1000, payload: b"GET".to_vec() };
    let (o, _) = fx.client_sends(client, NAT4, &data);
    assert_eq!(o.counter, Some(LbCounter::FlowHit));
    let dsr = L4::tcp_ack(42001, 443, b"x");
    let (o, _) = fx.client_sends(client, DSR4, &dsr);
    assert_eq!(o.counter, Some(LbCounter::FlowHit), "a DSR flow, remembered at its first packet");
    let flow = flow_of(&fx.kb, client, 42000, NAT4, 443, IPPROTO_TCP);

    let mut d = desired();
    for v in d.vips.iter_mut().filter(|v| v.name == "nat4" || v.name == "dsr4") {
        v.deny = vec![(ip("198.51.100.0"), 30)];
    }
    fx.kb.apply(&d);
    fx.model.firewall = fx.kb.firewall_rules();
    fx.model.reload(fx.kb.maps());
    let (o, _) = fx.client_sends(client, NAT4, &data);
    assert_eq!((o.action, o.firewall), (Action::Drop, Some(fw_slot(&fx.kb, "nat4", "198.51.100.0/30"))), "the established flow's next packet");
    let (o, _) = fx.client_sends(client, DSR4, &dsr);
    assert_eq!((o.action, o.firewall), (Action::Drop, Some(fw_slot(&fx.kb, "dsr4", "198.51.100.0/30"))));
    let (o, _) = fx.client_sends("198.51.100.9", NAT4, &L4::tcp_syn(42002, 443));
    assert_eq!(o.counter, Some(LbCounter::NewFlow), "a client outside the deny");

    fx.kb.apply(&desired());
    fx.model.firewall = fx.kb.firewall_rules();
    fx.model.reload(fx.kb.maps());
    assert!(fx.kb.maps().firewall_v4.keys().next().is_none(), "the prefixes are removed with the rules");
    let (o, _) = fx.client_sends(client, NAT4, &data);
    assert_eq!(o.counter, Some(LbCounter::FlowHit), "allowed again: the flow goes on");
    assert_eq!(flow_of(&fx.kb, client, 42000, NAT4, 443, IPPROTO_TCP), flow, "on its backend and SNAT port");
    fx.finish();
}

/// Rule 9b: a path-MTU error about an allowed client's flow is dropped at
/// the deny's counter when a `deny` contains its sender, and forwarded
/// otherwise — from inside the allow list or outside it (the allow list
/// names clients, not routers); IPv4 and IPv6, kernel against model.
#[test]
fn icmp_errors_from_a_denied_sender_are_dropped() {
    let Some(mut fx) = Fixture::with("lbfxfwicmp", &firewall_desired()) else { return };
    let data = L4::Tcp { sport: 443, dport: 40000, seq: 9, ack: 5, flags: 0x18, window: 500, payload: vec![7; 1400] };
    let cases = [
        (CLIENT_V4, NAT4, "nat4", [("198.51.100.9", None), ("198.51.100.77", Some("198.51.100.77/32")), ("192.0.2.1", None)]),
        (CLIENT_V6, NAT6, "nat6", [("2001:db8:1::9", None), ("2001:db8:1::77", Some("2001:db8:1::77/128")), ("2001:db8:2::1", None)]),
    ];
    for (client, vip, name, senders) in cases {
        fx.client_sends(client, vip, &L4::tcp_syn(40000, 443));
        prove(&mut fx.kb, &mut fx.model, &mut fx.m, (client, 40000), vip);
        let sent = ip_frame(&FrameBuilder::new([0; 6], [0; 6]), vip, client, &data, |_| {}, |_| {});
        for (router, refused) in senders {
            let err = icmp_error(router, vip, &sent[14..], 68, 60);
            let frame = FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), fx.kb.net.out_mac).ip(&err);
            let out_if = fx.out_if;
            let (o, _) = fx.run(&frame, out_if);
            match refused {
                None => assert_eq!((o.action, o.counter), (Action::Redirect(fx.in_if), Some(LbCounter::IcmpForwarded)), "{router}"),
                Some(rule) => assert_eq!((o.action, o.firewall), (Action::Drop, Some(fw_slot(&fx.kb, name, rule))), "{router}"),
            }
        }
    }
    fx.finish();
}

/// Every evasion form of the isolator's suite (`harness::evasion`: VLAN
/// and QinQ tags, IPv4 options, fragments of every shape, IPv6 extension
/// headers and fragments, translated addresses, odd flags) sent from a
/// denied source to firewalled VIPs: the balancer forwards none of its
/// frames (what it does not drop goes on to the isolator and the host,
/// never to a backend), the model agrees frame by frame; the same forms
/// from an allowed source are forwarded where the balancer balances them.
#[test]
fn evasion_forms_cannot_slip_past_a_deny() {
    use harness::evasion::{probes, techniques, Endpoints};
    let Some(mut fx) = Fixture::with("lbfxfwev", &firewall_desired()) else { return };
    let eth = FrameBuilder::new(neighbour_mac(ip(CLIENT_V4)), fx.kb.net.out_mac);
    let ts = techniques();
    let mut forwarded = HashMap::new();
    for (who, src4, src6) in [("denied", "198.51.100.77", "2001:db8:1::77"), ("allowed", CLIENT_V4, CLIENT_V6)] {
        let e = Endpoints {
            eth: eth.clone(),
            src4: src4.parse().unwrap(),
            dst4: NAT4.parse().unwrap(),
            src6: src6.parse().unwrap(),
            dst6: NAT6.parse().unwrap(),
            trusted4: CLIENT_V4.parse().unwrap(),
            decoy_tcp: 80,
            decoy_udp: 53,
        };
        let ps = probes(&e, &ts, &[443, 80], &[53], 30000);
        let mut n = 0;
        for p in &ps {
            for f in &p.frames {
                if f.len() < 14 {
                    continue;
                }
                let (o, _) = fx.run(f, fx.out_if);
                if matches!(o.action, Action::Tx | Action::Redirect(_)) {
                    n += 1;
                    assert_eq!(who, "allowed", "{} from the denied source was forwarded: {o:?}", ts[p.technique].name);
                }
            }
        }
        println!("{who}: {} probes over {} techniques, {n} frames forwarded", ps.len(), ts.len());
        forwarded.insert(who, n);
    }
    assert!(forwarded["allowed"] > 0, "the allowed source's plain forms are forwarded");
    let drops: u64 = fw_counters(&fx.kb).iter().sum();
    assert!(drops > 0, "the firewall counted the denied forms it saw");
    fx.finish();
}

/// A TCP segment with `options` (whole words), its checksum over the
/// pseudo-header of `src` → `dst`, computed here from scratch.
#[allow(clippy::too_many_arguments)]
fn tcp_with_options(src: IpAddr, dst: IpAddr, (sport, dport): (u16, u16), seq: u32, ack: u32, flags: u8, options: &[u8], payload: &[u8]) -> L4 {
    assert_eq!(options.len() % 4, 0);
    let mut h = Vec::new();
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend(seq.to_be_bytes());
    h.extend(ack.to_be_bytes());
    h.push(((5 + options.len() / 4) as u8) << 4);
    h.push(flags);
    h.extend(1000u16.to_be_bytes());
    h.extend([0, 0, 0, 0]);
    h.extend(options);
    h.extend(payload);
    let (s, d) = (addr_key(src).0, addr_key(dst).0);
    let n = if src.is_ipv4() { 4 } else { 16 };
    let pseudo = sum16(&s[..n], sum16(&d[..n], u32::from(IPPROTO_TCP) + h.len() as u32));
    let c = fold(sum16(&h, pseudo));
    h[16..18].copy_from_slice(&c.to_be_bytes());
    L4::Raw { protocol: IPPROTO_TCP, bytes: h }
}

/// The PROXY protocol header of a TCP connection, written out from the
/// specification: v1's line (section 2.1; IPv6 as eight groups of four
/// hex digits) or v2's bytes (section 2.2).
fn proxy_header(version: u8, client: IpAddr, sport: u16, vip: IpAddr, dport: u16) -> Vec<u8> {
    if version == 1 {
        let text = |a: IpAddr| match a {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => a.segments().iter().map(|g| format!("{g:04x}")).collect::<Vec<_>>().join(":"),
        };
        let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!("PROXY {family} {} {} {sport} {dport}\r\n", text(client), text(vip)).into_bytes();
    }
    proxy_v2_header(client, sport, vip, dport)
}

/// The PROXY protocol v2 header of a TCP connection, written out byte by
/// byte from the specification (section 2.2).
fn proxy_v2_header(client: IpAddr, sport: u16, vip: IpAddr, dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    match (client, vip) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            h.extend([0x11, 0, 12]);
            h.extend(c.octets());
            h.extend(v.octets());
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            h.extend([0x21, 0, 36]);
            h.extend(c.octets());
            h.extend(v.octets());
        }
        _ => unreachable!(),
    }
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h
}

/// `proxy_protocol = "v1"` or `"v2"` (`version`): one connection through
/// a VIP with the option, every rule of `proxy_protocol` in order, each
/// packet through kernel and model (same action, bytes, counters and NAT
/// entries) and its output also built independently here. The client's
/// ports are `sport` and the two after it (a v1 line's length depends on
/// them).
fn proxy_flow(tag: &str, version: u8, client: &str, vip: &str, sport: u16) {
    let Some(mut fx) = Fixture::new(tag) else { return };
    let (client_ip, vip_ip) = (ip(client), ip(vip));
    let inside = ip(if client_ip.is_ipv4() { "10.1.0.1" } else { "fd00:1::1" });
    let isn = 0x1000_0000u32;
    let hlen = proxy_header(version, client_ip, sport, vip_ip, 443).len() as u32;
    let (o, _) = fx.client_sends(client, vip, &L4::tcp_syn(sport, 443));
    assert_eq!(o.counter, Some(LbCounter::NewFlow));
    let flow = flow_of(&fx.kb, client, sport, vip, 443, IPPROTO_TCP);
    let backend = backend_addr(&fx.kb, flow.backend);
    let to_backend = |fx: &Fixture, l4: &L4| ip_frame(&FrameBuilder::new(fx.kb.net.in_mac, neighbour_mac(backend)), &inside.to_string(), &backend.to_string(), l4, |h| h.ttl = 63, |h| h.hop_limit = 63);
    // Back to the MAC the flow came from (`client_frame`'s, for both
    // families).
    let to_client = |fx: &Fixture, l4: &L4| ip_frame(&FrameBuilder::new(fx.kb.net.out_mac, neighbour_mac(ip(CLIENT_V4))), vip, client, l4, |h| h.ttl = 63, |h| h.hop_limit = 63);
    let from_backend = |fx: &mut Fixture, l4: &L4| {
        let frame = ip_frame(&FrameBuilder::new(neighbour_mac(backend), fx.kb.net.in_mac), &backend.to_string(), &inside.to_string(), l4, |_| {}, |_| {});
        let in_if = fx.in_if;
        fx.run(&frame, in_if)
    };
    let nat = flow.nat_port;
    let c2b = |seq, ack, flags, payload: &[u8]| tcp_with_options(client_ip, vip_ip, (sport, 443), seq, ack, flags, &[], payload);
    let c2b_out = |seq, ack, flags, payload: &[u8]| tcp_with_options(inside, backend, (nat, 443), seq, ack, flags, &[], payload);

    // The SYN-ACK: MSS 1460 (SACK permitted, timestamps, window scale 7)
    // reaches the client lowered by the header's length.
    let opts = |mss: u16| {
        let mut o = vec![2, 4];
        o.extend(mss.to_be_bytes());
        o.extend([4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);
        o
    };
    let synack = tcp_with_options(backend, inside, (443, nat), 99, isn + 1, 0x12, &opts(1460), &[]);
    let (o, out) = from_backend(&mut fx, &synack);
    assert_eq!(o.counter, Some(LbCounter::NatReply));
    let want = tcp_with_options(vip_ip, client_ip, (443, sport), 99, isn + 1, 0x12, &opts(1460 - hlen as u16), &[]);
    assert_eq!(out, to_client(&fx, &want), "the SYN-ACK's MSS is lowered by {hlen}");

    // The handshake's ACK: unchanged; it proves the flow, which is
    // remembered as one whose packets read the entry.
    let (o, out) = fx.client_sends(client, vip, &c2b(isn + 1, 100, 0x10, &[]));
    assert_eq!(o.extra, Some(LbCounter::FlowProven));
    assert_eq!(out, to_backend(&fx, &c2b_out(isn + 1, 100, 0x10, &[])));
    assert_eq!(flow_of(&fx.kb, client, sport, vip, 443, IPPROTO_TCP).flags, FLOW_PROXY);

    // The first data segment: the header between TCP header and payload;
    // its retransmission gets it again.
    let request = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".repeat(3);
    let mut with_header = proxy_header(version, client_ip, sport, vip_ip, 443);
    assert_eq!(with_header.len() as u32, hlen);
    with_header.extend(&request);
    for _ in 0..2 {
        let (o, out) = fx.client_sends(client, vip, &c2b(isn + 1, 100, 0x18, &request));
        assert_eq!(o.counter, Some(LbCounter::FlowHit));
        assert_eq!(out, to_backend(&fx, &c2b_out(isn + 1, 100, 0x18, &with_header)), "the header in front of the first byte");
    }
    // A later segment, sent before the backend acknowledged: shifted.
    let more = isn + 1 + request.len() as u32;
    let (_, out) = fx.client_sends(client, vip, &c2b(more, 100, 0x18, b"body"));
    assert_eq!(out, to_backend(&fx, &c2b_out(more + hlen, 100, 0x18, b"body")));

    // The backend acknowledges part of what it got with a SACK block for
    // the rest: the SACK edges move back; the acknowledgement of the
    // header does not exist for the client yet… then all of it.
    let sack = |l: u32, r: u32| {
        let mut o = vec![1, 1, 5, 10];
        o.extend(l.to_be_bytes());
        o.extend(r.to_be_bytes());
        o
    };
    let b_more = more + hlen;
    let (_, out) = from_backend(&mut fx, &tcp_with_options(backend, inside, (443, nat), 100, isn + 1, 0x10, &sack(b_more, b_more + 4), &[]));
    assert_eq!(out, to_client(&fx, &tcp_with_options(vip_ip, client_ip, (443, sport), 100, isn + 1, 0x10, &sack(more, more + 4), &[])), "SACK edges −{hlen}, the ack unchanged");
    let (_, out) = from_backend(&mut fx, &tcp_with_options(backend, inside, (443, nat), 100, b_more + 4, 0x18, &[], b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(out, to_client(&fx, &tcp_with_options(vip_ip, client_ip, (443, sport), 100, more + 4, 0x18, &[], b"HTTP/1.1 200 OK\r\n")), "the acknowledgement −{hlen}");
    // Now every client segment moves, a late copy of the first one too.
    let (_, out) = fx.client_sends(client, vip, &c2b(isn + 1, 117, 0x18, &request));
    assert_eq!(out, to_backend(&fx, &c2b_out(isn + 1 + hlen, 117, 0x18, &request)), "after the acknowledgement: shifted, no header");
    let (_, out) = fx.client_sends(client, vip, &c2b(more + 4, 117, 0x10, &[]));
    assert_eq!(out, to_backend(&fx, &c2b_out(b_more + 4, 117, 0x10, &[])), "a pure ACK");
    // FIN both ways, shifted and moved back, and the last ACK frees the port.
    let (o, out) = fx.client_sends(client, vip, &c2b(more + 4, 117, 0x11, &[]));
    assert_eq!(o.action, Action::Redirect(fx.in_if));
    assert_eq!(out, to_backend(&fx, &c2b_out(b_more + 4, 117, 0x11, &[])), "the client's FIN");
    let (_, out) = from_backend(&mut fx, &tcp_with_options(backend, inside, (443, nat), 117, b_more + 5, 0x11, &[], &[]));
    assert_eq!(out, to_client(&fx, &tcp_with_options(vip_ip, client_ip, (443, sport), 117, more + 5, 0x11, &[], &[])), "the backend's FIN");
    let (o, out) = fx.client_sends(client, vip, &c2b(more + 5, 118, 0x10, &[]));
    assert_eq!(o.extra, Some(LbCounter::NatPortFreed), "the last ACK, shifted, is exact");
    assert_eq!(out, to_backend(&fx, &c2b_out(b_more + 5, 118, 0x10, &[])));
    let knat: HashMap<NatKey, NatEntry> = fx.kb.maps().nat.iter().map(|r| r.unwrap()).map(|(k, e)| (k, NatEntry { last_seen_ns: 0, ..e })).collect();
    let mnat: HashMap<NatKey, NatEntry> = fx.model.nat.iter().map(|(k, e)| (*k, NatEntry { last_seen_ns: 0, ..*e })).collect();
    assert_eq!(knat, mnat);

    // A second connection is reset by the client before the backend
    // acknowledged its data: the RST is shifted, exact, and frees the port.
    let sport2 = sport + 1;
    fx.client_sends(client, vip, &L4::tcp_syn(sport2, 443));
    let nat2 = flow_of(&fx.kb, client, sport2, vip, 443, IPPROTO_TCP).nat_port;
    let backend2 = backend_addr(&fx.kb, flow_of(&fx.kb, client, sport2, vip, 443, IPPROTO_TCP).backend);
    let frame = ip_frame(&FrameBuilder::new(neighbour_mac(backend2), fx.kb.net.in_mac), &backend2.to_string(), &inside.to_string(), &tcp_with_options(backend2, inside, (443, nat2), 5, isn + 1, 0x12, &opts(1400), &[]), |_| {}, |_| {});
    let in_if = fx.in_if;
    fx.run(&frame, in_if);
    let c2 = |seq, ack, flags, payload: &[u8]| tcp_with_options(client_ip, vip_ip, (sport2, 443), seq, ack, flags, &[], payload);
    fx.client_sends(client, vip, &c2(isn + 1, 6, 0x10, &[]));
    let (o, out) = fx.client_sends(client, vip, &c2(isn + 1, 6, 0x18, b"x"));
    let mut header_x = proxy_header(version, client_ip, sport2, vip_ip, 443);
    header_x.push(b'x');
    let to_backend2 = ip_frame(&FrameBuilder::new(fx.kb.net.in_mac, neighbour_mac(backend2)), &inside.to_string(), &backend2.to_string(), &tcp_with_options(inside, backend2, (nat2, 443), isn + 1, 6, 0x18, &[], &header_x), |h| h.ttl = 63, |h| h.hop_limit = 63);
    assert_eq!(out, to_backend2, "one byte, the header in front");
    assert_eq!(o.counter, Some(LbCounter::FlowHit));
    let (o, _) = fx.client_sends(client, vip, &c2(isn + 2, 6, 0x04, &[]));
    assert_eq!(o.extra, Some(LbCounter::RstInexact), "not at the backend's acknowledgement: in the window only");

    // A third sends its only byte with its FIN (HTTP/1.0 style), and
    // sends both again: the header both times; the backend's
    // acknowledgement of header, byte and FIN reaches the client as the
    // byte's and the FIN's; the FIN marks the entry closing only once the
    // header is acknowledged.
    let sport3 = sport + 2;
    fx.client_sends(client, vip, &L4::tcp_syn(sport3, 443));
    let f3 = flow_of(&fx.kb, client, sport3, vip, 443, IPPROTO_TCP);
    let backend3 = backend_addr(&fx.kb, f3.backend);
    let b3 = |fx: &mut Fixture, l4: &L4| {
        let frame = ip_frame(&FrameBuilder::new(neighbour_mac(backend3), fx.kb.net.in_mac), &backend3.to_string(), &inside.to_string(), l4, |_| {}, |_| {});
        let in_if = fx.in_if;
        fx.run(&frame, in_if)
    };
    b3(&mut fx, &tcp_with_options(backend3, inside, (443, f3.nat_port), 5, isn + 1, 0x12, &opts(1400), &[]));
    let c3 = |seq, ack, flags, payload: &[u8]| tcp_with_options(client_ip, vip_ip, (sport3, 443), seq, ack, flags, &[], payload);
    let c3_out = |seq, ack, flags, payload: &[u8]| tcp_with_options(inside, backend3, (f3.nat_port, 443), seq, ack, flags, &[], payload);
    let to_backend3 = |fx: &Fixture, l4: &L4| ip_frame(&FrameBuilder::new(fx.kb.net.in_mac, neighbour_mac(backend3)), &inside.to_string(), &backend3.to_string(), l4, |h| h.ttl = 63, |h| h.hop_limit = 63);
    fx.client_sends(client, vip, &c3(isn + 1, 6, 0x10, &[]));
    let mut header_x = proxy_header(version, client_ip, sport3, vip_ip, 443);
    header_x.push(b'x');
    let hlen = header_x.len() as u32 - 1;
    let nat_entry = |fx: &Fixture| fx.kb.maps().nat.iter().map(|r| r.unwrap()).find(|(k, _)| k.nat_port == f3.nat_port && k.backend == addr_key(backend3).0).map(|(_, e)| e).unwrap();
    for _ in 0..2 {
        let (_, out) = fx.client_sends(client, vip, &c3(isn + 1, 6, 0x19, b"x"));
        assert_eq!(out, to_backend3(&fx, &c3_out(isn + 1, 6, 0x19, &header_x)), "the byte and the FIN behind the header");
        assert_eq!(nat_entry(&fx).closing, 0, "not marked before the header is acknowledged");
    }
    let (_, out) = b3(&mut fx, &tcp_with_options(backend3, inside, (443, f3.nat_port), 6, isn + 1 + hlen + 2, 0x10, &[], &[]));
    assert_eq!(out, to_client(&fx, &tcp_with_options(vip_ip, client_ip, (443, sport3), 6, isn + 3, 0x10, &[], &[])), "the byte and the FIN acknowledged");
    let (_, out) = fx.client_sends(client, vip, &c3(isn + 1, 6, 0x19, b"x"));
    assert_eq!(out, to_backend3(&fx, &c3_out(isn + 1 + hlen, 6, 0x19, b"x")), "a late copy: shifted");
    assert_eq!(nat_entry(&fx).closing, NAT_CLOSED, "now the FIN marks the entry");
    let knat: HashMap<NatKey, NatEntry> = fx.kb.maps().nat.iter().map(|r| r.unwrap()).map(|(k, e)| (k, NatEntry { last_seen_ns: 0, ..e })).collect();
    let mnat: HashMap<NatKey, NatEntry> = fx.model.nat.iter().map(|(k, e)| (*k, NatEntry { last_seen_ns: 0, ..*e })).collect();
    assert_eq!(knat, mnat);
    fx.finish();
}

#[test]
fn proxy_protocol_v2_ipv4_header_shift_sack_mss_fin() {
    proxy_flow("lbfxpp4", 2, CLIENT_V4, PROXY4, 40000);
}

#[test]
fn proxy_protocol_v2_ipv6_header_shift_sack_mss_fin() {
    proxy_flow("lbfxpp6", 2, CLIENT_V6, PROXY6, 40000);
}

/// v1's line, from a five-digit and from a four-digit client port: one
/// of the two lengths is odd in each family (the payload's bytes change
/// sides in the checksum's words), the other even.
#[test]
fn proxy_protocol_v1_ipv4_header_shift_sack_mss_fin() {
    proxy_flow("lbfxpv14", 1, CLIENT_V4, PROXY4_V1, 40000);
    proxy_flow("lbfxpv14", 1, CLIENT_V4, PROXY4_V1, 4000);
}

#[test]
fn proxy_protocol_v1_ipv6_header_shift_sack_mss_fin() {
    proxy_flow("lbfxpv16", 1, CLIENT_V6, PROXY6_V1, 40000);
    proxy_flow("lbfxpv16", 1, CLIENT_V6, PROXY6_V1, 4000);
}
