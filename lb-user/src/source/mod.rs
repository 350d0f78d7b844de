//! The inputs of the agent, one module per source: the config file, the
//! Swarm (Docker Engine API), the health checks and the host's network
//! interfaces. Each says what it wants or sees; none writes a map.

pub mod config;
pub mod health;
pub mod links;
pub mod netif;
pub mod swarm;
