//! The dissemination queue: each update waits here to be piggybacked on outgoing packets, a
//! bounded number of times, fewest transmissions first and newest first among equals. A newer
//! update about a member replaces the queued one.
//!
//! The queue is kept incremental, so that sending a packet costs O(k log q) for the k updates it
//! carries rather than O(q log q) for the q updates queued: an ordered index
//! `(transmits, newest first, id)` is maintained beside the per-member entries, and each update is
//! encoded once, when queued, so that a packet appends its bytes instead of cloning and
//! re-encoding it (see [`Broadcasts::take_encoded`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use crate::message::Update;
use crate::types::NodeId;

/// Index key: fewest transmissions first, then newest first.
type Key = (u32, Reverse<u64>, NodeId);

/// How many queued updates that do not fit the remaining budget are skipped before a packet is
/// considered full (bounds the scan when the queue holds many large updates).
const MAX_SKIPS: usize = 32;

/// Updates waiting to be disseminated, at most one per member.
#[derive(Clone, Debug, Default)]
pub(crate) struct Broadcasts {
    /// Each queued update's postcard encoding (as it appears in a packet's update list), in
    /// sending order.
    index: BTreeMap<Key, Vec<u8>>,
    /// The queue order of the update about each member; with its id and transmission count
    /// (at most `max_transmits`) it makes its key in `index`. Taking an update changes only
    /// its count, so the send path never touches this map until the update leaves.
    orders: HashMap<NodeId, u64>,
    /// Highest transmission count an update may have reached in `index`.
    max_transmits: u32,
    next_order: u64,
}

impl Broadcasts {
    /// Queues `update`, replacing any queued update about the same member.
    pub(crate) fn push(&mut self, update: Update) {
        let bytes = postcard::to_allocvec(&update).unwrap_or_default();
        if bytes.is_empty() {
            return;
        }
        let id = update.id();
        self.remove(id);
        let order = self.next_order;
        self.next_order += 1;
        self.index.insert((0, Reverse(order), id), bytes);
        self.orders.insert(id, order);
    }

    /// Drops what is queued about `id`.
    pub(crate) fn remove(&mut self, id: NodeId) {
        if let Some(key) = self.key_of(id) {
            self.index.remove(&key);
            self.orders.remove(&id);
        }
    }

    /// The index key of the update queued about `id`: its order is known, its transmission
    /// count is found by trying each possible one (cheap: they are few, and removals are rare
    /// next to takes).
    fn key_of(&self, id: NodeId) -> Option<Key> {
        let order = *self.orders.get(&id)?;
        (0..=self.max_transmits)
            .map(|t| (t, Reverse(order), id))
            .find(|k| self.index.contains_key(k))
    }

    /// Number of queued updates.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Fewest transmissions of any queued update, if any is queued.
    pub(crate) fn min_transmits(&self) -> Option<u32> {
        self.index.first_key_value().map(|(k, _)| k.0)
    }

    /// How many times the update about `id` has been sent, if one is queued.
    #[cfg(test)]
    pub(crate) fn transmits(&self, id: NodeId) -> Option<u32> {
        self.key_of(id).map(|k| k.0)
    }

    /// Takes up to `max_count` updates whose encoded sizes add up to at most `budget` bytes,
    /// fewest transmissions first, newest first among equals; appends their encodings to `out`
    /// and returns how many were taken. Each counts one transmission; an update sent `limit`
    /// times leaves the queue.
    pub(crate) fn take_encoded(
        &mut self,
        budget: usize,
        max_count: usize,
        limit: u32,
        out: &mut Vec<u8>,
    ) -> usize {
        if self.index.is_empty() || max_count == 0 {
            return 0;
        }
        let mut left = budget;
        let mut chosen: Vec<Key> = Vec::new();
        let mut skips = 0;
        for (key, bytes) in &self.index {
            if chosen.len() >= max_count || left == 0 || skips > MAX_SKIPS {
                break;
            }
            if bytes.len() > left {
                skips += 1;
                continue;
            }
            left -= bytes.len();
            out.extend_from_slice(bytes);
            chosen.push(*key);
        }
        for key in &chosen {
            let bytes = self.index.remove(key).expect("chosen from the index");
            let (transmits, order, id) = (key.0 + 1, key.1, key.2);
            if transmits >= limit {
                self.orders.remove(&id);
            } else {
                self.max_transmits = self.max_transmits.max(transmits);
                self.index.insert((transmits, order, id), bytes);
            }
        }
        chosen.len()
    }

    /// [`Broadcasts::take_encoded`], decoded back into updates (for tests).
    #[cfg(test)]
    pub(crate) fn take(&mut self, budget: usize, max_count: usize, limit: u32) -> Vec<Update> {
        let mut bytes = Vec::new();
        let n = self.take_encoded(budget, max_count, limit, &mut bytes);
        let mut rest: &[u8] = &bytes;
        let mut out = Vec::new();
        for _ in 0..n {
            let (u, r): (Update, &[u8]) = postcard::take_from_bytes(rest).expect("valid");
            out.push(u);
            rest = r;
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
    use crate::message::encoded_len;

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
