//! A UDP service that answers requests and ignores anything else, the way
//! a DNS server drops datagrams that do not parse: a flood of garbage from
//! forged sources gets no answer, a client's request gets its echo.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::Netns;

/// What a request starts with; the rest is echoed with it.
pub const MAGIC: &[u8] = b"SWLQ";

/// The service on every (address, port) pair of one namespace; stopped
/// on drop.
pub struct UdpService {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    ignored: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpService {
    /// Binds `addrs` × `ports` in `ns` and serves.
    pub fn start(ns: &Netns, addrs: &[IpAddr], ports: &[u16]) -> Result<Self> {
        let wanted: Vec<SocketAddr> = addrs.iter().flat_map(|a| ports.iter().map(move |p| SocketAddr::new(*a, *p))).collect();
        let sockets = ns.run(move || -> Result<Vec<UdpSocket>> {
            wanted.iter().map(|a| UdpSocket::bind(a).with_context(|| format!("bind UDP {a}"))).collect()
        })?;
        let (stop, answered, ignored) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut threads = Vec::new();
        for sock in sockets {
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (stop, answered, ignored) = (stop.clone(), answered.clone(), ignored.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                    if buf[..n].starts_with(MAGIC) {
                        let _ = sock.send_to(&buf[..n], from);
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ignored.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Self { stop, answered, ignored, threads })
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Datagrams ignored (not requests) so far.
    pub fn ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }
}

impl Drop for UdpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
