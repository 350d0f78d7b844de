//! Internet checksum arithmetic (RFC 1071) with incremental updates
//! (RFC 1624), shared by the kernel's rewrites and the model.
//!
//! Folds are written out twice instead of looped: every sum here has at
//! most a few dozen 16-bit terms, which two folds always reduce.

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub const fn fold(s: u32) -> u16 {
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Folds a 64-bit one's-complement sum to 16 bits.
#[inline(always)]
pub const fn fold64(s: u64) -> u16 {
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    fold(s as u32)
}

/// Adds `bytes` (an even number of them) as big-endian 16-bit words.
#[inline(always)]
pub fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The checksum after a 16-bit word of the covered data changed from
/// `old` to `new` (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The checksum after `N` bytes (`N` even) changed from `old` to `new`.
#[inline(always)]
pub fn update_bytes<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = u32::from(!check);
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    !fold(sum)
}

/// A UDP checksum after an update: 0 means "no checksum" on the wire, so
/// a computed 0 is sent as its other representation, 0xffff (RFC 768).
#[inline(always)]
pub const fn udp_nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

/// The checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(header: &[u8; 20]) -> u16 {
    !fold(sum_words(header, 0))
}

/// An incremental checksum update over words as they lie in memory
/// (`from_ne_bytes`): the one's-complement sum does not depend on byte
/// order (RFC 1071 2(B)), so the kernel can update a checksum a 32-bit
/// word at a time, reading and writing the checksum in memory order too.
/// The result equals [`update_bytes`] over the same bytes.
#[derive(Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    /// A 32-bit word of the covered data changed from `old` to `new`.
    #[inline(always)]
    pub fn word32(&mut self, old: u32, new: u32) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A 16-bit word of the covered data changed from `old` to `new`.
    #[inline(always)]
    pub fn word16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// The checksum `check` (in memory order) after the changes.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold64(u64::from(!check) + self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(bytes: &[u8]) -> u16 {
        !fold(sum_words(bytes, 0))
    }

    #[test]
    fn incremental_matches_full_recompute() {
        // An IPv4 header (RFC 1071's example data, padded to a header).
        let mut h = [0x45u8, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7];
        let c = ipv4_header(&h);
        assert_eq!(c, 0xb861);
        let old: [u8; 4] = [0xc0, 0xa8, 0, 0xc7];
        let new: [u8; 4] = [10, 0, 3, 2];
        h[16..20].copy_from_slice(&new);
        assert_eq!(update_bytes(c, &old, &new), ipv4_header(&h));
        let old_ttl = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new_ttl = u16::from_be_bytes([h[8], h[9]]);
        let c2 = update16(update_bytes(c, &old, &new), old_ttl, new_ttl);
        assert_eq!(c2, ipv4_header(&h));
        h[10..12].copy_from_slice(&c2.to_be_bytes());
        assert_eq!(full(&h), 0, "a header with its checksum sums to zero");
    }

    #[test]
    fn udp_zero_is_sent_as_ffff() {
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(0x1234), 0x1234);
    }

    #[test]
    fn word_deltas_in_memory_order_match_the_byte_update() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let ne32 = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        for _ in 0..100_000 {
            let check: u16 = rng.gen();
            let old: [u8; 8] = rng.gen();
            let new: [u8; 8] = rng.gen();
            let (o16, n16): (u16, u16) = (rng.gen(), rng.gen());
            let want = update16(update_bytes(check, &old, &new), o16, n16);
            let mut d = Delta::default();
            d.word32(ne32(&old[..4]), ne32(&new[..4]));
            d.word32(ne32(&old[4..]), ne32(&new[4..]));
            d.word16(u16::from_ne_bytes(o16.to_be_bytes()), u16::from_ne_bytes(n16.to_be_bytes()));
            let got = d.apply(u16::from_ne_bytes(check.to_be_bytes()));
            assert_eq!(got.to_ne_bytes(), want.to_be_bytes(), "check {check:#x} old {old:?} new {new:?}");
        }
    }
}
