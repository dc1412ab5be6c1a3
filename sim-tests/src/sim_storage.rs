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

/// One node's storage.
pub enum SimStorage {
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

fn base_dir() -> PathBuf {
    // tmpfs when there is one: the simulation models crashes itself and wants speed.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 16 << 10,
        fsync: false,
        keep_snapshots: 2,
        ..WalOptions::default()
    }
}

impl SimStorage {
    /// Storage holding `initial` durably.
    pub fn new(kind: StorageKind, initial: RecoveredState) -> Result<SimStorage, String> {
        match kind {
            StorageKind::Mem => Ok(SimStorage::Mem(MemStorage::new(initial))),
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
                Ok(SimStorage::Wal { dir, wal: None })
            }
        }
    }

    /// Buffers a batch.
    pub fn write(&mut self, b: &WriteBatch) -> Result<(), String> {
        match self {
            SimStorage::Mem(m) => m.write(b).map_err(|e| e.to_string()),
            SimStorage::Wal { wal, .. } => wal
                .as_mut()
                .ok_or("write to a stopped node")?
                .write(b)
                .map_err(|e| e.to_string()),
        }
    }

    /// Makes buffered batches durable; returns the highest durable batch sequence number.
    pub fn sync(&mut self) -> Result<u64, String> {
        match self {
            SimStorage::Mem(m) => m.sync().map_err(|e| e.to_string()),
            SimStorage::Wal { wal, .. } => wal
                .as_mut()
                .ok_or("sync of a stopped node")?
                .sync()
                .map_err(|e| e.to_string()),
        }
    }

    /// How much is unsynced (batches for Mem, bytes for Wal): the range a crash draws from.
    pub fn unsynced(&self) -> u64 {
        match self {
            SimStorage::Mem(m) => m.pending() as u64,
            SimStorage::Wal { wal, .. } => wal.as_ref().map_or(0, |w| w.unsynced_bytes() as u64),
        }
    }

    /// The node crashes; `survive` units of the unsynced data reach the disk anyway.
    pub fn crash(&mut self, survive: u64) -> Result<(), String> {
        match self {
            SimStorage::Mem(m) => {
                m.crash(survive as usize);
                Ok(())
            }
            SimStorage::Wal { wal, .. } => match wal.take() {
                Some(w) => w
                    .simulate_crash(survive as usize)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
        }
    }

    /// Stops the node cleanly (nothing unsynced survives or is lost beyond a crash's rules).
    pub fn stop(&mut self) {
        if let SimStorage::Wal { wal, .. } = self {
            *wal = None;
        }
    }

    /// What the node finds when it (re)starts; for the WAL this reopens the log from its files.
    pub fn recover(&mut self) -> Result<RecoveredState, String> {
        match self {
            SimStorage::Mem(m) => m.recover().map_err(|e| e.to_string()),
            SimStorage::Wal { dir, wal } => {
                let (w, state, _) =
                    Wal::open(dir.path(), wal_options()).map_err(|e| e.to_string())?;
                *wal = Some(w);
                Ok(state)
            }
        }
    }
}
