//! swarmlb's user space: the agent that loads the XDP programs, keeps their
//! maps in line with what its sources say, and reports what they do.
//!
//! Data flows one way:
//!
//! ```text
//! source::{config, swarm, health, netif} → desired state → reconciler (diff) → datapath writers → kernel
//!                                                                             observe::{state, status, metrics, watch, events}
//! ```
//!
//! [`source`] holds the inputs, [`reconcile`] turns them into writes,
//! [`datapath`] is the only code that loads programs and writes maps,
//! [`observe`] reads them back for people, and [`agent`] is the daemon
//! (`swarmlb run`) that wires them together.
//! [`backend_setup`] is the separate `swarmlb backend-setup` command for
//! DSR backends.

pub mod agent;
pub mod announce;
pub mod backend_setup;
pub mod datapath;
pub mod notify;
pub mod observe;
pub mod privileges;
pub mod reconcile;
pub mod source;

/// `swarmlb --version`: the crate's version and the commit it was built
/// from (`build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SWARMLB_COMMIT"), ")");

/// Writes `text` to stdout. A reader that went away (`swarmlb status
/// --json | head -c1`) is not an error: what it wanted it has, so this
/// returns quietly instead of panicking as `print!` does on EPIPE.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r.map_err(|e| anyhow::anyhow!("writing to stdout: {e}"))?),
    }
}

/// Unix time in seconds (the state file's and the Swarm's timestamps).
pub fn unix_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The eBPF object (all of swarmlb's XDP programs), 8-byte aligned as the
/// ELF parser wants it; an error when this build was made without it
/// (see `build.rs`).
pub fn ebpf_object() -> anyhow::Result<&'static [u8]> {
    #[repr(C, align(8))]
    struct Aligned<T: ?Sized>(T);
    static OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("SWARMLB_EBPF_OBJ")));
    if OBJ.0.is_empty() {
        anyhow::bail!("this swarmlb was built without its eBPF object: build it with `cargo xtask build-ebpf`, then build swarmlb again (or use `cargo xtask build`, which does both)");
    }
    Ok(&OBJ.0)
}
