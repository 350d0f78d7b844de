//! `swarmlb run`: load, apply, attach, serve signals, clean up.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use lb_common::balancer::Mode;
use lb_user::{
    datapath::balancer_writer::{BalancerWriter, Desired, DesiredBackend, DesiredVip},
    source::config::{BalancerConfig, CompiledPolicy, Config, ForwardMode},
    observe::events, source::netif,
    datapath::loader::{remove_pins, AttachMode, Datapath, MapSizes, Program},
    datapath::maps::{BalancerMaps, IsolatorMaps},
    source::health::HealthChecks,
    datapath::isolator_writer,
    observe::status::ReportMaps,
    observe::state::{port_ranges, AgentStatus, DaemonState, HealthTransitions, InstanceLock, InterfaceState, ZoneState},
    source::swarm::follow::SwarmFollower,
    datapath::sweep,
    observe::watch::{self, CounterWatch},
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Resolves every configured interface name, so a typo fails before
/// anything is loaded or attached.
fn ifindexes(cfg: &Config) -> Result<HashMap<String, u32>> {
    let mut out = HashMap::new();
    for iface in cfg.interfaces() {
        let Some(idx) = ifindex(&iface.name) else {
            bail!("interface {:?} (zone {}) does not exist", iface.name, iface.zone);
        };
        out.insert(iface.name.clone(), idx);
    }
    if let Some(b) = cfg.balancer() {
        for (name, role) in b.outside_interfaces.iter().map(|n| (n, "outside")).chain([(&b.inside_interface, "inside")]) {
            let Some(idx) = ifindex(name) else {
                bail!("interface {name:?} (balancer {role} interface) does not exist");
            };
            out.insert(name.clone(), idx);
        }
    }
    Ok(out)
}

/// Which program each interface gets: the balancer (with the isolator as
/// its next stage) where VIP traffic or replies arrive, the isolator alone
/// on other zone interfaces.
fn programs(cfg: &Config) -> BTreeMap<String, Program> {
    let mut out: BTreeMap<String, Program> = cfg.interfaces().iter().map(|i| (i.name.clone(), Program::Isolator)).collect();
    if let Some(b) = cfg.balancer() {
        for name in b.outside_interfaces.iter().chain([&b.inside_interface]) {
            out.insert(name.clone(), Program::Balancer);
        }
    }
    out
}

/// The first address of `family` (4 or 6) on `ifname`, link-local excluded.
fn interface_address(ifname: &str, v6: bool) -> Option<IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_name is a valid C string.
        if ifa.ifa_addr.is_null() || unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes() != ifname.as_bytes() {
            continue;
        }
        // SAFETY: the family tells which sockaddr type it is.
        unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET if !v6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    found = Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 if v6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let a = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
                    if a.segments()[0] & 0xffc0 != 0xfe80 {
                        found = Some(IpAddr::V6(a));
                    }
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// The balancer's desired state from the config, with the health checks'
/// verdicts.
fn desired(b: &BalancerConfig, ifx: &HashMap<String, u32>, health: &HealthChecks) -> Result<Desired> {
    let inside_v4 = b.snat_v4.or_else(|| match interface_address(&b.inside_interface, false) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    });
    let inside_v6 = b.snat_v6.or_else(|| match interface_address(&b.inside_interface, true) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    });
    let mut vips = Vec::new();
    for v in &b.vips {
        let needs_inside = v.mode != ForwardMode::DsrL2;
        match v.address {
            IpAddr::V4(_) if needs_inside && inside_v4.is_none() => {
                bail!("vip {}: {} has no IPv4 address and balancer.snat_v4 is not set", v.name, b.inside_interface)
            }
            IpAddr::V6(_) if needs_inside && inside_v6.is_none() => {
                bail!("vip {}: {} has no IPv6 address and balancer.snat_v6 is not set", v.name, b.inside_interface)
            }
            _ => {}
        }
        vips.push(DesiredVip {
            name: v.name.clone(),
            address: v.address,
            mode: match v.mode {
                ForwardMode::Nat => Mode::Nat,
                ForwardMode::Dsr => Mode::Dsr,
                ForwardMode::DsrL2 => Mode::DsrL2,
            },
            rules: v.rules.iter().map(|r| (r.proto, r.port, r.target_port)).collect(),
            backends: v
                .backends
                .iter()
                .map(|be| DesiredBackend { address: be.address, weight: be.weight, up: health.is_up(&v.name, be.address) })
                .collect(),
        });
    }
    let egress = b.outside_interfaces.iter().chain([&b.inside_interface]).filter_map(|n| ifx.get(n).copied()).collect();
    Ok(Desired { inside_v4, inside_v6, snat_ports: b.snat_ports, egress, vips })
}

/// The kernel's FIB lookup refuses to answer (BPF_FIB_LKUP_RET_FWD_DISABLED)
/// on an interface that does not forward the family, so a zone that checks
/// reverse paths there would drop every trusted source of that family
/// (`reverse_path_unverified`). Refused here, naming the sysctl, rather than
/// found out from the drops. A family is needed when the zone trusts some
/// source of it (allow-list or cluster nodes).
fn check_forwarding(compiled: &CompiledPolicy) -> Result<()> {
    for (ifname, zone) in &compiled.interfaces {
        let z = &compiled.zones[*zone];
        if z.reverse_path == lb_common::isolator::ReversePath::Off {
            continue;
        }
        for (v6, needed) in [(false, !z.sources_v4.is_empty()), (true, !z.sources_v6.is_empty())] {
            if needed && !netif::forwarding(ifname, v6)? {
                let sysctl = netif::forwarding_sysctl(ifname, v6);
                bail!(
                    "zone {}: reverse_path = \"{}\" on {ifname} needs {sysctl} = 1: with IPv{} forwarding off the kernel will not look up the route back to a source (bpf_fib_lookup answers FWD_DISABLED) and every trusted IPv{} source would be dropped. Set `sysctl -w {sysctl}=1`{}, or reverse_path = \"off\" for the zone",
                    z.name,
                    z.reverse_path.name(),
                    if v6 { 6 } else { 4 },
                    if v6 { 6 } else { 4 },
                    if v6 { " (and accept_ra = 2 if the interface takes its address from router advertisements)" } else { "" },
                );
            }
        }
    }
    Ok(())
}

/// The impossible-source rules for the host's addresses as they are now.
fn impossible_sources(cfg: &Config, ifx: &HashMap<String, u32>, desired: &Desired) -> Result<lb_user::datapath::martian::Rules> {
    let addrs = netif::addresses()?;
    let zones: Vec<u32> = cfg.interfaces().iter().filter_map(|i| ifx.get(&i.name).copied()).collect();
    let outside = cfg.balancer().map(|b| {
        let inside_if = ifx.get(&b.inside_interface).copied();
        let inside_nets = addrs.iter().filter(|a| Some(a.ifindex) == inside_if).map(|a| lb_user::datapath::martian::network(a.addr, a.prefix));
        let backends = desired.vips.iter().flat_map(|v| v.backends.iter().map(|b| lb_user::source::config::Cidr::host(b.address)));
        lb_user::datapath::martian::Outside {
            ifindexes: b.outside_interfaces.iter().filter_map(|n| ifx.get(n).copied()).collect(),
            vips: desired.vips.iter().map(|v| v.address).collect(),
            inside: desired.inside_v4.map(IpAddr::V4).into_iter().chain(desired.inside_v6.map(IpAddr::V6)).collect(),
            backend_networks: inside_nets.chain(backends).collect(),
        }
    });
    Ok(lb_user::datapath::martian::compile(&addrs, &zones, outside.as_ref()))
}

/// Protected ports inside this host's ephemeral range also match the
/// replies to its own outgoing connections (the isolator judges destination
/// ports and keeps no connection state): say so, it is rarely intended.
fn warn_ephemeral_overlap(compiled: &CompiledPolicy, balancer: Option<&BalancerConfig>) {
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else { return };
    let mut it = range.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else { return };
    if let Some(b) = balancer {
        let (min, max) = b.snat_ports;
        if min <= hi && lo <= max {
            warn!(
                snat_ports = %format!("{min}-{max}"),
                ephemeral = %format!("{lo}-{hi}"),
                "balancer.snat_ports overlap the ephemeral port range (net.ipv4.ip_local_port_range): a packet to the inside \
                 address on a SNAT port that is not a NAT reply is dropped as drop_forged_reply, so this host's own connections \
                 from those ports (health checks among them) lose their replies; keep the two apart"
            );
        }
    }
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
                .map(|r| format!("{}/{}→{}", if r.proto == lb_common::wire::IPPROTO_TCP { "tcp" } else { "udp" }, r.port, r.target_port))
                .collect();
            let mut backends: Vec<String> = v.backends.iter().map(|b| format!("{} (weight {})", b.address, b.weight)).collect();
            if let Some(sel) = &v.backends_from {
                backends.push(format!("Swarm nodes matching {sel}"));
            }
            let _ = writeln!(out, "vip {} {} ({}): {}; backends {}", v.name, v.address, v.mode, rules.join(", "), if backends.is_empty() { "none".into() } else { backends.join(", ") });
        }
    }
    out
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

/// The daemon's running state.
struct Daemon {
    datapath: Datapath,
    maps: IsolatorMaps,
    lb_maps: BalancerMaps,
    lb_writer: BalancerWriter,
    /// The sizes the maps were loaded with.
    sizes: MapSizes,
    attached: HashMap<String, (Program, AttachMode)>,
    health: HealthChecks,
    swarm: SwarmFollower,
    /// The config file's contents in force (re-applied, with the Swarm's
    /// additions, when a backend's health or the Swarm changes).
    file_config: Option<Config>,
    /// The state file's contents, as last written.
    state: Option<DaemonState>,
    /// Start, adoption, reloads and pins (for status and metrics).
    agent: AgentStatus,
}

impl Daemon {
    fn detach(&mut self, names: &[String]) {
        for name in names {
            self.datapath.detach(name);
            self.attached.remove(name);
        }
    }

    /// Applies the config file's `file_cfg` with what the Swarm adds to it:
    /// attach to new interfaces, write the policy and the balancer's maps,
    /// detach from interfaces no longer configured. On error the old policy
    /// stays.
    fn apply(&mut self, file_cfg: &Config, config_path: &Path, runtime_dir: &Path) -> Result<()> {
        let cfg = &file_cfg.with_swarm(&self.swarm.additions_for(file_cfg));
        let ifx = ifindexes(cfg)?;
        let compiled = cfg.compile();
        warn_ephemeral_overlap(&compiled, cfg.balancer());
        if let Some(change) = self.sizes.change(&MapSizes::of(cfg.balancer())) {
            bail!("{change}: that needs new maps, which forget every flow (stop swarmlb, `swarmlb down`, start it again)");
        }
        // Everything that can refuse the config is asked before anything
        // is written; the health checks follow only a config that applied.
        let desired = match cfg.balancer() {
            Some(b) => desired(b, &ifx, &self.health)?,
            None => Desired { inside_v4: None, inside_v6: None, snat_ports: (0, 0), egress: Vec::new(), vips: Vec::new() },
        };
        self.lb_writer.check(&desired).context("the balancer's maps")?;
        check_forwarding(&compiled)?;
        let impossible = impossible_sources(cfg, &ifx, &desired)?;
        let wanted = programs(cfg);
        // New interfaces get a program; an interface whose program changes
        // gets the new one swapped in on its link. Only the new ones are
        // taken off again if the rest fails.
        let mut newly = Vec::new();
        for (name, program) in &wanted {
            if self.attached.get(name).map(|(p, _)| p) != Some(program) {
                match self.datapath.attach(name, *program) {
                    Ok((mode, was_running)) => {
                        if !was_running {
                            newly.push(name.clone());
                        }
                        self.attached.insert(name.clone(), (*program, mode));
                    }
                    Err(e) => {
                        self.detach(&newly);
                        return Err(e);
                    }
                }
            }
        }
        isolator_writer::apply_settings(&mut self.maps, cfg.drop_event_interval_ns())?;
        // Before the policy: the tries only ever drop more.
        if let Err(e) = impossible.apply(&mut self.maps) {
            self.detach(&newly);
            return Err(e);
        }
        let applied = match isolator_writer::apply(&mut self.maps, &compiled, &ifx) {
            Ok(a) => a,
            Err(e) => {
                self.detach(&newly);
                return Err(e);
            }
        };
        let vips = match self.lb_writer.apply(&mut self.lb_maps, &desired) {
            Ok(v) => v,
            Err(e) => {
                self.detach(&newly);
                return Err(e.context("writing the balancer's maps"));
            }
        };
        let gone: Vec<String> =
            self.attached.keys().filter(|n| !wanted.contains_key(*n)).cloned().collect();
        self.detach(&gone);
        let state = DaemonState {
            pid: std::process::id(),
            config: config_path.to_owned(),
            pin_path: self.datapath.pin_dir().to_owned(),
            interfaces: wanted
                .iter()
                .map(|(name, program)| InterfaceState {
                    name: name.clone(),
                    ifindex: ifx[name],
                    zone: cfg.interfaces().iter().find(|i| &i.name == name).map(|i| i.zone.clone()).unwrap_or_default(),
                    mode: self.attached[name].1,
                    program: *program,
                })
                .collect(),
            zones: zone_states(cfg, &compiled, &applied),
            vips,
            swarm: None,
            health_transitions: Vec::new(),
            agent: AgentStatus::default(),
        };
        self.health.follow(cfg.balancer());
        info!(
            interfaces = wanted.len(),
            zones = compiled.zones.len(),
            vips = state.vips.len(),
            backends = state.vips.iter().map(|v| v.backends.len()).sum::<usize>(),
            up = state.vips.iter().flat_map(|v| &v.backends).filter(|b| b.up).count(),
            "config applied"
        );
        self.swarm.follow(file_cfg);
        self.file_config = Some(file_cfg.clone());
        self.state = Some(state);
        self.write_state(runtime_dir)
    }

    /// Applies the config in force again (health or Swarm changed).
    fn reapply(&mut self, why: &str, config_path: &Path, runtime_dir: &Path) {
        if let Some(current) = self.file_config.clone() {
            if let Err(e) = self.apply(&current, config_path, runtime_dir) {
                error!(error = format!("{e:#}"), "applying a {why} change failed; the running state stays");
            }
        }
    }

    /// Notes a SIGHUP's outcome (status, metrics) and writes the state file.
    fn reloaded(&mut self, outcome: Result<(), String>, runtime_dir: &Path) {
        match outcome {
            Ok(()) => {
                self.agent.reloads_succeeded += 1;
                self.agent.last_reload_ok = true;
                self.agent.last_reload_success = now();
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
        let missing = self.datapath.missing_pins();
        if missing.is_empty() && self.agent.pins_ok {
            return;
        }
        let pin_path = self.datapath.pin_dir().display().to_string();
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
        match self.datapath.repin() {
            Ok(n) => {
                info!(pin_path, pinned = n, "the maps and links are pinned again: a restart adopts the data path");
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
        state.health_transitions = state
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
            .map(|(v, b)| HealthTransitions { vip: v.name.clone(), backend: b.address, transitions: self.health.transitions(&v.name, b.address) })
            .collect();
        state.write(runtime_dir)
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

/// How often the pins are looked for.
const PIN_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Unix time in seconds.
fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

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
/// pinned maps (counters, flows, NAT state). Refuses while a daemon runs.
pub fn down(pin_dir: &Path, runtime_dir: &Path) -> Result<()> {
    let _lock = InstanceLock::acquire(runtime_dir)?;
    if !pin_dir.exists() {
        println!("nothing pinned at {}", pin_dir.display());
        return Ok(());
    }
    remove_pins(pin_dir).with_context(|| format!("removing the pins in {}", pin_dir.display()))?;
    DaemonState::remove(runtime_dir);
    println!("swarmlb's programs detached and {} removed", pin_dir.display());
    Ok(())
}

pub fn run(config_path: &Path, runtime_dir: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    for w in cfg.warnings() {
        warn!("{w}");
    }
    ifindexes(&cfg)?;
    let _lock = InstanceLock::acquire(runtime_dir)?;
    let pin_dir = cfg.pin_path().to_owned();
    let sizes = MapSizes::of(cfg.balancer());
    let datapath = Datapath::load(&pin_dir, sizes)?;
    let maps = IsolatorMaps::open(&pin_dir)?;
    let lb_maps = BalancerMaps::open(&pin_dir)?;
    let lb_writer = BalancerWriter::adopt(&lb_maps, sizes.table_size)?;
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
    let health = HealthChecks::new(health_tx);
    let (swarm_tx, mut swarm_rx) = tokio::sync::mpsc::unbounded_channel();
    let swarm = SwarmFollower::new(swarm_tx, runtime_dir);
    let mut daemon = Daemon {
        datapath,
        maps,
        lb_maps,
        lb_writer,
        sizes,
        attached: HashMap::new(),
        health,
        swarm,
        file_config: None,
        state: None,
        agent: AgentStatus::default(),
    };
    let was_running = daemon.datapath.found_running();
    if was_running {
        info!(pin_path = %pin_dir.display(), "adopting the running data path");
    }
    let started = now();
    daemon.agent = AgentStatus {
        started,
        adopted: was_running,
        last_reload_ok: true,
        last_reload_success: started,
        pins_ok: true,
        ..AgentStatus::default()
    };
    if let Err(e) = daemon.apply(&cfg, config_path, runtime_dir) {
        // What ran before keeps running; a first start leaves no trace.
        if !was_running {
            remove_pins(&pin_dir).ok();
        }
        return Err(e);
    }
    daemon.datapath.release_unclaimed();
    if was_running {
        info!(
            pin_path = %pin_dir.display(),
            links = daemon.attached.len(),
            flows = daemon.lb_maps.flows.keys().count(),
            nat_entries = daemon.lb_maps.nat.keys().count(),
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
        let metrics = cfg.metrics_listen().and_then(|addr| match ReportMaps::open(&pin_dir) {
            Ok(maps) => Some(tokio::spawn(lb_user::observe::metrics::serve(addr, runtime_dir.to_owned(), maps))),
            Err(e) => {
                error!(error = format!("{e:#}"), "opening the maps for the metrics endpoint failed; running without it");
                None
            }
        });
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut pin_check = tokio::time::interval(PIN_CHECK_INTERVAL);
        let mut watch_tick = tokio::time::interval(watch::INTERVAL);
        watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = CounterWatch::new(daemon.lb_maps.counters().unwrap_or_default());
        let mut watched = std::time::Instant::now();
        let mut idle = idle_timeouts(&cfg);
        // Address changes: the impossible-source tries follow them.
        let mut addresses = match netif::AddressWatch::new() {
            Ok(w) => Some(w),
            Err(e) => {
                error!(error = format!("{e:#}"), "watching address changes failed: the host's addresses are read again only on reloads and Swarm or health changes");
                None
            }
        };
        info!(pid = std::process::id(), "swarmlb running");
        loop {
            tokio::select! {
                _ = housekeeping.tick() => {
                    match sweep::sweep_nat(&mut daemon.lb_maps, &idle) {
                        Ok(0) => {}
                        Ok(n) => info!(removed = n, "idle NAT entries removed"),
                        Err(e) => warn!(error = %e, "sweeping NAT entries failed"),
                    }
                }
                _ = pin_check.tick() => daemon.check_pins(runtime_dir),
                _ = watch_tick.tick() => {
                    match watch.check(&daemon.lb_maps, watched.elapsed()) {
                        Ok(lines) => lines.iter().for_each(|l| warn!("{l}")),
                        Err(e) => warn!(error = format!("{e:#}"), "reading the balancer's counters failed"),
                    }
                    watched = std::time::Instant::now();
                }
                Some(()) = health_rx.recv() => {
                    // Several transitions at once make one apply.
                    while health_rx.try_recv().is_ok() {}
                    daemon.reapply("health", config_path, runtime_dir);
                }
                Some(update) = swarm_rx.recv() => {
                    let changed = match daemon.file_config.clone() {
                        Some(current) => daemon.swarm.update(update, &current),
                        None => false,
                    };
                    if changed {
                        daemon.reapply("Swarm", config_path, runtime_dir);
                    } else if let Err(e) = daemon.write_state(runtime_dir) {
                        warn!(error = format!("{e:#}"), "writing the state file failed");
                    }
                }
                r = async { addresses.as_mut().unwrap().changed().await }, if addresses.is_some() => {
                    match r {
                        Ok(()) => daemon.reapply("address", config_path, runtime_dir),
                        Err(e) => {
                            error!(error = format!("{e:#}"), "watching address changes failed; stopped watching");
                            addresses = None;
                        }
                    }
                }
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    let config = config_path.display().to_string();
                    let outcome = match Config::load(config_path) {
                        Ok(new) => match daemon.apply(&new, config_path, runtime_dir) {
                            Ok(()) => {
                                idle = idle_timeouts(&new);
                                if new.metrics_listen() != cfg.metrics_listen() {
                                    warn!(config, "SIGHUP: config reloaded, but settings.metrics_listen takes effect at the next start");
                                } else {
                                    info!(config, "SIGHUP: config reloaded");
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
                    daemon.reloaded(outcome, runtime_dir);
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
    DaemonState::remove(runtime_dir);
    drop(daemon);
    if pins_ok {
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
