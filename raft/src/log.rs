//! The in-memory view of the replicated log: entries after the last snapshot.

use crate::types::{Entry, LogIndex, Term};

/// Entries following the snapshot point `(snapshot_index, snapshot_term)`.
#[derive(Clone, Debug, Default)]
pub(crate) struct RaftLog {
    snapshot_index: LogIndex,
    snapshot_term: Term,
    entries: Vec<Entry>,
}

impl RaftLog {
    pub(crate) fn new(snapshot_index: LogIndex, snapshot_term: Term, entries: Vec<Entry>) -> Self {
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
        }
    }

    pub(crate) fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.snapshot_index + 1
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.snapshot_index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// The term at `index`, if it is known (the snapshot point or a retained entry).
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Entries from `lo` to `hi` inclusive, at most `max_count` and about `max_bytes` (always at
    /// least one entry if any is in range).
    pub(crate) fn slice(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_count: usize,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        if lo <= self.snapshot_index || lo > hi {
            return out;
        }
        let mut bytes = 0usize;
        let mut i = lo;
        while i <= hi && i <= self.last_index() && out.len() < max_count {
            let e = &self.entries[(i - self.snapshot_index - 1) as usize];
            bytes += e.size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        out
    }

    /// Appends `entries`, removing any existing entry at or after the first one's index.
    pub(crate) fn append_truncating(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        debug_assert!(first.index > self.snapshot_index && first.index <= self.last_index() + 1);
        let keep = (first.index - self.snapshot_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Makes room for `n` more entries.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
    }

    /// Appends one entry at the end.
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Drops entries up to `index` (which must be retained) and makes it the snapshot point.
    pub(crate) fn compact_to(&mut self, index: LogIndex, term: Term) {
        if index <= self.snapshot_index {
            return;
        }
        let drop = ((index - self.snapshot_index) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log by a snapshot point.
    pub(crate) fn reset(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Raft's up-to-date rule (§5.4.1): is a log ending at `(index, term)` at least as recent as ours?
    pub(crate) fn is_up_to_date(&self, index: LogIndex, term: Term) -> bool {
        term > self.last_term() || (term == self.last_term() && index >= self.last_index())
    }

    /// The largest index `<= index` whose term is `<= term` (fast conflict back-off). Terms grow
    /// along the log, so this is a binary search. Returns the snapshot index if nothing retained fits.
    pub(crate) fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let hi = index.min(self.last_index());
        if hi <= self.snapshot_index {
            return hi;
        }
        // entries[0..n] have indices snapshot_index+1 ..= hi
        let n = (hi - self.snapshot_index) as usize;
        let count = self.entries[..n].partition_point(|e| e.term <= term);
        self.snapshot_index + count as u64
    }

    /// All retained entries (for inspection by tests and simulations).
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }
}
