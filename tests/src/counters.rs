//! The kernel's SNMP counters of a namespace, named as `nstat` names them
//! (`UdpNoPorts`, `TcpExtListenDrops`, `IpReasmOKs`, `Ip6InReceives`,
//! `Udp6InDatagrams`, ...). They show whether a packet reached a namespace's
//! stack at all, which a missing answer alone cannot tell.
//!
//! Read straight from `/proc/thread-self/net/{snmp,netstat,snmp6}` on a
//! thread inside the namespace: no process to spawn, and no `nstat`
//! history file shared between tests. (`/proc/self/net` would show the
//! main thread's namespace, not the calling thread's.)

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::Netns;

/// All counters of `ns` (absolute values since the namespace was created).
/// Negative values (`TcpMaxConn` is -1) are left out.
pub fn nstat(ns: &Netns) -> Result<HashMap<String, u64>> {
    let texts = ns.run(|| -> Result<Vec<String>> {
        ["snmp", "netstat", "snmp6"]
            .iter()
            .map(|f| {
                let path = format!("/proc/thread-self/net/{f}");
                std::fs::read_to_string(&path).with_context(|| format!("read {path}"))
            })
            .collect()
    })?;
    let mut out = HashMap::new();
    parse_tables(&texts[0], &mut out);
    parse_tables(&texts[1], &mut out);
    parse_snmp6(&texts[2], &mut out);
    Ok(out)
}

/// The difference `after - before` for every counter that changed (for
/// "did this packet arrive" checks around an action).
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// `snmp` / `netstat` format: pairs of lines `Tcp: Name1 Name2` /
/// `Tcp: 1 2`, named `Tcp` + `Name1` as nstat does.
fn parse_tables(text: &str, out: &mut HashMap<String, u64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks_exact(2) {
        let (Some((prefix, names)), Some((_, values))) = (pair[0].split_once(':'), pair[1].split_once(':')) else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<u64>() {
                out.insert(format!("{prefix}{name}"), v);
            }
        }
    }
}

/// `snmp6` format: `Name value` per line, names already prefixed.
fn parse_snmp6(text: &str, out: &mut HashMap<String, u64>) {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(name), Some(value)) = (it.next(), it.next()) {
            if let Ok(v) = value.parse::<u64>() {
                out.insert(name.to_owned(), v);
            }
        }
    }
}
