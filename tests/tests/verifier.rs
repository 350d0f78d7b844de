//! The verifier's budget: each XDP program in the object loads, and the
//! instructions the verifier walked to accept it stay clear of the
//! kernel's limit of 1 000 000. The isolator's evasion handling (VLAN
//! tags, extension headers, fragments) makes its paths many; a change
//! that takes it close to the limit fails here, with the counts, rather
//! than as a load error on some later change or kernel.

use harness::{pins::private_pin_dir, root_or_skip};
use lb_common::{
    balancer::{MAP_FLOWS, MAP_MAGLEV, MAP_NAT, PROGRAM_BALANCER, PROGRAM_DECAP},
    isolator::{PROGRAM_ISOLATOR, PROGRAM_ISOLATOR_REVERSE_PATH},
};
use lb_user::datapath::loader::{ensure_bpffs, remove_pins};

/// The kernel's limit on instructions processed while verifying one
/// program (`BPF_COMPLEXITY_LIMIT_INSNS`).
const KERNEL_LIMIT: u32 = 1_000_000;

/// The share of the limit a program may use: 5% is left for the next
/// kernel's verifier, which may walk a path differently.
const BUDGET: u32 = KERNEL_LIMIT / 100 * 95;

/// Removes the test's pins, even when it fails.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = remove_pins(&self.0);
    }
}

#[test]
fn every_program_verifies_within_its_budget() {
    if !root_or_skip() {
        return;
    }
    let pins = Pins(private_pin_dir("test", "verifier"));
    ensure_bpffs(&pins.0).unwrap();
    std::fs::create_dir_all(&pins.0).unwrap();
    // Small tables: the map sizes do not change what the verifier walks.
    let mut ebpf = aya::EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .map_max_entries(MAP_MAGLEV, 1)
        .map_max_entries(MAP_FLOWS, 1)
        .map_max_entries(MAP_NAT, 1)
        .load(lb_user::ebpf_object().expect("the eBPF object"))
        .expect("the object loads");
    let mut counts = Vec::new();
    for name in [PROGRAM_ISOLATOR, PROGRAM_ISOLATOR_REVERSE_PATH, PROGRAM_BALANCER, PROGRAM_DECAP] {
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(name).expect("the program is in the object").try_into().unwrap();
        prog.load().unwrap_or_else(|e| panic!("{name} verifies: {e:#}"));
        let processed = prog.info().unwrap().verified_instruction_count().expect("this kernel reports verified instructions");
        println!("{name:<24} {processed:>9} instructions processed ({:.1}% of the limit)", f64::from(processed) / f64::from(KERNEL_LIMIT) * 100.0);
        counts.push((name, processed));
    }
    let over: Vec<_> = counts.iter().filter(|(_, n)| *n > BUDGET).collect();
    assert!(over.is_empty(), "over the verifier budget of {BUDGET} instructions: {over:?} (all: {counts:?})");
}
