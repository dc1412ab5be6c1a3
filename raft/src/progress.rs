//! The leader's view of each follower: how far it has replicated and how to send to it.

use crate::types::{LogIndex, Snapshot};
use std::collections::VecDeque;

/// How the leader currently talks to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Unknown position: one AppendEntries at a time until one is accepted.
    Probe,
    /// Healthy: several AppendEntries pipelined, bounded by the in-flight window.
    Replicate,
    /// Behind the compaction point: streaming `snapshot` in chunks. It is the snapshot the
    /// transfer started with, kept (the data is shared) until the follower has it even if a
    /// newer one is taken meanwhile: restarting would never finish on a slow link.
    Snapshot {
        snapshot: Snapshot,
        /// Next byte offset to send.
        sent: u64,
        /// Offset the follower has confirmed.
        acked: u64,
        /// The final chunk has been sent (and not rewound since).
        done_sent: bool,
        /// No progress since the last heartbeat: retransmit from `acked` at the next one.
        stalled: bool,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) match_index: LogIndex,
    pub(crate) next_index: LogIndex,
    pub(crate) state: ProgressState,
    /// In probe state: a probe is outstanding, wait for its answer or the next heartbeat.
    pub(crate) probe_sent: bool,
    /// Last index of each AppendEntries in flight (replicate state).
    pub(crate) inflight: VecDeque<LogIndex>,
    /// Answered since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// Highest leader round this follower has echoed.
    pub(crate) acked_seq: u64,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            acked_seq: 0,
        }
    }

    /// The snapshot being sent to this follower, if any.
    pub(crate) fn sending(&self) -> Option<&Snapshot> {
        match &self.state {
            ProgressState::Snapshot { snapshot, .. } => Some(snapshot),
            _ => None,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.next_index.max(self.match_index + 1);
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }

    /// Records an acknowledgement up to `index`; returns true if the match index moved.
    pub(crate) fn ack(&mut self, index: LogIndex) -> bool {
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        if index > self.match_index {
            self.match_index = index;
            self.next_index = self.next_index.max(index + 1);
            true
        } else {
            false
        }
    }
}
