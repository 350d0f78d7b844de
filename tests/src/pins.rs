//! Private bpffs pin directories for tests, named
//! `/sys/fs/bpf/swarmlb-<kind>-<pid>-<tag>`, and the reaping of those a
//! killed test process left behind (its pid no longer runs); and bpffs
//! instances of a test's own ([`BpfMount`]), to unmount under a daemon
//! without touching `/sys/fs/bpf`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Once,
};

/// A pin directory for this process; the first call removes stale ones.
pub fn private_pin_dir(kind: &str, tag: &str) -> PathBuf {
    static REAP: Once = Once::new();
    REAP.call_once(reap_stale);
    PathBuf::from(format!("/sys/fs/bpf/swarmlb-{kind}-{}-{tag}", std::process::id()))
}

/// The kinds of pin directory tests and the demo create.
const KINDS: &[&str] = &["test", "lbtest", "dctest", "lab", "bs", "demo", "demolb"];

fn reap_stale() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only the test harness's own kinds, never an operator's pins.
        let Some(rest) = KINDS.iter().find_map(|k| name.strip_prefix(&format!("swarmlb-{k}-"))) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        if pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } != 0 {
            let _ = lb_user::datapath::loader::remove_pins(&e.path());
        }
    }
}

/// Where [`BpfMount`]s go: `<prefix><pid>-<tag>`.
const MOUNT_PREFIX: &str = "/var/tmp/swarmlb-bpffs-";

/// A bpffs instance of the test's own (every `mount -t bpf` is a separate
/// one), at `/var/tmp/swarmlb-bpffs-<pid>-<tag>`; unmounted and removed on
/// drop. Mounts of test processes that died are reaped by the next one.
pub struct BpfMount {
    /// The mount point.
    pub dir: PathBuf,
}

fn run(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).arg(dir).output()?;
    anyhow::ensure!(out.status.success(), "{args:?} {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

impl BpfMount {
    /// Mounts a fresh bpffs.
    pub fn new(tag: &str) -> Self {
        static REAP: Once = Once::new();
        REAP.call_once(reap_stale_mounts);
        let dir = PathBuf::from(format!("{MOUNT_PREFIX}{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = Self { dir };
        m.mount().expect("mount -t bpf");
        m
    }

    /// Mounts a bpffs (a new, empty instance) at [`BpfMount::dir`].
    pub fn mount(&self) -> anyhow::Result<()> {
        run(&["mount", "-t", "bpf", "bpf"], &self.dir)
    }

    /// `umount -l`: the mount goes at once, its pins with it once unused.
    pub fn unmount(&self) -> anyhow::Result<()> {
        run(&["umount", "-l"], &self.dir)
    }

    /// Whether a bpffs is mounted at [`BpfMount::dir`].
    pub fn mounted(&self) -> bool {
        mounted_at(&self.dir)
    }
}

fn mounted_at(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(&*dir.to_string_lossy()))
}

fn unmount_all(dir: &Path) {
    while mounted_at(dir) && run(&["umount", "-l"], dir).is_ok() {}
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        // The pins go with the mount (programs whose link pins they were
        // come off, once no process holds the links).
        unmount_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn reap_stale_mounts() {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("swarmlb-bpffs-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        if pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } != 0 {
            unmount_all(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
