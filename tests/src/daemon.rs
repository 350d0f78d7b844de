//! Runs the real `swarmlb` binary inside a test namespace, with its pins,
//! runtime dir and config private to the test, and stops it on drop.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{ChildGuard, Netns};

/// The binary under test: `SWARMLB_BIN` (set by `cargo xtask test` and
/// `cargo xtask bench`, which have just built it), or else the workspace's
/// release build, brought up to date by `cargo build` once per test
/// process so a test never runs a stale binary.
pub fn swarmlb_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(bin) = std::env::var_os("SWARMLB_BIN") {
        return PathBuf::from(bin);
    }
    BUILT
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            // `CARGO` is the cargo that runs the test.
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--release", "-p", "lb-user", "--bin", "swarmlb"])
                .current_dir(&workspace)
                .status()
                .expect("running cargo build");
            assert!(status.success(), "building swarmlb failed (the eBPF object comes from `cargo xtask build-ebpf`)");
            workspace.join("target/release/swarmlb")
        })
        .clone()
}

/// Private paths of one daemon instance (removed, pins included, on drop).
pub struct Instance {
    /// Holds the config and the runtime dir.
    pub dir: PathBuf,
    /// The config file `swarmlb run` reads.
    pub config: PathBuf,
    /// `--runtime-dir` (state file, lock, saved Swarm view).
    pub runtime_dir: PathBuf,
    /// `[settings] pin_path`, under /sys/fs/bpf.
    pub pin_path: PathBuf,
    /// `RUST_LOG` of the daemon [`Instance::start`] starts (`info`).
    pub log_filter: String,
}

impl Instance {
    /// Writes `config_body` (without `[settings]`) plus a private pin path.
    pub fn new(tag: &str, config_body: &str) -> Self {
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/swarmlb-test-{}-{tag}", std::process::id()));
        Self::with_pin_path(tag, config_body, pin_path)
    }

    /// Like [`Instance::new`], with the maps pinned at `pin_path` (on a
    /// bpffs of the test's own, [`crate::pins::BpfMount`]).
    pub fn with_pin_path(tag: &str, config_body: &str, pin_path: PathBuf) -> Self {
        let id = format!("{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("swarmlb-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let inst = Self { config: dir.join("swarmlb.toml"), runtime_dir: dir.join("run"), dir, pin_path, log_filter: "info".into() };
        inst.write_config(config_body);
        inst
    }

    /// Writes `body` (without `[settings]`) plus the private pin path.
    pub fn write_config(&self, body: &str) {
        let text = format!(
            "{body}\n[settings]\npin_path = \"{}\"\ndrop_event_interval_ms = 10\n",
            self.pin_path.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// `swarmlb run` in `ns`.
    pub fn start(&self, ns: &Netns, extra: &[&str]) -> ChildGuard {
        let mut cmd = Command::new(swarmlb_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .args(extra)
            .env("RUST_LOG", &self.log_filter);
        ns.spawn(&mut cmd)
    }

    /// Waits until the daemon wrote its state file (it has attached).
    pub fn wait_ready(&self, child: &mut ChildGuard) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let state = self.runtime_dir.join("state.json");
        while !state.exists() {
            if let Some(status) = child.wait_timeout(Duration::from_millis(50)) {
                panic!("swarmlb exited early ({status}):\n{}", child.output_so_far());
            }
            assert!(Instant::now() < deadline, "swarmlb not ready:\n{}", child.output_so_far());
        }
    }

    /// `swarmlb down`: detaches the programs and removes the pins.
    pub fn down(&self) -> std::process::Output {
        Command::new(swarmlb_bin())
            .arg("down")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .output()
            .unwrap()
    }

    /// `swarmlb status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(swarmlb_bin())
            .args(["status", "--json", "--runtime-dir"])
            .arg(&self.runtime_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `swarmlb status`: the text tables an operator reads.
    pub fn status_table(&self) -> String {
        let out = Command::new(swarmlb_bin()).arg("status").arg("--runtime-dir").arg(&self.runtime_dir).output().unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = lb_user::datapath::loader::remove_pins(&self.pin_path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `swarmlb run` from an [`Instance`], ready; on drop SIGTERM, then
/// `swarmlb down` (the daemon leaves its programs attached when it exits,
/// by design, so that restarts keep flows), then the instance's files go.
/// For tools that start and forget a daemon (the benchmark); tests that
/// stop and restart it hold an [`Instance`] and its [`ChildGuard`].
pub struct RunningDaemon {
    /// The `swarmlb run` process.
    pub child: ChildGuard,
    /// Its config, pins and runtime dir.
    pub inst: Instance,
}

impl RunningDaemon {
    /// Starts `swarmlb run` in `ns` with `config_body` and waits until it
    /// has attached.
    pub fn start(ns: &Netns, tag: &str, config_body: &str) -> Self {
        let inst = Instance::new(tag, config_body);
        let mut child = inst.start(ns, &[]);
        inst.wait_ready(&mut child);
        Self { child, inst }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        self.child.terminate(Duration::from_secs(10));
        let _ = self.inst.down();
    }
}

/// Sends `sig` and requires a clean exit within 10 s.
pub fn stop_cleanly(child: &mut ChildGuard, sig: libc::c_int) {
    child.signal(sig);
    let status = child.wait_timeout(Duration::from_secs(10)).expect("swarmlb stops within 10 s");
    assert!(status.success(), "swarmlb exited with {status}:\n{}", child.output_so_far());
}

/// The daemon's default metrics port (`[settings] metrics_listen`).
pub const METRICS_PORT: u16 = 9469;

/// `GET path` from `127.0.0.1:port` in `ns`: the status and the body.
pub fn get_local(ns: &Netns, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let sock = crate::tls::connect(ns, std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    crate::tls::http_get(sock, "127.0.0.1", path)
}

/// `GET /metrics` from the daemon's default endpoint (127.0.0.1:9469) in `ns`.
pub fn scrape_metrics(ns: &Netns) -> anyhow::Result<String> {
    let (status, body) = get_local(ns, METRICS_PORT, "/metrics")?;
    anyhow::ensure!(status == 200, "metrics: {status} {body}");
    Ok(body)
}

/// `GET /healthz` from the daemon's default endpoint in `ns`: the status
/// (200 or 503) and the reason.
pub fn healthz(ns: &Netns) -> anyhow::Result<(u16, String)> {
    get_local(ns, METRICS_PORT, "/healthz")
}

/// Polls `cond` every 50 ms until it holds; panics with `what()` after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `swarmlb backend-setup ARGS` (or `--undo`) inside a worker namespace.
/// Spawned with setns, not `ip netns exec`, which would remount /sys and
/// pin into a bpffs that dies with the command.
pub fn backend_setup(ns: &Netns, pin: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(swarmlb_bin());
    let state = std::env::temp_dir().join(pin.file_name().unwrap());
    cmd.arg("backend-setup").arg("--pin-path").arg(pin).arg("--state-dir").arg(&state).args(args);
    let mut child = ns.spawn(&mut cmd);
    let status = child.wait_timeout(Duration::from_secs(20)).expect("backend-setup finishes");
    let out = child.output_so_far();
    assert!(status.success(), "backend-setup {args:?} failed:\n{out}");
    out
}

/// The backend side of the DSR modes on a set of workers; every worker's
/// setup is undone on drop (also when a test fails).
pub struct BackendSetups(Vec<(Netns, PathBuf)>);

impl BackendSetups {
    /// `swarmlb backend-setup --interface eth0 --mode MODE` on each worker,
    /// opening tunnels from any of `edges` to any of `vips`.
    pub fn apply(workers: &[Netns], tag: &str, mode: &str, vips: &[IpAddr], edges: &[IpAddr]) -> Self {
        let mut done = BackendSetups(Vec::new());
        for (i, w) in workers.iter().enumerate() {
            let pin = PathBuf::from(format!("/sys/fs/bpf/swarmlb-bs-{}-{tag}-{i}", std::process::id()));
            let mut args = vec!["--interface".to_string(), "eth0".into(), "--mode".into(), mode.into()];
            for v in vips {
                args.extend(["--vip".to_string(), v.to_string()]);
            }
            for e in edges {
                args.extend(["--edge".to_string(), e.to_string()]);
            }
            backend_setup(w, &pin, &args.iter().map(String::as_str).collect::<Vec<_>>());
            done.0.push((w.clone(), pin));
        }
        done
    }
}

impl Drop for BackendSetups {
    fn drop(&mut self) {
        for (ns, pin) in &self.0 {
            backend_setup(ns, pin, &["--undo"]);
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(pin.file_name().unwrap()));
        }
    }
}
