//! The `process` runtime: each task is a program in its own session and process group, run by a
//! detached shim (see [`crate::shim_main`]) that keeps its records under `<root>/<task_id>`:
//! `run.json`, `shim.pid`, `task.pid`, `output.log*`, `exit.json` (or `start-error`).
//!
//! Choices worth knowing:
//! - Environment: exactly the task's variables, plus the agent's PATH when the task sets no PATH
//!   (a default PATH if the agent has none). A program name without '/' is searched in that
//!   PATH; a relative path with '/' is taken from the working directory.
//! - When the task's main process ends, whatever it left in its process group is SIGKILLed (as a
//!   container's processes die with its init); the shim is a child subreaper, so orphans are
//!   reaped rather than left as zombies.
//! - A file with execute bits but no `#!` line is run by `/bin/sh` (execvp's rule).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::cgroup::{self, Cgroups};
use crate::logs::stream_logs;
use crate::records::{
    group_exists, read_exit, read_run, read_start_error, resolve_program, signal_group, task_env,
    task_path, task_workdir, valid_task_id, write_atomic, PidRecord, EXIT_FILE, RUN_FILE,
    SHIM_LOG_FILE, SHIM_PID_FILE, TASK_PID_FILE, WORK_DIR,
};
use crate::{
    AdoptedState, AdoptedTask, BoxFuture, ExecError, Executor, ExitStatus, LimitsSupport, LogLine,
    LogOptions, ProbeOutcome, RuntimeDetails, TaskRun,
};

/// How long `start` waits for the shim to report that the task is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often adopted tasks (whose shim is not our child) are polled.
const POLL: Duration = Duration::from_millis(200);
/// How often `shutdown` checks whether the group is gone.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// How long `shutdown` waits after SIGKILL before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shim may take to record an exit once the task's group is gone.
const EXIT_RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// How to launch the task shim: the agent passes its own executable with `["__task-shim"]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the shim's own (`--dir …`).
    pub args: Vec<String>,
}

/// The `process` runtime: tasks run as programs under a detached per-task shim, so they survive
/// agent restarts and are found again by [`Executor::adopt`].
pub struct ProcessExecutor {
    root: PathBuf,
    shim: ShimCommand,
    cgroups: Option<Cgroups>,
    limits: LimitsSupport,
    /// Shims this executor spawned: becomes true once the shim process has exited.
    shims: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Tasks whose `start` is in progress.
    starting: Mutex<HashSet<String>>,
}

/// Removes a task from the starting set when `start` returns.
struct StartingGuard<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for StartingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.id);
        }
    }
}

fn runtime_err(e: impl std::fmt::Display) -> ExecError {
    ExecError::Runtime(e.to_string())
}

impl ProcessExecutor {
    /// An executor keeping its tasks under `root` (created if missing) and launching shims with
    /// `shim`. Detects once whether cgroup v2 limits can be enforced.
    pub fn new(root: PathBuf, shim: ShimCommand) -> Result<Self, ExecError> {
        fs::create_dir_all(&root)
            .map_err(|e| ExecError::Runtime(format!("cannot create {}: {e}", root.display())))?;
        let (cgroups, limits) = match cgroup::detect() {
            Ok(c) => (Some(c), LimitsSupport::Enforced),
            Err(reason) => (None, LimitsSupport::NotEnforced(reason)),
        };
        Ok(ProcessExecutor {
            root,
            shim,
            cgroups,
            limits,
            shims: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
        })
    }

    /// The directory holding one subdirectory per task.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of an existing task.
    fn existing_dir(&self, task_id: &str) -> Result<PathBuf, ExecError> {
        let dir = self.root.join(task_id);
        if valid_task_id(task_id) && dir.is_dir() {
            Ok(dir)
        } else {
            Err(ExecError::NotFound(task_id.to_string()))
        }
    }

    /// The shim-exit watch of a shim we spawned.
    fn spawned_shim(&self, task_id: &str) -> Option<watch::Receiver<bool>> {
        self.shims.lock().ok()?.get(task_id).cloned()
    }

    /// Whether the task's shim is still running.
    fn shim_alive(&self, task_id: &str, dir: &Path) -> bool {
        if let Some(rx) = self.spawned_shim(task_id) {
            return !*rx.borrow();
        }
        matches!(PidRecord::read(&dir.join(SHIM_PID_FILE)), Ok(Some(r)) if r.is_alive())
    }

    fn is_starting(&self, task_id: &str) -> bool {
        self.starting
            .lock()
            .map(|s| s.contains(task_id))
            .unwrap_or(false)
    }

    async fn prepare_task(&self, run: &TaskRun) -> Result<(), ExecError> {
        // Directories and a synced record: blocking work, kept off the runtime's workers (the
        // agent's Raft and transport share them; a hundred tasks at once must not starve them).
        let root = self.root.clone();
        let run = run.clone();
        tokio::task::spawn_blocking(move || prepare_blocking(&root, &run))
            .await
            .map_err(runtime_err)?
    }

    async fn start_task(&self, task_id: &str) -> Result<RuntimeDetails, ExecError> {
        let dir = self.existing_dir(task_id)?;
        let run = match read_run(&dir) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(ExecError::NotFound(task_id.to_string())),
            Err(e) => return Err(ExecError::Runtime(e)),
        };
        let details = |pid: u32| RuntimeDetails {
            pid: Some(pid),
            container_id: None,
            checked: false,
            ports: Vec::new(),
        };
        match PidRecord::read(&dir.join(TASK_PID_FILE)) {
            Ok(Some(r)) => return Ok(details(r.pid)),
            Ok(None) => {}
            Err(e) => return Err(ExecError::Runtime(e)),
        }
        if let Some(msg) = read_start_error(&dir) {
            return Err(ExecError::Runtime(msg));
        }
        {
            let mut starting = self.starting.lock().map_err(runtime_err)?;
            if !starting.insert(task_id.to_string()) || self.spawned_shim(task_id).is_some() {
                starting.remove(task_id);
                return Err(ExecError::Runtime(format!(
                    "task {task_id} is already starting"
                )));
            }
        }
        let _guard = StartingGuard {
            set: &self.starting,
            id: task_id.to_string(),
        };

        let workdir = task_workdir(&run, &dir);
        if !workdir.is_dir() {
            return Err(ExecError::Invalid(format!(
                "workdir {}: no such directory",
                workdir.display()
            )));
        }
        let program = resolve_program(&run.program, &task_path(&run), &workdir)
            .map_err(ExecError::Invalid)?;
        // The cgroup, the log file and the fork/exec: blocking work, off the runtime's workers.
        let cgroups = self.cgroups.clone();
        let shim = self.shim.clone();
        let (id, task_dir) = (task_id.to_string(), dir.clone());
        let spawned = tokio::task::spawn_blocking(move || {
            spawn_shim(&shim, cgroups.as_ref(), &id, &run, &task_dir, &program)
        })
        .await
        .map_err(runtime_err)?;
        let mut child = spawned?;
        let stdout = child.stdout.take();
        let (tx, rx) = watch::channel(false);
        let reply = async {
            let mut line = String::new();
            if let Some(out) = stdout {
                let mut out = BufReader::new(out);
                out.read_line(&mut line).await?;
            }
            Ok::<String, io::Error>(line)
        };
        let reply = tokio::time::timeout(START_TIMEOUT, reply).await;
        if reply.is_err() {
            let _ = child.start_kill();
        }
        // Whatever happened, the shim is reaped and its end is known.
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = tx.send(true);
        });
        if let Ok(mut shims) = self.shims.lock() {
            shims.insert(task_id.to_string(), rx.clone());
        }

        let line = match reply {
            Err(_) => {
                return Err(ExecError::Runtime(format!(
                    "the task shim did not report within {}s",
                    START_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(ExecError::Runtime(format!("reading the shim: {e}"))),
            Ok(Ok(l)) => l,
        };
        let line = line.trim_end();
        if let Some(pid) = line.strip_prefix("ok ") {
            let pid: u32 = pid
                .parse()
                .map_err(|_| ExecError::Runtime(format!("bad shim reply {line:?}")))?;
            return Ok(details(pid));
        }
        if let Some(msg) = line.strip_prefix("invalid ") {
            return Err(ExecError::Invalid(msg.to_string()));
        }
        if let Some(msg) = line.strip_prefix("runtime ") {
            return Err(ExecError::Runtime(msg.to_string()));
        }
        // No reply: the shim died. Say why, from its own log.
        let mut rx = rx;
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v)).await;
        let log = fs::read_to_string(dir.join(SHIM_LOG_FILE)).unwrap_or_default();
        let last = log.lines().last().unwrap_or("no diagnostics");
        Err(ExecError::Runtime(format!(
            "the task shim exited before starting the task: {last}"
        )))
    }

    async fn wait_task(&self, task_id: &str) -> Result<ExitStatus, ExecError> {
        loop {
            let dir = self.existing_dir(task_id)?;
            if let Some(st) = read_exit(&dir).map_err(ExecError::Runtime)? {
                return Ok(st);
            }
            if let Some(msg) = read_start_error(&dir) {
                return Err(ExecError::Runtime(msg));
            }
            let spawned = self.spawned_shim(task_id);
            if !self.shim_alive(task_id, &dir) && !self.is_starting(task_id) {
                if let Some(st) = read_exit(&dir).map_err(ExecError::Runtime)? {
                    return Ok(st);
                }
                match PidRecord::read(&dir.join(TASK_PID_FILE)).map_err(ExecError::Runtime)? {
                    Some(r) if r.is_alive() => {} // the shim is gone; watch the task itself
                    Some(_) => return Err(ExecError::Runtime("task process lost".to_string())),
                    None if dir.join(SHIM_PID_FILE).exists() => {
                        return Err(ExecError::Runtime(
                            "the task shim died before starting the task".to_string(),
                        ))
                    }
                    None => {
                        return Err(ExecError::Runtime(format!(
                            "task {task_id} has not been started"
                        )))
                    }
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            match spawned {
                Some(mut rx) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|v| *v)).await;
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn shutdown_task(&self, task_id: &str, grace: Duration) -> Result<(), ExecError> {
        let dir = self.existing_dir(task_id)?;
        let exited = || dir.join(EXIT_FILE).exists();
        if exited() {
            return Ok(());
        }
        // A start in progress ends (with a pid record or an error) within its own timeout.
        while self.is_starting(task_id) {
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
        let rec = match PidRecord::read(&dir.join(TASK_PID_FILE)).map_err(ExecError::Runtime)? {
            Some(r) => r,
            None => return Ok(()), // never started (or its start failed): nothing runs
        };
        if rec.is_alive() {
            signal_group(rec.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if exited() || !group_exists(rec.pid) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(SHUTDOWN_POLL)).await;
        }
        if !exited() && group_exists(rec.pid) {
            signal_group(rec.pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut gone_since: Option<Instant> = None;
        loop {
            if exited() {
                return Ok(());
            }
            if !group_exists(rec.pid) {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if !self.shim_alive(task_id, &dir) || since.elapsed() > EXIT_RECORD_TIMEOUT {
                    return Ok(());
                }
            } else if Instant::now() > deadline {
                return Err(ExecError::Runtime(format!(
                    "task {task_id} did not end after SIGKILL"
                )));
            } else {
                signal_group(rec.pid, libc::SIGKILL);
            }
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
    }

    async fn remove_task(&self, task_id: &str) -> Result<(), ExecError> {
        if !valid_task_id(task_id) {
            return Ok(());
        }
        let dir = self.root.join(task_id);
        if dir.is_dir() {
            // A task whose pid record is unreadable cannot be signalled: it is only forgotten.
            let started = matches!(PidRecord::read(&dir.join(TASK_PID_FILE)), Ok(Some(_)));
            if started && !dir.join(EXIT_FILE).exists() {
                self.shutdown_task(task_id, Duration::ZERO).await?;
            }
            // Let the shim finish its last writes before its directory goes.
            let deadline = Instant::now() + EXIT_RECORD_TIMEOUT;
            while self.shim_alive(task_id, &dir) && Instant::now() < deadline {
                tokio::time::sleep(SHUTDOWN_POLL).await;
            }
        }
        if let Some(c) = &self.cgroups {
            c.remove_task(task_id).await.map_err(ExecError::Runtime)?;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ExecError::Runtime(format!(
                    "cannot remove {}: {e}",
                    dir.display()
                )))
            }
        }
        if let Ok(mut shims) = self.shims.lock() {
            shims.remove(task_id);
        }
        Ok(())
    }

    /// What an earlier agent's task directory says about the task.
    async fn adopted_state(&self, task_id: &str, dir: &Path) -> AdoptedState {
        let deadline = Instant::now() + EXIT_RECORD_TIMEOUT;
        loop {
            match read_exit(dir) {
                Ok(Some(st)) => return AdoptedState::Exited(st),
                Ok(None) => {}
                Err(e) => return AdoptedState::Failed(format!("exit record unreadable: {e}")),
            }
            if let Some(msg) = read_start_error(dir) {
                return AdoptedState::Failed(msg);
            }
            let shim_alive = self.shim_alive(task_id, dir);
            match PidRecord::read(&dir.join(TASK_PID_FILE)) {
                Err(e) => return AdoptedState::Failed(format!("pid record unreadable: {e}")),
                Ok(Some(r)) if r.is_alive() => {
                    return AdoptedState::Running(RuntimeDetails {
                        pid: Some(r.pid),
                        container_id: None,
                        checked: false,
                        ports: Vec::new(),
                    })
                }
                Ok(Some(_)) if !shim_alive => {
                    return AdoptedState::Failed("task process lost".to_string())
                }
                Ok(None) if !dir.join(SHIM_PID_FILE).exists() => return AdoptedState::Prepared,
                Ok(None) if !shim_alive => {
                    return AdoptedState::Failed(
                        "the task shim died before starting the task".to_string(),
                    )
                }
                // The shim is alive and about to record the exit or the start: give it a moment.
                Ok(_) => {}
            }
            if Instant::now() > deadline {
                return AdoptedState::Failed(
                    "the task shim is alive but recorded no task state".to_string(),
                );
            }
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
    }

    async fn adopt_tasks(&self) -> Result<Vec<AdoptedTask>, ExecError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ExecError::Runtime(format!(
                    "cannot read {}: {e}",
                    self.root.display()
                )))
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| valid_task_id(id))
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let dir = self.root.join(&id);
            let placeholder = || TaskRun {
                task_id: id.clone(),
                service_name: String::new(),
                slot: 0,
                program: String::new(),
                args: Vec::new(),
                env: Vec::new(),
                workdir: None,
                labels: Default::default(),
                limits: Default::default(),
                stop_grace: Duration::ZERO,
                ..TaskRun::default()
            };
            let (run, state) = match read_run(&dir) {
                Ok(Some(run)) if run.task_id == id => {
                    let state = self.adopted_state(&id, &dir).await;
                    (run, state)
                }
                Ok(Some(run)) => {
                    let msg = format!("{RUN_FILE} names task {:?}", run.task_id);
                    (placeholder(), AdoptedState::Failed(msg))
                }
                Ok(None) => (
                    placeholder(),
                    AdoptedState::Failed(format!("{RUN_FILE} is missing")),
                ),
                Err(e) => (
                    placeholder(),
                    AdoptedState::Failed(format!("{RUN_FILE} is unreadable: {e}")),
                ),
            };
            out.push(AdoptedTask { run, state });
        }
        Ok(out)
    }

    async fn task_logs(
        &self,
        task_id: &str,
        options: LogOptions,
    ) -> Result<mpsc::Receiver<LogLine>, ExecError> {
        let dir = self.existing_dir(task_id)?;
        let (tx, rx) = mpsc::channel(256);
        std::thread::Builder::new()
            .name(format!("logs-{task_id}"))
            .spawn(move || stream_logs(dir, options, tx))
            .map_err(|e| ExecError::Runtime(format!("cannot start a log reader: {e}")))?;
        Ok(rx)
    }
}

impl ProcessExecutor {
    /// One health command: `/bin/sh -c CMD` with the task's environment and working directory,
    /// in its own process group (killed whole on timeout).
    async fn probe_task(
        &self,
        task_id: &str,
        cmd: &str,
        timeout: Duration,
    ) -> Result<ProbeOutcome, ExecError> {
        let dir = self.existing_dir(task_id)?;
        let run = match read_run(&dir) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(ExecError::NotFound(task_id.to_string())),
            Err(e) => return Err(ExecError::Runtime(e)),
        };
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(cmd)
            .env_clear()
            .envs(task_env(&run))
            .current_dir(task_workdir(&run, &dir))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = c
            .spawn()
            .map_err(|e| ExecError::Runtime(format!("health command: {e}")))?;
        let pid = child.id();
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                Ok(ProbeOutcome {
                    ok: out.status.success(),
                    output: crate::container::bounded_output(text.trim()),
                })
            }
            Ok(Err(e)) => Err(ExecError::Runtime(format!("health command: {e}"))),
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: kill(2) of the probe's own process group.
                    unsafe {
                        libc::kill(-pid, libc::SIGKILL);
                    }
                }
                Ok(ProbeOutcome {
                    ok: false,
                    output: format!("Health check exceeded timeout ({}ms)", timeout.as_millis()),
                })
            }
        }
    }
}

impl Executor for ProcessExecutor {
    fn runtime(&self) -> &'static str {
        "process"
    }

    fn probe<'a>(
        &'a self,
        task_id: &'a str,
        cmd: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ProbeOutcome, ExecError>> {
        Box::pin(self.probe_task(task_id, cmd, timeout))
    }

    fn limits(&self) -> LimitsSupport {
        self.limits.clone()
    }

    fn prepare<'a>(&'a self, run: &'a TaskRun) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.prepare_task(run))
    }

    fn start<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<RuntimeDetails, ExecError>> {
        Box::pin(self.start_task(task_id))
    }

    fn wait<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(self.wait_task(task_id))
    }

    fn shutdown<'a>(
        &'a self,
        task_id: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.shutdown_task(task_id, grace))
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.remove_task(task_id))
    }

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

/// `prepare`, on a blocking thread.
fn prepare_blocking(root: &Path, run: &TaskRun) -> Result<(), ExecError> {
    let id = &run.task_id;
    if !valid_task_id(id) {
        return Err(ExecError::Invalid(format!("invalid task id {id:?}")));
    }
    let dir = root.join(id);
    if let Some(w) = &run.workdir {
        if !w.is_absolute() {
            return Err(ExecError::Invalid(format!(
                "workdir {}: must be an absolute path",
                w.display()
            )));
        }
        if !w.is_dir() {
            return Err(ExecError::Invalid(format!(
                "workdir {}: no such directory",
                w.display()
            )));
        }
    }
    let workdir = task_workdir(run, &dir);
    resolve_program(&run.program, &task_path(run), &workdir).map_err(ExecError::Invalid)?;
    if dir.join(SHIM_PID_FILE).exists() || dir.join(TASK_PID_FILE).exists() {
        return match read_run(&dir) {
            Ok(Some(old)) if old == *run => Ok(()),
            _ => Err(ExecError::Invalid(format!(
                "task {id} was already started with another spec"
            ))),
        };
    }
    let made = if run.workdir.is_none() {
        fs::create_dir_all(dir.join(WORK_DIR))
    } else {
        fs::create_dir_all(&dir)
    };
    made.map_err(|e| ExecError::Runtime(format!("cannot create {}: {e}", dir.display())))?;
    let json = serde_json::to_vec_pretty(run).map_err(runtime_err)?;
    write_atomic(&dir.join(RUN_FILE), &json)
        .map_err(|e| ExecError::Runtime(format!("writing {RUN_FILE} of {id}: {e}")))
}

/// Starts the shim of a task (in its own session), on a blocking thread.
fn spawn_shim(
    shim: &ShimCommand,
    cgroups: Option<&Cgroups>,
    task_id: &str,
    run: &TaskRun,
    dir: &Path,
    program: &Path,
) -> Result<tokio::process::Child, ExecError> {
    let cgroup = match cgroups {
        Some(c) => Some(
            c.create_task(task_id, &run.limits)
                .map_err(ExecError::Runtime)?,
        ),
        None => None,
    };
    let shim_log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SHIM_LOG_FILE))
        .map_err(|e| ExecError::Runtime(format!("opening {SHIM_LOG_FILE}: {e}")))?;
    let mut cmd = tokio::process::Command::new(&shim.program);
    cmd.args(&shim.args)
        .arg("--dir")
        .arg(dir)
        .arg("--program")
        .arg(program);
    if let Some(cg) = &cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(shim_log))
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe; the shim gets its own session from the start so
    // that signals to the agent's group or session never reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        ExecError::Runtime(format!(
            "cannot start the task shim {}: {e}",
            shim.program.display()
        ))
    })
}
