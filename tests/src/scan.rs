//! Port scanners that tell open, closed and silently dropped ports apart.
//!
//! Both scanners use their own sockets and work in whatever namespace the
//! calling thread is in, so call them inside [`crate::Netns::run`]:
//!
//! ```no_run
//! # use harness::{scan::tcp_scan, Topology};
//! # use std::time::Duration;
//! let net = Topology::two_hosts("doc");
//! let target = net.server_addrs()[0];
//! let res = net.client.run(move || tcp_scan(target, 1..=1024, None, 2048, Duration::from_millis(1500)));
//! ```
//!
//! Both keep many probes in flight (non-blocking sockets, epoll), but at
//! most [`START_WINDOW`] until the first answer arrives or [`WARMUP`] has
//! passed. Why: the first packets to a new neighbour wait in a short queue
//! while ARP/ND resolves, and a burst of thousands would overflow it. The
//! window opens on time as well, so a scan that starts with a long run of
//! dropped ports is not throttled. Results come back in the order the ports
//! were given.

use std::{
    collections::VecDeque,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::sys::{self, Epoll};

/// What a TCP connect to one port found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpOutcome {
    /// The handshake completed: something listens.
    Open,
    /// A RST came back: reachable, nothing listens.
    Refused,
    /// Nothing came back within the timeout (dropped on the way).
    Timeout,
    /// Any other error (the errno), e.g. an ICMP host unreachable.
    Error(i32),
}

/// What a UDP probe to one port found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UdpOutcome {
    /// The probe's payload came back: an echo server listens.
    Echoed,
    /// An ICMP port unreachable came back: reachable, nothing listens.
    Unreachable,
    /// Nothing came back within the timeout, after the retries.
    Silent,
    /// Any other ICMP error (the errno), e.g. host unreachable.
    Error(i32),
}

/// Probes to resend to a silent UDP port, spread over the timeout, so one
/// lost datagram does not read as a drop.
const UDP_RETRIES: u32 = 2;

/// UDP probes in flight at most. Answered probes finish within
/// microseconds, so the window is mostly filled by silent (dropped) ports,
/// and each of those costs the full timeout: a wide window keeps a scan with
/// thousands of dropped ports short. Bursts stay harmless: probes (and
/// their retries) go out one syscall at a time and a veth delivers each one
/// before the next is sent.
const UDP_WINDOW: usize = 2048;

/// Probes in flight before the first answer: fewer than the kernel queues
/// per unresolved neighbour (`unres_qlen_bytes`, about 200 small packets).
pub const START_WINDOW: usize = 64;

/// Time after which the window opens fully even without an answer;
/// neighbour resolution between namespaces takes well under a millisecond.
pub const WARMUP: Duration = Duration::from_millis(50);

/// A probe in flight. The slot index is the epoll token; the generation
/// tells a queued timer of an earlier probe in the same slot from this one.
struct Probe {
    fd: OwnedFd,
    idx: usize,
    generation: u64,
    sends: u32,
}

/// Bookkeeping shared by both scanners: slots, FIFO timers, the window.
struct Flight {
    slots: Vec<Option<Probe>>,
    free: Vec<usize>,
    /// (deadline, slot, generation). Every timer is armed as `now + step`
    /// with one fixed step per scan, so a FIFO stays sorted by deadline.
    timers: VecDeque<(Instant, usize, u64)>,
    generation: u64,
    in_flight: usize,
    max_window: usize,
    /// When the full window opens (moved to "now" by the first answer).
    open_at: Instant,
}

impl Flight {
    fn new(max_window: usize) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            timers: VecDeque::new(),
            generation: 0,
            in_flight: 0,
            max_window: max_window.max(1),
            open_at: Instant::now() + WARMUP,
        }
    }

    fn has_room(&self, now: Instant) -> bool {
        let window = if now >= self.open_at { self.max_window } else { self.max_window.min(START_WINDOW) };
        self.in_flight < window
    }

    /// An answer came back: the neighbour is resolved, open the window.
    fn answered(&mut self, now: Instant) {
        self.open_at = self.open_at.min(now);
    }

    /// Stores a probe, arms its timer, and returns its slot (the epoll token).
    fn insert(&mut self, fd: OwnedFd, idx: usize, deadline: Instant) -> usize {
        self.generation += 1;
        let probe = Probe { fd, idx, generation: self.generation, sends: 1 };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(probe);
                s
            }
            None => {
                self.slots.push(Some(probe));
                self.slots.len() - 1
            }
        };
        self.timers.push_back((deadline, slot, self.generation));
        self.in_flight += 1;
        slot
    }

    /// Removes a finished probe (dropping it closes its socket, which also
    /// takes it out of the epoll set).
    fn finish(&mut self, slot: usize) -> Option<Probe> {
        let probe = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.in_flight -= 1;
        Some(probe)
    }

    /// The next expired timer whose probe is still in flight.
    fn pop_expired(&mut self, now: Instant) -> Option<usize> {
        while let Some(&(deadline, slot, generation)) = self.timers.front() {
            if deadline > now {
                return None;
            }
            self.timers.pop_front();
            if matches!(&self.slots[slot], Some(p) if p.generation == generation) {
                return Some(slot);
            }
        }
        None
    }

    /// How long epoll may sleep before the next timer is due (or the
    /// window opens).
    fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let timer = self.timers.front().map(|(d, _, _)| *d);
        let opening = (self.open_at > now).then_some(self.open_at);
        timer.into_iter().chain(opening).min().map(|d| d.saturating_duration_since(now))
    }
}

/// Binds `fd` to the scan's source address (port chosen by the kernel).
fn bind_source(fd: &OwnedFd, source: Option<IpAddr>) -> Result<()> {
    if let Some(src) = source {
        sys::bind(fd, SocketAddr::new(src, 0)).with_context(|| format!("bind source {src}"))?;
    }
    Ok(())
}

/// Connects to every port of `target` and classifies the answer, keeping up
/// to `concurrency` connects in flight. `source` pins the client address
/// (it must be assigned in the calling thread's namespace). A port counts
/// as [`TcpOutcome::Timeout`] when neither SYN-ACK nor RST arrived within
/// `timeout`; the kernel retransmits the SYN after 1 s, so a timeout above
/// that survives one lost SYN.
///
/// Open connections are closed with a RST (SO_LINGER 0): no TIME_WAIT
/// sockets pile up and the listener sees one short connection.
pub fn tcp_scan(
    target: IpAddr,
    ports: impl IntoIterator<Item = u16>,
    source: Option<IpAddr>,
    concurrency: usize,
    timeout: Duration,
) -> Result<Vec<(u16, TcpOutcome)>> {
    sys::raise_nofile();
    let ports: Vec<u16> = ports.into_iter().collect();
    let mut results: Vec<Option<TcpOutcome>> = vec![None; ports.len()];
    let epoll = Epoll::new()?;
    let mut flight = Flight::new(concurrency);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut next = 0;

    loop {
        while flight.has_room(Instant::now()) && next < ports.len() {
            let idx = next;
            next += 1;
            let fd = sys::socket(sys::family(target), libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
            if source.is_some() {
                // Choose the port at connect time, from the 4-tuple, instead
                // of reserving a port per socket at bind time.
                let _ = sys::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1i32);
            }
            bind_source(&fd, source)?;
            match sys::connect(&fd, SocketAddr::new(target, ports[idx])) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Ok(()) => {
                    // Only for a local target: the handshake is already done.
                    sys::linger_zero(&fd);
                    results[idx] = Some(TcpOutcome::Open);
                    continue;
                }
                Err(e) => {
                    results[idx] = Some(connect_error(&e));
                    continue;
                }
            }
            let slot = flight.insert(fd, idx, Instant::now() + timeout);
            let fd = flight.slots[slot].as_ref().unwrap().fd.as_raw_fd();
            epoll.add(fd, (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32, slot as u64)?;
        }
        if flight.in_flight == 0 && next >= ports.len() {
            break;
        }

        let n = epoll.wait(&mut events, flight.next_wakeup(Instant::now()))?;
        for ev in &events[..n] {
            let Some(probe) = flight.finish(ev.u64 as usize) else { continue };
            results[probe.idx] = Some(tcp_outcome(&probe.fd, target, ports[probe.idx])?);
            flight.answered(Instant::now());
        }
        let now = Instant::now();
        while let Some(slot) = flight.pop_expired(now) {
            let probe = flight.finish(slot).unwrap();
            // The answer may be in, just not yet reported: epoll returns at
            // most a buffer's worth of events per call, and a busy machine
            // can delay this loop. Only a socket with nothing pending timed out.
            let outcome = match ready(&probe.fd, libc::POLLOUT) {
                true => tcp_outcome(&probe.fd, target, ports[probe.idx])?,
                false => TcpOutcome::Timeout,
            };
            results[probe.idx] = Some(outcome);
        }
    }
    Ok(ports.into_iter().zip(results.into_iter().map(|r| r.expect("every port classified"))).collect())
}

/// The result of a connect whose socket became ready.
fn tcp_outcome(fd: &OwnedFd, target: IpAddr, port: u16) -> io::Result<TcpOutcome> {
    Ok(match sys::so_error(fd)? {
        0 if self_connected(fd, target, port) => TcpOutcome::Refused,
        0 => {
            sys::linger_zero(fd);
            TcpOutcome::Open
        }
        libc::ECONNREFUSED => TcpOutcome::Refused,
        libc::ETIMEDOUT => TcpOutcome::Timeout,
        e => TcpOutcome::Error(e),
    })
}

/// Is `fd` ready for `events` (or in error) right now?
fn ready(fd: &OwnedFd, events: libc::c_short) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents != 0 }
}

/// A failed non-blocking connect, classified.
fn connect_error(e: &io::Error) -> TcpOutcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => TcpOutcome::Refused,
        Some(libc::ETIMEDOUT) => TcpOutcome::Timeout,
        Some(errno) => TcpOutcome::Error(errno),
        None => TcpOutcome::Error(0),
    }
}

/// A connect from a local port to the same port on a local address can
/// complete by TCP simultaneous open with itself; that is not a listener.
fn self_connected(fd: &OwnedFd, target: IpAddr, port: u16) -> bool {
    matches!(sys::local_addr(fd), Ok(a) if a.ip() == target && a.port() == port)
}

/// The probe payload for `port`: recognisable in captures and checked on
/// the way back, so only a real echo of this probe counts.
fn udp_payload(port: u16) -> Vec<u8> {
    format!("swarmlb-harness-probe port={port}").into_bytes()
}

/// Sends a datagram to every port of `target` on a connected UDP socket
/// per port and classifies the answer. A connected socket receives the
/// ICMP port unreachable as `ECONNREFUSED`, and only datagrams from the
/// target port. Silent ports are probed `1 + UDP_RETRIES` times spread over
/// `timeout`, so a single lost datagram does not read as a drop.
///
/// The target namespace must not throttle ICMP errors ([`crate::Netns::new`]
/// turns throttling off), or closed ports would look silent.
pub fn udp_scan(
    target: IpAddr,
    ports: impl IntoIterator<Item = u16>,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<Vec<(u16, UdpOutcome)>> {
    sys::raise_nofile();
    let ports: Vec<u16> = ports.into_iter().collect();
    let mut results: Vec<Option<UdpOutcome>> = vec![None; ports.len()];
    let epoll = Epoll::new()?;
    let mut flight = Flight::new(UDP_WINDOW);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let step = timeout / (UDP_RETRIES + 1);
    let mut buf = [0u8; 2048];
    let mut next = 0;

    loop {
        while flight.has_room(Instant::now()) && next < ports.len() {
            let idx = next;
            next += 1;
            let fd = sys::socket(sys::family(target), libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0)?;
            bind_source(&fd, source)?;
            let payload = udp_payload(ports[idx]);
            let sent = sys::connect(&fd, SocketAddr::new(target, ports[idx])).and_then(|()| send(&fd, &payload));
            if let Err(e) = sent {
                results[idx] = Some(udp_error(&e));
                continue;
            }
            let slot = flight.insert(fd, idx, Instant::now() + step);
            let fd = flight.slots[slot].as_ref().unwrap().fd.as_raw_fd();
            epoll.add(fd, (libc::EPOLLIN | libc::EPOLLERR) as u32, slot as u64)?;
        }
        if flight.in_flight == 0 && next >= ports.len() {
            break;
        }

        let n = epoll.wait(&mut events, flight.next_wakeup(Instant::now()))?;
        for ev in &events[..n] {
            let slot = ev.u64 as usize;
            let Some(probe) = flight.slots.get(slot).and_then(|p| p.as_ref()) else { continue };
            if let Some(outcome) = udp_outcome(&probe.fd, ports[probe.idx], &mut buf) {
                let probe = flight.finish(slot).unwrap();
                results[probe.idx] = Some(outcome);
                flight.answered(Instant::now());
            }
        }
        let now = Instant::now();
        while let Some(slot) = flight.pop_expired(now) {
            let probe = flight.slots[slot].as_mut().unwrap();
            // An answer not yet reported by epoll (see tcp_scan) counts.
            if let Some(outcome) = udp_outcome(&probe.fd, ports[probe.idx], &mut buf) {
                let probe = flight.finish(slot).unwrap();
                results[probe.idx] = Some(outcome);
            } else if probe.sends <= UDP_RETRIES {
                probe.sends += 1;
                let generation = probe.generation;
                // A pending ICMP error surfaces here instead of in epoll
                // when it arrived after this round's epoll_wait.
                match send(&probe.fd, &udp_payload(ports[probe.idx])) {
                    Ok(_) => flight.timers.push_back((now + step, slot, generation)),
                    Err(e) => {
                        let probe = flight.finish(slot).unwrap();
                        results[probe.idx] = Some(udp_error(&e));
                    }
                }
            } else {
                let probe = flight.finish(slot).unwrap();
                results[probe.idx] = Some(UdpOutcome::Silent);
            }
        }
    }
    Ok(ports.into_iter().zip(results.into_iter().map(|r| r.expect("every port classified"))).collect())
}

/// Reads what arrived for a UDP probe: the echo of its payload, an ICMP
/// error, or nothing yet (`None`). Other datagrams are skipped.
fn udp_outcome(fd: &OwnedFd, port: u16, buf: &mut [u8]) -> Option<UdpOutcome> {
    let expected = udp_payload(port);
    loop {
        match recv(fd, buf) {
            Ok(n) if buf[..n] == expected[..] => return Some(UdpOutcome::Echoed),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => return Some(udp_error(&e)),
        }
    }
}

/// A socket error on a UDP probe, classified.
fn udp_error(e: &io::Error) -> UdpOutcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => UdpOutcome::Unreachable,
        errno => UdpOutcome::Error(errno.unwrap_or(0)),
    }
}

fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    sys::cvt_size(unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) })
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    sys::cvt_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
}
