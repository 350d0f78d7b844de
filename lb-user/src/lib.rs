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
//! [`source`] holds the inputs, [`datapath`] the only code that loads
//! programs and writes maps, [`observe`] what reads them back for people.
//! [`backend_setup`] is the separate `swarmlb backend-setup` command for
//! DSR backends.

pub mod backend_setup;
pub mod datapath;
pub mod observe;
pub mod source;

/// The eBPF object (all of swarmlb's XDP programs), 8-byte aligned as the
/// ELF parser wants it.
pub fn ebpf_object() -> &'static [u8] {
    #[repr(C, align(8))]
    struct Aligned<T: ?Sized>(T);
    static OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("SWARMLB_EBPF_OBJ")));
    &OBJ.0
}
