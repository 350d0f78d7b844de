use super::*;
use lb_common::balancer::Mode;

fn err(text: &str) -> String {
    Config::parse(text, "t.toml").expect_err("config must be rejected").to_string()
}

const GOOD: &str = r#"
[[interface]]
name = "eth1"
zone = "dmz"

[zone.dmz]
protected = ["tcp/5432", "tcp/9000-9002", "udp/161", "8080"]
allow = ["192.0.2.0/24", "2001:db8::/48", "192.0.2.7"]

[zone.intra]

[cluster]
nodes = ["10.0.1.1", "fd00:1::1"]

[settings]
pin_path = "/sys/fs/bpf/x"
drop_event_interval_ms = 5
"#;

#[test]
fn good_config_compiles() {
    let cfg = Config::parse(GOOD, "t.toml").unwrap();
    assert_eq!(cfg.pin_path(), Path::new("/sys/fs/bpf/x"));
    assert_eq!(cfg.drop_event_interval_ns(), 5_000_000);
    assert!(cfg.warnings().iter().any(|w| w.contains("zone intra has no interface")));
    let c = cfg.compile();
    assert_eq!(c.zones.len(), 1, "only zones with interfaces");
    assert_eq!(c.interfaces, vec![("eth1".to_string(), 0)]);
    let z = &c.zones[0];
    let user = PROTECTED | SET_TRUSTED;
    let swarm = PROTECTED | SET_NODES;
    assert_eq!(z.ports[&(IPPROTO_TCP, 5432)], user);
    assert_eq!(z.ports[&(IPPROTO_TCP, 9001)], user);
    assert!(!z.ports.contains_key(&(IPPROTO_UDP, 9001)));
    assert_eq!(z.ports[&(IPPROTO_UDP, 8080)], user);
    assert_eq!(z.ports[&(IPPROTO_TCP, 2377)], swarm);
    assert_eq!(z.ports[&(IPPROTO_UDP, 4789)], swarm);
    assert_eq!(z.ports.len(), 1 + 3 + 1 + 2 + 4);
    assert_eq!(z.tunnel_access, swarm);
    // 192.0.2.7/32 sits inside 192.0.2.0/24: both trusted; nodes separate.
    assert_eq!(z.sources_v4[&([192, 0, 2, 7], 32)], SET_TRUSTED);
    assert_eq!(z.sources_v4[&([10, 0, 1, 1], 32)], SET_NODES);
    assert_eq!(z.sources_v6.len(), 2);
}

#[test]
fn swarm_and_user_ports_overlap_or_their_masks() {
    let cfg = Config::parse(
        "[[interface]]\nname='e'\nzone='z'\n[zone.z]\nprotected=['tcp/2377']\nallow=['10.0.0.0/8']\n[cluster]\nnodes=['10.1.0.0/16']\n",
        "t",
    )
    .unwrap();
    let z = &cfg.compile().zones[0];
    assert_eq!(z.ports[&(IPPROTO_TCP, 2377)], PROTECTED | SET_TRUSTED | SET_NODES);
    // The node prefix lies inside the allow-list: its entry carries both sets.
    assert_eq!(z.sources_v4[&([10, 1, 0, 0], 16)], SET_TRUSTED | SET_NODES);
    assert_eq!(z.sources_v4[&([10, 0, 0, 0], 8)], SET_TRUSTED);
}

#[test]
fn errors_name_key_and_line() {
    let e = err("[zone.dmz]\nprotected = [\"tcp/22\", \"tcp/70000\"]\n");
    assert!(e.contains("t.toml:2:") && e.contains("zone.dmz.protected[1]") && e.contains("70000"), "{e}");
    let e = err("[zone.dmz]\nprotected = [\"sctp/22\"]\n");
    assert!(e.contains("zone.dmz.protected[0]") && e.contains("sctp"), "{e}");
    let e = err("[zone.dmz]\nprotected = [\"100-90\"]\n");
    assert!(e.contains("empty"), "{e}");
    let e = err("[zone.dmz]\nallow = [\"10.0.0.1/8\"]\n");
    assert!(e.contains("t.toml:2:") && e.contains("zone.dmz.allow[0]") && e.contains("10.0.0.0/8"), "{e}");
    let e = err("[zone.dmz]\nallow = [\"10.0.0.0/33\"]\n");
    assert!(e.contains("prefix length"), "{e}");
    let e = err("[cluster]\nnodes = [\"not-an-ip\"]\n");
    assert!(e.contains("cluster.nodes[0]"), "{e}");
    let e = err("[[interface]]\nname = \"eth0\"\nzone = \"nope\"\n");
    assert!(e.contains("t.toml:3:") && e.contains("interface[0].zone") && e.contains("nope"), "{e}");
    let e = err("[zone.z]\n[[interface]]\nname = \"eth0\"\nzone = \"z\"\n[[interface]]\nname = \"eth0\"\nzone = \"z\"\n");
    assert!(e.contains("t.toml:6:") && e.contains("already listed"), "{e}");
    let e = err("[zone.z]\n[[interface]]\nname = \"a/b\"\nzone = \"z\"\n");
    assert!(e.contains("interface[0].name"), "{e}");
    let e = err("[zone.dmz]\nprotectd = []\n");
    assert!(e.contains("t.toml:2:") && e.contains("protectd"), "{e}");
    let e = err("[settings]\npin_path = \"relative\"\n");
    assert!(e.contains("settings.pin_path"), "{e}");
    let e = err("[zone.dmz]\nprotected = 5\n");
    assert!(e.contains("t.toml:2:"), "{e}");
}

#[test]
fn capacity_limits_are_checked() {
    let mut text = String::new();
    for i in 0..9 {
        text += &format!("[[interface]]\nname = \"e{i}\"\nzone = \"z{i}\"\n[zone.z{i}]\n");
    }
    assert!(err(&text).contains("zones have interfaces"));
    let text = "[[interface]]\nname='a'\nzone='a'\n[[interface]]\nname='b'\nzone='b'\n[[interface]]\nname='c'\nzone='c'\n\
                [zone.a]\nprotected=['1-65535']\n[zone.b]\nprotected=['1-65535']\n[zone.c]\nprotected=['tcp/1-10']\n";
    assert!(err(text).contains("(protocol, port) pairs"));
}

#[test]
fn example_files_parse() {
    for f in ["swarmlb.toml", "demo.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(f);
        Config::load(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

const LB: &str = r#"
[balancer]
outside_interfaces = ["eth1"]
inside_interface = "eth2"
snat_ports = "2000-2999"

[[vip]]
name = "web"
address = "203.0.113.10"
rules = ["tcp/443", "tcp/80:8080", "udp/53"]
backends = ["10.0.1.1", { address = "10.0.1.2", weight = 2 }, { address = "10.0.1.3", weight = 0 }]

[[vip]]
address = "2001:db8::10"
mode = "dsr"
rules = ["tcp/443"]
backends = ["fd00::1"]
[vip.health_check]
protocol = "http"
path = "/healthz"
interval_s = 5
"#;

#[test]
fn balancer_section_parses_with_defaults() {
    let cfg = Config::parse(LB, "t.toml").unwrap();
    let b = cfg.balancer().unwrap();
    assert_eq!(b.outside_interfaces, vec!["eth1".to_string()]);
    assert_eq!((b.inside_interface.as_str(), b.snat_ports, b.table_size), ("eth2", (2000, 2999), 65_537));
    assert_eq!((b.snat_v4, b.snat_v6), (None, None));
    assert_eq!(b.tcp_idle_timeout, std::time::Duration::from_secs(900));
    assert_eq!((b.tcp_closed_timeout, b.tcp_time_wait_timeout), (std::time::Duration::from_secs(10), std::time::Duration::from_secs(120)));
    assert_eq!((b.flow_table_size, b.nat_table_size), (262_144, 262_144));
    let web = &b.vips[0];
    assert_eq!((web.name.as_str(), web.mode), ("web", Mode::Nat));
    assert_eq!(web.rules[1], Rule { proto: IPPROTO_TCP, port: 80, target_port: 8080, proxy_protocol: 0 });
    assert_eq!(web.rules[2], Rule { proto: IPPROTO_UDP, port: 53, target_port: 53, proxy_protocol: 0 });
    let weights: Vec<u32> = web.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, vec![1, 2, 0]);
    assert_eq!((web.health.protocol, web.health.port, web.health.rise, web.health.fall), (HealthProtocol::Tcp, 443, 3, 5));
    let v6 = &b.vips[1];
    assert_eq!((v6.name.as_str(), v6.mode), ("2001:db8::10", Mode::Dsr));
    assert_eq!((v6.health.protocol, v6.health.path.as_str(), v6.health.interval.as_secs()), (HealthProtocol::Http, "/healthz", 5));
    assert!(Config::parse("", "t").unwrap().balancer().is_none());
    assert!(web.rules.iter().chain(&v6.rules).all(|r| r.proxy_protocol == 0), "no PROXY protocol unless asked");
}

/// The PROXY protocol header of each rule of a one-VIP config whose
/// `[[vip]]` has `vip_lines`.
fn rule_proxies(vip_lines: &str) -> Vec<u8> {
    let text = format!("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\n{vip_lines}");
    let cfg = Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{text}\n→ {e}"));
    cfg.balancer().unwrap().vips[0].rules.iter().map(|r| r.proxy_protocol).collect()
}

#[test]
fn proxy_protocol_per_vip_and_per_rule() {
    use lb_common::proxy_protocol::{PROXY_NONE as NONE, PROXY_V1 as V1, PROXY_V2 as V2};
    // The VIP's setting: every TCP rule, never a UDP one.
    assert_eq!(rule_proxies("proxy_protocol='v2'\nrules=['tcp/443', 'tcp/80:8080', 'udp/53']\n"), [V2, V2, NONE]);
    // A rule's own setting, in a table beside plain rules (a mixed array).
    assert_eq!(rule_proxies("rules=['tcp/80', { rule = 'tcp/443', proxy_protocol = 'v2' }]\n"), [NONE, V2]);
    // Overrides the VIP's; "none" turns it off for that rule.
    assert_eq!(rule_proxies("proxy_protocol='v2'\nrules=[{ rule = 'tcp/80', proxy_protocol = 'none' }, 'tcp/443', 'udp/53']\n"), [NONE, V2, NONE]);
    assert_eq!(rule_proxies("proxy_protocol='none'\nrules=['tcp/443']\n"), [NONE]);
    // A table without proxy_protocol is the plain rule, port mapping and all.
    let cfg = Config::parse("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nproxy_protocol='v2'\nrules=[{ rule = 'tcp/80:8080' }]\n", "t").unwrap();
    assert_eq!(cfg.balancer().unwrap().vips[0].rules, [Rule { proto: IPPROTO_TCP, port: 80, target_port: 8080, proxy_protocol: V2 }]);
    // Multi-line arrays of tables: the line of an error is the entry's.
    let e = err("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=[\n  'tcp/80',\n  { rule = 'udp/53', proxy_protocol = 'v2' },\n]\n");
    assert!(e.contains("t.toml:8:") && e.contains("vip[0].rules[1].proxy_protocol: \"udp/53\" is not a TCP rule"), "{e}");
    // "v1" at either level.
    assert_eq!(rule_proxies("proxy_protocol='v1'\nrules=['tcp/80', { rule = 'tcp/443', proxy_protocol = 'v2' }]\n"), [V1, V2]);
}

#[test]
fn balancer_errors_name_key_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\n", "t.toml:2:", "a [balancer] section"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\ntable_size=65536\n", "t.toml:4:", "must be a prime"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\nsnat_ports='20-10'\n", "t.toml:4:", "need 1 <= LO <= HI"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\nflow_table_size=0\n", "t.toml:4:", "balancer.flow_table_size = 0: out of range 1-16777216"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\nsnat_addresses=['10.1.0.2', 'x']\n", "t.toml:4:", "balancer.snat_addresses[1] = \"x\": not an IP address"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\nsnat_addresses=['224.0.0.1']\n", "t.toml:4:", "not a unicast address"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\nsnat_v4='10.1.0.1'\nsnat_addresses=['10.1.0.1']\n", "t.toml:5:", "listed twice"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\nnat_table_size=16777217\n", "t.toml:4:", "balancer.nat_table_size = 16777217: out of range"),
        ("[balancer]\noutside_interfaces=[]\ninside_interface='i'\n", "t.toml:2:", "balancer.outside_interfaces"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='10.0.0.300'\nrules=['tcp/443']\n", "t.toml:5:", "vip[0].address"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['sctp/443']\n", "t.toml:6:", "vip[0].rules[0]"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nmode='dsr'\nrules=['tcp/443:8443']\n", "t.toml:7:", "cannot change the port"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\nbackends=['10.0.0.1','fd00::1']\n", "t.toml:7:", "an IPv6 backend for an IPv4 VIP"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\nbackends=['10.0.0.1','10.0.0.1']\n", "t.toml:7:", "listed twice"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\nbackends=[{address='10.0.0.1', weight=70000}]\n", "t.toml:7:", "weight"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\nname='a'\naddress='203.0.113.1'\nrules=['tcp/443']\n[[vip]]\nname='b'\naddress='203.0.113.1'\nrules=['tcp/443']\n", "t.toml:11:", "vip[1].rules[0] (tcp/443): another vip already forwards"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\nmode='fast'\n", "t.toml:7:", "vip[0].mode"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\n[vip.health_check]\npath='/x'\n", "t.toml:7:", "only for protocol = \"http\""),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='127.0.0.1'\nrules=['tcp/443']\n", "t.toml:5:", "not usable as a VIP"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\nallow=['10.0.0.1/8']\n", "t.toml:7:", "vip[0].allow[0] = \"10.0.0.1/8\": host bits set; did you mean 10.0.0.0/8?"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\ndeny=['192.0.2.0/24',\n 'nope']\n", "t.toml:8:", "vip[0].deny[1] = \"nope\""),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\ndeny=['192.0.2.0/33']\n", "t.toml:7:", "prefix length \"33\" is not in 0-32"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\ndeny=['2001:db8::/32']\n", "t.toml:7:", "vip[0].deny[0] = \"2001:db8::/32\": not of the VIP's family"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='2001:db8::1'\nrules=['tcp/443']\nallow=['2001:db8::/32', '2001:db8::/32']\n", "t.toml:7:", "vip[0].allow[1] = \"2001:db8::/32\": listed twice"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nmode='dsr'\nproxy_protocol='v2'\nrules=['tcp/443']\n", "t.toml:7:", "vip[0].proxy_protocol: only a \"nat\" VIP"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nproxy_protocol='v3'\nrules=['tcp/443']\n", "t.toml:6:", "vip[0].proxy_protocol = \"v3\": expected \"v1\", \"v2\" or \"none\""),
        // Rules as tables.
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['udp/53', { rule = 'udp/54', proxy_protocol = 'v2' }]\n", "t.toml:6:", "vip[0].rules[1].proxy_protocol: \"udp/54\" is not a TCP rule"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nmode='dsr'\nrules=['tcp/80', { rule = 'tcp/443', proxy_protocol = 'v2' }]\n", "t.toml:7:", "vip[0].rules[1].proxy_protocol: only a \"nat\" VIP"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=[{ rule = 'tcp/443', proxy = 'v2' }]\n", "t.toml:6:", "vip[0].rules[0].proxy: unknown key (a rule table has rule and proxy_protocol)"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=[{ proxy_protocol = 'v2' }]\n", "t.toml:6:", "vip[0].rules[0]: a rule table needs rule ="),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/80', { rule = 'tcp/443', proxy_protocol = 'v3' }]\n", "t.toml:6:", "vip[0].rules[1].proxy_protocol = \"v3\": expected \"v1\", \"v2\" or \"none\""),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=[{ rule = 'tcp/443', proxy_protocol = 2 }]\n", "t.toml:6:", "vip[0].rules[0].proxy_protocol = 2: expected \"v1\", \"v2\" or \"none\""),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=[{ rule = 'sctp/443' }]\n", "t.toml:6:", "vip[0].rules[0].rule = \"sctp/443\": expected PROTO/PORT"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443', { rule = 'tcp/443', proxy_protocol = 'v2' }]\n", "t.toml:6:", "vip[0].rules[1].rule = \"tcp/443\": the same protocol and port is listed twice"),
        ("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443', 443]\n", "t.toml:6:", "vip[0].rules[1] = 443: expected a rule such as \"tcp/443\" or a table"),
    ];
    for (text, line, what) in cases {
        let e = err(text);
        assert!(e.contains(line) && e.contains(what), "{text}\n→ {e}\n(expected {line} … {what})");
    }
}

#[test]
fn balancer_warnings() {
    let cfg = Config::parse("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\n", "t").unwrap();
    assert!(cfg.warnings().iter().any(|w| w.contains("no backend with weight > 0")), "{:?}", cfg.warnings());
    assert!(!cfg.warnings().iter().any(|w| w.contains("isolator is attached nowhere")));
    let few = Config::parse("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\nsnat_ports='2000-2003'\nflow_table_size=16\nnat_table_size=8\n", "t").unwrap();
    let b = few.balancer().unwrap();
    assert_eq!((b.snat_ports, b.flow_table_size, b.nat_table_size), ((2000, 2003), 16, 8));
    assert!(few.warnings().iter().any(|w| w.contains("only 4 ports")), "{:?}", few.warnings());
}

/// Found by the `config` fuzz target: toml reports a control character in
/// a comment with an empty message.
#[test]
fn syntax_errors_always_say_something() {
    let e = err("[settings]\n# a comment with a \u{17} in it\n");
    assert!(e.contains("t.toml:2:") && e.contains("unexpected character '\\u{17}'"), "{e}");
}

#[test]
fn reverse_path_is_strict_unless_the_zone_says_otherwise() {
    use lb_common::isolator::ReversePath;
    let mode = |line: &str| {
        let text = format!("[[interface]]\nname = \"eth1\"\nzone = \"dmz\"\n[zone.dmz]\nallow = [\"10.0.0.0/8\"]\n{line}\n");
        Config::parse(&text, "t.toml").map(|c| c.compile().zones[0].reverse_path)
    };
    assert_eq!(mode("").unwrap(), ReversePath::Strict);
    assert_eq!(mode("reverse_path = \"strict\"").unwrap(), ReversePath::Strict);
    assert_eq!(mode("reverse_path = \"loose\"").unwrap(), ReversePath::Loose);
    assert_eq!(mode("reverse_path = \"off\"").unwrap(), ReversePath::Off);
    let e = mode("reverse_path = \"on\"").unwrap_err().to_string();
    assert!(e.contains("zone.dmz.reverse_path") && e.contains(":6:") && e.contains("\"strict\""), "{e}");
}

#[test]
fn bgp_section_parses_and_errors_name_key_and_line() {
    let cfg = Config::parse(&format!("{LB}\n[bgp]\ntable = 100\n"), "t.toml").unwrap();
    assert_eq!(cfg.bgp(), Some(&BgpConfig { table: 100, birdc_socket: DEFAULT_BIRDC_SOCKET.into() }));
    let custom = Config::parse(&format!("{LB}\n[bgp]\ntable = 4000\nbirdc_socket = \"/run/b.ctl\"\n"), "t.toml").unwrap();
    assert_eq!(custom.bgp().unwrap().birdc_socket, Path::new("/run/b.ctl"));
    assert!(Config::parse(LB, "t.toml").unwrap().bgp().is_none());
    let lines = LB.lines().count();
    let cases: &[(String, String, &str)] = &[
        ("[bgp]\ntable = 100\n".into(), "t.toml:1:".into(), "needs a [balancer] section"),
        (format!("{LB}[bgp]\ntable = 254\n"), format!("t.toml:{}:", lines + 2), "bgp.table = 254: expected a routing table of swarmlb's own"),
        (format!("{LB}[bgp]\ntable = 0\n"), format!("t.toml:{}:", lines + 2), "bgp.table = 0"),
        (format!("{LB}[bgp]\ntable = -3\n"), format!("t.toml:{}:", lines + 2), "bgp.table = -3"),
        (format!("{LB}[bgp]\ntable = 100\nbirdc_socket = \"bird.ctl\"\n"), format!("t.toml:{}:", lines + 3), "bgp.birdc_socket = \"bird.ctl\": must be an absolute path"),
        (format!("{LB}[bgp]\ntable = 100\nasn = 65000\n"), format!("t.toml:{}:", lines + 3), "unknown field `asn`"),
    ];
    for (text, line, what) in cases {
        let e = err(text);
        assert!(e.contains(line.as_str()) && e.contains(what), "{text}\n→ {e}\n(expected {line} … {what})");
    }
}

#[test]
fn vip_firewall_lists_parse() {
    let text = "[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\nallow=['198.51.100.0/24', '192.0.2.7']\ndeny=['198.51.100.66']\n[[vip]]\naddress='2001:db8::1'\nrules=['tcp/443']\n";
    let cfg = Config::parse(text, "t").unwrap();
    let b = cfg.balancer().unwrap();
    assert_eq!(b.vips[0].allow, vec![Cidr::V4([198, 51, 100, 0], 24), Cidr::V4([192, 0, 2, 7], 32)]);
    assert_eq!(b.vips[0].deny, vec![Cidr::V4([198, 51, 100, 66], 32)]);
    assert!(b.vips[1].allow.is_empty() && b.vips[1].deny.is_empty(), "no lists: everyone");
    // All VIPs' prefixes together stay under half the tries.
    let many: Vec<String> = (0..2049).map(|i| format!("'10.{}.{}.0/24'", i / 256, i % 256)).collect();
    let text = format!("[balancer]\noutside_interfaces=['e']\ninside_interface='i'\n[[vip]]\naddress='203.0.113.1'\nrules=['tcp/443']\ndeny=[{}]\n", many.join(","));
    assert!(err(&text).contains("t.toml:7:") && err(&text).contains("at most 2048"), "{}", err(&text));
}
