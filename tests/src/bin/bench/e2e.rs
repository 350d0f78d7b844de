//! Connections end to end through real namespaces: swarmlb's three modes
//! beside no balancer at all, nftables (DNAT through conntrack, and the
//! netdev `fwd` L2 DSR) and HAProxy, in one run, interleaved round by round.
//!
//! ```text
//!  client ── edge ── switch ─┬─ w1  nginx (HTTP, TLS 1.3), iperf3
//!  (a source address         ├─ w2
//!   per mode)                └─ w3
//! ```
//!
//! The baseline is the edge as a plain router with the client spreading
//! its connections over the workers itself: the most this topology can do.
//! A control runs the same with a pass-through XDP program on the edge's
//! veths, the floor under any XDP balancer here. Every other mode is the
//! same traffic through the VIP. Per mode and
//! round ([`measure`]): connections per second and the machine's CPU time
//! per connection while they run (busy jiffies of /proc/stat: everything
//! the topology costs, softirqs included, on a machine shared with others —
//! the CPU time of processes outside the topology is shown as foreign load),
//! single-client connect and keep-alive request latency, TLS handshakes per
//! second, and one iperf3 stream.

mod cpu;
pub(crate) mod lab;
pub(crate) mod load;
pub(crate) mod modes;
mod summary;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use harness::tls::tls_client;
use rustls::ClientConfig;

use crate::{report::Section, Opts};
use lab::{Lab, WORKERS};
use load::Targets;
use modes::{Mode, ALL};

/// How long and how often each measurement runs.
pub struct Plan {
    pub rounds: usize,
    /// The connection-rate window (the CPU per connection is taken in it).
    conn_window: Duration,
    conn_threads: usize,
    /// Sequential connects and keep-alive requests for the latencies.
    latency_count: usize,
    tls_window: Duration,
    tls_threads: usize,
    bulk_seconds: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        // Full: 8 modes × 5 rounds × about 8 s (4.5–5 min); quick: 8 × 2 ×
        // about 3 s (50 s). The issue allows 6 min and 60 s.
        if quick {
            Self {
                rounds: 2,
                conn_window: Duration::from_millis(1000),
                conn_threads: 24,
                latency_count: 200,
                tls_window: Duration::from_millis(500),
                tls_threads: 8,
                bulk_seconds: 1,
            }
        } else {
            Self {
                rounds: 5,
                conn_window: Duration::from_secs(3),
                conn_threads: 24,
                latency_count: 1000,
                tls_window: Duration::from_secs(2),
                tls_threads: 8,
                bulk_seconds: 2,
            }
        }
    }
}

/// One mode's figures in one round.
#[derive(Clone, Debug)]
pub struct Sample {
    pub conns_per_s: f64,
    /// The whole machine's busy CPU time per completed connection.
    pub cpu_us_per_conn: f64,
    /// The same without the foreign processes' time: what the topology spent.
    pub topology_us_per_conn: f64,
    /// Of that, the balancer's own user-space process (swarmlb, HAProxy).
    pub balancer_us_per_conn: f64,
    pub conns_failed: u64,
    /// CPU time of processes outside the topology in the connection
    /// window, in % of all cores; the same in the TLS and bulk windows.
    pub foreign_pct: f64,
    pub foreign_tls_pct: f64,
    pub foreign_bulk_pct: f64,
    pub connect_p50: f64,
    pub connect_p99: f64,
    pub request_p50: f64,
    pub request_p99: f64,
    pub handshakes_per_s: f64,
    pub handshakes_failed: u64,
    pub gbits: f64,
    /// swarmlb's non-zero drop counters after the connection window.
    pub drops: String,
}

/// A turn's outcome: the figures, or why the mode could not be measured.
pub type Turn = std::result::Result<Sample, String>;

/// The section (see the module docs).
pub fn run(opts: &Opts) -> Result<Section> {
    let plan = Plan::new(opts.quick);
    let lab = Lab::new(ALL.len())?;
    let tls = Arc::new(tls_client(&lab.ca));
    let mut rounds: Vec<Vec<Turn>> = Vec::new();
    for round in 0..plan.rounds {
        let mut turns = Vec::new();
        for (i, mode) in ALL.iter().enumerate() {
            // `--rows`: the baseline and the modes named (a profiling aid).
            let wanted = *mode == Mode::Baseline || opts.rows.as_ref().is_none_or(|r| r.iter().any(|w| mode.label().contains(w.as_str())));
            if !wanted {
                turns.push(Err("not measured (--rows)".into()));
                continue;
            }
            let turn = measure(&lab, &tls, &plan, *mode, i, round).map_err(|e| format!("{e:#}"));
            match &turn {
                Ok(s) => eprintln!(
                    "  round {round} {:<22} {:>7.0} conn/s {:>6.1} µs/conn ({:.1} without foreign load), foreign {:.0}%, {:.0} TLS/s, {:.2} Gbit/s {}",
                    mode.label(),
                    s.conns_per_s,
                    s.cpu_us_per_conn,
                    s.topology_us_per_conn,
                    s.foreign_pct,
                    s.handshakes_per_s,
                    s.gbits,
                    s.drops
                ),
                Err(e) => eprintln!("  round {round} {:<22} failed: {e}", mode.label()),
            }
            turns.push(turn);
        }
        rounds.push(turns);
    }
    drop(lab);
    Ok(summary::section(&plan, &rounds))
}

/// Runs `f` between two /proc snapshots; returns its result, the
/// snapshots and the time it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, cpu::Snapshot, cpu::Snapshot, Duration) {
    let before = cpu::Snapshot::take();
    let start = std::time::Instant::now();
    let value = f();
    let elapsed = start.elapsed();
    (value, before, cpu::Snapshot::take(), elapsed)
}

/// One turn: install the mode, check it reaches every backend, measure,
/// remove it (the guard's drop).
fn measure(lab: &Lab, tls: &Arc<ClientConfig>, plan: &Plan, mode: Mode, i: usize, round: usize) -> Result<Sample> {
    modes::check_clean(lab)?;
    let installed = mode.install(lab, &format!("r{round}m{i}"))?;
    let client = &lab.lab.client;
    let http = Targets { srcs: mode.srcs(i), dsts: mode.dsts(80) };
    let https = Targets { srcs: mode.srcs(i), dsts: mode.dsts(443) };
    load::warm_up(client, &http, WORKERS, Duration::from_secs(5))?;
    // Latency first: one client on a quiet path, before the load's tail
    // (closing sockets, softirq backlog) could reach into it.
    let mut lat = load::latencies(client, &http, plan.latency_count)?;

    let (rate, before, after, _) = timed(|| load::connection_rate(client, &http, plan.conn_threads, plan.conn_window));
    let usage = before.until(&after);
    let balancer_us = before.tasks_us(&after, &installed.pids());
    let drops = installed.drops()?;
    anyhow::ensure!(rate.done > 0, "no connection completed ({} failed)", rate.failed);

    let (hs, tls_before, tls_after, _) = timed(|| load::handshake_rate(client, &https, tls, plan.tls_threads, plan.tls_window));
    let bulk_dst = SocketAddr::V4(mode.bulk_dst());
    let profile = Profile::start(client, mode, round)?;
    let (gbits, bulk_before, bulk_after, bulk_elapsed) =
        timed(|| load::bulk_gbits(client, http.srcs[0], bulk_dst, plan.bulk_seconds));
    drop(profile);
    Ok(Sample {
        conns_per_s: rate.per_second(),
        cpu_us_per_conn: usage.busy_us / rate.done as f64,
        topology_us_per_conn: (usage.busy_us - usage.foreign_us).max(0.0) / rate.done as f64,
        balancer_us_per_conn: balancer_us / rate.done as f64,
        conns_failed: rate.failed,
        foreign_pct: usage.foreign_pct(rate.elapsed),
        foreign_tls_pct: tls_before.until(&tls_after).foreign_pct(hs.elapsed),
        foreign_bulk_pct: bulk_before.until(&bulk_after).foreign_pct(bulk_elapsed),
        connect_p50: load::quantile(&mut lat.connect, 0.5),
        connect_p99: load::quantile(&mut lat.connect, 0.99),
        request_p50: load::quantile(&mut lat.request, 0.5),
        request_p99: load::quantile(&mut lat.request, 0.99),
        handshakes_per_s: hs.per_second(),
        handshakes_failed: hs.failed,
        gbits: gbits?,
        drops,
    })
}

/// `SWARMLB_BENCH_PERF=DIR`: a system-wide `perf record` (cpu-clock, call
/// graphs) around each bulk window, into `DIR/<mode>-r<round>.data`, to see
/// where a mode's bulk CPU goes (bench/results/e2e-breakdown.md). Stopped
/// on drop, as `perf record` stops on Ctrl-C.
struct Profile(Option<harness::ChildGuard>);

impl Profile {
    /// Started from `ns` (any namespace: the recording is system-wide).
    fn start(ns: &harness::Netns, mode: Mode, round: usize) -> Result<Self> {
        let Some(dir) = std::env::var_os("SWARMLB_BENCH_PERF") else { return Ok(Self(None)) };
        let name: String = mode.label().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let out = std::path::Path::new(&dir).join(format!("{name}-r{round}.data"));
        let mut cmd = std::process::Command::new("perf");
        cmd.args(["record", "-q", "-e", "cpu-clock", "-a", "-g", "-o"]).arg(out);
        let child = ns.try_spawn(&mut cmd)?;
        // perf needs a moment to open its events on every CPU.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self(Some(child)))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.signal(libc::SIGINT);
            let _ = child.wait_timeout(Duration::from_secs(10));
        }
    }
}
