//! Tunables of the membership protocol, validated once at start.

use std::time::Duration;

use crate::error::ConfigError;
use crate::types::MAX_ADDR_LEN;

/// Bytes of a packet that are not an address or metadata, counted generously: envelope, ids,
/// incarnation, tags and length prefixes. A packet must fit one full member record besides these.
pub(crate) const RECORD_OVERHEAD: usize = 64;

/// Configuration of one member. Every member of a cluster should use the same values (in
/// particular `max_meta_size`, which bounds what this node accepts from the others).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The SWIM protocol period: one member is probed per period (scaled by the local health).
    pub protocol_period: Duration,
    /// How long to wait for a direct ack before asking others to probe (scaled by the local
    /// health). Must be below the protocol period, which bounds the whole probe.
    pub probe_timeout: Duration,
    /// Aligned probe rounds. Each member counts its probe rounds and the counters are kept
    /// together (every ping carries the sender's). In round `r` every member probes the live
    /// member `s(r)` places after itself in the id-sorted list of live members, where the shift
    /// `s(r)` runs through a pseudo-random permutation of `1..n` every `n − 1` rounds, the same
    /// at every member. When the members agree on the list, each member is probed by exactly one
    /// other in every round (a crashed member is probed within two periods, where with
    /// independently shuffled orders nobody probes it for `t` periods with probability about
    /// `e^−t`), and each member still probes every other once per `n − 1` rounds in a random
    /// order (randomized round-robin). While views differ, it degrades to a random order.
    /// Off: each member shuffles its own round-robin order (SWIM's original scheme).
    pub aligned_rounds: bool,
    /// How many members are asked to probe indirectly (ping-req) after a missed ack.
    pub indirect_checks: usize,
    /// How many times the direct ping (same sequence number) is repeated before the probe
    /// timeout while no ack has come, evenly spaced: with 2 and a 200 ms timeout, at 67 and
    /// 133 ms. Most missed acks are one lost datagram: a repeated ping costs at most two packets
    /// where the indirect probe costs about `4 · indirect_checks`, so the indirect probes (and
    /// the load they add, which grows with the loss rate) are kept for targets that missed every
    /// ping. The indirect probe still starts at the probe timeout, so detection is no slower,
    /// and a probe fails only if every ping and the indirect probes did, so suspicions are
    /// rarer. Indirect probers repeat their ping once, half way to their own timeout.
    pub probe_retries: u32,
    /// Suspicion timeout multiplier: the minimum timeout is
    /// `suspicion_mult · max(1, log10(n)) · protocol_period`.
    pub suspicion_mult: f64,
    /// The suspicion timeout starts at `suspicion_max_timeout_mult` times the minimum and shrinks
    /// towards it as independent confirmations arrive (Lifeguard).
    pub suspicion_max_timeout_mult: u32,
    /// Lifeguard's K: how many independent confirmations (members other than the accuser and
    /// the suspect) bring the suspicion timeout down to its minimum. memberlist ties it to the
    /// multiplier (`suspicion_mult − 2`); it is separate here so that the minimum can be short
    /// while a lone accusation still waits for the maximum. Zero means a fixed timeout at the
    /// minimum. In clusters with fewer than `K + 2` members it is zero.
    pub suspicion_confirmations: u32,
    /// How many members, in expectation, probe a member as soon as they hear that it is
    /// suspected, instead of waiting for its turn in their round (each moves it to the front of
    /// its probe order with probability `suspect_probes / (n − 2)`; no packet is added, the
    /// round just reorders). A live suspect hears of the suspicion in those pings (buddy system)
    /// and refutes sooner; a dead one yields the independent confirmations that bring
    /// Lifeguard's timeout to its minimum within a period or two, instead of waiting for the
    /// K-th member whose round happens to reach it. Zero turns it off; Lifeguard only.
    pub suspect_probes: u32,
    /// Each update is piggybacked about `retransmit_mult · ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// How often queued updates are also gossiped on their own packets; zero turns it off
    /// (updates then travel on probes, acks, ping-reqs and nacks only).
    pub gossip_interval: Duration,
    /// How many random members each gossip round goes to.
    pub gossip_nodes: usize,
    /// A gossip round happens only while some queued update has been sent fewer than this many
    /// times; older updates ride on probes, acks, ping-reqs and nacks only ("piggybacking
    /// first"). Gossip rounds then give each fresh update a fast start (fan-out `gossip_nodes`
    /// right away) without adding packets for the remaining `retransmit_mult · log10(n)`
    /// transmissions, which the probe traffic carries anyway. `u32::MAX` gossips whenever
    /// anything is queued (memberlist's behaviour).
    pub gossip_max_transmits: u32,
    /// For how long a member declared dead still receives gossip, so it can hear of its death and
    /// refute it.
    pub gossip_to_the_dead: Duration,
    /// How often the full state is exchanged with one random member (push-pull); zero turns it off.
    pub push_pull_interval: Duration,
    /// How often one random dead member and one seed that is not a known live member are sent a
    /// push-pull, so that a healed partition merges back; zero turns it off.
    pub reconnect_interval: Duration,
    /// How often the join push-pull is sent again to the seeds until one answers.
    pub join_retry_interval: Duration,
    /// Dead and left members are forgotten this long after their state changed.
    pub dead_reap_timeout: Duration,
    /// Largest packet this node sends, in bytes (probes with their piggybacked updates, gossip,
    /// and each chunk of a push-pull).
    pub gossip_packet_size: usize,
    /// Largest member metadata accepted, in bytes.
    pub max_meta_size: usize,
    /// Maximum of the local health multiplier (Lifeguard's "awareness").
    pub awareness_max: u32,
    /// Most members remembered; news of further members is ignored (and counted).
    pub max_members: usize,
    /// Lifeguard on: local health multiplier, dynamic suspicion timeout, nacks and the buddy
    /// system. Off: plain SWIM with a fixed suspicion timeout (for comparison).
    pub lifeguard: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config::lan()
    }
}

impl Config {
    /// Defaults for a LAN, close to memberlist's: one probe per second, three indirect checks,
    /// a 30 s push-pull, 1400-byte packets.
    ///
    /// Departures from memberlist, and why:
    ///
    /// - `probe_timeout` is 200 ms, not 500 ms. A LAN round trip is well under a millisecond,
    ///   and Lifeguard stretches the timeout on a node that misses its own acks. The probe of a
    ///   dead member fails once the helpers' nacks are in, about 1.8 × the timeout after it
    ///   started (0.36 s instead of 0.9 s), so the first suspicion comes ~1.5 periods after a
    ///   crash on average (SWIM's e/(e − 1) for the wait for the first probe, plus that).
    /// - `suspicion_mult` is 1.5, not 4, with `suspicion_confirmations` (K) kept at memberlist's
    ///   2. With Lifeguard the minimum timeout is only reached once K other members
    ///   independently failed to reach the suspect; a lone accusation (a slow or lossy accuser)
    ///   still waits `suspicion_max_timeout_mult` × the minimum. At 4, a crash in 256 members
    ///   was declared after 4 · log10(256) ≈ 9.6 s at best, plus the wait for the first probe
    ///   and the gossip of the verdict: ~12 s. At 1.5 the minimum is ~3.6 s and everyone knows
    ///   within ~5.5 s on average. A live member hears of its suspicion (buddy system and
    ///   gossip) and refutes in well under a second, even at 10 % loss (`swim-sim` shows the
    ///   same zero false positives at 1.0, 1.5 and 2).
    /// - `probe_retries` = 2: the direct ping is repeated twice before the indirect probe.
    /// - `gossip_max_transmits` = 3: gossip rounds only for fresh updates.
    pub fn lan() -> Self {
        Config {
            protocol_period: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(200),
            aligned_rounds: true,
            indirect_checks: 3,
            probe_retries: 2,
            suspicion_mult: 1.5,
            suspicion_max_timeout_mult: 6,
            suspicion_confirmations: 2,
            suspect_probes: 4,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            gossip_max_transmits: 3,
            gossip_to_the_dead: Duration::from_secs(30),
            push_pull_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(30),
            join_retry_interval: Duration::from_secs(2),
            dead_reap_timeout: Duration::from_secs(24 * 3600),
            gossip_packet_size: 1400,
            max_meta_size: 512,
            awareness_max: 8,
            max_members: 10_000,
            lifeguard: true,
        }
    }

    /// A protocol period five times shorter than [`Config::lan`], for tests and simulations on
    /// one machine (the probe timeout stays generous for a loaded test machine):
    /// 200 ms protocol period, 100 ms probe timeout, 5 s push-pull, 2 s reconnect.
    pub fn local() -> Self {
        Config {
            protocol_period: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            gossip_interval: Duration::from_millis(50),
            gossip_to_the_dead: Duration::from_secs(5),
            push_pull_interval: Duration::from_secs(5),
            reconnect_interval: Duration::from_secs(2),
            join_retry_interval: Duration::from_millis(500),
            dead_reap_timeout: Duration::from_secs(300),
            ..Config::lan()
        }
    }

    /// Checks the settings are consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.protocol_period.is_zero() || self.probe_timeout.is_zero() {
            return Err(ConfigError(
                "protocol_period and probe_timeout must be positive".into(),
            ));
        }
        if self.probe_timeout >= self.protocol_period {
            return Err(ConfigError(format!(
                "probe_timeout ({:?}) must be below protocol_period ({:?})",
                self.probe_timeout, self.protocol_period
            )));
        }
        if !self.suspicion_mult.is_finite()
            || self.suspicion_mult < 0.1
            || self.suspicion_max_timeout_mult == 0
        {
            return Err(ConfigError(
                "suspicion_mult must be at least 0.1 and suspicion_max_timeout_mult at least 1"
                    .into(),
            ));
        }
        if self.probe_retries > 16 {
            return Err(ConfigError("probe_retries must be at most 16".into()));
        }
        if self.retransmit_mult == 0 {
            return Err(ConfigError("retransmit_mult must be at least 1".into()));
        }
        if !self.gossip_interval.is_zero() && self.gossip_nodes == 0 {
            return Err(ConfigError(
                "gossip_nodes must be at least 1 when gossip_interval is set".into(),
            ));
        }
        if self.join_retry_interval.is_zero() {
            return Err(ConfigError("join_retry_interval must be positive".into()));
        }
        let needed = self.max_meta_size + MAX_ADDR_LEN + RECORD_OVERHEAD;
        if self.gossip_packet_size < needed {
            return Err(ConfigError(format!(
                "gossip_packet_size ({}) must hold one full member record ({needed} bytes with \
                 max_meta_size {})",
                self.gossip_packet_size, self.max_meta_size
            )));
        }
        if self.gossip_packet_size > crate::message::MAX_PACKET_SIZE {
            return Err(ConfigError(format!(
                "gossip_packet_size ({}) exceeds the {}-byte packet limit",
                self.gossip_packet_size,
                crate::message::MAX_PACKET_SIZE
            )));
        }
        if self.max_members < 2 {
            return Err(ConfigError("max_members must be at least 2".into()));
        }
        // Durations are multiplied by (awareness + 1) and suspicion multipliers; keep them far
        // from overflow.
        let day = Duration::from_secs(24 * 3600);
        if self.protocol_period > day || self.awareness_max > 1000 || self.suspicion_mult > 1000.0 {
            return Err(ConfigError(
                "protocol_period, awareness_max or suspicion_mult is unreasonably large".into(),
            ));
        }
        if self.suspicion_max_timeout_mult > 1000 {
            return Err(ConfigError(
                "suspicion_max_timeout_mult is unreasonably large".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid() {
        Config::lan().validate().unwrap();
        Config::local().validate().unwrap();
        let lan = Config::lan();
        assert_eq!(lan.protocol_period, Duration::from_secs(1));
        assert_eq!(lan.probe_timeout, Duration::from_millis(200));
        assert_eq!(lan.indirect_checks, 3);
        assert_eq!(lan.suspicion_mult, 1.5);
        assert_eq!(lan.suspicion_confirmations, 2);
        assert_eq!(lan.suspect_probes, 4);
        assert_eq!(lan.suspicion_max_timeout_mult, 6);
        assert_eq!(lan.retransmit_mult, 4);
        assert_eq!(lan.push_pull_interval, Duration::from_secs(30));
        assert_eq!(lan.gossip_packet_size, 1400);
        assert_eq!(lan.awareness_max, 8);
        assert!(Config::local().protocol_period < lan.protocol_period);
    }

    #[test]
    fn rejects_inconsistent_settings() {
        let mut c = Config::local();
        c.probe_timeout = c.protocol_period;
        assert!(c.validate().is_err());
        let mut c = Config::local();
        c.gossip_packet_size = 300;
        assert!(c.validate().is_err());
        let mut c = Config::local();
        c.retransmit_mult = 0;
        assert!(c.validate().is_err());
        let mut c = Config::local();
        c.gossip_nodes = 0;
        assert!(c.validate().is_err());
        for bad in [0.0, 0.05, -1.0, f64::NAN, f64::INFINITY, 5000.0] {
            let mut c = Config::local();
            c.suspicion_mult = bad;
            assert!(c.validate().is_err(), "suspicion_mult {bad} accepted");
        }
    }
}
