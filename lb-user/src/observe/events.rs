//! Logs the kernel's sampled drop events, at a rate a port scan cannot
//! turn into a flood: the first [`BURST`] events of each
//! [`SUMMARY_INTERVAL`] are logged at INFO, the rest at DEBUG, and every
//! interval that had more ends with one INFO line counting them by reason.
//! The counters (`swarmlb status`, metrics) count every drop regardless.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use lb_common::{
    isolator::{DropEvent, DropReason, Impossible},
    wire::{proto_name, FAMILY_V4, FAMILY_V6},
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info};

use crate::source::netif::ifname;

/// Events logged at INFO per interval.
pub const BURST: u32 = 10;
/// How often the count of events logged at DEBUG only is summed up.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Reads drop events until the task is dropped, logging them.
pub async fn log_drops(pin_dir: &Path) -> Result<()> {
    let ring = crate::datapath::maps::open_drop_events(pin_dir)?;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so
    // the fd stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut limit = DropLog::default();
    let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() < size_of::<DropEvent>() {
                        continue;
                    }
                    // SAFETY: the kernel writes whole `DropEvent`s; the read is unaligned-safe.
                    let ev: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    limit.log(&ev);
                }
                guard.clear_ready();
            }
            _ = summary.tick() => limit.summarize(),
        }
    }
}

/// The rate limit's count for the current interval.
#[derive(Debug, Default)]
struct DropLog {
    /// Events logged at INFO this interval.
    logged: u32,
    /// Events past the burst this interval, by reason.
    quiet: BTreeMap<&'static str, u64>,
}

impl DropLog {
    fn log(&mut self, ev: &DropEvent) {
        let reason = DropReason::from_u8(ev.reason).map_or("unknown", DropReason::name);
        let loud = self.logged < BURST;
        if loud {
            self.logged += 1;
        } else {
            *self.quiet.entry(reason).or_default() += 1;
        }
        let iface = ifname(ev.ifindex).unwrap_or_else(|| format!("if{}", ev.ifindex));
        let src = addr(ev.family, ev.src).map(|a| a.to_string()).unwrap_or_default();
        let dst = addr(ev.family, ev.dst).map(|a| a.to_string()).unwrap_or_default();
        let proto = proto_name(ev.proto).map_or_else(|| ev.proto.to_string(), str::to_owned);
        let detail = detail(ev);
        macro_rules! event {
            ($level:ident) => {
                $level!(
                    interface = %iface,
                    reason,
                    detail,
                    proto,
                    src = %src,
                    src_port = ev.src_port,
                    dst = %dst,
                    dst_port = ev.dst_port,
                    "isolator dropped a packet (sampled)"
                )
            };
        }
        if loud {
            event!(info);
            if self.logged == BURST {
                info!(
                    "{BURST} drop events logged in this {} s interval; the rest go to DEBUG and are counted at its end",
                    SUMMARY_INTERVAL.as_secs()
                );
            }
        } else {
            event!(debug);
        }
    }

    /// Ends the interval: says how many events went to DEBUG only.
    fn summarize(&mut self) {
        if !self.quiet.is_empty() {
            let total: u64 = self.quiet.values().sum();
            let by_reason: Vec<String> = self.quiet.iter().map(|(r, n)| format!("{r} {n}")).collect();
            info!(
                more = total,
                by_reason = by_reason.join(", "),
                "{total} more drop events in the last {} s were logged at DEBUG only (see `swarmlb status` for every drop)",
                SUMMARY_INTERVAL.as_secs()
            );
        }
        *self = Self::default();
    }
}

fn addr(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        FAMILY_V6 => Some(IpAddr::from(bytes)),
        _ => None,
    }
}

/// What an event's `detail` byte means for its reason ("" when nothing).
fn detail(ev: &DropEvent) -> String {
    match DropReason::from_u8(ev.reason) {
        Some(DropReason::ImpossibleSource) => {
            Impossible::from_u32(u32::from(ev.detail)).map_or_else(|| format!("kind {}", ev.detail), |k| k.name().to_owned())
        }
        Some(DropReason::ReversePathUnverified) => match ev.detail {
            5 => "forwarding is off on the interface (BPF_FIB_LKUP_RET_FWD_DISABLED)".to_owned(),
            6 => "the route back is a lightweight tunnel (BPF_FIB_LKUP_RET_UNSUPP_LWT)".to_owned(),
            255 => "the FIB lookup failed (kernel older than 6.5?)".to_owned(),
            rc => format!("bpf_fib_lookup returned {rc}"),
        },
        _ => String::new(),
    }
}
