//! Control-plane faults under live traffic: dockerd gone for a minute, the
//! agent killed with `kill -9`, a broken config on SIGHUP, the bpffs
//! unmounted under a running agent. Each test shows what happens to the
//! traffic, what is kept, the log line and the metric that say so.
//!
//! What the agent's restarts alone do to streams (SIGTERM and kill -9) is
//! balancer_e2e's `restarts_break_no_connection`; lifecycle.rs has the
//! plain SIGHUP and adoption cases without traffic.

mod common;

use std::{
    collections::BTreeSet,
    hash::{Hash, Hasher},
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use common::{
    daemon::{healthz, stop_cleanly, swarmlb_bin, wait_until, Instance},
    edge::lab_with_proxies,
    http::{metric, metric_sum, metrics, who},
    site::{answers, backends, node_addr, probe, site, swarm_vip, weight_of, VIP},
};
use harness::{
    config::{worker_vips, EdgeConfig},
    edge_lab::VIP_V4,
    nginx::Nginx,
    pins::BpfMount,
    scan::TcpOutcome,
    stream::{Ended, Stream, Streaming},
    tls::TestCa,
    ChildGuard,
};
use lb_user::datapath::maps::{BalancerMaps, IsolatorMaps};

/// The kernel's view of the policy and the balancer: zone bindings,
/// protected ports, services, backends and a digest of every active
/// Maglev table. Two equal strings: nothing was written in between.
fn kernel_state(pin: &Path) -> String {
    let iso = IsolatorMaps::open(pin).unwrap();
    let lb = BalancerMaps::open(pin).unwrap();
    let mut bindings: Vec<_> = iso.bindings.iter().map(Result::unwrap).collect();
    bindings.sort_by_key(|(k, _)| *k);
    let mut ports: Vec<_> = iso.ports.iter().map(Result::unwrap).collect();
    ports.sort();
    let mut services: Vec<String> = lb.services.iter().map(|r| format!("{:?}", r.unwrap())).collect();
    services.sort();
    let backends: Vec<_> = (0..lb_common::balancer::MAX_BACKENDS)
        .filter_map(|i| lb.backends.get(&i, 0).ok().filter(|b| b.family != 0).map(|b| (i, b)))
        .collect();
    let bases: BTreeSet<(u32, u32)> = lb.services.iter().map(|r| r.unwrap().1).map(|s| (s.table_base, s.table_size)).collect();
    let tables: Vec<(u32, u64)> = bases
        .into_iter()
        .map(|(base, size)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (base..base + size).map(|i| lb.maglev.get(&i, 0).unwrap()).collect::<Vec<u32>>().hash(&mut h);
            (base, h.finish())
        })
        .collect();
    format!("bindings {bindings:?}\nports {ports:?}\nservices {services:?}\nbackends {backends:?}\ntables {tables:?}")
}

/// A backend as applied: (address, weight, up, Maglev slots).
type AppliedBackend = (String, u64, bool, u64);

/// Each VIP's backends as applied.
fn applied_vips(inst: &Instance) -> Vec<(String, Vec<AppliedBackend>)> {
    let s = inst.status();
    s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let b = v["backends"].as_array().unwrap().iter();
            let b = b.map(|b| (b["address"].as_str().unwrap().to_owned(), b["weight"].as_u64().unwrap(), b["up"].as_bool().unwrap(), b["slots"].as_u64().unwrap()));
            (v["name"].as_str().unwrap().to_owned(), b.collect())
        })
        .collect()
}

/// Lines of `text` after the first `skip` bytes that contain `needle`.
fn count_after(text: &str, skip: usize, needle: &str) -> usize {
    text.get(skip..).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

/// The Swarm's manager (dockerd) is killed and stays away for 62 s while
/// streams and new connections go through a VIP whose backends come from
/// node labels, and a zone-pinned service's port is protected. The last
/// good state serves throughout; the loss is logged once; the metrics say
/// disconnected; on return the agent resyncs and applies a label change
/// made after the return.
#[test]
fn dockerd_stopped_for_a_minute_keeps_the_last_good_state() {
    let mut s = site("fcdk");
    let ca = TestCa::new();
    let any: [IpAddr; 1] = ["0.0.0.0".parse().unwrap()];
    let _proxies: Vec<Nginx> =
        s.lab.nodes().iter().map(|n| Nginx::start(&n.ns, &n.hostname, &any, &ca, &["a.com"]).expect("nginx on the node")).collect();
    let names: Vec<String> = s.lab.nodes().iter().map(|n| n.hostname.clone()).collect();
    for (i, zone) in ["dmz", "dmz", "intra"].iter().enumerate() {
        s.lab.label_add(i, "zone", zone).unwrap();
    }
    s.lab.label_add(0, "lb", "proxy").unwrap();
    s.lab.label_add(1, "lb", "proxy").unwrap();
    let image = s.lab.import_busybox().unwrap();
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
    let inst = Instance::new(
        "fcdk",
        &s.config(EdgeConfig::balancer().vip(swarm_vip())),
    );
    let mut daemon = inst.start(&s.edge, &[]);
    inst.wait_ready(&mut daemon);
    let dmz_protected = || -> Vec<String> {
        inst.status()["zones"][0]["protected"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
    };
    wait_until(
        Duration::from_secs(15),
        || backends(&inst).len() == 2 && dmz_protected().contains(&"tcp/8080".to_owned()),
        || format!("two backends and tcp/8080 protected in the DMZ: {:?} {:?}", backends(&inst), dmz_protected()),
    );
    let two = BTreeSet::from([names[0].clone(), names[1].clone()]);
    assert_eq!(answers(&s.client, 30), two);
    // The isolator holds the intra service's port against the DMZ (a
    // timeout), while the node answers other ports (refused).
    let n3 = node_addr(2);
    assert_eq!(probe(&s.client, n3, 8080), TcpOutcome::Timeout);
    assert_eq!(probe(&s.client, n3, 8081), TcpOutcome::Refused);
    let before_backends = backends(&inst);
    let before_protected = dmz_protected();
    let m = metrics(&s.edge);
    let syncs0 = metric::<f64>(&m, "swarmlb_swarm_syncs_total").unwrap();
    let failures0 = metric::<f64>(&m, "swarmlb_swarm_failures_total").unwrap();
    assert_eq!(metric::<f64>(&m, "swarmlb_swarm_connected"), Some(1.0));

    let load = Streaming::open(&s.client, IpAddr::V4(VIP), 12, Duration::from_millis(100));
    load.progress_at_least("before", Duration::from_secs(1), 12);
    let log_mark = daemon.output_so_far().len();
    let t0 = Instant::now();
    s.lab.stop_dockerd(0);
    wait_until(Duration::from_secs(10), || inst.status()["swarm"]["connected"] == false, || "the loss is reported".into());
    println!("dockerd killed: the agent reported the loss after {:.1} s", t0.elapsed().as_secs_f64());
    // The minute without dockerd: every 10 s the state is unchanged, the
    // port stays closed to the DMZ, new connections reach both backends.
    let mut checks = 0;
    while t0.elapsed() < Duration::from_secs(62) {
        assert_eq!(backends(&inst), before_backends, "backends changed with dockerd gone");
        assert_eq!(dmz_protected(), before_protected, "protected ports changed with dockerd gone");
        assert_eq!(probe(&s.client, n3, 8080), TcpOutcome::Timeout, "the protected port opened with dockerd gone");
        assert_eq!(answers(&s.client, 20), two, "new connections with dockerd gone");
        checks += 1;
        let next_mark = Duration::from_millis(10_000 - (t0.elapsed().as_millis() % 10_000) as u64);
        std::thread::sleep(next_mark.min(Duration::from_secs(62).saturating_sub(t0.elapsed())));
    }
    let away = t0.elapsed();
    let m = metrics(&s.edge);
    assert_eq!(metric::<f64>(&m, "swarmlb_swarm_connected"), Some(0.0), "{m}");
    let failures = metric::<f64>(&m, "swarmlb_swarm_failures_total").unwrap();
    assert_eq!(metric::<f64>(&m, "swarmlb_swarm_syncs_total"), Some(syncs0), "no sync without dockerd");
    // One line at the loss, not one per retry.
    let out = daemon.output_so_far();
    let lines = count_after(&out, log_mark, "lb_user::source::swarm");
    assert_eq!(count_after(&out, log_mark, "lost the Swarm"), 1, "{}", &out[log_mark..]);
    assert!(failures >= failures0 + 5.0 && lines <= 2, "{lines} Swarm log lines for {} failed attempts:\n{}", failures - failures0, &out[log_mark..]);
    println!(
        "dockerd away {:.1} s: {checks} checks unchanged, {} failed attempts counted, {lines} Swarm log lines",
        away.as_secs_f64(),
        failures - failures0
    );

    s.lab.start_dockerd(0).expect("dockerd starts again");
    let t1 = Instant::now();
    wait_until(Duration::from_secs(30), || inst.status()["swarm"]["connected"] == true, || daemon.output_so_far());
    let resync = t1.elapsed();
    let m = metrics(&s.edge);
    assert_eq!(metric::<f64>(&m, "swarmlb_swarm_connected"), Some(1.0));
    assert!(metric::<f64>(&m, "swarmlb_swarm_syncs_total").unwrap() > syncs0, "{m}");
    assert!(daemon.output_so_far().contains("in sync with the Swarm again"), "{}", daemon.output_so_far());
    assert_eq!(backends(&inst), before_backends, "the restarted manager drained nothing");
    println!("dockerd answering again: in sync {:.1} s later", resync.as_secs_f64());

    // A change made after the return is applied.
    let t2 = Instant::now();
    s.lab.label_add(2, "lb", "proxy").unwrap();
    wait_until(Duration::from_secs(15), || weight_of(&inst, n3) == Some(1), || format!("n3 labelled: {:?}", backends(&inst)));
    println!("label added after the return: a backend {:.1} s later", t2.elapsed().as_secs_f64());
    wait_until(Duration::from_secs(5), || who(&s.client, IpAddr::V4(VIP)) == names[2], || "a new connection reaches n3".into());

    let answered = load.answered();
    let longest = load.longest_wait();
    let broken: Vec<String> = load.stop().iter().filter_map(Ended::failure).collect();
    println!("12 streams through the minute: {} broken, {answered} requests answered, longest wait {longest:?}", broken.len());
    assert!(broken.is_empty(), "{broken:?}");
    stop_cleanly(&mut daemon, libc::SIGTERM);
}

/// `nat` config for EdgeLab with `workers` (1-based) as backends of both
/// VIPs, http health checks, and a DMZ zone on the outside interface.
fn edge_config(workers: &[usize], protected: &[&str], inside: &str) -> EdgeConfig {
    let workers: Vec<(usize, Option<u32>)> = workers.iter().map(|&i| (i, None)).collect();
    let [web4, web6] = worker_vips("web", &["tcp/80"], &workers);
    EdgeConfig::new()
        .zone_interface("e-out", "dmz")
        .protected("dmz", protected)
        .interfaces(&["e-out"], inside)
        .vip(web4.health_check(r#"{ protocol = "http", port = 80, interval_s = 3, timeout_s = 1, rise = 2, fall = 2 }"#))
        .vip(web6)
}

/// Waits for a restarted daemon (the killed one's state file is still
/// there): its pid in the state file.
fn wait_restarted(inst: &Instance, child: &mut ChildGuard) {
    let pid = u64::from(child.pid());
    wait_until(Duration::from_secs(20), || inst.status()["pid"].as_u64() == Some(pid), || child.output_so_far());
}

/// kill -9 under 30 streams: requests keep being answered while no agent
/// runs, the restart says it adopted, the metrics show the restart and the
/// kernel's counters go on from where they were.
#[test]
fn kill_9_under_traffic_the_restart_adopts_and_counters_go_on() {
    let (lab, _ca, _nginx) = lab_with_proxies("fckill", 3);
    let inst = Instance::new("fckill", &edge_config(&[1, 2, 3], &["tcp/5432"], "e-in").to_toml());
    let mut daemon = inst.start(&lab.edge, &[]);
    inst.wait_ready(&mut daemon);
    let load = Streaming::open(&lab.client, IpAddr::V4(VIP_V4), 30, Duration::from_millis(20));
    load.progress_at_least("before", Duration::from_secs(1), 30);
    let m = metrics(&lab.edge);
    assert_eq!(metric::<f64>(&m, "swarmlb_agent_adopted"), Some(0.0), "a first start adopts nothing");
    let started0 = metric::<f64>(&m, "swarmlb_agent_start_timestamp_seconds").unwrap();
    let packets0 = metric_sum(&m, "swarmlb_backend_packets_total");
    let flows0 = metric::<f64>(&m, "swarmlb_flows").unwrap();
    assert!(packets0 > 0.0 && flows0 >= 30.0, "{m}");

    daemon.signal(libc::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(10)).expect("killed");
    let t = Instant::now();
    let during = load.progress_at_least("no agent (after kill -9)", Duration::from_secs(3), 100);
    let restart = Instant::now();
    let mut daemon = inst.start(&lab.edge, &[]);
    wait_restarted(&inst, &mut daemon);
    let (gap, restart) = (t.elapsed(), restart.elapsed());
    let out = daemon.output_so_far();
    assert!(out.contains("adopted the pinned data path"), "{out}");
    load.progress_at_least("after the restart", Duration::from_secs(1), 30);

    let m = metrics(&lab.edge);
    assert_eq!(metric::<f64>(&m, "swarmlb_agent_adopted"), Some(1.0), "{m}");
    let started1 = metric::<f64>(&m, "swarmlb_agent_start_timestamp_seconds").unwrap();
    assert!(started1 > started0, "the restart is visible: {started0} → {started1}");
    // The counters live in the kernel's pinned maps: they went on counting
    // while no agent ran, and did not start over.
    let packets1 = metric_sum(&m, "swarmlb_backend_packets_total");
    assert!(packets1 >= packets0 + during as f64, "backend packets {packets0} → {packets1} ({during} requests while no agent ran)");
    assert!(metric::<f64>(&m, "swarmlb_flows").unwrap() >= 30.0, "the streams' flows are still remembered: {m}");

    let answered = load.answered();
    let longest = load.longest_wait();
    let broken: Vec<String> = load.stop().iter().filter_map(Ended::failure).collect();
    println!(
        "kill -9, {:.1} s without an agent, restart ready in {:.1} s; {during} requests answered while no agent ran; 30 streams: {} broken, {answered} answers, longest wait {longest:?}; backend packets {packets0} → {packets1}",
        gap.as_secs_f64(),
        restart.as_secs_f64(),
        broken.len()
    );
    assert!(broken.is_empty(), "{broken:?}");
    assert!(longest < Duration::from_secs(1), "a request waited {longest:?}");
    stop_cleanly(&mut daemon, libc::SIGTERM);
    assert!(inst.down().status.success());
}

/// Broken configs on SIGHUP under traffic — invalid, naming an interface
/// that does not exist, and one that fails only when the balancer's state
/// is computed — change nothing in the kernel and start nothing (no health
/// probe of a backend the refused config adds); the log names the file,
/// line and key; the metrics count the refusals. A fixed config applies.
#[test]
fn broken_configs_on_sighup_change_nothing_and_say_where() {
    let (lab, _ca, nginx) = lab_with_proxies("fchup", 3);
    // An inside interface without an IPv6 address, for a config that
    // parses but cannot be applied (the IPv6 VIP needs one).
    harness::rtnl::bridge(&lab.edge, "e-dummy").unwrap();
    harness::rtnl::addr(&lab.edge, "e-dummy", "10.9.0.1/24").unwrap();
    let good = edge_config(&[1, 2], &["tcp/5432"], "e-in").to_toml();
    let inst = Instance::new("fchup", &good);
    let mut daemon = inst.start(&lab.edge, &[]);
    inst.wait_ready(&mut daemon);
    let load = Streaming::open(&lab.client, IpAddr::V4(VIP_V4), 20, Duration::from_millis(20));
    load.progress_at_least("before", Duration::from_secs(1), 20);
    let before = kernel_state(&inst.pin_path);
    let status_before = applied_vips(&inst);
    let config = inst.config.display().to_string();

    // 1. Invalid: a port out of range, on line 7 of the file.
    let invalid = edge_config(&[1, 2, 3], &["tcp/5432", "tcp/70000"], "e-in").to_toml();
    assert_eq!(invalid.lines().nth(6), Some("protected = [\"tcp/5432\", \"tcp/70000\"]"));
    // 2. Parses, names an interface that does not exist.
    let no_iface = edge_config(&[1, 2, 3], &["udp/9999"], "e-in").zone_interface("nosuch0", "dmz").to_toml();
    // 3. Parses, all interfaces exist, fails while the balancer's state is
    //    computed (the IPv6 VIP's inside interface has no IPv6 address).
    let late = edge_config(&[1, 2, 3], &["udp/9999"], "e-dummy").to_toml();
    let w3_requests = nginx[2].access_count();
    let cases: [(&str, &str, &[&str]); 3] = [
        (&invalid, "the new config is invalid", &[":7:", "zone.dmz.protected", "70000"]),
        (&no_iface, "applying the new config failed", &["nosuch0", "does not exist"]),
        (&late, "applying the new config failed", &["e-dummy has no IPv6 address"]),
    ];
    for (n, (body, what, details)) in cases.iter().enumerate() {
        let mark = daemon.output_so_far().len();
        inst.write_config(body);
        daemon.signal(libc::SIGHUP);
        wait_until(
            Duration::from_secs(10),
            || count_after(&daemon.output_so_far(), mark, what) == 1,
            || format!("case {}: not reported:\n{}", n + 1, daemon.output_so_far()),
        );
        let out = daemon.output_so_far();
        let line = out[mark..].lines().find(|l| l.contains(what)).unwrap().to_owned();
        println!("refused reload {}: {line}", n + 1);
        assert!(line.contains(&config) && line.contains("the running policy stays"), "names the file: {line}");
        for d in *details {
            assert!(line.contains(d), "case {}: the log line lacks {d:?}: {line}", n + 1);
        }
        assert_eq!(kernel_state(&inst.pin_path), before, "case {}: the kernel's maps changed", n + 1);
        assert_eq!(applied_vips(&inst), status_before, "case {}: the applied state changed", n + 1);
        let m = metrics(&lab.edge);
        assert_eq!(metric::<f64>(&m, "swarmlb_config_last_reload_successful"), Some(0.0), "{m}");
        assert_eq!(metric::<f64>(&m, "swarmlb_config_reloads_total{result=\"failed\"}"), Some(n as f64 + 1.0), "{m}");
        assert_eq!(metric::<f64>(&m, "swarmlb_config_reloads_total{result=\"success\"}"), Some(0.0), "{m}");
        load.progress_at_least(&format!("after refused reload {}", n + 1), Duration::from_millis(500), 20);
        assert!(daemon.try_status().is_none(), "the daemon died");
    }
    // None of the refused configs started probing w3 (2 intervals).
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!(nginx[2].access_count(), w3_requests, "a refused config's health checks run");
    let table = std::process::Command::new(swarmlb_bin()).args(["status", "--runtime-dir"]).arg(&inst.runtime_dir).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("LAST RELOAD REFUSED") && table.contains("e-dummy"), "{table}");

    // Fixed: applies, the gauge is 1 again.
    let t = Instant::now();
    inst.write_config(&edge_config(&[1, 2, 3], &["tcp/5432", "udp/9999"], "e-in").to_toml());
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        || metric::<f64>(&metrics(&lab.edge), "swarmlb_config_last_reload_successful") == Some(1.0),
        || daemon.output_so_far(),
    );
    let m = metrics(&lab.edge);
    assert_eq!(metric::<f64>(&m, "swarmlb_config_reloads_total{result=\"success\"}"), Some(1.0), "{m}");
    assert!(metric::<f64>(&m, "swarmlb_config_last_reload_success_timestamp_seconds").unwrap() > 0.0);
    assert!(m.contains("swarmlb_backend_weight{vip=\"web4\",backend=\"10.1.0.13\"} 1"), "{m}");
    assert!(inst.status()["zones"][0]["protected"].as_array().unwrap().iter().any(|p| p == "udp/9999"));
    assert_ne!(kernel_state(&inst.pin_path), before);
    println!("fixed config applied {:.0} ms after SIGHUP", t.elapsed().as_secs_f64() * 1e3);
    wait_until(Duration::from_secs(10), || nginx[2].access_count() > w3_requests, || "the applied config probes w3".into());

    let answered = load.answered();
    let broken: Vec<String> = load.stop().iter().filter_map(Ended::failure).collect();
    println!("20 streams through 3 refused reloads and 1 applied: {} broken, {answered} answers", broken.len());
    assert!(broken.is_empty(), "{broken:?}");
    stop_cleanly(&mut daemon, libc::SIGTERM);
    assert!(inst.down().status.success());
}

/// The agent's pins on a bpffs of the test's own, unmounted (`umount -l`)
/// under traffic: the data path runs on; the agent notices, logs, exposes
/// `swarmlb_pins_ok 0` (its metrics read the maps through its own
/// handles) and keeps running; `swarmlb status` says what is wrong. When a
/// bpffs is back the agent pins everything again, so a later kill -9 and
/// restart adopt the data path with every stream kept.
#[test]
fn bpffs_unmounted_under_the_agent_is_reported_and_the_pins_restored() {
    let mount = BpfMount::new("fcbpf");
    let (lab, _ca, _nginx) = lab_with_proxies("fcbpf", 2);
    let inst = Instance::with_pin_path("fcbpf", &edge_config(&[1, 2], &["tcp/5432"], "e-in").to_toml(), mount.dir.join("pins"));
    let mut daemon = inst.start(&lab.edge, &[]);
    inst.wait_ready(&mut daemon);
    let load = Streaming::open(&lab.client, IpAddr::V4(VIP_V4), 20, Duration::from_millis(20));
    load.progress_at_least("before", Duration::from_secs(1), 20);
    let link_pin = inst.pin_path.join("xdp-native-e-out");
    assert!(link_pin.exists() && inst.pin_path.join("LB_FLOWS").exists());
    assert_eq!(metric::<f64>(&metrics(&lab.edge), "swarmlb_pins_ok"), Some(1.0));
    let (code, why) = healthz(&lab.edge).unwrap();
    assert_eq!(code, 200, "{why}");
    assert!(why.starts_with("ok: ") && why.contains("interfaces carry their XDP programs"), "{why}");

    let t = Instant::now();
    mount.unmount().unwrap();
    assert!(!link_pin.exists());
    wait_until(
        Duration::from_secs(10),
        || metric::<f64>(&metrics(&lab.edge), "swarmlb_pins_ok") == Some(0.0),
        || format!("pins_ok stays 1:\n{}", daemon.output_so_far()),
    );
    println!("bpffs unmounted: reported after {:.1} s", t.elapsed().as_secs_f64());
    assert!(daemon.output_so_far().contains("the pinned maps and links are gone"), "{}", daemon.output_so_far());
    let packets = metric_sum(&metrics(&lab.edge), "swarmlb_backend_packets_total");
    load.progress_at_least("pins gone", Duration::from_secs(2), 100);
    assert_eq!(who(&lab.client, IpAddr::V4(VIP_V4)).chars().next(), Some('w'), "new connections still balanced");
    let m = metrics(&lab.edge);
    assert!(metric_sum(&m, "swarmlb_backend_packets_total") > packets, "the metrics still read the live counters: {m}");
    assert_eq!(metric::<f64>(&m, "swarmlb_pins_lost_total"), Some(1.0));
    // /healthz says what is wrong, for whatever watches it.
    let (code, why) = healthz(&lab.edge).unwrap();
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("the pins are missing") && why.contains("pins missing in"), "{why}");
    // `swarmlb status` reads the pins: a clear error, not a crash.
    let status = std::process::Command::new(swarmlb_bin()).args(["status", "--runtime-dir"]).arg(&inst.runtime_dir).output().unwrap();
    let err = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(1), "{err}");
    assert!(err.contains("the pins are gone") && err.contains("swarmlb_pins_ok 0"), "{err}");
    println!("swarmlb status meanwhile: {}", err.trim());
    assert!(daemon.try_status().is_none(), "the agent keeps running");

    // A bpffs again (a fresh, empty one): the agent pins it all again.
    let t = Instant::now();
    mount.mount().unwrap();
    wait_until(Duration::from_secs(10), || metric::<f64>(&metrics(&lab.edge), "swarmlb_pins_ok") == Some(1.0), || daemon.output_so_far());
    println!("bpffs mounted again: re-pinned after {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(healthz(&lab.edge).unwrap().0, 200, "healthy again");
    assert!(daemon.output_so_far().contains("pinned again"), "{}", daemon.output_so_far());
    assert!(link_pin.exists() && inst.pin_path.join("LB_FLOWS").exists() && inst.pin_path.join("ZONE_BINDINGS").exists());
    assert!(inst.status()["interfaces"][0]["bound"] == true);
    // The agent owns the new pin directory too: one agent per pin path.
    assert_eq!(lb_user::datapath::pin_dir::holder(&inst.pin_path), Some(daemon.pid()), "the restored pin directory is not locked");

    // The restored pins carry a restart: kill -9 (the worst case: the
    // links are kept only by their pins), start, adopt.
    daemon.signal(libc::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(10)).expect("killed");
    load.progress_at_least("no agent, on the restored pins", Duration::from_secs(2), 100);
    let mut daemon = inst.start(&lab.edge, &[]);
    wait_restarted(&inst, &mut daemon);
    assert!(daemon.output_so_far().contains("adopted the pinned data path"), "{}", daemon.output_so_far());
    let m = metrics(&lab.edge);
    assert_eq!((metric::<f64>(&m, "swarmlb_agent_adopted"), metric::<f64>(&m, "swarmlb_pins_ok")), (Some(1.0), Some(1.0)), "{m}");
    load.progress_at_least("after the restart", Duration::from_secs(1), 20);
    let answered = load.answered();
    let broken: Vec<String> = load.stop().iter().filter_map(Ended::failure).collect();
    println!("20 streams through umount, remount, kill -9 and restart: {} broken, {answered} answers", broken.len());
    assert!(broken.is_empty(), "{broken:?}");
    let mut s = Stream::open(&lab.client, IpAddr::V4(VIP_V4));
    assert!(s.ask().is_ok());
    stop_cleanly(&mut daemon, libc::SIGTERM);
    assert!(inst.down().status.success());
}
