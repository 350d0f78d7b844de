//! Helpers shared by the kernel tests (each test binary uses a subset).
#![allow(dead_code)]

pub mod gen;
pub mod daemon;
pub mod http;
pub mod xdp;
