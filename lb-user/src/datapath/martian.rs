//! Sources that cannot be real on an interface, as the kernel's
//! impossible-source tries hold them (`IMPOSSIBLE_V4`, `IMPOSSIBLE_V6`,
//! keyed by (ifindex, prefix), longest match wins).
//!
//! On every zone interface and every balancer outside interface:
//!
//! | source | kind |
//! | --- | --- |
//! | any address of this host (any interface), and the broadcast address of each of its IPv4 subnets shorter than /31 | `own_address`, `broadcast` |
//! | 127.0.0.0/8, ::1 | `loopback` |
//! | 224.0.0.0/4, ff00::/8 | `multicast` |
//! | 255.255.255.255 | `broadcast` |
//! | 0.0.0.0/8, except 0.0.0.0 itself (a DHCP client's source; `::` likewise stays: duplicate address detection sends from it) | `this_network` |
//! | ::ffff:0:0/96 (IPv4-mapped) | `ipv4_mapped` |
//! | 169.254.0.0/16 (fe80::/10) on an interface without an IPv4 (IPv6) link-local address of its own | `link_local_off_link` |
//!
//! *Link-local from off-link*, precisely: link-local addresses are never
//! forwarded (RFC 3927, RFC 4291), so such a source can only be a neighbour
//! on the link it arrived on, talking to us in that scope; an interface
//! that has no link-local address of that family takes part in no such
//! scope (and has no route back to the address), so the packet cannot be a
//! real conversation. An interface with one (every IPv6 interface has
//! fe80::…) accepts link-local sources as on-link.
//!
//! On a balancer's outside interface also, as the issue of forged replies
//! asks: the VIPs (`vip`), the edge's inside addresses (`inside_address`)
//! and the backends' networks (`backend_network`: each backend's address
//! and the subnets of the inside interface), which live behind the edge.
//!
//! A value of 0 is an exception carved out of a shorter prefix (0.0.0.0
//! inside 0.0.0.0/8): the kernel reads it as "possible".

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use lb_common::{
    isolator::{IfAddrV4, IfAddrV6, Impossible, IFINDEX_BITS},
    wire::FAMILY_V4,
};

use crate::{source::config::Cidr, source::netif::HostAddr, datapath::maps::IsolatorMaps};

/// What a balancer's outside interfaces must not see as sources.
#[derive(Clone, Debug, Default)]
pub struct Outside {
    /// The balancer's outside interfaces.
    pub ifindexes: Vec<u32>,
    pub vips: Vec<IpAddr>,
    /// The edge's inside (SNAT) addresses.
    pub inside: Vec<IpAddr>,
    /// The backends' addresses and networks.
    pub backend_networks: Vec<Cidr>,
}

/// The impossible sources of every interface: (ifindex, prefix) → kind
/// (0: an exception, possible).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub entries: BTreeMap<(u32, Cidr), u32>,
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).expect("a valid built-in prefix")
}

/// The broadcast address of an IPv4 subnet, if it has one (/0 to /30).
fn subnet_broadcast(a: &HostAddr) -> Option<Cidr> {
    match a.addr {
        IpAddr::V4(v4) if a.prefix <= 30 => {
            let host_bits = u32::MAX.checked_shr(u32::from(a.prefix)).unwrap_or(0);
            Some(Cidr::V4((u32::from(v4) | host_bits).to_be_bytes(), 32))
        }
        _ => None,
    }
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The prefix `len` bits long that holds `a`.
pub fn network(a: IpAddr, len: u8) -> Cidr {
    let full = Cidr::host(a);
    let s = match full {
        Cidr::V4(b, _) => format!("{}/{len}", IpAddr::from((u32::from_be_bytes(b) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)).to_be_bytes())),
        Cidr::V6(b, _) => format!("{}/{len}", IpAddr::from((u128::from_be_bytes(b) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)).to_be_bytes())),
    };
    Cidr::parse(&s).expect("a masked prefix")
}

/// The rules for the host's addresses `host`, its zone interfaces and, on
/// an edge, its balancer's outside interfaces. Where two rules name the
/// same prefix of one interface the first one here wins.
pub fn compile(host: &[HostAddr], zone_ifindexes: &[u32], outside: Option<&Outside>) -> Rules {
    // Sorted: which kind wins a prefix must not depend on the order the
    // kernel lists addresses in.
    let mut host = host.to_vec();
    host.sort();
    host.dedup();
    let host = host.as_slice();
    let mut ifaces: BTreeSet<u32> = zone_ifindexes.iter().copied().collect();
    if let Some(o) = outside {
        ifaces.extend(&o.ifindexes);
    }
    let mut rules = Rules::default();
    for &ifindex in &ifaces {
        let mut put = |c: Cidr, kind: u32| {
            rules.entries.entry((ifindex, c)).or_insert(kind);
        };
        put(cidr("0.0.0.0/32"), 0);
        put(cidr("0.0.0.0/8"), Impossible::ThisNetwork as u32);
        put(cidr("127.0.0.0/8"), Impossible::Loopback as u32);
        put(cidr("224.0.0.0/4"), Impossible::Multicast as u32);
        put(cidr("255.255.255.255/32"), Impossible::Broadcast as u32);
        put(cidr("::1/128"), Impossible::Loopback as u32);
        put(cidr("ff00::/8"), Impossible::Multicast as u32);
        put(cidr("::ffff:0.0.0.0/96"), Impossible::Mapped as u32);
        let own_link_local = |v6: bool| host.iter().any(|a| a.ifindex == ifindex && a.addr.is_ipv6() == v6 && is_link_local(a.addr));
        if !own_link_local(false) {
            put(cidr("169.254.0.0/16"), Impossible::LinkLocalOffLink as u32);
        }
        if !own_link_local(true) {
            put(cidr("fe80::/10"), Impossible::LinkLocalOffLink as u32);
        }
        for a in host {
            put(Cidr::host(a.addr), Impossible::OwnAddress as u32);
            if let Some(b) = subnet_broadcast(a) {
                put(b, Impossible::Broadcast as u32);
            }
        }
        if let Some(o) = outside.filter(|o| o.ifindexes.contains(&ifindex)) {
            for &v in &o.vips {
                put(Cidr::host(v), Impossible::Vip as u32);
            }
            for &i in &o.inside {
                put(Cidr::host(i), Impossible::InsideAddress as u32);
            }
            for &n in &o.backend_networks {
                put(n, Impossible::BackendNetwork as u32);
            }
        }
    }
    rules
}

impl Rules {
    /// What the tries answer for `addr` (IPv4 in the first four bytes)
    /// arriving on `ifindex`: the longest matching rule, found by looking
    /// at every rule (the reference the kernel's tries are held to).
    pub fn lookup(&self, ifindex: u32, family: u8, addr: &[u8; 16]) -> Option<Impossible> {
        let probe = if family == FAMILY_V4 {
            Cidr::V4([addr[0], addr[1], addr[2], addr[3]], 32)
        } else {
            Cidr::V6(*addr, 128)
        };
        let len = |c: &Cidr| match *c {
            Cidr::V4(_, l) | Cidr::V6(_, l) => l,
        };
        self.entries
            .iter()
            .filter(|((i, c), _)| *i == ifindex && c.contains(&probe))
            .max_by_key(|((_, c), _)| len(c))
            .and_then(|(_, &kind)| Impossible::from_u32(kind))
    }

    /// Writes the rules into the tries: new and changed entries first, then
    /// the stale ones go (a source is never briefly possible because of
    /// the update itself). Returns the map updates and deletes.
    pub fn apply(&self, maps: &mut IsolatorMaps) -> Result<u64> {
        let mut want_v4 = BTreeMap::new();
        let mut want_v6 = BTreeMap::new();
        for (&(ifindex, c), &kind) in &self.entries {
            let ifindex = ifindex.to_be_bytes();
            match c {
                Cidr::V4(addr, l) => want_v4.insert((u32::from(l), IfAddrV4 { ifindex, addr }), kind),
                Cidr::V6(addr, l) => want_v6.insert((u32::from(l), IfAddrV6 { ifindex, addr }), kind),
            };
        }
        for (&(len, data), &kind) in &want_v4 {
            maps.impossible_v4.insert(&Key::new(IFINDEX_BITS + len, data), kind, 0).context("writing an impossible IPv4 source")?;
        }
        for (&(len, data), &kind) in &want_v6 {
            maps.impossible_v6.insert(&Key::new(IFINDEX_BITS + len, data), kind, 0).context("writing an impossible IPv6 source")?;
        }
        let mut writes = (want_v4.len() + want_v6.len()) as u64;
        let stale_v4: Vec<Key<IfAddrV4>> = maps
            .impossible_v4
            .keys()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|k| !want_v4.contains_key(&(k.prefix_len() - IFINDEX_BITS, k.data())))
            .collect();
        for k in stale_v4 {
            maps.impossible_v4.remove(&k)?;
            writes += 1;
        }
        let stale_v6: Vec<Key<IfAddrV6>> = maps
            .impossible_v6
            .keys()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|k| !want_v6.contains_key(&(k.prefix_len() - IFINDEX_BITS, k.data())))
            .collect();
        for k in stale_v6 {
            maps.impossible_v6.remove(&k)?;
            writes += 1;
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::wire::FAMILY_V6;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn wide(addr: IpAddr) -> (u8, [u8; 16]) {
        let mut b = [0u8; 16];
        match addr {
            IpAddr::V4(v4) => {
                b[..4].copy_from_slice(&v4.octets());
                (FAMILY_V4, b)
            }
            IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
        }
    }

    #[test]
    fn kinds_per_interface() {
        let host = [
            HostAddr { ifindex: 2, addr: a("192.0.2.1"), prefix: 24 },
            HostAddr { ifindex: 2, addr: a("fe80::1"), prefix: 64 },
            HostAddr { ifindex: 3, addr: a("10.1.0.1"), prefix: 24 },
            HostAddr { ifindex: 1, addr: a("127.0.0.1"), prefix: 8 },
        ];
        let outside = Outside { ifindexes: vec![4], vips: vec![a("203.0.113.10")], inside: vec![a("10.1.0.1")], backend_networks: vec![network(a("10.1.0.0"), 24)] };
        let r = compile(&host, &[2], Some(&outside));
        let k = |ifindex: u32, s: &str| {
            let (f, b) = wide(a(s));
            r.lookup(ifindex, f, &b)
        };
        use Impossible::*;
        assert_eq!(k(2, "192.0.2.1"), Some(OwnAddress));
        assert_eq!(k(2, "10.1.0.1"), Some(OwnAddress), "any of the host's addresses");
        assert_eq!(k(2, "192.0.2.255"), Some(Broadcast));
        assert_eq!(k(2, "192.0.2.7"), None);
        assert_eq!(k(2, "127.3.4.5"), Some(Loopback));
        assert_eq!(k(2, "0.0.0.0"), None, "DHCP clients");
        assert_eq!(k(2, "0.1.2.3"), Some(ThisNetwork));
        assert_eq!(k(2, "239.1.1.1"), Some(Multicast));
        assert_eq!(k(2, "169.254.1.1"), Some(LinkLocalOffLink), "no IPv4 link-local address on 2");
        assert_eq!(k(2, "fe80::99"), None, "2 has an IPv6 link-local address");
        assert_eq!(k(2, "::ffff:10.9.0.1"), Some(Mapped));
        assert_eq!(k(2, "::1"), Some(Loopback));
        assert_eq!(k(2, "ff02::1"), Some(Multicast));
        assert_eq!(k(2, "203.0.113.10"), None, "VIPs only on outside interfaces");
        assert_eq!(k(4, "203.0.113.10"), Some(Vip));
        assert_eq!(k(4, "10.1.0.1"), Some(OwnAddress), "first rule wins");
        assert_eq!(k(4, "10.1.0.77"), Some(BackendNetwork));
        assert_eq!(k(4, "fe80::99"), Some(LinkLocalOffLink));
        assert_eq!(k(3, "127.0.0.1"), None, "not a zone interface: no rules");
    }
}
