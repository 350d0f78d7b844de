//! A real multi-node Docker Swarm on one machine: one `dockerd` per node,
//! each in its own network namespace (a veth to the bridge `br0` of a
//! switch namespace; node `i` is 10.2.0.(11+i)) and its own mount, UTS and
//! PID namespaces. Node 0 is the manager, the others join as workers.
//!
//! What makes it work (see the design notes): the node's mount namespace
//! gets its own `/sys` (the netns's view), the cgroup v1 hierarchies mounted
//! again and a private tmpfs over `/run/containerd`; the PID namespace makes
//! dockerd the node's init, so killing it takes containerd, the shims and
//! every container with it. Images come from [`SwarmLab::import_busybox`]
//! (no registry is reachable) and the daemons prefer offline images.
//!
//! Everything lives under `/var/tmp/swarmlb-swarm-<pid>-<tag>/` and is
//! removed on drop; labs of test processes that died are reaped (their
//! dockerds killed) by the next lab.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{ChildGuard, Netns, Topology};

/// Where labs live; `<pid>-<tag>` follows.
const LAB_PREFIX: &str = "/var/tmp/swarmlb-swarm-";

/// The script that becomes a node's init (run by `unshare`, inside the
/// node's network namespace): `$1` hostname, `$2` the node's directory.
///
/// The node sees the host's bpffs at /sys/fs/bpf (kept aside before /sys
/// is remounted), as a real host's containers do: an agent's pins there
/// outlive its task. /run is the node's own (a tmpfs), as on a real host,
/// and its dockerd also answers at the usual /var/run/docker.sock there,
/// which is what a stack mounts into its tasks.
const NODE_SCRIPT: &str = r#"set -e
node_dir="$2"
mkdir -p "$node_dir/host-bpffs"; mount --bind /sys/fs/bpf "$node_dir/host-bpffs"
mount -t sysfs sysfs /sys
mount --move "$node_dir/host-bpffs" /sys/fs/bpf
mount -t tmpfs cgroup /sys/fs/cgroup
for c in $(awk 'NR > 1 && $4 == 1 && $2 != 0 { print $1 }' /proc/cgroups); do
  mkdir -p "/sys/fs/cgroup/$c"; mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" 2>/dev/null || rmdir "/sys/fs/cgroup/$c"
done
mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mount -t tmpfs tmpfs /run
hostname "$1"
export DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1
shift 2
exec dockerd --data-root "$node_dir/data" --exec-root "$node_dir/exec" -H "unix://$node_dir/docker.sock" \
  -H unix:///var/run/docker.sock --pidfile "$node_dir/docker.pid" --storage-driver vfs "$@"
"#;

/// One Swarm node.
pub struct SwarmNode {
    /// Its hostname (`<tag>n1`, …), also the Swarm node's name.
    pub hostname: String,
    /// Its network namespace (interface `eth0`).
    pub ns: Netns,
    /// Its address on the nodes' LAN.
    pub addr: Ipv4Addr,
    /// Its dockerd's API socket.
    pub socket: PathBuf,
    dir: PathBuf,
    /// `unshare`, whose child (the namespace's init) is dockerd.
    dockerd: Option<ChildGuard>,
    /// dockerd's pid as the root namespace sees it.
    init_pid: Option<i32>,
    /// The Swarm node id (known once it joined).
    id: String,
    /// More dockerd arguments (TLS on TCP).
    extra_args: Vec<String>,
}

/// The nodes, their LAN and their dockerds; all removed on drop.
pub struct SwarmLab {
    /// The switch namespace with the bridge `br0`.
    pub switch: Netns,
    nodes: Vec<SwarmNode>,
    dir: PathBuf,
    rootfs_tar: PathBuf,
    ports: usize,
    // Last: the namespaces go after the processes in them.
    topology: Topology,
}

/// Kills what labs of dead test processes left running, and their dirs.
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("swarmlb-swarm-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        if pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) } == 0 {
            continue;
        }
        let needle = path.to_string_lossy().into_owned();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                // SAFETY: kill(2) of a process started by a dead lab.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Runs `docker -H unix://socket args`; the error carries stderr.
fn docker_at(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    let mut cmd = Command::new("docker");
    cmd.arg("-H").arg(format!("unix://{}", socket.display())).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().context("running docker (cargo xtask setup installs docker.io)")?;
    if let Some(bytes) = stdin {
        child.stdin.take().expect("piped").write_all(bytes)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl SwarmNode {
    /// Starts dockerd; returns once its API answers.
    fn start(&mut self) -> Result<()> {
        // A killed dockerd leaves its pid file, which would stop the next,
        // and containerd's: its pid belonged to the old PID namespace, and
        // in the new one the same number is often one of dockerd's own
        // threads, so dockerd would take containerd for alive and wait on
        // its dead socket until it gives up.
        let _ = std::fs::remove_file(self.dir.join("docker.pid"));
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private", "--kill-child=SIGKILL"])
            .args(["sh", "-c", NODE_SCRIPT, "node"])
            .arg(&self.hostname)
            .arg(&self.dir)
            .args(&self.extra_args);
        let guard = self.ns.try_spawn(&mut cmd)?;
        let unshare = guard.pid();
        self.dockerd = Some(guard);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.init_pid.is_none() {
                let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
                self.init_pid = children.split_whitespace().next().and_then(|p| p.parse().ok());
            }
            if self.init_pid.is_some() && docker_at(&self.socket, &["info", "--format", "{{.ServerVersion}}"], None).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.dockerd.as_mut().and_then(ChildGuard::try_status) {
                let log = self.dockerd.as_ref().map(ChildGuard::output_so_far).unwrap_or_default();
                bail!("dockerd of {} exited ({status}):\n{log}", self.hostname);
            }
            if Instant::now() > deadline {
                bail!("dockerd of {} did not answer within 30 s", self.hostname);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills dockerd and everything in its PID namespace; waits until gone.
    fn stop(&mut self) {
        if let Some(pid) = self.init_pid.take() {
            // SAFETY: the node's init, started by this lab.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(mut g) = self.dockerd.take() {
            g.wait_timeout(Duration::from_secs(5));
        }
    }
}

impl SwarmLab {
    /// A swarm of `nodes` nodes (at least 1), every node Ready.
    pub fn new(tag: &str, nodes: usize) -> Result<Self> {
        assert!((1..=9).contains(&nodes), "1 to 9 nodes");
        static REAP: std::sync::Once = std::sync::Once::new();
        REAP.call_once(reap_stale);
        let dir = PathBuf::from(format!("{LAB_PREFIX}{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut topology = Topology::new();
        let switch = topology.netns(&format!("{tag}sw"));
        topology.bridge(&switch);
        let mut lab = Self { switch, nodes: Vec::new(), rootfs_tar: dir.join("busybox.tar"), dir, ports: 0, topology };
        for i in 0..nodes {
            let hostname = format!("{tag}n{}", i + 1);
            let ns = lab.topology.netns(&hostname);
            let addr = Ipv4Addr::new(10, 2, 0, 11 + i as u8);
            lab.attach(&ns, "eth0", &format!("{addr}/24"));
            let ndir = lab.dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&ndir)?;
            let mut node =
                SwarmNode { hostname, ns, addr, socket: ndir.join("docker.sock"), dir: ndir, dockerd: None, init_pid: None, id: String::new(), extra_args: Vec::new() };
            node.start()?;
            lab.nodes.push(node);
        }
        let manager = lab.nodes[0].addr.to_string();
        lab.docker(0, &["swarm", "init", "--advertise-addr", &manager, "--listen-addr", &format!("{manager}:2377")])?;
        let token = lab.docker(0, &["swarm", "join-token", "-q", "worker"])?;
        for i in 1..nodes {
            let addr = lab.nodes[i].addr.to_string();
            lab.docker(i, &["swarm", "join", "--token", &token, "--advertise-addr", &addr, &format!("{manager}:2377")])?;
        }
        for i in 0..nodes {
            lab.nodes[i].id = lab.docker(i, &["info", "--format", "{{.Swarm.NodeID}}"])?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = lab.docker(0, &["node", "ls", "--format", "{{.Status}}"])?;
            if ready.lines().filter(|l| *l == "Ready").count() == nodes {
                break;
            }
            if Instant::now() > deadline {
                bail!("nodes not Ready within 60 s: {ready}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(lab)
    }

    /// The nodes, manager first.
    pub fn nodes(&self) -> &[SwarmNode] {
        &self.nodes
    }

    /// The manager's API socket (usable from any network namespace).
    pub fn manager_socket(&self) -> &Path {
        &self.nodes[0].socket
    }

    /// `docker` against node `node`'s dockerd.
    pub fn docker(&self, node: usize, args: &[&str]) -> Result<String> {
        docker_at(&self.nodes[node].socket, args, None)
    }

    /// Node `node`'s Swarm node id.
    pub fn node_id(&self, node: usize) -> Result<String> {
        Ok(self.nodes[node].id.clone())
    }

    /// Adds (or changes) a label on node `node`, through the manager.
    pub fn label_add(&self, node: usize, key: &str, value: &str) -> Result<()> {
        self.docker(0, &["node", "update", "--label-add", &format!("{key}={value}"), &self.nodes[node].id]).map(drop)
    }

    /// Removes a label from node `node`.
    pub fn label_rm(&self, node: usize, key: &str) -> Result<()> {
        self.docker(0, &["node", "update", "--label-rm", key, &self.nodes[node].id]).map(drop)
    }

    /// Sets node `node`'s availability (`active`, `pause`, `drain`).
    pub fn availability(&self, node: usize, availability: &str) -> Result<()> {
        self.docker(0, &["node", "update", "--availability", availability, &self.nodes[node].id]).map(drop)
    }

    /// Imports an image holding only `/bin/busybox` (Debian's static one)
    /// into every node; returns its name.
    pub fn import_busybox(&self) -> Result<String> {
        const IMAGE: &str = "swarmlb-test/busybox:1";
        if !self.rootfs_tar.exists() {
            let root = self.dir.join("rootfs");
            std::fs::create_dir_all(root.join("bin"))?;
            std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("/bin/busybox (cargo xtask setup installs busybox-static)")?;
            std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
            tar_dir(&root, &self.rootfs_tar)?;
        }
        self.import(&self.rootfs_tar, IMAGE, &[])?;
        Ok(IMAGE.to_owned())
    }

    /// `docker import`s the file system tree `root` (a directory, see
    /// [`crate::image::Rootfs`]) as `image` into every node, with
    /// Dockerfile instructions `changes` (`CMD […]`, `ENTRYPOINT […]`).
    pub fn import_rootfs(&self, root: &Path, image: &str, changes: &[&str]) -> Result<()> {
        let tar = self.dir.join(format!("{}.tar", image.replace(['/', ':'], "_")));
        tar_dir(root, &tar)?;
        self.import(&tar, image, changes)
    }

    fn import(&self, tar: &Path, image: &str, changes: &[&str]) -> Result<()> {
        let tar = std::fs::read(tar)?;
        let mut args = vec!["import"];
        for c in changes {
            args.extend(["--change", c]);
        }
        args.extend(["-", image]);
        for n in &self.nodes {
            docker_at(&n.socket, &args, Some(&tar))?;
        }
        Ok(())
    }

    /// Copies `image` from node `from` to every other node (`docker save`
    /// | `docker load`), as a registry would deliver it.
    pub fn distribute(&self, from: usize, image: &str) -> Result<()> {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.nodes[from].socket.display()))
            .args(["save", image])
            .output()?;
        if !out.status.success() {
            bail!("docker save {image}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if i != from {
                docker_at(&n.socket, &["load"], Some(&out.stdout))?;
            }
        }
        Ok(())
    }

    /// Kills node `node`'s dockerd (and its containers); its data stays.
    pub fn stop_dockerd(&mut self, node: usize) {
        self.nodes[node].stop();
    }

    /// Starts node `node`'s dockerd again on its data; returns once its
    /// API answers.
    pub fn start_dockerd(&mut self, node: usize) -> Result<()> {
        self.nodes[node].start()
    }

    /// Makes node `node`'s dockerd also serve its API on
    /// `tcp://ADDR:2376` with TLS, clients authenticated by certificate
    /// (`--tlsverify`), all issued by `ca`; restarts that dockerd. Returns a
    /// directory with `ca.pem`, `cert.pem` and `key.pem` for a client.
    pub fn serve_tls(&mut self, node: usize, ca: &crate::tls::TestCa) -> Result<PathBuf> {
        let n = &mut self.nodes[node];
        let (cert, key) = ca.issue(&[&n.addr.to_string()], &n.hostname);
        for (name, pem) in [("ca.pem", ca.cert_pem()), ("server.pem", cert.as_str()), ("server-key.pem", key.as_str())] {
            std::fs::write(n.dir.join(name), pem)?;
        }
        let client = self.dir.join(format!("client-tls-{}", n.hostname));
        std::fs::create_dir_all(&client)?;
        let (cert, key) = ca.issue_client("swarmlb");
        for (name, pem) in [("ca.pem", ca.cert_pem()), ("cert.pem", cert.as_str()), ("key.pem", key.as_str())] {
            std::fs::write(client.join(name), pem)?;
        }
        let file = |f: &str| n.dir.join(f).display().to_string();
        n.extra_args = vec![
            "--tlsverify".into(),
            format!("--tlscacert={}", file("ca.pem")),
            format!("--tlscert={}", file("server.pem")),
            format!("--tlskey={}", file("server-key.pem")),
            "-H".into(),
            format!("tcp://{}:2376", n.addr),
        ];
        n.stop();
        n.start()?;
        Ok(client)
    }

    /// A veth from `ns` (named `ifname`, address `cidr`) to a new port of
    /// the switch's bridge: `ns` joins the nodes' LAN. Returns the port's
    /// name in [`SwarmLab::switch`].
    pub fn attach(&mut self, ns: &Netns, ifname: &str, cidr: &str) -> String {
        self.ports += 1;
        let port = format!("p{}", self.ports);
        self.topology.plug(ns, ifname, &self.switch, &port);
        self.topology.addr(ns, ifname, cidr);
        port
    }
}

/// `tar -cf tar -C root .`
fn tar_dir(root: &Path, tar: &Path) -> Result<()> {
    let ok = Command::new("tar").arg("-C").arg(root).arg("-cf").arg(tar).arg(".").status()?.success();
    if !ok {
        bail!("tar of {} failed", root.display());
    }
    Ok(())
}

impl Drop for SwarmLab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
