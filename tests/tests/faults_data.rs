//! Data-plane faults, end to end (the edge lab, nginx on the workers, the
//! real `swarmlb run`): a backend killed mid-stream, a backend that
//! black-holes, a health endpoint that flaps, a full flow table, SNAT ports
//! exhausted and a full NAT table. Each test shows what happens to the
//! connections, and that the agent logs it and the metrics count it
//! (docs/faults.md).

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use common::{
    daemon::{stop_cleanly, wait_until},
    edge::{config_with, start, Running, FAST_HEALTH},
    http::{check, metric, metrics, who},
};
use harness::{
    edge_lab::*,
    rtnl,
    servers::TcpListeners,
    stream::{Ended, Stream, Streaming},
    tls::connect,
};

const THREE: [(usize, u32); 3] = [(1, 1), (2, 1), (3, 1)];
/// Small tables where a test does not fill them (kernel memory: tests run
/// side by side).
const SMALL: &str = "flow_table_size = 4096\nnat_table_size = 4096";
/// `FAST_HEALTH`'s bound on taking a failed backend out: fall 2 × interval
/// 3 s + timeout 1 s, and slack for polling the status on a busy machine.
const TAKEOUT_BOUND: Duration = Duration::from_millis(7000 + 2000);

fn vip4() -> IpAddr {
    IpAddr::V4(VIP_V4)
}

/// How often every stream asks.
const PAUSE: Duration = Duration::from_millis(20);

/// Streams on each worker name.
fn per_worker(workers: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for w in workers {
        *out.entry(w.clone()).or_default() += 1;
    }
    out
}

/// Waits until `worker` is out; how long that took from `since`.
fn taken_out(r: &Running, worker: usize, since: Instant) -> Duration {
    wait_until(Duration::from_secs(20), || !r.up(worker), || format!("w{worker} taken out:\n{}", r.daemon.output_so_far()));
    since.elapsed()
}

/// The daemon's log lines containing every one of `words`.
fn log_lines(r: &Running, words: &[&str]) -> Vec<String> {
    r.daemon.output_so_far().lines().filter(|l| words.iter().all(|w| l.contains(w))).map(str::to_owned).collect()
}

/// Waits until the daemon logged a line with every one of `words`; the line.
fn wait_for_log(r: &Running, words: &[&str], timeout: Duration) -> String {
    wait_until(timeout, || !log_lines(r, words).is_empty(), || format!("a log line with {words:?}:\n{}", r.daemon.output_so_far()));
    log_lines(r, words).remove(0)
}

/// The balancer counter `name` from the status.
fn counter(r: &Running, name: &str) -> u64 {
    r.inst.status()["balancer"][name].as_u64().unwrap()
}

/// The streams that failed, per worker.
fn broken_per_worker(results: &[Ended]) -> std::collections::BTreeMap<String, usize> {
    per_worker(&results.iter().filter(|e| e.failure().is_some()).map(|e| e.worker.clone()).collect::<Vec<_>>())
}

#[test]
fn a_backend_killed_mid_stream_breaks_only_its_own_streams() {
    let mut r = start("fdkill", 3, &config_with("nat", &THREE, SMALL, FAST_HEALTH));
    let streaming = Streaming::open(&r.lab.client, vip4(), 30, PAUSE);
    let spread = per_worker(&streaming.workers());
    assert!(spread.len() == 3, "30 streams over all three workers: {spread:?}");
    assert!(streaming.progress(Duration::from_secs(1)) >= 30, "streams flow");

    // kill -9 w2's proxy while the streams flow.
    let killed = Instant::now();
    // SAFETY: a process this test started (nginx, one process).
    assert_eq!(unsafe { libc::kill(r.nginx(2).pid() as i32, libc::SIGKILL) }, 0);
    let takeout = taken_out(&r, 2, killed);
    let flowing = streaming.progress(Duration::from_secs(1));
    let results = streaming.stop();
    let broken = broken_per_worker(&results);
    println!(
        "killed w2 under 30 streams {spread:?}: taken out after {:.1} s (bound 7 s); broken {broken:?}; {flowing} answers in the second after",
        takeout.as_secs_f64()
    );
    assert!(takeout <= TAKEOUT_BOUND, "{takeout:?}");
    assert_eq!(broken.get("w2"), spread.get("w2"), "every stream on the killed proxy broke (its sockets died with it)");
    assert_eq!(broken.keys().collect::<Vec<_>>(), vec!["w2"], "no stream on another backend broke: {results:?}");
    assert!(flowing >= 20, "the other streams kept flowing: {flowing}");
    for _ in 0..60 {
        assert_ne!(who(&r.lab.client, vip4()), "w2", "a new connection went to the dead backend");
    }
    let m = metrics(&r.lab.edge);
    assert_eq!(metric(&m, "swarmlb_backend_up{vip=\"web4\",backend=\"10.1.0.12\"}"), Some(0), "{m}");
    assert_eq!(metric(&m, "swarmlb_backend_health_transitions_total{vip=\"web4\",backend=\"10.1.0.12\"}"), Some(1), "{m}");
    assert_eq!(metric(&m, "swarmlb_backend_up{vip=\"web4\",backend=\"10.1.0.11\"}"), Some(1), "{m}");
    let line = wait_for_log(&r, &["backend failed its health checks: out", "10.1.0.12", "web4"], Duration::from_secs(1));
    println!("log: {line}");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

/// Drops everything in and out of `ns` at the IP layer (ARP still
/// answers: the host looks alive to its neighbours).
fn black_hole(ns: &harness::Netns, on: bool) {
    if on {
        ns.exec(&["nft", "add table inet hole"]).unwrap();
        ns.exec(&["nft", "add chain inet hole in { type filter hook input priority -400; policy drop; }"]).unwrap();
        ns.exec(&["nft", "add chain inet hole out { type filter hook output priority -400; policy drop; }"]).unwrap();
    } else {
        ns.exec(&["nft", "delete table inet hole"]).unwrap();
    }
}

#[test]
fn a_black_holed_backend_is_taken_out_by_health_check_timeouts() {
    let mut r = start("fdhole", 3, &config_with("nat", &THREE, SMALL, FAST_HEALTH));
    let streaming = Streaming::open(&r.lab.client, vip4(), 30, PAUSE);
    let spread = per_worker(&streaming.workers());
    assert!(spread.len() == 3, "{spread:?}");

    let holed = Instant::now();
    black_hole(&r.lab.workers[2], true);
    let takeout = taken_out(&r, 3, holed);
    let flowing = streaming.progress(Duration::from_secs(1));
    let results = streaming.stop();
    let broken = broken_per_worker(&results);
    println!("black-holed w3 under 30 streams {spread:?}: taken out after {:.1} s (bound 7 s); broken {broken:?}", takeout.as_secs_f64());
    assert!(takeout <= TAKEOUT_BOUND, "{takeout:?}");
    // w3's streams stall, then their flows move to a live backend, which
    // knows nothing of them: broken, by design. Nobody else's.
    assert_eq!(broken.get("w3"), spread.get("w3"), "{results:?}");
    assert_eq!(broken.keys().collect::<Vec<_>>(), vec!["w3"], "{results:?}");
    assert!(flowing >= 20, "the other streams kept flowing: {flowing}");
    for _ in 0..60 {
        assert_ne!(who(&r.lab.client, vip4()), "w3", "a new connection went into the black hole");
    }
    let m = metrics(&r.lab.edge);
    assert_eq!(metric(&m, "swarmlb_backend_up{vip=\"web4\",backend=\"10.1.0.13\"}"), Some(0), "{m}");
    let line = wait_for_log(&r, &["backend failed its health checks: out", "10.1.0.13", "timed out"], Duration::from_secs(1));
    println!("log: {line}");

    // The hole closes: back after rise passes, and serving again.
    black_hole(&r.lab.workers[2], false);
    let t = Instant::now();
    wait_until(Duration::from_secs(15), || r.up(3), || "w3 back".into());
    println!("w3 back {:.1} s after the hole closed (rise 2 × interval 3 s)", t.elapsed().as_secs_f64());
    assert!((0..60).any(|_| who(&r.lab.client, vip4()) == "w3"), "new connections reach w3 again");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

#[test]
fn a_flapping_health_endpoint_moves_the_backend_only_as_often_as_rise_and_fall_allow() {
    // The health checks probe port 8080; only w3's listener flaps, so the
    // proxies on port 80 (and the streams) stay up.
    let health = r#"{ protocol = "tcp", port = 8080, interval_s = 3, timeout_s = 1, rise = 2, fall = 2 }"#;
    let mut r = start("fdflap", 3, &config_with("nat", &THREE, SMALL, health));
    let steady: Vec<TcpListeners> =
        (1..=2).map(|i| TcpListeners::start(&r.lab.workers[i - 1], &r.lab.worker_ips(i), &[8080]).unwrap()).collect();
    let up = |r: &Running| TcpListeners::start(&r.lab.workers[2], &r.lab.worker_ips(3), &[8080]).unwrap();
    let mut flapper = Some(up(&r));
    let streaming = Streaming::open(&r.lab.client, vip4(), 30, PAUSE);
    let spread = per_worker(&streaming.workers());
    let transitions = |r: &Running| r.backend(3)["health_transitions"].as_u64().unwrap();

    // Fast flapping (1 s down, 1 s up): the probes every 3 s see it fail
    // and pass by turns, rarely twice in a row: fall 2 absorbs it.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(12) {
        flapper = if flapper.is_some() { None } else { Some(up(&r)) };
        std::thread::sleep(Duration::from_secs(1));
    }
    flapper.get_or_insert_with(|| up(&r));
    let fast = transitions(&r);
    // Slow flapping (7 s down, 7 s up: each phase holds at least two
    // probes): out and back in every cycle.
    for _ in 0..2 {
        drop(flapper.take());
        std::thread::sleep(Duration::from_secs(7));
        flapper.get_or_insert_with(|| up(&r));
        std::thread::sleep(Duration::from_secs(7));
    }
    wait_until(Duration::from_secs(10), || r.up(3), || "w3 back after the flapping".into());
    let total = transitions(&r);
    let results = streaming.stop();
    let broken = broken_per_worker(&results);
    println!("flapping w3: {fast} transitions while flapping every 1 s for 12 s, {} while flapping every 7 s for 28 s; streams {spread:?}, broken {broken:?}", total - fast);
    // Each transition needs two probes (3 s apart) in a row agreeing.
    assert!(fast <= 12 / 3 / 2 + 1, "fast flapping: {fast} transitions");
    assert!((2..=4).contains(&(total - fast)), "slow flapping: out and back in per cycle: {} transitions", total - fast);
    assert_eq!(total % 2, 0, "it ends up");
    let logged = log_lines(&r, &["10.1.0.13", "web4", "backend failed its health checks: out"]).len()
        + log_lines(&r, &["10.1.0.13", "web4", "backend healthy again: back in"]).len();
    assert_eq!(logged as u64, total, "every transition logged");
    let m = metrics(&r.lab.edge);
    assert_eq!(metric(&m, "swarmlb_backend_health_transitions_total{vip=\"web4\",backend=\"10.1.0.13\"}"), Some(total), "{m}");
    // Other backends' streams never noticed; w3's moved at its first
    // takeout (a down backend's flows move), if it had any.
    assert!(broken.keys().all(|w| w == "w3"), "only w3's streams may break: {results:?}");
    if total > 0 {
        assert_eq!(broken.get("w3"), spread.get("w3"), "{results:?}");
    }
    drop(steady);
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

#[test]
fn a_full_flow_table_forgets_flows_that_nat_finds_again() {
    const STREAMS: usize = 60;
    let mut r = start("fdflow", 4, &config_with("nat", &THREE, "flow_table_size = 16\nnat_table_size = 4096", ""));
    let streaming = Streaming::open(&r.lab.client, vip4(), STREAMS, PAUSE);
    let answered = streaming.progress(Duration::from_secs(3));
    let s = r.inst.status();
    let (flows, new_flows) = (s["flows"].as_u64().unwrap(), s["balancer"]["new_flow"].as_u64().unwrap());
    println!("{STREAMS} streams through a 16-flow table: {answered} answers in 3 s, {flows} flows held, {new_flows} new flows placed, {} found again", s["balancer"]["flow_refound"]);
    assert!(flows <= 16, "{s}");
    // Forgotten flows are placed again (hits, not new connections: one new
    // flow per stream): the same backend, and their NAT entry gives them
    // their SNAT port back (counted as found again, below).
    assert!(new_flows >= STREAMS as u64, "one new flow per connection, however often the table forgot it: {s}");
    assert!(s["balancer"]["flow_refound"].as_u64().unwrap() > STREAMS as u64 * 2, "re-placed flows are counted: {s}");
    let line = wait_for_log(&r, &["flow table too small", "nat flows were forgotten and found again", "a table of 16 flows"], Duration::from_secs(12));
    println!("log: {line}");
    let m = metrics(&r.lab.edge);
    assert_eq!(metric(&m, "swarmlb_flow_table_capacity"), Some(16), "{m}");
    let refound: u64 = metric(&m, "swarmlb_balancer_packets_total{outcome=\"flow_refound\"}").unwrap();
    assert!(refound > STREAMS as u64, "forgotten flows found again are counted: {refound}\n{m}");

    // With the backends changing, a forgotten flow is placed by the new
    // table: the quarter of them that hash to the new backend w4 break
    // (a table with room keeps them: balancer_e2e's
    // long_lived_connections_survive_backend_changes).
    let four = [(1, 1), (2, 1), (3, 1), (4, 1)];
    r.reload(&config_with("nat", &four, "flow_table_size = 16\nnat_table_size = 4096", ""), &four);
    streaming.progress(Duration::from_secs(2));
    let results = streaming.stop();
    let broken = results.iter().filter(|e| e.failure().is_some()).count();
    let sample_failure = results.iter().find_map(Ended::failure).unwrap_or_default();
    println!("after adding w4: {broken} of {STREAMS} streams broken (e.g. {sample_failure})");
    // Each of the ≥ 44 streams outside the table at the change has a 1 in
    // 4 chance: none broken is a (3/4)^44 ≈ 3e-6 event.
    assert!(broken > 0 && broken < STREAMS / 2, "{broken} broken: {results:?}");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

/// Four streams to one backend, and a fifth connection that must fail:
/// its SYNs are dropped (`drop_counter` counts them) until the connect
/// times out.
fn fill_and_refuse(r: &Running, drop_counter: &str) -> Vec<Stream> {
    let mut streams: Vec<Stream> = (0..4).map(|_| Stream::open(&r.lab.client, vip4())).collect();
    let before = counter(r, drop_counter);
    let fifth = connect(&r.lab.client, SocketAddr::new(vip4(), 80));
    assert!(fifth.is_err(), "the fifth connection is refused");
    let refused = counter(r, drop_counter) - before;
    println!("fifth connection: {:#}; {refused} SYNs counted as {drop_counter}", fifth.unwrap_err());
    assert!(refused >= 1, "{}", r.inst.status());
    assert_eq!(check(&mut streams), Vec::<usize>::new(), "the four established streams are unaffected");
    streams
}

/// Closes `streams` and waits until their NAT entries are swept (closed
/// timeout 1 s, a sweep every 10 s); then a new connection works again.
fn close_and_recover(r: &Running, streams: Vec<Stream>) {
    drop(streams);
    let t = Instant::now();
    wait_until(Duration::from_secs(25), || r.inst.status()["nat_entries"].as_u64() == Some(0), || format!("NAT entries swept: {}", r.inst.status()));
    println!("NAT state of the closed streams swept {:.1} s after they closed", t.elapsed().as_secs_f64());
    assert_eq!(who(&r.lab.client, vip4()), "w1", "new connections work again");
}

#[test]
fn exhausted_snat_ports_refuse_new_connections_until_ports_come_back() {
    let extra = "snat_ports = \"20000-20003\"\ntcp_closed_timeout_s = 1\nflow_table_size = 4096\nnat_table_size = 4096";
    let mut r = start("fdsnat", 1, &config_with("nat", &[(1, 1)], extra, ""));
    let streams = fill_and_refuse(&r, "drop_snat_exhausted");
    assert_eq!(counter(&r, "drop_nat_table_full"), 0);
    // The ports are per backend port: port 443 has its own four.
    connect(&r.lab.client, SocketAddr::new(vip4(), 443)).expect("another backend port has its own SNAT ports");
    let line = wait_for_log(&r, &["SNAT ports exhausted", "new connections refused in the last", "10.1.0.11:80 holds 4 of 4 ports"], Duration::from_secs(12));
    println!("log: {line}");
    let m = metrics(&r.lab.edge);
    assert_eq!(metric(&m, "swarmlb_snat_ports_in_use{backend=\"10.1.0.11\",port=\"80\"}"), Some(4), "{m}");
    assert_eq!(metric(&m, "swarmlb_snat_ports_capacity"), Some(4), "{m}");
    assert!(metric::<u64>(&m, "swarmlb_balancer_packets_total{outcome=\"drop_snat_exhausted\"}").unwrap() >= 1, "{m}");
    close_and_recover(&r, streams);
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

/// A connection the client closes first frees its SNAT port at the
/// client's last ACK, without waiting for the sweep: with 4 ports and the
/// closed timeout at its default (10 s), 200 connections one after another
/// all work at once (before, the fifth waited for the sweep).
#[test]
fn connections_closed_by_the_client_give_their_snat_ports_back_at_once() {
    let extra = "snat_ports = \"20000-20003\"\nflow_table_size = 4096\nnat_table_size = 4096";
    let mut r = start("fdfree", 1, &config_with("nat", &[(1, 1)], extra, ""));
    let maps = lb_user::datapath::maps::BalancerMaps::open(&r.inst.pin_path).unwrap();
    let entries = || maps.nat.keys().count();
    let freed_before = counter(&r, "nat_port_freed");
    let t = Instant::now();
    const CONNECTIONS: usize = 200;
    for i in 0..CONNECTIONS {
        let stream = Stream::try_open(&r.lab.client, vip4()).unwrap_or_else(|e| panic!("connection {i}: {e}; {}", r.inst.status()));
        // The client closes; nginx closes in turn; the client's ACK of
        // nginx's FIN frees the port (a few round trips on the veths).
        drop(stream);
        wait_until(Duration::from_secs(2), || entries() == 0, || format!("connection {i}'s port freed: {}", r.inst.status()));
    }
    println!("{CONNECTIONS} connections over 4 SNAT ports in {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(counter(&r, "drop_snat_exhausted"), 0, "{}", r.inst.status());
    assert_eq!(counter(&r, "nat_port_freed") - freed_before, CONNECTIONS as u64, "{}", r.inst.status());
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

/// `balancer.snat_addresses` multiplies the SNAT ports: two ports on two
/// addresses carry four connections to one backend port, from both
/// addresses. An address the inside interface does not have is refused
/// at start, saying how to add it.
#[test]
fn a_pool_of_snat_addresses_multiplies_the_ports() {
    let extra = "snat_ports = \"20000-20001\"\nsnat_addresses = [\"10.1.0.2\"]\nflow_table_size = 4096\nnat_table_size = 4096";
    let cfg = config_with("nat", &[(1, 1)], extra, "");
    let (lab, _ca, _nginx) = common::edge::lab_with_proxies("fdpool", 1);
    let inst = harness::daemon::Instance::new("fdpool", &cfg);
    let mut refused = inst.start(&lab.edge, &[]);
    let status = refused.wait_timeout(Duration::from_secs(20)).expect("exits");
    let out = refused.output_so_far();
    assert!(!status.success(), "{out}");
    assert!(out.contains("10.1.0.2 is not an address of e-in") && out.contains("ip addr add 10.1.0.2/32 dev e-in"), "{out}");
    assert!(!common::xdp::attached(&lab.edge, "e-out"), "nothing attached");
    rtnl::addr(&lab.edge, "e-in", "10.1.0.2/24").unwrap();
    let mut daemon = inst.start(&lab.edge, &[]);
    inst.wait_ready(&mut daemon);
    let mut streams: Vec<Stream> = (0..4).map(|_| Stream::open(&lab.client, vip4())).collect();
    assert!(connect(&lab.client, SocketAddr::new(vip4(), 80)).is_err(), "a fifth connection finds no slot");
    assert_eq!(check(&mut streams), Vec::<usize>::new(), "the four streams go on");
    let maps = lb_user::datapath::maps::BalancerMaps::open(&inst.pin_path).unwrap();
    let addresses: std::collections::BTreeSet<u8> = maps.nat.keys().map(|k| k.unwrap().snat).collect();
    assert_eq!(addresses, [0, 1].into(), "connections from both addresses");
    drop(streams);
    stop_cleanly(&mut daemon, libc::SIGTERM);
}

/// The kernel keeps each backend's next hop (no FIB lookup per packet)
/// and drops it at every netlink route, neighbour, address or link
/// change: a backend whose MAC changes under running streams keeps them,
/// the agent's bump reaching the data path within 100 ms.
#[test]
fn a_backends_new_mac_reaches_the_kept_next_hop_within_100_ms() {
    let mut r = start("fdmac", 1, &config_with("nat", &[(1, 1)], SMALL, ""));
    let streaming = Streaming::open(&r.lab.client, vip4(), 10, PAUSE);
    assert!(streaming.progress(Duration::from_secs(1)) >= 10, "streams flow");
    let maps = lb_user::datapath::maps::BalancerMaps::open(&r.inst.pin_path).unwrap();
    let generation = || maps.net_generation.get(&0, 0).unwrap();
    let kept_macs = || -> Vec<[u8; 6]> {
        (0..lb_common::balancer::MAX_BACKENDS).filter_map(|id| maps.hops.get(&id, 0).ok()).filter(|h| h.net_generation == generation()).map(|h| h.dmac).collect()
    };
    let before = generation();
    assert_ne!(before, 0, "next hops are kept while the agent runs");
    let new_mac = [0x02, 0, 0, 0, 0x01, 0x99];
    // Any neighbour or link event since the start (a neighbour entry
    // confirmed, say) bumps the generation; the streams' next packet
    // keeps the hop again.
    wait_until(Duration::from_secs(2), || !kept_macs().is_empty(), || "a next hop is kept under the current generation".into());
    let before = generation();
    assert!(!kept_macs().contains(&new_mac), "the worker's old MAC is kept: {:02x?}", kept_macs());
    rtnl::set_mac(&r.lab.workers[0], "eth0", new_mac).unwrap();
    rtnl::neighbour(&r.lab.edge, "e-in", IpAddr::V4(worker_addrs(1).0), new_mac, false).unwrap();
    let t = Instant::now();
    wait_until(Duration::from_secs(2), || generation() != before, || "the routing generation moves".into());
    let took = t.elapsed();
    println!("routing generation {before} -> {} {:.1} ms after the neighbour change", generation(), took.as_secs_f64() * 1e3);
    assert!(took < Duration::from_millis(100), "{took:?}");
    assert!(streaming.progress(Duration::from_secs(1)) >= 10, "the streams go on");
    let results = streaming.stop();
    let broken: Vec<String> = results.iter().filter_map(Ended::failure).collect();
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(kept_macs(), vec![new_mac], "the new MAC is kept");
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
    assert_eq!(generation(), 0, "a stopped agent follows no changes: no next hop is kept");
}

#[test]
fn a_full_nat_table_refuses_new_connections_and_says_so() {
    let extra = "tcp_closed_timeout_s = 1\nflow_table_size = 4096\nnat_table_size = 4";
    let mut r = start("fdnat", 1, &config_with("nat", &[(1, 1)], extra, ""));
    let streams = fill_and_refuse(&r, "drop_nat_table_full");
    assert_eq!(counter(&r, "drop_snat_exhausted"), 0, "a full table is not port exhaustion");
    let line = wait_for_log(&r, &["NAT table full", "new connections refused in the last", "(4 of 4 entries)"], Duration::from_secs(12));
    println!("log: {line}");
    let m = metrics(&r.lab.edge);
    assert_eq!(metric(&m, "swarmlb_nat_table_capacity"), Some(4), "{m}");
    assert_eq!(metric(&m, "swarmlb_nat_entries"), Some(4), "{m}");
    close_and_recover(&r, streams);
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
}

#[test]
fn a_new_table_size_is_refused_and_the_running_data_path_stays() {
    let lab = EdgeLab::new("fdsize", 1);
    let cfg = |flows: u32| config_with("nat", &[(1, 1)], &format!("flow_table_size = {flows}\nnat_table_size = 4096"), "");
    let inst = harness::daemon::Instance::new("fdsize", &cfg(4096));
    let mut daemon = inst.start(&lab.edge, &[]);
    inst.wait_ready(&mut daemon);
    // SIGHUP with another size: refused, the daemon runs on.
    inst.write_config(&cfg(8192));
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        || daemon.output_so_far().contains("balancer.flow_table_size from 4096 to 8192: that needs new maps"),
        || daemon.output_so_far(),
    );
    assert!(daemon.try_status().is_none(), "still running");
    stop_cleanly(&mut daemon, libc::SIGTERM);
    // A restart with another size: refused before anything changes.
    let mut again = inst.start(&lab.edge, &[]);
    let status = again.wait_timeout(Duration::from_secs(20)).expect("exits");
    let out = again.output_so_far();
    assert!(!status.success(), "{out}");
    assert!(out.contains("the pinned LB_FLOWS holds 4096 entries, but balancer.flow_table_size asks for 8192"), "{out}");
    assert!(common::xdp::attached(&lab.edge, "e-out"), "the running data path stays");
    let flows = lb_user::datapath::maps::BalancerMaps::open(&inst.pin_path).unwrap().flow_capacity;
    assert_eq!(flows, 4096, "the maps are the old ones");
    assert!(inst.down().status.success());
}

/// Pins, in place of the pinned NAT map at `path`, an empty hash map with
/// the older layout's 64-byte NAT entries: what an agent of the previous
/// version left behind. (The running programs keep the map they hold; a
/// pin is only a name.)
fn pin_older_nat_layout(path: &std::path::Path) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let entries = aya::maps::MapInfo::from_pin(path).expect("the pinned NAT map").max_entries();
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, std::mem::size_of::<lb_common::balancer::NatKey>() as u32, 64, entries]);
    // SAFETY: a zeroed bpf_attr of the size given, with the fields
    // BPF_MAP_CREATE reads.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, create.as_ptr(), std::mem::size_of_val(&create)) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    std::fs::remove_file(path).expect("unpin the current NAT map");
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = [0u64; 4];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: a zeroed bpf_attr with the path pointer and the fd.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our own descriptor; the pin holds the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn an_older_nat_layout_is_refused_and_its_data_path_keeps_forwarding() {
    let mut r = start("fdlayout", 1, &config_with("nat", &[(1, 1)], "", ""));
    let streaming = Streaming::open(&r.lab.client, vip4(), 4, PAUSE);
    streaming.progress_at_least("before", Duration::from_secs(1), 10);
    // The agent stops (its data path stays pinned); the pins look like an
    // older version's.
    stop_cleanly(&mut r.daemon, libc::SIGTERM);
    pin_older_nat_layout(&r.inst.pin_path.join(lb_common::balancer::MAP_NAT));
    let mut again = r.inst.start(&r.lab.edge, &[]);
    let status = again.wait_timeout(Duration::from_secs(20)).expect("exits");
    let out = again.output_so_far();
    assert!(!status.success(), "{out}");
    assert!(out.contains("the pinned LB_NAT holds 64-byte entries of an older swarmlb; this version's are 80 bytes"), "{out}");
    assert!(out.contains("The running data path is left as it is"), "{out}");
    assert!(common::xdp::attached(&r.lab.edge, "e-out"), "the running data path stays");
    streaming.progress_at_least("after the refused start", Duration::from_secs(1), 10);
    let broken: Vec<String> = streaming.stop().iter().filter_map(Ended::failure).collect();
    assert!(broken.is_empty(), "the streams lived: {broken:?}");
    assert!(r.inst.down().status.success());
}
