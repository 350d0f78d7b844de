//! What swarmlb reads of the Swarm: nodes and services, reduced to the
//! fields the mapping needs.

use std::collections::BTreeMap;

use bollard::models::{EndpointPortConfig, Node, Service};
use serde::{Deserialize, Serialize};

/// One Swarm node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// Status.State: `ready`, `down`, `disconnected` or `unknown` (what a
    /// manager says of every node until it has heard from it again after
    /// a restart or a leadership change).
    pub state: String,
    /// Spec.Availability: `active`, `pause` or `drain`.
    pub availability: String,
    /// Status.Addr (may be empty or `0.0.0.0`).
    pub addr: String,
    /// ManagerStatus.Addr (`host:port`), managers only.
    pub manager_addr: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The state a manager gives nodes it has not heard from since it started.
const UNKNOWN: &str = "unknown";

impl NodeInfo {
    /// Status.State is `ready`.
    pub fn ready(&self) -> bool {
        self.state == "ready"
    }
}

/// A published port of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortInfo {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// 0 when not (yet) assigned.
    pub published: u32,
    /// `ingress` or `host`.
    pub mode: String,
}

/// One Swarm service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// Placement constraints, as written (`node.labels.zone==intra`).
    pub constraints: Vec<String>,
    pub ports: Vec<PortInfo>,
}

/// The Swarm at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmView {
    pub nodes: Vec<NodeInfo>,
    pub services: Vec<ServiceInfo>,
}

impl SwarmView {
    /// Gives every node whose state is `unknown` its state in `previous`
    /// (the last good view), where it had one. A manager that restarts
    /// marks all nodes `unknown` until their agents report again (a few
    /// seconds): that says nothing about the nodes, and taking them all
    /// out would drain every backend at each manager restart. A node that
    /// is really gone turns `down` after the manager's grace period.
    pub fn carry_unknown_states(&mut self, previous: &SwarmView) {
        for n in self.nodes.iter_mut().filter(|n| n.state == UNKNOWN) {
            if let Some(p) = previous.nodes.iter().find(|p| p.id == n.id) {
                n.state.clone_from(&p.state);
            }
        }
    }
}

impl NodeInfo {
    /// From the Engine API's node.
    pub fn from_api(n: &Node) -> Self {
        let spec = n.spec.as_ref();
        let status = n.status.as_ref();
        Self {
            id: n.id.clone().unwrap_or_default(),
            hostname: n.description.as_ref().and_then(|d| d.hostname.clone()).unwrap_or_default(),
            role: spec.and_then(|s| s.role).map(|r| r.to_string()).unwrap_or_default(),
            state: status.and_then(|s| s.state).map(|s| s.to_string()).unwrap_or_else(|| UNKNOWN.into()),
            availability: spec.and_then(|s| s.availability).map(|a| a.to_string()).unwrap_or_default(),
            addr: status.and_then(|s| s.addr.clone()).unwrap_or_default(),
            manager_addr: n.manager_status.as_ref().and_then(|m| m.addr.clone()),
            labels: spec.and_then(|s| s.labels.clone()).unwrap_or_default().into_iter().collect(),
        }
    }
}

fn port(p: &EndpointPortConfig) -> PortInfo {
    PortInfo {
        protocol: p.protocol.map(|x| x.to_string()).unwrap_or_else(|| "tcp".into()),
        published: p.published_port.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        mode: p.publish_mode.map(|m| m.to_string()).unwrap_or_else(|| "ingress".into()),
    }
}

impl ServiceInfo {
    /// From the Engine API's service: the spec's ports and the ports Swarm
    /// assigned (an ingress port given without a number gets one).
    pub fn from_api(s: &Service) -> Self {
        let spec = s.spec.as_ref();
        let mut ports: Vec<PortInfo> = spec
            .and_then(|s| s.endpoint_spec.as_ref())
            .and_then(|e| e.ports.as_ref())
            .into_iter()
            .flatten()
            .chain(s.endpoint.as_ref().and_then(|e| e.ports.as_ref()).into_iter().flatten())
            .map(port)
            .filter(|p| p.published != 0)
            .collect();
        ports.sort();
        ports.dedup();
        Self {
            id: s.id.clone().unwrap_or_default(),
            name: spec.and_then(|s| s.name.clone()).unwrap_or_default(),
            constraints: spec
                .and_then(|s| s.task_template.as_ref())
                .and_then(|t| t.placement.as_ref())
                .and_then(|p| p.constraints.clone())
                .unwrap_or_default(),
            ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: &str) -> NodeInfo {
        NodeInfo { id: id.into(), state: state.into(), ..Default::default() }
    }

    #[test]
    fn unknown_states_keep_what_the_last_view_said() {
        let previous = SwarmView { nodes: vec![node("a", "ready"), node("b", "down"), node("c", "ready")], services: vec![] };
        let mut view = SwarmView {
            nodes: vec![node("a", "unknown"), node("b", "unknown"), node("c", "down"), node("new", "unknown")],
            services: vec![],
        };
        view.carry_unknown_states(&previous);
        let states: Vec<&str> = view.nodes.iter().map(|n| n.state.as_str()).collect();
        // Known states are news; a node never seen stays unknown (not ready).
        assert_eq!(states, ["ready", "down", "down", "unknown"]);
        assert!(view.nodes[0].ready() && !view.nodes[3].ready());
    }

    /// What dockerd 20.10 (API 1.41) answered for a service published in
    /// host mode and pinned to a zone.
    const SERVICE: &str = r#"{"ID":"km5mreiogaah97skz3hoh9nc5","Version":{"Index":13},"Spec":{"Name":"web","Labels":{},
      "TaskTemplate":{"ContainerSpec":{"Image":"busybox:latest"},"Placement":{"Constraints":["node.labels.zone==intra"]},"Runtime":"container"},
      "Mode":{"Replicated":{"Replicas":1}},
      "EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":8080,"PublishedPort":8080,"PublishMode":"host"}]}},
      "Endpoint":{"Spec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":8080,"PublishedPort":8080,"PublishMode":"host"}]},
      "Ports":[{"Protocol":"tcp","TargetPort":8080,"PublishedPort":8080,"PublishMode":"host"},{"Protocol":"udp","TargetPort":53,"PublishedPort":30053,"PublishMode":"ingress"}]}}"#;

    #[test]
    fn services_read_from_the_engine_api() {
        let s: Service = serde_json::from_str(SERVICE).unwrap();
        let info = ServiceInfo::from_api(&s);
        assert_eq!(info.name, "web");
        assert_eq!(info.constraints, ["node.labels.zone==intra"]);
        let ports: Vec<(&str, u32, &str)> = info.ports.iter().map(|p| (p.protocol.as_str(), p.published, p.mode.as_str())).collect();
        assert_eq!(ports, [("tcp", 8080, "host"), ("udp", 30053, "ingress")]);
    }
}
