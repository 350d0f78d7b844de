//! Sources that cannot be real on the interface a packet arrived on: the
//! host's own addresses, loopback, multicast, broadcast, … and, on a
//! balancer's outside interface, the VIPs, the inside address and the
//! backends' networks. The agent keeps one longest-prefix trie per family
//! keyed by (ifindex, address) (`lb_user::martian`); this is its one reader,
//! shared by the isolator (every packet of a zone interface) and the
//! balancer (packets that would place a new flow).

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::isolator::{IfAddrV4, IfAddrV6, IFINDEX_BITS};

use crate::maps::{IMPOSSIBLE_V4, IMPOSSIBLE_V6};

/// Why an IPv4 source cannot be real on `ifindex` (an
/// `lb_common::isolator::Impossible` as `u8`), if it cannot.
#[inline(always)]
pub fn impossible_v4(ifindex: u32, addr: [u8; 4]) -> Option<u8> {
    let key = Key::new(IFINDEX_BITS + 32, IfAddrV4 { ifindex: ifindex.to_be_bytes(), addr });
    // 0: an exception inside a shorter impossible prefix (0.0.0.0).
    IMPOSSIBLE_V4.get(&key).map(|k| *k as u8).filter(|&k| k != 0)
}

/// [`impossible_v4`] for IPv6.
#[inline(always)]
pub fn impossible_v6(ifindex: u32, addr: [u8; 16]) -> Option<u8> {
    let key = Key::new(IFINDEX_BITS + 128, IfAddrV6 { ifindex: ifindex.to_be_bytes(), addr });
    IMPOSSIBLE_V6.get(&key).map(|k| *k as u8).filter(|&k| k != 0)
}

/// Either family; an IPv4 address is the first four bytes of `addr`.
#[inline(always)]
pub fn impossible_source(family: u8, ifindex: u32, addr: &[u8; 16]) -> Option<u8> {
    if family == lb_common::isolator::FAMILY_V4 {
        impossible_v4(ifindex, [addr[0], addr[1], addr[2], addr[3]])
    } else {
        impossible_v6(ifindex, *addr)
    }
}
