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
