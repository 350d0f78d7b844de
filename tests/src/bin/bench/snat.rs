//! How many new `nat` connections a second one backend port sustains
//! before SNAT ports run out (issue 12, item 4), measured with the real
//! agent against the arithmetic of `docs/balancer.md` ("The arithmetic").
//!
//! A client → edge → one nginx worker, swarmlb `nat` on the edge with a
//! deliberately small SNAT space ([`PORTS`] ports, `tcp_time_wait_timeout_s`
//! = [`TIME_WAIT_S`]) so the ceiling is reached in seconds. A paced client
//! ([`pace`]) opens new connections to the VIP's port 80 at a stepped
//! rate, past the first `drop_snat_exhausted`, until a step carries less
//! than 0.9× its rate (SNAT saturated) or the client cannot keep up.
//! Three row sets, each on a fresh agent: (a) the client closes first
//! (the port comes back at the close: no SNAT ceiling), (b) nginx closes
//! first (the port waits `T`: ceiling `P / T`), (c) as (b) with a second
//! SNAT address (`P` doubles, and so should the ceiling).

mod pace;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result};
use harness::{
    config::{EdgeConfig, Vip},
    daemon::RunningDaemon,
    edge_lab::{worker_addrs, EdgeLab, CLIENT_V4, VIP_V4},
    flood::costs::{self, Snapshot},
    nginx::Nginx,
    tls::TestCa,
};
use pace::{Close, Tally};

use crate::{
    e2e::load::{self, Targets},
    report::Section,
    Opts,
};

/// SNAT ports per address (`snat_ports` = 20000–20511).
const PORTS: u32 = 512;
/// `tcp_time_wait_timeout_s`.
const TIME_WAIT_S: u32 = 5;
/// How often the agent sweeps NAT entries (lb-user's
/// `HOUSEKEEPING_INTERVAL`): a TIME_WAIT entry goes between `T` and
/// `T` + this after its close, `T` + half of it on average.
const SWEEP_S: f64 = 5.0;
/// The second SNAT address of row set (c), added to the edge's inside leg.
const EXTRA_SNAT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

/// One row set: who closes, how many SNAT addresses, the rate ladder.
struct RowSet {
    label: &'static str,
    close: Close,
    addresses: u32,
    /// Offered rates, lowest first; the set stops at the first step that
    /// completes less than 0.9× its rate (SNAT saturated, or the client's
    /// own limit).
    rates: Vec<f64>,
    step: Duration,
}

impl RowSet {
    /// `P`: SNAT slots per backend port.
    fn slots(&self) -> u32 {
        PORTS * self.addresses
    }

    /// `P / T`, the documented ceiling (none when the client closes first).
    fn predicted(&self) -> Option<f64> {
        (self.close == Close::BackendFirst).then(|| f64::from(self.slots()) / f64::from(TIME_WAIT_S))
    }
}

/// The rates `from`, `from × factor`, … up to `to`, rounded.
fn ladder(from: f64, factor: f64, to: f64) -> Vec<f64> {
    std::iter::successors(Some(from), |r| Some(r * factor)).take_while(|r| *r <= to * 1.001).map(f64::round).collect()
}

fn plan(quick: bool) -> Vec<RowSet> {
    // A backend-first step lasts T plus the sweep interval, so the SNAT
    // table reaches its steady state inside the step (a shorter one would
    // end before the earlier closes' ports are due back, and overstate
    // the ceiling). Client-first ports come back in milliseconds.
    let (client_step, backend_step) = if quick { (2, 6) } else { (3, 10) };
    let fine = if quick { 2.0 } else { std::f64::consts::SQRT_2 };
    let mut sets = vec![
        RowSet { label: "(a) client closes first", close: Close::ClientFirst, addresses: 1, rates: ladder(25.0, 2.0, 12_800.0), step: Duration::from_secs(client_step) },
        RowSet { label: "(b) backend closes first", close: Close::BackendFirst, addresses: 1, rates: ladder(25.0, fine, 800.0), step: Duration::from_secs(backend_step) },
        RowSet { label: "(c) backend closes first, 2 SNAT addresses", close: Close::BackendFirst, addresses: 2, rates: ladder(50.0, fine, 1600.0), step: Duration::from_secs(backend_step) },
    ];
    if quick {
        sets[0].rates = ladder(100.0, 4.0, 6400.0);
    }
    sets
}

/// One step's figures.
struct Step {
    offered: f64,
    tally: Tally,
    snat_drops: u64,
    freed: u64,
    /// NAT entries at the step's end.
    entries: Option<u64>,
    /// The other `drop_*` counters that rose, `name n`: whether failures
    /// with no SNAT drop were refused by swarmlb at all.
    other: String,
}

/// The section (see the module docs).
pub fn run(opts: &Opts) -> Result<Section> {
    let lab = Lab::new()?;
    let mut results = Vec::new();
    for set in plan(opts.quick) {
        eprintln!("  {}: P = {} slots, T = {TIME_WAIT_S} s", set.label, set.slots());
        let r = measure(&lab, &set).map_err(|e| format!("{e:#}"));
        if let Err(e) = &r {
            eprintln!("  {} failed: {e}", set.label);
        }
        results.push((set, r));
    }
    drop(lab);
    Ok(section(opts, &results))
}

/// The network: the e2e lab's client and edge with one worker running
/// nginx. Field order is drop order: nginx before the namespaces.
struct Lab {
    _nginx: Nginx,
    _ca: TestCa,
    lab: EdgeLab,
}

impl Lab {
    fn new() -> Result<Self> {
        let lab = EdgeLab::new("bs", 1);
        // Thousands of client-first closes a second leave as many
        // TIME_WAIT sockets on the client: every port, reused.
        lab.client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        lab.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        lab.workers[0].sysctl("net.core.somaxconn", "4096")?;
        let ca = TestCa::new();
        let nginx = Nginx::start(&lab.workers[0], "w1", &[std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED)], &ca, &["a.com"])?;
        Ok(Self { _nginx: nginx, _ca: ca, lab })
    }
}

/// The agent's config: one VIP, one backend port, the small SNAT space.
fn config(addresses: u32) -> String {
    let extra = if addresses > 1 { format!("snat_addresses = [\"{EXTRA_SNAT}\"]") } else { String::new() };
    EdgeConfig::balancer()
        .balancer_line(&format!("snat_ports = \"20000-{}\"", 20_000 + PORTS - 1))
        .balancer_line(&extra)
        .balancer_line(&format!("tcp_time_wait_timeout_s = {TIME_WAIT_S}"))
        .vip(Vip::new("web", IpAddr::V4(VIP_V4), &["tcp/80"]).mode("nat").backends([IpAddr::V4(worker_addrs(1).0)]))
        .to_toml()
}

/// The edge's second SNAT address for the row set's life (the agent
/// refuses one its inside interface lacks).
struct ExtraAddress<'a>(&'a EdgeLab);

impl<'a> ExtraAddress<'a> {
    fn add(lab: &'a EdgeLab) -> Result<Self> {
        harness::rtnl::addr(&lab.edge, "e-in", &format!("{EXTRA_SNAT}/24"))?;
        Ok(Self(lab))
    }
}

impl Drop for ExtraAddress<'_> {
    fn drop(&mut self) {
        let _ = harness::rtnl::addr_del(&self.0.edge, "e-in", &format!("{EXTRA_SNAT}/24"));
    }
}

fn measure(lab: &Lab, set: &RowSet) -> Result<Vec<Step>> {
    let l = &lab.lab;
    // Drop order: the agent before the address it uses.
    let _extra = if set.addresses > 1 { Some(ExtraAddress::add(l)?) } else { None };
    let agent = RunningDaemon::start(&l.edge, &format!("snat{}", set.addresses), &config(set.addresses));
    let vip = SocketAddrV4::new(VIP_V4, 80);
    // Client-first closes: their ports are back before the steps start.
    load::warm_up(&l.client, &Targets { srcs: vec![CLIENT_V4], dsts: vec![vip] }, 1, Duration::from_secs(5)).context("warm-up through the VIP")?;
    let mut steps = Vec::new();
    for &rate in &set.rates {
        let before = Snapshot::of(&agent.inst.status());
        let tally = pace::paced(&l.client, CLIENT_V4, vip, set.close, rate, set.step);
        let after = Snapshot::of(&agent.inst.status());
        let rise = |name: &str| costs::rise(&before, &after, name).unwrap_or(0);
        let other: Vec<String> = after
            .counters
            .keys()
            .filter(|k| k.starts_with("drop_") && *k != "drop_snat_exhausted")
            .filter_map(|k| {
                let n = rise(k);
                (n > 0).then(|| format!("{k} {n}"))
            })
            .collect();
        let step = Step { offered: rate, tally, snat_drops: rise("drop_snat_exhausted"), freed: rise("nat_port_freed"), entries: after.nat_entries, other: other.join(", ") };
        eprintln!(
            "    offered {:>6.0}/s achieved {:>7.1}/s  failed {:>4} retried {:>4}  drop_snat_exhausted {:>5} nat_port_freed {:>6} NAT entries {} {}",
            step.offered,
            step.tally.achieved(),
            step.tally.failed,
            step.tally.retried,
            step.snat_drops,
            step.freed,
            step.entries.map_or("?".into(), |n| n.to_string()),
            step.other
        );
        // Past the first drops on to saturation: the first drop says
        // where the probe first misses, the saturated step what the SNAT
        // space carries at most.
        let saturated = step.tally.achieved() < 0.9 * rate;
        steps.push(step);
        if saturated {
            break;
        }
    }
    Ok(steps)
}

/// The highest step without SNAT drops and the first with them.
fn bounds(steps: &[Step]) -> (Option<&Step>, Option<&Step>) {
    let first = steps.iter().position(|s| s.snat_drops > 0);
    let clean = steps[..first.unwrap_or(steps.len())].last();
    (clean, first.map(|i| &steps[i]))
}

fn section(opts: &Opts, results: &[(RowSet, std::result::Result<Vec<Step>, String>)]) -> Section {
    let mut md = format!(
        "How many new connections a second swarmlb `nat` sustains to **one backend port** before its SNAT ports run out \
         (`docs/balancer.md`, \"The arithmetic\"). A client → the edge running the real `swarmlb` agent → one nginx worker \
         (port 80), with a deliberately small SNAT space so the ceiling comes in seconds: **`snat_ports` = {PORTS} ports** \
         per address, **`tcp_time_wait_timeout_s` = {TIME_WAIT_S}** (`T`). One client address opens new connections to the \
         VIP at a paced rate (each at its time, at most {} in flight; a connection whose time falls after the step is not started), \
         one HTTP request each, stepping the rate up past the first `drop_snat_exhausted` until a step completes less than 0.9× the \
         offered rate (SNAT saturated, or this 2-core machine's own limit). Each row set starts a fresh agent. A backend-first step lasts \
         `T` + the agent's {SWEEP_S:.0} s sweep interval so the SNAT table reaches its steady state within it.\n\n\
         - **(a) client closes first**: a keep-alive request, then the client closes; nginx (LAST_ACK) is done at the \
         client's last ACK, which frees the SNAT port. Predicted: no SNAT ceiling.\n\
         - **(b) backend closes first**: `Connection: close`; nginx closes and holds TIME_WAIT, so the port waits `T`. \
         Predicted ceiling `P / T` (`P` = ports × addresses).\n\
         - **(c)** as (b) with a second address in `snat_addresses` (added to the edge's `e-in`): `P` doubles.\n\n\
         Per step: *achieved*: connections completed per second; *failed*: connect or request failed (2 s timeouts); \
         *retried*: completed after a SYN retransmission (a dropped first SYN costs the client a second); \
         counters are the agent's rises over the step (`swarmlb status --json`); *NAT entries*: at the step's end; \
         *other drops*: swarmlb's other drop counters that rose.\n\n",
        pace::THREADS
    );
    if opts.quick {
        md += "*Quick run: fewer, shorter steps.*\n\n";
    }
    md += "## Summary\n\n| close order | P (slots) | predicted P / T | P / (T + sweep/2) | highest step with 0 SNAT drops | first step with drops | **most carried with drops** (the measured ceiling) |\n| --- | ---: | ---: | ---: | --- | --- | ---: |\n";
    for (set, r) in results {
        let predicted = set.predicted().map_or("none".into(), |p| format!("{p:.0}/s"));
        let swept = set.predicted().map_or("none".into(), |_| format!("{:.0}/s", f64::from(set.slots()) / (f64::from(TIME_WAIT_S) + SWEEP_S / 2.0)));
        let (clean, first, carried) = match r {
            Ok(steps) => {
                let (clean, first) = bounds(steps);
                let clean = clean.map_or("—".into(), |s| format!("{:.0}/s offered, {:.0}/s achieved", s.offered, s.tally.achieved()));
                let first = match (first, steps.last()) {
                    (Some(s), _) => format!("{:.0}/s offered ({} drops)", s.offered, s.snat_drops),
                    (None, Some(last)) if last.tally.achieved() < 0.9 * last.offered => format!("none: the client's own limit at {:.0}/s offered", last.offered),
                    (None, Some(last)) => format!("none up to the last step ({:.0}/s)", last.offered),
                    (None, None) => "no step".into(),
                };
                // The most any step with SNAT drops completed: with the
                // SNAT space the limit, what it lets through.
                let carried = steps.iter().filter(|s| s.snat_drops > 0).map(|s| s.tally.achieved()).fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
                let carried = carried.map_or("—".into(), |c| format!("{c:.0}/s"));
                (clean, first, carried)
            }
            Err(e) => (format!("not measured: {}", e.replace('|', "/").replace('\n', " ")), String::new(), String::new()),
        };
        let _ = writeln!(md, "| {} | {} | {predicted} | {swept} | {clean} | {first} | {carried} |", set.label, set.slots());
    }
    md += "\n*Most carried with drops*: the highest completed rate of a step with SNAT drops (refused SYNs retried by the client included): what the SNAT space lets through once it is the limit. \
           *P / (T + sweep/2)*: the agent's sweep (every 5 s) removes a TIME_WAIT entry between `T` and `T` + 5 s after the close, \
           so at this small `T` a port is held `T` + 2.5 s on average (at the default `T` = 120 s the difference is 2%).\n";
    for (set, r) in results {
        let Ok(steps) = r else { continue };
        let _ = write!(
            md,
            "\n## {}\n\n{} s per step.\n\n| offered/s | achieved/s | started | failed | retried | `drop_snat_exhausted` | `nat_port_freed` | NAT entries | other drops |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
            set.label,
            set.step.as_secs()
        );
        for s in steps {
            let _ = writeln!(
                md,
                "| {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                s.offered,
                s.tally.achieved(),
                s.tally.started,
                s.tally.failed,
                s.tally.retried,
                s.snat_drops,
                s.freed,
                s.entries.map_or("?".into(), |n| n.to_string()),
                if s.other.is_empty() { "none" } else { &s.other }
            );
        }
    }
    Section { name: "snat", title: "SNAT ceiling: new nat connections a second to one backend port".into(), markdown: md, charts: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders_double_or_step_by_root_two() {
        assert_eq!(ladder(25.0, 2.0, 200.0), vec![25.0, 50.0, 100.0, 200.0]);
        assert_eq!(ladder(25.0, std::f64::consts::SQRT_2, 100.0), vec![25.0, 35.0, 50.0, 71.0, 100.0]);
    }
}
