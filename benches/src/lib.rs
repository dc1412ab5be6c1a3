//! Benchmarks of shoal's Raft core: an in-process cluster whose network is direct calls, a durable
//! cluster on the real WAL with group commit, and a simulated-time failover measurement.

pub mod durable;
pub mod failover;
pub mod inproc;

use shoal_raft::{
    Config, Effect, Entry, LogIndex, Message, Payload, RaftNode, RecoveredState, WriteBatch,
};
use std::collections::VecDeque;

/// Three (or more) Raft nodes in one process whose network is a queue of direct calls.
pub struct LocalCluster {
    /// The nodes; node id `i + 1` is at position `i`.
    pub nodes: Vec<RaftNode>,
    queue: VecDeque<Message>,
    /// Entries applied on the leader during the last `pump`, by index (commands only).
    pub applied: Vec<LogIndex>,
}

impl LocalCluster {
    /// A group of `n` founding voters with `configure` applied to each node's config.
    pub fn new(n: u64, configure: impl Fn(&mut Config)) -> LocalCluster {
        let ids: Vec<u64> = (1..=n).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id);
                configure(&mut cfg);
                RaftNode::new(cfg, RecoveredState::bootstrap(ids.iter().copied()))
                    .expect("valid config")
            })
            .collect();
        LocalCluster {
            nodes,
            queue: VecDeque::new(),
            applied: Vec::new(),
        }
    }

    /// Ticks node 1 until it leads (the others are not ticked, so it wins).
    pub fn elect_first(&mut self) {
        for _ in 0..10_000 {
            if self.nodes[0].role() == shoal_raft::Role::Leader {
                return;
            }
            self.nodes[0].tick();
            self.pump_instant();
        }
        panic!("node 1 did not become leader");
    }

    /// Processes every node's effects with instant, infallible persistence and direct delivery,
    /// until nothing is left to do. Commands applied on node 1 are recorded in `applied`.
    pub fn pump_instant(&mut self) {
        let applied = &mut self.applied;
        pump(
            &mut self.nodes,
            &mut self.queue,
            |node, _, b| node.on_persisted(b.seq),
            |i, entries| {
                if i == 0 {
                    record_commands(applied, &entries);
                }
            },
        );
    }
}

/// Runs a group of in-process nodes until quiescent: messages are delivered by direct calls,
/// `persist` handles each node's write batches, `apply` its committed entries, and snapshots
/// are taken at once (the benchmarks' state machine is empty).
pub fn pump(
    nodes: &mut [RaftNode],
    queue: &mut VecDeque<Message>,
    mut persist: impl FnMut(&mut RaftNode, usize, WriteBatch),
    mut apply: impl FnMut(usize, Vec<Entry>),
) {
    loop {
        let mut idle = true;
        for (i, node) in nodes.iter_mut().enumerate() {
            let effects = node.take_effects();
            if effects.is_empty() {
                continue;
            }
            idle = false;
            for e in effects {
                match e {
                    Effect::Send(m) => queue.push_back(m),
                    Effect::Persist(b) => persist(node, i, b),
                    Effect::Apply(entries) => apply(i, entries),
                    Effect::SnapshotWanted { applied } => {
                        let _ = node.snapshot_taken(applied, Vec::new());
                    }
                    _ => {}
                }
            }
        }
        while let Some(m) = queue.pop_front() {
            idle = false;
            let to = (m.to - 1) as usize;
            let _ = nodes[to].step(m);
        }
        if idle {
            return;
        }
    }
}

fn record_commands(out: &mut Vec<LogIndex>, entries: &[Entry]) {
    out.extend(
        entries
            .iter()
            .filter(|e| matches!(e.payload, Payload::Command(_)))
            .map(|e| e.index),
    );
}

/// Median of a list of measurements (the list is sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The `p`-quantile (0..=1) of sorted values.
pub fn quantile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}
