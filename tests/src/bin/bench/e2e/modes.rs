//! The subjects: no balancer (and, as a control, no balancer with XDP
//! pass-through on the edge's veths), swarmlb's three modes, nftables
//! DNAT, nftables `fwd` and HAProxy. Each is installed for its turn and removed
//! after it ([`Installed`]'s drop), so no mode runs beside another.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use harness::{
    config::{EdgeConfig, Vip},
    daemon::{swarmlb_bin, RunningDaemon},
    edge_lab::{EDGE_INSIDE_V4, VIP_V4},
    ChildGuard, Netns,
};
use lb_user::datapath::loader::{remove_pins, Datapath, Program};

use super::lab::{client_addr, Lab, ADDRS_PER_MODE, BULK_VIP, IPERF_PORT};

/// A way through the edge.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// No balancer: the client spreads over the workers itself, the edge routes.
    Baseline,
    /// The baseline with a pass-through XDP program (the isolator without
    /// a zone) on the edge's two legs: what XDP on a veth costs by itself,
    /// the floor under any XDP balancer in this topology.
    XdpPass,
    SwarmlbNat,
    SwarmlbDsr,
    SwarmlbDsrL2,
    /// nftables DNAT (jhash over the client's address and port) through conntrack.
    NftDnat,
    /// [`Mode::NftDnat`] with masquerade towards the workers (the edge's
    /// address and a port of its own, as swarmlb's `nat`): the flood
    /// section's peer, not an e2e mode.
    NftDnatMasq,
    /// nftables netdev ingress `fwd` to a jhash-chosen backend (L2 DSR, no conntrack).
    NftFwd,
    /// HAProxy in TCP mode (a proxy: two connections per client connection).
    Haproxy,
}

/// Every mode, in the order of a round (the baseline first).
pub const ALL: [Mode; 8] = [
    Mode::Baseline,
    Mode::XdpPass,
    Mode::SwarmlbNat,
    Mode::SwarmlbDsr,
    Mode::SwarmlbDsrL2,
    Mode::NftDnat,
    Mode::NftFwd,
    Mode::Haproxy,
];

/// The HTTP and TLS ports every mode serves.
const PORTS: [u16; 2] = [80, 443];

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "no balancer (baseline)",
            Mode::XdpPass => "no balancer + XDP pass",
            Mode::SwarmlbNat => "swarmlb nat",
            Mode::SwarmlbDsr => "swarmlb dsr",
            Mode::SwarmlbDsrL2 => "swarmlb dsr-l2",
            Mode::NftDnat => "nftables DNAT",
            Mode::NftDnatMasq => "nftables DNAT+masquerade",
            Mode::NftFwd => "nftables fwd",
            Mode::Haproxy => "HAProxy tcp",
        }
    }

    /// Where the client connects on `port`: the workers, or the VIP.
    pub fn dsts(self, port: u16) -> Vec<SocketAddrV4> {
        match self {
            Mode::Baseline | Mode::XdpPass => Lab::workers().into_iter().map(|w| SocketAddrV4::new(w, port)).collect(),
            _ => vec![SocketAddrV4::new(VIP_V4, port)],
        }
    }

    /// Mode number `i`'s client addresses: one for the baseline, which
    /// rotates over three destinations, three for a single VIP.
    pub fn srcs(self, i: usize) -> Vec<Ipv4Addr> {
        let n = if matches!(self, Mode::Baseline | Mode::XdpPass) { 1 } else { ADDRS_PER_MODE };
        (0..n).map(|k| client_addr(i, k)).collect()
    }

    /// Where the bulk stream goes: worker 1, directly or through the bulk VIP.
    pub fn bulk_dst(self) -> SocketAddrV4 {
        match self {
            Mode::Baseline | Mode::XdpPass => SocketAddrV4::new(Lab::workers()[0], IPERF_PORT),
            _ => SocketAddrV4::new(BULK_VIP, IPERF_PORT),
        }
    }

    /// Installs the mode in the lab (`tag` keeps pins and files apart).
    pub fn install(self, lab: &Lab, tag: &str) -> Result<Installed> {
        let mut done = Installed::default();
        done.edge = Some(lab.lab.edge.clone());
        match self {
            Mode::Baseline => {}
            Mode::XdpPass => done.xdp_pass = Some(XdpPass::attach(&lab.lab.edge, tag)?),
            Mode::SwarmlbNat => done.swarmlb = Some(RunningDaemon::start(&lab.lab.edge, &format!("bench{tag}"), &swarmlb_config("nat"))),
            Mode::SwarmlbDsr | Mode::SwarmlbDsrL2 => {
                let mode = if self == Mode::SwarmlbDsr { "dsr" } else { "dsr-l2" };
                done.backends = backend_setup(lab, mode, tag)?;
                done.swarmlb = Some(RunningDaemon::start(&lab.lab.edge, &format!("bench{tag}"), &swarmlb_config(mode)));
            }
            Mode::NftDnat | Mode::NftDnatMasq => {
                let mut rules = nft_dnat();
                if self == Mode::NftDnatMasq {
                    rules = rules.replacen("\n}\n", &format!("\n{}}}\n", NFT_MASQUERADE), 1);
                }
                done.nft_table = Some(nft_load(&lab.lab.edge, "ip", &rules, tag)?);
                done.flush_conntrack = true;
            }
            Mode::NftFwd => {
                done.backends = backend_setup(lab, "dsr-l2", tag)?;
                done.nft_table = Some(nft_load(&lab.lab.edge, "netdev", &nft_fwd(), tag)?);
            }
            Mode::Haproxy => {
                for vip in [VIP_V4, BULK_VIP] {
                    harness::rtnl::addr(&lab.lab.edge, "lo", &format!("{vip}/32"))?;
                    done.edge_lo.push(vip);
                }
                done.haproxy = Some(haproxy(&lab.lab.edge, tag)?);
            }
        }
        Ok(done)
    }
}

/// Fails unless the previous turn left nothing behind: no XDP program on
/// the edge's legs or the workers, no nftables rules, no VIP on any `lo`.
/// (The lab's own pass-through programs sit on other interfaces.)
pub fn check_clean(lab: &Lab) -> Result<()> {
    let l = &lab.lab;
    let legs = [(&l.edge, "e-out"), (&l.edge, "e-in")].into_iter().chain(l.workers.iter().map(|w| (w, "eth0")));
    for (ns, dev) in legs {
        if ns.exec(&["ip", "-d", "link", "show", "dev", dev])?.contains("prog/xdp") {
            bail!("an XDP program is still attached to {dev} in {}", ns.name());
        }
    }
    let rules = l.edge.exec(&["nft", "list", "ruleset"])?;
    if !rules.trim().is_empty() {
        bail!("nftables rules left in the edge:\n{rules}");
    }
    for ns in std::iter::once(&l.edge).chain(&l.workers) {
        let lo = ns.exec(&["ip", "-o", "-4", "addr", "show", "dev", "lo"])?;
        if lo.contains("203.0.113.") {
            bail!("a VIP is left on lo in {}: {lo}", ns.name());
        }
    }
    Ok(())
}

/// What a mode put in place; removed on drop, also when a turn fails.
#[derive(Default)]
pub struct Installed {
    edge: Option<Netns>,
    swarmlb: Option<RunningDaemon>,
    xdp_pass: Option<XdpPass>,
    backends: Vec<BackendSetup>,
    nft_table: Option<String>,
    flush_conntrack: bool,
    haproxy: Option<(ChildGuard, PathBuf)>,
    edge_lo: Vec<Ipv4Addr>,
}

impl Installed {
    /// The mode's own processes (swarmlb or HAProxy) for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.swarmlb.iter().map(|s| s.child.pid()).chain(self.haproxy.iter().map(|h| h.0.pid())).collect()
    }
}

impl Installed {
    /// `swarmlb status --json`, when the mode is swarmlb's.
    pub fn status(&self) -> Option<serde_json::Value> {
        self.swarmlb.as_ref().map(|s| s.inst.status())
    }

    /// The output so far of the mode's process (swarmlb or HAProxy).
    pub fn log(&self) -> String {
        self.swarmlb.as_ref().map(|s| s.child.output_so_far()).or_else(|| self.haproxy.as_ref().map(|h| h.0.output_so_far())).unwrap_or_default()
    }

    /// swarmlb's drop counters that are not zero (`swarmlb status --json`),
    /// e.g. `drop_no_neighbour 3`; empty for the other modes.
    pub fn drops(&self) -> Result<String> {
        let Some(s) = &self.swarmlb else { return Ok(String::new()) };
        let status = s.inst.status();
        let counters = status["balancer"].as_object().context("no balancer counters in swarmlb status")?;
        let drops: Vec<String> = counters
            .iter()
            .filter(|(k, v)| k.starts_with("drop_") && v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        Ok(drops.join(", "))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.swarmlb.take();
        self.xdp_pass.take();
        self.backends.clear();
        if let Some((mut child, dir)) = self.haproxy.take() {
            child.terminate(Duration::from_secs(2));
            let _ = std::fs::remove_dir_all(dir);
        }
        let Some(edge) = &self.edge else { return };
        for vip in &self.edge_lo {
            let _ = harness::rtnl::addr_del(edge, "lo", &format!("{vip}/32"));
        }
        if let Some(t) = &self.nft_table {
            let _ = edge.exec(&["nft", "delete", "table", t]);
        }
        // The next mode must not meet this one's connection-tracking entries.
        if self.flush_conntrack {
            let _ = edge.exec(&["conntrack", "-F"]);
        }
    }
}

/// A private directory for one turn's files.
fn turn_dir(what: &str, tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("swl-bench-{}-{what}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The lab's pass-through program on the edge's legs, loaded in this
/// process (no daemon); detached and unpinned on drop.
struct XdpPass {
    datapath: Datapath,
    pins: PathBuf,
}

impl XdpPass {
    fn attach(edge: &Netns, tag: &str) -> Result<Self> {
        let pins = harness::pins::private_pin_dir("lab", &format!("bench{tag}"));
        let _ = remove_pins(&pins);
        // The table size is irrelevant to the isolator; the smallest prime
        // the lab uses keeps the load quick.
        let datapath = Datapath::load(&pins, lb_user::datapath::loader::MapSizes::with_table(251))?;
        let mut pass = Self { datapath, pins };
        for dev in ["e-out", "e-in"] {
            edge.run(|| pass.datapath.attach(dev, Program::Isolator)).with_context(|| format!("XDP pass on {dev}"))?;
        }
        Ok(pass)
    }
}

impl Drop for XdpPass {
    fn drop(&mut self) {
        self.datapath.detach_all();
        let _ = remove_pins(&self.pins);
    }
}

fn swarmlb_config(mode: &str) -> String {
    let workers: Vec<IpAddr> = Lab::workers().into_iter().map(IpAddr::V4).collect();
    EdgeConfig::balancer()
        .vip(Vip::new("web", IpAddr::V4(VIP_V4), &["tcp/80", "tcp/443"]).mode(mode).backends(workers.clone()))
        .vip(Vip::new("bulk", IpAddr::V4(BULK_VIP), &[&format!("tcp/{IPERF_PORT}")]).mode(mode).backends([workers[0]]))
        .to_toml()
}

/// One worker's `swarmlb backend-setup`; `--undo` on drop.
struct BackendSetup {
    ns: Netns,
    pins: PathBuf,
    state: PathBuf,
}

impl BackendSetup {
    fn run(ns: &Netns, pins: &Path, state: &Path, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(swarmlb_bin());
        cmd.arg("backend-setup").arg("--pin-path").arg(pins).arg("--state-dir").arg(state).args(args);
        // Spawned with setns, not `ip netns exec`, which would remount /sys
        // and pin into a bpffs that dies with the command.
        let mut child = ns.try_spawn(&mut cmd)?;
        let status = child.wait_timeout(Duration::from_secs(20)).context("backend-setup hangs")?;
        if !status.success() {
            bail!("backend-setup {args:?}: {status}\n{}", child.output_so_far());
        }
        Ok(())
    }
}

impl Drop for BackendSetup {
    fn drop(&mut self) {
        let _ = Self::run(&self.ns, &self.pins, &self.state, &["--undo"]);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Every worker set up for `mode` (`dsr` or `dsr-l2`): VIPs on lo, ARP
/// sysctls, and for `dsr` the decapsulation program.
fn backend_setup(lab: &Lab, mode: &str, tag: &str) -> Result<Vec<BackendSetup>> {
    let mut done = Vec::new();
    for (i, w) in lab.lab.workers.iter().enumerate() {
        let pins = harness::pins::private_pin_dir("bs", &format!("bench{tag}w{i}"));
        let state = turn_dir(&format!("bs{i}"), tag)?;
        let (vip, bulk, edge) = (VIP_V4.to_string(), BULK_VIP.to_string(), EDGE_INSIDE_V4.to_string());
        let args = ["--interface", "eth0", "--mode", mode, "--vip", &vip, "--vip", &bulk, "--edge", &edge];
        BackendSetup::run(w, &pins, &state, &args)?;
        done.push(BackendSetup { ns: w.clone(), pins, state });
    }
    Ok(done)
}

/// The jhash map from a hash bucket to a worker.
fn backend_map() -> String {
    Lab::workers().iter().enumerate().map(|(i, w)| format!("{i} : {w}")).collect::<Vec<_>>().join(", ")
}

/// DNAT only (as IPVS-NAT would): the workers route their replies through
/// the edge, where conntrack reverses the translation.
fn nft_dnat() -> String {
    let first = Lab::workers()[0];
    format!(
        "table ip swlbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {VIP_V4} tcp dport {{ 80, 443 }} dnat to jhash ip saddr . tcp sport mod 3 map {{ {} }}\n    \
         ip daddr {BULK_VIP} tcp dport {IPERF_PORT} dnat to {first}\n  }}\n}}\n",
        backend_map()
    )
}

/// The postrouting chain of [`Mode::NftDnatMasq`] (inside the table).
const NFT_MASQUERADE: &str =
    "  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"e-in\" ct status dnat masquerade\n  }\n";

/// Ingress on the outside leg, straight to the inside leg with the
/// backend's MAC: the in-kernel L2 DSR, before routing and conntrack.
fn nft_fwd() -> String {
    let first = Lab::workers()[0];
    format!(
        "table netdev swlbench {{\n  chain ing {{\n    type filter hook ingress device \"e-out\" priority 0; policy accept;\n    \
         ip daddr {VIP_V4} tcp dport {{ 80, 443 }} fwd ip to jhash ip saddr . tcp sport mod 3 map {{ {} }} device \"e-in\"\n    \
         ip daddr {BULK_VIP} tcp dport {IPERF_PORT} fwd ip to {first} device \"e-in\"\n  }}\n}}\n",
        backend_map()
    )
}

/// Loads `rules` (one table `swlbench` of `family`); returns the table's
/// name for `nft delete table`.
fn nft_load(edge: &Netns, family: &str, rules: &str, tag: &str) -> Result<String> {
    let file = turn_dir("nft", tag)?.join("rules.nft");
    std::fs::write(&file, rules)?;
    let r = edge.exec(&["nft", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
    r.with_context(|| format!("nft -f:\n{rules}"))?;
    Ok(format!("{family} swlbench"))
}

/// HAProxy, TCP mode, round robin over the workers, in the foreground.
fn haproxy(edge: &Netns, tag: &str) -> Result<(ChildGuard, PathBuf)> {
    let dir = turn_dir("haproxy", tag)?;
    let mut cfg = String::from(
        // maxconn sized to the FD limit HAProxy may raise itself to here (20000).
        "global\n  maxconn 9000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for port in PORTS {
        cfg += &format!("\nlisten p{port}\n  bind {VIP_V4}:{port}\n  balance roundrobin\n");
        for (i, w) in Lab::workers().iter().enumerate() {
            cfg += &format!("  server w{} {w}:{port}\n", i + 1);
        }
    }
    let first = Lab::workers()[0];
    cfg += &format!("\nlisten bulk\n  bind {BULK_VIP}:{IPERF_PORT}\n  server w1 {first}:{IPERF_PORT}\n");
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, cfg)?;
    let mut child = edge.try_spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&file)).context("haproxy (apt-get install haproxy)")?;
    wait_listening(edge, &mut child, SocketAddrV4::new(VIP_V4, PORTS[0]))?;
    Ok((child, dir))
}

/// Until `child` accepts on `addr`; its output if it exits first.
fn wait_listening(ns: &Netns, child: &mut ChildGuard, addr: SocketAddrV4) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_status() {
            bail!("exited at start ({status}):\n{}", child.output_so_far());
        }
        let addr = addr.into();
        if ns.run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not listening on {addr} after 5 s:\n{}", child.output_so_far());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
