//! Three real managers on turmoil: a restarted or reconnected manager follows the leader within
//! 2 s of simulated time, and losing the leader right after a restart does not leave the
//! cluster leaderless (see `shoal_sim::restart_sim`). A few seeds per scenario.

use std::time::Duration;

use shoal_sim::restart_sim::{run, Scenario};

fn seeds(scenario: Scenario, seeds: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    for seed in seeds {
        match run(scenario, seed) {
            Ok(r) => eprintln!(
                "{scenario:?} seed {seed}: ok in {:.3} s (simulated): {}",
                r.took.as_secs_f64(),
                r.detail
            ),
            Err(e) => failures.push(format!("{scenario:?} seed {seed}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_restarted_follower_follows_the_leader_within_two_seconds() {
    seeds(Scenario::FollowerRestart, 0..5);
}

#[test]
fn a_restarted_old_leader_follows_the_new_leader_within_two_seconds() {
    seeds(Scenario::LeaderRestart, 0..5);
}

#[test]
fn losing_the_leader_right_after_a_restart_still_elects_a_leader_within_five_seconds() {
    seeds(Scenario::RestartThenLeaderCrash, 0..5);
}

/// A cut shorter than QUIC's idle timeout (30 s), but long enough for its retransmission timer
/// to back off far (the stale connections must be replaced).
#[test]
fn a_leader_cut_off_for_twenty_seconds_follows_and_is_ready_within_two_seconds_of_the_repair() {
    seeds(Scenario::LeaderPartition(Duration::from_secs(20)), 0..5);
}

/// A short cut, and one longer than QUIC's idle timeout (the connections die).
#[test]
fn a_leader_cut_off_for_eight_or_forty_seconds_follows_and_is_ready_within_two_seconds() {
    seeds(Scenario::LeaderPartition(Duration::from_secs(8)), 0..3);
    seeds(Scenario::LeaderPartition(Duration::from_secs(40)), 0..3);
}

/// A manager cut off from the others says so: `1 of 3 managers reachable`, even while gossip
/// (the `lan` profile) still believes in the others.
#[test]
fn a_cut_off_manager_counts_only_the_managers_it_hears_from() {
    seeds(Scenario::CutOffRefusal, 0..3);
}
