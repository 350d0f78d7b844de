//! The idle sweep of `nat`-mode state. NAT entries are not LRU (a port
//! must never be handed to a second live flow), so something has to end
//! them: the kernel refreshes an entry's clock while its backend sends, and
//! this sweep removes entries idle longer than the protocol's timeout,
//! together with their flow-table entries.

use std::time::Duration;

use anyhow::Result;
use lb_common::{
    balancer::{FlowKey, NatEntry, NatKey},
    wire::IPPROTO_TCP,
};

use crate::maps::BalancerMaps;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes NAT entries (and their flows) idle for longer than the
/// timeout of their protocol. Returns how many were removed.
pub fn sweep_nat(maps: &mut BalancerMaps, tcp_idle: Duration, udp_idle: Duration) -> Result<usize> {
    let now = monotonic_ns();
    let idle: Vec<(NatKey, NatEntry)> = maps
        .nat
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, e)| {
            let limit = if k.proto == IPPROTO_TCP { tcp_idle } else { udp_idle };
            now.saturating_sub(e.last_seen_ns) > limit.as_nanos() as u64
        })
        .collect();
    for (k, e) in &idle {
        let flow = FlowKey {
            src: e.client,
            dst: e.vip,
            src_port: e.client_port,
            dst_port: e.vip_port,
            proto: k.proto,
            family: k.family,
            _pad: [0; 2],
        };
        // The flow may already be gone (LRU) or point elsewhere after a
        // move; only a flow still using this port goes with it.
        if maps.flows.get(&flow, 0).is_ok_and(|f| f.nat_port == k.nat_port) {
            let _ = maps.flows.remove(&flow);
        }
        let _ = maps.nat.remove(k);
    }
    Ok(idle.len())
}
