//! Scenario tests following the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable
//! Consensus Algorithm"): terms (§5.1), leader election (§5.2), log replication (§5.3), safety
//! (§5.4, Figures 7 and 8), plus the durability rules this core adds (votes and acknowledgements
//! only after the write is durable, the leader counting itself only once its own write is durable).

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;

use common::{entry, msg, state_with_log, Cluster};
use shoal_raft::{
    Config, Entry, Membership, Message, MessageBody, Payload, RaftNode, RecoveredState, Role,
    SnapshotMeta,
};

const E: usize = 10;

// The paper's algorithm has the textbook election timer: shoal's early pre-vote round (sent a
// tenth of the timeout before the timer fires; tested in features.rs) is off here.

fn paper(ids: &[u64]) -> Cluster {
    paper_with(ids, |_| {})
}

fn paper_with(ids: &[u64], configure: impl Fn(&mut Config) + 'static) -> Cluster {
    Cluster::with_config(ids, move |cfg| {
        cfg.early_pre_vote = false;
        configure(cfg)
    })
}

fn paper_from(
    states: Vec<(u64, RecoveredState)>,
    configure: impl Fn(&mut Config) + 'static,
) -> Cluster {
    Cluster::from_states(states, move |cfg| {
        cfg.early_pre_vote = false;
        configure(cfg)
    })
}

fn no_pre_vote(cfg: &mut Config) {
    cfg.pre_vote = false;
}

fn append(prev_index: u64, prev_term: u64, entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::Append {
        prev_index,
        prev_term,
        entries,
        commit,
        seq: 0,
    }
}

/// `(success, match_index, hint_index)` of every AppendResp `from` has queued.
fn append_resps(c: &mut Cluster, from: u64) -> Vec<(bool, u64, u64)> {
    c.take_messages_from(from)
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResp {
                success,
                match_index,
                hint_index,
                ..
            } => Some((success, match_index, hint_index)),
            _ => None,
        })
        .collect()
}

/// Every VoteResp `from` has queued, as `(to, term, granted)`.
fn vote_resps(c: &mut Cluster, from: u64) -> Vec<(u64, u64, bool)> {
    c.take_messages_from(from)
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::VoteResp { granted } => Some((m.to, m.term, granted)),
            _ => None,
        })
        .collect()
}

fn vote_req(last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::Vote {
        last_log_index,
        last_log_term,
        transfer: false,
    }
}

/// A cluster of nodes 1..=3 where node 1 plays `role`.
fn node1_as(role: Role, configure: fn(&mut Config)) -> Cluster {
    let mut c = paper_with(&[1, 2, 3], configure);
    match role {
        Role::Leader => c.elect(1),
        Role::Follower => c.elect(2),
        Role::PreCandidate | Role::Candidate => {
            c.elect(2);
            c.campaign(1);
            if role == Role::Candidate && c.node(1).role() == Role::PreCandidate {
                let t = c.node(1).term() + 1;
                c.step(1, msg(2, 1, t, MessageBody::PreVoteResp { granted: true }))
                    .unwrap();
            }
            c.clear_queue();
        }
    }
    assert_eq!(c.node(1).role(), role);
    c
}

/// One message of every kind that carries a term, valid for a receiver in a 3-node group.
fn every_kind(term: u64) -> Vec<MessageBody> {
    vec![
        append(0, 0, vec![], 0),
        MessageBody::Heartbeat { commit: 0, seq: 0 },
        vote_req(0, 0),
        MessageBody::VoteResp { granted: false },
        MessageBody::PreVoteResp { granted: false },
        MessageBody::AppendResp {
            success: false,
            match_index: 0,
            hint_index: 0,
            hint_term: 0,
            seq: 0,
        },
        MessageBody::HeartbeatResp { seq: 0 },
        MessageBody::Snapshot {
            meta: SnapshotMeta {
                index: 50,
                term,
                membership: Membership::with_voters([1, 2, 3]),
            },
            offset: 0,
            data: vec![1, 2, 3],
            done: false,
            seq: 0,
        },
        MessageBody::SnapshotResp {
            index: 0,
            next_offset: 0,
            done: false,
            seq: 0,
        },
        MessageBody::TimeoutNow,
    ]
}

// ------------------------------------------------------------------------------------- §5.1 terms

/// §5.1: "If one server's current term is smaller than the other's, then it updates its current
/// term to the larger value. If a candidate or leader discovers that its term is out of date, it
/// immediately reverts to follower state." Checked for every message kind and every role, and the
/// new term is durable before anything else happens.
#[test]
fn higher_term_in_any_message_makes_the_receiver_a_follower_of_that_term() {
    fn plain(cfg: &mut Config) {
        cfg.check_quorum = false;
    }
    for configure in [plain as fn(&mut Config), |_: &mut Config| {}] {
        let check_quorum = {
            let mut cfg = Config::new(1);
            configure(&mut cfg);
            cfg.check_quorum
        };
        for role in [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
        ] {
            for body in every_kind(100) {
                let mut c = node1_as(role, configure);
                let old = c.node(1).term();
                let kind = body.kind();
                let new = old + 5;
                let body = match body {
                    MessageBody::Snapshot {
                        mut meta,
                        offset,
                        data,
                        done,
                        seq,
                    } => {
                        meta.term = new;
                        MessageBody::Snapshot {
                            meta,
                            offset,
                            data,
                            done,
                            seq,
                        }
                    }
                    // A candidate whose log is up to date, so that the vote is granted.
                    MessageBody::Vote { .. } => vote_req(1000, new),
                    b => b,
                };
                let sticky =
                    check_quorum && kind == "vote" && matches!(role, Role::Follower | Role::Leader);
                c.step(1, msg(3, 1, new, body)).unwrap();
                let n = c.node(1);
                let what = format!("{kind} to a {role:?} (check_quorum {check_quorum})");
                if sticky {
                    // Leader stickiness (§6 of the thesis, "disruptive servers"): a node that
                    // heard from a live leader within the election timeout ignores the request.
                    assert_eq!(n.term(), old, "{what}");
                    assert_eq!(n.role(), role, "{what}");
                    continue;
                }
                assert_eq!(n.term(), new, "{what}");
                assert_eq!(n.role(), Role::Follower, "{what}");
                let expected_leader = match kind {
                    "append" | "heartbeat" | "snapshot" => Some(3),
                    _ => None,
                };
                assert_eq!(n.leader(), expected_leader, "{what}");
                let expected_vote = if kind == "vote" { Some(3) } else { None };
                assert_eq!(n.vote(), expected_vote, "{what}");
                assert_eq!(c.storage(1).durable().hard_state.term, new, "{what}");
            }
        }
    }
}

/// Pre-votes (§9.6 of the thesis) exist precisely so that a partitioned node does not raise
/// everybody's term: neither a pre-vote request nor a granted pre-vote answer changes the term.
#[test]
fn pre_vote_messages_do_not_change_the_receivers_term() {
    let mut c = paper(&[1, 2, 3]);
    let t = c.node(1).term();
    let pre_vote = MessageBody::PreVote {
        last_log_index: 0,
        last_log_term: 0,
    };
    c.step(1, msg(2, 1, t + 1, pre_vote)).unwrap();
    assert_eq!(c.node(1).term(), t);
    assert_eq!(c.node(1).vote(), None);
    let granted: Vec<Message> = c.take_messages_from(1);
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].term, t + 1);
    assert_eq!(granted[0].body, MessageBody::PreVoteResp { granted: true });

    let mut c = node1_as(Role::Follower, |_| {});
    let t = c.node(1).term();
    let resp = MessageBody::PreVoteResp { granted: true };
    c.step(1, msg(3, 1, t + 1, resp)).unwrap();
    assert_eq!(c.node(1).term(), t);
    assert_eq!(c.node(1).role(), Role::Follower);
}

/// §5.1: "If a server receives a request with a stale term number, it rejects the request." The
/// rejection carries the current term so a deposed leader learns it and steps down.
#[test]
fn stale_term_messages_are_rejected_and_answered_with_the_current_term() {
    let mut c = paper(&[1, 2, 3]);
    c.elect(1);
    c.tick_all(2);
    c.isolate(1);
    c.elect(2);
    c.tick_all(2);
    let t2 = c.node(3).term();
    assert!(t2 > 1);
    let log3 = c.log(3);
    c.heal(); // node 1 still believes it leads term 1

    // A stale AppendEntries / heartbeat: nothing changes, the answer carries term t2.
    for body in [
        append(2, 1, vec![entry(3, 1)], 3),
        MessageBody::Heartbeat { commit: 3, seq: 7 },
    ] {
        c.step(3, msg(1, 3, 1, body)).unwrap();
        let out = c.take_messages_from(3);
        assert_eq!(out.len(), 1, "one answer to the stale leader");
        assert_eq!(out[0].to, 1);
        assert_eq!(out[0].term, t2);
        assert_eq!(c.log(3), log3);
        assert_eq!(c.node(3).leader(), Some(2));
        assert_eq!(c.node(3).term(), t2);
    }
    // Stale votes and answers are ignored.
    for body in [
        vote_req(10, 1),
        MessageBody::VoteResp { granted: true },
        MessageBody::AppendResp {
            success: true,
            match_index: 1,
            hint_index: 0,
            hint_term: 0,
            seq: 0,
        },
        MessageBody::HeartbeatResp { seq: 0 },
    ] {
        c.step(3, msg(1, 3, 1, body.clone())).unwrap();
        assert!(c.take_messages_from(3).is_empty(), "{body:?} is ignored");
        c.step(2, msg(1, 2, 1, body.clone())).unwrap();
        assert_eq!(c.node(2).role(), Role::Leader, "{body:?}");
        assert_eq!(c.node(2).term(), t2);
    }
    assert_eq!(c.node(3).vote(), c.storage(3).durable().hard_state.vote);
    assert_ne!(c.node(3).vote(), Some(1));

    // End to end: the deposed leader proposes, learns the new term from the answers, steps down,
    // and its stale entry is never applied anywhere.
    assert_eq!(c.node(1).role(), Role::Leader);
    let stale = c.propose(1, b"stale").unwrap();
    c.deliver_all();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), t2);
    c.tick_all(5);
    assert_eq!(c.log(1), c.log(2));
    assert_ne!(c.node(1).term_at(stale.index), Some(stale.term));
    for id in [1, 2, 3] {
        assert!(!c.applied_commands(id).contains(&b"stale".to_vec()));
    }
}

// ---------------------------------------------------------------------------------- §5.2 election

/// §5.2: "When servers start up, they begin as followers."
#[test]
fn nodes_start_as_followers() {
    let c = paper(&[1, 2, 3]);
    for id in [1, 2, 3] {
        let n = c.node(id);
        assert_eq!(n.role(), Role::Follower);
        assert_eq!(n.term(), 0);
        assert_eq!(n.leader(), None);
        assert_eq!(n.vote(), None);
    }
    let joiner = RaftNode::new(Config::new(9), RecoveredState::default()).unwrap();
    assert_eq!(joiner.role(), Role::Follower);
    assert!(!joiner.is_promotable());
}

/// §5.2: "Leaders send periodic heartbeats ... to all followers in order to maintain their
/// authority." Here: one heartbeat per follower every `heartbeat_tick` ticks, carrying the term.
#[test]
fn leader_sends_heartbeats_every_heartbeat_tick() {
    for hb in [1u32, 3] {
        let mut c = paper_with(&[1, 2, 3], move |cfg| cfg.heartbeat_tick = hb);
        c.elect(1);
        let term = c.node(1).term();
        for t in 1..=4 * hb {
            c.tick(1);
            let beats: Vec<Message> = c
                .take_messages_from(1)
                .into_iter()
                .filter(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
                .collect();
            if t % hb == 0 {
                let to: BTreeSet<u64> = beats.iter().map(|m| m.to).collect();
                assert_eq!(to, BTreeSet::from([2, 3]), "tick {t} (heartbeat_tick {hb})");
                assert_eq!(beats.len(), 2);
                assert!(beats.iter().all(|m| m.term == term));
            } else {
                assert!(beats.is_empty(), "tick {t} (heartbeat_tick {hb})");
            }
            c.deliver_all();
        }
    }
}

/// §5.2: "A server remains in follower state as long as it receives valid RPCs from a leader."
#[test]
fn followers_stay_followers_while_heartbeats_arrive() {
    let mut c = paper(&[1, 2, 3, 4, 5]);
    c.elect(3);
    let term = c.node(3).term();
    c.tick_all(20 * E);
    assert_eq!(c.leader(), Some(3));
    for id in 1..=5 {
        assert_eq!(c.node(id).term(), term);
        assert_eq!(c.node(id).stats().elections, u64::from(id == 3));
    }
}

/// §5.2: "If a follower receives no communication over a period of time called the election
/// timeout, then it ... begins an election": it increments its term, votes for itself and asks
/// the others for their votes (with pre-vote, it first asks without raising its term).
#[test]
fn follower_starts_an_election_after_its_election_timeout() {
    for pre_vote in [false, true] {
        let mut c = paper_with(&[1, 2, 3], move |cfg| cfg.pre_vote = pre_vote);
        let r = c.node(1).randomized_election_timeout() as usize;
        assert!((E..2 * E).contains(&r));
        c.tick_n(1, r - 1);
        assert_eq!(c.node(1).role(), Role::Follower);
        assert!(c.queued().is_empty());
        c.tick(1);
        let out = c.take_messages_from(1);
        let to: BTreeSet<u64> = out.iter().map(|m| m.to).collect();
        assert_eq!(to, BTreeSet::from([2, 3]));
        assert_eq!(out.len(), 2);
        if pre_vote {
            assert_eq!(c.node(1).role(), Role::PreCandidate);
            assert_eq!(c.node(1).term(), 0, "a pre-vote does not raise the term");
            for m in &out {
                assert_eq!(m.term, 1);
                assert!(matches!(m.body, MessageBody::PreVote { .. }));
            }
        } else {
            let n = c.node(1);
            assert_eq!(n.role(), Role::Candidate);
            assert_eq!(n.term(), 1);
            assert_eq!(n.vote(), Some(1));
            let hs = c.storage(1).durable().hard_state;
            assert_eq!(
                (hs.term, hs.vote),
                (1, Some(1)),
                "own vote durable before asking"
            );
            for m in &out {
                assert_eq!(m.term, 1);
                assert!(matches!(m.body, MessageBody::Vote { .. }));
            }
        }
    }
}

/// §5.2: "If many followers become candidates at the same time, votes could be split ... each
/// candidate will time out and start a new election by incrementing its term."
#[test]
fn candidate_starts_a_new_election_after_timeout() {
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.campaign(1);
    c.clear_queue(); // all vote requests lost
    assert_eq!(c.node(1).role(), Role::Candidate);
    assert_eq!(c.node(1).term(), 1);
    for round in 2..6 {
        let r = c.node(1).randomized_election_timeout() as usize;
        c.tick_n(1, r - 1);
        assert_eq!(c.node(1).term(), round - 1);
        assert!(c.queued().is_empty());
        c.tick(1);
        assert_eq!(c.node(1).role(), Role::Candidate);
        assert_eq!(c.node(1).term(), round);
        let out = c.take_messages_from(1);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|m| m.term == round && matches!(m.body, MessageBody::Vote { .. })));
    }

    // With pre-vote, an unanswered pre-candidate retries without raising its term.
    let mut c = paper(&[1, 2, 3]);
    c.campaign(1);
    c.clear_queue();
    for _ in 0..4 {
        assert_eq!(c.node(1).role(), Role::PreCandidate);
        let r = c.node(1).randomized_election_timeout() as usize;
        c.tick_n(1, r - 1);
        assert!(c.queued().is_empty());
        c.tick(1);
        let out = c.take_messages_from(1);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|m| m.term == 1 && matches!(m.body, MessageBody::PreVote { .. })));
        assert_eq!(c.node(1).term(), 0);
    }
}

/// §5.2: "A candidate wins an election if it receives votes from a majority of the servers in the
/// full cluster for the same term." Its peers then follow it.
#[test]
fn candidate_with_a_majority_of_votes_becomes_leader() {
    for n in [1u64, 3, 5] {
        for pre_vote in [false, true] {
            let ids: Vec<u64> = (1..=n).collect();
            let mut c = paper_with(&ids, move |cfg| cfg.pre_vote = pre_vote);
            // Only a bare majority is up.
            for id in (n / 2 + 2)..=n {
                c.crash(id);
            }
            c.campaign(1);
            c.deliver_all();
            assert_eq!(
                c.node(1).role(),
                Role::Leader,
                "{n} nodes, pre_vote {pre_vote}"
            );
            assert_eq!(c.node(1).term(), 1);
            for id in 2..=(n / 2 + 1) {
                assert_eq!(c.node(id).role(), Role::Follower);
                assert_eq!(c.node(id).leader(), Some(1));
                assert_eq!(c.node(id).term(), 1);
            }
        }
    }
    // Without a majority up, no leader.
    let mut c = paper_with(&[1, 2, 3, 4, 5], no_pre_vote);
    for id in [3, 4, 5] {
        c.crash(id);
    }
    c.campaign(1);
    c.deliver_all();
    assert_eq!(c.node(1).role(), Role::Candidate);
}

/// §5.2: "While waiting for votes, a candidate may receive an AppendEntries RPC from another
/// server claiming to be leader. If the leader's term is at least as large as the candidate's
/// current term, then the candidate recognizes the leader as legitimate and returns to follower
/// state."
#[test]
fn candidate_loses_when_another_leader_is_elected() {
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.campaign(1);
    c.clear_queue(); // node 1's vote requests are lost
    c.campaign(2);
    c.deliver_all(); // node 3 votes for 2, node 1 (voted for itself) refuses
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(2).term(), 1);
    let n1 = c.node(1);
    assert_eq!(n1.role(), Role::Follower);
    assert_eq!(n1.leader(), Some(2));
    assert_eq!(n1.term(), 1);
    assert_eq!(n1.vote(), Some(1), "its own vote in term 1 stays recorded");

    // A leader of a higher term also ends the candidacy.
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.campaign(1);
    c.clear_queue();
    c.step(
        1,
        msg(3, 1, 4, MessageBody::Heartbeat { commit: 0, seq: 1 }),
    )
    .unwrap();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), 4);
    assert_eq!(c.node(1).leader(), Some(3));
}

/// A candidate rejected by a majority (its log is behind) gives up and waits as a follower.
#[test]
fn candidate_rejected_by_a_majority_returns_to_follower() {
    let voters = [1, 2, 3];
    let mut c = paper_from(
        vec![
            (1, state_with_log(&voters, &[1], 1, 0)),
            (2, state_with_log(&voters, &[1, 1], 1, 0)),
            (3, state_with_log(&voters, &[1, 1], 1, 0)),
        ],
        no_pre_vote,
    );
    c.campaign(1);
    c.deliver_all();
    let n1 = c.node(1);
    assert_eq!(n1.role(), Role::Follower);
    assert_eq!(n1.term(), 2);
    assert_eq!(c.node(2).vote(), None);
    assert_eq!(c.node(3).vote(), None);
}

/// §5.2: split vote: "no candidate obtains a majority ... each candidate will time out and start a
/// new election". Four nodes, two candidates with two votes each.
#[test]
fn split_vote_leaves_candidates_waiting_then_a_new_election_succeeds() {
    let mut c = paper_with(&[1, 2, 3, 4], no_pre_vote);
    c.campaign(1);
    c.campaign(2);
    c.set_filter(|m| {
        !matches!(m.body, MessageBody::Vote { .. }) || !matches!((m.from, m.to), (1, 4) | (2, 3))
    });
    c.deliver_all();
    for id in [1, 2] {
        assert_eq!(
            c.node(id).role(),
            Role::Candidate,
            "node {id} has no majority"
        );
        assert_eq!(c.node(id).term(), 1);
    }
    assert_eq!(c.node(3).vote(), Some(1));
    assert_eq!(c.node(4).vote(), Some(2));
    assert_eq!(c.leader(), None);
    c.clear_filter();

    // Node 1 times out first and wins term 2.
    let r = c.node(1).randomized_election_timeout() as usize;
    c.tick_n(1, r);
    assert_eq!(c.node(1).term(), 2);
    c.deliver_all();
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(2).role(), Role::Follower);
    assert_eq!(c.node(2).leader(), Some(1));
}

/// §5.2: "Each server will vote for at most one candidate in a given term, on a first-come-
/// first-served basis." The vote is durable before it is announced, so a crash cannot make a
/// node vote twice in one term.
#[test]
fn a_node_grants_at_most_one_vote_per_term_even_across_restarts() {
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.step(3, msg(1, 3, 1, vote_req(0, 0))).unwrap();
    assert_eq!(vote_resps(&mut c, 3), vec![(1, 1, true)]);
    c.step(3, msg(2, 3, 1, vote_req(0, 0))).unwrap();
    assert_eq!(vote_resps(&mut c, 3), vec![(2, 1, false)]);
    // Asking again for the same candidate is fine (a lost answer is retransmitted).
    c.step(3, msg(1, 3, 1, vote_req(0, 0))).unwrap();
    assert_eq!(vote_resps(&mut c, 3), vec![(1, 1, true)]);

    c.crash(3);
    c.restart(3);
    assert_eq!(c.node(3).term(), 1);
    assert_eq!(c.node(3).vote(), Some(1));
    c.step(3, msg(2, 3, 1, vote_req(5, 1))).unwrap();
    assert_eq!(vote_resps(&mut c, 3), vec![(2, 1, false)]);
    // A new term brings a new vote.
    c.step(3, msg(2, 3, 2, vote_req(0, 0))).unwrap();
    assert_eq!(vote_resps(&mut c, 3), vec![(2, 2, true)]);

    // On a slow disk the grant is not sent before the vote is durable; a crash before that
    // loses the vote, and since nobody heard of it, voting again is safe.
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.set_slow_disk(3, true);
    c.step(3, msg(1, 3, 1, vote_req(0, 0))).unwrap();
    assert!(
        c.queued().is_empty(),
        "grant held until the vote is durable"
    );
    c.sync(3);
    assert_eq!(vote_resps(&mut c, 3), vec![(1, 1, true)]);
    c.step(3, msg(2, 3, 2, vote_req(0, 0))).unwrap();
    assert!(c.queued().is_empty());
    c.crash(3);
    c.restart(3);
    assert_eq!(c.node(3).term(), 1, "the unsynced term-2 vote was lost");
    assert_eq!(c.node(3).vote(), Some(1));
}

/// In a whole cluster: two candidates of the same term never both become leader.
#[test]
fn at_most_one_leader_per_term() {
    for seed in 0..20u64 {
        let mut c = paper_with(&[1, 2, 3, 4, 5], move |cfg| {
            cfg.pre_vote = false;
            cfg.seed = seed * 31 + cfg.id;
        });
        let mut leaders = std::collections::BTreeMap::new();
        for step in 1..=(30 * E) {
            c.tick_all(1);
            for id in 1..=5 {
                let n = c.node(id);
                if n.role() == Role::Leader {
                    let prev = leaders.insert(n.term(), id);
                    assert!(prev.is_none() || prev == Some(id), "two leaders in a term");
                }
            }
            if step % (3 * E) == 0 {
                // Disturb: cut the current leader off for a while so that a new election happens
                // while it still believes it leads.
                c.heal();
                if let Some(l) = c.leader() {
                    c.isolate(l);
                }
            }
        }
        assert!(
            leaders.len() >= 5,
            "seed {seed}: only {} leaders",
            leaders.len()
        );
    }
}

/// §5.2: a candidate "may receive an AppendEntries RPC from another server claiming to be leader
/// ... of at least the candidate's current term": it returns to follower. Same for a pre-candidate.
#[test]
fn candidate_steps_down_on_append_entries_from_a_leader_of_its_term() {
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.campaign(1);
    c.clear_queue();
    assert_eq!(c.node(1).role(), Role::Candidate);
    let t = c.node(1).term();
    c.step(1, msg(2, 1, t, append(0, 0, vec![entry(1, t)], 0)))
        .unwrap();
    let n = c.node(1);
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), t);
    assert_eq!(n.leader(), Some(2));
    assert_eq!(c.log_terms(1), vec![(1, t)]);
    assert_eq!(append_resps(&mut c, 1), vec![(true, 1, 0)]);

    for body in [
        MessageBody::Heartbeat { commit: 0, seq: 1 },
        append(0, 0, vec![], 0),
    ] {
        let mut c = node1_as(Role::PreCandidate, |_| {});
        let t = c.node(1).term();
        c.step(1, msg(3, 1, t, body)).unwrap();
        assert_eq!(c.node(1).role(), Role::Follower);
        assert_eq!(c.node(1).leader(), Some(3));
        assert_eq!(c.node(1).term(), t);
    }
}

/// §5.2: "Raft uses randomized election timeouts ... chosen randomly from a fixed interval". Here
/// `[election_tick, 2 * election_tick)`, redrawn at every election, and different across nodes.
#[test]
fn election_timeouts_are_randomized_in_range_and_differ_across_nodes() {
    // One node, isolated, campaigning over and over: each timeout is redrawn.
    let mut c = paper(&[1, 2, 3]);
    c.isolate(1);
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let r = c.node(1).randomized_election_timeout() as usize;
        assert!((E..2 * E).contains(&r), "timeout {r}");
        seen.insert(r);
        c.campaign(1);
    }
    assert_eq!(seen.len(), E, "every value of the range is drawn: {seen:?}");

    // Different seeds: timeouts mostly differ.
    let timeout = |id: u64, seed: u64| {
        let mut cfg = Config::new(id);
        cfg.election_tick = E as u32;
        cfg.heartbeat_tick = 1;
        cfg.seed = seed;
        RaftNode::new(cfg, RecoveredState::bootstrap([1, 2, 3, 4, 5]))
            .unwrap()
            .randomized_election_timeout()
    };
    let trials = 1000u64;
    let mut equal_pairs = 0;
    let mut unique_first = 0;
    for t in 0..trials {
        let ts: Vec<u32> = (1..=5).map(|id| timeout(id, t * 5 + id)).collect();
        assert!(ts.iter().all(|&x| (E as u32..2 * E as u32).contains(&x)));
        if ts[0] == ts[1] {
            equal_pairs += 1;
        }
        let min = *ts.iter().min().unwrap();
        if ts.iter().filter(|&&x| x == min).count() == 1 {
            unique_first += 1;
        }
    }
    // Uniform over 10 values: ~10% equal pairs, ~77% of 5-node groups with a single earliest node.
    assert!(equal_pairs * 5 < trials, "{equal_pairs} equal pairs");
    assert!(
        unique_first * 3 > trials * 2,
        "{unique_first} unique first timeouts"
    );

    // With default seeds (the node id), a cluster that starts together elects one leader, mostly
    // in a single election.
    let mut single = 0;
    for base in 0..20u64 {
        let mut c = paper_with(&[1, 2, 3, 4, 5], move |cfg| cfg.seed = base * 7 + cfg.id);
        let mut ticks = 0;
        while c.leader().is_none() {
            c.tick_all(1);
            ticks += 1;
            assert!(
                ticks < 10 * E,
                "no leader after {ticks} ticks (seeds {base})"
            );
        }
        let elections: u64 = (1..=5).map(|id| c.node(id).stats().elections).sum();
        if elections == 1 {
            single += 1;
        }
    }
    assert!(
        single >= 14,
        "only {single}/20 clusters elected in one election"
    );
}

// ------------------------------------------------------------------------------- §5.3 replication

/// §5.3 and §8: a new leader appends a no-op entry of its term and sends AppendEntries to every
/// follower right away.
#[test]
fn new_leader_appends_a_noop_of_its_term_and_starts_replication() {
    let mut c = paper(&[1, 2, 3]);
    c.campaign(1);
    while c.node(1).role() != Role::Leader {
        c.deliver_one().expect("election completes");
    }
    let t = c.node(1).term();
    assert_eq!(
        c.log(1),
        vec![Entry {
            term: t,
            index: 1,
            payload: Payload::Noop
        }]
    );
    let appends: Vec<Message> = c
        .queued()
        .iter()
        .filter(|m| m.from == 1 && matches!(m.body, MessageBody::Append { .. }))
        .cloned()
        .collect();
    let to: BTreeSet<u64> = appends.iter().map(|m| m.to).collect();
    assert_eq!(to, BTreeSet::from([2, 3]));
    for m in &appends {
        assert_eq!(m.term, t);
        let MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            ..
        } = &m.body
        else {
            unreachable!()
        };
        assert_eq!((*prev_index, *prev_term), (0, 0));
        assert_eq!(entries, &c.log(1));
    }
    c.deliver_all();
    for id in [2, 3] {
        assert_eq!(c.log(id), c.log(1));
    }
    assert_eq!(c.node(1).commit_index(), 1);
}

/// §5.3: "A log entry is committed once the leader that created the entry has replicated it on a
/// majority of the servers ... This also commits all preceding entries in the leader's log."
/// Followers learn the commit index and apply in log order.
#[test]
fn leader_commits_replicated_entries_and_followers_apply_them() {
    let mut c = paper(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.crash(4);
    c.crash(5);
    let a = c.propose(1, b"a").unwrap();
    let b = c.propose(1, b"b").unwrap();
    assert_eq!(
        c.node(1).commit_index(),
        1,
        "not committed before replication"
    );
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), b.index);
    assert!(a.index < b.index);
    assert_eq!(c.applied_commands(1), vec![b"a".to_vec(), b"b".to_vec()]);
    c.tick_all(1); // heartbeats carry the commit index
    for id in [2, 3] {
        assert_eq!(c.node(id).commit_index(), b.index);
        assert_eq!(c.applied(id), c.applied(1));
    }
    // Lagging followers come back and catch up.
    c.restart(4);
    c.restart(5);
    c.tick_all(3);
    for id in 1..=5 {
        assert_eq!(c.applied(id), c.log(1), "node {id}");
    }
}

/// An entry from an earlier term gets committed together with the first entry of the current
/// term that reaches a majority (and is applied before it, in log order).
#[test]
fn committing_a_current_term_entry_commits_all_preceding_entries() {
    let voters = [1, 2, 3];
    let mut c = paper_from(
        vec![
            (1, state_with_log(&voters, &[1, 2, 2], 2, 1)),
            (2, state_with_log(&voters, &[1], 2, 1)),
            (3, state_with_log(&voters, &[1], 2, 1)),
        ],
        |_| {},
    );
    c.elect(1);
    c.tick_all(2);
    for id in [1, 2, 3] {
        assert_eq!(c.node(id).commit_index(), 4);
        let got: Vec<(u64, u64)> = c.applied(id).iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 2), (3, 2), (4, 3)], "node {id}");
    }
}

/// §5.3 consistency check: "If the follower does not find an entry in its log with the same index
/// and term, then it refuses the new entries."
#[test]
fn follower_rejects_append_entries_whose_previous_entry_does_not_match() {
    let voters = [1, 2, 3];
    let state = state_with_log(&voters, &[1, 1, 1], 1, 0);
    let mut c = paper_from(
        vec![(1, state.clone()), (2, state.clone()), (3, state.clone())],
        |_| {},
    );
    let before = c.log(2);
    // Same index, different term.
    c.step(2, msg(1, 2, 2, append(3, 2, vec![entry(4, 2)], 0)))
        .unwrap();
    let r = append_resps(&mut c, 2);
    assert_eq!(r.len(), 1);
    assert!(!r[0].0);
    assert_eq!(c.log(2), before);
    // Beyond the end of the log: rejected, with a hint inside the log.
    c.step(2, msg(1, 2, 2, append(7, 2, vec![entry(8, 2)], 0)))
        .unwrap();
    let r = append_resps(&mut c, 2);
    assert!(!r[0].0);
    assert!(r[0].2 <= 3, "hint {} inside the follower's log", r[0].2);
    assert_eq!(c.log(2), before);
    // Matching previous entry: accepted.
    c.step(2, msg(1, 2, 2, append(3, 1, vec![entry(4, 2)], 0)))
        .unwrap();
    assert_eq!(append_resps(&mut c, 2), vec![(true, 4, 0)]);
    assert_eq!(c.log_terms(2), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
    // An empty AppendEntries is a consistency check too.
    c.step(2, msg(1, 2, 3, append(4, 3, vec![], 0))).unwrap();
    assert!(!append_resps(&mut c, 2)[0].0);
}

/// §5.3: "If an existing entry conflicts with a new one (same index but different terms), delete
/// the existing entry and all that follow it" — but only then: a stale, shorter AppendEntries that
/// matches does not truncate, and committed entries are never removed.
#[test]
fn follower_truncates_a_conflicting_suffix_but_never_matching_or_committed_entries() {
    let voters = [1, 2, 3];
    let mut c = paper_from(
        vec![
            (1, state_with_log(&voters, &[1, 1], 3, 1)),
            (2, state_with_log(&voters, &[1, 1, 2, 2], 2, 1)),
            (3, state_with_log(&voters, &[1, 1, 1, 1], 1, 3)),
        ],
        |_| {},
    );
    // Conflict at index 3: entries 3 and 4 (term 2) are replaced by the leader's entry 3.
    c.step(2, msg(1, 2, 3, append(2, 1, vec![entry(3, 3)], 1)))
        .unwrap();
    assert_eq!(append_resps(&mut c, 2), vec![(true, 3, 0)]);
    assert_eq!(c.log_terms(2), vec![(1, 1), (2, 1), (3, 3)]);
    let durable: Vec<(u64, u64)> = c
        .storage(2)
        .durable()
        .entries
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert_eq!(durable, vec![(1, 1), (2, 1), (3, 3)]);

    // A delayed, shorter AppendEntries that matches: nothing is truncated.
    c.step(2, msg(1, 2, 3, append(1, 1, vec![entry(2, 1)], 1)))
        .unwrap();
    assert_eq!(append_resps(&mut c, 2), vec![(true, 2, 0)]);
    assert_eq!(c.log_terms(2), vec![(1, 1), (2, 1), (3, 3)]);

    // Node 3 has committed and applied 1..=3: no message can remove those entries.
    let applied = c.applied(3);
    assert_eq!(applied.len(), 3);
    let _ = c.step(
        3,
        msg(1, 3, 3, append(1, 1, vec![entry(2, 3), entry(3, 3)], 3)),
    );
    let _ = c.step(
        3,
        msg(
            1,
            3,
            3,
            append(1, 1, vec![entry(2, 3), entry(3, 3), entry(4, 3)], 3),
        ),
    );
    assert_eq!(c.log_terms(3), vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
    assert_eq!(c.node(3).commit_index(), 3);
    assert_eq!(c.applied(3), applied);
    // Whether such a message is answered as already known or rejected, nothing was truncated.
    assert_eq!(c.storage(3).durable().entries.len(), 4);
}

/// §5.3, Figure 7: when a leader comes to power, followers' logs may miss entries (a, b), have
/// extra uncommitted entries (c, d) or both (e, f). The leader forces every follower's log to
/// duplicate its own.
#[test]
fn figure_7_leader_repairs_every_follower_log() {
    let leader: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let cases: [(&str, &[u64]); 6] = [
        ("a", &[1, 1, 1, 4, 4, 5, 5, 6, 6]),
        ("b", &[1, 1, 1, 4]),
        ("c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        ("d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        ("e", &[1, 1, 1, 4, 4, 4, 4]),
        ("f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    let check = |c: &Cluster, ids: &[u64], what: &str| {
        let want = c.log(1);
        assert_eq!(
            want.len(),
            leader.len() + 1,
            "the leader keeps its log plus its no-op"
        );
        assert_eq!(want.last().unwrap().term, 8);
        for &id in ids {
            assert_eq!(c.log(id), want, "{what}: node {id}");
            assert_eq!(c.applied(id), want, "{what}: node {id}");
        }
    };

    // The whole figure: leader 1 and followers a..f as nodes 2..7, leader elected for term 8.
    let ids: Vec<u64> = (1..=7).collect();
    let mut states = vec![(1, state_with_log(&ids, leader, 7, 3))];
    for (i, (_, log)) in cases.iter().enumerate() {
        let last = *log.last().unwrap();
        states.push((i as u64 + 2, state_with_log(&ids, log, last, 3)));
    }
    let mut c = paper_from(states, |_| {});
    c.elect(1);
    assert_eq!(c.node(1).term(), 8);
    c.tick_all(3);
    check(&c, &ids, "figure 7");

    // Each case on its own, with a third node holding the leader's log.
    for (name, log) in cases {
        let voters = [1, 2, 3];
        let last = *log.last().unwrap();
        let mut c = paper_from(
            vec![
                (1, state_with_log(&voters, leader, 7, 3)),
                (2, state_with_log(&voters, leader, 7, 3)),
                (3, state_with_log(&voters, log, last, 3)),
            ],
            |_| {},
        );
        c.elect(1);
        c.tick_all(3);
        check(&c, &voters, name);
    }
}

// ------------------------------------------------------------------------------------ §5.4 safety

/// §5.4.1: RequestVote carries the candidate's last log index and term; a voter denies its vote if
/// its own log is more up-to-date: "If the logs have last entries with different terms, then the
/// log with the later term is more up-to-date. If the logs end with the same term, then whichever
/// log is longer is more up-to-date."
#[test]
fn vote_requests_carry_the_last_entry_and_less_up_to_date_candidates_are_denied() {
    let voters = [1, 2, 3];
    for pre_vote in [false, true] {
        let mut c = paper_from(
            vec![
                (1, state_with_log(&voters, &[1, 1, 2], 2, 0)),
                (2, state_with_log(&voters, &[1], 2, 0)),
                (3, state_with_log(&voters, &[1], 2, 0)),
            ],
            move |cfg| cfg.pre_vote = pre_vote,
        );
        c.campaign(1);
        let out = c.take_messages_from(1);
        assert_eq!(out.len(), 2);
        for m in out {
            assert_eq!(m.term, 3);
            match m.body {
                MessageBody::Vote {
                    last_log_index,
                    last_log_term,
                    ..
                }
                | MessageBody::PreVote {
                    last_log_index,
                    last_log_term,
                } => assert_eq!((last_log_index, last_log_term), (3, 2)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    // (voter's log, candidate's last index, candidate's last term, granted)
    let cases: [(&[u64], u64, u64, bool); 8] = [
        (&[1, 1, 3], 5, 2, false),    // lower last term, even though longer
        (&[1, 1, 2, 2], 3, 2, false), // same last term, shorter
        (&[1, 1, 2, 2], 4, 2, true),  // same log end
        (&[1, 1, 2, 2], 5, 2, true),  // same last term, longer
        (&[1, 1, 2, 2], 2, 3, true),  // higher last term, even though shorter
        (&[], 1, 1, true),
        (&[1], 0, 0, false),
        (&[2], 3, 1, false),
    ];
    for (log, lli, llt, granted) in cases {
        let mut c = paper_from(
            vec![
                (1, state_with_log(&voters, &[], 3, 0)),
                (2, state_with_log(&voters, log, 3, 0)),
                (3, state_with_log(&voters, &[], 3, 0)),
            ],
            no_pre_vote,
        );
        c.step(2, msg(1, 2, 4, vote_req(lli, llt))).unwrap();
        assert_eq!(
            vote_resps(&mut c, 2),
            vec![(1, 4, granted)],
            "voter log {log:?}, candidate ({lli}, {llt})"
        );
        assert_eq!(c.node(2).vote(), granted.then_some(1));
        // The same rule applies to pre-votes.
        let mut c = paper_from(
            vec![
                (1, state_with_log(&voters, &[], 3, 0)),
                (2, state_with_log(&voters, log, 3, 0)),
                (3, state_with_log(&voters, &[], 3, 0)),
            ],
            |_| {},
        );
        let pv = MessageBody::PreVote {
            last_log_index: lli,
            last_log_term: llt,
        };
        c.step(2, msg(1, 2, 4, pv)).unwrap();
        let out = c.take_messages_from(2);
        assert_eq!(out[0].body, MessageBody::PreVoteResp { granted });
    }
}

/// Figure 8 setup, at step (c): S1 leads term 4 with the term-2 entry at index 2; S5 holds a
/// term-3 entry at index 2. S1's Appends never deliver its term-4 no-op and never reach S4/S5.
fn figure_8() -> Cluster {
    let ids = [1, 2, 3, 4, 5];
    let mut c = paper_from(
        vec![
            (1, state_with_log(&ids, &[1, 2], 3, 1)),
            (2, state_with_log(&ids, &[1, 2], 2, 1)),
            (3, state_with_log(&ids, &[1], 3, 1)),
            (4, state_with_log(&ids, &[1], 3, 1)),
            (5, state_with_log(&ids, &[1, 3], 4, 1)),
        ],
        |_| {},
    );
    c.set_filter(|m| {
        if m.from == 1 {
            if let MessageBody::Append { entries, .. } = &mut m.body {
                if m.to == 4 || m.to == 5 {
                    return false;
                }
                entries.retain(|e| e.term != 4);
            }
        }
        true
    });
    c.elect(1);
    assert_eq!(c.node(1).term(), 4);
    assert_eq!(c.log_terms(1), vec![(1, 1), (2, 2), (3, 4)]);
    // The term-2 entry is now on S1, S2 and S3: a majority.
    for id in [2, 3] {
        assert_eq!(c.log_terms(id), vec![(1, 1), (2, 2)]);
        assert_eq!(c.node(1).progress(id).unwrap().0, 2);
    }
    c
}

/// §5.4.2, Figure 8: "Raft never commits log entries from previous terms by counting replicas."
/// An entry of term 2 stored on a majority is not committed by the term-4 leader; indeed it can
/// still be overwritten by S5, which shows committing it would have been unsafe.
#[test]
fn figure_8_leader_never_commits_an_old_term_entry_by_counting_replicas() {
    let mut c = figure_8();
    for _ in 0..5 {
        c.tick(1);
        c.deliver_all();
        assert_eq!(
            c.node(1).commit_index(),
            1,
            "index 2 (term 2) is not committed"
        );
    }
    // (d): S1 crashes; S5 is elected with votes from S2, S3, S4 and overwrites index 2.
    c.crash(1);
    c.clear_filter();
    c.elect(5);
    c.tick_all(3);
    c.restart(1);
    c.tick_all(3);
    let want = c.log(5);
    assert_eq!(want[1].term, 3);
    for id in 1..=5 {
        assert_eq!(c.log(id), want, "node {id}");
        assert!(
            c.applied(id).iter().all(|e| !(e.index == 2 && e.term == 2)),
            "node {id} applied the overwritten entry"
        );
    }
}

/// Figure 8 (e): once S1 replicates an entry of its own term (4) to a majority, that entry and the
/// term-2 entry before it are committed, and S5 can no longer be elected.
#[test]
fn figure_8_old_term_entry_commits_with_a_current_term_entry() {
    let mut c = figure_8();
    c.clear_filter();
    c.drop_link(1, 4);
    c.drop_link(1, 5);
    for _ in 0..3 {
        c.tick(1);
        c.deliver_all();
    }
    assert_eq!(c.node(1).commit_index(), 3);
    assert_eq!(
        c.applied(1).iter().map(|e| e.term).collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    c.crash(1);
    c.heal();
    // Let the followers' leader lease expire, then S5 tries: S2 and S3 refuse.
    for id in [2, 3, 4] {
        c.tick_n(id, E);
    }
    c.clear_queue();
    c.campaign(5);
    c.deliver_all();
    assert_ne!(c.node(5).role(), Role::Leader);
    for _ in 0..(10 * E) {
        c.tick_all(1);
        if c.leader().is_some_and(|l| l != 5) && c.node(5).commit_index() >= 3 {
            break;
        }
    }
    let l = c.leader().expect("a leader among S2..S4");
    assert_ne!(l, 5);
    for id in 2..=5 {
        assert_eq!(
            c.node(id).term_at(2),
            Some(2),
            "node {id} keeps the committed entry"
        );
        assert!(c.applied(id).iter().any(|e| e.index == 2 && e.term == 2));
    }
}

/// The leader counts its own log towards a majority only for entries it has made durable
/// (followers write in parallel): 5 nodes, leader's disk slow, 2 follower acks are not enough;
/// the leader's sync completes the majority; 3 follower acks are enough without it.
#[test]
fn leader_counts_itself_only_once_its_own_write_is_durable() {
    let mut c = paper(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.tick_all(1);
    c.set_slow_disk(1, true);
    c.drop_link(1, 4);
    c.drop_link(1, 5);
    let p = c.propose(1, b"x").unwrap();
    c.deliver_all();
    assert_eq!(c.node(1).progress(2).unwrap().0, p.index);
    assert_eq!(c.node(1).progress(3).unwrap().0, p.index);
    assert!(c.node(1).durable_index() < p.index);
    assert!(
        c.node(1).commit_index() < p.index,
        "2 acks + non-durable leader"
    );
    assert!(c.applied_commands(1).is_empty());
    c.sync(1);
    assert_eq!(c.node(1).commit_index(), p.index);
    assert_eq!(c.applied_commands(1), vec![b"x".to_vec()]);

    let mut c = paper(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.tick_all(1);
    c.set_slow_disk(1, true);
    c.drop_link(1, 5);
    let p = c.propose(1, b"y").unwrap();
    c.deliver_all();
    assert!(c.node(1).durable_index() < p.index);
    assert_eq!(c.node(1).commit_index(), p.index, "3 acks are a majority");
    assert_eq!(c.applied_commands(1), vec![b"y".to_vec()]);
}

/// Followers acknowledge only what is durable: a follower with a slow disk does not count.
#[test]
fn follower_acknowledges_entries_only_once_durable() {
    let mut c = paper(&[1, 2, 3]);
    c.elect(1);
    c.tick_all(1);
    c.set_slow_disk(2, true);
    c.set_slow_disk(3, true);
    let p = c.propose(1, b"z").unwrap();
    c.deliver_all();
    assert_eq!(c.log(2).len() as u64, p.index, "appended in memory");
    assert_eq!(c.node(1).progress(2).unwrap().0, p.index - 1);
    assert!(c.node(1).commit_index() < p.index);
    c.sync(2);
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), p.index);
}

/// A candidate's vote for itself is durable before it asks for votes: on a slow disk, the
/// requests wait for the sync; a crash before it loses the candidacy, not a double vote.
#[test]
fn candidate_asks_for_votes_only_once_its_own_vote_is_durable() {
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.set_slow_disk(1, true);
    c.campaign(1);
    assert_eq!(c.node(1).role(), Role::Candidate);
    assert!(
        c.queued().is_empty(),
        "vote requests held until the vote is durable"
    );
    c.sync(1);
    let out = c.take_messages_from(1);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|m| matches!(m.body, MessageBody::Vote { .. })));

    // Crash before the sync: nothing was sent, nothing is remembered.
    let mut c = paper_with(&[1, 2, 3], no_pre_vote);
    c.set_slow_disk(1, true);
    c.campaign(1);
    c.crash(1);
    assert!(c.queued().is_empty());
    c.restart(1);
    assert_eq!(c.node(1).term(), 0);
    assert_eq!(c.node(1).vote(), None);
}

/// A single-voter group is its own majority, but still commits only what it made durable.
#[test]
fn single_node_commits_only_after_its_own_write_is_durable() {
    let mut c = paper(&[1]);
    c.elect(1);
    assert_eq!(c.node(1).commit_index(), 1);
    c.set_slow_disk(1, true);
    let p = c.propose(1, b"solo").unwrap();
    assert_eq!(c.node(1).commit_index(), 1);
    assert!(c.applied_commands(1).is_empty());
    c.sync(1);
    assert_eq!(c.node(1).commit_index(), p.index);
    assert_eq!(c.applied_commands(1), vec![b"solo".to_vec()]);
    // A crash before the sync loses an uncommitted entry, never a committed one.
    c.propose(1, b"lost").unwrap();
    c.crash(1);
    c.set_slow_disk(1, false);
    c.restart(1);
    assert_eq!(c.node(1).last_index(), p.index);
    c.elect(1);
    assert_eq!(c.applied_commands(1), vec![b"solo".to_vec()]);
}

/// §5.3: "If followers crash or run slowly, or if network packets are lost, the leader retries
/// AppendEntries RPCs indefinitely until all followers eventually store all log entries." Here the
/// only AppendEntries carrying an entry is lost and nothing else is proposed afterwards.
#[test]
fn leader_retries_lost_append_entries_until_followers_store_them() {
    let mut c = paper(&[1, 2, 3]);
    c.elect(1);
    c.tick_all(2);
    c.crash(3);
    let dropped = Rc::new(Cell::new(0));
    let d = dropped.clone();
    c.set_filter(move |m| {
        if let MessageBody::Append { entries, .. } = &m.body {
            if m.to == 2 && !entries.is_empty() && d.get() == 0 {
                d.set(1);
                return false;
            }
        }
        true
    });
    let p = c.propose(1, b"lost once").unwrap();
    c.deliver_all();
    assert_eq!(dropped.get(), 1);
    assert!(c.node(1).commit_index() < p.index);
    c.tick_all(3 * E);
    assert_eq!(
        c.node(1).commit_index(),
        p.index,
        "the entry was retransmitted"
    );
    assert_eq!(c.applied_commands(2), vec![b"lost once".to_vec()]);
    c.restart(3);
    c.tick_all(3);
    assert_eq!(c.applied(3), c.applied(1));
}

/// §5.3 optimisation: with the conflicting term and the first index of it in the rejection, the
/// leader skips whole terms, so a follower far behind with a conflicting log is repaired in a
/// couple of round trips rather than one per entry.
#[test]
fn fast_back_off_repairs_a_far_behind_conflicting_follower_in_few_round_trips() {
    let voters = [1, 2, 3];
    let leader: Vec<u64> = [vec![1; 5], vec![5; 200]].concat();
    let followers: [(&str, Vec<u64>); 4] = [
        (
            "longer, conflicting tail",
            [vec![1; 5], vec![2; 300]].concat(),
        ),
        ("short, conflicting tail", [vec![1; 5], vec![2; 5]].concat()),
        ("short, no conflict", vec![1; 5]),
        (
            "several old terms",
            [vec![1; 5], vec![2; 50], vec![3; 50], vec![4; 50]].concat(),
        ),
    ];
    for (what, log) in followers {
        let last = *log.last().unwrap();
        let mut c = paper_from(
            vec![
                (1, state_with_log(&voters, &leader, 5, 5)),
                (2, state_with_log(&voters, &leader, 5, 5)),
                (3, state_with_log(&voters, &log, last, 5)),
            ],
            |_| {},
        );
        let rejections = Rc::new(Cell::new(0u32));
        let appends = Rc::new(Cell::new(0u32));
        let (r, a) = (rejections.clone(), appends.clone());
        c.set_filter(move |m| {
            match &m.body {
                MessageBody::AppendResp { success: false, .. } if m.from == 3 => r.set(r.get() + 1),
                MessageBody::Append { .. } if m.to == 3 => a.set(a.get() + 1),
                _ => {}
            }
            true
        });
        c.elect(1);
        c.tick_all(2);
        assert_eq!(c.log(3), c.log(1), "{what}");
        let gap = c.log(1).len() - 5;
        assert!(
            rejections.get() <= 2,
            "{what}: {} rejections for a gap of {gap} entries",
            rejections.get()
        );
        assert!(appends.get() <= 6, "{what}: {} appends", appends.get());
    }
}

/// §5.4.3 / state machine safety: whatever crashes happen, nodes apply the same entries in the
/// same order, and an entry applied somewhere is never applied differently elsewhere.
#[test]
fn nodes_apply_the_same_entries_in_the_same_order_across_leader_changes() {
    let mut c = paper(&[1, 2, 3]);
    let mut n = 0u32;
    for round in 0..6u64 {
        let l = 1 + round % 3;
        c.elect(l);
        for _ in 0..3 {
            n += 1;
            let _ = c.propose(l, &n.to_le_bytes());
        }
        c.deliver_all();
        c.tick_all(1);
        c.crash(l);
        c.restart(l);
    }
    c.elect(1);
    c.tick_all(3);
    let reference = c.applied(1);
    assert!(reference.len() > 10);
    for id in [2, 3] {
        assert_eq!(c.applied(id), reference, "node {id}");
    }
}
