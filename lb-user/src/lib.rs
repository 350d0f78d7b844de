//! swarmlb's user space: configuration, loading the XDP programs, writing
//! their maps, and reading them back for `swarmlb status`.

pub mod config;
