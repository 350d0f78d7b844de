//! swarmlb's XDP programs.
//!
//! `isolator`: attached to interfaces that face a zone (for example the DMZ);
//! drops TCP/UDP to the zone's protected ports unless the source may reach
//! them, and whatever could smuggle a packet past that check (fragments,
//! tunnels, routing headers), and sources that cannot be real there. The
//! decision mirrors `lb_common::model`. A packet that would pass on its
//! source's trust goes on, by tail call, to `isolator_reverse_path`, which
//! asks the FIB for the route back to that source.
//!
//! `balancer`: attached to the edge's outside and inside interfaces;
//! forwards packets for a VIP's services to backends (`nat`, `dsr`,
//! `dsr-l2`) and `nat` replies back to clients, and tail-calls the isolator
//! with everything else. Mirrors `lb_common::balancer_model`.
//!
//! `decap`: attached on a DSR backend; opens the edge's tunnel packets.
#![no_std]
#![no_main]
#![no_builtins]
// An empty `asm!` is the optimisation barrier the bounds checks need.
#![feature(asm_experimental_arch)]
// Map keys are passed by reference on purpose: a key passed by value is a
// copy on BPF's 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod balancer;
mod bytes;
mod decap;
mod isolator;
mod maps;
mod martian;
mod packet;
mod reverse_path;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::isolator::Verdict;

#[xdp]
pub fn isolator(ctx: XdpContext) -> u32 {
    let decision = isolator::decide(&ctx);
    stats::record(&ctx, &decision, 0);
    match decision.verdict {
        Verdict::Pass(_) => xdp_action::XDP_PASS,
        Verdict::Drop(_) => xdp_action::XDP_DROP,
    }
}

/// The isolator's reverse-path stage, reached only by tail call from it.
#[xdp]
pub fn isolator_reverse_path(ctx: XdpContext) -> u32 {
    let Some((decision, detail)) = isolator::finish_reverse_path(&ctx) else {
        return xdp_action::XDP_DROP;
    };
    stats::record(&ctx, &decision, detail);
    match decision.verdict {
        Verdict::Pass(_) => xdp_action::XDP_PASS,
        Verdict::Drop(_) => xdp_action::XDP_DROP,
    }
}

#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    balancer::run(&ctx)
}

#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
