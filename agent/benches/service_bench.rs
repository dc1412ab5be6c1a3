//! `service-bench`: services on real `shoal agent` processes (5 agents on loopback: 3 managers and
//! 2 workers, each in its own data directory), printing one JSON object per round on stdout and a
//! summary object at the end.
//!
//! Each round starts a fresh cluster and measures two scenarios:
//!
//! 1. `create`: `shoal service create -d --name bench --replicas N sleep 100000` run (as a CLI
//!    process) on a manager; the clock runs from issuing the command until the manager reports
//!    N of N tasks Running (what `service ls` prints as REPLICAS), polled every `--poll-ms`. The
//!    live task processes are counted from the executors' records alongside (`processes_s`).
//! 2. `failover`: `kill -9` of a worker agent that runs tasks, in one of two variants: `machine`
//!    (the agent and every task process it started are killed: the machine died) or `agent` (only
//!    the agent: its tasks go on running, as on a partitioned machine). The clock runs until none
//!    of the killed node's tasks is wanted any more and the service is back to N Running tasks
//!    (the replacements on the other nodes), and until N live processes run on the survivors.
//!
//! With `--variant both` (the default) every round runs two clusters, one per variant, so each
//! round has two `create` samples. Breakdowns come from the state after convergence: the tasks'
//! creation times (the orchestrator's), the Running timestamps (committed by the leader), and the
//! task processes' start times (from `/proc`), all relative to the command or the kill.
//!
//! `cargo bench -p shoal-agent --bench service-bench -- [--rounds R] [--replicas N]
//! [--gossip local|lan] [--variant machine|agent|both] [--poll-ms MS] [--keep] [--trace]
//! [--shoal PATH]`
//!
//! Agents inherit the environment (`SHOAL_LOG=shoal_agent=debug` makes their logs useful; they
//! are kept with `--keep` or after a failure). Every agent and task process is killed at the end
//! of each cluster (task processes outlive agents by design: they are found through their
//! records under `<data-dir>/tasks/<id>/`), on errors and on panics too.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use shoal_agent::api::{NodeView, Response, ServiceView, TaskView};
use shoal_agent::client;

/// Any single wait longer than this fails the round.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The service's name.
const SERVICE: &str = "bench";
/// Managers and workers of every cluster.
const MANAGERS: usize = 3;
const WORKERS: usize = 2;
/// Targets from the design notes (seconds): create to all running, failover to all running.
const TARGET_CREATE_S: f64 = 5.0;
const TARGET_FAILOVER_S: f64 = 3.0;

/// What dies in the failover scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// The agent and its task processes.
    Machine,
    /// Only the agent.
    Agent,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Machine => "machine",
            Variant::Agent => "agent",
        }
    }
}

/// The command line.
#[derive(Clone, Debug)]
struct Opts {
    shoal: PathBuf,
    rounds: usize,
    replicas: u64,
    gossip: String,
    variants: Vec<Variant>,
    poll: Duration,
    keep: bool,
    trace: bool,
}

fn usage() -> &'static str {
    "usage: service-bench [--rounds R] [--replicas N] [--gossip local|lan] \
     [--variant machine|agent|both] [--poll-ms MS] [--keep] [--trace] [--shoal PATH]"
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        shoal: PathBuf::from(env!("CARGO_BIN_EXE_shoal")),
        rounds: 3,
        replicas: 500,
        gossip: "local".into(),
        variants: vec![Variant::Machine, Variant::Agent],
        poll: Duration::from_millis(50),
        keep: false,
        trace: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v:?}"))
        };
        match a.as_str() {
            // cargo bench passes it to every bench target.
            "--bench" => {}
            "--rounds" => {
                let r = number("--rounds", value("--rounds")?)?;
                if r == 0 {
                    return Err("--rounds must be at least 1".into());
                }
                o.rounds = r as usize;
            }
            "--replicas" => {
                let n = number("--replicas", value("--replicas")?)?;
                if !(1..=10_000).contains(&n) {
                    return Err("--replicas must be between 1 and 10000".into());
                }
                o.replicas = n;
            }
            "--gossip" => {
                let g = value("--gossip")?;
                if g != "local" && g != "lan" {
                    return Err(format!("--gossip: local or lan, not {g:?}"));
                }
                o.gossip = g;
            }
            "--variant" => {
                o.variants = match value("--variant")?.as_str() {
                    "machine" => vec![Variant::Machine],
                    "agent" => vec![Variant::Agent],
                    "both" => vec![Variant::Machine, Variant::Agent],
                    v => return Err(format!("unknown variant {v:?}")),
                }
            }
            "--poll-ms" => {
                let ms = number("--poll-ms", value("--poll-ms")?)?;
                o.poll = Duration::from_millis(ms.max(1));
            }
            "--shoal" => o.shoal = PathBuf::from(value("--shoal")?),
            "--keep" => o.keep = true,
            "--trace" => o.trace = true,
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(o)
}

// ------------------------------------------------------------------ clocks

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Converts a process start time (clock ticks since boot, `/proc/PID/stat` field 22) to Unix
/// milliseconds: the boot time is taken from `/proc/uptime` (10 ms resolution, unlike the whole
/// seconds of `btime`).
struct ProcClock {
    boot_ms: f64,
    ms_per_tick: f64,
}

impl ProcClock {
    fn new() -> ProcClock {
        let ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0);
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        ProcClock {
            boot_ms: now_ms() - uptime * 1000.0,
            ms_per_tick: 1000.0 / ticks,
        }
    }

    fn to_unix_ms(&self, start_ticks: u64) -> f64 {
        self.boot_ms + start_ticks as f64 * self.ms_per_tick
    }
}

/// The start time (ticks since boot) of a live process, `None` if it is gone (or a zombie).
fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

// ------------------------------------------------------------------ task records

/// A pid record (`task.pid`, `shim.pid`): "pid starttime".
fn read_pid_record(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse::<i32>().ok()?;
    let start = it.next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (pid > 1).then_some((pid, start))
}

/// The record names a live process (same pid, same start time when recorded).
fn record_alive(rec: (i32, u64)) -> bool {
    match proc_start_ticks(rec.0) {
        Some(t) => rec.1 == 0 || t == rec.1,
        None => false,
    }
}

/// Live task processes under a data directory: (pid, start ticks), from the executor's records
/// (a task with `exit.json` has ended).
fn live_tasks(dir: &Path) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir(dir.join("tasks")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.join("exit.json").exists() {
            continue;
        }
        if let Some(rec) = read_pid_record(&p.join("task.pid")) {
            if record_alive(rec) {
                out.push(rec);
            }
        }
    }
    out
}

/// SIGKILLs every task process group and shim recorded under the given data directories, in
/// one `kill` invocation (quick even for a thousand processes); returns how many were signalled.
fn kill_task_records(dirs: &[&Path]) -> usize {
    let mut targets: Vec<String> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("tasks")) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(rec) = read_pid_record(&e.path().join("task.pid")) {
                if record_alive(rec) {
                    // The task leads its own process group: kill the whole group.
                    targets.push(format!("-{}", rec.0));
                }
            }
            if let Some(rec) = read_pid_record(&e.path().join("shim.pid")) {
                if record_alive(rec) {
                    targets.push(rec.0.to_string());
                }
            }
        }
    }
    if targets.is_empty() {
        return 0;
    }
    let _ = Command::new("kill")
        .arg("-9")
        .arg("--")
        .args(&targets)
        .stderr(Stdio::null())
        .status();
    targets.len()
}

/// Kills the tasks of these directories until none is left (a shim started by an agent just
/// before it died may write its task's record a moment later).
fn kill_all_tasks(dirs: &[&Path]) {
    for _ in 0..20 {
        if kill_task_records(dirs) == 0 {
            std::thread::sleep(Duration::from_millis(100));
            if kill_task_records(dirs) == 0 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------ agents

/// One agent process and where it lives.
struct Node {
    name: String,
    dir: PathBuf,
    listen: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join(shoal_agent::cli::SOCKET_NAME)
    }

    fn spawn(&mut self, exe: &Path, logs: &Path, gossip: &str) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", self.name)))
            .map_err(|e| format!("cannot open the log of {}: {e}", self.name))?;
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("agent")
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--hostname")
            .arg(&self.name)
            .args(["--gossip", gossip])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Response, String> {
        match client::call(self.socket(), method, path, body.as_ref()) {
            Ok(Response::Error { message }) => Err(format!("{}: {message}", self.name)),
            Ok(r) => Ok(r),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    fn answers(&self) -> bool {
        matches!(
            client::call(self.socket(), "GET", "/v1/info", None),
            Ok(Response::Info(_))
        )
    }

    fn nodes(&self) -> Option<Vec<NodeView>> {
        match self.call("GET", "/v1/nodes", None) {
            Ok(Response::Nodes { nodes, .. }) => Some(nodes),
            _ => None,
        }
    }

    /// What `service ls` shows of the bench service.
    fn service(&self) -> Option<ServiceView> {
        match self.call("GET", "/v1/services", None) {
            Ok(Response::Services { services }) => {
                services.into_iter().find(|s| s.spec.name == SERVICE)
            }
            _ => None,
        }
    }

    /// What `service ps bench` (optionally `--filter node=NODE`) shows, history rows included.
    fn tasks(&self, node: Option<&str>) -> Option<Vec<TaskView>> {
        let body = json!({"services": [SERVICE], "node": node});
        match self.call("POST", "/v1/tasks", Some(body)) {
            Ok(Response::Tasks { tasks }) => Some(tasks),
            _ => None,
        }
    }
}

/// A cluster of 3 managers (node-1..3) and 2 workers (node-4, node-5). Dropping it kills every
/// agent, then every task process its nodes' records name.
struct Cluster {
    nodes: Vec<Node>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut() {
            n.kill();
        }
        let dirs: Vec<&Path> = self.nodes.iter().map(|n| n.dir.as_path()).collect();
        kill_all_tasks(&dirs);
    }
}

/// Calls `f` every `every` until it returns `Some` or `limit` passes.
fn poll_until<T>(limit: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

fn free_port() -> Result<SocketAddr, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("no free UDP port: {e}"))?;
    s.local_addr().map_err(|e| e.to_string())
}

fn tempdir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for i in 0..1000u32 {
        let p = base.join(format!("shoal-service-bench-{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    Err("cannot create a temporary directory".into())
}

/// Starts the 5 agents, inits the swarm on node-1, joins node-2 and node-3 as managers (one at
/// a time, each until it is a Ready, Reachable manager) and node-4, node-5 as workers; waits
/// until the leader lists all 5 Ready.
fn build_cluster(opts: &Opts, tmp: &Path) -> Result<Cluster, String> {
    let logs = tmp.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let mut c = Cluster { nodes: Vec::new() };
    for i in 1..=MANAGERS + WORKERS {
        c.nodes.push(Node {
            name: format!("node-{i}"),
            dir: tmp.join(format!("node-{i}")),
            listen: free_port()?,
            child: None,
        });
    }
    for n in c.nodes.iter_mut() {
        n.spawn(&opts.shoal, &logs, &opts.gossip)?;
    }
    for n in &c.nodes {
        poll_until(TIMEOUT, opts.poll, || n.answers().then_some(()))
            .ok_or_else(|| format!("{} did not serve its control socket", n.name))?;
    }
    c.nodes[0].call("POST", "/v1/swarm/init", Some(json!({})))?;
    let token =
        |role: &str| match c.nodes[0].call("GET", &format!("/v1/swarm/join-token/{role}"), None)? {
            Response::Token { token, .. } => Ok(token),
            other => Err(format!("unexpected answer to join-token: {other:?}")),
        };
    let (mtoken, wtoken) = (token("manager")?, token("worker")?);
    let remote = c.nodes[0].listen.to_string();
    for i in 1..c.nodes.len() {
        let manager = i < MANAGERS;
        let t = if manager { &mtoken } else { &wtoken };
        c.nodes[i].call(
            "POST",
            "/v1/swarm/join",
            Some(json!({"token": t, "remote_addr": remote})),
        )?;
        if manager {
            wait_ready(&c, i + 1, opts.poll).ok_or_else(|| {
                format!(
                    "{} did not become a Reachable manager (node-1 lists: {})",
                    c.nodes[i].name,
                    node_list(&c)
                )
            })?;
        }
    }
    wait_ready(&c, c.nodes.len(), opts.poll).ok_or_else(|| {
        format!(
            "the cluster did not list every node Ready (node-1 lists: {})",
            node_list(&c)
        )
    })?;
    Ok(c)
}

/// What node-1's `node ls` says, on one line (for errors).
fn node_list(c: &Cluster) -> String {
    match c.nodes[0].nodes() {
        Some(l) => l
            .iter()
            .map(|v| format!("{} {} {}", v.hostname, v.status, v.manager_status))
            .collect::<Vec<_>>()
            .join(", "),
        None => "no answer".into(),
    }
}

/// node-1 lists the first `count` nodes Ready, the managers among them Reachable (or Leader).
fn wait_ready(c: &Cluster, count: usize, every: Duration) -> Option<()> {
    poll_until(TIMEOUT, every, || {
        let list = c.nodes[0].nodes()?;
        let ok = c.nodes[..count].iter().enumerate().all(|(i, n)| {
            list.iter().any(|v| {
                v.hostname == n.name
                    && v.status == "Ready"
                    && (i >= MANAGERS
                        || v.manager_status == "Reachable"
                        || v.manager_status == "Leader")
            })
        });
        ok.then_some(())
    })
}

/// Node `i`'s Raft term and the leader it names (hostname), from its own API.
fn term_and_leader(c: &Cluster, i: usize) -> (u64, String) {
    let info = match client::call(c.nodes[i].socket(), "GET", "/v1/info", None) {
        Ok(Response::Info(info)) => info,
        _ => return (0, String::new()),
    };
    let name = c.nodes[i]
        .nodes()
        .and_then(|l| l.into_iter().find(|v| v.id == info.leader))
        .map_or(info.leader.clone(), |v| v.hostname);
    (info.term, name)
}

fn leader_name(c: &Cluster) -> String {
    c.nodes[0]
        .nodes()
        .and_then(|l| {
            l.into_iter()
                .find(|v| v.manager_status == "Leader")
                .map(|v| v.hostname)
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------ measurements

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Seconds from `t0_ms` (Unix ms) to `t_ms`.
fn rel(t_ms: f64, t0_ms: f64) -> f64 {
    round3((t_ms - t0_ms) / 1000.0)
}

/// min, median (nearest rank), max of some values; `null` when empty.
fn spread(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({
        "min": round3(s[0]),
        "median": round3(s[(s.len() - 1) / 2]),
        "max": round3(s[s.len() - 1]),
    })
}

/// `--trace`: prints the tasks' (desired, state) counts on stderr whenever they change.
struct Tracer {
    on: bool,
    since: Instant,
    last: BTreeMap<String, usize>,
}

impl Tracer {
    fn new(on: bool) -> Tracer {
        Tracer {
            on,
            since: Instant::now(),
            last: BTreeMap::new(),
        }
    }

    fn poll(&mut self, n: &Node, extra: &str) {
        if !self.on {
            return;
        }
        let Some(tasks) = n.tasks(None) else {
            return;
        };
        let mut counts = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.current) {
            let key = format!("{}/{}", t.desired_state, t.state);
            *counts.entry(key).or_insert(0) += 1;
        }
        if counts != self.last {
            let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!(
                "      +{:.3} s {}{extra}",
                self.since.elapsed().as_secs_f64(),
                parts.join(" ")
            );
            self.last = counts;
        }
    }
}

/// Creation, process start and Running times of a set of tasks, relative to `t0_ms`; also how
/// many landed on each node.
fn breakdown(tasks: &[&TaskView], c: &Cluster, clock: &ProcClock, t0_ms: f64) -> Value {
    let created: Vec<f64> = tasks
        .iter()
        .map(|t| rel(t.created_at_ms as f64, t0_ms))
        .collect();
    let running: Vec<f64> = tasks
        .iter()
        .filter(|t| t.state == "Running")
        .map(|t| rel(t.state_since_ms as f64, t0_ms))
        .collect();
    // The processes' start times, from their records and /proc (matched by pid).
    let mut starts: BTreeMap<u32, f64> = BTreeMap::new();
    for n in &c.nodes {
        for (pid, ticks) in live_tasks(&n.dir) {
            starts.insert(pid as u32, rel(clock.to_unix_ms(ticks), t0_ms));
        }
    }
    let started: Vec<f64> = tasks
        .iter()
        .filter_map(|t| starts.get(&t.pid))
        .copied()
        .collect();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        *per_node.entry(t.node.clone()).or_insert(0) += 1;
    }
    json!({
        "created_s": spread(&created),
        "process_started_s": spread(&started),
        "running_committed_s": spread(&running),
        "per_node": per_node,
    })
}

/// Scenario 1; returns its JSON and the wall time to all running.
fn scenario_create(opts: &Opts, c: &Cluster, clock: &ProcClock) -> Result<(Value, f64), String> {
    let mgr = &c.nodes[0];
    let n = opts.replicas;
    let mut tr = Tracer::new(opts.trace);
    let (term_before, _) = term_and_leader(c, 0);
    let t0_ms = now_ms();
    let t0 = Instant::now();
    let out = Command::new(&opts.shoal)
        .arg("--data-dir")
        .arg(&mgr.dir)
        .args(["service", "create", "-d", "--name", SERVICE, "--replicas"])
        .arg(n.to_string())
        .args(["--runtime", "process", "sleep", "100000"])
        .output()
        .map_err(|e| format!("cannot run the CLI: {e}"))?;
    let cli_s = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "service create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (mut first_running, mut all_running, mut processes) = (None, None, None);
    let mut seen_running = 0;
    let ok = poll_until(TIMEOUT, opts.poll, || {
        tr.poll(mgr, "");
        if all_running.is_none() {
            if let Some(s) = mgr.service() {
                seen_running = s.running;
                if s.running > 0 && first_running.is_none() {
                    first_running = Some(t0.elapsed().as_secs_f64());
                }
                if s.running == n && s.desired == n {
                    all_running = Some(t0.elapsed().as_secs_f64());
                }
            }
        }
        if processes.is_none() {
            let live: usize = c.nodes.iter().map(|n| live_tasks(&n.dir).len()).sum();
            if live as u64 == n {
                processes = Some(t0.elapsed().as_secs_f64());
            }
        }
        (all_running.is_some() && processes.is_some()).then_some(())
    });
    if ok.is_none() {
        return Err(format!(
            "create: not all running within {} s (service ls: {seen_running}/{n})",
            TIMEOUT.as_secs()
        ));
    }
    let all = all_running.unwrap_or_default();
    let (term_after, leader_after) = term_and_leader(c, 0);
    let tasks = mgr.tasks(None).ok_or("service ps failed")?;
    let current: Vec<&TaskView> = tasks.iter().filter(|t| t.current).collect();
    let mut v = json!({
        "term_before": term_before,
        "term_after": term_after,
        "leader_after": leader_after,
        "cli_s": round3(cli_s),
        "first_running_s": first_running.map(round3),
        "all_running_s": round3(all),
        "processes_s": processes.map(round3),
        "tasks": current.len(),
        "history_rows": tasks.len() - current.len(),
    });
    if let (Value::Object(m), Value::Object(b)) = (&mut v, breakdown(&current, c, clock, t0_ms)) {
        m.extend(b);
    }
    Ok((v, all))
}

/// Scenario 2 on worker `w`; returns its JSON and the wall time to all running again.
fn scenario_failover(
    opts: &Opts,
    c: &mut Cluster,
    w: usize,
    variant: Variant,
    clock: &ProcClock,
) -> Result<(Value, f64), String> {
    let n = opts.replicas;
    let victim = c.nodes[w].name.clone();
    let on_victim = c.nodes[0]
        .tasks(Some(&victim))
        .ok_or("service ps failed")?
        .iter()
        .filter(|t| t.current && t.desired_state == "Running")
        .count();
    if on_victim == 0 {
        return Err(format!("{victim} runs no task"));
    }
    let mut tr = Tracer::new(opts.trace);
    let (term_before, _) = term_and_leader(c, 0);
    let t0_ms = now_ms();
    let t0 = Instant::now();
    c.nodes[w].kill();
    let killed_tasks = if variant == Variant::Machine {
        kill_task_records(&[c.nodes[w].dir.as_path()])
    } else {
        0
    };
    let kill_s = t0.elapsed().as_secs_f64();
    let mgr = &c.nodes[0];
    let survivors: Vec<&Node> = c
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != w)
        .map(|(_, n)| n)
        .collect();
    let (mut down, mut replaced, mut all_running, mut processes) = (None, None, None, None);
    let (mut seen_running, mut seen_left) = (0, on_victim);
    let ok = poll_until(TIMEOUT, opts.poll, || {
        tr.poll(mgr, "");
        let now = || Some(t0.elapsed().as_secs_f64());
        if down.is_none() {
            let gone = mgr.nodes().is_some_and(|l| {
                l.iter()
                    .any(|v| v.hostname == victim && v.status != "Ready")
            });
            if gone {
                down = now();
            }
        }
        if replaced.is_none() {
            if let Some(ts) = mgr.tasks(Some(&victim)) {
                seen_left = ts
                    .iter()
                    .filter(|t| t.current && t.desired_state == "Running")
                    .count();
                if seen_left == 0 {
                    replaced = now();
                }
            }
        }
        if replaced.is_some() && all_running.is_none() {
            if let Some(s) = mgr.service() {
                seen_running = s.running;
                if s.running == n {
                    all_running = now();
                }
            }
        }
        if processes.is_none() {
            let live: usize = survivors.iter().map(|n| live_tasks(&n.dir).len()).sum();
            if live as u64 == n {
                processes = now();
            }
        }
        (all_running.is_some() && processes.is_some()).then_some(())
    });
    if ok.is_none() {
        return Err(format!(
            "failover: not back to {n} within {} s (down {down:?}, {seen_left} of {victim}'s \
             tasks still wanted, service ls {seen_running}/{n})",
            TIMEOUT.as_secs()
        ));
    }
    let all = all_running.unwrap_or_default();
    let (term_after, leader_after) = term_and_leader(c, 0);
    let tasks = mgr.tasks(None).ok_or("service ps failed")?;
    let current: Vec<&TaskView> = tasks.iter().filter(|t| t.current).collect();
    let running_elsewhere = current
        .iter()
        .filter(|t| t.state == "Running" && t.node != victim)
        .count();
    let replacements: Vec<&TaskView> = current
        .iter()
        .filter(|t| t.created_at_ms as f64 >= t0_ms - 1.0)
        .copied()
        .collect();
    let live_on_survivors: usize = survivors.iter().map(|n| live_tasks(&n.dir).len()).sum();
    let live_on_victim = live_tasks(&c.nodes[w].dir).len();
    let mut v = json!({
        "term_before": term_before,
        "term_after": term_after,
        "leader_after": leader_after,
        "killed": victim,
        "tasks_on_killed": on_victim,
        "task_processes_killed": killed_tasks,
        "kill_s": round3(kill_s),
        "down_s": down.map(round3),
        "replaced_s": replaced.map(round3),
        "all_running_s": round3(all),
        "processes_s": processes.map(round3),
        "replacements": replacements.len(),
        "running_elsewhere": running_elsewhere,
        "live_processes_on_survivors": live_on_survivors,
        "live_processes_on_killed": live_on_victim,
    });
    if let (Value::Object(m), Value::Object(b)) =
        (&mut v, breakdown(&replacements, c, clock, t0_ms))
    {
        m.extend(b);
    }
    Ok((v, all))
}

/// The worker running the most tasks.
fn busiest_worker(c: &Cluster) -> usize {
    let tasks = c.nodes[0].tasks(None).unwrap_or_default();
    (MANAGERS..c.nodes.len())
        .max_by_key(|&i| {
            tasks
                .iter()
                .filter(|t| t.current && t.node == c.nodes[i].name)
                .count()
        })
        .unwrap_or(MANAGERS)
}

/// One round with one failover variant on a fresh cluster.
fn run_round(
    opts: &Opts,
    round: usize,
    variant: Variant,
    clock: &ProcClock,
) -> Result<(Value, f64, f64), String> {
    let tmp = tempdir()?;
    eprintln!(
        "service-bench: round {round}, {} gossip, failover variant {} (agent logs in {})",
        opts.gossip,
        variant.name(),
        tmp.join("logs").display()
    );
    let result = (|| {
        let t = Instant::now();
        let mut c = build_cluster(opts, &tmp)?;
        let leader = leader_name(&c);
        eprintln!(
            "  5 agents Ready in {:.1} s (leader {leader})",
            t.elapsed().as_secs_f64()
        );
        let (create, create_s) = scenario_create(opts, &c, clock)?;
        eprintln!("  create: {} running after {create_s:.3} s", opts.replicas);
        // Let the cluster settle (status reports, gossip) before the kill.
        std::thread::sleep(Duration::from_secs(1));
        let w = busiest_worker(&c);
        let (failover, failover_s) = scenario_failover(opts, &mut c, w, variant, clock)?;
        eprintln!(
            "  failover ({}): {} back to {} running after {failover_s:.3} s",
            variant.name(),
            c.nodes[w].name,
            opts.replicas
        );
        let row = json!({
            "round": round,
            "gossip": opts.gossip,
            "variant": variant.name(),
            "replicas": opts.replicas,
            "managers": MANAGERS,
            "workers": WORKERS,
            "create_on": c.nodes[0].name,
            "leader": leader,
            "create": create,
            "failover": failover,
        });
        drop(c);
        Ok::<_, String>((row, create_s, failover_s))
    })();
    match &result {
        Ok(_) if !opts.keep => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        _ => eprintln!("  agent logs kept in {}", tmp.join("logs").display()),
    }
    result
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !opts.shoal.is_file() {
        eprintln!(
            "no shoal binary at {} (use --shoal PATH)",
            opts.shoal.display()
        );
        return ExitCode::from(2);
    }
    eprintln!(
        "service-bench: {} rounds, {} replicas, shoal {}",
        opts.rounds,
        opts.replicas,
        opts.shoal.display()
    );
    let clock = ProcClock::new();
    let mut create = Vec::new();
    let mut failover: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // Parts of the breakdown summarised too: (key in the summary, scenario, field).
    let parts = [
        ("create_processes_s", "create", "processes_s"),
        (
            "create_last_process_started_s",
            "create",
            "process_started_s",
        ),
    ];
    let mut part_values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut terms_changed = 0;
    let mut failed = 0;
    for round in 1..=opts.rounds {
        for &v in &opts.variants {
            match run_round(&opts, round, v, &clock) {
                Ok((row, c, f)) => {
                    println!("{row}");
                    let field = |scenario: &str, key: &str| {
                        let x = &row[scenario][key];
                        x.get("max").unwrap_or(x).as_f64()
                    };
                    for (name, scenario, key) in parts {
                        if let Some(x) = field(scenario, key) {
                            part_values.entry(name.to_string()).or_default().push(x);
                        }
                    }
                    for (key, what) in [("down_s", "down"), ("processes_s", "processes")] {
                        if let Some(x) = field("failover", key) {
                            part_values
                                .entry(format!("failover_{}_{what}_s", v.name()))
                                .or_default()
                                .push(x);
                        }
                    }
                    for scenario in ["create", "failover"] {
                        if row[scenario]["term_before"] != row[scenario]["term_after"] {
                            terms_changed += 1;
                        }
                    }
                    create.push(c);
                    failover.entry(v.name()).or_default().push(f);
                }
                Err(e) => {
                    eprintln!("service-bench: round {round} ({}): {e}", v.name());
                    failed += 1;
                }
            }
        }
    }
    let mut summary = json!({
        "summary": true,
        "gossip": opts.gossip,
        "replicas": opts.replicas,
        "rounds": opts.rounds,
        "failed": failed,
        "create_all_running_s": spread(&create),
        "create_target_s": TARGET_CREATE_S,
        "create_target_met": !create.is_empty() && create.iter().all(|&s| s <= TARGET_CREATE_S),
        "failover_target_s": TARGET_FAILOVER_S,
        "scenarios_with_a_new_raft_term": terms_changed,
    });
    if let Value::Object(m) = &mut summary {
        for (name, v) in &part_values {
            m.insert(name.clone(), spread(v));
        }
        for (name, v) in &failover {
            m.insert(format!("failover_{name}_s"), spread(v));
            m.insert(
                format!("failover_{name}_target_met"),
                Value::Bool(v.iter().all(|&s| s <= TARGET_FAILOVER_S)),
            );
        }
    }
    println!("{summary}");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
