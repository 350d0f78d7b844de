//! HTTP clients of the end-to-end tests: who answered, keep-alive streams,
//! the metrics endpoint.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

pub use harness::stream::Stream;
use harness::{
    tls::{connect, http_get},
    Netns,
};

/// `GET /` on port 80 through the VIP: the worker's name.
pub fn who(ns: &Netns, vip: IpAddr) -> String {
    let (status, body) = http_get(connect(ns, SocketAddr::new(vip, 80)).unwrap(), "a.com", "/").unwrap();
    assert_eq!(status, 200);
    body.trim().strip_prefix("worker=").expect("worker=NAME").to_string()
}

/// Streams that keep asking, each on a thread of its own, until stopped:
/// traffic flowing while a test does something to the balancer.
pub struct Streaming {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<(String, JoinHandle<Option<String>>)>,
}

impl Streaming {
    /// Every stream asks every 20 ms until its first failure (an error, or
    /// an answer from another worker) or [`Streaming::stop`].
    pub fn start(streams: Vec<Stream>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let threads = streams
            .into_iter()
            .map(|mut s| {
                let (stop, answered) = (stop.clone(), answered.clone());
                let worker = s.worker.clone();
                let t = std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match s.ask() {
                            Ok(w) if w == s.worker => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(w) => return Some(format!("moved from {} to {w}", s.worker)),
                            Err(e) => return Some(format!("on {}: {e}", s.worker)),
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    None
                });
                (worker, t)
            })
            .collect();
        Self { stop, answered, threads }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Requests answered within the next `window`.
    pub fn progress(&self, window: Duration) -> u64 {
        let before = self.answered();
        std::thread::sleep(window);
        self.answered() - before
    }

    /// The streams' workers, in start order.
    pub fn workers(&self) -> Vec<String> {
        self.threads.iter().map(|(w, _)| w.clone()).collect()
    }

    /// Stops every stream; per stream its worker and how it failed
    /// (`None`: every answer came from its own worker).
    pub fn stop(self) -> Vec<(String, Option<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|(w, t)| (w, t.join().unwrap())).collect()
    }
}

/// Asks every stream once; returns the indices that failed or moved.
pub fn check(streams: &mut [Stream]) -> Vec<usize> {
    let mut bad = Vec::new();
    for (i, s) in streams.iter_mut().enumerate() {
        match s.ask() {
            Ok(w) if w == s.worker => {}
            _ => bad.push(i),
        }
    }
    bad
}

/// `GET /metrics` from the daemon's default endpoint in `ns`.
pub fn metrics(ns: &Netns) -> String {
    harness::daemon::scrape_metrics(ns).expect("the metrics endpoint answers")
}


/// Keep-alive streams through a VIP, each asked again and again on its own
/// thread (one request every `pause`) until [`StreamLoad::finish`]: a
/// stream that errs or is answered by another worker is broken and stops.
pub struct StreamLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The longest time any stream waited for an answer, in µs.
    longest: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Option<String>>>,
}

impl StreamLoad {
    /// Opens `n` streams from `ns` to `vip`.
    pub fn start(ns: &Netns, vip: IpAddr, n: usize, pause: std::time::Duration) -> Self {
        use std::sync::{atomic::Ordering, Arc};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let longest = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = (0..n)
            .map(|_| {
                let mut s = Stream::open(ns, vip);
                let (stop, answered, longest) = (stop.clone(), answered.clone(), longest.clone());
                std::thread::spawn(move || {
                    let mut failure = None;
                    while !stop.load(Ordering::Relaxed) && failure.is_none() {
                        let t = std::time::Instant::now();
                        match s.ask() {
                            Ok(w) if w == s.worker => {
                                answered.fetch_add(1, Ordering::Relaxed);
                                longest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                            }
                            Ok(w) => failure = Some(format!("moved from {} to {w}", s.worker)),
                            Err(e) => failure = Some(format!("on {}: {e}", s.worker)),
                        }
                        std::thread::sleep(pause);
                    }
                    failure
                })
            })
            .collect();
        Self { stop, answered, longest, threads }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The longest any one request waited for its answer so far.
    pub fn longest_wait(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.longest.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Requests answered within `window` (printed with `what`); at least
    /// `min` of them, or the streams stalled.
    pub fn progress(&self, what: &str, window: std::time::Duration, min: u64) -> u64 {
        let before = self.answered();
        std::thread::sleep(window);
        let n = self.answered() - before;
        println!("{what}: {n} requests answered in {window:?}");
        assert!(n >= min, "{what}: streams stalled ({n} answers, {min} expected)");
        n
    }

    /// Stops the streams; returns what broke.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.drain(..).filter_map(|t| t.join().unwrap()).collect()
    }
}

impl Drop for StreamLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The value of the series `name_and_labels` (exactly as exposed, e.g.
/// `swarmlb_config_reloads_total{result="failed"}`) in a metrics text, as
/// a `T` (`u64` for counts, `f64` for timestamps).
pub fn metric<T: std::str::FromStr>(text: &str, name_and_labels: &str) -> Option<T> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of every series whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}
