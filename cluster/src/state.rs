//! The cluster state machine: applies commands in log order, deterministically, and snapshots
//! and restores itself whole.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::{Command, NodeUpdate, RequestId};
use crate::error::ClusterError;
use crate::service::{Service, ServiceId, Settings, Task, TaskId};
use crate::types::{
    node_id_string, parse_unlock_key, validate_addr, validate_description, validate_label,
    validate_labels, Availability, ClusterInfo, NewNode, Node, NodeId, NodeState, NodeStatus, Role,
};

/// Version byte in front of every snapshot (3: services, tasks and settings).
pub const SNAPSHOT_VERSION: u8 = 10;

/// Request ids remembered for retries (the oldest are forgotten first). A retry arrives within
/// seconds; this many writes take far longer on any real cluster.
pub const MAX_REMEMBERED_REQUESTS: usize = 10_000;

/// Status message of a node admitted with a join token that has not connected yet.
pub const JOINING: &str = "joining the swarm";

/// Most removed node ids remembered (each is 8 bytes; a cluster that removed a million nodes
/// refuses further removals rather than growing without bound).
const MAX_REMOVED: usize = 1_000_000;

/// Largest snapshot accepted by [`ClusterState::restore`].
const MAX_SNAPSHOT_SIZE: usize = 256 << 20;

/// The replicated state: the cluster and its nodes, and the Raft index last applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    cluster: Option<ClusterInfo>,
    nodes: BTreeMap<NodeId, Node>,
    applied: u64,
    /// Nodes removed from the swarm: denied by every node, forever.
    removed: BTreeSet<NodeId>,
    /// The first result of each remembered request id.
    requests: BTreeMap<RequestId, Result<(), String>>,
    /// Remembered request ids, oldest first.
    request_order: VecDeque<RequestId>,
    /// Services, by id.
    pub(crate) services: BTreeMap<ServiceId, Service>,
    /// Tasks, by id.
    pub(crate) tasks: BTreeMap<TaskId, Task>,
    /// `swarm update` settings.
    pub(crate) settings: Settings,
    /// Secrets and configs, by id.
    pub(crate) secrets: BTreeMap<crate::secrets::SecretId, crate::secrets::Secret>,
    /// Operators' client certificates, by serial.
    pub(crate) operators: BTreeMap<String, crate::operators::Operator>,
    /// Task ids per (service, slot) for replicated services and per (service, node) for global
    /// ones, oldest first (derived; rebuilt on restore).
    #[serde(skip)]
    pub(crate) by_slot: BTreeMap<(ServiceId, u64), Vec<TaskId>>,
    /// Task ids per node (derived; rebuilt on restore).
    #[serde(skip)]
    pub(crate) by_node: BTreeMap<NodeId, BTreeSet<TaskId>>,
}

impl ClusterState {
    /// An empty state (before `swarm init`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The cluster, once initialised.
    pub fn cluster(&self) -> Option<&ClusterInfo> {
        self.cluster.as_ref()
    }

    /// Every node, by id.
    pub fn nodes(&self) -> &BTreeMap<NodeId, Node> {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// The Raft index of the last command applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Ids of nodes removed from the swarm (never admitted again, denied in every handshake).
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    /// Whether `id` was removed from the swarm.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed.contains(&id)
    }

    /// The first result of request `id`, if it was applied and is still remembered.
    pub fn request_result(&self, id: &RequestId) -> Option<&Result<(), String>> {
        self.requests.get(id)
    }

    /// Nodes whose observed role is manager.
    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.role == Role::Manager)
    }

    /// Finds a node by exact id, exact hostname, or unique id prefix (in that order, as the
    /// docker CLI does).
    pub fn resolve(&self, query: &str) -> Result<&Node, ClusterError> {
        let q = query.trim();
        if q.is_empty() {
            return Err(ClusterError::NodeNotFound(format!("{query:?}")));
        }
        if let Some(n) = self.nodes.values().find(|n| node_id_string(n.id) == q) {
            return Ok(n);
        }
        let by_name: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.description.hostname == q)
            .collect();
        match by_name.len() {
            1 => return Ok(by_name[0]),
            0 => {}
            count => {
                return Err(ClusterError::AmbiguousNode {
                    query: q.to_string(),
                    count,
                })
            }
        }
        let lower = q.to_ascii_lowercase();
        let by_prefix: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| node_id_string(n.id).starts_with(&lower))
            .collect();
        match by_prefix.len() {
            1 => Ok(by_prefix[0]),
            0 => Err(ClusterError::NodeNotFound(q.to_string())),
            count => Err(ClusterError::AmbiguousNode {
                query: q.to_string(),
                count,
            }),
        }
    }

    /// Applies the command at Raft index `index`. A refused command changes nothing (but the
    /// index still counts as applied); every replica refuses the same commands.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<(), ClusterError> {
        self.applied = self.applied.max(index);
        let Command::Tracked { id, cmd } = cmd else {
            return self.apply_one(index, cmd);
        };
        if let Some(first) = self.requests.get(id) {
            return first.clone().map_err(ClusterError::Repeated);
        }
        let result = if matches!(**cmd, Command::Tracked { .. }) {
            Err(ClusterError::Invalid("nested request ids".into()))
        } else {
            self.apply_one(index, cmd)
        };
        self.requests
            .insert(*id, result.clone().map_err(|e| e.to_string()));
        self.request_order.push_back(*id);
        while self.request_order.len() > MAX_REMEMBERED_REQUESTS {
            if let Some(old) = self.request_order.pop_front() {
                self.requests.remove(&old);
            }
        }
        result
    }

    fn apply_one(&mut self, index: u64, cmd: &Command) -> Result<(), ClusterError> {
        if let Some(result) = self.apply_service_command(index, cmd) {
            return result;
        }
        if let Some(result) = self.apply_operator_command(cmd) {
            return result;
        }
        let mut next = None;
        let result = self.check_and_build(index, cmd, &mut next);
        if result.is_ok() {
            match next {
                Some(Change::Node(node)) => {
                    self.nodes.insert(node.id, *node);
                }
                Some(Change::Remove(id)) => {
                    self.nodes.remove(&id);
                    self.removed.insert(id);
                }
                Some(Change::Cluster(c)) => self.cluster = Some(*c),
                Some(Change::Init(c, node)) => {
                    self.cluster = Some(*c);
                    self.nodes.insert(node.id, *node);
                }
                Some(Change::Many(nodes)) => {
                    for n in nodes {
                        self.nodes.insert(n.id, n);
                    }
                }
                None => {}
            }
        }
        result
    }

    /// Validates `cmd` against the state and builds the change, without touching the state.
    fn check_and_build(
        &self,
        index: u64,
        cmd: &Command,
        out: &mut Option<Change>,
    ) -> Result<(), ClusterError> {
        match cmd {
            Command::Init {
                cluster,
                node,
                at_ms,
            } => {
                if self.cluster.is_some() || !self.nodes.is_empty() {
                    return Err(ClusterError::AlreadyInitialized);
                }
                check_cluster(cluster)?;
                check_new_node(node)?;
                let mut n = new_node(node, index, *at_ms);
                n.desired_role = Role::Manager;
                n.role = Role::Manager;
                n.status = NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                };
                *out = Some(Change::Init(Box::new(cluster.clone()), Box::new(n)));
                Ok(())
            }
            Command::AddNode { node, at_ms } => {
                self.initialized()?;
                self.check_new_id(node.id)?;
                check_new_node(node)?;
                let mut n = new_node(node, index, *at_ms);
                n.status = NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                };
                *out = Some(Change::Node(Box::new(n)));
                Ok(())
            }
            Command::AdmitNode {
                node,
                secret,
                at_ms,
            } => {
                let c = self.initialized()?;
                self.check_new_id(node.id)?;
                check_new_node(node)?;
                let token = match node.desired_role {
                    Role::Worker => &c.worker_token,
                    Role::Manager => &c.manager_token,
                };
                let valid = secret.len() == 32
                    && secret.bytes().all(|b| b.is_ascii_hexdigit())
                    && token
                        .rsplit('-')
                        .next()
                        .is_some_and(|t| t.eq_ignore_ascii_case(secret));
                if !valid {
                    return Err(ClusterError::InvalidJoinToken);
                }
                let mut n = new_node(node, index, *at_ms);
                n.status = NodeStatus {
                    state: NodeState::Unknown,
                    message: JOINING.into(),
                };
                *out = Some(Change::Node(Box::new(n)));
                Ok(())
            }
            Command::Tracked { .. } => Err(ClusterError::Invalid("nested request ids".into())),
            Command::UpdateDescription {
                id,
                description,
                addr,
                at_ms,
            } => {
                let mut n = self.existing(*id)?.clone();
                validate_description(description)?;
                validate_addr(addr)?;
                n.description = description.clone();
                n.addr = addr.clone();
                touch(&mut n, index, *at_ms);
                *out = Some(Change::Node(Box::new(n)));
                Ok(())
            }
            Command::UpdateNode { id, update, at_ms } => {
                let mut n = self.existing(*id)?.clone();
                // Some node must stay meant to be a manager, whatever the order in which
                // concurrent demotions were checked.
                if update.desired_role == Some(Role::Worker)
                    && n.desired_role == Role::Manager
                    && !self
                        .nodes
                        .values()
                        .any(|o| o.id != *id && o.desired_role == Role::Manager)
                {
                    return Err(ClusterError::LastManager);
                }
                apply_update(&mut n, update)?;
                touch(&mut n, index, *at_ms);
                *out = Some(Change::Node(Box::new(n)));
                Ok(())
            }
            Command::SetObservedRole { id, role, at_ms } => {
                let mut n = self.existing(*id)?.clone();
                n.role = *role;
                touch(&mut n, index, *at_ms);
                *out = Some(Change::Node(Box::new(n)));
                Ok(())
            }
            Command::SetStatus { id, status, at_ms } => {
                let mut n = self.existing(*id)?.clone();
                if status.message.len() > 1024 {
                    return Err(ClusterError::Invalid("status message too long".into()));
                }
                n.status = status.clone();
                touch(&mut n, index, *at_ms);
                *out = Some(Change::Node(Box::new(n)));
                Ok(())
            }
            Command::RemoveNode { id, .. } => {
                let n = self.existing(*id)?;
                if n.role == Role::Manager {
                    return Err(ClusterError::RemoveManager(node_id_string(*id)));
                }
                if self.removed.len() >= MAX_REMOVED {
                    return Err(ClusterError::Invalid(format!(
                        "{MAX_REMOVED} nodes were removed already: no more removals"
                    )));
                }
                *out = Some(Change::Remove(*id));
                Ok(())
            }
            Command::RotateJoinToken { role, token, .. } => {
                let mut c = self.initialized()?.clone();
                if token.is_empty() || token.len() > 256 || token.chars().any(char::is_control) {
                    return Err(ClusterError::Invalid("malformed join token".into()));
                }
                match role {
                    Role::Worker => c.worker_token = token.clone(),
                    Role::Manager => c.manager_token = token.clone(),
                }
                *out = Some(Change::Cluster(Box::new(c)));
                Ok(())
            }
            Command::SetUnlockKey { key, .. } => {
                let mut c = self.initialized()?.clone();
                if !key.is_empty() {
                    parse_unlock_key(key)?;
                }
                c.unlock_key = key.clone();
                *out = Some(Change::Cluster(Box::new(c)));
                Ok(())
            }
            Command::CreateService { .. }
            | Command::UpdateService { .. }
            | Command::RollbackService { .. }
            | Command::RemoveService { .. }
            | Command::Tasks { .. }
            | Command::ReportTasks { .. }
            | Command::UpdateSettings { .. }
            | Command::CreateSecret { .. }
            | Command::RemoveSecret { .. } => {
                unreachable!("service commands are applied by apply_service_command")
            }
            Command::AddOperator { .. } | Command::RemoveOperator { .. } => {
                unreachable!("operator commands are applied by apply_operator_command")
            }
            Command::ForceNewCluster { survivor, at_ms } => {
                self.initialized()?;
                self.existing(*survivor)?;
                let mut changed = Vec::new();
                for n in self.nodes.values() {
                    let mut n = n.clone();
                    let (want, was) = if n.id == *survivor {
                        (Role::Manager, (n.desired_role, n.role))
                    } else {
                        (Role::Worker, (n.desired_role, n.role))
                    };
                    if was != (want, want) {
                        n.desired_role = want;
                        n.role = want;
                        touch(&mut n, index, *at_ms);
                        changed.push(n);
                    }
                }
                *out = Some(Change::Many(changed));
                Ok(())
            }
        }
    }

    /// A new node's id must be unused, and never removed.
    fn check_new_id(&self, id: NodeId) -> Result<(), ClusterError> {
        if self.removed.contains(&id) {
            return Err(ClusterError::NodeRemoved(node_id_string(id)));
        }
        if self.nodes.contains_key(&id) {
            return Err(ClusterError::NodeExists(node_id_string(id)));
        }
        Ok(())
    }

    fn initialized(&self) -> Result<&ClusterInfo, ClusterError> {
        self.cluster.as_ref().ok_or(ClusterError::NotInitialized)
    }

    fn existing(&self, id: NodeId) -> Result<&Node, ClusterError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| ClusterError::NodeNotFound(node_id_string(id)))
    }

    /// The whole state, encoded for a Raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![SNAPSHOT_VERSION]).expect("the state serialises")
    }

    /// Restores a state from [`Self::snapshot`]'s bytes, refusing anything malformed.
    pub fn restore(bytes: &[u8]) -> Result<ClusterState, ClusterError> {
        let err = |why: String| ClusterError::Decode {
            what: "snapshot",
            why,
        };
        if bytes.len() > MAX_SNAPSHOT_SIZE {
            return Err(err(format!("{} bytes is too large", bytes.len())));
        }
        let (&version, body) = bytes.split_first().ok_or_else(|| err("empty".into()))?;
        let body: std::borrow::Cow<'_, [u8]> = match version {
            SNAPSHOT_VERSION => body.into(),
            // Version 9 is version 10 without the operators, its last field, and version 5 is
            // version 6 without the secrets, the field before: an empty map (a zero length) for
            // each completes them, so that a cluster keeps its state across the upgrade.
            6..=9 => {
                let mut b = body.to_vec();
                b.push(0);
                b.into()
            }
            5 => {
                let mut b = body.to_vec();
                b.extend_from_slice(&[0, 0]);
                b.into()
            }
            _ => return Err(err(format!("unknown version {version}"))),
        };
        // Versions 5 and 6 have task specs without secrets; 7 has no unlock key; 8 no task
        // ports.
        let generation = match version {
            5 | 6 => 1,
            7 => 2,
            8 => 3,
            _ => 4,
        };
        let decoded = crate::compat::decoding(generation, || {
            postcard::take_from_bytes::<ClusterState>(&body)
        });
        let (mut state, rest) = decoded.map_err(|e| err(e.to_string()))?;
        if !rest.is_empty() {
            return Err(err(format!("{} trailing bytes", rest.len())));
        }
        for (id, n) in &state.nodes {
            if *id != n.id {
                return Err(err(format!("node {} filed under {}", n.id, id)));
            }
            if state.removed.contains(id) {
                return Err(err(format!("node {id} is both present and removed")));
            }
        }
        let ordered: BTreeSet<&RequestId> = state.request_order.iter().collect();
        if ordered.len() != state.request_order.len()
            || state.request_order.len() != state.requests.len()
            || state.requests.len() > MAX_REMEMBERED_REQUESTS
            || state.requests.keys().any(|k| !ordered.contains(k))
        {
            return Err(err("inconsistent request ids".into()));
        }
        state.check_services().map_err(err)?;
        state.rebuild_indexes();
        Ok(state)
    }
}

/// What a command changes, built before anything is touched so that a refusal changes nothing.
enum Change {
    Node(Box<Node>),
    Remove(NodeId),
    Cluster(Box<ClusterInfo>),
    Init(Box<ClusterInfo>, Box<Node>),
    Many(Vec<Node>),
}

fn check_new_node(node: &NewNode) -> Result<(), ClusterError> {
    if node.id == 0 {
        return Err(ClusterError::Invalid("node id 0 is reserved".into()));
    }
    validate_description(&node.description)?;
    validate_addr(&node.addr)?;
    validate_labels(&node.labels)
}

fn check_cluster(c: &ClusterInfo) -> Result<(), ClusterError> {
    if c.id.len() != 32 || !c.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClusterError::Invalid(format!(
            "invalid cluster id {:?}",
            c.id
        )));
    }
    if c.ca_pem.is_empty() || c.worker_token.is_empty() || c.manager_token.is_empty() {
        return Err(ClusterError::Invalid(
            "a cluster needs a CA and both join tokens".into(),
        ));
    }
    Ok(())
}

fn new_node(node: &NewNode, index: u64, at_ms: u64) -> Node {
    Node {
        id: node.id,
        version: index,
        created_at_ms: at_ms,
        updated_at_ms: at_ms,
        description: node.description.clone(),
        addr: node.addr.clone(),
        labels: node.labels.clone(),
        desired_role: node.desired_role,
        role: Role::Worker,
        availability: Availability::Active,
        status: NodeStatus::default(),
    }
}

fn touch(n: &mut Node, index: u64, at_ms: u64) {
    n.version = index;
    n.updated_at_ms = n.updated_at_ms.max(at_ms);
}

fn apply_update(n: &mut Node, u: &NodeUpdate) -> Result<(), ClusterError> {
    if let Some(expected) = u.expected_version {
        if expected != n.version {
            return Err(ClusterError::VersionMismatch {
                node: node_id_string(n.id),
                expected,
                actual: n.version,
            });
        }
    }
    for (k, v) in &u.labels_add {
        validate_label(k, v)?;
    }
    if let Some(a) = u.availability {
        n.availability = a;
    }
    for k in &u.labels_rm {
        n.labels.remove(k);
    }
    for (k, v) in &u.labels_add {
        n.labels.insert(k.clone(), v.clone());
    }
    validate_labels(&n.labels)?;
    if let Some(r) = u.desired_role {
        n.desired_role = r;
    }
    Ok(())
}
