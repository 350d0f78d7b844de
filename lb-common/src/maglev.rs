//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights, and
//! the flow hash that indexes the table.
//!
//! User space fills a lookup table of prime size `M` (65537 by default) with
//! backend indices; the kernel picks `table[flow_hash % M]` for a new flow.
//! Every backend walks its own permutation of the slots (`offset`, `skip`
//! derived from its stable key), taking turns in proportion to its weight,
//! so shares follow the weights and a change in the backend set moves few
//! slots. Two edge hosts with the same backends build the same table: a
//! failover keeps most flows on the same backend without shared state.
//!
//! The builder needs no allocator: the caller lends the scratch buffers
//! ([`build`]), so it runs in `no_std` tests and user space alike.

/// Default table size: a prime, so every `skip` is coprime with it.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Largest table size accepted (a prime); bounds the kernel map.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// A table slot no backend took (only when no backend has weight > 0).
pub const EMPTY: u32 = u32::MAX;

/// One backend as the builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// A stable identity (e.g. a hash of the backend address): the same key
    /// gets the same permutation on every host and every rebuild.
    pub key: u64,
    /// Relative share of new flows; 0 = no new flows (draining).
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime in `3..=MAX_TABLE_SIZE`.
    SizeNotPrime(u32),
    /// `table` or the scratch buffers have the wrong length.
    BufferLength,
    /// No backend has a weight above zero: nothing to fill the table with.
    NoBackends,
}

/// Is `n` prime? (Trial division: `n` is at most [`MAX_TABLE_SIZE`].)
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while d as u64 * d as u64 <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// SplitMix64's finaliser: a strong 64-bit mix for the backend permutations.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The (offset, skip) of a backend's permutation in a table of size `m`.
pub const fn permutation(key: u64, m: u32) -> (u64, u64) {
    let offset = mix64(key ^ 0x6d61_676c_6576_3031) % m as u64;
    let skip = mix64(key ^ 0x736b_6970_5f5f_3032) % (m as u64 - 1) + 1;
    (offset, skip)
}

/// Fills `table` (its length is the prime table size) with indices into
/// `backends`. `next` and `credit` are scratch, one entry per backend.
pub fn build(
    backends: &[Backend],
    table: &mut [u32],
    next: &mut [u64],
    credit: &mut [u64],
) -> Result<(), MaglevError> {
    let m = table.len();
    if m > MAX_TABLE_SIZE as usize || m < 3 || !is_prime(m as u32) {
        return Err(MaglevError::SizeNotPrime(m as u32));
    }
    if next.len() != backends.len() || credit.len() != backends.len() {
        return Err(MaglevError::BufferLength);
    }
    let max_weight = backends.iter().map(|b| b.weight).max().unwrap_or(0);
    if max_weight == 0 {
        return Err(MaglevError::NoBackends);
    }
    table.fill(EMPTY);
    next.fill(0);
    credit.fill(0);
    let mut filled = 0;
    loop {
        for (i, b) in backends.iter().enumerate() {
            if b.weight == 0 {
                continue;
            }
            // Weighted turns: a backend of maximal weight takes one slot per
            // round, the others accumulate credit and take theirs when it
            // reaches a whole turn.
            credit[i] += u64::from(b.weight);
            while credit[i] >= u64::from(max_weight) {
                credit[i] -= u64::from(max_weight);
                let (offset, skip) = permutation(b.key, m as u32);
                let mut slot = ((offset + next[i] * skip) % m as u64) as usize;
                while table[slot] != EMPTY {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % m as u64) as usize;
                }
                table[slot] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return Ok(());
                }
            }
        }
    }
}

/// Hash of a flow's 5-tuple (addresses as 16 bytes, IPv4 in the first
/// four), the same in the kernel and in user space: murmur3's 32-bit block
/// mixing over the tuple's words, then its finaliser.
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], dst: &[u8; 16], src_port: u16, dst_port: u16, proto: u8, seed: u32) -> u32 {
    #[inline(always)]
    fn round(h: u32, k: u32) -> u32 {
        let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
        (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
    }
    let mut h = seed;
    let mut i = 0;
    while i < 16 {
        h = round(h, u32::from_le_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]));
        h = round(h, u32::from_le_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]));
        i += 4;
    }
    h = round(h, (u32::from(src_port) << 16) | u32::from(dst_port));
    h = round(h, u32::from(proto));
    h ^= 37;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    fn table(backends: &[Backend], m: u32) -> Vec<u32> {
        let mut t = vec![0; m as usize];
        let (mut next, mut credit) = (vec![0; backends.len()], vec![0; backends.len()]);
        build(backends, &mut t, &mut next, &mut credit).unwrap();
        t
    }

    fn shares(t: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        t.iter().for_each(|&i| c[i as usize] += 1);
        c
    }

    fn equal(n: u64) -> Vec<Backend> {
        (0..n).map(|i| Backend { key: 1000 + i, weight: 1 }).collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(DEFAULT_TABLE_SIZE) && is_prime(MAX_TABLE_SIZE) && is_prime(251));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(9));
    }

    #[test]
    fn rejects_bad_input() {
        let b = equal(2);
        let mut t = vec![0; 65_536];
        assert_eq!(build(&b, &mut t, &mut [0; 2], &mut [0; 2]), Err(MaglevError::SizeNotPrime(65_536)));
        let mut t = vec![0; 251];
        assert_eq!(build(&b, &mut t, &mut [0; 1], &mut [0; 2]), Err(MaglevError::BufferLength));
        let drained = [Backend { key: 1, weight: 0 }];
        assert_eq!(build(&drained, &mut t, &mut [0; 1], &mut [0; 1]), Err(MaglevError::NoBackends));
    }

    #[test]
    fn equal_weights_share_evenly_and_fill_every_slot() {
        for n in [1u64, 3, 7, 100] {
            let t = table(&equal(n), DEFAULT_TABLE_SIZE);
            assert!(t.iter().all(|&i| (i as u64) < n));
            let s = shares(&t, n as usize);
            let ideal = DEFAULT_TABLE_SIZE as f64 / n as f64;
            for c in s {
                assert!((c as f64 - ideal).abs() <= ideal * 0.01 + 1.0, "n={n}: {c} vs {ideal}");
            }
        }
    }

    #[test]
    fn weights_set_the_shares_and_zero_takes_nothing() {
        let b = [
            Backend { key: 1, weight: 1 },
            Backend { key: 2, weight: 2 },
            Backend { key: 3, weight: 3 },
            Backend { key: 4, weight: 0 },
        ];
        let s = shares(&table(&b, DEFAULT_TABLE_SIZE), 4);
        assert_eq!(s[3], 0);
        for (i, w) in [(0, 1.0), (1, 2.0), (2, 3.0)] {
            let ideal = DEFAULT_TABLE_SIZE as f64 * w / 6.0;
            assert!((s[i] as f64 - ideal).abs() <= ideal * 0.01, "backend {i}: {} vs {ideal}", s[i]);
        }
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_own_slots() {
        let before = equal(10);
        let t1 = table(&before, DEFAULT_TABLE_SIZE);
        let after: Vec<Backend> = before.iter().copied().filter(|b| b.key != 1004).collect();
        let t2 = table(&after, DEFAULT_TABLE_SIZE);
        // Compare by key: indices shift when a backend leaves the list.
        let key1 = |i: u32| before[i as usize].key;
        let key2 = |i: u32| after[i as usize].key;
        let moved = t1.iter().zip(&t2).filter(|(a, b)| key1(**a) != 1004 && key1(**a) != key2(**b)).count();
        // Maglev trades a little disruption for balance; the paper sees a
        // few percent. Slots of the survivors must almost all stay put.
        std::println!("removing 1 of 10 backends moved {moved} of the survivors' slots");
        assert!(moved < DEFAULT_TABLE_SIZE as usize / 20, "{moved} slots of surviving backends moved");
    }

    #[test]
    fn same_backends_same_table() {
        assert_eq!(table(&equal(5), 251), table(&equal(5), 251));
    }

    #[test]
    fn flow_hash_spreads_and_depends_on_every_field() {
        let a = [10u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10u8, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let base = flow_hash(&a, &b, 1000, 443, 6, 0);
        assert_ne!(base, flow_hash(&b, &a, 1000, 443, 6, 0));
        assert_ne!(base, flow_hash(&a, &b, 1001, 443, 6, 0));
        assert_ne!(base, flow_hash(&a, &b, 1000, 80, 6, 0));
        assert_ne!(base, flow_hash(&a, &b, 1000, 443, 17, 0));
        assert_ne!(base, flow_hash(&a, &b, 1000, 443, 6, 1));
        // Source ports of one client spread evenly over a 3-backend table.
        let t = table(&equal(3), DEFAULT_TABLE_SIZE);
        let mut c = [0usize; 3];
        for port in 20_000..50_000u16 {
            c[t[(flow_hash(&a, &b, port, 443, 6, 0) % DEFAULT_TABLE_SIZE) as usize] as usize] += 1;
        }
        for n in c {
            assert!((n as f64 - 10_000.0).abs() < 300.0, "{c:?}");
        }
    }
}
