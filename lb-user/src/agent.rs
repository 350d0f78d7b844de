//! `swarmlb run`: the agent. It owns the sources (the config file, the
//! Swarm follower, the health checks, the address watch) and hands each
//! one's word to the [`Reconciler`]; beside that it serves signals, the
//! state file, the pin check, the NAT sweep and the counter watch.
//! `swarmlb down`, `reload` and `check` live here too.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::{
    announce::{self, Announcer, Wanted},
    datapath::{
        isolator_writer,
        loader::{bpffs_needs_mount, ensure_bpffs, pinned_interfaces, remove_pins, MapSizes},
        pin_dir::{private_bpffs, PinLock},
        sweep,
    },
    observe::{
        changes::{self, BackendTransition, Transition},
        events,
        state::{port_ranges, AgentStatus, BgpState, DaemonState, HealthTransitions, InstanceLock, InterfaceState, ZoneState},
        status::ReportMaps,
        watch::{self, CounterWatch},
    },
    reconcile::{Diff, Reconciler},
    source::{
        config::{CompiledPolicy, Config},
        health::HealthChecks,
        links, netif,
        swarm::follow::SwarmFollower,
    },
    print_stdout, unix_time,
};

/// What `check` prints: the compiled policy in words.
pub fn describe(cfg: &Config) -> String {
    let compiled = cfg.compile();
    let mut out = String::new();
    for (ifname, z) in &compiled.interfaces {
        let _ = writeln!(out, "interface {ifname}: zone {}", compiled.zones[*z].name);
    }
    for z in &compiled.zones {
        let ports = port_ranges(z.ports.keys().copied());
        let _ = writeln!(
            out,
            "zone {}: {} protected (protocol, port) pairs: {}; {} IPv4 and {} IPv6 source prefixes",
            z.name,
            z.ports.len(),
            ports.join(", "),
            z.sources_v4.len(),
            z.sources_v6.len()
        );
    }
    if let Some(s) = cfg.swarm() {
        let _ = writeln!(
            out,
            "swarm: {} (resync every {} s); node labels: zone {:?}, address {:?}, weight {:?}",
            s.docker_host.as_deref().unwrap_or("DOCKER_HOST or unix:///var/run/docker.sock"),
            s.resync_interval.as_secs(),
            s.zone_label,
            s.address_label,
            s.weight_label
        );
    }
    if let Some(b) = cfg.balancer() {
        let _ = writeln!(
            out,
            "balancer: outside {}, inside {}, SNAT ports {}-{}, Maglev table {} slots",
            b.outside_interfaces.join(", "),
            b.inside_interface,
            b.snat_ports.0,
            b.snat_ports.1,
            b.table_size
        );
        for v in &b.vips {
            let rules: Vec<String> = v
                .rules
                .iter()
                .map(|r| {
                    let pp = lb_common::proxy_protocol::name(r.proxy_protocol).map_or(String::new(), |p| format!(" with PROXY protocol {p}"));
                    format!("{}/{}→{}{pp}", if r.proto == lb_common::wire::IPPROTO_TCP { "tcp" } else { "udp" }, r.port, r.target_port)
                })
                .collect();
            let mut backends: Vec<String> = v.backends.iter().map(|b| format!("{} (weight {})", b.address, b.weight)).collect();
            if let Some(sel) = &v.backends_from {
                backends.push(format!("Swarm nodes matching {sel}"));
            }
            let _ = writeln!(out, "vip {} {} ({}): {}; backends {}", v.name, v.address, v.mode.name(), rules.join(", "), if backends.is_empty() { "none".into() } else { backends.join(", ") });
        }
    }
    if let Some(bgp) = cfg.bgp() {
        let _ = writeln!(out, "bgp: routes to the servable VIPs in table {} (protocol {}) for BIRD; birdc socket {}", bgp.table, announce::ROUTE_PROTOCOL, bgp.birdc_socket.display());
    }
    out
}


/// `swarmlb check`: loads the config and asks everything `swarmlb run`
/// would refuse before it attaches anything ([`crate::reconcile::preflight`]:
/// the same code), then prints what it would apply; `json` prints it
/// (or the refusal) as one JSON object on stdout.
pub fn check(config_path: &Path, json: bool) -> Result<()> {
    let outcome = Config::load(config_path).map_err(anyhow::Error::from).and_then(|cfg| {
        let desired = crate::reconcile::preflight(&cfg)?;
        Ok((cfg, desired))
    });
    match (outcome, json) {
        (Ok((cfg, _)), false) => {
            for w in cfg.warnings() {
                eprintln!("warning: {w}");
            }
            print_stdout(&describe(&cfg))
        }
        (Ok((cfg, desired)), true) => {
            let report = serde_json::json!({
                "ok": true,
                "config": config_path,
                "warnings": cfg.warnings(),
                "pin_path": cfg.pin_path(),
                "interfaces": desired.programs,
                "zones": desired.policy.zones.iter().map(|z| &z.name).collect::<Vec<_>>(),
                "vips": desired.balancer.vips.iter().map(|v| serde_json::json!({"name": v.name, "address": v.address, "backends": v.backends.len()})).collect::<Vec<_>>(),
                "description": describe(&cfg).lines().collect::<Vec<_>>(),
            });
            print_stdout(&format!("{report:#}\n"))
        }
        (Err(e), false) => Err(e),
        (Err(e), true) => {
            let report = serde_json::json!({ "ok": false, "config": config_path, "error": format!("{e:#}") });
            print_stdout(&format!("{report:#}\n"))?;
            Err(e)
        }
    }
}

fn zone_states(cfg: &Config, compiled: &CompiledPolicy, applied: &isolator_writer::Applied) -> Vec<ZoneState> {
    compiled
        .zones
        .iter()
        .map(|z| ZoneState {
            name: z.name.clone(),
            zone_id: z.zone_id,
            slot: applied.slots[&z.name],
            protected: port_ranges(z.ports.keys().copied()),
            allow: cfg.zone_allow(&z.name),
            tunnels_allowed: z.tunnel_access == 0,
            routing_header_allowed: z.routing_header_access == 0,
        })
        .collect()
}


/// Says, once per config apply, which of the balancer's interfaces cannot
/// take the frames it redirects to them ([`links::redirect_problem`]). Runs
/// on the agent's runtime: nothing waits for it.
fn warn_unusable_redirect_targets(cfg: &Config) {
    let Some(b) = cfg.balancer() else { return };
    let targets: Vec<String> = b.outside_interfaces.iter().chain([&b.inside_interface]).cloned().collect();
    tokio::spawn(async move {
        for ifname in targets {
            match links::redirect_problem(&ifname).await {
                Ok(Some(why)) => warn!(interface = %ifname, "redirect target cannot take redirected frames: {why}"),
                Ok(None) => {}
                Err(e) => debug!(interface = %ifname, error = format!("{e:#}"), "checking the redirect target failed"),
            }
        }
    });
}

/// The daemon's running state.
struct Agent {
    reconciler: Reconciler,
    health: HealthChecks,
    swarm: SwarmFollower,
    /// The state file's contents, as last written.
    state: Option<DaemonState>,
    /// The same, handed to the metrics endpoint each time it is written.
    published: tokio::sync::watch::Sender<Option<DaemonState>>,
    /// Each backend's last transition, by (VIP, address).
    transitions: BTreeMap<(String, IpAddr), Transition>,
    /// Start, adoption, reloads and pins (for status and metrics).
    agent: AgentStatus,
    /// A SIGHUP whose config applied and started a new Swarm source: its
    /// outcome waits for that source's first word (or this deadline), so
    /// an unreachable `docker_host` is not counted as a good reload.
    reload_pending: Option<Instant>,
    /// The lock on the pin directory (one agent per pin path). Taken
    /// again on the new directory when the pins are restored after their
    /// bpffs went: the old lock holds a directory nobody sees any more.
    pin_lock: PinLock,
    /// Keeps the VIP routes BIRD announces (`[bgp]`).
    announcer: Announcer,
    /// The VIPs it announced last.
    announced: Vec<std::net::IpAddr>,
}

impl Agent {
    /// Applies a new config file: on error the old one stays in force.
    /// Returns whether a new Swarm source started (its first answer is
    /// still to come).
    fn set_config(&mut self, file: Config, config_path: &Path, runtime_dir: &Path) -> Result<bool> {
        let swarm = self.swarm.additions_for(&file);
        let diff = self.reconciler.set_config(file, swarm)?;
        let started = self.swarm.follow(self.reconciler.file_config().expect("a config applied"));
        self.applied("config", &diff, config_path, runtime_dir)?;
        Ok(started)
    }

    /// Settles a pending reload by the Swarm source's word: connected is a
    /// good reload, a failure (or no word by the deadline) a refused one.
    fn settle_reload(&mut self, runtime_dir: &Path) {
        let Some(deadline) = self.reload_pending else { return };
        let Some(sync) = self.swarm.sync().cloned() else {
            self.reload_pending = None;
            return self.reloaded(Ok(()), true, runtime_dir);
        };
        let outcome = if sync.connected {
            info!("SIGHUP: config reloaded; the Swarm source answers");
            Ok(())
        } else if let Some(e) = sync.last_error.filter(|_| sync.failures > 0) {
            let e = format!("the config applied, but its Swarm source cannot connect (serving the last good view meanwhile): {e}");
            error!("SIGHUP: {e}");
            Err(e)
        } else if Instant::now() >= deadline {
            let e = format!("the config applied, but its Swarm source did not answer within {} s", SWARM_RELOAD_WAIT.as_secs());
            error!("SIGHUP: {e}");
            Err(e)
        } else {
            return;
        };
        self.reload_pending = None;
        // Either way the new config is in force.
        self.reloaded(outcome, true, runtime_dir);
    }

    /// After a successful reconcile: the health checks follow the backends
    /// in force, the log and the state file say what is applied.
    fn applied(&mut self, why: &str, diff: &Diff, config_path: &Path, runtime_dir: &Path) -> Result<()> {
        let r = &self.reconciler;
        let applied = r.applied().expect("an apply succeeded");
        let cfg = &applied.config;
        self.health.follow(cfg.balancer());
        let state = DaemonState {
            pid: std::process::id(),
            config: config_path.to_owned(),
            pin_path: r.pin_dir().to_owned(),
            interfaces: applied
                .desired
                .programs
                .iter()
                .map(|(name, program)| InterfaceState {
                    name: name.clone(),
                    ifindex: applied.ifindexes[name],
                    zone: cfg.interfaces().iter().find(|i| &i.name == name).map(|i| i.zone.clone()).unwrap_or_default(),
                    mode: r.attached()[name].1,
                    program: *program,
                })
                .collect(),
            zones: zone_states(cfg, &applied.desired.policy, &applied.zones),
            vips: applied.vips.clone(),
            swarm: None,
            health_transitions: Vec::new(),
            agent: AgentStatus::default(),
            backend_transitions: Vec::new(),
            bgp: cfg.bgp().map(|b| BgpState { table: b.table, birdc_socket: b.birdc_socket.clone(), announced: Vec::new() }),
        };
        let outside = cfg.balancer().map_or(&[][..], |b| &b.outside_interfaces[..]);
        self.announcer.set(cfg.bgp().map(|b| Wanted::of(b.table, outside, &applied.vips)));
        if why == "config" {
            warn_unusable_redirect_targets(cfg);
        }
        self.log_changes(why, &state);
        let (vips, backends) = (state.vips.len(), state.vips.iter().map(|v| v.backends.len()).sum::<usize>());
        let up = state.vips.iter().flat_map(|v| &v.backends).filter(|b| b.up).count();
        if why == "config" {
            info!(interfaces = state.interfaces.len(), zones = state.zones.len(), vips, backends, up, map_writes = diff.map_writes, "config applied");
        } else {
            info!(
                change = why,
                policy = diff.policy,
                impossible_sources = diff.impossible,
                balancer = diff.balancer,
                backends,
                up,
                map_writes = diff.map_writes,
                "change applied"
            );
        }
        self.state = Some(state);
        self.write_state(runtime_dir)
    }

    /// Logs each backend, protected port and Swarm node that `why` (the
    /// source whose word was applied) changed from the state in force to
    /// `new`, with its name and reason, and keeps each backend's last
    /// transition for `swarmlb status`. The first apply logs nothing one by
    /// one (its summary line says what is there).
    fn log_changes(&mut self, why: &str, new: &DaemonState) {
        let old = self.state.as_ref();
        let now = unix_time();
        for ((vip, backend), change) in changes::backend_changes(old.map_or(&[], |o| &o.vips), &new.vips) {
            let reason = match why {
                "health" => format!("health: {}", self.health.reason(&vip, backend).unwrap_or_else(|| "checks follow the backends in force".into())),
                "Swarm" => match self.swarm.reason(&vip, backend) {
                    Some(r) => format!("Swarm: {r}"),
                    None => "Swarm: no longer one of its backends (its deregistration delay is over, or the config names it)".into(),
                },
                "config" if old.is_some() => "config reloaded".into(),
                other => other.into(),
            };
            if old.is_some() {
                if change == "down" || change == "removed" || change.starts_with("draining") {
                    warn!(vip = %vip, backend = %backend, change = %change, reason = %reason, "backend changed");
                } else {
                    info!(vip = %vip, backend = %backend, change = %change, reason = %reason, "backend changed");
                }
            }
            self.transitions.insert((vip, backend), Transition { at: now, change, reason });
        }
        self.transitions.retain(|(vip, backend), _| new.vips.iter().any(|v| &v.name == vip && v.backends.iter().any(|b| b.address == *backend)));
        let Some(old) = old else { return };
        for (zone, ports, added) in changes::port_changes(&old.zones, &new.zones) {
            let what = if added { "protected port added" } else { "protected port removed" };
            info!(zone = %zone, ports = %ports, reason = why, "{what}");
        }
        let old_nodes = old.swarm.as_ref().map_or(&[][..], |s| &s.allowed_nodes);
        let new_nodes = self.swarm.sync().map_or(&[][..], |s| &s.allowed_nodes);
        for (node, joined) in changes::node_changes(old_nodes, new_nodes) {
            let what = if joined { "Swarm node joined the node allow-list" } else { "Swarm node left the node allow-list" };
            info!(node = %node, reason = why, "{what}");
        }
    }

    /// Logs an input that did not apply (the running state stays), or
    /// writes the state file when it did.
    fn outcome(&mut self, why: &str, diff: Result<Diff>, config_path: &Path, runtime_dir: &Path) {
        let result = diff.and_then(|d| self.applied(why, &d, config_path, runtime_dir));
        if let Err(e) = result {
            error!(error = format!("{e:#}"), "applying a {why} change failed; the running state stays");
        }
    }

    /// Notes a SIGHUP's outcome (status, metrics) and writes the state file.
    /// `applied`: the new config is in force (also when the reload failed
    /// after that, its Swarm source not connecting).
    fn reloaded(&mut self, outcome: Result<(), String>, applied: bool, runtime_dir: &Path) {
        self.agent.last_reload_applied = applied;
        match outcome {
            Ok(()) => {
                self.agent.reloads_succeeded += 1;
                self.agent.last_reload_ok = true;
                self.agent.last_reload_success = unix_time();
                self.agent.last_reload_error = None;
            }
            Err(e) => {
                self.agent.reloads_failed += 1;
                self.agent.last_reload_ok = false;
                self.agent.last_reload_error = Some(e);
            }
        }
        if let Err(e) = self.write_state(runtime_dir) {
            warn!(error = format!("{e:#}"), "writing the state file failed");
        }
    }

    /// Looks for the pins of every map and link; when some are gone (the
    /// bpffs unmounted, or files removed), says so once and pins them
    /// again from this process's handles as soon as the pin path is on a
    /// bpffs again. The data path never stops meanwhile.
    fn check_pins(&mut self, runtime_dir: &Path) {
        let missing = self.reconciler.datapath().missing_pins();
        if missing.is_empty() && self.agent.pins_ok {
            return;
        }
        let pin_path = self.reconciler.datapath().pin_dir().display().to_string();
        if self.agent.pins_ok {
            self.agent.pins_ok = false;
            self.agent.pins_lost += 1;
            error!(
                pin_path,
                missing = missing.len(),
                "the pinned maps and links are gone (bpffs unmounted?): the data path keeps running on this process's handles, but a restart now would lose it; pinning them again once the pin path is on a bpffs"
            );
        }
        let before = self.agent.pins_error.clone();
        match self.reconciler.datapath().repin() {
            Ok(n) => {
                info!(pin_path, pinned = n, "the maps and links are pinned again: a restart adopts the data path");
                let dir = self.reconciler.datapath().pin_dir().to_owned();
                if !self.pin_lock.holds(&dir) {
                    match PinLock::acquire(&dir) {
                        Ok(lock) => self.pin_lock = lock,
                        Err(e) => warn!(pin_path, error = format!("{e:#}"), "locking the restored pin directory failed"),
                    }
                }
                self.agent.pins_ok = true;
                self.agent.pins_error = None;
            }
            Err(e) => {
                let mut names = missing.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
                if missing.len() > 4 {
                    names.push_str(", …");
                }
                self.agent.pins_error = Some(format!("{} pins missing in {pin_path} ({names}); re-pinning: {e:#}", missing.len()));
            }
        }
        if self.agent.pins_ok || self.agent.pins_error != before {
            if let Err(e) = self.write_state(runtime_dir) {
                warn!(error = format!("{e:#}"), "writing the state file failed");
            }
        }
    }

    /// Writes the state file with the current Swarm sync state.
    fn write_state(&mut self, runtime_dir: &Path) -> Result<()> {
        let Some(state) = self.state.as_mut() else { return Ok(()) };
        state.swarm = self.swarm.sync().cloned();
        state.agent = self.agent.clone();
        if let Some(b) = state.bgp.as_mut() {
            b.announced = self.announced.clone();
        }
        state.health_transitions = state
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
            .map(|(v, b)| HealthTransitions { vip: v.name.clone(), backend: b.address, transitions: self.health.transitions(&v.name, b.address) })
            .collect();
        state.backend_transitions = self
            .transitions
            .iter()
            .map(|((vip, backend), last)| BackendTransition { vip: vip.clone(), backend: *backend, last: last.clone() })
            .collect();
        self.published.send_replace(Some(state.clone()));
        state.write(runtime_dir)
    }
}

/// `swarmlb reload`: SIGHUP to the daemon named in the state file, then
/// waits (up to `timeout`) for the daemon to record the outcome in its
/// state file; a refused reload is an error carrying the daemon's reason.
pub fn signal_reload(runtime_dir: &Path, timeout: Duration) -> Result<()> {
    let before = DaemonState::read(runtime_dir)?;
    let (pid, reloads) = (before.pid, before.agent.reloads_succeeded + before.agent.reloads_failed);
    // SAFETY: kill(2) with a pid from our own state file and a valid signal.
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        bail!("signalling swarmlb (pid {pid}): {}", std::io::Error::last_os_error());
    }
    let deadline = Instant::now() + timeout;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: signal 0 only asks whether the process exists.
        if unsafe { libc::kill(pid as i32, 0) } != 0 {
            bail!("swarmlb (pid {pid}) exited before the reload's outcome was known");
        }
        // The state file is replaced by rename: a read sees the old or the new one.
        if let Ok(now) = DaemonState::read(runtime_dir) {
            if now.pid != pid {
                bail!("another swarmlb (pid {}) took over before the reload's outcome was known", now.pid);
            }
            if now.agent.reloads_succeeded + now.agent.reloads_failed > reloads {
                if now.agent.last_reload_ok {
                    return print_stdout(&format!("swarmlb (pid {pid}) reloaded {}\n", now.config.display()));
                }
                let why = now.agent.last_reload_error.unwrap_or_else(|| "no reason recorded".into());
                if now.agent.last_reload_applied {
                    bail!("swarmlb (pid {pid}) applied {}, but the reload failed: {why}", now.config.display());
                }
                bail!("swarmlb (pid {pid}) refused the reload of {}; the running config stays: {why}", now.config.display());
            }
        }
        if Instant::now() >= deadline {
            bail!("swarmlb (pid {pid}) recorded no outcome of the reload within {} s (its log says why)", timeout.as_secs());
        }
    }
}

/// How long a reload that started a new Swarm source waits for its first
/// answer before it counts as refused.
const SWARM_RELOAD_WAIT: Duration = Duration::from_secs(10);

/// How often the pins are looked for.
const PIN_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How often idle NAT entries are swept: unproven ones live
/// `tcp_half_open_timeout_s` / `udp_unreplied_timeout_s` (5 s by default)
/// plus at most this.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);

/// Idle timeouts of NAT state.
fn idle_timeouts(cfg: &Config) -> sweep::Timeouts {
    cfg.balancer().map_or_else(sweep::Timeouts::default, |b| sweep::Timeouts {
        tcp: b.tcp_idle_timeout,
        tcp_closed: b.tcp_closed_timeout,
        tcp_time_wait: b.tcp_time_wait_timeout,
        udp: b.udp_idle_timeout,
        tcp_half_open: b.tcp_half_open_timeout,
        udp_unreplied: b.udp_unreplied_timeout,
    })
}

/// `swarmlb down`: takes the data path off every interface and removes the
/// pinned maps (counters, flows, NAT state). Refuses while an agent owns
/// the pin path (its lock, [`PinLock`], whatever its runtime dir), and
/// says so when there was nothing to take off.
pub fn down(pin_dir: &Path, runtime_dir: &Path) -> Result<()> {
    // Not `exists()`: a pin path this user may not look into is not "nothing pinned".
    let exists = pin_dir.try_exists().with_context(|| format!("looking for {} (`swarmlb down` runs as root, like `run`)", pin_dir.display()))?;
    if !exists {
        let hint = match bpffs_needs_mount(pin_dir) {
            Ok(true) => " (no bpffs is mounted at /sys/fs/bpf here: under `ip netns exec` /sys is a private one, so run `swarmlb down` where the agent ran)",
            Err(_) => " (it is not on a bpffs)",
            Ok(false) => "",
        };
        return print_stdout(&format!("nothing pinned at {}{hint}: nothing detached\n", pin_dir.display()));
    }
    let lock = PinLock::acquire(pin_dir)?;
    let interfaces = pinned_interfaces(pin_dir);
    let pins = std::fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))?.count();
    remove_pins(pin_dir).map_err(|e| {
        let denied = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied));
        let hint = if denied { " (`swarmlb down` runs as root, like `run`)" } else { "" };
        e.context(format!("removing the pins in {}{hint}", pin_dir.display()))
    })?;
    drop(lock);
    // Nothing is served here any more: BIRD stops announcing this edge.
    let withdrawn = announce::withdraw_all().context("withdrawing the VIP routes for BIRD (the data path is down)")?;
    // A state file naming this pin path is a dead agent's (the lock was free).
    if DaemonState::read(runtime_dir).is_ok_and(|s| s.pin_path == pin_dir) {
        DaemonState::remove(runtime_dir);
    }
    if withdrawn > 0 {
        print_stdout(&format!("withdrew {withdrawn} VIP routes (BIRD no longer announces them)\n"))?;
    }
    print_stdout(&match (pins, interfaces.is_empty()) {
        (0, _) => format!("nothing pinned at {} (an empty directory, removed): nothing detached\n", pin_dir.display()),
        (_, true) => format!("no swarmlb program was attached; removed {pins} pinned maps and {}\n", pin_dir.display()),
        (_, false) => format!("swarmlb's programs detached from {} and {pins} pins in {} removed\n", interfaces.join(", "), pin_dir.display()),
    })
}

/// `swarmlb run`: loads (or adopts) the data path, applies the config at
/// `config_path` and follows its sources until SIGTERM or SIGINT.
pub fn run(config_path: &Path, runtime_dir: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    for w in cfg.warnings() {
        warn!("{w}");
    }
    crate::privileges::require("run")?;
    // What `swarmlb check` asks, before anything is loaded or attached.
    crate::reconcile::preflight(&cfg)?;
    let _lock = InstanceLock::acquire(runtime_dir)?;
    let pin_dir = cfg.pin_path().to_owned();
    let existed = pin_dir.exists();
    let mounted = ensure_bpffs(&pin_dir)?;
    std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
    // One agent per pin path: the lock is on the pin directory itself.
    let pin_lock = PinLock::acquire(&pin_dir)?;
    let private = private_bpffs(&pin_dir, mounted);
    if let Some(why) = &private {
        warn!(
            pin_path = %pin_dir.display(),
            "{why}. The data path will not outlive this process, and neither another `swarmlb run` nor `swarmlb down` \
             elsewhere can find it. Put settings.pin_path on a bpffs the host shares: run swarmlb in the host's mount \
             namespace (`nsenter --net=/run/netns/NAME swarmlb run ...`, not `ip netns exec`)"
        );
    }
    let reconciler = match Reconciler::load(&pin_dir, MapSizes::of(cfg.balancer())) {
        Ok(r) => r,
        Err(e) => {
            if !existed {
                remove_pins(&pin_dir).ok();
            }
            return Err(e);
        }
    };
    // Health checks run on the runtime from the first apply on.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _runtime = rt.enter();
    // Before the first apply writes the state file: from then on
    // `swarmlb reload` may signal, and an unhandled SIGHUP would end the
    // daemon.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (health_tx, mut health_rx) = tokio::sync::mpsc::unbounded_channel();
    let (swarm_tx, mut swarm_rx) = tokio::sync::mpsc::unbounded_channel();
    let (published, published_state) = tokio::sync::watch::channel(None);
    let (announced_tx, mut announced_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut daemon = Agent {
        reconciler,
        health: HealthChecks::new(health_tx),
        swarm: SwarmFollower::new(swarm_tx, runtime_dir),
        state: None,
        published,
        transitions: BTreeMap::new(),
        agent: AgentStatus::default(),
        reload_pending: None,
        pin_lock,
        announcer: Announcer::spawn(announced_tx),
        announced: Vec::new(),
    };
    let was_running = daemon.reconciler.datapath().found_running();
    if was_running {
        info!(pin_path = %pin_dir.display(), "adopting the running data path");
    }
    let started = unix_time();
    daemon.agent = AgentStatus {
        started,
        adopted: was_running,
        last_reload_ok: true,
        last_reload_success: started,
        pins_ok: true,
        pins_private: private.is_some(),
        ..AgentStatus::default()
    };
    // Listening before the first apply: whoever sees the state file (or
    // systemd's readiness) finds the endpoint answering.
    let metrics_listener = cfg.metrics_listen().and_then(|addr| match crate::observe::metrics::listen(addr) {
        Ok(l) => Some(l),
        Err(e) => {
            error!(%addr, error = %e, "cannot listen for metrics; running without them");
            None
        }
    });
    if let Err(e) = daemon.set_config(cfg.clone(), config_path, runtime_dir) {
        // What ran before keeps running; a first start leaves no trace.
        if !was_running {
            remove_pins(&pin_dir).ok();
        }
        return Err(e);
    }
    daemon.reconciler.datapath().release_unclaimed();
    // Readiness (systemd `Type=notify`): the first config is in the kernel.
    crate::notify::ready(&format!("applied {}: {} interfaces", config_path.display(), daemon.reconciler.attached().len()));
    if was_running {
        let maps = daemon.reconciler.balancer_maps();
        let (flows, nat_entries) = (maps.flows.keys().count(), maps.nat.keys().count());
        info!(
            pin_path = %pin_dir.display(),
            links = daemon.reconciler.attached().len(),
            flows,
            nat_entries,
            "adopted the pinned data path: links, maps, flows, NAT state and counters carried over"
        );
    }

    let result = rt.block_on(async {
        let pin = pin_dir.clone();
        let drops = tokio::spawn(async move {
            if let Err(e) = events::log_drops(&pin).await {
                error!(error = %e, "reading drop events failed");
            }
        });
        // The endpoint reads the maps through handles of its own, opened
        // now, so it keeps answering if the pins go.
        let metrics = metrics_listener.and_then(|listener| match ReportMaps::open(&pin_dir) {
            Ok(maps) => Some(tokio::spawn(crate::observe::metrics::serve(listener, published_state.clone(), maps))),
            Err(e) => {
                error!(error = format!("{e:#}"), "opening the maps for the metrics endpoint failed; running without it");
                None
            }
        });
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut pin_check = tokio::time::interval(PIN_CHECK_INTERVAL);
        let mut watch_tick = tokio::time::interval(watch::INTERVAL);
        watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = CounterWatch::new(daemon.reconciler.balancer_maps().counters().unwrap_or_default());
        let mut watched = std::time::Instant::now();
        let mut idle = idle_timeouts(&cfg);
        // Address changes: the impossible-source tries follow them.
        let mut addresses = match netif::NetlinkWatch::addresses() {
            Ok(w) => Some(w),
            Err(e) => {
                error!(error = format!("{e:#}"), "watching address changes failed: the host's addresses are read again only on reloads");
                None
            }
        };
        // Route, neighbour, address and link changes: the kernel's kept
        // next hops go stale. Without the watch none are kept (generation
        // 0: a FIB lookup per packet, as before they were).
        let mut routing = match netif::NetlinkWatch::routing() {
            Ok(w) => {
                if let Err(e) = daemon.reconciler.balancer_maps().bump_net_generation() {
                    warn!(error = format!("{e:#}"), "starting the routing generation failed: next hops are looked up per packet");
                }
                Some(w)
            }
            Err(e) => {
                error!(error = format!("{e:#}"), "watching routing changes failed: next hops are looked up per packet");
                let _ = daemon.reconciler.balancer_maps().stop_keeping_hops();
                None
            }
        };
        info!(pid = std::process::id(), "swarmlb running");
        // The drain whose delay ends next, handled once (a view that cannot
        // be mapped keeps it: no spinning on it).
        let mut drain_handled: Option<f64> = None;
        loop {
            let drain_end = daemon.swarm.drain_ends().filter(|t| drain_handled != Some(*t));
            // A little after the end, so the mapping sees the delay served.
            let drain_at = drain_end.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64((t - unix_time()).max(0.0) + 0.01));
            tokio::select! {
                () = async { tokio::time::sleep_until(drain_at.unwrap()).await }, if drain_at.is_some() => {
                    drain_handled = drain_end;
                    let changed = match daemon.reconciler.file_config().cloned() {
                        Some(current) => daemon.swarm.remap_now(&current),
                        None => false,
                    };
                    if changed {
                        let diff = daemon.reconciler.set_swarm(daemon.swarm.additions().clone());
                        daemon.outcome("Swarm", diff, config_path, runtime_dir);
                    }
                }
                _ = housekeeping.tick() => {
                    match sweep::sweep_nat(daemon.reconciler.balancer_maps(), &idle) {
                        Ok(0) => {}
                        Ok(n) => info!(removed = n, "idle NAT entries removed"),
                        Err(e) => warn!(error = %e, "sweeping NAT entries failed"),
                    }
                }
                _ = pin_check.tick() => {
                    daemon.check_pins(runtime_dir);
                    daemon.settle_reload(runtime_dir);
                }
                _ = watch_tick.tick() => {
                    match watch.check(daemon.reconciler.balancer_maps(), watched.elapsed()) {
                        Ok(lines) => lines.iter().for_each(|l| warn!("{l}")),
                        Err(e) => warn!(error = format!("{e:#}"), "reading the balancer's counters failed"),
                    }
                    watched = std::time::Instant::now();
                }
                Some(()) = health_rx.recv() => {
                    // Several transitions at once make one apply.
                    while health_rx.try_recv().is_ok() {}
                    let diff = daemon.reconciler.set_health(daemon.health.down());
                    daemon.outcome("health", diff, config_path, runtime_dir);
                }
                Some(update) = swarm_rx.recv() => {
                    let changed = match daemon.reconciler.file_config().cloned() {
                        Some(current) => daemon.swarm.update(update, &current),
                        None => false,
                    };
                    if changed {
                        let diff = daemon.reconciler.set_swarm(daemon.swarm.additions().clone());
                        daemon.outcome("Swarm", diff, config_path, runtime_dir);
                    } else if let Err(e) = daemon.write_state(runtime_dir) {
                        warn!(error = format!("{e:#}"), "writing the state file failed");
                    }
                    daemon.settle_reload(runtime_dir);
                }
                Some(now) = announced_rx.recv() => {
                    daemon.announced = now;
                    if let Err(e) = daemon.write_state(runtime_dir) {
                        warn!(error = format!("{e:#}"), "writing the state file failed");
                    }
                }
                r = async { addresses.as_mut().unwrap().changed().await }, if addresses.is_some() => {
                    match r {
                        Ok(()) => {
                            let diff = daemon.reconciler.set_netif();
                            daemon.outcome("address", diff, config_path, runtime_dir);
                        }
                        Err(e) => {
                            error!(error = format!("{e:#}"), "watching address changes failed; stopped watching");
                            addresses = None;
                        }
                    }
                }
                r = async { routing.as_mut().unwrap().changed().await }, if routing.is_some() => {
                    let bumped = r.and_then(|()| daemon.reconciler.balancer_maps().bump_net_generation());
                    if let Err(e) = bumped {
                        error!(error = format!("{e:#}"), "following routing changes failed; next hops are looked up per packet from now on");
                        let _ = daemon.reconciler.balancer_maps().stop_keeping_hops();
                        routing = None;
                    }
                }
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    let config = config_path.display().to_string();
                    if daemon.reload_pending.take().is_some() {
                        daemon.reloaded(Err("another reload came before the Swarm source answered".into()), true, runtime_dir);
                    }
                    let outcome = match Config::load(config_path) {
                        Ok(new) => match daemon.set_config(new.clone(), config_path, runtime_dir) {
                            Ok(swarm_started) => {
                                idle = idle_timeouts(&new);
                                if new.metrics_listen() != cfg.metrics_listen() {
                                    warn!(config, "SIGHUP: config reloaded, but settings.metrics_listen takes effect at the next start");
                                } else {
                                    info!(config, "SIGHUP: config reloaded");
                                }
                                if swarm_started {
                                    // Counted when the new source answers (`settle_reload`).
                                    info!(config, "SIGHUP: waiting for the new Swarm source to answer");
                                    daemon.reload_pending = Some(Instant::now() + SWARM_RELOAD_WAIT);
                                    continue;
                                }
                                Ok(())
                            }
                            Err(e) => {
                                let e = format!("{e:#}");
                                error!(config, error = e, "SIGHUP: applying the new config failed; the running policy stays");
                                Err(e)
                            }
                        },
                        Err(e) => {
                            error!(config, error = %e, "SIGHUP: the new config is invalid; the running policy stays");
                            Err(e.to_string())
                        }
                    };
                    let applied = outcome.is_ok();
                    daemon.reloaded(outcome, applied, runtime_dir);
                }
            }
        }
        drops.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        Ok::<_, anyhow::Error>(())
    });
    // One last look: pins that went since the last check are restored if
    // they can be, so the data path outlives this process.
    daemon.check_pins(runtime_dir);
    let pins_ok = daemon.agent.pins_ok;
    // Nobody follows routing changes from now on: no next hop is kept.
    if let Err(e) = daemon.reconciler.balancer_maps().stop_keeping_hops() {
        warn!(error = format!("{e:#}"), "turning kept next hops off failed: a route or neighbour change before the next start is not followed");
    }
    DaemonState::remove(runtime_dir);
    crate::notify::notify("STOPPING=1");
    drop(daemon);
    if private.is_some() {
        error!(
            pin_path = %pin_dir.display(),
            "stopped; the pins were on a bpffs only this process's mount namespace saw, so the programs and maps go with it (nothing keeps running; the next `swarmlb run` starts afresh)"
        );
    } else if pins_ok {
        info!(
            pin_path = %pin_dir.display(),
            "stopped; the data path keeps running on its pinned links and maps (the next `swarmlb run` adopts it, `swarmlb down` removes it)"
        );
    } else {
        error!(
            pin_path = %pin_dir.display(),
            "stopped with the pins missing: the programs came off with this process (the next `swarmlb run` starts afresh)"
        );
    }
    result
}
