//! Placement against a shared node snapshot whose reservations are claimed atomically.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::ScheduleError;
use crate::filter::{Explanation, Filter};
use crate::spec::{Mode, ServiceRequest, ServiceSpec};
use crate::types::{Availability, Node, NodeState, Resources};

/// Words of a 65,536-bit host port bitmap.
const PORT_WORDS: usize = 65_536 / 64;

/// Mutable, shared per-node state: everything a placement claims.
struct Slot {
    cpu: AtomicU64,
    memory: AtomicU64,
    tasks: AtomicU32,
    /// Host ports in use, allocated the first time a service with host ports looks at the node.
    ports: OnceLock<Box<[AtomicU64]>>,
}

/// What is currently claimed on one node (snapshot reservations plus placements so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeUsage {
    /// CPU and memory reserved.
    pub reserved: Resources,
    /// Tasks on the node, over all services.
    pub tasks: u32,
}

/// Tasks of a service that could not be placed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// How many tasks stay pending.
    pub tasks: u32,
    /// Nodes counted per failing filter.
    pub explanation: Explanation,
}

/// The outcome of placing one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The service id.
    pub service: String,
    /// New tasks per node, as (index into the snapshot, task count), sorted by index.
    pub assignments: Vec<(usize, u32)>,
    /// Tasks left pending, if any.
    pub pending: Option<Pending>,
}

impl Placement {
    /// Total number of tasks assigned.
    pub fn assigned(&self) -> u32 {
        self.assignments.iter().map(|&(_, n)| n).sum()
    }
}

/// The scheduler: a node snapshot plus atomically claimed reservations. Share it by reference
/// between threads; every placement method takes `&self`.
pub struct Scheduler {
    nodes: Vec<Node>,
    slots: Vec<Slot>,
    /// Position of each node when sorted by id: the final spread tie-break.
    rank: Vec<u32>,
}

/// One candidate node in a leaf group's min-heap: (tasks of this service, total tasks, id rank,
/// index into the service's eligible list).
type Candidate = Reverse<(u32, u32, u32, u32)>;

/// A node of the preference tree. Leaves hold a heap of candidate nodes.
struct Group {
    key: Option<String>,
    /// Tasks of the service in this subtree (existing plus placed).
    count: u64,
    full: bool,
    parent: usize,
    children: Vec<usize>,
    heap: BinaryHeap<Candidate>,
}

impl Scheduler {
    /// Builds a scheduler over a node snapshot. Node indices in results refer to this order.
    pub fn new(nodes: Vec<Node>) -> Self {
        let slots = nodes
            .iter()
            .map(|n| Slot {
                cpu: AtomicU64::new(n.reserved.millicores),
                memory: AtomicU64::new(n.reserved.memory_bytes),
                tasks: AtomicU32::new(u32::try_from(n.total_tasks()).unwrap_or(u32::MAX)),
                ports: OnceLock::new(),
            })
            .collect();
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by(|&a, &b| nodes[a].id.cmp(&nodes[b].id).then(a.cmp(&b)));
        let mut rank = vec![0u32; nodes.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r as u32;
        }
        Scheduler { nodes, slots, rank }
    }

    /// The node snapshot.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// What is claimed on node `index` right now.
    pub fn usage(&self, index: usize) -> NodeUsage {
        let s = &self.slots[index];
        NodeUsage {
            reserved: Resources::new(
                s.cpu.load(Ordering::Acquire),
                s.memory.load(Ordering::Acquire),
            ),
            tasks: s.tasks.load(Ordering::Acquire),
        }
    }

    /// Places a batch of services on `threads` scoped worker threads (1 or 0: the calling
    /// thread). Results come back in request order. A service may appear only once per batch.
    pub fn schedule_batch(
        &self,
        requests: &[ServiceRequest],
        threads: usize,
    ) -> Result<Vec<Placement>, ScheduleError> {
        let mut seen = BTreeSet::new();
        for r in requests {
            if !seen.insert(r.spec.id()) {
                return Err(ScheduleError::DuplicateService(r.spec.id().to_string()));
            }
        }
        if threads <= 1 || requests.len() <= 1 {
            return Ok(requests.iter().map(|r| self.schedule(r)).collect());
        }
        let next = AtomicUsize::new(0);
        let mut out: Vec<Option<Placement>> = vec![None; requests.len()];
        let parts: Vec<Vec<(usize, Placement)>> = crossbeam::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads.min(requests.len()))
                .map(|_| {
                    scope.spawn(|_| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(req) = requests.get(i) else { break };
                            done.push((i, self.schedule(req)));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
        for (i, p) in parts.into_iter().flatten() {
            out[i] = Some(p);
        }
        Ok(out
            .into_iter()
            .map(|p| p.expect("every request is placed exactly once"))
            .collect())
    }

    /// Places one task of `spec` on node `index` if every filter passes there, claiming its
    /// reservation (global services place per node). The error is the first filter that failed.
    pub fn claim_on(&self, index: usize, spec: &ServiceSpec) -> Result<(), Filter> {
        let node = &self.nodes[index];
        if let Some(f) = static_failure_ordered(node, spec, true) {
            return Err(f);
        }
        let svc = node.tasks_by_service.get(spec.id()).copied().unwrap_or(0);
        self.claim(index, spec, svc)
    }

    /// Places the tasks of one service. Safe to call from several threads at once for
    /// different services; do not place the same service from two threads at once.
    pub fn schedule(&self, request: &ServiceRequest) -> Placement {
        let spec = &request.spec;
        // Static filters, evaluated once per service: availability, constraints, platform.
        let mut eligible: Vec<u32> = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if static_failure(node, spec).is_none() {
                eligible.push(i as u32);
            }
        }
        let existing: Vec<u32> = eligible
            .iter()
            .map(|&i| {
                self.nodes[i as usize]
                    .tasks_by_service
                    .get(spec.id())
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        let mut placed = vec![0u32; eligible.len()];
        let mut pending_tasks = 0u32;
        let mut global_why = Explanation::default();
        global_why.set_runtime(spec.runtime().unwrap_or(""));
        match spec.mode() {
            Mode::Global => {
                for (k, &i) in eligible.iter().enumerate() {
                    if existing[k] > 0 {
                        continue;
                    }
                    match self.claim(i as usize, spec, 0) {
                        Ok(()) => placed[k] = 1,
                        Err(filter) => {
                            pending_tasks += 1;
                            global_why.add(filter);
                        }
                    }
                }
            }
            Mode::Replicated => {
                let done = self.spread(spec, &eligible, &existing, &mut placed, request.tasks);
                pending_tasks = request.tasks - done;
            }
        }
        let assignments: Vec<(usize, u32)> = eligible
            .iter()
            .zip(&placed)
            .filter(|(_, &n)| n > 0)
            .map(|(&i, &n)| (i as usize, n))
            .collect();
        let pending = (pending_tasks > 0).then(|| Pending {
            tasks: pending_tasks,
            // A pending global task belongs to one node: explain by that node's failure only.
            explanation: match spec.mode() {
                Mode::Global => global_why,
                Mode::Replicated => self.explain(spec, &eligible, &existing, &placed),
            },
        });
        Placement {
            service: spec.id().to_string(),
            assignments,
            pending,
        }
    }

    /// Spreads `tasks` replicas over the eligible nodes through the preference tree; returns
    /// how many were placed.
    fn spread(
        &self,
        spec: &ServiceSpec,
        eligible: &[u32],
        existing: &[u32],
        placed: &mut [u32],
        tasks: u32,
    ) -> u32 {
        let prefs = spec.preferences();
        let mut groups = vec![Group {
            key: None,
            count: 0,
            full: false,
            parent: 0,
            children: Vec::new(),
            heap: BinaryHeap::new(),
        }];
        let mut index: BTreeMap<(usize, Option<&str>), usize> = BTreeMap::new();
        let mut leaf_items: Vec<Vec<Candidate>> = vec![Vec::new()];
        for (k, &i) in eligible.iter().enumerate() {
            let node = &self.nodes[i as usize];
            let mut g = 0usize;
            groups[0].count += u64::from(existing[k]);
            for p in prefs {
                let value = node.labels.get(&p.label).map(String::as_str);
                g = match index.get(&(g, value)) {
                    Some(&c) => c,
                    None => {
                        let c = groups.len();
                        groups.push(Group {
                            key: value.map(str::to_string),
                            count: 0,
                            full: false,
                            parent: g,
                            children: Vec::new(),
                            heap: BinaryHeap::new(),
                        });
                        leaf_items.push(Vec::new());
                        groups[g].children.push(c);
                        index.insert((g, value), c);
                        c
                    }
                };
                groups[g].count += u64::from(existing[k]);
            }
            let total = self.slots[i as usize].tasks.load(Ordering::Relaxed);
            leaf_items[g].push(Reverse((
                existing[k],
                total,
                self.rank[i as usize],
                k as u32,
            )));
        }
        for (g, items) in leaf_items.into_iter().enumerate() {
            groups[g].heap = BinaryHeap::from(items);
        }
        // Deterministic child order: by label value, nodes without the label last.
        for g in 0..groups.len() {
            let mut children = std::mem::take(&mut groups[g].children);
            children.sort_by(|&a, &b| match (&groups[a].key, &groups[b].key) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            groups[g].children = children;
        }
        if eligible.is_empty() {
            return 0;
        }
        let mut done = 0;
        while done < tasks && !groups[0].full {
            // Descend to the emptiest leaf that still has room.
            let mut g = 0usize;
            while !groups[g].children.is_empty() {
                let mut best: Option<usize> = None;
                for &c in &groups[g].children {
                    if groups[c].full {
                        continue;
                    }
                    if best.is_none_or(|b| groups[c].count < groups[b].count) {
                        best = Some(c);
                    }
                }
                match best {
                    Some(c) => g = c,
                    None => break,
                }
            }
            let Some(Reverse((svc, _total, rank, k))) = groups[g].heap.pop() else {
                mark_full(&mut groups, g);
                continue;
            };
            let node = eligible[k as usize] as usize;
            if self.claim(node, spec, svc).is_err() {
                // Claims only grow while placing, so this node stays unusable for the service.
                continue;
            }
            placed[k as usize] += 1;
            done += 1;
            let total = self.slots[node].tasks.load(Ordering::Relaxed);
            groups[g].heap.push(Reverse((svc + 1, total, rank, k)));
            let mut a = g;
            loop {
                groups[a].count += 1;
                if a == 0 {
                    break;
                }
                a = groups[a].parent;
            }
        }
        done
    }

    /// Claims one task of `spec` on node `i`, which runs `svc` tasks of the service so far.
    /// Either every claim succeeds or none is left behind.
    fn claim(&self, i: usize, spec: &ServiceSpec, svc: u32) -> Result<(), Filter> {
        let slot = &self.slots[i];
        let total = self.nodes[i].total;
        let want = spec.reservation();
        if let Some(max) = spec.max_replicas_per_node() {
            if svc >= max {
                return Err(Filter::MaxReplicas);
            }
        }
        if !reserve(&slot.cpu, want.millicores, total.millicores) {
            return Err(Filter::Resources);
        }
        if !reserve(&slot.memory, want.memory_bytes, total.memory_bytes) {
            release(&slot.cpu, want.millicores);
            return Err(Filter::Resources);
        }
        if !spec.host_ports().is_empty() {
            let bitmap = self.ports(i);
            for (n, &p) in spec.host_ports().iter().enumerate() {
                let (w, bit) = (usize::from(p) / 64, 1u64 << (p % 64));
                if bitmap[w].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
                    for &q in &spec.host_ports()[..n] {
                        bitmap[usize::from(q) / 64]
                            .fetch_and(!(1u64 << (q % 64)), Ordering::AcqRel);
                    }
                    release(&slot.cpu, want.millicores);
                    release(&slot.memory, want.memory_bytes);
                    return Err(Filter::HostPort);
                }
            }
        }
        slot.tasks.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn ports(&self, i: usize) -> &[AtomicU64] {
        self.slots[i].ports.get_or_init(|| {
            let words: Box<[AtomicU64]> = (0..PORT_WORDS).map(|_| AtomicU64::new(0)).collect();
            for &p in &self.nodes[i].used_ports {
                words[usize::from(p) / 64].fetch_or(1u64 << (p % 64), Ordering::Relaxed);
            }
            words
        })
    }

    /// True when host port `p` is taken on node `i`, without allocating the node's bitmap.
    fn port_in_use(&self, i: usize, p: u16) -> bool {
        match self.slots[i].ports.get() {
            Some(bitmap) => {
                bitmap[usize::from(p) / 64].load(Ordering::Acquire) & (1u64 << (p % 64)) != 0
            }
            None => self.nodes[i].used_ports.contains(&p),
        }
    }

    /// Counts every node under the first filter it fails now (replicated services).
    fn explain(
        &self,
        spec: &ServiceSpec,
        eligible: &[u32],
        existing: &[u32],
        placed: &[u32],
    ) -> Explanation {
        let mut why = Explanation::default();
        why.set_runtime(spec.runtime().unwrap_or(""));
        let mut k = 0usize;
        for (i, node) in self.nodes.iter().enumerate() {
            let svc = if eligible.get(k) == Some(&(i as u32)) {
                k += 1;
                Some(existing[k - 1] + placed[k - 1])
            } else {
                None
            };
            if let Some(f) = static_failure_ordered(node, spec, self.has_room(i, spec)) {
                why.add(f);
                continue;
            }
            if spec.host_ports().iter().any(|&p| self.port_in_use(i, p)) {
                why.add(Filter::HostPort);
                continue;
            }
            match (spec.max_replicas_per_node(), svc) {
                (Some(max), Some(n)) if n >= max => why.add(Filter::MaxReplicas),
                // Passes every filter now: it lost a race for resources to another thread.
                _ => why.add(Filter::Resources),
            }
        }
        why
    }

    fn has_room(&self, i: usize, spec: &ServiceSpec) -> bool {
        let want = spec.reservation();
        let total = self.nodes[i].total;
        let slot = &self.slots[i];
        fits(
            slot.cpu.load(Ordering::Acquire),
            want.millicores,
            total.millicores,
        ) && fits(
            slot.memory.load(Ordering::Acquire),
            want.memory_bytes,
            total.memory_bytes,
        )
    }
}

fn fits(current: u64, want: u64, total: u64) -> bool {
    want == 0 || current.checked_add(want).is_some_and(|v| v <= total)
}

/// Adds `want` to `cell` unless that would exceed `total` (compare-and-swap loop).
fn reserve(cell: &AtomicU64, want: u64, total: u64) -> bool {
    want == 0
        || cell
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(want).filter(|&v| v <= total)
            })
            .is_ok()
}

fn release(cell: &AtomicU64, amount: u64) {
    if amount > 0 {
        cell.fetch_sub(amount, Ordering::AcqRel);
    }
}

fn mark_full(groups: &mut [Group], mut g: usize) {
    groups[g].full = true;
    while g != 0 {
        g = groups[g].parent;
        if groups[g].children.iter().all(|&c| groups[c].full) {
            groups[g].full = true;
        } else {
            break;
        }
    }
}

/// The filters that do not depend on claims: availability, constraints, platform.
pub(crate) fn static_failure(node: &Node, spec: &ServiceSpec) -> Option<Filter> {
    static_failure_ordered(node, spec, true)
}

/// The first failing filter among availability, resources (given `room`), constraints and
/// platform, in the documented order.
fn static_failure_ordered(node: &Node, spec: &ServiceSpec, room: bool) -> Option<Filter> {
    if node.state != NodeState::Ready || node.availability != Availability::Active {
        Some(Filter::Availability)
    } else if !spec.runtime_matches(node) {
        Some(Filter::Runtime)
    } else if !room {
        Some(Filter::Resources)
    } else if !spec.constraints_match(node) {
        Some(Filter::Constraints)
    } else if !spec.platform_matches(node) {
        Some(Filter::Platform)
    } else {
        None
    }
}
