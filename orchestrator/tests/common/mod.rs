//! The harness the orchestrator's tests share: a replicated state driven by the orchestrator
//! as the leader would, with simulated agents that report what they were told.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use shoal_cluster::*;
use shoal_orchestrator::{reconcile, Config, Plan};

/// A cluster state, its Raft index and a clock, with nodes that run what they are told.
pub struct World {
    pub s: ClusterState,
    pub index: u64,
    pub now: u64,
    pub cfg: Config,
    /// Nodes whose agents do not act (down or partitioned).
    pub silent: BTreeSet<NodeId>,
}

pub fn node(id: NodeId, mem: u64) -> NewNode {
    NewNode {
        id,
        description: NodeDescription {
            hostname: format!("n{id}"),
            platform: Platform {
                os: "linux".into(),
                arch: "amd64".into(),
            },
            resources: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: mem,
            },
            engine_version: "0.1.0".into(),
            agent_version: "0.1.0".into(),
            runtime_problems: Vec::new(),
            runtimes: vec![Runtime::Process],
            limits_enforced: false,
        },
        addr: format!("127.0.0.1:{}", 4000 + id),
        labels: BTreeMap::new(),
        desired_role: Role::Worker,
    }
}

impl World {
    pub fn new(nodes: u64) -> World {
        let mut w = World {
            s: ClusterState::new(),
            index: 0,
            now: 1_000,
            cfg: Config::default(),
            silent: BTreeSet::new(),
        };
        let mut first = node(1, 1 << 30);
        first.desired_role = Role::Manager;
        w.apply(Command::Init {
            cluster: ClusterInfo {
                id: "0123456789abcdef0123456789abcdef".into(),
                created_at_ms: 1,
                ca_pem: "ca".into(),
                worker_token: "w".into(),
                manager_token: "m".into(),
                unlock_key: String::new(),
            },
            node: first,
            at_ms: 10,
        })
        .unwrap();
        for id in 2..=nodes {
            w.add_node(id, 1 << 30);
        }
        for id in 1..=nodes {
            w.set_state(id, NodeState::Ready);
        }
        w
    }

    pub fn add_node(&mut self, id: NodeId, mem: u64) {
        let now = self.now;
        self.apply(Command::AddNode {
            node: node(id, mem),
            at_ms: now,
        })
        .unwrap();
    }

    pub fn apply(&mut self, cmd: Command) -> Result<(), ClusterError> {
        self.index += 1;
        self.s.apply(self.index, &cmd)
    }

    pub fn set_state(&mut self, id: NodeId, state: NodeState) {
        let now = self.now;
        self.apply(Command::SetStatus {
            id,
            status: NodeStatus {
                state,
                message: String::new(),
            },
            at_ms: now,
        })
        .unwrap();
        if state == NodeState::Ready {
            self.silent.remove(&id);
        } else {
            self.silent.insert(id);
        }
    }

    pub fn drain(&mut self, id: NodeId) {
        self.availability(id, Availability::Drain);
    }

    pub fn availability(&mut self, id: NodeId, availability: Availability) {
        let now = self.now;
        self.apply(Command::UpdateNode {
            id,
            update: NodeUpdate {
                availability: Some(availability),
                ..Default::default()
            },
            at_ms: now,
        })
        .unwrap();
    }

    pub fn create(&mut self, spec: ServiceSpec) -> ServiceId {
        let name = spec.name.clone();
        let now = self.now;
        self.apply(Command::CreateService { spec, at_ms: now })
            .unwrap();
        self.s.resolve_service(&name).unwrap().id
    }

    pub fn update(&mut self, id: ServiceId, f: impl FnOnce(&mut ServiceSpec)) {
        let mut spec = self.s.service(id).unwrap().spec.clone();
        f(&mut spec);
        let now = self.now;
        self.apply(Command::UpdateService {
            id,
            expected_version: None,
            spec,
            at_ms: now,
        })
        .unwrap();
    }

    /// One orchestrator pass, applied in batches.
    pub fn pass(&mut self) -> Plan {
        let plan = reconcile(&self.s, self.now, &self.cfg);
        for batch in plan.batches(MAX_BATCH) {
            let now = self.now;
            self.apply(Command::Tasks {
                changes: batch.to_vec(),
                at_ms: now,
            })
            .unwrap();
        }
        plan
    }

    /// Every agent that is up acts once: starts what should run, stops what should stop.
    pub fn agents(&mut self, outcome: impl Fn(&Task) -> TaskState) -> bool {
        self.agents_health(|t, _| (outcome(t), Health::None))
    }

    /// Every agent that is up acts once: stops what should stop, and moves each task that should
    /// run to the state (and health, once running) `outcome` gives for it and its spec.
    /// True when some agent reported something (the leader then runs another pass).
    pub fn agents_health(
        &mut self,
        outcome: impl Fn(&Task, &TaskSpec) -> (TaskState, Health),
    ) -> bool {
        let mut by_node: BTreeMap<NodeId, Vec<TaskReport>> = BTreeMap::new();
        for t in self.s.tasks().values() {
            let Some(n) = t.node else { continue };
            if self.silent.contains(&n) || t.status.state < TaskState::Assigned {
                continue;
            }
            let spec = &self
                .s
                .service(t.service)
                .and_then(|s| s.spec_of(t.spec_version))
                .map(|s| s.task.clone())
                .unwrap_or_default();
            let next = if t.desired > TaskState::Running {
                (!t.status.state.is_terminal()).then_some((TaskState::Shutdown, Health::None))
            } else if t.desired == TaskState::Running && t.status.state <= TaskState::Running {
                let (state, health) = outcome(t, spec);
                let news = state != t.status.state
                    || state == TaskState::Running && health != t.status.health;
                news.then_some((state, health))
            } else {
                None
            };
            if let Some((state, health)) = next {
                let mut status = TaskStatus::new(state, "agent");
                if state == TaskState::Running {
                    status.health = health;
                }
                if state == TaskState::Failed {
                    status.err = "exit 1".into();
                    status.exit_code = Some(1);
                }
                by_node
                    .entry(n)
                    .or_default()
                    .push(TaskReport { id: t.id, status });
            }
        }
        let reported = !by_node.is_empty();
        for (node, reports) in by_node {
            let now = self.now;
            self.apply(Command::ReportTasks {
                node,
                reports,
                at_ms: now,
            })
            .unwrap();
        }
        reported
    }

    /// Passes and agent rounds (1 s apart) until a pass changes nothing and no agent had
    /// anything to report, at most `rounds`.
    pub fn settle(&mut self, rounds: usize) -> usize {
        for round in 0..rounds {
            let plan = self.pass();
            let reported = self.agents(|_| TaskState::Running);
            self.check();
            if plan.changes.is_empty() && !reported && !self.agents_busy() {
                return round;
            }
            self.now += 1_000;
        }
        panic!("no convergence in {rounds} rounds");
    }

    pub fn agents_busy(&self) -> bool {
        self.s.tasks().values().any(|t| {
            t.node.is_some_and(|n| !self.silent.contains(&n))
                && t.status.state >= TaskState::Assigned
                && ((t.desired == TaskState::Running && t.status.state < TaskState::Running)
                    || (t.desired > TaskState::Running && !t.status.state.is_terminal()))
        })
    }

    /// Invariants that must hold after every applied entry.
    pub fn check(&self) {
        // At most one live task per slot (per node for global services); two while a
        // start-first update or rollback overlaps the old task with the new one.
        let mut live: BTreeMap<(ServiceId, u64), Vec<TaskId>> = BTreeMap::new();
        for t in self.s.tasks().values().filter(|t| t.live()) {
            let key = if t.slot > 0 { t.slot } else { t.node.unwrap() };
            live.entry((t.service, key)).or_default().push(t.id);
        }
        for ((service, key), ids) in live {
            let start_first = self.s.service(service).is_some_and(|s| {
                s.spec.update.order == UpdateOrder::StartFirst
                    || s.spec.rollback.order == UpdateOrder::StartFirst
                    || s.previous.as_ref().is_some_and(|p| {
                        p.update.order == UpdateOrder::StartFirst
                            || p.rollback.order == UpdateOrder::StartFirst
                    })
            });
            let most = if start_first { 2 } else { 1 };
            assert!(
                ids.len() <= most,
                "{} live tasks in slot {key}: {ids:x?}",
                ids.len()
            );
        }
        // No node holds more reservations than it has.
        for n in self.s.nodes().values() {
            let mut mem = 0;
            for t in self.s.tasks_on_node(n.id) {
                if t.status.state.is_terminal() || t.status.state <= TaskState::Pending {
                    continue;
                }
                if let Some(svc) = self.s.service(t.service) {
                    mem += svc
                        .spec_of(t.spec_version)
                        .unwrap()
                        .task
                        .resources
                        .reservations
                        .memory_bytes;
                }
            }
            assert!(
                mem <= n.description.resources.memory_bytes,
                "node {} over-committed",
                n.id
            );
        }
    }

    pub fn running(&self, svc: ServiceId) -> Vec<&Task> {
        self.s
            .tasks_of_service(svc)
            .filter(|t| t.wanted() && t.status.state == TaskState::Running)
            .collect()
    }

    pub fn running_on(&self, svc: ServiceId) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for t in self.running(svc) {
            *m.entry(t.node.unwrap()).or_default() += 1;
        }
        m
    }
}

pub fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sleep", replicas)
}
