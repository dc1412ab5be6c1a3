//! The durable log: a write-ahead log in segment files plus snapshot files, implementing
//! [`Storage`]. This module does file I/O; the Raft core never calls it (the driver does).
//!
//! Layout of a data directory:
//! - `wal/<seq:016x>.wal`: segments. Each starts with a 24-byte header (magic, format version,
//!   segment number, CRC32C) and then holds records `[len: u32][crc: u32][payload][!crc: u32]`:
//!   `crc` is the CRC32C of the payload followed by the length, so a damaged length is caught
//!   too, and the trailer (the checksum inverted) proves that the record's end was written. One
//!   record is one [`WriteBatch`], so a batch is recovered whole or not at all. Every segment's
//!   first record repeats the hard state, so deleting old segments never loses it.
//! - `snap/snap-<index:016x>-<term:016x>.snap`: snapshots, written to a `.tmp` file, fsynced,
//!   renamed, and the directory fsynced, before the record carrying their marker; a `.tmp` left
//!   by a crash is ignored and removed. The snapshot in use is the one the last durable marker
//!   names; a newer file (its batch was lost in a crash) is ignored and removed too.
//!
//! Replay semantics are those of [`RecoveredState::apply`]: an entry at index `i` replaces every
//! entry from `i` on (conflict truncation never rewrites a segment); a snapshot marker drops the
//! entries it covers, only up to its `compact_to` index if it has one (or the whole log if the
//! log does not contain its last entry). After a snapshot is durable, segments holding only
//! entries below its compaction point are deleted whole.
//!
//! Recovery: a record is valid when its checksum matches (a damaged trailer alone loses nothing
//! and is tolerated). Only what an interrupted write can leave at the end of the last segment is
//! a torn tail, truncated and reported in [`Recovery::torn_tail`]: a partial record, zeros to
//! the end of the file, or a last record whose end is zeros. A record that was written whole
//! (its trailer is intact, or a valid record with a different length is there) but does not
//! check, a bad record followed by more data, a bad record in any other segment, a missing
//! segment or an unreadable header is an error naming the file and offset. Nothing is dropped
//! silently. Segments of format version 1 (checksum without the length) are refused.
//!
//! Encryption at rest: with a [`Keyring`] in [`WalOptions::keys`], segments are written in
//! format version 3, whose record payloads are sealed ([`crate::seal`]), and snapshots in
//! version 2, whose data is sealed (the header, index, term and membership stay readable). Each
//! segment and snapshot is sealed under one data key, named in its header; [`Wal::set_keys`]
//! rotates to a new key (a new segment at once, the next snapshot under it), and
//! [`Wal::key_ids_in_use`] says which old keys are still needed. Plaintext files are still read,
//! so a log becomes encrypted as compaction removes its old segments.
//!
//! Durability: `sync` fsyncs only when a batch written since the last fsync needs it
//! ([`WriteBatch::must_sync`]); commit-only batches are written without one. A failed write or
//! fsync poisons the log: every later `write` and `sync` fails (an fsync is never retried, the
//! kernel may have dropped the dirty pages). [`WalFaults`] injects such failures in tests.

use crate::seal::Keyring;
use crate::storage::{RecoveredState, Storage, WriteBatch};
use crate::types::{Entry, HardState, LogIndex, Membership, Payload, Snapshot, SnapshotMeta, Term};
use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const SEGMENT_MAGIC: &[u8; 8] = b"SHOALWAL";
const SNAPSHOT_MAGIC: &[u8; 8] = b"SHOALSNP";
/// Segment format: 2 since the record checksum covers the length and records carry a trailer.
const SEGMENT_VERSION: u32 = 2;
/// Version 2 with sealed record payloads; the header is followed by the data key's id.
const SEALED_SEGMENT_VERSION: u32 = 3;
const SNAPSHOT_VERSION: u32 = 1;
/// Version 1 with the data sealed; the version is followed by the data key's id.
const SEALED_SNAPSHOT_VERSION: u32 = 2;
/// What a sealed record is bound to (a blob of another kind does not open as one).
const RECORD_AAD: &[u8] = b"shoal wal record";
const HEADER_LEN: usize = 24;
const RECORD_HEADER: usize = 8;
const RECORD_TRAILER: usize = 4;
/// Largest record accepted (a batch); anything larger in a file is corruption.
pub const MAX_RECORD: usize = 256 << 20;

/// Errors of the write-ahead log; every one names the file (and offset) involved.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file's content is not what was written: refuse to start rather than lose data silently.
    #[error("corrupt {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment between two others is missing.
    #[error("missing WAL segment {missing:016x}.wal in {dir} (segments jump from {before:016x} to {after:016x})")]
    MissingSegment {
        /// The wal directory.
        dir: PathBuf,
        /// The first missing segment number.
        missing: u64,
        /// The segment before the gap.
        before: u64,
        /// The segment after the gap.
        after: u64,
    },
    /// A batch too large to be one record.
    #[error("batch of {0} bytes exceeds the record limit of {MAX_RECORD} bytes")]
    TooLarge(usize),
    /// A record or snapshot could not be sealed (the system's random source failed).
    #[error("cannot encrypt: {0}")]
    Seal(String),
    /// An earlier write or fsync failed: the log accepts nothing more (what reached the disk is
    /// unknown, and an fsync must not be retried). Reopen the directory to recover.
    #[error(
        "the WAL refuses writes after an earlier failure ({first}); restart to recover from disk"
    )]
    Poisoned {
        /// The first failure, as it was reported.
        first: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Failure injection, a hook for tests and simulations only: makes the log's next write or
/// fsync fail, or the disk fill up, deterministically. Clones share the same switches, so a test
/// keeps one and passes another in [`WalOptions::faults`]. The default injects nothing.
#[derive(Clone, Debug)]
pub struct WalFaults(Arc<FaultSwitches>);

#[derive(Debug)]
struct FaultSwitches {
    fail_next_write: AtomicBool,
    fail_next_fsync: AtomicBool,
    /// Bytes that may still be written before writes fail with ENOSPC; `u64::MAX`: no limit.
    space_left: AtomicU64,
}

impl Default for WalFaults {
    fn default() -> Self {
        WalFaults(Arc::new(FaultSwitches {
            fail_next_write: AtomicBool::new(false),
            fail_next_fsync: AtomicBool::new(false),
            space_left: AtomicU64::new(u64::MAX),
        }))
    }
}

impl WalFaults {
    /// The next write to a log or snapshot file fails (EIO) without writing anything.
    pub fn fail_next_write(&self) {
        self.0.fail_next_write.store(true, Ordering::SeqCst);
    }

    /// The next fsync (of a file or directory, also where `WalOptions::fsync` is off) fails
    /// (EIO), as after a disk error: the log then acts as if the kernel dropped its dirty pages.
    pub fn fail_next_fsync(&self) {
        self.0.fail_next_fsync.store(true, Ordering::SeqCst);
    }

    /// The disk fills up after `bytes` more bytes: the write crossing the limit lands partially
    /// and then fails with ENOSPC, as would every later one.
    pub fn disk_full_after(&self, bytes: u64) {
        self.0.space_left.store(bytes, Ordering::SeqCst);
    }

    /// Space is back: no write limit any more.
    pub fn disk_space_freed(&self) {
        self.0.space_left.store(u64::MAX, Ordering::SeqCst);
    }

    /// How many of `want` bytes may be written now (charging them), or the error to report.
    fn admit_write(&self, want: usize) -> (usize, Option<std::io::Error>) {
        if self.0.fail_next_write.swap(false, Ordering::SeqCst) {
            return (0, Some(injected("injected write failure")));
        }
        let mut left = self.0.space_left.load(Ordering::SeqCst);
        loop {
            if left == u64::MAX {
                return (want, None);
            }
            let n = left.min(want as u64);
            match self.0.space_left.compare_exchange(
                left,
                left - n,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) if n == want as u64 => return (want, None),
                Ok(_) => {
                    return (
                        n as usize,
                        Some(std::io::Error::from_raw_os_error(28 /* ENOSPC */)),
                    );
                }
                Err(now) => left = now,
            }
        }
    }

    fn admit_fsync(&self) -> Result<(), std::io::Error> {
        if self.0.fail_next_fsync.swap(false, Ordering::SeqCst) {
            return Err(injected("injected fsync failure"));
        }
        Ok(())
    }
}

fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

/// Appends `bytes` to `f`, through the fault hook.
fn write_file(faults: &WalFaults, f: &mut File, path: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let (n, err) = faults.admit_write(bytes.len());
    f.write_all(&bytes[..n]).map_err(io("write", path))?;
    match err {
        Some(e) => Err(WalError::Io {
            op: "write",
            path: path.to_path_buf(),
            source: e,
        }),
        None => Ok(()),
    }
}

/// Flushes `f` to disk (when `really`; the fault hook is consulted either way).
fn fsync_file(faults: &WalFaults, f: &File, path: &Path, really: bool) -> Result<(), WalError> {
    faults.admit_fsync().map_err(io("fsync", path))?;
    if really {
        f.sync_data().map_err(io("fsync", path))?;
    }
    Ok(())
}

/// Makes the entries of `dir` durable (when `really`; the fault hook is consulted either way).
fn sync_dir(faults: &WalFaults, dir: &Path, really: bool) -> Result<(), WalError> {
    faults.admit_fsync().map_err(io("fsync directory", dir))?;
    if really {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
    }
    Ok(())
}

/// Tunables of the log.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Start a new segment once the active one exceeds this size.
    pub segment_bytes: u64,
    /// Call fsync (fdatasync) on sync. Only simulations that model crashes themselves turn it off.
    pub fsync: bool,
    /// Snapshot files kept (the newest ones).
    pub keep_snapshots: usize,
    /// Failure injection for tests and simulations; the default injects nothing.
    pub faults: WalFaults,
    /// Data keys: with them, what is written is encrypted (and encrypted files can be read).
    pub keys: Option<Arc<Keyring>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            fsync: true,
            keep_snapshots: 2,
            faults: WalFaults::default(),
            keys: None,
        }
    }
}

/// A torn tail found at the end of the last segment (an interrupted write) and truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the removed bytes started (the end of the last whole record).
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes: u64,
    /// What was there: a partial record, zeros, a record whose end never landed.
    pub reason: String,
}

/// What recovery found besides the state; its `Display` is one line for the start-up log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// A torn tail that was truncated.
    pub torn_tail: Option<TornTail>,
    /// Half-written snapshot files that were ignored and removed: `.tmp` files, and snapshot
    /// files newer than the last durable snapshot marker (written, but their batch never became
    /// durable).
    pub removed_temp_files: Vec<PathBuf>,
    /// Segments replayed.
    pub segments: usize,
    /// Records replayed.
    pub records: usize,
}

impl Recovery {
    /// True when nothing was truncated or removed.
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.removed_temp_files.is_empty()
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replayed {} records from {} segments",
            self.records, self.segments
        )?;
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; truncated a torn tail of {}: {} bytes at offset {} ({})",
                t.path.display(),
                t.bytes,
                t.offset,
                t.reason
            )?;
        }
        if !self.removed_temp_files.is_empty() {
            let names: Vec<String> = self
                .removed_temp_files
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            write!(
                f,
                "; removed unfinished snapshot files: {}",
                names.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Counters for observability and group-commit measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// fsync calls made for log data (counted also where `WalOptions::fsync` is off).
    pub fsyncs: u64,
    /// Syncs that wrote only commit-index changes and so skipped the fsync (MustSync rule).
    pub fsyncs_skipped: u64,
    /// Batches written.
    pub batches: u64,
    /// Entries written.
    pub entries: u64,
    /// Bytes appended to segments.
    pub bytes: u64,
    /// Segments deleted by compaction.
    pub segments_deleted: u64,
}

struct SegmentInfo {
    seq: u64,
    path: PathBuf,
    /// Highest log index mentioned in the segment (entries or snapshot marker).
    max_index: LogIndex,
    /// The data key its records are sealed with (`None`: plaintext).
    key: Option<u32>,
}

/// The write-ahead log of one node.
pub struct Wal {
    opts: WalOptions,
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    segments: Vec<SegmentInfo>,
    file: File,
    /// Bytes in the active segment.
    file_len: u64,
    /// Bytes of the active segment known to be on disk (fsynced); the rest were written without
    /// an fsync (commit-only batches) and a crash may lose them.
    synced_len: u64,
    buffer: Vec<u8>,
    buffer_max_index: LogIndex,
    /// Some batch written since the last fsync needs one before it is durable.
    needs_fsync: bool,
    buffered_seq: u64,
    durable_seq: u64,
    buffered_hs: HardState,
    durable_hs: HardState,
    /// Snapshot index whose marker is buffered: compaction may run once it is durable.
    buffered_snapshot: Option<LogIndex>,
    /// The first failed write or fsync: nothing is accepted after it.
    poisoned: Option<String>,
    stats: WalStats,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and recovers its durable state, returning the log,
    /// the state and a [`Recovery`] report (what was truncated or removed; worth logging).
    /// A torn tail is truncated; corruption is an error naming the file and offset.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: WalOptions,
    ) -> Result<(Wal, RecoveredState, Recovery), WalError> {
        let dir = dir.as_ref();
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("snap");
        for d in [dir, &wal_dir, &snap_dir] {
            fs::create_dir_all(d).map_err(io("create directory", d))?;
        }
        let faults = &opts.faults;
        let mut recovery = Recovery::default();
        for entry in fs::read_dir(&snap_dir).map_err(io("list", &snap_dir))? {
            let entry = entry.map_err(io("list", &snap_dir))?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&p).map_err(io("remove half-written snapshot", &p))?;
                recovery.removed_temp_files.push(p);
            }
        }
        let keys = opts.keys.as_deref();
        let mut scan = scan(&wal_dir, &snap_dir, true, keys)?;
        let snaps = list_snapshots(&snap_dir)?;
        if scan.records == 0 && !snaps.is_empty() {
            // Snapshot files are only written through an opened log, whose first segment and
            // record are durable by then: the log itself is gone. Starting empty would forget
            // the term and vote, and the orphan clean-up below would delete the snapshots.
            return Err(WalError::Corrupt {
                path: wal_dir,
                offset: 0,
                reason: "snapshot files exist but the log has no record".into(),
            });
        }
        // A snapshot file is written before its batch's record: one newer than the last durable
        // marker belongs to a batch lost in a crash. Remove it, so that it can never be taken
        // for the current snapshot nor make `keep_snapshots` delete the one in use.
        let mut orphans = false;
        for (i, t, p) in snaps {
            if scan.marker.is_none_or(|m| (i, t) > m) {
                fs::remove_file(&p).map_err(io("remove orphaned snapshot", &p))?;
                recovery.removed_temp_files.push(p);
                orphans = true;
            }
        }
        if orphans {
            sync_dir(faults, &snap_dir, true)?;
        }
        recovery.torn_tail = scan.torn.clone();
        recovery.segments = scan.segments.len();
        recovery.records = scan.records;
        if let Some(torn) = &scan.torn {
            let path = &torn.path;
            if torn.offset < HEADER_LEN as u64 {
                // Not even the header reached the disk: the segment never held anything.
                fs::remove_file(path).map_err(io("remove torn segment", path))?;
                scan.segments.pop();
            } else {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io("open", path))?;
                f.set_len(torn.offset)
                    .map_err(io("truncate torn tail of", path))?;
                fsync_file(faults, &f, path, true)?;
            }
            sync_dir(faults, &wal_dir, true)?;
        }
        // Every start appends to a fresh segment that begins with the recovered hard state, so a
        // truncated segment is never written again and every segment carries the hard state.
        let hs = scan.state.hard_state;
        let seq = scan.segments.last().map_or(1, |s| s.seq + 1);
        let (file, info) = create_segment(faults, &wal_dir, seq, hs, keys)?;
        fsync_file(faults, &file, &info.path, opts.fsync)?;
        sync_dir(faults, &wal_dir, opts.fsync)?;
        let file_len = file.metadata().map_err(io("stat", &info.path))?.len();
        let mut segments = scan.segments;
        segments.push(info);
        let mut wal = Wal {
            opts,
            wal_dir,
            snap_dir,
            segments,
            file,
            file_len,
            synced_len: file_len,
            buffer: Vec::new(),
            buffer_max_index: 0,
            needs_fsync: false,
            buffered_seq: 0,
            durable_seq: 0,
            buffered_hs: hs,
            durable_hs: hs,
            buffered_snapshot: None,
            poisoned: None,
            stats: WalStats::default(),
        };
        wal.remove_old_snapshots()?;
        Ok((wal, scan.state, recovery))
    }

    /// Seals what is written from now on with `keys` (a rotated data key, or encryption turned
    /// on): buffered batches are written first, then the log moves to a new segment sealed with
    /// the new current key. Older segments and snapshots keep their key until compaction
    /// removes them (see [`Wal::key_ids_in_use`]).
    pub fn set_keys(&mut self, keys: Arc<Keyring>) -> Result<(), WalError> {
        self.check_poisoned()?;
        self.sync_batches().map_err(|e| self.poison(e))?;
        self.opts.keys = Some(keys);
        self.rotate().map_err(|e| self.poison(e))
    }

    /// The data keys the files on disk still need: those of the segments and of the kept
    /// snapshot files. A key not in this set may be forgotten.
    pub fn key_ids_in_use(&self) -> Result<BTreeSet<u32>, WalError> {
        let mut ids: BTreeSet<u32> = self.segments.iter().filter_map(|s| s.key).collect();
        for (_, _, p) in list_snapshots(&self.snap_dir)? {
            if let Some(id) = snapshot_key_id(&p)? {
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    /// Whether some segment or kept snapshot file is still plaintext.
    pub fn plaintext_in_use(&self) -> Result<bool, WalError> {
        if self.segments.iter().any(|s| s.key.is_none()) {
            return Ok(true);
        }
        for (_, _, p) in list_snapshots(&self.snap_dir)? {
            if snapshot_key_id(&p)?.is_none() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        self.stats
    }

    /// Bytes a crash could lose: written but not fsynced (commit-only batches whose fsync was
    /// skipped) plus those buffered and not yet written.
    pub fn unsynced_bytes(&self) -> usize {
        (self.file_len - self.synced_len) as usize + self.buffer.len()
    }

    /// The first write or fsync failure, if the log is poisoned (it then refuses everything).
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// For simulations: the process dies now and the machine with it. Of the bytes not yet
    /// fsynced (see [`Wal::unsynced_bytes`]), the first `keep` reached the file anyway (a write
    /// may land without its fsync having returned); the rest are lost.
    pub fn simulate_crash(mut self, keep: usize) -> Result<(), WalError> {
        let path = self.segments.last().expect("one segment").path.clone();
        let mut unsynced = Vec::with_capacity(self.unsynced_bytes());
        if self.file_len > self.synced_len {
            let mut f = File::open(&path).map_err(io("open", &path))?;
            f.read_to_end(&mut unsynced).map_err(io("read", &path))?;
            unsynced.drain(..self.synced_len as usize);
            self.file
                .set_len(self.synced_len)
                .map_err(io("truncate", &path))?;
        }
        unsynced.extend_from_slice(&self.buffer);
        let keep = keep.min(unsynced.len());
        self.file
            .write_all(&unsynced[..keep])
            .map_err(io("write", &path))?;
        Ok(())
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(first) => Err(WalError::Poisoned {
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records `e` as the failure that poisons the log (the first one is kept) and returns it.
    /// What the active segment holds beyond its last fsync is cut off (best effort): it was
    /// never reported durable, or only as commit-only batches that may be lost, and after a
    /// failed fsync the kernel may have dropped it anyway.
    fn poison(&mut self, e: WalError) -> WalError {
        if self.poisoned.is_none() {
            self.poisoned = Some(e.to_string());
            let _ = self.file.set_len(self.synced_len);
            self.file_len = self.synced_len;
            self.buffer.clear();
        }
        e
    }

    fn remove_old_snapshots(&mut self) -> Result<(), WalError> {
        let mut snaps = list_snapshots(&self.snap_dir)?;
        let keep = self.opts.keep_snapshots.max(1);
        if snaps.len() > keep {
            snaps.sort();
            let n = snaps.len() - keep;
            for (_, _, p) in snaps.drain(..n) {
                fs::remove_file(&p).map_err(io("remove old snapshot", &p))?;
            }
            sync_dir(&self.opts.faults, &self.snap_dir, true)?;
        }
        Ok(())
    }

    fn write_snapshot_file(&self, snap: &Snapshot) -> Result<(), WalError> {
        let faults = &self.opts.faults;
        let fin = self
            .snap_dir
            .join(snapshot_file_name(snap.meta.index, snap.meta.term));
        let tmp = fin.with_extension("tmp");
        let mut buf = Vec::with_capacity(snap.data.len() + 128);
        buf.extend_from_slice(SNAPSHOT_MAGIC);
        let keys = self.opts.keys.as_deref();
        match keys {
            None => put_u32(&mut buf, SNAPSHOT_VERSION),
            Some(k) => {
                put_u32(&mut buf, SEALED_SNAPSHOT_VERSION);
                put_u32(&mut buf, k.current_id());
            }
        }
        put_u64(&mut buf, snap.meta.index);
        put_u64(&mut buf, snap.meta.term);
        put_membership(&mut buf, &snap.meta.membership);
        match keys {
            None => {
                put_u64(&mut buf, snap.data.len() as u64);
                buf.extend_from_slice(&snap.data);
            }
            Some(k) => {
                let mut sealed = Vec::with_capacity(snap.data.len() + crate::seal::OVERHEAD);
                k.seal(
                    &snapshot_aad(snap.meta.index, snap.meta.term),
                    &snap.data,
                    &mut sealed,
                )
                .map_err(WalError::Seal)?;
                put_u64(&mut buf, sealed.len() as u64);
                buf.extend_from_slice(&sealed);
            }
        }
        let crc = crc32c::crc32c(&buf);
        put_u32(&mut buf, crc);
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        write_file(faults, &mut f, &tmp, &buf)?;
        fsync_file(faults, &f, &tmp, self.opts.fsync)?;
        drop(f);
        fs::rename(&tmp, &fin).map_err(io("rename", &tmp))?;
        sync_dir(faults, &self.snap_dir, self.opts.fsync)?;
        Ok(())
    }

    /// Makes what was written to the active segment durable.
    fn fsync_active(&mut self) -> Result<(), WalError> {
        let path = &self.segments.last().expect("one segment").path;
        fsync_file(&self.opts.faults, &self.file, path, self.opts.fsync)?;
        self.stats.fsyncs += 1;
        self.synced_len = self.file_len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        if self.synced_len < self.file_len {
            // Commit-only records written without an fsync: a crash must not leave a torn
            // record in a segment that is no longer the last (that would be corruption).
            self.fsync_active()?;
        }
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let faults = &self.opts.faults;
        let keys = self.opts.keys.as_deref();
        let (file, info) = create_segment(faults, &self.wal_dir, seq, self.durable_hs, keys)?;
        fsync_file(faults, &file, &info.path, self.opts.fsync)?;
        sync_dir(faults, &self.wal_dir, self.opts.fsync)?;
        self.file_len = file.metadata().map_err(io("stat", &info.path))?.len();
        self.synced_len = self.file_len;
        self.file = file;
        self.segments.push(info);
        Ok(())
    }

    /// Deletes whole segments that hold nothing above `snapshot_index` (never the active one).
    fn compact(&mut self, snapshot_index: LogIndex) -> Result<(), WalError> {
        let n = self.segments.len();
        let mut removed = 0;
        // Only a prefix may go, so replay always starts at a segment boundary.
        while removed + 1 < n && self.segments[removed].max_index < snapshot_index {
            let p = &self.segments[removed].path;
            fs::remove_file(p).map_err(io("remove compacted segment", p))?;
            removed += 1;
        }
        if removed > 0 {
            self.segments.drain(..removed);
            self.stats.segments_deleted += removed as u64;
            sync_dir(&self.opts.faults, &self.wal_dir, self.opts.fsync)?;
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &WriteBatch) -> Result<(), WalError> {
        let start = self.buffer.len();
        encode_record(&mut self.buffer, batch, self.opts.keys.as_deref())?;
        if let Some(s) = &batch.snapshot {
            // The snapshot file is durable before its marker (still only buffered) can be.
            if let Err(e) = self.write_snapshot_file(s) {
                self.buffer.truncate(start);
                return Err(e);
            }
            // Segments are deleted only below the compaction point: trailing entries stay.
            let upto = match batch.compact_to {
                Some(j) if !batch.reset_log => j.min(s.meta.index),
                _ => s.meta.index,
            };
            self.buffered_snapshot = Some(upto);
        }
        if batch.must_sync(self.buffered_hs) {
            self.needs_fsync = true;
        }
        if let Some(hs) = batch.hard_state {
            self.buffered_hs = hs;
        }
        let max = batch
            .entries
            .last()
            .map(|e| e.index)
            .into_iter()
            .chain(batch.snapshot.as_ref().map(|s| s.meta.index))
            .max()
            .unwrap_or(0);
        self.buffer_max_index = self.buffer_max_index.max(max);
        self.buffered_seq = batch.seq;
        self.stats.batches += 1;
        self.stats.entries += batch.entries.len() as u64;
        Ok(())
    }

    fn sync_batches(&mut self) -> Result<u64, WalError> {
        if self.buffer.is_empty() {
            return Ok(self.durable_seq);
        }
        if self.file_len >= self.opts.segment_bytes {
            self.rotate()?;
        }
        let path = self.segments.last().expect("one segment").path.clone();
        write_file(&self.opts.faults, &mut self.file, &path, &self.buffer)?;
        self.stats.bytes += self.buffer.len() as u64;
        self.file_len += self.buffer.len() as u64;
        self.buffer.clear();
        if self.needs_fsync {
            self.fsync_active()?;
            self.needs_fsync = false;
        } else {
            // Only commit indexes changed: durable enough without an fsync (MustSync).
            self.stats.fsyncs_skipped += 1;
        }
        let seg = self.segments.last_mut().expect("one segment");
        seg.max_index = seg.max_index.max(self.buffer_max_index);
        self.buffer_max_index = 0;
        self.durable_seq = self.buffered_seq;
        self.durable_hs = self.buffered_hs;
        if let Some(index) = self.buffered_snapshot.take() {
            self.compact(index)?;
            self.remove_old_snapshots()?;
        }
        Ok(self.durable_seq)
    }
}

impl Storage for Wal {
    type Error = WalError;

    /// Buffers the batch (writing its snapshot file, if any, durably first). Refused once the
    /// log is poisoned; a failure here poisons it, except a batch too large to be a record.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), WalError> {
        self.check_poisoned()?;
        match self.write_batch(batch) {
            // Nothing was written: the log is as it was.
            Err(e @ (WalError::TooLarge(_) | WalError::Seal(_))) => Err(e),
            Err(e) => Err(self.poison(e)),
            Ok(()) => Ok(()),
        }
    }

    /// Appends the buffered batches and fsyncs them, unless none needs it (MustSync). Refused
    /// once the log is poisoned; a failure here poisons it, and the durable sequence number
    /// never moves past a failed fsync.
    fn sync(&mut self) -> Result<u64, WalError> {
        self.check_poisoned()?;
        self.sync_batches().map_err(|e| self.poison(e))
    }

    fn recover(&self) -> Result<RecoveredState, WalError> {
        Ok(scan(
            &self.wal_dir,
            &self.snap_dir,
            false,
            self.opts.keys.as_deref(),
        )?
        .state)
    }
}

/// What a sealed snapshot's data is bound to: its index and term.
fn snapshot_aad(index: LogIndex, term: Term) -> Vec<u8> {
    let mut aad = b"shoal snapshot".to_vec();
    aad.extend_from_slice(&index.to_le_bytes());
    aad.extend_from_slice(&term.to_le_bytes());
    aad
}

fn snapshot_file_name(index: LogIndex, term: Term) -> String {
    format!("snap-{index:016x}-{term:016x}.snap")
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn create_segment(
    faults: &WalFaults,
    dir: &Path,
    seq: u64,
    hs: HardState,
    keys: Option<&Keyring>,
) -> Result<(File, SegmentInfo), WalError> {
    let path = segment_path(dir, seq);
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(SEGMENT_MAGIC);
    put_u32(
        &mut buf,
        if keys.is_some() {
            SEALED_SEGMENT_VERSION
        } else {
            SEGMENT_VERSION
        },
    );
    put_u64(&mut buf, seq);
    let crc = crc32c::crc32c(&buf);
    put_u32(&mut buf, crc);
    if let Some(k) = keys {
        // The data key's id, with its own checksum.
        let id = k.current_id();
        put_u32(&mut buf, id);
        put_u32(&mut buf, crc32c::crc32c(&id.to_le_bytes()));
    }
    // The first record repeats the hard state.
    let hs_batch = WriteBatch {
        hard_state: Some(hs),
        ..Default::default()
    };
    encode_record(&mut buf, &hs_batch, keys)?;
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io("create segment", &path))?;
    write_file(faults, &mut f, &path, &buf)?;
    Ok((
        f,
        SegmentInfo {
            seq,
            path,
            max_index: 0,
            key: keys.map(Keyring::current_id),
        },
    ))
}

/// The checksum of a record: CRC32C of the payload, then of the length. The length comes last so
/// that recovery can test every candidate length of a damaged header in one pass.
fn record_crc(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(payload), &len.to_le_bytes())
}

/// Appends `batch` as one record `[len][crc][payload][!crc]`, the payload sealed when there are
/// keys; an error if the payload is over [`MAX_RECORD`] or cannot be sealed (nothing is
/// appended then).
fn encode_record(
    buf: &mut Vec<u8>,
    batch: &WriteBatch,
    keys: Option<&Keyring>,
) -> Result<(), WalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    match keys {
        None => encode_batch(buf, batch),
        Some(k) => {
            let mut plain = Vec::new();
            encode_batch(&mut plain, batch);
            if plain.len() > MAX_RECORD {
                buf.truncate(start);
                return Err(WalError::TooLarge(plain.len()));
            }
            if let Err(e) = k.seal(RECORD_AAD, &plain, buf) {
                buf.truncate(start);
                return Err(WalError::Seal(e));
            }
        }
    }
    let len = buf.len() - start - RECORD_HEADER;
    if len > MAX_RECORD {
        buf.truncate(start);
        return Err(WalError::TooLarge(len));
    }
    let crc = record_crc(len as u32, &buf[start + RECORD_HEADER..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    put_u32(buf, !crc);
    Ok(())
}

// ------------------------------------------------------------------ encoding

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_set(b: &mut Vec<u8>, s: &BTreeSet<u64>) {
    put_u32(b, s.len() as u32);
    for id in s {
        put_u64(b, *id);
    }
}
fn put_membership(b: &mut Vec<u8>, m: &Membership) {
    put_set(b, &m.voters);
    put_set(b, &m.outgoing);
    put_set(b, &m.learners);
}

const HAS_SNAPSHOT: u8 = 1;
const HAS_HARD_STATE: u8 = 2;
const RESETS_LOG: u8 = 4;
/// The snapshot marker carries a compaction point (`WriteBatch::compact_to`) after its term.
const COMPACTS_TO: u8 = 8;

fn encode_batch(b: &mut Vec<u8>, batch: &WriteBatch) {
    let mut flags = 0;
    if batch.snapshot.is_some() {
        flags |= HAS_SNAPSHOT;
    }
    if batch.hard_state.is_some() {
        flags |= HAS_HARD_STATE;
    }
    if batch.snapshot.is_some() && batch.reset_log {
        flags |= RESETS_LOG;
    }
    let compact_to = batch.compact_to.filter(|_| !batch.reset_log);
    if batch.snapshot.is_some() && compact_to.is_some() {
        flags |= COMPACTS_TO;
    }
    b.push(flags);
    if let Some(s) = &batch.snapshot {
        put_u64(b, s.meta.index);
        put_u64(b, s.meta.term);
        if let Some(j) = compact_to {
            put_u64(b, j);
        }
    }
    if let Some(hs) = &batch.hard_state {
        put_u64(b, hs.term);
        put_u64(b, hs.vote.unwrap_or(0));
        put_u64(b, hs.commit);
    }
    put_u32(b, batch.entries.len() as u32);
    for e in &batch.entries {
        put_u64(b, e.index);
        put_u64(b, e.term);
        match &e.payload {
            Payload::Noop => b.push(0),
            Payload::Command(d) => {
                b.push(1);
                put_u32(b, d.len() as u32);
                b.extend_from_slice(d);
            }
            Payload::Config(m) => {
                b.push(2);
                put_membership(b, m);
            }
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.pos < n {
            return Err(format!(
                "field of {n} bytes at {} runs past the end ({} bytes)",
                self.pos,
                self.b.len()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn set(&mut self) -> Result<BTreeSet<u64>, String> {
        let n = self.u32()? as usize;
        if n > (self.b.len() - self.pos) / 8 {
            return Err(format!("set of {n} ids cannot fit"));
        }
        (0..n).map(|_| self.u64()).collect()
    }
    fn membership(&mut self) -> Result<Membership, String> {
        Ok(Membership {
            voters: self.set()?,
            outgoing: self.set()?,
            learners: self.set()?,
        })
    }
}

/// A decoded record: snapshot marker (index, term, resets the log, compaction point), hard
/// state, entries.
struct Record {
    snapshot: Option<(LogIndex, Term, bool, Option<LogIndex>)>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
}

fn decode_batch(b: &[u8]) -> Result<Record, String> {
    let mut c = Cursor { b, pos: 0 };
    let flags = c.u8()?;
    if flags & !(HAS_SNAPSHOT | HAS_HARD_STATE | RESETS_LOG | COMPACTS_TO) != 0 {
        return Err(format!("unknown record flags {flags:#x}"));
    }
    let snapshot = if flags & HAS_SNAPSHOT != 0 {
        let (index, term) = (c.u64()?, c.u64()?);
        let compact_to = if flags & COMPACTS_TO != 0 {
            Some(c.u64()?)
        } else {
            None
        };
        Some((index, term, flags & RESETS_LOG != 0, compact_to))
    } else {
        None
    };
    let hard_state = if flags & HAS_HARD_STATE != 0 {
        let term = c.u64()?;
        let vote = c.u64()?;
        let commit = c.u64()?;
        Some(HardState {
            term,
            vote: (vote != 0).then_some(vote),
            commit,
        })
    } else {
        None
    };
    let n = c.u32()? as usize;
    if n > b.len() / 17 {
        return Err(format!(
            "{n} entries cannot fit in a {}-byte record",
            b.len()
        ));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let index = c.u64()?;
        let term = c.u64()?;
        let payload = match c.u8()? {
            0 => Payload::Noop,
            1 => {
                let len = c.u32()? as usize;
                Payload::Command(c.take(len)?.to_vec())
            }
            2 => Payload::Config(c.membership()?),
            k => return Err(format!("unknown entry kind {k}")),
        };
        if let Some(prev) = entries.last() {
            let prev: &Entry = prev;
            if index != prev.index + 1 {
                return Err(format!(
                    "entries not consecutive ({} then {index})",
                    prev.index
                ));
            }
        }
        entries.push(Entry {
            term,
            index,
            payload,
        });
    }
    if c.pos != b.len() {
        return Err(format!("{} trailing bytes", b.len() - c.pos));
    }
    Ok(Record {
        snapshot,
        hard_state,
        entries,
    })
}

// ------------------------------------------------------------------ recovery

/// The log as replayed: entries after a base point whose term may be unknown (when the segments
/// before it were compacted away).
#[derive(Default)]
struct Replay {
    base_index: Option<LogIndex>,
    base_term: Option<Term>,
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl Replay {
    fn last_index(&self) -> Option<LogIndex> {
        self.entries.last().map(|e| e.index).or(self.base_index)
    }

    fn contains(&self, index: LogIndex, term: Term) -> bool {
        if self.base_index == Some(index) && self.base_term == Some(term) {
            return true;
        }
        let Some(base) = self.base_index else {
            return false;
        };
        index > base
            && self
                .entries
                .get((index - base - 1) as usize)
                .is_some_and(|e| e.term == term)
    }

    fn apply_snapshot(&mut self, index: LogIndex, term: Term) {
        if self.contains(index, term) {
            let base = self.base_index.expect("contains implies a base");
            let drop = ((index - base) as usize).min(self.entries.len());
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.base_index = Some(index);
        self.base_term = Some(term);
    }

    /// Applies a record's entries. A gap (entries missing before these) is legitimate only when
    /// the missing entries lived in segments deleted because a snapshot covers them; it is
    /// returned as `(last index before the gap, first index after)` for the caller to check.
    /// A snapshot marker as written: drop the covered prefix (only up to `compact_to`, keeping
    /// trailing entries), or the whole log on a reset.
    fn apply_marker(
        &mut self,
        index: LogIndex,
        term: Term,
        reset: bool,
        compact_to: Option<LogIndex>,
    ) {
        let trailing = compact_to.filter(|&j| !reset && j < index);
        if let Some(j) = trailing.filter(|_| self.contains(index, term)) {
            let base = self.base_index.expect("contains implies a base");
            if j > base {
                // Entries base+1..=index are present, so entry j is.
                let drop = (j - base) as usize;
                let j_term = self.entries[drop - 1].term;
                self.entries.drain(..drop);
                self.base_index = Some(j);
                self.base_term = Some(j_term);
            }
            return;
        }
        if reset {
            self.entries.clear();
        } else if let Some(base) = self.base_index {
            if index <= base {
                if index == base {
                    self.base_term = Some(term);
                }
                return;
            }
            let drop = ((index - base) as usize).min(self.entries.len());
            self.entries.drain(..drop);
        }
        self.base_index = Some(index);
        self.base_term = Some(term);
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Option<(LogIndex, LogIndex)> {
        let first_index = entries.first()?.index;
        let mut gap = None;
        match self.last_index() {
            None => {
                self.base_index = Some(first_index - 1);
                self.base_term = None;
            }
            Some(last) if first_index > last + 1 => {
                gap = Some((last, first_index));
                self.entries.clear();
                self.base_index = Some(first_index - 1);
                self.base_term = None;
            }
            Some(_) => {}
        }
        let base = self.base_index.expect("set above");
        let mut it = entries.into_iter().filter(|e| e.index > base).peekable();
        if let Some(e) = it.peek() {
            self.entries.truncate((e.index - base - 1) as usize);
        }
        self.entries.extend(it);
        gap
    }
}

struct Scan {
    state: RecoveredState,
    /// The last snapshot marker replayed: it names the snapshot file in use.
    marker: Option<(LogIndex, Term)>,
    segments: Vec<SegmentInfo>,
    torn: Option<TornTail>,
    records: usize,
}

fn list_snapshots(dir: &Path) -> Result<Vec<(LogIndex, Term, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let p = entry.map_err(io("list", dir))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name
            .strip_prefix("snap-")
            .and_then(|r| r.strip_suffix(".snap"))
        else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(i), Some(t), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(i), Ok(t)) = (u64::from_str_radix(i, 16), u64::from_str_radix(t, 16)) {
            out.push((i, t, p));
        }
    }
    Ok(out)
}

/// The data key a snapshot file is sealed with (`None`: plaintext), from its header alone.
fn snapshot_key_id(path: &Path) -> Result<Option<u32>, WalError> {
    let mut head = [0u8; 16];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io("read", path))?;
    match le32(&head, 8) {
        SEALED_SNAPSHOT_VERSION => Ok(Some(le32(&head, 12))),
        _ => Ok(None),
    }
}

fn read_snapshot(path: &Path, keys: Option<&Keyring>) -> Result<Snapshot, WalError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io("read", path))?;
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if buf.len() < 8 + 4 + 16 + 4 || &buf[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(
            0,
            "not a shoal snapshot (bad magic or too short)".into(),
        ));
    }
    let body = &buf[..buf.len() - 4];
    let stored = u32::from_le_bytes(buf[buf.len() - 4..].try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != stored {
        return Err(corrupt(buf.len() - 4, "snapshot checksum mismatch".into()));
    }
    let mut c = Cursor { b: body, pos: 8 };
    let parse = |c: &mut Cursor| -> Result<Snapshot, String> {
        let version = c.u32()?;
        let sealed = match version {
            SNAPSHOT_VERSION => false,
            SEALED_SNAPSHOT_VERSION => {
                c.u32()?;
                true
            }
            _ => return Err(format!("unsupported snapshot version {version}")),
        };
        let index = c.u64()?;
        let term = c.u64()?;
        let membership = c.membership()?;
        let len = c.u64()? as usize;
        let raw = c.take(len)?;
        if c.pos != c.b.len() {
            return Err("trailing bytes".into());
        }
        let data = if sealed {
            let k = keys.ok_or("the snapshot is encrypted and no data key was given")?;
            k.open(&snapshot_aad(index, term), raw)?
        } else {
            raw.to_vec()
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership,
            },
            data: Arc::new(data),
        })
    };
    parse(&mut c).map_err(|r| corrupt(c.pos, r))
}

/// Why there is no valid record at some offset.
enum Bad {
    /// What an interrupted write leaves at the end of a file: a torn tail, if in the last segment.
    Torn(&'static str),
    /// Damage to data that was written whole.
    Corrupt(String),
}

fn le32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads the record at `off` of a segment's bytes: its payload range and where the next record
/// starts. A record is valid when its checksum matches; its trailer may then be damaged or cut
/// short by the end of the file (its content is intact either way).
fn read_record(buf: &[u8], off: usize) -> Result<(std::ops::Range<usize>, usize), Bad> {
    let rest = buf.len() - off;
    if buf[off..].iter().all(|&b| b == 0) {
        return Err(Bad::Torn("zeros to the end of the segment"));
    }
    if rest < RECORD_HEADER {
        return Err(Bad::Torn("partial record header"));
    }
    let len = le32(buf, off);
    let crc = le32(buf, off + 4);
    let start = off + RECORD_HEADER;
    let fits = len as usize <= MAX_RECORD && len as usize <= rest - RECORD_HEADER;
    if fits {
        let end = start + len as usize;
        if record_crc(len, &buf[start..end]) == crc {
            return Ok((start..end, (end + RECORD_TRAILER).min(buf.len())));
        }
    }
    Err(classify_bad_record(buf, off, len, crc))
}

/// Tells a record cut short by an interrupted write (zeros or nothing where its end should be)
/// from one that was written whole and damaged later. Only the former may be truncated; a single
/// damaged byte anywhere in a whole record must never pass for it.
fn classify_bad_record(buf: &[u8], off: usize, len: u32, crc: u32) -> Bad {
    let start = off + RECORD_HEADER;
    let trailer_at = |end: usize| (end + RECORD_TRAILER <= buf.len()).then(|| le32(buf, end));
    let len_fits = len as usize <= MAX_RECORD && start + len as usize <= buf.len();
    if len_fits {
        let end = start + len as usize;
        if let Some(trailer) = trailer_at(end) {
            if trailer == !crc {
                return Bad::Corrupt(format!(
                    "record checksum mismatch: the {len}-byte record was written whole (its \
                     trailer is intact) and its content is damaged"
                ));
            }
            if trailer == !record_crc(len, &buf[start..end]) {
                return Bad::Corrupt(format!(
                    "record checksum field damaged: the {len}-byte payload matches its trailer"
                ));
            }
        }
    }
    if let Some(actual) = find_record_end(buf, off, len, crc) {
        return Bad::Corrupt(format!(
            "record length field damaged: it says {len} bytes, but a whole record of {actual} \
             bytes with a matching checksum and trailer is there"
        ));
    }
    if !len_fits {
        return Bad::Torn("partial record");
    }
    let end = start + len as usize + RECORD_TRAILER;
    if end < buf.len() && buf[end..].iter().any(|&b| b != 0) {
        return Bad::Corrupt(format!(
            "record checksum mismatch, followed by {} more bytes",
            buf.len() - end
        ));
    }
    if buf.last() == Some(&0) {
        // The end of the record is zeros (a write whose tail never landed).
        return Bad::Torn("last record ends in zeros");
    }
    Bad::Corrupt("record checksum mismatch; its trailer is damaged too".into())
}

/// Looks for the true end of a record whose header says `stated` bytes: a length other than
/// `stated` where the trailer `!crc` sits and the checksum matches. One pass over the rest of
/// the file (the checksum covers the payload first, so it grows byte by byte).
fn find_record_end(buf: &[u8], off: usize, stated: u32, crc: u32) -> Option<usize> {
    let start = off + RECORD_HEADER;
    let last = buf.len().checked_sub(RECORD_TRAILER)?;
    let last = last.min(start + MAX_RECORD);
    let trailer = (!crc).to_le_bytes();
    let mut running = 0u32;
    let mut done = start;
    for q in start..=last {
        if buf[q..q + RECORD_TRAILER] != trailer || (q - start) as u64 == stated as u64 {
            continue;
        }
        running = crc32c::crc32c_append(running, &buf[done..q]);
        done = q;
        let len = (q - start) as u32;
        if crc32c::crc32c_append(running, &len.to_le_bytes()) == crc {
            return Some(q - start);
        }
    }
    None
}

fn scan(
    wal_dir: &Path,
    snap_dir: &Path,
    allow_torn: bool,
    keys: Option<&Keyring>,
) -> Result<Scan, WalError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(wal_dir).map_err(io("list", wal_dir))? {
        let p = entry.map_err(io("list", wal_dir))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(hex) = name.strip_suffix(".wal") {
            if let Ok(seq) = u64::from_str_radix(hex, 16) {
                seqs.push(seq);
            }
        }
    }
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(WalError::MissingSegment {
                dir: wal_dir.to_path_buf(),
                missing: w[0] + 1,
                before: w[0],
                after: w[1],
            });
        }
    }
    let mut replay = Replay::default();
    // The highest gap seen: (file, offset, last index before it, first index after it).
    let mut gap: Option<(PathBuf, usize, LogIndex, LogIndex)> = None;
    let mut segments = Vec::new();
    let mut torn = None;
    let mut records = 0;
    let mut marker = None;
    let nseg = seqs.len();
    for (k, seq) in seqs.into_iter().enumerate() {
        let path = segment_path(wal_dir, seq);
        let is_last = k + 1 == nseg;
        let mut buf = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io("read", &path))?;
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        // A sealed segment's header is followed by its data key's id and that id's checksum.
        let sealed = buf.len() >= 12 && le32(&buf, 8) == SEALED_SEGMENT_VERSION;
        let header_len = if sealed { HEADER_LEN + 8 } else { HEADER_LEN };
        if buf.len() < header_len {
            if is_last && allow_torn {
                // A segment whose header never fully reached the disk: nothing in it was acknowledged.
                torn = Some(TornTail {
                    path: path.clone(),
                    offset: 0,
                    bytes: buf.len() as u64,
                    reason: "incomplete segment header".into(),
                });
                segments.push(SegmentInfo {
                    seq,
                    path,
                    max_index: 0,
                    key: None,
                });
                break;
            }
            return Err(corrupt(0, "segment header is incomplete".into()));
        }
        if &buf[..8] != SEGMENT_MAGIC {
            return Err(corrupt(0, "bad segment magic".into()));
        }
        let stored = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes"));
        if crc32c::crc32c(&buf[..20]) != stored {
            return Err(corrupt(0, "segment header checksum mismatch".into()));
        }
        let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
        if version != SEGMENT_VERSION && version != SEALED_SEGMENT_VERSION {
            return Err(corrupt(
                8,
                format!(
                    "WAL segment format version {version} is not supported (this build reads \
                     versions {SEGMENT_VERSION} and {SEALED_SEGMENT_VERSION}); start from a build \
                     that wrote it"
                ),
            ));
        }
        let hseq = u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes"));
        if hseq != seq {
            return Err(corrupt(12, format!("header says segment {hseq:016x}")));
        }
        let mut off = HEADER_LEN;
        let mut key = None;
        if version == SEALED_SEGMENT_VERSION {
            let id = le32(&buf, HEADER_LEN);
            if crc32c::crc32c(&id.to_le_bytes()) != le32(&buf, HEADER_LEN + 4) {
                return Err(corrupt(
                    HEADER_LEN,
                    "segment key id checksum mismatch".into(),
                ));
            }
            if keys.is_none_or(|k| !k.has(id)) {
                return Err(corrupt(
                    HEADER_LEN,
                    format!(
                        "the segment is encrypted with data key {id}, which was not given \
                         (the node's key files are missing or do not match its data)"
                    ),
                ));
            }
            key = Some(id);
            off += 8;
        }
        let mut max_index = 0;
        while off < buf.len() {
            let (payload, next) = match read_record(&buf, off) {
                Ok(r) => r,
                Err(Bad::Torn(reason)) if is_last && allow_torn => {
                    torn = Some(TornTail {
                        path: path.clone(),
                        offset: off as u64,
                        bytes: (buf.len() - off) as u64,
                        reason: reason.into(),
                    });
                    break;
                }
                Err(Bad::Torn(reason)) => {
                    let why = if is_last {
                        "on a live log"
                    } else {
                        "in a segment that is not the last"
                    };
                    return Err(corrupt(off, format!("{reason} {why}")));
                }
                Err(Bad::Corrupt(reason)) => return Err(corrupt(off, reason)),
            };
            let rec = match (key, keys) {
                (Some(_), Some(k)) => k
                    .open(RECORD_AAD, &buf[payload])
                    .and_then(|plain| decode_batch(&plain)),
                _ => decode_batch(&buf[payload]),
            }
            .map_err(|r| corrupt(off, r))?;
            if let Some((i, t, reset, compact_to)) = rec.snapshot {
                replay.apply_marker(i, t, reset, compact_to);
                marker = Some((i, t));
                max_index = max_index.max(i);
            }
            if let Some(e) = rec.entries.last() {
                max_index = max_index.max(e.index);
            }
            if let Some((before, after)) = replay.apply_entries(rec.entries) {
                if gap.as_ref().is_none_or(|g| g.3 < after) {
                    gap = Some((path.clone(), off, before, after));
                }
            }
            if let Some(hs) = rec.hard_state {
                replay.hard_state = hs;
            }
            records += 1;
            off = next;
        }
        segments.push(SegmentInfo {
            seq,
            path,
            max_index,
            key,
        });
    }

    // The snapshot in use is the one the last durable marker names. A newer file belongs to a
    // batch that never became durable (its file is written before its record is synced).
    let snapshot = match marker {
        Some((i, t)) => {
            let p = snap_dir.join(snapshot_file_name(i, t));
            if !p.exists() {
                return Err(WalError::Corrupt {
                    path: p,
                    offset: 0,
                    reason: "the snapshot file named by the last snapshot marker is missing".into(),
                });
            }
            let s = read_snapshot(&p, keys)?;
            if (s.meta.index, s.meta.term) != (i, t) {
                return Err(WalError::Corrupt {
                    path: p,
                    offset: 0,
                    reason: format!(
                        "holds snapshot {}/{} instead of {i}/{t}",
                        s.meta.index, s.meta.term
                    ),
                });
            }
            Some(s)
        }
        None => None,
    };
    if let Some((path, offset, before, after)) = gap {
        if snapshot.as_ref().is_none_or(|s| s.meta.index < after - 1) {
            return Err(WalError::Corrupt {
                path,
                offset: offset as u64,
                reason: format!(
                    "entry {after} leaves a gap after index {before} that no snapshot covers"
                ),
            });
        }
    }
    if let Some(s) = &snapshot {
        let (i, t) = (s.meta.index, s.meta.term);
        // A log that holds the snapshot's last entry keeps what precedes it (trailing entries
        // a marker's `compact_to` kept).
        let trailing = replay.base_index.is_some_and(|b| b < i) && replay.contains(i, t);
        if !trailing && (replay.base_index.is_none_or(|b| b < i) || replay.contains(i, t)) {
            replay.apply_snapshot(i, t);
        }
    }
    let covered = snapshot.as_ref().map_or(0, |s| s.meta.index);
    if replay.base_index.is_some_and(|b| b > covered) {
        return Err(WalError::Corrupt {
            path: wal_dir.to_path_buf(),
            offset: 0,
            reason: format!(
                "the log starts after index {} but no snapshot covers what precedes it",
                replay.base_index.unwrap_or(0)
            ),
        });
    }
    let mut hard_state = replay.hard_state;
    let last = replay.last_index().unwrap_or(0);
    hard_state.commit = hard_state.commit.min(last);
    Ok(Scan {
        state: RecoveredState {
            hard_state,
            snapshot,
            entries: replay.entries,
        },
        marker,
        segments,
        torn,
        records,
    })
}
