//! A peer's snapshot that the application cannot restore is never installed.

use shoal_raft::{
    Config, Effect, Membership, Message, MessageBody, RaftNode, RecoveredState, SnapshotMeta,
};

fn follower() -> RaftNode {
    RaftNode::new(Config::new(2), RecoveredState::bootstrap([1, 2, 3])).unwrap()
}

fn garbage_snapshot() -> Message {
    Message {
        from: 1,
        to: 2,
        term: 5,
        body: MessageBody::Snapshot {
            meta: SnapshotMeta {
                index: 40,
                term: 5,
                membership: Membership::with_voters([1, 2, 3]),
            },
            offset: 0,
            data: b"not a state".to_vec(),
            done: true,
            seq: 1,
        },
    }
}

fn installed(n: &mut RaftNode) -> bool {
    n.take_effects()
        .iter()
        .any(|e| matches!(e, Effect::InstallSnapshot(_)))
}

#[test]
fn a_snapshot_the_validator_refuses_is_dropped_and_counted() {
    // Without a validator the bytes are installed as they are (what the agent used to do, and
    // then fail to restore them and stop).
    let mut n = follower();
    n.step(garbage_snapshot()).unwrap();
    assert!(installed(&mut n));

    let mut n = follower();
    n.set_snapshot_validator(|data| data.starts_with(b"state:"));
    n.step(garbage_snapshot()).unwrap();
    assert!(!installed(&mut n));
    assert_eq!(n.stats().snapshots_rejected, 1);
    assert_eq!(n.commit_index(), 0);
    // A valid one from the same leader is still taken.
    let mut good = garbage_snapshot();
    if let MessageBody::Snapshot { data, .. } = &mut good.body {
        *data = b"state: ok".to_vec();
    }
    n.step(good).unwrap();
    assert!(installed(&mut n));
    assert_eq!(n.commit_index(), 40);
}
