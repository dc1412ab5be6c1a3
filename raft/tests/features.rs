//! Scenario tests of the behaviour users of `shoal-raft` rely on: check-quorum and pre-vote,
//! leadership transfer, membership changes, snapshots, linearizable reads, flow control,
//! pipelining and the handling of hostile input.
//!
//! Every scenario runs on the deterministic harness in `common`: time moves only with ticks and
//! messages only when delivered, so each run is identical.

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use common::Cluster;
use shoal_raft::{
    ConfChange, Config, Effect, Entry, HardState, InitError, Membership, Message, MessageBody,
    NodeId, Payload, Proposal, ProposeError, RaftNode, ReadError, ReadMode, RecoveredState, Role,
    SnapshotMeta, Term, TransferError,
};

/// The harness's `election_tick`.
const ELECTION: usize = 10;

// ------------------------------------------------------------------------------------ helpers

/// Command number `i`; always 8 bytes long, so a snapshot can be a plain concatenation.
fn cmd(i: u64) -> Vec<u8> {
    let s = format!("cmd{i:05}");
    assert_eq!(s.len(), 8);
    s.into_bytes()
}

/// Proposes the commands numbered `range` on `leader` and delivers the resulting messages.
fn propose_range(c: &mut Cluster, leader: NodeId, range: std::ops::Range<u64>) -> Vec<Proposal> {
    let mut out = Vec::new();
    for i in range {
        let p = c
            .propose(leader, &cmd(i))
            .unwrap_or_else(|e| panic!("proposal {i} on node {leader} refused: {e}"));
        out.push(p);
    }
    c.deliver_all();
    out
}

/// Delivers everything, then lets a few heartbeats carry the commit index around.
fn settle(c: &mut Cluster) {
    c.deliver_all();
    c.tick_all(3);
}

fn conf(c: &mut Cluster, id: NodeId, changes: &[ConfChange]) -> Result<Proposal, ProposeError> {
    let r = c.node_mut(id).propose_conf_change(changes);
    c.process(id);
    r
}

fn transfer(c: &mut Cluster, id: NodeId, target: NodeId) -> Result<(), TransferError> {
    let r = c.node_mut(id).transfer_leadership(target);
    c.process(id);
    r
}

/// The commands node `id`'s state machine reflects: those of the installed snapshot (8 bytes
/// each), then those applied since.
fn state_machine(c: &Cluster, id: NodeId) -> Vec<Vec<u8>> {
    let mut sm: Vec<Vec<u8>> = c
        .installed(id)
        .map(|s| s.data.chunks(8).map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    sm.extend(c.applied_commands(id));
    sm
}

/// Node `id`'s state machine serialized as of applied index `index`.
fn snapshot_data(c: &Cluster, id: NodeId, index: u64) -> Vec<u8> {
    let mut data: Vec<u8> = c.installed(id).map(|s| s.data.to_vec()).unwrap_or_default();
    for e in c.applied(id) {
        if let (true, Payload::Command(d)) = (e.index <= index, &e.payload) {
            data.extend_from_slice(d);
        }
    }
    data
}

/// Has node `id` take a snapshot at its applied index; returns that index.
fn take_snapshot(c: &mut Cluster, id: NodeId) -> u64 {
    let index = c.node(id).applied_index();
    let data = snapshot_data(c, id, index);
    c.node_mut(id)
        .snapshot_taken(index, data)
        .expect("snapshot accepted");
    c.process(id);
    index
}

fn read_ready(c: &Cluster, id: NodeId, ctx: u64) -> Option<u64> {
    c.events(id).iter().find_map(|e| match e {
        Effect::ReadReady { ctx: x, index } if *x == ctx => Some(*index),
        _ => None,
    })
}

fn read_failed(c: &Cluster, id: NodeId, ctx: u64) -> Option<ReadError> {
    c.events(id).iter().find_map(|e| match e {
        Effect::ReadFailed { ctx: x, error } if *x == ctx => Some(error.clone()),
        _ => None,
    })
}

fn leaders(c: &Cluster) -> Vec<NodeId> {
    c.live_ids()
        .into_iter()
        .filter(|&id| c.node(id).role() == Role::Leader)
        .collect()
}

fn is_snapshot_to(m: &Message, to: NodeId) -> bool {
    m.to == to && matches!(m.body, MessageBody::Snapshot { .. })
}

/// `(offset, len)` of every snapshot chunk delivered to `to` since position `mark`.
fn chunks_delivered(c: &Cluster, to: NodeId, mark: usize) -> Vec<(u64, usize)> {
    c.delivered[mark..]
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Snapshot { offset, data, .. } if m.to == to => Some((*offset, data.len())),
            _ => None,
        })
        .collect()
}

fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
    ids.iter().copied().collect()
}

/// The configuration entries of a log, in order, with their indexes.
fn config_entries(log: &[Entry]) -> Vec<(u64, Membership)> {
    log.iter()
        .filter_map(|e| match &e.payload {
            Payload::Config(m) => Some((e.index, m.clone())),
            _ => None,
        })
        .collect()
}

/// Asserts every listed node has the same log as `leader` and has committed all of it.
fn assert_caught_up(c: &Cluster, leader: NodeId, ids: &[NodeId]) {
    let last = c.node(leader).last_index();
    assert_eq!(
        c.node(leader).commit_index(),
        last,
        "leader {leader} committed everything"
    );
    for &id in ids {
        let n = c.node(id);
        assert_eq!(
            n.last_index(),
            last,
            "node {id} has the leader's last index"
        );
        assert_eq!(n.commit_index(), last, "node {id} committed everything");
        let from = n.snapshot_index().max(c.node(leader).snapshot_index());
        for i in from + 1..=last {
            assert_eq!(
                n.term_at(i),
                c.node(leader).term_at(i),
                "node {id} entry {i}"
            );
        }
    }
}

// ------------------------------------------------------------------ check-quorum and pre-vote

/// Cuts node 3 off for long enough that its election timeout fires several times (committing
/// `during` commands meanwhile), reconnects it, makes it time out once more right away, and lets
/// the cluster run. Returns (term before, node 3's term when it came back).
fn disruptive_follower(c: &mut Cluster, during: u64) -> (Term, Term) {
    c.elect(1);
    propose_range(c, 1, 0..3);
    settle(c);
    let before = c.node(1).term();
    c.isolate(3);
    c.tick_all(6 * ELECTION);
    if during > 0 {
        propose_range(c, 1, 100..100 + during);
        settle(c);
    }
    let back = c.node(3).term();
    c.heal();
    // Node 3's timeout fires as it comes back: its (pre-)vote requests reach the others.
    let mark = c.delivered.len();
    c.campaign(3);
    c.deliver_all();
    assert!(
        c.delivered[mark..].iter().any(|m| m.from == 3
            && matches!(
                m.body,
                MessageBody::PreVote { .. } | MessageBody::Vote { .. }
            )),
        "node 3 campaigned after reconnecting"
    );
    c.tick_all(6 * ELECTION);
    (before, back)
}

#[test]
fn pre_vote_and_check_quorum_keep_a_disruptive_follower_from_deposing_the_leader() {
    // Defaults: pre-vote and check-quorum on. Node 3's log is as recent as the others', so only
    // pre-vote (term unchanged while isolated) and leader stickiness protect the leader.
    let mut c = Cluster::new(&[1, 2, 3]);
    let (before, back) = disruptive_follower(&mut c, 0);
    assert_eq!(
        back, before,
        "pre-vote: the isolated node did not raise its term"
    );
    assert_eq!(
        c.node(3).stats().elections,
        0,
        "no real election was started"
    );
    assert_eq!(leaders(&c), vec![1]);
    for id in [1, 2, 3] {
        assert_eq!(c.node(id).term(), before, "node {id} term unchanged");
        assert_eq!(c.node(id).leader(), Some(1), "node {id} follows 1");
    }
    assert_eq!(c.node(1).stats().leaderships, 1, "node 1 was never deposed");
    propose_range(&mut c, 1, 10..11);
    settle(&mut c);
    assert_caught_up(&c, 1, &[2, 3]);
}

#[test]
fn pre_vote_alone_rejects_a_lagging_disruptive_follower() {
    // Pre-vote on, check-quorum off: while node 3 was away the others committed more, so its
    // pre-vote is refused and nobody's term moves.
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.check_quorum = false);
    let (before, back) = disruptive_follower(&mut c, 3);
    assert_eq!(back, before);
    assert_eq!(leaders(&c), vec![1]);
    for id in [1, 2, 3] {
        assert_eq!(c.node(id).term(), before, "node {id} term unchanged");
    }
    assert_caught_up(&c, 1, &[2, 3]);
}

#[test]
fn without_pre_vote_and_check_quorum_a_rejoining_follower_disrupts_the_cluster() {
    // The contrast: the same lagging follower, without pre-vote or check-quorum, raised its term
    // while isolated and deposes the leader when it comes back.
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    let (before, back) = disruptive_follower(&mut c, 3);
    assert!(
        back > before + 1,
        "isolated node raised its term ({before} -> {back})"
    );
    assert!(c.node(3).stats().elections >= 2);
    for id in [1, 2, 3] {
        assert!(
            c.node(id).term() > back,
            "node {id} moved past the disruptor's term"
        );
    }
    // The cluster still recovers to a single leader (node 3's log is behind, it cannot win).
    let l = leaders(&c);
    assert_eq!(l.len(), 1);
    assert_ne!(l[0], 3);
    propose_range(&mut c, l[0], 10..11);
    settle(&mut c);
    assert_caught_up(&c, l[0], &[1, 2, 3]);
}

#[test]
fn check_quorum_leader_in_minority_steps_down_and_majority_elects() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    propose_range(&mut c, 1, 0..2);
    settle(&mut c);
    let term = c.node(1).term();
    c.partition(&[&[1, 2], &[3, 4, 5]]);
    let mut stepped_down = None;
    for t in 1..=4 * ELECTION {
        c.tick_all(1);
        if stepped_down.is_none() && c.node(1).role() != Role::Leader {
            stepped_down = Some(t);
        }
    }
    let t = stepped_down.expect("the minority leader stepped down");
    // Quorum is checked once per election timeout, so it takes at most two of them.
    assert!(t <= 2 * ELECTION, "stepped down after {t} ticks");
    assert_eq!(
        c.propose(1, b"x"),
        Err(ProposeError::NotLeader { leader: None })
    );
    let l = c.leader().expect("the majority elected a leader");
    assert!([3, 4, 5].contains(&l));
    assert!(c.node(l).term() > term);
    propose_range(&mut c, l, 10..12);
    settle(&mut c);
    assert_caught_up(&c, l, &[3, 4, 5]);
    // After healing, the old side follows the new leader and catches up.
    c.heal();
    c.tick_all(3 * ELECTION);
    assert_eq!(leaders(&c), vec![l]);
    assert_caught_up(&c, l, &[1, 2, 3, 4, 5]);
}

#[test]
fn check_quorum_frees_a_candidate_stuck_at_a_higher_term() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.pre_vote = false);
    c.elect(1);
    propose_range(&mut c, 1, 0..2);
    settle(&mut c);
    let term = c.node(1).term();
    c.isolate(3);
    c.tick_all(6 * ELECTION);
    // The majority goes on committing, so node 3 cannot win when it comes back.
    propose_range(&mut c, 1, 10..12);
    settle(&mut c);
    let stuck = c.node(3).term();
    assert!(
        stuck >= term + 2,
        "isolated candidate raised its term ({term} -> {stuck})"
    );
    assert_eq!(c.node(3).role(), Role::Candidate);
    c.heal();
    c.tick_all(8 * ELECTION);
    let l = leaders(&c);
    assert_eq!(l.len(), 1, "exactly one leader: {l:?}");
    let lt = c.node(l[0]).term();
    assert!(lt >= stuck, "leader term {lt} >= stuck term {stuck}");
    for id in [1, 2, 3] {
        assert_eq!(c.node(id).term(), lt, "node {id} on the leader's term");
        assert_eq!(c.node(id).leader(), Some(l[0]));
    }
    propose_range(&mut c, l[0], 20..22);
    settle(&mut c);
    assert_caught_up(&c, l[0], &[1, 2, 3]);
}

// ------------------------------------------------------------------------ leadership transfer

#[test]
fn transfer_to_an_up_to_date_voter_is_immediate() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    let term = c.node(1).term();
    transfer(&mut c, 1, 2).unwrap();
    assert_eq!(c.node(1).transfer_target(), Some(2));
    assert!(c
        .queued()
        .iter()
        .any(|m| m.to == 2 && m.body == MessageBody::TimeoutNow));
    // No tick needed: delivering the messages completes the transfer.
    c.deliver_all();
    assert_eq!(leaders(&c), vec![2]);
    assert_eq!(c.node(2).term(), term + 1);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), Some(2));
    assert_eq!(c.node(1).transfer_target(), None);
    propose_range(&mut c, 2, 10..12);
    settle(&mut c);
    assert_caught_up(&c, 2, &[1, 3]);
}

#[test]
fn transfer_to_a_lagging_voter_catches_it_up_first() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    propose_range(&mut c, 1, 0..5);
    settle(&mut c);
    c.heal();
    let last = c.node(1).last_index();
    assert!(c.node(3).last_index() < last, "node 3 lags");
    let mark = c.delivered.len();
    transfer(&mut c, 1, 3).unwrap();
    assert!(
        !c.queued().iter().any(|m| m.body == MessageBody::TimeoutNow),
        "no TimeoutNow before the target caught up"
    );
    c.deliver_all();
    let log = &c.delivered[mark..];
    let timeout_now = log
        .iter()
        .position(|m| m.to == 3 && m.body == MessageBody::TimeoutNow)
        .expect("TimeoutNow sent to node 3");
    let caught_up = log
        .iter()
        .position(|m| {
            m.from == 3
                && matches!(m.body, MessageBody::AppendResp { success: true, match_index, .. } if match_index == last)
        })
        .expect("node 3 acknowledged the leader's whole log");
    assert!(caught_up < timeout_now, "caught up before TimeoutNow");
    assert!(log[..timeout_now].iter().any(|m| m.to == 3
        && matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty())));
    assert_eq!(leaders(&c), vec![3]);
    assert_eq!(c.node(1).role(), Role::Follower);
    propose_range(&mut c, 3, 10..11);
    settle(&mut c);
    assert_caught_up(&c, 3, &[1, 2]);
}

#[test]
fn transfer_is_refused_for_learners_unknown_nodes_and_the_leader_itself() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_node(4);
    conf(&mut c, 1, &[ConfChange::AddLearner(4)]).unwrap();
    settle(&mut c);
    assert!(c.node(1).membership().is_learner(4));
    assert_eq!(transfer(&mut c, 1, 4), Err(TransferError::Learner(4)));
    assert_eq!(transfer(&mut c, 1, 9), Err(TransferError::UnknownNode(9)));
    assert_eq!(transfer(&mut c, 1, 1), Err(TransferError::AlreadyLeader(1)));
    assert_eq!(
        transfer(&mut c, 2, 3),
        Err(TransferError::NotLeader { leader: Some(1) })
    );
    assert_eq!(c.node(1).transfer_target(), None);
    assert!(c.propose(1, b"still leading").is_ok());
}

#[test]
fn proposals_are_paused_during_a_transfer() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    settle(&mut c);
    let last = c.node(1).last_index();
    transfer(&mut c, 1, 2).unwrap();
    assert_eq!(c.propose(1, b"x"), Err(ProposeError::TransferInProgress(2)));
    assert_eq!(
        conf(&mut c, 1, &[ConfChange::RemoveNode(3)]),
        Err(ProposeError::TransferInProgress(2))
    );
    assert_eq!(c.node(1).last_index(), last, "nothing appended");
    assert_eq!(transfer(&mut c, 1, 3), Err(TransferError::InProgress(2)));
    c.deliver_all();
    assert_eq!(leaders(&c), vec![2]);
}

#[test]
fn transfer_to_an_unreachable_target_times_out_and_the_leader_resumes() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    settle(&mut c);
    c.isolate(3);
    transfer(&mut c, 1, 3).unwrap();
    for t in 1..ELECTION {
        c.tick(1);
        c.deliver_all();
        assert_eq!(
            c.node(1).transfer_target(),
            Some(3),
            "still transferring at tick {t}"
        );
        assert_eq!(c.propose(1, b"x"), Err(ProposeError::TransferInProgress(3)));
    }
    c.tick(1);
    c.deliver_all();
    assert_eq!(
        c.node(1).transfer_target(),
        None,
        "abandoned after an election timeout"
    );
    assert_eq!(c.node(1).role(), Role::Leader);
    propose_range(&mut c, 1, 0..2);
    settle(&mut c);
    assert_caught_up(&c, 1, &[2]);
}

// -------------------------------------------------------------------------------- membership

#[test]
fn a_learner_gets_the_log_but_neither_votes_nor_counts_for_commit() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..5);
    settle(&mut c);
    c.add_node(4);
    let p = conf(&mut c, 1, &[ConfChange::AddLearner(4)]).unwrap();
    settle(&mut c);
    let m = c.node(1).membership().clone();
    assert_eq!(m.voters, voters(&[1, 2, 3]));
    assert!(!m.is_joint(), "adding a learner needs no joint consensus");
    assert_eq!(m.learners, voters(&[4]));
    assert!(c.node(1).commit_index() >= p.index);
    assert_caught_up(&c, 1, &[2, 3, 4]);
    assert_eq!(state_machine(&c, 4), state_machine(&c, 1));
    assert!(!c.node(4).is_promotable());

    // The learner never campaigns, however long it hears nothing.
    c.isolate(4);
    let mark = c.delivered.len();
    c.tick_n(4, 10 * ELECTION);
    assert_eq!(c.node(4).role(), Role::Follower);
    assert_eq!(c.node(4).stats().elections, 0);
    c.heal();
    // Nobody asks it for a vote.
    c.elect(2);
    assert!(!c.delivered[mark..].iter().any(|m| m.to == 4
        && matches!(
            m.body,
            MessageBody::PreVote { .. } | MessageBody::Vote { .. }
        )));
    settle(&mut c);
    let leader = 2;

    // Leader + learner are not a quorum: the learner receives new entries, nothing commits.
    c.partition(&[&[leader, 4], &[1, 3]]);
    let commit = c.node(leader).commit_index();
    let p = c.propose(leader, b"not committed yet").unwrap();
    c.deliver_all();
    assert_eq!(c.node(4).last_index(), p.index, "learner has the entry");
    assert_eq!(
        c.node(leader).commit_index(),
        commit,
        "learner ack does not commit"
    );
    c.heal();
    c.tick_all(3);
    assert!(c.node(leader).commit_index() >= p.index);
    assert_caught_up(&c, leader, &[1, 3, 4]);
}

#[test]
fn promoting_a_caught_up_learner_goes_through_a_joint_configuration() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..20);
    settle(&mut c);
    c.add_node(4);
    conf(&mut c, 1, &[ConfChange::AddLearner(4)]).unwrap();
    settle(&mut c);
    assert_caught_up(&c, 1, &[4]);
    let p = conf(&mut c, 1, &[ConfChange::AddVoter(4)]).unwrap();
    let joint = c.node(1).membership().clone();
    assert!(joint.is_joint());
    assert_eq!(joint.voters, voters(&[1, 2, 3, 4]));
    assert_eq!(joint.outgoing, voters(&[1, 2, 3]));
    settle(&mut c);
    // The leader left the joint configuration on its own.
    let configs = config_entries(&c.log(1));
    let (fin_index, fin) = configs.last().cloned().unwrap();
    assert!(
        fin_index > p.index,
        "final configuration proposed by the leader"
    );
    assert_eq!(configs[configs.len() - 2], (p.index, joint));
    assert!(!fin.is_joint());
    assert_eq!(fin.voters, voters(&[1, 2, 3, 4]));
    assert!(fin.learners.is_empty());
    assert!(c.node(1).commit_index() >= fin_index);
    for id in [1, 2, 3, 4] {
        assert_eq!(c.node(id).membership(), &fin, "node {id}");
    }
    assert!(c.node(4).is_promotable());
    // Node 4 now counts: with 1 and 2 down, 3 and 4 are not enough, with 3 down 1, 2, 4 are.
    c.isolate(3);
    let p = c.propose(1, b"needs node 4").unwrap();
    c.deliver_all();
    assert!(c.node(1).commit_index() >= p.index);
    c.heal();
    // And node 4 can lead.
    c.elect(4);
    propose_range(&mut c, 4, 30..31);
    settle(&mut c);
    assert_caught_up(&c, 4, &[1, 2, 3]);
}

#[test]
fn a_learner_far_behind_is_not_promoted_until_it_catches_up() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.max_promotion_lag = 5);
    c.elect(1);
    c.add_node(4);
    conf(&mut c, 1, &[ConfChange::AddLearner(4)]).unwrap();
    settle(&mut c);
    // The learner is cut off while the log grows well past the allowed lag.
    c.isolate(4);
    propose_range(&mut c, 1, 0..20);
    settle(&mut c);
    match conf(&mut c, 1, &[ConfChange::AddVoter(4)]) {
        Err(ProposeError::Behind { node: 4, behind }) => assert!(behind >= 20, "{behind}"),
        other => panic!("expected Behind, got {other:?}"),
    }
    assert!(!c.node(1).membership().is_joint(), "nothing was proposed");
    // Once it has caught up, the same promotion is accepted.
    c.heal();
    c.tick_all(3);
    settle(&mut c);
    assert_caught_up(&c, 1, &[4]);
    conf(&mut c, 1, &[ConfChange::AddVoter(4)]).unwrap();
    settle(&mut c);
    assert!(c.node(1).membership().voters.contains(&4));
}

#[test]
fn demoting_a_voter_makes_it_a_learner() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    conf(&mut c, 1, &[ConfChange::DemoteVoter(3)]).unwrap();
    assert!(c.node(1).membership().is_joint());
    settle(&mut c);
    let m = c.node(1).membership().clone();
    assert!(!m.is_joint());
    assert_eq!(m.voters, voters(&[1, 2]));
    assert_eq!(m.learners, voters(&[3]));
    assert_eq!(c.node(3).membership(), &m);
    assert!(!c.node(3).is_promotable());
    // Still replicated to, no longer needed for commit.
    c.isolate(2);
    let p = c.propose(1, b"x").unwrap();
    c.deliver_all();
    assert_eq!(c.node(3).last_index(), p.index);
    assert!(
        c.node(1).commit_index() < p.index,
        "a learner ack does not commit"
    );
    c.heal();
    c.tick_all(3);
    assert_caught_up(&c, 1, &[2, 3]);
}

#[test]
fn removing_a_follower() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    let term = c.node(1).term();
    conf(&mut c, 1, &[ConfChange::RemoveNode(3)]).unwrap();
    settle(&mut c);
    let m = c.node(1).membership().clone();
    assert!(!m.is_joint());
    assert_eq!(m.voters, voters(&[1, 2]));
    assert!(!m.contains(3));
    assert_eq!(c.node(1).progress(3), None);
    // New entries go to node 2 only and commit with it.
    let mark = c.delivered.len();
    propose_range(&mut c, 1, 10..12);
    settle(&mut c);
    assert!(!c.delivered[mark..].iter().any(|m| m.to == 3 && m.from == 1));
    assert_caught_up(&c, 1, &[2]);
    // The removed node's timeouts do not disturb the remaining members.
    c.tick_all(6 * ELECTION);
    assert_eq!(leaders(&c), vec![1]);
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(2).term(), term);
    c.crash(3);
    propose_range(&mut c, 1, 20..22);
    settle(&mut c);
    assert_caught_up(&c, 1, &[2]);
}

#[test]
fn removing_the_leader_hands_over_without_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    let term = c.node(1).term();
    let mark = c.delivered.len();
    conf(&mut c, 1, &[ConfChange::RemoveNode(1)]).unwrap();
    // No ticks: the change commits, the leader steps down and hands over with TimeoutNow.
    c.deliver_all();
    assert!(c.delivered[mark..]
        .iter()
        .any(|m| m.from == 1 && m.body == MessageBody::TimeoutNow));
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(!c.node(1).is_promotable());
    let l = leaders(&c);
    assert_eq!(l.len(), 1, "a new leader right away: {l:?}");
    let l = l[0];
    assert!([2, 3].contains(&l));
    assert_eq!(c.node(l).term(), term + 1);
    let m = c.node(l).membership().clone();
    assert_eq!(m.voters, voters(&[2, 3]));
    assert!(!m.is_joint());
    propose_range(&mut c, l, 10..12);
    settle(&mut c);
    let other = if l == 2 { 3 } else { 2 };
    assert_caught_up(&c, l, &[other]);
    // The old leader stays quiet.
    c.tick_all(5 * ELECTION);
    assert_eq!(leaders(&c), vec![l]);
    assert_eq!(c.node(1).stats().elections, 1);
}

#[test]
fn replacing_the_leader_in_one_change() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..5);
    settle(&mut c);
    c.add_node(4);
    conf(
        &mut c,
        1,
        &[ConfChange::AddVoter(4), ConfChange::RemoveNode(1)],
    )
    .unwrap();
    let joint = c.node(1).membership().clone();
    assert_eq!(joint.voters, voters(&[2, 3, 4]));
    assert_eq!(joint.outgoing, voters(&[1, 2, 3]));
    c.deliver_all();
    c.tick_all(3);
    let l = c.leader().expect("a leader among the new voters");
    assert!([2, 3, 4].contains(&l));
    assert_eq!(leaders(&c), vec![l]);
    let m = c.node(l).membership().clone();
    assert!(!m.is_joint());
    assert_eq!(m.voters, voters(&[2, 3, 4]));
    assert_ne!(c.node(1).role(), Role::Leader);
    c.crash(1);
    propose_range(&mut c, l, 10..13);
    settle(&mut c);
    let rest: Vec<NodeId> = [2, 3, 4].into_iter().filter(|&x| x != l).collect();
    assert_caught_up(&c, l, &rest);
    assert_eq!(state_machine(&c, 4), state_machine(&c, l));
}

#[test]
fn membership_change_with_a_partitioned_node_commits_and_the_node_catches_up() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    c.isolate(3);
    c.add_node(4);
    // Joint {1,2,3,4} & {1,2,3}: 1, 2 and 4 form a majority of both.
    conf(&mut c, 1, &[ConfChange::AddVoter(4)]).unwrap();
    settle(&mut c);
    let m = c.node(1).membership().clone();
    assert!(!m.is_joint());
    assert_eq!(m.voters, voters(&[1, 2, 3, 4]));
    assert_caught_up(&c, 1, &[2, 4]);
    assert!(c.node(3).last_index() < c.node(1).last_index());
    c.heal();
    c.tick_all(3 * ELECTION);
    assert_eq!(leaders(&c), vec![1]);
    assert_caught_up(&c, 1, &[2, 3, 4]);
    assert_eq!(c.node(3).membership(), &m);
}

#[test]
fn a_new_leader_finishes_a_pending_joint_change() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    c.add_node(4);
    // The joint configuration reaches the followers but the leader never hears back.
    c.set_filter(|m| !(m.to == 1 && matches!(m.body, MessageBody::AppendResp { .. })));
    let p = conf(&mut c, 1, &[ConfChange::AddVoter(4)]).unwrap();
    c.deliver_all();
    assert!(c.node(1).commit_index() < p.index);
    for id in [2, 3] {
        assert!(
            c.node(id).membership().is_joint(),
            "node {id} has the joint config"
        );
    }
    c.crash(1);
    // Node 2 wins; hold its replication back for a moment.
    c.set_filter(|m| !(m.to == 2 && matches!(m.body, MessageBody::AppendResp { .. })));
    c.elect(2);
    assert!(c.node(2).membership().is_joint());
    // Only one change at a time, even across leaders.
    assert_eq!(
        conf(&mut c, 2, &[ConfChange::RemoveNode(3)]),
        Err(ProposeError::ConfChangeInProgress(p.index))
    );
    c.clear_filter();
    settle(&mut c);
    let m = c.node(2).membership().clone();
    assert!(!m.is_joint(), "the new leader left the joint configuration");
    assert_eq!(m.voters, voters(&[1, 2, 3, 4]));
    let configs = config_entries(&c.log(2));
    let (fin_index, _) = configs.last().unwrap();
    assert!(*fin_index > p.index);
    assert_eq!(c.node(2).term_at(*fin_index), Some(c.node(2).term()));
    assert_caught_up(&c, 2, &[3, 4]);
    c.restart(1);
    c.tick_all(3 * ELECTION);
    assert_caught_up(&c, 2, &[1, 3, 4]);
    assert_eq!(c.node(1).membership(), &m);
}

#[test]
fn only_one_membership_change_at_a_time() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    settle(&mut c);
    c.add_node(4);
    c.add_node(5);
    let p = conf(&mut c, 1, &[ConfChange::AddLearner(4)]).unwrap();
    assert_eq!(
        conf(&mut c, 1, &[ConfChange::AddLearner(5)]),
        Err(ProposeError::ConfChangeInProgress(p.index))
    );
    settle(&mut c);
    let p = conf(&mut c, 1, &[ConfChange::AddVoter(4)]).unwrap();
    // During the joint phase and until the final configuration commits.
    assert_eq!(
        conf(&mut c, 1, &[ConfChange::AddLearner(5)]),
        Err(ProposeError::ConfChangeInProgress(p.index))
    );
    while c.node(1).commit_index() < p.index {
        assert!(c.deliver_one().is_some(), "joint configuration commits");
    }
    assert!(matches!(
        conf(&mut c, 1, &[ConfChange::AddLearner(5)]),
        Err(ProposeError::ConfChangeInProgress(i)) if i > p.index
    ));
    settle(&mut c);
    conf(&mut c, 1, &[ConfChange::AddLearner(5)]).unwrap();
    settle(&mut c);
    assert_eq!(c.node(1).membership().learners, voters(&[5]));
    assert_caught_up(&c, 1, &[2, 3, 4, 5]);
}

#[test]
fn invalid_membership_changes_are_rejected() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    settle(&mut c);
    c.add_node(4);
    let last = c.node(1).last_index();
    let invalid =
        |r: Result<Proposal, ProposeError>| matches!(r, Err(ProposeError::InvalidConfChange(_)));
    use ConfChange::*;
    assert!(
        invalid(conf(
            &mut c,
            1,
            &[RemoveNode(1), RemoveNode(2), RemoveNode(3)]
        )),
        "no voter left"
    );
    assert!(
        invalid(conf(
            &mut c,
            1,
            &[DemoteVoter(1), DemoteVoter(2), DemoteVoter(3)]
        )),
        "no voter left"
    );
    assert!(
        invalid(conf(&mut c, 1, &[AddLearner(2)])),
        "existing member as learner"
    );
    assert!(invalid(conf(&mut c, 1, &[AddVoter(3)])), "existing voter");
    assert!(invalid(conf(&mut c, 1, &[AddLearner(0)])), "id 0");
    assert!(invalid(conf(&mut c, 1, &[AddVoter(0)])), "id 0");
    assert!(invalid(conf(&mut c, 1, &[RemoveNode(9)])), "unknown node");
    assert!(invalid(conf(&mut c, 1, &[DemoteVoter(4)])), "not a voter");
    assert!(
        invalid(conf(&mut c, 1, &[AddLearner(4), AddVoter(4)])),
        "same node twice"
    );
    assert!(invalid(conf(&mut c, 1, &[])), "no change");
    assert_eq!(c.node(1).last_index(), last, "nothing appended");
    assert_eq!(
        conf(&mut c, 2, &[AddLearner(4)]),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );

    let mut single = Cluster::new(&[1]);
    single.elect(1);
    assert!(
        invalid(conf(&mut single, 1, &[RemoveNode(1)])),
        "last voter"
    );
    assert!(
        invalid(conf(&mut single, 1, &[DemoteVoter(1)])),
        "last voter"
    );
    // A valid change still goes through afterwards.
    conf(&mut c, 1, &[AddLearner(4)]).unwrap();
    settle(&mut c);
    assert!(c.node(1).membership().is_learner(4));
}

// --------------------------------------------------------------------------------- snapshots

/// Three nodes; node 3 is down while 40 commands commit and the leader compacts its log.
/// Returns the snapshot index. Node 3 is still down.
fn compacted_while_3_was_down(c: &mut Cluster) -> u64 {
    c.elect(1);
    propose_range(c, 1, 0..2);
    settle(c);
    c.crash(3);
    propose_range(c, 1, 2..40);
    settle(c);
    let index = take_snapshot(c, 1);
    assert_eq!(c.node(1).snapshot_index(), index);
    assert!(c.node(1).entries().is_empty(), "log compacted");
    assert!(c.storage(1).durable().snapshot.as_ref().unwrap().meta.index == index);
    index
}

#[test]
fn a_follower_behind_the_compaction_point_gets_the_snapshot_in_chunks() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_size = 16;
        cfg.snapshot_trailing = 0;
    });
    let index = compacted_while_3_was_down(&mut c);
    let len = c.node(1).snapshot().unwrap().data.len();
    assert_eq!(len, 40 * 8);
    c.restart(3);
    let mark = c.delivered.len();
    c.tick_all(2);
    propose_range(&mut c, 1, 40..45);
    c.tick_all(2 * ELECTION);
    let chunks = chunks_delivered(&c, 3, mark);
    assert!(chunks.len() >= len / 16, "sent in chunks: {chunks:?}");
    assert!(chunks.iter().all(|&(_, n)| n <= 16));
    let n3 = c.node(3);
    assert_eq!(n3.stats().snapshots_installed, 1);
    assert_eq!(n3.snapshot_index(), index);
    let installed = c
        .installed(3)
        .expect("snapshot installed into the state machine");
    assert_eq!(installed.meta.index, index);
    assert_eq!(installed.data, c.node(1).snapshot().unwrap().data);
    // Later entries followed the snapshot.
    assert!(c.applied(3).iter().all(|e| e.index > index));
    assert!(!c.applied_commands(3).is_empty());
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(state_machine(&c, 3), state_machine(&c, 1));
    assert_eq!(state_machine(&c, 3).len(), 45);
}

#[test]
fn a_follower_restores_its_snapshot_on_restart() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.snapshot_trailing = 0);
    c.elect(1);
    propose_range(&mut c, 1, 0..10);
    settle(&mut c);
    // Follower 2 compacts its own log, then receives more entries.
    let index = take_snapshot(&mut c, 2);
    propose_range(&mut c, 1, 10..15);
    settle(&mut c);
    let durable = c.storage(2).durable().clone();
    assert_eq!(durable.snapshot.as_ref().unwrap().meta.index, index);
    assert!(durable.entries.iter().all(|e| e.index > index));
    c.crash(2);
    c.restart(2);
    // At start, before hearing from anyone, the state machine is restored from the snapshot
    // and the committed entries after it are re-applied.
    let installed = c.installed(2).expect("InstallSnapshot at start");
    assert_eq!(installed.meta.index, index);
    assert_eq!(c.node(2).snapshot_index(), index);
    assert!(c.applied(2).iter().all(|e| e.index > index));
    assert_eq!(state_machine(&c, 2)[..10], state_machine(&c, 1)[..10]);
    c.tick_all(3);
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(state_machine(&c, 2), state_machine(&c, 1));

    // Node 3 got its snapshot from the leader; it restores it on restart as well.
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_size = 64;
        cfg.snapshot_trailing = 0;
    });
    let index = compacted_while_3_was_down(&mut c);
    c.restart(3);
    propose_range(&mut c, 1, 40..42);
    c.tick_all(ELECTION);
    assert_eq!(c.node(3).snapshot_index(), index);
    c.crash(3);
    c.restart(3);
    assert_eq!(c.installed(3).map(|s| s.meta.index), Some(index));
    c.tick_all(3);
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(state_machine(&c, 3), state_machine(&c, 1));
    assert_eq!(
        c.node(3).stats().snapshots_installed,
        0,
        "not fetched again"
    );
}

/// Delivers messages (ticking when the network is quiet) until `n` snapshot chunks reached 3.
fn deliver_until_chunks(c: &mut Cluster, n: usize, mark: usize) {
    for _ in 0..100_000 {
        if chunks_delivered(c, 3, mark).len() >= n {
            return;
        }
        if c.deliver_one().is_none() {
            for id in c.live_ids() {
                c.tick(id);
            }
        }
    }
    panic!("{n} chunks never reached node 3");
}

#[test]
fn an_interrupted_snapshot_transfer_resumes_where_it_stopped() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_size = 10;
        cfg.snapshot_trailing = 0;
        cfg.max_inflight_snapshot_chunks = 2;
    });
    compacted_while_3_was_down(&mut c);
    let len = c.node(1).snapshot().unwrap().data.len() as u64;
    c.restart(3);
    let mark = c.delivered.len();
    c.propose(1, &cmd(40)).unwrap();
    deliver_until_chunks(&mut c, 6, mark);
    let before = chunks_delivered(&c, 3, mark);
    let received: u64 = before.iter().map(|&(_, n)| n as u64).sum();
    assert_eq!(before.first().map(|&(o, _)| o), Some(0));
    assert_eq!(received, 60);
    // Partition mid-transfer: in-flight chunks and acknowledgements are lost.
    c.isolate(3);
    c.tick_all(3 * ELECTION);
    c.heal();
    let mark2 = c.delivered.len();
    c.tick_all(3 * ELECTION);
    let after = chunks_delivered(&c, 3, mark2);
    let first = after.first().expect("transfer went on").0;
    let lowest = after.iter().map(|&(o, _)| o).min().unwrap();
    assert!(lowest > 0, "never restarted from zero: {after:?}");
    // At most the unacknowledged window (two chunks) is sent again.
    assert!(
        first + 20 >= received,
        "resumed near offset {received}, at {first}"
    );
    let resent: u64 = after.iter().map(|&(_, n)| n as u64).sum();
    assert!(
        resent <= len - received + 2 * 10 + 2 * 10,
        "sent {resent} bytes after the partition"
    );
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    assert_eq!(
        c.installed(3).unwrap().data,
        c.node(1).snapshot().unwrap().data
    );
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(state_machine(&c, 3), state_machine(&c, 1));
}

#[test]
fn a_lost_snapshot_chunk_is_resent_from_the_followers_offset() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_size = 10;
        cfg.snapshot_trailing = 0;
        cfg.max_inflight_snapshot_chunks = 3;
    });
    compacted_while_3_was_down(&mut c);
    let len = c.node(1).snapshot().unwrap().data.len() as u64;
    c.restart(3);
    // Every chunk sent to node 3 goes through the filter; the ones at offsets 50 and 120 are
    // dropped the first time.
    let seen: Rc<RefCell<Vec<u64>>> = Rc::default();
    let dropped: Rc<RefCell<BTreeSet<u64>>> = Rc::default();
    let sent_bytes: Rc<RefCell<u64>> = Rc::default();
    {
        let (seen, dropped, sent_bytes) = (seen.clone(), dropped.clone(), sent_bytes.clone());
        c.set_filter(move |m| {
            if let MessageBody::Snapshot { offset, data, .. } = &m.body {
                if m.to == 3 {
                    seen.borrow_mut().push(*offset);
                    *sent_bytes.borrow_mut() += data.len() as u64;
                    if (*offset == 50 || *offset == 120) && dropped.borrow_mut().insert(*offset) {
                        return false;
                    }
                }
            }
            true
        });
    }
    propose_range(&mut c, 1, 40..41);
    c.tick_all(4 * ELECTION);
    assert_eq!(dropped.borrow().len(), 2, "both chunks were dropped once");
    let seen = seen.borrow().clone();
    assert_eq!(
        seen.iter().filter(|&&o| o == 0).count(),
        1,
        "never restarted: {seen:?}"
    );
    assert!(
        *sent_bytes.borrow() < 2 * len,
        "sent {} bytes for {len}",
        sent_bytes.borrow()
    );
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    assert_eq!(
        c.installed(3).unwrap().data,
        c.node(1).snapshot().unwrap().data
    );
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(state_machine(&c, 3), state_machine(&c, 1));
}

#[test]
fn a_snapshot_to_an_unreachable_node_does_not_block_replication() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_size = 8;
        cfg.snapshot_trailing = 0;
        cfg.max_inflight_snapshot_chunks = 1;
    });
    let index = compacted_while_3_was_down(&mut c);
    c.restart(3);
    c.propose(1, &cmd(40)).unwrap();
    // Run until the leader starts streaming the snapshot, then lose node 3.
    for _ in 0..10_000 {
        if c.queued().iter().any(|m| is_snapshot_to(m, 3)) {
            break;
        }
        if c.deliver_one().is_none() {
            c.tick_all(1);
        }
    }
    assert!(
        c.queued().iter().any(|m| is_snapshot_to(m, 3)),
        "transfer started"
    );
    c.isolate(3);
    let props = propose_range(&mut c, 1, 41..60);
    c.tick_all(2 * ELECTION);
    let last = props.last().unwrap().index;
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).commit_index(), last);
    assert_caught_up(&c, 1, &[2]);
    assert_eq!(state_machine(&c, 2), state_machine(&c, 1));
    assert!(
        c.node(1).progress(3).unwrap().0 < index,
        "node 3 still lacks the snapshot"
    );
    c.heal();
    c.tick_all(6 * ELECTION);
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(state_machine(&c, 3), state_machine(&c, 1));
}

#[test]
fn snapshot_wanted_once_the_applied_log_exceeds_the_threshold() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.snapshot_threshold = 5);
    let wanted = |c: &Cluster, id: NodeId| -> Vec<u64> {
        c.events(id)
            .iter()
            .filter_map(|e| match e {
                Effect::SnapshotWanted { applied } => Some(*applied),
                _ => None,
            })
            .collect()
    };
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    assert_eq!(c.node(1).applied_index(), 4);
    assert!(
        wanted(&c, 1).is_empty(),
        "4 applied entries are below the threshold"
    );
    propose_range(&mut c, 1, 3..4);
    settle(&mut c);
    assert_eq!(wanted(&c, 1), vec![5]);
    // Followers are asked too.
    assert_eq!(wanted(&c, 2), vec![5]);
    // Not asked again while the request is outstanding...
    propose_range(&mut c, 1, 4..7);
    settle(&mut c);
    assert_eq!(wanted(&c, 1), vec![5]);
    // ...and after the snapshot, once the threshold is exceeded again.
    let data = snapshot_data(&c, 1, 5);
    c.node_mut(1).snapshot_taken(5, data).unwrap();
    c.process(1);
    propose_range(&mut c, 1, 7..9);
    settle(&mut c);
    assert_eq!(c.node(1).applied_index(), 10);
    assert_eq!(wanted(&c, 1), vec![5, 10]);
}

// ------------------------------------------------------------------------------------- reads

#[test]
fn read_index_on_a_new_leader_waits_for_a_commit_in_its_term() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    // Node 2 wins, but its no-op is not acknowledged yet.
    c.set_filter(|m| !(m.to == 2 && matches!(m.body, MessageBody::AppendResp { .. })));
    c.elect(2);
    let term = c.node(2).term();
    let noop = c
        .log(2)
        .iter()
        .find(|e| e.term == term)
        .map(|e| e.index)
        .unwrap();
    assert!(c.node(2).commit_index() < noop);
    c.read_index(2, 7).unwrap();
    c.tick(2);
    c.deliver_all();
    c.tick(2);
    c.deliver_all();
    assert_eq!(
        read_ready(&c, 2, 7),
        None,
        "no answer before a commit of the new term"
    );
    assert!(c.node(2).commit_index() < noop);
    c.clear_filter();
    c.tick_all(3);
    let index = read_ready(&c, 2, 7).expect("answered once the no-op committed");
    assert!(index >= noop, "read index {index} >= no-op {noop}");
    assert!(c.node(2).commit_index() >= index);
}

#[test]
fn read_index_needs_a_quorum_round() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..2);
    settle(&mut c);
    // A healthy leader answers after one heartbeat round, without a tick.
    c.read_index(1, 1).unwrap();
    assert_eq!(read_ready(&c, 1, 1), None, "not before the round");
    assert!(c
        .queued()
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
    c.deliver_all();
    assert_eq!(read_ready(&c, 1, 1), Some(c.node(1).commit_index()));

    // An isolated leader never confirms; the read fails when it steps down.
    c.isolate(1);
    c.read_index(1, 2).unwrap();
    for _ in 0..3 * ELECTION {
        c.tick_all(1);
        assert_eq!(read_ready(&c, 1, 2), None);
    }
    assert_ne!(c.node(1).role(), Role::Leader);
    assert_eq!(read_failed(&c, 1, 2), Some(ReadError::LeadershipLost));
    let l = c.leader().unwrap();
    assert_ne!(l, 1);
    c.read_index(l, 3).unwrap();
    c.deliver_all();
    assert!(read_ready(&c, l, 3).is_some());
}

#[test]
fn lease_reads_need_check_quorum_and_skip_the_round_while_the_lease_holds() {
    let mut cfg = Config::new(1);
    cfg.read_mode = ReadMode::Lease;
    cfg.check_quorum = false;
    assert!(cfg.validate().is_err());
    assert!(matches!(
        RaftNode::new(cfg.clone(), RecoveredState::bootstrap([1, 2, 3])),
        Err(InitError::Config(_))
    ));
    cfg.check_quorum = true;
    assert!(cfg.validate().is_ok());

    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.read_mode = ReadMode::Lease);
    c.elect(1);
    propose_range(&mut c, 1, 0..2);
    settle(&mut c);
    assert!(c.queued().is_empty());
    c.read_index(1, 1).unwrap();
    assert_eq!(
        read_ready(&c, 1, 1),
        Some(c.node(1).commit_index()),
        "answered at once"
    );
    assert!(c.queued().is_empty(), "no round needed");

    // Without acknowledgements the lease runs out within an election timeout.
    c.isolate(1);
    for _ in 0..ELECTION {
        c.tick(1);
    }
    let _ = c.read_index(1, 2);
    assert_eq!(
        read_ready(&c, 1, 2),
        None,
        "expired lease: no read without a round"
    );
}

#[test]
fn read_index_on_a_follower_names_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    settle(&mut c);
    assert_eq!(
        c.read_index(2, 1),
        Err(ReadError::NotLeader { leader: Some(1) })
    );
    assert_eq!(c.events(2), &[]);
}

// ------------------------------------------------------------------------------ flow control

#[test]
fn proposals_beyond_the_uncommitted_bound_are_refused_until_entries_commit() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.max_uncommitted_entries = 4);
    c.elect(1);
    settle(&mut c);
    c.drop_link(1, 2);
    c.drop_link(1, 3);
    for i in 0..4 {
        c.propose(1, &cmd(i)).unwrap();
    }
    assert!(matches!(
        c.propose(1, &cmd(4)),
        Err(ProposeError::Busy { entries: 4, .. })
    ));
    let last = c.node(1).last_index();
    c.deliver_all();
    c.heal();
    c.tick_all(3);
    assert_eq!(
        c.node(1).commit_index(),
        last,
        "followers returned and acknowledged"
    );
    c.propose(1, &cmd(4)).unwrap();
    settle(&mut c);
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(c.applied_commands(3).len(), 5);
}

// ------------------------------------------------------------------------------- pipelining

#[test]
fn appends_are_pipelined_up_to_the_inflight_bound() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.max_inflight_msgs = 3;
        cfg.max_entries_per_msg = 1;
    });
    c.elect(1);
    settle(&mut c);
    let appends_to_2 = |c: &Cluster| -> Vec<Vec<u64>> {
        c.queued()
            .iter()
            .filter_map(|m| match &m.body {
                MessageBody::Append { entries, .. } if m.to == 2 && !entries.is_empty() => {
                    Some(entries.iter().map(|e| e.index).collect())
                }
                _ => None,
            })
            .collect()
    };
    let first = c.node(1).last_index() + 1;
    c.propose(1, &cmd(0)).unwrap();
    c.propose(1, &cmd(1)).unwrap();
    assert_eq!(
        appends_to_2(&c).len(),
        2,
        "two appends in flight before any answer"
    );
    for i in 2..6 {
        c.propose(1, &cmd(i)).unwrap();
    }
    assert_eq!(
        appends_to_2(&c),
        vec![vec![first], vec![first + 1], vec![first + 2]],
        "bounded by max_inflight_msgs"
    );
    // Each acknowledgement opens the window for one more.
    while let Some(m) = c.deliver_one() {
        let _ = m;
        let inflight = appends_to_2(&c).len();
        assert!(inflight <= 3);
    }
    settle(&mut c);
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(c.applied_commands(2).len(), 6);
}

// ---------------------------------------------------------------------------- hostile input

fn entry(index: u64, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(b"evil".to_vec()),
    }
}

/// What a message must never change: (term, vote, role, leader, commit, log).
type Observable = (HardState, Role, Option<NodeId>, u64, Vec<Entry>);

fn observe(c: &Cluster, id: NodeId) -> Observable {
    let n = c.node(id);
    (
        n.hard_state(),
        n.role(),
        n.leader(),
        n.last_index(),
        n.entries().to_vec(),
    )
}

#[test]
fn hostile_messages_are_rejected_counted_and_change_nothing() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    propose_range(&mut c, 1, 0..3);
    settle(&mut c);
    let t = c.node(1).term();
    let last = c.node(2).last_index();
    let lt = c.node(2).last_term();
    let members = Membership::with_voters([1, 2, 3]);
    let msg = |from: NodeId, to: NodeId, term: Term, body: MessageBody| Message {
        from,
        to,
        term,
        body,
    };
    let append = |entries: Vec<Entry>| MessageBody::Append {
        prev_index: last,
        prev_term: lt,
        entries,
        commit: last,
        seq: 1,
    };
    let hb = MessageBody::Heartbeat { commit: 0, seq: 1 };
    let snap =
        |index: u64, term: Term, membership: Membership, offset: u64| MessageBody::Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership,
            },
            offset,
            data: vec![1, 2, 3],
            done: true,
            seq: 1,
        };
    let to_follower: Vec<(&str, Message)> = vec![
        (
            "non-consecutive entry indices",
            msg(
                1,
                2,
                t,
                append(vec![entry(last + 1, t), entry(last + 3, t)]),
            ),
        ),
        (
            "entries not starting after prev_index",
            msg(1, 2, t, append(vec![entry(last + 2, t)])),
        ),
        (
            "entry term above the message term",
            msg(1, 2, t, append(vec![entry(last + 1, t + 1)])),
        ),
        (
            "entry term 0",
            msg(1, 2, t, append(vec![entry(last + 1, 0)])),
        ),
        (
            "entry terms going backwards",
            msg(
                1,
                2,
                t + 1,
                append(vec![entry(last + 1, t + 1), entry(last + 2, t)]),
            ),
        ),
        (
            "prev_term above the message term",
            msg(
                1,
                2,
                t,
                MessageBody::Append {
                    prev_index: last,
                    prev_term: t + 1,
                    entries: vec![],
                    commit: 0,
                    seq: 1,
                },
            ),
        ),
        (
            "index overflow",
            msg(
                1,
                2,
                t,
                MessageBody::Append {
                    prev_index: u64::MAX,
                    prev_term: t,
                    entries: vec![entry(0, t)],
                    commit: 0,
                    seq: 1,
                },
            ),
        ),
        (
            "config entry naming node 0",
            msg(
                1,
                2,
                t,
                append(vec![Entry {
                    term: t,
                    index: last + 1,
                    payload: Payload::Config(Membership::with_voters([0, 1, 2])),
                }]),
            ),
        ),
        ("from itself", msg(2, 2, t, hb.clone())),
        ("from node 0", msg(0, 2, t, hb.clone())),
        ("addressed to another node", msg(1, 3, t, hb.clone())),
        ("term 0", msg(1, 2, 0, hb.clone())),
        (
            "snapshot at index 0",
            msg(1, 2, t, snap(0, t, members.clone(), 0)),
        ),
        (
            "snapshot of term 0",
            msg(1, 2, t, snap(last + 5, 0, members.clone(), 0)),
        ),
        (
            "snapshot term above the message term",
            msg(1, 2, t, snap(last + 5, t + 1, members.clone(), 0)),
        ),
        (
            "snapshot without voters",
            msg(1, 2, t, snap(last + 5, t, Membership::default(), 0)),
        ),
        (
            "snapshot chunk offset overflow",
            msg(1, 2, t, snap(last + 5, t, members.clone(), u64::MAX - 1)),
        ),
        (
            "vote for a log newer than the campaign term",
            msg(
                3,
                2,
                t + 1,
                MessageBody::Vote {
                    last_log_index: last + 10,
                    last_log_term: t + 2,
                    transfer: true,
                },
            ),
        ),
        (
            "pre-vote for a log newer than the campaign term",
            msg(
                3,
                2,
                t + 1,
                MessageBody::PreVote {
                    last_log_index: last + 10,
                    last_log_term: t + 2,
                },
            ),
        ),
    ];
    for (what, m) in to_follower {
        let before = observe(&c, 2);
        let count = c.node(2).stats().invalid_messages;
        let queued = c.queued().len();
        let r = c.step(2, m);
        assert!(r.is_err(), "{what}: accepted");
        assert_eq!(
            c.node(2).stats().invalid_messages,
            count + 1,
            "{what}: counted"
        );
        assert_eq!(observe(&c, 2), before, "{what}: state changed");
        assert_eq!(c.queued().len(), queued, "{what}: answered");
    }

    // At the leader: an acknowledgement of entries it never had.
    let before = observe(&c, 1);
    let progress = c.node(1).progress(2);
    let count = c.node(1).stats().invalid_messages;
    let leader_last = c.node(1).last_index();
    let r = c.step(
        1,
        msg(
            2,
            1,
            t,
            MessageBody::AppendResp {
                success: true,
                match_index: leader_last + 3,
                hint_index: 0,
                hint_term: 0,
                seq: 1,
            },
        ),
    );
    let err = r.expect_err("ack beyond the last index accepted");
    assert_eq!(err.from, 2);
    assert_eq!(c.node(1).stats().invalid_messages, count + 1);
    assert_eq!(observe(&c, 1), before);
    assert_eq!(c.node(1).progress(2), progress);

    // The cluster is unaffected.
    propose_range(&mut c, 1, 10..12);
    settle(&mut c);
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(leaders(&c), vec![1]);
    assert_eq!(c.node(1).term(), t);
}

#[test]
fn a_snapshot_ack_beyond_the_snapshot_is_rejected_by_the_leader() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_size = 16;
        cfg.snapshot_trailing = 0;
        cfg.max_inflight_snapshot_chunks = 1;
    });
    let index = compacted_while_3_was_down(&mut c);
    let len = c.node(1).snapshot().unwrap().data.len() as u64;
    c.restart(3);
    c.propose(1, &cmd(40)).unwrap();
    for _ in 0..10_000 {
        if c.queued().iter().any(|m| is_snapshot_to(m, 3)) {
            break;
        }
        if c.deliver_one().is_none() {
            c.tick_all(1);
        }
    }
    assert!(
        c.queued().iter().any(|m| is_snapshot_to(m, 3)),
        "transfer started"
    );
    let t = c.node(1).term();
    let count = c.node(1).stats().invalid_messages;
    for next_offset in [len + 1, u64::MAX - 3, u64::MAX] {
        let r = c.step(
            1,
            Message {
                from: 3,
                to: 1,
                term: t,
                body: MessageBody::SnapshotResp {
                    index,
                    next_offset,
                    done: false,
                    seq: 1,
                },
            },
        );
        assert!(
            r.is_err(),
            "offset {next_offset} beyond a {len}-byte snapshot accepted"
        );
    }
    let r = c.step(
        1,
        Message {
            from: 3,
            to: 1,
            term: t,
            body: MessageBody::SnapshotResp {
                index: c.node(1).last_index() + 10,
                next_offset: 0,
                done: true,
                seq: 1,
            },
        },
    );
    assert!(
        r.is_err(),
        "snapshot acknowledged beyond the leader's last index"
    );
    assert_eq!(c.node(1).stats().invalid_messages, count + 4);
    // The transfer still completes.
    c.tick_all(6 * ELECTION);
    assert_caught_up(&c, 1, &[2, 3]);
    assert_eq!(state_machine(&c, 3), state_machine(&c, 1));
}

/// A tiny deterministic generator (xorshift) for the fuzz loop below.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// True with probability `1/n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
    /// Mostly small values, sometimes extreme ones.
    fn num(&mut self, small: u64) -> u64 {
        match self.next() % 10 {
            0 => u64::MAX - self.next() % 3,
            1 => 0,
            _ => self.next() % small,
        }
    }
}

fn random_message(g: &mut Gen, to: NodeId, term: Term, last: u64) -> Message {
    let from = [0, 1, 2, 3, 4, 9][(g.next() % 6) as usize];
    let term = match g.next() % 4 {
        0 => g.num(term.saturating_add(3)),
        _ => term.saturating_sub(1).saturating_add(g.next() % 3),
    };
    let idx = |g: &mut Gen| match g.next() % 3 {
        0 => g.num(last.saturating_add(5)),
        _ => last
            .saturating_sub(g.next() % 4)
            .saturating_add(g.next() % 3),
    };
    let body = match g.next() % 11 {
        0 => MessageBody::PreVote {
            last_log_index: idx(g),
            last_log_term: g.num(term.saturating_add(2)),
        },
        1 => MessageBody::PreVoteResp {
            granted: g.one_in(2),
        },
        2 => MessageBody::Vote {
            last_log_index: idx(g),
            last_log_term: g.num(term.saturating_add(2)),
            transfer: g.one_in(2),
        },
        3 => MessageBody::VoteResp {
            granted: g.one_in(2),
        },
        4 => {
            let prev_index = idx(g);
            let n = g.next() % 4;
            let base_term = g.num(term.saturating_add(1));
            let entries = (0..n)
                .map(|i| Entry {
                    term: if g.one_in(5) {
                        g.num(term.saturating_add(2))
                    } else {
                        base_term.max(1)
                    },
                    index: if g.one_in(7) {
                        g.num(last.saturating_add(5))
                    } else {
                        prev_index.wrapping_add(1 + i)
                    },
                    payload: if g.one_in(6) {
                        Payload::Config(Membership::with_voters([1, 2, g.num(5)]))
                    } else {
                        Payload::Command(vec![g.next() as u8])
                    },
                })
                .collect();
            MessageBody::Append {
                prev_index,
                prev_term: g.num(term.saturating_add(1)),
                entries,
                commit: idx(g),
                seq: g.num(10),
            }
        }
        5 => MessageBody::AppendResp {
            success: g.one_in(2),
            match_index: idx(g),
            hint_index: idx(g),
            hint_term: g.num(term.saturating_add(2)),
            seq: g.num(10),
        },
        6 => MessageBody::Heartbeat {
            commit: idx(g),
            seq: g.num(10),
        },
        7 => MessageBody::HeartbeatResp { seq: g.num(10) },
        8 => MessageBody::Snapshot {
            meta: SnapshotMeta {
                index: idx(g),
                term: g.num(term.saturating_add(1)),
                membership: Membership::with_voters([1, 2, g.num(4)]),
            },
            offset: g.num(64),
            data: vec![7; (g.next() % 20) as usize],
            done: g.one_in(2),
            seq: g.num(10),
        },
        9 => MessageBody::SnapshotResp {
            index: idx(g),
            next_offset: g.num(400),
            done: g.one_in(2),
            seq: g.num(10),
        },
        _ => MessageBody::TimeoutNow,
    };
    Message {
        from,
        to,
        term,
        body,
    }
}

/// Random (often impossible, sometimes forged) messages never make a node panic. Runs 20 seeds;
/// set `FUZZ_SEEDS=a..b` for a longer search.
#[test]
fn random_garbage_never_panics() {
    let seeds: Vec<u64> = match std::env::var("FUZZ_SEEDS") {
        Ok(v) => {
            let (a, b) = v.split_once("..").unwrap();
            (a.parse().unwrap()..b.parse().unwrap()).collect()
        }
        Err(_) => (1..=20).collect(),
    };
    for seed in seeds {
        let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.snapshot_chunk_size = 16);
        compacted_while_3_was_down(&mut c);
        c.restart(3);
        c.propose(1, &cmd(40)).unwrap();
        c.deliver_all();
        let mut g = Gen(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        for round in 0..300 {
            for id in c.live_ids() {
                let (term, last) = (c.node(id).term(), c.node(id).last_index());
                let m = random_message(&mut g, id, term, last);
                let _ = c.step(id, m);
            }
            if round % 10 == 0 {
                for id in c.live_ids() {
                    c.tick(id);
                }
            }
            // Forged messages can make committed logs diverge, after which leader and follower
            // may argue forever: bound the deliveries of each round.
            for _ in 0..5_000 {
                if c.deliver_one().is_none() {
                    break;
                }
            }
            c.clear_queue();
        }
    }
}

#[test]
fn a_batch_of_proposals_takes_consecutive_indices_and_commits_in_order() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| cfg.max_uncommitted_entries = 8);
    c.elect(1);
    let batch: Vec<Vec<u8>> = (0..5).map(cmd).collect();
    let first = c.node_mut(1).propose_batch(batch.clone()).unwrap();
    assert_eq!(c.node(1).last_index(), first.index + 4);
    settle(&mut c);
    for id in [1, 2, 3] {
        assert_eq!(c.applied_commands(id), batch, "node {id}");
    }
    // A follower refuses with the leader's id; a batch beyond the uncommitted bound is refused whole.
    assert!(matches!(
        c.node_mut(2).propose_batch(vec![cmd(9)]),
        Err(ProposeError::NotLeader { leader: Some(1) })
    ));
    c.isolate(2);
    c.isolate(3);
    let last = c.node(1).last_index();
    assert!(matches!(
        c.node_mut(1).propose_batch((0..9).map(cmd).collect()),
        Err(ProposeError::Busy { .. })
    ));
    assert_eq!(c.node(1).last_index(), last, "nothing was appended");
}

// ------------------------------------------------------------------------- early pre-vote

/// A three-node cluster with node 1 leading and the others following it, settled.
fn led_by_1() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.tick_all(2);
    c
}

#[test]
fn the_pre_vote_round_goes_out_a_tenth_of_the_timeout_early_and_the_election_starts_on_time() {
    let mut c = led_by_1();
    let term = c.node(2).term();
    c.crash(1);
    // Node 2's timer runs from its last contact with the leader; node 3 is ticked too (it must
    // be out of the leader's lease to answer), but only up to node 2's timeout.
    let t = c.node(2).randomized_election_timeout() as usize;
    let lead = ELECTION / 10;
    for _ in 0..t - lead - 1 {
        c.tick(2);
        c.tick(3);
    }
    c.clear_queue();
    c.tick(2);
    let early = c.take_messages_from(2);
    assert_eq!(early.len(), 2, "the early round: {early:?}");
    assert!(early
        .iter()
        .all(|m| m.term == term + 1 && matches!(m.body, MessageBody::PreVote { .. })));
    assert_eq!(c.node(2).role(), Role::Follower, "still a follower");
    assert_eq!(c.node(2).term(), term, "no term change");
    // Node 3 (out of the pre-vote window: it heard from the leader ≥ 9 ticks ago) grants it.
    for m in early.into_iter().filter(|m| m.to == 3) {
        c.step(3, m).unwrap();
    }
    let grants = c.take_messages_from(3);
    assert!(matches!(
        grants[..],
        [Message {
            body: MessageBody::PreVoteResp { granted: true },
            ..
        }]
    ));
    for m in grants {
        c.step(2, m).unwrap();
    }
    assert_eq!(
        c.node(2).role(),
        Role::Follower,
        "nothing happens before the timer fires"
    );
    // The timer fires: the real election starts at once, with no second pre-vote round.
    c.tick(2);
    let n = c.node(2);
    assert_eq!((n.role(), n.term()), (Role::Candidate, term + 1));
    let out = c.take_messages_from(2);
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|m| matches!(m.body, MessageBody::Vote { .. })),
        "{out:?}"
    );
}

#[test]
fn a_leader_heard_after_the_early_round_cancels_the_election() {
    let mut c = led_by_1();
    let term = c.node(2).term();
    let t = c.node(2).randomized_election_timeout() as usize;
    let lead = ELECTION / 10;
    // The leader's heartbeats stop reaching node 2 only: it sends its early round, which node 3
    // (in the leader's lease) ignores and node 1 refuses as leader.
    c.drop_link(1, 2);
    for _ in 0..t - lead {
        c.tick(2);
    }
    assert!(c
        .queued()
        .iter()
        .any(|m| m.from == 2 && matches!(m.body, MessageBody::PreVote { .. })));
    c.deliver_all();
    // Then the leader is heard again before the timer fires: no election.
    c.restore_link(1, 2);
    c.tick(1);
    c.deliver_all();
    c.tick(2);
    c.deliver_all();
    assert_eq!(c.node(2).role(), Role::Follower);
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(2).leader(), Some(1));
    c.tick_all(3 * ELECTION);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), term, "never deposed");
    assert_eq!(c.node(2).stats().elections, 0);
}

#[test]
fn voters_in_the_lease_ignore_the_early_round_and_are_asked_again_when_the_timer_fires() {
    let mut c = led_by_1();
    let term = c.node(2).term();
    c.crash(1);
    let t = c.node(2).randomized_election_timeout() as usize;
    let lead = ELECTION / 10;
    // Node 3 heard from the leader recently (its clock is not advanced): it ignores the early
    // round.
    for _ in 0..t - lead {
        c.tick(2);
    }
    c.deliver_all();
    assert!(c.take_messages_from(3).is_empty());
    assert_eq!(c.node(2).role(), Role::Follower);
    // Node 3's lease runs out; node 2's timer fires: a normal pre-vote round, then the election.
    for _ in 0..ELECTION {
        c.tick(3);
    }
    c.clear_queue();
    c.tick_n(2, lead);
    assert_eq!(c.node(2).role(), Role::PreCandidate);
    c.deliver_all();
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(2).term(), term + 1);
}

#[test]
fn votes_keep_the_whole_lease_while_pre_votes_are_answered_a_tenth_earlier() {
    let mut c = led_by_1();
    let term = c.node(3).term();
    let lead = ELECTION / 10;
    // Node 3 last heard from the leader ELECTION − lead ticks ago.
    c.crash(1);
    for _ in 0..ELECTION - lead {
        c.tick(3);
    }
    c.clear_queue();
    let ask = |body| Message {
        from: 2,
        to: 3,
        term: term + 1,
        body,
    };
    let (lli, llt) = (c.node(2).last_index(), c.node(2).last_term());
    c.step(
        3,
        ask(MessageBody::PreVote {
            last_log_index: lli,
            last_log_term: llt,
        }),
    )
    .unwrap();
    assert!(matches!(
        c.take_messages_from(3)[..],
        [Message {
            body: MessageBody::PreVoteResp { granted: true },
            ..
        }]
    ));
    c.step(
        3,
        ask(MessageBody::Vote {
            last_log_index: lli,
            last_log_term: llt,
            transfer: false,
        }),
    )
    .unwrap();
    assert!(
        c.take_messages_from(3).is_empty(),
        "a vote inside the lease is ignored"
    );
    assert_eq!(c.node(3).term(), term);
    assert_ne!(c.node(3).vote(), Some(2));
}
