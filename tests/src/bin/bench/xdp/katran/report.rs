//! What the results say about Katran: how to build and measure it, the
//! figures quoted when it is not measured, and the "Against Katran" table
//! with issue 12's targets.

use std::{fmt::Write as _, path::PathBuf};

use super::{
    super::{DSR4, DSR6},
    abi::RING_SIZE,
    LRU_ENTRIES, OBJ_ENV,
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

/// Katran's XDP_PASS floor in the quoted run (2026-12-01).
pub const QUOTED_FLOOR: f64 = 6.0;
/// How the quoted figures were measured.
const QUOTED_HOW: &str = "Katran 19f08fec built with its own Makefile-bpf flags, IPv4 VIP, IPIP to the real, XDP_TX to one gateway MAC, \
measured with this section's method and wrapper on this machine class (2-vCPU Xeon, kernel 6.18) on 2026-12-01, maps set up as its user space \
does, a 262 144-entry LRU per CPU";
/// The issue's reference, from another machine.
const OTHER_MACHINE: &str = "LRU hit + IPIP ≈ 155, new flow ≈ 384, non-VIP ≈ 60 ns net, floor ≈ 26 ns";

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
    /// The Katran commit, as [`super::REV_ENV`] names it.
    pub revision: String,
    /// The compiler named in the object's debug info.
    pub compiler: String,
}

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
