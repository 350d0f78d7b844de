//! HTTP clients of the end-to-end tests: who answered, a check of
//! keep-alive streams ([`harness::stream`]), the metrics endpoint.

use std::net::{IpAddr, SocketAddr};

use harness::{
    stream::Stream,
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
