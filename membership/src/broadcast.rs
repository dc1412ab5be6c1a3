//! The dissemination queue: each update waits here to be piggybacked on outgoing packets, a
//! bounded number of times, fewest transmissions first and newest first among equals. A newer
//! update about a member replaces the queued one.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::message::{encoded_len, Update};
use crate::types::NodeId;

#[derive(Clone, Debug)]
struct Queued {
    update: Update,
    size: usize,
    transmits: u32,
    order: u64,
}

/// Updates waiting to be disseminated, at most one per member.
#[derive(Clone, Debug, Default)]
pub(crate) struct Broadcasts {
    queue: BTreeMap<NodeId, Queued>,
    next_order: u64,
}

impl Broadcasts {
    /// Queues `update`, replacing any queued update about the same member.
    pub(crate) fn push(&mut self, update: Update) {
        let size = encoded_len(&update);
        let order = self.next_order;
        self.next_order += 1;
        self.queue.insert(
            update.id(),
            Queued {
                update,
                size,
                transmits: 0,
                order,
            },
        );
    }

    /// Drops what is queued about `id`.
    pub(crate) fn remove(&mut self, id: NodeId) {
        self.queue.remove(&id);
    }

    /// Number of queued updates.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many times the update about `id` has been sent, if one is queued.
    #[cfg(test)]
    pub(crate) fn transmits(&self, id: NodeId) -> Option<u32> {
        self.queue.get(&id).map(|q| q.transmits)
    }

    /// Takes up to `max_count` updates whose encoded sizes add up to at most `budget` bytes,
    /// fewest transmissions first, newest first among equals. Each counts one transmission;
    /// an update sent `limit` times leaves the queue.
    pub(crate) fn take(&mut self, budget: usize, max_count: usize, limit: u32) -> Vec<Update> {
        if self.queue.is_empty() || max_count == 0 {
            return Vec::new();
        }
        let mut order: Vec<(u32, Reverse<u64>, NodeId)> = self
            .queue
            .iter()
            .map(|(id, q)| (q.transmits, Reverse(q.order), *id))
            .collect();
        order.sort_unstable();
        let mut left = budget;
        let mut out = Vec::new();
        for (_, _, id) in order {
            if out.len() >= max_count || left == 0 {
                break;
            }
            let Some(q) = self.queue.get_mut(&id) else {
                continue;
            };
            if q.size > left {
                continue;
            }
            left -= q.size;
            out.push(q.update.clone());
            q.transmits += 1;
            if q.transmits >= limit {
                self.queue.remove(&id);
            }
        }
        out
    }
}

/// `retransmit_mult · ceil(log10(n + 1))`: how many times each update is sent in a cluster of
/// `n` live members.
pub(crate) fn retransmit_limit(retransmit_mult: u32, n: usize) -> u32 {
    let target = n.saturating_add(1);
    let mut digits = 0u32;
    let mut power = 1usize;
    while power < target {
        power = power.saturating_mul(10);
        digits += 1;
    }
    retransmit_mult.saturating_mul(digits.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(id: u64) -> Update {
        Update::Left {
            id: NodeId(id),
            incarnation: 1,
        }
    }

    #[test]
    fn limit_follows_log_n() {
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 64), 8);
        assert_eq!(retransmit_limit(4, 99), 8);
        assert_eq!(retransmit_limit(4, 100), 12);
    }

    #[test]
    fn each_update_is_sent_limit_times() {
        let mut b = Broadcasts::default();
        b.push(left(1));
        for i in 0..3 {
            assert_eq!(b.transmits(NodeId(1)), Some(i));
            assert_eq!(b.take(1000, 10, 3).len(), 1);
        }
        assert!(b.is_empty());
        assert!(b.take(1000, 10, 3).is_empty());
    }

    #[test]
    fn fewest_transmissions_then_newest_first() {
        let mut b = Broadcasts::default();
        b.push(left(1));
        b.push(left(2));
        // Budget for one update only.
        let one = encoded_len(&left(1));
        assert_eq!(b.take(one, 10, 5), vec![left(2)], "newest first");
        assert_eq!(
            b.take(one, 10, 5),
            vec![left(1)],
            "then the one sent fewer times"
        );
        b.push(left(3));
        assert_eq!(b.take(one, 10, 5), vec![left(3)]);
        assert_eq!(b.take(one * 3, 2, 5).len(), 2, "count bound");
    }

    #[test]
    fn newer_update_replaces_older_and_resets_count() {
        let mut b = Broadcasts::default();
        b.push(left(1));
        b.take(100, 10, 5);
        b.push(Update::Alive {
            id: NodeId(1),
            incarnation: 2,
            addr: "x".into(),
            meta: vec![],
        });
        assert_eq!(b.len(), 1);
        assert_eq!(b.transmits(NodeId(1)), Some(0));
    }

    #[test]
    fn respects_byte_budget_and_skips_what_does_not_fit() {
        let mut b = Broadcasts::default();
        b.push(Update::Alive {
            id: NodeId(1),
            incarnation: 1,
            addr: "x".into(),
            meta: vec![0; 200],
        });
        b.push(left(2));
        let small = encoded_len(&left(2));
        // The big newer update does not fit; the small older one does.
        let got = b.take(small + 10, 10, 5);
        assert_eq!(got, vec![left(2)]);
        let total: usize = got.iter().map(encoded_len).sum();
        assert!(total <= small + 10);
    }
}
