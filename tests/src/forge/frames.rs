//! The segments of the forging tests: replies to every port of a range,
//! and RSTs and FINs whose sequence numbers a blind attacker could pick.
//!
//! Sequence numbers are chosen relative to the values the connection really
//! has (read from the wire, [`super::wire::Seqs`]) so that the test knows
//! which forged segments a correct window check lets through:
//! - [`sweep`] steps the whole 2^32 space evenly and never hits the exact
//!   value (a RST with the exact value is, by RFC 5961, a real reset);
//!   in-window ones among them are the ones an endpoint answers with a
//!   challenge ACK.
//! - [`far`] stays about 2^31 away from the real value, outside any window
//!   a TCP can advertise (at most 2^30 with window scaling), so none of
//!   them may change the connection's state, FINs included.

use std::ops::RangeInclusive;

use crate::rawframe::L4;

/// TCP flags.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A TCP segment.
pub fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> L4 {
    L4::Tcp { sport, dport, seq, ack, flags, window: 8192, payload: payload.to_vec() }
}

/// One segment to every port of `ports` (`make(port)`).
pub fn to_every_port(ports: RangeInclusive<u16>, make: impl Fn(u16) -> L4) -> impl Iterator<Item = L4> {
    ports.map(make)
}

/// `n` sequence numbers (a power of two) spread evenly over the whole
/// space, offset by half a step from `exact` so that none is `exact`.
pub fn sweep(exact: u32, n: u32) -> impl Iterator<Item = u32> {
    assert!(n.is_power_of_two() && n >= 2, "a power of two: {n}");
    let step = (1u64 << 32) / u64::from(n);
    let start = exact.wrapping_add((step / 2) as u32);
    (0..u64::from(n)).map(move |k| start.wrapping_add((k * step) as u32))
}

/// `n` sequence numbers `step` apart, centred on `real + 2^31`: all at
/// least `2^31 - n/2 * step` away from `real` either way.
pub fn far(real: u32, n: u32, step: u32) -> impl Iterator<Item = u32> {
    let first = real.wrapping_add(1 << 31).wrapping_sub((n / 2).wrapping_mul(step));
    (0..n).map(move |k| first.wrapping_add(k.wrapping_mul(step)))
}

/// The distance between two sequence numbers, whichever way is shorter.
pub fn distance(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b).min(b.wrapping_sub(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_covers_the_space_and_misses_the_exact_value() {
        for exact in [0u32, 1, 0x8000_0000, u32::MAX, 0x1234_5678] {
            let s: Vec<u32> = sweep(exact, 65536).collect();
            assert_eq!(s.len(), 65536);
            assert!(s.iter().all(|&q| q != exact));
            // Every 64 KiB of the space holds one, half a step from exact.
            assert!(s.iter().all(|&q| q.wrapping_sub(exact) % 65536 == 32768));
            let mut sorted = s.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 65536);
        }
    }

    #[test]
    fn far_values_are_outside_any_window() {
        for real in [0u32, 0xffff_fff0, 0x7fff_ffff] {
            assert!(far(real, 4096, 65536).all(|q| distance(q, real) >= (1 << 31) - (1 << 27)));
        }
    }
}
