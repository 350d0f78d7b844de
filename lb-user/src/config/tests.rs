use super::*;

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

/// Longest-prefix match over the flattened entries equals the semantic
/// "every prefix containing the address" of the reference policy.
#[test]
fn flattening_matches_the_reference() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..50 {
        let mut allow = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..12 {
            let len = (next() % 33) as u8;
            let addr = [10, (next() % 4) as u8, (next() % 4) as u8, (next() % 256) as u8];
            let c = Cidr::V4(addr, len).masked();
            if i % 2 == 0 { allow.push(c) } else { nodes.push(c) }
        }
        let text = format!(
            "[[interface]]\nname='e'\nzone='z'\n[zone.z]\nallow={:?}\n[cluster]\nnodes={:?}\n",
            allow.iter().map(Cidr::to_string).collect::<Vec<_>>(),
            nodes.iter().map(Cidr::to_string).collect::<Vec<_>>()
        );
        let cfg = Config::parse(&text, "t").unwrap();
        let compiled = cfg.compile();
        let reference = ReferencePolicy::new(&cfg, &HashMap::from([("e".into(), 1)]), &HashMap::from([("z".into(), 0)]));
        for _ in 0..500 {
            let addr = [10, (next() % 4) as u8, (next() % 4) as u8, (next() % 256) as u8];
            let lpm = compiled.zones[0]
                .sources_v4
                .iter()
                .filter(|((a, l), _)| Cidr::V4(*a, *l).contains(&Cidr::V4(addr, 32)))
                .max_by_key(|((_, l), _)| *l)
                .map_or(0, |(_, s)| *s);
            assert_eq!(lpm, reference.source_sets_v4(0, addr), "{addr:?} under {text}");
        }
    }
}
