//! A paced client: new connections to one address at a fixed rate (not
//! as fast as possible, as the e2e section's load does), each closed in
//! the order asked for, counting what succeeded, failed or needed a SYN
//! retransmission.
//!
//! Threads are spawned from inside the client namespace (`Netns::run`): a
//! new thread inherits its creator's network namespace.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use harness::Netns;

use crate::e2e::load::{connect_from, exchange};

/// Connections in flight at most. A refused SYN holds its thread for the
/// 1 s retransmission (or the 2 s connect timeout), so the pool is sized
/// for a few hundred stalls a second before pacing itself lags.
pub const THREADS: usize = 128;

/// A connect that took this long had its SYN sent again (Linux's first
/// retransmission is at 1 s): the first SYN was dropped somewhere.
const RETRANSMITTED: Duration = Duration::from_millis(900);

/// Who closes the connection first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// A keep-alive request, then the client closes (nginx follows): the
    /// backend ends in LAST_ACK, the client holds TIME_WAIT, and swarmlb
    /// frees the SNAT port at the client's last ACK.
    ClientFirst,
    /// `Connection: close`: nginx closes after its answer and holds
    /// TIME_WAIT, so the SNAT port waits `tcp_time_wait_timeout_s`.
    BackendFirst,
}

/// What one paced step did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Connections started inside the window.
    pub started: u64,
    /// Of those, completed (request answered, closed).
    pub done: u64,
    /// Of those, failed (connect or exchange error, 2 s timeouts).
    pub failed: u64,
    /// Completed, but the connect took a SYN retransmission.
    pub retried: u64,
    /// The step's length.
    pub window: Duration,
}

impl Tally {
    /// Completed connections per second of the window.
    pub fn achieved(&self) -> f64 {
        self.done as f64 / self.window.as_secs_f64()
    }
}

/// Starts connection `k` at `k / rate` seconds into `window` from `src`
/// to `dst` in `ns`, on [`THREADS`] threads. A connection whose turn comes
/// after the window (the client could not keep up) is not started, so a
/// machine at its limit shows as an achieved rate below the offered one.
pub fn paced(ns: &Netns, src: Ipv4Addr, dst: SocketAddrV4, close: Close, rate: f64, window: Duration) -> Tally {
    let next = AtomicUsize::new(0);
    let (started, done, failed, retried) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    let end = start + window;
    ns.run(|| {
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let at = start + Duration::from_secs_f64(k as f64 / rate);
                    let now = Instant::now();
                    if at >= end || now >= end {
                        break;
                    }
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    started.fetch_add(1, Ordering::Relaxed);
                    match one(src, dst, close) {
                        Ok(connect) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            if connect >= RETRANSMITTED {
                                retried.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        })
    });
    Tally { started: started.into_inner(), done: done.into_inner(), failed: failed.into_inner(), retried: retried.into_inner(), window }
}

/// One connection closed the way `close` says; returns how long the
/// connect took.
fn one(src: Ipv4Addr, dst: SocketAddrV4, close: Close) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = connect_from(src, dst)?;
    let connect = t.elapsed();
    match close {
        Close::ClientFirst => {
            exchange(&mut s)?;
        }
        Close::BackendFirst => {
            s.write_all(b"GET / HTTP/1.1\r\nHost: a.com\r\nUser-Agent: swarmlb-bench\r\nConnection: close\r\n\r\n")?;
            // nginx answers and closes: read to its FIN, so the client's
            // close comes after the backend's.
            let mut answer = Vec::with_capacity(512);
            s.read_to_end(&mut answer)?;
            if !answer.starts_with(b"HTTP/1.1 200") {
                return Err(io::Error::other("no 200 answer"));
            }
        }
    }
    Ok(connect)
}
