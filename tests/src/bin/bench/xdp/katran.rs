//! Katran, measured in the same run as swarmlb (issue 12: "peers are
//! measured, not remembered").
//!
//! [`OBJ_ENV`] names Katran's XDP balancer object (`balancer.bpf.o`, built
//! from Katran's repository with its own Makefile-bpf flags, outside this
//! repository: `bench/results/README.md` says how; Katran's code and object
//! are never committed here). This module loads it with aya, fills its maps
//! as Katran's user space (`KatranLb`) would for one IPv4 and one IPv6 VIP,
//! and adds rows that the xdp section measures like swarmlb's own: the same
//! frames as the `dsr` rows, the same `bench_restore` wrapper and wrapper
//! subtraction, the same rounds, every call checked. Without the variable
//! the comparison falls back to the figures quoted from 2026-12-01
//! ([`Path::quoted_ns`]), marked as quoted.
//!
//! Katran's map layout (struct sizes, the stats indices, `MAX_VIPS`,
//! `RING_SIZE`) is its ABI at the commit named by [`REV_ENV`]; a layout that
//! no longer matches shows as failed checks (INVALID rows), not as numbers.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray},
    programs::{ProgramFd, Xdp},
    Ebpf, EbpfLoader,
};
use harness::{
    lb_kernel::{BACKENDS_V4, BACKENDS_V6, CLIENT_V4, CLIENT_V6},
    rawframe::{FrameBuilder, L4},
    xdp_action::*,
};
use lb_common::{maglev, wire::TCP_ACK};

use super::{
    action_name, once, syn, tcp, tcp_offset, timed, BenchPrograms, Measured, Plan, Row, Subject, BACKEND_ISN, CLIENT_ISN, CLIENT_PORT, DSR4,
    DSR6, EDGE_OUTSIDE_V4, RESTORE,
};

/// How to build Katran's object and measure it, for bench/results/README.md
/// (which the bench rewrites).
pub const HOWTO: &str = "## Katran, measured beside swarmlb

The xdp section measures Katran's XDP balancer in the same run, rows interleaved with swarmlb's, under the same wrapper and checks, when given \
its object: `cargo xtask bench --only xdp --katran /tmp/katran-build/bpf/balancer.bpf.o --katran-rev COMMIT` (the bench binary itself reads \
`SWARMLB_BENCH_KATRAN_OBJ` and `SWARMLB_BENCH_KATRAN_REV`). Without it, its table quotes the 2026-12-01 figures, marked as quoted. \
`xdp.md` names the Katran commit and the compiler of the run it holds.

Katran is built outside this repository (never commit its code or its object), from its public source \
(github.com/facebookincubator/katran), with Debian's clang (`apt-get install clang llvm`; 14.0.6 on Debian 12) and Katran's own \
`Makefile-bpf`, in the tree its `build_bpf_modules_opensource.sh` lays out:

```sh
# /tmp/katran-src: Katran's source tree at the chosen commit
mkdir -p /tmp/katran-build/include /tmp/katran-build/katran/lib /tmp/katran-build/bpf && cd /tmp/katran-build
cp /tmp/katran-src/katran/lib/Makefile-bpf Makefile
cp -r /tmp/katran-src/katran/lib/bpf /tmp/katran-src/katran/lib/linux_includes katran/lib/
cp /tmp/katran-src/katran/lib/linux_includes/* include/
make bpf/balancer.bpf.o LLC=llc-14 CLANG=clang
# = clang -I./usr/include -I./include -I. -DDEBUG -D__KERNEL__ -Wno-unused-value -Wno-pointer-sign \\
#     -Wno-compare-distinct-pointer-types -O2 -emit-llvm -c -g katran/lib/bpf/balancer.bpf.c -o - \\
#   | llc-14 -march=bpf -filetype=obj -o bpf/balancer.bpf.o
```

Default features only: IPIP / IP6IP6 encapsulation (no GUE), no inline decap, no source routing. The bench sets Katran's maps up as \
its user space would (`tests/src/bin/bench/xdp/katran.rs`): the `dsr` rows' VIPs and backends, a Maglev ring of 65 537 slots per VIP, \
the gateway MAC, one 262 144-entry LRU per CPU.
";

/// The environment variable naming Katran's `balancer.bpf.o`.
pub const OBJ_ENV: &str = "SWARMLB_BENCH_KATRAN_OBJ";
/// The environment variable naming the Katran commit the object was built
/// from (the object does not record it), for the results.
pub const REV_ENV: &str = "SWARMLB_BENCH_KATRAN_REV";

/// Katran's XDP_PASS floor in the quoted run (2026-12-01).
pub const QUOTED_FLOOR: f64 = 6.0;
/// How the quoted figures were measured.
const QUOTED_HOW: &str = "Katran 19f08fec built with its own Makefile-bpf flags, IPv4 VIP, IPIP to the real, XDP_TX to one gateway MAC, \
measured with this section's method and wrapper on this machine class (2-vCPU Xeon, kernel 6.18) on 2026-12-01, maps set up as its user space \
does, a 262 144-entry LRU per CPU";
/// The issue's reference, from another machine.
const OTHER_MACHINE: &str = "LRU hit + IPIP ≈ 155, new flow ≈ 384, non-VIP ≈ 60 ns net, floor ≈ 26 ns";

/// Entries of each per-CPU LRU: the size of swarmlb's flow table (Katran's
/// default is 8M split over the forwarding cores).
const LRU_ENTRIES: u32 = 262_144;
/// Katran's `RING_SIZE`: slots of one VIP's consistent-hashing ring.
const RING_SIZE: u32 = 65_537;
/// Katran's `MAX_VIPS`: its global counters sit after the per-VIP ones in
/// `stats`.
const MAX_VIPS: u32 = 512;
/// `stats` indices (`MAX_VIPS +` Katran's `*_CNTR*` constants).
const LRU_CNTRS: u32 = MAX_VIPS;
const LRU_MISS_CNTR: u32 = MAX_VIPS + 1;
const FALLBACK_LRU_CNTR: u32 = MAX_VIPS + 3;
const XDP_TX_CNTR: u32 = MAX_VIPS + 17;
const XDP_DROP_CNTR: u32 = MAX_VIPS + 18;
const XDP_PASS_CNTR: u32 = MAX_VIPS + 19;
/// `real_definition.flags`: an IPv6 real (IP6IP6 / IPIP6 encapsulation).
const F_IPV6: u8 = 1;
/// The MAC of the one next hop Katran sends every packet to (`ctl_array[0]`).
pub const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 0x01];
/// Katran's program.
const PROGRAM: &str = "balancer_ingress";

/// A Katran path a swarmlb row is compared with.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Path {
    /// LRU hit + IPIP (IP6IP6) encapsulation.
    LruHit,
    /// New flow: a SYN, consistent-hashing ring, LRU insert, encapsulation.
    NewFlow,
    /// Not a VIP: passed on.
    NonVip,
}

impl Path {
    /// The path's name in the tables (IPv6 hits are IP6IP6 in Katran).
    pub fn label(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Path::LruHit, false) => "LRU hit + IPIP",
            (Path::LruHit, true) => "LRU hit + IP6IP6",
            (Path::NewFlow, _) => "new flow",
            (Path::NonVip, _) => "non-VIP",
        }
    }

    /// Katran's net ns per packet as quoted from 2026-12-01 (IPv4 only;
    /// minus its floor, [`QUOTED_FLOOR`]). New flow: with a 262 144-entry
    /// LRU per CPU (673 ns with Katran's default 4M).
    pub fn quoted_ns(self) -> f64 {
        match self {
            Path::LruHit => 71.0,
            Path::NewFlow => 522.0,
            Path::NonVip => 23.0,
        }
    }
}

/// What a swarmlb row is compared with, and the issue's target for it.
#[derive(Clone, Copy)]
pub struct Compare {
    /// Katran's path.
    pub path: Path,
    /// An IPv6 row (compared with Katran's IPv6 VIP when measured).
    pub v6: bool,
    /// The highest ratio swarmlb net / Katran net that meets issue 12's target.
    pub target: f64,
    pub note: &'static str,
}

impl Compare {
    /// Issue 12's targets: established ≤ 0.8× Katran in `dsr` and ≤ 1.0× in
    /// `nat`; new flow ≤ 0.8× `dsr`, ≤ 1.2× `nat`; not a VIP ≤ 1.0×.
    pub fn new(path: Path, nat: bool, v6: bool, note: &'static str) -> Self {
        let target = match (path, nat) {
            (Path::LruHit, false) | (Path::NewFlow, false) => 0.8,
            (Path::LruHit, true) | (Path::NonVip, _) => 1.0,
            (Path::NewFlow, true) => 1.2,
        };
        Self { path, v6, target, note }
    }
}

/// Where the object came from, as the results name it.
pub struct About {
    /// The object's path.
    pub object: PathBuf,
    /// The Katran commit, as [`REV_ENV`] names it.
    pub revision: String,
    /// The compiler named in the object's debug info.
    pub compiler: String,
}

/// One Katran row: which path, and the packet that brings its flow to the
/// row's state before every call.
struct KRow {
    path: Path,
    v6: bool,
    /// The client's SYN, which places the flow in the LRU (established rows).
    setup: Option<Vec<u8>>,
}

/// Katran's `flow_key` (40 bytes: addresses as 16 bytes, IPv4 in the first
/// four, then source and destination port, protocol).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    ports: [u8; 4],
    proto: u8,
    _pad: [u8; 3],
}

/// `real_pos_lru`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RealPosLru {
    pos: u32,
    _pad: u32,
    atime: u64,
}

/// `vip_definition`: address, port (network order), protocol.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipDefinition {
    vip: [u8; 16],
    port: [u8; 2],
    proto: u8,
    _pad: u8,
}

/// `vip_meta`.
#[repr(C)]
#[derive(Clone, Copy)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// `real_definition`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RealDefinition {
    dst: [u8; 16],
    flags: u8,
    _pad: [u8; 3],
}

/// `ctl_value`: a MAC in the first six bytes of a u64.
#[repr(C)]
#[derive(Clone, Copy)]
struct CtlValue {
    mac: [u8; 8],
}

/// `lb_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LbStats {
    v1: u64,
    v2: u64,
}

// SAFETY: `repr(C)`, integers and byte arrays, padding spelled out.
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for RealPosLru {}
unsafe impl aya::Pod for VipDefinition {}
unsafe impl aya::Pod for VipMeta {}
unsafe impl aya::Pod for RealDefinition {}
unsafe impl aya::Pod for CtlValue {}
unsafe impl aya::Pod for LbStats {}

/// Katran's global counters the checks read, summed over CPUs.
#[derive(Clone, Copy, Default, PartialEq, Debug)]
struct Stats {
    /// Packets for a VIP that reached the LRU stage.
    lru: u64,
    /// LRU misses of SYNs (new flows) and of other packets.
    miss_syn: u64,
    miss_other: u64,
    /// Packets that found no per-CPU LRU (must stay 0: `lru_mapping` set up).
    fallback: u64,
    tx: u64,
    pass: u64,
    drop: u64,
}

impl Stats {
    fn since(self, before: Stats) -> Stats {
        Stats {
            lru: self.lru - before.lru,
            miss_syn: self.miss_syn - before.miss_syn,
            miss_other: self.miss_other - before.miss_other,
            fallback: self.fallback - before.fallback,
            tx: self.tx - before.tx,
            pass: self.pass - before.pass,
            drop: self.drop - before.drop,
        }
    }

    /// What `n` packets of `path` count: nothing else.
    fn expected(path: Path, n: u64) -> Stats {
        match path {
            Path::LruHit => Stats { lru: n, tx: n, ..Stats::default() },
            Path::NewFlow => Stats { lru: n, miss_syn: n, tx: n, ..Stats::default() },
            Path::NonVip => Stats { pass: n, ..Stats::default() },
        }
    }
}

/// Katran's balancer, loaded, its maps filled.
pub struct Katran {
    ebpf: Ebpf,
    /// One LRU per possible CPU, as `KatranLb` creates them.
    lrus: Vec<HashMap<MapData, FlowKey, RealPosLru>>,
    rows: Vec<KRow>,
    /// Where the object came from.
    pub about: About,
}

impl Katran {
    /// Loads the object [`OBJ_ENV`] names; `None` without the variable.
    pub fn from_env() -> Result<Option<Self>> {
        let Some(path) = std::env::var_os(OBJ_ENV) else { return Ok(None) };
        let revision = std::env::var(REV_ENV).unwrap_or_else(|_| format!("unknown revision (set {REV_ENV})"));
        Self::load(PathBuf::from(path), revision).map(Some)
    }

    fn load(object: PathBuf, revision: String) -> Result<Self> {
        let bytes = std::fs::read(&object).with_context(|| format!("reading Katran's object {} ({OBJ_ENV})", object.display()))?;
        let compiler = compiler(&bytes);
        let mut ebpf = EbpfLoader::new().load(&bytes).with_context(|| format!("loading Katran's object {}", object.display()))?;
        let prog: &mut Xdp = ebpf.program_mut(PROGRAM).with_context(|| format!("Katran's object has no {PROGRAM}"))?.try_into()?;
        prog.load().context("loading Katran's balancer_ingress (verifier)")?;
        let mut k = Self { ebpf, lrus: Vec::new(), rows: Vec::new(), about: About { object, revision, compiler } };
        k.configure()?;
        Ok(k)
    }

    /// Fills the maps as `KatranLb` does for an IPv4 VIP (vip_num 0, reals
    /// 1–3) and an IPv6 VIP (vip_num 1, reals 4–6), TCP 443, default flags
    /// (ports hashed, LRU used): the gateway MAC, the reals, each VIP's ring
    /// ([`ring`]) and one LRU per CPU in `lru_mapping`.
    fn configure(&mut self) -> Result<()> {
        let mut ctl: Array<_, CtlValue> = self.map("ctl_array")?.try_into()?;
        let mut mac = [0u8; 8];
        mac[..6].copy_from_slice(&GATEWAY_MAC);
        ctl.set(0, CtlValue { mac }, 0)?;
        for (vip_num, (vip, backends)) in [(DSR4, &BACKENDS_V4), (DSR6, &BACKENDS_V6)].into_iter().enumerate() {
            let vip_num = vip_num as u32;
            let mut vips: HashMap<_, VipDefinition, VipMeta> = self.map("vip_map")?.try_into()?;
            let key = VipDefinition { vip: addr16(vip.parse()?), port: 443u16.to_be_bytes(), proto: 6, _pad: 0 };
            vips.insert(key, VipMeta { flags: 0, vip_num }, 0)?;
            let first = 1 + 3 * vip_num;
            let mut reals: Array<_, RealDefinition> = self.map("reals")?.try_into()?;
            for (i, b) in backends.iter().enumerate() {
                let a: IpAddr = b.parse()?;
                reals.set(first + i as u32, RealDefinition { dst: addr16(a), flags: if a.is_ipv6() { F_IPV6 } else { 0 }, _pad: [0; 3] }, 0)?;
            }
            let ring = ring(backends.len())?;
            let mut rings: Array<_, u32> = self.map("ch_rings")?.try_into()?;
            for (slot, b) in ring.iter().enumerate() {
                rings.set(RING_SIZE * vip_num + slot as u32, first + b, 0)?;
            }
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        for cpu in 0..cpus as u32 {
            let obj = aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
                size_of::<FlowKey>() as u32,
                size_of::<RealPosLru>() as u32,
                LRU_ENTRIES,
                0,
            );
            let lru: HashMap<MapData, FlowKey, RealPosLru> = Map::LruHashMap(MapData::create(obj, &format!("katran_lru{cpu}"), None)?).try_into()?;
            let mut mapping: ArrayOfMaps<_, HashMap<MapData, FlowKey, RealPosLru>> = self.map("lru_mapping")?.try_into()?;
            mapping.set(cpu, &lru, 0).with_context(|| format!("lru_mapping[{cpu}]"))?;
            self.lrus.push(lru);
        }
        Ok(())
    }

    fn map(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).with_context(|| format!("Katran's object has no map {name}"))
    }

    fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self.ebpf.program_mut(PROGRAM).context("balancer_ingress")?.try_into()?)
    }

    /// The program, for `bench_restore`'s tail call.
    fn fd(&mut self) -> Result<ProgramFd> {
        Ok(self.program()?.fd()?.try_clone()?)
    }

    /// The rows, with the `dsr` rows' frames (the same client, VIP
    /// addresses and ports): per family a new flow and an established one,
    /// and the IPv4 packet for no VIP. `eth` is the balancer rows' Ethernet
    /// header (client → edge).
    pub(super) fn rows(&mut self, eth: &FrameBuilder) -> Vec<Row> {
        let ack = L4::Tcp { sport: CLIENT_PORT, dport: 443, seq: CLIENT_ISN + 1, ack: BACKEND_ISN + 1, flags: TCP_ACK, window: 64240, payload: Vec::new() };
        let mut rows = Vec::new();
        for (family, client, vip, tunnel, v6) in [("IPv4", CLIENT_V4, DSR4, "IPIP", false), ("IPv6", CLIENT_V6, DSR6, "IP6IP6", true)] {
            let syn_frame = syn(eth, client, vip, 443);
            rows.push(self.row(format!("Katran {family}, new flow (SYN → ring → LRU insert → {tunnel})"), Path::NewFlow, v6, syn_frame.clone(), None, XDP_TX));
            rows.push(self.row(format!("Katran {family}, established (LRU hit → {tunnel})"), Path::LruHit, v6, tcp(eth, client, vip, &ack), Some(syn_frame), XDP_TX));
        }
        rows.push(self.row("Katran IPv4, not a VIP (→ XDP_PASS)".into(), Path::NonVip, false, syn(eth, CLIENT_V4, EDGE_OUTSIDE_V4, 22), None, XDP_PASS));
        rows
    }

    fn row(&mut self, name: String, path: Path, v6: bool, frame: Vec<u8>, setup: Option<Vec<u8>>, expect: u32) -> Row {
        self.rows.push(KRow { path, v6, setup });
        Row {
            group: "Katran",
            name,
            subject: Subject::Katran(self.rows.len() - 1),
            frame,
            inside: false,
            setup: Vec::new(),
            key: None,
            expect,
            katran: None,
        }
    }

    /// The path and family of the Katran row `i`.
    pub fn path_of(&self, i: usize) -> (Path, bool) {
        (self.rows[i].path, self.rows[i].v6)
    }

    /// Empties every LRU: how many entries they held.
    fn clear_lrus(&mut self) -> Result<usize> {
        let mut n = 0;
        for lru in &mut self.lrus {
            let keys: Vec<FlowKey> = lru.keys().collect::<Result<_, _>>()?;
            n += keys.len();
            for k in keys {
                lru.remove(&k)?;
            }
        }
        Ok(n)
    }

    /// The real an LRU holds for `key` (any CPU's).
    fn lru_real(&self, key: &FlowKey) -> Option<u32> {
        self.lrus.iter().find_map(|l| l.get(key, 0).ok()).map(|v| v.pos)
    }

    /// The address of real `pos`, if it is one of the VIP's.
    fn real(&mut self, pos: u32, v6: bool) -> Result<Option<IpAddr>> {
        let first = if v6 { 4 } else { 1 };
        if !(first..first + 3).contains(&pos) {
            return Ok(None);
        }
        let reals: Array<_, RealDefinition> = self.map("reals")?.try_into()?;
        let r = reals.get(&pos, 0)?;
        Ok(Some(if v6 { IpAddr::from(r.dst) } else { IpAddr::from(<[u8; 4]>::try_from(&r.dst[..4])?) }))
    }

    fn stats(&mut self) -> Result<Stats> {
        let stats: PerCpuArray<_, LbStats> = self.map("stats")?.try_into()?;
        let sum = |i: u32| -> Result<(u64, u64)> { Ok(stats.get(&i, 0)?.iter().fold((0, 0), |(a, b), s| (a + s.v1, b + s.v2))) };
        let (miss_syn, miss_other) = sum(LRU_MISS_CNTR)?;
        Ok(Stats {
            lru: sum(LRU_CNTRS)?.0,
            miss_syn,
            miss_other,
            fallback: sum(FALLBACK_LRU_CNTR)?.0,
            tx: sum(XDP_TX_CNTR)?.0,
            pass: sum(XDP_PASS_CNTR)?.0,
            drop: sum(XDP_DROP_CNTR)?.0,
        })
    }

    /// Empties the LRUs and runs row `i`'s setup packet (on the calling
    /// thread's CPU, which the caller pins): it must be sent on as a new
    /// flow and leave the flow in the LRU.
    fn prepare(&mut self, i: usize, frame: &[u8]) -> Result<(), String> {
        self.clear_lrus().map_err(|e| format!("emptying the LRUs: {e:#}"))?;
        let Some(setup) = self.rows[i].setup.clone() else { return Ok(()) };
        let before = self.stats().map_err(|e| format!("{e:#}"))?;
        let (action, _) = self.program().and_then(|p| once(p, &setup, None, 1)).map_err(|e| format!("{e:#}"))?;
        let counted = self.stats().map_err(|e| format!("{e:#}"))?.since(before);
        if action != XDP_TX || counted != Stats::expected(Path::NewFlow, 1) {
            return Err(format!("setup, client SYN: {} counting {counted:?} (expected XDP_TX, one new flow)", action_name(action)));
        }
        let key = flow_key(frame).map_err(|e| format!("{e:#}"))?;
        if self.lru_real(&key).is_none() {
            return Err("setup, client SYN: the LRU lacks the flow".into());
        }
        Ok(())
    }

    /// The plain (unwrapped, single) run of Katran row `i` after its setup:
    /// the action, the output packet and the packet it must be. An
    /// encapsulated packet must go to the gateway MAC from the frame's
    /// destination MAC, in an outer header built as Katran documents it
    /// (source 172.16/16 or 0100::/64 from the client's address and port,
    /// TTL 64) to one of the VIP's reals — the one the LRU then holds for
    /// the flow — with the client's packet unchanged inside. Two repeats
    /// under `bench_restore` must leave the same packet (the restore is exact).
    pub(super) fn check(&mut self, row: &Row, i: usize, m: &mut Measured, bench: &mut BenchPrograms) -> Result<(u32, Vec<u8>, Vec<u8>)> {
        let _pinned = Pinned::here()?;
        let KRow { path, v6, .. } = self.rows[i];
        if let Err(e) = self.prepare(i, &row.frame) {
            m.fail(format!("{}: {e}", row.name));
        }
        let before = self.stats()?;
        let (action, out) = once(self.program()?, &row.frame, None, 1)?;
        let counted = self.stats()?.since(before);
        if counted != Stats::expected(path, 1) {
            m.fail(format!("{}: counted {counted:?}, expected {:?}", row.name, Stats::expected(path, 1)));
        }
        let expected = if path == Path::NonVip {
            row.frame.clone()
        } else {
            let pos = self.lru_real(&flow_key(&row.frame)?);
            match pos.map(|p| self.real(p, v6)).transpose()?.flatten() {
                Some(real) => encapsulated(&row.frame, real),
                None => {
                    m.fail(format!("{}: after its packet the LRU holds {pos:?}, not one of the VIP's reals", row.name));
                    row.frame.clone()
                }
            }
        };
        if path != Path::NewFlow {
            if let Err(e) = self.prepare(i, &row.frame) {
                m.fail(format!("{}: {e}", row.name));
            }
            bench.set_input(&row.frame, false)?;
            bench.set_target(&self.fd()?)?;
            let (_, restored) = once(bench.program(RESTORE)?, &row.frame, None, 2)?;
            if restored != out {
                m.fail(format!("{}: bench_restore's 2nd repeat left another packet than a plain run", row.name));
            }
        }
        Ok((action, out, expected))
    }

    /// One call of Katran row `i` under `bench_restore`, and one of the
    /// wrapper alone: Katran's net ns per packet and the wrapper's time, as
    /// swarmlb's balancer rows are timed. The LRUs are emptied and the
    /// row's setup run before the call (on the pinned CPU, whose LRU the
    /// program uses); every repeat must count exactly its path (an
    /// established row never misses the LRU, a new-flow row inserts one
    /// entry per repeat — none skipped as under flood).
    pub(super) fn time(&mut self, row: &Row, i: usize, plan: &Plan, m: &mut Measured, bench: &mut BenchPrograms) -> Result<(f64, f64)> {
        let _pinned = Pinned::here()?;
        let path = self.rows[i].path;
        let new = path == Path::NewFlow;
        let repeat = if new { plan.new_flow_repeat } else { plan.repeat };
        bench.set_input(&row.frame, new)?;
        let pass = bench.pass_fd()?;
        bench.set_target(&pass)?;
        let (alone, wrapper_ns) = timed(bench.program(RESTORE)?, &row.frame, None, repeat)?;
        if alone != XDP_PASS {
            m.fail(format!("{}: bench_restore → bench_pass ended in {}", row.name, action_name(alone)));
        }
        if let Err(e) = self.prepare(i, &row.frame) {
            m.fail(format!("{}: {e}", row.name));
        }
        bench.set_target(&self.fd()?)?;
        let before = self.stats()?;
        let (action, ns) = timed(bench.program(RESTORE)?, &row.frame, None, repeat)?;
        let counted = self.stats()?.since(before);
        if action != row.expect {
            m.fail(format!("{}: a timed run ended in {}", row.name, action_name(action)));
        }
        let want = Stats::expected(path, u64::from(repeat));
        if counted != want {
            m.fail(format!("{}: {repeat} repeats counted {counted:?} (expected {want:?})", row.name));
        }
        let held = self.clear_lrus()?;
        let want_held = match path {
            Path::NewFlow => repeat as usize,
            Path::LruHit => 1,
            Path::NonVip => 0,
        };
        if held != want_held {
            m.fail(format!("{}: the LRUs held {held} flows after a timed call (expected {want_held})", row.name));
        }
        Ok((ns - wrapper_ns, wrapper_ns))
    }
}

/// A ring for a VIP with `n` reals of weight 1, as indices 0..n: a Maglev
/// table over `RING_SIZE` slots, built by lb-common's builder. Katran's
/// MaglevHash builds the same kind of table with its own permutation hash;
/// which slot names which real does not change a packet's cost.
fn ring(n: usize) -> Result<Vec<u32>> {
    let backends: Vec<maglev::Backend> = (0..n as u64).map(|i| maglev::Backend { key: i + 1, weight: 1 }).collect();
    let mut table = vec![0; RING_SIZE as usize];
    let (mut next, mut credit) = (vec![0; n], vec![0; n]);
    maglev::build(&backends, &mut table, &mut next, &mut credit).map_err(|e| anyhow::anyhow!("ring: {e:?}"))?;
    Ok(table)
}

/// An address as Katran stores it: 16 bytes, IPv4 in the first four.
fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The LRU key of a TCP frame's flow (untagged, no IPv6 extension headers).
fn flow_key(frame: &[u8]) -> Result<FlowKey> {
    let l4 = tcp_offset(frame)?;
    let mut k = FlowKey { proto: 6, ..FlowKey::default() };
    if frame[12..14] == [0x08, 0x00] {
        k.src[..4].copy_from_slice(&frame[26..30]);
        k.dst[..4].copy_from_slice(&frame[30..34]);
    } else {
        k.src.copy_from_slice(&frame[22..38]);
        k.dst.copy_from_slice(&frame[38..54]);
    }
    k.ports.copy_from_slice(&frame[l4..l4 + 4]);
    Ok(k)
}

/// `frame` as Katran must send it to `real`: a new Ethernet header (the
/// gateway's MAC, from the frame's destination MAC), then an outer IPv4
/// (IPIP) or IPv6 (IP6IP6) header, then the frame's IP packet unchanged.
fn encapsulated(frame: &[u8], real: IpAddr) -> Vec<u8> {
    let inner = &frame[14..];
    let mut out = GATEWAY_MAC.to_vec();
    out.extend_from_slice(&frame[..6]);
    // The outer source carries the client's port, so the reals' RSS spreads flows.
    let l4 = tcp_offset(frame).unwrap_or(0);
    let (p0, p1) = (frame[l4], frame[l4 + 1]);
    match real {
        IpAddr::V4(real) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[1] = inner[1];
            h[2..4].copy_from_slice(&((inner.len() + 20) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = 4;
            // Katran byte-swaps the (network-order) port before the xor.
            h[12..16].copy_from_slice(&Ipv4Addr::new(172, 16, p1 ^ inner[14], p0 ^ inner[15]).octets());
            h[16..20].copy_from_slice(&real.octets());
            let csum = !fold(h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum());
            h[10..12].copy_from_slice(&csum.to_be_bytes());
            out.extend_from_slice(&h);
        }
        IpAddr::V6(real) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            let mut h = [0u8; 40];
            // Version 6; traffic class copied from the inner packet.
            h[0] = 0x60 | (inner[0] & 0x0f);
            h[1] = inner[1] & 0xf0;
            h[4..6].copy_from_slice(&(inner.len() as u16).to_be_bytes());
            h[6] = 41;
            h[7] = 64;
            let mut src = [0u8; 16];
            src[0] = 1;
            src[12] = inner[8 + 12] ^ p0;
            src[13] = inner[8 + 13] ^ p1;
            src[14..16].copy_from_slice(&inner[8 + 14..8 + 16]);
            h[8..24].copy_from_slice(&Ipv6Addr::from(src).octets());
            h[24..40].copy_from_slice(&real.octets());
            out.extend_from_slice(&h);
        }
    }
    out.extend_from_slice(inner);
    out
}

/// One's-complement fold of a 32-bit sum.
fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The compiler the object's debug info names ("… clang version …").
fn compiler(object: &[u8]) -> String {
    let needle = b"clang version ";
    object
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| {
            let start = object[..at].iter().rposition(|&b| b == 0).map_or(0, |p| p + 1);
            let end = object[at..].iter().position(|&b| b == 0).map_or(object.len(), |p| at + p);
            String::from_utf8_lossy(&object[start..end]).trim().to_owned()
        })
        .unwrap_or_else(|| "compiler not recorded".into())
}

/// Keeps the calling thread on its current CPU until dropped: Katran keeps
/// one LRU per CPU (looked up by `bpf_get_smp_processor_id`), so a row's
/// setup and its timed call must run on the same one.
struct Pinned {
    old: libc::cpu_set_t,
}

impl Pinned {
    fn here() -> Result<Self> {
        // SAFETY: plain libc calls on the calling thread with owned sets.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            ensure!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) == 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
            let cpu = libc::sched_getcpu();
            ensure!(cpu >= 0, "sched_getcpu: {}", std::io::Error::last_os_error());
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) != 0 {
                bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
            }
            Ok(Self { old })
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores the set read in `here`.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.old) };
    }
}

// ---------------------------------------------------------------- report

/// Katran's net ns for `c`'s path and family: this run's median when
/// Katran was measured (and its row is valid), else the quoted figure.
fn katran_net(c: &Compare, measured: &[(Path, bool, Option<f64>)]) -> Option<f64> {
    if measured.is_empty() {
        return Some(c.path.quoted_ns());
    }
    measured.iter().find(|(p, v6, _)| *p == c.path && *v6 == c.v6).and_then(|(_, _, ns)| *ns)
}

/// The "Against Katran" section: every swarmlb row that has a Katran
/// counterpart, its net ns beside Katran's (measured in this run when
/// `measured` has rows: (path, IPv6, median net or None if INVALID)), the
/// ratio and issue 12's target.
pub fn table(md: &mut String, compared: &[(&str, Option<f64>, Compare)], measured: &[(Path, bool, Option<f64>)], about: Option<&About>, floor: f64) {
    let _ = writeln!(md, "\n## Against Katran\n");
    match about {
        Some(a) => {
            let _ = writeln!(
                md,
                "Katran {rev} (`{obj}`, {cc}) **measured in this run**, {date}: its `balancer_ingress` loaded with aya beside swarmlb, rows \
interleaved with swarmlb's in every round, under the same `bench_restore` wrapper and wrapper subtraction, against this run's XDP_PASS floor \
({floor:.1} ns). Maps as Katran's user space fills them: an IPv4 VIP ({DSR4}) and an IPv6 VIP ({DSR6}), TCP 443, default flags; three reals \
each (the `dsr` rows' backends); a {RING_SIZE}-slot Maglev ring per VIP over them; `ctl_array[0]` the gateway MAC; one {LRU_ENTRIES}-entry \
LRU per CPU in `lru_mapping` (Katran's per-core layout, flags 0; the size of swarmlb's whole flow table; Katran's default is 8M split over \
the forwarding cores). The frames are the `dsr` rows' own. Established: the LRU emptied, the client's SYN run once (a new flow, remembered), \
then the ACK, every repeat an LRU hit (the thread pinned to its CPU, whose LRU Katran uses). New flow: the SYN with the wrapper's varying \
source port, every repeat a miss, a ring lookup and an LRU insert; the LRUs emptied around each call. Checked: each row's verdict, Katran's \
own counters for every timed call (exactly one hit, one SYN miss or one pass per repeat; the per-CPU LRU always found), the LRUs' contents \
afterwards, and once per row the output packet byte for byte (outer header to the real the LRU holds, from the gateway MAC) and that the \
wrapper restores exactly.",
                rev = a.revision,
                obj = a.object.display(),
                cc = a.compiler,
                date = today(),
            );
        }
        None => {
            let _ = writeln!(
                md,
                "**Quoted, not measured in this run** (set `{OBJ_ENV}` to a Katran `balancer.bpf.o` to measure it; see bench/results/README.md): \
{QUOTED_HOW}. XDP_PASS floor of that run {QUOTED_FLOOR:.0} ns (this run's: {floor:.1} ns); IPv4 only, so the IPv6 rows are compared with \
Katran's IPv4 figures. The issue's reference, from another machine: {OTHER_MACHINE}."
            );
            if (floor / QUOTED_FLOOR - 1.0).abs() > 0.3 {
                let _ = writeln!(
                    md,
                    "\n**This run's floor ({floor:.1} ns) is not the quoted run's ({QUOTED_FLOOR:.0} ns): the machine or its load differs, so \
the ratios below carry that difference too.**"
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nNet against net, so the floors cancel. Where swarmlb does work Katran does not: every balanced packet's next hop comes from \
`bpf_fib_lookup` (any routed topology, the path MTU checked per packet) and leaves by devmap redirect, where Katran sends everything to one \
gateway MAC with XDP_TX (replacing the lookup by a fixed hop took swarmlb's established IPv4 dsr row from ~150 to ~115 ns, IPv6 from \
~250 to ~120 ns, in an earlier session); `nat` rewrites both addresses and ports and keeps a NAT entry; the non-VIP packet is tail-called \
to the isolator. \
Where Katran does work swarmlb does not: it inserts every new flow into its LRU at the SYN (swarmlb's flow table remembers a flow from its \
first packet that is not a SYN, so a `dsr` SYN inserts nothing there; a `nat` SYN creates its NAT entry) and counts bytes and packets per \
VIP and per real on every packet. \
Targets (issue 12): established ≤ 0.8× Katran in `dsr`, ≤ 1.0× in `nat`; new flow ≤ 0.8× in `dsr`, ≤ 1.2× in `nat`; not a VIP ≤ 1.0×."
    );
    let source = if about.is_some() { "measured" } else { "quoted 2026-12-01" };
    let _ = writeln!(
        md,
        "\n| swarmlb path | Katran path | swarmlb net ns | Katran net ns ({source}) | ratio | target | verdict | note |\n| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for &(name, ours, ref c) in compared {
        let label = c.path.label(c.v6 && about.is_some());
        let theirs = katran_net(c, measured);
        let note = match (c.v6, about.is_some(), c.note.is_empty()) {
            (true, false, true) => "IPv6 compared with Katran's quoted IPv4 figure".to_owned(),
            (true, false, false) => format!("{}; IPv6 compared with Katran's quoted IPv4 figure", c.note),
            _ => c.note.to_owned(),
        };
        let (ours_s, theirs_s) = (ours.map_or("**INVALID**".into(), |v| format!("{v:.1}")), theirs.map_or("**INVALID**".into(), |v| format!("{v:.1}")));
        let (ratio, verdict) = match (ours, theirs) {
            (Some(o), Some(t)) if t > 0.0 => (format!("{:.2}", o / t), verdict_vs(o, t, c.target)),
            _ => ("–".into(), "check failed".into()),
        };
        let _ = writeln!(md, "| {name} | {label} | {ours_s} | {theirs_s} | {ratio} | ≤ {:.1}× | {verdict} | {note} |", c.target);
    }
}

/// "met" or "missed by how much", against `target` × Katran.
fn verdict_vs(ours: f64, theirs: f64, target: f64) -> String {
    let limit = theirs * target;
    let d = ours - limit;
    if d <= 0.0 {
        format!("met ({:.0} ns under)", -d)
    } else {
        format!("**missed by {d:.0} ns (+{:.0}%)**", d / limit * 100.0)
    }
}

/// Today's date (UTC), from `date`.
fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "today".into(), |s| s.trim().to_owned())
}
