//! `orch-bench --nodes N --tasks M [--services S] [--managers 3] [--wal-dir DIR]`: the leader's
//! pipeline from `service create` to every task running, and one JSON object with the result.
//!
//! `--pass-trigger applied` (the default) runs an orchestrator pass as the agent's Raft driver
//! does: one plan in flight, a pass once it is applied and whenever anything new was applied;
//! `plan` runs one only after a plan that changed something (orchestrator/tests/reconcile.rs).
//!
//! Three in-process Raft replicas (messages passed by direct calls), each with its own durable
//! WAL and a storage thread doing group commit with fsync, as `raft-bench durable` runs them. The
//! leader applies every committed command to a `ClusterState` (decoded from the entry's bytes, as
//! a real manager does); followers only keep the log. The leader's loop: propose the services,
//! run `shoal_orchestrator::reconcile` (which places tasks through the scheduler) whenever its
//! previous plan is applied, and propose the plan as `Command::Tasks` entries of at most
//! `MAX_BATCH` changes. Simulated workers report every task assigned to them as running at once,
//! one `Command::ReportTasks` per node (at most `MAX_BATCH` reports each), proposed as soon as the
//! assignment is applied. The clock stops when every task is applied as running on the leader.
//!
//! Times in the JSON: `all_running_ms` (the goal), `created_assigned_ms` (every task applied as
//! created on a node), `orchestrator_idle_ms` (the pass that found nothing left to do ended);
//! `orchestrator_ms`, `apply_ms`, `decode_ms`, `encode_ms` and `agents_ms` are the main thread's
//! time in each until the orchestrator is idle (the storage threads write and fsync alongside). Memory: `rss_per_task_bytes`
//! is the growth of VmRSS from before the services are proposed to the end, per task, the
//! replicas' in-memory Raft logs included (`raft_log_bytes_in_memory`). `ORCH_BENCH_DEBUG=1`
//! traces every orchestrator pass on stderr.

use serde_json::json;
use shoal_cluster::{
    ClusterInfo, ClusterState, Command, NewNode, NodeDescription, NodeId, NodeState, NodeStatus,
    Platform, Resources, Role, Runtime, ServiceSpec, TaskChange, TaskReport, TaskState, TaskStatus,
    MAX_BATCH,
};
use shoal_raft::wal::{Wal, WalOptions};
use shoal_raft::{
    Config, Message, Payload, RaftNode, RecoveredState, Role as RaftRole, Storage, WriteBatch,
};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    nodes: u64,
    tasks: u64,
    services: u64,
    managers: u64,
    wal_dir: Option<String>,
    trigger: Trigger,
}

/// When the orchestrator runs a pass (with its previous plan applied, in both cases).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Whenever anything was applied since the last pass (the agent's Raft driver).
    Applied,
    /// Only after a plan that changed something (orchestrator/tests/reconcile.rs's loop).
    Plan,
}

fn usage() -> ! {
    eprintln!(
        "usage: orch-bench --nodes N --tasks M [--services S] [--replicas-per-service R] [--managers 3] [--wal-dir DIR] [--pass-trigger applied|plan]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        nodes: 0,
        tasks: 0,
        services: 1,
        managers: 3,
        wal_dir: None,
        trigger: Trigger::Applied,
    };
    let mut per_service: Option<u64> = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        let num = |s: String| s.parse::<u64>().unwrap_or_else(|_| usage());
        match arg.as_str() {
            "--nodes" => a.nodes = num(val()),
            "--tasks" => a.tasks = num(val()),
            "--services" => a.services = num(val()),
            "--replicas-per-service" => per_service = Some(num(val())),
            "--managers" => a.managers = num(val()),
            "--wal-dir" => a.wal_dir = Some(val()),
            "--pass-trigger" => {
                a.trigger = match val().as_str() {
                    "applied" => Trigger::Applied,
                    "plan" => Trigger::Plan,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    if let Some(r) = per_service {
        if a.tasks == 0 {
            a.tasks = r * a.services;
        } else if r * a.services != a.tasks {
            eprintln!("--replicas-per-service × --services must equal --tasks");
            usage();
        }
    }
    if a.nodes == 0 || a.tasks == 0 || a.services == 0 || a.managers == 0 || a.services > a.tasks {
        usage();
    }
    a
}

/// Unix milliseconds (the proposer's clock, carried in the commands).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

fn new_node(id: NodeId) -> NewNode {
    NewNode {
        id,
        description: NodeDescription {
            hostname: format!("node-{id}"),
            platform: Platform {
                os: "linux".into(),
                arch: "amd64".into(),
            },
            resources: Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
            },
            engine_version: "0.1.0".into(),
            agent_version: "0.1.0".into(),
            runtime_problems: Vec::new(),
            runtimes: vec![Runtime::Process],
            limits_enforced: false,
        },
        addr: format!(
            "10.{}.{}.{}:4789",
            (id >> 16) & 255,
            (id >> 8) & 255,
            id & 255
        ),
        labels: BTreeMap::new(),
        desired_role: Role::Worker,
    }
}

/// fsyncs, entries and bytes written by one replica's log.
#[derive(Default)]
struct DiskCounters {
    fsyncs: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
}

/// One replica's storage thread: group commit (every batch queued during the last fsync goes
/// into the next one), then reports the last durable batch.
fn storage_thread(
    mut wal: Wal,
    node: usize,
    batches: mpsc::Receiver<WriteBatch>,
    done: mpsc::Sender<(usize, u64)>,
    counters: Arc<DiskCounters>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Ok(first) = batches.recv() {
            wal.write(&first).expect("WAL write");
            while let Ok(b) = batches.try_recv() {
                wal.write(&b).expect("WAL write");
            }
            let seq = wal.sync().expect("WAL sync");
            let st = wal.stats();
            counters.fsyncs.store(st.fsyncs, Ordering::Relaxed);
            counters.entries.store(st.entries, Ordering::Relaxed);
            counters.bytes.store(st.bytes, Ordering::Relaxed);
            if done.send((node, seq)).is_err() {
                break;
            }
        }
    })
}

/// Counters of the measured phase.
#[derive(Default)]
struct Metrics {
    /// Command entries applied on the leader.
    entries: u64,
    task_entries: u64,
    report_entries: u64,
    apply: Duration,
    decode: Duration,
    encode: Duration,
    orchestrator: Duration,
    passes: u64,
    longest_pass: Duration,
    workers: Duration,
    /// Tasks applied as assigned (created placed, or assigned later).
    assigned: u64,
    /// Tasks applied as running.
    running: u64,
}

/// The leader's manager process: three Raft replicas on WALs and the leader's cluster state.
struct Manager {
    rafts: Vec<RaftNode>,
    to_disk: Vec<mpsc::Sender<WriteBatch>>,
    done_rx: mpsc::Receiver<(usize, u64)>,
    queue: VecDeque<Message>,
    state: ClusterState,
    m: Metrics,
    /// Nodes whose assignments changed since their agent last looked (index = node id).
    dirty: Vec<bool>,
    dirty_list: Vec<NodeId>,
    /// Log index of each node's last report in flight: the agent looks again once it is applied.
    reported_at: Vec<u64>,
}

impl Manager {
    fn pump(&mut self) {
        let Manager {
            rafts,
            to_disk,
            queue,
            state,
            m,
            dirty,
            dirty_list,
            ..
        } = self;
        shoal_benches::pump(
            rafts,
            queue,
            |_, i, b| {
                let _ = to_disk[i].send(b);
            },
            |i, entries| {
                if i != 0 {
                    return;
                }
                for e in entries {
                    let Payload::Command(data) = &e.payload else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    let t = Instant::now();
                    let cmd = Command::decode(data).expect("entries decode");
                    let t1 = Instant::now();
                    state.apply(e.index, &cmd).expect("commands apply");
                    m.decode += t1 - t;
                    m.apply += t1.elapsed();
                    m.entries += 1;
                    match &cmd {
                        Command::Tasks { changes, .. } => {
                            m.task_entries += 1;
                            for c in changes {
                                let node = match c {
                                    TaskChange::Create(nt) if nt.pending_reason.is_empty() => {
                                        nt.node
                                    }
                                    TaskChange::Assign { node, .. } => Some(*node),
                                    _ => None,
                                };
                                if let Some(n) = node {
                                    m.assigned += 1;
                                    let slot = &mut dirty[n as usize];
                                    if !*slot {
                                        *slot = true;
                                        dirty_list.push(n);
                                    }
                                }
                            }
                        }
                        Command::ReportTasks { reports, .. } => {
                            m.report_entries += 1;
                            m.running += reports.len() as u64;
                        }
                        _ => {}
                    }
                }
            },
        );
    }

    /// Feeds every durability notice that has arrived; with `block`, waits for one first.
    fn persisted(&mut self, block: bool) -> bool {
        let mut any = false;
        if block {
            let (n, seq) = self.done_rx.recv().expect("storage threads alive");
            self.rafts[n].on_persisted(seq);
            any = true;
        }
        while let Ok((n, seq)) = self.done_rx.try_recv() {
            self.rafts[n].on_persisted(seq);
            any = true;
        }
        any
    }

    fn applied(&self) -> u64 {
        self.rafts[0].applied_index()
    }

    /// Proposes encoded commands; returns the index of the last one.
    fn propose(&mut self, data: Vec<Vec<u8>>) -> u64 {
        let n = data.len() as u64;
        let p = self.rafts[0]
            .propose_batch(data)
            .expect("the leader accepts proposals");
        p.index + n - 1
    }

    /// Runs the group until everything proposed so far is applied on the leader.
    fn settle(&mut self) {
        loop {
            self.pump();
            if self.applied() >= self.rafts[0].last_index() {
                return;
            }
            self.persisted(true);
        }
    }

    /// Simulated agents: every node whose assignments changed, and whose previous report is
    /// applied, reports its newly assigned tasks as running. Returns the encoded commands.
    fn agents(&mut self, at_ms: u64) -> Vec<Vec<u8>> {
        let t = Instant::now();
        let applied = self.applied();
        let mut out = Vec::new();
        let mut still = Vec::new();
        let list = std::mem::take(&mut self.dirty_list);
        let mut reporting = Vec::new();
        for n in list {
            if self.reported_at[n as usize] > applied {
                still.push(n);
                continue;
            }
            self.dirty[n as usize] = false;
            let reports: Vec<TaskReport> = self
                .state
                .tasks_on_node(n)
                .filter(|t| {
                    t.status.state == TaskState::Assigned && t.desired == TaskState::Running
                })
                .map(|t| TaskReport {
                    id: t.id,
                    status: TaskStatus::new(TaskState::Running, "started"),
                })
                .collect();
            for chunk in reports.chunks(MAX_BATCH) {
                out.push(
                    Command::ReportTasks {
                        node: n,
                        reports: chunk.to_vec(),
                        at_ms,
                    }
                    .encode(),
                );
                reporting.push(n);
            }
        }
        self.dirty_list = still;
        self.m.workers += t.elapsed();
        if !out.is_empty() {
            let first = self.rafts[0].last_index() + 1;
            for (k, n) in reporting.into_iter().enumerate() {
                self.reported_at[n as usize] = first + k as u64;
            }
        }
        out
    }
}

fn open_cluster(
    managers: u64,
    dir: &Path,
) -> (
    Manager,
    Vec<Arc<DiskCounters>>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let ids: Vec<u64> = (1..=managers).collect();
    let (done_tx, done_rx) = mpsc::channel();
    let mut rafts = Vec::new();
    let mut to_disk = Vec::new();
    let mut threads = Vec::new();
    let mut counters = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let (mut wal, _, _) =
            Wal::open(dir.join(format!("node{id}")), WalOptions::default()).expect("open WAL");
        let boot = RecoveredState::bootstrap(ids.iter().copied());
        wal.write(&WriteBatch {
            seq: 0,
            snapshot: boot.snapshot.clone(),
            reset_log: true,
            compact_to: None,
            entries: Vec::new(),
            hard_state: Some(boot.hard_state),
        })
        .expect("bootstrap");
        wal.sync().expect("bootstrap sync");
        let mut cfg = Config::new(id);
        cfg.max_entries_per_msg = 8192;
        cfg.max_bytes_per_msg = 64 << 20;
        cfg.max_uncommitted_entries = 1 << 22;
        cfg.max_uncommitted_bytes = 4 << 30;
        cfg.snapshot_threshold = 1 << 40;
        rafts.push(RaftNode::new(cfg, boot).expect("raft node"));
        let (tx, rx) = mpsc::channel();
        to_disk.push(tx);
        let c = Arc::new(DiskCounters::default());
        counters.push(c.clone());
        threads.push(storage_thread(wal, i, rx, done_tx.clone(), c));
    }
    drop(done_tx);
    let mgr = Manager {
        rafts,
        to_disk,
        done_rx,
        queue: VecDeque::new(),
        state: ClusterState::new(),
        m: Metrics::default(),
        dirty: Vec::new(),
        dirty_list: Vec::new(),
        reported_at: Vec::new(),
    };
    (mgr, counters, threads)
}

fn run(a: &Args, dir: &Path) -> serde_json::Value {
    let (mut mgr, disks, threads) = open_cluster(a.managers, dir);
    // Elect replica 1 (the only one ticked).
    while mgr.rafts[0].role() != RaftRole::Leader {
        mgr.rafts[0].tick();
        mgr.pump();
        if !mgr.persisted(false) {
            std::thread::sleep(Duration::from_micros(100));
        }
        mgr.pump();
    }
    mgr.settle();
    // The swarm: init on node 1, then every other node joins and is seen ready.
    let at = now_ms();
    let mut first = new_node(1);
    first.desired_role = Role::Manager;
    let mut setup = vec![Command::Init {
        cluster: ClusterInfo {
            id: "0123456789abcdef0123456789abcdef".into(),
            created_at_ms: at,
            ca_pem: "ca".into(),
            worker_token: "w".into(),
            manager_token: "m".into(),
            unlock_key: String::new(),
        },
        node: first,
        at_ms: at,
    }
    .encode()];
    for id in 2..=a.nodes {
        setup.push(
            Command::AddNode {
                node: new_node(id),
                at_ms: at,
            }
            .encode(),
        );
    }
    for id in 1..=a.nodes {
        setup.push(
            Command::SetStatus {
                id,
                status: NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                },
                at_ms: at,
            }
            .encode(),
        );
    }
    mgr.propose(setup);
    mgr.settle();
    assert_eq!(mgr.state.nodes().len() as u64, a.nodes, "every node joined");
    mgr.dirty = vec![false; a.nodes as usize + 1];
    mgr.reported_at = vec![0; a.nodes as usize + 1];
    mgr.m = Metrics::default();
    let disk0: Vec<(u64, u64, u64)> = disks
        .iter()
        .map(|d| {
            (
                d.fsyncs.load(Ordering::Relaxed),
                d.entries.load(Ordering::Relaxed),
                d.bytes.load(Ordering::Relaxed),
            )
        })
        .collect();
    let cfg = shoal_orchestrator::Config::default();
    let total = a.tasks;
    let rss_before = proc_status_bytes("VmRSS");

    // Measured: the services are proposed...
    let start = Instant::now();
    let at = now_ms();
    let mut creates = Vec::new();
    for s in 0..a.services {
        let replicas = total / a.services + u64::from(s < total % a.services);
        creates.push(
            Command::CreateService {
                spec: ServiceSpec::new(&format!("svc-{s}"), "/bin/sleep", replicas),
                at_ms: at,
            }
            .encode(),
        );
    }
    let first_index = mgr.rafts[0].last_index() + 1;
    // The last entry of the plan in flight, and the applied index the last pass saw.
    let mut plan_until = mgr.propose(creates);
    let mut seen = 0u64;
    let mut assigned_at: Option<Duration> = None;
    let mut running_at: Option<Duration> = None;
    let mut idle_at: Option<Duration> = None;
    loop {
        mgr.pump();
        if assigned_at.is_none() && mgr.m.assigned >= total {
            assigned_at = Some(start.elapsed());
        }
        if running_at.is_none() && mgr.m.running >= total {
            running_at = Some(start.elapsed());
        }
        let mut proposed = false;
        // Agents report what was assigned to them.
        let reports = mgr.agents(now_ms());
        if !reports.is_empty() {
            mgr.propose(reports);
            proposed = true;
        }
        // The orchestrator, as the agent's Raft driver runs it: one plan in flight; a pass once
        // it is applied, and then whenever something new was applied (with `--pass-trigger
        // plan`: only after a plan that changed something).
        let applied = mgr.applied();
        let pass_wanted = applied >= plan_until
            && applied >= mgr.rafts[0].commit_index()
            && match a.trigger {
                Trigger::Applied => applied > seen,
                Trigger::Plan => seen < plan_until,
            };
        if pass_wanted {
            seen = applied;
            let now = now_ms();
            let t = Instant::now();
            let plan = shoal_orchestrator::reconcile(&mgr.state, now, &cfg);
            mgr.m.orchestrator += t.elapsed();
            mgr.m.longest_pass = mgr.m.longest_pass.max(t.elapsed());
            mgr.m.passes += 1;
            if std::env::var_os("ORCH_BENCH_DEBUG").is_some() {
                eprintln!(
                    "{:>8.1} ms pass {}: {} changes (more {}) in {:.1} ms; assigned {} running {}",
                    start.elapsed().as_secs_f64() * 1e3,
                    mgr.m.passes,
                    plan.changes.len(),
                    plan.more,
                    t.elapsed().as_secs_f64() * 1e3,
                    mgr.m.assigned,
                    mgr.m.running
                );
            }
            if plan.changes.is_empty() {
                idle_at = Some(start.elapsed());
            } else {
                let t = Instant::now();
                let data = Command::encode_task_batches(&plan.changes, now);
                mgr.m.encode += t.elapsed();
                drop(plan);
                plan_until = mgr.propose(data);
                proposed = true;
            }
        }
        // Done once every task runs and the orchestrator has seen it all (and had nothing to
        // add, or it would have a plan in flight).
        let applied = mgr.applied();
        let settled = applied >= plan_until
            && match a.trigger {
                Trigger::Applied => applied == seen,
                Trigger::Plan => seen >= plan_until,
            };
        if running_at.is_some() && settled && !proposed {
            break;
        }
        if proposed {
            continue;
        }
        if mgr.applied() >= mgr.rafts[0].last_index() && mgr.dirty_list.is_empty() {
            panic!(
                "stuck: {} of {total} tasks assigned, {} running, nothing in flight",
                mgr.m.assigned, mgr.m.running
            );
        }
        mgr.persisted(true);
    }
    let rss_after = proc_status_bytes("VmRSS");
    let peak = proc_status_bytes("VmHWM");
    let last_index = mgr.rafts[0].last_index();
    // The Raft logs the replicas hold in memory (no snapshot is taken during the run).
    let log_bytes: usize = mgr
        .rafts
        .iter()
        .flat_map(|r| r.entries())
        .map(|e| e.payload.size())
        .sum();

    // Check, off the clock: every task exists once and runs.
    let running = mgr
        .state
        .tasks()
        .values()
        .filter(|t| t.status.state == TaskState::Running && t.node.is_some())
        .count() as u64;
    assert_eq!(mgr.state.tasks().len() as u64, total, "one task per slot");
    assert_eq!(running, total, "every task runs");
    let per_node: Vec<usize> = mgr
        .state
        .nodes()
        .keys()
        .map(|&n| mgr.state.tasks_on_node(n).count())
        .collect();

    let m = &mgr.m;
    let running_s = running_at.expect("all running").as_secs_f64();
    let entries = last_index + 1 - first_index;
    let disk: Vec<(u64, u64, u64)> = disks
        .iter()
        .zip(&disk0)
        .map(|(d, z)| {
            (
                d.fsyncs.load(Ordering::Relaxed) - z.0,
                d.entries.load(Ordering::Relaxed) - z.1,
                d.bytes.load(Ordering::Relaxed) - z.2,
            )
        })
        .collect();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let out = json!({
        "bench": "orch-bench",
        "nodes": a.nodes,
        "tasks": total,
        "services": a.services,
        "replicas_per_service": total / a.services,
        "replicas": a.managers,
        "wal": true,
        "fsync": true,
        "followers_apply": false,
        "pass_trigger": match a.trigger {
            Trigger::Applied => "applied",
            Trigger::Plan => "plan",
        },
        "all_running_ms": ms(running_at.unwrap_or_default()),
        "created_assigned_ms": ms(assigned_at.unwrap_or_default()),
        "orchestrator_idle_ms": ms(idle_at.unwrap_or_default()),
        "raft_entries": entries,
        "task_entries": m.task_entries,
        "report_entries": m.report_entries,
        "entries_per_s": (entries as f64 / running_s).round() as u64,
        "tasks_per_s": (total as f64 / running_s).round() as u64,
        "orchestrator_ms": ms(m.orchestrator),
        "reconcile_passes": m.passes,
        "reconcile_max_pass_ms": ms(m.longest_pass),
        "tasks_per_node_min": per_node.iter().min(),
        "tasks_per_node_max": per_node.iter().max(),
        "apply_ms": ms(m.apply),
        "decode_ms": ms(m.decode),
        "encode_ms": ms(m.encode),
        "agents_ms": ms(m.workers),
        "fsyncs_leader": disk[0].0,
        "fsyncs_total": disk.iter().map(|d| d.0).sum::<u64>(),
        "wal_bytes_leader": disk[0].2,
        "peak_rss_bytes": peak,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "raft_log_bytes_in_memory": log_bytes,
        "raft_snapshots": false,
        "rss_per_task_bytes": (rss_after.saturating_sub(rss_before) as f64 / total as f64).round() as u64,
    });
    drop(mgr);
    for t in threads {
        t.join().expect("storage thread");
    }
    out
}

fn main() {
    let a = parse();
    let tmp = match &a.wal_dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir_in("."),
    }
    .expect("temp dir for the WALs");
    let out = run(&a, tmp.path());
    println!("{out}");
}
