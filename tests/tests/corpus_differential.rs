//! The kernel programs against their models over the systematic corpus
//! (`harness::corpus`): every header combination it enumerates, each cut
//! at every byte, through the isolator and through the balancer (`nat`,
//! `dsr` and `dsr-l2` VIPs, IPv4 and IPv6, services, non-services,
//! unreachable backends, replies to NAT entries) with BPF_PROG_TEST_RUN.
//! Also every frame in `fuzz/corpus/packet_model/`, when that exists.
//!
//! Compared frame by frame: the verdict (isolator) or the action and every
//! output byte (balancer); at the end the per-reason counters (isolator),
//! the counters and the flow and NAT tables (balancer). No frame may end
//! in XDP_ABORTED. Mismatches are collected, not stopped at: the first
//! few are printed with the combination's name and a hex dump, then the
//! test fails with their count.

mod common;

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Instant};

use harness::reference_policy::ReferencePolicy;
use lb_user::datapath::maps::IsolatorMaps;

use common::gen::{FORGED4, FORGED6, NODE4, NODE6, OUT4, OUT6, TRUST4, TRUST6};
use harness::{
    corpus::{self, hexdump, Case, Flow},
    kernel::{clear_fragments, fixture_config, KernelIsolator, ModelFrags},
    lb_kernel::*,
    root_or_skip,
    xdp_action::*,
};
use lb_common::{
    balancer::{FlowEntry, FlowKey, LbCounter, NatEntry, NatKey, LB_COUNTERS_LEN},
    balancer_model::{process, Action, Outcome},
    isolator::{counter_index, DropReason, PassReason, Verdict, COUNTERS_LEN},
    model,
};

/// The largest frame BPF_PROG_TEST_RUN takes without multi-buffer: a page
/// less the XDP headroom (256) and the shared-info tailroom (320).
const MAX_TEST_RUN_FRAME: usize = 4096 - 256 - 320;
/// Mismatches printed in full.
const SHOWN: usize = 10;
/// Frames per chunk: the fragment tables are emptied between chunks (so
/// the kernel's LRU cannot forget what the model remembers), and the
/// balancer runs a chunk per visit to its namespace.
const CHUNK: usize = 4096;

/// What a run found.
#[derive(Default)]
struct Report {
    frames: usize,
    skipped: usize,
    aborted: usize,
    mismatches: usize,
    shown: Vec<String>,
}

impl Report {
    fn mismatch(&mut self, case: &Case, detail: String) {
        self.mismatches += 1;
        if self.shown.len() < SHOWN {
            self.shown.push(format!("{}\n  {detail}\n{}", case.what, hexdump(&case.frame)));
        }
    }

    fn finish(&self, program: &str, started: Instant) {
        println!(
            "{program}: {} frames through kernel and model in {:.1} s ({} too long for a test run); {} XDP_ABORTED, {} mismatches",
            self.frames,
            started.elapsed().as_secs_f64(),
            self.skipped,
            self.aborted,
            self.mismatches
        );
        for s in &self.shown {
            println!("MISMATCH {s}\n");
        }
        assert_eq!((self.aborted, self.mismatches), (0, 0), "{program}: XDP_ABORTED and mismatches (first ones printed above)");
    }
}

/// Each frame, then every cut of it: plain, and with the IP length fixed.
fn with_truncations(cases: &[Case]) -> impl Iterator<Item = Case> + '_ {
    cases.iter().cloned().chain(corpus::truncations(cases)).chain(corpus::consistent_truncations(cases))
}

fn fuzz_corpus() -> Vec<Case> {
    corpus::replay_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/packet_model"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Protected and open ports from outside, the allow-list and the nodes.
fn isolator_flows() -> Vec<Flow> {
    let mut flows = Vec::new();
    for (src, dst) in [(IpAddr::V4(OUT4), ip("10.0.0.1")), (IpAddr::V6(OUT6), ip("fd00::1"))] {
        flows.push(Flow { src, dst, sport: 40000, dport: 22 });
        flows.push(Flow { src, dst, sport: 40001, dport: 80 });
    }
    for (src, dst) in [(IpAddr::V4(TRUST4), ip("10.0.0.1")), (IpAddr::V6(TRUST6), ip("fd00::1"))] {
        flows.push(Flow { src, dst, sport: 40002, dport: 161 });
    }
    for (src, dst) in [(IpAddr::V4(NODE4), ip("10.0.0.1")), (IpAddr::V6(NODE6), ip("fd00::1"))] {
        flows.push(Flow { src, dst, sport: 40003, dport: 9050 });
    }
    // Allow-listed, but routed via the fixture's inside interface: forged.
    for (src, dst) in [(IpAddr::V4(FORGED4), ip("10.0.0.1")), (IpAddr::V6(FORGED6), ip("fd00::1"))] {
        flows.push(Flow { src, dst, sport: 40004, dport: 161 });
    }
    flows
}

#[test]
fn isolator_matches_its_model_on_every_header_combination() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let mut k = KernelIsolator::new("corpus", fixture_config());
    let reference = k.reference();
    let base = corpus::build(&isolator_flows(), [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let fuzz = fuzz_corpus();
    println!("isolator corpus: {} combinations, {} fuzz corpus frames", base.len(), fuzz.len());
    let mut frags = ModelFrags::default();
    let mut tally = vec![0u64; COUNTERS_LEN as usize];
    let mut r = Report::default();
    let skipped = std::cell::Cell::new(0);
    let mut cases = with_truncations(&base).chain(fuzz).filter(|c| {
        // Shorter than Ethernet (the kernel refuses it) or longer than a
        // test run takes.
        let runnable = (lb_common::wire::ETH_HLEN..=MAX_TEST_RUN_FRAME).contains(&c.frame.len());
        skipped.set(skipped.get() + usize::from(!runnable));
        runnable
    });
    loop {
        let chunk: Vec<Case> = cases.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        let before = k.counters();
        let chunk_tally = isolator_chunk(&mut k, &reference, &mut frags, &chunk, &mut r, None);
        let delta: Vec<u64> = k.counters().iter().zip(&before).map(|(a, b)| a - b).collect();
        if delta != chunk_tally {
            // Both drop (or both pass) for different reasons: find the
            // frames, replaying the chunk from the same (empty) fragment
            // tables with the counters read after each frame.
            isolator_chunk(&mut k, &reference, &mut frags, &chunk, &mut Report::default(), Some(&mut r));
        }
        tally.iter_mut().zip(&chunk_tally).for_each(|(t, c)| *t += c);
    }
    r.skipped = skipped.get();
    println!("isolator verdicts: {}", harness::kernel::verdict_summary(&tally));
    // Every reason but "no zone" (the fixture interface has one) and an
    // unverifiable route (forwarding is on; see differential.rs) is reached.
    let reasons = DropReason::ALL.iter().filter(|&&r| r != DropReason::ReversePathUnverified).map(|&r| Verdict::Drop(r));
    for v in PassReason::ALL.iter().skip(1).map(|&r| Verdict::Pass(r)).chain(reasons) {
        assert!(tally[counter_index(v) as usize] > 0, "the corpus never reaches {v:?}");
    }
    r.finish("isolator", started);
}

/// Runs one chunk through kernel and model from empty fragment tables,
/// noting action mismatches in `r`; returns the model's per-reason tally.
/// With `by_reason`, also reads the kernel's counters after every frame
/// and notes each frame counted under another reason there.
fn isolator_chunk(
    k: &mut KernelIsolator,
    reference: &ReferencePolicy,
    frags: &mut ModelFrags,
    chunk: &[Case],
    r: &mut Report,
    mut by_reason: Option<&mut Report>,
) -> Vec<u64> {
    k.clear_fragments();
    frags.0.clear();
    let mut tally = vec![0u64; COUNTERS_LEN as usize];
    for case in chunk {
        let before = by_reason.as_ref().map(|_| k.counters());
        let expected = model::decide(&case.frame, 1, reference, &k.host, frags);
        let action = k.run(&case.frame).expect("a runnable frame");
        r.frames += 1;
        let index = counter_index(expected.verdict) as usize;
        tally[index] += 1;
        if action == XDP_ABORTED {
            r.aborted += 1;
            r.mismatch(case, format!("XDP_ABORTED; model {:?}", expected.verdict));
            continue;
        }
        let want = if expected.verdict.is_drop() { XDP_DROP } else { XDP_PASS };
        if action != want {
            r.mismatch(case, format!("kernel action {action}, model {:?}", expected.verdict));
        }
        if let (Some(rr), Some(before)) = (by_reason.as_deref_mut(), before) {
            let counted: Vec<usize> = k.counters().iter().zip(&before).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
            if counted != [index] {
                rr.mismatch(case, format!("kernel counted reason index {counted:?}, model {:?} (index {index})", expected.verdict));
            }
        }
    }
    tally
}

/// Clients to every kind of VIP and service, to non-services and
/// non-VIPs, from outside and (one-armed) from inside.
fn balancer_flows(kb: &KernelBalancer) -> Vec<(Flow, u32)> {
    let (out_if, in_if) = (kb.net.out_ifindex, kb.net.in_ifindex);
    let mut flows = Vec::new();
    let mut sport = 41000;
    let mut add = |src: &str, dst: &str, dport: u16, ifindex: u32| {
        sport += 1;
        flows.push((Flow { src: ip(src), dst: ip(dst), sport, dport }, ifindex));
    };
    for (dst, dport) in [(NAT4, 443), (NAT4, 80), (NAT4, 53), (DSR4, 443), (L2_4, 443), (NAT4, 8443), ("10.1.0.11", 443), (NO_NEIGH_VIP, 443), (NO_ROUTE_VIP, 443), (EMPTY_VIP, 443)] {
        add(CLIENT_V4, dst, dport, out_if);
    }
    for (dst, dport) in [(NAT6, 443), (NAT6, 53), (DSR6, 443), (L2_6, 443), ("fd00:1::12", 443)] {
        add(CLIENT_V6, dst, dport, out_if);
    }
    add("10.1.0.50", NAT4, 443, in_if);
    // For the isolator behind: a protected port from outside and from
    // the zone's allow-list, a service from the allow-list.
    for (src, dst, dport) in [(CLIENT_V4, "10.1.0.11", 22), ("198.51.100.77", NAT4, 8443), ("198.51.100.77", NAT4, 443), ("2001:db8:1::77", NAT6, 8443), (CLIENT_V6, "fd00:1::12", 9050)] {
        add(src, dst, dport, out_if);
    }
    flows
}

/// The kernel's flow and NAT tables, to replay a chunk from.
type Snapshot = (Vec<(FlowKey, FlowEntry)>, Vec<(NatKey, NatEntry)>);

fn snapshot(kb: &KernelBalancer) -> Snapshot {
    (kb.maps().flows.iter().map(|e| e.unwrap()).collect(), kb.maps().nat.iter().map(|e| e.unwrap()).collect())
}

fn restore(kb: &mut KernelBalancer, (flows, nat): &Snapshot) {
    kb.clear_flows();
    let maps = kb.maps_mut();
    for (k, v) in flows {
        maps.flows.insert(k, v, 0).unwrap();
    }
    for (k, v) in nat {
        maps.nat.insert(k, v, 0).unwrap();
    }
}

/// What the model counts for an outcome.
fn counted(o: &Outcome) -> Vec<usize> {
    let mut c: Vec<usize> = o.counter.map(|c| c as usize).into_iter().collect();
    if o.moved {
        c.push(LbCounter::FlowMoved as usize);
    }
    if let Some(extra) = o.extra.filter(|_| o.action != Action::Drop) {
        c.push(extra as usize);
    }
    c.sort_unstable();
    c
}

/// The isolator behind the balancer (its next stage) and its model.
struct NextStage {
    maps: IsolatorMaps,
    reference: ReferencePolicy,
    host: harness::lb_kernel::EdgeHost,
    frags: ModelFrags,
    /// The model's per-reason tally.
    tally: Vec<u64>,
}

impl NextStage {
    fn counters(&self) -> Vec<u64> {
        self.maps.counters().unwrap()
    }

    /// Empty fragment tables on both sides.
    fn clear(&mut self) {
        clear_fragments(&mut self.maps);
        self.frags.0.clear();
    }
}

/// Indices that grew from `before` to `after`.
fn grown(after: &[u64], before: &[u64]) -> Vec<usize> {
    after.iter().zip(before).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect()
}

/// The model's decision for one frame: the balancer's outcome and, when
/// it goes on to the next stage, the isolator's verdict.
fn decide_both(model: &mut ModelTables, next: &mut NextStage, frame: &[u8], ifindex: u32) -> (Outcome, Option<Verdict>, Vec<u8>) {
    let mut buf = vec![0u8; frame.len() + lb_common::balancer_model::MAX_GROWTH];
    let o = process(frame, &mut buf, ifindex, model);
    let verdict = (o.action == Action::NextStage).then(|| model::decide(frame, ifindex, &next.reference, &next.host, &mut next.frags).verdict);
    buf.truncate(o.len);
    (o, verdict, buf)
}

/// Runs `cases` (with the interface each arrives on) through kernel and
/// model, a chunk per namespace visit, comparing action and output bytes;
/// `m` and `next.tally` tally the models' counters. A chunk whose
/// counters differ is replayed from the tables it started with, frame by
/// frame with the counters read after each, to name the frames.
fn run_balancer(kb: &mut KernelBalancer, model: &mut ModelTables, next: &mut NextStage, cases: impl Iterator<Item = (Case, u32)>, m: &mut [u64], r: &mut Report) {
    let mut cases = cases.filter(|(c, _)| {
        let runnable = (lb_common::wire::ETH_HLEN..=MAX_TEST_RUN_FRAME).contains(&c.frame.len());
        if !runnable {
            r.skipped += 1;
        }
        runnable
    });
    let mut shown = Report::default();
    loop {
        let chunk: Vec<(Case, u32)> = cases.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        let (kernel_tables, model_tables) = (snapshot(kb), (model.flows.clone(), model.nat.clone()));
        next.clear();
        let (before, iso_before) = (kb.maps().counters().unwrap(), next.counters());
        let frames: Vec<(Vec<u8>, u32)> = chunk.iter().map(|(c, i)| (c.frame.clone(), *i)).collect();
        let ran = kb.run_batch(&frames);
        let mut tally = vec![0u64; m.len()];
        let mut iso_tally = vec![0u64; next.tally.len()];
        for ((case, ifindex), (action, out)) in chunk.iter().zip(ran) {
            shown.frames += 1;
            let (o, verdict, sent) = decide_both(model, next, &case.frame, *ifindex);
            counted(&o).into_iter().for_each(|c| tally[c] += 1);
            let want = match verdict {
                Some(v) => {
                    iso_tally[counter_index(v) as usize] += 1;
                    if v.is_drop() { XDP_DROP } else { XDP_PASS }
                }
                None => action_code(o.action),
            };
            if action == XDP_ABORTED {
                shown.aborted += 1;
                shown.mismatch(case, format!("XDP_ABORTED on ifindex {ifindex}; model {o:?}, next stage {verdict:?}"));
            } else if action != want {
                shown.mismatch(case, format!("ifindex {ifindex}: kernel action {action}, model {o:?}, next stage {verdict:?}"));
            } else if matches!(o.action, Action::Tx | Action::Redirect(_)) && out != sent {
                shown.mismatch(case, format!("ifindex {ifindex}, {o:?}: output differs\n kernel:\n{}\n model:\n{}", hexdump(&out), hexdump(&sent)));
            }
        }
        let delta: Vec<u64> = kb.maps().counters().unwrap().iter().zip(&before).map(|(a, b)| a - b).collect();
        let iso_delta: Vec<u64> = next.counters().iter().zip(&iso_before).map(|(a, b)| a - b).collect();
        if delta != tally || iso_delta != iso_tally {
            let after = (snapshot(kb), (model.flows.clone(), model.nat.clone()));
            restore(kb, &kernel_tables);
            (model.flows, model.nat) = model_tables;
            next.clear();
            let (replay_from, iso_replay_from) = (kb.maps().counters().unwrap(), next.counters());
            for (case, ifindex) in &chunk {
                let (before, iso_before) = (kb.maps().counters().unwrap(), next.counters());
                kb.run(&case.frame, *ifindex);
                let (o, verdict, _) = decide_both(model, next, &case.frame, *ifindex);
                let k = grown(&kb.maps().counters().unwrap(), &before);
                let k_iso = grown(&next.counters(), &iso_before);
                let want_iso: Vec<usize> = verdict.map(|v| counter_index(v) as usize).into_iter().collect();
                if k != counted(&o) || k_iso != want_iso {
                    shown.mismatch(case, format!("ifindex {ifindex}: kernel counted {k:?} and isolator {k_iso:?}; model {o:?}, next stage {verdict:?}"));
                }
            }
            // The replay's counts go to both sides of the final check.
            let now = kb.maps().counters().unwrap();
            tally.iter_mut().zip(now.iter().zip(&replay_from)).for_each(|(t, (a, b))| *t += a - b);
            let now = next.counters();
            iso_tally.iter_mut().zip(now.iter().zip(&iso_replay_from)).for_each(|(t, (a, b))| *t += a - b);
            // Go on from where the first run left the tables.
            restore(kb, &after.0);
            (model.flows, model.nat) = after.1;
        }
        m.iter_mut().zip(&tally).for_each(|(a, t)| *a += t);
        next.tally.iter_mut().zip(&iso_tally).for_each(|(a, t)| *a += t);
    }
    r.frames += shown.frames;
    r.aborted += shown.aborted;
    r.mismatches += shown.mismatches;
    r.shown.extend(shown.shown.into_iter().take(SHOWN.saturating_sub(r.shown.len())));
}

#[test]
fn balancer_matches_its_model_on_every_header_combination() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let mut kb = KernelBalancer::new("lbcorpus");
    kb.apply(&fixture_desired());
    let (maps, reference) = kb.bind_zone();
    let mut model = kb.model();
    let host = kb.edge_host();
    let mut next = NextStage { maps, reference, host, frags: ModelFrags::default(), tally: vec![0; COUNTERS_LEN as usize] };
    let iso_before = next.counters();
    let before = kb.maps().counters().unwrap();
    let mut m = vec![0u64; LB_COUNTERS_LEN as usize];
    let mut r = Report::default();
    let (out_mac, in_mac) = (kb.net.out_mac, kb.net.in_mac);

    // Clients' packets, flow by flow (each from its own MAC).
    let flows = balancer_flows(&kb);
    let mut combinations = 0;
    for (flow, ifindex) in &flows {
        let dst_mac = if *ifindex == kb.net.out_ifindex { out_mac } else { in_mac };
        let base = corpus::build(&[*flow], neighbour_mac(flow.src), dst_mac);
        combinations += base.len();
        run_balancer(&mut kb, &mut model, &mut next, with_truncations(&base).map(|c| (c, *ifindex)), &mut m, &mut r);
    }
    // Backends' replies to the NAT entries those made: TCP and UDP, IPv4
    // and IPv6.
    let mut seen = std::collections::HashSet::new();
    let entries: Vec<NatKey> = model.nat.keys().copied().filter(|k| seen.insert((k.family, k.proto))).collect();
    assert!(entries.len() >= 4, "the clients' packets made NAT entries of both families and protocols: {entries:?}");
    let in_if = kb.net.in_ifindex;
    for k in &entries {
        let backend = lb_user::datapath::maps::key_addr(&k.backend, k.family);
        let inside = if backend.is_ipv4() { ip("10.1.0.1") } else { ip("fd00:1::1") };
        let reply = Flow { src: backend, dst: inside, sport: k.backend_port, dport: k.nat_port };
        let base = corpus::build(&[reply], neighbour_mac(backend), in_mac);
        combinations += base.len();
        run_balancer(&mut kb, &mut model, &mut next, with_truncations(&base).map(|c| (c, in_if)), &mut m, &mut r);
    }
    let fuzz = fuzz_corpus();
    println!("balancer corpus: {combinations} combinations over {} flows and {} replies, {} fuzz corpus frames", flows.len(), entries.len(), fuzz.len());
    let out_if = kb.net.out_ifindex;
    run_balancer(&mut kb, &mut model, &mut next, fuzz.into_iter().map(|c| (c, out_if)), &mut m, &mut r);

    let after = kb.maps().counters().unwrap();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    if delta != m {
        r.mismatches += 1;
        r.shown.push(format!("counters: kernel {delta:?}, model {m:?}"));
    }
    let kflows: HashMap<FlowKey, FlowEntry> = kb.maps().flows.iter().map(|e| e.unwrap()).collect();
    if kflows != model.flows {
        r.mismatches += 1;
        r.shown.push(format!("flow tables differ: kernel {} entries, model {}", kflows.len(), model.flows.len()));
    }
    let knat: HashMap<NatKey, NatEntry> = kb.maps().nat.iter().map(|e| e.unwrap()).map(|(k, mut e)| {
        e.last_seen_ns = 0;
        (k, e)
    }).collect();
    let mnat: HashMap<NatKey, NatEntry> = model.nat.iter().map(|(k, e)| (*k, NatEntry { last_seen_ns: 0, ..*e })).collect();
    if knat != mnat {
        r.mismatches += 1;
        r.shown.push(format!("NAT tables differ: kernel {} entries, model {}", knat.len(), model.nat.len()));
    }
    let iso_delta: Vec<u64> = next.counters().iter().zip(&iso_before).map(|(a, b)| a - b).collect();
    if iso_delta != next.tally {
        r.mismatches += 1;
        r.shown.push(format!("next stage counters: kernel {iso_delta:?}, model {:?}", next.tally));
    }
    let verdicts: Vec<String> = PassReason::ALL
        .iter()
        .map(|&r| Verdict::Pass(r))
        .chain(DropReason::ALL.iter().map(|&r| Verdict::Drop(r)))
        .map(|v| format!("{v:?}={}", next.tally[counter_index(v) as usize]))
        .collect();
    println!("next stage (isolator) verdicts: {}", verdicts.join(" "));
    for v in [Verdict::Pass(PassReason::NoZone), Verdict::Pass(PassReason::Allowed), Verdict::Drop(DropReason::ProtectedPort)] {
        assert!(next.tally[counter_index(v) as usize] > 0, "the corpus never reaches {v:?} behind the balancer");
    }
    let named: Vec<String> = LbCounter::ALL.iter().map(|c| format!("{}={}", c.name(), m[*c as usize])).collect();
    println!("balancer counters: {}", named.join(" "));
    r.finish("balancer", started);
}
