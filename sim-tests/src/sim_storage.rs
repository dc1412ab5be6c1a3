//! Storage for simulated nodes: the in-memory model or the real write-ahead log in a temp dir.
//! Both lose exactly what a crash could lose: batches (or bytes) not yet synced.

use shoal_raft::wal::{Wal, WalOptions};
use shoal_raft::{MemStorage, RecoveredState, Storage, WriteBatch};
use std::path::PathBuf;

/// Which storage the simulated nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// `MemStorage`: fast, models fsync exactly.
    Mem,
    /// The real `Wal` in a temporary directory (fsync off: crashes are modelled by dropping the
    /// unsynced buffer, of which a random prefix reaches the file).
    Wal,
}

/// The backend of one node's storage.
enum Backend {
    /// In-memory model.
    Mem(MemStorage),
    /// The real log; `None` while the node is down.
    Wal {
        /// Keeps the directory alive (removed on drop).
        dir: tempfile::TempDir,
        /// The open log, if the node runs.
        wal: Option<Wal>,
    },
}

/// Why a storage call failed: a fault the simulation injected (the node must stop, as a real
/// one would on EIO or ENOSPC), or a real error (a bug: the seed fails).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// An injected fault: the fsync failed, or the disk is full.
    Fault(&'static str),
    /// Anything else.
    Broken(String),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Fault(what) => write!(f, "injected fault: {what}"),
            StorageError::Broken(e) => f.write_str(e),
        }
    }
}

fn broken(e: impl std::fmt::Display) -> StorageError {
    StorageError::Broken(e.to_string())
}

/// One node's storage, with the disk faults the simulation injects on top of the backend: a
/// failed fsync (the node must crash: what was not synced may or may not be on disk) and a full
/// disk (every write fails until space is back).
pub struct SimStorage {
    backend: Backend,
    fail_next_sync: bool,
    full: bool,
}

fn base_dir() -> PathBuf {
    // tmpfs when there is one: the simulation models crashes itself and wants speed.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// The simulated nodes' WAL: small segments, no fsync (crashes are modelled), and encrypted at
/// rest as the agent's is (a fixed data key: the sim's behaviour never depends on the bytes).
fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 16 << 10,
        fsync: false,
        keep_snapshots: 2,
        keys: shoal_raft::seal::Keyring::new(1, &[0x5a; shoal_raft::seal::KEY_LEN])
            .ok()
            .map(std::sync::Arc::new),
        ..WalOptions::default()
    }
}

impl SimStorage {
    /// Storage holding `initial` durably.
    pub fn new(kind: StorageKind, initial: RecoveredState) -> Result<SimStorage, String> {
        let backend = match kind {
            StorageKind::Mem => Backend::Mem(MemStorage::new(initial)),
            StorageKind::Wal => {
                let dir = tempfile::Builder::new()
                    .prefix("shoal-sim-")
                    .disable_cleanup(std::env::var_os("SHOAL_SIM_KEEP_DIRS").is_some())
                    .tempdir_in(base_dir())
                    .map_err(|e| format!("temp dir: {e}"))?;
                let (mut wal, _, _) =
                    Wal::open(dir.path(), wal_options()).map_err(|e| e.to_string())?;
                if initial != RecoveredState::default() {
                    let batch = WriteBatch {
                        seq: 0,
                        snapshot: initial.snapshot.clone(),
                        reset_log: true,
                        compact_to: None,
                        entries: initial.entries.clone(),
                        hard_state: Some(initial.hard_state),
                    };
                    wal.write(&batch).map_err(|e| e.to_string())?;
                    wal.sync().map_err(|e| e.to_string())?;
                }
                Backend::Wal { dir, wal: None }
            }
        };
        Ok(SimStorage {
            backend,
            fail_next_sync: false,
            full: false,
        })
    }

    /// The next `sync` fails (and makes nothing durable).
    pub fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// Fills the disk (`true`: every write fails) or frees space again.
    pub fn set_full(&mut self, full: bool) {
        self.full = full;
    }

    /// True while the disk is full.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Buffers a batch; nothing is buffered if the disk is full.
    pub fn write(&mut self, b: &WriteBatch) -> Result<(), StorageError> {
        if self.full {
            return Err(StorageError::Fault("disk full"));
        }
        match &mut self.backend {
            Backend::Mem(m) => m.write(b).map_err(broken),
            Backend::Wal { wal, .. } => wal
                .as_mut()
                .ok_or_else(|| broken("write to a stopped node"))?
                .write(b)
                .map_err(broken),
        }
    }

    /// Makes buffered batches durable; returns the highest durable batch sequence number.
    /// An injected fsync failure makes nothing durable: the caller must crash the node.
    pub fn sync(&mut self) -> Result<u64, StorageError> {
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(StorageError::Fault("fsync failed"));
        }
        match &mut self.backend {
            Backend::Mem(m) => m.sync().map_err(broken),
            Backend::Wal { wal, .. } => wal
                .as_mut()
                .ok_or_else(|| broken("sync of a stopped node"))?
                .sync()
                .map_err(broken),
        }
    }

    /// How much is unsynced (batches for Mem, bytes for Wal): the range a crash draws from.
    pub fn unsynced(&self) -> u64 {
        match &self.backend {
            Backend::Mem(m) => m.pending() as u64,
            Backend::Wal { wal, .. } => wal.as_ref().map_or(0, |w| w.unsynced_bytes() as u64),
        }
    }

    /// The node crashes; `survive` units of the unsynced data reach the disk anyway.
    pub fn crash(&mut self, survive: u64) -> Result<(), String> {
        self.fail_next_sync = false;
        match &mut self.backend {
            Backend::Mem(m) => {
                m.crash(survive as usize);
                Ok(())
            }
            Backend::Wal { wal, .. } => match wal.take() {
                Some(w) => w
                    .simulate_crash(survive as usize)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
        }
    }

    /// Stops the node cleanly (nothing unsynced survives or is lost beyond a crash's rules).
    pub fn stop(&mut self) {
        if let Backend::Wal { wal, .. } = &mut self.backend {
            *wal = None;
        }
    }

    /// What the node finds when it (re)starts; for the WAL this reopens the log from its files.
    pub fn recover(&mut self) -> Result<RecoveredState, String> {
        match &mut self.backend {
            Backend::Mem(m) => m.recover().map_err(|e| e.to_string()),
            Backend::Wal { dir, wal } => {
                let (w, state, _) =
                    Wal::open(dir.path(), wal_options()).map_err(|e| e.to_string())?;
                *wal = Some(w);
                Ok(state)
            }
        }
    }
}
