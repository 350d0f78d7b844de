//! The balancer's end-to-end setup: the edge lab with nginx on every
//! worker and `swarmlb run` on the edge, and the config the tests give it.

use std::{net::IpAddr, time::Duration};

use harness::{
    config::{worker_vips, EdgeConfig},
    daemon::{wait_until, Instance},
    edge_lab::*,
    nginx::Nginx,
    tls::TestCa,
    ChildGuard,
};

/// The names every worker's nginx has a certificate for.
pub const SNI: [&str; 3] = ["a.com", "b.com", "c.com"];

/// Health checks that notice quickly: HTTP on port 80, every 3 s, out after
/// 2 failures (at most 2 × 3 s + 1 s), back after 2 passes.
pub const FAST_HEALTH: &str = r#"{ protocol = "http", port = 80, path = "/", interval_s = 3, timeout_s = 1, rise = 2, fall = 2 }"#;

/// The balancer's config for `workers` (1-based index, weight), both
/// families, `mode`.
pub fn config(mode: &str, workers: &[(usize, u32)]) -> String {
    config_with(mode, workers, "", "")
}

/// [`config`] with `balancer_extra` lines in `[balancer]` and, unless
/// empty, `health` as both VIPs' `health_check` table (`{ … }`).
pub fn config_with(mode: &str, workers: &[(usize, u32)], balancer_extra: &str, health: &str) -> String {
    let workers: Vec<(usize, Option<u32>)> = workers.iter().map(|&(i, w)| (i, Some(w))).collect();
    EdgeConfig::balancer()
        .balancer_line(balancer_extra)
        .vips(worker_vips("web", &["tcp/443", "tcp/80"], &workers).map(|v| v.mode(mode).health_check(health)))
        .to_toml()
}

/// The lab, its proxies and the daemon (all removed on drop).
pub struct Running {
    pub inst: Instance,
    pub daemon: ChildGuard,
    pub nginx: Vec<Nginx>,
    pub ca: TestCa,
    pub lab: EdgeLab,
}

/// Every address of a family: nginx listening there serves a VIP on lo too.
pub const ANY: [IpAddr; 2] = [IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)];

/// The lab with `n` workers running nginx `w1`, `w2`, … (listening on
/// every address, so a VIP on lo is served too), with certificates for
/// [`SNI`] from the returned CA.
pub fn lab_with_proxies(tag: &str, n: usize) -> (EdgeLab, TestCa, Vec<Nginx>) {
    harness::require_root().unwrap();
    let lab = EdgeLab::new(tag, n);
    let ca = TestCa::new();
    let nginx = (1..=n)
        .map(|i| Nginx::start(&lab.workers[i - 1], &format!("w{i}"), &ANY, &ca, &SNI).expect("nginx starts"))
        .collect();
    (lab, ca, nginx)
}

/// [`lab_with_proxies`], and swarmlb with `cfg`.
pub fn start(tag: &str, n: usize, cfg: &str) -> Running {
    let (lab, ca, nginx) = lab_with_proxies(tag, n);
    let inst = Instance::new(tag, cfg);
    let mut daemon = inst.start(&lab.edge, &[]);
    inst.wait_ready(&mut daemon);
    Running { inst, daemon, nginx, ca, lab }
}

impl Running {
    /// Worker `worker`'s (1-based) nginx.
    pub fn nginx(&self, worker: usize) -> &Nginx {
        &self.nginx[worker - 1]
    }

    /// Whether the status says `worker` is up in the first VIP.
    pub fn up(&self, worker: usize) -> bool {
        self.backend(worker)["up"] == true
    }

    /// `worker`'s entry in the first VIP's backends in the status.
    pub fn backend(&self, worker: usize) -> serde_json::Value {
        let addr = worker_addrs(worker).0.to_string();
        let s = self.inst.status();
        s["vips"][0]["backends"].as_array().unwrap().iter().find(|b| b["address"] == addr.as_str()).cloned().unwrap_or_default()
    }

    /// Rewrites the config, sends SIGHUP and waits until the status shows
    /// the new backend lists.
    pub fn reload(&mut self, cfg: &str, workers: &[(usize, u32)]) {
        self.inst.write_config(cfg);
        self.daemon.signal(libc::SIGHUP);
        let want: Vec<(String, u64)> =
            workers.iter().map(|(i, w)| (worker_addrs(*i).0.to_string(), u64::from(*w))).collect();
        wait_until(
            Duration::from_secs(10),
            || {
                let s = self.inst.status();
                let got: Vec<(String, u64)> = s["vips"][0]["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| (b["address"].as_str().unwrap().to_string(), b["weight"].as_u64().unwrap()))
                    .collect();
                got == want
            },
            || format!("reload to {workers:?}:\n{}", self.daemon.output_so_far()),
        );
    }
}
