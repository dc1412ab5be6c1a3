//! Linearizable reads: ReadIndex (§6.4 of the Raft thesis) and the optional leader lease.

use crate::config::ReadMode;
use crate::error::ReadError;
use crate::node::{Effect, PendingRead, RaftNode};
use crate::types::Role;

impl RaftNode {
    /// Requests a linearizable read identified by `ctx`. The answer comes later as
    /// `Effect::ReadReady { ctx, index }` (serve once the state machine applied `index`) or
    /// `Effect::ReadFailed`. A new leader first commits an entry of its term.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        if self.role != Role::Leader {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        }
        if self.log.term(self.commit) != Some(self.term) {
            self.reads_awaiting_commit.push(ctx);
        } else {
            self.start_read(ctx);
        }
        self.flush();
        Ok(())
    }

    fn start_read(&mut self, ctx: u64) {
        let index = self.commit;
        let id = self.id;
        if self.membership.has_quorum(|p| p == id) {
            self.effects.push(Effect::ReadReady { ctx, index });
            return;
        }
        if self.cfg.read_mode == ReadMode::Lease && self.lease_valid() {
            self.effects.push(Effect::ReadReady { ctx, index });
            return;
        }
        if !self.round_open {
            // One heartbeat round (sent at the end of this step) confirms all reads of this step.
            self.round_open = true;
        }
        self.pending_reads.push(PendingRead {
            ctx,
            index,
            seq: self.seq + 1,
        });
    }

    /// Called when the leader commits: reads that waited for a current-term commit can start.
    pub(crate) fn start_awaiting_reads(&mut self) {
        if self.reads_awaiting_commit.is_empty() || self.log.term(self.commit) != Some(self.term) {
            return;
        }
        for ctx in std::mem::take(&mut self.reads_awaiting_commit) {
            self.start_read(ctx);
        }
    }

    /// The highest round a quorum has echoed (the leader itself counts as current).
    fn quorum_seq(&self) -> u64 {
        let (id, seq) = (self.id, self.seq);
        let progress = &self.progress;
        self.membership.quorum_value(|p| {
            if p == id {
                seq
            } else {
                progress.get(&p).map_or(0, |pr| pr.acked_seq)
            }
        })
    }

    /// Answers the pending reads whose round a quorum has confirmed.
    pub(crate) fn release_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let q = self.quorum_seq();
        while let Some((s, _)) = self.rounds.front() {
            if *s < q {
                self.rounds.pop_front();
            } else {
                break;
            }
        }
        if self.pending_reads.is_empty() {
            return;
        }
        let (ready, rest): (Vec<_>, Vec<_>) =
            self.pending_reads.drain(..).partition(|r| r.seq <= q);
        self.pending_reads = rest;
        for r in ready {
            self.effects.push(Effect::ReadReady {
                ctx: r.ctx,
                index: r.index,
            });
        }
    }

    /// The lease holds while a quorum acknowledged a round sent less than an election timeout ago:
    /// those followers refuse to elect anyone else until their own election timeout passes.
    fn lease_valid(&self) -> bool {
        if self.lease_disabled || self.transfer.is_some() {
            return false;
        }
        let q = self.quorum_seq();
        self.rounds
            .iter()
            .find(|(s, _)| *s == q)
            .is_some_and(|(_, sent)| self.ticks < sent + self.cfg.election_tick as u64)
    }
}
