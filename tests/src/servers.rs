//! Real listeners for the far end of a test: TCP servers that accept and
//! answer, UDP servers that echo. Each counts what it received per port, so
//! a test can check at the receiver that a dropped port saw nothing, not
//! merely that the sender got no answer.
//!
//! Sockets are created inside the namespace (through [`Netns::run`]) and
//! served by one background thread per server set, which stops when the
//! value is dropped (an eventfd wakes it; the sockets close with it).

use std::{
    collections::HashMap,
    io::{self, Write},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result};

use crate::{
    sys::{self, Epoll},
    Netns,
};

/// Per-port counters, fixed at start so the server thread needs no lock.
#[derive(Debug, Default)]
struct Counts {
    by_port: HashMap<u16, AtomicU64>,
}

impl Counts {
    fn bump(&self, port: u16) {
        if let Some(c) = self.by_port.get(&port) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn get(&self, port: u16) -> u64 {
        self.by_port.get(&port).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    fn total(&self) -> u64 {
        self.by_port.values().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// A socket bound to one address: IPv6 sockets are IPv6-only so that the
/// IPv4 and IPv6 sockets of a port never conflict or shadow each other.
fn bound_socket(addr: SocketAddr, ty: libc::c_int) -> Result<OwnedFd> {
    let fd = sys::socket(sys::family(addr.ip()), ty | libc::SOCK_NONBLOCK, 0)?;
    sys::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1i32)?;
    if addr.is_ipv6() {
        sys::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1i32)?;
    }
    sys::bind(&fd, addr).with_context(|| format!("bind {addr}"))?;
    Ok(fd)
}

/// The background thread of a server set and its stop switch.
#[derive(Debug)]
struct Runner {
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    /// Serves `fds` on a new thread: `on_ready(i)` runs when `fds[i]` is
    /// readable, until the runner is dropped.
    fn start<T: Send + 'static>(
        name: String,
        fds: Vec<T>,
        raw: impl Fn(&T) -> RawFd,
        mut on_ready: impl FnMut(&T) + Send + 'static,
    ) -> Result<Self> {
        let epoll = Epoll::new()?;
        let stop = Arc::new(sys::eventfd()?);
        let stop_token = fds.len() as u64;
        for (i, fd) in fds.iter().enumerate() {
            epoll.add(raw(fd), libc::EPOLLIN as u32, i as u64)?;
        }
        epoll.add(stop.as_raw_fd(), libc::EPOLLIN as u32, stop_token)?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
            loop {
                let Ok(n) = epoll.wait(&mut events, None) else { return };
                for ev in &events[..n] {
                    if ev.u64 == stop_token {
                        return; // drops the sockets with `fds`
                    }
                    on_ready(&fds[ev.u64 as usize]);
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        sys::eventfd_signal(&self.stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TCP listeners on every (address, port) pair. Each accepted connection
/// gets a one-line banner (`swarmlb-harness tcp/PORT`) and is closed.
#[derive(Debug)]
pub struct TcpListeners {
    counts: Arc<Counts>,
    addrs: Vec<SocketAddr>,
    _runner: Runner,
}

impl TcpListeners {
    /// Listens on each of `addrs` × `ports` inside `ns` (IPv4 and IPv6
    /// addresses each get their own socket).
    pub fn start(ns: &Netns, addrs: &[IpAddr], ports: &[u16]) -> Result<Self> {
        let wanted: Vec<SocketAddr> =
            addrs.iter().flat_map(|a| ports.iter().map(move |p| SocketAddr::new(*a, *p))).collect();
        let listeners = ns.run(move || -> Result<Vec<(TcpListener, u16)>> {
            wanted
                .into_iter()
                .map(|addr| {
                    let fd = bound_socket(addr, libc::SOCK_STREAM)?;
                    // A deep backlog: a scan may connect to all ports at once.
                    sys::cvt(unsafe { libc::listen(fd.as_raw_fd(), 4096) })?;
                    let port = sys::local_addr(&fd)?.port();
                    Ok((TcpListener::from(fd), port))
                })
                .collect()
        })?;
        let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect();
        let counts = Arc::new(Counts { by_port: listeners.iter().map(|(_, p)| (*p, AtomicU64::new(0))).collect() });
        let c = counts.clone();
        let runner = Runner::start(
            format!("tcp-{}", ns.name()),
            listeners,
            |(l, _)| l.as_raw_fd(),
            move |(listener, port)| {
                // Drain the accept queue; the socket is non-blocking.
                while let Ok((mut conn, _)) = listener.accept() {
                    c.bump(*port);
                    let _ = conn.set_nonblocking(true);
                    let _ = conn.write(format!("swarmlb-harness tcp/{port}\n").as_bytes());
                }
            },
        )?;
        Ok(Self { counts, addrs, _runner: runner })
    }

    /// Connections accepted on `port` (all addresses).
    pub fn accepted(&self, port: u16) -> u64 {
        self.counts.get(port)
    }

    /// Connections accepted on all ports.
    pub fn total(&self) -> u64 {
        self.counts.total()
    }

    /// The bound socket addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// UDP echo servers on every (address, port) pair: each datagram is sent
/// back unchanged to its sender and counted.
#[derive(Debug)]
pub struct UdpEcho {
    counts: Arc<Counts>,
    addrs: Vec<SocketAddr>,
    _runner: Runner,
}

impl UdpEcho {
    /// Binds each of `addrs` × `ports` inside `ns` and starts echoing.
    pub fn start(ns: &Netns, addrs: &[IpAddr], ports: &[u16]) -> Result<Self> {
        let wanted: Vec<SocketAddr> =
            addrs.iter().flat_map(|a| ports.iter().map(move |p| SocketAddr::new(*a, *p))).collect();
        let sockets = ns.run(move || -> Result<Vec<(UdpSocket, u16)>> {
            wanted
                .into_iter()
                .map(|addr| {
                    let fd = bound_socket(addr, libc::SOCK_DGRAM)?;
                    // Room for bursts (root may exceed rmem_max), so the
                    // echo server is never where a probe gets lost.
                    let _ = sys::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4i32 << 20);
                    let port = sys::local_addr(&fd)?.port();
                    Ok((UdpSocket::from(fd), port))
                })
                .collect()
        })?;
        let addrs: Vec<SocketAddr> = sockets.iter().filter_map(|(s, _)| s.local_addr().ok()).collect();
        let counts = Arc::new(Counts { by_port: sockets.iter().map(|(_, p)| (*p, AtomicU64::new(0))).collect() });
        let c = counts.clone();
        let mut buf = vec![0u8; 65536];
        let runner = Runner::start(
            format!("udp-{}", ns.name()),
            sockets,
            |(s, _)| s.as_raw_fd(),
            move |(sock, port)| loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        c.bump(*port);
                        let _ = sock.send_to(&buf[..n], from);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors for earlier echoes land here; keep going.
                    Err(_) => continue,
                }
            },
        )?;
        Ok(Self { counts, addrs, _runner: runner })
    }

    /// Datagrams received on `port` (all addresses).
    pub fn received(&self, port: u16) -> u64 {
        self.counts.get(port)
    }

    /// Datagrams received on all ports.
    pub fn total(&self) -> u64 {
        self.counts.total()
    }

    /// The bound socket addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}
