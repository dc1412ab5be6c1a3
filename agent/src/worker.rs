//! The node's side of the dispatcher: every node (managers too) asks a manager for its tasks,
//! runs them through the executor of their runtime, and reports what it observes in batches.
//! Running tasks survive an agent restart: the executors find them again, and the first full
//! set from a manager says which to keep; the rest are stopped and removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use shoal_cluster::{object_id_string, TaskId, TaskReport, TaskState, TaskStatus};
use shoal_executor::{AdoptedState, AdoptedTask, Executor, ExitStatus, Limits, TaskRun};
use tokio::sync::{mpsc, watch};

use crate::agent::Member;
use crate::api::Response;
use crate::health::Checker;
use crate::mesh::Mesh;
use crate::task_files::{TaskFiles, Written};
use crate::wire::{AgentRequest, Assignment, Assignments, TaskFile};

/// The executors a node has, one per runtime.
#[derive(Clone, Default)]
pub struct Executors(pub Vec<Arc<dyn Executor>>);

impl std::fmt::Debug for Executors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|e| e.runtime()))
            .finish()
    }
}

impl Executors {
    /// The executor of a runtime.
    pub fn get(&self, runtime: &str) -> Option<Arc<dyn Executor>> {
        self.0.iter().find(|e| e.runtime() == runtime).cloned()
    }

    /// The runtimes this node advertises: those available now.
    pub fn runtimes(&self) -> Vec<shoal_cluster::Runtime> {
        self.0
            .iter()
            .filter(|e| e.available().is_ok())
            .filter_map(|e| match e.runtime() {
                "process" => Some(shoal_cluster::Runtime::Process),
                "container" => Some(shoal_cluster::Runtime::Container),
                _ => None,
            })
            .collect()
    }

    /// The runtimes this node has but cannot use now, and why.
    pub fn problems(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|e| {
                e.available()
                    .err()
                    .map(|why| format!("{}: {why}", e.runtime()))
            })
            .collect()
    }

    /// The container engine's version, or empty without one.
    pub fn engine_version(&self) -> String {
        self.0
            .iter()
            .find_map(|e| e.engine_version())
            .unwrap_or_default()
    }

    /// Checks every runtime again (pings the engine); true when what the node advertises
    /// changed.
    pub async fn check(&self) -> bool {
        let before = (self.runtimes(), self.problems(), self.engine_version());
        for e in &self.0 {
            let _ = e.check().await;
        }
        before != (self.runtimes(), self.problems(), self.engine_version())
    }

    /// Whether every runtime enforces resource limits here.
    pub fn limits_enforced(&self) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|e| e.limits() == shoal_executor::LimitsSupport::Enforced)
    }
}

/// Tasks prepared and started at once on a node.
const MAX_CONCURRENT_STARTS: usize = 8;

/// How long a task in the routing mesh keeps running after it is told to stop, before its
/// stop signal: the time every node takes to hear of the stop and send it nothing new.
pub const MESH_DRAIN: Duration = Duration::from_secs(2);

/// The longest a task in the mesh without a health check is waited for to accept connections
/// before it is reported running all the same.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Most lines of one task in one answer to `service logs`.
pub const MAX_LOG_LINES: usize = 10_000;
/// Most bytes of output in one answer.
pub const MAX_LOG_BYTES: usize = 8 << 20;

/// How long a node waits for a manager's answer about its tasks (the long poll plus margin).
const POLL_WAIT: Duration = Duration::from_secs(5);
/// Progress reports are gathered this long before they are sent (more go in one batch under
/// load); a report of a task that ended goes at once.
const REPORT_GATHER: Duration = Duration::from_millis(20);

/// What the node knows of one task.
struct Local {
    runtime: &'static str,
    desired: TaskState,
    /// Tells the supervisor to stop the task (true = stop).
    stop: Option<watch::Sender<bool>>,
    /// The task ended (or never started and never will).
    ended: bool,
}

/// The task runner of one member.
pub struct Runner {
    executors: Executors,
    /// Bounds how many tasks are being prepared and started at once (a burst of assignments
    /// must not turn into a fork storm).
    starts: tokio::sync::Semaphore,
    tasks: Mutex<HashMap<TaskId, Local>>,
    reports: mpsc::UnboundedSender<TaskReport>,
    /// The cluster's id (containers are labelled with it).
    cluster_id: String,
    /// Where the tasks' secrets and configs go.
    files: TaskFiles,
    /// This node's share of the routing mesh (none in simulations).
    mesh: Option<Arc<Mesh>>,
    /// The node's advertised IP, where the mesh reaches its tasks.
    ip: std::net::IpAddr,
}

/// What a task about to start gets from its assignment besides its run: its secrets and
/// configs, and how long it is drained from the routing mesh before it is stopped.
#[derive(Default)]
struct Secrets {
    files: Vec<TaskFile>,
    /// Those the spec names that no longer exist.
    missing: String,
    /// How long the task goes on after it is told to stop, taking no new connections from
    /// the mesh (every node hears of the stop) while those it has finish; zero if it is not
    /// in the mesh.
    drain: Duration,
}

impl Secrets {
    fn of(a: &Assignment) -> Secrets {
        let in_mesh = a.spec.as_ref().is_some_and(|s| {
            s.ports
                .iter()
                .any(|p| p.mode == shoal_cluster::PublishMode::Ingress)
        });
        Secrets {
            files: a.files.clone(),
            missing: a.missing.clone(),
            drain: if in_mesh { MESH_DRAIN } else { Duration::ZERO },
        }
    }
}

/// Points a run at its files: the directories in a process's environment, a read-only bind
/// mount per file in a container.
fn with_files(run: &mut TaskRun, w: Written) {
    for (key, dir) in [
        ("SHOAL_SECRETS_DIR", w.secrets_dir),
        ("SHOAL_CONFIGS_DIR", w.configs_dir),
    ] {
        if let Some(dir) = dir {
            run.env.retain(|(k, _)| k != key);
            run.env
                .push((key.to_string(), dir.to_string_lossy().to_string()));
        }
    }
    for (source, target) in w.mounts {
        run.mounts.retain(|m| m.target != target);
        run.mounts.push(shoal_executor::Mount {
            kind: shoal_executor::MountKind::Bind,
            source: source.to_string_lossy().to_string(),
            target,
            read_only: true,
        });
    }
}

fn report(id: TaskId, state: TaskState, message: &str) -> TaskReport {
    TaskReport {
        id,
        status: TaskStatus::new(state, message),
    }
}

fn exit_report(id: TaskId, exit: ExitStatus) -> TaskReport {
    let mut r = if exit.success() {
        report(id, TaskState::Complete, "finished")
    } else {
        let mut r = report(id, TaskState::Failed, "started");
        r.status.err = exit.to_string();
        r
    };
    r.status.exit_code = Some(i64::from(exit.code()));
    r
}

/// The run of an assignment, for its executor.
fn task_run(a: &Assignment, spec: &shoal_cluster::TaskSpec, cluster_id: &str) -> TaskRun {
    let env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    let mut env: Vec<(String, String)> = env;
    // What a task may want to know about itself (as Swarm's templates offer), unless set.
    for (k, v) in [
        ("SHOAL_SERVICE_NAME", a.service_name.clone()),
        ("SHOAL_TASK_ID", object_id_string(a.task.id)),
        ("SHOAL_TASK_SLOT", a.task.slot.to_string()),
        (
            "SHOAL_NODE_ID",
            a.task
                .node
                .map(shoal_cluster::node_id_string)
                .unwrap_or_default(),
        ),
    ] {
        if !env.iter().any(|(key, _)| key == k) {
            env.push((k.to_string(), v));
        }
    }
    // The ports the task answers on, on this node: a host-mode port as published; an ingress
    // one (the mesh's, on every node) on a port of this node's that the engine picks for a
    // container and that is found free for a process.
    let process = spec.runtime == shoal_cluster::Runtime::Process;
    let ports: Vec<shoal_executor::HostPort> = spec
        .ports
        .iter()
        .map(|p| shoal_executor::HostPort {
            published: match p.mode {
                shoal_cluster::PublishMode::Host => p.published,
                shoal_cluster::PublishMode::Ingress if process => free_port(p.udp),
                shoal_cluster::PublishMode::Ingress => 0,
            },
            target: p.target,
            udp: p.udp,
        })
        .collect();
    // A process binds its ports itself: it is told them (`SHOAL_PORT_<TARGET>`, and `PORT`
    // for the first), unless its spec sets them.
    if process {
        for (i, p) in ports.iter().enumerate() {
            let mut vars = vec![format!("SHOAL_PORT_{}", p.target)];
            if i == 0 {
                vars.push("PORT".to_string());
            }
            for k in vars {
                if !env.iter().any(|(key, _)| *key == k) {
                    env.push((k, p.published.to_string()));
                }
            }
        }
    }
    let limits = spec.resources.limits;
    TaskRun {
        task_id: object_id_string(a.task.id),
        service_name: a.service_name.clone(),
        slot: a.task.slot,
        program: spec.image.clone(),
        args: spec.args.clone(),
        env,
        workdir: (!spec.workdir.is_empty()).then(|| spec.workdir.clone().into()),
        labels: BTreeMap::from([
            (
                "com.docker.swarm.service.name".to_string(),
                a.service_name.clone(),
            ),
            (
                "com.docker.swarm.task.id".to_string(),
                object_id_string(a.task.id),
            ),
        ]),
        limits: Limits {
            nano_cpus: (limits.nano_cpus > 0).then_some(limits.nano_cpus),
            memory_bytes: (limits.memory_bytes > 0).then_some(limits.memory_bytes),
            pids: (spec.resources.pids_limit > 0).then_some(spec.resources.pids_limit),
        },
        stop_grace: Duration::from_millis(spec.stop_grace_ms),
        cluster_id: cluster_id.to_string(),
        entrypoint: spec.entrypoint.clone(),
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        read_only: spec.read_only,
        mounts: spec
            .mounts
            .iter()
            .map(|m| shoal_executor::Mount {
                kind: match m.kind {
                    shoal_cluster::MountType::Bind => shoal_executor::MountKind::Bind,
                    shoal_cluster::MountType::Volume => shoal_executor::MountKind::Volume,
                },
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect(),
        ports,
        health: health_config(&spec.health),
    }
}

/// A port of this node nothing listens on now, for a process task's ingress port (0 if none
/// could be found: the task then gets no port, and the mesh no backend in it).
fn free_port(udp: bool) -> u16 {
    let any = (std::net::Ipv4Addr::UNSPECIFIED, 0);
    let found = if udp {
        std::net::UdpSocket::bind(any).and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind(any).and_then(|s| s.local_addr())
    };
    found.map(|a| a.port()).unwrap_or(0)
}

/// The ports a started task answers on: as the runtime bound them (a container's, with the
/// engine's numbers), or those a process was told.
fn bound_ports(
    run: &TaskRun,
    details: &shoal_executor::RuntimeDetails,
) -> Vec<shoal_cluster::TaskPort> {
    if !details.ports.is_empty() {
        return details
            .ports
            .iter()
            .map(|p| shoal_cluster::TaskPort {
                target: p.target,
                published: p.published,
                udp: p.udp,
            })
            .collect();
    }
    if details.container_id.is_some() {
        return Vec::new();
    }
    run.ports
        .iter()
        .map(|p| shoal_cluster::TaskPort {
            target: p.target,
            published: p.published,
            udp: p.udp,
        })
        .collect()
}

/// The executor's health check for a spec's (`None`: no check of shoal's).
fn health_config(h: &shoal_cluster::HealthCheck) -> Option<shoal_executor::HealthConfig> {
    use shoal_cluster::HealthTest;
    use shoal_executor::HealthProbe;
    let probe = match &h.test {
        HealthTest::Default => return None,
        HealthTest::Disabled => HealthProbe::Disabled,
        HealthTest::Cmd(c) => HealthProbe::Shell(c.clone()),
        HealthTest::Http(u) => HealthProbe::Http(u.clone()),
        HealthTest::Tcp(p) => HealthProbe::Tcp(*p),
    };
    Some(shoal_executor::HealthConfig {
        probe,
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        retries: h.retries.max(1),
        start_period: Duration::from_millis(h.start_period_ms),
    })
}

fn parse_task_id(s: &str) -> Option<TaskId> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

impl Runner {
    /// Starts the runner of `member`: adoption, the assignment loop and the reporter.
    pub fn start(
        member: &Arc<Member>,
        executors: Executors,
        mesh: Option<Arc<Mesh>>,
    ) -> Arc<Runner> {
        let (tx, rx) = mpsc::unbounded_channel();
        for e in &executors.0 {
            e.set_node(&shoal_cluster::node_id_string(member.id));
        }
        let runner = Arc::new(Runner {
            cluster_id: member.cluster_id.to_string(),
            files: TaskFiles::for_node(&shoal_cluster::node_id_string(member.id)),
            executors,
            starts: tokio::sync::Semaphore::new(MAX_CONCURRENT_STARTS),
            tasks: Mutex::new(HashMap::new()),
            reports: tx,
            mesh,
            ip: member.advertise.ip(),
        });
        let span = tracing::info_span!("tasks", node = %shoal_cluster::node_id_string(member.id));
        tokio::spawn(tracing::Instrument::instrument(
            reporter(Arc::downgrade(member), rx),
            span.clone(),
        ));
        tokio::spawn(tracing::Instrument::instrument(
            runner.clone().run(Arc::downgrade(member)),
            span,
        ));
        runner
    }

    fn send(&self, r: TaskReport) {
        let _ = self.reports.send(r);
    }

    /// This node's routing mesh, if it has one.
    pub fn mesh(&self) -> Option<&Arc<Mesh>> {
        self.mesh.as_ref()
    }

    async fn run(self: Arc<Self>, member: Weak<Member>) {
        if self.executors.0.is_empty() && self.mesh.is_none() {
            return;
        }
        // What an earlier run of the agent left.
        let mut adopted: HashMap<TaskId, (&'static str, AdoptedTask)> = HashMap::new();
        for e in &self.executors.0 {
            match e.adopt().await {
                Ok(found) => {
                    for t in found {
                        match parse_task_id(&t.run.task_id) {
                            Some(id) => {
                                adopted.insert(id, (e.runtime(), t));
                            }
                            None => {
                                let _ = e.remove(&t.run.task_id).await;
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!("cannot look for the tasks of an earlier run: {err}"),
            }
        }
        if !adopted.is_empty() {
            tracing::info!("found {} tasks of an earlier run", adopted.len());
        }
        // Files of tasks an earlier run left and that are gone (a crash between a task's end
        // and the removal of its files).
        self.files.sweep(
            &adopted
                .values()
                .map(|(_, t)| t.run.task_id.clone())
                .collect(),
        );
        let session = rand::random::<u64>() | 1;
        let mut seq = 0u64;
        let mut seen_index = 0u64;
        let mut stop = match member.upgrade() {
            Some(m) => m.stop_signal(),
            None => return,
        };
        loop {
            if *stop.borrow() {
                if let Some(mesh) = &self.mesh {
                    mesh.close();
                }
                self.stop_all().await;
                return;
            }
            let Some(m) = member.upgrade() else { return };
            let fetched = tokio::select! {
                r = m.fetch_assignments(session, seq) => r,
                _ = stop.changed() => continue,
            };
            drop(m);
            match fetched {
                Ok(a) if a.index < seen_index => {
                    // A manager behind what this node has seen (another manager answered
                    // before, or a replica still catching up): ask for a whole set again
                    // rather than act on old news.
                    tracing::debug!(
                        index = a.index,
                        seen_index,
                        "assignments from a lagging manager ignored"
                    );
                    seq = 0;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(a) => {
                    seq = a.seq;
                    seen_index = a.index;
                    self.apply(a, &mut adopted).await;
                }
                Err(e) => {
                    tracing::debug!("assignments: {e}");
                    seq = 0;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// Applies an answer: a full set (stopping and removing everything it does not list), or
    /// increments.
    async fn apply(
        self: &Arc<Self>,
        a: Assignments,
        adopted: &mut HashMap<TaskId, (&'static str, AdoptedTask)>,
    ) {
        tracing::debug!(
            full = a.full,
            seq = a.seq,
            tasks = a.tasks.len(),
            removed = a.removed.len(),
            "assignments"
        );
        if let (Some(mesh), Some(table)) = (&self.mesh, a.endpoints) {
            mesh.update(table);
        }
        if a.full {
            let listed: std::collections::HashSet<TaskId> =
                a.tasks.iter().map(|t| t.task.id).collect();
            let gone: Vec<TaskId> = self
                .tasks
                .lock()
                .expect("tasks")
                .keys()
                .filter(|id| !listed.contains(id))
                .copied()
                .collect();
            self.forget_all(gone).await;
            // Tasks of an earlier run that no manager gives us any more: not ours to run.
            let orphans: Vec<TaskId> = adopted
                .keys()
                .filter(|id| !listed.contains(id))
                .copied()
                .collect();
            for id in orphans {
                if let Some((runtime, t)) = adopted.remove(&id) {
                    if let Some(e) = self.executors.get(runtime) {
                        tracing::info!(task = %t.run.task_id, "stopping a task this node no longer owns");
                        let _ = e.shutdown(&t.run.task_id, Duration::from_secs(10)).await;
                        let _ = e.remove(&t.run.task_id).await;
                    }
                }
            }
        }
        for t in a.tasks {
            self.assign(t, adopted);
        }
        self.forget_all(a.removed).await;
    }

    /// Forgets tasks, `MAX_CONCURRENT_STARTS` at a time: a service removed at once is not
    /// cleaned up one container after the other, nor all at once (the engine slows down).
    async fn forget_all(self: &Arc<Self>, ids: Vec<TaskId>) {
        let mut set = tokio::task::JoinSet::new();
        for id in ids {
            if set.len() >= MAX_CONCURRENT_STARTS {
                let _ = set.join_next().await;
            }
            let me = Arc::clone(self);
            set.spawn(async move { me.forget(id).await });
        }
        while set.join_next().await.is_some() {}
    }

    /// One task as a manager describes it now.
    fn assign(
        self: &Arc<Self>,
        a: Assignment,
        adopted: &mut HashMap<TaskId, (&'static str, AdoptedTask)>,
    ) {
        let id = a.task.id;
        let desired = a.task.desired;
        let observed = a.task.status.state;
        let mut tasks = self.tasks.lock().expect("tasks");
        if let Some(l) = tasks.get_mut(&id) {
            l.desired = desired;
            if desired > TaskState::Running {
                match &l.stop {
                    Some(stop) => {
                        let _ = stop.send(true);
                    }
                    None if !l.ended => {
                        l.ended = true;
                        self.send(report(id, TaskState::Shutdown, "shutdown"));
                    }
                    None => {}
                }
            } else if desired == TaskState::Running && l.stop.is_none() && !l.ended {
                if let Some(spec) = &a.spec {
                    let run = task_run(&a, spec, &self.cluster_id);
                    let (tx, rx) = watch::channel(false);
                    l.stop = Some(tx);
                    self.spawn_supervisor(id, l.runtime, run, Secrets::of(&a), rx, None);
                }
            }
            return;
        }
        let found = adopted.remove(&id);
        let runtime: &'static str = match (&found, &a.spec) {
            (Some((rt, _)), _) => rt,
            (None, Some(spec)) => spec.runtime.as_str(),
            (None, None) => "process",
        };
        let mut local = Local {
            runtime,
            desired,
            stop: None,
            ended: observed.is_terminal(),
        };
        if local.ended {
            // History: an ended task the manager still lists (its files stay for `logs`).
            tasks.insert(id, local);
            return;
        }
        if self.executors.get(runtime).is_none() {
            // The scheduler only sends runtimes the node advertised; a node restarted without
            // one refuses its tasks.
            local.ended = true;
            tasks.insert(id, local);
            let mut r = report(id, TaskState::Rejected, "rejected");
            r.status.err = format!("runtime \"{runtime}\" is not available on this node");
            self.send(r);
            return;
        }
        let run = match (&a.spec, &found) {
            (Some(spec), Some((_, t))) => {
                // Running already: on the ports it was given then.
                let mut run = task_run(&a, spec, &self.cluster_id);
                run.ports = t.run.ports.clone();
                Some(run)
            }
            (Some(spec), None) => Some(task_run(&a, spec, &self.cluster_id)),
            (None, Some((_, t))) => Some(t.run.clone()),
            (None, None) => None,
        };
        match (run, found) {
            (Some(run), Some((_, t))) => {
                // A task of an earlier run: supervise it again (and stop it if it must).
                let (tx, rx) = watch::channel(desired > TaskState::Running);
                local.stop = Some(tx);
                tasks.insert(id, local);
                self.spawn_supervisor(id, runtime, run, Secrets::of(&a), rx, Some(t.state));
            }
            (Some(run), None) if desired == TaskState::Running => {
                let (tx, rx) = watch::channel(false);
                local.stop = Some(tx);
                tasks.insert(id, local);
                self.spawn_supervisor(id, runtime, run, Secrets::of(&a), rx, None);
            }
            (_, None) if desired > TaskState::Running => {
                local.ended = true;
                tasks.insert(id, local);
                self.send(report(id, TaskState::Shutdown, "shutdown"));
            }
            _ => {
                // Desired ready: a restart waiting for its delay.
                tasks.insert(id, local);
            }
        }
    }

    fn spawn_supervisor(
        self: &Arc<Self>,
        id: TaskId,
        runtime: &'static str,
        run: TaskRun,
        secrets: Secrets,
        stop: watch::Receiver<bool>,
        adopted: Option<AdoptedState>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let key = run.task_id.clone();
            me.supervise(id, runtime, run, secrets, stop, adopted).await;
            // The task has ended: its secrets go with it.
            me.files.remove(&key);
            if let Some(l) = me.tasks.lock().expect("tasks").get_mut(&id) {
                l.ended = true;
                l.stop = None;
            }
        });
    }

    /// Drives one task from assigned to its end.
    async fn supervise(
        &self,
        id: TaskId,
        runtime: &'static str,
        mut run: TaskRun,
        secrets: Secrets,
        mut stop: watch::Receiver<bool>,
        adopted: Option<AdoptedState>,
    ) {
        let Some(exec) = self.executors.get(runtime) else {
            return;
        };
        let key = run.task_id.clone();
        let process = runtime == "process";
        let drain = secrets.drain;
        // The Running report, kept to report health changes with the same details.
        let mut running = report(id, TaskState::Running, "started");
        let checker;
        match adopted {
            Some(AdoptedState::Running(details)) => {
                // Its files are still on the tmpfs unless the node restarted; written again
                // all the same.
                if let Err(e) = self.files.write(&key, &secrets.files, process) {
                    tracing::warn!(task = %key, "{e}");
                }
                checker = Checker::of(run.health.as_ref(), exec.as_ref(), details.checked);
                running.status.ports = bound_ports(&run, &details);
                running.status.pid = details.pid.unwrap_or(0);
                running.status.container_id = details.container_id.unwrap_or_default();
                running.status.health = checker.initial();
                self.send(running.clone());
            }
            Some(AdoptedState::Exited(exit)) => {
                self.send(exit_report(id, exit));
                return;
            }
            Some(AdoptedState::Failed(why)) => {
                let mut r = report(id, TaskState::Failed, "lost");
                r.status.err = why;
                self.send(r);
                return;
            }
            Some(AdoptedState::Prepared) | None => {
                if *stop.borrow() {
                    self.send(report(id, TaskState::Shutdown, "shutdown"));
                    return;
                }
                if !secrets.missing.is_empty() {
                    let mut r = report(id, TaskState::Rejected, "rejected");
                    r.status.err = secrets.missing.clone();
                    self.send(r);
                    return;
                }
                self.send(report(id, TaskState::Accepted, "accepted"));
                let _permit = self.starts.acquire().await;
                self.send(report(id, TaskState::Preparing, "preparing"));
                match self.files.write(&key, &secrets.files, process) {
                    Ok(w) => with_files(&mut run, w),
                    Err(e) => {
                        let mut r = report(id, TaskState::Rejected, "preparing");
                        r.status.err = e;
                        self.send(r);
                        return;
                    }
                }
                drop(secrets);
                if let Err(e) = exec.prepare(&run).await {
                    let mut r = report(id, TaskState::Rejected, "preparing");
                    r.status.err = e.to_string();
                    self.send(r);
                    return;
                }
                if *stop.borrow() {
                    let _ = exec.remove(&key).await;
                    self.send(report(id, TaskState::Shutdown, "shutdown"));
                    return;
                }
                self.send(report(id, TaskState::Starting, "starting"));
                match exec.start(&key).await {
                    Ok(details) => {
                        checker = Checker::of(run.health.as_ref(), exec.as_ref(), details.checked);
                        running.status.ports = bound_ports(&run, &details);
                        if !drain.is_zero() && !checker.checks() {
                            // In the mesh without a check of its own: running once it answers,
                            // so that the mesh (and a start-first update) waits for it.
                            self.answering(&running.status.ports, &mut stop).await;
                        }
                        running.status.pid = details.pid.unwrap_or(0);
                        running.status.container_id = details.container_id.unwrap_or_default();
                        // A checked task counts as running once healthy (Swarm's rule).
                        running.status.health = checker.initial();
                        self.send(running.clone());
                    }
                    Err(e) => {
                        let mut r = report(id, TaskState::Rejected, "starting");
                        r.status.err = e.to_string();
                        self.send(r);
                        return;
                    }
                }
            }
        }
        let stopped = async {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    // The runner is gone (the node left): stop the task.
                    break;
                }
            }
        };
        let unhealthy = crate::health::follow(checker, exec.clone(), key.clone(), |h| {
            let mut r = running.clone();
            r.status.health = h;
            self.send(r);
        });
        tokio::select! {
            exit = exec.wait(&key) => match exit {
                Ok(exit) => self.send(exit_report(id, exit)),
                Err(e) => {
                    let mut r = report(id, TaskState::Failed, "lost");
                    r.status.err = e.to_string();
                    self.send(r);
                }
            },
            () = stopped => {
                if !drain.is_zero() {
                    // Out of the mesh first: the stop every node hears of takes the task out of
                    // their tables; its open connections go on meanwhile, then get the grace.
                    tracing::debug!(task = %key, "draining the task from the mesh");
                    tokio::time::sleep(drain).await;
                }
                tracing::debug!(task = %key, "stopping the task");
                let r = exec.shutdown(&key, run.stop_grace).await;
                let mut rep = report(id, TaskState::Shutdown, "shutdown");
                if let Err(e) = r {
                    rep.status.err = e.to_string();
                }
                self.send(rep);
            }
            why = unhealthy => {
                // Failed, and handled by the restart policy like any other failure.
                tracing::info!(task = %key, "unhealthy: stopping the task");
                let _ = exec.shutdown(&key, run.stop_grace).await;
                let mut r = report(id, TaskState::Failed, "unhealthy");
                r.status.err = if why.is_empty() {
                    "task: unhealthy".to_string()
                } else {
                    format!("task: unhealthy: {why}")
                };
                self.send(r);
            }
        }
    }

    /// Waits until every TCP port a task answers on accepts a connection on this node's
    /// address, at most [`READY_WAIT`] (a task that never listens is running all the same, and
    /// the mesh passes it over), or until the task is to stop.
    async fn answering(&self, ports: &[shoal_cluster::TaskPort], stop: &mut watch::Receiver<bool>) {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        for p in ports.iter().filter(|p| !p.udp && p.published != 0) {
            let at = std::net::SocketAddr::new(self.ip, p.published);
            loop {
                if *stop.borrow() || tokio::time::Instant::now() >= deadline {
                    return;
                }
                let tried = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(at),
                )
                .await;
                if matches!(tried, Ok(Ok(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// A task no manager lists any more: stop it if it runs, then remove what is left of it.
    async fn forget(&self, id: TaskId) {
        tracing::debug!(task = %object_id_string(id), "task no longer assigned");
        let local = self.tasks.lock().expect("tasks").remove(&id);
        let Some(local) = local else { return };
        let Some(exec) = self.executors.get(local.runtime) else {
            return;
        };
        let key = object_id_string(id);
        if let Some(stop) = &local.stop {
            let _ = stop.send(true);
            // Wait for the supervisor's shutdown (the executor's shutdown is idempotent).
            let _ = exec.shutdown(&key, Duration::from_secs(10)).await;
        }
        let _ = exec.remove(&key).await;
        self.files.remove(&key);
    }

    /// After a runtime came back (the engine restarted): whatever it still has of tasks this
    /// node does not run any more is stopped, and removed unless the managers still list the
    /// task (its output stays for `service logs`). The tasks themselves were failed when the
    /// runtime went away and have been replaced.
    pub async fn sweep(&self) {
        for e in &self.executors.0 {
            let Ok(found) = e.adopt().await else { continue };
            for t in found {
                let id = parse_task_id(&t.run.task_id);
                let live = id.and_then(|id| {
                    self.tasks
                        .lock()
                        .expect("tasks")
                        .get(&id)
                        .map(|l| l.stop.is_some() && !l.ended)
                });
                match live {
                    Some(true) => {}
                    Some(false) => {
                        if matches!(t.state, AdoptedState::Running(_)) {
                            tracing::info!(task = %t.run.task_id, "stopping a task that ended while its runtime was away");
                            let _ = e.shutdown(&t.run.task_id, t.run.stop_grace).await;
                        }
                    }
                    None => {
                        tracing::info!(task = %t.run.task_id, "removing a task this node no longer owns");
                        let _ = e.shutdown(&t.run.task_id, t.run.stop_grace).await;
                        let _ = e.remove(&t.run.task_id).await;
                    }
                }
            }
        }
    }

    /// The node left the swarm: every task stops and is removed.
    async fn stop_all(&self) {
        let ids: Vec<TaskId> = self.tasks.lock().expect("tasks").keys().copied().collect();
        for id in ids {
            self.forget(id).await;
        }
    }

    /// The output of some of this node's tasks past each cursor (or their last `tail` lines),
    /// bounded: at most [`MAX_LOG_LINES`] lines per task and [`MAX_LOG_BYTES`] in all.
    pub async fn logs(
        &self,
        tasks: &[(TaskId, crate::wire::LogCursor)],
        tail: Option<usize>,
    ) -> Vec<crate::wire::TaskLogLine> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (id, cursor) in tasks {
            let runtime = self.tasks.lock().expect("tasks").get(id).map(|l| l.runtime);
            let execs: Vec<Arc<dyn Executor>> = match runtime.and_then(|r| self.executors.get(r)) {
                Some(e) => vec![e],
                None => self.executors.0.clone(),
            };
            let key = object_id_string(*id);
            for exec in execs {
                // Following: the newest lines are what matter; a first round takes the tail.
                let limit = tail.unwrap_or(MAX_LOG_LINES).min(MAX_LOG_LINES);
                let options = shoal_executor::LogOptions {
                    tail: Some(if *cursor == Default::default() {
                        limit
                    } else {
                        MAX_LOG_LINES
                    }),
                    follow: false,
                };
                let Ok(mut rx) = exec.logs(&key, options).await else {
                    continue;
                };
                let mut lines = Vec::new();
                let mut nth = 0u64;
                let mut last_ts = u64::MAX;
                while let Some(line) = rx.recv().await {
                    if line.timestamp_ms == last_ts {
                        nth += 1;
                    } else {
                        nth = 0;
                        last_ts = line.timestamp_ms;
                    }
                    if cursor.is_new(line.timestamp_ms, nth) {
                        lines.push(crate::wire::TaskLogLine {
                            task: *id,
                            timestamp_ms: line.timestamp_ms,
                            stderr: line.stream == shoal_executor::Stream::Stderr,
                            text: line.text,
                        });
                    }
                }
                if lines.len() > limit {
                    lines.drain(..lines.len() - limit);
                }
                for l in lines {
                    bytes += l.text.len() + 64;
                    if bytes > MAX_LOG_BYTES {
                        return out;
                    }
                    out.push(l);
                }
                break;
            }
        }
        out
    }

    /// Task counts by state as this node sees them (metrics, tests).
    pub fn counts(&self) -> (usize, usize) {
        let t = self.tasks.lock().expect("tasks");
        let running = t.values().filter(|l| l.stop.is_some() && !l.ended).count();
        (t.len(), running)
    }

    /// Whether this node knows `id` (tests).
    pub fn knows(&self, id: TaskId) -> bool {
        self.tasks.lock().expect("tasks").contains_key(&id)
    }

    /// The desired state the node last heard for `id` (tests).
    pub fn desired(&self, id: TaskId) -> Option<TaskState> {
        self.tasks
            .lock()
            .expect("tasks")
            .get(&id)
            .map(|l| l.desired)
    }
}

/// Sends reports in batches (latest per task), to a manager, until they are committed.
async fn reporter(member: Weak<Member>, mut rx: mpsc::UnboundedReceiver<TaskReport>) {
    let mut pending: BTreeMap<TaskId, TaskReport> = BTreeMap::new();
    let add = |pending: &mut BTreeMap<TaskId, TaskReport>, r: TaskReport| {
        let newer = pending
            .get(&r.id)
            .is_none_or(|old| old.status.state <= r.status.state);
        if newer {
            pending.insert(r.id, r);
        }
    };
    loop {
        if pending.is_empty() {
            let ended = match rx.recv().await {
                Some(r) => {
                    let ended = r.status.state.is_terminal();
                    add(&mut pending, r);
                    ended
                }
                None => return,
            };
            // A task that ended is reported at once (its replacement waits on it); progress
            // reports wait a little for others to go with them.
            if !ended {
                tokio::time::sleep(REPORT_GATHER).await;
            }
        }
        while let Ok(r) = rx.try_recv() {
            add(&mut pending, r);
        }
        let Some(m) = member.upgrade() else { return };
        let batch: Vec<TaskReport> = pending
            .values()
            .take(shoal_cluster::MAX_BATCH)
            .cloned()
            .collect();
        match m.send_reports(batch.clone()).await {
            Ok(()) => {
                for r in batch {
                    if pending.get(&r.id) == Some(&r) {
                        pending.remove(&r.id);
                    }
                }
            }
            Err(e) => {
                tracing::debug!("task reports not recorded yet: {e}");
                drop(m);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

impl Member {
    /// Asks a manager (this node's own replica if it runs one) for this node's tasks.
    pub(crate) async fn fetch_assignments(
        self: &Arc<Self>,
        session: u64,
        seq: u64,
    ) -> Result<Assignments, String> {
        // This node's own replica when it is in touch with the leader, else another manager.
        let local = self
            .raft()
            .filter(|h| !h.status.borrow().stopped && h.status.borrow().in_touch());
        if let Some(h) = local {
            match self
                .sessions()
                .assignments(&h, self.id, session, seq, POLL_WAIT)
                .await
            {
                Response::Assignments(a) => return Ok(a),
                Response::Error { message } => {
                    tracing::debug!("own replica cannot answer for its tasks: {message}")
                }
                _ => {}
            }
        }
        let req = crate::wire::encode_request(&AgentRequest::Assignments {
            session,
            seq,
            wait_ms: POLL_WAIT.as_millis() as u64,
        });
        self.ask_managers(&req, POLL_WAIT + Duration::from_secs(3), |r| match r {
            Response::Assignments(a) if a.session == session => Some(a),
            _ => None,
        })
        .await
    }

    /// Sends this node's task reports to a manager (its own replica's leader path if it runs
    /// one), returning once they are committed.
    pub(crate) async fn send_reports(
        self: &Arc<Self>,
        reports: Vec<TaskReport>,
    ) -> Result<(), String> {
        let local = self
            .raft()
            .is_some_and(|h| !h.status.borrow().stopped && h.status.borrow().in_touch());
        if local {
            return self.record_reports(self.id, reports).await;
        }
        let req = crate::wire::encode_request(&AgentRequest::TaskStatus { reports });
        self.ask_managers(&req, Duration::from_secs(12), |r| match r {
            Response::Ok { .. } => Some(()),
            _ => None,
        })
        .await
    }

    /// Sends `req` to the managers in turn (at most six) until one gives an answer `accept`
    /// takes; one that says it is no manager is noted (asked last for a while).
    pub(crate) async fn ask_managers<T>(
        &self,
        req: &[u8],
        timeout: Duration,
        accept: impl Fn(Response) -> Option<T>,
    ) -> Result<T, String> {
        let mut last = "no manager known".to_string();
        for to in self.manager_candidates().into_iter().take(6) {
            match tokio::time::timeout(timeout, self.transport.request(to, req)).await {
                Ok(Ok(bytes)) => match crate::wire::decode_response(&bytes) {
                    Response::Error { message } => {
                        self.not_a_manager(to, &message);
                        last = message
                    }
                    other => match accept(other) {
                        Some(v) => return Ok(v),
                        None => last = "unexpected answer".into(),
                    },
                },
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer".into(),
            }
        }
        Err(last)
    }

    /// Records `node`'s reports: committed here on the leader, else passed to the leader.
    pub(crate) async fn record_reports(
        self: &Arc<Self>,
        node: shoal_cluster::NodeId,
        reports: Vec<TaskReport>,
    ) -> Result<(), String> {
        let Some(h) = self.raft() else {
            return Err("this node is not a manager".into());
        };
        for r in &reports {
            r.status.validate().map_err(|e| e.to_string())?;
        }
        let leader = h.status.borrow().leader;
        match leader {
            Some(l) if l == self.id => self.report_batches().commit(&h, node, reports).await,
            Some(l) => {
                let req =
                    crate::wire::encode_request(&AgentRequest::ForwardTaskStatus { node, reports });
                match tokio::time::timeout(Duration::from_secs(12), self.transport.request(l, &req))
                    .await
                {
                    Ok(Ok(bytes)) => match crate::wire::decode_response(&bytes) {
                        Response::Ok { .. } => Ok(()),
                        Response::Error { message } => Err(message),
                        _ => Err("unexpected answer".into()),
                    },
                    Ok(Err(e)) => Err(format!("cannot reach the leader: {e}")),
                    Err(_) => Err("the leader did not answer".into()),
                }
            }
            None => Err("no leader".into()),
        }
    }
}
