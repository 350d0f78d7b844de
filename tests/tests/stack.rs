//! deploy/stack.yml on the Docker the machine has (Debian's docker.io
//! 20.10, issue 14): the image built from the tree with deploy/Dockerfile
//! and .dockerignore, `docker stack deploy` on the harness's three-node
//! Swarm, the agent's task attaching its XDP program in the edge node's
//! namespace and forwarding, then a rolling update of the service that
//! breaks no connection: the old task leaves the programs attached on
//! their pinned links (on the host's bpffs, which the node shares with its
//! tasks), the new one adopts them.
//!
//! What the test supplies that a user's machine has: a base image (no
//! registry here: one assembled from the libraries the binary links,
//! passed as `--build-arg BASE`) and the config file the stack's
//! `SWARMLB_CONFIG` names.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    daemon::{swarmlb_bin, wait_until, Instance},
    http::{check, who},
    xdp::attached,
};
use harness::{
    config::{EdgeConfig, Vip},
    image::Rootfs,
    nginx::Nginx,
    stream::Stream,
    swarm::SwarmLab,
    tls::{self, TestCa},
    Topology,
};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const BASE_IMAGE: &str = "swarmlb-test/base:1";
const IMAGE: &str = "swarmlb:local";

/// `docker` against the manager, with `envs`, from the workspace root.
fn docker(lab: &SwarmLab, args: &[&str], envs: &[(&str, &str)]) -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", lab.manager_socket().display()))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(&workspace)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "docker {}: {text}", args.join(" "));
    text
}

/// The running agent container on the manager (the edge node).
fn agent_container(lab: &SwarmLab) -> Option<String> {
    let ids = lab.docker(0, &["ps", "-q", "--filter", "name=swarmlb_agent", "--filter", "status=running"]).ok()?;
    ids.lines().next().map(str::to_owned)
}

/// `swarmlb status --json` inside the agent's container, as the stack
/// file says to ask it.
fn status(lab: &SwarmLab) -> Option<serde_json::Value> {
    let id = agent_container(lab)?;
    let out = lab.docker(0, &["exec", &id, "swarmlb", "status", "--json"]).ok()?;
    serde_json::from_str(&out).ok()
}

#[test]
fn the_stack_runs_on_docker_20_10_and_updates_hitlessly() {
    harness::require_root().unwrap();
    let t0 = Instant::now();
    // Declared first, dropped last: after the lab has killed the tasks,
    // the pins on the host's bpffs go.
    let inst = Instance::new(
        "stack",
        &EdgeConfig::balancer()
            .interfaces(&["eth1"], "eth0")
            .vip(Vip::new("web", IpAddr::V4(VIP), &["tcp/80"]).backends_from("node.labels.lb==proxy"))
            .swarm("unix:///var/run/docker.sock")
            .to_toml(),
    );
    let lab = SwarmLab::new("stk", 3).expect("a three-node swarm");
    let mut topo = Topology::new();
    let client = topo.netns("stkc");
    let edge = &lab.nodes()[0].ns;
    topo.veth(&client, "c-out", edge, "eth1");
    topo.addr(&client, "c-out", "198.51.100.2/24");
    topo.addr(edge, "eth1", "198.51.100.1/24");
    topo.route(&client, "203.0.113.0/24", "198.51.100.1");
    // Full checksums on what the balancer rewrites; GRO where it redirects
    // into a veth (as in the other Swarm tests).
    client.exec(&["ethtool", "-K", "c-out", "tx", "off", "gro", "on"]).unwrap();
    for n in lab.nodes() {
        n.ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    // The edge node's port on the switch (nodes are plugged in order).
    lab.switch.exec(&["ethtool", "-K", "p1", "gro", "on"]).unwrap();
    lab.label_add(0, "swarmlb.edge", "true").unwrap();
    lab.label_add(1, "lb", "proxy").unwrap();
    lab.label_add(2, "lb", "proxy").unwrap();
    let ca = TestCa::new();
    let any: [IpAddr; 1] = ["0.0.0.0".parse().unwrap()];
    let _proxies: Vec<Nginx> =
        lab.nodes()[1..].iter().map(|n| Nginx::start(&n.ns, &n.hostname, &any, &ca, &["a.com"]).expect("nginx on the worker")).collect();
    let workers: BTreeSet<String> = lab.nodes()[1..].iter().map(|n| n.hostname.clone()).collect();

    // The image, from the tree: the base has what the binary links.
    let bin = swarmlb_bin();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    assert_eq!(bin.canonicalize().unwrap(), workspace.join("target/release/swarmlb"), "deploy/Dockerfile copies target/release/swarmlb");
    let base = Rootfs::new(&inst.dir.join("base")).unwrap();
    base.libraries_of(&bin).unwrap().dir("/tmp").unwrap();
    lab.import_rootfs(base.path(), BASE_IMAGE, &[]).unwrap();
    let build = docker(
        &lab,
        &["build", "--build-arg", &format!("BASE={BASE_IMAGE}"), "-f", "deploy/Dockerfile", "-t", IMAGE, "."],
        &[("DOCKER_BUILDKIT", "0")],
    );
    // "Sending build context to Docker daemon  9.1MB": the binary, not target/.
    // The line is redrawn with carriage returns as the upload goes on.
    let context = build.lines().find(|l| l.contains("build context")).unwrap_or_else(|| panic!("{build}"));
    let context = context.split('\r').map(str::trim).filter(|s| !s.is_empty()).last().unwrap();
    let size = context.rsplit(' ').next().unwrap();
    assert!(size.ends_with("MB") && size.trim_end_matches("MB").parse::<f64>().unwrap() < 64.0, "the build context is {size}: {build}");
    println!("image built from the tree ({context}), {:.1} s into the test", t0.elapsed().as_secs_f64());

    // Deploy the stack as its comment says.
    let config = inst.config.display().to_string();
    let stack = "deploy/stack.yml";
    docker(&lab, &["stack", "deploy", "-c", stack, "swarmlb"], &[("SWARMLB_CONFIG", &config)]);
    let t_deploy = Instant::now();
    wait_until(
        Duration::from_secs(60),
        || attached(edge, "eth1") && status(&lab).is_some_and(|s| s["vips"][0]["backends"].as_array().is_some_and(|b| b.len() == 2)),
        || format!("the agent's task: {}", docker(&lab, &["service", "ps", "--no-trunc", "swarmlb_agent"], &[])),
    );
    println!("stack deployed → XDP attached on the edge node and both backends in {:.1} s", t_deploy.elapsed().as_secs_f64());
    assert!(inst.pin_path.exists(), "the pins are on the host's bpffs at {}", inst.pin_path.display());
    let answered: BTreeSet<String> = (0..30).map(|_| who(&client, IpAddr::V4(VIP))).collect();
    assert_eq!(answered, workers, "connections through the VIP");

    // A rolling update: the task is replaced while streams go on and new
    // connections keep coming.
    let first = agent_container(&lab).unwrap();
    let mut streams: Vec<Stream> = (0..12).map(|_| Stream::open(&client, IpAddr::V4(VIP))).collect();
    let t_update = Instant::now();
    let socket = lab.manager_socket().to_owned();
    // `docker service update` returns once the service converged.
    let update = std::thread::spawn(move || {
        Command::new("docker").arg("-H").arg(format!("unix://{}", socket.display())).args(["service", "update", "--force", "swarmlb_agent"]).output().unwrap()
    });
    let (mut served, mut failed) = (0, Vec::new());
    while !update.is_finished() {
        let vip = SocketAddr::new(IpAddr::V4(VIP), 80);
        match tls::connect(&client, vip).and_then(|s| tls::http_get(s, "a.com", "/")) {
            Ok((200, body)) if workers.contains(body.trim().trim_start_matches("worker=")) => served += 1,
            other => failed.push(format!("{other:?}")),
        }
    }
    let out = update.join().unwrap();
    assert!(out.status.success(), "service update: {}", String::from_utf8_lossy(&out.stderr));
    println!(
        "rolling update: converged {:.1} s after `service update --force`; {served} new connections served meanwhile, {} failed",
        t_update.elapsed().as_secs_f64(),
        failed.len()
    );
    let second = agent_container(&lab).expect("the new task runs");
    assert_ne!(first, second, "the task was replaced");
    let logs = docker(&lab, &["service", "logs", "--raw", "swarmlb_agent"], &[]);
    let broken = check(&mut streams);
    assert!(failed.is_empty() && broken.is_empty(), "new connections failed: {failed:?}; streams broken: {broken:?}; agent logs:\n{logs}");
    assert!(logs.contains("adopting the running data path"), "the new task adopted the pinned data path:\n{logs}");
    assert!(attached(edge, "eth1"));
    let answered: BTreeSet<String> = (0..20).map(|_| who(&client, IpAddr::V4(VIP))).collect();
    assert_eq!(answered, workers, "connections through the VIP after the update");

    docker(&lab, &["stack", "rm", "swarmlb"], &[]);
    wait_until(Duration::from_secs(30), || agent_container(&lab).is_none(), || "the agent's task stops".into());
    // The data path stays until `swarmlb down`, as with the systemd unit.
    assert!(attached(edge, "eth1"), "the data path stays after the stack is removed");
    assert!(inst.down().status.success());
}
