//! CPU time from /proc: the machine's busy time (`/proc/stat`), and the
//! time of every process, so that the share the topology did not spend
//! (another engineer's build, say) can be shown beside each measurement.

use std::collections::{HashMap, HashSet};

/// Microseconds per USER_HZ tick (the unit of /proc/stat and /proc/PID/stat).
fn us_per_tick() -> f64 {
    1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A point in time as /proc sees it.
pub struct Snapshot {
    /// user + nice + system + irq + softirq of all CPUs, in ticks.
    busy: u64,
    /// utime + stime per process (threads included), in ticks.
    tasks: HashMap<u32, u64>,
}

/// What happened between two snapshots.
pub struct Usage {
    /// The whole machine's busy CPU time, µs.
    pub busy_us: f64,
    /// Busy time (user and system) of processes outside the topology, µs:
    /// a noisy window shows. System time too, because a neighbour running
    /// BPF_PROG_TEST_RUN or I/O burns it; the cost is that a softirq tick of
    /// ours that interrupts a foreign task is charged to that task (no
    /// IRQ_TIME_ACCOUNTING here) — rare, because veth delivers in the
    /// sender's context, so our packets' softirqs run on our own tasks.
    pub foreign_us: f64,
}

impl Snapshot {
    /// Reads /proc/stat and every /proc/PID/stat.
    pub fn take() -> Self {
        Self { busy: machine_busy(), tasks: task_times() }
    }

    /// From `self` to `later`; `topology` are the PIDs whose time is ours
    /// (ksoftirqd is always counted as ours: it runs the packets' softirqs).
    pub fn until(&self, later: &Snapshot, topology: &HashSet<u32>) -> Usage {
        let ours = |pid: &u32| topology.contains(pid) || is_ksoftirqd(*pid);
        // A process that started inside the window counts in full.
        let foreign: u64 = later
            .tasks
            .iter()
            .filter(|(pid, _)| !ours(pid))
            .map(|(pid, t)| t.saturating_sub(self.tasks.get(pid).copied().unwrap_or(0)))
            .sum();
        let tick = us_per_tick();
        Usage { busy_us: later.busy.saturating_sub(self.busy) as f64 * tick, foreign_us: foreign as f64 * tick }
    }
}

impl Snapshot {
    /// CPU time of `pids` from `self` to `later`, µs.
    pub fn tasks_us(&self, later: &Snapshot, pids: &[u32]) -> f64 {
        let delta = |pid: &u32| later.tasks.get(pid).copied().unwrap_or(0).saturating_sub(self.tasks.get(pid).copied().unwrap_or(0));
        pids.iter().map(delta).sum::<u64>() as f64 * us_per_tick()
    }
}

/// Busy ticks from the `cpu` line: user nice system idle iowait irq softirq …
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    [0, 1, 2, 5, 6].iter().filter_map(|i| f.get(*i)).sum()
}

/// utime + stime of every process now running.
fn task_times() -> HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return HashMap::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, task_time(pid)?)))
        .collect()
}

/// utime + stime of one process, ticks.
fn task_time(pid: u32) -> Option<u64> {
    parse_task_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from the text of /proc/PID/stat.
fn parse_task_time(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: fields count
    // from the last ')'. utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn is_ksoftirqd(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_times_count_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis of its own.
        let stat = "4242 (we (ird) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123 0 0";
        assert_eq!(parse_task_time(stat), Some(10));
        assert_eq!(parse_task_time("garbage"), None);
        assert_eq!(parse_task_time("1 (x)"), None);
    }
}
