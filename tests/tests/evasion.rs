//! The isolator against an evasion suite from the DMZ side (issue 6):
//! systematic scans of protected and open TCP/UDP ports with every
//! technique of `harness::evasion` — fragments (tiny, split, zero-length,
//! overlapping both ways, out of order, duplicated, decoys), IPv6 fragment
//! and extension headers in odd orders, VLAN/QinQ stacks, IPv4 options,
//! IPv4-mapped and translated IPv6 addresses, odd TCP flags, bogus UDP
//! lengths.
//!
//! "Reached" is measured at the receiver, never by the isolator's word: the
//! host's answers (SYN-ACK, RST, echo, port unreachable) captured on the DMZ
//! side, the echo servers' per-port counts, and an AF_PACKET capture on the
//! host's interface (it sees only what XDP passed) read with reassembly in
//! mind: overlapping fragments count under first-wins and last-wins.
//!
//! Every probe runs twice in the same lab: before the daemon starts (the
//! baseline: what the host's stack delivers, which shows the probes are
//! well-formed and the protected ports would be reached) and with the
//! isolator attached.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use harness::{
    evasion::{observe, probes, techniques, Endpoints, Probe, Technique},
    isolator_lab::{protected, IsolatorLab, ADMIN4, CONFIG, HOST4, HOST6, OUT4, OUT6},
    kernel::{KernelIsolator, ModelFrags},
    rawframe::{proto, FrameBuilder, RawSocket},
    rtnl::{self, Next},
    topology::mac,
    xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
};
use lb_common::model;

/// Protected (listening and closed) first, then open and closed unprotected.
const TCP_PORTS: &[u16] = &[22, 2377, 5432, 7946, 9000, 9001, 9050, 9100, 80, 443, 9101, 81];
const UDP_PORTS: &[u16] = &[161, 4789, 7946, 9001, 9050, 5000, 9101, 5001];

fn is_protected(p: u8, port: u16) -> bool {
    protected(p == proto::TCP, port).is_some()
}

fn endpoints(eth: FrameBuilder) -> Endpoints {
    Endpoints {
        eth,
        src4: OUT4.parse().unwrap(),
        dst4: HOST4.parse().unwrap(),
        src6: OUT6.parse().unwrap(),
        dst6: HOST6.parse().unwrap(),
        trusted4: ADMIN4.parse().unwrap(),
        decoy_tcp: 8080,
        decoy_udp: 53,
    }
}

/// What one probe achieved in one run.
#[derive(Clone, Debug, Default)]
struct Outcome {
    /// The host answered it (or its echo server counted it).
    delivered: bool,
    /// How a protected port was reached, if it was.
    breaches: Vec<String>,
    /// Its frames that the capture behind XDP saw.
    frames_seen: usize,
}

/// Frames from `from` on `sock` until it has been quiet for `quiet`.
fn drain(sock: &RawSocket, from: [u8; 6], quiet: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while let Some(f) = sock.recv_timeout(quiet).unwrap() {
        if f.len() >= 12 && f[6..12] == from {
            out.push(f);
        }
        assert!(Instant::now() < deadline, "captures never went quiet");
    }
    out
}

struct Wire<'a> {
    lab: &'a IsolatorLab,
    raw: RawSocket,
    /// The host's answers, on the DMZ side.
    answers: RawSocket,
    /// What XDP passed, on the host side.
    behind: RawSocket,
    dmz_mac: [u8; 6],
    host_mac: [u8; 6],
}

impl<'a> Wire<'a> {
    fn new(lab: &'a IsolatorLab) -> Self {
        Wire {
            lab,
            raw: RawSocket::open(&lab.dmz, "out0").unwrap(),
            answers: RawSocket::open_capture(&lab.dmz, "out0").unwrap(),
            behind: RawSocket::open_capture(&lab.host, "dmz0").unwrap(),
            dmz_mac: mac(&lab.dmz, "out0").unwrap(),
            host_mac: mac(&lab.host, "dmz0").unwrap(),
        }
    }

    /// Sends one technique's probes and reads what reached the host.
    fn run(&self, probes: &[&Probe]) -> Vec<Outcome> {
        drain(&self.answers, self.host_mac, Duration::ZERO);
        drain(&self.behind, self.dmz_mac, Duration::ZERO);
        let echo_ports: Vec<u16> = probes.iter().filter(|p| p.aim.proto == proto::UDP).map(|p| p.aim.port).collect();
        let echo_before: HashMap<u16, u64> = echo_ports.iter().map(|p| (*p, self.lab.udp.received(*p))).collect();
        for p in probes {
            for f in &p.frames {
                self.raw.send(f).unwrap();
            }
        }
        let answers: Vec<observe::Answer> =
            drain(&self.answers, self.host_mac, Duration::from_millis(250)).iter().filter_map(|f| observe::answer(f)).collect();
        let behind = drain(&self.behind, self.dmz_mac, Duration::from_millis(20));
        let echoed = |port: u16| self.lab.udp.received(port) - echo_before[&port];
        let passed: HashSet<&[u8]> = behind.iter().filter_map(|f| observe::ip_packet(f)).collect();
        let readings = observe::readings(&behind);
        probes
            .iter()
            .map(|p| {
                let a = p.aim;
                let mut o = Outcome::default();
                for ans in answers.iter().filter(|x| x.probe_sport == a.sport) {
                    o.delivered = true;
                    if is_protected(ans.proto, ans.port) {
                        o.breaches.push(format!("answer from {}/{}", ans.proto, ans.port));
                    }
                }
                // One probe per port and technique: the echo count is its own.
                if a.proto == proto::UDP && echoed(a.port) > 0 {
                    o.delivered = true;
                    if is_protected(a.proto, a.port) {
                        o.breaches.push(format!("udp/{} echo server received it", a.port));
                    }
                }
                for (pr, _, dport) in readings.iter().filter(|r| r.1 == a.sport) {
                    if is_protected(*pr, *dport) {
                        o.breaches.push(format!("passed XDP, reads as {pr}/{dport}"));
                    }
                }
                o.frames_seen = p.frames.iter().filter(|f| observe::ip_packet(f).is_some_and(|ip| passed.contains(ip))).count();
                o
            })
            .collect()
    }
}

/// Every technique against every protected and control port, before and
/// after the isolator is attached: with it, no probe reaches a protected
/// port; open ports receive what the host's stack would deliver anyway,
/// except where the isolator drops a technique outright (by design).
#[test]
fn evasion_scans_never_reach_a_protected_port() {
    let started = Instant::now();
    let mut lab = IsolatorLab::new("evas");
    // Translated sources answer from the DMZ too, so their probes can be
    // seen delivered (routes on the host, addresses in the DMZ).
    for (addr, prefix) in [("64:ff9b::a4d:3", "64:ff9b::/96"), ("2002:a4d:3::1", "2002::/16")] {
        rtnl::addr(&lab.dmz, "out0", &format!("{addr}/128")).unwrap();
        rtnl::route(&lab.host, prefix, Next::Dev("dmz0")).unwrap();
    }
    let dmz_mac = mac(&lab.dmz, "out0").unwrap();
    let host_mac = mac(&lab.host, "dmz0").unwrap();
    let e = endpoints(FrameBuilder::new(dmz_mac, host_mac));
    let ts = techniques();
    let wire = Wire::new(&lab);
    // Static neighbours: no answer waits for (or is lost in) ARP/ND.
    for addr in [OUT4, OUT6, "64:ff9b::a4d:3", "2002:a4d:3::1"] {
        rtnl::neighbour(&lab.host, "dmz0", addr.parse().unwrap(), dmz_mac, true).unwrap();
    }
    for addr in [HOST4, HOST6] {
        rtnl::neighbour(&lab.dmz, "out0", addr.parse().unwrap(), host_mac, true).unwrap();
    }

    let run_all = |wire: &Wire, first_sport: u16| -> (Vec<Probe>, Vec<Outcome>) {
        let ps = probes(&e, &ts, TCP_PORTS, UDP_PORTS, first_sport);
        let mut outcomes = Vec::new();
        for i in 0..ts.len() {
            let mine: Vec<&Probe> = ps.iter().filter(|p| p.technique == i).collect();
            outcomes.extend(wire.run(&mine));
        }
        (ps, outcomes)
    };
    let (base_probes, baseline) = run_all(&wire, 20000);
    drop(wire);
    lab.start_daemon();
    let wire = Wire::new(&lab);
    let protected_udp: Vec<u16> = UDP_PORTS.iter().copied().filter(|p| is_protected(proto::UDP, *p)).collect();
    let echoed_before: Vec<u64> = protected_udp.iter().map(|p| lab.udp.received(*p)).collect();
    let (iso_probes, isolated) = run_all(&wire, 40000);
    // Also what an echo server counted late, after its technique's window.
    std::thread::sleep(Duration::from_millis(500));
    for (port, before) in protected_udp.iter().zip(echoed_before) {
        assert_eq!(lab.udp.received(*port), before, "udp/{port} received datagrams with the isolator attached");
    }
    assert_eq!(base_probes.len(), iso_probes.len());

    let mut failures = Vec::new();
    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    for ((p, base), iso) in iso_probes.iter().zip(&baseline).zip(&isolated) {
        let t: &Technique = &ts[p.technique];
        let a = p.aim;
        let row = rows.entry(p.technique).or_default();
        row.probes += 1;
        row.frames += p.frames.len();
        let what = || format!("{} {}/{}", t.name, if a.proto == proto::TCP { "tcp" } else { "udp" }, a.port);
        if is_protected(a.proto, a.port) {
            row.protected += 1;
            row.base_protected += usize::from(base.delivered);
            row.breached += usize::from(!iso.breaches.is_empty());
            for b in &iso.breaches {
                failures.push(format!("{}: {b}", what()));
            }
        } else {
            row.controls += 1;
            row.base_controls += usize::from(base.delivered);
            row.delivered += usize::from(iso.delivered);
            if t.blocked.contains(&a.proto) {
                if iso.delivered {
                    failures.push(format!("{}: delivered, but the isolator drops this technique", what()));
                }
            } else if iso.frames_seen == 0 || iso.delivered != base.delivered {
                failures.push(format!(
                    "{}: control: {} of {} frames passed XDP, delivered {} (without the isolator: {})",
                    what(),
                    iso.frames_seen,
                    p.frames.len(),
                    iso.delivered,
                    base.delivered
                ));
            }
        }
    }
    println!("{:<70} {:>6} {:>6} {:>10} {:>10} {:>10}", "technique", "probes", "frames", "prot:base", "prot:iso", "ctl:base/iso");
    for (i, r) in &rows {
        println!(
            "{:<70} {:>6} {:>6} {:>6}/{:<3} {:>6}/{:<3} {:>6}/{}/{}",
            ts[*i].name, r.probes, r.frames, r.base_protected, r.protected, r.breached, r.protected, r.base_controls, r.delivered, r.controls
        );
    }
    let sum = |f: fn(&Row) -> usize| rows.values().map(f).sum::<usize>();
    println!(
        "{} techniques, {} probes ({} frames) per run; protected-port probes: {} sent, {} delivered without the isolator, {} reached with it; \
         controls: {} sent, {} delivered without / {} with the isolator; {:.1}s",
        rows.len(),
        sum(|r| r.probes),
        sum(|r| r.frames),
        sum(|r| r.protected),
        sum(|r| r.base_protected),
        sum(|r| r.breached),
        sum(|r| r.controls),
        sum(|r| r.base_controls),
        sum(|r| r.delivered),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // The baseline is real: plain probes reach every protected port without
    // the isolator, and most techniques deliver something.
    for name in ["v4 plain", "v6 plain"] {
        let (i, _) = ts.iter().enumerate().find(|(_, t)| t.name == name).unwrap();
        assert_eq!(rows[&i].base_protected, rows[&i].protected, "{name} without the isolator");
    }
    let delivering = rows.values().filter(|r| r.base_protected > 0).count();
    assert!(delivering * 2 > rows.len(), "only {delivering} of {} techniques reach a protected port without the isolator", rows.len());
}

/// Per-technique tallies for the report.
#[derive(Default)]
struct Row {
    probes: usize,
    frames: usize,
    protected: usize,
    base_protected: usize,
    breached: usize,
    controls: usize,
    base_controls: usize,
    delivered: usize,
}

/// The suite's frames as kernel-vs-model fixtures (`BPF_PROG_TEST_RUN`,
/// the lab's policy on `lo`): equal verdicts frame by frame, no
/// `XDP_ABORTED`, and what the model passes never reads (reassembled either
/// way) as a datagram to a protected port.
#[test]
fn evasion_frames_kernel_matches_model() {
    harness::require_root().unwrap();
    let config = lb_user::source::config::Config::parse(&CONFIG.replace("\"dmz0\"", "\"lo\""), "evasion.toml").unwrap();
    let mut k = KernelIsolator::new("evasion", config);
    let reference = k.reference();
    let mut frags = ModelFrags::default();
    let e = endpoints(FrameBuilder::new([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]));
    let ts = techniques();
    let ps = probes(&e, &ts, TCP_PORTS, UDP_PORTS, 20000);
    let mut frames = 0;
    for p in &ps {
        let mut passed = Vec::new();
        for f in &p.frames {
            let m = model::decide(f, 1, &reference, &k.host, &mut frags).verdict;
            let action = k.run(f).expect("no runts");
            assert_ne!(action, XDP_ABORTED);
            let want = if m.is_drop() { XDP_DROP } else { XDP_PASS };
            assert_eq!(action, want, "{} {:?}: kernel {action}, model {m:?}", ts[p.technique].name, p.aim);
            if !m.is_drop() {
                passed.push(f.clone());
            }
            frames += 1;
        }
        for (pr, _, dport) in observe::readings(&passed) {
            assert!(!is_protected(pr, dport), "{} {:?}: the model passes frames that read as {pr}/{dport}", ts[p.technique].name, p.aim);
        }
    }
    println!("{} probes, {frames} frames: kernel == model, nothing passed reads as a protected port", ps.len());
}
