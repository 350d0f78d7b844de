//! The isolator's smallest lab: a host with one DMZ-facing interface
//! (`dmz0`) and a peer on its other end, and a config protecting one port
//! there.

use harness::{Netns, Topology};

/// A config that binds `dmz0` to the `dmz` zone and protects tcp/5432.
pub const GOOD: &str = r#"
[[interface]]
name = "dmz0"
zone = "dmz"

[zone.dmz]
protected = ["tcp/5432"]
"#;

/// The host (with `dmz0`) and its peer (with `out0`), named after `tag`;
/// the topology removes both when dropped.
pub fn one_iface(tag: &str) -> (Topology, Netns, Netns) {
    harness::require_root().unwrap();
    let mut topo = Topology::new();
    let host = topo.netns(&format!("{tag}h"));
    let peer = topo.netns(&format!("{tag}p"));
    topo.veth(&peer, "out0", &host, "dmz0");
    (topo, host, peer)
}
