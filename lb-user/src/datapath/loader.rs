//! Loads swarmlb's XDP programs into the kernel, pins their maps, attaches
//! them to interfaces and takes them off again.
//!
//! Each interface carries one program: the `balancer` on the edge's
//! outside and inside interfaces (it tail-calls the isolator with traffic
//! that is not its own, so an interface can balance and isolate), the
//! `isolator` alone on interfaces that only face a zone.
//!
//! Every attachment is a bpf_link pinned next to the maps
//! (`xdp-native-<ifname>` or `xdp-generic-<ifname>`), so the data path
//! outlives the process that set it up: a daemon that stops, crashes or is
//! upgraded leaves packets flowing. The next daemon adopts each pinned link
//! and swaps its own program in with one `bpf_link_update` — there is no
//! moment without a program on the interface. Only an explicit detach (or
//! [`remove_pins`], i.e. `swarmlb down`) takes a program off.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    balancer::{
        FlowEntry, NatEntry, LB_COUNTERS_LEN, MAP_FLOWS, MAP_LB_COUNTERS, MAP_MAGLEV, MAP_NAT, MAP_NEXT_STAGE, MAX_FLOWS, MAX_NAT_ENTRIES, MAX_VIPS,
        NEXT_STAGE_ISOLATOR, PROGRAM_BALANCER,
    },
    isolator::{MAP_ISOLATOR_STAGES, PROGRAM_ISOLATOR, PROGRAM_ISOLATOR_REVERSE_PATH, STAGE_REVERSE_PATH},
};
use tracing::{info, warn};

/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How an interface got its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP: slower, used when the driver has no XDP support.
    Generic,
}

/// Which of the programs an interface gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    #[default]
    Isolator,
    /// The balancer, with the isolator as its next stage.
    Balancer,
}

impl AttachMode {
    fn word(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// Where the link of `ifname` attached in `mode` is pinned. The mode is in
/// the name because the kernel does not report it for a link.
fn link_pin(pin_dir: &Path, mode: AttachMode, ifname: &str) -> PathBuf {
    pin_dir.join(format!("xdp-{}-{ifname}", mode.word()))
}

/// The pinned links in `pin_dir`: interface name → (mode, pin path).
fn pinned_links(pin_dir: &Path) -> Vec<(String, AttachMode, PathBuf)> {
    let Ok(entries) = fs::read_dir(pin_dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (mode, ifname) = if let Some(n) = name.strip_prefix("xdp-native-") {
                (AttachMode::Native, n)
            } else {
                (AttachMode::Generic, name.strip_prefix("xdp-generic-")?)
            };
            Some((ifname.to_owned(), mode, e.path()))
        })
        .collect()
}

/// Attaches `prog` to `ifname`, natively if the driver can, else
/// generically (with a warning: generic XDP runs after the skb is built),
/// and pins the link at the path [`link_pin`] gives.
pub(crate) fn attach_pinned(prog: &mut Xdp, ifname: &str, pin_dir: &Path) -> Result<(FdLink, AttachMode)> {
    let (id, mode) = match prog.attach(ifname, XdpMode::Driver) {
        Ok(id) => (id, AttachMode::Native),
        Err(native) => {
            warn!(interface = ifname, error = %native, "native XDP attach failed; falling back to generic mode");
            let id = prog.attach(ifname, XdpMode::Skb).with_context(|| format!("attaching XDP to {ifname}"))?;
            (id, AttachMode::Generic)
        }
    };
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("this kernel attached XDP without a bpf_link (Linux 5.9 or later is needed)")?;
    let path = link_pin(pin_dir, mode, ifname);
    let pinned = link.pin(&path).with_context(|| format!("pinning the XDP link of {ifname} at {}", path.display()))?;
    Ok((pinned.into(), mode))
}

/// One interface carrying one of the programs.
struct Attachment {
    ifname: String,
    program: Program,
    mode: AttachMode,
    /// Our handle on the pinned link (the pin keeps it alive without us).
    link: FdLink,
}

impl Program {
    /// The program's name in the object file.
    pub fn name(self) -> &'static str {
        match self {
            Program::Isolator => PROGRAM_ISOLATOR,
            Program::Balancer => PROGRAM_BALANCER,
        }
    }
}

/// The loaded programs and the interfaces they are attached to.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    links: Vec<Attachment>,
    /// Links an earlier process pinned and this one has not claimed yet.
    found: Vec<(String, AttachMode, PathBuf)>,
    /// The maps that are pinned (by name), to pin again if the pins go.
    pinned_maps: Vec<String>,
}

/// Slots of the Maglev map for tables of `table_size`.
pub fn maglev_map_len(table_size: u32) -> u32 {
    MAX_VIPS * 2 * table_size
}

/// The sizes of the maps that are sized at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Maglev table slots per VIP (`table_size`).
    pub table_size: u32,
    /// Flow table entries (`flow_table_size`).
    pub flows: u32,
    /// NAT table entries (`nat_table_size`).
    pub nat: u32,
}

impl MapSizes {
    /// Maglev tables of `table_size`, the default flow and NAT tables.
    pub const fn with_table(table_size: u32) -> Self {
        Self { table_size, flows: MAX_FLOWS, nat: MAX_NAT_ENTRIES }
    }

    /// The sizes `b` asks for (the defaults without a balancer).
    pub fn of(b: Option<&crate::source::config::BalancerConfig>) -> Self {
        b.map_or(Self::with_table(lb_common::maglev::DEFAULT_TABLE_SIZE), |b| Self {
            table_size: b.table_size,
            flows: b.flow_table_size,
            nat: b.nat_table_size,
        })
    }

    /// (map, config key, entries) of every sized map.
    fn maps(&self) -> [(&'static str, &'static str, u32); 3] {
        [
            (MAP_MAGLEV, "table_size", maglev_map_len(self.table_size)),
            (MAP_FLOWS, "flow_table_size", self.flows),
            (MAP_NAT, "nat_table_size", self.nat),
        ]
    }

    /// What changed from `self` to `new`, as `key from A to B`, if anything.
    pub fn change(&self, new: &MapSizes) -> Option<String> {
        let changed: Vec<String> = [("table_size", self.table_size, new.table_size), ("flow_table_size", self.flows, new.flows), ("nat_table_size", self.nat, new.nat)]
            .iter()
            .filter(|(_, a, b)| a != b)
            .map(|(k, a, b)| format!("balancer.{k} from {a} to {b}"))
            .collect();
        (!changed.is_empty()).then(|| changed.join(", "))
    }
}

/// Refuses to reuse pinned maps of another size than `sizes` asks for: the
/// kernel would go on with the old size while the config says another.
/// Changing a size means new maps, which lose the flows and NAT state.
/// `swarmlb check` asks the same.
pub fn check_pinned_sizes(pin_dir: &Path, sizes: &MapSizes) -> Result<()> {
    // An older layout first: its size is beside the point.
    check_pinned_layouts(pin_dir)?;
    for (map, key, want) in sizes.maps() {
        let path = pin_dir.join(map);
        if !path.exists() {
            continue;
        }
        let have = aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?.max_entries();
        if have != want {
            bail!(
                "the pinned {map} holds {have} entries, but balancer.{key} asks for {want}: a new size needs new maps, \
                 which forgets every flow (stop swarmlb, `swarmlb down`, start it again); the running data path is left as it is"
            );
        }
    }
    let counters = pin_dir.join(MAP_LB_COUNTERS);
    if counters.exists() {
        let have = aya::maps::MapInfo::from_pin(&counters).with_context(|| format!("reading {}", counters.display()))?.max_entries();
        if have < LB_COUNTERS_LEN {
            warn!(
                pinned = have,
                known = LB_COUNTERS_LEN,
                "the pinned balancer counters are an older version's: the newer drop reasons read 0 until the maps are recreated (`swarmlb down`)"
            );
        }
    }
    Ok(())
}

/// Refuses pinned maps whose values have another layout than this
/// version's (an older swarmlb's NAT entries lack the window and proof
/// state): the new programs cannot read them, and replacing them would
/// forget every `nat` flow. Nothing is touched, so the running data path
/// (the older version's programs on their pinned links) keeps forwarding.
fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    let layouts = [(MAP_NAT, core::mem::size_of::<NatEntry>()), (MAP_FLOWS, core::mem::size_of::<FlowEntry>())];
    for (map, want) in layouts {
        let path = pin_dir.join(map);
        if !path.exists() {
            continue;
        }
        let have = aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?.value_size() as usize;
        if have != want {
            bail!(
                "the pinned {map} holds {have}-byte entries of an older swarmlb; this version's are {want} bytes and it cannot \
                 adopt them without losing every nat flow. The running data path is left as it is. To upgrade, drain the edge \
                 (or accept that open nat connections reset), then `swarmlb down` and start this version"
            );
        }
    }
    Ok(())
}

impl Datapath {
    /// Loads the programs and creates (or reuses) their maps pinned in
    /// `pin_dir`, sized as `sizes` says; pinned maps of another size are
    /// an error.
    pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Self> {
        ensure_bpffs(pin_dir)?;
        check_pinned_sizes(pin_dir, &sizes)?;
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(MAP_MAGLEV, maglev_map_len(sizes.table_size))
            .map_max_entries(MAP_FLOWS, sizes.flows)
            .map_max_entries(MAP_NAT, sizes.nat)
            .load(crate::ebpf_object()?)
            .context("loading the eBPF object")?;
        for p in [Program::Isolator, Program::Balancer] {
            program(&mut ebpf, p)?
                .load()
                .with_context(|| format!("loading the {} program (verifier)", p.name()))?;
        }
        let stage: &mut Xdp = ebpf
            .program_mut(PROGRAM_ISOLATOR_REVERSE_PATH)
            .context("the eBPF object has no reverse-path stage")?
            .try_into()?;
        stage.load().context("loading the isolator's reverse-path stage (verifier)")?;
        let stage_fd = stage.fd()?.try_clone()?;
        let mut stages: aya::maps::ProgramArray<_> = ebpf
            .map_mut(MAP_ISOLATOR_STAGES)
            .context("the eBPF object has no isolator stage map")?
            .try_into()?;
        stages.set(STAGE_REVERSE_PATH, &stage_fd, 0).context("installing the isolator's reverse-path stage")?;
        let isolator_fd = program(&mut ebpf, Program::Isolator)?.fd()?.try_clone()?;
        let mut next: aya::maps::ProgramArray<_> = ebpf
            .map_mut(MAP_NEXT_STAGE)
            .context("the eBPF object has no next-stage map")?
            .try_into()?;
        next.set(NEXT_STAGE_ISOLATOR, &isolator_fd, 0).context("making the isolator the balancer's next stage")?;
        let found = pinned_links(pin_dir);
        let pinned_maps = ebpf.maps().map(|(name, _)| name.to_owned()).filter(|name| pin_dir.join(name).exists()).collect();
        Ok(Self { ebpf, pin_dir: pin_dir.to_owned(), links: Vec::new(), found, pinned_maps })
    }

    /// The pins that should be in the pin directory and are not (a bpffs
    /// unmounted, or pins removed by hand), by file name. The data path
    /// runs on regardless (this process holds every map and link), but
    /// without them a restart would not find it: with this process gone,
    /// its links would be released and the programs would come off.
    pub fn missing_pins(&self) -> Vec<String> {
        let maps = self.pinned_maps.iter().cloned();
        let links = self.links.iter().filter_map(|a| link_pin(&self.pin_dir, a.mode, &a.ifname).file_name()?.to_str().map(str::to_owned));
        maps.chain(links).filter(|name| !self.pin_dir.join(name).exists()).collect()
    }

    /// Pins again, from this process's own handles, every map and link
    /// whose pin is missing; returns how many. Fails (pinning nothing more)
    /// while the pin directory is not on a bpffs — unless it is below
    /// `/sys/fs/bpf`, where one is mounted ([`ensure_bpffs`]).
    pub fn repin(&mut self) -> Result<usize> {
        ensure_bpffs(&self.pin_dir)?;
        fs::create_dir_all(&self.pin_dir).with_context(|| format!("creating the pin directory {}", self.pin_dir.display()))?;
        let mut n = 0;
        for name in &self.pinned_maps {
            let path = self.pin_dir.join(name);
            if !path.exists() {
                let map = self.ebpf.map(name).with_context(|| format!("the eBPF object has no map {name}"))?;
                map.pin(&path).with_context(|| format!("pinning map {name} at {}", path.display()))?;
                n += 1;
            }
        }
        for a in &self.links {
            let path = link_pin(&self.pin_dir, a.mode, &a.ifname);
            if !path.exists() {
                pin_link(&a.link, &path).with_context(|| format!("pinning the XDP link of {} at {}", a.ifname, path.display()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether an earlier process left programs attached (pinned links).
    pub fn found_running(&self) -> bool {
        !self.found.is_empty()
    }

    /// Detaches what an earlier process attached and this one did not
    /// claim (interfaces no longer configured).
    pub fn release_unclaimed(&mut self) {
        for (ifname, _, path) in self.found.drain(..) {
            match fs::remove_file(&path) {
                Ok(()) => info!(interface = %ifname, "detached (no longer configured)"),
                Err(e) => warn!(interface = %ifname, error = %e, "removing a stale link pin failed"),
            }
        }
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Puts `which` on `ifname`. A link pinned by an earlier process (or
    /// this one, with another program) is adopted and its program replaced
    /// atomically; otherwise a new link is attached and pinned. Returns the
    /// mode and whether the interface already carried a program.
    pub fn attach(&mut self, ifname: &str, which: Program) -> Result<(AttachMode, bool)> {
        let existing = match self.links.iter().position(|a| a.ifname == ifname) {
            Some(i) => {
                let a = self.links.remove(i);
                Some((a.mode, a.link, link_pin(&self.pin_dir, a.mode, ifname)))
            }
            None => match self.found.iter().position(|(n, _, _)| n == ifname) {
                Some(i) => {
                    let (_, mode, path) = self.found.remove(i);
                    match PinnedLink::from_pin(&path) {
                        Ok(p) => Some((mode, p.into(), path)),
                        Err(e) => {
                            warn!(interface = ifname, error = %e, "a pinned link cannot be opened; attaching anew");
                            let _ = fs::remove_file(&path);
                            None
                        }
                    }
                }
                None => None,
            },
        };
        let prog = program(&mut self.ebpf, which)?;
        if let Some((mode, link, path)) = existing {
            match Self::replace(prog, link) {
                Ok(link) => {
                    info!(interface = ifname, mode = ?mode, program = which.name(), "program replaced on the running link");
                    self.links.push(Attachment { ifname: ifname.to_owned(), program: which, mode, link });
                    return Ok((mode, true));
                }
                Err(e) => {
                    // A link whose interface is gone (or was re-created) is
                    // defunct: attach a fresh one.
                    warn!(interface = ifname, error = format!("{e:#}"), "the pinned link is defunct; attaching anew");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let (link, mode) = attach_pinned(prog, ifname, &self.pin_dir)?;
        info!(interface = ifname, mode = ?mode, program = which.name(), "attached");
        self.links.push(Attachment { ifname: ifname.to_owned(), program: which, mode, link });
        Ok((mode, false))
    }

    /// Swaps `prog` into `link` with `bpf_link_update`.
    fn replace(prog: &mut Xdp, link: FdLink) -> Result<FdLink> {
        let link = XdpLink::try_from(link).context("the pinned link is not an XDP link")?;
        let id = prog.attach_to_link(link).context("bpf_link_update")?;
        prog.take_link(id)?.try_into().context("the link stopped being a bpf_link")
    }

    /// The program attached to `ifname`, if any.
    pub fn attached(&self, ifname: &str) -> Option<Program> {
        self.links.iter().find(|a| a.ifname == ifname).map(|a| a.program)
    }

    /// The loaded program `which` (the harness runs it with
    /// `BPF_PROG_TEST_RUN`).
    pub fn program_mut(&mut self, which: Program) -> Result<&mut Xdp> {
        program(&mut self.ebpf, which)
    }

    /// Detaches from one interface (no-op when not attached there).
    pub fn detach(&mut self, ifname: &str) {
        let Some(pos) = self.links.iter().position(|a| a.ifname == ifname) else { return };
        let a = self.links.remove(pos);
        // The pin holds the link's other reference: with both gone the
        // program comes off.
        match fs::remove_file(link_pin(&self.pin_dir, a.mode, ifname)) {
            Ok(()) => info!(interface = %ifname, program = a.program.name(), "detached"),
            Err(e) => warn!(interface = %ifname, program = a.program.name(), error = %e, "unpinning the link failed"),
        }
    }

    /// Detaches from every interface this process attached to.
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self.links.iter().map(|a| a.ifname.clone()).collect();
        for name in names {
            self.detach(&name);
        }
    }
}

/// `bpf(2)`; returns its result, or the error.
fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`,
    // and the size passed is its size (the kernel zero-extends the rest).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Pins `link` at `path` without giving it up ([`FdLink::pin`] consumes
/// the link, and a failed pin would drop it: the program would come off).
/// A second fd on the same link comes from its id.
fn pin_link(link: &FdLink, path: &Path) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let id = link.info().context("reading the link's id")?.id();
    let fd = sys_bpf(BPF_LINK_GET_FD_BY_ID, &GetFdById { id, next_id: 0, open_flags: 0 }).context("BPF_LINK_GET_FD_BY_ID")?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    sys_bpf(BPF_OBJ_PIN, &ObjPin { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 }).context("BPF_OBJ_PIN")?;
    Ok(())
}

fn program(ebpf: &mut Ebpf, which: Program) -> Result<&mut Xdp> {
    let name = which.name();
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no {name} program"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

fn statfs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid C string and `buf` a valid statfs buffer.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut buf) } == 0).then_some(buf.f_type as i64)
}

/// Whether `pin_dir` can hold pins: `Ok(false)` when it lies on a BPF
/// filesystem, `Ok(true)` when it is below `/sys/fs/bpf` with no bpffs
/// mounted there yet ([`ensure_bpffs`] mounts one), an error otherwise.
/// `swarmlb check` asks this, `run` acts on it.
pub fn bpffs_needs_mount(pin_dir: &Path) -> Result<bool> {
    let mut probe = pin_dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if statfs_magic(probe) == Some(BPF_FS_MAGIC) {
        return Ok(false);
    }
    if !pin_dir.starts_with("/sys/fs/bpf") {
        bail!("pin path {} is not on a BPF filesystem (mount -t bpf bpf DIR, or put settings.pin_path below /sys/fs/bpf)", pin_dir.display());
    }
    Ok(true)
}

/// Makes sure `pin_dir` lies on a BPF filesystem, mounting one at
/// `/sys/fs/bpf` when the directory is below it and nothing is mounted
/// there; returns whether it mounted one (see
/// [`super::pin_dir::private_bpffs`] for why that matters).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<bool> {
    if !bpffs_needs_mount(pin_dir)? {
        return Ok(false);
    }
    fs::create_dir_all("/sys/fs/bpf").ok();
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: constant, valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // A sandboxed service (deploy/swarmlb.service) may not mount, and
        // should not: its bpffs would be private to its mount namespace.
        bail!(
            "mounting bpffs at /sys/fs/bpf: {err} (mount it on the host first: `mount -t bpf bpf /sys/fs/bpf`; systemd does so at boot)"
        );
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(true)
}

/// The interfaces with a pinned link in `pin_dir`, sorted.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = pinned_links(pin_dir).into_iter().map(|(n, _, _)| n).collect();
    names.sort();
    names
}

/// Whether a link for `ifname` is pinned in `pin_dir`.
pub fn has_pinned_link(pin_dir: &Path, ifname: &str) -> bool {
    pinned_links(pin_dir).iter().any(|(n, _, _)| n == ifname)
}

/// Unpins every link in `pin_dir`: the programs come off their interfaces
/// (unless a live process still holds a link).
pub fn remove_link_pins(pin_dir: &Path) -> Result<()> {
    for (_, _, path) in pinned_links(pin_dir) {
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    Ok(())
}

/// Removes every pin in `pin_dir` — links first, so no program runs on
/// with half its maps unpinned — and the directory.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    remove_link_pins(pin_dir)?;
    if !pin_dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(pin_dir)? {
        let path = entry?.path();
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(())
}
