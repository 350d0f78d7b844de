//! The backend churn: a seeded, reproducible sequence of changes to the
//! VIPs' backend lists (add, remove, drain, undrain, reweight), each
//! applied by rewriting the config and sending SIGHUP, and the timeline of
//! when each took effect.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::{
    config::{worker_vips, EdgeConfig},
    daemon::RunningDaemon,
    edge_lab::*,
};

/// Backends that take new connections are never fewer than this, so
/// every change leaves somewhere for them to go.
const MIN_SERVING: usize = 2;

/// One change to the backend set (workers are 1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The initial set.
    Start,
    /// A worker outside the set joins with weight 1.
    Add(usize),
    /// A backend leaves the set.
    Remove(usize),
    /// Weight 0: no new flows, established ones stay.
    Drain(usize),
    /// A drained backend gets weight 1 again.
    Undrain(usize),
    /// A serving backend's weight changes.
    Reweight(usize, u32),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Start => write!(f, "start"),
            Action::Add(w) => write!(f, "add w{w}"),
            Action::Remove(w) => write!(f, "remove w{w}"),
            Action::Drain(w) => write!(f, "drain w{w}"),
            Action::Undrain(w) => write!(f, "undrain w{w}"),
            Action::Reweight(w, n) => write!(f, "reweight w{w} to {n}"),
        }
    }
}

/// The backend set: worker → weight (0 = drained).
pub type Members = BTreeMap<usize, u32>;

/// A change as it happened: sent (config written, SIGHUP) and confirmed
/// (the status shows the new lists, so the kernel's maps have them). In
/// between the kernel has either set.
#[derive(Clone, Debug)]
pub struct Event {
    /// What changed.
    pub action: Action,
    /// When the SIGHUP went.
    pub sent: Instant,
    /// When the status first showed the new set.
    pub confirmed: Instant,
    /// The set from then on.
    pub members: Members,
}

impl Event {
    /// Workers that take new connections (in the set, weight > 0).
    pub fn serving(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().filter(|(_, w)| **w > 0).map(|(i, _)| *i)
    }
}

/// Picks the changes: the same seed, pool and start give the same sequence.
pub struct Churn {
    rng: StdRng,
    pool: usize,
    members: Members,
}

impl Churn {
    /// Workers `1..=pool`, the first `initial` of them in the set (weight 1).
    pub fn new(seed: u64, pool: usize, initial: usize) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), pool, members: (1..=initial).map(|i| (i, 1)).collect() }
    }

    /// The current set.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Chooses the next change among those allowed (kinds first, then the
    /// worker, both uniformly) and applies it to the set.
    pub fn next_change(&mut self) -> Action {
        let serving: Vec<usize> = self.members.iter().filter(|(_, w)| **w > 0).map(|(i, _)| *i).collect();
        let drained: Vec<usize> = self.members.iter().filter(|(_, w)| **w == 0).map(|(i, _)| *i).collect();
        let outside: Vec<usize> = (1..=self.pool).filter(|i| !self.members.contains_key(i)).collect();
        // A drained backend may always go; a serving one only if enough stay.
        let removable: Vec<usize> =
            if serving.len() > MIN_SERVING { self.members.keys().copied().collect() } else { drained.clone() };
        let mut kinds: Vec<u8> = Vec::new();
        if !outside.is_empty() {
            kinds.push(0);
        }
        if !removable.is_empty() {
            kinds.push(1);
        }
        if serving.len() > MIN_SERVING {
            kinds.push(2);
        }
        if !drained.is_empty() {
            kinds.push(3);
        }
        kinds.push(4);
        let pick = |rng: &mut StdRng, v: &[usize]| *v.choose(rng).expect("a candidate");
        let action = match *kinds.choose(&mut self.rng).unwrap() {
            0 => Action::Add(pick(&mut self.rng, &outside)),
            1 => Action::Remove(pick(&mut self.rng, &removable)),
            2 => Action::Drain(pick(&mut self.rng, &serving)),
            3 => Action::Undrain(pick(&mut self.rng, &drained)),
            _ => {
                let w = pick(&mut self.rng, &serving);
                let now = self.members[&w];
                let weights: Vec<u32> = (1..=3).filter(|n| *n != now).collect();
                Action::Reweight(w, *weights.choose(&mut self.rng).unwrap())
            }
        };
        match action {
            Action::Add(w) | Action::Undrain(w) => {
                self.members.insert(w, 1);
            }
            Action::Remove(w) => {
                self.members.remove(&w);
            }
            Action::Drain(w) => {
                self.members.insert(w, 0);
            }
            Action::Reweight(w, n) => {
                self.members.insert(w, n);
            }
            Action::Start => unreachable!(),
        }
        action
    }
}

/// The config: an IPv4 and an IPv6 VIP in nat mode, tcp/80 and tcp/443,
/// both with `members`.
pub fn config(members: &Members) -> String {
    let members: Vec<(usize, Option<u32>)> = members.iter().map(|(&i, &w)| (i, Some(w))).collect();
    EdgeConfig::balancer().vips(worker_vips("web", &["tcp/80", "tcp/443"], &members).map(|v| v.mode("nat"))).to_toml()
}

/// Whether both VIPs in `status` list exactly `members`.
fn shows(status: &serde_json::Value, members: &Members) -> bool {
    let want = |v6: bool| -> Vec<(String, u64)> {
        members
            .iter()
            .map(|(i, w)| {
                let (a4, a6) = worker_addrs(*i);
                (if v6 { a6.to_string() } else { a4.to_string() }, u64::from(*w))
            })
            .collect()
    };
    let Some(vips) = status["vips"].as_array() else { return false };
    vips.len() == 2
        && vips.iter().zip([false, true]).all(|(v, v6)| {
            let Some(list) = v["backends"].as_array() else { return false };
            let mut got: Vec<(String, u64)> = list
                .iter()
                .filter_map(|b| Some((b["address"].as_str()?.to_owned(), b["weight"].as_u64()?)))
                .collect();
            got.sort();
            let mut want = want(v6);
            want.sort();
            got == want
        })
}

/// Writes the config for `members`, sends SIGHUP and waits (up to 10 s)
/// until the status shows it.
pub fn apply(daemon: &mut RunningDaemon, action: Action, members: &Members) -> Result<Event> {
    daemon.inst.write_config(&config(members));
    let sent = Instant::now();
    daemon.child.signal(libc::SIGHUP);
    loop {
        if shows(&daemon.inst.status(), members) {
            return Ok(Event { action, sent, confirmed: Instant::now(), members: members.clone() });
        }
        if sent.elapsed() > Duration::from_secs(10) {
            bail!("{action}: the status does not show {members:?} after 10 s:\n{}", daemon.child.output_so_far());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_is_reproducible_and_keeps_enough_serving() {
        let run = |seed| {
            let mut c = Churn::new(seed, 6, 4);
            (0..500)
                .map(|_| {
                    let a = c.next_change();
                    assert!(c.members().values().filter(|w| **w > 0).count() >= MIN_SERVING, "{a}: {:?}", c.members());
                    a
                })
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        for kind in ["add", "remove", "drain", "undrain", "reweight"] {
            assert!(a.iter().any(|x| x.to_string().starts_with(kind)), "{kind} happens");
        }
    }
}
