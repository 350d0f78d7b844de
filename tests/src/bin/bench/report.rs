//! What the benchmark writes: medians with min–max, markdown tables and
//! PNG bar charts, and the machine they were measured on.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::Opts;

/// The machine and kernel, as the results name them.
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
}

impl Machine {
    pub fn read() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_owned();
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
        Self { kernel, cpu, cores: std::thread::available_parallelism().map_or(1, |n| n.get()), memory_gib }
    }

    /// One markdown line.
    pub fn line(&self) -> String {
        format!("kernel {}; CPU {}; {} cores; {:.0} GiB", self.kernel, self.cpu, self.cores, self.memory_gib)
    }
}

/// Median and range of one measurement over the rounds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many samples (finite ones) it summarizes.
    pub n: usize,
}

impl Summary {
    /// Of `samples` (any order; empty gives zeros).
    pub fn of(samples: &[f64]) -> Self {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return Self::default();
        }
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        Self { median, min: s[0], max: s[n - 1], n }
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!("{:.digits$} ({:.digits$}–{:.digits$})", self.median, self.min, self.max)
    }
}

/// A bar chart: one bar per subject (its median), whiskers for min–max.
pub struct BarChart {
    /// File name without `.png`.
    pub file: String,
    pub title: String,
    /// The value axis' label.
    pub unit: String,
    pub bars: Vec<(String, Summary)>,
}

/// One section's results.
pub struct Section {
    /// File stem: `<name>.md`, and the index's link.
    pub name: &'static str,
    pub title: String,
    /// The section's text: method, tables, notes (without the title).
    pub markdown: String,
    pub charts: Vec<BarChart>,
}

impl Section {
    /// Writes `<name>.md` and the charts into `dir`.
    pub fn write(&self, dir: &Path, machine: &Machine) -> Result<()> {
        let mut md = format!("# {}\n\n- {}\n- {}\n\n{}", self.title, machine.line(), now_utc(), self.markdown);
        // A row-filtered run can leave a chart with no bars.
        for c in self.charts.iter().filter(|c| !c.bars.is_empty()) {
            let file = format!("{}.png", c.file);
            draw(c, &dir.join(&file)).with_context(|| format!("drawing {file}"))?;
            let _ = write!(md, "\n![{}]({file})\n", c.title);
        }
        std::fs::write(dir.join(format!("{}.md", self.name)), md)?;
        Ok(())
    }
}

/// `bench/results/README.md`: the machine, the sections written and
/// `notes` (markdown paragraphs, each ending in a newline).
pub fn write_index(dir: &Path, machine: &Machine, sections: &[Section], opts: &Opts, notes: &[&str]) -> Result<()> {
    let path = dir.join("README.md");
    // A partial run (`--only`) keeps the other sections' links.
    let mut listed: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("- [") && !sections.iter().any(|s| l.contains(&format!("({}.md)", s.name))))
        .map(str::to_owned)
        .collect();
    for s in sections {
        listed.push(format!("- [{}]({}.md) — {}", s.title, s.name, now_utc()));
    }
    listed.sort();
    let mode = if opts.quick { "`cargo xtask bench --quick` (fewer, shorter rounds)" } else { "`cargo xtask bench`" };
    let text = format!(
        "# Benchmark results\n\nWritten by {mode} on {}.\nThese VMs are noisy and their timings inflated: compare rows and ratios of one run, not runs.\n\n{}\n{}",
        machine.line(),
        listed.join("\n"),
        notes.iter().map(|n| format!("\n{n}")).collect::<String>()
    );
    std::fs::write(path, text)?;
    Ok(())
}

/// The current UTC time, from `date` (no clock crate for one line).
fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+measured %Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The font the charts are drawn with (Debian's fonts-dejavu-core, which
/// `cargo xtask setup` installs).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let Ok(bytes) = std::fs::read(FONT) else { return false };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    anyhow::ensure!(ok, "cannot load {FONT} (cargo xtask setup installs fonts-dejavu-core)");
    Ok(())
}

/// Horizontal bars, labelled, with min–max whiskers.
fn draw(chart: &BarChart, path: &Path) -> Result<()> {
    register_font()?;
    let rows = chart.bars.len().max(1);
    let height = 80 + 34 * rows as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let top = chart.bars.iter().map(|(_, s)| s.max.max(s.median)).fold(0.0_f64, f64::max).max(1e-9) * 1.15;
    // Differences (extra cost over a baseline) can be negative.
    let bottom = chart.bars.iter().map(|(_, s)| s.min.min(s.median)).fold(0.0_f64, f64::min) * 1.15;
    let label_width = chart.bars.iter().map(|(l, _)| l.len()).max().unwrap_or(10).min(48) as u32 * 7 + 10;
    let mut c = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(label_width)
        // Segmented (`0..rows - 1` holds `rows` segments): a label sits at the
        // centre of its bar, not on a boundary.
        .build_cartesian_2d(bottom..top, (0..rows - 1).into_segmented())
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let labels: Vec<String> = chart.bars.iter().map(|(l, _)| l.clone()).collect();
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(rows)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < rows => labels[rows - 1 - i].clone(),
            _ => String::new(),
        })
        .x_desc(chart.unit.as_str())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, (_, s)) in chart.bars.iter().enumerate() {
        let y = rows - 1 - i;
        let color = Palette99::pick(i).mix(0.8);
        c.draw_series(std::iter::once(Rectangle::new([(0.0, SegmentValue::Exact(y)), (s.median, SegmentValue::Exact(y + 1))], color.filled())))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        c.draw_series(std::iter::once(PathElement::new(vec![(s.min, SegmentValue::CenterOf(y)), (s.max, SegmentValue::CenterOf(y))], BLACK.stroke_width(2))))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}
