//! Debian's keepalived (VRRP) inside a test namespace: in the foreground,
//! logging to the console, with its config and pid files in a private
//! directory. Stopped on drop, its VRRP child too (killed or not).

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{ChildGuard, Netns};

/// One VRRP instance of [`vrrp_config`].
#[derive(Clone, Debug)]
pub struct Vrrp<'a> {
    /// `router_id` (also names the instance in logs).
    pub name: &'a str,
    /// The interface VRRP adverts go out of and the VIPs are put on.
    pub interface: &'a str,
    /// `virtual_router_id`: the same on every edge of the pair.
    pub vrid: u8,
    /// Higher wins; the master is the one with the highest priority alive.
    pub priority: u8,
    /// Seconds between adverts (VRRPv3 allows centiseconds).
    pub advert_s: f64,
    /// `virtual_ipaddress` lines (`"198.51.100.10/32 dev e-out"`).
    pub vips: &'a [String],
}

/// A keepalived.conf with one VRRPv3 instance and nothing else (no
/// checkers, no scripts): the form deploy/keepalived.conf documents.
pub fn vrrp_config(v: &Vrrp) -> String {
    let vips: String = v.vips.iter().map(|a| format!("        {a}\n")).collect();
    format!(
        r#"global_defs {{
    router_id {name}
    vrrp_version 3
    # Announce the new master at once, and again a second later.
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}

vrrp_instance swarmlb {{
    state BACKUP
    interface {iface}
    virtual_router_id {vrid}
    priority {prio}
    advert_int {advert}
    virtual_ipaddress {{
{vips}    }}
}}
"#,
        name = v.name,
        iface = v.interface,
        vrid = v.vrid,
        prio = v.priority,
        advert = v.advert_s,
    )
}

/// A running keepalived (VRRP only).
pub struct Keepalived {
    /// The parent process (the one `-n` keeps in the foreground).
    child: ChildGuard,
    dir: PathBuf,
}

impl Keepalived {
    /// Starts keepalived in `ns` with `config` (see [`vrrp_config`]).
    /// `-R`: a VRRP child that dies is not respawned, so a kill -9 is a
    /// crash and not a restart.
    pub fn start(ns: &Netns, tag: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("swarmlb-keepalived-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keepalived.conf"), config).unwrap();
        let mut cmd = Command::new("keepalived");
        cmd.args(["-n", "-l", "-D", "-G", "-P", "-R"])
            .arg("-f")
            .arg(dir.join("keepalived.conf"))
            .arg("-p")
            .arg(dir.join("keepalived.pid"))
            .arg("-r")
            .arg(dir.join("vrrp.pid"));
        let child = ns.spawn(&mut cmd);
        let mut k = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while k.vrrp_pid().is_none() {
            if let Some(status) = k.child.wait_timeout(Duration::from_millis(20)) {
                panic!("keepalived exited ({status}):\n{}", k.child.output_so_far());
            }
            assert!(Instant::now() < deadline, "keepalived's VRRP child did not start:\n{}", k.child.output_so_far());
        }
        k
    }

    /// The VRRP child's pid while it runs (from its pid file, checked
    /// against /proc so that a stale file never names another process).
    pub fn vrrp_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("vrrp.pid")).ok()?.trim().parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 4 of /proc/PID/stat is the parent pid: ours.
        let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
        (comm.trim() == "keepalived" && ppid == self.child.pid()).then_some(pid)
    }

    /// kill -9 of both processes, the VRRP child first (so that nothing
    /// hands the VIP over in good order: a crash).
    pub fn kill9(&mut self) {
        if let Some(pid) = self.vrrp_pid() {
            // SAFETY: a pid checked to be our keepalived's child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.child.signal(libc::SIGKILL);
        self.child.wait_timeout(Duration::from_secs(5)).expect("keepalived killed");
    }

    /// Everything keepalived logged so far.
    pub fn log(&self) -> String {
        self.child.output_so_far()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let vrrp = self.vrrp_pid();
        // SIGTERM: keepalived stops its child and releases the VIP.
        self.child.terminate(Duration::from_secs(5));
        if let Some(pid) = vrrp {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "keepalived");
            if alive {
                // SAFETY: the child of our keepalived, which did not stop it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
