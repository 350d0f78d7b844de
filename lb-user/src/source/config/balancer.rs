//! `[balancer]` and `[[vip]]`: the load balancer's part of the config.
//! Every error names the key and the line, as the rest of the config does.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use lb_common::{
    firewall::MAX_FIREWALL_RULES,
    balancer::{Mode, MAX_BACKENDS_PER_VIP, MAX_FLOWS, MAX_NAT_ENTRIES, MAX_SNAT_ADDRESSES, MAX_TABLE_ENTRIES, MAX_VIPS},
    maglev::{is_prime, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE},
    proxy_protocol::{PROXY_NONE, PROXY_V1, PROXY_V2},
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Deserialize;
use toml::Spanned;

use super::{check_interface_name, Cidr, ConfigError, Locator};
use crate::source::swarm::selector::NodeSelector;

/// A forwarding rule: (protocol, entry port) → target port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub port: u16,
    pub target_port: u16,
    /// The PROXY protocol header the backends get in front of each of
    /// this rule's connections (a `lb_common::proxy_protocol::PROXY_*`
    /// version; `PROXY_NONE` on UDP rules and off `nat` VIPs): the rule's
    /// own `proxy_protocol`, else its VIP's.
    pub proxy_protocol: u8,
}

/// A static backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// Share of new flows; 0 = draining.
    pub weight: u32,
}

/// Health-check protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthProtocol {
    Tcp,
    Http,
}

/// Health-check settings (the DigitalOcean load balancer's, with its
/// defaults); applied by the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub protocol: HealthProtocol,
    pub port: u16,
    pub path: String,
    pub expected_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row before a backend is in again.
    pub rise: u32,
    /// Failures in a row before a backend is out.
    pub fall: u32,
}

/// One `[[vip]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    pub name: String,
    pub address: IpAddr,
    pub mode: Mode,
    /// Its forwarding rules, each with its PROXY protocol setting (the
    /// VIP's `proxy_protocol` is only their default).
    pub rules: Vec<Rule>,
    pub backends: Vec<BackendConfig>,
    /// Swarm nodes that are backends too (`backends_from`).
    pub backends_from: Option<NodeSelector>,
    pub health: HealthCheck,
    /// Firewall: with an `allow` list, only these clients may connect.
    pub allow: Vec<Cidr>,
    /// Firewall: these clients may not connect (wins over `allow`).
    pub deny: Vec<Cidr>,
}

/// `[balancer]` with its VIPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancerConfig {
    /// Where VIP traffic arrives.
    pub outside_interfaces: Vec<String>,
    /// Where backends are reached and NAT replies come back.
    pub inside_interface: String,
    /// SNAT / tunnel source; default: the inside interface's address.
    pub snat_v4: Option<Ipv4Addr>,
    pub snat_v6: Option<Ipv6Addr>,
    /// SNAT ports, inclusive.
    pub snat_ports: (u16, u16),
    /// More `nat` source addresses after `snat_v4` / `snat_v6` (each
    /// brings `snat_ports` more ports per backend port); each must be an
    /// address of the inside interface.
    pub snat_addresses: Vec<IpAddr>,
    /// Maglev table size (a prime).
    pub table_size: u32,
    /// Entries of the flow table (LRU).
    pub flow_table_size: u32,
    /// Entries of the NAT table (one per `nat` flow).
    pub nat_table_size: u32,
    pub tcp_idle_timeout: Duration,
    /// For TCP NAT state the client (or a RST) closed.
    pub tcp_closed_timeout: Duration,
    /// For TCP NAT state the backend closed (it holds TIME_WAIT).
    pub tcp_time_wait_timeout: Duration,
    pub udp_idle_timeout: Duration,
    /// For TCP NAT state whose handshake has not completed (the client
    /// has not acknowledged the backend's SYN-ACK).
    pub tcp_half_open_timeout: Duration,
    /// For UDP NAT state the backend never answered.
    pub udp_unreplied_timeout: Duration,
    pub vips: Vec<VipConfig>,
}

/// Default SNAT ports: below Linux's default ephemeral range
/// (32768–60999), so they never collide with the edge's own connections.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (1024, 32767);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalancer {
    outside_interfaces: Spanned<Vec<Spanned<String>>>,
    inside_interface: Spanned<String>,
    snat_v4: Option<Spanned<String>>,
    snat_v6: Option<Spanned<String>>,
    snat_ports: Option<Spanned<String>>,
    snat_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    table_size: Option<Spanned<u32>>,
    flow_table_size: Option<Spanned<u32>>,
    nat_table_size: Option<Spanned<u32>>,
    tcp_idle_timeout_s: Option<Spanned<u64>>,
    tcp_closed_timeout_s: Option<Spanned<u64>>,
    tcp_time_wait_timeout_s: Option<Spanned<u64>>,
    udp_idle_timeout_s: Option<Spanned<u64>>,
    tcp_half_open_timeout_s: Option<Spanned<u64>>,
    udp_unreplied_timeout_s: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    name: Option<Spanned<String>>,
    address: Spanned<String>,
    mode: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<String>>,
    /// Strings (`"tcp/443"`) or tables (`{ rule = "tcp/443",
    /// proxy_protocol = "v2" }`), read by [`rule_entry`].
    rules: Spanned<Vec<Spanned<toml::Value>>>,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
    backends_from: Option<Spanned<String>>,
    health_check: Option<Spanned<RawHealth>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    deny: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Address(String),
    Table { address: String, weight: Option<i64> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    protocol: Option<String>,
    port: Option<i64>,
    path: Option<String>,
    expected_status: Option<i64>,
    interval_s: Option<i64>,
    timeout_s: Option<i64>,
    rise: Option<i64>,
    fall: Option<i64>,
}

/// A rule's text (`tcp/443`, `tcp/80:8080`), without its PROXY protocol
/// setting.
fn parse_rule(s: &str) -> Result<Rule, String> {
    let (proto, ports) = match s.split_once('/') {
        Some(("tcp", p)) => (IPPROTO_TCP, p),
        Some(("udp", p)) => (IPPROTO_UDP, p),
        _ => return Err("expected PROTO/PORT or PROTO/PORT:TARGET with PROTO tcp or udp".into()),
    };
    let port = |p: &str| match p.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!("{p:?} is not a port 1-65535")),
    };
    let (entry, target) = match ports.split_once(':') {
        Some((e, t)) => (port(e)?, port(t)?),
        None => (port(ports)?, port(ports)?),
    };
    Ok(Rule { proto, port: entry, target_port: target, proxy_protocol: PROXY_NONE })
}

/// One `rules` entry, `key` (`vip[0].rules[1]`) in errors: a string
/// (`"tcp/443"`) or a table (`{ rule = "tcp/443", proxy_protocol = "v2" }`).
/// Returns the key of the rule's text, the text and the rule's own
/// `proxy_protocol`.
fn rule_entry<'a>(loc: &Locator, key: &str, r: &'a Spanned<toml::Value>) -> Result<(String, &'a str, Option<&'a str>), ConfigError> {
    let err = |m: String| loc.at(r.span(), format!("{key}{m}"));
    let t = match r.get_ref() {
        toml::Value::String(s) => return Ok((key.to_owned(), s, None)),
        toml::Value::Table(t) => t,
        other => {
            return Err(err(format!(
                " = {other}: expected a rule such as \"tcp/443\" or a table such as {{ rule = \"tcp/443\", proxy_protocol = \"v2\" }}"
            )))
        }
    };
    if let Some(k) = t.keys().find(|k| !["rule", "proxy_protocol"].contains(&k.as_str())) {
        return Err(err(format!(".{k}: unknown key (a rule table has rule and proxy_protocol)")));
    }
    let text = match t.get("rule") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(other) => return Err(err(format!(".rule = {other}: expected a string such as \"tcp/443\""))),
        None => return Err(err(": a rule table needs rule = \"PROTO/PORT\" (e.g. \"tcp/443\")".into())),
    };
    let proxy = match t.get("proxy_protocol") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.as_str()),
        Some(other) => return Err(err(format!(".proxy_protocol = {other}: expected \"v1\", \"v2\" or \"none\""))),
    };
    Ok((format!("{key}.rule"), text, proxy))
}

/// A `proxy_protocol` value (`key` and `span` name it in errors) on a
/// VIP in `mode`: the header version, a `lb_common::proxy_protocol::PROXY_*`.
fn parse_proxy_protocol(loc: &Locator, key: &str, value: &str, span: std::ops::Range<usize>, mode: Mode) -> Result<u8, ConfigError> {
    if mode != Mode::Nat {
        return Err(loc.at(
            span,
            format!("{key}: only a \"nat\" VIP can add a PROXY protocol header (in {} mode the backend sees the client's address itself)", mode.name()),
        ));
    }
    match value {
        "none" => Ok(PROXY_NONE),
        "v1" => Ok(PROXY_V1),
        "v2" => Ok(PROXY_V2),
        other => Err(loc.at(span, format!("{key} = {other:?}: expected \"v1\", \"v2\" or \"none\""))),
    }
}

fn in_range(v: i64, lo: i64, hi: i64, what: &str) -> Result<i64, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{what} {v} out of range {lo}-{hi}"))
    }
}

/// Validates `[balancer]` and `[[vip]]`; `warnings` collects what does not
/// stop the config.
pub(super) fn parse(
    loc: &Locator,
    raw: Option<&RawBalancer>,
    vips: &[RawVip],
    have_swarm: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<BalancerConfig>, ConfigError> {
    let Some(b) = raw else {
        if let Some(v) = vips.first() {
            return Err(loc.at(v.address.span(), "vip[0]: a [balancer] section (outside_interfaces, inside_interface) is needed"));
        }
        return Ok(None);
    };
    if vips.is_empty() {
        warnings.push("no [[vip]]: the balancer is attached nowhere".into());
    }
    let outside = b.outside_interfaces.get_ref();
    if outside.is_empty() || outside.len() > 16 {
        return Err(loc.at(b.outside_interfaces.span(), "balancer.outside_interfaces: list 1 to 16 interfaces"));
    }
    let mut outside_interfaces = Vec::new();
    for (i, n) in outside.iter().enumerate() {
        check_interface_name(n.get_ref()).map_err(|m| loc.at(n.span(), format!("balancer.outside_interfaces[{i}] = {:?}: {m}", n.get_ref())))?;
        if outside_interfaces.contains(n.get_ref()) {
            return Err(loc.at(n.span(), format!("balancer.outside_interfaces[{i}] = {:?}: listed twice", n.get_ref())));
        }
        outside_interfaces.push(n.get_ref().clone());
    }
    let inside = &b.inside_interface;
    check_interface_name(inside.get_ref()).map_err(|m| loc.at(inside.span(), format!("balancer.inside_interface = {:?}: {m}", inside.get_ref())))?;
    let snat_v4 = match &b.snat_v4 {
        Some(s) => Some(s.get_ref().parse::<Ipv4Addr>().map_err(|_| loc.at(s.span(), format!("balancer.snat_v4 = {:?}: not an IPv4 address", s.get_ref())))?),
        None => None,
    };
    let snat_v6 = match &b.snat_v6 {
        Some(s) => Some(s.get_ref().parse::<Ipv6Addr>().map_err(|_| loc.at(s.span(), format!("balancer.snat_v6 = {:?}: not an IPv6 address", s.get_ref())))?),
        None => None,
    };
    let mut snat_addresses: Vec<IpAddr> = Vec::new();
    for (i, a) in b.snat_addresses.iter().flat_map(|l| l.get_ref()).enumerate() {
        let err = |m: &str| loc.at(a.span(), format!("balancer.snat_addresses[{i}] = {:?}: {m}", a.get_ref()));
        let addr = a.get_ref().parse::<IpAddr>().map_err(|_| err("not an IP address"))?;
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(err("not a unicast address"));
        }
        if snat_addresses.contains(&addr) || snat_v4.map(IpAddr::V4) == Some(addr) || snat_v6.map(IpAddr::V6) == Some(addr) {
            return Err(err("listed twice (snat_v4 / snat_v6 are in the pool already)"));
        }
        let same_family = snat_addresses.iter().filter(|o| o.is_ipv4() == addr.is_ipv4()).count();
        if same_family + 1 >= MAX_SNAT_ADDRESSES {
            return Err(err(&format!("at most {} more addresses per family", MAX_SNAT_ADDRESSES - 1)));
        }
        snat_addresses.push(addr);
    }
    let snat_ports = match &b.snat_ports {
        None => DEFAULT_SNAT_PORTS,
        Some(s) => {
            let err = |m: &str| loc.at(s.span(), format!("balancer.snat_ports = {:?}: {m}", s.get_ref()));
            let (lo, hi) = s.get_ref().split_once('-').ok_or_else(|| err("expected LO-HI"))?;
            let (lo, hi) = (lo.trim().parse::<u16>().map_err(|_| err("LO is not a port"))?, hi.trim().parse::<u16>().map_err(|_| err("HI is not a port"))?);
            if lo == 0 || hi < lo {
                return Err(err("need 1 <= LO <= HI"));
            }
            let n = u32::from(hi - lo) + 1;
            if n < 1024 {
                warnings.push(format!(
                    "balancer.snat_ports = {:?}: only {n} ports, so at most {n} concurrent nat connections per backend port (more are refused as drop_snat_exhausted)",
                    s.get_ref()
                ));
            }
            (lo, hi)
        }
    };
    let table_size = match &b.table_size {
        None => DEFAULT_TABLE_SIZE,
        Some(t) => {
            let n = *t.get_ref();
            if !(3..=MAX_TABLE_SIZE).contains(&n) || !is_prime(n) {
                return Err(loc.at(t.span(), format!("balancer.table_size = {n}: must be a prime in 3-{MAX_TABLE_SIZE} (e.g. 65537, 131071)")));
            }
            n
        }
    };
    let entries = |v: &Option<Spanned<u32>>, key: &str, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if (1..=MAX_TABLE_ENTRIES).contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(loc.at(s.span(), format!("balancer.{key} = {}: out of range 1-{MAX_TABLE_ENTRIES}", s.get_ref()))),
        }
    };
    let flow_table_size = entries(&b.flow_table_size, "flow_table_size", MAX_FLOWS)?;
    let nat_table_size = entries(&b.nat_table_size, "nat_table_size", MAX_NAT_ENTRIES)?;
    let timeout = |v: &Option<Spanned<u64>>, key: &str, default: u64| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(s) if (1..=86_400).contains(s.get_ref()) => Ok(Duration::from_secs(*s.get_ref())),
            Some(s) => Err(loc.at(s.span(), format!("balancer.{key} = {}: out of range 1-86400", s.get_ref()))),
        }
    };
    let tcp_idle_timeout = timeout(&b.tcp_idle_timeout_s, "tcp_idle_timeout_s", 900)?;
    // conntrack's CLOSE and TIME_WAIT timeouts: a port is not handed to a
    // new flow while the backend may still hold the old connection.
    let tcp_closed_timeout = timeout(&b.tcp_closed_timeout_s, "tcp_closed_timeout_s", 10)?;
    let tcp_time_wait_timeout = timeout(&b.tcp_time_wait_timeout_s, "tcp_time_wait_timeout_s", 120)?;
    let udp_idle_timeout = timeout(&b.udp_idle_timeout_s, "udp_idle_timeout_s", 300)?;
    // An unproven entry may be a forged source's: it lives seconds, not
    // minutes (conntrack keeps SYN_RECV 60 s and unreplied UDP 30 s; a
    // real handshake or answer takes milliseconds).
    let tcp_half_open_timeout = timeout(&b.tcp_half_open_timeout_s, "tcp_half_open_timeout_s", 5)?;
    let udp_unreplied_timeout = timeout(&b.udp_unreplied_timeout_s, "udp_unreplied_timeout_s", 5)?;

    if vips.len() > MAX_VIPS as usize {
        return Err(loc.at(vips[MAX_VIPS as usize].address.span(), format!("vip: {} VIPs, at most {MAX_VIPS}", vips.len())));
    }
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    let mut services = BTreeSet::new();
    let mut prefixes = 0;
    for (i, v) in vips.iter().enumerate() {
        let vip = parse_vip(loc, i, v, table_size)?;
        prefixes += vip.allow.len() + vip.deny.len();
        // Half the tries: a reload writes the new prefixes before it
        // removes the old ones.
        if prefixes > MAX_FIREWALL_RULES as usize / 2 {
            let span = v.deny.as_ref().or(v.allow.as_ref()).map_or(v.address.span(), Spanned::span);
            return Err(loc.at(span, format!("vip[{i}]: {prefixes} allow and deny prefixes over all VIPs so far, at most {}", MAX_FIREWALL_RULES / 2)));
        }
        if let (Some(sel), false) = (&v.backends_from, have_swarm) {
            return Err(loc.at(sel.span(), format!("vip[{i}].backends_from: needs a [swarm] section (where the Docker API is)")));
        }
        if !names.insert(vip.name.clone()) {
            let span = v.name.as_ref().map_or(v.address.span(), Spanned::span);
            return Err(loc.at(span, format!("vip[{i}].name = {:?}: another vip has this name", vip.name)));
        }
        for (j, r) in vip.rules.iter().enumerate() {
            if !services.insert((vip.address, r.proto, r.port)) {
                let proto = if r.proto == IPPROTO_TCP { "tcp" } else { "udp" };
                return Err(loc.at(
                    v.rules.get_ref()[j].span(),
                    format!("vip[{i}].rules[{j}] ({proto}/{}): another vip already forwards this address, protocol and port", r.port),
                ));
            }
        }
        if vip.backends_from.is_none() && !vip.backends.iter().any(|b| b.weight > 0) {
            warnings.push(format!("vip {} has no backend with weight > 0: new connections are dropped", vip.name));
        }
        out.push(vip);
    }
    Ok(Some(BalancerConfig {
        outside_interfaces,
        inside_interface: inside.get_ref().clone(),
        snat_v4,
        snat_v6,
        snat_ports,
        snat_addresses,
        table_size,
        flow_table_size,
        nat_table_size,
        tcp_idle_timeout,
        tcp_closed_timeout,
        tcp_time_wait_timeout,
        udp_idle_timeout,
        tcp_half_open_timeout,
        udp_unreplied_timeout,
        vips: out,
    }))
}

fn parse_vip(loc: &Locator, i: usize, v: &RawVip, table_size: u32) -> Result<VipConfig, ConfigError> {
    let address: IpAddr = v
        .address
        .get_ref()
        .parse()
        .map_err(|_| loc.at(v.address.span(), format!("vip[{i}].address = {:?}: not an IP address", v.address.get_ref())))?;
    if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
        return Err(loc.at(v.address.span(), format!("vip[{i}].address = {address}: not usable as a VIP (unspecified, multicast or loopback)")));
    }
    let name = match &v.name {
        Some(n) => {
            let s = n.get_ref();
            if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(loc.at(n.span(), format!("vip[{i}].name = {s:?}: 1-64 characters of A-Z a-z 0-9 . _ -")));
            }
            s.clone()
        }
        None => address.to_string(),
    };
    let mode = match v.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("nat", _)) => Mode::Nat,
        Some(("dsr", _)) => Mode::Dsr,
        Some(("dsr-l2", _)) => Mode::DsrL2,
        Some((other, span)) => return Err(loc.at(span, format!("vip[{i}].mode = {other:?}: expected \"nat\", \"dsr\" or \"dsr-l2\""))),
    };
    // The VIP's `proxy_protocol`: the default of its TCP rules.
    let vip_proxy = match &v.proxy_protocol {
        None => PROXY_NONE,
        Some(p) => parse_proxy_protocol(loc, &format!("vip[{i}].proxy_protocol"), p.get_ref(), p.span(), mode)?,
    };
    let raw_rules = v.rules.get_ref();
    if raw_rules.is_empty() || raw_rules.len() > 16 {
        return Err(loc.at(v.rules.span(), format!("vip[{i}].rules: list 1 to 16 rules such as \"tcp/443\" or \"tcp/80:8080\"")));
    }
    let mut rules: Vec<Rule> = Vec::new();
    for (j, r) in raw_rules.iter().enumerate() {
        let (rule_key, text, own_proxy) = rule_entry(loc, &format!("vip[{i}].rules[{j}]"), r)?;
        let key = format!("{rule_key} = {text:?}");
        let mut rule = parse_rule(text).map_err(|m| loc.at(r.span(), format!("{key}: {m}")))?;
        if rules.iter().any(|o| o.proto == rule.proto && o.port == rule.port) {
            return Err(loc.at(r.span(), format!("{key}: the same protocol and port is listed twice")));
        }
        if mode != Mode::Nat && rule.port != rule.target_port {
            return Err(loc.at(r.span(), format!("{key}: {} mode cannot change the port (the backend receives the packet as the client sent it)", mode.name())));
        }
        rule.proxy_protocol = match own_proxy {
            None if rule.proto == IPPROTO_TCP => vip_proxy,
            None => PROXY_NONE,
            Some(_) if rule.proto != IPPROTO_TCP => {
                return Err(loc.at(r.span(), format!("vip[{i}].rules[{j}].proxy_protocol: {text:?} is not a TCP rule (a PROXY protocol header leads a TCP stream)")))
            }
            Some(p) => parse_proxy_protocol(loc, &format!("vip[{i}].rules[{j}].proxy_protocol"), p, r.span(), mode)?,
        };
        rules.push(rule);
    }
    if v.backends.len() > MAX_BACKENDS_PER_VIP || v.backends.len() >= table_size as usize {
        return Err(loc.at(v.address.span(), format!("vip[{i}].backends: {} backends, at most {} (and fewer than table_size)", v.backends.len(), MAX_BACKENDS_PER_VIP)));
    }
    let mut backends: Vec<BackendConfig> = Vec::new();
    for (j, b) in v.backends.iter().enumerate() {
        let (text, weight) = match b.get_ref() {
            RawBackend::Address(a) => (a.as_str(), 1),
            RawBackend::Table { address, weight } => (address.as_str(), weight.unwrap_or(1)),
        };
        let key = format!("vip[{i}].backends[{j}]");
        let a: IpAddr = text.parse().map_err(|_| loc.at(b.span(), format!("{key}.address = {text:?}: not an IP address")))?;
        if a.is_ipv4() != address.is_ipv4() {
            let (bf, vf) = if a.is_ipv4() { ("IPv4", "IPv6") } else { ("IPv6", "IPv4") };
            return Err(loc.at(b.span(), format!("{key}.address = {text:?}: an {bf} backend for an {vf} VIP")));
        }
        if a == address || a.is_unspecified() || a.is_multicast() {
            return Err(loc.at(b.span(), format!("{key}.address = {text:?}: not usable as a backend (the VIP itself, unspecified or multicast)")));
        }
        if backends.iter().any(|o| o.address == a) {
            return Err(loc.at(b.span(), format!("{key}.address = {text:?}: listed twice")));
        }
        let weight = in_range(weight, 0, 65_535, "weight").map_err(|m| loc.at(b.span(), format!("{key}.weight: {m}")))?;
        backends.push(BackendConfig { address: a, weight: weight as u32 });
    }
    let backends_from = match &v.backends_from {
        Some(sel) => Some(
            NodeSelector::parse(sel.get_ref()).map_err(|m| loc.at(sel.span(), format!("vip[{i}].backends_from = {:?}: {m}", sel.get_ref())))?,
        ),
        None => None,
    };
    let health = parse_health(loc, i, v.health_check.as_ref(), rules[0].target_port)?;
    let allow = parse_prefixes(loc, &format!("vip[{i}].allow"), v.allow.as_ref(), address)?;
    let deny = parse_prefixes(loc, &format!("vip[{i}].deny"), v.deny.as_ref(), address)?;
    Ok(VipConfig { name, address, mode, rules, backends, backends_from, health, allow, deny })
}

/// A VIP's `allow` or `deny` list (`key`): prefixes of the VIP's family,
/// none twice.
fn parse_prefixes(loc: &Locator, key: &str, raw: Option<&Spanned<Vec<Spanned<String>>>>, vip: IpAddr) -> Result<Vec<Cidr>, ConfigError> {
    let mut out: Vec<Cidr> = Vec::new();
    for (j, p) in raw.map(|l| l.get_ref().as_slice()).unwrap_or_default().iter().enumerate() {
        let err = |m: &str| loc.at(p.span(), format!("{key}[{j}] = {:?}: {m}", p.get_ref()));
        let c = Cidr::parse(p.get_ref()).map_err(|m| err(&m))?;
        if matches!(c, Cidr::V4(..)) != vip.is_ipv4() {
            return Err(err(&format!("not of the VIP's family (the VIP is {vip}; only its family's clients reach it)")));
        }
        if out.contains(&c) {
            return Err(err("listed twice"));
        }
        out.push(c);
    }
    Ok(out)
}

fn parse_health(loc: &Locator, i: usize, raw: Option<&Spanned<RawHealth>>, default_port: u16) -> Result<HealthCheck, ConfigError> {
    let mut h = HealthCheck {
        protocol: HealthProtocol::Tcp,
        port: default_port,
        path: "/".into(),
        expected_status: 200,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        rise: 3,
        fall: 5,
    };
    let Some(raw) = raw else { return Ok(h) };
    let err = |m: String| loc.at(raw.span(), format!("vip[{i}].health_check.{m}"));
    let r = raw.get_ref();
    h.protocol = match r.protocol.as_deref() {
        None | Some("tcp") => HealthProtocol::Tcp,
        Some("http") => HealthProtocol::Http,
        Some(p) => return Err(err(format!("protocol = {p:?}: expected \"tcp\" or \"http\""))),
    };
    if h.protocol == HealthProtocol::Tcp && (r.path.is_some() || r.expected_status.is_some()) {
        return Err(err("path / expected_status: only for protocol = \"http\"".into()));
    }
    if let Some(p) = r.port {
        h.port = in_range(p, 1, 65_535, "port").map_err(|m| err(format!("port: {m}")))? as u16;
    }
    if let Some(p) = &r.path {
        if !p.starts_with('/') {
            return Err(err(format!("path = {p:?}: must start with '/'")));
        }
        h.path = p.clone();
    }
    if let Some(s) = r.expected_status {
        h.expected_status = in_range(s, 100, 599, "expected_status").map_err(|m| err(format!("expected_status: {m}")))? as u16;
    }
    if let Some(s) = r.interval_s {
        h.interval = Duration::from_secs(in_range(s, 3, 300, "interval_s").map_err(|m| err(format!("interval_s: {m}")))? as u64);
    }
    if let Some(s) = r.timeout_s {
        h.timeout = Duration::from_secs(in_range(s, 1, 300, "timeout_s").map_err(|m| err(format!("timeout_s: {m}")))? as u64);
    }
    if h.timeout > h.interval {
        return Err(err(format!("timeout_s = {}: longer than interval_s = {}", h.timeout.as_secs(), h.interval.as_secs())));
    }
    if let Some(n) = r.rise {
        h.rise = in_range(n, 1, 10, "rise").map_err(|m| err(format!("rise: {m}")))? as u32;
    }
    if let Some(n) = r.fall {
        h.fall = in_range(n, 1, 10, "fall").map_err(|m| err(format!("fall: {m}")))? as u32;
    }
    Ok(h)
}
