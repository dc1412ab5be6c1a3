//! Reading Raft entries and snapshots written by earlier versions: postcard is not
//! self-describing, so the decoder is told which generation of the format the bytes are, and a
//! field added since is filled with its default without reading a byte.
//!
//! Generations: 1 (snapshots 5–6, commands 3) has neither task secrets nor the unlock key; 2
//! (snapshot 7, command 4) has task secrets; 3 (snapshot 8, command 5) adds the unlock key; 4
//! (snapshot 9, command 6) adds the ports a task answers on to its status.

use std::cell::Cell;

use serde::{Deserialize, Deserializer};

use crate::secrets::SecretRef;
use crate::service::TaskPort;

/// The generation written now.
const CURRENT: u8 = 4;

thread_local! {
    /// The generation of the bytes being decoded on this thread.
    static GENERATION: Cell<u8> = const { Cell::new(CURRENT) };
}

/// Runs `f` (a decode) reading bytes of generation `generation`.
pub(crate) fn decoding<T>(generation: u8, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            GENERATION.with(|g| g.set(CURRENT));
        }
    }
    GENERATION.with(|g| g.set(generation));
    let _reset = Reset;
    f()
}

fn older_than(generation: u8) -> bool {
    GENERATION.with(Cell::get) < generation
}

/// `TaskSpec::secrets`: empty in generation 1, read as usual since.
pub(crate) fn secret_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretRef>, D::Error> {
    if older_than(2) {
        Ok(Vec::new())
    } else {
        Vec::deserialize(d)
    }
}

/// `TaskStatus::ports`: none before generation 4.
pub(crate) fn task_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TaskPort>, D::Error> {
    if older_than(4) {
        Ok(Vec::new())
    } else {
        Vec::deserialize(d)
    }
}

/// `ClusterInfo::unlock_key`: empty (no autolock) before generation 3.
pub(crate) fn unlock_key<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    if older_than(3) {
        Ok(String::new())
    } else {
        String::deserialize(d)
    }
}
