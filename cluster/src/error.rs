//! Errors of the cluster state: each names the problem in one line, as the CLI prints it.

use thiserror::Error;

/// Why a command was refused (before it was proposed, or when it was applied).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClusterError {
    /// No node matches the id, id prefix or hostname.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// More than one node matches.
    #[error("node {query} is ambiguous ({count} nodes match)")]
    AmbiguousNode {
        /// What was asked.
        query: String,
        /// How many nodes match.
        count: usize,
    },
    /// The node was removed from the swarm: its id is never admitted again.
    #[error("node {0} was removed from the swarm")]
    NodeRemoved(String),
    /// The join token is not one of the cluster's current tokens (or is for the other role).
    #[error("invalid join token")]
    InvalidJoinToken,
    /// A retried request: the first attempt's refusal, repeated.
    #[error("{0}")]
    Repeated(String),
    /// A node with this id exists already.
    #[error("node {0} already exists")]
    NodeExists(String),
    /// A label is malformed.
    #[error("invalid label {0}")]
    InvalidLabel(String),
    /// Any other malformed field.
    #[error("{0}")]
    Invalid(String),
    /// Demoting the only manager.
    #[error("attempting to demote the last manager of the swarm")]
    LastManager,
    /// Demoting (or removing) a manager would leave too few reachable managers.
    #[error(
        "{what} would result in a loss of quorum: {reachable} of the {remaining} remaining managers reachable, {needed} needed"
    )]
    QuorumLoss {
        /// What was attempted: "demoting node 0123…", "leaving the swarm".
        what: String,
        /// Managers other than this one that are reachable.
        reachable: usize,
        /// Managers other than this one.
        remaining: usize,
        /// A majority of them.
        needed: usize,
    },
    /// `node rm` of a node that is still a manager.
    #[error(
        "node {0} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
    )]
    RemoveManager(String),
    /// `node rm` of a node that is not down, without `--force`.
    #[error("node {0} is not down and can't be removed (use --force to remove it anyway)")]
    RemoveNotDown(String),
    /// Compare-and-set failed.
    #[error("update out of sequence: node {node} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// The node's id.
        node: String,
        /// The version the update was made against.
        expected: u64,
        /// The node's version now.
        actual: u64,
    },
    /// `swarm leave` of the last manager without `--force`.
    #[error("this node is the last manager of the swarm: leaving would destroy the swarm (use --force to leave anyway)")]
    LeaveLastManager,
    /// The cluster is initialised already.
    #[error("this node is already part of a swarm")]
    AlreadyInitialized,
    /// The cluster is not initialised yet.
    #[error("the swarm is not initialized")]
    NotInitialized,
    /// No leader: the cause, never a bare timeout.
    #[error("no leader: {reachable} of {total} managers reachable, {needed} needed")]
    NoLeader {
        /// Managers this node can reach (itself included).
        reachable: usize,
        /// Managers in the cluster.
        total: usize,
        /// A majority.
        needed: usize,
    },
    /// A command or snapshot that does not decode.
    #[error("malformed {what}: {why}")]
    Decode {
        /// "command" or "snapshot".
        what: &'static str,
        /// The decoder's complaint.
        why: String,
    },
}
