//! How a manager answers the service and task requests: views of services and tasks for the
//! CLI, and the writes (create, update, remove, swarm update), checked on the leader before
//! they are proposed so that a bad request changes nothing.

use std::sync::Arc;

use std::collections::BTreeMap;

use shoal_cluster::{
    node_id_string, object_id_string, ClusterState, Command, Health, NodeId, SecretKind, Service,
    ServiceMode, Task, TaskId, TaskState,
};

use crate::agent::Member;
use crate::api::{Request, Response, SecretView, ServiceView, TaskView};
use crate::raft_driver::{now_ms, RaftHandle};
use crate::wire::{LogCursor, TaskLogLine};
use shoal_cluster::RequestId;

/// A service as the CLI shows it.
pub fn service_view(st: &ClusterState, s: &Service) -> ServiceView {
    let mut running = 0;
    let mut live = 0;
    for t in st.tasks_of_service(s.id) {
        if t.live() {
            live += 1;
            if t.is_ready() {
                running += 1;
            }
        }
    }
    ServiceView {
        id: object_id_string(s.id),
        version: s.version,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        spec: s.spec.clone(),
        previous: s.previous.clone(),
        update_status: s.update_status.clone(),
        running,
        desired: match s.spec.mode {
            ServiceMode::Replicated { replicas } => replicas,
            ServiceMode::Global => live,
        },
        // Only `service inspect` shows them (its caller fills them in): not computed for a list.
        endpoints: None,
    }
}

/// A task as the CLI shows it; `current`: the slot's newest wanted task (else its newest).
pub fn task_view(st: &ClusterState, t: &Task, current: bool) -> TaskView {
    let svc = st.service(t.service);
    let name = svc.map_or_else(|| "(removed)".to_string(), |s| s.spec.name.clone());
    let node = t.node.and_then(|n| st.node(n));
    let spec = svc.and_then(|s| s.spec_of(t.spec_version));
    let ports = match spec {
        // As the node bound them (an engine-picked port shows its number).
        _ if t.status.state == TaskState::Running && !t.status.ports.is_empty() => t
            .status
            .ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
        // A task of an older agent: as the spec asks.
        Some(spec) if t.status.state == TaskState::Running => spec
            .task
            .ports
            .iter()
            .filter(|p| p.mode == shoal_cluster::PublishMode::Host)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    };
    TaskView {
        id: object_id_string(t.id),
        name: if t.slot > 0 {
            format!("{name}.{}", t.slot)
        } else {
            format!("{name}.{}", t.node.map(node_id_string).unwrap_or_default())
        },
        service_id: object_id_string(t.service),
        service_name: name,
        slot: t.slot,
        node_id: t.node.map(node_id_string).unwrap_or_default(),
        node: node.map_or_else(
            || t.node.map(node_id_string).unwrap_or_default(),
            |n| n.description.hostname.clone(),
        ),
        image: spec.map(|s| s.task.image.clone()).unwrap_or_default(),
        desired_state: t.desired.title().into(),
        state: match t.status.health {
            // `Running (healthy)`, as docker ps shows a container's health.
            h if h != Health::None && t.status.state == TaskState::Running => {
                format!("{} ({})", t.status.state.title(), h.name())
            }
            _ => t.status.state.title().into(),
        },
        state_since_ms: t.status.timestamp_ms,
        message: t.status.message.clone(),
        err: t.status.err.clone(),
        exit_code: t.status.exit_code,
        pid: t.status.pid,
        container_id: t.status.container_id.clone(),
        created_at_ms: t.created_at_ms,
        spec_version: t.spec_version,
        current,
        up_to_date: svc.is_some_and(|s| {
            s.spec_of(t.spec_version)
                .is_some_and(|old| old.task == s.spec.task)
        }),
        ports,
    }
}

/// Tasks of the given services (all if none) and/or on one node: by service name, slot, and
/// newest first within a slot, as `service ps` lists them.
pub fn task_list(
    st: &ClusterState,
    services: &[String],
    node: Option<&str>,
) -> Result<Vec<TaskView>, String> {
    let mut ids = Vec::new();
    for q in services {
        ids.push(st.resolve_service(q).map_err(|e| e.to_string())?.id);
    }
    let node = match node {
        Some(n) => Some(st.resolve(n).map_err(|e| e.to_string())?.id),
        None => None,
    };
    let mut keys: Vec<(u64, u64)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in st.tasks().values() {
        if (ids.is_empty() || ids.contains(&t.service)) && seen.insert((t.service, key(t))) {
            keys.push((t.service, key(t)));
        }
    }
    let mut out = Vec::new();
    for (service, k) in keys {
        let slot: Vec<&Task> = st.slot_tasks(service, k).collect();
        // The slot's current task: its newest wanted one (a rollback may go back to an older
        // task a start-first update kept), else its newest.
        let current = slot
            .iter()
            .rev()
            .find(|t| t.wanted())
            .or(slot.last())
            .map(|t| t.id);
        for t in slot.iter().rev() {
            if node.is_some_and(|n| t.node != Some(n)) {
                continue;
            }
            out.push(task_view(st, t, Some(t.id) == current));
        }
    }
    // By service, slot (global: node), the current task first, then newest first.
    let key = |t: &TaskView| {
        let node = if t.slot == 0 {
            t.node_id.clone()
        } else {
            String::new()
        };
        (
            t.service_name.clone(),
            t.slot,
            node,
            !t.current,
            std::cmp::Reverse(t.created_at_ms),
        )
    };
    out.sort_by_key(key);
    Ok(out)
}

fn key(t: &Task) -> u64 {
    if t.slot > 0 {
        t.slot
    } else {
        t.node.unwrap_or(0)
    }
}

impl Member {
    /// The service and task requests, on the leader (after a read barrier for reads).
    pub(crate) async fn on_leader_services(
        self: &Arc<Self>,
        h: &RaftHandle,
        req: Request,
        rid: Option<RequestId>,
    ) -> Response {
        let read = |f: &dyn Fn(&ClusterState) -> Response| f(&h.state.read().expect("state"));
        match req {
            Request::ServiceList | Request::ServiceInspect { .. } | Request::TaskList { .. } => {
                if let Err(e) = self.read_barrier().await {
                    return Response::error(e);
                }
                read(&|st| match &req {
                    Request::ServiceList => {
                        let mut services: Vec<ServiceView> = st
                            .services()
                            .values()
                            .map(|s| service_view(st, s))
                            .collect();
                        services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
                        Response::Services { services }
                    }
                    Request::ServiceInspect { service } => match st.resolve_service(service) {
                        Ok(s) => Response::Service {
                            service: Box::new(ServiceView {
                                endpoints: st.service_endpoints(s.id).map(Into::into),
                                ..service_view(st, s)
                            }),
                        },
                        Err(e) => Response::error(e),
                    },
                    Request::TaskList { services, node } => {
                        match task_list(st, services, node.as_deref()) {
                            Ok(tasks) => Response::Tasks { tasks },
                            Err(e) => Response::error(e),
                        }
                    }
                    _ => Response::error("not a read"),
                })
            }
            Request::ServiceCreate { mut spec } => {
                if let Err(e) = resolve_refs(&h.state.read().expect("state"), &mut spec) {
                    return Response::error(e);
                }
                if let Err(e) = spec.validate() {
                    return Response::error(e);
                }
                let name = spec.name.clone();
                let cmd = Command::CreateService {
                    spec,
                    at_ms: now_ms(),
                };
                match self.propose_as(rid, cmd).await {
                    Ok(()) => created(h, &name),
                    Err(e) => Response::error(e),
                }
            }
            Request::ServiceUpdate {
                service,
                version,
                mut spec,
            } => {
                let id = {
                    let st = h.state.read().expect("state");
                    if let Err(e) = resolve_refs(&st, &mut spec) {
                        return Response::error(e);
                    }
                    match st.resolve_service(&service) {
                        Ok(s) => s.id,
                        Err(e) => return Response::error(e),
                    }
                };
                if let Err(e) = spec.validate() {
                    return Response::error(e);
                }
                let cmd = Command::UpdateService {
                    id,
                    expected_version: Some(version),
                    spec,
                    at_ms: now_ms(),
                };
                match self.propose_as(rid, cmd).await {
                    Ok(()) => Response::ok(object_id_string(id)),
                    Err(e) => Response::error(e),
                }
            }
            Request::ServiceRollback { service, version } => {
                let id = match h.state.read().expect("state").resolve_service(&service) {
                    Ok(s) => s.id,
                    Err(e) => return Response::error(e),
                };
                let cmd = Command::RollbackService {
                    id,
                    expected_version: version,
                    at_ms: now_ms(),
                };
                match self.propose_as(rid, cmd).await {
                    Ok(()) => Response::ok(object_id_string(id)),
                    Err(e) => Response::error(e),
                }
            }
            Request::ServiceRemove { service } => {
                let id = match h.state.read().expect("state").resolve_service(&service) {
                    Ok(s) => s.id,
                    Err(e) => return Response::error(e),
                };
                let cmd = Command::RemoveService {
                    id,
                    at_ms: now_ms(),
                };
                match self.propose_as(rid, cmd).await {
                    Ok(()) => Response::ok(service),
                    Err(e) => Response::error(e),
                }
            }
            Request::SwarmUpdate {
                task_history_limit,
                autolock,
            } => {
                if task_history_limit.is_some() {
                    let cmd = Command::UpdateSettings {
                        task_history_limit,
                        at_ms: now_ms(),
                    };
                    // With autolock as well, the request id goes with the last command.
                    let id = if autolock.is_some() { None } else { rid };
                    if let Err(e) = self.propose_as(id, cmd).await {
                        return Response::error(e);
                    }
                }
                let on = h
                    .state
                    .read()
                    .expect("state")
                    .cluster()
                    .is_some_and(|c| !c.unlock_key.is_empty());
                match autolock {
                    Some(true) if on => unlock_key_answer(h, true),
                    Some(true) => self.set_unlock_key(h, rid, true).await,
                    Some(false) if on => match self.propose_as(rid, set_key(String::new())).await {
                        Ok(()) => Response::ok("Swarm updated: autolock is off."),
                        Err(e) => Response::error(e),
                    },
                    Some(false) => Response::ok("Swarm updated: autolock was off already."),
                    None => Response::ok("Swarm updated."),
                }
            }
            Request::UnlockKey { rotate } => {
                if let Err(e) = self.read_barrier().await {
                    return Response::error(e);
                }
                let on = h
                    .state
                    .read()
                    .expect("state")
                    .cluster()
                    .is_some_and(|c| !c.unlock_key.is_empty());
                if !on {
                    return Response::error(
                        "autolock is off on this swarm: turn it on with shoal swarm update \
                         --autolock=true",
                    );
                }
                if rotate {
                    self.set_unlock_key(h, rid, false).await
                } else {
                    unlock_key_answer(h, false)
                }
            }
            Request::SecretList { .. } | Request::SecretInspect { .. } => {
                if let Err(e) = self.read_barrier().await {
                    return Response::error(e);
                }
                read(&|st| match &req {
                    Request::SecretList { kind } => {
                        let mut secrets: Vec<SecretView> = st
                            .secrets()
                            .values()
                            .filter(|s| s.kind == *kind)
                            .map(|s| secret_view(s, false))
                            .collect();
                        secrets.sort_by(|a, b| a.name.cmp(&b.name));
                        Response::Secrets { secrets }
                    }
                    Request::SecretInspect { kind, name } => match st.resolve_secret(*kind, name) {
                        Ok(s) => Response::Secrets {
                            secrets: vec![secret_view(s, true)],
                        },
                        Err(e) => Response::error(e),
                    },
                    _ => Response::error("not a read"),
                })
            }
            Request::SecretCreate {
                kind,
                spec,
                exist_ok,
            } => {
                if let Err(e) = spec.validate(kind) {
                    return Response::error(e);
                }
                if exist_ok {
                    let st = h.state.read().expect("state");
                    let same_name = st
                        .secrets()
                        .values()
                        .find(|s| s.kind == kind && s.spec.name == spec.name);
                    match same_name {
                        Some(s) if s.spec.data == spec.data => {
                            return Response::ok(object_id_string(s.id))
                        }
                        Some(_) => {
                            return Response::error(format!(
                                "{k} {n} exists with other content, and a {k} cannot change: \
                                 give the new content another name (such as {n}_v2) and point \
                                 the services at it",
                                k = kind.name(),
                                n = spec.name
                            ))
                        }
                        None => {}
                    }
                }
                let name = spec.name.clone();
                let cmd = Command::CreateSecret {
                    kind,
                    spec,
                    at_ms: now_ms(),
                };
                match self.propose_as(rid, cmd).await {
                    Ok(()) => secret_created(h, kind, &name),
                    Err(e) => Response::error(e),
                }
            }
            Request::SecretRemove { kind, name } => {
                let id = match h.state.read().expect("state").resolve_secret(kind, &name) {
                    Ok(s) => s.id,
                    Err(e) => return Response::error(e),
                };
                let cmd = Command::RemoveSecret {
                    kind,
                    id,
                    at_ms: now_ms(),
                };
                match self.propose_as(rid, cmd).await {
                    Ok(()) => Response::ok(name),
                    Err(e) => Response::error(e),
                }
            }
            _ => Response::error("not a service request"),
        }
    }
}

/// A secret or config for the CLI: a config's data only when `with_data` (inspect), a secret's
/// never.
fn set_key(key: String) -> Command {
    Command::SetUnlockKey {
        key,
        at_ms: now_ms(),
    }
}

/// The answer that shows the unlock key (after `swarm update --autolock=true` when `updated`).
pub(crate) fn unlock_key_answer(h: &RaftHandle, updated: bool) -> Response {
    let key = h
        .state
        .read()
        .expect("state")
        .cluster()
        .map(|c| c.unlock_key.clone())
        .unwrap_or_default();
    if key.is_empty() {
        return Response::error("autolock is off on this swarm");
    }
    Response::UnlockKey { key, updated }
}

impl Member {
    /// Turns autolock on or gives it a new key: a new random key, committed, then shown.
    async fn set_unlock_key(
        self: &Arc<Self>,
        h: &RaftHandle,
        rid: Option<RequestId>,
        updated: bool,
    ) -> Response {
        let key = match shoal_raft::seal::random_key() {
            Ok(k) => shoal_cluster::format_unlock_key(&k),
            Err(e) => return Response::error(format!("cannot make a key: {e}")),
        };
        match self.propose_as(rid, set_key(key)).await {
            Ok(()) => unlock_key_answer(h, updated),
            Err(e) => Response::error(e),
        }
    }
}

/// Gives the secrets and configs a request names by name (or id prefix) their ids.
fn resolve_refs(
    st: &ClusterState,
    spec: &mut shoal_cluster::ServiceSpec,
) -> Result<(), shoal_cluster::ClusterError> {
    for r in &mut spec.task.secrets {
        if r.id == 0 {
            let s = st.resolve_secret(r.kind, &r.name)?;
            r.id = s.id;
            r.name = s.spec.name.clone();
        }
    }
    Ok(())
}

fn secret_view(s: &shoal_cluster::Secret, with_data: bool) -> SecretView {
    let (data, binary) = match (s.kind, with_data) {
        (SecretKind::Config, true) => match std::str::from_utf8(&s.spec.data) {
            Ok(text) => (Some(text.to_string()), false),
            Err(_) => (
                Some(s.spec.data.iter().map(|b| format!("{b:02x}")).collect()),
                true,
            ),
        },
        _ => (None, false),
    };
    SecretView {
        id: object_id_string(s.id),
        kind: s.kind,
        name: s.spec.name.clone(),
        labels: s.spec.labels.clone(),
        created_at_ms: s.created_at_ms,
        size: s.spec.data.len(),
        data,
        binary,
    }
}

/// The answer to a secret or config created: its id.
pub(crate) fn secret_created(h: &RaftHandle, kind: SecretKind, name: &str) -> Response {
    match h.state.read().expect("state").resolve_secret(kind, name) {
        Ok(s) => Response::ok(object_id_string(s.id)),
        Err(e) => Response::error(e),
    }
}

impl Member {
    /// `service logs`: gathers the output of a service's tasks (or of one task) from the nodes
    /// that ran them, concurrently; a node that does not answer becomes a warning, never a
    /// failure of the whole request.
    pub(crate) async fn service_logs(
        self: &Arc<Self>,
        service: &str,
        tail: Option<usize>,
        cursors: std::collections::BTreeMap<String, LogCursor>,
    ) -> Response {
        let Some(h) = self.raft() else {
            return Response::error(crate::control::NOT_A_MANAGER);
        };
        // Which tasks, on which nodes, under which names.
        let mut by_node: BTreeMap<NodeId, Vec<(TaskId, LogCursor)>> = BTreeMap::new();
        let mut names: BTreeMap<TaskId, String> = BTreeMap::new();
        let mut hosts: BTreeMap<NodeId, (String, bool)> = BTreeMap::new();
        {
            let st = h.state.read().expect("state");
            let q = service.trim();
            let single = (q.len() == 16)
                .then(|| u64::from_str_radix(q, 16).ok())
                .flatten()
                .and_then(|id| st.task(id));
            let tasks: Vec<&Task> = match single {
                Some(t) => vec![t],
                None => match st.resolve_service(q) {
                    Ok(svc) => st.tasks_of_service(svc.id).collect(),
                    Err(e) => return Response::error(e),
                },
            };
            for t in tasks {
                let Some(node) = t.node else { continue };
                if t.status.state < TaskState::Accepted {
                    continue;
                }
                let v = task_view(&st, t, true);
                let cursor = cursors.get(&v.id).copied().unwrap_or_default();
                names.insert(t.id, format!("{}.{}@{}", v.name, v.id, v.node));
                by_node.entry(node).or_default().push((t.id, cursor));
                hosts.entry(node).or_insert_with(|| {
                    let down = st
                        .node(node)
                        .is_none_or(|n| n.status.state != shoal_cluster::NodeState::Ready);
                    (v.node.clone(), down)
                });
            }
        }
        let mut asks = tokio::task::JoinSet::new();
        let mut warnings = Vec::new();
        for (node, tasks) in by_node {
            if hosts.get(&node).is_some_and(|(_, down)| *down) {
                let host = &hosts[&node].0;
                warnings.push(format!("node {host} is down: its tasks' output is missing"));
                continue;
            }
            let m = self.clone();
            asks.spawn(async move {
                let r = m.node_logs(node, tasks, tail).await;
                (node, r)
            });
        }
        let mut lines = Vec::new();
        while let Some(done) = asks.join_next().await {
            let Ok((node, r)) = done else { continue };
            match r {
                Ok(mut l) => lines.append(&mut l),
                Err(e) => {
                    let (host, down) = hosts.get(&node).cloned().unwrap_or_default();
                    warnings.push(if down {
                        format!("node {host} is down: its tasks' output is missing")
                    } else {
                        format!("node {host} did not give its tasks' output: {e}")
                    });
                    tracing::debug!(node = %shoal_cluster::node_id_string(node), "logs: {e}");
                }
            }
        }
        lines.sort_by_key(|l| l.timestamp_ms);
        let mut next = cursors;
        let mut out = Vec::with_capacity(lines.len());
        for l in lines {
            let id = object_id_string(l.task);
            next.entry(id).or_default().advance(l.timestamp_ms);
            out.push(crate::api::LogView {
                source: names.get(&l.task).cloned().unwrap_or_default(),
                timestamp_ms: l.timestamp_ms,
                stderr: l.stderr,
                text: l.text,
            });
        }
        warnings.sort();
        Response::Logs {
            lines: out,
            cursors: next,
            warnings,
        }
    }

    /// One node's part of `service logs` (this node's own runner, or a request).
    async fn node_logs(
        self: &Arc<Self>,
        node: NodeId,
        tasks: Vec<(TaskId, LogCursor)>,
        tail: Option<usize>,
    ) -> Result<Vec<TaskLogLine>, String> {
        if node == self.id {
            return match self.runner() {
                Some(r) => Ok(r.logs(&tasks, tail).await),
                None => Err("this node runs no tasks".into()),
            };
        }
        let req = crate::wire::encode_request(&crate::wire::AgentRequest::TaskLogs { tasks, tail });
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.transport.request(node, &req),
        )
        .await
        {
            Ok(Ok(bytes)) => match crate::wire::decode_response(&bytes) {
                Response::Ok { message } => {
                    serde_json::from_str(&message).map_err(|e| format!("malformed answer: {e}"))
                }
                Response::Error { message } => Err(message),
                _ => Err("unexpected answer".into()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5s".into()),
        }
    }
}

/// The answer to a create: the new service's id.
pub(crate) fn created(h: &RaftHandle, name: &str) -> Response {
    match h.state.read().expect("state").resolve_service(name) {
        Ok(s) => Response::ok(object_id_string(s.id)),
        Err(e) => Response::error(e),
    }
}
