//! The Prometheus endpoint. `GET /metrics` answers the Prometheus text
//! format (0.0.4, what `promtool check metrics` lints), encoded by the
//! `prometheus-client` crate from the same report `swarmlb status` prints,
//! so the two never disagree; `GET /healthz` says whether the data path is
//! whole ([`crate::observe::healthz`]). The report is built from the
//! daemon's memory (the [`Published`] state, not the state file) and the
//! kernel's counters, read through the daemon's own map handles, so it
//! keeps answering when the pins are gone. HTTP is hyper's.
//!
//! Every family is listed in [`families`]: a new metric is one call there.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header::CONTENT_TYPE, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, error, info};

use crate::observe::{
    healthz,
    state::DaemonState,
    status::{self, ReportMaps, StatusReport},
};

/// The daemon's state as last applied, published by the agent each time
/// it writes the state file (`None` until the first config applied).
pub type Published = watch::Receiver<Option<DaemonState>>;

/// A sample's value: counts are integers (counters and most gauges),
/// timestamps are seconds with a fraction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Count(u64),
    Seconds(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Count(n)
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Self::Count(n.into())
    }
}
impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Self::Count(n as u64)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Count(b.into())
    }
}
impl From<f64> for Value {
    fn from(s: f64) -> Self {
        Self::Seconds(s)
    }
}

/// One metric family: its name as exposed (a counter's ends in `_total`),
/// help, type and samples (label pairs in exposition order, value).
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    /// Adds one sample.
    fn sample(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) -> &mut Self {
        self.samples.push((labels.iter().map(|&(k, v)| (k, v.to_owned())).collect(), value.into()));
        self
    }
}

/// The families of one scrape, in order.
#[derive(Debug, Default)]
struct Families(Vec<Family>);

impl Families {
    fn add(&mut self, name: &'static str, kind: MetricType, help: &'static str) -> &mut Family {
        debug_assert!((kind == MetricType::Counter) == name.ends_with("_total"), "{name}: counters, and only they, end in _total");
        self.0.push(Family { name, help, kind, samples: Vec::new() });
        self.0.last_mut().expect("just pushed")
    }
    fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.add(name, MetricType::Counter, help)
    }
    fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.add(name, MetricType::Gauge, help)
    }
}

/// Every family the endpoint exposes, from one report: the one place a
/// metric is defined.
pub fn families(r: &StatusReport) -> Vec<Family> {
    let mut f = Families::default();
    f.gauge("swarmlb_build_info", "The running swarmlb's version and the commit it was built from (always 1).")
        .sample(&[("version", env!("CARGO_PKG_VERSION")), ("commit", env!("SWARMLB_COMMIT"))], 1u64);
    type PerBackend = (&'static str, MetricType, &'static str, fn(&status::BackendStatus) -> Value);
    let per_backend: [PerBackend; 6] = [
        ("swarmlb_backend_packets_total", MetricType::Counter, "Packets forwarded to the backend (client to backend).", |b| b.packets.into()),
        ("swarmlb_backend_bytes_total", MetricType::Counter, "Bytes forwarded to the backend (client to backend).", |b| b.bytes.into()),
        ("swarmlb_backend_new_flows_total", MetricType::Counter, "New flows the Maglev table gave the backend.", |b| b.new_flows.into()),
        (
            "swarmlb_backend_health_transitions_total",
            MetricType::Counter,
            "Times health checks took the backend out or brought it back.",
            |b| b.health_transitions.into(),
        ),
        ("swarmlb_backend_up", MetricType::Gauge, "1 when the backend passes its health checks.", |b| b.up.into()),
        ("swarmlb_backend_weight", MetricType::Gauge, "The backend's weight (0: draining).", |b| b.weight.into()),
    ];
    for (name, kind, help, get) in per_backend {
        let fam = f.add(name, kind, help);
        for v in &r.vips {
            for b in &v.backends {
                fam.sample(&[("vip", &v.name), ("backend", &b.address)], get(b));
            }
        }
    }
    let healthy = f.gauge("swarmlb_vip_backends_up", "Backends of the VIP that are up with a weight above 0 (0: the VIP answers nobody).");
    for v in &r.vips {
        healthy.sample(&[("vip", &v.name)], v.backends.iter().filter(|b| b.up && b.weight > 0).count());
    }
    type PerRule = (&'static str, &'static str, fn(&status::RuleStatus) -> u64);
    let rule_counters: [PerRule; 2] = [
        ("swarmlb_rule_packets_total", "Packets per VIP forwarding rule.", |r| r.packets),
        ("swarmlb_rule_new_flows_total", "New flows per VIP forwarding rule.", |r| r.new_flows),
    ];
    for (name, help, get) in rule_counters {
        let fam = f.counter(name, help);
        for v in &r.vips {
            for rule in &v.rules {
                fam.sample(&[("vip", &v.name), ("rule", &rule.rule)], get(rule));
            }
        }
    }
    let fam = f.counter(
        "swarmlb_firewall_drops_total",
        "Packets a VIP's firewall dropped, per rule (action deny: the longest deny prefix holding the source; not_allowed: outside the allow list).",
    );
    for v in &r.vips {
        for fw in v.firewall.iter().filter(|fw| fw.action != "allow") {
            fam.sample(&[("vip", &v.name), ("rule", &fw.prefix), ("action", &fw.action)], fw.drops);
        }
    }
    let fam = f.counter("swarmlb_balancer_packets_total", "Balancer packets by outcome (forwarded, replies, drops by reason).");
    for (outcome, n) in &r.balancer {
        fam.sample(&[("outcome", outcome)], *n);
    }
    f.gauge("swarmlb_flows", "Flows in the flow table.").sample(&[], r.flows);
    f.gauge("swarmlb_nat_entries", "NAT entries held.").sample(&[], r.nat_entries);
    f.gauge("swarmlb_flow_table_capacity", "Flows the flow table holds at most (flow_table_size; the least recently used are forgotten beyond).")
        .sample(&[], r.flow_capacity);
    f.gauge("swarmlb_nat_table_capacity", "NAT entries the NAT table holds at most (nat_table_size; new nat flows are refused beyond).")
        .sample(&[], r.nat_capacity);
    f.gauge("swarmlb_snat_ports_capacity", "SNAT ports each backend port may use (snat_ports).").sample(&[], r.snat_ports);
    let fam = f.gauge("swarmlb_snat_ports_in_use", "SNAT ports in use per backend and backend port (new nat connections are refused at capacity).");
    for u in &r.snat_usage {
        fam.sample(&[("backend", &u.backend), ("port", &u.port.to_string())], u.in_use);
    }
    let fam = f.counter("swarmlb_isolator_passed_total", "Isolator packets passed, by reason.");
    for (reason, n) in &r.passed {
        fam.sample(&[("reason", reason)], *n);
    }
    let fam = f.counter("swarmlb_isolator_dropped_total", "Isolator packets dropped, by reason.");
    for (reason, n) in &r.dropped {
        fam.sample(&[("reason", reason)], *n);
    }
    let fam = f.counter("swarmlb_protected_port_dropped_total", "Packets dropped per protected port (range).");
    for p in &r.ports {
        fam.sample(&[("port", &p.port)], p.dropped);
    }
    let a = &r.agent;
    f.gauge("swarmlb_agent_start_timestamp_seconds", "Unix time the running agent started.").sample(&[], a.started);
    f.gauge("swarmlb_agent_adopted", "1 when the agent took over a data path that was already running (a restart).").sample(&[], a.adopted);
    f.gauge("swarmlb_config_last_reload_successful", "1 when the last load of the config file applied (0: a refused reload; the previous config runs).")
        .sample(&[], a.last_reload_ok);
    f.gauge("swarmlb_config_last_reload_success_timestamp_seconds", "Unix time the config in force was applied.").sample(&[], a.last_reload_success);
    f.counter("swarmlb_config_reloads_total", "SIGHUP reloads by result.")
        .sample(&[("result", "success")], a.reloads_succeeded)
        .sample(&[("result", "failed")], a.reloads_failed);
    f.gauge("swarmlb_pins_ok", "1 when every map and link is pinned (0: a restart would not adopt the data path).").sample(&[], a.pins_ok);
    f.counter("swarmlb_pins_lost_total", "Times the pins were found missing.").sample(&[], a.pins_lost);
    if let Some(s) = &r.swarm {
        f.gauge("swarmlb_swarm_connected", "1 while the Docker API answers (0: serving the last good state).").sample(&[], s.connected);
        f.gauge("swarmlb_swarm_last_sync_timestamp_seconds", "Unix time of the last complete view of the Swarm.").sample(&[], s.last_sync.unwrap_or(0.0));
        f.counter("swarmlb_swarm_syncs_total", "Complete views of the Swarm received.").sample(&[], s.syncs);
        f.counter("swarmlb_swarm_failures_total", "Failed connections, lists and unusable views.").sample(&[], s.failures);
        f.gauge("swarmlb_swarm_nodes", "Nodes in the last good view.").sample(&[], s.nodes);
        f.gauge("swarmlb_swarm_skipped", "Odd entries of the last view: skipped, or a bad weight label whose last good weight is kept (see the logs).")
            .sample(&[], s.notes.len());
        let fam = f.gauge("swarmlb_swarm_node_allowed", "1 per Swarm node address the isolator's node allow-list holds.");
        for n in &s.allowed_nodes {
            fam.sample(&[("address", &n.to_string())], 1u64);
        }
    }
    // `[bgp]`: one gauge per VIP.
    if let Some(b) = &r.bgp {
        let fam = f.gauge("swarmlb_bgp_vip_announced", "1 while the VIP's route is in bgp.table for BIRD to announce (a backend up, an outside interface up).");
        for v in &r.vips {
            let on = b.announced.iter().any(|a| a.to_string() == v.address);
            fam.sample(&[("vip", &v.name), ("address", &v.address)], u64::from(on));
        }
    }
    f.0
}

/// The families of one scrape, handed to `prometheus-client`'s encoder.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in &self.0 {
            // The encoder adds a counter's `_total` itself.
            let name = if fam.kind == MetricType::Counter { fam.name.strip_suffix("_total").unwrap_or(fam.name) } else { fam.name };
            let mut metric = encoder.encode_descriptor(name, fam.help, None, fam.kind)?;
            for (labels, value) in &fam.samples {
                let mut sample = metric.encode_family(labels)?;
                match (fam.kind, *value) {
                    (MetricType::Counter, Value::Count(n)) => sample.encode_counter::<NoLabelSet, _, u64>(&n, None)?,
                    (MetricType::Counter, Value::Seconds(s)) => sample.encode_counter::<NoLabelSet, _, u64>(&s, None)?,
                    (_, Value::Count(n)) => sample.encode_gauge(&n)?,
                    (_, Value::Seconds(s)) => sample.encode_gauge(&s)?,
                }
            }
        }
        Ok(())
    }
}

/// The report in the Prometheus text format.
pub fn render(r: &StatusReport) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(families(r))));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// What the endpoint reads: the published state and the maps.
struct Source {
    state: Published,
    maps: ReportMaps,
}

impl Source {
    fn report(&self) -> anyhow::Result<StatusReport> {
        let state = self.state.borrow().clone().ok_or_else(|| anyhow::anyhow!("the first config is not applied yet"))?;
        status::report(state, &self.maps)
    }
}

/// Binds the endpoint's socket (before the runtime serves it: connections
/// wait in the backlog meanwhile).
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` ([`listen`])
/// until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, state: Published, maps: ReportMaps) {
    let source = Arc::new(Source { state, maps });
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot serve metrics; running without them");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics at http://{addr}/metrics, health at http://{addr}/healthz");
    }
    loop {
        let Ok((sock, peer)) = listener.accept().await else { continue };
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(&source, &req).await) }
            });
            // A client that sends no request head in 5 s is let go.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(sock), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection failed");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, content_type.parse().expect("a valid header value"));
    resp
}

async fn answer(source: &Source, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" | "/" => match source.report() {
            Ok(r) => text(StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, render(&r)),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{e:#}\n")),
        },
        "/healthz" => {
            let verdict = match source.report() {
                Ok(r) => healthz::check(&r).await,
                Err(e) => Err(format!("{e:#}")),
            };
            match verdict {
                Ok(fine) => text(StatusCode::OK, PLAIN, format!("ok: {fine}\n")),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("unhealthy: {why}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "try /metrics or /healthz\n".into()),
    }
}
