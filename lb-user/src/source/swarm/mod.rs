//! Docker Swarm as a source of backends and protected ports.
//!
//! - [`view`]: the little of the Engine API's nodes and services swarmlb
//!   uses, as plain data (so everything after it is testable without a
//!   Docker daemon).
//! - [`selector`]: Swarm placement-constraint expressions
//!   (`node.labels.lb==proxy`), for VIPs' `backends_from`.
//! - [`mapping`]: view + config → what the Swarm adds to the config:
//!   backends per VIP, protected ports per zone, node addresses. Odd data is
//!   logged and skipped, never allowed to empty a backend set.
//! - [`source`]: the connection (bollard): list, watch `/events`, resync,
//!   reconnect with backoff.
//! - [`follow`]: the daemon's side: last good view (saved across restarts),
//!   additions, sync state.

pub mod follow;
pub mod mapping;
pub mod selector;
pub mod source;
pub mod view;
