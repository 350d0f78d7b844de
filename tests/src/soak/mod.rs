//! The soak: sustained new connections and long-lived streams through the
//! VIPs while backends are added, removed, drained and reweighted every
//! few seconds, with the design's rules checked on every connection
//! ([`verdict`]), the flow table held to a bound and the agent's memory
//! watched. `tests/tests/soak.rs` runs it for a minute with assertions,
//! `cargo xtask soak` (the `soak` binary) for ten and writes
//! `bench/results/soak.md`.
//!
//! ```text
//!  client ── edge (swarmlb run, nat VIPs v4 + v6) ── switch ─┬─ w1 nginx
//!  new connections (HTTP, TLS)                                ├─ …
//!  + long-lived keep-alive streams                            └─ w6 (the pool;
//!                                                                   some start outside the set)
//! ```
//!
//! One thread changes the backend set ([`churn`]: seeded, so the sequence
//! of changes is the same every run), others make the load ([`load`]) and
//! read the gauges once a second ([`sample`]). Nothing is judged while it
//! runs: every connection is recorded with its times and held against the
//! timeline of changes at the end.

pub mod churn;
pub mod load;
pub mod sample;
pub mod verdict;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, IpAddr::V4, IpAddr::V6},
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    daemon::RunningDaemon,
    edge_lab::{EdgeLab, VIP_V4, VIP_V6},
    nginx::Nginx,
    stream::Stream,
    tls::{tls_client, TestCa},
};
use churn::{Action, Churn, Event};
use sample::Sample;

/// `tcp_closed_timeout_s` (the config's default, which the soak keeps).
const TCP_CLOSED_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent's sweep interval (`HOUSEKEEPING_INTERVAL` in lb-user).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How long the load runs.
    pub duration: Duration,
    /// Workers running nginx.
    pub pool: usize,
    /// Of those, in the set at the start (the rest can be added).
    pub initial: usize,
    /// New connections per second.
    pub new_per_s: u32,
    /// Every this many new connections one is a TLS handshake.
    pub tls_every: u32,
    /// Threads the new connections are spread over.
    pub connection_threads: usize,
    /// Long-lived streams at any time.
    pub streams: usize,
    /// Between a stream's requests.
    pub stream_interval: Duration,
    /// Between backend changes.
    pub churn_every: Duration,
    /// Left out of the memory comparison (the agent's first allocations).
    pub warm_up: Duration,
    /// The memory at the start and the end: the mean over this long.
    pub rss_window: Duration,
    /// The most the agent's RSS may grow from the start window to the end one.
    pub rss_growth_limit_kib: u64,
    /// The churn's seed.
    pub seed: u64,
    /// A progress line this often (none if zero).
    pub progress: Duration,
}

impl Plan {
    /// The soak for `duration`: 150 new connections a second (every fifth
    /// TLS), 50 streams asking 10 times a second each, a backend change
    /// every 3 s over a pool of 6 workers (4 in the set at the start).
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            pool: 6,
            initial: 4,
            new_per_s: 150,
            tls_every: 5,
            connection_threads: 32,
            streams: 50,
            stream_interval: Duration::from_millis(100),
            churn_every: Duration::from_secs(3),
            warm_up: Duration::from_secs(10),
            rss_window: Duration::from_secs(10),
            rss_growth_limit_kib: 2048,
            // Its first 19 changes (the one-minute test's) hold every kind,
            // a drained backend's removal and a removed one's return.
            seed: 0,
            progress: Duration::from_secs(30),
        }
    }

    /// The most flows the table may hold: every new connection is swept
    /// with its NAT entry at most `tcp_closed_timeout_s` plus one sweep
    /// interval after it closed (the client closes first), with 10 s of
    /// slack, plus a few flows per stream (each stream's, and the ones its
    /// end leaves).
    pub fn flow_bound(&self) -> u64 {
        let held = TCP_CLOSED_TIMEOUT + SWEEP_INTERVAL + Duration::from_secs(10);
        u64::from(self.new_per_s) * held.as_secs() + 4 * self.streams as u64
    }
}

/// One stretch of the run, for the table over time.
#[derive(Clone, Debug)]
pub struct Row {
    /// Where it starts and ends, since the start.
    pub from: Duration,
    /// End of the stretch.
    pub to: Duration,
    /// New connections answered and failed in it (by their start).
    pub made: u64,
    /// Failed.
    pub failed: u64,
    /// Backend changes in it.
    pub changes: usize,
    /// The largest flow and NAT gauges read in it.
    pub flows_max: u64,
    /// NAT entries, largest.
    pub nat_max: u64,
    /// The agent's RSS at its end, KiB.
    pub rss_kib: u64,
}

/// What the soak found.
#[derive(Debug)]
pub struct Report {
    /// What ran.
    pub plan: Plan,
    /// How long the load ran.
    pub elapsed: Duration,
    /// The new connections, judged.
    pub conns: verdict::Connections,
    /// The streams, judged.
    pub streams: verdict::Streams,
    /// Backend changes by kind (`add`, `remove`, …).
    pub changes: BTreeMap<String, usize>,
    /// SIGHUP → status showing the change: median and largest, ms.
    pub reload_ms: (f64, f64),
    /// The largest flow-table and NAT gauges, and the last ones.
    pub flows_max: u64,
    /// NAT entries, largest.
    pub nat_max: u64,
    /// Flows at the end.
    pub flows_end: u64,
    /// NAT entries at the end.
    pub nat_end: u64,
    /// [`Plan::flow_bound`]; the NAT bound adds the streams a removal
    /// broke (their old entry waits for its backend's side to time out).
    pub flow_bound: u64,
    /// The NAT entries' bound.
    pub nat_bound: u64,
    /// The agent's RSS (KiB): mean of the first window after the warm-up,
    /// of the last window, and the largest.
    pub rss_start_kib: u64,
    /// Mean of the last window.
    pub rss_end_kib: u64,
    /// Largest.
    pub rss_max_kib: u64,
    /// Balancer drops over the run, by reason (non-zero only).
    pub drops: BTreeMap<String, u64>,
    /// Seconds sampled, and how many scrapes of the metrics endpoint failed.
    pub samples: usize,
    /// Failed scrapes.
    pub scrapes_failed: usize,
    /// The daemon still ran at the end.
    pub daemon_alive: bool,
    /// Its warnings and errors (at most 20 lines).
    pub daemon_warnings: Vec<String>,
    /// The table over time.
    pub rows: Vec<Row>,
    /// /proc/loadavg at the start and the end (the machine is shared).
    pub loadavg: (String, String),
}

/// Runs the soak (needs root). `Err` only if the lab cannot be built or a
/// change is not applied; what the rules say is in the report.
pub fn run(plan: &Plan) -> Result<Report> {
    crate::require_root()?;
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ");
    let load_start = loadavg();
    let lab = EdgeLab::new("sk", plan.pool);
    let ca = TestCa::new();
    let any: [IpAddr; 2] = ["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
    // Held for the run; stopped on drop, before the lab.
    let _nginx: Vec<Nginx> = (1..=plan.pool)
        .map(|i| Nginx::start(&lab.workers[i - 1], &format!("w{i}"), &any, &ca, &[load::SNI]))
        .collect::<Result<_>>()?;
    let mut churn = Churn::new(plan.seed, plan.pool, plan.initial);
    let mut daemon = RunningDaemon::start(&lab.edge, "soak", &churn::config(churn.members()));
    let tls = Arc::new(tls_client(&ca));
    for vip in [V4(VIP_V4), V6(VIP_V6)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = Stream::try_open(&lab.client, vip) {
            anyhow::ensure!(Instant::now() < deadline, "{vip} does not answer: {e}\n{}", daemon.child.output_so_far());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let t0 = Instant::now();
    let end = t0 + plan.duration;
    let mut events = vec![Event { action: Action::Start, sent: t0, confirmed: t0, members: churn.members().clone() }];
    let (stop, live) = (AtomicBool::new(false), load::Live::default());
    let pid = daemon.child.pid();
    let (churned, mut conns, (opens, lives), samples) = std::thread::scope(|s| {
        let (client, edge, tls, stop, live) = (&lab.client, &lab.edge, &tls, &stop, &live);
        let new = s.spawn(move || load::new_connections(client, tls, plan, t0, end, stop, live));
        let streams = s.spawn(move || load::streams(client, plan, stop, live));
        let sampler = s.spawn(move || sample::run(edge, pid, t0, stop, live, plan.progress));
        // The changes, on this thread (it owns the daemon); the last one
        // an interval before the end.
        let churned = (|| -> Result<()> {
            for k in 1.. {
                let due = t0 + plan.churn_every * k;
                if due + plan.churn_every > end {
                    break;
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let action = churn.next_change();
                events.push(churn::apply(&mut daemon, action, churn.members())?);
            }
            if let Some(wait) = end.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        // A thread that panicked has printed why.
        (churned, new.join().expect("the load thread"), streams.join().expect("the stream threads"), sampler.join().expect("the sampler"))
    });
    churned?;
    let elapsed = t0.elapsed();
    let daemon_alive = daemon.child.try_status().is_none();
    let output = daemon.child.output_so_far();
    let daemon_warnings = output.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(20).map(str::to_owned).collect();
    conns.extend(opens);
    Ok(report(plan, t0, elapsed, &events, &conns, &lives, &samples, daemon_alive, daemon_warnings, (load_start, loadavg())))
}

/// Judges the records and sums them up.
#[allow(clippy::too_many_arguments)]
fn report(
    plan: &Plan,
    t0: Instant,
    elapsed: Duration,
    events: &[Event],
    conns: &[load::Conn],
    lives: &[load::Life],
    samples: &[Sample],
    daemon_alive: bool,
    daemon_warnings: Vec<String>,
    loadavg: (String, String),
) -> Report {
    let judged_conns = verdict::connections(conns, events, t0);
    let judged_streams = verdict::streams(lives, events, t0);
    let mut changes = BTreeMap::new();
    for e in &events[1..] {
        *changes.entry(e.action.to_string().split(' ').next().unwrap().to_owned()).or_insert(0) += 1;
    }
    let mut reloads: Vec<f64> = events[1..].iter().map(|e| (e.confirmed - e.sent).as_secs_f64() * 1e3).collect();
    reloads.sort_by(f64::total_cmp);
    let reload_ms = (reloads.get(reloads.len() / 2).copied().unwrap_or(0.0), reloads.last().copied().unwrap_or(0.0));
    let gauges: Vec<&sample::Gauges> = samples.iter().filter_map(|s| s.metrics.as_ref()).collect();
    let rss_mean = |from: Duration, to: Duration| -> u64 {
        let v: Vec<u64> = samples.iter().filter(|s| s.at >= from && s.at < to).filter_map(|s| s.rss_kib).collect();
        v.iter().sum::<u64>() / v.len().max(1) as u64
    };
    let drops = match (gauges.first(), gauges.last()) {
        (Some(a), Some(b)) => {
            b.drops.iter().map(|(k, v)| (k.clone(), v - a.drops.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
        }
        _ => BTreeMap::new(),
    };
    let stretch = plan.duration / 10;
    let rows = (0..10)
        .map(|i| {
            let (from, to) = (stretch * i, stretch * (i + 1));
            let within = |t: Instant| (from..to).contains(&t.duration_since(t0));
            let in_stretch: Vec<&Sample> = samples.iter().filter(|s| s.at >= from && s.at < to).collect();
            let max = |f: fn(&sample::Gauges) -> u64| in_stretch.iter().filter_map(|s| s.metrics.as_ref().map(f)).max().unwrap_or(0);
            Row {
                from,
                to,
                made: conns.iter().filter(|c| within(c.start) && c.answer.is_ok()).count() as u64,
                failed: conns.iter().filter(|c| within(c.start) && c.answer.is_err()).count() as u64,
                changes: events[1..].iter().filter(|e| within(e.sent)).count(),
                flows_max: max(|g| g.flows),
                nat_max: max(|g| g.nat),
                rss_kib: in_stretch.iter().rev().find_map(|s| s.rss_kib).unwrap_or(0),
            }
        })
        .collect();
    let flow_bound = plan.flow_bound();
    Report {
        plan: plan.clone(),
        elapsed,
        changes,
        reload_ms,
        flows_max: gauges.iter().map(|g| g.flows).max().unwrap_or(0),
        nat_max: gauges.iter().map(|g| g.nat).max().unwrap_or(0),
        flows_end: gauges.last().map_or(0, |g| g.flows),
        nat_end: gauges.last().map_or(0, |g| g.nat),
        flow_bound,
        nat_bound: flow_bound + judged_streams.on_removed as u64,
        rss_start_kib: rss_mean(plan.warm_up, plan.warm_up + plan.rss_window),
        rss_end_kib: rss_mean(elapsed.saturating_sub(plan.rss_window), elapsed + Duration::from_secs(1)),
        rss_max_kib: samples.iter().filter_map(|s| s.rss_kib).max().unwrap_or(0),
        drops,
        samples: samples.len(),
        scrapes_failed: samples.iter().filter(|s| s.metrics.is_none()).count(),
        daemon_alive,
        daemon_warnings,
        rows,
        loadavg,
        conns: judged_conns,
        streams: judged_streams,
    }
}

impl Report {
    /// New connections answered (short ones and stream opens).
    pub fn connections(&self) -> u64 {
        self.conns.answered.iter().sum()
    }

    /// Backend changes applied.
    pub fn change_count(&self) -> usize {
        self.changes.values().sum()
    }

    /// Everything that breaks a rule or a bound; empty when the soak passed.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                let shown: Vec<&str> = items.iter().take(10).map(String::as_str).collect();
                v.push(format!("{} {what}:\n    {}", items.len(), shown.join("\n    ")));
            }
        };
        list("new connections failed outside a removal", &self.conns.failed);
        list("new connections answered by a backend taking no new flows", &self.conns.wrong);
        list("streams the design keeps broke or moved", &self.streams.broken_kept);
        list("streams on a removed backend were answered by another", &self.streams.moved);
        list("requests were answered by a removed backend", &self.streams.answered_while_removed);
        if self.flows_max > self.flow_bound {
            v.push(format!("the flow table reached {} flows, over its bound of {}", self.flows_max, self.flow_bound));
        }
        if self.nat_max > self.nat_bound {
            v.push(format!("the NAT table reached {} entries, over its bound of {}", self.nat_max, self.nat_bound));
        }
        let growth = self.rss_end_kib.saturating_sub(self.rss_start_kib);
        if growth > self.plan.rss_growth_limit_kib {
            v.push(format!(
                "the agent's RSS grew {growth} KiB ({} → {} KiB), more than {} KiB",
                self.rss_start_kib, self.rss_end_kib, self.plan.rss_growth_limit_kib
            ));
        }
        // A soak that did not soak proves nothing.
        let planned = u64::from(self.plan.new_per_s) * self.plan.duration.as_secs();
        let short = self.conns.answered[0] + self.conns.answered[1];
        if short * 10 < planned * 7 {
            v.push(format!("only {short} of {planned} planned new connections were answered: the load fell short"));
        }
        if self.scrapes_failed * 10 > self.samples {
            v.push(format!("{} of {} metrics scrapes failed", self.scrapes_failed, self.samples));
        }
        if !self.daemon_alive {
            v.push("the daemon exited".into());
        }
        v
    }

    /// The report as markdown (`bench/results/soak.md`).
    pub fn markdown(&self) -> String {
        let p = &self.plan;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let mut md = String::new();
        let _ = writeln!(md, "# Soak: sustained load through backend churn\n");
        let _ = writeln!(
            md,
            "`cargo xtask soak --minutes {}` (`tests/src/soak/`): the e2e lab (client → edge → switch → {} workers running nginx), `swarmlb run` with an IPv4 and an IPv6 VIP in `nat` mode (tcp/80, tcp/443), {} workers in the set at the start. For {:.0} s: {} new connections a second (alternately IPv4 and IPv6; every {}th a verified TLS 1.3 handshake whose certificate names the worker, the others `GET /` answered `worker=wN`; the client closes first), and {} keep-alive streams asking every {} ms, each checking every answer comes from the worker that answered its first request (a stream that ends is replaced). Every {} s one backend change (seed {}: add, remove, drain = weight 0, undrain, reweight; at least two backends always take new flows), written to the config and applied with SIGHUP; its time is taken from the SIGHUP to the status showing it. Once a second the agent's metrics (flows, NAT entries, drops) and VmRSS. The machine is shared (load average {} at the start, {} at the end): timings are noisy, the counts are not.\n",
            p.duration.as_secs() / 60,
            p.pool,
            p.initial,
            self.elapsed.as_secs_f64(),
            p.new_per_s,
            p.tls_every,
            p.streams,
            p.stream_interval.as_millis(),
            p.churn_every.as_secs(),
            p.seed,
            self.loadavg.0,
            self.loadavg.1,
        );
        let violations = self.violations();
        let headline: Vec<&str> = violations.iter().filter_map(|v| v.lines().next()).collect();
        let _ = writeln!(md, "**{}**\n", if violations.is_empty() { "Passed: no rule broken, every bound held.".to_owned() } else { format!("Failed: {}", headline.join("; ")) });
        let _ = writeln!(md, "| | |\n| --- | ---: |");
        let [http, tls, opens] = self.conns.answered;
        let rows: Vec<(String, String)> = vec![
            ("new connections answered (HTTP / TLS / stream opens)".into(), format!("{} ({http} / {tls} / {opens})", self.connections())),
            ("new connections failed, in flight while a removal was applied (by design)".into(), self.conns.failed_by_design.to_string()),
            ("new connections failed otherwise".into(), self.conns.failed.len().to_string()),
            ("answered by a backend taking no new flows".into(), self.conns.wrong.len().to_string()),
            ("backend changes applied".into(), format!("{} ({})", self.change_count(), self.changes.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "))),
            ("SIGHUP → status shows it, median / max".into(), format!("{:.0} / {:.0} ms", self.reload_ms.0, self.reload_ms.1)),
            ("streams / requests answered on them".into(), format!("{} / {}", self.streams.lives, self.streams.requests)),
            ("streams the design keeps (backend never removed) / broken".into(), format!("{} / {}", self.streams.kept, self.streams.broken_kept.len())),
            ("streams on a backend that was removed / broken by the removal".into(), format!("{} / {}", self.streams.on_removed, self.streams.broken_by_removal)),
            ("requests answered by a removed backend".into(), self.streams.answered_while_removed.len().to_string()),
            ("flows: largest / at the end / bound".into(), format!("{} / {} / {}", self.flows_max, self.flows_end, self.flow_bound)),
            ("NAT entries: largest / at the end / bound".into(), format!("{} / {} / {}", self.nat_max, self.nat_end, self.nat_bound)),
            (
                format!("agent RSS: start (mean of {}–{} s) / end (last {} s) / largest", p.warm_up.as_secs(), (p.warm_up + p.rss_window).as_secs(), p.rss_window.as_secs()),
                format!("{:.2} / {:.2} / {:.2} MiB", mib(self.rss_start_kib), mib(self.rss_end_kib), mib(self.rss_max_kib)),
            ),
            ("balancer drops over the run".into(), if self.drops.is_empty() { "none".into() } else { self.drops.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ") }),
            ("metrics scrapes (failed)".into(), format!("{} ({})", self.samples, self.scrapes_failed)),
            ("daemon warnings and errors".into(), self.daemon_warnings.len().to_string()),
        ];
        for (k, v) in rows {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let _ = writeln!(md, "\n## Over time\n\n| s | connections answered | failed | changes | flows max | NAT max | agent RSS MiB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {:.0}–{:.0} | {} | {} | {} | {} | {} | {:.2} |",
                r.from.as_secs_f64(),
                r.to.as_secs_f64(),
                r.made,
                r.failed,
                r.changes,
                r.flows_max,
                r.nat_max,
                mib(r.rss_kib)
            );
        }
        let _ = writeln!(
            md,
            "\n## The rules checked\n\n- A stream whose backend stays in the set keeps it through every other change (adds, removals of others, weights, its own drain): it never breaks, never moves.\n- A removed backend's flows are placed again: a stream on it breaks at its next request, and no request sent after the removal took effect is answered before the backend is back.\n- A new connection is answered by a backend that takes new flows (in the set, weight > 0) during its life; it fails only if it was in flight while a removal was applied.\n- The flow table stays under {} flows: {} new connections/s × (tcp_closed_timeout_s {} s + the sweep interval {} s + 10 s) + 4 per stream; NAT entries under that plus one per stream a removal broke (its old entry waits for the backend's side to end).\n- The agent's RSS grows less than {} KiB from the start window to the end one.",
            self.flow_bound,
            p.new_per_s,
            TCP_CLOSED_TIMEOUT.as_secs(),
            SWEEP_INTERVAL.as_secs(),
            p.rss_growth_limit_kib
        );
        if !violations.is_empty() {
            let _ = writeln!(md, "\n## Violations\n\n```text\n{}\n```", violations.join("\n"));
        }
        if !self.daemon_warnings.is_empty() {
            let _ = writeln!(md, "\nThe daemon's warnings and errors:\n\n```text\n{}\n```", self.daemon_warnings.join("\n"));
        }
        md
    }
}
