//! The soak's clients: new connections at a steady rate (plain HTTP and
//! TLS handshakes, every one checked for a right answer) and long-lived
//! keep-alive streams that check every answer comes from the worker that
//! answered their first request. Everything is recorded with its times;
//! [`super::verdict`] judges it against the churn's timeline afterwards.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rustls::ClientConfig;

use super::Plan;
use crate::{
    edge_lab::{VIP_V4, VIP_V6},
    stream::Stream,
    tls::{connect, handshake},
    Netns,
};

/// The TLS connections' server name (nginx's one vhost).
pub const SNI: &str = "a.com";

/// What a new connection was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connect, `GET /` (the answer names the worker), close.
    Http,
    /// A TLS 1.3 handshake for [`SNI`], verified; the certificate's CN
    /// names the worker.
    Tls,
    /// The first request of a long-lived stream.
    StreamOpen,
}

/// One new connection.
#[derive(Clone, Debug)]
pub struct Conn {
    /// What it was.
    pub kind: Kind,
    /// Through the IPv6 VIP.
    pub v6: bool,
    /// When the connect started.
    pub start: Instant,
    /// When the answer (or the error) came.
    pub end: Instant,
    /// The client's port, if it connected.
    pub port: Option<u16>,
    /// The worker that answered, or the error.
    pub answer: Result<String, String>,
}

impl Conn {
    /// The VIP's port it went to.
    pub fn vip_port(&self) -> u16 {
        if self.kind == Kind::Tls {
            443
        } else {
            80
        }
    }
}

/// One long-lived stream, from its first request to its end.
#[derive(Clone, Debug)]
pub struct Life {
    /// Through the IPv6 VIP.
    pub v6: bool,
    /// The worker that answered its first request.
    pub worker: String,
    /// When its connect started.
    pub opened: Instant,
    /// Every later request answered by [`Life::worker`]: (sent, answered).
    pub answered: Vec<(Instant, Instant)>,
    /// The request that failed, if one did: (sent, failed, error).
    pub failure: Option<(Instant, Instant, String)>,
    /// Another worker answered (a connection cannot move; never expected).
    pub moved: Option<String>,
}

impl Life {
    /// When it was last known to be alive or ended.
    pub fn end(&self) -> Instant {
        self.failure.as_ref().map(|f| f.1).or(self.answered.last().map(|a| a.1)).unwrap_or(self.opened)
    }
}

/// Counters the progress lines read while the soak runs.
#[derive(Default)]
pub struct Live {
    /// New connections answered.
    pub made: AtomicU64,
    /// New connections that failed.
    pub failed: AtomicU64,
    /// Requests answered on streams.
    pub requests: AtomicU64,
    /// Streams that ended with an error or a move.
    pub broken: AtomicU64,
}

fn vip(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(VIP_V6)
    } else {
        IpAddr::V4(VIP_V4)
    }
}

/// The local port of a connected socket.
fn port(sock: &std::net::TcpStream) -> Option<u16> {
    sock.local_addr().ok().map(|a| a.port())
}

/// One new connection of `kind`: its client port (once connected) and
/// the worker that answered.
fn connection(ns: &Netns, tls: &ClientConfig, kind: Kind, v6: bool) -> (Option<u16>, Result<String, String>) {
    match kind {
        // The client closes first (as browsers do): the edge's sweep frees
        // the SNAT port `tcp_closed_timeout_s` after.
        Kind::Http | Kind::StreamOpen => match Stream::try_open(ns, vip(v6)) {
            Ok(s) => (port(s.reader.get_ref()), Ok(s.worker)),
            Err(e) => (None, Err(e.to_string())),
        },
        Kind::Tls => {
            let sock = match connect(ns, SocketAddr::new(vip(v6), 443)) {
                Ok(s) => s,
                Err(e) => return (None, Err(format!("{e:#}"))),
            };
            (port(&sock), handshake_names_worker(sock, tls))
        }
    }
}

/// A verified handshake for [`SNI`]: the worker its certificate names.
fn handshake_names_worker(sock: std::net::TcpStream, tls: &ClientConfig) -> Result<String, String> {
    // Verified against the test CA for SNI; closed with close_notify.
    let info = handshake(sock, tls, SNI).map_err(|e| format!("{e:#}"))?;
    if !info.peer_sans.iter().any(|s| s == SNI) {
        return Err(format!("certificate of {} lacks {SNI}: {:?}", info.peer_cn, info.peer_sans));
    }
    Ok(info.peer_cn)
}

/// New connections at `plan.new_per_s` from `t0` until `end` (or `stop`):
/// connection `k` is due at `t0 + k / rate`, alternately through the IPv4
/// and the IPv6 VIP, every `plan.tls_every`-th a TLS handshake. A pool of
/// threads takes them in turn, so a slow one does not hold the rate up.
pub fn new_connections(ns: &Netns, tls: &Arc<ClientConfig>, plan: &Plan, t0: Instant, end: Instant, stop: &AtomicBool, live: &Live) -> Vec<Conn> {
    let next = AtomicU64::new(0);
    let period = Duration::from_secs(1).as_secs_f64() / f64::from(plan.new_per_s);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..plan.connection_threads)
            .map(|_| {
                let next = &next;
                s.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let due = t0 + Duration::from_secs_f64(k as f64 * period);
                        if due >= end || stop.load(Ordering::Relaxed) {
                            return done;
                        }
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let kind = if k.is_multiple_of(u64::from(plan.tls_every)) { Kind::Tls } else { Kind::Http };
                        let v6 = k % 2 == 1;
                        let start = Instant::now();
                        let (port, answer) = connection(ns, tls, kind, v6);
                        (if answer.is_ok() { &live.made } else { &live.failed }).fetch_add(1, Ordering::Relaxed);
                        done.push(Conn { kind, v6, start, end: Instant::now(), port, answer });
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a connection thread panicked")).collect()
    })
}

/// `plan.streams` long-lived streams until `stop`, each asking every
/// `plan.stream_interval`; a stream that ends is replaced by a new one.
/// Returns the new connections the streams opened and their lives.
pub fn streams(ns: &Netns, plan: &Plan, stop: &AtomicBool, live: &Live) -> (Vec<Conn>, Vec<Life>) {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..plan.streams)
            .map(|i| {
                s.spawn(move || {
                    let v6 = i % 2 == 1;
                    let (mut opens, mut lives) = (Vec::new(), Vec::new());
                    // Spread the streams' requests over the interval.
                    std::thread::sleep(plan.stream_interval.mul_f64(i as f64 / plan.streams as f64));
                    while !stop.load(Ordering::Relaxed) {
                        let opened = Instant::now();
                        let stream = Stream::try_open(ns, vip(v6));
                        let answer = stream.as_ref().map(|s| s.worker.clone()).map_err(|e| e.to_string());
                        let port = stream.as_ref().ok().and_then(|s| port(s.reader.get_ref()));
                        (if answer.is_ok() { &live.made } else { &live.failed }).fetch_add(1, Ordering::Relaxed);
                        opens.push(Conn { kind: Kind::StreamOpen, v6, start: opened, end: Instant::now(), port, answer });
                        let Ok(mut stream) = stream else {
                            std::thread::sleep(plan.stream_interval);
                            continue;
                        };
                        let mut life =
                            Life { v6, worker: stream.worker.clone(), opened, answered: Vec::new(), failure: None, moved: None };
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(plan.stream_interval);
                            let sent = Instant::now();
                            match stream.ask() {
                                Ok(w) if w == life.worker => {
                                    live.requests.fetch_add(1, Ordering::Relaxed);
                                    life.answered.push((sent, Instant::now()));
                                }
                                Ok(w) => {
                                    life.moved = Some(w);
                                    break;
                                }
                                Err(e) => {
                                    life.failure = Some((sent, Instant::now(), e.to_string()));
                                    break;
                                }
                            }
                        }
                        if life.failure.is_some() || life.moved.is_some() {
                            live.broken.fetch_add(1, Ordering::Relaxed);
                        }
                        lives.push(life);
                    }
                    (opens, lives)
                })
            })
            .collect();
        let (mut opens, mut lives) = (Vec::new(), Vec::new());
        for t in threads {
            let (o, l) = t.join().expect("a stream thread panicked");
            opens.extend(o);
            lives.extend(l);
        }
        (opens, lives)
    })
}
