//! The pin directory as a place one agent owns: the lock that makes it one
//! agent per pin path (whatever runtime dir each was given), and the check
//! that other processes can see the pins at all.
//!
//! The lock is `flock(2)` on the pin directory itself. A bpffs holds only
//! BPF objects and directories, so there is no lock file to put beside the
//! pins; a directory fd can be flocked on any filesystem, and the lock
//! lives exactly as long as the agent's open fd (also across `kill -9`).
//! The holder's pid comes from `/proc/locks`, which lists every flock with
//! its owner and the locked inode.

use std::{
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{bail, Context, Result};

/// Held for as long as this process owns the pin directory.
pub struct PinLock {
    dir: fs::File,
}

impl PinLock {
    /// Locks `pin_dir` (which must exist), or says which process owns it.
    pub fn acquire(pin_dir: &Path) -> Result<Self> {
        // O_RDONLY on a directory is allowed; std opens it close-on-exec.
        let dir = fs::File::open(pin_dir)
            .with_context(|| format!("opening the pin directory {}", pin_dir.display()))?;
        // SAFETY: a valid open fd; flock has no memory effects.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err)
                    .with_context(|| format!("locking the pin directory {}", pin_dir.display()));
            }
            let holder = holder(pin_dir)
                .map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
            bail!(
                "another swarmlb is running on pin path {} ({holder}): one agent per pin path, whatever its runtime dir; stop it first",
                pin_dir.display()
            );
        }
        Ok(Self { dir })
    }

    /// Whether the lock is on the directory at `path` now (not on one that
    /// was removed or whose bpffs went).
    pub fn holds(&self, path: &Path) -> bool {
        match (self.dir.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
}

/// The pid holding the flock on `path`, from `/proc/locks`
/// (`1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF`, the device
/// numbers in hex).
pub fn holder(path: &Path) -> Option<u32> {
    let meta = fs::metadata(path).ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with "->": skip it.
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&want.as_str()))
            .then(|| fields[4].parse().ok())
            .flatten()
    })
}

/// Whether the bpffs under `pin_dir` is one that only this process's
/// mount namespace sees: `Some(reason)` when it is.
///
/// `ip netns exec` gives its command a mount namespace of its own with a
/// fresh /sys, where /sys/fs/bpf is an empty directory; the agent then
/// mounts a bpffs there ([`super::loader::ensure_bpffs`]) that nobody else
/// sees and that goes, with everything pinned in it, when the agent exits.
/// So: a bpffs this process mounted (`mounted_here`), with no propagation
/// to other namespaces (no `shared:` peer group in mountinfo), in a mount
/// namespace other than that of pid 1 (or, where pid 1's cannot be read,
/// of the parent process).
pub fn private_bpffs(pin_dir: &Path, mounted_here: bool) -> Option<String> {
    if !mounted_here {
        return None;
    }
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let own = ns("self")?;
    let other = ns("1").or_else(|| ns(&std::os::unix::process::parent_id().to_string()))?;
    if own == other {
        return None;
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The longest mount point that holds the pin directory.
    let mount = mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(" - ").next()?.split_whitespace().collect();
            let point = *fields.get(4)?;
            pin_dir.starts_with(point).then_some((
                point.len(),
                fields[6..].iter().any(|f| f.starts_with("shared:")),
            ))
        })
        .max_by_key(|(len, _)| *len)?;
    if mount.1 {
        return None;
    }
    Some(format!(
        "the bpffs holding {} was mounted by this process in a mount namespace of its own ({} differs from the host's {}; \
         `ip netns exec` does that, with a private /sys): no other process sees these pins, and they and the programs \
         go when this process exits",
        pin_dir.display(),
        own.display(),
        other.display()
    ))
}
