//! Seed inputs for the fuzz targets (written to `fuzz/corpus/<target>/` by
//! `tests/tests/fuzz_corpus.rs`'s `write_seeds`, and replayed from memory
//! by its tests too): the example and fixture configs, Engine API answers
//! shaped like real `docker node inspect` / `docker service inspect`
//! output, and frames from the harness's frame builders for every path of
//! the balancer model. The isolator's evasion fixtures come from the
//! differential test's generator (`tests/tests/common/gen.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    balancer::NatKey,
    wire::{FAMILY_V4, IPPROTO_TCP},
};
use serde_json::{json, Value};

use super::packet::{primed_tables, vip_address, IN_MAC, INSIDE_V4, INSIDE_V6, OUT_MAC};
use crate::{
    lb_kernel::{neighbour_mac, CLIENT_V4, CLIENT_V6},
    rawframe::{fold, sum16, ExtHeader, FrameBuilder, Ipv4, Ipv6, L4},
};

/// A named seed.
pub type Seed = (String, Vec<u8>);

/// Config texts: the repository's examples, the test fixtures, and the
/// TOML blocks of docs/config.md and README.md.
pub fn configs() -> Vec<Seed> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seeds: Vec<Seed> = Vec::new();
    for name in ["examples/swarmlb.toml", "examples/demo.toml"] {
        let text = std::fs::read(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        seeds.push((name.replace(['/', '.'], "-"), text));
    }
    for doc in ["docs/config.md", "README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        for (i, block) in text.split("```toml").skip(1).enumerate() {
            let body = block.split("```").next().unwrap_or_default();
            seeds.push((format!("{}-{i}", doc.replace(['/', '.'], "-")), body.as_bytes().to_vec()));
        }
    }
    seeds.push(("kernel-fixture".into(), crate::kernel::FIXTURE_CONFIG.as_bytes().to_vec()));
    let swarm = super::swarm::CONFIG.replace("{SELECTOR}", "\"node.labels.lb==proxy\"");
    seeds.push(("swarm-fixture".into(), swarm.into_bytes()));
    // A few invalid ones, one per kind of error.
    for (name, text) in [
        ("bad-port", "[[interface]]\nname = \"eth1\"\nzone = \"dmz\"\n[zone.dmz]\nprotected = [\"tcp/70000\"]\n"),
        ("bad-cidr", "[zone.dmz]\nallow = [\"10.0.0.1/24\"]\n"),
        ("unknown-key", "[settings]\npin_pth = \"/x\"\n"),
        ("vip-without-balancer", "[[vip]]\naddress = \"203.0.113.1\"\nrules = [\"tcp/443\"]\n"),
        ("bad-selector", "[swarm]\n[balancer]\noutside_interfaces = [\"e1\"]\ninside_interface = \"e2\"\n[[vip]]\naddress = \"203.0.113.1\"\nrules = [\"tcp/443\"]\nbackends_from = \"node.labels.==x\"\n"),
        ("health-timeout", "[balancer]\noutside_interfaces = [\"e1\"]\ninside_interface = \"e2\"\n[[vip]]\naddress = \"2001:db8::1\"\nmode = \"dsr\"\nrules = [\"udp/53\"]\nbackends = [{ address = \"2001:db8::2\", weight = 0 }]\nhealth_check = { interval_s = 3, timeout_s = 4 }\n"),
        ("table-size", "[balancer]\noutside_interfaces = [\"e1\"]\ninside_interface = \"e2\"\ntable_size = 251\nsnat_ports = \"2000-2063\"\n[[vip]]\naddress = \"203.0.113.1\"\nrules = [\"tcp/80:8080\", \"udp/53\"]\nbackends = [\"10.0.0.1\", { address = \"10.0.0.2\", weight = 3 }]\n"),
    ] {
        seeds.push((name.into(), text.as_bytes().to_vec()));
    }
    seeds
}

/// A node as `docker node inspect` prints it (API 1.41+).
fn node(id: &str, hostname: &str, role: &str, addr: &str, state: &str, availability: &str, labels: Value) -> Value {
    let mut n = json!({
        "ID": id,
        "Version": {"Index": 9},
        "CreatedAt": "2026-11-30T10:00:00.000000000Z",
        "UpdatedAt": "2026-11-30T10:05:00.000000000Z",
        "Spec": {"Labels": labels, "Role": role, "Availability": availability},
        "Description": {
            "Hostname": hostname,
            "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": {"NanoCPUs": 2000000000, "MemoryBytes": 4104318976u64},
            "Engine": {"EngineVersion": "26.1.5", "Plugins": [{"Type": "Network", "Name": "overlay"}]},
            "TLSInfo": {"TrustRoot": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"}
        },
        "Status": {"State": state, "Addr": addr}
    });
    if role == "manager" {
        n["ManagerStatus"] = json!({"Leader": true, "Reachability": "reachable", "Addr": format!("{addr}:2377")});
    }
    n
}

/// A service as `docker service inspect` prints it.
fn service(id: &str, name: &str, constraints: &[&str], ports: &[(&str, u16, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(proto, target, published, mode)| json!({"Protocol": proto, "TargetPort": target, "PublishedPort": published, "PublishMode": mode}))
        .collect();
    json!({
        "ID": id,
        "Version": {"Index": 27},
        "CreatedAt": "2026-11-30T10:06:00.000000000Z",
        "UpdatedAt": "2026-11-30T10:06:00.000000000Z",
        "Spec": {
            "Name": name,
            "Labels": {},
            "TaskTemplate": {
                "ContainerSpec": {"Image": "nginx:1.27@sha256:0000000000000000000000000000000000000000000000000000000000000000", "Isolation": "default"},
                "Resources": {"Limits": {}, "Reservations": {}},
                "Placement": {"Constraints": constraints, "Platforms": [{"Architecture": "amd64", "OS": "linux"}]},
                "ForceUpdate": 0,
                "Runtime": "container"
            },
            "Mode": {"Replicated": {"Replicas": 2}},
            "EndpointSpec": {"Mode": "vip", "Ports": ports}
        },
        "Endpoint": {
            "Spec": {"Mode": "vip", "Ports": ports},
            "Ports": ports,
            "VirtualIPs": [{"NetworkID": "x1y2z3", "Addr": "10.0.0.5/24"}]
        }
    })
}

/// Swarm mapping inputs: a cluster over several answers (a label removed,
/// a node drained and down, a manager restart's `unknown` states), odd
/// data, and selector texts.
pub fn swarm() -> Vec<Seed> {
    let proxy = || json!({"lb": "proxy", "zone": "dmz"});
    let nodes = vec![
        node("mgr1xq0m1c0h6ltp9n4u7z3k2", "manager-1", "manager", "10.0.1.1", "ready", "active", json!({"zone": "intra"})),
        node("wkr1a9b8c7d6e5f4g3h2i1j0k", "proxy-1", "worker", "10.0.1.2", "ready", "active", proxy()),
        node("wkr2l9m8n7o6p5q4r3s2t1u0v", "proxy-2", "worker", "10.0.1.3", "ready", "active", json!({"lb": "proxy", "zone": "dmz", "swarmlb.weight": "3", "swarmlb.address": "10.0.2.3,2001:db8::3"})),
        node("wkr3w9x8y7z6a5b4c3d2e1f0g", "db-1", "worker", "10.0.1.4", "ready", "active", json!({"zone": "intra"})),
    ];
    let services = vec![
        service("svc1km5mreiogaah97skz3hoh", "db", &["node.labels.zone==intra"], &[("tcp", 5432, 5432, "host")]),
        service("svc2km5mreiogaah97skz3hoh", "web", &["node.labels.zone == dmz", "node.role==worker"], &[("tcp", 8080, 8443, "ingress"), ("udp", 53, 30053, "ingress")]),
        service("svc3km5mreiogaah97skz3hoh", "backoffice", &["node.labels.zone==backoffice"], &[("tcp", 80, 8081, "host"), ("sctp", 9, 9, "host")]),
        service("svc4km5mreiogaah97skz3hoh", "confused", &["node.labels.zone==intra", "node.labels.zone!=intra"], &[("tcp", 1, 9001, "host")]),
    ];
    let view = |nodes: &[Value], services: &[Value]| json!({"nodes": nodes, "services": services});
    let mut later = nodes.clone();
    later[1]["Spec"]["Labels"] = json!({"zone": "dmz"});
    later[2]["Spec"]["Availability"] = json!("drain");
    later[3]["Status"]["State"] = json!("down");
    let mut restarted = nodes.clone();
    for n in &mut restarted {
        n["Status"]["State"] = json!("unknown");
    }
    let mut odd = nodes.clone();
    odd[1]["Status"]["Addr"] = json!("0.0.0.0");
    odd[1]["Spec"]["Labels"]["swarmlb.address"] = json!("not-an-address");
    odd[2]["Spec"]["Labels"]["swarmlb.weight"] = json!("heavy");
    odd[3]["Status"]["Addr"] = json!("10.0.1.2");
    odd[3]["Spec"]["Labels"]["lb"] = json!("proxy");
    odd.push(node("wkr4", "v6-only", "worker", "2001:db8::44", "ready", "pause", proxy()));
    let mut seeds: Vec<Seed> = vec![
        ("cluster".into(), json!({"views": [view(&nodes, &services)]})),
        ("cluster-changes".into(), json!({"views": [view(&nodes, &services), view(&later, &services), view(&later, &services), view(&nodes, &services)]})),
        ("manager-restart".into(), json!({"views": [view(&nodes, &services), view(&restarted, &services)]})),
        ("odd-nodes".into(), json!({"views": [view(&nodes, &[]), view(&odd, &services)]})),
        ("no-nodes".into(), json!({"views": [view(&nodes, &services), view(&[], &services)]})),
        ("selector".into(), json!({"selector": "node.role!=manager && node.labels.zone==dmz", "views": [view(&nodes, &services), view(&later, &services)]})),
        ("selector-hostname".into(), json!({"selector": "node.hostname==proxy-1", "views": [view(&nodes, &[])]})),
    ]
    .into_iter()
    .map(|(name, v)| (name, serde_json::to_vec(&v).unwrap()))
    .collect();
    for (i, text) in ["node.labels.lb==proxy && node.role!=manager", "node.id != abc", "node.labels.==x", "lb=proxy", "node.labels.lb==proxy &&"].iter().enumerate() {
        seeds.push((format!("selector-text-{i}"), text.as_bytes().to_vec()));
    }
    seeds
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A frame from `src` (whose MAC is the fixture neighbour's) to `dst`,
/// arriving at an interface with MAC `to`.
fn frame(src: IpAddr, dst: IpAddr, to: [u8; 6], l4: &L4, v4: impl Fn(&mut Ipv4), v6: impl Fn(&mut Ipv6)) -> Vec<u8> {
    FrameBuilder::new(neighbour_mac(src), to).ip_l4(src, dst, l4, v4, v6)
}

/// A path-MTU error from a router on the clients' side to `vip` about the
/// packet `l4` it sent to `client`, with a right checksum.
fn mtu_error(vip: IpAddr, client: IpAddr, l4: &L4) -> Vec<u8> {
    match (vip, client) {
        (IpAddr::V4(v), IpAddr::V4(c)) => {
            let quoted = Ipv4 { dont_fragment: true, ..Ipv4::new(v, c) }.packet(l4);
            let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
            icmp.extend(&quoted[..28]);
            let c = fold(sum16(&icmp, 0));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let router = Ipv4Addr::new(198, 51, 100, 254);
            FrameBuilder::new(neighbour_mac(client), OUT_MAC).ipv4(&Ipv4::new(router, v).with_payload(1, &icmp))
        }
        (IpAddr::V6(v), IpAddr::V6(c)) => {
            let quoted = Ipv6::new(v, c).packet(l4);
            let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
            icmp.extend(&quoted[..48]);
            let router = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
            let mut acc = sum16(&router.octets(), sum16(&v.octets(), 0));
            acc = sum16(&(icmp.len() as u32).to_be_bytes(), acc);
            acc = sum16(&[0, 0, 0, 58], acc);
            let c = fold(sum16(&icmp, acc));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            FrameBuilder::new(neighbour_mac(client), OUT_MAC).ipv6(&Ipv6::new(router, v).with_payload(58, &icmp))
        }
        _ => panic!("mixed families"),
    }
}

/// Frames for every path of the balancer model: each VIP's rules from
/// both client families, replies to the primed NAT flows, path-MTU errors
/// about primed flows, packets too big for the path, TTL 1, fragments,
/// IPv4 options, IPv6 extension headers, FIN/RST, UDP without a checksum,
/// and the edge's DSR tunnel packets as a backend receives them.
pub fn frames() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = Vec::new();
    let mut add = |name: String, f: Vec<u8>| seeds.push((name, f));
    let client = |vip: IpAddr| ip(if vip.is_ipv4() { CLIENT_V4 } else { CLIENT_V6 });
    let none4 = |_: &mut Ipv4| {};
    let none6 = |_: &mut Ipv6| {};
    for (name, _) in super::packet::VIPS {
        let vip = vip_address(name);
        let c = client(vip);
        add(format!("{name}-syn-443"), frame(c, vip, OUT_MAC, &L4::tcp_syn(41000, 443), none4, none6));
        add(format!("{name}-syn-80"), frame(c, vip, OUT_MAC, &L4::tcp_syn(41001, 80), none4, none6));
        add(format!("{name}-udp-53"), frame(c, vip, OUT_MAC, &L4::udp(5000, 53, b"\x12\x34\x01\x00"), none4, none6));
        add(format!("{name}-udp-443"), frame(c, vip, OUT_MAC, &L4::udp(5001, 443, b"quic"), none4, none6));
    }
    let nat4 = vip_address("nat4");
    let nat6 = vip_address("nat6");
    let c4 = ip(CLIENT_V4);
    let c6 = ip(CLIENT_V6);
    let big = |sport| L4::Tcp { sport, dport: 443, seq: 1, ack: 1, flags: 0x18, window: 500, payload: vec![0x17; 1480] };
    add("nat4-too-big-df".into(), frame(c4, nat4, OUT_MAC, &big(42000), |h| h.dont_fragment = true, none6));
    add("nat4-too-big".into(), frame(c4, nat4, OUT_MAC, &big(42001), none4, none6));
    add("dsr6-too-big".into(), frame(c6, vip_address("dsr6"), OUT_MAC, &big(42002), none4, none6));
    add("nat4-ttl1".into(), frame(c4, nat4, OUT_MAC, &L4::tcp_syn(42003, 443), |h| h.ttl = 1, none6));
    add("nat6-hop1".into(), frame(c6, nat6, OUT_MAC, &L4::tcp_syn(42004, 443), none4, |h| h.hop_limit = 1));
    add("nat4-fragment".into(), frame(c4, nat4, OUT_MAC, &L4::tcp_syn(42005, 443), |h| h.more_fragments = true, none6));
    add("nat4-options".into(), frame(c4, nat4, OUT_MAC, &L4::tcp_syn(42006, 443), |h| h.options = vec![0x94, 4, 0, 0], none6));
    add("nat6-dstopts".into(), frame(c6, nat6, OUT_MAC, &L4::tcp_syn(42007, 443), none4, |h| h.ext = vec![ExtHeader::Raw { protocol: 60, bytes: vec![0; 6] }]));
    let end = |flags| L4::Tcp { sport: 40000, dport: 443, seq: 2, ack: 2, flags, window: 500, payload: Vec::new() };
    let (fin, rst) = (end(0x11), end(0x04));
    add("nat4-fin".into(), frame(c4, nat4, OUT_MAC, &fin, none4, none6));
    add("nat6-rst".into(), frame(c6, nat6, OUT_MAC, &rst, none4, none6));
    let mut zero = frame(c4, nat4, OUT_MAC, &L4::udp(5353, 53, b"query"), none4, none6);
    zero[40..42].copy_from_slice(&[0, 0]);
    add("nat4-udp-no-checksum".into(), zero);
    let mut bad = frame(c4, nat4, OUT_MAC, &L4::tcp_syn(42008, 443), none4, none6);
    bad[50] ^= 0xff;
    add("nat4-bad-checksum".into(), bad);
    let mut short = frame(c4, nat4, OUT_MAC, &L4::tcp_syn(42009, 443), none4, none6);
    short.truncate(40);
    add("nat4-truncated".into(), short);

    // Replies to the primed NAT flows, from the backend to the edge.
    let tables = primed_tables();
    let mut keys: Vec<&NatKey> = tables.nat.keys().collect();
    keys.sort_by_key(|k| (k.family, k.proto, k.backend, k.nat_port));
    for (i, k) in keys.into_iter().enumerate() {
        let backend = lb_user::datapath::maps::key_addr(&k.backend, k.family);
        let inside = ip(if k.family == FAMILY_V4 { INSIDE_V4 } else { INSIDE_V6 });
        let l4 = if k.proto == IPPROTO_TCP {
            L4::Tcp { sport: k.backend_port, dport: k.nat_port, seq: 9, ack: 0x1000_0001, flags: 0x12, window: 64000, payload: Vec::new() }
        } else {
            L4::udp(k.backend_port, k.nat_port, b"answer")
        };
        add(format!("nat-reply-{i}"), frame(backend, inside, IN_MAC, &l4, none4, none6));
        if k.proto == IPPROTO_TCP {
            let fin = L4::Tcp { sport: k.backend_port, dport: k.nat_port, seq: 10, ack: 1, flags: 0x11, window: 64000, payload: Vec::new() };
            add(format!("nat-reply-fin-{i}"), frame(backend, inside, IN_MAC, &fin, none4, none6));
        }
    }
    // The primed PROXY protocol flows' client segments: the first data
    // (the header goes in front), a later one (shifted), a FIN.
    for name in ["pp4", "pp6"] {
        let vip = vip_address(name);
        let c = client(vip);
        let seg = |seq, flags, payload: &[u8]| L4::Tcp { sport: 40000, dport: 443, seq, ack: 10, flags, window: 500, payload: payload.to_vec() };
        add(format!("{name}-first-data"), frame(c, vip, OUT_MAC, &seg(0x1000_0001, 0x18, b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n"), none4, none6));
        add(format!("{name}-later-data"), frame(c, vip, OUT_MAC, &seg(0x1000_0101, 0x18, b"more"), none4, none6));
        add(format!("{name}-fin"), frame(c, vip, OUT_MAC, &seg(0x1000_0001, 0x11, &[]), none4, none6));
    }
    // Path-MTU errors about what the VIPs sent to the primed clients.
    for (name, _) in super::packet::VIPS.iter().take(6) {
        let vip = vip_address(name);
        let c = client(vip);
        let back = L4::Tcp { sport: 443, dport: 40000, seq: 5, ack: 1, flags: 0x18, window: 500, payload: vec![0; 32] };
        add(format!("{name}-mtu-error"), mtu_error(vip, c, &back));
    }
    add("nat4-mtu-error-udp".into(), mtu_error(nat4, c4, &L4::udp(53, 5353, b"answer")));
    // DSR tunnel packets as the edge sends them (what the backend's decap
    // opens): IPIP and IPv6-in-IPv6 around a client's SYN.
    let inner4 = Ipv4::new(CLIENT_V4.parse().unwrap(), "203.0.113.11".parse().unwrap()).packet(&L4::tcp_syn(40000, 443));
    let outer4 = Ipv4::new(INSIDE_V4.parse().unwrap(), "10.1.0.11".parse().unwrap()).with_payload(4, &inner4);
    add("dsr4-tunnel".into(), FrameBuilder::new(IN_MAC, neighbour_mac(ip("10.1.0.11"))).ipv4(&outer4));
    let inner6 = Ipv6::new(CLIENT_V6.parse().unwrap(), "2001:db8:10::11".parse().unwrap()).packet(&L4::tcp_syn(40000, 443));
    let outer6 = Ipv6::new(INSIDE_V6.parse().unwrap(), "fd00:1::11".parse().unwrap()).with_payload(41, &inner6);
    add("dsr6-tunnel".into(), FrameBuilder::new(IN_MAC, neighbour_mac(ip("fd00:1::11"))).ipv6(&outer6));
    seeds
}
