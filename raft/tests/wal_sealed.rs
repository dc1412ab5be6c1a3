//! The write-ahead log encrypted at rest (`WalOptions::keys`): the same workloads recover the
//! same states sealed as plain; a marker written in entries and in a snapshot is found in no
//! file; a log opened without its key, or with another one, is refused with a clear error; a
//! key rotation seals new segments and snapshots under the new key and the old one stops being
//! needed once compaction has removed what it sealed; a plaintext log becomes encrypted the
//! same way; a torn sealed record is truncated like a plain one.

mod wal_support;

use std::path::Path;
use std::sync::Arc;

use shoal_raft::seal::{random_key, Keyring, KEY_LEN};
use shoal_raft::wal::{Wal, WalError, WalOptions};
use shoal_raft::{
    Entry, HardState, Membership, Payload, Snapshot, SnapshotMeta, Storage, WriteBatch,
};
use wal_support::{assert_state, last_segment, opts, run, scratch, torn, workload, Mix};

fn ring(id: u32, key: &[u8; KEY_LEN]) -> Arc<Keyring> {
    Arc::new(Keyring::new(id, key).unwrap())
}

fn sealed(segment_bytes: u64, keys: Arc<Keyring>) -> WalOptions {
    let mut o = opts(segment_bytes);
    o.keys = Some(keys);
    o
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn holds(bytes: &[u8], marker: &[u8]) -> bool {
    bytes.windows(marker.len()).any(|w| w == marker)
}

const MARKER: &[u8] = b"BEGIN PRIVATE KEY shoal-marker-5f3a9c";

fn marked_batches() -> Vec<WriteBatch> {
    let entry = |index: u64| Entry {
        term: 1,
        index,
        payload: Payload::Command([MARKER, &index.to_le_bytes()].concat()),
    };
    let membership = Membership {
        voters: [1].into(),
        ..Default::default()
    };
    vec![
        WriteBatch {
            seq: 1,
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
                commit: 0,
            }),
            entries: (1..=5).map(entry).collect(),
            ..Default::default()
        },
        WriteBatch {
            seq: 2,
            snapshot: Some(Snapshot {
                meta: SnapshotMeta {
                    index: 3,
                    term: 1,
                    membership,
                },
                data: Arc::new([MARKER, b" in the state machine"].concat()),
            }),
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
                commit: 5,
            }),
            entries: (6..=8).map(entry).collect(),
            ..Default::default()
        },
    ]
}

#[test]
fn workloads_recover_the_same_state_sealed_as_plain() {
    for seed in [0x5EA1_0001u64, 0x5EA1_0002, 0x5EA1_0003] {
        let w = workload(seed, 120, Mix::ALL);
        let keys = ring(7, &random_key().unwrap());
        let o = sealed(1024, keys.clone());
        let dir = scratch();
        let (wal, _) = run(dir.path(), o.clone(), &w.batches);
        assert!(!wal.plaintext_in_use().unwrap());
        assert_eq!(wal.key_ids_in_use().unwrap(), [7].into());
        drop(wal);
        let (wal, got, rec) = Wal::open(dir.path(), o.clone()).unwrap();
        assert_state(&got, w.models.last().unwrap(), &format!("seed {seed:x}"));
        assert_eq!(torn(&rec), None);
        assert_eq!(wal.recover().unwrap().entries.len(), got.entries.len());
    }
}

#[test]
fn nothing_written_is_readable_without_the_key() {
    let key = random_key().unwrap();
    let o = sealed(1 << 20, ring(1, &key));
    let dir = scratch();
    let (wal, _) = run(dir.path(), o.clone(), &marked_batches());
    drop(wal);
    for (name, bytes) in files(dir.path()) {
        assert!(
            !holds(&bytes, MARKER),
            "{name} holds the marker in plaintext"
        );
        assert!(!holds(&bytes, b"PRIVATE KEY"), "{name}");
    }
    // With the key: everything back.
    let (_, got, _) = Wal::open(dir.path(), o.clone()).unwrap();
    let snap = got.snapshot.as_ref().expect("the snapshot");
    assert!(holds(&snap.data, MARKER));
    assert!(got.entries.iter().all(|e| match &e.payload {
        Payload::Command(d) => holds(d, MARKER),
        _ => false,
    }));
    assert_eq!(
        got.entries.len(),
        5,
        "entries 4..=8 after the snapshot at 3"
    );

    // Without a key, or with another one: refused, saying which key is missing; the files are
    // left as they were.
    let before = files(dir.path());
    let err = Wal::open(dir.path(), opts(1 << 20))
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("data key 1"), "{err}");
    let other = sealed(1 << 20, ring(1, &random_key().unwrap()));
    let err = Wal::open(dir.path(), other).map(|_| ()).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("does not authenticate"), "{err}");
    assert_eq!(files(dir.path()), before);
}

#[test]
fn a_rotated_key_takes_over_and_the_old_one_is_needed_until_compaction() {
    let w = workload(0x5EA1_0010, 200, Mix::ALL);
    let snapshots = w.snapshot_batches();
    assert!(snapshots.len() >= 4, "the workload takes snapshots");
    let k1 = random_key().unwrap();
    let k2 = random_key().unwrap();
    let dir = scratch();
    let (mut wal, _) = run(dir.path(), sealed(512, ring(1, &k1)), &w.batches[..100]);
    assert_eq!(wal.key_ids_in_use().unwrap(), [1].into());
    let mut both = Keyring::new(2, &k2).unwrap();
    both.add(1, &k1).unwrap();
    let both = Arc::new(both);
    wal.set_keys(both.clone()).unwrap();
    assert_eq!(wal.key_ids_in_use().unwrap(), [1, 2].into());
    let mut needed_1 = true;
    for b in &w.batches[100..] {
        wal.write(b).unwrap();
        wal.sync().unwrap();
        needed_1 = wal.key_ids_in_use().unwrap().contains(&1);
    }
    assert!(
        !needed_1,
        "snapshots and compaction retired every file sealed with key 1"
    );
    drop(wal);
    // So the new key alone reads the log.
    let (_, got, _) = Wal::open(dir.path(), sealed(512, ring(2, &k2))).unwrap();
    assert_state(&got, w.models.last().unwrap(), "after rotation");
}

#[test]
fn a_plaintext_log_becomes_encrypted_as_it_is_compacted() {
    let w = workload(0x5EA1_0020, 200, Mix::ALL);
    let dir = scratch();
    let (wal, _) = run(dir.path(), opts(512), &w.batches[..100]);
    assert!(wal.plaintext_in_use().unwrap());
    drop(wal);
    let o = sealed(512, ring(1, &random_key().unwrap()));
    let (mut wal, got, _) = Wal::open(dir.path(), o.clone()).unwrap();
    assert_state(&got, &w.models[100], "plaintext read with keys");
    for b in &w.batches[100..] {
        wal.write(b).unwrap();
        wal.sync().unwrap();
    }
    assert!(
        !wal.plaintext_in_use().unwrap(),
        "compaction removed the plaintext"
    );
    drop(wal);
    let (_, got, _) = Wal::open(dir.path(), o).unwrap();
    assert_state(&got, w.models.last().unwrap(), "encrypted");
}

#[test]
fn a_torn_sealed_record_is_truncated() {
    let o = sealed(1 << 20, ring(1, &random_key().unwrap()));
    let dir = scratch();
    let batches = marked_batches();
    let (wal, _) = run(dir.path(), o.clone(), &batches[..1]);
    drop(wal);
    // A write of the next batch cut short by a crash.
    let (mut wal, _, _) = Wal::open(dir.path(), o.clone()).unwrap();
    wal.write(&WriteBatch {
        seq: 2,
        entries: vec![Entry {
            term: 1,
            index: 6,
            payload: Payload::Command(MARKER.to_vec()),
        }],
        ..Default::default()
    })
    .unwrap();
    wal.simulate_crash(30).unwrap();
    let (path, len) = last_segment(dir.path());
    let (_, got, rec) = Wal::open(dir.path(), o).unwrap();
    let t = torn(&rec).expect("a torn tail");
    assert_eq!(t.0, path);
    assert!(t.1 < len);
    assert_eq!(got.last_index(), 5);
}

#[test]
fn a_sealed_segment_cut_inside_its_key_id_is_a_torn_header() {
    let o = sealed(1 << 20, ring(1, &random_key().unwrap()));
    let dir = scratch();
    let (wal, _) = run(dir.path(), o.clone(), &marked_batches()[..1]);
    drop(wal);
    // The next segment's creation died after 28 of its 32 header bytes.
    let (path, _) = last_segment(dir.path());
    let head = std::fs::read(&path).unwrap()[..28].to_vec();
    let seq = u64::from_str_radix(path.file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    let next = path.with_file_name(format!("{:016x}.wal", seq + 1));
    std::fs::write(&next, head).unwrap();
    let (_, got, rec) = Wal::open(dir.path(), o).unwrap();
    let t = torn(&rec).expect("a torn header");
    assert_eq!((t.0, t.1), (next, 0));
    assert_eq!(got.last_index(), 5);
}
