//! Announcement of the VIPs this edge can serve now, for BIRD to carry to
//! the upstream router over BGP (`[bgp]`, docs/scale-out.md).
//!
//! swarmlb speaks no BGP. It keeps one host route per servable VIP in a
//! kernel routing table of its own (`bgp.table`), marked with
//! [`ROUTE_PROTOCOL`]; BIRD's `kernel` protocol learns that table and its
//! BGP sessions export what it learned. The kernel table is the interface
//! between the two, rather than an include file and `birdc configure`:
//!
//! - a route is added or removed by one netlink message, atomic and
//!   idempotent; nothing is parsed, no configure races another one, and a
//!   BIRD restart finds the table as it is;
//! - the routes outlive this process: a restart or upgrade of swarmlb
//!   (the pinned data path forwarding on) keeps announcing, and the next
//!   agent takes the table over as it finds it;
//! - each route names the outside interface, so the kernel itself deletes
//!   it when that interface is taken down, even with swarmlb not running.
//!
//! A VIP is announced while some backend of it is up with a weight above
//! zero and an outside interface is up; `swarmlb down` withdraws every
//! route ([`withdraw_all`]).

pub mod bird;
mod routes;

use std::{net::IpAddr, time::Duration};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use routes::withdraw_all;

use crate::{datapath::balancer_writer::AppliedVip, source::netif::NetlinkWatch};

/// The protocol number on swarmlb's routes (`ip route show proto 201`;
/// unassigned in iproute2's rt_protos). BIRD sees it as `krt_source`.
pub const ROUTE_PROTOCOL: u8 = 201;

/// How often the table is checked even when nothing was said to change:
/// a route someone removed by hand comes back.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// What should be announced: the table, the outside interfaces (the
/// first one up carries the routes) and the VIPs with a backend to serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub table: u32,
    pub outside: Vec<String>,
    pub vips: Vec<IpAddr>,
}

impl Wanted {
    /// The VIPs of `vips` (as the balancer applied them) that have a
    /// backend up with a weight above zero.
    pub fn of(table: u32, outside: &[String], vips: &[AppliedVip]) -> Self {
        let servable = vips.iter().filter(|v| v.backends.iter().any(|b| b.up && b.weight > 0)).map(|v| v.address);
        Self { table, outside: outside.to_vec(), vips: servable.collect() }
    }
}

/// Keeps the routes in line with the latest [`Wanted`] in a task of its
/// own: on every change, every link change, and every few seconds.
pub struct Announcer {
    tx: watch::Sender<Option<Wanted>>,
}

impl Announcer {
    /// Starts the task (on the current tokio runtime); it sends the VIPs
    /// it announced to `announced` whenever they change.
    pub fn spawn(announced: mpsc::UnboundedSender<Vec<IpAddr>>) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(follow(rx, announced));
        Self { tx }
    }

    /// Announce `wanted` from now on; `None` (no `[bgp]`): nothing, and
    /// what was announced before is withdrawn.
    pub fn set(&self, wanted: Option<Wanted>) {
        self.tx.send_if_modified(|w| {
            let next = match (wanted, w.is_some()) {
                (Some(n), _) => Some(n),
                // An empty table 0 holds none of swarmlb's routes: every one goes.
                (None, true) => Some(Wanted::default()),
                (None, false) => None,
            };
            let changed = *w != next;
            *w = next;
            changed
        });
    }
}

async fn follow(mut rx: watch::Receiver<Option<Wanted>>, report: mpsc::UnboundedSender<Vec<IpAddr>>) {
    let mut links = NetlinkWatch::addresses().map_err(|e| warn!(error = format!("{e:#}"), "watching links for the VIP routes failed; checked every 5 s")).ok();
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    let mut last: Option<Vec<IpAddr>> = None;
    let handle = match routes::connect() {
        Ok(h) => h,
        Err(e) => return warn!(error = format!("{e:#}"), "no VIP routes for BIRD: opening rtnetlink failed"),
    };
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
            r = async { links.as_mut().unwrap().changed().await }, if links.is_some() => if r.is_err() { links = None },
        }
        let Some(wanted) = rx.borrow_and_update().clone() else { continue };
        match routes::sync(&handle, &wanted).await {
            Ok(now) => {
                if last.as_ref() != Some(&now) {
                    info!(table = wanted.table, announced = ?now, "VIP routes for BIRD");
                    let _ = report.send(now.clone());
                    last = Some(now);
                }
            }
            Err(e) => warn!(table = wanted.table, error = format!("{e:#}"), "writing the VIP routes failed; trying again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::balancer_writer::AppliedBackend;

    fn vip(address: &str, backends: &[(u32, bool)]) -> AppliedVip {
        AppliedVip {
            name: address.into(),
            address: address.parse().unwrap(),
            mode: "dsr".into(),
            table: 0,
            rules: Vec::new(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (weight, up))| AppliedBackend { address: format!("10.0.0.{i}").parse().unwrap(), id: i as u32, weight: *weight, up: *up, slots: 0 })
                .collect(),
            firewall: Vec::new(),
        }
    }

    #[test]
    fn a_vip_is_wanted_while_a_backend_can_take_new_flows() {
        let vips = [vip("203.0.113.1", &[(1, false), (1, true)]), vip("203.0.113.2", &[(1, false), (0, true)]), vip("203.0.113.3", &[]), vip("2001:db8::1", &[(3, true)])];
        let w = Wanted::of(100, &["eth0".into()], &vips);
        assert_eq!(w.vips, vec!["203.0.113.1".parse::<IpAddr>().unwrap(), "2001:db8::1".parse().unwrap()]);
    }
}
