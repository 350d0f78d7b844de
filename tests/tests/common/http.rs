//! HTTP clients of the end-to-end tests: who answered, keep-alive streams,
//! the metrics endpoint.

use std::net::{IpAddr, SocketAddr};

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
