//! `swarmlb status`: what the running daemon attached, and what the kernel
//! counted — as a table (in the spirit of `ipvsadm -Ln --stats`) or JSON.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use lb_common::{
    balancer::LbCounter,
    isolator::{DropReason, PassReason, PortStats, PortStatsKey, Verdict},
};
use serde::Serialize;

use crate::{
    datapath::balancer_writer::AppliedVip,
    datapath::maps::{BalancerMaps, IsolatorMaps},
    observe::state::{port_ranges, AgentStatus, DaemonState, ZoneState},
};

/// Everything `swarmlb status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub pid: u32,
    pub daemon_running: bool,
    pub pin_path: String,
    pub interfaces: Vec<InterfaceStatus>,
    pub zones: Vec<ZoneState>,
    /// Packets by pass reason.
    pub passed: BTreeMap<&'static str, u64>,
    /// Packets by drop reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Traffic to protected ports.
    pub ports: Vec<PortStatus>,
    /// The balancer's VIPs with their traffic.
    pub vips: Vec<VipStatus>,
    /// The balancer's counters by name.
    pub balancer: BTreeMap<&'static str, u64>,
    /// Flows remembered, and NAT entries held.
    pub flows: usize,
    pub nat_entries: usize,
    /// What the flow and NAT tables hold at most (`flow_table_size`,
    /// `nat_table_size`).
    pub flow_capacity: u32,
    pub nat_capacity: u32,
    /// SNAT ports each (backend, port) may use (`snat_ports`).
    pub snat_ports: u32,
    /// SNAT ports in use per (backend, backend port) that has any.
    pub snat_usage: Vec<SnatUsage>,
    /// How the sync with the Swarm is going (`None` without `[swarm]`).
    pub swarm: Option<crate::source::swarm::follow::SwarmSync>,
    /// The agent: start, adoption, config reloads, pins.
    pub agent: AgentStatus,
    /// What this edge announces, and BIRD's sessions (`None` without `[bgp]`).
    pub bgp: Option<BgpStatus>,
}

/// `[bgp]`: the VIPs announced, and what BIRD says of its protocols
/// (asked by `swarmlb status` only, not by the metrics endpoint).
#[derive(Debug, Serialize)]
pub struct BgpStatus {
    pub table: u32,
    pub birdc_socket: std::path::PathBuf,
    pub announced: Vec<std::net::IpAddr>,
    pub bird: Vec<crate::announce::bird::Protocol>,
    /// Why BIRD could not be asked.
    pub bird_error: Option<String>,
}

/// One VIP: its rules and backends with their traffic.
#[derive(Debug, Serialize)]
pub struct VipStatus {
    pub name: String,
    pub address: String,
    pub mode: String,
    pub rules: Vec<RuleStatus>,
    pub backends: Vec<BackendStatus>,
    /// Its firewall rules with the packets each dropped (empty: no rules).
    pub firewall: Vec<FirewallStatus>,
}

/// One firewall rule of a VIP and the packets it dropped. The VIP's
/// sources outside its `allow` list are counted on a rule of their own,
/// action `not_allowed`, prefix `*`.
#[derive(Debug, Serialize)]
pub struct FirewallStatus {
    /// `allow`, `deny` or `not_allowed`.
    pub action: String,
    pub prefix: String,
    /// Packets dropped (always 0 for `allow`, which drops nothing).
    pub drops: u64,
}

/// One forwarding rule's traffic (client to backend direction).
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub rule: String,
    /// The PROXY protocol header its new connections get (`"v1"`,
    /// `"v2"`), if any.
    pub proxy_protocol: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// One backend's traffic (over all VIPs that use it).
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub address: String,
    pub weight: u32,
    pub up: bool,
    /// Maglev slots it holds in this VIP's table.
    pub slots: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Times its health checks took it out or brought it back (this VIP).
    pub health_transitions: u64,
    /// Its last transition (added, down, draining, …): when and why.
    pub last_change: Option<crate::observe::changes::Transition>,
}

fn vip_status(maps: &BalancerMaps, v: &AppliedVip, state: &DaemonState) -> Result<VipStatus> {
    let mut rules = Vec::new();
    for r in &v.rules {
        let s = maps.service_stats(r.stats_index)?;
        let proto = if r.proto == lb_common::wire::IPPROTO_TCP { "tcp" } else { "udp" };
        rules.push(RuleStatus {
            rule: format!("{proto}/{}→{}", r.port, r.target_port),
            proxy_protocol: lb_common::proxy_protocol::name(r.proxy).map(str::to_string),
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
        });
    }
    let mut backends = Vec::new();
    for b in &v.backends {
        let s = maps.backend_stats(b.id)?;
        backends.push(BackendStatus {
            address: b.address.to_string(),
            weight: b.weight,
            up: b.up,
            slots: b.slots,
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            health_transitions: state
                .health_transitions
                .iter()
                .find(|h| h.vip == v.name && h.backend == b.address)
                .map_or(0, |h| h.transitions),
            last_change: state.backend_transitions.iter().find(|t| t.vip == v.name && t.backend == b.address).map(|t| t.last.clone()),
        });
    }
    let mut firewall = Vec::new();
    for f in &v.firewall {
        let drops = match f.slot {
            Some(slot) => maps.firewall_drops(slot)?,
            None => 0,
        };
        firewall.push(FirewallStatus { action: f.action.clone(), prefix: f.prefix.clone(), drops });
    }
    if v.firewall.iter().any(|f| f.action == "allow") {
        let drops = maps.firewall_drops(lb_common::firewall::not_allowed_slot(v.table))?;
        firewall.push(FirewallStatus { action: "not_allowed".into(), prefix: "*".into(), drops });
    }
    Ok(VipStatus { name: v.name.clone(), address: v.address.to_string(), mode: v.mode.clone(), rules, backends, firewall })
}

/// The SNAT ports one (backend, backend port) holds: at `snat_ports` its
/// new `nat` connections are refused (`drop_snat_exhausted`).
#[derive(Debug, Serialize)]
pub struct SnatUsage {
    pub backend: String,
    pub port: u16,
    pub in_use: u32,
}

/// One zone interface.
#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub zone: String,
    pub mode: crate::datapath::loader::AttachMode,
    pub program: crate::datapath::loader::Program,
    /// The kernel's binding for this ifindex points at the zone's slot.
    pub bound: bool,
}

/// Traffic to one protected port or run of consecutive ports.
#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub port: String,
    pub passed: u64,
    pub dropped: u64,
}

/// The maps a report reads: opened from the pins (`swarmlb status`) or
/// once, by the daemon, for its metrics endpoint (whose handles keep
/// working when the pins are gone).
pub struct ReportMaps {
    isolator: IsolatorMaps,
    balancer: BalancerMaps,
}

impl ReportMaps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self { isolator: IsolatorMaps::open(pin_dir)?, balancer: BalancerMaps::open(pin_dir)? })
    }
}

/// Reads the daemon's state file and the kernel's maps through their pins.
pub fn collect(runtime_dir: &Path) -> Result<StatusReport> {
    let state = DaemonState::read(runtime_dir)?;
    let maps = ReportMaps::open(&state.pin_path).map_err(|e| match &state.agent.pins_error {
        // The daemon noticed, and still runs on its own handles.
        Some(why) if !state.agent.pins_ok => e.context(format!(
            "the pins are gone and swarmlb (pid {}) knows it: {why}; its metrics endpoint still reports (swarmlb_pins_ok 0)",
            state.pid
        )),
        _ => e,
    })?;
    let mut r = report(state, &maps)?;
    if let Some(b) = r.bgp.as_mut() {
        match crate::announce::bird::protocols(&b.birdc_socket) {
            Ok(p) => b.bird = p,
            Err(e) => b.bird_error = Some(format!("{e:#}")),
        }
    }
    Ok(r)
}

/// The report of `state` (the daemon's state file) with the counters in `maps`.
pub fn report(state: DaemonState, maps: &ReportMaps) -> Result<StatusReport> {
    let (maps, lb) = (&maps.isolator, &maps.balancer);
    let counters = maps.counters()?;
    let mut interfaces = Vec::new();
    for i in &state.interfaces {
        let slot = state.zones.iter().find(|z| z.name == i.zone).map(|z| z.slot);
        let bound = maps.bindings.get(&i.ifindex, 0).ok().map(|b| b.slot) == slot;
        interfaces.push(InterfaceStatus {
            name: i.name.clone(),
            ifindex: i.ifindex,
            zone: i.zone.clone(),
            mode: i.mode,
            program: i.program,
            bound,
        });
    }
    let count = |v: Verdict| counters[lb_common::isolator::counter_index(v) as usize];
    let passed = PassReason::ALL.iter().map(|&r| (r.name(), count(Verdict::Pass(r)))).collect();
    let dropped = DropReason::ALL.iter().map(|&r| (r.name(), count(Verdict::Drop(r)))).collect();
    let ports = merge_port_runs(maps.port_stats()?);
    let lb_counters = lb.counters()?;
    let balancer = LbCounter::ALL.iter().map(|c| (c.name(), lb_counters[*c as usize])).collect();
    let vips = state.vips.iter().map(|v| vip_status(lb, v, &state)).collect::<Result<_>>()?;
    let flows = lb.flows.keys().count();
    let usage = lb.nat_usage();
    let nat_entries = usage.values().map(|n| *n as usize).sum();
    let snat_usage = usage.into_iter().map(|((a, port), in_use)| SnatUsage { backend: a.to_string(), port, in_use }).collect();
    let snat_ports = lb.globals.get(&0, 0).map_or(0, |g| (u32::from(g.snat_port_max) + 1).saturating_sub(u32::from(g.snat_port_min)));
    Ok(StatusReport {
        pid: state.pid,
        // SAFETY: signal 0 only checks that the process exists.
        daemon_running: unsafe { libc::kill(state.pid as i32, 0) } == 0,
        pin_path: state.pin_path.display().to_string(),
        interfaces,
        zones: state.zones,
        passed,
        dropped,
        ports,
        vips,
        balancer,
        flows,
        nat_entries,
        flow_capacity: lb.flow_capacity,
        nat_capacity: lb.nat_capacity,
        snat_ports,
        snat_usage,
        swarm: state.swarm,
        agent: state.agent,
        bgp: state.bgp.map(|b| BgpStatus { table: b.table, birdc_socket: b.birdc_socket, announced: b.announced, bird: Vec::new(), bird_error: None }),
    })
}

/// Folds runs of consecutive ports (a protected range) into one row with
/// summed counters, so `tcp/9000-9100` is one line, not a hundred.
fn merge_port_runs(stats: Vec<(PortStatsKey, PortStats)>) -> Vec<PortStatus> {
    let mut out: Vec<(u8, u16, u16, PortStats)> = Vec::new();
    for (k, s) in stats {
        match out.last_mut() {
            Some((proto, _, hi, sum)) if *proto == k.proto && u32::from(*hi) + 1 == u32::from(k.port) => {
                *hi = k.port;
                sum.passed += s.passed;
                sum.dropped += s.dropped;
            }
            _ => out.push((k.proto, k.port, k.port, s)),
        }
    }
    out.into_iter()
        .map(|(proto, lo, hi, s)| {
            let name = port_ranges([(proto, lo)]).remove(0);
            PortStatus {
                port: if lo == hi { name } else { format!("{name}-{hi}") },
                passed: s.passed,
                dropped: s.dropped,
            }
        })
        .collect()
}

/// How long ago unix time `t` was, in words (`4.2 s`, `3 min`, `2.5 h`).
fn ago(t: f64) -> String {
    let s = (crate::unix_time() - t).max(0.0);
    match s {
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// Renders the report as aligned text tables.
pub fn render_table(r: &StatusReport) -> String {
    let mut out = String::new();
    let running = if r.daemon_running { "running" } else { "NOT RUNNING" };
    let _ = writeln!(out, "swarmlb  pid {} ({running})  maps {}", r.pid, r.pin_path);
    let a = &r.agent;
    let _ = writeln!(
        out,
        "agent    {}  reloads {} applied, {} refused",
        if a.adopted { "adopted the running data path" } else { "started the data path" },
        a.reloads_succeeded,
        a.reloads_failed
    );
    if let Some(e) = a.last_reload_error.as_ref().filter(|_| !a.last_reload_ok) {
        if a.last_reload_applied {
            let _ = writeln!(out, "         LAST RELOAD FAILED (its config runs): {e}");
        } else {
            let _ = writeln!(out, "         LAST RELOAD REFUSED (the running config stays): {e}");
        }
    }
    if a.pins_private {
        let _ = writeln!(out, "         PINS PRIVATE: on a bpffs only the agent's mount namespace sees; the data path ends with the agent");
    }
    if let Some(e) = a.pins_error.as_ref().filter(|_| !a.pins_ok) {
        let _ = writeln!(out, "         PINS MISSING (a restart would not adopt): {e}");
    }
    if let Some(b) = &r.bgp {
        let announced: Vec<String> = b.announced.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "bgp      table {}  announced: {}", b.table, if announced.is_empty() { "none".into() } else { announced.join(", ") });
        for p in &b.bird {
            let _ = writeln!(out, "         bird {} ({}) {} {}", p.name, p.proto, p.state, p.info);
        }
        if let Some(e) = &b.bird_error {
            let _ = writeln!(out, "         BIRD NOT ASKED: {e}");
        }
    }
    if let Some(s) = &r.swarm {
        let age = s.last_sync.map_or("never".into(), |t| format!("{} ago", ago(t)));
        let _ = writeln!(
            out,
            "swarm    {}  last sync {age}  {} nodes  {} services  {} syncs  {} failures",
            if s.connected { "connected" } else { "DISCONNECTED (serving the last good state)" },
            s.nodes,
            s.services,
            s.syncs,
            s.failures
        );
        if let Some(e) = s.last_error.as_ref().filter(|_| !s.connected) {
            let _ = writeln!(out, "         last error: {e}");
        }
        let nodes: Vec<String> = s.allowed_nodes.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "         node allow-list: {}", if nodes.is_empty() { "none".into() } else { nodes.join(", ") });
        for n in &s.notes {
            let _ = writeln!(out, "         note: {n}");
        }
    }
    for v in &r.vips {
        let _ = writeln!(out, "\nVIP {} {} ({})", v.name, v.address, v.mode);
        let _ = writeln!(out, "  {:<20} {:>14} {:>16} {:>10} PROXY", "RULE", "PACKETS", "BYTES", "NEW FLOWS");
        for rule in &v.rules {
            let pp = rule.proxy_protocol.as_deref().unwrap_or("-");
            let _ = writeln!(out, "  {:<20} {:>14} {:>16} {:>10} {pp}", rule.rule, rule.packets, rule.bytes, rule.new_flows);
        }
        let _ = writeln!(
            out,
            "  {:<28} {:>6} {:<5} {:>6} {:>14} {:>16} {:>10}",
            "BACKEND", "WEIGHT", "STATE", "SLOTS", "PACKETS", "BYTES", "NEW FLOWS"
        );
        for b in &v.backends {
            let state = if !b.up { "down" } else if b.weight == 0 { "drain" } else { "up" };
            let _ = writeln!(
                out,
                "  {:<28} {:>6} {:<5} {:>6} {:>14} {:>16} {:>10}",
                b.address, b.weight, state, b.slots, b.packets, b.bytes, b.new_flows
            );
            if let Some(c) = &b.last_change {
                let _ = writeln!(out, "    last change {} ago: {} ({})", ago(c.at), c.change, c.reason);
            }
        }
        if !v.firewall.is_empty() {
            let _ = writeln!(out, "  {:<12} {:<43} {:>14}", "FIREWALL", "PREFIX", "DROPPED");
            for f in &v.firewall {
                let _ = writeln!(out, "  {:<12} {:<43} {:>14}", f.action, f.prefix, f.drops);
            }
        }
    }
    if !r.vips.is_empty() {
        let _ = writeln!(out, "\nflows {} of {}   nat entries {} of {}", r.flows, r.flow_capacity, r.nat_entries, r.nat_capacity);
        for u in &r.snat_usage {
            let _ = writeln!(out, "snat ports to {}: {} of {} in use", std::net::SocketAddr::new(u.backend.parse().unwrap_or(std::net::IpAddr::from([0u8; 4])), u.port), u.in_use, r.snat_ports);
        }
        let _ = writeln!(out, "{:<26} {:>14}", "BALANCER", "PACKETS");
        for (name, n) in &r.balancer {
            let _ = writeln!(out, "{name:<26} {n:>14}");
        }
    }
    let _ = writeln!(out, "\n{:<16} {:>7} {:<12} {:<10} {:<8} BOUND", "INTERFACE", "IFINDEX", "ZONE", "PROGRAM", "XDP");
    for i in &r.interfaces {
        let mode = match i.mode {
            crate::datapath::loader::AttachMode::Native => "native",
            crate::datapath::loader::AttachMode::Generic => "generic",
        };
        let zone = if i.zone.is_empty() { "-" } else { &i.zone };
        let bound = if i.zone.is_empty() { "-" } else if i.bound { "yes" } else { "NO" };
        let _ = writeln!(out, "{:<16} {:>7} {:<12} {:<10} {:<8} {bound}", i.name, i.ifindex, zone, i.program.name(), mode);
    }
    for z in &r.zones {
        let _ = writeln!(out, "\nzone {} (slot {})", z.name, z.slot);
        let _ = writeln!(out, "  protected: {}", if z.protected.is_empty() { "-".into() } else { z.protected.join(", ") });
        let _ = writeln!(out, "  allow:     {}", if z.allow.is_empty() { "-".into() } else { z.allow.join(", ") });
        let _ = writeln!(
            out,
            "  tunnels:   {}   routing headers: {}",
            if z.tunnels_allowed { "allowed" } else { "cluster nodes only" },
            if z.routing_header_allowed { "allowed" } else { "cluster nodes only" }
        );
    }
    let _ = writeln!(out, "\n{:<26} {:>14}", "PASSED", "PACKETS");
    for (name, n) in &r.passed {
        let _ = writeln!(out, "{name:<26} {n:>14}");
    }
    let _ = writeln!(out, "\n{:<26} {:>14}", "DROPPED", "PACKETS");
    for (name, n) in &r.dropped {
        let _ = writeln!(out, "{name:<26} {n:>14}");
    }
    if !r.ports.is_empty() {
        let _ = writeln!(out, "\n{:<16} {:>14} {:>14}", "PROTECTED PORT", "PASSED", "DROPPED");
        for p in &r.ports {
            let _ = writeln!(out, "{:<16} {:>14} {:>14}", p.port, p.passed, p.dropped);
        }
    }
    out
}
