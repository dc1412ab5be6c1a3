//! Snapshot catch-up of a slow follower cannot livelock (hardening issue #12, point 11).
//!
//! A small discrete-event simulation in logical time: three nodes, one-way delays counted in
//! ticks, one follower whose links are 20 times slower than the others, a leader writing
//! steadily and every node snapshotting its state machine every 1,000 applied entries. Nothing
//! here reads a clock or a random source, so every run is identical.

use std::collections::BTreeMap;

use shoal_raft::{
    Config, Effect, LogIndex, MemStorage, Message, MessageBody, NodeId, Payload, RaftNode,
    RecoveredState, Role, Storage,
};

/// One-way delay of a normal link, in ticks.
const FAST_DELAY: u64 = 1;
/// One-way delay to and from the slow follower: 20 times the normal one.
const SLOW_DELAY: u64 = 20 * FAST_DELAY;
/// Size of the state machine, hence of every snapshot, in bytes.
const STATE_BYTES: usize = 16 << 10;

/// A node of the simulation: its core, its disk and its state machine (a fixed-size array of
/// 8-byte slots; command `n` overwrites slot `n % slots`).
struct SimNode {
    raft: RaftNode,
    storage: MemStorage,
    state: Vec<u8>,
    /// Index of the last entry (or snapshot) reflected in `state`.
    state_index: LogIndex,
    /// The core asked for a snapshot; taken once the effects at hand are processed.
    snapshot_wanted: bool,
}

/// What happened to the slow follower during a run.
#[derive(Debug, Default)]
struct Outcome {
    /// Ticks after it became reachable again at which the slow follower's match index was first
    /// within `lag_bound` of the leader's commit index, if it was.
    caught_up_at: Option<u64>,
    /// Distinct snapshots the leader started sending to the slow follower (a transfer given up
    /// for a newer snapshot shows up as one more).
    transfers: u64,
    /// Largest offset reached by any chunk sent to the slow follower.
    max_offset: u64,
    /// Snapshots the slow follower installed.
    installed: u64,
    /// Commit index of the leader at the end.
    leader_commit: LogIndex,
    /// Match index of the slow follower at the end (as the leader sees it).
    slow_match: LogIndex,
}

struct Sim {
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    /// Messages in flight, keyed by (delivery tick, send order).
    net: BTreeMap<(u64, u64), Message>,
    sent: u64,
    slow: NodeId,
    /// Snapshot indexes the leader sent to the slow follower, in order of their first chunk.
    transfers: Vec<LogIndex>,
    max_offset: u64,
}

impl Sim {
    fn new(configure: impl Fn(&mut Config)) -> Sim {
        let ids = [1, 2, 3];
        let mut nodes = BTreeMap::new();
        for id in ids {
            let mut cfg = Config::new(id);
            cfg.election_tick = 50;
            cfg.heartbeat_tick = 5;
            cfg.snapshot_threshold = 1_000;
            cfg.snapshot_chunk_size = 512;
            configure(&mut cfg);
            let state = RecoveredState::bootstrap(ids);
            let raft = RaftNode::new(cfg, state.clone()).expect("node starts");
            nodes.insert(
                id,
                SimNode {
                    raft,
                    storage: MemStorage::new(state),
                    state: vec![0; STATE_BYTES],
                    state_index: 0,
                    snapshot_wanted: false,
                },
            );
        }
        let mut sim = Sim {
            now: 0,
            nodes,
            net: BTreeMap::new(),
            sent: 0,
            slow: 3,
            transfers: Vec::new(),
            max_offset: 0,
        };
        for id in ids {
            sim.process(id);
        }
        sim
    }

    fn delay(&self, from: NodeId, to: NodeId) -> u64 {
        if from == self.slow || to == self.slow {
            SLOW_DELAY
        } else {
            FAST_DELAY
        }
    }

    /// Carries out every effect of node `id` (and those they cause) until none is left.
    fn process(&mut self, id: NodeId) {
        loop {
            let effects = self.nodes.get_mut(&id).expect("node").raft.take_effects();
            if effects.is_empty() {
                let n = self.nodes.get_mut(&id).expect("node");
                if !n.snapshot_wanted {
                    return;
                }
                n.snapshot_wanted = false;
                let index = n.state_index;
                if index > n.raft.snapshot_index() {
                    n.raft
                        .snapshot_taken(index, n.state.clone())
                        .expect("snapshot of the applied state");
                }
                continue;
            }
            for e in effects {
                match e {
                    Effect::Send(m) => {
                        if let MessageBody::Snapshot {
                            meta, offset, data, ..
                        } = &m.body
                        {
                            if m.to == self.slow {
                                if !self.transfers.contains(&meta.index) {
                                    self.transfers.push(meta.index);
                                }
                                self.max_offset = self.max_offset.max(offset + data.len() as u64);
                            }
                        }
                        let at = self.now + self.delay(m.from, m.to);
                        self.sent += 1;
                        self.net.insert((at, self.sent), m);
                    }
                    Effect::Persist(b) => {
                        let n = self.nodes.get_mut(&id).expect("node");
                        let Ok(()) = n.storage.write(&b);
                        let Ok(seq) = n.storage.sync();
                        n.raft.on_persisted(seq);
                    }
                    Effect::Apply(entries) => {
                        let n = self.nodes.get_mut(&id).expect("node");
                        for e in entries {
                            if let Payload::Command(d) = &e.payload {
                                let k = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
                                let slot = (k as usize % (STATE_BYTES / 8)) * 8;
                                n.state[slot..slot + 8].copy_from_slice(&d[..8]);
                            }
                            n.state_index = e.index;
                        }
                    }
                    Effect::InstallSnapshot(s) => {
                        let n = self.nodes.get_mut(&id).expect("node");
                        n.state = s.data.to_vec();
                        n.state_index = s.meta.index;
                    }
                    Effect::SnapshotWanted { .. } => {
                        self.nodes.get_mut(&id).expect("node").snapshot_wanted = true;
                    }
                    Effect::ReadReady { .. } | Effect::ReadFailed { .. } => {}
                }
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.role() == Role::Leader)
            .max_by_key(|(_, n)| n.raft.term())
            .map(|(&id, _)| id)
    }

    /// One tick: deliver what is due, tick every node, and have the leader propose `writes`
    /// commands.
    fn step(&mut self, writes: u64, next_cmd: &mut u64) {
        self.now += 1;
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let m = entry.remove();
            let to = m.to;
            // Hostile or stale input is the core's business; the simulation only delivers.
            let _ = self.nodes.get_mut(&to).expect("node").raft.step(m);
            self.process(to);
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.nodes.get_mut(&id).expect("node").raft.tick();
            self.process(id);
        }
        if let Some(l) = self.leader() {
            let batch: Vec<Vec<u8>> = (0..writes)
                .map(|i| (*next_cmd + i).to_le_bytes().to_vec())
                .collect();
            if self
                .nodes
                .get_mut(&l)
                .expect("leader")
                .raft
                .propose_batch(batch)
                .is_ok()
            {
                *next_cmd += writes;
            }
            self.process(l);
        }
    }
}

/// Runs the scenario: a leader is elected with every link normal; then the links of a follower
/// become 20 times slower and that follower is cut off for `cut_ticks` while the others keep
/// writing `writes` commands a tick, so that it falls behind the compaction point. From then on
/// it is reachable again (slowly) and the leader keeps writing; the run records when its match
/// index comes within `lag_bound` of the leader's commit index, for at most `max_ticks` ticks.
fn run(
    configure: impl Fn(&mut Config),
    writes: u64,
    cut_ticks: u64,
    lag_bound: u64,
    max_ticks: u64,
) -> Outcome {
    let mut sim = Sim::new(configure);
    let mut next_cmd = 0;
    // Elect a leader over normal links (slow = none yet).
    sim.slow = 0;
    for _ in 0..1_000 {
        sim.step(0, &mut next_cmd);
        if sim.leader().is_some() {
            break;
        }
    }
    let leader = sim.leader().expect("a leader within 1,000 ticks");
    sim.slow = *sim
        .nodes
        .keys()
        .find(|&&id| id != leader)
        .expect("a follower");
    let slow = sim.slow;
    // Cut the slow follower off: its messages vanish while the others write.
    for _ in 0..cut_ticks {
        sim.net.retain(|_, m| m.to != slow && m.from != slow);
        sim.step(writes, &mut next_cmd);
    }
    sim.net.retain(|_, m| m.to != slow && m.from != slow);
    sim.transfers.clear();
    sim.max_offset = 0;
    let mut out = Outcome::default();
    for t in 1..=max_ticks {
        sim.step(writes, &mut next_cmd);
        let l = sim.leader().expect("the leader stays");
        assert_eq!(l, leader, "leadership never moves in this scenario");
        let lr = &sim.nodes[&l].raft;
        let (m, _) = lr.progress(slow).expect("progress of the slow follower");
        if m + lag_bound >= lr.commit_index() && out.caught_up_at.is_none() {
            out.caught_up_at = Some(t);
            break;
        }
    }
    let lr = &sim.nodes[&leader].raft;
    out.leader_commit = lr.commit_index();
    out.slow_match = lr.progress(slow).map_or(0, |p| p.0);
    out.transfers = sim.transfers.len() as u64;
    out.max_offset = sim.max_offset;
    out.installed = sim.nodes[&slow].raft.stats().snapshots_installed;
    out
}

/// Asserts the slow follower caught up within `bound` ticks of being reachable again, and that
/// every snapshot transfer the leader started to it was completed (none given up for a newer
/// snapshot, none still going).
fn assert_caught_up(out: &Outcome, bound: u64) {
    let Some(at) = out.caught_up_at else {
        panic!(
            "the slow follower never caught up within {bound} ticks (lag {} entries): {out:?}",
            out.leader_commit - out.slow_match
        );
    };
    assert!(at <= bound, "{out:?}");
    assert!(out.transfers >= 1, "it needed a snapshot: {out:?}");
    assert_eq!(
        out.installed, out.transfers,
        "every transfer started was finished: {out:?}"
    );
}

/// Writes a tick: with 1,000 entries between snapshots, one every 200 ticks. A transfer of the
/// 16 KiB snapshot in 512-byte chunks, 4 in flight, over the slow follower's 40-tick round trip
/// takes about 320 ticks, longer than that: restarting the transfer for every newer snapshot
/// never finishes one.
const WRITES: u64 = 5;
/// Within four slow one-way delays' worth of writes of the commit index: replicating normally.
const LAG_BOUND: u64 = 4 * SLOW_DELAY * WRITES;
/// Ticks the slow follower gets to catch up once reachable again.
const BOUND: u64 = 5_000;

/// Default settings: the slow follower, 1,500 entries behind (past the 1,000 trailing entries),
/// gets a snapshot, then another if the log moved past it meanwhile, and catches up.
#[test]
fn a_slow_follower_catches_up_under_steady_writes_with_frequent_snapshots() {
    let out = run(|_| {}, WRITES, 300, LAG_BOUND, BOUND);
    eprintln!("slow follower, default settings: {out:?}");
    assert_caught_up(&out, BOUND);
}

/// With a trailing window that covers what is written during one transfer, the slow follower,
/// 5,000 entries behind, needs exactly one snapshot: it is finished although five newer ones are
/// taken meanwhile, and the follower continues from the trailing log.
#[test]
fn a_slow_follower_needs_one_snapshot_when_the_trailing_log_covers_the_transfer() {
    let out = run(
        |cfg| cfg.snapshot_trailing = 3_000,
        WRITES,
        1_000,
        LAG_BOUND,
        BOUND,
    );
    eprintln!("slow follower, 3,000 trailing entries: {out:?}");
    assert_caught_up(&out, BOUND);
    assert_eq!(out.transfers, 1, "{out:?}");
}
