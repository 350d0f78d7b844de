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
//! Katran's map layout and packet format live in [`abi`], what the results
//! say about it in [`report`].

mod abi;
mod report;

use std::{net::IpAddr, path::PathBuf};

use abi::{
    encapsulated, flow_key, CtlValue, FlowKey, LbStats, RealDefinition, RealPosLru, VipDefinition, VipMeta, F_IPV6, FALLBACK_LRU_CNTR,
    LRU_CNTRS, LRU_MISS_CNTR, RING_SIZE, XDP_DROP_CNTR, XDP_PASS_CNTR, XDP_TX_CNTR,
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
pub use report::{table, About, Compare, Path, HOWTO};

use super::{
    action_name, once, syn, tcp, timed, BenchPrograms, Measured, Plan, Row, Subject, BACKEND_ISN, CLIENT_ISN, CLIENT_PORT, DSR4, DSR6,
    EDGE_OUTSIDE_V4, RESTORE,
};

/// The environment variable naming Katran's `balancer.bpf.o`.
pub const OBJ_ENV: &str = "SWARMLB_BENCH_KATRAN_OBJ";
/// The environment variable naming the Katran commit the object was built
/// from (the object does not record it), for the results.
pub const REV_ENV: &str = "SWARMLB_BENCH_KATRAN_REV";

/// Entries of each per-CPU LRU: the size of swarmlb's flow table (Katran's
/// default is 8M split over the forwarding cores).
const LRU_ENTRIES: u32 = 262_144;
/// The MAC of the one next hop Katran sends every packet to (`ctl_array[0]`).
pub const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 0x01];
/// Katran's program.
const PROGRAM: &str = "balancer_ingress";

/// One Katran row: which path, and the packet that brings its flow to the
/// row's state before every call.
struct KRow {
    path: Path,
    v6: bool,
    /// The client's SYN, which places the flow in the LRU (established rows).
    setup: Option<Vec<u8>>,
}

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
            cost: None,
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
