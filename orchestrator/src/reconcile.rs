//! One orchestration pass over the whole state.

use std::collections::{BTreeMap, BTreeSet};

use shoal_cluster::{
    object_id_string, Availability, ClusterState, FailureAction, Health, NewTask, Node, NodeId,
    NodeState, RestartCondition, Service, ServiceId, ServiceMode, Task, TaskChange, TaskId,
    TaskState, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus, DEFAULT_HEALTH_INTERVAL_MS,
};

use crate::placement::{scheduler, scheduler_spec};
use crate::{Config, Plan};

/// Where a live task's node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    /// Fine: leave the task alone.
    Fine,
    /// Down: replace it (replicated), keep it (global); orphan it after a while.
    Down,
    /// Drained, or no longer passing the service's filters: stop it and replace it elsewhere.
    Unfit(&'static str),
    /// Removed from the swarm: stop, orphan and replace it.
    Gone,
}

/// A task waiting for a node: one already in the state, or one this pass creates.
#[derive(Clone, Copy, Debug)]
enum Placeable {
    Existing(TaskId),
    New(usize),
}

/// One pass.
struct Run<'a> {
    state: &'a ClusterState,
    now: u64,
    cfg: &'a Config,
    /// Shutdowns, removals, orphans, promotions and deletions, in order.
    changes: Vec<TaskChange>,
    /// Tasks to create (placed below).
    creates: Vec<NewTask>,
    /// Replicated tasks to place, per service.
    replicated: BTreeMap<ServiceId, Vec<Placeable>>,
    /// Global tasks to place on their node, per service.
    global: BTreeMap<ServiceId, Vec<(Placeable, NodeId)>>,
    wake: Option<u64>,
    /// Tasks this pass deletes.
    deleted: BTreeSet<TaskId>,
    /// Each service's placement rules as the scheduler takes them (`None`: malformed), made
    /// once per pass.
    specs: BTreeMap<ServiceId, Option<shoal_scheduler::ServiceSpec>>,
    /// Each node's attributes as the scheduler sees them (what constraints match on), made once
    /// per pass.
    views: BTreeMap<NodeId, shoal_scheduler::Node>,
    /// Scale-up stopped at `max_changes` creations.
    capped: bool,
}

/// One service's rolling update (or rollback) as one pass sees it.
struct Roll<'a> {
    /// The policy in force: the service's rollback policy during a rollback, else its update
    /// policy.
    cfg: UpdateConfig,
    /// The update in progress (failures counted, completion recorded), if any.
    tracking: Option<UpdateStatus>,
    /// Slots (or global nodes) whose task runs an older spec, with that task.
    stale: Vec<(u64, &'a Task)>,
    /// Slots taken by the update: a new task not running yet, or within its delay.
    busy: usize,
    /// Something is not converged yet (a task not running, a slot short, an old task kept);
    /// a task that ended is the restart policy's business, not the update's.
    unsettled: bool,
    /// New failures this pass, with why.
    failures: Vec<(TaskId, String)>,
    /// The slot at hand has a task the update counted as failed.
    slot_failed: bool,
    /// The monitor period of the last new task to run ends then.
    monitor_until: u64,
    /// Slots (or nodes) the service has: the failure ratio's denominator.
    units: usize,
}

impl<'a> Roll<'a> {
    fn new(svc: &Service) -> Self {
        let tracking = svc
            .update_status
            .as_ref()
            .filter(|s| s.state.in_progress())
            .cloned();
        Roll {
            cfg: *svc.rollout_policy(),
            tracking,
            stale: Vec::new(),
            busy: 0,
            unsettled: false,
            failures: Vec::new(),
            slot_failed: false,
            monitor_until: 0,
            units: 0,
        }
    }

    /// Whether a task of the current spec is the update's business: made since it began.
    fn tracks(&self, t: &Task) -> bool {
        self.tracking
            .as_ref()
            .is_some_and(|s| t.created_at_ms >= s.started_at_ms)
    }

    /// Records a failure once per task.
    fn fail(&mut self, id: TaskId, why: String) {
        let known = self
            .tracking
            .as_ref()
            .is_some_and(|s| s.failed.contains(&id));
        if !known && !self.failures.iter().any(|(f, _)| *f == id) {
            self.failures.push((id, why));
        }
    }

    /// A task of the update that ended on its own before or within its monitor period failed
    /// the update (later failures are the restart policy's alone). Either way the slot is the
    /// restart policy's now: the update does not wait for it.
    fn ended(&mut self, t: &Task) {
        if !self.tracks(t) || t.desired > TaskState::Running {
            return;
        }
        let monitored = t.ready_at_ms == 0
            || t.status.timestamp_ms < t.ready_at_ms.saturating_add(self.cfg.monitor_ms);
        if !monitored {
            return;
        }
        let why = if !t.status.err.is_empty() {
            t.status.err.clone()
        } else {
            t.status.state.title().to_lowercase()
        };
        self.fail(t.id, why);
    }

    /// The stale slots to replace now: as many as the parallelism leaves room for (0: all),
    /// those whose task does not run first, then by slot.
    fn take_batch(&mut self) -> Vec<(u64, &'a Task)> {
        let room = if self.cfg.parallelism == 0 {
            usize::MAX
        } else {
            usize::try_from(self.cfg.parallelism)
                .unwrap_or(usize::MAX)
                .saturating_sub(self.busy)
        };
        let mut stale = std::mem::take(&mut self.stale);
        stale.sort_by_key(|(k, t)| (t.is_ready(), *k));
        stale.truncate(room);
        stale
    }
}

/// Whether the service's update in progress counted a task of this slot as failed.
fn failed_on(svc: &Service, tasks: &[&Task]) -> bool {
    match &svc.update_status {
        Some(s) if s.state.in_progress() && !s.failed.is_empty() => {
            tasks.iter().any(|t| s.failed.contains(&t.id))
        }
        _ => false,
    }
}

/// `5s`, `1m30s`, `250ms`: a duration as the flags take it.
fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if !ms.is_multiple_of(1000) {
        // As Go prints durations: 3.5s, 1.25s.
        return format!("{}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// Computes the task changes that move the state toward its services' specs at time `now_ms`.
pub fn reconcile(state: &ClusterState, now_ms: u64, cfg: &Config) -> Plan {
    let mut run = Run {
        state,
        now: now_ms,
        cfg,
        changes: Vec::new(),
        creates: Vec::new(),
        replicated: BTreeMap::new(),
        global: BTreeMap::new(),
        wake: None,
        deleted: BTreeSet::new(),
        specs: BTreeMap::new(),
        views: BTreeMap::new(),
        capped: false,
    };
    for svc in state.services().values() {
        match svc.spec.mode {
            ServiceMode::Replicated { replicas } => run.replicated_service(svc, replicas),
            ServiceMode::Global => run.global_service(svc),
        }
    }
    let gone: Vec<ServiceId> = state
        .task_service_ids()
        .filter(|id| state.service(*id).is_none())
        .collect();
    for id in gone {
        run.removed_service(id);
    }
    run.place();
    run.finish()
}

impl<'a> Run<'a> {
    fn wake_at(&mut self, t: u64) {
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    fn node(&self, id: NodeId) -> Option<&'a Node> {
        self.state.node(id)
    }

    /// Where a (live) task's node stands for this service.
    fn where_is(&mut self, svc: &Service, node: NodeId) -> Where {
        let Some(n) = self.node(node) else {
            return Where::Gone;
        };
        if n.status.state == NodeState::Down {
            return Where::Down;
        }
        if n.availability == Availability::Drain {
            return Where::Unfit("node drained");
        }
        if !n.description.runtimes.contains(&svc.spec.task.runtime) {
            return Where::Unfit("runtime not available on the node");
        }
        if self.constraints_match(svc, n) {
            Where::Fine
        } else {
            Where::Unfit("constraints not satisfied on the node")
        }
    }

    /// Whether a node passes a service's placement constraints (a malformed spec is no reason
    /// to move a task). Constraints look at the node's attributes only, not at its tasks.
    fn constraints_match(&mut self, svc: &Service, n: &Node) -> bool {
        if svc.spec.task.placement.constraints.is_empty() {
            return true;
        }
        let spec = self
            .specs
            .entry(svc.id)
            .or_insert_with(|| scheduler_spec(svc).ok());
        let Some(spec) = spec else {
            return true;
        };
        let view = self
            .views
            .entry(n.id)
            .or_insert_with(|| crate::placement::node_attributes(n));
        spec.constraints_match(view)
    }

    /// Orphans a task on a node that is gone, or down for longer than the orphan timeout; the
    /// task must be told to stop first (or already be).
    fn maybe_orphan(&mut self, t: &Task) {
        if t.status.state.is_terminal() {
            return;
        }
        let Some(node) = t.node else { return };
        let (orphan, message) = match self.node(node) {
            None => (true, "node removed from the swarm"),
            Some(n) if n.status.state == NodeState::Down => {
                let since = n.updated_at_ms.max(t.status.timestamp_ms);
                let due = since.saturating_add(self.cfg.orphan_after_ms);
                if self.now >= due {
                    (true, "node down for too long")
                } else {
                    self.wake_at(due);
                    (false, "")
                }
            }
            Some(_) => (false, ""),
        };
        if orphan {
            if t.wanted() {
                self.changes.push(TaskChange::Desired {
                    id: t.id,
                    desired: TaskState::Shutdown,
                });
            }
            self.changes.push(TaskChange::Orphan {
                id: t.id,
                message: message.into(),
            });
        }
    }

    /// Whether a task can be forgotten: it has ended; or it is no longer wanted and either never
    /// left pending or its node is gone.
    fn deletable(&self, t: &Task) -> bool {
        if t.status.state.is_terminal() {
            return true;
        }
        t.desired > TaskState::Running
            && (t.status.state <= TaskState::Pending
                || t.node.is_some_and(|n| self.node(n).is_none()))
    }

    /// The reaper for one slot: tasks told to go (`remove`) once they have stopped, and the
    /// oldest history beyond the limit. Returns the slot's newest task that is not deleted.
    fn reap<'t>(&mut self, tasks: &[&'t Task]) -> Option<&'t Task> {
        let limit = (self.state.settings().task_history_limit as usize).max(1);
        let newest = tasks.last().copied();
        let excess = tasks.len().saturating_sub(limit);
        for (i, t) in tasks.iter().enumerate() {
            let is_newest = i + 1 == tasks.len();
            let removed = t.desired == TaskState::Remove;
            let old = i < excess && !is_newest;
            if (removed || old) && self.deletable(t) {
                self.delete(t.id);
            }
        }
        newest
    }

    /// Restart decision for a slot whose current task ended: the replacement, if the policy
    /// wants one.
    fn restart(&mut self, svc: &Service, cur: &Task, key: u64) -> Option<NewTask> {
        let policy = svc.spec.task.restart;
        let failed = matches!(
            cur.status.state,
            TaskState::Failed | TaskState::Rejected | TaskState::Orphaned | TaskState::Shutdown
        );
        let restart = match policy.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => failed,
            RestartCondition::Any => true,
        };
        if !restart {
            return None;
        }
        let ended = cur.status.timestamp_ms;
        let (mut restarts, mut window_start) = (cur.restarts, cur.window_start_ms);
        if policy.window_ms > 0 && self.now.saturating_sub(window_start) > policy.window_ms {
            restarts = 0;
            window_start = self.now;
        }
        if policy.max_attempts > 0 && restarts >= policy.max_attempts {
            if policy.window_ms > 0 {
                // The slot gets its next attempts when a new window opens: wake then, rather
                // than whenever some other event happens to come.
                self.wake_at(
                    window_start
                        .saturating_add(policy.window_ms)
                        .saturating_add(1),
                );
            }
            return None;
        }
        let not_before = ended.saturating_add(policy.delay_ms);
        let waiting = not_before > self.now;
        if waiting {
            self.wake_at(not_before);
        }
        Some(NewTask {
            service: svc.id,
            spec_version: svc.version,
            slot: if svc.spec.mode == ServiceMode::Global {
                0
            } else {
                key
            },
            node: (svc.spec.mode == ServiceMode::Global).then_some(key),
            desired: if waiting {
                TaskState::Ready
            } else {
                TaskState::Running
            },
            pending_reason: String::new(),
            restarts: restarts + 1,
            window_start_ms: if window_start == 0 {
                self.now
            } else {
                window_start
            },
            not_before_ms: if waiting { not_before } else { 0 },
        })
    }

    /// A fresh task for a slot (or a global node).
    fn fresh(
        &self,
        svc: &Service,
        slot: u64,
        node: Option<NodeId>,
        like: Option<&Task>,
    ) -> NewTask {
        NewTask {
            service: svc.id,
            spec_version: svc.version,
            slot,
            node,
            desired: TaskState::Running,
            pending_reason: String::new(),
            restarts: like.map_or(0, |t| t.restarts),
            window_start_ms: like.map_or(0, |t| t.window_start_ms),
            not_before_ms: 0,
        }
    }

    fn shutdown(&mut self, id: TaskId, desired: TaskState) {
        self.changes.push(TaskChange::Desired { id, desired });
    }

    fn delete(&mut self, id: TaskId) {
        if self.deleted.insert(id) {
            self.changes.push(TaskChange::Delete { id });
        }
    }

    /// Keeps a slot within the history limit once its new task is added: forgets the oldest
    /// ended task if the slot is full.
    fn make_room(&mut self, service: ServiceId, key: u64) {
        let limit = (self.state.settings().task_history_limit as usize).max(1);
        let state = self.state;
        let kept: Vec<&Task> = state
            .slot_tasks(service, key)
            .filter(|t| !self.deleted.contains(&t.id))
            .collect();
        if kept.len() < limit {
            return;
        }
        if let Some(oldest) = kept.into_iter().find(|t| self.deletable(t)) {
            self.delete(oldest.id);
        }
    }

    fn create(&mut self, t: NewTask) {
        self.make_room(
            t.service,
            if t.slot > 0 {
                t.slot
            } else {
                t.node.unwrap_or(0)
            },
        );
        self.queue(t);
    }

    /// Queues a task to create for placement (its slot has room).
    fn queue(&mut self, t: NewTask) {
        let i = self.creates.len();
        match t.node {
            Some(n) => self
                .global
                .entry(t.service)
                .or_default()
                .push((Placeable::New(i), n)),
            None => self
                .replicated
                .entry(t.service)
                .or_default()
                .push(Placeable::New(i)),
        }
        self.creates.push(t);
    }

    /// A task that is wanted and waiting: promote a restart whose delay has passed.
    /// The slot key of a task: its slot (replicated) or its node (global).
    fn slot_key(t: &Task) -> u64 {
        if t.slot > 0 {
            t.slot
        } else {
            t.node.unwrap_or(0)
        }
    }

    /// Whether an older task of `t`'s slot was told to stop and may still be running (it has
    /// not reported an end and its node is not down): a stop-first replacement waits for it,
    /// as Swarm's does, so that what the old task held (a host port, a volume) is free when the
    /// new one starts.
    fn old_still_stopping(&self, t: &Task) -> bool {
        self.state
            .slot_tasks(t.service, Self::slot_key(t))
            .any(|o| {
                o.created_index < t.created_index
                    && !o.wanted()
                    && !o.status.state.is_terminal()
                    && o.node
                        .and_then(|n| self.state.node(n))
                        .is_some_and(|n| n.status.state != NodeState::Down)
            })
    }

    /// When the older tasks of `t`'s slot last reported an end (0: none did): a stop-first
    /// replacement's time to start counts from then.
    fn olds_ended_at(&self, t: &Task) -> u64 {
        self.state
            .slot_tasks(t.service, Self::slot_key(t))
            .filter(|o| o.created_index < t.created_index && o.status.state.is_terminal())
            .map(|o| o.status.timestamp_ms)
            .max()
            .unwrap_or(0)
    }

    fn promote(&mut self, t: &Task) {
        if t.desired == TaskState::Ready {
            // Its stop report brings the next pass.
            if self.old_still_stopping(t) {
                return;
            }
            if self.now >= t.not_before_ms {
                self.changes.push(TaskChange::Desired {
                    id: t.id,
                    desired: TaskState::Running,
                });
            } else {
                self.wake_at(t.not_before_ms);
            }
        }
    }

    fn out_of_date(svc: &Service, t: &Task) -> bool {
        t.spec_version != svc.version
            && svc
                .spec_of(t.spec_version)
                .is_none_or(|old| old.task != svc.spec.task)
    }

    /// A slot's tasks: the newest one still wanted, and the older ones still wanted (a
    /// start-first update keeps the old task until the new one runs). Tasks no longer wanted
    /// are orphaned when their node is lost; the reaper trims the history.
    fn slot_view<'t>(&mut self, tasks: &[&'t Task]) -> Option<(&'t Task, Vec<&'t Task>)> {
        for t in tasks {
            if !t.wanted() {
                self.maybe_orphan(t);
            }
        }
        self.reap(tasks);
        let mut wanted: Vec<&'t Task> = tasks
            .iter()
            .copied()
            .filter(|t| t.wanted() && !self.deleted.contains(&t.id))
            .collect();
        let cur = wanted.pop()?;
        Some((cur, wanted))
    }

    fn replicated_service(&mut self, svc: &'a Service, replicas: u64) {
        let state = self.state;
        // The newest wanted task of each slot, with the older ones still wanted, and whether
        // the update in progress failed on the slot already.
        let mut active: Vec<(u64, &Task, Vec<&Task>, bool)> = Vec::new();
        // Every slot that has tasks, ascending.
        let mut keys: Vec<u64> = Vec::new();
        for (key, tasks) in state.slots(svc.id) {
            keys.push(key);
            let tasks: Vec<&Task> = tasks.collect();
            let failed = failed_on(svc, &tasks);
            if let Some((cur, olds)) = self.slot_view(&tasks) {
                active.push((key, cur, olds, failed));
            }
        }
        // Scale down: remove the surplus, tasks not running first, then one at a time from the
        // node with the most tasks of the service (keeping the spread), highest slot first.
        let want = usize::try_from(replicas).unwrap_or(usize::MAX);
        if active.len() > want {
            let mut surplus: BTreeSet<usize> = BTreeSet::new();
            let mut not_running: Vec<usize> = (0..active.len())
                .filter(|&i| active[i].1.status.state != TaskState::Running)
                .collect();
            not_running.sort_by_key(|&i| std::cmp::Reverse(active[i].0));
            let mut excess = active.len() - want;
            for i in not_running.into_iter().take(excess) {
                surplus.insert(i);
                excess -= 1;
            }
            let mut per_node: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
            for (i, (_, t, _, _)) in active.iter().enumerate() {
                if !surplus.contains(&i) {
                    per_node.entry(t.node.unwrap_or(0)).or_default().push(i);
                }
            }
            while excess > 0 {
                let fullest = per_node
                    .values_mut()
                    .max_by_key(|v| (v.len(), v.iter().map(|&i| active[i].0).max()))
                    .expect("tasks left while there is excess");
                let (at, _) = fullest
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, &i)| active[i].0)
                    .expect("non-empty");
                surplus.insert(fullest.swap_remove(at));
                excess -= 1;
            }
            for &i in &surplus {
                self.shutdown(active[i].1.id, TaskState::Remove);
                for old in &active[i].2 {
                    self.shutdown(old.id, TaskState::Remove);
                }
            }
            let mut k = 0;
            active.retain(|_| {
                k += 1;
                !surplus.contains(&(k - 1))
            });
        }
        // Each remaining slot: restart, replace, promote, or queue for placement or update.
        let mut roll = Roll::new(svc);
        for (key, cur, olds, failed) in &active {
            let (key, cur) = (*key, *cur);
            roll.slot_failed = *failed;
            if self.keep_old(svc, cur, olds, &mut roll) {
                continue;
            }
            if cur.status.state.is_terminal() {
                roll.ended(cur);
                if let Some(next) = self.restart(svc, cur, key) {
                    self.shutdown(cur.id, TaskState::Shutdown);
                    self.create(next);
                }
                continue;
            }
            self.promote(cur);
            match cur.node {
                None => {
                    if Self::out_of_date(svc, cur) {
                        self.shutdown(cur.id, TaskState::Shutdown);
                        let t = self.fresh(svc, key, None, Some(cur));
                        self.create(t);
                    } else if self.watch(svc, cur, &mut roll) {
                        self.replicated
                            .entry(svc.id)
                            .or_default()
                            .push(Placeable::Existing(cur.id));
                    }
                }
                Some(node) => match self.where_is(svc, node) {
                    Where::Fine => {
                        if Self::out_of_date(svc, cur) {
                            roll.stale.push((key, cur));
                        } else {
                            self.watch(svc, cur, &mut roll);
                        }
                    }
                    Where::Down | Where::Unfit(_) | Where::Gone => {
                        self.shutdown(cur.id, TaskState::Shutdown);
                        self.maybe_orphan(cur);
                        let t = self.fresh(svc, key, None, Some(cur));
                        self.create(t);
                        roll.unsettled = true;
                    }
                },
            }
        }
        roll.units = want;
        if active.len() < want {
            roll.unsettled = true;
        }
        self.roll_out(svc, &mut roll);
        // Scale up: the lowest free slot numbers.
        if active.len() < want {
            let taken: BTreeSet<u64> = active.iter().map(|(k, _, _, _)| *k).collect();
            let mut slot = 1u64;
            let mut missing = want - active.len();
            while missing > 0 {
                if self.creates.len() >= self.cfg.max_changes {
                    // The plan is full: the rest waits for the next pass (no work on tasks
                    // that would be cut anyway).
                    self.capped = true;
                    break;
                }
                if !taken.contains(&slot) {
                    let t = self.fresh(svc, slot, None, None);
                    if keys.binary_search(&slot).is_ok() {
                        self.create(t);
                    } else {
                        // A slot without tasks has no history to make room in.
                        self.queue(t);
                    }
                    missing -= 1;
                }
                slot += 1;
            }
        }
    }

    /// A slot that still has older wanted tasks (start-first): once the new task runs they
    /// stop; while a rollback makes the old task's spec current again, the old task stays and
    /// the new one stops instead. True when the slot needs nothing else this pass.
    fn keep_old(&mut self, svc: &Service, cur: &Task, olds: &[&Task], roll: &mut Roll) -> bool {
        if olds.is_empty() {
            return false;
        }
        if Self::out_of_date(svc, cur) {
            let current = olds
                .iter()
                .rev()
                .find(|o| !o.status.state.is_terminal() && !Self::out_of_date(svc, o));
            if let Some(keep) = current {
                self.shutdown(cur.id, TaskState::Shutdown);
                for o in olds {
                    if o.id != keep.id {
                        self.shutdown(o.id, TaskState::Shutdown);
                    }
                }
                roll.unsettled = true;
                return true;
            }
        }
        if cur.is_ready() {
            for o in olds {
                self.shutdown(o.id, TaskState::Shutdown);
            }
        } else {
            // Old tasks that ended meanwhile are done with; the others serve until the new
            // task runs.
            for o in olds.iter().filter(|o| o.status.state.is_terminal()) {
                self.shutdown(o.id, TaskState::Shutdown);
            }
            // A slot the update failed on is done with, from the update's view: its old task
            // serves until a new one runs.
            if !roll.slot_failed {
                roll.unsettled = true;
            }
        }
        false
    }

    /// A live task of the current spec during an update: busy until it runs (healthy) and its
    /// delay has passed; failed if it does not run within the monitor period plus its start
    /// period (it is stopped then, and replaced like any other failed task). False when it was
    /// stopped.
    fn watch(&mut self, svc: &Service, t: &Task, roll: &mut Roll) -> bool {
        if roll.slot_failed && !t.is_ready() {
            // The update failed on this slot already: its restarts are the restart policy's
            // business, and the update (going on, or paused) does not wait for them.
            return true;
        }
        if !roll.tracks(t) {
            if !t.is_ready() {
                roll.unsettled = true;
                roll.busy += 1;
            }
            return true;
        }
        if !t.is_ready() && t.desired == TaskState::Ready && self.old_still_stopping(t) {
            // Stop-first: not started before the old task has stopped, however long its stop
            // grace period.
            roll.busy += 1;
            roll.unsettled = true;
            return true;
        }
        if !t.is_ready() {
            let h = &svc.spec.task.health;
            let mut limit = roll.cfg.monitor_ms.saturating_add(h.start_period_ms);
            if t.status.state == TaskState::Running && t.status.health == Health::Starting {
                // Running, its check not passed yet: the first verdict comes an interval after
                // the start and may take the check's timeout (an image's own check: Docker's
                // defaults, its timing being unknown here).
                limit = limit.saturating_add(if h.is_set() {
                    h.interval_ms.saturating_add(h.timeout_ms)
                } else {
                    2 * DEFAULT_HEALTH_INTERVAL_MS
                });
            }
            // From its creation, the end of its restart delay, or (stop-first) the end of
            // the task it replaces.
            let deadline = t
                .created_at_ms
                .max(t.not_before_ms)
                .max(self.olds_ended_at(t))
                .saturating_add(limit);
            if self.now >= deadline {
                let why = format!(
                    "did not reach running{} within {}",
                    if svc.spec.task.health.is_set() {
                        " (healthy)"
                    } else {
                        ""
                    },
                    duration_text(limit)
                );
                self.changes.push(TaskChange::Stop {
                    id: t.id,
                    reason: format!("update: {why}"),
                });
                roll.fail(t.id, why);
                roll.unsettled = true;
                return false;
            }
            roll.busy += 1;
            self.wake_at(deadline);
            roll.unsettled = true;
            return true;
        }
        let free_at = t.ready_at_ms.saturating_add(roll.cfg.delay_ms);
        if self.now < free_at {
            roll.busy += 1;
            self.wake_at(free_at);
        }
        let watched_until = t.ready_at_ms.saturating_add(roll.cfg.monitor_ms);
        roll.monitor_until = roll.monitor_until.max(watched_until);
        true
    }

    /// The rolling update: failures judged, a few stale slots (global: nodes) replaced, stop-first
    /// or start-first, completion noted.
    fn roll_out(&mut self, svc: &Service, roll: &mut Roll) {
        if !self.judge(svc, roll) {
            return;
        }
        let global = svc.spec.mode == ServiceMode::Global;
        for (key, cur) in roll.take_batch() {
            let mut t = if global {
                self.fresh(svc, 0, Some(key), Some(cur))
            } else {
                self.fresh(svc, key, None, Some(cur))
            };
            if roll.cfg.order == UpdateOrder::StopFirst {
                self.shutdown(cur.id, TaskState::Shutdown);
                if cur.node.is_some() && !cur.status.state.is_terminal() {
                    // Started once the old task has stopped (see `promote`).
                    t.desired = TaskState::Ready;
                }
            }
            self.create(t);
        }
    }

    /// The update's decisions for this pass: failures counted against the ratio (pause,
    /// rollback or go on), completion recorded. True when stale slots may be replaced now.
    fn judge(&mut self, svc: &Service, roll: &mut Roll) -> bool {
        let Some(status) = roll.tracking.clone() else {
            // Nothing tracked (no update in progress, or it paused): stale tasks roll only
            // when no update was paused on them.
            return !svc.update_status.as_ref().is_some_and(|s| {
                matches!(s.state, UpdateState::Paused | UpdateState::RollbackPaused)
            });
        };
        let mut status = status;
        if !roll.failures.is_empty() {
            let (first, why) = roll.failures[0].clone();
            for (id, _) in &roll.failures {
                if !status.failed.contains(id) {
                    status.failed.push(*id);
                }
            }
            // Failed tasks over the tasks updated (a slot failing again counts again, as in
            // Swarm; a ratio of 1 tolerates everything).
            let total = roll.units.max(1) as u128;
            let failed = (status.failed.len() as u128).min(total);
            let exceeded = failed * 1_000_000 > u128::from(roll.cfg.max_failure_ppm) * total;
            let task = format!("{}: {why}", object_id_string(first));
            let rollback = status.state == UpdateState::RollbackStarted;
            if exceeded {
                match (rollback, roll.cfg.failure_action) {
                    (false, FailureAction::Rollback) => {
                        self.changes.push(TaskChange::Rollback {
                            service: svc.id,
                            version: svc.version,
                            message: format!(
                                "update rolled back due to failure or early termination of task {task}"
                            ),
                        });
                        return false;
                    }
                    (_, FailureAction::Continue) => {}
                    (rollback, _) => {
                        let (state, what) = if rollback {
                            (UpdateState::RollbackPaused, "rollback")
                        } else {
                            (UpdateState::Paused, "update")
                        };
                        status.state = state;
                        status.message = format!(
                            "{what} paused due to failure or early termination of task {task}"
                        );
                        self.set_status(svc, status);
                        return false;
                    }
                }
            }
            roll.tracking = Some(status.clone());
            self.set_status(svc, status.clone());
        }
        let done = roll.stale.is_empty() && roll.busy == 0 && !roll.unsettled;
        if done {
            if self.now >= roll.monitor_until {
                let rollback = status.state == UpdateState::RollbackStarted;
                status.state = if rollback {
                    UpdateState::RollbackCompleted
                } else {
                    UpdateState::Completed
                };
                status.completed_at_ms = self.now;
                status.message = if rollback {
                    "rollback completed".into()
                } else {
                    "update completed".into()
                };
                self.set_status(svc, status);
            } else {
                self.wake_at(roll.monitor_until);
            }
        }
        true
    }

    fn set_status(&mut self, svc: &Service, status: UpdateStatus) {
        // One status change per service and pass: the last decision wins.
        self.changes.retain(
            |c| !matches!(c, TaskChange::UpdateStatus { service, .. } if *service == svc.id),
        );
        self.changes.push(TaskChange::UpdateStatus {
            service: svc.id,
            version: svc.version,
            status,
        });
    }

    fn global_service(&mut self, svc: &'a Service) {
        let state = self.state;
        let mut covered: BTreeSet<NodeId> = BTreeSet::new();
        let mut roll = Roll::new(svc);
        for (node, tasks) in state.slots(svc.id) {
            let tasks: Vec<&Task> = tasks.collect();
            roll.slot_failed = failed_on(svc, &tasks);
            let Some((cur, olds)) = self.slot_view(&tasks) else {
                continue;
            };
            match self.where_is(svc, node) {
                Where::Gone | Where::Unfit(_) => {
                    self.shutdown(cur.id, TaskState::Shutdown);
                    self.maybe_orphan(cur);
                    for o in &olds {
                        self.shutdown(o.id, TaskState::Shutdown);
                        self.maybe_orphan(o);
                    }
                    continue;
                }
                Where::Down => {
                    covered.insert(node);
                    self.maybe_orphan(cur);
                    continue;
                }
                Where::Fine => {}
            }
            covered.insert(node);
            if self.keep_old(svc, cur, &olds, &mut roll) {
                continue;
            }
            if cur.status.state.is_terminal() {
                roll.ended(cur);
                if let Some(next) = self.restart(svc, cur, node) {
                    self.shutdown(cur.id, TaskState::Shutdown);
                    self.create(next);
                }
                continue;
            }
            self.promote(cur);
            if Self::out_of_date(svc, cur) {
                roll.stale.push((node, cur));
                continue;
            }
            if self.watch(svc, cur, &mut roll) && cur.status.state <= TaskState::Pending {
                self.global
                    .entry(svc.id)
                    .or_default()
                    .push((Placeable::Existing(cur.id), node));
            }
        }
        // Every eligible node without a task gets one.
        let mut fresh = Vec::new();
        for n in state.nodes().values() {
            if covered.contains(&n.id)
                || n.status.state != NodeState::Ready
                || n.availability != Availability::Active
                || self.where_is(svc, n.id) != Where::Fine
            {
                continue;
            }
            fresh.push(n.id);
        }
        roll.units = covered.len() + fresh.len();
        if !fresh.is_empty() {
            roll.unsettled = true;
        }
        self.roll_out(svc, &mut roll);
        for node in fresh {
            let t = self.fresh(svc, 0, Some(node), None);
            self.create(t);
        }
    }

    /// Tasks of a removed service: stop them (they were told to), orphan the lost ones, and
    /// forget them once they have stopped.
    fn removed_service(&mut self, id: ServiceId) {
        let state = self.state;
        for (_, tasks) in state.slots(id) {
            for t in tasks {
                self.maybe_orphan(t);
                if self.deletable(t) {
                    self.delete(t.id);
                }
            }
        }
    }

    /// Places every waiting task through the scheduler, keeping the explanation on those that
    /// stay pending.
    fn place(&mut self) {
        if self.replicated.is_empty() && self.global.is_empty() {
            return;
        }
        let (scheduler, index) = scheduler(self.state);
        let node_ids: Vec<NodeId> = index.keys().copied().collect();
        let replicated = std::mem::take(&mut self.replicated);
        for (sid, waiting) in replicated {
            let Some(svc) = self.state.service(sid) else {
                continue;
            };
            let placement = scheduler_spec(svc).map(|spec| {
                scheduler.schedule(&shoal_scheduler::ServiceRequest {
                    spec,
                    tasks: u32::try_from(waiting.len()).unwrap_or(u32::MAX),
                })
            });
            let (targets, reason) = match placement {
                Ok(p) => {
                    let mut targets = Vec::new();
                    for (i, count) in p.assignments {
                        targets.extend(std::iter::repeat_n(node_ids[i], count as usize));
                    }
                    (
                        targets,
                        p.pending
                            .map(|p| p.explanation.to_string())
                            .unwrap_or_default(),
                    )
                }
                Err(e) => (Vec::new(), e),
            };
            for (k, w) in waiting.into_iter().enumerate() {
                self.settle(w, targets.get(k).copied(), &reason);
            }
        }
        let global = std::mem::take(&mut self.global);
        for (sid, waiting) in global {
            let Some(svc) = self.state.service(sid) else {
                continue;
            };
            let spec = scheduler_spec(svc);
            for (w, node) in waiting {
                let result = match (&spec, index.get(&node)) {
                    (Ok(spec), Some(&i)) => scheduler.claim_on(i, spec).map_err(|f| {
                        let mut why = shoal_scheduler::Explanation::default();
                        why.set_runtime(svc.spec.task.runtime.as_str());
                        why.add(f);
                        why.to_string()
                    }),
                    (Err(e), _) => Err(e.clone()),
                    (_, None) => Err("node removed from the swarm".into()),
                };
                match result {
                    Ok(()) => self.settle(w, Some(node), ""),
                    Err(reason) => self.settle_global_pending(w, node, &reason),
                }
            }
        }
    }

    /// Records where a replicated task goes, or why it waits.
    fn settle(&mut self, w: Placeable, node: Option<NodeId>, reason: &str) {
        match (w, node) {
            (Placeable::New(i), node) => {
                let t = &mut self.creates[i];
                t.node = node;
                if node.is_none() {
                    t.pending_reason = reason.to_string();
                }
            }
            (Placeable::Existing(id), Some(node)) => {
                self.changes.push(TaskChange::Assign { id, node });
            }
            (Placeable::Existing(id), None) => self.explain(id, reason),
        }
    }

    /// A global task that does not fit on its node: created pending there, or kept pending.
    fn settle_global_pending(&mut self, w: Placeable, _node: NodeId, reason: &str) {
        match w {
            Placeable::New(i) => self.creates[i].pending_reason = reason.to_string(),
            Placeable::Existing(id) => self.explain(id, reason),
        }
    }

    fn explain(&mut self, id: TaskId, reason: &str) {
        let same = self.state.task(id).is_some_and(|t| t.status.err == reason);
        if !same {
            self.changes.push(TaskChange::Pending {
                id,
                reason: reason.to_string(),
            });
        }
    }

    fn finish(mut self) -> Plan {
        let creates = std::mem::take(&mut self.creates);
        // Creations after the shutdowns of the tasks they replace; assignments and pending
        // explanations of existing tasks last.
        let (assign, mut rest): (Vec<TaskChange>, Vec<TaskChange>) = self
            .changes
            .into_iter()
            .partition(|c| matches!(c, TaskChange::Assign { .. } | TaskChange::Pending { .. }));
        let max = self.cfg.max_changes;
        let more = self.capped || rest.len() + creates.len() + assign.len() > max;
        // Cut at `max` before moving anything past it (the same plan as cutting at the end).
        rest.truncate(max);
        let room = max - rest.len();
        rest.reserve_exact(room.min(creates.len() + assign.len()));
        rest.extend(creates.into_iter().take(room).map(TaskChange::Create));
        let room = max - rest.len();
        rest.extend(assign.into_iter().take(room));
        Plan {
            changes: rest,
            wake_at_ms: self.wake,
            more,
        }
    }
}
