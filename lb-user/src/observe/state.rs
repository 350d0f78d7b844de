//! What a running daemon tells `swarmlb status`: which maps it uses and what
//! the numbers in them mean (interface and zone names). Written atomically
//! (temp file + rename) to `<runtime dir>/state.json`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{datapath::balancer_writer::AppliedVip, datapath::loader::{AttachMode, Program}};

/// Default directory for the state file.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/swarmlb";

/// A running daemon's description of itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DaemonState {
    pub pid: u32,
    pub config: PathBuf,
    pub pin_path: PathBuf,
    pub interfaces: Vec<InterfaceState>,
    pub zones: Vec<ZoneState>,
    /// The balancer's VIPs as applied (empty without `[[vip]]`).
    #[serde(default)]
    pub vips: Vec<AppliedVip>,
    /// How the sync with the Swarm is going (`None` without `[swarm]`).
    #[serde(default)]
    pub swarm: Option<crate::source::swarm::follow::SwarmSync>,
    /// Health-check transitions (in or out) per VIP and backend.
    #[serde(default)]
    pub health_transitions: Vec<HealthTransitions>,
    /// The agent itself: start, adoption, reloads, pins.
    #[serde(default)]
    pub agent: AgentStatus,
    /// Each backend's last transition: when, what and why.
    #[serde(default)]
    pub backend_transitions: Vec<crate::observe::changes::BackendTransition>,
    /// The VIPs announced to BIRD (`None` without `[bgp]`).
    #[serde(default)]
    pub bgp: Option<BgpState>,
}

/// `[bgp]` in force and what this edge announces.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BgpState {
    /// The routing table BIRD learns the VIP routes from.
    pub table: u32,
    pub birdc_socket: PathBuf,
    /// The VIPs routed in it now (each with a backend up, on an outside
    /// interface that is up).
    pub announced: Vec<std::net::IpAddr>,
}

/// How the agent itself is doing (status and metrics show it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    /// Unix time (seconds) this process started.
    pub started: f64,
    /// It found a running data path (pinned links) and took it over.
    pub adopted: bool,
    /// SIGHUP reloads applied and refused.
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// The last load of the config file (at start, or the last SIGHUP) applied.
    pub last_reload_ok: bool,
    /// Unix time of the last config load that applied.
    pub last_reload_success: f64,
    /// Why the last reload was refused (while `last_reload_ok` is false).
    pub last_reload_error: Option<String>,
    /// The last reload's config is in force although the reload failed
    /// (its Swarm source did not connect); false for a refused config.
    #[serde(default)]
    pub last_reload_applied: bool,
    /// Every map and link is pinned in the pin path (a restart would adopt).
    pub pins_ok: bool,
    /// Times the pins were found missing.
    pub pins_lost: u64,
    /// Which pins are missing and why they cannot be restored yet.
    pub pins_error: Option<String>,
    /// The pins are on a bpffs only the agent's own mount namespace sees
    /// (`ip netns exec`): the data path goes when the agent does.
    #[serde(default)]
    pub pins_private: bool,
}

/// How often one backend of one VIP went in or out by its health checks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthTransitions {
    pub vip: String,
    pub backend: std::net::IpAddr,
    pub transitions: u64,
}

/// One interface carrying one of swarmlb's programs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InterfaceState {
    pub name: String,
    pub ifindex: u32,
    /// The zone it faces; empty for a balancer-only interface.
    pub zone: String,
    pub mode: AttachMode,
    #[serde(default)]
    pub program: Program,
}

/// One zone's policy, as configured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ZoneState {
    pub name: String,
    pub zone_id: u32,
    pub slot: u32,
    /// Protected ports as ranges, e.g. `tcp/9000-9100`.
    pub protected: Vec<String>,
    /// Allow-list CIDRs.
    pub allow: Vec<String>,
    pub tunnels_allowed: bool,
    pub routing_header_allowed: bool,
}

/// Held for the daemon's lifetime: one `swarmlb run` per runtime dir.
pub struct InstanceLock {
    _file: fs::File,
}

impl InstanceLock {
    /// Takes the lock in `runtime_dir`, or says which daemon holds it.
    pub fn acquire(runtime_dir: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        fs::create_dir_all(runtime_dir)
            .with_context(|| format!("creating {}", runtime_dir.display()))?;
        let path = runtime_dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: a valid open fd; flock has no memory effects.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = DaemonState::read(runtime_dir).map(|s| format!(" (pid {})", s.pid)).unwrap_or_default();
            anyhow::bail!(
                "another swarmlb is running with runtime dir {}{holder}; stop it first",
                runtime_dir.display()
            );
        }
        Ok(Self { _file: file })
    }
}

/// Path of the state file in `runtime_dir`.
pub fn state_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("state.json")
}

impl DaemonState {
    /// Writes the state file (atomically).
    pub fn write(&self, runtime_dir: &Path) -> Result<()> {
        fs::create_dir_all(runtime_dir)
            .with_context(|| format!("creating {}", runtime_dir.display()))?;
        let path = state_path(runtime_dir);
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// Reads the state file of the daemon using `runtime_dir`.
    pub fn read(runtime_dir: &Path) -> Result<Self> {
        let path = state_path(runtime_dir);
        let text = fs::read(&path).with_context(|| {
            format!("reading {} (is `swarmlb run` running with this runtime dir?)", path.display())
        })?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Removes the state file.
    pub fn remove(runtime_dir: &Path) {
        let _ = fs::remove_file(state_path(runtime_dir));
    }
}

/// Formats sorted (proto, port) pairs as compact ranges: `tcp/80`, `udp/9000-9100`.
pub fn port_ranges(ports: impl IntoIterator<Item = (u8, u16)>) -> Vec<String> {
    let mut sorted: Vec<(u8, u16)> = ports.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let (proto, lo) = sorted[i];
        let mut hi = lo;
        while i + 1 < sorted.len() && sorted[i + 1].0 == proto && sorted[i + 1].1 == hi.wrapping_add(1) && hi != u16::MAX {
            hi += 1;
            i += 1;
        }
        let name = match proto {
            lb_common::wire::IPPROTO_TCP => "tcp",
            lb_common::wire::IPPROTO_UDP => "udp",
            _ => "?",
        };
        out.push(if lo == hi { format!("{name}/{lo}") } else { format!("{name}/{lo}-{hi}") });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress() {
        let ports = [(6, 80), (6, 81), (6, 82), (6, 443), (17, 53), (6, 65535)];
        assert_eq!(port_ranges(ports), ["tcp/80-82", "tcp/443", "tcp/65535", "udp/53"]);
    }
}
