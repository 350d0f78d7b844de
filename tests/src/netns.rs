//! RAII network namespaces and the processes a test runs inside them.
//!
//! A [`Netns`] is a named namespace (`ip netns add`) so that `ip -n`, `nft`
//! and humans debugging a stuck test can reach it. It is deleted when the last
//! handle is dropped, also while unwinding from a panic. Code runs inside it
//! three ways:
//! - [`Netns::run`]: a closure on a thread that joined the namespace. Sockets
//!   created there belong to the namespace for their whole life and can be
//!   used from any thread afterwards, so servers and scanners need no helper
//!   processes.
//! - [`Netns::spawn`]: a process that joins the namespace in `pre_exec`
//!   (`setns` on an fd opened beforehand). Unlike `ip netns exec`, which
//!   unshares the mount namespace and remounts `/sys`, the child keeps the
//!   host's mounts, so `/sys/fs/bpf` pins stay visible to the daemon.
//! - [`Netns::exec`]: a short command through `ip netns exec`, for tools
//!   (`ip`, `nft`, `ping`) whose output a test wants.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Once,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Where `ip netns` keeps its bind mounts.
const NETNS_DIR: &str = "/var/run/netns";

/// Every name this harness creates starts with this, then the creating
/// process's PID, so stale namespaces of dead test runs can be recognised.
const PREFIX: &str = "swl";

/// Longest namespace name we create: well under the kernel's and iproute2's
/// limits, and short enough to read in `ip netns list`.
const MAX_NAME: usize = 31;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs a command and returns its stdout; the error carries the command line,
/// exit status and stderr so a failing setup step explains itself.
pub(crate) fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The state behind all clones of one [`Netns`].
struct Inner {
    name: String,
    /// Open for the namespace's whole life: `run` and `spawn` `setns` into it
    /// without reopening (and it cannot be swapped under us by name reuse).
    file: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never panic here: this runs during unwinding too.
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // What `ip netns del` does, in case `ip` itself is the problem.
            let path = std::ffi::CString::new(format!("{NETNS_DIR}/{}", self.name)).unwrap_or_default();
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
                libc::unlink(path.as_ptr());
            }
        }
    }
}

/// A network namespace owned by the test; deleted when the last clone drops.
///
/// Cloning is cheap (a shared handle), so a [`crate::Topology`] and the test
/// can both hold one.
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.inner.name).finish()
    }
}

impl Netns {
    /// Creates a namespace named `swl<pid>x<n><tag>` (cut to 31 characters),
    /// brings `lo` up and makes ICMP errors unlimited (see
    /// [`Netns::unlimit_icmp`]) so closed UDP ports answer every probe.
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root()?;
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(remove_stale_namespaces);

        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("{PREFIX}{}x{n}", std::process::id());
        // Keep only characters that are safe in a path and in `ip` arguments.
        name.extend(tag.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_'));
        name.truncate(MAX_NAME);

        command_output(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on the namespace exists: any early return deletes it
        // through Inner's Drop.
        let file = match File::open(format!("{NETNS_DIR}/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                return Err(e).with_context(|| format!("open {NETNS_DIR}/{name}"));
            }
        };
        let ns = Self { inner: Arc::new(Inner { name, file }) };
        crate::rtnl::up(&ns, "lo")?;
        ns.unlimit_icmp();
        // Addresses must be usable at once, also the link-local ones that
        // neighbour discovery uses; DAD only adds a second of flakiness.
        for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
            let _ = ns.sysctl(key, "0");
        }
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The namespace's file, open for its whole life (for `setns` and
    /// netlink's `IFLA_NET_NS_FD`).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inner.file.as_fd()
    }

    /// The bind-mount path of the namespace (`/var/run/netns/NAME`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(self.name())
    }

    /// Runs `argv` with `ip netns exec NAME`; returns stdout, or an error with
    /// the exit status and stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        if argv.is_empty() {
            bail!("exec: empty command");
        }
        command_output(Command::new("ip").args(["netns", "exec", self.name()]).args(argv))
    }

    /// Runs `f` on a fresh thread that has joined this namespace and returns
    /// its result; a panic in `f` is re-raised here.
    ///
    /// A fresh thread, because `setns` changes only the calling thread and
    /// the caller's thread must stay where it is. Sockets `f` creates keep
    /// this namespace when used from other threads later.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.inner.file.as_raw_fd();
        let name = self.name();
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    panic!("setns into {name}: {}", io::Error::last_os_error());
                }
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Writes a sysctl as seen from inside the namespace (`net.*` keys are
    /// per namespace). Dots in `key` become slashes, as `sysctl` does.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        // /proc/sys/net resolves against the opening thread's namespace.
        self.run(move || std::fs::write(&path, value.as_bytes()).with_context(|| format!("write {path}")))
            .with_context(|| format!("sysctl {key} in {}", self.name()))
    }

    /// Reads a sysctl as seen from inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(move || std::fs::read_to_string(&path).with_context(|| format!("read {path}")))
            .map(|s| s.trim().to_owned())
    }

    /// Makes the kernel send every ICMP/ICMPv6 error, unthrottled: no
    /// per-destination limit, no limited types, and a global budget large
    /// enough never to run out. A UDP scan reads "closed" from port
    /// unreachables, so throttling would turn closed ports into silent ones.
    /// Best effort: keys this kernel lacks are skipped.
    pub fn unlimit_icmp(&self) {
        for (key, value) in [
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv4.icmp_ratemask", "0"),
            ("net.ipv6.icmp.ratelimit", "0"),
            // An empty bitmap: no ICMPv6 type is rate limited.
            ("net.ipv6.icmp.ratemask", "\n"),
            ("net.ipv4.icmp_msgs_per_sec", "1000000"),
            ("net.ipv4.icmp_msgs_burst", "1000000"),
        ] {
            let _ = self.sysctl(key, value);
        }
    }

    /// Starts `cmd` inside this namespace with the host's mount namespace,
    /// its stdout and stderr going to one log file ([`ChildGuard::output_so_far`]).
    /// Panics if the process cannot be started (a broken test setup).
    ///
    /// The child gets `SIGKILL` if the *thread* that spawned it exits (Linux's
    /// parent-death signal is per thread), so a test that is killed or aborts
    /// leaves no daemon behind; spawn from the thread that owns the guard.
    pub fn spawn(&self, cmd: &mut Command) -> ChildGuard {
        self.try_spawn(cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Netns::spawn`], returning the error instead of panicking.
    pub fn try_spawn(&self, cmd: &mut Command) -> Result<ChildGuard> {
        static LOGS: AtomicU64 = AtomicU64::new(0);
        let log_path = std::env::temp_dir().join(format!(
            "swl-{}-{}-{}.log",
            std::process::id(),
            LOGS.fetch_add(1, Ordering::Relaxed),
            self.name()
        ));
        // O_APPEND: stdout and stderr share the file and never overwrite
        // each other's lines.
        let log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        log.set_len(0)?;
        let fd = self.inner.file.as_raw_fd();
        let parent = unsafe { libc::getpid() };
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log.try_clone()?);
        // Only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?} in {}", self.name()))?;
        Ok(ChildGuard { child, status: None, log_path, log, label: format!("{cmd:?}") })
    }
}

/// Deletes namespaces left by harness processes that no longer exist (a
/// test run killed by a timeout cannot run its destructors). Only names of
/// the form `swl<pid>x…` whose PID is gone are touched.
pub fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some((pid, _)) = rest.split_once('x') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started with [`Netns::spawn`]; `SIGKILL`ed and reaped on drop
/// unless it has already exited. Its combined stdout/stderr is kept in a
/// temporary file, printed (tail) if the guard drops during a panic.
pub struct ChildGuard {
    child: Child,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    log: File,
    label: String,
}

impl ChildGuard {
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) unless the process has already been
    /// reaped, in which case its PID may belong to someone else by now.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_status().is_none() {
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// The exit status if the process has exited (reaping it), without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
        }
    }

    /// `SIGTERM`, then `SIGKILL` if it has not exited within `grace`; returns
    /// the exit status.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_timeout(grace) {
            return s;
        }
        self.kill_and_reap();
        self.status.expect("reaped")
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output_so_far(&self) -> String {
        let mut buf = Vec::new();
        // A fresh handle: the shared one's offset belongs to the child.
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Path of the log file holding the process's output.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    fn kill_and_reap(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_reap();
        if std::thread::panicking() {
            // The output of a daemon is the first thing one wants when a test
            // fails; print its tail (the file itself is removed below).
            let mut tail = Vec::new();
            let len = self.log.metadata().map(|m| m.len()).unwrap_or(0);
            if self.log.seek(SeekFrom::Start(len.saturating_sub(8192))).is_ok() {
                let _ = self.log.read_to_end(&mut tail);
            }
            eprintln!(
                "---- output of {} (pid {}, {:?}) ----\n{}\n---- end ----",
                self.label,
                self.child.id(),
                self.status,
                String::from_utf8_lossy(&tail)
            );
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// A veth's counters (`ip -s link`). With an XDP program on a veth,
/// `rx_packets` counts every frame the program saw, dropped or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received (with XDP: frames the program ran on).
    pub rx_packets: u64,
    /// Frames lost on receive.
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Frames lost on send.
    pub tx_dropped: u64,
}

/// `ip -s -j link show dev IFNAME` in `ns`.
pub fn link_stats(ns: &Netns, ifname: &str) -> Result<LinkStats> {
    let out = ns.exec(&["ip", "-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -j output: {out}"))?;
    let s = &v[0]["stats64"];
    let n = |dir: &str, key: &str| s[dir][key].as_u64().unwrap_or(0);
    Ok(LinkStats {
        rx_packets: n("rx", "packets"),
        rx_dropped: n("rx", "dropped"),
        tx_packets: n("tx", "packets"),
        tx_dropped: n("tx", "dropped"),
    })
}
