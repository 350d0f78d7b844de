//! The reconciler's diff (`lb_user::reconcile`): what each input writes,
//! on the real programs and maps, in a namespace of its own. A health flip
//! or an unchanged input must not re-attach interfaces or rewrite what
//! did not change.

use std::net::{IpAddr, Ipv4Addr};

use harness::{
    config::{EdgeConfig, Vip},
    pins::private_pin_dir,
    root_or_skip, Topology,
};
use lb_user::{
    datapath::loader::{remove_pins, MapSizes},
    reconcile::Reconciler,
    source::{config::Config, health::Down},
};

/// Backends of the VIP.
const BACKENDS: usize = 100;

fn backend(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 1, 2 + i as u8))
}

fn config(pins: &std::path::Path) -> Config {
    let body = EdgeConfig::balancer()
        .setting(&format!("pin_path = \"{}\"", pins.display()))
        .vip(Vip::new("web", "203.0.113.10".parse().unwrap(), &["tcp/443"]).backends((0..BACKENDS).map(backend)))
        .to_toml();
    Config::parse(&body, "reconcile.toml").expect("the config parses")
}

#[test]
fn each_input_writes_only_what_it_changes() {
    if !root_or_skip() {
        return;
    }
    let mut topo = Topology::new();
    let edge = topo.netns("recon");
    topo.veth(&edge, "e-out", &edge, "e-out-p");
    topo.veth(&edge, "e-in", &edge, "e-in-p");
    topo.addr(&edge, "e-out", "198.51.100.1/24");
    topo.addr(&edge, "e-in", "10.1.0.1/16");
    // The balancer refuses interfaces that do not forward.
    topo.forwarding(&edge);
    let pins = private_pin_dir("lab", "recon");
    let cfg = config(&pins);
    let result = edge.run(|| -> anyhow::Result<()> {
        let mut r = Reconciler::load(&pins, MapSizes::of(cfg.balancer()))?;
        let first = r.set_config(cfg.clone(), Default::default())?;
        println!("first config: {first:?}");
        let mut attached = first.attached.clone();
        attached.sort();
        assert_eq!(attached, ["e-in", "e-out"], "{first:?}");
        assert!(first.balancer && first.map_writes > BACKENDS as u64, "{first:?}");

        // A config load (start, SIGHUP) runs every writer again, but an
        // interface whose program is in place is not attached again.
        let again = r.set_config(cfg.clone(), Default::default())?;
        println!("the same config again: {again:?}");
        assert!(again.attached.is_empty() && again.detached.is_empty(), "{again:?}");
        assert!(again.map_writes < first.map_writes / 100, "the tables are written where they differ: {again:?}");

        let unchanged = r.set_netif()?;
        assert!(unchanged.attached.is_empty() && !unchanged.impossible && !unchanged.balancer && unchanged.map_writes == 0, "{unchanged:?}");

        // One backend down and up again: its entry and the service's flip
        // to the other table half, which (after the first flip) already
        // holds the right table.
        let flapping: Down = [("web".to_owned(), backend(0))].into_iter().collect();
        for i in 0..6 {
            let down = if i % 2 == 0 { flapping.clone() } else { Down::default() };
            let flip = r.set_health(down)?;
            println!("flip {i}: {flip:?}");
            assert!(flip.attached.is_empty() && flip.detached.is_empty() && !flip.policy && !flip.impossible && flip.balancer, "{flip:?}");
            if i > 0 {
                assert!(flip.map_writes <= 3, "flip {i}: {flip:?}");
            }
        }
        let repeated = r.set_health(Down::default())?;
        assert!(!repeated.balancer && repeated.map_writes == 0, "the same verdict again writes nothing: {repeated:?}");
        Ok(())
    });
    let _ = remove_pins(&pins);
    result.expect("the reconciler's inputs apply");
}
