//! The dispatcher, on every manager: hands each node its tasks (the whole set, then what
//! changed, answering a long poll) and takes the nodes' status reports to the leader, which
//! commits them in batches (`Command::ReportTasks`, one entry per node and round, never one per
//! task).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_cluster::{
    ClusterState, Command, NodeId, ServiceEndpoints, TaskId, TaskReport, TaskState, MAX_BATCH,
};

use crate::api::Response;
use crate::raft_driver::{now_ms, RaftCmd, RaftHandle};
use crate::wire::{Assignment, Assignments, TaskFile};

/// The longest a node's request for assignments waits for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Most often a node gets a new endpoint table when nothing else changed for it.
const ENDPOINTS_EVERY: Duration = Duration::from_millis(200);

/// Most changed tasks in one increment; the rest follow in the next answers.
const MAX_TASKS_PER_ANSWER: usize = 4096;

/// What a manager remembers of each node's session: what it last sent.
#[derive(Default)]
pub struct Sessions {
    nodes: Mutex<HashMap<NodeId, Session>>,
    /// The endpoint table at an applied index: computed once per change of the state, not
    /// once per node.
    endpoints: Mutex<(u64, Arc<Vec<ServiceEndpoints>>)>,
}

#[derive(Default)]
struct Session {
    id: u64,
    seq: u64,
    /// Task → version, as last sent.
    sent: HashMap<TaskId, u64>,
    /// The endpoint table, as last sent, and when.
    endpoints: Option<Arc<Vec<ServiceEndpoints>>>,
    endpoints_at: Option<std::time::Instant>,
}

/// The tasks a node should know of: assigned to it and past pending (a global task still
/// pending on its node is not the node's business yet).
fn node_tasks(st: &ClusterState, node: NodeId) -> BTreeMap<TaskId, u64> {
    st.tasks_on_node(node)
        .filter(|t| t.status.state >= TaskState::Assigned)
        .map(|t| (t.id, t.version))
        .collect()
}

fn assignment(st: &ClusterState, id: TaskId) -> Option<Assignment> {
    let t = st.task(id)?;
    let svc = st.service(t.service);
    let spec = svc.and_then(|s| s.spec_of(t.spec_version));
    // A task's secrets travel with it only while it is to run: history and stopping tasks
    // do not carry them.
    let to_run = t.desired <= TaskState::Running && !t.status.state.is_terminal();
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for r in spec.iter().flat_map(|s| &s.task.secrets).filter(|_| to_run) {
        match st.secrets().get(&r.id) {
            Some(s) if s.kind == r.kind => files.push(TaskFile {
                reference: r.clone(),
                data: s.spec.data.clone(),
            }),
            _ => missing.push(format!("{} {} not found", r.kind.name(), r.name)),
        }
    }
    Some(Assignment {
        task: t.clone(),
        service_name: svc.map(|s| s.spec.name.clone()).unwrap_or_default(),
        spec: spec.map(|s| s.task.clone()),
        files,
        missing: missing.join("; "),
    })
}

impl Sessions {
    /// Answers a node's request for its tasks from this manager's replica, waiting up to
    /// `wait` for a change when the node is up to date.
    pub async fn assignments(
        self: &Arc<Self>,
        h: &RaftHandle,
        node: NodeId,
        session: u64,
        seq: u64,
        wait: Duration,
    ) -> Response {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut status = h.status.clone();
        loop {
            let (applied, commit, leader, in_touch) = {
                let s = status.borrow_and_update();
                (s.applied, s.commit, s.leader, s.in_touch())
            };
            // A replica out of touch with any leader may be stale (restarted, cut off, or
            // removed while it was away): the node must ask another manager instead.
            if !in_touch {
                return Response::error(
                    "this manager is out of touch with the leader; ask another",
                );
            }
            let current = applied >= commit;
            if current {
                if let Some(answer) = self.try_answer(h, node, session, seq) {
                    return Response::Assignments(answer);
                }
            }
            // Nothing new: wait until the state moves (status is published every tick).
            let moved = async {
                loop {
                    status.changed().await?;
                    let s = status.borrow_and_update();
                    if s.applied != applied || s.leader != leader || !current {
                        return Ok::<(), tokio::sync::watch::error::RecvError>(());
                    }
                }
            };
            // Looked at again soon in any case: an endpoint table held back goes out then.
            let recheck = tokio::time::Instant::now() + ENDPOINTS_EVERY;
            match tokio::time::timeout_at(deadline.min(recheck), moved).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Response::error("this manager stopped its Raft replica"),
                Err(_) if tokio::time::Instant::now() < deadline => continue,
                Err(_) => {
                    // Nothing changed: an empty increment (keeps the sequence going).
                    let mut nodes = self.nodes.lock().expect("sessions");
                    let s = nodes.entry(node).or_default();
                    if s.id == session && s.seq == seq {
                        s.seq += 1;
                        let index = h.state.read().expect("state").applied();
                        return Response::Assignments(Assignments {
                            session,
                            seq: s.seq,
                            index,
                            ..Default::default()
                        });
                    }
                    drop(nodes);
                    if let Some(answer) = self.try_answer(h, node, session, seq) {
                        return Response::Assignments(answer);
                    }
                    return Response::error("assignment session changed; ask again");
                }
            }
        }
    }

    /// The answer if there is one to give now: the whole set for a new or out-of-step session,
    /// else the changes (none → `None`, wait).
    fn try_answer(
        &self,
        h: &RaftHandle,
        node: NodeId,
        session: u64,
        seq: u64,
    ) -> Option<Assignments> {
        let st = h.state.read().expect("state");
        let now = node_tasks(&st, node);
        let table = {
            let mut cached = self.endpoints.lock().expect("endpoints");
            if cached.0 != st.applied() {
                *cached = (st.applied(), Arc::new(st.endpoints()));
            }
            cached.1.clone()
        };
        let mut nodes = self.nodes.lock().expect("sessions");
        let s = nodes.entry(node).or_default();
        let in_step = s.id == session && s.seq == seq && seq > 0;
        tracing::debug!(
            node = %shoal_cluster::node_id_string(node),
            session,
            seq,
            known_session = s.id,
            known_seq = s.seq,
            tasks = now.len(),
            "assignments asked"
        );
        if !in_step {
            s.id = session;
            s.seq = seq.max(s.seq) + 1;
            s.sent.clear();
            s.endpoints = Some(table.clone());
            s.endpoints_at = Some(std::time::Instant::now());
            // The whole set in one answer, however large: a node stops every task a full set
            // does not list.
            let mut tasks = Vec::with_capacity(now.len());
            for (&id, &version) in &now {
                if let Some(a) = assignment(&st, id) {
                    s.sent.insert(id, version);
                    tasks.push(a);
                }
            }
            return Some(Assignments {
                session,
                seq: s.seq,
                full: true,
                tasks,
                removed: Vec::new(),
                index: st.applied(),
                endpoints: Some(table.to_vec()),
            });
        }
        let removed: Vec<TaskId> = s
            .sent
            .keys()
            .filter(|id| !now.contains_key(id))
            .copied()
            .collect();
        let mut tasks = Vec::new();
        for (&id, &version) in &now {
            if tasks.len() == MAX_TASKS_PER_ANSWER {
                break;
            }
            if s.sent.get(&id) != Some(&version) {
                if let Some(a) = assignment(&st, id) {
                    tasks.push(a);
                    s.sent.insert(id, version);
                }
            }
        }
        let changed = !s.endpoints.as_ref().is_some_and(|e| Arc::ptr_eq(e, &table))
            && s.endpoints.as_deref() != Some(&*table);
        // A change of the table alone waits a little for the next ones (a service scaling
        // changes it at every task started), then goes with the latest.
        let due = s
            .endpoints_at
            .is_none_or(|at| at.elapsed() >= ENDPOINTS_EVERY);
        let endpoints =
            (changed && (due || !tasks.is_empty() || !removed.is_empty())).then(|| table.to_vec());
        if tasks.is_empty() && removed.is_empty() && endpoints.is_none() {
            return None;
        }
        if endpoints.is_some() {
            s.endpoints = Some(table);
            s.endpoints_at = Some(std::time::Instant::now());
        }
        for id in &removed {
            s.sent.remove(id);
        }
        s.seq += 1;
        Some(Assignments {
            session,
            seq: s.seq,
            full: false,
            tasks,
            removed,
            index: st.applied(),
            endpoints,
        })
    }
}

/// The leader's collector of status reports: reports that arrive while a batch is being
/// committed wait and go together in the next one (per node, latest per task).
#[derive(Default)]
pub struct Reports {
    pending: Mutex<BTreeMap<NodeId, BTreeMap<TaskId, TaskReport>>>,
    /// Answered once the batch holding the waiters' reports has committed.
    waiters: Mutex<Vec<tokio::sync::oneshot::Sender<Result<(), String>>>>,
    busy: tokio::sync::Mutex<()>,
}

impl Reports {
    /// Queues a node's reports and returns once they are committed (or the commit failed).
    pub async fn commit(
        &self,
        h: &RaftHandle,
        node: NodeId,
        reports: Vec<TaskReport>,
    ) -> Result<(), String> {
        if reports.len() > MAX_BATCH {
            return Err(format!(
                "{} task reports in one request, more than {MAX_BATCH}",
                reports.len()
            ));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut p = self.pending.lock().expect("reports");
            let mine = p.entry(node).or_default();
            for r in reports {
                let newer = mine
                    .get(&r.id)
                    .is_none_or(|old| old.status.state <= r.status.state);
                if newer {
                    mine.insert(r.id, r);
                }
            }
            self.waiters.lock().expect("waiters").push(tx);
        }
        // One batch at a time: whoever gets the lock commits everything queued so far.
        {
            let _turn = self.busy.lock().await;
            let (batch, waiters) = {
                let mut p = self.pending.lock().expect("reports");
                let batch = std::mem::take(&mut *p);
                let waiters = std::mem::take(&mut *self.waiters.lock().expect("waiters"));
                (batch, waiters)
            };
            if !waiters.is_empty() {
                // Every node's entry proposed at once, then all awaited: one fsync round.
                let mut replies = Vec::new();
                for (node, reports) in batch {
                    let reports: Vec<TaskReport> = reports.into_values().collect();
                    for chunk in reports.chunks(MAX_BATCH) {
                        let cmd = Command::ReportTasks {
                            node,
                            reports: chunk.to_vec(),
                            at_ms: now_ms(),
                        };
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if h.tx
                            .send(RaftCmd::Propose(Box::new(cmd), tx))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        replies.push(rx);
                    }
                }
                let mut result = Ok(());
                for rx in replies {
                    match tokio::time::timeout(Duration::from_secs(10), rx).await {
                        Ok(Ok(Ok(()))) => {}
                        Ok(Ok(Err(e))) => result = Err(e),
                        Ok(Err(_)) => result = Err("the Raft replica stopped".to_string()),
                        Err(_) => result = Err("the reports were not committed within 10 s".into()),
                    }
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        }
        rx.await
            .unwrap_or_else(|_| Err("the report batch was dropped".into()))
    }
}
