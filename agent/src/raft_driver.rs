//! Drives a manager's Raft replica on tokio: ticks, messages from the transport, proposals from
//! the control API, the WAL (every batch fsynced before `on_persisted`), applying committed
//! commands to the cluster state, and — on the leader — the role reconciler and the node status
//! sync from membership.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use shoal_cluster::{reconcile, Action, ClusterState, Command, NodeState, NodeStatus, RaftView};
use shoal_membership::State;
use shoal_raft::wal::{Wal, WalOptions};
use shoal_raft::{
    ConfChange, Config, Effect, Entry, Membership, MessageBody, Payload, RaftNode, RecoveredState,
    Role, Storage, WriteBatch,
};
use shoal_transport::net::Transport;
use tokio::sync::{mpsc, oneshot, watch};

use crate::gossip::View;
use crate::wire;

/// One Raft tick. The election timeout is 10–20 ticks (0.5–1 s), heartbeats every 2.
pub const TICK: Duration = Duration::from_millis(50);
/// The least time between two orchestrator passes run outside the ticks.
const ORCHESTRATE_GAP: Duration = Duration::from_millis(10);
/// A member is reachable when the leader heard from it this recently (the longest election
/// timeout).
pub const REACHABLE_WINDOW: Duration = Duration::from_millis(1000);
/// A member is heard from when any Raft message of its arrived this recently: twice the longest
/// election timeout, so that a member that campaigns or answers a campaign is never missed.
pub const HEARD_WINDOW: Duration = Duration::from_millis(2000);

/// The replica's state as the rest of the agent sees it.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    /// The leader, if known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Whom this replica voted for in `term`, if anyone (kept when a demoted manager retires
    /// its log, so that it never votes twice in a term).
    pub vote: Option<u64>,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// The latest configuration.
    pub membership: Membership,
    /// Members that answered the leader's own messages recently (itself included); leader only.
    pub reachable: BTreeSet<u64>,
    /// Members any Raft message arrived from within [`HEARD_WINDOW`] (itself included): who
    /// this node can actually hear now, whatever gossip still believes (the no-leader message).
    pub heard_from: BTreeSet<u64>,
    /// The replica stopped: this node was removed from the group.
    pub stopped: bool,
    /// This node is out of the latest configuration it knows (the agent asks the leader).
    pub leaving: bool,
    /// Index of the last entry in this replica's log.
    pub last_index: u64,
    /// Whether this replica leads.
    pub is_leader: bool,
    /// Leader only: for each other member of the configuration, how many entries it is behind
    /// this log's end (its replication lag).
    pub lag: BTreeMap<u64, u64>,
    /// Elections this replica started (real votes, not pre-votes).
    pub elections: u64,
    /// Times this replica became leader.
    pub leaderships: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// WAL fsync rounds (each covers every batch of one round of effects).
    pub wal_syncs: u64,
    /// Proposals (the users' and the leader's own) waiting to be applied.
    pub proposals_pending: usize,
    /// The replica stopped because its storage failed (a write or an fsync): why. It answers
    /// nothing from then on; the other managers see it unreachable.
    pub failed: Option<String>,
    /// Raft messages dropped: from a peer that is neither a manager nor in the configuration.
    pub rejected_not_member: u64,
    /// Raft messages dropped: undecodable, or naming another sender or receiver.
    pub rejected_malformed: u64,
    /// Snapshots received whole that do not decode as a cluster state (never installed).
    pub rejected_snapshots: u64,
}

impl RaftStatus {
    /// Whether this replica is in touch with a leader: it leads, or it heard from the leader it
    /// knows within [`HEARD_WINDOW`]. A replica that is not may hold a stale state.
    pub fn in_touch(&self) -> bool {
        self.is_leader || self.leader.is_some_and(|l| self.heard_from.contains(&l))
    }
}

/// Where a request's verdict goes.
pub type Reply = oneshot::Sender<Result<(), String>>;

/// Requests to the driver.
pub enum RaftCmd {
    /// Propose a command; answered once it is applied (with the state machine's verdict).
    Propose(Box<Command>, Reply),
    /// A linearizable read barrier: answered once the state reflects everything committed
    /// before the request.
    Read(Reply),
    /// A message from a peer: its authenticated id, whether its certificate has the manager
    /// role, the encoded message.
    Step(u64, bool, Vec<u8>),
    /// The leader confirmed that this node is out of the configuration: stop the replica.
    Retire,
    /// The leader says this node is in none of its configurations although this replica still
    /// counts itself in (it was removed while it was down or cut off, and no leader will ever
    /// contact it again): stop the replica.
    RemovedByLeader,
    /// Seal what is written from now on with these data keys (a new current key).
    SetKeys(Arc<shoal_raft::seal::Keyring>),
    /// Which data keys the log's files are sealed with.
    KeysInUse(oneshot::Sender<Result<BTreeSet<u32>, String>>),
}

/// The agent's handle on its replica.
#[derive(Clone)]
pub struct RaftHandle {
    /// Requests in.
    pub tx: mpsc::Sender<RaftCmd>,
    /// Status out.
    pub status: watch::Receiver<RaftStatus>,
    /// The applied cluster state.
    pub state: Arc<RwLock<ClusterState>>,
}

/// How a replica starts.
pub enum Start {
    /// From whatever the WAL holds (a restart, or a learner's empty log).
    Existing,
    /// A founding member: write the bootstrap configuration `{self}` first.
    Bootstrap,
    /// `--force-new-cluster`: keep the committed state, restart as the only voter.
    ForceNewCluster,
    /// A demoted manager promoted again: a new, empty log that keeps the retired one's term
    /// and vote.
    Rejoin {
        /// The retired log's term.
        term: u64,
        /// Its vote in that term.
        vote: Option<u64>,
    },
}

/// Entries applied between two snapshots: 1,000, or `SHOAL_SNAPSHOT_EVERY` (tests use a small
/// value to exercise restarts past a snapshot).
fn snapshot_threshold() -> u64 {
    std::env::var("SHOAL_SNAPSHOT_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1000)
}

/// Entries kept behind a snapshot for followers that lag a little: the core's default, or
/// `SHOAL_SNAPSHOT_TRAILING` (tests use a small value to see a log compacted soon).
fn snapshot_trailing(default: u64) -> u64 {
    std::env::var("SHOAL_SNAPSHOT_TRAILING")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n <= default)
        .unwrap_or(default)
}

/// Milliseconds since the Unix epoch (recorded in commands by the proposer); skewed by the
/// test clock hook when a test set it.
pub fn now_ms() -> u64 {
    crate::test_clock::wall_ms()
}

/// Opens the WAL in `dir` and starts the replica's task. Storage errors at start are returned;
/// a storage error later stops the replica (a replica that cannot persist must not answer), and
/// its status says why.
pub fn start(
    id: u64,
    dir: PathBuf,
    opts: WalOptions,
    seed: u64,
    how: Start,
    transport: Transport,
    view: View,
) -> anyhow::Result<RaftHandle> {
    let fsync = opts.fsync;
    let (mut wal, mut recovered, recovery) = Wal::open(&dir, opts.clone())?;
    if !recovery.is_clean() {
        // What an interrupted write left at the end of the log, and what was truncated.
        tracing::warn!("WAL recovery: {recovery}");
    }
    match how {
        Start::Existing => {}
        Start::Bootstrap => {
            if recovered != RecoveredState::default() {
                anyhow::bail!("{} already holds a Raft log", dir.display());
            }
            let boot = RecoveredState::bootstrap([id]);
            wal.write(&WriteBatch {
                seq: 0,
                snapshot: boot.snapshot.clone(),
                reset_log: true,
                hard_state: Some(Default::default()),
                ..Default::default()
            })?;
            wal.sync()?;
            recovered = boot;
        }
        Start::Rejoin { term, vote } => {
            if recovered != RecoveredState::default() {
                anyhow::bail!("{} already holds a Raft log", dir.display());
            }
            // An empty log that remembers the term and vote of the retired one: the leader
            // brings it up to date as a learner (a snapshot and the entries since).
            let hard_state = shoal_raft::HardState {
                term,
                vote,
                commit: 0,
            };
            wal.write(&WriteBatch {
                seq: 0,
                hard_state: Some(hard_state),
                ..Default::default()
            })?;
            wal.sync()?;
            recovered.hard_state = hard_state;
        }
        Start::ForceNewCluster => {
            drop(wal);
            force_new_cluster(id, &dir, recovered, &opts)?;
            let (w, r, _) = Wal::open(&dir, opts)?;
            wal = w;
            recovered = r;
        }
    }
    // Rebuild the state machine from the snapshot and the committed entries.
    let mut state = ClusterState::new();
    if let Some(s) = &recovered.snapshot {
        if s.meta.index > 0 {
            state = ClusterState::restore(&s.data)?;
        }
    }
    let mut cfg = Config::new(id);
    cfg.seed = id ^ seed;
    cfg.snapshot_threshold = snapshot_threshold();
    cfg.snapshot_trailing = snapshot_trailing(cfg.snapshot_trailing);
    let mut node = RaftNode::new(cfg.clone(), recovered)?;
    // A peer's snapshot that is not a cluster state never reaches the state machine.
    node.set_snapshot_validator(|data| ClusterState::restore(data).is_ok());
    let state = Arc::new(RwLock::new(state));
    refresh_transport(&state.read().expect("state"), &transport);
    let (tx, rx) = mpsc::channel(4096);
    let (status_tx, status) = watch::channel(RaftStatus::default());
    let driver = Driver {
        id,
        node,
        wal: Some(wal),
        inline_sync: !fsync,
        transport,
        view,
        state: state.clone(),
        status_tx,
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        next_read: 1,
        ready_reads: Vec::new(),
        contacts: Contacts::default(),
        inflight: BTreeMap::new(),
        conf_pending: None,
        ticks: 0,
        max_lag: cfg.max_promotion_lag / 2,
        was_member: false,
        retired: false,
        wal_syncs: 0,
        failed: None,
        rejected_not_member: 0,
        rejected_malformed: 0,
        last_tick: crate::test_clock::now(),
        orch: Orchestration::default(),
        removed_by_leader: false,
        leader_since: None,
    };
    tokio::spawn(driver.run(rx));
    Ok(RaftHandle { tx, status, state })
}

/// Rewrites the WAL in `dir` for `--force-new-cluster`: a snapshot at the commit index holding
/// the committed state, with `{id}` as the only voter, and a higher term.
fn force_new_cluster(
    id: u64,
    dir: &std::path::Path,
    recovered: RecoveredState,
    opts: &WalOptions,
) -> anyhow::Result<()> {
    let commit = recovered.hard_state.commit;
    let (mut state, mut index, mut term) = match &recovered.snapshot {
        Some(s) if s.meta.index > 0 => (ClusterState::restore(&s.data)?, s.meta.index, s.meta.term),
        Some(s) => (ClusterState::new(), 0, s.meta.term),
        None => anyhow::bail!(
            "no Raft state in {} to force a new cluster from",
            dir.display()
        ),
    };
    for e in &recovered.entries {
        if e.index <= index || e.index > commit {
            continue;
        }
        if let Payload::Command(bytes) = &e.payload {
            if let Ok(cmd) = Command::decode(bytes) {
                let _ = state.apply(e.index, &cmd);
            }
        }
        index = e.index;
        term = e.term;
    }
    // Keep the old log aside rather than deleting it: an operator may want it.
    let aside = dir.with_extension(format!("before-force-new-cluster-{}", now_ms()));
    std::fs::rename(dir, &aside)?;
    let (mut wal, fresh, _) = Wal::open(dir, opts.clone())?;
    debug_assert_eq!(fresh, RecoveredState::default());
    let snapshot = shoal_raft::Snapshot {
        meta: shoal_raft::SnapshotMeta {
            index,
            term,
            membership: Membership::with_voters([id]),
        },
        data: Arc::new(state.snapshot()),
    };
    wal.write(&WriteBatch {
        seq: 0,
        snapshot: Some(snapshot),
        reset_log: true,
        hard_state: Some(shoal_raft::HardState {
            term: recovered.hard_state.term.max(term) + 1,
            vote: None,
            commit: index,
        }),
        ..Default::default()
    })?;
    wal.sync()?;
    Ok(())
}

/// Points the transport at what the state says: every known node's address (not the placeholder
/// of a node still joining), and every removed node denied.
fn refresh_transport(st: &ClusterState, transport: &Transport) {
    for n in st.nodes().values() {
        if n.is_joining() {
            continue;
        }
        if let Ok(a) = n.addr.parse() {
            transport.pin_peer_addr(n.id, a);
        }
    }
    for id in st.removed() {
        transport.deny(*id);
    }
}

/// Who this replica hears from, and who answers it.
#[derive(Default)]
struct Contacts {
    /// When each peer last answered this node's own replication (append, heartbeat or
    /// snapshot response): the two-way test behind `Reachable`.
    answered: BTreeMap<u64, Instant>,
    /// When any Raft message last arrived from each peer (inbound only).
    heard: BTreeMap<u64, Instant>,
}

impl Contacts {
    /// Records a message from `from`. Only an answer to this node's own messages proves the
    /// path works both ways: a restarted peer's pre-votes arrive while it may not hear us.
    fn observe(&mut self, from: u64, body: &MessageBody, now: Instant) {
        self.heard.insert(from, now);
        if matches!(
            body,
            MessageBody::AppendResp { .. }
                | MessageBody::HeartbeatResp { .. }
                | MessageBody::SnapshotResp { .. }
        ) {
            self.answered.insert(from, now);
        }
    }

    /// Peers that answered within [`REACHABLE_WINDOW`], and `me`.
    fn reachable(&self, me: u64, now: Instant) -> BTreeSet<u64> {
        Self::within(&self.answered, me, now, REACHABLE_WINDOW)
    }

    /// Peers heard from within [`HEARD_WINDOW`], and `me`.
    fn heard_from(&self, me: u64, now: Instant) -> BTreeSet<u64> {
        Self::within(&self.heard, me, now, HEARD_WINDOW)
    }

    fn within(
        at: &BTreeMap<u64, Instant>,
        me: u64,
        now: Instant,
        window: Duration,
    ) -> BTreeSet<u64> {
        at.iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) < window)
            .map(|(id, _)| *id)
            .chain([me])
            .collect()
    }
}

/// The node address a command records, to pin in the transport as it is applied. Every
/// command that gives a node its address must be here: a manager restarted before the first
/// snapshot rebuilds its state (and its address book) from these entries alone, and the first
/// node's address comes only from `Init` (missing it once left a restarted manager unable to
/// answer the first node's votes). A joining node's admission is not here: its address is
/// pinned when it registers (`UpdateDescription`).
fn address_of(cmd: &Command) -> Option<(u64, &str)> {
    match cmd {
        Command::Tracked { cmd, .. } => address_of(cmd),
        Command::Init { node, .. } | Command::AddNode { node, .. } => Some((node.id, &node.addr)),
        Command::UpdateDescription { id, addr, .. } => Some((*id, addr)),
        _ => None,
    }
}

/// How long a new leader waits before it records nodes Down from its membership view.
const NEW_LEADER_GRACE: Duration = Duration::from_secs(3);

/// A node admitted but never seen this long after its admission is removed: its certificate
/// never arrived (or it never started), and the joiner runs `swarm join` again.
const JOIN_ABANDONED_MS: u64 = 120_000;

struct Driver {
    id: u64,
    node: RaftNode,
    /// The WAL; lent to a blocking thread while it syncs.
    wal: Option<Wal>,
    /// Sync on the driver's own task: the WAL does not fsync (simulations).
    inline_sync: bool,
    transport: Transport,
    view: View,
    state: Arc<RwLock<ClusterState>>,
    status_tx: watch::Sender<RaftStatus>,
    /// index → (term, reply)
    proposals: BTreeMap<u64, (u64, Option<Reply>)>,
    /// read ctx → reply
    reads: BTreeMap<u64, Reply>,
    next_read: u64,
    /// (read index, reply): answered once applied.
    ready_reads: Vec<(u64, Reply)>,
    contacts: Contacts,
    /// Reconciler and status proposals in flight: (node, what) → index.
    inflight: BTreeMap<(u64, &'static str), u64>,
    conf_pending: Option<u64>,
    ticks: u64,
    max_lag: u64,
    was_member: bool,
    retired: bool,
    wal_syncs: u64,
    failed: Option<String>,
    rejected_not_member: u64,
    rejected_malformed: u64,
    /// When the last tick was due: every elapsed tick is delivered, even after a pause.
    last_tick: Instant,
    /// The orchestrator's bookkeeping (leader only).
    orch: Orchestration,
    /// The leader said this node is no member (`RaftCmd::RemovedByLeader`).
    removed_by_leader: bool,
    /// When this replica last became leader.
    leader_since: Option<Instant>,
}

/// What the leader's orchestrator remembers between passes: only when to run again. Its
/// decisions come from the state alone, so a new leader simply starts with a full pass.
#[derive(Default)]
struct Orchestration {
    /// The applied index of the last pass (no pass until something else is applied).
    seen: u64,
    /// When a pass is due regardless (restart delays, orphan timeouts).
    wake_at_ms: Option<u64>,
    /// The last entry of the plan in flight, and its term.
    inflight: Option<(u64, u64)>,
    /// When the last pass ran (passes outside the ticks are spaced by `ORCHESTRATE_GAP`).
    last_pass: Option<Instant>,
    /// Passes run and task changes proposed (metrics).
    passes: u64,
    changes: u64,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<RaftCmd>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Every log line of the replica carries the node id and its current term and role (a
        // new span whenever they change).
        let mut span = self.span();
        let mut spanned = (self.node.term(), self.node.role());
        loop {
            let input = tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
                _ = ticker.tick() => None,
            };
            let stop =
                tracing::Instrument::instrument(self.round(input, &mut rx), span.clone()).await;
            if stop {
                break;
            }
            let now = (self.node.term(), self.node.role());
            if now != spanned {
                // Leadership changes are what an operator (or a Jepsen finding) reads first.
                let leader = shoal_raft::Role::Leader;
                if now.1 == leader && spanned.1 != leader {
                    tracing::info!(
                        term = now.0,
                        index = self.node.last_index(),
                        "became the Raft leader"
                    );
                } else if spanned.1 == leader && now.1 != leader {
                    tracing::info!(
                        term = now.0,
                        was = spanned.0,
                        "stepped down as the Raft leader"
                    );
                }
                span = self.span();
                spanned = now;
            }
        }
    }

    /// One round: the ticks that are due (first, so that a paused process never acts on a
    /// stale clock), the input and what else is queued, then the effects. True once the
    /// replica must stop.
    async fn round(&mut self, input: Option<RaftCmd>, rx: &mut mpsc::Receiver<RaftCmd>) -> bool {
        self.catch_up_ticks();
        if let Some(cmd) = input {
            self.handle(cmd);
            for _ in 0..256 {
                match rx.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => break,
                }
            }
        }
        let mut processed = self.process().await;
        if processed.is_ok() && self.orchestrate_now() {
            processed = self.process().await;
        }
        if let Err(e) = processed {
            // A replica that cannot persist must not go on answering: it stops here, and
            // nothing that may not be on disk was acknowledged (the core releases those
            // messages only after `on_persisted`).
            let why = format!("Raft storage failed: {e:#}");
            tracing::error!(
                "{why}; this manager stops its replica (restart the agent once the disk is fixed)"
            );
            self.failed = Some(why.clone());
            self.fail_all(&why);
            self.publish(false);
            return true;
        }
        let removed = self.removed();
        self.publish(removed);
        if removed {
            tracing::info!("removed from the Raft group; stopping the replica");
            self.fail_all("this manager was removed from the Raft group");
        }
        removed
    }

    /// Delivers one tick per elapsed tick interval since the last one (the core's contract:
    /// ticks missed while the process was paused come before any other input).
    fn catch_up_ticks(&mut self) {
        let now = crate::test_clock::now();
        let mut due = 0u32;
        while self.last_tick + TICK <= now && due < 100_000 {
            self.last_tick += TICK;
            due += 1;
        }
        if due == 100_000 {
            self.last_tick = now;
        }
        for _ in 0..due {
            self.node.tick();
            self.ticks += 1;
            if self.node.role() == Role::Leader && self.ticks.is_multiple_of(4) {
                self.reconcile();
            }
            if self.node.role() == Role::Leader && self.ticks.is_multiple_of(10) {
                self.sync_status();
            }
        }
        if self.node.role() == Role::Leader {
            self.leader_since.get_or_insert(now);
        } else {
            self.leader_since = None;
        }
        if due > 0 && self.node.role() == Role::Leader {
            self.orchestrate();
        } else if self.node.role() != Role::Leader {
            self.orch = Orchestration::default();
        }
    }

    /// A pass right after entries were applied (a failed task is replaced without waiting for
    /// the next tick), unless one ran within `ORCHESTRATE_GAP` (a busy leader then runs one
    /// per tick at most). True when the pass ran.
    fn orchestrate_now(&mut self) -> bool {
        if self.node.role() != Role::Leader
            || self.node.applied_index() == self.orch.seen
            || self
                .orch
                .last_pass
                .is_some_and(|t| t.elapsed() < ORCHESTRATE_GAP)
        {
            return false;
        }
        let passes = self.orch.passes;
        self.orchestrate();
        self.orch.passes != passes
    }

    /// One orchestrator pass when something was applied since the last one (or a timer is
    /// due), with one plan in flight at a time: its changes go out as `Command::Tasks` entries
    /// of at most `MAX_BATCH` changes.
    fn orchestrate(&mut self) {
        let applied = self.node.applied_index();
        if applied < self.node.commit_index() {
            return;
        }
        if let Some((index, term)) = self.orch.inflight {
            if term == self.node.term() && applied < index {
                return;
            }
            self.orch.inflight = None;
        }
        let now = now_ms();
        let due = self.orch.wake_at_ms.is_some_and(|w| now >= w);
        if applied == self.orch.seen && !due {
            return;
        }
        let plan = shoal_orchestrator::reconcile(
            &self.state.read().expect("state"),
            now,
            &shoal_orchestrator::Config::default(),
        );
        if !plan.changes.is_empty() {
            tracing::debug!(
                changes = plan.changes.len(),
                more = plan.more,
                applied,
                "orchestrator pass"
            );
        }
        self.orch.seen = applied;
        self.orch.last_pass = Some(Instant::now());
        self.orch.wake_at_ms = plan.wake_at_ms;
        self.orch.passes += 1;
        self.orch.changes += plan.changes.len() as u64;
        let mut last = None;
        for entry in Command::encode_task_batches(&plan.changes, now) {
            match self.node.propose(entry) {
                Ok(p) => {
                    self.proposals.insert(p.index, (p.term, None));
                    last = Some((p.index, p.term));
                }
                Err(e) => {
                    // Refused for now (e.g. a leadership transfer): look again shortly, even if
                    // nothing else is applied meanwhile.
                    tracing::debug!("task changes not proposed: {e}");
                    self.orch.wake_at_ms = Some(now + 200);
                    break;
                }
            }
        }
        self.orch.inflight = last;
    }

    /// The span of the replica as it is now: node id, term and role.
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "raft",
            node = %shoal_cluster::node_id_string(self.id),
            term = self.node.term(),
            role = ?self.node.role(),
        )
    }

    /// Removed from the group: the latest configuration excludes this node, and the cluster
    /// state agrees that it should be a worker (or no longer exists).
    fn removed(&mut self) -> bool {
        if self.removed_by_leader {
            return true;
        }
        let m = self.node.membership();
        if m.voters.contains(&self.id) || m.learners.contains(&self.id) {
            self.was_member = true;
            return false;
        }
        if !self.was_member {
            return false;
        }
        // Still needed to commit a joint change that removes it (it votes in the outgoing
        // half) — unless the leader confirmed it is out (`RaftCmd::Retire`): a node removed by
        // a joint change may never learn that the change committed, since the leader stops
        // replicating to it as soon as the final configuration is in its log.
        if m.is_joint() && !self.retired && self.node.commit_index() < self.node.last_index() {
            return false;
        }
        let st = self.state.read().expect("state");
        st.node(self.id)
            .is_none_or(|n| n.desired_role == shoal_cluster::Role::Worker)
    }

    /// Whether this node is out of the latest configuration it knows, as far as it can tell
    /// (the agent then asks the leader, and retires the replica if the leader agrees).
    pub fn leaving(&self) -> bool {
        let m = self.node.membership();
        self.was_member && !m.voters.contains(&self.id) && !m.learners.contains(&self.id)
    }

    fn handle(&mut self, cmd: RaftCmd) {
        match cmd {
            RaftCmd::Propose(c, reply) => match self.node.propose(c.encode()) {
                Ok(p) => {
                    self.proposals.insert(p.index, (p.term, Some(reply)));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            },
            RaftCmd::Read(reply) => {
                let ctx = self.next_read;
                self.next_read += 1;
                match self.node.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            RaftCmd::Retire => self.retired = true,
            RaftCmd::RemovedByLeader => self.removed_by_leader = true,
            RaftCmd::SetKeys(ring) => match self.wal.as_mut() {
                Some(w) => match w.set_keys(ring) {
                    Ok(()) => tracing::info!("the Raft data is sealed with a new data key"),
                    Err(e) => tracing::warn!("cannot change the Raft data key: {e}"),
                },
                None => tracing::warn!("cannot change the Raft data key: the WAL is busy"),
            },
            RaftCmd::KeysInUse(reply) => {
                let r = match self.wal.as_ref() {
                    Some(w) => w.key_ids_in_use().map_err(|e| e.to_string()),
                    None => Err("the WAL is busy".into()),
                };
                let _ = reply.send(r);
            }
            RaftCmd::Step(from, manager, bytes) => match wire::decode_raft(&bytes) {
                Ok(m) if m.from == from && m.to == self.id => {
                    // Raft traffic only from managers: a manager certificate, or a member of
                    // the latest configuration (a worker being promoted is a learner before
                    // it renews to a manager certificate).
                    if !manager && !self.node.membership().contains(from) {
                        self.rejected_not_member += 1;
                        tracing::debug!(from = %format!("{from:016x}"), "raft message from a node that is not a manager dropped");
                        return;
                    }
                    self.contacts.observe(from, &m.body, Instant::now());
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!("dropped raft message: {e}");
                    }
                }
                Ok(_) => {
                    self.rejected_malformed += 1;
                    tracing::debug!("raft message with a forged sender or receiver dropped")
                }
                Err(e) => {
                    self.rejected_malformed += 1;
                    tracing::debug!("{e}")
                }
            },
        }
    }

    /// Runs the core's effects until it has none: sends, WAL writes (one fsync for all batches
    /// of a round), applies, snapshots and reads.
    async fn process(&mut self) -> anyhow::Result<()> {
        loop {
            let effects = self.node.take_effects();
            if effects.is_empty() {
                break;
            }
            let mut persisted = false;
            for e in effects {
                match e {
                    Effect::Send(m) => {
                        let to = m.to;
                        let snapshot = matches!(m.body, MessageBody::Snapshot { .. });
                        let bytes = wire::encode_raft(&m);
                        if snapshot {
                            self.transport.send_snapshot(to, bytes);
                        } else {
                            self.transport.send_raft(to, bytes);
                        }
                    }
                    Effect::Persist(b) => {
                        self.wal
                            .as_mut()
                            .ok_or_else(|| anyhow::anyhow!("the WAL is gone"))?
                            .write(&b)?;
                        persisted = true;
                    }
                    Effect::Apply(entries) => self.apply(entries),
                    Effect::InstallSnapshot(s) => {
                        let restored = ClusterState::restore(&s.data)?;
                        *self.state.write().expect("state") = restored;
                        self.refresh_addrs();
                    }
                    Effect::SnapshotWanted { applied } => {
                        // The state as of the effects handled so far is the state at `applied`
                        // (the core's applied index when it asked). The core may have applied
                        // more since, in effects further down this list: labelling the snapshot
                        // with that later index would leave those entries out of it for good
                        // (a restart from it, or a follower sent it, would miss them).
                        let data = self.state.read().expect("state").snapshot();
                        if let Err(e) = self.node.snapshot_taken(applied, data) {
                            tracing::debug!("snapshot not taken: {e}");
                        }
                    }
                    Effect::ReadReady { ctx, index } => {
                        if let Some(r) = self.reads.remove(&ctx) {
                            self.ready_reads.push((index, r));
                        }
                    }
                    Effect::ReadFailed { ctx, error } => {
                        if let Some(r) = self.reads.remove(&ctx) {
                            let _ = r.send(Err(error.to_string()));
                        }
                    }
                }
            }
            if persisted {
                // fsync on a blocking thread: a slow disk must not stall the tokio workers
                // (gossip, QUIC) that share this process.
                let mut wal = self
                    .wal
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("the WAL is gone"))?;
                // Without fsync (simulations only) the sync is a write-out that costs nothing,
                // done inline so that a simulated run does not depend on a real thread's timing.
                let (wal, synced) = if self.inline_sync {
                    let r = wal.sync();
                    (wal, r)
                } else {
                    tokio::task::spawn_blocking(move || {
                        let r = wal.sync();
                        (wal, r)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("the WAL sync thread failed: {e}"))?
                };
                self.wal = Some(wal);
                let durable = synced?;
                self.wal_syncs += 1;
                self.node.on_persisted(durable);
            }
        }
        let applied = self.node.applied_index();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.ready_reads = waiting;
        for (_, r) in done {
            let _ = r.send(Ok(()));
        }
        if self.node.role() != Role::Leader && !self.reads.is_empty() {
            for (_, r) in std::mem::take(&mut self.reads) {
                let _ = r.send(Err("leadership lost before the read was confirmed".into()));
            }
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            let result = match &e.payload {
                Payload::Command(bytes) => match Command::decode(bytes) {
                    Ok(cmd) => {
                        let r = self
                            .state
                            .write()
                            .expect("state")
                            .apply(e.index, &cmd)
                            .map_err(|e| e.to_string());
                        if r.is_ok() {
                            self.after_apply(&cmd);
                        }
                        r
                    }
                    Err(err) => Err(err.to_string()),
                },
                _ => Ok(()),
            };
            if let Some((term, reply)) = self.proposals.remove(&e.index) {
                let verdict = if term == e.term {
                    result
                } else {
                    Err("the request was lost in a leader change; retry it".into())
                };
                if let Some(reply) = reply {
                    let _ = reply.send(verdict);
                }
            }
            self.inflight.retain(|_, i| *i > e.index);
            if self.conf_pending.is_some_and(|i| i <= e.index) {
                self.conf_pending = None;
            }
        }
    }

    /// Side effects of an applied command on this node's transport.
    fn after_apply(&self, cmd: &Command) {
        if let Command::RemoveNode { id, .. } = cmd {
            self.transport.deny(*id);
        }
        if let Some((id, addr)) = address_of(cmd) {
            if let Ok(a) = addr.parse() {
                self.transport.pin_peer_addr(id, a);
            }
        }
    }

    fn refresh_addrs(&self) {
        refresh_transport(&self.state.read().expect("state"), &self.transport);
    }

    fn heard_from(&self) -> BTreeSet<u64> {
        self.contacts.heard_from(self.id, Instant::now())
    }

    fn reachable(&self) -> BTreeSet<u64> {
        self.contacts.reachable(self.id, Instant::now())
    }

    /// Proposes a command on the leader's own behalf (reconciler, status sync), once per
    /// (node, kind) at a time.
    fn propose_internal(&mut self, node: u64, kind: &'static str, cmd: Command) {
        if self.inflight.contains_key(&(node, kind)) {
            return;
        }
        if let Ok(p) = self.node.propose(cmd.encode()) {
            self.inflight.insert((node, kind), p.index);
            self.proposals.insert(p.index, (p.term, None));
        }
    }

    fn reconcile(&mut self) {
        let membership = self.node.membership().clone();
        let matched = membership
            .members()
            .into_iter()
            .filter(|m| *m != self.id)
            .map(|m| (m, self.node.progress(m).map_or(0, |(matched, _)| matched)))
            .collect();
        let view = RaftView {
            leader: self.id,
            conf_change_pending: self
                .conf_pending
                .is_some_and(|i| i > self.node.commit_index()),
            membership,
            last_index: self.node.last_index(),
            matched,
            reachable: self.reachable(),
            max_lag: self.max_lag,
        };
        let plan = reconcile(&self.state.read().expect("state"), &view);
        for a in plan.actions {
            let conf = match a {
                Action::AddLearner(n) => Some(ConfChange::AddLearner(n)),
                Action::PromoteVoter(n) => Some(ConfChange::AddVoter(n)),
                Action::RemoveFromRaft(n) => Some(ConfChange::RemoveNode(n)),
                Action::TransferLeadership(to) => {
                    if self.node.transfer_target().is_none() {
                        tracing::info!(to = %format!("{to:016x}"), "handing leadership over before demotion");
                        let _ = self.node.transfer_leadership(to);
                    }
                    None
                }
                Action::SetObservedRole(n, role) => {
                    self.propose_internal(
                        n,
                        "role",
                        Command::SetObservedRole {
                            id: n,
                            role,
                            at_ms: now_ms(),
                        },
                    );
                    None
                }
            };
            if let Some(c) = conf {
                match self.node.propose_conf_change(std::slice::from_ref(&c)) {
                    Ok(p) => {
                        tracing::info!(change = ?c, "configuration change proposed");
                        self.conf_pending = Some(p.index);
                    }
                    Err(e) => tracing::debug!(change = ?c, "configuration change refused: {e}"),
                }
            }
        }
    }

    /// The leader records liveness changes that membership observed: alive → Ready, failed →
    /// Down, left → Down with a message.
    fn sync_status(&mut self) {
        let abandoned: Vec<u64> = {
            let st = self.state.read().expect("state");
            let view = self.view.lock().expect("view");
            let now = now_ms();
            st.nodes()
                .values()
                .filter(|n| {
                    n.is_joining()
                        && !view.contains_key(&n.id)
                        && now.saturating_sub(n.created_at_ms) > JOIN_ABANDONED_MS
                })
                .map(|n| n.id)
                .collect()
        };
        for id in abandoned {
            tracing::info!(node = %format!("{id:016x}"), "admitted node never connected: removing it");
            self.propose_internal(
                id,
                "abandoned",
                Command::RemoveNode {
                    id,
                    at_ms: now_ms(),
                },
            );
        }
        let wanted: Vec<(u64, NodeStatus)> = {
            let st = self.state.read().expect("state");
            let view = self.view.lock().expect("view");
            st.nodes()
                .values()
                .filter_map(|n| {
                    let want = if n.id == self.id {
                        NodeStatus {
                            state: NodeState::Ready,
                            message: String::new(),
                        }
                    } else {
                        let m = view.get(&n.id)?;
                        match m.state {
                            State::Alive => NodeStatus {
                                state: NodeState::Ready,
                                message: String::new(),
                            },
                            // Suspected: no change here. Either membership confirms (Dead) or
                            // refutes (Alive), or the leader's own check finds the node silent
                            // and records it Down earlier (`Member::check_suspects`).
                            State::Suspect if n.status.state == NodeState::Unknown => NodeStatus {
                                state: NodeState::Ready,
                                message: String::new(),
                            },
                            State::Suspect => return None,
                            State::Dead => NodeStatus {
                                state: NodeState::Down,
                                message: "heartbeat failure".into(),
                            },
                            State::Left => NodeStatus {
                                state: NodeState::Down,
                                message: "node left the swarm".into(),
                            },
                        }
                    };
                    (n.status != want).then_some((n.id, want))
                })
                .collect()
        };
        // A new leader's membership view may still hold what it believed while it was cut off
        // (members dead that have long refuted it): for a grace period it records no node Down,
        // so that a leader change never replaces healthy nodes' tasks.
        let fresh = self
            .leader_since
            .is_some_and(|t| t.elapsed() < NEW_LEADER_GRACE);
        for (id, status) in wanted {
            if fresh && status.state == NodeState::Down {
                continue;
            }
            if !self.inflight.contains_key(&(id, "status")) {
                tracing::info!(node = %shoal_cluster::node_id_string(id), state = %status.state, message = %status.message, "recording a node's status");
            }
            self.propose_internal(
                id,
                "status",
                Command::SetStatus {
                    id,
                    status,
                    at_ms: now_ms(),
                },
            );
        }
    }

    fn publish(&mut self, stopped: bool) {
        let leader = self.node.role() == Role::Leader;
        let last_index = self.node.last_index();
        let lag = if leader {
            let m = self.node.membership();
            m.voters
                .iter()
                .chain(&m.outgoing)
                .chain(&m.learners)
                .filter(|&&p| p != self.id)
                .filter_map(|&p| {
                    let (matched, _) = self.node.progress(p)?;
                    Some((p, last_index.saturating_sub(matched)))
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let stats = self.node.stats();
        let status = RaftStatus {
            last_index,
            is_leader: leader,
            lag,
            elections: stats.elections,
            failed: self.failed.clone(),
            rejected_not_member: self.rejected_not_member,
            rejected_malformed: self.rejected_malformed,
            rejected_snapshots: stats.snapshots_rejected,
            leaderships: stats.leaderships,
            snapshots_installed: stats.snapshots_installed,
            wal_syncs: self.wal_syncs,
            proposals_pending: self.proposals.len(),
            leader: self.node.leader(),
            term: self.node.term(),
            vote: self.node.vote(),
            commit: self.node.commit_index(),
            applied: self.node.applied_index(),
            membership: self.node.membership().clone(),
            reachable: if leader {
                self.reachable()
            } else {
                BTreeSet::new()
            },
            heard_from: self.heard_from(),
            stopped,
            leaving: self.leaving(),
        };
        self.status_tx.send_replace(status);
    }

    fn fail_all(&mut self, why: &str) {
        for (_, (_, r)) in std::mem::take(&mut self.proposals) {
            if let Some(r) = r {
                let _ = r.send(Err(why.to_string()));
            }
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            let _ = r.send(Err(why.to_string()));
        }
        for (_, r) in std::mem::take(&mut self.ready_reads) {
            let _ = r.send(Err(why.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_command_that_places_a_node_gives_its_address() {
        use shoal_cluster::{ClusterInfo, NewNode, NodeDescription, RequestId, Role};
        let node = |id: u64| NewNode {
            id,
            description: NodeDescription::default(),
            addr: format!("127.0.0.1:{}", 4000 + id),
            labels: BTreeMap::new(),
            desired_role: Role::Manager,
        };
        let init = Command::Init {
            cluster: ClusterInfo {
                id: "0".repeat(32),
                created_at_ms: 1,
                ca_pem: String::new(),
                worker_token: String::new(),
                manager_token: String::new(),
                unlock_key: String::new(),
            },
            node: node(1),
            at_ms: 1,
        };
        // The first node's address is in `Init` only: a manager restarted before the first
        // snapshot must learn it there.
        assert_eq!(address_of(&init), Some((1, "127.0.0.1:4001")));
        assert_eq!(
            address_of(&Command::AddNode {
                node: node(2),
                at_ms: 1
            }),
            Some((2, "127.0.0.1:4002"))
        );
        let update = Command::UpdateDescription {
            id: 3,
            description: NodeDescription::default(),
            addr: "127.0.0.1:4003".into(),
            at_ms: 1,
        };
        assert_eq!(address_of(&update), Some((3, "127.0.0.1:4003")));
        assert_eq!(
            address_of(&Command::Tracked {
                id: RequestId { client: 1, seq: 1 },
                cmd: Box::new(update),
            }),
            Some((3, "127.0.0.1:4003"))
        );
        // An admission is pinned only once the node registers from where it really is.
        let admit = Command::AdmitNode {
            node: node(4),
            secret: "0".repeat(32),
            at_ms: 1,
        };
        assert_eq!(address_of(&admit), None);
    }

    #[test]
    fn reachable_needs_an_answer_to_our_own_messages() {
        let t0 = Instant::now();
        let mut c = Contacts::default();
        // A restarted peer campaigns: its pre-votes and votes reach us, ours may not reach it.
        c.observe(
            2,
            &MessageBody::PreVote {
                last_log_index: 5,
                last_log_term: 1,
            },
            t0,
        );
        c.observe(
            2,
            &MessageBody::Vote {
                last_log_index: 5,
                last_log_term: 1,
                transfer: false,
            },
            t0,
        );
        // Another leader's append (a stale one) is inbound traffic too.
        c.observe(3, &MessageBody::Heartbeat { commit: 1, seq: 1 }, t0);
        assert_eq!(
            c.reachable(1, t0),
            BTreeSet::from([1]),
            "inbound alone is not reachable"
        );
        assert_eq!(c.heard_from(1, t0), BTreeSet::from([1, 2, 3]));
        // Answers to our heartbeats and appends are.
        c.observe(2, &MessageBody::HeartbeatResp { seq: 7 }, t0 + ms(100));
        c.observe(
            3,
            &MessageBody::AppendResp {
                success: true,
                match_index: 9,
                hint_index: 0,
                hint_term: 0,
                seq: 7,
            },
            t0 + ms(100),
        );
        assert_eq!(c.reachable(1, t0 + ms(100)), BTreeSet::from([1, 2, 3]));
        // Each lasts an election timeout (the longest, 1 s); hearing lasts twice that.
        assert_eq!(c.reachable(1, t0 + ms(1099)), BTreeSet::from([1, 2, 3]));
        assert_eq!(c.reachable(1, t0 + ms(1100)), BTreeSet::from([1]));
        assert_eq!(c.heard_from(1, t0 + ms(2099)), BTreeSet::from([1, 2, 3]));
        assert_eq!(c.heard_from(1, t0 + ms(2100)), BTreeSet::from([1]));
        // A snapshot chunk's answer counts as well.
        c.observe(
            2,
            &MessageBody::SnapshotResp {
                index: 9,
                next_offset: 0,
                done: false,
                seq: 8,
            },
            t0 + ms(3000),
        );
        assert_eq!(c.reachable(1, t0 + ms(3000)), BTreeSet::from([1, 2]));
    }
}
