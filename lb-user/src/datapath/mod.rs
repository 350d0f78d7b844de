//! The kernel side as user space sees it: loading and attaching the XDP
//! programs ([`loader`]), the typed handles on their pinned maps
//! ([`maps`]), and the writers that make the maps say a desired state
//! ([`isolator_writer`], [`balancer_writer`], [`martian`]) or keep them
//! tidy ([`sweep`]). Nothing outside this module writes a map.

pub mod balancer_writer;
pub mod isolator_writer;
pub mod loader;
pub mod maps;
pub mod pin_dir;
pub mod martian;
pub mod sweep;
