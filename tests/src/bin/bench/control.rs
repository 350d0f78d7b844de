//! The control plane: how long a Maglev table takes to build, what one
//! flapping backend of 1000 costs the reconciler, how long a Swarm label
//! change takes to reach the kernel's maps, and how much memory the agent
//! holds, idle and with 1000 backends and 100k flows.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use harness::{
    config::{EdgeConfig, Vip},
    daemon::RunningDaemon,
    swarm::SwarmLab,
    tls, Netns, Topology,
};
use lb_common::{
    balancer::{FlowEntry, FlowKey, ServiceKey},
    maglev::{self, Backend, DEFAULT_TABLE_SIZE},
    wire::FAMILY_V4,
};
use lb_user::{
    datapath::{
        loader::{remove_pins, MapSizes},
        maps::{addr_key, BalancerMaps},
    },
    reconcile::Reconciler,
    source::{config::Config, health::Down},
};

use crate::{
    report::{BarChart, Section, Summary},
    Opts,
};

pub fn run(opts: &Opts) -> Result<Section> {
    let mut md = String::new();
    let mut charts = Vec::new();
    let (text, chart) = maglev_builds(opts)?;
    md.push_str(&text);
    charts.push(chart);
    md.push_str(&health_flap(opts)?);
    md.push_str(&swarm_sync(opts)?);
    let (text, chart) = agent_memory()?;
    md.push_str(&text);
    charts.push(chart);
    Ok(Section { name: "control", title: "Control plane: Maglev builds, a flapping backend, Swarm sync, agent memory".into(), markdown: md, charts })
}

/// `lb_common::maglev::build` for 3, 100 and 1000 backends, M = 65537,
/// the sizes interleaved round by round.
fn maglev_builds(opts: &Opts) -> Result<(String, BarChart)> {
    let sizes = [3usize, 100, 1000];
    let (rounds, builds) = if opts.quick { (3, 5) } else { (9, 20) };
    let mut samples = vec![Vec::new(); sizes.len()];
    let mut table = vec![0u32; DEFAULT_TABLE_SIZE as usize];
    for _ in 0..rounds {
        for (i, &n) in sizes.iter().enumerate() {
            // Keys as the writer makes them (a hash of the address), weights 1–3.
            let backends: Vec<Backend> =
                (0..n as u64).map(|k| Backend { key: k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed, weight: 1 + (k % 3) as u32 }).collect();
            let (mut next, mut credit) = (vec![0u64; n], vec![0u64; n]);
            let t = Instant::now();
            for _ in 0..builds {
                maglev::build(&backends, &mut table, &mut next, &mut credit).map_err(|e| anyhow::anyhow!("maglev build: {e:?}"))?;
            }
            samples[i].push(t.elapsed().as_secs_f64() * 1e3 / builds as f64);
            ensure!(table.iter().all(|&s| (s as usize) < n), "a slot left empty with {n} backends");
        }
    }
    let mut md = String::new();
    writeln!(md, "## Maglev table build (M = {DEFAULT_TABLE_SIZE})\n")?;
    writeln!(
        md,
        "`lb_common::maglev::build` (the table the agent writes per VIP), weights 1–3; {rounds} interleaved rounds of {builds} builds; median (min–max) ms per build. Every slot is checked to hold a backend.\n"
    )?;
    writeln!(md, "| backends | ms per build |\n| ---: | ---: |")?;
    let mut bars = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let s = Summary::of(&samples[i]);
        writeln!(md, "| {n} | {} |", s.show(2))?;
        bars.push((format!("{n} backends"), s));
    }
    md.push('\n');
    let chart = BarChart { file: "control-maglev".into(), title: format!("Maglev table build, M = {DEFAULT_TABLE_SIZE}"), unit: "ms per build".into(), bars };
    Ok((md, chart))
}

/// The edge of the flap and memory rows: `e-out` (198.51.100.1/24) and
/// `e-in` (10.1.0.1/16) in a namespace of their own.
fn edge(topo: &mut Topology, tag: &str) -> Netns {
    let edge = topo.netns(tag);
    topo.veth(&edge, "e-out", &edge, "e-out-p");
    topo.veth(&edge, "e-in", &edge, "e-in-p");
    topo.addr(&edge, "e-out", "198.51.100.1/24");
    topo.addr(&edge, "e-in", "10.1.0.1/16");
    // The balancer refuses interfaces that do not forward.
    topo.forwarding(&edge);
    edge
}

/// The balancer section of a config: the VIP `web` with `n` backends.
fn vip_with_backends(n: usize) -> String {
    let backends: Vec<String> = (0..n).map(|i| format!("\"{}\"", backend(i))).collect();
    format!(
        "[balancer]\noutside_interfaces = [\"e-out\"]\ninside_interface = \"e-in\"\n\n[[vip]]\nname = \"web\"\naddress = \"203.0.113.10\"\nrules = [\"tcp/443\"]\nbackends = [{}]\n",
        backends.join(", ")
    )
}

/// The address of backend `i` of [`vip_with_backends`].
fn backend(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 1 + (i / 250) as u8, 2 + (i % 250) as u8))
}

/// One backend of a VIP with 1000 going down and up again, as the health
/// checks report it: the map writes and the time of each flip, through
/// the reconciler's health input (what the agent does now) and with a full
/// apply on top (what it did before the reconciler diffed: interfaces
/// resolved, addresses read, every writer run). In process, on the
/// library's `Reconciler`, in a namespace of its own.
fn health_flap(opts: &Opts) -> Result<String> {
    let flips = if opts.quick { 10 } else { 40 };
    let mut topo = Topology::new();
    let edge = edge(&mut topo, "bflap");
    let pins = harness::pins::private_pin_dir("lab", "flap");
    let body = format!("[settings]\npin_path = \"{}\"\n\n{}", pins.display(), vip_with_backends(1000));
    let cfg = Config::parse(&body, "flap.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let measured = edge.run(|| -> Result<_> {
        let mut r = Reconciler::load(&pins, MapSizes::of(cfg.balancer()))?;
        r.set_config(cfg.clone(), Default::default())?;
        let flapping: Down = [("web".to_owned(), backend(0))].into_iter().collect();
        // (writes, ms) per flip: [after, before], interleaved flip by flip.
        let mut samples = [Vec::new(), Vec::new()];
        for i in 0..flips {
            let down = if i % 2 == 0 { flapping.clone() } else { Down::default() };
            let full = i % 4 >= 2;
            let t = Instant::now();
            let mut writes = r.set_health(down)?.map_writes;
            if full {
                writes += r.set_config(cfg.clone(), Default::default())?.map_writes;
            }
            samples[usize::from(full)].push((writes as f64, t.elapsed().as_secs_f64() * 1e3));
        }
        Ok(samples)
    });
    let _ = remove_pins(&pins);
    let samples = measured?;
    let mut md = String::new();
    writeln!(md, "## One backend of 1000 flapping
")?;
    writeln!(
        md,
        "A VIP with 1000 backends (M = {DEFAULT_TABLE_SIZE}), one of them taken out and put back by the health checks' verdict, {flips} flips alternating between the two ways; median (min–max) map updates and deletes, and ms, per flip. *Full apply*: the flip followed by a config reload, which is what every flip cost before the reconciler diffed (interfaces resolved, addresses read, the isolator's policy and the impossible-source tries rewritten); before the writer wrote table halves slot by slot, that also wrote the VIP's whole idle half (65 537 slots: 66 562 writes and 49 ms per flip on this machine). *Health input*: what a flip costs now: the backend's entry and the service's flip to the other half, which already holds the table without the backend (the maximum is the first flip, which writes the half once).\n"
    )?;
    writeln!(md, "| per flip | map writes | ms |\n| --- | ---: | ---: |")?;
    for (name, s) in [("full apply (before)", &samples[1]), ("health input (now)", &samples[0])] {
        let writes: Vec<f64> = s.iter().map(|(w, _)| *w).collect();
        let ms: Vec<f64> = s.iter().map(|(_, ms)| *ms).collect();
        writeln!(md, "| {name} | {} | {} |", Summary::of(&writes).show(0), Summary::of(&ms).show(2))?;
    }
    md.push('\n');
    Ok(md)
}

/// Resident and peak resident memory of `daemon`, in MiB.
fn memory(daemon: &RunningDaemon) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.pid()))?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
}

fn open_maps(daemon: &RunningDaemon) -> Result<BalancerMaps> {
    BalancerMaps::open(&daemon.inst.pin_path)
}

/// Whether the backend `addr` has slots in the active Maglev table of
/// the VIP 203.0.113.10 tcp/80: what "the kernel's map is updated" means.
/// With the node and one static backend at equal weight, half the slots
/// are the node's; the first 64 slots of the table all missing it has a
/// chance of 2^-64, so sampling them (not 65537 map reads) decides.
fn has_slots(maps: &BalancerMaps, addr: IpAddr) -> Result<bool> {
    let (key, _) = addr_key(addr);
    let (vip, family) = addr_key(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)));
    let Ok(svc) = maps.services.get(&ServiceKey { addr: vip, port: 80, proto: 6, family }, 0) else {
        return Ok(false);
    };
    for slot in svc.table_base..svc.table_base + 64 {
        let id = maps.maglev.get(&slot, 0)?;
        if maps.backends.get(&id, 0).is_ok_and(|b| !b.is_vacant() && b.addr == key) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A one-node Swarm, an edge running the agent with `backends_from`, and
/// rounds of `docker node update --label-add/--label-rm`, timing each
/// until the backend has (or no longer has) Maglev slots in the pinned maps.
fn swarm_sync(opts: &Opts) -> Result<String> {
    let rounds = if opts.quick { 3 } else { 7 };
    let mut lab = SwarmLab::new("bsync", 1).context("a one-node Swarm")?;
    let mut topo = Topology::new();
    let edge = topo.netns("bsynce");
    let outside = topo.netns("bsyncc");
    topo.veth(&outside, "c-out", &edge, "e-out");
    topo.addr(&edge, "e-out", "198.51.100.1/24");
    lab.attach(&edge, "e-in", "10.2.0.1/24");
    topo.forwarding(&edge);
    let node = IpAddr::V4(lab.nodes()[0].addr);
    let agent = RunningDaemon::start(
        &edge,
        "benchsync",
        &EdgeConfig::balancer()
            .swarm(&format!("unix://{}", lab.manager_socket().display()))
            .vip(
                Vip::new("web", IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), &["tcp/80"])
                    .backends([IpAddr::V4(Ipv4Addr::new(10, 2, 0, 99))])
                    .backends_from("node.labels.lb==proxy"),
            )
            .to_toml(),
    );
    let maps = open_maps(&agent)?;
    let (mut added, mut removed, mut cli) = (Vec::new(), Vec::new(), Vec::new());
    let wait = |want: bool| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while has_slots(&maps, node)? != want {
            if Instant::now() > deadline {
                bail!("the label change did not reach the maps within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    };
    for _ in 0..rounds {
        let t = Instant::now();
        lab.label_add(0, "lb", "proxy")?;
        cli.push(t.elapsed().as_secs_f64() * 1e3);
        wait(true)?;
        added.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        lab.label_rm(0, "lb")?;
        cli.push(t.elapsed().as_secs_f64() * 1e3);
        // Unlabelled: drained (weight 0, no slots) at once.
        wait(false)?;
        removed.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(agent);
    drop(topo);
    drop(lab);
    let mut md = String::new();
    writeln!(md, "## Swarm label change → kernel maps\n")?;
    writeln!(
        md,
        "A real one-node Swarm (dockerd in its own namespaces), the agent following it over the API socket; {rounds} rounds of `docker node update --label-add lb=proxy` then `--label-rm lb`, each timed from the command's start until the node's backend has (has no longer) Maglev slots in the pinned maps, polled every 2 ms. The time includes the `docker` command itself, shown on its own.\n"
    )?;
    writeln!(md, "| change | ms, median (min–max) |\n| --- | ---: |")?;
    writeln!(md, "| label added → backend in the Maglev table | {} |", Summary::of(&added).show(0))?;
    writeln!(md, "| label removed → backend drained (no slots) | {} |", Summary::of(&removed).show(0))?;
    writeln!(md, "| of which: the `docker node update` command | {} |\n", Summary::of(&cli).show(0))?;
    Ok(md)
}

/// Fills the flow table with `n` flows on the backends in the maps.
fn fill_flows(maps: &mut BalancerMaps, vip: Ipv4Addr, n: u32) -> Result<()> {
    let backends: Vec<(u32, u32)> =
        (0..).zip(maps.backends.iter()).filter_map(|(id, b)| b.ok().filter(|b| !b.is_vacant()).map(|b| (id, b.generation))).collect();
    ensure!(!backends.is_empty(), "no backends to place flows on");
    let (dst, _) = addr_key(IpAddr::V4(vip));
    for i in 0..n {
        let src = Ipv4Addr::from(0xc633_0000 | (i >> 14)); // 198.51.x.y, 16384 ports each
        let (src, _) = addr_key(IpAddr::V4(src));
        let key = FlowKey { src, dst, src_port: 10_000 + (i & 0x3fff) as u16, dst_port: 443, proto: 6, family: FAMILY_V4, _pad: [0; 2] };
        let (backend, generation) = backends[i as usize % backends.len()];
        maps.flows.insert(key, FlowEntry { backend, generation, nat_port: 0, ..FlowEntry::default() }, 0)?;
    }
    Ok(())
}

/// Scrapes the agent's metrics endpoint from inside `ns` (the endpoint
/// walks every map, flows included: the agent's working set at its largest).
fn scrape(ns: &Netns) -> Result<usize> {
    let sock = tls::connect(ns, "127.0.0.1:9469".parse()?)?;
    let (status, body) = tls::http_get(sock, "127.0.0.1", "/metrics")?;
    ensure!(status == 200, "metrics: {status} {body}");
    Ok(body.len())
}

/// The agent's resident memory: isolator only, a VIP with 3 backends,
/// 1000 backends, and 1000 backends with 100k flows in the table, each
/// read after a metrics scrape.
fn agent_memory() -> Result<(String, BarChart)> {
    let mut topo = Topology::new();
    let edge = edge(&mut topo, "bmem");
    let isolator = "[[interface]]\nname = \"e-out\"\nzone = \"dmz\"\n\n[zone.dmz]\nprotected = [\"tcp/5432\"]\n";
    let vip = vip_with_backends;
    let mut rows = Vec::new();
    for (name, body, flows) in [
        ("isolator only (idle)", isolator.to_owned(), 0u32),
        ("a VIP with 3 backends", vip(3), 0),
        ("a VIP with 1000 backends", vip(1000), 0),
        ("1000 backends + 100k flows", vip(1000), 100_000),
    ] {
        let agent = RunningDaemon::start(&edge, "benchmem", &body);
        if flows > 0 {
            fill_flows(&mut open_maps(&agent)?, Ipv4Addr::new(203, 0, 113, 10), flows)?;
        }
        // Let the first health-check rounds and housekeeping run.
        std::thread::sleep(Duration::from_secs(3));
        let bytes = scrape(&edge)?;
        let (rss, peak) = memory(&agent)?;
        rows.push((name, rss, peak, bytes));
    }
    let mut md = String::new();
    writeln!(md, "## Agent memory\n")?;
    writeln!(md, "`swarmlb run` in a namespace, static config; read from /proc/<pid>/status 3 s after start and after one scrape of the metrics endpoint (which walks every map, the flow table included). Flows are written into the pinned flow table directly. Kernel map memory is not in the agent's RSS.\n")?;
    writeln!(md, "| agent with | RSS MiB | peak RSS MiB | metrics body bytes |\n| --- | ---: | ---: | ---: |")?;
    let mut bars = Vec::new();
    for (name, rss, peak, bytes) in rows {
        writeln!(md, "| {name} | {rss:.1} | {peak:.1} | {bytes} |")?;
        bars.push((name.to_owned(), Summary::of(&[rss])));
    }
    md.push('\n');
    let chart = BarChart { file: "control-memory".into(), title: "Agent resident memory".into(), unit: "MiB (VmRSS)".into(), bars };
    Ok((md, chart))
}
