//! What an operator's monitoring sees, with the real tools: the agent's
//! scrape passes `promtool check metrics`; `deploy/prometheus-alerts.yml`
//! passes `promtool check rules` and runs in a real Prometheus that scrapes
//! the agent in the edge namespace, where the no-healthy-backend alert
//! fires when the last proxy dies; every expression of
//! `deploy/grafana-dashboard.json` names only metrics the agent exposes and
//! evaluates in that Prometheus; `/healthz` answers.

mod common;

use std::{
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    dashboard,
    daemon::{get_local, healthz, stop_cleanly, swarmlb_bin, wait_until, Instance},
    edge::{lab_with_proxies, FAST_HEALTH},
    http::{metrics, who},
};
use harness::{
    config::{worker_vips, EdgeConfig},
    edge_lab::VIP_V4,
    ChildGuard, Netns,
};

/// Where the Prometheus of the test listens, in the edge namespace.
const PROMETHEUS_PORT: u16 = 9090;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// `promtool ARGS` with `stdin`: its exit status and what it printed.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package; `cargo xtask setup` installs it)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// A Prometheus in `ns` scraping the agent every second and evaluating
/// `rules` every second (removed with its data on drop).
struct Prometheus {
    _server: ChildGuard,
    dir: PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns, rules: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("swarmlb-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: swarmlb\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
                rules.display(),
                harness::daemon::METRICS_PORT
            ),
        )
        .unwrap();
        let server = ns.spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
                .arg("--log.level=warn"),
        );
        Self { _server: server, dir }
    }

    /// `GET /api/v1/…` as JSON; panics unless Prometheus says "success".
    fn api(ns: &Netns, path: &str) -> serde_json::Value {
        let (status, body) = get_local(ns, PROMETHEUS_PORT, &format!("/api/v1/{path}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {status} {e}: {body}"));
        assert_eq!((status, v["status"].as_str()), (200, Some("success")), "{path}: {body}");
        v
    }

    /// An instant query's result vector.
    fn query(ns: &Netns, expr: &str) -> Vec<serde_json::Value> {
        Self::api(ns, &format!("query?query={}", encode(expr)))["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_the_agent_runs_the_alert_rules_and_the_dashboard_queries() {
    let rules = deploy("prometheus-alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok && out.contains("SUCCESS"), "promtool check rules:\n{out}");

    // Two more outside interfaces, veths whose peers stay in the edge
    // namespace: e-xp has GRO off (veth's default) and runs no XDP, so
    // frames redirected to e-x would be lost; e-yp has GRO on.
    let (lab, _ca, mut nginx) = lab_with_proxies("obsprom", 2);
    for (dev, peer, gro) in [("e-x", "e-xp", "off"), ("e-y", "e-yp", "on")] {
        lab.edge.exec(&["ip", "link", "add", dev, "type", "veth", "peer", "name", peer]).unwrap();
        lab.edge.exec(&["ethtool", "-K", peer, "gro", gro]).unwrap();
    }
    let cfg = EdgeConfig::balancer()
        .interfaces(&["e-out", "e-x", "e-y"], "e-in")
        .vips(worker_vips("web", &["tcp/443", "tcp/80"], &[(1, Some(1)), (2, Some(1))]).map(|v| v.mode("nat").health_check(FAST_HEALTH)));
    // `RUST_LOG=debug` is the agent's debug log, not aya's relocations.
    let mut inst = Instance::new("obsprom", &cfg.to_toml());
    inst.log_filter = "debug".into();
    let mut daemon = inst.start(&lab.edge, &[]);
    inst.wait_ready(&mut daemon);
    let warning = "redirect target cannot take redirected frames";
    wait_until(Duration::from_secs(5), || daemon.output_so_far().contains(warning), || format!("no redirect warning:\n{}", daemon.output_so_far()));
    let log = daemon.output_so_far();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains(warning)).collect();
    assert!(warned.len() == 1 && warned[0].trim_end().ends_with("interface=e-x") && warned[0].contains("ethtool -K e-xp gro on"), "{warned:?}");
    // (Without the agent's default directives aya's loader logs every
    // relocation of every program here, hundreds of lines.)
    assert!(!log.contains("aya_obj") && !log.contains("relocat"), "{log}");
    let m = metrics(&lab.edge);
    let (ok, out) = promtool(&["check", "metrics"], &m);
    assert!(ok && out.trim().is_empty(), "promtool check metrics:\n{out}\n{m}");
    // The version and commit `swarmlb --version` names.
    let version = String::from_utf8(Command::new(swarmlb_bin()).arg("--version").output().unwrap().stdout).unwrap();
    let (number, commit) = version.trim().strip_prefix("swarmlb ").and_then(|v| v.strip_suffix(')')?.split_once(" (commit ")).expect("swarmlb X (commit Y)");
    let build = format!("swarmlb_build_info{{version=\"{number}\",commit=\"{commit}\"}} 1");
    assert!(m.lines().any(|l| l == build), "{build} in\n{m}");
    assert!(m.contains("swarmlb_vip_backends_up{vip=\"web4\"} 2"), "{m}");
    let (code, why) = healthz(&lab.edge).unwrap();
    assert_eq!(code, 200, "{why}");

    let prometheus = Prometheus::start(&lab.edge, &rules);
    let edge = &lab.edge;
    wait_until(
        Duration::from_secs(30),
        || get_local(edge, PROMETHEUS_PORT, "/-/ready").is_ok_and(|(s, _)| s == 200) && Prometheus::query(edge, "up{job=\"swarmlb\"} == 1").len() == 1,
        || "Prometheus scrapes the agent".into(),
    );
    // Prometheus read the types the agent declared: counters are counters.
    let meta = Prometheus::api(edge, "targets/metadata?match_target=%7Bjob%3D%22swarmlb%22%7D");
    let kind = |metric: &str| meta["data"].as_array().unwrap().iter().find(|e| e["metric"] == metric).map(|e| e["type"].as_str().unwrap().to_owned());
    assert_eq!(kind("swarmlb_backend_packets_total").as_deref(), Some("counter"), "{meta}");
    assert_eq!(kind("swarmlb_balancer_packets_total").as_deref(), Some("counter"));
    assert_eq!(kind("swarmlb_backend_up").as_deref(), Some("gauge"));

    // Every dashboard expression names metrics of the real scrape (the
    // Swarm's are checked by swarm_e2e, with a Swarm) and evaluates
    // (Grafana's variables stand for any instance).
    let missing = dashboard::missing_in(&metrics(edge), |n| n.starts_with("swarmlb_swarm_"));
    assert!(missing.is_empty(), "dashboard metrics not exposed: {missing:?}");
    let exprs = dashboard::exprs();
    for (_, expr) in &exprs {
        Prometheus::query(edge, &expr.replace("$__rate_interval", "1m").replace("$instance", ".+"));
    }
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    assert_eq!(Prometheus::query(edge, "swarmlb_build_info").len(), 1);
    // Connections through the VIP show in the dashboard's rates.
    for _ in 0..10 {
        who(&lab.client, IpAddr::V4(VIP_V4));
    }
    let flows = "sum(rate(swarmlb_backend_new_flows_total[1m])) > 0";
    wait_until(Duration::from_secs(15), || !Prometheus::query(edge, flows).is_empty(), || format!("{flows}: no data"));

    // Both proxies die: the VIP has no healthy backend, and the alert
    // fires (pending for its `for:`) in the real Prometheus. Every rule
    // evaluates without error.
    for n in &mut nginx {
        n.stop();
    }
    wait_until(
        Duration::from_secs(30),
        || {
            Prometheus::api(edge, "alerts")["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["labels"]["alertname"] == "SwarmlbNoHealthyBackend" && a["labels"]["vip"] == "web4")
        },
        || format!("no SwarmlbNoHealthyBackend alert: {}", Prometheus::api(edge, "alerts")),
    );
    // The agent said which backends went and why, and `status` keeps it.
    let log = daemon.output_so_far();
    for w in ["10.1.0.11", "10.1.0.12"] {
        assert!(
            log.lines().any(|l| l.contains("backend changed")
                && l.contains(&format!("backend={w} "))
                && l.contains("change=down")
                && l.contains("reason=health: failed 2 health checks in a row: connect")),
            "{w}:\n{log}"
        );
    }
    let table = inst.status_table();
    assert!(table.lines().any(|l| l.trim_start().starts_with("last change") && l.contains("ago: down (health: failed 2 health checks")), "{table}");
    let groups = Prometheus::api(edge, "rules");
    for rule in groups["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    drop(prometheus);
    stop_cleanly(&mut daemon, libc::SIGTERM);
}
