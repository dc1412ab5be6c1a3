//! Commands: the only way the cluster state changes. Each is proposed through Raft as a
//! postcard-encoded entry behind a version byte, and applied by every replica in log order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::service::{ServiceId, ServiceSpec, TaskChange, TaskReport};
use crate::types::{Availability, ClusterInfo, NewNode, NodeDescription, NodeId, NodeStatus, Role};

/// Largest encoded command accepted (a CA and two tokens fit many times over).
pub const MAX_COMMAND_SIZE: usize = 1024 * 1024;

/// Version byte in front of every encoded command (2: services and tasks).
const COMMAND_VERSION: u8 = 6;

/// Most task changes or reports in one command (one Raft entry).
pub const MAX_BATCH: usize = 8192;

/// Identifies one client request across retries: a random client id (one per CLI invocation)
/// and a sequence number within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The client.
    pub client: u64,
    /// The request within the client.
    pub seq: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.client, self.seq)
    }
}

impl std::str::FromStr for RequestId {
    type Err = String;

    /// Parses `<16 hex>-<decimal>`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid request id {s:?}: expected <16 hex digits>-<number>");
        let (c, q) = s.split_once('-').ok_or_else(bad)?;
        if c.len() != 16 {
            return Err(bad());
        }
        Ok(RequestId {
            client: u64::from_str_radix(c, 16).map_err(|_| bad())?,
            seq: q.parse().map_err(|_| bad())?,
        })
    }
}

/// What `node update` changes (fields left `None` or empty are kept).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdate {
    /// The version the update was made against (compare-and-set), if any.
    pub expected_version: Option<u64>,
    /// New availability.
    pub availability: Option<Availability>,
    /// Labels to add or overwrite.
    pub labels_add: BTreeMap<String, String>,
    /// Label keys to remove (a missing key is no error, as in Docker).
    pub labels_rm: Vec<String>,
    /// New desired role (`promote`, `demote`, `--role`).
    pub desired_role: Option<Role>,
}

/// A change to the cluster state. `at_ms` is the proposer's wall clock (Unix milliseconds),
/// recorded as the node's update time so that every replica stores the same value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `swarm init`: the cluster and its first node, a manager.
    Init {
        /// The cluster.
        cluster: ClusterInfo,
        /// The first node.
        node: NewNode,
        /// When.
        at_ms: u64,
    },
    /// A node was admitted with a join token.
    AddNode {
        /// The node.
        node: NewNode,
        /// When.
        at_ms: u64,
    },
    /// A known node restarted with a new description or address.
    UpdateDescription {
        /// The node.
        id: NodeId,
        /// What it reports now.
        description: NodeDescription,
        /// Where it is reached now.
        addr: String,
        /// When.
        at_ms: u64,
    },
    /// `node update`, `node promote`, `node demote`.
    UpdateNode {
        /// The node.
        id: NodeId,
        /// The change.
        update: NodeUpdate,
        /// When.
        at_ms: u64,
    },
    /// The reconciler achieved a role.
    SetObservedRole {
        /// The node.
        id: NodeId,
        /// Its role now.
        role: Role,
        /// When.
        at_ms: u64,
    },
    /// The leader observed a node's liveness change.
    SetStatus {
        /// The node.
        id: NodeId,
        /// Its status.
        status: NodeStatus,
        /// When.
        at_ms: u64,
    },
    /// `node rm` (validated before it is proposed).
    RemoveNode {
        /// The node.
        id: NodeId,
        /// When.
        at_ms: u64,
    },
    /// `swarm join-token --rotate`.
    RotateJoinToken {
        /// Whose token.
        role: Role,
        /// The new token.
        token: String,
        /// When.
        at_ms: u64,
    },
    /// A node admitted with a join token: recorded (status Unknown, "joining the swarm") before
    /// its certificate is issued, so that every certificate names a node the state knows. The
    /// token's secret is checked against the committed tokens when the command is applied, so a
    /// token rotated before this entry refuses it on every replica.
    AdmitNode {
        /// The node (its desired role is the role the joiner asked for).
        node: NewNode,
        /// The join token's secret, lower-case hex (the tokens are in the state already).
        secret: String,
        /// When.
        at_ms: u64,
    },
    /// A write carrying the client's request id: applied once; a retry of the same id gets the
    /// first result (Raft thesis §6.3).
    Tracked {
        /// The request id.
        id: RequestId,
        /// The write.
        cmd: Box<Command>,
    },
    /// `service create`: the id is chosen when applied (from the Raft index).
    CreateService {
        /// What to run.
        spec: ServiceSpec,
        /// When.
        at_ms: u64,
    },
    /// `service update`, `service scale`: a new spec (the old one is kept for rollback).
    UpdateService {
        /// The service.
        id: ServiceId,
        /// The version the update was made against (compare-and-set), if any.
        expected_version: Option<u64>,
        /// The new spec.
        spec: ServiceSpec,
        /// When.
        at_ms: u64,
    },
    /// `service rollback`, `service update --rollback`: back to the previous spec, rolled out
    /// with the service's rollback policy.
    RollbackService {
        /// The service.
        id: ServiceId,
        /// The version the rollback was asked against (compare-and-set), if any.
        expected_version: Option<u64>,
        /// When.
        at_ms: u64,
    },
    /// `service rm`: the service goes at once; its tasks are told to stop (desired remove) and
    /// are forgotten once they have.
    RemoveService {
        /// The service.
        id: ServiceId,
        /// When.
        at_ms: u64,
    },
    /// The leader's orchestrator and scheduler: many task changes as one entry.
    Tasks {
        /// The changes, applied in order; stale ones are skipped.
        changes: Vec<TaskChange>,
        /// When.
        at_ms: u64,
    },
    /// A node's observed task statuses, batched; a report that does not move its task forward,
    /// or is about a task not on that node, is ignored.
    ReportTasks {
        /// The reporting node.
        node: NodeId,
        /// Last status per task.
        reports: Vec<TaskReport>,
        /// When (the statuses' timestamp).
        at_ms: u64,
    },
    /// `swarm update`.
    UpdateSettings {
        /// `--task-history-limit`.
        task_history_limit: Option<u32>,
        /// When.
        at_ms: u64,
    },
    /// `swarm init --force-new-cluster` on `survivor`: every other manager becomes a worker (the
    /// Raft group now has one voter); the operator promotes again.
    ForceNewCluster {
        /// The manager that restarted the cluster.
        survivor: NodeId,
        /// When.
        at_ms: u64,
    },
    /// `secret create`, `config create`: the id is chosen when applied (from the Raft index).
    CreateSecret {
        /// Secret or config.
        kind: crate::secrets::SecretKind,
        /// Name, labels, data.
        spec: crate::secrets::SecretSpec,
        /// When.
        at_ms: u64,
    },
    /// `secret rm`, `config rm`: refused while a service uses it.
    RemoveSecret {
        /// Secret or config.
        kind: crate::secrets::SecretKind,
        /// Which.
        id: crate::secrets::SecretId,
        /// When.
        at_ms: u64,
    },
    /// `swarm init --autolock`, `swarm update --autolock`, `swarm unlock-key --rotate`: the key
    /// every manager seals its key-encryption key with (empty: autolock off).
    SetUnlockKey {
        /// `SHOALKEY-1-…`, or empty.
        key: String,
        /// When.
        at_ms: u64,
    },
    /// `swarm ca client-cert`: an operator certificate was issued (recorded by serial, so that
    /// it can be removed).
    AddOperator {
        /// The certificate.
        operator: crate::operators::Operator,
        /// When.
        at_ms: u64,
    },
    /// `swarm ca client-cert rm NAME`: every certificate of that operator is refused from now.
    RemoveOperator {
        /// The operator.
        name: String,
        /// When.
        at_ms: u64,
    },
}

impl Command {
    /// The encoded form proposed through Raft.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these plain types into a Vec cannot fail.
        postcard::to_extend(self, vec![COMMAND_VERSION]).expect("commands serialise")
    }

    /// Task changes as encoded `Command::Tasks` entries, each within [`MAX_BATCH`] changes and
    /// [`MAX_COMMAND_SIZE`] bytes (a batch too large is halved until it fits).
    pub fn encode_task_batches(changes: &[TaskChange], at_ms: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut todo: Vec<&[TaskChange]> = changes.chunks(MAX_BATCH).rev().collect();
        while let Some(chunk) = todo.pop() {
            let bytes = Command::Tasks {
                changes: chunk.to_vec(),
                at_ms,
            }
            .encode();
            if bytes.len() <= MAX_COMMAND_SIZE || chunk.len() == 1 {
                out.push(bytes);
            } else {
                let (a, b) = chunk.split_at(chunk.len() / 2);
                todo.push(b);
                todo.push(a);
            }
        }
        out
    }

    /// Decodes an entry, refusing unknown versions, oversized input and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Command, ClusterError> {
        let err = |why: String| ClusterError::Decode {
            what: "command",
            why,
        };
        if bytes.len() > MAX_COMMAND_SIZE {
            return Err(err(format!(
                "{} bytes, more than {MAX_COMMAND_SIZE}",
                bytes.len()
            )));
        }
        let (&version, body) = bytes.split_first().ok_or_else(|| err("empty".into()))?;
        // Version 3: task specs without secrets; 4: no unlock key; 5: no task ports.
        let generation = match version {
            3 => 1,
            4 => 2,
            5 => 3,
            COMMAND_VERSION => 4,
            _ => return Err(err(format!("unknown version {version}"))),
        };
        let decoded =
            crate::compat::decoding(generation, || postcard::take_from_bytes::<Command>(body));
        let (cmd, rest) = decoded.map_err(|e| err(e.to_string()))?;
        if !rest.is_empty() {
            return Err(err(format!("{} trailing bytes", rest.len())));
        }
        Ok(cmd)
    }

    /// The node a command is about, if any.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Command::Init { node, .. }
            | Command::AddNode { node, .. }
            | Command::AdmitNode { node, .. } => Some(node.id),
            Command::Tracked { cmd, .. } => cmd.node(),
            Command::UpdateDescription { id, .. }
            | Command::UpdateNode { id, .. }
            | Command::SetObservedRole { id, .. }
            | Command::SetStatus { id, .. }
            | Command::RemoveNode { id, .. } => Some(*id),
            Command::ForceNewCluster { survivor, .. } => Some(*survivor),
            Command::ReportTasks { node, .. } => Some(*node),
            Command::RotateJoinToken { .. }
            | Command::CreateService { .. }
            | Command::UpdateService { .. }
            | Command::RollbackService { .. }
            | Command::RemoveService { .. }
            | Command::Tasks { .. }
            | Command::UpdateSettings { .. }
            | Command::CreateSecret { .. }
            | Command::RemoveSecret { .. }
            | Command::SetUnlockKey { .. }
            | Command::AddOperator { .. }
            | Command::RemoveOperator { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let cmd = Command::UpdateNode {
            id: 7,
            update: NodeUpdate {
                availability: Some(Availability::Drain),
                labels_add: [("zone".to_string(), "a".to_string())].into(),
                ..Default::default()
            },
            at_ms: 5,
        };
        let bytes = cmd.encode();
        assert_eq!(Command::decode(&bytes).unwrap(), cmd);
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[9, 0]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Command::decode(&extra).is_err());
        for cut in 0..bytes.len() {
            assert!(Command::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Command::decode(&vec![1; MAX_COMMAND_SIZE + 1]).is_err());
    }
}
