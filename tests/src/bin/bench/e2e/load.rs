//! The load generator: blocking sockets on std threads, bound to the
//! mode's own client address, targets rotated per connection.
//!
//! Threads are spawned from inside the client namespace (`Netns::run`):
//! a new thread inherits its creator's network namespace, so every socket
//! below belongs to the client.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::FromRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use harness::{tls::handshake, Netns};
use rustls::ClientConfig;

/// How long a connect or a read may take before the attempt counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The smallest HTTP exchange: nginx answers `worker=wN` with a length.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: a.com\r\nUser-Agent: swarmlb-bench\r\n\r\n";

/// Where one mode's connections go from and to.
#[derive(Clone)]
pub struct Targets {
    /// The mode's own client addresses.
    pub srcs: Vec<Ipv4Addr>,
    /// The three backends, or the one VIP.
    pub dsts: Vec<SocketAddrV4>,
}

impl Targets {
    /// Connection `n`'s source and destination: both rotated, so that the
    /// baseline (one source, three workers) and a VIP (three sources, one
    /// VIP) spread over the same number of address pairs, and the client's
    /// port allocation and TIME_WAIT reuse cost the same in every mode.
    fn pick(&self, n: usize) -> (Ipv4Addr, SocketAddrV4) {
        (self.srcs[n % self.srcs.len()], self.dsts[n % self.dsts.len()])
    }

    fn connect(&self, n: usize) -> io::Result<TcpStream> {
        let (src, dst) = self.pick(n);
        connect_from(src, dst)
    }
}

/// Connections (or handshakes) completed in a window.
pub struct Rate {
    pub done: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }
}

/// A TCP connection from `src` (port chosen at connect time, so ports in
/// TIME_WAIT towards other destinations are reused) with timeouts.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Owned from here: closed on every error path.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &one)?;
    // A blocking connect honours SO_SNDTIMEO: a lost SYN fails the attempt
    // instead of stalling a thread for the kernel's minute of retries.
    let tv = libc::timeval { tv_sec: IO_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    let (sa, len) = sockaddr_in(SocketAddrV4::new(src, 0));
    if unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (sa, len) = sockaddr_in(dst);
    if unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn setsockopt<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    if unsafe { libc::setsockopt(fd, level, name, value as *const T as *const libc::c_void, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_in(a: SocketAddrV4) -> (libc::sockaddr_in, libc::socklen_t) {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    };
    (sa, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
}

/// One request and its whole response (headers and `Content-Length` body);
/// returns the body.
pub fn exchange(s: &mut TcpStream) -> io::Result<String> {
    s.write_all(REQUEST)?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(body) = complete_body(&buf) {
            return Ok(body);
        }
    }
}

/// The body once headers and `Content-Length` bytes are in.
fn complete_body(buf: &[u8]) -> Option<String> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:"))?.trim().parse().ok()?;
    let body = buf.get(end + 4..end + 4 + len)?;
    Some(String::from_utf8_lossy(body).into_owned())
}

/// One short connection: connect, request, response, close (the client
/// closes first, so TIME_WAIT stays on the client, as with browsers).
fn one_connection(t: &Targets, n: usize) -> io::Result<()> {
    let mut s = t.connect(n)?;
    exchange(&mut s).map(drop)
}

/// Runs `work(n)` on `threads` threads in `ns` until `window` has passed;
/// counts what succeeded and failed.
fn saturate<F>(ns: &Netns, threads: usize, window: Duration, work: F) -> Rate
where
    F: Fn(usize) -> bool + Sync,
{
    let (done, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    ns.run(|| {
        std::thread::scope(|s| {
            for i in 0..threads {
                let (work, done, failed) = (&work, &done, &failed);
                s.spawn(move || {
                    let mut n = i;
                    while start.elapsed() < window {
                        let ok = work(n);
                        (if ok { done } else { failed }).fetch_add(1, Ordering::Relaxed);
                        n += threads;
                    }
                });
            }
        })
    });
    Rate { done: done.into_inner(), failed: failed.into_inner(), elapsed: start.elapsed() }
}

/// New connections per second with `threads` connections in flight.
pub fn connection_rate(ns: &Netns, t: &Targets, threads: usize, window: Duration) -> Rate {
    saturate(ns, threads, window, |n| one_connection(t, n).is_ok())
}

/// TLS 1.3 handshakes per second (rustls, SNI `a.com`, certificate verified).
pub fn handshake_rate(ns: &Netns, t: &Targets, tls: &Arc<ClientConfig>, threads: usize, window: Duration) -> Rate {
    saturate(ns, threads, window, |n| {
        t.connect(n).map_err(anyhow::Error::from).and_then(|s| handshake(s, tls, "a.com")).is_ok()
    })
}

/// Latencies of one client doing one thing at a time, µs.
pub struct Latencies {
    /// `connect()` returning (the SYN, SYN-ACK round trip and its handling).
    pub connect: Vec<f64>,
    /// One request/response on a kept-alive connection.
    pub request: Vec<f64>,
}

/// `count` sequential connects (each then used and closed), and `count`
/// requests on one kept-alive connection.
pub fn latencies(ns: &Netns, t: &Targets, count: usize) -> io::Result<Latencies> {
    ns.run(|| {
        let mut connect = Vec::with_capacity(count);
        for n in 0..count {
            let start = Instant::now();
            let mut s = t.connect(n)?;
            connect.push(start.elapsed().as_secs_f64() * 1e6);
            exchange(&mut s)?;
        }
        let mut s = t.connect(0)?;
        let mut request = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            exchange(&mut s)?;
            request.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(Latencies { connect, request })
    })
}

/// The `q` quantile (0..=1) of `v` (sorted here).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Connects through `t` until every destination answers and (for a VIP)
/// all three backends have been seen, or `deadline` passes: the mode's
/// rules are in place and neighbour entries are resolved before anything
/// is timed. Returns the backends seen.
pub fn warm_up(ns: &Netns, t: &Targets, backends: usize, deadline: Duration) -> anyhow::Result<Vec<String>> {
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut n = 0;
    let mut last_err = String::new();
    while start.elapsed() < deadline {
        let r = ns.run(|| t.connect(n).and_then(|mut s| exchange(&mut s)));
        n += 1;
        match r {
            Ok(body) => {
                let w = body.trim().trim_start_matches("worker=").to_owned();
                if !seen.contains(&w) {
                    seen.push(w);
                }
                if seen.len() >= backends && n >= 20 {
                    seen.sort();
                    return Ok(seen);
                }
            }
            Err(e) => {
                last_err = e.to_string();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    anyhow::bail!("after {deadline:?}: {} of {backends} backends answered (last error: {last_err})", seen.len())
}

/// Single-stream bulk throughput measured by the receiver (iperf3's
/// `sum_received`), Gbit/s.
pub fn bulk_gbits(ns: &Netns, src: Ipv4Addr, dst: SocketAddr, seconds: u32) -> anyhow::Result<f64> {
    let (host, port, secs, src) = (dst.ip().to_string(), dst.port().to_string(), seconds.to_string(), src.to_string());
    let out = ns.exec(&["iperf3", "-c", &host, "-p", &port, "-B", &src, "-t", &secs, "-J", "--connect-timeout", "2000"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no end.sum_received in iperf3's output: {}", v["error"]))?;
    Ok(bps / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_complete_with_its_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nworker=w1\n";
        assert_eq!(complete_body(r).as_deref(), Some("worker=w1\n"));
        assert_eq!(complete_body(&r[..r.len() - 1]), None);
        assert_eq!(complete_body(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"), None);
    }

    #[test]
    fn quantiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 51.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn sources_and_destinations_rotate_together() {
        let dst = |p| SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 11), p);
        let t = Targets { srcs: vec![Ipv4Addr::new(198, 51, 100, 20), Ipv4Addr::new(198, 51, 100, 21)], dsts: vec![dst(80)] };
        assert_eq!(t.pick(0).0, Ipv4Addr::new(198, 51, 100, 20));
        assert_eq!(t.pick(1), (Ipv4Addr::new(198, 51, 100, 21), dst(80)));
    }
}
