//! Forged sources end to end: real namespaces, veths, a real VXLAN device,
//! real listeners and the real `swarmlb` daemon (native XDP).
//!
//! ```text
//!  dmz ns                    host ns (the Swarm node)                 lan ns
//!  out0 10.77.0.2/.3   ── dmz0 10.77.0.1, fd77::1   in0 10.88.0.1 ──  p0 10.88.0.2 (a node)
//!       fd77::2/::3                                  fd88::1            10.99.0.5 (the admin)
//!                         vx0: VXLAN, udp/4789       10.99.0.0/24 and fd99::/64 via the lan ns
//! ```
//!
//! Both `dmz0` and `in0` face zone `dmz` (reverse_path strict). The admin
//! network 10.99.0.0/24 (fd99::/64) is allow-listed and the lan
//! 10.88.0.0/24 (fd88::/64) are the cluster's nodes; both are routed through
//! `in0`. From the DMZ, anyone can write those sources into a packet.

use std::{net::IpAddr, time::Duration};

use harness::{
    daemon::Instance,
    rawframe::{FrameBuilder, RawSocket, L4},
    rtnl::{self, Next},
    servers::UdpEcho,
    topology, ChildGuard, Netns, Topology,
};

const CONFIG: &str = r#"
[[interface]]
name = "dmz0"
zone = "dmz"

[[interface]]
name = "in0"
zone = "dmz"

[zone.dmz]
protected = ["tcp/22", "udp/161"]
allow = ["10.99.0.0/24", "fd99::/64", "10.77.0.3/32", "fd77::3/128"]

[cluster]
nodes = ["10.88.0.0/24", "fd88::/64"]
"#;

/// Unprotected, with an echo server: shows that a source is not refused.
const OPEN_UDP: u16 = 5000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Lab {
    daemon: Option<ChildGuard>,
    inst: Instance,
    udp: UdpEcho,
    udp6_vxlan: UdpEcho,
    host: Netns,
    dmz: Netns,
    lan: Netns,
    raw: RawSocket,
    frames: FrameBuilder,
    _topo: Topology,
}

impl Lab {
    fn start(tag: &str) -> Self {
        harness::require_root().unwrap();
        let mut topo = Topology::new();
        let host = topo.netns(&format!("{tag}h"));
        let dmz = topo.netns(&format!("{tag}d"));
        let lan = topo.netns(&format!("{tag}l"));
        topo.veth(&dmz, "out0", &host, "dmz0");
        topo.veth(&lan, "p0", &host, "in0");
        topo.addr(&host, "dmz0", "10.77.0.1/24");
        topo.addr(&host, "dmz0", "fd77::1/64");
        topo.addr(&host, "in0", "10.88.0.1/24");
        topo.addr(&host, "in0", "fd88::1/64");
        for a in ["10.77.0.2/24", "10.77.0.3/24", "fd77::2/64", "fd77::3/64"] {
            topo.addr(&dmz, "out0", a);
        }
        for a in ["10.88.0.2/24", "fd88::2/64", "10.99.0.5/24", "fd99::5/64"] {
            topo.addr(&lan, "p0", a);
        }
        topo.route(&host, "10.99.0.0/24", "10.88.0.2");
        topo.route(&host, "fd99::/64", "fd88::2");
        topo.forwarding(&host);
        // A real VXLAN device: the kernel's own socket on udp/4789. (`ip`:
        // the harness's netlink calls make veths and bridges only.)
        host.exec(&["ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "nolearning"]).unwrap();
        host.exec(&["ip", "link", "set", "vx0", "up"]).unwrap();
        let addrs = [ip("10.77.0.1"), ip("fd77::1"), ip("10.88.0.1"), ip("fd88::1")];
        let udp = UdpEcho::start(&host, &addrs, &[161, OPEN_UDP]).unwrap();
        // The VXLAN device takes IPv4 4789; IPv6 4789 gets a plain socket.
        let udp6_vxlan = UdpEcho::start(&host, &[ip("fd77::1"), ip("fd88::1")], &[4789]).unwrap();
        let raw = RawSocket::open(&dmz, "out0").unwrap();
        let frames = FrameBuilder::new(topology::mac(&dmz, "out0").unwrap(), topology::mac(&host, "dmz0").unwrap());
        let inst = Instance::new(tag, CONFIG);
        let mut lab = Self { daemon: None, inst, udp, udp6_vxlan, host, dmz, lan, raw, frames, _topo: topo };
        let mut daemon = lab.inst.start(&lab.host, &[]);
        lab.inst.wait_ready(&mut daemon);
        lab.daemon = Some(daemon);
        lab
    }

    /// Sends a forged UDP datagram from the DMZ side, `n` times.
    fn forge_udp(&self, src: &str, dst: &str, dport: u16, payload: &[u8], n: usize) {
        let frame = self.frames.ip_l4(ip(src), ip(dst), &L4::udp(40000, dport, payload), |_| {}, |_| {});
        for _ in 0..n {
            self.raw.send(&frame).unwrap();
        }
    }

    fn forge_syn(&self, src: &str, dst: &str, dport: u16) {
        let frame = self.frames.ip_l4(ip(src), ip(dst), &L4::tcp_syn(40000, dport), |_| {}, |_| {});
        self.raw.send(&frame).unwrap();
    }

    /// Packets the VXLAN device took in.
    fn vxlan_rx(&self) -> u64 {
        self.host.exec(&["cat", "/sys/class/net/vx0/statistics/rx_packets"]).unwrap().trim().parse().unwrap()
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.inst.status()["dropped"][reason].as_u64().unwrap_or_else(|| panic!("no counter dropped.{reason}"))
    }

    /// Sends a real datagram from `ns` (source `src`) and says whether the
    /// echo came back.
    fn real_udp(ns: &Netns, src: &str, dst: &str, port: u16) -> bool {
        let (s, d) = (ip(src), ip(dst));
        ns.run(move || {
            let sock = std::net::UdpSocket::bind((s, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut buf = [0u8; 64];
            (0..5).any(|_| sock.send_to(b"ping", (d, port)).is_ok() && sock.recv_from(&mut buf).is_ok())
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemon.take();
    }
}

/// A VXLAN frame (flags, VNI 42) around a small inner Ethernet frame.
fn vxlan_payload() -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    p.extend_from_slice(&[0xff; 6]);
    p.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
    p.extend_from_slice(&[0x08, 0x06]);
    p.extend_from_slice(&[0u8; 28]);
    p
}

/// From the DMZ, over IPv4 and IPv6: allow-listed and node sources (routed
/// through the inside interface), the host's own addresses and loopback, to
/// protected TCP and UDP ports and to 4789 on a real VXLAN device. Nothing
/// reaches a socket or the overlay, each is counted under its own reason;
/// the same sources on the interface their route leaves by, and a real
/// admin on the DMZ segment, still get through.
#[test]
fn forged_trusted_and_impossible_sources_reach_nothing() {
    let lab = Lab::start("rpf");
    let vx = vxlan_payload();
    let (rp0, imp0, vx0) = (lab.dropped("reverse_path"), lab.dropped("impossible_source"), lab.vxlan_rx());
    let n = 20;
    // Forged trusted sources (their route back leaves by in0).
    lab.forge_udp("10.99.0.7", "10.77.0.1", 161, b"set", n);
    lab.forge_udp("fd99::7", "fd77::1", 161, b"set", n);
    lab.forge_udp("10.88.0.7", "10.77.0.1", 4789, &vx, n);
    lab.forge_udp("fd88::7", "fd77::1", 4789, &vx, n);
    for (src, dst) in [("10.99.0.7", "10.77.0.1"), ("fd99::7", "fd77::1")] {
        lab.forge_syn(src, dst, 22);
    }
    // Sources that cannot be real on dmz0, whatever the port.
    let impossible = [("10.88.0.1", "10.77.0.1"), ("127.0.0.1", "10.77.0.1"), ("10.77.0.1", "10.77.0.1"), ("::1", "fd77::1"), ("fd88::1", "fd77::1")];
    for (src, dst) in impossible {
        lab.forge_udp(src, dst, 161, b"set", 1);
        lab.forge_udp(src, dst, 4789, &vx, 1);
        lab.forge_udp(src, dst, OPEN_UDP, b"hi", 1);
        lab.forge_syn(src, dst, 22);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.udp.received(161), 0, "a forged datagram reached udp/161");
    assert_eq!(lab.udp.received(OPEN_UDP), 0, "an impossible source reached an open port");
    assert_eq!(lab.udp6_vxlan.received(4789), 0, "a forged datagram reached IPv6 udp/4789");
    assert_eq!(lab.vxlan_rx(), vx0, "a forged datagram reached the VXLAN device");
    let forged = lab.dropped("reverse_path") - rp0;
    let impossible_n = lab.dropped("impossible_source") - imp0;
    assert!(forged >= 4 * n as u64 + 2, "reverse_path counted {forged}");
    assert!(impossible_n >= 4 * impossible.len() as u64, "impossible_source counted {impossible_n}");

    // The same sources where their route leaves: the lan side (a real node
    // and the real admin, through the isolator on in0).
    assert!(Lab::real_udp(&lab.lan, "10.99.0.5", "10.88.0.1", 161), "the admin on its own network");
    assert!(Lab::real_udp(&lab.lan, "fd99::5", "fd88::1", 161), "the admin on its own network (IPv6)");
    let rx = lab.vxlan_rx();
    let frame = vx.clone();
    lab.lan.run(move || {
        let sock = std::net::UdpSocket::bind(("10.88.0.2", 0)).unwrap();
        for _ in 0..3 {
            sock.send_to(&frame, ("10.88.0.1", 4789)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.vxlan_rx() > rx, "a node's VXLAN datagram on in0 reaches the device");
    // A real admin on the DMZ segment (allow-listed, on-link: strict passes).
    assert!(Lab::real_udp(&lab.dmz, "10.77.0.3", "10.77.0.1", 161), "the admin on the DMZ segment");
    assert!(Lab::real_udp(&lab.dmz, "fd77::3", "fd77::1", 161), "the admin on the DMZ segment (IPv6)");
    // And an outsider still reaches the open port.
    assert!(Lab::real_udp(&lab.dmz, "10.77.0.2", "10.77.0.1", OPEN_UDP));
    println!(
        "forged trusted sources: {forged} dropped (reverse_path); impossible sources: {impossible_n} dropped; \
         0 datagrams reached udp/161, udp/{OPEN_UDP}, udp/4789 or vx0; the real admin and node got through"
    );
}

/// Routes and addresses change under a running daemon: the admin network
/// moved to the DMZ interface is believed there at once, and an address
/// added to the host becomes an impossible source at once, no restart.
#[test]
fn routing_and_address_changes_take_effect_without_restart() {
    let lab = Lab::start("rpfchg");
    lab.forge_udp("10.99.0.7", "10.77.0.1", 161, b"set", 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.udp.received(161), 0, "forged while routed via in0");
    rtnl::replace_route(&lab.host, "10.99.0.0/24", Next::Via(ip("10.77.0.2"), "dmz0")).unwrap();
    lab.forge_udp("10.99.0.7", "10.77.0.1", 161, b"set", 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.udp.received(161), 5, "routed via dmz0 now: believed there");

    // 10.77.0.50 is a DMZ source like any other, until the host takes it.
    lab.forge_udp("10.77.0.50", "10.77.0.1", OPEN_UDP, b"hi", 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.udp.received(OPEN_UDP), 3);
    let before = lab.dropped("impossible_source");
    rtnl::addr(&lab.host, "dmz0", "10.77.0.50/24").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab.dropped("impossible_source") == before {
        assert!(std::time::Instant::now() < deadline, "the new address never became an impossible source");
        lab.forge_udp("10.77.0.50", "10.77.0.1", OPEN_UDP, b"hi", 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = lab.udp.received(OPEN_UDP);
    lab.forge_udp("10.77.0.50", "10.77.0.1", OPEN_UDP, b"hi", 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.udp.received(OPEN_UDP), received, "the host's new address is an impossible source");
}

/// A zone that checks reverse paths over an interface that does not
/// forward a family it trusts is refused at start, naming the sysctl
/// (the kernel's FIB lookup would refuse every such source); with
/// `reverse_path = "off"` the same interface is fine.
#[test]
fn forwarding_off_is_refused_naming_the_sysctl() {
    harness::require_root().unwrap();
    let mut topo = Topology::new();
    let host = topo.netns("rpffwdh");
    let peer = topo.netns("rpffwdp");
    topo.veth(&peer, "out0", &host, "dmz0");
    host.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let config = "[[interface]]\nname = \"dmz0\"\nzone = \"dmz\"\n\n[zone.dmz]\nprotected = [\"udp/161\"]\nallow = [\"10.99.0.0/24\", \"fd99::/64\"]\n";
    let inst = Instance::new("rpffwd", config);
    let mut child = inst.start(&host, &[]);
    let status = child.wait_timeout(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let out = child.output_so_far();
    assert!(out.contains("net.ipv6.conf.dmz0.forwarding"), "names the IPv6 sysctl (IPv4 forwards): {out}");
    assert!(!inst.pin_path.exists(), "nothing left pinned");
    inst.write_config(&config.replace("protected", "reverse_path = \"off\"\nprotected"));
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    child.terminate(Duration::from_secs(10));
    let _ = inst.down();
}
