//! The bridge to `shoal-scheduler`: the cluster's nodes and tasks as a scheduler snapshot, and a
//! service's spec as a scheduler spec.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use shoal_cluster::{
    node_id_string, object_id_string, Availability, ClusterState, Node, NodeId, NodeState,
    PublishMode, Role, Runtime, Service, ServiceMode,
};
use shoal_scheduler as sched;

/// The scheduler's view of one node: its totals, and what the tasks on it hold (every task that
/// has not ended holds its reservation, even one told to stop).
pub fn scheduler_node(state: &ClusterState, node: &Node) -> sched::Node {
    let mut n = node_attributes(node);
    let mut per_service: BTreeMap<u64, u32> = BTreeMap::new();
    for t in state.tasks_on_node(node.id) {
        if t.status.state.is_terminal() {
            continue;
        }
        if t.status.state > shoal_cluster::TaskState::Pending {
            let spec = state
                .service(t.service)
                .and_then(|s| s.spec_of(t.spec_version));
            let r = spec
                .map(|s| s.task.resources.reservations)
                .unwrap_or_default();
            n.reserved.millicores += r.nano_cpus / 1_000_000;
            n.reserved.memory_bytes += r.memory_bytes;
            if let Some(s) = spec {
                n.used_ports.extend(host_ports(s));
            }
        }
        if t.wanted() {
            *per_service.entry(t.service).or_default() += 1;
        }
    }
    n.tasks_by_service = per_service
        .into_iter()
        .map(|(s, c)| (object_id_string(s), c))
        .collect();
    n
}

/// The scheduler's view of a node's own attributes (what constraints match on), without the
/// reservations and task counts of its tasks.
pub(crate) fn node_attributes(node: &Node) -> sched::Node {
    let mut n = sched::Node::new(
        &node_id_string(node.id),
        sched::Resources::new(
            node.description.resources.nano_cpus / 1_000_000,
            node.description.resources.memory_bytes,
        ),
    );
    n.hostname = node.description.hostname.clone();
    n.role = match node.role {
        Role::Manager => sched::Role::Manager,
        Role::Worker => sched::Role::Worker,
    };
    n.ip = node
        .addr
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    n.platform = sched::Platform::new(
        &node.description.platform.os,
        &node.description.platform.arch,
    );
    n.labels = node.labels.clone();
    n.state = if node.status.state == NodeState::Ready {
        sched::NodeState::Ready
    } else {
        sched::NodeState::Down
    };
    n.availability = match node.availability {
        Availability::Active => sched::Availability::Active,
        Availability::Pause => sched::Availability::Pause,
        Availability::Drain => sched::Availability::Drain,
    };
    n.runtimes = node
        .description
        .runtimes
        .iter()
        .map(|r| r.as_str())
        .collect();
    n
}

/// A service's placement rules as the scheduler takes them.
pub(crate) fn scheduler_spec(svc: &Service) -> Result<sched::ServiceSpec, String> {
    let spec = &svc.spec;
    let mode = match spec.mode {
        ServiceMode::Replicated { .. } => sched::Mode::Replicated,
        ServiceMode::Global => sched::Mode::Global,
    };
    let p = &spec.task.placement;
    let r = spec.task.resources.reservations;
    let mut s = sched::ServiceSpec::new(&object_id_string(svc.id), mode)
        .and_then(|s| s.with_constraints(&p.constraints))
        .and_then(|s| s.with_preferences(&p.preferences))
        .map_err(|e| e.to_string())?
        .with_reservation(sched::Resources::new(
            r.nano_cpus / 1_000_000,
            r.memory_bytes,
        ))
        .with_runtime(runtime_name(spec.task.runtime))
        .with_host_ports(host_ports(spec).collect());
    if p.max_replicas_per_node > 0 {
        s = s
            .with_max_replicas_per_node(u32::try_from(p.max_replicas_per_node).unwrap_or(u32::MAX))
            .map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// The node ports a task of `spec` binds (host-mode, a fixed port). TCP and UDP ports of one
/// number count as one: the scheduler keeps them apart no better than that.
fn host_ports(spec: &shoal_cluster::ServiceSpec) -> impl Iterator<Item = u16> + '_ {
    spec.task
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host && p.published != 0)
        .map(|p| p.published)
}

fn runtime_name(r: Runtime) -> &'static str {
    r.as_str()
}

/// The scheduler over every node of the state, and each node's index in it. The same view as
/// [`scheduler_node`] for every node, built from one pass over the tasks in id order instead of
/// a lookup per task of each node.
pub(crate) fn scheduler(state: &ClusterState) -> (sched::Scheduler, BTreeMap<NodeId, usize>) {
    let mut index = BTreeMap::new();
    let mut nodes: Vec<sched::Node> = Vec::with_capacity(state.nodes().len());
    for (i, n) in state.nodes().values().enumerate() {
        index.insert(n.id, i);
        nodes.push(node_attributes(n));
    }
    // Per node: tasks wanted per service. Reservations of a (service, spec version), looked up
    // once each.
    let mut per_service: Vec<BTreeMap<u64, u32>> = vec![BTreeMap::new(); nodes.len()];
    let mut reservations: BTreeMap<(u64, u64), (shoal_cluster::Resources, Vec<u16>)> =
        BTreeMap::new();
    for t in state.tasks().values() {
        let Some(&i) = t.node.and_then(|n| index.get(&n)) else {
            continue;
        };
        if t.status.state.is_terminal() {
            continue;
        }
        if t.status.state > shoal_cluster::TaskState::Pending {
            let (r, ports) = reservations
                .entry((t.service, t.spec_version))
                .or_insert_with(|| {
                    let spec = state
                        .service(t.service)
                        .and_then(|s| s.spec_of(t.spec_version));
                    (
                        spec.map(|s| s.task.resources.reservations)
                            .unwrap_or_default(),
                        spec.map(|s| host_ports(s).collect()).unwrap_or_default(),
                    )
                });
            let n = &mut nodes[i];
            n.reserved.millicores += r.nano_cpus / 1_000_000;
            n.reserved.memory_bytes += r.memory_bytes;
            n.used_ports.extend(ports.iter().copied());
        }
        if t.wanted() {
            *per_service[i].entry(t.service).or_default() += 1;
        }
    }
    for (n, counts) in nodes.iter_mut().zip(per_service) {
        n.tasks_by_service = counts
            .into_iter()
            .map(|(s, c)| (object_id_string(s), c))
            .collect();
    }
    (sched::Scheduler::new(nodes), index)
}
