//! Firewall rules per VIP: `allow` and `deny` lists of client prefixes,
//! checked by the balancer on every packet of a VIP that has rules.
//!
//! # Semantics
//!
//! - No rules: everyone may use the VIP (and the VIP pays nothing: its
//!   services' [`Service::firewall`](crate::balancer::Service::firewall)
//!   byte is 0, and the trie is not read).
//! - A `deny` prefix that contains the source drops the packet, whatever
//!   the `allow` list says: deny wins over allow.
//! - With an `allow` list, a source no `allow` prefix contains is dropped
//!   ("not allowed"); without one, a source no `deny` prefix contains
//!   passes.
//!
//! A drop is counted in [`MAP_FIREWALL_DROPS`](crate::balancer::MAP_FIREWALL_DROPS):
//! at the longest `deny` prefix that contains the source, or at the VIP's
//! own slot ([`not_allowed_slot`]) for a source outside the `allow` list.
//!
//! # How the rules are laid out
//!
//! One longest-prefix trie per family serves every VIP: the key is the
//! isolator's source key ([`SourceV4`] / [`SourceV6`]) with the VIP's index
//! (the one of its Maglev tables, < [`MAX_VIPS`]) in place of the policy
//! slot, so a VIP's prefixes never match another VIP's packets. The trie
//! answers only the *longest* prefix, but deny must win over a longer
//! `allow` nested in a shorter `deny`: user space therefore writes such an
//! `allow` prefix as a drop counted at that `deny` ([`trie_value`]), and
//! one lookup decides ([`judge`]). [`verdict`] is the same decision read
//! from the rules themselves: the model's, which the kernel's trie must
//! match.

use crate::balancer::MAX_VIPS;
pub use crate::isolator::{SourceV4, SourceV6, SOURCE_SLOT_BITS as VIP_BITS};
use crate::wire::FAMILY_V4;

/// [`Service::firewall`](crate::balancer::Service::firewall): the VIP has
/// rules; its packets read the trie.
pub const FW_RULES: u8 = 0x80;
/// [`Service::firewall`](crate::balancer::Service::firewall): the VIP has
/// an `allow` list; a source the trie does not know is dropped.
pub const FW_ALLOW_LIST: u8 = 0x40;
/// [`Service::firewall`](crate::balancer::Service::firewall): the VIP's
/// index (the key's slot) in the low bits.
pub const FW_VIP_MASK: u8 = 0x3f;
const _: () = assert!(MAX_VIPS <= FW_VIP_MASK as u32 + 1);

/// Trie value: a source under this prefix is dropped.
pub const FW_DROP: u32 = 1 << 31;
/// Trie value: the prefix is a `deny` rule of its own (not an `allow`
/// inside a `deny`): a restarted agent reads its counter slot back.
pub const FW_DENY_RULE: u32 = 1 << 30;
/// Trie value: the counter slot of a drop.
pub const FW_SLOT_MASK: u32 = 0xffff;

/// Rules (prefixes) over all VIPs, and the counter slots they take after
/// the VIPs' own ([`not_allowed_slot`]). A reload writes the new rules
/// before it removes the old ones, so config validation keeps all VIPs'
/// rules under half of this.
pub const MAX_FIREWALL_RULES: u32 = 4096;
/// Entries of [`MAP_FIREWALL_DROPS`](crate::balancer::MAP_FIREWALL_DROPS).
pub const FIREWALL_COUNTERS: u32 = MAX_VIPS + MAX_FIREWALL_RULES;
const _: () = assert!(FIREWALL_COUNTERS <= FW_SLOT_MASK + 1);

/// The counter slot of a VIP's sources outside its `allow` list.
pub const fn not_allowed_slot(vip: u32) -> u32 {
    vip
}

/// The [`Service::firewall`](crate::balancer::Service::firewall) byte of
/// VIP `vip` with `rules` (0 without rules: nothing is read).
pub fn service_flags(vip: u32, rules: &[Rule]) -> u8 {
    if rules.is_empty() {
        return 0;
    }
    let allow = if rules.iter().any(|r| !r.deny) { FW_ALLOW_LIST } else { 0 };
    FW_RULES | allow | (vip as u8 & FW_VIP_MASK)
}

/// One rule of a VIP: a prefix of the VIP's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// `true`: `deny`; `false`: `allow`.
    pub deny: bool,
    /// The prefix, host bits clear; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Prefix length (at most 32 for IPv4, 128 for IPv6).
    pub len: u8,
    /// Counter slot of a `deny` rule (unused for `allow`).
    pub slot: u32,
}

impl Rule {
    /// Does the prefix contain `addr` (its first `len` bits equal)?
    pub fn contains(&self, addr: &[u8; 16]) -> bool {
        prefix_contains(&self.addr, self.len, addr)
    }
}

/// Do the first `len` bits of `prefix` and `addr` agree?
pub fn prefix_contains(prefix: &[u8; 16], len: u8, addr: &[u8; 16]) -> bool {
    let len = usize::from(len.min(128));
    let (whole, rest) = (len / 8, len % 8);
    if prefix[..whole] != addr[..whole] {
        return false;
    }
    rest == 0 || (prefix[whole] ^ addr[whole]) & (0xffu8 << (8 - rest)) == 0
}

/// The decision read from the rules: `Some(counter slot)` drops the
/// packet from `src` to VIP `vip`, `None` lets it through.
pub fn verdict(vip: u32, rules: &[Rule], src: &[u8; 16]) -> Option<u32> {
    if let Some(slot) = denied(rules, src) {
        return Some(slot);
    }
    let allow_list = rules.iter().any(|r| !r.deny);
    (allow_list && !rules.iter().any(|r| !r.deny && r.contains(src))).then_some(not_allowed_slot(vip))
}

/// The `deny` rules alone: `Some(counter slot)` of the longest `deny`
/// that contains `src`. What an ICMP error's sender is judged by (the
/// allow list names clients, not the routers on their paths).
pub fn denied(rules: &[Rule], src: &[u8; 16]) -> Option<u32> {
    rules.iter().filter(|r| r.deny && r.contains(src)).max_by_key(|r| r.len).map(|d| d.slot)
}

/// The trie value of one of `rules`' prefixes (`addr`/`len`): a drop
/// counted at the longest `deny` that contains it (itself, or one an
/// `allow` is nested in), else a pass (0).
pub fn trie_value(rules: &[Rule], addr: &[u8; 16], len: u8) -> u32 {
    let enclosing = rules.iter().filter(|r| r.deny && r.len <= len && r.contains(addr)).max_by_key(|r| r.len);
    match enclosing {
        Some(d) if d.len == len => FW_DROP | FW_DENY_RULE | d.slot,
        Some(d) => FW_DROP | d.slot,
        None => 0,
    }
}

/// The order a reload writes a VIP's prefixes in: the longest first. The
/// reload writes the new rules' prefixes (one trie update each), then the
/// services' flag bytes, then removes the old rules' prefixes the new ones
/// do not have. Longest first, a source's longest match at every step is
/// either the new rules' longest match for it (every longer new prefix is
/// already written) or an old prefix that no new prefix written so far
/// covers more closely — the old rules' longest match for it. So every
/// packet during a reload is judged by the old rules or by the new ones,
/// never by a mix (`a_reload_judges_every_packet_by_old_or_new_rules`).
pub fn write_order(a: &Rule, b: &Rule) -> core::cmp::Ordering {
    b.len.cmp(&a.len)
}

/// A service's flags for judging an ICMP error's sender: its `deny` rules
/// only. A drop value in the trie means a `deny` contains the source;
/// without [`FW_ALLOW_LIST`] a source the trie does not know passes.
#[inline(always)]
pub const fn deny_only(flags: u8) -> u8 {
    flags & !FW_ALLOW_LIST
}

/// The kernel's decision from the service's flags and what the trie
/// answered for the source: `Some(counter slot)` drops.
#[inline(always)]
pub fn judge(flags: u8, found: Option<u32>) -> Option<u32> {
    match found {
        Some(v) if v & FW_DROP != 0 => Some(v & FW_SLOT_MASK),
        Some(_) => None,
        None if flags & FW_ALLOW_LIST != 0 => Some(not_allowed_slot(u32::from(flags & FW_VIP_MASK))),
        None => None,
    }
}

/// The trie key's prefix length for a source prefix of `len` bits.
#[inline(always)]
pub const fn key_bits(len: u8) -> u32 {
    VIP_BITS + len as u32
}

/// The key data of `vip`'s IPv4 prefix or address.
#[inline(always)]
pub fn key_v4(vip: u32, addr: [u8; 4]) -> SourceV4 {
    SourceV4 { slot: vip.to_be_bytes(), addr }
}

/// The key data of `vip`'s IPv6 prefix or address.
#[inline(always)]
pub fn key_v6(vip: u32, addr: [u8; 16]) -> SourceV6 {
    SourceV6 { slot: vip.to_be_bytes(), addr }
}

/// The full-length bits of `family` (32 or 128).
#[inline(always)]
pub const fn family_bits(family: u8) -> u8 {
    if family == FAMILY_V4 {
        32
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        crate::balancer::v4_key(a)
    }

    fn rule(deny: bool, a: [u8; 4], len: u8, slot: u32) -> Rule {
        let mut addr = v4(a);
        for (i, b) in addr.iter_mut().enumerate() {
            let keep = usize::from(len).saturating_sub(i * 8).min(8);
            *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
        Rule { deny, addr, len, slot }
    }

    /// The trie as the kernel reads it: the longest stored prefix.
    fn lpm(rules: &[Rule], src: &[u8; 16]) -> Option<u32> {
        rules.iter().filter(|r| r.contains(src)).max_by_key(|r| r.len).map(|r| trie_value(rules, &r.addr, r.len))
    }

    #[test]
    fn deny_wins_over_allow_both_ways() {
        let rules = [rule(false, [10, 0, 0, 0], 8, 0), rule(true, [10, 1, 0, 0], 16, 20), rule(true, [192, 168, 0, 0], 16, 21), rule(false, [192, 168, 1, 0], 24, 0)];
        let flags = service_flags(3, &rules);
        for (src, want) in [([10, 2, 3, 4], None), ([10, 1, 3, 4], Some(20)), ([192, 168, 1, 9], Some(21)), ([172, 16, 0, 1], Some(3))] {
            let s = v4(src);
            assert_eq!(verdict(3, &rules, &s), want, "{src:?}");
            assert_eq!(judge(flags, lpm(&rules, &s)), want, "{src:?}");
        }
    }

    #[test]
    fn no_rules_no_flags_and_deny_only_passes_the_rest() {
        assert_eq!(service_flags(5, &[]), 0);
        let rules = [rule(true, [203, 0, 113, 7], 32, 30)];
        let flags = service_flags(5, &rules);
        assert_eq!(flags & FW_ALLOW_LIST, 0);
        assert_eq!(judge(flags, lpm(&rules, &v4([203, 0, 113, 7]))), Some(30));
        assert_eq!(judge(flags, lpm(&rules, &v4([203, 0, 113, 8]))), None);
    }

    fn random_rules(rng: &mut SmallRng, first_slot: u32) -> Vec<Rule> {
        let n = rng.gen_range(0..8);
        let mut rules: Vec<Rule> = Vec::new();
        for i in 0..n {
            let r = rule(rng.gen_bool(0.5), [10, rng.gen_range(0..2), rng.gen_range(0..4), rng.gen_range(0..4)], [0, 8, 15, 16, 24, 30, 32][rng.gen_range(0..7)], first_slot + i);
            if !rules.iter().any(|o| o.addr == r.addr && o.len == r.len && o.deny == r.deny) {
                rules.push(r);
            }
        }
        rules
    }

    /// A trie's entries: (prefix, length) → value.
    type Trie = std::collections::BTreeMap<([u8; 16], u8), u32>;

    fn trie_of(rules: &[Rule]) -> Trie {
        rules.iter().map(|r| ((r.addr, r.len), trie_value(rules, &r.addr, r.len))).collect()
    }

    fn judged(flags: u8, trie: &Trie, src: &[u8; 16]) -> Option<u32> {
        if flags == 0 {
            return None;
        }
        let found = trie.iter().filter(|((a, l), _)| prefix_contains(a, *l, src)).max_by_key(|((_, l), _)| *l).map(|(_, v)| *v);
        judge(flags, found)
    }

    /// Replays a reload from `old` to `new` as the agent writes it (the new
    /// prefixes in `order`, the flags, the stale prefixes' removal); the
    /// first step at which some source is judged by neither rule set.
    fn first_mixed_step(old: &[Rule], new: &[Rule], order: fn(&Rule, &Rule) -> core::cmp::Ordering) -> Option<usize> {
        let (old_flags, new_flags) = (service_flags(1, old), service_flags(1, new));
        let mut trie = trie_of(old);
        let want = trie_of(new);
        let mut writes: Vec<&Rule> = new.iter().collect();
        writes.sort_by(|a, b| order(a, b));
        let mut steps: Vec<(u8, Trie)> = Vec::new();
        for r in writes {
            trie.insert((r.addr, r.len), want[&(r.addr, r.len)]);
            steps.push((old_flags, trie.clone()));
        }
        steps.push((new_flags, trie.clone()));
        let stale: Vec<([u8; 16], u8)> = trie.keys().filter(|k| !want.contains_key(k)).copied().collect();
        for k in stale {
            trie.remove(&k);
            steps.push((new_flags, trie.clone()));
        }
        for (i, (flags, t)) in steps.iter().enumerate() {
            for (b, c, d) in (0..2).flat_map(|b| (0..4).flat_map(move |c| (0..4).map(move |d| (b, c, d)))) {
                let src = v4([10, b, c, d]);
                let got = judged(*flags, t, &src);
                let (was, will) = (if old.is_empty() { None } else { verdict(1, old, &src) }, if new.is_empty() { None } else { verdict(1, new, &src) });
                if got != was && got != will {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Every packet during a reload is judged by the old rules or by the
    /// new ones, whatever the two rule sets (nested, overlapping, allow
    /// lists appearing and going); written shortest first instead, some
    /// reloads judge a source by neither (the test can fail).
    #[test]
    fn a_reload_judges_every_packet_by_old_or_new_rules() {
        let mut rng = SmallRng::seed_from_u64(17);
        let mut mixed_shortest_first = 0;
        for _ in 0..3000 {
            let old = random_rules(&mut rng, 16);
            // The same prefix keeps its deny's counter slot across a reload.
            let mut new = random_rules(&mut rng, 32);
            for r in &mut new {
                if let Some(o) = old.iter().find(|o| o.deny && r.deny && o.addr == r.addr && o.len == r.len) {
                    r.slot = o.slot;
                }
            }
            assert_eq!(first_mixed_step(&old, &new, write_order), None, "old {old:?}\nnew {new:?}");
            if first_mixed_step(&old, &new, |a, b| a.len.cmp(&b.len)).is_some() {
                mixed_shortest_first += 1;
            }
        }
        assert!(mixed_shortest_first > 0, "shortest first mixes some reloads");
    }

    /// The single-lookup trie decides as the rules do, for random rule
    /// sets (nested, equal and disjoint prefixes) and sources.
    #[test]
    fn the_trie_decides_as_the_rules_do() {
        let mut rng = SmallRng::seed_from_u64(16);
        for _ in 0..2000 {
            let n = rng.gen_range(0..8);
            let mut rules: Vec<Rule> = Vec::new();
            for i in 0..n {
                let r = rule(rng.gen_bool(0.5), [10, rng.gen_range(0..2), rng.gen_range(0..4), rng.gen_range(0..4)], [0, 8, 15, 16, 24, 30, 32][rng.gen_range(0..7)], 16 + i);
                // The trie holds one entry per prefix; config validation
                // refuses a prefix listed twice in one list.
                if !rules.iter().any(|o| o.addr == r.addr && o.len == r.len && o.deny == r.deny) {
                    rules.push(r);
                }
            }
            let flags = service_flags(1, &rules);
            for _ in 0..16 {
                let s = v4([10, rng.gen_range(0..2), rng.gen_range(0..4), rng.gen_range(0..4)]);
                let want = if rules.is_empty() { None } else { verdict(1, &rules, &s) };
                let got = if flags == 0 { None } else { judge(flags, lpm(&rules, &s)) };
                assert_eq!(got, want, "rules {rules:?} src {s:?}");
                // An ICMP error's sender: the deny rules alone.
                let sender = if flags == 0 { None } else { judge(deny_only(flags), lpm(&rules, &s)) };
                assert_eq!(sender, denied(&rules, &s), "rules {rules:?} sender {s:?}");
            }
        }
    }
}
