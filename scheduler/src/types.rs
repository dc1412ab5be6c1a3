//! Plain data describing the cluster as the scheduler sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The role of a node in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A manager (takes part in Raft).
    Manager,
    /// A worker (runs tasks only).
    Worker,
}

impl Role {
    /// The lower-case name used in constraints (`manager`, `worker`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

/// Whether the node's agent is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// The agent reports in and can run tasks.
    Ready,
    /// The agent is unreachable.
    Down,
}

/// The operator-set availability of a node (`docker node update --availability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Availability {
    /// New tasks may be placed here.
    Active,
    /// No new tasks; existing tasks keep running.
    Pause,
    /// No new tasks; existing tasks are moved away.
    Drain,
}

/// An operating system and CPU architecture pair. An empty field in a service's platform
/// list is a wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture, e.g. `amd64` (`x86_64` and `aarch64` are accepted as aliases).
    pub arch: String,
}

impl Platform {
    /// Builds a platform from an OS and an architecture.
    pub fn new(os: &str, arch: &str) -> Self {
        Platform {
            os: os.to_string(),
            arch: arch.to_string(),
        }
    }
}

/// Normalises an architecture name so that common aliases compare equal.
pub(crate) fn normalize_arch(arch: &str) -> String {
    let lower = arch.to_ascii_lowercase();
    match lower.as_str() {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        _ => lower,
    }
}

/// A quantity of CPU (millicores) and memory (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub millicores: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Resources {
    /// Builds a resource quantity.
    pub const fn new(millicores: u64, memory_bytes: u64) -> Self {
        Resources {
            millicores,
            memory_bytes,
        }
    }

    /// True when both quantities are zero.
    pub fn is_zero(&self) -> bool {
        self.millicores == 0 && self.memory_bytes == 0
    }
}

/// One node of the snapshot handed to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node id (unique; also the final spread tie-break).
    pub id: String,
    /// The hostname.
    pub hostname: String,
    /// Manager or worker.
    pub role: Role,
    /// The node's address, matched by `node.ip` constraints.
    pub ip: IpAddr,
    /// The node's OS and architecture.
    pub platform: Platform,
    /// Node labels (`node.labels.<key>`), case-sensitive.
    pub labels: BTreeMap<String, String>,
    /// Ready or down.
    pub state: NodeState,
    /// Active, pause or drain.
    pub availability: Availability,
    /// Total CPU and memory of the node.
    pub total: Resources,
    /// Resources already reserved by tasks running or assigned on the node.
    pub reserved: Resources,
    /// Host-mode published ports already in use on the node.
    pub used_ports: BTreeSet<u16>,
    /// Tasks already on the node, per service id.
    pub tasks_by_service: BTreeMap<String, u32>,
    /// The runtimes the node can run tasks with (`process`, `container`).
    pub runtimes: Vec<&'static str>,
}

impl Node {
    /// A ready, active worker with the given id (also used as hostname), resources and no
    /// labels, tasks or reservations. Handy as a starting point; adjust fields as needed.
    pub fn new(id: &str, total: Resources) -> Self {
        Node {
            id: id.to_string(),
            hostname: id.to_string(),
            role: Role::Worker,
            ip: IpAddr::from([127, 0, 0, 1]),
            platform: Platform::new("linux", "amd64"),
            labels: BTreeMap::new(),
            state: NodeState::Ready,
            availability: Availability::Active,
            total,
            reserved: Resources::default(),
            used_ports: BTreeSet::new(),
            tasks_by_service: BTreeMap::new(),
            runtimes: vec!["process"],
        }
    }

    /// Sets a label (builder style).
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Total number of tasks on the node, over all services.
    pub fn total_tasks(&self) -> u64 {
        self.tasks_by_service.values().map(|&n| u64::from(n)).sum()
    }
}
