//! Errors returned by the Raft core; all are values, none panic.

use crate::types::{LogIndex, NodeId};
use thiserror::Error;

/// An inconsistent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub String);

/// Why the core could not start from the recovered state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InitError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The recovered state contradicts itself (e.g. a gap in the log).
    #[error("recovered state is inconsistent: {0}")]
    Inconsistent(String),
}

/// Why a proposal (command, membership change) was refused. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProposeError {
    /// This node does not lead; `leader` is its best guess of who does.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Too much is uncommitted already; retry later.
    #[error("busy: {entries} uncommitted entries / {bytes} bytes at the leader, limit reached")]
    Busy {
        /// Uncommitted entries.
        entries: usize,
        /// Uncommitted bytes.
        bytes: usize,
    },
    /// A leadership transfer is in progress; proposals are paused until it ends.
    #[error("leadership transfer to {0} in progress")]
    TransferInProgress(NodeId),
    /// Another membership change has not finished yet.
    #[error("a membership change is already in progress (config entry at index {0})")]
    ConfChangeInProgress(LogIndex),
    /// The node to promote has not caught up yet; keep it a learner a little longer.
    #[error("node {node} is {behind} entries behind the leader; promote it once it has caught up")]
    Behind {
        /// The node.
        node: NodeId,
        /// How many entries it lacks.
        behind: u64,
    },
    /// The membership change is invalid.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
}

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a member of the group.
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    /// Learners cannot lead.
    #[error("node {0} is a learner, not a voter")]
    Learner(NodeId),
    /// The target is already the leader.
    #[error("node {0} is already the leader")]
    AlreadyLeader(NodeId),
    /// A transfer to another node is already running.
    #[error("a transfer to node {0} is already in progress")]
    InProgress(NodeId),
}

/// Why a read could not be served.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// Only the leader serves linearizable reads.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Leadership was lost before the read could be confirmed.
    #[error("leadership lost before the read was confirmed")]
    LeadershipLost,
}

/// A message was dropped because it cannot be valid. Counted, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid message from {from}: {reason}")]
pub struct InvalidMessage {
    /// The claimed sender.
    pub from: NodeId,
    /// What is impossible about it.
    pub reason: String,
}

/// A snapshot handed to the core was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The index is not yet applied, or already covered by a newer snapshot.
    #[error("snapshot index {index} out of range (snapshot {snapshot}, applied {applied})")]
    OutOfRange {
        /// The proposed snapshot index.
        index: LogIndex,
        /// The current snapshot index.
        snapshot: LogIndex,
        /// The applied index.
        applied: LogIndex,
    },
}
