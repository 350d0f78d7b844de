//! The forging tests' network: the edge lab ([`crate::edge_lab`]) with
//! `swarmlb run` balancing a `nat` VIP (both families) to worker `w1` only,
//! where the test itself holds the TCP listener (so it holds both ends of
//! every connection, [`super::conn`]) and a UDP echo server answers.
//! Worker `w2` is not a backend: it is the attacker on the inside segment.
//!
//! ```text
//!  client ═══ edge ═══ switch ─┬─ w1  backend: tcp/9000 (the test), udp/5353 (echo), tcp/8080 (health)
//!  (the outside attacker        └─ w2  not a backend (the inside attacker)
//!   sends from c-out)
//! ```
//!
//! The config makes ended connections go quickly: `tcp_closed_timeout_s`
//! and `tcp_time_wait_timeout_s` are 2 s, so an entry a forged packet
//! marked closed is gone after [`ENDED_WITHIN`]; the sweep itself runs
//! every 10 s (the daemon's housekeeping interval, which has no key).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    ops::RangeInclusive,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{conn::Conn, Attacker};
use crate::{
    config::{worker_vips, EdgeConfig},
    daemon::Instance,
    edge_lab::{EdgeLab, CLIENT_V4, CLIENT_V6, EDGE_INSIDE_V4, EDGE_INSIDE_V6, VIP_V4, VIP_V6},
    servers::{TcpListeners, UdpEcho},
    topology::mac,
    ChildGuard,
};

/// The VIPs' TCP port (the same on the backend).
pub const TCP_PORT: u16 = 9000;
/// The VIPs' UDP port (the same on the backend).
pub const UDP_PORT: u16 = 5353;
/// Where the health checks connect.
pub const HEALTH_PORT: u16 = 8080;
/// The config's `snat_ports`: small enough to forge to every one of them
/// in a blink, large enough for no warning.
pub const SNAT_PORTS: RangeInclusive<u16> = 20000..=21023;
/// The config's `tcp_closed_timeout_s` and `tcp_time_wait_timeout_s`.
pub const CLOSED_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the daemon sweeps idle NAT entries (`HOUSEKEEPING_INTERVAL`
/// in `lb-user/src/daemon.rs`; not configurable).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// An entry marked closed is gone this long after its last packet: the
/// closed timeout, one sweep interval, and a margin for a loaded machine.
pub const ENDED_WITHIN: Duration = Duration::from_millis(2000 + 10_000 + 1500);

/// The balancer's config for the lab.
pub fn config() -> String {
    let closed = CLOSED_TIMEOUT.as_secs();
    let vips = worker_vips("forge", &[&format!("tcp/{TCP_PORT}"), &format!("udp/{UDP_PORT}")], &[(1, None)])
        .map(|v| v.mode("nat").health_check(&format!("{{ protocol = \"tcp\", port = {HEALTH_PORT} }}")));
    EdgeConfig::balancer()
        .balancer_line(&format!("snat_ports = \"{}-{}\"", SNAT_PORTS.start(), SNAT_PORTS.end()))
        .balancer_line(&format!("tcp_closed_timeout_s = {closed}"))
        .balancer_line(&format!("tcp_time_wait_timeout_s = {closed}"))
        .vips(vips)
        .to_toml()
}

/// The running lab; everything is stopped and removed on drop (also when a
/// test panics): the daemon first, then its pins and files, the servers,
/// and last the namespaces.
pub struct ForgeLab {
    /// `swarmlb run` on the edge.
    pub daemon: ChildGuard,
    /// Its config, pins and runtime dir.
    pub inst: Instance,
    /// The UDP echo server on w1.
    pub udp: UdpEcho,
    _health: TcpListeners,
    /// The backend's TCP listeners on w1 (IPv4, IPv6), held by the test.
    listeners: [TcpListener; 2],
    /// The namespaces.
    pub lab: EdgeLab,
}

fn pick<T>(v6: bool, v4: T, v6v: T) -> T {
    if v6 { v6v } else { v4 }
}

impl ForgeLab {
    /// Builds the lab and starts the daemon (from the calling thread: the
    /// daemon dies with it).
    pub fn start(tag: &str) -> Self {
        crate::require_root().unwrap();
        let lab = EdgeLab::new(tag, 2);
        let w1 = &lab.workers[0];
        let backends = lab.worker_ips(1);
        let udp = UdpEcho::start(w1, &backends, &[UDP_PORT]).expect("udp echo on w1");
        let health = TcpListeners::start(w1, &backends, &[HEALTH_PORT]).expect("health listener on w1");
        let listeners = w1
            .run(|| -> Result<[TcpListener; 2]> {
                Ok([TcpListener::bind(SocketAddr::new(backends[0], TCP_PORT))?, TcpListener::bind(SocketAddr::new(backends[1], TCP_PORT))?])
            })
            .expect("tcp listeners on w1");
        // The edge resolves w1 now (else the first SYN meets
        // drop_no_neighbour and waits for its retransmission).
        for a in backends {
            let _ = lab.edge.exec(&["ping", "-c", "1", "-W", "1", &a.to_string()]);
        }
        let inst = Instance::new(tag, &config());
        let mut daemon = inst.start(&lab.edge, &[]);
        inst.wait_ready(&mut daemon);
        Self { daemon, inst, udp, _health: health, listeners, lab }
    }

    /// The VIP.
    pub fn vip(&self, v6: bool) -> IpAddr {
        pick(v6, IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6))
    }

    /// The client's address.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        pick(v6, IpAddr::V4(CLIENT_V4), IpAddr::V6(CLIENT_V6))
    }

    /// The backend's (w1's) address.
    pub fn backend(&self, v6: bool) -> IpAddr {
        self.lab.worker_ips(1)[usize::from(v6)]
    }

    /// The inside attacker's (w2's) own address: on the inside segment,
    /// not a backend.
    pub fn not_a_backend(&self, v6: bool) -> IpAddr {
        self.lab.worker_ips(2)[usize::from(v6)]
    }

    /// The edge's inside address (the SNAT source).
    pub fn inside(&self, v6: bool) -> IpAddr {
        pick(v6, IpAddr::V4(EDGE_INSIDE_V4), IpAddr::V6(EDGE_INSIDE_V6))
    }

    /// A TCP connection to the VIP's TCP port, both ends held.
    pub fn connect(&self, v6: bool) -> Conn {
        let vip = SocketAddr::new(self.vip(v6), TCP_PORT);
        Conn::open(&self.lab.client, vip, &self.listeners[usize::from(v6)])
            .unwrap_or_else(|e| panic!("a connection to {vip}: {e:#}\nstatus: {}", self.inst.status()))
    }

    /// A UDP socket of the client's, connected to the VIP's UDP port.
    pub fn udp_client(&self, v6: bool) -> UdpSocket {
        let (local, vip) = (SocketAddr::new(self.client_ip(v6), 0), SocketAddr::new(self.vip(v6), UDP_PORT));
        self.lab
            .client
            .run(move || -> std::io::Result<UdpSocket> {
                let s = UdpSocket::bind(local)?;
                s.connect(vip)?;
                Ok(s)
            })
            .expect("a UDP socket in the client namespace")
    }

    /// An attacker on the outside segment: raw frames out of the client
    /// namespace's link to the edge (the edge sees them on `e-out`).
    pub fn outside_attacker(&self) -> Attacker {
        Attacker::on(&self.lab.client, "c-out", mac(&self.lab.edge, "e-out").unwrap()).expect("raw socket on c-out")
    }

    /// An attacker on the inside segment: raw frames out of w2, through
    /// the switch, to the edge's `e-in`.
    pub fn inside_attacker(&self) -> Attacker {
        Attacker::on(&self.lab.workers[1], "eth0", mac(&self.lab.edge, "e-in").unwrap()).expect("raw socket on w2's eth0")
    }

    /// The NAT entries the kernel holds, as (backend, backend port, SNAT
    /// port, protocol), read from the pinned map.
    pub fn nat_entries(&self) -> Result<BTreeSet<(IpAddr, u16, u16, u8)>> {
        let maps = lb_user::datapath::maps::BalancerMaps::open(&self.inst.pin_path).context("open the pinned balancer maps")?;
        Ok(maps
            .nat
            .keys()
            .filter_map(Result::ok)
            .map(|k| (lb_user::datapath::maps::key_addr(&k.backend, k.family), k.backend_port, k.nat_port, k.proto))
            .collect())
    }

    /// Whether the NAT entry of the TCP connection the backend sees coming
    /// from `snat` ([`Conn::snat`]) is held: (backend, its port, the SNAT
    /// port, TCP).
    pub fn holds(&self, snat: SocketAddr) -> bool {
        let key = (self.backend(snat.is_ipv6()), TCP_PORT, snat.port(), crate::rawframe::proto::TCP);
        self.nat_entries().map(|set| set.contains(&key)).unwrap_or(false)
    }

    /// The balancer's counters by name (`swarmlb status --json`); names a
    /// version does not know are absent.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let s = self.inst.status();
        s["balancer"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect())
            .unwrap_or_default()
    }
}

/// The counters that changed between `before` and `after`, as `name +N`.
pub fn counter_changes(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let changes: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect();
    if changes.is_empty() { "no counter changed".into() } else { changes.join(", ") }
}
