//! The counter watch: every [`INTERVAL`] the daemon compares the balancer's
//! drop counters and table occupancy with the last look and says in the log
//! what an operator has to act on — SNAT ports exhausted, the NAT table
//! full, VIPs without a backend, `nat` flows the flow table forgot, the flow
//! table near its capacity. One line
//! per kind and interval, only while it happens (the flow table's at most
//! every [`FLOW_TABLE_REPEAT`]: a full LRU table is normal for long-lived
//! `dsr` traffic; it is counted only every [`FLOW_COUNT_INTERVAL`]). The
//! counters themselves are metrics already.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_common::balancer::LbCounter;

use crate::datapath::maps::BalancerMaps;

/// How often the counters are looked at.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// The flow table counts as near capacity from this share on. Not closer
/// to 1: the kernel's LRU keeps some free entries on per-CPU lists, so a
/// small table that evicts all the time reads as 14 of 16 (2 CPUs).
const FLOW_TABLE_HIGH: f64 = 0.75;
/// A flow table that stays near capacity is mentioned again after this.
pub const FLOW_TABLE_REPEAT: Duration = Duration::from_secs(600);
/// How often the flow table's entries are counted: a full default table
/// (262 144 flows) takes about 0.2 s of system calls to count.
pub const FLOW_COUNT_INTERVAL: Duration = Duration::from_secs(60);
/// Backend ports a SNAT warning names at most.
const NAMED_PORTS: usize = 3;

/// What the watch reads in one look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Look {
    /// The balancer's counters, by [`LbCounter`] index.
    pub counters: Vec<u64>,
    /// Flows in the flow table (when counted this time), and its capacity.
    pub flows: Option<usize>,
    pub flow_capacity: u32,
    /// NAT entries, and the NAT table's capacity.
    pub nat_entries: usize,
    pub nat_capacity: u32,
    /// SNAT ports in use per (backend, backend port), and per-port capacity.
    pub snat_usage: BTreeMap<(IpAddr, u16), u32>,
    pub snat_ports: u32,
}

impl Look {
    /// Reads the maps. The NAT table is read only when `with_nat` and the
    /// flow table counted only when `with_flows` (their keys are many).
    pub fn read(maps: &BalancerMaps, with_nat: bool, with_flows: bool) -> Result<Self> {
        let snat_usage = if with_nat { maps.nat_usage() } else { BTreeMap::new() };
        let snat_ports = maps.globals.get(&0, 0).map_or(0, |g| (u32::from(g.snat_port_max) + 1).saturating_sub(u32::from(g.snat_port_min)));
        Ok(Self {
            counters: maps.counters()?,
            flows: with_flows.then(|| maps.flows.keys().count()),
            flow_capacity: maps.flow_capacity,
            nat_entries: snat_usage.values().map(|n| *n as usize).sum(),
            nat_capacity: maps.nat_capacity,
            snat_usage,
            snat_ports,
        })
    }
}

/// The watch's memory between looks.
#[derive(Debug, Default)]
pub struct CounterWatch {
    last: Vec<u64>,
    /// When the flow table was last said to be near capacity.
    flow_table_said: Option<Instant>,
    /// When the flow table was last counted.
    flows_counted: Option<Instant>,
}

/// A counter's rise from `last` to `now`.
fn rise(last: &[u64], now: &[u64], c: LbCounter) -> u64 {
    let i = c as usize;
    now.get(i).copied().unwrap_or(0).saturating_sub(last.get(i).copied().unwrap_or(0))
}

impl CounterWatch {
    /// Starts from `counters`: what was dropped before is not news.
    pub fn new(counters: Vec<u64>) -> Self {
        Self { last: counters, flow_table_said: None, flows_counted: None }
    }

    /// Looks at `maps` (`elapsed` after the last look): the warnings.
    pub fn check(&mut self, maps: &BalancerMaps, elapsed: Duration) -> Result<Vec<String>> {
        let now = Instant::now();
        let with_nat = self.needs_nat(&maps.counters()?);
        let with_flows = self.flows_counted.is_none_or(|t| now.duration_since(t) >= FLOW_COUNT_INTERVAL);
        if with_flows {
            self.flows_counted = Some(now);
        }
        Ok(self.judge(&Look::read(maps, with_nat, with_flows)?, elapsed, now))
    }

    /// Whether the next [`CounterWatch::judge`] needs the NAT table:
    /// something it reports on rose.
    pub fn needs_nat(&self, counters: &[u64]) -> bool {
        [LbCounter::SnatExhausted, LbCounter::NatTableFull].iter().any(|c| rise(&self.last, counters, *c) > 0)
    }

    /// The warnings `look` (taken `elapsed` after the last) calls for.
    pub fn judge(&mut self, look: &Look, elapsed: Duration, now: Instant) -> Vec<String> {
        let secs = elapsed.as_secs_f64().round().max(1.0);
        let mut out = Vec::new();
        let snat = rise(&self.last, &look.counters, LbCounter::SnatExhausted);
        if snat > 0 {
            let mut busiest: Vec<(&(IpAddr, u16), &u32)> = look.snat_usage.iter().collect();
            busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let named: Vec<String> = busiest
                .iter()
                .take(NAMED_PORTS)
                .map(|((a, p), n)| format!("{} holds {n} of {} ports", SocketAddr::new(*a, *p), look.snat_ports))
                .collect();
            let named = if named.is_empty() { String::new() } else { format!(" ({})", named.join(", ")) };
            out.push(format!(
                "SNAT ports exhausted: {snat} new connections refused in the last {secs} s{named}; a wider balancer.snat_ports, a shorter tcp_closed_timeout_s or more backends help"
            ));
        }
        let full = rise(&self.last, &look.counters, LbCounter::NatTableFull);
        if full > 0 {
            out.push(format!(
                "NAT table full: {full} new connections refused in the last {secs} s ({} of {} entries); raise balancer.nat_table_size",
                look.nat_entries, look.nat_capacity
            ));
        }
        let reclaimed = rise(&self.last, &look.counters, LbCounter::HalfOpenReclaimed);
        if reclaimed > 0 {
            out.push(format!(
                "flood: {reclaimed} new nat connections took the SNAT port of a peer that never completed its handshake or got an answer \
                 in the last {secs} s (a SYN or UDP flood from forged sources, most likely); clients are still served"
            ));
        }
        let blind = rise(&self.last, &look.counters, LbCounter::OutOfWindow);
        let forged = rise(&self.last, &look.counters, LbCounter::ForgedReply);
        if blind + forged > 0 {
            out.push(format!(
                "forged packets: {forged} replies to SNAT ports not from their backend and {blind} RSTs/FINs outside their connection's \
                 window dropped in the last {secs} s"
            ));
        }
        let none = rise(&self.last, &look.counters, LbCounter::NoBackend);
        if none > 0 {
            out.push(format!("no backend up: {none} packets for VIPs without a healthy backend dropped in the last {secs} s"));
        }
        let refound = rise(&self.last, &look.counters, LbCounter::FlowRefound);
        if refound > 0 {
            out.push(format!(
                "flow table too small: {refound} nat flows were forgotten and found again by their NAT entries in the last {secs} s \
                 (a table of {} flows; a forgotten flow whose backends changed meanwhile breaks); raise balancer.flow_table_size",
                look.flow_capacity
            ));
        }
        let Some(flows) = look.flows else {
            self.last.clone_from(&look.counters);
            return out;
        };
        let high = look.flow_capacity > 0 && flows as f64 >= f64::from(look.flow_capacity) * FLOW_TABLE_HIGH;
        if !high {
            self.flow_table_said = None;
        } else if self.flow_table_said.is_none_or(|t| now.duration_since(t) >= FLOW_TABLE_REPEAT) {
            self.flow_table_said = Some(now);
            out.push(format!(
                "flow table near capacity: {} of {} flows; the least recently used are forgotten (a forgotten flow is placed again: \
                 the same backend while the backends do not change); raise balancer.flow_table_size",
                flows, look.flow_capacity
            ));
        }
        self.last.clone_from(&look.counters);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::balancer::LB_COUNTERS_LEN;

    fn look(snat: u64, full: u64, flows: usize) -> Look {
        let mut counters = vec![0; LB_COUNTERS_LEN as usize];
        counters[LbCounter::SnatExhausted as usize] = snat;
        counters[LbCounter::NatTableFull as usize] = full;
        let snat_usage = BTreeMap::from([(("10.0.2.1".parse().unwrap(), 443), 4), (("10.0.2.2".parse().unwrap(), 443), 1)]);
        Look { counters, flows: Some(flows), flow_capacity: 100, nat_entries: 5, nat_capacity: 8, snat_usage, snat_ports: 4 }
    }

    #[test]
    fn warns_once_per_interval_while_drops_rise() {
        let t0 = Instant::now();
        let mut w = CounterWatch::new(look(3, 0, 0).counters);
        assert!(w.judge(&look(3, 0, 0), INTERVAL, t0).is_empty(), "drops before the start are not news");
        assert!(w.needs_nat(&look(15, 0, 0).counters));
        let said = w.judge(&look(15, 0, 0), INTERVAL, t0);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].starts_with("SNAT ports exhausted: 12 new connections refused in the last 5 s (10.0.2.1:443 holds 4 of 4 ports, 10.0.2.2:443 holds 1 of 4 ports)"), "{said:?}");
        assert!(w.judge(&look(15, 0, 0), INTERVAL, t0).is_empty(), "quiet once the counter stops");
        let said = w.judge(&look(15, 2, 0), INTERVAL, t0);
        assert!(said[0].starts_with("NAT table full: 2 new connections refused in the last 5 s (5 of 8 entries)"), "{said:?}");
    }

    #[test]
    fn forgotten_flows_are_said_while_they_happen() {
        let t0 = Instant::now();
        let mut w = CounterWatch::new(look(0, 0, 0).counters);
        let mut l = look(0, 0, 10);
        l.counters[LbCounter::FlowRefound as usize] = 7;
        let said = w.judge(&l, INTERVAL, t0);
        assert!(said[0].starts_with("flow table too small: 7 nat flows were forgotten and found again by their NAT entries in the last 5 s (a table of 100 flows;"), "{said:?}");
        assert!(w.judge(&l, INTERVAL, t0).is_empty());
    }

    #[test]
    fn a_flood_and_forged_packets_are_said() {
        let t0 = Instant::now();
        let mut w = CounterWatch::new(look(0, 0, 0).counters);
        let mut l = look(0, 0, 10);
        l.counters[LbCounter::HalfOpenReclaimed as usize] = 900;
        l.counters[LbCounter::OutOfWindow as usize] = 3;
        let said = w.judge(&l, INTERVAL, t0);
        assert!(said[0].starts_with("flood: 900 new nat connections took the SNAT port"), "{said:?}");
        assert!(said[1].starts_with("forged packets: 0 replies to SNAT ports not from their backend and 3 RSTs/FINs"), "{said:?}");
        assert!(w.judge(&l, INTERVAL, t0).is_empty());
    }

    #[test]
    fn a_full_flow_table_is_said_again_only_after_a_while() {
        let t0 = Instant::now();
        let mut w = CounterWatch::new(look(0, 0, 0).counters);
        assert!(w.judge(&look(0, 0, 74), INTERVAL, t0).is_empty());
        assert!(w.judge(&look(0, 0, 75), INTERVAL, t0)[0].starts_with("flow table near capacity: 75 of 100 flows"));
        assert!(w.judge(&look(0, 0, 100), INTERVAL, t0 + INTERVAL).is_empty(), "rate limited");
        assert_eq!(w.judge(&look(0, 0, 100), INTERVAL, t0 + FLOW_TABLE_REPEAT).len(), 1);
        assert!(w.judge(&look(0, 0, 10), INTERVAL, t0 + FLOW_TABLE_REPEAT).is_empty());
        assert!(w.judge(&Look { flows: None, ..look(0, 0, 95) }, INTERVAL, t0 + FLOW_TABLE_REPEAT).is_empty(), "not counted this time");
        assert_eq!(w.judge(&look(0, 0, 95), INTERVAL, t0 + FLOW_TABLE_REPEAT + INTERVAL).len(), 1, "a new episode is said at once");
    }
}
