//! A SYN flood from forged sources against each balancer, with legitimate
//! clients connecting throughout (issue 18): swarmlb `nat` and `dsr`
//! beside nftables (DNAT + masquerade through conntrack) and HAProxy (the
//! edge's own TCP stack, SYN cookies), in the e2e section's lab, one after
//! the other in the same run.
//!
//! Per subject: legitimate clients for a few seconds, then the flood at
//! the highest rate this machine sends for [`Plan::burst`], then a
//! sustained lower rate for [`Plan::sustained`], then a quiet
//! [`Plan::after`]. The legitimate clients start 20 connections a second
//! (TLS on 443, HTTP on 80, each 3 s to connect and 3 s to finish) and
//! keep-alive streams ask every 250 ms. It measures, it does not judge:
//! the suite's `tests/tests/flood.rs` holds swarmlb to ≤ 1% failed.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use harness::{
    edge_lab::{CLIENT_V4, VIP_V4},
    rtnl::{self, Next},
    flood::{
        self, costs,
        legit::{Clients, Phase, Target},
        Flood, Kind, Rate, Spec, Stretch,
    },
    stream::{Outcome, Streaming},
    tls::tls_client,
    topology::mac,
};

use crate::{
    e2e::{
        lab::{Lab, WORKERS},
        load::{self, Targets},
        modes::{self, Mode},
    },
    report::Section,
    Opts,
};

/// The subjects, in order.
const SUBJECTS: [Mode; 4] = [Mode::SwarmlbNat, Mode::SwarmlbDsr, Mode::NftDnatMasq, Mode::Haproxy];

/// Legitimate attempts per second and the time each step may take.
const LEGIT_PER_SECOND: u32 = 20;
const LEGIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep-alive streams.
const STREAMS: usize = 6;

/// How long each phase runs.
pub struct Plan {
    before: Duration,
    burst: Duration,
    sustained: Duration,
    sustained_rate: u64,
    after: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self { before: Duration::from_secs(2), burst: Duration::from_secs(3), sustained: Duration::from_secs(10), sustained_rate: 15_000, after: Duration::from_secs(5) }
        } else {
            Self { before: Duration::from_secs(3), burst: Duration::from_secs(5), sustained: Duration::from_secs(60), sustained_rate: 15_000, after: Duration::from_secs(10) }
        }
    }
}

/// One subject's figures.
struct Sample {
    burst: Stretch,
    sustained: Stretch,
    before: Phase,
    during: Phase,
    after: Phase,
    streams_kept: usize,
    streams: usize,
    costs: String,
    /// SYN cookies and listen drops of the edge's and the workers' stacks.
    kernel: String,
    /// Connection tracking (nftables): entries at the full rate's end, drops.
    conntrack: String,
    /// The 1-minute load average at the full rate's end.
    load: f64,
    warnings: Vec<String>,
}

/// The section (see the module docs).
pub fn run(opts: &Opts) -> Result<Section> {
    let plan = Plan::new(opts.quick);
    // Client addresses for the e2e modes are harmless here; the flood and
    // the clients use the client's own address.
    let lab = Lab::new(modes::ALL.len())?;
    route_forged_replies(&lab)?;
    let tls = Arc::new(tls_client(&lab.ca));
    let mut rows = Vec::new();
    for (i, mode) in SUBJECTS.iter().enumerate() {
        let turn = measure(&lab, &tls, &plan, *mode, i).map_err(|e| format!("{e:#}"));
        match &turn {
            Ok(s) => eprintln!(
                "  {:<26} flood {:.0}/s at the edge ({:.0}/s sent, load {:.1}), legitimate failed: before {}/{}, during {}/{}, after {}/{}; streams {}/{}; {} {} {}",
                mode.label(),
                s.burst.received_rate().unwrap_or(f64::NAN),
                s.burst.rate(),
                s.load,
                s.before.failed,
                s.before.attempts,
                s.during.failed,
                s.during.attempts,
                s.after.failed,
                s.after.attempts,
                s.streams_kept,
                s.streams,
                s.costs,
                s.kernel,
                s.conntrack
            ),
            Err(e) => eprintln!("  {:<26} failed: {e}", mode.label()),
        }
        rows.push((*mode, turn));
    }
    drop(lab);
    Ok(section(&plan, &rows))
}

/// The edge's default route leads back out of its outside leg (to the
/// client namespace, which drops what is not its own): the backends' and
/// the edge's answers to forged sources go where an internet edge sends
/// them, and a SYN to HAProxy gets its SYN-ACK (without a route, the
/// kernel would drop the SYN without answering). The client namespace has
/// a blackhole default route: nothing leaves the lab.
fn route_forged_replies(lab: &Lab) -> Result<()> {
    let (edge, client) = (&lab.lab.edge, &lab.lab.client);
    rtnl::route(edge, "default", Next::Gateway(IpAddr::V4(CLIENT_V4)))?;
    rtnl::route(client, "0.0.0.0/0", Next::Blackhole)?;
    Ok(())
}

fn measure(lab: &Lab, tls: &Arc<rustls::ClientConfig>, plan: &Plan, mode: Mode, i: usize) -> Result<Sample> {
    modes::check_clean(lab)?;
    let installed = mode.install(lab, &format!("fl{i}"))?;
    let (client, edge) = (&lab.lab.client, &lab.lab.edge);
    let http = Targets { srcs: mode.srcs(i), dsts: mode.dsts(80) };
    load::warm_up(client, &http, WORKERS, Duration::from_secs(5))?;
    let vip = |p| SocketAddr::new(IpAddr::V4(VIP_V4), p);
    let targets = vec![Target::Tls { addr: vip(443), sni: "a.com".into() }, Target::Http { addr: vip(80) }];
    let streams = Streaming::open(client, IpAddr::V4(VIP_V4), STREAMS, Duration::from_millis(250));
    let stacks: Vec<&harness::Netns> = std::iter::once(&lab.lab.edge).chain(&lab.lab.workers).collect();
    let before = costs::Snapshot::of(&installed.status().unwrap_or_default());
    let kernel_before = costs::kernel(&stacks);
    let ct_before = conntrack_stats(&lab.lab.edge);
    let log_mark = installed.log().len();
    let clients = Clients::start(client, targets, LEGIT_PER_SECOND, LEGIT_TIMEOUT, Some(tls.clone()));
    std::thread::sleep(plan.before);
    clients.mark("burst");
    let spec = Spec {
        ns: client.clone(),
        ifname: "c-out".into(),
        macs: (mac(client, "c-out")?, mac(edge, "e-out")?),
        dsts: vec![IpAddr::V4(VIP_V4)],
        ports: vec![443, 80],
        kind: Kind::Syn,
        seed: 0x5eed + i as u64,
    };
    let f = Flood::start(spec, Rate::Max).context("the flood")?;
    let rx = Some((edge, "e-out"));
    let burst = flood::stretch(&f, Rate::Max, plan.burst, rx);
    let load = costs::loadavg();
    let ct_count = edge.exec(&["conntrack", "-C"]).map(|s| s.trim().to_owned()).unwrap_or_default();
    clients.mark("sustained");
    let sustained = flood::stretch(&f, Rate::PerSecond(plan.sustained_rate), plan.sustained, rx);
    f.stop()?;
    let flooded = costs::Snapshot::of(&installed.status().unwrap_or_default());
    let kernel = costs::kernel_line(&kernel_before, &costs::kernel(&stacks));
    let ct_after = conntrack_stats(&lab.lab.edge);
    let conntrack = if mode == Mode::NftDnatMasq {
        let rises: Vec<String> =
            ct_after.iter().filter(|(k, v)| **v > ct_before.get(*k).copied().unwrap_or(0)).map(|(k, v)| format!("{k} +{}", v - ct_before.get(k).copied().unwrap_or(0))).collect();
        format!("{ct_count} entries at the full rate's end; {}", if rises.is_empty() { "no drops".into() } else { rises.join(", ") })
    } else {
        String::new()
    };
    clients.mark("after");
    std::thread::sleep(plan.after);
    let results = clients.stop();
    let ended = streams.stop();
    let warnings = installed.log().get(log_mark..).unwrap_or("").lines().filter(|l| l.contains("WARN")).map(str::to_owned).collect();
    let costs = if flooded.counters.is_empty() { String::new() } else { costs::line(&before, &flooded) };
    Ok(Sample {
        burst,
        sustained,
        before: results.phases("before", &["start"]),
        during: results.phases("during", &["burst", "sustained"]),
        after: results.phases("after", &["after"]),
        streams_kept: ended.iter().filter(|e| e.outcome == Outcome::Alive).count(),
        streams: ended.len(),
        costs,
        kernel,
        conntrack,
        load,
        warnings,
    })
}

/// `conntrack -S`'s drop counters (summed over CPUs) in `ns`.
fn conntrack_stats(ns: &harness::Netns) -> std::collections::BTreeMap<String, u64> {
    let mut sums = std::collections::BTreeMap::new();
    for line in ns.exec(&["conntrack", "-S"]).unwrap_or_default().lines() {
        for field in line.split_whitespace() {
            if let Some((k, v)) = field.split_once('=') {
                if ["insert_failed", "drop", "early_drop"].contains(&k) {
                    *sums.entry(k.to_owned()).or_default() += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    sums
}

fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "—".into()
    }
}

fn failed(p: &Phase) -> String {
    format!("{} of {} ({:.1}%)", p.failed, p.attempts, 100.0 * p.failed_share())
}

fn section(plan: &Plan, rows: &[(Mode, std::result::Result<Sample, String>)]) -> Section {
    let mut md = format!(
        "The e2e section's lab (client → edge → switch → three nginx workers). Per subject, one after the other: legitimate clients for {:.0} s, \
         then a **SYN flood** from random forged IPv4 sources and ports (plausible internet hosts, none of the special-use ranges) to the VIP's ports \
         443 and 80, sent from the client namespace on the outside segment with `sendmmsg` on an AF_PACKET socket that bypasses the qdisc: \
         **{:.0} s at the highest rate** one thread sends here, then **{:.0} s at {} SYNs/s**, then {:.0} s without flood. Throughout, \
         {LEGIT_PER_SECOND} new legitimate connections a second (alternately a TLS 1.3 handshake on 443 and an HTTP GET on 80; {:.0} s to connect, \
         i.e. one SYN retransmission, and {:.0} s to finish) and {STREAMS} keep-alive streams asking every 250 ms. The edge's default route \
         leads back out of its outside leg (as an internet edge's does), so the answers to forged sources are sent, and dropped by the client \
         namespace.\n\n\
         Subjects: **swarmlb** `nat` and `dsr` (the real agent; `swarmlb backend-setup` on the workers for `dsr`), **nftables DNAT + masquerade** \
         (prerouting jhash DNAT, postrouting masquerade to the edge's inside address; conntrack), **HAProxy** in TCP mode (the edge's kernel \
         answers the SYNs: SYN cookies once its backlog is full).\n\n",
        plan.before.as_secs_f64(),
        plan.burst.as_secs_f64(),
        plan.sustained.as_secs_f64(),
        plan.sustained_rate,
        plan.after.as_secs_f64(),
        LEGIT_TIMEOUT.as_secs_f64(),
        LEGIT_TIMEOUT.as_secs_f64(),
    );
    md += "## Legitimate clients\n\n| subject | failed before | **failed during the flood** | **failed after** | connect p50 / p99 during (ms) | connect p50 / p99 after (ms) | streams kept |\n| --- | --- | --- | --- | --- | --- | --- |\n";
    for (mode, r) in rows {
        match r {
            Ok(s) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} / {} | {} / {} | {} of {} |",
                    mode.label(),
                    failed(&s.before),
                    failed(&s.during),
                    failed(&s.after),
                    ms(s.during.connect_p50_ms),
                    ms(s.during.connect_p99_ms),
                    ms(s.after.connect_p50_ms),
                    ms(s.after.connect_p99_ms),
                    s.streams_kept,
                    s.streams
                );
            }
            Err(e) => {
                let _ = writeln!(md, "| {} | could not be measured: {} | | | | | |", mode.label(), e.replace('|', "/").replace('\n', " "));
            }
        }
    }
    md += "\n## The flood\n\n*sent*: frames `sendmmsg` took; *at the edge*: frames the edge's outside interface received in the same time; *load*: the machine's 1-minute load average at the full rate's end (2 cores, shared with other work: a high load means a lower rate). *TCP stacks*: SYN cookies and listen-queue drops of the edge's and the workers' kernels during the flood (HAProxy: the edge answers; the balancers: the workers do).\n\n| subject | full rate sent/s | full rate at the edge/s | sustained sent/s | sustained at the edge/s | load | TCP stacks |\n| --- | --- | --- | --- | --- | --- | --- |\n";
    for (mode, r) in rows {
        if let Ok(s) = r {
            let at = |x: &Stretch| x.received_rate().map_or("?".into(), |v| format!("{v:.0}"));
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {:.0} | {} | {:.1} | {} |",
                mode.label(),
                s.burst.rate(),
                at(&s.burst),
                s.sustained.rate(),
                at(&s.sustained),
                s.load,
                s.kernel
            );
        }
    }
    md += "\n## What it cost swarmlb, and what the agent said\n\nCounter rises over the flood (by name; *absent*: not a counter of the measured build).\n\n";
    for (mode, r) in rows {
        let Ok(s) = r else { continue };
        if s.costs.is_empty() {
            continue;
        }
        let _ = writeln!(md, "- **{}**: {}", mode.label(), s.costs);
        if s.warnings.is_empty() {
            let _ = writeln!(md, "  - no warning logged during the flood");
        }
        for w in s.warnings.iter().take(4) {
            let w = w.split_once("WARN").map_or(w.as_str(), |(_, rest)| rest).trim();
            let _ = writeln!(md, "  - warning: `{}`", w.chars().take(240).collect::<String>());
        }
    }
    for (mode, r) in rows {
        if let Ok(s) = r {
            if !s.conntrack.is_empty() {
                let _ = writeln!(md, "- **{}** (conntrack): {}", mode.label(), s.conntrack);
            }
        }
    }
    md += "\nFailures by cause:\n\n";
    for (mode, r) in rows {
        let Ok(s) = r else { continue };
        for p in [&s.during, &s.after] {
            for (e, k) in &p.errors {
                let _ = writeln!(md, "- {} {}: {k} × {e}", mode.label(), p.name);
            }
        }
    }
    Section { name: "flood", title: "SYN flood from forged sources: swarmlb beside nftables and HAProxy".into(), markdown: md, charts: Vec::new() }
}
