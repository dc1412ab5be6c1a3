//! Encryption at rest for the write-ahead log and snapshots: every WAL record and every snapshot's
//! data is sealed with an AEAD (ChaCha20-Poly1305, from ring) under a data key of a [`Keyring`].
//!
//! A sealed blob is `[key id: u32][nonce: 12 bytes][ciphertext + 16-byte tag]`. The nonce is
//! random for every blob (a torn tail rewritten at the same offset must not reuse one), and the
//! key id names the data key, so that after a rotation the records written under the previous
//! key stay readable until compaction has removed them. What the keys themselves are protected
//! by (a key-encryption key, an unlock key) is the caller's business; this module only uses them.

use std::collections::BTreeMap;
use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a data key in bytes.
pub const KEY_LEN: usize = 32;
/// Bytes a sealed blob adds to its plaintext: key id, nonce and tag.
pub const OVERHEAD: usize = 4 + NONCE_LEN + 16;

/// Data keys by id, one of them current (the one new records are sealed with).
pub struct Keyring {
    current: u32,
    keys: BTreeMap<u32, LessSafeKey>,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn aead_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, String> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| "invalid data key".to_string())
}

impl Keyring {
    /// A keyring whose current data key is `key`, named `id`.
    pub fn new(id: u32, key: &[u8; KEY_LEN]) -> Result<Keyring, String> {
        Ok(Keyring {
            current: id,
            keys: BTreeMap::from([(id, aead_key(key)?)]),
            rng: SystemRandom::new(),
        })
    }

    /// Adds an older key, still needed to read what was sealed with it.
    pub fn add(&mut self, id: u32, key: &[u8; KEY_LEN]) -> Result<(), String> {
        self.keys.insert(id, aead_key(key)?);
        Ok(())
    }

    /// The id of the key new data is sealed with.
    pub fn current_id(&self) -> u32 {
        self.current
    }

    /// Whether the keyring holds key `id`.
    pub fn has(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    /// Appends `plain` sealed with the current key to `out`, bound to `aad` (the context it
    /// belongs to, checked when opened). Fails only if the system's random source does.
    pub fn seal(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "the system's random source failed".to_string())?;
        let key = self
            .keys
            .get(&self.current)
            .ok_or_else(|| "the current data key is missing".to_string())?;
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .map_err(|_| "sealing failed".to_string())?;
        out.extend_from_slice(&self.current.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(())
    }

    /// Opens a blob [`Keyring::seal`] made with the same `aad`: the plaintext, or why not (an
    /// unknown key, or data that is not what was sealed).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < OVERHEAD {
            return Err("sealed data too short".into());
        }
        let id = u32::from_le_bytes([sealed[0], sealed[1], sealed[2], sealed[3]]);
        let key = self
            .keys
            .get(&id)
            .ok_or_else(|| format!("sealed with data key {id}, which this node does not have"))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[4..4 + NONCE_LEN]);
        let mut data = sealed[4 + NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .map_err(|_| format!("data sealed with key {id} does not authenticate"))?;
        Ok(plain.to_vec())
    }
}

/// A new random data key.
pub fn random_key() -> Result<[u8; KEY_LEN], String> {
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_context() {
        let k1 = random_key().unwrap();
        let k2 = random_key().unwrap();
        let ring1 = Keyring::new(1, &k1).unwrap();
        let mut blob = Vec::new();
        ring1.seal(b"ctx", b"the CA key", &mut blob).unwrap();
        assert_eq!(blob.len(), b"the CA key".len() + OVERHEAD);
        assert!(!blob.windows(6).any(|w| w == b"CA key"));
        assert_eq!(ring1.open(b"ctx", &blob).unwrap(), b"the CA key");
        // Another context, a flipped bit, a cut, another key: refused.
        assert!(ring1.open(b"other", &blob).is_err());
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(ring1.open(b"ctx", &bad).is_err());
        assert!(ring1.open(b"ctx", &blob[..10]).is_err());
        let ring2 = Keyring::new(1, &k2).unwrap();
        assert!(ring2.open(b"ctx", &blob).is_err());
        // After a rotation the old key still reads what it sealed; new data uses the new key.
        let mut rotated = Keyring::new(2, &k2).unwrap();
        assert!(rotated.open(b"ctx", &blob).unwrap_err().contains("key 1"));
        rotated.add(1, &k1).unwrap();
        assert_eq!(rotated.open(b"ctx", &blob).unwrap(), b"the CA key");
        let mut newer = Vec::new();
        rotated.seal(b"ctx", b"x", &mut newer).unwrap();
        assert_eq!(&newer[..4], &2u32.to_le_bytes());
        // Two seals of the same data differ (random nonces).
        let mut again = Vec::new();
        ring1.seal(b"ctx", b"the CA key", &mut again).unwrap();
        assert_ne!(again, blob);
    }
}
