//! The role reconciler, run by the leader: compares each node's desired role with the Raft
//! configuration and says what to do next. Promote = add as learner, wait until it caught up,
//! make it a voter, then record the observed role; demote = re-check quorum, hand leadership over
//! if the target leads, remove it from the voters, then record the observed role.
//!
//! It is a pure function of the state and the leader's view, so calling it again after any
//! failure (a lost proposal, a new leader) simply picks up where things are: idempotent.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use shoal_raft::Membership;

use crate::state::ClusterState;
use crate::types::{NodeId, Role};
use crate::validate::quorum;

/// What the leader knows of Raft when it reconciles.
#[derive(Clone, Debug, Default)]
pub struct RaftView {
    /// This node, the leader.
    pub leader: NodeId,
    /// The latest configuration in the log.
    pub membership: Membership,
    /// A configuration change is proposed and not applied yet (one at a time).
    pub conf_change_pending: bool,
    /// The leader's last log index.
    pub last_index: u64,
    /// Each peer's match index.
    pub matched: BTreeMap<NodeId, u64>,
    /// Members the leader heard from within an election timeout (itself included).
    pub reachable: BTreeSet<NodeId>,
    /// A learner becomes a voter only once at most this many entries behind.
    pub max_lag: u64,
}

/// One step for the agent to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the node to Raft as a learner (it receives the log; it does not vote).
    AddLearner(NodeId),
    /// Make the learner a voter.
    PromoteVoter(NodeId),
    /// Take the node out of the Raft configuration.
    RemoveFromRaft(NodeId),
    /// The leader is being demoted: hand leadership to this voter first.
    TransferLeadership(NodeId),
    /// Record the role achieved.
    SetObservedRole(NodeId, Role),
}

/// The reconciler's answer: at most one configuration change (plus any observed-role updates
/// and a leadership transfer), and why the other nodes wait.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// What to do now.
    pub actions: Vec<Action>,
    /// Nodes whose role change cannot proceed yet, and why.
    pub waiting: Vec<(NodeId, String)>,
}

/// Decides the next steps. Configuration changes go one at a time (never during a joint
/// consensus or while one is pending). Additions come before removals: a learner never counts
/// toward quorum and is made a voter only once caught up and reachable, so adding first never
/// costs availability, while removing first can leave the group with no node meant to stay a
/// manager (the leader would then have nobody to hand leadership to).
pub fn reconcile(state: &ClusterState, view: &RaftView) -> Reconciliation {
    let mut out = Reconciliation::default();
    let m = &view.membership;
    let conf_free = !m.is_joint() && !view.conf_change_pending;
    // (priority, action): the lowest priority number goes first.
    let mut conf: Vec<(u8, Action)> = Vec::new();
    for id in m.members() {
        if state.node(id).is_none() && id != view.leader {
            conf.push((0, Action::RemoveFromRaft(id)));
        }
    }
    for n in state.nodes().values() {
        let id = n.id;
        let voter = m.is_voter(id);
        let learner = m.is_learner(id);
        match n.desired_role {
            Role::Manager => {
                if voter {
                    if n.role != Role::Manager && !m.outgoing.contains(&id) {
                        out.actions.push(Action::SetObservedRole(id, Role::Manager));
                    }
                } else if learner {
                    let matched = view.matched.get(&id).copied().unwrap_or(0);
                    let behind = view.last_index.saturating_sub(matched);
                    if matched == 0 {
                        // Nothing acknowledged yet: the node may not even run a replica, and a
                        // voter that cannot answer costs the group its quorum.
                        out.waiting.push((
                            id,
                            "promotion waits: the learner has not answered yet".into(),
                        ));
                    } else if behind > view.max_lag {
                        out.waiting.push((
                            id,
                            format!("promotion waits: {behind} entries behind the leader"),
                        ));
                    } else if !view.reachable.contains(&id) {
                        out.waiting
                            .push((id, "promotion waits: the node is not reachable".into()));
                    } else {
                        conf.push((1, Action::PromoteVoter(id)));
                    }
                } else if n.is_joining() {
                    out.waiting
                        .push((id, "promotion waits: the node has not connected yet".into()));
                } else {
                    conf.push((2, Action::AddLearner(id)));
                }
            }
            Role::Worker => {
                if voter {
                    let remaining: BTreeSet<NodeId> =
                        m.voters.iter().copied().filter(|v| *v != id).collect();
                    let reachable = remaining.intersection(&view.reachable).count();
                    if remaining.is_empty() {
                        out.waiting
                            .push((id, "demotion waits: it is the last manager".into()));
                    } else if reachable < quorum(remaining.len()) {
                        out.waiting.push((
                            id,
                            format!(
                                "demotion waits: {reachable} of the {} remaining managers reachable, {} needed",
                                remaining.len(),
                                quorum(remaining.len())
                            ),
                        ));
                    } else if id == view.leader {
                        // Hand over only to a voter that is meant to stay a manager: handing
                        // over to another node being demoted would just hand back.
                        let target = remaining
                            .iter()
                            .filter(|v| view.reachable.contains(v))
                            .filter(|v| {
                                state
                                    .node(**v)
                                    .is_some_and(|n| n.desired_role == Role::Manager)
                            })
                            .max_by_key(|v| {
                                (view.matched.get(v).copied().unwrap_or(0), Reverse(**v))
                            });
                        match target {
                            Some(t) => out.actions.push(Action::TransferLeadership(*t)),
                            None => out.waiting.push((
                                id,
                                "demotion waits: no reachable manager to hand leadership to yet"
                                    .into(),
                            )),
                        }
                    } else {
                        conf.push((3, Action::RemoveFromRaft(id)));
                    }
                } else if learner {
                    conf.push((4, Action::RemoveFromRaft(id)));
                } else if n.role != Role::Worker {
                    out.actions.push(Action::SetObservedRole(id, Role::Worker));
                }
            }
        }
    }
    conf.sort_by_key(|(p, _)| *p);
    if let Some((_, first)) = conf.into_iter().next() {
        if conf_free {
            out.actions.push(first);
        } else {
            let id = match &first {
                Action::AddLearner(id) | Action::PromoteVoter(id) | Action::RemoveFromRaft(id) => {
                    *id
                }
                _ => 0,
            };
            out.waiting
                .push((id, "waits for the configuration change in progress".into()));
        }
    }
    out
}
