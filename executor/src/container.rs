//! The `container` runtime: each task is a container of the node's Docker Engine, driven through
//! the Engine API (bollard), never the docker CLI.
//!
//! Choices worth knowing:
//! - Every container carries the labels `com.shoal.cluster`, `com.shoal.node`,
//!   `com.shoal.service`, `com.shoal.task` and `com.shoal.slot`, plus the task's own labels and
//!   `com.shoal.spec` (the task's [`TaskRun`] as JSON, so that [`Executor::adopt`] gives back
//!   exactly what the task was started with; without it, the run is rebuilt from the other labels
//!   and the engine's inspect). A task's container is always looked up by the labels
//!   `com.shoal.node` = this node and `com.shoal.task` = the task id: containers of other nodes
//!   (several agents may share one engine) or not made by shoal are never touched.
//! - Names: `{service}.{slot}.{task}.{node}` (replicated) or `{service}.{node}.{task}` (global).
//! - Images are never pulled: a task whose image is not on the node is rejected
//!   (`No such image: …`). The restart policy is `no` (shoal restarts tasks, not the engine).
//! - Exit codes above 128 are reported as [`ExitStatus::Signal`] only when the signal is known:
//!   the container was OOM-killed (SIGKILL), or this executor stopped it (SIGTERM or SIGKILL).
//!   Otherwise they stay [`ExitStatus::Code`] (e.g. 137 of an adopted container).
//! - The engine's own word on how a container ended (`State.Error`, OOM kill) is available from
//!   [`ContainerExecutor::exit_error`] once [`Executor::wait`] has resolved.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    Mount as DockerMount, MountType, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{
    AdoptedState, AdoptedTask, BoxFuture, ExecError, Executor, ExitStatus, Limits, LimitsSupport,
    LogLine, LogOptions, Mount, MountKind, RuntimeDetails, Stream, TaskRun,
};

/// Label: the cluster's id.
pub const LABEL_CLUSTER: &str = "com.shoal.cluster";
/// Label: the node whose agent owns the container.
pub const LABEL_NODE: &str = "com.shoal.node";
/// Label: the service's name.
pub const LABEL_SERVICE: &str = "com.shoal.service";
/// Label: the task's id.
pub const LABEL_TASK: &str = "com.shoal.task";
/// Label: the task's slot (0 for global services).
pub const LABEL_SLOT: &str = "com.shoal.slot";
/// Label: the task's [`TaskRun`] as JSON.
pub const LABEL_SPEC: &str = "com.shoal.spec";

/// The engine address used when neither the caller nor `DOCKER_HOST` names one.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Timeout of one API request (up to its response headers; streams run longer).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// How long one ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `wait` checks that the engine is still there.
const WAIT_PING_EVERY: Duration = Duration::from_secs(5);
/// Failed pings in a row after which `wait` gives the engine up.
const WAIT_PING_FAILURES: u32 = 3;
/// How many times `wait` re-opens a wait request that broke while the engine still answers.
const WAIT_RETRIES: u32 = 5;
/// Log lines longer than this are cut.
const MAX_LINE: usize = 16 * 1024;
/// Extra time `shutdown` allows the engine beyond the grace period.
const STOP_SLACK_SECS: u64 = 60;
/// Containers killed (and cleaned up by the engine) at once; see `shutdown_task`.
const MAX_CONCURRENT_STOPS: usize = 8;

/// The `container` runtime: tasks run as containers of a Docker Engine; they survive agent
/// restarts and are found again by [`Executor::adopt`] through their labels.
pub struct ContainerExecutor {
    /// The client; replaced by one of the negotiated API version once the engine answers.
    docker: RwLock<Option<Docker>>,
    /// Whether the API version was negotiated yet.
    negotiated: AtomicBool,
    host: String,
    /// Labels this node's containers; set when the node joins (see [`Executor::set_node`]).
    node_id: RwLock<String>,
    /// The engine's version, from the last answer.
    engine_version: RwLock<String>,
    /// The last check: `Err(why)` while the engine does not answer.
    status: RwLock<Result<(), String>>,
    /// Tasks this executor has stopped: their exit codes above 128 are the engine's signals.
    stopped: Mutex<HashSet<String>>,
    /// Task id → container id, for containers this executor created or found: saves the
    /// engine a label search on every call (container ids are never reused; a container
    /// removed behind shoal's back answers 404 and is forgotten).
    ids: Mutex<HashMap<String, String>>,
    /// Tasks whose container this executor created and has not started yet: their start needs
    /// no inspection first (nothing else started them).
    fresh: Mutex<HashSet<String>>,
    /// Containers being killed and cleaned up by the engine at once.
    stops: tokio::sync::Semaphore,
}

impl std::fmt::Debug for ContainerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerExecutor")
            .field("host", &self.host)
            .field("node_id", &self.node_id())
            .field("engine_version", &self.engine_version())
            .finish()
    }
}

/// The engine's status code and message, if the engine answered with an error.
fn engine_answer(e: &DockerError) -> Option<(u16, &str)> {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message.as_str())),
        _ => None,
    }
}

/// A client of the engine at `host` (`unix://`, a path, `tcp://` or `http://`); fails while a
/// Unix socket does not exist.
fn client_for(host: &str) -> Result<Docker, String> {
    if host.starts_with("unix://") || host.starts_with('/') {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    }
    .map_err(|e| e.to_string())
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(engine_answer(e), Some((404, _)))
}

fn engine_err(e: DockerError) -> ExecError {
    ExecError::Runtime(format!("Docker Engine: {e}"))
}

/// Engine errors as the task's fault (`Invalid`, with the engine's words); transport errors as
/// the runtime's.
fn spec_err(e: DockerError) -> ExecError {
    match engine_answer(&e) {
        Some((_, msg)) => ExecError::Invalid(msg.to_string()),
        None => engine_err(e),
    }
}

/// Keeps the characters the engine allows in names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The container name of a task on a node.
fn container_name(run: &TaskRun, node_id: &str) -> String {
    let service = name_part(&run.service_name);
    let service = if service.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        service
    } else {
        format!("t{service}")
    };
    let (task, node) = (name_part(&run.task_id), name_part(node_id));
    if run.slot > 0 {
        format!("{service}.{}.{task}.{node}", run.slot)
    } else {
        format!("{service}.{node}.{task}")
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The engine's create request for a task.
fn create_body(run: &TaskRun, node_id: &str) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = run
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_CLUSTER.into(), run.cluster_id.clone());
    labels.insert(LABEL_NODE.into(), node_id.to_string());
    labels.insert(LABEL_SERVICE.into(), run.service_name.clone());
    labels.insert(LABEL_TASK.into(), run.task_id.clone());
    labels.insert(LABEL_SLOT.into(), run.slot.to_string());
    if let Ok(spec) = serde_json::to_string(run) {
        labels.insert(LABEL_SPEC.into(), spec);
    }

    let mounts: Vec<DockerMount> = run
        .mounts
        .iter()
        .map(|m| DockerMount {
            target: Some(m.target.clone()),
            source: (!m.source.is_empty()).then(|| m.source.clone()),
            typ: Some(match m.kind {
                MountKind::Bind => MountType::BIND,
                MountKind::Volume => MountType::VOLUME,
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &run.ports {
        let key = format!("{}/{}", p.target, if p.udp { "udp" } else { "tcp" });
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        let host_port = if p.published == 0 {
            String::new()
        } else {
            p.published.to_string()
        };
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(String::new()),
                host_port: Some(host_port),
            });
    }

    let host_config = HostConfig {
        nano_cpus: run.limits.nano_cpus.map(to_i64),
        memory: run.limits.memory_bytes.map(to_i64),
        pids_limit: run.limits.pids.map(to_i64),
        readonly_rootfs: Some(run.read_only),
        mounts: (!mounts.is_empty()).then_some(mounts),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        auto_remove: Some(false),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(run.program.clone()),
        cmd: (!run.args.is_empty()).then(|| run.args.clone()),
        entrypoint: (!run.entrypoint.is_empty()).then(|| run.entrypoint.clone()),
        env: (!run.env.is_empty()).then(|| {
            run.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        }),
        working_dir: run.workdir.as_ref().map(|w| w.display().to_string()),
        user: run.user.clone(),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config),
        healthcheck: run.health.as_ref().and_then(engine_healthcheck),
        ..Default::default()
    }
}

/// The engine's healthcheck for a task's: a shell command runs in the container, `Disabled`
/// turns off the image's own; the agent runs HTTP and TCP checks itself (the image's own check,
/// if any, then stays but is not what decides).
fn engine_healthcheck(h: &crate::HealthConfig) -> Option<bollard::models::HealthConfig> {
    let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    match &h.probe {
        crate::HealthProbe::Disabled => Some(bollard::models::HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        }),
        crate::HealthProbe::Shell(cmd) => Some(bollard::models::HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), cmd.clone()]),
            interval: Some(ns(h.interval)),
            timeout: Some(ns(h.timeout)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(ns(h.start_period)),
            start_interval: None,
        }),
        crate::HealthProbe::Http(_) | crate::HealthProbe::Tcp(_) => None,
    }
}

/// The engine's health of a container and its last check's output.
fn engine_health(info: &ContainerInspectResponse) -> Option<(crate::HealthState, String)> {
    use bollard::models::HealthStatusEnum as H;
    let h = info.state.as_ref()?.health.as_ref()?;
    let state = match h.status? {
        H::STARTING => crate::HealthState::Starting,
        H::HEALTHY => crate::HealthState::Healthy,
        H::UNHEALTHY => crate::HealthState::Unhealthy,
        H::NONE | H::EMPTY => return None,
    };
    let output = h
        .log
        .as_ref()
        .and_then(|l| l.last())
        .and_then(|r| r.output.clone())
        .unwrap_or_default();
    Some((state, bounded_output(output.trim())))
}

/// At most 1 KiB of a check's output (on a character boundary).
pub(crate) fn bounded_output(s: &str) -> String {
    let mut end = s.len().min(1024);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Whether the engine's timestamp is Go's zero time (never happened).
fn zero_time(t: Option<&str>) -> bool {
    match t {
        None => true,
        Some(t) => t.is_empty() || t.starts_with("0001-01-01"),
    }
}

fn details_of(info: &ContainerInspectResponse) -> RuntimeDetails {
    let pid = info
        .state
        .as_ref()
        .and_then(|s| s.pid)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0);
    RuntimeDetails {
        pid,
        container_id: info.id.clone(),
        checked: engine_health(info).is_some(),
        ports: bound_ports(info),
    }
}

/// The host ports the engine bound for a container (`80/tcp` → the first binding's port).
fn bound_ports(info: &ContainerInspectResponse) -> Vec<crate::BoundPort> {
    let Some(ports) = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
    else {
        return Vec::new();
    };
    let mut out: Vec<crate::BoundPort> = ports
        .iter()
        .filter_map(|(key, bindings)| {
            let (target, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            let target: u16 = target.parse().ok()?;
            let published: u16 = bindings
                .as_ref()?
                .iter()
                .find_map(|b| b.host_port.as_deref()?.parse().ok())?;
            Some(crate::BoundPort {
                target,
                published,
                udp: proto == "udp",
            })
        })
        .collect();
    out.sort_by_key(|p| (p.target, p.udp));
    out
}

/// The engine's word on how a container ended, if any.
fn error_of(info: &ContainerInspectResponse) -> Option<String> {
    let state = info.state.as_ref()?;
    let mut parts = Vec::new();
    if state.oom_killed == Some(true) {
        parts.push("the container ran out of memory (OOM killed)".to_string());
    }
    if let Some(e) = state.error.as_ref().filter(|e| !e.is_empty()) {
        parts.push(e.clone());
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// An exit code as an [`ExitStatus`]: a signal when the signal is known (see the module docs).
fn exit_status(code: i64, oom_killed: bool, stopped_by_us: bool) -> ExitStatus {
    let code = i32::try_from(code).unwrap_or(i32::MAX);
    let signal = code - 128;
    if code > 128
        && ((oom_killed && signal == 9) || (stopped_by_us && (signal == 9 || signal == 15)))
    {
        ExitStatus::Signal(signal)
    } else {
        ExitStatus::Code(code)
    }
}

/// The run of a container found on the engine: from its spec label, else from its other labels
/// and the inspect.
fn run_of(info: &ContainerInspectResponse) -> TaskRun {
    let config = info.config.clone().unwrap_or_default();
    let labels: HashMap<String, String> = config.labels.clone().unwrap_or_default();
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let from_spec = labels
        .get(LABEL_SPEC)
        .and_then(|s| serde_json::from_str::<TaskRun>(s).ok());
    let mut run = match from_spec {
        Some(run) => run,
        None => {
            let host = info.host_config.clone().unwrap_or_default();
            let env = config
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv, String::new()),
                })
                .collect();
            let mounts = host
                .mounts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| {
                    let kind = match m.typ? {
                        MountType::BIND => MountKind::Bind,
                        MountType::VOLUME => MountKind::Volume,
                        _ => return None,
                    };
                    Some(Mount {
                        kind,
                        source: m.source.unwrap_or_default(),
                        target: m.target.unwrap_or_default(),
                        read_only: m.read_only.unwrap_or(false),
                    })
                })
                .collect();
            TaskRun {
                program: config.image.clone().unwrap_or_default(),
                args: config.cmd.clone().unwrap_or_default(),
                entrypoint: config.entrypoint.clone().unwrap_or_default(),
                env,
                workdir: config
                    .working_dir
                    .clone()
                    .filter(|w| !w.is_empty())
                    .map(PathBuf::from),
                user: config.user.clone().filter(|u| !u.is_empty()),
                read_only: host.readonly_rootfs.unwrap_or(false),
                mounts,
                limits: Limits {
                    nano_cpus: host
                        .nano_cpus
                        .and_then(|v| u64::try_from(v).ok())
                        .filter(|v| *v > 0),
                    memory_bytes: host
                        .memory
                        .and_then(|v| u64::try_from(v).ok())
                        .filter(|v| *v > 0),
                    pids: host
                        .pids_limit
                        .and_then(|v| u64::try_from(v).ok())
                        .filter(|v| *v > 0),
                },
                labels: labels
                    .iter()
                    .filter(|(k, _)| !k.starts_with("com.shoal."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>(),
                ..TaskRun::default()
            }
        }
    };
    run.task_id = label(LABEL_TASK);
    run.service_name = label(LABEL_SERVICE);
    run.cluster_id = label(LABEL_CLUSTER);
    run.slot = label(LABEL_SLOT).parse().unwrap_or(0);
    run
}

/// Where an adopted container is.
fn adopted_state(info: &ContainerInspectResponse) -> AdoptedState {
    let Some(state) = info.state.as_ref() else {
        return AdoptedState::Failed("the engine reports no state".to_string());
    };
    let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
    match status {
        ContainerStateStatusEnum::RUNNING
        | ContainerStateStatusEnum::PAUSED
        | ContainerStateStatusEnum::RESTARTING => AdoptedState::Running(details_of(info)),
        ContainerStateStatusEnum::CREATED => match error_of(info) {
            Some(e) => AdoptedState::Failed(e),
            None if zero_time(state.started_at.as_deref()) => AdoptedState::Prepared,
            None => AdoptedState::Failed("the container was started but is back in created".into()),
        },
        ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD => {
            AdoptedState::Exited(exit_status(
                state.exit_code.unwrap_or(0),
                state.oom_killed == Some(true),
                false,
            ))
        }
        other => AdoptedState::Failed(format!("the container is {other:?}").to_lowercase()),
    }
}

/// Parses an RFC 3339 timestamp (as the engine writes them, e.g.
/// `2026-12-05T11:30:25.123456789Z`) into Unix milliseconds.
fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let ms_digits: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = ms_digits.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    // Days since 1970-01-01 of a civil date (proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Splits the engine's log frames into lines, per stream: strips and parses the timestamp each
/// frame starts with, joins partial frames, cuts over-long lines.
#[derive(Default)]
struct LineSplitter {
    pending: [Option<Pending>; 2],
}

struct Pending {
    timestamp_ms: u64,
    text: Vec<u8>,
    /// The line was cut: drop the rest until its newline.
    cut: bool,
}

impl LineSplitter {
    fn index(stream: Stream) -> usize {
        match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    /// Takes one frame; returns the lines it completes.
    fn push(&mut self, stream: Stream, frame: &[u8]) -> Vec<LogLine> {
        let mut out = Vec::new();
        // Every frame the engine sends with `timestamps` starts with "<RFC 3339> ".
        let (ts, mut body) = match frame.iter().position(|c| *c == b' ') {
            Some(sp) => match std::str::from_utf8(&frame[..sp])
                .ok()
                .and_then(parse_rfc3339_ms)
            {
                Some(ts) => (Some(ts), &frame[sp + 1..]),
                None => (None, frame),
            },
            None => (None, frame),
        };
        let slot = &mut self.pending[Self::index(stream)];
        while !body.is_empty() {
            let nl = body.iter().position(|c| *c == b'\n');
            let (chunk, rest, complete) = match nl {
                Some(i) => (&body[..i], &body[i + 1..], true),
                None => (body, &body[body.len()..], false),
            };
            let p = slot.get_or_insert_with(|| Pending {
                timestamp_ms: ts.unwrap_or_else(now_ms),
                text: Vec::new(),
                cut: false,
            });
            if !p.cut {
                let room = MAX_LINE - p.text.len();
                if chunk.len() > room {
                    p.text.extend_from_slice(&chunk[..room]);
                    p.cut = true;
                } else {
                    p.text.extend_from_slice(chunk);
                }
            }
            if complete {
                if let Some(p) = slot.take() {
                    out.push(p.into_line(stream));
                }
            }
            body = rest;
        }
        out
    }

    /// The unfinished lines, at the end of the output.
    fn finish(&mut self) -> Vec<LogLine> {
        let mut out = Vec::new();
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if let Some(p) = self.pending[i].take() {
                out.push(p.into_line(stream));
            }
        }
        out
    }
}

impl Pending {
    fn into_line(self, stream: Stream) -> LogLine {
        let mut text = String::from_utf8_lossy(&self.text).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        LogLine {
            timestamp_ms: self.timestamp_ms,
            stream,
            text,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How one wait request ended.
enum WaitEnd {
    /// The container exited with this code.
    Exited(i64),
    /// The container is gone.
    Gone,
    /// The engine does not answer.
    Lost(String),
    /// The request broke but the engine answers: try again.
    Retry(String),
}

impl ContainerExecutor {
    /// A client of the engine at `docker_host` (`unix://…`, `tcp://…` or `http://…`; `None`:
    /// `DOCKER_HOST` if set, else `unix:///var/run/docker.sock`), without talking to it yet:
    /// the runtime counts as unavailable until [`Executor::check`] reaches the engine. `node_id`
    /// (may be empty until the node joins) labels this node's containers.
    pub fn new(docker_host: Option<&str>, node_id: &str) -> Result<ContainerExecutor, ExecError> {
        let host = match docker_host {
            Some(h) => h.to_string(),
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_HOST.to_string()),
        };
        if !(host.starts_with("unix://")
            || host.starts_with('/')
            || host.starts_with("tcp://")
            || host.starts_with("http://"))
        {
            return Err(ExecError::Invalid(format!(
                "unsupported Docker Engine address {host:?} (use unix://, tcp:// or http://)"
            )));
        }
        // A socket that does not exist yet (an engine not started) is not an error here: the
        // client is made again at each check until it can be.
        let docker = client_for(&host).ok();
        Ok(ContainerExecutor {
            docker: RwLock::new(docker),
            negotiated: AtomicBool::new(false),
            status: RwLock::new(Err(format!(
                "the Docker Engine at {host} was not reached yet"
            ))),
            host,
            node_id: RwLock::new(node_id.to_string()),
            engine_version: RwLock::new(String::new()),
            stopped: Mutex::new(HashSet::new()),
            ids: Mutex::new(HashMap::new()),
            fresh: Mutex::new(HashSet::new()),
            stops: tokio::sync::Semaphore::new(MAX_CONCURRENT_STOPS),
        })
    }

    /// [`ContainerExecutor::new`], then reaches the engine (negotiating the API version): an
    /// error if it does not answer. `node_id` must not be empty.
    pub async fn connect(
        docker_host: Option<&str>,
        node_id: &str,
    ) -> Result<ContainerExecutor, ExecError> {
        if node_id.is_empty() {
            return Err(ExecError::Invalid("the node id is empty".to_string()));
        }
        let exec = ContainerExecutor::new(docker_host, node_id)?;
        exec.reach().await.map_err(ExecError::Runtime)?;
        Ok(exec)
    }

    /// Talks to the engine: negotiates the API version the first time, pings, records the
    /// answer (version and availability).
    async fn reach(&self) -> Result<(), String> {
        let host = &self.host;
        let result = async {
            if !self.negotiated.load(Ordering::SeqCst) {
                let client = self.d().map_err(|e| e.to_string())?;
                let docker = tokio::time::timeout(PING_TIMEOUT, client.negotiate_version())
                    .await
                    .map_err(|_| format!("cannot reach the Docker Engine at {host}: timed out"))?
                    .map_err(|e| format!("cannot reach the Docker Engine at {host}: {e}"))?;
                *self.docker.write().unwrap_or_else(|e| e.into_inner()) = Some(docker);
                self.negotiated.store(true, Ordering::SeqCst);
            }
            let version = self
                .ping()
                .await
                .map_err(|e| format!("cannot reach the Docker Engine at {host}: {e}"))?;
            *self
                .engine_version
                .write()
                .unwrap_or_else(|e| e.into_inner()) = version;
            Ok(())
        }
        .await;
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = result.clone();
        result
    }

    /// The client (cheap to clone: it shares its connection pool), made on first use: an
    /// error while the engine's socket does not exist.
    fn d(&self) -> Result<Docker, ExecError> {
        if let Some(d) = self
            .docker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(d.clone());
        }
        let made = client_for(&self.host).map_err(|e| {
            ExecError::Runtime(format!(
                "cannot reach the Docker Engine at {}: {e}",
                self.host
            ))
        })?;
        let mut slot = self.docker.write().unwrap_or_else(|e| e.into_inner());
        Ok(slot.get_or_insert(made).clone())
    }

    /// Checks that the engine answers; returns its version (e.g. "20.10.24+dfsg1").
    pub async fn ping(&self) -> Result<String, ExecError> {
        let docker = self.d()?;
        let ask = async {
            docker.ping().await?;
            docker.version().await
        };
        match tokio::time::timeout(PING_TIMEOUT, ask).await {
            Err(_) => Err(ExecError::Runtime(format!(
                "the Docker Engine did not answer within {}s",
                PING_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(engine_err(e)),
            Ok(Ok(v)) => Ok(v.version.unwrap_or_default()),
        }
    }

    /// The engine's version, from its last answer (empty before any).
    pub fn engine_version(&self) -> String {
        self.engine_version
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The engine's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The node id this executor labels its containers with.
    pub fn node_id(&self) -> String {
        self.node_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The engine client (for the test image helper).
    pub(crate) fn docker(&self) -> Result<Docker, ExecError> {
        self.d()
    }

    /// The engine's word on how the task's container ended (`State.Error`, an OOM kill), if it
    /// said anything; `None` also when the container is unknown or the engine does not answer.
    pub async fn exit_error(&self, task_id: &str) -> Option<String> {
        let id = self.find(task_id).await.ok()??;
        let info = self.d().ok()?.inspect_container(&id, None).await.ok()?;
        error_of(&info)
    }

    /// The ids of the containers (running or not) that carry every `key=value` label given.
    /// The engine filters; the labels are checked again here, so an engine that ignores a
    /// filter never makes shoal touch another tool's container.
    pub async fn containers_labelled(&self, labels: &[String]) -> Result<Vec<String>, ExecError> {
        let mut filters = HashMap::new();
        filters.insert("label", labels.to_vec());
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .d()?
            .list_containers(Some(options))
            .await
            .map_err(engine_err)?;
        Ok(list
            .into_iter()
            .filter(|c| {
                let have = c.labels.as_ref();
                labels.iter().all(|want| {
                    let (k, v) = want.split_once('=').unwrap_or((want, ""));
                    have.and_then(|h| h.get(k)).is_some_and(|x| x == v)
                })
            })
            .filter_map(|c| c.id)
            .collect())
    }

    /// Force-removes every container that carries every label given (e.g. one cluster's, for
    /// a demo or a benchmark cleaning up after itself); returns how many went.
    pub async fn remove_labelled(&self, labels: &[String]) -> Result<usize, ExecError> {
        let mut removed = 0;
        for id in self.containers_labelled(labels).await? {
            let options = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match self.d()?.remove_container(&id, Some(options)).await {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(engine_err(e)),
            }
        }
        Ok(removed)
    }

    /// The label that marks this node's containers.
    fn node_label(&self) -> String {
        format!("{LABEL_NODE}={}", self.node_id())
    }

    /// The id of this node's container of a task, if there is one.
    async fn find(&self, task_id: &str) -> Result<Option<String>, ExecError> {
        if let Some(id) = self.known(task_id) {
            return Ok(Some(id));
        }
        let labels = [self.node_label(), format!("{LABEL_TASK}={task_id}")];
        let found = self.containers_labelled(&labels).await?.into_iter().next();
        if let Some(id) = &found {
            self.remember(task_id, id);
        }
        Ok(found)
    }

    /// The container id last seen for a task, if any.
    fn known(&self, task_id: &str) -> Option<String> {
        self.ids.lock().ok()?.get(task_id).cloned()
    }

    fn remember(&self, task_id: &str, id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(task_id.to_string(), id.to_string());
        }
    }

    fn forget_id(&self, task_id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.remove(task_id);
        }
        if let Ok(mut fresh) = self.fresh.lock() {
            fresh.remove(task_id);
        }
    }

    /// Like `find`, but a missing container is `NotFound`.
    async fn require(&self, task_id: &str) -> Result<String, ExecError> {
        self.find(task_id)
            .await?
            .ok_or_else(|| ExecError::NotFound(task_id.to_string()))
    }

    /// Inspects a container; gone is `NotFound`.
    async fn inspect(
        &self,
        task_id: &str,
        id: &str,
    ) -> Result<ContainerInspectResponse, ExecError> {
        match self.d()?.inspect_container(id, None).await {
            Ok(info) => Ok(info),
            Err(e) if is_not_found(&e) => {
                self.forget_id(task_id);
                Err(ExecError::NotFound(task_id.to_string()))
            }
            Err(e) => Err(engine_err(e)),
        }
    }

    fn stopped_by_us(&self, task_id: &str) -> bool {
        self.stopped
            .lock()
            .map(|s| s.contains(task_id))
            .unwrap_or(false)
    }

    async fn prepare_task(&self, run: &TaskRun) -> Result<(), ExecError> {
        if run.task_id.is_empty() {
            return Err(ExecError::Invalid("the task id is empty".to_string()));
        }
        // A container this executor knows is there already. One it does not know (made by an
        // earlier run and not adopted, or by a concurrent prepare) makes the create below
        // fail on its name, and is looked up then: a new task costs no label search.
        if self.known(&run.task_id).is_some() {
            return Ok(());
        }
        if run.program.is_empty() {
            return Err(ExecError::Invalid("the task names no image".to_string()));
        }
        let name = container_name(run, &self.node_id());
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        match self
            .d()?
            .create_container(Some(options), create_body(run, &self.node_id()))
            .await
        {
            Ok(created) => {
                self.remember(&run.task_id, &created.id);
                if let Ok(mut fresh) = self.fresh.lock() {
                    fresh.insert(run.task_id.clone());
                }
                Ok(())
            }
            // The task's container exists already (its name is the task's).
            Err(e) if matches!(engine_answer(&e), Some((409, _))) => {
                match self.find(&run.task_id).await? {
                    Some(_) => Ok(()),
                    None => Err(spec_err(e)),
                }
            }
            // The engine's own words for a missing image (shoal never pulls).
            Err(e) if matches!(engine_answer(&e), Some((404, m)) if m.to_ascii_lowercase().contains("image")) => {
                Err(ExecError::Invalid(format!(
                    "No such image: {}",
                    run.program
                )))
            }
            Err(e) => Err(spec_err(e)),
        }
    }

    async fn start_task(&self, task_id: &str) -> Result<RuntimeDetails, ExecError> {
        let id = self.require(task_id).await?;
        let fresh = self
            .fresh
            .lock()
            .map(|mut f| f.remove(task_id))
            .unwrap_or(false);
        if !fresh {
            // Found, not made here: it may have run already, and must not run twice.
            let info = self.inspect(task_id, &id).await?;
            let started = info
                .state
                .as_ref()
                .is_some_and(|s| !zero_time(s.started_at.as_deref()));
            if started {
                return Ok(details_of(&info));
            }
        }
        match self.d()?.start_container(&id, None).await {
            Ok(()) => {}
            // Already running.
            Err(e) if matches!(engine_answer(&e), Some((304, _))) => {}
            Err(e) if is_not_found(&e) => {
                self.forget_id(task_id);
                return Err(ExecError::NotFound(task_id.to_string()));
            }
            Err(e) => return Err(spec_err(e)),
        }
        let info = self.inspect(task_id, &id).await?;
        Ok(details_of(&info))
    }

    /// One wait request, watched by pings.
    async fn wait_once(&self, id: &str) -> WaitEnd {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let docker = match self.d() {
            Ok(d) => d,
            Err(e) => return WaitEnd::Lost(e.to_string()),
        };
        let mut stream = docker.wait_container(id, Some(options));
        let mut ticker = tokio::time::interval(WAIT_PING_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut failures = 0;
        loop {
            tokio::select! {
                item = stream.next() => {
                    let broke = match item {
                        Some(Ok(r)) => return WaitEnd::Exited(r.status_code),
                        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => {
                            return WaitEnd::Exited(code)
                        }
                        Some(Err(e)) if is_not_found(&e) => return WaitEnd::Gone,
                        Some(Err(e)) => e.to_string(),
                        None => "the wait request ended without an answer".to_string(),
                    };
                    return match self.ping().await {
                        Ok(_) => WaitEnd::Retry(broke),
                        Err(e) => WaitEnd::Lost(format!("{broke}; {e}")),
                    };
                }
                _ = ticker.tick() => {
                    match self.ping().await {
                        Ok(_) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            if failures >= WAIT_PING_FAILURES {
                                return WaitEnd::Lost(e.to_string());
                            }
                        }
                    }
                }
            }
        }
    }

    async fn wait_task(&self, task_id: &str) -> Result<ExitStatus, ExecError> {
        let id = self.require(task_id).await?;
        let info = self.inspect(task_id, &id).await?;
        if let Some(state) = &info.state {
            if state.status == Some(ContainerStateStatusEnum::CREATED) {
                return Err(ExecError::Runtime(match error_of(&info) {
                    Some(e) => e,
                    None => format!("task {task_id} has not been started"),
                }));
            }
        }
        let mut retries = 0;
        let code = loop {
            match self.wait_once(&id).await {
                WaitEnd::Exited(code) => break code,
                WaitEnd::Gone => {
                    self.forget_id(task_id);
                    return Err(ExecError::NotFound(task_id.to_string()));
                }
                WaitEnd::Lost(e) => {
                    return Err(ExecError::Runtime(format!("lost the Docker Engine: {e}")))
                }
                WaitEnd::Retry(e) => {
                    retries += 1;
                    if retries > WAIT_RETRIES {
                        return Err(ExecError::Runtime(format!(
                            "waiting for the container failed: {e}"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        // The inspect knows more (an OOM kill); the wait's code stands if the container is gone.
        let (code, oom) = match self.d()?.inspect_container(&id, None).await {
            Ok(info) => match info.state {
                Some(s) => (s.exit_code.unwrap_or(code), s.oom_killed == Some(true)),
                None => (code, false),
            },
            Err(_) => (code, false),
        };
        Ok(exit_status(code, oom, self.stopped_by_us(task_id)))
    }

    async fn shutdown_task(&self, task_id: &str, grace: Duration) -> Result<(), ExecError> {
        let Some(id) = self.find(task_id).await? else {
            return Ok(());
        };
        if let Ok(mut s) = self.stopped.lock() {
            s.insert(task_id.to_string());
        }
        if !grace.is_zero() {
            // The polite part: the container's stop signal, then up to the grace period for it
            // to end. Many tasks may wait here at once.
            let info = match self.inspect(task_id, &id).await {
                Ok(info) => info,
                Err(ExecError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            if info.state.as_ref().is_none_or(|s| s.running != Some(true)) {
                return Ok(());
            }
            let signal = info
                .config
                .and_then(|c| c.stop_signal)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "SIGTERM".to_string());
            let options = KillContainerOptionsBuilder::new().signal(&signal).build();
            match self.d()?.kill_container(&id, Some(options)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                // Not running (any more).
                Err(e) if matches!(engine_answer(&e), Some((409, _))) => return Ok(()),
                Err(e) => return Err(engine_err(e)),
            }
            let docker = self
                .d()?
                .with_timeout(grace + Duration::from_secs(STOP_SLACK_SECS));
            let options = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let mut wait = docker.wait_container(&id, Some(options));
            match tokio::time::timeout(grace, wait.next()).await {
                Ok(Some(Ok(_) | Err(DockerError::DockerContainerWaitError { .. }))) => {
                    return Ok(())
                }
                Ok(Some(Err(e))) if is_not_found(&e) => return Ok(()),
                // The grace period is over (or the wait broke): kill.
                _ => {}
            }
        }
        // SIGKILL and the engine's clean-up of the container (its network namespace above
        // all): `MAX_CONCURRENT_STOPS` at a time, as the engine slows down when many run at
        // once (100 containers stopped through its API: 8.6 s all at once, 6.4 s 8 at a time).
        let _permit = self.stops.acquire().await;
        let docker = self.d()?.with_timeout(Duration::from_secs(STOP_SLACK_SECS));
        let options = StopContainerOptionsBuilder::new().t(0).build();
        match docker.stop_container(&id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine_err(e)),
        }
    }

    async fn remove_task(&self, task_id: &str) -> Result<(), ExecError> {
        let Some(id) = self.find(task_id).await? else {
            return Ok(());
        };
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let done = match self.d()?.remove_container(&id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) if matches!(engine_answer(&e), Some((409, m)) if m.contains("already in progress")) => {
                Ok(())
            }
            Err(e) => Err(engine_err(e)),
        };
        if done.is_ok() {
            if let Ok(mut s) = self.stopped.lock() {
                s.remove(task_id);
            }
            self.forget_id(task_id);
        }
        done
    }

    async fn adopt_tasks(&self) -> Result<Vec<AdoptedTask>, ExecError> {
        let mut out = Vec::new();
        for id in self.containers_labelled(&[self.node_label()]).await? {
            let info = match self.d()?.inspect_container(&id, None).await {
                Ok(info) => info,
                Err(e) if is_not_found(&e) => continue, // removed meanwhile
                Err(e) => return Err(engine_err(e)),
            };
            let run = run_of(&info);
            if run.task_id.is_empty() {
                continue;
            }
            self.remember(&run.task_id, &id);
            out.push(AdoptedTask {
                state: adopted_state(&info),
                run,
            });
        }
        out.sort_by(|a, b| a.run.task_id.cmp(&b.run.task_id));
        Ok(out)
    }

    async fn task_logs(
        &self,
        task_id: &str,
        options: LogOptions,
    ) -> Result<mpsc::Receiver<LogLine>, ExecError> {
        let id = self.require(task_id).await?;
        let tail = options
            .tail
            .map(|n| n.to_string())
            .unwrap_or_else(|| "all".to_string());
        let query = LogsOptionsBuilder::new()
            .follow(options.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(&tail)
            .build();
        let mut stream = self.d()?.logs(&id, Some(query));
        // The first answer tells whether the engine serves the logs at all (e.g. a log driver
        // without reading support); later errors only end the stream.
        let first = tokio::select! {
            first = stream.next() => Some(first),
            _ = tokio::time::sleep(Duration::from_millis(200)) => None,
        };
        if let Some(Some(Err(e))) = &first {
            if is_not_found(e) {
                return Err(ExecError::NotFound(task_id.to_string()));
            }
            if let Some((_, msg)) = engine_answer(e) {
                return Err(ExecError::Runtime(msg.to_string()));
            }
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut splitter = LineSplitter::default();
            let mut pending_first = first;
            loop {
                let item = match pending_first.take() {
                    Some(item) => item,
                    None => tokio::select! {
                        item = stream.next() => item,
                        _ = tx.closed() => return,
                    },
                };
                let Some(Ok(frame)) = item else {
                    break;
                };
                let (stream_kind, bytes) = match frame {
                    bollard::container::LogOutput::StdErr { message } => (Stream::Stderr, message),
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message }
                    | bollard::container::LogOutput::StdIn { message } => (Stream::Stdout, message),
                };
                for line in splitter.push(stream_kind, &bytes) {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            for line in splitter.finish() {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

impl Executor for ContainerExecutor {
    fn runtime(&self) -> &'static str {
        "container"
    }

    fn limits(&self) -> LimitsSupport {
        LimitsSupport::Enforced
    }

    fn available(&self) -> Result<(), String> {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.reach())
    }

    fn set_node(&self, node_id: &str) {
        *self.node_id.write().unwrap_or_else(|e| e.into_inner()) = node_id.to_string();
    }

    fn engine_version(&self) -> Option<String> {
        let v = ContainerExecutor::engine_version(self);
        (!v.is_empty()).then_some(v)
    }

    fn prepare<'a>(&'a self, run: &'a TaskRun) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.prepare_task(run))
    }

    fn start<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<RuntimeDetails, ExecError>> {
        Box::pin(self.start_task(task_id))
    }

    fn health<'a>(
        &'a self,
        task_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(crate::HealthState, String)>, ExecError>> {
        Box::pin(async move {
            let id = self.require(task_id).await?;
            let info = self.inspect(task_id, &id).await?;
            Ok(engine_health(&info))
        })
    }

    fn runs_shell_checks(&self) -> bool {
        true
    }

    /// Resolves when the container exits (at once if it has), also for adopted containers. A
    /// container never started is an error; an engine that stops answering (three failed pings
    /// 5 s apart, or a broken wait request and a failed ping) is `Runtime("lost the Docker
    /// Engine: …")`. [`ContainerExecutor::exit_error`] then tells the engine's own error.
    fn wait<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(self.wait_task(task_id))
    }

    /// Stops the container with the engine's timeout = `grace` rounded up to whole seconds
    /// (SIGTERM, then SIGKILL); fine if it has stopped or is gone.
    fn shutdown<'a>(
        &'a self,
        task_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.shutdown_task(task_id, grace))
    }

    /// Force-removes the container and its anonymous volumes; fine if it is gone.
    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.remove_task(task_id))
    }

    /// All containers (running or not) labelled with this node's id.
    fn adopt(&self) -> BoxFuture<'_, Result<Vec<AdoptedTask>, ExecError>> {
        Box::pin(self.adopt_tasks())
    }

    fn logs<'a>(
        &'a self,
        task_id: &'a str,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<LogLine>, ExecError>> {
        Box::pin(self.task_logs(task_id, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-12-05T11:30:25.123456789Z"),
            Some(1_796_470_225_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T01:00:01+01:00"),
            Some(951_868_801_000)
        );
        assert_eq!(parse_rfc3339_ms("hello"), None);
        assert_eq!(parse_rfc3339_ms("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2000-01-01T00:00:00"), None);
    }

    #[test]
    fn frames_split_into_lines() {
        let mut s = LineSplitter::default();
        let lines = s.push(Stream::Stdout, b"1970-01-01T00:00:01.000000000Z hi\n");
        assert_eq!(
            lines,
            vec![LogLine {
                timestamp_ms: 1000,
                stream: Stream::Stdout,
                text: "hi".into()
            }]
        );
        // A partial frame is joined with the next one; another stream is separate.
        assert!(s
            .push(Stream::Stderr, b"1970-01-01T00:00:02Z par")
            .is_empty());
        assert!(s.push(Stream::Stdout, b"1970-01-01T00:00:03Z x\ny").len() == 1);
        let lines = s.push(Stream::Stderr, b"1970-01-01T00:00:04Z tial\n");
        assert_eq!(lines[0].text, "partial");
        assert_eq!(lines[0].timestamp_ms, 2000);
        let rest = s.finish();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].text, "y");
    }

    #[test]
    fn long_lines_are_cut() {
        let mut s = LineSplitter::default();
        let mut frame = b"1970-01-01T00:00:01Z ".to_vec();
        frame.extend(std::iter::repeat_n(b'a', MAX_LINE + 100));
        assert!(s.push(Stream::Stdout, &frame).is_empty());
        let mut more = b"1970-01-01T00:00:01Z ".to_vec();
        more.extend(std::iter::repeat_n(b'b', 100));
        more.extend(b"\nnext\n");
        let lines = s.push(Stream::Stdout, &more);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text.len(), MAX_LINE);
        assert!(lines[0].text.bytes().all(|c| c == b'a'));
        assert_eq!(lines[1].text, "next");
    }

    #[test]
    fn names_and_labels() {
        let run = TaskRun {
            task_id: "00000000000000aa".into(),
            service_name: "web".into(),
            slot: 2,
            program: "img:1".into(),
            cluster_id: "c1".into(),
            ports: vec![crate::HostPort {
                published: 0,
                target: 80,
                udp: false,
            }],
            ..TaskRun::default()
        };
        assert_eq!(container_name(&run, "n1"), "web.2.00000000000000aa.n1");
        let global = TaskRun {
            slot: 0,
            ..run.clone()
        };
        assert_eq!(container_name(&global, "n1"), "web.n1.00000000000000aa");
        let body = create_body(&run, "n1");
        let labels = body.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_NODE).map(String::as_str), Some("n1"));
        assert_eq!(labels.get(LABEL_SLOT).map(String::as_str), Some("2"));
        assert_eq!(body.cmd, None);
        let hc = body.host_config.unwrap_or_default();
        let bindings = hc.port_bindings.unwrap_or_default();
        let b = bindings
            .get("80/tcp")
            .cloned()
            .flatten()
            .unwrap_or_default();
        assert_eq!(b[0].host_port.as_deref(), Some(""));
    }

    #[test]
    fn signals_only_when_known() {
        assert_eq!(exit_status(137, false, false), ExitStatus::Code(137));
        assert_eq!(exit_status(137, true, false), ExitStatus::Signal(9));
        assert_eq!(exit_status(143, false, true), ExitStatus::Signal(15));
        assert_eq!(exit_status(130, false, true), ExitStatus::Code(130));
        assert_eq!(exit_status(3, false, true), ExitStatus::Code(3));
    }
}
