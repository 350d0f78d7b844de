//! `cargo xtask soak [--minutes N]`: the soak (`harness::soak`) for N
//! minutes (10 by default); the report goes to `bench/results/soak.md`
//! (`soak-<N>min.md` for other lengths) and to stdout. Exits non-zero if
//! a rule or a bound was broken.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use harness::soak::{self, Plan};

fn main() -> Result<()> {
    harness::require_root()?;
    let mut minutes = 10u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--minutes" => minutes = args.next().context("--minutes N")?.parse().context("--minutes N: a whole number")?,
            other => bail!("unknown argument {other:?} (try --minutes N)"),
        }
    }
    anyhow::ensure!(minutes > 0, "--minutes must be at least 1");
    let plan = Plan::new(Duration::from_secs(minutes * 60));
    eprintln!("== soak: {minutes} min");
    let report = soak::run(&plan)?;
    let md = report.markdown();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(if minutes == 10 { "soak.md".to_owned() } else { format!("soak-{minutes}min.md") });
    std::fs::write(&file, &md).with_context(|| format!("write {}", file.display()))?;
    print!("{md}");
    eprintln!("report in {}", file.canonicalize()?.display());
    let violations = report.violations();
    if !violations.is_empty() {
        bail!("the soak broke {} rule(s):\n{}", violations.len(), violations.join("\n"));
    }
    Ok(())
}
