//! The Raft node: state, the message dispatcher, timers and the effect/persistence plumbing.
//! Protocol parts live in `election`, `replication`, `membership`, `snapshot` and `read`.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{Config, ReadMode};
use crate::error::{InitError, InvalidMessage, ReadError};
use crate::log::RaftLog;
use crate::progress::Progress;
use crate::storage::{RecoveredState, WriteBatch};
use crate::types::{
    Entry, HardState, LogIndex, Membership, Message, MessageBody, NodeId, Payload, Role, Snapshot,
    SnapshotMeta, Term,
};

/// No real log gets near this index; larger ones in a message are hostile, and would let index
/// arithmetic (`last_index + 1`) overflow later.
const MAX_MESSAGE_INDEX: LogIndex = LogIndex::MAX / 2;

/// What the driver must do on behalf of the core, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send a message to a peer (best effort; Raft tolerates loss).
    Send(Message),
    /// Write a batch to durable storage and call `on_persisted(batch.seq)` once it is durable.
    /// Batches must become durable in order.
    Persist(WriteBatch),
    /// Apply these committed entries to the state machine, in order.
    Apply(Vec<Entry>),
    /// Replace the state machine's state by this snapshot (received from the leader, or at start).
    InstallSnapshot(Snapshot),
    /// The log has grown past the threshold: take a state-machine snapshot at (or after) this
    /// applied index, asynchronously, and hand it over with `snapshot_taken`.
    SnapshotWanted {
        /// The applied index when the request was made.
        applied: LogIndex,
    },
    /// A linearizable read is confirmed: answer it once the state machine has applied `index`.
    ReadReady {
        /// The caller's read id.
        ctx: u64,
        /// The read index.
        index: LogIndex,
    },
    /// A read could not be confirmed (leadership lost).
    ReadFailed {
        /// The caller's read id.
        ctx: u64,
        /// Why.
        error: ReadError,
    },
}

/// A proposal accepted into the leader's log. It is committed once an entry with this index
/// and term is applied; if another term's entry is applied at that index, it was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Index of the new entry.
    pub index: LogIndex,
    /// Term of the new entry (the leader's term).
    pub term: Term,
}

/// Counters for observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages dropped because they were impossible.
    pub invalid_messages: u64,
    /// Elections started (real votes, not pre-votes).
    pub elections: u64,
    /// Times this node became leader.
    pub leaderships: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshots received whole but refused by the application's validator (never installed).
    pub snapshots_rejected: u64,
}

/// Checks a received snapshot's application data before it is installed: a peer's malformed
/// snapshot is dropped and counted instead of reaching the state machine.
pub type SnapshotValidator = fn(&[u8]) -> bool;

pub(crate) struct Waiting {
    pub(crate) seq: u64,
    pub(crate) last: Option<(LogIndex, Term)>,
    pub(crate) msgs: Vec<Message>,
}

pub(crate) struct PendingRead {
    pub(crate) ctx: u64,
    pub(crate) index: LogIndex,
    pub(crate) seq: u64,
}

/// A Raft node as a pure state machine: feed it ticks, messages and requests; drain its effects.
pub struct RaftNode {
    pub(crate) cfg: Config,
    pub(crate) id: NodeId,
    // persistent state
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog,
    // volatile state
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) commit: LogIndex,
    pub(crate) applied: LogIndex,
    pub(crate) membership: Membership,
    pub(crate) snapshot_membership: Membership,
    pub(crate) configs: Vec<(LogIndex, Membership)>,
    pub(crate) snapshot: Option<Snapshot>,
    /// A snapshot being received: its meta, the sending leader and term, and the bytes so far.
    /// Only the same leader in the same term may resume it (another leader's bytes may differ).
    pub(crate) incoming: Option<(SnapshotMeta, NodeId, Term, Vec<u8>)>,
    pub(crate) snapshot_requested_at: Option<LogIndex>,
    // timers
    pub(crate) ticks: u64,
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    /// Ticks since this node last heard from a leader of its term, or, in lease mode, since it
    /// started (it may have acknowledged a lease round just before a crash). Not reset by role
    /// or term changes: while it is below the election timeout, votes are refused (`in_lease`).
    pub(crate) since_leader: u32,
    pub(crate) randomized_timeout: u32,
    pub(crate) rng: u64,
    // candidate
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// An early pre-vote round sent by this follower shortly before its election timer fires:
    /// the tick it went out, the term it is for, and the voters that granted it so far.
    pub(crate) early_pre_vote: Option<(u64, Term, std::collections::BTreeSet<NodeId>)>,
    // leader
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) seq: u64,
    pub(crate) rounds: VecDeque<(u64, u64)>,
    pub(crate) round_open: bool,
    pub(crate) pending_reads: Vec<PendingRead>,
    pub(crate) reads_awaiting_commit: Vec<u64>,
    pub(crate) lease_disabled: bool,
    pub(crate) transfer: Option<NodeId>,
    pub(crate) uncommitted_entries: usize,
    pub(crate) uncommitted_bytes: usize,
    // persistence
    pub(crate) durable: LogIndex,
    pub(crate) stage_from: Option<LogIndex>,
    /// A snapshot to write with the next batch, and whether it replaces the whole log.
    pub(crate) stage_snapshot: Option<(Snapshot, bool)>,
    pub(crate) persisted_hs: HardState,
    pub(crate) next_seq: u64,
    pub(crate) waiting: VecDeque<Waiting>,
    pub(crate) held: Vec<Message>,
    pub(crate) effects: Vec<Effect>,
    pub(crate) stats: Stats,
    pub(crate) snapshot_validator: Option<SnapshotValidator>,
}

impl RaftNode {
    /// Starts a node from its configuration and whatever storage recovered.
    pub fn new(cfg: Config, state: RecoveredState) -> Result<Self, InitError> {
        cfg.validate()?;
        let (snap_index, snap_term, snap_membership) = match &state.snapshot {
            Some(s) => (s.meta.index, s.meta.term, s.meta.membership.clone()),
            None => (0, 0, Membership::default()),
        };
        let log = RaftLog::recover(snap_index, snap_term, state.entries)
            .map_err(InitError::Inconsistent)?;
        let hs = state.hard_state;
        let last_term = log.last_term();
        if last_term > hs.term {
            return Err(InitError::Inconsistent(format!(
                "log has term {last_term} above the hard state's term {}",
                hs.term
            )));
        }
        let last = log.last_index();
        let commit = hs.commit.clamp(snap_index, last);
        let id = cfg.id;
        // Only leases need the refusal after a restart (see `since_leader`); without them a
        // fresh or restarted node may vote at once.
        let since_leader = if cfg.read_mode == ReadMode::Lease {
            0
        } else {
            cfg.election_tick
        };
        let mut node = RaftNode {
            rng: cfg.seed ^ 0x9E37_79B9_7F4A_7C15 ^ id.wrapping_mul(0xA24B_AED4_963E_E407),
            cfg,
            id,
            term: hs.term,
            vote: hs.vote,
            log,
            role: Role::Follower,
            leader: None,
            commit,
            applied: snap_index,
            membership: snap_membership.clone(),
            snapshot_membership: snap_membership,
            configs: Vec::new(),
            snapshot: state.snapshot.clone(),
            incoming: None,
            snapshot_requested_at: None,
            ticks: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            since_leader,
            randomized_timeout: 0,
            votes: BTreeMap::new(),
            early_pre_vote: None,
            progress: BTreeMap::new(),
            seq: 0,
            rounds: VecDeque::new(),
            round_open: false,
            pending_reads: Vec::new(),
            reads_awaiting_commit: Vec::new(),
            lease_disabled: false,
            transfer: None,
            uncommitted_entries: 0,
            uncommitted_bytes: 0,
            durable: last,
            stage_from: None,
            stage_snapshot: None,
            persisted_hs: hs,
            next_seq: 1,
            waiting: VecDeque::new(),
            held: Vec::new(),
            effects: Vec::new(),
            stats: Stats::default(),
            snapshot_validator: None,
        };
        node.rebuild_configs();
        node.reset_randomized_timeout();
        if let Some(s) = state.snapshot {
            if s.meta.index > 0 {
                node.effects.push(Effect::InstallSnapshot(s));
            }
        }
        node.flush();
        Ok(node)
    }

    // ---------------------------------------------------------------- accessors

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Who this node voted for in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader this node follows (itself when leading), if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
    /// Highest index handed to the state machine.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }
    /// Index of the last entry in the log.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    /// Term of the last entry in the log.
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }
    /// Index of the last entry known durable on this node.
    pub fn durable_index(&self) -> LogIndex {
        self.durable
    }
    /// Index covered by the latest snapshot. The log may still hold entries before it (see
    /// [`RaftNode::first_index`]).
    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot
            .as_ref()
            .map_or(0, |s| s.meta.index)
            .max(self.log.base_index())
    }
    /// Index of the first entry still in the log: at or before the latest snapshot's index +
    /// 1, as trailing entries are kept for followers that lag a little.
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }
    /// The term of the entry at `index`, if retained (or the snapshot point).
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }
    /// The entry at `index`, if retained.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// The retained entries after the latest snapshot's index (trailing entries before it are
    /// reachable with [`RaftNode::entry`]).
    pub fn entries(&self) -> &[Entry] {
        self.log.entries_after(self.snapshot_index())
    }
    /// The membership in force (the latest configuration in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// The latest snapshot this node holds.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    /// Replication progress of a follower, as seen by the leader: `(match_index, next_index)`.
    pub fn progress(&self, peer: NodeId) -> Option<(LogIndex, LogIndex)> {
        self.progress
            .get(&peer)
            .map(|p| (p.match_index, p.next_index))
    }
    /// The target of the leadership transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// True if this node may campaign: it is a voter in its latest configuration, or that
    /// configuration is not yet committed and it was a voter in the one before (Raft thesis
    /// §4.2.2: it may still be needed to commit the configuration that removes it).
    pub fn is_promotable(&self) -> bool {
        if self.membership.is_voter(self.id) {
            return true;
        }
        match self.configs.as_slice() {
            [.., (_, prev), (last_index, _)] if *last_index > self.commit => prev.is_voter(self.id),
            [(last_index, _)] if *last_index > self.commit => {
                self.snapshot_membership.is_voter(self.id)
            }
            _ => false,
        }
    }
    /// The current hard state (term, vote, commit), durable or not.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }

    /// Drains the effects produced so far. Call after every input.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Sets the check a received snapshot's data must pass before it is installed (the
    /// application decodes it); a snapshot that fails is dropped and counted in
    /// [`Stats::snapshots_rejected`].
    pub fn set_snapshot_validator(&mut self, validator: SnapshotValidator) {
        self.snapshot_validator = Some(validator);
    }

    // ---------------------------------------------------------------- inputs

    /// Advances logical time by one tick.
    ///
    /// The host's contract (leader leases rely on it, see `ReadMode::Lease`): deliver one tick
    /// per elapsed tick interval of a monotonic clock, counting the ticks missed while the
    /// process was paused or descheduled, and after such a gap deliver the missed ticks before
    /// any other input (message, request, storage completion). A host that handles the queued
    /// messages first lets a follower grant a vote inside a lease it promised, and a leader serve
    /// a read on a lease that has run out.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.since_leader = self.since_leader.saturating_add(1);
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        self.flush();
    }

    /// Reports that every batch up to `seq` is durable.
    pub fn on_persisted(&mut self, seq: u64) {
        while let Some(w) = self.waiting.front() {
            if w.seq > seq {
                break;
            }
            let w = self.waiting.pop_front().expect("front exists");
            if let Some((index, term)) = w.last {
                if self.log.term(index) == Some(term) && index > self.durable {
                    self.durable = index;
                }
            }
            for m in w.msgs {
                self.effects.push(Effect::Send(m));
            }
        }
        if self.role == Role::Candidate && self.waiting.is_empty() && self.won() {
            // Our own vote is durable now (see become_candidate): take office.
            self.become_leader();
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
        self.flush();
    }

    /// Handles a message from a peer. Impossible messages are dropped and reported.
    pub fn step(&mut self, m: Message) -> Result<(), InvalidMessage> {
        if let Err(reason) = self.validate(&m) {
            self.stats.invalid_messages += 1;
            return Err(InvalidMessage {
                from: m.from,
                reason,
            });
        }
        let result = self.step_inner(m);
        self.flush();
        if result.is_err() {
            self.stats.invalid_messages += 1;
        }
        result
    }

    fn step_inner(&mut self, m: Message) -> Result<(), InvalidMessage> {
        if m.term > self.term {
            // Leader stickiness: we heard from a live leader within the election timeout; ignore
            // the disruptor. For a pre-vote the window ends `pre_vote_lead` ticks earlier, so
            // that an early pre-vote round (sent that much before the sender's timer fires) is
            // answered; a pre-vote elects nobody, and votes keep the whole window, which is
            // what leader leases rely on.
            let pre_vote_window = self.cfg.election_tick - self.pre_vote_lead();
            match &m.body {
                MessageBody::PreVote { .. } if self.in_lease(pre_vote_window) => return Ok(()),
                MessageBody::Vote {
                    transfer: false, ..
                } if self.in_lease(self.cfg.election_tick) => return Ok(()),
                _ => {}
            }
            match &m.body {
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResp { granted: true } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot { .. } => self.become_follower(m.term, Some(m.from)),
                MessageBody::Vote { .. } => self.adopt_candidate_term(m.term),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader (or one cut off while we moved on): tell it our term so it
                    // steps down, which also frees a candidate stuck at a higher term.
                    self.send(m.from, MessageBody::HeartbeatResp { seq: 0 });
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResp { granted: false });
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => self.handle_pre_vote(m.from, m.term, last_log_index, last_log_term),
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                transfer,
            } => self.handle_vote(m.from, last_log_index, last_log_term, transfer),
            MessageBody::PreVoteResp { granted } => {
                self.handle_pre_vote_resp(m.from, m.term, granted)
            }
            MessageBody::VoteResp { granted } => self.handle_vote_resp(m.from, granted),
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                seq,
            } => {
                self.accept_leader(m.from);
                return self.handle_append(m.from, prev_index, prev_term, entries, commit, seq);
            }
            MessageBody::Heartbeat { commit, seq } => {
                self.accept_leader(m.from);
                self.handle_heartbeat(m.from, commit, seq);
            }
            MessageBody::Snapshot {
                meta,
                offset,
                data,
                done,
                seq,
            } => {
                self.accept_leader(m.from);
                self.handle_snapshot_chunk(m.from, meta, offset, data, done, seq);
            }
            MessageBody::AppendResp {
                success,
                match_index,
                hint_index,
                hint_term,
                seq,
            } => {
                if self.role == Role::Leader {
                    return self.handle_append_resp(
                        m.from,
                        success,
                        match_index,
                        hint_index,
                        hint_term,
                        seq,
                    );
                }
            }
            MessageBody::HeartbeatResp { seq } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_resp(m.from, seq);
                }
            }
            MessageBody::SnapshotResp {
                index,
                next_offset,
                done,
                seq,
            } => {
                if self.role == Role::Leader {
                    self.handle_snapshot_resp(m.from, index, next_offset, done, seq);
                }
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(m.from),
        }
        Ok(())
    }

    /// A leader of our term spoke: follow it.
    fn accept_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        self.since_leader = 0;
    }

    /// Rejects messages whose fields cannot be valid, before they touch any state.
    fn validate(&self, m: &Message) -> Result<(), String> {
        if m.to != self.id {
            return Err(format!("addressed to {} but this is {}", m.to, self.id));
        }
        if m.from == 0 || m.from == self.id {
            return Err(format!("impossible sender {}", m.from));
        }
        if m.term == 0 {
            return Err("term 0".into());
        }
        match &m.body {
            MessageBody::PreVote { last_log_term, .. }
            | MessageBody::Vote { last_log_term, .. }
                if *last_log_term > m.term =>
            {
                return Err("last log term above the campaign term".into());
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                if *prev_term > m.term {
                    return Err("prev_term above the leader's term".into());
                }
                if prev_index
                    .checked_add(entries.len() as u64)
                    .is_none_or(|last| last > MAX_MESSAGE_INDEX)
                {
                    return Err("index overflow".into());
                }
                if *prev_index == 0 && *prev_term != 0 {
                    return Err("prev_index 0 with a non-zero term".into());
                }
                let mut t = *prev_term;
                for (i, e) in entries.iter().enumerate() {
                    if e.index != prev_index + 1 + i as u64 {
                        return Err(format!("entry {i} has index {}, not consecutive", e.index));
                    }
                    if e.term < t || e.term > m.term || e.term == 0 {
                        return Err(format!("entry {} has impossible term {}", e.index, e.term));
                    }
                    if let Payload::Config(c) = &e.payload {
                        if c.members().contains(&0) || c.voters.is_empty() {
                            return Err(format!("entry {} has an invalid configuration", e.index));
                        }
                    }
                    t = e.term;
                }
            }
            MessageBody::Snapshot {
                meta, offset, data, ..
            } => {
                if meta.index == 0
                    || meta.index > MAX_MESSAGE_INDEX
                    || meta.term == 0
                    || meta.term > m.term
                {
                    return Err("snapshot with an impossible index or term".into());
                }
                if offset.checked_add(data.len() as u64).is_none() {
                    return Err("snapshot chunk offset overflow".into());
                }
                if meta.membership.members().contains(&0) || meta.membership.voters.is_empty() {
                    return Err("snapshot with an invalid membership".into());
                }
            }
            MessageBody::AppendResp {
                success: true,
                match_index,
                ..
            } if self.role == Role::Leader
                && m.term == self.term
                && *match_index > self.log.last_index() =>
            {
                return Err(format!(
                    "acknowledges index {match_index} beyond our last index {}",
                    self.log.last_index()
                ));
            }
            MessageBody::SnapshotResp {
                index,
                next_offset,
                done,
                ..
            } if self.role == Role::Leader && m.term == self.term => {
                if *done && *index > self.log.last_index() {
                    return Err(format!(
                        "acknowledges snapshot {index} beyond our last index"
                    ));
                }
                // The snapshot being sent to this follower may be older than our latest.
                let sending = self.progress.get(&m.from).and_then(|pr| pr.sending());
                let snap = sending
                    .into_iter()
                    .chain(self.snapshot.as_ref())
                    .find(|s| s.meta.index == *index);
                if snap.is_some_and(|s| *next_offset > s.data.len() as u64) {
                    return Err(format!(
                        "snapshot offset {next_offset} beyond the snapshot's end"
                    ));
                }
            }
            _ => {}
        }
        if self.role == Role::Leader && m.term == self.term {
            let seq = match &m.body {
                MessageBody::AppendResp { seq, .. }
                | MessageBody::HeartbeatResp { seq }
                | MessageBody::SnapshotResp { seq, .. } => *seq,
                _ => 0,
            };
            if seq > self.seq {
                // Echoing a round we never sent could confirm a read without a quorum.
                return Err(format!(
                    "echoes round {seq} but the latest round is {}",
                    self.seq
                ));
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- plumbing

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        let m = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.effects.push(Effect::Send(m));
    }

    /// Sends a message only once everything written so far is durable (votes, acknowledgements).
    pub(crate) fn send_durable(&mut self, to: NodeId, body: MessageBody) {
        let m = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.held.push(m);
    }

    /// Marks log entries from `index` on as needing to be written.
    pub(crate) fn stage_entries(&mut self, index: LogIndex) {
        self.stage_from = Some(self.stage_from.map_or(index, |s| s.min(index)));
        if index <= self.durable {
            self.durable = index.saturating_sub(1);
        }
    }

    /// Turns this step's writes into a Persist effect, releases what may be sent, applies
    /// committed entries, and issues snapshot and read notifications.
    pub(crate) fn flush(&mut self) {
        let mut batch = WriteBatch::default();
        if let Some((s, reset)) = self.stage_snapshot.take() {
            // Trailing entries before the snapshot stay on disk too, with the entry at the
            // compaction point (a restarted node needs its term).
            let base = self.log.base_index();
            if !reset && base < s.meta.index {
                batch.compact_to = Some(base.saturating_sub(1));
            }
            batch.snapshot = Some(s);
            batch.reset_log = reset;
        }
        if let Some(from) = self.stage_from.take() {
            let from = from.max(self.log.first_index());
            batch.entries = self
                .log
                .slice(from, self.log.last_index(), usize::MAX, usize::MAX);
        }
        let hs = self.hard_state();
        if hs != self.persisted_hs {
            batch.hard_state = Some(hs);
            self.persisted_hs = hs;
        }
        if !batch.is_empty() {
            batch.seq = self.next_seq;
            self.next_seq += 1;
            let last = if let Some(e) = batch.entries.last() {
                Some((e.index, e.term))
            } else {
                batch.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term))
            };
            let msgs = std::mem::take(&mut self.held);
            self.waiting.push_back(Waiting {
                seq: batch.seq,
                last,
                msgs,
            });
            self.effects.push(Effect::Persist(batch));
        } else if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            match self.waiting.back_mut() {
                Some(w) => w.msgs.extend(held),
                None => self.effects.extend(held.into_iter().map(Effect::Send)),
            }
        }
        if self.round_open {
            self.round_open = false;
            self.broadcast_heartbeat_round();
        }
        self.apply_committed();
        let since = self.applied.saturating_sub(self.snapshot_index());
        let requested_recently = self
            .snapshot_requested_at
            .is_some_and(|at| self.applied < at + self.cfg.snapshot_threshold);
        if since >= self.cfg.snapshot_threshold && !requested_recently {
            self.snapshot_requested_at = Some(self.applied);
            self.effects.push(Effect::SnapshotWanted {
                applied: self.applied,
            });
        }
    }

    fn apply_committed(&mut self) {
        if self.commit <= self.applied {
            return;
        }
        let lo = self.applied + 1;
        let entries = self.log.slice(lo, self.commit, usize::MAX, usize::MAX);
        if let Some(last) = entries.last() {
            self.applied = last.index;
            self.effects.push(Effect::Apply(entries));
        }
    }

    // ---------------------------------------------------------------- timers and roles

    pub(crate) fn next_random(&mut self) -> u64 {
        // splitmix64: small, seeded, deterministic.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn reset_randomized_timeout(&mut self) {
        let base = self.cfg.election_tick;
        self.randomized_timeout = base + (self.next_random() % base as u64) as u32;
    }

    /// The election timeout currently drawn (in `[election_tick, 2*election_tick)`).
    pub fn randomized_election_timeout(&self) -> u32 {
        self.randomized_timeout
    }

    fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        let lead = self.pre_vote_lead();
        if lead > 0
            && self.role == Role::Follower
            && self.is_promotable()
            && self.election_elapsed.saturating_add(lead) == self.randomized_timeout
        {
            self.send_early_pre_vote();
        }
        if self.is_promotable() && self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let id = self.id;
                let progress = &self.progress;
                let active = self
                    .membership
                    .has_quorum(|p| p == id || progress.get(&p).is_some_and(|pr| pr.recent_active));
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
                if !active {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
            }
            // A transfer that did not complete within an election timeout is abandoned.
            self.transfer = None;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat_round();
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            self.abandon_leadership();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.election_elapsed = 0;
        self.votes.clear();
        self.reset_randomized_timeout();
    }

    fn abandon_leadership(&mut self) {
        self.progress.clear();
        self.transfer = None;
        self.rounds.clear();
        self.round_open = false;
        let mut failed: Vec<u64> = self.pending_reads.drain(..).map(|r| r.ctx).collect();
        failed.append(&mut self.reads_awaiting_commit);
        for ctx in failed {
            self.effects.push(Effect::ReadFailed {
                ctx,
                error: ReadError::LeadershipLost,
            });
        }
        self.uncommitted_entries = 0;
        self.uncommitted_bytes = 0;
    }

    pub(crate) fn rebuild_configs(&mut self) {
        self.configs.clear();
        for e in self.log.entries() {
            if let Payload::Config(c) = &e.payload {
                self.configs.push((e.index, c.clone()));
            }
        }
        self.refresh_membership();
    }

    /// Membership = the latest configuration in the log, else the snapshot's.
    pub(crate) fn refresh_membership(&mut self) {
        let m = self
            .configs
            .last()
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| self.snapshot_membership.clone());
        if m != self.membership {
            self.membership = m;
            if self.role == Role::Leader {
                self.sync_progress();
            }
        }
    }

    /// Index of the latest configuration entry (0 if the configuration comes from the snapshot).
    pub(crate) fn pending_conf_index(&self) -> LogIndex {
        self.configs.last().map_or(0, |(i, _)| *i)
    }
}
