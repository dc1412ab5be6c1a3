//! Leader election (§5.2): pre-vote (§9.6), votes, becoming leader, and leadership transfer (§3.10
//! of the Raft thesis, TimeoutNow).

use crate::error::TransferError;
use crate::node::RaftNode;
use crate::progress::Progress;
use crate::types::{Entry, LogIndex, MessageBody, NodeId, Payload, Role, Term};

impl RaftNode {
    /// Starts an election: a pre-vote round first when enabled, unless this follows a transfer.
    pub(crate) fn campaign(&mut self, transfer: bool) {
        if self.term == Term::MAX {
            // No later term exists (only a hostile peer can have pushed us here): never overflow.
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    fn voters_except_self(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .chain(self.membership.outgoing.iter())
            .copied()
            .filter(|&id| id != self.id)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn become_pre_candidate(&mut self) {
        if self.role == Role::Leader {
            return;
        }
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.election_elapsed = 0;
        self.reset_randomized_timeout();
        if self.won() {
            self.become_candidate(false);
            return;
        }
        let (lli, llt) = (self.log.last_index(), self.log.last_term());
        let term = self.term + 1;
        for to in self.voters_except_self() {
            self.effects
                .push(crate::node::Effect::Send(crate::types::Message {
                    from: self.id,
                    to,
                    term,
                    body: MessageBody::PreVote {
                        last_log_index: lli,
                        last_log_term: llt,
                    },
                }));
        }
    }

    fn become_candidate(&mut self, transfer: bool) {
        if self.role == Role::Leader {
            return;
        }
        self.term += 1;
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.election_elapsed = 0;
        self.reset_randomized_timeout();
        self.stats.elections += 1;
        if self.won() {
            // A lone voter wins at once, but must not lead (and send entries of this term) before
            // its term and vote are durable: after a crash it could otherwise lead the same term
            // again with different entries. `on_persisted` completes the election.
            return;
        }
        let (lli, llt) = (self.log.last_index(), self.log.last_term());
        for to in self.voters_except_self() {
            // Held until our own vote is durable: a crash must not let us vote twice in a term.
            self.send_durable(
                to,
                MessageBody::Vote {
                    last_log_index: lli,
                    last_log_term: llt,
                    transfer,
                },
            );
        }
    }

    pub(crate) fn won(&self) -> bool {
        self.membership
            .has_quorum(|id| self.votes.get(&id) == Some(&true))
    }

    fn lost(&self) -> bool {
        self.membership
            .has_quorum(|id| self.votes.get(&id) == Some(&false))
    }

    pub(crate) fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.transfer = None;
        self.lease_disabled = false;
        self.seq = 0;
        self.rounds.clear();
        self.uncommitted_entries = 0;
        self.uncommitted_bytes = 0;
        self.stats.leaderships += 1;
        self.progress.clear();
        self.sync_progress();
        // A no-op of our own term lets us commit (and serve reads) without waiting for a client.
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload: Payload::Noop,
        };
        self.append_as_leader(entry);
        self.broadcast_append(true);
    }

    pub(crate) fn handle_pre_vote(&mut self, from: NodeId, term: Term, lli: LogIndex, llt: Term) {
        // Reaching here means the request's term is >= ours and we are not in a leader lease.
        let granted = term > self.term && self.log.is_up_to_date(lli, llt);
        let reply_term = if granted { term } else { self.term };
        self.effects
            .push(crate::node::Effect::Send(crate::types::Message {
                from: self.id,
                to: from,
                term: reply_term,
                body: MessageBody::PreVoteResp { granted },
            }));
    }

    pub(crate) fn handle_vote(&mut self, from: NodeId, lli: LogIndex, llt: Term) {
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && self.log.is_up_to_date(lli, llt);
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        self.send_durable(from, MessageBody::VoteResp { granted });
    }

    pub(crate) fn handle_pre_vote_resp(&mut self, from: NodeId, term: Term, granted: bool) {
        if self.role != Role::PreCandidate || (granted && term != self.term + 1) {
            return;
        }
        self.votes.insert(from, granted);
        if self.won() {
            self.become_candidate(false);
        } else if self.lost() {
            let t = self.term;
            self.become_follower(t, None);
        }
    }

    pub(crate) fn handle_vote_resp(&mut self, from: NodeId, granted: bool) {
        if self.role != Role::Candidate {
            return;
        }
        self.votes.insert(from, granted);
        if self.won() {
            self.become_leader();
        } else if self.lost() {
            let t = self.term;
            self.become_follower(t, None);
        }
    }

    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.leader == Some(from) && self.is_promotable() && self.role != Role::Leader {
            self.campaign(true);
        }
    }

    /// Asks the leader to hand leadership to `target`, an up-to-date voter. Proposals pause while
    /// the transfer runs; if it has not completed within an election timeout, this node resumes.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.id {
            return Err(TransferError::AlreadyLeader(target));
        }
        if !self.membership.contains(target) {
            return Err(TransferError::UnknownNode(target));
        }
        if !self.membership.is_voter(target) {
            return Err(TransferError::Learner(target));
        }
        match self.transfer {
            Some(t) if t == target => return Ok(()),
            Some(t) => return Err(TransferError::InProgress(t)),
            None => {}
        }
        self.start_transfer(target);
        self.flush();
        Ok(())
    }

    pub(crate) fn start_transfer(&mut self, target: NodeId) {
        self.transfer = Some(target);
        self.election_elapsed = 0;
        // A delayed TimeoutNow could elect the target later; never rely on the lease again this term.
        self.lease_disabled = true;
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
    }

    /// Creates progress for new members and drops it for removed ones.
    pub(crate) fn sync_progress(&mut self) {
        let members = self.membership.members();
        let next = self.log.last_index() + 1;
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            if id != self.id {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next));
            }
        }
        if let Some(t) = self.transfer {
            if !self.membership.is_voter(t) {
                self.transfer = None;
            }
        }
    }
}
