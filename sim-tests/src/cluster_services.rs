//! The services part of `cluster-sim`: a workload of service changes made through the control
//! API (as the CLI makes them) while the simulation injects faults, a record of what was
//! acknowledged, and the check that the cluster converged to it — in the leader's replicated
//! state and on the simulated machines ([`SimExecutor`]s).

use std::collections::{BTreeMap, BTreeSet};

use shoal_agent::api::{Request, Response};
use shoal_agent::sim_executor::SimExecutor;
use shoal_cluster::{
    Availability, ClusterState, FailureAction, NodeId, NodeState, RestartCondition, ServiceMode,
    ServiceSpec, TaskState, UpdateOrder, UpdateState,
};

use crate::agent_hosts::{call, name, Shared};
use crate::rng::Rng;

/// Most services alive at once (created and not removed).
const MAX_SERVICES: usize = 12;

/// A task of a reserving service reserves this share of a node's memory…
const RESERVE_SHARE: u64 = 10;

/// …and the reserving services together never ask for more than this many shares (the nodes
/// hold `RESERVE_SHARE` each): every task fits somewhere once all nodes are back, whatever the
/// placement.
const RESERVE_BUDGET: u64 = 40;

/// Restart attempts of a failing service.
pub const FAILING_ATTEMPTS: u64 = 2;

/// What a service's tasks do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Runs until stopped.
    LongRunning,
    /// `sim-exit 1 500`, restarted on failure at most [`FAILING_ATTEMPTS`] times: settles failed.
    Failing,
    /// `sim-exit 0 300`, never restarted: settles complete.
    Completing,
}

/// One service of the workload.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// Its name (`s0`, `s1`, …; never reused).
    pub name: String,
    /// What its tasks do.
    pub kind: Kind,
    /// The spec after the last acknowledged change; `None`: not created (the creation was not
    /// acknowledged) or removed.
    pub acked: Option<ServiceSpec>,
    /// A change that was not acknowledged (it may or may not be applied, now or later): what it
    /// would leave (`None`: removed). The service gets no further change once it has one.
    pub uncertain: Option<Option<ServiceSpec>>,
}

impl Tracked {
    /// The outcomes allowed in the final state.
    fn allowed(&self) -> Vec<&Option<ServiceSpec>> {
        let mut v = vec![&self.acked];
        if let Some(u) = &self.uncertain {
            v.push(u);
        }
        v
    }

    /// Memory shares its tasks may reserve, in the worst outcome.
    fn shares(&self) -> u64 {
        self.allowed()
            .into_iter()
            .flatten()
            .map(|s| {
                if s.task.resources.reservations.memory_bytes > 0 {
                    s.replicas().unwrap_or(crate::cluster_sim::NODES as u64)
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0)
    }
}

/// Counts of the workload.
#[derive(Clone, Debug, Default)]
pub struct ServiceFigures {
    /// Service creations acknowledged.
    pub created: usize,
    /// Updates (spec changes and scaling) acknowledged.
    pub updated: usize,
    /// Removals acknowledged.
    pub removed: usize,
    /// Service requests not acknowledged (refused, failed or unanswered).
    pub unacked: usize,
}

/// The service workload: what it asked for and what was acknowledged.
pub struct Workload {
    /// Every service ever asked for, in order.
    pub services: Vec<Tracked>,
    /// Memory of a node, as its description reports it (0: no reservations).
    pub node_memory: u64,
    /// Counts.
    pub figures: ServiceFigures,
    next_value: u64,
}

/// Whether an error means the request was certainly not applied.
fn certainly_refused(message: &str) -> bool {
    message.contains("not a swarm manager")
}

impl Workload {
    /// A workload for nodes of `node_memory` bytes.
    pub fn new(node_memory: u64) -> Self {
        Workload {
            services: Vec::new(),
            node_memory,
            figures: ServiceFigures::default(),
            next_value: 0,
        }
    }

    fn live(&self) -> usize {
        self.services
            .iter()
            .filter(|t| t.allowed().iter().any(|s| s.is_some()))
            .count()
    }

    fn shares_in_use(&self) -> u64 {
        self.services.iter().map(Tracked::shares).sum()
    }

    /// A new spec for service number `n`.
    fn new_spec(&self, n: usize, rng: &mut Rng) -> (Kind, ServiceSpec) {
        let name = format!("s{n}");
        let roll = rng.below(20);
        let kind = match roll {
            0..=2 => Kind::Failing,
            3..=5 => Kind::Completing,
            _ => Kind::LongRunning,
        };
        let mut spec = match kind {
            Kind::LongRunning => ServiceSpec::new(&name, "sleeper", 1 + rng.below(8)),
            Kind::Failing => {
                let mut s = ServiceSpec::new(&name, "sim-exit", 1 + rng.below(3));
                s.task.args = vec!["1".into(), "500".into()];
                s.task.restart.condition = RestartCondition::OnFailure;
                s.task.restart.max_attempts = FAILING_ATTEMPTS;
                s
            }
            Kind::Completing => {
                let mut s = ServiceSpec::new(&name, "sim-exit", 1 + rng.below(3));
                s.task.args = vec!["0".into(), "300".into()];
                s.task.restart.condition = RestartCondition::None;
                s
            }
        };
        if kind == Kind::LongRunning {
            if rng.below(4) == 0 {
                spec.mode = ServiceMode::Global;
            } else if self.node_memory > 0 && rng.below(5) < 2 {
                spec.task.resources.reservations.memory_bytes = self.node_memory / RESERVE_SHARE;
            }
        }
        // No restart delay: the agent measures restart delays on the wall clock (`now_ms`,
        // SystemTime), which turmoil does not simulate, so a delayed restart would wait for real
        // seconds while the simulated convergence window passes in less (see the README).
        spec.task.restart.delay_ms = 0;
        spec.task.stop_grace_ms = 1000;
        // Updates roll out with any parallelism and either order. They go on past failures
        // (a task pending behind a partition for the monitor period counts as one): pausing is
        // the operator's safety, and a paused update would leave acknowledged specs unapplied.
        spec.update.parallelism = rng.below(4);
        spec.update.failure_action = FailureAction::Continue;
        spec.update.monitor_ms = 1000;
        if spec.task.resources.reservations.memory_bytes == 0 && rng.below(2) == 0 {
            // Start-first needs room for both tasks of a slot: not with reservations, whose
            // budget counts one task per slot.
            spec.update.order = UpdateOrder::StartFirst;
        }
        (kind, spec)
    }

    /// One random change, through the agent on host `via`. Returns false if there was nothing
    /// to do.
    pub async fn step(&mut self, shared: &Shared, via: &str, rng: &mut Rng) -> bool {
        let changeable: Vec<usize> = (0..self.services.len())
            .filter(|&i| self.services[i].uncertain.is_none() && self.services[i].acked.is_some())
            .collect();
        let roll = rng.below(10);
        if changeable.is_empty() || (roll < 3 && self.live() < MAX_SERVICES) {
            if self.live() >= MAX_SERVICES {
                return false;
            }
            return self.create(shared, via, rng).await;
        }
        let i = changeable[rng.below(changeable.len() as u64) as usize];
        let Some(current) = self.services[i].acked.clone() else {
            return false;
        };
        let mut spec = current.clone();
        let removal = roll == 9;
        if !removal {
            match (spec.mode, rng.below(2)) {
                (ServiceMode::Replicated { .. }, 0) => {
                    spec.mode = ServiceMode::Replicated {
                        replicas: 1 + rng.below(8),
                    };
                }
                _ => {
                    self.next_value += 1;
                    if rng.below(2) == 0 || self.services[i].kind != Kind::LongRunning {
                        spec.task.env = vec![format!("V={}", self.next_value)];
                    } else {
                        spec.task.args = vec![format!("--v{}", self.next_value)];
                    }
                }
            }
            // Keep the reservations within the budget.
            let was = self.services[i].shares();
            let mut t = self.services[i].clone();
            t.acked = Some(spec.clone());
            if self.shares_in_use() - was + t.shares().max(was) > RESERVE_BUDGET {
                return false;
            }
        }
        let req = if removal {
            Request::ServiceRemove {
                service: current.name.clone(),
            }
        } else {
            let inspect = Request::ServiceInspect {
                service: current.name.clone(),
            };
            let version = match call(shared, via, inspect, TIMEOUT).await {
                Some(Response::Service { service }) => service.version,
                _ => {
                    self.figures.unacked += 1;
                    return true;
                }
            };
            Request::ServiceUpdate {
                service: current.name.clone(),
                version,
                spec: spec.clone(),
            }
        };
        let after = (!removal).then_some(spec);
        let t = &mut self.services[i];
        match call(shared, via, req, TIMEOUT).await {
            Some(Response::Ok { .. }) => {
                t.acked = after;
                if removal {
                    self.figures.removed += 1;
                } else {
                    self.figures.updated += 1;
                }
            }
            Some(Response::Error { message }) if certainly_refused(&message) => {
                self.figures.unacked += 1;
            }
            _ => {
                t.uncertain = Some(after);
                self.figures.unacked += 1;
            }
        }
        true
    }

    async fn create(&mut self, shared: &Shared, via: &str, rng: &mut Rng) -> bool {
        let n = self.services.len();
        let (kind, spec) = self.new_spec(n, rng);
        let mut t = Tracked {
            name: spec.name.clone(),
            kind,
            acked: None,
            uncertain: Some(Some(spec.clone())),
        };
        if self.shares_in_use() + t.shares() > RESERVE_BUDGET {
            return false;
        }
        let req = Request::ServiceCreate { spec: spec.clone() };
        match call(shared, via, req, TIMEOUT).await {
            Some(Response::Ok { .. }) => {
                t.acked = Some(spec);
                t.uncertain = None;
                self.figures.created += 1;
            }
            Some(Response::Error { message }) if certainly_refused(&message) => {
                t.uncertain = None;
                self.figures.unacked += 1;
            }
            _ => self.figures.unacked += 1,
        }
        self.services.push(t);
        true
    }

    /// Why the cluster has not converged to what was acknowledged, if it has not: `state` is
    /// the leader's, `machines[i]` host `i`'s simulated machine. On success, the running tasks
    /// (task id → node).
    pub fn check(
        &self,
        state: &ClusterState,
        machines: &[SimExecutor],
    ) -> Result<BTreeMap<u64, NodeId>, String> {
        // Every node is back and Ready.
        let mut node_of_host: Vec<NodeId> = Vec::new();
        for i in 0..machines.len() {
            let n = state
                .nodes()
                .values()
                .find(|n| n.description.hostname == name(i))
                .ok_or_else(|| format!("{} is not in the state", name(i)))?;
            if n.status.state != NodeState::Ready {
                return Err(format!("{} is {}", name(i), n.status.state));
            }
            node_of_host.push(n.id);
        }
        let ready: BTreeSet<NodeId> = state
            .nodes()
            .values()
            .filter(|n| n.status.state == NodeState::Ready)
            .map(|n| n.id)
            .collect();
        let eligible: BTreeSet<NodeId> = state
            .nodes()
            .values()
            .filter(|n| {
                n.status.state == NodeState::Ready && n.availability == Availability::Active
            })
            .map(|n| n.id)
            .collect();
        let host_of = |node: NodeId| {
            node_of_host
                .iter()
                .position(|&n| n == node)
                .map_or_else(|| format!("node {node:016x}"), name)
        };
        // (a) Every acknowledged change is applied.
        let by_name: BTreeMap<&str, &shoal_cluster::Service> = state
            .services()
            .values()
            .map(|s| (s.spec.name.as_str(), s))
            .collect();
        let tracked: BTreeMap<&str, &Tracked> =
            self.services.iter().map(|t| (t.name.as_str(), t)).collect();
        for t in &self.services {
            let found = by_name.get(t.name.as_str()).map(|s| &s.spec);
            if !t.allowed().iter().any(|a| a.as_ref() == found) {
                let show = |s: Option<&ServiceSpec>| match s {
                    None => "absent".to_string(),
                    Some(s) => format!(
                        "{} replicas, args {:?}, env {:?}",
                        s.replicas().map_or("global".into(), |r| r.to_string()),
                        s.task.args,
                        s.task.env
                    ),
                };
                return Err(format!(
                    "service {}: the state has it {}, but the last acknowledged change left it \
                     {}{}",
                    t.name,
                    show(found),
                    show(t.acked.as_ref()),
                    match &t.uncertain {
                        Some(u) => format!(" (or, unacknowledged, {})", show(u.as_ref())),
                        None => String::new(),
                    }
                ));
            }
        }
        for name in by_name.keys() {
            if !tracked.contains_key(name) {
                return Err(format!("service {name} was never asked for"));
            }
        }
        // An update never pauses here (failure action continue), and a rolled-out spec of a
        // long-running service completes or is still being watched.
        for svc in state.services().values() {
            if let Some(u) = &svc.update_status {
                if matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused)
                    || u.state.is_rollback()
                {
                    return Err(format!(
                        "service {}: update {} ({})",
                        svc.spec.name,
                        u.state.name(),
                        u.message
                    ));
                }
            }
        }
        // (b), (c), (f): the tasks of each service.
        let mut wanted_running: BTreeMap<u64, NodeId> = BTreeMap::new();
        for svc in state.services().values() {
            let t = tracked[svc.spec.name.as_str()];
            let tasks: Vec<&shoal_cluster::Task> = state.tasks_of_service(svc.id).collect();
            let live: Vec<&&shoal_cluster::Task> = tasks.iter().filter(|t| t.live()).collect();
            let n = &svc.spec.name;
            match t.kind {
                Kind::LongRunning => {
                    for x in &live {
                        let ok = x.desired == TaskState::Running
                            && x.status.state == TaskState::Running
                            && x.node.is_some_and(|n| ready.contains(&n))
                            && svc
                                .spec_of(x.spec_version)
                                .is_some_and(|s| s.task == svc.spec.task);
                        if !ok {
                            return Err(format!(
                                "service {n}: task {:016x} (slot {}) is desired {} / {} on {} \
                                 (version {} of {})",
                                x.id,
                                x.slot,
                                x.desired,
                                x.status.state,
                                x.node.map_or("no node".into(), host_of),
                                x.spec_version,
                                svc.version
                            ));
                        }
                        wanted_running.insert(x.id, x.node.unwrap_or_default());
                    }
                    match svc.spec.mode {
                        ServiceMode::Replicated { replicas } => {
                            // Which slots survive a scale-down is the orchestrator's choice.
                            let slots: BTreeSet<u64> = live.iter().map(|x| x.slot).collect();
                            if slots.len() != live.len() || live.len() as u64 != replicas {
                                return Err(format!(
                                    "service {n}: {replicas} replicas wanted, running tasks in \
                                     slots {:?}",
                                    live.iter().map(|x| x.slot).collect::<Vec<_>>()
                                ));
                            }
                        }
                        ServiceMode::Global => {
                            let on: Vec<NodeId> = live.iter().filter_map(|x| x.node).collect();
                            let set: BTreeSet<NodeId> = on.iter().copied().collect();
                            if set != eligible || on.len() != set.len() {
                                return Err(format!(
                                    "global service {n}: running on {:?}, eligible nodes {:?}",
                                    on.iter().map(|&x| host_of(x)).collect::<Vec<_>>(),
                                    eligible.iter().map(|&x| host_of(x)).collect::<Vec<_>>()
                                ));
                            }
                        }
                    }
                }
                Kind::Failing | Kind::Completing => {
                    if let Some(x) = live.first() {
                        return Err(format!(
                            "service {n} ({:?}): task {:016x} (slot {}) still {} / {}",
                            t.kind, x.id, x.slot, x.desired, x.status.state
                        ));
                    }
                    if let Some(x) = tasks.iter().find(|x| x.restarts > FAILING_ATTEMPTS) {
                        return Err(format!(
                            "service {n}: task {:016x} is restart {} of at most {FAILING_ATTEMPTS}",
                            x.id, x.restarts
                        ));
                    }
                    if let Some(r) = svc.spec.replicas() {
                        // Every replica slot had its task (scale-down may keep any slots): the
                        // slots with a task still wanted are exactly `replicas` many.
                        let slots: BTreeSet<u64> = tasks
                            .iter()
                            .filter(|x| x.wanted())
                            .map(|x| x.slot)
                            .collect();
                        if slots.len() as u64 != r {
                            return Err(format!(
                                "service {n}: {} slots with a wanted task, {r} replicas (version {}, tasks {:?})",
                                slots.len(),
                                svc.version,
                                tasks
                                    .iter()
                                    .map(|x| (x.slot, x.desired, x.status.state, x.spec_version))
                                    .collect::<Vec<_>>()
                            ));
                        }
                    }
                }
            }
        }
        // (d) No node is over-committed.
        for node in state.nodes().values() {
            let reserved: u64 = state
                .tasks()
                .values()
                .filter(|t| t.node == Some(node.id) && !t.status.state.is_terminal())
                .filter_map(|t| {
                    let svc = state.service(t.service)?;
                    let spec = svc.spec_of(t.spec_version)?;
                    Some(spec.task.resources.reservations.memory_bytes)
                })
                .sum();
            if reserved > node.description.resources.memory_bytes {
                return Err(format!(
                    "{} is over-committed: {reserved} bytes reserved of {}",
                    host_of(node.id),
                    node.description.resources.memory_bytes
                ));
            }
        }
        // Tasks of removed services have all ended.
        if let Some(x) = state
            .tasks()
            .values()
            .find(|t| state.service(t.service).is_none() && !t.status.state.is_terminal())
        {
            return Err(format!(
                "task {:016x} of a removed service is still {} / {}",
                x.id, x.desired, x.status.state
            ));
        }
        // (e) What the machines run is what the state wants, each slot once.
        let mut keys: BTreeMap<(String, u64), String> = BTreeMap::new();
        for (h, m) in machines.iter().enumerate() {
            let node = node_of_host[h];
            let mut runs = m.running_runs();
            runs.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            for run in &runs {
                let id = u64::from_str_radix(&run.task_id, 16).unwrap_or(0);
                if wanted_running.get(&id) != Some(&node) {
                    let why = match state.tasks().get(&id) {
                        None => "unknown to the state".to_string(),
                        Some(t) => format!(
                            "desired {} / {} on {}{}",
                            t.desired,
                            t.status.state,
                            t.node.map_or("no node".into(), host_of),
                            if state.service(t.service).is_none() {
                                ", service removed"
                            } else {
                                ""
                            }
                        ),
                    };
                    return Err(format!(
                        "{} runs task {} of {} slot {}: {why}",
                        name(h),
                        run.task_id,
                        run.service_name,
                        run.slot
                    ));
                }
                let key = (
                    run.service_name.clone(),
                    if run.slot == 0 { node } else { run.slot },
                );
                if let Some(other) = keys.insert(key, name(h)) {
                    return Err(format!(
                        "{} slot {} runs twice: on {other} and {}",
                        run.service_name,
                        run.slot,
                        name(h)
                    ));
                }
            }
            let here: BTreeSet<u64> = runs
                .iter()
                .filter_map(|r| u64::from_str_radix(&r.task_id, 16).ok())
                .collect();
            if let Some((id, _)) = wanted_running
                .iter()
                .find(|(id, &n)| n == node && !here.contains(id))
            {
                return Err(format!(
                    "the state has task {id:016x} running on {}, which does not run it",
                    name(h)
                ));
            }
        }
        Ok(wanted_running)
    }
}

/// How long a service request may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
