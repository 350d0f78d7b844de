//! The VIP routes themselves: read, added and removed through rtnetlink.

use std::net::IpAddr;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::{
    packet_route::{
        link::{LinkAttribute, LinkFlags, State},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    },
    Handle, RouteMessageBuilder,
};

use super::{Wanted, ROUTE_PROTOCOL};

/// A handle on a new rtnetlink socket; its connection runs as a task on
/// the current runtime.
pub(super) fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// One of swarmlb's routes as the kernel holds it.
struct Held {
    table: u32,
    vip: IpAddr,
    oif: Option<u32>,
    message: RouteMessage,
}

/// Every route with [`ROUTE_PROTOCOL`], of both families, in any table.
async fn held(h: &Handle) -> Result<Vec<Held>> {
    let mut out = Vec::new();
    for family in [RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(), RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()] {
        let mut dump = h.route().get(family).execute();
        while let Some(m) = dump.try_next().await.context("listing routes")? {
            if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                continue;
            }
            let mut r = Held { table: u32::from(m.header.table), vip: IpAddr::from([0u8; 4]), oif: None, message: m.clone() };
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Table(t) => r.table = *t,
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                    _ => {}
                }
            }
            if let Some(d) = dst {
                r.vip = d;
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The index of the first of `names` that is up (administratively, and
/// its link: operational state up, or unknown for drivers that say none).
async fn first_up(h: &Handle, names: &[String]) -> Result<Option<u32>> {
    for name in names {
        let mut links = h.link().get().match_name(name.clone()).execute();
        let Ok(Some(link)) = links.try_next().await else { continue };
        let oper = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::OperState(s) => Some(*s),
            _ => None,
        });
        if link.header.flags.contains(LinkFlags::Up) && matches!(oper, Some(State::Up | State::Unknown)) {
            return Ok(Some(link.header.index));
        }
    }
    Ok(None)
}

/// Makes `wanted.table` hold exactly a host route per wanted VIP on the
/// first outside interface that is up (none when none is); returns the
/// VIPs announced.
pub(super) async fn sync(h: &Handle, wanted: &Wanted) -> Result<Vec<IpAddr>> {
    let carrier = first_up(h, &wanted.outside).await?;
    let held = held(h).await?;
    let want: Vec<IpAddr> = if carrier.is_some() { wanted.vips.clone() } else { Vec::new() };
    // Withdrawals first (a VIP not wanted, or a route in another table:
    // `bgp.table` changed, or `[bgp]` went); a wanted VIP whose route
    // names another interface is replaced below.
    for r in held.iter().filter(|r| r.table != wanted.table || !want.contains(&r.vip)) {
        h.route().del(r.message.clone()).execute().await.with_context(|| format!("removing the route to {} from table {}", r.vip, r.table))?;
    }
    let mine: Vec<&Held> = held.iter().filter(|r| r.table == wanted.table).collect();
    for vip in &want {
        if mine.iter().any(|r| r.vip == *vip && r.oif == carrier) {
            continue;
        }
        let oif = carrier.expect("VIPs are wanted only with an interface up");
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(*vip, if vip.is_ipv4() { 32 } else { 128 })
            .map_err(|e| anyhow::anyhow!("route to {vip}: {e:?}"))?
            .table_id(wanted.table)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .scope(RouteScope::Link)
            .output_interface(oif)
            .build();
        h.route().add(route).replace().execute().await.with_context(|| format!("adding the route to {vip} in table {}", wanted.table))?;
    }
    Ok(want)
}

/// Removes every route of swarmlb's (`swarmlb down`: nothing is served
/// here any more); returns how many there were.
pub fn withdraw_all() -> Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        let h = connect()?;
        let n = held(&h).await?.len();
        // No interface, no VIP, table 0: every route of swarmlb's goes.
        sync(&h, &Wanted::default()).await?;
        Ok(n)
    })
}
