//! A small, deterministic test cluster for the `shoal-raft` core.
//!
//! [`Cluster`] owns a set of [`RaftNode`]s, each with its own [`MemStorage`], an in-memory state
//! machine log (what the node handed over with `Effect::Apply`) and a single FIFO message queue
//! shared by all nodes. Nothing here reads a clock or a random source: time advances only when a
//! test calls [`Cluster::tick`] / [`Cluster::tick_all`], and messages move only when a test calls
//! [`Cluster::deliver_all`] / [`Cluster::deliver_one`].
//!
//! Effects are processed right after every input given to a node:
//! * `Send` puts the message in the queue (unless the link is cut, see [`Cluster::isolate`],
//!   [`Cluster::partition`], [`Cluster::drop_link`]);
//! * `Persist` writes the batch to the node's storage and, unless the node has a slow disk
//!   ([`Cluster::set_slow_disk`]), syncs it at once and reports it with `on_persisted`;
//!   a slow-disk node keeps batches pending until [`Cluster::sync`];
//! * `Apply` appends the entries to the node's applied list ([`Cluster::applied`]);
//! * `InstallSnapshot` clears that list and records the snapshot ([`Cluster::installed`]);
//! * `SnapshotWanted`, `ReadReady` and `ReadFailed` are recorded in [`Cluster::events`].
//!
//! Defaults: `Config::new(id)` with `election_tick = 10` and `heartbeat_tick = 1`; other fields
//! (pre-vote, check-quorum, seed = id, ...) keep the core's defaults unless the closure passed to
//! [`Cluster::with_config`] changes them.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use shoal_raft::{
    Config, Effect, Entry, InvalidMessage, MemStorage, Message, MessageBody, NodeId, Proposal,
    ProposeError, RaftNode, ReadMode, RecoveredState, Role, Snapshot, Storage,
};

/// Upper bound on messages handled by one [`Cluster::deliver_all`], to turn a livelock into a
/// test failure instead of a hang.
pub const MAX_DELIVERIES: usize = 1_000_000;

/// A closure adjusting each node's configuration (applied after the harness defaults).
pub type ConfigFn = Box<dyn Fn(&mut Config)>;

/// A message filter: called on every message about to be delivered; return `false` to drop it.
/// It may also modify the message.
pub type Filter = Box<dyn FnMut(&mut Message) -> bool>;

/// One member of the test cluster: the core (absent while crashed), its disk and its state machine.
pub struct Peer {
    /// The Raft core; `None` while the node is crashed.
    pub node: Option<RaftNode>,
    /// The node's durable storage.
    pub storage: MemStorage,
    /// Entries handed to the state machine since the last start or snapshot install.
    pub applied: Vec<Entry>,
    /// The last snapshot installed into the state machine (at start or from the leader).
    pub installed: Option<Snapshot>,
    /// Recorded `SnapshotWanted`, `ReadReady` and `ReadFailed` effects, in order.
    pub events: Vec<Effect>,
    /// When true, Persist batches are written but only made durable by [`Cluster::sync`].
    pub slow_disk: bool,
    /// Errors returned by `step` for messages delivered to this node.
    pub step_errors: Vec<InvalidMessage>,
    /// Every message this node emitted, including those lost to cut links.
    pub sent: Vec<Message>,
}

/// A deterministic in-memory Raft cluster. See the module documentation.
pub struct Cluster {
    peers: BTreeMap<NodeId, Peer>,
    queue: VecDeque<Message>,
    cut: BTreeSet<(NodeId, NodeId)>,
    filter: Option<Filter>,
    configure: ConfigFn,
    /// Every message handed to a node's `step` so far (after filtering), in delivery order.
    pub delivered: Vec<Message>,
}

impl Cluster {
    /// A cluster whose founding voters are `ids`, with the default harness configuration.
    pub fn new(ids: &[NodeId]) -> Self {
        Self::with_config(ids, |_| {})
    }

    /// A cluster whose founding voters are `ids`; `configure` adjusts every node's [`Config`]
    /// (also for nodes restarted or added later).
    pub fn with_config(ids: &[NodeId], configure: impl Fn(&mut Config) + 'static) -> Self {
        let states = ids
            .iter()
            .map(|&id| (id, RecoveredState::bootstrap(ids.iter().copied())))
            .collect();
        Self::from_states(states, configure)
    }

    /// A cluster whose nodes start from explicit durable states (logs, hard states, snapshots),
    /// e.g. to reproduce a figure of the Raft paper.
    pub fn from_states(
        states: Vec<(NodeId, RecoveredState)>,
        configure: impl Fn(&mut Config) + 'static,
    ) -> Self {
        let mut c = Cluster {
            peers: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            filter: None,
            configure: Box::new(configure),
            delivered: Vec::new(),
        };
        for (id, state) in states {
            c.start_peer(id, state);
        }
        c
    }

    /// The configuration a node `id` of this cluster gets.
    pub fn config(&self, id: NodeId) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_tick = 10;
        cfg.heartbeat_tick = 1;
        (self.configure)(&mut cfg);
        cfg
    }

    fn start_peer(&mut self, id: NodeId, state: RecoveredState) {
        assert!(!self.peers.contains_key(&id), "node {id} already exists");
        let node = RaftNode::new(self.config(id), state.clone()).expect("node starts");
        self.peers.insert(
            id,
            Peer {
                node: Some(node),
                storage: MemStorage::new(state),
                applied: Vec::new(),
                installed: None,
                events: Vec::new(),
                slow_disk: false,
                step_errors: Vec::new(),
                sent: Vec::new(),
            },
        );
        self.process(id);
    }

    /// Adds a node that starts empty (`RecoveredState::default()`), as a node joining the group
    /// does; it becomes a member once a configuration change adds it.
    pub fn add_node(&mut self, id: NodeId) {
        self.start_peer(id, RecoveredState::default());
    }

    // ------------------------------------------------------------------ inspection

    /// Ids of all nodes (crashed or not).
    pub fn ids(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// Ids of the nodes currently running.
    pub fn live_ids(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.node.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// True if node `id` is running (not crashed).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.peer(id).node.is_some()
    }

    /// The peer record of `id` (storage, applied entries, events...).
    pub fn peer(&self, id: NodeId) -> &Peer {
        self.peers
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Mutable peer record of `id`. Prefer the dedicated methods; effects produced by direct
    /// calls on `peer_mut(id).node` are not processed until [`Cluster::process`] is called.
    pub fn peer_mut(&mut self, id: NodeId) -> &mut Peer {
        self.peers
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The Raft core of `id`. Panics if the node is crashed.
    pub fn node(&self, id: NodeId) -> &RaftNode {
        self.peer(id)
            .node
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is crashed"))
    }

    /// Mutable access to the core of `id`. Effects produced by calls made through it are
    /// processed at the next [`Cluster::process`] (or any other input to that node).
    pub fn node_mut(&mut self, id: NodeId) -> &mut RaftNode {
        self.peer_mut(id)
            .node
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is crashed"))
    }

    /// The node's durable storage.
    pub fn storage(&self, id: NodeId) -> &MemStorage {
        &self.peer(id).storage
    }

    /// Entries node `id`'s state machine received (reset by a snapshot install or a restart).
    pub fn applied(&self, id: NodeId) -> Vec<Entry> {
        self.peer(id).applied.clone()
    }

    /// The command payloads among [`Cluster::applied`] (no-ops and configurations skipped).
    pub fn applied_commands(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.peer(id)
            .applied
            .iter()
            .filter_map(|e| match &e.payload {
                shoal_raft::Payload::Command(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    /// The last snapshot installed into node `id`'s state machine, if any.
    pub fn installed(&self, id: NodeId) -> Option<&Snapshot> {
        self.peer(id).installed.as_ref()
    }

    /// Recorded `SnapshotWanted` / `ReadReady` / `ReadFailed` effects of node `id`.
    pub fn events(&self, id: NodeId) -> &[Effect] {
        &self.peer(id).events
    }

    /// The retained log of node `id` (entries after its snapshot point).
    pub fn log(&self, id: NodeId) -> Vec<Entry> {
        self.node(id).entries().to_vec()
    }

    /// `(index, term)` of every retained entry of node `id`.
    pub fn log_terms(&self, id: NodeId) -> Vec<(u64, u64)> {
        self.node(id)
            .entries()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    /// The running node in the Leader role with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.peers
            .iter()
            .filter_map(|(&id, p)| p.node.as_ref().map(|n| (id, n)))
            .filter(|(_, n)| n.role() == Role::Leader)
            .max_by_key(|(_, n)| n.term())
            .map(|(id, _)| id)
    }

    /// Messages waiting in the network queue, oldest first.
    pub fn queued(&self) -> &VecDeque<Message> {
        &self.queue
    }

    /// Removes and returns every queued message (nothing is delivered).
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.queue.drain(..).collect()
    }

    /// Removes and returns the queued messages sent by `from` (others stay queued).
    pub fn take_messages_from(&mut self, from: NodeId) -> Vec<Message> {
        let (mine, rest): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|m| m.from == from);
        self.queue = rest.into();
        mine
    }

    /// Errors returned by `step` on node `id` so far.
    pub fn step_errors(&self, id: NodeId) -> &[InvalidMessage] {
        &self.peer(id).step_errors
    }

    // ------------------------------------------------------------------ network

    /// Puts a message in the queue as if it had been sent (subject to cut links and the filter
    /// at delivery time).
    pub fn send(&mut self, m: Message) {
        self.queue.push_back(m);
    }

    /// Drops every queued message.
    pub fn clear_queue(&mut self) {
        self.queue.clear();
    }

    /// Installs a filter called on every message about to be delivered: return `false` to drop
    /// the message; the filter may also modify it. Replaces any previous filter.
    pub fn set_filter(&mut self, f: impl FnMut(&mut Message) -> bool + 'static) {
        self.filter = Some(Box::new(f));
    }

    /// Removes the filter.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Cuts every link to and from `id` (messages already queued on those links are lost too).
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Splits the cluster: nodes in different groups cannot exchange messages. Nodes not listed
    /// in any group are cut off from everybody. Replaces previous cuts.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.cut.clear();
        let group_of = |id: NodeId| groups.iter().position(|g| g.contains(&id));
        let ids = self.ids();
        for &a in &ids {
            for &b in &ids {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    /// Cuts the one-way link `from -> to`.
    pub fn drop_link(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Restores the one-way link `from -> to`.
    pub fn restore_link(&mut self, from: NodeId, to: NodeId) {
        self.cut.remove(&(from, to));
    }

    /// Restores every link (the filter, if any, stays).
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// True if messages from `from` can currently reach `to`.
    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Delivers the oldest queued message, if any; returns it (as delivered) or `None` if the
    /// queue is empty. A message dropped by a cut link, a crashed receiver or the filter is
    /// returned as `Some` too, but is not stepped (check [`Cluster::delivered`]).
    pub fn deliver_one(&mut self) -> Option<Message> {
        let mut m = self.queue.pop_front()?;
        if !self.link_up(m.from, m.to) {
            return Some(m);
        }
        let up = self.peers.get(&m.to).is_some_and(|p| p.node.is_some());
        if !up {
            return Some(m);
        }
        if let Some(f) = self.filter.as_mut() {
            if !f(&mut m) {
                return Some(m);
            }
        }
        self.delivered.push(m.clone());
        // Invalid messages are recorded in `step_errors`; delivery goes on.
        let _ = self.step(m.to, m.clone());
        Some(m)
    }

    /// Delivers messages (and everything they cause) until the queue is empty.
    pub fn deliver_all(&mut self) {
        let mut n = 0;
        while self.deliver_one().is_some() {
            n += 1;
            assert!(n < MAX_DELIVERIES, "deliver_all did not quiesce");
        }
    }

    /// Steps message `m` directly into node `to` (bypassing queue, links and filter) and
    /// processes the resulting effects. Returns what `step` returned; errors are also recorded.
    pub fn step(&mut self, to: NodeId, m: Message) -> Result<(), InvalidMessage> {
        let r = self.node_mut(to).step(m);
        if let Err(e) = &r {
            self.peer_mut(to).step_errors.push(e.clone());
        }
        self.process(to);
        r
    }

    // ------------------------------------------------------------------ time and requests

    /// One tick on node `id` (messages it sends are queued, not delivered).
    pub fn tick(&mut self, id: NodeId) {
        self.node_mut(id).tick();
        self.process(id);
    }

    /// `n` ticks on node `id` (no delivery in between).
    pub fn tick_n(&mut self, id: NodeId, n: usize) {
        for _ in 0..n {
            self.tick(id);
        }
    }

    /// `n` rounds of: tick every running node once, then [`Cluster::deliver_all`].
    pub fn tick_all(&mut self, n: usize) {
        for _ in 0..n {
            for id in self.live_ids() {
                self.tick(id);
            }
            self.deliver_all();
        }
    }

    /// Proposes a command on node `id` (queued messages are not delivered).
    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<Proposal, ProposeError> {
        let r = self.node_mut(id).propose(data.to_vec());
        self.process(id);
        r
    }

    /// Requests a linearizable read on node `id`; the outcome shows up in [`Cluster::events`].
    pub fn read_index(&mut self, id: NodeId, ctx: u64) -> Result<(), shoal_raft::ReadError> {
        let r = self.node_mut(id).read_index(ctx);
        self.process(id);
        r
    }

    /// Ticks `id` until it starts a campaign (sends a pre-vote or vote request, or becomes leader
    /// on its own). Campaign messages stay queued. Panics if nothing happens within
    /// `3 * election_tick` ticks.
    pub fn campaign(&mut self, id: NodeId) {
        let limit = 3 * self.config(id).election_tick as usize;
        let elections = self.node(id).stats().elections;
        for _ in 0..limit {
            let before = self.peer(id).sent.len();
            self.tick(id);
            let asked = self.peer(id).sent.iter().skip(before).any(|m| {
                m.from == id
                    && matches!(
                        m.body,
                        MessageBody::PreVote { .. } | MessageBody::Vote { .. }
                    )
            });
            let n = self.node(id);
            if asked || n.role() == Role::Leader || n.stats().elections > elections {
                return;
            }
        }
        panic!("node {id} did not campaign within {limit} ticks");
    }

    /// Makes `id` the leader, deterministically: the other running followers that know a leader
    /// (in lease mode: all running followers) are first ticked `election_tick` times (their outgoing messages dropped) so that their
    /// leader lease (check-quorum stickiness) expires without a competing campaign reaching
    /// anyone; then only `id` is ticked until it campaigns, and messages are delivered. Repeats
    /// a few times if the election is lost or split. Panics if `id` cannot win (e.g. its log is
    /// behind a majority or it is partitioned away).
    pub fn elect(&mut self, id: NodeId) {
        if self.node(id).role() == Role::Leader {
            self.deliver_all();
            if self.node(id).role() == Role::Leader {
                return;
            }
        }
        let e = self.config(id).election_tick as usize;
        for _attempt in 0..5 {
            for other in self.live_ids() {
                let n = self.node(other);
                // In lease mode a node also refuses votes for a timeout after it starts.
                let lease = self.config(other).read_mode == ReadMode::Lease;
                if other != id && n.role() == Role::Follower && (n.leader().is_some() || lease) {
                    for _ in 0..e {
                        self.tick(other);
                        let _ = self.take_messages_from(other);
                    }
                }
            }
            self.campaign(id);
            self.deliver_all();
            if self.node(id).role() == Role::Leader {
                return;
            }
        }
        let n = self.node(id);
        panic!(
            "node {id} could not be elected (role {:?}, term {})",
            n.role(),
            n.term()
        );
    }

    // ------------------------------------------------------------------ disks and crashes

    /// Gives node `id` a slow disk (`true`): its Persist batches stay pending until
    /// [`Cluster::sync`]. Turning it off does not sync what is pending.
    pub fn set_slow_disk(&mut self, id: NodeId, slow: bool) {
        self.peer_mut(id).slow_disk = slow;
    }

    /// Makes every pending batch of node `id` durable and reports it to the core.
    pub fn sync(&mut self, id: NodeId) {
        let peer = self.peer_mut(id);
        if peer.storage.pending() == 0 {
            return;
        }
        let Ok(seq) = peer.storage.sync();
        if let Some(node) = peer.node.as_mut() {
            node.on_persisted(seq);
        }
        self.process(id);
    }

    /// Crashes node `id`: pending (unsynced) writes are lost, its state machine is lost, and
    /// messages to it are dropped until [`Cluster::restart`].
    pub fn crash(&mut self, id: NodeId) {
        self.crash_keeping(id, 0);
    }

    /// Crashes node `id`, but the first `survive` pending batches reach the disk anyway.
    pub fn crash_keeping(&mut self, id: NodeId, survive: usize) {
        let peer = self.peer_mut(id);
        peer.storage.crash(survive);
        peer.node = None;
        peer.applied.clear();
        peer.installed = None;
    }

    /// Restarts a crashed node from what its storage recovers (same configuration). Its state
    /// machine starts empty ([`Cluster::applied`] is cleared); the slow-disk setting, recorded
    /// events, sent messages and step errors are kept.
    pub fn restart(&mut self, id: NodeId) {
        let cfg = self.config(id);
        let peer = self.peer_mut(id);
        assert!(peer.node.is_none(), "node {id} is running; crash it first");
        let Ok(state) = peer.storage.recover();
        peer.node = Some(RaftNode::new(cfg, state).expect("restarted node starts"));
        peer.applied.clear();
        peer.installed = None;
        self.process(id);
    }

    /// Processes every effect node `id` has produced so far (called by all harness inputs; call
    /// it yourself after using [`Cluster::node_mut`] directly).
    pub fn process(&mut self, id: NodeId) {
        loop {
            let peer = self.peers.get_mut(&id).expect("node exists");
            let Some(node) = peer.node.as_mut() else {
                return;
            };
            let effects = node.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Send(m) => {
                        self.peers
                            .get_mut(&id)
                            .expect("node exists")
                            .sent
                            .push(m.clone());
                        if !self.cut.contains(&(m.from, m.to)) {
                            self.queue.push_back(m);
                        }
                    }
                    Effect::Persist(batch) => {
                        let peer = self.peers.get_mut(&id).expect("node exists");
                        let Ok(()) = peer.storage.write(&batch);
                        if !peer.slow_disk {
                            let Ok(seq) = peer.storage.sync();
                            peer.node.as_mut().expect("running").on_persisted(seq);
                        }
                    }
                    Effect::Apply(entries) => {
                        let peer = self.peers.get_mut(&id).expect("node exists");
                        peer.applied.extend(entries);
                    }
                    Effect::InstallSnapshot(s) => {
                        let peer = self.peers.get_mut(&id).expect("node exists");
                        peer.applied.clear();
                        peer.installed = Some(s);
                    }
                    other => {
                        let peer = self.peers.get_mut(&id).expect("node exists");
                        peer.events.push(other);
                    }
                }
            }
        }
    }
}

/// Builds a message from `from` to `to` in `term`.
pub fn msg(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// Builds an entry with a command payload (`data` = the index as bytes) for hand-made logs.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        payload: shoal_raft::Payload::Command(index.to_le_bytes().to_vec()),
    }
}

/// A founding member's durable state with an explicit log: `terms[i]` is the term of the entry
/// at index `i + 1`; the hard state's term is `term` (at least the last entry's term), no vote,
/// commit `commit`.
pub fn state_with_log(voters: &[NodeId], terms: &[u64], term: u64, commit: u64) -> RecoveredState {
    let mut s = RecoveredState::bootstrap(voters.iter().copied());
    s.entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t))
        .collect();
    let last = terms.last().copied().unwrap_or(0);
    s.hard_state.term = term.max(last);
    s.hard_state.commit = commit;
    s
}
