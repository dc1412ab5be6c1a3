//! `shoal-executor`: runs the tasks the managers assign to this node.
//!
//! Every runtime implements [`Executor`] (prepare, start, wait, shutdown, remove, plus adopt and
//! logs), so the agent drives a process task and a container task the same way. The agent keeps
//! no process handles of its own: an executor finds its tasks again after an agent restart
//! ([`Executor::adopt`]), which is how running tasks survive an agent upgrade or crash.
//!
//! Runtimes: [`ProcessExecutor`] (programs under a per-task shim) and [`ContainerExecutor`]
//! (containers of the node's Docker Engine, through its API). [`test_image`] builds the small
//! busybox image that container tests and benchmarks use.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

mod cgroup;
pub mod container;
mod logs;
mod process;
mod records;
mod shim;
pub mod test_image;

pub use container::ContainerExecutor;
pub use process::{ProcessExecutor, ShimCommand};
pub use shim::shim_main;

/// A boxed future, so that executors can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything an executor needs to run one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskRun {
    /// The task id (16 hex digits); names the task's directory, process group or container.
    pub task_id: String,
    /// The service's name (for labels and log prefixes).
    pub service_name: String,
    /// The slot (replicated) or 0 (global).
    pub slot: u64,
    /// Process runtime: the program; container runtime: the image.
    pub program: String,
    /// Arguments (container runtime: the command, empty for the image's default).
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// The working directory; `None` = the task's own directory under the data dir.
    pub workdir: Option<PathBuf>,
    /// Labels to put on the task where the runtime has them (containers).
    pub labels: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: Limits,
    /// How long `shutdown` waits after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// The cluster's id (containers are labelled with it).
    #[serde(default)]
    pub cluster_id: String,
    /// Container runtime: replaces the image's entrypoint (empty: the image's own).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Container runtime: the user to run as (`name`, `uid` or `uid:gid`); `None`: the image's.
    #[serde(default)]
    pub user: Option<String>,
    /// Container runtime: mount the root filesystem read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Container runtime: bind and volume mounts.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Container runtime: ports published on the node's own addresses (`mode=host`).
    #[serde(default)]
    pub ports: Vec<HostPort>,
    /// The health check (`None`: a container keeps its image's own, a process has none).
    #[serde(default)]
    pub health: Option<HealthConfig>,
}

/// What a health check runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HealthProbe {
    /// No check at all, not even a container image's own (`--no-healthcheck`).
    Disabled,
    /// A shell command in the task's context (a container's: run by the engine); exit 0 is
    /// healthy.
    Shell(String),
    /// A GET of the URL, made by the agent: a 2xx or 3xx answer is healthy.
    Http(String),
    /// A TCP connection to the port on the node, made by the agent.
    Tcp(u16),
}

/// A task's health check and its timing (Docker's semantics: a check every `interval`, the
/// first one `interval` after the start; `retries` failures in a row make the task unhealthy,
/// except within `start_period`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthConfig {
    /// What runs.
    pub probe: HealthProbe,
    /// Between two checks.
    pub interval: Duration,
    /// One check taking longer failed.
    pub timeout: Duration,
    /// Failures in a row that make the task unhealthy.
    pub retries: u32,
    /// Failures within this time after the start do not count.
    pub start_period: Duration,
}

/// A task's health as its runtime tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// No check passed yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks failed in a row.
    Unhealthy,
}

/// The outcome of one check the agent ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// It passed.
    pub ok: bool,
    /// What it printed or why it failed (bounded).
    pub output: String,
}

/// What a mount's source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MountKind {
    /// A path on the node.
    Bind,
    /// A named volume of the engine (created if missing; empty source: anonymous).
    Volume,
}

/// A mount into a task's container.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Bind or volume.
    pub kind: MountKind,
    /// The node's path (bind) or the volume's name (volume).
    pub source: String,
    /// The path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A port published on the task's node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostPort {
    /// The node's port (0: the engine picks a free one).
    pub published: u16,
    /// The container's port.
    pub target: u16,
    /// `true`: UDP; `false`: TCP.
    pub udp: bool,
}

/// Resource limits of a task; `None` = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// CPU in billionths of a CPU.
    pub nano_cpus: Option<u64>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Most processes and threads.
    pub pids: Option<u64>,
}

/// Whether this executor enforces [`Limits`] on this node (nodes report it, never silently).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitsSupport {
    /// Limits are enforced.
    Enforced,
    /// Limits are not enforced, and why (e.g. "cgroup v2 is not mounted").
    NotEnforced(String),
}

/// What a started task is, as the runtime knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeDetails {
    /// The task's main process id (process runtime, and containers' init process).
    pub pid: Option<u32>,
    /// The container id (container runtime).
    pub container_id: Option<String>,
    /// The runtime checks the task's health itself (a container image's own check).
    #[serde(default)]
    pub checked: bool,
    /// The ports published on the node, as bound (one asked as 0 has the engine's number).
    #[serde(default)]
    pub ports: Vec<BoundPort>,
}

/// A published port as the runtime bound it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoundPort {
    /// The port in the task.
    pub target: u16,
    /// The port on the node.
    pub published: u16,
    /// UDP rather than TCP.
    pub udp: bool,
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The code as docker shows it: the exit code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "task: non-zero exit ({c})"),
            ExitStatus::Signal(s) => write!(f, "task: killed by signal {s}"),
        }
    }
}

/// A task an executor found from an earlier run of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptedTask {
    /// What it was started with.
    pub run: TaskRun,
    /// Where it is now.
    pub state: AdoptedState,
}

/// The state of an adopted task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdoptedState {
    /// Prepared, never started.
    Prepared,
    /// Still running.
    Running(RuntimeDetails),
    /// It ended while the agent was away.
    Exited(ExitStatus),
    /// Its record is unreadable or its runtime lost it; the message says what.
    Failed(String),
}

/// Which output stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a task's output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// When it was written (Unix milliseconds).
    pub timestamp_ms: u64,
    /// Which stream.
    pub stream: Stream,
    /// The line, without its newline.
    pub text: String,
}

/// What `logs` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (of what is kept); `None` = all.
    pub tail: Option<usize>,
    /// Keep following new lines until the receiver is dropped or the task is removed.
    pub follow: bool,
}

/// Why an executor call failed. Errors before the task starts make it rejected, after it failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The task is not known to this executor.
    #[error("task {0} not found")]
    NotFound(String),
    /// The spec cannot be run here (e.g. program not found, bad working directory).
    #[error("{0}")]
    Invalid(String),
    /// The runtime failed (I/O, the container engine, …).
    #[error("{0}")]
    Runtime(String),
}

/// A runtime that runs tasks. All methods are idempotent where that is meaningful: `shutdown` of
/// a task that has ended, or `remove` of a task that is gone, succeed.
pub trait Executor: Send + Sync {
    /// The runtime's name, as nodes advertise it ("process", "container").
    fn runtime(&self) -> &'static str;

    /// Whether limits are enforced on this node.
    fn limits(&self) -> LimitsSupport;

    /// Whether the runtime can run tasks now, as last checked: `Err(why)` when not (the
    /// container engine went away). Nodes advertise only the runtimes that are available.
    fn available(&self) -> Result<(), String> {
        Ok(())
    }

    /// Checks again whether the runtime is there (pings the engine) and records the answer
    /// for [`Executor::available`]; the agent calls it every few seconds.
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Names the node whose tasks this executor runs (containers are labelled with it, and only
    /// its own are adopted); called when the node joins a swarm, before any task runs.
    fn set_node(&self, _node_id: &str) {}

    /// The version of the engine behind the runtime, when there is one (Docker's).
    fn engine_version(&self) -> Option<String> {
        None
    }

    /// Gets everything ready to start (directories, records, images); nothing runs yet.
    fn prepare<'a>(&'a self, run: &'a TaskRun) -> BoxFuture<'a, Result<(), ExecError>>;

    /// Starts a prepared task.
    fn start<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<RuntimeDetails, ExecError>>;

    /// Resolves when the task ends (also for adopted tasks), with how it ended.
    fn wait<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>>;

    /// Stops the task: SIGTERM (to the whole process group), then SIGKILL after `grace`; resolves
    /// once it has ended.
    fn shutdown<'a>(
        &'a self,
        task_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), ExecError>>;

    /// Forgets a task that has ended: its files, records, container.
    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>>;

    /// The tasks left by an earlier run of the agent.
    fn adopt(&self) -> BoxFuture<'_, Result<Vec<AdoptedTask>, ExecError>>;

    /// The task's health as the runtime itself checks it (a container's engine-run check), with
    /// the last check's output; `None` when the runtime checks nothing for this task.
    fn health<'a>(
        &'a self,
        _task_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(HealthState, String)>, ExecError>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether the runtime runs a task's shell health check itself (the engine does for
    /// containers); otherwise the agent runs it through [`Executor::probe`].
    fn runs_shell_checks(&self) -> bool {
        false
    }

    /// Runs a shell command in the task's context (its environment and working directory),
    /// killed after `timeout`: one health check.
    fn probe<'a>(
        &'a self,
        task_id: &'a str,
        _cmd: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<ProbeOutcome, ExecError>> {
        Box::pin(async move {
            Err(ExecError::Invalid(format!(
                "the {} runtime runs no health command for task {task_id}",
                self.runtime()
            )))
        })
    }

    /// The task's output: the kept lines (or the last `tail`), then new ones while `follow`.
    fn logs<'a>(
        &'a self,
        task_id: &'a str,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<LogLine>, ExecError>>;
}
