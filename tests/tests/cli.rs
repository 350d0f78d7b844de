//! A CLI that cannot mislead (issue 14): `check` refuses what `run` refuses,
//! one agent per pin path whatever the runtime dir, `down` that says what
//! it did (and refuses while an agent owns the pins), a pin path that only
//! the agent's own mount namespace sees (`ip netns exec`), `reload` that
//! waits for the outcome, `--version`, the capability hint, single error
//! messages and a closed pipe.

mod common;

use std::{
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{
    dmz::{one_iface, GOOD},
    daemon::{stop_cleanly, swarmlb_bin, Instance},
    xdp::{attached as xdp_attached, detached_soon},
};
use harness::{Netns, Topology};


/// `swarmlb ARGS` in `ns`'s network namespace only (nsenter, unlike `ip
/// netns exec`, keeps the host's /sys and its bpffs), stdout and stderr apart.
fn swarmlb_in(ns: &Netns, args: &[&str]) -> Output {
    Command::new("nsenter").arg(format!("--net={}", ns.path().display())).arg(swarmlb_bin()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn config_arg(inst: &Instance) -> &str {
    inst.config.to_str().unwrap()
}

/// `swarmlb down` with the instance's pin path and `runtime_dir`.
fn down(inst: &Instance, runtime_dir: &Path) -> Output {
    Command::new(swarmlb_bin()).arg("down").arg("--pin-path").arg(&inst.pin_path).arg("--runtime-dir").arg(runtime_dir).output().unwrap()
}

/// A balancer whose SNAT address is not on the inside interface: `check`
/// and `run` refuse it with the same message, and a missing interface the
/// same way; once the address is there, both accept it.
#[test]
fn check_refuses_what_run_refuses() {
    harness::require_root().unwrap();
    let mut topo = Topology::new();
    let host = topo.netns("chkh");
    let peer = topo.netns("chkp");
    topo.veth(&peer, "x0", &host, "out0");
    topo.veth(&peer, "x1", &host, "in0");
    topo.addr(&host, "in0", "10.9.0.1/24");
    let body = r#"
[balancer]
outside_interfaces = ["out0"]
inside_interface = "in0"
snat_addresses = ["10.9.0.77"]

[[vip]]
name = "web"
address = "192.0.2.10"
rules = ["tcp/80"]
backends = ["10.9.0.2"]
"#;
    let inst = Instance::new("chk", body);

    let check = swarmlb_in(&host, &["check", "--config", config_arg(&inst)]);
    let err = text(&check.stderr);
    assert!(!check.status.success(), "check passed what run refuses:\n{}", text(&check.stdout));
    assert!(err.contains("balancer.snat_addresses: 10.9.0.77 is not an address of in0"), "{err}");
    let json = swarmlb_in(&host, &["check", "--json", "--config", config_arg(&inst)]);
    assert!(!json.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["error"].as_str().unwrap().contains("10.9.0.77"), "{report}");

    let mut run = inst.start(&host, &[]);
    let status = run.wait_timeout(Duration::from_secs(20)).expect("run exits");
    assert!(!status.success());
    assert!(run.output_so_far().contains("balancer.snat_addresses: 10.9.0.77 is not an address of in0"), "{}", run.output_so_far());
    assert!(!inst.pin_path.exists() && !xdp_attached(&host, "out0"), "nothing pinned or attached");

    // A missing interface: both refuse, naming it.
    inst.write_config(&body.replace("\"in0\"", "\"nosuch0\""));
    let check = swarmlb_in(&host, &["check", "--config", config_arg(&inst)]);
    assert!(!check.status.success() && text(&check.stderr).contains("interface \"nosuch0\" (balancer inside interface) does not exist"), "{}", text(&check.stderr));

    // The address on the interface, but forwarding off (the balancer's
    // route lookups would answer FWD_DISABLED): refused, naming the sysctl.
    inst.write_config(body);
    topo.addr(&host, "in0", "10.9.0.77/32");
    let check = swarmlb_in(&host, &["check", "--config", config_arg(&inst)]);
    assert!(!check.status.success() && text(&check.stderr).contains("needs net.ipv4.conf.out0.forwarding = 1"), "{}", text(&check.stderr));

    // Forwarding on: accepted, and the JSON says what applies.
    topo.forwarding(&host);
    let json = swarmlb_in(&host, &["check", "--json", "--config", config_arg(&inst)]);
    assert!(json.status.success(), "{}\n{}", text(&json.stdout), text(&json.stderr));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["interfaces"]["in0"], "balancer");
    assert_eq!(report["vips"][0]["name"], "web");
}

/// Two agents on one pin path with different runtime dirs: the second
/// refuses naming the first's pid, `down` refuses too, the first runs on
/// untouched. Once it stops, `down` says what it detached; a second `down`
/// says there was nothing.
#[test]
fn one_agent_per_pin_path_and_down_says_what_it_did() {
    let (_topo, host, _peer) = one_iface("pinlk");
    let first = Instance::new("pinlk1", GOOD);
    let second = Instance::with_pin_path("pinlk2", GOOD, first.pin_path.clone());
    let mut a = first.start(&host, &[]);
    first.wait_ready(&mut a);

    let mut b = second.start(&host, &[]);
    let status = b.wait_timeout(Duration::from_secs(20)).expect("the second agent exits");
    assert!(!status.success());
    let out = b.output_so_far();
    let want = format!("another swarmlb is running on pin path {} (pid {})", first.pin_path.display(), a.pid());
    assert!(out.contains(&want), "want {want:?} in:\n{out}");
    assert!(!second.runtime_dir.join("state.json").exists());

    let refused = down(&first, &second.runtime_dir);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains(&want), "{}", text(&refused.stderr));
    assert!(a.try_status().is_none(), "the first agent runs on");
    assert!(xdp_attached(&host, "dmz0") && first.pin_path.join("xdp-native-dmz0").exists());
    assert_eq!(first.status()["pid"].as_u64(), Some(u64::from(a.pid())));

    // A reader that closes its end at once: no panic, a clean exit.
    status_into_closed_pipe(&first);

    stop_cleanly(&mut a, libc::SIGTERM);
    assert!(xdp_attached(&host, "dmz0"));
    let done = down(&first, &second.runtime_dir);
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert!(text(&done.stdout).contains("detached from dmz0"), "{}", text(&done.stdout));
    assert!(detached_soon(&host, "dmz0"));
    assert!(!first.pin_path.exists());
    let again = down(&first, &first.runtime_dir);
    assert!(again.status.success());
    let says = text(&again.stdout);
    assert!(says.contains("nothing pinned") && says.contains("nothing detached") && !says.contains("detached from"), "{says}");
}

/// `swarmlb status --json` writing into a pipe whose reader is gone.
fn status_into_closed_pipe(inst: &Instance) {
    let mut fds = [0; 2];
    // SAFETY: a valid array for pipe(2); both fds are owned right after.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = Command::new(swarmlb_bin())
        .args(["status", "--json", "--runtime-dir"])
        .arg(&inst.runtime_dir)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "status into a closed pipe: {:?}\n{err}", out.status);
}

/// Under `ip netns exec` (a private /sys) the agent mounts a bpffs nobody
/// else sees: it says so at start, and on SIGTERM it does not claim that
/// the data path keeps running — which it does not.
#[test]
fn a_private_bpffs_is_named_and_no_hitless_stop_is_claimed() {
    let (_topo, host, _peer) = one_iface("privb");
    let inst = Instance::new("privb", GOOD);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.name()])
        .arg(swarmlb_bin())
        .arg("run")
        .arg("--config")
        .arg(&inst.config)
        .arg("--runtime-dir")
        .arg(&inst.runtime_dir)
        .env("RUST_LOG", "info");
    let mut child = host.spawn(&mut cmd);
    inst.wait_ready(&mut child);
    let out = child.output_so_far();
    assert!(out.contains("mount namespace of its own") && out.contains("Put settings.pin_path on a bpffs the host shares"), "{out}");
    assert!(!inst.pin_path.exists(), "the host does not see the agent's pins");
    assert!(xdp_attached(&host, "dmz0"));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&std::fs::read(inst.runtime_dir.join("state.json")).unwrap()).unwrap()["agent"]["pins_private"], true);

    stop_cleanly(&mut child, libc::SIGTERM);
    let out = child.output_so_far();
    assert!(!out.contains("the data path keeps running"), "{out}");
    assert!(out.contains("the programs and maps go with it"), "{out}");
    assert!(detached_soon(&host, "dmz0"), "the program went with the agent's mount namespace");
    let down = down(&inst, &inst.runtime_dir);
    assert!(down.status.success() && text(&down.stdout).contains("nothing detached"), "{}", text(&down.stdout));
}

/// `swarmlb reload` waits for the outcome: 0 when it applied, non-zero
/// with the daemon's reason when refused, and non-zero when the new
/// config's Swarm source cannot connect.
#[test]
fn reload_reports_the_outcome() {
    let (_topo, host, _peer) = one_iface("rld");
    let inst = Instance::new("rld", GOOD);
    let mut child = inst.start(&host, &[]);
    inst.wait_ready(&mut child);
    let reload = || Command::new(swarmlb_bin()).args(["reload", "--timeout", "30", "--runtime-dir"]).arg(&inst.runtime_dir).output().unwrap();

    inst.write_config(&GOOD.replace("tcp/5432", "tcp/5432\", \"udp/9999"));
    let ok = reload();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("reloaded"), "{}", text(&ok.stdout));
    assert!(inst.status()["zones"][0]["protected"].as_array().unwrap().iter().any(|p| p == "udp/9999"), "applied before reload returned");

    inst.write_config("[[interface]]\nname = \"dmz0\"\nzone = \"nosuchzone\"\n");
    let refused = reload();
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(err.contains("refused the reload") && err.contains("the running config stays") && err.contains("nosuchzone"), "{err}");
    assert_eq!(err.matches("config error").count(), 1, "said once: {err}");

    inst.write_config(&format!("{GOOD}\n[swarm]\ndocker_host = \"unix:///nonexistent/swarmlb-test.sock\"\n"));
    let no_swarm = reload();
    assert!(!no_swarm.status.success(), "a Swarm source that cannot connect counted as a good reload: {}", text(&no_swarm.stdout));
    let err = text(&no_swarm.stderr);
    assert!(err.contains("but the reload failed") && err.contains("Swarm source cannot connect"), "{err}");
    let status = inst.status();
    assert_eq!(status["agent"]["last_reload_ok"], false);
    assert_eq!(status["agent"]["last_reload_applied"], true);
    let table = inst.status_table();
    assert!(table.contains("LAST RELOAD FAILED (its config runs)"), "{table}");
    assert!(child.try_status().is_none());
    stop_cleanly(&mut child, libc::SIGTERM);
    assert!(inst.down().status.success());
}

/// `--version` names swarmlb and its commit; a missing file is said once;
/// a run without privileges names the capabilities.
#[test]
fn version_errors_and_privileges() {
    let v = Command::new(swarmlb_bin()).arg("--version").output().unwrap();
    let v = text(&v.stdout);
    assert!(v.starts_with("swarmlb ") && v.contains("(commit ") && !v.contains("lb-user"), "{v}");

    let missing = Command::new(swarmlb_bin()).args(["check", "--config", "/nonexistent/swarmlb.toml"]).output().unwrap();
    let err = text(&missing.stderr);
    assert!(!missing.status.success());
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/swarmlb.toml"), "{err}");

    if !harness::root_or_skip() {
        return;
    }
    let inst = Instance::new("noroot", GOOD);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(swarmlb_bin())
        .arg("run")
        .arg("--config")
        .arg(&inst.config)
        .arg("--runtime-dir")
        .arg(inst.dir.join("norun"))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
        assert!(err.contains(cap), "{cap} not named: {err}");
    }
    assert!(!err.contains("Operation not permitted"), "{err}");
    assert!(!inst.pin_path.exists());

    // `down` without root: says why, and is not "nothing pinned".
    std::fs::create_dir_all(&inst.pin_path).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(swarmlb_bin())
        .arg("down")
        .arg("--pin-path")
        .arg(&inst.pin_path)
        .arg("--runtime-dir")
        .arg(inst.dir.join("norun"))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("runs as root") && !text(&out.stdout).contains("nothing pinned"), "{err}");
    assert!(inst.pin_path.exists());
}
