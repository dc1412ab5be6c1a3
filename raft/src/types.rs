//! The vocabulary of Raft: ids, terms, log entries, membership, hard state, snapshots, messages.

use std::collections::BTreeSet;
use std::sync::Arc;

/// A node's identity in the Raft group. `0` is reserved to mean "nobody".
pub type NodeId = u64;
/// A Raft term (election epoch). Terms only grow.
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1, `0` means "before the log".
pub type LogIndex = u64;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Payload {
    /// Appended by a new leader so it can commit an entry of its own term (§5.4.2, §8).
    Noop,
    /// An application command for the state machine.
    Command(Vec<u8>),
    /// A membership configuration; takes effect as soon as it is in the log.
    Config(Membership),
}

impl Payload {
    /// Approximate size in bytes, used for message and flow-control bounds.
    pub fn size(&self) -> usize {
        match self {
            Payload::Noop => 0,
            Payload::Command(data) => data.len(),
            Payload::Config(m) => 8 * (m.voters.len() + m.outgoing.len() + m.learners.len()),
        }
    }
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: Payload,
}

impl Entry {
    /// Size estimate including a fixed per-entry overhead.
    pub fn size(&self) -> usize {
        16 + self.payload.size()
    }
}

/// A membership configuration. Outside a joint consensus `outgoing` is empty; during one,
/// decisions need a majority of `voters` (the incoming set) *and* of `outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Membership {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while in joint consensus; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A plain configuration with the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            ..Default::default()
        }
    }

    /// True while a joint consensus is in progress.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// True if `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// True if `id` is a learner and not a voter.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) && !self.is_voter(id)
    }

    /// True if `id` is part of the configuration in any role.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member (voters of both halves and learners), sorted.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// True when the nodes for which `yes` holds form a quorum: a majority of `voters` and,
    /// during joint consensus, also of `outgoing`.
    pub fn has_quorum(&self, mut yes: impl FnMut(NodeId) -> bool) -> bool {
        let mut half = |set: &BTreeSet<NodeId>| {
            set.is_empty() || set.iter().filter(|&&id| yes(id)).count() > set.len() / 2
        };
        let a = half(&self.voters);
        let b = half(&self.outgoing);
        a && b && !self.voters.is_empty()
    }

    /// The largest value `v` such that a quorum has `value(id) >= v` (the "quorum index").
    pub fn quorum_value(&self, mut value: impl FnMut(NodeId) -> u64) -> u64 {
        let mut half = |set: &BTreeSet<NodeId>| -> u64 {
            if set.is_empty() {
                return u64::MAX;
            }
            let mut vals: Vec<u64> = set.iter().map(|&id| value(id)).collect();
            vals.sort_unstable_by(|a, b| b.cmp(a));
            vals[set.len() / 2]
        };
        if self.voters.is_empty() {
            return 0;
        }
        half(&self.voters).min(half(&self.outgoing))
    }
}

/// The state a node must persist before it answers: current term, vote, and commit index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Who this node voted for in `term`, if anyone.
    pub vote: Option<NodeId>,
    /// The highest index known committed (an optimisation: recomputed otherwise).
    pub commit: LogIndex,
}

/// Identifies a snapshot: the last index and term it covers and the membership at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SnapshotMeta {
    /// Last log index included in the snapshot.
    pub index: LogIndex,
    /// Term of the entry at `index`.
    pub term: Term,
    /// Membership in force at `index`.
    pub membership: Membership,
}

/// A state-machine snapshot with its metadata. The data is shared, never copied per follower.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The application's serialized state at `meta.index`.
    pub data: Arc<Vec<u8>>,
}

/// A message between Raft nodes. `term` is the sender's term (or the proposed term for pre-votes).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sender's term, or the term a pre-candidate would campaign in.
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of Raft messages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MessageBody {
    /// Pre-vote request (§9.6): would you vote for me in `term` without anyone changing term?
    PreVote {
        /// Index of the candidate's last entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last entry.
        last_log_term: Term,
    },
    /// Answer to a pre-vote.
    PreVoteResp {
        /// Whether the pre-vote is granted.
        granted: bool,
    },
    /// RequestVote (§5.2).
    Vote {
        /// Index of the candidate's last entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last entry.
        last_log_term: Term,
        /// Set when the election follows a leadership transfer: voters ignore their leader lease.
        transfer: bool,
    },
    /// Answer to RequestVote.
    VoteResp {
        /// Whether the vote is granted.
        granted: bool,
    },
    /// AppendEntries carrying entries (§5.3).
    Append {
        /// Index of the entry preceding `entries`.
        prev_index: LogIndex,
        /// Term of the entry at `prev_index`.
        prev_term: Term,
        /// Entries to append, consecutive from `prev_index + 1`.
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: LogIndex,
        /// Leader's read/lease round, echoed in the response.
        seq: u64,
    },
    /// Answer to Append.
    AppendResp {
        /// True if the entries matched and were appended.
        success: bool,
        /// On success, the last index now known to match the leader's log.
        match_index: LogIndex,
        /// On rejection, the index the follower suggests probing from (fast back-off).
        hint_index: LogIndex,
        /// On rejection, the term of the follower's entry at `hint_index` (0 if none).
        hint_term: Term,
        /// Echo of the request's round.
        seq: u64,
    },
    /// Leader heartbeat; carries the commit index the follower may safely learn.
    Heartbeat {
        /// min(leader commit, follower's match index).
        commit: LogIndex,
        /// Leader's read/lease round, echoed in the response.
        seq: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatResp {
        /// Echo of the request's round.
        seq: u64,
    },
    /// One chunk of a snapshot. Chunks are sent in order; a follower can resume a broken transfer.
    Snapshot {
        /// The snapshot being sent.
        meta: SnapshotMeta,
        /// Byte offset of `data` within the snapshot.
        offset: u64,
        /// The chunk.
        data: Vec<u8>,
        /// True on the last chunk.
        done: bool,
        /// Leader's round, echoed.
        seq: u64,
    },
    /// Answer to a snapshot chunk.
    SnapshotResp {
        /// Index of the snapshot being received.
        index: LogIndex,
        /// The next byte offset the follower expects (resume point).
        next_offset: u64,
        /// True once the whole snapshot is installed and durable.
        done: bool,
        /// Echo of the request's round.
        seq: u64,
    },
    /// Leadership transfer: start an election now, ignoring the leader lease.
    TimeoutNow,
}

impl MessageBody {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResp { .. } => "pre_vote_resp",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResp { .. } => "vote_resp",
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResp { .. } => "append_resp",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResp { .. } => "heartbeat_resp",
            MessageBody::Snapshot { .. } => "snapshot",
            MessageBody::SnapshotResp { .. } => "snapshot_resp",
            MessageBody::TimeoutNow => "timeout_now",
        }
    }
}

/// The role a node currently plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Probing whether it could win an election, without raising its term.
    PreCandidate,
    /// Campaigning in its current term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ConfChange {
    /// Add a new node as a learner (receives the log, does not vote).
    AddLearner(NodeId),
    /// Make `id` a voter (a learner being promoted, or a new node).
    AddVoter(NodeId),
    /// Turn a voter into a learner.
    DemoteVoter(NodeId),
    /// Remove a node entirely, whatever its role.
    RemoveNode(NodeId),
}
