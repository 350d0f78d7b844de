//! The balancer end to end: `swarmlb run` on an edge namespace, Debian's
//! nginx as the Swarm proxy on worker namespaces, real TLS clients.
//! TLS passes through untouched (the client verifies each worker's
//! certificate for every SNI name), ACME HTTP-01 on port 80 reaches the
//! proxies, new connections follow the weights, and long-lived connections
//! survive backend changes.

mod common;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{
    daemon::{stop_cleanly, wait_until, BackendSetups},
    edge::{config, config_with, start, Running, ANY, FAST_HEALTH, SNI},
    http::{check, metric, metrics, who},
    xdp,
};
use harness::{
    config::{worker_vips, EdgeConfig},
    edge_lab::*,
    nginx::Nginx,
    stream::{Ended, Stream, Streaming},
    tls::{connect, handshake, http_get, tls_client},
    Netns,
};

#[test]
fn nat_passes_tls_through_and_http_for_acme_over_ipv4_and_ipv6() {
    let mut r = start("lbnat", 3, &config("nat", &[(1, 1), (2, 1), (3, 1)]));
    let client_cfg = tls_client(&r.ca);
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        for sni in SNI {
            let stream = connect(&r.lab.client, SocketAddr::new(vip, 443)).unwrap_or_else(|e| {
                panic!("connect {vip}: {e:#}\nstatus: {}\n{}", r.inst.status(), r.daemon.output_so_far())
            });
            let info = handshake(stream, &client_cfg, sni)
                .unwrap_or_else(|e| panic!("TLS to {vip} for {sni}: {e:#}"));
            assert!(["w1", "w2", "w3"].contains(&info.peer_cn.as_str()), "{info:?}");
            assert!(info.peer_sans.iter().any(|s| s == sni), "the worker's own certificate for {sni}: {info:?}");
        }
        // ACME HTTP-01: the challenge file every proxy serves.
        for i in 1..=3 {
            r.nginx(i).put_acme_challenge("tok123", &format!("tok123.key-w{i}")).unwrap();
        }
        let (status, body) =
            http_get(connect(&r.lab.client, SocketAddr::new(vip, 80)).unwrap(), "a.com", "/.well-known/acme-challenge/tok123").unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("tok123.key-w"), "{body}");
    }
    // In nat mode the proxies see the edge's inside address (nginx logs a
    // request after answering it).
    wait_until(Duration::from_secs(5), || (1..=3).map(|i| r.nginx(i).access_count()).sum::<usize>() >= 2, || "access log lines".into());
    for i in 1..=3 {
        for a in r.nginx(i).accesses() {
            assert!(a.client == IpAddr::V4(EDGE_INSIDE_V4) || a.client == IpAddr::V6(EDGE_INSIDE_V6), "{a:?}");
        }
    }
    let s = r.inst.status();
    // A first SYN dropped because the backend's neighbour entry was not
    // resolved yet leaves its flow remembered: the retransmission is a hit.
    let unresolved = s["balancer"]["drop_no_neighbour"].as_u64().unwrap();
    assert!(s["vips"][0]["rules"][0]["new_flows"].as_u64().unwrap() + unresolved >= 3, "{s}");
    assert!(s["balancer"]["nat_reply"].as_u64().unwrap() > 0, "{s}");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

#[test]
fn new_connections_follow_the_weights() {
    let r = start("lbshare", 3, &config("nat", &[(1, 1), (2, 1), (3, 2)]));
    const N: usize = 3000;
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..N {
        *count.entry(who(&r.lab.client, IpAddr::V4(VIP_V4))).or_default() += 1;
    }
    println!("shares over {N} connections (weights 1:1:2): {count:?}");
    for (w, weight) in [("w1", 1.0), ("w2", 1.0), ("w3", 2.0)] {
        let expected = N as f64 * weight / 4.0;
        let got = count.get(w).copied().unwrap_or(0) as f64;
        assert!((got - expected).abs() <= expected * 0.15, "{w}: {got} vs {expected} (±15%): {count:?}");
    }
}

#[test]
fn long_lived_connections_survive_backend_changes() {
    let initial = [(1, 1), (2, 1), (3, 1)];
    let mut r = start("lbkeep", 4, &config("nat", &initial));
    let mut streams: Vec<Stream> = (0..30).map(|_| Stream::open(&r.lab.client, IpAddr::V4(VIP_V4))).collect();
    let on = |streams: &[Stream], w: &str| streams.iter().filter(|s| s.worker == w).count();
    println!("30 streams: w1 {} w2 {} w3 {}", on(&streams, "w1"), on(&streams, "w2"), on(&streams, "w3"));

    // Adding a backend, changing weights, draining one: every stream stays.
    let steps: [&[(usize, u32)]; 3] = [&[(1, 1), (2, 1), (3, 1), (4, 1)], &[(1, 3), (2, 1), (3, 1), (4, 1)], &[(1, 3), (2, 0), (3, 1), (4, 1)]];
    for step in steps {
        r.reload(&config("nat", step), step);
        assert_eq!(check(&mut streams), Vec::<usize>::new(), "streams broken or moved after {step:?}");
    }
    // Drained: no new connection goes to w2.
    for _ in 0..100 {
        assert_ne!(who(&r.lab.client, IpAddr::V4(VIP_V4)), "w2", "a new connection reached the drained backend");
    }
    // Removing w3: only its streams are affected.
    let removed: Vec<usize> = streams.iter().enumerate().filter(|(_, s)| s.worker == "w3").map(|(i, _)| i).collect();
    let step: &[(usize, u32)] = &[(1, 3), (2, 0), (4, 1)];
    r.reload(&config("nat", step), step);
    let bad = check(&mut streams);
    assert_eq!(bad, removed, "exactly the streams on the removed backend lost it");
    println!("kept {} of 30 streams through add, reweight, drain; removal of w3 moved its {}", 30 - bad.len(), bad.len());
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

fn setup_backends(r: &Running, tag: &str, mode: &str) -> BackendSetups {
    let vips = [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)];
    BackendSetups::apply(&r.lab.workers, tag, mode, &vips, &[IpAddr::V4(EDGE_INSIDE_V4), IpAddr::V6(EDGE_INSIDE_V6)])
}

/// TLS for every SNI and HTTP through both VIPs; the proxies must see the
/// client's own address.
fn serves_with_client_address(r: &Running) {
    let client_cfg = tls_client(&r.ca);
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        for sni in SNI {
            let stream = connect(&r.lab.client, SocketAddr::new(vip, 443))
                .unwrap_or_else(|e| panic!("connect {vip}: {e:#}\nstatus: {}", r.inst.status()));
            let info = handshake(stream, &client_cfg, sni).unwrap_or_else(|e| panic!("TLS to {vip} for {sni}: {e:#}"));
            assert!(["w1", "w2", "w3"].contains(&info.peer_cn.as_str()), "{info:?}");
            assert!(info.peer_sans.iter().any(|s| s == sni), "{info:?}");
        }
        assert!(who(&r.lab.client, vip).starts_with('w'));
    }
    // nginx logs a request after answering it.
    wait_until(Duration::from_secs(5), || (1..=3).map(|i| r.nginx(i).access_count()).sum::<usize>() >= 2, || "access log lines".into());
    let mut seen = 0;
    for i in 1..=3 {
        for a in r.nginx(i).accesses() {
            assert!(a.client == IpAddr::V4(CLIENT_V4) || a.client == IpAddr::V6(CLIENT_V6), "the client's address is kept: {a:?}");
            seen += 1;
        }
    }
    assert!(seen >= 2, "requests reached the proxies");
}

#[test]
fn dsr_tunnels_to_backends_that_answer_clients_directly() {
    let mut r = start("lbdsr", 3, &config("dsr", &[(1, 1), (2, 1), (3, 1)]));
    let setups = setup_backends(&r, "lbdsr", "dsr");
    assert!(xdp::attached(&r.lab.workers[0], "eth0"), "decap attached and kept after backend-setup exited");
    serves_with_client_address(&r);
    // Full-size segments do not fit the tunnel: the edge tells the client
    // the MTU it may use, and the client's TCP adapts (path MTU discovery
    // through the balancer).
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        let mut big = Stream::open(&r.lab.client, vip);
        big.pad = 6000;
        assert_eq!(big.ask().unwrap_or_else(|e| panic!("a 6 kB request through {vip}: {e}\n{}", r.inst.status())), big.worker);
    }
    let s = r.inst.status();
    assert!(s["balancer"]["icmp_too_big_sent"].as_u64().unwrap() >= 2, "{s}");
    assert!(s["balancer"]["nat_reply"].as_u64().unwrap() == 0 && s["nat_entries"].as_u64().unwrap() == 0, "no NAT state in dsr: {s}");
    // --undo takes it all back.
    drop(setups);
    let w = &r.lab.workers[0];
    assert!(xdp::detached_soon(w, "eth0"), "decap detached");
    assert!(!w.exec(&["ip", "addr", "show", "dev", "lo"]).unwrap().contains(&VIP_V4.to_string()), "VIP removed from lo");
    assert_eq!(w.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap().trim(), "0", "sysctls restored");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

#[test]
fn dsr_l2_rewrites_macs_for_backends_on_the_edges_segment() {
    let mut r = start("lbl2", 3, &config("dsr-l2", &[(1, 1), (2, 1), (3, 1)]));
    let _setups = setup_backends(&r, "lbl2", "dsr-l2");
    assert!(!xdp::attached(&r.lab.workers[0], "eth0"), "dsr-l2 needs no decap program");
    serves_with_client_address(&r);
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

#[test]
fn udp_is_balanced_and_a_zone_on_the_outside_interface_still_isolates() {
    use harness::{
        config::{EdgeConfig, Vip},
        scan::{tcp_scan, TcpOutcome},
        servers::{TcpListeners, UdpEcho},
    };
    let cfg = EdgeConfig::balancer()
        .zone_interface("e-out", "dmz")
        .protected("dmz", &["tcp/5432"])
        .vip(Vip::new("dns", IpAddr::V4(VIP_V4), &["udp/5353", "tcp/80"]).backends((1..=3).map(|i| IpAddr::V4(worker_addrs(i).0))))
        .to_toml();
    let r = start("lbudp", 3, &cfg);
    let echoes: Vec<UdpEcho> =
        (1..=3).map(|i| UdpEcho::start(&r.lab.workers[i - 1], &[IpAddr::V4(worker_addrs(i).0)], &[5353]).unwrap()).collect();
    let edge_addr: IpAddr = "198.51.100.1".parse().unwrap();
    let _edge_services = TcpListeners::start(&r.lab.edge, &[edge_addr], &[5432, 8000]).unwrap();

    // The isolator still judges what is not the balancer's.
    let scan = r.lab.client.run(move || tcp_scan(edge_addr, [5432, 8000], None, 4, Duration::from_millis(800))).unwrap();
    assert_eq!(scan, vec![(5432, TcpOutcome::Timeout), (8000, TcpOutcome::Open)], "protected port dropped, others open");

    // UDP through the VIP: every datagram echoed back from the VIP.
    let answered = r.lab.client.run(|| {
        let mut answered = 0;
        for i in 0..30u16 {
            let sock = std::net::UdpSocket::bind((IpAddr::V4(CLIENT_V4), 20000 + i)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            sock.connect(SocketAddr::new(IpAddr::V4(VIP_V4), 5353)).unwrap();
            sock.send(b"where are you").unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = sock.recv(&mut buf) {
                assert_eq!(&buf[..n], b"where are you");
                answered += 1;
            }
        }
        answered
    });
    assert_eq!(answered, 30, "every datagram answered through the VIP");
    let per_worker: Vec<u64> = echoes.iter().map(|e| e.received(5353)).collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 30, "{per_worker:?}");
    assert!(per_worker.iter().filter(|n| **n > 0).count() >= 2, "spread over the workers: {per_worker:?}");

    let s = r.inst.status();
    let e_out = s["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == "e-out").unwrap().clone();
    assert_eq!((e_out["program"].as_str(), e_out["zone"].as_str(), e_out["bound"].as_bool()), (Some("balancer"), Some("dmz"), Some(true)), "{s}");
    assert!(s["dropped"]["protected_port"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn health_checks_take_a_dead_proxy_out_and_bring_it_back() {
    let cfg = config_with("nat", &[(1, 1), (2, 1), (3, 1)], "", FAST_HEALTH);
    let mut r = start("lbhealth", 3, &cfg);
    assert!((1..=3).all(|w| r.up(w)));

    // w2's proxy dies: out within fall × interval (+ the probe timeout).
    r.nginx[1].stop();
    let t = std::time::Instant::now();
    wait_until(Duration::from_secs(15), || !r.up(2), || "w2 taken out".into());
    let takeout = t.elapsed();
    println!("dead proxy taken out after {:.1} s (fall 2 × interval 3 s + timeout 1 s = 7 s at most)", takeout.as_secs_f64());
    assert!(takeout <= Duration::from_secs(7) + Duration::from_millis(1500), "{takeout:?}");
    for _ in 0..60 {
        assert_ne!(who(&r.lab.client, IpAddr::V4(VIP_V4)), "w2", "a new connection went to a backend that is down");
    }

    // It comes back: in again after rise successes.
    r.nginx[1] = Nginx::start(&r.lab.workers[1], "w2", &ANY, &r.ca, &SNI).unwrap();
    let t = std::time::Instant::now();
    wait_until(Duration::from_secs(15), || r.up(2), || "w2 back".into());
    println!("recovered proxy back after {:.1} s (rise 2 × interval 3 s)", t.elapsed().as_secs_f64());
    let back = (0..90).filter(|_| who(&r.lab.client, IpAddr::V4(VIP_V4)) == "w2").count();
    assert!(back > 10, "new connections reach w2 again: {back} of 90");
    assert!(r.daemon.output_so_far().contains("backend failed its health checks: out"), "the transition is logged");
    // ... and counted, in `status` and in the Prometheus endpoint.
    let b = &r.inst.status()["vips"][0]["backends"];
    let transitions = |addr: &str| b.as_array().unwrap().iter().find(|x| x["address"] == addr).unwrap()["health_transitions"].as_u64().unwrap();
    assert_eq!((transitions("10.1.0.11"), transitions("10.1.0.12")), (0, 2), "{b}");
    let m = metrics(&r.lab.edge);
    for want in [
        "swarmlb_backend_health_transitions_total{vip=\"web4\",backend=\"10.1.0.12\"} 2",
        "swarmlb_backend_up{vip=\"web4\",backend=\"10.1.0.12\"} 1",
        "swarmlb_backend_weight{vip=\"web4\",backend=\"10.1.0.11\"} 1",
        "swarmlb_isolator_dropped_total{reason=",
        "swarmlb_balancer_packets_total{outcome=",
    ] {
        assert!(m.contains(want), "metrics lack {want}:\n{m}");
    }
    let sum = |prefix: &str| -> u64 {
        m.lines().filter(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum()
    };
    let new_flows = sum("swarmlb_backend_new_flows_total{vip=\"web4\"");
    let outcomes: Vec<&str> = m.lines().filter(|l| l.starts_with("swarmlb_balancer_packets_total") || l.contains("new_flows_total")).collect();
    let all = outcomes.join("\n");
    // The per-backend and per-rule figures are the kernel's own counts.
    assert_eq!(new_flows, sum("swarmlb_backend_new_flows_total"), "only web4 got connections:\n{all}");
    assert_eq!(new_flows, sum("swarmlb_balancer_packets_total{outcome=\"new_flow\"}"), "per-backend new flows add up to the balancer's:\n{all}");
    assert_eq!(new_flows, sum("swarmlb_rule_new_flows_total{vip=\"web4\""), "per-rule new flows add up too:\n{all}");
    // Every one of the 150 connections was forwarded. Most are new flows;
    // a client that picks a 5-tuple again while its flow is remembered
    // makes a hit instead (seen: 137 new flows of 150, no drops, in some
    // full-suite runs), so the hits are counted too.
    let hits = sum("swarmlb_balancer_packets_total{outcome=\"flow_hit\"}");
    let dropped = sum("swarmlb_balancer_packets_total{outcome=\"drop_");
    assert!(new_flows >= 100 && new_flows + hits >= 150 * 3, "the metrics count the connections made here: {new_flows} new flows, {hits} hits, {dropped} drops\n{all}");
    if new_flows < 150 {
        println!("{new_flows} of 150 connections were new flows ({dropped} drops)");
    }
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

/// The id of the XDP program on `ifname` in `ns`.
fn xdp_prog_id(ns: &Netns, ifname: &str) -> String {
    let out = ns.exec(&["ip", "-d", "link", "show", "dev", ifname]).unwrap();
    let at = out.find("prog/xdp id ").map(|i| i + "prog/xdp id ".len()).expect("a program is attached");
    out[at..].split_whitespace().next().unwrap().to_owned()
}

/// Restarting the daemon — SIGTERM and start (an upgrade is the same with a
/// new binary), or kill -9 and start — while 50 connections stream:
/// nothing breaks, nothing moves, and requests keep being answered while no
/// daemon runs at all. The restarted daemon's programs replace the old ones
/// on the same links. The first restart also stands for an upgrade from a
/// build without the interface MAC map: its pin is gone, and the new
/// daemon creates it, fills it and forwards on.
#[test]
fn restarts_break_no_connection() {
    let workers = [(1, 1), (2, 1), (3, 1)];
    let mut r = start("lbrst", 3, &config("nat", &workers));
    let streaming = Streaming::open(&r.lab.client, IpAddr::V4(VIP_V4), 50, Duration::from_millis(20));
    // At least one answer per stream in each window: they are moving.
    let progress = |what: &str, window: Duration| streaming.progress_at_least(what, window, 50);
    progress("before", Duration::from_secs(1));
    let first_prog = xdp_prog_id(&r.lab.edge, "e-out");

    stop_cleanly(&mut r.daemon, libc::SIGTERM);
    std::fs::remove_file(r.inst.pin_path.join(lb_common::balancer::MAP_IF_MACS)).expect("the MAC map's pin");
    progress("no daemon (after SIGTERM)", Duration::from_secs(2));
    r.daemon = r.inst.start(&r.lab.edge, &[]);
    r.inst.wait_ready(&mut r.daemon);
    let e_out = harness::topology::ifindex(&r.lab.edge, "e-out").unwrap();
    let written = lb_user::datapath::maps::BalancerMaps::open(&r.inst.pin_path).expect("the maps, the MAC map created again").if_macs.get(&e_out, 0).unwrap();
    assert_eq!((written.mac, written.known), (harness::topology::mac(&r.lab.edge, "e-out").unwrap(), 1), "e-out's MAC written into the new map");
    assert!(r.daemon.output_so_far().contains("adopting the running data path"), "{}", r.daemon.output_so_far());
    let second_prog = xdp_prog_id(&r.lab.edge, "e-out");
    assert_ne!(first_prog, second_prog, "the restarted daemon's program runs");
    progress("after restart", Duration::from_secs(1));

    r.daemon.signal(libc::SIGKILL);
    r.daemon.wait_timeout(Duration::from_secs(10)).expect("killed");
    progress("no daemon (after kill -9)", Duration::from_secs(2));
    r.daemon = r.inst.start(&r.lab.edge, &[]);
    let pid = u64::from(r.daemon.pid());
    wait_until(Duration::from_secs(20), || r.inst.status()["pid"].as_u64() == Some(pid), || r.daemon.output_so_far());
    assert_ne!(xdp_prog_id(&r.lab.edge, "e-out"), second_prog);
    progress("after restart from kill -9", Duration::from_secs(1));

    let answered = streaming.answered();
    let broken: Vec<String> = streaming.stop().iter().filter_map(Ended::failure).collect();
    println!("50 streams through SIGTERM + restart and kill -9 + restart: {} broken, {answered} requests answered", broken.len());
    assert!(broken.is_empty(), "broken streams: {broken:?}");
    // New connections after all that still spread over every worker.
    let seen: std::collections::BTreeSet<String> = (0..60).map(|_| who(&r.lab.client, IpAddr::V4(VIP_V4))).collect();
    assert_eq!(seen.len(), 3, "new connections reach every worker: {seen:?}");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

/// The balancer's config for workers 1–3 with firewall lists on the IPv4
/// VIP (`web4`); the IPv6 VIP (`web6`) has none.
fn firewall_config(allow: &[&str], deny: &[&str]) -> String {
    let workers = [(1, Some(1)), (2, Some(1)), (3, Some(1))];
    let [v4, v6] = worker_vips("web", &["tcp/443", "tcp/80"], &workers);
    EdgeConfig::balancer().vips([v4.firewall(allow, deny), v6]).to_toml()
}

/// Whether a TLS connection to the IPv4 VIP from the client's address
/// `src` (picked by a host route to the VIP) completes, verifying the
/// worker's certificate.
fn tls_from(r: &Running, src: &str) -> bool {
    let c = &r.lab.client;
    let route = format!("{VIP_V4}/32");
    c.exec(&["ip", "route", "replace", &route, "via", "198.51.100.1", "src", src]).unwrap();
    let ok = connect(c, SocketAddr::new(IpAddr::V4(VIP_V4), 443)).and_then(|s| handshake(s, &tls_client(&r.ca), SNI[0])).is_ok();
    c.exec(&["ip", "route", "del", &route]).unwrap();
    ok
}

/// `web4`'s firewall drops in the status: (prefix, action) → packets.
fn firewall_drops(r: &Running) -> HashMap<(String, String), u64> {
    let s = r.inst.status();
    s["vips"][0]["firewall"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| ((f["prefix"].as_str().unwrap().to_string(), f["action"].as_str().unwrap().to_string()), f["drops"].as_u64().unwrap()))
        .collect()
}

/// `vip`'s rows under FIREWALL in `swarmlb status`'s text tables:
/// (prefix, action) → packets dropped; empty when the VIP shows no
/// firewall table.
fn firewall_table(r: &Running, vip: &str) -> HashMap<(String, String), u64> {
    let table = r.inst.status_table();
    let section = table.split("\nVIP ").find(|s| s.starts_with(&format!("{vip} "))).unwrap_or_else(|| panic!("no VIP {vip} in\n{table}"));
    let Some(header) = section.lines().position(|l| l.split_whitespace().eq(["FIREWALL", "PREFIX", "DROPPED"])) else { return HashMap::new() };
    section
        .lines()
        .skip(header + 1)
        .take_while(|l| l.starts_with("  ") && !l.trim().is_empty())
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [action, prefix, drops] => ((prefix.to_string(), action.to_string()), drops.parse().unwrap_or_else(|_| panic!("{l:?} in\n{table}"))),
            _ => panic!("a FIREWALL row {l:?} in\n{table}"),
        })
        .collect()
}

/// The text table shows `web4`'s firewall rows as the JSON does (the
/// same rules, the counts read between two JSON reads) and none for
/// `web6`.
fn check_firewall_table(r: &Running) {
    let (before, text, after) = (firewall_drops(r), firewall_table(r, "web4"), firewall_drops(r));
    assert!(!text.is_empty(), "web4 has firewall rules");
    let mut keys: Vec<_> = text.keys().collect();
    keys.sort();
    let mut json_keys: Vec<_> = after.keys().collect();
    json_keys.sort();
    assert_eq!(keys, json_keys, "the text shows the rules the JSON does");
    for (k, n) in &text {
        assert!((before[k]..=after[k]).contains(n), "{k:?}: {n} in the text, {} to {} in the JSON", before[k], after[k]);
    }
    assert!(firewall_table(r, "web6").is_empty(), "web6 has no firewall rules to show");
}

/// Firewall rules with real parts: the real XDP balancer, TLS to nginx,
/// two client addresses. A denied client gets no connection and its rule's
/// counter moves (status and metrics); the allowed one connects; the VIP
/// without rules serves both. A reload that denies the allowed client
/// ends its open connection at once and refuses its new ones, and lets the
/// formerly denied client in.
#[test]
fn firewall_denies_one_client_and_lets_the_other_connect() {
    let mut r = start("lbfw", 3, &firewall_config(&[], &["198.51.100.3"]));
    harness::rtnl::addr(&r.lab.client, "c-out", "198.51.100.3/24").unwrap();
    assert!(tls_from(&r, "198.51.100.2"), "the allowed client connects");
    let mut open = vec![Stream::open(&r.lab.client, IpAddr::V4(VIP_V4)).with_read_timeout(Duration::from_secs(3))];
    assert!(!tls_from(&r, "198.51.100.3"), "the denied client gets no connection");
    let drops = firewall_drops(&r);
    assert!(drops[&("198.51.100.3/32".to_string(), "deny".to_string())] >= 1, "{drops:?}");
    let m = metrics(&r.lab.edge);
    let series = r#"swarmlb_firewall_drops_total{vip="web4",rule="198.51.100.3/32",action="deny"}"#;
    assert!(metric::<u64>(&m, series).is_some_and(|n| n >= 1), "{series} in\n{m}");
    check_firewall_table(&r);
    assert!(firewall_table(&r, "web4")[&("198.51.100.3/32".to_string(), "deny".to_string())] >= 1);
    // The VIP without rules: anyone, and nothing to show.
    assert!(["w1", "w2", "w3"].contains(&who(&r.lab.client, IpAddr::V6(VIP_V6)).as_str()));
    assert!(r.inst.status()["vips"][1]["firewall"].as_array().unwrap().is_empty());
    assert_eq!(check(&mut open), Vec::<usize>::new(), "the allowed client's connection works");

    // Now the other way round, by SIGHUP.
    r.inst.write_config(&firewall_config(&[], &["198.51.100.2"]));
    r.daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), || firewall_drops(&r).contains_key(&("198.51.100.2/32".to_string(), "deny".to_string())), || r.daemon.output_so_far());
    assert_eq!(check(&mut open), vec![0], "the open connection of the newly denied client ends at once");
    assert!(!tls_from(&r, "198.51.100.2"), "and it gets no new one");
    assert!(tls_from(&r, "198.51.100.3"), "the client no longer denied connects");
    assert!(firewall_drops(&r)[&("198.51.100.2/32".to_string(), "deny".to_string())] >= 2);

    // An allow list: only those, and the rest counted as not allowed.
    r.inst.write_config(&firewall_config(&["198.51.100.3"], &[]));
    r.daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), || firewall_drops(&r).contains_key(&("*".to_string(), "not_allowed".to_string())), || r.daemon.output_so_far());
    assert!(tls_from(&r, "198.51.100.3"));
    assert!(!tls_from(&r, "198.51.100.2"));
    assert!(firewall_drops(&r)[&("*".to_string(), "not_allowed".to_string())] >= 1);
    check_firewall_table(&r);
    let rows = firewall_table(&r, "web4");
    assert_eq!(rows.get(&("198.51.100.3/32".to_string(), "allow".to_string())), Some(&0), "{rows:?}");
    assert!(rows[&("*".to_string(), "not_allowed".to_string())] >= 1, "{rows:?}");

    // An upgrade from a build without the firewall: its pin directory
    // lacks the firewall maps. The next daemon adopts the rest, creates
    // them, and the rules hold again.
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
    for map in [lb_common::balancer::MAP_FIREWALL_V4, lb_common::balancer::MAP_FIREWALL_V6, lb_common::balancer::MAP_FIREWALL_DROPS] {
        std::fs::remove_file(r.inst.pin_path.join(map)).unwrap();
    }
    assert!(!tls_from(&r, "198.51.100.2"), "the running program keeps its maps without their pins");
    r.daemon = r.inst.start(&r.lab.edge, &[]);
    r.inst.wait_ready(&mut r.daemon);
    assert!(r.daemon.output_so_far().contains("adopting the running data path"), "{}", r.daemon.output_so_far());
    assert!(r.inst.pin_path.join(lb_common::balancer::MAP_FIREWALL_V4).exists(), "the new maps are pinned");
    assert!(tls_from(&r, "198.51.100.3"));
    assert!(!tls_from(&r, "198.51.100.2"), "the rules hold after the upgrade");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}
