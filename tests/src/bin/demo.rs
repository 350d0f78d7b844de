//! `cargo xtask demo`: the isolator and the load balancer at work, in
//! throwaway topologies.
//!
//! First the isolator:
//!
//! ```text
//!  dmz ns                                   host ns (a Swarm node)
//!  10.77.0.2 outsider      ── veth ──  dmz0  10.77.0.1, fd77::1
//!  10.77.0.3 admin (allow-listed)             postgres-like :5432, web :80/:443,
//!  10.77.0.4 another Swarm node               metrics :9090, swarm :2377, snmp udp/161
//! ```
//!
//! It scans the host from the DMZ before and after `swarmlb run` attaches,
//! tries the evasions (VLAN tag, fragments, tunnel), and prints `swarmlb
//! status`. Then the balancer, in `harness::edge_lab`'s network (a client,
//! an edge running swarmlb, three workers running nginx): TLS handshakes
//! through the VIP for each SNI name, connections spread by weight with the
//! counters printed as they grow, a backend drained by a reload. Everything
//! is removed at the end, also on failure.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use harness::{
    rawframe::{fragment_ipv4, FrameBuilder, Ipv4, RawSocket, L4},
    scan::{tcp_scan, udp_scan, TcpOutcome, UdpOutcome},
    servers::{TcpListeners, UdpEcho},
    ChildGuard, Netns, Topology,
};

/// A named evasion attempt: the frames it sends.
type Probe = (&'static str, Vec<Vec<u8>>);

const DEMO_CONFIG: &str = include_str!("../../../examples/demo.toml");
const TCP_PORTS: &[u16] = &[80, 443, 2377, 5432, 9090];
const UDP_PORTS: &[u16] = &[161, 4789, 5000];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn tcp_word(o: TcpOutcome) -> &'static str {
    match o {
        TcpOutcome::Open => "open",
        TcpOutcome::Refused => "closed",
        TcpOutcome::Timeout => "DROPPED",
        TcpOutcome::Error(_) => "error",
    }
}

fn udp_word(o: UdpOutcome) -> &'static str {
    match o {
        UdpOutcome::Echoed => "open",
        UdpOutcome::Unreachable => "closed",
        UdpOutcome::Silent => "DROPPED",
        UdpOutcome::Error(_) => "error",
    }
}

/// One row per probed port: what each source saw.
fn probe_table(dmz: &Netns, sources: &[(&str, &str)], target: IpAddr) -> Result<String> {
    let mut rows = vec![format!("  {:<10}", "port")];
    for (name, _) in sources {
        rows[0].push_str(&format!(" {name:>12}"));
    }
    let mut cols = Vec::new();
    for (_, src) in sources {
        let s: IpAddr = src.parse()?;
        let tcp = dmz.run(move || tcp_scan(target, TCP_PORTS.iter().copied(), Some(s), 64, Duration::from_millis(1200)))?;
        let udp = dmz.run(move || udp_scan(target, UDP_PORTS.iter().copied(), Some(s), Duration::from_millis(1200)))?;
        cols.push((tcp, udp));
    }
    for (i, port) in TCP_PORTS.iter().enumerate() {
        let mut row = format!("  tcp/{port:<6}");
        for (tcp, _) in &cols {
            row.push_str(&format!(" {:>12}", tcp_word(tcp[i].1)));
        }
        rows.push(row);
    }
    for (i, port) in UDP_PORTS.iter().enumerate() {
        let mut row = format!("  udp/{port:<6}");
        for (_, udp) in &cols {
            row.push_str(&format!(" {:>12}", udp_word(udp[i].1)));
        }
        rows.push(row);
    }
    Ok(rows.join("\n"))
}

fn swarmlb(args: &[&str]) -> Result<String> {
    let out = Command::new(root().join("target/release/swarmlb")).args(args).output()?;
    ensure!(out.status.success(), "swarmlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// `swarmlb run` in `ns` with `config`.
fn start_swarmlb(ns: &Netns, config: &Path, runtime: &Path) -> ChildGuard {
    ns.spawn(Command::new(root().join("target/release/swarmlb")).arg("run").arg("--config").arg(config).arg("--runtime-dir").arg(runtime))
}

/// Waits until the daemon wrote its state file (it has attached).
fn wait_ready(daemon: &mut ChildGuard, runtime: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !runtime.join("state.json").exists() {
        ensure!(daemon.try_status().is_none(), "swarmlb exited:\n{}", daemon.output_so_far());
        ensure!(Instant::now() < deadline, "swarmlb did not start:\n{}", daemon.output_so_far());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn main() -> Result<()> {
    harness::require_root()?;
    isolator_demo()?;
    balancer_demo()
}

const BALANCER_CONFIG: &str = r#"[balancer]
outside_interfaces = ["e-out"]
inside_interface = "e-in"

[[vip]]
name = "web"
address = "203.0.113.10"
mode = "nat"
rules = ["tcp/443", "tcp/80"]
backends = ["10.1.0.11", "10.1.0.12", { address = "10.1.0.13", weight = WEIGHT3 }]

[[vip]]
name = "web6"
address = "2001:db8:10::10"
mode = "nat"
rules = ["tcp/443", "tcp/80"]
backends = ["fd00:1::11", "fd00:1::12", "fd00:1::13"]
"#;

fn balancer_demo() -> Result<()> {
    use harness::{edge_lab::*, nginx::Nginx, tls};
    use std::{collections::BTreeMap, net::SocketAddr};

    println!("\n\n== The load balancer: client ── edge (swarmlb, VIP 203.0.113.10 / 2001:db8:10::10) ── switch ── w1 w2 w3 (nginx)\n");
    let lab = EdgeLab::new("demolb", 3);
    let ca = tls::TestCa::new();
    let any: [IpAddr; 2] = ["0.0.0.0".parse()?, "::".parse()?];
    let _nginx: Vec<Nginx> = (1..=3).map(|i| Nginx::start(&lab.workers[i - 1], &format!("w{i}"), &any, &ca, &["a.com", "b.com", "c.com"])).collect::<Result<_>>()?;
    let dir = std::env::temp_dir().join(format!("swarmlb-demolb-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pin = format!("/sys/fs/bpf/swarmlb-demolb-{}", std::process::id());
    let config = dir.join("swarmlb.toml");
    let write = |weight3: u32| std::fs::write(&config, format!("{}\n[settings]\npin_path = \"{pin}\"\n", BALANCER_CONFIG.replace("WEIGHT3", &weight3.to_string())));
    write(2)?;
    println!("-- swarmlb run with:\n{}", BALANCER_CONFIG.replace("WEIGHT3", "2").lines().map(|l| format!("     {l}")).collect::<Vec<_>>().join("\n"));
    let runtime = dir.join("run");
    let mut daemon = start_swarmlb(&lab.edge, &config, &runtime);
    let status = || swarmlb(&["status", "--json", "--runtime-dir", runtime.to_str().unwrap()]).and_then(|s| Ok(serde_json::from_str::<serde_json::Value>(&s)?));
    let result = (|| -> Result<()> {
        wait_ready(&mut daemon, &runtime)?;
        println!("\n-- TLS through the VIP, passed through untouched: the client verifies each worker's own certificate");
        let client_cfg = tls::tls_client(&ca);
        for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
            for sni in ["a.com", "b.com", "c.com"] {
                let info = tls::handshake(tls::connect(&lab.client, SocketAddr::new(vip, 443))?, &client_cfg, sni)?;
                println!("   {sni:<6} via {:<22} → {} (certificate CN={}, SAN {}, {:?})", SocketAddr::new(vip, 443).to_string(), info.peer_cn, info.peer_cn, info.peer_sans.join(","), info.protocol_version);
            }
        }
        let who = |n: usize, counts: &mut BTreeMap<String, usize>| -> Result<()> {
            for _ in 0..n {
                let (_, body) = tls::http_get(tls::connect(&lab.client, SocketAddr::new(IpAddr::V4(VIP_V4), 80))?, "a.com", "/")?;
                *counts.entry(body.trim().trim_start_matches("worker=").to_string()).or_default() += 1;
            }
            Ok(())
        };
        let live = |label: &str| -> Result<()> {
            let s = status()?;
            let backends: Vec<String> = s["vips"][0]["backends"]
                .as_array()
                .map(|a| a.iter().map(|b| format!("{} w={} flows={:<4} pkts={:<5}", b["address"].as_str().unwrap_or("?"), b["weight"], b["new_flows"], b["packets"])).collect())
                .unwrap_or_default();
            println!("   {label:<14} kernel counters: {}", backends.join(" | "));
            Ok(())
        };
        println!("\n-- 900 new HTTP connections to 203.0.113.10:80, weights 1:1:2, the kernel's counters as they grow");
        let mut counts = BTreeMap::new();
        for round in 1..=3 {
            who(300, &mut counts)?;
            live(&format!("after {}", round * 300))?;
        }
        println!("   answered by: {counts:?} (ideal 225 / 225 / 450)");
        println!("\n-- w3 drained (weight 0) with SIGHUP: existing flows stay, new ones go elsewhere");
        write(0)?;
        daemon.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(500));
        let mut after = BTreeMap::new();
        who(300, &mut after)?;
        println!("   300 more connections answered by: {after:?}");
        live("after drain")?;
        println!("\n-- swarmlb status\n{}", swarmlb(&["status", "--runtime-dir", runtime.to_str().unwrap()])?);
        Ok(())
    })();
    daemon.signal(libc::SIGTERM);
    let stopped = daemon.wait_timeout(Duration::from_secs(10));
    println!("-- swarmlb stopped ({}); the data path keeps running until `swarmlb down`", stopped.map_or("still running?".into(), |s| s.to_string()));
    let down = swarmlb(&["down", "--pin-path", &pin, "--runtime-dir", runtime.to_str().unwrap()]);
    println!("-- swarmlb down: {}", down.as_ref().map_or_else(|e| format!("{e:#}"), |o| o.trim().to_owned()));
    let _ = std::fs::remove_dir_all(&dir);
    result.context("balancer demo")
}

fn isolator_demo() -> Result<()> {
    let mut topo = Topology::new();
    let host = topo.netns("demoh");
    let dmz = topo.netns("demod");
    topo.veth(&dmz, "out0", &host, "dmz0");
    topo.addr(&host, "dmz0", "10.77.0.1/24");
    topo.addr(&host, "dmz0", "fd77::1/64");
    // The reverse-path check needs forwarding on the zone interface.
    topo.forwarding(&host);
    for a in ["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24", "fd77::2/64", "fd77::3/64", "fd77::4/64"] {
        topo.addr(&dmz, "out0", a);
    }
    let addrs: [IpAddr; 2] = ["10.77.0.1".parse()?, "fd77::1".parse()?];
    let _tcp = TcpListeners::start(&host, &addrs, TCP_PORTS)?;
    let udp = UdpEcho::start(&host, &addrs, UDP_PORTS)?;
    let sources = [("outsider", "10.77.0.2"), ("admin", "10.77.0.3"), ("swarm node", "10.77.0.4")];

    println!("== A Swarm node with services on {TCP_PORTS:?}/tcp and {UDP_PORTS:?}/udp, probed from its DMZ side\n");
    println!("-- without swarmlb: the routing mesh's hole, everything is reachable\n{}\n", probe_table(&dmz, &sources, addrs[0])?);

    let dir = std::env::temp_dir().join(format!("swarmlb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pin = format!("/sys/fs/bpf/swarmlb-demo-{}", std::process::id());
    let config = dir.join("swarmlb.toml");
    std::fs::write(&config, format!("{DEMO_CONFIG}\n[settings]\npin_path = \"{pin}\"\n"))?;
    let runtime = dir.join("run");
    println!("-- swarmlb run with examples/demo.toml:\n{}", DEMO_CONFIG.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| format!("     {l}")).collect::<Vec<_>>().join("\n"));
    let mut daemon = start_swarmlb(&host, &config, &runtime);
    let result = (|| -> Result<()> {
        wait_ready(&mut daemon, &runtime)?;
        println!("\n-- with swarmlb on dmz0: protected ports are dropped unless the source is allowed\n{}\n", probe_table(&dmz, &sources, addrs[0])?);
        let sources6 = [("outsider", "fd77::2"), ("admin", "fd77::3"), ("swarm node", "fd77::4")];
        println!("-- the same over IPv6 (fd77::1)\n{}\n", probe_table(&dmz, &sources6, addrs[1])?);

        println!("-- a full scan of 1-65535/tcp from the outsider");
        let t = Instant::now();
        let full = dmz.run(move || tcp_scan(addrs[0], 1..=65535, Some("10.77.0.2".parse().unwrap()), 2048, Duration::from_millis(1500)))?;
        let open: Vec<u16> = full.iter().filter(|(_, o)| *o == TcpOutcome::Open).map(|(p, _)| *p).collect();
        let dropped = full.iter().filter(|(_, o)| *o == TcpOutcome::Timeout).count();
        println!("   {} ports in {:.1}s: open {open:?}, {dropped} dropped, the rest closed\n", full.len(), t.elapsed().as_secs_f64());

        println!("-- evasions from the outsider, injected as raw frames: aimed at udp/161 (snmp, protected),");
        println!("   and the same frames to udp/5000 (open) to show the host's kernel would deliver them");
        let raw = dmz.run(|| RawSocket::open(&dmz, "out0"))?;
        let eth = FrameBuilder::new(harness::topology::mac(&dmz, "out0")?, harness::topology::mac(&host, "dmz0")?);
        let (src, dst) = (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 1));
        let frames_to = |dport: u16, id: u16| -> Result<Vec<Probe>> {
            let l4 = L4::udp(40000, dport, &[0x30; 48]);
            let ip = |n: u16| Ipv4 { id: id + n, ..Ipv4::new(src, dst) };
            Ok(vec![
                ("VLAN-ID-0 priority tag", vec![eth.clone().vlan(0x8100, 0).ipv4(&ip(0).packet(&l4))]),
                ("QinQ, both tags VID 0", vec![eth.clone().vlan(0x88a8, 0).vlan(0x8100, 0).ipv4(&ip(1).packet(&l4))]),
                ("three fragments", fragment_ipv4(&ip(2).packet(&l4), &[16, 40])?.iter().map(|p| eth.ipv4(p)).collect()),
                ("fragments, last first", fragment_ipv4(&ip(3).packet(&l4), &[16, 40])?.iter().rev().map(|p| eth.ipv4(p)).collect()),
                ("zero-length first fragment", fragment_ipv4(&ip(4).packet(&l4), &[0])?.iter().map(|p| eth.ipv4(p)).collect()),
                ("IPIP-encapsulated", vec![eth.ipv4(&ip(5).with_payload(4, &Ipv4::new(src, dst).packet(&l4)))]),
            ])
        };
        let deliver = |frames: &[Vec<u8>], port: u16| -> Result<u64> {
            let before = udp.received(port);
            for f in frames {
                raw.send(f)?;
            }
            std::thread::sleep(Duration::from_millis(200));
            Ok(udp.received(port) - before)
        };
        println!("   {:<28} {:>7} {:>16} {:>16}", "probe", "frames", "reached udp/161", "reached udp/5000");
        for ((name, to_snmp), (_, to_open)) in frames_to(161, 100)?.into_iter().zip(frames_to(5000, 200)?) {
            let snmp = deliver(&to_snmp, 161)?;
            let open = deliver(&to_open, 5000)?;
            println!("   {name:<28} {:>7} {snmp:>16} {open:>16}", to_snmp.len());
        }
        println!("   (out-of-order and zero-length-first fragments are dropped whatever the port: see the README)\n");
        std::thread::sleep(Duration::from_millis(300));
        println!("\n-- swarmlb status\n{}", swarmlb(&["status", "--runtime-dir", runtime.to_str().unwrap()])?);
        Ok(())
    })();
    daemon.signal(libc::SIGTERM);
    let stopped = daemon.wait_timeout(Duration::from_secs(10));
    let down = swarmlb(&["down", "--pin-path", &pin, "--runtime-dir", runtime.to_str().unwrap()]);
    let log = daemon.output_so_far();
    let sampled: Vec<&str> = log.lines().filter(|l| l.contains("dropped a packet")).take(3).collect();
    if !sampled.is_empty() {
        println!("-- a few of the daemon's sampled drop logs\n{}\n", sampled.join("\n"));
    }
    let attached = host.exec(&["ip", "link", "show", "dev", "dmz0"]).unwrap_or_default().contains("xdp");
    println!(
        "-- swarmlb stopped ({}), then `swarmlb down` ({}); dmz0 has {}XDP program; pins {}",
        stopped.map_or("still running?".into(), |s| s.to_string()),
        if down.is_ok() { "ok" } else { "failed" },
        if attached { "an " } else { "no " },
        if Path::new(&pin).exists() { "left" } else { "removed" }
    );
    let _ = std::fs::remove_dir_all(&dir);
    result.context("isolator demo")
}
