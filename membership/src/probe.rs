//! Failure detection: one probe per protocol period in an aligned, randomized round-robin
//! schedule (every member probed by one other in each round), indirect
//! probes through `indirect_checks` members after a missed ack, nacks from indirect probers, the
//! buddy system, and the local health multiplier that scales it all (Lifeguard).

use std::time::Duration;

use crate::memberlist::{Memberlist, MAX_INDIRECT_IN_FLIGHT};
use crate::message::{Message, Update};
use crate::types::{Addr, NodeId, State};

/// This node's probe in progress.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    /// Its sequence number, echoed by acks and nacks.
    pub(crate) seq: u32,
    /// The member probed.
    pub(crate) target: NodeId,
    /// Where it was probed.
    pub(crate) addr: Addr,
    /// When to repeat the direct ping if no ack has come (`Config::probe_retries`); `None` once
    /// every repetition went out, or when off.
    pub(crate) retry_at: Option<Duration>,
    /// Repetitions of the direct ping sent so far.
    pub(crate) retries: u32,
    /// When the probe started.
    pub(crate) started: Duration,
    /// When to fall back to indirect probes.
    pub(crate) timeout_at: Duration,
    /// When the probe fails if no ack has come (the end of the protocol period).
    pub(crate) deadline: Duration,
    /// Whether the ping-reqs went out.
    pub(crate) indirect_sent: bool,
    /// Nacks expected from indirect probers.
    pub(crate) expected_nacks: u32,
    /// Nacks received.
    pub(crate) nacks: u32,
    /// Whether this probe re-checks a target whose last probe was inconclusive.
    pub(crate) recheck: bool,
}

/// When to send the direct ping's repetition number `done + 1` of `total`, spaced evenly
/// between the start of the probe and its timeout; `None` once all went out.
fn retry_time(start: Duration, timeout_at: Duration, done: u32, total: u32) -> Option<Duration> {
    (done < total).then(|| start + (timeout_at - start) * (done + 1) / (total + 1))
}

/// The aligned schedule's shift in round `round` among `m + 1` live members: a number in
/// `1..=m`, the same at every member. Rounds are grouped in epochs of `m`; within an epoch the
/// shift is `1 + (a·j + b) mod m` for the round's index `j`, with `a` coprime to `m` and `b`
/// drawn from a hash of the epoch, so every shift comes once per epoch in an order that changes
/// from epoch to epoch.
pub(crate) fn round_shift(round: u32, m: usize) -> usize {
    if m <= 1 {
        return 1;
    }
    let m64 = m as u64;
    let epoch = u64::from(round) / m64;
    let j = u64::from(round) % m64;
    // The same at every member: one splitmix64 step of the epoch and the size.
    let h = crate::rng::Rng::new(epoch ^ (m64 << 32)).next_u64();
    let mut a = 1 + (h >> 32) % (m64 - 1);
    while gcd(a, m64) != 1 {
        a = a % (m64 - 1) + 1;
    }
    let b = (h & 0xFFFF_FFFF) % m64;
    1 + ((a * j + b) % m64) as usize
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A probe this node runs on behalf of another member's ping-req.
#[derive(Clone, Debug)]
pub(crate) struct IndirectProbe {
    /// Who asked.
    pub(crate) requester: Addr,
    /// The requester's sequence number.
    pub(crate) requester_seq: u32,
    /// Whether the requester wants a nack on timeout.
    pub(crate) nack: bool,
    /// When to give up (and nack).
    pub(crate) timeout_at: Duration,
    /// When to repeat the ping to the target if no ack has come; `None` once done.
    pub(crate) retry_at: Option<Duration>,
    /// The target probed, and where.
    pub(crate) target: NodeId,
    /// Its address.
    pub(crate) addr: Addr,
}

impl Memberlist {
    /// Runs the probe's timeouts, then starts the next probe when its period begins.
    pub(crate) fn tick_probe(&mut self, now: Duration) {
        if let Some(p) = self.probe.as_mut() {
            if p.retry_at.is_some_and(|t| now >= t) && !p.indirect_sent && now < p.timeout_at {
                p.retries += 1;
                p.retry_at = retry_time(p.started, p.timeout_at, p.retries, self.cfg.probe_retries);
                let (seq, target, addr) = (p.seq, p.target, p.addr.clone());
                let priority = self.buddy_update(target);
                let round = self.current_round();
                self.send(&addr, Message::Ping { seq, target, round }, priority);
            }
        }
        if let Some(p) = &self.probe {
            if !p.indirect_sent && now >= p.timeout_at {
                self.send_indirect_probes();
            }
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.deadline) {
            if let Some(p) = self.probe.take() {
                self.probe_failed(p);
            }
        }
        if now >= self.next_probe_at {
            self.start_probe(now);
        }
    }

    /// Probes the next member in the round. The period, and the probe timeout, are scaled by
    /// the local health multiplier.
    fn start_probe(&mut self, now: Duration) {
        let period = self.awareness.scale(self.cfg.protocol_period);
        self.next_probe_at = now + period;
        let round = self.round;
        self.round = round.wrapping_add(1);
        let Some(target) = self.next_probe_target(round) else {
            return;
        };
        let recheck = self.recheck.take() == Some(target);
        let Some(m) = self.members.get(&target) else {
            return;
        };
        let addr = m.addr.clone();
        let priority = self.buddy_update(target);
        let seq = self.next_seq();
        self.send(&addr, Message::Ping { seq, target, round }, priority);
        self.stats.probes += 1;
        let timeout = self.awareness.scale(self.cfg.probe_timeout);
        self.probe = Some(Probe {
            seq,
            target,
            addr,
            retry_at: retry_time(now, now + timeout, 0, self.cfg.probe_retries),
            retries: 0,
            started: now,
            timeout_at: now + timeout,
            deadline: now + period,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
            recheck,
        });
    }

    /// Buddy system: a suspect hears of the suspicion from its prober and can refute at once.
    fn buddy_update(&self, target: NodeId) -> Vec<Update> {
        match self.members.get(&target) {
            Some(m) if self.cfg.lifeguard && m.state == State::Suspect => vec![Update::Suspect {
                id: target,
                incarnation: m.incarnation,
                from: self.id,
            }],
            _ => Vec::new(),
        }
    }

    /// The member to probe this round: a member whose last probe was inconclusive, else a
    /// suspect just heard of, else the aligned schedule's target (`Config::aligned_rounds`),
    /// else the next live member in this node's own randomized round-robin order. `None` if no
    /// other member is live.
    fn next_probe_target(&mut self, round: u32) -> Option<NodeId> {
        if let Some(id) = self.recheck {
            if self
                .members
                .get(&id)
                .is_some_and(|m| m.state == State::Alive)
            {
                return Some(id);
            }
            self.recheck = None;
        }
        if let Some(id) = self.probe_next.take() {
            if self.members.get(&id).is_some_and(|m| m.is_live()) {
                return Some(id);
            }
        }
        if self.cfg.aligned_rounds {
            if let Ok(pos) = self.ring.binary_search(&self.id) {
                let n = self.ring.len();
                if n < 2 {
                    return None;
                }
                let shift = round_shift(round, n - 1);
                return Some(self.ring[(pos + shift) % n]);
            }
        }
        self.next_in_own_order()
    }

    /// The round this node is in: that of its last probe.
    pub(crate) fn current_round(&self) -> u32 {
        self.round.wrapping_sub(1)
    }

    /// Adopts the round of a ping's sender if it is ahead: the sender is in round `round`, so
    /// this node's next probe belongs to that round at the earliest (not to the one after, or it
    /// would skip a round whenever its phase in the period comes after the sender's).
    /// Serial-number comparison, so a counter that wraps keeps working.
    pub(crate) fn follow_round(&mut self, round: u32) {
        if (round.wrapping_sub(self.round) as i32) > 0 {
            self.round = round;
        }
    }

    /// The next live member in the randomized round-robin order; the order is reshuffled at the
    /// start of each round. `None` if no other member is live.
    fn next_in_own_order(&mut self) -> Option<NodeId> {
        for _ in 0..=self.probe_order.len() {
            if self.probe_index >= self.probe_order.len() {
                if self.probe_order.is_empty() {
                    return None;
                }
                let mut order = std::mem::take(&mut self.probe_order);
                self.rng.shuffle(&mut order);
                self.probe_order = order;
                self.probe_index = 0;
            }
            let id = self.probe_order[self.probe_index];
            self.probe_index += 1;
            if self.members.get(&id).is_some_and(|m| m.is_live()) {
                return Some(id);
            }
        }
        None
    }

    /// No direct ack in time: ask `indirect_checks` random alive members to probe the target.
    fn send_indirect_probes(&mut self) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        p.indirect_sent = true;
        let (seq, target, addr) = (p.seq, p.target, p.addr.clone());
        let helpers = self.sample_members(self.cfg.indirect_checks, |m| {
            m.id != target && m.state == State::Alive
        });
        let nack = self.cfg.lifeguard;
        for to in &helpers {
            let msg = Message::PingReq {
                seq,
                target,
                addr: addr.clone(),
                nack,
            };
            self.send(to, msg, Vec::new());
            self.stats.indirect_probes += 1;
        }
        if let Some(p) = self.probe.as_mut() {
            p.expected_nacks = if nack { helpers.len() as u32 } else { 0 };
        }
    }

    /// The probe ended without an ack: adjust the local health and suspect the target.
    ///
    /// With nacks expected, only missing nacks count against us (helpers that answered could not
    /// reach the target either, so it is probably the target); without, the failure itself does.
    ///
    /// A probe is conclusive when every helper nacked: each of them is alive and could not reach
    /// the target either. A missing nack means a lost ping-req, a lost nack, or a helper that
    /// did reach the target and whose forwarded ack was lost: with lossy links, the common
    /// reason a live member's probe fails. Such a probe is inconclusive: the target is probed
    /// again next period instead of the scheduled one, and suspected only if that fails too.
    /// On a clean network every nack arrives, so a crash is suspected as soon as before.
    fn probe_failed(&mut self, p: Probe) {
        self.stats.failed_probes += 1;
        let delta = if p.expected_nacks > 0 {
            p.expected_nacks.saturating_sub(p.nacks)
        } else {
            1
        };
        self.awareness.apply(i64::from(delta));
        let Some(m) = self.members.get(&p.target) else {
            return;
        };
        if !m.is_live() {
            return;
        }
        let inconclusive = p.nacks < p.expected_nacks && m.state == State::Alive;
        if inconclusive && !p.recheck {
            self.stats.inconclusive_probes += 1;
            self.recheck = Some(p.target);
            return;
        }
        let incarnation = m.incarnation;
        self.on_suspect(p.target, incarnation, self.id);
    }

    /// Acks a ping meant for this node. A ping for another id (a reused address) is ignored.
    pub(crate) fn handle_ping(&mut self, from: &Addr, seq: u32, target: NodeId) {
        if target != self.id {
            return;
        }
        self.send(from, Message::Ack { seq }, Vec::new());
    }

    /// Probes `target` for the requester, forwarding its ack or, if asked, nacking on timeout.
    pub(crate) fn handle_ping_req(
        &mut self,
        from: &Addr,
        seq: u32,
        target: NodeId,
        addr: Addr,
        nack: bool,
    ) {
        if target == self.id {
            self.send(from, Message::Ack { seq }, Vec::new());
            return;
        }
        if self.indirect.len() >= MAX_INDIRECT_IN_FLIGHT {
            return;
        }
        let own = self.next_seq();
        let round = self.current_round();
        let msg = Message::Ping {
            seq: own,
            target,
            round,
        };
        self.send(&addr, msg, Vec::new());
        self.stats.indirect_probes_served += 1;
        // Nack a little before our own probe timeout, so that the nack reaches a requester
        // running the same configuration before the end of its period.
        let wait = self.cfg.probe_timeout.mul_f64(0.8);
        self.indirect.insert(
            own,
            IndirectProbe {
                requester: from.clone(),
                requester_seq: seq,
                nack,
                timeout_at: self.now + wait,
                retry_at: (self.cfg.probe_retries > 0).then(|| self.now + wait / 2),
                target,
                addr,
            },
        );
    }

    /// An ack: ends this node's probe, or is forwarded to the member that asked for it.
    pub(crate) fn handle_ack(&mut self, seq: u32) {
        if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
            self.probe = None;
            self.stats.acks += 1;
            self.awareness.apply(-1);
            return;
        }
        if let Some(ip) = self.indirect.remove(&seq) {
            let msg = Message::Ack {
                seq: ip.requester_seq,
            };
            self.send(&ip.requester, msg, Vec::new());
        }
    }

    /// A nack from an indirect prober of this node's current probe. Once every helper has
    /// nacked, the probe fails at once instead of at the end of the period: all of them are
    /// alive and none could reach the target, which is as conclusive as the probe gets (and
    /// the suspicion starts about a tenth of a period sooner).
    pub(crate) fn handle_nack(&mut self, seq: u32) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        if p.seq == seq && p.indirect_sent && p.nacks < p.expected_nacks {
            p.nacks += 1;
            self.stats.nacks += 1;
            if p.nacks == p.expected_nacks {
                if let Some(p) = self.probe.take() {
                    self.probe_failed(p);
                }
            }
        }
    }

    /// Repeats the ping of indirect probes still without an ack half way to their timeout, then
    /// gives up on those that timed out, nacking them if asked.
    pub(crate) fn tick_indirect(&mut self, now: Duration) {
        let repeat: Vec<(u32, NodeId, Addr)> = self
            .indirect
            .iter_mut()
            .filter(|(_, ip)| ip.retry_at.is_some_and(|t| t <= now) && now < ip.timeout_at)
            .map(|(seq, ip)| {
                ip.retry_at = None;
                (*seq, ip.target, ip.addr.clone())
            })
            .collect();
        let round = self.current_round();
        for (seq, target, addr) in repeat {
            self.send(&addr, Message::Ping { seq, target, round }, Vec::new());
        }
        let expired: Vec<u32> = self
            .indirect
            .iter()
            .filter(|(_, ip)| ip.timeout_at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            let Some(ip) = self.indirect.remove(&seq) else {
                continue;
            };
            if ip.nack {
                let msg = Message::Nack {
                    seq: ip.requester_seq,
                };
                self.send(&ip.requester, msg, Vec::new());
            }
        }
    }
}
