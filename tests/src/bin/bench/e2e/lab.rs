//! The benchmark's network: the e2e tests' [`EdgeLab`] (client → edge →
//! switch → three workers) with nginx and an iperf3 server on every
//! worker, a client address per mode, and the sysctls a load generator
//! needs.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use anyhow::{Context, Result};
use harness::{
    edge_lab::{worker_addrs, EdgeLab},
    nginx::Nginx,
    tls::TestCa,
    ChildGuard,
};

/// Workers behind the edge.
pub const WORKERS: usize = 3;

/// The bulk VIP's address: one backend only, because iperf3's control and
/// data connections must reach the same server.
pub const BULK_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

/// The iperf3 servers' port.
pub const IPERF_PORT: u16 = 5201;

/// Client addresses per mode (see `load::Targets::pick`).
pub const ADDRS_PER_MODE: usize = 3;

/// Client address `k` of mode number `i`: modes never share a source, so
/// one mode's TIME_WAIT sockets on a backend cannot meet another mode's SYNs.
pub fn client_addr(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, (20 + i * ADDRS_PER_MODE + k) as u8)
}

/// The running lab. Field order is drop order: servers before namespaces.
pub struct Lab {
    // Held, never read: the servers run as long as the lab and stop on drop.
    _nginx: Vec<Nginx>,
    _iperf: Vec<ChildGuard>,
    pub ca: TestCa,
    pub lab: EdgeLab,
}

impl Lab {
    /// Builds the network with client addresses for `modes` modes.
    pub fn new(modes: usize) -> Result<Self> {
        let mut lab = EdgeLab::new("bx", WORKERS);
        let client = lab.client.clone();
        // The baseline reaches the workers' own addresses through the edge.
        lab.topology().route(&client, "10.1.0.0/24", "198.51.100.1");
        for i in 0..modes {
            for k in 0..ADDRS_PER_MODE {
                lab.topology().addr(&client, "c-out", &format!("{}/24", client_addr(i, k)));
            }
        }
        // Tens of thousands of short connections per window: every port,
        // and TIME_WAIT ports reused (client, and HAProxy's side on the
        // edge). The edge's own ports stay above swarmlb's SNAT ports
        // (1024–32767): a reply to the edge on a SNAT port that is no NAT
        // entry's is dropped as forged, which would fail the agent's health
        // checks (the agent warns about such an overlap).
        lab.client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        lab.edge.sysctl("net.ipv4.ip_local_port_range", "32768 65535")?;
        for ns in [&lab.client, &lab.edge] {
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        }
        let ca = TestCa::new();
        let any: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        let mut nginx = Vec::new();
        let mut iperf = Vec::new();
        for (i, w) in lab.workers.iter().enumerate() {
            w.sysctl("net.core.somaxconn", "4096")?;
            nginx.push(Nginx::start(w, &format!("w{}", i + 1), &any, &ca, &["a.com"])?);
            let port = IPERF_PORT.to_string();
            iperf.push(w.try_spawn(Command::new("iperf3").args(["-s", "-p", &port])).context("iperf3 (apt-get install iperf3)")?);
        }
        Ok(Self { _nginx: nginx, _iperf: iperf, ca, lab })
    }

    /// The workers' addresses.
    pub fn workers() -> Vec<Ipv4Addr> {
        (1..=WORKERS).map(|i| worker_addrs(i).0).collect()
    }
}
