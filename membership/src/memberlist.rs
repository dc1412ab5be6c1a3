//! The member list: state, inputs, timers, and the send path that piggybacks updates.
//! Protocol parts live in `members` (state transitions), `probe` (failure detection) and
//! `sync` (join, push-pull, reconnect, leave).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::awareness::Awareness;
use crate::broadcast::{retransmit_limit, Broadcasts};
use crate::config::Config;
use crate::error::{ConfigError, DecodeError, JoinError, MetaError};
use crate::message::{self, Message, Update, MAX_UPDATES_PER_PACKET};
use crate::probe::{IndirectProbe, Probe};
use crate::rng::Rng;
use crate::suspicion::Suspicion;
use crate::types::{Addr, Incarnation, Member, NodeId, NodeInfo, State, MAX_ADDR_LEN};

/// A change in the membership, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member was heard of for the first time, or came back after failing or leaving
    /// (with a higher incarnation).
    Joined(Member),
    /// A live member announced a new address or new metadata.
    Updated(Member),
    /// A member is suspected of having failed.
    Suspected(Member),
    /// A member was declared failed.
    Failed(Member),
    /// A member left gracefully.
    Left(Member),
    /// A suspected member refuted the suspicion and is alive.
    Alive(Member),
}

impl MemberEvent {
    /// The member the event is about, as it was right after the change.
    pub fn member(&self) -> &Member {
        match self {
            MemberEvent::Joined(m)
            | MemberEvent::Updated(m)
            | MemberEvent::Suspected(m)
            | MemberEvent::Failed(m)
            | MemberEvent::Left(m)
            | MemberEvent::Alive(m) => m,
        }
    }
}

/// What the driver must do on behalf of the core, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send one datagram (best effort; SWIM tolerates loss).
    Send {
        /// The destination.
        to: Addr,
        /// The encoded packet, at most `Config::gossip_packet_size` bytes.
        bytes: Vec<u8>,
    },
    /// Report a membership change.
    Event(MemberEvent),
}

/// Counters for observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Direct probes (pings) started by this node.
    pub probes: u64,
    /// Acks received for this node's probes, direct or forwarded.
    pub acks: u64,
    /// Nacks received from indirect probers.
    pub nacks: u64,
    /// Probes that ended without an ack.
    pub failed_probes: u64,
    /// Failed probes that were inconclusive (some indirect prober did not nack), so the
    /// target was probed again before being suspected.
    pub inconclusive_probes: u64,
    /// Indirect probe requests (ping-req) sent.
    pub indirect_probes: u64,
    /// Indirect probe requests served for others.
    pub indirect_probes_served: u64,
    /// Members this node started to suspect (its own probes or gossip).
    pub suspicions: u64,
    /// Members this node declared failed, or learned were declared failed.
    pub failures: u64,
    /// Suspicions (or death notices) about this node that it refuted.
    pub refutations: u64,
    /// Push-pull exchanges this node started (join, periodic, reconnect).
    pub push_pulls: u64,
    /// Packets sent.
    pub messages_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Packets received.
    pub messages_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Packets dropped because they did not decode or could not be valid.
    pub decode_errors: u64,
    /// Members ignored because the table was full (`Config::max_members`).
    pub rejected_members: u64,
}

/// Most indirect probes served for others at once; requests beyond are dropped.
pub(crate) const MAX_INDIRECT_IN_FLIGHT: usize = 64;

/// A SWIM + Lifeguard member as a pure state machine: feed it ticks, packets, joins and leaves;
/// drain its effects (packets to send, membership events).
pub struct Memberlist {
    pub(crate) cfg: Config,
    pub(crate) id: NodeId,
    pub(crate) rng: Rng,
    pub(crate) now: Duration,
    /// Every member known, this node included.
    pub(crate) members: BTreeMap<NodeId, Member>,
    /// How many of `members` are live (alive or suspect), kept up to date by every state change
    /// so that the protocol's `n` costs nothing per packet.
    pub(crate) live: usize,
    // failure detection
    pub(crate) probe_order: Vec<NodeId>,
    pub(crate) probe_index: usize,
    /// Ids of the live members, this node included, sorted: the ring of the aligned schedule.
    pub(crate) ring: Vec<NodeId>,
    /// The round of this node's next probe (`Config::aligned_rounds`), compared in
    /// serial-number arithmetic.
    pub(crate) round: u32,
    /// A member to probe next instead of the scheduled one (a suspect just heard of).
    pub(crate) probe_next: Option<NodeId>,
    /// A member whose last probe was inconclusive, probed again next period.
    pub(crate) recheck: Option<NodeId>,
    pub(crate) probe: Option<Probe>,
    pub(crate) next_probe_at: Duration,
    pub(crate) indirect: BTreeMap<u32, IndirectProbe>,
    pub(crate) next_seq: u32,
    pub(crate) suspicions: BTreeMap<NodeId, Suspicion>,
    pub(crate) awareness: Awareness,
    // dissemination
    pub(crate) broadcasts: Broadcasts,
    pub(crate) next_gossip_at: Duration,
    pub(crate) next_push_pull_at: Duration,
    /// Extra push-pulls still due after joining (`JOIN_SYNCS`), before the periodic ones.
    pub(crate) join_syncs_left: u32,
    pub(crate) next_reconnect_at: Duration,
    /// When each member held dead was last sent a push-pull on a sign of life
    /// ([`Memberlist::sign_of_life`]), for the rate limit.
    pub(crate) revived_at: BTreeMap<NodeId, Duration>,
    // join and leave
    pub(crate) seeds: Vec<Addr>,
    pub(crate) joining: bool,
    pub(crate) next_join_at: Duration,
    pub(crate) left: bool,
    pub(crate) effects: Vec<Effect>,
    pub(crate) stats: Stats,
}

impl Memberlist {
    /// Starts a member that knows only itself (alive, incarnation 0). `seed` fixes every random
    /// choice it will make. Call [`Memberlist::join`] to reach a cluster.
    pub fn new(cfg: Config, local: NodeInfo, seed: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if local.addr.is_empty() || local.addr.len() > MAX_ADDR_LEN {
            return Err(ConfigError(format!(
                "local address must be 1 to {MAX_ADDR_LEN} bytes"
            )));
        }
        if local.meta.len() > cfg.max_meta_size {
            return Err(ConfigError(format!(
                "local metadata of {} bytes exceeds max_meta_size ({})",
                local.meta.len(),
                cfg.max_meta_size
            )));
        }
        let mut rng = Rng::new(seed ^ local.id.0.wrapping_mul(0xA24B_AED4_963E_E407));
        // Random phases, so that members started together do not probe and gossip in lockstep.
        let next_probe_at = rng.duration_below(cfg.protocol_period);
        let next_gossip_at = rng.duration_below(cfg.gossip_interval);
        let next_push_pull_at = cfg.push_pull_interval + rng.duration_below(cfg.push_pull_interval);
        let next_reconnect_at = cfg.reconnect_interval + rng.duration_below(cfg.reconnect_interval);
        let me = Member {
            id: local.id,
            addr: local.addr,
            meta: local.meta,
            incarnation: 0,
            state: State::Alive,
            state_changed_at: Duration::ZERO,
        };
        Ok(Memberlist {
            awareness: Awareness::new(cfg.awareness_max, cfg.lifeguard),
            id: local.id,
            rng,
            now: Duration::ZERO,
            members: BTreeMap::from([(local.id, me)]),
            live: 1,
            probe_order: Vec::new(),
            probe_index: 0,
            ring: vec![local.id],
            round: 0,
            probe_next: None,
            recheck: None,
            probe: None,
            next_probe_at,
            indirect: BTreeMap::new(),
            next_seq: 0,
            suspicions: BTreeMap::new(),
            broadcasts: Broadcasts::default(),
            next_gossip_at,
            next_push_pull_at,
            join_syncs_left: 0,
            next_reconnect_at,
            revived_at: BTreeMap::new(),
            seeds: Vec::new(),
            joining: false,
            next_join_at: Duration::ZERO,
            left: false,
            effects: Vec::new(),
            stats: Stats::default(),
            cfg,
        })
    }

    // ---------------------------------------------------------------- accessors

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This node's own record (address, metadata, incarnation).
    pub fn local(&self) -> &Member {
        &self.members[&self.id]
    }

    /// Every member known, this node included, dead and left ones until they are reaped;
    /// ordered by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> + '_ {
        self.members.values()
    }

    /// One member, if known.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// How many members are believed alive (alive or suspect), this node included unless it left.
    pub fn num_alive(&self) -> usize {
        debug_assert_eq!(
            self.live,
            self.members.values().filter(|m| m.is_live()).count()
        );
        debug_assert_eq!(self.live, self.ring.len());
        self.live
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Lifeguard's local health multiplier: 0 when healthy, up to `Config::awareness_max`.
    pub fn local_health(&self) -> u32 {
        self.awareness.score()
    }

    /// True while a join has been asked for and no seed has answered yet.
    pub fn is_joining(&self) -> bool {
        self.joining
    }

    /// True once [`Memberlist::leave`] was called; the member is inert from then on.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The earliest time at which [`Memberlist::tick`] has work to do, for drivers that sleep
    /// between ticks. `None` once the node has left.
    pub fn next_timer(&self) -> Option<Duration> {
        if self.left {
            return None;
        }
        let mut t = self.next_probe_at;
        if !self.cfg.gossip_interval.is_zero() && self.has_fresh_broadcasts() {
            t = t.min(self.next_gossip_at);
        }
        if !self.cfg.push_pull_interval.is_zero() {
            t = t.min(self.next_push_pull_at);
        }
        if !self.cfg.reconnect_interval.is_zero() {
            t = t.min(self.next_reconnect_at);
        }
        if self.joining {
            t = t.min(self.next_join_at);
        }
        if let Some(p) = &self.probe {
            t = t.min(p.deadline);
            if !p.indirect_sent {
                t = t.min(p.timeout_at);
                if let Some(r) = p.retry_at {
                    t = t.min(r);
                }
            }
        }
        for ip in self.indirect.values() {
            t = t.min(ip.timeout_at);
            if let Some(r) = ip.retry_at {
                t = t.min(r);
            }
        }
        for s in self.suspicions.values() {
            t = t.min(s.deadline());
        }
        Some(t.max(self.now))
    }

    /// Drains the effects produced so far. Call after every input.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    // ---------------------------------------------------------------- inputs

    /// Advances time to `now` (monotonic, since the driver started) and runs whatever timers
    /// are due: probes and their timeouts, suspicion timeouts, gossip, push-pull, reconnects,
    /// join retries, reaping. A time earlier than the last one seen is treated as the last one.
    pub fn tick(&mut self, now: Duration) {
        self.advance(now);
        if self.left {
            return;
        }
        let now = self.now;
        self.tick_join(now);
        self.tick_indirect(now);
        self.tick_probe(now);
        self.tick_suspicions(now);
        self.tick_gossip(now);
        self.tick_push_pull(now);
        self.tick_reconnect(now);
    }

    /// Handles one packet received from `from`. Packets that do not decode or cannot be valid are
    /// dropped, counted in `Stats::decode_errors`, and reported; nothing else changes then.
    pub fn receive(&mut self, now: Duration, from: &Addr, bytes: &[u8]) -> Result<(), DecodeError> {
        self.advance(now);
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let packet = match message::decode(bytes, self.cfg.max_meta_size) {
            Ok(p) if p.from == self.id => {
                Err(DecodeError::Invalid("packet claims to come from this node"))
            }
            other => other,
        };
        let packet = match packet {
            Ok(p) => p,
            Err(e) => {
                self.stats.decode_errors += 1;
                return Err(e);
            }
        };
        if self.left {
            return Ok(());
        }
        for u in packet.updates {
            self.apply(u);
        }
        match packet.msg {
            Message::Ping { seq, target, round } => {
                self.follow_round(round);
                self.handle_ping(from, seq, target)
            }
            Message::PingReq {
                seq,
                target,
                addr,
                nack,
            } => self.handle_ping_req(from, seq, target, addr, nack),
            Message::Ack { seq } => self.handle_ack(seq),
            Message::Nack { seq } => self.handle_nack(seq),
            Message::PushPull { reply, members } => {
                self.handle_push_pull(from, packet.from, reply, members)
            }
            Message::Gossip => {}
        }
        Ok(())
    }

    /// Starts joining a cluster through `seeds`: a push-pull goes to each seed now and again
    /// every `Config::join_retry_interval` until one answers. The seeds are also retried every
    /// `Config::reconnect_interval` later on while they are not known live members.
    pub fn join(&mut self, now: Duration, seeds: &[Addr]) -> Result<(), JoinError> {
        self.advance(now);
        if self.left {
            return Err(JoinError::Left);
        }
        let own = self.local().addr.clone();
        let mut list: Vec<Addr> = Vec::new();
        for s in seeds {
            if *s != own && !s.is_empty() && s.len() <= MAX_ADDR_LEN && !list.contains(s) {
                list.push(s.clone());
            }
        }
        if list.is_empty() {
            return Err(JoinError::NoSeeds);
        }
        self.seeds = list;
        self.joining = true;
        self.next_join_at = self.now;
        self.tick_join(self.now);
        Ok(())
    }

    /// Leaves the cluster gracefully: announces `Left` at the current incarnation to several
    /// members at once (and to whoever it would gossip to), then goes inert. Idempotent.
    pub fn leave(&mut self, now: Duration) {
        self.advance(now);
        if self.left {
            return;
        }
        self.leave_now();
    }

    /// Replaces this node's metadata: raises its incarnation and disseminates the news.
    pub fn set_local_meta(&mut self, now: Duration, meta: Vec<u8>) -> Result<(), MetaError> {
        self.advance(now);
        if self.left {
            return Err(MetaError::Left);
        }
        if meta.len() > self.cfg.max_meta_size {
            return Err(MetaError::TooLarge {
                len: meta.len(),
                max: self.cfg.max_meta_size,
            });
        }
        let me = self.local_mut();
        me.incarnation = me.incarnation.saturating_add(1);
        me.meta = meta;
        self.broadcast_self();
        Ok(())
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.local().incarnation
    }

    // ---------------------------------------------------------------- plumbing

    pub(crate) fn advance(&mut self, now: Duration) {
        if now > self.now {
            self.now = now;
        }
    }

    pub(crate) fn local_mut(&mut self) -> &mut Member {
        self.members
            .get_mut(&self.id)
            .expect("the local member is never removed")
    }

    /// Counts member `id` as live (alive or suspect) again.
    pub(crate) fn now_live(&mut self, id: NodeId) {
        self.live += 1;
        if let Err(i) = self.ring.binary_search(&id) {
            self.ring.insert(i, id);
        }
    }

    /// Counts member `id` as no longer live (dead or left).
    pub(crate) fn no_longer_live(&mut self, id: NodeId) {
        self.live -= 1;
        if let Ok(i) = self.ring.binary_search(&id) {
            self.ring.remove(i);
        }
    }

    /// Members believed alive, this node included: the `n` of the protocol's formulas.
    pub(crate) fn estimated_size(&self) -> usize {
        self.num_alive().max(1)
    }

    /// How many times each update is sent now.
    pub(crate) fn retransmit_limit(&self) -> u32 {
        retransmit_limit(self.cfg.retransmit_mult, self.estimated_size())
    }

    /// A fresh probe sequence number.
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Queues an alive announcement of this node at its current incarnation.
    pub(crate) fn broadcast_self(&mut self) {
        let me = self.local();
        let u = Update::Alive {
            id: me.id,
            incarnation: me.incarnation,
            addr: me.addr.clone(),
            meta: me.meta.clone(),
        };
        self.broadcasts.push(u);
    }

    /// Sends `msg` to `to` with `priority` updates first, then as many queued updates as fit
    /// within the packet size limit.
    ///
    /// The packet is assembled from bytes: the envelope, then `(from, msg)`, then the update
    /// count and the updates, which is exactly the postcard encoding of a [`Packet`] (its update
    /// list comes last and its count, at most [`MAX_UPDATES_PER_PACKET`], is a one-byte varint).
    /// Queued updates are appended from their encodings made once when queued.
    pub(crate) fn send(&mut self, to: &Addr, msg: Message, priority: Vec<Update>) {
        let mut bytes = Vec::with_capacity(self.cfg.gossip_packet_size.min(2048));
        bytes.push(message::VERSION);
        let Ok(mut bytes) = postcard::to_extend(&(self.id, &msg), bytes) else {
            return;
        };
        let count_at = bytes.len();
        bytes.push(0);
        let mut count = 0usize;
        for u in priority.iter().take(MAX_UPDATES_PER_PACKET) {
            let Ok(b) = postcard::to_extend(u, std::mem::take(&mut bytes)) else {
                return;
            };
            bytes = b;
            count += 1;
        }
        let room = MAX_UPDATES_PER_PACKET - count;
        if bytes.len() < self.cfg.gossip_packet_size && room > 0 {
            let limit = self.retransmit_limit();
            let budget = self.cfg.gossip_packet_size - bytes.len();
            count += self
                .broadcasts
                .take_encoded(budget, room, limit, &mut bytes);
        }
        bytes[count_at] = count as u8;
        self.emit_bytes(to, bytes);
    }

    /// Sends a packet carrying queued updates only; nothing if none is queued.
    pub(crate) fn send_gossip(&mut self, to: &Addr) {
        if self.broadcasts.is_empty() {
            return;
        }
        self.send(to, Message::Gossip, Vec::new());
    }

    fn emit_bytes(&mut self, to: &Addr, bytes: Vec<u8>) {
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.effects.push(Effect::Send {
            to: to.clone(),
            bytes,
        });
    }

    /// Reports a change about `id` (which must be known).
    pub(crate) fn emit(&mut self, kind: fn(Member) -> MemberEvent, id: NodeId) {
        if let Some(m) = self.members.get(&id) {
            self.effects.push(Effect::Event(kind(m.clone())));
        }
    }

    /// Up to `k` distinct random members other than this node that satisfy `pred`, uniformly
    /// chosen among those that do, as addresses.
    ///
    /// Draws random positions of the probe order (every other known member) and keeps those
    /// that qualify, so that the usual case costs O(k) instead of a scan of the whole
    /// membership; only when a few draws do not find `k` does it fall back to the scan.
    pub(crate) fn sample_members(&mut self, k: usize, pred: impl Fn(&Member) -> bool) -> Vec<Addr> {
        let n = self.probe_order.len();
        if k == 0 || n == 0 {
            return Vec::new();
        }
        let mut picked: Vec<NodeId> = Vec::with_capacity(k);
        if n >= 4 * k {
            for _ in 0..4 * k + 8 {
                let id = self.probe_order[self.rng.below(n)];
                if !picked.contains(&id) && self.members.get(&id).is_some_and(&pred) {
                    picked.push(id);
                    if picked.len() == k {
                        break;
                    }
                }
            }
        }
        if picked.len() < k {
            let candidates: Vec<NodeId> = self
                .members
                .values()
                .filter(|m| m.id != self.id && pred(m))
                .map(|m| m.id)
                .collect();
            picked = self.rng.choose(candidates, k);
        }
        picked
            .into_iter()
            .filter_map(|id| self.members.get(&id).map(|m| m.addr.clone()))
            .collect()
    }

    /// True when some queued update has been sent fewer than `gossip_max_transmits` times, so
    /// that a gossip round is worth its packets.
    fn has_fresh_broadcasts(&self) -> bool {
        self.broadcasts
            .min_transmits()
            .is_some_and(|t| t < self.cfg.gossip_max_transmits)
    }

    /// Sends queued updates to `gossip_nodes` random members every `gossip_interval`: live ones,
    /// and those declared dead recently enough that they may still refute. Only while a queued
    /// update is fresh (see `Config::gossip_max_transmits`); each packet still carries as many
    /// queued updates as fit, fresh or not.
    fn tick_gossip(&mut self, now: Duration) {
        if self.cfg.gossip_interval.is_zero() || now < self.next_gossip_at {
            return;
        }
        self.next_gossip_at = now + self.cfg.gossip_interval;
        if !self.has_fresh_broadcasts() {
            return;
        }
        let to_the_dead = self.cfg.gossip_to_the_dead;
        let targets = self.sample_members(self.cfg.gossip_nodes, |m| {
            m.is_live()
                || (m.state == State::Dead && now.saturating_sub(m.state_changed_at) < to_the_dead)
        });
        for to in targets {
            self.send_gossip(&to);
        }
    }
}
