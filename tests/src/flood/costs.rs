//! What a flood cost the balancer, from `swarmlb status --json`: its
//! counters by name, before and after. Counters are looked up by name so
//! that a binary without some of them (an older one, or a newer one that
//! renamed them) is reported, not failed: "absent".

use std::fmt::Write as _;

use serde_json::Value;

/// The counters a flood report names first, whether or not they exist in
/// this build: new flows, what proved a peer real, what a flood was
/// allowed to take back, and the refusals.
pub const WATCHED: [&str; 6] =
    ["new_flow", "flow_proven", "half_open_reclaimed", "drop_snat_exhausted", "drop_nat_table_full", "flow_refound"];

/// One status' counters and table fill.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// `balancer` counters by name.
    pub counters: serde_json::Map<String, Value>,
    /// NAT entries held.
    pub nat_entries: Option<u64>,
}

impl Snapshot {
    /// From a `swarmlb status --json` value.
    pub fn of(status: &Value) -> Self {
        Self {
            counters: status["balancer"].as_object().cloned().unwrap_or_default(),
            nat_entries: status["nat_entries"].as_u64(),
        }
    }

    /// A counter's value, `None` when this build has no such counter.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters.get(name).and_then(Value::as_u64)
    }
}

/// The rise of `name` from `before` to `after` (`None`: absent).
pub fn rise(before: &Snapshot, after: &Snapshot, name: &str) -> Option<u64> {
    Some(after.get(name)?.saturating_sub(before.get(name).unwrap_or(0)))
}

/// A report: the [`WATCHED`] counters' rises (or "absent"), every other
/// counter that rose, and the NAT table's fill.
pub fn report(before: &Snapshot, after: &Snapshot) -> String {
    let mut s = String::new();
    for name in WATCHED {
        match rise(before, after, name) {
            Some(n) => {
                let _ = writeln!(s, "  {name:<22} +{n}");
            }
            None => {
                let _ = writeln!(s, "  {name:<22} absent (not a counter of this build)");
            }
        }
    }
    let mut others: Vec<(&String, u64)> = after
        .counters
        .keys()
        .filter(|k| !WATCHED.contains(&k.as_str()))
        .filter_map(|k| Some((k, rise(before, after, k)?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    others.sort();
    for (k, n) in others {
        let _ = writeln!(s, "  {k:<22} +{n}");
    }
    if let Some(n) = after.nat_entries {
        let _ = writeln!(s, "  nat entries now        {n}");
    }
    s
}

/// The rises as one line (`new_flow +N, …, flow_proven absent`).
pub fn line(before: &Snapshot, after: &Snapshot) -> String {
    WATCHED
        .iter()
        .map(|n| match rise(before, after, n) {
            Some(v) => format!("{n} +{v}"),
            None => format!("{n} absent"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kernel's counters of what a SYN flood costs a TCP stack (the
/// edge's for a proxy, the backends' behind a balancer): SYN cookies sent,
/// validated and refused, listen queue overflows.
pub const KERNEL: [&str; 5] =
    ["TcpExtSyncookiesSent", "TcpExtSyncookiesRecv", "TcpExtSyncookiesFailed", "TcpExtListenOverflows", "TcpExtListenDrops"];

/// [`KERNEL`] summed over `namespaces` (absent counters read 0).
pub fn kernel(namespaces: &[&crate::Netns]) -> Vec<u64> {
    let mut sums = vec![0; KERNEL.len()];
    for ns in namespaces {
        let Ok(c) = crate::nstat(ns) else { continue };
        for (i, k) in KERNEL.iter().enumerate() {
            sums[i] += c.get(*k).copied().unwrap_or(0);
        }
    }
    sums
}

/// The rises of [`KERNEL`] from `before` to `after`, the non-zero ones
/// as `SyncookiesSent +N, …` (`TcpExt` left out), or `none`.
pub fn kernel_line(before: &[u64], after: &[u64]) -> String {
    let parts: Vec<String> = KERNEL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a > b)
        .map(|(k, (b, a))| format!("{} +{}", k.trim_start_matches("TcpExt"), a - b))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The 1-minute load average (`/proc/loadavg`): how busy the shared
/// machine was, beside the rates measured on it.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}
