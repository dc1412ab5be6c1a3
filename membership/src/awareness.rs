//! Lifeguard's local health multiplier ("awareness"): a node that misses acks, or has to refute
//! suspicions about itself, is probably the slow one, so it probes less often and waits longer
//! before blaming others.

use std::time::Duration;

/// The local health multiplier, `0..=max`; zero is healthy.
#[derive(Clone, Debug)]
pub(crate) struct Awareness {
    score: u32,
    max: u32,
    enabled: bool,
}

impl Awareness {
    /// A healthy node; when `enabled` is false the score stays at zero.
    pub(crate) fn new(max: u32, enabled: bool) -> Self {
        Awareness {
            score: 0,
            max,
            enabled,
        }
    }

    /// Adds `delta` (negative for good news), clamped to `0..=max`.
    pub(crate) fn apply(&mut self, delta: i64) {
        if !self.enabled {
            return;
        }
        let next = (i64::from(self.score) + delta).clamp(0, i64::from(self.max));
        self.score = next as u32;
    }

    /// The current score.
    pub(crate) fn score(&self) -> u32 {
        self.score
    }

    /// `d · (score + 1)`.
    pub(crate) fn scale(&self, d: Duration) -> Duration {
        d.saturating_mul(self.score + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_scales() {
        let mut a = Awareness::new(8, true);
        a.apply(-1);
        assert_eq!(a.score(), 0);
        a.apply(3);
        assert_eq!(
            a.scale(Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        a.apply(100);
        assert_eq!(a.score(), 8);
        a.apply(-2);
        assert_eq!(a.score(), 6);
    }

    #[test]
    fn disabled_stays_healthy() {
        let mut a = Awareness::new(8, false);
        a.apply(5);
        assert_eq!(a.score(), 0);
        assert_eq!(a.scale(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
