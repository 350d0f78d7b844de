//! CPU time from /proc: the machine's busy time (`/proc/stat`), and the
//! time of every process, so that the share the topology did not spend
//! (another engineer's build, say) can be shown beside each measurement.
//!
//! The topology is this process and everything it started (nginx, iperf3,
//! swarmlb, HAProxy, the tools), found through the parent PIDs, plus
//! ksoftirqd, which runs the packets' softirqs when they pile up.

use std::collections::HashMap;

/// Microseconds per USER_HZ tick (the unit of /proc/stat and /proc/PID/stat).
fn us_per_tick() -> f64 {
    1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One process as /proc/PID/stat shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Task {
    ppid: u32,
    /// utime + stime (threads included), ticks.
    ticks: u64,
}

/// A point in time as /proc sees it.
pub struct Snapshot {
    /// user + nice + system + irq + softirq of all CPUs, in ticks.
    busy: u64,
    tasks: HashMap<u32, Task>,
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

impl Usage {
    /// The foreign share of all cores over `elapsed`, in %.
    pub fn foreign_pct(&self, elapsed: std::time::Duration) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        100.0 * self.foreign_us / (elapsed.as_secs_f64() * 1e6 * cores)
    }
}

impl Snapshot {
    /// Reads /proc/stat and every /proc/PID/stat.
    pub fn take() -> Self {
        Self { busy: machine_busy(), tasks: tasks() }
    }

    /// From `self` to `later`. A process that started inside the window
    /// counts in full; one that ended inside it is not seen.
    pub fn until(&self, later: &Snapshot) -> Usage {
        let me = std::process::id();
        let foreign: u64 = later
            .tasks
            .iter()
            .filter(|(pid, _)| !later.descends_from(**pid, me) && !is_ksoftirqd(**pid))
            .map(|(pid, t)| t.ticks.saturating_sub(self.tasks.get(pid).map_or(0, |b| b.ticks)))
            .sum();
        let tick = us_per_tick();
        Usage { busy_us: later.busy.saturating_sub(self.busy) as f64 * tick, foreign_us: foreign as f64 * tick }
    }

    /// CPU time of `pids` from `self` to `later`, µs.
    pub fn tasks_us(&self, later: &Snapshot, pids: &[u32]) -> f64 {
        let ticks = |snap: &Snapshot, pid: &u32| snap.tasks.get(pid).map_or(0, |t| t.ticks);
        pids.iter().map(|pid| ticks(later, pid).saturating_sub(ticks(self, pid))).sum::<u64>() as f64 * us_per_tick()
    }

    /// Whether `pid` is `root` or one of its descendants.
    fn descends_from(&self, mut pid: u32, root: u32) -> bool {
        // Bounded: a PID reused while walking could make a cycle.
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match self.tasks.get(&pid) {
                Some(t) if t.ppid != 0 => pid = t.ppid,
                _ => return false,
            }
        }
        false
    }
}

/// Busy ticks from the `cpu` line: user nice system idle iowait irq softirq …
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    [0, 1, 2, 5, 6].iter().filter_map(|i| f.get(*i)).sum()
}

/// Every process now running.
fn tasks() -> HashMap<u32, Task> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return HashMap::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parse_task(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?)))
        .collect()
}

/// Parent and utime + stime from the text of /proc/PID/stat.
fn parse_task(stat: &str) -> Option<Task> {
    // The command name is in parentheses and may hold spaces: fields count
    // from the last ')'. ppid is field 4, utime and stime fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Task { ppid: u32::try_from(num(1)?).ok()?, ticks: num(11)? + num(12)? })
}

fn is_ksoftirqd(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_fields_count_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis of its own.
        let stat = "4242 (we (ird) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123 0 0";
        assert_eq!(parse_task(stat), Some(Task { ppid: 1, ticks: 10 }));
        assert_eq!(parse_task("garbage"), None);
        assert_eq!(parse_task("1 (x)"), None);
    }

    #[test]
    fn descendants_are_found_through_parents() {
        let task = |ppid| Task { ppid, ticks: 0 };
        let snap = Snapshot { busy: 0, tasks: HashMap::from([(10, task(1)), (20, task(10)), (30, task(20)), (40, task(1))]) };
        assert!(snap.descends_from(30, 10));
        assert!(snap.descends_from(10, 10));
        assert!(!snap.descends_from(40, 10));
        assert!(!snap.descends_from(99, 10));
    }
}
