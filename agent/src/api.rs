//! The control API: what the CLI asks an agent (HTTP + JSON on the Unix socket) and what one
//! agent forwards to another (the same JSON in a transport request). One [`Request`] per
//! operation; every answer is a [`Response`].
//!
//! HTTP routes (all JSON; errors come back as `{"result":"error","message":…}` with a 4xx/5xx
//! status):
//!
//! | method and path | request |
//! |---|---|
//! | `GET /v1/info` | [`Request::Info`] |
//! | `POST /v1/swarm/init` body `{"advertise_addr":…, "force_new_cluster":bool}` | [`Request::Init`] |
//! | `POST /v1/swarm/join` body `{"token":…, "remote_addr":…}` | [`Request::Join`] |
//! | `GET /v1/swarm/join-token/{worker\|manager}?rotate=true` | [`Request::JoinToken`] |
//! | `POST /v1/swarm/leave?force=true` | [`Request::Leave`] |
//! | `POST /v1/swarm/update` body `{"task_history_limit":…, "autolock":bool}` | [`Request::SwarmUpdate`] |
//! | `GET /v1/swarm/unlock-key?rotate=true` | [`Request::UnlockKey`] |
//! | `POST /v1/swarm/unlock` body `{"key":…}` | [`Request::Unlock`] |
//! | `GET /v1/nodes?stale=true` | [`Request::NodeList`] |
//! | `GET /v1/nodes/{node}?stale=true` | [`Request::NodeInspect`] |
//! | `POST /v1/nodes/{node}/promote` | [`Request::NodePromote`] |
//! | `POST /v1/nodes/{node}/demote` | [`Request::NodeDemote`] |
//! | `DELETE /v1/nodes/{node}?force=true` | [`Request::NodeRemove`] |
//! | `POST /v1/nodes/{node}/update` body [`NodeUpdateRequest`] | [`Request::NodeUpdate`] |
//! | `POST /v1/swarm/ca/client-certs` body `{"name":…, "read_only":bool, "csr":hex, "expiry_secs":…}` | [`Request::ClientCertIssue`] |
//! | `GET /v1/swarm/ca/client-certs` | [`Request::ClientCertList`] |
//! | `DELETE /v1/swarm/ca/client-certs/{name}` | [`Request::ClientCertRemove`] |
//! | `POST /v1/test/clock` body `{"offset_ms":…, "rate":…}` (only with `SHOAL_TEST_HOOKS=1`) | [`crate::test_clock`] |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_cluster::{Availability, Role, ServiceSpec};

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// What this agent is: its node, its cluster, who leads.
    Info,
    /// `swarm init`.
    Init {
        /// The address other nodes use to reach this one (default: the listen address).
        advertise_addr: Option<String>,
        /// Restart a surviving manager as a one-manager cluster keeping its committed state.
        force_new_cluster: bool,
        /// Turn autolock on (the answer shows the unlock key).
        #[serde(default)]
        autolock: bool,
    },
    /// `swarm join --token T ADDR`.
    Join {
        /// The join token.
        token: String,
        /// A manager's address.
        remote_addr: String,
    },
    /// `swarm join-token [--rotate] worker|manager`.
    JoinToken {
        /// Whose token.
        role: Role,
        /// Replace it first.
        rotate: bool,
    },
    /// `swarm leave [--force]`.
    Leave {
        /// Leave even if it loses quorum (or is the last manager).
        force: bool,
    },
    /// `node ls`.
    NodeList {
        /// Answer from this manager's state without a linearizable read.
        stale: bool,
    },
    /// `node inspect NODE`.
    NodeInspect {
        /// Id, id prefix or hostname.
        node: String,
        /// As for `NodeList`.
        stale: bool,
    },
    /// `node promote NODE`.
    NodePromote {
        /// Id, id prefix or hostname.
        node: String,
    },
    /// `node demote NODE`.
    NodeDemote {
        /// Id, id prefix or hostname.
        node: String,
    },
    /// `node rm [--force] NODE`.
    NodeRemove {
        /// Id, id prefix or hostname.
        node: String,
        /// Remove a node that is not down.
        force: bool,
    },
    /// `node update … NODE`.
    NodeUpdate {
        /// Id, id prefix or hostname.
        node: String,
        /// The changes.
        update: NodeUpdateRequest,
    },
    /// `service create`.
    ServiceCreate {
        /// The new service (checked again on the leader).
        spec: ServiceSpec,
    },
    /// `service ls`.
    ServiceList,
    /// `service inspect SERVICE`.
    ServiceInspect {
        /// Id, id prefix or name.
        service: String,
    },
    /// `service update`, `service scale`: the whole new spec, made against `version`.
    ServiceUpdate {
        /// Id, id prefix or name.
        service: String,
        /// The version the CLI read (compare-and-set: a concurrent change makes this fail).
        version: u64,
        /// The new spec.
        spec: ServiceSpec,
    },
    /// `service rollback SERVICE`, `service update --rollback`: back to the previous spec.
    ServiceRollback {
        /// Id, id prefix or name.
        service: String,
        /// The version the CLI read (compare-and-set), if any.
        version: Option<u64>,
    },
    /// `service rm SERVICE`.
    ServiceRemove {
        /// Id, id prefix or name.
        service: String,
    },
    /// `service ps`, `node ps`: tasks of some services and/or on a node.
    TaskList {
        /// Services by id, prefix or name (empty: all).
        #[serde(default)]
        services: Vec<String>,
        /// Only the tasks on this node (id, prefix or hostname; `self` resolved by the CLI).
        #[serde(default)]
        node: Option<String>,
    },
    /// `service logs`: one round (the CLI repeats it with the cursors to follow).
    ServiceLogs {
        /// Service id, prefix or name, or a task id.
        service: String,
        /// The last N lines of each task (first round).
        #[serde(default)]
        tail: Option<usize>,
        /// Per task id (16 hex): what was seen already.
        #[serde(default)]
        cursors: BTreeMap<String, crate::wire::LogCursor>,
    },
    /// `swarm update`.
    SwarmUpdate {
        /// `--task-history-limit`.
        #[serde(default)]
        task_history_limit: Option<u32>,
        /// `--autolock=true|false`.
        #[serde(default)]
        autolock: Option<bool>,
    },
    /// `swarm unlock-key [--rotate]`: the unlock key (a new one with `rotate`).
    UnlockKey {
        /// Replace it.
        #[serde(default)]
        rotate: bool,
    },
    /// `swarm unlock`: the key that opens this locked manager's data (never forwarded).
    Unlock {
        /// `SHOALKEY-1-…`.
        key: String,
    },
    /// `secret create`, `config create`.
    SecretCreate {
        /// Secret or config.
        kind: shoal_cluster::SecretKind,
        /// Name, labels, data (checked again on the leader).
        spec: shoal_cluster::SecretSpec,
        /// An object of that name with the same data is not an error (`stack deploy` run
        /// again); one with other data still is.
        exist_ok: bool,
    },
    /// `secret ls`, `config ls`.
    SecretList {
        /// Secret or config.
        kind: shoal_cluster::SecretKind,
    },
    /// `secret inspect`, `config inspect`.
    SecretInspect {
        /// Secret or config.
        kind: shoal_cluster::SecretKind,
        /// Id, id prefix or name.
        name: String,
    },
    /// `secret rm`, `config rm`.
    SecretRemove {
        /// Secret or config.
        kind: shoal_cluster::SecretKind,
        /// Id, id prefix or name.
        name: String,
    },
    /// `swarm ca client-cert`: an operator certificate for a signing request the CLI made (the
    /// operator's key never leaves the operator's machine).
    ClientCertIssue {
        /// The operator (the certificate's CN).
        name: String,
        /// List and inspect only.
        read_only: bool,
        /// The PKCS#10 request, DER as hex.
        csr: String,
        /// Validity, in seconds.
        expiry_secs: u64,
    },
    /// `swarm ca client-cert ls`.
    ClientCertList,
    /// `swarm ca client-cert rm NAME`: the operator's certificates are refused from now on.
    ClientCertRemove {
        /// The operator.
        name: String,
    },
}

/// A service as the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// 16 hex digits.
    pub id: String,
    /// Version (the Raft index of its last change).
    pub version: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
    /// What the operator asked for.
    pub spec: ServiceSpec,
    /// The spec before the last update.
    pub previous: Option<ServiceSpec>,
    /// The last update or rollback (`None`: the tasks' spec never changed).
    #[serde(default)]
    pub update_status: Option<shoal_cluster::UpdateStatus>,
    /// Tasks running now (of those wanted).
    pub running: u64,
    /// Tasks wanted: the replica count, or (global) the tasks the orchestrator keeps.
    pub desired: u64,
    /// Where it answers: its ingress ports and its running tasks' addresses.
    #[serde(default)]
    pub endpoints: Option<EndpointsView>,
}

/// Where a service answers, as `service inspect` and `GET /v1/services/NAME/endpoints` show
/// it (what the mesh and the name server use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsView {
    /// The service's id (16 hex digits).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its ingress-mode ports: every node listens on `published`.
    pub ports: Vec<shoal_cluster::PortConfig>,
    /// Its running tasks.
    pub tasks: Vec<TaskEndpointView>,
}

/// A running task of a service, where it is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpointView {
    /// The task's id (16 hex digits).
    pub task: String,
    /// Its node's id (16 hex digits).
    pub node: String,
    /// Its node's address.
    pub ip: String,
    /// The ports it answers on, on its node.
    pub ports: Vec<shoal_cluster::TaskPort>,
    /// Whether the mesh sends it connections (running, healthy or unchecked, not stopping).
    pub ready: bool,
}

impl From<shoal_cluster::ServiceEndpoints> for EndpointsView {
    fn from(e: shoal_cluster::ServiceEndpoints) -> Self {
        EndpointsView {
            id: shoal_cluster::object_id_string(e.id),
            name: e.name,
            ports: e.ports,
            tasks: e
                .tasks
                .into_iter()
                .map(|t| TaskEndpointView {
                    task: shoal_cluster::object_id_string(t.task),
                    node: shoal_cluster::node_id_string(t.node),
                    ip: t.ip,
                    ports: t.ports,
                    ready: t.ready,
                })
                .collect(),
        }
    }
}

/// A line of `service logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogView {
    /// `web.1.<task id>@<node>`.
    pub source: String,
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// From standard error.
    pub stderr: bool,
    /// The line.
    pub text: String,
}

/// A task as the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// 16 hex digits.
    pub id: String,
    /// `web.1` (replicated) or `web.<node id>` (global).
    pub name: String,
    /// Its service's id.
    pub service_id: String,
    /// Its service's name.
    pub service_name: String,
    /// Slot (0 for global).
    pub slot: u64,
    /// Node id, empty while pending.
    pub node_id: String,
    /// Node hostname, empty while pending.
    pub node: String,
    /// Program or image.
    pub image: String,
    /// Desired state, capitalised (`Running`, `Shutdown`).
    pub desired_state: String,
    /// Observed state, capitalised.
    pub state: String,
    /// When it got there (Unix ms).
    pub state_since_ms: u64,
    /// What happened.
    pub message: String,
    /// Why it failed or waits.
    pub err: String,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// Process id (process runtime).
    pub pid: u32,
    /// Container id (container runtime).
    pub container_id: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// The spec version it runs.
    pub spec_version: u64,
    /// The newest task of its slot (history rows are the others).
    pub current: bool,
    /// It runs the service's current task spec (a scale alone leaves tasks up to date).
    pub up_to_date: bool,
    /// Its host-mode published ports while it runs (`*:8080->80/tcp`, comma-separated), as
    /// Swarm's `service ps` shows them.
    #[serde(default)]
    pub ports: String,
}

/// The options of `node update`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdateRequest {
    /// `--availability`.
    #[serde(default)]
    pub availability: Option<Availability>,
    /// `--label-add k=v` (repeatable).
    #[serde(default)]
    pub label_add: Vec<String>,
    /// `--label-rm k` (repeatable).
    #[serde(default)]
    pub label_rm: Vec<String>,
    /// `--role`.
    #[serde(default)]
    pub role: Option<Role>,
    /// Apply only if the node is still at this version (compare-and-set, like Docker's
    /// `?version=`); a node changed since fails with a version mismatch. The CLI sends none.
    #[serde(default)]
    pub version: Option<u64>,
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done; `message` is what the CLI prints (may be empty).
    Ok {
        /// One or more lines for the user.
        message: String,
    },
    /// `node ls`.
    Nodes {
        /// The id of the node that answered (marked `*` by the CLI).
        self_id: String,
        /// Every node.
        nodes: Vec<NodeView>,
    },
    /// `node inspect`.
    Node {
        /// The id of the node that answered.
        self_id: String,
        /// The node.
        node: Box<NodeView>,
    },
    /// `swarm join-token`.
    Token {
        /// Whose token.
        role: Role,
        /// The token.
        token: String,
        /// A manager address to join through.
        manager_addr: String,
    },
    /// `info`.
    Info(InfoView),
    /// A node's tasks (between agents only).
    Assignments(crate::wire::Assignments),
    /// `service ls`.
    Services {
        /// Every service, by name.
        services: Vec<ServiceView>,
    },
    /// `service inspect`.
    Service {
        /// The service.
        service: Box<ServiceView>,
    },
    /// `service logs`: new lines, where each task's output now ends, and what could not be
    /// read.
    Logs {
        /// Lines in time order.
        lines: Vec<LogView>,
        /// Per task id: the cursor to send next time.
        cursors: BTreeMap<String, crate::wire::LogCursor>,
        /// Nodes that did not answer, and why.
        warnings: Vec<String>,
    },
    /// `service ps`, `node ps`.
    Tasks {
        /// The tasks, by service, slot and age (newest first within a slot).
        tasks: Vec<TaskView>,
    },
    /// Refused or failed: one line naming the problem.
    Error {
        /// The line.
        message: String,
    },
    /// `secret ls`, `secret inspect`, and the same for configs.
    Secrets {
        /// By name.
        secrets: Vec<SecretView>,
    },
    /// `swarm unlock-key`, and `swarm init|update --autolock`: the unlock key.
    UnlockKey {
        /// `SHOALKEY-1-…`.
        key: String,
        /// Whether the swarm's settings just changed (autolock turned on).
        updated: bool,
    },
    /// `swarm ca client-cert`: the new certificate, and the CA that verifies the agents.
    ClientCert {
        /// The operator certificate, PEM.
        cert_pem: String,
        /// The cluster CA certificate, PEM.
        ca_pem: String,
        /// As recorded in the cluster.
        operator: shoal_cluster::Operator,
    },
    /// `swarm ca client-cert ls`.
    ClientCerts {
        /// By name, then expiry.
        certs: Vec<shoal_cluster::Operator>,
    },
}

/// A secret or config as the CLI shows it: a secret's data never leaves the managers this way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    /// 16 hex digits.
    pub id: String,
    /// Secret or config.
    pub kind: shoal_cluster::SecretKind,
    /// Its name.
    pub name: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Created (Unix ms).
    pub created_at_ms: u64,
    /// The data's size in bytes.
    pub size: usize,
    /// A config's data (text; hex when it is not UTF-8, with `binary`); never a secret's.
    /// (Always present: this type also travels between agents in postcard, which cannot skip.)
    #[serde(default)]
    pub data: Option<String>,
    /// The config's data is shown in hex.
    #[serde(default)]
    pub binary: bool,
}

/// A node as the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// 16 hex digits.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// `Ready`, `Down`, `Unknown` or `Disconnected`.
    pub status: String,
    /// Why, when not ready.
    pub status_message: String,
    /// `Active`, `Pause` or `Drain`.
    pub availability: String,
    /// `Leader`, `Reachable` or `Unreachable` for managers; empty for workers.
    pub manager_status: String,
    /// The container engine's version (empty without one).
    pub engine_version: String,
    /// The shoal agent's version.
    #[serde(default)]
    pub agent_version: String,
    /// Runtimes the node has but cannot use now, and why.
    #[serde(default)]
    pub runtime_problems: Vec<String>,
    /// Observed role: `manager` or `worker`.
    pub role: String,
    /// Desired role.
    pub desired_role: String,
    /// `ip:port`.
    pub addr: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `linux`, …
    pub os: String,
    /// `amd64`, …
    pub arch: String,
    /// CPUs × 10⁹.
    pub nano_cpus: u64,
    /// Bytes.
    pub memory_bytes: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
    /// Version for compare-and-set.
    pub version: u64,
    /// The runtimes the node runs tasks with (`process`, `container`).
    #[serde(default)]
    pub runtimes: Vec<String>,
    /// Whether the node enforces tasks' resource limits (cgroup v2); reservations always count.
    #[serde(default)]
    pub limits_enforced: bool,
}

/// What an agent says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoView {
    /// `inactive` (no swarm yet) or `active`.
    pub swarm: String,
    /// This node's id (empty when inactive).
    pub node_id: String,
    /// The cluster's id (empty when inactive).
    pub cluster_id: String,
    /// `manager` or `worker` (empty when inactive).
    pub role: String,
    /// The leader's id, if known.
    pub leader: String,
    /// Raft term (managers).
    pub term: u64,
    /// Raft commit index (managers).
    pub commit_index: u64,
    /// Raft applied index (managers).
    pub applied_index: u64,
    /// Raft voters (managers).
    pub voters: Vec<String>,
    /// The outgoing configuration's voters while a membership change is in joint consensus;
    /// empty otherwise.
    #[serde(default)]
    pub outgoing_voters: Vec<String>,
    /// Members by SWIM state: alive, suspect, dead, left.
    pub members: BTreeMap<String, usize>,
    /// The QUIC listen address.
    pub listen_addr: String,
}

impl InfoView {
    /// What an agent that is not part of a swarm says about itself.
    pub fn inactive(listen_addr: String) -> Self {
        InfoView {
            swarm: "inactive".into(),
            node_id: String::new(),
            cluster_id: String::new(),
            role: String::new(),
            leader: String::new(),
            term: 0,
            commit_index: 0,
            applied_index: 0,
            voters: Vec::new(),
            outgoing_voters: Vec::new(),
            members: BTreeMap::new(),
            listen_addr,
        }
    }
}

impl Response {
    /// An error response from anything displayable.
    pub fn error(e: impl std::fmt::Display) -> Self {
        Response::Error {
            message: e.to_string(),
        }
    }

    /// A success with a message.
    pub fn ok(message: impl Into<String>) -> Self {
        Response::Ok {
            message: message.into(),
        }
    }
}
