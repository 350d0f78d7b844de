//! swarmlb's user space: configuration, loading the XDP programs, writing
//! their maps, and reading them back for `swarmlb status`.
//!
//! Data flows one way: [`config`] → [`policy`] (maps writer) → kernel.
//! [`maps`] is the only module that opens BPF maps.

pub mod backend;
pub mod balancer;
pub mod config;
pub mod events;
pub mod loader;
pub mod health;
pub mod host;
pub mod maps;
pub mod martian;
pub mod metrics;
pub mod policy;
pub mod state;
pub mod status;
pub mod swarm;
pub mod sweep;
pub mod watch;

/// The eBPF object (all of swarmlb's XDP programs), 8-byte aligned as the
/// ELF parser wants it.
pub fn ebpf_object() -> &'static [u8] {
    #[repr(C, align(8))]
    struct Aligned<T: ?Sized>(T);
    static OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("SWARMLB_EBPF_OBJ")));
    &OBJ.0
}
