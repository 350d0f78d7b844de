//! `cargo xtask bench` (isolator part): the kernel's own per-packet time for
//! each path of the isolator, with BPF_PROG_TEST_RUN repeating one frame.
//! The isolator never rewrites a packet, so repeating on the same buffer
//! measures the same path every time. Rounds are interleaved (A B C … A B
//! C …) and the median is reported with min–max. Results go to
//! `bench/results/isolator.md`.

use std::{fmt::Write as _, net::{Ipv4Addr, Ipv6Addr}, path::Path};

use anyhow::Result;
use harness::{
    kernel::{fixture_config, KernelIsolator},
    rawframe::{fragment_ipv4, ExtHeader, FrameBuilder, Ipv4, Ipv6, L4},
};

const ROUNDS: usize = 7;
const REPEAT: u32 = 200_000;

fn main() -> Result<()> {
    harness::require_root()?;
    let mut k = KernelIsolator::new("bench", fixture_config());
    let eth = FrameBuilder::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let out4 = Ipv4Addr::new(10, 1, 2, 3);
    let trust4 = Ipv4Addr::new(10, 9, 5, 5);
    let dst4 = Ipv4Addr::new(10, 0, 0, 1);
    let out6: Ipv6Addr = "fd01::3".parse()?;
    let dst6: Ipv6Addr = "fd00::1".parse()?;
    let syn = |p| L4::tcp_syn(40000, p);
    let paths: Vec<(&str, Vec<u8>)> = vec![
        ("non-IP (ARP)", eth.frame(0x0806, &[0; 28])),
        ("IPv4 TCP, unprotected port: pass", eth.ipv4(&Ipv4::new(out4, dst4).packet(&syn(443)))),
        ("IPv4 TCP, protected port: drop", eth.ipv4(&Ipv4::new(out4, dst4).packet(&syn(22)))),
        ("IPv4 TCP, protected port, allow-listed: pass", eth.ipv4(&Ipv4::new(trust4, dst4).packet(&syn(22)))),
        ("IPv4 TCP in a VID-0 tag, protected: drop", eth.clone().vlan(0x8100, 0).ipv4(&Ipv4::new(out4, dst4).packet(&syn(22)))),
        (
            "IPv4 first fragment (verdict remembered): pass",
            eth.ipv4(&fragment_ipv4(&Ipv4::new(out4, dst4).packet(&L4::udp(1, 53, &[0; 64])), &[32])?[0]),
        ),
        ("IPv6 TCP, unprotected port: pass", eth.ipv6(&Ipv6::new(out6, dst6).packet(&syn(443)))),
        (
            "IPv6 TCP behind HBH + DestOpts, protected: drop",
            eth.ipv6(&Ipv6::new(out6, dst6).with(ExtHeader::HopByHop(vec![])).with(ExtHeader::DestOpts(vec![])).packet(&syn(22))),
        ),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..ROUNDS {
        for (i, (_, frame)) in paths.iter().enumerate() {
            let (_, per_run) = k.run_repeated(frame, REPEAT);
            samples[i].push(per_run.as_secs_f64() * 1e9);
        }
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let mut md = String::new();
    writeln!(md, "# Isolator: kernel time per packet (BPF_PROG_TEST_RUN)\n")?;
    writeln!(md, "- kernel {}; CPU {cpu}; {} cores", kernel.trim(), std::thread::available_parallelism()?.get())?;
    writeln!(md, "- method: one frame repeated {REPEAT} times per call (the isolator never rewrites packets, so every repeat takes the same path); {ROUNDS} interleaved rounds; median (min–max) of the kernel-reported mean ns per run; drop events off; counters on")?;
    writeln!(md, "- these VMs are noisy: compare rows of one run, not runs\n")?;
    writeln!(md, "| path | verdict | ns/packet median | min–max |")?;
    writeln!(md, "| --- | --- | ---: | ---: |")?;
    for (i, (name, frame)) in paths.iter().enumerate() {
        let (action, _) = k.run_repeated(frame, 1);
        let mut s = samples[i].clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let verdict = match action { 1 => "XDP_DROP", 2 => "XDP_PASS", _ => "other" };
        writeln!(md, "| {name} | {verdict} | {:.1} | {:.1}–{:.1} |", s[s.len() / 2], s[0], s[s.len() - 1])?;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("isolator.md"), &md)?;
    print!("{md}");
    Ok(())
}
