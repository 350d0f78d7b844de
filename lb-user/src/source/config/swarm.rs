//! `[swarm]`: where the Docker Engine API is and which node labels mean
//! what; and how what the Swarm says is added to the config.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{BackendConfig, Cidr, Config, ConfigError, Locator, VipConfig};

/// `[swarm]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmConfig {
    /// `unix:///path`, `tcp://host:port` or `https://host:port`; `None`:
    /// `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// Directory with `ca.pem`, `cert.pem`, `key.pem` for TCP with TLS;
    /// `None`: `DOCKER_CERT_PATH` when `DOCKER_TLS_VERIFY` is set.
    pub tls_cert_dir: Option<PathBuf>,
    /// Full re-list even when no event came.
    pub resync_interval: Duration,
    /// Node label naming a node's zone (services pinned with
    /// `node.labels.<zone_label>==X`).
    pub zone_label: String,
    /// Node label overriding the address backends are reached at
    /// (comma-separated for both families).
    pub address_label: String,
    /// Node label with the backend weight.
    pub weight_label: String,
    /// How long a node that stops matching a VIP's selector stays as a
    /// draining backend (weight 0) so established flows finish.
    pub deregistration_delay: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwarm {
    docker_host: Option<Spanned<String>>,
    tls_cert_dir: Option<Spanned<String>>,
    resync_interval_s: Option<Spanned<i64>>,
    zone_label: Option<Spanned<String>>,
    address_label: Option<Spanned<String>>,
    weight_label: Option<Spanned<String>>,
    deregistration_delay_s: Option<Spanned<i64>>,
}

pub(super) fn parse(loc: &Locator, raw: Option<&RawSwarm>) -> Result<Option<SwarmConfig>, ConfigError> {
    let Some(r) = raw else { return Ok(None) };
    let docker_host = match &r.docker_host {
        Some(h) => {
            let v = h.get_ref();
            if !["unix://", "tcp://", "http://", "https://"].iter().any(|p| v.starts_with(p)) {
                return Err(loc.at(h.span(), format!("swarm.docker_host = {v:?}: expected unix:///PATH, tcp://HOST:PORT or https://HOST:PORT")));
            }
            Some(v.clone())
        }
        None => None,
    };
    let tls_cert_dir = match &r.tls_cert_dir {
        Some(d) if !d.get_ref().starts_with('/') => {
            return Err(loc.at(d.span(), format!("swarm.tls_cert_dir = {:?}: must be an absolute path", d.get_ref())))
        }
        Some(d) => Some(PathBuf::from(d.get_ref())),
        None => None,
    };
    let resync_interval = match &r.resync_interval_s {
        None => Duration::from_secs(30),
        Some(s) if (1..=3600).contains(s.get_ref()) => Duration::from_secs(*s.get_ref() as u64),
        Some(s) => return Err(loc.at(s.span(), format!("swarm.resync_interval_s = {}: out of range 1-3600", s.get_ref()))),
    };
    let deregistration_delay = match &r.deregistration_delay_s {
        None => Duration::from_secs(300),
        Some(s) if (0..=86_400).contains(s.get_ref()) => Duration::from_secs(*s.get_ref() as u64),
        Some(s) => return Err(loc.at(s.span(), format!("swarm.deregistration_delay_s = {}: out of range 0-86400", s.get_ref()))),
    };
    let label = |v: &Option<Spanned<String>>, key: &str, default: &str| -> Result<String, ConfigError> {
        match v {
            None => Ok(default.to_owned()),
            Some(s) if !s.get_ref().is_empty() && !s.get_ref().contains(['=', '!', ' ']) => Ok(s.get_ref().clone()),
            Some(s) => Err(loc.at(s.span(), format!("swarm.{key} = {:?}: not a label key", s.get_ref()))),
        }
    };
    Ok(Some(SwarmConfig {
        docker_host,
        tls_cert_dir,
        resync_interval,
        zone_label: label(&r.zone_label, "zone_label", "zone")?,
        address_label: label(&r.address_label, "address_label", "swarmlb.address")?,
        weight_label: label(&r.weight_label, "weight_label", "swarmlb.weight")?,
        deregistration_delay,
    }))
}

/// What the Swarm adds to the config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwarmAdditions {
    /// VIP name → backends from its `backends_from` selector.
    pub backends: BTreeMap<String, Vec<BackendConfig>>,
    /// Zone name → ports of services pinned to other zones.
    pub protected: BTreeMap<String, BTreeSet<(u8, u16)>>,
    /// Node addresses (may reach Swarm's ports).
    pub nodes: BTreeSet<IpAddr>,
    /// (VIP, backend) draining since (unix time) because its node stopped
    /// matching.
    pub leaving: BTreeMap<(String, IpAddr), f64>,
}

impl SwarmAdditions {
    /// `vip`'s backends: its static ones, then the Swarm's (a static
    /// backend wins over a Swarm one with the same address).
    pub fn backends_of(&self, vip: &VipConfig) -> Vec<BackendConfig> {
        let mut out = vip.backends.clone();
        for extra in self.backends.get(&vip.name).into_iter().flatten() {
            if !out.iter().any(|s| s.address == extra.address) {
                out.push(extra.clone());
            }
        }
        out
    }

    /// `nodes` (`[cluster].nodes`), then each Swarm node none of them holds.
    pub fn nodes_with(&self, nodes: &[Cidr]) -> Vec<Cidr> {
        let mut out = nodes.to_vec();
        for a in &self.nodes {
            let c = Cidr::host(*a);
            if !out.iter().any(|n| n.contains(&c)) {
                out.push(c);
            }
        }
        out
    }
}

impl Config {
    /// The config with the Swarm's additions (what the observers show and
    /// the health checks follow; the data path's desired state takes the
    /// additions as an input of its own, [`Config::compile_with`]).
    pub fn with_swarm(&self, add: &SwarmAdditions) -> Config {
        let mut out = self.clone();
        if let Some(b) = out.balancer.as_mut() {
            for vip in &mut b.vips {
                vip.backends = add.backends_of(vip);
            }
        }
        for (zone, ports) in &add.protected {
            if let Some(z) = out.zones.get_mut(zone) {
                z.protected.extend(ports.iter().copied());
            }
        }
        out.nodes = add.nodes_with(&out.nodes);
        out
    }
}
