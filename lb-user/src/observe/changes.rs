//! What changed, and why. Between two applies the agent compares what is
//! in force: each backend that came, went, went down or up or changed
//! weight, each Swarm node that joined or left the allow-list and each
//! protected port (range) that was added or removed is logged with its
//! name and the reason; each backend's last transition is kept for
//! `swarmlb status`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::{datapath::balancer_writer::AppliedVip, observe::state::ZoneState};

/// A backend's last transition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    /// Unix time (seconds).
    pub at: f64,
    /// What happened: `added`, `removed`, `down`, `up`, `draining`, `weight 1 → 3`, ….
    pub change: String,
    /// Why: the source and its word (`health: connect: Connection refused`,
    /// `Swarm: node w1: availability drain`, `config`).
    pub reason: String,
}

/// One VIP's backend and its last transition (the state file's list).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendTransition {
    pub vip: String,
    pub backend: IpAddr,
    #[serde(flatten)]
    pub last: Transition,
}

/// (VIP, backend) → (weight, up), as applied.
fn backend_states(vips: &[AppliedVip]) -> BTreeMap<(String, IpAddr), (u32, bool)> {
    vips.iter().flat_map(|v| v.backends.iter().map(|b| ((v.name.clone(), b.address), (b.weight, b.up)))).collect()
}

/// Each backend whose presence, health or weight differs between
/// `before` and `after`, with the change in words.
pub fn backend_changes(before: &[AppliedVip], after: &[AppliedVip]) -> Vec<((String, IpAddr), String)> {
    let (old, new) = (backend_states(before), backend_states(after));
    let keys: BTreeSet<&(String, IpAddr)> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let change = match (old.get(key), new.get(key)) {
                (None, Some((w, up))) => format!("added with weight {w}{}", if *up { "" } else { ", down" }),
                (Some(_), None) => "removed".to_owned(),
                (Some((_, true)), Some((_, false))) => "down".to_owned(),
                (Some((_, false)), Some((_, true))) => "up".to_owned(),
                (Some((w0, _)), Some((0, _))) if *w0 != 0 => format!("draining (weight {w0} → 0)"),
                (Some((w0, _)), Some((w1, _))) if w0 != w1 => format!("weight {w0} → {w1}"),
                _ => return None,
            };
            Some((key.clone(), change))
        })
        .collect()
}

/// Protected ports (ranges) per zone that were added (`true`) or removed.
pub fn port_changes(before: &[ZoneState], after: &[ZoneState]) -> Vec<(String, String, bool)> {
    let ports = |zones: &[ZoneState]| -> BTreeSet<(String, String)> {
        zones.iter().flat_map(|z| z.protected.iter().map(|p| (z.name.clone(), p.clone()))).collect()
    };
    let (old, new) = (ports(before), ports(after));
    let added = new.difference(&old).map(|(z, p)| (z.clone(), p.clone(), true));
    let removed = old.difference(&new).map(|(z, p)| (z.clone(), p.clone(), false));
    added.chain(removed).collect()
}

/// Node addresses that joined (`true`) or left the allow-list.
pub fn node_changes(before: &[IpAddr], after: &[IpAddr]) -> Vec<(IpAddr, bool)> {
    let (old, new): (BTreeSet<&IpAddr>, BTreeSet<&IpAddr>) = (before.iter().collect(), after.iter().collect());
    new.difference(&old).map(|a| (**a, true)).chain(old.difference(&new).map(|a| (**a, false))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::balancer_writer::AppliedBackend;

    fn vip(backends: &[(&str, u32, bool)]) -> Vec<AppliedVip> {
        vec![AppliedVip {
            name: "web".into(),
            address: "192.0.2.1".parse().unwrap(),
            mode: "nat".into(),
            table: 0,
            rules: vec![],
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (a, weight, up))| AppliedBackend { id: i as u32, address: a.parse().unwrap(), weight: *weight, up: *up, slots: 0 })
                .collect(),
            firewall: vec![],
        }]
    }

    #[test]
    fn every_backend_change_is_named() {
        let before = vip(&[("10.0.0.1", 1, true), ("10.0.0.2", 1, true), ("10.0.0.3", 2, true), ("10.0.0.4", 1, true), ("10.0.0.5", 1, false)]);
        let after = vip(&[("10.0.0.1", 1, true), ("10.0.0.2", 0, true), ("10.0.0.3", 5, true), ("10.0.0.5", 1, true), ("10.0.0.6", 3, true), ("10.0.0.4", 1, false)]);
        let got: Vec<(String, String)> = backend_changes(&before, &after).into_iter().map(|((_, a), c)| (a.to_string(), c)).collect();
        let want = [
            ("10.0.0.2", "draining (weight 1 → 0)"),
            ("10.0.0.3", "weight 2 → 5"),
            ("10.0.0.4", "down"),
            ("10.0.0.5", "up"),
            ("10.0.0.6", "added with weight 3"),
        ];
        assert_eq!(got, want.map(|(a, c)| (a.to_owned(), c.to_owned())));
        assert_eq!(backend_changes(&after, &vip(&[])).len(), 6, "all removed");
    }

    #[test]
    fn ports_and_nodes() {
        let zone = |p: &[&str]| ZoneState {
            name: "dmz".into(),
            zone_id: 1,
            slot: 0,
            protected: p.iter().map(|s| s.to_string()).collect(),
            allow: vec![],
            tunnels_allowed: false,
            routing_header_allowed: false,
        };
        assert_eq!(
            port_changes(&[zone(&["tcp/22", "tcp/5432"])], &[zone(&["tcp/22", "udp/53"])]),
            [("dmz".into(), "udp/53".into(), true), ("dmz".into(), "tcp/5432".into(), false)]
        );
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(node_changes(&[a("10.0.0.1"), a("10.0.0.2")], &[a("10.0.0.2"), a("10.0.0.3")]), [(a("10.0.0.3"), true), (a("10.0.0.1"), false)]);
    }
}
