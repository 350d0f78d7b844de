//! swarmlb's XDP programs.
//!
//! `isolator`: attached to interfaces that face a zone (for example the DMZ);
//! drops TCP/UDP to the zone's protected ports unless the source may reach
//! them, and whatever could smuggle a packet past that check (fragments,
//! tunnels, routing headers). The decision mirrors `lb_common::model`.
#![no_std]
#![no_main]
// An empty `asm!` is the optimisation barrier the bounds checks need.
#![feature(asm_experimental_arch)]

mod isolator;
mod maps;
mod packet;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::isolator::Verdict;

#[xdp]
pub fn isolator(ctx: XdpContext) -> u32 {
    let decision = isolator::decide(&ctx);
    stats::record(&ctx, &decision);
    match decision.verdict {
        Verdict::Pass(_) => xdp_action::XDP_PASS,
        Verdict::Drop(_) => xdp_action::XDP_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
