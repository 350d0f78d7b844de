//! Counters and sampled drop events. Counting happens after the decision so
//! the decision code stays a pure function of the packet and the policy maps.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, programs::XdpContext};
use aya_ebpf::EbpfContext;
use lb_common::isolator::{
    counter_index, DropEvent, DropReason, PortStats, Verdict, FAMILY_V4, FAMILY_V6, SETTING_EVENT_INTERVAL_NS,
};

use crate::{
    isolator::{self, Decision},
    maps::{COUNTERS, DROP_EVENTS, EVENT_CLOCK, PORT_STATS, SETTINGS},
    packet::{Ipv4Hdr, Ipv6Hdr, Packet, Ports},
};

#[inline(always)]
/// `detail` is the drop event's detail when the caller knows it (the FIB's
/// answer in the reverse-path stage), else 0.
pub fn record(ctx: &XdpContext, d: &Decision, detail: u8) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(d.verdict)) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
    if let Some(key) = d.protected_port {
        let stats = match PORT_STATS.get_ptr_mut(&key) {
            Some(s) => Some(s),
            None => {
                let _ = PORT_STATS.insert(&key, &PortStats::default(), u64::from(BPF_NOEXIST));
                PORT_STATS.get_ptr_mut(&key)
            }
        };
        if let Some(s) = stats {
            // SAFETY: per-CPU value, no concurrent writer.
            unsafe {
                if d.verdict.is_drop() {
                    (*s).dropped += 1;
                } else {
                    (*s).passed += 1;
                }
            }
        }
    }
    if let Verdict::Drop(reason) = d.verdict {
        if event_due() {
            emit(ctx, d, reason as u8, detail);
        }
    }
}

/// Rate-limits drop events per CPU: a port scan must not flood the agent.
#[inline(always)]
fn event_due() -> bool {
    let interval = SETTINGS.get(SETTING_EVENT_INTERVAL_NS).copied().unwrap_or(0);
    if interval == u64::MAX {
        return false;
    }
    let Some(last) = EVENT_CLOCK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot, no concurrent writer.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < interval {
            return false;
        }
        *last = now;
    }
    true
}

#[inline(always)]
fn emit(ctx: &XdpContext, d: &Decision, reason: u8, detail: u8) {
    let Some(mut entry) = DROP_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    let pkt = Packet::new_opaque(ctx);
    let h = d.headers;
    let mut ev = DropEvent {
        ifindex: ctx.ingress_ifindex() as u32,
        reason,
        family: h.family,
        proto: h.proto,
        detail: if reason == DropReason::ImpossibleSource as u8 {
            // Asked again here (events are sampled, so rare) rather than
            // carried with every decision: the isolator's frame has no
            // room to spare.
            isolator::impossible_kind(ctx.as_ptr(), &pkt, &d.headers) as u8
        } else {
            detail
        },
        ..DropEvent::default()
    };
    if h.family == FAMILY_V4 {
        if let Some(ip) = pkt.header::<Ipv4Hdr>(h.l3) {
            ev.src[..4].copy_from_slice(&ip.src_addr);
            ev.dst[..4].copy_from_slice(&ip.dst_addr);
        }
    } else if h.family == FAMILY_V6 {
        if let Some(ip) = pkt.header::<Ipv6Hdr>(h.l3) {
            ev.src = ip.src_addr;
            ev.dst = ip.dst_addr;
        }
    }
    if h.l4 != 0 {
        if let Some(ports) = pkt.header::<Ports>(h.l4) {
            ev.src_port = ports.source();
            ev.dst_port = ports.dest();
        }
    }
    entry.write(ev);
    entry.submit(0);
}
