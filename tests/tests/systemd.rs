//! The systemd unit (issue 14): its sandbox as `systemd-analyze security`
//! rates it, and the readiness it promises (`Type=notify`): `READY=1` comes
//! only once the first config is in the kernel.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    dmz::{one_iface, GOOD},
    daemon::{stop_cleanly, Instance},
    xdp::attached as xdp_attached,
};

/// The highest exposure the unit may have (systemd calls ≤ 5.0 "OK" or better).
const MAX_EXPOSURE: f64 = 5.0;

#[test]
fn unit_exposure_is_at_most_5() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/swarmlb.service");
    let dir = std::env::temp_dir().join(format!("swarmlb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("swarmlb.service");
    std::fs::copy(&unit, &copy).unwrap();
    // `cargo xtask test` installs it (Debian's systemd package).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("running systemd-analyze (apt-get install systemd): {e}"));
    // Every directive is known to this systemd and every command exists
    // (with the built binary where the unit installs it).
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    // The man pages of `Documentation=` come with the package: the quick
    // start's test verifies the installed unit with them.
    std::fs::write(&copy, unit_text.replace("/usr/bin/swarmlb", common::daemon::swarmlb_bin().to_str().unwrap())).unwrap();
    let verify = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).current_dir(&dir).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    let report = String::from_utf8_lossy(&out.stdout);
    let line = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| {
        panic!("no exposure level in:\n{report}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let level: f64 = line.split(':').nth(1).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(level <= MAX_EXPOSURE, "exposure {level} > {MAX_EXPOSURE}:\n{report}");
    let text = std::fs::read_to_string(&unit).unwrap();
    for want in ["Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN"] {
        assert!(text.lines().any(|l| l == want), "the unit lacks {want}");
    }
    assert!(!text.contains("Documentation=file:"), "Documentation= points at a file nothing installs");
}

/// `READY=1` (with the agent's pid) arrives on `$NOTIFY_SOCKET` only once
/// the program is attached and the state written; a refused config sends
/// nothing.
#[test]
fn ready_comes_after_the_first_apply() {
    let (_topo, host, _peer) = one_iface("sd");
    let inst = Instance::new("sdnotify", GOOD);
    let sock_path = inst.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();

    // A config that cannot apply: the agent exits, and says nothing ready.
    inst.write_config("[[interface]]\nname = \"nosuch0\"\nzone = \"dmz\"\n\n[zone.dmz]\nprotected = [\"tcp/5432\"]\n");
    let mut cmd = Command::new(harness::daemon::swarmlb_bin());
    cmd.arg("run").arg("--config").arg(&inst.config).arg("--runtime-dir").arg(&inst.runtime_dir).env("NOTIFY_SOCKET", &sock_path);
    let mut bad = host.spawn(&mut cmd);
    assert!(!bad.wait_timeout(Duration::from_secs(20)).expect("exits").success());
    let mut buf = [0u8; 4096];
    assert!(sock.recv(&mut buf).is_err(), "a refused config sent readiness");

    inst.write_config("[[interface]]\nname = \"dmz0\"\nzone = \"dmz\"\n\n[zone.dmz]\nprotected = [\"tcp/5432\"]\n");
    // With no capability beyond the unit's bounding set, and no new
    // privileges: what the unit grants is what the agent needs.
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all,{}", unit_capabilities().join(",")))
        .arg("--no-new-privs")
        .arg(harness::daemon::swarmlb_bin())
        .arg("run").arg("--config").arg(&inst.config).arg("--runtime-dir").arg(&inst.runtime_dir).env("NOTIFY_SOCKET", &sock_path);
    let mut child = host.spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let msg = loop {
        match sock.recv(&mut buf) {
            Ok(n) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => {
                assert!(child.try_status().is_none(), "the agent exited:\n{}", child.output_so_far());
                assert!(Instant::now() < deadline, "no READY=1:\n{}", child.output_so_far());
            }
        }
    };
    // What READY=1 promises holds the moment it arrives.
    assert!(inst.runtime_dir.join("state.json").exists(), "READY=1 before the state file");
    assert!(xdp_attached(&host, "dmz0"), "READY=1 before the program was attached");
    assert!(inst.pin_path.join("xdp-native-dmz0").exists());
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(msg.lines().any(|l| l == format!("MAINPID={}", child.pid())), "{msg:?}");

    stop_cleanly(&mut child, libc::SIGTERM);
    let mut stopping = String::new();
    while let Ok(n) = sock.recv(&mut buf) {
        stopping.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(stopping.contains("STOPPING=1"), "{stopping:?}");
    assert!(inst.down().status.success());
}

/// The unit's `CapabilityBoundingSet=` in setpriv's words (`+bpf`, …).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/swarmlb.service")).unwrap();
    let line = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("the unit has a CapabilityBoundingSet");
    line.split_whitespace().map(|c| format!("+{}", c.to_lowercase().trim_start_matches("cap_"))).collect()
}
