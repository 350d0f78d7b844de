//! The Swarm mapping (`lb_user::source::swarm`): Engine API nodes and services,
//! as `docker node inspect` / `docker service inspect` print them, through
//! `NodeInfo::from_api` / `ServiceInfo::from_api` and `mapping::map` under
//! a fixed config; and the placement-constraint parser on any text.
//!
//! Input: a JSON object `{"selector": TEXT?, "views": [{"nodes": [NODE…],
//! "services": [SERVICE…]}…]}`. Each view is mapped with the previous
//! view's additions as `previous`, 100 s after it (so draining backends
//! come and go). `selector`, when it parses, replaces VIP `web`'s
//! `backends_from`. A node or service the Engine API types do not accept is
//! left out (the API client would refuse the whole list; leaving out one
//! keeps the rest of the input useful). Input that is not such JSON is
//! taken as a selector text.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use bollard::models::{Node, Service};
use lb_common::{
    balancer::MAX_BACKENDS_PER_VIP,
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};
use lb_user::{
    source::config::{Config, SwarmAdditions},
    source::swarm::{
        mapping::{self, Mapped},
        selector::{Constraint, NodeSelector},
        view::{NodeInfo, ServiceInfo, SwarmView},
    },
};
use serde::Deserialize;

use super::config::check_table;

/// The config the views are mapped for: three zones, IPv4 and IPv6 VIPs
/// with Swarm backends (one with a static backend too), one without.
/// `{SELECTOR}` is VIP `web`'s `backends_from`.
pub const CONFIG: &str = r#"
[swarm]
deregistration_delay_s = 300

[[interface]]
name = "eth1"
zone = "dmz"

[[interface]]
name = "eth2"
zone = "intra"

[zone.dmz]
protected = ["tcp/5432"]
[zone.intra]
[zone.backoffice]

[balancer]
outside_interfaces = ["eth1"]
inside_interface = "eth2"
table_size = 251

[[vip]]
name = "web"
address = "203.0.113.10"
rules = ["tcp/443", "tcp/80"]
backends = ["10.0.1.9"]
backends_from = {SELECTOR}

[[vip]]
name = "web6"
address = "2001:db8::10"
mode = "dsr"
rules = ["tcp/443"]
backends_from = "node.labels.lb==proxy && node.role!=manager"

[[vip]]
name = "static"
address = "203.0.113.11"
rules = ["udp/53"]
backends = ["10.0.1.8"]
"#;

/// VIP `web`'s selector unless the input brings one.
pub const DEFAULT_SELECTOR: &str = "node.labels.lb==proxy";

/// The fuzz input.
#[derive(Deserialize)]
struct Input {
    selector: Option<String>,
    #[serde(default)]
    views: Vec<RawView>,
}

/// One answer of the Engine API, undecoded.
#[derive(Deserialize)]
struct RawView {
    #[serde(default)]
    nodes: Vec<serde_json::Value>,
    #[serde(default)]
    services: Vec<serde_json::Value>,
}

/// [`CONFIG`] with `selector` as VIP `web`'s `backends_from`.
pub fn config(selector: &str) -> Result<Config, String> {
    let quoted = toml::Value::String(selector.to_owned()).to_string();
    Config::parse(&CONFIG.replace("{SELECTOR}", &quoted), "swarm-fuzz.toml").map_err(|e| e.to_string())
}

/// The property (see the module doc).
pub fn check(data: &[u8]) {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        if let Ok(text) = std::str::from_utf8(data) {
            check_selector(text);
        }
        return;
    };
    let selector = input.selector.as_deref().unwrap_or(DEFAULT_SELECTOR);
    check_selector(selector);
    let cfg = config(selector).or_else(|_| config(DEFAULT_SELECTOR)).expect("the fuzz config parses");
    let swarm = cfg.swarm().expect("[swarm]");
    let mut previous: Option<SwarmAdditions> = None;
    let mut last_view: Option<SwarmView> = None;
    for (i, raw) in input.views.iter().enumerate() {
        let mut view = SwarmView {
            nodes: raw.nodes.iter().filter_map(|v| Node::deserialize(v).ok()).map(|n| NodeInfo::from_api(&n)).collect(),
            services: raw.services.iter().filter_map(|v| Service::deserialize(v).ok()).map(|s| ServiceInfo::from_api(&s)).collect(),
        };
        if let Some(last) = &last_view {
            view.carry_unknown_states(last);
        }
        check_view(&view);
        let now = 1_000_000.0 + 100.0 * i as f64;
        match mapping::map(&cfg, swarm, &view, previous.as_ref(), now) {
            Ok(m) => {
                check_mapped(&cfg, &view, previous.as_ref(), &m, now);
                previous = Some(m.additions);
            }
            Err(e) => {
                assert!(view.nodes.is_empty(), "a view with nodes refused: {e}");
                assert!(!e.is_empty());
            }
        }
        last_view = Some(view);
    }
}

/// What the Engine API types become.
fn check_view(view: &SwarmView) {
    for s in &view.services {
        assert!(s.ports.iter().all(|p| p.published != 0), "an unassigned port kept: {:?}", s.ports);
        assert!(s.ports.windows(2).all(|w| w[0] < w[1]), "ports sorted and unique");
    }
    // The daemon saves the view and reads it back after a restart.
    let saved = serde_json::to_vec(view).expect("a view serializes");
    let back: SwarmView = serde_json::from_slice(&saved).expect("a saved view reads back");
    assert_eq!(&back, view, "the saved view reads back different");
}

/// A usable unicast backend address.
fn usable(a: IpAddr) -> bool {
    !a.is_unspecified() && !a.is_loopback() && !a.is_multicast()
}

fn check_mapped(cfg: &Config, view: &SwarmView, previous: Option<&SwarmAdditions>, m: &Mapped, now: f64) {
    let add = &m.additions;
    assert!(add.nodes.iter().all(|a| usable(*a)), "unusable node address in {:?}", add.nodes);
    assert!(add.nodes.len() <= view.nodes.len());
    let balancer = cfg.balancer().expect("[balancer]");
    let zones: BTreeSet<&String> = cfg.zones().keys().collect();
    for (zone, ports) in &add.protected {
        assert!(zones.contains(zone), "ports protected in unconfigured zone {zone}");
        assert!(ports.iter().all(|&(proto, port)| (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && port != 0), "{ports:?}");
    }
    for (vip_name, backends) in &add.backends {
        let vip = balancer.vips.iter().find(|v| &v.name == vip_name).expect("backends for a configured VIP");
        assert!(vip.backends_from.is_some(), "Swarm backends for {vip_name}, which has no backends_from");
        assert!(backends.len() <= MAX_BACKENDS_PER_VIP);
        let mut seen = BTreeSet::new();
        for b in backends {
            assert!(seen.insert(b.address), "vip {vip_name}: backend {} twice", b.address);
            assert_eq!(b.address.is_ipv4(), vip.address.is_ipv4(), "vip {vip_name}: backend {} of the other family", b.address);
            assert!(usable(b.address), "vip {vip_name}: unusable backend {}", b.address);
            assert_ne!(b.address, vip.address, "vip {vip_name} is its own backend");
            assert!(b.weight <= 65_535);
        }
        let prev: &[lb_user::source::config::BackendConfig] = previous.and_then(|p| p.backends.get(vip_name)).map_or(&[], Vec::as_slice);
        // A backend leaving is one the previous mapping had, now drained.
        for ((v, a), since) in add.leaving.iter().filter(|((v, _), _)| v == vip_name) {
            assert!(backends.iter().any(|b| b.address == *a && b.weight == 0), "vip {v}: leaving {a} is not a drained backend");
            assert!(prev.iter().any(|b| b.address == *a), "vip {v}: leaving {a} was not a backend");
            assert!(*since <= now && now - since < 300.0, "vip {v}: {a} leaving since {since} at {now}");
        }
    }
    for (v, _) in add.leaving.keys() {
        assert!(add.backends.contains_key(v), "leaving backends of VIP {v} without Swarm backends");
    }
    for v in balancer.vips.iter().filter(|v| v.backends_from.is_some()) {
        assert!(add.backends.contains_key(&v.name), "vip {} has a selector but no entry", v.name);
    }
    // What the daemon applies: the config with the additions.
    let effective = cfg.with_swarm(add);
    let compiled = effective.compile();
    // The reconciler's path: the additions as an input of their own.
    assert_eq!(cfg.compile_with(add), compiled, "compile_with differs from with_swarm + compile");
    for v in &balancer.vips {
        let merged = &effective.balancer().unwrap().vips.iter().find(|e| e.name == v.name).unwrap().backends;
        assert_eq!(&add.backends_of(v), merged, "vip {}: backends_of differs from with_swarm", v.name);
    }
    assert_eq!(compiled.zones.len(), cfg.compile().zones.len(), "the Swarm changed the zones");
    for z in &compiled.zones {
        let added: BTreeSet<(u8, u16)> = add.protected.get(&z.name).cloned().unwrap_or_default();
        assert!(added.iter().all(|p| z.ports.contains_key(p)), "zone {}: a port from the Swarm is not protected", z.name);
    }
    let b = effective.balancer().unwrap();
    let mut by_vip: BTreeMap<&str, Vec<(IpAddr, u32)>> = BTreeMap::new();
    for v in &b.vips {
        let mut seen = BTreeSet::new();
        assert!(v.backends.iter().all(|be| seen.insert(be.address)), "vip {}: effective backends repeat an address", v.name);
        by_vip.insert(&v.name, v.backends.iter().map(|be| (be.address, be.weight)).collect());
    }
    for backends in by_vip.values() {
        check_table(backends, b.table_size);
    }
}

/// The placement-constraint parser: an error with a message, or a
/// selector that shows its (trimmed) text, parses again from it to the
/// same selector, and matches a node exactly when each of its `&&` parts
/// does (checked on a bare node and on one carrying every label the
/// selector asks for).
pub fn check_selector(text: &str) {
    let s = match NodeSelector::parse(text) {
        Err(e) => return assert!(!e.is_empty(), "an error without a message for {text:?}"),
        Ok(s) => s,
    };
    let shown = s.to_string();
    assert_eq!(shown, text.trim());
    assert_eq!(NodeSelector::parse(&shown).as_ref(), Ok(&s), "{text:?} parses differently from its own text");
    let parts: Vec<NodeSelector> = text.split("&&").map(|c| NodeSelector::parse(c).expect("each part of a selector parses")).collect();
    let wanted: BTreeMap<String, String> = text
        .split("&&")
        .filter_map(|c| Constraint::parse(c).ok())
        .filter_map(|c| c.label_equals().map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let bare = NodeInfo { id: "n".into(), hostname: "h".into(), role: "worker".into(), ..Default::default() };
    let labelled = NodeInfo { labels: wanted, ..bare.clone() };
    for node in [bare, labelled] {
        assert_eq!(s.matches(&node), parts.iter().all(|p| p.matches(&node)), "{text:?} on {node:?}");
    }
}
