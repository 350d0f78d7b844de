//! Loads the isolator into the kernel, pins its maps, attaches it to
//! interfaces and takes it off again.

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
use lb_common::isolator::PROGRAM_ISOLATOR;
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

/// The loaded isolator and the interfaces it is attached to.
pub struct Isolator {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    links: Vec<(String, XdpLinkId)>,
}

impl Isolator {
    /// Loads the program and creates (or reuses) its maps pinned in `pin_dir`.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(crate::ebpf_object())
            .context("loading the eBPF object")?;
        let prog: &mut Xdp = program(&mut ebpf)?;
        prog.load().context("loading the isolator program (verifier)")?;
        Ok(Self { ebpf, pin_dir: pin_dir.to_owned(), links: Vec::new() })
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches to `ifname`, natively if the driver can, else generically
    /// (with a warning: generic XDP runs after the skb is built).
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode> {
        let prog = program(&mut self.ebpf)?;
        let (id, mode) = match prog.attach(ifname, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native) => {
                warn!(interface = ifname, error = %native, "native XDP attach failed; falling back to generic mode");
                let id = prog
                    .attach(ifname, XdpMode::Skb)
                    .with_context(|| format!("attaching the isolator to {ifname}"))?;
                (id, AttachMode::Generic)
            }
        };
        info!(interface = ifname, mode = ?mode, "isolator attached");
        self.links.push((ifname.to_owned(), id));
        Ok(mode)
    }

    /// Runs the program `repeat` times over `frame` with `BPF_PROG_TEST_RUN`
    /// (as if it arrived on the current namespace's loopback); returns the
    /// XDP action and the kernel's mean time per run.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, std::time::Duration)> {
        let prog = program(&mut self.ebpf)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration))
    }

    /// Detaches from one interface (no-op when not attached there).
    pub fn detach(&mut self, ifname: &str) {
        let Some(pos) = self.links.iter().position(|(n, _)| n == ifname) else { return };
        let (ifname, id) = self.links.remove(pos);
        if let Ok(prog) = program(&mut self.ebpf) {
            match prog.detach(id) {
                Ok(()) => info!(interface = %ifname, "isolator detached"),
                Err(e) => warn!(interface = %ifname, error = %e, "detaching the isolator failed"),
            }
        }
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self.links.iter().map(|(n, _)| n.clone()).collect();
        for name in names {
            self.detach(&name);
        }
    }
}

impl Drop for Isolator {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_ISOLATOR)
        .context("the eBPF object has no isolator program")?
        .try_into()
        .context("the isolator is not an XDP program")
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
