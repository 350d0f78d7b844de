//! The connection to the Docker Engine API: list nodes and services, then
//! watch `/events` for node and service changes (each one triggers a
//! re-list), re-list every `resync_interval` anyway, and reconnect with
//! backoff when dockerd goes away. Every outcome is sent to the daemon,
//! which keeps serving the last good view while the Swarm is unreachable.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use bollard::{query_parameters::EventsOptions, Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use super::view::{NodeInfo, ServiceInfo, SwarmView};
use crate::source::config::SwarmConfig;

/// What the source tells the daemon.
#[derive(Debug)]
pub enum SwarmUpdate {
    /// A fresh, complete view.
    View(SwarmView),
    /// The API could not be reached or answered an error.
    Lost(String),
}

/// Where to connect: the config, else `DOCKER_HOST`, else the local socket.
fn docker_host(cfg: &SwarmConfig) -> String {
    cfg.docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// The TLS directory: the config, else `DOCKER_CERT_PATH` when
/// `DOCKER_TLS_VERIFY` is set.
fn tls_dir(cfg: &SwarmConfig) -> Option<PathBuf> {
    cfg.tls_cert_dir.clone().or_else(|| {
        std::env::var_os("DOCKER_TLS_VERIFY").and(std::env::var_os("DOCKER_CERT_PATH")).map(PathBuf::from)
    })
}

/// Connects and agrees on an API version with the daemon (older engines
/// refuse the client's newest version).
async fn connect(cfg: &SwarmConfig) -> Result<Docker> {
    let host = docker_host(cfg);
    const TIMEOUT_S: u64 = 10;
    let docker = match tls_dir(cfg) {
        Some(dir) if !host.starts_with("unix://") => Docker::connect_with_ssl(
            &host,
            &dir.join("key.pem"),
            &dir.join("cert.pem"),
            &dir.join("ca.pem"),
            TIMEOUT_S,
            API_DEFAULT_VERSION,
        ),
        _ if host.starts_with("unix://") => Docker::connect_with_unix(&host, TIMEOUT_S, API_DEFAULT_VERSION),
        _ => Docker::connect_with_http(&host, TIMEOUT_S, API_DEFAULT_VERSION),
    }
    .with_context(|| format!("connecting to {host}"))?;
    docker.negotiate_version().await.with_context(|| format!("talking to {host}"))
}

/// Lists nodes and services.
async fn list(docker: &Docker) -> Result<SwarmView> {
    let nodes = docker.list_nodes(None).await.context("listing nodes (is this a Swarm manager?)")?;
    let services = docker.list_services(None).await.context("listing services")?;
    Ok(SwarmView {
        nodes: nodes.iter().map(NodeInfo::from_api).collect(),
        services: services.iter().map(ServiceInfo::from_api).collect(),
    })
}

/// Runs until the receiver is gone.
pub async fn run(cfg: SwarmConfig, tx: UnboundedSender<SwarmUpdate>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(500);
    // A local socket is cheap to try: at most 10 s between attempts, so a
    // returning dockerd is in sync within about 10 s.
    const MAX_BACKOFF: Duration = Duration::from_secs(10);
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut synced = false;
        let err = match session(&cfg, &tx, &mut synced).await {
            Ok(()) => return,
            Err(e) => e,
        };
        if tx.send(SwarmUpdate::Lost(format!("{err:#}"))).is_err() {
            return;
        }
        // A session that got as far as a view was a success: the next
        // failure starts the backoff over.
        if synced {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: returns `Ok` only when the daemon is gone;
/// `synced` turns true once a view was sent.
async fn session(cfg: &SwarmConfig, tx: &UnboundedSender<SwarmUpdate>, synced: &mut bool) -> Result<()> {
    let docker = connect(cfg).await?;
    // Subscribe before listing, so no change falls between the two.
    let filters = HashMap::from([("type".to_owned(), vec!["node".to_owned(), "service".to_owned()])]);
    let mut events = docker.events(Some(EventsOptions { filters: Some(filters), ..Default::default() }));
    if tx.send(SwarmUpdate::View(list(&docker).await?)).is_err() {
        return Ok(());
    }
    *synced = true;
    info!(host = %docker_host(cfg), "watching the Swarm");
    let mut resync = tokio::time::interval(cfg.resync_interval);
    resync.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(e)) => {
                    debug!(kind = ?e.typ, action = ?e.action, "swarm event");
                    // A label change is a burst of events: take them all,
                    // then list once.
                    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(50), events.next()).await {}
                }
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("watching events")),
                None => anyhow::bail!("the event stream ended (dockerd restarting?)"),
            },
            _ = resync.tick() => {}
        }
        match list(&docker).await {
            Ok(view) => {
                debug!(nodes = view.nodes.len(), services = view.services.len(), "listed the Swarm");
                if tx.send(SwarmUpdate::View(view)).is_err() {
                    return Ok(());
                }
            }
            Err(e) => {
                warn!(error = format!("{e:#}"), "listing the Swarm failed");
                return Err(e);
            }
        }
    }
}
