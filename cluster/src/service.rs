//! Services and tasks, named as Swarm names them: a service is desired state (a spec and a
//! version); a task is one attempt to run one slot of it, never re-run.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::types::{validate_label, NodeId, Resources, MAX_LABELS};

/// A service's identity, chosen when its creation is applied (from the Raft index).
pub type ServiceId = u64;

/// A task's identity, chosen when its creation is applied (from the Raft index).
pub type TaskId = u64;

/// The display form of a service or task id: 16 lowercase hex digits (`ls` shows 12).
pub fn object_id_string(id: u64) -> String {
    format!("{id:016x}")
}

/// Most replicas of one service.
pub const MAX_REPLICAS: u64 = 1_000_000;
/// Most arguments, environment entries or constraints of a service.
pub const MAX_LIST: usize = 1024;
/// Longest single string in a spec (an argument, an env entry, a path).
pub const MAX_STRING: usize = 16 * 1024;
/// Largest encoded service spec.
pub const MAX_SPEC_SIZE: usize = 128 * 1024;
/// Longest message or error kept in a task's status.
pub const MAX_STATUS_TEXT: usize = 1024;
/// Most tasks kept per slot when the operator sets no limit (`--task-history-limit`).
pub const DEFAULT_TASK_HISTORY: u32 = 5;
/// Default restart delay (Swarm's).
pub const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;
/// Default stop grace period (Swarm's).
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

/// How tasks of a service run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A program in its own process group, on any node.
    Process,
    /// A Docker container, on nodes with a Docker Engine.
    Container,
}

impl Runtime {
    /// The name nodes advertise and `--runtime` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Container => "container",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Runtime {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(Runtime::Process),
            "container" => Ok(Runtime::Container),
            _ => Err(ClusterError::Invalid(format!(
                "invalid runtime {s:?}: expected process or container"
            ))),
        }
    }
}

/// Replicated (a number of slots) or global (one task per eligible node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceMode {
    /// Slots 1..=replicas.
    Replicated {
        /// How many tasks should run.
        replicas: u64,
    },
    /// One task on every node that passes the filters.
    Global,
}

impl ServiceMode {
    /// `replicated` or `global`, as `service ls` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
        }
    }
}

/// When a task that ended is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// When it failed (non-zero exit, rejected, lost).
    OnFailure,
    /// Whenever it ended.
    Any,
}

impl fmt::Display for RestartCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        })
    }
}

impl std::str::FromStr for RestartCondition {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(RestartCondition::None),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "any" => Ok(RestartCondition::Any),
            _ => Err(ClusterError::Invalid(format!(
                "invalid restart condition {s:?}: expected none, on-failure or any"
            ))),
        }
    }
}

/// The restart policy of a service's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait between a task ending and its replacement starting.
    pub delay_ms: u64,
    /// Most restarts within `window_ms` (0: unlimited).
    pub max_attempts: u64,
    /// The window restarts are counted in (0: since the slot began).
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: DEFAULT_RESTART_DELAY_MS,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// What an update (or a rollback) does once too many of its tasks failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop replacing tasks; the operator decides (`service update` again, or rollback).
    #[default]
    Pause,
    /// Go on replacing tasks regardless.
    Continue,
    /// Go back to the previous spec (an update only; a failing rollback pauses).
    Rollback,
}

impl FailureAction {
    /// As the flags take it and `service inspect` shows it.
    pub fn name(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }

    /// The action named `s` (as [`FailureAction::name`] writes it).
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Pause, Self::Continue, Self::Rollback]
            .into_iter()
            .find(|a| a.name() == s)
    }
}

/// Whether a slot's new task starts before or after its old one stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (no overlap; capacity dips).
    #[default]
    StopFirst,
    /// Start the new task, stop the old one once the new one runs (healthy).
    StartFirst,
}

impl UpdateOrder {
    /// As the flags take it and `service inspect` shows it.
    pub fn name(self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }

    /// The order named `s` (as [`UpdateOrder::name`] writes it).
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::StopFirst, Self::StartFirst]
            .into_iter()
            .find(|o| o.name() == s)
    }
}

/// How tasks are replaced by an update (`--update-*`) or a rollback (`--rollback-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Slots replaced at once (0: all at once).
    pub parallelism: u64,
    /// Wait after a slot's new task runs before its worker takes the next slot.
    pub delay_ms: u64,
    /// What to do once too many new tasks failed.
    pub failure_action: FailureAction,
    /// How long a new task is watched after it runs: a failure then counts against the update.
    /// A new task that does not run (healthy) within this plus its start period failed too.
    pub monitor_ms: u64,
    /// Failures tolerated, in millionths of the tasks updated (0: none).
    pub max_failure_ppm: u32,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: DEFAULT_UPDATE_MONITOR_MS,
            max_failure_ppm: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// The default `--update-monitor` and `--rollback-monitor` (Swarm's).
pub const DEFAULT_UPDATE_MONITOR_MS: u64 = 5_000;
/// The default `--health-interval` and `--health-timeout` (Docker's).
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 30_000;
/// The default `--health-retries` (Docker's).
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;

/// What a health check runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthTest {
    /// No check of shoal's: containers keep their image's own (if any), processes have none.
    #[default]
    Default,
    /// `--no-healthcheck`: no check at all, not even the image's.
    Disabled,
    /// `--health-cmd`: a shell command in the task's context; exit 0 is healthy.
    Cmd(String),
    /// `--health-http URL`: a GET made by the agent; a 2xx or 3xx answer is healthy.
    Http(String),
    /// `--health-tcp PORT`: a connection to the port on the task's node is healthy.
    Tcp(u16),
}

/// A task's health check (`--health-*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What runs.
    pub test: HealthTest,
    /// Between two checks.
    pub interval_ms: u64,
    /// A check taking longer failed.
    pub timeout_ms: u64,
    /// Failures in a row that make the task unhealthy.
    pub retries: u32,
    /// Failures in this time after the start do not count (the task is starting).
    pub start_period_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            test: HealthTest::Default,
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_INTERVAL_MS,
            retries: DEFAULT_HEALTH_RETRIES,
            start_period_ms: 0,
        }
    }
}

impl HealthCheck {
    /// Whether shoal runs a check of its own (an image's own check is the engine's business,
    /// and is seen through the engine's health status).
    pub fn is_set(&self) -> bool {
        !matches!(self.test, HealthTest::Default | HealthTest::Disabled)
    }
}

/// A running task's health, as its node last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check.
    #[default]
    None,
    /// Checked, not healthy yet (within the start period, or no check passed yet).
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks failed in a row.
    Unhealthy,
}

impl Health {
    /// As `service ps` shows it after `Running`.
    pub fn name(self) -> &'static str {
        match self {
            Health::None => "",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Where tasks may go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    /// `node.labels.zone==east`, … (as `--constraint` takes them).
    pub constraints: Vec<String>,
    /// `spread=node.labels.zone`, …
    pub preferences: Vec<String>,
    /// Most tasks of the service on one node (0: no limit).
    pub max_replicas_per_node: u64,
}

/// CPU and memory a task may use (limits) and is guaranteed (reservations, counted by the
/// scheduler whether or not limits are enforced).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Enforced where the node can (cgroup v2, the engine).
    pub limits: Resources,
    /// Reserved on the node the task is placed on.
    pub reservations: Resources,
    /// Most processes and threads a task may have (0: no limit), as Docker's `--limit-pids`.
    pub pids_limit: u64,
}

/// The largest pids limit a task may have: Linux's highest pid_max (2^22).
pub const MAX_PIDS_LIMIT: u64 = 1 << 22;

/// What each task of a service runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Process or container.
    pub runtime: Runtime,
    /// The image (containers) or the program (processes).
    pub image: String,
    /// Arguments (the container's command, or the program's arguments).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory (empty: the runtime's default).
    pub workdir: String,
    /// Limits and reservations.
    pub resources: ResourceSpec,
    /// When tasks are replaced after they end.
    pub restart: RestartPolicy,
    /// Constraints, preferences, per-node cap.
    pub placement: PlacementSpec,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace_ms: u64,
    /// Bumped by `service update --force` to redeploy an unchanged spec.
    pub force_update: u64,
    /// Containers: replaces the image's entrypoint (empty: the image's own).
    pub entrypoint: Vec<String>,
    /// Containers: the user to run as (`name`, `uid` or `uid:gid`; empty: the image's).
    pub user: String,
    /// Containers: mount the root filesystem read-only.
    pub read_only: bool,
    /// Containers: bind and volume mounts.
    pub mounts: Vec<MountSpec>,
    /// Containers: published ports.
    pub ports: Vec<PortConfig>,
    /// The health check: a task with one counts as running once healthy.
    pub health: HealthCheck,
    /// Secrets and configs given to each task as files.
    #[serde(default, deserialize_with = "crate::compat::secret_refs")]
    pub secrets: Vec<crate::secrets::SecretRef>,
}

/// What a mount's source is (`--mount type=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A path on the task's node.
    Bind,
    /// A named volume of the node's engine (created if missing).
    Volume,
}

/// A mount into every task's container (`--mount type=bind,source=/data,target=/data`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Bind or volume.
    pub kind: MountType,
    /// The node's path (bind) or the volume's name (volume; empty: anonymous).
    pub source: String,
    /// The path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// How a published port is reached: through every node (the routing mesh) or only the node the
/// task runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Every node's published port reaches the service (the routing mesh).
    Ingress,
    /// The port is bound on the node running the task.
    Host,
}

/// A published port (`-p published=8080,target=80,mode=host`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// The port on the node (0: the engine picks one in host mode; in ingress mode the
    /// cluster gives one from 30000-32767 when the service is created).
    pub published: u16,
    /// The port in the container.
    pub target: u16,
    /// UDP rather than TCP.
    pub udp: bool,
    /// Ingress or host.
    pub mode: PublishMode,
}

impl fmt::Display for PortConfig {
    /// As `service ls` shows it: `*:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "*:{}->{}/{}", self.published, self.target, proto)
    }
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            runtime: Runtime::Process,
            image: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            workdir: String::new(),
            resources: ResourceSpec::default(),
            restart: RestartPolicy::default(),
            placement: PlacementSpec::default(),
            stop_grace_ms: DEFAULT_STOP_GRACE_MS,
            force_update: 0,
            entrypoint: Vec::new(),
            user: String::new(),
            read_only: false,
            mounts: Vec::new(),
            ports: Vec::new(),
            health: HealthCheck::default(),
            secrets: Vec::new(),
        }
    }
}

/// A service as the operator describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique among services.
    pub name: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// What every task runs.
    pub task: TaskSpec,
    /// How an update replaces tasks.
    pub update: UpdateConfig,
    /// How a rollback replaces tasks.
    pub rollback: UpdateConfig,
}

impl ServiceSpec {
    /// A replicated service of `replicas` tasks running `image`, with default policies.
    pub fn new(name: &str, image: &str, replicas: u64) -> Self {
        ServiceSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas },
            task: TaskSpec {
                image: image.into(),
                ..TaskSpec::default()
            },
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
        }
    }

    /// The replica count of a replicated service.
    pub fn replicas(&self) -> Option<u64> {
        match self.mode {
            ServiceMode::Replicated { replicas } => Some(replicas),
            ServiceMode::Global => None,
        }
    }

    /// Checks every field; the error names the first problem.
    pub fn validate(&self) -> Result<(), ClusterError> {
        validate_service_name(&self.name)?;
        if self.labels.len() > MAX_LABELS {
            return Err(invalid(format!("at most {MAX_LABELS} labels per service")));
        }
        for (k, v) in &self.labels {
            validate_label(k, v)?;
        }
        if let ServiceMode::Replicated { replicas } = self.mode {
            if replicas > MAX_REPLICAS {
                return Err(invalid(format!(
                    "invalid replicas {replicas}: at most {MAX_REPLICAS}"
                )));
            }
        }
        let t = &self.task;
        if t.image.is_empty() {
            return Err(invalid(match t.runtime {
                Runtime::Process => "a process service needs a program".to_string(),
                Runtime::Container => "a container service needs an image".to_string(),
            }));
        }
        check_text(&t.image, "image")?;
        check_list(&t.args, "arguments")?;
        check_list(&t.env, "environment entries")?;
        for e in &t.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !k.contains('\0') => {}
                _ => {
                    return Err(invalid(format!(
                        "invalid environment entry {e:?}: expected KEY=VALUE"
                    )))
                }
            }
        }
        check_text(&t.workdir, "working directory")?;
        if !t.workdir.is_empty() && !t.workdir.starts_with('/') {
            return Err(invalid(format!(
                "invalid working directory {:?}: must be an absolute path",
                t.workdir
            )));
        }
        let r = &t.resources;
        if r.limits.nano_cpus > 0 && r.reservations.nano_cpus > r.limits.nano_cpus
            || r.limits.memory_bytes > 0 && r.reservations.memory_bytes > r.limits.memory_bytes
        {
            return Err(invalid(
                "a reservation cannot exceed its limit (--reserve-* > --limit-*)".into(),
            ));
        }
        if r.limits.memory_bytes > 0 && r.limits.memory_bytes < 6 << 20 {
            return Err(invalid(
                "invalid memory limit: the minimum is 6MB (as Docker's)".into(),
            ));
        }
        if r.pids_limit > MAX_PIDS_LIMIT {
            return Err(invalid(format!(
                "invalid pids limit {}: at most {MAX_PIDS_LIMIT} (the kernel's own maximum)",
                r.pids_limit
            )));
        }
        if t.restart.max_attempts > 1_000_000 {
            return Err(invalid("restart max attempts: at most 1000000".into()));
        }
        check_list(&t.placement.constraints, "constraints")?;
        check_list(&t.placement.preferences, "placement preferences")?;
        shoal_scheduler::parse_constraints(&t.placement.constraints)
            .map_err(|e| invalid(e.to_string()))?;
        for p in &t.placement.preferences {
            shoal_scheduler::Preference::parse(p).map_err(|e| invalid(e.to_string()))?;
        }
        validate_container_fields(t)?;
        validate_health(&t.health)?;
        crate::secrets::validate_refs(&t.secrets, t.runtime == Runtime::Process)?;
        validate_update_config(&self.update, "update")?;
        validate_update_config(&self.rollback, "rollback")?;
        if self.rollback.failure_action == FailureAction::Rollback {
            return Err(invalid(
                "invalid rollback failure action \"rollback\": a rollback can pause or continue"
                    .into(),
            ));
        }
        if t.placement.max_replicas_per_node > u64::from(u32::MAX) {
            return Err(invalid("max replicas per node too large".into()));
        }
        if postcard::to_allocvec(self).map_or(true, |b| b.len() > MAX_SPEC_SIZE) {
            return Err(invalid(format!(
                "the service spec is larger than {} KiB",
                MAX_SPEC_SIZE / 1024
            )));
        }
        Ok(())
    }
}

/// The most a duration of a policy or health check may be (a week): larger values are typos.
const MAX_POLICY_MS: u64 = 7 * 24 * 3600 * 1000;

/// Checks a health check: one probe with a sane target, and positive, bounded times.
fn validate_health(h: &HealthCheck) -> Result<(), ClusterError> {
    match &h.test {
        HealthTest::Default | HealthTest::Disabled => return Ok(()),
        HealthTest::Cmd(c) => {
            if c.trim().is_empty() {
                return Err(invalid("--health-cmd: the command is empty".into()));
            }
            check_text(c, "health command")?;
        }
        HealthTest::Http(url) => {
            check_text(url, "health URL")?;
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                invalid(format!(
                    "invalid --health-http {url:?}: expected http://HOST:PORT/PATH"
                ))
            })?;
            let host = rest.split('/').next().unwrap_or("");
            if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
                return Err(invalid(format!("invalid --health-http {url:?}: no host")));
            }
        }
        HealthTest::Tcp(port) => {
            if *port == 0 {
                return Err(invalid("invalid --health-tcp 0: expected a port".into()));
            }
        }
    }
    if h.interval_ms == 0 || h.interval_ms > MAX_POLICY_MS {
        return Err(invalid(
            "--health-interval must be between 1ms and a week".into(),
        ));
    }
    if h.timeout_ms == 0 || h.timeout_ms > MAX_POLICY_MS {
        return Err(invalid(
            "--health-timeout must be between 1ms and a week".into(),
        ));
    }
    if h.retries == 0 || h.retries > 1000 {
        return Err(invalid(
            "--health-retries must be between 1 and 1000".into(),
        ));
    }
    if h.start_period_ms > MAX_POLICY_MS {
        return Err(invalid("--health-start-period: at most a week".into()));
    }
    Ok(())
}

/// Checks an update or rollback policy.
fn validate_update_config(c: &UpdateConfig, what: &str) -> Result<(), ClusterError> {
    if c.max_failure_ppm > 1_000_000 {
        return Err(invalid(format!(
            "--{what}-max-failure-ratio must be between 0 and 1"
        )));
    }
    if c.delay_ms > MAX_POLICY_MS || c.monitor_ms > MAX_POLICY_MS {
        return Err(invalid(format!(
            "--{what}-delay and --{what}-monitor: at most a week"
        )));
    }
    if c.parallelism > MAX_REPLICAS {
        return Err(invalid(format!(
            "--{what}-parallelism: at most {MAX_REPLICAS}"
        )));
    }
    Ok(())
}

/// Checks the fields only containers have: set only with the container runtime, mounts with
/// absolute targets (and sources, for binds), ports in range and not published twice. A
/// process may publish host-mode ports with a number (it binds them itself, told them in
/// `SHOAL_PORT_<TARGET>` and `PORT`).
fn validate_container_fields(t: &TaskSpec) -> Result<(), ClusterError> {
    if t.runtime == Runtime::Process {
        let used = [
            (!t.entrypoint.is_empty(), "--entrypoint"),
            (!t.user.is_empty(), "--user"),
            (t.read_only, "--read-only"),
            (!t.mounts.is_empty(), "--mount"),
        ];
        if let Some((_, flag)) = used.iter().find(|(set, _)| *set) {
            return Err(invalid(format!(
                "{flag} needs the container runtime (--runtime container)"
            )));
        }
    }
    check_list(&t.entrypoint, "entrypoint")?;
    check_text(&t.user, "user")?;
    if t.mounts.len() > 64 {
        return Err(invalid("too many mounts: at most 64".into()));
    }
    for m in &t.mounts {
        check_text(&m.source, "mount source")?;
        check_text(&m.target, "mount target")?;
        if !m.target.starts_with('/') {
            return Err(invalid(format!(
                "invalid mount target {:?}: must be an absolute path",
                m.target
            )));
        }
        match m.kind {
            MountType::Bind if !m.source.starts_with('/') => {
                return Err(invalid(format!(
                    "invalid bind mount source {:?}: must be an absolute path",
                    m.source
                )))
            }
            MountType::Volume if !m.source.is_empty() && !valid_volume_name(&m.source) =>
            {
                return Err(invalid(format!(
                    "invalid volume name {:?}: letters, digits, '_', '.' or '-', starting with a letter or digit",
                    m.source
                )))
            }
            _ => {}
        }
        if t.mounts.iter().filter(|o| o.target == m.target).count() > 1 {
            return Err(invalid(format!("duplicate mount target {}", m.target)));
        }
    }
    if t.ports.len() > 256 {
        return Err(invalid("too many published ports: at most 256".into()));
    }
    for p in &t.ports {
        if p.target == 0 {
            return Err(invalid(
                "invalid port: the target port must be 1 to 65535".into(),
            ));
        }
        if t.runtime == Runtime::Process && p.mode == PublishMode::Host && p.published == 0 {
            return Err(invalid(format!(
                "port {}: a process task binds its host-mode ports itself, so it needs a \
                 published port (-p published=PORT,target={},mode=host)",
                p.target, p.target
            )));
        }
        if p.published != 0
            && t.ports
                .iter()
                .filter(|o| o.published == p.published && o.udp == p.udp)
                .count()
                > 1
        {
            return Err(invalid(format!(
                "port {}/{} is published twice",
                p.published,
                if p.udp { "udp" } else { "tcp" }
            )));
        }
    }
    Ok(())
}

/// A volume name as Docker takes it: letters, digits, `_`, `.`, `-`, starting with a letter or
/// digit.
fn valid_volume_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn invalid(why: String) -> ClusterError {
    ClusterError::Invalid(why)
}

fn check_text(s: &str, what: &str) -> Result<(), ClusterError> {
    if s.len() > MAX_STRING {
        return Err(invalid(format!("{what}: longer than {MAX_STRING} bytes")));
    }
    if s.contains('\0') {
        return Err(invalid(format!("{what}: contains a NUL byte")));
    }
    Ok(())
}

fn check_list(items: &[String], what: &str) -> Result<(), ClusterError> {
    if items.len() > MAX_LIST {
        return Err(invalid(format!("too many {what}: at most {MAX_LIST}")));
    }
    items.iter().try_for_each(|s| check_text(s, what))
}

/// Checks a service name as Docker does: 1–63 characters of letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit.
pub fn validate_service_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid service name {name:?}: 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// A service in the cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its id.
    pub id: ServiceId,
    /// The Raft index of its last change (the version tasks are made from).
    pub version: u64,
    /// What the operator asked for now.
    pub spec: ServiceSpec,
    /// The spec before the last update (for rollback).
    pub previous: Option<ServiceSpec>,
    /// Specs by version still referenced by some task (the current one always included), so that
    /// any task's spec can be sent to its node.
    pub versions: BTreeMap<u64, ServiceSpec>,
    /// Created (Unix ms).
    pub created_at_ms: u64,
    /// Last changed (Unix ms).
    pub updated_at_ms: u64,
    /// The last update or rollback of its tasks (`None`: their spec never changed).
    pub update_status: Option<UpdateStatus>,
}

/// Where an update or rollback stands (Docker's `UpdateStatus.State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced with the new spec.
    Updating,
    /// Stopped after failures; the operator decides.
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Tasks are being replaced with the previous spec.
    RollbackStarted,
    /// The rollback stopped after failures.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// As `service inspect` and `service ls` show it.
    pub fn name(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// Tasks are being replaced (an update or a rollback in progress).
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// A rollback (started, paused or completed).
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
}

/// The last update or rollback of a service: kept in the replicated state, so that a new leader
/// goes on where the last one was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Where it stands.
    pub state: UpdateState,
    /// Began (Unix ms).
    pub started_at_ms: u64,
    /// Ended, completed or paused (Unix ms; 0 while in progress).
    pub completed_at_ms: u64,
    /// What happened (`update paused due to failure or early termination of task …`).
    pub message: String,
    /// The new tasks that failed so far (counted against the failure ratio once each).
    pub failed: Vec<TaskId>,
}

impl UpdateStatus {
    /// A new update or rollback, in progress from `at_ms`.
    pub fn started(state: UpdateState, at_ms: u64, message: &str) -> Self {
        UpdateStatus {
            state,
            started_at_ms: at_ms,
            completed_at_ms: 0,
            message: message.into(),
            failed: Vec::new(),
        }
    }
}

impl Service {
    /// The policy tasks are replaced by now: the rollback policy once a rollback began (until
    /// the next update), else the update policy.
    pub fn rollout_policy(&self) -> &UpdateConfig {
        match &self.update_status {
            Some(u) if u.state.is_rollback() => &self.spec.rollback,
            _ => &self.spec.update,
        }
    }

    /// The spec a task of `version` was made from.
    pub fn spec_of(&self, version: u64) -> Option<&ServiceSpec> {
        if version == self.version {
            Some(&self.spec)
        } else {
            self.versions.get(&version)
        }
    }
}

/// The lifecycle of a task, in order: observed state only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    New,
    /// Waiting for a node.
    Pending,
    /// Placed on a node.
    Assigned,
    /// The node has it.
    Accepted,
    /// The node prepares it (image, directories).
    Preparing,
    /// Prepared; waiting to start (a restart delay).
    Ready,
    /// Starting.
    Starting,
    /// Running.
    Running,
    /// Exited with code 0.
    Complete,
    /// Stopped on request.
    Shutdown,
    /// Exited with an error, or lost.
    Failed,
    /// Could not be prepared or started.
    Rejected,
    /// To be removed (desired state of a scaled-down or removed service's task).
    Remove,
    /// Its node went away and never came back.
    Orphaned,
}

impl TaskState {
    /// Every state, in order.
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    /// Ended (or lost): it will never run again.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// The word `service ps` shows (`Running`, `Failed`, …).
    pub fn title(self) -> &'static str {
        match self {
            TaskState::New => "New",
            TaskState::Pending => "Pending",
            TaskState::Assigned => "Assigned",
            TaskState::Accepted => "Accepted",
            TaskState::Preparing => "Preparing",
            TaskState::Ready => "Ready",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Shutdown => "Shutdown",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Remove => "Remove",
            TaskState::Orphaned => "Orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.title().to_ascii_lowercase())
    }
}

/// What a node observed of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Where in its lifecycle.
    pub state: TaskState,
    /// When it got there (Unix ms, the committing manager's clock).
    pub timestamp_ms: u64,
    /// What happened (`started`, `pending task scheduling`).
    pub message: String,
    /// Why it failed or waits (`task: non-zero exit (3)`, `no suitable node (…)`).
    pub err: String,
    /// The exit code, once it exited.
    pub exit_code: Option<i64>,
    /// The process id (process runtime).
    pub pid: u32,
    /// The container id (container runtime).
    pub container_id: String,
    /// Its health, while it runs.
    pub health: Health,
    /// The ports it answers on, on its node, while it runs (host-mode ports; one the engine
    /// picked shows its number here).
    #[serde(default, deserialize_with = "crate::compat::task_ports")]
    pub ports: Vec<TaskPort>,
}

/// Most ports one task's status lists.
pub const MAX_TASK_PORTS: usize = 64;

/// A port a running task answers on: `published` on its node reaches `target` in the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPort {
    /// The port in the task (the container's, or the one a process was told).
    pub target: u16,
    /// The port on the node.
    pub published: u16,
    /// UDP rather than TCP.
    pub udp: bool,
}

impl fmt::Display for TaskPort {
    /// As `service ps` shows it: `*:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        PortConfig {
            published: self.published,
            target: self.target,
            udp: self.udp,
            mode: PublishMode::Host,
        }
        .fmt(f)
    }
}

impl TaskStatus {
    /// A status in `state` with a message.
    pub fn new(state: TaskState, message: &str) -> Self {
        TaskStatus {
            state,
            timestamp_ms: 0,
            message: message.into(),
            err: String::new(),
            exit_code: None,
            pid: 0,
            container_id: String::new(),
            health: Health::None,
            ports: Vec::new(),
        }
    }

    /// Checks the text fields' sizes (remote input).
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.message.len() > MAX_STATUS_TEXT
            || self.err.len() > MAX_STATUS_TEXT
            || self.container_id.len() > 128
            || self.ports.len() > MAX_TASK_PORTS
        {
            return Err(invalid("task status text too long".into()));
        }
        Ok(())
    }
}

/// One attempt to run a slot of a service (or a global service on a node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// Its service.
    pub service: ServiceId,
    /// Replicated: 1..=replicas; global: 0.
    pub slot: u64,
    /// Where it runs (global tasks are created with their node).
    pub node: Option<NodeId>,
    /// The service version whose spec it runs.
    pub spec_version: u64,
    /// What the manager wants: ready, running, shutdown or remove.
    pub desired: TaskState,
    /// What the node observed.
    pub status: TaskStatus,
    /// Created (Unix ms).
    pub created_at_ms: u64,
    /// The Raft index of its creation (orders a slot's tasks).
    pub created_index: u64,
    /// The Raft index of its last change.
    pub version: u64,
    /// Restarts in the current restart window that led to this task.
    pub restarts: u64,
    /// When the current restart window began (Unix ms).
    pub window_start_ms: u64,
    /// A restart's replacement waits (desired ready) until then.
    pub not_before_ms: u64,
    /// When it first counted as running: running, and healthy if it has a health check (Unix
    /// ms; 0: not yet). Updates wait for it and watch the task for their monitor period from it.
    pub ready_at_ms: u64,
}

impl Task {
    /// Whether the manager still wants it to run (or to be ready to).
    pub fn wanted(&self) -> bool {
        self.desired <= TaskState::Running
    }

    /// Wanted and not ended: it holds its slot and its node's resources.
    pub fn live(&self) -> bool {
        self.wanted() && !self.status.state.is_terminal()
    }

    /// Counts as running: running, and not starting or unhealthy by its health check.
    pub fn is_ready(&self) -> bool {
        self.status.state == TaskState::Running
            && matches!(self.status.health, Health::None | Health::Healthy)
    }
}

/// A task the orchestrator creates (its id is chosen when applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// The service.
    pub service: ServiceId,
    /// The spec version (must be the service's current version when applied).
    pub spec_version: u64,
    /// Replicated: the slot; global: 0.
    pub slot: u64,
    /// The node, if placed already (always, for global tasks).
    pub node: Option<NodeId>,
    /// Ready (a restart waiting for its delay) or running.
    pub desired: TaskState,
    /// Why it is pending, when `node` is none.
    pub pending_reason: String,
    /// Restarts in the window that led to it.
    pub restarts: u64,
    /// Start of the restart window.
    pub window_start_ms: u64,
    /// Not started before (restart delay).
    pub not_before_ms: u64,
}

/// One change the leader's orchestrator or scheduler makes to a task. A batch of them travels
/// as one Raft entry; a change made stale by an earlier entry is skipped, not an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskChange {
    /// A new task.
    Create(NewTask),
    /// Move the desired state forward (ready → running → shutdown → remove).
    Desired {
        /// The task.
        id: TaskId,
        /// The new desired state.
        desired: TaskState,
    },
    /// Place a pending task.
    Assign {
        /// The task.
        id: TaskId,
        /// The node.
        node: NodeId,
    },
    /// Record why a task is still pending.
    Pending {
        /// The task.
        id: TaskId,
        /// The scheduler's explanation.
        reason: String,
    },
    /// The task's node went away for good: observed state orphaned.
    Orphan {
        /// The task.
        id: TaskId,
        /// Why.
        message: String,
    },
    /// The reaper forgets an ended task.
    Delete {
        /// The task.
        id: TaskId,
    },
    /// Stop a task for a reason the node does not know (an update gave up on it): desired
    /// shutdown, and the reason in its status until the node reports an error of its own.
    Stop {
        /// The task.
        id: TaskId,
        /// Why (`update: did not reach running (healthy) within 5s`).
        reason: String,
    },
    /// An update or rollback moved on (failures counted, paused, completed); applied only while
    /// the service is still at `version`.
    UpdateStatus {
        /// The service.
        service: ServiceId,
        /// The service version the decision was made on.
        version: u64,
        /// The new status.
        status: UpdateStatus,
    },
    /// Roll a service back to its previous spec after a failed update (only while it is still
    /// at `version`).
    Rollback {
        /// The service.
        service: ServiceId,
        /// The service version the decision was made on.
        version: u64,
        /// Why (names the failed task).
        message: String,
    },
}

/// A node's report of one task's observed status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub id: TaskId,
    /// Its status (the timestamp is replaced by the command's time).
    pub status: TaskStatus,
}

/// Cluster-wide settings (`swarm update`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Tasks kept per slot (the live one and its history), `--task-history-limit`.
    pub task_history_limit: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            task_history_limit: DEFAULT_TASK_HISTORY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_ordered_as_swarm_orders_them() {
        for w in TaskState::ALL.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        assert!(!TaskState::Running.is_terminal());
        assert!(TaskState::Complete.is_terminal());
        assert!(TaskState::Orphaned.is_terminal());
    }

    #[test]
    fn specs_are_validated() {
        let ok = ServiceSpec::new("web", "/bin/sleep", 3);
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.name = "-web".into();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("service name"));
        let mut bad = ok.clone();
        bad.task.image.clear();
        assert!(bad.validate().unwrap_err().to_string().contains("program"));
        let mut bad = ok.clone();
        bad.task.env = vec!["NOEQUALS".into()];
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
        let mut bad = ok.clone();
        bad.task.placement.constraints = vec!["node.labels.zone=east".into()];
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.task.resources.limits.memory_bytes = 1 << 20;
        assert!(bad.validate().unwrap_err().to_string().contains("6MB"));
        let mut bad = ok.clone();
        bad.task.resources.pids_limit = MAX_PIDS_LIMIT + 1;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pids limit"));
        let mut fine = ok.clone();
        fine.task.resources.pids_limit = MAX_PIDS_LIMIT;
        assert!(fine.validate().is_ok());
        let mut bad = ok.clone();
        bad.task.resources.limits.nano_cpus = 1_000_000_000;
        bad.task.resources.reservations.nano_cpus = 2_000_000_000;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reservation"));
        let mut bad = ok.clone();
        bad.mode = ServiceMode::Replicated {
            replicas: MAX_REPLICAS + 1,
        };
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.task.args = vec!["x".repeat(MAX_STRING + 1)];
        assert!(bad.validate().is_err());
    }

    #[test]
    fn container_fields_are_validated() {
        let err = |s: &ServiceSpec| s.validate().unwrap_err().to_string();
        let mut process = ServiceSpec::new("web", "/bin/sleep", 1);
        process.task.read_only = true;
        assert!(err(&process).contains("--read-only needs the container runtime"));
        // A process publishes host-mode ports it binds itself: with a number, not 0.
        let mut process = ServiceSpec::new("web", "/bin/sleep", 1);
        process.task.ports = vec![PortConfig {
            published: 8080,
            target: 80,
            udp: false,
            mode: PublishMode::Host,
        }];
        assert!(process.validate().is_ok());
        process.task.ports[0].published = 0;
        assert!(err(&process).contains("needs a published port"));
        let mut ok = ServiceSpec::new("web", "nginx", 1);
        ok.task.runtime = Runtime::Container;
        ok.task.read_only = true;
        ok.task.user = "1000:1000".into();
        ok.task.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        ok.task.mounts = vec![
            MountSpec {
                kind: MountType::Bind,
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true,
            },
            MountSpec {
                kind: MountType::Volume,
                source: "cache-1".into(),
                target: "/cache".into(),
                read_only: false,
            },
        ];
        let host = PortConfig {
            published: 8080,
            target: 80,
            udp: false,
            mode: PublishMode::Host,
        };
        ok.task.ports = vec![host];
        ok.validate().unwrap();
        assert_eq!(host.to_string(), "*:8080->80/tcp");

        let mut bad = ok.clone();
        bad.task.mounts[0].source = "relative".into();
        assert!(err(&bad).contains("absolute"));
        let mut bad = ok.clone();
        bad.task.mounts[1].target = "/data".into();
        assert!(err(&bad).contains("duplicate mount target"));
        let mut bad = ok.clone();
        bad.task.mounts[1].source = "../etc".into();
        assert!(err(&bad).contains("volume name"));
        let mut bad = ok.clone();
        bad.task.ports.push(host);
        assert!(err(&bad).contains("published twice"));
        let mut ingress = ok.clone();
        ingress.task.ports[0].mode = PublishMode::Ingress;
        ingress.validate().unwrap();
        let mut bad = ok.clone();
        bad.task.ports[0].target = 0;
        assert!(err(&bad).contains("target port"));
        // The same port over UDP is another port.
        let mut udp = ok;
        udp.task.ports.push(PortConfig { udp: true, ..host });
        udp.validate().unwrap();
    }
}
