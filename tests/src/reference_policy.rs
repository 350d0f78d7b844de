//! The isolator's policy answered straight from the config: the
//! independent reference the differential tests hold the kernel to (no
//! flattening, no maps), beside `lb_common::model`'s decision.

use std::collections::HashMap;

use lb_common::{
    isolator::{ZoneBinding, SET_NODES, SET_TRUSTED},
    model::Policy,
};
use lb_user::source::config::{Cidr, Config, ZoneConfig};

/// The policy answered straight from the config — the independent reference
/// the differential tests hold the kernel to (no flattening, no maps).
pub struct ReferencePolicy {
    bindings: HashMap<u32, ZoneBinding>,
    /// slot → zone config.
    slots: HashMap<u32, ZoneConfig>,
    nodes: Vec<Cidr>,
}

impl ReferencePolicy {
    /// `ifindexes`: interface name → ifindex; `slots`: zone name → slot.
    pub fn new(cfg: &Config, ifindexes: &HashMap<String, u32>, slots: &HashMap<String, u32>) -> Self {
        let mut bindings = HashMap::new();
        let mut by_slot = HashMap::new();
        let compiled = cfg.compile();
        for (name, z) in cfg.zones() {
            let Some(&slot) = slots.get(name) else { continue };
            let zone_id = compiled.zones.iter().position(|c| &c.name == name).unwrap_or(usize::MAX);
            by_slot.insert(slot, z.clone());
            for i in cfg.interfaces().iter().filter(|i| &i.zone == name) {
                if let Some(&ifindex) = ifindexes.get(&i.name) {
                    bindings.insert(ifindex, z.binding(slot, zone_id as u32));
                }
            }
        }
        Self { bindings, slots: by_slot, nodes: cfg.nodes().to_vec() }
    }

    fn sets(&self, slot: u32, addr: Cidr) -> u32 {
        let Some(z) = self.slots.get(&slot) else { return 0 };
        let trusted = z.allow.iter().any(|c| c.contains(&addr));
        let node = self.nodes.iter().any(|c| c.contains(&addr));
        (if trusted { SET_TRUSTED } else { 0 }) | (if node { SET_NODES } else { 0 })
    }
}

impl Policy for ReferencePolicy {
    fn binding(&self, ifindex: u32) -> Option<ZoneBinding> {
        self.bindings.get(&ifindex).copied()
    }
    fn port_access(&self, slot: u32, proto: u8, port: u16) -> u32 {
        self.slots.get(&slot).map_or(0, |z| z.port_access(proto, port))
    }
    fn source_sets_v4(&self, slot: u32, addr: [u8; 4]) -> u32 {
        self.sets(slot, Cidr::V4(addr, 32))
    }
    fn source_sets_v6(&self, slot: u32, addr: [u8; 16]) -> u32 {
        self.sets(slot, Cidr::V6(addr, 128))
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    /// Longest-prefix match over the flattened entries equals the semantic
    /// "every prefix containing the address" of the reference policy.
    #[test]
    fn flattening_matches_the_reference() {
        let mut rng = StdRng::seed_from_u64(0x1234_5678_9abc_def0);
        let mut next = move || rng.gen::<u64>();
        for _ in 0..50 {
            let mut allow = Vec::new();
            let mut nodes = Vec::new();
            for i in 0..12 {
                let len = (next() % 33) as u8;
                let addr = [10, (next() % 4) as u8, (next() % 4) as u8, (next() % 256) as u8];
                let c = Cidr::V4(addr, len).masked();
                if i % 2 == 0 { allow.push(c) } else { nodes.push(c) }
            }
            let text = format!(
                "[[interface]]\nname='e'\nzone='z'\n[zone.z]\nallow={:?}\n[cluster]\nnodes={:?}\n",
                allow.iter().map(Cidr::to_string).collect::<Vec<_>>(),
                nodes.iter().map(Cidr::to_string).collect::<Vec<_>>()
            );
            let cfg = Config::parse(&text, "t").unwrap();
            let compiled = cfg.compile();
            let reference = ReferencePolicy::new(&cfg, &HashMap::from([("e".into(), 1)]), &HashMap::from([("z".into(), 0)]));
            for _ in 0..500 {
                let addr = [10, (next() % 4) as u8, (next() % 4) as u8, (next() % 256) as u8];
                let lpm = compiled.zones[0]
                    .sources_v4
                    .iter()
                    .filter(|((a, l), _)| Cidr::V4(*a, *l).contains(&Cidr::V4(addr, 32)))
                    .max_by_key(|((_, l), _)| *l)
                    .map_or(0, |(_, s)| *s);
                assert_eq!(lpm, reference.source_sets_v4(0, addr), "{addr:?} under {text}");
            }
        }
    }
}
