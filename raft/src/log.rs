//! The in-memory view of the replicated log: the entries after the compaction point. The
//! compaction point is at or before the latest snapshot's index: a node keeps some entries the
//! snapshot covers (`Config::snapshot_trailing`) for followers that lag a little.

use crate::types::{Entry, LogIndex, Term};

/// Entries following the compaction point `(base_index, base_term)`: everything up to it was
/// dropped, only its term is known.
#[derive(Clone, Debug, Default)]
pub(crate) struct RaftLog {
    base_index: LogIndex,
    base_term: Term,
    entries: Vec<Entry>,
}

impl RaftLog {
    pub(crate) fn new(base_index: LogIndex, base_term: Term, entries: Vec<Entry>) -> Self {
        RaftLog {
            base_index,
            base_term,
            entries,
        }
    }

    /// The log a node starts with, from the durable snapshot point and the durable entries.
    /// Entries at or before the snapshot's index (trailing entries) are kept when they run
    /// through the snapshot's last entry; the first of them becomes the compaction point, as
    /// its term is known. Otherwise only the entries after the snapshot are kept. Gaps and
    /// terms going backwards are errors.
    pub(crate) fn recover(
        snapshot_index: LogIndex,
        snapshot_term: Term,
        entries: Vec<Entry>,
    ) -> Result<Self, String> {
        let first = entries.first().map_or(snapshot_index + 1, |e| e.index);
        let trailing = first <= snapshot_index
            && entries
                .get((snapshot_index - first) as usize)
                .is_some_and(|e| e.index == snapshot_index && e.term == snapshot_term);
        let log = if trailing {
            let mut entries = entries.into_iter();
            let base = entries.next().expect("first <= snapshot_index");
            RaftLog::new(base.index, base.term, entries.collect())
        } else {
            let after = entries
                .into_iter()
                .filter(|e| e.index > snapshot_index)
                .collect();
            RaftLog::new(snapshot_index, snapshot_term, after)
        };
        let mut prev_term = log.base_term;
        for (expect, e) in (log.base_index + 1..).zip(log.entries.iter()) {
            if e.index != expect {
                return Err(format!(
                    "log gap: expected index {expect}, found {}",
                    e.index
                ));
            }
            if e.term < prev_term {
                return Err(format!("term goes backwards at index {}", e.index));
            }
            prev_term = e.term;
        }
        Ok(log)
    }

    /// The compaction point: entries up to it are gone.
    pub(crate) fn base_index(&self) -> LogIndex {
        self.base_index
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.base_index + 1
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.base_index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.base_term, |e| e.term)
    }

    /// The term at `index`, if it is known (the compaction point or a retained entry).
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize)
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
        if lo <= self.base_index || lo > hi {
            return out;
        }
        let mut bytes = 0usize;
        let mut i = lo;
        while i <= hi && i <= self.last_index() && out.len() < max_count {
            let e = &self.entries[(i - self.base_index - 1) as usize];
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
        debug_assert!(first.index > self.base_index && first.index <= self.last_index() + 1);
        let keep = (first.index - self.base_index - 1) as usize;
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

    /// Drops entries up to `index` (which must be retained) and makes it the compaction point.
    pub(crate) fn compact_to(&mut self, index: LogIndex, term: Term) {
        if index <= self.base_index {
            return;
        }
        let drop = ((index - self.base_index) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.base_index = index;
        self.base_term = term;
    }

    /// Replaces the whole log by a compaction point (a snapshot the log does not reach).
    pub(crate) fn reset(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.base_index = index;
        self.base_term = term;
    }

    /// Raft's up-to-date rule (§5.4.1): is a log ending at `(index, term)` at least as recent as ours?
    pub(crate) fn is_up_to_date(&self, index: LogIndex, term: Term) -> bool {
        term > self.last_term() || (term == self.last_term() && index >= self.last_index())
    }

    /// The largest index `<= index` whose term is `<= term` (fast conflict back-off). Terms grow
    /// along the log, so this is a binary search. Returns the compaction point if nothing
    /// retained fits.
    pub(crate) fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let hi = index.min(self.last_index());
        if hi <= self.base_index {
            return hi;
        }
        // entries[0..n] have indices base_index+1 ..= hi
        let n = (hi - self.base_index) as usize;
        let count = self.entries[..n].partition_point(|e| e.term <= term);
        self.base_index + count as u64
    }

    /// All retained entries.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The retained entries after `index`.
    pub(crate) fn entries_after(&self, index: LogIndex) -> &[Entry] {
        let skip = index.saturating_sub(self.base_index) as usize;
        &self.entries[skip.min(self.entries.len())..]
    }
}
