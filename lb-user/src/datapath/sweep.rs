//! The idle sweep of `nat`-mode state. NAT entries are not LRU (a port
//! must never be handed to a second live flow), so something has to end
//! them: the kernel refreshes an entry's clock while its backend sends, and
//! this sweep removes entries idle longer than the protocol's timeout,
//! together with their flow-table entries.

use std::time::Duration;

use anyhow::Result;
use lb_common::{
    balancer::{FlowEntry, FlowKey, NatEntry, NatKey, NAT_CLOSED, NAT_TIME_WAIT},
    nat_state,
    wire::IPPROTO_TCP,
};

use crate::datapath::maps::BalancerMaps;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long NAT state may be idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, while open.
    pub tcp: Duration,
    /// TCP closed by the client or a RST ([`NAT_CLOSED`]): the backend
    /// holds no TIME_WAIT, so the port may serve again soon. (Closed flows
    /// held for `tcp` would let a backend port take only 35 new
    /// connections a second before its 31 744 SNAT ports ran out.)
    pub tcp_closed: Duration,
    /// TCP closed by the backend ([`NAT_TIME_WAIT`]): long enough for the
    /// backend's TIME_WAIT, so a new flow never meets the old connection.
    pub tcp_time_wait: Duration,
    pub udp: Duration,
    /// TCP whose handshake has not completed: an unproven peer, perhaps a
    /// forged source of a SYN flood.
    pub tcp_half_open: Duration,
    /// UDP the backend never answered.
    pub udp_unreplied: Duration,
}

impl Default for Timeouts {
    /// The config's defaults.
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(900),
            tcp_closed: Duration::from_secs(10),
            tcp_time_wait: Duration::from_secs(120),
            udp: Duration::from_secs(300),
            tcp_half_open: Duration::from_secs(5),
            udp_unreplied: Duration::from_secs(5),
        }
    }
}

impl Timeouts {
    /// The limit for an entry of protocol `proto`.
    pub fn of(&self, proto: u8, e: &NatEntry) -> Duration {
        let proven = nat_state::proven(e);
        match (proto == IPPROTO_TCP, e.closing) {
            (false, _) if !proven => self.udp_unreplied,
            (false, _) => self.udp,
            (true, 0) if !proven => self.tcp_half_open,
            (true, NAT_CLOSED) => self.tcp_closed,
            (true, NAT_TIME_WAIT) => self.tcp_time_wait,
            (true, _) => self.tcp,
        }
    }
}

/// Whether `f`'s backend is in place (same generation) at another address
/// than `backend`: the flow is a later connection's, not this entry's.
fn live_elsewhere(maps: &BalancerMaps, f: &FlowEntry, backend: &[u8; 16]) -> bool {
    maps.backends.get(&f.backend, 0).is_ok_and(|b| !b.is_vacant() && b.generation == f.generation && b.addr != *backend)
}

/// Removes NAT entries (and their flows) idle for longer than their
/// timeout. Returns how many were removed.
pub fn sweep_nat(maps: &mut BalancerMaps, timeouts: &Timeouts) -> Result<usize> {
    let now = monotonic_ns();
    let idle: Vec<(NatKey, NatEntry)> = maps
        .nat
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, e)| now.saturating_sub(e.last_seen_ns) > timeouts.of(k.proto, e).as_nanos() as u64)
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
        // move; only a flow still using this entry goes with it. The port
        // number alone does not say so: a later connection from the same
        // client port, placed on another backend, gets the same SNAT port
        // there (the probe sequence is a hash of the 5-tuple), and sweeping
        // the earlier one's entry removed the live flow, which the next
        // packet placed again, on another backend if the table had changed
        // (the soak saw a kept stream reset).
        if maps.flows.get(&flow, 0).is_ok_and(|f| f.nat_port == k.nat_port && !live_elsewhere(maps, &f, &k.backend)) {
            let _ = maps.flows.remove(&flow);
        }
        let _ = maps.nat.remove(k);
    }
    Ok(idle.len())
}
