//! Proposing the fewest task moves that restore spread (e.g. after nodes join).

use std::collections::BTreeMap;

use crate::scheduler::static_failure;
use crate::spec::{Mode, ServiceSpec};
use crate::types::Node;

/// Move one task of the service from node `from` to node `to` (indices into the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Move {
    /// The node that gives up a task.
    pub from: usize,
    /// The node that receives it.
    pub to: usize,
}

struct Candidate {
    node: usize,
    count: u32,
    total: u64,
    free_cpu: u64,
    free_memory: u64,
    ports_free: bool,
}

struct Level {
    count: u64,
    children: Vec<usize>,
    members: Vec<usize>,
}

struct Plan<'a> {
    spec: &'a ServiceSpec,
    cands: Vec<Candidate>,
    rank: Vec<usize>,
    levels: Vec<Level>,
    parents: Vec<Vec<usize>>,
    moves: Vec<Move>,
    max_moves: usize,
}

/// Proposes at most `max_moves` moves of tasks of `spec` between the eligible nodes of the
/// snapshot (current placement: `Node::tasks_by_service`) so that the service is spread again:
/// preference groups first (outermost first), then nodes within a group, until task counts
/// differ by at most one wherever a receiving node has room. Each move strictly narrows a gap,
/// so no move is wasted. Tasks on ineligible nodes are left alone. Deterministic. Global
/// services are never rebalanced.
pub fn rebalance(nodes: &[Node], spec: &ServiceSpec, max_moves: usize) -> Vec<Move> {
    if spec.mode() == Mode::Global || max_moves == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| nodes[a].id.cmp(&nodes[b].id).then(a.cmp(&b)));
    let mut plan = Plan {
        spec,
        cands: Vec::new(),
        rank: Vec::new(),
        levels: vec![Level {
            count: 0,
            children: Vec::new(),
            members: Vec::new(),
        }],
        parents: Vec::new(),
        moves: Vec::new(),
        max_moves,
    };
    let mut index: BTreeMap<(usize, Option<&str>), usize> = BTreeMap::new();
    for &i in &order {
        let node = &nodes[i];
        if static_failure(node, spec).is_some() {
            continue;
        }
        let count = node.tasks_by_service.get(spec.id()).copied().unwrap_or(0);
        let c = plan.cands.len();
        let ports_free = spec
            .host_ports()
            .iter()
            .all(|p| !node.used_ports.contains(p));
        plan.cands.push(Candidate {
            node: i,
            count,
            total: node.total_tasks(),
            free_cpu: node
                .total
                .millicores
                .saturating_sub(node.reserved.millicores),
            free_memory: node
                .total
                .memory_bytes
                .saturating_sub(node.reserved.memory_bytes),
            ports_free,
        });
        plan.rank.push(c);
        let mut path = vec![0usize];
        let mut g = 0usize;
        plan.levels[0].count += u64::from(count);
        for p in spec.preferences() {
            let value = node.labels.get(&p.label).map(String::as_str);
            g = match index.get(&(g, value)) {
                Some(&child) => child,
                None => {
                    let child = plan.levels.len();
                    plan.levels.push(Level {
                        count: 0,
                        children: Vec::new(),
                        members: Vec::new(),
                    });
                    plan.levels[g].children.push(child);
                    index.insert((g, value), child);
                    child
                }
            };
            plan.levels[g].count += u64::from(count);
            path.push(g);
        }
        plan.levels[g].members.push(c);
        plan.parents.push(path);
    }
    plan.balance(0);
    plan.moves
}

impl Plan<'_> {
    fn has_room(&self, c: usize) -> bool {
        let cand = &self.cands[c];
        let want = self.spec.reservation();
        self.spec
            .max_replicas_per_node()
            .is_none_or(|m| cand.count < m)
            && cand.free_cpu >= want.millicores
            && cand.free_memory >= want.memory_bytes
            && (self.spec.host_ports().is_empty() || (cand.count == 0 && cand.ports_free))
    }

    /// The busiest node of the subtree holding a task: most tasks of the service, then most
    /// tasks in total, then the last by id.
    fn source(&self, g: usize) -> Option<usize> {
        let level = &self.levels[g];
        if level.children.is_empty() {
            return level
                .members
                .iter()
                .copied()
                .filter(|&c| self.cands[c].count > 0)
                .max_by(|&a, &b| {
                    let (x, y) = (&self.cands[a], &self.cands[b]);
                    (x.count, x.total, self.rank[a]).cmp(&(y.count, y.total, self.rank[b]))
                });
        }
        let child = level
            .children
            .iter()
            .copied()
            .filter(|&ch| self.levels[ch].count > 0)
            .max_by_key(|&ch| self.levels[ch].count)?;
        self.source(child)
    }

    /// The emptiest node of the subtree with room: fewest tasks of the service, then fewest in
    /// total, then the first by id.
    fn target(&self, g: usize) -> Option<usize> {
        let level = &self.levels[g];
        if level.children.is_empty() {
            return level
                .members
                .iter()
                .copied()
                .filter(|&c| self.has_room(c))
                .min_by(|&a, &b| {
                    let (x, y) = (&self.cands[a], &self.cands[b]);
                    (x.count, x.total, self.rank[a]).cmp(&(y.count, y.total, self.rank[b]))
                });
        }
        let mut best: Option<(u64, usize)> = None;
        for &ch in &level.children {
            if best.is_some_and(|(n, _)| self.levels[ch].count >= n) {
                continue;
            }
            if let Some(c) = self.target(ch) {
                best = Some((self.levels[ch].count, c));
            }
        }
        best.map(|(_, c)| c)
    }

    fn apply(&mut self, from: usize, to: usize) {
        let want = self.spec.reservation();
        for (c, delta) in [(from, -1i64), (to, 1i64)] {
            let cand = &mut self.cands[c];
            if delta < 0 {
                cand.count -= 1;
                cand.total -= 1;
                cand.free_cpu += want.millicores;
                cand.free_memory += want.memory_bytes;
            } else {
                cand.count += 1;
                cand.total += 1;
                cand.free_cpu -= want.millicores;
                cand.free_memory -= want.memory_bytes;
            }
            for &g in &self.parents[c] {
                self.levels[g].count = self.levels[g].count.wrapping_add_signed(delta);
            }
        }
        self.moves.push(Move {
            from: self.cands[from].node,
            to: self.cands[to].node,
        });
    }

    fn balance(&mut self, g: usize) {
        loop {
            if self.moves.len() >= self.max_moves {
                return;
            }
            let children = self.levels[g].children.clone();
            let pair = if children.is_empty() {
                match (self.source(g), self.target(g)) {
                    (Some(s), Some(t)) if self.cands[s].count > self.cands[t].count + 1 => {
                        Some((s, t))
                    }
                    _ => None,
                }
            } else {
                let rich = children
                    .iter()
                    .copied()
                    .max_by_key(|&ch| self.levels[ch].count);
                let mut poor: Option<(u64, usize)> = None;
                for &ch in &children {
                    if poor.is_some_and(|(n, _)| self.levels[ch].count >= n) {
                        continue;
                    }
                    if let Some(t) = self.target(ch) {
                        poor = Some((self.levels[ch].count, t));
                    }
                }
                match (rich, poor) {
                    (Some(r), Some((n, t))) if self.levels[r].count > n + 1 => {
                        self.source(r).map(|s| (s, t))
                    }
                    _ => None,
                }
            };
            match pair {
                Some((s, t)) => self.apply(s, t),
                None => break,
            }
        }
        for ch in self.levels[g].children.clone() {
            self.balance(ch);
        }
    }
}
