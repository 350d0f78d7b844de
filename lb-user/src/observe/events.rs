//! Logs the kernel's sampled drop events.

use std::{net::IpAddr, path::Path};

use anyhow::Result;
use lb_common::{
    isolator::{DropEvent, DropReason, Impossible},
    wire::{FAMILY_V4, FAMILY_V6},
};
use tokio::io::unix::AsyncFd;
use tracing::warn;

/// Reads drop events until the task is dropped, logging each one.
pub async fn log_drops(pin_dir: &Path) -> Result<()> {
    let ring = crate::datapath::maps::open_drop_events(pin_dir)?;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so
    // the fd stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<DropEvent>() {
                continue;
            }
            // SAFETY: the kernel writes whole `DropEvent`s; the read is unaligned-safe.
            let ev: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            log_one(&ev);
        }
        guard.clear_ready();
    }
}

fn addr(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        FAMILY_V6 => Some(IpAddr::from(bytes)),
        _ => None,
    }
}

/// The interface's current name (events are rate-limited, so a lookup per
/// event is cheap, and it stays right across reloads and renames).
fn ifname(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

fn log_one(ev: &DropEvent) {
    let reason = DropReason::from_u8(ev.reason).map_or("unknown", DropReason::name);
    let iface = ifname(ev.ifindex);
    let src = addr(ev.family, ev.src).map(|a| a.to_string()).unwrap_or_default();
    let dst = addr(ev.family, ev.dst).map(|a| a.to_string()).unwrap_or_default();
    let detail = detail(ev);
    warn!(
        interface = %iface,
        reason,
        detail,
        proto = ev.proto,
        src = %src,
        src_port = ev.src_port,
        dst = %dst,
        dst_port = ev.dst_port,
        "isolator dropped a packet (sampled)"
    );
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
