//! What the agent tells the outside, beside the data flow: the state file
//! ([`state`]) that `swarmlb status` ([`status`]) and the Prometheus
//! endpoint ([`metrics`]) read, the counter watch that logs what an
//! operator must act on ([`watch`]), and the kernel's sampled drop events
//! ([`events`]). Observers read maps; they never write them.

pub mod events;
pub mod metrics;
pub mod state;
pub mod status;
pub mod watch;
