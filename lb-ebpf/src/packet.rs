//! The header layer: bounds-checked access to the packet. A header is
//! checked once as a whole ([`Packet::header`]) and then read and written
//! by field name through `network-types`' structs; a header past the end
//! is `None`, which the caller turns into a verdict — never `XDP_ABORTED`.

use aya_ebpf::programs::XdpContext;
pub use network_types::{
    icmp::{Icmpv4Hdr, Icmpv6Hdr},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};
use lb_common::wire::offset;

/// A header struct that may be laid over the packet at any offset.
///
/// # Safety
/// Every bit pattern is a valid value and the alignment is 1: a reference
/// to one may point anywhere into the packet.
pub unsafe trait Header: Sized {}

// SAFETY (all): `#[repr(C)]` structs of `u8` and `[u8; N]` fields only
// (`TcpHdr`'s bit field is a `[u8; 2]`).
unsafe impl Header for Ipv4Hdr {}
unsafe impl Header for Ipv6Hdr {}
unsafe impl Header for TcpHdr {}
unsafe impl Header for Icmpv4Hdr {}
unsafe impl Header for Icmpv6Hdr {}
unsafe impl Header for Ports {}
unsafe impl Header for Macs {}
unsafe impl Header for Frag6Hdr {}
unsafe impl Header for ExtHdr {}

/// The ports at the start of both TCP and UDP headers: all the balancer
/// reads of a packet before it knows the packet is a service's.
#[repr(C)]
pub struct Ports {
    pub source: [u8; 2],
    pub dest: [u8; 2],
}

impl Ports {
    #[inline(always)]
    pub fn source(&self) -> u16 {
        u16::from_be_bytes(self.source)
    }
    #[inline(always)]
    pub fn dest(&self) -> u16 {
        u16::from_be_bytes(self.dest)
    }
    /// Both ports as one word in memory order.
    #[inline(always)]
    pub fn word(&self) -> u32 {
        crate::bytes::word(self.as_bytes())
    }
    /// Sets both ports from one word in memory order.
    #[inline(always)]
    pub fn set_word(&mut self, v: u32) {
        // SAFETY: `Ports` is `#[repr(C)]`, 4 bytes of `u8`.
        crate::bytes::set_word(unsafe { &mut *(self as *mut Ports as *mut [u8; 4]) }, v)
    }
    #[inline(always)]
    fn as_bytes(&self) -> &[u8; 4] {
        // SAFETY: as above.
        unsafe { &*(self as *const Ports as *const [u8; 4]) }
    }
}

/// An Ethernet header's two MAC addresses. (`network-types`' `EthHdr`
/// keeps its EtherType as a `u16`, so it may not be laid over a frame
/// whose start is not 2-aligned; the EtherType is read on its own, by
/// [`Packet::ethertype`].)
#[repr(C)]
pub struct Macs {
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

/// The IPv6 fragment extension header (RFC 8200 4.5), which
/// `network-types` does not have.
#[repr(C)]
pub struct Frag6Hdr {
    pub next_hdr: u8,
    pub reserved: u8,
    /// Offset in bytes (the low three bits are flags), and M.
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

/// The generic start of an IPv6 extension header: the next header and
/// the length in 8-byte units after the first eight (RFC 8200 4.2).
#[repr(C)]
pub struct ExtHdr {
    pub next_hdr: u8,
    pub len: u8,
}

/// Two fields side by side (`M` = 2 `N`), as a checksum update takes
/// them.
#[inline(always)]
pub fn concat<const N: usize, const M: usize>(a: &[u8; N], b: &[u8; N]) -> [u8; M] {
    let mut out = [0u8; M];
    out[..N].copy_from_slice(a);
    out[N..].copy_from_slice(b);
    out
}

// The IPv6 extension headers above are the kernel's own; the model reads
// the same fields by the shared offsets, so the two must agree.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Frag6Hdr, next_hdr) == offset::FRAG6_NEXT);
    assert!(offset_of!(Frag6Hdr, offset_flags) == offset::FRAG6_OFFSET);
    assert!(offset_of!(Frag6Hdr, id) == offset::FRAG6_ID);
    assert!(offset_of!(ExtHdr, next_hdr) == offset::EXT_NEXT);
    assert!(offset_of!(ExtHdr, len) == offset::EXT_LEN);
};

/// A TCP header's flags byte (`network-types` offers them bit by bit).
#[inline(always)]
pub fn tcp_flags(t: &TcpHdr) -> u8 {
    // SAFETY: the flags byte is inside the header struct.
    unsafe { *(t as *const TcpHdr as *const u8).add(offset::TCP_FLAGS) }
}

/// A TCP header's length in bytes, from its data offset.
#[inline(always)]
pub fn tcp_header_len(t: &TcpHdr) -> usize {
    usize::from(t.doff()) * 4
}

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

    /// The address of `len` bytes at `off`, if they are all inside the
    /// packet.
    #[inline(always)]
    fn span(&self, off: usize, len: usize) -> Option<usize> {
        // The decision code compares offsets with `len()` as integers; from
        // those comparisons LLVM would prove this pointer check redundant and
        // drop it, but the verifier only trusts pointer comparisons. Hiding
        // the offset's origin from LLVM keeps the check in the program.
        let off = opaque(off);
        if off > MAX_OFFSET {
            return None;
        }
        let p = self.start + off;
        if p + len > self.end {
            return None;
        }
        Some(p)
    }

    /// A pointer to `N` bytes at `off`, if they are all inside the packet.
    #[inline(always)]
    pub fn at<const N: usize>(&self, off: usize) -> Option<*const [u8; N]> {
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

    /// The header at `off`, checked whole.
    #[inline(always)]
    pub fn header<T: Header>(&self, off: usize) -> Option<&T> {
        // SAFETY: all of `T` is inside the packet, and any bytes at any
        // address are a valid `T` (`Header`).
        self.span(off, core::mem::size_of::<T>()).map(|p| unsafe { &*(p as *const T) })
    }

    /// The header at `off` for writing, checked whole. XDP may write the
    /// packet; the caller holds no other reference into these bytes.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn header_mut<T: Header>(&self, off: usize) -> Option<&mut T> {
        // SAFETY: as for `header`.
        self.span(off, core::mem::size_of::<T>()).map(|p| unsafe { &mut *(p as *mut T) })
    }

    /// The EtherType of an untagged frame (host byte order).
    #[inline(always)]
    pub fn ethertype(&self) -> Option<u16> {
        self.be16_at(offset::ETH_TYPE)
    }

    #[inline(always)]
    pub fn be16_at(&self, off: usize) -> Option<u16> {
        // SAFETY: `at` checked both bytes are inside the packet.
        self.at::<2>(off).map(|p| u16::from_be_bytes(unsafe { *p }))
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
