//! The durable-storage interface of the Raft core and an in-memory implementation that models
//! exactly what an fsync makes durable and what a crash loses.
//!
//! The core never calls storage itself: it emits [`WriteBatch`]es in order, the driver writes them
//! and, once they are durable, reports the batch sequence number back with
//! [`RaftNode::on_persisted`](crate::RaftNode::on_persisted).

use crate::types::{Entry, HardState, LogIndex, Membership, Snapshot, SnapshotMeta};
use std::sync::Arc;

/// One ordered unit of durable work. Applying a batch means, in this order: install `snapshot`
/// (dropping the entries it covers up to `compact_to`, or the whole log when `reset_log` is
/// set), then write `entries` (removing any existing entry at or after the first one's index),
/// then record `hard_state`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Position of this batch in the node's write order (starts at 1, consecutive).
    pub seq: u64,
    /// A snapshot to install (and compact the log to).
    pub snapshot: Option<Snapshot>,
    /// The snapshot replaces the whole log: the log did not contain the snapshot's last entry
    /// (a follower far behind, or with a conflicting suffix). Otherwise only the covered prefix
    /// is dropped and the entries after the snapshot are kept.
    pub reset_log: bool,
    /// With a `snapshot` that does not reset the log: drop entries only up to this index
    /// (inclusive) and keep the later ones, although the snapshot covers some of them (trailing
    /// entries, for followers that lag a little; see `Config::snapshot_trailing`). `None` drops
    /// every entry the snapshot covers; an index above the snapshot's counts as the snapshot's.
    /// Ignored without a snapshot or with `reset_log`.
    pub compact_to: Option<LogIndex>,
    /// Entries to write; the first one's index truncates any existing suffix.
    pub entries: Vec<Entry>,
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
}

impl WriteBatch {
    /// True if the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }

    /// etcd's MustSync rule, the one place it is decided: does this batch need an fsync before
    /// it may be reported durable? Entries, a snapshot, or a new term or vote (compared with
    /// `previous`, the hard state written before this batch) do. A batch whose only change is
    /// a commit index does not: losing it in a crash is harmless, the commit index is re-learned
    /// from the leader (and never exceeds the durable log on recovery).
    pub fn must_sync(&self, previous: HardState) -> bool {
        self.snapshot.is_some()
            || !self.entries.is_empty()
            || self
                .hard_state
                .is_some_and(|hs| hs.term != previous.term || hs.vote != previous.vote)
    }
}

/// Everything a node finds on disk when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredState {
    /// Last durable term, vote and commit.
    pub hard_state: HardState,
    /// Latest durable snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Durable entries, consecutive. Those after the snapshot, and possibly trailing entries
    /// before it: then they run through the snapshot's last entry.
    pub entries: Vec<Entry>,
}

impl RecoveredState {
    /// The state of a founding member of a new group: an empty snapshot at index 0 whose
    /// membership is `voters`. Nodes that join later start from `RecoveredState::default()`.
    pub fn bootstrap(voters: impl IntoIterator<Item = u64>) -> Self {
        RecoveredState {
            hard_state: HardState::default(),
            snapshot: Some(Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    membership: Membership::with_voters(voters),
                },
                data: Arc::new(Vec::new()),
            }),
            entries: Vec::new(),
        }
    }

    /// Applies one batch to this state, as a disk would once the batch is durable.
    pub fn apply(&mut self, batch: &WriteBatch) {
        if let Some(snap) = &batch.snapshot {
            if batch.reset_log {
                self.entries.clear();
            } else {
                let upto = batch
                    .compact_to
                    .map_or(snap.meta.index, |j| j.min(snap.meta.index));
                self.entries.retain(|e| e.index > upto);
            }
            self.snapshot = Some(snap.clone());
        }
        if let Some(first) = batch.entries.first() {
            let base = self.snapshot.as_ref().map_or(0, |s| s.meta.index);
            // The log may start before the snapshot (trailing entries): cut by position.
            let start = first.index.max(base + 1);
            let log_first = self.entries.first().map_or(base + 1, |e| e.index);
            let keep = start.saturating_sub(log_first) as usize;
            self.entries.truncate(keep);
            self.entries
                .extend(batch.entries.iter().filter(|e| e.index > base).cloned());
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
    }

    /// Index of the last durable entry (or of the snapshot).
    pub fn last_index(&self) -> LogIndex {
        let snap = self.snapshot.as_ref().map_or(0, |s| s.meta.index);
        self.entries.last().map_or(snap, |e| e.index.max(snap))
    }
}

/// Durable storage for one Raft node. Writes are buffered; `sync` makes every written batch
/// durable (one fsync covering many batches is group commit).
///
/// A storage may skip the fsync when no batch written since the last one needs it
/// ([`WriteBatch::must_sync`]): such batches only advance the commit index, and a crash that
/// loses them is harmless. `sync` still reports them durable.
pub trait Storage {
    /// The storage's error type.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Buffers a batch; it is not durable until a later `sync` returns.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), Self::Error>;
    /// Makes every written batch durable (see the commit-only exception above) and returns the
    /// highest durable batch sequence number.
    fn sync(&mut self) -> Result<u64, Self::Error>;
    /// Reads the durable state (what a restarted node starts from).
    fn recover(&self) -> Result<RecoveredState, Self::Error>;
}

/// In-memory storage that keeps written-but-not-synced batches apart from durable state, so a
/// simulated crash loses exactly what a real one could.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    durable: RecoveredState,
    durable_seq: u64,
    pending: Vec<WriteBatch>,
}

/// MemStorage never fails; this type has no values.
#[derive(Debug, thiserror::Error)]
#[error("memory storage cannot fail")]
pub enum Infallible {}

impl MemStorage {
    /// Storage whose durable content is `state`.
    pub fn new(state: RecoveredState) -> Self {
        MemStorage {
            durable: state,
            durable_seq: 0,
            pending: Vec::new(),
        }
    }

    /// Number of written batches not yet durable.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Simulates a crash: the first `survive` pending batches reached the disk anyway (a write
    /// may land without its fsync having returned), the rest are lost. Sequence numbers restart
    /// with the next incarnation of the node.
    pub fn crash(&mut self, survive: usize) {
        let survive = survive.min(self.pending.len());
        for batch in self.pending.drain(..).take(survive) {
            self.durable.apply(&batch);
        }
        self.durable_seq = 0;
    }

    /// The durable state, for inspection.
    pub fn durable(&self) -> &RecoveredState {
        &self.durable
    }
}

impl Storage for MemStorage {
    type Error = Infallible;

    fn write(&mut self, batch: &WriteBatch) -> Result<(), Infallible> {
        self.pending.push(batch.clone());
        Ok(())
    }

    fn sync(&mut self) -> Result<u64, Infallible> {
        for batch in self.pending.drain(..) {
            self.durable.apply(&batch);
            self.durable_seq = batch.seq;
        }
        Ok(self.durable_seq)
    }

    fn recover(&self) -> Result<RecoveredState, Infallible> {
        Ok(self.durable.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Payload;

    fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
        HardState { term, vote, commit }
    }

    fn with_hs(h: HardState) -> WriteBatch {
        WriteBatch {
            hard_state: Some(h),
            ..Default::default()
        }
    }

    #[test]
    fn commit_only_batches_need_no_fsync() {
        let prev = hs(4, Some(2), 10);
        assert!(
            !with_hs(hs(4, Some(2), 11)).must_sync(prev),
            "commit advance"
        );
        assert!(!with_hs(prev).must_sync(prev), "unchanged hard state");
        assert!(!WriteBatch::default().must_sync(prev), "empty batch");
        let no_vote = hs(4, None, 10);
        assert!(
            !with_hs(hs(4, None, 12)).must_sync(no_vote),
            "no vote, commit"
        );
    }

    #[test]
    fn term_vote_entries_and_snapshots_need_an_fsync() {
        let prev = hs(4, Some(2), 10);
        assert!(with_hs(hs(5, Some(2), 10)).must_sync(prev), "term");
        assert!(
            with_hs(hs(5, None, 11)).must_sync(prev),
            "term, vote cleared"
        );
        assert!(with_hs(hs(4, Some(3), 10)).must_sync(prev), "vote");
        assert!(with_hs(hs(4, None, 10)).must_sync(prev), "vote cleared");
        assert!(
            with_hs(hs(4, Some(1), 10)).must_sync(hs(4, None, 10)),
            "vote cast"
        );
        let entries = WriteBatch {
            entries: vec![Entry {
                term: 4,
                index: 11,
                payload: Payload::Noop,
            }],
            ..Default::default()
        };
        assert!(entries.must_sync(prev), "entries without a hard state");
        let entries_and_commit = WriteBatch {
            hard_state: Some(hs(4, Some(2), 11)),
            ..entries
        };
        assert!(entries_and_commit.must_sync(prev), "entries with a commit");
        let snapshot = WriteBatch {
            snapshot: RecoveredState::bootstrap([1]).snapshot,
            reset_log: true,
            ..Default::default()
        };
        assert!(snapshot.must_sync(prev), "snapshot");
    }
}
