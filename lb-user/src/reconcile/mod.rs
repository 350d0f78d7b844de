//! The reconciler: the one place that turns what the sources say into
//! writes to the data path.
//!
//! It takes one input per source — the config file ([`Reconciler::set_config`]),
//! the Swarm's additions ([`Reconciler::set_swarm`]), the health checks'
//! verdicts ([`Reconciler::set_health`]) and the host's interfaces and
//! addresses ([`Reconciler::set_netif`]) — computes the [`DesiredState`]
//! from the latest word of all four, and writes only what differs from
//! what it applied last, returning that difference as a [`Diff`].
//!
//! A config (re)load is applied in full, as an operator expects of SIGHUP:
//! interfaces resolved, forwarding checked, every writer run. The other
//! inputs change one part: a health flip rewrites one backend entry and
//! its VIPs' tables and services, a Swarm delta the parts its additions
//! touch, an address change the impossible-source tries (and the inside
//! addresses). Nothing is attached again and no warning repeats.
//!
//! Every input is checked before anything is written (the maps' limits,
//! the forwarding sysctls the reverse-path check needs), so a refused input
//! leaves the running state as it was.

mod desired;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use anyhow::{bail, Context, Result};
pub use desired::DesiredState;
use tracing::warn;

use crate::{
    datapath::{
        balancer_writer::{AppliedVip, BalancerWriter},
        isolator_writer,
        loader::{AttachMode, Datapath, MapSizes, Program},
        maps::{BalancerMaps, IsolatorMaps},
    },
    source::{
        config::{BalancerConfig, CompiledPolicy, Config, SwarmAdditions},
        health::Down,
        netif::{self, HostAddr},
    },
};

/// The latest word of every source.
#[derive(Clone, Default)]
struct Inputs {
    /// The config file in force.
    file: Option<Config>,
    swarm: SwarmAdditions,
    down: Down,
    /// The host's addresses.
    host: Vec<HostAddr>,
    /// The interfaces' MACs, by ifindex.
    macs: BTreeMap<u32, [u8; 6]>,
    /// The configured interfaces' indexes.
    ifindexes: HashMap<String, u32>,
}

/// What the data path says now, as the reconciler last wrote it.
pub struct Applied {
    /// The config file with the Swarm's additions, for the observers
    /// (status, the health checks); the desired state is computed from
    /// the two apart.
    pub config: Config,
    /// Interface name → ifindex.
    pub ifindexes: HashMap<String, u32>,
    pub desired: DesiredState,
    /// Where the isolator's zones were written.
    pub zones: isolator_writer::Applied,
    /// The balancer's VIPs with their backend ids and table slots.
    pub vips: Vec<AppliedVip>,
}

/// What one input changed in the data path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Interfaces that got a program (new, or another one).
    pub attached: Vec<String>,
    /// Interfaces whose program came off.
    pub detached: Vec<String>,
    /// Whether the isolator's policy (zones, ports, sources, bindings) was written.
    pub policy: bool,
    /// Whether the impossible-source tries were written.
    pub impossible: bool,
    /// Whether the balancer's maps changed.
    pub balancer: bool,
    /// Map updates and deletes, all writers together.
    pub map_writes: u64,
}

/// Keeps the data path in line with the sources.
pub struct Reconciler {
    datapath: Datapath,
    isolator_maps: IsolatorMaps,
    balancer_maps: BalancerMaps,
    balancer: BalancerWriter,
    /// The sizes the maps were loaded with.
    sizes: MapSizes,
    attached: HashMap<String, (Program, AttachMode)>,
    inputs: Inputs,
    applied: Option<Applied>,
}

impl Reconciler {
    /// Loads (or adopts) the data path pinned at `pin_dir` with maps of
    /// `sizes`; nothing is attached or written until the first
    /// [`Reconciler::set_config`].
    pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Self> {
        let datapath = Datapath::load(pin_dir, sizes)?;
        let isolator_maps = IsolatorMaps::open(pin_dir)?;
        let balancer_maps = BalancerMaps::open(pin_dir)?;
        let balancer = BalancerWriter::adopt(&balancer_maps, sizes.table_size)?;
        Ok(Self { datapath, isolator_maps, balancer_maps, balancer, sizes, attached: HashMap::new(), inputs: Inputs::default(), applied: None })
    }

    /// The config file says `file` (a start or a reload), and the Swarm
    /// adds `swarm` to it: resolves its interfaces and applies everything
    /// in one go. On error nothing changed and the previous config stays
    /// in force.
    ///
    /// The Swarm's additions come with the file because they are mapped
    /// for it: applied later, the agent's first apply after a restart
    /// would run without the Swarm's backends (its saved view), and
    /// adopted flows to them would break.
    pub fn set_config(&mut self, file: Config, swarm: SwarmAdditions) -> Result<Diff> {
        let ifindexes = resolve_interfaces(&file)?;
        let host = netif::addresses()?;
        let macs = netif::link_macs()?;
        self.with_inputs(|i| {
            i.file = Some(file);
            i.swarm = swarm;
            i.ifindexes = ifindexes;
            i.host = host;
            i.macs = macs;
        }, true)
    }

    /// The Swarm's additions are now `swarm`.
    pub fn set_swarm(&mut self, swarm: SwarmAdditions) -> Result<Diff> {
        self.with_inputs(|i| i.swarm = swarm, false)
    }

    /// The health checks now hold the backends in `down` down.
    pub fn set_health(&mut self, down: Down) -> Result<Diff> {
        self.with_inputs(|i| i.down = down, false)
    }

    /// The host's links or addresses changed: reads them again.
    pub fn set_netif(&mut self) -> Result<Diff> {
        let Some(file) = &self.inputs.file else { return Ok(Diff::default()) };
        let ifindexes = resolve_interfaces(file)?;
        let host = netif::addresses()?;
        let macs = netif::link_macs()?;
        self.with_inputs(|i| {
            i.ifindexes = ifindexes;
            i.host = host;
            i.macs = macs;
        }, false)
    }

    /// Applies the inputs as `change` leaves them; on error the inputs are
    /// put back, so the next change starts from what is applied.
    fn with_inputs(&mut self, change: impl FnOnce(&mut Inputs), full: bool) -> Result<Diff> {
        let before = self.inputs.clone();
        change(&mut self.inputs);
        let result = self.reconcile(full);
        if result.is_err() {
            self.inputs = before;
        }
        result
    }

    /// Makes the data path say what the inputs ask for; `full` writes every
    /// part, otherwise only the parts that differ from the last apply.
    fn reconcile(&mut self, full: bool) -> Result<Diff> {
        let Some(file) = &self.inputs.file else { return Ok(Diff::default()) };
        let ifindexes = self.inputs.ifindexes.clone();
        // The Swarm's additions are an input of their own: nothing is
        // folded into a config and compiled again for the data path.
        let want = validate(file, &self.inputs.swarm, &ifindexes, (&self.inputs.host, &self.inputs.macs), &self.inputs.down, Some(&self.sizes))?;
        let last = self.applied.as_ref().filter(|_| !full);
        let policy_changed = last.is_none_or(|a| a.desired.policy != want.policy || a.ifindexes != ifindexes);
        let impossible_changed = last.is_none_or(|a| a.desired.impossible != want.impossible);
        let settings_changed = last.is_none_or(|a| a.desired.drop_event_interval_ns != want.drop_event_interval_ns);
        let balancer_changed = last.is_none_or(|a| a.desired.balancer != want.balancer);
        let snat_ports_changed = last.is_none_or(|a| a.desired.balancer.snat_ports != want.balancer.snat_ports);
        // Everything that can refuse the input is asked before anything is
        // written (the rest in `validate`).
        if policy_changed {
            check_forwarding(&want.policy)?;
        }
        if balancer_changed {
            check_balancer_forwarding(file)?;
        }
        let mut diff = Diff { policy: policy_changed, impossible: impossible_changed, balancer: balancer_changed, ..Diff::default() };
        // New interfaces get a program; an interface whose program changes
        // gets the new one swapped in on its link. Only the new ones are
        // taken off again if the rest fails.
        let mut newly = Vec::new();
        for (name, program) in &want.programs {
            if self.attached.get(name).map(|(p, _)| p) != Some(program) {
                match self.datapath.attach(name, *program) {
                    Ok((mode, was_running)) => {
                        if !was_running {
                            newly.push(name.clone());
                        }
                        diff.attached.push(name.clone());
                        self.attached.insert(name.clone(), (*program, mode));
                    }
                    Err(e) => {
                        self.detach(&newly);
                        return Err(e);
                    }
                }
            }
        }
        let written = self.write(&want, &ifindexes, policy_changed, impossible_changed, settings_changed, balancer_changed);
        let (zones, vips, writes) = match written {
            Ok(w) => w,
            Err(e) => {
                self.detach(&newly);
                return Err(e);
            }
        };
        diff.map_writes = writes;
        let gone: Vec<String> = self.attached.keys().filter(|n| !want.programs.contains_key(*n)).cloned().collect();
        self.detach(&gone);
        diff.detached = gone;
        let file = self.inputs.file.as_ref().expect("checked at the top");
        if policy_changed || snat_ports_changed {
            warn_ephemeral_overlap(&want.policy, file.balancer());
        }
        let zones = zones.or_else(|| self.applied.as_ref().map(|a| a.zones.clone())).unwrap_or_default();
        let vips = vips.or_else(|| self.applied.as_ref().map(|a| a.vips.clone())).unwrap_or_default();
        let config = file.with_swarm(&self.inputs.swarm);
        self.applied = Some(Applied { config, ifindexes, desired: want, zones, vips });
        Ok(diff)
    }

    /// Runs the writers of the parts that changed, the tries first (they
    /// only ever drop more); returns what the isolator's and the
    /// balancer's writers applied (`None`: not run) and the map writes.
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        want: &DesiredState,
        ifindexes: &HashMap<String, u32>,
        policy: bool,
        impossible: bool,
        settings: bool,
        balancer: bool,
    ) -> Result<(Option<isolator_writer::Applied>, Option<Vec<AppliedVip>>, u64)> {
        let mut writes = 0;
        if settings {
            isolator_writer::apply_settings(&mut self.isolator_maps, want.drop_event_interval_ns)?;
            writes += 1;
        }
        if impossible {
            writes += want.impossible.apply(&mut self.isolator_maps)?;
        }
        let zones = if policy {
            let applied = isolator_writer::apply(&mut self.isolator_maps, &want.policy, ifindexes)?;
            writes += applied.writes;
            Some(applied)
        } else {
            None
        };
        let vips = if balancer || self.applied.is_none() {
            let before = self.balancer.writes();
            let vips = self.balancer.apply(&mut self.balancer_maps, &want.balancer).context("writing the balancer's maps")?;
            writes += self.balancer.writes() - before;
            Some(vips)
        } else {
            None
        };
        Ok((zones, vips, writes))
    }

    fn detach(&mut self, names: &[String]) {
        for name in names {
            self.datapath.detach(name);
            self.attached.remove(name);
        }
    }

    /// What was applied last (`None` before the first config applied).
    pub fn applied(&self) -> Option<&Applied> {
        self.applied.as_ref()
    }

    /// The config file in force.
    pub fn file_config(&self) -> Option<&Config> {
        self.inputs.file.as_ref()
    }

    /// Interface name → (program, attach mode), for every attached interface.
    pub fn attached(&self) -> &HashMap<String, (Program, AttachMode)> {
        &self.attached
    }

    /// Where the maps and links are pinned.
    pub fn pin_dir(&self) -> &Path {
        self.datapath.pin_dir()
    }

    /// The loaded programs and their pins.
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    /// The balancer's maps (the sweep and the counter watch read and tidy them).
    pub fn balancer_maps(&mut self) -> &mut BalancerMaps {
        &mut self.balancer_maps
    }
}

/// The desired state of `cfg` and the Swarm's additions `swarm` on this
/// host, with every check that can refuse it short of the forwarding sysctls (those are asked only when
/// the policy changes, [`check_forwarding`]): the interfaces' addresses
/// (`DesiredState::of`), the maps' limits, and — with `sizes`, the sizes
/// the maps were loaded with — a change of a map's size.
fn validate(
    cfg: &Config,
    swarm: &SwarmAdditions,
    ifindexes: &HashMap<String, u32>,
    host: (&[HostAddr], &BTreeMap<u32, [u8; 6]>),
    down: &Down,
    sizes: Option<&MapSizes>,
) -> Result<DesiredState> {
    let want = DesiredState::of(cfg, swarm, ifindexes, host, down)?;
    if let Some(change) = sizes.and_then(|s| s.change(&MapSizes::of(cfg.balancer()))) {
        bail!("{change}: that needs new maps, which forget every flow (stop swarmlb, `swarmlb down`, start it again)");
    }
    BalancerWriter::check(&want.balancer).context("the balancer's maps")?;
    Ok(want)
}

/// Everything a first [`Reconciler::set_config`] of `file` would refuse,
/// asked without loading, attaching or writing anything: the interfaces,
/// the host's addresses (SNAT addresses on the inside interface, an
/// inside address per VIP family), the maps' limits, the forwarding
/// sysctls, the pin path's filesystem and the sizes of maps already
/// pinned there. The very code paths `swarmlb run` takes, so `swarmlb
/// check` cannot pass what `run` refuses. Returns the desired state (the
/// Swarm adds nothing yet: it is not asked).
pub fn preflight(file: &Config) -> Result<DesiredState> {
    let ifindexes = resolve_interfaces(file)?;
    let host = netif::addresses()?;
    let macs = netif::link_macs()?;
    let want = validate(file, &SwarmAdditions::default(), &ifindexes, (&host, &macs), &Down::default(), None)?;
    check_forwarding(&want.policy)?;
    check_balancer_forwarding(file)?;
    let pin_dir = file.pin_path();
    crate::datapath::loader::bpffs_needs_mount(pin_dir)?;
    if pin_dir.exists() {
        crate::datapath::loader::check_pinned_sizes(pin_dir, &MapSizes::of(file.balancer()))?;
    }
    Ok(want)
}

/// Resolves every interface `cfg` names, so a typo fails before anything
/// is loaded or attached.
pub fn resolve_interfaces(cfg: &Config) -> Result<HashMap<String, u32>> {
    let mut out = HashMap::new();
    for iface in cfg.interfaces() {
        let Some(idx) = netif::ifindex(&iface.name) else {
            bail!("interface {:?} (zone {}) does not exist", iface.name, iface.zone);
        };
        out.insert(iface.name.clone(), idx);
    }
    if let Some(b) = cfg.balancer() {
        for (name, role) in b.outside_interfaces.iter().map(|n| (n, "outside")).chain([(&b.inside_interface, "inside")]) {
            let Some(idx) = netif::ifindex(name) else {
                bail!("interface {name:?} (balancer {role} interface) does not exist");
            };
            out.insert(name.clone(), idx);
        }
    }
    Ok(out)
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

/// The balancer finds each packet's next hop with `bpf_fib_lookup` from
/// the interface it arrived on (a client's packet on an outside interface,
/// a backend's reply on the inside one), which answers FWD_DISABLED where
/// the kernel does not forward the family: every packet to a VIP of that
/// family would be lost. Refused, naming the sysctl, as for the zones.
fn check_balancer_forwarding(file: &Config) -> Result<()> {
    let Some(b) = file.balancer() else { return Ok(()) };
    for v6 in [false, true] {
        let Some(vip) = b.vips.iter().find(|v| v.address.is_ipv6() == v6) else { continue };
        for ifname in b.outside_interfaces.iter().chain([&b.inside_interface]) {
            if !netif::forwarding(ifname, v6)? {
                let sysctl = netif::forwarding_sysctl(ifname, v6);
                bail!(
                    "vip {}: the balancer on {ifname} needs {sysctl} = 1: with IPv{} forwarding off the kernel's route lookup \
                     (bpf_fib_lookup) answers FWD_DISABLED and no packet to the VIP would be forwarded. Set `sysctl -w {}=1` \
                     (and make it permanent in /etc/sysctl.d/)",
                    vip.name,
                    if v6 { 6 } else { 4 },
                    if v6 { "net.ipv6.conf.all.forwarding" } else { "net.ipv4.ip_forward" },
                );
            }
        }
    }
    Ok(())
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
