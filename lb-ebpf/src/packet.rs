//! Bounds-checked reads from the packet. Every read proves to the verifier
//! that it stays inside `[data, data_end)`; a read past the end is `None`,
//! which the caller turns into a verdict — never `XDP_ABORTED`.

use aya_ebpf::programs::XdpContext;

/// No packet offset can exceed this: XDP without multi-buffer sees one page.
/// Bounding offsets lets the verifier accept variable ones.
const MAX_OFFSET: usize = 4096;

/// The linear packet data of one frame.
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

    /// Frame length in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// A pointer to `N` bytes at `off`, if they are all inside the packet.
    #[inline(always)]
    fn at<const N: usize>(&self, off: usize) -> Option<*const [u8; N]> {
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
    pub fn u8_at(&self, off: usize) -> Option<u8> {
        // SAFETY: `at` checked the byte is inside the packet.
        self.at::<1>(off).map(|p| unsafe { (*p)[0] })
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

    #[inline(always)]
    pub fn bytes_at<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `at` checked all `N` bytes are inside the packet.
        self.at::<N>(off).map(|p| unsafe { *p })
    }
}
