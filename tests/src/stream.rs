//! A keep-alive HTTP connection through a VIP that asks nginx "who are
//! you" again and again: the end-to-end tests' and the soak's long-lived
//! connection. nginx ([`crate::nginx`]) answers `worker=<name>` on port 80.
//! [`Streaming`] runs many of them on threads while a test does something
//! to the balancer, and says how each ended.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{tls::connect, Netns};

/// A keep-alive HTTP connection to port 80 of a VIP.
pub struct Stream {
    /// The connection.
    pub reader: BufReader<TcpStream>,
    /// The worker that answered the first request.
    pub worker: String,
    /// Bytes of padding each request carries.
    pub pad: usize,
}

impl Stream {
    /// Connects from `ns` and asks once; panics if that fails.
    pub fn open(ns: &Netns, vip: IpAddr) -> Self {
        Self::try_open(ns, vip).unwrap_or_else(|e| panic!("a stream to {vip}: {e}"))
    }

    /// Connects from `ns` and asks once (which sets [`Stream::worker`]).
    pub fn try_open(ns: &Netns, vip: IpAddr) -> io::Result<Self> {
        let sock = connect(ns, SocketAddr::new(vip, 80)).map_err(|e| io::Error::other(format!("{e:#}")))?;
        let mut s = Self { reader: BufReader::new(sock), worker: String::new(), pad: 512 };
        s.worker = s.ask()?;
        Ok(s)
    }

    /// Sets how long a request waits for its answer before it fails
    /// ([`crate::tls::IO_TIMEOUT`] unless set).
    pub fn with_read_timeout(self, timeout: Duration) -> Self {
        self.reader.get_ref().set_read_timeout(Some(timeout)).expect("a read timeout on a connected socket");
        self
    }

    /// The client's (local) port.
    pub fn port(&self) -> u16 {
        self.reader.get_ref().local_addr().map_or(0, |a| a.port())
    }

    /// One request/response with a payload both ways; returns the name of
    /// the worker that answered.
    pub fn ask(&mut self) -> io::Result<String> {
        let pad = "x".repeat(self.pad);
        write!(self.reader.get_mut(), "GET / HTTP/1.1\r\nHost: a.com\r\nX-Pad: {pad}\r\n\r\n")?;
        let mut len = 0;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().trim_start_matches("worker=").to_string())
    }
}

/// How one stream of a [`Streaming`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still answered by its worker when the test stopped it.
    Alive,
    /// Answered by another worker (a connection cannot move: broken).
    Moved {
        /// The worker that answered its first request.
        from: String,
        /// The worker that answered instead.
        to: String,
    },
    /// A request failed with an I/O error.
    Failed {
        /// The error's kind (a reset, a timeout, …).
        kind: io::ErrorKind,
        /// The error.
        error: String,
        /// How long the failed request waited.
        waited: Duration,
    },
}

/// One stream of a [`Streaming`], at its end.
#[derive(Debug, Clone)]
pub struct Ended {
    /// The client's port.
    pub port: u16,
    /// The worker that answered its first request.
    pub worker: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Its longest wait for an answer that came.
    pub longest: Duration,
}

impl Ended {
    /// What broke, if it did: `moved from A to B` or `on A: <error>`.
    pub fn failure(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Alive => None,
            Outcome::Moved { from, to } => Some(format!("moved from {from} to {to}")),
            Outcome::Failed { error, .. } => Some(format!("on {}: {error}", self.worker)),
        }
    }
}

/// Keep-alive streams, each on a thread of its own asking again and again
/// (one request every `pause`) until [`Streaming::stop`]: traffic flowing
/// while a test does something to the balancer. A stream that errs or is
/// answered by another worker is broken and stops asking.
pub struct Streaming {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    /// The longest any request waited for its answer, in µs.
    longest: Arc<AtomicU64>,
    threads: Vec<(String, JoinHandle<Ended>)>,
}

impl Streaming {
    /// Opens `n` streams from `ns` to `vip` (panics if one fails) and starts them.
    pub fn open(ns: &Netns, vip: IpAddr, n: usize, pause: Duration) -> Self {
        Self::start((0..n).map(|_| Stream::open(ns, vip)).collect(), pause)
    }

    /// Starts `streams` (for streams opened with other settings, e.g.
    /// [`Stream::with_read_timeout`]).
    pub fn start(streams: Vec<Stream>, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let longest = Arc::new(AtomicU64::new(0));
        let threads = streams
            .into_iter()
            .map(|mut s| {
                let (stop, answered, all_longest) = (stop.clone(), answered.clone(), longest.clone());
                let worker = s.worker.clone();
                let t = std::thread::spawn(move || {
                    let (port, first, mut longest) = (s.port(), s.worker.clone(), Duration::ZERO);
                    let end = |outcome, longest| Ended { port, worker: first.clone(), outcome, longest };
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        match s.ask() {
                            Ok(w) if w == first => {
                                answered.fetch_add(1, Ordering::Relaxed);
                                longest = longest.max(t.elapsed());
                                all_longest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                            }
                            Ok(to) => return end(Outcome::Moved { from: first.clone(), to }, longest),
                            Err(e) => {
                                let outcome = Outcome::Failed { kind: e.kind(), error: e.to_string(), waited: t.elapsed() };
                                return end(outcome, longest);
                            }
                        }
                        std::thread::sleep(pause);
                    }
                    end(Outcome::Alive, longest)
                });
                (worker, t)
            })
            .collect();
        Self { stop, answered, longest, threads }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The longest any request waited for its answer so far.
    pub fn longest_wait(&self) -> Duration {
        Duration::from_micros(self.longest.load(Ordering::Relaxed))
    }

    /// Requests answered within the next `window`.
    pub fn progress(&self, window: Duration) -> u64 {
        let before = self.answered();
        std::thread::sleep(window);
        self.answered() - before
    }

    /// [`Streaming::progress`], printed with `what`; panics unless at
    /// least `min` requests were answered (the streams stalled).
    pub fn progress_at_least(&self, what: &str, window: Duration, min: u64) -> u64 {
        let n = self.progress(window);
        println!("{what}: {n} requests answered in {window:?}");
        assert!(n >= min, "{what}: streams stalled ({n} answers in {window:?}, {min} expected)");
        n
    }

    /// The streams' workers (who answered their first request), in start order.
    pub fn workers(&self) -> Vec<String> {
        self.threads.iter().map(|(w, _)| w.clone()).collect()
    }

    /// Stops every stream; how each ended, in start order.
    pub fn stop(mut self) -> Vec<Ended> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads).into_iter().map(|(_, t)| t.join().expect("a stream thread panicked")).collect()
    }
}

impl Drop for Streaming {
    /// A test that panics leaves no thread asking.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
