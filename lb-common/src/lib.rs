//! Types and pure logic shared by swarmlb's XDP programs (`lb-ebpf`) and its
//! user space (`lb-user`, `tests`).
//!
//! Everything here is `#![no_std]` so the kernel side can use it. Map keys and
//! values are `#[repr(C)]` with explicit padding: the kernel compares keys
//! byte by byte, so no byte may be left uninitialised.
//!
//! [`isolator`] holds the isolator's map layout; [`model`] is the pure-Rust
//! reference for the isolator's decision, which the kernel program must match
//! verdict for verdict (see the differential tests in `tests/`).
#![no_std]

pub mod balancer;
pub mod balancer_model;
pub mod csum;
pub mod firewall;
pub mod ip_header;
pub mod isolator;
pub mod maglev;
pub mod model;
pub mod nat_state;
pub mod proxy_protocol;
pub mod wire;
