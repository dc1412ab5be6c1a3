//! Leader leases under clock faults: the lease is shorter than the followers' vote refusal by a
//! drift margin, and the refusal survives restarts and term changes.

mod common;

use common::Cluster;
use shoal_raft::{Config, Effect, Message, MessageBody, NodeId, ReadMode, Role};

const ELECTION: usize = 10;

fn lease_cluster() -> Cluster {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.read_mode = ReadMode::Lease);
    c.elect(1);
    c.deliver_all();
    c.tick_all(3);
    c
}

fn read_ready(c: &Cluster, id: NodeId, ctx: u64) -> bool {
    c.events(id)
        .iter()
        .any(|e| matches!(e, Effect::ReadReady { ctx: x, .. } if *x == ctx))
}

fn vote_from_2(c: &Cluster, term: u64) -> Message {
    Message {
        from: 2,
        to: 3,
        term,
        body: MessageBody::Vote {
            last_log_index: c.node(2).last_index(),
            last_log_term: c.node(2).last_term(),
            transfer: false,
        },
    }
}

fn pre_vote_from_2(c: &Cluster, term: u64) -> Message {
    Message {
        from: 2,
        to: 3,
        term,
        body: MessageBody::PreVote {
            last_log_index: c.node(2).last_index(),
            last_log_term: c.node(2).last_term(),
        },
    }
}

fn granted(msgs: &[Message]) -> bool {
    msgs.iter().any(|m| {
        matches!(
            m.body,
            MessageBody::VoteResp { granted: true } | MessageBody::PreVoteResp { granted: true }
        )
    })
}

#[test]
fn the_lease_is_shorter_than_the_vote_refusal_by_tick_phase_and_drift() {
    let mut cfg = Config::new(1);
    cfg.read_mode = ReadMode::Lease;
    assert_eq!(cfg.max_clock_drift, 0.1, "default drift bound");
    assert_eq!(cfg.lease_ticks(), 7, "floor(9 * 0.9 / 1.1)");
    cfg.max_clock_drift = 0.0;
    assert_eq!(
        cfg.lease_ticks(),
        9,
        "one tick for phase even without drift"
    );
    cfg.max_clock_drift = 0.5;
    assert_eq!(cfg.lease_ticks(), 3, "floor(9 * 0.5 / 1.5)");
    assert!(cfg.validate().is_ok());
    for bad in [1.0, -0.1, f64::NAN, f64::INFINITY] {
        cfg.max_clock_drift = bad;
        assert!(cfg.validate().is_err(), "drift {bad} refused");
    }
    // No lease left: refused in lease mode, fine otherwise.
    cfg.max_clock_drift = 0.1;
    cfg.election_tick = 2;
    cfg.heartbeat_tick = 1;
    assert_eq!(cfg.lease_ticks(), 0);
    assert!(cfg.validate().is_err());
    cfg.read_mode = ReadMode::Safe;
    assert!(cfg.validate().is_ok());
}

#[test]
fn the_leader_serves_lease_reads_only_for_lease_ticks_after_the_last_acknowledged_round() {
    let mut c = lease_cluster();
    let lease = c.config(1).lease_ticks() as usize;
    assert!(lease < ELECTION - 1);
    assert_eq!(c.node(1).role(), Role::Leader);
    c.read_index(1, 1).unwrap();
    assert!(read_ready(&c, 1, 1), "fresh lease");
    // Nothing is acknowledged any more: the lease runs `lease` ticks from the last round a
    // quorum echoed (sent at the current tick).
    c.isolate(1);
    for k in 1..=lease {
        c.tick(1);
        let ctx = 10 + k as u64;
        c.read_index(1, ctx).unwrap();
        assert_eq!(
            read_ready(&c, 1, ctx),
            k < lease,
            "{k} ticks after the last acknowledged round (lease {lease})"
        );
    }
    assert_eq!(
        c.node(1).role(),
        Role::Leader,
        "still leader: only the lease ran out"
    );
}

#[test]
fn a_restarted_follower_refuses_votes_for_an_election_timeout() {
    let mut c = lease_cluster();
    let term = c.node(3).term();
    c.crash(3);
    c.restart(3);
    c.clear_queue();
    c.step(3, vote_from_2(&c, term + 1)).unwrap();
    c.step(3, pre_vote_from_2(&c, term + 1)).unwrap();
    assert!(
        c.take_messages_from(3).is_empty(),
        "a restarted node may have promised a lease just before its crash"
    );
    assert_eq!(c.node(3).term(), term);
    assert_ne!(c.node(3).vote(), Some(2));
    // Pre-votes are answered a tenth earlier (they elect nobody), votes after the whole timeout.
    c.tick_n(3, ELECTION - ELECTION / 10);
    c.clear_queue();
    c.step(3, pre_vote_from_2(&c, term + 1)).unwrap();
    assert!(granted(&c.take_messages_from(3)));
    c.step(3, vote_from_2(&c, term + 1)).unwrap();
    assert!(c.take_messages_from(3).is_empty(), "still inside for votes");
    c.tick_n(3, ELECTION / 10);
    c.clear_queue();
    c.step(3, vote_from_2(&c, term + 1)).unwrap();
    c.sync(3);
    assert!(granted(&c.take_messages_from(3)), "the refusal has run out");
}

#[test]
fn a_follower_pushed_to_a_higher_term_keeps_refusing_votes_during_the_lease() {
    let mut c = lease_cluster();
    let term = c.node(3).term();
    assert_eq!(c.node(3).leader(), Some(1));
    c.clear_queue();
    // A rejection from a node at a higher term moves node 3 there, without a leader.
    c.step(
        3,
        Message {
            from: 2,
            to: 3,
            term: term + 2,
            body: MessageBody::PreVoteResp { granted: false },
        },
    )
    .unwrap();
    assert_eq!(c.node(3).term(), term + 2);
    assert_eq!(c.node(3).leader(), None);
    // A candidate of that same term, then of a higher one: both ignored, the lease of node 1
    // still holds.
    c.step(3, vote_from_2(&c, term + 2)).unwrap();
    c.step(3, vote_from_2(&c, term + 3)).unwrap();
    c.sync(3);
    assert!(c.take_messages_from(3).is_empty());
    assert_eq!(c.node(3).vote(), None);
    assert_eq!(c.node(3).term(), term + 2);
    // A transfer's election is not bound by the lease (the leader gave its lease up).
    let mut m = vote_from_2(&c, term + 2);
    if let MessageBody::Vote { transfer, .. } = &mut m.body {
        *transfer = true;
    }
    c.step(3, m).unwrap();
    c.sync(3);
    assert!(granted(&c.take_messages_from(3)));
}
