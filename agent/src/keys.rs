//! The keys that encrypt a manager's Raft data at rest. The WAL and snapshots are sealed with
//! data keys ([`shoal_raft::seal`]); the data keys are stored in `raft-keys` in the data
//! directory, each sealed with the key-encryption key in `kek`. Both files sit outside `raft/`,
//! so a copy of the Raft directory alone (a backup, a disk image of that volume) reads as noise.
//! With autolock the key-encryption key is itself sealed with the swarm's unlock key, which no
//! disk holds in the clear: a restarted manager cannot read its log until an operator gives the
//! key (`swarm unlock`), and a copy of the whole data directory reads as noise too.
//!
//! Files are written atomically (temporary name, fsync, rename, directory fsync) and private
//! (mode 0600); a damaged file is an error naming it, never a silent new key (that would make
//! the log unreadable).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use shoal_raft::seal::{random_key, Keyring, KEY_LEN};

use crate::store::write_atomic;

/// The key-encryption key's file.
const KEK_FILE: &str = "kek";
/// The sealed data keys' file.
const DEK_FILE: &str = "raft-keys";
/// What a key-encryption key file sealed with an unlock key starts with (a plain one is 32
/// bytes).
const LOCKED_MAGIC: &[u8] = b"SHOALKEK1\n";
/// What the sealed key-encryption key is bound to.
const KEK_AAD: &[u8] = b"shoal key-encryption key";

/// The message of a locked manager.
pub const LOCKED: &str = "this node is locked: run shoal swarm unlock";

/// `raft-keys`: the data keys, each sealed with the key-encryption key.
#[derive(Debug, Serialize, Deserialize)]
struct DekFile {
    /// The key new data is sealed with.
    current: u32,
    /// Every key still needed, sealed (hex).
    keys: Vec<SealedKey>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SealedKey {
    id: u32,
    sealed: String,
}

/// What a sealed data key is bound to: its id.
fn dek_aad(id: u32) -> Vec<u8> {
    format!("shoal data key {id}").into_bytes()
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex (either case); `None` if `s` is not hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Data keys by id, in the order they were made.
type Keys = Vec<(u32, [u8; KEY_LEN])>;

/// The Raft data keys of one data directory.
#[derive(Clone)]
pub struct RaftKeys {
    root: PathBuf,
    /// The unlock key the key-encryption key is sealed with, when autolock is on.
    unlock: Option<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for RaftKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftKeys")
            .field("root", &self.root)
            .field("unlock", &self.unlock.map(|_| "…"))
            .finish()
    }
}

impl RaftKeys {
    /// The keys of the data directory `root`.
    pub fn new(root: &Path) -> RaftKeys {
        RaftKeys {
            root: root.to_path_buf(),
            unlock: None,
        }
    }

    /// The same keys, opened with unlock key `key` (autolock).
    pub fn with_unlock(mut self, key: Option<[u8; KEY_LEN]>) -> RaftKeys {
        self.unlock = key;
        self
    }

    /// The unlock key these keys are opened with.
    pub fn unlock_key(&self) -> Option<[u8; KEY_LEN]> {
        self.unlock
    }

    /// Whether the key-encryption key is sealed with an unlock key (autolock).
    pub fn is_locked(&self) -> Result<bool> {
        match std::fs::read(self.kek_path()) {
            Ok(b) => Ok(b.starts_with(LOCKED_MAGIC)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.kek_path().display())),
        }
    }

    /// The key-encryption key (it also seals a manager's node key under autolock).
    pub fn kek_keyring(&self) -> Result<Arc<Keyring>> {
        Ok(Arc::new(self.kek()?))
    }

    /// Whether this directory has a key-encryption key.
    pub fn exists(&self) -> bool {
        self.kek_path().exists()
    }

    /// Checks that the unlock key opens the key-encryption key (and so every data key).
    pub fn check(&self) -> Result<()> {
        let kek = self.kek()?;
        self.open_all(&kek).map(|_| ())
    }

    /// Seals the key-encryption key with `key` (autolock on) or stores it plain (`None`),
    /// atomically; these keys use the new unlock key from then on.
    pub fn set_unlock_key(&mut self, key: Option<[u8; KEY_LEN]>) -> Result<()> {
        let kek = self.kek_bytes()?;
        let bytes = match &key {
            None => kek.to_vec(),
            Some(k) => {
                let ring = Keyring::new(0, k).map_err(|e| anyhow!(e))?;
                let mut out = LOCKED_MAGIC.to_vec();
                let mut sealed = Vec::new();
                ring.seal(KEK_AAD, &kek, &mut sealed)
                    .map_err(|e| anyhow!(e))?;
                out.extend_from_slice(&sealed);
                out
            }
        };
        write_atomic(&self.kek_path(), &bytes, true)?;
        self.unlock = key;
        Ok(())
    }

    /// Removes the keys (a demoted manager: nothing is left that they open).
    pub fn destroy(&self) -> Result<()> {
        for p in [self.dek_path(), self.kek_path()] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
            }
        }
        Ok(())
    }

    fn kek_path(&self) -> PathBuf {
        self.root.join(KEK_FILE)
    }

    fn dek_path(&self) -> PathBuf {
        self.root.join(DEK_FILE)
    }

    /// The key-encryption key as a keyring (id 0), created on first use.
    fn kek(&self) -> Result<Keyring> {
        Keyring::new(0, &self.kek_bytes()?).map_err(|e| anyhow!(e))
    }

    /// The key-encryption key, opened with the unlock key if it is sealed, created on first
    /// use.
    fn kek_bytes(&self) -> Result<[u8; KEY_LEN]> {
        let path = self.kek_path();
        let key: [u8; KEY_LEN] = match std::fs::read(&path) {
            Ok(bytes) if bytes.starts_with(LOCKED_MAGIC) => {
                let unlock = self.unlock.ok_or_else(|| anyhow!(LOCKED))?;
                let ring = Keyring::new(0, &unlock).map_err(|e| anyhow!(e))?;
                let plain = ring
                    .open(KEK_AAD, &bytes[LOCKED_MAGIC.len()..])
                    .map_err(|_| {
                        anyhow!(
                            "invalid unlock key: it does not open this manager's data (nothing \
                             changed)"
                        )
                    })?;
                plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow!("{} is damaged", path.display()))?
            }
            Ok(bytes) => bytes.as_slice().try_into().map_err(|_| {
                anyhow!(
                    "{} is damaged: {} bytes instead of {KEY_LEN}",
                    path.display(),
                    bytes.len()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.dek_path().exists() {
                    bail!(
                        "{} is missing: the data keys in {} cannot be opened without it",
                        path.display(),
                        self.dek_path().display()
                    );
                }
                let key = random_key().map_err(|e| anyhow!(e))?;
                write_atomic(&path, &key, true)?;
                key
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(key)
    }

    fn read_deks(&self) -> Result<Option<DekFile>> {
        let path = self.dek_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn write_deks(&self, kek: &Keyring, current: u32, keys: &[(u32, [u8; KEY_LEN])]) -> Result<()> {
        let mut file = DekFile {
            current,
            keys: Vec::new(),
        };
        for (id, key) in keys {
            let mut sealed = Vec::new();
            kek.seal(&dek_aad(*id), key, &mut sealed)
                .map_err(|e| anyhow!(e))?;
            file.keys.push(SealedKey {
                id: *id,
                sealed: hex(&sealed),
            });
        }
        write_atomic(&self.dek_path(), &serde_json::to_vec_pretty(&file)?, true)
    }

    /// Every data key (id, key) and the current id, opened with the key-encryption key.
    fn open_all(&self, kek: &Keyring) -> Result<Option<(u32, Keys)>> {
        let path = self.dek_path();
        let Some(file) = self.read_deks()? else {
            return Ok(None);
        };
        let mut keys = Vec::new();
        for k in &file.keys {
            let sealed = unhex(&k.sealed)
                .ok_or_else(|| anyhow!("{} is damaged: key {} is not hex", path.display(), k.id))?;
            let plain = kek.open(&dek_aad(k.id), &sealed).map_err(|e| {
                anyhow!(
                    "cannot open data key {} of {}: {e} (is {} the key it was sealed with?)",
                    k.id,
                    path.display(),
                    self.kek_path().display()
                )
            })?;
            let key: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| {
                anyhow!(
                    "{} is damaged: key {} has a bad length",
                    path.display(),
                    k.id
                )
            })?;
            keys.push((k.id, key));
        }
        if !keys.iter().any(|(id, _)| *id == file.current) {
            bail!(
                "{} is damaged: its current key {} is not in it",
                path.display(),
                file.current
            );
        }
        Ok(Some((file.current, keys)))
    }

    fn keyring(current: u32, keys: &[(u32, [u8; KEY_LEN])]) -> Result<Arc<Keyring>> {
        let mut ring: Option<Keyring> = None;
        for (id, key) in keys.iter().filter(|(id, _)| *id == current) {
            ring = Some(Keyring::new(*id, key).map_err(|e| anyhow!(e))?);
        }
        let mut ring = ring.ok_or_else(|| anyhow!("no current data key"))?;
        for (id, key) in keys.iter().filter(|(id, _)| *id != current) {
            ring.add(*id, key).map_err(|e| anyhow!(e))?;
        }
        Ok(Arc::new(ring))
    }

    /// The data keys, created (a first key, and the key-encryption key) on first use.
    pub fn load_or_create(&self) -> Result<Arc<Keyring>> {
        let kek = self.kek()?;
        if let Some((current, keys)) = self.open_all(&kek)? {
            return Self::keyring(current, &keys);
        }
        let keys = vec![(1, random_key().map_err(|e| anyhow!(e))?)];
        self.write_deks(&kek, 1, &keys)?;
        Self::keyring(1, &keys)
    }

    /// A new current data key (the old ones kept, still needed to read older files): new data
    /// is sealed with it once the log is given the returned keyring.
    pub fn rotate(&self) -> Result<Arc<Keyring>> {
        let kek = self.kek()?;
        let (_, mut keys) = self
            .open_all(&kek)?
            .ok_or_else(|| anyhow!("no data keys to rotate"))?;
        let id = keys.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        keys.push((id, random_key().map_err(|e| anyhow!(e))?));
        self.write_deks(&kek, id, &keys)?;
        Self::keyring(id, &keys)
    }

    /// Forgets the data keys no file needs any more (`in_use`, from the log), keeping the
    /// current one.
    pub fn forget_unused(&self, in_use: &std::collections::BTreeSet<u32>) -> Result<()> {
        let kek = self.kek()?;
        let Some((current, keys)) = self.open_all(&kek)? else {
            return Ok(());
        };
        let kept: Vec<(u32, [u8; KEY_LEN])> = keys
            .into_iter()
            .filter(|(id, _)| *id == current || in_use.contains(id))
            .collect();
        self.write_deks(&kek, current, &kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_kept_rotated_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let keys = RaftKeys::new(dir.path());
        let first = keys.load_or_create().unwrap();
        assert_eq!(first.current_id(), 1);
        let mut sealed = Vec::new();
        first.seal(b"x", b"secret state", &mut sealed).unwrap();
        // The same key after a restart.
        let again = keys.load_or_create().unwrap();
        assert_eq!(again.open(b"x", &sealed).unwrap(), b"secret state");
        // Files are private; the data key is not stored in plaintext.
        use std::os::unix::fs::PermissionsExt;
        for f in [KEK_FILE, DEK_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // Rotation: a new current key, the old one still opens old data.
        let rotated = keys.rotate().unwrap();
        assert_eq!(rotated.current_id(), 2);
        assert_eq!(rotated.open(b"x", &sealed).unwrap(), b"secret state");
        assert_eq!(keys.load_or_create().unwrap().current_id(), 2);
        // Once nothing uses key 1, it is forgotten.
        keys.forget_unused(&[2].into()).unwrap();
        let now = keys.load_or_create().unwrap();
        assert!(now.has(2) && !now.has(1));
    }

    #[test]
    fn autolock_seals_the_key_encryption_key_with_the_unlock_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = RaftKeys::new(dir.path());
        let ring = keys.load_or_create().unwrap();
        let mut sealed = Vec::new();
        ring.seal(b"x", b"state", &mut sealed).unwrap();
        let plain_kek = std::fs::read(dir.path().join(KEK_FILE)).unwrap();
        assert!(!keys.is_locked().unwrap());

        let unlock = [9u8; KEY_LEN];
        keys.set_unlock_key(Some(unlock)).unwrap();
        assert!(keys.is_locked().unwrap());
        let file = std::fs::read(dir.path().join(KEK_FILE)).unwrap();
        assert!(
            !file.windows(KEY_LEN).any(|w| w == plain_kek.as_slice()),
            "the key-encryption key is no longer on disk in the clear"
        );
        // A restart without the key: locked, nothing opens.
        let restarted = RaftKeys::new(dir.path());
        let err = restarted.load_or_create().unwrap_err().to_string();
        assert_eq!(err, LOCKED);
        // A wrong key: refused, and nothing changed on disk.
        let wrong = RaftKeys::new(dir.path()).with_unlock(Some([8u8; KEY_LEN]));
        let err = wrong.check().unwrap_err().to_string();
        assert!(err.contains("invalid unlock key"), "{err}");
        assert_eq!(std::fs::read(dir.path().join(KEK_FILE)).unwrap(), file);
        // The right key opens the same data keys.
        let right = RaftKeys::new(dir.path()).with_unlock(Some(unlock));
        right.check().unwrap();
        assert_eq!(
            right.load_or_create().unwrap().open(b"x", &sealed).unwrap(),
            b"state"
        );
        // Rotated to another unlock key, then autolock off: the old key no longer opens it,
        // and without autolock no key is needed.
        let mut right = right;
        right.set_unlock_key(Some([7u8; KEY_LEN])).unwrap();
        assert!(RaftKeys::new(dir.path())
            .with_unlock(Some(unlock))
            .check()
            .is_err());
        right.set_unlock_key(None).unwrap();
        assert!(!right.is_locked().unwrap());
        assert_eq!(std::fs::read(dir.path().join(KEK_FILE)).unwrap(), plain_kek);
        RaftKeys::new(dir.path()).check().unwrap();
        // A demoted manager destroys them.
        right.destroy().unwrap();
        assert!(!dir.path().join(KEK_FILE).exists() && !dir.path().join(DEK_FILE).exists());
    }

    #[test]
    fn damaged_or_mismatched_key_files_are_errors_not_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = RaftKeys::new(dir.path());
        keys.load_or_create().unwrap();
        let deks = std::fs::read(dir.path().join(DEK_FILE)).unwrap();
        // Another key-encryption key: the data keys do not open.
        std::fs::write(dir.path().join(KEK_FILE), [7u8; KEY_LEN]).unwrap();
        let err = keys.load_or_create().unwrap_err().to_string();
        assert!(err.contains("cannot open data key 1"), "{err}");
        // A truncated key-encryption key, a damaged key file: named.
        std::fs::write(dir.path().join(KEK_FILE), [7u8; 5]).unwrap();
        let err = keys.load_or_create().unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        std::fs::remove_file(dir.path().join(KEK_FILE)).unwrap();
        let err = keys.load_or_create().unwrap_err().to_string();
        assert!(err.contains("kek is missing"), "{err}");
        std::fs::write(dir.path().join(KEK_FILE), [7u8; KEY_LEN]).unwrap();
        std::fs::write(dir.path().join(DEK_FILE), &deks[..deks.len() / 2]).unwrap();
        let err = format!("{:#}", keys.load_or_create().unwrap_err());
        assert!(err.contains("raft-keys is damaged"), "{err}");
    }
}
