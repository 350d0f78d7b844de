//! Helpers shared by the kernel tests (each test binary uses a subset).
#![allow(dead_code)]

pub mod dashboard;
pub mod dmz;
pub mod edge;
pub mod gen;
#[allow(unused_imports)]
pub use harness::daemon;
pub mod http;
pub mod site;
pub mod xdp;
