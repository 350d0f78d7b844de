//! docs/quickstart.md, followed as written (issue 14): the built Debian
//! package installed into a private root, the page's shell blocks run in
//! order where they say (`sh edge`, `sh manager`, `sh client`) and its
//! config block written where it says, on a real three-node Swarm (the
//! harness's [`SwarmLab`]): two labelled workers run the page's proxy stack
//! (nginx, `mode: host` 443/80), an edge namespace with `eth1` (outside)
//! and `eth2` (the workers' LAN) runs the agent from the package's unit,
//! and a client on the outside segment checks the page's TLS and HTTP
//! answers through the VIP.
//!
//! What the test changes on the page, all in [`Page::substitute`] and
//! [`Page::run_edge_line`]: the edge's paths (`/etc/swarmlb/`, the pin
//! path, the runtime dir through `SWARMLB_RUNTIME_DIR`) become the test's
//! own; the Docker socket in the config becomes the lab manager's; the
//! worker names become the lab's; `apt install` becomes `dpkg -x` into the
//! private root; `systemctl enable --now swarmlb` runs the installed
//! unit's `ExecStartPre=` and `ExecStart=` and waits for its `READY=1`, as
//! systemd does; the proxy image is one built from Debian's nginx (no
//! registry here); curl and openssl trust the test CA.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::daemon::{wait_until, Instance};
use harness::{image::Rootfs, swarm::SwarmLab, tls, ChildGuard, Netns, Topology};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The proxy image the test builds (the page's stack takes `PROXY_IMAGE`).
const PROXY_IMAGE: &str = "swarmlb-test/nginx:1";
/// The name the page's certificate is for.
const SITE: &str = "www.example.com";

/// A fenced block of the page with a role: `sh edge|manager|client` or
/// `toml file=PATH`.
struct Block {
    info: String,
    text: String,
}

/// The page's blocks that the test runs, in order.
fn blocks(page: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for line in page.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some(Block { info: info.trim().to_owned(), text: String::new() }),
            (Some(_), Some(_)) => {
                let b = open.take().unwrap();
                if b.info.starts_with("sh ") || b.info.starts_with("toml file=") {
                    out.push(b);
                }
            }
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The built package: `SWARMLB_DEB` (`cargo xtask test` builds it), else
/// the one `cargo xtask package` left in target/package/.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("SWARMLB_DEB") {
        return PathBuf::from(deb);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/package");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "deb")))
        .unwrap_or_else(|| panic!("no package in {}: run `cargo xtask package` (or `cargo xtask test`)", dir.display()))
}

/// Runs `script` with `sh -e` (in `ns` if given); returns stdout, panics
/// with both outputs on failure.
fn sh(ns: Option<&Netns>, script: &str, envs: &[(&str, String)], cwd: &Path) -> String {
    let run = || {
        let mut cmd = Command::new("sh");
        cmd.arg("-ec").arg(script).current_dir(cwd);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().expect("running sh")
    };
    let out = match ns {
        Some(ns) => ns.run(run),
        None => run(),
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    println!("$ {}\n{stdout}{stderr}", script.trim().replace('\n', "\n$ "));
    assert!(out.status.success(), "the page's commands failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// The site and what the page's steps set up in it.
struct Page<'a> {
    lab: &'a SwarmLab,
    edge: &'a Netns,
    client: &'a Netns,
    inst: &'a Instance,
    deb: PathBuf,
    /// The package's files (`dpkg -x`).
    root: PathBuf,
    /// The manager's `~` (HOME), with `~/proxy` as the page prepares it.
    home: PathBuf,
    ca_file: PathBuf,
    /// The agent the unit started.
    agent: Option<ChildGuard>,
}

impl Page<'_> {
    /// The page's text with the test's paths and names.
    fn substitute(&self, text: &str) -> String {
        text.replace("/etc/swarmlb/", &format!("{}/etc/swarmlb/", self.root.display()))
            .replace("/sys/fs/bpf/swarmlb", &self.inst.pin_path.display().to_string())
            .replace("unix:///var/run/docker.sock", &format!("unix://{}", self.lab.manager_socket().display()))
            .replace("worker1", &self.lab.nodes()[1].hostname)
            .replace("worker2", &self.lab.nodes()[2].hostname)
    }

    fn edge_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PATH", format!("{}/usr/bin:{}", self.root.display(), std::env::var("PATH").unwrap_or_default())),
            ("SWARMLB_RUNTIME_DIR", self.inst.runtime_dir.display().to_string()),
        ]
    }

    /// Runs one block; returns what it printed.
    fn run(&mut self, block: &Block) -> String {
        let text = self.substitute(&block.text);
        match block.info.as_str() {
            "sh edge" => {
                // Lines the test performs itself split the block; the
                // others run together, in order.
                let mut out = String::new();
                let mut pending = String::new();
                for line in text.lines() {
                    if line.starts_with("apt ") || line.starts_with("systemctl ") {
                        if !pending.is_empty() {
                            out += &sh(Some(self.edge), &pending, &self.edge_env(), &self.inst.dir);
                            pending.clear();
                        }
                        self.run_edge_line(line);
                    } else {
                        pending.push_str(line);
                        pending.push('\n');
                    }
                }
                if !pending.trim().is_empty() {
                    out += &sh(Some(self.edge), &pending, &self.edge_env(), &self.inst.dir);
                }
                out
            }
            "sh manager" => {
                let envs = [
                    ("DOCKER_HOST", format!("unix://{}", self.lab.manager_socket().display())),
                    ("HOME", self.home.display().to_string()),
                    ("PROXY_IMAGE", PROXY_IMAGE.to_owned()),
                ];
                sh(None, &text, &envs, &self.home)
            }
            "sh client" => {
                let ca = self.ca_file.display().to_string();
                sh(Some(self.client), &text, &[("CURL_CA_BUNDLE", ca.clone()), ("SSL_CERT_FILE", ca)], &self.inst.dir)
            }
            info => {
                let path = info.strip_prefix("toml file=").unwrap_or_else(|| panic!("a block the test does not know: {info}"));
                let path = self.substitute(path);
                std::fs::create_dir_all(Path::new(&path).parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
                String::new()
            }
        }
    }

    /// The edge's lines that manage the host: installing the package and
    /// starting the unit.
    fn run_edge_line(&mut self, line: &str) {
        let deb_name = self.deb.file_name().unwrap().to_string_lossy().into_owned();
        if line == format!("apt install ./{deb_name}") {
            let ok = Command::new("dpkg").arg("-x").arg(&self.deb).arg(&self.root).status().unwrap().success();
            assert!(ok, "dpkg -x {}", self.deb.display());
        } else if line == "systemctl enable --now swarmlb" {
            self.start_unit();
        } else {
            panic!("the page's `{line}` is not one the test knows how to run (the package built is {deb_name})");
        }
    }

    /// What `systemctl start swarmlb` does with the installed unit: its
    /// `ExecStartPre=`, then its `ExecStart=` with `$NOTIFY_SOCKET`; done
    /// at `READY=1`.
    fn start_unit(&mut self) {
        let unit = std::fs::read_to_string(self.root.join("lib/systemd/system/swarmlb.service")).unwrap();
        let exec = |key: &str| -> Vec<String> {
            let line = unit.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("the unit has no {key}"));
            let line = self
                .substitute(line)
                .replace("/usr/bin/swarmlb", &self.root.join("usr/bin/swarmlb").display().to_string())
                .replace("/run/swarmlb", &self.inst.runtime_dir.display().to_string());
            line.split_whitespace().map(str::to_owned).collect()
        };
        let pre = exec("ExecStartPre=");
        let out = self.edge.run(|| Command::new(&pre[0]).args(&pre[1..]).output().unwrap());
        assert!(out.status.success(), "ExecStartPre: {}", String::from_utf8_lossy(&out.stderr));
        let notify = self.inst.dir.join("notify.sock");
        let sock = UnixDatagram::bind(&notify).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let start = exec("ExecStart=");
        let mut cmd = Command::new(&start[0]);
        cmd.args(&start[1..]).env("NOTIFY_SOCKET", &notify).env("RUST_LOG", "info");
        let mut agent = self.edge.spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                    break;
                }
            }
            assert!(agent.try_status().is_none(), "the agent exited:\n{}", agent.output_so_far());
            assert!(Instant::now() < deadline, "no READY=1 within 30 s:\n{}", agent.output_so_far());
        }
        self.agent = Some(agent);
    }
}

/// An image with Debian's nginx (its binary and libraries), the users and
/// directories nginx looks for, run in the foreground as the official
/// image's is.
fn build_proxy_image(lab: &SwarmLab, dir: &Path) {
    let root = Rootfs::new(&dir.join("nginx-rootfs")).unwrap();
    root.executable("/usr/sbin/nginx")
        .unwrap()
        .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        .unwrap()
        .file("/etc/group", "root:x:0:\nnogroup:x:65534:\n")
        .unwrap()
        .file("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n")
        .unwrap();
    for d in ["/tmp", "/var/log/nginx", "/var/lib/nginx", "/run", "/var/www/acme"] {
        root.dir(d).unwrap();
    }
    lab.import_rootfs(root.path(), PROXY_IMAGE, &[r#"CMD ["/usr/sbin/nginx", "-g", "daemon off;"]"#]).unwrap();
}

#[test]
fn the_quick_start_as_written() {
    harness::require_root().unwrap();
    let page_text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/quickstart.md")).unwrap();
    let page_blocks = blocks(&page_text);
    let roles: BTreeSet<&str> = page_blocks.iter().map(|b| b.info.as_str()).collect();
    for want in ["sh edge", "sh manager", "sh client", "toml file=/etc/swarmlb/swarmlb.toml"] {
        assert!(roles.contains(want), "the page has no `{want}` block");
    }

    let t0 = Instant::now();
    let mut lab = SwarmLab::new("qs", 3).expect("a three-node swarm");
    let mut topo = Topology::new();
    let client = topo.netns("qsc");
    let edge = topo.netns("qse");
    topo.veth(&client, "c-out", &edge, "eth1");
    topo.addr(&client, "c-out", "203.0.113.100/24");
    topo.addr(&edge, "eth1", "203.0.113.2/24");
    let edge_port = lab.attach(&edge, "eth2", "10.2.0.1/24");
    // The balancer rewrites packets: they must carry full checksums (veth
    // leaves them to "offload"), and its redirects into a veth need GRO
    // on the peer (as in the other Swarm tests).
    for n in lab.nodes() {
        n.ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    client.exec(&["ethtool", "-K", "c-out", "tx", "off", "gro", "on"]).unwrap();
    lab.switch.exec(&["ethtool", "-K", &edge_port, "gro", "on"]).unwrap();

    let inst = Instance::new("quickstart", "");
    build_proxy_image(&lab, &inst.dir);
    // The manager's ~/proxy as the page asks for it: the two files from the
    // installed package (below) and the site's certificate and key.
    let ca = tls::TestCa::new();
    let ca_file = inst.dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let home = inst.dir.join("home");
    let proxy_dir = home.join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    let (cert, key) = ca.issue(&[SITE], SITE);
    std::fs::write(proxy_dir.join("site.crt"), cert).unwrap();
    std::fs::write(proxy_dir.join("site.key"), key).unwrap();
    println!("swarm, edge and client up in {:.1} s", t0.elapsed().as_secs_f64());

    let mut page = Page {
        lab: &lab,
        edge: &edge,
        client: &client,
        inst: &inst,
        deb: package(),
        root: inst.dir.join("root"),
        home: home.clone(),
        ca_file,
        agent: None,
    };
    let mut outputs = Vec::new();
    for block in &page_blocks {
        if block.info == "sh manager" && block.text.contains("stack deploy") {
            for f in ["proxy-stack.yml", "proxy-nginx.conf"] {
                std::fs::copy(page.root.join("usr/share/doc/swarmlb/examples").join(f), proxy_dir.join(f))
                    .unwrap_or_else(|e| panic!("{f} from the package: {e}"));
            }
        }
        if block.info == "sh client" {
            // The page reads `docker service ps` before going on: one
            // running task per labelled worker, listening.
            wait_until(
                Duration::from_secs(90),
                || {
                    lab.docker(0, &["service", "ps", "proxy_nginx", "--filter", "desired-state=running", "--format", "{{.CurrentState}}"])
                        .map(|s| s.lines().filter(|l| l.starts_with("Running")).count() == 2)
                        .unwrap_or(false)
                },
                || format!("proxy tasks: {:?}", lab.docker(0, &["service", "ps", "proxy_nginx", "--no-trunc"])),
            );
            for n in &lab.nodes()[1..] {
                wait_until(
                    Duration::from_secs(30),
                    || tls::connect(&edge, SocketAddr::new(IpAddr::from(n.addr), 443)).is_ok(),
                    || format!("nginx on {} listening on 443", n.hostname),
                );
            }
            println!("proxies running {:.1} s into the test", t0.elapsed().as_secs_f64());
        }
        outputs.push((block.info.clone(), page.run(block)));
    }

    // The page's own checks: the TLS answer names a labelled worker, the
    // handshake verified the proxies' certificate, port 80 redirects.
    let workers: Vec<String> = lab.nodes()[1..].iter().map(|n| n.hostname.clone()).collect();
    let client_out = &outputs.iter().find(|(i, _)| i == "sh client").unwrap().1;
    assert!(workers.iter().any(|w| client_out.contains(&format!("hello from {w}"))), "no labelled worker answered:\n{client_out}");
    assert!(client_out.contains("HTTP/1.1 301"), "port 80 did not redirect:\n{client_out}");
    let status_out = &outputs.iter().rev().find(|(i, _)| i == "sh edge").unwrap().1;
    // A backend's row starts with its address.
    let backend_row = |addr: Ipv4Addr| status_out.lines().any(|l| l.trim_start().starts_with(&format!("{addr} ")));
    for n in &lab.nodes()[1..] {
        assert!(backend_row(n.addr), "status lacks backend {}:\n{status_out}", n.addr);
    }
    assert!(!backend_row(lab.nodes()[0].addr), "the unlabelled manager is a backend:\n{status_out}");

    // Beyond the page: new connections spread over both labelled workers,
    // each handshake verified against the site's certificate.
    let config = tls::tls_client(&ca);
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let stream = tls::connect(&client, SocketAddr::new(IpAddr::V4(VIP), 443)).unwrap();
        let (code, body) = tls::https_get(stream, &config, SITE, "/").unwrap();
        assert_eq!(code, 200, "{body}");
        served.insert(body.trim().trim_start_matches("hello from ").to_owned());
    }
    assert_eq!(served, workers.iter().cloned().collect::<BTreeSet<_>>(), "30 connections through the VIP");

    // The man pages the installed units name are in the package.
    for unit in ["swarmlb.service", "swarmlb-backend.service"] {
        let text = std::fs::read_to_string(page.root.join("lib/systemd/system").join(unit)).unwrap();
        let docs = text.lines().find_map(|l| l.strip_prefix("Documentation=")).unwrap_or_else(|| panic!("{unit} has no Documentation="));
        for doc in docs.split_whitespace() {
            let name = doc.strip_prefix("man:").and_then(|m| m.strip_suffix("(1)")).unwrap_or_else(|| panic!("{unit}: {doc}"));
            let page_file = page.root.join(format!("usr/share/man/man1/{name}.1.gz"));
            let man = Command::new("man").arg("-l").arg(&page_file).env("MANWIDTH", "80").output().unwrap();
            assert!(man.status.success() && String::from_utf8_lossy(&man.stdout).contains(name), "{unit}'s {doc}: {}", page_file.display());
        }
    }

    // Stop as `systemctl stop` would, then take the data path off, as the
    // package's removal does.
    let mut agent = page.agent.take().expect("the unit was started");
    common::daemon::stop_cleanly(&mut agent, libc::SIGTERM);
    assert!(inst.down().status.success());
}
