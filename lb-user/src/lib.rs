//! swarmlb's user space: configuration, loading the XDP programs, writing
//! their maps, and reading them back for `swarmlb status`.
//!
//! Data flows one way: [`config`] → [`policy`] (maps writer) → kernel.
//! [`maps`] is the only module that opens BPF maps.

pub mod backend_setup;
pub mod datapath;
pub mod observe;
pub mod source;

// The modules' old paths, for one commit: the files moved unchanged.
pub use backend_setup as backend;
pub use datapath::{balancer_writer as balancer, isolator_writer as policy, loader, maps, martian, sweep};
pub use observe::{events, metrics, state, status, watch};
pub use source::{config, health, netif as host, swarm};

/// The eBPF object (all of swarmlb's XDP programs), 8-byte aligned as the
/// ELF parser wants it.
pub fn ebpf_object() -> &'static [u8] {
    #[repr(C, align(8))]
    struct Aligned<T: ?Sized>(T);
    static OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("SWARMLB_EBPF_OBJ")));
    &OBJ.0
}
