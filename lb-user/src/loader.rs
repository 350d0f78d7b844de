//! Loads swarmlb's XDP programs into the kernel, pins their maps, attaches
//! them to interfaces and takes them off again.
//!
//! Each interface carries one program: the `balancer` on the edge's
//! outside and inside interfaces (it tail-calls the isolator with traffic
//! that is not its own, so an interface can balance and isolate), the
//! `isolator` alone on interfaces that only face a zone.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{xdp::XdpLinkId, TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    balancer::{MAP_MAGLEV, MAP_NEXT_STAGE, MAX_VIPS, NEXT_STAGE_ISOLATOR, PROGRAM_BALANCER},
    isolator::PROGRAM_ISOLATOR,
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
    links: Vec<(String, Program, XdpLinkId)>,
}

/// Slots of the Maglev map for tables of `table_size`.
pub fn maglev_map_len(table_size: u32) -> u32 {
    MAX_VIPS * 2 * table_size
}

impl Datapath {
    /// Loads the programs and creates (or reuses) their maps pinned in
    /// `pin_dir`; the Maglev map holds tables of `table_size` slots.
    pub fn load(pin_dir: &Path, table_size: u32) -> Result<Self> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(MAP_MAGLEV, maglev_map_len(table_size))
            .load(crate::ebpf_object())
            .context("loading the eBPF object")?;
        for p in [Program::Isolator, Program::Balancer] {
            program(&mut ebpf, p)?
                .load()
                .with_context(|| format!("loading the {} program (verifier)", p.name()))?;
        }
        let isolator_fd = program(&mut ebpf, Program::Isolator)?.fd()?.try_clone()?;
        let mut next: aya::maps::ProgramArray<_> = ebpf
            .map_mut(MAP_NEXT_STAGE)
            .context("the eBPF object has no next-stage map")?
            .try_into()?;
        next.set(NEXT_STAGE_ISOLATOR, &isolator_fd, 0).context("making the isolator the balancer's next stage")?;
        Ok(Self { ebpf, pin_dir: pin_dir.to_owned(), links: Vec::new() })
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches `which` to `ifname`, natively if the driver can, else
    /// generically (with a warning: generic XDP runs after the skb is built).
    pub fn attach(&mut self, ifname: &str, which: Program) -> Result<AttachMode> {
        let prog = program(&mut self.ebpf, which)?;
        let (id, mode) = match prog.attach(ifname, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native) => {
                warn!(interface = ifname, error = %native, "native XDP attach failed; falling back to generic mode");
                let id = prog
                    .attach(ifname, XdpMode::Skb)
                    .with_context(|| format!("attaching the {} to {ifname}", which.name()))?;
                (id, AttachMode::Generic)
            }
        };
        info!(interface = ifname, mode = ?mode, program = which.name(), "attached");
        self.links.push((ifname.to_owned(), which, id));
        Ok(mode)
    }

    /// The program attached to `ifname`, if any.
    pub fn attached(&self, ifname: &str) -> Option<Program> {
        self.links.iter().find(|(n, _, _)| n == ifname).map(|(_, p, _)| *p)
    }

    /// Runs `which` `repeat` times over `frame` with `BPF_PROG_TEST_RUN` (as
    /// if it arrived on the current namespace's loopback); returns the XDP
    /// action and the kernel's mean time per run.
    pub fn test_run(&mut self, which: Program, frame: &[u8], repeat: u32) -> Result<(u32, std::time::Duration)> {
        let prog = program(&mut self.ebpf, which)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration))
    }

    /// Runs `which` once over `frame` as if it arrived on `ifindex` (an
    /// interface of the current network namespace); returns the XDP action
    /// and the packet as the program left it.
    pub fn test_run_on(&mut self, which: Program, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let prog = program(&mut self.ebpf, which)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        // The kernel wants `data_end` = the frame's length and no metadata.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Detaches from one interface (no-op when not attached there).
    pub fn detach(&mut self, ifname: &str) {
        let Some(pos) = self.links.iter().position(|(n, _, _)| n == ifname) else { return };
        let (ifname, which, id) = self.links.remove(pos);
        if let Ok(prog) = program(&mut self.ebpf, which) {
            match prog.detach(id) {
                Ok(()) => info!(interface = %ifname, program = which.name(), "detached"),
                Err(e) => warn!(interface = %ifname, program = which.name(), error = %e, "detaching failed"),
            }
        }
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self.links.iter().map(|(n, _, _)| n.clone()).collect();
        for name in names {
            self.detach(&name);
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
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

/// Makes sure `pin_dir` lies on a BPF filesystem, mounting one at
/// `/sys/fs/bpf` when the directory is below it and nothing is mounted there.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let mut probe = pin_dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if statfs_magic(probe) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        bail!("pin path {} is not on a BPF filesystem (mount -t bpf bpf DIR)", pin_dir.display());
    }
    fs::create_dir_all(root).ok();
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: constant, valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        bail!("mounting bpffs at /sys/fs/bpf: {}", std::io::Error::last_os_error());
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Removes the pinned maps and the pin directory.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
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
