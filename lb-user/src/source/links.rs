//! What rtnetlink says about one interface: its name, the XDP program on
//! it, and for a veth where its peer is. `/healthz` asks whether every
//! interface still carries its program; the agent asks whether a redirect
//! target's peer can take redirected frames.

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkXdp, XdpAttached};

/// One interface as the kernel describes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkFacts {
    pub name: String,
    /// Whether an XDP program is attached (any mode).
    pub xdp: bool,
    /// A veth (its peer is `peer`).
    pub veth: bool,
    /// The peer's ifindex (`IFLA_LINK`), in `peer_netns` when that is set.
    pub peer: Option<u32>,
    /// The peer's namespace id, when it lives in another namespace.
    pub peer_netns: Option<i32>,
}

/// The facts of interface `ifindex` in the current namespace, `None` when
/// it does not exist.
pub async fn link(ifindex: u32) -> Result<Option<LinkFacts>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let task = tokio::spawn(conn);
    let got = handle.link().get().match_index(ifindex).execute().try_next().await;
    task.abort();
    let msg = match got {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        // ENODEV: no such interface.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("asking rtnetlink for interface {ifindex}")),
    };
    let mut facts = LinkFacts::default();
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => facts.name = n,
            LinkAttribute::Xdp(xdp) => {
                facts.xdp = xdp.iter().any(|x| match x {
                    LinkXdp::Attached(a) => *a != XdpAttached::None,
                    LinkXdp::ProgId(id) => *id != 0,
                    _ => false,
                })
            }
            LinkAttribute::LinkInfo(infos) => facts.veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
            LinkAttribute::Link(peer) => facts.peer = Some(peer),
            LinkAttribute::LinkNetNsId(id) => facts.peer_netns = Some(id),
            _ => {}
        }
    }
    Ok(Some(facts))
}

/// Whether generic receive offload is on for `ifname` (`ethtool -k`'s
/// `generic-receive-offload`), `None` when the driver does not say.
pub fn gro(ifname: &str) -> Option<bool> {
    /// `struct ethtool_value` (linux/ethtool.h).
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_GGRO: u32 = 0x2b;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let name = ifname.as_bytes();
    if name.len() >= libc::IF_NAMESIZE {
        return None;
    }
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let mut value = EthtoolValue { cmd: ETHTOOL_GGRO, data: 0 };
    // SAFETY: an all-zero ifreq is valid; the name fits (checked above)
    // and stays NUL-terminated; ifru_data points at `value`, which
    // outlives the ioctl.
    let rc = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
        libc::close(fd);
        rc
    };
    (rc == 0).then_some(value.data != 0)
}

/// Why frames redirected to `ifname` would be lost, if they would: a veth
/// delivers a redirected frame only when its peer runs an XDP program or
/// has GRO on (the kernel drops it otherwise, counting nothing swarmlb
/// sees). A peer in another namespace is not looked at.
pub async fn redirect_problem(ifname: &str) -> Result<Option<String>> {
    let Some(ifindex) = crate::source::netif::ifindex(ifname) else { return Ok(None) };
    let Some(facts) = link(ifindex).await? else { return Ok(None) };
    let (true, Some(peer), None) = (facts.veth, facts.peer, facts.peer_netns) else { return Ok(None) };
    let Some(peer) = link(peer).await? else { return Ok(None) };
    if peer.xdp || gro(&peer.name) != Some(false) {
        return Ok(None);
    }
    Ok(Some(format!(
        "{ifname} is a veth whose peer {} runs no XDP program and has GRO off: frames the balancer redirects to {ifname} are dropped by the kernel; \
         turn GRO on (`ethtool -K {} gro on`) or attach an XDP program to {}",
        peer.name, peer.name, peer.name
    )))
}
