//! Floods as an attacker sends them, and the legitimate clients who must
//! still get through: the flood test (`tests/tests/flood.rs`) and the
//! benchmark's flood section share them.
//!
//! - [`Flood`]: TCP SYNs or UDP datagrams from random forged sources and
//!   ports, IPv4 and IPv6, at the highest rate one thread can send
//!   ([`Rate::Max`]) or a paced one, from a background thread. Frames are
//!   written in batches into one buffer ([`frames`]) and sent with one
//!   `sendmmsg` per batch on an AF_PACKET socket that bypasses the qdisc
//!   ([`tx`]).
//! - [`legit::Clients`]: new connections (TLS, HTTP) or UDP request/answer
//!   exchanges at a steady rate, each attempt timed and judged, by phase.
//! - [`UdpService`]: a UDP server that answers requests and ignores
//!   garbage, as DNS servers do: a flood of garbage gets no answer, which
//!   is what lets a balancer tell a real UDP peer from a forged one.
//! - [`costs`]: the balancer's counters by name, before and after.
//!
//! Forged sources are plausible internet hosts ([`frames::forged_v4`]):
//! never the test's own ranges, so the replies to them cannot reach a
//! real address of the test; where they go is the topology's business
//! (the flood lab routes them back to the attacker's namespace, which
//! drops them).

pub mod costs;
pub mod frames;
pub mod legit;
mod tx;
mod udp_service;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub use frames::Kind;
pub use udp_service::{UdpService, MAGIC as UDP_MAGIC};

use crate::{netns::link_stats, Netns};
use frames::{Template, SLOT};
use tx::Tx;

/// How fast a [`Flood`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// As fast as the sending thread and the kernel allow.
    Max,
    /// About this many frames per second.
    PerSecond(u64),
}

impl Rate {
    fn encode(self) -> u64 {
        match self {
            Rate::Max => 0,
            Rate::PerSecond(n) => n.max(1),
        }
    }
}

/// What to flood and from where.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The attacker's namespace (on the outside segment).
    pub ns: Netns,
    /// The attacker's interface there.
    pub ifname: String,
    /// Source and destination MACs of the frames (the attacker's, the
    /// next hop's).
    pub macs: ([u8; 6], [u8; 6]),
    /// Destination addresses (one per family is usual); frames alternate.
    pub dsts: Vec<IpAddr>,
    /// Destination ports; frames rotate over them.
    pub ports: Vec<u16>,
    /// SYNs or UDP datagrams.
    pub kind: Kind,
    /// Seeds the forged sources (a run can be repeated).
    pub seed: u64,
}

/// A flood running on a thread of its own until [`Flood::stop`] (or drop).
pub struct Flood {
    rate: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// Frames per `sendmmsg` at full rate.
const BATCH: usize = 256;

impl Flood {
    /// Starts flooding at `rate`.
    pub fn start(spec: Spec, rate: Rate) -> Result<Self> {
        anyhow::ensure!(!spec.dsts.is_empty() && !spec.ports.is_empty(), "a flood needs destinations and ports");
        let tx = Tx::open(&spec.ns, &spec.ifname)?;
        let templates: Vec<Template> = spec.dsts.iter().map(|d| Template::new(spec.macs, *d, spec.kind)).collect();
        let rate_cell = Arc::new(AtomicU64::new(rate.encode()));
        let (sent, refused, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (r, s, f, st) = (rate_cell.clone(), sent.clone(), refused.clone(), stop.clone());
        let ports = spec.ports.clone();
        let mut rng = frames::rng(spec.seed);
        let thread = std::thread::Builder::new()
            .name("flood".into())
            .spawn(move || -> Result<()> {
                let mut buf = vec![0u8; BATCH * SLOT];
                let mut lens = vec![0usize; BATCH];
                let mut n: usize = 0;
                // Pacing: frames sent since `epoch`, which restarts when the rate changes.
                let (mut epoch, mut epoch_sent, mut epoch_rate) = (Instant::now(), 0u64, u64::MAX);
                while !st.load(Ordering::Relaxed) {
                    let rate = r.load(Ordering::Relaxed);
                    if rate != epoch_rate {
                        (epoch, epoch_sent, epoch_rate) = (Instant::now(), 0, rate);
                    }
                    // Paced: batches of about a millisecond's frames.
                    let batch = if rate == 0 { BATCH } else { ((rate / 1000) as usize).clamp(1, BATCH) };
                    if rate != 0 {
                        let due = epoch + Duration::from_secs_f64(epoch_sent as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    for i in 0..batch {
                        let t = &templates[n % templates.len()];
                        let port = ports[(n / templates.len()) % ports.len()];
                        t.write(&mut buf[i * SLOT..(i + 1) * SLOT], &mut rng, port);
                        lens[i] = t.len();
                        n = n.wrapping_add(1);
                    }
                    let out = tx.send_batch(&mut buf, SLOT, &lens[..batch]).context("sendmmsg")?;
                    s.fetch_add(out as u64, Ordering::Relaxed);
                    f.fetch_add((batch - out) as u64, Ordering::Relaxed);
                    epoch_sent += batch as u64;
                }
                Ok(())
            })
            .context("spawn the flood thread")?;
        Ok(Self { rate: rate_cell, sent, refused, stop, thread: Some(thread) })
    }

    /// Changes the rate from now on.
    pub fn set_rate(&self, rate: Rate) {
        self.rate.store(rate.encode(), Ordering::Relaxed);
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Frames the device refused so far (its queue was full).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Stops the thread; returns the frames sent in all.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        }
        Ok(self.sent())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Frames sent in a stretch of a flood, and the rate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stretch {
    /// Frames sent.
    pub frames: u64,
    /// How long the stretch took.
    pub seconds: f64,
    /// Frames the receiving interface counted in the same time (its
    /// `rx_packets`), when read.
    pub received: Option<u64>,
}

impl Stretch {
    /// Frames per second sent.
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.seconds.max(1e-9)
    }

    /// Frames per second received, if counted.
    pub fn received_rate(&self) -> Option<f64> {
        self.received.map(|r| r as f64 / self.seconds.max(1e-9))
    }
}

/// Runs `flood` at `rate` for `how_long`, counting the frames sent and
/// those `rx` (the receiving interface, `(namespace, name)`) took.
pub fn stretch(flood: &Flood, rate: Rate, how_long: Duration, rx: Option<(&Netns, &str)>) -> Stretch {
    flood.set_rate(rate);
    let rx_before = rx.and_then(|(ns, i)| link_stats(ns, i).ok());
    let (t0, s0) = (Instant::now(), flood.sent());
    std::thread::sleep(how_long);
    let (frames, seconds) = (flood.sent() - s0, t0.elapsed().as_secs_f64());
    let received = match (rx, rx_before) {
        (Some((ns, i)), Some(b)) => link_stats(ns, i).ok().map(|a| a.rx_packets.saturating_sub(b.rx_packets)),
        _ => None,
    };
    Stretch { frames, seconds, received }
}


