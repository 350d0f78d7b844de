//! What the agent reads of the host's network stack: its addresses (per
//! interface, with prefix lengths), its interfaces' MACs (the balancer
//! takes only frames addressed to them), the per-interface forwarding sysctls
//! the reverse-path check depends on, and a netlink socket that says when
//! an address or a link changes (the impossible-source tries follow the
//! host's addresses without a restart).
//!
//! The watcher is a bare `NETLINK_ROUTE` socket joined to the address and
//! link multicast groups: it only needs to know *that* something changed
//! (the agent then reads the addresses again with `getifaddrs`), so it
//! parses nothing and needs no netlink crate.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};
use tokio::io::unix::AsyncFd;

/// One address configured on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostAddr {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// Prefix length of the address's subnet.
    pub prefix: u8,
}

/// Every address of every interface of the current network namespace, in
/// the order the kernel lists them.
pub fn addresses() -> Result<Vec<HostAddr>> {
    let mut out = Vec::new();
    each_ifaddr(|ifa| {
        // SAFETY: ifa_name is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(ifa.ifa_name) };
        if ifindex == 0 {
            return;
        }
        // SAFETY: the family says which sockaddr type each pointer is;
        // the netmask has the address's family.
        let found = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let mask = if ifa.ifa_netmask.is_null() {
                        u32::MAX
                    } else {
                        u32::from_be((*(ifa.ifa_netmask as *const libc::sockaddr_in)).sin_addr.s_addr)
                    };
                    Some((IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()), mask.count_ones() as u8))
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let prefix = if ifa.ifa_netmask.is_null() {
                        128
                    } else {
                        let m = (*(ifa.ifa_netmask as *const libc::sockaddr_in6)).sin6_addr.s6_addr;
                        u128::from_be_bytes(m).count_ones() as u8
                    };
                    Some((IpAddr::from(a.sin6_addr.s6_addr), prefix))
                }
                _ => None,
            }
        };
        if let Some((addr, prefix)) = found {
            out.push(HostAddr { ifindex, addr, prefix });
        }
    })?;
    // In the kernel's order (an interface's primary address first, which
    // is the one the balancer takes as its inside address), each once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(*a));
    Ok(out)
}

/// The Ethernet MAC of every interface of the current network namespace
/// that has one, by ifindex (`getifaddrs`' `AF_PACKET` entries: one per
/// link, read from the kernel each time, so a changed MAC shows).
pub fn link_macs() -> Result<BTreeMap<u32, [u8; 6]>> {
    let mut out = BTreeMap::new();
    each_ifaddr(|ifa| {
        // SAFETY: the address's family says its sockaddr type.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_PACKET {
            return;
        }
        // SAFETY: an AF_PACKET address is a sockaddr_ll.
        let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
        if ll.sll_halen == 6 && ll.sll_ifindex > 0 {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&ll.sll_addr[..6]);
            out.insert(ll.sll_ifindex as u32, mac);
        }
    })?;
    Ok(out)
}

/// Calls `f` with every entry of `getifaddrs(3)` that has an address,
/// and frees the list.
fn each_ifaddr(mut f: impl FnMut(&libc::ifaddrs)) -> Result<()> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if !ifa.ifa_addr.is_null() {
            f(ifa);
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(())
}

/// The sysctl that says whether `ifname` forwards the family (`v6`).
pub fn forwarding_sysctl(ifname: &str, v6: bool) -> String {
    format!("net.ipv{}.conf.{ifname}.forwarding", if v6 { 6 } else { 4 })
}

/// Whether forwarding of the family is on for `ifname`.
pub fn forwarding(ifname: &str, v6: bool) -> Result<bool> {
    let path = format!("/proc/sys/net/ipv{}/conf/{ifname}/forwarding", if v6 { 6 } else { 4 });
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text.trim() != "0")
}

// rtnetlink multicast groups (linux/rtnetlink.h), as bind(2) masks.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// Says when something of this network namespace's `NETLINK_ROUTE` state
/// changes: the addresses and links ([`NetlinkWatch::addresses`]), or
/// everything a next hop depends on ([`NetlinkWatch::routing`]).
pub struct NetlinkWatch {
    fd: AsyncFd<OwnedFd>,
}

impl NetlinkWatch {
    /// Address and link changes.
    pub fn addresses() -> Result<Self> {
        Self::new(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
    }

    /// Route, neighbour, address and link changes: what a kept next hop
    /// (`lb_common::balancer::HopEntry`) depends on.
    pub fn routing() -> Result<Self> {
        Self::new(RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
    }

    /// Joins `groups` of `NETLINK_ROUTE`.
    fn new(groups: u32) -> Result<Self> {
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("opening a NETLINK_ROUTE socket");
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_nl; the fields are set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: `sa` is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(fd.as_raw_fd(), &sa as *const libc::sockaddr_nl as *const libc::sockaddr, size_of::<libc::sockaddr_nl>() as u32)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("joining rtnetlink groups");
        }
        // SAFETY: the descriptor is owned by the AsyncFd, so it stays open
        // for as long as it is registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Waits for a change, then swallows every message already queued (a
    /// burst of changes makes one wake-up). An overrun (ENOBUFS: changes
    /// were lost) counts as a change too.
    pub async fn changed(&mut self) -> Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            let mut buf = [0u8; 8192];
            loop {
                // SAFETY: reads into `buf`, at most its length.
                let n = unsafe { libc::recv(guard.get_inner().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    got = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::ENOBUFS) | Some(libc::EINTR) => {
                        got = true;
                        continue;
                    }
                    _ if n == 0 => bail!("the rtnetlink socket closed"),
                    _ => return Err(err).context("reading the rtnetlink socket"),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

/// The index of the interface `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The name of an interface, if it exists.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    // SAFETY: on success `buf` holds a NUL-terminated name.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
