//! Keeps the kernel's neighbour entries for backends resolved. The XDP
//! program takes next-hop MACs from the kernel's tables (`bpf_fib_lookup`)
//! and cannot start a resolution itself: a backend the edge never talked
//! to would see its first packets dropped (counted as `drop_no_neighbour`).
//! Opening a TCP connection to each backend — what a health check does —
//! makes the kernel resolve it and keeps the entry fresh.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use tracing::debug;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects to every `(backend, port)` once, in parallel threads; the
/// outcome does not matter, only that the kernel resolved the neighbour.
pub fn prime(targets: &[(IpAddr, u16)]) {
    let threads: Vec<_> = targets
        .iter()
        .map(|(addr, port)| {
            let to = SocketAddr::new(*addr, *port);
            std::thread::spawn(move || {
                let r = TcpStream::connect_timeout(&to, PROBE_TIMEOUT);
                debug!(backend = %to, ok = r.is_ok(), "neighbour probe");
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
