//! Typed handles on the isolator's pinned maps. The daemon and `swarmlb
//! status` both open the maps from their pins, so there is one way in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf,
};
use lb_common::isolator::*;

/// Every map of the isolator except the ring buffer (see [`open_drop_events`]).
pub struct IsolatorMaps {
    pub bindings: HashMap<MapData, u32, ZoneBinding>,
    pub ports: HashMap<MapData, PortKey, u32>,
    pub sources_v4: LpmTrie<MapData, SourceV4, u32>,
    pub sources_v6: LpmTrie<MapData, SourceV6, u32>,
    pub fragments: HashMap<MapData, FragKey, u32>,
    pub counters: PerCpuArray<MapData, u64>,
    pub port_stats: PerCpuHashMap<MapData, PortStatsKey, PortStats>,
    pub settings: Array<MapData, u64>,
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path: PathBuf = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open_map($dir, $name)?
            .try_into()
            .with_context(|| format!("map {} has an unexpected type or layout", $name))?
    };
}

impl IsolatorMaps {
    /// Opens the maps pinned in `dir` by a loaded isolator.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            bindings: typed!(dir, MAP_ZONE_BINDINGS),
            ports: typed!(dir, MAP_PROTECTED_PORTS),
            sources_v4: typed!(dir, MAP_SOURCES_V4),
            sources_v6: typed!(dir, MAP_SOURCES_V6),
            fragments: typed!(dir, MAP_FRAGMENTS),
            counters: typed!(dir, MAP_COUNTERS),
            port_stats: typed!(dir, MAP_PORT_STATS),
            settings: typed!(dir, MAP_SETTINGS),
        })
    }

    /// Verdict counters summed over CPUs, indexed like [`MAP_COUNTERS`].
    pub fn counters(&self) -> Result<Vec<u64>> {
        (0..COUNTERS_LEN)
            .map(|i| Ok(self.counters.get(&i, 0)?.iter().sum()))
            .collect()
    }

    /// Per protected port traffic summed over CPUs, sorted by (proto, port).
    pub fn port_stats(&self) -> Result<Vec<(PortStatsKey, PortStats)>> {
        let mut out = Vec::new();
        for item in self.port_stats.iter() {
            let (key, per_cpu) = item?;
            let mut total = PortStats::default();
            for s in per_cpu.iter() {
                total.passed += s.passed;
                total.dropped += s.dropped;
            }
            out.push((key, total));
        }
        out.sort_by_key(|(k, _)| (k.proto, k.port));
        Ok(out)
    }
}

/// Opens the pinned ring buffer of sampled drops.
pub fn open_drop_events(dir: &Path) -> Result<RingBuf<MapData>> {
    Ok(typed!(dir, MAP_DROP_EVENTS))
}
