//! The isolator in the kernel against its pure-Rust model
//! (`lb_common::model`), packet for packet, with `BPF_PROG_TEST_RUN`:
//! hand-written evasion fixtures with known verdicts, then well over 100k
//! generated and mutated packets. The verdicts must be equal, the kernel's
//! per-reason counters must equal the model's tallies, and no packet may
//! end in `XDP_ABORTED`.

mod common;

use common::gen;
use harness::{
    kernel::{fixture_config, KernelIsolator, ModelFrags},
    xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
};
use lb_common::{
    isolator::{counter_index, DropReason, PassReason, Verdict, COUNTERS_LEN},
    model,
};
use rand::{rngs::StdRng, Rng, SeedableRng};


/// Runs `frames` through kernel and model, chunk by chunk (the fragment
/// tables are emptied between chunks so LRU eviction cannot make the kernel
/// forget what the model remembers), and compares everything.
/// Returns (frames compared, frames the kernel ran; runts are model-only).
fn compare(k: &mut KernelIsolator, frames: impl Iterator<Item = Vec<u8>>) -> (usize, usize) {
    let reference = k.reference();
    let mut frags = ModelFrags::default();
    let before = k.counters();
    let mut tally = vec![0u64; COUNTERS_LEN as usize];
    let (mut n, mut ran) = (0, 0);
    for (i, frame) in frames.enumerate() {
        if i % 4096 == 0 {
            k.clear_fragments();
            frags.0.clear();
        }
        let expected = model::decide(&frame, 1, &reference, &k.host, &mut frags);
        n += 1;
        let Some(action) = k.run(&frame) else {
            assert_eq!(expected.verdict, Verdict::Pass(PassReason::NotIp), "runt frame");
            continue;
        };
        assert_ne!(action, XDP_ABORTED, "XDP_ABORTED on {}", hex(&frame));
        let want = if expected.verdict.is_drop() { XDP_DROP } else { XDP_PASS };
        assert_eq!(action, want, "kernel {action} vs model {:?} on packet #{i}: {}", expected.verdict, hex(&frame));
        tally[counter_index(expected.verdict) as usize] += 1;
        ran += 1;
    }
    let after = k.counters();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, tally, "per-reason counters: kernel vs model");
    println!("verdicts: {}", harness::kernel::verdict_summary(&tally));
    (n, ran)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Each evasion case with the verdict the README promises.
#[test]
fn evasion_fixtures() {
    let mut k = KernelIsolator::new("fixtures", fixture_config());
    let reference = k.reference();
    assert_eq!(k.binding(1), lb_common::model::Policy::binding(&reference, 1), "the binding the daemon writes");
    let mut frags = ModelFrags::default();
    let cases = gen::fixtures();
    assert!(cases.len() >= 30, "fixture list shrank");
    for case in &cases {
        let modelled = model::decide(&case.frame, 1, &reference, &k.host, &mut frags).verdict;
        assert_eq!(modelled, case.expect, "model on fixture {:?}", case.name);
        let Some(action) = k.run(&case.frame) else {
            continue; // runt: the model's verdict was checked above
        };
        let want = if case.expect.is_drop() { XDP_DROP } else { XDP_PASS };
        assert_eq!(action, want, "kernel on fixture {:?}", case.name);
    }
    // Every drop reason is exercised by some fixture (the unverifiable
    // reverse path by `forwarding_off_fails_closed`).
    for r in DropReason::ALL.into_iter().filter(|&r| r != DropReason::ReversePathUnverified) {
        assert!(cases.iter().any(|c| c.expect == Verdict::Drop(r)), "no fixture for {r:?}");
    }
    for r in [PassReason::NotIp, PassReason::Unprotected, PassReason::Allowed, PassReason::FragmentFollows, PassReason::OtherProtocol] {
        assert!(cases.iter().any(|c| c.expect == Verdict::Pass(r)), "no fixture for {r:?}");
    }
    println!("{} fixtures: kernel == model == expected", cases.len());
}

/// Generated packets (every header combination the generator knows) and
/// mutations of them (bit flips, truncation at every length, bogus lengths).
#[test]
fn kernel_matches_model_on_random_and_mutated_packets() {
    let mut k = KernelIsolator::new("fuzz", fixture_config());
    let seed: u64 = std::env::var("SWARMLB_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (set SWARMLB_FUZZ_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let count: usize = std::env::var("SWARMLB_FUZZ_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(120_000);
    let frames = (0..count).map(move |_| gen::packet(&mut rng));
    let (n, ran) = compare(&mut k, frames);
    assert_eq!(n, count);
    assert!(ran >= 100_000 || count < 100_000, "only {ran} frames reached the kernel");

    // Every fixture truncated at every length: the bounds checks at each byte.
    let truncations = gen::fixtures().into_iter().flat_map(|c| {
        (0..=c.frame.len()).map(move |len| c.frame[..len].to_vec())
    });
    let (t, t_ran) = compare(&mut k, truncations);
    println!(
        "{n} generated/mutated frames ({ran} through the kernel) and {t} truncations ({t_ran} through the kernel): \
         0 verdict mismatches, per-reason counters equal, 0 XDP_ABORTED"
    );
}

/// With forwarding off on the DMZ interface the kernel's FIB will not
/// answer a reverse-path lookup: every trusted source is then dropped
/// (`reverse_path_unverified`, fail closed), IPv4 and IPv6, while what
/// needs no trust is judged as before; and the same frames pass again once
/// forwarding is back, without reloading anything.
#[test]
fn forwarding_off_fails_closed() {
    let mut k = KernelIsolator::new("fwdoff", fixture_config());
    let reference = k.reference();
    let cases = gen::fixtures();
    let trusted: Vec<&gen::Fixture> = cases.iter().filter(|c| c.expect == Verdict::Pass(PassReason::Allowed)).collect();
    assert!(trusted.len() >= 5, "trusted fixtures: {}", trusted.len());
    k.set_forwarding(false);
    let before = k.counters();
    for case in &trusted {
        let modelled = model::decide(&case.frame, 1, &reference, &k.host, &mut ModelFrags::default()).verdict;
        assert_eq!(modelled, Verdict::Drop(DropReason::ReversePathUnverified), "model on {:?}", case.name);
        assert_eq!(k.run(&case.frame), Some(XDP_DROP), "kernel on {:?}", case.name);
    }
    let unprotected = cases.iter().find(|c| c.name == "tcp/80 from outside").unwrap();
    assert_eq!(k.run(&unprotected.frame), Some(XDP_PASS), "an unprotected port needs no route back");
    let after = k.counters();
    let i = counter_index(Verdict::Drop(DropReason::ReversePathUnverified)) as usize;
    assert_eq!(after[i] - before[i], trusted.len() as u64, "counted as reverse_path_unverified");
    k.set_forwarding(true);
    for case in &trusted {
        assert_eq!(k.run(&case.frame), Some(XDP_PASS), "kernel on {:?} with forwarding back on", case.name);
    }
    println!("{} trusted fixtures: dropped as unverifiable with forwarding off, passed with it on", trusted.len());
}
