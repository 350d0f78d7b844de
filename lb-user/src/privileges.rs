//! What the privileged commands need, asked up front so that a non-root or
//! capability-less run names the capabilities instead of failing later
//! with a bare "Operation not permitted" from bpf(2), mount(2) or netlink.

use anyhow::{bail, Result};

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why each capability is needed, for the message.
const NEEDS: &str =
    "CAP_BPF and CAP_PERFMON (load the programs, create the maps), CAP_NET_ADMIN (attach XDP, \
                     netlink, sysctls) and CAP_SYS_ADMIN (mount the bpffs, re-pin links by id)";

/// The effective capability set of this process, from /proc/self/status
/// (`None` when it cannot be read: then nothing is asked in advance).
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The names of the capabilities `command` needs that the effective set
/// `eff` lacks. CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as
/// the kernel's `bpf_capable()` and `perfmon_capable()` let it.
fn missing(eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| eff & (1 << cap) != 0;
    let mut out = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    if !has(CAP_SYS_ADMIN) {
        out.push("CAP_SYS_ADMIN");
    }
    out
}

/// Refuses to go on without what `command` needs, naming it.
pub fn require(command: &str) -> Result<()> {
    let Some(eff) = effective() else {
        return Ok(());
    };
    let missing = missing(eff);
    if !missing.is_empty() {
        bail!(
            "`swarmlb {command}` needs root, or {NEEDS}; this process lacks {} (run it as root, or grant them: \
             the systemd unit's CapabilityBoundingSet/AmbientCapabilities, `setpriv`, or `capsh`)",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert_eq!(
            missing(0),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
        assert_eq!(missing(1 << CAP_SYS_ADMIN), ["CAP_NET_ADMIN"]);
        assert!(missing((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_empty());
        assert_eq!(
            missing((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)),
            ["CAP_SYS_ADMIN"]
        );
    }
}
