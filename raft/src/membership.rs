//! Membership change by joint consensus (§6 of the Raft paper): learners, promotion, demotion,
//! removal and replacement, one change at a time; the leader leaves the joint configuration as
//! soon as it commits, and steps aside when it is no longer a voter.

use crate::error::ProposeError;
use crate::node::{Proposal, RaftNode};
use crate::types::{ConfChange, Membership, MessageBody, NodeId, Payload, Role};
use std::collections::BTreeSet;

impl RaftNode {
    /// Proposes a membership change made of one or more steps, applied together. If the voter set
    /// changes, the group passes through a joint configuration (old and new voters must both
    /// agree) and the leader proposes the final configuration once the joint one commits.
    pub fn propose_conf_change(
        &mut self,
        changes: &[ConfChange],
    ) -> Result<Proposal, ProposeError> {
        self.check_can_propose(0)?;
        let pending = self.pending_conf_index();
        if self.membership.is_joint() || pending > self.commit {
            return Err(ProposeError::ConfChangeInProgress(pending));
        }
        let next = apply_changes(&self.membership, changes)?;
        for c in changes {
            if let ConfChange::AddVoter(id) = *c {
                let matched = if id == self.id {
                    self.log.last_index()
                } else {
                    self.progress.get(&id).map_or(0, |p| p.match_index)
                };
                let behind = self.log.last_index().saturating_sub(matched);
                if behind > self.cfg.max_promotion_lag {
                    return Err(ProposeError::Behind { node: id, behind });
                }
            }
        }
        let target = if next.voters != self.membership.voters {
            Membership {
                voters: next.voters,
                outgoing: self.membership.voters.clone(),
                learners: next.learners,
            }
        } else {
            next
        };
        let p = self.propose_payload(Payload::Config(target))?;
        self.flush();
        Ok(p)
    }

    /// Called by the leader whenever its commit index advances.
    pub(crate) fn on_commit_advanced(&mut self) {
        if self.role != Role::Leader || self.pending_conf_index() > self.commit {
            return;
        }
        if self.membership.is_joint() {
            // The joint configuration is committed: move to the final one.
            let fin = Membership {
                voters: self.membership.voters.clone(),
                outgoing: BTreeSet::new(),
                learners: self
                    .membership
                    .learners
                    .iter()
                    .copied()
                    .filter(|id| !self.membership.voters.contains(id))
                    .collect(),
            };
            let entry = crate::types::Entry {
                term: self.term,
                index: self.log.last_index() + 1,
                payload: Payload::Config(fin),
            };
            self.append_as_leader(entry);
            self.broadcast_append(false);
            return;
        }
        if !self.membership.is_voter(self.id) {
            // We were removed or demoted and that is committed: hand over to the most
            // up-to-date voter, then step down so the group never waits for an election timeout.
            let last = self.log.last_index();
            let best = self
                .membership
                .voters
                .iter()
                .filter_map(|&id| self.progress.get(&id).map(|p| (p.match_index, id)))
                .max();
            self.broadcast_append(false);
            let peers: Vec<NodeId> = self.progress.keys().copied().collect();
            let commit = self.commit;
            for p in peers {
                let m = self.progress.get(&p).map_or(0, |pr| pr.match_index);
                self.send(
                    p,
                    MessageBody::Heartbeat {
                        commit: commit.min(m),
                        seq: self.seq,
                    },
                );
            }
            if let Some((m, id)) = best {
                if m == last {
                    self.send(id, MessageBody::TimeoutNow);
                }
            }
            let term = self.term;
            self.become_follower(term, None);
        }
    }
}

/// Applies change steps to a (non-joint) membership, validating each.
pub(crate) fn apply_changes(
    current: &Membership,
    changes: &[ConfChange],
) -> Result<Membership, ProposeError> {
    if changes.is_empty() {
        return Err(ProposeError::InvalidConfChange("no change given".into()));
    }
    let mut seen = BTreeSet::new();
    let mut m = current.clone();
    let bad = |s: String| Err(ProposeError::InvalidConfChange(s));
    for c in changes {
        let id = match *c {
            ConfChange::AddLearner(id)
            | ConfChange::AddVoter(id)
            | ConfChange::DemoteVoter(id)
            | ConfChange::RemoveNode(id) => id,
        };
        if id == 0 {
            return bad("node id 0 is reserved".into());
        }
        if !seen.insert(id) {
            return bad(format!("node {id} appears in more than one step"));
        }
        match *c {
            ConfChange::AddLearner(id) => {
                if m.contains(id) {
                    return bad(format!("node {id} is already a member"));
                }
                m.learners.insert(id);
            }
            ConfChange::AddVoter(id) => {
                if m.voters.contains(&id) {
                    return bad(format!("node {id} is already a voter"));
                }
                m.learners.remove(&id);
                m.voters.insert(id);
            }
            ConfChange::DemoteVoter(id) => {
                if !m.voters.remove(&id) {
                    return bad(format!("node {id} is not a voter"));
                }
                m.learners.insert(id);
            }
            ConfChange::RemoveNode(id) => {
                if !m.contains(id) {
                    return bad(format!("node {id} is not a member"));
                }
                m.voters.remove(&id);
                m.learners.remove(&id);
            }
        }
    }
    if m.voters.is_empty() {
        return bad("the change would leave no voter".into());
    }
    Ok(m)
}
