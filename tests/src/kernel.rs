//! The isolator loaded for `BPF_PROG_TEST_RUN`, with a policy applied the
//! way the daemon applies it, and its maps pinned in a directory of its own
//! that is removed on drop (also on panic). Used by the differential tests
//! and the benchmark.

use std::{collections::HashMap, path::PathBuf};

use lb_common::{
    isolator::{counter_index, DropReason, FragEntry, FragKey, PassReason, Verdict},
    model::FragmentTable,
};
use lb_user::{
    config::{Config, ReferencePolicy},
    loader::{remove_pins, Datapath, Program},
    maps::IsolatorMaps,
    policy,
};

/// The policy the fixtures and the fuzzer are judged under. `lo` (ifindex 1,
/// where BPF_PROG_TEST_RUN says packets arrive) is the DMZ interface.
pub const FIXTURE_CONFIG: &str = r#"
[[interface]]
name = "lo"
zone = "dmz"

[zone.dmz]
protected = ["tcp/22", "tcp/5432", "udp/161", "9000-9100"]
allow = ["10.9.0.0/16", "10.9.1.0/24", "fd09::/32"]

[cluster]
nodes = ["10.7.0.1", "10.7.0.2", "fd07::1", "10.9.1.128/25"]
"#;

/// [`FIXTURE_CONFIG`], parsed.
pub fn fixture_config() -> Config {
    Config::parse(FIXTURE_CONFIG, "fixture.toml").expect("fixture config parses")
}

/// A loaded isolator with `config` applied, bound to `lo`.
pub struct KernelIsolator {
    // Field order: the program and maps close before the pins go.
    iso: Option<Datapath>,
    maps: Option<IsolatorMaps>,
    pin_dir: PathBuf,
    config: Config,
    slots: HashMap<String, u32>,
}

impl KernelIsolator {
    /// Loads the isolator with its maps pinned under a name made of the
    /// process id and `tag`, applies `config` with `lo` as its interface.
    pub fn new(tag: &str, config: Config) -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/swarmlb-test-{}-{tag}", std::process::id()));
        let _ = remove_pins(&pin_dir);
        let iso = Datapath::load(&pin_dir, lb_user::loader::MapSizes::with_table(lb_common::maglev::DEFAULT_TABLE_SIZE)).expect("programs load (run as root)");
        let mut maps = IsolatorMaps::open(&pin_dir).expect("maps open");
        // No drop events: the fuzzer drops a lot and nobody reads them here.
        policy::apply_settings(&mut maps, u64::MAX).unwrap();
        let ifindexes = HashMap::from([("lo".to_string(), 1u32)]);
        let applied = policy::apply(&mut maps, &config.compile(), &ifindexes).expect("policy applies");
        Self { iso: Some(iso), maps: Some(maps), pin_dir, config, slots: applied.slots }
    }

    /// The model's view of the same policy (semantic, not the compiled maps).
    pub fn reference(&self) -> ReferencePolicy {
        let ifindexes = HashMap::from([("lo".to_string(), 1u32)]);
        ReferencePolicy::new(&self.config, &ifindexes, &self.slots)
    }

    /// XDP action for one frame; `None` for frames shorter than an
    /// Ethernet header, which BPF_PROG_TEST_RUN refuses (EINVAL) and no
    /// driver hands to XDP.
    pub fn run(&mut self, frame: &[u8]) -> Option<u32> {
        if frame.len() < lb_common::wire::ETH_HLEN {
            return None;
        }
        Some(self.iso.as_mut().unwrap().test_run(Program::Isolator, frame, 1).expect("test run").0)
    }

    /// Runs one frame once: (XDP action, the packet as the program left it).
    pub fn run_with_output(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.iso.as_mut().unwrap().test_run_on(Program::Isolator, frame, 1).expect("test run")
    }

    /// Runs one frame `repeat` times in the kernel: (action, mean time per run).
    pub fn run_repeated(&mut self, frame: &[u8], repeat: u32) -> (u32, std::time::Duration) {
        self.iso.as_mut().unwrap().test_run(Program::Isolator, frame, repeat).expect("test run")
    }

    /// The binding the maps hold for an ifindex.
    pub fn binding(&self, ifindex: u32) -> Option<lb_common::isolator::ZoneBinding> {
        self.maps.as_ref().unwrap().bindings.get(&ifindex, 0).ok()
    }

    /// The per-reason counters, summed over CPUs.
    pub fn counters(&self) -> Vec<u64> {
        self.maps.as_ref().unwrap().counters().unwrap()
    }

    /// Empties the fragment table.
    pub fn clear_fragments(&mut self) {
        clear_fragments(self.maps.as_mut().unwrap());
    }
}

/// Empties an isolator's fragment table.
pub fn clear_fragments(maps: &mut IsolatorMaps) {
    let keys: Vec<FragKey> = maps.fragments.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = maps.fragments.remove(&k);
    }
}

impl Drop for KernelIsolator {
    fn drop(&mut self) {
        self.maps.take();
        self.iso.take();
        let _ = remove_pins(&self.pin_dir);
    }
}

/// The model's fragment table.
#[derive(Default)]
pub struct ModelFrags(pub HashMap<FragKey, FragEntry>);

impl FragmentTable for ModelFrags {
    fn get(&mut self, key: &FragKey) -> Option<FragEntry> {
        self.0.get(key).copied()
    }
    fn record(&mut self, key: FragKey, entry: FragEntry) {
        self.0.insert(key, entry);
    }
}

/// Per-verdict counts (indexed by [`counter_index`]) as one line,
/// `Pass(Reason)=n … Drop(Reason)=n`, for a test's output.
pub fn verdict_summary(tally: &[u64]) -> String {
    let seen: Vec<String> = PassReason::ALL
        .iter()
        .map(|&r| Verdict::Pass(r))
        .chain(DropReason::ALL.iter().map(|&r| Verdict::Drop(r)))
        .map(|v| format!("{v:?}={}", tally[counter_index(v) as usize]))
        .collect();
    seen.join(" ")
}
