//! Trailing entries after compaction and snapshot transfers that survive newer snapshots
//! (hardening issue #12, point 11), on the deterministic harness in `common`, plus the
//! durable side: `WriteBatch::compact_to` in `MemStorage` and the WAL.

mod common;

use std::sync::Arc;

use common::Cluster;
use shoal_raft::wal::{Wal, WalOptions};
use shoal_raft::{
    Config, Entry, HardState, MessageBody, NodeId, Payload, RaftNode, RecoveredState, Snapshot,
    SnapshotMeta, Storage, WriteBatch,
};

/// Has node `id` take a snapshot (arbitrary bytes) at its applied index; returns that index.
fn take_snapshot(c: &mut Cluster, id: NodeId) -> u64 {
    let index = c.node(id).applied_index();
    let data = format!("state of node {id} at {index}")
        .into_bytes()
        .repeat(4);
    c.node_mut(id)
        .snapshot_taken(index, data)
        .expect("snapshot accepted");
    c.process(id);
    index
}

fn propose_n(c: &mut Cluster, leader: NodeId, n: usize) {
    for i in 0..n {
        c.propose(leader, format!("cmd{i}").as_bytes())
            .expect("proposal accepted");
    }
    c.deliver_all();
    c.tick_all(3);
}

/// Snapshot chunks delivered to `to` since position `mark` in the delivery record:
/// `(snapshot index, offset, done)`.
fn chunks_to(c: &Cluster, to: NodeId, mark: usize) -> Vec<(u64, u64, bool)> {
    c.delivered[mark..]
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Snapshot {
                meta, offset, done, ..
            } if m.to == to => Some((meta.index, *offset, *done)),
            _ => None,
        })
        .collect()
}

/// Node 3 goes down; the leader commits `ahead` more entries with node 2, then snapshots with
/// 10 trailing entries. Returns the cluster, node 3's last index and the snapshot index.
fn follower_behind_by(ahead: usize) -> (Cluster, u64, u64) {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_trailing = 10;
        cfg.snapshot_chunk_size = 16;
    });
    c.elect(1);
    propose_n(&mut c, 1, 5);
    c.crash(3);
    let behind = c.storage(3).durable().last_index();
    propose_n(&mut c, 1, ahead);
    let index = take_snapshot(&mut c, 1);
    assert_eq!(index, behind + ahead as u64, "applied everything");
    (c, behind, index)
}

#[test]
fn a_snapshot_keeps_the_trailing_entries_in_the_log_and_on_disk() {
    let (c, _, index) = follower_behind_by(30);
    let n = c.node(1);
    assert_eq!(n.snapshot_index(), index);
    // Entries index-9..=index stay; index-10 is the compaction point (its term is known).
    assert_eq!(n.first_index(), index - 9);
    for i in index - 9..=index {
        assert!(n.entry(i).is_some(), "trailing entry {i} kept");
    }
    assert!(
        n.entry(index - 10).is_none(),
        "entry {} dropped",
        index - 10
    );
    assert!(
        n.term_at(index - 10).is_some(),
        "term of the compaction point"
    );
    // `entries()` still lists what follows the snapshot.
    assert!(n.entries().iter().all(|e| e.index > index));
    // On disk: the snapshot, and the entries from the compaction point on.
    let d = c.storage(1).durable();
    assert_eq!(d.snapshot.as_ref().map(|s| s.meta.index), Some(index));
    assert_eq!(d.entries.first().map(|e| e.index), Some(index - 10));
    assert_eq!(d.last_index(), n.last_index());
}

#[test]
fn a_follower_inside_the_trailing_window_gets_entries_not_a_snapshot() {
    // Node 3 is exactly 10 entries behind the snapshot: its last entry is the compaction point.
    let (mut c, behind, index) = follower_behind_by(10);
    assert_eq!(c.node(1).first_index(), behind + 1);
    let mark = c.delivered.len();
    c.restart(3);
    c.tick_all(20);
    assert!(chunks_to(&c, 3, mark).is_empty(), "no snapshot sent");
    assert_eq!(c.node(3).stats().snapshots_installed, 0);
    assert_eq!(c.node(3).last_index(), c.node(1).last_index());
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
    assert!(c.node(3).commit_index() >= index);

    // One entry further behind, the follower needs the snapshot.
    let (mut c, _, index) = follower_behind_by(11);
    let mark = c.delivered.len();
    c.restart(3);
    c.tick_all(40);
    let chunks = chunks_to(&c, 3, mark);
    assert!(
        chunks.iter().any(|&(i, _, done)| i == index && done),
        "{chunks:?}"
    );
    assert_eq!(c.node(3).stats().snapshots_installed, 1);
    assert_eq!(c.node(3).last_index(), c.node(1).last_index());
}

#[test]
fn trailing_entries_survive_a_restart() {
    let mut c = Cluster::with_config(&[1], |cfg| cfg.snapshot_trailing = 10);
    c.elect(1);
    propose_n(&mut c, 1, 30);
    let index = take_snapshot(&mut c, 1);
    propose_n(&mut c, 1, 3);
    let (first, last) = (c.node(1).first_index(), c.node(1).last_index());
    let terms: Vec<_> = (first - 1..=last).map(|i| c.node(1).term_at(i)).collect();
    c.crash(1);
    c.restart(1);
    let n = c.node(1);
    assert_eq!(n.snapshot_index(), index);
    assert_eq!((n.first_index(), n.last_index()), (first, last));
    let after: Vec<_> = (first - 1..=last).map(|i| n.term_at(i)).collect();
    assert_eq!(after, terms);
    assert_eq!(c.installed(1).map(|s| s.meta.index), Some(index));
    // The next snapshot compacts further, counted from its own index.
    c.elect(1);
    propose_n(&mut c, 1, 20);
    let index = take_snapshot(&mut c, 1);
    assert_eq!(c.node(1).first_index(), index - 9);
}

/// The leader takes a newer snapshot while sending one to a follower: the transfer goes on with
/// the snapshot it started with (no restart from byte 0), and the follower then continues from
/// the trailing log.
#[test]
fn a_transfer_in_progress_keeps_its_snapshot_when_a_newer_one_is_taken() {
    let mut c = Cluster::with_config(&[1, 2, 3], |cfg| {
        cfg.snapshot_trailing = 5;
        cfg.snapshot_chunk_size = 8;
        cfg.max_inflight_snapshot_chunks = 1;
    });
    c.elect(1);
    propose_n(&mut c, 1, 2);
    c.crash(3);
    propose_n(&mut c, 1, 40);
    let first = take_snapshot(&mut c, 1);
    let len = c.node(1).snapshot().expect("snapshot").data.len() as u64;
    assert!(len > 8 * 4, "several chunks");
    c.restart(3);
    let mark = c.delivered.len();
    // Deliver until two chunks reached node 3 (the transfer is under way).
    for _ in 0..10_000 {
        if chunks_to(&c, 3, mark).len() >= 2 {
            break;
        }
        if c.deliver_one().is_none() {
            for id in c.live_ids() {
                c.tick(id);
            }
        }
    }
    let chunks = chunks_to(&c, 3, mark);
    assert!(chunks.len() >= 2 && chunks.iter().all(|&(_, _, done)| !done));
    // Three more entries and a newer snapshot: its trailing window still reaches `first`.
    for i in 0..3 {
        c.propose(1, format!("more{i}").as_bytes())
            .expect("accepted");
    }
    for _ in 0..200 {
        if c.node(1).applied_index() == c.node(1).last_index() {
            break;
        }
        c.deliver_one();
    }
    let newer = take_snapshot(&mut c, 1);
    assert!(newer > first && newer - 5 <= first);
    c.tick_all(60);
    let chunks = chunks_to(&c, 3, mark);
    assert!(
        chunks.iter().all(|&(i, _, _)| i == first),
        "only the first snapshot was sent: {chunks:?}"
    );
    // Offsets only grow (retransmissions repeat an offset, never go back to 0).
    let offsets: Vec<u64> = chunks.iter().map(|&(_, o, _)| o).collect();
    assert!(offsets.windows(2).all(|w| w[1] >= w[0]), "{offsets:?}");
    assert!(chunks.last().is_some_and(|&(_, _, done)| done));
    let n3 = c.node(3);
    assert_eq!(n3.stats().snapshots_installed, 1);
    assert_eq!(n3.last_index(), c.node(1).last_index());
    assert_eq!(n3.commit_index(), c.node(1).commit_index());
}

#[test]
fn snapshot_trailing_is_validated() {
    let mut cfg = Config::new(1);
    assert!(cfg.snapshot_trailing >= 1_000, "default");
    assert!(cfg.validate().is_ok());
    cfg.snapshot_trailing = 1 << 24;
    assert!(cfg.validate().is_ok());
    cfg.snapshot_trailing = (1 << 24) + 1;
    let e = cfg.validate().expect_err("too large");
    assert!(e.to_string().contains("snapshot_trailing"), "{e}");
    cfg.snapshot_trailing = 0;
    assert!(cfg.validate().is_ok());
    let state = RecoveredState::bootstrap([1]);
    cfg.snapshot_trailing = u64::MAX;
    assert!(RaftNode::new(cfg, state).is_err());
}

fn entries(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi)
        .map(|index| Entry {
            term,
            index,
            payload: Payload::Command(vec![index as u8; 200]),
        })
        .collect()
}

/// `compact_to` on disk: the WAL keeps the entries after the compaction point across a reopen
/// (as the `MemStorage` model does), deletes only segments below it, and the core starts from
/// the result with the trailing entries in its log.
#[test]
fn the_wal_keeps_trailing_entries_after_a_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = WalOptions {
        segment_bytes: 4 << 10,
        ..WalOptions::default()
    };
    let (mut wal, _, _) = Wal::open(dir.path(), opts.clone()).expect("open");
    let boot = RecoveredState::bootstrap([1]);
    let hs = HardState {
        term: 1,
        vote: Some(1),
        commit: 0,
    };
    let mut batches = vec![WriteBatch {
        seq: 1,
        snapshot: boot.snapshot.clone(),
        reset_log: true,
        hard_state: Some(hs),
        ..Default::default()
    }];
    for k in 0..10u64 {
        batches.push(WriteBatch {
            seq: k + 2,
            entries: entries(k * 10 + 1, k * 10 + 10, 1),
            ..Default::default()
        });
    }
    let snap = Snapshot {
        meta: SnapshotMeta {
            index: 80,
            term: 1,
            membership: boot
                .snapshot
                .as_ref()
                .expect("boot")
                .meta
                .membership
                .clone(),
        },
        data: Arc::new(b"state at 80".to_vec()),
    };
    batches.push(WriteBatch {
        seq: 12,
        snapshot: Some(snap),
        compact_to: Some(69),
        hard_state: Some(HardState { commit: 80, ..hs }),
        ..Default::default()
    });
    batches.push(WriteBatch {
        seq: 13,
        entries: entries(101, 105, 1),
        ..Default::default()
    });
    let mut model = RecoveredState::default();
    for b in &batches {
        wal.write(b).expect("write");
        wal.sync().expect("sync");
        model.apply(b);
    }
    assert_eq!(model.entries.first().map(|e| e.index), Some(70));
    assert_eq!(model.last_index(), 105);
    assert!(wal.stats().segments_deleted > 0, "{:?}", wal.stats());
    drop(wal);
    let (_, recovered, _) = Wal::open(dir.path(), opts).expect("reopen");
    let span = |s: &RecoveredState| {
        let snap = s.snapshot.as_ref().map(|x| x.meta.index);
        (snap, s.entries.first().map(|e| e.index), s.last_index())
    };
    assert_eq!(span(&recovered), (Some(80), Some(70), 105));
    assert!(recovered == model, "recovered state differs from the model");
    let mut cfg = Config::new(1);
    cfg.snapshot_trailing = 10;
    let node = RaftNode::new(cfg, recovered).expect("starts");
    assert_eq!(node.snapshot_index(), 80);
    assert_eq!(node.first_index(), 71);
    assert_eq!(node.term_at(70), Some(1));
    assert_eq!(node.last_index(), 105);
}
