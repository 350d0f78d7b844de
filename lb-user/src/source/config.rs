//! The TOML configuration: parsing, validation (errors name the key and the
//! line), and compiling it into what the maps hold.
//!
//! Reference of every key: `docs/config.md`; example: `examples/swarmlb.toml`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::{
    isolator::{
        ReversePath, ZoneBinding, MAX_INTERFACES, MAX_PORT_ENTRIES, MAX_SLOTS, MAX_SOURCE_PREFIXES, PROTECTED,
        SET_NODES, SET_TRUSTED,
    },
    wire::{IPPROTO_TCP, IPPROTO_UDP, SWARM_PORTS},
};
use serde::Deserialize;
use toml::Spanned;

mod balancer;
mod bgp;
mod swarm;
pub use bgp::{BgpConfig, DEFAULT_BIRDC_SOCKET};
pub use balancer::{BackendConfig, BalancerConfig, HealthCheck, HealthProtocol, Rule, VipConfig, DEFAULT_SNAT_PORTS};
pub use swarm::{SwarmAdditions, SwarmConfig};

/// Where the maps are pinned unless `[settings].pin_path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/swarmlb";
/// Where the Prometheus endpoint listens unless `[settings].metrics_listen`
/// says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9469";
/// Default minimum time between two sampled drop events per CPU.
pub const DEFAULT_DROP_EVENT_INTERVAL_MS: u64 = 100;

/// A config that could not be used: where, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read. The I/O error is part of the message and
    /// deliberately not a `source()`: `{:#}` would print it twice.
    #[error("config error: {origin}: {error}")]
    Io { origin: String, error: std::io::Error },
    /// `origin:line:col: key: message`.
    #[error("config error: {origin}:{line}:{col}: {message}")]
    Invalid { origin: String, line: usize, col: usize, message: String },
}

/// Builds positioned errors from byte spans of one config text.
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    fn at(&self, span: std::ops::Range<usize>, message: impl fmt::Display) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Invalid { origin: self.origin.to_owned(), line, col, message: message.to_string() }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    interface: Vec<RawInterface>,
    #[serde(default)]
    zone: BTreeMap<Spanned<String>, RawZone>,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    settings: RawSettings,
    balancer: Option<balancer::RawBalancer>,
    #[serde(default)]
    vip: Vec<balancer::RawVip>,
    swarm: Option<swarm::RawSwarm>,
    bgp: Option<Spanned<bgp::RawBgp>>,
}

/// `None` when `name` can be an interface name, else why not.
fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.chars().any(char::is_whitespace) {
        return Err("not a valid interface name (1-15 characters, no '/' or spaces)".into());
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    zone: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawZone {
    #[serde(default)]
    protected: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    swarm_ports: Option<bool>,
    allow_tunnels: Option<bool>,
    allow_routing_header: Option<bool>,
    reverse_path: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default)]
    nodes: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    pin_path: Option<Spanned<String>>,
    drop_event_interval_ms: Option<Spanned<u64>>,
    metrics_listen: Option<Spanned<String>>,
}

/// An IPv4 or IPv6 prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cidr {
    V4([u8; 4], u8),
    V6([u8; 16], u8),
}

impl Cidr {
    /// The host prefix of `a` (/32 or /128).
    pub fn host(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => Cidr::V4(a.octets(), 32),
            IpAddr::V6(a) => Cidr::V6(a.octets(), 128),
        }
    }

    /// Parses `ADDR/LEN` or a bare address (a host prefix).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix length {l:?} is not in 0-{max}")),
            },
        };
        let cidr = match addr {
            IpAddr::V4(a) => Cidr::V4(a.octets(), len),
            IpAddr::V6(a) => Cidr::V6(a.octets(), len),
        };
        if cidr.masked() != cidr {
            return Err(format!("host bits set; did you mean {}?", cidr.masked()));
        }
        Ok(cidr)
    }

    /// The prefix with its host bits cleared.
    pub fn masked(self) -> Self {
        fn mask<const N: usize>(mut a: [u8; N], len: u8) -> [u8; N] {
            for (i, b) in a.iter_mut().enumerate() {
                let keep = (usize::from(len)).saturating_sub(i * 8).min(8);
                *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            }
            a
        }
        match self {
            Cidr::V4(a, l) => Cidr::V4(mask(a, l), l),
            Cidr::V6(a, l) => Cidr::V6(mask(a, l), l),
        }
    }

    /// The prefix as (address, length).
    pub fn prefix(self) -> (IpAddr, u8) {
        match self {
            Cidr::V4(a, l) => (IpAddr::from(a), l),
            Cidr::V6(a, l) => (IpAddr::from(a), l),
        }
    }

    /// Does this prefix contain `other` (same family, at least as long)?
    pub fn contains(&self, other: &Cidr) -> bool {
        match (*self, *other) {
            (Cidr::V4(_, l), Cidr::V4(a, ol)) if l <= ol => Cidr::V4(a, l).masked() == *self,
            (Cidr::V6(_, l), Cidr::V6(a, ol)) if l <= ol => Cidr::V6(a, l).masked() == *self,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4(a, l) => write!(f, "{}/{l}", IpAddr::from(a)),
            Cidr::V6(a, l) => write!(f, "{}/{l}", IpAddr::from(a)),
        }
    }
}

/// Parses `tcp/N`, `udp/N`, `N` (tcp and udp), with `N` a port or `LO-HI`.
fn parse_ports(s: &str) -> Result<Vec<(u8, u16)>, String> {
    let (protos, range): (&[u8], &str) = match s.split_once('/') {
        Some(("tcp", r)) => (&[IPPROTO_TCP], r),
        Some(("udp", r)) => (&[IPPROTO_UDP], r),
        Some((p, _)) => return Err(format!("protocol {p:?} is not tcp or udp")),
        None => (&[IPPROTO_TCP, IPPROTO_UDP], s),
    };
    let port = |p: &str| match p.trim().parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        Ok(n) => Err(format!("port {n} out of range 1-65535")),
        Err(_) => Err(format!("{p:?} is not a port (expected tcp/PORT, udp/PORT, PORT or LO-HI)")),
    };
    let (lo, hi) = match range.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(range)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} is empty (low end above high end)"));
    }
    Ok(protos.iter().flat_map(|&proto| (lo..=hi).map(move |p| (proto, p))).collect())
}

/// One interface and the zone it faces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub zone: String,
}

/// One zone's policy as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneConfig {
    /// (IP protocol, port) pairs from `protected`, ranges expanded.
    pub protected: BTreeSet<(u8, u16)>,
    pub allow: Vec<Cidr>,
    pub swarm_ports: bool,
    pub allow_tunnels: bool,
    pub allow_routing_header: bool,
    /// How the route back to a trusted source is checked (`strict` unless
    /// the zone says otherwise).
    pub reverse_path: ReversePath,
}

impl ZoneConfig {
    /// The binding an interface of this zone gets.
    pub fn binding(&self, slot: u32, zone_id: u32) -> ZoneBinding {
        ZoneBinding {
            slot,
            tunnel_access: self.tunnel_access(),
            routing_header_access: self.routing_header_access(),
            zone_id: zone_id as u16,
            reverse_path: self.reverse_path as u8,
            _pad: 0,
        }
    }

    /// The access mask of (proto, port) in this zone (0 = unprotected).
    pub fn port_access(&self, proto: u8, port: u16) -> u32 {
        let mut access = 0;
        if self.protected.contains(&(proto, port)) {
            access |= PROTECTED | SET_TRUSTED;
        }
        if self.swarm_ports && SWARM_PORTS.contains(&(proto, port)) {
            access |= PROTECTED | SET_NODES;
        }
        access
    }

    fn tunnel_access(&self) -> u32 {
        if self.allow_tunnels { 0 } else { PROTECTED | SET_NODES }
    }

    fn routing_header_access(&self) -> u32 {
        if self.allow_routing_header { 0 } else { PROTECTED | SET_NODES }
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    interfaces: Vec<InterfaceConfig>,
    zones: BTreeMap<String, ZoneConfig>,
    nodes: Vec<Cidr>,
    pin_path: PathBuf,
    drop_event_interval_ns: u64,
    metrics_listen: Option<std::net::SocketAddr>,
    balancer: Option<BalancerConfig>,
    swarm: Option<SwarmConfig>,
    bgp: Option<BgpConfig>,
    warnings: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io { origin: origin.clone(), error })?;
        Self::parse(&text, &origin)
    }

    /// Validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let loc = Locator { text, origin };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // Some syntax errors (a control character in a comment) come
            // without a message: name what is there.
            let message = match e.message().trim_end() {
                "" => match text.get(span.clone()).and_then(|s| s.chars().next()) {
                    Some(c) => format!("unexpected character {c:?}"),
                    None => "not valid TOML".to_owned(),
                },
                m => m.to_owned(),
            };
            loc.at(span, message)
        })?;

        let mut zones = BTreeMap::new();
        for (name, z) in &raw.zone {
            if name.get_ref().is_empty() {
                return Err(loc.at(name.span(), "zone names must not be empty"));
            }
            let key = |k: &str, i: usize| format!("zone.{}.{k}[{i}]", name.get_ref());
            let mut protected = BTreeSet::new();
            for (i, p) in z.protected.iter().enumerate() {
                let ports = parse_ports(p.get_ref())
                    .map_err(|m| loc.at(p.span(), format!("{} = {:?}: {m}", key("protected", i), p.get_ref())))?;
                protected.extend(ports);
            }
            let mut allow = Vec::new();
            for (i, a) in z.allow.iter().enumerate() {
                let c = Cidr::parse(a.get_ref())
                    .map_err(|m| loc.at(a.span(), format!("{} = {:?}: {m}", key("allow", i), a.get_ref())))?;
                allow.push(c);
            }
            let reverse_path = match z.reverse_path.as_ref().map(|v| (v, v.get_ref().as_str())) {
                None => ReversePath::Strict,
                Some((_, "strict")) => ReversePath::Strict,
                Some((_, "loose")) => ReversePath::Loose,
                Some((_, "off")) => ReversePath::Off,
                Some((v, other)) => {
                    return Err(loc.at(
                        v.span(),
                        format!("zone.{}.reverse_path = {other:?}: expected \"strict\", \"loose\" or \"off\"", name.get_ref()),
                    ))
                }
            };
            zones.insert(
                name.get_ref().clone(),
                ZoneConfig {
                    reverse_path,
                    protected,
                    allow,
                    swarm_ports: z.swarm_ports.unwrap_or(true),
                    allow_tunnels: z.allow_tunnels.unwrap_or(false),
                    allow_routing_header: z.allow_routing_header.unwrap_or(false),
                },
            );
        }

        let mut nodes = Vec::new();
        for (i, n) in raw.cluster.nodes.iter().enumerate() {
            nodes.push(
                Cidr::parse(n.get_ref())
                    .map_err(|m| loc.at(n.span(), format!("cluster.nodes[{i}] = {:?}: {m}", n.get_ref())))?,
            );
        }

        let mut interfaces = Vec::new();
        let mut seen = HashMap::new();
        for (i, iface) in raw.interface.iter().enumerate() {
            let name = iface.name.get_ref();
            if let Err(m) = check_interface_name(name) {
                return Err(loc.at(iface.name.span(), format!("interface[{i}].name = {name:?}: {m}")));
            }
            if let Some(first) = seen.insert(name.clone(), i) {
                return Err(loc.at(iface.name.span(), format!("interface[{i}].name = {name:?}: already listed as interface[{first}]")));
            }
            let zone = iface.zone.get_ref();
            if !zones.contains_key(zone) {
                let known: Vec<&String> = zones.keys().collect();
                return Err(loc.at(
                    iface.zone.span(),
                    format!("interface[{i}].zone = {zone:?}: no [zone.{zone}] section (zones: {known:?})"),
                ));
            }
            interfaces.push(InterfaceConfig { name: name.clone(), zone: zone.clone() });
        }
        let whole = 0..0;
        if interfaces.len() > MAX_INTERFACES as usize {
            return Err(loc.at(whole, format!("interface: {} interfaces, at most {MAX_INTERFACES}", interfaces.len())));
        }

        let mut pin_path = PathBuf::from(DEFAULT_PIN_PATH);
        if let Some(p) = &raw.settings.pin_path {
            if !p.get_ref().starts_with('/') {
                return Err(loc.at(p.span(), format!("settings.pin_path = {:?}: must be an absolute path", p.get_ref())));
            }
            pin_path = PathBuf::from(p.get_ref());
        }
        let metrics_listen = match &raw.settings.metrics_listen {
            None => Some(DEFAULT_METRICS_LISTEN.parse().expect("a socket address")),
            Some(v) if v.get_ref().is_empty() => None,
            Some(v) => Some(v.get_ref().parse().map_err(|_| {
                loc.at(v.span(), format!("settings.metrics_listen = {:?}: expected ADDRESS:PORT (\"\" turns metrics off)", v.get_ref()))
            })?),
        };
        let interval_ms = raw.settings.drop_event_interval_ms.as_ref().map_or(DEFAULT_DROP_EVENT_INTERVAL_MS, |v| *v.get_ref());
        if let Some(v) = &raw.settings.drop_event_interval_ms {
            if *v.get_ref() > 3_600_000 {
                return Err(loc.at(v.span(), "settings.drop_event_interval_ms: at most 3600000 (one hour)"));
            }
        }

        let mut warnings = Vec::new();
        let swarm = swarm::parse(&loc, raw.swarm.as_ref())?;
        let balancer = balancer::parse(&loc, raw.balancer.as_ref(), &raw.vip, swarm.is_some(), &mut warnings)?;
        let bgp = bgp::parse(&loc, raw.bgp.as_ref(), balancer.is_some())?;
        let cfg = Config {
            interfaces,
            zones,
            nodes,
            pin_path,
            drop_event_interval_ns: interval_ms * 1_000_000,
            metrics_listen,
            balancer,
            swarm,
            bgp,
            warnings,
        };
        cfg.check_capacity(&loc)?;
        Ok(cfg.with_warnings())
    }

    /// The maps are finite and a policy flip needs room for old and new.
    fn check_capacity(&self, loc: &Locator) -> Result<(), ConfigError> {
        let compiled = self.compile();
        let whole = 0..0;
        if compiled.zones.len() > (MAX_SLOTS / 2) as usize {
            return Err(loc.at(whole, format!("zone: {} zones have interfaces, at most {}", compiled.zones.len(), MAX_SLOTS / 2)));
        }
        let ports: usize = compiled.zones.iter().map(|z| z.ports.len()).sum();
        if ports > (MAX_PORT_ENTRIES / 2) as usize {
            return Err(loc.at(whole, format!("zone.*.protected: {ports} (protocol, port) pairs over all zones, at most {}", MAX_PORT_ENTRIES / 2)));
        }
        let v4: usize = compiled.zones.iter().map(|z| z.sources_v4.len()).sum();
        let v6: usize = compiled.zones.iter().map(|z| z.sources_v6.len()).sum();
        if v4.max(v6) > (MAX_SOURCE_PREFIXES / 2) as usize {
            return Err(loc.at(whole, format!("zone.*.allow + cluster.nodes: {} prefixes of one family over all zones, at most {}", v4.max(v6), MAX_SOURCE_PREFIXES / 2)));
        }
        Ok(())
    }

    fn with_warnings(mut self) -> Self {
        if self.interfaces.is_empty() && self.balancer.is_none() {
            self.warnings.push("no [[interface]] configured: the isolator is attached nowhere".into());
        }
        for (name, z) in &self.zones {
            if !self.interfaces.iter().any(|i| &i.zone == name) {
                self.warnings.push(format!("zone {name} has no interface: its policy is not applied"));
            }
            if z.swarm_ports && self.nodes.is_empty() && self.swarm.is_none() && self.interfaces.iter().any(|i| &i.zone == name) {
                self.warnings.push(format!(
                    "zone {name} protects Swarm's ports but [cluster].nodes is empty: no node can reach 2377/7946/4789 through it"
                ));
            }
        }
        self
    }

    /// Where the Swarm is (`None` without `[swarm]`: static config only).
    pub fn swarm(&self) -> Option<&SwarmConfig> {
        self.swarm.as_ref()
    }

    /// How VIPs are announced to BIRD (`None` without `[bgp]`).
    pub fn bgp(&self) -> Option<&BgpConfig> {
        self.bgp.as_ref()
    }

    /// The load balancer's settings and VIPs (`None` without `[balancer]`).
    pub fn balancer(&self) -> Option<&BalancerConfig> {
        self.balancer.as_ref()
    }
    pub fn interfaces(&self) -> &[InterfaceConfig] {
        &self.interfaces
    }
    pub fn zones(&self) -> &BTreeMap<String, ZoneConfig> {
        &self.zones
    }
    pub fn nodes(&self) -> &[Cidr] {
        &self.nodes
    }
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }
    /// Where the Prometheus endpoint listens (`None`: off).
    pub fn metrics_listen(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listen
    }

    pub fn drop_event_interval_ns(&self) -> u64 {
        self.drop_event_interval_ns
    }
    /// Things worth a log line that do not stop the config from applying.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
    /// A zone's allow-list as text (for status output).
    pub fn zone_allow(&self, zone: &str) -> Vec<String> {
        self.zones.get(zone).map(|z| z.allow.iter().map(Cidr::to_string).collect()).unwrap_or_default()
    }

    /// The config as map contents: zones that have interfaces, in name
    /// order, with source prefixes flattened for longest-prefix match.
    pub fn compile(&self) -> CompiledPolicy {
        self.compile_with(&SwarmAdditions::default())
    }

    /// [`Config::compile`] with the Swarm's additions: their protected
    /// ports in their zones, their nodes among the node sources; the same
    /// as `self.with_swarm(swarm).compile()` without the copy.
    pub fn compile_with(&self, swarm: &SwarmAdditions) -> CompiledPolicy {
        let nodes = swarm.nodes_with(&self.nodes);
        let mut zones = Vec::new();
        let mut index = HashMap::new();
        for (name, z) in &self.zones {
            if !self.interfaces.iter().any(|i| &i.zone == name) {
                continue;
            }
            index.insert(name.clone(), zones.len());
            let mut ports = BTreeMap::new();
            let from_swarm = swarm.protected.get(name);
            for &(proto, port) in z.protected.iter().chain(from_swarm.into_iter().flatten()).chain(if z.swarm_ports { &SWARM_PORTS[..] } else { &[] }) {
                let mut access = z.port_access(proto, port);
                // A port the Swarm protects is protected as a configured one is.
                if from_swarm.is_some_and(|p| p.contains(&(proto, port))) {
                    access |= PROTECTED | SET_TRUSTED;
                }
                ports.insert((proto, port), access);
            }
            let sources: Vec<(Cidr, u32)> = z
                .allow
                .iter()
                .map(|c| (*c, SET_TRUSTED))
                .chain(nodes.iter().map(|c| (*c, SET_NODES)))
                .collect();
            let mut sources_v4 = BTreeMap::new();
            let mut sources_v6 = BTreeMap::new();
            for (prefix, _) in &sources {
                // The kernel sees only the longest match: give each prefix
                // the sets of every prefix that contains it.
                let sets = sources.iter().filter(|(q, _)| q.contains(prefix)).fold(0, |acc, (_, s)| acc | s);
                match *prefix {
                    Cidr::V4(a, l) => sources_v4.insert((a, l), sets),
                    Cidr::V6(a, l) => sources_v6.insert((a, l), sets),
                };
            }
            zones.push(ZonePolicy {
                name: name.clone(),
                zone_id: zones.len() as u32,
                tunnel_access: z.tunnel_access(),
                routing_header_access: z.routing_header_access(),
                reverse_path: z.reverse_path,
                ports,
                sources_v4,
                sources_v6,
            });
        }
        let interfaces = self.interfaces.iter().map(|i| (i.name.clone(), index[&i.zone])).collect();
        CompiledPolicy { zones, interfaces }
    }
}

/// What the maps hold for one zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZonePolicy {
    pub name: String,
    pub zone_id: u32,
    pub tunnel_access: u32,
    pub routing_header_access: u32,
    pub reverse_path: ReversePath,
    /// (protocol, port) → access mask.
    pub ports: BTreeMap<(u8, u16), u32>,
    /// (address, prefix length) → source sets, flattened.
    pub sources_v4: BTreeMap<([u8; 4], u8), u32>,
    pub sources_v6: BTreeMap<([u8; 16], u8), u32>,
}

/// The whole config as map contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub zones: Vec<ZonePolicy>,
    /// (interface name, index into `zones`).
    pub interfaces: Vec<(String, usize)>,
}

#[cfg(test)]
mod tests;
