//! The daemon's life: refusing bad configs without touching anything,
//! attaching, reloading on SIGHUP (and keeping the running policy when the
//! new config is broken), leaving the data path running when it stops, and
//! `swarmlb down` leaving no program and no pins behind.

mod common;

use std::{process::Command, time::Duration};

use common::{
    dmz::{one_iface, GOOD},
    daemon::{stop_cleanly, swarmlb_bin, wait_until, Instance},
    xdp::{attached as xdp_attached, detached_soon},
};
use harness::Topology;


#[test]
fn invalid_config_names_key_and_line_and_attaches_nothing() {
    let (_topo, host, _peer) = one_iface("badcfg");
    let inst = Instance::new("badcfg", "[[interface]]\nname = \"dmz0\"\nzone = \"dmz\"\n\n[zone.dmz]\nprotected = [\"tcp/70000\"]\n");
    let mut child = inst.start(&host, &[]);
    let status = child.wait_timeout(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let out = child.output_so_far();
    assert!(out.contains("zone.dmz.protected"), "error names the key: {out}");
    assert!(out.contains(":6:"), "error names the line: {out}");
    assert!(!xdp_attached(&host, "dmz0"));
    assert!(!inst.pin_path.exists(), "nothing pinned");

    // A missing interface is refused before anything is loaded, too.
    inst.write_config(&GOOD.replace("dmz0", "nosuch0"));
    let mut child = inst.start(&host, &[]);
    let status = child.wait_timeout(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(child.output_so_far().contains("nosuch0"));
    assert!(!inst.pin_path.exists());
}

/// `check` validates the config against the host it runs on, as `run`
/// would (more in tests/cli.rs): in the namespace with dmz0 it passes.
#[test]
fn check_command_validates() {
    let (_topo, host, _peer) = one_iface("check");
    let inst = Instance::new("check", GOOD);
    let ok = Command::new("nsenter").arg(format!("--net={}", host.path().display())).arg(swarmlb_bin()).arg("check").arg("--config").arg(&inst.config).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("tcp/5432"));
    inst.write_config("[zone.dmz]\nallow = [\"10.0.0.0/33\"]\n");
    let bad = Command::new(swarmlb_bin()).arg("check").arg("--config").arg(&inst.config).output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("zone.dmz.allow") && err.contains(":2:"), "{err}");
}

/// Stopping the daemon leaves the data path running (that is what makes
/// restarts and upgrades hitless); the next daemon adopts it, and only
/// `swarmlb down` takes it away.
#[test]
fn stop_leaves_the_data_path_and_down_removes_it() {
    let (_topo, host, _peer) = one_iface("life");
    let inst = Instance::new("life", GOOD);

    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    assert!(xdp_attached(&host, "dmz0"));
    assert!(inst.pin_path.join("PROTECTED_PORTS").exists());
    let status = inst.status();
    assert_eq!(status["interfaces"][0]["name"], "dmz0");
    assert_eq!(status["interfaces"][0]["mode"], "native");
    assert_eq!(status["interfaces"][0]["bound"], true);
    let protected = status["zones"][0]["protected"].as_array().unwrap();
    for p in ["tcp/5432", "tcp/2377", "udp/4789"] {
        assert!(protected.iter().any(|x| x == p), "{p} in {protected:?}");
    }
    // A second daemon on the same runtime dir refuses to start.
    let mut second = inst.start(&host, &[]);
    let status = second.wait_timeout(Duration::from_secs(20)).expect("second daemon exits");
    assert!(!status.success());
    assert!(second.output_so_far().contains("another swarmlb is running"), "{}", second.output_so_far());
    assert!(child.try_status().is_none(), "the first daemon keeps running");
    assert!(xdp_attached(&host, "dmz0"));

    let table = Command::new(swarmlb_bin()).arg("status").arg("--runtime-dir").arg(&inst.runtime_dir).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    for want in ["dmz0", "native", "zone dmz", "tcp/5432", "protected_port"] {
        assert!(table.contains(want), "status table lacks {want}:\n{table}");
    }
    // `down` refuses while the daemon runs.
    let down = inst.down();
    assert!(!down.status.success() && String::from_utf8_lossy(&down.stderr).contains("another swarmlb is running"));
    assert!(xdp_attached(&host, "dmz0"));

    stop_cleanly(&mut child, libc::SIGTERM);
    assert!(child.output_so_far().contains("the data path keeps running"), "{}", child.output_so_far());
    assert!(xdp_attached(&host, "dmz0"), "the program stays on the interface");
    assert!(inst.pin_path.join("PROTECTED_PORTS").exists() && inst.pin_path.join("xdp-native-dmz0").exists());
    let status = Command::new(swarmlb_bin()).arg("status").arg("--runtime-dir").arg(&inst.runtime_dir).output().unwrap();
    assert!(!status.status.success(), "status without a daemon must fail");
    assert!(String::from_utf8_lossy(&status.stderr).contains("is `swarmlb run` running"));

    // The next daemon swaps its program into the running link.
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    assert!(child.output_so_far().contains("adopting the running data path"), "{}", child.output_so_far());
    assert!(child.output_so_far().contains("program replaced on the running link"), "{}", child.output_so_far());
    assert_eq!(inst.status()["interfaces"][0]["bound"], true);
    stop_cleanly(&mut child, libc::SIGINT);
    assert!(xdp_attached(&host, "dmz0"));

    let down = inst.down();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(detached_soon(&host, "dmz0"), "down takes the program off");
    assert!(!inst.pin_path.exists(), "down removes the pins");
}

#[test]
fn sighup_reloads_and_a_broken_config_keeps_the_running_policy() {
    let (_topo, host, _peer) = one_iface("hup");
    let inst = Instance::new("hup", GOOD);
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);

    inst.write_config(&GOOD.replace("tcp/5432", "tcp/5432\", \"udp/9999"));
    // `swarmlb reload` is SIGHUP to the pid in the state file.
    let reload = Command::new(swarmlb_bin()).arg("reload").arg("--runtime-dir").arg(&inst.runtime_dir).output().unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let protected = || inst.status()["zones"][0]["protected"].clone();
    wait_until(
        Duration::from_secs(10),
        || protected().as_array().unwrap().iter().any(|p| p == "udp/9999"),
        || format!("reload not applied: {}", protected()),
    );

    inst.write_config("[[interface]]\nname = \"dmz0\"\nzone = \"nosuchzone\"\n");
    child.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        || child.output_so_far().contains("running policy stays"),
        || format!("bad reload not reported:\n{}", child.output_so_far()),
    );
    let status = inst.status();
    assert!(status["zones"][0]["protected"].as_array().unwrap().iter().any(|p| p == "udp/9999"));
    assert!(xdp_attached(&host, "dmz0"));
    assert!(child.try_status().is_none(), "daemon died on a bad reload");
    stop_cleanly(&mut child, libc::SIGTERM);
}

/// `kill -9` leaves the maps pinned (the program goes with the process);
/// the next daemon adopts them: fresh slot, stale slot cleared, no leftovers.
#[test]
fn restart_after_kill_adopts_the_pinned_maps() {
    let (_topo, host, _peer) = one_iface("adopt");
    let inst = Instance::new("adopt", GOOD);
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    let first_slot = inst.status()["zones"][0]["slot"].as_u64().unwrap();
    child.signal(libc::SIGKILL);
    child.wait_timeout(Duration::from_secs(10)).expect("killed");
    assert!(inst.pin_path.join("ZONE_BINDINGS").exists(), "pins survive kill -9");

    let mut child = inst.start(&host, &[]);
    // The state file of the killed daemon is still there: wait for the new pid.
    let pid = u64::from(child.pid());
    wait_until(
        Duration::from_secs(20),
        || inst.status()["pid"].as_u64() == Some(pid),
        || format!("restart not ready:\n{}", child.output_so_far()),
    );
    let status = inst.status();
    let slot = status["zones"][0]["slot"].as_u64().unwrap();
    assert_ne!(slot, first_slot, "the new policy went into a fresh slot");
    assert_eq!(status["interfaces"][0]["bound"], true);
    assert!(xdp_attached(&host, "dmz0"));
    let maps = lb_user::datapath::maps::IsolatorMaps::open(&inst.pin_path).unwrap();
    let ports: Vec<lb_common::isolator::PortKey> = maps.ports.keys().map(Result::unwrap).collect();
    assert_eq!(ports.len(), 5, "tcp/5432 and Swarm's four ports, nothing stale: {ports:?}");
    assert!(ports.iter().all(|k| u64::from(k.slot) == slot));
    drop(maps);
    stop_cleanly(&mut child, libc::SIGTERM);
    assert!(inst.down().status.success());
    assert!(!inst.pin_path.exists());
}

/// A device without native XDP (a bridge) gets the generic hook, with a
/// warning; a restart adopts it as generic, and `down` takes it off.
#[test]
fn falls_back_to_generic_xdp_with_a_warning() {
    harness::require_root().unwrap();
    let mut topo = Topology::new();
    let host = topo.netns("genh");
    topo.bridge(&host);
    let inst = Instance::new("generic", &GOOD.replace("dmz0", "br0"));
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    assert_eq!(inst.status()["interfaces"][0]["mode"], "generic");
    assert!(child.output_so_far().contains("falling back to generic mode"), "{}", child.output_so_far());
    assert!(xdp_attached(&host, "br0"));
    stop_cleanly(&mut child, libc::SIGTERM);
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    assert_eq!(inst.status()["interfaces"][0]["mode"], "generic");
    stop_cleanly(&mut child, libc::SIGTERM);
    assert!(xdp_attached(&host, "br0"));
    assert!(inst.down().status.success());
    assert!(detached_soon(&host, "br0"));
}

/// A reload that adds an interface attaches to it; one that drops an
/// interface detaches from it; the others keep their program throughout.
#[test]
fn reload_attaches_and_detaches_interfaces() {
    let (mut topo, host, peer) = one_iface("ifs");
    topo.veth(&peer, "out1", &host, "dmz1");
    let inst = Instance::new("ifs", GOOD);
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    let names = || -> Vec<String> {
        inst.status()["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect()
    };
    let wait_for = |want: &[&str]| {
        wait_until(Duration::from_secs(10), || names() == want, || format!("interfaces {:?}, want {want:?}", names()));
    };

    inst.write_config(&format!("{GOOD}\n[[interface]]\nname = \"dmz1\"\nzone = \"dmz\"\n"));
    child.signal(libc::SIGHUP);
    wait_for(&["dmz0", "dmz1"]);
    assert!(xdp_attached(&host, "dmz0") && xdp_attached(&host, "dmz1"));

    inst.write_config(&GOOD.replace("dmz0", "dmz1"));
    child.signal(libc::SIGHUP);
    wait_for(&["dmz1"]);
    assert!(detached_soon(&host, "dmz0"), "dropped interface keeps its program");
    assert!(xdp_attached(&host, "dmz1"));
    assert_eq!(inst.status()["interfaces"][0]["bound"], true);
    stop_cleanly(&mut child, libc::SIGTERM);
    assert!(inst.down().status.success());
    assert!(detached_soon(&host, "dmz1"));
}
