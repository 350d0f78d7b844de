//! Legitimate clients during a flood: a steady rate of new connections
//! (a TLS handshake, or an HTTP GET) or UDP request/answer exchanges, each
//! on a fresh socket (a fresh source port: a new flow for the balancer),
//! each started on time whatever the earlier ones are doing, timed and
//! judged. The test names phases ([`Clients::mark`]); an attempt belongs to
//! the phase it started in.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls::ClientConfig;

use super::UDP_MAGIC as MAGIC;
use crate::{tls, Netns};

/// What one attempt does.
#[derive(Clone, Debug)]
pub enum Target {
    /// Connect, full TLS handshake with `sni` (certificate verified), close.
    Tls {
        /// The VIP and port.
        addr: SocketAddr,
        /// The server name sent and verified.
        sni: String,
    },
    /// Connect, `GET /` over HTTP/1.1, answer read, close.
    Http {
        /// The VIP and port.
        addr: SocketAddr,
    },
    /// A request datagram from a fresh socket, resent every second until
    /// its echo comes back or the timeout passes (as a DNS resolver does).
    Udp {
        /// The VIP and port.
        addr: SocketAddr,
    },
}

impl Target {
    /// A short label: `tls 203.0.113.10:443`.
    pub fn label(&self) -> String {
        match self {
            Target::Tls { addr, .. } => format!("tls {addr}"),
            Target::Http { addr } => format!("http {addr}"),
            Target::Udp { addr } => format!("udp {addr}"),
        }
    }
}

/// One attempt's outcome.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When it started, from the clients' start.
    pub at: Duration,
    /// Index into the targets.
    pub target: usize,
    /// The TCP connect (or the first UDP answer) took this long.
    pub connect: Option<Duration>,
    /// The whole exchange took this long.
    pub total: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The clients: a ticker thread in the namespace starting attempts.
pub struct Clients {
    start: Instant,
    stop: Arc<AtomicBool>,
    marks: Mutex<Vec<(String, Duration)>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    targets: Vec<Target>,
    ticker: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Clients {
    /// Starts `per_second` attempts a second from `ns`, rotating over
    /// `targets`; an attempt fails if it is not done within `timeout` per
    /// step (connect, then the exchange; UDP: the answer). `tls` is needed
    /// for [`Target::Tls`]. The first phase is `"start"`.
    pub fn start(ns: &Netns, targets: Vec<Target>, per_second: u32, timeout: Duration, tls: Option<Arc<ClientConfig>>) -> Self {
        assert!(!targets.is_empty() && per_second > 0);
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (ns, t, st, at) = (ns.clone(), targets.clone(), stop.clone(), attempts.clone());
        let ticker = std::thread::spawn(move || {
            ns.run(|| {
                let mut workers = Vec::new();
                let period = Duration::from_secs_f64(1.0 / f64::from(per_second));
                let mut n = 0usize;
                while !st.load(Ordering::Relaxed) {
                    let due = start + period * n as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let (target, tls, at) = (n % t.len(), tls.clone(), at.clone());
                    let what = t[target].clone();
                    // A new thread keeps the namespace of the thread that spawns it.
                    workers.push(std::thread::spawn(move || {
                        let began = Instant::now();
                        let mut connect = None;
                        let r = attempt(&what, n, timeout, tls.as_deref(), &mut connect);
                        let a = Attempt {
                            at: began - start,
                            target,
                            connect,
                            total: began.elapsed(),
                            error: r.err().map(|e| format!("{e:#}")),
                        };
                        at.lock().unwrap().push(a);
                    }));
                    workers.retain(|w| !w.is_finished());
                    n += 1;
                }
                workers
            })
        });
        Self { start, stop, marks: Mutex::new(vec![("start".into(), Duration::ZERO)]), attempts, targets, ticker: Some(ticker) }
    }

    /// A phase named `name` starts now.
    pub fn mark(&self, name: &str) {
        self.marks.lock().unwrap().push((name.to_owned(), self.start.elapsed()));
    }

    /// Attempts finished so far that failed, and all finished.
    pub fn failed_so_far(&self) -> (usize, usize) {
        let a = self.attempts.lock().unwrap();
        (a.iter().filter(|a| a.error.is_some()).count(), a.len())
    }

    /// Stops starting attempts, waits for those under way; the results.
    pub fn stop(mut self) -> Results {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            for w in t.join().expect("the clients' ticker panicked") {
                let _ = w.join();
            }
        }
        let mut attempts = std::mem::take(&mut *self.attempts.lock().unwrap());
        attempts.sort_by_key(|a| a.at);
        Results { attempts, marks: std::mem::take(&mut *self.marks.lock().unwrap()), targets: self.targets.clone() }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One attempt; `connect` is set once connected (or answered).
fn attempt(t: &Target, n: usize, timeout: Duration, tls_cfg: Option<&ClientConfig>, connect: &mut Option<Duration>) -> Result<()> {
    let began = Instant::now();
    match t {
        Target::Tls { addr, sni } => {
            let s = tcp(*addr, timeout)?;
            *connect = Some(began.elapsed());
            tls::handshake(s, tls_cfg.context("a TLS target needs a client config")?, sni)?;
        }
        Target::Http { addr } => {
            let s = tcp(*addr, timeout)?;
            *connect = Some(began.elapsed());
            let (status, body) = tls::http_get(s, "a.com", "/")?;
            if status != 200 || !body.starts_with("worker=") {
                bail!("HTTP {status}: {body}");
            }
        }
        Target::Udp { addr } => {
            let any: IpAddr = if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
            sock.connect(addr)?;
            let mut req = MAGIC.to_vec();
            req.extend(format!(" request {n}").bytes());
            let mut buf = [0u8; 256];
            let resend = Duration::from_secs(1).min(timeout);
            loop {
                let left = timeout.saturating_sub(began.elapsed());
                if left.is_zero() {
                    bail!("no answer within {timeout:?}");
                }
                sock.send(&req)?;
                sock.set_read_timeout(Some(resend.min(left).max(Duration::from_millis(1))))?;
                let until = Instant::now() + resend.min(left);
                while Instant::now() < until {
                    match sock.recv(&mut buf) {
                        Ok(k) if buf[..k] == req[..] => {
                            *connect = Some(began.elapsed());
                            return Ok(());
                        }
                        Ok(_) => continue,
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                        // An ICMP error for an earlier send; wait for the next.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }
    }
    Ok(())
}

/// A TCP connection within `timeout`, with `timeout` for reads and writes.
fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Every attempt and the phases.
pub struct Results {
    /// In start order.
    pub attempts: Vec<Attempt>,
    /// Phase names and starts, in order.
    pub marks: Vec<(String, Duration)>,
    /// What the attempts' `target` indexes.
    pub targets: Vec<Target>,
}

/// One phase's (or several phases') figures.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// The phase's (or group's) name.
    pub name: String,
    /// Attempts started in it.
    pub attempts: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Connect (UDP: answer) times of the attempts that connected, ms:
    /// median, 99th percentile, maximum.
    pub connect_p50_ms: f64,
    /// See [`Phase::connect_p50_ms`].
    pub connect_p99_ms: f64,
    /// See [`Phase::connect_p50_ms`].
    pub connect_max_ms: f64,
    /// Failures by target and error (the error cut to its gist).
    pub errors: BTreeMap<String, usize>,
}

impl Phase {
    /// Failed share, 0..=1 (0 without attempts).
    pub fn failed_share(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.failed as f64 / self.attempts as f64
        }
    }
}

impl Results {
    /// The attempts that started in any of the phases `names`.
    pub fn phases(&self, label: &str, names: &[&str]) -> Phase {
        let picked: Vec<&Attempt> = self.attempts.iter().filter(|a| names.contains(&self.phase_of(a.at))).collect();
        let mut connects: Vec<f64> = picked.iter().filter_map(|a| a.connect).map(|d| d.as_secs_f64() * 1e3).collect();
        connects.sort_by(f64::total_cmp);
        let q = |q: f64| if connects.is_empty() { f64::NAN } else { connects[((connects.len() - 1) as f64 * q).round() as usize] };
        let mut errors = BTreeMap::new();
        for a in &picked {
            if let Some(e) = &a.error {
                *errors.entry(format!("{}: {}", self.targets[a.target].label(), gist(e))).or_default() += 1;
            }
        }
        Phase {
            name: label.to_owned(),
            attempts: picked.len(),
            failed: picked.iter().filter(|a| a.error.is_some()).count(),
            connect_p50_ms: q(0.5),
            connect_p99_ms: q(0.99),
            connect_max_ms: connects.last().copied().unwrap_or(f64::NAN),
            errors,
        }
    }

    /// The phase an attempt that started at `at` belongs to.
    pub fn phase_of(&self, at: Duration) -> &str {
        self.marks.iter().rev().find(|(_, t)| *t <= at).map_or("start", |(n, _)| n.as_str())
    }

    /// A table row per phase (and `extra` groups of phases), with failures.
    pub fn table(&self, groups: &[(&str, &[&str])]) -> String {
        let mut rows: Vec<Phase> = self.marks.iter().map(|(n, _)| self.phases(n, &[n.as_str()])).collect();
        rows.extend(groups.iter().map(|(label, names)| self.phases(label, names)));
        let mut s = String::from("phase                 attempts failed   connect p50/p99/max ms\n");
        for p in &rows {
            let _ = writeln!(
                s,
                "{:<21} {:>8} {:>6}   {:.1} / {:.1} / {:.1}",
                p.name, p.attempts, p.failed, p.connect_p50_ms, p.connect_p99_ms, p.connect_max_ms
            );
            for (e, k) in &p.errors {
                let _ = writeln!(s, "    {k} × {e}");
            }
        }
        s
    }
}

/// An error's last cause, cut short ("Connection timed out (os error 110)").
fn gist(e: &str) -> String {
    let last = e.rsplit(": ").next().unwrap_or(e);
    last.chars().take(80).collect()
}
