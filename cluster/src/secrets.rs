//! Secrets and configs: named blobs of at most 500 KiB (as Swarm's) kept in the replicated
//! state, which managers encrypt at rest. A secret's data is never shown back (inspect gives
//! its metadata only); a config's is. Names are unique per kind; a removal is refused while a
//! service uses the object (services refer to them by id).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::service::object_id_string;
use crate::state::ClusterState;
use crate::types::validate_label;

/// A secret's or config's id (16 hex digits when shown).
pub type SecretId = u64;

/// Largest secret or config, as Swarm's: 500 KiB.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// Most secrets and configs (each kind) a swarm holds.
pub const MAX_SECRETS: usize = 10_000;

/// Secret or config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretKind {
    /// Shown to tasks only; its data is never shown back.
    Secret,
    /// Configuration; inspect shows its data.
    Config,
}

impl SecretKind {
    /// `secret` or `config`, as messages say it.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::Secret => "secret",
            SecretKind::Config => "config",
        }
    }
}

/// What `secret create` / `config create` give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSpec {
    /// Unique among objects of its kind.
    pub name: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// The content (hex in JSON, bytes in the binary encoding).
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

/// Bytes as a hex string in human-readable formats (the control API's JSON: half the size of a
/// list of numbers, so 500 KiB fits a request), as bytes in binary ones (Raft, postcard).
mod hex_bytes {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            s.serialize_str(&hex)
        } else {
            s.serialize_bytes(data)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let hex = String::deserialize(d)?;
            if hex.len() % 2 != 0 {
                return Err(D::Error::custom("odd number of hex digits"));
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| D::Error::custom("not hex"))
                })
                .collect()
        } else {
            Ok(serde_bytes_vec(d)?)
        }
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl SecretSpec {
    /// Checks the name (Docker's rule: 1–64 letters, digits, `-`, `_`, `.`, starting and ending
    /// with a letter or digit), the labels and the size (1 byte to 500 KiB).
    pub fn validate(&self, kind: SecretKind) -> Result<(), ClusterError> {
        let n = &self.name;
        let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        let ok = !n.is_empty()
            && n.len() <= 64
            && edge(n.chars().next())
            && edge(n.chars().last())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(ClusterError::Invalid(format!(
                "invalid {} name {n:?}: 1 to 64 letters, digits, '-', '_' or '.', starting and \
                 ending with a letter or digit",
                kind.name()
            )));
        }
        if self.labels.len() > 64 {
            return Err(ClusterError::Invalid("too many labels: at most 64".into()));
        }
        for (k, v) in &self.labels {
            validate_label(k, v)?;
        }
        if self.data.is_empty() {
            return Err(ClusterError::Invalid(format!(
                "{} data is empty",
                kind.name()
            )));
        }
        if self.data.len() > MAX_SECRET_BYTES {
            return Err(ClusterError::Invalid(format!(
                "{} data is {} bytes: at most {MAX_SECRET_BYTES} (500 KiB)",
                kind.name(),
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// Most secrets and configs one service's tasks get.
pub const MAX_SECRET_REFS: usize = 100;

/// A secret or config a service's tasks get as a file (`--secret src=NAME,target=…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// Secret or config.
    pub kind: SecretKind,
    /// The object's id (0 in a request: the leader resolves `name`).
    pub id: SecretId,
    /// The object's name.
    pub name: String,
    /// The file: a relative path goes under `/run/secrets/` (secrets) or `/` (configs) in a
    /// container and under `$SHOAL_SECRETS_DIR` / `$SHOAL_CONFIGS_DIR` for a process; a
    /// container may also name an absolute path.
    pub target: String,
    /// The file's owner.
    pub uid: u32,
    /// The file's group.
    pub gid: u32,
    /// The file's mode (0: the default, 0444 in containers as Swarm's, 0400 for processes).
    pub mode: u32,
}

impl SecretRef {
    /// Checks the name, the target (no `..`, `.` or empty component, no NUL; relative for a
    /// process task) and the mode.
    pub fn validate(&self, process: bool) -> Result<(), ClusterError> {
        let what = self.kind.name();
        let invalid =
            |why: String| ClusterError::Invalid(format!("invalid {what} {}: {why}", self.name));
        SecretSpec {
            name: self.name.clone(),
            labels: BTreeMap::new(),
            data: vec![0],
        }
        .validate(self.kind)?;
        let t = &self.target;
        if t.is_empty() || t.len() > 1024 || t.contains('\0') {
            return Err(invalid(format!("target {t:?}: 1 to 1024 bytes, no NUL")));
        }
        let rel = t.strip_prefix('/').unwrap_or(t);
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(invalid(format!(
                "target {t:?}: a file path without empty, '.' or '..' components"
            )));
        }
        if process && t.starts_with('/') {
            return Err(invalid(format!(
                "target {t:?}: a process task's files are under ${}, so the target must be \
                 a relative path",
                if self.kind == SecretKind::Secret {
                    "SHOAL_SECRETS_DIR"
                } else {
                    "SHOAL_CONFIGS_DIR"
                }
            )));
        }
        if self.mode > 0o777 {
            return Err(invalid(format!("mode {:o}: at most 0777", self.mode)));
        }
        Ok(())
    }

    /// The file mode tasks get: the given one, or the runtime's default.
    pub fn file_mode(&self, process: bool) -> u32 {
        match (self.mode, process) {
            (0, true) => 0o400,
            (0, false) => 0o444,
            (m, _) => m,
        }
    }

    /// The path in a container: relative targets go under `/run/secrets/` (secrets) or `/`
    /// (configs), as Swarm places them.
    pub fn container_path(&self) -> String {
        if self.target.starts_with('/') {
            self.target.clone()
        } else if self.kind == SecretKind::Secret {
            format!("/run/secrets/{}", self.target)
        } else {
            format!("/{}", self.target)
        }
    }
}

/// Checks a task spec's secret and config references among themselves: a bounded count and
/// no two files at one path.
pub fn validate_refs(refs: &[SecretRef], process: bool) -> Result<(), ClusterError> {
    if refs.len() > MAX_SECRET_REFS {
        return Err(ClusterError::Invalid(format!(
            "at most {MAX_SECRET_REFS} secrets and configs per service"
        )));
    }
    let mut paths = std::collections::BTreeSet::new();
    for r in refs {
        r.validate(process)?;
        let path = if process {
            format!("{}/{}", r.kind.name(), r.target)
        } else {
            r.container_path()
        };
        if !paths.insert(path) {
            return Err(ClusterError::Invalid(format!(
                "two secrets or configs have the target {:?}",
                r.target
            )));
        }
    }
    Ok(())
}

/// A secret or config as the state holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// Its id.
    pub id: SecretId,
    /// Secret or config.
    pub kind: SecretKind,
    /// Name, labels, data.
    pub spec: SecretSpec,
    /// The Raft index of its creation.
    pub version: u64,
    /// Created (Unix ms).
    pub created_at_ms: u64,
}

impl ClusterState {
    /// Every secret and config, by id.
    pub fn secrets(&self) -> &BTreeMap<SecretId, Secret> {
        &self.secrets
    }

    /// The secret or config of `kind` named `query`, or whose id is `query` or starts with it.
    pub fn resolve_secret(&self, kind: SecretKind, query: &str) -> Result<&Secret, ClusterError> {
        let q = query.trim();
        let not_found = || ClusterError::Invalid(format!("{} {q} not found", kind.name()));
        if q.is_empty() {
            return Err(not_found());
        }
        let of_kind = || self.secrets.values().filter(move |s| s.kind == kind);
        if let Some(s) = of_kind().find(|s| object_id_string(s.id) == q || s.spec.name == q) {
            return Ok(s);
        }
        let lower = q.to_ascii_lowercase();
        let mut by_prefix = of_kind().filter(|s| object_id_string(s.id).starts_with(&lower));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(s), None) => Ok(s),
            (None, _) => Err(not_found()),
            (Some(_), Some(_)) => Err(ClusterError::Invalid(format!(
                "{} {q} is ambiguous (more than one matches)",
                kind.name()
            ))),
        }
    }

    pub(crate) fn create_secret(
        &mut self,
        index: u64,
        kind: SecretKind,
        spec: &SecretSpec,
        at_ms: u64,
    ) -> Result<(), ClusterError> {
        self.check_initialized()?;
        spec.validate(kind)?;
        let of_kind = self.secrets.values().filter(|s| s.kind == kind);
        if of_kind.clone().any(|s| s.spec.name == spec.name) {
            return Err(ClusterError::Invalid(format!(
                "{} {} already exists",
                kind.name(),
                spec.name
            )));
        }
        if of_kind.count() >= MAX_SECRETS {
            return Err(ClusterError::Invalid(format!(
                "the swarm has {MAX_SECRETS} {}s already",
                kind.name()
            )));
        }
        let mut id = crate::tasks::mix(index ^ 0x5ec2_e7c0);
        while id == 0 || self.secrets.contains_key(&id) {
            id = crate::tasks::mix(id);
        }
        self.secrets.insert(
            id,
            Secret {
                id,
                kind,
                spec: spec.clone(),
                version: index,
                created_at_ms: at_ms,
            },
        );
        Ok(())
    }

    /// Checks that every object a spec refers to exists, with its kind and name.
    pub(crate) fn check_refs(&self, refs: &[SecretRef]) -> Result<(), ClusterError> {
        for r in refs {
            match self.secrets.get(&r.id) {
                Some(s) if s.kind == r.kind && s.spec.name == r.name => {}
                _ => {
                    return Err(ClusterError::Invalid(format!(
                        "{} {} not found",
                        r.kind.name(),
                        r.name
                    )))
                }
            }
        }
        Ok(())
    }

    /// The names of the services whose spec uses object `id`.
    pub fn services_using(&self, id: SecretId) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .values()
            .filter(|s| s.spec.task.secrets.iter().any(|r| r.id == id))
            .map(|s| s.spec.name.clone())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn remove_secret(
        &mut self,
        kind: SecretKind,
        id: SecretId,
    ) -> Result<(), ClusterError> {
        match self.secrets.get(&id) {
            Some(s) if s.kind == kind => {
                let users = self.services_using(id);
                if !users.is_empty() {
                    return Err(ClusterError::Invalid(format!(
                        "{} {} is in use by the following service{}: {}",
                        kind.name(),
                        s.spec.name,
                        if users.len() == 1 { "" } else { "s" },
                        users.join(", ")
                    )));
                }
                self.secrets.remove(&id);
                Ok(())
            }
            _ => Err(ClusterError::Invalid(format!(
                "{} {} not found",
                kind.name(),
                object_id_string(id)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, data: &[u8]) -> SecretSpec {
        SecretSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn data_is_hex_in_json_and_bytes_in_postcard() {
        let s = spec("a", b"\x00\xffhi");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"data\":\"00ff6869\""), "{json}");
        assert_eq!(serde_json::from_str::<SecretSpec>(&json).unwrap(), s);
        let bin = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<SecretSpec>(&bin).unwrap(), s);
        assert!(
            serde_json::from_str::<SecretSpec>(r#"{"name":"a","labels":{},"data":"0"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<SecretSpec>(r#"{"name":"a","labels":{},"data":"zz"}"#).is_err()
        );
    }

    #[test]
    fn names_sizes_and_labels_are_checked() {
        for ok in ["db-password", "a", "tls.key", "x_1", &"a".repeat(64)] {
            assert!(spec(ok, b"x").validate(SecretKind::Secret).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a b", "a/b", "é", &"a".repeat(65)] {
            let e = spec(bad, b"x").validate(SecretKind::Config).unwrap_err();
            assert!(e.to_string().contains("invalid config name"), "{bad}: {e}");
        }
        assert!(spec("a", b"")
            .validate(SecretKind::Secret)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(spec("a", &vec![0; MAX_SECRET_BYTES])
            .validate(SecretKind::Secret)
            .is_ok());
        assert!(spec("a", &vec![0; MAX_SECRET_BYTES + 1])
            .validate(SecretKind::Secret)
            .unwrap_err()
            .to_string()
            .contains("500 KiB"));
        let mut s = spec("a", b"x");
        s.labels.insert("".into(), "v".into());
        assert!(s.validate(SecretKind::Secret).is_err());
    }
}
