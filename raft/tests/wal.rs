//! Tests of the on-disk write-ahead log (`shoal_raft::wal`): crash injection at every record
//! boundary and inside records, cuts of the final segment at every byte, byte flips, missing
//! segments, half-written snapshots, compaction, group commit, and a three-node cluster that
//! restarts from its data directories.
//!
//! Every workload comes from a seeded splitmix64 (`wal_support::Rng`), and the expected state is
//! always the model of `RecoveredState::apply` over the batches that must be durable. Nothing
//! reads a clock. The matrices run with `fsync: false` and tiny segments in tmpfs when there is
//! one (crashes are modelled with `Wal::simulate_crash` and file surgery); one test runs with
//! fsync on in the system temp dir.

mod wal_support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use shoal_raft::wal::{Recovery, Wal, WalError, WalFaults, WalOptions};
use shoal_raft::{
    Config, Effect, Entry, HardState, Membership, Message, NodeId, Payload, RaftNode,
    RecoveredState, Role, Snapshot, SnapshotMeta, Storage, WriteBatch,
};
use wal_support::{
    assert_state, copy_of, flip, last_segment, opts, records, run, scratch, segments,
    snapshot_files, torn, workload, Mix, Rng, RECORD_HEADER, RECORD_TRAILER, SEGMENT_HEADER,
};

// ------------------------------------------------------------------------------------ helpers

fn open(dir: &Path, opts: &WalOptions) -> (Wal, RecoveredState, Recovery) {
    Wal::open(dir, opts.clone()).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

/// The Raft core must accept whatever the log recovers (the workloads only produce states a
/// node could hold, so a refusal means recovery mixed parts of different states).
fn assert_startable(state: &RecoveredState, ctx: &str) {
    if let Err(e) = RaftNode::new(Config::new(1), state.clone()) {
        panic!("{ctx}: the core refuses the recovered state: {e}");
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// Expects `Corrupt` naming `path` (and `offset`, if given); returns the reason.
fn expect_corrupt(
    r: Result<(Wal, RecoveredState, Recovery), WalError>,
    path: &Path,
    offset: Option<u64>,
    ctx: &str,
) -> String {
    match r {
        Err(WalError::Corrupt {
            path: p,
            offset: o,
            reason,
        }) => {
            assert_eq!(p, path, "{ctx}: corrupt file ({reason})");
            if let Some(offset) = offset {
                assert_eq!(o, offset, "{ctx}: corrupt offset ({reason})");
            }
            reason
        }
        Err(e) => panic!("{ctx}: expected Corrupt, got {e}"),
        Ok((_, s, rec)) => panic!(
            "{ctx}: expected Corrupt, but the log opened (torn tail {:?}, last index {})",
            torn(&rec),
            s.last_index()
        ),
    }
}

// ------------------------------------------------------------------------------------ crashes

/// For every k: batches 1..=k are written and synced, batch k+1 is written and the process dies
/// with 0, all, or a random part of its bytes on disk. Recovery must return exactly the model
/// after k batches (nothing synced lost, nothing of batch k+1 visible) or after k+1 batches
/// (the whole record landed), report a torn tail exactly when a partial record was cut off,
/// and go on accepting writes.
#[test]
fn crash_at_every_record_boundary_and_inside_records() {
    let few_snapshots = Mix {
        snapshots: 30,
        ..Mix::ALL
    };
    for (seed, mix, segment_bytes) in [
        (0x5EED_0001, Mix::ALL, 1024),
        (0x5EED_0011, few_snapshots, 2048),
    ] {
        crash_matrix(seed, mix, segment_bytes, 110);
    }
}

fn crash_matrix(seed: u64, mix: Mix, segment_bytes: u64, n: usize) {
    let w = workload(seed, n, mix);
    let opts = opts(segment_bytes);
    let mut rng = Rng::new(seed ^ 0xC4A5);
    let mut partial = 0;
    let mut commit_only_lost = 0;
    for k in 0..w.batches.len() {
        // 0 bytes, the whole record, a cut inside the record header, a cut inside the payload,
        // all but the trailer and one byte, and a cut inside the trailer (the payload is
        // complete and checks: the record is recovered, the cut trailer is tolerated); and
        // when commit-only batches were synced without an fsync, a cut anywhere in them.
        for class in 0..7 {
            let dir = scratch();
            let (mut wal, placement) = run(dir.path(), opts.clone(), &w.batches[..k]);
            // Commit-only batches just before batch k+1 were written without an fsync: their
            // record ends, counted from the last fsync.
            let mut ends: Vec<usize> = placement
                .iter()
                .rev()
                .map(|p| p.3)
                .take_while(|&u| u > 0)
                .collect();
            ends.reverse();
            let before = ends.last().copied().unwrap_or(0);
            assert_eq!(wal.unsynced_bytes(), before);
            let synced = k - ends.len();
            assert!(
                (synced..k).all(|i| w.commit_only(i)),
                "only commit-only unsynced"
            );
            let next = &w.batches[k];
            wal.write(next).expect("write");
            let total = wal.unsynced_bytes();
            let full = total - before;
            ends.push(total);
            assert!(full > RECORD_HEADER, "a record has a header and a payload");
            let keep = match class {
                0 => before,
                1 => before + full,
                2 => before + rng.range(1, RECORD_HEADER as u64 - 1) as usize,
                3 => {
                    let payload_end = (full - RECORD_TRAILER) as u64;
                    before + rng.range(RECORD_HEADER as u64, payload_end - 1) as usize
                }
                4 => before + full - RECORD_TRAILER - 1,
                5 => before + full - rng.range(1, RECORD_TRAILER as u64 - 1) as usize,
                _ if before > 0 => {
                    commit_only_lost += 1;
                    rng.range(0, before as u64 - 1) as usize
                }
                _ => continue,
            };
            let (seg, seg_len) = last_segment(dir.path());
            let synced_len = seg_len - before as u64;
            wal.simulate_crash(keep).expect("simulate crash");
            let ctx = format!(
                "seed {seed:#x}: crash while writing batch {} ({}), {keep} of {total} unsynced \
                 bytes on disk ({before} of them commit-only batches synced without an fsync)",
                k + 1,
                kind(next)
            );

            let (mut wal, got, rec) = open(dir.path(), &opts);
            // A record whose payload landed is whole (its trailer may be cut).
            let landed = ends.iter().filter(|&&e| e - RECORD_TRAILER <= keep).count();
            let durable = synced + landed;
            assert_state(&got, &w.models[durable], &ctx);
            let boundary = if landed == 0 {
                0
            } else {
                ends[landed - 1].min(keep)
            };
            let want_torn = (keep > boundary).then(|| {
                (
                    seg.clone(),
                    synced_len + boundary as u64,
                    (keep - boundary) as u64,
                )
            });
            assert_eq!(torn(&rec), want_torn, "{ctx}: torn tail");
            assert_startable(&got, &ctx);
            if want_torn.is_some() {
                partial += 1;
            }
            // Whatever synced batch was lost changed the commit index only: term and vote are
            // the last synced ones, and the commit index no higher than the last written one.
            if durable <= k {
                let hs = w.models[k].hard_state;
                assert_eq!(
                    (got.hard_state.term, got.hard_state.vote),
                    (hs.term, hs.vote),
                    "{ctx}"
                );
                assert!(got.hard_state.commit <= hs.commit, "{ctx}");
            }
            assert!(got.hard_state.commit <= got.last_index(), "{ctx}");

            // The log goes on from there: the workload's next batch lands on top.
            if durable < w.batches.len() {
                wal.write(&w.batches[durable])
                    .expect("write after recovery");
                wal.sync().expect("sync after recovery");
                drop(wal);
                let (_, again, rec) = open(dir.path(), &opts);
                assert_state(
                    &again,
                    &w.models[durable + 1],
                    &format!("{ctx}, then one more"),
                );
                assert_eq!(torn(&rec), None, "{ctx}, then one more: torn tail");
            }
        }
    }
    assert!(partial >= 3 * w.batches.len());
    assert!(
        commit_only_lost > 0,
        "some crashes lost commit-only batches"
    );
}

fn kind(b: &WriteBatch) -> &'static str {
    match (&b.snapshot, b.reset_log, b.entries.is_empty()) {
        (Some(s), _, _) if s.meta.index == 0 => "bootstrap",
        (Some(_), true, _) => "snapshot install",
        (Some(_), false, _) => "leader snapshot",
        (None, _, false) => "entries",
        (None, _, true) => "hard state",
    }
}

/// Every snapshot-carrying batch of a workload is written (its snapshot file lands at once) and
/// the process dies before the batch's record is synced: the previous snapshot must be the one
/// recovered, the orphaned file must go, and with `keep_snapshots: 1` the file the durable
/// marker names must survive the restart.
#[test]
fn snapshot_whose_batch_was_not_synced_is_not_recovered() {
    let w = workload(0x5EED_0005, 140, Mix::ALL);
    let opts = WalOptions {
        keep_snapshots: 1,
        ..opts(1024)
    };
    let snaps = w.snapshot_batches();
    assert!(snaps.len() >= 10, "the workload has snapshots");
    for &i in &snaps {
        let dir = scratch();
        let (mut wal, _) = run(dir.path(), opts.clone(), &w.batches[..i]);
        let b = &w.batches[i];
        wal.write(b).expect("write");
        let s = b.snapshot.as_ref().expect("snapshot batch");
        let orphan = dir.path().join("snap").join(format!(
            "snap-{:016x}-{:016x}.snap",
            s.meta.index, s.meta.term
        ));
        assert!(
            orphan.exists(),
            "the snapshot file is written before its record"
        );
        wal.simulate_crash(0).expect("crash");
        let ctx = format!("batch {} ({}) lost before its sync", b.seq, kind(b));

        let (wal, got, rec) = open(dir.path(), &opts);
        assert_state(&got, &w.models[i], &ctx);
        assert_startable(&got, &ctx);
        assert!(
            !orphan.exists(),
            "{ctx}: the orphaned snapshot file is removed"
        );
        assert!(
            rec.removed_temp_files.contains(&orphan),
            "{ctx}: the orphaned snapshot file is reported ({:?})",
            rec.removed_temp_files
        );
        drop(wal);
        let (mut wal, again, _) = open(dir.path(), &opts);
        assert_state(&again, &w.models[i], &format!("{ctx}, second restart"));
        wal.write(b).expect("write again");
        wal.sync().expect("sync");
        drop(wal);
        let (_, done, _) = open(dir.path(), &opts);
        assert_state(&done, &w.models[i + 1], &format!("{ctx}, rewritten"));
    }
}

/// Several batches are written without a sync (a group commit in progress) and the process
/// dies with any prefix of their bytes on disk: recovery returns the model after the synced
/// batches plus every unsynced record that landed whole, never part of one.
#[test]
fn crash_inside_a_group_commit() {
    let w = workload(0x5EED_0008, 120, Mix::ALL);
    let opts = opts(2048);
    let mut rng = Rng::new(0x6C0_0008);
    let mut k = 0;
    while k < w.batches.len() {
        let m = (rng.range(2, 8) as usize).min(w.batches.len() - k);
        for _ in 0..4 {
            let dir = scratch();
            let (mut wal, placement) = run(dir.path(), opts.clone(), &w.batches[..k]);
            // Commit-only batches synced without an fsync are unsynced bytes too.
            let mut ends: Vec<usize> = placement
                .iter()
                .rev()
                .map(|p| p.3)
                .take_while(|&u| u > 0)
                .collect();
            ends.reverse();
            let synced = k - ends.len();
            let before = wal.unsynced_bytes();
            for b in &w.batches[k..k + m] {
                wal.write(b).expect("write");
                ends.push(wal.unsynced_bytes());
            }
            let total = *ends.last().expect("some");
            let keep = rng.range(0, total as u64) as usize;
            let (seg, seg_len) = last_segment(dir.path());
            wal.simulate_crash(keep).expect("crash");
            // A record whose payload landed is whole (its trailer may be cut).
            let whole = ends.iter().filter(|&&e| e - RECORD_TRAILER <= keep).count();
            let boundary = if whole == 0 {
                0
            } else {
                ends[whole - 1].min(keep)
            };
            let ctx = format!(
                "{m} batches from {} unsynced, {keep} of {total} bytes on disk",
                k + 1
            );
            let (_, got, rec) = open(dir.path(), &opts);
            assert_state(&got, &w.models[synced + whole], &ctx);
            assert_startable(&got, &ctx);
            let want_torn = (keep > boundary).then(|| {
                (
                    seg.clone(),
                    seg_len - before as u64 + boundary as u64,
                    (keep - boundary) as u64,
                )
            });
            assert_eq!(torn(&rec), want_torn, "{ctx}: torn tail");
        }
        k += m;
    }
}

/// Zeros at the end of the last segment (a file extended by the filesystem but never written,
/// or a record whose tail never landed) are a torn tail: truncated, reported, and the state is
/// the one before the damaged record. The last record is large, so that its length field has
/// several non-zero bytes and zeros from inside it shorten it.
#[test]
fn zero_filled_tail_is_a_torn_tail() {
    let mut w = workload(0x5EED_0009, 40, Mix::ALL);
    let n = w.batches.len();
    let mut model = w.models[n].clone();
    let last = model.last_index();
    let big = WriteBatch {
        seq: n as u64 + 1,
        entries: vec![Entry {
            term: model.hard_state.term,
            index: last + 1,
            payload: Payload::Command(Rng::new(9).bytes(70_000)),
        }],
        ..Default::default()
    };
    model.apply(&big);
    w.batches.push(big);
    w.models.push(model);
    let n = w.batches.len();

    let opts = opts(1024);
    let golden = scratch();
    let (wal, _) = run(golden.path(), opts.clone(), &w.batches);
    drop(wal);
    let (final_path, _) = last_segment(golden.path());
    let name = file_name(&final_path);
    let data = fs::read(&final_path).expect("read");
    let (last_start, last_end) = *records(&data).last().expect("a record");
    assert_eq!(last_end, data.len());
    assert!(last_end - last_start > 65_536 + RECORD_HEADER);
    let mut rng = Rng::new(0x2E80_0009);

    // Zeros appended after the last record.
    for zeros in [1, 4, 7, 8, 9, 100, 4096] {
        let d = copy_of(golden.path());
        let p = d.path().join("wal").join(&name);
        let mut bytes = data.clone();
        bytes.resize(data.len() + zeros, 0);
        fs::write(&p, &bytes).expect("write");
        let ctx = format!("{zeros} zeros appended");
        let (_, got, rec) = open(d.path(), &opts);
        assert_state(&got, &w.models[n], &ctx);
        assert_eq!(
            torn(&rec),
            Some((p.clone(), data.len() as u64, zeros as u64)),
            "{ctx}: torn tail"
        );
        assert_eq!(fs::metadata(&p).expect("stat").len(), data.len() as u64);
    }

    // The last record's bytes from some point on are zeros: from each byte of its header, and
    // from random points of its payload.
    let froms: Vec<usize> = (last_start..last_start + RECORD_HEADER)
        .chain((0..10).map(|_| {
            let payload_end = (last_end - RECORD_TRAILER) as u64;
            rng.range(last_start as u64 + 8, payload_end - 1) as usize
        }))
        .collect();
    for from in froms {
        let d = copy_of(golden.path());
        let p = d.path().join("wal").join(&name);
        let mut bytes = data.clone();
        bytes[from..].iter_mut().for_each(|b| *b = 0);
        fs::write(&p, &bytes).expect("write");
        let ctx = format!("last record (at {last_start}) zeroed from byte {from}");
        let (_, got, rec) = open(d.path(), &opts);
        assert_state(&got, &w.models[n - 1], &ctx);
        assert_eq!(
            torn(&rec),
            Some((p.clone(), last_start as u64, (last_end - last_start) as u64)),
            "{ctx}: torn tail"
        );
    }
}

// ------------------------------------------------------------------------------------ cuts

/// After a complete synced run, the final segment is cut at every byte offset. Recovery returns
/// the model after the last record that fits entirely, reports the cut-off part as a torn tail,
/// truncates the segment back to that record and starts a new one; a cut inside the 24-byte
/// header drops the segment (a fresh one takes its number).
#[test]
fn cut_final_segment_at_every_byte_offset() {
    cut_matrix(0x5EED_0002, 70, 1100);
    cut_matrix(0x5EED_0018, 45, 1536);
}

/// When compaction left only the final segment, a cut inside its header or its first record (the
/// hard state) leaves no record at all while snapshot files exist: the log refuses to start
/// rather than come up empty (forgetting term and vote) or delete the snapshots.
#[test]
fn cut_of_the_only_segment_is_refused() {
    let w = workload(0x5EED_0012, 55, Mix::ALL);
    let opts = opts(1280);
    let golden = scratch();
    let (wal, _) = run(golden.path(), opts.clone(), &w.batches);
    drop(wal);
    let segs = segments(golden.path());
    assert_eq!(segs.len(), 1, "compaction left one segment");
    let name = file_name(&segs[0].1);
    let data = fs::read(&segs[0].1).expect("read");
    let hs_end = records(&data)[0].1;
    // Up to the end of its payload: a cut inside its trailer leaves the record whole.
    for cut in 0..hs_end - RECORD_TRAILER {
        let d = copy_of(golden.path());
        let p = d.path().join("wal").join(&name);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(cut as u64))
            .expect("cut");
        let snaps = snapshot_files(d.path());
        let ctx = format!("only segment cut at byte {cut}");
        let reason = expect_corrupt(
            Wal::open(d.path(), opts.clone()),
            &d.path().join("wal"),
            Some(0),
            &ctx,
        );
        assert!(reason.contains("no record"), "{ctx}: {reason:?}");
        assert_eq!(snapshot_files(d.path()), snaps, "{ctx}: snapshots kept");
        assert_eq!(fs::metadata(&p).expect("stat").len(), cut as u64, "{ctx}");
    }
}

fn cut_matrix(seed: u64, n: usize, segment_bytes: u64) {
    let w = workload(seed, n, Mix::ALL);
    let opts = opts(segment_bytes);
    let golden = scratch();
    let (wal, placement) = run(golden.path(), opts.clone(), &w.batches);
    drop(wal);
    let (final_path, _) = last_segment(golden.path());
    let name = file_name(&final_path);
    let data = fs::read(&final_path).expect("read final segment");
    let recs = records(&data);
    let in_final: Vec<usize> = (0..w.batches.len())
        .filter(|&i| placement[i].0 == name)
        .collect();
    assert!(
        in_final.len() >= 3,
        "the final segment holds several batches"
    );
    let first = in_final[0];
    assert_eq!(*in_final.last().expect("some"), w.batches.len() - 1);
    // Cutting synced records stands for "they never reached the disk" only if nothing acted on
    // them: no compaction may have run while the final segment was active.
    let deleted_before = if first == 0 {
        0
    } else {
        placement[first - 1].2
    };
    assert_eq!(
        placement.last().expect("some").2,
        deleted_before,
        "no compaction while the final segment was active"
    );
    assert!(
        in_final.iter().any(|&i| w.batches[i].snapshot.is_some()),
        "the final segment holds a snapshot marker"
    );
    // Record 0 is the hard state every segment starts with, then one record per batch.
    assert_eq!(recs.len(), in_final.len() + 1);
    for (r, &i) in recs[1..].iter().zip(&in_final) {
        assert_eq!(r.1 as u64, placement[i].1, "batch {} ends there", i + 1);
    }
    let mut boundaries = vec![SEGMENT_HEADER];
    boundaries.extend(recs.iter().map(|r| r.1));

    for cut in 0..=data.len() {
        let d = copy_of(golden.path());
        let p = d.path().join("wal").join(&name);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(cut as u64))
            .expect("cut the segment");
        let files_before = segments(d.path()).len();
        let ctx = format!(
            "seed {seed:#x}: final segment cut at byte {cut} of {}",
            data.len()
        );

        let (wal, got, rec) = open(d.path(), &opts);
        // A record is whole once its payload is: a cut inside its trailer loses nothing.
        let whole = recs[1..]
            .iter()
            .filter(|r| r.1 - RECORD_TRAILER <= cut)
            .count();
        assert_state(&got, &w.models[first + whole], &ctx);
        assert_startable(&got, &ctx);
        // Where the bytes of the last whole record (or the header) end: a record's end is at
        // most `RECORD_TRAILER` bytes past its payload.
        let payload_end = |b: usize| {
            if b > SEGMENT_HEADER {
                b - RECORD_TRAILER
            } else {
                b
            }
        };
        let boundary = boundaries
            .iter()
            .rev()
            .find(|&&b| payload_end(b) <= cut)
            .map_or(0, |&b| b.min(cut));
        let want_torn = if cut < SEGMENT_HEADER {
            Some((p.clone(), 0, cut as u64))
        } else if boundary == cut {
            None
        } else {
            Some((p.clone(), boundary as u64, (cut - boundary) as u64))
        };
        assert_eq!(torn(&rec), want_torn, "{ctx}: torn tail");
        drop(wal);
        let after = segments(d.path());
        if cut < SEGMENT_HEADER {
            assert_eq!(after.len(), files_before, "{ctx}: segment replaced");
            assert!(fs::metadata(&p).expect("stat").len() > SEGMENT_HEADER as u64);
        } else {
            assert_eq!(
                after.len(),
                files_before + 1,
                "{ctx}: a new segment follows"
            );
            assert_eq!(
                fs::metadata(&p).expect("stat").len(),
                boundary as u64,
                "{ctx}: cut back to the last whole record"
            );
        }
    }
}

// ------------------------------------------------------------------------------------ flips

/// One flipped byte anywhere in the log is reported, never silently dropped: in a record's
/// header or payload (the last record of the last segment included: it was synced) it is
/// `Corrupt` naming the segment and the record's start, also when the flipped byte is in the
/// length field; in a segment header it is `Corrupt` at offset 0; in a record's trailer it loses
/// nothing (the checksum still vouches for the payload) and everything is recovered. A flip in
/// the newest snapshot file is `Corrupt` naming that file.
#[test]
fn flipped_bytes_are_detected_and_located() {
    // Few snapshots, so that compaction leaves several segments of many records.
    let w = workload(
        0x5EED_0003,
        80,
        Mix {
            snapshots: 15,
            ..Mix::ALL
        },
    );
    let opts = opts(1024);
    let golden = scratch();
    let (wal, _) = run(golden.path(), opts.clone(), &w.batches);
    drop(wal);
    let segs = segments(golden.path());
    assert!(segs.len() >= 3, "several segments ({})", segs.len());
    let final_model = w.models.last().expect("models");
    let mut rng = Rng::new(0xF11F_0003);
    let mask = |rng: &mut Rng| rng.range(1, 255) as u8;

    for (_, gpath) in &segs {
        let name = file_name(gpath);
        let data = fs::read(gpath).expect("read segment");
        let recs = records(&data);

        let d = copy_of(golden.path());
        let p = d.path().join("wal").join(&name);
        let pos = rng.below(SEGMENT_HEADER as u64) as usize;
        flip(&p, pos, mask(&mut rng));
        let ctx = format!("segment {name}: header byte {pos} flipped");
        expect_corrupt(Wal::open(d.path(), opts.clone()), &p, Some(0), &ctx);

        for (ri, &(start, end)) in recs.iter().enumerate() {
            let trailer = end - RECORD_TRAILER;
            let picks = [
                rng.range(start as u64, start as u64 + 3) as usize,
                rng.range(start as u64 + 4, trailer as u64 - 1) as usize,
                rng.range(trailer as u64, end as u64 - 1) as usize,
            ];
            for pos in picks {
                let d = copy_of(golden.path());
                let p = d.path().join("wal").join(&name);
                flip(&p, pos, mask(&mut rng));
                let ctx =
                    format!("segment {name}, record {ri} at {start}..{end}: byte {pos} flipped");
                let r = Wal::open(d.path(), opts.clone());
                if pos >= trailer {
                    let (_, got, rec) = r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert_eq!(torn(&rec), None, "{ctx}: torn tail");
                    assert_state(&got, final_model, &ctx);
                } else {
                    expect_corrupt(r, &p, Some(start as u64), &ctx);
                }
            }
        }
    }

    let snaps: Vec<PathBuf> = snapshot_files(golden.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    let newest = file_name(snaps.last().expect("a snapshot file"));
    let len = fs::metadata(snaps.last().expect("one"))
        .expect("stat")
        .len();
    for _ in 0..12 {
        let d = copy_of(golden.path());
        let p = d.path().join("snap").join(&newest);
        let pos = rng.below(len) as usize;
        flip(&p, pos, mask(&mut rng));
        let ctx = format!("snapshot {newest}: byte {pos} flipped");
        expect_corrupt(Wal::open(d.path(), opts.clone()), &p, None, &ctx);
    }
    // The snapshot file the log's last marker names is gone.
    let d = copy_of(golden.path());
    let p = d.path().join("snap").join(&newest);
    fs::remove_file(&p).expect("remove snapshot");
    let reason = expect_corrupt(
        Wal::open(d.path(), opts.clone()),
        &p,
        Some(0),
        "snapshot removed",
    );
    assert!(reason.contains("missing"), "reason {reason:?}");

    // An older snapshot file kept for safety is not read, so damage to it does not matter.
    if snaps.len() >= 2 {
        let d = copy_of(golden.path());
        let p = d.path().join("snap").join(file_name(&snaps[0]));
        flip(&p, 40, 0x10);
        let (_, got, _) = open(d.path(), &opts);
        assert_state(&got, final_model, "older snapshot file flipped");
    }
}

/// Every byte of the last two records of a segment (the final segment, and the one before it)
/// is changed, each separately, to several values (each single bit flipped, all bits flipped,
/// zeroed): the log either opens with every synced batch recovered, or refuses naming that
/// segment and the start of the damaged record. Never a silent loss: in format 1 a damaged last
/// record (or a length pointing past the end) was taken for a torn write and dropped.
#[test]
fn changing_any_byte_of_the_last_two_records_never_loses_a_synced_record() {
    let w = workload(
        0x5EED_0021,
        60,
        Mix {
            snapshots: 15,
            ..Mix::ALL
        },
    );
    let opts = opts(1024);
    let golden = scratch();
    let (wal, _) = run(golden.path(), opts.clone(), &w.batches);
    drop(wal);
    let segs = segments(golden.path());
    assert!(segs.len() >= 2, "several segments");
    let final_model = w.models.last().expect("models");
    let (mut refused, mut opened, mut length_refused) = (0, 0, 0);
    for (_, gpath) in &segs[segs.len() - 2..] {
        let name = file_name(gpath);
        let data = fs::read(gpath).expect("read segment");
        let recs = records(&data);
        assert!(recs.len() >= 2, "{name}: two records at least");
        let from = recs[recs.len() - 2].0;
        assert_eq!(recs.last().expect("records").1, data.len());
        // One scratch copy per segment; each case rewrites the segment and undoes what open did.
        let d = copy_of(golden.path());
        let p = d.path().join("wal").join(&name);
        let files: Vec<PathBuf> = segments(d.path()).into_iter().map(|s| s.1).collect();
        for pos in from..data.len() {
            let &(start, end) = recs
                .iter()
                .find(|r| r.0 <= pos && pos < r.1)
                .expect("a record");
            let mut values: Vec<u8> = (0..8).map(|bit| data[pos] ^ (1 << bit)).collect();
            values.push(!data[pos]);
            if data[pos] != 0 {
                values.push(0);
            }
            for v in values {
                let mut bytes = data.clone();
                bytes[pos] = v;
                fs::write(&p, &bytes).expect("write damaged segment");
                let ctx = format!(
                    "segment {name}, record {start}..{end}: byte {pos} {:#04x} -> {v:#04x}",
                    data[pos]
                );
                match Wal::open(d.path(), opts.clone()) {
                    Ok((_, got, rec)) => {
                        assert_state(&got, final_model, &ctx);
                        assert_eq!(torn(&rec), None, "{ctx}: nothing truncated");
                        assert!(pos >= end - RECORD_TRAILER, "{ctx}: only a trailer byte");
                        opened += 1;
                    }
                    Err(WalError::Corrupt {
                        path,
                        offset,
                        reason,
                    }) => {
                        assert_eq!(path, p, "{ctx}: {reason}");
                        assert_eq!(offset, start as u64, "{ctx}: {reason}");
                        refused += 1;
                        if pos < start + 4 {
                            length_refused += 1;
                        }
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
                for f in segments(d.path()) {
                    if !files.contains(&f.1) {
                        fs::remove_file(&f.1).expect("remove the segment open created");
                    }
                }
            }
        }
    }
    eprintln!("{refused} damaged records refused ({length_refused} lengths), {opened} damaged trailers tolerated");
    assert!(refused > 0 && opened > 0 && length_refused > 0);
}

/// The last record's trailer ends in a zero byte (about one record in 256), so its end looks
/// like zeros: a damaged byte anywhere before the trailer is still refused (the intact trailer
/// proves the record was written whole), never taken for a torn write.
#[test]
fn damaged_last_record_ending_in_a_zero_byte_is_refused() {
    let opts = opts(1 << 20);
    let first = WriteBatch {
        seq: 1,
        hard_state: Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0,
        }),
        entries: entries(1, 3, 1),
        ..Default::default()
    };
    let mut found = None;
    for i in 0..5000u32 {
        let last = WriteBatch {
            seq: 2,
            entries: vec![Entry {
                term: 1,
                index: 4,
                payload: Payload::Command(i.to_le_bytes().to_vec()),
            }],
            ..Default::default()
        };
        let dir = scratch();
        let (wal, _) = run(dir.path(), opts.clone(), &[first.clone(), last.clone()]);
        drop(wal);
        let (p, len) = last_segment(dir.path());
        let data = fs::read(&p).expect("read");
        if data[len as usize - 1] == 0 {
            found = Some((dir, p, data, last));
            break;
        }
    }
    let (golden, gpath, data, last) = found.expect("a record whose trailer ends in zero");
    let mut model = RecoveredState::default();
    model.apply(&first);
    model.apply(&last);
    let &(start, end) = records(&data).last().expect("records");
    let name = file_name(&gpath);
    for pos in start..end - RECORD_TRAILER {
        for v in [data[pos] ^ 1, data[pos] ^ 0x80, 0] {
            if v == data[pos] {
                continue;
            }
            let d = copy_of(golden.path());
            let p = d.path().join("wal").join(&name);
            let mut bytes = data.clone();
            bytes[pos] = v;
            fs::write(&p, &bytes).expect("write");
            let ctx = format!("record {start}..{end}, byte {pos} set to {v:#04x}");
            expect_corrupt(
                Wal::open(d.path(), opts.clone()),
                &p,
                Some(start as u64),
                &ctx,
            );
        }
    }
    // Undamaged, it opens with everything.
    let (_, got, rec) = open(golden.path(), &opts);
    assert_state(&got, &model, "undamaged");
    assert!(rec.is_clean());
}

/// A genuinely torn last record: the final segment cut at every offset inside its last record,
/// as is, then zero-filled back to its length, then zero-filled beyond it. Recovery is silent
/// (no error) and reports what it truncated; the record is recovered exactly when its payload
/// is whole (the cut or zeros are in its trailer).
#[test]
fn torn_last_record_is_truncated_at_every_offset() {
    // No snapshots: a torn snapshot batch would have open remove its file, and the cases share
    // one directory.
    let w = workload(0x5EED_0022, 30, Mix::NO_SNAPSHOTS);
    let n = w.batches.len();
    let opts = opts(1 << 20);
    let golden = scratch();
    let (wal, _) = run(golden.path(), opts.clone(), &w.batches);
    drop(wal);
    let (gpath, _) = last_segment(golden.path());
    let name = file_name(&gpath);
    let data = fs::read(&gpath).expect("read");
    let &(start, end) = records(&data).last().expect("a record");
    assert_eq!(end, data.len());
    assert!(
        end - start > 60,
        "a record with a few entries ({} bytes)",
        end - start
    );
    let payload_end = end - RECORD_TRAILER;
    let d = copy_of(golden.path());
    let p = d.path().join("wal").join(&name);
    let files: Vec<PathBuf> = segments(d.path()).into_iter().map(|s| s.1).collect();
    for cut in start + 1..end {
        for (how, zeros) in [
            ("cut", 0),
            ("zero-filled", end - cut),
            ("zeros past", end - cut + 600),
        ] {
            let mut bytes = data[..cut].to_vec();
            bytes.resize(cut + zeros, 0);
            fs::write(&p, &bytes).expect("write torn segment");
            let ctx = format!("last record {start}..{end} {how} from byte {cut}");
            let (_, got, rec) = open(d.path(), &opts);
            let whole = cut >= payload_end;
            assert_state(&got, &w.models[if whole { n } else { n - 1 }], &ctx);
            // What is truncated: the damaged record, or the zeros after a whole one.
            let kept = if whole { bytes.len().min(end) } else { start };
            let want =
                (kept < bytes.len()).then(|| (p.clone(), kept as u64, (bytes.len() - kept) as u64));
            assert_eq!(torn(&rec), want, "{ctx}: torn tail");
            if let Some(t) = &rec.torn_tail {
                let line = rec.to_string();
                assert!(
                    line.contains(&name) && line.contains(&format!("offset {}", t.offset)),
                    "{ctx}: report {line:?}"
                );
            }
            let len = if want.is_some() { kept } else { bytes.len() };
            assert_eq!(
                fs::metadata(&p).expect("stat").len(),
                len as u64,
                "{ctx}: file length"
            );
            for f in segments(d.path()) {
                if !files.contains(&f.1) {
                    fs::remove_file(&f.1).expect("remove the segment open created");
                }
            }
        }
    }
}

/// A segment of format version 1 (its checksum did not cover the length) is refused with an
/// error naming the file and the version field, not misread.
#[test]
fn format_version_1_is_refused() {
    let w = workload(0x5EED_0023, 5, Mix::NO_SNAPSHOTS);
    let dir = scratch();
    let (wal, _) = run(dir.path(), opts(1 << 20), &w.batches);
    drop(wal);
    let (p, _) = last_segment(dir.path());
    let mut bytes = fs::read(&p).expect("read");
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    fs::write(&p, &bytes).expect("write");
    let reason = expect_corrupt(
        Wal::open(dir.path(), opts(1 << 20)),
        &p,
        Some(8),
        "version 1",
    );
    assert!(reason.contains("version 1"), "{reason}");
}

// ------------------------------------------------------------------------------------ faults

/// Options with the fault hook `faults`.
fn faulty(faults: &WalFaults, segment_bytes: u64) -> WalOptions {
    WalOptions {
        faults: faults.clone(),
        ..opts(segment_bytes)
    }
}

/// How many of the first `k` batches of a run are durable by fsync: the trailing commit-only
/// batches synced without one are not (a failure or crash may lose them).
fn fsynced_prefix(placement: &wal_support::Placement) -> usize {
    placement.len() - placement.iter().rev().take_while(|p| p.3 > 0).count()
}

/// `got` is `want` except that its commit index may be lower, down to `min_commit`: what a lost
/// commit-only batch leaves.
fn assert_state_but_commit(
    got: &RecoveredState,
    want: &RecoveredState,
    min_commit: u64,
    ctx: &str,
) {
    let mut lowered = want.clone();
    lowered.hard_state.commit = got.hard_state.commit;
    assert_state(got, &lowered, ctx);
    assert!(
        (min_commit..=want.hard_state.commit).contains(&got.hard_state.commit),
        "{ctx}: commit {} not in {min_commit}..={}",
        got.hard_state.commit,
        want.hard_state.commit
    );
}

fn expect_poisoned<T: std::fmt::Debug>(r: Result<T, WalError>, first: &str, ctx: &str) {
    match r {
        Err(WalError::Poisoned { first: f }) => {
            assert!(
                f.contains(first),
                "{ctx}: first failure {f:?}, expected {first:?}"
            )
        }
        other => panic!("{ctx}: expected Poisoned, got {other:?}"),
    }
}

/// A failed fsync poisons the log (fsyncgate): that sync fails, and every later sync and write
/// fails naming the first failure, without retrying the fsync (the hook would let a second one
/// pass). The durable seq never covers the batches of the failed fsync, and a reopen recovers
/// what was fsynced before, nothing of them.
#[test]
fn failed_fsync_poisons_the_log() {
    let w = workload(0x5EED_0031, 90, Mix::ALL);
    let mut tried = 0;
    for at in (1..w.batches.len() - 3).step_by(5) {
        let faults = WalFaults::default();
        let opts = faulty(&faults, 1024);
        let dir = scratch();
        let (mut wal, placement) = run(dir.path(), opts.clone(), &w.batches[..at]);
        let fsynced = fsynced_prefix(&placement);
        let durable = wal.sync().expect("nothing new");
        assert_eq!(durable, at as u64);
        let group = &w.batches[at..at + 3];
        for b in group {
            wal.write(b).expect("write");
        }
        if !(at..at + 3).any(|i| !w.commit_only(i)) {
            continue;
        }
        tried += 1;
        let ctx = format!("fsync of batches {}..={} fails", at + 1, at + 3);
        faults.fail_next_fsync();
        let fsyncs = wal.stats().fsyncs;
        match wal.sync() {
            Err(WalError::Io { op: "fsync", .. }) => {}
            other => panic!("{ctx}: expected an fsync error, got {other:?}"),
        }
        assert!(
            wal.poisoned()
                .is_some_and(|f| f.contains("injected fsync failure")),
            "{ctx}"
        );
        expect_poisoned(wal.sync(), "injected fsync failure", &ctx);
        expect_poisoned(wal.sync(), "injected fsync failure", &ctx);
        expect_poisoned(
            wal.write(&w.batches[at + 3]),
            "injected fsync failure",
            &ctx,
        );
        assert_eq!(wal.stats().fsyncs, fsyncs, "{ctx}: no fsync retried");
        drop(wal);
        let (mut wal, got, _) = open(dir.path(), &opts);
        assert_state_but_commit(
            &got,
            &w.models[at],
            w.models[fsynced].hard_state.commit,
            &ctx,
        );
        assert_startable(&got, &ctx);
        // The reopened log works: the group goes in again.
        for b in group {
            wal.write(b).expect("write after reopen");
        }
        assert_eq!(wal.sync().expect("sync after reopen"), (at + 3) as u64);
        drop(wal);
        let (_, got, _) = open(dir.path(), &opts);
        assert_state(&got, &w.models[at + 3], &format!("{ctx}, written again"));
    }
    assert!(tried >= 10);
}

/// A failed write poisons the log the same way, including the write of a snapshot file.
#[test]
fn failed_write_poisons_the_log() {
    let w = workload(0x5EED_0032, 80, Mix::ALL);
    let snaps = w.snapshot_batches();
    for at in [5, 17, 40, snaps[1], snaps[snaps.len() - 1]] {
        let faults = WalFaults::default();
        let opts = faulty(&faults, 1024);
        let dir = scratch();
        let (mut wal, placement) = run(dir.path(), opts.clone(), &w.batches[..at]);
        let fsynced = fsynced_prefix(&placement);
        faults.fail_next_write();
        let b = &w.batches[at];
        let ctx = format!("write of batch {} ({}) fails", b.seq, kind(b));
        let first = "injected write failure";
        if b.snapshot.is_some() {
            // The snapshot file is written at once, by `write`.
            let r = wal.write(b);
            assert!(
                matches!(r, Err(WalError::Io { op: "write", .. })),
                "{ctx}: {r:?}"
            );
            expect_poisoned(wal.sync(), first, &ctx);
        } else {
            wal.write(b).expect("buffered");
            let r = wal.sync();
            assert!(
                matches!(r, Err(WalError::Io { op: "write", .. })),
                "{ctx}: {r:?}"
            );
        }
        expect_poisoned(wal.write(b), first, &ctx);
        expect_poisoned(wal.sync(), first, &ctx);
        drop(wal);
        let (_, got, rec) = open(dir.path(), &opts);
        assert_state_but_commit(
            &got,
            &w.models[at],
            w.models[fsynced].hard_state.commit,
            &ctx,
        );
        assert_startable(&got, &ctx);
        assert_eq!(torn(&rec), None, "{ctx}");
    }
}

/// A full disk: the write that crosses the limit lands partially and fails with ENOSPC. The log
/// is poisoned and cuts the partial write back to its last fsync; a reopen recovers what was
/// fsynced before; once space is back, the batches go in again.
#[test]
fn full_disk_mid_write_poisons_the_log() {
    let w = workload(0x5EED_0033, 70, Mix::NO_SNAPSHOTS);
    let mut rng = Rng::new(0xD15C);
    let mut cut_back = 0;
    for at in (3..w.batches.len() - 4).step_by(3) {
        let faults = WalFaults::default();
        let opts = faulty(&faults, 2048);
        let dir = scratch();
        let (mut wal, placement) = run(dir.path(), opts.clone(), &w.batches[..at]);
        let fsynced = fsynced_prefix(&placement);
        let commit_only_unsynced = placement.last().map_or(0, |p| p.3);
        let (seg, seg_len) = last_segment(dir.path());
        let group = &w.batches[at..at + 4];
        for b in group {
            wal.write(b).expect("write");
        }
        let buffered = wal.unsynced_bytes() - commit_only_unsynced;
        let room = rng.range(0, buffered as u64 - 1);
        faults.disk_full_after(room);
        let ctx = format!(
            "disk full {room} bytes into a {buffered}-byte group commit at batch {}",
            at + 1
        );
        match wal.sync() {
            Err(WalError::Io {
                op: "write",
                source,
                ..
            }) => assert_eq!(source.raw_os_error(), Some(28), "{ctx}: ENOSPC"),
            other => panic!("{ctx}: expected ENOSPC, got {other:?}"),
        }
        expect_poisoned(wal.sync(), "No space left", &ctx);
        expect_poisoned(wal.write(&w.batches[at + 4]), "No space left", &ctx);
        let rotated = last_segment(dir.path()).0 != seg;
        if !rotated {
            // Cut back to the last fsync: the partial write and the commit-only batches.
            let len = fs::metadata(&seg).expect("stat").len();
            assert_eq!(len, seg_len - commit_only_unsynced as u64, "{ctx}");
            cut_back += 1;
        }
        drop(wal);
        faults.disk_space_freed();
        let (mut wal, got, rec) = open(dir.path(), &opts);
        assert_state_but_commit(
            &got,
            &w.models[at],
            w.models[fsynced].hard_state.commit,
            &ctx,
        );
        assert_startable(&got, &ctx);
        if !rotated {
            assert_eq!(torn(&rec), None, "{ctx}: nothing partial left");
        }
        for b in group {
            wal.write(b).expect("write after reopen");
        }
        assert_eq!(wal.sync().expect("sync after reopen"), (at + 4) as u64);
        drop(wal);
        let (_, got, _) = open(dir.path(), &opts);
        assert_state(&got, &w.models[at + 4], &format!("{ctx}, written again"));
    }
    assert!(cut_back >= 10, "{cut_back}");
}

// ------------------------------------------------------------------------------------ MustSync

fn hs(term: u64, vote: Option<u64>, commit: u64) -> Option<HardState> {
    Some(HardState { term, vote, commit })
}

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|index| Entry {
            term,
            index,
            payload: Payload::Command(vec![index as u8; 10]),
        })
        .collect()
}

/// Counted with fsync on: a sync of batches that only advance the commit index makes no fsync
/// and still returns the new seq; term, vote, entries and snapshots each need one; a group with
/// one batch that needs it is fsynced once.
#[test]
fn commit_only_batches_skip_the_fsync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = WalOptions {
        fsync: true,
        ..opts(1 << 20)
    };
    let (mut wal, _, _) = open(dir.path(), &opts);
    let mut seq = 0;
    let mut step = |wal: &mut Wal, batches: Vec<WriteBatch>, fsync: bool, what: &str| {
        let before = wal.stats();
        for mut b in batches {
            seq += 1;
            b.seq = seq;
            wal.write(&b).expect("write");
        }
        assert_eq!(wal.sync().expect("sync"), seq, "{what}: durable seq");
        let after = wal.stats();
        assert_eq!(after.fsyncs - before.fsyncs, fsync as u64, "{what}: fsyncs");
        assert_eq!(
            after.fsyncs_skipped - before.fsyncs_skipped,
            !fsync as u64,
            "{what}: skipped"
        );
        assert_eq!(wal.unsynced_bytes() == 0, fsync, "{what}: unsynced bytes");
    };
    let b = |hard_state, entries| WriteBatch {
        hard_state,
        entries,
        ..Default::default()
    };
    step(
        &mut wal,
        vec![b(hs(1, Some(1), 0), entries(1, 3, 1))],
        true,
        "term, vote, entries",
    );
    step(
        &mut wal,
        vec![b(hs(1, Some(1), 2), vec![])],
        false,
        "commit only",
    );
    step(
        &mut wal,
        vec![b(hs(1, Some(1), 3), vec![]), b(hs(1, Some(1), 3), vec![])],
        false,
        "commit only, twice",
    );
    step(
        &mut wal,
        vec![b(None, entries(4, 5, 1))],
        true,
        "entries only",
    );
    step(
        &mut wal,
        vec![b(hs(1, Some(1), 4), vec![]), b(None, entries(6, 6, 1))],
        true,
        "commit, then entries",
    );
    step(&mut wal, vec![b(hs(2, Some(1), 4), vec![])], true, "term");
    step(&mut wal, vec![b(hs(2, Some(3), 4), vec![])], true, "vote");
    step(
        &mut wal,
        vec![b(hs(2, None, 4), vec![])],
        true,
        "vote cleared",
    );
    step(
        &mut wal,
        vec![b(hs(2, None, 5), vec![])],
        false,
        "commit only again",
    );
    let snapshot = WriteBatch {
        snapshot: Some(Snapshot {
            meta: SnapshotMeta {
                index: 5,
                term: 1,
                membership: Membership::with_voters([1, 2, 3]),
            },
            data: std::sync::Arc::new(vec![7; 100]),
        }),
        ..Default::default()
    };
    step(&mut wal, vec![snapshot], true, "snapshot");
    drop(wal);
    let (_, got, _) = open(dir.path(), &opts);
    assert_eq!(
        got.hard_state,
        HardState {
            term: 2,
            vote: None,
            commit: 5
        }
    );
    assert_eq!(got.last_index(), 6);
}

/// A crash after commit-only batches were synced without an fsync: whatever part of them
/// survives, the reopened hard state has the fsynced term and vote, a commit index between the
/// fsynced one and the last written one, never beyond the durable log.
#[test]
fn crash_after_commit_only_batches_keeps_term_and_vote() {
    let opts = opts(1 << 20);
    let mut setup = vec![WriteBatch {
        seq: 1,
        hard_state: hs(3, Some(2), 0),
        entries: entries(1, 10, 3),
        ..Default::default()
    }];
    for (i, commit) in [2, 5, 6, 9, 10].into_iter().enumerate() {
        setup.push(WriteBatch {
            seq: 2 + i as u64,
            hard_state: hs(3, Some(2), commit),
            ..Default::default()
        });
    }
    let probe = scratch();
    let (wal, _) = run(probe.path(), opts.clone(), &setup);
    let unsynced = wal.unsynced_bytes();
    assert!(unsynced > 0, "commit-only batches left unsynced");
    assert_eq!(wal.stats().fsyncs, 1);
    drop(wal);
    for keep in 0..=unsynced {
        let dir = scratch();
        let (wal, _) = run(dir.path(), opts.clone(), &setup);
        wal.simulate_crash(keep).expect("crash");
        let ctx = format!("crash keeping {keep} of {unsynced} unsynced bytes");
        let (_, got, _) = open(dir.path(), &opts);
        assert_eq!(
            (got.hard_state.term, got.hard_state.vote),
            (3, Some(2)),
            "{ctx}"
        );
        assert!(
            got.hard_state.commit <= 10 && got.hard_state.commit <= got.last_index(),
            "{ctx}"
        );
        assert_eq!(got.last_index(), 10, "{ctx}: entries are durable");
        assert_startable(&got, &ctx);
    }
}

/// The log and its fault hook can move to another thread (the agent syncs from a blocking task).
#[test]
fn wal_is_send() {
    fn send<T: Send + 'static>() {}
    send::<Wal>();
    send::<WalFaults>();
    send::<WalError>();
}

// ------------------------------------------------------------------------------------ missing

/// A segment missing between two others is `MissingSegment` naming it; a missing oldest segment
/// whose entries no snapshot covers is `Corrupt` saying so (also for a founding member whose only
/// snapshot is the empty one at index 0, whose marker was in that segment).
#[test]
fn missing_segments_are_errors() {
    let opts = opts(1024);
    for (seed, mix) in [
        (0x5EED_0004, Mix::NO_SNAPSHOTS),
        (
            0x5EED_0014,
            Mix {
                bootstrap: true,
                ..Mix::NO_SNAPSHOTS
            },
        ),
    ] {
        let w = workload(seed, 50, mix);
        let golden = scratch();
        let (wal, _) = run(golden.path(), opts.clone(), &w.batches);
        drop(wal);
        let segs = segments(golden.path());
        assert!(segs.len() >= 4, "several segments ({})", segs.len());

        for (seq, path) in &segs[1..segs.len() - 1] {
            let d = copy_of(golden.path());
            fs::remove_file(d.path().join("wal").join(file_name(path))).expect("remove");
            match Wal::open(d.path(), opts.clone()) {
                Err(WalError::MissingSegment {
                    dir,
                    missing,
                    before,
                    after,
                }) => {
                    assert_eq!(dir, d.path().join("wal"));
                    assert_eq!((missing, before, after), (*seq, seq - 1, seq + 1));
                }
                Err(e) => panic!("segment {seq} removed: expected MissingSegment, got {e}"),
                Ok(_) => panic!("segment {seq} removed: the log opened"),
            }
        }

        let d = copy_of(golden.path());
        fs::remove_file(d.path().join("wal").join(file_name(&segs[0].1))).expect("remove");
        let ctx = format!("oldest segment removed (bootstrap {})", mix.bootstrap);
        match Wal::open(d.path(), opts.clone()) {
            Err(WalError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains("no snapshot covers"),
                    "{ctx}: reason {reason:?}"
                );
            }
            Err(e) => panic!("{ctx}: expected Corrupt, got {e}"),
            Ok((_, s, _)) => panic!(
                "{ctx}: the log opened with snapshot {:?} and first entry {:?}",
                s.snapshot.as_ref().map(|s| s.meta.index),
                s.entries.first().map(|e| e.index)
            ),
        }

        // Every segment gone but snapshot files left: the log (term, vote) is lost, which must
        // not pass for a new node.
        if mix.bootstrap {
            let d = copy_of(golden.path());
            for (_, p) in &segs {
                fs::remove_file(d.path().join("wal").join(file_name(p))).expect("remove");
            }
            let files = snapshot_files(d.path());
            assert!(!files.is_empty());
            let reason = expect_corrupt(
                Wal::open(d.path(), opts.clone()),
                &d.path().join("wal"),
                Some(0),
                "every segment removed",
            );
            assert!(reason.contains("no record"), "reason {reason:?}");
            assert_eq!(snapshot_files(d.path()), files, "nothing deleted");
        }
    }
}

// ------------------------------------------------------------------------------------ snapshots

/// A `.tmp` snapshot left by a crash while it was being written is ignored and removed at start
/// (and reported); the previous snapshot is the one recovered.
#[test]
fn half_written_snapshot_is_ignored_and_removed() {
    let w = workload(0x5EED_0015, 60, Mix::ALL);
    let opts = opts(1024);
    let golden = scratch();
    let (wal, _) = run(golden.path(), opts.clone(), &w.batches);
    drop(wal);
    let final_model = w.models.last().expect("models");
    let snap = final_model.snapshot.as_ref().expect("a snapshot");
    assert!(
        snap.meta.index > 0,
        "a real snapshot, not the bootstrap one"
    );

    let d = copy_of(golden.path());
    let newest = snapshot_files(d.path()).pop().expect("a snapshot file");
    let bytes = fs::read(&newest).expect("read snapshot");
    let tmp = d.path().join("snap").join(format!(
        "snap-{:016x}-{:016x}.tmp",
        snap.meta.index + 7,
        snap.meta.term + 1
    ));
    fs::write(&tmp, &bytes[..bytes.len() / 2]).expect("write half a snapshot");
    let files = snapshot_files(d.path()).len();

    let (wal, got, rec) = open(d.path(), &opts);
    assert_eq!(rec.removed_temp_files, vec![tmp.clone()]);
    assert!(!tmp.exists(), "the half-written file is removed");
    assert_eq!(snapshot_files(d.path()).len(), files - 1);
    assert_state(&got, final_model, "half-written snapshot left behind");
    drop(wal);
    let (_, again, rec) = open(d.path(), &opts);
    assert!(rec.removed_temp_files.is_empty());
    assert_state(&again, final_model, "second restart");
}

// ------------------------------------------------------------------------------------ compaction

/// Snapshots let whole old segments go (fewer files, `segments_deleted` counted, at most
/// `keep_snapshots` snapshot files); the state survives any number of reopens (each starts a
/// fresh segment), and writing goes on after them.
#[test]
fn compaction_deletes_old_segments_and_reopening_keeps_the_state() {
    let w = workload(0x5EED_0006, 160, Mix::ALL);
    let opts = opts(1024);
    let dir = scratch();
    let (wal, _) = run(dir.path(), opts.clone(), &w.batches[..100]);
    let stats = wal.stats();
    assert_eq!(stats.batches, 100);
    // One sync per batch: commit-only batches skip their fsync; a rotation fsyncs what they
    // left unsynced in the segment it closes.
    let commit_only = w.commit_only_count(100);
    assert!(commit_only > 0, "the workload has commit-only batches");
    assert_eq!(stats.fsyncs_skipped, commit_only);
    assert!(
        (100 - commit_only..=100).contains(&stats.fsyncs),
        "fsyncs {stats:?}"
    );
    assert!(stats.segments_deleted > 0, "compaction ran: {stats:?}");
    let segs = segments(dir.path());
    let highest = segs.last().expect("a segment").0;
    assert!((segs.len() as u64) < highest, "fewer files than segments");
    assert_eq!(
        segs.len() as u64 + stats.segments_deleted,
        highest,
        "every segment ever created is either on disk or counted as deleted"
    );
    assert!(snapshot_files(dir.path()).len() <= 2, "keep_snapshots");
    drop(wal);

    let (mut files, mut high) = (segs.len(), highest);
    for round in 0..4 {
        let (wal, got, rec) = open(dir.path(), &opts);
        let ctx = format!("reopen {round}");
        assert_state(&got, &w.models[100], &ctx);
        assert_eq!(torn(&rec), None, "{ctx}");
        assert_eq!(rec.segments, files, "{ctx}: segments replayed");
        drop(wal);
        let now = segments(dir.path());
        assert_eq!(now.len(), files + 1, "{ctx}: a fresh segment per start");
        assert_eq!(now.last().expect("one").0, high + 1, "{ctx}: numbered next");
        files = now.len();
        high += 1;
    }

    let (mut wal, got, _) = open(dir.path(), &opts);
    assert_state(&got, &w.models[100], "before writing on");
    for b in &w.batches[100..] {
        wal.write(b).expect("write");
        assert_eq!(wal.sync().expect("sync"), b.seq);
    }
    assert!(
        wal.stats().segments_deleted > 0,
        "segments left by the reopens are compacted too: {:?}",
        wal.stats()
    );
    assert!(
        segments(dir.path()).len() < files,
        "fewer files than before"
    );
    drop(wal);
    let (_, got, rec) = open(dir.path(), &opts);
    assert_state(&got, w.models.last().expect("models"), "after writing on");
    assert_eq!(torn(&rec), None);
}

// ------------------------------------------------------------------------------------ group commit

/// Runs with fsync on, on the system temp dir. 100 written batches take one fsync; `sync`
/// returns the last batch's seq; `Storage::recover` on the live log sees only what was synced
/// (an unsynced snapshot included); then batches go one sync each through rotations and
/// compaction, and a reopen recovers the model.
#[test]
fn group_commit_and_recover_on_a_live_log_with_fsync() {
    let w = workload(0x5EED_0007, 150, Mix::ALL);
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = WalOptions {
        segment_bytes: 2048,
        fsync: true,
        keep_snapshots: 2,
        ..WalOptions::default()
    };
    let (mut wal, st, _) = open(dir.path(), &opts);
    assert_eq!(
        st,
        RecoveredState::default(),
        "an empty dir recovers nothing"
    );
    let s0 = wal.stats();
    for b in &w.batches[..100] {
        wal.write(b).expect("write");
    }
    let s1 = wal.stats();
    assert_eq!(s1.fsyncs, s0.fsyncs, "writing does not sync");
    assert_eq!(s1.batches, s0.batches + 100);
    assert!(wal.unsynced_bytes() > 0);
    assert_state(
        &Storage::recover(&wal).expect("recover"),
        &RecoveredState::default(),
        "nothing synced yet",
    );
    assert_eq!(wal.sync().expect("sync"), 100);
    let s2 = wal.stats();
    assert_eq!(s2.fsyncs, s0.fsyncs + 1, "one fsync for 100 batches");
    assert_eq!(
        s2.entries,
        w.batches[..100]
            .iter()
            .map(|b| b.entries.len() as u64)
            .sum::<u64>()
    );
    assert_eq!(wal.unsynced_bytes(), 0);
    assert_eq!(wal.sync().expect("sync"), 100, "nothing new: same seq");
    assert_eq!(wal.stats().fsyncs, s2.fsyncs, "nothing new: no fsync");
    assert_state(
        &Storage::recover(&wal).expect("recover"),
        &w.models[100],
        "after the group commit",
    );

    // Written but unsynced batches, a snapshot among them, are not durable state.
    let snap = *w
        .snapshot_batches()
        .iter()
        .find(|&&i| i >= 103)
        .expect("a snapshot batch after 103");
    for b in &w.batches[100..=snap] {
        wal.write(b).expect("write");
    }
    assert_state(
        &Storage::recover(&wal).expect("recover"),
        &w.models[100],
        "unsynced batches (with a snapshot) on a live log",
    );
    assert_eq!(wal.sync().expect("sync"), snap as u64 + 1);
    assert_eq!(wal.stats().fsyncs, s2.fsyncs + 1);
    assert_state(
        &Storage::recover(&wal).expect("recover"),
        &w.models[snap + 1],
        "second group",
    );

    let s3 = wal.stats();
    for b in &w.batches[snap + 1..] {
        wal.write(b).expect("write");
        assert_eq!(wal.sync().expect("sync"), b.seq);
    }
    let n = w.batches.len();
    // One fsync per batch, except that commit-only batches skip theirs (a rotation may fsync
    // what they left unsynced).
    let s4 = wal.stats();
    let commit_only = (snap + 1..n).filter(|&i| w.commit_only(i)).count() as u64;
    let must = (n - snap - 1) as u64 - commit_only;
    assert_eq!(s4.fsyncs_skipped - s3.fsyncs_skipped, commit_only);
    assert!(
        (must..=must + commit_only).contains(&(s4.fsyncs - s3.fsyncs)),
        "{s3:?} then {s4:?}"
    );
    assert_state(
        &Storage::recover(&wal).expect("recover"),
        &w.models[n],
        "all synced",
    );
    let highest = segments(dir.path()).last().expect("a segment").0;
    assert!(highest >= 3, "segments rotated ({highest})");
    drop(wal);
    let (_, got, rec) = open(dir.path(), &opts);
    assert_state(&got, &w.models[n], "reopened");
    assert_eq!(torn(&rec), None);
    assert_startable(&got, "reopened");
}

// ------------------------------------------------------------------------------------ cluster

/// A state machine: every applied command with its index. Snapshots are its encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sm {
    applied: u64,
    cmds: Vec<(u64, Vec<u8>)>,
}

impl Sm {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.applied.to_le_bytes());
        for (i, d) in &self.cmds {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(&(d.len() as u32).to_le_bytes());
            b.extend_from_slice(d);
        }
        b
    }

    fn decode(b: &[u8]) -> Sm {
        if b.is_empty() {
            return Sm::default();
        }
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().expect("8 bytes"));
        let mut sm = Sm {
            applied: u64_at(0),
            cmds: Vec::new(),
        };
        let mut p = 8;
        while p < b.len() {
            let i = u64_at(p);
            let len = u32::from_le_bytes(b[p + 8..p + 12].try_into().expect("4 bytes")) as usize;
            sm.cmds.push((i, b[p + 12..p + 12 + len].to_vec()));
            p += 12 + len;
        }
        sm
    }
}

struct Host {
    node: RaftNode,
    wal: Wal,
    sm: Sm,
}

/// Three nodes, each on a `Wal` in its own directory, driven deterministically: FIFO delivery,
/// every Persist written and synced at once and then reported with `on_persisted`.
struct DiskCluster {
    ids: Vec<NodeId>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    hosts: BTreeMap<NodeId, Host>,
    queue: VecDeque<Message>,
    isolated: BTreeSet<NodeId>,
    /// Every entry any state machine applied, by index (all must agree).
    committed: BTreeMap<u64, Entry>,
    opts: WalOptions,
}

fn cluster_config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_tick = 10;
    c.heartbeat_tick = 1;
    c.snapshot_threshold = 45;
    // A few trailing entries stay on disk past each snapshot (and survive restarts); the node
    // cut off for 90 commands is still behind them and needs a snapshot.
    c.snapshot_trailing = 10;
    c.snapshot_chunk_size = 512;
    c
}

impl DiskCluster {
    /// Founding members: each writes the bootstrap state to an empty log first.
    fn new(ids: &[NodeId]) -> Self {
        let mut c = DiskCluster {
            ids: ids.to_vec(),
            dirs: BTreeMap::new(),
            hosts: BTreeMap::new(),
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            committed: BTreeMap::new(),
            opts: opts(2048),
        };
        let boot = RecoveredState::bootstrap(ids.iter().copied());
        for &id in ids {
            let dir = scratch();
            let (mut wal, st, _) = open(dir.path(), &c.opts);
            assert_eq!(st, RecoveredState::default(), "node {id}: empty dir");
            wal.write(&WriteBatch {
                seq: 0,
                snapshot: boot.snapshot.clone(),
                reset_log: true,
                hard_state: Some(HardState::default()),
                ..Default::default()
            })
            .expect("write bootstrap");
            assert_eq!(wal.sync().expect("sync bootstrap"), 0);
            drop(wal);
            c.dirs.insert(id, dir);
            let st = c.start(id);
            assert_state(&st, &boot, &format!("node {id}: bootstrap round trip"));
        }
        c
    }

    /// Opens node `id`'s log and starts its core from what it recovered; returns that state.
    fn start(&mut self, id: NodeId) -> RecoveredState {
        let (wal, st, rec) = open(self.dirs[&id].path(), &self.opts);
        assert_eq!(torn(&rec), None, "node {id}: clean shutdown");
        let node = RaftNode::new(cluster_config(id), st.clone()).expect("node starts");
        self.hosts.insert(
            id,
            Host {
                node,
                wal,
                sm: Sm::default(),
            },
        );
        self.process(id);
        st
    }

    fn process(&mut self, id: NodeId) {
        loop {
            let host = self.hosts.get_mut(&id).expect("host");
            let effects = host.node.take_effects();
            if effects.is_empty() {
                return;
            }
            for e in effects {
                match e {
                    Effect::Send(m) => self.queue.push_back(m),
                    Effect::Persist(b) => {
                        host.wal.write(&b).expect("write");
                        let seq = host.wal.sync().expect("sync");
                        assert_eq!(seq, b.seq, "node {id}: sync returns the batch seq");
                        host.node.on_persisted(seq);
                    }
                    Effect::Apply(entries) => {
                        for e in entries {
                            assert_eq!(e.index, host.sm.applied + 1, "node {id}: apply order");
                            host.sm.applied = e.index;
                            if let Payload::Command(d) = &e.payload {
                                host.sm.cmds.push((e.index, d.clone()));
                            }
                            match self.committed.get(&e.index) {
                                Some(c) => assert_eq!(c, &e, "node {id}: state machine safety"),
                                None => {
                                    self.committed.insert(e.index, e);
                                }
                            }
                        }
                    }
                    Effect::InstallSnapshot(s) => {
                        host.sm = Sm::decode(&s.data);
                        assert_eq!(host.sm.applied, s.meta.index, "node {id}: snapshot");
                    }
                    Effect::SnapshotWanted { .. } => {
                        assert_eq!(host.sm.applied, host.node.applied_index());
                        if host.sm.applied > host.node.snapshot_index() {
                            host.node
                                .snapshot_taken(host.sm.applied, host.sm.encode())
                                .expect("snapshot taken");
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn deliver_all(&mut self) {
        let mut n = 0;
        while let Some(m) = self.queue.pop_front() {
            n += 1;
            assert!(n < 1_000_000, "delivery did not quiesce");
            if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
                continue;
            }
            let to = m.to;
            if let Some(h) = self.hosts.get_mut(&to) {
                let _ = h.node.step(m);
                self.process(to);
            }
        }
    }

    fn tick_all(&mut self) {
        for id in self.ids.clone() {
            self.hosts.get_mut(&id).expect("host").node.tick();
            self.process(id);
        }
        self.deliver_all();
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.hosts[&id].node
    }

    /// Ticks until a leader is known by every connected node.
    fn wait_leader(&mut self) -> NodeId {
        for _ in 0..500 {
            let leader = self
                .ids
                .iter()
                .copied()
                .filter(|&id| self.node(id).role() == Role::Leader)
                .max_by_key(|&id| self.node(id).term());
            if let Some(l) = leader {
                let all = self
                    .ids
                    .iter()
                    .filter(|id| !self.isolated.contains(id))
                    .all(|&id| self.node(id).leader() == Some(l));
                if all && !self.isolated.contains(&l) {
                    return l;
                }
            }
            self.tick_all();
        }
        panic!("no leader elected");
    }

    fn propose(&mut self, data: Vec<u8>) {
        for _ in 0..100 {
            let l = self.wait_leader();
            let r = self
                .hosts
                .get_mut(&l)
                .expect("host")
                .node
                .propose(data.clone());
            self.process(l);
            if r.is_ok() {
                return;
            }
            self.tick_all();
        }
        panic!("proposal refused again and again");
    }

    /// Drops every node and log (the cluster must be settled), reopens each log and starts each
    /// node from what it recovered. Checks that each recovered log holds or covers (by its
    /// snapshot) every committed entry, and that the state machine rebuilt from InstallSnapshot
    /// and Apply equals the one before. Returns the commit index and leader term before.
    fn restart_all(&mut self) -> (u64, u64) {
        let leader = self.settle();
        let commit = self.node(leader).commit_index();
        let term = self.node(leader).term();
        assert_eq!(
            self.committed.len() as u64,
            commit,
            "applied entries 1..=commit"
        );
        let before: BTreeMap<NodeId, Sm> = self
            .ids
            .iter()
            .map(|&id| (id, self.hosts[&id].sm.clone()))
            .collect();
        self.hosts.clear();
        self.queue.clear();
        for id in self.ids.clone() {
            let st = self.start(id);
            let snap = st.snapshot.as_ref().expect("a snapshot");
            assert!(snap.meta.index > 0, "node {id}: a real snapshot");
            assert!(
                !st.entries.is_empty(),
                "node {id}: a log after the snapshot"
            );
            assert_eq!(st.last_index(), commit, "node {id}: durable log");
            assert_eq!(st.hard_state.commit, commit, "node {id}: durable commit");
            assert!(st.hard_state.term >= term, "node {id}: durable term");
            let snap_sm = Sm::decode(&snap.data);
            assert_eq!(snap_sm.applied, snap.meta.index);
            for (i, e) in &self.committed {
                if *i <= snap.meta.index {
                    if let Payload::Command(d) = &e.payload {
                        assert!(
                            snap_sm.cmds.contains(&(*i, d.clone())),
                            "node {id}: committed entry {i} is in the snapshot"
                        );
                    }
                } else {
                    // Trailing entries may precede the snapshot's index: look up by index.
                    let got = st.entries.iter().find(|x| x.index == *i);
                    assert_eq!(got, Some(e), "node {id}: committed entry {i} is in the log");
                }
            }
            assert_eq!(
                self.hosts[&id].sm, before[&id],
                "node {id}: state machine rebuilt"
            );
        }
        (commit, term)
    }

    /// Ticks until every node has applied everything the leader committed.
    fn settle(&mut self) -> NodeId {
        for _ in 0..300 {
            let l = self.wait_leader();
            let (commit, last) = (self.node(l).commit_index(), self.node(l).last_index());
            let done = commit == last
                && self.ids.iter().all(|&id| {
                    let n = self.node(id);
                    n.commit_index() == commit && n.applied_index() == commit
                });
            if done {
                return l;
            }
            self.tick_all();
        }
        panic!("the cluster did not settle");
    }
}

fn command(i: u64, rng: &mut Rng) -> Vec<u8> {
    let mut d = format!("cmd{i:05}-").into_bytes();
    let extra = rng.below(24) as usize;
    d.extend(rng.bytes(extra));
    d
}

/// Three nodes on real logs elect a leader and commit 200 commands (one node cut off for a
/// while, so it catches up by a snapshot; snapshots compact every log). Then every node and log
/// is dropped and reopened from disk: each recovered log holds or covers every committed entry,
/// the state machines rebuilt from InstallSnapshot + Apply equal the ones before, a leader is
/// elected again and new commands commit on top.
#[test]
fn cluster_restarts_from_disk() {
    let ids = [1, 2, 3];
    let mut c = DiskCluster::new(&ids);
    let mut rng = Rng::new(0xC1A5_7E12);
    let leader = c.wait_leader();
    let lagging = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let mut cmds = Vec::new();
    for i in 0..200u64 {
        if i == 60 {
            c.isolated.insert(lagging);
        }
        if i == 150 {
            c.isolated.clear();
        }
        let d = command(i, &mut rng);
        cmds.push(d.clone());
        c.propose(d);
        if i % 4 == 3 {
            c.deliver_all();
        }
        if i % 10 == 9 {
            c.tick_all();
        }
    }
    let leader = c.settle();

    // Everything committed exactly once, in order, everywhere.
    let before: BTreeMap<NodeId, Sm> = ids
        .iter()
        .map(|&id| (id, c.hosts[&id].sm.clone()))
        .collect();
    for (id, sm) in &before {
        let applied: Vec<Vec<u8>> = sm.cmds.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(
            applied, cmds,
            "node {id}: every command applied once, in order"
        );
        assert_eq!(
            sm, &before[&leader],
            "node {id}: same state machine as the leader"
        );
    }
    assert!(
        c.node(lagging).stats().snapshots_installed > 0,
        "the lagging node caught up by a snapshot"
    );
    for &id in &ids {
        let st = c.hosts[&id].wal.stats();
        assert!(c.node(id).snapshot_index() > 0, "node {id} snapshotted");
        assert!(
            st.segments_deleted > 0,
            "node {id}: compaction ran ({st:?})"
        );
        let segs = segments(c.dirs[&id].path());
        assert!(
            (segs.len() as u64) < segs.last().expect("one").0,
            "node {id}: old segments deleted"
        );
    }
    // Stop everything and start again from the data directories.
    let (commit, term) = c.restart_all();
    let leader = c.wait_leader();
    assert!(
        c.node(leader).term() > term,
        "a new election after the restart"
    );
    for i in 200..230u64 {
        let d = command(i, &mut rng);
        cmds.push(d.clone());
        c.propose(d);
        if i % 3 == 2 {
            c.deliver_all();
        }
    }
    let leader = c.settle();
    assert!(c.node(leader).commit_index() > commit);
    for &id in &ids {
        let applied: Vec<Vec<u8>> = c.hosts[&id]
            .sm
            .cmds
            .iter()
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(applied, cmds, "node {id}: old and new commands, in order");
    }

    // And once more, now that every log has segments from two lives.
    let (_, term) = c.restart_all();
    let leader = c.wait_leader();
    assert!(c.node(leader).term() > term);
    let d = command(230, &mut rng);
    cmds.push(d.clone());
    c.propose(d);
    c.settle();
    for &id in &ids {
        let applied: Vec<Vec<u8>> = c.hosts[&id]
            .sm
            .cmds
            .iter()
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(applied, cmds, "node {id}: after the second restart");
    }
}
