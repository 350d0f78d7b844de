//! Whether an XDP program is on an interface, as `ip link` shows it.

use std::time::{Duration, Instant};

use harness::Netns;

/// An XDP program is attached to `ifname` in `ns`.
pub fn attached(ns: &Netns, ifname: &str) -> bool {
    let out = ns.exec(&["ip", "-d", "link", "show", "dev", ifname]).unwrap();
    out.contains("prog/xdp") || out.contains(" xdp")
}

/// The program leaves `ifname` within 5 s. The kernel frees the last
/// reference of a bpf_link from a workqueue, so a detach by unpinning can
/// trail the unpin, more so on a loaded machine.
pub fn detached_soon(ns: &Netns, ifname: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while attached(ns, ifname) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
