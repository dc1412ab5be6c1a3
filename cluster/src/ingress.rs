//! The routing mesh's share of the replicated state: ingress ports are cluster-wide (every
//! node answers on them), so they are allocated and checked for conflicts when a service is
//! created or updated, and every node gets the same table of where each service's tasks answer.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::service::{
    object_id_string, Health, PortConfig, PublishMode, ServiceId, ServiceSpec, TaskId, TaskPort,
    TaskState,
};
use crate::{ClusterError, ClusterState, NodeId};

/// The range ingress ports without a number are given one from, as Swarm's.
pub const INGRESS_AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Where a service answers, as every node's mesh and name server need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    /// The service.
    pub id: ServiceId,
    /// Its name (what the name server answers for).
    pub name: String,
    /// Its ingress-mode ports (every node listens on `published`).
    pub ports: Vec<PortConfig>,
    /// Its running tasks.
    pub tasks: Vec<TaskEndpoint>,
}

/// A running task of a service, where it is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    /// The task.
    pub task: TaskId,
    /// Its node.
    pub node: NodeId,
    /// Its node's address (the IP of the node's advertised address).
    pub ip: String,
    /// The ports it answers on, on its node.
    pub ports: Vec<TaskPort>,
    /// Whether the mesh may send it connections: running, to keep running, and healthy (or
    /// without a check). A task being stopped is not ready: it is drained.
    pub ready: bool,
}

impl TaskEndpoint {
    /// The node port reaching `target` (over UDP or TCP) in this task, if it has one.
    pub fn port_for(&self, target: u16, udp: bool) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.target == target && p.udp == udp && p.published != 0)
            .map(|p| p.published)
    }
}

fn protocol(udp: bool) -> &'static str {
    if udp {
        "udp"
    } else {
        "tcp"
    }
}

impl ClusterState {
    /// Every service's endpoints, by name: the ingress table every node follows.
    pub fn endpoints(&self) -> Vec<ServiceEndpoints> {
        let mut out: Vec<ServiceEndpoints> = self
            .services()
            .keys()
            .filter_map(|id| self.service_endpoints(*id))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One service's endpoints: its ingress ports and its running tasks' addresses.
    pub fn service_endpoints(&self, id: ServiceId) -> Option<ServiceEndpoints> {
        let s = self.service(id)?;
        let tasks = self
            .tasks_of_service(s.id)
            .filter(|t| t.status.state == TaskState::Running)
            .filter_map(|t| {
                let node = t.node?;
                let ip = self
                    .node(node)
                    .and_then(|n| n.addr.parse::<std::net::SocketAddr>().ok())?
                    .ip()
                    .to_string();
                Some(TaskEndpoint {
                    task: t.id,
                    node,
                    ip,
                    ports: t.status.ports.clone(),
                    ready: t.desired == TaskState::Running
                        && matches!(t.status.health, Health::None | Health::Healthy),
                })
            })
            .collect();
        Some(ServiceEndpoints {
            id: s.id,
            name: s.spec.name.clone(),
            ports: ingress_ports(&s.spec).copied().collect(),
            tasks,
        })
    }

    /// Gives the ingress ports of `spec` without a number one (the number the service had
    /// for the same target, else the lowest free one of [`INGRESS_AUTO_PORTS`]), then refuses
    /// a port another service holds: an ingress port is every node's, so it conflicts with any
    /// other service's ingress port and with any host-mode port.
    pub(crate) fn place_ingress_ports(
        &self,
        spec: &mut ServiceSpec,
        except: Option<ServiceId>,
    ) -> Result<(), ClusterError> {
        let others = || self.services().values().filter(|s| Some(s.id) != except);
        let previous = except.and_then(|id| self.service(id));
        let mut taken: BTreeSet<(u16, bool)> = others()
            .flat_map(|s| s.spec.task.ports.iter())
            .map(|p| (p.published, p.udp))
            .collect();
        taken.extend(
            spec.task
                .ports
                .iter()
                .filter(|p| p.published != 0)
                .map(|p| (p.published, p.udp)),
        );
        for i in 0..spec.task.ports.len() {
            let p = spec.task.ports[i];
            if p.mode != PublishMode::Ingress || p.published != 0 {
                continue;
            }
            let kept = previous
                .into_iter()
                .flat_map(|s| ingress_ports(&s.spec))
                .find(|o| o.target == p.target && o.udp == p.udp)
                .map(|o| o.published)
                .filter(|n| !taken.contains(&(*n, p.udp)));
            let number = kept.or_else(|| {
                INGRESS_AUTO_PORTS
                    .clone()
                    .find(|n| !taken.contains(&(*n, p.udp)))
            });
            let Some(number) = number else {
                return Err(ClusterError::Invalid(format!(
                    "no free ingress port left in {}-{} for port {}/{}",
                    INGRESS_AUTO_PORTS.start(),
                    INGRESS_AUTO_PORTS.end(),
                    p.target,
                    protocol(p.udp)
                )));
            };
            spec.task.ports[i].published = number;
            taken.insert((number, p.udp));
        }
        for p in &spec.task.ports {
            for s in others() {
                let clash = s.spec.task.ports.iter().find(|o| {
                    o.published == p.published
                        && o.udp == p.udp
                        && (o.mode == PublishMode::Ingress || p.mode == PublishMode::Ingress)
                });
                if let Some(o) = clash {
                    return Err(ClusterError::Invalid(format!(
                        "port {}/{} is already in use by service {} ({}) as {} port",
                        p.published,
                        protocol(p.udp),
                        s.spec.name,
                        object_id_string(s.id),
                        match o.mode {
                            PublishMode::Ingress => "an ingress",
                            PublishMode::Host => "a host-mode",
                        }
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A spec's ingress-mode ports.
pub fn ingress_ports(spec: &ServiceSpec) -> impl Iterator<Item = &PortConfig> + '_ {
    spec.task
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
}
