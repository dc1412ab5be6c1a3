//! Leader election (§5.2): pre-vote (§9.6), votes, becoming leader, and leadership transfer (§3.10
//! of the Raft thesis, TimeoutNow).

use crate::error::TransferError;
use crate::node::RaftNode;
use crate::progress::Progress;
use std::collections::BTreeSet;

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

    /// How many ticks before its election timer fires a follower sends its pre-vote round: a
    /// tenth of the minimum election timeout (zero, i.e. off, below 10 ticks, without pre-vote
    /// or with `Config::early_pre_vote` off). With a round trip shorter than that, the grants are in when the timer fires
    /// and the real election starts at once: pre-vote then costs no round trip of failover time
    /// (the Raft paper's failover figures are for elections without pre-vote).
    pub(crate) fn pre_vote_lead(&self) -> u32 {
        if self.cfg.pre_vote && self.cfg.early_pre_vote {
            self.cfg.election_tick / 10
        } else {
            0
        }
    }

    /// Sends the pre-vote round early (see [`RaftNode::pre_vote_lead`]). Nothing changes here:
    /// this node stays a follower, heeds any leader it hears from, and starts an election only
    /// when its timer fires, as always. Voters still inside a leader's lease ignore the request;
    /// those grants that come back count for the pre-vote round of that election.
    pub(crate) fn send_early_pre_vote(&mut self) {
        let Some(term) = self.term.checked_add(1) else {
            // No later term exists (only a hostile peer can have pushed us here).
            return;
        };
        self.early_pre_vote = Some((self.ticks, term, BTreeSet::new()));
        self.send_pre_votes(term, &BTreeSet::new());
    }

    /// Grants of an early pre-vote round that still hold: sent within the last lead ticks (so
    /// the election timer has not been reset since) for the next term.
    fn early_grants(&mut self) -> BTreeSet<NodeId> {
        let lead = u64::from(self.pre_vote_lead());
        match self.early_pre_vote.take() {
            Some((at, term, grants))
                if self.ticks.saturating_sub(at) <= lead && term == self.term + 1 =>
            {
                grants
            }
            _ => BTreeSet::new(),
        }
    }

    fn send_pre_votes(&mut self, term: Term, skip: &BTreeSet<NodeId>) {
        let (lli, llt) = (self.log.last_index(), self.log.last_term());
        for to in self.voters_except_self() {
            if skip.contains(&to) {
                continue;
            }
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

    fn become_pre_candidate(&mut self) {
        if self.role == Role::Leader {
            return;
        }
        let early = if self.role == Role::Follower {
            self.early_grants()
        } else {
            self.early_pre_vote = None;
            BTreeSet::new()
        };
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        for &g in &early {
            self.votes.insert(g, true);
        }
        self.election_elapsed = 0;
        self.reset_randomized_timeout();
        if self.won() {
            self.become_candidate(false);
            return;
        }
        // Ask again those that have not granted yet (their early answer may still be on the
        // way, or they were still in a leader's lease then).
        let term = self.term + 1;
        self.send_pre_votes(term, &early);
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

    /// True while this node must not help elect anyone (with check-quorum): as a follower,
    /// fewer than `window` ticks since it last heard from a leader or since it started; as a
    /// leader, its own check-quorum window. Leader leases rely on followers keeping this
    /// promise for a whole election timeout whatever happens meanwhile: a restart (the promise
    /// may have been made just before the crash) or a step to a higher term on some other
    /// message (so the refusal covers same-term votes too, see `handle_vote`).
    pub(crate) fn in_lease(&self, window: u32) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        if self.role == Role::Leader {
            self.election_elapsed < window
        } else {
            self.since_leader < window
        }
    }

    /// Moves to the higher term of a vote request, as a follower, without restarting the
    /// election timer: only a granted vote restarts it (`handle_vote`). A refused candidate
    /// (its log is behind ours) that keeps timing out would otherwise keep resetting our timer
    /// and, with a faster clock, could stop the nodes that can win from ever campaigning.
    pub(crate) fn adopt_candidate_term(&mut self, term: Term) {
        let keep =
            (self.role != Role::Leader).then_some((self.election_elapsed, self.randomized_timeout));
        self.become_follower(term, None);
        if let Some((elapsed, timeout)) = keep {
            self.election_elapsed = elapsed;
            self.randomized_timeout = timeout;
        }
    }

    pub(crate) fn handle_vote(&mut self, from: NodeId, lli: LogIndex, llt: Term, transfer: bool) {
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && self.log.is_up_to_date(lli, llt);
        if granted && self.vote.is_none() && !transfer && self.in_lease(self.cfg.election_tick) {
            // A candidate of our own term (we reached it through some other message) while we
            // still owe a leader its lease: ignored, as a higher-term one would be.
            return;
        }
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        self.send_durable(from, MessageBody::VoteResp { granted });
    }

    pub(crate) fn handle_pre_vote_resp(&mut self, from: NodeId, term: Term, granted: bool) {
        if self.role == Role::Follower {
            // An answer to an early round: kept for the election it precedes.
            if let Some((_, t, grants)) = self.early_pre_vote.as_mut() {
                if granted && term == *t && term == self.term + 1 {
                    grants.insert(from);
                }
            }
            return;
        }
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
