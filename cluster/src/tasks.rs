//! Applying service and task commands, and reading services and tasks. Batches of task changes
//! skip what an earlier entry made stale instead of failing whole: the leader's orchestrator acts
//! on a view that may be a few entries old, and every replica skips the same changes.

use std::collections::BTreeSet;

use crate::command::{Command, MAX_BATCH};
use crate::error::ClusterError;
use crate::service::{
    object_id_string, NewTask, Service, ServiceId, ServiceMode, ServiceSpec, Settings, Task,
    TaskChange, TaskId, TaskReport, TaskState, TaskStatus, UpdateOrder, UpdateState, UpdateStatus,
    MAX_REPLICAS, MAX_STATUS_TEXT,
};
use crate::state::ClusterState;
use crate::types::NodeId;

/// Most services in a cluster.
pub const MAX_SERVICES: usize = 100_000;

/// Most tasks kept per slot that `swarm update --task-history-limit` accepts.
pub const MAX_TASK_HISTORY: u32 = 1000;

/// splitmix64: spreads Raft indexes into ids that look random and are the same on every replica.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slot key of a task: its slot (replicated) or its node (global).
fn slot_key(t: &Task) -> u64 {
    if t.slot > 0 {
        t.slot
    } else {
        t.node.unwrap_or(0)
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_STATUS_TEXT {
        return s.to_string();
    }
    let mut end = MAX_STATUS_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl ClusterState {
    /// Every service, by id.
    pub fn services(&self) -> &std::collections::BTreeMap<ServiceId, Service> {
        &self.services
    }

    /// One service.
    pub fn service(&self, id: ServiceId) -> Option<&Service> {
        self.services.get(&id)
    }

    /// Finds a service by exact id, exact name, or unique id prefix (as the docker CLI does).
    pub fn resolve_service(&self, query: &str) -> Result<&Service, ClusterError> {
        let q = query.trim();
        let not_found = || ClusterError::Invalid(format!("service {q} not found"));
        if q.is_empty() {
            return Err(not_found());
        }
        if let Some(s) = self.services.values().find(|s| object_id_string(s.id) == q) {
            return Ok(s);
        }
        if let Some(s) = self.services.values().find(|s| s.spec.name == q) {
            return Ok(s);
        }
        let lower = q.to_ascii_lowercase();
        let mut by_prefix = self
            .services
            .values()
            .filter(|s| object_id_string(s.id).starts_with(&lower));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(s), None) => Ok(s),
            (None, _) => Err(not_found()),
            (Some(_), Some(_)) => Err(ClusterError::Invalid(format!(
                "service {q} is ambiguous (more than one service matches)"
            ))),
        }
    }

    /// Every task, by id.
    pub fn tasks(&self) -> &std::collections::BTreeMap<TaskId, Task> {
        &self.tasks
    }

    /// One task.
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    /// The tasks of a service, by slot (replicated) or node (global), oldest first in each.
    pub fn tasks_of_service(&self, service: ServiceId) -> impl Iterator<Item = &Task> + '_ {
        self.by_slot
            .range((service, 0)..=(service, u64::MAX))
            .flat_map(|(_, ids)| ids.iter())
            .filter_map(|id| self.tasks.get(id))
    }

    /// The tasks of one slot (replicated) or of one node (global), oldest first.
    pub fn slot_tasks(&self, service: ServiceId, key: u64) -> impl Iterator<Item = &Task> + '_ {
        self.by_slot
            .get(&(service, key))
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    /// The slot keys of a service that have tasks: slots (replicated) or node ids (global).
    pub fn slot_keys(&self, service: ServiceId) -> impl Iterator<Item = u64> + '_ {
        self.by_slot
            .range((service, 0)..=(service, u64::MAX))
            .map(|((_, k), _)| *k)
    }

    /// Each slot key of a service that has tasks, ascending, with the slot's tasks oldest first:
    /// [`Self::slot_keys`] and [`Self::slot_tasks`] in one walk.
    pub fn slots(
        &self,
        service: ServiceId,
    ) -> impl Iterator<Item = (u64, impl Iterator<Item = &Task> + '_)> + '_ {
        self.by_slot
            .range((service, 0)..=(service, u64::MAX))
            .map(move |((_, k), ids)| (*k, ids.iter().filter_map(move |id| self.tasks.get(id))))
    }

    /// The services that have tasks (removed services' tasks stay until they have stopped).
    pub fn task_service_ids(&self) -> impl Iterator<Item = ServiceId> {
        // One range lookup per service rather than a walk over every slot.
        let mut ids: Vec<ServiceId> = Vec::new();
        let mut next = self.by_slot.keys().next().map(|(s, _)| *s);
        while let Some(s) = next {
            ids.push(s);
            next = s
                .checked_add(1)
                .and_then(|from| self.by_slot.range((from, 0)..).next().map(|((s, _), _)| *s));
        }
        ids.into_iter()
    }

    /// The tasks assigned to a node.
    pub fn tasks_on_node(&self, node: NodeId) -> impl Iterator<Item = &Task> + '_ {
        self.by_node
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    /// Cluster-wide settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Applies a service or task command; `None` for the other commands.
    pub(crate) fn apply_service_command(
        &mut self,
        index: u64,
        cmd: &Command,
    ) -> Option<Result<(), ClusterError>> {
        Some(match cmd {
            Command::CreateService { spec, at_ms } => self.create_service(index, spec, *at_ms),
            Command::UpdateService {
                id,
                expected_version,
                spec,
                at_ms,
            } => self.update_service(index, *id, *expected_version, spec, *at_ms),
            Command::RollbackService {
                id,
                expected_version,
                at_ms,
            } => self.rollback_service(
                index,
                *id,
                *expected_version,
                "manually requested rollback",
                *at_ms,
            ),
            Command::RemoveService { id, .. } => self.remove_service(index, *id),
            Command::Tasks { changes, at_ms } => self.apply_changes(index, changes, *at_ms),
            Command::ReportTasks {
                node,
                reports,
                at_ms,
            } => self.apply_reports(index, *node, reports, *at_ms),
            Command::UpdateSettings {
                task_history_limit, ..
            } => self.update_settings(*task_history_limit),
            Command::CreateSecret { kind, spec, at_ms } => {
                self.create_secret(index, *kind, spec, *at_ms)
            }
            Command::RemoveSecret { kind, id, .. } => self.remove_secret(*kind, *id),
            _ => return None,
        })
    }

    pub(crate) fn check_initialized(&self) -> Result<(), ClusterError> {
        if self.cluster().is_none() {
            return Err(ClusterError::NotInitialized);
        }
        Ok(())
    }

    fn name_taken(&self, name: &str, except: Option<ServiceId>) -> bool {
        self.services
            .values()
            .any(|s| s.spec.name == name && Some(s.id) != except)
    }

    fn create_service(
        &mut self,
        index: u64,
        spec: &crate::service::ServiceSpec,
        at_ms: u64,
    ) -> Result<(), ClusterError> {
        self.check_initialized()?;
        spec.validate()?;
        self.check_refs(&spec.task.secrets)?;
        let mut spec = spec.clone();
        self.place_ingress_ports(&mut spec, None)?;
        if self.name_taken(&spec.name, None) {
            return Err(ClusterError::Invalid(format!(
                "service {} already exists",
                spec.name
            )));
        }
        if self.services.len() >= MAX_SERVICES {
            return Err(ClusterError::Invalid(format!(
                "the swarm has {MAX_SERVICES} services already"
            )));
        }
        let mut id = mix(index ^ 0x5e41_11ce);
        while id == 0 || self.services.contains_key(&id) {
            id = mix(id);
        }
        self.services.insert(
            id,
            Service {
                id,
                version: index,
                spec,
                previous: None,
                versions: Default::default(),
                created_at_ms: at_ms,
                updated_at_ms: at_ms,
                update_status: None,
            },
        );
        Ok(())
    }

    fn update_service(
        &mut self,
        index: u64,
        id: ServiceId,
        expected: Option<u64>,
        spec: &crate::service::ServiceSpec,
        at_ms: u64,
    ) -> Result<(), ClusterError> {
        let current = self.service_at(id, expected, "update")?;
        spec.validate()?;
        self.check_refs(&spec.task.secrets)?;
        let mut spec = spec.clone();
        self.place_ingress_ports(&mut spec, Some(id))?;
        if spec.name != current.spec.name {
            return Err(ClusterError::Invalid(
                "a service's name cannot be changed".into(),
            ));
        }
        if std::mem::discriminant(&spec.mode) != std::mem::discriminant(&current.spec.mode) {
            return Err(ClusterError::Invalid(format!(
                "a service's mode cannot be changed ({} service)",
                current.spec.mode.name()
            )));
        }
        // New tasks to roll out: a new update (a paused one goes on with this spec).
        let status = (spec.task != current.spec.task)
            .then(|| UpdateStatus::started(UpdateState::Updating, at_ms, "update in progress"));
        self.replace_spec(index, id, spec, status, at_ms);
        Ok(())
    }

    /// The service `id`, if it is at version `expected` (when given).
    fn service_at(
        &self,
        id: ServiceId,
        expected: Option<u64>,
        what: &str,
    ) -> Result<&Service, ClusterError> {
        let current = self.services.get(&id).ok_or_else(|| {
            ClusterError::Invalid(format!("service {} not found", object_id_string(id)))
        })?;
        if let Some(expected) = expected {
            if expected != current.version {
                return Err(ClusterError::Invalid(format!(
                    "{what} out of sequence: service {} is at version {}, not {expected}",
                    current.spec.name, current.version
                )));
            }
        }
        Ok(current)
    }

    /// Makes `spec` the service's spec at version `index`, the old one its previous (kept for
    /// the tasks that run it), with a new update status if given.
    fn replace_spec(
        &mut self,
        index: u64,
        id: ServiceId,
        spec: ServiceSpec,
        status: Option<UpdateStatus>,
        at_ms: u64,
    ) {
        let Some(s) = self.services.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut s.spec, spec);
        if status.is_some() {
            s.update_status = status;
        }
        s.versions.insert(s.version, old.clone());
        s.previous = Some(old);
        s.version = index;
        s.updated_at_ms = s.updated_at_ms.max(at_ms);
        self.prune_versions(id);
    }

    /// Goes back to a service's previous spec (`service rollback`, or an update's failure
    /// action): the rollback is rolled out with the service's rollback policy.
    fn rollback_service(
        &mut self,
        index: u64,
        id: ServiceId,
        expected: Option<u64>,
        message: &str,
        at_ms: u64,
    ) -> Result<(), ClusterError> {
        let current = self.service_at(id, expected, "rollback")?;
        let Some(mut previous) = current.previous.clone() else {
            return Err(ClusterError::Invalid(format!(
                "service {} has no previous spec to roll back to",
                current.spec.name
            )));
        };
        // Another service may have taken one of its ports since.
        self.place_ingress_ports(&mut previous, Some(id))?;
        let status = UpdateStatus::started(UpdateState::RollbackStarted, at_ms, message);
        self.replace_spec(index, id, previous, Some(status), at_ms);
        Ok(())
    }

    fn remove_service(&mut self, index: u64, id: ServiceId) -> Result<(), ClusterError> {
        if self.services.remove(&id).is_none() {
            return Err(ClusterError::Invalid(format!(
                "service {} not found",
                object_id_string(id)
            )));
        }
        let ids: Vec<TaskId> = self.tasks_of_service(id).map(|t| t.id).collect();
        for tid in ids {
            if let Some(t) = self.tasks.get_mut(&tid) {
                if t.desired < TaskState::Remove {
                    t.desired = TaskState::Remove;
                    t.version = index;
                }
            }
        }
        Ok(())
    }

    fn update_settings(&mut self, history: Option<u32>) -> Result<(), ClusterError> {
        self.check_initialized()?;
        if let Some(h) = history {
            if h > MAX_TASK_HISTORY {
                return Err(ClusterError::Invalid(format!(
                    "invalid task history limit {h}: at most {MAX_TASK_HISTORY}"
                )));
            }
            self.settings.task_history_limit = h;
        }
        Ok(())
    }

    fn apply_changes(
        &mut self,
        index: u64,
        changes: &[TaskChange],
        at_ms: u64,
    ) -> Result<(), ClusterError> {
        if changes.len() > MAX_BATCH {
            return Err(ClusterError::Invalid(format!(
                "{} task changes in one entry, more than {MAX_BATCH}",
                changes.len()
            )));
        }
        let mut pruned = BTreeSet::new();
        for (k, change) in changes.iter().enumerate() {
            match change {
                TaskChange::Create(nt) => {
                    self.create_task(index, k as u64, nt, at_ms);
                }
                TaskChange::Desired { id, desired } => {
                    if let Some(t) = self.tasks.get_mut(id) {
                        let allowed = matches!(
                            desired,
                            TaskState::Running | TaskState::Shutdown | TaskState::Remove
                        );
                        if allowed && *desired > t.desired {
                            t.desired = *desired;
                            t.version = index;
                        }
                    }
                }
                TaskChange::Assign { id, node } => {
                    let node_ok = self.node(*node).is_some();
                    if let Some(t) = self.tasks.get_mut(id) {
                        // A pending replicated task gets its node; a pending global task is
                        // confirmed on the node it was made for.
                        let fits = t.node.is_none() || t.node == Some(*node);
                        if node_ok && fits && t.status.state <= TaskState::Pending {
                            t.node = Some(*node);
                            t.status = TaskStatus::new(
                                TaskState::Assigned,
                                "scheduler assigned task to node",
                            );
                            t.status.timestamp_ms = at_ms;
                            t.version = index;
                            self.by_node.entry(*node).or_default().insert(*id);
                        }
                    }
                }
                TaskChange::Pending { id, reason } => {
                    if let Some(t) = self.tasks.get_mut(id) {
                        if t.status.state <= TaskState::Pending {
                            t.status.state = TaskState::Pending;
                            t.status.message = "pending task scheduling".into();
                            t.status.err = truncate(reason);
                            t.status.timestamp_ms = at_ms;
                            t.version = index;
                        }
                    }
                }
                TaskChange::Orphan { id, message } => {
                    if let Some(t) = self.tasks.get_mut(id) {
                        if t.status.state < TaskState::Orphaned && t.desired > TaskState::Running {
                            t.status.state = TaskState::Orphaned;
                            t.status.message = truncate(message);
                            t.status.timestamp_ms = at_ms;
                            t.version = index;
                        }
                    }
                }
                TaskChange::Stop { id, reason } => {
                    if let Some(t) = self.tasks.get_mut(id) {
                        if t.desired < TaskState::Shutdown {
                            t.desired = TaskState::Shutdown;
                            t.status.err = truncate(reason);
                            t.version = index;
                        }
                    }
                }
                TaskChange::UpdateStatus {
                    service,
                    version,
                    status,
                } => {
                    if let Some(s) = self.services.get_mut(service) {
                        if s.version == *version && status.failed.len() <= MAX_REPLICAS as usize {
                            let mut status = status.clone();
                            status.message = truncate(&status.message);
                            s.update_status = Some(status);
                        }
                    }
                }
                TaskChange::Rollback {
                    service,
                    version,
                    message,
                } => {
                    // Refused (no previous spec, moved on meanwhile): nothing to do.
                    let _ = self.rollback_service(
                        index,
                        *service,
                        Some(*version),
                        &truncate(message),
                        at_ms,
                    );
                }
                TaskChange::Delete { id } => {
                    let Some(t) = self.tasks.get(id) else {
                        continue;
                    };
                    let node_gone = t.node.is_some_and(|n| self.node(n).is_none());
                    let deletable = t.status.state.is_terminal()
                        || t.status.state <= TaskState::Pending && t.desired > TaskState::Running
                        || node_gone && t.desired > TaskState::Running;
                    if deletable {
                        pruned.insert(t.service);
                        self.unindex(*id);
                        self.tasks.remove(id);
                    }
                }
            }
        }
        for s in pruned {
            self.prune_versions(s);
        }
        Ok(())
    }

    fn create_task(&mut self, index: u64, k: u64, nt: &NewTask, at_ms: u64) {
        let Some(service) = self.services.get(&nt.service) else {
            return;
        };
        if nt.spec_version != service.version
            || !matches!(nt.desired, TaskState::Ready | TaskState::Running)
        {
            return;
        }
        let key = match service.spec.mode {
            ServiceMode::Replicated { .. } => {
                if nt.slot == 0 || nt.slot > MAX_REPLICAS {
                    return;
                }
                nt.slot
            }
            ServiceMode::Global => match (nt.slot, nt.node) {
                (0, Some(n)) => n,
                _ => return,
            },
        };
        if nt.node.is_some_and(|n| self.node(n).is_none()) {
            return;
        }
        // One live task per slot (per node for global services), whatever the orchestrator saw;
        // a start-first rollout adds the new spec's task beside the old one, never a third.
        let start_first = service.rollout_policy().order == UpdateOrder::StartFirst;
        let live: Vec<&Task> = self
            .slot_tasks(nt.service, key)
            .filter(|t| t.live())
            .collect();
        let overlap_ok = live.len() == 1 && start_first && live[0].spec_version != nt.spec_version;
        if !live.is_empty() && !overlap_ok {
            return;
        }
        let mut id = mix((index << 20) ^ k ^ 0x7a5c);
        while id == 0 || self.tasks.contains_key(&id) {
            id = mix(id);
        }
        // A global task that does not fit on its node yet is made pending there.
        let mut status = match nt.node {
            Some(_) if nt.pending_reason.is_empty() => {
                TaskStatus::new(TaskState::Assigned, "scheduler assigned task to node")
            }
            _ => {
                let mut s = TaskStatus::new(TaskState::Pending, "pending task scheduling");
                s.err = truncate(&nt.pending_reason);
                s
            }
        };
        status.timestamp_ms = at_ms;
        let task = Task {
            id,
            service: nt.service,
            slot: nt.slot,
            node: nt.node,
            spec_version: nt.spec_version,
            desired: nt.desired,
            status,
            created_at_ms: at_ms,
            created_index: index,
            version: index,
            restarts: nt.restarts,
            window_start_ms: nt.window_start_ms,
            not_before_ms: nt.not_before_ms,
            ready_at_ms: 0,
        };
        self.index(&task);
        self.tasks.insert(id, task);
    }

    fn apply_reports(
        &mut self,
        index: u64,
        node: NodeId,
        reports: &[TaskReport],
        at_ms: u64,
    ) -> Result<(), ClusterError> {
        if reports.len() > MAX_BATCH {
            return Err(ClusterError::Invalid(format!(
                "{} task reports in one entry, more than {MAX_BATCH}",
                reports.len()
            )));
        }
        if self.node(node).is_none() {
            return Err(ClusterError::NodeNotFound(crate::types::node_id_string(
                node,
            )));
        }
        for r in reports {
            let Some(t) = self.tasks.get_mut(&r.id) else {
                continue;
            };
            let from_node = (TaskState::Accepted..=TaskState::Rejected).contains(&r.status.state);
            // The state moves forward; a running task's health may change while it runs.
            let health_news = r.status.state == TaskState::Running
                && t.status.state == TaskState::Running
                && r.status.health != t.status.health;
            if t.node != Some(node)
                || !from_node
                || (r.status.state <= t.status.state && !health_news)
                || r.status.validate().is_err()
            {
                continue;
            }
            // Field by field, reusing the strings' buffers (every field but the timestamp is
            // taken from the report).
            let TaskStatus {
                state,
                timestamp_ms: _,
                message,
                err,
                exit_code,
                pid,
                container_id,
                health,
                ports,
            } = &r.status;
            t.status.state = *state;
            t.status.message.clone_from(message);
            // A stop without an error of the node's keeps the manager's reason for it.
            if !(err.is_empty() && *state == TaskState::Shutdown) {
                t.status.err.clone_from(err);
            }
            t.status.exit_code = *exit_code;
            t.status.pid = *pid;
            t.status.container_id.clone_from(container_id);
            t.status.health = *health;
            t.status.ports.clone_from(ports);
            if !health_news {
                t.status.timestamp_ms = at_ms;
            }
            if t.ready_at_ms == 0 && t.is_ready() {
                t.ready_at_ms = at_ms;
            }
            t.version = index;
        }
        Ok(())
    }

    /// Keeps in a service's `versions` only the specs some task still runs.
    fn prune_versions(&mut self, id: ServiceId) {
        let used: BTreeSet<u64> = self.tasks_of_service(id).map(|t| t.spec_version).collect();
        if let Some(s) = self.services.get_mut(&id) {
            let current = s.version;
            s.versions.retain(|v, _| *v != current && used.contains(v));
        }
    }

    fn index(&mut self, t: &Task) {
        self.by_slot
            .entry((t.service, slot_key(t)))
            .or_default()
            .push(t.id);
        if let Some(n) = t.node {
            self.by_node.entry(n).or_default().insert(t.id);
        }
    }

    fn unindex(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get(&id) else { return };
        let key = (t.service, slot_key(t));
        if let Some(ids) = self.by_slot.get_mut(&key) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_slot.remove(&key);
            }
        }
        if let Some(n) = t.node {
            if let Some(ids) = self.by_node.get_mut(&n) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_node.remove(&n);
                }
            }
        }
    }

    /// Rebuilds the derived indexes (after a restore).
    pub(crate) fn rebuild_indexes(&mut self) {
        self.by_slot.clear();
        self.by_node.clear();
        let mut all: Vec<&Task> = self.tasks.values().collect();
        all.sort_by_key(|t| (t.created_index, t.id));
        let mut by_slot: std::collections::BTreeMap<(ServiceId, u64), Vec<TaskId>> =
            Default::default();
        let mut by_node: std::collections::BTreeMap<NodeId, BTreeSet<TaskId>> = Default::default();
        for t in all {
            by_slot
                .entry((t.service, slot_key(t)))
                .or_default()
                .push(t.id);
            if let Some(n) = t.node {
                by_node.entry(n).or_default().insert(t.id);
            }
        }
        self.by_slot = by_slot;
        self.by_node = by_node;
    }

    /// Checks a restored state's services and tasks.
    pub(crate) fn check_services(&self) -> Result<(), String> {
        if self.services.len() > MAX_SERVICES {
            return Err("too many services".into());
        }
        if self.settings.task_history_limit > MAX_TASK_HISTORY {
            return Err("task history limit out of range".into());
        }
        for (id, s) in &self.services {
            if *id != s.id {
                return Err(format!("service {} filed under {id}", s.id));
            }
        }
        for (id, t) in &self.tasks {
            if *id != t.id {
                return Err(format!("task {} filed under {id}", t.id));
            }
            if !self.services.contains_key(&t.service) && t.desired < TaskState::Remove {
                return Err(format!("task {id} of an unknown service"));
            }
            if t.slot == 0 && t.node.is_none() {
                return Err(format!("task {id} has neither slot nor node"));
            }
        }
        Ok(())
    }
}
