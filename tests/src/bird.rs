//! Debian's BIRD 2 inside a test namespace: in the foreground, logging to
//! stderr, with its config, control socket and pid file in a private
//! directory. Stopped on drop (killed or not).
//!
//! The edges run `deploy/bird.conf` itself ([`edge_config`]); the router's
//! config ([`router_config`]) stands for the upstream network.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{ChildGuard, Netns};

/// `deploy/bird.conf` with each `define NAME = …;` of `defines` set to the
/// given value, logging to stderr (the test keeps it) rather than syslog.
/// Panics if the file lacks one of them: the test runs the file users get.
pub fn edge_config(defines: &[(&str, String)]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/bird.conf");
    let mut text = std::fs::read_to_string(path).expect("deploy/bird.conf");
    for (name, value) in defines {
        let head = format!("define {name} = ");
        let line = text.lines().find(|l| l.starts_with(&head)).unwrap_or_else(|| panic!("deploy/bird.conf defines no {name}")).to_owned();
        text = text.replace(&line, &format!("{head}{value};"));
    }
    assert!(text.contains("log syslog all;"), "deploy/bird.conf logs to syslog");
    text.replace("log syslog all;", "log stderr all;")
}

/// The upstream router: one eBGP session with BFD per edge address, the
/// learnt VIP routes merged into one ECMP route in its kernel table
/// (`merge paths`), fast reconnects (a test brings edges back).
pub fn router_config(router: &str, router_as: u32, edges: &[(String, u32)]) -> String {
    let mut text = format!(
        r#"log stderr all;
router id {router};
protocol device {{ }}
protocol kernel {{
    merge paths on;
    ipv4 {{ import none; export all; }};
}}
protocol kernel {{
    merge paths on;
    ipv6 {{ import none; export all; }};
}}
protocol bfd {{
    interface "*" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
template bgp edge {{
    local {router} as {router_as};
    bfd on;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    ipv4 {{ import all; export none; }};
    ipv6 {{ import all; export none; }};
}}
"#
    );
    for (i, (addr, asn)) in edges.iter().enumerate() {
        text.push_str(&format!("protocol bgp edge{} from edge {{ neighbor {addr} as {asn}; }}\n", i + 1));
    }
    text
}

/// A running BIRD.
pub struct Bird {
    child: ChildGuard,
    dir: PathBuf,
}

impl Bird {
    /// Starts BIRD in `ns` with `config`; checks the config first, so a
    /// typo fails here with BIRD's own message.
    pub fn start(ns: &Netns, tag: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("swarmlb-bird-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bird.conf"), config).unwrap();
        let parse = Command::new("bird").arg("-p").arg("-c").arg(dir.join("bird.conf")).output().expect("bird (cargo xtask setup installs bird2)");
        assert!(parse.status.success(), "BIRD refuses the config: {}\n{config}", String::from_utf8_lossy(&parse.stderr));
        let mut cmd = Command::new("bird");
        cmd.arg("-f").arg("-c").arg(dir.join("bird.conf")).arg("-s").arg(dir.join("bird.ctl")).arg("-P").arg(dir.join("bird.pid"));
        let child = ns.spawn(&mut cmd);
        let mut b = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !b.socket().exists() {
            if let Some(status) = b.child.wait_timeout(Duration::from_millis(20)) {
                panic!("BIRD exited ({status}):\n{}", b.child.output_so_far());
            }
            assert!(Instant::now() < deadline, "BIRD did not open its control socket:\n{}", b.child.output_so_far());
        }
        b
    }

    /// Its control socket (`birdc -s`, `[bgp] birdc_socket`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc -s SOCKET ARGS…`'s output.
    pub fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc").arg("-s").arg(self.socket()).args(args).output().expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether BGP session `name` is established.
    pub fn established(&self, name: &str) -> bool {
        self.birdc(&["show", "protocols", name]).lines().any(|l| l.starts_with(name) && l.contains("Established"))
    }

    /// kill -9: a crash, no session closed in good order.
    pub fn kill9(&mut self) {
        self.child.signal(libc::SIGKILL);
        self.child.wait_timeout(Duration::from_secs(5)).expect("BIRD killed");
    }

    /// Everything BIRD logged so far.
    pub fn log(&self) -> String {
        self.child.output_so_far()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.child.terminate(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
