//! `swarmlb backend-setup`: what a backend node needs for the DSR modes,
//! and `--undo` to take it all away again.
//!
//! In `dsr` mode the edge wraps each client packet in an outer IPv4 (IPIP)
//! or IPv6 (IPv6-in-IPv6) header addressed to the backend. Many kernels —
//! this project's CI kernel included — have no `ipip`/`ip6tnl` devices, so
//! the backend opens the tunnel with swarmlb's own XDP program `decap`,
//! attached here and kept attached after this command exits (its bpf_link
//! is pinned). It opens only packets from the configured edge addresses to
//! the configured VIPs; anything else passes untouched.
//!
//! In both DSR modes the backend must accept packets for the VIP and answer
//! from it: the VIP goes on `lo` (as /32 or /128), and the ARP sysctls keep
//! the backend from answering ARP for it on its real interfaces
//! (`arp_ignore=1`, `arp_announce=2`) — only the edge may own the VIP on the
//! network. Decapsulated packets carry the client's source address, which
//! the route back may not expect on this interface: reverse-path filtering
//! is turned off for it (`rp_filter=0`).
//!
//! Everything changed is recorded in `<state dir>/setup.json` (bpffs holds
//! no regular files); `--undo`
//! restores the sysctls, removes the VIPs from `lo`, detaches the program
//! and removes the pins.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::HashMap as BpfHashMap,
    programs::Xdp,
    EbpfLoader,
};
use lb_common::balancer::{DecapKey, MAP_DECAP, MAP_FLOWS, MAP_MAGLEV, PROGRAM_DECAP};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::maps::addr_key,
    datapath::loader::{ensure_bpffs, remove_pins, AttachMode},
};

/// Where a backend's pins go unless told otherwise.
pub const DEFAULT_BACKEND_PIN_PATH: &str = "/sys/fs/bpf/swarmlb-backend";
/// Where the record of what setup changed goes unless told otherwise.
pub const DEFAULT_BACKEND_STATE_DIR: &str = "/var/lib/swarmlb/backend";

/// Which DSR mode the backend serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendMode {
    /// Tunnelled from the edge: attach the decapsulation program.
    Dsr,
    /// Same L2 segment as the edge: VIP on lo and ARP sysctls only.
    DsrL2,
}

/// What setup changed, for `--undo`.
#[derive(Debug, Serialize, Deserialize)]
struct SetupRecord {
    interface: String,
    mode: BackendMode,
    vips: Vec<IpAddr>,
    edges: Vec<IpAddr>,
    /// VIPs this setup added to `lo` (not those that were there before).
    added_vips: Vec<IpAddr>,
    /// sysctl path → value before setup.
    sysctls: BTreeMap<String, String>,
    attach: Option<AttachMode>,
}

/// The sysctls setup sets, with their values.
fn sysctls(interface: &str) -> Vec<(String, &'static str)> {
    let mut v = Vec::new();
    for dev in ["all", interface] {
        v.push((format!("net/ipv4/conf/{dev}/arp_ignore"), "1"));
        v.push((format!("net/ipv4/conf/{dev}/arp_announce"), "2"));
        v.push((format!("net/ipv4/conf/{dev}/rp_filter"), "0"));
    }
    v
}

fn read_sysctl(path: &str) -> Result<String> {
    Ok(fs::read_to_string(Path::new("/proc/sys").join(path)).with_context(|| format!("reading sysctl {path}"))?.trim().to_string())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    fs::write(Path::new("/proc/sys").join(path), value).with_context(|| format!("setting sysctl {path} = {value}"))
}

fn ip(args: &[&str]) -> Result<std::process::Output> {
    Command::new("ip").args(args).output().with_context(|| format!("running ip {}", args.join(" ")))
}

fn host_prefix(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}/32"),
        IpAddr::V6(_) => format!("{a}/128"),
    }
}

fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("setup.json")
}


/// Sets a backend up (idempotent: a second run with the same arguments
/// changes nothing). Errors leave what was already done recorded, so
/// `--undo` can clean up.
pub fn setup(interface: &str, vips: &[IpAddr], edges: &[IpAddr], mode: BackendMode, pin_dir: &Path, state_dir: &Path) -> Result<()> {
    if vips.is_empty() {
        bail!("give at least one --vip");
    }
    if mode == BackendMode::Dsr {
        for v in vips {
            if !edges.iter().any(|e| e.is_ipv4() == v.is_ipv4()) {
                bail!("--vip {v}: no --edge address of the same family (the tunnel source the edge uses)");
            }
        }
    }
    let c = std::ffi::CString::new(interface)?;
    // SAFETY: valid C string.
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        bail!("interface {interface:?} does not exist");
    }
    ensure_bpffs(pin_dir)?;
    fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let path = record_path(state_dir);
    let mut record: SetupRecord = match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        Err(_) => SetupRecord {
            interface: interface.to_string(),
            mode,
            vips: Vec::new(),
            edges: Vec::new(),
            added_vips: Vec::new(),
            sysctls: BTreeMap::new(),
            attach: None,
        },
    };
    if record.interface != interface {
        bail!("{} records a setup for interface {}; run --undo first", state_dir.display(), record.interface);
    }
    record.mode = mode;
    record.vips = vips.to_vec();
    record.edges = edges.to_vec();
    let save = |r: &SetupRecord| -> Result<()> {
        fs::write(&path, serde_json::to_string_pretty(r)?).with_context(|| format!("writing {}", path.display()))
    };

    for (key, value) in sysctls(interface) {
        let before = read_sysctl(&key)?;
        record.sysctls.entry(key.clone()).or_insert(before);
        save(&record)?;
        write_sysctl(&key, value)?;
    }
    for v in vips {
        let out = ip(&["addr", "add", &host_prefix(*v), "dev", "lo"])?;
        if out.status.success() {
            if !record.added_vips.contains(v) {
                record.added_vips.push(*v);
            }
        } else if !String::from_utf8_lossy(&out.stderr).contains("File exists") {
            bail!("adding {v} to lo: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        save(&record)?;
    }
    if mode == BackendMode::Dsr {
        if !crate::datapath::loader::has_pinned_link(pin_dir, interface) {
            record.attach = Some(attach_decap(interface, pin_dir)?);
            save(&record)?;
        }
        fill_decap(pin_dir, vips, edges)?;
    }
    println!(
        "backend-setup: {interface}: {mode:?}; VIPs on lo: {}; ARP sysctls set{}",
        vips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        if mode == BackendMode::Dsr {
            format!("; decap attached ({:?}) for edges {}", record.attach, edges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Loads only the decapsulation program, attaches it to `interface` and
/// pins its link so it outlives this process.
fn attach_decap(interface: &str, pin_dir: &Path) -> Result<AttachMode> {
    // The object's balancer maps are created too; a backend needs none of
    // their room.
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(MAP_MAGLEV, 1)
        .map_max_entries(MAP_FLOWS, 1)
        .load(crate::ebpf_object()?)
        .context("loading the eBPF object")?;
    let prog: &mut Xdp = ebpf.program_mut(PROGRAM_DECAP).context("no decap program in the object")?.try_into()?;
    prog.load().context("loading the decap program (verifier)")?;
    let (_link, mode) = crate::datapath::loader::attach_pinned(prog, interface, pin_dir)?;
    Ok(mode)
}

/// Makes the decap map hold exactly the (edge, VIP) pairs of one family.
fn fill_decap(pin_dir: &Path, vips: &[IpAddr], edges: &[IpAddr]) -> Result<()> {
    let data = aya::maps::MapData::from_pin(pin_dir.join(MAP_DECAP)).context("opening the decap map")?;
    let mut map: BpfHashMap<_, DecapKey, u32> = aya::maps::Map::from_map_data(data)?.try_into()?;
    let old: Vec<DecapKey> = map.keys().filter_map(Result::ok).collect();
    let mut want = Vec::new();
    for v in vips {
        for e in edges.iter().filter(|e| e.is_ipv4() == v.is_ipv4()) {
            let (outer_src, family) = addr_key(*e);
            want.push(DecapKey { outer_src, inner_dst: addr_key(*v).0, family, _pad: [0; 3] });
        }
    }
    for k in &want {
        map.insert(k, 1, 0).context("writing the decap map")?;
    }
    for k in old.iter().filter(|k| !want.contains(k)) {
        let _ = map.remove(k);
    }
    Ok(())
}

/// Takes back everything [`setup`] recorded in `state_dir`, and the pins
/// in `pin_dir`.
pub fn undo(pin_dir: &Path, state_dir: &Path) -> Result<()> {
    let path = record_path(state_dir);
    let Ok(text) = fs::read_to_string(&path) else {
        println!("backend-setup --undo: nothing recorded in {}", state_dir.display());
        return Ok(());
    };
    let record: SetupRecord = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    // Detach first (the link's pin holds its last reference), so nothing
    // decapsulates for a VIP that is no longer on lo.
    crate::datapath::loader::remove_link_pins(pin_dir)?;
    for v in &record.added_vips {
        let _ = ip(&["addr", "del", &host_prefix(*v), "dev", "lo"]);
    }
    for (key, value) in &record.sysctls {
        // The interface may be gone; the "all" values matter most.
        if let Err(e) = write_sysctl(key, value) {
            tracing::warn!(error = %e, "restoring a sysctl failed");
        }
    }
    fs::remove_file(&path).ok();
    remove_pins(pin_dir)?;
    println!("backend-setup --undo: {} restored", record.interface);
    Ok(())
}
