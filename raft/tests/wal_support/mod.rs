//! Helpers for the write-ahead-log tests (`tests/wal.rs`): a seeded splitmix64, a workload
//! generator that keeps the model durable state (`RecoveredState::apply`) after every batch,
//! file utilities (scratch directories, copies, segment listing, record boundaries) and a state
//! comparison that says where two states differ.
//!
//! Nothing here reads a clock or an OS random source: every run is the same.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_raft::wal::{Recovery, Wal, WalOptions};
use shoal_raft::{
    Entry, HardState, LogIndex, Membership, Payload, RecoveredState, Snapshot, SnapshotMeta,
    Storage, Term, WriteBatch,
};

/// Length of a segment header (magic, version, segment number, CRC32C).
pub const SEGMENT_HEADER: usize = 24;
/// Length of a record header (`[len: u32][crc32c: u32]`).
pub const RECORD_HEADER: usize = 8;
/// Length of a record trailer (the checksum inverted).
pub const RECORD_TRAILER: usize = 4;

// ------------------------------------------------------------------------------------ random

/// splitmix64: tiny, seeded, deterministic.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6A09_E667_F3BC_C908)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "empty range");
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

// ------------------------------------------------------------------------------------ workloads

/// What a generated workload may contain besides plain appends and hard-state changes.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Batch 1 writes the founding snapshot at index 0 (as a founding member's driver does).
    pub bootstrap: bool,
    /// Percentage of the chances for a snapshot that are taken: leader-style snapshots (at an
    /// existing index, log kept after it) and follower-style installs (beyond the log or at a
    /// conflicting entry, with a new term, log reset). 0 means none.
    pub snapshots: u64,
    /// Conflict truncations: a suffix above the snapshot and commit points rewritten with a
    /// higher term.
    pub truncations: bool,
}

impl Mix {
    /// Everything.
    pub const ALL: Mix = Mix {
        bootstrap: true,
        snapshots: 100,
        truncations: true,
    };
    /// Appends, truncations and hard states only: no snapshot file is ever written.
    pub const NO_SNAPSHOTS: Mix = Mix {
        bootstrap: false,
        snapshots: 0,
        truncations: true,
    };
}

/// A sequence of batches (seq 1, 2, ...) and the model durable state after each prefix:
/// `models[k]` is the state once batches `1..=k` are durable (`models[0]` is empty).
pub struct Workload {
    /// The batches; `batches[i].seq == i + 1`.
    pub batches: Vec<WriteBatch>,
    /// `models[k]`: the durable state after the first `k` batches.
    pub models: Vec<RecoveredState>,
}

impl Workload {
    /// Batch `i` (0-based) only advances the commit index: its sync needs no fsync.
    pub fn commit_only(&self, i: usize) -> bool {
        !self.batches[i].must_sync(self.models[i].hard_state)
    }

    /// How many of the first `n` batches are commit-only.
    pub fn commit_only_count(&self, n: usize) -> u64 {
        (0..n).filter(|&i| self.commit_only(i)).count() as u64
    }

    /// Index (0-based) of every batch carrying a snapshot.
    pub fn snapshot_batches(&self) -> Vec<usize> {
        (0..self.batches.len())
            .filter(|&i| self.batches[i].snapshot.is_some())
            .collect()
    }
}

fn random_membership(rng: &mut Rng) -> Membership {
    let mut m = Membership::default();
    for id in 1..=5 {
        if rng.chance(60) {
            m.voters.insert(id);
        } else if rng.chance(30) {
            m.learners.insert(id);
        }
    }
    if m.voters.is_empty() {
        m.voters.insert(1);
    }
    if rng.chance(20) {
        m.outgoing.insert(rng.range(1, 7));
        m.outgoing.insert(rng.range(1, 7));
    }
    m
}

fn random_payload(rng: &mut Rng) -> Payload {
    match rng.below(10) {
        0 => Payload::Noop,
        1 => Payload::Config(random_membership(rng)),
        _ => {
            let len = rng.below(41) as usize;
            Payload::Command(rng.bytes(len))
        }
    }
}

fn random_vote(rng: &mut Rng) -> Option<u64> {
    if rng.chance(30) {
        None
    } else {
        Some(rng.range(1, 3))
    }
}

fn snapshot(rng: &mut Rng, index: LogIndex, term: Term) -> Snapshot {
    let len = rng.below(301) as usize;
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            membership: random_membership(rng),
        },
        data: Arc::new(rng.bytes(len)),
    }
}

fn snapshot_index(s: &RecoveredState) -> LogIndex {
    s.snapshot.as_ref().map_or(0, |s| s.meta.index)
}

fn term_at(s: &RecoveredState, index: LogIndex) -> Term {
    let base = snapshot_index(s);
    if index == base {
        return s.snapshot.as_ref().map_or(0, |s| s.meta.term);
    }
    let e = &s.entries[(index - base - 1) as usize];
    assert_eq!(e.index, index, "model log is not consecutive");
    e.term
}

/// `min..=max` random entries following index `after`, in `term`.
fn append(rng: &mut Rng, after: LogIndex, term: Term, min: u64, max: u64) -> Vec<Entry> {
    let n = rng.range(min, max);
    (1..=n)
        .map(|i| Entry {
            term,
            index: after + i,
            payload: random_payload(rng),
        })
        .collect()
}

/// Generates `n` batches. Every model state is one a Raft node could hold: consecutive entries,
/// terms never decreasing along the log nor above the hard state's term, commit at most the last
/// index and never decreasing, truncations only above the commit and snapshot points, snapshot
/// indices strictly growing.
pub fn workload(seed: u64, n: usize, mix: Mix) -> Workload {
    let mut rng = Rng::new(seed);
    let mut model = RecoveredState::default();
    let mut batches = Vec::with_capacity(n);
    let mut models = vec![model.clone()];
    for seq in 1..=n as u64 {
        let hs = model.hard_state;
        let last = model.last_index();
        let snap = snapshot_index(&model);
        let mut b = WriteBatch {
            seq,
            ..Default::default()
        };
        let roll = rng.below(100);
        if seq == 1 && mix.bootstrap {
            let boot = RecoveredState::bootstrap([1, 2, 3]);
            b.snapshot = boot.snapshot;
            b.reset_log = true;
            b.hard_state = Some(HardState::default());
        } else if hs.term == 0 || roll < 40 {
            // Append 1-5 entries in the current term (starting a term first if there is none).
            let mut term = hs.term;
            let mut new_hs = None;
            if term == 0 || rng.chance(5) {
                term += 1;
                new_hs = Some(HardState {
                    term,
                    vote: random_vote(&mut rng),
                    commit: hs.commit,
                });
            }
            b.entries = append(&mut rng, last, term, 1, 5);
            let new_last = last + b.entries.len() as u64;
            if rng.chance(50) {
                let mut h = new_hs.unwrap_or(hs);
                h.commit = rng.range(hs.commit, new_last);
                new_hs = Some(h);
            }
            b.hard_state = new_hs;
        } else if roll < 52 && mix.truncations && hs.commit.max(snap) < last {
            // A new leader's entries replace a suffix above the commit and snapshot points.
            let from = rng.range(hs.commit.max(snap) + 1, last);
            let term = hs.term + 1;
            b.entries = append(&mut rng, from - 1, term, 1, 5);
            b.hard_state = Some(HardState {
                term,
                vote: random_vote(&mut rng),
                commit: hs.commit,
            });
        } else if roll < 66 {
            // Hard state only: a term change (with or without a vote) or a commit advance.
            let mut h = hs;
            if hs.commit < last && rng.chance(60) {
                h.commit = rng.range(hs.commit + 1, last);
            } else if rng.chance(50) {
                h.term += 1;
                h.vote = random_vote(&mut rng);
            } else {
                h.vote = random_vote(&mut rng);
            }
            b.hard_state = Some(h);
        } else if roll < 80 && hs.commit > snap && rng.chance(mix.snapshots) {
            // Leader-style: the application snapshotted an applied (committed) index; the log
            // after it is kept. Appends may ride in the same batch.
            let index = rng.range(snap + 1, hs.commit);
            b.snapshot = Some(snapshot(&mut rng, index, term_at(&model, index)));
            if rng.chance(30) {
                b.entries = append(&mut rng, last, hs.term, 1, 3);
            }
            if rng.chance(30) {
                b.hard_state = Some(HardState {
                    commit: hs.commit.max(index),
                    ..hs
                });
            }
        } else if roll < 90 && rng.chance(mix.snapshots) {
            // Follower-style install from a leader of a newer term: at an index beyond the log,
            // or at an uncommitted index whose entry has another term. The log is reset.
            let term = hs.term + 1;
            let index = if hs.commit.max(snap) < last && rng.chance(35) {
                rng.range(hs.commit.max(snap) + 1, last)
            } else {
                last + rng.range(1, 20)
            };
            b.snapshot = Some(snapshot(&mut rng, index, term));
            b.reset_log = true;
            if rng.chance(40) {
                b.entries = append(&mut rng, index, term, 1, 4);
            }
            b.hard_state = Some(HardState {
                term,
                vote: if rng.chance(50) { None } else { Some(2) },
                commit: index,
            });
        } else {
            // A bigger append in the current term.
            b.entries = append(&mut rng, last, hs.term, 3, 5);
            if rng.chance(40) {
                b.hard_state = Some(HardState {
                    commit: rng.range(hs.commit, last + b.entries.len() as u64),
                    ..hs
                });
            }
        }
        model.apply(&b);
        check_model(&model);
        models.push(model.clone());
        batches.push(b);
    }
    Workload { batches, models }
}

/// Asserts the generator's own invariants (a bug here would make every other check moot).
fn check_model(m: &RecoveredState) {
    let base = snapshot_index(m);
    let mut t = m.snapshot.as_ref().map_or(0, |s| s.meta.term);
    for (i, e) in m.entries.iter().enumerate() {
        assert_eq!(e.index, base + 1 + i as u64, "model log not consecutive");
        assert!(e.term >= t, "model terms go backwards");
        t = e.term;
    }
    assert!(t <= m.hard_state.term, "model log term above hard state");
    assert!(
        m.hard_state.commit <= m.last_index(),
        "model commit past log"
    );
}

// ------------------------------------------------------------------------------------ files

/// Options for the big matrices: no fsync (crashes are modelled by the tests), tiny segments.
pub fn opts(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        fsync: false,
        keep_snapshots: 2,
        ..WalOptions::default()
    }
}

/// A scratch directory on tmpfs when there is one (the matrices open thousands of logs and
/// `Wal::open` always fsyncs), else in the system temp dir. Removed on drop.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("shoal-wal-test-");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return d;
        }
    }
    builder.tempdir().expect("create a temp dir")
}

/// Copies a data directory (`wal/` and `snap/` with their files) into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("create copy dir");
    for entry in fs::read_dir(src).expect("list dir") {
        let entry = entry.expect("dir entry");
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&from, &to);
        } else {
            fs::copy(&from, &to).expect("copy file");
        }
    }
}

/// A fresh scratch copy of data directory `src`.
pub fn copy_of(src: &Path) -> tempfile::TempDir {
    let d = scratch();
    copy_dir(src, d.path());
    d
}

/// Segment files of a data directory, by segment number.
pub fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir.join("wal"))
        .expect("list wal dir")
        .filter_map(|e| {
            let p = e.expect("dir entry").path();
            let name = p.file_name()?.to_str()?.to_string();
            let seq = u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()?;
            Some((seq, p))
        })
        .collect();
    out.sort();
    out
}

/// The newest segment file and its length.
pub fn last_segment(dir: &Path) -> (PathBuf, u64) {
    let (_, p) = segments(dir).pop().expect("a segment");
    let len = fs::metadata(&p).expect("stat segment").len();
    (p, len)
}

/// Every file in `snap/`, sorted by name (`snap-<index>-<term>` sorts by index, then term).
pub fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir.join("snap"))
        .expect("list snap dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    out.sort();
    out
}

/// `(start, end)` of every complete record of a segment's bytes, per the documented format
/// (`[len][crc][payload][!crc]`). Panics if the bytes after the header are not a whole number of
/// records.
pub fn records(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER;
    while off < buf.len() {
        assert!(off + RECORD_HEADER <= buf.len(), "partial record header");
        let len = u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let end = off + RECORD_HEADER + len + RECORD_TRAILER;
        assert!(end <= buf.len(), "record runs past the end");
        out.push((off, end));
        off = end;
    }
    out
}

/// Where each batch of a run ended up: `(segment file name, end offset of its record, segments
/// deleted by compaction so far, bytes not fsynced after its sync)`. The last is non-zero after
/// commit-only batches, whose sync skips the fsync.
pub type Placement = Vec<(String, u64, u64, usize)>;

/// Opens a log in `dir` (which must be empty), writes and syncs every batch one at a time and
/// returns the open log with where each batch's record ended.
pub fn run(dir: &Path, opts: WalOptions, batches: &[WriteBatch]) -> (Wal, Placement) {
    let (mut wal, state, _) = Wal::open(dir, opts).expect("open an empty dir");
    assert_eq!(
        state,
        RecoveredState::default(),
        "a new dir recovers nothing"
    );
    let mut placement = Vec::with_capacity(batches.len());
    for b in batches {
        wal.write(b).expect("write");
        assert_eq!(wal.sync().expect("sync"), b.seq);
        let (p, len) = last_segment(dir);
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        placement.push((
            name,
            len,
            wal.stats().segments_deleted,
            wal.unsynced_bytes(),
        ));
    }
    (wal, placement)
}

/// Flips bits of the byte at `pos` of file `path` (`mask` must be non-zero).
pub fn flip(path: &Path, pos: usize, mask: u8) {
    assert_ne!(mask, 0);
    let mut b = fs::read(path).expect("read file to flip");
    b[pos] ^= mask;
    fs::write(path, b).expect("write flipped file");
}

// ------------------------------------------------------------------------------------ checks

/// The torn tail of a recovery report as `(segment file, offset, bytes removed)`.
pub fn torn(rec: &Recovery) -> Option<(PathBuf, u64, u64)> {
    rec.torn_tail
        .as_ref()
        .map(|t| (t.path.clone(), t.offset, t.bytes))
}

/// Asserts `got == want`, field by field, saying where they differ.
pub fn assert_state(got: &RecoveredState, want: &RecoveredState, ctx: &str) {
    assert_eq!(got.hard_state, want.hard_state, "{ctx}: hard state differs");
    match (&got.snapshot, &want.snapshot) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            assert_eq!(g.meta, w.meta, "{ctx}: snapshot meta differs");
            assert!(g.data == w.data, "{ctx}: snapshot data differs");
        }
        (g, w) => panic!(
            "{ctx}: snapshot {:?} recovered, {:?} expected",
            g.as_ref().map(|s| &s.meta),
            w.as_ref().map(|s| &s.meta)
        ),
    }
    if got.entries != want.entries {
        let ids = |s: &RecoveredState| -> Vec<(u64, u64)> {
            s.entries.iter().map(|e| (e.index, e.term)).collect()
        };
        let (g, w) = (ids(got), ids(want));
        let first = g.iter().zip(&w).position(|(a, b)| a != b);
        panic!(
            "{ctx}: entries differ (first difference at position {first:?}); \
             recovered (index, term) {g:?}, expected {w:?}"
        );
    }
}
