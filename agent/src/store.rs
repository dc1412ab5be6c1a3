//! The agent's data directory: the node's identity (id, cluster, key, certificate, CA), the
//! Raft log of a manager (`raft/`) and the control socket. Files are written to a temporary
//! name, fsynced, renamed and the directory fsynced, so a crash leaves the old or the new
//! version, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use shoal_raft::seal::Keyring;

/// A retired log's file: its term and vote.
const RETIRED_FILE: &str = "retired.json";

/// What a demoted manager keeps of its Raft data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// The last term it saw.
    pub term: u64,
    /// Whom it voted for in that term.
    pub vote: Option<u64>,
}

/// What the node remembers about itself across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    /// Its id.
    pub node_id: u64,
    /// Its cluster's id (32 hex digits).
    pub cluster_id: String,
    /// The address it advertises.
    pub advertise: String,
    /// Its hostname in the cluster.
    pub hostname: String,
    /// Members to contact first after a restart (`hex@ip:port`), refreshed as it runs.
    pub seeds: Vec<String>,
}

/// A node's identity as stored.
#[derive(Clone, Debug)]
pub struct StoredIdentity {
    /// `node.json`.
    pub node: NodeFile,
    /// The node's private key (PEM).
    pub key_pem: String,
    /// The node's certificate (PEM).
    pub cert_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_cert_pem: String,
}

/// The data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
    /// Under autolock, a manager's node key is sealed with its key-encryption key: the key
    /// that opens and seals `key.pem` (shared by every clone).
    key_seal: Arc<Mutex<Option<Arc<Keyring>>>>,
}

/// What a sealed `key.pem` starts with.
const SEALED_KEY_MAGIC: &[u8] = b"SHOAL-SEALED-KEY-1\n";
/// What the sealed node key is bound to.
const KEY_AAD: &[u8] = b"shoal node key";

impl DataDir {
    /// Opens (creating) the directory, private to the user.
    pub fn open(root: &Path) -> Result<DataDir> {
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create data directory {}", root.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            key_seal: Default::default(),
        })
    }

    /// Seals the node key written from now on with `ring` (`None`: plain), and opens a sealed
    /// one with it.
    pub fn set_key_seal(&self, ring: Option<Arc<Keyring>>) {
        *self.key_seal.lock().unwrap_or_else(|e| e.into_inner()) = ring;
    }

    fn seal(&self) -> Option<Arc<Keyring>> {
        self.key_seal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `key.pem` is sealed.
    pub fn key_sealed(&self) -> Result<bool> {
        let p = self.root.join("key.pem");
        match fs::read(&p) {
            Ok(b) => Ok(b.starts_with(SEALED_KEY_MAGIC)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    /// The bytes of `key.pem` for a key: sealed when a seal is set.
    fn key_file_bytes(&self, pem: &str) -> Result<Vec<u8>> {
        match self.seal() {
            None => Ok(pem.as_bytes().to_vec()),
            Some(ring) => {
                let mut out = SEALED_KEY_MAGIC.to_vec();
                let mut sealed = Vec::new();
                ring.seal(KEY_AAD, pem.as_bytes(), &mut sealed)
                    .map_err(|e| anyhow::anyhow!("cannot seal the node key: {e}"))?;
                out.extend_from_slice(&sealed);
                Ok(out)
            }
        }
    }

    /// The key in `key.pem`'s bytes, opened with the seal if it is sealed.
    fn open_key_file(&self, bytes: &[u8]) -> Result<String> {
        let Some(sealed) = bytes.strip_prefix(SEALED_KEY_MAGIC) else {
            return String::from_utf8(bytes.to_vec()).context("key.pem is not text");
        };
        let ring = self.seal().ok_or_else(|| {
            anyhow::anyhow!("key.pem is sealed with the key-encryption key, which is locked")
        })?;
        let plain = ring
            .open(KEY_AAD, sealed)
            .map_err(|e| anyhow::anyhow!("cannot open key.pem: {e}"))?;
        String::from_utf8(plain).context("key.pem is not text")
    }

    /// Rewrites `key.pem` sealed with the key-encryption key `kek` (`sealed`) or plain, opening
    /// it with `kek` if it is sealed now; the seal of later writes follows.
    pub fn set_key_form(&self, kek: &Arc<Keyring>, sealed: bool) -> Result<()> {
        let p = self.root.join("key.pem");
        let bytes = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        self.set_key_seal(Some(kek.clone()));
        let pem = self.open_key_file(&bytes)?;
        self.set_key_seal(sealed.then(|| kek.clone()));
        if bytes.starts_with(SEALED_KEY_MAGIC) != sealed {
            write_atomic(&p, &self.key_file_bytes(&pem)?, true)?;
        }
        Ok(())
    }

    /// The node file alone (a locked manager shows who it is without its key).
    pub fn load_node(&self) -> Result<Option<NodeFile>> {
        let p = self.root.join("node.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is malformed", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join(crate::cli::SOCKET_NAME)
    }

    /// The Raft log of a manager.
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this node holds Raft data (it is, or was until a crash, a manager).
    pub fn has_raft(&self) -> bool {
        self.raft_dir().join("wal").is_dir()
    }

    /// Retires the Raft data of a demoted manager, in two steps. First (here) its term and
    /// vote are written (`raft/retired.json`) and the log is kept: the removal may not be
    /// committed yet, and a node back as a voter without the entries it acknowledged could
    /// elect a leader missing committed ones. Once the leader confirms the removal committed,
    /// [`Self::forget_retired_log`] removes the log and the snapshots (the cluster's CA key,
    /// tokens and secrets): promoted again, the node starts an empty log with that term and
    /// vote (never voting twice in a term) and is brought up to date as a learner before it
    /// votes.
    pub fn retire_raft(&self, term: u64, vote: Option<u64>) -> Result<()> {
        let dir = self.raft_dir();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let retired = serde_json::to_vec(&Retired { term, vote })?;
        write_atomic(&dir.join(RETIRED_FILE), &retired, false)
    }

    /// Whether a retired log is still kept (its removal not yet confirmed committed).
    pub fn retired_log_kept(&self) -> bool {
        self.raft_retired() && self.has_raft()
    }

    /// The second step of a retirement: the log and the snapshots are removed, the term and
    /// vote stay.
    pub fn forget_retired_log(&self) -> Result<()> {
        let dir = self.raft_dir();
        for sub in ["wal", "snap"] {
            let d = dir.join(sub);
            if d.exists() {
                fs::remove_dir_all(&d).with_context(|| format!("cannot remove {}", d.display()))?;
            }
        }
        sync_dir(&dir)
    }

    /// Forgets a retirement once the new log that keeps its term and vote is written.
    pub fn clear_retired(&self) -> Result<()> {
        let path = self.raft_dir().join(RETIRED_FILE);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.raft_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// Whether the Raft data is retired (also the marker of older versions, which kept the
    /// whole log).
    pub fn raft_retired(&self) -> bool {
        self.raft_dir().join(RETIRED_FILE).exists() || self.raft_dir().join("RETIRED").exists()
    }

    /// The term and vote a retirement kept, if this is one (not an older version's marker).
    pub fn retired(&self) -> Result<Option<Retired>> {
        let path = self.raft_dir().join(RETIRED_FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Ends a retirement (the node is being promoted again): the term and vote to start an
    /// empty log with, once the retired log is gone; `None` when the log was kept (its removal
    /// never confirmed, or an older version's marker): it is reactivated as it is.
    pub fn unretire_raft(&self) -> Result<Option<Retired>> {
        if let Some(r) = self.retired()? {
            if !self.has_raft() {
                return Ok(Some(r));
            }
            self.clear_retired()?;
        }
        let marker = self.raft_dir().join("RETIRED");
        if marker.exists() {
            fs::remove_file(&marker)
                .with_context(|| format!("cannot remove {}", marker.display()))?;
            sync_dir(&self.raft_dir())?;
        }
        Ok(None)
    }

    /// Removes the Raft data (a departing node, or a new swarm).
    pub fn wipe_raft(&self) -> Result<()> {
        let dir = self.raft_dir();
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
            sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// Loads the identity, if this node is part of a cluster.
    pub fn load(&self) -> Result<Option<StoredIdentity>> {
        let node_path = self.root.join("node.json");
        if !node_path.exists() {
            return Ok(None);
        }
        self.finish_key_swap()?;
        let read = |name: &str| {
            let p = self.root.join(name);
            fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        let node: NodeFile = serde_json::from_str(&read("node.json")?)
            .with_context(|| format!("{} is malformed", node_path.display()))?;
        let key_path = self.root.join("key.pem");
        let key_bytes =
            fs::read(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
        Ok(Some(StoredIdentity {
            node,
            key_pem: self.open_key_file(&key_bytes)?,
            cert_pem: read("cert.pem")?,
            ca_cert_pem: read("ca.pem")?,
        }))
    }

    /// Saves an identity: key, certificate and CA first, `node.json` last (its presence means
    /// the rest is complete).
    pub fn save(&self, id: &StoredIdentity) -> Result<()> {
        write_atomic(
            &self.root.join("key.pem"),
            &self.key_file_bytes(&id.key_pem)?,
            true,
        )?;
        write_atomic(&self.root.join("cert.pem"), id.cert_pem.as_bytes(), false)?;
        write_atomic(&self.root.join("ca.pem"), id.ca_cert_pem.as_bytes(), false)?;
        self.save_node(&id.node)
    }

    /// Replaces the key and certificate by a renewed pair. Both are written to `.next` files
    /// first; then the key, then the certificate, is renamed into place. A crash between the
    /// two renames is finished at the next load ([`DataDir::load`]), and a crash before them
    /// keeps the old pair: the two files always match.
    pub fn save_key_and_cert(&self, key_pem: &str, cert_pem: &str) -> Result<()> {
        let (key_next, cert_next) = (
            self.root.join("key.pem.next"),
            self.root.join("cert.pem.next"),
        );
        write_atomic(&key_next, &self.key_file_bytes(key_pem)?, true)?;
        write_atomic(&cert_next, cert_pem.as_bytes(), false)?;
        fs::rename(&key_next, self.root.join("key.pem")).context("cannot install the new key")?;
        sync_dir(&self.root)?;
        fs::rename(&cert_next, self.root.join("cert.pem"))
            .context("cannot install the new certificate")?;
        sync_dir(&self.root)
    }

    /// Finishes or undoes a key swap interrupted by a crash: with both `.next` files present
    /// nothing was installed yet (drop them); with only the certificate's, the key is installed
    /// and the certificate must follow.
    fn finish_key_swap(&self) -> Result<()> {
        let (key_next, cert_next) = (
            self.root.join("key.pem.next"),
            self.root.join("cert.pem.next"),
        );
        match (key_next.exists(), cert_next.exists()) {
            (true, true) => {
                fs::remove_file(&key_next)?;
                fs::remove_file(&cert_next)?;
            }
            (false, true) => {
                fs::rename(&cert_next, self.root.join("cert.pem"))?;
            }
            (true, false) => fs::remove_file(&key_next)?,
            (false, false) => return Ok(()),
        }
        sync_dir(&self.root)
    }

    /// Saves `node.json` alone (the seeds change as the node runs).
    pub fn save_node(&self, node: &NodeFile) -> Result<()> {
        let json = serde_json::to_vec_pretty(node).context("encode node.json")?;
        write_atomic(&self.root.join("node.json"), &json, false)
    }

    /// The node ids removed from the swarm, as last learned (denied at every start, before
    /// any manager is reached).
    pub fn load_removed(&self) -> Vec<u64> {
        fs::read(self.root.join("removed.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the removed node ids.
    pub fn save_removed(&self, ids: &[u64]) -> Result<()> {
        let json = serde_json::to_vec(ids).context("encode removed.json")?;
        write_atomic(&self.root.join("removed.json"), &json, false)
    }

    /// The secret this node's QUIC endpoint derives its stateless-reset and connection-id keys
    /// from: 32 random bytes kept in `endpoint.key` (mode 0600), created on first use. It
    /// outlives certificate renewals, so a restarted agent can reset the connections its peers
    /// still hold to its previous run.
    pub fn endpoint_secret(&self) -> Result<Vec<u8>> {
        let path = self.root.join("endpoint.key");
        match fs::read(&path) {
            Ok(b) if b.len() == 32 => return Ok(b),
            Ok(_) | Err(_) => {}
        }
        let secret: [u8; 32] = rand::random();
        write_atomic(&path, &secret, true)?;
        Ok(secret.to_vec())
    }

    /// Forgets the identity and the Raft data (`swarm leave`).
    pub fn wipe_identity(&self) -> Result<()> {
        self.wipe_raft()?;
        // The Raft data keys go with the log they opened; the next identity is written plain.
        self.set_key_seal(None);
        for name in [
            "node.json",
            "cert.pem",
            "key.pem",
            "ca.pem",
            "removed.json",
            "raft-keys",
            "kek",
        ] {
            let p = self.root.join(name);
            if p.exists() {
                fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        sync_dir(&self.root)
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_leave_forgets_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert!(dir.load().unwrap().is_none());
        let id = StoredIdentity {
            node: NodeFile {
                node_id: 7,
                cluster_id: "ab".repeat(16),
                advertise: "127.0.0.1:4000".into(),
                hostname: "n1".into(),
                seeds: vec!["0000000000000001@127.0.0.1:4001".into()],
            },
            key_pem: "key".into(),
            cert_pem: "cert".into(),
            ca_cert_pem: "ca".into(),
        };
        dir.save(&id).unwrap();
        let back = dir.load().unwrap().unwrap();
        assert_eq!(back.node, id.node);
        assert_eq!(back.key_pem, "key");
        fs::create_dir_all(dir.raft_dir().join("wal")).unwrap();
        fs::create_dir_all(dir.raft_dir().join("snap")).unwrap();
        fs::write(dir.raft_dir().join("wal/0001.wal"), "state").unwrap();
        assert!(dir.has_raft());
        assert!(!dir.raft_retired());
        // Retired: the term and vote are written, the log kept until the removal is confirmed.
        dir.retire_raft(7, Some(3)).unwrap();
        assert!(dir.raft_retired() && dir.retired_log_kept());
        // Promoted again before that: the kept log is reactivated.
        assert_eq!(dir.unretire_raft().unwrap(), None);
        assert!(!dir.raft_retired() && dir.has_raft());
        dir.retire_raft(7, Some(3)).unwrap();
        // Confirmed: the log goes.
        dir.forget_retired_log().unwrap();
        assert!(dir.raft_retired() && !dir.has_raft() && !dir.retired_log_kept());
        assert!(!dir.raft_dir().join("snap").exists());
        assert_eq!(
            dir.retired().unwrap(),
            Some(Retired {
                term: 7,
                vote: Some(3)
            })
        );
        // Promoted again: an empty log and the term and vote to start with, forgotten once
        // the new log has them.
        assert_eq!(dir.unretire_raft().unwrap().unwrap().term, 7);
        assert!(!dir.has_raft());
        dir.clear_retired().unwrap();
        assert!(!dir.raft_retired());
        // An older version's marker: the log it kept is reactivated.
        fs::create_dir_all(dir.raft_dir().join("wal")).unwrap();
        fs::write(dir.raft_dir().join("RETIRED"), "demoted\n").unwrap();
        assert!(dir.raft_retired());
        assert_eq!(dir.unretire_raft().unwrap(), None);
        assert!(!dir.raft_retired() && dir.has_raft());
        dir.retire_raft(8, None).unwrap();
        dir.wipe_identity().unwrap();
        assert!(dir.load().unwrap().is_none());
        assert!(!dir.has_raft());
    }

    #[test]
    fn a_sealed_node_key_opens_only_with_its_key_encryption_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let id = StoredIdentity {
            node: NodeFile {
                node_id: 7,
                cluster_id: "ab".repeat(16),
                advertise: "127.0.0.1:4000".into(),
                hostname: "n1".into(),
                seeds: vec![],
            },
            key_pem: "-----BEGIN PRIVATE KEY-----\nk\n".into(),
            cert_pem: "cert".into(),
            ca_cert_pem: "ca".into(),
        };
        dir.save(&id).unwrap();
        let kek = Arc::new(Keyring::new(0, &[5u8; 32]).unwrap());
        dir.set_key_form(&kek, true).unwrap();
        assert!(dir.key_sealed().unwrap());
        let raw = fs::read(tmp.path().join("key.pem")).unwrap();
        assert!(!raw.windows(11).any(|w| w == b"PRIVATE KEY"));
        // Another process without the key: the identity does not load; with it, it does.
        let other = DataDir::open(tmp.path()).unwrap();
        let err = format!("{:#}", other.load().unwrap_err());
        assert!(err.contains("sealed"), "{err}");
        assert_eq!(other.load_node().unwrap().unwrap().node_id, 7);
        other.set_key_seal(Some(Arc::new(Keyring::new(0, &[6u8; 32]).unwrap())));
        assert!(other.load().is_err(), "another key does not open it");
        other.set_key_seal(Some(kek.clone()));
        assert_eq!(other.load().unwrap().unwrap().key_pem, id.key_pem);
        // A renewal while sealed writes a sealed key.
        other
            .save_key_and_cert("-----BEGIN PRIVATE KEY-----\nk2\n", "cert2")
            .unwrap();
        assert!(other.key_sealed().unwrap());
        // Plain again.
        other.set_key_form(&kek, false).unwrap();
        assert!(!other.key_sealed().unwrap());
        assert!(DataDir::open(tmp.path())
            .unwrap()
            .load()
            .unwrap()
            .unwrap()
            .key_pem
            .ends_with("k2\n"));
    }

    #[test]
    fn an_interrupted_key_swap_never_leaves_a_mismatched_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let id = StoredIdentity {
            node: NodeFile {
                node_id: 7,
                cluster_id: "ab".repeat(16),
                advertise: "127.0.0.1:4000".into(),
                hostname: "n1".into(),
                seeds: Vec::new(),
            },
            key_pem: "key1".into(),
            cert_pem: "cert1".into(),
            ca_cert_pem: "ca".into(),
        };
        dir.save(&id).unwrap();
        // Crash after writing both .next files: the old pair stays.
        fs::write(tmp.path().join("key.pem.next"), "key2").unwrap();
        fs::write(tmp.path().join("cert.pem.next"), "cert2").unwrap();
        let back = dir.load().unwrap().unwrap();
        assert_eq!(
            (back.key_pem.as_str(), back.cert_pem.as_str()),
            ("key1", "cert1")
        );
        // Crash between the two renames: the new pair is completed.
        fs::write(tmp.path().join("key.pem"), "key3").unwrap();
        fs::write(tmp.path().join("cert.pem.next"), "cert3").unwrap();
        let back = dir.load().unwrap().unwrap();
        assert_eq!(
            (back.key_pem.as_str(), back.cert_pem.as_str()),
            ("key3", "cert3")
        );
        // A complete swap.
        dir.save_key_and_cert("key4", "cert4").unwrap();
        let back = dir.load().unwrap().unwrap();
        assert_eq!(
            (back.key_pem.as_str(), back.cert_pem.as_str()),
            ("key4", "cert4")
        );
        assert!(!tmp.path().join("cert.pem.next").exists());
    }

    #[test]
    fn a_malformed_node_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("node.json"), b"{not json").unwrap();
        let e = dir.load().unwrap_err();
        assert!(format!("{e:#}").contains("is malformed"), "{e:#}");
    }
}
