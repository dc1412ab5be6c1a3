//! Reading Raft entries and snapshots written before the task spec had its secrets: postcard
//! is not self-describing, so the decoder of an older version is told that the field is absent
//! and fills it with its default without reading a byte.

use std::cell::Cell;

use serde::{Deserialize, Deserializer};

use crate::secrets::SecretRef;

thread_local! {
    /// Set while bytes of a version before secrets are decoded on this thread.
    static BEFORE_SECRETS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a decode) reading task specs that have no secrets field.
pub(crate) fn before_secrets<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BEFORE_SECRETS.with(|b| b.set(false));
        }
    }
    BEFORE_SECRETS.with(|b| b.set(true));
    let _reset = Reset;
    f()
}

/// `TaskSpec::secrets`: empty in old bytes, read as usual otherwise.
pub(crate) fn secret_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretRef>, D::Error> {
    if BEFORE_SECRETS.with(Cell::get) {
        Ok(Vec::new())
    } else {
        Vec::deserialize(d)
    }
}
