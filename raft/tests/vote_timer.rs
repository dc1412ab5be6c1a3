//! A vote request that is refused must not restart the voter's election timer: otherwise a
//! candidate whose log is behind, timing out again and again (a faster clock helps it), keeps
//! pushing back the only nodes that could win, and the group never elects a leader (raft-sim
//! seed 6535 before the fix: two voters, the one with the shorter log campaigning up to term 98).

mod common;

use common::Cluster;
use shoal_raft::{MessageBody, Role};

/// Three voters without pre-vote or check-quorum (nothing but the timer stops a vote request);
/// leader 1 committed an entry that node 3 lacks, then crashed.
fn node_3_behind() -> Cluster {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    c.drop_link(1, 3);
    c.propose(1, b"only 1 and 2 have this").unwrap();
    c.deliver_all();
    assert!(c.node(2).last_index() > c.node(3).last_index());
    c.crash(1);
    c
}

fn refusal_sent_by_2(c: &mut Cluster) -> bool {
    c.take_messages_from(2)
        .iter()
        .any(|m| m.to == 3 && matches!(m.body, MessageBody::VoteResp { granted: false }))
}

#[test]
fn a_refused_candidate_does_not_restart_the_followers_election_timer() {
    let mut c = node_3_behind();
    // Node 2 last heard from the leader just now; one tick before its timer fires...
    let timeout = c.node(2).randomized_election_timeout() as usize;
    c.tick_n(2, timeout - 1);
    assert_eq!(c.node(2).role(), Role::Follower);
    // ...node 3, whose log is behind, asks for its vote at a higher term.
    c.campaign(3);
    let term3 = c.node(3).term();
    assert!(term3 > c.node(2).term());
    while let Some(m) = c.deliver_one() {
        if m.to == 2 {
            break;
        }
    }
    assert_eq!(c.node(2).term(), term3, "node 2 adopted the higher term");
    assert_eq!(c.node(2).vote(), None, "and refused the vote");
    assert!(refusal_sent_by_2(&mut c));
    // The refusal did not restart node 2's timer: it fires on the next tick, as it would have.
    c.tick(2);
    assert_eq!(
        c.node(2).role(),
        Role::Candidate,
        "node 2 campaigns when its own timer fires"
    );
    assert_eq!(c.node(2).term(), term3 + 1);
    c.deliver_all();
    assert_eq!(c.leader(), Some(2), "the node with the longer log wins");
}

#[test]
fn a_refused_candidate_does_not_restart_a_competing_candidates_timer() {
    let mut c = node_3_behind();
    // Node 2 campaigns; its requests are lost (node 3 is cut off from it for now).
    c.drop_link(2, 3);
    c.campaign(2);
    c.deliver_all();
    assert_eq!(c.node(2).role(), Role::Candidate);
    let term2 = c.node(2).term();
    let timeout = c.node(2).randomized_election_timeout() as usize;
    c.tick_n(2, timeout - 1);
    assert_eq!(c.node(2).role(), Role::Candidate);
    assert_eq!(c.node(2).term(), term2, "its timer has not fired yet");
    c.restore_link(2, 3);
    // Node 3 campaigns until its term is above node 2's, then asks node 2, which refuses.
    while c.node(3).term() <= term2 {
        let _ = c.take_messages_from(3);
        c.campaign(3);
    }
    let term3 = c.node(3).term();
    c.deliver_all();
    assert_eq!(c.node(2).term(), term3);
    assert_eq!(c.node(2).role(), Role::Follower);
    assert_eq!(c.node(2).vote(), None, "node 2 refused the vote");
    // Node 2's timer still counts from its own campaign: it fires on the next tick.
    c.tick(2);
    assert_eq!(c.node(2).role(), Role::Candidate);
    assert_eq!(c.node(2).term(), term3 + 1);
    c.deliver_all();
    assert_eq!(c.leader(), Some(2), "the node with the longer log wins");
}
