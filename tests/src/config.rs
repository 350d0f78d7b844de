//! The one way tests write swarmlb's config: a small typed [`EdgeConfig`]
//! that renders TOML ([`EdgeConfig::to_toml`]), so the labs, tests and
//! benches that run the agent state only what differs (backends, mode,
//! extra `[balancer]` keys, a `[swarm]` section, zones) instead of each
//! carrying its own copy of the file.
//!
//! ```
//! use harness::config::{EdgeConfig, Vip};
//! let cfg = EdgeConfig::balancer()
//!     .vip(Vip::new("web", "203.0.113.10".parse().unwrap(), &["tcp/80"]).backends(["10.1.0.11".parse::<std::net::IpAddr>().unwrap()]))
//!     .to_toml();
//! assert!(cfg.contains("inside_interface = \"e-in\""));
//! ```

use std::{fmt::Write, net::IpAddr};

use crate::edge_lab::{worker_addrs, VIP_V4, VIP_V6};

/// A TOML string literal (quoted and escaped).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A TOML array of strings.
fn array<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| quoted(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// One backend of a VIP.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Its address.
    pub address: IpAddr,
    /// Its weight; `None` writes the bare address (weight 1).
    pub weight: Option<u32>,
}

impl From<IpAddr> for Backend {
    /// Weight 1, written as the bare address.
    fn from(address: IpAddr) -> Self {
        Self {
            address,
            weight: None,
        }
    }
}

impl Backend {
    fn to_toml(&self) -> String {
        match self.weight {
            None => quoted(&self.address.to_string()),
            Some(w) => format!(
                "{{ address = {}, weight = {w} }}",
                quoted(&self.address.to_string())
            ),
        }
    }
}

/// One `[[vip]]`.
#[derive(Clone, Debug)]
pub struct Vip {
    name: String,
    address: IpAddr,
    mode: Option<String>,
    proxy_protocol: Option<String>,
    /// Each rule with its own `proxy_protocol`, if it has one.
    rules: Vec<(String, Option<String>)>,
    health_check: Option<String>,
    backends: Vec<Backend>,
    backends_from: Option<String>,
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Vip {
    /// A VIP `name` on `address` forwarding `rules` (`"tcp/443"`, …), in the
    /// default mode, with no backends yet.
    pub fn new(name: &str, address: IpAddr, rules: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            address,
            mode: None,
            proxy_protocol: None,
            rules: rules.iter().map(|r| ((*r).to_owned(), None)).collect(),
            health_check: None,
            backends: Vec::new(),
            backends_from: None,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    /// Its firewall: `allow` and `deny` prefixes (empty lists are left out).
    pub fn firewall(mut self, allow: &[&str], deny: &[&str]) -> Self {
        self.allow = allow.iter().map(|p| (*p).to_owned()).collect();
        self.deny = deny.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Its forwarding mode (`nat`, `dsr`, `dsr-l2`).
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = Some(mode.to_owned());
        self
    }

    /// Its `proxy_protocol` (`"v2"`).
    pub fn proxy_protocol(mut self, version: &str) -> Self {
        self.proxy_protocol = Some(version.to_owned());
        self
    }

    /// The `proxy_protocol` (`"v2"`, `"none"`) of its rule `rule` alone,
    /// written as `{ rule = …, proxy_protocol = … }`.
    pub fn rule_proxy_protocol(mut self, rule: &str, version: &str) -> Self {
        let r = self.rules.iter_mut().find(|(r, _)| r == rule).unwrap_or_else(|| panic!("vip {} has no rule {rule}", self.name));
        r.1 = Some(version.to_owned());
        self
    }

    /// Its `health_check`, an inline table (`{ protocol = "tcp", … }`);
    /// an empty string leaves the default.
    pub fn health_check(mut self, table: &str) -> Self {
        self.health_check = (!table.is_empty()).then(|| table.to_owned());
        self
    }

    /// A backend with an explicit weight.
    pub fn weighted(mut self, address: IpAddr, weight: u32) -> Self {
        self.backends.push(Backend {
            address,
            weight: Some(weight),
        });
        self
    }

    /// More backends (addresses or [`Backend`]s).
    pub fn backends<B: Into<Backend>>(mut self, backends: impl IntoIterator<Item = B>) -> Self {
        self.backends.extend(backends.into_iter().map(Into::into));
        self
    }

    /// Its `backends_from` node selector (needs a `[swarm]` section).
    pub fn backends_from(mut self, selector: &str) -> Self {
        self.backends_from = Some(selector.to_owned());
        self
    }

    fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "\n[[vip]]\nname = {}\naddress = {}\n",
            quoted(&self.name),
            quoted(&self.address.to_string())
        );
        if let Some(mode) = &self.mode {
            let _ = writeln!(out, "mode = {}", quoted(mode));
        }
        if let Some(v) = &self.proxy_protocol {
            let _ = writeln!(out, "proxy_protocol = {}", quoted(v));
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|(r, pp)| match pp {
                None => quoted(r),
                Some(v) => format!("{{ rule = {}, proxy_protocol = {} }}", quoted(r), quoted(v)),
            })
            .collect();
        let _ = writeln!(out, "rules = [{}]", rules.join(", "));
        if let Some(h) = &self.health_check {
            let _ = writeln!(out, "health_check = {h}");
        }
        // A Swarm VIP may have no static backends at all.
        if !self.backends.is_empty() || self.backends_from.is_none() {
            let list: Vec<String> = self.backends.iter().map(Backend::to_toml).collect();
            let _ = writeln!(out, "backends = [{}]", list.join(", "));
        }
        if let Some(sel) = &self.backends_from {
            let _ = writeln!(out, "backends_from = {}", quoted(sel));
        }
        if !self.allow.is_empty() {
            let _ = writeln!(out, "allow = {}", array(&self.allow));
        }
        if !self.deny.is_empty() {
            let _ = writeln!(out, "deny = {}", array(&self.deny));
        }
    }
}

/// The edge lab's two VIPs, `{prefix}4` on [`VIP_V4`] and `{prefix}6` on
/// [`VIP_V6`], both forwarding `rules` to the workers `workers` (1-based
/// index, weight; `None` writes the bare address) of their family.
pub fn worker_vips(prefix: &str, rules: &[&str], workers: &[(usize, Option<u32>)]) -> [Vip; 2] {
    let backends = |v6: bool| {
        workers.iter().map(move |&(i, weight)| {
            let (a4, a6) = worker_addrs(i);
            Backend {
                address: if v6 { IpAddr::V6(a6) } else { IpAddr::V4(a4) },
                weight,
            }
        })
    };
    [
        Vip::new(&format!("{prefix}4"), IpAddr::V4(VIP_V4), rules).backends(backends(false)),
        Vip::new(&format!("{prefix}6"), IpAddr::V6(VIP_V6), rules).backends(backends(true)),
    ]
}

/// `[balancer]`: its interfaces and any further lines.
#[derive(Clone, Debug)]
struct Balancer {
    outside: Vec<String>,
    inside: String,
    lines: Vec<String>,
}

impl Default for Balancer {
    /// The labs' interfaces: outside `e-out`, inside `e-in`.
    fn default() -> Self {
        Self {
            outside: vec!["e-out".into()],
            inside: "e-in".into(),
            lines: Vec::new(),
        }
    }
}

/// swarmlb's config as the harness writes it.
#[derive(Clone, Debug, Default)]
pub struct EdgeConfig {
    settings: Vec<String>,
    swarm: Option<Vec<String>>,
    /// `[[interface]]`s: (name, zone).
    interfaces: Vec<(String, String)>,
    /// `[zone.NAME]`s: (name, protected ports if set).
    zones: Vec<(String, Option<Vec<String>>)>,
    balancer: Option<Balancer>,
    vips: Vec<Vip>,
}

impl EdgeConfig {
    /// A config with nothing in it (add zones, a `[swarm]`, …).
    pub fn new() -> Self {
        Self::default()
    }

    /// A `[balancer]` on the labs' interfaces: outside `e-out`, inside
    /// `e-in`.
    pub fn balancer() -> Self {
        Self {
            balancer: Some(Balancer::default()),
            ..Self::default()
        }
    }

    /// The `[balancer]`'s interfaces (a `[balancer]` if there is none yet).
    pub fn interfaces(mut self, outside: &[&str], inside: &str) -> Self {
        let b = self.balancer.get_or_insert_with(Balancer::default);
        b.outside = outside.iter().map(|s| (*s).to_owned()).collect();
        b.inside = inside.to_owned();
        self
    }

    /// A line in `[balancer]` (`snat_ports = "20000-21023"`, …; a
    /// `[balancer]` on the labs' interfaces if there is none yet); an empty
    /// one adds nothing.
    pub fn balancer_line(mut self, line: &str) -> Self {
        if !line.is_empty() {
            self.balancer
                .get_or_insert_with(Balancer::default)
                .lines
                .push(line.to_owned());
        }
        self
    }

    /// A line in `[settings]` (`pin_path = "…"`).
    pub fn setting(mut self, line: &str) -> Self {
        self.settings.push(line.to_owned());
        self
    }

    /// A `[swarm]` section reaching the Docker API at `docker_host`
    /// (`unix:///…`, `tcp://…`).
    pub fn swarm(mut self, docker_host: &str) -> Self {
        self.swarm.get_or_insert_with(Vec::new).insert(0, format!("docker_host = {}", quoted(docker_host)));
        self
    }

    /// A line in `[swarm]` as written (`deregistration_delay_s = 8`).
    pub fn swarm_line(mut self, line: &str) -> Self {
        self.swarm.get_or_insert_with(Vec::new).push(line.to_owned());
        self
    }

    /// A string key in `[swarm]` (`tls_cert_dir`, …).
    pub fn swarm_key(mut self, key: &str, value: &str) -> Self {
        self.swarm
            .get_or_insert_with(Vec::new)
            .push(format!("{key} = {}", quoted(value)));
        self
    }

    /// Interface `ifname` in zone `zone`; the zone is declared (empty) if
    /// it is not yet.
    pub fn zone_interface(mut self, ifname: &str, zone: &str) -> Self {
        self.interfaces.push((ifname.to_owned(), zone.to_owned()));
        if !self.zones.iter().any(|z| z.0 == zone) {
            self.zones.push((zone.to_owned(), None));
        }
        self
    }

    /// Zone `zone`'s `protected` ports (`"tcp/5432"`, …).
    pub fn protected(mut self, zone: &str, ports: &[&str]) -> Self {
        let ports = Some(ports.iter().map(|p| (*p).to_owned()).collect());
        match self.zones.iter_mut().find(|z| z.0 == zone) {
            Some(z) => z.1 = ports,
            None => self.zones.push((zone.to_owned(), ports)),
        }
        self
    }

    /// A `[[vip]]`.
    pub fn vip(mut self, vip: Vip) -> Self {
        self.vips.push(vip);
        self
    }

    /// Several `[[vip]]`s.
    pub fn vips(mut self, vips: impl IntoIterator<Item = Vip>) -> Self {
        self.vips.extend(vips);
        self
    }

    /// The config file's text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let section = |out: &mut String, name: &str, lines: &[String]| {
            let _ = writeln!(out, "\n[{name}]");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        };
        if !self.settings.is_empty() {
            section(&mut out, "settings", &self.settings);
        }
        if let Some(swarm) = &self.swarm {
            section(&mut out, "swarm", swarm);
        }
        for (name, zone) in &self.interfaces {
            let _ = write!(
                out,
                "\n[[interface]]\nname = {}\nzone = {}\n",
                quoted(name),
                quoted(zone)
            );
        }
        for (zone, protected) in &self.zones {
            let lines: Vec<String> = protected
                .iter()
                .map(|p| format!("protected = {}", array(p)))
                .collect();
            section(&mut out, &format!("zone.{zone}"), &lines);
        }
        if let Some(b) = &self.balancer {
            let mut lines = vec![
                format!("outside_interfaces = {}", array(&b.outside)),
                format!("inside_interface = {}", quoted(&b.inside)),
            ];
            lines.extend(b.lines.iter().cloned());
            section(&mut out, "balancer", &lines);
        }
        for v in &self.vips {
            v.write(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder writes what the daemon's own parser accepts and reads
    /// back as meant.
    #[test]
    fn rendered_configs_parse() {
        let cfg = EdgeConfig::balancer()
            .setting("pin_path = \"/sys/fs/bpf/x\"")
            .swarm("unix:///run/docker.sock")
            .zone_interface("e-out", "dmz")
            .protected("dmz", &["tcp/5432"])
            .balancer_line("snat_ports = \"20000-21023\"")
            .vips(
                worker_vips("web", &["tcp/443", "tcp/80"], &[(1, Some(2)), (2, None)])
                    .map(|v| v.mode("nat")),
            )
            .vip(
                Vip::new("s", "203.0.113.20".parse().unwrap(), &["tcp/80"])
                    .backends_from("node.labels.lb==proxy"),
            )
            .to_toml();
        let parsed = lb_user::source::config::Config::parse(&cfg, "builder.toml")
            .unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        let b = parsed.balancer().expect("a balancer");
        assert_eq!(b.vips.len(), 3, "{cfg}");
        assert!(
            cfg.contains("backends = [{ address = \"10.1.0.11\", weight = 2 }, \"10.1.0.12\"]"),
            "{cfg}"
        );
        assert!(!cfg.contains("backends = []"), "{cfg}");
    }
}
