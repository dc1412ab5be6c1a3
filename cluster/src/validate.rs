//! Checks that need more than the replicated state: which managers are Raft voters and which of
//! them the leader can reach right now. They run before a command is proposed (and the
//! reconciler runs them again when it acts).

use std::collections::BTreeSet;

use crate::error::ClusterError;
use crate::state::ClusterState;
use crate::types::{node_id_string, NodeId, NodeState, Role};

/// What the node serving a request knows about the managers (not replicated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagerView {
    /// The Raft voters now.
    pub voters: BTreeSet<NodeId>,
    /// The voters reachable: the leader itself and those it heard from within an election
    /// timeout.
    pub reachable: BTreeSet<NodeId>,
}

/// A majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The error for a cluster without a leader, naming the cause.
pub fn no_leader(reachable: usize, total: usize) -> ClusterError {
    ClusterError::NoLeader {
        reachable,
        total,
        needed: quorum(total),
    }
}

/// Would losing `id` as a voter keep a reachable majority among the remaining voters?
fn check_quorum_without(id: NodeId, view: &ManagerView, what: String) -> Result<(), ClusterError> {
    let remaining: BTreeSet<NodeId> = view.voters.iter().copied().filter(|v| *v != id).collect();
    let reachable = remaining.intersection(&view.reachable).count();
    let needed = quorum(remaining.len());
    if reachable < needed {
        return Err(ClusterError::QuorumLoss {
            what,
            reachable,
            remaining: remaining.len(),
            needed,
        });
    }
    Ok(())
}

/// `node demote`: refused for the last manager, and when the managers still reachable after
/// the demotion would not be a majority of the remaining ones. The remaining managers are the
/// other voters not being demoted themselves, so that concurrent demotions cannot add up to a
/// loss of quorum or to no manager at all. Demoting a worker (or a node whose promotion has not
/// completed) is allowed: it cancels the promotion.
pub fn check_demote(
    state: &ClusterState,
    id: NodeId,
    view: &ManagerView,
) -> Result<(), ClusterError> {
    let node = state
        .node(id)
        .ok_or_else(|| ClusterError::NodeNotFound(node_id_string(id)))?;
    if !view.voters.contains(&id) && node.role == Role::Worker {
        return Ok(());
    }
    // The managers that stay: the other voters not themselves being demoted.
    let staying = |v: &NodeId| {
        *v != id
            && state
                .node(*v)
                .is_some_and(|n| n.desired_role == Role::Manager)
    };
    let after: BTreeSet<NodeId> = view.voters.iter().copied().filter(staying).collect();
    if after.is_empty() {
        return Err(ClusterError::LastManager);
    }
    let reachable = after.intersection(&view.reachable).count();
    let needed = quorum(after.len());
    if reachable < needed {
        return Err(ClusterError::QuorumLoss {
            what: format!("demoting node {}", node_id_string(id)),
            reachable,
            remaining: after.len(),
            needed,
        });
    }
    Ok(())
}

/// `node rm`: refused for a manager (demote first) and for a node that is not down unless
/// `force`.
pub fn check_remove(
    state: &ClusterState,
    id: NodeId,
    force: bool,
    view: &ManagerView,
) -> Result<(), ClusterError> {
    let node = state
        .node(id)
        .ok_or_else(|| ClusterError::NodeNotFound(node_id_string(id)))?;
    if view.voters.contains(&id) || node.role == Role::Manager || node.desired_role == Role::Manager
    {
        return Err(ClusterError::RemoveManager(node_id_string(id)));
    }
    if !force && node.status.state != NodeState::Down {
        return Err(ClusterError::RemoveNotDown(node_id_string(id)));
    }
    Ok(())
}

/// `swarm leave` on a manager: without `force`, refused for the last manager and when the
/// others still reachable would not be a majority of them.
pub fn check_leave(id: NodeId, force: bool, view: &ManagerView) -> Result<(), ClusterError> {
    if force || !view.voters.contains(&id) {
        return Ok(());
    }
    if view.voters.iter().all(|v| *v == id) {
        return Err(ClusterError::LeaveLastManager);
    }
    check_quorum_without(id, view, "leaving the swarm".to_string())
}
