//! The agent against a real Docker Swarm: three `dockerd` nodes in their own
//! namespaces (the harness's [`SwarmLab`]), an edge namespace running
//! `swarmlb run` with a `[swarm]` section, a DMZ client and an intra client.
//! Node labels, availability and health decide the backends; services
//! pinned to a zone close their published ports on the other zones'
//! interfaces; dockerd going away changes nothing that is running.

mod common;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use common::{
    daemon::{stop_cleanly, wait_until, Instance},
    http::{check, who},
    site::{answers, backends, node_addr, probe, site, swarm_vip, timed, weight_of, VIP},
};
use harness::{config::EdgeConfig, nginx::Nginx, scan::TcpOutcome, stream::Stream, swarm::SwarmLab, tls::TestCa, Topology};

/// `deregistration_delay_s` of the label test: long enough for the checks
/// of established streams while n2 drains.
const DRAIN: Duration = Duration::from_secs(8);

#[test]
fn node_labels_availability_and_health_decide_the_backends() {
    let mut s = site("swlb");
    let ca = TestCa::new();
    let any: [IpAddr; 1] = ["0.0.0.0".parse().unwrap()];
    let mut proxies: Vec<Nginx> = s
        .lab
        .nodes()
        .iter()
        .map(|n| Nginx::start(&n.ns, &n.hostname, &any, &ca, &["a.com"]).expect("nginx on the node"))
        .collect();
    let names: Vec<String> = s.lab.nodes().iter().map(|n| n.hostname.clone()).collect();
    for i in 0..3 {
        s.lab.node_id(i).unwrap();
    }
    s.lab.label_add(0, "lb", "proxy").unwrap();
    s.lab.label_add(1, "lb", "proxy").unwrap();
    let inst = Instance::new(
        "swlb",
        &s.config(EdgeConfig::balancer().swarm_line(&format!("deregistration_delay_s = {}", DRAIN.as_secs())).vip(
            swarm_vip().health_check(r#"{ protocol = "tcp", port = 80, interval_s = 3, timeout_s = 1, rise = 2, fall = 2 }"#),
        )),
    );
    let mut daemon = inst.start(&s.edge, &[]);
    inst.wait_ready(&mut daemon);
    wait_until(Duration::from_secs(10), || backends(&inst).len() == 2, || format!("two labelled nodes: {:?}", backends(&inst)));
    assert_eq!(answers(&s.client, 40), BTreeSet::from([names[0].clone(), names[1].clone()]));

    // Label a node: a backend within 2 s, new connections reach it.
    let t = Instant::now();
    s.lab.label_add(2, "lb", "proxy").unwrap();
    let synced = timed(Duration::from_secs(5), "n3 labelled", || weight_of(&inst, node_addr(2)) == Some(1));
    let mut reached = Duration::ZERO;
    while reached.is_zero() {
        if who(&s.client, IpAddr::V4(VIP)) == names[2] {
            reached = t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(2), "no new connection reached the labelled node within 2 s");
    }
    println!(
        "label added → map updated in {:.0} ms (label command included); first connection on it after {:.0} ms",
        synced.as_secs_f64() * 1e3,
        reached.as_secs_f64() * 1e3
    );

    // dockerd (the manager) stops: serving continues on the last good state.
    s.lab.stop_dockerd(0);
    wait_until(Duration::from_secs(10), || inst.status()["swarm"]["connected"] == false, || "the loss is reported".into());
    assert!(inst.status()["swarm"]["last_error"].is_string(), "the loss has its error");
    assert_eq!(answers(&s.client, 60).len(), 3, "all three backends still serve with dockerd gone");
    assert_eq!(backends(&inst).len(), 3);
    let t = Instant::now();
    s.lab.start_dockerd(0).expect("dockerd starts again");
    wait_until(Duration::from_secs(40), || inst.status()["swarm"]["connected"] == true, || "reconnected".into());
    println!("dockerd back: in sync again {:.1} s after it was started", t.elapsed().as_secs_f64());
    // Back in sync: the loss's error is over, and status shows the nodes
    // the Swarm lets reach its ports.
    let swarm = inst.status()["swarm"].clone();
    assert!(swarm["last_error"].is_null(), "a stale error after reconnecting: {swarm}");
    let allowed: BTreeSet<String> = swarm["allowed_nodes"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    for i in 0..3 {
        assert!(allowed.contains(&node_addr(i).to_string()), "node {i} not in the allow-list {allowed:?}");
    }
    let table = std::process::Command::new(common::daemon::swarmlb_bin()).arg("status").arg("--runtime-dir").arg(&inst.runtime_dir).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let line = table.lines().find(|l| l.contains("node allow-list: ")).unwrap_or_else(|| panic!("no allow-list in:\n{table}"));
    assert!((0..3).all(|i| line.contains(&node_addr(i).to_string())), "{line}");
    // The restarted manager calls every node `unknown` until it hears from
    // it: that drains nothing.
    assert!(backends(&inst).iter().all(|b| b.1 == 1 && b.2), "a manager restart drained backends: {:?}", backends(&inst));

    // Streams over all three, then drain n1 and unlabel n2: no new
    // connections to them, the established ones go on.
    let mut streams: Vec<Stream> = (0..18).map(|_| Stream::open(&s.client, IpAddr::V4(VIP))).collect();
    let on = |w: &str| streams.iter().filter(|x| x.worker == w).count();
    assert!(on(&names[0]) > 0 && on(&names[1]) > 0, "streams on n1 and n2");
    let drained = timed(Duration::from_secs(5), "n1 drained", || {
        s.lab.availability(0, "drain").ok();
        weight_of(&inst, node_addr(0)) == Some(0)
    });
    let unlabel = Instant::now();
    let unlabelled = timed(Duration::from_secs(5), "n2 unlabelled", || {
        s.lab.label_rm(1, "lb").ok();
        weight_of(&inst, node_addr(1)) == Some(0)
    });
    println!("drain → weight 0 in {:.0} ms; label removed → draining in {:.0} ms", drained.as_secs_f64() * 1e3, unlabelled.as_secs_f64() * 1e3);
    assert_eq!(answers(&s.client, 40), BTreeSet::from([names[2].clone()]), "new connections only to n3");
    assert_eq!(check(&mut streams), Vec::<usize>::new(), "established connections to n1 and n2 finish undisturbed");
    // Each change is logged with the backend and why, and `status` keeps
    // each backend's last transition.
    let log = daemon.output_so_far();
    let changed = |addr: IpAddr, change: &str, reason: &str| {
        log.lines().any(|l| l.contains("backend changed") && l.contains(&format!("backend={addr}")) && l.contains(change) && l.contains(reason))
    };
    assert!(changed(node_addr(0), "draining (weight 1 → 0)", "availability drain"), "{log}");
    assert!(changed(node_addr(1), "draining (weight 1 → 0)", "Swarm: no node matching"), "{log}");
    let n1 = inst.status()["vips"][0]["backends"].as_array().unwrap().iter().find(|b| b["address"] == node_addr(0).to_string()).cloned().unwrap();
    assert_eq!(n1["last_change"]["change"], "draining (weight 1 → 0)", "{n1}");
    assert!(n1["last_change"]["reason"].as_str().unwrap().contains("availability drain"), "{n1}");
    // n2's drain ends on time (its own timer, not the next resync 30 s on).
    timed(DRAIN + Duration::from_secs(3), "n2's drain over", || weight_of(&inst, node_addr(1)).is_none());
    let over = unlabel.elapsed();
    println!("label removed → backend gone after {:.1} s (deregistration_delay_s = {})", over.as_secs_f64(), DRAIN.as_secs());
    assert!(over >= DRAIN - Duration::from_millis(500) && over <= DRAIN + Duration::from_millis(1500), "{over:?}");
    assert!(daemon.output_so_far().lines().any(|l| l.contains("backend changed") && l.contains(&format!("backend={}", node_addr(1))) && l.contains("removed")));

    // A typo in n3's weight label keeps its weight and says so (log, status).
    s.lab.label_add(2, "swarmlb.weight", "3O").unwrap();
    let kept = "label swarmlb.weight=\"3O\" is not a weight 0-65535: keeping its last good weight 1";
    timed(Duration::from_secs(5), "the bad weight noted", || {
        inst.status()["swarm"]["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains(kept))
    });
    assert_eq!(weight_of(&inst, node_addr(2)), Some(1), "n3 keeps serving at its weight");
    assert!(daemon.output_so_far().lines().any(|l| l.contains("WARN") && l.contains(kept)), "{}", daemon.output_so_far());
    assert_eq!(answers(&s.client, 20), BTreeSet::from([names[2].clone()]), "n3 still takes new connections");

    // n3's proxy stops: health checks take it out within fall × interval.
    proxies[2].stop();
    let out = timed(Duration::from_secs(9), "n3 out", || backends(&inst).iter().any(|b| b.0 == node_addr(2).to_string() && !b.2));
    println!("stopped proxy taken out after {:.1} s (fall 2 × interval 3 s + timeout 1 s = 7 s at most)", out.as_secs_f64());
    assert!(out <= Duration::from_millis(8500), "{out:?}");
    let m = common::http::metrics(&s.edge);
    for want in ["swarmlb_swarm_connected 1", "swarmlb_swarm_nodes 3", "swarmlb_backend_up{vip=\"web\",backend=\"10.2.0.13\"} 0"] {
        assert!(m.contains(want), "metrics lack {want}:\n{m}");
    }
    // The dashboard's Swarm panels (and all others) name real metrics.
    let missing = common::dashboard::missing_in(&m, |_| false);
    assert!(missing.is_empty(), "dashboard metrics not exposed with a Swarm: {missing:?}");
    drop(streams);
    stop_cleanly(&mut daemon, libc::SIGTERM);
    proxies.clear();
}

/// The IPv4 sources the isolator lets reach Swarm's ports in any zone.
fn node_sources(inst: &Instance) -> BTreeSet<IpAddr> {
    let maps = lb_user::datapath::maps::IsolatorMaps::open(&inst.pin_path).unwrap();
    maps.sources_v4
        .keys()
        .map(Result::unwrap)
        .filter(|k| k.prefix_len() == lb_common::isolator::SOURCE_SLOT_BITS + 32)
        .map(|k| IpAddr::from(k.data().addr))
        .collect()
}

#[test]
fn services_pinned_to_a_zone_close_their_ports_on_the_other_zones() {
    let mut s = site("swzn");
    s.lab.label_add(0, "zone", "dmz").unwrap();
    s.lab.label_add(1, "zone", "dmz").unwrap();
    s.lab.label_add(2, "zone", "intra").unwrap();
    let image = s.lab.import_busybox().unwrap();
    let inst = Instance::new("swzn", &s.config(EdgeConfig::new()));
    let mut daemon = inst.start(&s.edge, &[]);
    inst.wait_ready(&mut daemon);
    wait_until(Duration::from_secs(10), || inst.status()["swarm"]["connected"] == true, || "in sync".into());
    let protected = |zone: usize| -> Vec<String> {
        inst.status()["zones"][zone]["protected"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
    };
    // zones are listed by name: dmz, intra.
    assert_eq!(inst.status()["zones"][0]["name"], "dmz");
    assert!(!protected(0).contains(&"tcp/8080".to_string()));
    // Every node may reach Swarm's ports: its address is an allowed source.
    let nodes: BTreeSet<IpAddr> = (0..3).map(node_addr).collect();
    assert!(node_sources(&inst).is_superset(&nodes), "{:?}", node_sources(&inst));

    let t = Instant::now();
    s.lab
        .docker(
            0,
            &[
                "service", "create", "--detach", "--name", "intra-web", "--no-resolve-image",
                "--constraint", "node.labels.zone==intra",
                "--publish", "mode=host,target=8080,published=8080",
                "--endpoint-mode", "dnsrr",
                &image, "/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/",
            ],
        )
        .unwrap();
    let closed = timed(Duration::from_secs(5), "tcp/8080 protected in dmz", || protected(0).contains(&"tcp/8080".to_string()));
    let logged = |what: &str| daemon.output_so_far().lines().any(|l| l.contains(what) && l.contains("zone=dmz") && l.contains("ports=tcp/8080"));
    assert!(logged("protected port added"), "{}", daemon.output_so_far());
    println!("service created → its port protected on the DMZ side in {:.0} ms", closed.as_secs_f64() * 1e3);
    assert!(!protected(1).contains(&"tcp/8080".to_string()), "open in its own zone");
    wait_until(Duration::from_secs(60), || probe(&s.intra, node_addr(2), 8080) == TcpOutcome::Open, || "the task serves 8080 to the intra side".into());
    println!("task running and reachable from the intra side after {:.1} s", t.elapsed().as_secs_f64());
    for n in 0..3 {
        assert_eq!(probe(&s.client, node_addr(n), 8080), TcpOutcome::Timeout, "node {n}'s 8080 reachable from the DMZ");
    }
    // The same node's unprotected ports still answer from the DMZ (refused).
    assert_eq!(probe(&s.client, node_addr(2), 8081), TcpOutcome::Refused);

    // The service goes: the port opens again.
    s.lab.docker(0, &["service", "rm", "intra-web"]).unwrap();
    timed(Duration::from_secs(5), "tcp/8080 open again", || !protected(0).contains(&"tcp/8080".to_string()));
    assert!(logged("protected port removed"), "{}", daemon.output_so_far());
    wait_until(
        Duration::from_secs(30),
        || probe(&s.client, node_addr(2), 8080) != TcpOutcome::Timeout,
        || "8080 reachable from the DMZ again".into(),
    );

    // A node that leaves the swarm loses its pass to Swarm's ports.
    let id = s.lab.node_id(1).unwrap();
    s.lab.stop_dockerd(1);
    s.lab.docker(0, &["node", "rm", "--force", &id]).unwrap();
    let left = timed(Duration::from_secs(10), "n2 no longer allowed", || !node_sources(&inst).contains(&node_addr(1)));
    println!("node removed → its address off the allow-list in {:.0} ms", left.as_secs_f64() * 1e3);
    assert!(node_sources(&inst).contains(&node_addr(0)));
    let left = format!("node={}", node_addr(1));
    assert!(daemon.output_so_far().lines().any(|l| l.contains("Swarm node left the node allow-list") && l.contains(&left)), "{}", daemon.output_so_far());
    stop_cleanly(&mut daemon, libc::SIGTERM);
}

/// `docker_host = "tcp://…:2376"` with `tls_cert_dir`: the agent talks to
/// dockerd over TLS with a client certificate; with certificates of another
/// CA it is refused and says so.
#[test]
fn the_docker_api_over_tcp_with_tls() {
    harness::require_root().unwrap();
    let mut lab = SwarmLab::new("swtls", 1).unwrap();
    let ca = TestCa::new();
    let certs = lab.serve_tls(0, &ca).unwrap();
    let mut topo = Topology::new();
    let edge = topo.netns("swtlse");
    lab.attach(&edge, "e-in", "10.2.0.1/24");
    // The zone trusts the Swarm's nodes, and the reverse-path check of a
    // trusted source needs forwarding on (as on every Docker host).
    topo.forwarding(&edge);
    let config = |dir: &std::path::Path| {
        EdgeConfig::new()
            .swarm("tcp://10.2.0.11:2376")
            .swarm_key("tls_cert_dir", &dir.display().to_string())
            .zone_interface("e-in", "lan")
            .to_toml()
    };
    let inst = Instance::new("swtls", &config(&certs));
    let mut daemon = inst.start(&edge, &[]);
    inst.wait_ready(&mut daemon);
    wait_until(Duration::from_secs(10), || inst.status()["swarm"]["connected"] == true, || daemon.output_so_far());
    assert_eq!(inst.status()["swarm"]["nodes"], 1);
    stop_cleanly(&mut daemon, libc::SIGTERM);

    // Client certificates from another CA: refused, reported, nothing applied.
    let other = TestCa::new();
    let wrong = certs.with_file_name("wrong-certs");
    std::fs::create_dir_all(&wrong).unwrap();
    let (cert, key) = other.issue_client("intruder");
    std::fs::write(wrong.join("cert.pem"), cert).unwrap();
    std::fs::write(wrong.join("key.pem"), key).unwrap();
    std::fs::write(wrong.join("ca.pem"), ca.cert_pem()).unwrap();
    inst.write_config(&config(&wrong));
    let mut daemon = inst.start(&edge, &[]);
    inst.wait_ready(&mut daemon);
    wait_until(
        Duration::from_secs(10),
        || inst.status()["swarm"]["failures"].as_u64().unwrap_or(0) > 0,
        || daemon.output_so_far(),
    );
    let s = inst.status();
    assert_eq!(s["swarm"]["connected"], false);
    println!("with a foreign client certificate: {}", s["swarm"]["last_error"]);
    assert!(daemon.output_so_far().contains("lost the Swarm"), "{}", daemon.output_so_far());
    stop_cleanly(&mut daemon, libc::SIGTERM);
}
