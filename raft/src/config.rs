//! Tunables of a Raft node, validated once at start.

use crate::error::ConfigError;
use crate::types::NodeId;

/// Upper bound of [`Config::snapshot_trailing`]: the trailing entries stay in memory, and a
/// larger window would let the log grow without bound between snapshots.
pub(crate) const MAX_SNAPSHOT_TRAILING: u64 = 1 << 24;

/// How the leader serves linearizable reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: confirm leadership with a quorum round before answering (safe under clock drift).
    Safe,
    /// Leader lease: answer without a round while a quorum acknowledged a round sent less than
    /// [`Config::lease_ticks`] ago. Requires check-quorum (followers then refuse to elect anyone
    /// else for an election timeout), and a host that honours the tick contract of
    /// [`RaftNode::tick`](crate::RaftNode::tick) with clocks within `max_clock_drift`.
    Lease,
}

/// Configuration of one Raft node. Times are counted in ticks; the caller decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Minimum election timeout in ticks; each timeout is drawn from `[election_tick, 2*election_tick)`.
    pub election_tick: u32,
    /// Heartbeat interval in ticks (must be below `election_tick`).
    pub heartbeat_tick: u32,
    /// Run a pre-vote round before raising the term (§9.6). On by default.
    pub pre_vote: bool,
    /// Send the pre-vote round a tenth of the minimum election timeout before the election
    /// timer fires (with `pre_vote`, and an `election_tick` of at least 10), so that the real
    /// election can start as soon as the timer fires instead of one round trip later. On by
    /// default; off gives the textbook timing.
    pub early_pre_vote: bool,
    /// A leader steps down if a quorum has not answered within an election timeout. On by default.
    pub check_quorum: bool,
    /// Maximum AppendEntries in flight per follower in the replicate state.
    pub max_inflight_msgs: usize,
    /// Maximum entries in one AppendEntries.
    pub max_entries_per_msg: usize,
    /// Maximum payload bytes in one AppendEntries (at least one entry is always sent).
    pub max_bytes_per_msg: usize,
    /// Maximum uncommitted entries at the leader before proposals are refused as busy.
    pub max_uncommitted_entries: usize,
    /// Maximum uncommitted payload bytes at the leader before proposals are refused as busy.
    pub max_uncommitted_bytes: usize,
    /// Ask the application for a snapshot once this many applied entries follow the last one.
    pub snapshot_threshold: u64,
    /// Entries kept in the log before the index of a snapshot the node takes, so that a follower
    /// lagging by less than this catches up from the log instead of needing a snapshot (and a
    /// follower that just finished a long snapshot transfer continues from the log). At most
    /// 2^24; 0 compacts the log right up to the snapshot.
    pub snapshot_trailing: u64,
    /// Size of one snapshot chunk in bytes.
    pub snapshot_chunk_size: usize,
    /// Snapshot chunks in flight per follower.
    pub max_inflight_snapshot_chunks: usize,
    /// How linearizable reads are served.
    pub read_mode: ReadMode,
    /// Bound on how far any node's tick interval, measured in real time, may be from the nominal
    /// one, as a ratio (0.1: every interval lies within ±10 %). The leader lease is shortened by
    /// it (see [`Config::lease_ticks`]); must lie in `[0, 1)`.
    pub max_clock_drift: f64,
    /// A node becomes a voter only if its log is at most this many entries behind the leader's:
    /// promoting a far-behind node would stall commits until it caught up.
    pub max_promotion_lag: u64,
    /// Seed of the node's private RNG (election timeout randomization).
    pub seed: u64,
}

impl Config {
    /// Defaults tuned for a LAN with a tick of about 50 ms: election timeout 10–20 ticks
    /// (0.5–1 s, sub-second failover), heartbeat every 2 ticks.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            pre_vote: true,
            early_pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 64,
            max_entries_per_msg: 256,
            max_bytes_per_msg: 1 << 20,
            max_uncommitted_entries: 10_000,
            max_uncommitted_bytes: 64 << 20,
            snapshot_threshold: 10_000,
            snapshot_trailing: 1_000,
            snapshot_chunk_size: 1 << 20,
            max_inflight_snapshot_chunks: 4,
            read_mode: ReadMode::Safe,
            max_clock_drift: 0.1,
            max_promotion_lag: 1_000,
            seed: id,
        }
    }

    /// Checks the settings are consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError("id must be non-zero".into()));
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError("heartbeat_tick must be at least 1".into()));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError(format!(
                "election_tick ({}) must be greater than heartbeat_tick ({})",
                self.election_tick, self.heartbeat_tick
            )));
        }
        if self.max_inflight_msgs == 0
            || self.max_entries_per_msg == 0
            || self.max_inflight_snapshot_chunks == 0
            || self.snapshot_chunk_size == 0
        {
            return Err(ConfigError(
                "max_inflight_msgs, max_entries_per_msg, max_inflight_snapshot_chunks and snapshot_chunk_size must be positive"
                    .into(),
            ));
        }
        if self.max_uncommitted_entries == 0 || self.max_uncommitted_bytes == 0 {
            return Err(ConfigError("uncommitted limits must be positive".into()));
        }
        if self.snapshot_trailing > MAX_SNAPSHOT_TRAILING {
            return Err(ConfigError(format!(
                "snapshot_trailing ({}) must be at most {MAX_SNAPSHOT_TRAILING}: the trailing entries stay in memory",
                self.snapshot_trailing
            )));
        }
        if !(0.0..1.0).contains(&self.max_clock_drift) {
            return Err(ConfigError(format!(
                "max_clock_drift ({}) must lie in [0, 1)",
                self.max_clock_drift
            )));
        }
        if self.read_mode == ReadMode::Lease && !self.check_quorum {
            return Err(ConfigError("lease-based reads require check_quorum".into()));
        }
        if self.read_mode == ReadMode::Lease && self.lease_ticks() == 0 {
            return Err(ConfigError(format!(
                "no leader lease is left with election_tick {} and max_clock_drift {}",
                self.election_tick, self.max_clock_drift
            )));
        }
        Ok(())
    }
}
