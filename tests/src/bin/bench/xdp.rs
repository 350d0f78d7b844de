//! The `xdp` section: the kernel's time per packet on each XDP path, with
//! BPF_PROG_TEST_RUN, beside two baselines (an XDP_PASS program, the
//! floor, and parse + MAC swap + XDP_TX) and Katran: measured in the same
//! run when `SWARMLB_BENCH_KATRAN_OBJ` names its object ([`katran`]), else
//! its figures quoted from 2026-12-01.
//!
//! Programs that rewrite packets cannot simply be repeated on one buffer
//! (the second repeat would see the first one's output), so the balancer
//! runs under `bench_restore` (bench-ebpf), which puts the input back
//! before every repeat; its own cost is measured and subtracted. A few
//! rows (the PROXY protocol's first data segment, which grows, and its
//! references) are also timed as single runs: many calls with repeat 1,
//! each starting from the input afresh. The method is spelled out in
//! [`method`], which the results carry.

mod katran;
mod live;

use std::{fmt::Write as _, net::IpAddr, path::Path};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use harness::{
    xdp_action::*,
    kernel::{fixture_config, KernelIsolator, ModelFrags},
    lb_kernel::{desired_rules, neighbour_mac, with_proxy, KernelBalancer, ModelTables, BACKENDS_V4, BACKENDS_V6, CLIENT_V4, CLIENT_V6},
    rawframe::{fragment_ipv4, ExtHeader, FrameBuilder, Ipv4, Ipv6, L4},
};
use lb_common::{
    balancer::{FlowKey, LbCounter, Mode, LB_COUNTERS_LEN},
    balancer_model::{process, Action, Outcome},
    model,
    wire::{FAMILY_V4, IPPROTO_TCP, TCP_ACK, TCP_SYN},
};
use lb_user::datapath::{
    balancer_writer::{Desired, DesiredBackend, DesiredVip},
    maps::addr_key,
};

use crate::{
    report::{BarChart, Section, Summary},
    Opts,
};


/// Longest frame `bench_restore` restores (bench-ebpf's `FRAME_MAX`).
const FRAME_MAX: usize = 256;

/// The VIPs of the balancer rows (TEST-NET-3 and the documentation prefix).
const NAT4: &str = "203.0.113.10";
const DSR4: &str = "203.0.113.11";
const NAT6: &str = "2001:db8:10::10";
/// A `nat` VIP with firewall rules (an allow list and denies), else as `NAT4`.
const NATFW4: &str = "203.0.113.12";
const DSR6: &str = "2001:db8:10::11";
/// `nat` VIPs with `proxy_protocol = "v2"`.
const PROXY4: &str = "203.0.113.13";
const PROXY6: &str = "2001:db8:10::13";
/// `nat` VIPs with `proxy_protocol = "v1"`: from the bench's client the
/// IPv4 line is 49 bytes (odd: the payload's checksum is realigned), the
/// IPv6 one 102 (even: it is not).
const PROXY4_V1: &str = "203.0.113.140";
const PROXY6_V1: &str = "2001:db8:10::14";
/// The edge's own outside address: not a VIP, so on to the isolator.
const EDGE_OUTSIDE_V4: &str = "198.51.100.1";

/// How many rounds and repeats.
struct Plan {
    rounds: usize,
    /// Repeats per call of the rows whose every repeat is the same path.
    repeat: u32,
    /// Repeats per call of the new-flow rows: each is a new flow (and in
    /// `nat` mode an SNAT port), so a call must stay well below the 31 744
    /// SNAT ports a backend has (1024–32767); the tables are emptied
    /// between calls.
    new_flow_repeat: u32,
    /// Live frames per run of the packet-rate measurement.
    live_frames: u32,
    /// Calls (each one run) per round of a single-run row.
    single_calls: usize,
}

impl Plan {
    fn of(opts: &Opts) -> Self {
        if opts.quick {
            Plan { rounds: 3, repeat: 50_000, new_flow_repeat: 4096, live_frames: 500_000, single_calls: 5000 }
        } else {
            Plan { rounds: 7, repeat: 200_000, new_flow_repeat: 8192, live_frames: 2_000_000, single_calls: 20_000 }
        }
    }
}

/// Which flow-table path a balancer row takes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Flow {
    /// Every repeat a flow the table has not seen.
    New,
    /// Every repeat a client packet of the same flow, which the flow table
    /// (LB_FLOWS) remembers: in `nat` proven by its handshake, in the DSR
    /// modes placed by its first packet that is not a SYN.
    Established,
    /// A `nat` VIP with a PROXY protocol option: every repeat the client's
    /// first data segment of a proven flow whose backend has not
    /// acknowledged the header yet, which gets the header in front
    /// (`lb_common::proxy_protocol::client_action`'s PREPEND). A
    /// retransmission of that segment does the same work, so it can be
    /// run again and again.
    FirstData,
    /// `nat`: every repeat a client packet of the same flow whose NAT entry
    /// is not proven (its SYN passed, no SYN-ACK yet): not in the flow
    /// table, it probes the SNAT ports for its own entry.
    Unproven,
    /// `nat`: every repeat the backend's packet of a proven flow, arriving
    /// on the inside interface, translated back to the client.
    Reply,
    /// Not for any VIP.
    NotOurs,
    /// Not for any VIP, with the isolator taken out of `LB_NEXT_STAGE`:
    /// the balancer alone, its tail call failing (what the isolator's
    /// tail call and run cost).
    NotOursAlone,
}

impl Flow {
    /// What one packet of the row counts: exactly these counters, once.
    fn counts(self) -> Counts {
        counts(match self {
            Flow::New => &[LbCounter::NewFlow],
            Flow::Established | Flow::FirstData | Flow::Unproven => &[LbCounter::FlowHit],
            Flow::Reply => &[LbCounter::NatReply],
            Flow::NotOurs | Flow::NotOursAlone => &[],
        })
    }

    /// Whether the flow table holds the client's flow after the row's
    /// packet (`None`: no flow).
    fn remembered(self) -> Option<bool> {
        match self {
            Flow::Established | Flow::FirstData | Flow::Reply => Some(true),
            Flow::New | Flow::Unproven => Some(false),
            Flow::NotOurs | Flow::NotOursAlone => None,
        }
    }
}

/// One packet run through the kernel before a row's calls, bringing the
/// row's flow to the state the row measures.
#[derive(Clone)]
pub struct Step {
    what: &'static str,
    frame: Vec<u8>,
    /// Arrives on the inside interface (the backend's), else the outside.
    inside: bool,
    /// The counters it bumps.
    counts: Counts,
    /// Whether the flow table holds the client's flow after it.
    remembered: bool,
}

/// Counter increments, indexed as [`LbCounter`].
type Counts = Vec<u64>;

/// Each counter of `cs` once.
fn counts(cs: &[LbCounter]) -> Counts {
    let mut v = vec![0; LB_COUNTERS_LEN as usize];
    for &c in cs {
        v[c as usize] += 1;
    }
    v
}

fn show_counts(c: &[u64]) -> String {
    let parts: Vec<String> = LbCounter::ALL.iter().zip(c).filter(|(_, n)| **n != 0).map(|(k, n)| format!("{k:?} ×{n}")).collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// The counters the model's outcome bumps (as the kernel counts them).
fn tally(o: &Outcome) -> Counts {
    let mut v = vec![0; LB_COUNTERS_LEN as usize];
    if let Some(c) = o.counter {
        v[c as usize] += 1;
    }
    if o.moved {
        v[LbCounter::FlowMoved as usize] += 1;
    }
    if let Some(c) = o.extra.filter(|_| o.action != Action::Drop) {
        v[c as usize] += 1;
    }
    v
}

fn kernel_counters(kb: &KernelBalancer) -> Result<Counts, String> {
    kb.maps().counters().map_err(|e| format!("reading the counters: {e:#}"))
}

fn delta(before: &[u64], after: &[u64]) -> Counts {
    after.iter().zip(before).map(|(a, b)| a.wrapping_sub(*b)).collect()
}

/// Whether the kernel's flow table (LB_FLOWS) holds the flow.
fn remembered(kb: &KernelBalancer, key: &FlowKey) -> bool {
    kb.maps().flows.get(key, 0).is_ok()
}

/// Empties the flow and NAT tables and runs a row's setup through the
/// kernel ([`run_setup`]).
fn prepare(kb: &mut KernelBalancer, setup: &[Step], key: Option<&FlowKey>, model: Option<&mut ModelTables>) -> Result<(), String> {
    kb.clear_flows();
    run_setup(kb, setup, key, model)
}

/// Runs a row's setup through the kernel: each packet must be redirected,
/// bump exactly its counters and leave the client's flow in the flow
/// table or not, as its step says; with `model`, also through lb-common's
/// model, which must agree on action, output packet, counters and flow
/// table.
fn run_setup(kb: &mut KernelBalancer, setup: &[Step], key: Option<&FlowKey>, mut model: Option<&mut ModelTables>) -> Result<(), String> {
    for step in setup {
        let ifindex = if step.inside { kb.net.in_ifindex } else { kb.net.out_ifindex };
        let before = kernel_counters(kb)?;
        let (action, out) = kb.run(&step.frame, ifindex);
        let counted = delta(&before, &kernel_counters(kb)?);
        if action != XDP_REDIRECT {
            return Err(format!("setup, {}: {} (expected XDP_REDIRECT)", step.what, action_name(action)));
        }
        if counted != step.counts {
            return Err(format!("setup, {}: counted {} (expected {})", step.what, show_counts(&counted), show_counts(&step.counts)));
        }
        if let Some(model) = model.as_deref_mut() {
            let mut buf = vec![0u8; step.frame.len() + lb_common::balancer_model::MAX_GROWTH];
            let o = process(&step.frame, &mut buf, ifindex, model);
            if action_code(o.action) != action || buf[..o.len] != out[..] {
                return Err(format!("setup, {}: the kernel's action or packet differs from the model's ({:?})", step.what, o.action));
            }
            if tally(&o) != counted {
                return Err(format!("setup, {}: the model counts {}, the kernel {}", step.what, show_counts(&tally(&o)), show_counts(&counted)));
            }
            if key.is_some_and(|k| model.flows.contains_key(k) != step.remembered) {
                return Err(format!("setup, {}: the model's flow table {} the flow", step.what, if step.remembered { "lacks" } else { "holds" }));
            }
        }
        if key.is_some_and(|k| remembered(kb, k) != step.remembered) {
            return Err(format!("setup, {}: LB_FLOWS {} the flow", step.what, if step.remembered { "lacks" } else { "holds" }));
        }
    }
    Ok(())
}

/// What a row runs.
#[derive(Clone, Copy, PartialEq)]
enum Subject {
    /// `bench_pass`, directly: the floor.
    Floor,
    /// `bench_swap_tx`, directly (swapping the MACs back and forth is the
    /// same work every repeat).
    SwapTx,
    /// The isolator on a DMZ interface, directly: it never rewrites.
    Isolator,
    /// The balancer on its outside interface, under `bench_restore`.
    Balancer(Flow),
    /// `bench_pass` in single runs, as [`Subject::Single`] runs: the floor
    /// of single runs (the kernel's timer around one run and the call).
    SingleFloor,
    /// The balancer in single runs ([`time_singles`]): many
    /// BPF_PROG_TEST_RUN calls with repeat 1, each starting from the row's
    /// frame afresh (the kernel copies the input per call), so nothing
    /// needs restoring, and frames too long for `bench_restore` can run.
    Single(Flow),
    /// Katran's row `n` ([`katran::Katran::rows`]), under `bench_restore`.
    Katran(usize),
}

/// One line of the results.
struct Row {
    group: &'static str,
    name: String,
    subject: Subject,
    frame: Vec<u8>,
    /// The frame arrives on the balancer's inside interface (a backend's
    /// reply), else on its outside one.
    inside: bool,
    /// Packets that bring the flow to the row's state before every call.
    setup: Vec<Step>,
    /// The client's flow (the key of LB_FLOWS), for balancer rows of a VIP.
    key: Option<FlowKey>,
    /// The XDP action the path ends in.
    expect: u32,
    /// The Katran path a swarmlb row is compared with.
    katran: Option<katran::Compare>,
    /// What the row is to the PROXY protocol's cost table.
    cost: Option<CostTag>,
}

/// A row's place in the PROXY protocol's cost table ([`cost_table`]).
#[derive(Clone, Copy, PartialEq)]
struct CostTag {
    /// The option as the rows name it (`PROXY v2`); `None`: a `nat` VIP
    /// without one, the reference.
    option: Option<&'static str>,
    family: &'static str,
    role: Role,
}

/// Which packet of a flow a cost-table row runs.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// The client's first data segment, of this many payload bytes.
    First(usize),
    /// A later client data segment of this many bytes (without the
    /// option: any data segment).
    Data(usize),
    /// The client's ACK without data after the first data.
    Ack,
    /// The backend's acknowledgement of the client's data.
    Reply,
}

/// The interface a balancer row's frame arrives on.
fn row_ifindex(row: &Row, kb: &KernelBalancer) -> u32 {
    if row.inside {
        kb.net.in_ifindex
    } else {
        kb.net.out_ifindex
    }
}

/// A row's measurements.
#[derive(Default)]
struct Measured {
    gross: Vec<f64>,
    net: Vec<f64>,
    /// `bench_restore`'s own cost (restored rows), subtracted from both;
    /// for single-run rows, the floor of single runs less the XDP_PASS
    /// floor.
    wrapper: Vec<f64>,
    /// The output packet every single run must leave (the model's, as
    /// checked).
    expected: Vec<u8>,
    /// Checks that failed (the row's numbers are not valid).
    failures: Vec<String>,
}

impl Measured {
    fn fail(&mut self, what: String) {
        eprintln!("xdp bench: CHECK FAILED: {what}");
        if !self.failures.contains(&what) {
            self.failures.push(what);
        }
    }
}

/// Runs the section.
pub fn run(opts: &Opts) -> Result<Section> {
    let plan = Plan::of(opts);
    let mut bench = BenchPrograms::load()?;
    let mut iso = KernelIsolator::new("benchxdp", fixture_config());
    let mut kb = KernelBalancer::new("benchxdp");
    kb.apply(&desired());
    let balancer = kb.balancer_fd()?;
    let mut katran = katran::Katran::from_env()?;
    let mut rows = rows(&mut kb)?;
    if let Some(k) = katran.as_mut() {
        rows.extend(k.rows(&client_eth(&kb)));
    }
    if let Some(wanted) = &opts.rows {
        let named = |r: &Row| wanted.iter().any(|w| r.name.contains(w.as_str()));
        // What the named rows are measured against comes along: the floor
        // of single runs, and the rows without the option of the cost table.
        let single = rows.iter().any(|r| named(r) && matches!(r.subject, Subject::Single(_)));
        let option = rows.iter().any(|r| named(r) && r.cost.is_some_and(|c| c.option.is_some()));
        rows.retain(|r| {
            r.subject == Subject::Floor
                || named(r)
                || single && r.subject == Subject::SingleFloor
                || option && r.cost.is_some_and(|c| c.option.is_none())
        });
    }
    let mut m: Vec<Measured> = rows.iter().map(|_| Measured::default()).collect();
    let mut verdicts = Vec::new();
    for (row, m) in rows.iter().zip(&mut m) {
        verdicts.push(check(row, m, &mut bench, &mut iso, &mut kb, &balancer, katran.as_mut())?);
    }
    for _ in 0..plan.rounds {
        let singles = time_singles(&rows, &mut m, &plan, &mut bench, &mut kb)?;
        let single_floor = rows.iter().zip(&singles).find(|(r, _)| r.subject == Subject::SingleFloor).map_or(f64::NAN, |(_, t)| *t);
        let mut floor = f64::NAN;
        for ((row, m), single) in rows.iter().zip(&mut m).zip(&singles) {
            let (gross, net) = match row.subject {
                Subject::SingleFloor => {
                    m.wrapper.push(single_floor - floor);
                    (single_floor, 0.0)
                }
                Subject::Single(_) => {
                    m.wrapper.push(single_floor - floor);
                    (single - single_floor + floor, single - single_floor)
                }
                Subject::Balancer(flow) => {
                    let (net, wrapper) = time_balancer(row, flow, &plan, m, &mut bench, &mut kb, &balancer)?;
                    m.wrapper.push(wrapper - floor);
                    (net + floor, net)
                }
                Subject::Katran(i) => {
                    let k = katran.as_mut().expect("Katran rows exist only with Katran loaded");
                    let (net, wrapper) = k.time(row, i, &plan, m, &mut bench)?;
                    m.wrapper.push(wrapper - floor);
                    (net + floor, net)
                }
                _ => {
                    let gross = time_direct(row, &plan, m, &mut bench, &mut iso)?;
                    if row.subject == Subject::Floor {
                        floor = gross;
                    }
                    (gross, gross - floor)
                }
            };
            m.gross.push(gross);
            m.net.push(net);
        }
    }
    let live_paths = live_paths(&rows);
    // A kernel that refuses live frames costs the table its packet-rate
    // part, not the per-packet rows measured above.
    // A row-filtered (profiling) run skips the packet rates.
    let live_paths = if opts.rows.is_some() { Vec::new() } else { live_paths };
    let rates = live::measure(&live_paths, plan.rounds.min(3), plan.live_frames, &mut kb, &mut bench, &balancer).map_err(|e| format!("{e:#}"));
    let mut section = section(&rows, &m, &verdicts, &plan, katran.as_ref());
    live::table(&mut section.markdown, &rates, plan.live_frames, plan.rounds.min(3));
    Ok(section)
}

/// The established-flow rows, for the live-frames rates.
fn live_paths(rows: &[Row]) -> Vec<live::LivePath> {
    rows.iter()
        .filter(|r| r.subject == Subject::Balancer(Flow::Established))
        .filter_map(|r| Some(live::LivePath { name: r.name.clone(), frame: r.frame.clone(), setup: r.setup.clone(), key: r.key? }))
        .collect()
}

/// The balancer's services: one VIP per mode and family, TCP 443.
fn desired() -> Desired {
    let vip = |name: &str, address: &str, mode: Mode, backends: &[&str]| DesiredVip {
        name: name.into(),
        address: address.parse().unwrap(),
        mode,
        rules: desired_rules(&[(IPPROTO_TCP, 443, 443)]),
        backends: backends.iter().map(|a| DesiredBackend { address: a.parse().unwrap(), weight: 1, up: true }).collect(),
        allow: Vec::new(),
        deny: Vec::new(),
    };
    Desired {
        inside_v4: Some("10.1.0.1".parse().unwrap()),
        inside_v6: Some("fd00:1::1".parse().unwrap()),
        snat_ports: (1024, 32767),
        snat_pool: Vec::new(),
        egress: Vec::new(),
        macs: Vec::new(),
        vips: vec![
            vip("nat4", NAT4, Mode::Nat, &BACKENDS_V4),
            DesiredVip {
                // The client's /24 allowed, 16 denied /25s (one inside
                // that /24): the trie has some depth.
                allow: vec![("198.51.100.0".parse().unwrap(), 24)],
                deny: (0..16u8).map(|i| (IpAddr::from([198, 51, 100 + i, 128]), 25)).collect(),
                ..vip("natfw4", NATFW4, Mode::Nat, &BACKENDS_V4)
            },
            vip("dsr4", DSR4, Mode::Dsr, &BACKENDS_V4),
            vip("nat6", NAT6, Mode::Nat, &BACKENDS_V6),
            vip("dsr6", DSR6, Mode::Dsr, &BACKENDS_V6),
            with_proxy(vip("pp4", PROXY4, Mode::Nat, &BACKENDS_V4), lb_common::proxy_protocol::PROXY_V2),
            with_proxy(vip("pp6", PROXY6, Mode::Nat, &BACKENDS_V6), lb_common::proxy_protocol::PROXY_V2),
            with_proxy(vip("pp4v1", PROXY4_V1, Mode::Nat, &BACKENDS_V4), lb_common::proxy_protocol::PROXY_V1),
            with_proxy(vip("pp6v1", PROXY6_V1, Mode::Nat, &BACKENDS_V6), lb_common::proxy_protocol::PROXY_V1),
        ],
    }
}

/// Every row, in the order they run and are reported.
fn rows(kb: &mut KernelBalancer) -> Result<Vec<Row>> {
    let mut rows = baseline_rows();
    rows.extend(isolator_rows());
    rows.extend(balancer_rows(kb)?);
    Ok(rows)
}

fn row(group: &'static str, name: &str, subject: Subject, frame: Vec<u8>, expect: u32) -> Row {
    Row { group, name: name.to_owned(), subject, frame, inside: false, setup: Vec::new(), key: None, expect, katran: None, cost: None }
}

/// A TCP SYN from `src` to `dst`:`dport` behind `eth`.
fn syn(eth: &FrameBuilder, src: &str, dst: &str, dport: u16) -> Vec<u8> {
    tcp(eth, src, dst, &L4::tcp_syn(40000, dport))
}

fn tcp(eth: &FrameBuilder, src: &str, dst: &str, l4: &L4) -> Vec<u8> {
    match (src.parse().unwrap(), dst.parse().unwrap()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(&Ipv4::new(s, d).packet(l4)),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(&Ipv6::new(s, d).packet(l4)),
        _ => unreachable!("mixed address families"),
    }
}

fn isolator_eth() -> FrameBuilder {
    FrameBuilder::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
}

fn baseline_rows() -> Vec<Row> {
    let frame = syn(&isolator_eth(), "10.1.2.3", "10.0.0.1", 443);
    vec![
        row("baseline", "XDP_PASS program (the floor)", Subject::Floor, frame.clone(), XDP_PASS),
        row("baseline", "parse eth/IPv4/TCP, swap MACs, XDP_TX", Subject::SwapTx, frame.clone(), XDP_TX),
        row("baseline", "XDP_PASS program, single runs (their floor)", Subject::SingleFloor, frame, XDP_PASS),
    ]
}

/// The old isolator bench's rows, under the fixture policy (`lo` is the
/// DMZ interface; tcp/22 protected; 10.9.0.0/16 allow-listed).
fn isolator_rows() -> Vec<Row> {
    let eth = isolator_eth();
    let (out4, trust4, dst4, out6, dst6) = ("10.1.2.3", "10.9.5.5", "10.0.0.1", "fd01::3", "fd00::1");
    let first_fragment = {
        let packet = Ipv4::new(out4.parse().unwrap(), dst4.parse().unwrap()).packet(&L4::udp(1, 53, &[0; 64]));
        eth.ipv4(&fragment_ipv4(&packet, &[32]).expect("fragments")[0])
    };
    let ext = Ipv6::new(out6.parse().unwrap(), dst6.parse().unwrap())
        .with(ExtHeader::HopByHop(vec![]))
        .with(ExtHeader::DestOpts(vec![]))
        .packet(&L4::tcp_syn(40000, 22));
    let r = |name: &str, frame: Vec<u8>, expect: u32| row("isolator", name, Subject::Isolator, frame, expect);
    vec![
        r("non-IP (ARP): pass", eth.frame(0x0806, &[0; 28]), XDP_PASS),
        r("IPv4 TCP, unprotected port: pass", syn(&eth, out4, dst4, 443), XDP_PASS),
        r("IPv4 TCP, protected port: drop", syn(&eth, out4, dst4, 22), XDP_DROP),
        r("IPv4 TCP, protected port, allow-listed: pass (+ reverse-path stage, strict)", syn(&eth, trust4, dst4, 22), XDP_PASS),
        r("IPv4 TCP, protected port, allow-listed but forged (route via inside): drop", syn(&eth, "10.9.130.5", dst4, 22), XDP_DROP),
        r("IPv4 TCP, unprotected port, loopback source: drop (impossible)", syn(&eth, "127.0.0.1", dst4, 443), XDP_DROP),
        r("IPv6 TCP, protected port, allow-listed: pass (+ reverse-path stage, strict)", syn(&eth, "fd09::5", dst6, 22), XDP_PASS),
        r("IPv4 TCP in a VID-0 tag, protected: drop", syn(&eth.clone().vlan(0x8100, 0), out4, dst4, 22), XDP_DROP),
        r("IPv4 first fragment (verdict remembered): pass", first_fragment, XDP_PASS),
        r("IPv6 TCP, unprotected port: pass", syn(&eth, out6, dst6, 443), XDP_PASS),
        r("IPv6 TCP behind HBH + DestOpts, protected: drop", eth.ipv6(&ext), XDP_DROP),
    ]
}

/// The client's initial sequence number ([`L4::tcp_syn`]'s) and the
/// backend's, in the handshakes the rows' flows are set up with.
const CLIENT_ISN: u32 = 0x1000_0000;
const BACKEND_ISN: u32 = 0x2000_0000;
/// The client's port in every balancer row.
const CLIENT_PORT: u16 = 40000;

/// The key of LB_FLOWS for the client's flow to `vip`:443.
fn client_flow(client: &str, vip: &str) -> FlowKey {
    let (src, family) = addr_key(client.parse().unwrap());
    let dst = addr_key(vip.parse().unwrap()).0;
    FlowKey { src, dst, src_port: CLIENT_PORT, dst_port: 443, proto: IPPROTO_TCP, family, _pad: [0; 2] }
}

/// The backend and SNAT port the kernel gives a `nat` flow's SYN with
/// empty tables (as every setup starts): where the backend's packets of
/// the flow come from and go to.
fn nat_placement(kb: &mut KernelBalancer, syn: &[u8]) -> Result<(IpAddr, u16)> {
    kb.clear_flows();
    let ifindex = kb.net.out_ifindex;
    let (action, out) = kb.run(syn, ifindex);
    kb.clear_flows();
    ensure!(action == XDP_REDIRECT, "a nat SYN ended in {} (expected XDP_REDIRECT)", action_name(action));
    let l4 = tcp_offset(&out)?;
    let backend = match u16::from_be_bytes([out[12], out[13]]) {
        0x0800 => IpAddr::from(<[u8; 4]>::try_from(&out[30..34])?),
        _ => IpAddr::from(<[u8; 16]>::try_from(&out[38..54])?),
    };
    Ok((backend, u16::from_be_bytes([out[l4], out[l4 + 1]])))
}

/// The Ethernet header of the client's frames to the edge.
fn client_eth(kb: &KernelBalancer) -> FrameBuilder {
    FrameBuilder::new(neighbour_mac(CLIENT_V4.parse().unwrap()), kb.net.out_mac)
}

/// A `nat` flow as the rows set it up: the client's SYN, the backend's
/// SYN-ACK (ISN [`BACKEND_ISN`]) from its address and the service's port to
/// the edge's inside address and the flow's SNAT port, through the inside
/// interface (the route's, which the NAT entry records), then the client's
/// ACK of exactly ISN + 1, which proves the entry: the flow table
/// remembers the flow.
struct NatFlow {
    key: FlowKey,
    /// The client's Ethernet header, address and the VIP.
    eth: FrameBuilder,
    client: &'static str,
    vip: &'static str,
    /// The backend's Ethernet header, address and the flow's SNAT port;
    /// the edge's inside address.
    beth: FrameBuilder,
    backend: IpAddr,
    nat_port: u16,
    inside: &'static str,
    handshake: Vec<Step>,
}

impl NatFlow {
    fn new(kb: &mut KernelBalancer, eth: &FrameBuilder, client: &'static str, vip: &'static str, inside: &'static str) -> Result<Self> {
        let syn_frame = syn(eth, client, vip, 443);
        let (backend, nat_port) = nat_placement(kb, &syn_frame)?;
        let beth = FrameBuilder::new(neighbour_mac(backend), kb.net.in_mac);
        let mut f = NatFlow { key: client_flow(client, vip), eth: eth.clone(), client, vip, beth, backend, nat_port, inside, handshake: Vec::new() };
        f.handshake = vec![
            Step { what: "client SYN", frame: syn_frame, inside: false, counts: counts(&[LbCounter::NewFlow]), remembered: false },
            Step { what: "backend SYN-ACK", frame: f.backend_segment(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1), inside: true, counts: counts(&[LbCounter::NatReply]), remembered: false },
            Step { what: "client ACK of ISN + 1", frame: f.client_segment(CLIENT_ISN + 1, 0), inside: false, counts: counts(&[LbCounter::FlowHit, LbCounter::FlowProven]), remembered: true },
        ];
        Ok(f)
    }

    /// The client's segment at `seq` acknowledging the SYN-ACK, with
    /// `payload` bytes of data.
    fn client_segment(&self, seq: u32, payload: usize) -> Vec<u8> {
        let data = (0..payload).map(|i| i as u8).collect();
        tcp(&self.eth, self.client, self.vip, &L4::Tcp { sport: CLIENT_PORT, dport: 443, seq, ack: BACKEND_ISN + 1, flags: TCP_ACK, window: 64240, payload: data })
    }

    /// The backend's segment of the flow, without data.
    fn backend_segment(&self, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        tcp(&self.beth, &self.backend.to_string(), self.inside, &L4::Tcp { sport: 443, dport: self.nat_port, seq, ack, flags, window: 65535, payload: Vec::new() })
    }
}

/// New and established flows in both modes and families, the `nat`
/// reply and (IPv4) unproven paths, the PROXY protocol's rows
/// ([`proxy_rows`]) and a packet for no VIP. New flows are SYNs;
/// established ones the client's ACK of the backend's SYN-ACK, after the
/// handshake that makes the flow table remember the flow.
fn balancer_rows(kb: &mut KernelBalancer) -> Result<Vec<Row>> {
    let eth = client_eth(kb);
    let ack = L4::Tcp { sport: CLIENT_PORT, dport: 443, seq: CLIENT_ISN + 1, ack: BACKEND_ISN + 1, flags: TCP_ACK, window: 64240, payload: Vec::new() };
    let mut rows = Vec::new();
    for (family, client, nat, dsr, tunnel, inside) in
        [("IPv4", CLIENT_V4, NAT4, DSR4, "IPIP", "10.1.0.1"), ("IPv6", CLIENT_V6, NAT6, DSR6, "IP6IP6", "fd00:1::1")]
    {
        // (mode, VIP, rewrite, what the row's name adds)
        let mut vips = vec![("nat", nat, "DNAT+SNAT", ""), ("dsr", dsr, tunnel, "")];
        if family == "IPv4" {
            // The allowed client's packets read the VIP's trie.
            vips.push(("nat", NATFW4, "DNAT+SNAT", " with firewall rules"));
        }
        for (mode, vip, rewrite, with) in vips {
            let firewalled = vip == NATFW4;
            let note = if mode == "nat" { "nat does more: both addresses and ports, a NAT entry" } else { "" };
            let compare = |path| (!firewalled).then(|| katran::Compare::new(path, mode == "nat", family == "IPv6", note));
            // The plain `nat` VIP's rows are the PROXY protocol's references.
            let tag = |role| (mode == "nat" && !firewalled).then_some(CostTag { option: None, family, role });
            let key = client_flow(client, vip);
            let syn_frame = syn(&eth, client, vip, 443);
            let ack_frame = tcp(&eth, client, vip, &ack);
            let nat_flow = if mode == "nat" { Some(NatFlow::new(kb, &eth, client, vip, inside)?) } else { None };
            let handshake = if let Some(f) = &nat_flow {
                f.handshake.clone()
            } else {
                // A SYN is placed, never remembered; the first packet that
                // is not a SYN is.
                vec![
                    Step { what: "client SYN", frame: syn_frame.clone(), inside: false, counts: counts(&[LbCounter::NewFlow]), remembered: false },
                    Step { what: "client ACK (first non-SYN)", frame: ack_frame.clone(), inside: false, counts: counts(&[LbCounter::FlowHit]), remembered: true },
                ]
            };
            let name = |what: &str| format!("{mode} {family}{with}, {what}");
            let row = |name: String, flow: Flow, frame: Vec<u8>, setup: Vec<Step>, katran: Option<katran::Compare>, cost: Option<CostTag>| {
                Row { group: "balancer", name, subject: Subject::Balancer(flow), frame, inside: flow == Flow::Reply, setup, key: Some(key), expect: XDP_REDIRECT, katran, cost }
            };
            rows.push(row(name(&format!("new flow (miss → Maglev → {rewrite})")), Flow::New, syn_frame, Vec::new(), compare(katran::Path::NewFlow), None));
            rows.push(row(name(&format!("established (hit → {rewrite})")), Flow::Established, ack_frame.clone(), handshake.clone(), compare(katran::Path::LruHit), tag(Role::Ack)));
            if let (Some(f), false) = (&nat_flow, firewalled) {
                let reply = f.backend_segment(TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1);
                rows.push(row(name("reply (backend → client)"), Flow::Reply, reply, handshake.clone(), None, tag(Role::Reply)));
                if family == "IPv4" {
                    let syn_step = handshake[0].clone();
                    rows.push(row(name("unproven flow's next packet (probe → own entry)"), Flow::Unproven, ack_frame, vec![syn_step], None, None));
                }
                // The PROXY protocol's rows right after the plain ones they
                // are compared with (these VMs' noise changes within a round).
                rows.push(data_row(kb, &eth, family, vip)?);
                for (option, version, vip) in proxy_vips(family) {
                    rows.extend(proxy_rows(kb, &eth, (option, version), family, vip)?);
                }
            }
        }
    }
    rows.push(Row {
        group: "balancer",
        name: "IPv4, not a VIP (→ isolator → XDP_PASS)".into(),
        subject: Subject::Balancer(Flow::NotOurs),
        frame: syn(&eth, CLIENT_V4, EDGE_OUTSIDE_V4, 22),
        inside: false,
        setup: Vec::new(),
        key: None,
        expect: XDP_PASS,
        katran: Some(katran::Compare::new(katran::Path::NonVip, false, false, "")),
        cost: None,
    });
    rows.push(Row {
        group: "balancer",
        name: "IPv4, not a VIP, no isolator stage (→ XDP_PASS)".into(),
        subject: Subject::Balancer(Flow::NotOursAlone),
        frame: syn(&eth, CLIENT_V4, EDGE_OUTSIDE_V4, 22),
        inside: false,
        setup: Vec::new(),
        key: None,
        expect: XDP_PASS,
        katran: Some(katran::Compare::new(katran::Path::NonVip, false, false, "the balancer alone: its tail call to the isolator fails")),
        cost: None,
    });
    Ok(rows)
}

/// The payload of the PROXY protocol rows' data segments: a small first
/// segment (an HTTP request, a short TLS ClientHello), and a ClientHello
/// of a common size.
const DATA: usize = 100;
const HELLO: usize = 512;

/// The rows of a `nat` VIP with a PROXY protocol option (`option`, as
/// the rows name it; the VIP `vip` of `family`'s client). Per connection:
/// the client's first data segment, which gets the header in front (the
/// frame grows at the head, the headers move, the header is written, the
/// lengths and checksums follow), then is translated: run restored after
/// the handshake (`bench_restore` shrinks the head back, as after a `dsr`
/// encapsulation), and in single runs as a retransmission (the same work:
/// the backend has acknowledged nothing), also with a ClientHello-sized
/// segment too long to restore, beside the next data segment. Per packet,
/// restored: the client's ACK after the first data (its sequence number
/// moves by the header's length) and the backend's acknowledgement of
/// header and data (moves back). The setup of all but the restored first
/// segment is the handshake and the first data segment. A `nat` VIP
/// without the option is the reference ([`data_row`], and the plain rows
/// of [`balancer_rows`]).
fn proxy_rows(kb: &mut KernelBalancer, eth: &FrameBuilder, (option, version): (&'static str, u8), family: &'static str, vip: &'static str) -> Result<Vec<Row>> {
    let f = family_flow(kb, eth, family, vip)?;
    let first = f.client_segment(CLIENT_ISN + 1, DATA);
    let ((client, family_tag), server) = (addr_key(f.client.parse()?), addr_key(vip.parse()?).0);
    let len = u32::from(lb_common::proxy_protocol::header_len(version, family_tag, &client, &server, CLIENT_PORT, 443));
    let after_first: Vec<Step> = f
        .handshake
        .iter()
        .cloned()
        .chain([Step { what: "client's first data segment", frame: first.clone(), inside: false, counts: counts(&[LbCounter::FlowHit]), remembered: true }])
        .collect();
    let row = |what: String, subject: Subject, frame: Vec<u8>, setup: &[Step], role: Role| Row {
        group: "balancer",
        name: format!("nat {family} + {option}, {what}"),
        subject,
        frame,
        inside: subject == Subject::Balancer(Flow::Reply),
        setup: setup.to_vec(),
        key: Some(f.key),
        expect: XDP_REDIRECT,
        katran: None,
        cost: Some(CostTag { option: Some(option), family, role }),
    };
    let prepend = |bytes: usize| format!("first data segment, {bytes} B (hit → NAT entry → {len}-byte header in front)");
    let acked = CLIENT_ISN + 1 + len + DATA as u32;
    // Rows compared with each other run next to each other.
    Ok(vec![
        row(format!("next data segment, {DATA} B (hit → NAT entry → seq + {len})"), Subject::Single(Flow::Established), f.client_segment(CLIENT_ISN + 1 + DATA as u32, DATA), &after_first, Role::Data(DATA)),
        row(prepend(DATA), Subject::Single(Flow::FirstData), first.clone(), &after_first, Role::First(DATA)),
        row(prepend(HELLO), Subject::Single(Flow::FirstData), f.client_segment(CLIENT_ISN + 1, HELLO), &after_first, Role::First(HELLO)),
        row(prepend(DATA), Subject::Balancer(Flow::FirstData), first, &f.handshake, Role::First(DATA)),
        row(format!("established (hit → NAT entry → seq + {len})"), Subject::Balancer(Flow::Established), f.client_segment(CLIENT_ISN + 1 + DATA as u32, 0), &after_first, Role::Ack),
        row(format!("reply (ack − {len})"), Subject::Balancer(Flow::Reply), f.backend_segment(TCP_ACK, BACKEND_ISN + 1, acked), &after_first, Role::Reply),
    ])
}

/// The `nat` VIPs of `family` with a PROXY protocol option: the option as
/// the rows name it, its version, the VIP.
fn proxy_vips(family: &str) -> [(&'static str, u8, &'static str); 2] {
    use lb_common::proxy_protocol::{PROXY_V1, PROXY_V2};
    if family == "IPv4" {
        [("PROXY v2", PROXY_V2, PROXY4), ("PROXY v1", PROXY_V1, PROXY4_V1)]
    } else {
        [("PROXY v2", PROXY_V2, PROXY6), ("PROXY v1", PROXY_V1, PROXY6_V1)]
    }
}

/// A `nat` flow of `family`'s client to `vip`.
fn family_flow(kb: &mut KernelBalancer, eth: &FrameBuilder, family: &str, vip: &'static str) -> Result<NatFlow> {
    let (client, inside) = if family == "IPv4" { (CLIENT_V4, "10.1.0.1") } else { (CLIENT_V6, "fd00:1::1") };
    NatFlow::new(kb, eth, client, vip, inside)
}

/// The PROXY protocol rows' reference: a client data segment of an
/// established flow to the `nat` VIP `vip` (no option), in single runs.
fn data_row(kb: &mut KernelBalancer, eth: &FrameBuilder, family: &'static str, vip: &'static str) -> Result<Row> {
    let f = family_flow(kb, eth, family, vip)?;
    Ok(Row {
        group: "balancer",
        name: format!("nat {family}, data segment, {DATA} B (hit → DNAT+SNAT)"),
        subject: Subject::Single(Flow::Established),
        frame: f.client_segment(CLIENT_ISN + 1, DATA),
        inside: false,
        setup: f.handshake,
        key: Some(f.key),
        expect: XDP_REDIRECT,
        katran: None,
        cost: Some(CostTag { option: None, family, role: Role::Data(DATA) }),
    })
}

// ---------------------------------------------------------------- checks

/// The plain (unwrapped, single) run of a row's program: the verdict it
/// shows, after comparing action and output with what they must be.
fn check(
    row: &Row,
    m: &mut Measured,
    bench: &mut BenchPrograms,
    iso: &mut KernelIsolator,
    kb: &mut KernelBalancer,
    balancer: &ProgramFd,
    katran: Option<&mut katran::Katran>,
) -> Result<String> {
    let (action, out, expected_out) = match row.subject {
        Subject::Floor | Subject::SingleFloor => {
            let (a, out) = once(bench.program(PASS)?, &row.frame, None, 1)?;
            (a, out, row.frame.clone())
        }
        Subject::SwapTx => {
            let (a, out) = once(bench.program(SWAP_TX)?, &row.frame, None, 1)?;
            let mut swapped = row.frame.clone();
            swapped[..6].copy_from_slice(&row.frame[6..12]);
            swapped[6..12].copy_from_slice(&row.frame[..6]);
            (a, out, swapped)
        }
        Subject::Isolator => {
            let modelled = model::decide(&row.frame, 1, &iso.reference(), &iso.host, &mut ModelFrags::default()).verdict;
            let want = if modelled.is_drop() { XDP_DROP } else { XDP_PASS };
            if want != row.expect {
                m.fail(format!("{}: the isolator model says {modelled:?}", row.name));
            }
            iso.clear_fragments();
            let (a, out) = iso.run_with_output(&row.frame);
            (a, out, row.frame.clone())
        }
        Subject::Balancer(flow) => {
            let (a, out, modelled) = check_balancer(row, flow, m, kb)?;
            if flow != Flow::New {
                check_restored(row, &out, m, bench, kb, balancer)?;
            }
            (a, out, modelled)
        }
        Subject::Single(flow) => check_balancer(row, flow, m, kb)?,
        Subject::Katran(i) => katran.expect("Katran rows exist only with Katran loaded").check(row, i, m, bench)?,
    };
    if action != row.expect {
        m.fail(format!("{}: verdict {} (expected {})", row.name, action_name(action), action_name(row.expect)));
    }
    if row.expect != XDP_DROP && out != expected_out {
        m.fail(format!("{}: the output packet differs from the expected one", row.name));
    }
    let first_data = matches!(row.subject, Subject::Balancer(Flow::FirstData) | Subject::Single(Flow::FirstData));
    if first_data && expected_out.len() <= row.frame.len() {
        m.fail(format!("{}: the model's output did not grow (no header put in front)", row.name));
    }
    m.expected = expected_out;
    Ok(action_name(action).to_owned())
}

/// Runs a balancer row's setup and then its frame once in the kernel and
/// in lb-common's model; returns the kernel's action and packet and the
/// model's packet. Both must count what the row's path counts, and
/// remember the flow (or not) as the path does.
fn check_balancer(row: &Row, flow: Flow, m: &mut Measured, kb: &mut KernelBalancer) -> Result<(u32, Vec<u8>, Vec<u8>)> {
    let mut model = kb.model();
    if let Err(e) = prepare(kb, &row.setup, row.key.as_ref(), Some(&mut model)) {
        m.fail(format!("{}: {e}", row.name));
    }
    let ifindex = row_ifindex(row, kb);
    let mut buf = vec![0u8; row.frame.len() + lb_common::balancer_model::MAX_GROWTH];
    let before = kernel_counters(kb).map_err(anyhow::Error::msg)?;
    let (action, out) = kb.run(&row.frame, ifindex);
    let counted = delta(&before, &kernel_counters(kb).map_err(anyhow::Error::msg)?);
    let o = process(&row.frame, &mut buf, ifindex, &mut model);
    let (modelled_counts, want) = (tally(&o), flow.counts());
    if modelled_counts != want {
        m.fail(format!("{}: the model counts {}, not {}", row.name, show_counts(&modelled_counts), show_counts(&want)));
    }
    if counted != modelled_counts {
        m.fail(format!("{}: the kernel counts {}, the model {}", row.name, show_counts(&counted), show_counts(&modelled_counts)));
    }
    if action != action_code(o.action) {
        m.fail(format!("{}: kernel {} but model {:?}", row.name, action_name(action), o.action));
    }
    if let (Some(key), Some(want)) = (row.key, flow.remembered()) {
        let (kernel, modelled) = (remembered(kb, &key), model.flows.contains_key(&key));
        if (kernel, modelled) != (want, want) {
            m.fail(format!(
                "{}: after its packet LB_FLOWS {} the flow (the model's table {}); it must {}",
                row.name,
                if kernel { "holds" } else { "lacks" },
                if modelled { "holds it" } else { "lacks it" },
                if want { "hold it" } else { "not" }
            ));
        }
    }
    let modelled = if matches!(o.action, Action::Tx | Action::Redirect(_)) { buf[..o.len].to_vec() } else { row.frame.clone() };
    Ok((action, out, modelled))
}

/// Two repeats under `bench_restore` must leave the same packet as one
/// plain run: the second repeat saw exactly the input again. (New-flow
/// rows differ by design; their counters show every repeat was a new flow,
/// which an unrestored packet — no longer addressed to the VIP — is not.)
fn check_restored(row: &Row, plain: &[u8], m: &mut Measured, bench: &mut BenchPrograms, kb: &mut KernelBalancer, balancer: &ProgramFd) -> Result<()> {
    bench.set_input(&row.frame, false)?;
    bench.set_target(balancer)?;
    let ifindex = row_ifindex(row, kb);
    let (_, out) = kb.net.ns.run(|| once(bench.program(RESTORE)?, &row.frame, Some(ifindex), 2))?;
    if out != plain {
        m.fail(format!("{}: bench_restore's 2nd repeat left another packet than a plain run", row.name));
    }
    Ok(())
}

fn action_code(a: Action) -> u32 {
    match a {
        Action::NextStage | Action::Pass => XDP_PASS,
        Action::Drop => XDP_DROP,
        Action::Tx => XDP_TX,
        Action::Redirect(_) => XDP_REDIRECT,
    }
}

fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------- timing

/// One call of a directly run row: its mean ns per repeat.
fn time_direct(row: &Row, plan: &Plan, m: &mut Measured, bench: &mut BenchPrograms, iso: &mut KernelIsolator) -> Result<f64> {
    let (action, ns) = match row.subject {
        Subject::Floor => timed(bench.program(PASS)?, &row.frame, None, plan.repeat)?,
        Subject::SwapTx => timed(bench.program(SWAP_TX)?, &row.frame, None, plan.repeat)?,
        Subject::Isolator => {
            let (a, d) = iso.run_repeated(&row.frame, plan.repeat);
            (a, d.as_secs_f64() * 1e9)
        }
        Subject::Balancer(_) | Subject::Katran(_) | Subject::SingleFloor | Subject::Single(_) => {
            unreachable!("balancer and Katran rows run under bench_restore, single-run rows in time_single")
        }
    };
    if action != row.expect {
        m.fail(format!("{}: a timed run ended in {}", row.name, action_name(action)));
    }
    Ok(ns)
}

/// One call of a balancer row under `bench_restore`, and one of the
/// wrapper alone (pointed at `bench_pass`, same frame, context and
/// repeat): the balancer's net ns per packet (their difference), and the
/// wrapper's time alone.
fn time_balancer(row: &Row, flow: Flow, plan: &Plan, m: &mut Measured, bench: &mut BenchPrograms, kb: &mut KernelBalancer, balancer: &ProgramFd) -> Result<(f64, f64)> {
    let repeat = if flow == Flow::New { plan.new_flow_repeat } else { plan.repeat };
    let ifindex = row_ifindex(row, kb);
    bench.set_input(&row.frame, flow == Flow::New)?;
    let pass = bench.pass_fd()?;
    bench.set_target(&pass)?;
    let (alone, wrapper_ns) = kb.net.ns.run(|| timed(bench.program(RESTORE)?, &row.frame, Some(ifindex), repeat))?;
    if alone != XDP_PASS {
        m.fail(format!("{}: bench_restore → bench_pass ended in {}", row.name, action_name(alone)));
    }
    match flow {
        Flow::New => kb.clear_flows(),
        // Other rows empty the tables: bring this row's flow to its state
        // again (the handshake, checked step by step).
        Flow::Established | Flow::FirstData | Flow::Unproven | Flow::Reply => {
            if let Err(e) = prepare(kb, &row.setup, row.key.as_ref(), None) {
                m.fail(format!("{}: {e}", row.name));
            }
        }
        Flow::NotOurs | Flow::NotOursAlone => {}
    }
    bench.set_target(balancer)?;
    let before = kb.maps().counters()?;
    let (action, ns) = if flow == Flow::NotOursAlone {
        kb.without_next_stage(|kb| kb.net.ns.run(|| timed(bench.program(RESTORE)?, &row.frame, Some(ifindex), repeat)))??
    } else {
        kb.net.ns.run(|| timed(bench.program(RESTORE)?, &row.frame, Some(ifindex), repeat))?
    };
    let after = kb.maps().counters()?;
    if action != row.expect {
        m.fail(format!("{}: a timed run ended in {}", row.name, action_name(action)));
    }
    // Every repeat counts exactly the path's counters: an established
    // row's packets never prove or re-find their flow (they hit it), an
    // unproven row's never prove it.
    let counted = delta(&before, &after);
    let want: Counts = flow.counts().iter().map(|n| n * u64::from(repeat)).collect();
    if counted != want {
        m.fail(format!("{}: {repeat} repeats counted {} (expected {})", row.name, show_counts(&counted), show_counts(&want)));
    }
    if let (Some(key), Some(want)) = (row.key, flow.remembered()) {
        if remembered(kb, &key) != want {
            m.fail(format!("{}: after a timed call LB_FLOWS {} the flow", row.name, if want { "lacks" } else { "holds" }));
        }
    }
    if flow == Flow::New {
        kb.clear_flows();
    }
    Ok((ns - wrapper_ns, wrapper_ns))
}

/// One round of the single-run rows, all together: their flows set up
/// (rows of one flow share its setup), then [`SINGLE_BLOCK`] calls of each
/// row in turn (`bench_pass` for the floor of single runs, else the
/// balancer), with repeat 1, until each row made `plan.single_calls`, in
/// one visit to the fixture's namespace: the noise of these shared
/// machines, which changes within a round, hits them alike, and each row
/// runs warm (as the restored rows' repeats do) but for a block's first
/// calls, which [`low_quantile`] leaves out. Per row (NaN for the
/// others): that quantile of the kernel's time of its calls' one run.
/// Every call must
/// leave the checked verdict and packet, and the calls together exactly
/// their paths' counters once per call (a first data segment dropped for
/// lack of headroom would count a drop), the flows in LB_FLOWS as the
/// paths do.
fn time_singles(rows: &[Row], m: &mut [Measured], plan: &Plan, bench: &mut BenchPrograms, kb: &mut KernelBalancer) -> Result<Vec<f64>> {
    let mut figures = vec![f64::NAN; rows.len()];
    let idx: Vec<usize> = (0..rows.len()).filter(|&i| matches!(rows[i].subject, Subject::SingleFloor | Subject::Single(_))).collect();
    if idx.is_empty() {
        return Ok(figures);
    }
    kb.clear_flows();
    let mut flows: Vec<(FlowKey, &[Step])> = Vec::new();
    for &i in &idx {
        let Some(key) = rows[i].key else { continue };
        match flows.iter().find(|(k, _)| *k == key) {
            Some((_, setup)) => ensure!(frames(setup) == frames(&rows[i].setup), "{}: rows of one flow need one setup", rows[i].name),
            None => {
                if let Err(e) = run_setup(kb, &rows[i].setup, Some(&key), None) {
                    m[i].fail(format!("{}: {e}", rows[i].name));
                }
                flows.push((key, &rows[i].setup));
            }
        }
    }
    let runs: Vec<SingleRun> = idx
        .iter()
        .map(|&i| SingleRun {
            floor: rows[i].subject == Subject::SingleFloor,
            frame: &rows[i].frame,
            ctx: xdp_md(rows[i].frame.len(), row_ifindex(&rows[i], kb)),
            want: (rows[i].expect, &m[i].expected),
        })
        .collect();
    let calls = plan.single_calls.div_ceil(SINGLE_BLOCK) * SINGLE_BLOCK;
    let before = kb.maps().counters()?;
    let pass = bench.program(PASS)?;
    let (mut times, wrong) = kb.with_program(|balancer| single_runs(balancer, pass, &runs, calls))??;
    let counted = delta(&before, &kb.maps().counters()?);
    let mut want = vec![0; LB_COUNTERS_LEN as usize];
    for &i in &idx {
        if let Subject::Single(flow) = rows[i].subject {
            for (w, n) in want.iter_mut().zip(flow.counts()) {
                *w += n * calls as u64;
            }
        }
    }
    for (j, &i) in idx.iter().enumerate() {
        let (row, m) = (&rows[i], &mut m[i]);
        if counted != want {
            m.fail(format!("{}: the single runs counted {} (expected {})", row.name, show_counts(&counted), show_counts(&want)));
        }
        if wrong[j] != 0 {
            m.fail(format!("{}: {} of {calls} single runs left another verdict or packet than the checked one", row.name, wrong[j]));
        }
        if let (Some(key), Subject::Single(flow)) = (row.key, row.subject) {
            if flow.remembered().is_some_and(|want| remembered(kb, &key) != want) {
                m.fail(format!("{}: after the single runs LB_FLOWS {} the flow", row.name, if remembered(kb, &key) { "holds" } else { "lacks" }));
            }
        }
        figures[i] = low_quantile(&mut times[j]);
    }
    Ok(figures)
}

/// The share of a single-run row's calls at or below its figure. These
/// shared machines run a call in one of two modes: undisturbed, or about
/// 1.8× slower while a neighbour runs on the core's sibling — for a whole
/// round or part of it, so a median flips between the modes. The low
/// quantile is the undisturbed run (unless the whole round was
/// disturbed), without the few lucky calls a minimum would pick.
const SINGLE_QUANTILE: f64 = 0.1;

/// The [`SINGLE_QUANTILE`] of `times` (sorted in place).
fn low_quantile(times: &mut [f64]) -> f64 {
    times.sort_by(|a, b| a.total_cmp(b));
    times.get(((times.len().saturating_sub(1)) as f64 * SINGLE_QUANTILE) as usize).copied().unwrap_or(f64::NAN)
}

fn frames(setup: &[Step]) -> Vec<&[u8]> {
    setup.iter().map(|s| s.frame.as_slice()).collect()
}

/// A single-run row's call.
struct SingleRun<'a> {
    /// `bench_pass`, else the balancer.
    floor: bool,
    frame: &'a [u8],
    ctx: [u8; 24],
    /// The verdict and packet every call must leave.
    want: (u32, &'a [u8]),
}

/// Consecutive calls of one single-run row.
const SINGLE_BLOCK: usize = 100;

/// BPF_PROG_TEST_RUN calls of each run, [`SINGLE_BLOCK`] at a time in
/// turn, `calls` (rounded up to whole blocks) in all, each with repeat 1
/// (the kernel copies the input afresh per call): per run, the kernel's
/// time of each call's one run (ns), and how many of its calls ended
/// otherwise than it wants.
fn single_runs(balancer: &mut Xdp, pass: &mut Xdp, runs: &[SingleRun], calls: usize) -> Result<(Vec<Vec<f64>>, Vec<usize>)> {
    let mut out = vec![0u8; runs.iter().map(|r| r.frame.len()).max().unwrap_or(0) + 256];
    let (mut times, mut wrong) = (vec![Vec::with_capacity(calls); runs.len()], vec![0; runs.len()]);
    for _ in 0..calls.div_ceil(SINGLE_BLOCK) {
        for ((run, times), wrong) in runs.iter().zip(&mut times).zip(&mut wrong) {
            let prog = if run.floor { &mut *pass } else { &mut *balancer };
            for _ in 0..SINGLE_BLOCK {
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(run.frame);
                opts.data_out = Some(&mut out);
                opts.ctx_in = Some(&run.ctx);
                opts.repeat = 1;
                let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
                if r.return_value != run.want.0 || out[..r.data_size_out as usize] != *run.want.1 {
                    *wrong += 1;
                }
                times.push(r.duration.as_nanos() as f64);
            }
        }
    }
    Ok((times, wrong))
}

/// The `xdp_md` a test run starts from: the frame's length, arriving on
/// `ifindex` (an interface of the calling thread's namespace).
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// One BPF_PROG_TEST_RUN call: the last repeat's action and the kernel's
/// mean ns per repeat.
fn timed(prog: &mut Xdp, frame: &[u8], ifindex: Option<u32>, repeat: u32) -> Result<(u32, f64)> {
    let ctx = ifindex.map(|i| xdp_md(frame.len(), i));
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = ctx.as_ref().map(|c| &c[..]);
    opts.repeat = repeat;
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_secs_f64() * 1e9))
}

/// A run of `repeat` (few) repeats: the last one's action and the packet
/// as the program left it.
fn once(prog: &mut Xdp, frame: &[u8], ifindex: Option<u32>, repeat: u32) -> Result<(u32, Vec<u8>)> {
    let ctx = ifindex.map(|i| xdp_md(frame.len(), i));
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = ctx.as_ref().map(|c| &c[..]);
    opts.repeat = repeat;
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

// ---------------------------------------------------------------- bench-ebpf

const PASS: &str = "bench_pass";
const SWAP_TX: &str = "bench_swap_tx";
const RESTORE: &str = "bench_restore";

/// `bench_restore`'s input, laid out as bench-ebpf's `Input`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RestoreInput {
    len: u32,
    vary_at: u32,
    csum_at: u32,
    _pad: u32,
    bytes: [u8; FRAME_MAX],
}

// SAFETY: `repr(C)` integers and bytes, no padding (4 × 4 + 256).
unsafe impl aya::Pod for RestoreInput {}

/// bench-ebpf's programs, loaded.
struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    fn load() -> Result<Self> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-ebpf/target/bpfel-unknown-none/release/bench-ebpf");
        let object = std::fs::read(&path)
            .with_context(|| format!("the baseline programs {} are missing (cargo xtask bench builds them)", path.display()))?;
        let mut ebpf = Ebpf::load(&object).context("loading bench-ebpf")?;
        for name in [PASS, SWAP_TX, RESTORE] {
            xdp(&mut ebpf, name)?.load().with_context(|| format!("loading {name} (verifier)"))?;
        }
        Ok(Self { ebpf })
    }

    fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        xdp(&mut self.ebpf, name)
    }

    fn pass_fd(&mut self) -> Result<ProgramFd> {
        Ok(self.program(PASS)?.fd()?.try_clone()?)
    }

    /// The frame `bench_restore` puts back before every repeat; with
    /// `vary`, each repeat also gets its number added to the TCP source
    /// port (a new flow every time).
    fn set_input(&mut self, frame: &[u8], vary: bool) -> Result<()> {
        ensure!(!frame.is_empty() && frame.len() <= FRAME_MAX, "bench_restore takes frames of 1..={FRAME_MAX} bytes");
        let (vary_at, csum_at) = if vary {
            let l4 = tcp_offset(frame)?;
            (l4 as u32, l4 as u32 + 16)
        } else {
            (0, 0)
        };
        let mut input = RestoreInput { len: frame.len() as u32, vary_at, csum_at, _pad: 0, bytes: [0; FRAME_MAX] };
        input.bytes[..frame.len()].copy_from_slice(frame);
        let mut map: Array<_, RestoreInput> = self.ebpf.map_mut("BENCH_INPUT").context("no BENCH_INPUT map")?.try_into()?;
        map.set(0, input, 0)?;
        Ok(())
    }

    /// The program `bench_restore` tail-calls.
    fn set_target(&mut self, prog: &ProgramFd) -> Result<()> {
        let mut map: ProgramArray<_> = self.ebpf.map_mut("BENCH_TARGET").context("no BENCH_TARGET map")?.try_into()?;
        map.set(0, prog, 0).context("BENCH_TARGET (programs must be the same type)")?;
        Ok(())
    }
}

/// How to build and measure Katran, for the results' README.
pub const KATRAN_HOWTO: &str = katran::HOWTO;

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name).with_context(|| format!("bench-ebpf has no {name}"))?.try_into().with_context(|| format!("{name} is not XDP"))
}

/// Where the TCP header of an untagged IPv4 or IPv6 (no extension
/// headers) frame starts.
fn tcp_offset(frame: &[u8]) -> Result<usize> {
    let l4 = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if frame[23] == IPPROTO_TCP => 14 + usize::from(frame[14] & 0x0f) * 4,
        0x86dd if frame[20] == IPPROTO_TCP => 54,
        _ => bail!("new-flow rows need an untagged TCP frame"),
    };
    ensure!(l4 + 20 <= frame.len(), "truncated TCP header");
    Ok(l4)
}

// ---------------------------------------------------------------- report

fn section(rows: &[Row], m: &[Measured], verdicts: &[String], plan: &Plan, katran: Option<&katran::Katran>) -> Section {
    let mut md = method(plan);
    results_table(&mut md, rows, m, verdicts, plan, katran);
    cost_table(&mut md, rows, m);
    let measured = katran_measured(rows, m, katran);
    katran_table(&mut md, rows, m, &measured, katran);
    failures(&mut md, rows, m);
    Section {
        name: "xdp",
        title: "XDP data path: kernel time per packet (BPF_PROG_TEST_RUN)".into(),
        markdown: md,
        charts: charts(rows, m, katran),
    }
}

/// Katran's rows of this run: (path, IPv6, median net ns or `None` if the
/// row is INVALID); empty when Katran was not measured.
fn katran_measured(rows: &[Row], m: &[Measured], katran: Option<&katran::Katran>) -> Vec<(katran::Path, bool, Option<f64>)> {
    let Some(k) = katran else { return Vec::new() };
    rows.iter()
        .zip(m)
        .filter_map(|(r, m)| match r.subject {
            Subject::Katran(i) => {
                let (path, v6) = k.path_of(i);
                Some((path, v6, m.failures.is_empty().then(|| Summary::of(&m.net).median)))
            }
            _ => None,
        })
        .collect()
}

fn method(plan: &Plan) -> String {
    format!(
        "## Method\n\n\
- Every row is one frame run by BPF_PROG_TEST_RUN, {repeat} repeats per call ({new} for new-flow rows); the kernel reports the mean ns per repeat (whole ns). \
{rounds} rounds, every row once per round in the same order (A B C … A B C …); median (min–max) over the rounds.\n\
- *direct* rows run the program itself: the XDP_PASS floor, parse + swap MACs + XDP_TX (swapping back and forth is the same work every repeat), \
and the isolator (it never rewrites a packet), bound to `lo` as a DMZ interface under the differential tests' fixture policy.\n\
- *restored* rows: test_run repeats a program on the same buffer, so a program that rewrites (nat) or encapsulates (dsr) would see its own output \
from the 2nd repeat on. These rows run under `bench_restore` (bench-ebpf), which before every repeat moves the head back to the saved frame's length \
(bpf_xdp_adjust_head), copies the frame back (bpf_xdp_store_bytes) and tail-calls the balancer through a PROG_ARRAY; the balancer tail-calls the \
isolator through its own LB_NEXT_STAGE as when attached. They run in the balancer fixture's namespace, arriving on its outside interface, so FIB \
lookups and redirects have real answers.\n\
- New-flow rows: the wrapper also adds a per-CPU repeat number to the TCP source port (checksum updated incrementally), so every repeat misses the \
flow table; user space empties the flow and NAT tables around each such call ({new} repeats over 3 backends, so at most ~{per_backend} of a \
backend's 31 744 SNAT ports are taken by a call's end).\n\
- Flow state: before each timed call of the established, reply and unproven rows (and before each row's check) the tables are emptied and \
the row's flow is brought to its state through the kernel itself, with BPF_PROG_TEST_RUN, each packet's verdict, counters and effect on the flow table (LB_FLOWS) checked \
(in the check also its output and counters against the model's). *Established* `nat` rows complete the handshake: the client's SYN, the backend's \
SYN-ACK (ISN {backend_isn:#x}) arriving on the inside interface (the backend's route, which the NAT entry records) from the backend's address \
and port to the edge's inside address and the flow's SNAT port, then the client's ACK of exactly ISN + 1, which proves the NAT entry and puts \
the flow in LB_FLOWS. *Established* DSR rows send the SYN (never remembered), then the client's ACK, its first non-SYN packet, which LB_FLOWS \
remembers. The row's packet is that ACK again: every repeat a flow-table hit. The *reply* row is the backend's next ACK of such a proven flow, \
on the inside interface (every repeat updates the entry's window state); the *unproven* row is the client's ACK after only its SYN — no \
SYN-ACK has passed, so nothing proves the entry and every repeat probes the SNAT ports for its own entry. LB_FLOWS must hold the flow after \
the setup and after the call for established and reply rows, and must not for the unproven row.\n\
- The wrapper's own cost is measured in the same round, right before, with the same frame, context and repeat count, pointed at `bench_pass`: \
**net** = T(wrapper → balancer) − T(wrapper → bench_pass); **gross** = net + this round's XDP_PASS floor; the wrapper column is \
T(wrapper → bench_pass) − floor. Direct rows: gross = T, net = T − floor. A plain run and two repeats under the wrapper must leave the same \
output packet (the restore is exact).\n\
- Checks: once per row, a plain run of the program itself (no wrapper) must give the expected verdict and output — balancer rows compared with \
lb-common's model (action and every output byte, as `balancer_differential.rs` does), isolator rows with the isolator model's verdict and the packet \
unchanged, baselines with their obvious result. Every timed call is checked too: the last repeat's verdict, and for balancer rows every \
counter's change (each repeat exactly one new flow, one hit or one NAT reply and nothing else — no flow proven or re-found, nothing at all \
for the non-VIP packet) and whether LB_FLOWS holds the flow afterwards. A failed check marks the row **INVALID**.\n\
- *single runs* rows: BPF_PROG_TEST_RUN calls with repeat 1. The kernel copies the input into a fresh buffer (XDP_PACKET_HEADROOM, 256 bytes, \
in front) for every call, so each run starts from the row's frame, whatever the previous one did and however long the frame is. A call's duration \
is its one run's time with the kernel's timer around it (whole ns). Each round, all single-run rows together: their flows are set up (rows of one \
flow share its setup), then {block} calls of each row in turn, until each row made {single}, in one visit to the fixture's namespace — the noise \
of these shared machines, which changes within a round, hits them alike, and a row runs warm as the restored rows' repeats do. A row's figure in \
a round is the {quantile}th percentile of its calls: a call runs either undisturbed or about 1.8× slower while a neighbour runs on the core's \
sibling (for a whole round or part of it, so a median flips between the two), and the low percentile is the undisturbed run without the few \
lucky calls a minimum would pick. `bench_pass`'s calls among them are the floor of single runs: **net** = P(row) − P(bench_pass), both of this \
round, so the timer's and the call's own cost cancel; **gross** = net + this round's XDP_PASS floor; the wrapper column shows the floor of single \
runs less the XDP_PASS floor (what timing one run adds). Every call's verdict and output packet must be the checked one (the model's), and a \
round's calls together must count one flow-table hit each and nothing else (a drop for lack of headroom would count).\n\
- PROXY protocol rows (`nat` VIPs with `proxy_protocol = \"v2\"`): the client's first data segment of a proven flow whose backend has not yet \
acknowledged the header gets the header in front — the frame grows at the head (bpf_xdp_adjust_head), the headers move, the header is written, \
the lengths and checksums follow — then the NAT rewrite. Until the backend acknowledges the header, a retransmission of that segment does exactly \
the same work (the NAT entry keeps the segment's place), so the same frame can be run again and again. It runs restored after the handshake \
(`bench_restore` shrinks the grown head back, as after a `dsr` encapsulation; frames up to 256 bytes), and in single runs as a retransmission \
({data} and {hello} bytes of data) beside the flow's next data segment (its sequence number moved by the header's length) and the same segment \
to a `nat` VIP without the option. The later packets' setup is the handshake and the first data segment. In the cost table a difference is taken \
within each round (both rows ran in it), then summarized over the rounds.\n\
- These VMs are noisy (2 cores, other builds running): compare rows and ratios of one run, not runs.\n\n",
        repeat = plan.repeat,
        new = plan.new_flow_repeat,
        rounds = plan.rounds,
        per_backend = plan.new_flow_repeat.div_ceil(3),
        single = plan.single_calls,
        block = SINGLE_BLOCK,
        quantile = (SINGLE_QUANTILE * 100.0).round(),
        data = DATA,
        hello = HELLO,
        backend_isn = BACKEND_ISN,
    )
}

fn results_table(md: &mut String, rows: &[Row], m: &[Measured], verdicts: &[String], plan: &Plan, katran: Option<&katran::Katran>) {
    let _ = writeln!(md, "## Results\n\n| | path | method | repeats | verdict (checked) | gross ns/packet | net ns/packet | wrapper ns (subtracted) |\n| --- | --- | --- | ---: | --- | ---: | ---: | ---: |");
    for ((row, m), verdict) in rows.iter().zip(m).zip(verdicts) {
        let (method, repeat) = match row.subject {
            Subject::Balancer(Flow::New) => ("restored, new flow each", plan.new_flow_repeat.to_string()),
            Subject::Balancer(Flow::Reply) => ("restored, on the inside interface", plan.repeat.to_string()),
            Subject::Balancer(_) => ("restored", plan.repeat.to_string()),
            Subject::Katran(i) => match katran.map(|k| k.path_of(i).0) {
                Some(katran::Path::NewFlow) => ("restored, new flow each", plan.new_flow_repeat.to_string()),
                _ => ("restored", plan.repeat.to_string()),
            },
            Subject::SingleFloor | Subject::Single(_) => ("single runs", format!("1 × {} calls", plan.single_calls)),
            _ => ("direct", plan.repeat.to_string()),
        };
        let (verdict, gross, net) = if m.failures.is_empty() {
            (format!("{verdict} ✓"), Summary::of(&m.gross).show(1), net_cell(row, m))
        } else {
            // What was timed stays visible (a stage-removal variant fails
            // the checks by design), marked as not this path's figure.
            let invalid = |cell: String| if m.gross.is_empty() { "**INVALID**".to_string() } else { format!("**INVALID** (timed {cell})") };
            (format!("**CHECK FAILED** ({verdict})"), invalid(Summary::of(&m.gross).show(1)), invalid(net_cell(row, m)))
        };
        let wrapper = if m.wrapper.is_empty() { "–".into() } else { Summary::of(&m.wrapper).show(1) };
        let _ = writeln!(md, "| {} | {} | {method} | {repeat} | {verdict} | {gross} | {net} | {wrapper} |", row.group, row.name);
    }
}

fn net_cell(row: &Row, m: &Measured) -> String {
    if row.subject == Subject::Floor {
        "0 (the floor)".into()
    } else if row.subject == Subject::SingleFloor {
        "0 (the floor of single runs)".into()
    } else {
        Summary::of(&m.net).show(1)
    }
}

/// What the PROXY protocol costs, one column per option and family: per
/// connection, its first data segment against the next one (single runs)
/// and against the ACK after it (restored); per packet, the option's
/// packets against the same packets of a `nat` VIP without it. Each
/// difference is taken round by round, then summarized.
fn cost_table(md: &mut String, rows: &[Row], m: &[Measured]) {
    let mut columns: Vec<(&'static str, &'static str)> = Vec::new();
    for c in rows.iter().filter_map(|r| r.cost) {
        if let Some(option) = c.option.filter(|o| !columns.contains(&(*o, c.family))) {
            columns.push((option, c.family));
        }
    }
    if columns.is_empty() {
        return;
    }
    // The valid row of a tag, run in single runs or not.
    let find = |option: Option<&'static str>, family: &'static str, role: Role, single: bool| {
        rows.iter()
            .zip(m)
            .find(|(r, _)| r.cost == Some(CostTag { option, family, role }) && matches!(r.subject, Subject::Single(_)) == single)
            .filter(|(_, m)| m.failures.is_empty())
    };
    let net = |a: Option<(&Row, &Measured)>| a.map_or("–".into(), |(_, a)| Summary::of(&a.net).show(1));
    let diff = |a: Option<(&Row, &Measured)>, b: Option<(&Row, &Measured)>| match (a, b) {
        (Some((_, a)), Some((_, b))) => Summary::of(&a.net.iter().zip(&b.net).map(|(x, y)| x - y).collect::<Vec<_>>()).show(1),
        _ => "–".into(),
    };
    let (first, hello, data) = (Role::First(DATA), Role::First(HELLO), Role::Data(DATA));
    type Cell<'a> = Box<dyn Fn(&'static str, &'static str) -> String + 'a>;
    let lines: Vec<(String, Cell)> = vec![
        (
            "header bytes (the first data segment's growth)".into(),
            Box::new(|o, f| find(Some(o), f, first, true).map_or("–".into(), |(r, m)| (m.expected.len() - r.frame.len()).to_string())),
        ),
        (
            format!("**per connection**: first data segment − next data segment ({DATA} B each, single runs)"),
            Box::new(|o, f| diff(find(Some(o), f, first, true), find(Some(o), f, data, true))),
        ),
        (
            format!("per connection: first data segment ({DATA} B) − the ACK after it (restored)"),
            Box::new(|o, f| diff(find(Some(o), f, first, false), find(Some(o), f, Role::Ack, false))),
        ),
        (
            format!("first data segment − the same segment to a VIP without the option ({DATA} B, single runs)"),
            Box::new(|o, f| diff(find(Some(o), f, first, true), find(None, f, data, true))),
        ),
        (
            "**per packet**, client → backend: the ACK after the first data − the same ACK without the option (restored)".into(),
            Box::new(|o, f| diff(find(Some(o), f, Role::Ack, false), find(None, f, Role::Ack, false))),
        ),
        (
            format!("per packet, client → backend: next data segment − the same without the option ({DATA} B, single runs)"),
            Box::new(|o, f| diff(find(Some(o), f, data, true), find(None, f, data, true))),
        ),
        (
            "per packet, backend → client: its acknowledgement − the same without the option (restored)".into(),
            Box::new(|o, f| diff(find(Some(o), f, Role::Reply, false), find(None, f, Role::Reply, false))),
        ),
        (format!("net: first data segment, {DATA} B (single runs)"), Box::new(|o, f| net(find(Some(o), f, first, true)))),
        (format!("net: first data segment, {HELLO} B (single runs)"), Box::new(|o, f| net(find(Some(o), f, hello, true)))),
        (format!("net: first data segment, {DATA} B (restored)"), Box::new(|o, f| net(find(Some(o), f, first, false)))),
        (format!("net: next data segment, {DATA} B (single runs)"), Box::new(|o, f| net(find(Some(o), f, data, true)))),
        (format!("net: a data segment without the option, {DATA} B (single runs)"), Box::new(|_, f| net(find(None, f, data, true)))),
    ];
    let _ = writeln!(md, "## PROXY protocol: cost per connection and per packet\n\nns, median (min–max) over the rounds; differences round by round. \
Per connection: what the header's insertion into the first data segment adds to what any data segment of such a flow costs.\n");
    let head: Vec<String> = columns.iter().map(|(o, f)| format!("{f} {o}")).collect();
    let _ = writeln!(md, "| | {} |\n| --- |{}", head.join(" | "), " ---: |".repeat(columns.len()));
    for (label, cell) in &lines {
        let cells: Vec<String> = columns.iter().map(|(o, f)| cell(o, f)).collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    }
    let _ = writeln!(md);
}

/// The "Against Katran" table: each swarmlb row with a Katran counterpart.
fn katran_table(md: &mut String, rows: &[Row], m: &[Measured], measured: &[(katran::Path, bool, Option<f64>)], katran: Option<&katran::Katran>) {
    let floor = rows.iter().zip(m).find(|(r, _)| r.subject == Subject::Floor).map(|(_, m)| Summary::of(&m.gross).median).unwrap_or(f64::NAN);
    let compared: Vec<(&str, Option<f64>, katran::Compare)> = rows
        .iter()
        .zip(m)
        .filter_map(|(r, m)| Some((r.name.as_str(), m.failures.is_empty().then(|| Summary::of(&m.net).median), r.katran?)))
        .collect();
    katran::table(md, &compared, measured, katran.map(|k| &k.about), floor);
}

fn failures(md: &mut String, rows: &[Row], m: &[Measured]) {
    let all: Vec<&String> = rows.iter().zip(m).flat_map(|(_, m)| &m.failures).collect();
    if all.is_empty() {
        let _ = writeln!(md, "\nEvery check passed: each row's verdict and output packet were the expected ones.");
        return;
    }
    let _ = writeln!(md, "\n## ⚠ FAILED CHECKS — the rows above marked INVALID measure something else\n");
    for f in all {
        let _ = writeln!(md, "- {f}");
    }
}

/// Two charts, because the balancer's new flows would flatten the rest:
/// baselines, isolator and the non-VIP path; the balancer beside Katran
/// (each Katran path followed by the swarmlb rows compared with it).
fn charts(rows: &[Row], m: &[Measured], katran: Option<&katran::Katran>) -> Vec<BarChart> {
    let valid: Vec<(&Row, &Measured)> = rows.iter().zip(m).filter(|(r, m)| m.failures.is_empty() && r.subject != Subject::Floor).collect();
    let katran_path = |r: &Row| match (r.subject, katran) {
        (Subject::Katran(i), Some(k)) => Some(k.path_of(i)),
        _ => None,
    };
    let small = valid
        .iter()
        .filter(|(r, _)| match r.subject {
            Subject::Balancer(f) => matches!(f, Flow::NotOurs | Flow::NotOursAlone),
            Subject::Katran(_) => katran_path(r).is_some_and(|(p, _)| p == katran::Path::NonVip),
            Subject::SingleFloor | Subject::Single(_) => false,
            Subject::Floor | Subject::SwapTx | Subject::Isolator => true,
        })
        .map(|(r, m)| (format!("{}: {}", r.group, r.name), Summary::of(&m.net)))
        .collect();
    let mut bars = Vec::new();
    for path in [katran::Path::LruHit, katran::Path::NewFlow] {
        for v6 in [false, true] {
            // Katran's bar first: this run's rounds, or the quoted IPv4 figure.
            if katran.is_some() {
                for (r, m) in valid.iter().filter(|(r, _)| katran_path(r) == Some((path, v6))) {
                    bars.push((r.name.clone(), Summary::of(&m.net)));
                }
            } else if !v6 {
                bars.push((format!("Katran {} (quoted, 2026-12-01)", path.label(false)), Summary::of(&[path.quoted_ns()])));
            }
            for (r, m) in valid.iter().filter(|(r, _)| r.katran.is_some_and(|c| c.path == path && c.v6 == v6)) {
                bars.push((format!("swarmlb {}", r.name), Summary::of(&m.net)));
            }
            if path == katran::Path::LruHit && !v6 {
                // The IPv4 nat paths Katran has no counterpart of, beside the hits.
                let v4 = |r: &Row| r.key.is_some_and(|k| k.family == FAMILY_V4);
                for (r, m) in valid.iter().filter(|(r, _)| matches!(r.subject, Subject::Balancer(Flow::Reply | Flow::Unproven | Flow::FirstData)) && v4(r)) {
                    bars.push((format!("swarmlb {}", r.name), Summary::of(&m.net)));
                }
            }
        }
    }
    vec![
        BarChart {
            file: "xdp-isolator".into(),
            title: "Baselines, isolator, not-a-VIP: net ns/packet (minus the XDP_PASS floor)".into(),
            unit: "ns/packet".into(),
            bars: small,
        },
        BarChart { file: "xdp-balancer".into(), title: "Balancer against Katran: net ns/packet".into(), unit: "ns/packet".into(), bars },
    ]
}
