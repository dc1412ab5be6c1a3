//! The replicated cluster state of shoal, applied through Raft: the cluster (id, CA, join tokens,
//! settings), its nodes (description, labels, desired and observed role, availability,
//! status), and its services and tasks. Commands are validated before they are proposed and again, deterministically, when
//! they are applied; the role reconciler decides, from the state and the leader's view of Raft,
//! which membership change comes next.
//!
//! Pure: no I/O, no threads, no clock. Times come in with the commands (set by the proposer), so
//! every replica applies the same bytes to the same result.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod command;
mod compat;
mod error;
mod ingress;
mod operators;
mod reconcile;
mod secrets;
mod service;
mod state;
mod tasks;
mod types;
mod validate;

pub use command::{Command, NodeUpdate, RequestId, MAX_BATCH, MAX_COMMAND_SIZE};
pub use error::ClusterError;
pub use ingress::{ingress_ports, ServiceEndpoints, TaskEndpoint, INGRESS_AUTO_PORTS};
pub use operators::{validate_operator_name, Operator, MAX_OPERATORS, MAX_OPERATOR_NAME};
pub use reconcile::{reconcile, Action, RaftView, Reconciliation};
pub use secrets::{
    validate_refs, Secret, SecretId, SecretKind, SecretRef, SecretSpec, MAX_SECRETS,
    MAX_SECRET_BYTES, MAX_SECRET_REFS,
};
pub use service::{
    object_id_string, validate_service_name, FailureAction, Health, HealthCheck, HealthTest,
    MountSpec, MountType, NewTask, PlacementSpec, PortConfig, PublishMode, ResourceSpec,
    RestartCondition, RestartPolicy, Runtime, Service, ServiceId, ServiceMode, ServiceSpec,
    Settings, Task, TaskChange, TaskId, TaskPort, TaskReport, TaskSpec, TaskState, TaskStatus,
    UpdateConfig, UpdateOrder, UpdateState, UpdateStatus, DEFAULT_HEALTH_INTERVAL_MS,
    DEFAULT_HEALTH_RETRIES, DEFAULT_RESTART_DELAY_MS, DEFAULT_STOP_GRACE_MS, DEFAULT_TASK_HISTORY,
    DEFAULT_UPDATE_MONITOR_MS, MAX_REPLICAS,
};
pub use state::{ClusterState, JOINING, MAX_REMEMBERED_REQUESTS, SNAPSHOT_VERSION};
pub use types::{
    format_unlock_key, node_id_string, parse_label, parse_unlock_key, validate_addr,
    validate_hostname, validate_label, Availability, ClusterInfo, NewNode, Node, NodeDescription,
    NodeId, NodeState, NodeStatus, Platform, Resources, Role,
};
pub use validate::{check_demote, check_leave, check_remove, no_leader, quorum, ManagerView};
