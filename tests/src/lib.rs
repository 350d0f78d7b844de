#![warn(missing_docs)]
//! swarmlb's network-namespace test harness.
//!
//! Tests build small networks out of namespaces and veth pairs
//! ([`Topology`], [`Netns`]), put real servers at one end
//! ([`servers::TcpListeners`], [`servers::UdpEcho`]), and probe from the
//! other with port scanners that tell open, closed and dropped ports apart
//! ([`scan`]), hand-made frames ([`rawframe`]) and kernel counters
//! ([`counters::nstat`]). For the load balancer there are real TLS
//! backends: Debian's nginx per worker namespace ([`nginx`]) with
//! certificates from a per-test CA and rustls clients ([`tls`]);
//! [`kernel`] loads the XDP program for BPF_PROG_TEST_RUN, and [`corpus`]
//! enumerates the header combinations the differential tests feed it. Everything is
//! removed on drop, also when a test
//! panics; names are unique per process and call, so tests run in parallel.
//! Traffic never leaves the test's own namespaces.
//!
//! All of it needs root (namespaces, veths, AF_PACKET): see [`require_root`].

pub mod bird;
pub mod config;
pub mod corpus;
pub mod counters;
pub mod daemon;
pub mod ecmp_lab;
pub mod edge_lab;
pub mod evasion;
pub mod flood;
pub mod forge;
pub mod image;
pub mod fuzz;
pub mod ha_lab;
pub mod isolator_lab;
pub mod keepalived;
pub mod kernel;
pub mod lb_kernel;
pub mod netns;
pub mod nginx;
pub mod pins;
pub mod rawframe;
pub mod reference_policy;
pub mod rtnl;
pub mod scan;
pub mod servers;
pub mod soak;
pub mod stream;
pub mod swarm;
pub mod test_run;
mod sys;
pub mod tls;
pub mod topology;

pub use counters::nstat;

/// XDP actions as BPF_PROG_TEST_RUN reports them (`enum xdp_action`).
pub mod xdp_action {
    /// An error in the program (swarmlb's never return it).
    pub const XDP_ABORTED: u32 = 0;
    /// Dropped.
    pub const XDP_DROP: u32 = 1;
    /// On to the kernel's stack.
    pub const XDP_PASS: u32 = 2;
    /// Back out of the ingress interface.
    pub const XDP_TX: u32 = 3;
    /// Out of another interface (or CPU, or socket).
    pub const XDP_REDIRECT: u32 = 4;
}
pub use netns::{ChildGuard, Netns};
pub use topology::{Topology, TwoHosts};

/// `Ok` when running as root; otherwise an error that says why the
/// namespace tests cannot run (creating namespaces and veths needs
/// CAP_SYS_ADMIN and CAP_NET_ADMIN in the initial namespaces).
pub fn require_root() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("this test needs root (network namespaces, veth pairs, AF_PACKET); run it with sudo");
    }
    Ok(())
}

/// For `#[test]`s that should be skipped, not failed, without root: prints
/// why and returns `false`.
pub fn root_or_skip() -> bool {
    match require_root() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
