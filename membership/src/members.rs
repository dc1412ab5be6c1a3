//! Membership state transitions: how alive, suspect, dead and left news is merged.
//!
//! Precedence (SWIM, memberlist): a higher incarnation wins; at equal incarnation
//! `Alive < Suspect < Dead ≤ Left`. Only an alive announcement with a higher incarnation brings a
//! dead or left member back, and only the member itself raises its incarnation. A node that hears
//! itself suspected, declared dead or left, or announced with an incarnation it did not issue,
//! refutes by raising its incarnation above the news and gossiping itself alive. Every accepted
//! change is queued for dissemination and reported as an event.

use crate::memberlist::{MemberEvent, Memberlist};
use crate::message::Update;
use crate::suspicion::{self, Suspicion};
use crate::types::{Addr, Incarnation, Member, NodeId, State};

impl Memberlist {
    /// Merges one update.
    pub(crate) fn apply(&mut self, u: Update) {
        match u {
            Update::Alive {
                id,
                incarnation,
                addr,
                meta,
            } => self.on_alive(id, incarnation, addr, meta),
            Update::Suspect {
                id,
                incarnation,
                from,
            } => self.on_suspect(id, incarnation, from),
            Update::Dead {
                id,
                incarnation,
                from,
            } => self.on_dead(id, incarnation, from),
            Update::Left { id, incarnation } => self.on_left(id, incarnation),
        }
    }

    pub(crate) fn on_alive(
        &mut self,
        id: NodeId,
        incarnation: Incarnation,
        addr: Addr,
        meta: Vec<u8>,
    ) {
        if id == self.id {
            if self.left {
                return;
            }
            let me = self.local();
            let newer = incarnation > me.incarnation;
            let conflicting = incarnation == me.incarnation && (addr != me.addr || meta != me.meta);
            if newer || conflicting {
                // News of us we did not issue (a previous life of this node, or an impostor):
                // supersede it.
                self.refute(incarnation);
            }
            return;
        }
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else {
            if self.members.len() >= self.cfg.max_members {
                self.stats.rejected_members += 1;
                return;
            }
            self.members.insert(
                id,
                Member {
                    id,
                    addr: addr.clone(),
                    meta: meta.clone(),
                    incarnation,
                    state: State::Alive,
                    state_changed_at: now,
                },
            );
            self.now_live(id);
            self.add_to_probe_order(id);
            self.broadcasts.push(Update::Alive {
                id,
                incarnation,
                addr,
                meta,
            });
            self.emit(MemberEvent::Joined, id);
            return;
        };
        // At equal incarnation an alive announcement changes nothing: it neither overrides a
        // suspicion nor moves an address (which needs a higher incarnation).
        if incarnation <= m.incarnation {
            return;
        }
        let prev = m.state;
        let changed = addr != m.addr || meta != m.meta;
        m.incarnation = incarnation;
        m.addr = addr.clone();
        m.meta = meta.clone();
        if prev != State::Alive {
            m.state = State::Alive;
            m.state_changed_at = now;
        }
        if matches!(prev, State::Dead | State::Left) {
            self.now_live(id);
        }
        self.suspicions.remove(&id);
        self.broadcasts.push(Update::Alive {
            id,
            incarnation,
            addr,
            meta,
        });
        match prev {
            State::Dead | State::Left => self.emit(MemberEvent::Joined, id),
            State::Suspect => {
                self.emit(MemberEvent::Alive, id);
                if changed {
                    self.emit(MemberEvent::Updated, id);
                }
            }
            State::Alive => {
                if changed {
                    self.emit(MemberEvent::Updated, id);
                }
            }
        }
    }

    /// `from` suspects the member: its own probe failed, or it relays such an accusation.
    pub(crate) fn on_suspect(&mut self, id: NodeId, incarnation: Incarnation, from: NodeId) {
        self.suspect(id, incarnation, from, true);
    }

    /// A suspicion learned second-hand (a push-pull record): it may start a suspicion, with the
    /// sender as accuser, but it is no independent confirmation of one already running.
    pub(crate) fn on_suspect_hearsay(
        &mut self,
        id: NodeId,
        incarnation: Incarnation,
        from: NodeId,
    ) {
        self.suspect(id, incarnation, from, false);
    }

    fn suspect(&mut self, id: NodeId, incarnation: Incarnation, from: NodeId, confirms: bool) {
        if id == self.id {
            if !self.left && incarnation >= self.local().incarnation {
                self.refute(incarnation);
            }
            return;
        }
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if incarnation < m.incarnation {
            return;
        }
        match m.state {
            // Suspicion applies to live members only; dead and left override it.
            State::Dead | State::Left => {}
            State::Suspect => {
                let raised = incarnation > m.incarnation;
                m.incarnation = incarnation;
                let confirmed = confirms
                    && self
                        .suspicions
                        .get_mut(&id)
                        .is_some_and(|s| s.confirm(from));
                if raised || confirmed {
                    // Pass independent confirmations on: they shorten everyone's timeout.
                    self.broadcasts.push(Update::Suspect {
                        id,
                        incarnation,
                        from,
                    });
                }
            }
            State::Alive => {
                m.state = State::Suspect;
                m.incarnation = incarnation;
                m.state_changed_at = now;
                let s = self.new_suspicion(from);
                self.suspicions.insert(id, s);
                self.stats.suspicions += 1;
                self.broadcasts.push(Update::Suspect {
                    id,
                    incarnation,
                    from,
                });
                self.emit(MemberEvent::Suspected, id);
                if from != self.id {
                    self.maybe_probe_suspect_next(id);
                }
            }
        }
    }

    pub(crate) fn on_dead(&mut self, id: NodeId, incarnation: Incarnation, from: NodeId) {
        if id == self.id {
            if !self.left && incarnation >= self.local().incarnation {
                self.refute(incarnation);
            }
            return;
        }
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if incarnation < m.incarnation || matches!(m.state, State::Dead | State::Left) {
            return;
        }
        m.state = State::Dead;
        m.incarnation = incarnation;
        m.state_changed_at = now;
        self.no_longer_live(id);
        self.suspicions.remove(&id);
        self.stats.failures += 1;
        self.broadcasts.push(Update::Dead {
            id,
            incarnation,
            from,
        });
        self.emit(MemberEvent::Failed, id);
    }

    pub(crate) fn on_left(&mut self, id: NodeId, incarnation: Incarnation) {
        if id == self.id {
            // A previous life of this node left; this one has not.
            if !self.left && incarnation >= self.local().incarnation {
                self.refute(incarnation);
            }
            return;
        }
        let now = self.now;
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if incarnation < m.incarnation || m.state == State::Left {
            return;
        }
        let was_live = m.is_live();
        m.state = State::Left;
        m.incarnation = incarnation;
        m.state_changed_at = now;
        if was_live {
            self.no_longer_live(id);
        }
        self.suspicions.remove(&id);
        self.broadcasts.push(Update::Left { id, incarnation });
        self.emit(MemberEvent::Left, id);
    }

    /// Refutes news about this node at incarnation `accused`: takes a higher incarnation and
    /// gossips itself alive. Having to do so hints that this node is the slow one (Lifeguard).
    pub(crate) fn refute(&mut self, accused: Incarnation) {
        let me = self.local_mut();
        me.incarnation = me.incarnation.max(accused).saturating_add(1);
        self.stats.refutations += 1;
        self.awareness.apply(1);
        self.broadcast_self();
    }

    /// A suspicion timer for a member accused by `accuser`, sized for the current cluster.
    fn new_suspicion(&self, accuser: NodeId) -> Suspicion {
        let n = self.estimated_size();
        let min = suspicion::min_timeout(self.cfg.suspicion_mult, n, self.cfg.protocol_period);
        if !self.cfg.lifeguard {
            return Suspicion::new(self.now, accuser, 0, min, min);
        }
        // Expect confirmations from all but the accuser and the suspect, up to K.
        let mut k = self.cfg.suspicion_confirmations;
        if n.saturating_sub(2) < k as usize {
            k = 0;
        }
        let max = min.saturating_mul(self.cfg.suspicion_max_timeout_mult);
        Suspicion::new(self.now, accuser, k, min, max)
    }

    /// Declares failed every suspect whose suspicion timed out.
    pub(crate) fn tick_suspicions(&mut self, now: std::time::Duration) {
        let expired: Vec<NodeId> = self
            .suspicions
            .iter()
            .filter(|(_, s)| s.deadline() <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.suspicions.remove(&id);
            let Some(m) = self.members.get(&id) else {
                continue;
            };
            if m.state == State::Suspect {
                let incarnation = m.incarnation;
                self.on_dead(id, incarnation, self.id);
            }
        }
    }

    /// Having heard that `id` is suspected, probes it next with probability
    /// `suspect_probes / (n − 2)` (`Config::suspect_probes`): it moves to the front of the rest
    /// of this round, so the round gets no longer and no packet is added.
    fn maybe_probe_suspect_next(&mut self, id: NodeId) {
        let fanout = self.cfg.suspect_probes as usize;
        if !self.cfg.lifeguard || fanout == 0 {
            return;
        }
        let others = self.live.saturating_sub(2).max(1);
        if fanout < others && self.rng.below(others) >= fanout {
            return;
        }
        if self.cfg.aligned_rounds {
            // Instead of the scheduled target: that one misses this round, which is rare.
            self.probe_next = Some(id);
            return;
        }
        let Some(pos) = self.probe_order.iter().position(|m| *m == id) else {
            return;
        };
        if pos >= self.probe_index {
            // Not probed yet this round: bring it forward.
            self.probe_order.remove(pos);
            self.probe_order.insert(self.probe_index, id);
        } else {
            // Probed already this round: once more, right now.
            self.probe_order.remove(pos);
            self.probe_index -= 1;
            self.probe_order.insert(self.probe_index, id);
        }
    }

    /// Puts a new member at a random place in the probe order, so that it is probed within the
    /// current round at a random point.
    fn add_to_probe_order(&mut self, id: NodeId) {
        let pos = self.rng.below(self.probe_order.len() + 1);
        self.probe_order.insert(pos, id);
        if pos < self.probe_index {
            self.probe_index += 1;
        }
    }

    /// Forgets dead and left members whose state changed more than `dead_reap_timeout` ago.
    pub(crate) fn reap(&mut self, now: std::time::Duration) {
        let timeout = self.cfg.dead_reap_timeout;
        let gone: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| m.id != self.id && !m.is_live())
            .filter(|m| now.saturating_sub(m.state_changed_at) >= timeout)
            .map(|m| m.id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            self.members.remove(id);
            self.suspicions.remove(id);
            self.broadcasts.remove(*id);
        }
        let mut index = self.probe_index;
        let mut kept = Vec::with_capacity(self.probe_order.len());
        for (i, id) in self.probe_order.iter().enumerate() {
            if gone.contains(id) {
                if i < self.probe_index {
                    index -= 1;
                }
            } else {
                kept.push(*id);
            }
        }
        self.probe_order = kept;
        self.probe_index = index;
    }
}
