//! `failover`: the Raft paper's Figure 16 method on simulated time. Five nodes, one-way network
//! delay about 7.5 ms (broadcast ≈ 15 ms), election timeout 150–300 ms (a tick is 1 ms). The
//! leader is crashed at a random point of its heartbeat interval; we measure the time until
//! another node becomes leader. Each trial is a fresh cluster with its own seed.

use shoal_raft::{Config, Effect, Message, NodeId, RaftNode, RecoveredState, Role};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Parameters of the failover scenario.
#[derive(Clone, Debug)]
pub struct FailoverParams {
    /// Number of voters.
    pub nodes: u64,
    /// Minimum election timeout in ms (timeouts are drawn from `[min, 2·min)`).
    pub election_ms: u32,
    /// Heartbeat interval in ms.
    pub heartbeat_ms: u32,
    /// Mean one-way network delay in µs.
    pub delay_us: u64,
    /// Uniform jitter added to the delay, ± this many µs.
    pub jitter_us: u64,
    /// Pre-vote on (shoal's default).
    pub pre_vote: bool,
}

impl Default for FailoverParams {
    fn default() -> Self {
        FailoverParams {
            nodes: 5,
            election_ms: 150,
            heartbeat_ms: 50,
            delay_us: 7_500,
            jitter_us: 500,
            pre_vote: true,
        }
    }
}

/// Summary over all trials, in milliseconds.
#[derive(Clone, Debug)]
pub struct FailoverResult {
    /// Trials run.
    pub trials: usize,
    /// Fastest failover.
    pub min_ms: f64,
    /// Median failover.
    pub median_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest failover.
    pub max_ms: f64,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Tick(usize),
    Deliver(u64),
}

struct World {
    nodes: Vec<Option<RaftNode>>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    messages: std::collections::BTreeMap<u64, Message>,
    seq: u64,
    rng: Rng,
    p: FailoverParams,
}

impl World {
    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, e)));
    }

    fn drain(&mut self, i: usize, now: u64) {
        loop {
            let Some(node) = self.nodes[i].as_mut() else {
                return;
            };
            let effects = node.take_effects();
            if effects.is_empty() {
                return;
            }
            for e in effects {
                match e {
                    Effect::Send(m) => {
                        let j = self.rng.below(2 * self.p.jitter_us + 1);
                        let at = now + self.p.delay_us - self.p.jitter_us + j;
                        self.seq += 1;
                        let id = self.seq;
                        self.messages.insert(id, m);
                        self.push(at, Event::Deliver(id));
                    }
                    Effect::Persist(b) => {
                        if let Some(n) = self.nodes[i].as_mut() {
                            n.on_persisted(b.seq);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn leader(&self) -> Option<(usize, u64)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
            .filter(|(_, n)| n.role() == Role::Leader)
            .map(|(i, n)| (i, n.term()))
            .max_by_key(|(_, t)| *t)
    }

    /// Runs events until `until` (µs) or until `stop` holds.
    fn run(&mut self, until: u64, mut stop: impl FnMut(&World) -> bool) -> Option<u64> {
        while let Some(Reverse((at, _, _))) = self.events.peek() {
            let at = *at;
            if at > until {
                return None;
            }
            let Reverse((now, _, e)) = self.events.pop().expect("peeked");
            match e {
                Event::Tick(i) => {
                    if let Some(n) = self.nodes[i].as_mut() {
                        n.tick();
                        self.drain(i, now);
                        self.push(now + 1_000, Event::Tick(i));
                    }
                }
                Event::Deliver(id) => {
                    let m = self.messages.remove(&id).expect("message stored");
                    let to = (m.to - 1) as usize;
                    if let Some(n) = self.nodes[to].as_mut() {
                        let _ = n.step(m);
                        self.drain(to, now);
                    }
                }
            }
            if stop(self) {
                return Some(now);
            }
        }
        None
    }
}

/// Runs one trial; returns the failover time in µs.
pub fn trial(p: &FailoverParams, seed: u64) -> u64 {
    let ids: Vec<NodeId> = (1..=p.nodes).collect();
    let mut rng = Rng(seed ^ 0xF00D);
    let nodes = ids
        .iter()
        .map(|&id| {
            let mut cfg = Config::new(id);
            cfg.election_tick = p.election_ms;
            cfg.heartbeat_tick = p.heartbeat_ms;
            cfg.pre_vote = p.pre_vote;
            cfg.seed = seed.wrapping_mul(1_000_003).wrapping_add(id);
            Some(RaftNode::new(cfg, RecoveredState::bootstrap(ids.iter().copied())).expect("node"))
        })
        .collect();
    let mut w = World {
        nodes,
        events: BinaryHeap::new(),
        messages: Default::default(),
        seq: 0,
        rng: Rng(seed),
        p: p.clone(),
    };
    for i in 0..ids.len() {
        let phase = rng.below(1_000);
        w.push(phase, Event::Tick(i));
    }
    // Let a leader emerge and settle.
    let warm = 3_000_000;
    w.run(warm, |_| false);
    let (old, old_term) = w.leader().expect("a leader after warm-up");
    // Crash it at a random point of its heartbeat interval.
    let crash_at = warm + rng.below(p.heartbeat_ms as u64 * 1_000);
    w.run(crash_at, |_| false);
    w.nodes[old] = None;
    let elected = w
        .run(crash_at + 60_000_000, |w| {
            w.leader().is_some_and(|(i, t)| i != old && t > old_term)
        })
        .expect("a new leader within a minute");
    elected - crash_at
}

/// Runs `trials` trials (seeds 0..trials) and summarizes.
pub fn run(p: &FailoverParams, trials: usize) -> FailoverResult {
    let mut times: Vec<f64> = (0..trials as u64)
        .map(|s| trial(p, s) as f64 / 1000.0)
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    FailoverResult {
        trials,
        min_ms: times[0],
        median_ms: crate::quantile(&times, 0.5).unwrap_or(f64::NAN),
        p99_ms: crate::quantile(&times, 0.99).unwrap_or(f64::NAN),
        max_ms: *times.last().expect("at least one trial"),
    }
}
