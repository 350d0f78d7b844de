//! The daemon's side of the Swarm source: the last good view, what it adds
//! to the config, and how the sync is going (for logs, status and metrics).
//!
//! The last good view is saved in the runtime dir, so a restarted daemon
//! (also after `kill -9`) applies the same backends before it has talked to
//! dockerd: a restart never shrinks the backend set.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle};
use tracing::{error, info, warn};

use super::{mapping, source::SwarmUpdate, view::SwarmView};
use crate::source::config::{Config, SwarmAdditions, SwarmConfig};

/// How the sync with the Swarm is going.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmSync {
    /// The last attempt reached the API.
    pub connected: bool,
    /// Unix time (seconds) of the last complete view.
    pub last_sync: Option<f64>,
    /// Complete views received.
    pub syncs: u64,
    /// Failed connections, lists and unusable views.
    pub failures: u64,
    pub last_error: Option<String>,
    /// Nodes and services in the last good view.
    pub nodes: usize,
    pub services: usize,
    /// What the mapping skipped or kept from before, in words.
    pub notes: Vec<String>,
    /// The nodes' addresses the Swarm adds to the cluster allow-list (they
    /// may reach Swarm's ports), as last mapped.
    #[serde(default)]
    pub allowed_nodes: Vec<std::net::IpAddr>,
}

/// The Swarm as the daemon knows it.
pub struct SwarmFollower {
    updates: UnboundedSender<SwarmUpdate>,
    task: Option<(SwarmConfig, JoinHandle<()>)>,
    saved: PathBuf,
    view: Option<SwarmView>,
    additions: SwarmAdditions,
    /// Why each (VIP, backend) of the additions has its weight.
    reasons: std::collections::BTreeMap<(String, std::net::IpAddr), String>,
    sync: SwarmSync,
    /// When the connection was lost (for the log line at its return).
    lost_at: Option<f64>,
}

impl SwarmFollower {
    /// Sends the source's updates to `updates`; the last good view is
    /// read from (and saved to) `runtime_dir`.
    pub fn new(updates: UnboundedSender<SwarmUpdate>, runtime_dir: &Path) -> Self {
        let saved = runtime_dir.join("swarm-view.json");
        let view = fs::read(&saved).ok().and_then(|b| serde_json::from_slice::<SwarmView>(&b).ok());
        if view.is_some() {
            info!(path = %saved.display(), "using the saved Swarm view until dockerd answers");
        }
        Self {
            updates,
            task: None,
            saved,
            view,
            additions: SwarmAdditions::default(),
            reasons: Default::default(),
            sync: SwarmSync::default(),
            lost_at: None,
        }
    }

    /// What the Swarm would add to `cfg` (a config about to be applied);
    /// changes nothing.
    pub fn additions_for(&self, cfg: &Config) -> SwarmAdditions {
        match (cfg.swarm(), &self.view) {
            (Some(sc), Some(view)) => {
                mapping::map(cfg, sc, view, Some(&self.additions), crate::unix_time()).map_or_else(|_| self.additions.clone(), |m| m.additions)
            }
            _ => SwarmAdditions::default(),
        }
    }

    /// Starts, restarts or stops the source for `cfg`'s `[swarm]` (the
    /// config just applied), and maps the view for it. Returns whether a
    /// new source started: until it answers, it is not connected.
    pub fn follow(&mut self, cfg: &Config) -> bool {
        let wanted = cfg.swarm().cloned();
        let mut started = false;
        if self.task.as_ref().map(|(c, _)| c) != wanted.as_ref() {
            if let Some((_, t)) = self.task.take() {
                t.abort();
            }
            if let Some(sc) = wanted {
                let tx = self.updates.clone();
                let task = tokio::spawn(super::source::run(sc.clone(), tx));
                self.task = Some((sc, task));
                // Connected was the old source's word; the new one's
                // first failure is logged (see `Lost`).
                self.sync.connected = false;
                self.lost_at = None;
                started = true;
            } else {
                self.view = None;
                self.sync = SwarmSync::default();
            }
        }
        self.remap(cfg);
        started
    }

    fn remap(&mut self, cfg: &Config) -> bool {
        let (Some(sc), Some(view)) = (cfg.swarm(), &self.view) else {
            let changed = self.additions != SwarmAdditions::default();
            self.additions = SwarmAdditions::default();
            self.reasons.clear();
            self.sync.allowed_nodes.clear();
            return changed;
        };
        match mapping::map(cfg, sc, view, Some(&self.additions), crate::unix_time()) {
            Ok(m) => {
                let notes: Vec<String> = m.notes.into_iter().collect();
                for n in notes.iter().filter(|n| !self.sync.notes.contains(n)) {
                    warn!("swarm: {n}");
                }
                self.sync.notes = notes;
                let changed = m.additions != self.additions;
                tracing::debug!(changed, additions = ?m.additions, "Swarm view mapped");
                self.additions = m.additions;
                self.reasons = m.reasons;
                self.sync.allowed_nodes = self.additions.nodes.iter().copied().collect();
                changed
            }
            Err(e) => {
                self.sync.failures += 1;
                self.sync.last_error = Some(e.clone());
                error!(error = %e, "the Swarm's view is unusable; keeping the last good one");
                false
            }
        }
    }

    /// Takes in one update from the source; returns whether the additions
    /// changed (the config must be re-applied).
    pub fn update(&mut self, update: SwarmUpdate, cfg: &Config) -> bool {
        match update {
            SwarmUpdate::View(mut view) => {
                if let Some(previous) = &self.view {
                    view.carry_unknown_states(previous);
                }
                if !self.sync.connected {
                    match self.lost_at.take() {
                        Some(t) => info!(
                            nodes = view.nodes.len(),
                            services = view.services.len(),
                            disconnected_s = format!("{:.1}", crate::unix_time() - t),
                            failures = self.sync.failures,
                            "in sync with the Swarm again; applying what changed meanwhile"
                        ),
                        None => info!(nodes = view.nodes.len(), services = view.services.len(), "in sync with the Swarm"),
                    }
                }
                self.sync.connected = true;
                if view.nodes.is_empty() {
                    self.sync.failures += 1;
                    self.sync.last_error = Some("the Swarm reported no nodes".into());
                    error!("the Swarm reported no nodes; keeping the last good view");
                    return false;
                }
                // Whatever failed before (connection, an empty view) is over.
                self.sync.last_error = None;
                self.sync.last_sync = Some(crate::unix_time());
                self.sync.syncs += 1;
                self.sync.nodes = view.nodes.len();
                self.sync.services = view.services.len();
                if self.view.as_ref() == Some(&view) {
                    // Draining backends may have served their delay.
                    return self.remap(cfg);
                }
                if let Ok(bytes) = serde_json::to_vec(&view) {
                    let tmp = self.saved.with_extension("json.tmp");
                    if fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &self.saved)).is_err() {
                        warn!(path = %self.saved.display(), "saving the Swarm view failed");
                    }
                }
                self.view = Some(view);
                self.remap(cfg)
            }
            SwarmUpdate::Lost(e) => {
                // Once per loss, not per retry.
                if self.sync.connected || self.lost_at.is_none() {
                    error!(error = %e, "lost the Swarm; serving the last good state and retrying (every 0.5 s to 10 s; logged again when back)");
                    self.lost_at = Some(crate::unix_time());
                }
                self.sync.connected = false;
                self.sync.failures += 1;
                self.sync.last_error = Some(e);
                false
            }
        }
    }

    /// What the Swarm adds to the config now.
    pub fn additions(&self) -> &SwarmAdditions {
        &self.additions
    }

    /// Why the Swarm gives `backend` of `vip` its weight (`None`: not one
    /// of its backends).
    pub fn reason(&self, vip: &str, backend: std::net::IpAddr) -> Option<&str> {
        self.reasons.get(&(vip.to_owned(), backend)).map(String::as_str)
    }

    /// When the first draining backend's `deregistration_delay` is over
    /// (unix time): the agent maps the view again then ([`Self::remap_now`]),
    /// so a drain ends on time, not at the next resync.
    pub fn drain_ends(&self) -> Option<f64> {
        let (sc, _) = self.task.as_ref()?;
        self.additions.leaving.values().copied().reduce(f64::min).map(|since| since + sc.deregistration_delay.as_secs_f64())
    }

    /// Maps the last good view again for `cfg` (a drain's delay is over);
    /// returns whether the additions changed.
    pub fn remap_now(&mut self, cfg: &Config) -> bool {
        self.remap(cfg)
    }

    /// The sync state (`None` without `[swarm]`).
    pub fn sync(&self) -> Option<&SwarmSync> {
        self.task.as_ref().map(|_| &self.sync)
    }
}

impl Drop for SwarmFollower {
    fn drop(&mut self) {
        if let Some((_, t)) = self.task.take() {
            t.abort();
        }
    }
}

