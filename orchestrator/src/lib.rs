//! `shoal-orchestrator`: turns services into tasks, a pure core the leader runs.
//!
//! [`reconcile`] reads the replicated state and the time and returns a [`Plan`]: the task
//! changes to propose through Raft (in batches) and when to look again. It keeps replicated
//! services at their replica count (slots), global services on every eligible node, applies the
//! restart policy, replaces tasks whose node is down, drained, removed or no longer fits, rolls a
//! changed spec out one slot at a time, reaps old tasks, and places tasks through
//! `shoal-scheduler` (pending tasks keep the scheduler's explanation and are retried on every
//! pass, so they start as soon as capacity frees).
//!
//! Because a plan is a function of the state alone (no memory between passes), a new leader
//! resumes exactly where the old one stopped: its first pass is a full reconcile.
//!
//! No I/O, no threads, no clock: time comes in as `now_ms`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod placement;
mod reconcile;

use shoal_cluster::TaskChange;

pub use placement::scheduler_node;
pub use reconcile::reconcile;

/// What the orchestrator may decide on its own.
#[derive(Clone, Debug)]
pub struct Config {
    /// A task on a node that has been down this long is marked orphaned (Swarm: 24 h).
    pub orphan_after_ms: u64,
    /// Most changes in one plan; the rest waits for the next pass (`Plan::more`).
    pub max_changes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            orphan_after_ms: 24 * 3600 * 1000,
            max_changes: 200_000,
        }
    }
}

/// The outcome of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Task changes, in the order they must be applied (a task is shut down before its
    /// replacement is created). Propose them in batches of at most `shoal_cluster::MAX_BATCH`.
    pub changes: Vec<TaskChange>,
    /// The earliest time a pass is due even if the state does not change (restart delays,
    /// orphan timeouts).
    pub wake_at_ms: Option<u64>,
    /// The plan was cut at `Config::max_changes`: run again once it is applied.
    pub more: bool,
}

impl Plan {
    /// The changes cut into entries of at most `max` changes each.
    pub fn batches(&self, max: usize) -> impl Iterator<Item = &[TaskChange]> {
        self.changes.chunks(max.max(1))
    }
}
