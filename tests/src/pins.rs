//! Private bpffs pin directories for tests, named
//! `/sys/fs/bpf/swarmlb-<kind>-<pid>-<tag>`, and the reaping of those a
//! killed test process left behind (its pid no longer runs).

use std::{path::PathBuf, sync::Once};

/// A pin directory for this process; the first call removes stale ones.
pub fn private_pin_dir(kind: &str, tag: &str) -> PathBuf {
    static REAP: Once = Once::new();
    REAP.call_once(reap_stale);
    PathBuf::from(format!("/sys/fs/bpf/swarmlb-{kind}-{}-{tag}", std::process::id()))
}

/// The kinds of pin directory tests and the demo create.
const KINDS: &[&str] = &["test", "lbtest", "dctest", "lab", "bs", "demo", "demolb"];

fn reap_stale() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only the test harness's own kinds, never an operator's pins.
        let Some(rest) = KINDS.iter().find_map(|k| name.strip_prefix(&format!("swarmlb-{k}-"))) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        if pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } != 0 {
            let _ = lb_user::loader::remove_pins(&e.path());
        }
    }
}
