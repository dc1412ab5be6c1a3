//! Linearizable reads: ReadIndex (§6.4 of the Raft thesis) and the optional leader lease.
//!
//! # The lease and its margin
//!
//! Write `E` for `election_tick`, `T` for the nominal tick interval, `ρ` for
//! `Config::max_clock_drift`. The host contract (see [`RaftNode::tick`]) makes a node's tick
//! count follow its monotonic clock, and the drift bound says every node's tick interval lies
//! in `[T(1-ρ), T(1+ρ)]` of real time.
//!
//! * A follower that receives a leader message at real time `r` refuses votes until its
//!   election-timeout counter reaches `E` again. The first of those ticks may come at once, so
//!   the refusal lasts more than `(E-1)` of its intervals: beyond `r + (E-1)·T(1-ρ)`. A restart
//!   starts the refusal afresh (later, so it only lasts longer); a step to a higher term does
//!   not end it.
//! * The leader sends lease round `s` at its tick count `t_s`, at real time `x ≥` that tick.
//!   Every follower that echoes round `s` (or a later one) received it at `r ≥ x`. The lease
//!   holds while the leader's tick count is below `t_s + L`: it ends on or before real time
//!   `x + L·T(1+ρ)`.
//! * A new leader needs the vote of some node of the quorum that echoed round `s` (quorums
//!   intersect, joint ones included), which it gets only after that node's refusal, and it can
//!   commit only after that. So no read served under the lease can miss a write committed
//!   elsewhere as long as `L·T(1+ρ) ≤ (E-1)·T(1-ρ)`, i.e.
//!   `L = floor((E-1)·(1-ρ)/(1+ρ))` ([`Config::lease_ticks`]): one tick shorter than the
//!   refusal for tick phase (nodes' ticks are not aligned), then shortened by the drift.
//!   With `E = 10` and `ρ = 0.1` the lease is 7 ticks against a refusal of 10.
//!
//! A leader whose process was paused gets its missed ticks first (host contract), so its lease
//! has run out before it handles a read queued during the pause.

use crate::config::{Config, ReadMode};
use crate::error::ReadError;
use crate::node::{Effect, PendingRead, RaftNode};
use crate::types::Role;

impl Config {
    /// Length of the leader lease in ticks: `floor((election_tick - 1)·(1 - ρ)/(1 + ρ))` with
    /// `ρ = max_clock_drift`, shorter than the followers' vote refusal by one tick for tick
    /// phase and by the drift bound (arithmetic in the module docs of `read.rs`). Zero means
    /// no lease is possible; `validate` refuses lease mode then.
    pub fn lease_ticks(&self) -> u32 {
        let rho = self.max_clock_drift;
        if !(0.0..1.0).contains(&rho) {
            return 0;
        }
        let base = f64::from(self.election_tick.saturating_sub(1));
        // Floor, and never above the refusal even if rounding errs.
        ((base * (1.0 - rho) / (1.0 + rho)).floor() as u32)
            .min(self.election_tick.saturating_sub(1))
    }
}

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

    /// The lease holds while a quorum acknowledged a round sent less than
    /// [`Config::lease_ticks`] ago: those followers refuse to elect anyone else for an election
    /// timeout, which outlasts the lease by the margin explained in the module docs.
    fn lease_valid(&self) -> bool {
        if self.lease_disabled || self.transfer.is_some() {
            return false;
        }
        let q = self.quorum_seq();
        self.rounds
            .iter()
            .find(|(s, _)| *s == q)
            .is_some_and(|(_, sent)| self.ticks < sent + u64::from(self.cfg.lease_ticks()))
    }
}
