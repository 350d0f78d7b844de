//! The benchmark's baselines: what any XDP program costs at least.
//!
//! - `bench_pass`: returns `XDP_PASS` (the floor of a program run).
//! - `bench_swap_tx`: parses Ethernet, IPv4 or IPv6 and TCP, swaps the MAC
//!   addresses and returns `XDP_TX` — the cheapest "forwarding" program.
//! - `bench_restore`: the harness around a program that rewrites packets.
//!   BPF_PROG_TEST_RUN repeats a program on one buffer, so from the second
//!   repeat on a rewriting program would see its own output (a NAT'd or
//!   encapsulated packet). `bench_restore` puts the saved input frame back
//!   before every repeat, optionally makes each repeat a new flow, and
//!   tail-calls the program under test (slot 0 of `BENCH_TARGET`). Its own
//!   cost is measured by pointing it at `bench_pass`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

/// Longest frame `bench_restore` can restore (a power of two: lengths and
/// offsets are masked with it so the verifier knows their bounds).
pub const FRAME_MAX: usize = 256;

/// The frame to restore, as user space writes it (the benchmark's
/// `xdp.rs` has the same layout).
#[repr(C)]
pub struct Input {
    /// Frame length, 1..=[`FRAME_MAX`].
    pub len: u32,
    /// Offset of a 16-bit big-endian field (a source port) that gets the
    /// repeat number added, so every repeat is a new flow; 0: unchanged.
    pub vary_at: u32,
    /// Offset of the checksum covering that field (updated incrementally).
    pub csum_at: u32,
    pub _pad: u32,
    pub bytes: [u8; FRAME_MAX],
}

#[map]
static BENCH_INPUT: Array<Input> = Array::with_max_entries(1, 0);

#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Repeats so far on this CPU (the new-flow counter; never reset, since
/// only distinctness within one test run matters).
#[map]
static BENCH_REPEATS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_some() {
        // SAFETY: a tail call either does not return or fails harmlessly.
        unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    }
    // Restoring or the tail call failed: the benchmark refuses the row.
    xdp_action::XDP_ABORTED
}

/// Puts the saved frame back where the previous repeat's program left the
/// buffer (the programs under test only ever move the head).
#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let input = BENCH_INPUT.get_ptr(0)?;
    // SAFETY: a live map value, written only by user space between runs.
    let input = unsafe { &*input };
    // The mask is what tells the verifier the copy stays inside `bytes`.
    let len = ((input.len.wrapping_sub(1)) & (FRAME_MAX as u32 - 1)) + 1;
    let now = (ctx.data_end() - ctx.data()) as i32;
    if now != len as i32 {
        // Positive: the program grew the head (encapsulation); shrink it back.
        // SAFETY: the helper checks the new head against the buffer.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, now - len as i32) } != 0 {
            return None;
        }
        if ctx.data_end() - ctx.data() != len as usize {
            return None;
        }
    }
    // SAFETY: `len` bytes of `input.bytes` are readable; the helper checks
    // the packet side.
    let copied = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, input.bytes.as_ptr() as *mut _, len) };
    if copied != 0 {
        return None;
    }
    if input.vary_at != 0 {
        vary(ctx, input)?;
    }
    Some(())
}

/// Adds this repeat's number to the 16-bit field at `vary_at` and fixes
/// the checksum at `csum_at` incrementally (RFC 1624), so the packet stays
/// valid and each repeat is a flow the program has not seen.
#[inline(always)]
fn vary(ctx: &XdpContext, input: &Input) -> Option<()> {
    let n = BENCH_REPEATS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; test runs do not migrate mid-run.
    let n = unsafe {
        *n = (*n).wrapping_add(1);
        *n
    };
    let field = at(ctx, input.vary_at)?;
    let csum = at(ctx, input.csum_at)?;
    // SAFETY: `at` checked both bytes of each are inside the packet.
    unsafe {
        let old = u16::from_be_bytes(*field);
        let new = old.wrapping_add(n as u16);
        *field = new.to_be_bytes();
        let sum = u32::from(!u16::from_be_bytes(*csum)) + u32::from(!old) + u32::from(new);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        *csum = (!(sum as u16)).to_be_bytes();
    }
    Some(())
}

/// Two packet bytes at `off` (below [`FRAME_MAX`]), if inside the packet.
#[inline(always)]
fn at(ctx: &XdpContext, off: u32) -> Option<*mut [u8; 2]> {
    let p = ctx.data() + (off as usize & (FRAME_MAX - 1));
    if p + 2 > ctx.data_end() {
        return None;
    }
    Some(p as *mut [u8; 2])
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_swap_tx(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 > end {
        return xdp_action::XDP_PASS;
    }
    let p = start as *mut u8;
    // SAFETY: every read and write below is inside [start, end), checked
    // before it.
    unsafe {
        let l4 = match u16::from_be_bytes([*p.add(12), *p.add(13)]) {
            0x0800 => {
                if start + 34 > end || *p.add(23) != 6 {
                    return xdp_action::XDP_PASS;
                }
                14 + usize::from(*p.add(14) & 0x0f) * 4
            }
            0x86dd => {
                if start + 54 > end || *p.add(20) != 6 {
                    return xdp_action::XDP_PASS;
                }
                54
            }
            _ => return xdp_action::XDP_PASS,
        };
        if start + l4 + 20 > end {
            return xdp_action::XDP_PASS;
        }
        for i in 0..6 {
            let a = *p.add(i);
            *p.add(i) = *p.add(6 + i);
            *p.add(6 + i) = a;
        }
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
