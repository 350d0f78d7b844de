//! What the Swarm adds to the config: backends for each VIP with
//! `backends_from`, protected ports for each zone, and the node addresses
//! that may reach Swarm's own ports.
//!
//! Everything odd — a node without a usable address, a bad label value, two
//! nodes with one address, a node with the VIP's own address, a service
//! with conflicting zone constraints — is
//! reported in the notes and skipped. Two rules keep a bad answer from the
//! API from emptying the backend set: a view without nodes is refused
//! (every swarm has at least the manager answering), and a VIP whose
//! selector matches nodes of which none is usable keeps its previous
//! backends.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    balancer::MAX_BACKENDS_PER_VIP,
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};

use super::{selector::Constraint, view::SwarmView};
use crate::source::config::{BackendConfig, Config, SwarmAdditions, SwarmConfig};

/// The additions and what was skipped, in words.
#[derive(Debug, Default)]
pub struct Mapped {
    pub additions: SwarmAdditions,
    pub notes: BTreeSet<String>,
    /// Why each (VIP, backend) has its weight, in words (the node and
    /// what decided it), for the change log and `swarmlb status`.
    pub reasons: BTreeMap<(String, IpAddr), String>,
}

/// A usable unicast address, or `None`.
fn usable(text: &str) -> Option<IpAddr> {
    let a: IpAddr = text.trim().parse().ok()?;
    (!a.is_unspecified() && !a.is_loopback() && !a.is_multicast()).then_some(a)
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let h = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    h.trim_start_matches('[').trim_end_matches(']')
}

/// Maps `view` for `cfg` at unix time `now`. `previous` is the last
/// applied mapping (for the keep-what-we-had and deregistration rules).
/// Errors mean the whole view is unusable.
pub fn map(cfg: &Config, swarm: &SwarmConfig, view: &SwarmView, previous: Option<&SwarmAdditions>, now: f64) -> Result<Mapped, String> {
    if view.nodes.is_empty() {
        return Err("the Swarm reported no nodes".into());
    }
    let mut out = Mapped::default();
    let mut nodes = view.nodes.clone();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));

    // Node addresses: what Swarm's own traffic comes from.
    let mut node_addr = BTreeMap::new();
    for n in &nodes {
        match usable(&n.addr).or_else(|| n.manager_addr.as_deref().and_then(|m| usable(host_of(m)))) {
            Some(a) => {
                node_addr.insert(n.id.clone(), a);
                out.additions.nodes.insert(a);
            }
            None => {
                out.notes.insert(format!("node {} ({}) has no usable address ({:?}): skipped", n.hostname, n.id, n.addr));
            }
        }
    }

    for vip in cfg.balancer().map(|b| b.vips.as_slice()).unwrap_or_default() {
        let Some(selector) = &vip.backends_from else { continue };
        let mut matched = 0;
        let mut backends: Vec<BackendConfig> = Vec::new();
        for n in nodes.iter().filter(|n| selector.matches(n)) {
            matched += 1;
            let address = match n.labels.get(&swarm.address_label) {
                Some(text) => {
                    let parsed: Option<Vec<IpAddr>> = text.split(',').map(usable).collect();
                    match parsed {
                        Some(list) => list.into_iter().find(|a| a.is_ipv4() == vip.address.is_ipv4()),
                        None => {
                            out.notes.insert(format!(
                                "node {}: label {}={text:?} is not a list of unicast addresses: skipped",
                                n.hostname, swarm.address_label
                            ));
                            continue;
                        }
                    }
                }
                None => node_addr.get(&n.id).copied().filter(|a| a.is_ipv4() == vip.address.is_ipv4()),
            };
            // A node without an address of the VIP's family serves the
            // other family's VIP: not odd.
            let Some(address) = address else { continue };
            // The VIP as its own backend would send its packets round in a loop.
            if address == vip.address {
                out.notes.insert(format!("vip {}: node {} has the VIP's own address {address}: skipped", vip.name, n.hostname));
                continue;
            }
            let mut reason = format!("node {} matches {selector}", n.hostname);
            let weight = match n.labels.get(&swarm.weight_label) {
                None => 1,
                Some(text) => match text.trim().parse::<u32>() {
                    Ok(w) if w <= 65_535 => {
                        reason = format!("node {}: label {}={w}", n.hostname, swarm.weight_label);
                        w
                    }
                    // A typo must not drain a serving node: it keeps the
                    // weight it had; a node never seen with a good one is
                    // left out.
                    _ => match previous.and_then(|p| p.backends.get(&vip.name)?.iter().find(|b| b.address == address)) {
                        Some(last) => {
                            reason = format!(
                                "node {}: label {}={text:?} is not a weight 0-65535: keeping its last good weight {}",
                                n.hostname, swarm.weight_label, last.weight
                            );
                            out.notes.insert(reason.clone());
                            last.weight
                        }
                        None => {
                            out.notes.insert(format!(
                                "node {}: label {}={text:?} is not a weight 0-65535: skipped (no good weight to keep)",
                                n.hostname, swarm.weight_label
                            ));
                            continue;
                        }
                    },
                },
            };
            if backends.iter().any(|b| b.address == address) {
                out.notes.insert(format!("vip {}: node {} has the address {address} of another node: skipped", vip.name, n.hostname));
                continue;
            }
            // Drained, paused or not ready: no new flows, existing ones finish.
            let serving = n.ready() && n.availability == "active";
            if !serving {
                reason = format!("node {}: state {}, availability {}", n.hostname, n.state, n.availability);
            }
            out.reasons.insert((vip.name.clone(), address), reason);
            backends.push(BackendConfig { address, weight: if serving { weight } else { 0 } });
        }
        if matched > 0 && backends.is_empty() {
            if let Some(prev) = previous.and_then(|p| p.backends.get(&vip.name)).filter(|p| !p.is_empty()) {
                out.notes.insert(format!(
                    "vip {}: {matched} nodes match {selector} but none is usable: keeping the previous {} backends",
                    vip.name,
                    prev.len()
                ));
                backends = prev.clone();
            }
        }
        // A node that stops matching (label removed, node gone) is drained
        // first: no new flows, established ones finish, for
        // `deregistration_delay`.
        for gone in previous.and_then(|p| p.backends.get(&vip.name)).into_iter().flatten() {
            if backends.iter().any(|b| b.address == gone.address) {
                continue;
            }
            let key = (vip.name.clone(), gone.address);
            let since = previous.and_then(|p| p.leaving.get(&key).copied()).unwrap_or(now);
            if now - since < swarm.deregistration_delay.as_secs_f64() {
                out.reasons.insert(
                    key.clone(),
                    format!("no node matching {selector} has it any more: draining for {} s", swarm.deregistration_delay.as_secs()),
                );
                backends.push(BackendConfig { address: gone.address, weight: 0 });
                out.additions.leaving.insert(key, since);
            }
        }
        if backends.len() > MAX_BACKENDS_PER_VIP {
            out.notes.insert(format!("vip {}: {} backends from the Swarm, only the first {MAX_BACKENDS_PER_VIP} are used", vip.name, backends.len()));
            backends.truncate(MAX_BACKENDS_PER_VIP);
        }
        out.additions.backends.insert(vip.name.clone(), backends);
    }

    // Protected ports: a service pinned to zone X is closed on every other
    // configured zone's interfaces.
    let zones: Vec<&String> = cfg.zones().keys().collect();
    for s in &view.services {
        let constraints: Vec<Constraint> = s.constraints.iter().filter_map(|c| Constraint::parse(c).ok()).collect();
        let pinned: BTreeSet<&str> =
            constraints.iter().filter_map(Constraint::label_equals).filter(|(k, _)| *k == swarm.zone_label).map(|(_, v)| v).collect();
        let excluded: BTreeSet<&str> =
            constraints.iter().filter_map(Constraint::label_differs).filter(|(k, _)| *k == swarm.zone_label).map(|(_, v)| v).collect();
        let zone = match pinned.len() {
            0 => continue,
            1 => *pinned.first().expect("one"),
            _ => {
                out.notes.insert(format!("service {}: conflicting zone constraints {pinned:?}: skipped", s.name));
                continue;
            }
        };
        if excluded.contains(zone) {
            out.notes.insert(format!("service {}: constrained to zone {zone} and not to it: skipped", s.name));
            continue;
        }
        for p in &s.ports {
            let proto = match p.protocol.as_str() {
                "tcp" => IPPROTO_TCP,
                "udp" => IPPROTO_UDP,
                other => {
                    out.notes.insert(format!("service {}: port {}/{other} is not TCP or UDP: not protected", s.name, p.published));
                    continue;
                }
            };
            let Ok(port) = u16::try_from(p.published) else {
                out.notes.insert(format!("service {}: published port {} out of range: skipped", s.name, p.published));
                continue;
            };
            for z in zones.iter().filter(|z| z.as_str() != zone) {
                out.additions.protected.entry((*z).clone()).or_default().insert((proto, port));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::view::{NodeInfo, PortInfo, ServiceInfo};

    const CONFIG: &str = r#"
[swarm]

[[interface]]
name = "eth1"
zone = "dmz"

[[interface]]
name = "eth2"
zone = "intra"

[zone.dmz]
[zone.intra]

[balancer]
outside_interfaces = ["eth1"]
inside_interface = "eth2"

[[vip]]
name = "web"
address = "203.0.113.10"
rules = ["tcp/443"]
backends = ["10.0.0.99"]
backends_from = "node.labels.lb==proxy"
"#;

    fn cfg() -> Config {
        Config::parse(CONFIG, "test").unwrap()
    }

    fn node(id: &str, addr: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            hostname: format!("host-{id}"),
            role: "worker".into(),
            state: "ready".into(),
            availability: "active".into(),
            addr: addr.into(),
            manager_addr: None,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn service(name: &str, constraints: &[&str], ports: &[(&str, u32)]) -> ServiceInfo {
        ServiceInfo {
            id: name.into(),
            name: name.into(),
            constraints: constraints.iter().map(|c| c.to_string()).collect(),
            ports: ports.iter().map(|(p, n)| PortInfo { protocol: p.to_string(), published: *n, mode: "host".into() }).collect(),
        }
    }

    fn run(view: &SwarmView, previous: Option<&SwarmAdditions>) -> Mapped {
        run_at(view, previous, 1000.0)
    }

    fn run_at(view: &SwarmView, previous: Option<&SwarmAdditions>, now: f64) -> Mapped {
        let c = cfg();
        map(&c, c.swarm().unwrap(), view, previous, now).unwrap()
    }

    fn backends(m: &Mapped) -> Vec<(String, u32)> {
        m.additions.backends["web"].iter().map(|b| (b.address.to_string(), b.weight)).collect()
    }

    #[test]
    fn labelled_ready_active_nodes_are_backends() {
        let mut drained = node("c", "10.0.0.3", &[("lb", "proxy")]);
        drained.availability = "drain".into();
        let mut down = node("d", "10.0.0.4", &[("lb", "proxy")]);
        down.state = "down".into();
        let view = SwarmView {
            nodes: vec![
                node("a", "10.0.0.1", &[("lb", "proxy")]),
                node("b", "10.0.0.2", &[("lb", "proxy"), ("swarmlb.weight", "3"), ("swarmlb.address", "10.9.0.2,fd00::2")]),
                drained,
                down,
                node("e", "10.0.0.5", &[]),
            ],
            services: vec![],
        };
        let m = run(&view, None);
        assert_eq!(backends(&m), [("10.0.0.1".into(), 1), ("10.9.0.2".into(), 3), ("10.0.0.3".into(), 0), ("10.0.0.4".into(), 0)]);
        assert_eq!(m.additions.nodes.len(), 5, "every node may reach Swarm's ports");
        assert!(m.notes.is_empty(), "{:?}", m.notes);
        // The static backend stays, Swarm's join it.
        let effective = cfg().with_swarm(&m.additions);
        let addrs: Vec<String> = effective.balancer().unwrap().vips[0].backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.99", "10.0.0.1", "10.9.0.2", "10.0.0.3", "10.0.0.4"]);
    }

    #[test]
    fn odd_nodes_are_skipped_with_a_note() {
        let mut manager = node("m", "0.0.0.0", &[("lb", "proxy")]);
        manager.manager_addr = Some("10.0.0.7:2377".into());
        let view = SwarmView {
            nodes: vec![
                node("a", "", &[("lb", "proxy")]),
                node("b", "10.0.0.2", &[("lb", "proxy"), ("swarmlb.weight", "heavy")]),
                node("c", "10.0.0.3", &[("lb", "proxy"), ("swarmlb.address", "not-an-ip")]),
                node("d", "10.0.0.4", &[("lb", "proxy")]),
                node("e", "10.0.0.4", &[("lb", "proxy")]),
                manager,
            ],
            services: vec![],
        };
        let m = run(&view, None);
        assert_eq!(backends(&m), [("10.0.0.4".into(), 1), ("10.0.0.7".into(), 1)], "the manager's address comes from ManagerStatus");
        let notes: Vec<&String> = m.notes.iter().collect();
        assert_eq!(notes.len(), 4, "{notes:?}");
        for want in ["no usable address", "is not a weight", "is not a list of unicast addresses", "of another node"] {
            assert!(notes.iter().any(|n| n.contains(want)), "{want} in {notes:?}");
        }
    }

    #[test]
    fn a_bad_weight_label_keeps_the_last_good_weight() {
        let with_weight = |w: &str| SwarmView {
            nodes: vec![node("a", "10.0.0.1", &[("lb", "proxy"), ("swarmlb.weight", w)]), node("b", "10.0.0.2", &[("lb", "proxy")])],
            services: vec![],
        };
        let good = run(&with_weight("3"), None);
        assert_eq!(backends(&good), [("10.0.0.1".into(), 3), ("10.0.0.2".into(), 1)]);
        let typo = run(&with_weight("3O"), Some(&good.additions));
        assert_eq!(backends(&typo), backends(&good), "the typo changes nothing");
        assert!(typo.notes.iter().any(|n| n.contains("\"3O\" is not a weight 0-65535: keeping its last good weight 3")), "{:?}", typo.notes);
        // Fixed: the new weight applies and the note goes.
        let fixed = run(&with_weight("5"), Some(&typo.additions));
        assert_eq!(backends(&fixed)[0], ("10.0.0.1".into(), 5));
        assert!(fixed.notes.is_empty(), "{:?}", fixed.notes);
    }

    /// Found by the `swarm_mapping` fuzz target.
    #[test]
    fn a_node_with_the_vips_address_is_not_its_backend() {
        let view = SwarmView {
            nodes: vec![
                node("a", "203.0.113.10", &[("lb", "proxy")]),
                node("b", "10.0.0.2", &[("lb", "proxy"), ("swarmlb.address", "203.0.113.10")]),
                node("c", "10.0.0.3", &[("lb", "proxy")]),
            ],
            services: vec![],
        };
        let m = run(&view, None);
        assert_eq!(backends(&m), [("10.0.0.3".into(), 1)]);
        assert_eq!(m.notes.iter().filter(|n| n.contains("the VIP's own address")).count(), 2, "{:?}", m.notes);
    }

    #[test]
    fn bad_data_never_empties_the_backends() {
        let c = cfg();
        let empty = SwarmView::default();
        assert!(map(&c, c.swarm().unwrap(), &empty, None, 0.0).is_err(), "a view without nodes is refused");
        let good = run(&SwarmView { nodes: vec![node("a", "10.0.0.1", &[("lb", "proxy")])], services: vec![] }, None);
        // The same node now with a broken address label: previous kept.
        let broken = SwarmView { nodes: vec![node("a", "10.0.0.1", &[("lb", "proxy"), ("swarmlb.address", "x")])], services: vec![] };
        let m = run(&broken, Some(&good.additions));
        assert_eq!(backends(&m), [("10.0.0.1".into(), 1)]);
        assert!(m.notes.iter().any(|n| n.contains("keeping the previous 1 backends")), "{:?}", m.notes);
    }

    #[test]
    fn a_node_that_stops_matching_drains_for_the_deregistration_delay() {
        let both = SwarmView { nodes: vec![node("a", "10.0.0.1", &[("lb", "proxy")]), node("b", "10.0.0.2", &[("lb", "proxy")])], services: vec![] };
        let one = SwarmView { nodes: vec![node("a", "10.0.0.1", &[("lb", "proxy")]), node("b", "10.0.0.2", &[])], services: vec![] };
        let t0 = 1000.0;
        let first = run_at(&both, None, t0);
        // Label removed: weight 0 (established flows finish), for 300 s.
        let draining = run_at(&one, Some(&first.additions), t0 + 1.0);
        assert_eq!(backends(&draining), [("10.0.0.1".into(), 1), ("10.0.0.2".into(), 0)]);
        let still = run_at(&one, Some(&draining.additions), t0 + 250.0);
        assert_eq!(backends(&still), [("10.0.0.1".into(), 1), ("10.0.0.2".into(), 0)]);
        let gone = run_at(&one, Some(&still.additions), t0 + 302.0);
        assert_eq!(backends(&gone), [("10.0.0.1".into(), 1)]);
        // Labelled again while draining: back at full weight, no longer leaving.
        let back = run_at(&both, Some(&still.additions), t0 + 260.0);
        assert_eq!(backends(&back), [("10.0.0.1".into(), 1), ("10.0.0.2".into(), 1)]);
        assert!(back.additions.leaving.is_empty());
    }

    #[test]
    fn services_protect_ports_without_a_balancer_too() {
        let c = Config::parse("[swarm]\n[[interface]]\nname = \"eth1\"\nzone = \"dmz\"\n[zone.dmz]\n[zone.intra]\n", "test").unwrap();
        let view = SwarmView { nodes: vec![node("a", "10.0.0.1", &[])], services: vec![service("db", &["node.labels.zone==intra"], &[("tcp", 5432)])] };
        let m = map(&c, c.swarm().unwrap(), &view, None, 0.0).unwrap();
        assert_eq!(m.additions.protected["dmz"], BTreeSet::from([(IPPROTO_TCP, 5432)]));
    }

    #[test]
    fn services_pinned_to_a_zone_are_closed_on_the_others() {
        let view = SwarmView {
            nodes: vec![node("a", "10.0.0.1", &[])],
            services: vec![
                service("db", &["node.labels.zone==intra"], &[("tcp", 5432), ("udp", 5432)]),
                service("web", &["node.labels.zone == dmz"], &[("tcp", 8443)]),
                service("public", &["node.role==worker"], &[("tcp", 80)]),
                service("confused", &["node.labels.zone==intra", "node.labels.zone==dmz"], &[("tcp", 9000)]),
                service("contradict", &["node.labels.zone==intra", "node.labels.zone!=intra"], &[("tcp", 9001)]),
                service("sctp", &["node.labels.zone==intra"], &[("sctp", 9002)]),
                service("elsewhere", &["node.labels.zone==backoffice"], &[("tcp", 7000)]),
            ],
        };
        let m = run(&view, None);
        let p = &m.additions.protected;
        assert_eq!(p["dmz"], BTreeSet::from([(IPPROTO_TCP, 5432), (IPPROTO_UDP, 5432), (IPPROTO_TCP, 7000)]));
        assert_eq!(p["intra"], BTreeSet::from([(IPPROTO_TCP, 8443), (IPPROTO_TCP, 7000)]));
        assert_eq!(m.notes.len(), 3, "{:?}", m.notes);
        let effective = cfg().with_swarm(&m.additions);
        let compiled = effective.compile();
        let dmz = compiled.zones.iter().find(|z| z.name == "dmz").unwrap();
        assert!(dmz.ports.contains_key(&(IPPROTO_TCP, 5432)) && !dmz.ports.contains_key(&(IPPROTO_TCP, 80)));
        assert!(dmz.sources_v4.contains_key(&([10, 0, 0, 1], 32)), "node addresses join the allow-list for Swarm's ports");
    }
}
