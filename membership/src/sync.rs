//! Full-state synchronisation: join through seeds, periodic push-pull with a random member,
//! reconnect attempts to dead members and seeds (so that a healed partition merges back), reaping
//! of long-gone members, and the graceful leave.

use std::time::Duration;

use crate::memberlist::Memberlist;
use crate::message::{encoded_len, Message, Packet, Record, Update};
use crate::types::{Addr, NodeId, State};

/// Push-pulls with random members after a join, 1, 3 and 7 protocol periods after it, before
/// the periodic ones. The seed's answer holds only the members that joined before; in a join
/// storm (hundreds of nodes starting at once) the rest reaches the early joiners through gossip,
/// whose retransmissions the storm's thousand fresh updates outnumber, so a few state exchanges
/// soon after the join fill in what gossip is slow to carry.
pub(crate) const JOIN_SYNCS: u32 = 3;

impl Memberlist {
    /// Sends this node's full state to `to`, split into packets within the size limit; the first
    /// asks for the receiver's state back when `reply` is set.
    pub(crate) fn send_push_pull(&mut self, to: &Addr, reply: bool) {
        let records: Vec<Record> = self
            .members
            .values()
            .map(|m| Record {
                id: m.id,
                incarnation: m.incarnation,
                state: m.state,
                addr: m.addr.clone(),
                meta: m.meta.clone(),
            })
            .collect();
        let empty = Packet {
            from: self.id,
            msg: Message::PushPull {
                reply,
                members: Vec::new(),
            },
            updates: Vec::new(),
        };
        // Version byte, and room for the member count's prefix to grow to three bytes.
        let base = 1 + encoded_len(&empty) + 2;
        let limit = self.cfg.gossip_packet_size;
        let mut chunks: Vec<Vec<Record>> = Vec::new();
        let mut chunk: Vec<Record> = Vec::new();
        let mut size = base;
        for r in records {
            let len = encoded_len(&r);
            if !chunk.is_empty() && size + len > limit {
                chunks.push(std::mem::take(&mut chunk));
                size = base;
            }
            // One record always fits (checked by `Config::validate` against the size bounds).
            size += len;
            chunk.push(r);
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        for (i, members) in chunks.into_iter().enumerate() {
            let msg = Message::PushPull {
                reply: reply && i == 0,
                members,
            };
            self.send(to, msg, Vec::new());
        }
    }

    /// Merges a peer's state. Its dead members are only suspected here (they get a chance to
    /// refute); its suspicions may start one here but never count as independent confirmations
    /// (they are hearsay); news about unknown members other than alive ones is ignored.
    pub(crate) fn handle_push_pull(
        &mut self,
        from: &Addr,
        sender: NodeId,
        reply: bool,
        members: Vec<Record>,
    ) {
        // Any push-pull means a member of the cluster has heard of us: the join is done. The
        // state arrives in datagrams, some of which may be lost: exchange state once more, with
        // a random member, one protocol period from now, instead of a whole push-pull interval.
        if self.joining {
            self.joining = false;
            if !self.cfg.push_pull_interval.is_zero() {
                let soon = self.now + self.cfg.protocol_period;
                self.next_push_pull_at = self.next_push_pull_at.min(soon);
                self.join_syncs_left = JOIN_SYNCS;
            }
        }
        for r in members {
            match r.state {
                State::Alive => self.on_alive(r.id, r.incarnation, r.addr, r.meta),
                State::Suspect | State::Dead => {
                    self.on_suspect_hearsay(r.id, r.incarnation, sender)
                }
                State::Left => self.on_left(r.id, r.incarnation),
            }
        }
        if reply {
            self.send_push_pull(from, false);
        }
    }

    /// While joining, (re)sends a push-pull to every seed each `join_retry_interval`.
    pub(crate) fn tick_join(&mut self, now: Duration) {
        if !self.joining || now < self.next_join_at {
            return;
        }
        self.next_join_at = now + self.cfg.join_retry_interval;
        for seed in self.seeds.clone() {
            self.send_push_pull(&seed, true);
            self.stats.push_pulls += 1;
        }
    }

    /// Every `push_pull_interval`, exchanges full state with one random live member.
    pub(crate) fn tick_push_pull(&mut self, now: Duration) {
        if self.cfg.push_pull_interval.is_zero() || now < self.next_push_pull_at {
            return;
        }
        self.next_push_pull_at = now + self.cfg.push_pull_interval;
        if self.join_syncs_left > 0 {
            // The follow-ups of a join: 2 then 4 periods after the first (at 1, 3 and 7).
            self.join_syncs_left -= 1;
            let gap = 2u32 << (JOIN_SYNCS - 1 - self.join_syncs_left);
            if self.join_syncs_left > 0 {
                self.next_push_pull_at = now + self.cfg.protocol_period * gap;
            }
        }
        let candidates: Vec<Addr> = self
            .members
            .values()
            .filter(|m| m.id != self.id && m.is_live())
            .map(|m| m.addr.clone())
            .collect();
        if let Some(to) = self.rng.choose(candidates, 1).pop() {
            self.send_push_pull(&to, true);
            self.stats.push_pulls += 1;
        }
    }

    /// A sign of life from member `id`, which this node holds dead: traffic from it on another
    /// channel (the agent's Raft messages, an inbound connection). Exchanges state with it at
    /// once, so that a healed partition merges now rather than at the next reconnect round (up
    /// to `reconnect_interval` later): each side refutes the other's verdict on itself. At most
    /// one exchange per member per protocol period; true when one was sent.
    pub fn sign_of_life(&mut self, now: Duration, id: NodeId) -> bool {
        self.advance(now);
        let now = self.now;
        if self.left || id == self.id {
            return false;
        }
        let period = self.cfg.protocol_period;
        self.revived_at.retain(|_, at| now < *at + period);
        let to = match self.members.get(&id) {
            Some(m) if m.state == State::Dead => m.addr.clone(),
            _ => return false,
        };
        if self.revived_at.contains_key(&id) {
            return false;
        }
        self.revived_at.insert(id, now);
        self.send_push_pull(&to, true);
        self.stats.push_pulls += 1;
        true
    }

    /// Every `reconnect_interval`: a push-pull to one random dead member and to one seed that is
    /// not a known live member, so that both sides of a healed partition learn of each other (and
    /// that each side declared the other dead, which they then refute); then reaps members gone
    /// for longer than `dead_reap_timeout`.
    pub(crate) fn tick_reconnect(&mut self, now: Duration) {
        if self.cfg.reconnect_interval.is_zero() || now < self.next_reconnect_at {
            return;
        }
        self.next_reconnect_at = now + self.cfg.reconnect_interval;
        self.reap(now);
        let dead: Vec<Addr> = self
            .members
            .values()
            .filter(|m| m.state == State::Dead)
            .map(|m| m.addr.clone())
            .collect();
        if let Some(to) = self.rng.choose(dead, 1).pop() {
            self.send_push_pull(&to, true);
            self.stats.push_pulls += 1;
        }
        let seeds: Vec<Addr> = self
            .seeds
            .iter()
            .filter(|s| !self.members.values().any(|m| m.is_live() && m.addr == **s))
            .cloned()
            .collect();
        if let Some(to) = self.rng.choose(seeds, 1).pop() {
            self.send_push_pull(&to, true);
            self.stats.push_pulls += 1;
        }
    }

    /// Marks this node left and tells as many members as an update is retransmitted to.
    pub(crate) fn leave_now(&mut self) {
        let now = self.now;
        let me = self.local_mut();
        me.state = State::Left;
        me.state_changed_at = now;
        let update = Update::Left {
            id: me.id,
            incarnation: me.incarnation,
        };
        let id = self.id;
        self.no_longer_live(id);
        self.left = true;
        self.joining = false;
        self.probe = None;
        self.indirect.clear();
        self.suspicions.clear();
        let candidates: Vec<Addr> = self
            .members
            .values()
            .filter(|m| m.id != self.id && m.is_live())
            .map(|m| m.addr.clone())
            .collect();
        let count = self.retransmit_limit().max(self.cfg.gossip_nodes as u32) as usize;
        let targets = self.rng.choose(candidates, count);
        self.broadcasts.push(update.clone());
        for to in targets {
            self.send(&to, Message::Gossip, vec![update.clone()]);
        }
    }
}
