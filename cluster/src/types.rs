//! The vocabulary of the cluster state, named as Swarm names it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// A node's identity: the same number is its Raft id, its membership id and the name in its
/// certificate. Shown as 16 lowercase hex digits ([`node_id_string`]).
pub type NodeId = u64;

/// The display form of a node id: 16 lowercase hex digits (as in the node's certificate).
pub fn node_id_string(id: NodeId) -> String {
    format!("{id:016x}")
}

/// Manager (a Raft voter that serves the control API) or worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs tasks only.
    Worker,
    /// Takes part in Raft and can lead.
    Manager,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "worker" => Ok(Role::Worker),
            "manager" => Ok(Role::Manager),
            _ => Err(ClusterError::Invalid(format!(
                "invalid role {s:?}: expected worker or manager"
            ))),
        }
    }
}

/// Whether the scheduler may place tasks on a node (desired by the operator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be placed.
    Active,
    /// No new tasks; existing ones keep running.
    Pause,
    /// No tasks at all; existing ones are moved away.
    Drain,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        })
    }
}

impl std::str::FromStr for Availability {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(ClusterError::Invalid(format!(
                "invalid availability {s:?}: expected active, pause or drain"
            ))),
        }
    }
}

/// Observed liveness of a node (from membership).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not observed yet.
    Unknown,
    /// Alive.
    Ready,
    /// Failed or left.
    Down,
    /// Heard of, but not reachable from the leader at the moment.
    Disconnected,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
            NodeState::Disconnected => "disconnected",
        })
    }
}

/// A node's observed status, with a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Ready, down, …
    pub state: NodeState,
    /// Why, when not ready (e.g. "node left the swarm", "heartbeat failure").
    pub message: String,
}

impl Default for NodeStatus {
    fn default() -> Self {
        NodeStatus {
            state: NodeState::Unknown,
            message: String::new(),
        }
    }
}

/// Operating system and architecture, as Go names them (`linux`, `amd64`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `darwin`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub arch: String,
}

/// CPU and memory of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in units of 10⁻⁹ CPUs.
    pub nano_cpus: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// What a node reports about itself (changes only when the agent restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    /// Hostname (shown in `node ls`, usable as a NODE argument).
    pub hostname: String,
    /// OS and architecture.
    pub platform: Platform,
    /// CPU and memory.
    pub resources: Resources,
    /// The container engine's version (`ENGINE VERSION`, as Swarm shows Docker's); empty on a
    /// node without an engine.
    pub engine_version: String,
    /// The shoal agent's version.
    pub agent_version: String,
    /// Runtimes the node has but cannot use now, and why (`node inspect` shows them).
    pub runtime_problems: Vec<String>,
    /// The runtimes it can run tasks with; the scheduler places tasks only where theirs is.
    pub runtimes: Vec<crate::service::Runtime>,
    /// Whether CPU and memory limits of process tasks are enforced here (cgroup v2); when not,
    /// `node inspect` says so and reservations still count in scheduling.
    pub limits_enforced: bool,
}

/// A node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// The Raft index of its last change: the version `node update` compares and sets.
    pub version: u64,
    /// When it joined (Unix milliseconds, from the proposer's clock).
    pub created_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
    /// What it reports about itself.
    pub description: NodeDescription,
    /// Where it is reached (`ip:port`, its QUIC endpoint).
    pub addr: String,
    /// Operator labels (`node.labels.<key>` in constraints).
    pub labels: BTreeMap<String, String>,
    /// The role the operator asked for.
    pub desired_role: Role,
    /// The role the reconciler has achieved (manager only once it is a Raft voter).
    pub role: Role,
    /// Active, pause or drain.
    pub availability: Availability,
    /// Observed liveness.
    pub status: NodeStatus,
}

impl Node {
    /// Admitted with a join token, not connected yet (it has not registered, and membership has
    /// not seen it).
    pub fn is_joining(&self) -> bool {
        self.status.state == NodeState::Unknown && self.status.message == crate::state::JOINING
    }
}

/// A node joining: what the manager that admitted it proposes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    /// Its id (from its certificate).
    pub id: NodeId,
    /// What it reports about itself.
    pub description: NodeDescription,
    /// Where it is reached.
    pub addr: String,
    /// Initial labels (`shoal agent --label k=v`).
    pub labels: BTreeMap<String, String>,
    /// The role its token grants; a manager joins as a worker and is promoted by the reconciler.
    pub desired_role: Role,
}

/// The cluster itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// 32 hex digits.
    pub id: String,
    /// When it was initialised (Unix milliseconds).
    pub created_at_ms: u64,
    /// The root CA certificate and key (PEM); replicated among managers so that any of them can
    /// admit nodes and renew certificates.
    pub ca_pem: String,
    /// The current worker join token.
    pub worker_token: String,
    /// The current manager join token.
    pub manager_token: String,
    /// The autolock key (`SHOALKEY-1-…`; empty: autolock off): managers seal their
    /// key-encryption key with it, so a restarted manager waits for `swarm unlock`.
    #[serde(default, deserialize_with = "crate::compat::unlock_key")]
    pub unlock_key: String,
}

/// What an unlock key starts with.
pub const UNLOCK_KEY_PREFIX: &str = "SHOALKEY-1-";

/// The 32 bytes of an unlock key written `SHOALKEY-1-` and 64 hex digits.
pub fn parse_unlock_key(key: &str) -> Result<[u8; 32], ClusterError> {
    let bad = || {
        ClusterError::Invalid(
            "invalid unlock key: expected SHOALKEY-1- and 64 hex digits, as `shoal swarm \
             unlock-key` prints it"
                .into(),
        )
    };
    let hex = key.trim().strip_prefix(UNLOCK_KEY_PREFIX).ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(bad)?;
    }
    Ok(out)
}

/// An unlock key for 32 random bytes.
pub fn format_unlock_key(bytes: &[u8; 32]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("{UNLOCK_KEY_PREFIX}{hex}")
}

impl ClusterInfo {
    /// The join token for a role.
    pub fn token(&self, role: Role) -> &str {
        match role {
            Role::Worker => &self.worker_token,
            Role::Manager => &self.manager_token,
        }
    }
}

/// Most labels on one node.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 256;

/// Checks a label key and value: the key is 1–128 characters of letters, digits and `.-_/`,
/// starting with a letter or digit; the value has at most 256 bytes and no control characters.
pub fn validate_label(key: &str, value: &str) -> Result<(), ClusterError> {
    let bad = |why: &str| Err(ClusterError::InvalidLabel(format!("{key:?}: {why}")));
    if key.is_empty() {
        return Err(ClusterError::InvalidLabel("empty key".into()));
    }
    if key.len() > MAX_LABEL_KEY {
        return bad("key longer than 128 characters");
    }
    if !key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return bad("key must start with a letter or digit");
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
    {
        return bad("key may contain only letters, digits, '.', '-', '_' and '/'");
    }
    if value.len() > MAX_LABEL_VALUE {
        return bad("value longer than 256 bytes");
    }
    if value.chars().any(char::is_control) {
        return bad("value contains a control character");
    }
    Ok(())
}

/// Parses `key=value` (or `key`, an empty value) as `--label-add` and `--label` take it.
pub fn parse_label(spec: &str) -> Result<(String, String), ClusterError> {
    let (k, v) = spec.split_once('=').unwrap_or((spec, ""));
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Checks a hostname: 1–253 characters, no whitespace or control characters.
pub fn validate_hostname(name: &str) -> Result<(), ClusterError> {
    if name.is_empty() || name.len() > 253 {
        return Err(ClusterError::Invalid(format!(
            "invalid hostname {name:?}: must have 1 to 253 characters"
        )));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ClusterError::Invalid(format!(
            "invalid hostname {name:?}: no spaces or control characters"
        )));
    }
    Ok(())
}

/// Checks a node address: `ip:port` with a non-zero port.
pub fn validate_addr(addr: &str) -> Result<(), ClusterError> {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Ok(()),
        Ok(_) => Err(ClusterError::Invalid(format!(
            "invalid address {addr:?}: needs a specific IP and a non-zero port"
        ))),
        Err(_) => Err(ClusterError::Invalid(format!(
            "invalid address {addr:?}: expected ip:port"
        ))),
    }
}

/// Checks what a node reports about itself.
pub(crate) fn validate_description(d: &NodeDescription) -> Result<(), ClusterError> {
    validate_hostname(&d.hostname)?;
    let short = |s: &str, what: &str| {
        if s.len() > 64 || s.chars().any(char::is_control) {
            Err(ClusterError::Invalid(format!("invalid {what} {s:?}")))
        } else {
            Ok(())
        }
    };
    short(&d.platform.os, "platform os")?;
    short(&d.platform.arch, "platform architecture")?;
    short(&d.engine_version, "engine version")?;
    if d.runtimes.len() > 8 {
        return Err(ClusterError::Invalid("too many runtimes".into()));
    }
    Ok(())
}

/// Checks a set of labels.
pub(crate) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ClusterError> {
    if labels.len() > MAX_LABELS {
        return Err(ClusterError::InvalidLabel(format!(
            "at most {MAX_LABELS} labels per node"
        )));
    }
    labels.iter().try_for_each(|(k, v)| validate_label(k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_validated() {
        assert_eq!(
            parse_label("zone=eu-1").unwrap(),
            ("zone".into(), "eu-1".into())
        );
        assert_eq!(parse_label("ssd").unwrap(), ("ssd".into(), "".into()));
        assert_eq!(
            parse_label("a=b=c").unwrap(),
            ("a".into(), "b=c".into()),
            "the value may contain '='"
        );
        for bad in ["", "=x", "-a=1", "a b=1", "k=\u{7}", &"k".repeat(129)] {
            let e = parse_label(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid label"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn roles_and_availability_parse() {
        assert_eq!("manager".parse::<Role>().unwrap(), Role::Manager);
        assert_eq!(
            "drain".parse::<Availability>().unwrap(),
            Availability::Drain
        );
        assert!("boss".parse::<Role>().is_err());
        assert!("off".parse::<Availability>().is_err());
    }

    #[test]
    fn addresses_and_hostnames() {
        assert!(validate_addr("127.0.0.1:4242").is_ok());
        assert!(validate_addr("[::1]:4242").is_ok());
        assert!(validate_addr("0.0.0.0:4242").is_err());
        assert!(validate_addr("127.0.0.1:0").is_err());
        assert!(validate_addr("localhost:1").is_err());
        assert!(validate_hostname("node-1").is_ok());
        assert!(validate_hostname("").is_err());
        assert!(validate_hostname("a b").is_err());
    }
}
