//! Links, addresses, routes and neighbours through rtnetlink instead of
//! `ip`: the topology builder's primitives (veth pairs, bridges, addresses,
//! routes, neighbour entries, MTU, link state).
//!
//! Each call opens a netlink socket on a thread that joined the namespace
//! ([`Netns::run`]) and drives the `rtnetlink` crate on a one-thread tokio
//! runtime there: the socket belongs to the namespace it was created in, so
//! every request acts inside it, and the harness stays synchronous. A
//! failure is an error that names the request and the namespace, as a failed
//! `ip` command's stderr did.
//!
//! What stays with `ip` (through [`Netns::exec`]): named namespaces (`ip
//! netns add` is a bind mount by iproute2's convention, not a netlink
//! object), the one vxlan device (`reverse_path_e2e`), and the tests that
//! read `ip`'s own output as a user would. Bridge port flags stay with
//! `bridge`, offloads with `ethtool`.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
        link::{InfoData, InfoVeth, LinkAttribute, LinkMessage},
        neighbour::NeighbourState,
        route::{RouteProtocol, RouteScope, RouteType},
    },
    AddressMessageBuilder, Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::Netns;

/// Runs `f` with a handle on a netlink socket inside `ns`; `what` names the
/// request in the error.
fn in_ns<F, Fut, R>(ns: &Netns, what: &str, f: F) -> Result<R>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<R>>,
    R: Send,
{
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            // The connection task answers the handle's requests; it ends
            // with the runtime.
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .with_context(|| format!("{what} in {}", ns.name()))
}

/// The index of `ifname` in the calling thread's namespace (called inside
/// [`in_ns`], whose thread joined it).
fn index(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)?;
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface {ifname}"),
        i => Ok(i),
    }
}

/// Parses `"10.1.0.1/24"` or `"fd00::1/64"`.
fn cidr(text: &str) -> Result<(IpAddr, u8)> {
    let (addr, len) = text
        .split_once('/')
        .with_context(|| format!("no prefix length in {text}"))?;
    Ok((
        addr.parse()
            .with_context(|| format!("not an address: {text}"))?,
        len.parse()
            .with_context(|| format!("not a prefix length: {text}"))?,
    ))
}

/// A veth pair, `a_if` in `a` and `b_if` in `b`, both up. The peer is
/// created straight inside `b` under its final name (`IFLA_NET_NS_FD` on the
/// peer), so names only have to be unique within their own namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    let b_fd: RawFd = b.fd().as_raw_fd();
    let peer = LinkMessageBuilder::<LinkUnspec>::default()
        .name(b_if)
        .setns_by_fd(b_fd)
        .build();
    let msg = LinkVeth::new(a_if, b_if)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .up()
        .build();
    add_link(a, &format!("veth {a_if} (peer {b_if})"), msg)?;
    up(b, b_if)
}

/// Creates the link `msg` describes (`ip link add`); `what` names it in
/// the error.
fn add_link(ns: &Netns, what: &str, msg: LinkMessage) -> Result<()> {
    in_ns(ns, what, |h| async move {
        Ok(h.link().add(msg).execute().await?)
    })
}

/// Changes link `ifname` as `change` says (`ip link set`); `what` names
/// the change in the error.
fn set_link(
    ns: &Netns,
    ifname: &str,
    what: &str,
    change: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
) -> Result<()> {
    let msg = change(LinkUnspec::new_with_name(ifname)).build();
    in_ns(ns, &format!("{ifname} {what}"), |h| async move {
        Ok(h.link().set(msg).execute().await?)
    })
}

/// Sets `ifname` up.
pub fn up(ns: &Netns, ifname: &str) -> Result<()> {
    set_link(ns, ifname, "up", |l| l.up())
}

/// Sets `ifname` down.
pub fn down(ns: &Netns, ifname: &str) -> Result<()> {
    set_link(ns, ifname, "down", |l| l.down())
}

/// Sets `ifname`'s hardware address.
pub fn set_mac(ns: &Netns, ifname: &str, mac: [u8; 6]) -> Result<()> {
    set_link(ns, ifname, "address", |l| l.address(mac.to_vec()))
}

/// Sets `ifname`'s MTU.
pub fn mtu(ns: &Netns, ifname: &str, mtu: u32) -> Result<()> {
    set_link(ns, ifname, &format!("mtu {mtu}"), |l| l.mtu(mtu))
}

/// A bridge `name`, up.
pub fn bridge(ns: &Netns, name: &str) -> Result<()> {
    add_link(
        ns,
        &format!("bridge {name}"),
        LinkBridge::new(name).up().build(),
    )
}

/// Makes `port` a port of bridge `bridge` (`ip link set PORT master BR`).
pub fn enslave(ns: &Netns, port: &str, bridge: &str) -> Result<()> {
    in_ns(ns, &format!("{port} master {bridge}"), |h| async move {
        let msg = LinkUnspec::new_with_name(port)
            .controller(index(bridge)?)
            .build();
        Ok(h.link().set(msg).execute().await?)
    })
}

/// Adds `cidr` (`"10.1.0.1/24"`, `"fd00::1/64"`) to `ifname`. IPv6
/// addresses are `nodad`: usable at once, not after duplicate detection.
pub fn addr(ns: &Netns, ifname: &str, cidr_text: &str) -> Result<()> {
    let (ip, len) = cidr(cidr_text)?;
    in_ns(
        ns,
        &format!("address {cidr_text} on {ifname}"),
        |h| async move {
            let mut req = h.address().add(index(ifname)?, ip, len);
            if ip.is_ipv6() {
                let m = req.message_mut();
                m.header.flags |= AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            Ok(req.execute().await?)
        },
    )
}

/// Removes `cidr` from `ifname` (`ip addr del`).
pub fn addr_del(ns: &Netns, ifname: &str, cidr_text: &str) -> Result<()> {
    let (ip, len) = cidr(cidr_text)?;
    in_ns(
        ns,
        &format!("address {cidr_text} off {ifname}"),
        |h| async move {
            let index = index(ifname)?;
            let msg = match ip {
                IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(index)
                    .address(a, len)
                    .build(),
                IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                    .index(index)
                    .address(a, len)
                    .build(),
            };
            Ok(h.address().del(msg).execute().await?)
        },
    )
}

/// Where a route sends packets.
#[derive(Clone, Copy, Debug)]
pub enum Next<'a> {
    /// Through a gateway (`via`).
    Gateway(IpAddr),
    /// Through a gateway out of a device (`via … dev …`).
    Via(IpAddr, &'a str),
    /// Through a gateway out of a device, `onlink`: the gateway counts as
    /// reachable before any prefix route covers it.
    OnLink(IpAddr, &'a str),
    /// Straight out of a device (`dev`, scope link).
    Dev(&'a str),
    /// `unreachable`: the sender gets an ICMP error.
    Unreachable,
    /// `blackhole`: dropped without a word.
    Blackhole,
}

impl From<IpAddr> for Next<'_> {
    fn from(gateway: IpAddr) -> Self {
        Self::Gateway(gateway)
    }
}

/// Adds a route to `dst` (a prefix, or `default` with a gateway) as `ip
/// route add` does (main table, protocol `boot`).
pub fn route(ns: &Netns, dst: &str, next: Next<'_>) -> Result<()> {
    set_route(ns, dst, next, false)
}

/// Adds or replaces the route to `dst` (`ip route replace`).
pub fn replace_route(ns: &Netns, dst: &str, next: Next<'_>) -> Result<()> {
    set_route(ns, dst, next, true)
}

/// [`route`] or [`replace_route`].
fn set_route(ns: &Netns, dst: &str, next: Next<'_>, replace: bool) -> Result<()> {
    let (dst_ip, len) = match (dst, next) {
        ("default", Next::Gateway(gw) | Next::Via(gw, _) | Next::OnLink(gw, _)) => (
            if gw.is_ipv4() {
                IpAddr::from([0u8; 4])
            } else {
                IpAddr::from([0u8; 16])
            },
            0,
        ),
        ("default", _) => {
            bail!("route default: say 0.0.0.0/0 or ::/0 (no gateway to tell the family)")
        }
        (prefix, _) => cidr(prefix)?,
    };
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst_ip, len)
        .map_err(|e| anyhow!("route {dst}: {e:?}"))?
        .protocol(RouteProtocol::Boot);
    match next {
        Next::Gateway(gw) | Next::Via(gw, _) | Next::OnLink(gw, _) => {
            builder = builder
                .gateway(gw)
                .map_err(|e| anyhow!("route {dst} via {gw}: {e:?}"))?
        }
        Next::Dev(_) => builder = builder.scope(RouteScope::Link),
        Next::Unreachable => builder = builder.kind(RouteType::Unreachable),
        Next::Blackhole => builder = builder.kind(RouteType::BlackHole),
    }
    in_ns(ns, &format!("route {dst} {next:?}"), |h| async move {
        let builder = match next {
            Next::OnLink(_, dev) => builder.output_interface(index(dev)?).onlink(),
            Next::Via(_, dev) | Next::Dev(dev) => builder.output_interface(index(dev)?),
            _ => builder,
        };
        let req = h.route().add(builder.build());
        Ok(if replace { req.replace() } else { req }.execute().await?)
    })
}

/// Sets the neighbour entry for `ip` on `ifname` to `mac`, `permanent` or
/// else `reachable` (`ip neigh replace`).
pub fn neighbour(
    ns: &Netns,
    ifname: &str,
    ip: IpAddr,
    mac: [u8; 6],
    permanent: bool,
) -> Result<()> {
    let state = if permanent {
        NeighbourState::Permanent
    } else {
        NeighbourState::Reachable
    };
    in_ns(ns, &format!("neighbour {ip} on {ifname}"), |h| async move {
        Ok(h.neighbours()
            .add(index(ifname)?, ip)
            .link_layer_address(&mac)
            .state(state)
            .replace()
            .execute()
            .await?)
    })
}

/// The hardware address of `ifname`.
pub fn mac(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    in_ns(ns, &format!("link {ifname}"), |h| async move {
        let link = h
            .link()
            .get()
            .match_name(ifname)
            .execute()
            .try_next()
            .await?
            .with_context(|| format!("no link {ifname}"))?;
        link.attributes
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            })
            .with_context(|| format!("{ifname} has no Ethernet address"))
    })
}
