//! The design's rules (docs/balancer.md), held against what the soak
//! recorded:
//!
//! - A flow keeps its backend while the backend stays in the set and up,
//!   whatever else changes: adding or removing *other* backends, weights,
//!   draining (weight 0 takes no new flows; established ones stay). So a
//!   stream whose backend was never removed during its life never breaks
//!   and never moves.
//! - A removed backend's flows are placed again: a stream on it breaks at
//!   its next request (another backend has no such connection and resets
//!   it). So a stream breaks only if its backend was removed while it
//!   lived, and no request sent after a removal took effect is answered
//!   before the backend is back.
//! - A new connection is answered by a backend that takes new flows (in
//!   the set, weight > 0) at some moment of its life (a change takes
//!   effect between its SIGHUP and the status showing it, so either set
//!   may answer then). It fails only by being in flight while a removal
//!   was applied (it may have been placed on the removed backend).
//!
//! Removals and re-adds follow each other at least one churn interval
//! apart, far longer than a stream's request interval, so every stream on
//! a removed backend sends a request while it is out.

use std::{collections::BTreeSet, time::Instant};

use super::{
    churn::{Action, Event},
    load::{Conn, Kind, Life},
};

/// The workers that may answer a connection alive from `start` to `end`:
/// an event's set is in force from its SIGHUP until the next event is
/// confirmed.
pub fn serving_during(events: &[Event], start: Instant, end: Instant) -> BTreeSet<usize> {
    let mut set = BTreeSet::new();
    for (i, e) in events.iter().enumerate() {
        let until = events.get(i + 1).map(|n| n.confirmed);
        if e.sent <= end && until.is_none_or(|u| u >= start) {
            set.extend(e.serving());
        }
    }
    set
}

/// A removal of a worker: applied between `sent` and `confirmed`; back
/// (SIGHUP of its re-add) at `back`.
#[derive(Clone, Copy, Debug)]
pub struct Removal {
    /// The worker (1-based).
    pub worker: usize,
    /// SIGHUP.
    pub sent: Instant,
    /// The status showed it gone.
    pub confirmed: Instant,
    /// The re-add's SIGHUP, if there was one.
    pub back: Option<Instant>,
}

/// Every removal in the timeline.
pub fn removals(events: &[Event]) -> Vec<Removal> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.action {
            Action::Remove(w) => Some(Removal {
                worker: w,
                sent: e.sent,
                confirmed: e.confirmed,
                back: events[i + 1..].iter().find(|n| n.action == Action::Add(w)).map(|n| n.sent),
            }),
            _ => None,
        })
        .collect()
}

/// Whether the life `[start, end]` overlaps the time `r` was being applied.
fn across(r: &Removal, start: Instant, end: Instant) -> bool {
    r.sent <= end && r.confirmed >= start
}

/// The judgement of the new connections.
#[derive(Debug, Default)]
pub struct Connections {
    /// Answered, by kind: HTTP, TLS, stream opens.
    pub answered: [u64; 3],
    /// Failed while a removal was applied: allowed.
    pub failed_by_design: u64,
    /// Failed otherwise (violations, described).
    pub failed: Vec<String>,
    /// Answered by a worker that took no new flows then (violations).
    pub wrong: Vec<String>,
}

/// Judges every new connection (see the module docs); `t0` for the times.
pub fn connections(conns: &[Conn], events: &[Event], t0: Instant) -> Connections {
    let removals = removals(events);
    let mut v = Connections::default();
    for c in conns {
        let at = |t: Instant| t.duration_since(t0).as_secs_f64();
        let what = format!("{:?} {} at {:.2}–{:.2} s", c.kind, if c.v6 { "IPv6" } else { "IPv4" }, at(c.start), at(c.end));
        match &c.answer {
            Ok(w) => {
                let serving = serving_during(events, c.start, c.end);
                if w.strip_prefix('w').and_then(|n| n.parse().ok()).is_some_and(|n: usize| serving.contains(&n)) {
                    v.answered[match c.kind {
                        Kind::Http => 0,
                        Kind::Tls => 1,
                        Kind::StreamOpen => 2,
                    }] += 1;
                } else {
                    v.wrong.push(format!("{what}: answered by {w}, not one of {serving:?}{}", earlier_use(conns, c, t0)));
                }
            }
            Err(_) if removals.iter().any(|r| across(r, c.start, c.end)) => v.failed_by_design += 1,
            Err(e) => v.failed.push(format!("{what}: {e}")),
        }
    }
    v
}

/// Where the connection's 5-tuple was used last before it, if it was:
/// the client may pick a port again at once when its connection ended
/// without TIME_WAIT on its side, while the edge still remembers the flow.
fn earlier_use(conns: &[Conn], c: &Conn, t0: Instant) -> String {
    let Some(port) = c.port else { return String::new() };
    conns
        .iter()
        .filter(|o| o.port == Some(port) && o.v6 == c.v6 && o.vip_port() == c.vip_port() && o.start < c.start)
        .max_by_key(|o| o.start)
        .map_or_else(String::new, |o| {
            format!(
                " (from port {port}, which a connection that started at {:.2} s and was answered by {:?} used before)",
                o.start.duration_since(t0).as_secs_f64(),
                o.answer
            )
        })
}

/// The judgement of the streams.
#[derive(Debug, Default)]
pub struct Streams {
    /// Streams in all.
    pub lives: usize,
    /// Requests answered on them.
    pub requests: u64,
    /// Streams whose backend was removed while they lived.
    pub on_removed: usize,
    /// Of those, broken (as the design says).
    pub broken_by_removal: usize,
    /// Streams the design keeps (backend never removed while they lived).
    pub kept: usize,
    /// Of those, still answering at the end.
    pub alive_at_end: usize,
    /// Streams the design keeps that broke or moved (violations).
    pub broken_kept: Vec<String>,
    /// Requests a removed backend answered (violations).
    pub answered_while_removed: Vec<String>,
    /// Streams on a removed backend answered by another (violations: a
    /// connection cannot move).
    pub moved: Vec<String>,
}

/// Judges every stream (see the module docs); `t0` for the times.
pub fn streams(lives: &[Life], events: &[Event], t0: Instant) -> Streams {
    let removals = removals(events);
    let mut v = Streams { lives: lives.len(), ..Default::default() };
    let at = |t: Instant| t.duration_since(t0).as_secs_f64();
    for l in lives {
        v.requests += l.answered.len() as u64;
        let name = format!("stream {} on {} opened at {:.2} s", if l.v6 { "IPv6" } else { "IPv4" }, l.worker, at(l.opened));
        let mine: Vec<&Removal> = removals
            .iter()
            .filter(|r| format!("w{}", r.worker) == l.worker && across(r, l.opened, l.end()))
            .collect();
        for r in &mine {
            // The first request sent after the removal took effect.
            let i = l.answered.partition_point(|(sent, _)| *sent < r.confirmed);
            if let Some((sent, answered)) = l.answered.get(i) {
                if r.back.is_none_or(|b| *answered < b) {
                    v.answered_while_removed.push(format!(
                        "{name}: a request sent at {:.2} s answered at {:.2} s, while w{} was out (removed {:.2}–{:.2} s)",
                        at(*sent),
                        at(*answered),
                        r.worker,
                        at(r.sent),
                        at(r.confirmed)
                    ));
                }
            }
        }
        let broken = l.failure.is_some() || l.moved.is_some();
        if mine.is_empty() {
            v.kept += 1;
            if let Some(w) = &l.moved {
                v.broken_kept.push(format!("{name}: answered by {w}"));
            } else if let Some((sent, failed, e)) = &l.failure {
                v.broken_kept.push(format!("{name}: a request sent at {:.2} s failed at {:.2} s: {e}", at(*sent), at(*failed)));
            } else {
                v.alive_at_end += 1;
            }
        } else {
            v.on_removed += 1;
            if let Some(w) = &l.moved {
                v.moved.push(format!("{name}: answered by {w}"));
            } else if broken {
                v.broken_by_removal += 1;
            }
        }
    }
    v
}
