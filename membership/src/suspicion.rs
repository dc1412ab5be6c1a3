//! Suspicion timers. With Lifeguard the timeout starts at a maximum and shrinks towards a minimum
//! as independent members confirm the suspicion: a member many others cannot reach is declared
//! failed quickly, one only we cannot reach gets time to refute.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::types::NodeId;

/// `suspicion_mult · max(1, log10(n)) · period`: the minimum suspicion timeout for a cluster of
/// `n` live members (rounded down to the millisecond, so that it does not depend on float noise).
pub(crate) fn min_timeout(suspicion_mult: f64, n: usize, period: Duration) -> Duration {
    let scale = (n.max(1) as f64).log10().max(1.0);
    let ms = suspicion_mult * scale * period.as_secs_f64() * 1000.0;
    Duration::from_millis(ms.floor() as u64)
}

/// `max(min, max − (max − min) · log(c + 1) / log(k + 1))`: the timeout after `c` independent
/// confirmations out of `k` expected. With `k = 0` it is `min`.
pub(crate) fn timeout(min: Duration, max: Duration, k: u32, c: u32) -> Duration {
    if k == 0 || max <= min {
        return min;
    }
    let frac = (f64::from(c) + 1.0).ln() / (f64::from(k) + 1.0).ln();
    let span = (max - min).as_secs_f64() * 1000.0;
    let ms = (max.as_secs_f64() * 1000.0 - frac * span).floor();
    Duration::from_millis(ms as u64).max(min)
}

/// An open suspicion about one member.
#[derive(Clone, Debug)]
pub(crate) struct Suspicion {
    /// When it started.
    pub(crate) start: Duration,
    min: Duration,
    max: Duration,
    /// Confirmations expected before the timeout reaches `min`.
    k: u32,
    /// The accuser first, then each distinct confirmer.
    confirmers: BTreeSet<NodeId>,
}

impl Suspicion {
    /// A suspicion raised by `accuser` at `start`.
    pub(crate) fn new(
        start: Duration,
        accuser: NodeId,
        k: u32,
        min: Duration,
        max: Duration,
    ) -> Self {
        Suspicion {
            start,
            min,
            max: max.max(min),
            k,
            confirmers: BTreeSet::from([accuser]),
        }
    }

    /// Independent confirmations so far (the accuser not counted).
    pub(crate) fn confirmations(&self) -> u32 {
        (self.confirmers.len() as u32).saturating_sub(1)
    }

    /// Records a confirmation from `from`. True if it is new and still shortens the timeout,
    /// in which case it is worth passing on.
    pub(crate) fn confirm(&mut self, from: NodeId) -> bool {
        if self.confirmations() >= self.k {
            return false;
        }
        self.confirmers.insert(from)
    }

    /// The current timeout, measured from `start`.
    pub(crate) fn timeout(&self) -> Duration {
        timeout(self.min, self.max, self.k, self.confirmations())
    }

    /// When the member is declared failed unless it refutes first.
    pub(crate) fn deadline(&self) -> Duration {
        self.start.saturating_add(self.timeout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn min_timeout_scales_with_log_n() {
        let p = Duration::from_secs(1);
        assert_eq!(min_timeout(4.0, 1, p), Duration::from_secs(4));
        assert_eq!(min_timeout(4.0, 10, p), Duration::from_secs(4));
        assert_eq!(min_timeout(4.0, 100, p), Duration::from_secs(8));
        assert_eq!(min_timeout(4.0, 1000, p), Duration::from_secs(12));
    }

    #[test]
    fn timeout_shrinks_with_confirmations() {
        let (min, max) = (MS(4000), MS(24000));
        assert_eq!(timeout(min, max, 3, 0), max);
        let one = timeout(min, max, 3, 1);
        let two = timeout(min, max, 3, 2);
        assert!(one < max && two < one && two > min, "{one:?} {two:?}");
        // log(2)/log(4) = 1/2: half way.
        assert_eq!(one, MS(14000));
        assert_eq!(timeout(min, max, 3, 3), min);
        assert_eq!(timeout(min, max, 3, 10), min);
        assert_eq!(timeout(min, max, 0, 0), min);
    }

    #[test]
    fn confirmations_count_distinct_members_up_to_k() {
        let mut s = Suspicion::new(MS(1000), NodeId(1), 2, MS(1000), MS(6000));
        assert_eq!(s.deadline(), MS(7000));
        assert!(!s.confirm(NodeId(1)), "the accuser does not confirm itself");
        assert!(s.confirm(NodeId(2)));
        assert!(!s.confirm(NodeId(2)), "the same member counts once");
        assert_eq!(s.confirmations(), 1);
        assert!(s.confirm(NodeId(3)));
        assert_eq!(s.deadline(), MS(2000));
        assert!(
            !s.confirm(NodeId(4)),
            "beyond k confirmations change nothing"
        );
    }
}
