//! Randomized simulation of a Raft group built from the pure core.
//!
//! One seed draws a cluster (3–7 voters), fault rates and a schedule, then runs on simulated
//! milliseconds: client puts (some as batches), gets and compare-and-sets against a replicated
//! key-value store; message loss, duplication, delay and reordering; symmetric and one-way
//! partitions (some lasting up to 30 s); crashes that lose everything not yet fsynced; failed
//! fsyncs and full disks (the node stops, and restarts once it can); clocks out of phase and off
//! rate by up to the configured drift bound; paused processes (no input, no ticks, then the
//! missed ticks first, as the core's host contract says); membership changes (including removing
//! the leader; removed nodes keep running with their old configuration, except after healing
//! in configurations with neither pre-vote nor check-quorum); leadership transfers; snapshots
//! taken asynchronously and streamed in chunks. Half the lease seeds run the lease trap instead
//! (see `Trap`): rounds built to make a stale lease read possible, which the linearizability
//! check catches if the lease's safeguards are taken away. Invariants are checked every tick
//! interval; the client history is checked for linearizability at the end (an inconclusive
//! check fails the seed); after the faults heal the group must elect a leader and complete new
//! writes (liveness).

use crate::linearizability::{self, CheckResult, OpKind, Operation};
use crate::rng::Rng;
use crate::sim_storage::{SimStorage, StorageError, StorageKind};
use shoal_raft::{
    ConfChange, Config, Effect, Entry, LogIndex, Message, NodeId, Payload, ProposeError, RaftNode,
    ReadMode, RecoveredState, Role, Term,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Nominal milliseconds per Raft tick (each node's real interval is off by its drift).
const TICK_MS: u64 = 10;
/// Nanoseconds per millisecond: node clocks and history timestamps are in nanoseconds.
const NS_PER_MS: u64 = 1_000_000;
/// Keys clients touch (small, so operations contend).
const KEYS: u64 = 3;

/// Options of one simulation run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed; everything is derived from it.
    pub seed: u64,
    /// Length of the faulty phase in simulated milliseconds.
    pub fault_ms: u64,
    /// Time allowed after healing for the group to recover and finish new writes.
    pub recovery_ms: u64,
    /// Print a trace of notable events to stderr.
    pub verbose: bool,
    /// Storage the nodes use.
    pub storage: StorageKind,
}

impl SimOptions {
    /// Defaults for a seed.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            fault_ms: 8_000,
            recovery_ms: 10_000,
            verbose: false,
            storage: StorageKind::Mem,
        }
    }
}

/// What one seed produced.
#[derive(Debug)]
pub struct SimOutcome {
    /// The seed.
    pub seed: u64,
    /// `None` if every check passed, else what failed.
    pub failure: Option<String>,
    /// The client history (for `--history`).
    pub history: Vec<Operation>,
    /// Whether the linearizability search ran out of budget (neither proven nor refuted).
    pub inconclusive: bool,
    /// Counters for the summary.
    pub stats: SimStats,
}

/// Counters of one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimStats {
    /// Client operations recorded.
    pub ops: u64,
    /// Writes acknowledged.
    pub acked_writes: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Membership changes accepted.
    pub conf_changes: u64,
    /// Snapshots handed to the core.
    pub snapshots: u64,
    /// Snapshots installed from a leader.
    pub snapshot_installs: u64,
    /// Leaders elected.
    pub leaders: u64,
    /// Process pauses injected.
    pub pauses: u64,
    /// Nodes stopped by a failed fsync or a full disk.
    pub disk_faults: u64,
    /// Leadership transfers accepted.
    pub transfers: u64,
}

struct Fault {
    loss: f64,
    dup: f64,
    max_delay: u64,
    crash_per_s: f64,
    partition_per_s: f64,
    conf_per_s: f64,
    /// Probability that a newly elected leader is crashed shortly after its election.
    churn: f64,
    /// Maximum fsync latency in milliseconds (slow disks widen the unsynced window).
    max_sync_ms: u64,
    /// Probability that a message suffers a long delay spike.
    spike: f64,
    /// Longest partition in milliseconds.
    partition_max_ms: u64,
    /// Process pauses per second, and the longest in milliseconds.
    pause_per_s: f64,
    max_pause_ms: u64,
    /// Failed fsyncs per second (over the whole group) and disks filling up per second.
    fsync_fail_per_s: f64,
    disk_full_per_s: f64,
    /// Leadership transfers per second.
    transfer_per_s: f64,
    /// Probability that a put is proposed as a batch of several puts.
    batch: f64,
}

#[derive(Default)]
struct Kv {
    map: BTreeMap<u64, u64>,
}

/// A client command as stored in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Command {
    op_id: u64,
    kind: OpKind,
    key: u64,
    value: u64,
    expected: Option<u64>,
}

impl Command {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(42);
        v.extend_from_slice(&self.op_id.to_le_bytes());
        v.push(match self.kind {
            OpKind::Put => 0,
            OpKind::Get => 1,
            OpKind::Cas => 2,
        });
        v.extend_from_slice(&self.key.to_le_bytes());
        v.extend_from_slice(&self.value.to_le_bytes());
        match self.expected {
            Some(e) => {
                v.push(1);
                v.extend_from_slice(&e.to_le_bytes());
            }
            None => v.push(0),
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Command> {
        let u = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        let kind = match *b.get(8)? {
            0 => OpKind::Put,
            1 => OpKind::Get,
            _ => OpKind::Cas,
        };
        let expected = if *b.get(25)? == 1 { Some(u(26)?) } else { None };
        Some(Command {
            op_id: u(0)?,
            kind,
            key: u(9)?,
            value: u(17)?,
            expected,
        })
    }
}

impl Kv {
    /// Applies a command; returns (ok, observed value) as the client sees it.
    fn apply(&mut self, c: &Command) -> (bool, Option<u64>) {
        match c.kind {
            OpKind::Put => {
                self.map.insert(c.key, c.value);
                (true, None)
            }
            OpKind::Get => (true, self.map.get(&c.key).copied()),
            OpKind::Cas => {
                let cur = self.map.get(&c.key).copied();
                if cur == c.expected {
                    self.map.insert(c.key, c.value);
                    (true, None)
                } else {
                    (false, cur)
                }
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in &self.map {
            v.extend_from_slice(&k.to_le_bytes());
            v.extend_from_slice(&val.to_le_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Kv {
        let mut map = BTreeMap::new();
        for c in b.chunks_exact(16) {
            let k = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let v = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            map.insert(k, v);
        }
        Kv { map }
    }
}

struct SimNode {
    raft: Option<RaftNode>,
    storage: SimStorage,
    cfg: Config,
    incarnation: u64,
    kv: Kv,
    sm_applied: LogIndex,
    sync_at: Option<u64>,
    snapshot_job: Option<(u64, LogIndex, Vec<u8>)>,
    restart_at: Option<u64>,
    /// Reads confirmed by the core, waiting for the state machine: ctx -> read index.
    ready_reads: BTreeMap<u64, LogIndex>,
    /// Real length of this node's tick interval in nanoseconds (nominal, off by the drift).
    tick_ns: u64,
    /// When the node's next tick is due (simulated nanoseconds).
    next_tick_ns: u64,
    /// The process is paused until then (ms): it takes no input and no ticks meanwhile.
    paused_until: Option<u64>,
    /// Messages and client requests that arrived during a pause, in arrival order.
    inbox: Vec<Input>,
    /// The disk is full until then (ms).
    full_until: Option<u64>,
    /// Shut down for good after its removal (see `Sim::retire_removed`).
    retired: bool,
}

/// A client request not yet handed to a node: a get of `key` when `cmds` is empty, else
/// these commands (one, or a batch).
struct Request {
    key: u64,
    cmds: Vec<Command>,
}

/// Input waiting for a paused node.
enum Input {
    Msg(Message),
    /// Client `c`'s request number `id` (see `Waiting::Queued`).
    Client {
        c: usize,
        id: u64,
    },
}

enum Waiting {
    /// Sent to a paused node; handed over when it resumes.
    Queued {
        node: NodeId,
        id: u64,
        req: Request,
    },
    /// Commands proposed together: `cmds[i]` is at `first + i`; those before `next` are done.
    Write {
        node: NodeId,
        first: LogIndex,
        term: Term,
        cmds: Vec<Command>,
        next: usize,
    },
    Read {
        node: NodeId,
        ctx: u64,
        key: u64,
    },
}

struct Client {
    id: u64,
    next_at: u64,
    leader_hint: Option<NodeId>,
    waiting: Option<(Waiting, u64, u64)>, // (what, start_ms, deadline_ms)
    final_write_done: bool,
}

struct InFlight {
    at: u64,
    seq: u64,
    msg: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// How a lease-trap round tries to make the old leader serve a stale read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TrapVariant {
    /// First cut a minority off the leader while clients only read (so its logs stay current):
    /// its timers run out, and the rest, inside the leader's lease, refuse its candidates. Then
    /// cut the leader off: a minority candidate wins as soon as the rest's vote refusal ends.
    Cut,
    /// As `Cut`, and at the cut enough members of the leader's lease quorum restart for the
    /// minority to reach a quorum with them: they must keep refusing votes after the restart.
    Restart,
    /// Cut the leader off and pause it: on resume it must count its missed ticks before
    /// handling the reads queued meanwhile.
    Pause,
}

/// One round of the lease trap (see [`Trap`]).
struct TrapRound {
    leader: NodeId,
    variant: TrapVariant,
    /// When the leader is cut off from every other node (and, for `Restart`, voters restart).
    cut_at: u64,
    /// When the round's partition ends.
    heal_at: u64,
    /// Whether the leader has been cut off yet.
    cut: bool,
    /// The minority cut off from the leader before `cut_at` (not for `Pause`).
    early: BTreeSet<NodeId>,
}

/// The lease trap, drawn for a share of the lease seeds: repeated rounds that give a stale lease
/// read every chance to happen. Drift sits at the bound with the leader slow and the others
/// fast; the leader is cut off from the other voters but not from clients; half the clients
/// (the even ones) keep reading from it while the others work with whoever leads the rest.
struct Trap {
    rng: Rng,
    next_round: u64,
    round: Option<TrapRound>,
}

/// The simulated world.
struct Sim {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    net: BinaryHeap<Reverse<InFlight>>,
    net_seq: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    partition_until: u64,
    fault: Fault,
    /// Crashes scheduled by the leader-churn nemesis: (time, node).
    crash_at: Vec<(u64, NodeId)>,
    /// End of the faulty phase (ms): the configured one, longer for long partitions.
    fault_end: u64,
    /// The clock drift bound (a ratio) and how node rates use it: 0 nominal, 1 within the
    /// bound, 2 at the bound (each node as fast or as slow as allowed).
    drift: f64,
    drift_mode: u64,
    healed: bool,
    /// The lease trap, on a share of the lease seeds.
    trap: Option<Trap>,
    /// Neither pre-vote nor check-quorum: nothing stops a removed node that missed its removal
    /// from disrupting the group (see `retire_removed`).
    no_defense: bool,
    /// Members of the latest configuration known committed, and its index.
    committed_members: Option<(LogIndex, BTreeSet<NodeId>)>,
    clients: Vec<Client>,
    next_op_id: u64,
    next_ctx: u64,
    next_node_id: NodeId,
    history: Vec<Operation>,
    // global truth for invariant checks
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) -> (payload fingerprint, term of the previous entry)
    seen_entries: BTreeMap<(LogIndex, Term), (u64, Term)>,
    /// index -> (entry term, fingerprint, lowest term of a node that saw it committed)
    committed: BTreeMap<LogIndex, (Term, u64, Term)>,
    applied: BTreeMap<LogIndex, u64>,
    acked_writes: Vec<(LogIndex, Term)>,
    stats: SimStats,
    failure: Option<String>,
}

fn fingerprint(e: &Entry) -> u64 {
    // FNV-1a over a canonical rendering of the payload.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    };
    match &e.payload {
        Payload::Noop => feed(b"noop"),
        Payload::Command(d) => {
            feed(b"cmd");
            feed(d);
        }
        Payload::Config(m) => {
            feed(b"cfg");
            for set in [&m.voters, &m.outgoing, &m.learners] {
                for id in set {
                    feed(&id.to_le_bytes());
                }
                feed(b"|");
            }
        }
    }
    h
}

impl Sim {
    fn new(opts: SimOptions) -> Sim {
        let mut rng = Rng::new(opts.seed);
        let n = 3 + rng.below(5);
        let fault = Fault {
            loss: [0.0, 0.01, 0.05, 0.1, 0.2][rng.below(5) as usize],
            dup: [0.0, 0.01, 0.05][rng.below(3) as usize],
            max_delay: [1, 5, 15, 40][rng.below(4) as usize],
            crash_per_s: [0.0, 0.3, 1.0, 2.0][rng.below(4) as usize],
            partition_per_s: [0.0, 0.3, 1.0][rng.below(3) as usize],
            conf_per_s: [0.0, 0.5, 2.0][rng.below(3) as usize],
            churn: [0.0, 0.0, 0.2, 0.5][rng.below(4) as usize],
            max_sync_ms: [1, 6, 30, 100][rng.below(4) as usize],
            spike: [0.0, 0.02, 0.1][rng.below(3) as usize],
            partition_max_ms: [
                2_000, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000, 10_000, 30_000,
            ][rng.below(10) as usize],
            pause_per_s: [0.0, 0.2, 1.0][rng.below(3) as usize],
            // Up to several election timeouts (an election timeout is 10–20 nominal ticks).
            max_pause_ms: [150, 600][rng.below(2) as usize],
            fsync_fail_per_s: [0.0, 0.0, 0.2, 1.0][rng.below(4) as usize],
            disk_full_per_s: [0.0, 0.0, 0.1, 0.5][rng.below(4) as usize],
            transfer_per_s: [0.0, 0.3, 1.0][rng.below(3) as usize],
            batch: [0.0, 0.1, 0.3][rng.below(3) as usize],
        };
        // Clock faults: the bound the nodes are configured with, and whether the nodes' tick
        // rates stay nominal, spread within the bound, or sit at it (the lease's worst case).
        let drift = [0.05, 0.1, 0.2][rng.below(3) as usize];
        let drift_mode = rng.below(3);
        // A long partition needs a faulty phase that outlasts it.
        let fault_end = opts.fault_ms.max(fault.partition_max_ms + 2_000);
        let pre_vote = rng.chance(0.85);
        let check_quorum = rng.chance(0.85);
        let lease = check_quorum && rng.chance(0.3);
        let snapshot_threshold = [10, 30, 100, 1000][rng.below(4) as usize];
        let chunk = [16, 64, 512][rng.below(3) as usize];
        let inflight = [1, 4, 64][rng.below(3) as usize];
        let per_msg = [1, 1, 8, 256][rng.below(4) as usize];
        // Draws added later come from their own generator, so that adding them left the rest
        // of every seed's schedule as it was.
        let mut trap_rng = Rng::new(opts.seed ^ 0x1EA5_E7A1_0000_0001);
        // Entries kept behind a snapshot: none (a lagging follower gets the snapshot) up to the
        // core's default (it catches up from the log). A narrow pipe (one entry per message,
        // one message in flight) keeps few, or a follower far behind catches up at one entry
        // per round trip, slower than the clients write.
        let mut trailing = [0, 10, 100, 1_000][trap_rng.below(4) as usize];
        if per_msg * inflight < 8 {
            trailing = trailing.min(100);
        }
        let trap = lease && trap_rng.chance(0.5);
        let (mut fault, mut drift, mut drift_mode, mut fault_end) =
            (fault, drift, drift_mode, fault_end);
        if trap {
            // Only what the trap needs: short delays, little loss, no other partitions, crashes,
            // pauses, disk faults, membership changes or transfers (the rounds make their own).
            fault.loss = fault.loss.min(0.01);
            fault.max_delay = fault.max_delay.min(5);
            fault.spike = 0.0;
            fault.crash_per_s = 0.0;
            fault.churn = 0.0;
            fault.partition_per_s = 0.0;
            fault.partition_max_ms = 2_000;
            fault.conf_per_s = 0.0;
            fault.pause_per_s = 0.0;
            fault.fsync_fail_per_s = 0.0;
            fault.disk_full_per_s = 0.0;
            fault.transfer_per_s = 0.0;
            drift = [0.1, 0.2, 0.2][trap_rng.below(3) as usize];
            drift_mode = 2;
            fault_end = opts.fault_ms;
        }
        let trap = trap.then(|| Trap {
            next_round: 500 + trap_rng.below(500),
            rng: trap_rng,
            round: None,
        });
        let mut base = Config::new(1);
        base.election_tick = 10;
        base.heartbeat_tick = 2;
        base.pre_vote = pre_vote;
        base.check_quorum = check_quorum;
        base.read_mode = if lease {
            ReadMode::Lease
        } else {
            ReadMode::Safe
        };
        base.snapshot_threshold = snapshot_threshold;
        base.snapshot_trailing = trailing;
        base.snapshot_chunk_size = chunk;
        base.max_inflight_snapshot_chunks = 2;
        base.max_inflight_msgs = inflight;
        base.max_entries_per_msg = per_msg;
        base.max_uncommitted_entries = 200;
        base.max_promotion_lag = 20;
        base.max_clock_drift = drift;
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let mut cfg = base.clone();
            cfg.id = id;
            cfg.seed = opts.seed.wrapping_mul(31).wrapping_add(id);
            let storage =
                SimStorage::new(opts.storage, RecoveredState::bootstrap(ids.iter().copied()))
                    .expect("storage for a founding node");
            nodes.insert(id, SimNode::new(cfg, storage));
        }
        let nclients = 2 + rng.below(6);
        let clients = (0..nclients)
            .map(|i| Client {
                id: i,
                next_at: rng.below(20),
                leader_hint: None,
                waiting: None,
                final_write_done: false,
            })
            .collect();
        let mut sim = Sim {
            opts,
            rng,
            now: 0,
            nodes,
            net: BinaryHeap::new(),
            net_seq: 0,
            blocked: BTreeSet::new(),
            partition_until: 0,
            fault,
            crash_at: Vec::new(),
            fault_end,
            drift,
            drift_mode,
            healed: false,
            trap,
            no_defense: !pre_vote && !check_quorum,
            committed_members: None,
            clients,
            next_op_id: 1,
            next_ctx: 1,
            next_node_id: 100,
            history: Vec::new(),
            leaders: BTreeMap::new(),
            seen_entries: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            acked_writes: Vec::new(),
            stats: SimStats::default(),
            failure: None,
        };
        let ids: Vec<NodeId> = sim.nodes.keys().copied().collect();
        sim.log(|| {
            format!(
                "{} nodes, {} clients, loss {} dup {} delay<={}ms crash/s {} partition/s {} (<={}ms) conf/s {} churn {} sync<={}ms pause/s {} (<={}ms) fsync-fail/s {} disk-full/s {} transfer/s {} batch {} drift {} mode {}; pre_vote {pre_vote} check_quorum {check_quorum} lease {lease} snapshot every {snapshot_threshold} trailing {trailing} chunk {chunk} inflight {inflight} per_msg {per_msg}",
                ids.len(), sim.clients.len(), sim.fault.loss, sim.fault.dup, sim.fault.max_delay,
                sim.fault.crash_per_s, sim.fault.partition_per_s, sim.fault.partition_max_ms,
                sim.fault.conf_per_s, sim.fault.churn, sim.fault.max_sync_ms,
                sim.fault.pause_per_s, sim.fault.max_pause_ms, sim.fault.fsync_fail_per_s,
                sim.fault.disk_full_per_s, sim.fault.transfer_per_s, sim.fault.batch,
                sim.drift, sim.drift_mode
            ) + if sim.trap.is_some() { "; lease trap" } else { "" }
        });
        for id in ids {
            sim.nodes.get_mut(&id).expect("exists").tick_ns = sim.draw_tick_ns();
            sim.start_node(id);
        }
        sim
    }

    /// A node's real tick interval: nominal, or off by up to the drift bound, or at it.
    fn draw_tick_ns(&mut self) -> u64 {
        let f = match self.drift_mode {
            0 => 0.0,
            1 => (self.rng.below(2_001) as f64 / 1_000.0 - 1.0) * self.drift,
            _ if self.rng.chance(0.5) => self.drift,
            _ => -self.drift,
        };
        ((TICK_MS * NS_PER_MS) as f64 * (1.0 + f)).round() as u64
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.opts.verbose {
            eprintln!("[{:>6}ms] {}", self.now, what());
        }
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.log(|| format!("FAILURE: {why}"));
            self.failure = Some(why);
        }
    }

    fn start_node(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.incarnation += 1;
        let mut cfg = n.cfg.clone();
        cfg.seed = cfg.seed.wrapping_add(n.incarnation.wrapping_mul(7919));
        let state = match n.storage.recover() {
            Ok(s) => s,
            Err(e) => {
                self.fail(format!("node {id} cannot recover its storage: {e}"));
                return;
            }
        };
        match RaftNode::new(cfg, state) {
            Ok(r) => {
                n.raft = Some(r);
                n.kv = Kv::default();
                n.sm_applied = 0;
                n.restart_at = None;
                // The new process's ticker starts at an arbitrary phase.
                let phase = self.rng.below(n.tick_ns);
                n.next_tick_ns = self.now * NS_PER_MS + phase;
                self.drain(id);
            }
            Err(e) => self.fail(format!("node {id} failed to restart: {e}")),
        }
    }

    fn crash(&mut self, id: NodeId) {
        let survive = {
            let n = &self.nodes[&id];
            self.rng.below(n.storage.unsynced() + 1)
        };
        let span = if self.rng.chance(0.5) { 60 } else { 500 };
        let restart_in = 10 + self.rng.below(span);
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.raft.is_none() {
            return;
        }
        n.raft = None;
        if let Err(e) = n.storage.crash(survive) {
            self.fail(format!("node {id} crash: {e}"));
            return;
        }
        n.sync_at = None;
        n.snapshot_job = None;
        n.ready_reads.clear();
        n.paused_until = None;
        n.inbox.clear();
        // A node stopped by a full disk comes back once there is space again.
        let after = n.full_until.map_or(0, |t| t + 1);
        n.restart_at = Some((self.now + restart_in).max(after));
        self.stats.crashes += 1;
        self.log(|| format!("crash {id} (kept {survive} unsynced units)"));
        // Clients waiting on this node no longer know the outcome.
        let now = self.now;
        for c in 0..self.clients.len() {
            let on_node = match &self.clients[c].waiting {
                Some((Waiting::Write { node, .. }, ..))
                | Some((Waiting::Read { node, .. }, ..))
                | Some((Waiting::Queued { node, .. }, ..)) => *node == id,
                None => false,
            };
            if on_node {
                self.give_up(c, now);
            }
        }
    }

    /// The client stops waiting: a write's outcome becomes unknown, a read is dropped.
    fn give_up(&mut self, c: usize, now: u64) {
        let Some((w, start, _)) = self.clients[c].waiting.take() else {
            return;
        };
        let unknown = match w {
            Waiting::Write { cmds, next, .. } => cmds[next..].to_vec(),
            Waiting::Queued { req, .. } => req.cmds,
            Waiting::Read { .. } => Vec::new(),
        };
        {
            for cmd in &unknown {
                self.history.push(Operation {
                    client: self.clients[c].id,
                    op: cmd.kind,
                    key: cmd.key,
                    value: Some(cmd.value),
                    expected: cmd.expected,
                    start_ns: start * NS_PER_MS,
                    end_ns: u64::MAX,
                    ok: None,
                    result: None,
                });
            }
        }
        // Like a real client after a timeout, often try someone else next time.
        if self.rng.chance(0.5) {
            self.clients[c].leader_hint = None;
        }
        self.clients[c].next_at = now + 1 + self.rng.below(10);
    }

    fn send(&mut self, m: Message) {
        if !self.healed {
            if self.rng.chance(self.fault.loss) {
                return;
            }
            if self.rng.chance(self.fault.dup) {
                let d = 1 + self.rng.below(self.fault.max_delay * 2 + 1);
                self.push_msg(m.clone(), d);
            }
        }
        let mut d = 1 + self.rng.below(self.fault.max_delay);
        if !self.healed && self.rng.chance(self.fault.spike) {
            // A delay spike (retransmission, GC pause): this message arrives very late.
            d += 20 + self.rng.below(300);
        }
        self.push_msg(m, d);
    }

    fn push_msg(&mut self, msg: Message, delay: u64) {
        self.net_seq += 1;
        self.net.push(Reverse(InFlight {
            at: self.now + delay,
            seq: self.net_seq,
            msg,
        }));
    }

    /// Processes a node's effects until it has none.
    fn drain(&mut self, id: NodeId) {
        loop {
            let (effects, incarnation) = match self.nodes.get_mut(&id) {
                Some(SimNode {
                    raft: Some(r),
                    incarnation,
                    ..
                }) => (r.take_effects(), *incarnation),
                _ => return,
            };
            if effects.is_empty() {
                return;
            }
            for e in effects {
                // A node stopped by a storage fault does nothing after the failed write.
                let n = &self.nodes[&id];
                if n.raft.is_none() || n.incarnation != incarnation {
                    return;
                }
                self.handle_effect(id, e);
            }
        }
    }

    /// A storage fault stops the node: an injected one is a crash (unsynced writes may be
    /// lost), anything else is a bug.
    fn storage_failed(&mut self, id: NodeId, what: &str, e: StorageError) {
        match e {
            StorageError::Fault(f) => {
                self.stats.disk_faults += 1;
                self.log(|| format!("node {id} {what}: {f}; it stops"));
                self.crash(id);
            }
            StorageError::Broken(e) => self.fail(format!("node {id} storage {what}: {e}")),
        }
    }

    fn handle_effect(&mut self, id: NodeId, e: Effect) {
        match e {
            Effect::Send(m) => self.send(m),
            Effect::Persist(b) => {
                let lat = self.rng.below(self.fault.max_sync_ms);
                let n = self.nodes.get_mut(&id).expect("node exists");
                if let Err(e) = n.storage.write(&b) {
                    self.storage_failed(id, "write", e);
                    return;
                }
                if n.sync_at.is_none() {
                    n.sync_at = Some(self.now + lat);
                }
            }
            Effect::Apply(entries) => {
                for e in entries {
                    self.apply_entry(id, e);
                }
            }
            Effect::InstallSnapshot(s) => {
                let n = self.nodes.get_mut(&id).expect("node exists");
                n.kv = Kv::decode(&s.data);
                n.sm_applied = s.meta.index;
                self.log(|| format!("node {id} installs snapshot at {}", s.meta.index));
                self.config_committed(s.meta.index, s.meta.membership.members());
            }
            Effect::SnapshotWanted { .. } => {
                let delay = self.rng.below(60);
                let n = self.nodes.get_mut(&id).expect("node exists");
                if n.snapshot_job.is_none() {
                    n.snapshot_job = Some((self.now + delay, n.sm_applied, n.kv.encode()));
                }
            }
            Effect::ReadReady { ctx, index } => {
                let n = self.nodes.get_mut(&id).expect("node exists");
                n.ready_reads.insert(ctx, index);
            }
            Effect::ReadFailed { ctx, .. } => {
                for c in 0..self.clients.len() {
                    let hit = matches!(&self.clients[c].waiting,
                        Some((Waiting::Read { node, ctx: x, .. }, ..)) if *node == id && *x == ctx);
                    if hit {
                        self.clients[c].waiting = None;
                        self.clients[c].next_at = self.now + 1;
                    }
                }
            }
        }
    }

    fn apply_entry(&mut self, id: NodeId, e: Entry) {
        let fp = fingerprint(&e);
        match self.applied.get(&e.index) {
            Some(&f) if f != fp => {
                self.fail(format!(
                    "state machine safety: node {id} applied a different entry at index {}",
                    e.index
                ));
                return;
            }
            None => {
                self.applied.insert(e.index, fp);
            }
            _ => {}
        }
        let n = self.nodes.get_mut(&id).expect("node exists");
        if e.index != n.sm_applied + 1 {
            let expected = n.sm_applied + 1;
            self.fail(format!(
                "node {id} applied index {} but expected {expected}",
                e.index
            ));
            return;
        }
        n.sm_applied = e.index;
        let data = match &e.payload {
            Payload::Command(data) => data,
            Payload::Config(m) => {
                self.config_committed(e.index, m.members());
                return;
            }
            Payload::Noop => return,
        };
        let Some(cmd) = Command::decode(data) else {
            self.fail(format!("undecodable command at index {}", e.index));
            return;
        };
        let (ok, observed) = n.kv.apply(&cmd);
        // Complete the client command waiting for this entry on this node.
        let now = self.now;
        for c in 0..self.clients.len() {
            let Some((
                Waiting::Write {
                    node,
                    first,
                    term,
                    cmds,
                    next,
                },
                start,
                _,
            )) = &mut self.clients[c].waiting
            else {
                continue;
            };
            if *node != id || *first + *next as u64 != e.index {
                continue;
            }
            let (mine, index, term, start) = (cmds[*next], e.index, *term, *start);
            if term != e.term {
                // Another leader's entry took this slot: ours, and those after it in the same
                // batch, were never committed. Drop them.
                self.clients[c].waiting = None;
                self.clients[c].next_at = now + 1 + self.rng.below(20);
                continue;
            }
            *next += 1;
            if *next == cmds.len() {
                self.clients[c].waiting = None;
                self.clients[c].next_at = now + 1 + self.rng.below(20);
            }
            if mine.op_id != cmd.op_id {
                self.fail(format!("entry {index} term {term} carries another command"));
                return;
            }
            self.stats.acked_writes += 1;
            self.acked_writes.push((index, term));
            if self.healed && self.clients[c].waiting.is_none() {
                self.clients[c].final_write_done = true;
            }
            self.history.push(Operation {
                client: self.clients[c].id,
                op: mine.kind,
                key: mine.key,
                value: Some(mine.value),
                expected: mine.expected,
                start_ns: start * NS_PER_MS,
                end_ns: now * NS_PER_MS,
                ok: Some(ok),
                result: if ok { None } else { observed },
            });
        }
    }

    fn client_step(&mut self, c: usize) {
        let now = self.now;
        if let Some((_, _, deadline)) = &self.clients[c].waiting {
            if now >= *deadline {
                self.give_up(c, now);
            }
            return;
        }
        if now < self.clients[c].next_at {
            return;
        }
        // Pick a node: the hinted leader, else a random running one (a paused one queues the
        // request and handles it when it resumes).
        let running: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(id, _)| *id)
            .collect();
        if running.is_empty() {
            return;
        }
        let mut target = match self.clients[c].leader_hint {
            // Now and then a client asks a random node anyway (as after a reconnect).
            Some(h) if running.contains(&h) && !self.rng.chance(0.05) => h,
            _ => running[self.rng.below(running.len() as u64) as usize],
        };
        // During a lease-trap round the even clients stay with the old leader, the others
        // with the rest of the group; before a `Restart` round's cut, everyone only reads (the
        // minority cut off meanwhile keeps an up-to-date log, so it can win the next election).
        let mut reads_only = false;
        if let Some(round) = self.trap.as_ref().and_then(|t| t.round.as_ref()) {
            let old = round.leader;
            reads_only = round.variant != TrapVariant::Pause && !round.cut;
            if c.is_multiple_of(2) && running.contains(&old) {
                target = old;
                reads_only = true;
            } else if target == old {
                let rest: Vec<NodeId> = running.iter().copied().filter(|&id| id != old).collect();
                if rest.is_empty() {
                    return;
                }
                target = rest[self.rng.below(rest.len() as u64) as usize];
            }
        }
        let key = 1 + self.rng.below(KEYS);
        let roll = self.rng.below(10);
        let kind = if reads_only {
            OpKind::Get
        } else if self.healed || roll < 3 {
            OpKind::Put
        } else if roll < 8 {
            OpKind::Get
        } else {
            OpKind::Cas
        };
        let deadline = now + 200 + self.rng.below(800);
        let mut cmds = Vec::new();
        if kind != OpKind::Get {
            // Puts sometimes go as a batch of several (each its own client operation).
            let n = if kind == OpKind::Put && self.rng.chance(self.fault.batch) {
                2 + self.rng.below(3)
            } else {
                1
            };
            for i in 0..n {
                let op_id = self.next_op_id;
                self.next_op_id += 1;
                let expected = if kind == OpKind::Cas {
                    // Expect a recently written value, or absence, so some succeed.
                    if self.rng.chance(0.2) || op_id < 3 {
                        None
                    } else {
                        Some(op_id - 1 - self.rng.below(3.min(op_id - 1)))
                    }
                } else {
                    None
                };
                cmds.push(Command {
                    op_id,
                    kind,
                    key: if i == 0 {
                        key
                    } else {
                        1 + self.rng.below(KEYS)
                    },
                    value: op_id,
                    expected,
                });
            }
        }
        let req = Request { key, cmds };
        let n = self.nodes.get_mut(&target).expect("exists");
        if n.paused_until.is_some() {
            // The request waits in the paused process's socket, behind its missed ticks.
            let id = self.next_ctx;
            self.next_ctx += 1;
            n.inbox.push(Input::Client { c, id });
            self.clients[c].waiting = Some((
                Waiting::Queued {
                    node: target,
                    id,
                    req,
                },
                now,
                deadline,
            ));
            return;
        }
        self.submit(c, target, req, now, deadline);
    }

    /// Hands a client's request to node `target` (running, not paused).
    fn submit(&mut self, c: usize, target: NodeId, req: Request, start: u64, deadline: u64) {
        let now = self.now;
        let raft = self
            .nodes
            .get_mut(&target)
            .and_then(|n| n.raft.as_mut())
            .expect("running");
        if req.cmds.is_empty() {
            let ctx = self.next_ctx;
            self.next_ctx += 1;
            match raft.read_index(ctx) {
                Ok(()) => {
                    self.clients[c].waiting = Some((
                        Waiting::Read {
                            node: target,
                            ctx,
                            key: req.key,
                        },
                        start,
                        deadline,
                    ));
                }
                Err(shoal_raft::ReadError::NotLeader { leader }) => {
                    self.clients[c].leader_hint = leader;
                    self.clients[c].next_at = now + 1 + self.rng.below(5);
                }
                Err(_) => self.clients[c].next_at = now + 5,
            }
        } else {
            let cmds = req.cmds;
            let proposed = if cmds.len() == 1 {
                raft.propose(cmds[0].encode())
            } else {
                raft.propose_batch(cmds.iter().map(Command::encode).collect())
            };
            match proposed {
                Ok(p) => {
                    self.clients[c].waiting = Some((
                        Waiting::Write {
                            node: target,
                            first: p.index,
                            term: p.term,
                            cmds,
                            next: 0,
                        },
                        start,
                        deadline,
                    ));
                }
                Err(ProposeError::NotLeader { leader }) => {
                    self.clients[c].leader_hint = leader;
                    self.clients[c].next_at = now + 1 + self.rng.below(5);
                }
                Err(_) => self.clients[c].next_at = now + 5 + self.rng.below(20),
            }
        }
        self.drain(target);
    }

    /// Serves confirmed reads whose index the node's state machine has reached.
    fn serve_reads(&mut self) {
        let now = self.now;
        for c in 0..self.clients.len() {
            let Some((Waiting::Read { node, ctx, key }, start, _)) = &self.clients[c].waiting
            else {
                continue;
            };
            let (node, ctx, key, start) = (*node, *ctx, *key, *start);
            let Some(n) = self.nodes.get_mut(&node) else {
                continue;
            };
            if n.paused_until.is_some() {
                continue;
            }
            let Some(&index) = n.ready_reads.get(&ctx) else {
                continue;
            };
            if n.sm_applied < index {
                continue;
            }
            n.ready_reads.remove(&ctx);
            let value = n.kv.map.get(&key).copied();
            let term = n.raft.as_ref().map_or(0, |r| r.term());
            let voters = n.raft.as_ref().map(|r| r.membership().clone());
            self.log(|| format!("client {c} read key {key} = {value:?} from node {node} (term {term}, index {index}, membership {voters:?})"));
            self.clients[c].waiting = None;
            self.clients[c].next_at = now + 1 + self.rng.below(20);
            self.history.push(Operation {
                client: self.clients[c].id,
                op: OpKind::Get,
                key,
                value: None,
                expected: None,
                start_ns: start * NS_PER_MS,
                end_ns: now * NS_PER_MS,
                ok: Some(true),
                result: value,
            });
        }
    }

    /// Runs the lease trap's rounds (see [`Trap`]).
    fn run_trap(&mut self) {
        let Some(mut trap) = self.trap.take() else {
            return;
        };
        let now = self.now;
        match trap.round.as_mut() {
            None if now >= trap.next_round && now + 2_500 < self.fault_end => {
                if let Some(round) = self.start_trap_round(&mut trap.rng) {
                    trap.round = Some(round);
                } else {
                    trap.next_round = now + 100;
                }
            }
            Some(round) if !round.cut && now >= round.cut_at => {
                round.cut = true;
                let leader = round.leader;
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for &id in &ids {
                    if id != leader {
                        self.blocked.insert((leader, id));
                        self.blocked.insert((id, leader));
                    }
                }
                self.partition_until = round.heal_at;
                self.log(|| format!("lease trap: leader {leader} cut off ({:?})", round.variant));
                // The old leader's clients drop what they wait for (a write there cannot
                // commit any more) and read at once.
                for c in (0..self.clients.len()).step_by(2) {
                    self.give_up(c, now);
                    self.clients[c].next_at = now;
                }
                match round.variant {
                    TrapVariant::Cut => {}
                    TrapVariant::Pause => {
                        let until = (now + 250 + trap.rng.below(350)).min(round.heal_at - 100);
                        let n = self.nodes.get_mut(&leader).expect("exists");
                        if n.raft.is_some() && n.paused_until.is_none() {
                            n.paused_until = Some(until);
                            self.stats.pauses += 1;
                            self.log(|| format!("lease trap: pause {leader} until {until}ms"));
                        }
                    }
                    TrapVariant::Restart => {
                        // Restart enough members of the leader's lease quorum (those not cut
                        // off early) for the early ones to reach a quorum with them.
                        let voters = self.nodes[&leader]
                            .raft
                            .as_ref()
                            .map(|r| r.membership().voters.clone())
                            .unwrap_or_default();
                        let quorum = voters.len() / 2 + 1;
                        let mut rest: Vec<NodeId> = voters
                            .iter()
                            .copied()
                            .filter(|&v| v != leader && !round.early.contains(&v))
                            .collect();
                        let need = quorum.saturating_sub(round.early.len()).min(rest.len());
                        for _ in 0..need {
                            let i = trap.rng.below(rest.len() as u64) as usize;
                            let id = rest.swap_remove(i);
                            if self.nodes[&id].raft.is_some() {
                                self.crash(id);
                                let at = now + 1 + trap.rng.below(10);
                                self.nodes.get_mut(&id).expect("exists").restart_at = Some(at);
                                self.log(|| format!("lease trap: {id} restarts at {at}ms"));
                            }
                        }
                    }
                }
            }
            Some(round) if now >= round.heal_at => {
                self.blocked.clear();
                self.log(|| "lease trap: healed".into());
                trap.round = None;
                trap.next_round = now + 300 + trap.rng.below(1_000);
            }
            _ => {}
        }
        self.trap = Some(trap);
    }

    /// Starts a lease-trap round on the current leader, if there is one to trap.
    fn start_trap_round(&mut self, rng: &mut Rng) -> Option<TrapRound> {
        let leader = self.current_leader()?;
        let n = &self.nodes[&leader];
        if n.paused_until.is_some() {
            return None;
        }
        let voters: Vec<NodeId> = n
            .raft
            .as_ref()?
            .membership()
            .voters
            .iter()
            .copied()
            .collect();
        // The worst case the drift bound allows: the leader's clock slow, everyone else's fast.
        let nominal = (TICK_MS * NS_PER_MS) as f64;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let f = if id == leader {
                1.0 + self.drift
            } else {
                1.0 - self.drift
            };
            self.nodes.get_mut(&id).expect("exists").tick_ns = (nominal * f).round() as u64;
        }
        let variant =
            [TrapVariant::Cut, TrapVariant::Restart, TrapVariant::Pause][rng.below(3) as usize];
        let now = self.now;
        let mut early = BTreeSet::new();
        let mut cut_at = now;
        if variant != TrapVariant::Pause {
            let mut others: Vec<NodeId> = voters.iter().copied().filter(|&v| v != leader).collect();
            for _ in 0..(voters.len() - 1) / 2 {
                let i = rng.below(others.len() as u64) as usize;
                early.insert(others.swap_remove(i));
            }
            cut_at = now + 150 + rng.below(250);
        }
        let heal_at = cut_at + 500 + rng.below(1_000);
        for &id in &early {
            self.blocked.insert((leader, id));
            self.blocked.insert((id, leader));
        }
        self.partition_until = heal_at;
        let e = early.clone();
        self.log(|| {
            format!("lease trap: leader {leader} slow, others fast; {variant:?} at {cut_at}ms (early {e:?}), heal at {heal_at}ms")
        });
        Some(TrapRound {
            leader,
            variant,
            cut_at,
            heal_at,
            cut: false,
            early,
        })
    }

    fn inject_faults(&mut self) {
        self.run_trap();
        let p = |per_s: f64| per_s / 1000.0;
        // Crashes and restarts.
        if self.rng.chance(p(self.fault.crash_per_s)) {
            let running: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.raft.is_some())
                .map(|(id, _)| *id)
                .collect();
            if !running.is_empty() {
                // Leaders are the interesting victims: half the crashes hit the current one.
                let id = match self.current_leader() {
                    Some(l) if self.rng.chance(0.5) => l,
                    _ => running[self.rng.below(running.len() as u64) as usize],
                };
                self.crash(id);
            }
        }
        let now = self.now;
        let due: Vec<NodeId> = self
            .crash_at
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        self.crash_at.retain(|(t, _)| *t > now);
        for id in due {
            self.crash(id);
        }
        // Partitions.
        if self.now >= self.partition_until && !self.blocked.is_empty() {
            self.blocked.clear();
            self.log(|| "partition healed".into());
        }
        if self.blocked.is_empty() && self.rng.chance(p(self.fault.partition_per_s)) {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let kind = self.rng.below(3);
            let mut side = BTreeSet::new();
            for &id in &ids {
                if self.rng.chance(0.5) {
                    side.insert(id);
                }
            }
            if kind == 2 {
                // Isolate one node (often the leader).
                side.clear();
                let leader = self.current_leader();
                let pick = match leader {
                    Some(l) if self.rng.chance(0.6) => l,
                    _ => ids[self.rng.below(ids.len() as u64) as usize],
                };
                side.insert(pick);
            }
            for &a in &ids {
                for &b in &ids {
                    if side.contains(&a) != side.contains(&b) {
                        if kind == 1 {
                            // One-way: only from `side` to the rest.
                            if side.contains(&a) {
                                self.blocked.insert((a, b));
                            }
                        } else {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
            self.partition_until = self.now + 50 + self.rng.below(self.fault.partition_max_ms);
            let s = side.clone();
            self.log(|| format!("partition kind {kind} side {s:?}"));
        }
        // Membership changes.
        if self.rng.chance(p(self.fault.conf_per_s)) {
            self.change_membership();
        }
        // Process pauses (often of the leader): no input, no ticks, for up to several election
        // timeouts.
        if self.rng.chance(p(self.fault.pause_per_s)) {
            let running = self.running();
            if !running.is_empty() {
                let id = match self.current_leader() {
                    Some(l) if self.rng.chance(0.5) => l,
                    _ => running[self.rng.below(running.len() as u64) as usize],
                };
                let until = self.now + 1 + self.rng.below(self.fault.max_pause_ms);
                let n = self.nodes.get_mut(&id).expect("exists");
                if n.paused_until.is_none() {
                    n.paused_until = Some(until);
                    self.stats.pauses += 1;
                    self.log(|| format!("pause {id} until {until}ms"));
                }
            }
        }
        // Disk faults: the next fsync of a node fails, or its disk fills up for a while.
        if self.rng.chance(p(self.fault.fsync_fail_per_s)) {
            let running = self.running();
            if !running.is_empty() {
                let id = running[self.rng.below(running.len() as u64) as usize];
                self.nodes
                    .get_mut(&id)
                    .expect("exists")
                    .storage
                    .fail_next_sync();
                self.log(|| format!("the next fsync of node {id} fails"));
            }
        }
        if self.rng.chance(p(self.fault.disk_full_per_s)) {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let id = match self.current_leader() {
                Some(l) if self.rng.chance(0.3) => l,
                _ => ids[self.rng.below(ids.len() as u64) as usize],
            };
            let until = self.now + 50 + self.rng.below(2_000);
            let n = self.nodes.get_mut(&id).expect("exists");
            if n.full_until.is_none() {
                n.full_until = Some(until);
                n.storage.set_full(true);
                self.log(|| format!("disk of node {id} full until {until}ms"));
            }
        }
        // Leadership transfers to a random voter.
        if self.rng.chance(p(self.fault.transfer_per_s)) {
            if let Some(leader) = self.current_leader() {
                let voters: Vec<NodeId> = self.nodes[&leader]
                    .raft
                    .as_ref()
                    .expect("leader runs")
                    .membership()
                    .voters
                    .iter()
                    .copied()
                    .filter(|&v| v != leader)
                    .collect();
                if !voters.is_empty() && self.nodes[&leader].paused_until.is_none() {
                    let target = voters[self.rng.below(voters.len() as u64) as usize];
                    let r = self
                        .nodes
                        .get_mut(&leader)
                        .and_then(|n| n.raft.as_mut())
                        .expect("leader runs");
                    match r.transfer_leadership(target) {
                        Ok(()) => {
                            self.stats.transfers += 1;
                            self.log(|| format!("leader {leader} transfers to {target}"));
                        }
                        Err(e) => self.log(|| format!("transfer to {target} refused: {e}")),
                    }
                    self.drain(leader);
                }
            }
        }
    }

    /// Nodes whose process runs and is not paused.
    fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some() && n.paused_until.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    fn current_leader(&self) -> Option<NodeId> {
        let mut best: Option<(Term, NodeId)> = None;
        for (id, n) in &self.nodes {
            if let Some(r) = &n.raft {
                if r.role() == Role::Leader && best.is_none_or(|(t, _)| r.term() > t) {
                    best = Some((r.term(), *id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    fn change_membership(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let m = self.nodes[&leader]
            .raft
            .as_ref()
            .expect("leader runs")
            .membership()
            .clone();
        let members = m.members();
        let learners: Vec<NodeId> = m
            .learners
            .iter()
            .copied()
            .filter(|l| !m.is_voter(*l))
            .collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let roll = self.rng.below(5);
        let changes: Vec<ConfChange> = match roll {
            0 if members.len() < 7 => {
                let id = self.next_node_id;
                self.next_node_id += 1;
                let mut cfg = self.nodes[&leader].cfg.clone();
                cfg.id = id;
                cfg.seed = self.opts.seed.wrapping_mul(31).wrapping_add(id);
                let storage = match SimStorage::new(self.opts.storage, RecoveredState::default()) {
                    Ok(s) => s,
                    Err(e) => {
                        self.fail(format!("storage for new node {id}: {e}"));
                        return;
                    }
                };
                self.nodes.insert(id, SimNode::new(cfg, storage));
                self.nodes.get_mut(&id).expect("inserted").tick_ns = self.draw_tick_ns();
                self.start_node(id);
                vec![ConfChange::AddLearner(id)]
            }
            1 if !learners.is_empty() => {
                let l = learners[self.rng.below(learners.len() as u64) as usize];
                if voters.len() > 1 && self.rng.chance(0.3) {
                    // Replace a voter (possibly the leader) by the learner in one change.
                    let v = voters[self.rng.below(voters.len() as u64) as usize];
                    vec![ConfChange::AddVoter(l), ConfChange::RemoveNode(v)]
                } else {
                    vec![ConfChange::AddVoter(l)]
                }
            }
            2 if voters.len() > 2 => {
                let v = voters[self.rng.below(voters.len() as u64) as usize];
                vec![ConfChange::DemoteVoter(v)]
            }
            3 if members.len() > 3 => {
                let all: Vec<NodeId> = members.iter().copied().collect();
                let v = all[self.rng.below(all.len() as u64) as usize];
                if m.voters.len() == 1 && m.voters.contains(&v) {
                    return;
                }
                vec![ConfChange::RemoveNode(v)]
            }
            4 if voters.len() < 3 && !learners.is_empty() => {
                vec![ConfChange::AddVoter(learners[0])]
            }
            _ => return,
        };
        let r = self
            .nodes
            .get_mut(&leader)
            .and_then(|n| n.raft.as_mut())
            .expect("leader runs");
        match r.propose_conf_change(&changes) {
            Ok(p) => {
                self.stats.conf_changes += 1;
                self.log(|| format!("leader {leader} proposes {changes:?} at {}", p.index));
            }
            Err(e) => self.log(|| format!("conf change {changes:?} refused: {e}")),
        }
        self.drain(leader);
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse(top)) = self.net.peek() {
            if top.at > self.now {
                break;
            }
            let Reverse(f) = self.net.pop().expect("peeked");
            let m = f.msg;
            if self.blocked.contains(&(m.from, m.to)) {
                continue;
            }
            let to = m.to;
            match self.nodes.get_mut(&to) {
                Some(n) if n.raft.is_some() && n.paused_until.is_some() => {
                    n.inbox.push(Input::Msg(m))
                }
                Some(n) if n.raft.is_some() => self.step_node(to, m),
                _ => {}
            }
        }
    }

    fn step_node(&mut self, to: NodeId, m: Message) {
        let Some(r) = self.nodes.get_mut(&to).and_then(|n| n.raft.as_mut()) else {
            return;
        };
        if let Err(e) = r.step(m) {
            self.fail(format!(
                "node {to} rejected a message from a correct peer: {e}"
            ));
        }
        self.drain(to);
    }

    /// Ends the pauses that are over. Per the core's host contract, a resumed node first gets
    /// the ticks it missed, then the messages that queued up meanwhile.
    fn resume_paused(&mut self) {
        let now = self.now;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = self.nodes.get_mut(&id).expect("exists");
            if n.paused_until.is_none_or(|t| t > now) {
                continue;
            }
            n.paused_until = None;
            let inbox = std::mem::take(&mut n.inbox);
            self.log(|| format!("resume {id} ({} queued messages)", inbox.len()));
            self.tick_node(id);
            for input in inbox {
                match input {
                    Input::Msg(m) => self.step_node(id, m),
                    Input::Client { c, id: want } => {
                        let queued = matches!(&self.clients[c].waiting,
                            Some((Waiting::Queued { id: x, .. }, ..)) if *x == want);
                        if !queued || self.nodes[&id].raft.is_none() {
                            continue;
                        }
                        let Some((Waiting::Queued { req, .. }, start, deadline)) =
                            self.clients[c].waiting.take()
                        else {
                            unreachable!("checked")
                        };
                        self.submit(c, id, req, start, deadline);
                    }
                }
            }
        }
    }

    fn run_io(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let now = self.now;
            let n = self.nodes.get_mut(&id).expect("exists");
            if n.full_until.is_some_and(|t| t <= now) {
                n.full_until = None;
                n.storage.set_full(false);
            }
            if n.raft.is_none() {
                if n.restart_at.is_some_and(|t| t <= now) && !n.storage.is_full() {
                    self.start_node(id);
                }
                continue;
            }
            if n.paused_until.is_some() {
                continue;
            }
            if n.sync_at.is_some_and(|t| t <= now) {
                n.sync_at = None;
                let seq = match n.storage.sync() {
                    Ok(seq) => seq,
                    Err(e) => {
                        self.storage_failed(id, "sync", e);
                        continue;
                    }
                };
                if seq > 0 {
                    n.raft.as_mut().expect("running").on_persisted(seq);
                }
                self.drain(id);
            }
            let n = self.nodes.get_mut(&id).expect("exists");
            if n.snapshot_job.as_ref().is_some_and(|(t, _, _)| *t <= now) {
                let (_, index, data) = n.snapshot_job.take().expect("checked");
                let r = n.raft.as_mut().expect("running");
                if index > r.snapshot_index() && r.snapshot_taken(index, data).is_ok() {
                    self.stats.snapshots += 1;
                }
                self.drain(id);
            }
        }
    }

    /// Gives every running, unpaused node the ticks its own clock has reached.
    fn tick_nodes(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].paused_until.is_none() {
                self.tick_node(id);
            }
        }
    }

    /// Delivers the ticks due on node `id` by now (several after a pause).
    fn tick_node(&mut self, id: NodeId) {
        let now_ns = self.now * NS_PER_MS;
        loop {
            let n = self.nodes.get_mut(&id).expect("exists");
            if n.next_tick_ns > now_ns {
                return;
            }
            let Some(r) = n.raft.as_mut() else { return };
            n.next_tick_ns += n.tick_ns;
            r.tick();
            self.drain(id);
        }
    }

    /// Safety invariants, checked after every tick.
    fn check_invariants(&mut self) {
        let mut errors = Vec::new();
        let mut new_leaders = Vec::new();
        for (&id, n) in &self.nodes {
            let Some(r) = &n.raft else { continue };
            // Election safety: one leader per term.
            if r.role() == Role::Leader {
                match self.leaders.get(&r.term()) {
                    Some(&l) if l != id => errors.push(format!(
                        "election safety: nodes {l} and {id} both led term {}",
                        r.term()
                    )),
                    Some(_) => {}
                    None => {
                        self.leaders.insert(r.term(), id);
                        self.stats.leaders += 1;
                        new_leaders.push(id);
                    }
                }
            }
            // Log matching: (index, term) identifies the payload and the previous entry's term.
            let mut prev_term = r.term_at(r.snapshot_index()).unwrap_or(0);
            for e in r.entries() {
                let key = (e.index, e.term);
                let val = (fingerprint(e), prev_term);
                match self.seen_entries.get(&key) {
                    Some(v) if *v != val => errors.push(format!(
                        "log matching: node {id} has a different entry or prefix at index {} term {}",
                        e.index, e.term
                    )),
                    Some(_) => {}
                    None => {
                        self.seen_entries.insert(key, val);
                    }
                }
                prev_term = e.term;
            }
            // Committed entries never change.
            for i in (r.snapshot_index() + 1)..=r.commit_index() {
                let Some(e) = r.entry(i) else {
                    errors.push(format!(
                        "node {id} commit {} beyond its log",
                        r.commit_index()
                    ));
                    break;
                };
                let val = (e.term, fingerprint(e));
                match self.committed.get_mut(&i) {
                    Some(v) if (v.0, v.1) != val => errors.push(format!(
                        "state machine safety: node {id} committed a different entry at index {i}"
                    )),
                    Some(v) => v.2 = v.2.min(r.term()),
                    None => {
                        self.committed.insert(i, (val.0, val.1, r.term()));
                    }
                }
            }
        }
        // Leader completeness: every leader holds every committed entry.
        let max_committed = self.committed.keys().next_back().copied().unwrap_or(0);
        for (&id, n) in &self.nodes {
            let Some(r) = &n.raft else { continue };
            if r.role() != Role::Leader {
                continue;
            }
            for (&i, &(t, fp, seen_in)) in self.committed.range(r.snapshot_index() + 1..) {
                if seen_in >= r.term() {
                    // A stale leader of an older term need not have it.
                    continue;
                }
                match r.entry(i) {
                    Some(e) if e.term == t && fingerprint(e) == fp => {}
                    _ => {
                        errors.push(format!(
                            "leader completeness: leader {id} (term {}) lacks committed entry {i} (max committed {max_committed})",
                            r.term()
                        ));
                        break;
                    }
                }
            }
        }
        for e in errors {
            self.fail(e);
        }
        if !self.healed {
            for id in new_leaders {
                if self.rng.chance(self.fault.churn) {
                    let at = self.now + self.rng.below(40);
                    self.crash_at.push((at, id));
                }
            }
        }
    }

    /// Records a configuration known committed (applied, or in an installed snapshot).
    fn config_committed(&mut self, index: LogIndex, members: BTreeSet<NodeId>) {
        if self
            .committed_members
            .as_ref()
            .is_none_or(|(i, _)| index > *i)
        {
            self.committed_members = Some((index, members));
        }
    }

    /// After healing, without pre-vote and check-quorum, shuts down the nodes removed by a
    /// committed configuration, as an operator would. Those configurations have no defence
    /// against a removed node that missed its removal: it times out again and again, and each
    /// of its vote requests at a higher term deposes the leader (the Raft thesis, §4.2.3,
    /// relies on the leader stickiness that comes with check-quorum here; pre-vote also stops
    /// it, its log being behind). With either, removed nodes keep running to the end. Removed
    /// ids are never reused, so a removal is final.
    fn retire_removed(&mut self) {
        let Some((_, members)) = &self.committed_members else {
            return;
        };
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| !n.retired && !members.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.log(|| format!("node {id} was removed: shut down"));
            self.crash(id);
            let n = self.nodes.get_mut(&id).expect("exists");
            n.raft = None;
            n.restart_at = None;
            n.retired = true;
        }
    }

    fn heal(&mut self) {
        self.healed = true;
        self.blocked.clear();
        self.log(|| "faults healed".into());
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = self.nodes.get_mut(&id).expect("exists");
            n.full_until = None;
            n.storage.set_full(false);
            if n.raft.is_none() && !n.retired {
                self.start_node(id);
            }
        }
    }

    fn run(mut self) -> SimOutcome {
        let end = self.fault_end + self.opts.recovery_ms;
        let phase: u64 = self.rng.below(TICK_MS);
        while self.now < end && self.failure.is_none() {
            self.now += 1;
            if !self.healed && self.now >= self.fault_end {
                self.heal();
            }
            if !self.healed {
                self.inject_faults();
            }
            // Ticks due by now come before the messages arriving now (host contract).
            if self.healed && self.no_defense {
                self.retire_removed();
            }
            self.resume_paused();
            self.tick_nodes();
            self.deliver_due();
            self.run_io();
            if self.now % TICK_MS == phase {
                self.check_invariants();
                if self.opts.verbose && self.now % 1000 == phase {
                    for (id, n) in &self.nodes {
                        if let Some(r) = &n.raft {
                            let (role, term, commit, last) =
                                (r.role(), r.term(), r.commit_index(), r.last_index());
                            let progress: Vec<_> = self
                                .nodes
                                .keys()
                                .filter_map(|p| r.progress(*p).map(|pr| (*p, pr)))
                                .collect();
                            self.log(|| {
                                format!("status {id}: {role:?} term {term} commit {commit} last {last} progress {progress:?}")
                            });
                        }
                    }
                }
            }
            for c in 0..self.clients.len() {
                self.client_step(c);
            }
            self.serve_reads();
            if self.healed && self.clients.iter().all(|c| c.final_write_done) {
                break;
            }
        }
        if self.failure.is_none() && !self.clients.iter().all(|c| c.final_write_done) {
            for (id, n) in &self.nodes {
                let state = n.raft.as_ref().map(|r| {
                    format!(
                        "{:?} term {} leader {:?} commit {} last {} durable {} membership {:?}",
                        r.role(),
                        r.term(),
                        r.leader(),
                        r.commit_index(),
                        r.last_index(),
                        r.durable_index(),
                        r.membership()
                    )
                });
                self.log(|| {
                    format!(
                        "node {id} (paused {:?}, unsynced {}, sync_at {:?}): {state:?}",
                        n.paused_until,
                        n.storage.unsynced(),
                        n.sync_at
                    )
                });
            }
            let leader = self.current_leader();
            self.fail(format!(
                "liveness: {} ms after healing, not every client completed a write (leader: {leader:?})",
                self.opts.recovery_ms
            ));
        }
        // Clients still waiting: unknown outcome.
        for c in 0..self.clients.len() {
            let now = self.now;
            self.give_up(c, now);
        }
        if self.failure.is_none() {
            self.check_acked_writes();
        }
        let mut inconclusive = false;
        if self.failure.is_none() {
            match linearizability::check(&self.history) {
                CheckResult::Linearizable => {}
                CheckResult::Inconclusive { key } => {
                    // Not proven linearizable is not a pass.
                    inconclusive = true;
                    let ops = self.history.iter().filter(|o| o.key == key).count();
                    self.fail(format!(
                        "linearizability check inconclusive on key {key} ({ops} operations): search budget exhausted"
                    ));
                }
                CheckResult::NotLinearizable { key, ops } => self.fail(format!(
                    "history not linearizable on key {key} ({} operations)",
                    ops.len()
                )),
            }
        }
        self.stats.ops = self.history.len() as u64;
        self.stats.snapshot_installs = self
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.stats().snapshots_installed)
            .sum();
        SimOutcome {
            seed: self.opts.seed,
            failure: self.failure,
            history: self.history,
            inconclusive,
            stats: self.stats,
        }
    }

    /// No acknowledged write is lost: each is still committed with the same term.
    fn check_acked_writes(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let r = self.nodes[&leader].raft.as_ref().expect("leader runs");
        let mut errors = Vec::new();
        for &(i, t) in &self.acked_writes {
            let ok = if i > r.snapshot_index() {
                r.term_at(i) == Some(t) && i <= r.commit_index()
            } else {
                self.committed.get(&i).is_none_or(|(ct, _, _)| *ct == t)
            };
            if !ok {
                errors.push(format!("acknowledged write at index {i} term {t} lost"));
            }
        }
        for e in errors {
            self.fail(e);
        }
    }
}

impl SimNode {
    fn new(cfg: Config, storage: SimStorage) -> SimNode {
        SimNode {
            raft: None,
            storage,
            cfg,
            incarnation: 0,
            kv: Kv::default(),
            sm_applied: 0,
            sync_at: None,
            snapshot_job: None,
            restart_at: None,
            ready_reads: BTreeMap::new(),
            tick_ns: TICK_MS * NS_PER_MS,
            next_tick_ns: 0,
            paused_until: None,
            inbox: Vec::new(),
            full_until: None,
            retired: false,
        }
    }
}

/// Runs one seed to completion and reports what it found.
pub fn run(opts: SimOptions) -> SimOutcome {
    Sim::new(opts).run()
}
