//! What the agent tells the outside, beside the data flow: its state
//! ([`state`]), written to a file for `swarmlb status` ([`status`]) and
//! handed in memory to the Prometheus endpoint ([`metrics`], with
//! [`healthz`]), the counter watch that logs what an operator must act on
//! ([`watch`]), what changed and why ([`changes`]), and the kernel's
//! sampled drop events ([`events`]). Observers read maps; they never write them.

pub mod changes;
pub mod events;
pub mod healthz;
pub mod metrics;
pub mod state;
pub mod status;
pub mod watch;
