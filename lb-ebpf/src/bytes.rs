//! Copies of addresses and MACs in machine words.
//!
//! LLVM's BPF backend lowers `memset` and `memmove` (which it picks for a
//! copy between two pointers it cannot tell apart, such as the packet and
//! a map value) to calls of byte-at-a-time loops: a 16-byte address cost a
//! call and about 130 instructions, and the hot path had nine such calls.
//! And a header field in the packet has alignment 1 to the compiler, so
//! LLVM assembles every word it reads there from single bytes.
//!
//! These helpers move whole words with one instruction each, written in
//! assembly: an unaligned word access is one instruction on the machines
//! XDP runs on, and the verifier accepts it for packet and map-value
//! pointers, but not for the stack. (LLVM's `allows-misaligned-mem-access`
//! would do the same everywhere, and then also merges stack stores across
//! alignment, which the verifier refuses.) Use them only on packet and
//! map-value memory.

use core::arch::asm;

macro_rules! load {
    ($name:ident, $t:ty, $size:literal) => {
        /// One unaligned load. Safety: `p` points to that many readable
        /// packet or map-value bytes (not the stack).
        #[inline(always)]
        unsafe fn $name(p: *const u8) -> $t {
            let v: $t;
            // SAFETY: as the caller promises.
            unsafe { asm!(concat!("{v} = *(", $size, " *)({p} + 0)"), p = in(reg) p, v = lateout(reg) v, options(pure, readonly, nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! store {
    ($name:ident, $t:ty, $size:literal) => {
        /// One unaligned store. Safety: `p` points to that many writable
        /// packet or map-value bytes (not the stack).
        #[inline(always)]
        unsafe fn $name(p: *mut u8, v: $t) {
            // SAFETY: as the caller promises.
            unsafe { asm!(concat!("*(", $size, " *)({p} + 0) = {v}"), p = in(reg) p, v = in(reg) v, options(nostack, preserves_flags)) };
        }
    };
}

load!(load64, u64, "u64");
load!(load32, u32, "u32");
load!(load16, u16, "u16");
store!(store64, u64, "u64");
store!(store32, u32, "u32");
store!(store16, u16, "u16");

/// `src` into `dst`, as two 8-byte words.
#[inline(always)]
pub fn copy16(dst: &mut [u8; 16], src: &[u8; 16]) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: both arrays are 16 bytes (packet or map memory, per the
    // module's rule).
    unsafe {
        store64(d, load64(s));
        store64(d.add(8), load64(s.add(8)));
    }
}

/// An IPv4 address into a 16-byte address key (the rest zero), as two
/// 8-byte words.
#[inline(always)]
pub fn set_v4(dst: &mut [u8; 16], src: &[u8; 4]) {
    let d = dst.as_mut_ptr();
    // SAFETY: 4 bytes read, 16 written. The low four bytes of a
    // little-endian word come first in memory.
    unsafe {
        store64(d, u64::from(load32(src.as_ptr())));
        store64(d.add(8), 0);
    }
}

/// A MAC address, as a 4-byte and a 2-byte word.
#[inline(always)]
pub fn copy6(dst: &mut [u8; 6], src: &[u8; 6]) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: both arrays are 6 bytes.
    unsafe {
        store32(d, load32(s));
        store16(d.add(4), load16(s.add(4)));
    }
}

/// Whether two MAC addresses are equal, compared as a 4-byte and a
/// 2-byte word.
#[inline(always)]
pub fn eq6(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: both arrays are 6 bytes.
    unsafe { load32(a) == load32(b) && load16(a.add(4)) == load16(b.add(4)) }
}

/// Whether two 16-byte addresses are equal, compared as two 8-byte words.
#[inline(always)]
pub fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: both arrays are 16 bytes.
    unsafe { load64(a) == load64(b) && load64(a.add(8)) == load64(b.add(8)) }
}

/// The first four bytes of `a` (an IPv4 address, or the first word of an
/// address key) as a word in memory order.
#[inline(always)]
pub fn word<const N: usize>(a: &[u8; N]) -> u32 {
    const { assert!(N >= 4) };
    // SAFETY: 4 of the array's at least 4 bytes.
    unsafe { load32(a.as_ptr()) }
}

/// Stores `words` (in memory order) at `dst`, which has room for them.
///
/// # Safety
/// `dst` points to `4 * N` writable packet or map-value bytes.
#[inline(always)]
pub unsafe fn store_words<const N: usize>(dst: *mut u8, words: [u32; N]) {
    let mut i = 0;
    while i < N {
        // SAFETY: inside the `4 * N` bytes the caller promises.
        unsafe { store32(dst.add(4 * i), words[i]) };
        i += 1;
    }
}

/// Stores a word (in memory order) into four bytes.
#[inline(always)]
pub fn set_word(a: &mut [u8; 4], v: u32) {
    // SAFETY: the array's 4 bytes.
    unsafe { store32(a.as_mut_ptr(), v) }
}

/// Two bytes as a 16-bit word in memory order.
#[inline(always)]
pub fn ne16(a: &[u8; 2]) -> u16 {
    // SAFETY: the array's 2 bytes.
    unsafe { load16(a.as_ptr()) }
}

/// Stores a 16-bit word (in memory order) into two bytes.
#[inline(always)]
pub fn set_ne16(a: &mut [u8; 2], v: u16) {
    // SAFETY: the array's 2 bytes.
    unsafe { store16(a.as_mut_ptr(), v) }
}

/// A 16-byte address as four words in memory order.
#[inline(always)]
pub fn words16(a: &[u8; 16]) -> [u32; 4] {
    let p = a.as_ptr();
    // SAFETY: the array's 16 bytes.
    unsafe { [load32(p), load32(p.add(4)), load32(p.add(8)), load32(p.add(12))] }
}
