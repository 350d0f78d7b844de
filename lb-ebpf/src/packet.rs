//! Bounds-checked reads from the packet. Every read proves to the verifier
//! that it stays inside `[data, data_end)`; a read past the end is `None`,
//! which the caller turns into a verdict — never `XDP_ABORTED`. Writes are
//! checked the same way.

use aya_ebpf::programs::XdpContext;

/// No packet offset can exceed this: XDP without multi-buffer sees one page.
/// Bounding offsets lets the verifier accept variable ones.
const MAX_OFFSET: usize = 4096;

/// Returns `x`, unknown to the optimiser.
#[inline(always)]
pub fn opaque(mut x: usize) -> usize {
    // SAFETY: an empty asm block that only "modifies" a register.
    unsafe { core::arch::asm!("/* {0} */", inout(reg) x, options(nomem, nostack, pure)) };
    x
}

/// The linear packet data of one frame.
///
/// There is no single-byte read on purpose: LLVM rewrites `p + 1 > end` as
/// `p >= end`, which the verifier does not accept as a bounds check for a
/// variable offset. Bytes are read in pairs (callers only ever need a byte
/// that has a neighbour inside the same header).
#[derive(Clone, Copy)]
pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end() }
    }

    /// [`Packet::new`] for code where LLVM, knowing the context's fields
    /// are 32 bits, would spill the packet pointers as 32-bit values, which
    /// the verifier refuses ("invalid size of register spill"): the barrier
    /// makes them full 64-bit values.
    #[inline(always)]
    pub fn new_opaque(ctx: &XdpContext) -> Self {
        Self { start: opaque(ctx.data()), end: opaque(ctx.data_end()) }
    }

    /// Frame length in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// A pointer to `N` bytes at `off`, if they are all inside the packet.
    #[inline(always)]
    pub fn at<const N: usize>(&self, off: usize) -> Option<*const [u8; N]> {
        // The decision code compares offsets with `len()` as integers; from
        // those comparisons LLVM would prove this pointer check redundant and
        // drop it, but the verifier only trusts pointer comparisons. Hiding
        // the offset's origin from LLVM keeps the check in the program.
        let off = opaque(off);
        if off > MAX_OFFSET {
            return None;
        }
        let p = self.start + off;
        if p + N > self.end {
            return None;
        }
        Some(p as *const [u8; N])
    }

    #[inline(always)]
    pub fn be16_at(&self, off: usize) -> Option<u16> {
        // SAFETY: `at` checked both bytes are inside the packet.
        self.at::<2>(off).map(|p| u16::from_be_bytes(unsafe { *p }))
    }

    #[inline(always)]
    pub fn be32_at(&self, off: usize) -> Option<u32> {
        // SAFETY: `at` checked all four bytes are inside the packet.
        self.at::<4>(off).map(|p| u32::from_be_bytes(unsafe { *p }))
    }

    /// Writes `bytes` at `off`; `None` (nothing written) if they do not
    /// fit inside the packet.
    #[inline(always)]
    pub fn write<const N: usize>(&self, off: usize, bytes: [u8; N]) -> Option<()> {
        let p = self.at::<N>(off)? as *mut [u8; N];
        // SAFETY: `at` checked all `N` bytes are inside the packet, which
        // XDP may write; `[u8; N]` has no alignment requirement.
        unsafe { *p = bytes };
        Some(())
    }

    #[inline(always)]
    pub fn bytes_at<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `at` checked all `N` bytes are inside the packet.
        self.at::<N>(off).map(|p| unsafe { *p })
    }
}
