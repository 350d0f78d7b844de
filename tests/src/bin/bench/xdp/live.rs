//! Packets per second through the balancer with BPF_PROG_RUN's live
//! frames (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel runs the program on
//! frames of its own page pool and really carries out its verdicts, so a
//! redirect leaves by the fixture's inside veth; the frames are counted
//! where they arrive, at the veth's peer. Run under `bench_restore`, so a
//! `nat` rewrite of a recycled page never feeds the next run.

use std::{fmt::Write as _, time::Instant};

use anyhow::{anyhow, ensure, Context, Result};
use aya::programs::{ProgramFd, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use harness::lb_kernel::KernelBalancer;
use lb_common::balancer::{FlowKey, LbCounter};

use super::{prepare, remembered, xdp_md, BenchPrograms, Step, RESTORE};
use crate::report::Summary;

/// One measured path: what it is and its frame (a packet of an
/// established flow, which the flow table remembers: set up before every
/// run by its handshake).
pub struct LivePath {
    pub name: String,
    pub frame: Vec<u8>,
    /// The handshake that makes the flow table remember the flow.
    pub setup: Vec<Step>,
    /// The flow's key in LB_FLOWS.
    pub key: FlowKey,
}

/// Frames the kernel handles per batch (its default).
const BATCH: u32 = 64;

/// Per path: forwarded frames per second as counted at the receiver, and
/// the share of frames that arrived.
pub struct LiveRate {
    pub name: String,
    /// The frame's length in bytes.
    pub bytes: usize,
    pub mpps: Summary,
    pub delivered: f64,
}

/// The receiving side's frame count (`rx_packets` of the inside veth's
/// peer, in the fixture's namespace).
fn received(kb: &KernelBalancer) -> Result<u64> {
    let n = kb.net.ns.exec(&["cat", "/sys/class/net/lbin-p/statistics/rx_packets"])?;
    n.trim().parse().context("rx_packets")
}

/// Runs each path `rounds` times (interleaved) with `frames` live frames
/// per run, through bench-ebpf's `bench_restore` tail-calling `balancer`.
pub fn measure(paths: &[LivePath], rounds: usize, frames: u32, kb: &mut KernelBalancer, bench: &mut BenchPrograms, balancer: &ProgramFd) -> Result<Vec<LiveRate>> {
    bench.set_target(balancer)?;
    // A redirect into a veth is delivered only when its peer runs NAPI:
    // with GRO on (or an XDP program) it does.
    kb.net.ns.exec(&["ethtool", "-K", "lbin-p", "gro", "on"])?;
    harness::rtnl::up(&kb.net.ns, "lbin-p")?;
    let ifindex = kb.net.out_ifindex;
    let mut samples = vec![Vec::new(); paths.len()];
    let mut delivered = vec![(0u64, 0u64); paths.len()];
    for _ in 0..rounds {
        for (i, p) in paths.iter().enumerate() {
            bench.set_input(&p.frame, false)?;
            prepare(kb, &p.setup, Some(&p.key), None).map_err(|e| anyhow!("{}: {e}", p.name))?;
            ensure!(remembered(kb, &p.key), "{}: the flow table does not hold the flow after its handshake", p.name);
            let before = (received(kb)?, kb.maps().counters()?);
            let prog = bench.program(RESTORE)?;
            let t = Instant::now();
            kb.net.ns.run(|| run_live(prog, &p.frame, ifindex, frames))?;
            let secs = t.elapsed().as_secs_f64();
            let after = (received(kb)?, kb.maps().counters()?);
            let got = after.0 - before.0;
            let delta = |c: LbCounter| after.1[c as usize] - before.1[c as usize];
            let hits = delta(LbCounter::FlowHit);
            ensure!(hits >= u64::from(frames) * 9 / 10, "{}: {hits} flow hits for {frames} frames", p.name);
            // A remembered flow's packets hit the flow table; they never
            // probe the NAT table (which would prove or re-find it).
            let probed = delta(LbCounter::FlowProven) + delta(LbCounter::FlowRefound) + delta(LbCounter::NewFlow);
            ensure!(probed == 0 && remembered(kb, &p.key), "{}: the flow was not remembered throughout the run ({probed} packets missed it)", p.name);
            samples[i].push(got as f64 / secs / 1e6);
            delivered[i].0 += got;
            delivered[i].1 += u64::from(frames);
        }
    }
    Ok(paths
        .iter()
        .zip(samples)
        .zip(delivered)
        .map(|((p, s), (got, sent))| LiveRate { name: p.name.clone(), bytes: p.frame.len(), mpps: Summary::of(&s), delivered: got as f64 / sent as f64 })
        .collect())
}

/// One BPF_PROG_RUN of `prog` with `frames` live frames arriving on
/// `ifindex` (an interface of the calling thread's namespace).
fn run_live(prog: &mut Xdp, frame: &[u8], ifindex: u32, frames: u32) -> Result<()> {
    let ctx = xdp_md(frame.len(), ifindex);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&ctx);
    opts.repeat = frames;
    opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
    prog.test_run(opts).context("BPF_PROG_RUN with live frames")?;
    Ok(())
}

/// The section's table.
pub fn table(md: &mut String, rates: &Result<Vec<LiveRate>, String>, frames: u32, rounds: usize) {
    let _ = writeln!(
        md,
        "\n## Packet rate with live frames\n\nBPF_PROG_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` (batches of {BATCH}): {frames} frames per run from the \
kernel's page pool into the balancer (under `bench_restore`) as if they arrived on the fixture's outside veth, each really redirected out \
of its inside veth; counted at the receiver (`rx_packets` of the inside veth's peer), divided by the run's wall time. One core; {rounds} \
interleaved rounds; median (min–max). Frames the program dropped, or the veth could not take, \
show as delivered below 1.\n\n| path | frame bytes | forwarded Mpps (at the receiver) | delivered / sent |\n| --- | ---: | ---: | ---: |"
    );
    match rates {
        Ok(rates) => {
            for r in rates {
                let _ = writeln!(md, "| {} | {} | {} | {:.3} |", r.name, r.bytes, r.mpps.show(2), r.delivered);
            }
        }
        Err(e) => {
            let _ = writeln!(md, "| not measured: {e} | | | |");
        }
    }
}
