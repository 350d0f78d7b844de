//! `swarmlb run`: load, apply, attach, serve signals, clean up.

use std::{
    collections::HashMap,
    ffi::CString,
    fmt::Write as _,
    path::Path,
};

use anyhow::{bail, Context, Result};
use lb_user::{
    config::{CompiledPolicy, Config},
    events,
    loader::{remove_pins, AttachMode, Datapath, Program},
    maps::IsolatorMaps,
    policy,
    state::{port_ranges, DaemonState, InstanceLock, InterfaceState, ZoneState},
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// Resolves every configured interface name, so a typo fails before
/// anything is loaded or attached.
fn ifindexes(cfg: &Config) -> Result<HashMap<String, u32>> {
    let mut out = HashMap::new();
    for iface in cfg.interfaces() {
        let c = CString::new(iface.name.as_str())?;
        // SAFETY: valid C string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if idx == 0 {
            bail!("interface {:?} (zone {}) does not exist", iface.name, iface.zone);
        }
        out.insert(iface.name.clone(), idx);
    }
    Ok(out)
}

/// Protected ports inside this host's ephemeral range also match the
/// replies to its own outgoing connections (the isolator judges destination
/// ports and keeps no connection state): say so, it is rarely intended.
fn warn_ephemeral_overlap(compiled: &CompiledPolicy) {
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else { return };
    let mut it = range.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else { return };
    for z in &compiled.zones {
        let n = z.ports.iter().filter(|((_, p), access)| (lo..=hi).contains(p) && **access & lb_common::isolator::SET_TRUSTED != 0).count();
        if n > 0 {
            warn!(
                zone = %z.name,
                ports = n,
                ephemeral = %format!("{lo}-{hi}"),
                "protected ports overlap the ephemeral port range: replies to this host's own outgoing connections on those ports are dropped too"
            );
        }
    }
}

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
    out
}

fn zone_states(cfg: &Config, compiled: &CompiledPolicy, applied: &policy::Applied) -> Vec<ZoneState> {
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

/// The daemon's running state.
struct Daemon {
    datapath: Datapath,
    maps: IsolatorMaps,
    attached: HashMap<String, AttachMode>,
}

impl Daemon {
    fn detach(&mut self, names: &[String]) {
        for name in names {
            self.datapath.detach(name);
            self.attached.remove(name);
        }
    }

    /// Applies `cfg`: attach to new interfaces, write the policy, detach from
    /// interfaces no longer configured. On error the old policy stays.
    fn apply(&mut self, cfg: &Config, config_path: &Path, runtime_dir: &Path) -> Result<()> {
        let ifx = ifindexes(cfg)?;
        let compiled = cfg.compile();
        warn_ephemeral_overlap(&compiled);
        let mut newly = Vec::new();
        for iface in cfg.interfaces() {
            if !self.attached.contains_key(&iface.name) {
                match self.datapath.attach(&iface.name, Program::Isolator) {
                    Ok(mode) => {
                        newly.push(iface.name.clone());
                        self.attached.insert(iface.name.clone(), mode);
                    }
                    Err(e) => {
                        self.detach(&newly);
                        return Err(e);
                    }
                }
            }
        }
        policy::apply_settings(&mut self.maps, cfg.drop_event_interval_ns())?;
        let applied = match policy::apply(&mut self.maps, &compiled, &ifx) {
            Ok(a) => a,
            Err(e) => {
                self.detach(&newly);
                return Err(e);
            }
        };
        let gone: Vec<String> =
            self.attached.keys().filter(|n| !ifx.contains_key(*n)).cloned().collect();
        self.detach(&gone);
        let state = DaemonState {
            pid: std::process::id(),
            config: config_path.to_owned(),
            pin_path: self.datapath.pin_dir().to_owned(),
            interfaces: cfg
                .interfaces()
                .iter()
                .map(|i| InterfaceState {
                    name: i.name.clone(),
                    ifindex: ifx[&i.name],
                    zone: i.zone.clone(),
                    mode: self.attached[&i.name],
                })
                .collect(),
            zones: zone_states(cfg, &compiled, &applied),
        };
        state.write(runtime_dir)?;
        info!(
            interfaces = cfg.interfaces().len(),
            zones = compiled.zones.len(),
            "policy applied"
        );
        Ok(())
    }
}

/// `swarmlb reload`: SIGHUP to the daemon named in the state file. The
/// daemon logs whether the new config applied.
pub fn signal_reload(runtime_dir: &Path) -> Result<()> {
    let state = DaemonState::read(runtime_dir)?;
    // SAFETY: kill(2) with a pid from our own state file and a valid signal.
    if unsafe { libc::kill(state.pid as i32, libc::SIGHUP) } != 0 {
        bail!("signalling swarmlb (pid {}): {}", state.pid, std::io::Error::last_os_error());
    }
    println!("asked swarmlb (pid {}) to reload {}", state.pid, state.config.display());
    Ok(())
}

pub fn run(config_path: &Path, runtime_dir: &Path, keep_pinned: bool) -> Result<()> {
    let cfg = Config::load(config_path)?;
    for w in cfg.warnings() {
        warn!("{w}");
    }
    ifindexes(&cfg)?;
    let _lock = InstanceLock::acquire(runtime_dir)?;
    let pin_dir = cfg.pin_path().to_owned();
    let datapath = Datapath::load(&pin_dir, lb_common::maglev::DEFAULT_TABLE_SIZE)?;
    let maps = IsolatorMaps::open(&pin_dir)?;
    let mut daemon = Daemon { datapath, maps, attached: HashMap::new() };
    if let Err(e) = daemon.apply(&cfg, config_path, runtime_dir) {
        daemon.datapath.detach_all();
        if !keep_pinned {
            remove_pins(&pin_dir).ok();
        }
        return Err(e);
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let pin = pin_dir.clone();
        let drops = tokio::spawn(async move {
            if let Err(e) = events::log_drops(&pin).await {
                error!(error = %e, "reading drop events failed");
            }
        });
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        info!(pid = std::process::id(), "swarmlb running");
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    match Config::load(config_path) {
                        Ok(new) => match daemon.apply(&new, config_path, runtime_dir) {
                            Ok(()) => info!("SIGHUP: config reloaded"),
                            Err(e) => error!(error = format!("{e:#}"), "SIGHUP: applying the new config failed; the running policy stays"),
                        },
                        Err(e) => error!(error = %e, "SIGHUP: the new config is invalid; the running policy stays"),
                    }
                }
            }
        }
        drops.abort();
        Ok::<_, anyhow::Error>(())
    });
    daemon.datapath.detach_all();
    DaemonState::remove(runtime_dir);
    drop(daemon);
    if keep_pinned {
        info!(pin_path = %pin_dir.display(), "pinned maps kept");
    } else {
        remove_pins(&pin_dir).context("removing pinned maps")?;
        info!("pinned maps removed");
    }
    result
}
