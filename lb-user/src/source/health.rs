//! Health checks: each VIP's backends are probed with the VIP's settings
//! (TCP connect, or HTTP GET with an expected status), every interval, each
//! probe bounded by the timeout. A backend that fails `fall` probes in a row
//! is out (no new flows; its flows move); one that then passes `rise` in a
//! row is back. Every transition is logged and counted.
//!
//! Backends start *up*: a restarted agent or a freshly configured backend
//! keeps serving until probes say otherwise, rather than blacking out for
//! `rise × interval`.
//!
//! Probes also keep the kernel's neighbour entries for the backends fresh,
//! which the XDP program needs (it cannot resolve a MAC address itself).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::source::config::{BalancerConfig, HealthCheck, HealthProtocol};

/// One backend of one VIP.
pub type Target = (String, IpAddr);

/// The health of one target, shared between its probe task and readers.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    /// Up/down transitions since the agent started.
    pub transitions: AtomicU64,
    /// Why the last transition happened (empty before the first).
    reason: Mutex<String>,
}

impl Health {
    /// Whether new flows may go to the target.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The health checks' word to the reconciler: the backends taken out, as
/// (VIP name, address). Every other backend is up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Down(BTreeMap<String, BTreeSet<IpAddr>>);

impl Down {
    /// Whether `backend` of `vip` is down.
    pub fn contains(&self, vip: &str, backend: IpAddr) -> bool {
        self.0.get(vip).is_some_and(|b| b.contains(&backend))
    }
}

impl FromIterator<Target> for Down {
    fn from_iter<I: IntoIterator<Item = Target>>(iter: I) -> Self {
        let mut down = Self::default();
        for (vip, backend) in iter {
            down.0.entry(vip).or_default().insert(backend);
        }
        down
    }
}

/// Runs the probes of a config's VIPs; tells the daemon about transitions.
pub struct HealthChecks {
    states: Arc<Mutex<BTreeMap<Target, Arc<Health>>>>,
    tasks: BTreeMap<Target, (HealthCheck, JoinHandle<()>)>,
    changed: mpsc::UnboundedSender<()>,
}

impl HealthChecks {
    /// No probes yet; `changed` gets a message on every transition.
    pub fn new(changed: mpsc::UnboundedSender<()>) -> Self {
        Self { states: Arc::default(), tasks: BTreeMap::new(), changed }
    }

    /// Probes exactly the backends of `b` (with their VIP's settings):
    /// new targets start up, removed ones stop, changed settings restart
    /// the probe but keep the state. Must run inside a tokio runtime.
    pub fn follow(&mut self, b: Option<&BalancerConfig>) {
        let wanted: BTreeMap<Target, HealthCheck> = b
            .map(|b| b.vips.iter().flat_map(|v| v.backends.iter().map(move |be| ((v.name.clone(), be.address), v.health.clone()))).collect())
            .unwrap_or_default();
        self.tasks.retain(|target, (check, task)| {
            let keep = wanted.get(target) == Some(check);
            if !keep {
                task.abort();
            }
            keep
        });
        let mut states = self.states.lock().unwrap();
        states.retain(|t, _| wanted.contains_key(t));
        for (target, check) in wanted {
            if self.tasks.contains_key(&target) {
                continue;
            }
            let health = states
                .entry(target.clone())
                .or_insert_with(|| Arc::new(Health { up: AtomicBool::new(true), transitions: AtomicU64::new(0), reason: Mutex::default() }))
                .clone();
            let task = tokio::spawn(probe_loop(target.clone(), check.clone(), health, self.changed.clone()));
            self.tasks.insert(target, (check, task));
        }
    }

    /// Whether `backend` of `vip` may take new flows (unknown: up).
    pub fn is_up(&self, vip: &str, backend: IpAddr) -> bool {
        self.states.lock().unwrap().get(&(vip.to_string(), backend)).is_none_or(|h| h.is_up())
    }

    /// The backends that are down now.
    pub fn down(&self) -> Down {
        self.states.lock().unwrap().iter().filter(|(_, h)| !h.is_up()).map(|(t, _)| t.clone()).collect()
    }

    /// Why `backend` of `vip` last went out or came back (`None` before
    /// its first transition).
    pub fn reason(&self, vip: &str, backend: IpAddr) -> Option<String> {
        let states = self.states.lock().unwrap();
        let reason = states.get(&(vip.to_string(), backend))?.reason.lock().unwrap().clone();
        (!reason.is_empty()).then_some(reason)
    }

    /// Transitions of `backend` of `vip` so far.
    pub fn transitions(&self, vip: &str, backend: IpAddr) -> u64 {
        self.states.lock().unwrap().get(&(vip.to_string(), backend)).map_or(0, |h| h.transitions.load(Ordering::Relaxed))
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

async fn probe_loop(target: Target, check: HealthCheck, health: Arc<Health>, changed: mpsc::UnboundedSender<()>) {
    let (vip, backend) = target;
    let addr = SocketAddr::new(backend, check.port);
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = tokio::time::timeout(check.timeout, probe(addr, &check)).await.unwrap_or_else(|_| Err("timed out".into()));
        let up = health.is_up();
        match result {
            Ok(()) => {
                passes += 1;
                fails = 0;
                if !up && passes >= check.rise {
                    *health.reason.lock().unwrap() = format!("passed {passes} health checks in a row");
                    health.up.store(true, Ordering::Relaxed);
                    health.transitions.fetch_add(1, Ordering::Relaxed);
                    info!(vip = %vip, backend = %backend, passes, "backend healthy again: back in");
                    let _ = changed.send(());
                }
            }
            Err(why) => {
                fails += 1;
                passes = 0;
                if up && fails >= check.fall {
                    *health.reason.lock().unwrap() = format!("failed {fails} health checks in a row: {why}");
                    health.up.store(false, Ordering::Relaxed);
                    health.transitions.fetch_add(1, Ordering::Relaxed);
                    warn!(vip = %vip, backend = %backend, fails, reason = %why, "backend failed its health checks: out");
                    let _ = changed.send(());
                }
            }
        }
    }
}

/// One probe: `Err` says why it failed.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    if check.protocol == HealthProtocol::Tcp {
        return Ok(());
    }
    let host = match addr.ip() {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    };
    let request = format!("GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: swarmlb-health\r\nConnection: close\r\n\r\n", check.path);
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        let n = stream.read(&mut head[got..]).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    // "HTTP/1.1 200 ..."
    let line = String::from_utf8_lossy(&head[..got]);
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    if status != check.expected_status {
        return Err(format!("status {status}, expected {}", check.expected_status));
    }
    Ok(())
}

/// How long a failed backend takes to be out at most: `fall` probes, each
/// up to an interval apart and taking up to the timeout.
pub fn takeout_bound(check: &HealthCheck) -> Duration {
    check.interval * check.fall + check.timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(protocol: HealthProtocol, port: u16) -> HealthCheck {
        HealthCheck {
            protocol,
            port,
            path: "/ok".into(),
            expected_status: 200,
            interval: Duration::from_secs(3),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
        }
    }

    #[tokio::test]
    async fn tcp_and_http_probes_tell_up_from_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let answer = if String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ") { "200 OK" } else { "404 Not Found" };
                let _ = s.write_all(format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert_eq!(probe(addr, &check(HealthProtocol::Tcp, port)).await, Ok(()));
        assert_eq!(probe(addr, &check(HealthProtocol::Http, port)).await, Ok(()));
        let mut wrong = check(HealthProtocol::Http, port);
        wrong.path = "/missing".into();
        assert_eq!(probe(addr, &wrong).await, Err("status 404, expected 200".into()));
        let closed: SocketAddr = ([127, 0, 0, 1], 1).into();
        assert!(probe(closed, &check(HealthProtocol::Tcp, 1)).await.unwrap_err().starts_with("connect"));
    }
}
