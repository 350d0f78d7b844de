//! Once a second while the soak runs: the flow table and NAT gauges and
//! the balancer's drop counters from the agent's metrics endpoint, and the
//! agent's resident memory from /proc.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::load::Live;
use crate::{daemon::scrape_metrics, Netns};

/// One second's reading.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Since the soak started.
    pub at: Duration,
    /// `swarmlb_flows`, `swarmlb_nat_entries` and the balancer's
    /// `drop_*` counters; `None` if the scrape failed.
    pub metrics: Option<Gauges>,
    /// The agent's VmRSS, KiB.
    pub rss_kib: Option<u64>,
}

/// What one scrape of the metrics endpoint says.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Flows in the flow table.
    pub flows: u64,
    /// NAT entries.
    pub nat: u64,
    /// `swarmlb_balancer_packets_total{outcome="drop_…"}` by reason.
    pub drops: BTreeMap<String, u64>,
}

/// Reads the gauges out of a metrics body.
pub fn parse(body: &str) -> Gauges {
    let mut g = Gauges::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        if name == "swarmlb_flows" {
            g.flows = value;
        } else if name == "swarmlb_nat_entries" {
            g.nat = value;
        } else if let Some(reason) = name.strip_prefix("swarmlb_balancer_packets_total{outcome=\"drop_") {
            g.drops.insert(format!("drop_{}", reason.trim_end_matches("\"}")), value);
        }
    }
    g
}

/// A process's VmRSS in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// Samples every second until `stop`; prints a progress line every
/// `progress` (none if zero).
pub fn run(edge: &Netns, pid: u32, t0: Instant, stop: &AtomicBool, live: &Live, progress: Duration) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = t0;
    let mut next_line = t0 + progress;
    while !stop.load(Ordering::Relaxed) {
        let metrics = scrape_metrics(edge).ok().map(|b| parse(&b));
        let s = Sample { at: t0.elapsed(), metrics, rss_kib: rss_kib(pid) };
        if !progress.is_zero() && Instant::now() >= next_line {
            next_line += progress;
            let g = s.metrics.clone().unwrap_or_default();
            eprintln!(
                "  soak {:>4.0} s: {} connections ({} failed), {} stream requests, {} streams broken; flows {} nat {}; agent RSS {:.1} MiB",
                s.at.as_secs_f64(),
                live.made.load(Ordering::Relaxed),
                live.failed.load(Ordering::Relaxed),
                live.requests.load(Ordering::Relaxed),
                live.broken.load(Ordering::Relaxed),
                g.flows,
                g.nat,
                s.rss_kib.unwrap_or(0) as f64 / 1024.0
            );
        }
        samples.push(s);
        next += Duration::from_secs(1);
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    #[test]
    fn gauges_parse() {
        let g = super::parse(
            "# HELP swarmlb_flows Flows.\nswarmlb_flows 12\nswarmlb_nat_entries 7\nswarmlb_balancer_packets_total{outcome=\"new_flow\"} 9\nswarmlb_balancer_packets_total{outcome=\"drop_no_backend\"} 3\n",
        );
        assert_eq!((g.flows, g.nat), (12, 7));
        assert_eq!(g.drops.into_iter().collect::<Vec<_>>(), vec![("drop_no_backend".to_owned(), 3)]);
    }
}
