//! The Prometheus endpoint: `GET /metrics` answers the text exposition
//! format, built from the same report `swarmlb status` prints (the state
//! file plus the kernel's counters), so the two never disagree. It reads
//! the maps through the daemon's own handles, so it keeps answering when
//! the pins are gone.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, error, info};

use crate::{
    observe::state::DaemonState,
    observe::status::{self, ReportMaps, StatusReport},
};

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes `# HELP` and `# TYPE` once, then the samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// The report in the text exposition format.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    type Per<'a> = (&'a str, &'a str, &'a str, fn(&crate::observe::status::BackendStatus) -> u64);
    let per_backend: [Per; 4] = [
        ("swarmlb_backend_packets_total", "counter", "Packets forwarded to the backend (client to backend).", |b| b.packets),
        ("swarmlb_backend_bytes_total", "counter", "Bytes forwarded to the backend (client to backend).", |b| b.bytes),
        ("swarmlb_backend_new_flows_total", "counter", "New flows the Maglev table gave the backend.", |b| b.new_flows),
        ("swarmlb_backend_health_transitions_total", "counter", "Times health checks took the backend out or brought it back.", |b| b.health_transitions),
    ];
    for (name, kind, help, get) in per_backend {
        f.head(name, kind, help);
        for v in &r.vips {
            for b in &v.backends {
                f.sample(name, &[("vip", &v.name), ("backend", &b.address)], get(b));
            }
        }
    }
    f.head("swarmlb_backend_up", "gauge", "1 when the backend passes its health checks.");
    f.head("swarmlb_backend_weight", "gauge", "The backend's weight (0: draining).");
    for v in &r.vips {
        for b in &v.backends {
            let l = [("vip", v.name.as_str()), ("backend", b.address.as_str())];
            f.sample("swarmlb_backend_up", &l, u8::from(b.up));
            f.sample("swarmlb_backend_weight", &l, b.weight);
        }
    }
    f.head("swarmlb_rule_packets_total", "counter", "Packets per VIP forwarding rule.");
    f.head("swarmlb_rule_new_flows_total", "counter", "New flows per VIP forwarding rule.");
    for v in &r.vips {
        for rule in &v.rules {
            let l = [("vip", v.name.as_str()), ("rule", rule.rule.as_str())];
            f.sample("swarmlb_rule_packets_total", &l, rule.packets);
            f.sample("swarmlb_rule_new_flows_total", &l, rule.new_flows);
        }
    }
    f.head("swarmlb_balancer_packets_total", "counter", "Balancer packets by outcome (forwarded, replies, drops by reason).");
    for (reason, n) in &r.balancer {
        f.sample("swarmlb_balancer_packets_total", &[("outcome", reason)], n);
    }
    f.head("swarmlb_flows", "gauge", "Flows in the flow table.");
    f.sample("swarmlb_flows", &[], r.flows);
    f.head("swarmlb_nat_entries", "gauge", "NAT entries held.");
    f.sample("swarmlb_nat_entries", &[], r.nat_entries);
    f.head("swarmlb_flow_table_capacity", "gauge", "Flows the flow table holds at most (flow_table_size; the least recently used are forgotten beyond).");
    f.sample("swarmlb_flow_table_capacity", &[], r.flow_capacity);
    f.head("swarmlb_nat_table_capacity", "gauge", "NAT entries the NAT table holds at most (nat_table_size; new nat flows are refused beyond).");
    f.sample("swarmlb_nat_table_capacity", &[], r.nat_capacity);
    f.head("swarmlb_snat_ports_capacity", "gauge", "SNAT ports each backend port may use (snat_ports).");
    f.sample("swarmlb_snat_ports_capacity", &[], r.snat_ports);
    f.head("swarmlb_snat_ports_in_use", "gauge", "SNAT ports in use per backend and backend port (new nat connections are refused at capacity).");
    for u in &r.snat_usage {
        f.sample("swarmlb_snat_ports_in_use", &[("backend", &u.backend), ("port", &u.port.to_string())], u.in_use);
    }
    f.head("swarmlb_isolator_passed_total", "counter", "Isolator packets passed, by reason.");
    for (reason, n) in &r.passed {
        f.sample("swarmlb_isolator_passed_total", &[("reason", reason)], n);
    }
    f.head("swarmlb_isolator_dropped_total", "counter", "Isolator packets dropped, by reason.");
    for (reason, n) in &r.dropped {
        f.sample("swarmlb_isolator_dropped_total", &[("reason", reason)], n);
    }
    f.head("swarmlb_protected_port_dropped_total", "counter", "Packets dropped per protected port (range).");
    for p in &r.ports {
        f.sample("swarmlb_protected_port_dropped_total", &[("port", &p.port)], p.dropped);
    }
    let a = &r.agent;
    f.head("swarmlb_agent_start_timestamp_seconds", "gauge", "Unix time the running agent started.");
    f.sample("swarmlb_agent_start_timestamp_seconds", &[], a.started);
    f.head("swarmlb_agent_adopted", "gauge", "1 when the agent took over a data path that was already running (a restart).");
    f.sample("swarmlb_agent_adopted", &[], u8::from(a.adopted));
    f.head("swarmlb_config_last_reload_successful", "gauge", "1 when the last load of the config file applied (0: a refused reload; the previous config runs).");
    f.sample("swarmlb_config_last_reload_successful", &[], u8::from(a.last_reload_ok));
    f.head("swarmlb_config_last_reload_success_timestamp_seconds", "gauge", "Unix time the config in force was applied.");
    f.sample("swarmlb_config_last_reload_success_timestamp_seconds", &[], a.last_reload_success);
    f.head("swarmlb_config_reloads_total", "counter", "SIGHUP reloads by result.");
    f.sample("swarmlb_config_reloads_total", &[("result", "success")], a.reloads_succeeded);
    f.sample("swarmlb_config_reloads_total", &[("result", "failed")], a.reloads_failed);
    f.head("swarmlb_pins_ok", "gauge", "1 when every map and link is pinned (0: a restart would not adopt the data path).");
    f.sample("swarmlb_pins_ok", &[], u8::from(a.pins_ok));
    f.head("swarmlb_pins_lost_total", "counter", "Times the pins were found missing.");
    f.sample("swarmlb_pins_lost_total", &[], a.pins_lost);
    if let Some(s) = &r.swarm {
        f.head("swarmlb_swarm_connected", "gauge", "1 while the Docker API answers (0: serving the last good state).");
        f.sample("swarmlb_swarm_connected", &[], u8::from(s.connected));
        f.head("swarmlb_swarm_last_sync_timestamp_seconds", "gauge", "Unix time of the last complete view of the Swarm.");
        f.sample("swarmlb_swarm_last_sync_timestamp_seconds", &[], s.last_sync.unwrap_or(0.0));
        f.head("swarmlb_swarm_syncs_total", "counter", "Complete views of the Swarm received.");
        f.sample("swarmlb_swarm_syncs_total", &[], s.syncs);
        f.head("swarmlb_swarm_failures_total", "counter", "Failed connections, lists and unusable views.");
        f.sample("swarmlb_swarm_failures_total", &[], s.failures);
        f.head("swarmlb_swarm_nodes", "gauge", "Nodes in the last good view.");
        f.sample("swarmlb_swarm_nodes", &[], s.nodes);
        f.head("swarmlb_swarm_skipped", "gauge", "Odd entries of the last view that were skipped (see the logs).");
        f.sample("swarmlb_swarm_skipped", &[], s.notes.len());
    }
    // `[bgp]` (issue 13): one gauge per VIP.
    if let Some(b) = &r.bgp {
        f.head("swarmlb_bgp_vip_announced", "gauge", "1 while the VIP's route is in bgp.table for BIRD to announce (a backend up, an outside interface up).");
        for v in &r.vips {
            let on = b.announced.iter().any(|a| a.to_string() == v.address);
            f.sample("swarmlb_bgp_vip_announced", &[("vip", &v.name), ("address", &v.address)], u8::from(on));
        }
    }
    out
}

/// Serves `GET /metrics` on `addr` until the task is dropped. A port that
/// cannot be bound is logged; the daemon runs on without metrics.
pub async fn serve(addr: SocketAddr, runtime_dir: PathBuf, maps: ReportMaps) {
    let maps = Arc::new(maps);
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(%addr, error = %e, "cannot listen for metrics; running without them");
            return;
        }
    };
    info!(%addr, "metrics at http://{addr}/metrics");
    loop {
        let Ok((sock, peer)) = listener.accept().await else { continue };
        let (dir, maps) = (runtime_dir.clone(), maps.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(sock, &dir, &maps).await {
                debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut sock: TcpStream, runtime_dir: &std::path::Path, maps: &ReportMaps) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request head, within 5 s and 8 KiB.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(buf.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, kind, body) = if !line.starts_with("GET ") {
        ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned())
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    } else {
        match DaemonState::read(runtime_dir).and_then(|state| status::report(state, maps)) {
            Ok(r) => ("200 OK", "text/plain; version=0.0.4", render(&r)),
            Err(e) => ("503 Service Unavailable", "text/plain", format!("{e:#}\n")),
        }
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
