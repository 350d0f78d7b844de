//! The harness tested against the real kernel (no XDP involved): namespaces
//! come and go, scanners find exactly the listening ports and tell drops
//! from refusals, raw frames reach a real server, counters move.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    counters::{delta, nstat},
    rawframe::{self, ethertype, fragment_ipv4, fragment_ipv6, ExtHeader, FrameBuilder, Ipv4, Ipv6, RawSocket, L4},
    scan::{tcp_scan, udp_scan, TcpOutcome, UdpOutcome},
    servers::{TcpListeners, UdpEcho},
    Netns, Topology, TwoHosts,
};

/// Skips (passes) a namespace test when not root, with a message.
macro_rules! need_root {
    () => {
        if !crate::root_or_skip() {
            return;
        }
    };
}

/// Names in `ip netns list`.
fn listed_namespaces() -> BTreeSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Asserts none of `names` is still listed.
fn assert_gone(names: &[String]) {
    let listed = listed_namespaces();
    let left: Vec<_> = names.iter().filter(|n| listed.contains(*n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// Applies nftables commands inside `ns` (an `inet` table named `t`).
fn nft(ns: &Netns, rules: &[&str]) {
    ns.exec(&["nft", "add table inet t"]).unwrap();
    ns.exec(&["nft", "add chain inet t in { type filter hook input priority 0 ; policy accept ; }"]).unwrap();
    for r in rules {
        ns.exec(&["nft", &format!("add rule inet t in {r}")]).unwrap();
    }
}

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}
fn v6(ip: Ipv6Addr) -> IpAddr {
    IpAddr::V6(ip)
}

// ------------------------------------------------------------------ netns

#[test]
fn netns_lifecycle_and_teardown_on_panic() {
    need_root!();
    let ns = Netns::new("life-cycle!").unwrap();
    let name = ns.name().to_owned();
    assert!(name.len() <= 31 && name.starts_with("swl"), "{name}");
    assert!(!name.contains('!'));
    assert!(listed_namespaces().contains(&name));
    let links = ns.exec(&["ip", "-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(links.contains("lo") && links.contains("UP"), "{links}");
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(ns.sysctl_get("net.ipv4.icmp_ratemask").unwrap(), "0");
    // Namespaced for real: the root namespace's value is untouched.
    assert_ne!(std::fs::read_to_string("/proc/sys/net/ipv4/icmp_ratemask").unwrap().trim(), "0");
    let err = ns.exec(&["ip", "link", "show", "nosuch0"]).unwrap_err().to_string();
    assert!(err.contains("nosuch0"), "error carries stderr: {err}");
    let clone = ns.clone();
    drop(ns);
    assert!(listed_namespaces().contains(&name), "a clone keeps it");
    drop(clone);
    assert_gone(&[name]);

    // Removed while unwinding from a panic, too.
    let mut names = Vec::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Topology::two_hosts("panic");
        names.extend(net.topo.namespaces().iter().map(|n| n.name().to_owned()));
        panic!("expected panic: teardown while unwinding");
    }));
    assert!(caught.is_err());
    assert_eq!(names.len(), 2);
    assert_gone(&names);
}

#[test]
fn run_puts_sockets_in_the_namespace() {
    need_root!();
    let net = Topology::two_hosts("run");
    // 10.0.0.1 exists only in the client namespace.
    let sock = net.client.run(|| UdpSocket::bind((TwoHosts::CLIENT4, 0))).expect("bind in the client namespace");
    // Used from this (root namespace) thread, it still talks in the client's.
    let echo = UdpEcho::start(&net.server, &[v4(TwoHosts::SERVER4)], &[7]).unwrap();
    sock.connect((TwoHosts::SERVER4, 7)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(echo.received(7), 1);
    // A panic inside run reaches the caller.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        net.client.run(|| panic!("expected panic: inside run"))
    }));
    assert!(r.is_err());
}

#[test]
fn spawn_keeps_host_mounts_and_guard_kills() {
    need_root!();
    let ns = Netns::new("spawn").unwrap();
    let mut child = ns.spawn(Command::new("sh").args([
        "-c",
        "ip -o link show; stat -f -c 'fs=%T' /sys/fs/bpf; echo to-stderr >&2; echo ready; exec sleep 600",
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child.output_so_far().contains("ready") {
        assert!(Instant::now() < deadline, "no output: {}", child.output_so_far());
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.output_so_far();
    assert_eq!(out.lines().filter(|l| l.contains(": <")).count(), 1, "sees only the namespace's lo: {out}");
    let host_fs = Command::new("stat").args(["-f", "-c", "fs=%T", "/sys/fs/bpf"]).output().unwrap();
    let host_fs = String::from_utf8_lossy(&host_fs.stdout).trim().to_owned();
    assert!(out.contains(&host_fs), "host's /sys/fs/bpf ({host_fs}) visible: {out}");
    assert!(out.contains("to-stderr"), "stderr captured: {out}");
    assert!(child.wait_timeout(Duration::from_millis(50)).is_none());
    let pid = child.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(child);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");

    // Exit status and signals.
    let mut child = ns.spawn(Command::new("sh").args(["-c", "exit 3"]));
    assert_eq!(child.wait_timeout(Duration::from_secs(10)).unwrap().code(), Some(3));
    let mut child2 = ns.spawn(Command::new("sleep").arg("600"));
    child2.signal(libc::SIGTERM);
    let status = child2.wait_timeout(Duration::from_secs(10)).expect("terminated");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    child.signal(libc::SIGKILL); // already reaped: a no-op, never a stray kill
}

#[test]
fn two_hosts_are_connected() {
    need_root!();
    let net = Topology::two_hosts("ping");
    let names: Vec<String> = net.topo.namespaces().iter().map(|n| n.name().to_owned()).collect();
    // (No ping on these machines: a TCP connection per family instead.)
    let tcp = TcpListeners::start(&net.server, &net.server_addrs(), &[7]).unwrap();
    for addr in net.server_addrs() {
        let mut conn = net
            .client
            .run(move || std::net::TcpStream::connect_timeout(&(addr, 7).into(), Duration::from_secs(5)))
            .unwrap();
        let mut banner = String::new();
        std::io::Read::read_to_string(&mut conn, &mut banner).unwrap();
        assert_eq!(banner, "swarmlb-harness tcp/7\n");
    }
    assert_eq!(tcp.accepted(7), 2);
    let shown = net.server.exec(&["ip", "-o", "link", "show", "dev", TwoHosts::SERVER_IF]).unwrap();
    let idx = net.topo.ifindex(&net.server, TwoHosts::SERVER_IF);
    assert!(shown.starts_with(&format!("{idx}: {}@", TwoHosts::SERVER_IF)), "{shown}");
    let mac = net.server_mac();
    let text = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    assert!(shown.contains(&text), "{shown} has {text}");
    assert_ne!(net.client_mac(), mac);
    drop(net);
    assert_gone(&names);
}

#[test]
fn routed_topology() {
    need_root!();
    // client 10.1.0.2 ── r 10.1.0.1 | 10.2.0.1 ── server 10.2.0.2 (and fd01::/fd02:: likewise)
    let mut topo = Topology::new();
    let (client, router, server) = (topo.netns("rc"), topo.netns("rr"), topo.netns("rs"));
    topo.veth(&client, "eth0", &router, "left");
    topo.veth(&router, "right", &server, "eth0");
    topo.forwarding(&router);
    for (ns, ifname, cidr) in [
        (&client, "eth0", "10.1.0.2/24"),
        (&client, "eth0", "fd01::2/64"),
        (&router, "left", "10.1.0.1/24"),
        (&router, "left", "fd01::1/64"),
        (&router, "right", "10.2.0.1/24"),
        (&router, "right", "fd02::1/64"),
        (&server, "eth0", "10.2.0.2/24"),
        (&server, "eth0", "fd02::2/64"),
    ] {
        topo.addr(ns, ifname, cidr);
    }
    topo.route(&client, "default", "10.1.0.1");
    topo.route(&client, "default", "fd01::1");
    topo.route(&server, "10.1.0.0/24", "10.2.0.1");
    topo.route(&server, "fd01::/64", "fd02::1");
    topo.mtu(&router, "right", 1400);
    assert_ne!(topo.ifindex(&router, "left"), topo.ifindex(&router, "right"));
    let targets = [v4("10.2.0.2".parse().unwrap()), v6("fd02::2".parse().unwrap())];
    let _tcp = TcpListeners::start(&server, &targets, &[443]).unwrap();
    let _udp = UdpEcho::start(&server, &targets, &[53]).unwrap();
    for t in targets {
        let tcp = client.run(move || tcp_scan(t, [442, 443], None, 8, TIMEOUT)).unwrap();
        assert_eq!(tcp, vec![(442, TcpOutcome::Refused), (443, TcpOutcome::Open)]);
        let udp = client.run(move || udp_scan(t, [52, 53], None, TIMEOUT)).unwrap();
        assert_eq!(udp, vec![(52, UdpOutcome::Unreachable), (53, UdpOutcome::Echoed)]);
    }
    let names: Vec<String> = topo.namespaces().iter().map(|n| n.name().to_owned()).collect();
    assert_eq!(names.len(), 3);
    drop((topo, client, router, server));
    assert_gone(&names);
}

// ------------------------------------------------------------------ scans

const TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn full_tcp_scan_finds_exactly_the_listeners_and_tells_drops() {
    need_root!();
    let net = Topology::two_hosts("tcpscan");
    let listen = [22u16, 80, 443, 8080, 65535];
    let tcp = TcpListeners::start(&net.server, &net.server_addrs(), &listen).unwrap();
    // One listening and one closed port dropped: both must read as Timeout.
    nft(&net.server, &["tcp dport { 8080, 9999 } drop"]);
    let expect = |p: u16| match p {
        8080 | 9999 => TcpOutcome::Timeout,
        p if listen.contains(&p) => TcpOutcome::Open,
        _ => TcpOutcome::Refused,
    };
    for target in net.server_addrs() {
        let start = Instant::now();
        let res = net.client.run(move || tcp_scan(target, 1..=65535, None, 2048, TIMEOUT)).unwrap();
        let took = start.elapsed();
        assert_eq!(res.len(), 65535);
        let wrong: Vec<_> = res.iter().filter(|(p, o)| *o != expect(*p)).take(20).collect();
        assert!(wrong.is_empty(), "{target}: {wrong:?}");
        println!("tcp scan of {target}, 65535 ports: {:.2}s", took.as_secs_f64());
    }
    for p in [22, 80, 443, 65535] {
        assert_eq!(tcp.accepted(p), 2, "tcp/{p}: one connection per family");
    }
    assert_eq!(tcp.accepted(8080), 0, "dropped before the listener");
}

#[test]
fn full_udp_scan_finds_exactly_the_echo_servers_and_tells_drops() {
    need_root!();
    let net = Topology::two_hosts("udpscan");
    let listen = [53u16, 123, 5353, 65535];
    let udp = UdpEcho::start(&net.server, &net.server_addrs(), &listen).unwrap();
    nft(&net.server, &["udp dport { 5353, 7777 } drop"]);
    let expect = |p: u16| match p {
        5353 | 7777 => UdpOutcome::Silent,
        p if listen.contains(&p) => UdpOutcome::Echoed,
        _ => UdpOutcome::Unreachable,
    };
    for target in net.server_addrs() {
        let before = nstat(&net.server).unwrap();
        let start = Instant::now();
        let res = net.client.run(move || udp_scan(target, 1..=65535, None, TIMEOUT)).unwrap();
        let took = start.elapsed();
        assert_eq!(res.len(), 65535);
        let wrong: Vec<_> = res.iter().filter(|(p, o)| *o != expect(*p)).take(20).collect();
        assert!(wrong.is_empty(), "{target}: {wrong:?}");
        let d = delta(&before, &nstat(&net.server).unwrap());
        let no_ports = if target.is_ipv4() { "UdpNoPorts" } else { "Udp6NoPorts" };
        println!(
            "udp scan of {target}, 65535 ports: {:.2}s ({no_ports} +{})",
            took.as_secs_f64(),
            d.get(no_ports).copied().unwrap_or(0)
        );
        // Every closed port got exactly one probe: no retry was needed.
        assert_eq!(d.get(no_ports).copied(), Some(65535 - 5), "{d:?}");
    }
    for p in [53, 123, 65535] {
        assert_eq!(udp.received(p), 2, "udp/{p}: one probe per family");
    }
    assert_eq!(udp.received(5353), 0, "dropped before the echo server");
}

#[test]
fn scans_from_a_chosen_source_address() {
    need_root!();
    let mut net = Topology::two_hosts("src");
    let (other4, other6): (Ipv4Addr, Ipv6Addr) = ("10.0.0.3".parse().unwrap(), "fd00::3".parse().unwrap());
    let (client, server) = (net.client.clone(), net.server.clone());
    net.topo.addr(&client, TwoHosts::CLIENT_IF, &format!("{other4}/24"));
    net.topo.addr(&client, TwoHosts::CLIENT_IF, &format!("{other6}/64"));
    let _tcp = TcpListeners::start(&server, &net.server_addrs(), &[80, 81]).unwrap();
    let _udp = UdpEcho::start(&server, &net.server_addrs(), &[80, 81]).unwrap();
    // Only the "allow-listed" first address may reach port 80. (`th dport`
    // alone would also match ICMPv6 whose checksum happens to be 80 and, now
    // and then, drop neighbour discovery: hence `meta l4proto`.)
    nft(
        &server,
        &[
            &format!("ip saddr {other4} meta l4proto {{ tcp, udp }} th dport 80 drop"),
            &format!("ip6 saddr {other6} meta l4proto {{ tcp, udp }} th dport 80 drop"),
        ],
    );
    let ports = [79u16, 80, 81];
    for (target, allowed, other) in [
        (v4(TwoHosts::SERVER4), v4(TwoHosts::CLIENT4), v4(other4)),
        (v6(TwoHosts::SERVER6), v6(TwoHosts::CLIENT6), v6(other6)),
    ] {
        let mut got = BTreeMap::new();
        for src in [allowed, other] {
            let t = net.client.run(move || tcp_scan(target, ports, Some(src), 16, TIMEOUT)).unwrap();
            let u = net.client.run(move || udp_scan(target, ports, Some(src), TIMEOUT)).unwrap();
            got.insert(src, (t, u));
        }
        use TcpOutcome::*;
        use UdpOutcome::*;
        assert_eq!(got[&allowed].0, vec![(79, Refused), (80, Open), (81, Open)]);
        assert_eq!(got[&allowed].1, vec![(79, Unreachable), (80, Echoed), (81, Echoed)]);
        assert_eq!(got[&other].0, vec![(79, Refused), (80, Timeout), (81, Open)]);
        assert_eq!(got[&other].1, vec![(79, Unreachable), (80, Silent), (81, Echoed)]);
    }
    // A source that is not ours is a setup error, not a scan result.
    let bad =
        net.client.run(|| tcp_scan(v4(TwoHosts::SERVER4), [80], Some(v4(Ipv4Addr::new(10, 9, 9, 9))), 1, TIMEOUT));
    assert!(bad.is_err());
}

// ------------------------------------------------------------------ raw frames

#[test]
fn raw_frames_reach_a_real_server() {
    need_root!();
    let net = Topology::two_hosts("raw");
    let echo = UdpEcho::start(&net.server, &net.server_addrs(), &[5000, 5001, 5002, 5003, 5004, 5005]).unwrap();
    let _tcp = TcpListeners::start(&net.server, &net.server_addrs(), &[443]).unwrap();
    let eth = FrameBuilder::new(net.client_mac(), net.server_mac());
    let tagged = eth.clone().vlan(ethertype::VLAN, 0);
    let raw = RawSocket::open(&net.client, TwoHosts::CLIENT_IF).unwrap();
    let capture = RawSocket::open_capture(&net.client, TwoHosts::CLIENT_IF).unwrap();
    let ip4 = Ipv4::new(TwoHosts::CLIENT4, TwoHosts::SERVER4);
    let ip6 = Ipv6::new(TwoHosts::CLIENT6, TwoHosts::SERVER6);
    let payload = vec![0x5a; 100];

    let send_and_count = |frames: Vec<Vec<u8>>, port: u16| {
        let before = echo.received(port);
        for f in &frames {
            raw.send(f).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while echo.received(port) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        echo.received(port) - before
    };

    let before = nstat(&net.server).unwrap();
    // Plain and VLAN-ID-0 tagged IPv4 UDP.
    assert_eq!(send_and_count(vec![eth.ipv4(&ip4.packet(&L4::udp(40000, 5000, &payload)))], 5000), 1);
    assert_eq!(send_and_count(vec![tagged.ipv4(&ip4.packet(&L4::udp(40000, 5001, &payload)))], 5001), 1);
    // IPv4 with options (a copied Security option and NOPs), fragmented,
    // including a zero-length first fragment.
    let mut opt = ip4.clone();
    opt.options = vec![0x82, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    opt.id = 0x4242;
    let whole = opt.packet(&L4::udp(40000, 5002, &payload));
    let frags = fragment_ipv4(&whole, &[0, 8, 56]).unwrap();
    assert_eq!(frags.len(), 4);
    assert_eq!(send_and_count(frags.iter().map(|f| tagged.ipv4(f)).collect(), 5002), 1);
    // IPv6 with Hop-by-Hop and Destination options, plain and fragmented.
    let ext = ip6.clone().with(ExtHeader::HopByHop(vec![])).with(ExtHeader::DestOpts(vec![]));
    assert_eq!(send_and_count(vec![eth.ipv6(&ext.packet(&L4::udp(40000, 5003, &payload)))], 5003), 1);
    let whole6 = ext.packet(&L4::udp(40000, 5004, &payload));
    let frags6 = fragment_ipv6(&whole6, &[16, 64], 0x1234_5678).unwrap();
    assert_eq!(send_and_count(frags6.iter().map(|f| tagged.ipv6(f)).collect(), 5004), 1);
    let after = nstat(&net.server).unwrap();
    let d = delta(&before, &after);
    assert_eq!(d.get("IpReasmOKs").copied(), Some(1), "{d:?}");
    assert_eq!(d.get("Ip6ReasmOKs").copied(), Some(1), "{d:?}");
    assert_eq!(d.get("UdpInCsumErrors"), None);
    assert_eq!(d.get("Udp6InCsumErrors"), None);

    // A corrupted checksum is counted as such and never delivered: the
    // kernel really checks what we compute.
    let mut bad = ip4.packet(&L4::udp(40000, 5005, &payload));
    *bad.last_mut().unwrap() ^= 1;
    let mut bad6 = ip6.packet(&L4::udp(40000, 5005, &payload));
    *bad6.last_mut().unwrap() ^= 1;
    raw.send(&eth.ipv4(&bad)).unwrap();
    raw.send(&eth.ipv6(&bad6)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let d = loop {
        let d = delta(&after, &nstat(&net.server).unwrap());
        if (d.contains_key("UdpInCsumErrors") && d.contains_key("Udp6InCsumErrors")) || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(d.get("UdpInCsumErrors").copied(), Some(1), "{d:?}");
    assert_eq!(d.get("Udp6InCsumErrors").copied(), Some(1), "{d:?}");
    assert_eq!(echo.received(5005), 0);

    // TCP SYNs (v4 tagged, v6 behind a fragment header) get SYN-ACKs.
    let syn4 = tagged.ipv4(&ip4.packet(&L4::tcp_syn(40001, 443)));
    let syn6 = eth.ipv6(&ip6.clone().with(ExtHeader::atomic_fragment(7)).packet(&L4::tcp_syn(40002, 443)));
    raw.send(&syn4).unwrap();
    raw.send(&syn6).unwrap();
    let mut synacks = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while synacks.len() < 2 && Instant::now() < deadline {
        let Some(f) = capture.recv_timeout(Duration::from_millis(100)).unwrap() else { continue };
        // Incoming to the client: from the server's MAC.
        if f[6..12] != net.server_mac()[..] {
            continue;
        }
        let (et, l3) = (u16::from_be_bytes([f[12], f[13]]), &f[14..]);
        let tcp = match et {
            ethertype::IPV4 if l3[9] == 6 => &l3[usize::from(l3[0] & 15) * 4..],
            ethertype::IPV6 if l3[6] == 6 => &l3[40..],
            _ => continue,
        };
        if tcp[13] == 0x12 {
            synacks.insert(u16::from_be_bytes([tcp[2], tcp[3]]));
        }
    }
    assert_eq!(synacks, BTreeSet::from([40001, 40002]));
}

// ------------------------------------------------------------------ builders (no root)

/// Verifies the L4 checksum of an IPv4 packet the way a receiver does.
fn l4_sum_ok_v4(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 15) * 4;
    let seg = &p[ihl..];
    let mut acc = rawframe::sum16(&p[12..20], 0);
    acc = rawframe::sum16(&[0, p[9]], acc) + seg.len() as u32;
    rawframe::fold(rawframe::sum16(seg, acc)) == 0
}

#[test]
fn ipv4_checksums_and_fragments() {
    let ip = Ipv4 {
        options: vec![0x07, 7, 4, 0, 0, 0, 0, 0x94, 4, 0, 0],
        ..Ipv4::new([10, 0, 0, 1].into(), [10, 0, 0, 2].into())
    };
    for l4 in [L4::udp(1, 2, b"odd length payload!"), L4::tcp_syn(3, 4)] {
        let p = ip.packet(&l4);
        assert_eq!(p[0], 0x48, "IHL 8 after padding 11 option bytes to 12");
        assert_eq!(rawframe::checksum(&p[..32]), 0, "header checksum verifies");
        assert!(l4_sum_ok_v4(&p));
    }
    let p = ip.packet(&L4::udp(1, 2, &[7; 45]));
    let frags = fragment_ipv4(&p, &[0, 24]).unwrap();
    let info: Vec<(usize, u16, bool, usize)> = frags
        .iter()
        .map(|f| {
            assert_eq!(rawframe::checksum(&f[..usize::from(f[0] & 15) * 4]), 0);
            let ff = u16::from_be_bytes([f[6], f[7]]);
            (usize::from(f[0] & 15) * 4, ff & 0x1fff, ff & 0x2000 != 0, f.len())
        })
        .collect();
    // Record route (0x07) is not copied into later fragments; router alert (0x94, copied bit set) is.
    assert_eq!(info, vec![(32, 0, true, 32), (32, 0, true, 56), (24, 3, false, 24 + 53 - 24)]);
    assert!(fragment_ipv4(&p, &[12]).is_err(), "unaligned cut");
    // Reassembly by hand gives the original payload back.
    let mut body: Vec<u8> = Vec::new();
    for f in &frags {
        body.extend(&f[usize::from(f[0] & 15) * 4..]);
    }
    assert_eq!(body, p[32..]);
}

#[test]
fn ipv6_chain_checksums_and_fragments() {
    let (src, dst, fin): (Ipv6Addr, Ipv6Addr, Ipv6Addr) =
        ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), "fd00::99".parse().unwrap());
    let ip = Ipv6::new(src, dst)
        .with(ExtHeader::HopByHop(vec![]))
        .with(ExtHeader::DestOpts(vec![1, 0]))
        .with(ExtHeader::srh(1, &[fin, dst]))
        .with(ExtHeader::DestOpts(vec![]));
    let p = ip.packet(&L4::udp(7, 9, b"abc"));
    // Chain: HBH(8) DST(8) SRH(8+32) DST(8), then UDP.
    assert_eq!(p[6], 0);
    assert_eq!((p[40], p[48], p[56], p[96]), (60, 43, 60, 17));
    assert_eq!(p.len(), 40 + 8 + 8 + 40 + 8 + 11);
    // Pseudo-header uses the final destination (segments[0]).
    let seg = &p[104..];
    let mut acc = rawframe::sum16(&src.octets(), 0);
    acc = rawframe::sum16(&fin.octets(), acc);
    acc = rawframe::sum16(&(seg.len() as u32).to_be_bytes(), acc);
    acc = rawframe::sum16(&[0, 0, 0, 17], acc);
    assert_eq!(rawframe::fold(rawframe::sum16(seg, acc)), 0);

    // Fragmentation keeps HBH, DST and SRH per fragment; the last DST and UDP are split.
    let frags = fragment_ipv6(&p, &[8], 42).unwrap();
    assert_eq!(frags.len(), 2);
    for (i, f) in frags.iter().enumerate() {
        assert_eq!(f[56], 44, "SRH now names the fragment header");
        let fh = &f[96..104];
        assert_eq!(fh[0], 60, "fragment header names the first fragmentable header");
        let off_m = u16::from_be_bytes([fh[2], fh[3]]);
        assert_eq!((off_m >> 3, off_m & 1), if i == 0 { (0, 1) } else { (1, 0) });
        assert_eq!(u32::from_be_bytes(fh[4..8].try_into().unwrap()), 42);
        assert_eq!(usize::from(u16::from_be_bytes([f[4], f[5]])), f.len() - 40);
    }
    assert_eq!([&frags[0][104..], &frags[1][104..]].concat(), p[96..]);

    // Without a routing header only Hop-by-Hop stays unfragmentable.
    let q = Ipv6::new(src, dst)
        .with(ExtHeader::HopByHop(vec![]))
        .with(ExtHeader::DestOpts(vec![]))
        .packet(&L4::tcp_syn(1, 2));
    let f = &fragment_ipv6(&q, &[], 1).unwrap()[0];
    assert_eq!((f[40], f[48], f[56]), (44, 60, 6), "HBH -> Fragment -> DestOpts -> TCP");
}

#[test]
fn frame_builder_tags() {
    let fb =
        FrameBuilder::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).vlan(ethertype::QINQ, 100).vlan(ethertype::VLAN, 0);
    let f = fb.frame(ethertype::IPV4, &[0x45]);
    assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 2]);
    assert_eq!(&f[12..23], &[0x88, 0xa8, 0, 100, 0x81, 0x00, 0, 0, 0x08, 0x00, 0x45]);
}
